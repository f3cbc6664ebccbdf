//! The agent's node session: opened at start under its gossip identity, reopened under a
//! new incarnation whenever the core closed it (the pool declared this agent dead), moved
//! to a new incarnation the pool forced while the core kept it open, and closed when the
//! agent leaves.
//!
//! ```text
//!  gossip identity ──► OpenSession{Node{name, incarnation}} ──► session id (watch)
//!        ▲                                          │ replica shows it closed
//!        └──────── renew incarnation ◄──────────────┘
//!  new identity, session still open ──► RenewNode{name, from, to}: same session, same
//!                                       client sessions (refused if closed: open anew)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use corral_net::client::{ClientError, CoreClient};
use corral_proto::{Answer, Command, CommandError, SessionId, SessionOwner};
use tokio::sync::watch;

use crate::gossip::{GossipHandle, NodeIdentity};
use crate::replica::SharedReplica;

const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// The incarnation file in the data directory.
pub fn incarnation_path(data_dir: &Path) -> PathBuf {
    data_dir.join("incarnation")
}

/// The incarnation for this start: above every earlier one of this data directory and
/// above the current time in milliseconds, so that even a wiped data directory starts
/// above its predecessors. Written durably before it is used.
pub fn next_incarnation(data_dir: &Path) -> std::io::Result<u64> {
    let path = incarnation_path(data_dir);
    let stored = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: not an incarnation number: {e}", path.display()),
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let incarnation = (stored + 1).max(now_ms);
    store_incarnation(data_dir, incarnation)?;
    Ok(incarnation)
}

pub fn store_incarnation(data_dir: &Path, incarnation: u64) -> std::io::Result<()> {
    use std::io::Write;
    let path = incarnation_path(data_dir);
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    writeln!(file, "{incarnation}")?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// Opens the node session of `name` at `incarnation` (idempotent: the same owner gets its
/// open session back).
pub fn open_command(name: &str, incarnation: u64) -> Command {
    Command::OpenSession {
        owner: SessionOwner::Node {
            name: name.to_string(),
            incarnation,
        },
    }
}

/// What brings the node session to `incarnation`, given the session this agent holds and
/// the incarnation it holds it under. A new gossip identity while the session is open (the
/// pool had declared this live agent dead) moves the session to it, with the apps'
/// sessions under it: opening one would end the old session and all they hold. Otherwise,
/// an open. When the core refuses the move (`NodeNotRenewable`: it closed the session
/// first), the agent opens. The simulations decide with this too.
pub fn session_command(held: Option<(SessionId, u64)>, name: &str, incarnation: u64) -> Command {
    match held {
        Some((_, from)) if from < incarnation => Command::RenewNode {
            name: name.to_string(),
            from,
            to: incarnation,
        },
        _ => open_command(name, incarnation),
    }
}

pub async fn run(
    data_dir: PathBuf,
    core: Arc<CoreClient>,
    replica: Arc<SharedReplica>,
    gossip: GossipHandle,
    session: watch::Sender<Option<SessionId>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut identity_changes = gossip.identity.clone();
    // The node session this agent holds open, and the incarnation it is under.
    let mut held: Option<(SessionId, u64)> = None;
    loop {
        let identity: NodeIdentity = identity_changes.borrow_and_update().clone();
        if let Err(e) = store_incarnation(&data_dir, identity.incarnation) {
            tracing::error!(error = %e, "cannot record the incarnation");
        }
        let open = open_command(&identity.name, identity.incarnation);
        let mut command = session_command(held, &identity.name, identity.incarnation);
        let opened = loop {
            let attempt = tokio::select! {
                result = core.write(&command) => result,
                _ = shutdown.changed() => return,
            };
            match attempt {
                Ok(response) => match response.outcome {
                    Ok(Answer::SessionOpened { session, .. }) => {
                        break Some((session, response.revision));
                    }
                    Err(CommandError::NodeNotRenewable { .. }) => {
                        tracing::warn!(
                            "the core closed this node's session before it could move to the new incarnation; opening a new one"
                        );
                        command = open.clone();
                        continue;
                    }
                    Err(CommandError::NodeSuperseded { incarnation, .. }) => {
                        tracing::warn!(
                            incarnation,
                            "the core knows a newer incarnation of this node; taking a newer one"
                        );
                        held = None;
                        gossip.renew_above(incarnation).await;
                        break None;
                    }
                    other => {
                        tracing::error!(?other, "the core refused the node session");
                    }
                },
                Err(ClientError::Unavailable(e)) => {
                    tracing::debug!(error = %e, "core unavailable; node session waits");
                }
                Err(e) => tracing::warn!(error = %e, "opening the node session failed"),
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        };
        let Some((id, revision)) = opened else {
            let _ = identity_changes.changed().await;
            continue;
        };
        tracing::info!(session = id, identity = %identity, "node session open");
        held = Some((id, identity.incarnation));
        session.send_replace(Some(id));
        // Watch for the session's end, or a new identity.
        let mut revisions = replica.revisions();
        loop {
            tokio::select! {
                _ = identity_changes.changed() => break,
                changed = revisions.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let closed = replica.read(|r| {
                        r.revision() >= revision && r.machine().session(id).is_none()
                    });
                    if closed {
                        tracing::warn!(
                            session = id,
                            "the core closed this node's session; rejoining as a new incarnation"
                        );
                        held = None;
                        session.send_replace(None);
                        gossip.renew_above(identity.incarnation).await;
                        let _ = identity_changes.changed().await;
                        break;
                    }
                }
                _ = shutdown.changed() => {
                    // Leaving: close the session so that what it holds is released now.
                    let close = Command::CloseSession { session: id };
                    match tokio::time::timeout(Duration::from_secs(2), core.write(&close)).await {
                        Ok(Ok(_)) => tracing::info!(session = id, "node session closed"),
                        _ => tracing::warn!(session = id, "node session not closed on leave"),
                    }
                    session.send_replace(None);
                    return;
                }
            }
        }
    }
}
