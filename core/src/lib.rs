//! Corral's voting core.
//!
//! ```text
//!                 ┌──────────────────────── core member ───────────────────────┐
//!  agents ─QUIC─► │ server ──client_write──► openraft ──append──► log_store    │
//!  peers  ─QUIC─► │   │                          │              (segment WAL)  │
//!                 │   │ watch                    └─apply──► state_store      │
//!                 │   └──────────◄── history ◄──────────────  (StateMachine)   │
//!                 └─────────────────────────────────────────────────────────────┘
//! ```
//!
//! - [`state`]: the deterministic state machine (no I/O);
//! - `storage`: the durable Raft log and vote (segment files of checksummed records) and
//!   snapshot files;
//! - `transport`: QUIC with mutual TLS under the cluster CA, and the RPC framing;
//! - `server`: the member process: Raft, client requests, watch streams;
//! - [`batching`]: queued work taken in bounded batches (the proposer, agents' writes).

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod applied_state;
pub mod batching;
pub mod client;
pub mod raft_types;
pub mod rpc;
pub mod server;
/// The replicated state machine, from `corral-state` (where it lives, free of Raft and I/O).
pub use corral_state as state;
pub mod storage;
pub mod transport;
