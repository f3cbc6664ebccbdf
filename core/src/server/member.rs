//! A running core member: openraft, its stores, and the QUIC server that answers peers,
//! agents and tools.
//!
//! ```text
//!  QUIC accept ─► connection ─► stream ─► one CoreRequest
//!     AppendEntries/Vote/InstallSnapshot ─► (certificate must be core-<sender>) ─► Raft
//!     Write ─► Raft::client_write ─► answer after apply
//!     ReadIndex/Get ─► ensure_linearizable ─► applied state
//!     Watch ─► watch_stream (history, then live entries)
//!     Status/Probe ─► metrics;  Add/RemoveVoter ─► (certificate must be admin) ─► membership
//! ```

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use corral_proto::frame::{self, FRAME_LEN_MAX};
use corral_proto::{Command, CommandResponse, Revision};
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{BasicNode, ServerState};
use quinn::{Connection, RecvStream, SendStream};

use super::actor::{self, PeerNames};
use super::bootstrap::{self, BootstrapDecision, ProbeAnswer, RejoinGuard};
use super::config::{ConfigError, CoreConfig};
use super::liveness::{HeardAnswers, Liveness};
use super::proposer::{LeaderHint, Proposer};
use super::quorum_watch::{QuorumWatch, quorum_lost};
use super::raft_network::Network;
use super::state_check::{self, Digest, Judgement};
use super::watch_stream;
use crate::applied_state::AppliedState;
use crate::raft_types::{NodeId, Raft};
use crate::rpc::{
    ALPN_CORE, CoreError, CoreRequest, CoreResponse, CoreStatus, MemberInfo, WRITE_BATCH_MAX,
};
use crate::storage::{LogStore, SnapshotFileError, StateStore};
use crate::transport::certificate_authority::{ADMIN_NAME, core_member_name};
use crate::transport::quic;
use crate::transport::tls::{peer_certificate, peer_has_name};
use crate::transport::{QuicTransport, TlsError, TlsIdentity, TransportError};

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
    transport: Arc<QuicTransport>,
    /// Not `Off` while a member with an empty data directory catches up with an existing
    /// cluster (see [`RejoinGuard`]).
    rejoin: parking_lot::Mutex<RejoinGuard>,
    connections: AtomicUsize,
    proposer: Proposer,
    quorum: QuorumWatch,
    /// The agents this member hears on their watch streams.
    pub(crate) liveness: parking_lot::Mutex<Liveness>,
    /// The members' recent answers that they hear a reported node (the leader's).
    heard_answers: parking_lot::Mutex<HeardAnswers>,
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
            &[ALPN_CORE],
        )?);
        let raft_config = Arc::new(
            config
                .raft_config()
                .validate()
                .map_err(|e| StartError::Raft(e.to_string()))?,
        );
        let network = Network {
            self_id: config.id,
            transport: transport.clone(),
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
            rejoin: parking_lot::Mutex::new(RejoinGuard::Off),
            connections: AtomicUsize::new(0),
            proposer,
            quorum,
            liveness: parking_lot::Mutex::new(Liveness::default()),
            heard_answers: parking_lot::Mutex::new(HeardAnswers::default()),
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
        self.transport.reload(&identity, &[ALPN_CORE], true)?;
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

    // ----- forming the cluster -------------------------------------------------------

    async fn form_cluster(self: Arc<Self>) {
        let others: Vec<(NodeId, String)> = self
            .config
            .peers
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, a)| (*id, a.clone()))
            .collect();
        loop {
            if self.raft.is_initialized().await.unwrap_or(true) {
                return;
            }
            let mut answers = Vec::new();
            for (id, address) in &others {
                let answer = self
                    .transport
                    .call::<_, CoreResponse>(
                        address,
                        &core_member_name(*id),
                        &CoreRequest::Probe,
                        PROBE_INTERVAL * 3,
                    )
                    .await;
                answers.push(match answer {
                    Ok(CoreResponse::Probe {
                        initialized: true,
                        last_log_index,
                        ..
                    }) => ProbeAnswer::Initialized { last_log_index },
                    Ok(CoreResponse::Probe {
                        initialized: false, ..
                    }) => ProbeAnswer::Fresh,
                    _ => ProbeAnswer::NoAnswer,
                });
            }
            match bootstrap::decide(
                self.config.is_initial_member(),
                self.config.peers.len(),
                &answers,
            ) {
                BootstrapDecision::Initialize => {
                    let members: std::collections::BTreeMap<NodeId, BasicNode> = self
                        .config
                        .peers
                        .iter()
                        .map(|(id, a)| (*id, BasicNode::new(a)))
                        .collect();
                    match self.raft.initialize(members).await {
                        Ok(()) => tracing::info!(id = self.id, "formed a new cluster"),
                        Err(e) => {
                            tracing::info!(id = self.id, error = %e, "cluster already formed")
                        }
                    }
                    return;
                }
                BootstrapDecision::JoinExisting { guarded: false } => {
                    tracing::info!(id = self.id, "joining the cluster as it forms");
                    return;
                }
                BootstrapDecision::JoinExisting { guarded: true } => {
                    tracing::warn!(
                        id = self.id,
                        "empty data directory but the cluster holds data: waiting for the leader to catch this \
                         member up, voting only for candidates that hold every committed entry until then"
                    );
                    *self.rejoin.lock() = RejoinGuard::Unknown;
                    self.clone().rejoin(others).await;
                    return;
                }
                BootstrapDecision::Retry => tokio::time::sleep(PROBE_INTERVAL).await,
            }
        }
    }

    /// Learns the leader's committed log id, then waits until this member applied that far.
    async fn rejoin(self: Arc<Self>, others: Vec<(NodeId, String)>) {
        loop {
            let mut leader = None;
            if matches!(*self.rejoin.lock(), RejoinGuard::Unknown) {
                for (id, address) in &others {
                    let answer = self
                        .transport
                        .call::<_, CoreResponse>(
                            address,
                            &core_member_name(*id),
                            &CoreRequest::Status,
                            PROBE_INTERVAL * 3,
                        )
                        .await;
                    if let Ok(CoreResponse::Status(status)) = answer
                        && status.state == "leader"
                    {
                        leader = status.committed.map(|c| (status.term, c));
                        break;
                    }
                }
            }
            let applied = self.raft.metrics().borrow().last_applied;
            let guard = {
                let mut guard = self.rejoin.lock();
                *guard = guard.advance(leader, applied);
                *guard
            };
            if guard == RejoinGuard::Off {
                tracing::info!(id = self.id, "caught up with the cluster; voting again");
                return;
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    // ----- serving -------------------------------------------------------------------

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.transport.endpoint().accept().await {
            if self.connections.load(Ordering::Relaxed) >= CONNECTIONS_MAX {
                incoming.refuse();
                continue;
            }
            let member = self.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(connection) => {
                        member.connections.fetch_add(1, Ordering::Relaxed);
                        member.clone().serve_connection(connection).await;
                        member.connections.fetch_sub(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::debug!(error = %e, "refused a connection"),
                }
            });
        }
    }

    async fn serve_connection(self: Arc<Self>, connection: Connection) {
        let peer = Arc::new(PeerNames::of(peer_certificate(&connection)));
        while let Ok((send, receive)) = connection.accept_bi().await {
            tokio::spawn(self.clone().serve_stream(
                connection.clone(),
                peer.clone(),
                send,
                receive,
            ));
        }
    }

    async fn serve_stream(
        self: Arc<Self>,
        connection: Connection,
        peer: Arc<PeerNames>,
        mut send: SendStream,
        mut receive: RecvStream,
    ) {
        let request = tokio::time::timeout(
            REQUEST_READ_TIMEOUT,
            frame::read_frame::<_, CoreRequest>(&mut receive, FRAME_LEN_MAX),
        )
        .await;
        let request = match request {
            Ok(Ok(Some(request))) => request,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::debug!(peer = %connection.remote_address(), error = %e, "bad request frame");
                let _ = frame::write_frame(
                    &mut send,
                    &CoreResponse::Error(CoreError::BadRequest(e.to_string())),
                )
                .await;
                let _ = send.finish();
                return;
            }
            Err(_) => return,
        };
        if peer
            .serial
            .as_ref()
            .is_some_and(|serial| self.revoked.read().contains(serial))
        {
            let refused =
                CoreResponse::Error(CoreError::Forbidden("this certificate is revoked".into()));
            let _ = frame::write_frame(&mut send, &refused).await;
            let _ = send.finish();
            connection.close(0u32.into(), b"certificate revoked");
            return;
        }
        if let CoreRequest::Watch { after } = request {
            // The watcher's beats follow on this stream: it has no end to take.
            watch_stream::serve(&self, &connection, after, send, receive).await;
            return;
        }
        let response = self.handle(&connection, &peer, request).await;
        if frame::write_frame(&mut send, &response).await.is_ok() {
            let _ = send.finish();
        }
        quic::take_end(receive);
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

    /// The log index this member applied, its revision there, and the checksum and length
    /// of its whole state.
    fn state_digest(&self) -> (Option<u64>, Revision, u32, usize) {
        let (applied, revision, bytes) = self.applied.read(|a| {
            (
                a.last_applied.map(|l| l.index),
                a.machine.revision(),
                a.machine.to_snapshot_bytes(),
            )
        });
        (applied, revision, crc32fast::hash(&bytes), bytes.len())
    }

    /// Every `state_check_secs`, while this member leads, compares the members' states
    /// ([`state_check`]) and keeps the finding for status; a difference is logged as an
    /// error each time it is found. Ends when the member is gone.
    async fn check_states(member: std::sync::Weak<Self>) {
        let Some(interval) = member
            .upgrade()
            .map(|m| Duration::from_secs(m.config.state_check_secs))
        else {
            return;
        };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(member) = member.upgrade() else {
                return;
            };
            if member.raft.metrics().borrow().current_leader != Some(member.id) {
                continue;
            }
            match member.check_states_once().await {
                Judgement::NotAtRest => {
                    tracing::debug!("state check: the core is not at rest; nothing compared")
                }
                Judgement::Compared {
                    revision,
                    differing,
                } => {
                    if differing.is_empty() {
                        tracing::debug!(revision, "state check: every member holds the same state");
                    } else {
                        tracing::error!(
                            revision,
                            ?differing,
                            "state check: these members hold another state than the majority at the same \
                             revision; stop each, remove its data directory and start it again to let it \
                             catch up from the others"
                        );
                    }
                    *member.state_checked.lock() = Some((revision, differing));
                }
            }
        }
    }

    /// One comparison: asks the other members for the log index they applied, for digests
    /// only when every one that answers is at this member's, and for the index again to be
    /// sure the digests were taken there.
    async fn check_states_once(&self) -> Judgement {
        let others = self.other_members();
        let index = self.applied.read(|a| a.last_applied.map(|l| l.index));
        let at_index = |answers: &[(NodeId, Option<CoreResponse>)]| -> Option<Vec<NodeId>> {
            let mut members = Vec::new();
            for (member, answer) in answers {
                if let Some(CoreResponse::Status(status)) = answer {
                    if status.last_applied != index {
                        return None;
                    }
                    members.push(*member);
                }
            }
            Some(members)
        };
        let Some(before) = at_index(&self.ask_all(&others, &CoreRequest::Status).await) else {
            return Judgement::NotAtRest;
        };
        let (own_index, own_revision, own_checksum, _) = self.state_digest();
        let mut digests = vec![Digest {
            member: self.id,
            applied: own_index,
            revision: own_revision,
            checksum: own_checksum,
        }];
        let answers = self.ask_all(&others, &CoreRequest::StateDigest).await;
        let Some(after) = at_index(&self.ask_all(&others, &CoreRequest::Status).await) else {
            return Judgement::NotAtRest;
        };
        for (member, answer) in answers {
            if let Some(CoreResponse::StateDigest {
                revision, digest, ..
            }) = answer
                && before.contains(&member)
                && after.contains(&member)
            {
                digests.push(Digest {
                    member,
                    applied: index,
                    revision,
                    checksum: digest,
                });
            }
        }
        state_check::judge(&digests)
    }

    /// Sends `request` to each of `members` at once; None for those that did not answer
    /// within [`state_check::STATE_CHECK_ASK_TIMEOUT`].
    async fn ask_all(
        &self,
        members: &[(NodeId, String)],
        request: &CoreRequest,
    ) -> Vec<(NodeId, Option<CoreResponse>)> {
        futures::future::join_all(members.iter().map(|(id, address)| async move {
            let answer = self
                .transport
                .call::<_, CoreResponse>(
                    address,
                    &core_member_name(*id),
                    request,
                    state_check::STATE_CHECK_ASK_TIMEOUT,
                )
                .await;
            (*id, answer.ok())
        }))
        .await
    }

    /// True when the connection's certificate is that of core member `claimed`.
    fn is_member_connection(&self, connection: &Connection, claimed: Option<NodeId>) -> bool {
        claimed.is_some_and(|id| peer_has_name(connection, &core_member_name(id)))
    }

    async fn handle(
        &self,
        connection: &Connection,
        peer: &PeerNames,
        request: CoreRequest,
    ) -> CoreResponse {
        let forbidden = |what: &str| CoreResponse::Error(CoreError::Forbidden(what.to_string()));
        match request {
            CoreRequest::AppendEntries(rpc) => {
                if !self.is_member_connection(connection, rpc.vote.leader_id().voted_for()) {
                    return forbidden(
                        "Raft messages are accepted only from the core member they claim to come from",
                    );
                }
                CoreResponse::AppendEntries(self.raft.append_entries(rpc).await)
            }
            CoreRequest::Vote(rpc) => {
                if !self.is_member_connection(connection, rpc.vote.leader_id().voted_for()) {
                    return forbidden(
                        "Raft messages are accepted only from the core member they claim to come from",
                    );
                }
                if !self
                    .rejoin
                    .lock()
                    .allows_vote(rpc.vote.leader_id().term, rpc.last_log_id)
                {
                    return CoreResponse::Error(CoreError::Unavailable(
                        "this member is catching up after losing its data and votes only for a \
                         candidate holding every committed entry"
                            .into(),
                    ));
                }
                CoreResponse::Vote(self.raft.vote(rpc).await)
            }
            CoreRequest::InstallSnapshot(rpc) => {
                if !self.is_member_connection(connection, rpc.vote.leader_id().voted_for()) {
                    return forbidden(
                        "Raft messages are accepted only from the core member they claim to come from",
                    );
                }
                CoreResponse::InstallSnapshot(self.raft.install_snapshot(rpc).await)
            }
            CoreRequest::Write(command) => match actor::attribute(peer, command) {
                Err(refused) => forbidden(&refused),
                Ok(command) => self.write(command).await,
            },
            CoreRequest::WriteBatch(commands) => {
                match commands
                    .into_iter()
                    .map(|command| actor::attribute(peer, command))
                    .collect::<Result<Vec<_>, _>>()
                {
                    Err(refused) => forbidden(&refused),
                    Ok(commands) => self.write_batch(commands).await,
                }
            }
            CoreRequest::Access => {
                if !peer_has_name(connection, ADMIN_NAME) {
                    return forbidden("the access rules are read under the admin certificate");
                }
                CoreResponse::Access(self.applied.read(|a| a.machine.access().clone()))
            }
            CoreRequest::Heard { name, incarnation } => CoreResponse::Heard(
                self.liveness
                    .lock()
                    .heard(&name, incarnation, Instant::now()),
            ),
            CoreRequest::ReadIndex => match self.read_index().await {
                Ok(revision) => CoreResponse::ReadIndex { revision },
                Err(e) => CoreResponse::Error(e),
            },
            CoreRequest::Get { key, consistent } => {
                if consistent && let Err(e) = self.read_index().await {
                    return CoreResponse::Error(e);
                }
                let (revision, value) = self
                    .applied
                    .read(|a| (a.machine.revision(), a.machine.get(&key)));
                CoreResponse::Get { revision, value }
            }
            CoreRequest::Watch { .. } => {
                CoreResponse::Error(CoreError::BadRequest("a watch needs its own stream".into()))
            }
            CoreRequest::Status => CoreResponse::Status(self.status().await),
            CoreRequest::StateDigest => {
                // It serializes the whole state under the read lock: members and
                // operators only, so that no agent can stall the applies with it.
                if !peer_has_name(connection, ADMIN_NAME)
                    && !self
                        .other_members()
                        .iter()
                        .any(|(id, _)| peer_has_name(connection, &core_member_name(*id)))
                {
                    return forbidden("a state digest needs a member's or the admin certificate");
                }
                let (_, revision, digest, len) = self.state_digest();
                CoreResponse::StateDigest {
                    revision,
                    digest,
                    len,
                }
            }
            CoreRequest::GetLocal { key } => {
                let (revision, value) = self
                    .applied
                    .read(|a| (a.machine.revision(), a.machine.get(&key)));
                CoreResponse::Get { revision, value }
            }
            CoreRequest::Probe => CoreResponse::Probe {
                id: self.id,
                initialized: self.raft.is_initialized().await.unwrap_or(false),
                last_log_index: self.raft.metrics().borrow().last_log_index,
            },
            CoreRequest::AddVoter { id, address } => {
                if !peer_has_name(connection, ADMIN_NAME) {
                    return forbidden("changing the membership needs the admin certificate");
                }
                self.add_voter(id, address).await
            }
            CoreRequest::RemoveVoter { id } => {
                if !peer_has_name(connection, ADMIN_NAME) {
                    return forbidden("changing the membership needs the admin certificate");
                }
                self.remove_voter(id).await
            }
        }
    }

    fn leader_hint(&self) -> Option<(NodeId, String)> {
        leader_hint_of(self.raft.clone())()
    }

    async fn write(&self, command: Command) -> CoreResponse {
        if let Err(invalid) = command.validate() {
            return CoreResponse::Error(CoreError::Invalid(invalid));
        }
        actor::log_override(&command);
        if let Some(silent) = self.quorum.lost_for() {
            return CoreResponse::Error(quorum_lost(silent));
        }
        if let Command::CloseNode { name, incarnation } = command.unwrapped()
            && let Some(member) = self.who_hears(name, *incarnation).await
        {
            tracing::info!(
                node = name,
                incarnation,
                member,
                "death report refused: the core hears the node"
            );
            return CoreResponse::Error(CoreError::NodeAlive {
                name: name.clone(),
                member,
            });
        }
        match self.proposer.propose(command).await {
            Ok(response) => CoreResponse::Write(response),
            Err(e) => CoreResponse::Error(e),
        }
    }

    /// The member that heard node `name` at `incarnation` or newer lately, asking every
    /// member at once: only the leader asks, before it proposes a death report. A member
    /// that does not answer within [`HEARD_ASK_TIMEOUT`] counts as not hearing it: what it
    /// cannot answer cannot keep a dead node's session open.
    async fn who_hears(&self, name: &str, incarnation: u64) -> Option<NodeId> {
        if self.raft.metrics().borrow().current_leader != Some(self.id) {
            return None;
        }
        let now = Instant::now();
        if self.liveness.lock().heard(name, incarnation, now) {
            return Some(self.id);
        }
        if let Some(member) = self.heard_answers.lock().get(name, incarnation, now) {
            return Some(member);
        }
        let request = CoreRequest::Heard {
            name: name.to_string(),
            incarnation,
        };
        let mut asks = self
            .other_members()
            .into_iter()
            .map(|(id, address)| {
                let request = &request;
                Box::pin(async move {
                    match self
                        .transport
                        .call::<_, CoreResponse>(
                            &address,
                            &core_member_name(id),
                            request,
                            HEARD_ASK_TIMEOUT,
                        )
                        .await
                    {
                        Ok(CoreResponse::Heard(true)) => Some(id),
                        _ => None,
                    }
                })
            })
            .collect::<Vec<_>>();
        // The first member that heard it settles it; the others need not be awaited.
        while !asks.is_empty() {
            let (answer, _, rest) = futures::future::select_all(asks).await;
            if let Some(member) = answer {
                self.heard_answers
                    .lock()
                    .keep(name, incarnation, member, now);
                return answer;
            }
            asks = rest;
        }
        None
    }

    /// Proposes every command of a batch; the proposer puts those that arrive together in
    /// one log entry. A member that refuses them all alike for want of leadership or of a
    /// quorum answers with that one error, so that the client follows it as for one write.
    async fn write_batch(&self, commands: Vec<Command>) -> CoreResponse {
        if commands.len() > WRITE_BATCH_MAX {
            return CoreResponse::Error(CoreError::BadRequest(format!(
                "a write batch holds at most {WRITE_BATCH_MAX} commands, not {}",
                commands.len()
            )));
        }
        let results: Vec<Result<CommandResponse, CoreError>> =
            futures::future::join_all(commands.into_iter().map(|command| async move {
                match self.write(command).await {
                    CoreResponse::Write(response) => Ok(response),
                    CoreResponse::Error(e) => Err(e),
                    other => Err(CoreError::Unavailable(format!(
                        "unexpected answer to a write: {other:?}"
                    ))),
                }
            }))
            .await;
        let refused_alike = match results.first() {
            Some(Err(first @ (CoreError::NotLeader { .. } | CoreError::Unavailable(_)))) => results
                .iter()
                .all(|r| r.as_ref().err() == Some(first))
                .then(|| first.clone()),
            _ => None,
        };
        match refused_alike {
            Some(error) => CoreResponse::Error(error),
            None => CoreResponse::WriteBatch(results),
        }
    }

    async fn read_index(&self) -> Result<Revision, CoreError> {
        match tokio::time::timeout(READ_INDEX_TIMEOUT, self.raft.ensure_linearizable()).await {
            Err(_) => Err(CoreError::Unavailable(format!(
                "leadership not confirmed within {READ_INDEX_TIMEOUT:?}"
            ))),
            Ok(Ok(_)) => Ok(self.applied.revision()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)))) => {
                let leader = forward
                    .leader_id
                    .zip(forward.leader_node.map(|n| n.addr))
                    .or_else(|| self.leader_hint());
                Err(CoreError::NotLeader { leader })
            }
            Ok(Err(e)) => Err(CoreError::Unavailable(e.to_string())),
        }
    }

    pub async fn status(&self) -> CoreStatus {
        let committed = self
            .raft
            .with_raft_state(|st| st.committed)
            .await
            .ok()
            .flatten();
        let metrics = self.raft.metrics();
        let m = metrics.borrow().clone();
        let membership = m.membership_config.membership();
        let voter_ids: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut voters = Vec::new();
        let mut learners = Vec::new();
        for (id, node) in membership.nodes() {
            let info = MemberInfo {
                id: *id,
                address: node.addr.clone(),
            };
            if voter_ids.contains(id) {
                voters.push(info)
            } else {
                learners.push(info)
            }
        }
        let (revision, counts, quota) = self.applied.read(|a| {
            (
                a.machine.revision(),
                a.machine.counts(),
                a.machine.quota_use(),
            )
        });
        let checked = if m.state == ServerState::Leader {
            self.state_checked.lock().clone()
        } else {
            None
        };
        CoreStatus {
            id: self.id,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            committed,
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            revision,
            watch_history_floor: self.applied.history_floor(),
            state: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .to_string(),
            voters,
            learners,
            counts,
            quota,
            state_checked: checked.as_ref().map(|(revision, _)| *revision),
            state_differs: checked.map(|(_, differing)| differing).unwrap_or_default(),
        }
    }

    async fn add_voter(&self, id: NodeId, address: String) -> CoreResponse {
        if let Err(e) = self
            .raft
            .add_learner(id, BasicNode::new(&address), true)
            .await
        {
            return self.membership_error(
                e.to_string(),
                e.forward_to_leader()
                    .map(|f| (f.leader_id, f.leader_node.clone())),
            );
        }
        let voters: BTreeSet<NodeId> = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            m.membership_config
                .membership()
                .voter_ids()
                .chain([id])
                .collect()
        };
        match self.raft.change_membership(voters, false).await {
            Ok(_) => CoreResponse::MembershipChanged(self.status().await),
            Err(e) => self.membership_error(
                e.to_string(),
                e.forward_to_leader()
                    .map(|f| (f.leader_id, f.leader_node.clone())),
            ),
        }
    }

    async fn remove_voter(&self, id: NodeId) -> CoreResponse {
        let voters: BTreeSet<NodeId> = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            m.membership_config
                .membership()
                .voter_ids()
                .filter(|v| *v != id)
                .collect()
        };
        if voters.is_empty() {
            return CoreResponse::Error(CoreError::Membership(
                "cannot remove the last voter".into(),
            ));
        }
        match self.raft.change_membership(voters, false).await {
            Ok(_) => CoreResponse::MembershipChanged(self.status().await),
            Err(e) => self.membership_error(
                e.to_string(),
                e.forward_to_leader()
                    .map(|f| (f.leader_id, f.leader_node.clone())),
            ),
        }
    }

    fn membership_error(
        &self,
        message: String,
        forward: Option<(Option<NodeId>, Option<BasicNode>)>,
    ) -> CoreResponse {
        match forward {
            Some((leader_id, leader_node)) => {
                let leader = leader_id
                    .zip(leader_node.map(|n| n.addr))
                    .or_else(|| self.leader_hint());
                CoreResponse::Error(CoreError::NotLeader { leader })
            }
            None => CoreResponse::Error(CoreError::Membership(message)),
        }
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
