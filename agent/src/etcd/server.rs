//! The etcd endpoint's listener and the state its services share: the connections to the
//! agent's socket its writes go through, who a request comes from, and the header every
//! answer carries.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use corral_proto::access::Identity;
use corral_proto::api::{AgentRequest, ApiError, Reply};
use corral_proto::{AgentClient, Revision};
use tokio::net::TcpListener;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use super::errors;
use super::pb::etcdserverpb::ResponseHeader;
use crate::agent::AgentContext;

/// Who may call the etcd endpoint: with tokens, every request must present one (as
/// etcd's `token` metadata, which `Authenticate` hands out, or `authorization: Bearer`).
#[derive(Clone, Debug, Default)]
pub struct EtcdPolicy {
    /// The agent's own tokens (`--http-token-file`), besides the core's named tokens.
    pub tokens: Vec<String>,
}

/// Connections to the agent's socket the endpoint spreads its writes over (each carries
/// up to 1,024 requests in flight).
const SOCKET_CONNECTIONS: usize = 4;

/// Most concurrent gRPC streams one HTTP/2 connection may open.
const STREAMS_PER_CONNECTION_MAX: u32 = 1024;

/// Largest request the endpoint decodes (etcd's default `--max-request-bytes` is 1.5 MiB;
/// a Corral value is at most 1 MiB).
pub(super) const REQUEST_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Largest answer the endpoint sends: a range that would exceed it is refused with a
/// message that says to ask for less.
pub(super) const ANSWER_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Most watch streams (and election observers) the endpoint serves at once.
pub(super) const WATCH_STREAMS_MAX: usize = 4096;

/// State the services share.
#[derive(Debug)]
pub(super) struct Etcd {
    pub(super) context: Arc<AgentContext>,
    socket: PathBuf,
    clients: Vec<tokio::sync::Mutex<Option<AgentClient>>>,
    next_client: AtomicUsize,
    policy: EtcdPolicy,
    pub(super) member_id: u64,
    pub(super) cluster_id: u64,
    /// Places for watch streams (and election observers).
    pub(super) watch_streams: Arc<tokio::sync::Semaphore>,
}

/// Who a request comes from: the core token it presented (None: none, or one of the
/// agent's own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Caller {
    pub(super) token: Option<String>,
}

impl Caller {
    pub(super) fn identity(&self) -> Identity {
        match &self.token {
            Some(name) => Identity::Token(name.clone()),
            None => Identity::Anonymous,
        }
    }
}

impl Etcd {
    fn new(context: Arc<AgentContext>, socket: PathBuf, policy: EtcdPolicy) -> Etcd {
        let member_id = stable_id(&context.name);
        let cluster_id = stable_id(&context.core.members().join(","));
        Etcd {
            context,
            socket,
            clients: (0..SOCKET_CONNECTIONS)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next_client: AtomicUsize::new(0),
            policy,
            member_id,
            cluster_id,
            watch_streams: Arc::new(tokio::sync::Semaphore::new(WATCH_STREAMS_MAX)),
        }
    }

    /// The header of an answer that reflects `revision`.
    pub(super) fn header(&self, revision: Revision) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision: revision as i64,
            raft_term: self.context.replica.term(),
        })
    }

    /// The header of an answer at the replica's current revision.
    pub(super) fn header_now(&self) -> Option<ResponseHeader> {
        self.header(self.context.replica.revision())
    }

    /// Who sent `request`, or Unauthenticated when it must present a token and did not.
    pub(super) fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        self.caller_of(request.metadata())
    }

    pub(super) fn caller_of(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let presented = metadata
            .get("token")
            .or_else(|| metadata.get("authorization"))
            .map(|value| {
                let text = value.to_str().map_err(|_| errors::invalid_token())?;
                Ok::<_, Status>(text.strip_prefix("Bearer ").unwrap_or(text).to_string())
            })
            .transpose()?;
        match presented {
            None if self.policy.tokens.is_empty() => Ok(Caller { token: None }),
            None => Err(errors::token_required()),
            Some(token) => match self.token_name(&token) {
                Some(name) => Ok(Caller { token: Some(name) }),
                None if self
                    .policy
                    .tokens
                    .iter()
                    .any(|t| constant_time_eq(t, &token)) =>
                {
                    Ok(Caller { token: None })
                }
                None => Err(errors::invalid_token()),
            },
        }
    }

    /// The name of the core token `secret` is, if any.
    pub(super) fn token_name(&self, secret: &str) -> Option<String> {
        let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        self.context.replica.read(|r| {
            r.machine()
                .access()
                .token_named_by(digest.as_ref())
                .map(str::to_string)
        })
    }

    /// Whether the core enforces the access rules.
    pub(super) fn rules_enforced(&self) -> bool {
        self.context.replica.read(|r| r.machine().access().enforce)
    }

    /// Sends `request` to the agent on behalf of `caller`: its rights and its sessions
    /// (leases) are those of its token.
    pub(super) async fn call(
        &self,
        caller: &Caller,
        request: AgentRequest,
    ) -> Result<Reply, Status> {
        let request = AgentRequest::OnBehalf {
            token: caller.token.clone(),
            request: Box::new(request),
        };
        let client = self.client().await?;
        client.call(request).await.map_err(|error| match error {
            corral_proto::ClientError::Api(api) => errors::from_api(&api),
            other => errors::unavailable(&other.to_string()),
        })
    }

    /// `request` acting in `session` (a lease) when one is given.
    pub(super) async fn call_in(
        &self,
        caller: &Caller,
        session: Option<u64>,
        request: AgentRequest,
    ) -> Result<Reply, Status> {
        match session {
            Some(session) => {
                let request = AgentRequest::InSession {
                    session,
                    request: Box::new(request),
                };
                self.call(caller, request).await
            }
            None => self.call(caller, request).await,
        }
    }

    async fn client(&self) -> Result<AgentClient, Status> {
        let slot = self.next_client.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        let mut client = self.clients[slot].lock().await;
        if let Some(existing) = client.as_ref().filter(|c| !c.is_closed()) {
            return Ok(existing.clone());
        }
        let fresh = AgentClient::connect(&self.socket)
            .await
            .map_err(|e| errors::unavailable(&e.to_string()))?;
        *client = Some(fresh.clone());
        Ok(fresh)
    }

    /// Waits until the replica holds everything the core had committed when the read
    /// began (a linearizable read), as etcd's read index does.
    pub(super) async fn linearize(&self) -> Result<(), Status> {
        let index = self
            .context
            .reads
            .read_index()
            .await
            .map_err(|e| errors::unavailable(&e.to_string()))?;
        if self.context.replica.revision() < index {
            self.context
                .replica
                .wait_for(index, LINEARIZABLE_WAIT)
                .await
                .map_err(|_| errors::from_api(&ApiError::Timeout(format!(
                    "the local replica did not reach revision {index} within {LINEARIZABLE_WAIT:?}"
                ))))?;
        }
        Ok(())
    }
}

/// How long a linearizable read waits for the replica to reach the read index.
const LINEARIZABLE_WAIT: Duration = Duration::from_secs(5);

/// A 64-bit identifier derived from a name, the same on every agent and every run.
fn stable_id(name: &str) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(bytes)
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves the etcd API on `listener` until the agent stops.
pub async fn serve(
    listener: TcpListener,
    context: Arc<AgentContext>,
    socket: PathBuf,
    policy: EtcdPolicy,
) {
    use super::pb::etcdserverpb::{
        auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
        lease_server::LeaseServer, maintenance_server::MaintenanceServer,
        watch_server::WatchServer,
    };
    use super::pb::v3electionpb::election_server::ElectionServer;
    use super::pb::v3lockpb::lock_server::LockServer;

    let mut shutdown = context.shutdown.clone();
    let etcd = Arc::new(Etcd::new(context, socket, policy));
    let incoming = super::listener::limited(listener);
    let service = super::Services(etcd);
    let served = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(STREAMS_PER_CONNECTION_MAX)
        .tcp_nodelay(true)
        .add_service(KvServer::new(service.clone()).max_decoding_message_size(REQUEST_BYTES_MAX))
        .add_service(WatchServer::new(service.clone()).max_decoding_message_size(REQUEST_BYTES_MAX))
        .add_service(LeaseServer::new(service.clone()).max_decoding_message_size(REQUEST_BYTES_MAX))
        .add_service(
            ClusterServer::new(service.clone()).max_decoding_message_size(REQUEST_BYTES_MAX),
        )
        .add_service(
            MaintenanceServer::new(service.clone()).max_decoding_message_size(REQUEST_BYTES_MAX),
        )
        .add_service(AuthServer::new(service.clone()).max_decoding_message_size(REQUEST_BYTES_MAX))
        .add_service(LockServer::new(service.clone()).max_decoding_message_size(REQUEST_BYTES_MAX))
        .add_service(ElectionServer::new(service).max_decoding_message_size(REQUEST_BYTES_MAX))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "the etcd endpoint stopped");
    }
}
