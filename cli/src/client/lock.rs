//! `corral lock`: locks and their fencing tokens.

use anyhow::bail;
use clap::Subcommand;
use corral_proto::Answer;
use corral_proto::api::AgentRequest;
use serde_json::json;

use super::Context;
use crate::holding;
use crate::output::print_json;

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

pub(super) async fn run(cx: &Context, action: LockAction) -> anyhow::Result<()> {
    match action {
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
                    let (revision, answer) = cx.client.write_in(session, request).await?;
                    (None, revision, answer)
                }
                None => {
                    holding::send(&cx.client, &cx.socket, "lock acquire", request, !detach).await?
                }
            };
            let Answer::LockGranted(grant) = answer else {
                bail!("lock {name} not granted: {answer:?}");
            };
            if cx.json {
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
            let (revision, _) = cx.client.write_in(session, request).await?;
            println!("released (revision {revision})");
        }
        LockAction::Status { name } => {
            let lock = cx.client.lock(&name).await?;
            if cx.json {
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
    }
    Ok(())
}
