//! Forming the cluster on first start, as a pure decision.
//!
//! A member with an empty data directory asks the other listed members whether they hold
//! a cluster already. It forms a new one (openraft `initialize` with the listed members,
//! the same call on every fresh member, which openraft allows) only when a majority of the
//! listed members, itself included, answered that they are fresh too and none answered
//! that a cluster exists. A member whose data directory was wiped therefore never forms a
//! second cluster beside the running one: it waits for the leader to catch it up.

/// What one peer answered to a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeAnswer {
    Fresh,
    Initialized,
    NoAnswer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootstrapDecision {
    /// Form the cluster now.
    Initialize,
    /// A cluster exists: wait for its leader to replicate to us.
    JoinExisting,
    /// Not enough answers yet: probe again.
    Retry,
}

/// `answers` are those of the other listed members; `member_count` counts all listed
/// members (this one included); `listed` says whether this member is one of them.
pub fn decide(listed: bool, member_count: usize, answers: &[ProbeAnswer]) -> BootstrapDecision {
    if answers.contains(&ProbeAnswer::Initialized) {
        return BootstrapDecision::JoinExisting;
    }
    if !listed {
        return BootstrapDecision::Retry;
    }
    let fresh = 1 + answers.iter().filter(|a| **a == ProbeAnswer::Fresh).count();
    if fresh * 2 > member_count {
        BootstrapDecision::Initialize
    } else {
        BootstrapDecision::Retry
    }
}

#[cfg(test)]
mod tests {
    use super::ProbeAnswer::*;
    use super::*;

    #[test]
    fn forms_only_with_a_fresh_majority_and_never_beside_a_cluster() {
        assert_eq!(decide(true, 1, &[]), BootstrapDecision::Initialize);
        assert_eq!(
            decide(true, 3, &[NoAnswer, NoAnswer]),
            BootstrapDecision::Retry
        );
        assert_eq!(
            decide(true, 3, &[Fresh, NoAnswer]),
            BootstrapDecision::Initialize
        );
        assert_eq!(
            decide(true, 3, &[Fresh, Initialized]),
            BootstrapDecision::JoinExisting
        );
        assert_eq!(
            decide(true, 5, &[Fresh, NoAnswer, NoAnswer, NoAnswer]),
            BootstrapDecision::Retry
        );
        assert_eq!(
            decide(true, 5, &[Fresh, Fresh, NoAnswer, NoAnswer]),
            BootstrapDecision::Initialize
        );
        assert_eq!(
            decide(false, 3, &[Fresh, Fresh, Fresh]),
            BootstrapDecision::Retry
        );
        assert_eq!(
            decide(false, 3, &[Initialized, NoAnswer, NoAnswer]),
            BootstrapDecision::JoinExisting
        );
    }
}
