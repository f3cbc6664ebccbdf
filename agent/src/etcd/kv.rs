//! etcd's KV service: Range from the local replica, writes through the agent's socket.

use std::time::Instant;

use corral_proto::api::{AgentRequest, Query, Reply};
use corral_proto::range::{KeyRange, RangeEnd, RangeQuery, RangeResult};
use corral_proto::{Answer, Compare, CompareOp, CompareTarget, SessionId, Txn, TxnOp, TxnOpResult};
use tonic::{Request, Response, Status};

use super::Services;
use super::convert::{self, Plan};
use super::errors;
use super::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse, kv_server::Kv,
};
use super::server::{ANSWER_BYTES_MAX, Caller, Etcd};
use crate::api::rights;
use crate::sessions::held_sessions::Holder;

/// Times a put with `ignore_value` or `ignore_lease` retries when the key changed
/// between reading it and writing it.
const IGNORE_RETRIES: usize = 16;

impl Etcd {
    /// Refuses a read of `range` the access rules do not grant `caller`.
    fn check_read(
        &self,
        machine: &corral_state::StateMachine,
        caller: &Caller,
        range: &KeyRange,
    ) -> Result<(), Status> {
        let request = AgentRequest::Read {
            query: Query::Prefix {
                prefix: range.covering_prefix(),
                limit: 0,
            },
            consistent: false,
        };
        rights::check(machine.access(), &caller.identity(), &request)
            .map_err(|e| errors::from_api(&e))
    }

    /// Answers a range read from the replica, at `revision` when given (only while the
    /// range has not changed since: Corral keeps no old values).
    pub(super) fn read_range(
        &self,
        caller: &Caller,
        query: &RangeQuery,
        revision: Option<u64>,
    ) -> Result<(u64, RangeResult), Status> {
        self.context.replica.read(|replica| {
            let machine = replica.machine();
            self.check_read(machine, caller, &query.range)?;
            let current = replica.revision();
            if let Some(asked) = revision
                && asked != current
            {
                if asked > current {
                    return Err(errors::future_revision());
                }
                match replica.range_changed_since(asked, &query.range) {
                    Some(false) => {}
                    _ => {
                        return Err(errors::compacted(&format!(
                            "Corral keeps no old values: the range changed after revision \
                             {asked}, so it is answered only at the current revision {current}"
                        )));
                    }
                }
            }
            let result = machine.range(query, ANSWER_BYTES_MAX).map_err(|bytes| {
                errors::too_large(&format!(
                    "the range holds {bytes} bytes, more than the {ANSWER_BYTES_MAX} an answer \
                     carries: ask with a limit or keys_only"
                ))
            })?;
            Ok((current, result))
        })
    }

    /// The lease a write acts in: the one it names, or else the single lease of `caller`
    /// that owns the ephemeral keys it touches (in Corral, what is bound to a session is
    /// changed in that session).
    fn acting_lease<'r>(
        &self,
        caller: &Caller,
        named: Option<SessionId>,
        touched: impl Iterator<Item = &'r KeyRange>,
    ) -> Option<SessionId> {
        if named.is_some() {
            return named;
        }
        let owners: std::collections::BTreeSet<SessionId> = self.context.replica.read(|r| {
            let machine = r.machine();
            let mut owners = std::collections::BTreeSet::new();
            for range in touched {
                let query = RangeQuery {
                    keys_only: true,
                    ..RangeQuery::of(range.clone())
                };
                if let Ok(found) = machine.range(&query, ANSWER_BYTES_MAX) {
                    owners.extend(found.keys.iter().filter_map(|kv| kv.session));
                }
            }
            owners
        });
        let mut owners = owners.into_iter();
        let only = owners.next().filter(|_| owners.next().is_none())?;
        let holder = Holder::Http(caller.token.clone());
        self.context
            .held
            .lock()
            .check(only, &holder, Instant::now())
            .is_ok()
            .then_some(only)
    }

    /// Sends a transaction and answers with its revision, branch and results.
    pub(super) async fn write_txn(
        &self,
        caller: &Caller,
        lease: Option<SessionId>,
        txn: Txn,
    ) -> Result<(u64, bool, Vec<TxnOpResult>), Status> {
        let touched: Vec<KeyRange> = txn
            .success
            .iter()
            .chain(&txn.failure)
            .filter_map(|op| match op {
                TxnOp::Put { key, .. } | TxnOp::Delete { key, .. } => Some(KeyRange::single(key)),
                TxnOp::DeleteRange(range) => Some(range.clone()),
                TxnOp::Range(_) => None,
            })
            .collect();
        let acting = self.acting_lease(caller, lease, touched.iter());
        match self.call_in(caller, acting, AgentRequest::Txn(txn)).await? {
            Reply::Written {
                revision,
                answer: Answer::Txn { succeeded, results },
            } => Ok((revision, succeeded, results)),
            other => Err(unexpected(&other)),
        }
    }

    async fn put(&self, caller: &Caller, request: PutRequest) -> Result<PutResponse, Status> {
        let key = convert::key_text(&request.key)?;
        let lease = convert::lease(request.lease)?;
        if request.ignore_value || request.ignore_lease {
            return self.put_keeping(caller, key, lease, request).await;
        }
        if request.prev_kv {
            let txn = Txn {
                compares: vec![],
                success: vec![
                    TxnOp::Range(RangeQuery::of(KeyRange::single(&key))),
                    TxnOp::Put {
                        key,
                        value: request.value,
                        session: lease,
                    },
                ],
                failure: vec![],
            };
            let (revision, _, results) = self.write_txn(caller, lease, txn).await?;
            let prev_kv = match results.first() {
                Some(TxnOpResult::Range(found)) => found.keys.first().map(convert::key_value),
                _ => None,
            };
            return Ok(PutResponse {
                header: self.header(revision),
                prev_kv,
            });
        }
        let acting = self.acting_lease(caller, lease, std::iter::once(&KeyRange::single(&key)));
        let write = AgentRequest::Put {
            key,
            value: request.value,
            ephemeral: lease.is_some(),
        };
        match self.call_in(caller, acting, write).await? {
            Reply::Written { revision, .. } => Ok(PutResponse {
                header: self.header(revision),
                prev_kv: None,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// A put that keeps the key's value or lease: read, then write if the key is still as
    /// read.
    async fn put_keeping(
        &self,
        caller: &Caller,
        key: String,
        lease: Option<SessionId>,
        request: PutRequest,
    ) -> Result<PutResponse, Status> {
        if request.ignore_value && !request.value.is_empty() {
            return Err(errors::value_provided());
        }
        if request.ignore_lease && lease.is_some() {
            return Err(errors::lease_provided());
        }
        for _ in 0..IGNORE_RETRIES {
            let Some(current) = self.context.replica.read(|r| r.machine().get(&key)) else {
                return Err(errors::key_not_found());
            };
            let session = if request.ignore_lease {
                current.session
            } else {
                lease
            };
            let txn = Txn {
                compares: vec![Compare {
                    key: key.clone(),
                    op: CompareOp::Equal,
                    target: CompareTarget::ModifyRevision(current.modify_revision),
                }],
                success: vec![TxnOp::Put {
                    key: key.clone(),
                    value: if request.ignore_value {
                        current.value.clone()
                    } else {
                        request.value.clone()
                    },
                    session,
                }],
                failure: vec![],
            };
            let (revision, succeeded, _) = self.write_txn(caller, session, txn).await?;
            if succeeded {
                return Ok(PutResponse {
                    header: self.header(revision),
                    prev_kv: request.prev_kv.then(|| convert::key_value(&current)),
                });
            }
        }
        Err(errors::timeout(&format!(
            "{key:?} changed under every one of {IGNORE_RETRIES} attempts to keep its value"
        )))
    }

    async fn delete_range(
        &self,
        caller: &Caller,
        request: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, Status> {
        if request.key.is_empty() && request.range_end.is_empty() {
            return Err(errors::empty_key());
        }
        let range = KeyRange::from_etcd(&request.key, &request.range_end);
        range
            .validate()
            .map_err(|e| errors::invalid(&e.to_string()))?;
        let plain = match (&range.end, range.as_prefix()) {
            _ if request.prev_kv => None,
            (RangeEnd::Single, _) => Some((convert::key_text(&range.start)?, false)),
            (_, Some(prefix)) => Some((prefix.to_string(), true)),
            _ => None,
        };
        if let Some((key, prefix)) = plain {
            let acting = self.acting_lease(caller, None, std::iter::once(&range));
            return match self
                .call_in(caller, acting, AgentRequest::Delete { key, prefix })
                .await?
            {
                Reply::Written {
                    revision,
                    answer: Answer::Deleted { count },
                } => Ok(DeleteRangeResponse {
                    header: self.header(revision),
                    deleted: count as i64,
                    prev_kvs: vec![],
                }),
                other => Err(unexpected(&other)),
            };
        }
        let mut success = Vec::new();
        if request.prev_kv {
            success.push(TxnOp::Range(RangeQuery::of(range.clone())));
        }
        success.push(convert::delete_op(range)?);
        let txn = Txn {
            compares: vec![],
            success,
            failure: vec![],
        };
        let (revision, _, results) = self.write_txn(caller, None, txn).await?;
        let mut prev_kvs = Vec::new();
        let mut deleted = 0;
        for result in results {
            match result {
                TxnOpResult::Range(found) => {
                    prev_kvs = found.keys.iter().map(convert::key_value).collect()
                }
                TxnOpResult::Deleted { count } => deleted = count,
                TxnOpResult::Put(_) => {}
            }
        }
        Ok(DeleteRangeResponse {
            header: self.header(revision),
            deleted: deleted as i64,
            prev_kvs,
        })
    }

    async fn txn(&self, caller: &Caller, request: TxnRequest) -> Result<TxnResponse, Status> {
        let (txn, plan, lease) = convert::txn(&request)?;
        let writes = txn
            .success
            .iter()
            .chain(&txn.failure)
            .any(|op| !matches!(op, TxnOp::Range(_)));
        if !writes {
            return self.read_txn(caller, &txn, &plan).await;
        }
        let (revision, succeeded, results) = self.write_txn(caller, lease, txn).await?;
        let steps = if succeeded {
            &plan.success
        } else {
            &plan.failure
        };
        let header = self.header(revision);
        Ok(TxnResponse {
            header,
            succeeded,
            responses: convert::responses(steps, results, header)?,
        })
    }

    /// A transaction that only reads: answered from the replica after the core's read
    /// index, as etcd answers it.
    async fn read_txn(
        &self,
        caller: &Caller,
        txn: &Txn,
        plan: &Plan,
    ) -> Result<TxnResponse, Status> {
        self.linearize().await?;
        let (revision, succeeded, results) = self.context.replica.read(|replica| {
            let machine = replica.machine();
            for compare in &txn.compares {
                self.check_read(machine, caller, &KeyRange::single(&compare.key))?;
            }
            let succeeded = machine.compares_hold(txn);
            let branch = if succeeded {
                &txn.success
            } else {
                &txn.failure
            };
            let mut results = Vec::with_capacity(branch.len());
            for op in branch {
                if let TxnOp::Range(query) = op {
                    self.check_read(machine, caller, &query.range)?;
                    let found = machine.range(query, ANSWER_BYTES_MAX).map_err(|bytes| {
                        errors::too_large(&format!("a read of the transaction holds {bytes} bytes"))
                    })?;
                    results.push(TxnOpResult::Range(found));
                }
            }
            Ok::<_, Status>((replica.revision(), succeeded, results))
        })?;
        let steps = if succeeded {
            &plan.success
        } else {
            &plan.failure
        };
        let header = self.header(revision);
        Ok(TxnResponse {
            header,
            succeeded,
            responses: convert::responses(steps, results, header)?,
        })
    }
}

fn unexpected(reply: &Reply) -> Status {
    Status::internal(format!(
        "corral: unexpected reply from the agent: {reply:?}"
    ))
}

#[tonic::async_trait]
impl Kv for Services {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let etcd = &self.0;
        let caller = etcd.caller(&request)?;
        let request = request.into_inner();
        let query = convert::range_query(&request)?;
        if !request.serializable {
            etcd.linearize().await?;
        }
        let revision = (request.revision > 0).then_some(request.revision as u64);
        let (current, result) = etcd.read_range(&caller, &query, revision)?;
        Ok(Response::new(convert::range_response(
            result,
            etcd.header(current),
        )))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let caller = self.0.caller(&request)?;
        Ok(Response::new(
            self.0.put(&caller, request.into_inner()).await?,
        ))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let caller = self.0.caller(&request)?;
        Ok(Response::new(
            self.0.delete_range(&caller, request.into_inner()).await?,
        ))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let caller = self.0.caller(&request)?;
        Ok(Response::new(
            self.0.txn(&caller, request.into_inner()).await?,
        ))
    }

    /// Corral keeps no old values, so there is nothing to compact: the history an agent
    /// keeps for watchers is bounded by itself. Compacting up to the present succeeds.
    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        self.0.caller(&request)?;
        let asked = request.into_inner().revision.max(0) as u64;
        let current = self.0.context.replica.revision();
        if asked > current {
            return Err(errors::future_revision());
        }
        Ok(Response::new(CompactionResponse {
            header: self.0.header(current),
        }))
    }
}
