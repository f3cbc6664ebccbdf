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

use std::time::{Duration, Instant};

use corral_proto::Revision;
use corral_proto::frame;
use quinn::{RecvStream, SendStream};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::liveness::BEAT_FRAME_MAX;
use super::member::CoreMember;
use crate::applied_state::{WatchSignal, WatchStart};
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
    let result = tokio::select! {
        result = stream(member, after, &mut send) => result,
        // The watcher closing its side (or resetting, or sending what is not a beat) ends
        // the stream.
        end = beats(member, connection, stream_id, &mut receive, &mut beating) => Err(end),
    };
    if let Some(name) = &beating {
        member.liveness.lock().stream_ended(name, stream_id);
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
                member.liveness.lock().stream_ended(&previous, stream_id);
            }
        }
        member
            .liveness
            .lock()
            .beat(&beat.name, beat.incarnation, stream_id, Instant::now());
    }
}

async fn stream(
    member: &CoreMember,
    after: Option<Revision>,
    send: &mut SendStream,
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
                        let mut entry = first;
                        let resume = loop {
                            let expected = last.map_or(1, |l| l + 1);
                            if entry.revision > expected {
                                // A gap (we subscribed while lagging behind): start over
                                // from what we sent, which history or a snapshot can fill.
                                break true;
                            }
                            if entry.revision == expected {
                                batch.extend_from_slice(&entry.frame);
                                last = Some(entry.revision);
                            }
                            if batch.len() >= WATCH_WRITE_BYTES_MAX {
                                break false;
                            }
                            match signals.try_recv() {
                                Ok(WatchSignal::Entry(next)) => entry = next,
                                Ok(WatchSignal::Reset { .. }) | Err(TryRecvError::Lagged(_)) => {
                                    break true;
                                }
                                Err(TryRecvError::Empty) => break false,
                                Err(TryRecvError::Closed) => {
                                    send_bytes(send, &batch).await?;
                                    return Err(WatchEnd::Stopped);
                                }
                            }
                        };
                        if !batch.is_empty() {
                            send_bytes(send, &batch).await?;
                        }
                        if resume {
                            continue 'resume;
                        }
                    }
                    Ok(WatchSignal::Reset { .. }) | Err(RecvError::Lagged(_)) => continue 'resume,
                    Err(RecvError::Closed) => return Err(WatchEnd::Stopped),
                },
                _ = progress.tick() => {
                    let metrics = member.raft.metrics();
                    let (leader, term) = {
                        let m = metrics.borrow();
                        (m.current_leader, m.current_term)
                    };
                    let item = WatchItem::Progress { revision: member.applied.revision(), leader, term };
                    send_item(send, &item).await?;
                }
            }
        }
    }
}
