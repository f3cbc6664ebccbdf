//! What a scenario does to the fleet: kills, freezes, partitions, joins and leaves.

use std::collections::BTreeMap;

use corral_agent::gossip::{GossipEngine, GossipInput};
use corral_agent::sessions::death_reports::DeathReporter;
use rand::RngExt;

use super::{Action, DeathRecord, Event, Host, HostState, Sim};
use crate::network::{CORE, mix};
use crate::sim_id::SimId;

impl Sim {
    pub(super) fn record_death(&mut self, host: u32, graceful: bool) {
        let id = *self.hosts[host as usize].engine.identity();
        let i = self.observations.deaths.len();
        let known_by = self
            .live_hosts()
            .filter(|&h| {
                h != host
                    && self.hosts[h as usize]
                        .engine
                        .members()
                        .any(|(m, state)| *m == id && state == foca::State::Alive)
            })
            .collect();
        self.observations.deaths.push(DeathRecord {
            id,
            at: self.now,
            noticed_after: Vec::new(),
            noticed_by: Vec::new(),
            declared_by: Vec::new(),
            reported_by: Vec::new(),
            known_by,
            closed_after: None,
            failover_after: Vec::new(),
            had_shards: false,
            graceful,
        });
        self.observations.death_of.insert(id, i);
    }

    pub(super) fn act(&mut self, action: Action) {
        match action {
            Action::Kill(host) => {
                if matches!(self.state(host), HostState::Up | HostState::Frozen) {
                    self.record_death(host, false);
                    let h = &mut self.hosts[host as usize];
                    h.state = HostState::Dead;
                    h.held.clear();
                }
            }
            Action::Freeze(host) => {
                if self.state(host) == HostState::Up {
                    self.hosts[host as usize].state = HostState::Frozen;
                    self.hosts[host as usize].frozen_at = self.now;
                }
            }
            Action::Thaw(host) => {
                let h = &mut self.hosts[host as usize];
                if h.state == HostState::Frozen {
                    h.state = HostState::Up;
                    let held = std::mem::take(&mut h.held);
                    for event in held {
                        self.schedule(self.now, event);
                    }
                }
            }
            Action::Split { at } => self.network.partition(|h| u16::from(h >= at)),
            Action::Heal => self.network.heal(),
            Action::Join => self.join(),
            Action::Leave(host) => {
                if self.state(host) == HostState::Up {
                    self.record_death(host, true);
                    self.input(host, GossipInput::Leave);
                    self.hosts[host as usize].state = HostState::Left;
                }
            }
            Action::Mute(host, mute) => self.network.set_mute(host, mute),
        }
    }

    /// A new host: it announces itself to a random live host and opens its node session.
    pub(super) fn join(&mut self) {
        let live: Vec<u32> = self.live_hosts().collect();
        if live.is_empty() {
            return;
        }
        let seed = live[self.choice_rng.random_range(0..live.len())];
        let index = self.hosts.len() as u32;
        let id = SimId {
            index,
            incarnation: 1,
        };
        self.hosts.push(Host {
            engine: GossipEngine::new(
                id,
                &self.config.gossip,
                mix(self.config.seed ^ index as u64),
            ),
            state: HostState::Up,
            life: 0,
            held: Vec::new(),
            replica_revision: self.core.machine().revision(),
            last_watch_at: self.now,
            frozen_at: 0,
            deaths: BTreeMap::new(),
            reporter: DeathReporter::new(SimId::name(index)),
            next_check: None,
            bytes_sent: 0,
            datagrams_sent: 0,
        });
        self.network.grow(self.hosts.len());
        self.input(index, GossipInput::Announce(seed));
        if let Some(after) = self.network.send_reliable(index, CORE, &mut self.net_rng) {
            self.schedule(self.now + after, Event::OpenArrives { id });
        }
    }
}
