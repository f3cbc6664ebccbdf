//! `corral agent`: run this host's agent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use corral_agent::agent::{Agent, AgentConfig};
use corral_agent::gossip::{GossipConfig, config};
use corral_agent::http::HttpPolicy;
use corral_agent::replica::feed_tree;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct AgentArgs {
    #[command(subcommand)]
    action: Option<AgentAction>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum AgentAction {
    /// Make the running agent leave for good, for a host that goes away: the core closes
    /// its node session (releasing the host's shards, services, locks and app sessions at
    /// once, without waiting out the node grace), and the agent leaves the gossip pool and
    /// exits. Root or the agent's own user only.
    Leave {
        /// The agent's socket.
        #[arg(long, env = "CORRAL_SOCKET")]
        socket: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// A TOML file with any of these flags by their long names; the command line and
    /// CORRAL_* variables take precedence over it.
    #[arg(long, env = "CORRAL_CONFIG")]
    config: Option<PathBuf>,
    /// This host's name in the pool; its certificate is NAME.pem.
    #[arg(long, env = "CORRAL_NAME", required = true)]
    name: Option<String>,
    /// Where the agent keeps its incarnation number.
    #[arg(long, env = "CORRAL_DATA_DIR", required = true)]
    data_dir: Option<PathBuf>,
    /// Address to gossip on (UDP, QUIC).
    #[arg(long, env = "CORRAL_GOSSIP", required = true)]
    gossip: Option<SocketAddr>,
    /// Address other agents reach this one at, when it differs from --gossip.
    #[arg(long, env = "CORRAL_ADVERTISE")]
    advertise: Option<SocketAddr>,
    /// Agents to join through: HOST:PORT[,HOST:PORT..]. Empty for the first agent.
    #[arg(long, env = "CORRAL_JOIN", value_delimiter = ',')]
    join: Vec<String>,
    /// Core member addresses: HOST:PORT[,HOST:PORT..].
    #[arg(long, env = "CORRAL_CORE", value_delimiter = ',', required = true)]
    core: Vec<String>,
    /// The Unix socket apps connect to.
    #[arg(long, env = "CORRAL_SOCKET", required = true)]
    socket: Option<PathBuf>,
    /// Address of the HTTP/JSON gateway and status page, e.g. 127.0.0.1:8500 (none by
    /// default). An address beyond loopback needs --http-token-file.
    #[arg(long, env = "CORRAL_HTTP")]
    http: Option<SocketAddr>,
    /// Host names the gateway answers to besides localhost and loopback addresses
    /// (repeat or separate with commas); any other Host header gets 403.
    #[arg(long, env = "CORRAL_HTTP_ALLOW_HOST", value_delimiter = ',')]
    http_allow_host: Vec<String>,
    /// Origins (scheme://host:port) of web pages allowed to call the gateway besides its
    /// own status page; a request with any other Origin gets 403.
    #[arg(long, env = "CORRAL_HTTP_ALLOW_ORIGIN", value_delimiter = ',')]
    http_allow_origin: Vec<String>,
    /// A file of bearer tokens, one per line (at least 16 characters each): every HTTP
    /// request must then carry `Authorization: Bearer TOKEN`.
    #[arg(long, env = "CORRAL_HTTP_TOKEN_FILE")]
    http_token_file: Option<PathBuf>,
    /// Address of the etcd v3 gRPC endpoint, e.g. 127.0.0.1:2379 (none by default): etcd
    /// clients and etcdctl talk to this agent. Beyond loopback it needs --http-token-file.
    #[arg(long, env = "CORRAL_ETCD")]
    etcd: Option<SocketAddr>,
    /// Address of the DNS server, UDP and TCP, e.g. 127.0.0.1:8600 (none by default):
    /// master.M3.shard.corral., M3.shard.corral., NAME.service.corral.,
    /// TAG.NAME.service.corral., HOST.node.corral., answered from the local replica.
    #[arg(long, env = "CORRAL_DNS")]
    dns: Option<SocketAddr>,
    /// Serve DNS on an address beyond loopback: anyone who reaches it learns what it names.
    #[arg(long, env = "CORRAL_DNS_PUBLIC")]
    dns_public: bool,
    /// TTL of DNS answers, in seconds (0: never cached, so a failover is seen at once).
    #[arg(long, env = "CORRAL_DNS_TTL", default_value_t = corral_agent::dns::DEFAULT_TTL)]
    dns_ttl: u32,
    /// Directory with ca.pem and this agent's NAME.pem and NAME-key.pem.
    #[arg(long, env = "CORRAL_TLS_DIR", required = true)]
    tls_dir: Option<PathBuf>,
    /// On SIGTERM or Ctrl-C, leave for good: close this host's node session, releasing its
    /// shards, services, locks and app sessions at once, and leave the gossip pool. Without
    /// it the core holds the session for its node grace, so that the agent started again
    /// with the same name and data directory keeps everything.
    #[arg(long, env = "CORRAL_LEAVE")]
    leave: bool,
    /// Gossip probe period, in milliseconds.
    #[arg(long, env = "CORRAL_PROBE_PERIOD_MS", default_value_t = config::PROBE_PERIOD_MS)]
    probe_period_ms: u64,
    /// Time a probe waits for its ack before asking others, in milliseconds.
    #[arg(long, env = "CORRAL_PROBE_RTT_MS", default_value_t = config::PROBE_RTT_MS)]
    probe_rtt_ms: u64,
    /// Time a suspected member has to refute before it is declared dead, in ms.
    #[arg(long, env = "CORRAL_SUSPECT_TO_DOWN_MS", default_value_t = config::SUSPECT_TO_DOWN_MS)]
    suspect_to_down_ms: u64,
    /// How often a member announces itself to one it holds dead, in ms: what heals a
    /// gossip partition.
    #[arg(long, env = "CORRAL_ANNOUNCE_TO_DOWN_MS", default_value_t = config::ANNOUNCE_TO_DOWN_MS)]
    announce_to_down_ms: u64,
    /// The largest pool expected; sets how many times each update is gossiped.
    #[arg(long, env = "CORRAL_EXPECTED_MEMBERS", default_value_t = 10_000)]
    expected_members: u32,
    /// Threads that run the agent's work. An agent shares its host with the applications
    /// it serves; one thread keeps it off their cores and spares it waking a second
    /// thread for every message, and it answers local reads inline. Where the apps'
    /// socket lookups keep more than one core busy, two threads serve more of them: on
    /// two cores, about 1.3× the lookups at 16 and 128 connections, and about 12% fewer
    /// writes at 16.
    #[arg(long, env = "CORRAL_WORKER_THREADS", default_value_t = AGENT_WORKER_THREADS)]
    worker_threads: usize,
    /// Longest the agent keeps polling its sockets after an answer before it sleeps, in
    /// µs; the window adapts to how soon requests follow answers. 0: never poll.
    #[arg(long, env = "CORRAL_IDLE_POLL_US", default_value_t = AGENT_IDLE_POLL_US,
          value_parser = clap::value_parser!(u64).range(0..=IDLE_POLL_US_MAX))]
    idle_poll_us: u64,
    /// Agents the core feeds directly; the others are fed by agents, in a tree
    /// (`--feed-fanout` each). 0: the core feeds every agent.
    #[arg(long, env = "CORRAL_FEED_TOP", default_value_t = feed_tree::TOP_DEFAULT,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1_000))]
    feed_top: usize,
    /// Agents each agent feeds, on average, in the feed tree.
    #[arg(long, env = "CORRAL_FEED_FANOUT", default_value_t = feed_tree::FANOUT_DEFAULT,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=64))]
    feed_fanout: usize,
}

/// The agent's default longest polling window, in µs.
pub(crate) const AGENT_IDLE_POLL_US: u64 = 50;

/// The longest polling window `--idle-poll-us` accepts: beyond it polling costs more
/// than any wake-up it saves.
pub(crate) const IDLE_POLL_US_MAX: u64 = 1_000;

/// The agent's default number of worker threads.
pub(crate) const AGENT_WORKER_THREADS: usize = 1;

fn resolve(address: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    address
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {address}"))?
        .next()
        .with_context(|| format!("{address} resolves to nothing"))
}

/// Raises the soft limit on open files to the hard one: the agent's connection caps
/// (socket and HTTP) are sized for more than the usual soft limit of 1,024.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open files limit"),
            Err(error) => tracing::warn!(%error, soft, "could not raise the open files limit"),
        },
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "could not read the open files limit"),
    }
}

pub(crate) fn run(args: AgentArgs) -> anyhow::Result<()> {
    match args.action {
        None => run_agent(args.run),
        Some(AgentAction::Leave { socket, json }) => {
            super::init_logging("warn");
            super::runtime()?.block_on(super::agent_leave::leave(socket, json))
        }
    }
}

fn run_agent(args: RunArgs) -> anyhow::Result<()> {
    super::init_logging("info");
    raise_open_files_limit();
    let gossip = GossipConfig {
        probe_period: Duration::from_millis(args.probe_period_ms),
        probe_rtt: Duration::from_millis(args.probe_rtt_ms),
        suspect_to_down: Duration::from_millis(args.suspect_to_down_ms),
        announce_to_down_period: Duration::from_millis(args.announce_to_down_ms),
        expected_members: args.expected_members,
        ..GossipConfig::default()
    };
    let join = args
        .join
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| resolve(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tokens = match &args.http_token_file {
        Some(path) => HttpPolicy::read_tokens(path)?,
        None => Vec::new(),
    };
    let http_policy = HttpPolicy {
        allowed_hosts: args.http_allow_host,
        allowed_origins: args.http_allow_origin,
        tokens,
    };
    let leave = args.leave;
    let missing = |name| anyhow::anyhow!("--{name} is required");
    let gossip_listen = args.gossip.ok_or_else(|| missing("gossip"))?;
    let config = AgentConfig {
        name: args.name.ok_or_else(|| missing("name"))?,
        data_dir: args.data_dir.ok_or_else(|| missing("data-dir"))?,
        gossip_listen,
        advertise: args.advertise.unwrap_or(gossip_listen),
        join,
        core: args.core,
        socket: args.socket.ok_or_else(|| missing("socket"))?,
        http: args.http,
        http_policy,
        etcd: args.etcd,
        dns: args.dns,
        dns_public: args.dns_public,
        dns_ttl: args.dns_ttl,
        tls_dir: args.tls_dir.ok_or_else(|| missing("tls-dir"))?,
        gossip,
        idle_poll_max: Duration::from_micros(args.idle_poll_us),
        feed_tree: feed_tree::FeedTree {
            top: args.feed_top,
            fanout: args.feed_fanout,
        },
    };
    super::runtime_with_workers(Some(args.worker_threads))?.block_on(async move {
        let agent = Arc::new(Agent::start(config).await?);
        let reloading = Arc::downgrade(&agent);
        super::reload_on_hangup(move || {
            if let Some(agent) = reloading.upgrade()
                && let Err(error) = agent.reload_tls()
            {
                tracing::error!(%error, "reloading the TLS files failed; the old ones stay in use");
            }
        });
        let leave = tokio::select! {
            _ = super::shutdown_signal() => leave,
            _ = agent.leave_asked() => true,
        };
        let agent =
            Arc::try_unwrap(agent).map_err(|_| anyhow::anyhow!("the agent is still shared"))?;
        if leave {
            tracing::info!("leaving for good");
            agent.leave().await;
        } else {
            agent.stop().await;
        }
        Ok(())
    })
}
