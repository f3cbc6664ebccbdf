//! Who becomes master: the replica with the highest replication position the leader
//! attached, then priority, then registration; a standby (priority 0, joined or set so)
//! never; a replica registered by an earlier version stays eligible at any priority.

use corral_proto::*;
use corral_state::{StateMachine, Succession};

fn apply_ok(state: &mut StateMachine, command: Command) -> (Answer, Vec<Event>) {
    let (response, events) = state.apply(&command);
    match response.outcome {
        Ok(answer) => (answer, events),
        Err(e) => panic!("{command:?} failed: {e}"),
    }
}

fn open_node(state: &mut StateMachine, name: &str) -> SessionId {
    let owner = SessionOwner::Node {
        name: name.into(),
        incarnation: 1,
    };
    match apply_ok(state, Command::OpenSession { owner }).0 {
        Answer::SessionOpened { session, .. } => session,
        other => panic!("unexpected {other:?}"),
    }
}

fn join(state: &mut StateMachine, address: &str, priority: u32, session: SessionId) {
    apply_ok(
        state,
        Command::JoinShard {
            shard: "M3".into(),
            address: address.into(),
            priority,
            session,
        },
    );
}

fn position(address: &str, position: u64) -> ReplicaPosition {
    ReplicaPosition {
        shard: "M3".into(),
        address: address.into(),
        position,
    }
}

fn master(state: &StateMachine) -> Option<String> {
    state.shard("M3").unwrap().master.clone()
}

/// M3: master a (priority 30), b (10), c (20), s (standby), each on its own node.
fn shard() -> (StateMachine, [SessionId; 4]) {
    let mut state = StateMachine::new();
    apply_ok(&mut state, Command::CreateShard { name: "M3".into() });
    let sessions = ["na", "nb", "nc", "ns"].map(|name| open_node(&mut state, name));
    join(&mut state, "a:1", 30, sessions[0]);
    join(&mut state, "b:1", 10, sessions[1]);
    join(&mut state, "c:1", 20, sessions[2]);
    join(&mut state, "s:1", 0, sessions[3]);
    assert_eq!(master(&state).as_deref(), Some("a:1"));
    (state, sessions)
}

#[test]
fn the_freshest_replica_succeeds_whatever_its_priority() {
    let (mut state, _) = shard();
    let death = Command::CloseNode {
        name: "na".into(),
        incarnation: 1,
    };
    assert_eq!(
        state.successions(&death),
        vec![Succession {
            shard: "M3".into(),
            candidates: vec!["b:1".into(), "c:1".into()],
        }]
    );
    let (_, events) = apply_ok(
        &mut state,
        Command::Promoting {
            positions: vec![
                position("b:1", 250),
                position("c:1", 180),
                position("s:1", 999),
            ],
            command: Box::new(death),
        },
    );
    assert_eq!(master(&state).as_deref(), Some("b:1"));
    assert!(events.contains(&Event::MasterChanged {
        shard: "M3".into(),
        master: Some("b:1".into()),
        previous: Some("a:1".into()),
        epoch: 2,
    }));
    // The positions held for that command only: the next death goes by priority.
    apply_ok(
        &mut state,
        Command::CloseNode {
            name: "nb".into(),
            incarnation: 1,
        },
    );
    assert_eq!(master(&state).as_deref(), Some("c:1"));
    // The standby never takes the role: the last eligible replica gone, M3 has none.
    apply_ok(
        &mut state,
        Command::Promoting {
            positions: vec![position("s:1", 1_000)],
            command: Box::new(Command::CloseNode {
                name: "nc".into(),
                incarnation: 1,
            }),
        },
    );
    assert_eq!(master(&state), None);
    assert!(state.check_invariants().is_ok());
    // Until a priority makes it eligible: then it takes the masterless shard.
    let (answer, _) = apply_ok(
        &mut state,
        Command::SetReplicaPriority {
            shard: "M3".into(),
            address: "s:1".into(),
            priority: 5,
        },
    );
    assert_eq!(
        answer,
        Answer::PrioritySet {
            master: Some("s:1".into()),
            // a 1, b 2, c 3, none 4, s 5.
            epoch: 5
        }
    );
}

#[test]
fn a_replica_with_a_position_outranks_one_without_and_ties_go_by_priority() {
    let (mut state, _) = shard();
    let death = || {
        Box::new(Command::CloseNode {
            name: "na".into(),
            incarnation: 1,
        })
    };
    let mut tied = state.clone();
    apply_ok(
        &mut state,
        Command::Promoting {
            positions: vec![position("b:1", 7)],
            command: death(),
        },
    );
    assert_eq!(master(&state).as_deref(), Some("b:1"));
    apply_ok(
        &mut tied,
        Command::Promoting {
            positions: vec![position("b:1", 7), position("c:1", 7)],
            command: death(),
        },
    );
    assert_eq!(master(&tied).as_deref(), Some("c:1"));
}

#[test]
fn a_standby_is_never_handed_the_role_and_a_master_set_to_zero_hands_it_on() {
    let (mut state, _) = shard();
    let (response, _) = state.apply(&Command::Handover {
        shard: "M3".into(),
        to: Some("s:1".into()),
        epoch: None,
    });
    assert!(matches!(
        response.outcome,
        Err(CommandError::Standby { .. })
    ));
    let (_, events) = apply_ok(
        &mut state,
        Command::SetReplicaPriority {
            shard: "M3".into(),
            address: "a:1".into(),
            priority: 0,
        },
    );
    assert_eq!(master(&state).as_deref(), Some("c:1"));
    assert!(events.contains(&Event::ReplicaPriority {
        shard: "M3".into(),
        address: "a:1".into(),
        priority: 0,
    }));
    // Setting the same priority again changes nothing.
    let revision = state.revision();
    let (response, events) = state.apply(&Command::SetReplicaPriority {
        shard: "M3".into(),
        address: "a:1".into(),
        priority: 0,
    });
    assert!(response.outcome.is_ok() && events.is_empty());
    assert_eq!(state.revision(), revision);
    // The last eligible replica cannot be made a standby while it is master.
    apply_ok(
        &mut state,
        Command::SetReplicaPriority {
            shard: "M3".into(),
            address: "b:1".into(),
            priority: 0,
        },
    );
    let (response, _) = state.apply(&Command::SetReplicaPriority {
        shard: "M3".into(),
        address: "c:1".into(),
        priority: 0,
    });
    assert!(matches!(
        response.outcome,
        Err(CommandError::NoHandoverTarget { .. })
    ));
    assert_eq!(master(&state).as_deref(), Some("c:1"));
}

/// `RegisterReplica`, as earlier versions wrote it, keeps every replica eligible: the
/// log they wrote applies as it did.
#[test]
fn replicas_registered_by_earlier_versions_stay_eligible_at_priority_zero() {
    let mut state = StateMachine::new();
    apply_ok(&mut state, Command::CreateShard { name: "M3".into() });
    let session = open_node(&mut state, "na");
    apply_ok(
        &mut state,
        Command::RegisterReplica {
            shard: "M3".into(),
            address: "old:1".into(),
            priority: 0,
            session,
        },
    );
    assert_eq!(master(&state).as_deref(), Some("old:1"));
    assert!(!state.is_standby("M3", "old:1"));
    // A state with no standby sums as it did before there were any.
    let bytes = state.to_snapshot_bytes();
    assert_eq!(bytes.last(), Some(&0));
    // A standby is in the snapshot and back.
    join(&mut state, "new:1", 0, session);
    assert!(state.is_standby("M3", "new:1"));
    let loaded = StateMachine::from_snapshot_bytes(&state.to_snapshot_bytes()).unwrap();
    assert!(loaded.is_standby("M3", "new:1"));
    assert_eq!(loaded.compute_checkpoint(), state.compute_checkpoint());
}

/// Positions are the leader's to attach: inside an actor they are refused, and a
/// command carries a bounded number.
#[test]
fn positions_come_around_a_command_and_in_bounded_number() {
    let inner = Command::Act {
        actor: Actor {
            certificate: "a1".into(),
            session: None,
        },
        command: Box::new(Command::Promoting {
            positions: vec![],
            command: Box::new(Command::CreateShard { name: "M1".into() }),
        }),
    };
    assert_eq!(inner.validate(), Err(InvalidCommand::NestedPositions));
    let many = Command::Promoting {
        positions: (0..=limits::PROMOTING_POSITIONS_MAX)
            .map(|i| position(&format!("r{i}:1"), 1))
            .collect(),
        command: Box::new(Command::CreateShard { name: "M1".into() }),
    };
    assert!(matches!(
        many.validate(),
        Err(InvalidCommand::TooManyPositions { .. })
    ));
}
