//! Deterministic simulations of Corral's membership and failover at fleet scale.
//!
//! ```text
//!  main.rs / scenarios.rs   what happens when, and the figures that come out
//!  sim.rs                   the event loop: virtual clock, hosts, real GossipEngines
//!  network.rs               latency, loss, partitions, one-way failures
//!  core_model.rs            death reports, commit latency, the real StateMachine, watch fan-out
//!  sim_id.rs                a 16-byte identity that encodes as the agent's
//!  memberlist.rs            the published memberlist/Consul timings, for comparison
//!  writes.rs               the fleet under writes: the feed tree, relays dying
//!  stats.rs, plot.rs        percentiles, reports, CSV and SVG charts
//! ```
//!
//! Each host runs the agent's own [`corral_agent::gossip::GossipEngine`] (foca with the
//! agent's configuration); the core's reaction to a death is the real state machine.

pub mod core_model;
pub mod memberlist;
pub mod network;
pub mod plot;
pub mod scenarios;
pub mod sim;
pub mod sim_id;
pub mod stats;
pub mod writes;
