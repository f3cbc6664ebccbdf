//! The agents' etcd v3 endpoint, driven by clients nobody here wrote: Debian's `etcdctl`
//! and Python's `etcd3` package, against real agents and a real core, including while
//! the core's leader is killed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use corral_tests::etcd_clients::{EtcdServer, Etcdctl, run_python};
use corral_tests::{Fleet, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

async fn fleet(root: &Path) -> (Fleet, Vec<Etcdctl>) {
    let fleet = Fleet::start(root, 3).await;
    let mut clients = Vec::new();
    for name in fleet.names() {
        clients.push(Etcdctl::new(fleet.etcd(&name).await));
    }
    // The agents have their node sessions (and so can hold leases) once they see all.
    let names = fleet.names();
    fleet
        .wait_for_members(&names, &names, Duration::from_secs(30))
        .await;
    (fleet, clients)
}

/// Runs blocking client work off the test's runtime threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("the client work")
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.is_empty()).collect()
}

/// put, get (prefix, limit, rev, from another agent), del, txn -i, member list and
/// endpoint status, as etcdctl prints them.
#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_reads_writes_and_transacts_through_any_agent() {
    let root = tempfile::tempdir().unwrap();
    let (_fleet, etcd) = fleet(root.path()).await;
    blocking(move || {
        let (a1, a2) = (&etcd[0], &etcd[1]);
        assert_eq!(a1.ok(&["put", "app/a", "1"]).trim(), "OK");
        a1.ok(&["put", "app/b", "2"]);
        a1.ok(&["put", "apq", "3"]);
        // Read back through another agent, linearizably and from its replica.
        assert_eq!(lines(&a2.ok(&["get", "app/a"])), ["app/a", "1"]);
        assert_eq!(
            lines(&a2.ok(&["get", "app/", "--prefix", "--consistency=s"])),
            ["app/a", "1", "app/b", "2"]
        );
        assert_eq!(
            lines(&a2.ok(&["get", "app/", "--prefix", "--limit=1"])),
            ["app/a", "1"]
        );
        let json: serde_json::Value =
            serde_json::from_str(&a2.ok(&["get", "app/", "--prefix", "--limit=1", "-w", "json"]))
                .unwrap();
        assert_eq!(json["count"], 2, "{json}");
        assert_eq!(json["more"], true, "{json}");
        assert_eq!(
            lines(&a1.ok(&["get", "app/", "--prefix", "--keys-only", "--order=DESCEND"])),
            ["app/b", "app/a"]
        );

        // A read at a revision: answered while the key has not changed since, and with
        // etcd's compaction error once it has (Corral keeps no old values).
        let revision = a1.revision("app/a").to_string();
        assert_eq!(
            lines(&a1.ok(&["get", "app/a", "--rev", &revision])),
            ["app/a", "1"]
        );
        a1.ok(&["put", "app/a", "changed"]);
        let error = a1.run(&["get", "app/a", "--rev", &revision]).unwrap_err();
        assert!(
            error.contains("required revision has been compacted"),
            "{error}"
        );
        assert_eq!(
            lines(&a1.ok(&["get", "app/b", "--rev", &revision])),
            ["app/b", "2"]
        );

        // Deletes: one key, then a prefix.
        assert_eq!(a1.ok(&["del", "apq"]).trim(), "1");
        assert_eq!(a1.ok(&["del", "app/", "--prefix"]).trim(), "2");
        assert!(a2.ok(&["get", "app/", "--prefix"]).trim().is_empty());

        // A transaction, interactively: compares, then the branch that runs.
        a1.ok(&["put", "mode", "fast"]);
        let txn = "value(\"mode\") = \"fast\"\n\nput mode slow\nget mode\n\nput mode never\n\n";
        // etcdctl prints its three prompts first.
        let answer = |out: &str| -> Vec<String> {
            lines(out)
                .into_iter()
                .filter(|l| !l.ends_with(':'))
                .map(str::to_string)
                .collect()
        };
        let out = a1.run_with_input(&["txn", "-i"], Some(txn)).unwrap();
        assert_eq!(answer(&out), ["SUCCESS", "OK", "mode", "slow"], "{out}");
        let out = a1.run_with_input(&["txn", "-i"], Some(txn)).unwrap();
        assert_eq!(answer(&out), ["FAILURE", "OK"], "{out}");
        assert_eq!(lines(&a2.ok(&["get", "mode"])), ["mode", "never"]);

        // The core's members and the endpoint's status.
        let members = a1.ok(&["member", "list"]);
        assert_eq!(lines(&members).len(), 3, "{members}");
        assert!(members.contains("started"), "{members}");
        let status = a1.ok(&["endpoint", "status"]);
        assert!(status.contains("3.5.0"), "{status}");
    })
    .await;
}

/// `etcdctl watch --rev` replays a burst of writes from the agent's history, in order,
/// and then follows live writes made through another agent.
#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_watch_replays_from_a_revision_and_follows() {
    let root = tempfile::tempdir().unwrap();
    let (_fleet, etcd) = fleet(root.path()).await;
    let output = root.path().join("watch.out");
    blocking(move || {
        let (a1, a2) = (&etcd[0], &etcd[1]);
        let first = a1.revision("w/") + 1;
        for i in 0..50 {
            a2.ok(&["put", &format!("w/{i:02}"), &format!("v{i}")]);
        }
        let mut watch = a1.spawn(
            &["watch", "w/", "--prefix", "--rev", &first.to_string()],
            &output,
        );
        a2.ok(&["put", "w/live", "after"]);
        a2.ok(&["del", "w/00"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        let text = loop {
            let text = std::fs::read_to_string(&output).unwrap_or_default();
            if text.contains("DELETE") || Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = watch.kill();
        let _ = watch.wait();
        let events = lines(&text);
        // PUT, key, value for each put; DELETE, key (and an empty value line skipped).
        let mut expected: Vec<String> = Vec::new();
        for i in 0..50 {
            expected.extend(["PUT".into(), format!("w/{i:02}"), format!("v{i}")]);
        }
        expected.extend(["PUT".into(), "w/live".into(), "after".into()]);
        expected.extend(["DELETE".into(), "w/00".into()]);
        assert_eq!(events, expected, "watch output:\n{text}");

        // Past the agent's history (16 MiB of events): a watch from revision 1 is
        // canceled as etcd cancels one from a compacted revision, never served with a gap.
        let megabyte = "x".repeat(1024 * 1024 - 64);
        for i in 0..20 {
            a2.run_with_input(&["put", &format!("big/{i}")], Some(&megabyte))
                .unwrap();
        }
        let error = a1
            .run(&["watch", "w/", "--prefix", "--rev", "1"])
            .unwrap_err();
        assert!(
            error.contains("required revision has been compacted"),
            "{error}"
        );
    })
    .await;
}

/// Leases: granted, kept alive, listed with their keys; a lease whose holder is killed
/// runs out and its key disappears from every agent (the time it took is printed).
#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_leases_keep_keys_and_their_end_removes_them_everywhere() {
    let root = tempfile::tempdir().unwrap();
    let (_fleet, etcd) = fleet(root.path()).await;
    let output = root.path().join("keepalive.out");
    blocking(move || {
        let a1 = &etcd[0];
        let granted = a1.ok(&["lease", "grant", "2"]);
        let lease = granted
            .split_whitespace()
            .nth(1)
            .expect("lease ID")
            .to_string();
        assert!(granted.contains("TTL(2s)"), "{granted}");
        a1.ok(&["put", "--lease", &lease, "eph/key", "v"]);
        let ttl = a1.ok(&["lease", "timetolive", &lease, "--keys"]);
        assert!(ttl.contains("attached keys([eph/key])"), "{ttl}");
        assert!(a1.ok(&["lease", "list"]).contains(&lease));

        // Kept alive well past its TTL, the key stays everywhere.
        let mut keeper = a1.spawn(&["lease", "keep-alive", &lease], &output);
        std::thread::sleep(Duration::from_secs(4));
        for agent in &etcd {
            assert_eq!(
                lines(&agent.ok(&["get", "eph/key", "--consistency=s"])),
                ["eph/key", "v"],
                "the kept-alive key vanished at {}",
                agent.endpoint
            );
        }
        let renewals = std::fs::read_to_string(&output).unwrap_or_default();
        assert!(renewals.contains("keepalived with TTL(2)"), "{renewals}");

        // Its holder killed, the lease runs out: the key goes at every agent.
        kill(Pid::from_raw(keeper.id() as i32), Signal::SIGKILL).unwrap();
        let killed = Instant::now();
        let _ = keeper.wait();
        let mut gone_after = Vec::new();
        for agent in &etcd {
            loop {
                let out = agent.ok(&["get", "eph/key", "--consistency=s"]);
                if out.trim().is_empty() {
                    gone_after.push(killed.elapsed());
                    break;
                }
                assert!(
                    killed.elapsed() < Duration::from_secs(30),
                    "the key outlived its lease at {}",
                    agent.endpoint
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        eprintln!(
            "lease expiry: a key under a 2 s lease was gone from every agent {:?} after its \
             holder was SIGKILLed (per agent: {gone_after:?})",
            gone_after.iter().max().unwrap()
        );
        let ttl = a1.ok(&["lease", "timetolive", &lease]);
        assert!(ttl.contains("already expired"), "{ttl}");

        // A revoked lease takes its keys with it at once.
        let granted = a1.ok(&["lease", "grant", "60"]);
        let lease = granted.split_whitespace().nth(1).unwrap().to_string();
        a1.ok(&["put", "--lease", &lease, "eph/other", "v"]);
        a1.ok(&["lease", "revoke", &lease]);
        assert!(a1.ok(&["get", "eph/other"]).trim().is_empty());
    })
    .await;
}

/// `etcdctl lock`: two contenders on two agents, the second waits for the first and gets
/// a larger fencing revision. `etcdctl elect`: a follower takes over when the leader goes.
#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_lock_and_elect_hand_over() {
    let root = tempfile::tempdir().unwrap();
    let (_fleet, etcd) = fleet(root.path()).await;
    let dir = root.path().to_path_buf();
    blocking(move || {
        let (a1, a2) = (&etcd[0], &etcd[1]);
        let first_out = dir.join("lock-first.out");
        let mut first = a1.spawn(
            &[
                "lock",
                "jobs",
                "--",
                "sh",
                "-c",
                "echo held $ETCD_LOCK_KEY $ETCD_LOCK_REV $(date +%s.%N); sleep 2; echo done $(date +%s.%N)",
            ],
            &first_out,
        );
        wait_for_text(&first_out, "held");
        let second = a2
            .run(&[
                "lock",
                "jobs",
                "--",
                "sh",
                "-c",
                "echo held $ETCD_LOCK_KEY $ETCD_LOCK_REV $(date +%s.%N)",
            ])
            .unwrap();
        first.wait().unwrap();
        let first = std::fs::read_to_string(&first_out).unwrap();
        let field = |text: &str, word: &str, at: usize| -> String {
            text.lines()
                .find(|l| l.starts_with(word))
                .and_then(|l| l.split_whitespace().nth(at))
                .unwrap_or_else(|| panic!("no {word} line in {text}"))
                .to_string()
        };
        let (first_rev, second_rev): (u64, u64) = (
            field(&first, "held", 2).parse().unwrap(),
            field(&second, "held", 2).parse().unwrap(),
        );
        assert!(second_rev > first_rev, "fencing revisions must grow: {first} / {second}");
        let released: f64 = field(&first, "done", 1).parse().unwrap();
        let taken: f64 = field(&second, "held", 3).parse().unwrap();
        assert!(
            taken >= released,
            "the second holder got the lock before the first released it:\n{first}\n{second}"
        );

        // An election: alice leads, bob follows and takes over when alice goes.
        let alice_out = dir.join("alice.out");
        let bob_out = dir.join("bob.out");
        let mut alice = a1.spawn(&["elect", "primary", "alice"], &alice_out);
        wait_for_text(&alice_out, "alice");
        let mut bob = a2.spawn(&["elect", "primary", "bob"], &bob_out);
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            !std::fs::read_to_string(&bob_out).unwrap().contains("bob"),
            "bob led while alice did"
        );
        let listen_out = dir.join("listen.out");
        let mut listener = a1.spawn(&["elect", "--listen", "primary"], &listen_out);
        wait_for_text(&listen_out, "alice");
        kill(Pid::from_raw(alice.id() as i32), Signal::SIGTERM).unwrap();
        let _ = alice.wait();
        wait_for_text(&bob_out, "bob");
        wait_for_text(&listen_out, "bob");
        for child in [&mut bob, &mut listener] {
            let _ = child.kill();
            let _ = child.wait();
        }
    })
    .await;
}

fn wait_for_text(path: &Path, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = std::fs::read_to_string(path).unwrap_or_default();
        if found.contains(text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never showed {text:?}: {found}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Python's etcd3 package: gets, puts, transactions, watches, leases and its lock, on
/// two agents (tests/python/etcd3_client.py asserts each).
#[tokio::test(flavor = "multi_thread")]
async fn python_etcd3_works_unchanged() {
    let root = tempfile::tempdir().unwrap();
    let (_fleet, etcd) = fleet(root.path()).await;
    let args = vec![etcd[0].endpoint.to_string(), etcd[1].endpoint.to_string()];
    let out = blocking(move || run_python("etcd3_client.py", &args))
        .await
        .unwrap_or_else(|error| panic!("the etcd3 script failed:\n{error}"));
    assert_eq!(out.trim(), "ok");
}

/// `corral import --from-etcd` copies a prefix of a running etcd through an agent: keys
/// bound to etcd leases stay behind, keys that exist in Corral are kept.
#[tokio::test(flavor = "multi_thread")]
async fn corral_import_copies_keys_from_a_running_etcd() {
    let root = tempfile::tempdir().unwrap();
    let (fleet, etcd) = fleet(root.path()).await;
    let socket = fleet.agent("a1").socket.clone();
    let dir = root.path().to_path_buf();
    blocking(move || {
        let source = EtcdServer::start(&dir);
        let from = Etcdctl::new(source.endpoint);
        for i in 0..40 {
            from.ok(&["put", &format!("app/{i:02}"), &format!("v{i}")]);
        }
        from.ok(&["put", "app/kept", "from etcd"]);
        from.ok(&["put", "other/x", "outside the prefix"]);
        let lease = from.ok(&["lease", "grant", "600"]);
        let lease = lease.split_whitespace().nth(1).unwrap().to_string();
        from.ok(&["put", "--lease", &lease, "app/leased", "v"]);
        etcd[0].ok(&["put", "app/kept", "from corral"]);

        let output = std::process::Command::new(corral_tests::corral_binary())
            .args(["import", "--from-etcd"])
            .arg(format!("http://{}", source.endpoint))
            .args(["--prefix", "app/", "--socket"])
            .arg(&socket)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("copied 40 keys"), "{stdout}");
        assert!(stdout.contains("kept 1 that exist here"), "{stdout}");
        assert!(stdout.contains("left 1 bound to etcd leases"), "{stdout}");
        let copied = etcd[1].ok(&["get", "app/", "--prefix"]);
        let copied = lines(&copied);
        assert_eq!(copied.len(), 2 * 41, "{copied:?}");
        assert_eq!(lines(&etcd[1].ok(&["get", "app/07"])), ["app/07", "v7"]);
        assert_eq!(
            lines(&etcd[1].ok(&["get", "app/kept"])),
            ["app/kept", "from corral"]
        );
        assert!(etcd[1].ok(&["get", "other/x"]).trim().is_empty());
        assert!(etcd[1].ok(&["get", "app/leased"]).trim().is_empty());
    })
    .await;
}

/// Garbage, unknown methods, binary keys, oversized values and requests, unknown leases
/// and what Corral does not do: each gets a clear gRPC error, and the endpoint serves on
/// (tests/python/etcd3_bad_input.py).
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_on_the_etcd_endpoint_gets_clear_errors() {
    let root = tempfile::tempdir().unwrap();
    let (fleet, etcd) = fleet(root.path()).await;
    let args = vec![etcd[0].endpoint.to_string()];
    let out = blocking(move || run_python("etcd3_bad_input.py", &args))
        .await
        .unwrap_or_else(|error| panic!("the bad-input script failed:\n{error}"));
    assert_eq!(out.trim(), "ok");
    // A browser speaks HTTP/1.1 to a cleartext port: no gRPC answers it.
    let address = etcd[0].endpoint;
    let answer = blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let request = "POST /etcdserverpb.KV/Put HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                       Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi";
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await;
    assert!(!answer.contains("200 OK"), "HTTP/1.1 was served: {answer}");
    assert!(
        fleet
            .agent("a1")
            .log_text()
            .lines()
            .all(|l| !l.contains("panicked")),
        "the agent panicked"
    );
}

/// etcdctl and Python's etcd3 keep writing while the core's leader is killed: writes may
/// fail for a moment, but every acknowledged one is there afterwards, at every agent.
#[tokio::test(flavor = "multi_thread")]
async fn clients_lose_no_acknowledged_write_when_the_core_leader_dies() {
    let root = tempfile::tempdir().unwrap();
    let (mut fleet, etcd) = fleet(root.path()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let etcdctl_writer = {
        let stop = stop.clone();
        let client = etcd[0].clone();
        tokio::task::spawn_blocking(move || {
            let mut acked = BTreeMap::new();
            let (mut i, mut failures) = (0u32, 0u32);
            while !stop.load(Ordering::Relaxed) {
                let (key, value) = (format!("ctl/{i:06}"), format!("v{i}"));
                match client.run(&["put", &key, &value]) {
                    Ok(_) => {
                        acked.insert(key, (value, Instant::now()));
                        i += 1;
                    }
                    Err(_) => failures += 1,
                }
            }
            (acked, failures)
        })
    };
    let python_endpoint = etcd[1].endpoint.to_string();
    let python_writer = tokio::task::spawn_blocking(move || {
        run_python(
            "etcd3_writer.py",
            &[python_endpoint, "py/".into(), "9".into()],
        )
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = fleet.core.wait_for_leader(Duration::from_secs(10)).await;
    fleet.core.kill(leader);
    let killed = Instant::now();
    let new_leader = fleet.core.wait_for_leader(Duration::from_secs(20)).await;
    assert_ne!(new_leader, leader);
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let (ctl_acked, ctl_failures) = etcdctl_writer.await.unwrap();
    let python_out = python_writer
        .await
        .unwrap()
        .unwrap_or_else(|error| panic!("the etcd3 writer failed:\n{error}"));
    let mut acked: BTreeMap<String, String> = ctl_acked
        .iter()
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect();
    for line in python_out.lines().filter(|l| !l.starts_with('#')) {
        let mut parts = line.split_whitespace();
        if let (Some(key), Some(value)) = (parts.next(), parts.next()) {
            acked.insert(key.to_string(), value.to_string());
        }
    }
    let after_kill = ctl_acked.values().filter(|(_, at)| *at > killed).count();
    assert!(
        after_kill > 0,
        "etcdctl made no write after the leader died"
    );
    assert!(
        python_out.lines().filter(|l| !l.starts_with('#')).count() > 0,
        "{python_out}"
    );
    eprintln!(
        "leader killed: {} writes acknowledged ({} by etcdctl, {after_kill} after the kill, \
         {ctl_failures} failed and retried), python: {}",
        acked.len(),
        ctl_acked.len(),
        python_out.lines().last().unwrap_or_default()
    );
    let clients = etcd.clone();
    blocking(move || {
        for client in &clients {
            for prefix in ["ctl/", "py/"] {
                let out = client.ok(&["get", prefix, "--prefix"]);
                let found: BTreeMap<&str, &str> = lines(&out)
                    .chunks(2)
                    .map(|pair| (pair[0], pair.get(1).copied().unwrap_or("")))
                    .collect();
                for (key, value) in acked.iter().filter(|(k, _)| k.starts_with(prefix)) {
                    assert_eq!(
                        found.get(key.as_str()),
                        Some(&value.as_str()),
                        "acknowledged {key}={value} is missing at {}",
                        client.endpoint
                    );
                }
            }
        }
    })
    .await;
    // Every agent still serves.
    for client in etcd {
        wait_until(
            Duration::from_secs(10),
            "a write after the failover",
            || {
                let client = client.clone();
                async move { blocking(move || client.run(&["put", "after", "1"]).ok()).await }
            },
        )
        .await;
    }
}
