//! What a connection sends its app, bounded in bytes: replies and events are encoded
//! before they are queued, and every queued byte holds a permit of the connection's
//! budget until the writer has written it.
//!
//! ```text
//!  reply ─ encode (too big: TooLarge reply) ─ wait for budget ─► write half
//!  event ─ encode (too big: subscription ends) ─ budget and queue room now, or the
//!          subscription ends ("did not read") ─► queue ─► writer task ─► write half
//! ```
//!
//! An app that stops reading costs the agent at most [`CONNECTION_BYTES_MAX`]: its
//! replies wait, its subscriptions end with a reason, and the agent's memory stays its
//! own.

use std::sync::Arc;

use corral_proto::api::{AgentFrame, ApiError, SubscriptionItem};
use corral_proto::frame::{self, FrameError};
use corral_proto::idle_poll::IdlePoll;
use corral_proto::limits::FRAME_LEN_MAX;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// Most bytes one connection may have encoded and not yet written: its budget.
pub const CONNECTION_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Most frames queued for the writer task of one connection.
pub(super) const OUTGOING_FRAMES_MAX: usize = 4096;

/// One encoded frame and the budget it holds until written.
pub(super) struct Queued {
    bytes: Vec<u8>,
    is_reply: bool,
    _permit: OwnedSemaphorePermit,
}

/// Why an event was not queued: the subscription must end, with this reason.
#[derive(Debug)]
pub(super) enum Refused {
    /// The app is gone.
    Closed,
    /// The event would end the subscription with this reason.
    End(String),
}

/// The connection's write half and its byte budget.
#[derive(Clone)]
pub(super) struct FrameWriter {
    half: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    idle_poll: Arc<IdlePoll>,
    budget: Arc<Semaphore>,
    queue: mpsc::Sender<Queued>,
}

impl FrameWriter {
    /// The writer and the receiving end of its queue, for the writer task.
    pub(super) fn new(
        half: OwnedWriteHalf,
        idle_poll: Arc<IdlePoll>,
    ) -> (Self, mpsc::Receiver<Queued>) {
        let (queue, frames) = mpsc::channel(OUTGOING_FRAMES_MAX);
        let writer = FrameWriter {
            half: Arc::new(tokio::sync::Mutex::new(half)),
            idle_poll,
            budget: Arc::new(Semaphore::new(CONNECTION_BYTES_MAX)),
            queue,
        };
        (writer, frames)
    }

    /// Writes the queued frames until the app goes or the queue closes.
    pub(super) async fn run(self, mut frames: mpsc::Receiver<Queued>) {
        while let Some(queued) = frames.recv().await {
            if !self.write_bytes(&queued.bytes, queued.is_reply, None).await {
                break;
            }
        }
    }

    /// Drops the writer's own sender, so that the queue closes once every other one is
    /// gone.
    pub(super) fn close_queue(&mut self) {
        let (closed, _) = mpsc::channel(1);
        self.queue = closed;
    }

    /// Writes a reply now (waiting for budget); false once the app has gone. A reply
    /// opens the agent's window of polling for the app's next request, from `answered`
    /// (now if not given).
    pub(super) async fn write(
        &self,
        message: &AgentFrame,
        answered: Option<std::time::Instant>,
    ) -> bool {
        let bytes = encode_or_refuse(message);
        let Ok(_permit) = self.budget.acquire_many(charge(bytes.len())).await else {
            return false;
        };
        self.write_bytes(&bytes, true, answered).await
    }

    /// Queues a reply behind the events already queued (a subscription's own replies),
    /// waiting for budget and room; false once the app has gone.
    pub(super) async fn queue_reply(&self, message: &AgentFrame) -> bool {
        let bytes = encode_or_refuse(message);
        let Ok(permit) = self
            .budget
            .clone()
            .acquire_many_owned(charge(bytes.len()))
            .await
        else {
            return false;
        };
        let queued = Queued {
            bytes,
            is_reply: true,
            _permit: permit,
        };
        self.queue.send(queued).await.is_ok()
    }

    /// Queues one event of `subscription` if it fits in a frame and the app reads what it
    /// was sent; otherwise says why the subscription must end.
    pub(super) fn queue_event(
        &self,
        subscription: u64,
        item: SubscriptionItem,
    ) -> Result<(), Refused> {
        let message = AgentFrame::Event { subscription, item };
        let bytes = match frame::encode(&message) {
            Ok(bytes) => bytes,
            Err(FrameError::TooLarge { len, max }) => {
                return Err(Refused::End(format!(
                    "an item of {len} bytes exceeds the frame limit of {max} bytes; subscribe \
                     to a narrower filter, or from a revision the agent's history still holds"
                )));
            }
            Err(error) => {
                return Err(Refused::End(format!(
                    "an item could not be encoded: {error}"
                )));
            }
        };
        let Ok(permit) = self
            .budget
            .clone()
            .try_acquire_many_owned(charge(bytes.len()))
        else {
            return Err(Refused::End(format!(
                "the subscriber did not read: {CONNECTION_BYTES_MAX} bytes were waiting for it; \
                 resume from the last revision received"
            )));
        };
        let queued = Queued {
            bytes,
            is_reply: false,
            _permit: permit,
        };
        match self.queue.try_send(queued) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(Refused::End(format!(
                "the subscriber did not read: {OUTGOING_FRAMES_MAX} frames were waiting for it; \
                 resume from the last revision received"
            ))),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Refused::Closed),
        }
    }

    /// Queues the item that ends a subscription, waiting for room (it is small).
    pub(super) async fn queue_end(&self, subscription: u64, reason: String) {
        let message = AgentFrame::Event {
            subscription,
            item: SubscriptionItem::Ended { reason },
        };
        let _ = self.queue_reply(&message).await;
    }

    async fn write_bytes(
        &self,
        bytes: &[u8],
        is_reply: bool,
        answered: Option<std::time::Instant>,
    ) -> bool {
        let mut half = self.half.lock().await;
        if half.write_all(bytes).await.is_err() || half.flush().await.is_err() {
            return false;
        }
        drop(half);
        if is_reply {
            self.idle_poll
                .awaiting(answered.unwrap_or_else(std::time::Instant::now));
        }
        true
    }
}

/// Budget permits for `len` bytes: never more than the whole budget, so that one frame
/// (at most [`FRAME_LEN_MAX`]) always fits.
fn charge(len: usize) -> u32 {
    len.min(CONNECTION_BYTES_MAX) as u32
}

/// Encodes a frame; a reply too big for one frame becomes a `TooLarge` error reply that
/// says how to ask for less, so the connection (and its session) lives on.
fn encode_or_refuse(message: &AgentFrame) -> Vec<u8> {
    match frame::encode(message) {
        Ok(bytes) => bytes,
        Err(error) => {
            let id = match message {
                AgentFrame::Reply { id, .. } => *id,
                AgentFrame::Event { subscription, .. } => *subscription,
            };
            let result = Err(match error {
                FrameError::TooLarge { len, max } => ApiError::TooLarge {
                    len,
                    max,
                    hint: "ask for one page at a time: start_after and limit (Query::Page, \
                           ShardPage, LockPage, ServicePage; HTTP ?start_after=NAME&limit=N)"
                        .into(),
                },
                other => ApiError::BadRequest(format!("the answer could not be encoded: {other}")),
            });
            frame::encode(&AgentFrame::Reply { id, result })
                .expect("an error reply is far below the frame limit")
        }
    }
}

const _: () = assert!(FRAME_LEN_MAX + 64 <= CONNECTION_BYTES_MAX);
