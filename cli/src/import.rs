//! `corral import --from-etcd ENDPOINT [--prefix P]`: copies keys from a running etcd into
//! Corral, through the local agent.
//!
//! ```text
//!  etcd ──Range pages (one revision, 500 keys each)──► import ──CompareAndSet / Put,
//!                                                               64 in flight──► agent
//! ```
//!
//! Every key is read at the revision of the first page, so the copy is one consistent
//! view of etcd. Keys bound to an etcd lease are not copied (they belong to a live
//! client of etcd and would outlive it here); keys that are not UTF-8 text or break
//! Corral's limits are named and skipped. A key that exists in Corral is kept unless
//! `--overwrite`. The exit status is non-zero when anything was skipped for an error.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use corral_proto::api::{AgentRequest, ApiError, Reply};
use corral_proto::command::validate_key;
use corral_proto::limits::VALUE_LEN_MAX;
use corral_proto::range::{KeyRange, RangeEnd};
use corral_proto::{AgentClient, ClientError};
use futures::StreamExt;

use corral_agent::etcd::pb::etcdserverpb::RangeRequest;
use corral_agent::etcd::pb::etcdserverpb::kv_client::KvClient;

/// Keys read from etcd per request.
const PAGE: i64 = 500;
/// Writes to the agent in flight at once.
const IN_FLIGHT: usize = 64;
/// Skipped keys named in the summary.
const NAMED_MAX: usize = 20;

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The etcd endpoint to copy from, e.g. http://10.0.0.5:2379.
    #[arg(long = "from-etcd")]
    from_etcd: String,
    /// Only the keys under this prefix (default: every key).
    #[arg(long, default_value = "")]
    prefix: String,
    /// Replace keys that already exist in Corral (default: keep them).
    #[arg(long)]
    overwrite: bool,
    /// The local agent's socket.
    #[arg(long, env = "CORRAL_SOCKET")]
    socket: Option<PathBuf>,
}

#[derive(Debug, Default)]
struct Tally {
    copied: u64,
    kept: u64,
    leased: u64,
    refused: Vec<String>,
}

enum Outcome {
    Copied,
    Kept,
    Refused(String),
}

pub(crate) fn run(args: ImportArgs) -> anyhow::Result<()> {
    super::runtime()?.block_on(import(args))
}

async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let socket = args
        .socket
        .clone()
        .context("no agent socket: give --socket PATH or set CORRAL_SOCKET")?;
    let agent = AgentClient::connect(&socket).await?;
    let endpoint = if args.from_etcd.contains("://") {
        args.from_etcd.clone()
    } else {
        format!("http://{}", args.from_etcd)
    };
    let mut etcd = KvClient::connect(endpoint.clone())
        .await
        .with_context(|| format!("cannot reach etcd at {endpoint}"))?
        .max_decoding_message_size(64 * 1024 * 1024);
    let range = KeyRange::prefix(&args.prefix);
    let end = match &range.end {
        RangeEnd::Before(end) => end.clone(),
        RangeEnd::Unbounded | RangeEnd::Single => vec![0],
    };
    let mut start = range.start.clone();
    let mut revision = 0i64;
    let mut tally = Tally::default();
    loop {
        let page = etcd
            .range(RangeRequest {
                key: start.clone(),
                range_end: end.clone(),
                limit: PAGE,
                revision,
                ..Default::default()
            })
            .await
            .with_context(|| format!("reading from etcd at {endpoint}"))?
            .into_inner();
        if revision == 0 {
            revision = page.header.as_ref().map_or(0, |h| h.revision);
        }
        let Some(last) = page.kvs.last() else { break };
        start = last.key.clone();
        start.push(0);
        let writes = page.kvs.into_iter().map(|kv| {
            let agent = agent.clone();
            let overwrite = args.overwrite;
            async move {
                if kv.lease != 0 {
                    return None;
                }
                Some(copy(&agent, kv.key, kv.value, overwrite).await)
            }
        });
        let mut outcomes = futures::stream::iter(writes).buffer_unordered(IN_FLIGHT);
        while let Some(outcome) = outcomes.next().await {
            match outcome {
                None => tally.leased += 1,
                Some(Outcome::Copied) => tally.copied += 1,
                Some(Outcome::Kept) => tally.kept += 1,
                Some(Outcome::Refused(why)) => tally.refused.push(why),
            }
        }
        if !page.more {
            break;
        }
    }
    println!(
        "copied {} keys from {endpoint} (revision {revision}{}); kept {} that exist here{}; \
         left {} bound to etcd leases",
        tally.copied,
        if args.prefix.is_empty() {
            String::new()
        } else {
            format!(", prefix {:?}", args.prefix)
        },
        tally.kept,
        if args.overwrite {
            ""
        } else {
            " (--overwrite replaces them)"
        },
        tally.leased
    );
    if !tally.refused.is_empty() {
        for why in tally.refused.iter().take(NAMED_MAX) {
            eprintln!("skipped {why}");
        }
        if tally.refused.len() > NAMED_MAX {
            eprintln!("… and {} more", tally.refused.len() - NAMED_MAX);
        }
        bail!("{} keys could not be copied", tally.refused.len());
    }
    Ok(())
}

async fn copy(agent: &AgentClient, key: Vec<u8>, value: Vec<u8>, overwrite: bool) -> Outcome {
    let shown = String::from_utf8_lossy(&key).into_owned();
    let Ok(key) = String::from_utf8(key) else {
        return Outcome::Refused(format!("{shown:?}: not UTF-8 text"));
    };
    if let Err(invalid) = validate_key(&key, false) {
        return Outcome::Refused(format!("{shown:?}: {invalid}"));
    }
    if value.len() > VALUE_LEN_MAX {
        return Outcome::Refused(format!(
            "{shown:?}: a value of {} bytes, more than Corral's {VALUE_LEN_MAX}",
            value.len()
        ));
    }
    let request = if overwrite {
        AgentRequest::Put {
            key,
            value,
            ephemeral: false,
        }
    } else {
        AgentRequest::CompareAndSet {
            key,
            version: 0,
            value,
            ephemeral: false,
        }
    };
    match agent.call(request).await {
        Ok(Reply::Written { .. }) => Outcome::Copied,
        Err(ClientError::Api(ApiError::Conflict { .. })) => Outcome::Kept,
        Ok(other) => Outcome::Refused(format!("{shown:?}: unexpected reply {other:?}")),
        Err(error) => Outcome::Refused(format!("{shown:?}: {error}")),
    }
}
