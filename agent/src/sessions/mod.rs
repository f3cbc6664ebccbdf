//! Sessions the agent holds in the core, and the deaths it reports.

pub mod death_reports;
pub mod held_sessions;
pub mod node_session;
pub mod session_expiry;
