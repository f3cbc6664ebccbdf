//! What memberlist (the SWIM library under Consul and Serf) would take for the same
//! fleet, computed from its default LAN configuration and its published formulas, for
//! comparison beside the simulated figures. Nothing here is simulated.
//!
//! memberlist's `DefaultLANConfig`: probe interval 1 s, probe timeout 500 ms, 3 indirect
//! checks, suspicion multiplier 4, suspicion max-timeout multiplier 6, gossip every
//! 200 ms to 3 members, retransmit multiplier 4, push-pull every 30 s (scaled up for
//! large fleets). Its suspicion timeout is `4 × max(1, log10(N)) × 1 s`; Lifeguard starts
//! a suspicion at 6× that and shrinks it to 1× as independent confirmations arrive.

/// memberlist's expected timings and traffic for a fleet of `members`.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberlistFigures {
    pub members: u32,
    /// The shortest suspicion timeout (enough confirmations arrive).
    pub suspicion_min_ms: f64,
    /// The longest (no confirmation arrives).
    pub suspicion_max_ms: f64,
    /// From a death to the first member declaring it, with the shortest suspicion.
    pub detect_first_ms: f64,
    /// From a death to every member knowing, with the shortest suspicion.
    pub detect_last_ms: f64,
    /// Push-pull interval after memberlist's scaling for large fleets.
    pub push_pull_interval_s: f64,
    /// Bytes per member per second: probes, acks, and push-pull state syncs.
    pub bytes_per_member_s: f64,
}

const PROBE_INTERVAL_MS: f64 = 1000.0;
const SUSPICION_MULT: f64 = 4.0;
const SUSPICION_MAX_TIMEOUT_MULT: f64 = 6.0;
const GOSSIP_INTERVAL_MS: f64 = 200.0;
const GOSSIP_NODES: f64 = 3.0;
const PUSH_PULL_INTERVAL_S: f64 = 30.0;
/// memberlist's `pushPullScaleThreshold`.
const PUSH_PULL_SCALE_THRESHOLD: f64 = 32.0;
/// One member's state in a push-pull exchange (name, address, port, incarnation, state,
/// versions), msgpack-encoded, with an empty meta: about 60 bytes.
const PUSH_PULL_STATE_BYTES: f64 = 60.0;
/// A ping or an ack with its UDP and IP headers.
const PROBE_PACKET_BYTES: f64 = 80.0;

pub fn figures(members: u32) -> MemberlistFigures {
    let n = members.max(1) as f64;
    let scale = n.log10().max(1.0);
    let suspicion_min_ms = SUSPICION_MULT * scale * PROBE_INTERVAL_MS;
    let suspicion_max_ms = SUSPICION_MAX_TIMEOUT_MULT * suspicion_min_ms;
    // A dead member is probed by someone within about half a probe interval on average
    // (each member probes one other per interval); the probe, its indirect probes and
    // the wait to the interval's end take one interval before the suspicion starts.
    let first_probe_ms = PROBE_INTERVAL_MS / 2.0;
    let detect_first_ms = first_probe_ms + PROBE_INTERVAL_MS + suspicion_min_ms;
    // An epidemic with fanout f reaches N members in about ln(N)/ln(f+1) rounds.
    let rounds = n.ln() / (GOSSIP_NODES + 1.0).ln();
    let detect_last_ms = detect_first_ms + rounds.ceil() * GOSSIP_INTERVAL_MS;
    // memberlist's pushPullScale: the interval grows by one step per doubling above 32.
    let push_pull_interval_s = if n <= PUSH_PULL_SCALE_THRESHOLD {
        PUSH_PULL_INTERVAL_S
    } else {
        let multiplier = (n.log2() - PUSH_PULL_SCALE_THRESHOLD.log2()).ceil() + 1.0;
        PUSH_PULL_INTERVAL_S * multiplier
    };
    // Each member starts one push-pull per interval and answers one on average: the full
    // state travels twice each way.
    let push_pull_bytes_s = 2.0 * 2.0 * n * PUSH_PULL_STATE_BYTES / push_pull_interval_s / 2.0;
    // One ping sent and one ack sent per second, on average.
    let probe_bytes_s = 2.0 * PROBE_PACKET_BYTES * 1000.0 / PROBE_INTERVAL_MS;
    MemberlistFigures {
        members,
        suspicion_min_ms,
        suspicion_max_ms,
        detect_first_ms,
        detect_last_ms,
        push_pull_interval_s,
        bytes_per_member_s: push_pull_bytes_s + probe_bytes_s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The formulas give memberlist's documented values: 4 × log10(10,000) × 1 s = 16 s.
    #[test]
    fn ten_thousand_members() {
        let f = figures(10_000);
        assert_eq!(f.suspicion_min_ms, 16_000.0);
        assert_eq!(f.suspicion_max_ms, 96_000.0);
        assert_eq!(f.push_pull_interval_s, 300.0);
        assert!(f.detect_last_ms > f.detect_first_ms);
        // Below ten members the log is clamped to 1.
        assert_eq!(figures(5).suspicion_min_ms, 4_000.0);
    }
}
