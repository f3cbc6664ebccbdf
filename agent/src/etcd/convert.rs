//! etcd's messages to Corral's queries, commands and records, and back. No I/O.
//!
//! ```text
//!  RangeRequest ──range_query──► RangeQuery          KeyValue ──key_value──► mvccpb
//!  TxnRequest ──txn──► (Txn, Plan) ... Answer::Txn ──Plan::responses──► ResponseOps
//!  EventBatch ──events_for──► mvccpb::Event (PUT | DELETE), in the watcher's range
//! ```
//!
//! A lease is a Corral session: its ID is the session's, and a key's `lease` is the
//! session it is bound to. An etcd operation may become several Corral operations (a put
//! that asks for the previous value reads the key first, in the same transaction); the
//! [`Plan`] remembers which answers make up which etcd response.

use corral_proto::command::validate_key;
use corral_proto::range::{KeyRange, RangeEnd, RangeQuery, RangeResult, SortOrder, SortTarget};
use corral_proto::{
    Compare, CompareOp, CompareTarget, Event, EventBatch, KeyValue, SessionId, Txn, TxnOp,
    TxnOpResult,
};
use tonic::Status;

use super::errors;
use super::pb::etcdserverpb::{
    self as pb, DeleteRangeResponse, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseOp, compare, range_request, request_op, response_op,
};
use super::pb::mvccpb;

/// A key of a write: UTF-8 text within Corral's limits.
pub(super) fn key_text(key: &[u8]) -> Result<String, Status> {
    if key.is_empty() {
        return Err(errors::empty_key());
    }
    let text = std::str::from_utf8(key)
        .map_err(|_| errors::invalid("keys are UTF-8 text in Corral; this key is not"))?;
    validate_key(text, false).map_err(|e| errors::invalid(&e.to_string()))?;
    Ok(text.to_string())
}

/// A lease ID as a session (0: none).
pub(super) fn lease(id: i64) -> Result<Option<SessionId>, Status> {
    match id {
        0 => Ok(None),
        id if id < 0 => Err(errors::lease_not_found(&format!("lease {id} is negative"))),
        id => Ok(Some(id as SessionId)),
    }
}

pub(super) fn key_value(kv: &KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key.as_bytes().to_vec(),
        create_revision: kv.create_revision as i64,
        mod_revision: kv.modify_revision as i64,
        version: kv.version as i64,
        value: kv.value.clone(),
        lease: kv.session.unwrap_or(0) as i64,
    }
}

fn revision(value: i64) -> u64 {
    value.max(0) as u64
}

/// The range read a RangeRequest asks for (its `revision` is checked by the caller).
pub(super) fn range_query(request: &RangeRequest) -> Result<RangeQuery, Status> {
    if request.key.is_empty() && request.range_end.is_empty() {
        return Err(errors::empty_key());
    }
    let range = KeyRange::from_etcd(&request.key, &request.range_end);
    range
        .validate()
        .map_err(|e| errors::invalid(&e.to_string()))?;
    let target = match range_request::SortTarget::try_from(request.sort_target) {
        Ok(range_request::SortTarget::Key) => SortTarget::Key,
        Ok(range_request::SortTarget::Version) => SortTarget::Version,
        Ok(range_request::SortTarget::Create) => SortTarget::CreateRevision,
        Ok(range_request::SortTarget::Mod) => SortTarget::ModifyRevision,
        Ok(range_request::SortTarget::Value) => SortTarget::Value,
        Err(_) => return Err(errors::invalid("unknown sort target")),
    };
    let order = match range_request::SortOrder::try_from(request.sort_order) {
        Ok(range_request::SortOrder::None) => None,
        Ok(range_request::SortOrder::Ascend) => Some(SortOrder::Ascend),
        Ok(range_request::SortOrder::Descend) => Some(SortOrder::Descend),
        Err(_) => return Err(errors::invalid("unknown sort order")),
    };
    // As etcd: a sort target without an order sorts ascending; by key ascending is the
    // natural order.
    let sort = match (order, target) {
        (None, SortTarget::Key) | (Some(SortOrder::Ascend), SortTarget::Key) => None,
        (None, target) => Some((target, SortOrder::Ascend)),
        (Some(order), target) => Some((target, order)),
    };
    Ok(RangeQuery {
        range,
        limit: request.limit.max(0) as u64,
        sort,
        keys_only: request.keys_only,
        count_only: request.count_only,
        min_modify_revision: revision(request.min_mod_revision),
        max_modify_revision: revision(request.max_mod_revision),
        min_create_revision: revision(request.min_create_revision),
        max_create_revision: revision(request.max_create_revision),
    })
}

pub(super) fn range_response(
    result: RangeResult,
    header: Option<pb::ResponseHeader>,
) -> RangeResponse {
    RangeResponse {
        header,
        kvs: result.keys.iter().map(key_value).collect(),
        more: result.more,
        count: result.count as i64,
    }
}

/// One compare of a transaction.
pub(super) fn compare(compare: &pb::Compare) -> Result<Compare, Status> {
    if !compare.range_end.is_empty() {
        return Err(errors::unsupported(
            "compares over a key range are not supported; compare each key",
        ));
    }
    let key = key_text(&compare.key)?;
    let op = match compare::CompareResult::try_from(compare.result) {
        Ok(compare::CompareResult::Equal) => CompareOp::Equal,
        Ok(compare::CompareResult::NotEqual) => CompareOp::NotEqual,
        Ok(compare::CompareResult::Less) => CompareOp::Less,
        Ok(compare::CompareResult::Greater) => CompareOp::Greater,
        Err(_) => return Err(errors::invalid("unknown compare result")),
    };
    use compare::TargetUnion as U;
    let union = compare.target_union.clone();
    let target = match compare::CompareTarget::try_from(compare.target) {
        Ok(compare::CompareTarget::Version) => CompareTarget::Version(revision(as_int(&union))),
        Ok(compare::CompareTarget::Create) => {
            CompareTarget::CreateRevision(revision(as_int(&union)))
        }
        Ok(compare::CompareTarget::Mod) => CompareTarget::ModifyRevision(revision(as_int(&union))),
        Ok(compare::CompareTarget::Lease) => CompareTarget::Session(revision(as_int(&union))),
        Ok(compare::CompareTarget::Value) => match union {
            Some(U::Value(value)) => CompareTarget::Value(value),
            None => CompareTarget::Value(Vec::new()),
            Some(_) => return Err(errors::invalid("a value compare needs a value")),
        },
        Err(_) => return Err(errors::invalid("unknown compare target")),
    };
    Ok(Compare { key, op, target })
}

/// The number a compare holds, whichever member of the union carries it (0: none).
fn as_int(union: &Option<compare::TargetUnion>) -> i64 {
    use compare::TargetUnion as U;
    match union {
        Some(U::Version(v) | U::CreateRevision(v) | U::ModRevision(v) | U::Lease(v)) => *v,
        Some(U::Value(_)) | None => 0,
    }
}

/// What an etcd operation became, to rebuild its response from Corral's answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Step {
    Range,
    Put { prev_kv: bool },
    Delete { prev_kv: bool },
}

/// The steps of the branch that ran, by branch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Plan {
    pub(super) success: Vec<Step>,
    pub(super) failure: Vec<Step>,
}

/// A transaction: Corral's, the plan to answer it as etcd, and the lease its puts are
/// bound to (a transaction's puts share one lease in Corral).
pub(super) fn txn(request: &pb::TxnRequest) -> Result<(Txn, Plan, Option<SessionId>), Status> {
    let limit = corral_proto::limits::TXN_OPS_MAX;
    if request.compare.len() > limit
        || request.success.len() > limit
        || request.failure.len() > limit
    {
        return Err(errors::too_many_ops(&format!(
            "Corral takes at most {limit} compares and {limit} operations per branch"
        )));
    }
    let compares = request
        .compare
        .iter()
        .map(compare)
        .collect::<Result<_, _>>()?;
    let mut lease_of_puts = None;
    let (success, success_plan) = branch(&request.success, &mut lease_of_puts)?;
    let (failure, failure_plan) = branch(&request.failure, &mut lease_of_puts)?;
    if success.len() > limit || failure.len() > limit {
        return Err(errors::too_many_ops(&format!(
            "with the reads of prev_kv, a branch has more than Corral's {limit} operations"
        )));
    }
    Ok((
        Txn {
            compares,
            success,
            failure,
        },
        Plan {
            success: success_plan,
            failure: failure_plan,
        },
        lease_of_puts,
    ))
}

fn branch(
    ops: &[RequestOp],
    lease_of_puts: &mut Option<SessionId>,
) -> Result<(Vec<TxnOp>, Vec<Step>), Status> {
    let mut txn_ops = Vec::new();
    let mut steps = Vec::new();
    let mut put_keys = std::collections::HashSet::new();
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestRange(range)) => {
                if range.revision > 0 {
                    return Err(errors::unsupported(
                        "reads at an old revision inside a transaction",
                    ));
                }
                txn_ops.push(TxnOp::Range(range_query(range)?));
                steps.push(Step::Range);
            }
            Some(request_op::Request::RequestPut(put)) => {
                if put.ignore_value || put.ignore_lease {
                    return Err(errors::unsupported(
                        "ignore_value and ignore_lease inside a transaction",
                    ));
                }
                let key = key_text(&put.key)?;
                if !put_keys.insert(key.clone()) {
                    return Err(errors::duplicate_key());
                }
                let session = lease(put.lease)?;
                if let Some(session) = session {
                    match lease_of_puts {
                        Some(existing) if *existing != session => {
                            return Err(errors::unsupported(
                                "puts under two different leases in one transaction",
                            ));
                        }
                        _ => *lease_of_puts = Some(session),
                    }
                }
                if put.prev_kv {
                    txn_ops.push(TxnOp::Range(RangeQuery::of(KeyRange::single(&key))));
                }
                txn_ops.push(TxnOp::Put {
                    key,
                    value: put.value.clone(),
                    session,
                });
                steps.push(Step::Put {
                    prev_kv: put.prev_kv,
                });
            }
            Some(request_op::Request::RequestDeleteRange(delete)) => {
                if delete.key.is_empty() && delete.range_end.is_empty() {
                    return Err(errors::empty_key());
                }
                let range = KeyRange::from_etcd(&delete.key, &delete.range_end);
                range
                    .validate()
                    .map_err(|e| errors::invalid(&e.to_string()))?;
                if delete.prev_kv {
                    txn_ops.push(TxnOp::Range(RangeQuery::of(range.clone())));
                }
                txn_ops.push(delete_op(range)?);
                steps.push(Step::Delete {
                    prev_kv: delete.prev_kv,
                });
            }
            Some(request_op::Request::RequestTxn(_)) => {
                return Err(errors::unsupported("transactions nested in transactions"));
            }
            None => return Err(errors::invalid("an empty transaction operation")),
        }
    }
    Ok((txn_ops, steps))
}

/// The delete of a range: one key, a prefix, or any other range.
pub(super) fn delete_op(range: KeyRange) -> Result<TxnOp, Status> {
    if range.end == RangeEnd::Single {
        return Ok(TxnOp::Delete {
            key: key_text(&range.start)?,
            prefix: false,
        });
    }
    Ok(TxnOp::DeleteRange(range))
}

/// The etcd responses of the branch that ran, from Corral's results.
pub(super) fn responses(
    steps: &[Step],
    results: Vec<TxnOpResult>,
    header: Option<pb::ResponseHeader>,
) -> Result<Vec<ResponseOp>, Status> {
    let mut results = results.into_iter();
    let mismatch = || Status::internal("corral: the transaction's answer does not match it");
    let mut next = || results.next().ok_or_else(mismatch);
    let mut responses = Vec::with_capacity(steps.len());
    for step in steps {
        let response = match step {
            Step::Range => match next()? {
                TxnOpResult::Range(result) => {
                    response_op::Response::ResponseRange(range_response(result, header))
                }
                _ => return Err(mismatch()),
            },
            Step::Put { prev_kv } => {
                let previous = if *prev_kv {
                    match next()? {
                        TxnOpResult::Range(result) => result.keys.first().map(key_value),
                        _ => return Err(mismatch()),
                    }
                } else {
                    None
                };
                match next()? {
                    TxnOpResult::Put(_) => response_op::Response::ResponsePut(PutResponse {
                        header,
                        prev_kv: previous,
                    }),
                    _ => return Err(mismatch()),
                }
            }
            Step::Delete { prev_kv } => {
                let previous = if *prev_kv {
                    match next()? {
                        TxnOpResult::Range(result) => result.keys.iter().map(key_value).collect(),
                        _ => return Err(mismatch()),
                    }
                } else {
                    Vec::new()
                };
                match next()? {
                    TxnOpResult::Deleted { count } => {
                        response_op::Response::ResponseDeleteRange(DeleteRangeResponse {
                            header,
                            deleted: count as i64,
                            prev_kvs: previous,
                        })
                    }
                    _ => return Err(mismatch()),
                }
            }
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    Ok(responses)
}

/// What a watcher asked for.
#[derive(Clone, Debug)]
pub(super) struct WatchSpec {
    pub(super) range: KeyRange,
    pub(super) no_put: bool,
    pub(super) no_delete: bool,
    pub(super) prev_kv: bool,
}

/// The events of `batch` a watcher receives, without their previous values.
pub(super) fn events_for(spec: &WatchSpec, batch: &EventBatch) -> Vec<mvccpb::Event> {
    let mut events = Vec::new();
    for event in &batch.events {
        match event {
            Event::KeyPut(kv) if !spec.no_put && spec.range.contains(kv.key.as_bytes()) => {
                events.push(mvccpb::Event {
                    r#type: mvccpb::event::EventType::Put as i32,
                    kv: Some(key_value(kv)),
                    prev_kv: None,
                });
            }
            Event::KeyDeleted { key } if !spec.no_delete && spec.range.contains(key.as_bytes()) => {
                events.push(mvccpb::Event {
                    r#type: mvccpb::event::EventType::Delete as i32,
                    kv: Some(mvccpb::KeyValue {
                        key: key.as_bytes().to_vec(),
                        mod_revision: batch.revision as i64,
                        ..Default::default()
                    }),
                    prev_kv: None,
                });
            }
            _ => {}
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, lease: i64, prev_kv: bool) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(pb::PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                lease,
                prev_kv,
                ..Default::default()
            })),
        }
    }

    /// etcd's lock recipe: create my key if absent, then read the owner (first created
    /// under the prefix): one Corral transaction with the read after the put.
    #[test]
    fn the_lock_recipe_becomes_one_transaction() {
        let request = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Create as i32,
                key: b"lock/1a".to_vec(),
                target_union: Some(compare::TargetUnion::CreateRevision(0)),
                range_end: vec![],
            }],
            success: vec![
                put("lock/1a", 26, false),
                RequestOp {
                    request: Some(request_op::Request::RequestRange(RangeRequest {
                        key: b"lock/".to_vec(),
                        range_end: b"lock0".to_vec(),
                        sort_target: range_request::SortTarget::Create as i32,
                        sort_order: range_request::SortOrder::Ascend as i32,
                        limit: 1,
                        ..Default::default()
                    })),
                },
            ],
            failure: vec![],
        };
        let (txn, plan, lease) = txn(&request).unwrap();
        assert_eq!(lease, Some(26));
        assert_eq!(txn.compares[0].target, CompareTarget::CreateRevision(0));
        assert!(matches!(
            txn.success[0],
            TxnOp::Put {
                session: Some(26),
                ..
            }
        ));
        let TxnOp::Range(query) = &txn.success[1] else {
            panic!("a range read");
        };
        assert_eq!(query.limit, 1);
        assert_eq!(
            query.sort,
            Some((SortTarget::CreateRevision, SortOrder::Ascend))
        );
        assert_eq!(plan.success, [Step::Put { prev_kv: false }, Step::Range]);
    }

    #[test]
    fn a_put_that_wants_the_previous_value_reads_it_first() {
        let request = pb::TxnRequest {
            success: vec![put("k", 0, true)],
            ..Default::default()
        };
        let (txn, plan, _) = txn(&request).unwrap();
        assert!(matches!(txn.success[0], TxnOp::Range(_)));
        let kv = KeyValue {
            key: "k".into(),
            value: b"old".to_vec(),
            create_revision: 2,
            modify_revision: 3,
            version: 2,
            session: None,
        };
        let results = vec![
            TxnOpResult::Range(RangeResult {
                keys: vec![kv],
                more: false,
                count: 1,
            }),
            TxnOpResult::Put(corral_proto::KeyMeta {
                create_revision: 2,
                modify_revision: 4,
                version: 3,
            }),
        ];
        let responses = responses(&plan.success, results, None).unwrap();
        let Some(response_op::Response::ResponsePut(put)) = &responses[0].response else {
            panic!("a put response");
        };
        assert_eq!(put.prev_kv.as_ref().unwrap().value, b"old");
    }

    #[test]
    fn what_corral_cannot_express_is_refused_plainly() {
        let two_leases = pb::TxnRequest {
            success: vec![put("a", 1, false), put("b", 2, false)],
            ..Default::default()
        };
        assert!(
            txn(&two_leases)
                .unwrap_err()
                .message()
                .contains("two different leases")
        );
        let twice = pb::TxnRequest {
            success: vec![put("a", 0, false), put("a", 0, false)],
            ..Default::default()
        };
        assert_eq!(
            txn(&twice).unwrap_err().message(),
            "etcdserver: duplicate key given in txn request"
        );
        assert!(key_text(&[0xff, 0xfe]).is_err());
        assert_eq!(
            key_text(b"").unwrap_err().message(),
            "etcdserver: key is not provided"
        );
    }

    #[test]
    fn watch_events_keep_to_the_range_and_filters() {
        let batch = EventBatch {
            revision: 9,
            events: vec![
                Event::KeyDeleted { key: "a/1".into() },
                Event::KeyDeleted { key: "b".into() },
            ],
        };
        let spec = WatchSpec {
            range: KeyRange::prefix("a/"),
            no_put: true,
            no_delete: false,
            prev_kv: false,
        };
        let events = events_for(&spec, &batch);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kv.as_ref().unwrap().mod_revision, 9);
        let spec = WatchSpec {
            no_delete: true,
            ..spec
        };
        assert!(events_for(&spec, &batch).is_empty());
    }
}
