//! The simulated network: how long a datagram takes between two hosts, whether it is
//! lost, and which links are cut. No sockets; every decision comes from the run's seeded
//! random source, so a seed replays the same losses.
//!
//! ```text
//!  send(from, to, bytes) ──► cut? (partition, one-way failure) ──► lost? (loss rate)
//!                                  └─► delivered after base(link) + jitter
//! ```

use rand::RngExt;
use rand::rngs::StdRng;

/// Microseconds of virtual time.
pub type Micros = u64;

/// The address the core is reached at, as a link end.
pub const CORE: u32 = u32::MAX;

#[derive(Clone, Debug, PartialEq)]
pub struct NetworkConfig {
    /// One-way latency of a link is drawn once per link, between these (µs): hosts in one
    /// rack sit near the low end, hosts across a data centre near the high end.
    pub base_min_us: Micros,
    pub base_max_us: Micros,
    /// Mean of the exponential jitter added to every datagram (µs): queueing.
    pub jitter_mean_us: Micros,
    /// Chance that a datagram is lost, on every link, each way.
    pub loss: f64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            base_min_us: 100,
            base_max_us: 500,
            jitter_mean_us: 50,
            loss: 0.0,
        }
    }
}

/// What became of one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    DeliverAfter(Micros),
    Lost,
    Cut,
}

#[derive(Debug)]
pub struct Network {
    config: NetworkConfig,
    /// Partition group of each host; hosts in different groups cannot talk while
    /// `partitioned`.
    group: Vec<u16>,
    partitioned: bool,
    /// Hosts that can receive but whose datagrams go nowhere (a one-way failure).
    mute: Vec<bool>,
}

impl Network {
    pub fn new(config: NetworkConfig, hosts: usize) -> Self {
        Network {
            config,
            group: vec![0; hosts],
            partitioned: false,
            mute: vec![false; hosts],
        }
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    pub fn grow(&mut self, hosts: usize) {
        self.group.resize(hosts, 0);
        self.mute.resize(hosts, false);
    }

    /// Cuts the hosts into groups (`group[i]` for host i) until [`Network::heal`].
    pub fn partition(&mut self, group_of: impl Fn(u32) -> u16) {
        for (i, g) in self.group.iter_mut().enumerate() {
            *g = group_of(i as u32);
        }
        self.partitioned = true;
    }

    pub fn heal(&mut self) {
        self.partitioned = false;
    }

    pub fn set_mute(&mut self, host: u32, mute: bool) {
        if let Some(m) = self.mute.get_mut(host as usize) {
            *m = mute;
        }
    }

    /// Whether `target` cannot be heard by `observer`: they are on two sides of a
    /// partition, or `target` cannot send at all.
    pub fn cuts(&self, observer: u32, target: u32) -> bool {
        let group = |h: u32| self.group.get(h as usize).copied().unwrap_or(0);
        self.mute.get(target as usize).copied().unwrap_or(false)
            || (self.partitioned && group(observer) != group(target))
    }

    /// Whether `host` can send to the core: partitions cut the hosts from each other, never
    /// from the core; a muted host sends nothing.
    pub fn reaches_core(&self, host: u32) -> bool {
        !self.mute.get(host as usize).copied().unwrap_or(false)
    }

    /// The fixed part of the one-way latency of a link, the same both ways.
    pub fn base(&self, a: u32, b: u32) -> Micros {
        let (lo, hi) = (a.min(b) as u64, a.max(b) as u64);
        let spread = self
            .config
            .base_max_us
            .saturating_sub(self.config.base_min_us);
        self.config.base_min_us + mix(lo << 32 | hi) % (spread + 1)
    }

    pub fn send(&self, from: u32, to: u32, rng: &mut StdRng) -> Fate {
        let muted = self.mute.get(from as usize).copied().unwrap_or(false);
        if muted || (from != CORE && to != CORE && self.cuts(to, from)) {
            return Fate::Cut;
        }
        if self.config.loss > 0.0 && rng.random_bool(self.config.loss.min(1.0)) {
            return Fate::Lost;
        }
        Fate::DeliverAfter(self.base(from, to) + self.jitter(rng))
    }

    fn jitter(&self, rng: &mut StdRng) -> Micros {
        if self.config.jitter_mean_us == 0 {
            return 0;
        }
        // Exponential, by inversion; capped so that one draw cannot stall a link.
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        let draw = -u.ln() * self.config.jitter_mean_us as f64;
        draw.min(self.config.jitter_mean_us as f64 * 20.0) as Micros
    }

    /// Time for a reliable (QUIC stream) message to get through: the datagram's time,
    /// plus one retransmission timeout for every copy lost on the way.
    pub fn send_reliable(&self, from: u32, to: u32, rng: &mut StdRng) -> Option<Micros> {
        let mut waited = 0;
        for _ in 0..64 {
            match self.send(from, to, rng) {
                Fate::DeliverAfter(after) => return Some(waited + after),
                Fate::Cut => return None,
                // QUIC's probe timeout on a quiet connection: a few round trips, at least
                // the timer granularity.
                Fate::Lost => waited += (4 * self.base(from, to)).max(1_000) + 25_000,
            }
        }
        None
    }
}

/// A fixed 64-bit mixer (splitmix64's finaliser): stable across runs and platforms.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_partition_cuts_only_across_groups_and_heals() {
        let mut net = Network::new(NetworkConfig::default(), 4);
        let mut rng = StdRng::seed_from_u64(1);
        net.partition(|h| (h % 2) as u16);
        assert_eq!(net.send(0, 1, &mut rng), Fate::Cut);
        assert!(matches!(net.send(0, 2, &mut rng), Fate::DeliverAfter(_)));
        assert!(matches!(net.send(0, CORE, &mut rng), Fate::DeliverAfter(_)));
        net.heal();
        assert!(matches!(net.send(0, 1, &mut rng), Fate::DeliverAfter(_)));
    }

    #[test]
    fn loss_is_near_its_rate_and_latency_within_bounds() {
        let config = NetworkConfig {
            loss: 0.1,
            ..NetworkConfig::default()
        };
        let net = Network::new(config.clone(), 100);
        let mut rng = StdRng::seed_from_u64(2);
        let mut lost = 0;
        for i in 0..10_000u32 {
            match net.send(i % 100, (i * 7) % 100, &mut rng) {
                Fate::Lost => lost += 1,
                Fate::DeliverAfter(after) => assert!(after >= config.base_min_us),
                Fate::Cut => panic!("nothing is cut"),
            }
        }
        assert!((800..1200).contains(&lost), "{lost} lost of 10,000 at 10%");
    }

    #[test]
    fn a_mute_host_receives_but_does_not_send() {
        let mut net = Network::new(NetworkConfig::default(), 2);
        let mut rng = StdRng::seed_from_u64(3);
        net.set_mute(0, true);
        assert_eq!(net.send(0, 1, &mut rng), Fate::Cut);
        assert!(matches!(net.send(1, 0, &mut rng), Fate::DeliverAfter(_)));
    }
}
