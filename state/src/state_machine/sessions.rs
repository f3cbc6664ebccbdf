//! Sessions: opening one (a node's, or a client's under a node), and closing sessions with
//! everything they own.

use std::collections::{BTreeMap, BTreeSet};

use corral_proto::limits::CLIENT_SESSIONS_PER_NODE_MAX;
use corral_proto::{
    Answer, CloseReason, CommandError, Event, Revision, Session, SessionId, SessionOwner,
};

use super::{Outcome, StateMachine};
use crate::lock_table::Released;
use crate::session_table::Owned;

impl StateMachine {
    pub(super) fn open_session(
        &mut self,
        owner: &SessionOwner,
        next: Revision,
        events: &mut Vec<Event>,
    ) -> Outcome {
        match owner {
            SessionOwner::Node { name, incarnation } => {
                if let Some((existing, current)) = self.sessions.node_session(name) {
                    if current == *incarnation {
                        return Ok(Answer::SessionOpened {
                            session: existing,
                            existing: true,
                        });
                    }
                    if current > *incarnation {
                        return Err(CommandError::NodeSuperseded {
                            name: name.clone(),
                            incarnation: current,
                        });
                    }
                    // A newer incarnation: its predecessor is gone by definition.
                    self.close_sessions(&[existing], CloseReason::Superseded, next, events);
                }
            }
            SessionOwner::Client {
                node_session,
                client_key,
                ..
            } => {
                match self.sessions.get(*node_session) {
                    Some(SessionOwner::Node { .. }) => {}
                    Some(SessionOwner::Client { .. }) => {
                        return Err(CommandError::NotNodeSession {
                            session: *node_session,
                        });
                    }
                    None => {
                        return Err(CommandError::NoSuchSession {
                            session: *node_session,
                        });
                    }
                }
                if let Some(existing) = self.sessions.client_session(*node_session, *client_key) {
                    return Ok(Answer::SessionOpened {
                        session: existing,
                        existing: true,
                    });
                }
                if self.sessions.children(*node_session).len() >= CLIENT_SESSIONS_PER_NODE_MAX {
                    return Err(CommandError::TooManySessions {
                        session: *node_session,
                        max: CLIENT_SESSIONS_PER_NODE_MAX,
                    });
                }
            }
        }
        self.sessions.open(next, owner.clone());
        events.push(Event::SessionOpened(Session {
            id: next,
            owner: owner.clone(),
        }));
        Ok(Answer::SessionOpened {
            session: next,
            existing: false,
        })
    }

    /// Ends the given open sessions and their client sessions, and removes everything they
    /// owned, as one step: replicas leave first and each affected shard promotes once;
    /// closing sessions leave every lock queue before any lock they hold is passed on, so
    /// no closing session is ever granted a lock. Returns the sessions closed, parents
    /// before children.
    pub(super) fn close_sessions(
        &mut self,
        roots: &[SessionId],
        reason: CloseReason,
        next: Revision,
        events: &mut Vec<Event>,
    ) -> Vec<SessionId> {
        let mut closing: Vec<(SessionId, CloseReason)> = Vec::new();
        for &root in roots {
            if !self.sessions.contains(root) {
                continue;
            }
            closing.push((root, reason));
            for child in self.sessions.children(root) {
                closing.push((child, CloseReason::ParentClosed));
            }
        }
        let closing_set: BTreeSet<SessionId> = closing.iter().map(|(s, _)| *s).collect();
        let mut owned = Owned::default();
        for (session, _) in &closing {
            let o = self.sessions.take_owned(*session);
            owned.keys.extend(o.keys);
            owned.replicas.extend(o.replicas);
            owned.locks_held.extend(o.locks_held);
            owned.locks_waiting.extend(o.locks_waiting);
            owned.services.extend(o.services);
        }

        for key in &owned.keys {
            self.remove_key(key, events);
        }

        let mut by_shard: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (shard, address) in owned.replicas {
            by_shard.entry(shard).or_default().insert(address);
        }
        for (shard, addresses) in &by_shard {
            self.shards
                .remove_replicas(shard, addresses, &mut self.roles, events);
        }

        for name in &owned.locks_waiting {
            for session in &closing_set {
                if self
                    .locks
                    .get(name)
                    .is_some_and(|l| l.waiters.contains(session))
                {
                    // The session is known to wait, so the release cannot fail.
                    let _ = self.locks.release(name, *session, next, events);
                }
            }
        }
        for name in &owned.locks_held {
            let holder = self
                .locks
                .get(name)
                .and_then(|l| l.holder.as_ref())
                .map(|h| h.session);
            if let Some(holder) = holder.filter(|h| closing_set.contains(h))
                && let Ok(Released::Holder { next: Some(grant) }) =
                    self.locks.release(name, holder, next, events)
            {
                let heir = self.sessions.owned_mut(grant.session);
                heir.locks_waiting.remove(name);
                heir.locks_held.insert(name.clone());
            }
        }

        for (service, id) in &owned.services {
            self.services.remove(service, id, events);
        }

        // Children leave the table before their parent, so the parent's index entry is
        // still there while they detach from it.
        for (session, reason) in closing.iter().rev() {
            if let Some(owner) = self.sessions.remove(*session) {
                events.push(Event::SessionClosed {
                    session: *session,
                    owner,
                    reason: *reason,
                });
            }
        }
        closing.iter().map(|(s, _)| *s).collect()
    }
}
