//! Agents as real processes beside a three-member core on loopback: gossip membership and
//! failure detection, failover seen by subscribers, session-bound locks, event streams
//! across a core leader kill, read-your-writes, and refusal of bad socket frames and of
//! gossip from peers without a matching certificate.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use corral_agent::gossip::transport::ALPN_GOSSIP;
use corral_agent::gossip::{GossipConfig, GossipEffect, GossipEngine, GossipInput, NodeIdentity};
use corral_net::transport::TlsIdentity;
use corral_proto::api::{
    AgentFrame, AgentRequest, ApiError, EventFilter, MemberState, Query, QueryResult,
    SubscriptionItem,
};
use corral_proto::{AgentClient, Answer, Event, frame};
use corral_tests::{Fleet, Pki, wait_until};
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AGENTS: usize = 5;
const CONVERGE: Duration = Duration::from_secs(30);

async fn fleet(root: &std::path::Path) -> Fleet {
    let fleet = Fleet::start(root, AGENTS).await;
    let names = fleet.names();
    fleet.wait_for_members(&names, &names, CONVERGE).await;
    fleet
}

/// Polls every agent in `observers` until each sees `target` in `state`; returns the
/// time each took, from `since`.
async fn time_until_everyone_sees(
    fleet: &Fleet,
    observers: &[String],
    target: &str,
    state: MemberState,
    since: Instant,
    timeout: Duration,
) -> BTreeMap<String, Duration> {
    let mut tasks = Vec::new();
    for observer in observers {
        let client = fleet.client(observer).await;
        let target = target.to_string();
        let observer = observer.clone();
        tasks.push(tokio::spawn(async move {
            let deadline = since + timeout;
            while Instant::now() < deadline {
                if let Ok(members) = client.members().await
                    && members.iter().any(|m| m.name == target && m.state == state)
                {
                    return (observer, Some(since.elapsed()));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (observer, None)
        }));
    }
    let mut times = BTreeMap::new();
    for task in tasks {
        let (observer, took) = task.await.unwrap();
        let took = took.unwrap_or_else(|| {
            panic!("{observer} did not see {target} {state:?} within {timeout:?}")
        });
        times.insert(observer, took);
    }
    times
}

/// Membership converges: every agent sees all five alive, each with a node session.
#[tokio::test(flavor = "multi_thread")]
async fn membership_converges_with_a_node_session_per_agent() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), AGENTS).await;
    let names = fleet.names();
    let took = fleet.wait_for_members(&names, &names, CONVERGE).await;
    eprintln!("membership converged in {took:?}");
    let status = fleet.client("a3").await.status().await.unwrap();
    assert_eq!(status.members_alive, AGENTS);
    assert!(status.node_session.is_some());
    assert!(status.age_ms.is_some_and(|age| age < 2000), "{status:?}");
}

/// A SIGKILLed agent is declared dead by every other agent within 5 s (default
/// settings), and the core closes its node session once it stayed silent for the node
/// grace (5 s from its last beat): a host that does not come back is released.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_agent_is_seen_dead_everywhere_within_five_seconds() {
    let root = tempfile::tempdir().unwrap();
    let mut fleet = fleet(root.path()).await;
    let killed = Instant::now();
    fleet.kill_agent("a5");
    let observers: Vec<String> = fleet.names().into_iter().filter(|n| n != "a5").collect();
    let times = time_until_everyone_sees(
        &fleet,
        &observers,
        "a5",
        MemberState::Down,
        killed,
        Duration::from_secs(5),
    )
    .await;
    eprintln!("SIGKILL seen dead after {times:?}");
    // The core closed the dead node's session, and every replica shows it.
    let client = fleet.client("a1").await;
    wait_until(Duration::from_secs(5), "a5's session to close", || {
        let client = client.clone();
        async move {
            let members = client.members().await.ok()?;
            members
                .iter()
                .any(|m| m.name == "a5" && m.session.is_none())
                .then_some(())
        }
    })
    .await;
    eprintln!(
        "a5's node session released {:?} after the kill",
        killed.elapsed()
    );
}

/// A pause of one second (below the 1.5 s suspicion timeout) is not a death; a long
/// freeze (SIGSTOP) is seen dead by every other agent within 5 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_agent_is_declared_dead_but_a_short_pause_is_not() {
    let root = tempfile::tempdir().unwrap();
    let fleet = fleet(root.path()).await;
    let watcher = fleet.client("a1").await;
    let mut members = watcher
        .subscribe(
            EventFilter {
                members: true,
                ..EventFilter::keys("none/")
            },
            None,
        )
        .await
        .unwrap();
    let before = watcher.members().await.unwrap();
    let incarnation = |members: &[corral_proto::api::MemberInfo]| {
        members
            .iter()
            .find(|m| m.name == "a4")
            .map(|m| (m.incarnation, m.session))
    };
    for _ in 0..3 {
        fleet.signal_agent("a4", Signal::SIGSTOP);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        fleet.signal_agent("a4", Signal::SIGCONT);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    while let Ok(Some(item)) =
        tokio::time::timeout(Duration::from_millis(100), members.next()).await
    {
        if let SubscriptionItem::Member(m) = item {
            assert!(
                !(m.name == "a4" && m.state == MemberState::Down),
                "a short pause was taken for a death: {m:?}"
            );
        }
    }
    let after = watcher.members().await.unwrap();
    assert_eq!(incarnation(&before), incarnation(&after));

    let frozen = Instant::now();
    fleet.signal_agent("a4", Signal::SIGSTOP);
    let observers: Vec<String> = fleet.names().into_iter().filter(|n| n != "a4").collect();
    let times = time_until_everyone_sees(
        &fleet,
        &observers,
        "a4",
        MemberState::Down,
        frozen,
        Duration::from_secs(5),
    )
    .await;
    eprintln!("SIGSTOP seen dead after {times:?}");
    // Thawed, it comes back as a new incarnation with a new node session.
    fleet.signal_agent("a4", Signal::SIGCONT);
    let old = incarnation(&after).unwrap().0;
    wait_until(Duration::from_secs(15), "a4 to return as new", || {
        let watcher = watcher.clone();
        async move {
            let members = watcher.members().await.ok()?;
            members
                .iter()
                .any(|m| {
                    m.name == "a4"
                        && m.incarnation > old
                        && m.state == MemberState::Alive
                        && m.session.is_some()
                })
                .then_some(())
        }
    })
    .await;
}

/// When the host of a shard's master dies, a subscriber on another agent receives the
/// master change, with a higher epoch, naming the surviving replica.
#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_elsewhere_sees_the_new_master_when_the_masters_host_dies() {
    let root = tempfile::tempdir().unwrap();
    let mut fleet = fleet(root.path()).await;
    let on_a2 = fleet.client("a2").await;
    let on_a3 = fleet.client("a3").await;
    on_a2
        .write(AgentRequest::CreateShard { name: "m3".into() })
        .await
        .unwrap();
    let join = |address: &str, priority| AgentRequest::JoinShard {
        shard: "m3".into(),
        address: address.into(),
        priority,
        detach: false,
    };
    on_a2.write(join("10.0.0.2:6379", 2)).await.unwrap();
    on_a3.write(join("10.0.0.3:6379", 1)).await.unwrap();
    let shard = on_a2.shard("m3").await.unwrap().unwrap();
    assert_eq!(shard.master.as_deref(), Some("10.0.0.2:6379"));
    let epoch = shard.epoch;

    let subscriber = fleet.client("a1").await;
    let mut events = subscriber
        .subscribe(
            EventFilter {
                shards: true,
                ..EventFilter::keys("none/")
            },
            None,
        )
        .await
        .unwrap();
    let killed = Instant::now();
    fleet.kill_agent("a2");
    let (master, new_epoch) = loop {
        let item = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("a master change within 10 s")
            .expect("the subscription stays open");
        if let SubscriptionItem::Events(batch) = item {
            let change = batch.events.iter().find_map(|e| match e {
                Event::MasterChanged {
                    shard,
                    master,
                    epoch,
                    ..
                } if shard == "m3" => Some((master.clone(), *epoch)),
                _ => None,
            });
            if let Some(change) = change {
                break change;
            }
        }
    };
    eprintln!(
        "master change seen on a1 {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(master.as_deref(), Some("10.0.0.3:6379"));
    assert!(new_epoch > epoch);
    drop(on_a2);
}

/// When an app's connection closes, its lock passes to the next waiter at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_lock_passes_to_the_next_waiter_when_the_holders_connection_closes() {
    let root = tempfile::tempdir().unwrap();
    let fleet = fleet(root.path()).await;
    let holder = fleet.client("a1").await;
    let grant = holder.acquire_lock("jobs", 0).await.unwrap();
    let waiter = fleet.client("a2").await;
    let waiting = tokio::spawn(async move {
        let result = waiter.acquire_lock("jobs", 20_000).await;
        (result, Instant::now(), waiter)
    });
    // The waiter is queued behind the holder.
    wait_until(Duration::from_secs(5), "the waiter to queue", || {
        let holder = holder.clone();
        async move {
            let lock = holder.lock("jobs").await.ok()??;
            (lock.waiters.len() == 1).then_some(())
        }
    })
    .await;
    let closed = Instant::now();
    drop(holder);
    let (result, granted_at, _waiter) = waiting.await.unwrap();
    let second = result.unwrap();
    let took = granted_at - closed;
    eprintln!("lock passed on {took:?} after the holder's connection closed");
    assert!(second.token > grant.token);
    assert_ne!(second.session, grant.session);
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

/// Killing the core leader under a write load makes no agent's event stream skip or
/// repeat a revision.
#[tokio::test(flavor = "multi_thread")]
async fn no_event_stream_skips_or_repeats_a_revision_when_the_core_leader_dies() {
    let root = tempfile::tempdir().unwrap();
    let mut fleet = fleet(root.path()).await;
    let mut filter = EventFilter::everything();
    filter.members = false;
    let mut subscribers = Vec::new();
    for name in fleet.names() {
        let client = fleet.client(&name).await;
        let mut subscription = client.subscribe(filter.clone(), None).await.unwrap();
        let start = subscription.revision;
        subscribers.push(tokio::spawn(async move {
            let mut revisions = vec![start];
            while let Ok(Some(item)) =
                tokio::time::timeout(Duration::from_secs(10), subscription.next()).await
            {
                match item {
                    SubscriptionItem::Events(batch) => revisions.push(batch.revision),
                    other => panic!("{name}: unexpected {other:?}"),
                }
            }
            (name, revisions, client)
        }));
    }
    let writer = fleet.client("a1").await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Outcome-unknown errors around the kill are fine: only streams are checked.
                let _ = writer
                    .put(&format!("load/{}", i % 50), &i.to_le_bytes())
                    .await;
                i += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = fleet.core.wait_for_leader(Duration::from_secs(5)).await;
    fleet.core.kill(leader);
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    for subscriber in subscribers {
        let (name, revisions, _) = subscriber.await.unwrap();
        assert!(
            revisions.len() > 50,
            "{name} saw too little: {}",
            revisions.len()
        );
        for pair in revisions.windows(2) {
            assert_eq!(pair[1], pair[0] + 1, "{name} skipped or repeated: {pair:?}");
        }
    }
}

/// A write followed by a read on the same connection always sees the write, on every
/// agent.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_always_reads_its_own_writes() {
    let root = tempfile::tempdir().unwrap();
    let fleet = fleet(root.path()).await;
    let mut tasks = Vec::new();
    for name in fleet.names() {
        let client = fleet.client(&name).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..100u32 {
                let key = format!("ryw/{name}");
                client.put(&key, &i.to_le_bytes()).await.unwrap();
                let value = client.get(&key).await.unwrap().expect("just written");
                assert_eq!(value.value, i.to_le_bytes(), "{name} read a stale value");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

async fn expect_error_then_close(stream: &mut tokio::net::UnixStream) {
    let reply: Option<AgentFrame> = tokio::time::timeout(
        Duration::from_secs(5),
        frame::read_frame(stream, corral_proto::limits::FRAME_LEN_MAX),
    )
    .await
    .expect("an answer in time")
    .expect("a well-formed error frame");
    match reply {
        Some(AgentFrame::Reply {
            result: Err(ApiError::BadRequest(_)),
            ..
        }) => {}
        other => panic!("expected a bad-request error, got {other:?}"),
    }
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("the agent closes the connection");
    assert!(read.is_ok() && rest.is_empty());
}

/// Garbage, oversized and half frames on the socket get an error and a disconnect; the
/// agent and its other clients carry on.
#[tokio::test(flavor = "multi_thread")]
async fn bad_frames_on_the_socket_get_an_error_and_a_disconnect() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 1).await;
    let bystander = fleet.client("a1").await;
    bystander.put("before", b"1").await.unwrap();
    let socket = fleet.agent("a1").socket.clone();

    // Garbage body under a valid length.
    let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let mut garbage = 40u32.to_be_bytes().to_vec();
    garbage.extend([0xffu8; 40]);
    stream.write_all(&garbage).await.unwrap();
    expect_error_then_close(&mut stream).await;

    // An oversized length is refused before any body is read.
    let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    stream.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    expect_error_then_close(&mut stream).await;

    // A wrong version byte.
    let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let mut bytes = frame::encode(&corral_proto::api::ClientFrame {
        id: 1,
        request: AgentRequest::Status,
    })
    .unwrap();
    bytes[4] = 99;
    stream.write_all(&bytes).await.unwrap();
    expect_error_then_close(&mut stream).await;

    // Half a frame, then the writer goes away.
    let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    stream.write_all(&bytes[..6]).await.unwrap();
    stream.shutdown().await.unwrap();
    drop(stream);

    // The bystander's connection and new connections still work.
    assert_eq!(bystander.get("before").await.unwrap().unwrap().value, b"1");
    let fresh = fleet.client("a1").await;
    fresh.put("after", b"2").await.unwrap();
    assert!(matches!(
        fresh
            .read(Query::Key("after".into()), true)
            .await
            .unwrap()
            .result,
        QueryResult::Key(Some(_))
    ));
}

/// A gossip packet from a member `name` at `address`, as foca would send it to `to`.
fn announce_packet(name: &str, address: std::net::SocketAddr, to: std::net::SocketAddr) -> Vec<u8> {
    let identity = NodeIdentity {
        name: name.into(),
        address,
        incarnation: 1,
    };
    let mut engine = GossipEngine::new(identity, &GossipConfig::default(), 7);
    engine
        .handle(GossipInput::Announce(to))
        .unwrap()
        .into_iter()
        .find_map(|effect| match effect {
            GossipEffect::Send { data, .. } => Some(data),
            _ => None,
        })
        .expect("an announce is sent")
}

async fn gossip_connection(
    tls_dir: &std::path::Path,
    name: &str,
    to: std::net::SocketAddr,
) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    let identity = TlsIdentity::load(tls_dir, name).map_err(|e| e.to_string())?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(
        identity.client_config_any_member(&[ALPN_GOSSIP]).unwrap(),
    )
    .unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let config = quinn::ClientConfig::new(Arc::new(crypto));
    let connecting = endpoint
        .connect_with(config, to, "member")
        .map_err(|e| e.to_string())?;
    let connection = tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok((endpoint, connection))
}

/// Gossip from a peer without a valid certificate never reaches foca: a foreign CA's
/// certificate fails the handshake, and a packet claiming another member's name than its
/// certificate's is dropped (counted), while a truthful one is accepted.
#[tokio::test(flavor = "multi_thread")]
async fn gossip_without_a_matching_certificate_never_reaches_foca() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 2).await;
    let names = fleet.names();
    fleet.wait_for_members(&names, &names, CONVERGE).await;
    let target: std::net::SocketAddr = fleet.agent("a1").gossip.parse().unwrap();
    let client = fleet.client("a1").await;

    // A certificate from another CA: no connection at all.
    let foreign = Pki::new(&root.path().join("foreign"), &["a2"]);
    let refused = gossip_connection(&foreign.dir, "a2", target).await;
    assert!(refused.is_err(), "a foreign certificate was accepted");
    // Handshake failures may surface on first use: a datagram must not get through.
    let rejected_before = client.status().await.unwrap().gossip_rejected;

    // A valid certificate for "intruder" claiming to be "a2": dropped before foca.
    fleet.core.pki.issue("intruder");
    let (_endpoint, connection) = gossip_connection(&fleet.core.pki.dir, "intruder", target)
        .await
        .unwrap();
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    let lie = announce_packet("a2", local, target);
    for _ in 0..5 {
        connection.send_datagram(lie.clone().into()).unwrap();
    }
    wait_until(Duration::from_secs(5), "the lie to be counted", || {
        let client = client.clone();
        async move {
            let status = client.status().await.ok()?;
            (status.gossip_rejected >= rejected_before + 5).then_some(())
        }
    })
    .await;
    let members = client.members().await.unwrap();
    assert!(
        !members.iter().any(|m| m.address == local.to_string()),
        "a forged identity reached foca: {members:?}"
    );

    // The same peer telling the truth is heard: the check is what dropped the lie.
    let truth = announce_packet("intruder", local, target);
    connection.send_datagram(truth.into()).unwrap();
    wait_until(
        Duration::from_secs(5),
        "the truthful packet to be heard",
        || {
            let client = client.clone();
            async move {
                let members = client.members().await.ok()?;
                members.iter().any(|m| m.name == "intruder").then_some(())
            }
        },
    )
    .await;
}

/// Everything the socket API serves round-trips through the Rust client: keys with CAS,
/// prefix lists, services, and answers that carry revision and age.
#[tokio::test(flavor = "multi_thread")]
async fn the_socket_api_serves_keys_services_and_conflicts() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 1).await;
    let client: AgentClient = fleet.client("a1").await;
    let cas = |version, value: &str| AgentRequest::CompareAndSet {
        key: "config/x".into(),
        version,
        value: value.as_bytes().to_vec(),
        ephemeral: false,
    };
    client.write(cas(0, "one")).await.unwrap();
    let conflict = client.write(cas(0, "two")).await.unwrap_err();
    assert!(
        matches!(conflict.api(), Some(ApiError::Conflict { version: 1, .. })),
        "{conflict:?}"
    );
    client.write(cas(1, "two")).await.unwrap();
    let reply = client
        .read(
            Query::Prefix {
                prefix: "config/".into(),
                limit: 10,
            },
            false,
        )
        .await
        .unwrap();
    assert!(reply.age_ms.is_some());
    let QueryResult::Keys { keys, more } = reply.result else {
        panic!("keys expected")
    };
    assert_eq!(keys.len(), 1);
    assert!(!more);
    assert_eq!(keys[0].value, b"two");

    let register = AgentRequest::RegisterService {
        service: "web".into(),
        id: "w1".into(),
        address: "10.0.0.9".into(),
        port: 80,
        tags: vec!["blue".into()],
        detach: false,
    };
    let (_, answer) = client.write(register).await.unwrap();
    assert_eq!(answer, Answer::ServiceRegistered);
    let other = fleet.client("a1").await;
    assert_eq!(other.service("web").await.unwrap().len(), 1);
    drop(client);
    wait_until(
        Duration::from_secs(5),
        "the instance to go with its connection",
        || {
            let other = other.clone();
            async move { other.service("web").await.ok()?.is_empty().then_some(()) }
        },
    )
    .await;
}

/// The shard map beside an agent's socket follows a failover without asking the agent,
/// and is refused as stale once its agent is frozen.
#[tokio::test(flavor = "multi_thread")]
async fn the_shard_map_follows_failover_and_goes_stale_with_its_agent() {
    use corral_proto::{ShardMap, ShardMapError};
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 3).await;
    let names = fleet.names();
    fleet.wait_for_members(&names, &names, CONVERGE).await;
    let on_a2 = fleet.client("a2").await;
    let on_a3 = fleet.client("a3").await;
    on_a2
        .write(AgentRequest::CreateShard { name: "m7".into() })
        .await
        .unwrap();
    for (client, address, priority) in [(&on_a2, "10.0.0.2:1", 2), (&on_a3, "10.0.0.3:1", 1)] {
        client
            .write(AgentRequest::JoinShard {
                shard: "m7".into(),
                address: address.into(),
                priority,
                detach: false,
            })
            .await
            .unwrap();
    }
    let mut map = ShardMap::for_socket(&fleet.agent("a1").socket);
    // Waits until a1's map shows `expected` as master with `replicas` replicas.
    let master_becomes = |map: &mut ShardMap, expected: &str, replicas: usize| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let shard = map.shard("m7");
            if let Ok(Some(s)) = &shard
                && s.master.as_deref() == Some(expected)
                && s.replicas.len() == replicas
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "a1's shard map still says {shard:?}, not {expected} of {replicas}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    master_becomes(&mut map, "10.0.0.2:1", 2);

    // The master's app exits: its connection closes and a3's replica takes over.
    drop(on_a2);
    let closed = Instant::now();
    master_becomes(&mut map, "10.0.0.3:1", 1);
    eprintln!(
        "a1's shard map showed the new master {:?} after the close",
        closed.elapsed()
    );

    // A frozen agent stops refreshing its map: lookups fail instead of serving it.
    fleet.signal_agent("a1", Signal::SIGSTOP);
    let frozen = Instant::now();
    let stale = loop {
        match map.master("m7") {
            Err(ShardMapError::Stale { age_ms, .. }) => break age_ms,
            Ok(_) => {}
            Err(other) => panic!("expected a stale map, got {other}"),
        }
        assert!(
            frozen.elapsed() < Duration::from_secs(6),
            "the map of a frozen agent was still served after 6 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    fleet.signal_agent("a1", Signal::SIGCONT);
    assert!(stale > 3000, "refused at {stale} ms old");
    drop(on_a3);
}

/// Many apps writing through one agent at once: their writes travel to the core in
/// batches, yet every app gets its own answer, every write lands once, and each revision
/// belongs to exactly one write.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writes_through_one_agent_each_get_their_own_answer() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 1).await;
    let mut clients = Vec::new();
    for _ in 0..32 {
        clients.push(fleet.client("a1").await);
    }
    let writers = clients.into_iter().enumerate().map(|(i, client)| {
        tokio::spawn(async move {
            let mut revisions = Vec::new();
            for round in 0..20 {
                let value = format!("{i}/{round}");
                revisions.push(
                    client
                        .put(&format!("batch/{i}"), value.as_bytes())
                        .await
                        .unwrap(),
                );
            }
            (i, revisions)
        })
    });
    let mut all = BTreeSet::new();
    let reader = fleet.client("a1").await;
    for writer in writers {
        let (i, revisions) = writer.await.unwrap();
        assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
        let value = reader.get(&format!("batch/{i}")).await.unwrap().unwrap();
        assert_eq!(value.value, format!("{i}/19").into_bytes());
        assert_eq!(value.version, 20);
        // The answers were this app's own: its first write created the key and its last
        // one is the key's last change.
        assert_eq!(value.create_revision, revisions[0], "{revisions:?}");
        assert_eq!(value.modify_revision, revisions[19], "{revisions:?}");
        for revision in revisions {
            assert!(all.insert(revision), "revision {revision} answered twice");
        }
    }
    assert_eq!(all.len(), 32 * 20);
}

/// Agents feed their replicas from followers, leaving the leader to the writes, and stay
/// there; an agent's own writes are still read back at once. (Five agents starting on
/// members at random would all miss the leader about one time in eight.)
#[tokio::test(flavor = "multi_thread")]
async fn agents_feed_their_replicas_from_followers() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 5).await;
    let leader = fleet.core.wait_for_leader(Duration::from_secs(20)).await;
    let leader_address = fleet.core.address(leader).to_string();
    for name in fleet.names() {
        let agent = fleet.client(&name).await;
        wait_until(
            Duration::from_secs(10),
            &format!("{name}'s feed to settle on a follower"),
            || {
                let agent = agent.clone();
                let leader_address = leader_address.clone();
                async move {
                    let feed = agent.status().await.ok()?.feed?;
                    (feed != leader_address).then_some(())
                }
            },
        )
        .await;
    }
    let client = fleet.client("a1").await;
    for round in 0..10 {
        let value = format!("{round}");
        client.put("feed/x", value.as_bytes()).await.unwrap();
        let read = client.get("feed/x").await.unwrap().unwrap();
        assert_eq!(read.value, value.as_bytes());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let feed = client.status().await.unwrap().feed;
    assert!(
        feed.as_ref().is_some_and(|f| *f != leader_address),
        "the feed went back to the leader {leader_address}: {feed:?}"
    );
}
