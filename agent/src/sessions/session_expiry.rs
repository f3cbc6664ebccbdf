//! The task that ends held sessions ([`super::held_sessions`]) in the core: those whose
//! time-to-live ran out, detached ones that hold nothing any more, and forgets those the
//! core ended by itself (the node session above them closed).
//!
//! The table is saved in the data directory whenever it changed (at most every
//! `EXPIRY_TICK`, and at a stop), so that the agent restarted on the host keeps the
//! sessions and their deadlines.
//!
//! ```text
//!   tick (next deadline, at most EXPIRY_TICK) ─► HeldSessions::expired / emptied
//!        └─► CloseSession (acting as the session) ─► core; kept and retried on failure
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_proto::{Actor, Command, CommandError, SessionId};

use super::held_sessions::{HeldSessions, SavedSession};
use crate::agent::AgentContext;

/// Longest the task sleeps between looks at the table.
const EXPIRY_TICK: Duration = Duration::from_millis(250);

/// A held session missing from a replica this long after it opened was ended by the
/// core (its node session closed): it is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(5);

/// The file in the data directory that holds the sessions held for apps.
pub fn saved_path(data_dir: &Path) -> PathBuf {
    data_dir.join("held-sessions.json")
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Takes over the sessions an earlier agent of this host saved in `data_dir`; answers
/// their IDs. A file that cannot be read is named in the log and set aside, not fatal:
/// the sessions in it are then ended like those of any gone connection.
pub fn restore(data_dir: &Path, held: &mut HeldSessions) -> Vec<SessionId> {
    let path = saved_path(data_dir);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read the held sessions");
            return Vec::new();
        }
    };
    match serde_json::from_slice::<Vec<SavedSession>>(&text) {
        Ok(saved) => held.restore(saved, Instant::now(), unix_ms()),
        Err(e) => {
            let aside = path.with_extension("json.unreadable");
            tracing::error!(
                path = %path.display(),
                aside = %aside.display(),
                error = %e,
                "the held sessions file is not readable; set aside"
            );
            let _ = std::fs::rename(&path, &aside);
            Vec::new()
        }
    }
}

/// Writes the table to the data directory (owner-only: it names HTTP tokens) when it
/// changed since `saved_at`; answers the change count saved.
fn save(context: &AgentContext, saved_at: u64) -> u64 {
    let (changes, saved) = {
        let held = context.held.lock();
        (held.changes(), held.saved(Instant::now(), unix_ms()))
    };
    if changes == saved_at {
        return saved_at;
    }
    let path = saved_path(&context.data_dir);
    match write_private(&path, &serde_json::to_vec(&saved).unwrap_or_default()) {
        Ok(()) => changes,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot save the held sessions");
            saved_at
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

pub async fn run(context: Arc<AgentContext>) {
    let mut shutdown = context.shutdown.clone();
    let mut saved_at = u64::MAX;
    loop {
        saved_at = save(&context, saved_at);
        let now = Instant::now();
        let wake = context
            .held
            .lock()
            .next_deadline()
            .map_or(EXPIRY_TICK, |deadline| {
                deadline.saturating_duration_since(now).min(EXPIRY_TICK)
            });
        tokio::select! {
            () = tokio::time::sleep(wake) => {}
            _ = shutdown.changed() => {
                save(&context, saved_at);
                return;
            }
        }
        let now = Instant::now();
        let (expired, emptied, opened) = {
            let held = context.held.lock();
            let emptied = context
                .replica
                .read(|r| held.emptied(now, |id| r.machine().owns_nothing(id)));
            (held.expired(now), emptied, held.opened())
        };
        for (session, why) in expired
            .into_iter()
            .map(|s| (s, "its time-to-live ran out"))
            .chain(
                emptied
                    .into_iter()
                    .map(|s| (s, "it holds nothing any more")),
            )
        {
            end(&context, session, why).await;
        }
        let gone: Vec<SessionId> = context.replica.read(|r| {
            opened
                .into_iter()
                .filter(|(id, at)| {
                    r.machine().session(*id).is_none() && now.duration_since(*at) >= FORGET_AFTER
                })
                .map(|(id, _)| id)
                .collect()
        });
        if !gone.is_empty() {
            let mut held = context.held.lock();
            for id in gone {
                tracing::info!(session = id, "held session ended by the core");
                held.remove(id);
            }
        }
    }
}

/// Ends `session` in the core and forgets it; on failure it stays, to be tried again.
pub async fn end(context: &AgentContext, session: SessionId, why: &str) {
    let command = Command::CloseSession { session }.acted_by(Actor {
        certificate: context.name.clone(),
        session: Some(session),
    });
    match context.core.write(&command).await {
        Ok(response) => match response.outcome {
            Ok(_) | Err(CommandError::NoSuchSession { .. }) => {
                tracing::info!(session, why, "held session ended");
                context.held.lock().remove(session);
            }
            Err(error) => {
                tracing::warn!(session, %error, "the core refused to end a held session");
                context.held.lock().remove(session);
            }
        },
        Err(error) => {
            tracing::warn!(session, %error, "ending a held session failed; trying again");
        }
    }
}
