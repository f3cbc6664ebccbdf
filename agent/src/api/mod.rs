//! The agent's socket API.
//!
//! ```text
//!  server.rs      the Unix socket listener
//!  connection.rs  one app connection: requests, client session, subscriptions
//!  core_writes.rs the writes of all connections, batched on their way to the core
//!  translate.rs   requests into commands, queries into answers, event filters (no I/O)
//! ```

pub mod connection;
pub mod core_writes;
pub mod server;
pub mod translate;
