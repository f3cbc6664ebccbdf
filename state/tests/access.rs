//! The access part of the state: rules and tokens change only under the admin
//! certificate, the quota refuses what would grow the state past it (and only that),
//! and snapshots of earlier versions, which end before the access table, still load.

use corral_proto::access::{Access, AccessRule, Quota, ResourceKind, Subject};
use corral_proto::*;
use corral_state::StateMachine;

fn by(certificate: &str, command: Command) -> Command {
    command.acted_by(Actor {
        certificate: certificate.into(),
        session: None,
    })
}

fn put(key: &str, len: usize) -> Command {
    Command::Put {
        key: key.into(),
        value: vec![b'v'; len],
        session: None,
    }
}

/// Rules, tokens, enforcement and the quota: refused to an agent's certificate with
/// nothing changed, applied for the admin, each with an event so the revision moves.
#[test]
fn access_changes_only_under_the_admin_certificate() {
    let mut state = StateMachine::new();
    let rule = AccessRule {
        subject: Subject::User(1000),
        kind: ResourceKind::Keys,
        prefix: "app/".into(),
        access: Access::Write,
    };
    let commands = [
        Command::SetRule {
            name: "app".into(),
            rule: Some(rule.clone()),
        },
        Command::SetToken {
            name: "ci".into(),
            digest: Some(vec![7; 32]),
        },
        Command::SetEnforce { enforce: true },
        Command::SetQuota {
            quota: Quota {
                keys_max: 10,
                bytes_max: 1000,
            },
        },
    ];
    for command in &commands {
        let (response, events) = state.apply(&by("web-1", command.clone()));
        assert!(
            matches!(response.outcome, Err(CommandError::AdminOnly { .. })),
            "{command:?}: {:?}",
            response.outcome
        );
        assert!(events.is_empty());
    }
    assert_eq!(state.revision(), 0);
    for command in &commands {
        let (response, events) = state.apply(&by(ADMIN_CERTIFICATE, command.clone()));
        assert_eq!(response.outcome, Ok(Answer::AccessSet));
        assert_eq!(events.len(), 1, "{command:?}");
    }
    assert_eq!(state.revision(), 4);
    let access = state.access();
    assert!(access.enforce);
    assert_eq!(access.rules.get("app"), Some(&rule));
    assert_eq!(access.token_named_by(&[7; 32]), Some("ci"));
    assert_eq!(access.quota.keys_max, 10);
    // The same again changes nothing and moves nothing.
    let (response, events) = state.apply(&by(
        ADMIN_CERTIFICATE,
        Command::SetEnforce { enforce: true },
    ));
    assert!(response.outcome.is_ok() && events.is_empty());
    // A bad digest is invalid.
    let (response, _) = state.apply(&by(
        ADMIN_CERTIFICATE,
        Command::SetToken {
            name: "x".into(),
            digest: Some(vec![1; 5]),
        },
    ));
    assert!(matches!(response.outcome, Err(CommandError::Invalid(_))));
}

/// Past the quota, a write that would grow the state is refused with nothing written,
/// while writes that shrink or keep its size, and deletes, go through; the alarm rises
/// at 90%.
#[test]
fn the_quota_refuses_growth_and_nothing_else() {
    let mut state = StateMachine::new();
    state.apply(&by(
        ADMIN_CERTIFICATE,
        Command::SetQuota {
            quota: Quota {
                keys_max: 3,
                bytes_max: 100,
            },
        },
    ));
    for key in ["a", "b"] {
        assert!(state.apply(&put(key, 10)).0.outcome.is_ok());
    }
    assert!(!state.quota_use().alarm());
    assert!(state.apply(&put("c", 10)).0.outcome.is_ok());
    assert!(state.quota_use().alarm(), "3 of 3 keys");
    let revision = state.revision();
    let refused = state.apply(&put("d", 1)).0.outcome;
    assert!(
        matches!(&refused, Err(CommandError::QuotaExceeded { what, would: 4, max: 3 }) if what == "keys"),
        "{refused:?}"
    );
    let too_big = state.apply(&put("a", 90)).0.outcome;
    assert!(
        matches!(too_big, Err(CommandError::QuotaExceeded { .. })),
        "{too_big:?}"
    );
    // Through a transaction too.
    let txn = Command::Txn(Txn {
        success: vec![TxnOp::Put {
            key: "e".into(),
            value: vec![],
            session: None,
        }],
        ..Txn::default()
    });
    assert!(matches!(
        state.apply(&txn).0.outcome,
        Err(CommandError::QuotaExceeded { .. })
    ));
    assert_eq!(state.revision(), revision, "nothing was written");
    // Overwriting in place, shrinking and deleting are fine.
    assert!(state.apply(&put("a", 10)).0.outcome.is_ok());
    assert!(state.apply(&put("a", 2)).0.outcome.is_ok());
    assert!(
        state
            .apply(&Command::Delete {
                key: "c".into(),
                prefix: false
            })
            .0
            .outcome
            .is_ok()
    );
    assert!(state.apply(&put("d", 1)).0.outcome.is_ok());
    let used = state.quota_use();
    assert_eq!((used.keys, used.bytes), (3, (1 + 2) + (1 + 10) + (1 + 1)));
    // The byte count survives a snapshot.
    let reloaded = StateMachine::from_snapshot_bytes(&state.to_snapshot_bytes()).unwrap();
    assert_eq!(reloaded.quota_use(), used);
}

/// A snapshot written before the state had standbys and groups loads as is, and one written before
/// it had an access table loads with no rules, no enforcement and the default quota, and
/// its keys counted.
#[test]
fn a_snapshot_of_an_earlier_version_loads() {
    let mut state = StateMachine::new();
    state.apply(&put("config/mode", 4));
    let bytes = state.to_snapshot_bytes();
    // The roles and the groups are the last fields (none: one byte each, a count of 0),
    // the access table the one before: the version before ends before the roles, earlier
    // ones before the access table too.
    assert_eq!(bytes[bytes.len() - 2..], [0, 0]);
    let before = &bytes[..bytes.len() - 2];
    let loaded = StateMachine::from_snapshot_bytes(before).expect("the version before loads");
    assert_eq!(loaded.to_snapshot_bytes(), bytes);
    let table = postcard::to_stdvec(state.access()).unwrap();
    let earlier = &before[..before.len() - table.len()];
    let loaded = StateMachine::from_snapshot_bytes(earlier).expect("an earlier snapshot loads");
    assert_eq!(loaded.get("config/mode").unwrap().value, b"vvvv");
    assert!(!loaded.access().enforce);
    assert_eq!(loaded.access().quota, Quota::default());
    assert_eq!(loaded.quota_use().bytes, ("config/mode".len() + 4) as u64);
    // Trailing garbage is still refused.
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(StateMachine::from_snapshot_bytes(&longer).is_err());
}
