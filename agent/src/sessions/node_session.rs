//! The agent's node session: taken over at start from the agent that ran before on this
//! host (the core holds a silent node's session for its grace), or opened under the gossip
//! identity; reopened under a new incarnation whenever the core closed it (the pool
//! declared this agent dead), moved to a new incarnation the pool forced while the core
//! kept it open, and closed only when the agent leaves for good (`--leave`). A stop
//! without leaving keeps it, so that a restart moves no master and releases nothing.
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use corral_net::client::{ClientError, CoreClient};
use corral_proto::{Answer, Command, CommandError, Revision, SessionId, SessionOwner};
use tokio::sync::watch;

use crate::gossip::{GossipHandle, NodeIdentity};
use crate::replica::SharedReplica;

const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// How long a starting agent waits for its replica to catch up with the core before it
/// opens its node session without looking for one to take over.
const FIRST_STATE_WAIT: Duration = Duration::from_secs(10);

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

/// The first client key of an agent started at `incarnation`. The core gives a client
/// session opened again under the same node session with the same key back (a retried
/// open gets its session, not a second one), and a restarted agent keeps its node session
/// with the client sessions under it: keys that started at 1 again would hand a new
/// connection a session the agent before it opened for an app, and end it with that
/// connection. Incarnations grow from one start to the next, by at least the milliseconds
/// between them when the clock is right, so each start's keys lie above every key of the
/// starts before unless one start opened more than 2^20 client sessions per millisecond
/// between its incarnation and the next.
pub fn client_key_base(incarnation: u64) -> u64 {
    incarnation.saturating_mul(1 << 20)
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

/// What a node session carries across an agent restart.
#[derive(Debug)]
pub struct Restart {
    /// Set when this agent leaves for good: it then closes the session as it stops.
    pub leaving: Arc<AtomicBool>,
    /// The sessions held for apps that this agent took over from the one before it.
    pub kept: Vec<SessionId>,
}

pub async fn run(
    data_dir: PathBuf,
    core: Arc<CoreClient>,
    replica: Arc<SharedReplica>,
    gossip: GossipHandle,
    session: watch::Sender<Option<SessionId>>,
    mut shutdown: watch::Receiver<bool>,
    restart: Restart,
) {
    let Restart { leaving, kept } = restart;
    let mut identity_changes = gossip.identity.clone();
    // The node session this agent holds open, and the incarnation it is under: at start,
    // the one an earlier agent of this host left open, if the core still holds it.
    let name = identity_changes.borrow().name.clone();
    let mut held: Option<(SessionId, u64)> = tokio::select! {
        held = left_open(&core, &replica, &name) => held,
        _ = shutdown.changed() => return,
    };
    if let Some((id, incarnation)) = held {
        tracing::info!(
            session = id,
            incarnation,
            "taking over the node session an earlier agent of this host left open"
        );
    }
    let mut orphans_closed = false;
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
        if !orphans_closed {
            orphans_closed = true;
            tokio::spawn(close_orphans(
                core.clone(),
                replica.clone(),
                id,
                revision,
                kept.clone(),
            ));
        }
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
                    if closed && leaving.load(Ordering::Relaxed) {
                        // Closed by the agent itself, asked to leave for good.
                        session.send_replace(None);
                        return;
                    }
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
                    if !leaving.load(Ordering::Relaxed) {
                        // Stopping to restart: the core holds the session for its grace.
                        tracing::info!(session = id, "node session left open for a restart");
                        return;
                    }
                    // Leaving: close the session so that what it holds is released now.
                    match close(&core, id).await {
                        Ok(revision) => tracing::info!(session = id, revision, "node session closed"),
                        Err(error) => tracing::warn!(session = id, %error, "node session not closed on leave"),
                    }
                    session.send_replace(None);
                    return;
                }
            }
        }
    }
}

/// How long a leaving agent waits for the core to close its node session.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Closes node session `id` for an agent leaving for good; answers the revision the core
/// closed it at (also when an earlier attempt of the same leave closed it already).
pub async fn close(core: &CoreClient, id: SessionId) -> Result<Revision, String> {
    let command = Command::CloseSession { session: id };
    match tokio::time::timeout(CLOSE_WAIT, core.write(&command)).await {
        Ok(Ok(response)) => match response.outcome {
            Ok(_) | Err(CommandError::NoSuchSession { .. }) => Ok(response.revision),
            Err(refused) => Err(refused.to_string()),
        },
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("the core did not answer within {CLOSE_WAIT:?}")),
    }
}

/// The node session of `name` open in the core, with its incarnation, as this host's
/// replica shows it once it caught up with the core's read index (asked until the core
/// answers: no node session can be had without it anyway). None when there is none, or
/// the replica did not catch up within [`FIRST_STATE_WAIT`].
async fn left_open(
    core: &CoreClient,
    replica: &SharedReplica,
    name: &str,
) -> Option<(SessionId, u64)> {
    let revision = loop {
        match core.read_index().await {
            Ok(revision) => break revision,
            Err(e) => tracing::debug!(error = %e, "core unavailable; the node session waits"),
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    };
    replica.wait_for(revision, FIRST_STATE_WAIT).await.ok()?;
    replica.read(|r| r.machine().node_session(name))
}

/// Closes the client sessions under node session `node` that were open before `revision`
/// (when this agent took the node session over) and that it does not keep (`kept`: the
/// sessions its apps hold beyond a connection, restored from the data directory): they
/// belonged to connections of the agent that ran before, which are gone.
async fn close_orphans(
    core: Arc<CoreClient>,
    replica: Arc<SharedReplica>,
    node: SessionId,
    revision: corral_proto::Revision,
    kept: Vec<SessionId>,
) {
    let mut revisions = replica.revisions();
    if revisions.wait_for(|r| *r >= revision).await.is_err() {
        return;
    }
    let orphans: Vec<SessionId> = replica.read(|r| {
        r.machine()
            .sessions()
            .filter(|s| {
                s.id < revision
                    && !kept.contains(&s.id)
                    && matches!(&s.owner, SessionOwner::Client { node_session, .. } if *node_session == node)
            })
            .map(|s| s.id)
            .collect()
    });
    for session in orphans {
        match core.write(&Command::CloseSession { session }).await {
            Ok(_) => tracing::info!(
                session,
                "closed an app session of the agent that ran before (its connection is gone)"
            ),
            Err(e) => tracing::warn!(session, error = %e, "closing an earlier app session failed"),
        }
    }
}
