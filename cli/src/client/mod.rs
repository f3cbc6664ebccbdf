//! The client commands: they talk to the local agent over its socket.
//!
//! `--socket PATH` or `CORRAL_SOCKET` names the socket. Answers are printed for people,
//! or as JSON with `--json` (`corral watch` prints one JSON event per line).
//!
//! ```text
//!  mod.rs      status, members, watch; the connection every command shares
//!  kv.rs       corral kv       get put del cas list txn
//!  shard.rs    corral shard    create get list join handover ...
//!  lock.rs     corral lock     acquire release status
//!  service.rs  corral service  register resolve list
//!  session.rs  corral session  open renew close
//! ```

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;
use corral_proto::api::{EventFilter, MemberState, Query, SubscriptionItem};
use corral_proto::{AgentClient, KeyValue};
use serde_json::json;

use super::output::{print_json, print_json_line};

mod group;
mod kv;
mod lock;
mod service;
mod session;
mod shard;

pub(crate) use kv::KvAction;
pub(crate) use lock::LockAction;
pub(crate) use service::ServiceAction;
pub(crate) use session::SessionAction;
pub(crate) use shard::ShardAction;

#[derive(Debug, Args)]
pub(crate) struct Connect {
    /// The agent's socket.
    #[arg(long, env = "CORRAL_SOCKET", global = true)]
    socket: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// Only key events under this prefix (default: every event).
    #[arg(long)]
    prefix: Option<String>,
    /// First revision to stream, inclusive (default: only what happens from now on). A
    /// revision older than the agent's history starts with a `Reset` holding the state.
    #[arg(long)]
    from: Option<u64>,
}

#[derive(Debug)]
pub(crate) enum ClientCommand {
    Status,
    Members,
    Kv(KvAction),
    Shard(ShardAction),
    Lock(LockAction),
    Service(ServiceAction),
    Session(SessionAction),
    Watch(WatchArgs),
}

async fn connect(socket: Option<PathBuf>) -> anyhow::Result<AgentClient> {
    let path = socket.context("no agent socket: give --socket PATH or set CORRAL_SOCKET")?;
    AgentClient::connect(&path).await.map_err(Into::into)
}

pub(crate) fn run(connect_args: Connect, command: ClientCommand) -> anyhow::Result<()> {
    super::runtime()?.block_on(run_async(connect_args, command))
}

fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}

fn kv_json(kv: &KeyValue) -> serde_json::Value {
    json!({
        "key": kv.key, "value": text(&kv.value), "create_revision": kv.create_revision,
        "modify_revision": kv.modify_revision, "version": kv.version, "session": kv.session,
    })
}

/// What every client command works with: the agent's socket and how to print.
pub(super) struct Context {
    socket: PathBuf,
    client: AgentClient,
    json: bool,
}

impl Context {
    async fn read(
        &self,
        query: Query,
        consistent: bool,
    ) -> Result<corral_proto::api::ReadReply, corral_proto::ClientError> {
        self.client.read(query, consistent).await
    }
}

async fn run_async(args: Connect, command: ClientCommand) -> anyhow::Result<()> {
    let cx = Context {
        socket: args.socket.clone().unwrap_or_default(),
        client: connect(args.socket).await?,
        json: args.json,
    };
    let (client, json) = (&cx.client, cx.json);
    match command {
        ClientCommand::Status => {
            let status = client.status().await?;
            if json {
                return print_json(&status);
            }
            println!(
                "agent {} (incarnation {}) gossip {}",
                status.name, status.incarnation, status.gossip_address
            );
            println!(
                "node session {}   replica revision {}   age {}   feed {}",
                status.node_session.map_or("-".into(), |s| s.to_string()),
                status.revision,
                status.age_ms.map_or("never".into(), |a| format!("{a} ms")),
                status.feed.as_deref().unwrap_or("-"),
            );
            println!(
                "members alive {} suspect {} down {}   keys {}   shards {}",
                status.members_alive,
                status.members_suspect,
                status.members_down,
                status.keys,
                status.shards
            );
        }
        ClientCommand::Members => {
            let members = client.members().await?;
            if json {
                return print_json(&members);
            }
            for m in members {
                let state = match m.state {
                    MemberState::Alive => "alive",
                    MemberState::Suspect => "suspect",
                    MemberState::Down => "down",
                };
                println!(
                    "{:<20} {:<22} {:<8} incarnation {} session {}",
                    m.name,
                    m.address,
                    state,
                    m.incarnation,
                    m.session.map_or("-".into(), |s| s.to_string())
                );
            }
        }
        ClientCommand::Kv(action) => kv::run(&cx, action).await?,
        ClientCommand::Shard(action) => shard::run(&cx, action).await?,
        ClientCommand::Lock(action) => lock::run(&cx, action).await?,
        ClientCommand::Service(action) => service::run(&cx, action).await?,
        ClientCommand::Session(action) => session::run(&cx, action).await?,
        ClientCommand::Watch(args) => {
            let filter = match args.prefix {
                Some(prefix) => EventFilter::keys(prefix),
                None => EventFilter::everything(),
            };
            let mut subscription = client
                .subscribe(filter, args.from.map(|from| from.saturating_sub(1)))
                .await?;
            loop {
                let item = tokio::select! {
                    item = subscription.next() => item,
                    () = super::shutdown_signal() => break,
                };
                let Some(item) = item else { break };
                print_json_line(&item)?;
                if let SubscriptionItem::Ended { reason } = item {
                    bail!("watch ended: {reason}");
                }
            }
        }
    }
    Ok(())
}
