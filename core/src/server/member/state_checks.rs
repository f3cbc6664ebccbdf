//! The leader's periodic comparison of the members' states: the I/O around
//! [`crate::server::state_check::judge`].

use std::time::Duration;

use corral_net::rpc::{CoreRequest, CoreResponse};
use corral_net::transport::certificate_authority::core_member_name;
use corral_proto::Revision;

use super::CoreMember;
use crate::raft_types::NodeId;
use crate::server::state_check::{self, Digest, Judgement};

impl CoreMember {
    /// The log index this member applied, its revision there, and the checksum and length
    /// of its whole state.
    pub(super) fn state_digest(&self) -> (Option<u64>, Revision, u32, usize) {
        let (applied, revision, bytes) = self.applied.read(|a| {
            (
                a.last_applied.map(|l| l.index),
                a.machine.revision(),
                a.machine.to_snapshot_bytes(),
            )
        });
        (applied, revision, crc32fast::hash(&bytes), bytes.len())
    }

    /// Every `state_check_secs`, while this member leads, compares the members' states
    /// ([`state_check`]) and keeps the finding for status; a difference is logged as an
    /// error each time it is found. Ends when the member is gone.
    pub(super) async fn check_states(member: std::sync::Weak<Self>) {
        let Some(interval) = member
            .upgrade()
            .map(|m| Duration::from_secs(m.config.state_check_secs))
        else {
            return;
        };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(member) = member.upgrade() else {
                return;
            };
            if member.raft.metrics().borrow().current_leader != Some(member.id) {
                continue;
            }
            match member.check_states_once().await {
                Judgement::NotAtRest => {
                    tracing::debug!("state check: the core is not at rest; nothing compared")
                }
                Judgement::Compared {
                    revision,
                    differing,
                } => {
                    if differing.is_empty() {
                        tracing::debug!(revision, "state check: every member holds the same state");
                    } else {
                        tracing::error!(
                            revision,
                            ?differing,
                            "state check: these members hold another state than the majority at the same \
                             revision; stop each, remove its data directory and start it again to let it \
                             catch up from the others"
                        );
                    }
                    *member.state_checked.lock() = Some((revision, differing));
                }
            }
        }
    }

    /// One comparison: asks the other members for the log index they applied, for digests
    /// only when every one that answers is at this member's, and for the index again to be
    /// sure the digests were taken there.
    pub(super) async fn check_states_once(&self) -> Judgement {
        let others = self.other_members();
        let index = self.applied.read(|a| a.last_applied.map(|l| l.index));
        let at_index = |answers: &[(NodeId, Option<CoreResponse>)]| -> Option<Vec<NodeId>> {
            let mut members = Vec::new();
            for (member, answer) in answers {
                if let Some(CoreResponse::Status(status)) = answer {
                    if status.last_applied != index {
                        return None;
                    }
                    members.push(*member);
                }
            }
            Some(members)
        };
        let Some(before) = at_index(&self.ask_all(&others, &CoreRequest::Status).await) else {
            return Judgement::NotAtRest;
        };
        let (own_index, own_revision, own_checksum, _) = self.state_digest();
        let mut digests = vec![Digest {
            member: self.id,
            applied: own_index,
            revision: own_revision,
            checksum: own_checksum,
        }];
        let answers = self.ask_all(&others, &CoreRequest::StateDigest).await;
        let Some(after) = at_index(&self.ask_all(&others, &CoreRequest::Status).await) else {
            return Judgement::NotAtRest;
        };
        for (member, answer) in answers {
            if let Some(CoreResponse::StateDigest {
                revision, digest, ..
            }) = answer
                && before.contains(&member)
                && after.contains(&member)
            {
                digests.push(Digest {
                    member,
                    applied: index,
                    revision,
                    checksum: digest,
                });
            }
        }
        state_check::judge(&digests)
    }

    /// Sends `request` to each of `members` at once; None for those that did not answer
    /// within [`state_check::STATE_CHECK_ASK_TIMEOUT`].
    pub(super) async fn ask_all(
        &self,
        members: &[(NodeId, String)],
        request: &CoreRequest,
    ) -> Vec<(NodeId, Option<CoreResponse>)> {
        futures::future::join_all(members.iter().map(|(id, address)| async move {
            let answer = self
                .transport
                .call::<_, CoreResponse>(
                    address,
                    &core_member_name(*id),
                    request,
                    state_check::STATE_CHECK_ASK_TIMEOUT,
                )
                .await;
            (*id, answer.ok())
        }))
        .await
    }
}
