//! Tests of [`super::replica`].

use super::*;

fn put(key: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: b"v".to_vec(),
        session: None,
    }
}

fn entry(revision: Revision, key: &str) -> WatchItem {
    WatchItem::Entry {
        revision,
        command: put(key),
    }
}

fn snapshot_of(machine: &StateMachine) -> WatchItem {
    WatchItem::SnapshotChunk {
        revision: machine.revision(),
        bytes: machine.to_snapshot_bytes(),
        last: true,
    }
}

#[test]
fn entries_apply_in_order_and_gaps_or_repeats_are_refused() {
    let mut replica = Replica::new();
    assert_eq!(
        replica.handle_item(entry(2, "a")),
        Err(ReplicaError::NoBase(2))
    );
    assert!(matches!(
        replica.handle_item(entry(1, "a")),
        Ok(ItemOutcome::Applied(_))
    ));
    assert_eq!(
        replica.handle_item(entry(3, "b")),
        Err(ReplicaError::Gap {
            expected: 2,
            got: 3
        })
    );
    assert_eq!(
        replica.handle_item(entry(1, "a")),
        Err(ReplicaError::Gap {
            expected: 2,
            got: 1
        })
    );
    replica.handle_item(entry(2, "b")).unwrap();
    assert_eq!(replica.revision(), 2);
    assert_eq!(replica.resume_point(), Some(2));
}

#[test]
fn a_snapshot_replaces_the_state_but_never_moves_it_backwards() {
    let mut core = StateMachine::new();
    for key in ["a", "b", "c"] {
        core.apply(&put(key));
    }
    let mut replica = Replica::new();
    assert_eq!(
        replica.handle_item(snapshot_of(&core)),
        Ok(ItemOutcome::Replaced(3))
    );
    assert!(replica.machine().get("c").is_some());
    replica.handle_item(entry(4, "d")).unwrap();
    let mut older = StateMachine::new();
    older.apply(&put("x"));
    assert!(matches!(
        replica.handle_item(snapshot_of(&older)),
        Err(ReplicaError::OldSnapshot { .. })
    ));
    assert_eq!(replica.revision(), 4);
}

#[test]
fn a_divergent_entry_resets_the_replica() {
    let mut replica = Replica::new();
    replica.handle_item(entry(1, "a")).unwrap();
    // A command that changes nothing cannot make revision 2.
    let noop = WatchItem::Entry {
        revision: 2,
        command: Command::Delete {
            key: "missing".into(),
            prefix: false,
        },
    };
    assert!(matches!(
        replica.handle_item(noop),
        Err(ReplicaError::Diverged { .. })
    ));
    assert_eq!(replica.resume_point(), None);
}

#[test]
fn history_serves_resumes_and_reports_when_it_no_longer_reaches() {
    let mut replica = Replica::new();
    for revision in 1..=10 {
        replica
            .handle_item(entry(revision, &format!("k{revision}")))
            .unwrap();
    }
    let after_7: Vec<_> = replica
        .history_after(7)
        .unwrap()
        .iter()
        .map(|b| b.revision)
        .collect();
    assert_eq!(after_7, vec![8, 9, 10]);
    assert_eq!(replica.history_after(10).unwrap().len(), 0);
    let mut core = StateMachine::new();
    for revision in 1..=20 {
        core.apply(&put(&format!("k{revision}")));
    }
    replica.handle_item(snapshot_of(&core)).unwrap();
    assert!(replica.history_after(5).is_none());
    assert_eq!(replica.history_floor(), 20);
}

#[test]
fn garbage_snapshots_are_refused_and_the_state_kept() {
    let mut replica = Replica::new();
    replica.handle_item(entry(1, "a")).unwrap();
    let garbage = WatchItem::SnapshotChunk {
        revision: 5,
        bytes: vec![0xff; 100],
        last: true,
    };
    assert!(matches!(
        replica.handle_item(garbage),
        Err(ReplicaError::BrokenSnapshot(_))
    ));
    assert_eq!(replica.revision(), 1);
    assert!(replica.machine().get("a").is_some());
}

/// An own write applied ahead of the stream is not applied again when the stream
/// brings it, and the stream goes on after it.
#[test]
fn an_own_write_runs_ahead_and_the_stream_confirms_it() {
    let mut replica = Replica::new();
    replica.handle_item(entry(1, "a")).unwrap();
    let batch = replica
        .apply_own(2, &put("mine"))
        .unwrap()
        .expect("one behind: applied");
    assert_eq!(batch.revision, 2);
    assert_eq!(replica.revision(), 2);
    assert!(replica.machine().get("mine").is_some());
    assert_eq!(
        replica.handle_item(entry(2, "mine")),
        Ok(ItemOutcome::Nothing)
    );
    assert_eq!(replica.revision(), 2);
    assert_eq!(
        replica.history_after(0).unwrap().len(),
        2,
        "revision 2 is in the history once"
    );
    assert!(matches!(
        replica.handle_item(entry(3, "b")),
        Ok(ItemOutcome::Applied(_))
    ));
}

/// An own write is applied only when the replica is exactly one revision behind it;
/// otherwise (or with no base yet) it waits for the stream.
#[test]
fn an_own_write_waits_unless_the_replica_is_one_behind() {
    let mut replica = Replica::new();
    assert_eq!(replica.apply_own(1, &put("a")), Ok(None), "no base yet");
    replica.handle_item(entry(1, "a")).unwrap();
    assert_eq!(
        replica.apply_own(3, &put("c")),
        Ok(None),
        "revision 2 not seen yet"
    );
    assert_eq!(replica.apply_own(1, &put("a")), Ok(None), "already there");
    assert_eq!(replica.revision(), 1);
}

/// The stream bringing another command at an own write's revision means the replica
/// cannot be trusted: it starts over. A stream that skips past it is a gap.
#[test]
fn the_stream_disagreeing_with_an_own_write_resets_the_replica() {
    let mut replica = Replica::new();
    replica.handle_item(entry(1, "a")).unwrap();
    replica.apply_own(2, &put("mine")).unwrap();
    assert_eq!(
        replica.handle_item(entry(3, "b")),
        Err(ReplicaError::Gap {
            expected: 2,
            got: 3
        })
    );
    assert!(matches!(
        replica.handle_item(entry(2, "theirs")),
        Err(ReplicaError::Diverged { .. })
    ));
    assert_eq!(
        replica.resume_point(),
        None,
        "a reset replica asks for a snapshot"
    );
}

/// A new stream resumes after the replica's revision, own writes included, so what
/// ran ahead is forgotten when a stream ends; the number ahead is bounded.
#[test]
fn own_writes_ahead_are_bounded_and_forgotten_when_the_stream_ends() {
    let mut replica = Replica::new();
    replica.handle_item(entry(1, "a")).unwrap();
    for revision in 2..2 + AHEAD_MAX as Revision {
        assert!(replica.apply_own(revision, &put("k")).unwrap().is_some());
    }
    let next = replica.revision() + 1;
    assert_eq!(
        replica.apply_own(next, &put("k")),
        Ok(None),
        "at AHEAD_MAX it waits"
    );
    replica.stream_ended();
    assert!(matches!(
        replica.handle_item(entry(next, "b")),
        Ok(ItemOutcome::Applied(_))
    ));
}

/// The history stays within a budget in proportion to the state: one key written over
/// and over keeps at most the smallest budget, and the bytes counted cover at least the
/// keys and values held.
#[test]
fn the_history_stays_in_proportion_to_the_state() {
    let mut replica = Replica::new();
    let value = vec![7u8; 1_000];
    for revision in 1..=5_000 {
        replica
            .handle_item(WatchItem::Entry {
                revision,
                command: Command::Put {
                    key: "config".into(),
                    value: value.clone(),
                    session: None,
                },
            })
            .unwrap();
    }
    assert_eq!(history_budget(1_006), HISTORY_BYTES_MIN);
    assert!(replica.history_bytes() <= HISTORY_BYTES_MIN);
    let kept = replica.history().count();
    assert!(kept * 1_006 <= replica.history_bytes(), "{kept} batches");
    assert!(kept > 500, "only {kept} batches kept");
    // Oldest first: the newest revisions are kept.
    assert_eq!(replica.history().last().map(|b| b.revision), Some(5_000));
    assert_eq!(history_budget(u64::MAX), HISTORY_BYTES_MAX);
    assert_eq!(history_budget(40 << 20), 5 << 20);
}
