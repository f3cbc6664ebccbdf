//! What a run observed: every death and who learnt of it, false alarms, and counters.

use std::collections::HashMap;

use crate::network::Micros;
use crate::sim_id::SimId;

/// A killed or departed host and what the others learnt of it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeathRecord {
    pub id: SimId,
    pub at: Micros,
    /// MemberDown times at each observer, relative to `at`.
    pub noticed_after: Vec<Micros>,
    /// Observers that noticed, in the order of `noticed_after`.
    pub noticed_by: Vec<u32>,
    /// Observers whose own suspicion declared the death.
    pub declared_by: Vec<u32>,
    /// Agents that reported the death to the core, in the order of their first report.
    pub reported_by: Vec<u32>,
    /// Live hosts that held the member alive when it died: the ones that must learn.
    pub known_by: Vec<u32>,
    /// When the core committed the close of its node session.
    pub closed_after: Option<Micros>,
    /// When each agent's replica showed its shards' new masters, relative to `at`.
    pub failover_after: Vec<Micros>,
    pub had_shards: bool,
    pub graceful: bool,
}

#[derive(Debug, Default)]
pub struct Observations {
    pub deaths: Vec<DeathRecord>,
    pub(super) death_of: HashMap<SimId, usize>,
    pub(super) failover_of_revision: HashMap<u64, Vec<usize>>,
    /// Live members declared down: (time, observer, target).
    pub false_downs: Vec<(Micros, u32, SimId)>,
    /// Members declared down while cut off by a partition or a one-way failure.
    pub cut_downs: u64,
    /// Hosts that had to take a new incarnation because the pool declared them dead.
    pub renewals: u64,
    /// Death reports the core refused because it heard the reported agent.
    pub reports_refused: u64,
    /// Node sessions carried over to a new incarnation, with all under them.
    pub sessions_renewed: u64,
    /// Gossip inputs foca refused (bad or stale packets).
    pub refused_inputs: u64,
    pub datagrams_lost: u64,
    pub datagrams_cut: u64,
    pub datagrams_dropped_frozen: u64,
}
