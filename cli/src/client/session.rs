//! `corral session`: sessions held beyond one command.

use clap::Subcommand;
use serde_json::json;

use super::Context;
use crate::output::print_json;

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

pub(super) async fn run(cx: &Context, action: SessionAction) -> anyhow::Result<()> {
    match action {
        SessionAction::Open { ttl_ms, label } => {
            let ttl = ttl_ms.map(std::time::Duration::from_millis);
            let session = cx.client.open_session(ttl, &label).await?;
            if cx.json {
                print_json(&json!({ "id": session, "ttl_ms": ttl_ms }))?;
            } else {
                println!("{session}");
            }
        }
        SessionAction::Renew { session } => {
            cx.client.renew_session(session).await?;
            if cx.json {
                print_json(&json!({ "id": session }))?;
            }
        }
        SessionAction::Close { session } => {
            let revision = cx.client.close_session(session).await?;
            if cx.json {
                print_json(&json!({ "id": session, "revision": revision }))?;
            } else {
                println!("session {session} closed (revision {revision})");
            }
        }
    }
    Ok(())
}
