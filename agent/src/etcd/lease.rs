//! etcd's Lease service: a lease is a session this agent holds with a time-to-live, and
//! keys put with it are ephemeral keys of that session. The agent keeps the clock: a
//! keep-alive is answered here, with nothing written to the core; a lease that runs out
//! is closed in the core, which deletes its keys everywhere.

use std::pin::Pin;
use std::time::{Duration, Instant};

use corral_proto::api::{AgentRequest, Reply, SESSION_TTL_MS_MAX, SESSION_TTL_MS_MIN};
use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::Services;
use super::errors;
use super::pb::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, lease_server::Lease,
};
use super::server::Caller;
use crate::sessions::held_sessions::{Holder, Lifetime};

/// Shortest lease, in seconds: what a TTL of 0 or less gets, as etcd grants a minimum.
pub(super) const LEASE_TTL_MIN_SECONDS: i64 = 2;

/// Keep-alive answers a stream holds for a client that does not read them.
const KEEPALIVE_BUFFER: usize = 16;

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn holder(caller: &Caller) -> Holder {
    Holder::Http(caller.token.clone())
}

/// The time-to-live a grant asks for, in milliseconds, within Corral's bounds.
pub(super) fn granted_ttl_ms(ttl_seconds: i64) -> Result<u64, Status> {
    let seconds = ttl_seconds.max(LEASE_TTL_MIN_SECONDS) as u64;
    let ms = seconds.saturating_mul(1000);
    if ms > SESSION_TTL_MS_MAX {
        return Err(Status::out_of_range("etcdserver: too large lease TTL"));
    }
    Ok(ms.max(SESSION_TTL_MS_MIN))
}

/// Whole seconds left until `deadline`, rounded up as etcd's lessor reports them.
fn seconds_left(deadline: Option<Instant>, now: Instant) -> i64 {
    match deadline {
        Some(deadline) => deadline
            .saturating_duration_since(now)
            .as_millis()
            .div_ceil(1000) as i64,
        None => -1,
    }
}

impl Services {
    /// Renews `id` for `caller`: its time-to-live in seconds, 0 when it is gone.
    fn renew(&self, caller: &Caller, id: i64) -> i64 {
        if id <= 0 {
            return 0;
        }
        match self
            .0
            .context
            .held
            .lock()
            .renew(id as u64, &holder(caller), Instant::now())
        {
            Ok(Some(ttl)) => ttl.as_secs() as i64,
            Ok(None) => i64::MAX / 2,
            Err(_) => 0,
        }
    }
}

#[tonic::async_trait]
impl Lease for Services {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let caller = self.0.caller(&request)?;
        let request = request.into_inner();
        if request.id != 0 {
            return Err(errors::unsupported(
                "choosing a lease's ID: Corral chooses it (send ID 0)",
            ));
        }
        let ttl_ms = granted_ttl_ms(request.ttl)?;
        let open = AgentRequest::OpenSession {
            ttl_ms: Some(ttl_ms),
            label: "etcd lease".into(),
        };
        match self.0.call(&caller, open).await? {
            Reply::Session { session, .. } => Ok(Response::new(LeaseGrantResponse {
                header: self.0.header_now(),
                id: session as i64,
                ttl: (ttl_ms / 1000) as i64,
                error: String::new(),
            })),
            other => Err(Status::internal(format!(
                "corral: unexpected reply {other:?}"
            ))),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let caller = self.0.caller(&request)?;
        let id = request.into_inner().id;
        let session = super::convert::lease(id)?
            .ok_or_else(|| errors::lease_not_found("lease 0 is no lease"))?;
        let reply = self
            .0
            .call(&caller, AgentRequest::CloseSession { session })
            .await?;
        let revision = match reply {
            Reply::Written { revision, .. } => revision,
            _ => self.0.context.replica.revision(),
        };
        Ok(Response::new(LeaseRevokeResponse {
            header: self.0.header(revision),
        }))
    }

    type LeaseKeepAliveStream = Stream_<LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let caller = self.0.caller(&request)?;
        let mut inbound = request.into_inner();
        let (sender, receiver) = tokio::sync::mpsc::channel(KEEPALIVE_BUFFER);
        let services = self.clone();
        let mut shutdown = self.0.context.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = inbound.next() => next,
                    _ = super::stopped(&mut shutdown) => break,
                };
                let Some(Ok(keep_alive)) = next else { break };
                let ttl = services.renew(&caller, keep_alive.id);
                let answer = LeaseKeepAliveResponse {
                    header: services.0.header_now(),
                    id: keep_alive.id,
                    ttl,
                };
                if sender.send(Ok(answer)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let caller = self.0.caller(&request)?;
        let request = request.into_inner();
        let now = Instant::now();
        let held = (request.id > 0)
            .then(|| {
                self.0
                    .context
                    .held
                    .lock()
                    .check(request.id as u64, &holder(&caller), now)
                    .ok()
                    .cloned()
            })
            .flatten();
        let Some(held) = held else {
            // As etcd: a lease that is gone has a TTL of -1.
            return Ok(Response::new(LeaseTimeToLiveResponse {
                header: self.0.header_now(),
                id: request.id,
                ttl: -1,
                granted_ttl: 0,
                keys: vec![],
            }));
        };
        let granted = match held.lifetime {
            Lifetime::Ttl(ttl) => ttl,
            Lifetime::UntilEmpty | Lifetime::UntilClosed => Duration::ZERO,
        };
        let keys = if request.keys {
            self.0.context.replica.read(|r| {
                r.machine()
                    .session_keys(request.id as u64)
                    .into_iter()
                    .map(String::into_bytes)
                    .collect()
            })
        } else {
            Vec::new()
        };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: self.0.header_now(),
            id: request.id,
            ttl: seconds_left(held.deadline, now),
            granted_ttl: granted.as_secs() as i64,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let caller = self.0.caller(&request)?;
        let leases = self
            .0
            .context
            .held
            .lock()
            .held_by(&holder(&caller))
            .into_iter()
            .filter(|(_, held)| matches!(held.lifetime, Lifetime::Ttl(_)))
            .map(|(id, _)| LeaseStatus { id: id as i64 })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: self.0.header_now(),
            leases,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_gets_at_least_the_minimum_and_no_more_than_a_day() {
        assert_eq!(granted_ttl_ms(0).unwrap(), 2_000);
        assert_eq!(granted_ttl_ms(-5).unwrap(), 2_000);
        assert_eq!(granted_ttl_ms(60).unwrap(), 60_000);
        assert_eq!(
            granted_ttl_ms(86_401).unwrap_err().message(),
            "etcdserver: too large lease TTL"
        );
        let now = Instant::now();
        assert_eq!(
            seconds_left(Some(now + Duration::from_millis(1_200)), now),
            2
        );
        assert_eq!(seconds_left(Some(now), now + Duration::from_secs(1)), 0);
    }
}
