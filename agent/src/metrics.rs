//! The agent's counters and latency histograms, and the metric type that hands them to
//! `prometheus_client` for the OpenMetrics text format.
//!
//! Histograms have fixed buckets (50 µs to 10 s) and are plain atomics: recording costs a
//! few relaxed increments and never blocks a request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

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

    /// The histogram as it stands: non-cumulative bucket counts (the last one above every
    /// bound, at +Inf), the sum in seconds and the count.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.counts)
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        buckets.shrink_to_fit();
        HistogramSnapshot {
            count: buckets.iter().map(|(_, n)| n).sum(),
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            buckets,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

/// The labels of one series: names fixed in the code, values from anywhere (an agent's
/// name, a kind), which the encoder escapes.
pub type Labels = Vec<(&'static str, String)>;

/// One value of a series, read at scrape time.
#[derive(Clone, Debug, PartialEq)]
pub enum Point {
    Gauge(i64),
    /// A gauge that is not a whole number (an age in seconds; NaN when unknown).
    Measure(f64),
    Counter(u64),
    Histogram(HistogramSnapshot),
}

/// A metric whose series are read when the page is scraped (from atomics, the replica,
/// the core's status): handed to a `prometheus_client` registry for encoding, so that the
/// format, names and escaping are the library's.
#[derive(Debug)]
pub struct Scraped {
    kind: MetricType,
    series: Vec<(Labels, Point)>,
}

impl Scraped {
    /// A metric of `kind` with these series; each point must be of that kind.
    pub fn new(kind: MetricType, series: Vec<(Labels, Point)>) -> Self {
        Scraped { kind, series }
    }

    /// One series without labels.
    pub fn one(kind: MetricType, point: Point) -> Self {
        Scraped::new(kind, vec![(Labels::new(), point)])
    }
}

impl EncodeMetric for Scraped {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        for (labels, point) in &self.series {
            if labels.is_empty() {
                encode_point(&mut encoder, point)?;
            } else {
                encode_point(&mut encoder.encode_family(labels)?, point)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

fn encode_point(encoder: &mut MetricEncoder, point: &Point) -> std::fmt::Result {
    match point {
        Point::Gauge(value) => encoder.encode_gauge(value),
        Point::Measure(value) => encoder.encode_gauge(value),
        Point::Counter(value) => encoder.encode_counter::<NoLabelSet, _, u64>(value, None),
        Point::Histogram(h) => {
            encoder.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)
        }
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
    /// DNS connections over TCP closed at once because the most were open.
    pub dns_tcp_refused: AtomicU64,
    /// Subscriptions ended because their subscriber did not read what was queued.
    pub subscriptions_cut: AtomicU64,
    /// DNS queries, by outcome ([`DnsOutcome`]).
    dns_queries: [AtomicU64; 4],
}

/// How a DNS query ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsOutcome {
    /// Records, or a name with none of the type asked.
    Answered = 0,
    NxDomain = 1,
    /// Outside `corral.`, another class, another opcode.
    Refused = 2,
    Malformed = 3,
}

impl DnsOutcome {
    pub const ALL: [DnsOutcome; 4] = [
        DnsOutcome::Answered,
        DnsOutcome::NxDomain,
        DnsOutcome::Refused,
        DnsOutcome::Malformed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DnsOutcome::Answered => "answered",
            DnsOutcome::NxDomain => "nxdomain",
            DnsOutcome::Refused => "refused",
            DnsOutcome::Malformed => "malformed",
        }
    }
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

    pub fn dns_query(&self, outcome: DnsOutcome) {
        self.dns_queries[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn dns_queries(&self, outcome: DnsOutcome) -> u64 {
        self.dns_queries[outcome as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    /// Buckets are cumulative in the output and count everything; label values are
    /// escaped, whatever an agent is called.
    #[test]
    fn histograms_and_labels_encode_as_openmetrics() {
        let histogram = Histogram::default();
        histogram.record(Duration::from_micros(30));
        histogram.record(Duration::from_millis(3));
        histogram.record(Duration::from_secs(60));
        assert_eq!(histogram.count(), 3);
        let mut registry = Registry::default();
        let labels = vec![("kind", "read".to_string())];
        let series = vec![(labels, Point::Histogram(histogram.snapshot()))];
        registry.register("x", "Latency", Scraped::new(MetricType::Histogram, series));
        let hostile = vec![("name", "a\"b\\c\nd".to_string())];
        let series = vec![(hostile, Point::Gauge(1))];
        registry.register("y", "Names", Scraped::new(MetricType::Gauge, series));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("x_bucket{le=\"0.00005\",kind=\"read\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{le=\"0.005\",kind=\"read\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{le=\"10.0\",kind=\"read\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{le=\"+Inf\",kind=\"read\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_count{kind=\"read\"} 3\n"), "{out}");
        assert!(out.contains("y{name=\"a\\\"b\\\\c\\nd\"} 1\n"), "{out}");
        assert!(out.ends_with("# EOF\n"), "{out}");
    }
}
