//! Which masters a command would take away, and who could succeed them: what the leader
//! attaches replication positions for before it proposes the command
//! (`Command::Promoting`). A read of the state; nothing here changes it.

use std::collections::BTreeSet;

use corral_proto::{Command, SessionId, SessionOwner};

use super::StateMachine;

/// A shard whose master the command would take away, and the replicas that could take the
/// role (none of them standbys, none of them going with the command).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Succession {
    pub shard: String,
    pub candidates: Vec<String>,
}

impl StateMachine {
    /// The shards whose master `command` would take away if it applied now, each with
    /// its candidates. Empty for every command that moves no master.
    pub fn successions(&self, command: &Command) -> Vec<Succession> {
        match command.unwrapped() {
            Command::CloseSession { session } if self.sessions.contains(*session) => {
                self.successions_of_sessions(*session)
            }
            Command::CloseNode { name, incarnation } => match self.sessions.node_session(name) {
                Some((session, current)) if current <= *incarnation => {
                    self.successions_of_sessions(session)
                }
                _ => Vec::new(),
            },
            Command::OpenSession {
                owner: SessionOwner::Node { name, incarnation },
            } => match self.sessions.node_session(name) {
                Some((session, current)) if current < *incarnation => {
                    self.successions_of_sessions(session)
                }
                _ => Vec::new(),
            },
            Command::DeregisterReplica { shard, address }
            | Command::SetReplicaPriority {
                shard,
                address,
                priority: 0,
            } => self.succession_of(shard, |master| master == address),
            Command::Handover {
                shard, to: None, ..
            } => self.succession_of(shard, |_| true),
            _ => Vec::new(),
        }
    }

    /// The successions when `root` and its client sessions close.
    fn successions_of_sessions(&self, root: SessionId) -> Vec<Succession> {
        let mut closing: BTreeSet<SessionId> = self.sessions.children(root).into_iter().collect();
        closing.insert(root);
        self.shards
            .iter()
            .filter(|shard| {
                shard
                    .master_replica()
                    .is_some_and(|m| closing.contains(&m.session))
            })
            .map(|shard| Succession {
                shard: shard.name.clone(),
                candidates: shard
                    .replicas
                    .iter()
                    .filter(|r| !closing.contains(&r.session))
                    .filter(|r| !self.roles.is_standby(&shard.name, &r.address))
                    .map(|r| r.address.clone())
                    .collect(),
            })
            .filter(|s| !s.candidates.is_empty())
            .collect()
    }

    /// The succession of `shard` if its master is one that `going` says goes.
    fn succession_of(&self, shard: &str, going: impl Fn(&str) -> bool) -> Vec<Succession> {
        let Some(shard) = self.shards.get(shard) else {
            return Vec::new();
        };
        let Some(master) = shard.master.as_deref().filter(|m| going(m)) else {
            return Vec::new();
        };
        let candidates: Vec<String> = shard
            .replicas
            .iter()
            .map(|r| r.address.clone())
            .filter(|a| a != master && !self.roles.is_standby(&shard.name, a))
            .collect();
        if candidates.is_empty() {
            return Vec::new();
        }
        vec![Succession {
            shard: shard.name.clone(),
            candidates,
        }]
    }
}
