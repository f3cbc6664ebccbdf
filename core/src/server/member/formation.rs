//! Forming the cluster on a member's first start: probing the configured peers, then
//! initializing, joining, or (with an empty data directory in a cluster that holds data)
//! catching up before voting again ([`super::super::bootstrap`] decides).

use std::sync::Arc;

use corral_net::rpc::{CoreRequest, CoreResponse};
use corral_net::transport::certificate_authority::core_member_name;
use openraft::{BasicNode, CommittedLeaderId};

use super::{CoreMember, PROBE_INTERVAL, PROBE_TIMEOUT};
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
            let member = &self;
            let answers = futures::future::join_all(
                others
                    .iter()
                    .map(|(id, address)| async move { (*id, member.probe(*id, address).await) }),
            )
            .await;
            let fresh_probers = self.fresh_probers.lock().clone();
            match bootstrap::decide(
                self.config.is_initial_member(),
                self.config.peers.len(),
                &answers,
                &fresh_probers,
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

    /// Asks member `id` whether it holds a cluster, telling it whether this member's log is
    /// empty as of a connection already established with it.
    async fn probe(&self, id: NodeId, address: &str) -> ProbeAnswer {
        let name = core_member_name(id);
        let connected =
            tokio::time::timeout(PROBE_TIMEOUT, self.transport.connection(address, &name)).await;
        if !matches!(connected, Ok(Ok(_))) {
            return ProbeAnswer::NoAnswer;
        }
        let fresh = !self.raft.is_initialized().await.unwrap_or(true);
        let answer = self
            .transport
            .call::<_, CoreResponse>(address, &name, &CoreRequest::Probe { fresh }, PROBE_TIMEOUT)
            .await;
        match answer {
            Ok(CoreResponse::Probe {
                initialized: true,
                last_log_index,
                ..
            }) => ProbeAnswer::Initialized { last_log_index },
            Ok(CoreResponse::Probe {
                initialized: false, ..
            }) => ProbeAnswer::Fresh,
            _ => ProbeAnswer::NoAnswer,
        }
    }

    /// This member's answer to a probe.
    pub(super) async fn probe_answer(&self) -> CoreResponse {
        CoreResponse::Probe {
            id: self.id,
            initialized: self.raft.is_initialized().await.unwrap_or(false),
            last_log_index: self.raft.metrics().borrow().last_log_index,
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
                            PROBE_TIMEOUT,
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
