//! Every size and count the wire and the state machine accept, in one place.
//!
//! A request beyond any of these is refused with a clear error before it reaches the
//! log, so nothing that does not fit is ever committed.

/// Largest frame body (version byte + postcard body) on any connection: 4 MiB.
pub const FRAME_LEN_MAX: usize = 4 * 1024 * 1024;

/// Longest key, in bytes of UTF-8.
pub const KEY_LEN_MAX: usize = 4096;

/// Largest value stored under one key.
pub const VALUE_LEN_MAX: usize = 1024 * 1024;

/// Largest encoded command accepted for the log. Kept well below [`FRAME_LEN_MAX`] so a
/// single entry always fits in a replication frame.
pub const COMMAND_LEN_MAX: usize = 1536 * 1024;

/// Longest name of a shard, lock, service, service instance, node or replica address.
pub const NAME_LEN_MAX: usize = 256;

/// Most compares, and most operations per branch, in one transaction.
pub const TXN_OPS_MAX: usize = 128;

/// Most replicas registered in one shard.
pub const SHARD_REPLICAS_MAX: usize = 64;

/// Most replication positions the leader attaches to one command (see
/// `Command::Promoting`): the candidates of the shards whose masters it takes away, the
/// freshest first where there are more.
pub const PROMOTING_POSITIONS_MAX: usize = 4096;

/// Most replication positions one agent reports for its host's replicas.
pub const POSITIONS_PER_NODE_MAX: usize = 1024;

/// Most shards in one shard group.
pub const GROUP_SHARDS_MAX: usize = 1024;

/// Most shard groups.
pub const GROUPS_MAX: usize = 1024;

/// Most sessions queued behind the holder of one lock.
pub const LOCK_WAITERS_MAX: usize = 10_000;

/// Most instances of one service.
pub const SERVICE_INSTANCES_MAX: usize = 10_000;

/// Most tags on one service instance, and the longest tag.
pub const SERVICE_TAGS_MAX: usize = 32;
/// Longest service tag, in bytes.
pub const SERVICE_TAG_LEN_MAX: usize = 128;

/// Most client sessions open under one node session.
pub const CLIENT_SESSIONS_PER_NODE_MAX: usize = 65_536;

/// Most keys a single prefix list returns in one answer.
pub const LIST_KEYS_MAX: usize = 10_000;

/// Most keys the state holds unless an operator sets another quota.
pub const STATE_KEYS_MAX_DEFAULT: u64 = 2_000_000;

/// Most bytes of keys and values the state holds unless an operator sets another quota:
/// every agent holds all of it in memory.
pub const STATE_BYTES_MAX_DEFAULT: u64 = 1024 * 1024 * 1024;

/// Most access rules, and most tokens, the state holds.
pub const ACCESS_RULES_MAX: usize = 10_000;

/// Share of the quota past which the state raises its alarm, in percent.
pub const QUOTA_ALARM_PERCENT: u64 = 90;

/// Most bytes of keys and values the reads of one transaction answer, well under
/// [`FRAME_LEN_MAX`] so that the answer of a batch of writes always fits in a frame.
pub const TXN_RANGE_BYTES_MAX: u64 = 1024 * 1024;
