//! The agent's local replica of the core's state.
//!
//! ```text
//!  replica.rs  the state and its checks, no I/O
//!  shared.rs   the replica shared between the feed and the API: locks, waits, signals
//!  feed.rs     the task fed by core watch streams, moving between members
//!  on_disk.rs  the replica saved in the data directory, for a restart
//!  publish.rs  the shard map file beside the socket, for lookups with no round trip
//! ```

pub mod feed;
pub mod on_disk;
pub mod publish;
#[allow(clippy::module_inception)]
pub mod replica;
pub mod shared;

pub use replica::{ItemOutcome, Replica, ReplicaError};
pub use shared::{ReplicaSignal, SharedReplica};
