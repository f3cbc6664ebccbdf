//! The core's state machine: a plain value that applies commands in log order.
//!
//! ```text
//!   Command ──apply──► (CommandResponse, Vec<Event>)
//!                │
//!                ├─ KeySpace      keys, values, revisions
//!                ├─ SessionTable  sessions + ownership index (derived)
//!                ├─ ShardTable    replicas, master, epoch
//!                ├─ LockTable     holder, FIFO waiters, tokens
//!                └─ ServiceTable  session-bound instances
//! ```
//!
//! Apply is deterministic: no clock, no randomness, no I/O, and only ordered maps, so the
//! same log yields byte-identical snapshots on every member and every agent replica.
//!
//! The revision grows by one for every command that changes something, and only then: a
//! command that is refused, or that finds nothing to do, leaves the state (revision
//! included) untouched and yields no events. Every handler checks all its preconditions
//! before it mutates anything, so a refused command can never leave a partial change.
//!
//! This file holds the value and its reads; `apply` dispatches a command to the tables,
//! `keys` and `sessions` apply what touches several of them, `snapshot` turns the state
//! into bytes and back, `succession` says which masters a command would take away.

mod apply;
mod keys;
mod sessions;
mod snapshot;
mod succession;

pub use succession::Succession;

use corral_proto::access::AccessTable;
use corral_proto::range::{KeyRange, RangeQuery, RangeResult};
use corral_proto::{
    Answer, CommandError, KeyValue, Lock, Revision, ServiceInstance, Session, SessionId,
    SessionOwner, Shard, Txn,
};
use serde::{Deserialize, Serialize};

use super::access_changes::QuotaUse;
use super::digest::{CHECKPOINT_EVERY, Checkpoint};
use super::group_table::GroupTable;
use super::key_space::KeySpace;
use super::lock_table::LockTable;
use super::service_table::ServiceTable;
use super::session_table::SessionTable;
use super::shard_table::{Roles, ShardTable};

/// A snapshot that cannot be loaded. The state it was meant to replace is untouched.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot is not decodable: {0}")]
    Decode(String),
    #[error("snapshot is inconsistent: {0}")]
    Inconsistent(String),
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StateMachine {
    revision: Revision,
    keys: KeySpace,
    sessions: SessionTable,
    shards: ShardTable,
    locks: LockTable,
    services: ServiceTable,
    /// Access rules, tokens and the quota. Snapshots of earlier versions end before it.
    access: AccessTable,
    /// The standbys, and the positions a master is chosen by while a command applies.
    /// Snapshots of earlier versions end before it.
    roles: Roles,
    /// Shard groups and their slots. Snapshots of earlier versions end before the roles.
    groups: GroupTable,
    /// The checkpoint of the last revision that was a multiple of
    /// [`CHECKPOINT_EVERY`] this state applied (None after a snapshot loaded, until the
    /// next one). Derived, never in a snapshot.
    #[serde(skip)]
    checkpoint: Option<(Revision, Checkpoint)>,
}

/// The state as the version before wrote it in snapshots: everything but the roles and
/// the groups.
#[derive(Deserialize)]
struct StateMachineWithoutRoles {
    revision: Revision,
    keys: KeySpace,
    sessions: SessionTable,
    shards: ShardTable,
    locks: LockTable,
    services: ServiceTable,
    access: AccessTable,
}

/// The state as earlier versions wrote it in snapshots: everything but the access table.
#[derive(Deserialize)]
struct EarlierStateMachine {
    revision: Revision,
    keys: KeySpace,
    sessions: SessionTable,
    shards: ShardTable,
    locks: LockTable,
    services: ServiceTable,
}

/// Counts of what the state holds, for status answers and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    pub keys: usize,
    pub sessions: usize,
    pub shards: usize,
    pub locks: usize,
    pub service_instances: usize,
}

type Outcome = Result<Answer, CommandError>;

impl StateMachine {
    pub fn new() -> Self {
        Self::default()
    }

    /// The revision of the last write applied.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The checkpoint of the last multiple of [`CHECKPOINT_EVERY`] this state applied,
    /// with its revision: the same on every member and every agent that applied it.
    pub fn checkpoint(&self) -> Option<(Revision, Checkpoint)> {
        self.checkpoint
    }

    /// A checksum of the whole state as it is now (see [`crate::digest`]): the keys' digest,
    /// kept as they change, and the other tables hashed whole.
    pub fn compute_checkpoint(&self) -> Checkpoint {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(b"corral-checkpoint-v1\0");
        context.update(&self.revision.to_le_bytes());
        self.keys.digest().write_to(&mut context);
        let tables = (
            &self.sessions,
            &self.shards,
            &self.locks,
            &self.services,
            &self.access,
        );
        let bytes = postcard::to_stdvec(&tables).expect("the tables always encode");
        context.update(&bytes);
        // Hashed only once there are standbys or groups: a state without any sums as it
        // did before there were, on members and agents of either version.
        if !self.roles.is_empty() || !self.groups.is_empty() {
            let bytes = postcard::to_stdvec(&(&self.roles, &self.groups))
                .expect("the roles and groups always encode");
            context.update(&bytes);
        }
        let mut checkpoint = [0u8; 32];
        checkpoint.copy_from_slice(context.finish().as_ref());
        checkpoint
    }

    /// Takes the checkpoint when the revision is one of those that get one.
    fn after_revision(&mut self) {
        if self.revision.is_multiple_of(CHECKPOINT_EVERY) {
            self.checkpoint = Some((self.revision, self.compute_checkpoint()));
        }
    }

    // ----- reads -------------------------------------------------------------------

    pub fn get(&self, key: &str) -> Option<KeyValue> {
        self.keys.get(key).map(|r| r.to_key_value(key))
    }

    /// Up to `limit` keys under `prefix`, after `start_after`; the flag says whether more
    /// remain.
    pub fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> (Vec<KeyValue>, bool) {
        let mut iter = self.keys.range_prefix(prefix, start_after);
        let items: Vec<_> = iter
            .by_ref()
            .take(limit)
            .map(|(k, r)| r.to_key_value(k))
            .collect();
        let more = iter.next().is_some();
        (items, more)
    }

    /// Answers a range read, or refuses one whose keys and values exceed `bytes_max`
    /// with the bytes it would hold.
    pub fn range(&self, query: &RangeQuery, bytes_max: u64) -> Result<RangeResult, u64> {
        self.keys.range(query, bytes_max)
    }

    /// Whether every compare of `txn` holds now: whether its success branch would run.
    pub fn compares_hold(&self, txn: &Txn) -> bool {
        self.keys.txn_branch(txn).0
    }

    /// Whether a key of `range` was created before revision `revision`: what a waiter
    /// in etcd's lock and election recipes waits on, without sorting the range.
    pub fn created_before(&self, range: &KeyRange, revision: Revision) -> bool {
        self.keys
            .in_range(range)
            .any(|(_, record)| record.create_revision < revision)
    }

    /// The keys bound to `session` (its ephemeral keys), in order.
    pub fn session_keys(&self, session: SessionId) -> Vec<String> {
        self.sessions
            .owned(session)
            .map(|owned| owned.keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn shard(&self, name: &str) -> Option<&Shard> {
        self.shards.get(name)
    }

    pub fn shards(&self) -> impl Iterator<Item = &Shard> {
        self.shards.iter()
    }

    pub fn lock(&self, name: &str) -> Option<&Lock> {
        self.locks.get(name)
    }

    pub fn locks(&self) -> impl Iterator<Item = &Lock> {
        self.locks.iter()
    }

    pub fn service(&self, name: &str) -> impl Iterator<Item = &ServiceInstance> {
        self.services.instances(name)
    }

    pub fn service_names(&self) -> impl Iterator<Item = &String> {
        self.services.names()
    }

    pub fn service_instances(&self) -> impl Iterator<Item = &ServiceInstance> {
        self.services.iter()
    }

    pub fn session(&self, id: SessionId) -> Option<Session> {
        self.sessions.get(id).map(|owner| Session {
            id,
            owner: owner.clone(),
        })
    }

    pub fn sessions(&self) -> impl Iterator<Item = Session> + '_ {
        self.sessions.iter()
    }

    /// True when `session` owns nothing: no key, replica, lock, place in a lock's queue,
    /// service instance or client session.
    pub fn owns_nothing(&self, session: SessionId) -> bool {
        self.sessions.owns_nothing(session)
    }

    /// The open node session of `name` and its incarnation.
    pub fn node_session(&self, name: &str) -> Option<(SessionId, u64)> {
        self.sessions.node_session(name)
    }

    /// The node whose session (or a client session under it) registered replica
    /// `address` of `shard`.
    pub fn replica_node(&self, shard: &str, address: &str) -> Option<&str> {
        let session = self.shards.replica_session(shard, address).ok()?;
        let node_session = match self.sessions.get(session)? {
            SessionOwner::Node { name, .. } => return Some(name),
            SessionOwner::Client { node_session, .. } => *node_session,
        };
        match self.sessions.get(node_session)? {
            SessionOwner::Node { name, .. } => Some(name),
            SessionOwner::Client { .. } => None,
        }
    }

    pub fn group(&self, name: &str) -> Option<&corral_proto::slots::ShardGroup> {
        self.groups.get(name)
    }

    pub fn groups(&self) -> impl Iterator<Item = &corral_proto::slots::ShardGroup> {
        self.groups.iter()
    }

    /// Where `key` goes in group `group` (None: no such group).
    pub fn route(&self, group: &str, key: &str) -> Option<corral_proto::slots::Route> {
        self.groups
            .get(group)?
            .route(key.as_bytes(), |shard| self.shards.get(shard))
    }

    /// True when replica `address` of `shard` is a standby: it never becomes master.
    pub fn is_standby(&self, shard: &str, address: &str) -> bool {
        self.roles.is_standby(shard, address)
    }

    /// The access rules, tokens and quota.
    pub fn access(&self) -> &AccessTable {
        &self.access
    }

    /// How full the state is.
    pub fn quota_use(&self) -> QuotaUse {
        QuotaUse {
            keys: self.keys.len() as u64,
            keys_max: self.access.quota.keys_max,
            bytes: self.keys.bytes(),
            bytes_max: self.access.quota.bytes_max,
        }
    }

    pub fn counts(&self) -> StateCounts {
        StateCounts {
            keys: self.keys.len(),
            sessions: self.sessions.len(),
            shards: self.shards.len(),
            locks: self.locks.len(),
            service_instances: self.services.len(),
        }
    }
}
