//! The simulator's own checks: a seed replays a run exactly, and the detector it drives
//! neither misses a death nor invents one.

use std::time::Duration;

use corral_agent::sessions::death_reports::{self, BACKUP_REPORTERS, FIRST_REPORTERS};
use corral_simulations::scenarios;
use corral_simulations::sim::{Action, HostState, Sim, SimConfig};
use corral_simulations::sim_id::SimId;

const SECOND: u64 = 1_000_000;

fn config(members: u32, seed: u64, loss: f64) -> SimConfig {
    let mut config = SimConfig::new(members, seed);
    config.network.loss = loss;
    config
}

/// Two runs with the same seed print the same figures, byte for byte; another seed does
/// not, so the comparison can fail.
#[test]
fn the_same_seed_gives_identical_output() {
    let run = |seed| {
        let report = scenarios::detect(config(150, seed, 0.02), 2, 8).unwrap();
        (report.csv_header(), report.figures)
    };
    let (header, first) = run(11);
    let (_, second) = run(11);
    assert_eq!(first, second, "{header}");
    let (_, other) = run(12);
    assert_ne!(first, other, "a different seed should change the figures");
}

/// With no loss and nobody dying, no live member is ever declared dead.
#[test]
fn a_member_that_never_dies_is_never_reported_dead() {
    let report = scenarios::load(config(200, 3, 0.0), 60).unwrap();
    assert_eq!(
        report.get("false_deaths"),
        Some("0"),
        "{}",
        report.to_text()
    );
    assert_eq!(report.get("false_down_notices"), Some("0"));
    let datagrams: f64 = report.get_f64("datagrams_per_member_s").unwrap();
    assert!(
        datagrams > 1.0,
        "the members should be probing: {datagrams}/s"
    );
}

/// Every kill is noticed by every member that knew the victim, the core closes its
/// session, and every agent's replica shows the new master of each of its shards.
#[test]
fn every_death_is_noticed_everywhere_and_failed_over_at_every_agent() {
    let mut sim = Sim::new(config(200, 5, 0.01)).unwrap();
    sim.run_until(5 * SECOND);
    let victims: Vec<u32> = sim.masters().into_iter().take(3).collect();
    assert_eq!(victims.len(), 3);
    for (k, v) in victims.iter().enumerate() {
        sim.at((6 + 8 * k as u64) * SECOND, Action::Kill(*v));
    }
    sim.run_until(40 * SECOND);
    let live = sim.live_hosts().count();
    assert_eq!(live, 197);
    for (k, death) in sim.observations.deaths.iter().enumerate() {
        // Every live member knew the victim: the 199 others less the earlier victims.
        assert_eq!(death.known_by.len(), 199 - k);
        let mut noticed = death.noticed_by.clone();
        noticed.sort_unstable();
        noticed.dedup();
        let missing: Vec<_> = death
            .known_by
            .iter()
            .filter(|h| sim.state(**h) == HostState::Up && !noticed.contains(h))
            .collect();
        assert!(
            missing.is_empty(),
            "{:?} never noticed {:?}",
            missing,
            death.id
        );
        let slowest = death.noticed_after.iter().max().copied().unwrap();
        assert!(slowest < 10 * SECOND, "noticed only after {slowest} µs");
        assert!(death.closed_after.is_some(), "the core closed the session");
        assert!(death.had_shards);
        // Agents alive when the master changed: the 199 others less the later victims.
        assert!(
            death.failover_after.len() >= live,
            "{} agents saw the new master, {live} live",
            death.failover_after.len()
        );
    }
}

/// The simulation runs the agent's own reporting rule over each host's own gossip view:
/// every host that reported a death is one the agent's `report_due` names (it declared the
/// death itself, or ranks among the first or backup reporters among the members it holds
/// alive), and the reports are few. A simulation with a rule of its own would report from
/// other hosts as soon as the agent's rule changed.
#[test]
fn death_reports_come_from_the_hosts_the_agents_rule_names() {
    let mut sim = Sim::new(config(300, 21, 0.01)).unwrap();
    sim.run_until(5 * SECOND);
    let victims: Vec<u32> = sim.masters().into_iter().take(2).collect();
    for (k, v) in victims.iter().enumerate() {
        sim.at((6 + 10 * k as u64) * SECOND, Action::Kill(*v));
    }
    sim.run_until(30 * SECOND);
    assert_eq!(sim.observations.deaths.len(), 2);
    for death in &sim.observations.deaths {
        assert!(
            death.closed_after.is_some(),
            "{:?} was never closed",
            death.id
        );
        assert!(
            !death.reported_by.is_empty(),
            "nobody reported {:?}",
            death.id
        );
        assert!(
            death.reported_by.len() <= death.declared_by.len() + FIRST_REPORTERS + BACKUP_REPORTERS,
            "{} reporters of {:?}",
            death.reported_by.len(),
            death.id
        );
        let dead = SimId::name(death.id.index);
        for &reporter in &death.reported_by {
            let alive = sim.alive_names_seen_by(reporter);
            let named = death_reports::report_due(
                &dead,
                &SimId::name(reporter),
                death.declared_by.contains(&reporter),
                Duration::MAX,
                || alive.iter(),
            );
            assert!(
                named,
                "host {reporter} reported {dead}, which the agent's rule does not ask of it"
            );
        }
    }
}

/// A host frozen well past the suspicion timeout is declared dead (the detector is not a
/// no-op); one frozen long enough to be suspected, but not declared dead, keeps its
/// identity and its node session.
#[test]
fn a_long_pause_is_a_death_and_short_ones_are_not() {
    let mut sim = Sim::new(config(100, 9, 0.01)).unwrap();
    sim.run_until(5 * SECOND);
    let short = [10, 11, 12, 13, 14, 15];
    for (k, host) in short.iter().enumerate() {
        let at = 6 * SECOND + k as u64 * 3 * SECOND;
        sim.at(at, Action::Freeze(*host));
        sim.at(at + 1_200_000, Action::Thaw(*host));
    }
    sim.at(8 * SECOND, Action::Freeze(20));
    sim.at(18 * SECOND, Action::Thaw(20));
    sim.run_until(50 * SECOND);
    let falsely: Vec<u32> = sim
        .observations
        .false_downs
        .iter()
        .map(|(_, _, id)| id.index)
        .collect();
    assert!(
        !falsely.contains(&10),
        "a 300 ms pause was declared a death"
    );
    assert!(falsely.contains(&20), "a 10 s pause went unnoticed");
    // Host 20 came back under a new incarnation, and everyone knows it again.
    assert!(sim.identity(20).incarnation > 1);
    assert!(sim.live_hosts().all(|h| sim.active_seen_by(h) == 99));
}

/// A fleet split in two declares the other half dead, and after the heal every member
/// knows every other again.
#[test]
fn a_partition_heals() {
    let report = scenarios::partition(config(100, 4, 0.0), 10).unwrap();
    let figure = |name: &str| -> u64 {
        report
            .get(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .parse()
            .unwrap()
    };
    assert!(
        figure("declared_dead_across_the_cut") > 0,
        "{}",
        report.to_text()
    );
    assert_ne!(
        report.get("converged_after_heal_ms"),
        Some("-"),
        "{}",
        report.to_text()
    );
    // Both halves still reached the core, which heard every agent it was told was dead:
    // every node session outlived the cut and the heal, carried over to the incarnation
    // each declared-dead member took.
    assert!(figure("death_reports_refused") > 0, "{}", report.to_text());
    assert_eq!(
        figure("node_sessions_open_at_heal"),
        100,
        "{}",
        report.to_text()
    );
    assert_eq!(
        figure("node_sessions_open_reconverged"),
        100,
        "{}",
        report.to_text()
    );
    assert_eq!(
        figure("node_sessions_carried_over"),
        figure("renewed_identities"),
        "{}",
        report.to_text()
    );
}

/// Bad settings are refused with the field named, not simulated.
#[test]
fn nonsense_settings_are_refused() {
    let mut bad = config(10, 1, 0.0);
    bad.gossip.probe_rtt = Duration::from_secs(5);
    let error = Sim::new(bad).unwrap_err().to_string();
    assert!(error.contains("probe_rtt"), "{error}");
    assert!(Sim::new(config(1, 1, 0.0)).is_err());
}

/// Forty one-second pauses in a fleet of 300 with 1% loss: no member is declared dead,
/// and none has to take a new identity (which would end its node session and fail its
/// shards over) because a suspicion it refuted was taken for a death.
#[test]
fn refuted_suspicions_cost_nothing() {
    let report = scenarios::false_positives(config(300, 7, 0.01), 120, 20.0, 1000).unwrap();
    assert_eq!(report.get("pauses"), Some("40"));
    assert_eq!(
        report.get("false_deaths"),
        Some("0"),
        "{}",
        report.to_text()
    );
    assert_eq!(
        report.get("renewed_identities"),
        Some("0"),
        "{}",
        report.to_text()
    );
    assert_eq!(
        report.get("core_commits"),
        Some("0"),
        "{}",
        report.to_text()
    );
}

/// Writes through the feed tree: the core sends each write to the tree's top only, every
/// live replica gets every write, the orphans of the dead relays pause at least as long as
/// the feed's silence rule and move on; a seed replays the same figures.
#[test]
fn writes_go_down_the_tree_and_survive_dead_relays() {
    use corral_agent::replica::feed::RELAY_SILENCE;
    use corral_simulations::writes::{self, WritesConfig};

    let mut config = WritesConfig::new(2_000, 200.0, 11);
    config.seconds = 12.0;
    let report = writes::run(&config).unwrap();
    let figure = |name: &str| report.get_f64(name).unwrap_or_else(|| panic!("{name}"));
    assert_eq!(figure("missed"), 0.0, "{}", report.to_text());
    assert_eq!(figure("steady_core_copies_max"), config.tree.top as f64);
    assert!(figure("relays_died") >= 1.0 && figure("orphans") >= 1.0);
    let silence_ms = RELAY_SILENCE.as_millis() as f64;
    assert!(figure("orphan_longest_pause_ms") >= silence_ms);
    // Four levels of a few hundred microseconds each, when no relay dies.
    assert!(figure("steady_last_replica_max_ms") < silence_ms);
    assert!(figure("deaths_last_replica_max_ms") >= silence_ms);
    assert_eq!(writes::run(&config).unwrap().figures, report.figures);

    // Without the tree the core sends every write to every agent.
    config.tree.top = 0;
    let flat = writes::run(&config).unwrap();
    assert_eq!(flat.get_f64("steady_core_copies_mean"), Some(2_000.0));
    assert_eq!(flat.get_f64("orphans"), Some(0.0));
}
