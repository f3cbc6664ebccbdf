//! Faults on a Docker cluster (deploy/compose.yaml: three core members, five agents, each
//! container with its own address and certificate), checked by the history checker.
//!
//! These tests need a Docker engine; they are `#[ignore]`d in the ordinary suite and run by
//! `.ci/run` (through `tests/faults/run`) whenever an engine answers. Each scenario prints
//! a line `FAULTS scenario=... ops=... anomalies=... failover_ms=...` for the record.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use corral_core::state::StateMachine;
use corral_net::rpc::WatchItem;
use corral_proto::api::{AgentRequest, EventFilter, Query, QueryResult, SubscriptionItem};
use corral_proto::{
    AgentClient, ClientOptions, Event, KeyValue, Lock, ReconnectingClient, Revision, Shard,
};
use corral_tests::checker::{self, Call, Fence, Operation, Outcome};
use corral_tests::docker::{AGENTS, CORES, DockerCluster};
use corral_tests::wait_until;
use tokio::sync::Mutex;

#[path = "faults/agent_restarts.rs"]
mod agent_restarts;
#[path = "faults/delays.rs"]
mod delays;

const KEYS: usize = 5;
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// Clients on every agent putting unique values and reading them back linearizably.
struct Workload {
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<BTreeMap<String, Vec<Operation>>>>,
    /// (invoked, acknowledged) of every acknowledged put, to measure how long writes
    /// stopped.
    acks: Arc<Mutex<Vec<(Instant, Instant)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A client of `agent`'s socket that connects again by itself when the agent restarts.
async fn reconnecting(cluster: &DockerCluster, agent: &str, label: &str) -> ReconnectingClient {
    // Once the socket answers.
    let _ = cluster.client(agent).await;
    ReconnectingClient::connect(cluster.socket(agent), ClientOptions::default(), None, label)
        .await
        .unwrap()
}

impl Workload {
    async fn start(cluster: &DockerCluster, agents: &[&str]) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let history: Arc<Mutex<BTreeMap<String, Vec<Operation>>>> = Arc::default();
        let acks: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
        let mut tasks = Vec::new();
        for (n, agent) in agents.iter().enumerate() {
            let client = reconnecting(cluster, agent, "workload").await;
            let (stop, history, acks) = (stop.clone(), history.clone(), acks.clone());
            let name = agent.to_string();
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("k{}", (i as usize + n) % KEYS);
                    let write = i.is_multiple_of(2);
                    let invoked = Instant::now();
                    let (call, outcome) = if write {
                        let value = format!("{name}-{i}");
                        let put = AgentRequest::Put {
                            key: key.clone(),
                            value: value.clone().into_bytes(),
                            ephemeral: false,
                        };
                        let result = tokio::time::timeout(OP_TIMEOUT, client.write(put)).await;
                        let outcome = match result {
                            Ok(Ok(_)) => Outcome::Written,
                            _ => Outcome::Unknown,
                        };
                        (Call::Put(value), outcome)
                    } else {
                        let result = tokio::time::timeout(
                            OP_TIMEOUT,
                            client.read(Query::Key(key.clone()), true),
                        )
                        .await;
                        let outcome = match result {
                            Ok(Ok(read)) => match read.result {
                                QueryResult::Key(kv) => Outcome::Read(
                                    kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                                ),
                                _ => Outcome::Unknown,
                            },
                            _ => Outcome::Unknown,
                        };
                        (Call::Get, outcome)
                    };
                    let completed = (outcome != Outcome::Unknown).then(Instant::now);
                    if outcome == Outcome::Written {
                        acks.lock().await.push((invoked, Instant::now()));
                    }
                    if outcome == Outcome::Unknown {
                        // Do not hammer a core that is failing over.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    history
                        .lock()
                        .await
                        .entry(key)
                        .or_default()
                        .push(Operation {
                            client: name.clone(),
                            call,
                            invoked,
                            completed,
                            outcome,
                        });
                    i += 1;
                }
            }));
        }
        Workload {
            stop,
            history,
            acks,
            tasks,
        }
    }

    /// Operations recorded so far.
    async fn ops(&self) -> usize {
        self.history.lock().await.values().map(Vec::len).sum()
    }

    /// Milliseconds from `fault` to the first acknowledgement of a put invoked after it:
    /// the time until the core was serving writes again.
    async fn recovery_after(&self, fault: Instant) -> Option<u128> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let first = self
                .acks
                .lock()
                .await
                .iter()
                .filter(|(invoked, _)| *invoked > fault)
                .map(|(_, acked)| *acked)
                .min();
            if let Some(first) = first {
                return Some(first.duration_since(fault).as_millis());
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the clients, adds a final linearizable read of every key, and checks.
    async fn finish(self, cluster: &DockerCluster) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let client = cluster.client("a1").await;
        let mut history = self.history.lock().await.clone();
        for k in 0..KEYS {
            let key = format!("k{k}");
            let invoked = Instant::now();
            let read = wait_until(Duration::from_secs(30), "a final consistent read", || {
                let client = client.clone();
                let key = key.clone();
                async move { client.read(Query::Key(key), true).await.ok() }
            })
            .await;
            let QueryResult::Key(kv) = read.result else {
                panic!("a key read answered {:?}", read.result)
            };
            history.entry(key).or_default().push(Operation {
                client: "final".into(),
                call: Call::Get,
                invoked,
                completed: Some(Instant::now()),
                outcome: Outcome::Read(
                    kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                ),
            });
        }
        checker::check_keys(&history)
    }
}

/// What one replica (an agent's, or a core member's own state) holds at one revision.
#[derive(Debug, PartialEq)]
struct Contents {
    revision: Revision,
    keys: Vec<KeyValue>,
    shards: Vec<Shard>,
    locks: Vec<Lock>,
}

impl Contents {
    /// Where `self` and `other` differ, at most a few items of each kind.
    fn differences(&self, other: &Contents) -> String {
        fn differ<T: PartialEq + std::fmt::Debug>(
            what: &str,
            ours: &[T],
            theirs: &[T],
            out: &mut Vec<String>,
        ) {
            let only_ours: Vec<_> = ours
                .iter()
                .filter(|x| !theirs.contains(x))
                .take(3)
                .collect();
            let only_theirs: Vec<_> = theirs
                .iter()
                .filter(|x| !ours.contains(x))
                .take(3)
                .collect();
            if !only_ours.is_empty() || !only_theirs.is_empty() {
                out.push(format!("{what}: here {only_ours:?}, there {only_theirs:?}"));
            }
        }
        let mut out = Vec::new();
        differ("keys", &self.keys, &other.keys, &mut out);
        differ("shards", &self.shards, &other.shards, &mut out);
        differ("locks", &self.locks, &other.locks, &mut out);
        out.join("; ")
    }
}

/// What `agent` holds, read at one revision of at least `target`.
async fn agent_contents(cluster: &DockerCluster, agent: &str, target: Revision) -> Contents {
    let client = cluster.client(agent).await;
    wait_until(
        Duration::from_secs(30),
        &format!("{agent} to catch up"),
        || {
            let client = client.clone();
            async move {
                let status = client.status().await.ok()?;
                (status.revision >= target).then_some(status.revision)
            }
        },
    )
    .await;
    // The three reads are taken again until they answer at the same revision (a late
    // session expiry may land between them).
    wait_until(
        Duration::from_secs(30),
        &format!("{agent} to answer three reads at one revision"),
        || {
            let client = client.clone();
            async move {
                let query = Query::Prefix {
                    prefix: String::new(),
                    limit: 10_000,
                };
                let keys = client.read(query, false).await.ok()?;
                let shards = client.read(Query::Shards, false).await.ok()?;
                let locks = client.read(Query::Locks, false).await.ok()?;
                if keys.revision != shards.revision || shards.revision != locks.revision {
                    return None;
                }
                let (
                    QueryResult::Keys { keys: k, .. },
                    QueryResult::Shards(s),
                    QueryResult::Locks(l),
                ) = (keys.result, shards.result, locks.result)
                else {
                    panic!("{agent} answered a read with another kind of result");
                };
                Some(Contents {
                    revision: keys.revision,
                    keys: k,
                    shards: s,
                    locks: l,
                })
            }
        },
    )
    .await
}

/// What the core member `core` holds: the snapshot its watch stream starts with.
async fn core_contents(cluster: &DockerCluster, core: &str) -> Option<Contents> {
    let client = cluster.core_client();
    let address = format!("{}:7001", cluster.ip(core));
    let mut stream = client.watch(&address, None).await.ok()?;
    let mut bytes = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Ok(Some(WatchItem::SnapshotChunk {
                bytes: chunk, last, ..
            }))) => {
                bytes.extend_from_slice(&chunk);
                if last {
                    break;
                }
            }
            Ok(Ok(Some(_))) => {}
            _ => return None,
        }
    }
    let machine = StateMachine::from_snapshot_bytes(&bytes).ok()?;
    Some(Contents {
        revision: machine.revision(),
        keys: machine.list("", None, 10_000).0,
        shards: machine.shards().cloned().collect(),
        locks: machine.locks().cloned().collect(),
    })
}

/// Every agent in `agents` reaches the core's revision, and every replica at the latest
/// revision, the core members' own states included, holds the same keys, shards and locks.
/// An anomaly names the replica that differs from the first core member at that revision
/// (or from the first agent, when no member answered at it) and what differs.
async fn replicas_converge(cluster: &DockerCluster, agents: &[&str]) -> Vec<String> {
    let core = cluster.core_client();
    let target = wait_until(Duration::from_secs(30), "the core's commit index", || {
        let core = core.clone();
        async move { core.read_index().await.ok() }
    })
    .await;
    let mut replicas: Vec<(String, Contents)> = Vec::new();
    for agent in agents {
        replicas.push((
            agent.to_string(),
            agent_contents(cluster, agent, target).await,
        ));
    }
    let last_revision = replicas.iter().map(|r| r.1.revision).max().unwrap_or(0);
    // The members last: by then they have applied what the agents read.
    for member in CORES {
        match core_contents(cluster, member).await {
            Some(contents) => replicas.insert(0, (member.to_string(), contents)),
            None => eprintln!("{member} sent no snapshot of its state"),
        }
    }
    let at_last: Vec<&(String, Contents)> = replicas
        .iter()
        .filter(|r| r.1.revision == last_revision)
        .collect();
    let mut anomalies = Vec::new();
    if let Some((reference, expected)) = at_last.first() {
        for (name, contents) in &at_last[1..] {
            if contents != expected {
                anomalies.push(format!(
                    "{name} differs from {reference} at revision {last_revision}: {}",
                    contents.differences(expected)
                ));
            }
        }
    }
    anomalies
}

/// Clients on several agents taking turns on one lock, and an observer of its grants.
struct LockChurn {
    stop: Arc<AtomicBool>,
    /// Grants as the clients received them.
    grants: Arc<Mutex<Vec<Fence>>>,
    /// Grants and releases in the order the core made them, as one agent saw them.
    events: Arc<Mutex<Vec<Event>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl LockChurn {
    /// Lock clients on `agents` and the observer on `observer`, each through a client that
    /// connects again by itself when its agent restarts (a lock held by a connection is
    /// released with it); the observer's subscription resumes after the last revision it
    /// delivered, so it sees every grant and release.
    async fn start(cluster: &DockerCluster, agents: &[&str], observer: &str) -> LockChurn {
        let stop = Arc::new(AtomicBool::new(false));
        let grants: Arc<Mutex<Vec<Fence>>> = Arc::default();
        let events: Arc<Mutex<Vec<Event>>> = Arc::default();
        let mut tasks = Vec::new();
        for agent in agents {
            let client = reconnecting(cluster, agent, "lock-churn").await;
            let (stop, grants) = (stop.clone(), grants.clone());
            let name = agent.to_string();
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let turn = async {
                        let connection = client.client().await.ok()?;
                        let grant = connection.acquire_lock("L", 2000).await.ok()?;
                        grants.lock().await.push(Fence {
                            observer: name.clone(),
                            number: grant.token,
                            holder: Some(grant.session.to_string()),
                        });
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let _ =
                            tokio::time::timeout(OP_TIMEOUT, connection.release_lock("L")).await;
                        Some(())
                    };
                    if tokio::time::timeout(OP_TIMEOUT, turn)
                        .await
                        .ok()
                        .flatten()
                        .is_none()
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }));
        }
        let client = reconnecting(cluster, observer, "lock-observer").await;
        let filter = EventFilter {
            locks: true,
            ..EventFilter::nothing()
        };
        let mut subscription = client.subscribe(filter, None).await.unwrap();
        let seen = events.clone();
        let stopping = stop.clone();
        tasks.push(tokio::spawn(async move {
            let _client = client;
            while !stopping.load(Ordering::Relaxed) {
                let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(500), subscription.next()).await else {
                    continue;
                };
                if let SubscriptionItem::Events(batch) = item {
                    let mut seen = seen.lock().await;
                    for event in batch.events {
                        if matches!(&event, Event::LockGranted { name, .. } | Event::LockReleased { name, .. } if name == "L") {
                            seen.push(event);
                        }
                    }
                }
            }
        }));
        LockChurn {
            stop,
            grants,
            events,
            tasks,
        }
    }

    /// Stops, then checks: never two holders at once, tokens only grow, and no token was
    /// handed to two sessions. Returns (grants checked, anomalies).
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let grants = self.grants.lock().await.clone();
        let mut anomalies: Vec<String> = checker::check_fences(
            &grants
                .iter()
                .map(|g| Fence {
                    observer: "clients".into(),
                    ..g.clone()
                })
                .collect::<Vec<_>>(),
        )
        .into_iter()
        .filter(|a| a.contains("held by both"))
        .collect();
        let mut holder = None;
        let mut last_token = 0;
        for event in self.events.lock().await.iter() {
            match event {
                Event::LockGranted { grant, .. } => {
                    if let Some(other) = holder
                        && other != grant.session
                    {
                        anomalies.push(format!(
                            "L granted to {} while {other} held it",
                            grant.session
                        ));
                    }
                    if grant.token <= last_token {
                        anomalies.push(format!("token {} after {last_token}", grant.token));
                    }
                    last_token = grant.token;
                    holder = Some(grant.session);
                }
                Event::LockReleased { session, .. } if holder == Some(*session) => {
                    holder = None;
                }
                _ => {}
            }
        }
        (grants.len(), anomalies)
    }
}

fn report(scenario: &str, ops: usize, anomalies: &[String], failover_ms: &[u128]) {
    let mut sorted = failover_ms.to_vec();
    sorted.sort();
    let rank = |q: f64| {
        (!sorted.is_empty()).then(|| sorted[((sorted.len() - 1) as f64 * q).round() as usize])
    };
    let shown = |v: Option<u128>| v.map_or("-".into(), |v| v.to_string());
    println!(
        "FAULTS scenario={scenario} ops={ops} anomalies={} samples={} failover_ms_p50={} failover_ms_p90={} failover_ms_max={} failovers_ms={failover_ms:?} {anomalies:?}",
        anomalies.len(),
        sorted.len(),
        shown(rank(0.5)),
        shown(rank(0.9)),
        shown(sorted.last().copied()),
    );
}

async fn leader_container(cluster: &DockerCluster) -> &'static str {
    let core = cluster.core_client();
    let status = wait_until(Duration::from_secs(30), "a leader", || {
        let core = core.clone();
        let addresses = cluster.core_addresses();
        async move {
            for address in &addresses {
                if let Ok(status) = core.status(address).await
                    && status.leader.is_some()
                {
                    return Some(status);
                }
            }
            None
        }
    })
    .await;
    CORES[(status.leader.expect("a leader") - 1) as usize]
}

/// Kills the core's leader (SIGKILL) and answers it, with the milliseconds until the
/// workload's writes were acknowledged again (one failover sample).
async fn kill_the_leader(cluster: &DockerCluster, workload: &Workload) -> (&'static str, u128) {
    let leader = leader_container(cluster).await;
    cluster.kill(leader);
    let killed = Instant::now();
    let failover = workload
        .recovery_after(killed)
        .await
        .expect("writes resume within 30 s");
    (leader, failover)
}

fn docker_or_skip() -> bool {
    if corral_tests::docker::available() {
        true
    } else {
        println!("no Docker engine answers: skipping");
        false
    }
}

/// Failovers each scenario provokes: enough for a distribution (p50, p90, max).
const FAILOVERS: usize = 10;

/// Waits until core member `member` answers and agrees with the leader it names on the
/// term (the leader itself included): it is back in the cluster, so that the next fault
/// finds three members.
async fn member_back(cluster: &DockerCluster, member: &str) {
    let core = cluster.core_client();
    let address = |name: &str| format!("{}:7001", cluster.ip(name));
    let own = address(member);
    let all: Vec<String> = CORES.iter().map(|c| address(c)).collect();
    wait_until(
        Duration::from_secs(30),
        &format!("{member} back in the core"),
        || {
            let (core, own, all) = (core.clone(), own.clone(), all.clone());
            async move {
                let status = core.status(&own).await.ok()?;
                let leader = status.leader?;
                let of_leader = core.status(all.get((leader - 1) as usize)?).await.ok()?;
                (of_leader.leader == Some(leader) && of_leader.term == status.term).then_some(())
            }
        },
    )
    .await;
}

/// Stops the workload and the lock churn, checks their histories and that every replica
/// in `agents` converged; answers the operations checked and every anomaly.
async fn finish_checks(
    cluster: &DockerCluster,
    workload: Workload,
    locks: LockChurn,
    agents: &[&str],
) -> (usize, Vec<String>) {
    let began = Instant::now();
    let (grants, mut anomalies) = locks.finish().await;
    if grants == 0 {
        anomalies.push("no lock was granted at all: the lock check tested nothing".into());
    }
    let locks_done = began.elapsed().as_millis();
    let (ops, workload_anomalies) = workload.finish(cluster).await;
    anomalies.extend(workload_anomalies);
    let workload_done = began.elapsed().as_millis();
    anomalies.extend(replicas_converge(cluster, agents).await);
    println!(
        "lock L: {grants} grants checked; checks done: locks at {locks_done} ms, histories at {workload_done} ms, replicas at {} ms",
        began.elapsed().as_millis()
    );
    (ops + grants, anomalies)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Docker; run by .ci/run through tests/faults/run"]
async fn leader_killed_under_write_load() {
    if !docker_or_skip() {
        return;
    }
    let cluster = DockerCluster::up().await;
    let workload = Workload::start(&cluster, &AGENTS).await;
    let locks = LockChurn::start(&cluster, &["a1", "a2", "a3"], "a5").await;
    let mut failovers = Vec::new();
    for _ in 0..FAILOVERS {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (leader, failover) = kill_the_leader(&cluster, &workload).await;
        failovers.push(failover);
        cluster.start(leader);
        member_back(&cluster, leader).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ops, anomalies) = finish_checks(&cluster, workload, locks, &AGENTS).await;
    report("leader-killed", ops, &anomalies, &failovers);
    assert!(anomalies.is_empty(), "{anomalies:?}");
}

/// The leader cut off from the other two members (agents still reach it), ten times:
/// each sample is the time from the cut to the first acknowledged write invoked after it.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Docker; run by .ci/run through tests/faults/run"]
async fn a_minority_of_the_core_cut_off() {
    if !docker_or_skip() {
        return;
    }
    let cluster = DockerCluster::up().await;
    let workload = Workload::start(&cluster, &AGENTS).await;
    let locks = LockChurn::start(&cluster, &["a1", "a2", "a3"], "a5").await;
    let mut failovers = Vec::new();
    for _ in 0..FAILOVERS {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let leader = leader_container(&cluster).await;
        for other in CORES.iter().filter(|c| **c != leader) {
            cluster.cut(leader, other);
        }
        let cut = Instant::now();
        let failover = workload
            .recovery_after(cut)
            .await
            .expect("writes resume within 30 s");
        failovers.push(failover);
        tokio::time::sleep(Duration::from_secs(1)).await;
        for member in CORES {
            cluster.heal(member);
        }
        member_back(&cluster, leader).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ops, anomalies) = finish_checks(&cluster, workload, locks, &AGENTS).await;
    report("core-minority-cut", ops, &anomalies, &failovers);
    assert!(anomalies.is_empty(), "{anomalies:?}");
}

/// Every core member killed at once and started again, ten times: each sample is the
/// time from the kill to the first acknowledged write invoked after it.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Docker; run by .ci/run through tests/faults/run"]
async fn the_whole_core_restarted_at_once() {
    if !docker_or_skip() {
        return;
    }
    let cluster = DockerCluster::up().await;
    let workload = Workload::start(&cluster, &AGENTS).await;
    let locks = LockChurn::start(&cluster, &["a1", "a2", "a3"], "a5").await;
    let mut failovers = Vec::new();
    for _ in 0..FAILOVERS {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for core in CORES {
            cluster.kill(core);
        }
        let killed = Instant::now();
        for core in CORES {
            cluster.start(core);
        }
        let failover = workload
            .recovery_after(killed)
            .await
            .expect("writes resume within 30 s");
        failovers.push(failover);
        for core in CORES {
            member_back(&cluster, core).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ops, anomalies) = finish_checks(&cluster, workload, locks, &AGENTS).await;
    report("whole-core-restart", ops, &anomalies, &failovers);
    assert!(anomalies.is_empty(), "{anomalies:?}");
}

/// Observes shard `shard` through `agent`: every (epoch, master) it reports.
/// Creates `shard` from the first agent of `replicas` and registers a replica of it from
/// each, at port 9000 of the agent's address, with its priority; returns the connections
/// that hold the replicas.
async fn register_shard(
    cluster: &DockerCluster,
    shard: &str,
    replicas: &[(&str, u32)],
) -> Vec<AgentClient> {
    let mut holders = Vec::new();
    for (i, &(agent, priority)) in replicas.iter().enumerate() {
        let client = cluster.client(agent).await;
        if i == 0 {
            client
                .write(AgentRequest::CreateShard { name: shard.into() })
                .await
                .unwrap();
        }
        client
            .write(AgentRequest::JoinShard {
                shard: shard.into(),
                address: format!("{}:9000", cluster.ip(agent)),
                priority,
                detach: false,
            })
            .await
            .unwrap();
        holders.push(client);
    }
    holders
}

async fn observe_shard(
    cluster: &DockerCluster,
    agent: &str,
    shard: &str,
    fences: Arc<Mutex<Vec<(Instant, Fence)>>>,
) -> tokio::task::JoinHandle<()> {
    let client = cluster.client(agent).await;
    let filter = EventFilter {
        shards: true,
        ..EventFilter::nothing()
    };
    let mut subscription = client.subscribe(filter, None).await.unwrap();
    let (observer, shard) = (agent.to_string(), shard.to_string());
    tokio::spawn(async move {
        let _client = client;
        while let Some(item) = subscription.next().await {
            if let SubscriptionItem::Events(batch) = item {
                for event in batch.events {
                    if let Event::MasterChanged {
                        shard: s,
                        master,
                        epoch,
                        ..
                    } = event
                        && s == shard
                    {
                        fences.lock().await.push((
                            Instant::now(),
                            Fence {
                                observer: observer.clone(),
                                number: epoch,
                                holder: master,
                            },
                        ));
                    }
                }
            }
        }
    })
}

/// Waits until `on` sees every agent alive, each with a node session.
async fn everyone_alive(cluster: &DockerCluster, on: &str) {
    let client = cluster.client(on).await;
    wait_until(
        Duration::from_secs(60),
        "every agent alive with a session",
        || {
            let client = client.clone();
            async move {
                let members = client.members().await.ok()?;
                (members.len() == AGENTS.len()
                    && members.iter().all(|m| {
                        m.state == corral_proto::api::MemberState::Alive && m.session.is_some()
                    }))
                .then_some(())
            }
        },
    )
    .await;
}

/// Freezes `master`, the host of shard `shard`'s preferred replica (the others on
/// `others`), until observers on a4 and a5 see a new master, then thaws it. Answers the
/// failover (ms from the freeze to the first observer seeing a higher epoch) and the
/// anomalies: the thawed host serving the old epoch as fresh, a consistent read there
/// not showing the new one, or two masters of one epoch.
async fn freeze_a_master(
    cluster: &DockerCluster,
    shard: &str,
    master: &str,
    others: [&str; 2],
) -> (u128, Vec<String>) {
    everyone_alive(cluster, "a5").await;
    let replicas = [(master, 30), (others[0], 20), (others[1], 10)];
    let holders = register_shard(cluster, shard, &replicas).await;
    let old = holders[0].shard(shard).await.unwrap().expect("the shard");
    let mut anomalies = Vec::new();
    if old.master != Some(format!("{}:9000", cluster.ip(master))) {
        anomalies.push(format!("{shard} was not mastered on {master}: {old:?}"));
    }
    let fences: Arc<Mutex<Vec<(Instant, Fence)>>> = Arc::default();
    let mut observers = Vec::new();
    for agent in ["a4", "a5"] {
        observers.push(observe_shard(cluster, agent, shard, fences.clone()).await);
    }
    cluster.pause(master);
    let frozen = Instant::now();
    let failover = wait_until(Duration::from_secs(30), "a new master", || {
        let fences = fences.clone();
        async move {
            let fences = fences.lock().await;
            fences
                .iter()
                .find(|(_, f)| f.number > old.epoch)
                .map(|(at, _)| at.duration_since(frozen).as_millis())
        }
    })
    .await;
    // Frozen a little past the failover, then thawed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.unpause(master);
    // The old master asks its own agent before acting. A local answer right after the
    // thaw is either already the new epoch, or visibly stale (its age covers the freeze);
    // a consistent answer always has the new epoch.
    let local = holders[0].read(Query::Shard(shard.into()), false).await;
    if let Ok(read) = local
        && let QueryResult::Shard(Some(seen)) = &read.result
        && seen.epoch == old.epoch
        && read.age_ms.is_some_and(|age| age < 1000)
    {
        anomalies.push(format!(
            "thawed {master} served epoch {} of {shard} as fresh (age {:?} ms)",
            seen.epoch, read.age_ms
        ));
    }
    let consistent = wait_until(
        Duration::from_secs(30),
        "a consistent read on the thawed host",
        || {
            let client = holders[0].clone();
            let shard = shard.to_string();
            async move { client.read(Query::Shard(shard), true).await.ok() }
        },
    )
    .await;
    match consistent.result {
        QueryResult::Shard(Some(seen)) if seen.epoch > old.epoch => {}
        other => anomalies.push(format!("consistent read of {shard} after thaw: {other:?}")),
    }
    for task in observers {
        task.abort();
    }
    let observed: Vec<Fence> = fences.lock().await.iter().map(|(_, f)| f.clone()).collect();
    anomalies.extend(checker::check_fences(&observed));
    (failover, anomalies)
}

/// The host of a shard's master frozen (SIGSTOP) past the node grace, ten times, each a
/// new shard whose preferred replica is on a1, a2 or a3 in turn: each failover is one
/// sample (from the freeze to the first observer seeing a new master). On thaw the host
/// never takes its stale view for fresh. Load on every agent, the lock passed around.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Docker; run by .ci/run through tests/faults/run"]
async fn a_frozen_master_host_is_replaced_and_learns_it_on_thaw() {
    if !docker_or_skip() {
        return;
    }
    let cluster = DockerCluster::up().await;
    let workload = Workload::start(&cluster, &AGENTS).await;
    let locks = LockChurn::start(&cluster, &["a1", "a2", "a3"], "a5").await;
    let hosts = ["a1", "a2", "a3"];
    let mut failovers = Vec::new();
    let mut anomalies = Vec::new();
    for i in 0..FAILOVERS {
        let master = hosts[i % hosts.len()];
        let others = [hosts[(i + 1) % hosts.len()], hosts[(i + 2) % hosts.len()]];
        let (failover, found) = freeze_a_master(&cluster, &format!("S{i}"), master, others).await;
        println!("frozen {master}: new master seen after {failover} ms");
        failovers.push(failover);
        anomalies.extend(found);
    }
    everyone_alive(&cluster, "a5").await;
    let (ops, found) = finish_checks(&cluster, workload, locks, &AGENTS).await;
    anomalies.extend(found);
    report("frozen-master-host", ops, &anomalies, &failovers);
    assert!(anomalies.is_empty(), "{anomalies:?}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Docker; run by .ci/run through tests/faults/run"]
async fn an_agent_cut_off_from_the_core_but_not_from_gossip() {
    if !docker_or_skip() {
        return;
    }
    let cluster = DockerCluster::up().await;
    let workload = Workload::start(&cluster, &AGENTS).await;
    let locks = LockChurn::start(&cluster, &["a1", "a3", "a4"], "a5").await;
    let a3 = cluster.client("a3").await;
    a3.put("before", b"1").await.unwrap();
    for core in CORES {
        cluster.cut("a3", core);
    }
    let cut = Instant::now();
    let mut anomalies = Vec::new();
    // Reads go on from the replica, visibly older and older.
    tokio::time::sleep(Duration::from_secs(4)).await;
    match a3.read(Query::Key("before".into()), false).await {
        Ok(read) if read.age_ms.is_some_and(|age| age >= 3000) => {}
        other => anomalies.push(format!("a cut-off agent's local read: {other:?}")),
    }
    // Writes and consistent reads fail with an error, in bounded time.
    let write_started = Instant::now();
    let write = tokio::time::timeout(Duration::from_secs(10), a3.put("during", b"x")).await;
    let write_failed_after = write_started.elapsed().as_millis();
    println!("a cut-off agent's write failed after {write_failed_after} ms: {write:?}");
    let unavailable = match &write {
        Ok(Err(error)) => error.api().is_some_and(|e| e.code() == "unavailable"),
        _ => false,
    };
    if !unavailable {
        anomalies.push(format!("a cut-off agent's write: {write:?}"));
    }
    // Gossip still reaches it: nobody declares it dead.
    let a1 = cluster.client("a1").await;
    let members = a1.members().await.unwrap();
    if !members
        .iter()
        .any(|m| m.name == "a3" && m.state == corral_proto::api::MemberState::Alive)
    {
        anomalies.push(format!("a3 is not alive for a1: {members:?}"));
    }
    // The rest of the fleet goes on.
    a1.put("elsewhere", b"2").await.unwrap();
    for core in CORES {
        cluster.heal(core);
    }
    cluster.heal("a3");
    println!("healed {} ms after the cut", cut.elapsed().as_millis());
    let (ops, found) = finish_checks(&cluster, workload, locks, &AGENTS).await;
    anomalies.extend(found);
    let seen = a3.get("elsewhere").await.unwrap();
    if seen.is_none() {
        anomalies.push("a3 did not catch up after the heal".into());
    }
    report("agent-cut-from-core", 4 + ops, &anomalies, &[]);
    assert!(anomalies.is_empty(), "{anomalies:?}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Docker; run by .ci/run through tests/faults/run"]
async fn five_percent_loss_on_every_link_for_a_minute() {
    if !docker_or_skip() {
        return;
    }
    let cluster = DockerCluster::up().await;
    // Every member event any agent reports during the loss.
    let downs: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut watchers = Vec::new();
    for agent in AGENTS {
        let client = cluster.client(agent).await;
        let filter = EventFilter {
            members: true,
            ..EventFilter::nothing()
        };
        let mut subscription = client.subscribe(filter, None).await.unwrap();
        let downs = downs.clone();
        watchers.push(tokio::spawn(async move {
            let _client = client;
            while let Some(item) = subscription.next().await {
                if let SubscriptionItem::Member(member) = item
                    && member.state == corral_proto::api::MemberState::Down
                {
                    downs
                        .lock()
                        .await
                        .push(format!("{agent} saw {} down", member.name));
                }
            }
        }));
    }
    let mut how = "";
    for name in CORES.iter().chain(AGENTS.iter()) {
        how = cluster.loss(name, 5);
    }
    println!("5% loss on every link, by {how}");
    let workload = Workload::start(&cluster, &AGENTS).await;
    let locks = LockChurn::start(&cluster, &["a1", "a2", "a3"], "a5").await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    for name in CORES.iter().chain(AGENTS.iter()) {
        cluster.clear_netem(name);
        cluster.heal(name);
    }
    let (ops, mut anomalies) = finish_checks(&cluster, workload, locks, &AGENTS).await;
    anomalies.extend(
        downs
            .lock()
            .await
            .iter()
            .map(|d| format!("false death: {d}")),
    );
    for task in watchers {
        task.abort();
    }
    report("loss-5pct-60s", ops, &anomalies, &[]);
    assert!(anomalies.is_empty(), "{anomalies:?}");
}

/// The agents in two groups that cannot gossip with each other, every one of them still
/// reaching the core: each group declares the other dead and reports it, the core hears
/// every reported agent on its watch stream and refuses, and nobody's session, shard or
/// mastership is touched, during the cut or after the heal.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Docker; run by .ci/run through tests/faults/run"]
async fn a_gossip_partition_that_leaves_the_core_reachable_closes_no_session() {
    if !docker_or_skip() {
        return;
    }
    let cluster = DockerCluster::up().await;
    let workload = Workload::start(&cluster, &AGENTS).await;
    let locks = LockChurn::start(&cluster, &["a1", "a2", "a4"], "a5").await;
    let (left, right) = (["a1", "a2"], ["a3", "a4", "a5"]);
    // S has its master on a4 (right) and a replica on a1 (left).
    let holders = register_shard(&cluster, "S", &[("a4", 30), ("a1", 10)]).await;
    let before = holders[0].shard("S").await.unwrap().expect("shard S");
    let mut sessions = BTreeMap::new();
    let mut incarnations = BTreeMap::new();
    for agent in AGENTS {
        let status = cluster.client(agent).await.status().await.unwrap();
        sessions.insert(agent, status.node_session);
        incarnations.insert(agent, status.incarnation);
    }
    let fences: Arc<Mutex<Vec<(Instant, Fence)>>> = Arc::default();
    let observers = vec![
        observe_shard(&cluster, "a2", "S", fences.clone()).await,
        observe_shard(&cluster, "a5", "S", fences.clone()).await,
    ];
    for a in left {
        for b in right {
            cluster.cut(a, b);
        }
    }
    let cut = Instant::now();
    // Each side declares the other dead.
    for (observer, others) in [("a1", &right[..]), ("a5", &left[..])] {
        let client = cluster.client(observer).await;
        let others: Vec<String> = others.iter().map(|s| s.to_string()).collect();
        wait_until(
            Duration::from_secs(30),
            &format!("{observer} to declare the other side dead"),
            || {
                let (client, others) = (client.clone(), others.clone());
                async move {
                    let members = client.members().await.ok()?;
                    others
                        .iter()
                        .all(|o| {
                            members.iter().any(|m| {
                                &m.name == o && m.state == corral_proto::api::MemberState::Down
                            })
                        })
                        .then_some(())
                }
            },
        )
        .await;
        println!(
            "{observer} declared the other side dead {} ms after the cut",
            cut.elapsed().as_millis()
        );
    }
    // Past the backup reporters' delay and a refusal's backoff: every report there is to
    // make has been made, and refused.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let mut anomalies = Vec::new();
    let check = |when: &'static str| {
        let cluster = &cluster;
        let sessions = &sessions;
        let before = &before;
        async move {
            let mut anomalies = Vec::new();
            for agent in AGENTS {
                let status = cluster.client(agent).await.status().await;
                match status {
                    Ok(status) if status.node_session == sessions[agent] => {}
                    other => anomalies.push(format!(
                        "{when}: {agent}'s node session was {:?}, is {other:?}",
                        sessions[agent]
                    )),
                }
            }
            let client = cluster.client("a1").await;
            match client.read(Query::Shard("S".into()), true).await {
                Ok(read) => match read.result {
                    QueryResult::Shard(Some(shard))
                        if shard.master == before.master && shard.epoch == before.epoch => {}
                    other => anomalies.push(format!("{when}: shard S is {other:?}")),
                },
                Err(e) => anomalies.push(format!("{when}: reading S failed: {e}")),
            }
            anomalies
        }
    };
    anomalies.extend(check("during the cut").await);
    let refused: usize = AGENTS
        .iter()
        .chain(CORES.iter())
        .map(|name| cluster.logs(name).matches("death report refused").count())
        .sum();
    println!("death reports refused (log lines): {refused}");
    if refused == 0 {
        anomalies.push("no death report was refused: none was made".into());
    }
    for agent in AGENTS {
        cluster.heal(agent);
    }
    let healed = Instant::now();
    for agent in AGENTS {
        let client = cluster.client(agent).await;
        wait_until(
            Duration::from_secs(60),
            &format!("{agent} to see all 5 alive after the heal"),
            || {
                let client = client.clone();
                async move {
                    let status = client.status().await.ok()?;
                    (status.members_alive == 5).then_some(())
                }
            },
        )
        .await;
    }
    println!(
        "every agent saw all 5 alive {} ms after the heal",
        healed.elapsed().as_millis()
    );
    // The agents the other side declared dead take new incarnations and move their
    // sessions to them: the check after the heal means something only once they have.
    let mut renewed = Vec::new();
    for agent in AGENTS {
        let status = cluster.client(agent).await.status().await.unwrap();
        if status.incarnation > incarnations[agent] {
            renewed.push(agent);
        }
    }
    println!("agents under a new incarnation after the heal: {renewed:?}");
    if renewed.is_empty() {
        anomalies.push("no agent took a new incarnation: the heal tested nothing".into());
    }
    // A renewal commits within milliseconds; a session opened anew instead would show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    anomalies.extend(check("after the heal").await);
    for task in observers {
        task.abort();
    }
    let observed: Vec<Fence> = fences.lock().await.iter().map(|(_, f)| f.clone()).collect();
    if !observed.is_empty() {
        anomalies.push(format!("S changed master: {observed:?}"));
    }
    let (ops, found) = finish_checks(&cluster, workload, locks, &AGENTS).await;
    anomalies.extend(found);
    report("gossip-partition", refused + ops, &anomalies, &[]);
    assert!(anomalies.is_empty(), "{anomalies:?}");
}
