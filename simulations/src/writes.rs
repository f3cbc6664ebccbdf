//! The fleet under writes: how each committed revision reaches every agent's replica
//! through the feed tree, what the core sends per write, and what happens when a share
//! of the relays dies at once.
//!
//! ```text
//!  write ──► commit at the leader ──► core member ──► the agents it feeds (the tree's top)
//!                                          └──► relay ──► apply ──► its children, one after
//!                                                 another ──► … down to the last level
//!  relays die ──► their children hear nothing for RELAY_SILENCE ──► next candidate
//!     (a dead one costs a handshake timeout) ──► resume from their revision
//!  gossip declares the dead ──► each agent's next tree check ──► the new tree's feeder
//! ```
//!
//! The tree is the agent's own ([`FeedTree`], [`Ranking`]): which agent feeds which is
//! what the agents would choose. The feed's timings are the agent's constants. What is a
//! model: the network (the same one as the gossip simulations), the commit latency, the
//! time an agent takes to apply an entry and to send it to one child, and when gossip
//! tells each agent of the deaths (the gossip simulations' own figures). No gossip is run
//! here: every agent sees the same membership.
//!
//! Every delivery is computed revision by revision: a feed is a sequence of segments
//! (a feeder, from when the agent turned to it), and a revision reaches an agent through
//! the first segment that delivers it before the agent leaves that feeder. Arrivals are
//! in order on each agent, as on a stream.

use std::time::Instant;

use corral_agent::replica::feed_tree::FeedTree;
use corral_net::rpc::WatchItem;
use corral_proto::Command;
use rand::SeedableRng;
use rand::rngs::StdRng;

mod feeds;

use feeds::{Feeder, Feeds, feeds};

use crate::core_model::{CoreConfig, CoreModel};
use crate::network::{CORE, Micros, Network, NetworkConfig};
use crate::sim::us;
use crate::stats::{Histogram, Report};

pub(crate) const SECOND: Micros = 1_000_000;
const MS: Micros = 1_000;

#[derive(Clone, Debug)]
pub struct WritesConfig {
    pub members: u32,
    /// Writes per second, evenly spaced.
    pub rate: f64,
    /// How long writes go on (s).
    pub seconds: f64,
    pub seed: u64,
    pub tree: FeedTree,
    pub network: NetworkConfig,
    pub core: CoreConfig,
    /// Time an agent takes to decode and apply one entry (µs): `corral-simulations
    /// apply-cost` measures the agent's own code.
    pub apply_us: Micros,
    /// Time a relay takes to send one entry to one child (µs), as a core member does.
    pub relay_send_us: Micros,
    /// Share of the relays (agents that feed at least one other) that die at once.
    pub relays_dying: f64,
    /// When they die (µs from the first write).
    pub deaths_at: Micros,
    /// When gossip has told an agent of the deaths, after them: drawn evenly between the
    /// two (µs). The gossip simulations at 10,000 members: the first member knows a death
    /// 2.05 s after it (p50), every member 2.99 s after it at the latest.
    pub gossip_knows: (Micros, Micros),
    /// Bytes of each written value.
    pub value_bytes: usize,
}

impl WritesConfig {
    pub fn new(members: u32, rate: f64, seed: u64) -> Self {
        WritesConfig {
            members,
            rate,
            seconds: 20.0,
            seed,
            tree: FeedTree::default(),
            network: NetworkConfig::default(),
            core: CoreConfig::default(),
            apply_us: 10,
            relay_send_us: CoreConfig::default().watch_send_us,
            relays_dying: 0.1,
            deaths_at: 5 * SECOND,
            gossip_knows: (2_000 * MS, 3_000 * MS),
            value_bytes: 256,
        }
    }
}

/// What one revision did on its way.
struct Delivery<'a> {
    config: &'a WritesConfig,
    network: &'a Network,
    feeds: &'a Feeds,
    committed: Micros,
    /// When each agent had applied the previous revision, and this one (`u64::MAX`: not
    /// yet computed; `NEVER`: it never gets it).
    applied_before: Vec<Micros>,
    applied: Vec<Micros>,
    core_copies: u32,
    /// Which revision each sender (agents, then core members) last started, and when it
    /// is done sending it: a sender starts a revision once it has it and has sent the
    /// previous one to all it feeds.
    sending: Vec<(u64, Micros, Micros)>,
    revision: u64,
}

const UNSET: Micros = u64::MAX;
const NEVER: Micros = u64::MAX - 1;

impl Delivery<'_> {
    /// When `sender`, which has this revision from `has`, starts sending it.
    fn begins(&mut self, sender: usize, has: Micros, send_us: Micros) -> Micros {
        let (revision, begins, done) = &mut self.sending[sender];
        if *revision != self.revision {
            *revision = self.revision;
            *begins = has.max(*done);
            *done = *begins + self.feeds.sends_to[sender] as Micros * send_us;
        }
        *begins
    }

    /// When `agent` has applied this revision.
    fn applied(&mut self, agent: u32, rng: &mut StdRng) -> Micros {
        let a = agent as usize;
        if self.applied[a] != UNSET {
            return self.applied[a];
        }
        // Marked first: a feed cycle (which the tree does not make) ends as a miss.
        self.applied[a] = NEVER;
        let dead_at = self.feeds.dead[a].then_some(self.config.deaths_at);
        let segments = &self.feeds.segments[a];
        let mut arrival = NEVER;
        for (s, segment) in segments.iter().enumerate() {
            let leaves = segments.get(s + 1).map_or(NEVER, |next| next.start);
            if leaves <= self.committed {
                continue;
            }
            let (from, sender, has, send_us) = match segment.feeder {
                Feeder::Core => {
                    let member =
                        self.feeds.dead.len() + a % self.config.core.members.max(1) as usize;
                    (CORE, member, self.committed, self.config.core.watch_send_us)
                }
                Feeder::Agent(f) => (
                    f,
                    f as usize,
                    self.applied(f, rng),
                    self.config.relay_send_us,
                ),
            };
            if has == NEVER {
                continue;
            }
            let begins = self.begins(sender, has, send_us);
            let sent = begins.max(segment.ready) + (segment.order as Micros + 1) * send_us;
            if let Feeder::Agent(f) = segment.feeder
                && self.feeds.dead[f as usize]
                && sent >= self.config.deaths_at
            {
                continue;
            }
            let Some(link) = self.network.send_reliable(from, agent, rng) else {
                continue;
            };
            if sent + link < leaves {
                if segment.feeder == Feeder::Core {
                    self.core_copies += 1;
                }
                arrival = sent + link;
                break;
            }
        }
        let applied = if arrival == NEVER {
            NEVER
        } else {
            arrival.max(self.applied_before[a]) + self.config.apply_us
        };
        let applied = match dead_at {
            Some(at) if applied >= at => NEVER,
            _ => applied,
        };
        self.applied[a] = applied;
        applied
    }
}

/// The encoded size of one entry as it goes on a stream.
fn entry_bytes(config: &WritesConfig) -> usize {
    let item = WatchItem::Entry {
        revision: 1_000_000,
        command: Command::Put {
            key: "app/config/key-000001".into(),
            value: vec![b'v'; config.value_bytes],
            session: None,
        },
    };
    corral_proto::frame::encode(&item).map_or(0, |f| f.len())
}

/// Runs writes at `config.rate` through the fleet, kills the share of relays at
/// `config.deaths_at`, and reports the delay to every replica and the core's sending.
pub fn run(config: &WritesConfig) -> anyhow::Result<Report> {
    anyhow::ensure!(config.members > 0, "--members must be at least 1");
    anyhow::ensure!(
        config.rate > 0.0 && config.rate <= 100_000.0,
        "--rate must be above 0 and at most 100,000 writes a second"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&config.relays_dying),
        "the share of relays dying must be between 0 and 1"
    );
    anyhow::ensure!(
        config.gossip_knows.0 <= config.gossip_knows.1,
        "gossip's range is upside down"
    );
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let network = Network::new(config.network.clone(), config.members as usize);
    let feeds = feeds(config, &network, &mut rng);
    let n = config.members as usize;
    let writes = (config.rate * config.seconds).round() as u64;
    let gap = (SECOND as f64 / config.rate) as Micros;
    let bytes = entry_bytes(config);

    let mut pooled = [Histogram::default(), Histogram::default()];
    let mut last = [Vec::new(), Vec::new()];
    let mut copies = [Vec::new(), Vec::new()];
    let mut missed = 0u64;
    // The longest time between two revisions at one agent: others, orphans.
    let mut longest_pause = [0; 2];
    // The core: commits in order, after the commit latency.
    let mut core = CoreModel::new(config.core.clone());
    let mut delivery = Delivery {
        config,
        network: &network,
        feeds: &feeds,
        committed: 0,
        applied_before: vec![0; n],
        applied: vec![UNSET; n],
        core_copies: 0,
        sending: vec![(u64::MAX, 0, 0); feeds.sends_to.len()],
        revision: 0,
    };
    let mut is_orphan = vec![false; n];
    for o in &feeds.orphans {
        is_orphan[*o as usize] = true;
    }
    for w in 0..writes {
        let arrival = w * gap;
        let committed = core.commit_time(arrival, &mut rng);
        delivery.committed = committed;
        delivery.revision = w;
        delivery.core_copies = 0;
        delivery.applied.fill(UNSET);
        // Writes committed in the last second before the deaths may be on their way
        // through a relay that dies: they count with the deaths.
        let phase = usize::from(committed + SECOND >= config.deaths_at);
        let mut slowest = 0;
        for agent in 0..config.members {
            let applied = delivery.applied(agent, &mut rng);
            if feeds.dead[agent as usize] {
                continue;
            }
            if applied == NEVER {
                missed += 1;
                continue;
            }
            let delay = applied - committed;
            pooled[phase].add(delay);
            slowest = slowest.max(delay);
            let before = delivery.applied_before[agent as usize];
            if w > 0 {
                let pause = &mut longest_pause[usize::from(is_orphan[agent as usize])];
                *pause = (*pause).max(applied.saturating_sub(before));
            }
        }
        last[phase].push(slowest);
        copies[phase].push(delivery.core_copies as u64);
        for (before, now) in delivery.applied_before.iter_mut().zip(&delivery.applied) {
            if *now != NEVER {
                *before = *now;
            }
        }
    }

    let mut report = Report::new("writes");
    report.put("members", config.members);
    report.put("writes_per_s", config.rate);
    report.put("feed_top", config.tree.top);
    report.put("feed_fanout", config.tree.fanout);
    report.put("tree_depth", feeds.depth);
    report.put("relay_children_max", feeds.most_children);
    report.put("entry_bytes", bytes);
    for (phase, name) in [(0, "steady"), (1, "deaths")] {
        let c = &copies[phase];
        let mean = c.iter().sum::<u64>() as f64 / c.len().max(1) as f64;
        report.put(&format!("{name}_writes"), c.len());
        report.put(&format!("{name}_core_copies_mean"), format!("{mean:.2}"));
        report.put(
            &format!("{name}_core_copies_max"),
            c.iter().max().copied().unwrap_or(0),
        );
        report.put(
            &format!("{name}_core_bytes_per_write"),
            format!("{:.0}", mean * bytes as f64),
        );
        report.put_spread(&format!("{name}_last_replica"), &last[phase]);
        let [p50, p99, max] = [0.5, 0.99, 1.0].map(|q| pooled[phase].quantile(q));
        for (q, v) in [("p50", p50), ("p99", p99), ("max", max)] {
            report.put_ms(
                &format!("{name}_every_replica_{q}_ms"),
                v.map(|v| v as f64 / 1000.0),
            );
        }
    }
    report.put("relays_died", feeds.dead.iter().filter(|d| **d).count());
    report.put("orphans", feeds.orphans.len());
    report.put_ms(
        "orphan_longest_pause_ms",
        Some(longest_pause[1] as f64 / 1000.0),
    );
    report.put_ms(
        "others_longest_pause_ms",
        Some(longest_pause[0] as f64 / 1000.0),
    );
    report.put("moved_at_tree_checks", feeds.retreed);
    report.put("relay_children_max_after", feeds.most_children_after);
    report.put("missed", missed);
    // Each agent beats every 500 ms and the core answers each beat, however the agent is
    // fed: the core's cost that grows with the fleet and not with writes.
    let beat_period = us(corral_net::rpc::BEAT_INTERVAL).max(1);
    report.put(
        "core_beat_messages_per_s",
        2 * config.members as u64 * SECOND / beat_period,
    );
    report.cost.push((
        "wall_s".into(),
        format!("{:.1}", started.elapsed().as_secs_f64()),
    ));
    Ok(report)
}

/// Times the agent's own decoding and applying of `entries` entry frames of
/// `value_bytes`-byte puts: µs per entry.
pub fn apply_cost(entries: u64, value_bytes: usize) -> anyhow::Result<f64> {
    let mut replica = corral_agent::replica::Replica::new();
    let frames: Vec<Vec<u8>> = (1..=entries)
        .map(|revision| {
            corral_proto::frame::encode(&WatchItem::Entry {
                revision,
                command: Command::Put {
                    key: format!("app/config/key-{:06}", revision % 128_000),
                    value: vec![b'v'; value_bytes],
                    session: None,
                },
            })
        })
        .collect::<Result<_, _>>()?;
    let header = corral_proto::frame::FRAME_HEADER_LEN;
    let started = Instant::now();
    for frame in &frames {
        let item: WatchItem = corral_proto::frame::decode_body(&frame[header..])?;
        replica
            .handle_item(item)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let elapsed = started.elapsed();
    Ok(elapsed.as_secs_f64() * 1e6 / entries.max(1) as f64)
}
