//! The `corral` command line: argument parsing and dispatch to each command.

mod acl;
mod agent_leave;
mod agent_run;
mod bench;
mod ca;
mod client;
pub mod config_file;
mod core_member;
mod demo;
mod dev;
mod holding;
mod import;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "corral",
    version,
    about = "Corral: coordination for fleets of machines"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the cluster's certificate authority and issue node certificates.
    Ca(ca::CaArgs),
    /// Run a member of the voting core, or manage the core.
    Core(core_member::CoreArgs),
    /// Run this host's agent: gossip, local replica, socket API.
    Agent(agent_run::AgentArgs),
    /// Show the local agent's state.
    Status(client::Connect),
    /// List the gossip pool as the local agent sees it.
    Members(client::Connect),
    /// Keys: get, put, del, cas, list.
    Kv {
        #[command(subcommand)]
        action: client::KvAction,
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Shards: create, get, list, join, handover.
    Shard {
        #[command(subcommand)]
        action: client::ShardAction,
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Locks: acquire, release, status.
    Lock {
        #[command(subcommand)]
        action: client::LockAction,
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Services: register, resolve.
    Service {
        #[command(subcommand)]
        action: client::ServiceAction,
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Sessions held beyond one command: open, renew, close.
    Session {
        #[command(subcommand)]
        action: client::SessionAction,
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Stream events as JSON, one per line.
    Watch {
        #[command(flatten)]
        args: client::WatchArgs,
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Access rules, bearer tokens and the quota, under the admin certificate.
    Acl(acl::AclArgs),
    /// Copy keys from a running etcd into Corral, through the local agent.
    Import(import::ImportArgs),
    /// A whole Corral on loopback: three core members and N agents (--demo: play a
    /// failover).
    Dev(dev::DevArgs),
    /// Measure Corral: write and read throughput and latency.
    Bench(bench::BenchArgs),
}

/// Runs the parsed command; errors are printed and become a non-zero exit code.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Ca(args) => ca::run(args),
        Command::Core(args) => core_member::run(args),
        Command::Agent(args) => agent_run::run(args),
        Command::Status(connect) => client::run(connect, client::ClientCommand::Status),
        Command::Members(connect) => client::run(connect, client::ClientCommand::Members),
        Command::Kv { action, connect } => client::run(connect, client::ClientCommand::Kv(action)),
        Command::Shard { action, connect } => {
            client::run(connect, client::ClientCommand::Shard(action))
        }
        Command::Lock { action, connect } => {
            client::run(connect, client::ClientCommand::Lock(action))
        }
        Command::Service { action, connect } => {
            client::run(connect, client::ClientCommand::Service(action))
        }
        Command::Session { action, connect } => {
            client::run(connect, client::ClientCommand::Session(action))
        }
        Command::Watch { args, connect } => {
            client::run(connect, client::ClientCommand::Watch(args))
        }
        Command::Acl(args) => acl::run(args),
        Command::Import(args) => import::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Dev(args) => dev::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default: `default_level`).
pub(crate) fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// A multi-threaded runtime for the tools: one worker thread per core.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with_workers(None)
}

/// Most worker threads a role may be given with `--worker-threads`.
pub const WORKER_THREADS_MAX: usize = 256;

/// A runtime with `workers` worker threads (`None`: one per core).
pub(crate) fn runtime_with_workers(
    workers: Option<usize>,
) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        anyhow::ensure!(
            (1..=WORKER_THREADS_MAX).contains(&workers),
            "--worker-threads must be between 1 and {WORKER_THREADS_MAX}, not {workers}"
        );
        builder.worker_threads(workers);
    }
    Ok(builder.enable_all().build()?)
}

/// Resolves on SIGINT or SIGTERM.
/// Calls `reload` on every SIGHUP, for as long as the process runs: how operators make
/// a member or an agent read its TLS files again (a new revocation list).
pub(crate) fn reload_on_hangup(reload: impl Fn() + Send + 'static) {
    tokio::spawn(async move {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("SIGHUP cannot be caught here: TLS files are read at start only");
            return;
        };
        while hangup.recv().await.is_some() {
            reload();
        }
    });
}

pub(crate) async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
