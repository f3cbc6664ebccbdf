//! `corral shard group`, `shard move`, `shard route`: shard groups, the hash slots their
//! shards own, moving slots between shards, and where a key goes.

use anyhow::{Context as _, bail};
use clap::Subcommand;
use corral_proto::Answer;
use corral_proto::api::{AgentRequest, Query, QueryResult};
use corral_proto::slots::{SLOTS, ShardGroup};
use serde_json::json;

use super::Context;
use crate::output::print_json;

#[derive(Debug, Subcommand)]
pub(crate) enum GroupAction {
    /// Create group NAME over existing SHARDS, the 16,384 slots split evenly among them in
    /// the order given.
    Create {
        name: String,
        #[arg(required = true)]
        shards: Vec<String>,
    },
    /// The group's slot ranges, the shard owning each, and any move under way.
    Get {
        name: String,
        #[arg(long)]
        consistent: bool,
    },
    /// Delete the group (its shards stay).
    Delete { name: String },
}

/// Slots as `FIRST-LAST` or one `SLOT`.
fn parse_slots(text: &str) -> anyhow::Result<(u16, u16)> {
    let (first, last) = text.split_once('-').unwrap_or((text, text));
    let parse = |s: &str| -> anyhow::Result<u16> {
        let slot: u16 = s
            .trim()
            .parse()
            .with_context(|| format!("{s:?} is not a slot number"))?;
        if slot >= SLOTS {
            bail!("slot {slot} is beyond the last, {}", SLOTS - 1);
        }
        Ok(slot)
    };
    let (first, last) = (parse(first)?, parse(last)?);
    if first > last {
        bail!("slots {first}-{last}: the first is after the last");
    }
    Ok((first, last))
}

fn print_group(group: &ShardGroup) {
    println!("{}  version {}", group.name, group.version);
    for range in &group.ranges {
        let moving = range
            .moving_to
            .as_deref()
            .map_or(String::new(), |to| format!("  moving to {to}"));
        println!(
            "  {:>5}-{:<5} {}{moving}",
            range.first, range.last, range.shard
        );
    }
}

fn print_version(cx: &Context, revision: u64, answer: &Answer, what: &str) -> anyhow::Result<()> {
    if cx.json {
        return print_json(&json!({ "revision": revision, "answer": answer }));
    }
    match answer {
        Answer::GroupChanged { version } => {
            println!("{what}: version {version} (revision {revision})")
        }
        _ => println!("{what} (revision {revision})"),
    }
    Ok(())
}

pub(super) async fn group(cx: &Context, action: GroupAction) -> anyhow::Result<()> {
    match action {
        GroupAction::Create { name, shards } => {
            let request = AgentRequest::CreateGroup {
                name: name.clone(),
                shards,
            };
            let (revision, answer) = cx.client.write(request).await?;
            print_version(cx, revision, &answer, &format!("created {name}"))
        }
        GroupAction::Get { name, consistent } => {
            let reply = cx.read(Query::Group(name.clone()), consistent).await?;
            let QueryResult::Group(group) = reply.result else {
                bail!("unexpected answer");
            };
            let Some(group) = group else {
                bail!(
                    "shard group {name} does not exist (revision {})",
                    reply.revision
                );
            };
            if cx.json {
                return print_json(&json!({ "revision": reply.revision, "group": group }));
            }
            print_group(&group);
            Ok(())
        }
        GroupAction::Delete { name } => {
            let (revision, answer) = cx
                .client
                .write(AgentRequest::DeleteGroup { name: name.clone() })
                .await?;
            print_version(cx, revision, &answer, &format!("deleted {name}"))
        }
    }
}

/// `corral shard move GROUP SLOTS TO`, or with `--commit`/`--cancel`, its end.
pub(super) async fn move_slots(
    cx: &Context,
    group: String,
    slots: Option<String>,
    to: Option<String>,
    finish: Option<bool>,
) -> anyhow::Result<()> {
    let request = match (slots, to, finish) {
        (None, None, Some(commit)) => AgentRequest::FinishMove {
            group: group.clone(),
            commit,
        },
        (Some(slots), Some(to), None) => {
            let (first, last) = parse_slots(&slots)?;
            AgentRequest::MoveSlots {
                group: group.clone(),
                first,
                last,
                to,
            }
        }
        _ => bail!("give SLOTS and TO to begin a move, or --commit or --cancel alone to end it"),
    };
    let what = match &request {
        AgentRequest::FinishMove { commit: true, .. } => "move committed".to_string(),
        AgentRequest::FinishMove { .. } => "move cancelled".to_string(),
        AgentRequest::MoveSlots {
            first, last, to, ..
        } => format!("slots {first}-{last} moving to {to}"),
        _ => unreachable!("built above"),
    };
    let (revision, answer) = cx.client.write(request).await?;
    print_version(cx, revision, &answer, &format!("{group}: {what}"))
}

/// `corral shard route GROUP KEY`.
pub(super) async fn route(
    cx: &Context,
    group: String,
    key: String,
    consistent: bool,
) -> anyhow::Result<()> {
    let query = Query::Route {
        group: group.clone(),
        key: key.clone(),
    };
    let reply = cx.read(query, consistent).await?;
    let QueryResult::Route(route) = reply.result else {
        bail!("unexpected answer");
    };
    let Some(route) = route else {
        bail!(
            "shard group {group} does not exist (revision {})",
            reply.revision
        );
    };
    if cx.json {
        return print_json(&json!({ "revision": reply.revision, "route": route }));
    }
    let moving = route
        .moving_to
        .as_deref()
        .map_or(String::new(), |to| format!("  moving to {to}"));
    println!(
        "{key}  slot {}  shard {}  master {}  epoch {}  version {}{moving}",
        route.slot,
        route.shard,
        route.master.as_deref().unwrap_or("-"),
        route.epoch,
        route.version
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_parse_as_a_range_or_one() {
        assert_eq!(parse_slots("0-4095").unwrap(), (0, 4095));
        assert_eq!(parse_slots("7").unwrap(), (7, 7));
        assert!(parse_slots("5-3").is_err());
        assert!(parse_slots("0-16384").is_err());
        assert!(parse_slots("x").is_err());
        assert!(parse_slots("-1").is_err());
    }
}
