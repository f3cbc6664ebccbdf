//! The scenarios, each a function from a configuration to a [`Report`]: what happens,
//! when, and which figures come out.
//!
//! | scenario | what it does | what it reports |
//! |---|---|---|
//! | `detect` | kills shard masters one at a time | detection (first/last member), failover at every agent, traffic |
//! | `false-positives` | loss and short pauses, nobody dies | live members declared dead per member-hour |
//! | `load` | a quiet fleet | datagrams and bytes per member per second |
//! | `churn` | members join, leave and die continuously | detection under churn, false positives, convergence |
//! | `partition` | the fleet split in two, then healed | what each side declared, time to converge after the heal |

use std::time::Instant;

use rand::RngExt;

use crate::network::Micros;
use crate::sim::{Action, HostState, Sim, SimConfig};
use crate::stats::{Report, quantile};

const SECOND: Micros = 1_000_000;
/// Time for the fleet to start probing and settle before any fault.
const WARM_UP: Micros = 5 * SECOND;

/// Kills `kills` shard masters, `interval_s` apart, and follows what every member and
/// every agent's replica learns of each.
pub fn detect(config: SimConfig, kills: u32, interval_s: u64) -> anyhow::Result<Report> {
    reset_peak_rss();
    let started = Instant::now();
    let mut sim = Sim::new(config)?;
    sim.run_until(WARM_UP);
    sim.reset_traffic();
    let mut masters = sim.masters();
    let mut victims = Vec::new();
    for _ in 0..kills.min(masters.len() as u32) {
        let i = sim.choice_rng.random_range(0..masters.len());
        victims.push(masters.swap_remove(i));
    }
    for (k, victim) in victims.iter().enumerate() {
        sim.at(
            WARM_UP + k as Micros * interval_s * SECOND + SECOND,
            Action::Kill(*victim),
        );
    }
    let end = WARM_UP + victims.len() as Micros * interval_s * SECOND + SECOND + 20 * SECOND;
    sim.run_until(end);
    let mut report = Report::new("detect");
    common_figures(&mut report, &sim);
    report.put("kills", victims.len());
    death_figures(&mut report, &sim);
    traffic_figures(&mut report, &sim);
    false_positive_figures(&mut report, &sim, WARM_UP);
    cost_figures(&mut report, &sim, started);
    Ok(report)
}

/// Runs a fleet in which nobody dies for `seconds`, with `pauses_per_minute` random hosts
/// frozen for `pause_ms` each, and counts live members declared dead.
pub fn false_positives(
    config: SimConfig,
    seconds: u64,
    pauses_per_minute: f64,
    pause_ms: u64,
) -> anyhow::Result<Report> {
    reset_peak_rss();
    let started = Instant::now();
    let mut sim = Sim::new(config)?;
    let n = sim.host_count();
    let end = WARM_UP + seconds * SECOND;
    let pauses = (pauses_per_minute * seconds as f64 / 60.0).round() as u64;
    for _ in 0..pauses {
        let at = sim.choice_rng.random_range(WARM_UP..end);
        let host = sim.choice_rng.random_range(0..n);
        sim.at(at, Action::Freeze(host));
        sim.at(at + pause_ms * 1000, Action::Thaw(host));
    }
    sim.run_until(WARM_UP);
    sim.reset_traffic();
    sim.run_until(end);
    let mut report = Report::new("false-positives");
    common_figures(&mut report, &sim);
    report.put("seconds", seconds);
    report.put("pauses", pauses);
    report.put("pause_ms", pause_ms);
    false_positive_figures(&mut report, &sim, WARM_UP);
    traffic_figures(&mut report, &sim);
    cost_figures(&mut report, &sim, started);
    Ok(report)
}

/// A quiet fleet for `seconds`: the steady cost of membership.
pub fn load(config: SimConfig, seconds: u64) -> anyhow::Result<Report> {
    reset_peak_rss();
    let started = Instant::now();
    let mut sim = Sim::new(config)?;
    sim.run_until(WARM_UP);
    sim.reset_traffic();
    sim.run_until(WARM_UP + seconds * SECOND);
    let mut report = Report::new("load");
    common_figures(&mut report, &sim);
    report.put("seconds", seconds);
    traffic_figures(&mut report, &sim);
    false_positive_figures(&mut report, &sim, WARM_UP);
    cost_figures(&mut report, &sim, started);
    Ok(report)
}

/// For `seconds`, `per_minute` hosts join, as many leave gracefully and as many are
/// killed; then 40 s of calm, after which every live member must know exactly the live
/// members.
pub fn churn(config: SimConfig, seconds: u64, per_minute: f64) -> anyhow::Result<Report> {
    reset_peak_rss();
    let started = Instant::now();
    let mut sim = Sim::new(config)?;
    let n = sim.host_count();
    let end = WARM_UP + seconds * SECOND;
    let each = (per_minute * seconds as f64 / 60.0).round() as u64;
    let mut leaving: Vec<u32> = Vec::new();
    for kind in 0..3 {
        for _ in 0..each {
            let at = sim.choice_rng.random_range(WARM_UP..end);
            let action = match kind {
                0 => Action::Join,
                _ => {
                    // Distinct original hosts, so a host is not killed after it left.
                    let host = loop {
                        let h = sim.choice_rng.random_range(0..n);
                        if !leaving.contains(&h) {
                            break h;
                        }
                    };
                    leaving.push(host);
                    if kind == 1 {
                        Action::Leave(host)
                    } else {
                        Action::Kill(host)
                    }
                }
            };
            sim.at(at, action);
        }
    }
    sim.run_until(WARM_UP);
    sim.reset_traffic();
    sim.run_until(end);
    let settle = 40 * SECOND;
    sim.run_until(end + settle);
    let mut report = Report::new("churn");
    common_figures(&mut report, &sim);
    report.put("seconds", seconds);
    report.put("joins", each);
    report.put("leaves", each);
    report.put("kills", each);
    death_figures(&mut report, &sim);
    false_positive_figures(&mut report, &sim, WARM_UP);
    let live: Vec<u32> = sim.live_hosts().collect();
    let wrong = |joiners: bool| {
        live.iter()
            .filter(|&&h| (h >= n) == joiners && sim.active_seen_by(h) != live.len() - 1)
            .map(|&h| (sim.active_seen_by(h) as i64 - (live.len() as i64 - 1)).abs())
            .collect::<Vec<i64>>()
    };
    report.put("live_members_at_end", live.len());
    let (old, new) = (wrong(false), wrong(true));
    report.put("members_with_a_wrong_view_after_40s_calm", old.len());
    report.put("joiners_with_a_partial_view_after_40s_calm", new.len());
    report.put(
        "members_a_joiner_misses_max",
        new.iter().max().copied().unwrap_or(0),
    );
    traffic_figures(&mut report, &sim);
    cost_figures(&mut report, &sim, started);
    Ok(report)
}

/// Cuts the fleet in two halves for `seconds`, heals, and measures how long until every
/// member knows every live member again.
pub fn partition(config: SimConfig, seconds: u64) -> anyhow::Result<Report> {
    reset_peak_rss();
    let started = Instant::now();
    let mut sim = Sim::new(config)?;
    let n = sim.host_count();
    sim.run_until(WARM_UP);
    sim.reset_traffic();
    sim.at(WARM_UP, Action::Split { at: n / 2 });
    let heal = WARM_UP + seconds * SECOND;
    sim.at(heal, Action::Heal);
    sim.run_until(heal);
    let node_sessions_open = node_sessions(&sim);
    let limit = heal + 180 * SECOND;
    let mut converged_after = None;
    while sim.now() < limit {
        sim.run_until(sim.now() + 100_000);
        let live = sim.live_hosts().count();
        if sim.live_hosts().all(|h| sim.active_seen_by(h) == live - 1) {
            converged_after = Some(sim.now() - heal);
            break;
        }
    }
    let node_sessions_open_after = node_sessions(&sim);
    let mut report = Report::new("partition");
    common_figures(&mut report, &sim);
    report.put("partition_s", seconds);
    report.put("declared_dead_across_the_cut", sim.observations.cut_downs);
    report.put("node_sessions_open_at_heal", node_sessions_open);
    report.put("node_sessions_open_reconverged", node_sessions_open_after);
    report.put("death_reports_refused", sim.observations.reports_refused);
    report.put_ms(
        "converged_after_heal_ms",
        converged_after.map(|v| v as f64 / 1000.0),
    );
    false_positive_figures(&mut report, &sim, WARM_UP);
    traffic_figures(&mut report, &sim);
    cost_figures(&mut report, &sim, started);
    Ok(report)
}

fn node_sessions(sim: &Sim) -> usize {
    sim.core()
        .machine()
        .sessions()
        .filter(|s| matches!(s.owner, corral_proto::SessionOwner::Node { .. }))
        .count()
}

fn common_figures(report: &mut Report, sim: &Sim) {
    let config = sim.config();
    report.put("members", config.members);
    report.put("seed", config.seed);
    report.put("loss", config.network.loss);
    report.put("probe_period_ms", config.gossip.probe_period.as_millis());
    report.put("probe_rtt_ms", config.gossip.probe_rtt.as_millis());
    report.put(
        "suspect_to_down_ms",
        config.gossip.suspect_to_down.as_millis(),
    );
    report.put("virtual_s", sim.now() / SECOND);
}

fn death_figures(report: &mut Report, sim: &Sim) {
    let deaths: Vec<_> = sim
        .observations
        .deaths
        .iter()
        .filter(|d| !d.graceful)
        .collect();
    let first: Vec<u64> = deaths
        .iter()
        .filter_map(|d| d.noticed_after.iter().min().copied())
        .collect();
    let last: Vec<u64> = deaths
        .iter()
        .filter_map(|d| d.noticed_after.iter().max().copied())
        .collect();
    let all: Vec<u64> = deaths
        .iter()
        .flat_map(|d| d.noticed_after.iter().copied())
        .collect();
    report.put_spread("detect_first", &first);
    report.put_spread("detect_last", &last);
    report.put_spread("detect_every_member", &all);
    // Members that held the dead one alive, are alive at the end, and never declared it
    // dead.
    let unaware: usize = deaths
        .iter()
        .map(|d| {
            d.known_by
                .iter()
                .filter(|h| {
                    matches!(sim.state(**h), HostState::Up | HostState::Frozen)
                        && !d.noticed_by.contains(h)
                })
                .count()
        })
        .sum();
    report.put("unaware_member_deaths", unaware);
    let closed: Vec<u64> = deaths.iter().filter_map(|d| d.closed_after).collect();
    report.put_spread("session_closed", &closed);
    let failover: Vec<u64> = deaths
        .iter()
        .filter(|d| d.had_shards)
        .flat_map(|d| d.failover_after.iter().copied())
        .collect();
    let failover_last: Vec<u64> = deaths
        .iter()
        .filter(|d| d.had_shards)
        .filter_map(|d| d.failover_after.iter().max().copied())
        .collect();
    report.put_spread("failover_every_agent", &failover);
    report.put_spread("failover_last_agent", &failover_last);
    let per_death = |v: u64| {
        if deaths.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1}", v as f64 / deaths.len() as f64)
        }
    };
    report.put(
        "core_reports_per_death",
        per_death(sim.core().reports_received),
    );
}

fn false_positive_figures(report: &mut Report, sim: &Sim, since: Micros) {
    let mut targets: Vec<_> = sim
        .observations
        .false_downs
        .iter()
        .map(|(_, _, id)| *id)
        .collect();
    targets.sort_unstable();
    targets.dedup();
    let hours = (sim.now().saturating_sub(since)) as f64 / 3.6e9;
    let member_hours = sim.host_count() as f64 * hours;
    report.put("false_deaths", targets.len());
    report.put("renewed_identities", sim.observations.renewals);
    report.put(
        "node_sessions_carried_over",
        sim.observations.sessions_renewed,
    );
    report.put("core_commits", sim.core().commits);
    report.put("false_down_notices", sim.observations.false_downs.len());
    report.put(
        "false_deaths_per_member_hour",
        if member_hours > 0.0 {
            format!("{:.5}", targets.len() as f64 / member_hours)
        } else {
            "-".into()
        },
    );
}

fn traffic_figures(report: &mut Report, sim: &Sim) {
    let traffic = sim.traffic_per_second();
    let packets: Vec<u64> = traffic.iter().map(|(p, _)| p.round() as u64).collect();
    let bytes: Vec<u64> = traffic.iter().map(|(_, b)| b.round() as u64).collect();
    let mean = |v: &[u64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<u64>() as f64 / v.len() as f64
        }
    };
    report.put("datagrams_per_member_s", format!("{:.1}", mean(&packets)));
    report.put("bytes_per_member_s", format!("{:.0}", mean(&bytes)));
    report.put("bytes_per_member_s_max", quantile(&bytes, 1.0).unwrap_or(0));
    let seconds = sim.traffic_seconds().max(f64::MIN_POSITIVE);
    report.put(
        "core_watch_bytes_s",
        format!("{:.0}", sim.core().watch_bytes as f64 / seconds),
    );
}

fn cost_figures(report: &mut Report, sim: &Sim, started: Instant) {
    report.put("events", sim.events_processed);
    report.cost.push((
        "wall_s".into(),
        format!("{:.1}", started.elapsed().as_secs_f64()),
    ));
    report.cost.push((
        "peak_rss_mib".into(),
        peak_rss_mib().map_or("-".into(), |m| m.to_string()),
    ));
}

/// Starts measuring peak memory afresh, so that a sweep reports each run's own peak.
fn reset_peak_rss() {
    // Linux: writing 5 to clear_refs resets VmHWM to the current RSS. Elsewhere the
    // figure is the process's peak so far.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident memory, from Linux's /proc.
pub fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
