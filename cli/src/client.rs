//! The client commands: they talk to the local agent over its socket.
//!
//! `--socket PATH` or `CORRAL_SOCKET` names the socket. Answers are printed for people,
//! or as JSON with `--json` (`corral watch` prints one JSON event per line).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use corral_proto::api::{
    AgentRequest, EventFilter, MemberState, Query, QueryResult, SubscriptionItem,
};
use corral_proto::{AgentClient, Answer, KeyValue, Shard};
use serde_json::json;

use super::holding;
use super::output::{print_json, print_json_line};

#[derive(Debug, Args)]
pub(crate) struct Connect {
    /// The agent's socket.
    #[arg(long, env = "CORRAL_SOCKET", global = true)]
    socket: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KvAction {
    /// Print a key's value.
    Get {
        key: String,
        /// Linearizable: confirm with the core leader first.
        #[arg(long)]
        consistent: bool,
    },
    /// Set a key. With --ephemeral, the key lives as long as this command.
    Put {
        key: String,
        value: String,
        #[arg(long)]
        ephemeral: bool,
    },
    /// Delete a key, or every key under a prefix with --prefix.
    Del {
        key: String,
        #[arg(long)]
        prefix: bool,
    },
    /// Set a key only if its version is VERSION (0: only if absent).
    Cas {
        key: String,
        version: u64,
        value: String,
    },
    /// List the keys under a prefix.
    List {
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// List from the first key after this one (the last key of the previous page).
        #[arg(long)]
        start_after: Option<String>,
        #[arg(long)]
        consistent: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ShardAction {
    Create {
        name: String,
    },
    Get {
        name: String,
        #[arg(long)]
        consistent: bool,
    },
    List,
    /// Register ADDRESS as a replica of the shard; held until this command exits (Ctrl-C;
    /// across restarts of the agent; 10 s after the command is killed), or, with --detach, in a session of its own that lives until it is closed
    /// (`corral session close ID`, the replica's session) or the host dies.
    Join {
        name: String,
        address: String,
        #[arg(long, default_value_t = 0)]
        priority: u32,
        #[arg(long)]
        detach: bool,
    },
    /// Hand the master role to TO, or to the best other replica.
    Handover {
        name: String,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        epoch: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum LockAction {
    /// Acquire the lock, waiting up to --wait-ms; held until this command exits (across
    /// restarts of the agent; 10 s after the command is killed), or, with
    /// --detach, in a session of its own that lives until released (or the host dies),
    /// or in the held session --session names.
    Acquire {
        name: String,
        #[arg(long, default_value_t = 30_000)]
        wait_ms: u64,
        #[arg(long, conflicts_with = "session")]
        detach: bool,
        #[arg(long)]
        session: Option<u64>,
    },
    /// Release a lock held in session SESSION (printed by `acquire --detach`).
    Release {
        name: String,
        #[arg(long)]
        session: u64,
    },
    Status {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ServiceAction {
    /// Register an instance; held until this command exits (across restarts of the agent;
    /// 10 s after the command is killed), unless --detach.
    Register {
        service: String,
        id: String,
        address: String,
        port: u16,
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        #[arg(long)]
        detach: bool,
    },
    Resolve {
        service: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SessionAction {
    /// Open a session the agent holds for this Unix user beyond this command: with
    /// --ttl-ms it ends unless renewed in time; without, it lives until closed.
    Open {
        #[arg(long)]
        ttl_ms: Option<u64>,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Restart a session's time-to-live.
    Renew { session: u64 },
    /// End a session, releasing everything it holds.
    Close { session: u64 },
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

fn print_shard(shard: &Shard) {
    let master = shard.master.as_deref().unwrap_or("-");
    let slaves: Vec<&str> = shard.slaves().map(|r| r.address.as_str()).collect();
    println!(
        "{}  master {}  epoch {}  slaves {}",
        shard.name,
        master,
        shard.epoch,
        if slaves.is_empty() {
            "-".to_string()
        } else {
            slaves.join(",")
        }
    );
}

async fn run_async(args: Connect, command: ClientCommand) -> anyhow::Result<()> {
    let socket = args.socket.clone().unwrap_or_default();
    let client = connect(args.socket).await?;
    let json = args.json;
    let read = |query, consistent| {
        let client = client.clone();
        async move { client.read(query, consistent).await }
    };
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
        ClientCommand::Kv(action) => match action {
            KvAction::Get { key, consistent } => {
                let reply = read(Query::Key(key.clone()), consistent).await?;
                let QueryResult::Key(value) = reply.result else {
                    bail!("unexpected answer");
                };
                match (value, json) {
                    (Some(kv), true) => print_json(&kv_json(&kv))?,
                    (Some(kv), false) => println!("{}", text(&kv.value)),
                    (None, _) => bail!("{key}: not found (revision {})", reply.revision),
                }
            }
            KvAction::Put {
                key,
                value,
                ephemeral,
            } => {
                let request = AgentRequest::Put {
                    key: key.clone(),
                    value: value.into_bytes(),
                    ephemeral,
                };
                let (holding, revision, _) =
                    holding::send(&client, &socket, "kv put", request, ephemeral).await?;
                if json {
                    print_json(&json!({ "revision": revision }))?;
                } else {
                    println!("revision {revision}");
                }
                if let Some(held) = holding {
                    holding::hold(held, &format!("ephemeral key {key}")).await?;
                }
            }
            KvAction::Del { key, prefix } => {
                let (revision, answer) = client.write(AgentRequest::Delete { key, prefix }).await?;
                let count = match answer {
                    Answer::Deleted { count } => count,
                    _ => 0,
                };
                if json {
                    print_json(&json!({ "revision": revision, "deleted": count }))?;
                } else {
                    println!("deleted {count} (revision {revision})");
                }
            }
            KvAction::Cas {
                key,
                version,
                value,
            } => {
                let request = AgentRequest::CompareAndSet {
                    key,
                    version,
                    value: value.into_bytes(),
                    ephemeral: false,
                };
                let (revision, _) = client.write(request).await?;
                if json {
                    print_json(&json!({ "revision": revision }))?;
                } else {
                    println!("revision {revision}");
                }
            }
            KvAction::List {
                prefix,
                limit,
                start_after,
                consistent,
            } => {
                let query = Query::Page {
                    prefix,
                    start_after,
                    limit,
                };
                let reply = read(query, consistent).await?;
                let QueryResult::Keys { keys, more } = reply.result else {
                    bail!("unexpected answer");
                };
                if json {
                    let keys: Vec<_> = keys.iter().map(kv_json).collect();
                    print_json(&json!({ "revision": reply.revision, "keys": keys, "more": more }))?;
                } else {
                    for kv in &keys {
                        println!("{} = {}", kv.key, text(&kv.value));
                    }
                    if more {
                        println!("(more keys beyond {limit})");
                    }
                }
            }
        },
        ClientCommand::Shard(action) => match action {
            ShardAction::Create { name } => {
                let (revision, _) = client.write(AgentRequest::CreateShard { name }).await?;
                if json {
                    print_json(&json!({ "revision": revision }))?;
                } else {
                    println!("created (revision {revision})");
                }
            }
            ShardAction::Get { name, consistent } => {
                let reply = read(Query::Shard(name.clone()), consistent).await?;
                let QueryResult::Shard(shard) = reply.result else {
                    bail!("unexpected answer");
                };
                let Some(shard) = shard else {
                    bail!("shard {name} does not exist (revision {})", reply.revision);
                };
                if json {
                    print_json(
                        &json!({ "revision": reply.revision, "age_ms": reply.age_ms, "shard": shard }),
                    )?;
                } else {
                    print_shard(&shard);
                }
            }
            ShardAction::List => {
                let reply = read(Query::Shards, false).await?;
                let QueryResult::Shards(shards) = reply.result else {
                    bail!("unexpected answer");
                };
                if json {
                    print_json(&json!({ "revision": reply.revision, "shards": shards }))?;
                } else {
                    shards.iter().for_each(print_shard);
                }
            }
            ShardAction::Join {
                name,
                address,
                priority,
                detach,
            } => {
                let request = AgentRequest::JoinShard {
                    shard: name.clone(),
                    address: address.clone(),
                    priority,
                    detach,
                };
                let (holding, revision, answer) =
                    holding::send(&client, &socket, "shard join", request, !detach).await?;
                if json {
                    print_json(&json!({ "revision": revision, "answer": answer }))?;
                } else if let Answer::ReplicaRegistered { master, epoch } = &answer {
                    println!(
                        "{address} joined {name}; master {} epoch {epoch}",
                        master.as_deref().unwrap_or("-")
                    );
                }
                if let Some(held) = holding {
                    holding::hold(held, &format!("replica {address} of {name}")).await?;
                }
            }
            ShardAction::Handover { name, to, epoch } => {
                let request = AgentRequest::Handover {
                    shard: name,
                    to,
                    epoch,
                };
                let (revision, answer) = client.write(request).await?;
                if json {
                    print_json(&json!({ "revision": revision, "answer": answer }))?;
                } else if let Answer::HandedOver { master, epoch } = answer {
                    println!("master {master} epoch {epoch}");
                }
            }
        },
        ClientCommand::Lock(action) => match action {
            LockAction::Acquire {
                name,
                wait_ms,
                detach,
                session,
            } => {
                let request = AgentRequest::AcquireLock {
                    name: name.clone(),
                    wait_ms,
                    detach,
                };
                let (holding, revision, answer) = match session {
                    Some(session) => {
                        let (revision, answer) = client.write_in(session, request).await?;
                        (None, revision, answer)
                    }
                    None => {
                        holding::send(&client, &socket, "lock acquire", request, !detach).await?
                    }
                };
                let Answer::LockGranted(grant) = answer else {
                    bail!("lock {name} not granted: {answer:?}");
                };
                if json {
                    print_json(
                        &json!({ "revision": revision, "session": grant.session, "token": grant.token }),
                    )?;
                } else if detach || session.is_some() {
                    println!(
                        "granted {name} token {} in session {}; release it with \
                         `corral lock release {name} --session {}`",
                        grant.token, grant.session, grant.session
                    );
                } else {
                    println!("granted {name} token {}", grant.token);
                }
                if let Some(held) = holding {
                    holding::hold(held, &format!("lock {name}")).await?;
                }
            }
            LockAction::Release { name, session } => {
                let request = AgentRequest::ReleaseLock {
                    name,
                    detach: false,
                };
                let (revision, _) = client.write_in(session, request).await?;
                println!("released (revision {revision})");
            }
            LockAction::Status { name } => {
                let lock = client.lock(&name).await?;
                if json {
                    return print_json(&lock);
                }
                match lock.and_then(|l| l.holder.map(|h| (h, l.waiters.len()))) {
                    Some((holder, waiting)) => println!(
                        "{name} held by session {} token {}; {waiting} waiting",
                        holder.session, holder.token
                    ),
                    None => println!("{name} is free"),
                }
            }
        },
        ClientCommand::Service(action) => match action {
            ServiceAction::Register {
                service,
                id,
                address,
                port,
                tags,
                detach,
            } => {
                let request = AgentRequest::RegisterService {
                    service: service.clone(),
                    id: id.clone(),
                    address,
                    port,
                    tags,
                    detach,
                };
                let (holding, revision, _) =
                    holding::send(&client, &socket, "service register", request, !detach).await?;
                if json {
                    print_json(&json!({ "revision": revision }))?;
                } else {
                    println!("registered {service}/{id} (revision {revision})");
                }
                if let Some(held) = holding {
                    holding::hold(held, &format!("service instance {service}/{id}")).await?;
                }
            }
            ServiceAction::Resolve { service } => {
                let instances = client.service(&service).await?;
                if json {
                    return print_json(&instances);
                }
                for i in instances {
                    println!(
                        "{} {}:{} node {} tags {}",
                        i.id,
                        i.address,
                        i.port,
                        i.node,
                        i.tags.join(",")
                    );
                }
            }
        },
        ClientCommand::Session(action) => match action {
            SessionAction::Open { ttl_ms, label } => {
                let ttl = ttl_ms.map(std::time::Duration::from_millis);
                let session = client.open_session(ttl, &label).await?;
                if json {
                    print_json(&json!({ "id": session, "ttl_ms": ttl_ms }))?;
                } else {
                    println!("{session}");
                }
            }
            SessionAction::Renew { session } => {
                client.renew_session(session).await?;
                if json {
                    print_json(&json!({ "id": session }))?;
                }
            }
            SessionAction::Close { session } => {
                let revision = client.close_session(session).await?;
                if json {
                    print_json(&json!({ "id": session, "revision": revision }))?;
                } else {
                    println!("session {session} closed (revision {revision})");
                }
            }
        },
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
