//! `corral service`: service instances, registered and resolved.

use anyhow::bail;
use clap::Subcommand;
use corral_proto::api::{AgentRequest, Query, QueryResult};
use serde_json::json;

use super::Context;
use crate::holding;
use crate::output::print_json;

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
    /// List every service: its number of instances and their tags.
    List {
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// List from the first service after this one (the last of the previous page).
        #[arg(long)]
        start_after: Option<String>,
        #[arg(long)]
        consistent: bool,
    },
}

pub(super) async fn run(cx: &Context, action: ServiceAction) -> anyhow::Result<()> {
    match action {
        ServiceAction::List {
            limit,
            start_after,
            consistent,
        } => {
            let query = Query::ServicePage { start_after, limit };
            let reply = cx.read(query, consistent).await?;
            let QueryResult::ServicePage { services, more } = reply.result else {
                bail!("unexpected answer");
            };
            if cx.json {
                print_json(
                    &json!({ "revision": reply.revision, "services": services, "more": more }),
                )?;
            } else {
                for s in &services {
                    println!(
                        "{}  instances {}  tags {}",
                        s.name,
                        s.instances,
                        s.tags.join(",")
                    );
                }
                if more {
                    println!("(more services beyond {limit})");
                }
            }
        }
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
                holding::send(&cx.client, &cx.socket, "service register", request, !detach).await?;
            if cx.json {
                print_json(&json!({ "revision": revision }))?;
            } else {
                println!("registered {service}/{id} (revision {revision})");
            }
            if let Some(held) = holding {
                holding::hold(held, &format!("service instance {service}/{id}")).await?;
            }
        }
        ServiceAction::Resolve { service } => {
            let instances = cx.client.service(&service).await?;
            if cx.json {
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
    }
    Ok(())
}
