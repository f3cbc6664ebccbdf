//! Corral's voting core.
//!
//! ```text
//!                 ┌──────────────────────── core member ───────────────────────┐
//!  agents ─QUIC─► │ server ──client_write──► openraft ──append──► log_store    │
//!  "corral-core/2"│   │                          │              (segment WAL)  │
//!  peers  ─QUIC─► │   │ watch                    └─apply──► state_store      │
//!  "corral-raft/1"│   └──────────◄── history ◄──────────────  (StateMachine)   │
//!                 └─────────────────────────────────────────────────────────────┘
//! ```
//!
//! - [`state`]: the deterministic state machine, from `corral-state` (no Raft, no I/O);
//! - `storage`: the durable Raft log and vote (segment files of checksummed records) and
//!   snapshot files;
//! - [`raft_rpc`]: Raft's messages between members, on their own ALPN;
//! - `server`: the member process: Raft, client requests, watch streams.
//!
//! What agents and tools send a member, the QUIC transport and the client live in
//! `corral-net`, which links no Raft.

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod applied_state;
pub mod raft_rpc;
pub mod raft_types;
pub mod server;
/// The replicated state machine, from `corral-state` (where it lives, free of Raft and I/O).
pub use corral_state as state;
pub mod storage;
