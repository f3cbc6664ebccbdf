//! Batching writes into proposals.
//!
//! ```text
//!  write ─► queue ─► proposer ─► Proposal { commands } ─► Raft::client_write
//!    ▲                  │ (at most PROPOSALS_IN_FLIGHT_MAX at once)      │
//!    └──── one CommandResponse each ◄─────────────────────────────────────┘
//! ```
//!
//! Every log entry costs each member a write and an fsync, and a round of replication. The
//! proposer gathers the writes that arrive while earlier proposals are in flight into one
//! entry, so under load one fsync serves many writes, and a lone write still goes out at
//! once. A few proposals in flight keep the pipeline full: the leader's fsync of one
//! overlaps the followers' fsync of another.

use std::sync::Arc;
use std::time::Duration;

use corral_proto::{Command, CommandResponse};
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::quorum_watch::{QuorumWatch, quorum_lost};
use crate::raft_types::{NodeId, Proposal, Raft};
use corral_net::batching::{BatchQueue, Batchable};
use corral_net::rpc::CoreError;

/// Writes waiting for a proposal.
pub const PROPOSAL_QUEUE_MAX: usize = 8192;
/// Most commands in one proposal.
pub const PROPOSAL_COMMANDS_MAX: usize = 1024;
/// Most encoded bytes of commands in one proposal (one command may exceed it alone).
pub const PROPOSAL_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Proposals submitted to Raft and not yet answered.
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 2;

struct Pending {
    command: Command,
    len: usize,
    reply: oneshot::Sender<Result<CommandResponse, CoreError>>,
}

impl Batchable for Pending {
    fn bytes(&self) -> usize {
        self.len
    }
}

/// Where the proposer finds the leader's address for a `NotLeader` answer.
pub(crate) type LeaderHint = Arc<dyn Fn() -> Option<(NodeId, String)> + Send + Sync>;

#[derive(Clone)]
pub(crate) struct Proposer {
    queue: mpsc::Sender<Pending>,
}

impl Proposer {
    pub(crate) fn start(
        raft: Raft,
        write_timeout: Duration,
        leader_hint: LeaderHint,
        quorum: QuorumWatch,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(PROPOSAL_QUEUE_MAX);
        tokio::spawn(run(raft, receiver, write_timeout, leader_hint, quorum));
        Self { queue }
    }

    /// Proposes one (validated) command and waits for its answer.
    pub(crate) async fn propose(&self, command: Command) -> Result<CommandResponse, CoreError> {
        let len = postcard::experimental::serialized_size(&command).unwrap_or(0);
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                command,
                len,
                reply,
            })
            .await
            .map_err(|_| CoreError::Unavailable("the member is stopping".into()))?;
        answer.await.unwrap_or_else(|_| {
            Err(CoreError::OutcomeUnknown(
                "the member stopped while the write was in flight".into(),
            ))
        })
    }
}

async fn run(
    raft: Raft,
    queue: mpsc::Receiver<Pending>,
    write_timeout: Duration,
    leader_hint: LeaderHint,
    quorum: QuorumWatch,
) {
    let permits = Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT_MAX));
    let mut queue = BatchQueue::new(queue);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Some(batch) = queue
            .next_batch(PROPOSAL_COMMANDS_MAX, PROPOSAL_BYTES_MAX)
            .await
        else {
            return;
        };
        if let Some(silent) = quorum.lost_for() {
            // Queued while the leader was losing its quorum: refused, nothing proposed.
            for pending in batch {
                let _ = pending.reply.send(Err(quorum_lost(silent)));
            }
            continue;
        }
        let raft = raft.clone();
        let leader_hint = leader_hint.clone();
        let quorum = quorum.clone();
        tokio::spawn(async move {
            let (commands, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.command, p.reply)).unzip();
            let result = tokio::select! {
                result = tokio::time::timeout(write_timeout, raft.client_write(Proposal { commands })) => result,
                () = quorum.wait_lost() => {
                    drop(permit);
                    for reply in replies {
                        let _ = reply.send(Err(CoreError::OutcomeUnknown(
                            "this member lost its quorum while the write waited to commit; it may or may not be applied".into(),
                        )));
                    }
                    return;
                }
            };
            drop(permit);
            match result {
                Ok(Ok(written)) if written.data.len() == replies.len() => {
                    for (reply, response) in replies.into_iter().zip(written.data) {
                        let _ = reply.send(Ok(response));
                    }
                }
                other => {
                    let error = match other {
                        Err(_) => CoreError::OutcomeUnknown(format!(
                            "not committed within {write_timeout:?}"
                        )),
                        Ok(Ok(_)) => CoreError::OutcomeUnknown(
                            "the proposal was answered for the wrong count".into(),
                        ),
                        // openraft answers ForwardToLeader only for an entry it did not
                        // append, or one that a new leader truncated: either way it was not
                        // applied, so the writes may be sent again, to the leader.
                        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(
                            forward,
                        )))) => {
                            let leader = forward
                                .leader_id
                                .zip(forward.leader_node.map(|n| n.addr))
                                .or_else(|| leader_hint());
                            CoreError::NotLeader { leader }
                        }
                        Ok(Err(e)) => CoreError::OutcomeUnknown(e.to_string()),
                    };
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}
