//! Forming the cluster on first start, and rejoining after losing the data directory, as
//! pure decisions.
//!
//! A member with an empty data directory asks the other listed members whether they hold
//! a cluster already, and remembers which of them asked it the same with an empty log of
//! their own. It forms a new one (openraft `initialize` with the listed members,
//! the same call on every fresh member, which openraft allows) only when a majority of the
//! listed members, itself included, answered that they are fresh too and none answered
//! that a cluster exists. A member whose data directory was wiped therefore never forms a
//! second cluster beside the running one: it waits for the leader to catch it up, and
//! votes under a [`RejoinGuard`] until then.

use std::collections::BTreeSet;

use crate::raft_types::{LogId, NodeId};

/// What one peer answered to a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeAnswer {
    /// No cluster: an empty log.
    Fresh,
    /// A member of a cluster, whose last log index is this (0: only the initial membership).
    Initialized {
        last_log_index: Option<u64>,
    },
    NoAnswer,
}

impl ProbeAnswer {
    /// True when the peer holds nothing past the initial membership entry (index 0), so it
    /// holds no entry a leader committed.
    fn holds_nothing_committed(&self) -> bool {
        match self {
            ProbeAnswer::Fresh => true,
            ProbeAnswer::Initialized { last_log_index } => last_log_index.is_none_or(|i| i == 0),
            ProbeAnswer::NoAnswer => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootstrapDecision {
    /// Form the cluster now.
    Initialize,
    /// A cluster exists: wait for its leader to replicate to us. With `guarded`, this
    /// member may have lost committed entries and votes, and must vote under a
    /// [`RejoinGuard`] until it caught up.
    JoinExisting { guarded: bool },
    /// Not enough answers yet: probe again.
    Retry,
}

/// `answers` are those of the other listed members, by id; `member_count` counts all
/// listed members (this one included); `listed` says whether this member is one of them;
/// `fresh_probers` are the other members that probed this one, since it started, with an
/// empty log of their own.
///
/// A joining member needs no guard when a majority of all members, not counting itself,
/// were seen holding nothing past the initial membership since this member started (by
/// their answer, or by their own probe): every committed entry is on a majority, which
/// would meet those members, so nothing was committed before this member started and it
/// cannot have lost anything. Counting the probes received matters when the cluster forms
/// while this member's own probes are still unanswered: by the time they are answered, the
/// new leader has written its first entry and the answers alone would call for the guard.
pub fn decide(
    listed: bool,
    member_count: usize,
    answers: &[(NodeId, ProbeAnswer)],
    fresh_probers: &BTreeSet<NodeId>,
) -> BootstrapDecision {
    if answers
        .iter()
        .any(|(_, a)| matches!(a, ProbeAnswer::Initialized { .. }))
    {
        let empty_others = answers
            .iter()
            .filter(|(id, a)| a.holds_nothing_committed() || fresh_probers.contains(id))
            .count();
        return BootstrapDecision::JoinExisting {
            guarded: empty_others * 2 <= member_count,
        };
    }
    if !listed {
        return BootstrapDecision::Retry;
    }
    let fresh = 1 + answers
        .iter()
        .filter(|(_, a)| *a == ProbeAnswer::Fresh)
        .count();
    if fresh * 2 > member_count {
        BootstrapDecision::Initialize
    } else {
        BootstrapDecision::Retry
    }
}

/// The vote guard of a member that rejoins with an empty data directory.
///
/// Such a member has lost entries it may have acknowledged and the votes it cast, so a
/// leader elected with its vote could lack an entry committed with its help, or share a
/// term with another leader. Until it holds everything committed, it grants a vote only
/// for a term later than the leader's term it learned after restarting, and only to a
/// candidate whose last log id is at least that leader's committed log id: by Raft's log
/// matching, such a candidate holds every committed entry. Before it learned both, it
/// grants none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejoinGuard {
    /// A normal member: votes as Raft says.
    Off,
    /// Rejoining, the leader's committed log id not yet known.
    Unknown,
    /// Rejoining; the leader of `term` had committed up to `committed`.
    Target { term: u64, committed: LogId },
}

impl RejoinGuard {
    /// Whether a vote request for `candidate_term` from a candidate whose last log id is
    /// `candidate_last_log` may reach Raft.
    pub fn allows_vote(&self, candidate_term: u64, candidate_last_log: Option<LogId>) -> bool {
        match self {
            RejoinGuard::Off => true,
            RejoinGuard::Unknown => false,
            RejoinGuard::Target { term, committed } => {
                candidate_term > *term && candidate_last_log.is_some_and(|last| last >= *committed)
            }
        }
    }

    /// The guard after learning a leader's term and committed log id, and after applying
    /// up to `applied` locally.
    pub fn advance(self, leader: Option<(u64, LogId)>, applied: Option<LogId>) -> Self {
        let next = match (self, leader) {
            (RejoinGuard::Off, _) => return RejoinGuard::Off,
            (RejoinGuard::Unknown, Some((term, committed))) => {
                RejoinGuard::Target { term, committed }
            }
            (RejoinGuard::Target { term, committed }, Some((t, c))) => RejoinGuard::Target {
                term: term.max(t),
                committed: committed.max(c),
            },
            (guard, None) => guard,
        };
        match (next, applied) {
            (RejoinGuard::Target { committed, .. }, Some(a)) if a.index >= committed.index => {
                RejoinGuard::Off
            }
            _ => next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ProbeAnswer::*;
    use super::*;

    /// Answers from members 2, 3, … in order.
    fn by_id(answers: &[ProbeAnswer]) -> Vec<(NodeId, ProbeAnswer)> {
        (2..).zip(answers.iter().copied()).collect()
    }

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(openraft::CommittedLeaderId::new(term, 1), index)
    }

    #[test]
    fn forms_only_with_a_fresh_majority_and_never_beside_a_cluster() {
        let empty = Initialized {
            last_log_index: Some(0),
        };
        let busy = Initialized {
            last_log_index: Some(40),
        };
        let none = BTreeSet::new();
        assert_eq!(
            decide(true, 1, &by_id(&[]), &none),
            BootstrapDecision::Initialize
        );
        assert_eq!(
            decide(true, 3, &by_id(&[NoAnswer, NoAnswer]), &none),
            BootstrapDecision::Retry
        );
        assert_eq!(
            decide(true, 3, &by_id(&[Fresh, NoAnswer]), &none),
            BootstrapDecision::Initialize
        );
        assert_eq!(
            decide(
                true,
                5,
                &by_id(&[Fresh, NoAnswer, NoAnswer, NoAnswer]),
                &none
            ),
            BootstrapDecision::Retry
        );
        assert_eq!(
            decide(true, 5, &by_id(&[Fresh, Fresh, NoAnswer, NoAnswer]), &none),
            BootstrapDecision::Initialize
        );
        assert_eq!(
            decide(false, 3, &by_id(&[Fresh, Fresh, Fresh]), &none),
            BootstrapDecision::Retry
        );
        // A cluster still forming: nothing can have been committed, so no guard.
        assert_eq!(
            decide(true, 3, &by_id(&[Fresh, empty]), &none),
            BootstrapDecision::JoinExisting { guarded: false }
        );
        assert_eq!(
            decide(true, 3, &by_id(&[empty, empty]), &none),
            BootstrapDecision::JoinExisting { guarded: false }
        );
        // A running cluster, or one not shown to have committed nothing: guard.
        assert_eq!(
            decide(true, 3, &by_id(&[busy, empty]), &none),
            BootstrapDecision::JoinExisting { guarded: true }
        );
        assert_eq!(
            decide(true, 3, &by_id(&[empty, NoAnswer]), &none),
            BootstrapDecision::JoinExisting { guarded: true }
        );
        assert_eq!(
            decide(false, 3, &by_id(&[busy, NoAnswer, NoAnswer]), &none),
            BootstrapDecision::JoinExisting { guarded: true }
        );
    }

    /// The cluster formed while this member's probe of member 2 went unanswered, and its
    /// leader wrote its first entry before member 3 answered: the probes members 2 and 3
    /// sent with empty logs since this member started show that nothing was committed
    /// before.
    #[test]
    fn probes_received_from_fresh_members_count_as_seen_empty() {
        let first_entry = Initialized {
            last_log_index: Some(1),
        };
        let guarded = BootstrapDecision::JoinExisting { guarded: true };
        let unguarded = BootstrapDecision::JoinExisting { guarded: false };
        let answers = by_id(&[NoAnswer, first_entry]);
        assert_eq!(decide(true, 3, &answers, &BTreeSet::new()), guarded);
        assert_eq!(decide(true, 3, &answers, &BTreeSet::from([3])), guarded);
        assert_eq!(
            decide(true, 3, &answers, &BTreeSet::from([2, 3])),
            unguarded
        );
        // A probe from a member that is not listed, or only one of five, is not enough.
        assert_eq!(decide(true, 3, &answers, &BTreeSet::from([3, 9])), guarded);
        let five = by_id(&[NoAnswer, first_entry, first_entry, NoAnswer]);
        assert_eq!(decide(true, 5, &five, &BTreeSet::from([2, 3])), guarded);
        assert_eq!(
            decide(true, 5, &five, &BTreeSet::from([2, 3, 4])),
            unguarded
        );
    }

    #[test]
    fn a_rejoining_member_votes_only_for_later_terms_and_candidates_holding_the_committed_log() {
        let guard = RejoinGuard::Unknown;
        assert!(
            !guard.allows_vote(99, Some(log_id(9, 9999))),
            "no vote before the target is known"
        );
        let guard = guard.advance(Some((3, log_id(3, 100))), None);
        assert_eq!(
            guard,
            RejoinGuard::Target {
                term: 3,
                committed: log_id(3, 100)
            }
        );
        assert!(guard.allows_vote(4, Some(log_id(3, 100))));
        assert!(
            guard.allows_vote(5, Some(log_id(4, 90))),
            "a later term holds every earlier commit"
        );
        assert!(
            !guard.allows_vote(3, Some(log_id(3, 100))),
            "no vote in the leader's own term"
        );
        assert!(!guard.allows_vote(4, Some(log_id(3, 99))));
        assert!(!guard.allows_vote(4, Some(log_id(2, 500))));
        assert!(!guard.allows_vote(4, None));
        // The target only grows, and applying up to it ends the guard.
        assert_eq!(
            guard.advance(Some((2, log_id(3, 50))), None),
            RejoinGuard::Target {
                term: 3,
                committed: log_id(3, 100)
            }
        );
        assert_eq!(guard.advance(None, Some(log_id(3, 99))), guard);
        assert_eq!(guard.advance(None, Some(log_id(3, 100))), RejoinGuard::Off);
        assert!(RejoinGuard::Off.allows_vote(0, None));
    }
}
