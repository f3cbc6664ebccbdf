//! `corral shard`: shards, their replicas and masters.

use anyhow::bail;
use clap::Subcommand;
use corral_proto::api::{AgentRequest, Query, QueryResult};
use corral_proto::{Answer, Shard};
use serde_json::json;

use super::Context;
use crate::holding;
use crate::output::print_json;

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
        /// Higher is preferred as master after the replication position; 0 makes a
        /// standby that never becomes master.
        #[arg(long, default_value_t = 1)]
        priority: u32,
        #[arg(long)]
        detach: bool,
    },
    /// Remove ADDRESS from the shard's replicas (a new master is chosen if it was the
    /// master), acting in the session that holds it: a replica joined with --detach, or
    /// by any session of this user on this host (others' are refused).
    Leave {
        name: String,
        address: String,
    },
    /// Set the priority of replica ADDRESS (0: a standby, never master; a master set to 0
    /// hands the role to the best other replica), acting in the session that holds it.
    Priority {
        name: String,
        address: String,
        priority: u32,
    },
    /// Report how far replica ADDRESS has replicated (an offset, a sequence number: higher
    /// is further): when its master must be replaced, the core promotes the replica with
    /// the highest. Kept by the agent, which sends it to the core's leader; nothing is
    /// written. Acting in the session that holds the replica.
    Position {
        name: String,
        address: String,
        position: u64,
    },
    /// Shard groups: hash slots split among shards.
    Group {
        #[command(subcommand)]
        action: super::group::GroupAction,
    },
    /// Begin moving SLOTS (FIRST-LAST, or one slot) of GROUP to shard TO: they stay with
    /// their owners, marked as moving, until `--commit` gives them all to TO at once (or
    /// `--cancel` leaves them).
    Move {
        group: String,
        slots: Option<String>,
        to: Option<String>,
        #[arg(long, conflicts_with = "cancel")]
        commit: bool,
        #[arg(long)]
        cancel: bool,
    },
    /// Where KEY goes in GROUP: its slot, the shard that owns it, the master, the group's
    /// version.
    Route {
        group: String,
        key: String,
        #[arg(long)]
        consistent: bool,
    },
    /// Delete the shard (refused while it has replicas).
    Delete {
        name: String,
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

/// Shard `name` as the agent answers it, with the revision and age of that answer; an
/// error if it does not exist.
async fn read_shard(
    cx: &Context,
    name: &str,
    consistent: bool,
) -> anyhow::Result<(Shard, u64, Option<u64>)> {
    let reply = cx.read(Query::Shard(name.to_string()), consistent).await?;
    let QueryResult::Shard(shard) = reply.result else {
        bail!("unexpected answer");
    };
    let Some(shard) = shard else {
        bail!("shard {name} does not exist (revision {})", reply.revision);
    };
    Ok((shard, reply.revision, reply.age_ms))
}

/// The session that holds replica `address` of shard `name`, which a request about the
/// replica acts in.
async fn replica_session(cx: &Context, name: &str, address: &str) -> anyhow::Result<u64> {
    let (shard, _, _) = read_shard(cx, name, false).await?;
    match shard.replicas.iter().find(|r| r.address == address) {
        Some(replica) => Ok(replica.session),
        None => bail!("{address} is not a replica of {name}"),
    }
}

pub(super) async fn run(cx: &Context, action: ShardAction) -> anyhow::Result<()> {
    match action {
        ShardAction::Create { name } => {
            let (revision, _) = cx.client.write(AgentRequest::CreateShard { name }).await?;
            if cx.json {
                print_json(&json!({ "revision": revision }))?;
            } else {
                println!("created (revision {revision})");
            }
        }
        ShardAction::Get { name, consistent } => {
            let (shard, revision, age_ms) = read_shard(cx, &name, consistent).await?;
            if cx.json {
                print_json(&json!({ "revision": revision, "age_ms": age_ms, "shard": shard }))?;
            } else {
                print_shard(&shard);
            }
        }
        ShardAction::Leave { name, address } => {
            let session = replica_session(cx, &name, &address).await?;
            let request = AgentRequest::LeaveShard {
                shard: name.clone(),
                address: address.clone(),
            };
            let (revision, answer) = cx.client.write_in(session, request).await?;
            if cx.json {
                print_json(&json!({ "revision": revision, "answer": answer }))?;
            } else {
                println!("{address} left {name} (revision {revision})");
            }
        }
        ShardAction::Priority {
            name,
            address,
            priority,
        } => {
            let session = replica_session(cx, &name, &address).await?;
            let request = AgentRequest::SetPriority {
                shard: name.clone(),
                address: address.clone(),
                priority,
            };
            let (revision, answer) = cx.client.write_in(session, request).await?;
            if cx.json {
                print_json(&json!({ "revision": revision, "answer": answer }))?;
            } else if let Answer::PrioritySet { master, epoch } = &answer {
                println!(
                    "{address} of {name} has priority {priority}; master {} epoch {epoch}",
                    master.as_deref().unwrap_or("-")
                );
            }
        }
        ShardAction::Position {
            name,
            address,
            position,
        } => {
            let session = replica_session(cx, &name, &address).await?;
            let request = AgentRequest::InSession {
                session,
                request: Box::new(AgentRequest::ReportPosition {
                    shard: name.clone(),
                    address: address.clone(),
                    position,
                }),
            };
            cx.client.call(request).await?;
            if cx.json {
                print_json(&json!({ "position": position }))?;
            } else {
                println!("{address} of {name} is at position {position}");
            }
        }
        ShardAction::Group { action } => super::group::group(cx, action).await?,
        ShardAction::Move {
            group,
            slots,
            to,
            commit,
            cancel,
        } => {
            let finish = (commit || cancel).then_some(commit);
            super::group::move_slots(cx, group, slots, to, finish).await?
        }
        ShardAction::Route {
            group,
            key,
            consistent,
        } => super::group::route(cx, group, key, consistent).await?,
        ShardAction::Delete { name } => {
            let request = AgentRequest::DeleteShard { name: name.clone() };
            let (revision, _) = cx.client.write(request).await?;
            if cx.json {
                print_json(&json!({ "revision": revision }))?;
            } else {
                println!("deleted {name} (revision {revision})");
            }
        }
        ShardAction::List => {
            let reply = cx.read(Query::Shards, false).await?;
            let QueryResult::Shards(shards) = reply.result else {
                bail!("unexpected answer");
            };
            if cx.json {
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
                holding::send(&cx.client, &cx.socket, "shard join", request, !detach).await?;
            if cx.json {
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
            let (revision, answer) = cx.client.write(request).await?;
            if cx.json {
                print_json(&json!({ "revision": revision, "answer": answer }))?;
            } else if let Answer::HandedOver { master, epoch } = answer {
                println!("master {master} epoch {epoch}");
            }
        }
    }
    Ok(())
}
