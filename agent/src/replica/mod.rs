//! The agent's local replica of the core's state.
//!
//! ```text
//!  replica.rs  the state and its checks, no I/O
//!  shared.rs   the replica shared between the feed and the API: locks, waits, signals
//!  feed.rs     the task that feeds the replica, from a core member or a relay
//!  feed_tree.rs  which agents feed which, from the gossip membership, no I/O
//!  relay.rs    feeding other agents from this one's replica
//!  beats.rs    the agent's beats to the core, that date the replica's freshness
//!  checkpoints.rs  the replica's checkpoints against the core's, no I/O
//!  on_disk.rs  the replica saved in the data directory, for a restart
//!  publish.rs  the shard map file beside the socket, for lookups with no round trip
//! ```

pub mod beats;
pub mod checkpoints;
pub mod feed;
pub mod feed_tree;
pub mod on_disk;
pub mod publish;
pub mod relay;
#[allow(clippy::module_inception)]
pub mod replica;
pub mod shared;

pub use replica::{ItemOutcome, Replica, ReplicaError};
pub use shared::{ReplicaSignal, SharedReplica};
