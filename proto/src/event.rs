//! Events: what a committed command changed, in the order the command changed it.
//!
//! Applying a command yields its events; every member and every agent replica derives the
//! same events from the same log, so an event stream is simply the log seen through
//! [`Event`]s, each batch tagged with the revision that made it.

use crate::slots::ShardGroup;
use serde::{Deserialize, Serialize};

use crate::model::{
    CloseReason, KeyValue, LockGrant, Replica, Revision, ServiceInstance, Session, SessionId,
    SessionOwner,
};

/// One change to the core's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    KeyPut(KeyValue),
    KeyDeleted {
        key: String,
    },
    SessionOpened(Session),
    SessionClosed {
        session: SessionId,
        owner: SessionOwner,
        reason: CloseReason,
    },
    ShardCreated {
        shard: String,
    },
    ShardDeleted {
        shard: String,
    },
    ReplicaAdded {
        shard: String,
        replica: Replica,
    },
    ReplicaRemoved {
        shard: String,
        address: String,
    },
    /// A shard group was created or its slots changed hands (a move begun, finished or
    /// cancelled): the whole group as it is now.
    GroupChanged(ShardGroup),
    GroupDeleted {
        group: String,
    },
    /// A replica's priority changed (0: a standby, never master).
    ReplicaPriority {
        shard: String,
        address: String,
        priority: u32,
    },
    /// The core chose a new master (or none is left). `epoch` is the new epoch.
    MasterChanged {
        shard: String,
        master: Option<String>,
        previous: Option<String>,
        epoch: u64,
    },
    LockGranted {
        name: String,
        grant: LockGrant,
    },
    LockReleased {
        name: String,
        session: SessionId,
    },
    LockQueued {
        name: String,
        session: SessionId,
    },
    LockDequeued {
        name: String,
        session: SessionId,
    },
    ServiceUp(ServiceInstance),
    ServiceDown {
        service: String,
        id: String,
    },
    /// The access rules, tokens, their enforcement or the quota changed (`what` says
    /// which, for people).
    AccessChanged {
        what: String,
    },
}

/// The events of one applied command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    pub revision: Revision,
    pub events: Vec<Event>,
}

impl Event {
    /// The key this event concerns, for key events.
    pub fn key(&self) -> Option<&str> {
        match self {
            Event::KeyPut(kv) => Some(&kv.key),
            Event::KeyDeleted { key } => Some(key),
            _ => None,
        }
    }
}
