//! Every agent's feed over a run: the tree before and after the deaths, and the
//! segments (feeder, from when) each agent's feed goes through, as the agent's feed
//! would choose them.

use corral_agent::gossip::transport::RELAY_CONNECT_TIMEOUT;
use corral_agent::replica::feed::RELAY_SILENCE;
use corral_agent::replica::feed_tree::{FeedTree, Ranking};
use rand::RngExt;
use rand::rngs::StdRng;

use super::{SECOND, WritesConfig};
use crate::network::{CORE, Micros, Network};
use crate::sim::us;
use crate::sim_id::SimId;

/// How often an agent checks that it follows the feeder the tree names (the feed's
/// `TREE_CHECK`).
const TREE_CHECK: Micros = 5 * SECOND;
/// How long a relay that failed is not asked again (the feed's `RELAY_FAILED_FOR`).
const RELAY_FAILED_FOR: Micros = 15 * SECOND;

/// Who feeds an agent during one segment of its feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Feeder {
    Core,
    Agent(u32),
}

/// One stretch of an agent's feed: from `start` (when it left the previous feeder) the
/// agent follows `feeder`, which sends from `ready` on (after the handshake and the
/// request) what the agent does not have yet; `order` is the agent's place among those
/// that feeder sends to.
#[derive(Clone, Debug)]
pub(super) struct Segment {
    pub(super) start: Micros,
    pub(super) ready: Micros,
    pub(super) feeder: Feeder,
    pub(super) order: u32,
}

/// The tree's candidates for every agent, by index (empty: the core).
fn plan(tree: FeedTree, names: &[String], alive: &[bool]) -> Vec<Vec<u32>> {
    let ranking = Ranking::new(
        names
            .iter()
            .zip(alive)
            .filter(|(_, a)| **a)
            .map(|(n, _)| n.as_str()),
    );
    let index_of = |name: &str| -> u32 {
        name.strip_prefix("host-")
            .and_then(|i| i.parse().ok())
            .unwrap_or(u32::MAX)
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = names.len().div_ceil(threads).max(1);
    let mut plans = vec![Vec::new(); names.len()];
    std::thread::scope(|scope| {
        for (part, out) in plans.chunks_mut(chunk).enumerate() {
            let ranking = &ranking;
            scope.spawn(move || {
                for (i, slot) in out.iter_mut().enumerate() {
                    let index = part * chunk + i;
                    if !alive[index] {
                        continue;
                    }
                    if let Some(rank) = ranking.rank_of(&names[index]) {
                        *slot = tree
                            .candidates(ranking, rank)
                            .into_iter()
                            .map(index_of)
                            .collect();
                    }
                }
            });
        }
    });
    plans
}

/// The whole fleet's feeds over the run: which agents died, each agent's segments.
pub(super) struct Feeds {
    pub(super) dead: Vec<bool>,
    pub(super) segments: Vec<Vec<Segment>>,
    /// Agents whose feeder died.
    pub(super) orphans: Vec<u32>,
    /// Agents that changed feeder at a tree check after the deaths.
    pub(super) retreed: u64,
    pub(super) depth: u32,
    pub(super) most_children: usize,
    pub(super) most_children_after: usize,
    /// How many agents each sender sends to, over the run (agents by index, then the
    /// core's members): its time per revision.
    pub(super) sends_to: Vec<u32>,
}

struct Planner<'a> {
    config: &'a WritesConfig,
    network: &'a Network,
    before: Vec<Vec<u32>>,
    after: Vec<Vec<u32>>,
    dead: Vec<bool>,
    end: Micros,
}

impl Planner<'_> {
    fn rtt(&self, agent: u32, feeder: Feeder) -> Micros {
        let other = match feeder {
            Feeder::Core => CORE,
            Feeder::Agent(f) => f,
        };
        2 * self.network.base(agent, other)
    }

    /// The feeder `agent` would choose at `now`: the first candidate not failed, from the
    /// tree it knows (the old one until gossip told it of the deaths).
    fn usable(&self, agent: u32, now: Micros, knows: Micros, failed: &[(u32, Micros)]) -> Feeder {
        let candidates = if now >= knows {
            &self.after[agent as usize]
        } else {
            &self.before[agent as usize]
        };
        candidates
            .iter()
            .copied()
            .find(|c| !failed.iter().any(|(f, until)| f == c && now < *until))
            .map_or(Feeder::Core, Feeder::Agent)
    }

    /// The segments of one agent's feed over the run.
    fn feed(&self, agent: u32, rng: &mut StdRng) -> (Vec<Segment>, bool, bool) {
        let config = self.config;
        let knows =
            config.deaths_at + rng.random_range(config.gossip_knows.0..=config.gossip_knows.1);
        let first = self.usable(agent, 0, knows, &[]);
        let mut segments = vec![Segment {
            start: 0,
            ready: 0,
            feeder: first,
            order: 0,
        }];
        if self.dead[agent as usize] {
            return (segments, false, false);
        }
        let (mut orphaned, mut retreed) = (false, false);
        let mut failed: Vec<(u32, Micros)> = Vec::new();
        let mut next_check = rng.random_range(0..TREE_CHECK);
        loop {
            let current = segments.last().map_or(Feeder::Core, |s| s.feeder);
            let ready = segments.last().map_or(0, |s| s.ready);
            // Nothing comes from a dead feeder: its stream falls silent (its last frame
            // came at its death, at the latest).
            let silence = match current {
                Feeder::Agent(f) if self.dead[f as usize] => {
                    Some(config.deaths_at.max(ready) + us(RELAY_SILENCE))
                }
                _ => None,
            };
            let now = silence.unwrap_or(next_check).min(next_check);
            if now > self.end {
                break;
            }
            let leaving = now;
            let mut now = now;
            if silence == Some(now) {
                orphaned = true;
                if let Feeder::Agent(f) = current {
                    failed.push((f, now + RELAY_FAILED_FOR));
                }
                // Candidates in turn; a dead one costs a handshake timeout.
                let feeder = loop {
                    match self.usable(agent, now, knows, &failed) {
                        Feeder::Agent(c) if self.dead[c as usize] => {
                            now += us(RELAY_CONNECT_TIMEOUT);
                            failed.push((c, now + RELAY_FAILED_FOR));
                        }
                        other => break other,
                    }
                };
                self.turn(&mut segments, agent, leaving, now, feeder);
            } else {
                let named = self.usable(agent, now, knows, &failed);
                if named != current && !matches!(named, Feeder::Agent(c) if self.dead[c as usize]) {
                    retreed |= now >= knows;
                    self.turn(&mut segments, agent, leaving, now, named);
                } else {
                    next_check += TREE_CHECK;
                    continue;
                }
            }
            next_check = segments.last().map_or(now, |s| s.ready) + TREE_CHECK;
        }
        (segments, orphaned, retreed)
    }

    /// The agent left its feeder at `leaving` and connects to `feeder` at `now`: the
    /// feeder sends after a round trip for the handshake and half of one for the request.
    fn turn(
        &self,
        segments: &mut Vec<Segment>,
        agent: u32,
        leaving: Micros,
        now: Micros,
        feeder: Feeder,
    ) {
        let ready = now + self.rtt(agent, feeder) * 3 / 2;
        segments.push(Segment {
            start: leaving,
            ready,
            feeder,
            order: 0,
        });
    }
}

pub(super) fn feeds(config: &WritesConfig, network: &Network, rng: &mut StdRng) -> Feeds {
    let n = config.members as usize;
    let names: Vec<String> = (0..config.members).map(SimId::name).collect();
    let everyone = vec![true; n];
    let before = plan(config.tree, &names, &everyone);
    let mut children = vec![0usize; n];
    for c in before.iter().filter_map(|c| c.first()) {
        children[*c as usize] += 1;
    }
    let mut relays: Vec<u32> = (0..n as u32)
        .filter(|a| children[*a as usize] > 0)
        .collect();
    let dying = ((relays.len() as f64 * config.relays_dying).round() as usize).min(relays.len());
    let mut dead = vec![false; n];
    for _ in 0..dying {
        let i = rng.random_range(0..relays.len());
        dead[relays.swap_remove(i) as usize] = true;
    }
    let alive: Vec<bool> = dead.iter().map(|d| !d).collect();
    let after = if dying > 0 {
        plan(config.tree, &names, &alive)
    } else {
        before.clone()
    };
    let mut children_after = vec![0usize; n];
    for c in after.iter().filter_map(|c| c.first()) {
        children_after[*c as usize] += 1;
    }
    let depth = (0..n)
        .map(|a| {
            let (mut d, mut at) = (1, a);
            while let Some(f) = before[at].first() {
                d += 1;
                at = *f as usize;
            }
            d
        })
        .max()
        .unwrap_or(0);
    let planner = Planner {
        config,
        network,
        before,
        after,
        dead,
        end: (config.seconds * SECOND as f64) as Micros + 2 * SECOND,
    };
    let mut segments = Vec::with_capacity(n);
    let (mut orphans, mut retreed) = (Vec::new(), 0);
    for agent in 0..config.members {
        let (feed, orphaned, moved) = planner.feed(agent, rng);
        if orphaned {
            orphans.push(agent);
        } else if moved {
            retreed += 1;
        }
        segments.push(feed);
    }
    // Each feeder sends to those that turned to it in the order they did (the core: each
    // member to its share of the agents).
    let mut turns: Vec<(Micros, u32, usize)> = segments
        .iter()
        .enumerate()
        .flat_map(|(a, segs)| (0..segs.len()).map(move |s| (segs[s].start, a as u32, s)))
        .collect();
    turns.sort_unstable();
    let mut sent_to = vec![0u32; n];
    let mut core_sent_to = vec![0u32; config.core.members.max(1) as usize];
    let members = core_sent_to.len();
    for (_, agent, s) in turns {
        let segment = &mut segments[agent as usize][s];
        let count = match segment.feeder {
            Feeder::Core => &mut core_sent_to[agent as usize % members],
            Feeder::Agent(f) => &mut sent_to[f as usize],
        };
        segment.order = *count;
        *count += 1;
    }
    sent_to.extend(core_sent_to);
    Feeds {
        sends_to: sent_to,
        dead: planner.dead,
        segments,
        orphans,
        retreed,
        depth,
        most_children: children.into_iter().max().unwrap_or(0),
        most_children_after: children_after.into_iter().max().unwrap_or(0),
    }
}
