//! The HTTP/JSON gateway: the socket API's operations over HTTP, a live status page and
//! Prometheus metrics.
//!
//! ```text
//!  HTTP client ──► routes.rs ──AgentClient──► the agent's own Unix socket ──► api/
//!                  watch.rs   one socket connection per stream (Server-Sent Events)
//!                  metrics    /metrics from the agent's counters and the core's status
//!                  page.html  GET /, no build step, no external assets
//! ```
//!
//! The gateway is a client of the agent's socket, so HTTP gets exactly the socket's
//! semantics (read-your-writes, consistent reads, conflicts) at the cost of one local
//! round trip. HTTP has no connection to bind ephemeral state to: shard replicas, locks
//! and service instances taken over HTTP belong to the agent's node session and are
//! released with DELETE (or when the agent dies).

mod error;
mod metrics_page;
mod routes;
mod watch;

pub use routes::{Gateway, bind, serve};
