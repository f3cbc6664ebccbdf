//! Durable storage of a core member.
//!
//! ```text
//!  data-dir/
//!    log/*.wal        log entries, vote, committed and purge pointers (LogStore, wal)
//!    snapshot.bin     the last snapshot of the state machine (SnapshotFile)
//! ```
//!
//! The log is the source of truth; the state machine lives in memory and is rebuilt on
//! start from the snapshot plus the committed log after it.

// openraft's storage traits fix the error type (`StorageError`, over 200 bytes).
#[allow(clippy::result_large_err)]
mod log_store;
mod snapshot_file;
mod state_store;
pub mod wal;

pub use log_store::{LOG_CACHE_BYTES, LogStore, SEGMENT_BYTES, WRITE_BATCH_MAX, WRITE_QUEUE_MAX};
pub use snapshot_file::{SnapshotFile, SnapshotFileError};
pub use state_store::StateStore;
