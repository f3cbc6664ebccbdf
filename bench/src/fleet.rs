//! `corral-bench fleet`: what a write costs the core as the fleet grows, and how long it
//! takes to reach the last agent.
//!
//! ```text
//!  for N in --agents: 3 core members + N agents on loopback (fresh cluster)
//!    idle window ─► core CPU at rest            (beats and progress of N streams)
//!    W writes of 256 B straight to the core, C writers, at a fixed rate for every size
//!      ─► core CPU over the writes
//!    every agent subscribed to the written prefix ─► arrival of each write at the last
//!    agent, from its acknowledgement
//! ```
//!
//! Printed, never asserted: the figures of one machine in one run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use corral_net::client::CoreClient;
use corral_net::rpc::ALPN_CORE;
use corral_net::transport::certificate_authority::ADMIN_NAME;
use corral_net::transport::{QuicTransport, TlsIdentity};
use corral_proto::api::SubscriptionItem;
use corral_proto::event::Event;
use corral_proto::{AgentClient, Command, EventFilter};

use crate::machine::processes_cpu;
use crate::process::{Server, output, wait_for};

const CORE_PORT: u16 = 18001;
const GOSSIP_PORT: u16 = 18101;
const VALUE_LEN: usize = 256;
/// Agents started together while a fleet comes up.
const AGENTS_PER_WAVE: usize = 20;
/// Times a write is sent again after an error before the run gives up.
const WRITE_TRIES: usize = 10;

fn tracing_retry(error: &corral_net::client::ClientError) {
    eprintln!("a write is sent again after: {error}");
}

pub struct FleetPlan {
    pub corral: PathBuf,
    pub agents: Vec<usize>,
    pub writes: usize,
    pub writers: usize,
    /// The agents' `--feed-top` (None: their default).
    pub feed_top: Option<usize>,
    /// Writes per second, the same for every fleet size (None: as fast as they go).
    pub rate: Option<u64>,
}

/// Runs the plan, one fleet size after the other, printing each size's figures and a
/// summary of all.
pub async fn run(plan: &FleetPlan) -> anyhow::Result<()> {
    let root = std::env::temp_dir().join(format!("corral-fleet-{}", std::process::id()));
    let mut lines = Vec::new();
    for &agents in &plan.agents {
        let dir = root.join(format!("fleet-{agents}"));
        std::fs::create_dir_all(&dir)?;
        let line = one_size(plan, &dir, agents)
            .await
            .with_context(|| format!("{agents} agents: logs in {}", dir.display()))?;
        println!("{line}");
        lines.push(line);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&root);
    println!(
        "\n== summary ({} writes of {VALUE_LEN} B, {} writers, {}, straight to the core)",
        plan.writes,
        plan.writers,
        plan.rate
            .map_or("as fast as they go".to_string(), |r| format!(
                "{r} per second"
            ))
    );
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

async fn one_size(plan: &FleetPlan, dir: &Path, agents: usize) -> anyhow::Result<String> {
    let fleet = Fleet::start(&plan.corral, dir, agents, plan.feed_top).await?;
    let cores = fleet.core_pids();
    // At rest: what the fleet's streams cost the core with no write.
    let rest = Duration::from_secs(3);
    let before = processes_cpu(&cores).context("core CPU")?;
    tokio::time::sleep(rest).await;
    let idle = processes_cpu(&cores).context("core CPU")?.since(before);
    let idle_per_second = idle.seconds() / rest.as_secs_f64();

    let arrivals = Arc::new(Arrivals::new(plan.writes));
    let mut followers = Vec::new();
    for socket in &fleet.sockets {
        let client = AgentClient::connect(socket).await?;
        let mut subscription = client.subscribe(EventFilter::keys("fleet/"), None).await?;
        let arrivals = arrivals.clone();
        followers.push(tokio::spawn(async move {
            let _client = client;
            while let Some(item) = subscription.next().await {
                if let SubscriptionItem::Reset { .. } = item {
                    arrivals.resets.fetch_add(1, Ordering::Relaxed);
                }
                if let SubscriptionItem::Events(batch) = item {
                    for event in batch.events {
                        if let Event::KeyPut(kv) = event
                            && let Some(i) =
                                kv.key.strip_prefix("fleet/").and_then(|i| i.parse().ok())
                        {
                            arrivals.arrived(i);
                        }
                    }
                }
            }
        }));
    }

    let core = Arc::new(fleet.core_client()?);
    let started = Instant::now();
    let before = processes_cpu(&cores).context("core CPU")?;
    let last_revision = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    let next = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    for _ in 0..plan.writers {
        let (core, arrivals) = (core.clone(), arrivals.clone());
        let (last_revision, next) = (last_revision.clone(), next.clone());
        let retried = retried.clone();
        let (writes, rate) = (plan.writes as u64, plan.rate);
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= writes {
                    return anyhow::Ok(());
                }
                if let Some(rate) = rate {
                    // Write i is due i / rate seconds after the start.
                    let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let command = Command::Put {
                    key: format!("fleet/{i}"),
                    value: vec![b'v'; VALUE_LEN],
                    session: None,
                };
                // A put of its own key is safe to repeat: one whose outcome the core
                // could not know (an election under the load) is sent again, and counted.
                let mut tries = 0;
                let response = loop {
                    match core.write(&command).await {
                        Ok(response) => break response,
                        Err(e) if tries < WRITE_TRIES => {
                            tries += 1;
                            retried.fetch_add(1, Ordering::Relaxed);
                            tracing_retry(&e);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                };
                anyhow::ensure!(response.outcome.is_ok(), "{:?}", response.outcome);
                arrivals.acknowledged(i as usize);
                last_revision.fetch_max(response.revision, Ordering::Relaxed);
            }
        }));
    }
    for writer in writers {
        writer.await??;
    }
    let written = started.elapsed();
    let last = last_revision.load(Ordering::Relaxed);
    // The core's work for a write ends when the last agent has it: measured until then.
    let mut relayed = 0;
    for socket in &fleet.sockets {
        let socket = socket.clone();
        let feed = wait_for(
            Duration::from_secs(120),
            "every agent to have every write",
            || {
                let socket = socket.clone();
                async move {
                    let status = AgentClient::connect(&socket)
                        .await
                        .ok()?
                        .status()
                        .await
                        .ok()?;
                    (status.revision >= last).then_some(status.feed)
                }
            },
        )
        .await?;
        relayed += usize::from(feed.is_some_and(|f| f.starts_with("relay ")));
    }
    let fed = started.elapsed();
    let spent = processes_cpu(&cores).context("core CPU")?.since(before);
    // Subscribers a moment to deliver what their agents hold.
    let _ = wait_for(
        Duration::from_secs(5),
        "every write at every subscriber",
        || {
            let arrivals = arrivals.clone();
            let agents = agents as u64;
            async move { arrivals.complete(agents).then_some(()) }
        },
    )
    .await;
    for follower in followers {
        follower.abort();
    }
    let per_write_us = spent.seconds() * 1e6 / plan.writes as f64;
    let above_rest_us =
        (spent.seconds() - idle_per_second * fed.as_secs_f64()).max(0.0) * 1e6 / plan.writes as f64;
    let mut delays = arrivals.delays_ms(agents as u64);
    delays.sort_by(f64::total_cmp);
    let delay = if delays.is_empty() {
        "no write seen by every subscriber".to_string()
    } else {
        let at = |q: f64| delays[((delays.len() - 1) as f64 * q).round() as usize];
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} of {} writes seen by every subscriber, {} resets)",
            at(0.5),
            at(0.99),
            at(1.0),
            delays.len(),
            plan.writes,
            arrivals.resets.load(Ordering::Relaxed),
        )
    };
    let retried = match retried.load(Ordering::Relaxed) {
        0 => String::new(),
        n => format!("; {n} writes sent again after an error"),
    };
    Ok(format!(
        "{agents:>4} agents ({relayed} fed by agents): core CPU per write {per_write_us:.0} µs ({above_rest_us:.0} µs above its CPU at rest, {:.1}% of a core), until the last agent had the last write {:.1} s after the first; {:.0} writes/s acknowledged; acknowledgement to the last agent {delay}{retried}",
        idle_per_second * 100.0,
        fed.as_secs_f64(),
        plan.writes as f64 / written.as_secs_f64(),
    ))
}

/// When each write was acknowledged, when its last arrival was seen and at how many
/// agents, in nanoseconds since `epoch`.
struct Arrivals {
    epoch: Instant,
    acknowledged: Vec<AtomicU64>,
    last: Vec<AtomicU64>,
    seen: Vec<AtomicU64>,
    /// Subscriptions that fell behind their agent and started over (their writes until
    /// then are not seen).
    resets: AtomicU64,
}

impl Arrivals {
    fn new(writes: usize) -> Self {
        let zeros = || (0..writes).map(|_| AtomicU64::new(0)).collect();
        Arrivals {
            epoch: Instant::now(),
            acknowledged: zeros(),
            last: zeros(),
            seen: zeros(),
            resets: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn acknowledged(&self, i: usize) {
        self.acknowledged[i].store(self.now(), Ordering::Relaxed);
    }

    fn arrived(&self, i: usize) {
        if i < self.last.len() {
            self.last[i].fetch_max(self.now(), Ordering::Relaxed);
            self.seen[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn complete(&self, agents: u64) -> bool {
        self.seen
            .iter()
            .all(|s| s.load(Ordering::Relaxed) >= agents)
    }

    /// From each acknowledgement to the last agent's arrival, for the writes every one of
    /// `agents` subscribers saw; a write that reached every agent before its writer heard
    /// the acknowledgement counts 0.
    fn delays_ms(&self, agents: u64) -> Vec<f64> {
        self.acknowledged
            .iter()
            .zip(&self.last)
            .zip(&self.seen)
            .filter(|(_, seen)| seen.load(Ordering::Relaxed) >= agents)
            .map(|((ack, last), _)| {
                let (ack, last) = (ack.load(Ordering::Relaxed), last.load(Ordering::Relaxed));
                last.saturating_sub(ack) as f64 / 1e6
            })
            .collect()
    }
}

/// Three core members and `agents` agents on loopback, no gateway.
struct Fleet {
    binary: PathBuf,
    tls: PathBuf,
    cores: Vec<Server>,
    /// Killed with the fleet.
    agents: Vec<Server>,
    sockets: Vec<PathBuf>,
    core_addresses: Vec<String>,
    feed_top: Option<usize>,
}

impl Fleet {
    async fn start(
        binary: &Path,
        dir: &Path,
        agents: usize,
        feed_top: Option<usize>,
    ) -> anyhow::Result<Fleet> {
        let bin = binary.display().to_string();
        let tls = dir.join("tls");
        let tls_arg = tls.display().to_string();
        output(&bin, &["ca", "init", "--dir", &tls_arg, "--days", "2"])?;
        let names: Vec<String> = (1..=3)
            .map(|i| format!("core-{i}"))
            .chain((1..=agents).map(|i| format!("a{i}")))
            .collect();
        for name in &names {
            output(
                &bin,
                &[
                    "ca", "issue", "--dir", &tls_arg, "--name", name, "--days", "2",
                ],
            )?;
        }
        let core_addresses: Vec<String> = (0..3)
            .map(|i| format!("127.0.0.1:{}", CORE_PORT + i))
            .collect();
        let peers = crate::systems::corral::peers_arg(&core_addresses);
        let mut cores = Vec::new();
        for (i, address) in core_addresses.iter().enumerate() {
            let id = (i + 1).to_string();
            let args: Vec<String> = [
                "core",
                "--id",
                &id,
                "--listen",
                address,
                "--peers",
                &peers,
                "--tls-dir",
                &tls_arg,
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([
                "--data-dir".into(),
                dir.join(format!("core-{id}")).display().to_string(),
            ])
            .collect();
            let log = dir.join(format!("core-{id}.log"));
            cores.push(Server::spawn(&format!("core-{id}"), binary, &args, &log)?);
        }
        let mut fleet = Fleet {
            binary: binary.to_path_buf(),
            tls,
            cores,
            agents: Vec::new(),
            sockets: Vec::new(),
            core_addresses,
            feed_top,
        };
        let core = Arc::new(fleet.core_client()?);
        wait_for(Duration::from_secs(30), "a core leader", || {
            let core = core.clone();
            async move { core.read_index().await.ok() }
        })
        .await?;
        // In waves, each fed before the next starts: two hundred agents taking their
        // snapshots at once would only measure a start-up storm.
        for wave in (1..=agents).collect::<Vec<_>>().chunks(AGENTS_PER_WAVE) {
            for &i in wave {
                fleet.spawn_agent(dir, i)?;
            }
            let revision = wait_for(Duration::from_secs(60), "the core's read index", || {
                let core = core.clone();
                async move { core.read_index().await.ok() }
            })
            .await?;
            for socket in &fleet.sockets[wave[0] - 1..] {
                let socket = socket.clone();
                wait_for(Duration::from_secs(120), "every agent fed", || {
                    let socket = socket.clone();
                    async move {
                        let client = AgentClient::connect(&socket).await.ok()?;
                        let status = client.status().await.ok()?;
                        (status.revision >= revision && status.node_session.is_some()).then_some(())
                    }
                })
                .await?;
            }
        }
        Ok(fleet)
    }

    fn spawn_agent(&mut self, dir: &Path, i: usize) -> anyhow::Result<()> {
        let name = format!("a{i}");
        let socket = dir.join(format!("{name}.sock"));
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--name".into(),
            name.clone(),
            "--data-dir".into(),
            dir.join(format!("agent-{name}")).display().to_string(),
            "--gossip".into(),
            format!("127.0.0.1:{}", GOSSIP_PORT + i as u16 - 1),
            "--join".into(),
            format!("127.0.0.1:{GOSSIP_PORT}"),
            "--core".into(),
            self.core_addresses.join(","),
            "--socket".into(),
            socket.display().to_string(),
            "--tls-dir".into(),
            self.tls.display().to_string(),
        ];
        if let Some(top) = self.feed_top {
            args.extend(["--feed-top".to_string(), top.to_string()]);
        }
        let log = dir.join(format!("agent-{name}.log"));
        // Agents run at a lower priority than the core members, whose cost is measured:
        // two hundred agents on a machine of a few cores would otherwise starve the core
        // into elections (its heartbeats time out) and measure the machine, not Corral.
        args.splice(
            0..0,
            [
                "-n".to_string(),
                "10".into(),
                self.binary.display().to_string(),
            ],
        );
        self.agents
            .push(Server::spawn(&name, Path::new("nice"), &args, &log)?);
        self.sockets.push(socket);
        Ok(())
    }

    fn core_client(&self) -> anyhow::Result<CoreClient> {
        let identity = TlsIdentity::load(&self.tls, ADMIN_NAME)?;
        let transport = Arc::new(QuicTransport::client(&identity, &[ALPN_CORE])?);
        Ok(CoreClient::new(transport, self.core_addresses.clone()))
    }

    fn core_pids(&self) -> Vec<(String, u32)> {
        self.cores
            .iter()
            .map(|s| (s.name.clone(), s.pid()))
            .collect()
    }
}
