//! DNS on every agent, asked by Debian's `dig`: masters, replicas, services and agents
//! under `corral.`, answered from the local replica, and a failover seen by `dig` as soon
//! as the agent applied it. Real `corral` processes over real sockets.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use corral_proto::api::{AgentRequest, EventFilter, SubscriptionItem};
use corral_proto::event::Event;
use corral_tests::Fleet;
use corral_tests::dig::dig;

const CONVERGE: Duration = Duration::from_secs(30);

/// Reads until the peer closes (within 10 s); answers how many bytes came.
fn read_to_end(stream: &mut std::net::TcpStream) -> usize {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(stream, &mut bytes).expect("closed within 10 s");
    bytes.len()
}

/// Waits (up to 10 s) until the agent behind `client` has applied `revision`: DNS answers
/// from its replica.
async fn replica_reaches(client: &corral_proto::AgentClient, revision: u64) {
    corral_tests::wait_until(Duration::from_secs(10), "the agent's replica", || {
        let client = client.clone();
        async move { (client.status().await.ok()?.revision >= revision).then_some(()) }
    })
    .await;
}

fn join(address: &str, priority: u32) -> AgentRequest {
    AgentRequest::JoinShard {
        shard: "M3".into(),
        address: address.into(),
        priority,
        detach: false,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dig_finds_masters_replicas_services_and_agents() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 2).await;
    let names = fleet.names();
    fleet.wait_for_members(&names, &names, CONVERGE).await;
    let a1 = fleet.client("a1").await;
    let a2 = fleet.client("a2").await;
    a1.write(AgentRequest::CreateShard { name: "M3".into() })
        .await
        .unwrap();
    a1.write(join("10.0.0.7:6379", 3)).await.unwrap();
    a2.write(join("10.0.0.8:6379", 2)).await.unwrap();
    a2.write(join("db9.example:6380", 1)).await.unwrap();
    for (id, address, tags) in [
        ("api-1", "10.0.1.1", vec!["v2"]),
        ("api-2", "10.0.1.2", vec![]),
    ] {
        a2.write(AgentRequest::RegisterService {
            service: "api".into(),
            id: id.into(),
            address: address.into(),
            port: 8080,
            tags: tags.into_iter().map(String::from).collect(),
            detach: false,
        })
        .await
        .unwrap();
    }
    // a1 answers from its replica: wait until it holds the last registration.
    let (revision, _) = a2.write(join("10.0.0.9:6379", 0)).await.unwrap();
    replica_reaches(&a1, revision).await;
    let server = fleet.agent("a1").dns;

    let master = dig(server, "master.M3.shard.corral.", "A", &[]);
    assert_eq!(master.status(), "NOERROR", "{}", master.output);
    assert_eq!(master.data(), ["10.0.0.7"], "{}", master.output);
    assert!(
        master.answers().iter().all(|(_, ttl, _, _)| *ttl == 0),
        "TTL 0: {}",
        master.output
    );
    assert!(
        master.output.contains(" aa"),
        "authoritative: {}",
        master.output
    );
    let srv = dig(server, "master.m3.shard.corral.", "SRV", &[]);
    assert_eq!(
        srv.data(),
        ["0 1 6379 0a000007.addr.corral."],
        "{}",
        srv.output
    );
    assert_eq!(
        srv.additionals()[0].3,
        "10.0.0.7",
        "the target's address comes along: {}",
        srv.output
    );
    let replicas = dig(server, "M3.shard.corral.", "SRV", &["+tcp"]);
    assert_eq!(
        replicas.data(),
        [
            "0 1 6379 0a000007.addr.corral.",
            "1 1 6379 0a000008.addr.corral.",
            "1 1 6380 db9.example.",
            "1 1 6379 0a000009.addr.corral.",
        ],
        "master first, over TCP: {}",
        replicas.output
    );
    let target = dig(server, "0a000008.addr.corral.", "A", &[]);
    assert_eq!(target.data(), ["10.0.0.8"], "{}", target.output);

    let api = dig(server, "api.service.corral.", "A", &[]);
    assert_eq!(api.data(), ["10.0.1.1", "10.0.1.2"], "{}", api.output);
    let api_srv = dig(server, "api.service.corral.", "SRV", &[]);
    assert_eq!(api_srv.data().len(), 2, "{}", api_srv.output);
    assert!(api_srv.data().iter().all(|d| d.starts_with("0 1 8080 ")));
    let v2 = dig(server, "v2.api.service.corral.", "A", &[]);
    assert_eq!(v2.data(), ["10.0.1.1"], "{}", v2.output);

    let node = dig(server, "a2.node.corral.", "A", &[]);
    assert_eq!(node.data(), ["127.0.0.1"], "{}", node.output);

    // What does not exist is NXDOMAIN, with the zone's SOA (negative TTL 0); what exists
    // without records of the type is an empty answer; names outside the zone are refused.
    for name in [
        "master.M4.shard.corral.",
        "web.service.corral.",
        "v9.api.service.corral.",
        "a9.node.corral.",
        "x.y.z.corral.",
    ] {
        let missing = dig(server, name, "A", &[]);
        assert_eq!(missing.status(), "NXDOMAIN", "{name}: {}", missing.output);
        assert!(missing.output.contains("SOA"), "{name}: {}", missing.output);
    }
    let no_data = dig(server, "M3.shard.corral.", "TXT", &[]);
    assert_eq!(no_data.status(), "NOERROR", "{}", no_data.output);
    assert!(no_data.answers().is_empty(), "{}", no_data.output);
    let outside = dig(server, "example.com.", "A", &[]);
    assert_eq!(outside.status(), "REFUSED", "{}", outside.output);
    let chaos = dig(server, "master.M3.shard.corral.", "A", &["-c", "CH"]);
    assert_eq!(chaos.status(), "REFUSED", "{}", chaos.output);
    let notify = dig(server, "master.M3.shard.corral.", "A", &["+opcode=notify"]);
    assert_eq!(notify.status(), "NOTIMP", "{}", notify.output);
    // Garbage over UDP and TCP, and a TCP connection that sends half a query and stalls,
    // cost nothing: the agent still answers.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for garbage in [&b""[..], b"\x00", &[0xff; 12], &[0x41; 4000]] {
        udp.send_to(garbage, server).unwrap();
    }
    let mut stalled = std::net::TcpStream::connect(server).unwrap();
    std::io::Write::write_all(&mut stalled, &[0x00, 0x40, 0x12, 0x34]).unwrap();
    let stalled_at = Instant::now();
    let mut garbage = std::net::TcpStream::connect(server).unwrap();
    std::io::Write::write_all(&mut garbage, &[0x00, 0x05, 1, 2, 3, 4, 5]).unwrap();
    assert_eq!(
        read_to_end(&mut garbage),
        0,
        "a message that does not parse ends it"
    );
    // 300 connections held open: those past the cap of 256 are closed at once, UDP
    // answers meanwhile, and TCP again once they are gone.
    let flood: Vec<_> = (0..300)
        .map(|_| std::net::TcpStream::connect(server).unwrap())
        .collect();
    let mut closed = 0;
    for mut connection in flood.iter().skip(250) {
        connection
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut byte = [0u8; 1];
        if let Ok(0) = std::io::Read::read(&mut connection, &mut byte) {
            closed += 1;
        }
    }
    assert!(
        closed >= 40,
        "only {closed} of the 50 last connections were closed"
    );
    assert_eq!(
        dig(server, "master.M3.shard.corral.", "A", &[]).data(),
        ["10.0.0.7"]
    );
    drop(flood);
    corral_tests::wait_until(
        Duration::from_secs(10),
        "TCP answers again",
        || async move {
            let answer = dig(server, "master.M3.shard.corral.", "A", &["+tcp"]);
            (answer.data() == ["10.0.0.7"]).then_some(())
        },
    )
    .await;
    // The stalled connection is closed once it has been idle for 5 s.
    assert_eq!(read_to_end(&mut stalled), 0);
    let idle = stalled_at.elapsed();
    assert!(idle >= Duration::from_secs(4), "closed after {idle:?}");
    // The agent still answers after all of that.
    assert_eq!(
        dig(server, "master.M3.shard.corral.", "A", &[]).data(),
        ["10.0.0.7"]
    );
    let apex = dig(server, "corral.", "SOA", &[]);
    assert_eq!(apex.answers().len(), 1, "{}", apex.output);
    assert_eq!(apex.answers()[0].2, "SOA", "{}", apex.output);

    // /metrics counts the queries by outcome.
    let gateway = fleet.gateway("a1").await;
    let metrics =
        String::from_utf8(corral_tests::http::get(gateway, "/metrics").await.body).unwrap();
    let count = |result: &str| -> u64 {
        let series = format!("corral_agent_dns_queries_total{{result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in /metrics:\n{metrics}"))
    };
    // Thirteen answered above (a TCP query the flood's cap closed is never read, so it is
    // not counted); five missing names; refused: outside the zone, CHAOS, NOTIFY
    // and the twelve bytes of 0xff, which parse as a header of another opcode (the other
    // garbage never parses into a query and is dropped before it is counted).
    assert_eq!(count("answered"), 13, "{metrics}");
    assert_eq!(count("nxdomain"), 5, "{metrics}");
    assert_eq!(count("refused"), 4, "{metrics}");
    let cut: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("corral_agent_cut_total{what=\"dns_connection\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no DNS connections cut in /metrics:\n{metrics}"));
    assert!(cut >= closed as u64, "{cut} counted, {closed} seen closed");
}

/// The master's host is killed; a subscriber on a1 sees the master change, and a `dig`
/// sent to a1 after that answers the new master. Figures printed: from the kill to the
/// new master through the socket and through `dig`, and from the change reaching a1 to
/// `dig` answering it.
#[tokio::test(flavor = "multi_thread")]
async fn dig_answers_the_new_master_once_the_agent_has_the_failover() {
    let root = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::start(root.path(), 3).await;
    let names = fleet.names();
    fleet.wait_for_members(&names, &names, CONVERGE).await;
    let on_a1 = fleet.client("a1").await;
    let on_a2 = fleet.client("a2").await;
    let on_a3 = fleet.client("a3").await;
    on_a1
        .write(AgentRequest::CreateShard { name: "M3".into() })
        .await
        .unwrap();
    on_a2.write(join("10.0.0.2:6379", 2)).await.unwrap();
    let (revision, _) = on_a3.write(join("10.0.0.3:6379", 1)).await.unwrap();
    let server = fleet.agent("a1").dns;
    replica_reaches(&on_a1, revision).await;
    assert_eq!(
        dig(server, "master.M3.shard.corral.", "A", &[]).data(),
        ["10.0.0.2"]
    );
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

    // dig and the socket ask a1 over and over from the kill on.
    let done = Arc::new(AtomicBool::new(false));
    let digging = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let asked = Instant::now();
                let answer = dig(server, "master.M3.shard.corral.", "A", &[]);
                answers.push((asked, Instant::now(), answer.data()));
            }
            answers
        })
    };
    let killed = Instant::now();
    fleet.kill_agent("a2");
    let socket = {
        let on_a1 = on_a1.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(Some(shard)) = on_a1.shard("M3").await
                    && shard.master.as_deref() == Some("10.0.0.3:6379")
                {
                    return Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let changed = loop {
        let item = tokio::time::timeout(Duration::from_secs(15), events.next())
            .await
            .expect("a master change within 15 s")
            .expect("the subscription stays open");
        if let SubscriptionItem::Events(batch) = item
            && batch.events.iter().any(|e| {
                matches!(e, Event::MasterChanged { shard, master, .. }
                    if shard == "M3" && master.as_deref() == Some("10.0.0.3:6379"))
            })
        {
            break Instant::now();
        }
    };
    let socket_saw = tokio::time::timeout(Duration::from_secs(5), socket)
        .await
        .expect("the socket answers the new master")
        .unwrap();
    // Let dig ask at least twice more after the change reached a1.
    tokio::time::sleep(Duration::from_millis(300)).await;
    done.store(true, Ordering::Relaxed);
    let answers = digging.join().unwrap();

    // Every dig sent after a1 had the change answers the new master: DNS reads the replica,
    // with nothing cached in between.
    let after: Vec<_> = answers
        .iter()
        .filter(|(asked, _, _)| *asked >= changed)
        .collect();
    assert!(!after.is_empty(), "no dig was sent after the change");
    for (_, _, data) in &after {
        assert_eq!(
            data,
            &["10.0.0.3"],
            "a dig sent after the change: {answers:?}"
        );
    }
    // Before the kill was noticed, dig answered the old master, never nothing.
    assert!(
        answers
            .iter()
            .all(|(_, _, d)| d == &["10.0.0.2"] || d == &["10.0.0.3"]),
        "{answers:?}"
    );
    let dig_saw = answers
        .iter()
        .find(|(_, _, d)| d == &["10.0.0.3"])
        .map(|(_, answered, _)| *answered)
        .expect("dig answered the new master");
    let first_after = after[0].1;
    eprintln!(
        "failover after SIGKILL of the master's host: the socket had the new master after \
         {:?}, dig after {:?}; the change reached a1's subscriber after {:?}; the first dig \
         sent after that answered {:?} later ({} digs in all)",
        socket_saw - killed,
        dig_saw - killed,
        changed - killed,
        first_after.saturating_duration_since(changed),
        answers.len()
    );
    drop(on_a2);
}
