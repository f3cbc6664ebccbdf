//! Transactions written as JSON, for `corral kv txn` and `POST /v1/txn`: compares, then
//! the operations of the branch that runs when all of them hold, and of the one that runs
//! otherwise. Values are text in `value`, or any bytes in `value_hex`, as in the answers
//! ([`crate::json`]).
//!
//! ```text
//! {"compare": [{"key": "config/v", "version": 3},
//!              {"key": "leader", "value": "a1", "op": "!="}],
//!  "success": [{"put": "config/v", "value": "4"},
//!              {"delete": "cache/", "prefix": true},
//!              {"get": "config/", "prefix": true}],
//!  "failure": [{"get": "config/v"}]}
//! ```
//!
//! A compare names its key and one target (`version`, `create_revision`,
//! `modify_revision`, `session` with a number, or `value`/`value_hex`), and `op` (`=`,
//! `!=`, `<`, `>`; `=` when absent). An operation is `put` (with a value, and
//! `"ephemeral": true` for a key that lives as long as the session the transaction is
//! sent in), `delete` or `get`, the last two with `"prefix": true` for every key under
//! it. Unknown fields are refused, so that a misspelt condition cannot silently
//! become no condition.

use corral_proto::range::{KeyRange, RangeQuery};
use corral_proto::{Compare, CompareOp, CompareTarget, Txn, TxnOp};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnJson {
    #[serde(default)]
    compare: Vec<CompareJson>,
    #[serde(default)]
    success: Vec<OpJson>,
    #[serde(default)]
    failure: Vec<OpJson>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareJson {
    key: String,
    #[serde(default)]
    op: Option<String>,
    version: Option<u64>,
    create_revision: Option<u64>,
    modify_revision: Option<u64>,
    session: Option<u64>,
    value: Option<String>,
    value_hex: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpJson {
    put: Option<String>,
    delete: Option<String>,
    get: Option<String>,
    value: Option<String>,
    value_hex: Option<String>,
    #[serde(default)]
    ephemeral: bool,
    #[serde(default)]
    prefix: bool,
}

/// The transaction `json` describes, or what is wrong with it.
pub fn parse(json: &[u8]) -> Result<Txn, String> {
    let txn: TxnJson = serde_json::from_slice(json).map_err(|e| format!("transaction: {e}"))?;
    let compares = txn
        .compare
        .into_iter()
        .enumerate()
        .map(|(i, c)| compare(c).map_err(|e| format!("compare {i}: {e}")))
        .collect::<Result<_, _>>()?;
    let ops = |name: &str, ops: Vec<OpJson>| {
        ops.into_iter()
            .enumerate()
            .map(|(i, op)| operation(op).map_err(|e| format!("{name} {i}: {e}")))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Txn {
        compares,
        success: ops("success", txn.success)?,
        failure: ops("failure", txn.failure)?,
    })
}

fn compare(c: CompareJson) -> Result<Compare, String> {
    let op = match c.op.as_deref().unwrap_or("=") {
        "=" | "==" => CompareOp::Equal,
        "!=" => CompareOp::NotEqual,
        "<" => CompareOp::Less,
        ">" => CompareOp::Greater,
        other => return Err(format!("op {other:?}: expected =, !=, < or >")),
    };
    let value = value(c.value, c.value_hex)?;
    let targets = [
        c.version.map(CompareTarget::Version),
        c.create_revision.map(CompareTarget::CreateRevision),
        c.modify_revision.map(CompareTarget::ModifyRevision),
        c.session.map(CompareTarget::Session),
        value.map(CompareTarget::Value),
    ];
    let mut given = targets.into_iter().flatten();
    let target = given.next().ok_or(
        "no target: give one of version, create_revision, modify_revision, session, \
         value or value_hex",
    )?;
    if given.next().is_some() {
        return Err("more than one target: a compare looks at one thing".into());
    }
    Ok(Compare {
        key: c.key,
        op,
        target,
    })
}

fn operation(op: OpJson) -> Result<TxnOp, String> {
    let value = value(op.value, op.value_hex)?;
    match (op.put, op.delete, op.get) {
        (Some(key), None, None) => {
            if op.prefix {
                return Err("a put has no prefix".into());
            }
            Ok(TxnOp::Put {
                key,
                value: value.ok_or("a put needs value or value_hex")?,
                // Bound to the session the transaction is sent in (the socket API's
                // convention: any id here stands for that session).
                session: op.ephemeral.then_some(0),
            })
        }
        (None, Some(key), None) | (None, None, Some(key)) if value.is_some() || op.ephemeral => {
            Err(format!("{key}: only a put takes a value or ephemeral"))
        }
        (None, Some(key), None) => Ok(TxnOp::Delete {
            key,
            prefix: op.prefix,
        }),
        (None, None, Some(key)) => Ok(TxnOp::Range(RangeQuery::of(if op.prefix {
            KeyRange::prefix(&key)
        } else {
            KeyRange::single(&key)
        }))),
        _ => Err("give exactly one of put, delete and get".into()),
    }
}

fn value(text: Option<String>, hex: Option<String>) -> Result<Option<Vec<u8>>, String> {
    match (text, hex) {
        (Some(_), Some(_)) => Err("value and value_hex both given".into()),
        (Some(text), None) => Ok(Some(text.into_bytes())),
        (None, Some(hex)) => from_hex(&hex).map(Some),
        (None, None) => Ok(None),
    }
}

fn from_hex(hex: &str) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err("value_hex: an odd number of digits".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("value_hex: not hexadecimal at {i}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_reads_as_its_compares_and_branches() {
        let txn = parse(
            br#"{"compare": [{"key": "v", "version": 3},
                             {"key": "l", "value": "a1", "op": "!="},
                             {"key": "b", "value_hex": "ff00", "op": "<"}],
                 "success": [{"put": "v", "value": "4", "ephemeral": true},
                             {"delete": "c/", "prefix": true},
                             {"get": "v"}],
                 "failure": [{"get": "c/", "prefix": true}]}"#,
        )
        .unwrap();
        assert_eq!(
            txn.compares,
            vec![
                Compare {
                    key: "v".into(),
                    op: CompareOp::Equal,
                    target: CompareTarget::Version(3)
                },
                Compare {
                    key: "l".into(),
                    op: CompareOp::NotEqual,
                    target: CompareTarget::Value(b"a1".to_vec())
                },
                Compare {
                    key: "b".into(),
                    op: CompareOp::Less,
                    target: CompareTarget::Value(vec![0xff, 0])
                },
            ]
        );
        assert_eq!(
            txn.success,
            vec![
                TxnOp::Put {
                    key: "v".into(),
                    value: b"4".to_vec(),
                    session: Some(0)
                },
                TxnOp::Delete {
                    key: "c/".into(),
                    prefix: true
                },
                TxnOp::Range(RangeQuery::of(KeyRange::single("v"))),
            ]
        );
        assert_eq!(
            txn.failure,
            vec![TxnOp::Range(RangeQuery::of(KeyRange::prefix("c/")))]
        );
    }

    #[test]
    fn what_is_ambiguous_or_misspelt_is_refused() {
        for (json, error) in [
            (r#"{"compare": [{"key": "v"}]}"#, "no target"),
            (
                r#"{"compare": [{"key": "v", "version": 1, "value": "x"}]}"#,
                "more than one",
            ),
            (
                r#"{"compare": [{"key": "v", "verison": 1}]}"#,
                "unknown field",
            ),
            (
                r#"{"compare": [{"key": "v", "version": 1, "op": "<="}]}"#,
                "op",
            ),
            (r#"{"success": [{"put": "v"}]}"#, "needs value"),
            (
                r#"{"success": [{"put": "v", "delete": "w", "value": "x"}]}"#,
                "exactly one",
            ),
            (
                r#"{"success": [{"delete": "v", "value": "x"}]}"#,
                "only a put",
            ),
            (
                r#"{"success": [{"get": "v", "ephemeral": true}]}"#,
                "only a put",
            ),
            (
                r#"{"success": [{"put": "v", "value": "x", "prefix": true}]}"#,
                "no prefix",
            ),
            (r#"{"failure": [{"put": "v", "value_hex": "f"}]}"#, "odd"),
            (
                r#"{"failure": [{"put": "v", "value_hex": "zz"}]}"#,
                "not hexadecimal",
            ),
            (
                r#"{"success": [{"put": "v", "value": "x", "value_hex": "00"}]}"#,
                "both",
            ),
            (r#"{"succes": []}"#, "unknown field"),
            (r#"[1, 2]"#, "transaction"),
        ] {
            let found = parse(json.as_bytes()).unwrap_err();
            assert!(found.contains(error), "{json}: {found}");
        }
        assert_eq!(parse(b"{}").unwrap(), Txn::default());
    }
}
