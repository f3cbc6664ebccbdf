//! Corral's replicated state: a deterministic [`StateMachine`] and the tables it is made
//! of. Every core member applies the Raft log with it, every agent's replica applies the
//! same entries from its watch stream, and the simulations run it as is: it depends on no
//! Raft, no runtime, no clock and no I/O (`corral-core` wraps it for openraft).
//!
//! ```text
//!   Command ──StateMachine::apply──► (CommandResponse, Vec<Event>)
//!   state_machine.rs  apply, snapshots, invariants      ownership.rs  who may touch what
//!   key_space.rs      keys, ranges, compares            access_changes.rs  rules, quota
//!   session_table.rs  sessions and what each owns       shard_table.rs  replicas, master
//!   lock_table.rs     holders, queues, fencing tokens   service_table.rs  instances
//!   group_table.rs    shard groups: hash slots, moves
//!   digest.rs         checksums of the state at revisions, kept as it changes
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod access_changes;
pub mod digest;
mod group_table;
mod key_space;
mod lock_table;
mod ownership;
mod service_table;
mod session_table;
mod shard_table;
mod state_machine;

pub use access_changes::QuotaUse;
pub use state_machine::{SnapshotError, StateCounts, StateMachine, Succession};
