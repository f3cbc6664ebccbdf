//! Who may do what, in the state machine itself: every owned thing (a replica, a service
//! instance, an ephemeral key, a lock, the master role, a session) is touched only by a
//! command acting in its session, or in the node session above it, under the certificate
//! of its node; the admin certificate may touch anything; entries without an actor (what
//! earlier versions wrote) apply as they always did.

use corral_proto::*;
use corral_state::StateMachine;

fn apply(state: &mut StateMachine, command: Command) -> Result<Answer, CommandError> {
    state.apply(&command).0.outcome
}

fn by(certificate: &str, session: Option<SessionId>, command: Command) -> Command {
    command.acted_by(Actor {
        certificate: certificate.into(),
        session,
    })
}

fn opened(answer: Result<Answer, CommandError>) -> SessionId {
    match answer {
        Ok(Answer::SessionOpened { session, .. }) => session,
        other => panic!("{other:?}"),
    }
}

struct World {
    state: StateMachine,
    /// Node sessions of hosts a1 and a2.
    a1: SessionId,
    a2: SessionId,
    /// Client sessions: two apps on a2.
    app: SessionId,
    other_app: SessionId,
}

fn world() -> World {
    let mut state = StateMachine::new();
    let node = |name: &str| {
        by(
            name,
            None,
            Command::OpenSession {
                owner: SessionOwner::Node {
                    name: name.into(),
                    incarnation: 1,
                },
            },
        )
    };
    let a1 = opened(apply(&mut state, node("a1")));
    let a2 = opened(apply(&mut state, node("a2")));
    let client = |key| {
        by(
            "a2",
            None,
            Command::OpenSession {
                owner: SessionOwner::Client {
                    node_session: a2,
                    client_key: key,
                    label: String::new(),
                },
            },
        )
    };
    let app = opened(apply(&mut state, client(1)));
    let other_app = opened(apply(&mut state, client(2)));
    apply(
        &mut state,
        by("a2", None, Command::CreateShard { name: "M3".into() }),
    )
    .unwrap();
    for (address, session) in [("10.0.0.2:1", app), ("10.0.0.2:2", other_app)] {
        apply(
            &mut state,
            by(
                "a2",
                Some(session),
                Command::RegisterReplica {
                    shard: "M3".into(),
                    address: address.into(),
                    priority: 1,
                    session,
                },
            ),
        )
        .unwrap();
    }
    apply(
        &mut state,
        by(
            "a2",
            Some(app),
            Command::RegisterService {
                service: "api".into(),
                id: "web-1".into(),
                address: "10.0.0.2".into(),
                port: 80,
                tags: vec![],
                session: app,
            },
        ),
    )
    .unwrap();
    apply(
        &mut state,
        by(
            "a2",
            Some(app),
            Command::Put {
                key: "live/a2".into(),
                value: b"up".to_vec(),
                session: Some(app),
            },
        ),
    )
    .unwrap();
    apply(
        &mut state,
        by(
            "a2",
            Some(app),
            Command::AcquireLock {
                name: "deploy".into(),
                session: app,
                wait: false,
            },
        ),
    )
    .unwrap();
    World {
        state,
        a1,
        a2,
        app,
        other_app,
    }
}

/// Everything the app on a2 owns, as commands that remove or take it over.
fn takeovers(w: &World) -> Vec<Command> {
    vec![
        Command::DeregisterReplica {
            shard: "M3".into(),
            address: "10.0.0.2:1".into(),
        },
        Command::DeregisterService {
            service: "api".into(),
            id: "web-1".into(),
        },
        Command::Delete {
            key: "live/a2".into(),
            prefix: false,
        },
        Command::Delete {
            key: "live/".into(),
            prefix: true,
        },
        Command::Put {
            key: "live/a2".into(),
            value: b"mine now".to_vec(),
            session: None,
        },
        Command::Handover {
            shard: "M3".into(),
            to: Some("10.0.0.2:2".into()),
            epoch: None,
        },
        Command::ReleaseLock {
            name: "deploy".into(),
            session: w.app,
        },
        Command::CloseSession { session: w.app },
    ]
}

/// Another host's certificate, whatever session it claims to act in, is refused every
/// takeover, with an error naming the owner, and nothing changes.
#[test]
fn another_host_cannot_touch_what_an_app_owns() {
    let mut w = world();
    let before = w.state.to_snapshot_bytes();
    for command in takeovers(&w) {
        for acting in [None, Some(w.a1), Some(w.app), Some(w.a2)] {
            let error = apply(&mut w.state, by("a1", acting, command.clone())).unwrap_err();
            assert!(
                matches!(
                    error,
                    CommandError::NotOwner { .. } | CommandError::ForeignSession { .. }
                ),
                "{command:?} acting in {acting:?}: {error}"
            );
            assert!(error.to_string().contains("a2"), "names the owner: {error}");
        }
    }
    assert_eq!(w.state.to_snapshot_bytes(), before, "nothing changed");
}

/// On the same host, another app's session is refused too; the owner's own session and
/// the host's node session may.
#[test]
fn on_its_host_only_the_owner_or_the_node_session_may() {
    for (index, command) in takeovers(&world()).into_iter().enumerate() {
        let mut w = world();
        for acting in [None, Some(w.other_app)] {
            let error = apply(&mut w.state, by("a2", acting, command.clone())).unwrap_err();
            assert!(
                matches!(error, CommandError::NotOwner { owner, .. } if owner == w.app),
                "#{index} {command:?} acting in {acting:?}: {error}"
            );
        }
        let mut own = world();
        let app = own.app;
        assert!(
            apply(&mut own.state, by("a2", Some(app), command.clone())).is_ok(),
            "#{index} {command:?} by its owner"
        );
        let mut host = world();
        let a2 = host.a2;
        assert!(
            apply(&mut host.state, by("a2", Some(a2), command.clone())).is_ok(),
            "#{index} {command:?} by the node session"
        );
    }
}

/// The admin certificate may do anything; plain entries of earlier versions apply as
/// before.
#[test]
fn the_admin_and_entries_without_an_actor_are_not_checked() {
    for command in takeovers(&world()) {
        let mut w = world();
        assert!(
            apply(&mut w.state, by(ADMIN_CERTIFICATE, None, command.clone())).is_ok(),
            "admin: {command:?}"
        );
        let mut w = world();
        assert!(
            apply(&mut w.state, command.clone()).is_ok(),
            "plain: {command:?}"
        );
    }
}

/// Taking something in another host's session is refused: a session is bound to the
/// certificate of its node.
#[test]
fn a_session_is_bound_to_its_nodes_certificate() {
    let mut w = world();
    let app = w.app;
    for command in [
        Command::AcquireLock {
            name: "other".into(),
            session: app,
            wait: false,
        },
        Command::RegisterReplica {
            shard: "M3".into(),
            address: "10.0.0.1:9".into(),
            priority: 100,
            session: app,
        },
        Command::Put {
            key: "k".into(),
            value: vec![],
            session: Some(app),
        },
        Command::OpenSession {
            owner: SessionOwner::Client {
                node_session: w.a2,
                client_key: 9,
                label: String::new(),
            },
        },
        Command::RenewNode {
            name: "a2".into(),
            from: 1,
            to: 2,
        },
    ] {
        let error = apply(&mut w.state, by("a1", Some(app), command.clone())).unwrap_err();
        assert!(
            matches!(
                error,
                CommandError::NotOwner { .. }
                    | CommandError::ForeignSession { .. }
                    | CommandError::ForeignNode { .. }
            ),
            "{command:?}: {error}"
        );
    }
    // Plain keys belong to no session: any certificate may write them.
    assert!(
        apply(
            &mut w.state,
            by(
                "a1",
                None,
                Command::Put {
                    key: "config/mode".into(),
                    value: b"fast".to_vec(),
                    session: None
                }
            )
        )
        .is_ok()
    );
}

/// An actor is named once: a nested one is invalid and changes nothing.
#[test]
fn a_nested_actor_is_invalid() {
    let mut w = world();
    let inner = by(
        "a2",
        Some(w.app),
        Command::CreateShard { name: "M9".into() },
    );
    let nested = Command::Act {
        actor: Actor {
            certificate: "a2".into(),
            session: None,
        },
        command: Box::new(inner),
    };
    assert!(matches!(
        apply(&mut w.state, nested),
        Err(CommandError::Invalid(InvalidCommand::NestedActor))
    ));
    assert!(w.state.shard("M9").is_none());
}
