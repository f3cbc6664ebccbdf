//! `corral-bench`: Corral, etcd and ZooKeeper side by side on one machine, in one run.
//!
//! `bench/run.sh` installs what is missing, builds Corral and this driver, and runs
//! `corral-bench all`, which starts a three-member cluster of each system on loopback in
//! turn, drives the same workloads through each one's client library with the same
//! closed loop, stops it, and writes `docs/benchmarks.md`, its SVG charts and raw CSV.

mod fleet;
mod grpc_floor;
mod machine;
mod process;
mod report;
mod runner;
mod socket_floor;
mod systems;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use machine::CpuPerOp;
use report::{FailoverRun, FootprintRow, Results, Run, STATE_LABEL, WARM_LABEL};
use runner::{Op, Sample, closed_loop};
use systems::corral::Corral;
use systems::etcd::Etcd;
use systems::etcd_api::{self, EtcdWorkload};
use systems::zookeeper::ZooKeeper;
use systems::{Freeze, LockVia, Lookup, VALUE_SIZE, Writes};

#[derive(Debug, Parser)]
#[command(about = "Corral, etcd and ZooKeeper side by side on one machine")]
struct Cli {
    #[command(subcommand)]
    command: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Run every workload against every system and write the page.
    All {
        /// The corral binary to benchmark (a release build).
        #[arg(long)]
        corral: PathBuf,
        /// Where to write benchmarks.md and benchmarks/*.csv, *.svg.
        #[arg(long, default_value = "docs")]
        out: PathBuf,
        /// Measured seconds per run (after a 0.5 s warm-up).
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Repetitions of every run.
        #[arg(long, default_value_t = 3)]
        reps: u32,
        /// Concurrent clients.
        #[arg(long, value_delimiter = ',', default_value = "1,16,128")]
        clients: Vec<usize>,
        /// Only these systems (corral, etcd, zookeeper).
        #[arg(long, value_delimiter = ',', default_value = "corral,etcd,zookeeper")]
        systems: Vec<String>,
        /// Only these workloads (lookup, write, lock, etcd-api, failover, footprint).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "lookup,write,lock,etcd-api,failover,footprint"
        )]
        workloads: Vec<String>,
        /// The command line to print on the page as the one that reproduces it.
        #[arg(long, default_value = "bench/run.sh")]
        command_line: String,
    },
    /// Corral's core CPU per write, and the delay to the last agent, for each fleet size:
    /// three core members and N agents on loopback (printed, not written to the page).
    Fleet {
        /// The corral binary (a release build).
        #[arg(long)]
        corral: PathBuf,
        /// Fleet sizes, one fresh cluster each.
        #[arg(long, value_delimiter = ',', default_value = "3,50,200")]
        agents: Vec<usize>,
        /// Writes of 256 B per fleet size.
        #[arg(long, default_value_t = 3000)]
        writes: usize,
        /// Concurrent writers.
        #[arg(long, default_value_t = 16)]
        writers: usize,
        /// The agents' `--feed-top`: how many the core feeds (0: all of them; unset: the
        /// agent's default, a tree of agents feeding agents).
        #[arg(long)]
        feed_top: Option<usize>,
        /// Writes per second, the same for every fleet size, so that each size is measured
        /// at the same load (0: as fast as the writers go). A fleet of agents on one
        /// machine applies every write once per agent: the default keeps two hundred
        /// agents on two cores below saturation.
        #[arg(long, default_value_t = 200)]
        rate: u64,
    },
    /// (internal) Hold a shard's master registration through a Corral agent.
    HoldCorral {
        socket: PathBuf,
        shard: String,
        address: String,
    },
    /// (internal) Hold a key under the shortest etcd lease.
    HoldEtcd { key: String, value: String },
    /// (internal) Hold an ephemeral ZooKeeper node in the shortest session.
    HoldZookeeper { path: String },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Action::HoldCorral {
            socket,
            shard,
            address,
        } => runtime.block_on(systems::corral::hold(&socket, &shard, &address)),
        Action::HoldEtcd { key, value } => runtime.block_on(systems::etcd::hold(&key, &value)),
        Action::HoldZookeeper { path } => runtime.block_on(systems::zookeeper::hold(&path)),
        Action::Fleet {
            corral,
            agents,
            writes,
            writers,
            feed_top,
            rate,
        } => {
            if agents.is_empty() || agents.iter().any(|&n| n == 0 || n > 900) {
                bail!("--agents: fleet sizes between 1 and 900");
            }
            if writes == 0 || writers == 0 || writers > writes {
                bail!("--writes and --writers must be positive, with no more writers than writes");
            }
            let plan = fleet::FleetPlan {
                corral,
                agents,
                writes,
                writers,
                feed_top,
                rate: (rate > 0).then_some(rate),
            };
            runtime.block_on(fleet::run(&plan))
        }
        Action::All {
            corral,
            out,
            seconds,
            reps,
            clients,
            systems,
            workloads,
            command_line,
        } => {
            if !(0.5..=600.0).contains(&seconds) {
                bail!("--seconds must be between 0.5 and 600, not {seconds}");
            }
            if reps == 0 || reps > 20 {
                bail!("--reps must be between 1 and 20, not {reps}");
            }
            if clients.is_empty() || clients.iter().any(|&c| c == 0 || c > 1024) {
                bail!("--clients must list counts between 1 and 1024");
            }
            for s in &systems {
                if !["corral", "etcd", "zookeeper"].contains(&s.as_str()) {
                    bail!("unknown system {s:?}: corral, etcd or zookeeper");
                }
            }
            for w in &workloads {
                if ![
                    "lookup",
                    "write",
                    "lock",
                    "etcd-api",
                    "failover",
                    "footprint",
                ]
                .contains(&w.as_str())
                {
                    bail!(
                        "unknown workload {w:?}: lookup, write, lock, etcd-api, failover or footprint"
                    );
                }
            }
            let corral = std::fs::canonicalize(&corral)
                .with_context(|| format!("no corral binary at {}", corral.display()))?;
            let plan = Plan {
                corral,
                measure: Duration::from_secs_f64(seconds),
                reps,
                clients,
                workloads,
                bench: std::env::current_exe()?,
            };
            let results = runtime.block_on(run_all(&plan, &systems, &command_line))?;
            report::write(&results, &out)?;
            println!("wrote {}", out.join("benchmarks.md").display());
            Ok(())
        }
    }
}

struct Plan {
    corral: PathBuf,
    measure: Duration,
    reps: u32,
    clients: Vec<usize>,
    workloads: Vec<String>,
    bench: PathBuf,
}

const WARMUP: Duration = Duration::from_millis(500);
/// Unrecorded load on every system before its first measured run.
const SYSTEM_WARMUP: Duration = Duration::from_secs(3);
const IDLE_WINDOW: Duration = Duration::from_secs(5);
const FAILOVER_REPS_MIN: u32 = 3;

impl Plan {
    fn wants(&self, workload: &str) -> bool {
        self.workloads.iter().any(|w| w == workload)
    }
}

/// One system's cluster, whichever it is.
enum Cluster {
    Corral(Corral),
    Etcd(Etcd),
    ZooKeeper(ZooKeeper),
}

impl Cluster {
    fn name(&self) -> &'static str {
        match self {
            Cluster::Corral(_) => "Corral",
            Cluster::Etcd(_) => "etcd",
            Cluster::ZooKeeper(_) => "ZooKeeper",
        }
    }

    fn processes(&self) -> Vec<(String, u32)> {
        match self {
            Cluster::Corral(c) => c.processes(),
            Cluster::Etcd(e) => e.processes(),
            Cluster::ZooKeeper(z) => z.processes(),
        }
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        match self {
            Cluster::Corral(c) => c.check_running(),
            Cluster::Etcd(e) => e.check_running(),
            Cluster::ZooKeeper(z) => z.check_running(),
        }
    }

    /// The lookup variants: (label, how).
    fn lookups(&self) -> Vec<(&'static str, Lookup)> {
        match self {
            Cluster::Corral(_) => vec![
                ("shard map", Lookup::Map),
                ("local agent", Lookup::Local),
                ("linearizable", Lookup::Linearizable),
            ],
            Cluster::Etcd(_) => vec![
                ("serializable get", Lookup::Local),
                ("linearizable get", Lookup::Linearizable),
            ],
            Cluster::ZooKeeper(_) => vec![
                ("getData", Lookup::Local),
                ("sync + getData", Lookup::Linearizable),
            ],
        }
    }

    async fn lookup_clients(&self, clients: usize, how: Lookup) -> anyhow::Result<Vec<Op>> {
        let linearizable = how == Lookup::Linearizable;
        match self {
            Cluster::Corral(c) if how == Lookup::Map => c.map_lookup_clients(clients),
            Cluster::Corral(c) => c.lookup_clients(clients, linearizable).await,
            Cluster::Etcd(e) => e.lookup_clients(clients, linearizable).await,
            Cluster::ZooKeeper(z) => z.lookup_clients(clients, linearizable).await,
        }
    }

    /// The write variants.
    fn writes(&self) -> Vec<(&'static str, Writes)> {
        match self {
            Cluster::Corral(_) => vec![("through agent", Writes::Agent), ("to core", Writes::Core)],
            Cluster::Etcd(_) => vec![("put", Writes::Core)],
            Cluster::ZooKeeper(_) => vec![("setData", Writes::Core)],
        }
    }

    async fn write_clients(&self, clients: usize, writes: Writes) -> anyhow::Result<Vec<Op>> {
        match self {
            Cluster::Corral(c) => c.write_clients(clients, writes).await,
            Cluster::Etcd(e) => e.write_clients(clients).await,
            Cluster::ZooKeeper(z) => z.write_clients(clients).await,
        }
    }

    /// The lock variants: (label, how a Corral client holds its session).
    fn locks(&self) -> Vec<(&'static str, LockVia)> {
        match self {
            Cluster::Corral(_) => vec![
                ("lock", LockVia::Socket),
                ("HTTP session", LockVia::HttpSession),
            ],
            Cluster::Etcd(_) => vec![("lock API", LockVia::Socket)],
            Cluster::ZooKeeper(_) => vec![("recipe", LockVia::Socket)],
        }
    }

    async fn lock_clients(&self, clients: usize, via: LockVia) -> anyhow::Result<Vec<Op>> {
        match self {
            Cluster::Corral(c) if via == LockVia::HttpSession => c.http_lock_clients(clients).await,
            Cluster::Corral(c) => c.lock_clients(clients).await,
            Cluster::Etcd(e) => e.lock_clients(clients).await,
            Cluster::ZooKeeper(z) => z.lock_clients(clients).await,
        }
    }

    /// The etcd v3 endpoints the same etcd client drives: Corral's agent a1, etcd's
    /// members; ZooKeeper has none.
    fn etcd_endpoints(&self) -> Option<Vec<String>> {
        match self {
            Cluster::Corral(_) => Some(systems::corral::etcd_endpoints()),
            Cluster::Etcd(_) => Some(systems::etcd::endpoints()),
            Cluster::ZooKeeper(_) => None,
        }
    }

    async fn failover(&mut self, bench: &Path, freeze: Freeze) -> anyhow::Result<Duration> {
        match self {
            Cluster::Corral(c) => c.failover(bench, freeze).await,
            Cluster::Etcd(e) => e.failover(bench, freeze).await,
            Cluster::ZooKeeper(z) => z.failover(bench, freeze).await,
        }
    }

    /// What failover depends on, as granted in this run.
    fn failover_setting(&self) -> String {
        match self {
            Cluster::Corral(c) => format!(
                "{} (the agent's defaults); node grace {} ms (`corral core --node-grace-ms`, as etcd's lease TTL here; the default is 5000 ms, so that an agent restarted within it keeps its host's state); an app's session ends with its connection",
                c.gossip_setting,
                systems::corral::NODE_GRACE_MS
            ),
            Cluster::Etcd(e) => match e.granted_ttl {
                Some(ttl) => format!(
                    "lease TTL {ttl} s granted for 1 s asked (etcd's minimum), kept alive every TTL/3"
                ),
                None => "lease TTL: not measured".into(),
            },
            Cluster::ZooKeeper(z) => match z.granted_timeout {
                Some(t) => format!(
                    "session timeout {} ms granted for 1 ms asked (minimum = 2 × tickTime {} ms)",
                    t.as_millis(),
                    systems::zookeeper::TICK_MS
                ),
                None => "session timeout: not measured".into(),
            },
        }
    }
}

async fn run_all(plan: &Plan, systems: &[String], command_line: &str) -> anyhow::Result<Results> {
    let started_at = std::time::SystemTime::now();
    let wall = Instant::now();
    let root = std::env::temp_dir().join(format!("corral-bench-{}", std::process::id()));
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::create_dir_all(&root)?;
    let mut machine = machine::describe(&root, &plan.corral, &plan.clients)?;
    if plan.wants("etcd-api") {
        for &clients in &plan.clients {
            let p50 = grpc_floor::round_trip_p50_us(clients, Duration::from_secs(1)).await?;
            println!("bare gRPC get through etcd-client, {clients} clients: p50 {p50} µs");
            machine.grpc_p50_us.push((clients, p50));
        }
    }
    println!(
        "machine: {} cores, {:.1} GiB, fsync p50 {} µs",
        machine.cores, machine.memory_gib, machine.fsync_p50_us
    );
    let mut results = Results {
        machine,
        command_line: command_line.to_string(),
        started_at,
        seconds: plan.measure.as_secs_f64(),
        reps: plan.reps,
        runs: Vec::new(),
        failovers: Vec::new(),
        footprints: Vec::new(),
        settings: Vec::new(),
        wall_seconds: 0.0,
    };
    // Rounds: every system runs each workload once per round, on a cluster of its own
    // started afresh, one system after the other. A machine whose speed drifts over the
    // minutes of a run (a virtual machine's disk and neighbours) then weighs on every
    // system alike, and the spread of a system's repetitions includes its cluster's
    // start (which member leads, where agents feed from).
    for round in 1..=plan.reps {
        for system in systems {
            let dir = root.join(format!("{system}-{round}"));
            std::fs::create_dir_all(&dir)?;
            println!("== round {round}: {system}: starting a three-member cluster");
            let mut cluster = match system.as_str() {
                "corral" => Cluster::Corral(Corral::start(&plan.corral, &dir).await?),
                "etcd" => Cluster::Etcd(Etcd::start(&dir).await?),
                _ => Cluster::ZooKeeper(ZooKeeper::start(&dir).await?),
            };
            let outcome = run_system(plan, round, &mut cluster, &mut results).await;
            drop(cluster);
            outcome.with_context(|| format!("{system}: logs in {}", dir.display()))?;
            // The cluster's data goes with it: rounds do not fill the disk.
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    results.wall_seconds = wall.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&root);
    Ok(results)
}

/// One round of every workload against `cluster`: repetition `rep` of each.
async fn run_system(
    plan: &Plan,
    rep: u32,
    cluster: &mut Cluster,
    results: &mut Results,
) -> anyhow::Result<()> {
    let system = cluster.name();
    // Footprint: once, in the first round; idle right after the start (nothing written
    // yet), and again after the warm-up (its keys held, its connections closed).
    let footprint = plan.wants("footprint") && rep == 1;
    if footprint {
        idle_footprint(cluster, results, "idle").await;
    }
    // Warm every system up alike (ZooKeeper's JIT most of all): unrecorded lookups and
    // writes from 16 clients.
    let (_, how) = cluster.lookups()[0];
    let ops = cluster.lookup_clients(16, how).await?;
    closed_loop(ops, Duration::ZERO, SYSTEM_WARMUP).await;
    let ops = cluster.write_clients(16, cluster.writes()[0].1).await?;
    closed_loop(ops, Duration::ZERO, SYSTEM_WARMUP).await;
    if footprint {
        idle_footprint(cluster, results, WARM_LABEL).await;
    }
    if plan.wants("lookup") {
        for (label, how) in cluster.lookups() {
            for &clients in &plan.clients {
                let ops = cluster.lookup_clients(clients, how).await?;
                let sample = measured_load(ops, &cluster.processes(), plan.measure).await?;
                let linearizable = how == Lookup::Linearizable;
                record(
                    results,
                    cluster,
                    "lookup",
                    label,
                    linearizable,
                    clients,
                    rep,
                    sample,
                )?;
            }
        }
    }
    if plan.wants("write") || plan.wants("footprint") {
        for (label, writes) in cluster.writes() {
            for &clients in &plan.clients {
                let ops = cluster.write_clients(clients, writes).await?;
                // Footprint under load: the first round at 16 clients (or the middle
                // concurrency), through the agent for Corral.
                let sample_footprint = footprint
                    && clients == plan.clients[plan.clients.len() / 2]
                    && writes == cluster.writes()[0].1;
                let processes = cluster.processes();
                let footprints = async {
                    if !sample_footprint {
                        return Vec::new();
                    }
                    tokio::time::sleep(WARMUP).await;
                    machine::footprint(&processes, plan.measure.mul_f64(0.9)).await
                };
                let (sample, footprints) =
                    tokio::join!(measured_load(ops, &processes, plan.measure), footprints);
                let sample = sample?;
                for f in footprints {
                    results.footprints.push(FootprintRow {
                        system,
                        state: "write load",
                        footprint: f,
                    });
                }
                if plan.wants("write") {
                    record(
                        results, cluster, "write", label, false, clients, rep, sample,
                    )?;
                }
            }
        }
    }
    if plan.wants("lock") {
        for (label, via) in cluster.locks() {
            for &clients in &plan.clients {
                let ops = cluster.lock_clients(clients, via).await?;
                let sample = measured_load(ops, &cluster.processes(), plan.measure).await?;
                record(results, cluster, "lock", label, false, clients, rep, sample)?;
            }
        }
    }
    if plan.wants("etcd-api")
        && let Some(endpoints) = cluster.etcd_endpoints()
    {
        etcd_api::prepare(&endpoints).await?;
        for workload in EtcdWorkload::ALL {
            for &clients in &plan.clients {
                let ops = etcd_api::clients(&endpoints, clients, workload).await?;
                let sample = measured_load(ops, &cluster.processes(), plan.measure).await?;
                let linearizable = workload == EtcdWorkload::LinearizableGet;
                record(
                    results,
                    cluster,
                    "etcd API",
                    workload.label(),
                    linearizable,
                    clients,
                    rep,
                    sample,
                )?;
            }
        }
    }
    if plan.wants("failover") {
        // At least FAILOVER_REPS_MIN in all, spread over the rounds.
        let per_round = FAILOVER_REPS_MIN.div_ceil(plan.reps);
        for freeze in [Freeze::Kill, Freeze::Stop] {
            for i in 1..=per_round {
                let n = (rep - 1) * per_round + i;
                let elapsed = cluster.failover(&plan.bench, freeze).await?;
                println!(
                    "{system} failover after {}: {} ms (rep {n})",
                    freeze.label(),
                    elapsed.as_millis()
                );
                results.failovers.push(FailoverRun {
                    system,
                    signal: freeze.label(),
                    rep: n,
                    ms: elapsed.as_secs_f64() * 1000.0,
                });
            }
        }
        if rep == 1 {
            results
                .settings
                .push((format!("{system} failover"), cluster.failover_setting()));
        }
    }
    if footprint && let Cluster::Corral(corral) = cluster {
        state_footprint(corral, results).await?;
    }
    cluster.check_running()?;
    Ok(())
}

/// Every process's footprint after 2 s of rest, over [`IDLE_WINDOW`], as `state`.
async fn idle_footprint(cluster: &Cluster, results: &mut Results, state: &'static str) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    for f in machine::footprint(&cluster.processes(), IDLE_WINDOW).await {
        results.footprints.push(FootprintRow {
            system: cluster.name(),
            state,
            footprint: f,
        });
    }
}

/// Keys and value size of the state whose footprint the page shows.
const STATE_KEYS: usize = 128_000;

/// Corral's footprint holding [`STATE_KEYS`] keys of [`VALUE_SIZE`] bytes, once the
/// cluster has had every other workload: on the core members, on agent a1 (which
/// followed the writes) and on agent a4, started after them (its state came as a
/// snapshot). Memory settles for a moment before the window.
async fn state_footprint(corral: &mut Corral, results: &mut Results) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let revision = corral.fill_state(STATE_KEYS, VALUE_SIZE).await?;
    println!(
        "corral: {STATE_KEYS} keys of {VALUE_SIZE} B written in {:.1} s (revision {revision})",
        started.elapsed().as_secs_f64()
    );
    corral.agent_reached(0, revision).await?;
    let joined = std::time::Instant::now();
    corral.join_agent(revision).await?;
    println!(
        "corral: agent a4 joined and holds the state after {:.2} s",
        joined.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    for f in machine::footprint(&corral.state_processes(), IDLE_WINDOW).await {
        println!(
            "corral footprint, {STATE_KEYS} keys: {} {:.1} MiB",
            f.process, f.rss_mib
        );
        results.footprints.push(FootprintRow {
            system: "Corral",
            state: STATE_LABEL,
            footprint: f,
        });
    }
    Ok(())
}

/// One measured run of a closed loop, with the CPU that the system's processes and
/// this driver spent per operation over its measured window.
async fn measured_load(
    ops: Vec<Op>,
    processes: &[(String, u32)],
    measure: Duration,
) -> anyhow::Result<Sample> {
    let load = tokio::spawn(closed_loop(ops, WARMUP, measure));
    let cpu = machine::cpu_over(processes, WARMUP, measure).await;
    let mut sample = load.await?;
    sample.cpu = cpu.and_then(|(servers, driver)| CpuPerOp::new(servers, driver, sample.ops));
    Ok(sample)
}

#[allow(clippy::too_many_arguments)]
fn record(
    results: &mut Results,
    cluster: &mut Cluster,
    workload: &'static str,
    variant: &'static str,
    linearizable: bool,
    clients: usize,
    rep: u32,
    sample: Sample,
) -> anyhow::Result<()> {
    cluster.check_running()?;
    let system = cluster.name();
    println!(
        "{system} {workload} ({variant}) ×{clients} rep {rep}: {:.0} ops/s, p50 {} µs, p99 {} µs, {} errors, CPU per op {}{}",
        sample.ops_per_second(),
        sample.quantile_us(0.5),
        sample.quantile_us(0.99),
        sample.errors,
        sample.cpu.map_or_else(
            || "not measured".to_string(),
            |c| format!(
                "servers {:.1} µs, driver {:.1} µs",
                c.servers_us(),
                c.driver_us()
            )
        ),
        sample
            .first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    if sample.ops == 0 {
        bail!(
            "{system} {workload} ({variant}) with {clients} clients completed nothing: {}",
            sample.first_error.as_deref().unwrap_or("no error")
        );
    }
    results.runs.push(Run {
        workload,
        system,
        variant,
        linearizable,
        clients,
        rep,
        sample,
    });
    Ok(())
}
