//! A store split by hash slot goes from 3 shards to 4 and back to 2 while an app writes
//! without pause: the example store (`agent/examples/slot_store.rs`) and app
//! (`slot_app.rs`) as real processes beside real agents. Afterwards every key is on the
//! shard its slot names, with the last value written, and every write a store took was
//! for a slot its shard owned, not moving, in the group's version it took it under.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use corral_proto::api::{AgentRequest, EventFilter, Query, QueryResult, SubscriptionItem};
use corral_proto::event::Event;
use corral_proto::slots::{ShardGroup, slot_of};
use corral_tests::{ChildProcess, Fleet, example_binary, http};

const CONVERGE: Duration = Duration::from_secs(30);
const SHARDS: [&str; 4] = ["orders-1", "orders-2", "orders-3", "orders-4"];

/// Sends one request to a store and reads its lines up to `END`.
fn ask_lines(address: &str, request: &str) -> Vec<String> {
    let stream = std::net::TcpStream::connect(address).expect("the store listens");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    writeln!(writer, "{request}").unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(stream).lines() {
        let line = line.expect("the store answers");
        if line == "END" {
            return lines;
        }
        lines.push(line);
    }
    panic!("the store closed before END");
}

/// Runs the example app's `migrate` and answers its summary line.
fn migrate(socket: &std::path::Path, slots: &str, to: &str) -> serde_json::Value {
    let output = std::process::Command::new(example_binary("slot_app"))
        .args(["migrate", "--group", "orders", "--slots", slots, "--to", to])
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("the migrator runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "migrate {slots} to {to}: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(text.trim()).expect("one JSON line")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slotted_store_goes_from_three_shards_to_four_to_two_under_writes() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 2).await;
    let names = fleet.names();
    fleet.wait_for_members(&names, &names, CONVERGE).await;
    let a1 = fleet.client("a1").await;
    let stores_socket = fleet.agent("a1").socket.clone();
    let app_socket = fleet.agent("a2").socket.clone();

    // Every version of the group, as the core made them.
    let mut events = a1
        .subscribe(
            EventFilter {
                shards: true,
                ..EventFilter::nothing()
            },
            None,
        )
        .await
        .unwrap();
    let mut stores = Vec::new();
    for shard in SHARDS {
        a1.write(AgentRequest::CreateShard { name: shard.into() })
            .await
            .unwrap();
        let args: Vec<String> = ["--group", "orders", "--shard", shard, "--socket"]
            .into_iter()
            .map(String::from)
            .chain([stores_socket.display().to_string()])
            .collect();
        let log = root.path().join(format!("{shard}.log"));
        stores.push(ChildProcess::spawn_program(
            &example_binary("slot_store"),
            shard,
            &args,
            &log,
            &[],
        ));
    }
    let masters = corral_tests::wait_until(CONVERGE, "a master for every shard", || {
        let a1 = a1.clone();
        async move {
            let mut masters = BTreeMap::new();
            for shard in SHARDS {
                let master = a1.shard(shard).await.ok()??.master?;
                masters.insert(shard.to_string(), master);
            }
            Some(masters)
        }
    })
    .await;
    a1.write(AgentRequest::CreateGroup {
        name: "orders".into(),
        shards: SHARDS[..3].iter().map(|s| s.to_string()).collect(),
    })
    .await
    .unwrap();

    let app_log = root.path().join("app.log");
    let app_args: Vec<String> = ["write", "--group", "orders", "--seconds", "12", "--socket"]
        .into_iter()
        .map(String::from)
        .chain([app_socket.display().to_string()])
        .collect();
    let mut app =
        ChildProcess::spawn_program(&example_binary("slot_app"), "app", &app_args, &app_log, &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3 -> 4: orders-4 takes slots from orders-3, then from orders-1.
    // 4 -> 2: orders-2's slots go to orders-1, orders-3's last ones to orders-4.
    let mut moves = Vec::new();
    for (slots, to) in [
        ("12000-16383", "orders-4"),
        ("0-1000", "orders-4"),
        ("5461-10921", "orders-1"),
        ("10922-11999", "orders-4"),
    ] {
        let socket = app_socket.clone();
        let summary = tokio::task::spawn_blocking(move || migrate(&socket, slots, to))
            .await
            .unwrap();
        println!("moved {summary}");
        moves.push(summary);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    while app.is_running() {
        assert!(Instant::now() < deadline, "the app did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        app.exit_status().is_some_and(|s| s.success()),
        "{}",
        app.log_text()
    );
    let summary: serde_json::Value = app
        .log_text()
        .lines()
        .find(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap())
        .expect("the app's summary");
    let acked: BTreeMap<String, u64> = serde_json::from_value(summary["acked"].clone()).unwrap();
    println!(
        "app: {} writes acknowledged, {} refused by a shard that did not own the slot (or \
         was moving it) and routed again, routing from the shard map in {} ns on average",
        summary["writes"], summary["retries"], summary["route_ns_mean"]
    );
    assert!(summary["writes"].as_u64().unwrap() > 500, "{summary}");
    assert!(acked.len() == 300, "every key written: {}", acked.len());

    // The group as it ends, and every version it went through.
    let reply = a1.read(Query::Group("orders".into()), true).await.unwrap();
    let QueryResult::Group(Some(group)) = reply.result else {
        panic!("no group");
    };
    let mut left = group.shards();
    left.sort();
    assert_eq!(left, ["orders-1", "orders-4"]);
    let mut history: BTreeMap<u64, ShardGroup> = BTreeMap::new();
    while !history.contains_key(&group.version) {
        let item = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("the group's events")
            .expect("the subscription stays open");
        if let SubscriptionItem::Events(batch) = item {
            for event in batch.events {
                if let Event::GroupChanged(changed) = event {
                    history.insert(changed.version, changed);
                }
            }
        }
    }
    assert_eq!(
        history.keys().copied().collect::<Vec<_>>(),
        (1..=group.version).collect::<Vec<_>>(),
        "every version seen"
    );

    // Every key on the shard its slot names, with the last value acknowledged; nothing
    // anywhere else.
    let mut held = 0;
    for shard in SHARDS {
        let address = &masters[shard];
        for line in ask_lines(address, "DUMP") {
            let (key, value) = line.split_once(' ').unwrap();
            let owner = &group.range_of(slot_of(key.as_bytes())).unwrap().shard;
            assert_eq!(owner, shard, "{key} is on {shard}, its slot is {owner}'s");
            assert_eq!(
                value.parse::<u64>().unwrap(),
                acked[key],
                "{key} on {shard}"
            );
            held += 1;
        }
        // Every write a store took was for a slot its shard owned, not moving, in the
        // version it took it under.
        let accepted = ask_lines(address, "ACCEPTED");
        for line in &accepted {
            let (slot, version) = line.split_once(' ').unwrap();
            let (slot, version): (u16, u64) = (slot.parse().unwrap(), version.parse().unwrap());
            let range = history[&version].range_of(slot).unwrap();
            assert!(
                range.shard == shard && range.moving_to.is_none(),
                "{shard} took a write for slot {slot} at version {version}: {range:?}"
            );
        }
        println!("{shard}: took {} writes", accepted.len());
    }
    assert_eq!(held, acked.len(), "every key is held once");

    // The same route from the command line, over HTTP and from the shard map file.
    let routed = std::process::Command::new(corral_tests::corral_binary())
        .args(["shard", "route", "orders", "foo", "--json", "--socket"])
        .arg(&stores_socket)
        .output()
        .unwrap();
    assert!(routed.status.success(), "{routed:?}");
    let routed: serde_json::Value = serde_json::from_slice(&routed.stdout).unwrap();
    let owner = &group.range_of(12182).unwrap().shard;
    assert_eq!(routed["route"]["slot"], 12182);
    assert_eq!(&routed["route"]["shard"], owner.as_str());
    assert_eq!(routed["route"]["master"], masters[owner].as_str());
    assert_eq!(routed["route"]["version"], group.version);
    let gateway = fleet.gateway("a1").await;
    let over_http = http::get(gateway, "/v1/groups/orders/route?key=foo").await;
    assert_eq!(over_http.json()["route"], routed["route"]);
    assert_eq!(
        http::get(gateway, "/v1/groups/orders/route").await.status,
        400
    );
    assert_eq!(
        http::get(gateway, "/v1/groups/none/route?key=foo")
            .await
            .status,
        404
    );
    let mut map = corral_proto::shard_map::ShardMap::for_socket(&stores_socket);
    let from_file = map.route("orders", b"foo").unwrap().unwrap();
    assert_eq!(serde_json::to_value(&from_file).unwrap(), routed["route"]);
    for mut store in stores {
        store.kill();
    }
}
