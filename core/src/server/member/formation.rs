//! Forming the cluster on a member's first start: probing the configured peers, then
//! initializing, joining, or (with an empty data directory in a cluster that holds data)
//! catching up before voting again ([`super::super::bootstrap`] decides).

use std::sync::Arc;

use corral_net::rpc::{CoreRequest, CoreResponse};
use corral_net::transport::certificate_authority::core_member_name;
use openraft::{BasicNode, CommittedLeaderId};

use super::{CoreMember, PROBE_INTERVAL};
use crate::raft_types::{LogId, NodeId};
use crate::server::bootstrap::{self, BootstrapDecision, ProbeAnswer, RejoinGuard};

impl CoreMember {
    pub(super) async fn form_cluster(self: Arc<Self>) {
        let others: Vec<(NodeId, String)> = self
            .config
            .peers
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, a)| (*id, a.clone()))
            .collect();
        loop {
            if self.raft.is_initialized().await.unwrap_or(true) {
                return;
            }
            let mut answers = Vec::new();
            for (id, address) in &others {
                let answer = self
                    .transport
                    .call::<_, CoreResponse>(
                        address,
                        &core_member_name(*id),
                        &CoreRequest::Probe,
                        PROBE_INTERVAL * 3,
                    )
                    .await;
                answers.push(match answer {
                    Ok(CoreResponse::Probe {
                        initialized: true,
                        last_log_index,
                        ..
                    }) => ProbeAnswer::Initialized { last_log_index },
                    Ok(CoreResponse::Probe {
                        initialized: false, ..
                    }) => ProbeAnswer::Fresh,
                    _ => ProbeAnswer::NoAnswer,
                });
            }
            match bootstrap::decide(
                self.config.is_initial_member(),
                self.config.peers.len(),
                &answers,
            ) {
                BootstrapDecision::Initialize => {
                    let members: std::collections::BTreeMap<NodeId, BasicNode> = self
                        .config
                        .peers
                        .iter()
                        .map(|(id, a)| (*id, BasicNode::new(a)))
                        .collect();
                    match self.raft.initialize(members).await {
                        Ok(()) => tracing::info!(id = self.id, "formed a new cluster"),
                        Err(e) => {
                            tracing::info!(id = self.id, error = %e, "cluster already formed")
                        }
                    }
                    return;
                }
                BootstrapDecision::JoinExisting { guarded: false } => {
                    tracing::info!(id = self.id, "joining the cluster as it forms");
                    return;
                }
                BootstrapDecision::JoinExisting { guarded: true } => {
                    tracing::warn!(
                        id = self.id,
                        "empty data directory but the cluster holds data: waiting for the leader to catch this \
                         member up, voting only for candidates that hold every committed entry until then"
                    );
                    *self.rejoin.lock() = RejoinGuard::Unknown;
                    self.clone().rejoin(others).await;
                    return;
                }
                BootstrapDecision::Retry => tokio::time::sleep(PROBE_INTERVAL).await,
            }
        }
    }

    /// Learns the leader's committed log id, then waits until this member applied that far.
    pub(super) async fn rejoin(self: Arc<Self>, others: Vec<(NodeId, String)>) {
        loop {
            let mut leader = None;
            if matches!(*self.rejoin.lock(), RejoinGuard::Unknown) {
                for (id, address) in &others {
                    let answer = self
                        .transport
                        .call::<_, CoreResponse>(
                            address,
                            &core_member_name(*id),
                            &CoreRequest::Status,
                            PROBE_INTERVAL * 3,
                        )
                        .await;
                    if let Ok(CoreResponse::Status(status)) = answer
                        && status.state == "leader"
                    {
                        leader = status.committed.map(|c| {
                            let log_id =
                                LogId::new(CommittedLeaderId::new(c.term, c.leader), c.index);
                            (status.term, log_id)
                        });
                        break;
                    }
                }
            }
            let applied = self.raft.metrics().borrow().last_applied;
            let guard = {
                let mut guard = self.rejoin.lock();
                *guard = guard.advance(leader, applied);
                *guard
            };
            if guard == RejoinGuard::Off {
                tracing::info!(id = self.id, "caught up with the cluster; voting again");
                return;
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }
}
