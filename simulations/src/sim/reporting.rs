//! Death reports and the core's hearing gate, run with the shipped code rather than a copy
//! of it:
//!
//! - what a simulated agent reports, and when, is the agent's own `DeathReporter` (its
//!   rule, `report_due`, over the members the host's own gossip engine holds alive, not
//!   the simulator's truth; its pacing; its holding back after a refusal), checked when
//!   gossip declares the death and every [`CHECK_INTERVAL`] after, as `watch_deaths`
//!   does;
//! - whether the core refuses a report is the core's own
//!   [`Liveness`](corral_core::server::liveness::Liveness) table, fed the beats
//!   each agent sends every [`BEAT_INTERVAL`] on its watch stream while it runs and reaches
//!   the core.
//!
//! One shortcut: a host whose rank puts it below the backups when it learns of a death
//! forgets it, where the agent would look again at every check (and report if deaths of
//! better-ranked hosts raised it among the backups before the session closed).

use std::time::Duration;

use std::collections::BTreeMap;

use corral_agent::gossip::{Dead, GossipEngine};
use corral_agent::sessions::death_reports::{
    BACKUP_REPORT_DELAY, CHECK_INTERVAL, Death, MemberView, report_due,
};
use corral_net::rpc::BEAT_INTERVAL;

use super::{Event, HostState, Sim, us};
use crate::network::{CORE, Micros, mix};
use crate::sim_id::SimId;

/// A death a simulated agent learnt from its gossip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seen {
    /// Its own suspicion ran out (rather than gossip telling it).
    declared_here: bool,
    since: Micros,
}

impl Sim {
    /// `at` on the clock the agent's and the core's code read.
    fn instant(&self, at: Micros) -> std::time::Instant {
        self.clock_base + Duration::from_micros(at)
    }

    pub(super) fn member_down(&mut self, observer: u32, id: SimId, declared_here: bool) {
        if let Some(&i) = self.observations.death_of.get(&id) {
            let record = &mut self.observations.deaths[i];
            record.noticed_after.push(self.now - record.at);
            record.noticed_by.push(observer);
            if declared_here {
                record.declared_by.push(observer);
            }
        } else if let Some(target) = self.hosts.get(id.index as usize)
            && target.engine.identity().incarnation == id.incarnation
            && matches!(target.state, HostState::Up | HostState::Frozen)
        {
            if self.network.cuts(observer, id.index) {
                self.observations.cut_downs += 1;
            } else {
                self.observations.false_downs.push((self.now, observer, id));
            }
        }
        self.learn_death(observer, id, declared_here);
    }

    /// The agent learns of a death and checks at once (it checks on gossip's event),
    /// unless its replica no longer shows the session or its rank means it would never
    /// report it.
    fn learn_death(&mut self, observer: u32, dead: SimId, declared_here: bool) {
        let host = &self.hosts[observer as usize];
        if !self.core.session_open_at(dead, host.replica_revision)
            || !self.reports(observer, dead, declared_here, BACKUP_REPORT_DELAY)
        {
            return;
        }
        let seen = Seen {
            declared_here,
            since: self.now,
        };
        self.hosts[observer as usize]
            .deaths
            .entry(dead)
            .or_insert(seen);
        self.check_deaths(observer);
    }

    /// The agent's rule, over the members `host`'s own gossip engine holds alive.
    fn reports(&self, host: u32, dead: SimId, declared_here: bool, dead_for: Duration) -> bool {
        let engine = &self.hosts[host as usize].engine;
        let alive = || alive_names(engine);
        report_due(
            &SimId::name(dead.index),
            &SimId::name(host),
            declared_here,
            dead_for,
            alive,
        )
    }

    /// One check of `host`'s agent: the deaths its replica still shows open and its rule
    /// finds due, through its pacer, each to the core. Checks again at its next tick while
    /// any is left.
    pub(super) fn check_deaths(&mut self, host: u32) {
        let now = tokio::time::Instant::from_std(self.instant(self.now));
        let h = &mut self.hosts[host as usize];
        match h.state {
            HostState::Up => {}
            HostState::Frozen => {
                h.held.push(Event::ReportCheck { host });
                return;
            }
            HostState::Dead | HostState::Left => return,
        }
        let revision = h.replica_revision;
        let core = &self.core;
        h.deaths
            .retain(|dead, _| core.session_open_at(*dead, revision));
        // The replica's open node sessions, of those the host knows dead (the others are
        // never due).
        let sessions: Vec<(String, u64)> = h
            .deaths
            .keys()
            .map(|dead| (SimId::name(dead.index), dead.incarnation))
            .collect();
        let view = HostView {
            engine: &h.engine,
            deaths: &h.deaths,
            clock_base: self.clock_base,
        };
        let send = h.reporter.check(&view, sessions.into_iter(), now);
        let known: Vec<SimId> = h.deaths.keys().copied().collect();
        for dead in known.into_iter().filter(|d| send.contains(&death(*d))) {
            if let Some(after) = self.network.send_reliable(host, CORE, &mut self.net_rng) {
                self.schedule(self.now + after, Event::ReportArrives { host, dead });
            }
        }
        let h = &mut self.hosts[host as usize];
        if !h.deaths.is_empty() && h.next_check.is_none() {
            let at = next_tick(host, self.now, us(CHECK_INTERVAL));
            h.next_check = Some(at);
            self.schedule(at, Event::ReportCheck { host });
        }
    }

    /// The core answers a report: refused while a member hears the node, else committed.
    pub(super) fn report_arrives(&mut self, host: u32, dead: SimId) {
        self.core.reports_received += 1;
        if let Some(&i) = self.observations.death_of.get(&dead) {
            let record = &mut self.observations.deaths[i];
            if !record.reported_by.contains(&host) {
                record.reported_by.push(host);
            }
        }
        if self.core_hears(dead) {
            self.observations.reports_refused += 1;
            let now = tokio::time::Instant::from_std(self.instant(self.now));
            self.hosts[host as usize].reporter.refused(death(dead), now);
        } else {
            let at = self.core.commit_time(self.now, &mut self.net_rng);
            self.schedule(at, Event::CommitClose { dead });
        }
    }

    /// Whether the core hears `dead`, by its own `Liveness`: the table first takes the
    /// beats the node's agent sent since it was last asked (its last beat, while it runs
    /// and reaches the core; a dead process's stream ends).
    fn core_hears(&mut self, dead: SimId) -> bool {
        let name = SimId::name(dead.index);
        let stream = u64::from(dead.index);
        if let Some(host) = self.hosts.get(dead.index as usize) {
            let beating_until = match host.state {
                HostState::Up => Some(self.now),
                HostState::Frozen => Some(host.frozen_at),
                HostState::Dead | HostState::Left => None,
            };
            match beating_until {
                None => self
                    .liveness
                    .stream_ended(&name, stream, self.instant(self.now)),
                Some(until) if self.network.reaches_core(dead.index) => {
                    let at = self.instant(last_beat(dead.index, until));
                    let incarnation = host.engine.identity().incarnation;
                    self.liveness.beat(&name, incarnation, stream, at);
                }
                Some(_) => {}
            }
        }
        self.liveness
            .heard(&name, dead.incarnation, self.instant(self.now))
    }
}

/// A simulated host's gossip view as the agent's reporting reads it: the members its
/// engine holds alive, and the deaths its engine declared.
struct HostView<'a> {
    engine: &'a GossipEngine<SimId>,
    deaths: &'a BTreeMap<SimId, Seen>,
    clock_base: std::time::Instant,
}

impl MemberView for HostView<'_> {
    fn is_dead(&self, name: &str, incarnation: u64) -> Option<Dead> {
        let index = name.strip_prefix("host-")?.parse().ok()?;
        let seen = self.deaths.get(&SimId { index, incarnation })?;
        let since = self.clock_base + Duration::from_micros(seen.since);
        Some(Dead {
            since: tokio::time::Instant::from_std(since),
            declared_here: seen.declared_here,
        })
    }

    fn alive_names(&self) -> impl Iterator<Item = impl AsRef<str>> {
        alive_names(self.engine)
    }
}

/// The names of the members `engine` holds alive (alive or suspect), as the agent's view
/// lists them.
pub(super) fn alive_names(engine: &GossipEngine<SimId>) -> impl Iterator<Item = String> + '_ {
    engine
        .members()
        .filter(|(_, state)| *state != foca::State::Down)
        .map(|(id, _)| SimId::name(id.index))
}

fn death(id: SimId) -> Death {
    Death {
        name: SimId::name(id.index),
        incarnation: id.incarnation,
    }
}

/// The first tick of `host`'s check interval after `now` (each agent's ticks have their
/// own phase).
fn next_tick(host: u32, now: Micros, interval: Micros) -> Micros {
    let phase = mix(u64::from(host)) % interval;
    let ticks = (now + 1).saturating_sub(phase).div_ceil(interval);
    phase + ticks * interval
}

/// The last beat `host`'s agent sent at or before `until`.
fn last_beat(host: u32, until: Micros) -> Micros {
    let interval = us(BEAT_INTERVAL);
    let phase = mix(u64::from(host) ^ 0xbea7) % interval;
    if until < phase {
        return 0;
    }
    phase + (until - phase) / interval * interval
}
