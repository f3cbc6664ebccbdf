//! SWIM membership: foca over QUIC datagrams with mutual TLS.
//!
//! ```text
//!  engine.rs     foca + effects, no I/O (also driven by the simulations)
//!  service.rs    the task that owns the engine: timers, view, member events
//!  transport.rs  QUIC datagrams, certificate-checked senders
//!  known_peers.rs  the members last known alive, saved to rejoin after a restart
//! ```

pub mod config;
pub mod engine;
pub mod identity;
pub mod known_peers;
pub mod service;
pub mod transport;

pub use config::GossipConfig;
pub use engine::{GossipEffect, GossipEngine, GossipInput};
pub use identity::{GossipIdentity, NodeIdentity};
pub use service::{Dead, GossipHandle, GossipView};
pub use transport::GossipTransport;
