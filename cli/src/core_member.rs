//! `corral core`: run a core member; `corral core status|add-voter|remove-voter`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use corral_core::server::config::{
    ELECTION_TIMEOUT_MAX_MS_DEFAULT, ELECTION_TIMEOUT_MIN_MS_DEFAULT, HEARTBEAT_MS_DEFAULT,
    NODE_GRACE_MS_DEFAULT, SNAPSHOT_CATCHUP_ENTRIES_DEFAULT, SNAPSHOT_EVERY_DEFAULT,
};
use corral_core::server::state_check::STATE_CHECK_SECS_DEFAULT;
use corral_core::server::{CoreConfig, CoreMember, parse_peers};
use corral_net::client::CoreClient;
use corral_net::rpc::{ALPN_CORE, CoreStatus};
use corral_net::transport::certificate_authority::ADMIN_NAME;
use corral_net::transport::{QuicTransport, TlsIdentity};
use serde_json::json;

use super::output::print_json;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct CoreArgs {
    #[command(subcommand)]
    action: Option<CoreAction>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// A TOML file with any of these flags by their long names; the command line and
    /// CORRAL_* variables take precedence over it.
    #[arg(long, env = "CORRAL_CONFIG")]
    config: Option<PathBuf>,
    /// This member's id (its certificate is core-<id>).
    #[arg(long, env = "CORRAL_ID", required = true)]
    id: Option<u64>,
    /// Where the Raft log, vote and snapshots are kept.
    #[arg(long, env = "CORRAL_DATA_DIR", required = true)]
    data_dir: Option<PathBuf>,
    /// Address to listen on for peers, agents and tools (IP:PORT).
    #[arg(long, env = "CORRAL_LISTEN", required = true)]
    listen: Option<String>,
    /// The initial members: 1=HOST:PORT,2=HOST:PORT,3=HOST:PORT.
    #[arg(long, env = "CORRAL_PEERS", required = true)]
    peers: Option<String>,
    /// Directory with ca.pem and this member's core-<id>.pem and core-<id>-key.pem.
    #[arg(long, env = "CORRAL_TLS_DIR", required = true)]
    tls_dir: Option<PathBuf>,
    /// Log entries between snapshots; the log before a snapshot is then compacted.
    #[arg(long, env = "CORRAL_SNAPSHOT_EVERY", default_value_t = SNAPSHOT_EVERY_DEFAULT)]
    snapshot_every: u64,
    /// Log entries kept behind a snapshot for lagging members to catch up from.
    #[arg(long, env = "CORRAL_SNAPSHOT_CATCHUP_ENTRIES", default_value_t = SNAPSHOT_CATCHUP_ENTRIES_DEFAULT)]
    snapshot_catchup_entries: u64,
    /// Leader heartbeat interval, in milliseconds.
    #[arg(long, env = "CORRAL_HEARTBEAT_MS", default_value_t = HEARTBEAT_MS_DEFAULT)]
    heartbeat_ms: u64,
    /// Shortest election timeout, in milliseconds.
    #[arg(long, env = "CORRAL_ELECTION_TIMEOUT_MIN_MS", default_value_t = ELECTION_TIMEOUT_MIN_MS_DEFAULT)]
    election_timeout_min_ms: u64,
    /// Longest election timeout, in milliseconds.
    #[arg(long, env = "CORRAL_ELECTION_TIMEOUT_MAX_MS", default_value_t = ELECTION_TIMEOUT_MAX_MS_DEFAULT)]
    election_timeout_max_ms: u64,
    /// Seconds between the leader's checks that every member holds the same state (made
    /// only while every member has applied the leader's last log entry).
    #[arg(long, env = "CORRAL_STATE_CHECK_SECS", default_value_t = STATE_CHECK_SECS_DEFAULT)]
    state_check_secs: u64,
    /// How long the core holds the session of a node it no longer hears, from its last
    /// beat, in milliseconds: an agent restarted within it (upgraded, killed and started
    /// again) keeps its shards, services and locks; a host silent for longer is released.
    /// 0 releases a host as soon as gossip reports it dead.
    #[arg(long, env = "CORRAL_NODE_GRACE_MS", default_value_t = NODE_GRACE_MS_DEFAULT)]
    node_grace_ms: u64,
    /// Threads that run the member's work (default: one per two cores, at least one).
    #[arg(long, env = "CORRAL_WORKER_THREADS")]
    worker_threads: Option<usize>,
}

/// How a tool reaches the core.
#[derive(Debug, Args)]
pub(crate) struct CoreAccess {
    /// Core member addresses: HOST:PORT[,HOST:PORT..].
    #[arg(long, env = "CORRAL_CORE", value_delimiter = ',', required = true)]
    pub(crate) core: Vec<String>,
    /// Directory with ca.pem and the tool's certificate.
    #[arg(long, env = "CORRAL_TLS_DIR")]
    pub(crate) tls_dir: PathBuf,
    /// Name of the certificate to present.
    #[arg(long, env = "CORRAL_TLS_NAME", default_value = ADMIN_NAME)]
    pub(crate) tls_name: String,
}

impl CoreAccess {
    pub(crate) fn client(&self) -> anyhow::Result<CoreClient> {
        let identity = TlsIdentity::load(&self.tls_dir, &self.tls_name)?;
        let transport = Arc::new(QuicTransport::client(&identity, &[ALPN_CORE])?);
        Ok(CoreClient::new(transport, self.core.clone()))
    }
}

#[derive(Debug, Subcommand)]
enum CoreAction {
    /// Show one member's view of the cluster.
    Status {
        #[command(flatten)]
        access: CoreAccess,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a voting member while the core serves (it must be running already).
    AddVoter {
        #[command(flatten)]
        access: CoreAccess,
        #[arg(long)]
        id: u64,
        /// The new member's address, HOST:PORT, as the others will reach it.
        #[arg(long)]
        address: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a voting member while the core serves.
    RemoveVoter {
        #[command(flatten)]
        access: CoreAccess,
        #[arg(long)]
        id: u64,
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(args: CoreArgs) -> anyhow::Result<()> {
    match args.action {
        None => run_member(args.run),
        Some(action) => {
            super::init_logging("warn");
            super::runtime()?.block_on(manage(action))
        }
    }
}

fn run_member(args: RunArgs) -> anyhow::Result<()> {
    super::init_logging("info");
    let missing = |name| anyhow::anyhow!("--{name} is required");
    let listen_text = args.listen.ok_or_else(|| missing("listen"))?;
    let listen = listen_text
        .parse()
        .with_context(|| format!("invalid --listen {listen_text:?}: expected IP:PORT"))?;
    let config = CoreConfig {
        id: args.id.ok_or_else(|| missing("id"))?,
        data_dir: args.data_dir.ok_or_else(|| missing("data-dir"))?,
        listen,
        peers: parse_peers(&args.peers.ok_or_else(|| missing("peers"))?)?,
        tls_dir: args.tls_dir.ok_or_else(|| missing("tls-dir"))?,
        snapshot_every: args.snapshot_every,
        snapshot_catchup_entries: args.snapshot_catchup_entries,
        heartbeat_ms: args.heartbeat_ms,
        election_timeout_min_ms: args.election_timeout_min_ms,
        election_timeout_max_ms: args.election_timeout_max_ms,
        state_check_secs: args.state_check_secs,
        node_grace_ms: args.node_grace_ms,
    };
    let workers = args.worker_threads.unwrap_or_else(core_worker_threads);
    super::runtime_with_workers(Some(workers))?.block_on(async move {
        let member = CoreMember::start(config).await?;
        let reloading = Arc::downgrade(&member);
        super::reload_on_hangup(move || {
            if let Some(member) = reloading.upgrade()
                && let Err(error) = member.reload_tls()
            {
                tracing::error!(%error, "reloading the TLS files failed; the old ones stay in use");
            }
        });
        member.run_until(super::shutdown_signal()).await?;
        Ok(())
    })
}

/// A member's default worker threads: one per two cores. About half of a loaded member's
/// CPU is the kernel's (UDP, fdatasync, wake-ups) and its log writer thread's, and the Raft
/// pipeline itself is serial, so workers on every core only steal from each other: on two
/// cores one worker wrote 5–20% faster than two.
fn core_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| (cores.get() / 2).max(1))
}

async fn manage(action: CoreAction) -> anyhow::Result<()> {
    match action {
        CoreAction::Status { access, json } => {
            let client = access.client()?;
            let address = access.core.first().context("--core names no member")?;
            let status = client.status(address).await?;
            print_status(&status, json)
        }
        CoreAction::AddVoter {
            access,
            id,
            address,
            json,
        } => {
            let status = access.client()?.add_voter(id, address).await?;
            print_status(&status, json)
        }
        CoreAction::RemoveVoter { access, id, json } => {
            let status = access.client()?.remove_voter(id).await?;
            print_status(&status, json)
        }
    }
}

fn print_status(status: &CoreStatus, json: bool) -> anyhow::Result<()> {
    if json {
        let members: Vec<_> = status
            .voters
            .iter()
            .map(|m| json!({"id": m.id, "address": m.address, "role": "voter"}))
            .chain(
                status
                    .learners
                    .iter()
                    .map(|m| json!({"id": m.id, "address": m.address, "role": "learner"})),
            )
            .collect();
        return print_json(&json!({
            "id": status.id,
            "state": status.state,
            "leader": status.leader,
            "term": status.term,
            "last_log_index": status.last_log_index,
            "last_applied": status.last_applied,
            "snapshot_index": status.snapshot_index,
            "purged_index": status.purged_index,
            "committed": status.committed.map(|c| c.index),
            "revision": status.revision,
            "watch_history_floor": status.watch_history_floor,
            "members": members,
            "counts": status.counts,
            "state_checked": status.state_checked,
            "state_differs": status.state_differs,
            "quota": status.quota,
            "quota_alarm": status.quota.alarm(),
        }));
    }
    let show = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    println!(
        "member {} ({}), term {}, leader {}",
        status.id,
        status.state,
        status.term,
        show(status.leader)
    );
    println!(
        "revision {}   last applied {}   last log {}   snapshot {}",
        status.revision,
        show(status.last_applied),
        show(status.last_log_index),
        show(status.snapshot_index)
    );
    let voters: Vec<_> = status
        .voters
        .iter()
        .map(|m| format!("{}={}", m.id, m.address))
        .collect();
    println!("voters   {}", voters.join(" "));
    if !status.learners.is_empty() {
        let learners: Vec<_> = status
            .learners
            .iter()
            .map(|m| format!("{}={}", m.id, m.address))
            .collect();
        println!("learners {}", learners.join(" "));
    }
    let c = status.counts;
    println!(
        "keys {}   sessions {}   shards {}   locks {}   service instances {}",
        c.keys, c.sessions, c.shards, c.locks, c.service_instances
    );
    let q = status.quota;
    println!(
        "quota    keys {} of {}   bytes {} of {}{}",
        q.keys,
        q.keys_max,
        q.bytes,
        q.bytes_max,
        if q.alarm() {
            "   ALARM: past 90%, writes that grow the state will soon be refused"
        } else {
            ""
        }
    );
    if let Some(revision) = status.state_checked {
        if status.state_differs.is_empty() {
            println!("state check: every member held the same state at revision {revision}");
        } else {
            let differing: Vec<_> = status.state_differs.iter().map(u64::to_string).collect();
            println!(
                "state check: members {} held another state than the majority at revision {revision}",
                differing.join(", ")
            );
        }
    }
    Ok(())
}
