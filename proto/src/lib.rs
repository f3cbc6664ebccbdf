//! Corral's wire crate: the types every tier exchanges and the framing that carries them.
//!
//! ```text
//!   app ──[api, client]──► agent ──[Command]──► core ──apply──► [Answer] + [Event]s
//!          frame.rs: u32 length + version byte + postcard body, 4 MiB at most
//! ```
//!
//! The types hold no I/O. [`frame`] turns them into bytes and back, refusing anything
//! truncated, oversized or undecodable with a typed error. [`client`] is the async client
//! of the agent's socket; it and the agent poll a moment for what they await
//! ([`idle_poll`]).

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod access;
pub mod answer;
pub mod api;
#[cfg(feature = "io")]
pub mod client;
pub mod command;
pub mod event;
pub mod frame;
#[cfg(feature = "io")]
pub mod idle_poll;
pub mod limits;
pub mod model;
mod nesting;
pub mod range;
#[cfg(feature = "io")]
pub mod reconnecting;
pub mod shard_map;
pub mod slots;

pub use answer::{Answer, CommandError, CommandResponse, KeyMeta, TxnOpResult};
pub use api::{AgentRequest, ApiError, EventFilter, Query, QueryResult, Reply};
#[cfg(feature = "io")]
pub use client::{AgentClient, ClientError, ClientOptions, Subscription};
pub use command::{
    ADMIN_CERTIFICATE, Actor, Command, Compare, CompareOp, CompareTarget, InvalidCommand,
    ReplicaPosition, Txn, TxnOp,
};
pub use event::{Event, EventBatch};
pub use frame::FrameError;
pub use model::*;
#[cfg(feature = "io")]
pub use reconnecting::{ReconnectingClient, ReconnectingSubscription};
pub use shard_map::{ShardMap, ShardMapError};
