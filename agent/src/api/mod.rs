//! The agent's socket API.
//!
//! ```text
//!  server.rs      the Unix socket listener
//!  connection/    one app connection: requests and writes (mod.rs), reads (reads.rs),
//!                 its sessions and the held
//!                 sessions it acts in (sessions.rs), subscriptions (subscription.rs),
//!                 and what it sends, bounded in bytes (outgoing.rs)
//!  core_writes.rs the writes of all connections, batched on their way to the core
//!  read_index.rs  the linearizable reads of all connections, one read index per batch
//!  translate.rs   requests into commands, queries into answers, event filters (no I/O)
//!  rights.rs      what a request touches, checked against the access rules (no I/O)
//! ```

pub mod connection;
pub mod core_writes;
pub mod read_index;
pub mod rights;
pub mod server;
pub mod translate;
