//! Pure translations between the socket API and the core: a request into the command the
//! core applies, a query into an answer from the replica, and an event batch through a
//! subscription's filter.

use corral_proto::api::{
    AgentRequest, ApiError, EventFilter, Query, QueryResult, SubscriptionItem,
};
use corral_proto::limits::LIST_KEYS_MAX;
use corral_proto::{
    Command, Compare, CompareOp, CompareTarget, Event, EventBatch, Revision, ServiceSummary,
    SessionId, Txn, TxnOp,
};
use corral_state::StateMachine;

/// Which session a write binds what it creates to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Nothing session-bound.
    None,
    /// The connection's client session (opened on first use).
    Connection,
    /// A session of the request's own, held by the agent until what it took is released
    /// or the host dies (`detach`).
    Node,
}

/// Whether a put of `txn` is ephemeral (bound to the session the transaction is sent in,
/// whatever session id the put names), so that the transaction needs a session.
pub fn txn_is_bound(txn: &Txn) -> bool {
    txn.success.iter().chain(&txn.failure).any(|op| {
        matches!(
            op,
            TxnOp::Put {
                session: Some(_),
                ..
            }
        )
    })
}

/// The session binding a write request needs.
pub fn binding_of(request: &AgentRequest) -> Binding {
    let bound = |detach: bool| {
        if detach {
            Binding::Node
        } else {
            Binding::Connection
        }
    };
    match request {
        AgentRequest::Put { ephemeral, .. } | AgentRequest::CompareAndSet { ephemeral, .. } => {
            if *ephemeral {
                Binding::Connection
            } else {
                Binding::None
            }
        }
        AgentRequest::Txn(txn) => {
            if txn_is_bound(txn) {
                Binding::Connection
            } else {
                Binding::None
            }
        }
        AgentRequest::JoinShard { detach, .. }
        | AgentRequest::AcquireLock { detach, .. }
        | AgentRequest::ReleaseLock { detach, .. }
        | AgentRequest::RegisterService { detach, .. } => bound(*detach),
        _ => Binding::None,
    }
}

/// The command for a write request, with `session` the session its binding resolved to.
/// None for requests that are not writes.
pub fn command_for(request: &AgentRequest, session: Option<SessionId>) -> Option<Command> {
    let need = || session.expect("a bound request gets a session");
    Some(match request.clone() {
        AgentRequest::Put {
            key,
            value,
            ephemeral,
        } => Command::Put {
            key,
            value,
            session: ephemeral.then(need),
        },
        AgentRequest::Delete { key, prefix } => Command::Delete { key, prefix },
        AgentRequest::CompareAndSet {
            key,
            version,
            value,
            ephemeral,
        } => Command::Txn(Txn {
            compares: vec![Compare {
                key: key.clone(),
                op: CompareOp::Equal,
                target: CompareTarget::Version(version),
            }],
            success: vec![TxnOp::Put {
                key,
                value,
                session: ephemeral.then(need),
            }],
            failure: vec![],
        }),
        AgentRequest::Txn(mut txn) => {
            for op in txn.success.iter_mut().chain(txn.failure.iter_mut()) {
                if let TxnOp::Put { session: s, .. } = op
                    && s.is_some()
                {
                    *s = Some(need());
                }
            }
            Command::Txn(txn)
        }
        AgentRequest::CreateShard { name } => Command::CreateShard { name },
        AgentRequest::DeleteShard { name } => Command::DeleteShard { name },
        AgentRequest::CreateGroup { name, shards } => Command::CreateGroup { name, shards },
        AgentRequest::DeleteGroup { name } => Command::DeleteGroup { name },
        AgentRequest::MoveSlots {
            group,
            first,
            last,
            to,
        } => Command::MoveSlots {
            group,
            first,
            last,
            to,
        },
        AgentRequest::FinishMove { group, commit } => Command::FinishMove { group, commit },
        // Priority 0 makes a standby, which only `JoinShard` says; any other priority goes
        // as the registration earlier versions know too.
        AgentRequest::JoinShard {
            shard,
            address,
            priority: 0,
            ..
        } => Command::JoinShard {
            shard,
            address,
            priority: 0,
            session: need(),
        },
        AgentRequest::JoinShard {
            shard,
            address,
            priority,
            ..
        } => Command::RegisterReplica {
            shard,
            address,
            priority,
            session: need(),
        },
        AgentRequest::SetPriority {
            shard,
            address,
            priority,
        } => Command::SetReplicaPriority {
            shard,
            address,
            priority,
        },
        AgentRequest::LeaveShard { shard, address } => {
            Command::DeregisterReplica { shard, address }
        }
        AgentRequest::Handover { shard, to, epoch } => Command::Handover { shard, to, epoch },
        AgentRequest::AcquireLock { name, wait_ms, .. } => Command::AcquireLock {
            name,
            session: need(),
            wait: wait_ms > 0,
        },
        AgentRequest::ReleaseLock { name, .. } => Command::ReleaseLock {
            name,
            session: need(),
        },
        AgentRequest::RegisterService {
            service,
            id,
            address,
            port,
            tags,
            ..
        } => Command::RegisterService {
            service,
            id,
            address,
            port,
            tags,
            session: need(),
        },
        AgentRequest::DeregisterService { service, id } => {
            Command::DeregisterService { service, id }
        }
        _ => return None,
    })
}

/// Answers a query from the replica's state.
pub fn answer(machine: &StateMachine, query: &Query) -> Result<QueryResult, ApiError> {
    Ok(match query {
        Query::Key(key) => QueryResult::Key(machine.get(key)),
        Query::Prefix { prefix, limit } => {
            let limit = (*limit as usize).clamp(1, LIST_KEYS_MAX);
            let (keys, more) = machine.list(prefix, None, limit);
            QueryResult::Keys { keys, more }
        }
        Query::Shard(name) => QueryResult::Shard(machine.shard(name).cloned()),
        Query::Group(name) => QueryResult::Group(machine.group(name).cloned()),
        Query::Route { group, key } => QueryResult::Route(machine.route(group, key)),
        Query::Shards => QueryResult::Shards(machine.shards().cloned().collect()),
        Query::Lock(name) => QueryResult::Lock(machine.lock(name).cloned()),
        Query::Locks => QueryResult::Locks(machine.locks().cloned().collect()),
        Query::Service(name) => QueryResult::Service(machine.service(name).cloned().collect()),
        Query::Page {
            prefix,
            start_after,
            limit,
        } => {
            let limit = (*limit as usize).clamp(1, LIST_KEYS_MAX);
            let (keys, more) = machine.list(prefix, start_after.as_deref(), limit);
            QueryResult::Keys { keys, more }
        }
        Query::ShardPage { start_after, limit } => {
            let (shards, more) = page(
                machine.shards(),
                |s| &s.name,
                start_after.as_deref(),
                *limit,
            );
            QueryResult::ShardPage { shards, more }
        }
        Query::LockPage { start_after, limit } => {
            let (locks, more) = page(machine.locks(), |l| &l.name, start_after.as_deref(), *limit);
            QueryResult::LockPage { locks, more }
        }
        Query::ServicePage { start_after, limit } => {
            let (names, more) = page(
                machine.service_names(),
                |name| name,
                start_after.as_deref(),
                *limit,
            );
            let services = names
                .into_iter()
                .map(|name| {
                    let mut instances = 0;
                    let mut tags = std::collections::BTreeSet::new();
                    for instance in machine.service(&name) {
                        instances += 1;
                        tags.extend(instance.tags.iter());
                    }
                    let tags = tags.into_iter().cloned().collect();
                    ServiceSummary {
                        name,
                        instances,
                        tags,
                    }
                })
                .collect();
            QueryResult::ServicePage { services, more }
        }
    })
}

/// One page of `items` (in name order): at most `limit` of them (within 1 and
/// `LIST_KEYS_MAX`), the first named after `start_after`; and whether more follow.
fn page<'a, T: Clone + 'a>(
    items: impl Iterator<Item = &'a T>,
    name: impl Fn(&T) -> &String,
    start_after: Option<&str>,
    limit: u32,
) -> (Vec<T>, bool) {
    let limit = (limit as usize).clamp(1, LIST_KEYS_MAX);
    let mut after =
        items.filter(|item| start_after.is_none_or(|after| name(item).as_str() > after));
    let page: Vec<T> = after.by_ref().take(limit).cloned().collect();
    (page, after.next().is_some())
}

/// True when `filter` lets `event` through.
pub fn matches(filter: &EventFilter, event: &Event) -> bool {
    match event {
        Event::KeyPut(kv) => filter.keys.as_ref().is_some_and(|p| kv.key.starts_with(p)),
        Event::KeyDeleted { key } => filter.keys.as_ref().is_some_and(|p| key.starts_with(p)),
        Event::SessionOpened(_) | Event::SessionClosed { .. } => filter.sessions,
        Event::ShardCreated { .. }
        | Event::ShardDeleted { .. }
        | Event::ReplicaAdded { .. }
        | Event::ReplicaRemoved { .. }
        | Event::ReplicaPriority { .. }
        | Event::GroupChanged(_)
        | Event::GroupDeleted { .. }
        | Event::MasterChanged { .. } => filter.shards,
        Event::LockGranted { .. }
        | Event::LockReleased { .. }
        | Event::LockQueued { .. }
        | Event::LockDequeued { .. } => filter.locks,
        Event::ServiceUp(_) | Event::ServiceDown { .. } => filter.services,
        // Access rules are the operators' business, read with `corral acl list`.
        Event::AccessChanged { .. } => false,
    }
}

/// The part of `batch` that `filter` lets through; None when nothing is left.
pub fn filter_batch(filter: &EventFilter, batch: &EventBatch) -> Option<EventBatch> {
    let events: Vec<Event> = batch
        .events
        .iter()
        .filter(|e| matches(filter, e))
        .cloned()
        .collect();
    (!events.is_empty()).then_some(EventBatch {
        revision: batch.revision,
        events,
    })
}

/// The state a subscriber restarts from when its history is gone.
pub fn reset_item(machine: &StateMachine, filter: &EventFilter) -> (Revision, SubscriptionItem) {
    let keys = match &filter.keys {
        Some(prefix) => machine.list(prefix, None, usize::MAX).0,
        None => Vec::new(),
    };
    let item = SubscriptionItem::Reset {
        revision: machine.revision(),
        keys,
        shards: if filter.shards {
            machine.shards().cloned().collect()
        } else {
            Vec::new()
        },
        locks: if filter.locks {
            machine.locks().cloned().collect()
        } else {
            Vec::new()
        },
        services: if filter.services {
            machine.service_instances().cloned().collect()
        } else {
            Vec::new()
        },
    };
    (machine.revision(), item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detached_and_connection_bound_requests_bind_to_the_right_session() {
        let acquire = |detach| AgentRequest::AcquireLock {
            name: "l".into(),
            wait_ms: 0,
            detach,
        };
        assert_eq!(binding_of(&acquire(false)), Binding::Connection);
        assert_eq!(binding_of(&acquire(true)), Binding::Node);
        let put = AgentRequest::Put {
            key: "k".into(),
            value: vec![],
            ephemeral: false,
        };
        assert_eq!(binding_of(&put), Binding::None);
        assert_eq!(
            command_for(&put, None),
            Some(Command::Put {
                key: "k".into(),
                value: vec![],
                session: None
            })
        );
        assert_eq!(command_for(&AgentRequest::Status, None), None);
    }

    #[test]
    fn a_key_filter_lets_only_its_prefix_through() {
        let filter = EventFilter::keys("a/");
        let batch = EventBatch {
            revision: 3,
            events: vec![
                Event::KeyDeleted { key: "a/1".into() },
                Event::KeyDeleted { key: "b/1".into() },
                Event::ShardCreated { shard: "s".into() },
            ],
        };
        let filtered = filter_batch(&filter, &batch).unwrap();
        assert_eq!(filtered.events.len(), 1);
        assert!(filter_batch(&EventFilter::keys("c/"), &batch).is_none());
        assert_eq!(
            filter_batch(&EventFilter::everything(), &batch)
                .unwrap()
                .events
                .len(),
            3
        );
    }
}
