//! The HTTP/JSON gateway: the socket API's operations over HTTP, a live status page and
//! Prometheus metrics.
//!
//! ```text
//!  HTTP client ──► server.rs ─► guard.rs ─► routes.rs, shards.rs ─► gateway.rs ──AgentClient──►
//!                                                          the agent's own Unix socket ──► api/
//!                  sessions.rs sessions with a time-to-live and their keep-alive
//!                  watch.rs   one socket connection per stream (Server-Sent Events)
//!                  metrics    /metrics from the agent's counters and the core's status
//!                  page.html  GET /, no build step, no external assets
//! ```
//!
//! The gateway is a client of the agent's socket, so HTTP gets exactly the socket's
//! semantics (read-your-writes, consistent reads, conflicts) at the cost of one local
//! round trip. HTTP has no connection to bind ephemeral state to, so an HTTP client
//! opens a session with a time-to-live (`POST /v1/sessions`), keeps it alive, and names
//! it (`?session=ID`) on what it takes: locks, shard replicas, service instances and
//! ephemeral keys are released when it ends ([`sessions`]).
//!
//! Before any route, the guard ([`guard`]) refuses foreign Host names, cross-origin
//! requests and form posts, and asks for a bearer token where tokens are configured;
//! the listener ([`server`]) caps connections and times out slow headers.

mod error;
mod gateway;
mod guard;
mod metrics_page;
mod routes;
mod server;
mod sessions;
mod shards;
mod watch;

pub use gateway::{Gateway, HTTP_WATCHERS_MAX, HTTP_WATCHERS_PER_CLIENT_MAX};
pub use guard::{HttpPolicy, PolicyError};
pub use server::{HEADER_READ_TIMEOUT, HTTP_CONNECTIONS_MAX, bind, serve};
