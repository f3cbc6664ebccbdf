//! The writes of every app connection on their way to the core, batched.
//!
//! ```text
//!  connection ─┐
//!  connection ─┼─► queue ─► batcher ─► one write alone, or a WriteBatch ─► core leader
//!  connection ─┘               (at most WRITES_IN_FLIGHT_MAX requests at once)
//! ```
//!
//! Each request to the core costs both ends a QUIC stream, its packets and a task. A lone
//! write goes out at once, as a write of its own; writes that arrive while the request
//! before them is in flight wait for it and go out together in one request, which the
//! leader's proposer puts in one log entry. Each write still gets its own answer.

use std::sync::Arc;

use corral_net::batching::{BatchQueue, Batchable};
use corral_net::client::{ClientError, CoreClient};
use corral_net::rpc::WRITE_BATCH_MAX;
use corral_proto::{Command, CommandResponse};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Requests to the core in flight at once from one agent. One: a second request in flight
/// saves its writes part of a wait, but splits the agent's writes into twice as many
/// smaller batches, and on a busy core the per-batch cost outweighs it (through an agent
/// at 16 clients, one in flight beat two in 6 of 7 paired benchmark runs, by 12% on
/// average).
pub const WRITES_IN_FLIGHT_MAX: usize = 1;
/// Writes waiting for a slot; a connection's write waits for room beyond this.
const QUEUE_MAX: usize = 4096;
/// Most encoded bytes of commands in one batch (one command may exceed it alone), well
/// under the frame limit.
pub const BATCH_BYTES_MAX: usize = 1024 * 1024;

type Answer = Result<CommandResponse, ClientError>;

struct Pending {
    command: Command,
    len: usize,
    reply: oneshot::Sender<Answer>,
}

impl Batchable for Pending {
    fn bytes(&self) -> usize {
        self.len
    }

    /// Closing a session answers with every session it ended, which may be many, and a
    /// transaction's reads with up to a megabyte: they go alone, so that no batch's answer
    /// outgrows a frame.
    fn goes_alone(&self) -> bool {
        match self.command.unwrapped() {
            Command::CloseSession { .. } => true,
            // A transaction's reads answer up to TXN_RANGE_BYTES_MAX.
            Command::Txn(txn) => txn
                .success
                .iter()
                .chain(&txn.failure)
                .any(|op| matches!(op, corral_proto::TxnOp::Range(_))),
            _ => false,
        }
    }
}

/// The agent's door to the core for writes; clones share one queue.
#[derive(Clone, Debug)]
pub struct CoreWrites {
    queue: mpsc::Sender<Pending>,
}

impl CoreWrites {
    /// Starts the batcher on the current runtime.
    pub fn start(core: Arc<CoreClient>) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE_MAX);
        tokio::spawn(run(core, receiver));
        Self { queue }
    }

    /// Sends one write to the core and waits for its answer.
    pub async fn write(&self, command: Command) -> Answer {
        let (reply, answer) = oneshot::channel();
        let len = postcard::experimental::serialized_size(&command).unwrap_or(0);
        self.queue
            .send(Pending {
                command,
                len,
                reply,
            })
            .await
            .map_err(|_| ClientError::Unavailable("the agent is stopping".into()))?;
        answer.await.unwrap_or_else(|_| {
            Err(ClientError::OutcomeUnknown(
                "the agent stopped while the write was in flight".into(),
            ))
        })
    }
}

async fn run(core: Arc<CoreClient>, queue: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(WRITES_IN_FLIGHT_MAX));
    let mut queue = BatchQueue::new(queue);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(mut batch) = queue.next_batch(WRITE_BATCH_MAX, BATCH_BYTES_MAX).await else {
            return;
        };
        let core = core.clone();
        tokio::spawn(async move {
            if let [_] = batch.as_slice() {
                let Pending { command, reply, .. } = batch.remove(0);
                let _ = reply.send(core.write(&command).await);
            } else {
                let (commands, replies): (Vec<_>, Vec<_>) =
                    batch.into_iter().map(|p| (p.command, p.reply)).unzip();
                let answers = core.write_batch(&commands).await;
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
            }
            drop(slot);
        });
    }
}
