//! Agents restarted, and an agent that never comes back.

use super::*;

/// Shards `S1`..`S3` with a replica on every agent (held by the agents for their apps,
/// `detach`), and a lock `held` held the same way on a2 (the lock churn passes `L` around).
async fn hold_shards_and_a_lock(cluster: &DockerCluster) {
    let first = cluster.client("a1").await;
    for shard in ["S1", "S2", "S3"] {
        first
            .write(AgentRequest::CreateShard { name: shard.into() })
            .await
            .unwrap();
        for (i, agent) in AGENTS.iter().enumerate() {
            cluster
                .client(agent)
                .await
                .write(AgentRequest::JoinShard {
                    shard: shard.into(),
                    address: format!("{}:9000", cluster.ip(agent)),
                    priority: 10 + i as u32,
                    detach: true,
                })
                .await
                .unwrap();
        }
    }
    cluster
        .client("a2")
        .await
        .write(AgentRequest::AcquireLock {
            name: "held".into(),
            wait_ms: 0,
            detach: true,
        })
        .await
        .unwrap();
}

/// The shards and the lock, as a consistent read on `agent` shows them.
async fn holdings(cluster: &DockerCluster, agent: &str) -> (Vec<Shard>, Option<Lock>) {
    let client = cluster.client(agent).await;
    let mut shards = Vec::new();
    for shard in ["S1", "S2", "S3"] {
        let read = wait_until(Duration::from_secs(30), "a consistent shard read", || {
            let client = client.clone();
            async move { client.read(Query::Shard(shard.into()), true).await.ok() }
        })
        .await;
        if let QueryResult::Shard(Some(shard)) = read.result {
            shards.push(shard);
        }
    }
    (shards, client.lock("held").await.unwrap())
}

/// Waits until `agent` serves again with node session `session`; answers when.
async fn serving_with(cluster: &DockerCluster, agent: &str, session: Option<u64>) -> Instant {
    let socket = cluster.socket(agent);
    wait_until(Duration::from_secs(60), "the restarted agent", || {
        let socket = socket.clone();
        async move {
            let client = AgentClient::connect(&socket).await.ok()?;
            let status = client.status().await.ok()?;
            (status.node_session.is_some() && status.node_session == session).then_some(())
        }
    })
    .await;
    Instant::now()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Docker; run by .ci/run through tests/faults/run"]
async fn every_agent_restarted_in_turn_under_load() {
    if !docker_or_skip() {
        return;
    }
    let cluster = DockerCluster::up().await;
    hold_shards_and_a_lock(&cluster).await;
    let before = holdings(&cluster, "a1").await;
    let mut sessions = Vec::new();
    for agent in AGENTS {
        sessions.push(
            cluster
                .client(agent)
                .await
                .status()
                .await
                .unwrap()
                .node_session,
        );
    }
    let workload = Workload::start(&cluster, &AGENTS).await;
    let locks = LockChurn::start(&cluster, &["a1", "a2", "a3"], "a5").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Time from the stop to the agent serving again under its old node session.
    let mut restarts = Vec::new();
    for verb in ["stop", "kill"] {
        for (agent, session) in AGENTS.iter().zip(&sessions) {
            let stopped = Instant::now();
            cluster.docker(verb, agent);
            cluster.start(agent);
            let back = serving_with(&cluster, agent, *session).await;
            restarts.push(back.duration_since(stopped).as_millis());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ops, mut anomalies) = finish_checks(&cluster, workload, locks, &AGENTS).await;
    let after = holdings(&cluster, "a1").await;
    if after != before {
        anomalies.push(format!(
            "the restarts changed what the hosts hold: before {before:?}, after {after:?}"
        ));
    }
    println!("agent restarts (stop, then kill; ms to serving again): {restarts:?}");
    report("rolling-agent-restart", ops, &anomalies, &[]);
    assert!(anomalies.is_empty(), "{anomalies:?}");
}

/// Ten shards whose preferred replica is on a5; a5 is killed and never comes back: the
/// core holds its session for the node grace, then every shard fails over. Each shard's
/// failover is one sample, from the kill to a consistent read on a1 showing a new master.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Docker; run by .ci/run through tests/faults/run"]
async fn an_agent_that_never_comes_back_is_released_after_the_grace() {
    if !docker_or_skip() {
        return;
    }
    let cluster = DockerCluster::up().await;
    let shards: Vec<String> = (1..=10).map(|i| format!("F{i}")).collect();
    let on_a1 = cluster.client("a1").await;
    for shard in &shards {
        on_a1
            .write(AgentRequest::CreateShard {
                name: shard.clone(),
            })
            .await
            .unwrap();
        for (agent, priority) in [("a5", 50), ("a1", 10), ("a2", 20)] {
            cluster
                .client(agent)
                .await
                .write(AgentRequest::JoinShard {
                    shard: shard.clone(),
                    address: format!("{}:9000", cluster.ip(agent)),
                    priority,
                    detach: true,
                })
                .await
                .unwrap();
        }
    }
    let survivors = ["a1", "a2", "a3", "a4"];
    let workload = Workload::start(&cluster, &survivors).await;
    // a5 may hold the lock when it dies: it is free again after the grace.
    let locks = LockChurn::start(&cluster, &["a1", "a2", "a5"], "a4").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a5_master = format!("{}:9000", cluster.ip("a5"));
    let mut anomalies = Vec::new();
    for shard in &shards {
        let master = on_a1.shard(shard).await.unwrap().and_then(|s| s.master);
        if master.as_deref() != Some(a5_master.as_str()) {
            anomalies.push(format!(
                "{shard}: master {master:?} before the kill, not a5"
            ));
        }
    }
    cluster.kill("a5");
    let killed = Instant::now();
    let mut failovers = vec![None; shards.len()];
    while failovers.iter().any(Option::is_none) && killed.elapsed() < Duration::from_secs(60) {
        for (shard, failover) in shards.iter().zip(failovers.iter_mut()) {
            if failover.is_none()
                && let Ok(read) = on_a1.read(Query::Shard(shard.clone()), true).await
                && let QueryResult::Shard(Some(s)) = read.result
                && s.master.is_some()
                && s.master.as_deref() != Some(a5_master.as_str())
            {
                *failover = Some(killed.elapsed().as_millis());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failovers: Vec<u128> = failovers.into_iter().flatten().collect();
    if failovers.len() != shards.len() {
        anomalies.push(format!(
            "{} of {} shards failed over within 60 s",
            failovers.len(),
            shards.len()
        ));
    }
    let (ops, found) = finish_checks(&cluster, workload, locks, &survivors).await;
    anomalies.extend(found);
    cluster.start("a5");
    report("agent-never-back", ops, &anomalies, &failovers);
    assert!(anomalies.is_empty(), "{anomalies:?}");
}
