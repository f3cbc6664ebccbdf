//! One agent: gossip, the replica feed, the node session, death reports and the socket,
//! wired together.
//!
//! ```text
//!              ┌────────────── agent ───────────────────────────────┐
//!  peers ◄────►│ gossip (foca/QUIC) ──view──► death reports ──┐     │
//!              │                                              ▼     │
//!  core  ◄────►│ feed ──► replica ◄── socket API ──writes──► CoreClient ──► core
//!              │            ▲             ▲                          │
//!              │            └─ node session (opened, renewed) ───────┘
//!  apps ◄─────►│ unix socket                                        │
//!              └────────────────────────────────────────────────────┘
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use corral_net::client::CoreClient;
use corral_net::rpc::ALPN_CORE;
use corral_net::transport::{QuicTransport, TlsIdentity};
use corral_proto::SessionId;
use corral_proto::idle_poll::IdlePoll;
use tokio::sync::watch;

use crate::api::core_writes::CoreWrites;
use crate::gossip::{self, GossipConfig, GossipHandle, GossipTransport, NodeIdentity};
use crate::metrics::AgentMetrics;
use crate::replica::SharedReplica;
use crate::sessions::held_sessions::HeldSessions;
use crate::sessions::{death_reports, node_session, session_expiry};

/// What the agent's tasks share.
#[derive(Debug)]
pub struct AgentContext {
    pub name: String,
    pub core: Arc<CoreClient>,
    /// Writes from app connections, batched on their way to the core.
    pub writes: CoreWrites,
    /// Linearizable reads on their way to the core's read index, coalesced.
    pub reads: crate::api::read_index::ReadIndex,
    pub replica: Arc<SharedReplica>,
    pub gossip: GossipHandle,
    pub node_session: watch::Receiver<Option<SessionId>>,
    pub shutdown: watch::Receiver<bool>,
    pub metrics: AgentMetrics,
    /// Keeps the worker polling a moment after an answer (see [`IdlePoll`]).
    pub idle_poll: Arc<IdlePoll>,
    /// Sessions held for apps beyond one connection (time-to-live, detached).
    pub held: parking_lot::Mutex<HeldSessions>,
    /// Where the agent keeps what survives a restart.
    pub data_dir: PathBuf,
    client_keys: AtomicU64,
    /// Set off by [`AgentRequest::Leave`](corral_proto::api::AgentRequest::Leave): whoever
    /// runs the agent then makes it [`Agent::leave`].
    pub leave_asked: tokio::sync::Notify,
    /// Set when the agent leaves for good rather than stopping for a restart.
    pub leaving: Arc<AtomicBool>,
    /// The replication positions this host's replicas reported, for the core's leader.
    pub positions: Arc<crate::positions::Positions>,
}

impl AgentContext {
    pub fn next_client_key(&self) -> u64 {
        self.client_keys.fetch_add(1, Ordering::Relaxed)
    }
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub gossip_listen: SocketAddr,
    /// The address other agents reach this one at (default: `gossip_listen`).
    pub advertise: SocketAddr,
    pub join: Vec<SocketAddr>,
    pub core: Vec<String>,
    pub socket: PathBuf,
    /// Address of the HTTP gateway and status page (None: no gateway).
    pub http: Option<SocketAddr>,
    /// Whom the gateway answers: Host names, Origins, bearer tokens.
    pub http_policy: crate::http::HttpPolicy,
    /// Address of the etcd v3 gRPC endpoint (None: not served). Beyond loopback it needs
    /// the HTTP gateway's tokens.
    pub etcd: Option<SocketAddr>,
    /// Address of the DNS server, UDP and TCP (None: not served); loopback unless
    /// `dns_public`.
    pub dns: Option<SocketAddr>,
    /// Serve DNS on an address beyond loopback: anyone who reaches it learns the masters,
    /// replicas, services and agents it names.
    pub dns_public: bool,
    /// TTL of DNS answers, in seconds.
    pub dns_ttl: u32,
    pub tls_dir: PathBuf,
    pub gossip: GossipConfig,
    /// Longest the worker polls for the next request before it sleeps (zero: never).
    pub idle_poll_max: Duration,
    /// Which agents feed which (top zero: the core feeds every agent).
    pub feed_tree: crate::replica::feed_tree::FeedTree,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Start(String),
}

/// Names reserved for core members and operators; agents cannot use them.
pub fn check_agent_name(name: &str) -> Result<(), AgentError> {
    corral_net::transport::certificate_authority::validate_node_name(name)
        .map_err(|e| AgentError::Config(e.to_string()))?;
    if name == "core" || name == "admin" || name.starts_with("core-") {
        return Err(AgentError::Config(format!(
            "agent name {name} is reserved for core members and operators"
        )));
    }
    Ok(())
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    pub context: Arc<AgentContext>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    tls_dir: PathBuf,
    core_transport: Arc<QuicTransport>,
    gossip_transport: Arc<GossipTransport>,
}

impl Agent {
    pub async fn start(config: AgentConfig) -> Result<Agent, AgentError> {
        check_agent_name(&config.name)?;
        config
            .gossip
            .validate()
            .map_err(|e| AgentError::Config(e.to_string()))?;
        if config.advertise.ip().is_unspecified() {
            return Err(AgentError::Config(
                "the gossip address others use cannot be unspecified; give --advertise".into(),
            ));
        }
        if config.core.is_empty() {
            return Err(AgentError::Config("no core member given (--core)".into()));
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            AgentError::Start(format!("data directory {}: {e}", config.data_dir.display()))
        })?;
        let tls = TlsIdentity::load(&config.tls_dir, &config.name)
            .map_err(|e| AgentError::Start(e.to_string()))?;
        let incarnation = node_session::next_incarnation(&config.data_dir)
            .map_err(|e| AgentError::Start(format!("incarnation: {e}")))?;
        let identity = NodeIdentity {
            name: config.name.clone(),
            address: config.advertise,
            incarnation,
        };
        let (gossip_transport, inbound) = GossipTransport::bind(&tls, config.gossip_listen)
            .map_err(|e| AgentError::Start(e.to_string()))?;
        let core_transport = QuicTransport::client(&tls, &[ALPN_CORE])
            .map_err(|e| AgentError::Start(e.to_string()))?;
        let core_transport = Arc::new(core_transport);
        let core = Arc::new(CoreClient::new(core_transport.clone(), config.core.clone()));
        let listener = crate::api::server::bind(&config.socket)
            .map_err(|e| AgentError::Start(e.to_string()))?;
        let http_listener = match config.http {
            Some(address) => Some({
                config
                    .http_policy
                    .check(address)
                    .map_err(|e| AgentError::Config(e.to_string()))?;
                crate::http::bind(address)
                    .await
                    .map_err(|e| AgentError::Start(format!("HTTP gateway on {address}: {e}")))?
            }),
            None => None,
        };

        let etcd_listener = match config.etcd {
            Some(address) => Some({
                config
                    .http_policy
                    .check(address)
                    .map_err(|e| AgentError::Config(format!("etcd endpoint: {e}")))?;
                crate::etcd::bind(address)
                    .await
                    .map_err(|e| AgentError::Start(format!("etcd endpoint on {address}: {e}")))?
            }),
            None => None,
        };
        let gossip = gossip::service::spawn(
            identity.clone(),
            &config.gossip,
            gossip_transport.clone(),
            inbound,
            gossip::known_peers::load(&config.data_dir, &config.join, config.advertise),
        );
        let dns_sockets = match config.dns {
            Some(address) => Some({
                crate::dns::check_address(address, config.dns_public)
                    .map_err(AgentError::Config)?;
                crate::dns::server::bind(address)
                    .await
                    .map_err(|e| AgentError::Start(format!("DNS on {address}: {e}")))?
            }),
            None => None,
        };
        let replica = Arc::new(SharedReplica::new());
        let saved = crate::replica::on_disk::load(&config.data_dir).map(|(machine, history)| {
            let revision = machine.revision();
            replica.install_saved(machine, history);
            tracing::info!(
                revision,
                "serving from the replica saved before the restart"
            );
            revision
        });
        let (shutdown, shutdown_receiver) = watch::channel(false);
        let leaving = Arc::new(AtomicBool::new(false));
        let mut held = HeldSessions::new(vec![0, nix::unistd::getuid().as_raw()]);
        let kept = session_expiry::restore(&config.data_dir, &mut held);
        if !kept.is_empty() {
            tracing::info!(
                sessions = kept.len(),
                "took over the sessions held for apps"
            );
        }
        let (session_sender, session_receiver) = watch::channel(None);
        let context = Arc::new(AgentContext {
            name: config.name.clone(),
            core: core.clone(),
            writes: CoreWrites::start(core.clone()),
            reads: crate::api::read_index::ReadIndex::new(core.clone()),
            replica: replica.clone(),
            gossip: gossip.clone(),
            node_session: session_receiver,
            shutdown: shutdown_receiver.clone(),
            metrics: AgentMetrics::default(),
            idle_poll: IdlePoll::new(config.idle_poll_max),
            held: parking_lot::Mutex::new(held),
            data_dir: config.data_dir.clone(),
            client_keys: AtomicU64::new(node_session::client_key_base(incarnation)),
            leave_asked: tokio::sync::Notify::new(),
            leaving: leaving.clone(),
            positions: Arc::default(),
        });
        let mut tasks = vec![
            tokio::spawn(context.idle_poll.clone().run(shutdown_receiver.clone())),
            tokio::spawn(crate::replica::feed::run(
                core.clone(),
                replica.clone(),
                gossip.identity.clone(),
                config
                    .feed_tree
                    .relays()
                    .then(|| crate::replica::feed::Relays {
                        name: config.name.clone(),
                        view: gossip.view.clone(),
                        transport: gossip_transport.clone(),
                        tree: config.feed_tree,
                        joins: config.join.iter().any(|seed| *seed != config.advertise),
                    }),
                shutdown_receiver.clone(),
            )),
            tokio::spawn(node_session::run(
                config.data_dir.clone(),
                core.clone(),
                replica.clone(),
                gossip.clone(),
                session_sender,
                shutdown_receiver.clone(),
                node_session::Restart {
                    leaving: leaving.clone(),
                    kept,
                },
            )),
            tokio::spawn(death_reports::run(
                config.name.clone(),
                core.clone(),
                replica.clone(),
                gossip.view.clone(),
                gossip.events.subscribe(),
                shutdown_receiver.clone(),
            )),
            tokio::spawn(crate::api::server::run(listener, context.clone())),
            tokio::spawn(crate::positions::run(
                config.name.clone(),
                context.positions.clone(),
                core.clone(),
                replica.clone(),
                shutdown_receiver.clone(),
            )),
            tokio::spawn(session_expiry::run(context.clone())),
            tokio::spawn(crate::replica::on_disk::run(
                config.data_dir.clone(),
                replica.clone(),
                shutdown_receiver.clone(),
            )),
            tokio::spawn(gossip::known_peers::run(
                config.data_dir.clone(),
                gossip.view.clone(),
                config.name.clone(),
                shutdown_receiver.clone(),
            )),
            tokio::spawn(crate::replica::publish::run(
                replica.clone(),
                corral_proto::shard_map::path_for_socket(&config.socket),
                shutdown_receiver.clone(),
            )),
        ];
        if let Some(connections) = gossip_transport.relay_connections() {
            // Served whatever this agent's own tree says: another agent may see the
            // membership differently, or run with relays where this one does not.
            tasks.push(tokio::spawn(crate::replica::relay::run(
                replica.clone(),
                connections,
                shutdown_receiver.clone(),
            )));
        }
        if let Some(saved) = saved {
            tasks.push(tokio::spawn(crate::replica::on_disk::check_against_core(
                core.clone(),
                replica.clone(),
                saved,
                config.data_dir.clone(),
            )));
        }
        if let Some(http_listener) = http_listener {
            tasks.push(tokio::spawn(crate::http::serve(
                http_listener,
                context.clone(),
                config.socket.clone(),
                config.http_policy.clone(),
            )));
        }
        if let Some(etcd_listener) = etcd_listener {
            tasks.push(tokio::spawn(crate::etcd::serve(
                etcd_listener,
                context.clone(),
                config.socket.clone(),
                crate::etcd::EtcdPolicy {
                    tokens: config.http_policy.tokens.clone(),
                },
            )));
        }
        if let Some(sockets) = dns_sockets {
            let handler = crate::dns::server::Handler::new(context.clone(), config.dns_ttl);
            tasks.push(tokio::spawn(crate::dns::server::serve(
                sockets,
                handler,
                context.shutdown.clone(),
            )));
        }
        tracing::info!(
            identity = %identity,
            socket = %config.socket.display(),
            http = ?config.http,
            etcd = ?config.etcd,
            dns = ?config.dns,
            "agent started"
        );
        Ok(Agent {
            context,
            shutdown,
            tasks,
            tls_dir: config.tls_dir.clone(),
            core_transport,
            gossip_transport,
        })
    }

    /// Reads the TLS files again (a renewed certificate, a new revocation list) for the
    /// connections made from now on, to the core and in gossip; answers how many
    /// certificates the revocation list names.
    pub fn reload_tls(&self) -> Result<usize, AgentError> {
        let tls = TlsIdentity::load(&self.tls_dir, &self.context.name)
            .map_err(|e| AgentError::Start(e.to_string()))?;
        self.core_transport
            .reload(&tls, &[ALPN_CORE], false)
            .map_err(|e| AgentError::Start(e.to_string()))?;
        self.gossip_transport
            .reload(&tls)
            .map_err(|e| AgentError::Start(e.to_string()))?;
        tracing::info!(revoked = tls.revoked.len(), "TLS files reloaded");
        Ok(tls.revoked.len())
    }

    /// Stops every task for a restart: the node session stays open, and the core holds it
    /// (with everything bound to it) for its node grace, for the agent that starts next on
    /// this host with the same name and data directory.
    pub async fn stop(self) {
        let name = self.context.name.clone();
        self.stop_tasks().await;
        tracing::info!(
            name,
            "agent stopped; its node session is held for a restart"
        );
    }

    /// Resolves when a privileged app asked the agent over its socket to leave for good.
    pub async fn leave_asked(&self) {
        self.context.leave_asked.notified().await
    }

    /// Leaves for good: closes the node session (releasing what it holds at once), leaves
    /// the gossip pool, and stops every task.
    pub async fn leave(self) {
        self.context.leaving.store(true, Ordering::Relaxed);
        let gossip = self.context.gossip.clone();
        let name = self.context.name.clone();
        self.stop_tasks().await;
        gossip.leave().await;
        tracing::info!(name, "agent left");
    }

    async fn stop_tasks(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_core_members_and_operators_are_reserved() {
        for name in ["core", "core-1", "admin"] {
            assert!(check_agent_name(name).is_err(), "{name} accepted");
        }
        assert!(check_agent_name("").is_err());
        assert!(check_agent_name("web-1").is_ok());
        assert!(check_agent_name("corefile").is_ok());
    }
}
