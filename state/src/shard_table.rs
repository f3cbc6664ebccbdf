//! Shards: replicas registered by sessions, the master the core chose among them, and the
//! fencing epoch that grows with every change of master.
//!
//! Invariants (checked by `StateMachine::check_invariants` in tests):
//! - the master, when set, is one of the shard's replicas, and never a standby;
//! - a shard with a replica that is not a standby always has a master;
//! - the epoch never decreases, and grows by exactly one per change of master.
//!
//! A master is chosen, when one must be, by [`Roles`]: the standbys (replicas joined or
//! set with priority 0) never are, and among the others the highest replication position
//! the leader attached to the command wins, then the highest priority, then the earliest
//! registration. Without positions (every command but those the leader wraps in
//! `Command::Promoting`) the choice is by priority and registration alone.

use std::collections::{BTreeMap, BTreeSet};

use corral_proto::{
    CommandError, Event, Replica, ReplicaPosition, Revision, SessionId, Shard,
    limits::SHARD_REPLICAS_MAX,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ShardTable {
    shards: BTreeMap<String, Shard>,
}

/// What decides a master beyond priority. In snapshots: the standbys. Never in one: the
/// positions of the command being applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Roles {
    /// `(shard, address)` of every replica that never becomes master.
    standbys: BTreeSet<(String, String)>,
    /// Replication positions by `(shard, address)`, while a `Command::Promoting` applies.
    #[serde(skip)]
    positions: BTreeMap<(String, String), u64>,
}

impl Roles {
    pub(crate) fn is_empty(&self) -> bool {
        self.standbys.is_empty()
    }

    pub(crate) fn is_standby(&self, shard: &str, address: &str) -> bool {
        self.standbys
            .contains(&(shard.to_string(), address.to_string()))
    }

    pub(crate) fn standbys(&self) -> impl Iterator<Item = &(String, String)> {
        self.standbys.iter()
    }

    /// Positions to choose masters by until [`Roles::forget_positions`].
    pub(crate) fn hear_positions(&mut self, positions: &[ReplicaPosition]) {
        self.positions = positions
            .iter()
            .map(|p| ((p.shard.clone(), p.address.clone()), p.position))
            .collect();
    }

    pub(crate) fn forget_positions(&mut self) {
        self.positions.clear();
    }

    fn set_standby(&mut self, shard: &str, address: &str, standby: bool) {
        let key = (shard.to_string(), address.to_string());
        if standby {
            self.standbys.insert(key);
        } else {
            self.standbys.remove(&key);
        }
    }

    /// The best replica of `shard` other than `excluding` that may be master.
    fn best_replica(&self, shard: &Shard, excluding: Option<&str>) -> Option<String> {
        shard
            .replicas
            .iter()
            .filter(|r| Some(r.address.as_str()) != excluding)
            .filter(|r| !self.is_standby(&shard.name, &r.address))
            .max_by_key(|r| {
                let position = self
                    .positions
                    .get(&(shard.name.clone(), r.address.clone()))
                    .copied();
                (
                    position,
                    r.priority,
                    std::cmp::Reverse(r.registered_revision),
                )
            })
            .map(|r| r.address.clone())
    }
}

/// What a registration did.
pub(crate) struct Registered {
    pub(crate) added: bool,
    pub(crate) master: Option<String>,
    pub(crate) epoch: u64,
}

impl ShardTable {
    pub(crate) fn get(&self, name: &str) -> Option<&Shard> {
        self.shards.get(name)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Shard> {
        self.shards.values()
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.len()
    }

    fn shard_mut(&mut self, name: &str) -> Result<&mut Shard, CommandError> {
        self.shards
            .get_mut(name)
            .ok_or_else(|| CommandError::NoSuchShard {
                name: name.to_string(),
            })
    }

    pub(crate) fn create(
        &mut self,
        name: &str,
        revision: Revision,
        events: &mut Vec<Event>,
    ) -> Result<(), CommandError> {
        if self.shards.contains_key(name) {
            return Err(CommandError::ShardExists {
                name: name.to_string(),
            });
        }
        self.shards.insert(
            name.to_string(),
            Shard {
                name: name.to_string(),
                replicas: Vec::new(),
                master: None,
                epoch: 0,
                create_revision: revision,
            },
        );
        events.push(Event::ShardCreated {
            shard: name.to_string(),
        });
        Ok(())
    }

    pub(crate) fn delete(
        &mut self,
        name: &str,
        events: &mut Vec<Event>,
    ) -> Result<(), CommandError> {
        let shard = self
            .shards
            .get(name)
            .ok_or_else(|| CommandError::NoSuchShard {
                name: name.to_string(),
            })?;
        if !shard.replicas.is_empty() {
            return Err(CommandError::ShardNotEmpty {
                name: name.to_string(),
                replicas: shard.replicas.len(),
            });
        }
        self.shards.remove(name);
        events.push(Event::ShardDeleted {
            shard: name.to_string(),
        });
        Ok(())
    }

    /// Adds a replica (a standby with `standby`); the first replica of a masterless shard
    /// that may be master becomes its master. A repeated registration by the same session
    /// changes nothing.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn register(
        &mut self,
        name: &str,
        address: &str,
        priority: u32,
        standby: bool,
        session: SessionId,
        revision: Revision,
        roles: &mut Roles,
        events: &mut Vec<Event>,
    ) -> Result<Registered, CommandError> {
        let shard = self.shard_mut(name)?;
        if let Some(existing) = shard.replicas.iter().find(|r| r.address == address) {
            if existing.session != session {
                return Err(CommandError::AddressTaken {
                    shard: name.to_string(),
                    address: address.to_string(),
                    session: existing.session,
                });
            }
            return Ok(Registered {
                added: false,
                master: shard.master.clone(),
                epoch: shard.epoch,
            });
        }
        if shard.replicas.len() >= SHARD_REPLICAS_MAX {
            return Err(CommandError::TooManyReplicas {
                shard: name.to_string(),
                max: SHARD_REPLICAS_MAX,
            });
        }
        let replica = Replica {
            address: address.to_string(),
            priority,
            session,
            registered_revision: revision,
        };
        shard.replicas.push(replica.clone());
        events.push(Event::ReplicaAdded {
            shard: name.to_string(),
            replica,
        });
        roles.set_standby(name, address, standby);
        if shard.master.is_none() && !standby {
            set_master(shard, Some(address.to_string()), events);
        }
        Ok(Registered {
            added: true,
            master: shard.master.clone(),
            epoch: shard.epoch,
        })
    }

    /// The session that registered `address` in shard `name`.
    pub(crate) fn replica_session(
        &self,
        name: &str,
        address: &str,
    ) -> Result<SessionId, CommandError> {
        let shard = self
            .shards
            .get(name)
            .ok_or_else(|| CommandError::NoSuchShard {
                name: name.to_string(),
            })?;
        shard
            .replicas
            .iter()
            .find(|r| r.address == address)
            .map(|r| r.session)
            .ok_or_else(|| CommandError::NoSuchReplica {
                shard: name.to_string(),
                address: address.to_string(),
            })
    }

    /// Removes the given replicas of one shard at once and, if the master was among them,
    /// promotes the best remaining replica in a single step (one epoch increment).
    pub(crate) fn remove_replicas(
        &mut self,
        name: &str,
        addresses: &BTreeSet<String>,
        roles: &mut Roles,
        events: &mut Vec<Event>,
    ) {
        let Some(shard) = self.shards.get_mut(name) else {
            return;
        };
        let before = shard.replicas.len();
        shard.replicas.retain(|r| {
            let gone = addresses.contains(&r.address);
            if gone {
                roles.set_standby(name, &r.address, false);
                events.push(Event::ReplicaRemoved {
                    shard: name.to_string(),
                    address: r.address.clone(),
                });
            }
            !gone
        });
        if shard.replicas.len() == before {
            return;
        }
        let master_gone = shard.master.as_ref().is_some_and(|m| addresses.contains(m));
        if master_gone {
            let next = roles.best_replica(shard, None);
            set_master(shard, next, events);
        }
    }

    /// Sets the priority of replica `address` (0: a standby). A standby cannot stay
    /// master: the role goes to the best other replica, and the change is refused when
    /// there is none. A masterless shard takes the replica if it may now be master.
    pub(crate) fn set_priority(
        &mut self,
        name: &str,
        address: &str,
        priority: u32,
        roles: &mut Roles,
        events: &mut Vec<Event>,
    ) -> Result<(), CommandError> {
        let shard = self.shard_mut(name)?;
        let Some(index) = shard.replicas.iter().position(|r| r.address == address) else {
            return Err(CommandError::NoSuchReplica {
                shard: name.to_string(),
                address: address.to_string(),
            });
        };
        let standby = priority == 0;
        if shard.replicas[index].priority == priority && roles.is_standby(name, address) == standby
        {
            return Ok(());
        }
        let is_master = shard.master.as_deref() == Some(address);
        let successor = if standby && is_master {
            let next = roles.best_replica(shard, Some(address)).ok_or_else(|| {
                CommandError::NoHandoverTarget {
                    shard: name.to_string(),
                }
            })?;
            Some(next)
        } else {
            None
        };
        shard.replicas[index].priority = priority;
        roles.set_standby(name, address, standby);
        events.push(Event::ReplicaPriority {
            shard: name.to_string(),
            address: address.to_string(),
            priority,
        });
        if successor.is_some() {
            set_master(shard, successor, events);
        } else if shard.master.is_none() && !standby {
            set_master(shard, Some(address.to_string()), events);
        }
        Ok(())
    }

    /// Hands the master role to `to` or to the best other replica.
    pub(crate) fn handover(
        &mut self,
        name: &str,
        to: Option<&str>,
        expected_epoch: Option<u64>,
        roles: &Roles,
        events: &mut Vec<Event>,
    ) -> Result<(String, u64), CommandError> {
        let shard = self.shard_mut(name)?;
        if let Some(epoch) = expected_epoch
            && epoch != shard.epoch
        {
            return Err(CommandError::EpochMismatch {
                shard: name.to_string(),
                epoch: shard.epoch,
            });
        }
        let target = match to {
            Some(to) => {
                if !shard.replicas.iter().any(|r| r.address == to) {
                    return Err(CommandError::NoSuchReplica {
                        shard: name.to_string(),
                        address: to.to_string(),
                    });
                }
                if roles.is_standby(name, to) {
                    return Err(CommandError::Standby {
                        shard: name.to_string(),
                        address: to.to_string(),
                    });
                }
                to.to_string()
            }
            None => roles
                .best_replica(shard, shard.master.as_deref())
                .ok_or_else(|| CommandError::NoHandoverTarget {
                    shard: name.to_string(),
                })?,
        };
        if shard.master.as_deref() != Some(target.as_str()) {
            set_master(shard, Some(target.clone()), events);
        }
        Ok((target, shard.epoch))
    }
}

fn set_master(shard: &mut Shard, master: Option<String>, events: &mut Vec<Event>) {
    let previous = std::mem::replace(&mut shard.master, master.clone());
    shard.epoch += 1;
    events.push(Event::MasterChanged {
        shard: shard.name.clone(),
        master,
        previous,
        epoch: shard.epoch,
    });
}
