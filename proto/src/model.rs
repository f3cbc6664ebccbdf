//! The records the core owns: keys, sessions, shards, locks and services, as they appear
//! in answers, events and snapshots.

use serde::{Deserialize, Serialize};

/// Position in the history of the core's state: grows by one with every applied write.
pub type Revision = u64;

/// Identifies a session. It is the revision of the write that opened the session, so it
/// is unique and never reused.
pub type SessionId = u64;

/// One key and its value, with the revisions that describe its history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since it last did not exist).
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub modify_revision: Revision,
    /// Number of writes since creation; 1 after the first put.
    pub version: u64,
    /// For an ephemeral key, the session whose end deletes it.
    pub session: Option<SessionId>,
}

/// Who a session belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SessionOwner {
    /// The session of an agent, tied to its gossip identity. It ends when the gossip pool
    /// declares this incarnation dead, when the agent leaves, or when a newer incarnation
    /// of the same name opens its own.
    Node { name: String, incarnation: u64 },
    /// A session of one app connection, held under its agent's node session.
    /// `client_key` is chosen by the agent and makes opening idempotent.
    Client {
        node_session: SessionId,
        client_key: u64,
        label: String,
    },
}

/// An open session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    pub owner: SessionOwner,
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseReason {
    /// Its owner closed it (an app connection closed, an agent left gracefully).
    Closed,
    /// The gossip pool declared its node dead.
    NodeDead,
    /// A newer incarnation of its node opened a session.
    Superseded,
    /// Its node session ended.
    ParentClosed,
}

/// One replica of a shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// Where clients reach this replica; unique within the shard.
    pub address: String,
    /// Higher is preferred when a master is chosen. 0: a standby that never becomes master
    /// (for replicas registered with `Command::JoinShard`; those registered by earlier
    /// versions stay eligible).
    pub priority: u32,
    pub session: SessionId,
    /// Revision of its registration: the tie-breaker between equal priorities.
    pub registered_revision: Revision,
}

/// A shard: its replicas, the master the core chose among them, and the fencing epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub name: String,
    /// Replicas in registration order.
    pub replicas: Vec<Replica>,
    /// Address of the master, one of `replicas`.
    pub master: Option<String>,
    /// Grows by one whenever the master changes. A master that sees a higher epoch than
    /// the one it was granted has been replaced.
    pub epoch: u64,
    pub create_revision: Revision,
}

impl Shard {
    /// The replicas other than the master, in registration order.
    pub fn slaves(&self) -> impl Iterator<Item = &Replica> {
        self.replicas
            .iter()
            .filter(move |r| Some(&r.address) != self.master.as_ref())
    }

    /// The replica record of the master.
    pub fn master_replica(&self) -> Option<&Replica> {
        let master = self.master.as_ref()?;
        self.replicas.iter().find(|r| &r.address == master)
    }
}

/// The current grant of a lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockGrant {
    pub session: SessionId,
    /// Fencing token: the revision of the grant, so tokens of a lock only grow.
    pub token: u64,
}

/// A lock: its holder and the sessions queued behind it, first come first served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub name: String,
    pub holder: Option<LockGrant>,
    pub waiters: Vec<SessionId>,
}

/// A service as a list of all services shows it: how many instances it has, and every
/// tag any of them carries (sorted, once each).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    pub name: String,
    pub instances: u32,
    pub tags: Vec<String>,
}

/// One registered instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInstance {
    pub service: String,
    pub id: String,
    /// Name of the node whose session holds the registration.
    pub node: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub session: SessionId,
}
