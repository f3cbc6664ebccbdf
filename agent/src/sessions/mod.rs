//! Sessions the agent holds in the core, and the deaths it reports.

pub mod death_reports;
pub mod node_session;
