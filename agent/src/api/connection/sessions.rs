//! A connection's sessions: its own client session, opened on first use and closed with
//! it, and the held sessions ([`crate::sessions::held_sessions`]) it opens, renews, closes
//! and acts in.
//!
//! ```text
//!  request ──► Target { bound, acting }
//!    InSession(s, ..)     bound to s (if it binds anything), acting in s
//!    detach               a new held session of its own, ended once it holds nothing
//!    binds (ephemeral..)  the connection's client session, opened on first use
//!    binds nothing        acting in the connection's client session, if it has one
//! ```

use std::time::Instant;

use corral_proto::api::{SESSION_TTL_MS_MAX, SESSION_TTL_MS_MIN};
use corral_proto::{Actor, CommandResponse};

use super::*;
use crate::sessions::held_sessions::{HeldError, Lifetime};

/// The sessions a write uses: the one what it creates is bound to, and the one it acts in
/// (what it removes must belong to that one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) bound: Option<SessionId>,
    pub(super) acting: Option<SessionId>,
}

impl Connection {
    /// The agent's node session, waiting a moment for it right after the agent starts.
    pub(super) async fn node_session(&self) -> Result<SessionId, ApiError> {
        // An agent opens its node session with the core right after it starts, so an app
        // started with it waits a moment here rather than failing its first write.
        let mut sessions = self.context.node_session.clone();
        let waited = tokio::time::timeout(NODE_SESSION_WAIT, sessions.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|found| found.ok().and_then(|node| *node));
        waited.ok_or_else(|| {
            ApiError::Unavailable(format!(
                "this agent has no node session yet (waited {NODE_SESSION_WAIT:?}): is the core reachable?"
            ))
        })
    }

    /// Which sessions `request` binds to and acts in; `named` is the held session an
    /// [`AgentRequest::InSession`] names (already checked to be this user's).
    pub(super) async fn target(
        &self,
        request: &AgentRequest,
        named: Option<SessionId>,
    ) -> Result<Target, ApiError> {
        let binding = translate::binding_of(request);
        if let Some(session) = named {
            let bound = (binding != Binding::None).then_some(session);
            return Ok(Target {
                bound,
                acting: Some(session),
            });
        }
        match binding {
            Binding::Node if matches!(request, AgentRequest::ReleaseLock { .. }) => {
                Err(ApiError::BadRequest(
                    "a detached lock is released in its own session: name it (InSession, \
                     ?session=ID, --session ID)"
                        .into(),
                ))
            }
            Binding::Node => {
                let session = self
                    .open_held(None, "detached".into(), Lifetime::UntilEmpty, &self.holder)
                    .await?;
                Ok(Target {
                    bound: Some(session),
                    acting: Some(session),
                })
            }
            Binding::Connection => {
                let session = self.connection_session().await?;
                Ok(Target {
                    bound: Some(session),
                    acting: Some(session),
                })
            }
            Binding::None => {
                let acting = self.session.lock().await.map(|(id, _)| id);
                Ok(Target {
                    bound: None,
                    acting,
                })
            }
        }
    }

    /// The connection's client session, opened on first use.
    async fn connection_session(&self) -> Result<SessionId, ApiError> {
        let node = self.node_session().await?;
        let mut session = self.session.lock().await;
        if let Some((id, under)) = *session {
            if under == node {
                return Ok(id);
            }
            // The node session changed: the old client session died with it.
            *session = None;
        }
        let id = self
            .open_in_core(
                node,
                self.client_key,
                format!("connection {}", self.client_key),
            )
            .await?;
        *session = Some((id, node));
        Ok(id)
    }

    /// Opens a client session under `node` in the core.
    async fn open_in_core(
        &self,
        node: SessionId,
        client_key: u64,
        label: String,
    ) -> Result<SessionId, ApiError> {
        let owner = SessionOwner::Client {
            node_session: node,
            client_key,
            label,
        };
        let response = self
            .context
            .core
            .write(&Command::OpenSession { owner })
            .await
            .map_err(core_error)?;
        match response.outcome {
            Ok(Answer::SessionOpened { session: id, .. }) => {
                self.raise_watermark(response.revision);
                Ok(id)
            }
            Ok(other) => Err(ApiError::Unavailable(format!(
                "unexpected answer {other:?}"
            ))),
            Err(error) => Err(ApiError::Refused {
                revision: response.revision,
                error,
            }),
        }
    }

    /// Opens a session held for this connection's user beyond the connection.
    pub(super) async fn open_held(
        &self,
        ttl_ms: Option<u64>,
        label: String,
        lifetime: Lifetime,
        holder: &Holder,
    ) -> Result<SessionId, ApiError> {
        self.context
            .held
            .lock()
            .admit(holder)
            .map_err(|e| ApiError::BadRequest(format!("no session opened: {e}")))?;
        let node = self.node_session().await?;
        let client_key = self.context.next_client_key();
        let label = if label.is_empty() {
            format!("held by {holder}")
        } else {
            label
        };
        let id = self.open_in_core(node, client_key, label).await?;
        let lifetime = match ttl_ms {
            Some(ttl_ms) => Lifetime::Ttl(Duration::from_millis(ttl_ms)),
            None => lifetime,
        };
        self.context
            .held
            .lock()
            .insert(id, holder.clone(), lifetime, Instant::now());
        Ok(id)
    }

    /// `OpenSession`: a held session with a time-to-live, or one that lives until closed.
    pub(super) async fn handle_open_session(
        &self,
        ttl_ms: Option<u64>,
        label: String,
        holder: &Holder,
    ) -> Result<Reply, ApiError> {
        if let Some(ttl_ms) = ttl_ms
            && !(SESSION_TTL_MS_MIN..=SESSION_TTL_MS_MAX).contains(&ttl_ms)
        {
            return Err(ApiError::BadRequest(format!(
                "ttl_ms {ttl_ms} outside {SESSION_TTL_MS_MIN}..={SESSION_TTL_MS_MAX}"
            )));
        }
        let session = self
            .open_held(ttl_ms, label, Lifetime::UntilClosed, holder)
            .await?;
        Ok(Reply::Session { session, ttl_ms })
    }

    /// `RenewSession`: restarts the time-to-live, with nothing written to the core.
    pub(super) fn handle_renew_session(
        &self,
        session: SessionId,
        holder: &Holder,
    ) -> Result<Reply, ApiError> {
        let ttl = self
            .context
            .held
            .lock()
            .renew(session, holder, Instant::now())
            .map_err(|e| not_held(session, e))?;
        Ok(Reply::Session {
            session,
            ttl_ms: ttl.map(|ttl| ttl.as_millis() as u64),
        })
    }

    /// `CloseSession`: ends a held session, releasing all it holds.
    pub(super) async fn handle_close_session(
        &self,
        session: SessionId,
        holder: &Holder,
    ) -> Result<Reply, ApiError> {
        self.check_held(session, holder)?;
        let command = Command::CloseSession { session }.acted_by(self.actor(Some(session)));
        let response = self
            .context
            .core
            .write(&command)
            .await
            .map_err(core_error)?;
        self.context.held.lock().remove(session);
        self.settle(&command, &response).await;
        match response.outcome {
            Ok(answer) => Ok(Reply::Written {
                revision: response.revision,
                answer,
            }),
            Err(error) => Err(ApiError::Refused {
                revision: response.revision,
                error,
            }),
        }
    }

    /// Checks that this connection's user may act in held session `session` now.
    pub(super) fn check_held(&self, session: SessionId, holder: &Holder) -> Result<(), ApiError> {
        self.context
            .held
            .lock()
            .check(session, holder, Instant::now())
            .map(|_| ())
            .map_err(|e| not_held(session, e))
    }

    /// The actor this agent names for a request acting in `session`.
    pub(super) fn actor(&self, session: Option<SessionId>) -> Actor {
        Actor {
            certificate: self.context.name.clone(),
            session,
        }
    }

    /// After a write: raise the watermark, apply it to the replica if it changed
    /// something, and wait until the replica has it (read-your-writes).
    pub(super) async fn settle(&self, command: &Command, response: &CommandResponse) {
        let revision = response.revision;
        self.raise_watermark(revision);
        if response.changed {
            self.context.replica.apply_own(revision, command);
        }
        let _ = self
            .context
            .replica
            .wait_for(revision, READ_YOUR_WRITES_WAIT)
            .await;
    }

    /// Ends the client session in the core, now that the connection is closed.
    pub(super) async fn close_session(&self) {
        let Some((session, _)) = self.session.lock().await.take() else {
            return;
        };
        let command = Command::CloseSession { session }.acted_by(self.actor(Some(session)));
        for attempt in 0..20 {
            match self.context.core.write(&command).await {
                Ok(_) => {
                    tracing::debug!(session, "client session closed with its connection");
                    return;
                }
                Err(e) => {
                    tracing::warn!(session, attempt, error = %e, "closing a client session failed");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }
}

fn not_held(session: SessionId, error: HeldError) -> ApiError {
    ApiError::NotHeld {
        session,
        reason: error.to_string(),
    }
}
