//! The task that ends held sessions ([`super::held_sessions`]) in the core: those whose
//! time-to-live ran out, detached ones that hold nothing any more, and forgets those the
//! core ended by itself (the node session above them closed).
//!
//! ```text
//!   tick (next deadline, at most EXPIRY_TICK) ─► HeldSessions::expired / emptied
//!        └─► CloseSession (acting as the session) ─► core; kept and retried on failure
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_proto::{Actor, Command, CommandError, SessionId};

use crate::agent::AgentContext;

/// Longest the task sleeps between looks at the table.
const EXPIRY_TICK: Duration = Duration::from_millis(250);

/// A held session missing from a replica this long after it opened was ended by the
/// core (its node session closed): it is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(5);

pub async fn run(context: Arc<AgentContext>) {
    let mut shutdown = context.shutdown.clone();
    loop {
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
            _ = shutdown.changed() => return,
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
