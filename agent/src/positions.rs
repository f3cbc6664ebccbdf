//! Replication positions of this host's replicas: apps report them to the agent
//! (`ReportPosition`, as often as they like; nothing is written to the core), and the agent
//! sends the last one of each to the core's leader, which promotes the freshest replica when
//! a master must be replaced (`corral_core::server::positions`).
//!
//! ```text
//!  app ──ReportPosition──► Positions (last per replica, ≤ POSITIONS_PER_NODE_MAX)
//!                              │ soon after a change (REPORT_SPACING), and every
//!                              ▼ POSITIONS_REPORT_INTERVAL
//!                   ReportPositions { node, positions } ──► leader
//! ```
//!
//! A position is kept only while the replica stays registered by the session that reported
//! it: each report leaves out, and forgets, those whose replica left.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use corral_net::client::CoreClient;
use corral_net::rpc::{CoreRequest, CoreResponse, POSITIONS_REPORT_INTERVAL};
use corral_proto::limits::POSITIONS_PER_NODE_MAX;
use corral_proto::{ReplicaPosition, SessionId};
use corral_state::StateMachine;
use tokio::sync::{Notify, watch};

use crate::replica::SharedReplica;

/// Shortest time between two reports: positions that move continuously go to the leader
/// at most this often.
pub const REPORT_SPACING: Duration = Duration::from_millis(100);

/// Why a position was not kept.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PositionRefused {
    #[error("shard {shard} has no replica {address} registered by this session")]
    NotYours { shard: String, address: String },
    #[error("this host already reports the positions of {max} replicas")]
    TooMany { max: usize },
}

/// The last position reported for each replica of this host, with the session it came in.
#[derive(Debug, Default)]
pub struct Positions {
    last: parking_lot::Mutex<BTreeMap<(String, String), (u64, SessionId)>>,
    changed: Notify,
}

impl Positions {
    /// Keeps `position` for replica `address` of `shard`, which `session` must have
    /// registered (as `machine` shows).
    pub fn note(
        &self,
        machine: &StateMachine,
        shard: &str,
        address: &str,
        position: u64,
        session: Option<SessionId>,
    ) -> Result<(), PositionRefused> {
        let registered = machine
            .shard(shard)
            .and_then(|s| s.replicas.iter().find(|r| r.address == address))
            .map(|r| r.session);
        let Some(session) = session.filter(|s| registered == Some(*s)) else {
            return Err(PositionRefused::NotYours {
                shard: shard.to_string(),
                address: address.to_string(),
            });
        };
        let mut last = self.last.lock();
        let key = (shard.to_string(), address.to_string());
        if last.len() >= POSITIONS_PER_NODE_MAX && !last.contains_key(&key) {
            return Err(PositionRefused::TooMany {
                max: POSITIONS_PER_NODE_MAX,
            });
        }
        if last.insert(key, (position, session)) != Some((position, session)) {
            self.changed.notify_one();
        }
        Ok(())
    }

    /// The positions to report: those whose replica is still registered by the session
    /// that reported it. The others are forgotten.
    pub fn current(&self, machine: &StateMachine) -> Vec<ReplicaPosition> {
        let mut last = self.last.lock();
        last.retain(|(shard, address), (_, session)| {
            machine
                .shard(shard)
                .and_then(|s| s.replicas.iter().find(|r| &r.address == address))
                .is_some_and(|r| r.session == *session)
        });
        last.iter()
            .map(|((shard, address), (position, _))| ReplicaPosition {
                shard: shard.clone(),
                address: address.clone(),
                position: *position,
            })
            .collect()
    }
}

/// Reports this host's positions to the leader until shutdown.
pub async fn run(
    node: String,
    positions: Arc<Positions>,
    core: Arc<CoreClient>,
    replica: Arc<SharedReplica>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut refused_logged = false;
    loop {
        tokio::select! {
            _ = positions.changed.notified() => {}
            _ = tokio::time::sleep(POSITIONS_REPORT_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
        let report = replica.read(|r| positions.current(r.machine()));
        if report.is_empty() {
            continue;
        }
        let request = CoreRequest::ReportPositions {
            node: node.clone(),
            positions: report,
        };
        match core.call_leader(&request, true).await {
            Ok(CoreResponse::PositionsKept { .. }) => refused_logged = false,
            Ok(other) if !refused_logged => {
                refused_logged = true;
                tracing::warn!(
                    answer = ?other,
                    "the core's leader did not take the replicas' positions (an earlier version?)"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "reporting the replicas' positions failed"),
        }
        tokio::time::sleep(REPORT_SPACING).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::{Command, SessionOwner};

    fn state_with_replica() -> (StateMachine, SessionId) {
        let mut machine = StateMachine::new();
        machine.apply(&Command::CreateShard { name: "M3".into() });
        let owner = SessionOwner::Node {
            name: "a1".into(),
            incarnation: 1,
        };
        machine.apply(&Command::OpenSession { owner });
        let (session, _) = machine.node_session("a1").unwrap();
        machine.apply(&Command::JoinShard {
            shard: "M3".into(),
            address: "r:1".into(),
            priority: 1,
            session,
        });
        (machine, session)
    }

    #[test]
    fn only_the_registering_session_reports_and_a_replica_that_left_is_forgotten() {
        let (mut machine, session) = state_with_replica();
        let positions = Positions::default();
        assert!(matches!(
            positions.note(&machine, "M3", "r:1", 5, Some(session + 100)),
            Err(PositionRefused::NotYours { .. })
        ));
        assert!(matches!(
            positions.note(&machine, "M3", "other:1", 5, Some(session)),
            Err(PositionRefused::NotYours { .. })
        ));
        assert!(positions.note(&machine, "M3", "r:1", 5, None).is_err());
        positions
            .note(&machine, "M3", "r:1", 5, Some(session))
            .unwrap();
        positions
            .note(&machine, "M3", "r:1", 7, Some(session))
            .unwrap();
        assert_eq!(
            positions.current(&machine),
            vec![ReplicaPosition {
                shard: "M3".into(),
                address: "r:1".into(),
                position: 7,
            }]
        );
        machine.apply(&Command::DeregisterReplica {
            shard: "M3".into(),
            address: "r:1".into(),
        });
        assert!(positions.current(&machine).is_empty());
        assert!(positions.last.lock().is_empty());
    }
}
