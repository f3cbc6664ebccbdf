//! Reads and range deletes inside transactions (what etcd's transactions and range
//! deletes need): a read sees the branch's writes before it, a range delete removes
//! exactly its range, reads too large to answer refuse the whole transaction, and a
//! foreign session's keys stay out of reach.

use corral_proto::limits::TXN_RANGE_BYTES_MAX;
use corral_proto::range::{KeyRange, RangeQuery, SortOrder, SortTarget};
use corral_proto::*;
use corral_state::StateMachine;

fn apply(state: &mut StateMachine, command: Command) -> CommandResponse {
    state.apply(&command).0
}

fn put(state: &mut StateMachine, key: &str, value: &[u8], session: Option<SessionId>) {
    let response = apply(
        state,
        Command::Put {
            key: key.into(),
            value: value.to_vec(),
            session,
        },
    );
    response.outcome.expect("the put");
}

fn txn(success: Vec<TxnOp>) -> Command {
    Command::Txn(Txn {
        compares: vec![],
        success,
        failure: vec![],
    })
}

fn results(response: CommandResponse) -> Vec<TxnOpResult> {
    match response.outcome {
        Ok(Answer::Txn { results, .. }) => results,
        other => panic!("not a transaction's answer: {other:?}"),
    }
}

fn open_node(state: &mut StateMachine, name: &str) -> SessionId {
    let owner = SessionOwner::Node {
        name: name.into(),
        incarnation: 1,
    };
    match apply(state, Command::OpenSession { owner }).outcome {
        Ok(Answer::SessionOpened { session, .. }) => session,
        other => panic!("{other:?}"),
    }
}

/// etcd's lock recipe in one transaction: put my key, then read who is first. The read
/// sees the put before it; a read before the put does not.
#[test]
fn a_read_sees_the_writes_before_it_in_its_branch() {
    let mut state = StateMachine::new();
    let session = open_node(&mut state, "a1");
    let first = RangeQuery {
        limit: 1,
        sort: Some((SortTarget::CreateRevision, SortOrder::Ascend)),
        ..RangeQuery::of(KeyRange::prefix("lock/"))
    };
    let answer = results(apply(
        &mut state,
        txn(vec![
            TxnOp::Range(first.clone()),
            TxnOp::Put {
                key: "lock/1a".into(),
                value: vec![],
                session: Some(session),
            },
            TxnOp::Range(first.clone()),
        ]),
    ));
    let TxnOpResult::Range(before) = &answer[0] else {
        panic!("{answer:?}")
    };
    assert!(before.keys.is_empty());
    let TxnOpResult::Range(after) = &answer[2] else {
        panic!("{answer:?}")
    };
    assert_eq!(after.keys[0].key, "lock/1a");
    assert_eq!(after.keys[0].session, Some(session));
    // A second contender finds the first still first.
    put(&mut state, "lock/2b", b"", None);
    let found = state.range(&first, u64::MAX).unwrap();
    assert_eq!(found.keys[0].key, "lock/1a");
    assert_eq!(found.count, 2);
    assert!(found.more);
}

#[test]
fn a_range_delete_removes_exactly_its_range() {
    let mut state = StateMachine::new();
    for key in ["a", "b/1", "b/2", "c", "d"] {
        put(&mut state, key, b"v", None);
    }
    let before = state.revision();
    let response = apply(
        &mut state,
        txn(vec![TxnOp::DeleteRange(KeyRange::from_etcd(b"b/2", b"d"))]),
    );
    assert_eq!(response.revision, before + 1);
    assert_eq!(results(response), [TxnOpResult::Deleted { count: 2 }]);
    let left: Vec<String> = state
        .range(&RangeQuery::of(KeyRange::prefix("")), u64::MAX)
        .unwrap()
        .keys
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(left, ["a", "b/1", "d"]);
    // Every key from one on.
    let (_, events) = state.apply(&txn(vec![TxnOp::DeleteRange(KeyRange::from_etcd(
        b"b", b"\0",
    ))]));
    assert_eq!(events.len(), 2);
    assert!(state.get("a").is_some() && state.get("d").is_none());
}

/// Reads that would answer more than a frame carries refuse the transaction before any
/// of its writes: the state and the revision stay as they were.
#[test]
fn reads_too_large_to_answer_refuse_the_whole_transaction() {
    let mut state = StateMachine::new();
    let big = vec![b'x'; 600 * 1024];
    put(&mut state, "big/1", &big, None);
    put(&mut state, "big/2", &big, None);
    let before = state.revision();
    let response = apply(
        &mut state,
        txn(vec![
            TxnOp::Put {
                key: "marker".into(),
                value: b"written?".to_vec(),
                session: None,
            },
            TxnOp::Range(RangeQuery::of(KeyRange::prefix("big/"))),
        ]),
    );
    match response.outcome {
        Err(CommandError::RangeTooLarge { bytes, max }) => {
            assert!(bytes > max);
            assert_eq!(max, TXN_RANGE_BYTES_MAX);
        }
        other => panic!("{other:?}"),
    }
    assert!(!response.changed);
    assert_eq!(state.revision(), before);
    assert!(state.get("marker").is_none());
    // A limit keeps a read within bounds when it comes before the writes.
    let response = apply(
        &mut state,
        txn(vec![
            TxnOp::Range(RangeQuery {
                limit: 1,
                ..RangeQuery::of(KeyRange::prefix("big/"))
            }),
            TxnOp::Put {
                key: "marker".into(),
                value: b"written".to_vec(),
                session: None,
            },
        ]),
    );
    assert!(response.outcome.is_ok(), "{:?}", response.outcome);
}

/// A compare on a key's session (etcd's lease compare), and a range delete that would
/// reach another node's ephemeral key refused whole.
#[test]
fn session_compares_and_foreign_keys_in_ranges() {
    let mut state = StateMachine::new();
    let a1 = open_node(&mut state, "a1");
    let a2 = open_node(&mut state, "a2");
    put(&mut state, "eph/a1", b"v", Some(a1));
    put(&mut state, "eph/a2", b"v", Some(a2));
    let compare = |session| Compare {
        key: "eph/a1".into(),
        op: CompareOp::Equal,
        target: CompareTarget::Session(session),
    };
    assert!(state.compares_hold(&Txn {
        compares: vec![compare(a1)],
        ..Txn::default()
    }));
    assert!(!state.compares_hold(&Txn {
        compares: vec![compare(a2)],
        ..Txn::default()
    }));
    let as_a1 = |command| Command::Act {
        actor: Actor {
            certificate: "a1".into(),
            session: Some(a1),
        },
        command: Box::new(command),
    };
    let response = apply(
        &mut state,
        as_a1(txn(vec![TxnOp::DeleteRange(KeyRange::prefix("eph/"))])),
    );
    assert!(
        matches!(
            response.outcome,
            Err(CommandError::NotOwner { .. } | CommandError::ForeignSession { .. })
        ),
        "{:?}",
        response.outcome
    );
    assert!(state.get("eph/a1").is_some() && state.get("eph/a2").is_some());
    let response = apply(
        &mut state,
        as_a1(txn(vec![TxnOp::DeleteRange(KeyRange::single("eph/a1"))])),
    );
    assert_eq!(results(response), [TxnOpResult::Deleted { count: 1 }]);
    assert_eq!(state.session_keys(a2), ["eph/a2"]);
    assert!(state.session_keys(a1).is_empty());
}
