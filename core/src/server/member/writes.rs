//! Writes and linearizable reads: validation, the death-report gate (no member may hear a
//! node whose death is reported), the proposer, and the read index.

use std::time::{Duration, Instant};

use corral_net::rpc::{CoreError, CoreRequest, CoreResponse, WRITE_BATCH_MAX};
use corral_net::transport::certificate_authority::core_member_name;
use corral_proto::limits::{POSITIONS_PER_NODE_MAX, PROMOTING_POSITIONS_MAX};
use corral_proto::{Command, CommandResponse, ReplicaPosition, Revision, SessionOwner};
use openraft::error::{CheckIsLeaderError, RaftError};

use super::{CoreMember, HEARD_ASK_TIMEOUT, READ_INDEX_TIMEOUT};
use crate::server::actor;
use crate::server::liveness::{self, Hearing};
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
        if let Command::CloseNode { name, incarnation } = command.unwrapped() {
            match self.hearing(name, *incarnation).await {
                Hearing::Silent => {}
                Hearing::Alive { member } => {
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
                Hearing::InGrace { remaining } => {
                    tracing::info!(
                        node = name,
                        incarnation,
                        remaining_ms = remaining.as_millis() as u64,
                        "death report held back: the node is within its grace"
                    );
                    return CoreResponse::Error(CoreError::NodeInGrace {
                        name: name.clone(),
                        retry_ms: remaining.as_millis() as u64,
                    });
                }
            }
        }
        let command = self.with_positions(command);
        match self.proposer.propose(command).await {
            Ok(response) => CoreResponse::Write(response),
            Err(e) => CoreResponse::Error(e),
        }
    }

    /// `command` with the fresh replication positions of the replicas that could succeed
    /// the masters it takes away ([`Command::Promoting`]), where it takes any and some are
    /// known; otherwise as it is. A lookup in memory: no round trip is added.
    fn with_positions(&self, command: Command) -> Command {
        let may_take_masters = matches!(
            command.unwrapped(),
            Command::CloseSession { .. }
                | Command::CloseNode { .. }
                | Command::OpenSession {
                    owner: SessionOwner::Node { .. }
                }
                | Command::DeregisterReplica { .. }
                | Command::SetReplicaPriority { .. }
                | Command::Handover { to: None, .. }
        );
        if !may_take_masters || self.positions.lock().len() == 0 {
            return command;
        }
        let started = Instant::now();
        let successions = self.applied.read(|a| a.machine.successions(&command));
        if successions.is_empty() {
            return command;
        }
        let positions =
            self.positions
                .lock()
                .of(&successions, Instant::now(), PROMOTING_POSITIONS_MAX);
        if positions.is_empty() {
            return command;
        }
        tracing::info!(
            shards = successions.len(),
            positions = positions.len(),
            lookup_us = started.elapsed().as_micros() as u64,
            "replication positions attached to a command that replaces masters"
        );
        Command::Promoting {
            positions,
            command: Box::new(command),
        }
    }

    /// Keeps the positions node `node` reported for replicas its sessions registered (the
    /// others are dropped): only while this member leads, since only the leader attaches
    /// them.
    pub(super) fn hear_positions(
        &self,
        node: &str,
        positions: Vec<ReplicaPosition>,
    ) -> CoreResponse {
        if positions.len() > POSITIONS_PER_NODE_MAX {
            return CoreResponse::Error(CoreError::BadRequest(format!(
                "a report holds at most {POSITIONS_PER_NODE_MAX} positions, not {}",
                positions.len()
            )));
        }
        if self.raft.metrics().borrow().current_leader != Some(self.id) {
            return CoreResponse::Error(CoreError::NotLeader {
                leader: self.leader_hint(),
            });
        }
        let positions: Vec<ReplicaPosition> = self.applied.read(|a| {
            positions
                .into_iter()
                .filter(|p| a.machine.replica_node(&p.shard, &p.address) == Some(node))
                .collect()
        });
        let kept = self.positions.lock().hear(positions, Instant::now());
        CoreResponse::PositionsKept { kept }
    }

    /// Whether the core hears node `name` at `incarnation` or newer, or holds it for its
    /// grace ([`liveness::hearing`]), asking every member at once: only the leader asks,
    /// before it proposes a death report. A member that does not answer within
    /// [`HEARD_ASK_TIMEOUT`] counts as neither hearing it nor having heard it: what it
    /// cannot answer cannot keep a dead node's session open. A member that hears it
    /// settles the question without waiting for the others.
    pub(super) async fn hearing(&self, name: &str, incarnation: u64) -> Hearing {
        if self.raft.metrics().borrow().current_leader != Some(self.id) {
            return Hearing::Silent;
        }
        let now = Instant::now();
        let grace = Duration::from_millis(self.config.node_grace_ms);
        let own = {
            let liveness = self.liveness.lock();
            (
                self.id,
                liveness.heard(name, incarnation, now),
                liveness.silent_for(name, incarnation, now),
            )
        };
        if own.1 {
            return Hearing::Alive { member: self.id };
        }
        if let Some(member) = self.heard_answers.lock().get(name, incarnation, now) {
            return Hearing::Alive { member };
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
                        Ok(CoreResponse::Heard { heard, silent_ms }) => {
                            (id, heard, silent_ms.map(Duration::from_millis))
                        }
                        _ => (id, false, None),
                    }
                })
            })
            .collect::<Vec<_>>();
        let mut answers = vec![own];
        while !asks.is_empty() {
            let (answer, _, rest) = futures::future::select_all(asks).await;
            if answer.1 {
                self.heard_answers
                    .lock()
                    .keep(name, incarnation, answer.0, now);
                return Hearing::Alive { member: answer.0 };
            }
            answers.push(answer);
            asks = rest;
        }
        liveness::hearing(answers, grace)
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
