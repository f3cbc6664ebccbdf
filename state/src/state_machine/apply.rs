//! Applying one command: the revision, the events, and the dispatch to each table, after
//! the access rules, the quota and the ownership checks.

use std::collections::BTreeSet;

use corral_proto::{
    Answer, CloseReason, Command, CommandError, CommandResponse, Event, Revision, ServiceInstance,
    Session, SessionId, SessionOwner,
};

use super::{Outcome, StateMachine};
use crate::access_changes::{self};
use crate::lock_table::{Acquired, Released};
use crate::ownership::Ownership;

impl StateMachine {
    /// Applies one command. Returns the answer and the events it caused; the revision grows
    /// by one exactly when the event list is not empty.
    pub fn apply(&mut self, command: &Command) -> (CommandResponse, Vec<Event>) {
        let next = self.revision + 1;
        let mut events = Vec::new();
        let outcome = match command.validate() {
            Err(invalid) => Err(CommandError::Invalid(invalid)),
            Ok(()) => self.apply_valid(command, next, &mut events),
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
            self.after_revision();
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

    /// Applies a command that passed validation: the positions attached around it, then
    /// the actor's rights, then the command itself.
    fn apply_valid(
        &mut self,
        command: &Command,
        next: Revision,
        events: &mut Vec<Event>,
    ) -> Outcome {
        match command {
            Command::Promoting { positions, command } => {
                self.roles.hear_positions(positions);
                let outcome = self.apply_valid(command, next, events);
                self.roles.forget_positions();
                outcome
            }
            Command::Act { actor, command } => self
                .ownership()
                .authorize(actor, command)
                .and_then(|()| self.dispatch(command, next, events)),
            command => self.dispatch(command, next, events),
        }
    }

    pub(super) fn ownership(&self) -> Ownership<'_> {
        Ownership {
            sessions: &self.sessions,
            keys: &self.keys,
            shards: &self.shards,
            services: &self.services,
        }
    }

    pub(super) fn dispatch(
        &mut self,
        command: &Command,
        next: Revision,
        events: &mut Vec<Event>,
    ) -> Outcome {
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
                if let Some(group) = self.groups.group_of(name) {
                    return Err(CommandError::ShardInGroup {
                        shard: name.clone(),
                        group: group.to_string(),
                    });
                }
                self.shards.delete(name, events)?;
                Ok(Answer::ShardDeleted)
            }
            Command::CreateGroup { name, shards } => {
                let exists = |shard: &str| self.shards.get(shard).is_some();
                let version = self.groups.create(name, shards, exists, events)?;
                Ok(Answer::GroupChanged { version })
            }
            Command::DeleteGroup { name } => {
                self.groups.delete(name, events)?;
                Ok(Answer::GroupDeleted)
            }
            Command::MoveSlots {
                group,
                first,
                last,
                to,
            } => {
                let exists = |shard: &str| self.shards.get(shard).is_some();
                let version = self
                    .groups
                    .move_slots(group, (*first, *last), to, exists, events)?;
                Ok(Answer::GroupChanged { version })
            }
            Command::FinishMove { group, commit } => {
                let version = self.groups.finish_move(group, *commit, events)?;
                Ok(Answer::GroupChanged { version })
            }
            Command::RegisterReplica {
                shard,
                address,
                priority,
                session,
            }
            | Command::JoinShard {
                shard,
                address,
                priority,
                session,
            } => {
                self.require_session(Some(*session))?;
                // Only a join of this version makes a standby of priority 0.
                let standby = *priority == 0 && matches!(command, Command::JoinShard { .. });
                let registered = self.shards.register(
                    shard,
                    address,
                    *priority,
                    standby,
                    *session,
                    next,
                    &mut self.roles,
                    events,
                )?;
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
                self.shards.remove_replicas(
                    shard,
                    &BTreeSet::from([address.clone()]),
                    &mut self.roles,
                    events,
                );
                let after = self.shards.get(shard).expect("the shard was just found");
                Ok(Answer::ReplicaDeregistered {
                    master: after.master.clone(),
                    epoch: after.epoch,
                })
            }
            Command::Handover { shard, to, epoch } => {
                let (master, epoch) =
                    self.shards
                        .handover(shard, to.as_deref(), *epoch, &self.roles, events)?;
                Ok(Answer::HandedOver { master, epoch })
            }
            Command::SetReplicaPriority {
                shard,
                address,
                priority,
            } => {
                self.shards
                    .set_priority(shard, address, *priority, &mut self.roles, events)?;
                let after = self.shards.get(shard).expect("the shard was just found");
                Ok(Answer::PrioritySet {
                    master: after.master.clone(),
                    epoch: after.epoch,
                })
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
            Command::Promoting { .. } => Err(CommandError::Invalid(
                corral_proto::InvalidCommand::NestedPositions,
            )),
            Command::SetRule { .. }
            | Command::SetToken { .. }
            | Command::SetEnforce { .. }
            | Command::SetQuota { .. } => access_changes::apply(&mut self.access, command, events),
        }
    }

    /// Refuses a put of `len` bytes under `key` that would grow the state past its quota
    /// (a put that does not grow it always passes).
    pub(super) fn check_quota(&self, key: &str, len: usize) -> Result<(), CommandError> {
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

    pub(super) fn require_session(&self, session: Option<SessionId>) -> Result<(), CommandError> {
        match session {
            Some(s) if !self.sessions.contains(s) => {
                Err(CommandError::NoSuchSession { session: s })
            }
            _ => Ok(()),
        }
    }
}
