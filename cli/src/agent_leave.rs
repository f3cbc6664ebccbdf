//! `corral agent leave`: makes the running agent leave for good, for a host that goes
//! away. The agent answers once the core closed its node session; this command then waits
//! for the agent to stop serving.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use corral_proto::AgentClient;
use serde_json::json;

use super::output::print_json;

/// Longest the agent may take to stop once its node session is closed.
const EXIT_WAIT: Duration = Duration::from_secs(30);

pub(crate) async fn leave(socket: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let path = socket.context("no agent socket: give --socket PATH or set CORRAL_SOCKET")?;
    let client = AgentClient::connect(&path)
        .await
        .with_context(|| format!("no agent answers on {}", path.display()))?;
    let (name, closed) = client.leave().await?;
    let asked = Instant::now();
    while client.status().await.is_ok() {
        if asked.elapsed() > EXIT_WAIT {
            anyhow::bail!(
                "agent {name} closed its node session but still serves {} s later",
                EXIT_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if json {
        return print_json(&json!({
            "name": name,
            "node_session": closed.map(|(session, _)| session),
            "closed_at_revision": closed.map(|(_, revision)| revision),
        }));
    }
    match closed {
        Some((session, revision)) => println!(
            "agent {name} left: the core closed its node session {session} at revision {revision}, releasing what the host held"
        ),
        None => println!("agent {name} left (it held no node session)"),
    }
    Ok(())
}
