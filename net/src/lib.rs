//! How Corral's processes reach the core.
//!
//! ```text
//!   agent / tool ──QUIC "corral-core/2", mutual TLS──► core member
//!        │                                               │
//!     client (CoreClient): finds the leader,           rpc: CoreRequest ─► CoreResponse
//!     retries, watch streams                                 Watch ─► WatchItem frames
//! ```
//!
//! - [`transport`]: the cluster CA, node certificates, rustls configurations, QUIC
//!   endpoints with cached connections and one request per stream;
//! - [`rpc`]: the protocol agents and tools speak to core members (Raft between members
//!   has a protocol of its own, in `corral-core`);
//! - [`client`]: the client of the core that agents and tools use;
//! - [`batching`]: queued work taken in bounded batches (the core's proposer, an agent's
//!   writes to the core).
//!
//! Nothing here links Raft: an agent reaches the core through this crate alone.

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod batching;
pub mod client;
pub mod rpc;
pub mod transport;
pub mod watch_serve;
