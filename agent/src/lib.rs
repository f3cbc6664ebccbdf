//! Corral's agent: one per host. The `corral` binary that runs it is `corral-cli`.
//!
//! ```text
//!  agent.rs     one agent: its tasks wired together
//!  gossip/      SWIM membership (foca) over QUIC datagrams
//!  replica/     the local copy of the core's state, fed by watch streams
//!  sessions/    the node session and the deaths reported to the core
//!  api/         the Unix-socket API apps use
//!  http/        the HTTP/JSON gateway, the status page and /metrics
//!  dns/         DNS under corral.: masters, replicas, services, agents
//!  metrics.rs   counters and latency histograms
//!  positions.rs replicas' replication positions, reported to the core's leader
//!  json.rs      JSON views of answers (values as text or hex)
//!  capped.rs    accepting TCP connections under a cap (HTTP, DNS over TCP)
//!  txn_json.rs  transactions written as JSON (`corral kv txn`, POST /v1/txn)
//! ```

pub mod agent;
pub mod api;
pub mod capped;
pub mod dns;
pub mod etcd;
pub mod gossip;
pub mod http;
pub mod json;
pub mod metrics;
pub mod positions;
pub mod replica;
pub mod sessions;
pub mod txn_json;
