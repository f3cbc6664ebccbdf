//! The discrete-event loop: a virtual clock, a queue of due events, and one real
//! [`GossipEngine`] per simulated host, with the core's reaction to deaths beside them.
//!
//! ```text
//!  queue (time, seq) ─► Deliver ─► host's GossipEngine ─► effects ─┬► Send ─► Network ─► queue
//!                    ├► Timer   ─┘                                 ├► Schedule ─────────► queue
//!                    │                                             └► MemberDown ─► Observations
//!                    │                                                    └► report ─► CoreModel
//!                    ├► Report / Commit ─► CoreModel (real StateMachine) ─► WatchDeliver ─► queue
//!                    └► Action (kill, freeze, thaw, partition, heal, join, leave) from a scenario
//! ```
//!
//! Nothing here sleeps, opens a socket or starts a thread: time is a number, and every
//! random choice comes from generators seeded from the run's seed, so a seed replays the
//! same run event for event.

use std::cmp::Reverse;
mod actions;
mod observations;
mod reporting;

pub use observations::{DeathRecord, Observations};

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use corral_agent::gossip::{GossipConfig, GossipEffect, GossipEngine, GossipInput};
use corral_agent::sessions::death_reports::DeathReporter;
use corral_core::server::liveness::Liveness;
use foca::Timer;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::core_model::{CoreConfig, CoreModel, Placement};
use crate::network::{CORE, Fate, Micros, Network, NetworkConfig, mix};
use crate::sim_id::SimId;

/// Datagrams a frozen host's socket buffer holds; the rest are dropped, as the kernel does.
const HELD_DATAGRAMS_MAX: usize = 512;
/// Bytes a gossip datagram costs on the wire beyond foca's payload: IPv4 (20) + UDP (8) +
/// a QUIC short header with quinn's 8-byte connection id and a 2-byte packet number (11)
/// + the DATAGRAM frame header (3) + the AEAD tag (16).
pub const DATAGRAM_OVERHEAD_BYTES: u64 = 58;

#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    pub members: u32,
    pub seed: u64,
    pub gossip: GossipConfig,
    pub network: NetworkConfig,
    pub core: CoreConfig,
}

impl SimConfig {
    /// The agent's shipped gossip settings, the network's and the core's defaults.
    pub fn new(members: u32, seed: u64) -> Self {
        SimConfig {
            members,
            seed,
            gossip: GossipConfig::default(),
            network: NetworkConfig::default(),
            core: CoreConfig::default(),
        }
    }
}

/// What a scenario asks the simulation to do at a given time.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// SIGKILL: the host stops at once and says nothing.
    Kill(u32),
    /// SIGSTOP: timers and datagrams wait (up to a socket buffer) until the thaw.
    Freeze(u32),
    Thaw(u32),
    /// Cuts hosts below `at` from the others.
    Split {
        at: u32,
    },
    Heal,
    /// A new host joins through a random live one.
    Join,
    /// A host leaves gracefully.
    Leave(u32),
    /// The host's outgoing datagrams are lost (a one-way failure), or no longer.
    Mute(u32, bool),
}

#[derive(Debug)]
enum Event {
    Deliver {
        to: u32,
        data: Vec<u8>,
    },
    Timer {
        host: u32,
        life: u32,
        timer: Timer<SimId>,
    },
    Start {
        host: u32,
    },
    Action(Action),
    /// An agent's periodic check of the deaths it knows (`watch_deaths`).
    ReportCheck {
        host: u32,
    },
    ReportArrives {
        host: u32,
        dead: SimId,
    },
    OpenArrives {
        id: SimId,
    },
    CommitClose {
        dead: SimId,
    },
    CommitOpen {
        id: SimId,
    },
    WatchDeliver {
        host: u32,
        revision: u64,
    },
}

struct Scheduled {
    at: Micros,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostState {
    Up,
    Frozen,
    Dead,
    Left,
}

struct Host {
    engine: GossipEngine<SimId>,
    state: HostState,
    /// Bumped when a host is reused, so that the timers of its previous life are dropped.
    life: u32,
    held: Vec<Event>,
    replica_revision: u64,
    /// The last time a watch item reached this host: a stream delivers in order.
    last_watch_at: Micros,
    /// When the host froze: its agent beats no more from then on.
    frozen_at: Micros,
    /// The deaths its gossip declared that it may have to report, and when it learnt each.
    deaths: BTreeMap<SimId, reporting::Seen>,
    /// The agent's own death reporting.
    reporter: DeathReporter,
    /// When its next check is queued, while it knows of deaths to report.
    next_check: Option<Micros>,
    /// Gossip sent since the last traffic reset.
    bytes_sent: u64,
    datagrams_sent: u64,
}

pub struct Sim {
    config: SimConfig,
    now: Micros,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    hosts: Vec<Host>,
    network: Network,
    /// Losses and latencies.
    net_rng: StdRng,
    /// Scenario choices: victims, joins, shard placement.
    pub choice_rng: StdRng,
    core: CoreModel,
    /// The core's own table of the nodes it hears beat on their watch streams.
    liveness: Liveness,
    /// The instant the virtual clock's zero stands for, for the agent's and the core's
    /// code, which take instants: only differences between them matter.
    clock_base: std::time::Instant,
    pub observations: Observations,
    pub events_processed: u64,
    /// Traffic counters start at this time (after the warm-up).
    traffic_since: Micros,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("now", &self.now)
            .field("hosts", &self.hosts.len())
            .finish_non_exhaustive()
    }
}

pub fn us(d: Duration) -> Micros {
    d.as_micros() as Micros
}

impl Sim {
    /// A converged fleet of `config.members` hosts, each knowing every other, with node
    /// sessions and shards placed at the core. Hosts start probing at random moments
    /// within the first probe period.
    pub fn new(config: SimConfig) -> anyhow::Result<Self> {
        config
            .gossip
            .validate()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let n = config.members;
        anyhow::ensure!(n >= 2, "a fleet needs at least two members");
        let mut choice_rng = StdRng::seed_from_u64(mix(config.seed ^ 0xc401));
        let ids: Vec<SimId> = (0..n)
            .map(|index| SimId {
                index,
                incarnation: 1,
            })
            .collect();
        let mut hosts = Vec::with_capacity(n as usize);
        for id in &ids {
            hosts.push(Host {
                engine: GossipEngine::new(*id, &config.gossip, mix(config.seed ^ id.index as u64)),
                state: HostState::Up,
                life: 0,
                held: Vec::new(),
                replica_revision: 0,
                last_watch_at: 0,
                frozen_at: 0,
                deaths: BTreeMap::new(),
                reporter: DeathReporter::new(SimId::name(id.index)),
                next_check: None,
                bytes_sent: 0,
                datagrams_sent: 0,
            });
        }
        let shards = ((n as f64) * config.core.shards_per_member).round() as u32;
        let mut placements: Vec<Placement> = Vec::new();
        for s in 0..shards {
            let mut chosen: Vec<u32> = Vec::new();
            while chosen.len() < 3.min(n as usize) {
                let h = choice_rng.random_range(0..n);
                if !chosen.contains(&h) {
                    chosen.push(h);
                }
            }
            for (rank, h) in chosen.into_iter().enumerate() {
                placements.push((format!("s{s}"), h, 3 - rank as u32));
            }
        }
        let mut core = CoreModel::new(config.core.clone());
        core.setup(ids.iter().copied(), &placements)?;
        let revision = core.machine().revision();
        for host in &mut hosts {
            host.replica_revision = revision;
        }
        let mut sim = Sim {
            network: Network::new(config.network.clone(), n as usize),
            net_rng: StdRng::seed_from_u64(mix(config.seed ^ 0x7e7)),
            choice_rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            hosts,
            core,
            liveness: Liveness::default(),
            clock_base: std::time::Instant::now(),
            observations: Observations::default(),
            events_processed: 0,
            traffic_since: 0,
            config,
        };
        let period = us(sim.config.gossip.probe_period);
        for host in 0..n {
            let at = sim.choice_rng.random_range(0..period);
            sim.schedule(at, Event::Start { host });
        }
        Ok(sim)
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    pub fn now(&self) -> Micros {
        self.now
    }

    pub fn core(&self) -> &CoreModel {
        &self.core
    }

    pub fn host_count(&self) -> u32 {
        self.hosts.len() as u32
    }

    pub fn state(&self, host: u32) -> HostState {
        self.hosts[host as usize].state
    }

    pub fn identity(&self, host: u32) -> SimId {
        *self.hosts[host as usize].engine.identity()
    }

    /// Hosts that are running (up or frozen).
    pub fn live_hosts(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.hosts.len() as u32).filter(|h| {
            matches!(
                self.hosts[*h as usize].state,
                HostState::Up | HostState::Frozen
            )
        })
    }

    /// The names of the members `host`'s gossip holds alive (alive or suspect), as the
    /// agent's view lists them.
    pub fn alive_names_seen_by(&self, host: u32) -> Vec<String> {
        reporting::alive_names(&self.hosts[host as usize].engine).collect()
    }

    /// Active members as seen by `host`.
    pub fn active_seen_by(&self, host: u32) -> usize {
        self.hosts[host as usize].engine.active_count()
    }

    /// Hosts that master at least one shard, in index order.
    pub fn masters(&self) -> Vec<u32> {
        let set: BTreeSet<u32> = self
            .core
            .machine()
            .shards()
            .filter_map(|s| s.master.as_deref())
            .filter_map(|a| a.strip_prefix("host-")?.strip_suffix(":9000")?.parse().ok())
            .collect();
        set.into_iter().collect()
    }

    pub fn at(&mut self, at: Micros, action: Action) {
        self.schedule(at, Event::Action(action));
    }

    /// Starts counting traffic afresh.
    pub fn reset_traffic(&mut self) {
        self.traffic_since = self.now;
        for host in &mut self.hosts {
            host.bytes_sent = 0;
            host.datagrams_sent = 0;
        }
        self.core.watch_bytes = 0;
        self.core.watch_items = 0;
        self.core.reports_received = 0;
    }

    /// Per live host, (datagrams, bytes on the wire) per second since the last reset.
    pub fn traffic_per_second(&self) -> Vec<(f64, f64)> {
        let seconds = (self.now - self.traffic_since) as f64 / 1e6;
        if seconds <= 0.0 {
            return Vec::new();
        }
        self.live_hosts()
            .map(|h| {
                let host = &self.hosts[h as usize];
                (
                    host.datagrams_sent as f64 / seconds,
                    (host.bytes_sent + host.datagrams_sent * DATAGRAM_OVERHEAD_BYTES) as f64
                        / seconds,
                )
            })
            .collect()
    }

    pub fn traffic_seconds(&self) -> f64 {
        (self.now - self.traffic_since) as f64 / 1e6
    }

    fn schedule(&mut self, at: Micros, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            event,
        }));
    }

    /// Runs every event due up to `until`, then sets the clock there.
    pub fn run_until(&mut self, until: Micros) {
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > until {
                break;
            }
            let Some(Reverse(next)) = self.queue.pop() else {
                break;
            };
            self.now = next.at;
            self.events_processed += 1;
            self.handle(next.event);
        }
        self.now = until;
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { to, data } => {
                let Some(host) = self.hosts.get_mut(to as usize) else {
                    return;
                };
                match host.state {
                    HostState::Up => self.input(to, GossipInput::Datagram(data)),
                    HostState::Frozen if host.held.len() < HELD_DATAGRAMS_MAX => {
                        host.held.push(Event::Deliver { to, data })
                    }
                    HostState::Frozen => self.observations.datagrams_dropped_frozen += 1,
                    HostState::Dead | HostState::Left => {}
                }
            }
            Event::Timer { host, life, timer } => {
                let h = &mut self.hosts[host as usize];
                if h.life != life {
                    return;
                }
                match h.state {
                    HostState::Up => self.input(host, GossipInput::Timer(timer)),
                    HostState::Frozen => h.held.push(Event::Timer { host, life, timer }),
                    HostState::Dead | HostState::Left => {}
                }
            }
            Event::Start { host } => self.start(host),
            Event::Action(action) => self.act(action),
            Event::ReportCheck { host } => {
                self.hosts[host as usize].next_check = None;
                self.check_deaths(host);
            }
            Event::ReportArrives { host, dead } => self.report_arrives(host, dead),
            Event::OpenArrives { id } => {
                let at = self.core.commit_time(self.now, &mut self.net_rng);
                self.schedule(at, Event::CommitOpen { id });
            }
            Event::CommitClose { dead } => {
                let committed = self.core.commit_close(dead);
                if committed.changed {
                    if let Some(&i) = self.observations.death_of.get(&dead) {
                        let record = &mut self.observations.deaths[i];
                        record.closed_after.get_or_insert(self.now - record.at);
                        if !committed.masters_lost_by.is_empty() {
                            record.had_shards = true;
                            self.observations
                                .failover_of_revision
                                .entry(committed.revision)
                                .or_default()
                                .push(i);
                        }
                    }
                    self.fan_out(committed.revision, committed.item_bytes);
                }
            }
            Event::CommitOpen { id } => {
                let (committed, renewed) = self.core.commit_open(id);
                self.observations.sessions_renewed += u64::from(renewed);
                if committed.changed {
                    self.fan_out(committed.revision, committed.item_bytes);
                }
            }
            Event::WatchDeliver { host, revision } => {
                let h = &mut self.hosts[host as usize];
                match h.state {
                    HostState::Up => {
                        h.replica_revision = h.replica_revision.max(revision);
                        if let Some(deaths) = self.observations.failover_of_revision.get(&revision)
                        {
                            for &i in deaths {
                                let record = &mut self.observations.deaths[i];
                                record.failover_after.push(self.now - record.at);
                            }
                        }
                    }
                    HostState::Frozen => h.held.push(Event::WatchDeliver { host, revision }),
                    HostState::Dead | HostState::Left => {}
                }
            }
        }
    }

    fn start(&mut self, host: u32) {
        let others: Vec<SimId> = (0..self.config.members)
            .filter(|&h| h != host)
            .map(|index| SimId {
                index,
                incarnation: 1,
            })
            .collect();
        match self.hosts[host as usize].engine.preload(others.into_iter()) {
            Ok(effects) => self.perform(host, effects),
            Err(_) => self.observations.refused_inputs += 1,
        }
    }

    fn fan_out(&mut self, revision: u64, item_bytes: usize) {
        let committed_at = self.now;
        for host in 0..self.hosts.len() as u32 {
            if !matches!(
                self.hosts[host as usize].state,
                HostState::Up | HostState::Frozen
            ) {
                continue;
            }
            let link = self.network.send_reliable(CORE, host, &mut self.net_rng);
            if let Some(at) = self
                .core
                .watch_delivery(host, committed_at, item_bytes, link)
            {
                let h = &mut self.hosts[host as usize];
                let at = at.max(h.last_watch_at);
                h.last_watch_at = at;
                self.schedule(at, Event::WatchDeliver { host, revision });
            }
        }
    }

    fn input(&mut self, host: u32, input: GossipInput<SimId>) {
        match self.hosts[host as usize].engine.handle(input) {
            Ok(effects) => self.perform(host, effects),
            Err(_) => self.observations.refused_inputs += 1,
        }
    }

    fn perform(&mut self, host: u32, effects: Vec<GossipEffect<SimId>>) {
        for effect in effects {
            match effect {
                GossipEffect::Send { to, data } => {
                    let h = &mut self.hosts[host as usize];
                    h.datagrams_sent += 1;
                    h.bytes_sent += data.len() as u64;
                    match self.network.send(host, to.index, &mut self.net_rng) {
                        Fate::DeliverAfter(after) => {
                            self.schedule(self.now + after, Event::Deliver { to: to.index, data })
                        }
                        Fate::Lost => self.observations.datagrams_lost += 1,
                        Fate::Cut => self.observations.datagrams_cut += 1,
                    }
                }
                GossipEffect::Schedule { timer, after } => {
                    let life = self.hosts[host as usize].life;
                    self.schedule(self.now + us(after), Event::Timer { host, life, timer });
                }
                GossipEffect::MemberDown { id, declared_here } => {
                    self.member_down(host, id, declared_here)
                }
                GossipEffect::IdentityChanged(id) => {
                    self.observations.renewals += 1;
                    // The agent moves its node session to the new incarnation, or opens
                    // one if the core closed it.
                    if let Some(after) = self.network.send_reliable(host, CORE, &mut self.net_rng) {
                        self.schedule(self.now + after, Event::OpenArrives { id });
                    }
                }
                GossipEffect::MemberUp(_)
                | GossipEffect::Renamed { .. }
                | GossipEffect::Active
                | GossipEffect::Idle => {}
            }
        }
    }
}
