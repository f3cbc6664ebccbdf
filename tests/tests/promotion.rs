//! The freshest replica succeeds a dead master: replicas report their replication positions
//! to their agents, the agents to the core's leader, and when a master's host dies the
//! leader promotes the live replica with the highest position, whatever its priority; a
//! replica of priority 0 never becomes master. Real `corral` processes, SIGKILL.

use std::time::{Duration, Instant};

use corral_proto::api::{AgentRequest, ApiError, EventFilter, SubscriptionItem};
use corral_proto::event::Event;
use corral_proto::{AgentClient, ClientError, Subscription};
use corral_tests::Fleet;

const CONVERGE: Duration = Duration::from_secs(30);

/// Longer than an agent takes to send a changed position to the leader (100 ms) and than
/// its report interval (1 s).
const REPORTED: Duration = Duration::from_secs(3);

fn join(address: &str, priority: u32) -> AgentRequest {
    AgentRequest::JoinShard {
        shard: "M3".into(),
        address: address.into(),
        priority,
        detach: false,
    }
}

/// Waits (up to 20 s) for the next change of M3's master; answers it and when it came.
async fn next_master(events: &mut Subscription) -> (Option<String>, Instant) {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("a master change within 20 s")
            .expect("the subscription stays open");
        if let SubscriptionItem::Events(batch) = item {
            for event in batch.events {
                if let Event::MasterChanged { shard, master, .. } = event
                    && shard == "M3"
                {
                    return (master, Instant::now());
                }
            }
        }
    }
}

/// The `lookup_us` of every "positions attached" line in the core's logs.
fn attachments(fleet: &Fleet) -> Vec<u64> {
    fleet
        .core
        .logs()
        .lines()
        .filter(|line| line.contains("replication positions attached"))
        .filter_map(|line| {
            let at = line.find("lookup_us=")? + "lookup_us=".len();
            let digits: String = line[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_replica_furthest_ahead_succeeds_and_a_standby_never_does() {
    let root = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::start(root.path(), 4).await;
    let names = fleet.names();
    fleet.wait_for_members(&names, &names, CONVERGE).await;
    // a1 watches and holds the standby; a2 the master; a3 and a4 the slaves. Each
    // replica is registered on (and reported from) its own app's connection.
    let mut apps: Vec<(AgentClient, &str, u32, u64)> = Vec::new();
    for (agent, address, priority, position) in [
        ("a2", "10.0.0.2:6379", 30, 100),
        ("a3", "10.0.0.3:6379", 10, 250),
        ("a4", "10.0.0.4:6379", 20, 180),
        ("a1", "10.0.0.1:6379", 0, 999),
    ] {
        let app = fleet.client(agent).await;
        if apps.is_empty() {
            app.write(AgentRequest::CreateShard { name: "M3".into() })
                .await
                .unwrap();
        }
        app.write(join(address, priority)).await.unwrap();
        apps.push((app, address, priority, position));
    }
    let on_a1 = fleet.client("a1").await;
    let shard = on_a1.shard("M3").await.unwrap().unwrap();
    assert_eq!(shard.master.as_deref(), Some("10.0.0.2:6379"));

    // Only the session that registered a replica reports its position.
    let foreign = apps[1].0.report_position("M3", "10.0.0.2:6379", 1).await;
    assert!(
        matches!(foreign, Err(ClientError::Api(ApiError::BadRequest(_)))),
        "{foreign:?}"
    );
    for (app, address, _, position) in &apps {
        app.report_position("M3", address, *position).await.unwrap();
    }
    tokio::time::sleep(REPORTED).await;

    let mut events = on_a1
        .subscribe(
            EventFilter {
                shards: true,
                ..EventFilter::keys("none/")
            },
            None,
        )
        .await
        .unwrap();

    // a2's host dies: a3, at 250, succeeds although a4 (180) has the higher priority.
    let killed = Instant::now();
    fleet.kill_agent("a2");
    let (master, at) = next_master(&mut events).await;
    assert_eq!(master.as_deref(), Some("10.0.0.3:6379"));
    println!(
        "master's host killed: the replica at position 250 (priority 10) became master {:.3} s later, \
         over the one at 180 (priority 20)",
        (at - killed).as_secs_f64()
    );

    // a3's host dies: a4 succeeds; the standby, at 999, does not.
    let killed = Instant::now();
    fleet.kill_agent("a3");
    let (master, at) = next_master(&mut events).await;
    assert_eq!(master.as_deref(), Some("10.0.0.4:6379"));
    println!(
        "second master's host killed: the last eligible replica became master {:.3} s later",
        (at - killed).as_secs_f64()
    );

    // a4's host dies: only the standby is left, and M3 has no master.
    fleet.kill_agent("a4");
    let (master, _) = next_master(&mut events).await;
    assert_eq!(master, None);
    let shard = on_a1.shard("M3").await.unwrap().unwrap();
    assert_eq!(shard.replicas.len(), 1);
    assert_eq!(shard.master, None);

    // The leader attached positions to the two deaths that moved a master (the third
    // left no candidate), each in a lookup that adds no round trip.
    let lookups = attachments(&fleet);
    assert_eq!(lookups.len(), 2, "{lookups:?}");
    println!("positions looked up and attached in {lookups:?} µs");

    // The standby is made eligible: it takes the masterless shard at once.
    let standby = &apps[3].0;
    standby
        .write(AgentRequest::SetPriority {
            shard: "M3".into(),
            address: "10.0.0.1:6379".into(),
            priority: 5,
        })
        .await
        .unwrap();
    let shard = on_a1.shard("M3").await.unwrap().unwrap();
    assert_eq!(shard.master.as_deref(), Some("10.0.0.1:6379"));
}
