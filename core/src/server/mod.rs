//! The core member process: configuration, cluster formation, the Raft network and the
//! request server.

mod actor;
pub mod bootstrap;
pub mod config;
pub mod liveness;
mod member;
mod positions;
mod proposer;
mod quorum_watch;
mod raft_network;
pub mod state_check;
mod watch_stream;

pub use config::{CoreConfig, parse_peers};
pub use corral_net::watch_serve::WATCH_PROGRESS_INTERVAL;
pub use member::{
    CONNECTIONS_MAX, CoreMember, FatalError, READ_INDEX_TIMEOUT, REQUEST_READ_TIMEOUT, StartError,
    WRITE_TIMEOUT,
};
pub use positions::{POSITION_FRESH, POSITIONS_KEPT_MAX};
pub use proposer::{
    PROPOSAL_BYTES_MAX, PROPOSAL_COMMANDS_MAX, PROPOSAL_QUEUE_MAX, PROPOSALS_IN_FLIGHT_MAX,
};
