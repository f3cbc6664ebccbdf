//! `GET /metrics`: the Prometheus text format.
//!
//! The agent's own figures are read in memory; the core's (term, commit index, applied
//! revision) come from one status call to the core leader, bounded by a short timeout,
//! so a scrape never hangs on an unreachable core: `corral_core_up` says 0 instead.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::gateway::Gateway;
use crate::metrics::RequestKind;

const CORE_STATUS_TIMEOUT: Duration = Duration::from_millis(500);

fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

pub(super) async fn metrics(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    let context = &gateway.context;
    let mut out = String::with_capacity(8 * 1024);
    let identity = context.gossip.identity.borrow().clone();
    let _ = writeln!(
        out,
        "# HELP corral_agent_info The agent's identity.\n# TYPE corral_agent_info gauge\n\
         corral_agent_info{{name=\"{}\",incarnation=\"{}\"}} 1",
        identity.name, identity.incarnation
    );

    let (revision, counts) = context
        .replica
        .read(|r| (r.revision(), r.machine().counts()));
    gauge(
        &mut out,
        "corral_agent_replica_revision",
        "Revision the local replica has applied.",
        revision,
    );
    let age = context
        .replica
        .age()
        .map_or(f64::NAN, |age| age.as_secs_f64());
    gauge(
        &mut out,
        "corral_agent_replica_age_seconds",
        "Time since the replica last heard from the core.",
        age,
    );
    let _ = writeln!(
        out,
        "# HELP corral_agent_replica_feed_streams_total Watch streams the replica feed opened to \
         core members; one that keeps rising says the feed keeps losing its stream.\n\
         # TYPE corral_agent_replica_feed_streams_total counter\n\
         corral_agent_replica_feed_streams_total {}",
        context.replica.feed_streams()
    );
    gauge(
        &mut out,
        "corral_agent_keys",
        "Keys in the replica.",
        counts.keys,
    );
    gauge(
        &mut out,
        "corral_agent_sessions",
        "Open sessions in the replica.",
        counts.sessions,
    );
    gauge(
        &mut out,
        "corral_agent_shards",
        "Shards in the replica.",
        counts.shards,
    );
    gauge(
        &mut out,
        "corral_agent_locks",
        "Locks in the replica.",
        counts.locks,
    );
    gauge(
        &mut out,
        "corral_agent_service_instances",
        "Service instances in the replica.",
        counts.service_instances,
    );
    let quota = context.replica.read(|r| r.machine().quota_use());
    let _ = writeln!(
        out,
        "# HELP corral_state_quota_used The state's keys and bytes against its quota.\n\
         # TYPE corral_state_quota_used gauge\n\
         corral_state_quota_used{{what=\"keys\"}} {}\n\
         corral_state_quota_used{{what=\"bytes\"}} {}\n\
         # HELP corral_state_quota_max The state's quota.\n\
         # TYPE corral_state_quota_max gauge\n\
         corral_state_quota_max{{what=\"keys\"}} {}\n\
         corral_state_quota_max{{what=\"bytes\"}} {}",
        quota.keys, quota.bytes, quota.keys_max, quota.bytes_max
    );
    gauge(
        &mut out,
        "corral_state_quota_alarm",
        "1 once keys or bytes passed 90% of the quota: writes that grow the state will soon be refused.",
        u8::from(quota.alarm()),
    );
    let refused = [
        ("http_connection", &context.metrics.http_refused),
        ("socket_connection", &context.metrics.socket_refused),
        ("subscription", &context.metrics.subscriptions_cut),
    ];
    let _ = writeln!(
        out,
        "# HELP corral_agent_cut_total Connections refused at a cap, and subscriptions ended \
         because their subscriber did not read.\n# TYPE corral_agent_cut_total counter"
    );
    for (what, count) in refused {
        let _ = writeln!(
            out,
            "corral_agent_cut_total{{what=\"{what}\"}} {}",
            count.load(Ordering::Relaxed)
        );
    }
    let node_session = context.node_session.borrow().unwrap_or(0);
    gauge(
        &mut out,
        "corral_agent_node_session",
        "The agent's node session (0: none).",
        node_session,
    );

    let (alive, suspect, down) = context.gossip.view.read().counts();
    let _ = writeln!(
        out,
        "# HELP corral_agent_members Gossip members by state, as this agent sees them.\n\
         # TYPE corral_agent_members gauge\n\
         corral_agent_members{{state=\"alive\"}} {alive}\n\
         corral_agent_members{{state=\"suspect\"}} {suspect}\n\
         corral_agent_members{{state=\"down\"}} {down}"
    );
    let counters = &context.gossip.counters;
    let _ = writeln!(
        out,
        "# HELP corral_agent_gossip_datagrams_total Gossip datagrams received.\n\
         # TYPE corral_agent_gossip_datagrams_total counter\n\
         corral_agent_gossip_datagrams_total{{result=\"accepted\"}} {}\n\
         corral_agent_gossip_datagrams_total{{result=\"rejected\"}} {}",
        counters.received.load(Ordering::Relaxed),
        counters.rejected.load(Ordering::Relaxed)
    );

    let metrics = &context.metrics;
    let _ = writeln!(
        out,
        "# HELP corral_agent_request_duration_seconds Socket API request latency.\n\
         # TYPE corral_agent_request_duration_seconds histogram"
    );
    for kind in RequestKind::ALL {
        metrics.requests(kind).render(
            &mut out,
            "corral_agent_request_duration_seconds",
            &format!("kind=\"{}\"", kind.label()),
        );
    }
    let _ = writeln!(
        out,
        "# HELP corral_agent_request_errors_total Socket API requests answered with an error.\n\
         # TYPE corral_agent_request_errors_total counter\n\
         corral_agent_request_errors_total {}",
        metrics.request_errors.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP corral_http_request_duration_seconds HTTP gateway request latency.\n\
         # TYPE corral_http_request_duration_seconds histogram"
    );
    gateway
        .latency
        .render(&mut out, "corral_http_request_duration_seconds", "");

    let core = &context.core;
    let address = core
        .leader()
        .or_else(|| core.members().first().cloned())
        .unwrap_or_default();
    match tokio::time::timeout(CORE_STATUS_TIMEOUT, core.status(&address)).await {
        Ok(Ok(status)) => {
            gauge(
                &mut out,
                "corral_core_up",
                "1 if the core answered this scrape.",
                1,
            );
            gauge(
                &mut out,
                "corral_core_term",
                "Raft term of the member asked.",
                status.term,
            );
            let commit = status.committed.map_or(0, |log| log.index);
            gauge(
                &mut out,
                "corral_core_commit_index",
                "Raft commit index of the member asked.",
                commit,
            );
            gauge(
                &mut out,
                "corral_core_last_applied",
                "Raft log index the member asked has applied.",
                status.last_applied.unwrap_or(0),
            );
            gauge(
                &mut out,
                "corral_core_revision",
                "Revision the member asked has applied.",
                status.revision,
            );
            gauge(
                &mut out,
                "corral_core_leader",
                "Id of the core leader (0: none known).",
                status.leader.unwrap_or(0),
            );
            gauge(
                &mut out,
                "corral_agent_watch_lag_revisions",
                "How many revisions the replica is behind the member asked.",
                status.revision.saturating_sub(revision),
            );
        }
        _ => gauge(
            &mut out,
            "corral_core_up",
            "1 if the core answered this scrape.",
            0,
        ),
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}
