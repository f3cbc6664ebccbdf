//! The leader's check that every member holds the same state.
//!
//! Members apply the same log with a deterministic state machine, so once they have
//! applied the same log index their states (revision included) are byte-identical. A
//! difference means a member's log or state went wrong (a storage fault, a bug in the log's
//! handling), which nothing else would notice: each member serves what it holds, and the
//! agents that feed from it copy it.
//!
//! ```text
//!  every check interval, on the leader:
//!    Status of every other member ──► all applied up to the leader's log index (at rest)?
//!        no  ─► nothing computed; try again next interval
//!        yes ─► StateDigest of each, and its own ─► Status again: still that index?
//!                  ─► judge ─► who differs from the majority
//! ```
//!
//! A digest serializes the whole state under the read lock, so it is asked for only while
//! the core is at rest, when no write waits for it. Under steady writes the members' log
//! indexes never line up and the check waits for a quiet moment. Asking for the index
//! again after the digests makes sure each digest was taken at that index (it only grows).
//! [`judge`] is free of I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use corral_proto::Revision;

use crate::raft_types::NodeId;

/// Default interval between two checks.
pub const STATE_CHECK_SECS_DEFAULT: u64 = 30;

/// How long the leader waits for one member's answer during a check.
pub const STATE_CHECK_ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// One member's answer: the log index it had applied, the revision it held there and the
/// checksum of its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    pub member: NodeId,
    pub applied: Option<u64>,
    pub revision: Revision,
    pub checksum: u32,
}

/// What a check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// Fewer than two members answered, or they had not applied the same log index:
    /// nothing compared.
    NotAtRest,
    /// Every answer was at one log index, where the majority held `revision`. `differing`
    /// are the members outside the group (same revision, same checksum) that holds a
    /// strict majority of the answers (every member, when no group does); empty when all
    /// agree.
    Compared {
        revision: Revision,
        differing: Vec<NodeId>,
    },
}

/// Compares the members' digests.
pub fn judge(digests: &[Digest]) -> Judgement {
    let Some(first) = digests.first() else {
        return Judgement::NotAtRest;
    };
    if digests.len() < 2 || digests.iter().any(|d| d.applied != first.applied) {
        return Judgement::NotAtRest;
    }
    let mut groups: BTreeMap<(Revision, u32), Vec<NodeId>> = BTreeMap::new();
    for digest in digests {
        groups
            .entry((digest.revision, digest.checksum))
            .or_default()
            .push(digest.member);
    }
    let majority = groups
        .iter()
        .find(|(_, members)| members.len() * 2 > digests.len());
    let mut differing: Vec<NodeId> = digests
        .iter()
        .map(|d| d.member)
        .filter(|member| majority.is_none_or(|(_, m)| !m.contains(member)))
        .collect();
    differing.sort_unstable();
    Judgement::Compared {
        revision: majority.map_or(first.revision, |((revision, _), _)| *revision),
        differing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member's answer at log index 100.
    fn digest(member: NodeId, revision: Revision, checksum: u32) -> Digest {
        Digest {
            member,
            applied: Some(100),
            revision,
            checksum,
        }
    }

    #[test]
    fn equal_states_at_one_revision_agree() {
        assert_eq!(
            judge(&[digest(1, 7, 42), digest(2, 7, 42), digest(3, 7, 42)]),
            Judgement::Compared {
                revision: 7,
                differing: vec![]
            }
        );
    }

    #[test]
    fn the_member_outside_the_majority_differs_whichever_member_leads() {
        let expected = Judgement::Compared {
            revision: 7,
            differing: vec![3],
        };
        assert_eq!(
            judge(&[digest(1, 7, 42), digest(2, 7, 42), digest(3, 7, 9)]),
            expected
        );
        // The leader itself may be the one that differs.
        assert_eq!(
            judge(&[digest(3, 7, 9), digest(1, 7, 42), digest(2, 7, 42)]),
            expected
        );
    }

    #[test]
    fn another_revision_at_the_same_log_index_differs() {
        assert_eq!(
            judge(&[digest(1, 7, 42), digest(2, 8, 42), digest(3, 7, 42)]),
            Judgement::Compared {
                revision: 7,
                differing: vec![2]
            }
        );
    }

    #[test]
    fn without_a_strict_majority_every_member_is_named() {
        assert_eq!(
            judge(&[digest(1, 7, 1), digest(2, 7, 2)]),
            Judgement::Compared {
                revision: 7,
                differing: vec![1, 2]
            }
        );
        assert_eq!(
            judge(&[digest(1, 7, 1), digest(2, 7, 2), digest(3, 7, 3)]),
            Judgement::Compared {
                revision: 7,
                differing: vec![1, 2, 3]
            }
        );
    }

    #[test]
    fn different_log_indexes_or_a_lone_answer_compare_nothing() {
        let behind = Digest {
            applied: Some(99),
            ..digest(2, 7, 42)
        };
        assert_eq!(judge(&[digest(1, 7, 42), behind]), Judgement::NotAtRest);
        assert_eq!(judge(&[digest(1, 7, 42)]), Judgement::NotAtRest);
        assert_eq!(judge(&[]), Judgement::NotAtRest);
    }
}
