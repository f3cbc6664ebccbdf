//! A follower commits what the leader says is committed among the entries it already
//! holds before it appends the new ones, so that applying them overlaps the flush.

use std::sync::Arc;

use maplit::btreeset;
use pretty_assertions::assert_eq;

use crate::engine::testing::UTConfig;
use crate::engine::Command;
use crate::engine::Engine;
use crate::error::RejectAppendEntries;
use crate::raft_state::Accepted;
use crate::raft_state::LogStateReader;
use crate::testing::blank_ent;
use crate::testing::log_id;
use crate::utime::UTime;
use crate::EffectiveMembership;
use crate::Membership;
use crate::MembershipState;
use crate::TokioInstant;
use crate::Vote;

fn m01() -> Membership<u64, ()> {
    Membership::<u64, ()>::new(vec![btreeset! {0,1}], None)
}

/// A follower of leader 1 in term 2 holding 1..=3, committed up to 1, that accepted up to 3
/// from this leader.
fn eng() -> Engine<UTConfig> {
    let mut eng = Engine::default();
    eng.state.enable_validation(false);

    eng.config.id = 2;
    eng.state.vote = UTime::new(TokioInstant::now(), Vote::new_committed(2, 1));
    eng.state.log_ids.append(log_id(1, 1, 1));
    eng.state.log_ids.append(log_id(2, 1, 3));
    eng.state.committed = Some(log_id(1, 1, 1));
    let leader = *eng.state.vote_ref().leader_id();
    eng.state.accepted = Accepted::new(leader, Some(log_id(2, 1, 3)));
    eng.state.membership_state = MembershipState::new(
        Arc::new(EffectiveMembership::new(Some(log_id(1, 1, 1)), m01())),
        Arc::new(EffectiveMembership::new(Some(log_id(1, 1, 1)), m01())),
    );
    eng.state.server_state = eng.calc_server_state();
    eng
}

#[test]
fn test_commit_of_held_entries_comes_before_the_append() -> anyhow::Result<()> {
    let mut eng = eng();

    // The leader committed up to 4, the entry it sends now: only 3, the last entry that
    // matched, is committed before the append.
    let res = eng.append_entries_committing_first(
        &Vote::new_committed(2, 1),
        Some(log_id(2, 1, 3)),
        vec![blank_ent(2, 1, 4)],
        Some(log_id(2, 1, 4)),
    );

    assert_eq!(Ok(()), res);
    assert_eq!(Some(&log_id(2, 1, 3)), eng.state.committed());
    assert_eq!(Some(&log_id(2, 1, 4)), eng.state.last_log_id());
    assert_eq!(
        vec![
            Command::Commit {
                seq: 1,
                already_committed: Some(log_id(1, 1, 1)),
                upto: log_id(2, 1, 3),
            },
            Command::AppendInputEntries {
                vote: Vote::new_committed(2, 1),
                entries: vec![blank_ent(2, 1, 4)],
            },
        ],
        eng.output.take_commands()
    );

    // What the leader committed beyond is committed after the append.
    eng.handle_commit_entries(Some(log_id(2, 1, 4)));
    assert_eq!(Some(&log_id(2, 1, 4)), eng.state.committed());
    assert_eq!(
        vec![Command::Commit {
            seq: 2,
            already_committed: Some(log_id(2, 1, 3)),
            upto: log_id(2, 1, 4),
        }],
        eng.output.take_commands()
    );

    Ok(())
}

#[test]
fn test_a_request_refused_for_its_prev_log_id_commits_nothing() -> anyhow::Result<()> {
    let mut eng = eng();

    // The leader sends what follows 5, which this node lacks (it holds up to 3), and says 5
    // is committed: the request is refused, and nothing is committed, not even what this
    // node accepted from the same leader.
    let res = eng.append_entries_committing_first(
        &Vote::new_committed(2, 1),
        Some(log_id(2, 1, 5)),
        vec![blank_ent(2, 1, 6)],
        Some(log_id(2, 1, 5)),
    );

    assert_eq!(
        Err(RejectAppendEntries::ByConflictingLogId {
            expect: log_id(2, 1, 5),
            local: None,
        }),
        res
    );
    assert_eq!(Some(&log_id(1, 1, 1)), eng.state.committed());
    assert!(
        !eng.output.take_commands().iter().any(|c| matches!(c, Command::Commit { .. })),
        "a refused request committed entries"
    );

    Ok(())
}

#[test]
fn test_nothing_is_committed_before_the_append_beyond_what_the_leader_committed() -> anyhow::Result<()> {
    let mut eng = eng();

    let res = eng.append_entries_committing_first(
        &Vote::new_committed(2, 1),
        Some(log_id(2, 1, 3)),
        vec![blank_ent(2, 1, 4)],
        Some(log_id(2, 1, 2)),
    );

    assert_eq!(Ok(()), res);
    assert_eq!(Some(&log_id(2, 1, 2)), eng.state.committed());
    assert_eq!(
        vec![
            Command::Commit {
                seq: 1,
                already_committed: Some(log_id(1, 1, 1)),
                upto: log_id(2, 1, 2),
            },
            Command::AppendInputEntries {
                vote: Vote::new_committed(2, 1),
                entries: vec![blank_ent(2, 1, 4)],
            },
        ],
        eng.output.take_commands()
    );

    Ok(())
}
