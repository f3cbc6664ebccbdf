//! Locks: one holder, a first-come-first-served queue of waiters, and fencing tokens.
//!
//! A grant's token is the revision of the command that made it, so the tokens of a lock
//! (indeed of all locks) strictly increase. Invariants: the holder is never in the queue;
//! a session appears at most once in a queue; a lock with no holder has no waiters (the
//! record is removed when both are empty).

use std::collections::BTreeMap;

use corral_proto::{
    CommandError, Event, Lock, LockGrant, Revision, SessionId, limits::LOCK_WAITERS_MAX,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LockTable {
    locks: BTreeMap<String, Lock>,
}

/// What an acquire did.
pub(crate) enum Acquired {
    Granted { grant: LockGrant, new: bool },
    Queued { position: usize, new: bool },
}

/// What a release did.
pub(crate) enum Released {
    /// The session held the lock; `next` is the waiter that now holds it.
    Holder { next: Option<LockGrant> },
    /// The session was waiting and left the queue.
    Waiter,
}

impl LockTable {
    pub(crate) fn get(&self, name: &str) -> Option<&Lock> {
        self.locks.get(name)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Lock> {
        self.locks.values()
    }

    pub(crate) fn len(&self) -> usize {
        self.locks.len()
    }

    pub(crate) fn acquire(
        &mut self,
        name: &str,
        session: SessionId,
        wait: bool,
        revision: Revision,
        events: &mut Vec<Event>,
    ) -> Result<Acquired, CommandError> {
        let Some(lock) = self.locks.get_mut(name) else {
            let grant = LockGrant {
                session,
                token: revision,
            };
            self.locks.insert(
                name.to_string(),
                Lock {
                    name: name.to_string(),
                    holder: Some(grant.clone()),
                    waiters: Vec::new(),
                },
            );
            events.push(Event::LockGranted {
                name: name.to_string(),
                grant: grant.clone(),
            });
            return Ok(Acquired::Granted { grant, new: true });
        };
        let holder = lock
            .holder
            .clone()
            .expect("a lock record always has a holder");
        if holder.session == session {
            return Ok(Acquired::Granted {
                grant: holder,
                new: false,
            });
        }
        if let Some(index) = lock.waiters.iter().position(|w| *w == session) {
            return Ok(Acquired::Queued {
                position: index + 1,
                new: false,
            });
        }
        if !wait {
            return Err(CommandError::LockHeld {
                name: name.to_string(),
                holder,
            });
        }
        if lock.waiters.len() >= LOCK_WAITERS_MAX {
            return Err(CommandError::TooManyWaiters {
                name: name.to_string(),
                max: LOCK_WAITERS_MAX,
            });
        }
        lock.waiters.push(session);
        events.push(Event::LockQueued {
            name: name.to_string(),
            session,
        });
        Ok(Acquired::Queued {
            position: lock.waiters.len(),
            new: true,
        })
    }

    /// Releases `name` for `session`: a holder passes the lock to the first waiter, a
    /// waiter leaves the queue.
    pub(crate) fn release(
        &mut self,
        name: &str,
        session: SessionId,
        revision: Revision,
        events: &mut Vec<Event>,
    ) -> Result<Released, CommandError> {
        let not_holder = || CommandError::NotLockHolder {
            name: name.to_string(),
            session,
        };
        let lock = self.locks.get_mut(name).ok_or_else(not_holder)?;
        if lock.holder.as_ref().is_some_and(|h| h.session == session) {
            events.push(Event::LockReleased {
                name: name.to_string(),
                session,
            });
            let next = if lock.waiters.is_empty() {
                None
            } else {
                let next_session = lock.waiters.remove(0);
                let grant = LockGrant {
                    session: next_session,
                    token: revision,
                };
                events.push(Event::LockGranted {
                    name: name.to_string(),
                    grant: grant.clone(),
                });
                Some(grant)
            };
            lock.holder = next.clone();
            if lock.holder.is_none() {
                self.locks.remove(name);
            }
            return Ok(Released::Holder { next });
        }
        let index = lock
            .waiters
            .iter()
            .position(|w| *w == session)
            .ok_or_else(not_holder)?;
        lock.waiters.remove(index);
        events.push(Event::LockDequeued {
            name: name.to_string(),
            session,
        });
        Ok(Released::Waiter)
    }
}
