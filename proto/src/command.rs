//! Commands: every change to the core's state is one of these, committed to the Raft log
//! and applied in log order by every member (and by every agent's replica).
//!
//! [`Command::validate`] checks every limit without looking at state; the core refuses an
//! invalid command before proposing it, and apply checks again so that a bad entry can
//! never change state.

use serde::{Deserialize, Serialize};

use crate::access::{AccessRule, Quota};
use crate::model::{SessionId, SessionOwner};
use crate::range::{KeyRange, RangeQuery};

/// Who asks for a command, as the core member that proposed it established: the name on
/// the certificate the request came under (checked by the member against the TLS peer,
/// never taken on trust), and the session the request acts in (chosen by the agent that
/// serves the app, which answers for its own apps only).
///
/// The state machine checks every owned thing a command touches against these: a
/// session's things belong to the certificate of its node, and within a node to the
/// session itself or to the node session above it. The certificate [`ADMIN_CERTIFICATE`]
/// may act on anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub certificate: String,
    pub session: Option<SessionId>,
}

/// The certificate name of the cluster's operators, who may act on anything.
pub const ADMIN_CERTIFICATE: &str = "admin";

impl Actor {
    pub fn is_admin(&self) -> bool {
        self.certificate == ADMIN_CERTIFICATE
    }
}

/// A change to the core's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Writes `value` under `key`. With `session`, the key is ephemeral: it is deleted
    /// when that session ends.
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        session: Option<SessionId>,
    },
    /// Deletes `key`, or with `prefix` every key that starts with it.
    Delete {
        key: String,
        prefix: bool,
    },
    /// Compares, then applies `success` or `failure` atomically.
    Txn(Txn),
    /// Opens a session (idempotent for the same owner).
    OpenSession {
        owner: SessionOwner,
    },
    /// Ends a session and everything it owns.
    CloseSession {
        session: SessionId,
    },
    /// Ends the node session of `name` if its incarnation is at most `incarnation` (never a
    /// newer one), with its client sessions: the core's reaction to a death that gossip
    /// declared.
    CloseNode {
        name: String,
        incarnation: u64,
    },
    /// Moves the open node session of `name` from incarnation `from` to the newer `to`,
    /// keeping the session, its client sessions and all they hold: an agent whose gossip
    /// identity was renewed while its process, and so its apps' connections, lived on.
    /// Refused if the node's open session is not at `from` (it was closed or superseded).
    RenewNode {
        name: String,
        from: u64,
        to: u64,
    },
    CreateShard {
        name: String,
    },
    /// Deletes a shard that has no replicas.
    DeleteShard {
        name: String,
    },
    /// Registers a replica of `shard` reachable at `address`, bound to `session`.
    RegisterReplica {
        shard: String,
        address: String,
        priority: u32,
        session: SessionId,
    },
    DeregisterReplica {
        shard: String,
        address: String,
    },
    /// Registers a replica as [`Command::RegisterReplica`] does, except that priority 0
    /// makes it a standby, which never becomes master. (`RegisterReplica`, which earlier
    /// versions send, makes every replica eligible whatever its priority; it is kept so
    /// that their log entries apply as they did.)
    JoinShard {
        shard: String,
        address: String,
        priority: u32,
        session: SessionId,
    },
    /// Sets the priority of a replica; 0 makes it a standby. A standby that is master
    /// hands the role to the best other replica (refused if there is none); a masterless
    /// shard takes a replica that becomes eligible as master.
    SetReplicaPriority {
        shard: String,
        address: String,
        priority: u32,
    },
    /// `command`, with the replication positions the leader last heard reported for the
    /// replicas that could succeed a master it takes away: a master chosen while applying
    /// it is the eligible replica with the highest position (priority, then registration,
    /// breaking ties; a replica with no position ranks below one with any). Added by the
    /// leader alone, around any other command (an [`Command::Act`] included).
    Promoting {
        positions: Vec<ReplicaPosition>,
        #[serde(deserialize_with = "crate::nesting::boxed_twice")]
        command: Box<Command>,
    },
    /// Creates shard group `name`: the slots split evenly among `shards` (which exist and
    /// are in no other group), in contiguous ranges in the order given.
    CreateGroup {
        name: String,
        shards: Vec<String>,
    },
    /// Deletes a shard group (its shards stay).
    DeleteGroup {
        name: String,
    },
    /// Begins moving slots `first..=last` of `group` to shard `to` (which exists and is in
    /// no other group): they stay with their owners, marked as moving, until
    /// [`Command::FinishMove`]. Refused while a move of the group is under way.
    MoveSlots {
        group: String,
        first: u16,
        last: u16,
        to: String,
    },
    /// Ends the move under way in `group`: with `commit`, every moving slot goes to its
    /// new shard at once; without, they stay where they are.
    FinishMove {
        group: String,
        commit: bool,
    },
    /// Planned hand-over of the master role to `to`, or to the best other replica. With
    /// `epoch`, only if the shard is still at that epoch.
    Handover {
        shard: String,
        to: Option<String>,
        epoch: Option<u64>,
    },
    /// Takes `name` for `session`, or with `wait` queues behind the holder.
    AcquireLock {
        name: String,
        session: SessionId,
        wait: bool,
    },
    /// Releases `name` if `session` holds it, or leaves its queue.
    ReleaseLock {
        name: String,
        session: SessionId,
    },
    RegisterService {
        service: String,
        id: String,
        address: String,
        port: u16,
        tags: Vec<String>,
        session: SessionId,
    },
    DeregisterService {
        service: String,
        id: String,
    },
    /// `command`, asked for by `actor`: applied only if the actor may act on everything
    /// owned that it touches (see [`Actor`]). Every write a core member proposes is
    /// wrapped so; entries from earlier versions are not, and apply unchecked as they did.
    Act {
        actor: Actor,
        // Twice: inside a [`Command::Promoting`].
        #[serde(deserialize_with = "crate::nesting::boxed_twice")]
        command: Box<Command>,
    },
    /// Sets the access rule `name` (None: removes it). Admin certificate only.
    SetRule {
        name: String,
        rule: Option<AccessRule>,
    },
    /// Sets the SHA-256 digest of the bearer token `name` (None: removes it). Admin only.
    SetToken {
        name: String,
        #[serde(with = "serde_bytes")]
        digest: Option<Vec<u8>>,
    },
    /// Turns enforcement of the access rules on (deny what no rule grants) or off.
    /// Admin only.
    SetEnforce {
        enforce: bool,
    },
    /// Sets the quota of the whole state. Admin only.
    SetQuota {
        quota: Quota,
    },
}

/// How far a replica has replicated, as its store counts (an offset, a GTID sequence):
/// reported by the replica to its agent and by the agent to the core's leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaPosition {
    pub shard: String,
    pub address: String,
    pub position: u64,
}

/// Compare-then-apply, atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// One condition of a transaction: `target(key) op value`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: String,
    pub op: CompareOp,
    pub target: CompareTarget,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// What of a key a compare looks at. An absent key has version, create and modify
/// revision 0 and no value (an absent value compares below every present one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(u64),
    CreateRevision(u64),
    ModifyRevision(u64),
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The session an ephemeral key is bound to (0: none), etcd's lease of a key.
    Session(u64),
}

/// A write inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        session: Option<SessionId>,
    },
    Delete {
        key: String,
        prefix: bool,
    },
    /// Reads a range as the branch has left it so far; its answer is
    /// [`crate::TxnOpResult::Range`].
    Range(RangeQuery),
    /// Deletes every key of a range.
    DeleteRange(KeyRange),
}

impl Command {
    /// A compare-and-set: put `value` under `key` only if the key's version is `version`
    /// (0 means the key must not exist).
    pub fn compare_and_set(
        key: String,
        version: u64,
        value: Vec<u8>,
        session: Option<SessionId>,
    ) -> Self {
        Command::Txn(Txn {
            compares: vec![Compare {
                key: key.clone(),
                op: CompareOp::Equal,
                target: CompareTarget::Version(version),
            }],
            success: vec![TxnOp::Put {
                key,
                value,
                session,
            }],
            failure: vec![],
        })
    }

    /// True when applying the command twice in a row has the same effect as once, so a
    /// client may repeat it after an outcome it could not observe (a lost connection).
    /// A repeat may answer an error that says the work was already done (e.g. a session
    /// that is no longer open), never change state a second time.
    pub fn is_idempotent(&self) -> bool {
        match self {
            Command::Put { .. } | Command::Delete { .. } | Command::Txn(_) => false,
            Command::Handover { epoch, .. } => epoch.is_some(),
            Command::Act { command, .. } | Command::Promoting { command, .. } => {
                command.is_idempotent()
            }
            Command::SetRule { .. }
            | Command::SetToken { .. }
            | Command::SetEnforce { .. }
            | Command::SetQuota { .. } => true,
            Command::OpenSession { .. }
            | Command::CloseSession { .. }
            | Command::CloseNode { .. }
            | Command::RenewNode { .. }
            | Command::CreateShard { .. }
            | Command::DeleteShard { .. }
            | Command::CreateGroup { .. }
            | Command::DeleteGroup { .. }
            | Command::MoveSlots { .. }
            | Command::FinishMove { .. }
            | Command::RegisterReplica { .. }
            | Command::JoinShard { .. }
            | Command::SetReplicaPriority { .. }
            | Command::DeregisterReplica { .. }
            | Command::AcquireLock { .. }
            | Command::ReleaseLock { .. }
            | Command::RegisterService { .. }
            | Command::DeregisterService { .. } => true,
        }
    }

    /// The session this command acts for, if any.
    pub fn session(&self) -> Option<SessionId> {
        match self {
            Command::Put { session, .. } => *session,
            Command::CloseSession { session }
            | Command::RegisterReplica { session, .. }
            | Command::JoinShard { session, .. }
            | Command::AcquireLock { session, .. }
            | Command::ReleaseLock { session, .. }
            | Command::RegisterService { session, .. } => Some(*session),
            Command::Act { command, .. } | Command::Promoting { command, .. } => command.session(),
            _ => None,
        }
    }

    /// The command itself, without the actor a core member wrapped it in and the
    /// positions the leader attached.
    pub fn unwrapped(&self) -> &Command {
        match self {
            Command::Act { command, .. } | Command::Promoting { command, .. } => {
                command.unwrapped()
            }
            other => other,
        }
    }

    /// This command asked for by `actor`; a command that names its actor already keeps it.
    pub fn acted_by(self, actor: Actor) -> Command {
        match self {
            act @ Command::Act { .. } => act,
            command => Command::Act {
                actor,
                command: Box::new(command),
            },
        }
    }
}

mod validate;

pub use validate::{InvalidCommand, validate_key, validate_name};

#[cfg(test)]
mod tests;
