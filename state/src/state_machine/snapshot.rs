//! The state as bytes and back: snapshots (of this version and the one before), the
//! index rebuilt from them, and the invariants every state holds.

use std::collections::{BTreeMap, BTreeSet};

use corral_proto::access::AccessTable;
use corral_proto::{SessionId, SessionOwner};

use super::{EarlierStateMachine, SnapshotError, StateMachine, StateMachineWithoutRoles};
use crate::group_table::GroupTable;
use crate::session_table::{Owned, SessionIndex};
use crate::shard_table::Roles;

impl StateMachine {
    /// The state as bytes. Deterministic: equal states give equal bytes. The buffer is
    /// sized first (a pass that only counts): grown by doubling, a 36 MB snapshot left
    /// 36 MB more of freed buffers behind it. Values are copied whole into it.
    pub fn to_snapshot_bytes(&self) -> Vec<u8> {
        let len = postcard::experimental::serialized_size(self)
            .expect("the state machine always encodes");
        let mut bytes = vec![0; len];
        let written = postcard::to_slice(self, &mut bytes)
            .expect("the state machine always encodes")
            .len();
        debug_assert_eq!(written, len);
        bytes
    }

    /// Loads a state from snapshot bytes, rebuilding the derived indices and checking the
    /// invariants, so that a corrupt or hostile snapshot is refused rather than served.
    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let mut state = match postcard::take_from_bytes::<StateMachine>(bytes) {
            Ok((state, [])) => state,
            // A snapshot of the version before ends before the roles and the groups.
            _ if let Ok((before, [])) =
                postcard::take_from_bytes::<StateMachineWithoutRoles>(bytes) =>
            {
                StateMachine {
                    revision: before.revision,
                    keys: before.keys,
                    sessions: before.sessions,
                    shards: before.shards,
                    locks: before.locks,
                    services: before.services,
                    access: before.access,
                    roles: Roles::default(),
                    groups: GroupTable::default(),
                    checkpoint: None,
                }
            }
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
                    roles: Roles::default(),
                    groups: GroupTable::default(),
                    checkpoint: None,
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
    pub(super) fn rebuild_index(&mut self) -> Result<(), SnapshotError> {
        self.sessions.index = self.derived_index()?;
        Ok(())
    }

    /// The ownership index as the tables give it, built beside the state (which stays as
    /// it is: checking a loaded snapshot costs the index, not a second copy of the state).
    fn derived_index(&self) -> Result<SessionIndex, SnapshotError> {
        let mut index = self.sessions.sessions_index();
        let missing = |what: &str, session: SessionId| {
            SnapshotError::Inconsistent(format!(
                "{what} refers to session {session}, which is not open"
            ))
        };
        let mut owned: BTreeMap<SessionId, Owned> = BTreeMap::new();
        for (key, record) in self.keys.iter() {
            if let Some(s) = record.session {
                owned.entry(s).or_default().keys.insert(key.to_string());
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
            let Some(entry) = index.owned.get_mut(&session) else {
                return Err(missing("an owned record", session));
            };
            let children = std::mem::take(&mut entry.children);
            *entry = Owned { children, ..things };
        }
        Ok(index)
    }

    /// Checks every invariant of the state, including that the ownership index matches
    /// what a rebuild from scratch gives.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.derived_index().map_err(|e| e.to_string())? != self.sessions.index {
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
            let eligible = shard
                .replicas
                .iter()
                .any(|r| !self.roles.is_standby(&shard.name, &r.address));
            match &shard.master {
                Some(master) if !addresses.contains(master) => {
                    return Err(format!(
                        "master {master} of shard {} is not a replica",
                        shard.name
                    ));
                }
                Some(master) if self.roles.is_standby(&shard.name, master) => {
                    return Err(format!(
                        "master {master} of shard {} is a standby",
                        shard.name
                    ));
                }
                None if eligible => {
                    return Err(format!(
                        "shard {} has replicas that may be master but no master",
                        shard.name
                    ));
                }
                _ => {}
            }
        }
        self.groups
            .check(|shard| self.shards.get(shard).is_some())?;
        for (shard, address) in self.roles.standbys() {
            let registered = self
                .shards
                .get(shard)
                .is_some_and(|s| s.replicas.iter().any(|r| &r.address == address));
            if !registered {
                return Err(format!(
                    "standby {address} of shard {shard} is not a replica"
                ));
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
}
