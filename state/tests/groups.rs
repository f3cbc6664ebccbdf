//! Shard groups: slots split among shards, moves that both sides see before they happen,
//! and a flip of every moving slot in one step.

use corral_proto::slots::{SLOTS, slot_of};
use corral_proto::*;
use corral_state::StateMachine;

fn apply_ok(state: &mut StateMachine, command: Command) -> Answer {
    let (response, _) = state.apply(&command);
    match response.outcome {
        Ok(answer) => answer,
        Err(e) => panic!("{command:?} failed: {e}"),
    }
}

fn refused(state: &mut StateMachine, command: Command) -> CommandError {
    let revision = state.revision();
    let (response, events) = state.apply(&command);
    assert!(events.is_empty() && state.revision() == revision);
    response.outcome.expect_err("refused")
}

fn move_slots(first: u16, last: u16, to: &str) -> Command {
    Command::MoveSlots {
        group: "orders".into(),
        first,
        last,
        to: to.into(),
    }
}

fn finish(commit: bool) -> Command {
    Command::FinishMove {
        group: "orders".into(),
        commit,
    }
}

/// The shard that owns each slot, slot by slot.
fn owners(state: &StateMachine) -> Vec<String> {
    let group = state.group("orders").unwrap();
    (0..SLOTS)
        .map(|slot| group.range_of(slot).unwrap().shard.clone())
        .collect()
}

#[test]
fn a_group_goes_from_three_shards_to_four_and_back_to_two() {
    let mut state = StateMachine::new();
    for shard in ["M1", "M2", "M3", "M4"] {
        apply_ok(&mut state, Command::CreateShard { name: shard.into() });
    }
    let shards = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
    apply_ok(
        &mut state,
        Command::CreateGroup {
            name: "orders".into(),
            shards: shards(&["M1", "M2", "M3"]),
        },
    );
    let owned = owners(&state);
    assert_eq!(owned[0], "M1");
    assert_eq!(owned[5460], "M1");
    assert_eq!(owned[5461], "M2");
    assert_eq!(owned[10_922], "M3");
    assert_eq!(owned[16_383], "M3");
    let route = state.route("orders", "foo").unwrap();
    assert_eq!(
        (route.slot, route.shard.as_str(), route.version),
        (12182, "M3", 1)
    );
    assert_eq!(route.slot, slot_of(b"foo"));

    // M4 takes the last part of M3: first marked as moving (M3 still owns it), then flipped.
    assert_eq!(
        apply_ok(&mut state, move_slots(12_000, 16_383, "M4")),
        Answer::GroupChanged { version: 2 }
    );
    let route = state.route("orders", "foo").unwrap();
    assert_eq!(route.shard, "M3");
    assert_eq!(route.moving_to.as_deref(), Some("M4"));
    assert!(matches!(
        refused(&mut state, move_slots(0, 10, "M4")),
        CommandError::MoveUnderWay { .. }
    ));
    assert!(matches!(
        refused(&mut state, Command::DeleteShard { name: "M4".into() }),
        CommandError::ShardInGroup { .. }
    ));
    apply_ok(&mut state, finish(true));
    let route = state.route("orders", "foo").unwrap();
    assert_eq!((route.shard.as_str(), route.version), ("M4", 3));
    assert_eq!(route.moving_to, None);
    assert!(matches!(
        refused(&mut state, finish(true)),
        CommandError::NoMove { .. }
    ));

    // A move cancelled changes no owner, and still moves the version on.
    apply_ok(&mut state, move_slots(0, 100, "M2"));
    apply_ok(&mut state, finish(false));
    assert_eq!(owners(&state)[50], "M1");
    assert_eq!(state.group("orders").unwrap().version, 5);

    // Down to two: M2's slots to M1, M3's to M4, in two moves.
    apply_ok(&mut state, move_slots(5461, 10_921, "M1"));
    apply_ok(&mut state, finish(true));
    apply_ok(&mut state, move_slots(10_922, 11_999, "M4"));
    apply_ok(&mut state, finish(true));
    let group = state.group("orders").unwrap();
    assert_eq!(group.shards(), ["M1", "M4"]);
    assert_eq!(group.ranges.len(), 2, "{:?}", group.ranges);
    assert_eq!(group.version, 9);
    // M2 and M3 own nothing any more: they may go.
    apply_ok(&mut state, Command::DeleteShard { name: "M2".into() });
    assert!(state.check_invariants().is_ok());
    // A snapshot keeps the group.
    let loaded = StateMachine::from_snapshot_bytes(&state.to_snapshot_bytes()).unwrap();
    assert_eq!(loaded.group("orders"), state.group("orders"));
}

#[test]
fn groups_refuse_what_would_break_them() {
    let mut state = StateMachine::new();
    for shard in ["M1", "M2"] {
        apply_ok(&mut state, Command::CreateShard { name: shard.into() });
    }
    let group = |name: &str, shards: &[&str]| Command::CreateGroup {
        name: name.into(),
        shards: shards.iter().map(|s| s.to_string()).collect(),
    };
    assert!(matches!(
        refused(&mut state, group("orders", &["M1", "M9"])),
        CommandError::NoSuchShard { .. }
    ));
    assert!(matches!(
        refused(&mut state, group("orders", &["M1", "M1"])),
        CommandError::Invalid(InvalidCommand::GroupShards { .. })
    ));
    assert!(matches!(
        refused(&mut state, group("orders", &[])),
        CommandError::Invalid(InvalidCommand::GroupShards { .. })
    ));
    apply_ok(&mut state, group("orders", &["M1"]));
    assert!(matches!(
        refused(&mut state, group("users", &["M1"])),
        CommandError::ShardInGroup { .. }
    ));
    assert!(matches!(
        refused(&mut state, move_slots(10, 5, "M2")),
        CommandError::Invalid(InvalidCommand::Slots { .. })
    ));
    assert!(matches!(
        refused(&mut state, move_slots(0, SLOTS, "M2")),
        CommandError::Invalid(InvalidCommand::Slots { .. })
    ));
    // Slots M1 already owns do not move: nothing changes.
    let revision = state.revision();
    apply_ok(&mut state, move_slots(0, 99, "M1"));
    assert_eq!(state.revision(), revision);
    apply_ok(
        &mut state,
        Command::DeleteGroup {
            name: "orders".into(),
        },
    );
    assert!(state.route("orders", "foo").is_none());
    apply_ok(&mut state, Command::DeleteShard { name: "M1".into() });
}
