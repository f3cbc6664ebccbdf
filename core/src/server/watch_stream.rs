//! Serving one watch stream: every command applied after the watcher's revision, in
//! order, with no gap and no repeat.
//!
//! ```text
//!  watch_from(after) ──► history entries or a chunked snapshot ──► live broadcast
//!        ▲                                                              │
//!        └──── lagged / state replaced / gap: resume from last sent ◄───┘
//! ```
//!
//! The watcher's side carries its beats ([`super::liveness`]).
//!
//! The stream never sends a revision at or below one it already sent; a watcher that asks
//! for a revision this member has not reached yet simply waits for it (this member may
//! lag), and is never sent an older snapshot that would move it backwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use corral_proto::Revision;
use corral_proto::frame;
use quinn::{RecvStream, SendStream};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::liveness::BEAT_FRAME_MAX;
use super::member::CoreMember;
use crate::applied_state::{HistoryEntry, WatchSignal, WatchStart};
use corral_net::rpc::{WATCH_SNAPSHOT_CHUNK_LEN, WatchBeat, WatchItem};
use corral_net::transport::tls::peer_has_name;

/// Interval of progress frames on a quiet stream.
pub const WATCH_PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Most bytes of entries gathered into one write: the entries already applied when the
/// stream wakes go out together rather than one write (and one packet) each.
pub(crate) const WATCH_WRITE_BYTES_MAX: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
enum WatchEnd {
    #[error("watcher gone: {0}")]
    Gone(String),
    #[error("member stopped")]
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

pub(crate) async fn serve(
    member: &CoreMember,
    connection: &quinn::Connection,
    after: Option<Revision>,
    mut send: SendStream,
    mut receive: RecvStream,
) {
    let stream_id = member.next_watch_stream();
    let mut beating: Option<String> = None;
    let last_beat = AtomicU64::new(0);
    let result = tokio::select! {
        result = stream(member, after, &mut send, &last_beat) => result,
        // The watcher closing its side (or resetting, or sending what is not a beat) ends
        // the stream.
        end = beats(member, connection, stream_id, &mut receive, &mut beating, &last_beat) => Err(end),
    };
    if let Some(name) = &beating {
        member
            .liveness
            .lock()
            .stream_ended(name, stream_id, Instant::now());
    }
    match result {
        Ok(()) | Err(WatchEnd::Stopped) => {
            let _ = send.finish();
        }
        Err(WatchEnd::Gone(reason)) => tracing::debug!(%reason, "watch stream ended"),
    }
}

/// Reads the watcher's beats into the member's liveness until its side ends. A beat counts
/// only under a name the connection's certificate carries; `beating` is the name that beat.
async fn beats(
    member: &CoreMember,
    connection: &quinn::Connection,
    stream_id: u64,
    receive: &mut RecvStream,
    beating: &mut Option<String>,
    last_beat: &AtomicU64,
) -> WatchEnd {
    loop {
        let beat = match frame::read_frame::<_, WatchBeat>(receive, BEAT_FRAME_MAX).await {
            Ok(Some(beat)) => beat,
            Ok(None) => return WatchEnd::Gone("closed by the watcher".into()),
            Err(e) => return WatchEnd::Gone(format!("bad beat: {e}")),
        };
        if beating.as_deref() != Some(beat.name.as_str()) {
            if !peer_has_name(connection, &beat.name) {
                return WatchEnd::Gone(format!(
                    "a beat as {:?}, which the watcher's certificate does not name",
                    beat.name
                ));
            }
            if let Some(previous) = beating.replace(beat.name.clone()) {
                member
                    .liveness
                    .lock()
                    .stream_ended(&previous, stream_id, Instant::now());
            }
        }
        member
            .liveness
            .lock()
            .beat(&beat.name, beat.incarnation, stream_id, Instant::now());
        last_beat.fetch_max(beat.seq, Ordering::Relaxed);
    }
}

async fn stream(
    member: &CoreMember,
    after: Option<Revision>,
    send: &mut SendStream,
    last_beat: &AtomicU64,
) -> Result<(), WatchEnd> {
    let mut last: Option<Revision> = after;
    let mut batch: Vec<u8> = Vec::new();
    let mut progress = tokio::time::interval(WATCH_PROGRESS_INTERVAL);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'resume: loop {
        let (start, mut signals) = member.applied.watch_from(last);
        match start {
            WatchStart::Entries(entries) => {
                for entry in entries {
                    send_bytes(send, &entry.frame).await?;
                    last = Some(entry.revision);
                }
            }
            WatchStart::Snapshot { revision, bytes } => {
                let mut chunks = bytes.chunks(WATCH_SNAPSHOT_CHUNK_LEN).peekable();
                if chunks.peek().is_none() {
                    send_item(
                        send,
                        &WatchItem::SnapshotChunk {
                            revision,
                            bytes: Vec::new(),
                            last: true,
                        },
                    )
                    .await?;
                }
                while let Some(chunk) = chunks.next() {
                    let item = WatchItem::SnapshotChunk {
                        revision,
                        bytes: chunk.to_vec(),
                        last: chunks.peek().is_none(),
                    };
                    send_item(send, &item).await?;
                }
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
                _ = progress.tick() => send_progress(member, send, last_beat).await?,
            }
        }
    }
}

/// How gathering waiting entries ended.
#[derive(Debug, PartialEq, Eq)]
enum Gathered {
    /// Everything waiting (or a write's worth) is in the batch.
    All,
    /// A gap, a reset or a lag: resume from the last revision in the batch.
    Resume,
    /// The member is stopping: send the batch and end.
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

/// A progress frame: how far this member applied, the leader and term it knows, and the
/// last beat it received on the stream.
async fn send_progress(
    member: &CoreMember,
    send: &mut SendStream,
    last_beat: &AtomicU64,
) -> Result<(), WatchEnd> {
    let (leader, term) = {
        let metrics = member.raft.metrics();
        let m = metrics.borrow();
        (m.current_leader, m.current_term)
    };
    let item = WatchItem::Progress {
        revision: member.applied.revision(),
        leader,
        term,
        beat: match last_beat.load(Ordering::Relaxed) {
            0 => None,
            seq => Some(seq),
        },
    };
    send_item(send, &item).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(revision: Revision) -> Arc<HistoryEntry> {
        Arc::new(HistoryEntry {
            revision,
            frame: bytes::Bytes::from(vec![revision as u8]),
        })
    }

    /// Waiting entries go out in one batch, each once and in order; a gap or a reset
    /// resumes from the last one gathered, and a stopping member ends the stream.
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
}
