//! The replicated state: a deterministic [`StateMachine`] and the tables it is made of.

mod access_changes;
mod key_space;
mod lock_table;
mod ownership;
mod service_table;
mod session_table;
mod shard_table;
mod state_machine;

pub use access_changes::QuotaUse;
pub use state_machine::{SnapshotError, StateCounts, StateMachine};
