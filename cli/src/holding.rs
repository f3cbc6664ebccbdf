//! What `corral shard join`, `corral lock acquire` and `corral service register` hold
//! while they run (without `--detach`): a session of their own with a time-to-live, which
//! they renew through a connection that is made again whenever it fails, so that what
//! they hold lasts across a restart of the agent. Ctrl-C or SIGTERM closes the session,
//! releasing it at once; a command that is killed releases it when the time-to-live runs
//! out.
//!
//! ```text
//!  command ─► ReconnectingClient ─► OpenSession{ttl: HOLD_TTL} ─► InSession{request}
//!     hold: renew every HOLD_TTL/3 (reconnecting) … Ctrl-C ─► CloseSession
//! ```

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use corral_proto::api::AgentRequest;
use corral_proto::{AgentClient, Answer, ClientOptions, ReconnectingClient, Revision};

/// The time-to-live of a holding command's session: how long what it holds outlives the
/// command if it is killed, and the longest agent restart it rides out.
const HOLD_TTL: Duration = Duration::from_secs(10);

/// How often the hold looks whether the agent ended the session.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Sends `request`: with `holds`, in a holding session of its own (answered with it, for
/// [`hold`]); otherwise on `client`'s connection as it is.
pub(crate) async fn send(
    client: &AgentClient,
    socket: &Path,
    label: &str,
    request: AgentRequest,
    holds: bool,
) -> anyhow::Result<(Option<ReconnectingClient>, Revision, Answer)> {
    if holds {
        let (held, revision, answer) = acquire(socket, label, request).await?;
        Ok((Some(held), revision, answer))
    } else {
        let (revision, answer) = client.write(request).await?;
        Ok((None, revision, answer))
    }
}

/// Opens a holding session on the agent at `socket` and sends `request` in it.
async fn acquire(
    socket: &Path,
    label: &str,
    request: AgentRequest,
) -> anyhow::Result<(ReconnectingClient, Revision, Answer)> {
    let client =
        ReconnectingClient::connect(socket, ClientOptions::default(), Some(HOLD_TTL), label)
            .await?;
    let (revision, answer) = client.write_in_session(request).await?;
    Ok((client, revision, answer))
}

/// Holds `what` until Ctrl-C or SIGTERM, then closes the session; fails if the agent
/// ended the session meanwhile (it expired while no agent could renew it, or the host was
/// declared dead).
pub(crate) async fn hold(client: ReconnectingClient, what: &str) -> anyhow::Result<()> {
    eprintln!("holding {what}; Ctrl-C releases it");
    let ended = async {
        while !client.session_ended() {
            tokio::time::sleep(CHECK_EVERY).await;
        }
    };
    tokio::select! {
        () = super::shutdown_signal() => {}
        () = ended => bail!("the agent ended the session that held {what}"),
    }
    if let Some(session) = client.session() {
        client.client().await?.close_session(session).await?;
    }
    Ok(())
}
