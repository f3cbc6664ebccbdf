//! A running core member: openraft, its stores, and the QUIC server that answers peers,
//! agents and tools.
//!
//! ```text
//!  QUIC accept ─► connection ─► ALPN
//!     corral-raft/1 ─► RaftRequest ─► (certificate must be core-<sender>) ─► Raft
//!     corral-core/2 ─► CoreRequest ─► rules (who may ask what) ─►
//!         Write ─► proposer ─► Raft::client_write ─► answer after apply      writes
//!         ReadIndex/Get ─► ensure_linearizable ─► applied state              writes
//!         Watch ─► watch_stream (history, then live entries)
//!         Status ─► metrics;  Add/RemoveVoter ─► membership change           membership
//!  first start ─► probe the peers ─► form or join the cluster                formation
//!  leader, every state_check_secs ─► compare the members' states             state_checks
//! ```
//!
//! This file holds the member itself: starting, stopping, reloading its certificates.

mod formation;
mod membership;
mod rules;
mod serving;
mod state_checks;
mod writes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use corral_net::rpc::ALPN_CORE;
use corral_net::transport::certificate_authority::core_member_name;
use corral_net::transport::{QuicTransport, TlsError, TlsIdentity, TransportError};
use corral_proto::Revision;

use super::bootstrap::RejoinGuard;
use super::config::{ConfigError, CoreConfig};
use super::liveness::{HeardAnswers, Liveness};
use super::positions::Positions;
use super::proposer::{LeaderHint, Proposer};
use super::quorum_watch::QuorumWatch;
use super::raft_network::Network;
use crate::applied_state::AppliedState;
use crate::raft_rpc::ALPN_RAFT;
use crate::raft_types::{NodeId, Raft};
use crate::storage::{LogStore, SnapshotFileError, StateStore};

/// Longest a write may wait for its commit before the member answers "outcome unknown".
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a linearizable read may wait for the leader to confirm its leadership.
pub const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a peer may take to send its request frame.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Most QUIC connections served at once; more are refused.
pub const CONNECTIONS_MAX: usize = 16_384;
/// How long the leader waits for a member's answer on whether it hears a reported node.
const HEARD_ASK_TIMEOUT: Duration = Duration::from_millis(150);
/// Interval between probes while forming the cluster.
const PROBE_INTERVAL: Duration = Duration::from_millis(300);
/// How long a probe of another member may take: past QUIC's first retransmission of a
/// handshake (about 1 s), so that a member that started a moment after the probe was sent
/// still answers it.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How often the member looks whether Raft stopped on a fatal error.
const FATAL_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Why a member could not start. Nothing was changed on disk beyond creating the data
/// directory.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("log store: {0}")]
    LogStore(String),
    #[error(transparent)]
    Snapshot(#[from] SnapshotFileError),
    #[error("raft: {0}")]
    Raft(String),
}

/// A member that stopped on its own: storage failed, so it refuses to go on serving.
#[derive(Debug, thiserror::Error)]
#[error("the member stopped: {0}")]
pub struct FatalError(pub String);

pub struct CoreMember {
    pub(crate) id: NodeId,
    config: CoreConfig,
    pub(crate) raft: Raft,
    pub(crate) applied: Arc<AppliedState>,
    /// Serves both protocols; dials other members for the core's own requests.
    transport: Arc<QuicTransport>,
    /// Dials other members for Raft, from the same endpoint.
    raft_transport: Arc<QuicTransport>,
    /// Not `Off` while a member with an empty data directory catches up with an existing
    /// cluster (see [`RejoinGuard`]).
    rejoin: parking_lot::Mutex<RejoinGuard>,
    /// The other members that probed this one since it started, with empty logs of their
    /// own ([`crate::server::bootstrap::decide`]).
    fresh_probers: parking_lot::Mutex<std::collections::BTreeSet<NodeId>>,
    connections: AtomicUsize,
    proposer: Proposer,
    quorum: QuorumWatch,
    /// The agents this member hears on their watch streams.
    pub(crate) liveness: parking_lot::Mutex<Liveness>,
    /// The members' recent answers that they hear a reported node (the leader's).
    heard_answers: parking_lot::Mutex<HeardAnswers>,
    /// The replication positions agents reported (kept while leader, attached to the
    /// commands that take masters away).
    positions: parking_lot::Mutex<Positions>,
    watch_streams: AtomicU64,
    /// The leader's last check that compared the members' states: the revision, and who
    /// differed.
    state_checked: parking_lot::Mutex<Option<(Revision, Vec<NodeId>)>>,
    /// Serial numbers of revoked certificates: requests on connections made before the
    /// revocation are refused too.
    revoked: parking_lot::RwLock<Arc<std::collections::HashSet<Vec<u8>>>>,
}

impl std::fmt::Debug for CoreMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreMember")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl CoreMember {
    /// Opens the stores, starts Raft and the server, and (on first start) forms or joins the
    /// cluster in the background.
    pub async fn start(config: CoreConfig) -> Result<Arc<Self>, StartError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| StartError::DataDir {
            path: config.data_dir.display().to_string(),
            source: e,
        })?;
        let identity = TlsIdentity::load(&config.tls_dir, &core_member_name(config.id))?;
        let log_store = LogStore::open_in_data_dir(&config.data_dir)
            .map_err(|e| StartError::LogStore(e.to_string()))?;
        let (state_store, applied) = StateStore::open(&config.data_dir)?;
        let transport = Arc::new(QuicTransport::server(
            &identity,
            config.listen,
            &[ALPN_CORE, ALPN_RAFT],
        )?);
        transport.reload_client(&identity, &[ALPN_CORE])?;
        let raft_transport = Arc::new(transport.sharing_endpoint(&identity, &[ALPN_RAFT])?);
        let raft_config = Arc::new(
            config
                .raft_config()
                .validate()
                .map_err(|e| StartError::Raft(e.to_string()))?,
        );
        let network = Network {
            self_id: config.id,
            transport: raft_transport.clone(),
        };
        let raft = Raft::new(config.id, raft_config, network, log_store, state_store)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let quorum = QuorumWatch::start(
            raft.clone(),
            Duration::from_millis(config.election_timeout_max_ms),
        );
        let proposer = Proposer::start(
            raft.clone(),
            WRITE_TIMEOUT,
            leader_hint_of(raft.clone()),
            quorum.clone(),
        );
        let member = Arc::new(Self {
            id: config.id,
            config,
            raft,
            applied,
            transport,
            raft_transport,
            rejoin: parking_lot::Mutex::new(RejoinGuard::Off),
            fresh_probers: parking_lot::Mutex::new(Default::default()),
            connections: AtomicUsize::new(0),
            proposer,
            quorum,
            liveness: parking_lot::Mutex::new(Liveness::default()),
            heard_answers: parking_lot::Mutex::new(HeardAnswers::default()),
            positions: parking_lot::Mutex::new(Positions::default()),
            watch_streams: AtomicU64::new(0),
            state_checked: parking_lot::Mutex::new(None),
            revoked: parking_lot::RwLock::new(identity.revoked.clone()),
        });
        tokio::spawn(member.clone().accept_loop());
        tokio::spawn(Self::check_states(Arc::downgrade(&member)));
        let initialized = member
            .raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if !initialized {
            tokio::spawn(member.clone().form_cluster());
        }
        tracing::info!(id = member.id, listen = %member.local_addr(), initialized, "core member started");
        Ok(member)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.transport
            .endpoint()
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// Reads the TLS files again (a renewed certificate, a new revocation list): new
    /// connections use them, and requests under a revoked certificate are refused from
    /// now on, on connections old and new.
    pub fn reload_tls(&self) -> Result<usize, StartError> {
        let identity = TlsIdentity::load(&self.config.tls_dir, &core_member_name(self.id))?;
        self.transport
            .reload_server(&identity, &[ALPN_CORE, ALPN_RAFT])?;
        self.transport.reload_client(&identity, &[ALPN_CORE])?;
        self.raft_transport.reload_client(&identity, &[ALPN_RAFT])?;
        let revoked = identity.revoked.len();
        *self.revoked.write() = identity.revoked.clone();
        tracing::info!(id = self.id, revoked, "TLS files reloaded");
        Ok(revoked)
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn applied(&self) -> &Arc<AppliedState> {
        &self.applied
    }

    /// Waits until the member stops on its own (a fatal storage error) or `shutdown`
    /// completes, then stops Raft and closes every connection.
    pub async fn run_until(
        self: &Arc<Self>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), FatalError> {
        // Raft's metrics change on every append, commit and apply; waking on each change
        // would cost a thread switch per write, so the running state is polled instead.
        let metrics = self.raft.metrics();
        let fatal = async {
            let mut poll = tokio::time::interval(FATAL_POLL_INTERVAL);
            loop {
                poll.tick().await;
                if let Err(fatal) = &metrics.borrow().running_state {
                    return fatal.to_string();
                }
                if metrics.has_changed().is_err() {
                    return "raft stopped".to_string();
                }
            }
        };
        let result = tokio::select! {
            reason = fatal => Err(FatalError(reason)),
            () = shutdown => Ok(()),
        };
        if let Err(e) = &result {
            tracing::error!(id = self.id, error = %e.0, "core member stops on a fatal error");
        }
        let _ = self.raft.shutdown().await;
        self.transport
            .endpoint()
            .close(0u32.into(), b"member stopping");
        result
    }

    /// A number for a new watch stream, unique in this member's life.
    pub(crate) fn next_watch_stream(&self) -> u64 {
        self.watch_streams.fetch_add(1, Ordering::Relaxed)
    }

    /// The other members of the current membership, voters and learners: id and address.
    fn other_members(&self) -> Vec<(NodeId, String)> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect()
    }

    fn leader_hint(&self) -> Option<(NodeId, String)> {
        leader_hint_of(self.raft.clone())()
    }
}

/// The leader this member knows of, with its address.
fn leader_hint_of(raft: Raft) -> LeaderHint {
    Arc::new(move || {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader?;
        let address = m
            .membership_config
            .membership()
            .get_node(&leader)?
            .addr
            .clone();
        Some((leader, address))
    })
}
