//! Serving one watch stream: every command applied after the watcher's revision, in
//! order, with no gap and no repeat.
//!
//! ```text
//!  watch_from(after) ──► history entries or a chunked snapshot ──► live broadcast
//!        ▲                                                              │
//!        └──── lagged / state replaced / gap: resume from last sent ◄───┘
//! ```
//!
//! The stream never sends a revision at or below one it already sent; a watcher that asks
//! for a revision this member has not reached yet simply waits for it (this member may
//! lag), and is never sent an older snapshot that would move it backwards.

use std::time::Duration;

use corral_proto::Revision;
use corral_proto::frame;
use quinn::{RecvStream, SendStream};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::member::CoreMember;
use crate::applied_state::{WatchSignal, WatchStart};
use crate::rpc::{WATCH_SNAPSHOT_CHUNK_LEN, WatchItem};

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
    after: Option<Revision>,
    mut send: SendStream,
    mut receive: RecvStream,
) {
    let result = tokio::select! {
        result = stream(member, after, &mut send) => result,
        // The watcher closing its side (or resetting) ends the stream.
        _ = receive.read_to_end(64) => Err(WatchEnd::Gone("closed by the watcher".into())),
    };
    match result {
        Ok(()) | Err(WatchEnd::Stopped) => {
            let _ = send.finish();
        }
        Err(WatchEnd::Gone(reason)) => tracing::debug!(%reason, "watch stream ended"),
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
