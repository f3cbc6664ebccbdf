use super::*;
use crate::limits::*;

/// Values are encoded as bytes (one copy, not an element at a time), and postcard lays
/// them out exactly as it laid out the element sequence earlier versions wrote: logs,
/// snapshots and peers of those versions read the same.
#[test]
fn values_encode_as_the_byte_sequence_earlier_versions_wrote() {
    #[derive(Serialize)]
    enum EarlierCommand {
        Put {
            key: String,
            value: Vec<u8>,
            session: Option<SessionId>,
        },
    }
    let value: Vec<u8> = (0..=255).chain(0..300).map(|b| b as u8).collect();
    let now = postcard::to_allocvec(&Command::Put {
        key: "k".into(),
        value: value.clone(),
        session: None,
    })
    .unwrap();
    let earlier = postcard::to_allocvec(&EarlierCommand::Put {
        key: "k".into(),
        value: value.clone(),
        session: None,
    })
    .unwrap();
    assert_eq!(now, earlier);
    match postcard::from_bytes::<Command>(&earlier).unwrap() {
        Command::Put { value: read, .. } => assert_eq!(read, value),
        other => panic!("{other:?}"),
    }
}

#[test]
fn limits_are_enforced() {
    let long_key = "k".repeat(KEY_LEN_MAX + 1);
    assert!(matches!(
        Command::Put {
            key: long_key,
            value: vec![],
            session: None
        }
        .validate(),
        Err(InvalidCommand::Key { .. })
    ));
    assert!(matches!(
        Command::Put {
            key: "a".into(),
            value: vec![0; VALUE_LEN_MAX + 1],
            session: None
        }
        .validate(),
        Err(InvalidCommand::ValueTooLarge { .. })
    ));
    assert!(
        Command::Put {
            key: "".into(),
            value: vec![],
            session: None
        }
        .validate()
        .is_err()
    );
    assert!(
        Command::Delete {
            key: "".into(),
            prefix: true
        }
        .validate()
        .is_ok()
    );
    assert!(
        Command::CreateShard {
            name: "has space".into()
        }
        .validate()
        .is_err()
    );
    let big_txn = Txn {
        success: vec![
            TxnOp::Delete {
                key: "a".into(),
                prefix: false
            };
            TXN_OPS_MAX + 1
        ],
        ..Txn::default()
    };
    assert!(matches!(
        Command::Txn(big_txn).validate(),
        Err(InvalidCommand::TxnTooLarge { .. })
    ));
    let heavy_txn = Txn {
        success: vec![
            TxnOp::Put {
                key: "a".into(),
                value: vec![0; VALUE_LEN_MAX],
                session: None
            };
            2
        ],
        ..Txn::default()
    };
    assert!(matches!(
        Command::Txn(heavy_txn).validate(),
        Err(InvalidCommand::CommandTooLarge { .. })
    ));
}

#[test]
fn error_text_of_a_huge_key_is_short() {
    let err = validate_key(&"é".repeat(5000), false).unwrap_err();
    assert!(err.to_string().len() < 300, "{err}");
}
