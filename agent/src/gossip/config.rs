//! Gossip timing, with the defaults Corral ships.
//!
//! Defaults are tuned for a LAN or a data centre: a member is probed about every
//! `probe_period`, a probe that gets no ack within `probe_rtt` is retried through
//! `indirect_probes` other members, and a member that stays suspected for
//! `suspect_to_down` is declared dead. With these, a dead or frozen host is declared
//! dead in about two seconds on a small pool, while a pause of one second is refuted.

use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Largest gossip packet. Below quinn's datagram size right after the handshake (1162
/// bytes at the initial 1200-byte MTU), so that no packet waits for path-MTU discovery.
pub const GOSSIP_PACKET_LEN_MAX: usize = 1150;

/// Measured in `simulations/` (docs/simulations.md): after a 20 s split of 1,000 members,
/// every member knows every other again 14 s after the heal at 2 s, and not within 180 s
/// at 30 s.
pub const ANNOUNCE_TO_DOWN_MS: u64 = 2_000;

/// Probe period and suspicion timeout, measured in `simulations/` (docs/simulations.md)
/// at 1,000 members: no false death in 167 member-hours at 1% and at 5% loss with a 1 s
/// pause every 3 s somewhere, and a death known by the first member in 2.3 s (p50),
/// against 3.1 s at 500 ms and 2 s, for 1.5 KB/s of gossip per member instead of 1.0.
pub const PROBE_PERIOD_MS: u64 = 300;
pub const PROBE_RTT_MS: u64 = 200;
pub const SUSPECT_TO_DOWN_MS: u64 = 1_500;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipConfig {
    pub probe_period: Duration,
    pub probe_rtt: Duration,
    pub indirect_probes: usize,
    pub suspect_to_down: Duration,
    /// How often updates are pushed to `gossip_fanout` random members, beyond the
    /// piggy-backing on probes.
    pub gossip_period: Duration,
    pub gossip_fanout: usize,
    /// How often a member announces itself to a random member.
    pub announce_period: Duration,
    /// How often a member announces itself to a random member it holds dead. This is what
    /// heals a partition: each side has declared the other dead and gossips only among
    /// itself, so news crosses only through these announces.
    pub announce_to_down_period: Duration,
    /// How long a dead member is remembered (and its sessions kept reported dead).
    pub remember_down_for: Duration,
    /// The pool size the dissemination count is computed for: each update is sent
    /// 4 × log10(n + 1) times. Sized for the largest pool, since a few extra sends in a
    /// small pool cost little and too few in a large one leave members unaware.
    pub expected_members: u32,
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            probe_period: Duration::from_millis(PROBE_PERIOD_MS),
            probe_rtt: Duration::from_millis(PROBE_RTT_MS),
            indirect_probes: 3,
            suspect_to_down: Duration::from_millis(SUSPECT_TO_DOWN_MS),
            gossip_period: Duration::from_millis(200),
            gossip_fanout: 3,
            announce_period: Duration::from_secs(10),
            announce_to_down_period: Duration::from_millis(ANNOUNCE_TO_DOWN_MS),
            remember_down_for: Duration::from_secs(24 * 3600),
            expected_members: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid gossip setting {field}: {reason}")]
pub struct GossipConfigError {
    pub field: &'static str,
    pub reason: String,
}

impl GossipConfig {
    pub fn validate(&self) -> Result<(), GossipConfigError> {
        let bad = |field, reason: &str| {
            Err(GossipConfigError {
                field,
                reason: reason.into(),
            })
        };
        if self.probe_period < Duration::from_millis(10) {
            return bad("probe_period", "must be at least 10 ms");
        }
        if self.probe_rtt.is_zero() || self.probe_rtt >= self.probe_period {
            return bad("probe_rtt", "must be above zero and below probe_period");
        }
        if self.indirect_probes == 0 || self.indirect_probes > 16 {
            return bad("indirect_probes", "must be between 1 and 16");
        }
        if self.suspect_to_down < self.probe_period {
            return bad("suspect_to_down", "must be at least probe_period");
        }
        if self.gossip_period.is_zero() || self.gossip_fanout == 0 {
            return bad("gossip_period", "period and fanout must be above zero");
        }
        if self.announce_period < self.probe_period {
            return bad("announce_period", "must be at least probe_period");
        }
        if self.announce_to_down_period < self.probe_period {
            return bad("announce_to_down_period", "must be at least probe_period");
        }
        if self.expected_members == 0 {
            return bad("expected_members", "must be above zero");
        }
        Ok(())
    }

    /// The foca configuration. Assumes [`GossipConfig::validate`] passed.
    pub fn to_foca(&self) -> foca::Config {
        let size = NonZeroU32::new(self.expected_members).unwrap_or(NonZeroU32::MIN);
        let mut config = foca::Config::new_lan(size);
        config.probe_period = self.probe_period;
        config.probe_rtt = self.probe_rtt;
        config.num_indirect_probes =
            NonZeroUsize::new(self.indirect_probes).unwrap_or(NonZeroUsize::MIN);
        config.suspect_to_down_after = self.suspect_to_down;
        config.remove_down_after = Some(self.remember_down_for);
        config.max_packet_size =
            NonZeroUsize::new(GOSSIP_PACKET_LEN_MAX).expect("a non-zero constant");
        config.notify_down_members = true;
        config.periodic_gossip = Some(foca::PeriodicParams {
            frequency: self.gossip_period,
            num_members: NonZeroUsize::new(self.gossip_fanout).unwrap_or(NonZeroUsize::MIN),
        });
        config.periodic_announce = Some(foca::PeriodicParams {
            frequency: self.announce_period,
            num_members: NonZeroUsize::MIN,
        });
        config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: self.announce_to_down_period,
            num_members: NonZeroUsize::MIN,
        });
        // At least a few transmissions even when the expected pool is tiny.
        config.max_transmissions = config.max_transmissions.max(NonZeroU8::new(6).expect("6"));
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_fit_a_datagram() {
        let config = GossipConfig::default();
        config.validate().unwrap();
        let foca = config.to_foca();
        assert_eq!(foca.max_packet_size.get(), GOSSIP_PACKET_LEN_MAX);
        assert!(foca.suspect_to_down_after > foca.probe_period);
    }

    #[test]
    fn nonsense_is_refused_with_the_field_named() {
        let config = GossipConfig {
            probe_rtt: Duration::from_secs(5),
            ..GossipConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().field, "probe_rtt");
    }
}
