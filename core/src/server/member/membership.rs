//! The member's status, and changes of the core's membership (admin only).

use std::collections::BTreeSet;

use corral_net::rpc::{CoreError, CoreResponse, CoreStatus, LogPosition, MemberInfo};
use openraft::{BasicNode, ServerState};

use super::CoreMember;
use crate::raft_types::NodeId;

impl CoreMember {
    pub async fn status(&self) -> CoreStatus {
        let committed = self
            .raft
            .with_raft_state(|st| st.committed)
            .await
            .ok()
            .flatten()
            .map(|log_id| LogPosition {
                term: log_id.leader_id.term,
                leader: log_id.leader_id.node_id,
                index: log_id.index,
            });
        let metrics = self.raft.metrics();
        let m = metrics.borrow().clone();
        let membership = m.membership_config.membership();
        let voter_ids: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut voters = Vec::new();
        let mut learners = Vec::new();
        for (id, node) in membership.nodes() {
            let info = MemberInfo {
                id: *id,
                address: node.addr.clone(),
            };
            if voter_ids.contains(id) {
                voters.push(info)
            } else {
                learners.push(info)
            }
        }
        let (revision, counts, quota) = self.applied.read(|a| {
            (
                a.machine.revision(),
                a.machine.counts(),
                a.machine.quota_use(),
            )
        });
        let checked = if m.state == ServerState::Leader {
            self.state_checked.lock().clone()
        } else {
            None
        };
        CoreStatus {
            id: self.id,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            committed,
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            revision,
            watch_history_floor: self.applied.history_floor(),
            state: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .to_string(),
            voters,
            learners,
            counts,
            quota,
            state_checked: checked.as_ref().map(|(revision, _)| *revision),
            state_differs: checked.map(|(_, differing)| differing).unwrap_or_default(),
        }
    }

    pub(super) async fn add_voter(&self, id: NodeId, address: String) -> CoreResponse {
        if let Err(e) = self
            .raft
            .add_learner(id, BasicNode::new(&address), true)
            .await
        {
            return self.membership_error(
                e.to_string(),
                e.forward_to_leader()
                    .map(|f| (f.leader_id, f.leader_node.clone())),
            );
        }
        let voters: BTreeSet<NodeId> = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            m.membership_config
                .membership()
                .voter_ids()
                .chain([id])
                .collect()
        };
        match self.raft.change_membership(voters, false).await {
            Ok(_) => CoreResponse::MembershipChanged(self.status().await),
            Err(e) => self.membership_error(
                e.to_string(),
                e.forward_to_leader()
                    .map(|f| (f.leader_id, f.leader_node.clone())),
            ),
        }
    }

    pub(super) async fn remove_voter(&self, id: NodeId) -> CoreResponse {
        let voters: BTreeSet<NodeId> = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            m.membership_config
                .membership()
                .voter_ids()
                .filter(|v| *v != id)
                .collect()
        };
        if voters.is_empty() {
            return CoreResponse::Error(CoreError::Membership(
                "cannot remove the last voter".into(),
            ));
        }
        match self.raft.change_membership(voters, false).await {
            Ok(_) => CoreResponse::MembershipChanged(self.status().await),
            Err(e) => self.membership_error(
                e.to_string(),
                e.forward_to_leader()
                    .map(|f| (f.leader_id, f.leader_node.clone())),
            ),
        }
    }

    pub(super) fn membership_error(
        &self,
        message: String,
        forward: Option<(Option<NodeId>, Option<BasicNode>)>,
    ) -> CoreResponse {
        match forward {
            Some((leader_id, leader_node)) => {
                let leader = leader_id
                    .zip(leader_node.map(|n| n.addr))
                    .or_else(|| self.leader_hint());
                CoreResponse::Error(CoreError::NotLeader { leader })
            }
            None => CoreResponse::Error(CoreError::Membership(message)),
        }
    }
}
