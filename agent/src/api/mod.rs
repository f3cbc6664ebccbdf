//! The agent's socket API.
//!
//! ```text
//!  server.rs      the Unix socket listener
//!  connection.rs  one app connection: requests, client session, subscriptions
//!  translate.rs   requests into commands, queries into answers, event filters (no I/O)
//! ```

pub mod connection;
pub mod server;
pub mod translate;
