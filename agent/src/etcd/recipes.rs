//! etcd's Lock and Election services, as etcd itself serves them: recipes on keys and
//! leases, so that they and the client-side recipes (`etcdctl lock`, `etcdctl elect`, the
//! lock of Python's `etcd3`, jetcd's) exclude one another on the same names.
//!
//! ```text
//!  Lock(name, lease)   put name/<lease hex> under the lease if absent (one transaction
//!                      that also reads who is first), then wait until no key under name/
//!                      was created before it: the holder is the oldest key, and its
//!                      create revision is the fencing token (it only grows)
//!  Campaign            the same, with the value; Leader/Observe read the oldest key
//! ```

use std::pin::Pin;
use std::sync::Arc;

use corral_proto::api::AgentRequest;
use corral_proto::range::{KeyRange, RangeQuery, SortOrder, SortTarget};
use corral_proto::{
    Compare, CompareOp, CompareTarget, KeyValue, SessionId, Txn, TxnOp, TxnOpResult,
};
use futures::Stream;
use tonic::{Code, Request, Response, Status};

use super::Services;
use super::convert;
use super::errors;
use super::pb::etcdserverpb::ResponseHeader;
use super::pb::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse, election_server::Election,
};
use super::pb::v3lockpb::{
    LockRequest, LockResponse, UnlockRequest, UnlockResponse, lock_server::Lock,
};
use super::server::{Caller, Etcd};

/// Leader changes an observer holds for a client that reads slowly.
const OBSERVE_BUFFER: usize = 8;

/// The prefix of a lock's or election's keys, and the key of one lease under it.
fn keys_of(name: &[u8], lease: SessionId) -> Result<(String, String), Status> {
    let name = convert::key_text(name)?;
    let prefix = format!("{name}/");
    let key = format!("{prefix}{lease:x}");
    convert::key_text(key.as_bytes())?;
    Ok((prefix, key))
}

/// The oldest key under `prefix`, and so the holder.
fn first_created(prefix: &str) -> RangeQuery {
    RangeQuery {
        limit: 1,
        sort: Some((SortTarget::CreateRevision, SortOrder::Ascend)),
        ..RangeQuery::of(KeyRange::prefix(prefix))
    }
}

fn no_leader() -> Status {
    Status::new(Code::FailedPrecondition, "etcdserver: election: no leader")
}

fn not_leader() -> Status {
    Status::new(Code::FailedPrecondition, "etcdserver: election: not leader")
}

/// Deletes a waiter's key if its wait is abandoned (the client canceled), as etcd does,
/// so that it does not hold up the waiters behind it until its lease ends.
struct Abandon {
    etcd: Arc<Etcd>,
    caller: Caller,
    lease: SessionId,
    key: Option<String>,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let etcd = self.etcd.clone();
            let caller = self.caller.clone();
            let lease = self.lease;
            tokio::spawn(async move {
                let delete = AgentRequest::Delete { key, prefix: false };
                let _ = etcd.call_in(&caller, Some(lease), delete).await;
            });
        }
    }
}

impl Etcd {
    /// Puts `key` under `lease` unless it exists, and answers its create revision and
    /// the revision of the write.
    async fn enqueue(
        &self,
        caller: &Caller,
        lease: SessionId,
        key: &str,
        value: Vec<u8>,
    ) -> Result<(u64, u64, Option<KeyValue>), Status> {
        let txn = Txn {
            compares: vec![Compare {
                key: key.to_string(),
                op: CompareOp::Equal,
                target: CompareTarget::CreateRevision(0),
            }],
            success: vec![TxnOp::Put {
                key: key.to_string(),
                value,
                session: Some(lease),
            }],
            failure: vec![TxnOp::Range(RangeQuery::of(KeyRange::single(key)))],
        };
        let (revision, succeeded, results) = self.write_txn(caller, Some(lease), txn).await?;
        match results.into_iter().next() {
            Some(TxnOpResult::Put(meta)) if succeeded => Ok((meta.create_revision, revision, None)),
            Some(TxnOpResult::Range(found)) => match found.keys.into_iter().next() {
                Some(existing) => Ok((existing.create_revision, revision, Some(existing))),
                None => Err(Status::aborted("corral: the key vanished; try again")),
            },
            _ => Err(Status::internal(
                "corral: unexpected answer to the lock's transaction",
            )),
        }
    }

    /// Waits until no key under `prefix` is older than `mine` (created at `created`);
    /// answers the revision at which that held. Fails if `mine` is deleted meanwhile
    /// (its lease ended).
    async fn wait_first(&self, prefix: &str, mine: &str, created: u64) -> Result<u64, Status> {
        let mut revisions = self.context.replica.revisions();
        let range = KeyRange::prefix(prefix);
        loop {
            let (revision, waiting, exists) = self.context.replica.read(|r| {
                let machine = r.machine();
                let waiting = machine.created_before(&range, created);
                (r.revision(), waiting, machine.get(mine).is_some())
            });
            if !exists {
                return Err(errors::lease_not_found(&format!(
                    "{mine:?} was deleted while it waited (its lease ended or it was revoked)"
                )));
            }
            if !waiting {
                return Ok(revision);
            }
            if revisions.changed().await.is_err() {
                return Err(errors::unavailable("the agent is stopping"));
            }
        }
    }

    /// The oldest key under `prefix`, with the revision it was read at.
    fn leader_of(&self, prefix: &str) -> (u64, Option<KeyValue>) {
        self.context.replica.read(|r| {
            let found = r.machine().range(&first_created(prefix), u64::MAX);
            (
                r.revision(),
                found.ok().and_then(|f| f.keys.into_iter().next()),
            )
        })
    }

    /// Waits for the lock or leadership of `name`: answers the key, its create revision
    /// and the revision it was granted at.
    async fn acquire(
        self: &Arc<Self>,
        caller: &Caller,
        name: &[u8],
        lease: i64,
        value: Vec<u8>,
    ) -> Result<(String, u64, u64, Option<KeyValue>), Status> {
        let lease = convert::lease(lease)?
            .ok_or_else(|| errors::invalid("a lock or a campaign needs a lease"))?;
        let (prefix, key) = keys_of(name, lease)?;
        let (created, _, existing) = self.enqueue(caller, lease, &key, value).await?;
        let mut abandon = Abandon {
            etcd: self.clone(),
            caller: caller.clone(),
            lease,
            key: existing.is_none().then(|| key.clone()),
        };
        let granted = self.wait_first(&prefix, &key, created).await;
        abandon.key = None;
        Ok((key, created, granted?, existing))
    }
}

#[tonic::async_trait]
impl Lock for Services {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let caller = self.0.caller(&request)?;
        let request = request.into_inner();
        let (key, _, revision, _) = self
            .0
            .acquire(&caller, &request.name, request.lease, Vec::new())
            .await?;
        Ok(Response::new(LockResponse {
            header: self.0.header(revision),
            key: key.into_bytes(),
        }))
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let caller = self.0.caller(&request)?;
        let key = convert::key_text(&request.into_inner().key)?;
        let delete = corral_proto::range::KeyRange::single(&key);
        let revision = self.0.delete_keys(&caller, delete).await?;
        Ok(Response::new(UnlockResponse {
            header: self.0.header(revision),
        }))
    }
}

impl Etcd {
    /// Deletes `range`, acting in the caller's lease that owns it.
    async fn delete_keys(&self, caller: &Caller, range: KeyRange) -> Result<u64, Status> {
        let txn = Txn {
            compares: vec![],
            success: vec![convert::delete_op(range)?],
            failure: vec![],
        };
        let (revision, _, _) = self.write_txn(caller, None, txn).await?;
        Ok(revision)
    }
}

/// A leader's key, its lease, and the compare that holds while it still leads (its key
/// is the one created at its revision).
fn leadership(leader: Option<LeaderKey>) -> Result<(String, Option<SessionId>, Compare), Status> {
    let leader = leader.ok_or_else(not_leader)?;
    let key = convert::key_text(&leader.key)?;
    let lease = convert::lease(leader.lease)?;
    let still_leader = Compare {
        key: key.clone(),
        op: CompareOp::Equal,
        target: CompareTarget::CreateRevision(leader.rev.max(0) as u64),
    };
    Ok((key, lease, still_leader))
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

fn leader_key(name: Vec<u8>, key: String, rev: u64, lease: i64) -> LeaderKey {
    LeaderKey {
        name,
        key: key.into_bytes(),
        rev: rev as i64,
        lease,
    }
}

#[tonic::async_trait]
impl Election for Services {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let caller = self.0.caller(&request)?;
        let request = request.into_inner();
        let (key, created, revision, existing) = self
            .0
            .acquire(&caller, &request.name, request.lease, request.value.clone())
            .await?;
        // A campaign on a key that exists takes the value it asks for, as etcd's does.
        if existing.is_some_and(|kv| kv.value != request.value) {
            let put = AgentRequest::Put {
                key: key.clone(),
                value: request.value,
                ephemeral: true,
            };
            let session = convert::lease(request.lease)?;
            self.0.call_in(&caller, session, put).await?;
        }
        Ok(Response::new(CampaignResponse {
            header: self.0.header(revision),
            leader: Some(leader_key(request.name, key, created, request.lease)),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let caller = self.0.caller(&request)?;
        let request = request.into_inner();
        let (key, lease, still_leader) = leadership(request.leader)?;
        let txn = Txn {
            compares: vec![still_leader],
            success: vec![TxnOp::Put {
                key,
                value: request.value,
                session: lease,
            }],
            failure: vec![],
        };
        let (revision, succeeded, _) = self.0.write_txn(&caller, lease, txn).await?;
        if !succeeded {
            return Err(not_leader());
        }
        Ok(Response::new(ProclaimResponse {
            header: self.0.header(revision),
        }))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let caller = self.0.caller(&request)?;
        let name = convert::key_text(&request.into_inner().name)?;
        let prefix = format!("{name}/");
        self.0.read_range(&caller, &first_created(&prefix), None)?;
        let (revision, leader) = self.0.leader_of(&prefix);
        let leader = leader.ok_or_else(no_leader)?;
        Ok(Response::new(LeaderResponse {
            header: self.0.header(revision),
            kv: Some(convert::key_value(&leader)),
        }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let caller = self.0.caller(&request)?;
        let name = convert::key_text(&request.into_inner().name)?;
        let prefix = format!("{name}/");
        self.0.read_range(&caller, &first_created(&prefix), None)?;
        let permit = self
            .0
            .watch_streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted("corral: too many etcd watch streams on this agent")
            })?;
        let (sender, receiver) = tokio::sync::mpsc::channel(OBSERVE_BUFFER);
        let etcd = self.0.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut revisions = etcd.context.replica.revisions();
            let mut shutdown = etcd.context.shutdown.clone();
            let mut last: Option<(String, u64)> = None;
            loop {
                let (revision, leader) = etcd.leader_of(&prefix);
                if let Some(leader) = leader {
                    let seen = (leader.key.clone(), leader.modify_revision);
                    if last.as_ref() != Some(&seen) {
                        last = Some(seen);
                        let header: Option<ResponseHeader> = etcd.header(revision);
                        let answer = LeaderResponse {
                            header,
                            kv: Some(convert::key_value(&leader)),
                        };
                        if sender.send(Ok(answer)).await.is_err() {
                            return;
                        }
                    }
                }
                tokio::select! {
                    changed = revisions.changed() => if changed.is_err() { return },
                    _ = sender.closed() => return,
                    _ = super::stopped(&mut shutdown) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let caller = self.0.caller(&request)?;
        let (key, lease, still_leader) = leadership(request.into_inner().leader)?;
        let txn = Txn {
            compares: vec![still_leader],
            success: vec![TxnOp::Delete { key, prefix: false }],
            failure: vec![],
        };
        let (revision, _, _) = self.0.write_txn(&caller, lease, txn).await?;
        Ok(Response::new(ResignResponse {
            header: self.0.header(revision),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys are etcd's: `name/` and the lease in lowercase hex, so that a server-side
    /// lock and `etcdctl lock` on the same name queue together.
    #[test]
    fn lock_keys_are_etcds() {
        let (prefix, key) = keys_of(b"jobs", 0x694d_7f3a_1b2c).unwrap();
        assert_eq!(prefix, "jobs/");
        assert_eq!(key, "jobs/694d7f3a1b2c");
        assert!(keys_of(b"", 1).is_err());
    }
}
