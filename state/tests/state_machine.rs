//! Property and scenario tests of the core's state machine: random command sequences must
//! keep every invariant, and the named scenarios must behave as DESIGN.md says.

use std::collections::BTreeMap;

use corral_proto::*;
use corral_state::StateMachine;
use proptest::prelude::*;

/// A command over a small universe, with sessions named by the order they were opened so
/// that generated sequences refer to real (and sometimes closed or bogus) sessions.
#[derive(Clone, Debug)]
enum Op {
    Put {
        key: u8,
        value: u8,
        session: Option<u8>,
    },
    Delete {
        key: u8,
        prefix: bool,
    },
    Cas {
        key: u8,
        version: u8,
        value: u8,
        session: Option<u8>,
    },
    Txn {
        compare_key: u8,
        compare_version: u8,
        put_key: u8,
        put_session: Option<u8>,
        delete_key: u8,
    },
    OpenNode {
        name: u8,
        incarnation: u8,
    },
    OpenClient {
        node: u8,
        client_key: u8,
    },
    Close {
        session: u8,
    },
    CloseNode {
        name: u8,
        incarnation: u8,
    },
    RenewNode {
        name: u8,
        from: u8,
        to: u8,
    },
    CreateShard {
        shard: u8,
    },
    DeleteShard {
        shard: u8,
    },
    Register {
        shard: u8,
        address: u8,
        priority: u8,
        session: u8,
    },
    Deregister {
        shard: u8,
        address: u8,
    },
    /// A join of this version: priority 0 makes a standby.
    Join {
        shard: u8,
        address: u8,
        priority: u8,
        session: u8,
    },
    SetPriority {
        shard: u8,
        address: u8,
        priority: u8,
    },
    /// A group over some of the shards M0..M2 (a bit each).
    CreateGroup {
        shards: u8,
    },
    MoveSlots {
        first: u16,
        len: u16,
        to: u8,
    },
    FinishMove {
        commit: bool,
    },
    /// A death report with the positions a leader attaches.
    CloseNodePromoting {
        name: u8,
        incarnation: u8,
        positions: Vec<(u8, u8, u8)>,
    },
    Handover {
        shard: u8,
        to: Option<u8>,
        epoch: Option<u8>,
    },
    Acquire {
        lock: u8,
        session: u8,
        wait: bool,
    },
    Release {
        lock: u8,
        session: u8,
    },
    RegisterService {
        service: u8,
        id: u8,
        session: u8,
    },
    DeregisterService {
        service: u8,
        id: u8,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let s = 0u8..8;
    prop_oneof![
        1 => (0u8..6, any::<u8>(), proptest::option::of(0u8..8)).prop_map(|(key, value, session)| Op::Put { key, value, session }),
        1 => (0u8..6, any::<bool>()).prop_map(|(key, prefix)| Op::Delete { key, prefix }),
        1 => (0u8..6, 0u8..4, any::<u8>(), proptest::option::of(0u8..8))
            .prop_map(|(key, version, value, session)| Op::Cas { key, version, value, session }),
        1 => (0u8..6, 0u8..3, 0u8..6, proptest::option::of(0u8..8), 0u8..6).prop_map(
            |(compare_key, compare_version, put_key, put_session, delete_key)| Op::Txn {
                compare_key,
                compare_version,
                put_key,
                put_session,
                delete_key
            }
        ),
        3 => (0u8..3, 0u8..4).prop_map(|(name, incarnation)| Op::OpenNode { name, incarnation }),
        3 => (s.clone(), 0u8..3).prop_map(|(node, client_key)| Op::OpenClient { node, client_key }),
        1 => s.clone().prop_map(|session| Op::Close { session }),
        1 => (0u8..3, 0u8..4).prop_map(|(name, incarnation)| Op::CloseNode { name, incarnation }),
        1 => (0u8..3, 0u8..4, 0u8..5).prop_map(|(name, from, to)| Op::RenewNode { name, from, to }),
        1 => (0u8..3).prop_map(|shard| Op::CreateShard { shard }),
        1 => (0u8..3).prop_map(|shard| Op::DeleteShard { shard }),
        3 => (0u8..3, 0u8..5, 0u8..3, s.clone())
            .prop_map(|(shard, address, priority, session)| Op::Register { shard, address, priority, session }),
        1 => (0u8..3, 0u8..5).prop_map(|(shard, address)| Op::Deregister { shard, address }),
        2 => (0u8..3, 0u8..5, 0u8..3, s.clone())
            .prop_map(|(shard, address, priority, session)| Op::Join { shard, address, priority, session }),
        1 => (0u8..3, 0u8..5, 0u8..3)
            .prop_map(|(shard, address, priority)| Op::SetPriority { shard, address, priority }),
        1 => (0u8..8).prop_map(|shards| Op::CreateGroup { shards }),
        2 => (0u16..16_384, 0u16..9_000, 0u8..3).prop_map(|(first, len, to)| Op::MoveSlots { first, len, to }),
        1 => any::<bool>().prop_map(|commit| Op::FinishMove { commit }),
        1 => (0u8..3, 0u8..4, proptest::collection::vec((0u8..3, 0u8..5, any::<u8>()), 0..6))
            .prop_map(|(name, incarnation, positions)| Op::CloseNodePromoting { name, incarnation, positions }),
        1 => (0u8..3, proptest::option::of(0u8..5), proptest::option::of(0u8..6))
            .prop_map(|(shard, to, epoch)| Op::Handover { shard, to, epoch }),
        3 => (0u8..3, s.clone(), any::<bool>()).prop_map(|(lock, session, wait)| Op::Acquire { lock, session, wait }),
        2 => (0u8..3, s.clone()).prop_map(|(lock, session)| Op::Release { lock, session }),
        1 => (0u8..2, 0u8..3, s).prop_map(|(service, id, session)| Op::RegisterService { service, id, session }),
        1 => (0u8..2, 0u8..3).prop_map(|(service, id)| Op::DeregisterService { service, id }),
    ]
}

/// Turns abstract ops into commands, resolving session numbers against the sessions opened
/// so far (an unknown number becomes a session that never existed).
struct Resolver {
    opened: Vec<SessionId>,
}

impl Resolver {
    fn session(&self, index: u8) -> SessionId {
        self.opened
            .get(index as usize)
            .copied()
            .unwrap_or(1_000_000 + index as u64)
    }

    fn command(&self, op: &Op) -> Command {
        let key = |k: u8| format!("k/{}", k % 3) + if k >= 3 { "/x" } else { "" };
        match op.clone() {
            Op::Put {
                key: k,
                value,
                session,
            } => Command::Put {
                key: key(k),
                value: vec![value],
                session: session.map(|s| self.session(s)),
            },
            Op::Delete { key: k, prefix } => Command::Delete {
                key: if prefix {
                    format!("k/{}", k % 3)
                } else {
                    key(k)
                },
                prefix,
            },
            Op::Cas {
                key: k,
                version,
                value,
                session,
            } => Command::compare_and_set(
                key(k),
                version as u64,
                vec![value],
                session.map(|s| self.session(s)),
            ),
            Op::Txn {
                compare_key,
                compare_version,
                put_key,
                put_session,
                delete_key,
            } => Command::Txn(Txn {
                compares: vec![Compare {
                    key: key(compare_key),
                    op: CompareOp::Equal,
                    target: CompareTarget::Version(compare_version as u64),
                }],
                success: vec![
                    TxnOp::Put {
                        key: key(put_key),
                        value: vec![1],
                        session: put_session.map(|s| self.session(s)),
                    },
                    TxnOp::Delete {
                        key: key(delete_key),
                        prefix: false,
                    },
                ],
                failure: vec![TxnOp::Put {
                    key: key(delete_key),
                    value: vec![2],
                    session: None,
                }],
            }),
            Op::OpenNode { name, incarnation } => Command::OpenSession {
                owner: SessionOwner::Node {
                    name: format!("node{name}"),
                    incarnation: incarnation as u64,
                },
            },
            Op::OpenClient { node, client_key } => Command::OpenSession {
                owner: SessionOwner::Client {
                    node_session: self.session(node),
                    client_key: client_key as u64,
                    label: String::new(),
                },
            },
            Op::Close { session } => Command::CloseSession {
                session: self.session(session),
            },
            Op::CloseNode { name, incarnation } => Command::CloseNode {
                name: format!("node{name}"),
                incarnation: incarnation as u64,
            },
            Op::RenewNode { name, from, to } => Command::RenewNode {
                name: format!("node{name}"),
                from: from as u64,
                to: to as u64,
            },
            Op::CreateShard { shard } => Command::CreateShard {
                name: format!("M{shard}"),
            },
            Op::DeleteShard { shard } => Command::DeleteShard {
                name: format!("M{shard}"),
            },
            Op::Register {
                shard,
                address,
                priority,
                session,
            } => Command::RegisterReplica {
                shard: format!("M{shard}"),
                address: format!("10.0.0.{address}:7000"),
                priority: priority as u32,
                session: self.session(session),
            },
            Op::Deregister { shard, address } => Command::DeregisterReplica {
                shard: format!("M{shard}"),
                address: format!("10.0.0.{address}:7000"),
            },
            Op::Join {
                shard,
                address,
                priority,
                session,
            } => Command::JoinShard {
                shard: format!("M{shard}"),
                address: format!("10.0.0.{address}:7000"),
                priority: priority as u32,
                session: self.session(session),
            },
            Op::SetPriority {
                shard,
                address,
                priority,
            } => Command::SetReplicaPriority {
                shard: format!("M{shard}"),
                address: format!("10.0.0.{address}:7000"),
                priority: priority as u32,
            },
            Op::CreateGroup { shards } => Command::CreateGroup {
                name: "orders".into(),
                shards: (0..3u8)
                    .filter(|i| shards & (1 << i) != 0)
                    .map(|i| format!("M{i}"))
                    .collect(),
            },
            Op::MoveSlots { first, len, to } => Command::MoveSlots {
                group: "orders".into(),
                first,
                last: first.saturating_add(len).min(16_383),
                to: format!("M{to}"),
            },
            Op::FinishMove { commit } => Command::FinishMove {
                group: "orders".into(),
                commit,
            },
            Op::CloseNodePromoting {
                name,
                incarnation,
                positions,
            } => Command::Promoting {
                positions: positions
                    .into_iter()
                    .map(|(shard, address, position)| ReplicaPosition {
                        shard: format!("M{shard}"),
                        address: format!("10.0.0.{address}:7000"),
                        position: position as u64,
                    })
                    .collect(),
                command: Box::new(Command::CloseNode {
                    name: format!("node{name}"),
                    incarnation: incarnation as u64,
                }),
            },
            Op::Handover { shard, to, epoch } => Command::Handover {
                shard: format!("M{shard}"),
                to: to.map(|a| format!("10.0.0.{a}:7000")),
                epoch: epoch.map(u64::from),
            },
            Op::Acquire {
                lock,
                session,
                wait,
            } => Command::AcquireLock {
                name: format!("lock{lock}"),
                session: self.session(session),
                wait,
            },
            Op::Release { lock, session } => Command::ReleaseLock {
                name: format!("lock{lock}"),
                session: self.session(session),
            },
            Op::RegisterService {
                service,
                id,
                session,
            } => Command::RegisterService {
                service: format!("svc{service}"),
                id: format!("i{id}"),
                address: "10.0.0.1".into(),
                port: 8000 + id as u16,
                tags: vec!["t".into()],
                session: self.session(session),
            },
            Op::DeregisterService { service, id } => Command::DeregisterService {
                service: format!("svc{service}"),
                id: format!("i{id}"),
            },
        }
    }
}

/// Everything that still refers to `session` in the state.
fn references(state: &StateMachine, session: SessionId) -> Vec<String> {
    let mut found = Vec::new();
    let (keys, _) = state.list("", None, usize::MAX);
    for kv in keys {
        if kv.session == Some(session) {
            found.push(format!("key {}", kv.key));
        }
    }
    for shard in state.shards() {
        for replica in &shard.replicas {
            if replica.session == session {
                found.push(format!("replica {} of {}", replica.address, shard.name));
            }
        }
    }
    for lock in state.locks() {
        if lock.holder.as_ref().is_some_and(|h| h.session == session)
            || lock.waiters.contains(&session)
        {
            found.push(format!("lock {}", lock.name));
        }
    }
    for instance in state.service_instances() {
        if instance.session == session {
            found.push(format!("service {}/{}", instance.service, instance.id));
        }
    }
    found
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Every invariant holds after every command of a random sequence: tokens of a lock
    /// strictly increase and it never has two holders, a shard's epoch only grows and it has
    /// one master, ending a session removes all it owned, a refused command changes nothing,
    /// and the revision grows by one exactly when a command had an effect.
    #[test]
    fn random_sequences_keep_every_invariant(ops in proptest::collection::vec(op_strategy(), 1..120)) {
        let mut state = StateMachine::new();
        let mut resolver = Resolver { opened: Vec::new() };
        let mut last_token: BTreeMap<String, u64> = BTreeMap::new();
        let mut holder: BTreeMap<String, SessionId> = BTreeMap::new();
        let mut last_epoch: BTreeMap<String, u64> = BTreeMap::new();
        let mut last_version: BTreeMap<String, u64> = BTreeMap::new();

        for op in &ops {
            let command = resolver.command(op);
            let before_bytes = state.to_snapshot_bytes();
            let before_revision = state.revision();
            let successions = state.successions(&command);
            let (response, events) = state.apply(&command);

            if response.outcome.is_err() || events.is_empty() {
                prop_assert_eq!(state.to_snapshot_bytes(), before_bytes, "a command without effect changed state: {:?}", command);
                prop_assert!(events.is_empty());
            } else {
                prop_assert_eq!(state.revision(), before_revision + 1);
            }
            prop_assert_eq!(response.revision, state.revision());
            if let Ok(Answer::SessionOpened { session, existing: false }) = &response.outcome {
                resolver.opened.push(*session);
            }

            for event in &events {
                match event {
                    Event::LockGranted { name, grant } => {
                        if let Some(previous) = last_token.get(name) {
                            prop_assert!(grant.token > *previous, "token of {} went from {} to {}", name, previous, grant.token);
                        }
                        prop_assert!(!holder.contains_key(name), "lock {} granted while held", name);
                        last_token.insert(name.clone(), grant.token);
                        holder.insert(name.clone(), grant.session);
                    }
                    Event::LockReleased { name, session } => {
                        prop_assert_eq!(holder.remove(name), Some(*session));
                    }
                    Event::MasterChanged { shard, epoch, master, .. } => {
                        let previous = last_epoch.get(shard).copied().unwrap_or(0);
                        prop_assert_eq!(*epoch, previous + 1, "epoch of {} jumped", shard);
                        last_epoch.insert(shard.clone(), *epoch);
                        let current = state.shard(shard).unwrap();
                        prop_assert_eq!(current.epoch, *epoch);
                        prop_assert_eq!(&current.master, master);
                    }
                    Event::ShardDeleted { shard } => { last_epoch.remove(shard); }
                    Event::GroupChanged(group) => {
                        let previous = last_version.get(&group.name).copied().unwrap_or(0);
                        prop_assert_eq!(group.version, previous + 1, "version of {} jumped", group.name);
                        last_version.insert(group.name.clone(), group.version);
                        prop_assert_eq!(state.group(&group.name), Some(group));
                    }
                    Event::GroupDeleted { group } => { last_version.remove(group); }
                    Event::SessionClosed { session, .. } => {
                        let left = references(&state, *session);
                        prop_assert!(left.is_empty(), "session {} closed but still owns {:?}", session, left);
                        prop_assert!(state.session(*session).is_none());
                    }
                    _ => {}
                }
            }
            if let Err(problem) = state.check_invariants() {
                prop_assert!(false, "after {:?}: {}", command, problem);
            }
            // The successions the leader attaches positions for are exactly the masters
            // that the command takes away, each going to one of its candidates.
            if response.outcome.is_ok() {
                let planned = matches!(command.unwrapped(), Command::Handover { to: Some(_), .. });
                let replaced: BTreeMap<&String, &String> = events
                    .iter()
                    .filter_map(|event| match event {
                        Event::MasterChanged { shard, master: Some(master), previous: Some(_), .. } if !planned => Some((shard, master)),
                        _ => None,
                    })
                    .collect();
                let foreseen: BTreeMap<&String, &Vec<String>> = successions.iter().map(|s| (&s.shard, &s.candidates)).collect();
                prop_assert_eq!(replaced.keys().collect::<Vec<_>>(), foreseen.keys().collect::<Vec<_>>(), "after {:?}", command);
                for (shard, master) in replaced {
                    prop_assert!(foreseen[shard].contains(master), "{} went to {} outside {:?}", shard, master, foreseen[shard]);
                }
            }
        }

        // Snapshot -> restore -> snapshot is byte-identical, and the restored state goes
        // on exactly like the original.
        let bytes = state.to_snapshot_bytes();
        let mut restored = StateMachine::from_snapshot_bytes(&bytes).unwrap();
        prop_assert_eq!(restored.to_snapshot_bytes(), bytes.clone());
        for op in ops.iter().take(20) {
            let command = resolver.command(op);
            let a = state.apply(&command);
            let b = restored.apply(&command);
            prop_assert_eq!(a, b);
        }
        prop_assert_eq!(state.to_snapshot_bytes(), restored.to_snapshot_bytes());
    }

    /// Arbitrary bytes never load as a snapshot by accident and never panic the loader.
    #[test]
    fn garbage_snapshots_are_refused_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(state) = StateMachine::from_snapshot_bytes(&bytes) {
            prop_assert!(state.check_invariants().is_ok());
        }
    }
}

fn apply_ok(state: &mut StateMachine, command: Command) -> (Answer, Vec<Event>) {
    let (response, events) = state.apply(&command);
    match response.outcome {
        Ok(answer) => (answer, events),
        Err(e) => panic!("{command:?} failed: {e}"),
    }
}

fn open_node(state: &mut StateMachine, name: &str, incarnation: u64) -> SessionId {
    match apply_ok(
        state,
        Command::OpenSession {
            owner: SessionOwner::Node {
                name: name.into(),
                incarnation,
            },
        },
    )
    .0
    {
        Answer::SessionOpened { session, .. } => session,
        other => panic!("unexpected {other:?}"),
    }
}

fn open_client(state: &mut StateMachine, node_session: SessionId, client_key: u64) -> SessionId {
    let owner = SessionOwner::Client {
        node_session,
        client_key,
        label: "app".into(),
    };
    match apply_ok(state, Command::OpenSession { owner }).0 {
        Answer::SessionOpened { session, .. } => session,
        other => panic!("unexpected {other:?}"),
    }
}

fn register(
    state: &mut StateMachine,
    shard: &str,
    address: &str,
    priority: u32,
    session: SessionId,
) {
    apply_ok(
        state,
        Command::RegisterReplica {
            shard: shard.into(),
            address: address.into(),
            priority,
            session,
        },
    );
}

/// The death of a master's node promotes the best live replica (priority, then
/// registration order) with epoch + 1, in the same entry that closes the sessions.
#[test]
fn master_death_promotes_the_best_replica_with_a_higher_epoch() {
    let mut state = StateMachine::new();
    let n1 = open_node(&mut state, "host1", 1);
    let n2 = open_node(&mut state, "host2", 1);
    let n3 = open_node(&mut state, "host3", 1);
    let a1 = open_client(&mut state, n1, 1);
    apply_ok(&mut state, Command::CreateShard { name: "M3".into() });
    register(&mut state, "M3", "host1:7000", 100, a1);
    register(&mut state, "M3", "host2:7000", 100, n2);
    register(&mut state, "M3", "host3:7000", 200, n3);
    let shard = state.shard("M3").unwrap();
    assert_eq!(
        shard.master.as_deref(),
        Some("host1:7000"),
        "the first replica becomes master"
    );
    assert_eq!(shard.epoch, 1);

    let (answer, events) = apply_ok(
        &mut state,
        Command::CloseNode {
            name: "host1".into(),
            incarnation: 1,
        },
    );
    assert_eq!(
        answer,
        Answer::SessionsClosed {
            sessions: vec![n1, a1]
        }
    );
    let shard = state.shard("M3").unwrap();
    assert_eq!(
        shard.master.as_deref(),
        Some("host3:7000"),
        "highest priority wins"
    );
    assert_eq!(shard.epoch, 2);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::MasterChanged { epoch: 2, .. }))
    );

    // Equal priorities: earliest registration wins.
    apply_ok(
        &mut state,
        Command::CloseNode {
            name: "host3".into(),
            incarnation: 1,
        },
    );
    assert_eq!(
        state.shard("M3").unwrap().master.as_deref(),
        Some("host2:7000")
    );
    assert_eq!(state.shard("M3").unwrap().epoch, 3);
}

/// A renewed node keeps its session and everything under it; the old incarnation's death
/// report no longer closes it, and a renewal from anything but the open incarnation fails.
#[test]
fn a_renewed_node_keeps_its_session_and_outlives_reports_of_its_old_incarnation() {
    let mut state = StateMachine::new();
    let node = open_node(&mut state, "host1", 1);
    let client = match apply_ok(
        &mut state,
        Command::OpenSession {
            owner: SessionOwner::Client {
                node_session: node,
                client_key: 7,
                label: String::new(),
            },
        },
    )
    .0
    {
        Answer::SessionOpened { session, .. } => session,
        other => panic!("{other:?}"),
    };
    apply_ok(
        &mut state,
        Command::AcquireLock {
            name: "L".into(),
            session: client,
            wait: false,
        },
    );
    let (answer, events) = apply_ok(
        &mut state,
        Command::RenewNode {
            name: "host1".into(),
            from: 1,
            to: 5,
        },
    );
    assert_eq!(
        answer,
        Answer::SessionOpened {
            session: node,
            existing: true
        }
    );
    let renewed = SessionOwner::Node {
        name: "host1".into(),
        incarnation: 5,
    };
    assert_eq!(
        events,
        vec![Event::SessionOpened(Session {
            id: node,
            owner: renewed.clone()
        })]
    );
    assert_eq!(state.session(node).map(|s| s.owner), Some(renewed));
    // The old incarnation's report is now a no-op.
    let (answer, _) = apply_ok(
        &mut state,
        Command::CloseNode {
            name: "host1".into(),
            incarnation: 1,
        },
    );
    assert_eq!(answer, Answer::SessionsClosed { sessions: vec![] });
    assert!(state.session(client).is_some());
    assert!(state.lock("L").is_some_and(|l| l.holder.is_some()));
    // Renewing from an incarnation the node no longer has is refused, changing nothing.
    for (from, to) in [(1, 6), (4, 6)] {
        let (response, events) = state.apply(&Command::RenewNode {
            name: "host1".into(),
            from,
            to,
        });
        assert_eq!(
            response.outcome,
            Err(CommandError::NodeNotRenewable {
                name: "host1".into(),
                incarnation: from
            })
        );
        assert!(events.is_empty());
    }
    // Backwards is invalid before it reaches the state.
    let (response, _) = state.apply(&Command::RenewNode {
        name: "host1".into(),
        from: 5,
        to: 5,
    });
    assert!(matches!(response.outcome, Err(CommandError::Invalid(_))));
    // The newer incarnation's death report closes it, as any other.
    let (answer, _) = apply_ok(
        &mut state,
        Command::CloseNode {
            name: "host1".into(),
            incarnation: 5,
        },
    );
    assert_eq!(
        answer,
        Answer::SessionsClosed {
            sessions: vec![node, client]
        }
    );
}

/// A death report never closes a newer incarnation, and a restarted node supersedes its
/// predecessor's session.
#[test]
fn death_reports_only_close_that_incarnation_or_older() {
    let mut state = StateMachine::new();
    let old = open_node(&mut state, "host1", 1);
    let new = open_node(&mut state, "host1", 2);
    assert_ne!(old, new);
    assert!(
        state.session(old).is_none(),
        "the new incarnation superseded the old one"
    );
    let (answer, events) = apply_ok(
        &mut state,
        Command::CloseNode {
            name: "host1".into(),
            incarnation: 1,
        },
    );
    assert_eq!(answer, Answer::SessionsClosed { sessions: vec![] });
    assert!(events.is_empty());
    assert!(state.session(new).is_some());
    let (response, _) = state.apply(&Command::OpenSession {
        owner: SessionOwner::Node {
            name: "host1".into(),
            incarnation: 1,
        },
    });
    assert!(matches!(
        response.outcome,
        Err(CommandError::NodeSuperseded { incarnation: 2, .. })
    ));
}

/// Locks are granted first come first served, with tokens that grow; an app whose session
/// ends passes the lock on at once.
#[test]
fn locks_pass_in_fifo_order_with_growing_tokens() {
    let mut state = StateMachine::new();
    let node = open_node(&mut state, "host1", 1);
    let apps: Vec<_> = (0..4).map(|k| open_client(&mut state, node, k)).collect();
    let acquire = |state: &mut StateMachine, session| {
        apply_ok(
            state,
            Command::AcquireLock {
                name: "L".into(),
                session,
                wait: true,
            },
        )
        .0
    };
    let Answer::LockGranted(first) = acquire(&mut state, apps[0]) else {
        panic!()
    };
    assert_eq!(
        acquire(&mut state, apps[1]),
        Answer::LockQueued { position: 1 }
    );
    assert_eq!(
        acquire(&mut state, apps[2]),
        Answer::LockQueued { position: 2 }
    );
    assert_eq!(
        acquire(&mut state, apps[3]),
        Answer::LockQueued { position: 3 }
    );
    let (response, _) = state.apply(&Command::AcquireLock {
        name: "L".into(),
        session: apps[3],
        wait: false,
    });
    assert_eq!(
        response.outcome,
        Ok(Answer::LockQueued { position: 3 }),
        "asking again is idempotent"
    );

    apply_ok(&mut state, Command::CloseSession { session: apps[0] });
    let second = state.lock("L").unwrap().holder.clone().unwrap();
    assert_eq!(second.session, apps[1]);
    assert!(second.token > first.token);

    // A waiter leaving the queue is skipped.
    apply_ok(
        &mut state,
        Command::ReleaseLock {
            name: "L".into(),
            session: apps[2],
        },
    );
    let (answer, _) = apply_ok(
        &mut state,
        Command::ReleaseLock {
            name: "L".into(),
            session: apps[1],
        },
    );
    let Answer::LockReleased { next: Some(third) } = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(third.session, apps[3]);
    assert!(third.token > second.token);
}

/// A transaction whose branch cannot be applied in full changes nothing at all.
#[test]
fn a_failed_transaction_changes_nothing() {
    let mut state = StateMachine::new();
    apply_ok(
        &mut state,
        Command::Put {
            key: "a".into(),
            value: b"1".to_vec(),
            session: None,
        },
    );
    let before = state.to_snapshot_bytes();
    let txn = Txn {
        compares: vec![],
        success: vec![
            TxnOp::Put {
                key: "b".into(),
                value: b"2".to_vec(),
                session: None,
            },
            TxnOp::Delete {
                key: "a".into(),
                prefix: false,
            },
            TxnOp::Put {
                key: "c".into(),
                value: b"3".to_vec(),
                session: Some(424242),
            },
        ],
        failure: vec![],
    };
    let (response, events) = state.apply(&Command::Txn(txn));
    assert_eq!(
        response.outcome,
        Err(CommandError::NoSuchSession { session: 424242 })
    );
    assert!(events.is_empty());
    assert_eq!(state.to_snapshot_bytes(), before);

    // A compare that fails with an empty failure branch changes nothing either.
    let cas = Command::compare_and_set("a".into(), 7, b"x".to_vec(), None);
    let (response, events) = state.apply(&cas);
    assert_eq!(
        response.outcome,
        Ok(Answer::Txn {
            succeeded: false,
            results: vec![]
        })
    );
    assert!(events.is_empty());
    assert_eq!(state.to_snapshot_bytes(), before);
}

/// The same log gives byte-identical snapshots, whoever applies it.
#[test]
fn the_same_log_gives_identical_snapshots() {
    let commands: Vec<Command> = (0..200)
        .map(|i| match i % 4 {
            0 => Command::Put {
                key: format!("k/{}", i % 17),
                value: vec![i as u8; 10],
                session: None,
            },
            1 => Command::OpenSession {
                owner: SessionOwner::Node {
                    name: format!("n{}", i % 5),
                    incarnation: i,
                },
            },
            2 => Command::Delete {
                key: format!("k/{}", i % 13),
                prefix: false,
            },
            _ => Command::CreateShard {
                name: format!("M{}", i % 7),
            },
        })
        .collect();
    let mut a = StateMachine::new();
    let mut b = StateMachine::new();
    for c in &commands {
        a.apply(c);
    }
    for c in &commands {
        b.apply(c);
    }
    assert_eq!(a.to_snapshot_bytes(), b.to_snapshot_bytes());
}

/// Checkpoints: every state that applies a revision that is a multiple of
/// `CHECKPOINT_EVERY` takes the same one, whether it applied the whole log or loaded a
/// snapshot partway and applied the rest; a state whose snapshot was altered (one value,
/// or one key more) takes another.
#[test]
fn checkpoints_agree_on_the_same_state_and_catch_an_altered_one() {
    use corral_state::digest::CHECKPOINT_EVERY;
    let command = |i: u64| match i % 5 {
        0 => Command::OpenSession {
            owner: SessionOwner::Node {
                name: format!("n{}", i % 7),
                incarnation: i,
            },
        },
        1 => Command::Delete {
            key: format!("k/{}", i % 11),
            prefix: false,
        },
        _ => Command::Put {
            key: format!("k/{}", i % 23),
            value: i.to_le_bytes().to_vec(),
            session: None,
        },
    };
    let mut whole = StateMachine::new();
    whole.apply(&Command::Put {
        key: "stable".into(),
        value: vec![0xAA; 8],
        session: None,
    });
    let mut i = 0;
    while whole.revision() < 700 {
        whole.apply(&command(i));
        i += 1;
    }
    let snapshot = whole.to_snapshot_bytes();
    let mut loaded = StateMachine::from_snapshot_bytes(&snapshot).unwrap();
    assert_eq!(loaded.checkpoint(), None);
    // The same snapshot with one value changed, and with one key added.
    let mut altered_value = whole.clone();
    let mut altered_key = whole.clone();
    let (_, _) = altered_key.apply(&Command::Put {
        key: "planted".into(),
        value: vec![1],
        session: None,
    });
    let mut altered_value_bytes = altered_value.to_snapshot_bytes();
    let at = altered_value_bytes
        .windows(8)
        .position(|w| w == [0xAA; 8])
        .expect("the value in the snapshot");
    altered_value_bytes[at] ^= 1;
    altered_value = StateMachine::from_snapshot_bytes(&altered_value_bytes).unwrap();
    let mut altered_key =
        StateMachine::from_snapshot_bytes(&altered_key.to_snapshot_bytes()).unwrap();
    // Everyone applies the same commands on (the altered key's state is one revision
    // ahead: it applies one fewer).
    while whole.revision() < 2 * CHECKPOINT_EVERY + 10 {
        let c = command(i);
        let before = whole.revision();
        whole.apply(&c);
        if whole.revision() > before {
            loaded.apply(&c);
            altered_value.apply(&c);
            if altered_key.revision() < whole.revision() {
                altered_key.apply(&c);
            }
        }
        i += 1;
    }
    let checkpoint = whole.checkpoint().expect("a checkpoint");
    assert_eq!(checkpoint.0, 2 * CHECKPOINT_EVERY);
    assert_eq!(loaded.checkpoint(), Some(checkpoint));
    assert_eq!(whole.compute_checkpoint(), loaded.compute_checkpoint());
    assert_ne!(altered_value.checkpoint().map(|c| c.1), Some(checkpoint.1));
    assert_ne!(altered_key.compute_checkpoint(), whole.compute_checkpoint());
}
