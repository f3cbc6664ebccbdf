//! DNS on every agent (`--dns 127.0.0.1:8600`): masters, replicas, service instances and
//! agents under `corral.`, answered from the local replica, so any program finds them
//! with no Corral library and no extra hop.
//!
//! ```text
//!  zone.rs    names under corral. and the records that answer them (no I/O)
//!  server.rs  hickory's UDP and TCP server, reading the replica and the gossip view
//! ```

pub mod server;
pub mod zone;

/// The TTL of every answer unless `--dns-ttl` says otherwise: an answer is never cached,
/// so a failover is seen by the next lookup.
pub const DEFAULT_TTL: u32 = 0;
