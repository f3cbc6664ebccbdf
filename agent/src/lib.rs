//! Corral's agent and the `corral` command line.
//!
//! ```text
//!  agent.rs     one agent: its tasks wired together
//!  gossip/      SWIM membership (foca) over QUIC datagrams
//!  replica/     the local copy of the core's state, fed by watch streams
//!  sessions/    the node session and the deaths reported to the core
//!  api/         the Unix-socket API apps use
//!  cli/         the `corral` commands: ca, core, agent, client commands, bench
//! ```

pub mod agent;
pub mod api;
pub mod cli;
pub mod gossip;
pub mod replica;
pub mod sessions;
