//! The agent's socket API: what an app sends its local agent and what it gets back.
//!
//! ```text
//!  app ──ClientFrame{id, request}──► agent
//!  app ◄──AgentFrame::Reply{id, result}── agent          one reply per request
//!  app ◄──AgentFrame::Event{subscription, item}── agent  for each live subscription
//! ```
//!
//! Requests on one connection are multiplexed by `id`: an app may have many in flight (a
//! lock acquire waiting while it reads) and replies come in any order. The connection is
//! also the app's *client session*: ephemeral state it creates (an ephemeral key, a shard
//! replica, a service instance, a lock or a place in a lock's queue) belongs to it and is
//! released as soon as the connection closes. A request that asks to `detach` gets a
//! session of its own instead, which lives until what it took is released (or the host
//! dies); [`AgentRequest::OpenSession`] opens a session with a time-to-live that any
//! connection of the same Unix user may act in ([`AgentRequest::InSession`]).

use serde::{Deserialize, Serialize};

use crate::answer::{Answer, CommandError};
use crate::command::{InvalidCommand, Txn};
use crate::event::EventBatch;
use crate::model::{KeyValue, Lock, Revision, ServiceInstance, ServiceSummary, SessionId, Shard};
use crate::slots::{Route, ShardGroup};

/// Most requests one connection may have in flight; more are refused with
/// [`ApiError::TooManyRequests`].
pub const REQUESTS_IN_FLIGHT_MAX: usize = 1024;

/// Most subscriptions open on one connection.
pub const SUBSCRIPTIONS_PER_CONNECTION_MAX: usize = 64;

/// Longest wait a lock acquire may ask for.
pub const LOCK_WAIT_MAX_MS: u64 = 24 * 3600 * 1000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFrame {
    /// Chosen by the app; echoed in the reply. A subscription's events carry its id.
    pub id: u64,
    pub request: AgentRequest,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentFrame {
    Reply {
        id: u64,
        result: Result<Reply, ApiError>,
    },
    Event {
        subscription: u64,
        item: SubscriptionItem,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentRequest {
    /// The agent's own state: its identity, sessions, replica revision and age.
    Status,
    /// The gossip pool as this agent sees it, with each member's node session.
    Members,
    /// A read from the local replica; with `consistent`, it first waits for the revision
    /// the core leader confirms (linearizable).
    Read {
        query: Query,
        consistent: bool,
    },
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Bind the key to this connection's session: deleted when the connection closes.
        ephemeral: bool,
    },
    Delete {
        key: String,
        prefix: bool,
    },
    /// Put only if the key's version is `version` (0: only if the key does not exist).
    CompareAndSet {
        key: String,
        version: u64,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        ephemeral: bool,
    },
    /// A transaction. A put that names any session is bound to this connection's session.
    Txn(Txn),
    CreateShard {
        name: String,
    },
    DeleteShard {
        name: String,
    },
    /// Creates a shard group over existing shards, the slots split evenly among them.
    CreateGroup {
        name: String,
        shards: Vec<String>,
    },
    DeleteGroup {
        name: String,
    },
    /// Begins moving slots `first..=last` of `group` to shard `to`.
    MoveSlots {
        group: String,
        first: u16,
        last: u16,
        to: String,
    },
    /// Ends the move under way: with `commit` the slots change hands at once.
    FinishMove {
        group: String,
        commit: bool,
    },
    /// Register `address` as a replica of `shard`. The core picks the master: the
    /// replica with the highest reported position, then the highest priority, then the
    /// earliest; a replica of priority 0 is a standby and never becomes master.
    JoinShard {
        shard: String,
        address: String,
        priority: u32,
        detach: bool,
    },
    LeaveShard {
        shard: String,
        address: String,
    },
    /// Sets a replica's priority (0: a standby, never master), acting in the session
    /// that holds the replica.
    SetPriority {
        shard: String,
        address: String,
        priority: u32,
    },
    /// How far replica `address` of `shard` has replicated, as its store counts (an
    /// offset, a GTID sequence; higher is further). Nothing is written to the core: the
    /// agent keeps the last position of each replica of its host and reports them to the
    /// core's leader, which promotes the replica with the highest when a master must be
    /// replaced. Acting in the session that registered the replica.
    ReportPosition {
        shard: String,
        address: String,
        position: u64,
    },
    /// Planned hand-over of the master role, to `to` or the best other replica; with
    /// `epoch`, only if the shard is still at that epoch.
    Handover {
        shard: String,
        to: Option<String>,
        epoch: Option<u64>,
    },
    /// Acquire a lock. With `wait_ms` 0 the reply is immediate (granted or held); otherwise
    /// the session queues and the reply comes at the grant, or when the wait ends (then it
    /// leaves the queue and gets [`ApiError::Timeout`]).
    AcquireLock {
        name: String,
        wait_ms: u64,
        detach: bool,
    },
    ReleaseLock {
        name: String,
        detach: bool,
    },
    RegisterService {
        service: String,
        id: String,
        address: String,
        port: u16,
        tags: Vec<String>,
        detach: bool,
    },
    DeregisterService {
        service: String,
        id: String,
    },
    /// Stream events matching `filter` after revision `after` (None: from now). The reply
    /// comes first; events follow as [`AgentFrame::Event`]s under the request's id.
    Subscribe {
        filter: EventFilter,
        after: Option<Revision>,
    },
    Unsubscribe {
        subscription: u64,
    },
    /// Opens a session this agent holds for the app beyond its connection: with
    /// `ttl_ms`, it ends unless renewed within that time; without, it lives until closed
    /// or until this host dies. Requests act in it through [`AgentRequest::InSession`],
    /// from any connection of the same Unix user. `ttl_ms` lies within
    /// [`SESSION_TTL_MS_MIN`]..=[`SESSION_TTL_MS_MAX`].
    OpenSession {
        ttl_ms: Option<u64>,
        label: String,
    },
    /// Restarts a held session's time-to-live. Nothing is written to the core: the
    /// agent of the host keeps the clock.
    RenewSession {
        session: SessionId,
    },
    /// Ends a held session, releasing everything bound to it.
    CloseSession {
        session: SessionId,
    },
    /// `request`, acting in the held session `session`: what it creates is bound to that
    /// session, and what it removes must belong to it.
    InSession {
        session: SessionId,
        #[serde(deserialize_with = "crate::nesting::boxed_twice")]
        request: Box<AgentRequest>,
    },
    /// `request` of an HTTP client, checked against the access rules as the token named
    /// `token` (None: a client without one). Only the agent's own HTTP gateway may send
    /// it (a connection of the agent's Unix user or root); the gateway checked the token.
    OnBehalf {
        token: Option<String>,
        #[serde(deserialize_with = "crate::nesting::boxed_twice")]
        request: Box<AgentRequest>,
    },
    /// Makes the agent leave for good: it closes this host's node session (releasing the
    /// shards, services, locks and app sessions bound to it at once, without waiting out
    /// the core's node grace), leaves the gossip pool and exits. Only from a connection of
    /// the agent's own Unix user or root, never on behalf of an HTTP client.
    Leave,
}

/// Shortest time-to-live of a held session.
pub const SESSION_TTL_MS_MIN: u64 = 500;
/// Longest time-to-live of a held session.
pub const SESSION_TTL_MS_MAX: u64 = 24 * 3600 * 1000;

/// What a read asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    Key(String),
    /// Keys under a prefix, at most `limit` (capped by `LIST_KEYS_MAX`).
    Prefix {
        prefix: String,
        limit: u32,
    },
    Shard(String),
    /// A shard group and who owns which slots.
    Group(String),
    /// Where `key` goes in shard group `group`: slot, shard, master, version.
    Route {
        group: String,
        key: String,
    },
    Shards,
    Lock(String),
    Locks,
    Service(String),
    /// One page of the keys under a prefix: at most `limit` (capped by `LIST_KEYS_MAX`),
    /// the first after `start_after`. Ask again from the last key while `more` is true.
    Page {
        prefix: String,
        start_after: Option<String>,
        limit: u32,
    },
    /// One page of the shards, by name: at most `limit` (capped by `LIST_KEYS_MAX`), the
    /// first after `start_after`.
    ShardPage {
        start_after: Option<String>,
        limit: u32,
    },
    /// One page of the locks, by name, as [`Query::ShardPage`].
    LockPage {
        start_after: Option<String>,
        limit: u32,
    },
    /// One page of the services, by name, as [`Query::ShardPage`]: each with its number
    /// of instances and their tags.
    ServicePage {
        start_after: Option<String>,
        limit: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryResult {
    Key(Option<KeyValue>),
    /// `more` is true when keys beyond the limit exist.
    Keys {
        keys: Vec<KeyValue>,
        more: bool,
    },
    Shard(Option<Shard>),
    Shards(Vec<Shard>),
    Group(Option<ShardGroup>),
    /// None: no such group.
    Route(Option<Route>),
    Lock(Option<Lock>),
    Locks(Vec<Lock>),
    Service(Vec<ServiceInstance>),
    /// `more` is true when shards beyond the page exist.
    ShardPage {
        shards: Vec<Shard>,
        more: bool,
    },
    /// `more` is true when locks beyond the page exist.
    LockPage {
        locks: Vec<Lock>,
        more: bool,
    },
    /// `more` is true when services beyond the page exist.
    ServicePage {
        services: Vec<ServiceSummary>,
        more: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Status(AgentStatus),
    Members(Vec<MemberInfo>),
    Read(ReadReply),
    /// A write the core committed, at `revision`; the local replica has applied it.
    Written {
        revision: Revision,
        answer: Answer,
    },
    Subscribed {
        revision: Revision,
    },
    Unsubscribed,
    /// A held session opened (or renewed): requests name it with
    /// [`AgentRequest::InSession`]; None for a session that lives until closed.
    Session {
        session: SessionId,
        ttl_ms: Option<u64>,
    },
    /// The agent keeps the position reported ([`AgentRequest::ReportPosition`]) for the
    /// core's leader.
    PositionReported,
    /// The agent is leaving ([`AgentRequest::Leave`]) and exits: the core closed its node
    /// session at the revision given (None: it held none).
    Leaving {
        name: String,
        closed: Option<(SessionId, Revision)>,
    },
}

/// A read answered from the replica, with how fresh the replica is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadReply {
    pub revision: Revision,
    /// Milliseconds since the agent last heard from the core (None: never).
    pub age_ms: Option<u64>,
    pub result: QueryResult,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub name: String,
    pub incarnation: u64,
    pub gossip_address: String,
    pub node_session: Option<SessionId>,
    /// This connection's client session, if it holds ephemeral state.
    pub client_session: Option<SessionId>,
    pub revision: Revision,
    pub age_ms: Option<u64>,
    /// The core member the replica is fed from.
    pub feed: Option<String>,
    pub members_alive: usize,
    pub members_suspect: usize,
    pub members_down: usize,
    pub keys: usize,
    pub shards: usize,
    /// Gossip datagrams accepted, and dropped because the claimed sender did not match
    /// the connection's certificate (or was undecodable).
    pub gossip_received: u64,
    pub gossip_rejected: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    Alive,
    Suspect,
    Down,
}

/// One gossip member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub name: String,
    pub address: String,
    pub incarnation: u64,
    pub state: MemberState,
    /// Its node session in the core, as the replica shows it.
    pub session: Option<SessionId>,
}

/// Which events a subscription receives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFilter {
    /// Key events under this prefix (None: no key events).
    pub keys: Option<String>,
    pub shards: bool,
    pub locks: bool,
    pub services: bool,
    pub sessions: bool,
    /// Gossip membership changes (alive, suspect, down), as this agent sees them.
    pub members: bool,
}

impl EventFilter {
    pub fn everything() -> Self {
        EventFilter {
            keys: Some(String::new()),
            shards: true,
            locks: true,
            services: true,
            sessions: true,
            members: true,
        }
    }

    /// No events at all: the base to switch on what a subscriber wants, as in
    /// `EventFilter { shards: true, ..EventFilter::nothing() }`.
    pub fn nothing() -> Self {
        EventFilter {
            keys: None,
            shards: false,
            locks: false,
            services: false,
            sessions: false,
            members: false,
        }
    }

    pub fn keys(prefix: impl Into<String>) -> Self {
        EventFilter {
            keys: Some(prefix.into()),
            ..EventFilter::nothing()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubscriptionItem {
    /// The events of one revision that match the filter. Revisions only grow.
    Events(EventBatch),
    /// A gossip membership change seen by this agent (not part of the core's history).
    Member(MemberInfo),
    /// The revision asked for is older than the agent's history: the events in between
    /// are gone. Here is the matching state at `revision`; events after it follow.
    Reset {
        revision: Revision,
        keys: Vec<KeyValue>,
        shards: Vec<Shard>,
        locks: Vec<Lock>,
        services: Vec<ServiceInstance>,
    },
    /// The subscription ended (the subscriber fell too far behind, or the agent stops);
    /// resume with `after` = the last revision received.
    Ended { reason: String },
}

/// Why a request failed. Unless a variant says otherwise, nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ApiError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error(transparent)]
    Invalid(#[from] InvalidCommand),
    /// The core refused the command; `revision` is the state it was checked against.
    #[error("refused at revision {revision}: {error}")]
    Refused {
        revision: Revision,
        error: CommandError,
    },
    /// A compare-and-set found the key at another version; nothing was written.
    #[error("conflict on {key}: its version is {version} (0: absent), at revision {revision}")]
    Conflict {
        key: String,
        version: u64,
        revision: Revision,
    },
    /// The core cannot be reached or has no leader now.
    #[error("core unavailable: {0}")]
    Unavailable(String),
    /// The write may or may not have been committed (the leader failed meanwhile).
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The local replica has not caught up with the revision this answer needs.
    #[error("the local replica is at revision {replica}, behind {needed}")]
    ReplicaBehind { replica: Revision, needed: Revision },
    /// The connection's session was closed by the core (its node was declared dead).
    /// What it held is gone; the next ephemeral request opens a new session.
    #[error("session {0} was closed by the core")]
    SessionLost(SessionId),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("too many requests in flight on this connection (max {0})")]
    TooManyRequests(usize),
    #[error("unknown subscription {0}")]
    NoSuchSubscription(u64),
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// The session is not one this agent holds for this app's Unix user (never opened
    /// here, closed, expired, or another user's).
    #[error("session {session} is not held here for this user: {reason}")]
    NotHeld { session: SessionId, reason: String },
    /// The answer would not fit in one frame; nothing was changed and the connection
    /// lives on. Ask for less: a list takes `start_after` and `limit`.
    #[error("the answer of {len} bytes exceeds the frame limit of {max} bytes: {hint}")]
    TooLarge {
        len: usize,
        max: usize,
        hint: String,
    },
    /// The actor may not do this: the error names who owns what it touches.
    #[error("forbidden: {0}")]
    Forbidden(String),
}

impl ApiError {
    /// A stable code for the error, for JSON answers and scripts.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Invalid(_) => "invalid",
            ApiError::Refused { error, .. } => match error {
                CommandError::Invalid(_) => "invalid",
                CommandError::NoSuchSession { .. } | CommandError::NotNodeSession { .. } => {
                    "no_session"
                }
                CommandError::ShardExists { .. } | CommandError::GroupExists { .. } => "exists",
                CommandError::NoSuchShard { .. }
                | CommandError::NoSuchGroup { .. }
                | CommandError::NoSuchReplica { .. }
                | CommandError::NoSuchInstance { .. } => "not_found",
                CommandError::EpochMismatch { .. } => "epoch_mismatch",
                CommandError::LockHeld { .. } => "lock_held",
                CommandError::NotOwner { .. }
                | CommandError::ForeignSession { .. }
                | CommandError::ForeignNode { .. } => "not_owner",
                CommandError::AdminOnly { .. } => "forbidden",
                CommandError::QuotaExceeded { .. } => "quota_exceeded",
                _ => "refused",
            },
            ApiError::Conflict { .. } => "conflict",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::OutcomeUnknown(_) => "outcome_unknown",
            ApiError::ReplicaBehind { .. } => "replica_behind",
            ApiError::SessionLost(_) => "session_lost",
            ApiError::Timeout(_) => "timeout",
            ApiError::TooManyRequests(_) => "too_many_requests",
            ApiError::NoSuchSubscription(_) => "no_such_subscription",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::NotHeld { .. } => "no_session",
            ApiError::TooLarge { .. } => "too_large",
            ApiError::Forbidden(_) => "forbidden",
        }
    }
}
