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

use std::collections::{BTreeMap, BTreeSet};

use corral_proto::access::AccessTable;
use corral_proto::limits::{CLIENT_SESSIONS_PER_NODE_MAX, TXN_RANGE_BYTES_MAX};
use corral_proto::range::{KeyRange, RangeQuery, RangeResult};
use corral_proto::{
    Answer, CloseReason, Command, CommandError, CommandResponse, Event, KeyValue, Lock, Revision,
    ServiceInstance, Session, SessionId, SessionOwner, Shard, Txn, TxnOp, TxnOpResult,
};
use serde::{Deserialize, Serialize};

use super::access_changes::{self, QuotaUse};
use super::key_space::KeySpace;
use super::lock_table::{Acquired, LockTable, Released};
use super::ownership::Ownership;
use super::service_table::ServiceTable;
use super::session_table::{Owned, SessionTable};
use super::shard_table::ShardTable;

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

    // ----- snapshots ---------------------------------------------------------------

    /// The state as bytes. Deterministic: equal states give equal bytes.
    pub fn to_snapshot_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("the state machine always encodes")
    }

    /// Loads a state from snapshot bytes, rebuilding the derived indices and checking the
    /// invariants, so that a corrupt or hostile snapshot is refused rather than served.
    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let mut state = match postcard::take_from_bytes::<StateMachine>(bytes) {
            Ok((state, [])) => state,
            // A snapshot of an earlier version ends before the access table.
            _ => {
                let (earlier, rest) = postcard::take_from_bytes::<EarlierStateMachine>(bytes)
                    .map_err(|e| SnapshotError::Decode(e.to_string()))?;
                if !rest.is_empty() {
                    return Err(SnapshotError::Decode(format!(
                        "{} trailing bytes",
                        rest.len()
                    )));
                }
                StateMachine {
                    revision: earlier.revision,
                    keys: earlier.keys,
                    sessions: earlier.sessions,
                    shards: earlier.shards,
                    locks: earlier.locks,
                    services: earlier.services,
                    access: AccessTable::default(),
                }
            }
        };
        state.keys.recount();
        state.rebuild_index()?;
        state
            .check_invariants()
            .map_err(SnapshotError::Inconsistent)?;
        Ok(state)
    }

    /// Rebuilds the ownership index from the tables.
    fn rebuild_index(&mut self) -> Result<(), SnapshotError> {
        self.sessions.reset_index();
        let missing = |what: &str, session: SessionId| {
            SnapshotError::Inconsistent(format!(
                "{what} refers to session {session}, which is not open"
            ))
        };
        let mut owned: BTreeMap<SessionId, Owned> = BTreeMap::new();
        for (key, record) in self.keys.iter() {
            if let Some(s) = record.session {
                owned.entry(s).or_default().keys.insert(key.clone());
            }
        }
        for shard in self.shards.iter() {
            for replica in &shard.replicas {
                owned
                    .entry(replica.session)
                    .or_default()
                    .replicas
                    .insert((shard.name.clone(), replica.address.clone()));
            }
        }
        for lock in self.locks.iter() {
            if let Some(holder) = &lock.holder {
                owned
                    .entry(holder.session)
                    .or_default()
                    .locks_held
                    .insert(lock.name.clone());
            }
            for waiter in &lock.waiters {
                owned
                    .entry(*waiter)
                    .or_default()
                    .locks_waiting
                    .insert(lock.name.clone());
            }
        }
        for instance in self.services.iter() {
            owned
                .entry(instance.session)
                .or_default()
                .services
                .insert((instance.service.clone(), instance.id.clone()));
        }
        for (session, things) in owned {
            if !self.sessions.contains(session) {
                return Err(missing("an owned record", session));
            }
            let entry = self.sessions.owned_mut(session);
            let children = std::mem::take(&mut entry.children);
            *entry = Owned { children, ..things };
        }
        Ok(())
    }

    /// Checks every invariant of the state, including that the ownership index matches
    /// what a rebuild from scratch gives.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut rebuilt = self.clone();
        rebuilt.rebuild_index().map_err(|e| e.to_string())?;
        if rebuilt.sessions.index != self.sessions.index {
            return Err("the ownership index differs from the tables".into());
        }
        for session in self.sessions.iter() {
            if let SessionOwner::Client { node_session, .. } = session.owner {
                match self.sessions.get(node_session) {
                    Some(SessionOwner::Node { .. }) => {}
                    _ => {
                        return Err(format!(
                            "client session {} has no open node session",
                            session.id
                        ));
                    }
                }
            }
            if session.id > self.revision {
                return Err(format!(
                    "session {} is newer than revision {}",
                    session.id, self.revision
                ));
            }
        }
        for shard in self.shards.iter() {
            let mut addresses = BTreeSet::new();
            for replica in &shard.replicas {
                if !addresses.insert(&replica.address) {
                    return Err(format!(
                        "shard {} lists {} twice",
                        shard.name, replica.address
                    ));
                }
            }
            match &shard.master {
                Some(master) if !addresses.contains(master) => {
                    return Err(format!(
                        "master {master} of shard {} is not a replica",
                        shard.name
                    ));
                }
                None if !shard.replicas.is_empty() => {
                    return Err(format!("shard {} has replicas but no master", shard.name));
                }
                _ => {}
            }
        }
        for lock in self.locks.iter() {
            let Some(holder) = &lock.holder else {
                return Err(format!("lock {} has no holder", lock.name));
            };
            if holder.token > self.revision {
                return Err(format!("lock {} has a token from the future", lock.name));
            }
            let mut seen = BTreeSet::new();
            for waiter in &lock.waiters {
                if *waiter == holder.session || !seen.insert(*waiter) {
                    return Err(format!(
                        "lock {} queues session {waiter} twice or behind itself",
                        lock.name
                    ));
                }
            }
        }
        for (key, record) in self.keys.iter() {
            if record.modify_revision > self.revision
                || record.create_revision > record.modify_revision
                || record.version == 0
            {
                return Err(format!("key {key:?} has inconsistent revisions"));
            }
        }
        Ok(())
    }

    // ----- apply -------------------------------------------------------------------

    /// Applies one command. Returns the answer and the events it caused; the revision grows
    /// by one exactly when the event list is not empty.
    pub fn apply(&mut self, command: &Command) -> (CommandResponse, Vec<Event>) {
        let next = self.revision + 1;
        let mut events = Vec::new();
        let outcome = match command.validate() {
            Err(invalid) => Err(CommandError::Invalid(invalid)),
            Ok(()) => match command {
                Command::Act { actor, command } => self
                    .ownership()
                    .authorize(actor, command)
                    .and_then(|()| self.dispatch(command, next, &mut events)),
                command => self.dispatch(command, next, &mut events),
            },
        };
        debug_assert!(
            outcome.is_ok() || events.is_empty(),
            "a refused command made events: {command:?}"
        );
        if outcome.is_err() {
            events.clear();
        }
        let changed = !events.is_empty();
        if changed {
            self.revision = next;
        }
        (
            CommandResponse {
                revision: self.revision,
                changed,
                outcome,
            },
            events,
        )
    }

    fn ownership(&self) -> Ownership<'_> {
        Ownership {
            sessions: &self.sessions,
            keys: &self.keys,
            shards: &self.shards,
            services: &self.services,
        }
    }

    fn dispatch(&mut self, command: &Command, next: Revision, events: &mut Vec<Event>) -> Outcome {
        match command {
            Command::Put {
                key,
                value,
                session,
            } => {
                self.require_session(*session)?;
                self.check_quota(key, value.len())?;
                Ok(Answer::Put(self.put(
                    key,
                    value.clone(),
                    *session,
                    next,
                    events,
                )))
            }
            Command::Delete { key, prefix } => Ok(Answer::Deleted {
                count: self.delete(key, *prefix, events),
            }),
            Command::Txn(txn) => self.apply_txn(txn, next, events),
            Command::OpenSession { owner } => self.open_session(owner, next, events),
            Command::CloseSession { session } => {
                if !self.sessions.contains(*session) {
                    return Err(CommandError::NoSuchSession { session: *session });
                }
                let closed = self.close_sessions(&[*session], CloseReason::Closed, next, events);
                Ok(Answer::SessionsClosed { sessions: closed })
            }
            Command::CloseNode { name, incarnation } => {
                let closed = match self.sessions.node_session(name) {
                    Some((session, current)) if current <= *incarnation => {
                        self.close_sessions(&[session], CloseReason::NodeDead, next, events)
                    }
                    _ => Vec::new(),
                };
                Ok(Answer::SessionsClosed { sessions: closed })
            }
            Command::RenewNode { name, from, to } => {
                let Some((session, current)) = self
                    .sessions
                    .node_session(name)
                    .filter(|(_, current)| current == from)
                else {
                    return Err(CommandError::NodeNotRenewable {
                        name: name.clone(),
                        incarnation: *from,
                    });
                };
                debug_assert!(current < *to, "validated: a renewal moves forwards");
                let owner = SessionOwner::Node {
                    name: name.clone(),
                    incarnation: *to,
                };
                self.sessions.renew(session, owner.clone());
                // The same session under its new owner: subscribers replace the owner.
                events.push(Event::SessionOpened(Session { id: session, owner }));
                Ok(Answer::SessionOpened {
                    session,
                    existing: true,
                })
            }
            Command::CreateShard { name } => {
                self.shards.create(name, next, events)?;
                Ok(Answer::ShardCreated)
            }
            Command::DeleteShard { name } => {
                self.shards.delete(name, events)?;
                Ok(Answer::ShardDeleted)
            }
            Command::RegisterReplica {
                shard,
                address,
                priority,
                session,
            } => {
                self.require_session(Some(*session))?;
                let registered = self
                    .shards
                    .register(shard, address, *priority, *session, next, events)?;
                if registered.added {
                    self.sessions
                        .owned_mut(*session)
                        .replicas
                        .insert((shard.clone(), address.clone()));
                }
                Ok(Answer::ReplicaRegistered {
                    master: registered.master,
                    epoch: registered.epoch,
                })
            }
            Command::DeregisterReplica { shard, address } => {
                let session = self.shards.replica_session(shard, address)?;
                self.sessions
                    .owned_mut(session)
                    .replicas
                    .remove(&(shard.clone(), address.clone()));
                self.shards
                    .remove_replicas(shard, &BTreeSet::from([address.clone()]), events);
                let after = self.shards.get(shard).expect("the shard was just found");
                Ok(Answer::ReplicaDeregistered {
                    master: after.master.clone(),
                    epoch: after.epoch,
                })
            }
            Command::Handover { shard, to, epoch } => {
                let (master, epoch) = self.shards.handover(shard, to.as_deref(), *epoch, events)?;
                Ok(Answer::HandedOver { master, epoch })
            }
            Command::AcquireLock {
                name,
                session,
                wait,
            } => {
                self.require_session(Some(*session))?;
                match self.locks.acquire(name, *session, *wait, next, events)? {
                    Acquired::Granted { grant, new } => {
                        if new {
                            self.sessions
                                .owned_mut(*session)
                                .locks_held
                                .insert(name.clone());
                        }
                        Ok(Answer::LockGranted(grant))
                    }
                    Acquired::Queued { position, new } => {
                        if new {
                            self.sessions
                                .owned_mut(*session)
                                .locks_waiting
                                .insert(name.clone());
                        }
                        Ok(Answer::LockQueued { position })
                    }
                }
            }
            Command::ReleaseLock { name, session } => {
                match self.locks.release(name, *session, next, events)? {
                    Released::Holder { next: next_grant } => {
                        self.sessions.owned_mut(*session).locks_held.remove(name);
                        if let Some(grant) = &next_grant {
                            let owned = self.sessions.owned_mut(grant.session);
                            owned.locks_waiting.remove(name);
                            owned.locks_held.insert(name.clone());
                        }
                        Ok(Answer::LockReleased { next: next_grant })
                    }
                    Released::Waiter => {
                        self.sessions.owned_mut(*session).locks_waiting.remove(name);
                        Ok(Answer::LockReleased { next: None })
                    }
                }
            }
            Command::RegisterService {
                service,
                id,
                address,
                port,
                tags,
                session,
            } => {
                self.require_session(Some(*session))?;
                let node = self
                    .sessions
                    .node_name(*session)
                    .unwrap_or_default()
                    .to_string();
                let instance = ServiceInstance {
                    service: service.clone(),
                    id: id.clone(),
                    node,
                    address: address.clone(),
                    port: *port,
                    tags: tags.clone(),
                    session: *session,
                };
                if self.services.register(instance, events)? {
                    self.sessions
                        .owned_mut(*session)
                        .services
                        .insert((service.clone(), id.clone()));
                }
                Ok(Answer::ServiceRegistered)
            }
            Command::DeregisterService { service, id } => {
                let session = self.services.session_of(service, id)?;
                self.sessions
                    .owned_mut(session)
                    .services
                    .remove(&(service.clone(), id.clone()));
                self.services.remove(service, id, events);
                Ok(Answer::ServiceDeregistered)
            }
            Command::Act { .. } => Err(CommandError::Invalid(
                corral_proto::InvalidCommand::NestedActor,
            )),
            Command::SetRule { .. }
            | Command::SetToken { .. }
            | Command::SetEnforce { .. }
            | Command::SetQuota { .. } => access_changes::apply(&mut self.access, command, events),
        }
    }

    /// Refuses a put of `len` bytes under `key` that would grow the state past its quota
    /// (a put that does not grow it always passes).
    fn check_quota(&self, key: &str, len: usize) -> Result<(), CommandError> {
        let (keys, bytes) = self.keys.after_put(key, len);
        let quota = self.access.quota;
        if keys > quota.keys_max && keys > self.keys.len() as u64 {
            return Err(CommandError::QuotaExceeded {
                what: "keys".into(),
                would: keys,
                max: quota.keys_max,
            });
        }
        if bytes > quota.bytes_max && bytes > self.keys.bytes() {
            return Err(CommandError::QuotaExceeded {
                what: "bytes of keys and values".into(),
                would: bytes,
                max: quota.bytes_max,
            });
        }
        Ok(())
    }

    fn require_session(&self, session: Option<SessionId>) -> Result<(), CommandError> {
        match session {
            Some(s) if !self.sessions.contains(s) => {
                Err(CommandError::NoSuchSession { session: s })
            }
            _ => Ok(()),
        }
    }

    fn put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        session: Option<SessionId>,
        next: Revision,
        events: &mut Vec<Event>,
    ) -> corral_proto::KeyMeta {
        let outcome = self.keys.put(key, value, session, next);
        if outcome.previous_session != session {
            if let Some(old) = outcome.previous_session {
                self.sessions.owned_mut(old).keys.remove(key);
            }
            if let Some(new) = session {
                self.sessions.owned_mut(new).keys.insert(key.to_string());
            }
        }
        let record = self.keys.get(key).expect("the key was just written");
        events.push(Event::KeyPut(record.to_key_value(key)));
        outcome.meta
    }

    fn delete(&mut self, key: &str, prefix: bool, events: &mut Vec<Event>) -> u64 {
        let names = self.keys.matching(key, prefix);
        for name in &names {
            self.remove_key(name, events);
        }
        names.len() as u64
    }

    fn remove_key(&mut self, key: &str, events: &mut Vec<Event>) {
        if let Some(record) = self.keys.remove(key) {
            if let Some(session) = record.session {
                self.sessions.owned_mut(session).keys.remove(key);
            }
            events.push(Event::KeyDeleted {
                key: key.to_string(),
            });
        }
    }

    /// Deletes every key of `range`.
    fn delete_range(&mut self, range: &KeyRange, events: &mut Vec<Event>) -> u64 {
        let names: Vec<String> = self.keys.in_range(range).map(|(k, _)| k.clone()).collect();
        for name in &names {
            self.remove_key(name, events);
        }
        names.len() as u64
    }

    /// An upper bound of the bytes the reads of `branch` answer: exact for a read before
    /// any write; after one, every key of its range plus everything the branch puts.
    fn txn_range_bytes(&self, branch: &[TxnOp]) -> u64 {
        let mut total = 0u64;
        let mut written = false;
        let put_bytes: u64 = branch
            .iter()
            .map(|op| match op {
                TxnOp::Put { key, value, .. } => (key.len() + value.len()) as u64,
                _ => 0,
            })
            .sum();
        for op in branch {
            match op {
                TxnOp::Range(query) if !written => {
                    total += match self.keys.range(query, u64::MAX) {
                        Ok(result) => result
                            .keys
                            .iter()
                            .map(|kv| (kv.key.len() + kv.value.len()) as u64)
                            .sum(),
                        Err(bytes) => bytes,
                    };
                }
                TxnOp::Range(query) => {
                    let all = RangeQuery {
                        limit: 0,
                        sort: None,
                        ..query.clone()
                    };
                    total += put_bytes
                        + match self.keys.range(&all, u64::MAX) {
                            Ok(result) => result
                                .keys
                                .iter()
                                .map(|kv| (kv.key.len() + kv.value.len()) as u64)
                                .sum(),
                            Err(bytes) => bytes,
                        };
                }
                _ => written = true,
            }
        }
        total
    }

    fn apply_txn(&mut self, txn: &Txn, next: Revision, events: &mut Vec<Event>) -> Outcome {
        let (succeeded, branch) = self.keys.txn_branch(txn);
        if branch.iter().any(|op| matches!(op, TxnOp::Range(_))) {
            let bytes = self.txn_range_bytes(branch);
            if bytes > TXN_RANGE_BYTES_MAX {
                return Err(CommandError::RangeTooLarge {
                    bytes,
                    max: TXN_RANGE_BYTES_MAX,
                });
            }
        }
        // Check every operation of the branch before applying any, so that the branch is
        // all or nothing.
        let (mut keys_added, mut bytes_added) = (0u64, 0u64);
        for op in branch {
            if let TxnOp::Put {
                session,
                key,
                value,
            } = op
            {
                self.require_session(*session)?;
                let (keys, bytes) = self.keys.after_put(key, value.len());
                keys_added += keys.saturating_sub(self.keys.len() as u64);
                bytes_added += bytes.saturating_sub(self.keys.bytes());
            }
        }
        // Deletes in the branch are not counted against its puts: a branch that only
        // stays within the quota by deleting first is refused near the limit.
        let quota = self.access.quota;
        let keys_after = self.keys.len() as u64 + keys_added;
        if keys_added > 0 && keys_after > quota.keys_max {
            return Err(CommandError::QuotaExceeded {
                what: "keys".into(),
                would: keys_after,
                max: quota.keys_max,
            });
        }
        let bytes_after = self.keys.bytes() + bytes_added;
        if bytes_added > 0 && bytes_after > quota.bytes_max {
            return Err(CommandError::QuotaExceeded {
                what: "bytes of keys and values".into(),
                would: bytes_after,
                max: quota.bytes_max,
            });
        }
        let results = branch
            .iter()
            .map(|op| match op {
                TxnOp::Put {
                    key,
                    value,
                    session,
                } => TxnOpResult::Put(self.put(key, value.clone(), *session, next, events)),
                TxnOp::Delete { key, prefix } => TxnOpResult::Deleted {
                    count: self.delete(key, *prefix, events),
                },
                TxnOp::DeleteRange(range) => TxnOpResult::Deleted {
                    count: self.delete_range(range, events),
                },
                TxnOp::Range(query) => {
                    TxnOpResult::Range(self.keys.range(query, u64::MAX).unwrap_or_default())
                }
            })
            .collect();
        Ok(Answer::Txn { succeeded, results })
    }

    fn open_session(
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
    fn close_sessions(
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
            self.shards.remove_replicas(shard, addresses, events);
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
