//! The agent's counters and latency histograms, rendered in the Prometheus text format.
//!
//! Histograms have fixed buckets (50 µs to 10 s) and are plain atomics: recording costs a
//! few relaxed increments and never blocks a request.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
pub const BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last counts what exceeds every bound.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn record(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Appends the `_bucket`, `_sum` and `_count` lines of `name` with `labels`
    /// (`key="value"` pairs, comma-separated, possibly empty).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// The kinds of requests whose latency is kept apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Read,
    ConsistentRead,
    Write,
    Lock,
    Other,
}

impl RequestKind {
    pub const ALL: [RequestKind; 5] = [
        RequestKind::Read,
        RequestKind::ConsistentRead,
        RequestKind::Write,
        RequestKind::Lock,
        RequestKind::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RequestKind::Read => "read",
            RequestKind::ConsistentRead => "consistent_read",
            RequestKind::Write => "write",
            RequestKind::Lock => "lock",
            RequestKind::Other => "other",
        }
    }
}

/// What the agent counts.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    /// Socket API request latency, by kind.
    requests: [Histogram; 5],
    /// Requests that ended in an error.
    pub request_errors: AtomicU64,
    /// Socket connections accepted.
    pub connections: AtomicU64,
    /// HTTP connections closed at once because the gateway had its most open.
    pub http_refused: AtomicU64,
    /// Socket connections refused because their Unix user had its most open.
    pub socket_refused: AtomicU64,
    /// Subscriptions ended because their subscriber did not read what was queued.
    pub subscriptions_cut: AtomicU64,
}

impl AgentMetrics {
    pub fn record(&self, kind: RequestKind, elapsed: Duration, ok: bool) {
        self.requests[kind as usize].record(elapsed);
        if !ok {
            self.request_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn requests(&self, kind: RequestKind) -> &Histogram {
        &self.requests[kind as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_count_everything() {
        let histogram = Histogram::default();
        histogram.record(Duration::from_micros(30));
        histogram.record(Duration::from_millis(3));
        histogram.record(Duration::from_secs(60));
        let mut out = String::new();
        histogram.render(&mut out, "x", "kind=\"read\"");
        assert!(out.contains("x_bucket{kind=\"read\",le=\"0.00005\"} 1\n"));
        assert!(out.contains("x_bucket{kind=\"read\",le=\"0.005\"} 2\n"));
        assert!(out.contains("x_bucket{kind=\"read\",le=\"10\"} 2\n"));
        assert!(out.contains("x_bucket{kind=\"read\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count{kind=\"read\"} 3\n"));
        assert_eq!(histogram.count(), 3);
    }
}
