//! Agents feeding agents, as real processes beside a three-member core on loopback: the
//! feed tree forms from gossip, a feeder killed under load costs the agents it fed
//! nothing (no revision skipped or repeated, a prompt resume elsewhere), and a relay
//! answers nothing but a watch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use corral_agent::replica::relay::ALPN_RELAY;
use corral_net::rpc::{CoreRequest, WatchItem};
use corral_net::transport::TlsIdentity;
use corral_proto::api::{EventFilter, SubscriptionItem};
use corral_proto::{AgentClient, frame};
use corral_tests::{Fleet, wait_until};

const AGENTS: usize = 7;
const CONVERGE: Duration = Duration::from_secs(30);

/// A tree small enough for a test fleet: the core feeds one agent, which feeds two, which
/// feed the other four.
const TREE: [&str; 4] = ["--feed-top", "1", "--feed-fanout", "2"];

async fn fleet(root: &std::path::Path) -> Fleet {
    let fleet = Fleet::start_with(root, AGENTS, &TREE).await;
    let names = fleet.names();
    fleet.wait_for_members(&names, &names, CONVERGE).await;
    fleet
}

/// The feed of each agent of `names`, as its status says (a core member's address, or
/// `relay NAME`).
async fn feeds(fleet: &Fleet, names: &[String]) -> BTreeMap<String, Option<String>> {
    let mut feeds = BTreeMap::new();
    for name in names.iter().cloned() {
        let status = fleet.client(&name).await.status().await.unwrap();
        feeds.insert(name, status.feed);
    }
    feeds
}

/// The agents fed by relays, by relay.
fn children(feeds: &BTreeMap<String, Option<String>>) -> BTreeMap<String, Vec<String>> {
    let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, feed) in feeds {
        if let Some(relay) = feed.as_deref().and_then(|f| f.strip_prefix("relay ")) {
            children
                .entry(relay.to_string())
                .or_default()
                .push(name.clone());
        }
    }
    children
}

/// Waits until every agent but the one the core feeds is fed by another agent.
async fn tree_formed(fleet: &Fleet) -> BTreeMap<String, Option<String>> {
    wait_until(CONVERGE, "the feed tree to form", || async {
        let feeds = feeds(fleet, &fleet.names()).await;
        let relayed = feeds
            .values()
            .filter(|f| f.as_deref().is_some_and(|f| f.starts_with("relay ")))
            .count();
        (relayed == AGENTS - 1).then_some(feeds)
    })
    .await
}

/// SIGKILL of an agent that feeds others, under a write load: every other agent's event
/// stream goes on with no revision skipped or repeated, and the agents it fed resume
/// from another feeder (the longest pause each saw is printed).
#[tokio::test(flavor = "multi_thread")]
async fn a_feeder_killed_under_load_costs_the_agents_it_fed_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mut fleet = fleet(root.path()).await;
    let before = tree_formed(&fleet).await;
    let tree = children(&before);
    // The relay with the most agents below it that the core does not feed itself.
    let (victim, orphans) = tree
        .iter()
        .filter(|(relay, _)| {
            before[*relay]
                .as_deref()
                .is_some_and(|f| f.starts_with("relay "))
        })
        .max_by_key(|(_, fed)| fed.len())
        .map(|(relay, fed)| (relay.clone(), fed.clone()))
        .expect("a relay fed by a relay");
    eprintln!("feed tree: {tree:?}; killing {victim}, which feeds {orphans:?}");

    let mut filter = EventFilter::everything();
    filter.members = false;
    let mut subscribers = Vec::new();
    for name in fleet.names().into_iter().filter(|n| *n != victim) {
        let client = fleet.client(&name).await;
        let mut subscription = client.subscribe(filter.clone(), None).await.unwrap();
        let start = subscription.revision;
        subscribers.push(tokio::spawn(async move {
            let mut seen = vec![(Instant::now(), start)];
            while let Ok(Some(item)) =
                tokio::time::timeout(Duration::from_secs(3), subscription.next()).await
            {
                match item {
                    SubscriptionItem::Events(batch) => seen.push((Instant::now(), batch.revision)),
                    other => panic!("{name}: unexpected {other:?}"),
                }
            }
            (name, seen, client)
        }));
    }
    let writer_name = fleet
        .names()
        .into_iter()
        .find(|n| *n != victim && !orphans.contains(n))
        .unwrap();
    let writer = fleet.client(&writer_name).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                writer
                    .put(&format!("load/{}", i % 50), &i.to_le_bytes())
                    .await
                    .unwrap();
                i += 1;
                // About 500 writes a second: every pause in a stream shows.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            i
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    fleet.kill_agent(&victim);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stopped = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let written = load.await.unwrap();
    eprintln!("{written} writes");
    for subscriber in subscribers {
        let (name, seen, _) = subscriber.await.unwrap();
        assert!(seen.len() > 500, "{name} saw too little: {}", seen.len());
        for pair in seen.windows(2) {
            assert_eq!(
                pair[1].1,
                pair[0].1 + 1,
                "{name} skipped or repeated: {:?} then {:?}",
                pair[0].1,
                pair[1].1
            );
        }
        // The longest wait between two revisions from the kill to the end of the load
        // (what the core commits after it, such as the dead agent's session ending, comes
        // at its own pace).
        let pause = seen
            .windows(2)
            .filter(|pair| pair[1].0 > killed && pair[1].0 < stopped)
            .map(|pair| pair[1].0 - pair[0].0.max(killed))
            .max()
            .unwrap();
        if orphans.contains(&name) {
            eprintln!("{name}, fed by {victim}, resumed after a pause of {pause:?} at most");
            assert!(
                pause < Duration::from_secs(3),
                "{name} waited {pause:?} for its feed"
            );
        } else {
            eprintln!("{name}: longest pause {pause:?}");
        }
    }
    let survivors: Vec<String> = fleet.names().into_iter().filter(|n| *n != victim).collect();
    let after = feeds(&fleet, &survivors).await;
    for orphan in &orphans {
        assert_ne!(
            after[orphan].as_deref(),
            Some(format!("relay {victim}").as_str()),
            "{orphan} still follows the dead relay"
        );
    }
}

/// A relay serves a watch (a snapshot first, when asked from nothing) and nothing else:
/// another request or bytes that are not a request get the stream reset, and the relay
/// goes on serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_relay_serves_watches_and_refuses_everything_else() {
    let root = tempfile::tempdir().unwrap();
    let fleet = fleet(root.path()).await;
    let writer = fleet.client("a1").await;
    writer.put("relayed/key", b"value").await.unwrap();
    let relay = fleet.agent("a2").gossip.parse().unwrap();
    let identity = TlsIdentity::load(&fleet.core.pki.dir, "a3").unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(
        identity.client_config_any_member(&[ALPN_RELAY]).unwrap(),
    )
    .unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connection = endpoint
        .connect_with(quinn::ClientConfig::new(Arc::new(crypto)), relay, "member")
        .unwrap()
        .await
        .unwrap();

    // Not a watch, then not a request at all: each refused. (A relay serves one stream at
    // a time per connection: each refused stream must be over before the next opens.)
    let status = frame::encode(&CoreRequest::Status).unwrap();
    for request in [&status[..], &[0, 0, 0, 3, 9, 9, 9][..]] {
        let (mut send, mut receive) = connection.open_bi().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut send, request)
            .await
            .unwrap();
        assert!(
            frame::read_frame::<_, WatchItem>(&mut receive, 1 << 20)
                .await
                .is_err()
        );
    }

    // A watch from nothing: the whole state, then progress.
    let (mut send, mut receive) = connection.open_bi().await.unwrap();
    frame::write_frame(&mut send, &CoreRequest::Watch { after: None })
        .await
        .unwrap();
    let mut snapshot = Vec::new();
    let revision = loop {
        match frame::read_frame::<_, WatchItem>(&mut receive, 4 << 20)
            .await
            .unwrap()
            .unwrap()
        {
            WatchItem::SnapshotChunk {
                revision,
                bytes,
                last,
            } => {
                snapshot.extend_from_slice(&bytes);
                if last {
                    break revision;
                }
            }
            other => panic!("a snapshot first, not {other:?}"),
        }
    };
    let state = corral_state::StateMachine::from_snapshot_bytes(&snapshot).unwrap();
    assert_eq!(state.revision(), revision);
    assert_eq!(state.get("relayed/key").unwrap().value, b"value");
    let next = tokio::time::timeout(
        Duration::from_secs(2),
        frame::read_frame::<_, WatchItem>(&mut receive, 4 << 20),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert!(
        matches!(next, WatchItem::Progress { revision: r, .. } if r >= revision)
            || matches!(next, WatchItem::Entry { revision: r, .. } if r == revision + 1),
        "{next:?}"
    );
    // The agent is still well.
    let status: corral_proto::api::AgentStatus = AgentClient::connect(&fleet.agent("a2").socket)
        .await
        .unwrap()
        .status()
        .await
        .unwrap();
    assert!(status.revision >= revision);
}

/// An agent that joins a fleet whose tree has formed takes its first snapshot from
/// another agent, not from the core, and the core feeds it nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_joining_agent_takes_its_snapshot_from_a_peer() {
    let root = tempfile::tempdir().unwrap();
    let mut fleet = fleet(root.path()).await;
    tree_formed(&fleet).await;
    let writer = fleet.client("a1").await;
    for i in 0..200u32 {
        writer
            .put(&format!("before/{i}"), &i.to_le_bytes())
            .await
            .unwrap();
    }
    fleet.add_agent("a8");
    let client = fleet.client("a8").await;
    let status = wait_until(CONVERGE, "a8 to hold the state", || {
        let client = client.clone();
        async move {
            let status = client.status().await.ok()?;
            (status.revision > 200).then_some(status)
        }
    })
    .await;
    let log = fleet.agent("a8").log_text();
    let first_feed = log
        .lines()
        .find(|l| l.contains("replica feed connected"))
        .expect("a feed line in the log");
    assert!(
        first_feed.contains("to a relay") && first_feed.contains("after=None"),
        "the first feed of a8 was not a snapshot from a relay: {first_feed}"
    );
    assert!(
        status
            .feed
            .as_deref()
            .is_some_and(|f| f.starts_with("relay ")),
        "{:?}",
        status.feed
    );
    assert_eq!(
        client.get("before/199").await.unwrap().unwrap().value,
        199u32.to_le_bytes()
    );
}
