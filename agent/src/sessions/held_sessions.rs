//! The sessions an agent holds for its apps beyond one connection: sessions with a
//! time-to-live (HTTP clients, socket apps that want to outlive a reconnect) and the
//! sessions of detached acquisitions. A plain table with time as an argument; the task
//! in [`super::session_expiry`] turns its decisions into writes.
//!
//! ```text
//!   open(id, holder, lifetime, now) ─► table ─► expired(now): end these in the core
//!   renew(id, holder, now)             │      └► emptied: detached sessions that hold
//!   check(id, holder, now)  ◄──────────┘         nothing any more
//! ```
//!
//! The core holds every one of them as a client session under the agent's node session,
//! so the host's death ends them all; the clock that ends an idle one is the agent's,
//! never the core's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use corral_proto::SessionId;

/// Most sessions one agent holds for its apps.
pub const HELD_SESSIONS_MAX: usize = 16_384;

/// Most held sessions of one Unix user, so that one app cannot take them all.
pub const HELD_SESSIONS_PER_USER_MAX: usize = 4_096;

/// How long a detached session may hold nothing before it is ended: the time its first
/// acquisition takes to land.
pub const DETACHED_EMPTY_GRACE: Duration = Duration::from_secs(5);

/// Who holds a session: the Unix user of a socket client (from `SO_PEERCRED`), or an
/// HTTP client by the token it presented (None: no token).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Holder {
    Uid(u32),
    Http(Option<String>),
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Uid(uid) => write!(f, "uid {uid}"),
            Holder::Http(Some(token)) => write!(f, "HTTP token {token}"),
            Holder::Http(None) => write!(f, "HTTP"),
        }
    }
}

/// How a held session ends, besides being closed or its host dying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Lifetime {
    /// Unless renewed within this time.
    Ttl(Duration),
    /// Once it holds nothing (the session of a detached acquisition).
    UntilEmpty,
    /// Only when closed.
    UntilClosed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub holder: Holder,
    pub lifetime: Lifetime,
    pub opened: Instant,
    /// When it ends unless renewed (sessions with a time-to-live).
    pub deadline: Option<Instant>,
}

/// Why a held session cannot be used. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeldError {
    #[error("not held by this agent (never opened here, or ended)")]
    NotHeld,
    #[error("held for another Unix user")]
    OtherUser,
    #[error("its time-to-live ran out")]
    Expired,
    #[error("this agent already holds {max} sessions")]
    Full { max: usize },
    #[error("this Unix user already holds {max} sessions here")]
    UserFull { max: usize },
}

#[derive(Debug, Default)]
pub struct HeldSessions {
    sessions: HashMap<SessionId, Held>,
    /// Unix users that may use every session: root and the agent's own user.
    privileged: Vec<u32>,
    /// Counts changes, so that the table is saved only when it changed.
    changes: u64,
}

/// A held session as the agent saves it in its data directory, so that the agent
/// restarted on the host keeps it: deadlines on the wall clock, which a restart keeps.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedSession {
    pub id: SessionId,
    pub holder: Holder,
    pub lifetime: Lifetime,
    /// Milliseconds since the Unix epoch.
    pub deadline_unix_ms: Option<u64>,
}

impl HeldSessions {
    pub fn new(privileged: Vec<u32>) -> Self {
        HeldSessions {
            sessions: HashMap::new(),
            privileged,
            changes: 0,
        }
    }

    /// How many changes the table has seen.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The table to save, `now` being `now_unix_ms` on the wall clock.
    pub fn saved(&self, now: Instant, now_unix_ms: u64) -> Vec<SavedSession> {
        let mut saved: Vec<SavedSession> = self
            .sessions
            .iter()
            .map(|(id, held)| SavedSession {
                id: *id,
                holder: held.holder.clone(),
                lifetime: held.lifetime,
                deadline_unix_ms: held.deadline.map(|deadline| {
                    now_unix_ms + deadline.saturating_duration_since(now).as_millis() as u64
                }),
            })
            .collect();
        saved.sort_unstable_by_key(|s| s.id);
        saved
    }

    /// Takes over sessions a previous agent saved, with their deadlines (a session whose
    /// deadline passed while no agent ran expires at the next look); at most
    /// [`HELD_SESSIONS_MAX`]. Answers their IDs.
    pub fn restore(
        &mut self,
        saved: Vec<SavedSession>,
        now: Instant,
        now_unix_ms: u64,
    ) -> Vec<SessionId> {
        let mut ids = Vec::new();
        for session in saved.into_iter().take(HELD_SESSIONS_MAX) {
            let deadline = session
                .deadline_unix_ms
                .map(|at| now + Duration::from_millis(at.saturating_sub(now_unix_ms)));
            self.sessions.insert(
                session.id,
                Held {
                    holder: session.holder,
                    lifetime: session.lifetime,
                    opened: now,
                    deadline,
                },
            );
            ids.push(session.id);
        }
        self.changes += 1;
        ids
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Whether `holder` may open one more session.
    pub fn admit(&self, holder: &Holder) -> Result<(), HeldError> {
        if self.sessions.len() >= HELD_SESSIONS_MAX {
            return Err(HeldError::Full {
                max: HELD_SESSIONS_MAX,
            });
        }
        let mine = self
            .sessions
            .values()
            .filter(|held| held.holder == *holder)
            .count();
        if mine >= HELD_SESSIONS_PER_USER_MAX {
            return Err(HeldError::UserFull {
                max: HELD_SESSIONS_PER_USER_MAX,
            });
        }
        Ok(())
    }

    /// Records a session the core opened for `holder`.
    pub fn insert(&mut self, id: SessionId, holder: Holder, lifetime: Lifetime, now: Instant) {
        let deadline = match lifetime {
            Lifetime::Ttl(ttl) => Some(now + ttl),
            Lifetime::UntilEmpty | Lifetime::UntilClosed => None,
        };
        self.sessions.insert(
            id,
            Held {
                holder,
                lifetime,
                opened: now,
                deadline,
            },
        );
        self.changes += 1;
    }

    /// The session, if `holder` may act in it now.
    pub fn check(&self, id: SessionId, holder: &Holder, now: Instant) -> Result<&Held, HeldError> {
        let held = self.sessions.get(&id).ok_or(HeldError::NotHeld)?;
        let privileged = matches!(holder, Holder::Uid(uid) if self.privileged.contains(uid));
        if held.holder != *holder && !privileged {
            return Err(HeldError::OtherUser);
        }
        if held.deadline.is_some_and(|deadline| deadline <= now) {
            return Err(HeldError::Expired);
        }
        Ok(held)
    }

    /// Restarts the session's time-to-live; answers it (None: it has none).
    pub fn renew(
        &mut self,
        id: SessionId,
        holder: &Holder,
        now: Instant,
    ) -> Result<Option<Duration>, HeldError> {
        let lifetime = self.check(id, holder, now)?.lifetime;
        let held = self.sessions.get_mut(&id).expect("checked just now");
        match lifetime {
            Lifetime::Ttl(ttl) => {
                held.deadline = Some(now + ttl);
                self.changes += 1;
                Ok(Some(ttl))
            }
            Lifetime::UntilEmpty | Lifetime::UntilClosed => Ok(None),
        }
    }

    pub fn remove(&mut self, id: SessionId) -> Option<Held> {
        self.changes += 1;
        self.sessions.remove(&id)
    }

    /// Sessions whose time-to-live ran out by `now`: to be ended in the core.
    pub fn expired(&self, now: Instant) -> Vec<SessionId> {
        let mut ids: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, held)| held.deadline.is_some_and(|deadline| deadline <= now))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Detached sessions old enough that holding nothing means their acquisition was
    /// released: `holds_nothing` tells, from the replica.
    pub fn emptied(
        &self,
        now: Instant,
        holds_nothing: impl Fn(SessionId) -> bool,
    ) -> Vec<SessionId> {
        let mut ids: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(id, held)| {
                held.lifetime == Lifetime::UntilEmpty
                    && now.duration_since(held.opened) >= DETACHED_EMPTY_GRACE
                    && holds_nothing(**id)
            })
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The earliest deadline, for the expiry task's next wake-up.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.sessions
            .values()
            .filter_map(|held| held.deadline)
            .min()
    }

    /// The sessions `holder` holds, by ID.
    pub fn held_by(&self, holder: &Holder) -> Vec<(SessionId, Held)> {
        let mut held: Vec<(SessionId, Held)> = self
            .sessions
            .iter()
            .filter(|(_, held)| held.holder == *holder)
            .map(|(id, held)| (*id, held.clone()))
            .collect();
        held.sort_unstable_by_key(|(id, _)| *id);
        held
    }

    /// Every held session and when it was opened, to drop those the core has closed.
    pub fn opened(&self) -> Vec<(SessionId, Instant)> {
        self.sessions
            .iter()
            .map(|(id, held)| (*id, held.opened))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &Holder = &Holder::Uid(1000);
    const BOB: &Holder = &Holder::Uid(1001);
    const AGENT: &Holder = &Holder::Uid(999);

    /// A restarted agent takes the saved sessions over with the deadlines they had on the
    /// wall clock: the time no agent ran counts against them.
    #[test]
    fn saved_sessions_come_back_with_their_wall_clock_deadlines() {
        let before = Instant::now();
        let mut table = HeldSessions::new(vec![999]);
        let changes = table.changes();
        table.insert(
            7,
            ALICE.clone(),
            Lifetime::Ttl(Duration::from_secs(10)),
            before,
        );
        table.insert(
            9,
            Holder::Http(Some("t".into())),
            Lifetime::UntilClosed,
            before,
        );
        assert!(table.changes() > changes);
        let saved = table.saved(before, 1_000_000);
        assert_eq!(saved[0].deadline_unix_ms, Some(1_010_000));
        assert_eq!(saved[1].deadline_unix_ms, None);

        // Restarted 4 s later on the wall clock.
        let after = Instant::now();
        let mut restarted = HeldSessions::new(vec![999]);
        let json = serde_json::to_string(&saved).unwrap();
        let ids = restarted.restore(serde_json::from_str(&json).unwrap(), after, 1_004_000);
        assert_eq!(ids, vec![7, 9]);
        assert!(restarted.check(7, ALICE, after).is_ok());
        assert_eq!(
            restarted.check(7, BOB, after).err(),
            Some(HeldError::OtherUser)
        );
        assert_eq!(
            restarted.next_deadline(),
            Some(after + Duration::from_secs(6))
        );
        assert_eq!(restarted.expired(after + Duration::from_secs(6)), vec![7]);
        assert!(
            restarted
                .check(9, &Holder::Http(Some("t".into())), after)
                .is_ok()
        );
        // A deadline that passed while no agent ran ends the session at once.
        let mut late = HeldSessions::new(vec![]);
        late.restore(saved, after, 2_000_000);
        assert_eq!(late.expired(after), vec![7]);
    }

    /// A session expires at its deadline unless renewed, and only its holder (or a
    /// privileged user) may use or renew it.
    #[test]
    fn a_session_expires_unless_its_holder_renews_it() {
        let start = Instant::now();
        let mut table = HeldSessions::new(vec![0, 999]);
        table.insert(
            7,
            ALICE.clone(),
            Lifetime::Ttl(Duration::from_secs(2)),
            start,
        );
        let later = start + Duration::from_millis(1500);
        assert!(table.check(7, ALICE, later).is_ok());
        assert_eq!(table.check(7, BOB, later), Err(HeldError::OtherUser));
        assert!(table.check(7, AGENT, later).is_ok());
        assert_eq!(table.renew(7, BOB, later), Err(HeldError::OtherUser));
        assert!(table.expired(start + Duration::from_secs(2)).contains(&7));
        assert_eq!(
            table.renew(7, ALICE, later),
            Ok(Some(Duration::from_secs(2)))
        );
        assert!(table.expired(start + Duration::from_secs(3)).is_empty());
        assert_eq!(table.next_deadline(), Some(later + Duration::from_secs(2)));
        let past = later + Duration::from_secs(2);
        assert_eq!(table.expired(past), vec![7]);
        assert_eq!(table.check(7, ALICE, past), Err(HeldError::Expired));
        assert_eq!(table.renew(7, ALICE, past), Err(HeldError::Expired));
        assert_eq!(table.check(8, ALICE, past), Err(HeldError::NotHeld));
    }

    /// One user cannot hold more than its share.
    #[test]
    fn a_user_holds_at_most_its_share() {
        let now = Instant::now();
        let mut table = HeldSessions::new(vec![]);
        for id in 0..HELD_SESSIONS_PER_USER_MAX as u64 {
            table.admit(ALICE).unwrap();
            table.insert(id, ALICE.clone(), Lifetime::UntilClosed, now);
        }
        assert_eq!(
            table.admit(ALICE),
            Err(HeldError::UserFull {
                max: HELD_SESSIONS_PER_USER_MAX
            })
        );
        assert!(table.admit(BOB).is_ok());
    }

    /// A detached session that holds nothing ends, but not before its acquisition had
    /// time to land.
    #[test]
    fn a_detached_session_ends_once_it_holds_nothing() {
        let start = Instant::now();
        let mut table = HeldSessions::new(vec![]);
        table.insert(3, ALICE.clone(), Lifetime::UntilEmpty, start);
        table.insert(4, ALICE.clone(), Lifetime::UntilClosed, start);
        assert!(table.emptied(start, |_| true).is_empty());
        let later = start + DETACHED_EMPTY_GRACE;
        assert_eq!(table.emptied(later, |_| true), vec![3]);
        assert!(table.emptied(later, |_| false).is_empty());
    }
}
