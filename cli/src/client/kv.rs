//! `corral kv`: keys and values, one at a time or in a transaction.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use corral_proto::api::{AgentRequest, Query, QueryResult};
use corral_proto::{Answer, TxnOpResult};
use serde_json::json;

use super::{Context, kv_json, text};
use crate::holding;
use crate::output::print_json;

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
    /// Run a transaction written as JSON (from FILE, or standard input when FILE is `-`
    /// or absent): compares, then the puts, deletes and gets of the branch that runs.
    /// With an ephemeral put, the keys live as long as this command.
    ///
    /// {"compare": [{"key": "v", "version": 3}],
    ///  "success": [{"put": "v", "value": "4"}], "failure": [{"get": "v"}]}
    Txn { file: Option<PathBuf> },
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

pub(super) async fn run(cx: &Context, action: KvAction) -> anyhow::Result<()> {
    match action {
        KvAction::Txn { file } => {
            let bytes = match file.as_deref() {
                None => read_stdin()?,
                Some(path) if path == Path::new("-") => read_stdin()?,
                Some(path) => std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            };
            let txn = corral_agent::txn_json::parse(&bytes).map_err(anyhow::Error::msg)?;
            let bound = corral_agent::api::translate::txn_is_bound(&txn);
            let (holding, revision, answer) = holding::send(
                &cx.client,
                &cx.socket,
                "kv txn",
                AgentRequest::Txn(txn),
                bound,
            )
            .await?;
            let Answer::Txn { succeeded, results } = &answer else {
                bail!("unexpected answer {answer:?}");
            };
            if cx.json {
                print_json(&json!({
                    "revision": revision,
                    "succeeded": succeeded,
                    "results": corral_agent::json::readable(results)?,
                }))?;
            } else {
                print_txn(revision, *succeeded, results);
            }
            if let Some(held) = holding {
                holding::hold(held, "the ephemeral keys of the transaction").await?;
            }
        }
        KvAction::Get { key, consistent } => {
            let reply = cx.read(Query::Key(key.clone()), consistent).await?;
            let QueryResult::Key(value) = reply.result else {
                bail!("unexpected answer");
            };
            match (value, cx.json) {
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
                holding::send(&cx.client, &cx.socket, "kv put", request, ephemeral).await?;
            if cx.json {
                print_json(&json!({ "revision": revision }))?;
            } else {
                println!("revision {revision}");
            }
            if let Some(held) = holding {
                holding::hold(held, &format!("ephemeral key {key}")).await?;
            }
        }
        KvAction::Del { key, prefix } => {
            let (revision, answer) = cx
                .client
                .write(AgentRequest::Delete { key, prefix })
                .await?;
            let count = match answer {
                Answer::Deleted { count } => count,
                _ => 0,
            };
            if cx.json {
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
            let (revision, _) = cx.client.write(request).await?;
            if cx.json {
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
            let reply = cx.read(query, consistent).await?;
            let QueryResult::Keys { keys, more } = reply.result else {
                bail!("unexpected answer");
            };
            if cx.json {
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
    }
    Ok(())
}

/// Most bytes of a transaction read from standard input.
const TXN_JSON_LEN_MAX: u64 = 16 * 1024 * 1024;

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(TXN_JSON_LEN_MAX + 1)
        .read_to_end(&mut bytes)
        .context("cannot read the transaction from standard input")?;
    if bytes.len() as u64 > TXN_JSON_LEN_MAX {
        bail!("the transaction is longer than {TXN_JSON_LEN_MAX} bytes");
    }
    Ok(bytes)
}

/// A transaction's outcome for people: which branch ran, then one line per operation.
fn print_txn(revision: u64, succeeded: bool, results: &[TxnOpResult]) {
    let branch = if succeeded { "success" } else { "failure" };
    println!("{branch} (revision {revision})");
    for result in results {
        match result {
            TxnOpResult::Put(meta) => println!("put: version {}", meta.version),
            TxnOpResult::Deleted { count } => println!("deleted {count}"),
            TxnOpResult::Range(range) => {
                for kv in &range.keys {
                    println!("{} = {}", kv.key, text(&kv.value));
                }
            }
        }
    }
}
