//! Replication positions, as agents report them for their hosts' replicas: the leader keeps
//! the last one of each replica in memory (never in the log) and, when a command would take
//! a master away, attaches those of the candidates to it (`Command::Promoting`), so that the
//! state machine promotes the freshest. Free of I/O; the clock is passed in.
//!
//! ```text
//!  app ──ReportPosition──► agent ──ReportPositions (each second, and soon after a change)──► leader
//!  CloseNode / CloseSession / … ──► leader: successions ──► Promoting { positions, command }
//! ```
//!
//! A report older than [`POSITION_FRESH`] is not attached: its replica's agent stopped
//! reporting (or the replica stopped counting), and an old figure would rank it wrongly.
//! A leader that just took office has only what agents sent it since; they report every
//! [`corral_net::rpc::POSITIONS_REPORT_INTERVAL`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use corral_proto::ReplicaPosition;
use corral_state::Succession;

/// How long a reported position counts.
pub const POSITION_FRESH: Duration = Duration::from_secs(10);

/// Most replicas whose positions a member keeps; reports of more are dropped until older
/// ones expire.
pub const POSITIONS_KEPT_MAX: usize = 200_000;

#[derive(Debug, Default)]
pub(crate) struct Positions {
    /// `(shard, address)` → the last position heard and when.
    heard: HashMap<(String, String), (u64, Instant)>,
}

impl Positions {
    /// Keeps the positions of one report; answers how many were kept (those past
    /// [`POSITIONS_KEPT_MAX`] are not).
    pub(crate) fn hear(&mut self, positions: Vec<ReplicaPosition>, now: Instant) -> usize {
        if self.heard.len() + positions.len() > POSITIONS_KEPT_MAX {
            self.heard
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < POSITION_FRESH);
        }
        let mut kept = 0;
        for p in positions {
            let key = (p.shard, p.address);
            if self.heard.len() >= POSITIONS_KEPT_MAX && !self.heard.contains_key(&key) {
                continue;
            }
            self.heard.insert(key, (p.position, now));
            kept += 1;
        }
        kept
    }

    /// The fresh positions of the candidates of `successions`, to attach to the command
    /// that causes them (at most `max`).
    pub(crate) fn of(
        &self,
        successions: &[Succession],
        now: Instant,
        max: usize,
    ) -> Vec<ReplicaPosition> {
        let mut attached = Vec::new();
        for succession in successions {
            for address in &succession.candidates {
                let key = (succession.shard.clone(), address.clone());
                let Some((position, at)) = self.heard.get(&key) else {
                    continue;
                };
                if now.saturating_duration_since(*at) >= POSITION_FRESH {
                    continue;
                }
                if attached.len() == max {
                    return attached;
                }
                attached.push(ReplicaPosition {
                    shard: key.0,
                    address: key.1,
                    position: *position,
                });
            }
        }
        attached
    }

    pub(crate) fn len(&self) -> usize {
        self.heard.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(address: &str, position: u64) -> ReplicaPosition {
        ReplicaPosition {
            shard: "M3".into(),
            address: address.into(),
            position,
        }
    }

    fn succession(candidates: &[&str]) -> Vec<Succession> {
        vec![Succession {
            shard: "M3".into(),
            candidates: candidates.iter().map(|c| c.to_string()).collect(),
        }]
    }

    #[test]
    fn the_last_fresh_position_of_each_candidate_is_attached() {
        let start = Instant::now();
        let mut positions = Positions::default();
        positions.hear(vec![position("a", 1), position("b", 5)], start);
        positions.hear(vec![position("a", 9)], start + Duration::from_secs(1));
        positions.hear(vec![position("c", 3)], start + Duration::from_secs(9));
        let now = start + Duration::from_secs(10);
        // b was last heard 10 s ago: too old to count; d was never heard.
        assert_eq!(
            positions.of(&succession(&["a", "b", "c", "d"]), now, 100),
            vec![position("a", 9), position("c", 3)]
        );
        assert_eq!(
            positions.of(&succession(&["a", "c"]), now, 1),
            vec![position("a", 9)]
        );
    }

    #[test]
    fn the_table_is_bounded_and_makes_room_from_expired_reports() {
        let start = Instant::now();
        let mut positions = Positions::default();
        let many: Vec<_> = (0..POSITIONS_KEPT_MAX)
            .map(|i| position(&format!("r{i}"), 1))
            .collect();
        assert_eq!(positions.hear(many, start), POSITIONS_KEPT_MAX);
        assert_eq!(positions.hear(vec![position("late", 1)], start), 0);
        // A known replica is still updated.
        assert_eq!(positions.hear(vec![position("r0", 2)], start), 1);
        let later = start + POSITION_FRESH;
        assert_eq!(positions.hear(vec![position("late", 1)], later), 1);
        assert_eq!(positions.len(), 1);
    }
}
