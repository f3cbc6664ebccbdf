//! `GET /metrics`: the OpenMetrics text format (which Prometheus reads), encoded by
//! `prometheus_client`, so that names, types and the escaping of label values (an agent's
//! name is one) are the library's.
//!
//! The agent's own figures are read in memory; the core's (term, commit index, applied
//! revision) come from one status call to the core leader, bounded by a short timeout,
//! so a scrape never hangs on an unreachable core: `corral_core_up` says 0 instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use super::gateway::Gateway;
use crate::metrics::{DnsOutcome, Labels, Point, RequestKind, Scraped};

const CORE_STATUS_TIMEOUT: Duration = Duration::from_millis(500);

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A registry filled at scrape time.
struct Page(Registry);

impl Page {
    fn gauge(&mut self, name: &str, help: &str, value: impl TryInto<i64>) {
        let value = value.try_into().unwrap_or(i64::MAX);
        self.0.register(
            name,
            help,
            Scraped::one(MetricType::Gauge, Point::Gauge(value)),
        );
    }

    fn measure(&mut self, name: &str, help: &str, value: f64) {
        let point = Point::Measure(value);
        self.0
            .register(name, help, Scraped::one(MetricType::Gauge, point));
    }

    /// A counter: the encoder adds `_total` to `name`.
    fn counter(&mut self, name: &str, help: &str, value: u64) {
        let point = Point::Counter(value);
        self.0
            .register(name, help, Scraped::one(MetricType::Counter, point));
    }

    fn family(&mut self, name: &str, help: &str, kind: MetricType, series: Vec<(Labels, Point)>) {
        self.0.register(name, help, Scraped::new(kind, series));
    }
}

fn label(key: &'static str, value: impl ToString) -> Labels {
    vec![(key, value.to_string())]
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

pub(super) async fn metrics(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    let context = &gateway.context;
    let mut page = Page(Registry::default());
    let identity = context.gossip.identity.borrow().clone();
    page.0.register(
        "corral_agent",
        "The agent's identity",
        Info::new(vec![
            ("name", identity.name.clone()),
            ("incarnation", identity.incarnation.to_string()),
        ]),
    );

    let (revision, counts, quota) = context
        .replica
        .read(|r| (r.revision(), r.machine().counts(), r.machine().quota_use()));
    page.gauge(
        "corral_agent_replica_revision",
        "Revision the local replica has applied",
        revision,
    );
    let age = context.replica.age().map_or(f64::NAN, |a| a.as_secs_f64());
    page.measure(
        "corral_agent_replica_age_seconds",
        "Time since the replica last heard from the core",
        age,
    );
    page.counter(
        "corral_agent_replica_feed_streams",
        "Watch streams the replica feed opened to core members and relays; one that keeps \
         rising says the feed keeps losing its stream",
        context.replica.feed_streams(),
    );
    page.gauge(
        "corral_agent_replica_fed_by_relay",
        "1 while another agent feeds the replica (the feed tree), 0 while a core member does",
        u64::from(
            context
                .replica
                .feed()
                .is_some_and(|f| f.starts_with("relay ")),
        ),
    );
    page.counter(
        "corral_agent_replica_checkpoints_matched",
        "Checkpoints of the replica's state that matched the core's (checked while another \
         agent feeds it)",
        context.replica.checkpoints_matched(),
    );
    page.counter(
        "corral_agent_replica_checkpoint_mismatches",
        "Checkpoints of the replica's state that differed from the core's: the replica then \
         starts over from the core and takes no relay for a minute",
        context.replica.checkpoint_mismatches(),
    );
    page.gauge(
        "corral_agent_relay_streams",
        "Watch streams this agent serves to the agents it feeds",
        context.replica.relay_streams(),
    );
    page.counter(
        "corral_agent_replica_fed_bytes",
        "Bytes the replica read from its watch streams (core members' and relays') since the \
         agent started",
        context.replica.fed_bytes(),
    );
    page.gauge("corral_agent_keys", "Keys in the replica", counts.keys);
    page.gauge(
        "corral_agent_sessions",
        "Open sessions in the replica",
        counts.sessions,
    );
    page.gauge(
        "corral_agent_shards",
        "Shards in the replica",
        counts.shards,
    );
    page.gauge("corral_agent_locks", "Locks in the replica", counts.locks);
    page.gauge(
        "corral_agent_service_instances",
        "Service instances in the replica",
        counts.service_instances,
    );
    let quota_series = |keys: u64, bytes: u64| {
        vec![
            (
                label("what", "keys"),
                Point::Gauge(keys.try_into().unwrap_or(i64::MAX)),
            ),
            (
                label("what", "bytes"),
                Point::Gauge(bytes.try_into().unwrap_or(i64::MAX)),
            ),
        ]
    };
    page.family(
        "corral_state_quota_used",
        "The state's keys and bytes against its quota",
        MetricType::Gauge,
        quota_series(quota.keys, quota.bytes),
    );
    page.family(
        "corral_state_quota_max",
        "The state's quota",
        MetricType::Gauge,
        quota_series(quota.keys_max, quota.bytes_max),
    );
    page.gauge(
        "corral_state_quota_alarm",
        "1 once keys or bytes passed 90% of the quota: writes that grow the state will soon \
         be refused",
        u8::from(quota.alarm()),
    );
    let metrics = &context.metrics;
    let cut = [
        ("http_connection", &metrics.http_refused),
        ("socket_connection", &metrics.socket_refused),
        ("dns_connection", &metrics.dns_tcp_refused),
        ("subscription", &metrics.subscriptions_cut),
    ];
    page.family(
        "corral_agent_cut",
        "Connections refused at a cap, and subscriptions ended because their subscriber did \
         not read",
        MetricType::Counter,
        cut.iter()
            .map(|(what, count)| (label("what", what), Point::Counter(load(count))))
            .collect(),
    );
    page.gauge(
        "corral_agent_node_session",
        "The agent's node session (0: none)",
        context.node_session.borrow().unwrap_or(0),
    );

    page.family(
        "corral_agent_dns_queries",
        "DNS queries, by outcome",
        MetricType::Counter,
        DnsOutcome::ALL
            .iter()
            .map(|o| {
                let count = metrics.dns_queries(*o);
                (label("result", o.label()), Point::Counter(count))
            })
            .collect(),
    );

    let (alive, suspect, down) = context.gossip.view.read().counts();
    page.family(
        "corral_agent_members",
        "Gossip members by state, as this agent sees them",
        MetricType::Gauge,
        [("alive", alive), ("suspect", suspect), ("down", down)]
            .into_iter()
            .map(|(state, n)| (label("state", state), Point::Gauge(n as i64)))
            .collect(),
    );
    let counters = &context.gossip.counters;
    page.family(
        "corral_agent_gossip_datagrams",
        "Gossip datagrams received",
        MetricType::Counter,
        vec![
            (
                label("result", "accepted"),
                Point::Counter(load(&counters.received)),
            ),
            (
                label("result", "rejected"),
                Point::Counter(load(&counters.rejected)),
            ),
        ],
    );

    page.family(
        "corral_agent_request_duration_seconds",
        "Socket API request latency",
        MetricType::Histogram,
        RequestKind::ALL
            .into_iter()
            .map(|kind| {
                let snapshot = metrics.requests(kind).snapshot();
                (label("kind", kind.label()), Point::Histogram(snapshot))
            })
            .collect(),
    );
    page.counter(
        "corral_agent_request_errors",
        "Socket API requests answered with an error",
        load(&metrics.request_errors),
    );
    page.family(
        "corral_http_request_duration_seconds",
        "HTTP gateway request latency",
        MetricType::Histogram,
        vec![(Labels::new(), Point::Histogram(gateway.latency.snapshot()))],
    );

    let core = &context.core;
    let address = core
        .leader()
        .or_else(|| core.members().first().cloned())
        .unwrap_or_default();
    let status = tokio::time::timeout(CORE_STATUS_TIMEOUT, core.status(&address)).await;
    let status = status.ok().and_then(Result::ok);
    page.gauge(
        "corral_core_up",
        "1 if the core answered this scrape",
        u8::from(status.is_some()),
    );
    if let Some(status) = status {
        page.gauge(
            "corral_core_term",
            "Raft term of the member asked",
            status.term,
        );
        page.gauge(
            "corral_core_commit_index",
            "Raft commit index of the member asked",
            status.committed.map_or(0, |log| log.index),
        );
        page.gauge(
            "corral_core_last_applied",
            "Raft log index the member asked has applied",
            status.last_applied.unwrap_or(0),
        );
        page.gauge(
            "corral_core_revision",
            "Revision the member asked has applied",
            status.revision,
        );
        page.gauge(
            "corral_core_leader",
            "Id of the core leader (0: none known)",
            status.leader.unwrap_or(0),
        );
        page.gauge(
            "corral_agent_watch_lag_revisions",
            "How many revisions the replica is behind the member asked",
            status.revision.saturating_sub(revision),
        );
    }
    let mut out = String::with_capacity(8 * 1024);
    match prometheus_client::encoding::text::encode(&mut out, &page.0) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], out),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "the metrics could not be encoded\n".to_string(),
        ),
    }
}
