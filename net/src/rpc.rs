//! The protocol agents and tools speak to core members (and members to one another,
//! for everything but Raft). Every request opens its own bidirectional stream and carries
//! one [`CoreRequest`] frame; the answer is one [`CoreResponse`] frame, except for a
//! watch, whose stream carries [`WatchItem`] frames until either side closes it.
//!
//! Raft's own messages travel on connections of another ALPN (`corral-raft/1`, in
//! `corral-core`), which only core members' certificates may open.

use std::time::Duration;

use corral_proto::access::AccessTable;
use corral_proto::{Command, CommandResponse, InvalidCommand, KeyValue, ReplicaPosition, Revision};
use corral_state::{QuotaUse, StateCounts};
use serde::{Deserialize, Serialize};

/// ALPN protocol name of the connections of agents and tools to core members. Version 2:
/// Raft's messages left this protocol for their own.
pub const ALPN_CORE: &[u8] = b"corral-core/2";

/// A core member's id (`core-<id>` in its certificate).
pub type NodeId = u64;

/// How often an agent beats on its watch stream, telling the member that it is alive.
pub const BEAT_INTERVAL: Duration = Duration::from_millis(500);

/// Longest encoded [`WatchBeat`] a member reads.
pub const BEAT_FRAME_MAX: usize = 512;

#[derive(Debug, Serialize, Deserialize)]
pub enum CoreRequest {
    /// Propose a command; only the leader accepts it.
    Write(Command),
    /// Confirm leadership with a quorum and answer the revision a linearizable read must
    /// reflect (the read index). Only the leader answers.
    ReadIndex,
    /// Read one key from this member's state; with `consistent`, through the read index.
    Get {
        key: String,
        consistent: bool,
    },
    /// Stream every command applied after revision `after` (None: start from a snapshot).
    Watch {
        after: Option<Revision>,
    },
    Status,
    /// A checksum of this member's whole state and the revision it is at, to compare
    /// members.
    StateDigest,
    /// Read one key from this member's own state, whatever its role.
    GetLocal {
        key: String,
    },
    /// Asked by a member with an empty data directory before it forms a cluster. `fresh`:
    /// the sender's log was empty when it wrote this request, on a connection already
    /// established with the receiver (so after the receiver started).
    Probe {
        fresh: bool,
    },
    AddVoter {
        id: NodeId,
        address: String,
    },
    RemoveVoter {
        id: NodeId,
    },
    /// Propose several commands, each answered on its own and in order (at most
    /// `WRITE_BATCH_MAX`). An agent sends the writes of its apps that queue up while
    /// earlier ones are in flight as one request.
    WriteBatch(Vec<Command>),
    /// Whether this member hears node `name` at `incarnation` or newer on a watch stream,
    /// and how long ago it last did (the core's liveness table). Asked by the leader of
    /// every member before it commits a death report.
    Heard {
        name: String,
        incarnation: u64,
    },
    /// The access rules, token digests, their enforcement and the quota (admin only).
    Access,
    /// A watch stream that carries progress items only, no entries: an agent fed by
    /// another agent beats on it (the core hears it as on a watch) and learns from it how
    /// far the core is, its leader and its term.
    Beats,
    /// The replication positions of replicas registered by node `node`'s sessions, as their
    /// stores last reported them to its agent (at most `POSITIONS_PER_NODE_MAX`). Only the
    /// leader keeps them, in memory; sent under the node's own certificate every
    /// [`POSITIONS_REPORT_INTERVAL`] and soon after a change.
    ReportPositions {
        node: String,
        positions: Vec<ReplicaPosition>,
    },
}

/// How often an agent reports its replicas' positions to the leader when none changed: a
/// new leader has them all within this.
pub const POSITIONS_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Most commands in one `WriteBatch`.
pub const WRITE_BATCH_MAX: usize = 256;

#[derive(Debug, Serialize, Deserialize)]
pub enum CoreResponse {
    Write(CommandResponse),
    ReadIndex {
        revision: Revision,
    },
    Get {
        revision: Revision,
        value: Option<KeyValue>,
    },
    Status(CoreStatus),
    StateDigest {
        revision: Revision,
        digest: u32,
        len: usize,
    },
    Probe {
        id: NodeId,
        initialized: bool,
        last_log_index: Option<u64>,
    },
    MembershipChanged(CoreStatus),
    Error(CoreError),
    /// One answer per command of a `WriteBatch`, in its order.
    WriteBatch(Vec<Result<CommandResponse, CoreError>>),
    Heard {
        heard: bool,
        /// Milliseconds since the node's last beat here (None: not heard).
        silent_ms: Option<u64>,
    },
    Access(AccessTable),
    /// How many positions of a `ReportPositions` the leader kept (those of replicas that
    /// are not the node's are not).
    PositionsKept {
        kept: usize,
    },
}

/// What the core refused, and why. Nothing was written in any case except where a variant
/// says the outcome is unknown.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CoreError {
    /// This member is not the leader; `leader` is the one it knows, with its address.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(NodeId, String)> },
    /// The core cannot serve now (no quorum, shutting down, still starting).
    #[error("core unavailable: {0}")]
    Unavailable(String),
    /// The leader lost leadership while the command was in flight: it may or may not have
    /// been committed.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    #[error(transparent)]
    Invalid(#[from] InvalidCommand),
    /// The caller's certificate does not allow this request.
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("membership change failed: {0}")]
    Membership(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A death report refused: a core member hears the reported node on its watch stream,
    /// so only gossip lost it (a partition of the gossip network).
    #[error("node {name} is alive to the core: member {member} heard it")]
    NodeAlive { name: String, member: NodeId },
    /// A death report refused for now: no member hears the node, but one heard it less
    /// than the node grace ago, so its session is held for an agent restarting there.
    /// Reported again after `retry_ms`, it goes through if the node stayed silent.
    #[error("node {name} is held for its grace: {retry_ms} ms more")]
    NodeInGrace { name: String, retry_ms: u64 },
}

/// A member's view of the cluster, as `corral core status` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreStatus {
    pub id: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    /// The last log id a quorum accepted, as this member knows it.
    pub committed: Option<LogPosition>,
    pub snapshot_index: Option<u64>,
    /// The log up to here was compacted into the snapshot.
    pub purged_index: Option<u64>,
    pub revision: Revision,
    /// Oldest revision a watcher can resume from without a snapshot.
    pub watch_history_floor: Revision,
    pub state: String,
    pub voters: Vec<MemberInfo>,
    pub learners: Vec<MemberInfo>,
    pub counts: StateCounts,
    /// On the leader: the revision at which its last check that every member holds the
    /// same state compared anything (the core's state check).
    pub state_checked: Option<Revision>,
    /// The members whose state differed from the majority's at that check (empty when
    /// they all agreed).
    pub state_differs: Vec<NodeId>,
    /// How full the state is against its quota; `alarm()` past 90%.
    pub quota: QuotaUse,
}

/// A position in the core's Raft log: the index, and the leader (term and member) that
/// wrote the entry there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LogPosition {
    pub term: u64,
    pub leader: NodeId,
    pub index: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: NodeId,
    pub address: String,
}

/// One frame of a watch stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchItem {
    /// Part of a snapshot of the whole state at `revision`; chunks arrive in order and the
    /// one with `last` completes it. Entries after `revision` follow.
    SnapshotChunk {
        revision: Revision,
        /// Encoded as bytes, copied whole (the same encoding as a sequence of `u8`).
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        last: bool,
    },
    /// One applied command that changed the state, making it `revision`.
    Entry {
        revision: Revision,
        command: Command,
    },
    /// Sent when idle, so the watcher knows the member is alive and how far it is.
    Progress {
        revision: Revision,
        leader: Option<NodeId>,
        term: u64,
        /// The sequence number of the last beat the member had received on this stream
        /// when it sent this: the item is no older than that beat, which lets the watcher
        /// date how fresh its copy is even when items sat in buffers (a frozen watcher).
        beat: Option<u64>,
    },
    /// A checksum of the whole state at `revision` (a multiple of
    /// `corral_state::digest::CHECKPOINT_EVERY`), as this member computed it applying that
    /// revision: an agent fed by another agent checks its own against it. Sent on
    /// progress-only streams ([`CoreRequest::Beats`]), once per new checkpoint.
    Checkpoint {
        revision: Revision,
        checksum: [u8; 32],
    },
}

/// What a watcher sends on its side of a watch stream: an agent beats every
/// [`BEAT_INTERVAL`] under its certificate's name and its current
/// gossip incarnation. A watcher that sends nothing (a CLI, a test) is served the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchBeat {
    pub name: String,
    pub incarnation: u64,
    /// Counts the stream's beats from 1; echoed in its progress items.
    pub seq: u64,
}

/// Size of one snapshot chunk on a watch stream.
pub const WATCH_SNAPSHOT_CHUNK_LEN: usize = 1024 * 1024;
