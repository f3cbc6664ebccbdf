//! Writes and linearizable reads: validation, the death-report gate (no member may hear a
//! node whose death is reported), the proposer, and the read index.

use std::time::Instant;

use corral_net::rpc::{CoreError, CoreRequest, CoreResponse, WRITE_BATCH_MAX};
use corral_net::transport::certificate_authority::core_member_name;
use corral_proto::{Command, CommandResponse, Revision};
use openraft::error::{CheckIsLeaderError, RaftError};

use super::{CoreMember, HEARD_ASK_TIMEOUT, READ_INDEX_TIMEOUT};
use crate::raft_types::NodeId;
use crate::server::actor;
use crate::server::quorum_watch::quorum_lost;

impl CoreMember {
    pub(super) async fn write(&self, command: Command) -> CoreResponse {
        if let Err(invalid) = command.validate() {
            return CoreResponse::Error(CoreError::Invalid(invalid));
        }
        actor::log_override(&command);
        if let Some(silent) = self.quorum.lost_for() {
            return CoreResponse::Error(quorum_lost(silent));
        }
        if let Command::CloseNode { name, incarnation } = command.unwrapped()
            && let Some(member) = self.who_hears(name, *incarnation).await
        {
            tracing::info!(
                node = name,
                incarnation,
                member,
                "death report refused: the core hears the node"
            );
            return CoreResponse::Error(CoreError::NodeAlive {
                name: name.clone(),
                member,
            });
        }
        match self.proposer.propose(command).await {
            Ok(response) => CoreResponse::Write(response),
            Err(e) => CoreResponse::Error(e),
        }
    }

    /// The member that heard node `name` at `incarnation` or newer lately, asking every
    /// member at once: only the leader asks, before it proposes a death report. A member
    /// that does not answer within [`HEARD_ASK_TIMEOUT`] counts as not hearing it: what it
    /// cannot answer cannot keep a dead node's session open.
    pub(super) async fn who_hears(&self, name: &str, incarnation: u64) -> Option<NodeId> {
        if self.raft.metrics().borrow().current_leader != Some(self.id) {
            return None;
        }
        let now = Instant::now();
        if self.liveness.lock().heard(name, incarnation, now) {
            return Some(self.id);
        }
        if let Some(member) = self.heard_answers.lock().get(name, incarnation, now) {
            return Some(member);
        }
        let request = CoreRequest::Heard {
            name: name.to_string(),
            incarnation,
        };
        let mut asks = self
            .other_members()
            .into_iter()
            .map(|(id, address)| {
                let request = &request;
                Box::pin(async move {
                    match self
                        .transport
                        .call::<_, CoreResponse>(
                            &address,
                            &core_member_name(id),
                            request,
                            HEARD_ASK_TIMEOUT,
                        )
                        .await
                    {
                        Ok(CoreResponse::Heard(true)) => Some(id),
                        _ => None,
                    }
                })
            })
            .collect::<Vec<_>>();
        // The first member that heard it settles it; the others need not be awaited.
        while !asks.is_empty() {
            let (answer, _, rest) = futures::future::select_all(asks).await;
            if let Some(member) = answer {
                self.heard_answers
                    .lock()
                    .keep(name, incarnation, member, now);
                return answer;
            }
            asks = rest;
        }
        None
    }

    /// Proposes every command of a batch; the proposer puts those that arrive together in
    /// one log entry. A member that refuses them all alike for want of leadership or of a
    /// quorum answers with that one error, so that the client follows it as for one write.
    pub(super) async fn write_batch(&self, commands: Vec<Command>) -> CoreResponse {
        if commands.len() > WRITE_BATCH_MAX {
            return CoreResponse::Error(CoreError::BadRequest(format!(
                "a write batch holds at most {WRITE_BATCH_MAX} commands, not {}",
                commands.len()
            )));
        }
        let results: Vec<Result<CommandResponse, CoreError>> =
            futures::future::join_all(commands.into_iter().map(|command| async move {
                match self.write(command).await {
                    CoreResponse::Write(response) => Ok(response),
                    CoreResponse::Error(e) => Err(e),
                    other => Err(CoreError::Unavailable(format!(
                        "unexpected answer to a write: {other:?}"
                    ))),
                }
            }))
            .await;
        let refused_alike = match results.first() {
            Some(Err(first @ (CoreError::NotLeader { .. } | CoreError::Unavailable(_)))) => results
                .iter()
                .all(|r| r.as_ref().err() == Some(first))
                .then(|| first.clone()),
            _ => None,
        };
        match refused_alike {
            Some(error) => CoreResponse::Error(error),
            None => CoreResponse::WriteBatch(results),
        }
    }

    pub(super) async fn read_index(&self) -> Result<Revision, CoreError> {
        match tokio::time::timeout(READ_INDEX_TIMEOUT, self.raft.ensure_linearizable()).await {
            Err(_) => Err(CoreError::Unavailable(format!(
                "leadership not confirmed within {READ_INDEX_TIMEOUT:?}"
            ))),
            Ok(Ok(_)) => Ok(self.applied.revision()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)))) => {
                let leader = forward
                    .leader_id
                    .zip(forward.leader_node.map(|n| n.addr))
                    .or_else(|| self.leader_hint());
                Err(CoreError::NotLeader { leader })
            }
            Ok(Err(e)) => Err(CoreError::Unavailable(e.to_string())),
        }
    }
}
