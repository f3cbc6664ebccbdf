//! `corral bench`: throughput and latency figures, printed, never asserted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use corral_proto::Command;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::core_member::CoreAccess;
use super::output::print_json;

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    action: BenchAction,
}

#[derive(Debug, Subcommand)]
enum BenchAction {
    /// Writes (puts) straight to the core's leader, as an agent forwards them.
    Put {
        #[command(flatten)]
        access: CoreAccess,
        /// Concurrent clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Total operations, shared among the clients.
        #[arg(long, default_value_t = 10_000)]
        ops: usize,
        /// Bytes per value.
        #[arg(long, default_value_t = 256)]
        value_size: usize,
        /// Distinct keys each client cycles over (`bench/CLIENT/N`).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
        keys_per_client: u64,
        #[arg(long)]
        json: bool,
    },
    /// Key routes in a shard group, from the shard map the agent publishes beside its
    /// socket (`ShardMap::route`: slot, shard, master, version), on one thread: prints the
    /// mean time per route.
    Route {
        /// The agent's socket.
        #[arg(long, env = "CORRAL_SOCKET")]
        socket: std::path::PathBuf,
        /// The shard group routed in.
        group: String,
        /// Routes, each of another key (`key-N`).
        #[arg(long, default_value_t = 1_000_000)]
        ops: usize,
    },
    /// Shard-master lookups through the local agent's socket ("who is the master of
    /// SHARD"), answered from its replica, or linearizable with --consistent.
    Get {
        /// The agent's socket.
        #[arg(long, env = "CORRAL_SOCKET")]
        socket: std::path::PathBuf,
        /// Concurrent clients, each on its own connection.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Total lookups, shared among the clients.
        #[arg(long, default_value_t = 100_000)]
        ops: usize,
        /// The shard looked up; created with one replica if missing.
        #[arg(long, default_value = "bench-shard")]
        shard: String,
        /// Linearizable lookups (read index through the core leader).
        #[arg(long, conflicts_with = "map")]
        consistent: bool,
        /// Lookups in the shard map the agent publishes beside its socket, with no
        /// round trip to the agent.
        #[arg(long)]
        map: bool,
        /// Longest each client polls for a reply before its thread sleeps (0: never).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=1000))]
        reply_poll_us: u64,
        #[arg(long)]
        json: bool,
    },
}

/// What one run measured.
#[derive(Debug, Serialize)]
pub(crate) struct BenchReport {
    pub(crate) workload: String,
    pub(crate) clients: usize,
    pub(crate) ops: u64,
    pub(crate) errors: u64,
    pub(crate) seconds: f64,
    pub(crate) ops_per_second: f64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
    pub(crate) max_us: u64,
}

impl BenchReport {
    pub(crate) fn new(
        workload: &str,
        clients: usize,
        histogram: &Histogram<u64>,
        errors: u64,
        elapsed: Duration,
    ) -> Self {
        let seconds = elapsed.as_secs_f64();
        Self {
            workload: workload.to_string(),
            clients,
            ops: histogram.len(),
            errors,
            seconds,
            ops_per_second: histogram.len() as f64 / seconds.max(f64::EPSILON),
            p50_us: histogram.value_at_quantile(0.50),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }

    pub(crate) fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            return print_json(self);
        }
        let ms = |us: u64| us as f64 / 1000.0;
        println!(
            "{}: {} clients, {} ops in {:.2} s = {:.0} ops/s; latency p50 {:.3} ms, p99 {:.3} ms, p999 {:.3} ms, max {:.3} ms; {} errors",
            self.workload,
            self.clients,
            self.ops,
            self.seconds,
            self.ops_per_second,
            ms(self.p50_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us),
            self.errors
        );
        Ok(())
    }
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub(crate) fn run(args: BenchArgs) -> anyhow::Result<()> {
    super::init_logging("warn");
    match args.action {
        BenchAction::Put {
            access,
            clients,
            ops,
            value_size,
            keys_per_client,
            json,
        } => {
            anyhow::ensure!(
                clients > 0 && ops > 0,
                "--clients and --ops must be positive"
            );
            let shape = PutShape {
                clients,
                ops,
                value_size,
                keys_per_client: keys_per_client as usize,
            };
            let report = super::runtime()?.block_on(bench_put(access, shape))?;
            report.print(json)
        }
        BenchAction::Route { socket, group, ops } => {
            anyhow::ensure!(ops > 0, "--ops must be positive");
            bench_route(&socket, &group, ops)
        }
        BenchAction::Get {
            socket,
            clients,
            ops,
            shard,
            consistent,
            map,
            reply_poll_us,
            json,
        } => {
            anyhow::ensure!(
                clients > 0 && ops > 0,
                "--clients and --ops must be positive"
            );
            let read = if map {
                Read::Map
            } else if consistent {
                Read::Consistent
            } else {
                Read::Local
            };
            let options = corral_proto::ClientOptions {
                reply_poll_max: std::time::Duration::from_micros(reply_poll_us),
                ..corral_proto::ClientOptions::default()
            };
            let report = super::runtime()?
                .block_on(bench_get(socket, clients, ops, shard, read, options))?;
            report.print(json)
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    Local,
    Consistent,
    Map,
}

async fn bench_get(
    socket: std::path::PathBuf,
    clients: usize,
    ops: usize,
    shard: String,
    read: Read,
    options: corral_proto::ClientOptions,
) -> anyhow::Result<BenchReport> {
    use corral_proto::api::{AgentRequest, Query, QueryResult};
    use corral_proto::{AgentClient, ShardMap};
    let setup = AgentClient::connect(&socket).await?;
    if setup.shard(&shard).await?.is_none() {
        let _ = setup
            .write(AgentRequest::CreateShard {
                name: shard.clone(),
            })
            .await;
        setup
            .write(AgentRequest::JoinShard {
                shard: shard.clone(),
                address: "bench-master:1".into(),
                priority: 1,
                detach: true,
            })
            .await?;
    }
    // The agent publishes the map within a second of starting; a new shard, at once.
    let wait_for_map = Instant::now();
    while read == Read::Map && !matches!(ShardMap::for_socket(&socket).master(&shard), Ok(Some(_)))
    {
        anyhow::ensure!(
            wait_for_map.elapsed() < std::time::Duration::from_secs(5),
            "no shard map with {shard} beside {}",
            socket.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut connections = Vec::new();
    for _ in 0..clients {
        connections.push(AgentClient::connect_with(&socket, options).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, client) in connections.into_iter().enumerate() {
        let count = ops / clients + usize::from(c < ops % clients);
        let shard = shard.clone();
        let mut map = ShardMap::for_socket(&socket);
        tasks.push(tokio::spawn(async move {
            let mut histogram = new_histogram();
            let mut errors = 0u64;
            for _ in 0..count {
                let t = Instant::now();
                let ok = match read {
                    Read::Map => {
                        let found = matches!(map.master(&shard), Ok(Some(_)));
                        // Let the other clients run, as a socket round trip would.
                        tokio::task::yield_now().await;
                        found
                    }
                    Read::Local | Read::Consistent => matches!(
                        client.read(Query::Shard(shard.clone()), read == Read::Consistent).await,
                        Ok(reply) if matches!(reply.result, QueryResult::Shard(Some(ref s)) if s.master.is_some())
                    ),
                };
                if ok {
                    histogram
                        .record(t.elapsed().as_micros().max(1) as u64)
                        .expect("latency within bounds");
                } else {
                    errors += 1;
                }
            }
            (histogram, errors)
        }));
    }
    let mut histogram = new_histogram();
    let mut errors = 0;
    for task in tasks {
        let (h, e) = task.await?;
        histogram.add(&h).expect("same bounds");
        errors += e;
    }
    let workload = match read {
        Read::Local => "shard lookup (agent, local)",
        Read::Consistent => "shard lookup (agent, consistent)",
        Read::Map => "shard lookup (shard map)",
    };
    Ok(BenchReport::new(
        workload,
        clients,
        &histogram,
        errors,
        started.elapsed(),
    ))
}

/// `corral bench route`: routes of distinct keys from the shard map, timed as a whole.
fn bench_route(socket: &std::path::Path, group: &str, ops: usize) -> anyhow::Result<()> {
    let mut map = corral_proto::ShardMap::for_socket(socket);
    anyhow::ensure!(
        map.route(group, b"warm-up")?.is_some(),
        "no shard group {group} in the map beside {}",
        socket.display()
    );
    let keys: Vec<String> = (0..ops.min(100_000)).map(|i| format!("key-{i}")).collect();
    let started = Instant::now();
    let mut with_master = 0usize;
    for i in 0..ops {
        let route = map.route(group, keys[i % keys.len()].as_bytes())?;
        with_master += usize::from(route.is_some_and(|r| r.master.is_some()));
    }
    let elapsed = started.elapsed();
    println!(
        "{ops} routes in {group} from the shard map: {:.0} ns each on average ({with_master} to a shard with a master)",
        elapsed.as_nanos() as f64 / ops as f64
    );
    Ok(())
}

/// What `bench put` writes.
struct PutShape {
    clients: usize,
    ops: usize,
    value_size: usize,
    keys_per_client: usize,
}

async fn bench_put(access: CoreAccess, shape: PutShape) -> anyhow::Result<BenchReport> {
    let PutShape {
        clients,
        ops,
        value_size,
        keys_per_client,
    } = shape;
    let client = Arc::new(access.client()?);
    // Find the leader before the clock starts.
    client
        .write(&Command::Put {
            key: "bench/warmup".into(),
            value: vec![0; value_size],
            session: None,
        })
        .await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = client.clone();
        let count = ops / clients + usize::from(c < ops % clients);
        tasks.push(tokio::spawn(async move {
            let mut histogram = new_histogram();
            let mut errors = 0u64;
            let value = vec![b'x'; value_size];
            for i in 0..count {
                let command = Command::Put {
                    key: format!("bench/{c}/{}", i % keys_per_client),
                    value: value.clone(),
                    session: None,
                };
                let t = Instant::now();
                match client.write(&command).await {
                    Ok(response) if response.outcome.is_ok() => {
                        histogram
                            .record(t.elapsed().as_micros().max(1) as u64)
                            .expect("latency within bounds");
                    }
                    _ => errors += 1,
                }
            }
            (histogram, errors)
        }));
    }
    let mut histogram = new_histogram();
    let mut errors = 0;
    for task in tasks {
        let (h, e) = task.await?;
        histogram.add(&h).expect("same bounds");
        errors += e;
    }
    Ok(BenchReport::new(
        "put (core)",
        clients,
        &histogram,
        errors,
        started.elapsed(),
    ))
}
