//! Serving a watch stream, for a core member and for an agent that relays what it is fed:
//! every entry after the watcher's revision, in order, with no gap and no repeat.
//!
//! ```text
//!  source.watch_from(after) ──► history frames or a chunked snapshot ──► live broadcast
//!        ▲                                                                 │
//!        └────── lagged / state replaced / gap: resume from last sent ◄────┘
//! ```
//!
//! A [`WatchSource`] keeps a bounded [`FrameHistory`] of entries, each encoded once as a
//! watch frame however many watchers follow it, and a broadcast of the entries as they
//! are applied. A watcher subscribes under the source's lock, so between the history (or
//! snapshot) it is given and the broadcast it then follows there is neither a gap nor an
//! overlap.
//!
//! The stream never sends a revision at or below one it already sent; a watcher that asks
//! for a revision the source has not reached yet simply waits for it (the source may
//! lag), and is never sent an older snapshot that would move it backwards.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use corral_proto::{Revision, frame};
use quinn::SendStream;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::rpc::{WATCH_SNAPSHOT_CHUNK_LEN, WatchItem};

/// Interval of progress frames on a quiet stream.
pub const WATCH_PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Most bytes of entries gathered into one write: the entries already applied when the
/// stream wakes go out together rather than one write (and one packet) each.
pub const WATCH_WRITE_BYTES_MAX: usize = 256 * 1024;

/// Signals buffered per watcher before it is told it lagged and must resume.
pub const WATCH_BROADCAST_CAPACITY: usize = 16_384;

/// One applied entry, encoded once as a watch frame ([`WatchItem::Entry`]).
#[derive(Debug)]
pub struct HistoryEntry {
    pub revision: Revision,
    pub frame: Bytes,
}

/// What the broadcast carries to watch streams.
#[derive(Clone, Debug)]
pub enum WatchSignal {
    Entry(Arc<HistoryEntry>),
    /// The state was replaced by a snapshot at this revision; watchers must restart.
    Reset {
        revision: Revision,
    },
}

/// How a new watcher starts.
#[derive(Debug)]
pub enum WatchStart {
    /// Replay these entries (all after the requested revision), then follow the receiver.
    Entries(Vec<Arc<HistoryEntry>>),
    /// The requested revision is older than the history (or newer than the state, after a
    /// wiped source came back): start from this snapshot of the whole state.
    Snapshot { revision: Revision, bytes: Vec<u8> },
}

/// Memory one kept entry takes: its frame, the entry behind its `Arc`, the frame's
/// shared header and the history's slot.
fn entry_bytes(frame: &Bytes) -> usize {
    const HOLDERS: usize = 2 * std::mem::size_of::<usize>() // Arc counts
        + std::mem::size_of::<HistoryEntry>()
        + 4 * std::mem::size_of::<usize>() // the frame's shared header
        + std::mem::size_of::<Arc<HistoryEntry>>();
    frame.len() + HOLDERS
}

/// The recent entries, newest last, bounded in count and bytes, with the broadcast that
/// announces each one.
#[derive(Debug)]
pub struct FrameHistory {
    entries: VecDeque<Arc<HistoryEntry>>,
    bytes: usize,
    entries_max: usize,
    bytes_max: usize,
    signals: broadcast::Sender<WatchSignal>,
}

impl FrameHistory {
    /// A history of at most `entries_max` entries and `bytes_max` bytes, announcing each
    /// new entry on a broadcast of `broadcast_capacity` (allocated in full, and holding the
    /// entries it last carried: a watcher further behind resumes from the history).
    pub fn new(entries_max: usize, bytes_max: usize, broadcast_capacity: usize) -> Self {
        FrameHistory {
            entries: VecDeque::new(),
            bytes: 0,
            entries_max,
            bytes_max,
            signals: broadcast::channel(broadcast_capacity.max(1)).0,
        }
    }

    /// The revision of the newest entry kept.
    pub fn last(&self) -> Option<Revision> {
        self.entries.back().map(|e| e.revision)
    }

    /// Changes the bound on bytes kept; a lower one drops the oldest entries at once.
    pub fn set_bytes_max(&mut self, bytes_max: usize) {
        self.bytes_max = bytes_max;
        self.trim();
    }

    fn trim(&mut self) {
        while self.entries.len() > self.entries_max || self.bytes > self.bytes_max {
            match self.entries.pop_front() {
                Some(old) => self.bytes -= entry_bytes(&old.frame),
                None => break,
            }
        }
    }

    /// Memory the kept entries take: their frames and what holds each.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps the entry and announces it. Call under the lock that orders the source's
    /// changes, so that signals go out in revision order.
    pub fn push(&mut self, revision: Revision, frame: Bytes) {
        self.bytes += entry_bytes(&frame);
        let entry = Arc::new(HistoryEntry { revision, frame });
        self.entries.push_back(entry.clone());
        self.trim();
        // Nobody listening is fine: the history keeps the entry.
        let _ = self.signals.send(WatchSignal::Entry(entry));
    }

    /// Forgets every entry (the state was replaced at `revision`); watchers restart.
    pub fn reset(&mut self, revision: Revision) {
        self.entries.clear();
        self.bytes = 0;
        let _ = self.signals.send(WatchSignal::Reset { revision });
    }

    /// Starts a watcher that has seen everything up to `after` (None: nothing yet), on a
    /// source now at `current`; `snapshot` encodes the source's state when it must.
    pub fn watch_from(
        &self,
        after: Option<Revision>,
        current: Revision,
        snapshot: impl FnOnce() -> Vec<u8>,
    ) -> (WatchStart, broadcast::Receiver<WatchSignal>) {
        let receiver = self.signals.subscribe();
        let start = match after {
            Some(after) if after == current => WatchStart::Entries(Vec::new()),
            Some(after) if after < current && self.covers(after, current) => {
                let skip = self.entries.partition_point(|e| e.revision <= after);
                WatchStart::Entries(self.entries.iter().skip(skip).cloned().collect())
            }
            _ => WatchStart::Snapshot {
                revision: current,
                bytes: snapshot(),
            },
        };
        (start, receiver)
    }

    /// Whether the entries after `after` up to `current` are all kept.
    fn covers(&self, after: Revision, current: Revision) -> bool {
        self.entries
            .front()
            .is_some_and(|first| first.revision <= after + 1)
            && self.last().is_some_and(|last| last >= current)
    }

    /// The oldest revision a watcher can resume from without a snapshot, on a source at
    /// `current`.
    pub fn floor(&self, current: Revision) -> Revision {
        self.entries.front().map_or(current, |e| e.revision - 1)
    }
}

/// What serves a watch stream: a core member's applied state, or an agent's replica.
pub trait WatchSource {
    /// The start of a watcher that has seen everything up to `after`, and the broadcast
    /// it follows from there (subscribed under the same lock).
    fn watch_from(&self, after: Option<Revision>)
    -> (WatchStart, broadcast::Receiver<WatchSignal>);

    /// The progress item for a quiet stream; `beat` is the last beat the watcher sent.
    fn progress(&self, beat: Option<u64>) -> WatchItem;

    /// The source's last checkpoint ([`WatchItem::Checkpoint`]), for progress-only
    /// streams; None: it publishes none.
    fn checkpoint(&self) -> Option<(Revision, [u8; 32])> {
        None
    }
}

/// The beats a watcher sends on its side of a stream: the last one's sequence number,
/// echoed in progress items, and a wake-up for progress-only streams, which answer each
/// beat rather than a timer.
#[derive(Debug, Default)]
pub struct BeatsHeard {
    last: AtomicU64,
    heard: tokio::sync::Notify,
}

impl BeatsHeard {
    /// Beat `seq` arrived.
    pub fn heard(&self, seq: u64) {
        self.last.fetch_max(seq, Ordering::Relaxed);
        self.heard.notify_one();
    }

    /// The last beat's sequence number (None: no beat yet).
    pub fn last(&self) -> Option<u64> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            seq => Some(seq),
        }
    }
}

/// A progress-only stream whose watcher does not beat still gets progress this often.
pub const PROGRESS_WITHOUT_BEATS: Duration = Duration::from_secs(1);

/// Why a served stream ended.
#[derive(Debug, thiserror::Error)]
pub enum WatchEnd {
    #[error("watcher gone: {0}")]
    Gone(String),
    #[error("source stopped")]
    Stopped,
}

async fn send_bytes(send: &mut SendStream, bytes: &[u8]) -> Result<(), WatchEnd> {
    send.write_all(bytes)
        .await
        .map_err(|e| WatchEnd::Gone(e.to_string()))
}

async fn send_item(send: &mut SendStream, item: &WatchItem) -> Result<(), WatchEnd> {
    let bytes = frame::encode(item).map_err(|e| WatchEnd::Gone(e.to_string()))?;
    send_bytes(send, &bytes).await
}

/// Serves `source` after revision `after` on `send` until the watcher goes or the source
/// stops; progress items echo the watcher's last beat.
pub async fn serve<S: WatchSource>(
    source: &S,
    after: Option<Revision>,
    send: &mut SendStream,
    beats: &BeatsHeard,
) -> Result<(), WatchEnd> {
    let mut last: Option<Revision> = after;
    let mut batch: Vec<u8> = Vec::new();
    let mut progress = tokio::time::interval(WATCH_PROGRESS_INTERVAL);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let beat = || beats.last();
    'resume: loop {
        let (start, mut signals) = source.watch_from(last);
        match start {
            WatchStart::Entries(entries) => {
                for entry in entries {
                    send_bytes(send, &entry.frame).await?;
                    last = Some(entry.revision);
                }
            }
            WatchStart::Snapshot { revision, bytes } => {
                send_snapshot(send, revision, &bytes).await?;
                last = Some(revision);
            }
        }
        loop {
            tokio::select! {
                signal = signals.recv() => match signal {
                    Ok(WatchSignal::Entry(first)) => {
                        // This entry and every one already waiting, in one write.
                        batch.clear();
                        let gathered = gather(first, &mut last, &mut batch, &mut signals);
                        if !batch.is_empty() {
                            send_bytes(send, &batch).await?;
                        }
                        match gathered {
                            Gathered::All => {}
                            Gathered::Resume => continue 'resume,
                            Gathered::Closed => return Err(WatchEnd::Stopped),
                        }
                    }
                    Ok(WatchSignal::Reset { .. }) | Err(RecvError::Lagged(_)) => continue 'resume,
                    Err(RecvError::Closed) => return Err(WatchEnd::Stopped),
                },
                _ = progress.tick() => send_item(send, &source.progress(beat())).await?,
            }
        }
    }
}

/// Serves progress items only, one in answer to each beat (or every
/// [`PROGRESS_WITHOUT_BEATS`] without them), and each new checkpoint of the source, until
/// the watcher goes: a fleet of agents fed by agents costs the core one packet each way
/// per beat, and the echo dates the agent's freshness at once.
pub async fn serve_progress<S: WatchSource>(
    source: &S,
    send: &mut SendStream,
    beats: &BeatsHeard,
) -> Result<(), WatchEnd> {
    let mut checkpoint_sent = None;
    loop {
        let _ = tokio::time::timeout(PROGRESS_WITHOUT_BEATS, beats.heard.notified()).await;
        send_item(send, &source.progress(beats.last())).await?;
        let checkpoint = source.checkpoint();
        if checkpoint.is_some() && checkpoint != checkpoint_sent {
            if let Some((revision, checksum)) = checkpoint {
                send_item(send, &WatchItem::Checkpoint { revision, checksum }).await?;
            }
            checkpoint_sent = checkpoint;
        }
    }
}

async fn send_snapshot(
    send: &mut SendStream,
    revision: Revision,
    bytes: &[u8],
) -> Result<(), WatchEnd> {
    let mut chunks = bytes.chunks(WATCH_SNAPSHOT_CHUNK_LEN).peekable();
    if chunks.peek().is_none() {
        let item = WatchItem::SnapshotChunk {
            revision,
            bytes: Vec::new(),
            last: true,
        };
        return send_item(send, &item).await;
    }
    while let Some(chunk) = chunks.next() {
        let item = WatchItem::SnapshotChunk {
            revision,
            bytes: chunk.to_vec(),
            last: chunks.peek().is_none(),
        };
        send_item(send, &item).await?;
    }
    Ok(())
}

/// How gathering waiting entries ended.
#[derive(Debug, PartialEq, Eq)]
enum Gathered {
    /// Everything waiting (or a write's worth) is in the batch.
    All,
    /// A gap, a reset or a lag: resume from the last revision in the batch.
    Resume,
    /// The source is stopping: send the batch and end.
    Closed,
}

/// Appends `first` and the entries already waiting on `signals` to `batch` (up to
/// [`WATCH_WRITE_BYTES_MAX`]), each only when it is the next after `last`, which it moves.
fn gather(
    first: Arc<HistoryEntry>,
    last: &mut Option<Revision>,
    batch: &mut Vec<u8>,
    signals: &mut broadcast::Receiver<WatchSignal>,
) -> Gathered {
    let mut entry = first;
    loop {
        let expected = last.map_or(1, |l| l + 1);
        if entry.revision > expected {
            // A gap (we subscribed while lagging behind): start over from what we sent,
            // which history or a snapshot can fill.
            return Gathered::Resume;
        }
        if entry.revision == expected {
            batch.extend_from_slice(&entry.frame);
            *last = Some(entry.revision);
        }
        if batch.len() >= WATCH_WRITE_BYTES_MAX {
            return Gathered::All;
        }
        match signals.try_recv() {
            Ok(WatchSignal::Entry(next)) => entry = next,
            Ok(WatchSignal::Reset { .. }) | Err(TryRecvError::Lagged(_)) => {
                return Gathered::Resume;
            }
            Err(TryRecvError::Empty) => return Gathered::All,
            Err(TryRecvError::Closed) => return Gathered::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(revision: Revision) -> Arc<HistoryEntry> {
        Arc::new(HistoryEntry {
            revision,
            frame: Bytes::from(vec![revision as u8]),
        })
    }

    /// Waiting entries go out in one batch, each once and in order; a gap or a reset
    /// resumes from the last one gathered, and a stopping source ends the stream.
    #[test]
    fn gathering_sends_each_next_entry_once_and_resumes_on_a_gap() {
        let (sender, mut signals) = broadcast::channel(16);
        for revision in [5, 6, 6, 7] {
            sender.send(WatchSignal::Entry(entry(revision))).unwrap();
        }
        let mut last = Some(3);
        let mut batch = Vec::new();
        let first = entry(4);
        assert_eq!(
            gather(first, &mut last, &mut batch, &mut signals),
            Gathered::All
        );
        assert_eq!(batch, vec![4, 5, 6, 7]);
        assert_eq!(last, Some(7));

        batch.clear();
        sender.send(WatchSignal::Entry(entry(10))).unwrap();
        assert_eq!(
            gather(entry(8), &mut last, &mut batch, &mut signals),
            Gathered::Resume
        );
        assert_eq!((batch.as_slice(), last), (&[8][..], Some(8)));

        batch.clear();
        sender.send(WatchSignal::Reset { revision: 20 }).unwrap();
        assert_eq!(
            gather(entry(9), &mut last, &mut batch, &mut signals),
            Gathered::Resume
        );
        drop(sender);
        batch.clear();
        assert_eq!(
            gather(entry(10), &mut last, &mut batch, &mut signals),
            Gathered::Closed
        );
        assert_eq!((batch.as_slice(), last), (&[10][..], Some(10)));
    }

    /// A watcher resumes from history only when it holds every entry from the watcher's
    /// revision to the source's; otherwise it starts from a snapshot. The bounds drop the
    /// oldest entries first.
    #[test]
    fn history_serves_what_it_covers_and_a_snapshot_otherwise() {
        let mut history = FrameHistory::new(3, 1024, 16);
        for revision in 1..=5 {
            history.push(revision, Bytes::from(vec![revision as u8]));
        }
        assert_eq!(history.floor(5), 2);
        let snapshot = || vec![9];
        let revisions = |start: WatchStart| match start {
            WatchStart::Entries(entries) => Ok(entries.iter().map(|e| e.revision).collect()),
            WatchStart::Snapshot { revision, .. } => Err(revision),
        };
        assert_eq!(
            revisions(history.watch_from(Some(2), 5, snapshot).0),
            Ok(vec![3, 4, 5])
        );
        assert_eq!(
            revisions(history.watch_from(Some(5), 5, snapshot).0),
            Ok(vec![])
        );
        assert_eq!(
            revisions(history.watch_from(Some(1), 5, snapshot).0),
            Err(5)
        );
        assert_eq!(revisions(history.watch_from(None, 5, snapshot).0), Err(5));
        // The source applied revision 6 without its frame yet (an agent's own write):
        // history alone cannot bring a watcher there.
        assert_eq!(
            revisions(history.watch_from(Some(3), 6, snapshot).0),
            Err(6)
        );
        history.reset(7);
        assert_eq!(
            revisions(history.watch_from(Some(5), 7, snapshot).0),
            Err(7)
        );
        assert_eq!(history.bytes(), 0);
    }

    /// The bound counts what holds each frame too, and lowering it drops the oldest
    /// entries at once.
    #[test]
    fn history_bytes_count_the_holders_and_a_lower_bound_trims() {
        let frame = || Bytes::from(vec![0u8; 100]);
        let one = entry_bytes(&frame());
        assert!(one > 100);
        let mut history = FrameHistory::new(1_000, 10 * one, 16);
        for revision in 1..=20 {
            history.push(revision, frame());
        }
        assert_eq!(history.bytes(), 10 * one);
        assert_eq!(history.floor(20), 10);
        history.set_bytes_max(3 * one);
        assert_eq!(history.bytes(), 3 * one);
        assert_eq!(history.floor(20), 17);
    }
}
