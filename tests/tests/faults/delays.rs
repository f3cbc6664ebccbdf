//! Slow links: every packet delayed in user space (NFQUEUE, `tests/faults/nfq_delay.c`),
//! as this kernel has no `sch_netem`.

use super::*;

const EVERY_LINK: (u32, u32) = (50, 20);

/// 50 ± 20 ms on every link (Raft between members, agents' watch streams and writes,
/// gossip) under load on every agent and a lock passed around; the leader is killed ten
/// times under the delay, one failover sample each (kill to the first acknowledged write
/// invoked after it). Then 2 s on the one link from the leader to a follower. Histories
/// are checked, the lock's holders and tokens too.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Docker; run by .ci/run through tests/faults/run"]
async fn delayed_links_under_load() {
    if !docker_or_skip() {
        return;
    }
    let cluster = DockerCluster::up().await;
    let workload = Workload::start(&cluster, &AGENTS).await;
    let locks = LockChurn::start(&cluster, &["a1", "a2", "a3"], "a5").await;
    let seconds = 100;
    let delayed_at = Instant::now();
    let mut delayers = Vec::new();
    for name in CORES.iter().chain(AGENTS.iter()) {
        delayers.push(cluster.delay(name, None, 1, EVERY_LINK, seconds));
    }
    let mut failovers = Vec::new();
    for _ in 0..FAILOVERS {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (leader, failover) = kill_the_leader(&cluster, &workload).await;
        failovers.push(failover);
        cluster.start(leader);
        // A started container has a new network namespace: delay it again.
        let left = (seconds as u64).saturating_sub(delayed_at.elapsed().as_secs()) as u32;
        delayers.push(cluster.delay(leader, None, 1, EVERY_LINK, left.max(1)));
    }
    let (ops_delayed, recovered) = (workload.ops().await, failovers.len());
    println!("{ops_delayed} operations and {recovered} failovers under 50 ± 20 ms");
    for name in CORES.iter().chain(AGENTS.iter()) {
        cluster.heal(name);
    }
    for mut delayer in delayers {
        let _ = delayer.kill();
        let _ = delayer.wait();
    }
    // 2 s on one link: from the leader to one follower.
    let leader = leader_container(&cluster).await;
    let follower = CORES.iter().find(|c| **c != leader).expect("a follower");
    let mut slow = cluster.delay(leader, Some(follower), 2, (2000, 0), 15);
    tokio::time::sleep(Duration::from_secs(15)).await;
    let _ = slow.kill();
    let _ = slow.wait();
    cluster.heal(leader);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ops, anomalies) = finish_checks(&cluster, workload, locks, &AGENTS).await;
    report("delayed-links", ops, &anomalies, &failovers);
    assert!(anomalies.is_empty(), "{anomalies:?}");
}
