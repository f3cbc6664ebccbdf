//! What applying a command answers: either an [`Answer`] or a [`CommandError`], with the
//! revision of the state it reflects.

use serde::{Deserialize, Serialize};

use crate::command::InvalidCommand;
use crate::model::{LockGrant, Revision, SessionId};
use crate::range::RangeResult;

/// The result of applying one command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse {
    /// The core's revision after this command: the command's own revision if it changed
    /// anything, otherwise the revision it was evaluated against.
    pub revision: Revision,
    /// Whether this command changed the state, so that `revision` is its own: a replica
    /// at `revision - 1` reaches `revision` by applying it.
    pub changed: bool,
    pub outcome: Result<Answer, CommandError>,
}

/// Header of a key after a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMeta {
    pub create_revision: Revision,
    pub modify_revision: Revision,
    pub version: u64,
}

/// The result of one operation of a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResult {
    Put(KeyMeta),
    Deleted {
        count: u64,
    },
    /// What a [`crate::TxnOp::Range`] read.
    Range(RangeResult),
}

/// What a successful command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Put(KeyMeta),
    Deleted {
        count: u64,
    },
    /// `succeeded` tells which branch ran; `results` are that branch's.
    Txn {
        succeeded: bool,
        results: Vec<TxnOpResult>,
    },
    /// `existing` is true when the same owner already had this session open.
    SessionOpened {
        session: SessionId,
        existing: bool,
    },
    /// The sessions that ended, parents before children; empty if none was open.
    SessionsClosed {
        sessions: Vec<SessionId>,
    },
    ShardCreated,
    ShardDeleted,
    /// The shard's master and epoch after the registration.
    ReplicaRegistered {
        master: Option<String>,
        epoch: u64,
    },
    ReplicaDeregistered {
        master: Option<String>,
        epoch: u64,
    },
    HandedOver {
        master: String,
        epoch: u64,
    },
    /// A shard group's version after the change.
    GroupChanged {
        version: u64,
    },
    GroupDeleted,
    /// The shard's master and epoch after a replica's priority changed.
    PrioritySet {
        master: Option<String>,
        epoch: u64,
    },
    LockGranted(LockGrant),
    /// The session waits; `position` 1 is next in line.
    LockQueued {
        position: usize,
    },
    /// The session released the lock (or left its queue); `next` is the new holder.
    LockReleased {
        next: Option<LockGrant>,
    },
    ServiceRegistered,
    ServiceDeregistered,
    /// An access rule, token, enforcement switch or quota was set.
    AccessSet,
}

/// Why a command was refused by the state machine. In every case nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CommandError {
    #[error(transparent)]
    Invalid(#[from] InvalidCommand),
    #[error("session {session} is not open")]
    NoSuchSession { session: SessionId },
    #[error("session {session} is not a node session")]
    NotNodeSession { session: SessionId },
    #[error("node {name} already has incarnation {incarnation}, newer than the one asked for")]
    NodeSuperseded { name: String, incarnation: u64 },
    #[error("node session {session} already has {max} client sessions")]
    TooManySessions { session: SessionId, max: usize },
    #[error("shard {name} already exists")]
    ShardExists { name: String },
    #[error("shard {name} does not exist")]
    NoSuchShard { name: String },
    #[error("shard {name} still has {replicas} replicas")]
    ShardNotEmpty { name: String, replicas: usize },
    #[error("address {address} of shard {shard} is registered by session {session}")]
    AddressTaken {
        shard: String,
        address: String,
        session: SessionId,
    },
    #[error("shard {shard} has no replica at {address}")]
    NoSuchReplica { shard: String, address: String },
    #[error("shard {shard} already has {max} replicas")]
    TooManyReplicas { shard: String, max: usize },
    #[error("shard {shard} is at epoch {epoch}, not the one expected")]
    EpochMismatch { shard: String, epoch: u64 },
    #[error("shard {shard} has no other replica to hand over to")]
    NoHandoverTarget { shard: String },
    #[error("shard group {name} already exists")]
    GroupExists { name: String },
    #[error("shard group {name} does not exist")]
    NoSuchGroup { name: String },
    #[error("shard {shard} is in shard group {group}")]
    ShardInGroup { shard: String, group: String },
    #[error("shard group {group} has a move under way: finish it first")]
    MoveUnderWay { group: String },
    #[error("shard group {group} has no move under way")]
    NoMove { group: String },
    #[error("there are already {max} shard groups")]
    TooManyGroups { max: usize },
    /// A replica of priority 0 never becomes master.
    #[error("replica {address} of shard {shard} has priority 0: a standby never becomes master")]
    Standby { shard: String, address: String },
    #[error("lock {name} is held by session {} with token {}", holder.session, holder.token)]
    LockHeld { name: String, holder: LockGrant },
    #[error("lock {name} already has {max} waiters")]
    TooManyWaiters { name: String, max: usize },
    #[error("session {session} neither holds nor waits for lock {name}")]
    NotLockHolder { name: String, session: SessionId },
    #[error("instance {id} of service {service} is registered by session {session}")]
    InstanceTaken {
        service: String,
        id: String,
        session: SessionId,
    },
    #[error("service {service} has no instance {id}")]
    NoSuchInstance { service: String, id: String },
    #[error("service {service} already has {max} instances")]
    TooManyInstances { service: String, max: usize },
    #[error("node {name} has no open session at incarnation {incarnation}")]
    NodeNotRenewable { name: String, incarnation: u64 },
    /// The command touches something owned by another session than the one it acts in
    /// (and not by a session under it): only the owner, the node session above it, or an
    /// operator's admin certificate may.
    #[error("{what} belongs to session {owner} (node {node}); this request acts in {}", acting_text(.acting))]
    NotOwner {
        what: String,
        owner: SessionId,
        node: String,
        acting: Option<SessionId>,
    },
    /// The command names a session opened under another certificate than the one it came
    /// under: a session is bound to the certificate of its node.
    #[error("session {session} belongs to node {node}, not to certificate {certificate}")]
    ForeignSession {
        session: SessionId,
        node: String,
        certificate: String,
    },
    /// A node session is opened or renewed only under the certificate of its own name.
    #[error(
        "the node session of {name} is opened and renewed only by {name} itself, not by {certificate}"
    )]
    ForeignNode { name: String, certificate: String },
    /// Only an operator's admin certificate changes the access rules and the quota.
    #[error("{what} is changed only under the admin certificate, not {certificate}")]
    AdminOnly { what: String, certificate: String },
    /// The write would grow the state past its quota; delete something first, or have
    /// an operator raise the quota.
    #[error("the state would hold {would} {what}, past its quota of {max}")]
    QuotaExceeded { what: String, would: u64, max: u64 },
    /// Too many access rules or tokens.
    #[error("the state already holds {max} {what}")]
    TooManyRules { what: String, max: usize },
    /// The reads of a transaction would answer more than one answer may carry; nothing
    /// was written. Read less at once (a limit, a narrower range).
    #[error("the transaction's reads hold {bytes} bytes, more than the {max} an answer carries")]
    RangeTooLarge { bytes: u64, max: u64 },
}

fn acting_text(acting: &Option<SessionId>) -> String {
    match acting {
        Some(session) => format!("session {session}"),
        None => "no session".to_string(),
    }
}
