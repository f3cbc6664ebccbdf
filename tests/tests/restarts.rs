//! Restarting agents loses nothing: an agent stopped (SIGTERM) or killed (SIGKILL) and
//! started again with the same name and data directory takes its node session back within
//! the core's node grace, with every shard replica, lock and service bound to it and the
//! sessions its apps hold beyond a connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use corral_proto::api::{AgentRequest, MemberState, SubscriptionItem};
use corral_proto::{Event, EventFilter, Lock, ReconnectingClient, ServiceInstance, Shard};
use corral_tests::fleet::Fleet;
use corral_tests::process::{ChildProcess, wait_until};

const SHARDS: [&str; 3] = ["m1", "m2", "m3"];

/// What the fleet holds that a restart must not change.
#[derive(Debug, PartialEq)]
struct Holdings {
    shards: Vec<Shard>,
    locks: Vec<Option<Lock>>,
    services: Vec<ServiceInstance>,
    /// Each agent's node session, by name.
    node_sessions: Vec<(String, Option<u64>)>,
}

async fn holdings(fleet: &Fleet, on: &str) -> Holdings {
    let client = fleet.client(on).await;
    let mut shards = Vec::new();
    for shard in SHARDS {
        shards.push(
            client
                .shard(shard)
                .await
                .unwrap()
                .expect("the shard exists"),
        );
    }
    let mut node_sessions: Vec<(String, Option<u64>)> = client
        .members()
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.name, m.session))
        .collect();
    node_sessions.sort();
    let mut services = client.service("api").await.unwrap();
    services.extend(client.service("app-api").await.unwrap());
    Holdings {
        shards,
        locks: vec![
            client.lock("leader-job").await.unwrap(),
            client.lock("app-lock").await.unwrap(),
            client.lock("cli-lock").await.unwrap(),
        ],
        services,
        node_sessions,
    }
}

/// Waits until `on` sees all five agents alive, each with a node session.
async fn wait_for_everyone(fleet: &Fleet, on: &str) {
    let client = fleet.client(on).await;
    wait_until(
        Duration::from_secs(30),
        "every agent alive with a session",
        || {
            let client = client.clone();
            async move {
                let members = client.members().await.ok()?;
                (members.len() == 5
                    && members
                        .iter()
                        .all(|m| m.state == MemberState::Alive && m.session.is_some()))
                .then_some(())
            }
        },
    )
    .await;
}

/// Puts `key` bound to a connection opened for it, then closes the connection (which
/// deletes the key and ends the connection's client session).
async fn ephemeral_put(
    socket: &std::path::Path,
    key: &str,
) -> Result<(), corral_proto::ClientError> {
    let client = corral_proto::AgentClient::connect(socket).await?;
    client
        .write(AgentRequest::Put {
            key: key.into(),
            value: b"x".to_vec(),
            ephemeral: true,
        })
        .await?;
    Ok(())
}

/// Three core members, five agents, three shards with a replica on every host, a lock and
/// a service held by apps (detached: the agent holds their sessions beyond the app's
/// connection). Every agent is restarted in turn, first with SIGTERM, then with SIGKILL,
/// while apps write through every agent: the shards' epochs, masters and replicas, the
/// lock's holder and token, the services and every node session are the same at the end.
#[tokio::test(flavor = "multi_thread")]
async fn every_agent_restarted_in_turn_keeps_masters_locks_services_and_sessions() {
    let root = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::start(root.path(), 5).await;
    let names = fleet.names();
    wait_for_everyone(&fleet, "a1").await;

    let first = fleet.client("a1").await;
    for shard in SHARDS {
        first
            .write(AgentRequest::CreateShard { name: shard.into() })
            .await
            .unwrap();
    }
    for (n, name) in names.iter().enumerate() {
        let client = fleet.client(name).await;
        for shard in SHARDS {
            client
                .write(AgentRequest::JoinShard {
                    shard: shard.into(),
                    address: format!("10.0.{n}.1:{}", 7000 + n),
                    priority: 1 + n as u32,
                    detach: true,
                })
                .await
                .unwrap();
        }
    }
    let on_a2 = fleet.client("a2").await;
    let grant = on_a2.call(AgentRequest::AcquireLock {
        name: "leader-job".into(),
        wait_ms: 0,
        detach: true,
    });
    grant.await.unwrap();
    fleet
        .client("a3")
        .await
        .write(AgentRequest::RegisterService {
            service: "api".into(),
            id: "api-a3".into(),
            address: "10.0.2.1".into(),
            port: 8080,
            tags: vec!["v1".into()],
            detach: true,
        })
        .await
        .unwrap();
    drop(on_a2);
    // Apps connected through the client that reconnects by itself: one holds a lock in
    // its session on a2, one a service on a4, and one on a5 follows every write.
    let ttl = Some(Duration::from_secs(10));
    let options = corral_proto::ClientOptions::default();
    let lock_app = ReconnectingClient::connect(&fleet.agent("a2").socket, options, ttl, "lock-app")
        .await
        .unwrap();
    lock_app
        .write_in_session(AgentRequest::AcquireLock {
            name: "app-lock".into(),
            wait_ms: 0,
            detach: false,
        })
        .await
        .unwrap();
    let service_app =
        ReconnectingClient::connect(&fleet.agent("a4").socket, options, ttl, "service-app")
            .await
            .unwrap();
    service_app
        .write_in_session(AgentRequest::RegisterService {
            service: "app-api".into(),
            id: "app-api-a4".into(),
            address: "10.0.3.1".into(),
            port: 9090,
            tags: vec![],
            detach: false,
        })
        .await
        .unwrap();
    let watcher = ReconnectingClient::connect(&fleet.agent("a5").socket, options, None, "watcher")
        .await
        .unwrap();
    let mut subscription = watcher
        .subscribe(EventFilter::keys("w/"), None)
        .await
        .unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(u64, String)>::new()));
    let resets = Arc::new(AtomicU64::new(0));
    let follower = {
        let (seen, resets) = (seen.clone(), resets.clone());
        tokio::spawn(async move {
            while let Some(item) = subscription.next().await {
                match item {
                    SubscriptionItem::Events(batch) => {
                        for event in batch.events {
                            if let Event::KeyPut(kv) = event {
                                seen.lock().unwrap().push((batch.revision, kv.key));
                            }
                        }
                    }
                    SubscriptionItem::Reset { .. } => {
                        resets.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        })
    };
    // `corral lock acquire` holds its lock on a3 while it runs.
    let mut cli = ChildProcess::spawn(
        "lock-acquire",
        &[
            "lock".into(),
            "acquire".into(),
            "cli-lock".into(),
            "--socket".into(),
            fleet.agent("a3").socket.display().to_string(),
        ],
        &root.path().join("lock-acquire.log"),
        &[],
    );
    wait_until(
        Duration::from_secs(10),
        "the command to hold its lock",
        || {
            let client = first.clone();
            async move {
                let lock = client.lock("cli-lock").await.ok()??;
                lock.holder.map(|_| ())
            }
        },
    )
    .await;
    // Every agent holds detached sessions for its replicas: wait until each saved them
    // (within a tick of the expiry task), so that even a first restart by SIGKILL finds them.
    for name in &names {
        let saved = root
            .path()
            .join(format!("agent-{name}"))
            .join("held-sessions.json");
        wait_until(Duration::from_secs(10), "the held sessions saved", || {
            let saved = saved.clone();
            async move { saved.exists().then_some(()) }
        })
        .await;
    }
    wait_for_everyone(&fleet, "a1").await;
    let before = holdings(&fleet, "a1").await;
    for lock in &before.locks {
        assert!(
            lock.as_ref().is_some_and(|l| l.holder.is_some()),
            "{lock:?}"
        );
    }
    assert_eq!(
        before.locks[1]
            .as_ref()
            .and_then(|l| l.holder.as_ref())
            .map(|h| h.session),
        lock_app.session()
    );
    assert_eq!(before.services.len(), 2);
    for shard in &before.shards {
        assert_eq!(shard.replicas.len(), 5, "{shard:?}");
        assert!(shard.master.is_some());
    }

    // Apps write through every agent all along; a write that fails while its agent is
    // down is counted and retried.
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let acked_keys = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for name in &names {
        let socket = fleet.agent(name).socket.clone();
        let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
        let acked_keys = acked_keys.clone();
        let name = name.clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            let mut client = None;
            while !stop.load(Ordering::Relaxed) {
                if client.is_none() {
                    client = corral_proto::AgentClient::connect(&socket).await.ok();
                }
                let Some(c) = &client else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let key = format!("w/{name}/{i}");
                // Every tenth write is an ephemeral key on a connection of its own, closed
                // right after: a client session opened and ended on the restarted agent
                // (which must not take or end a session its predecessor opened).
                let written = if i.is_multiple_of(10) {
                    ephemeral_put(&socket, &key).await
                } else {
                    c.put(&key, b"x").await.map(|_| ())
                };
                match written {
                    Ok(_) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        acked_keys.lock().unwrap().push(key);
                        i += 1;
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        client = None;
                    }
                }
            }
        }));
    }

    let mut downtimes = Vec::new();
    for how in ["SIGTERM", "SIGKILL"] {
        for name in &names {
            let stopped = Instant::now();
            if how == "SIGTERM" {
                assert_eq!(fleet.terminate_agent(name), Some(0), "{name} exits cleanly");
            } else {
                fleet.kill_agent(name);
            }
            fleet.spawn_agent(name);
            let witness = if name == "a1" { "a2" } else { "a1" };
            wait_for_everyone(&fleet, witness).await;
            // Serving again: its node session taken back, its replica caught up.
            let client = fleet.client(name).await;
            let session = before
                .node_sessions
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, s)| *s);
            let took_back = wait_until(
                Duration::from_secs(20),
                "the restarted agent to take its session back",
                || {
                    let client = client.clone();
                    async move {
                        let status = client.status().await.ok()?;
                        let shard = client.shard("m1").await.ok()??;
                        (status.node_session.is_some() && shard.replicas.len() == 5)
                            .then_some(status.node_session)
                    }
                },
            )
            .await;
            assert_eq!(
                took_back, session,
                "{name} came back under another node session"
            );
            downtimes.push((how, name.clone(), stopped.elapsed()));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    eprintln!(
        "writes acknowledged {}, failed while their agent restarted {}",
        acked.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    for (how, name, took) in &downtimes {
        eprintln!("{how} {name}: serving again with its session after {took:?}");
    }
    assert!(acked.load(Ordering::Relaxed) > 100);

    // The apps' sessions never ended, and the subscription missed no acknowledged write
    // and repeated none, across five restarts of its agent.
    assert!(!lock_app.session_ended() && !service_app.session_ended());
    let acked_keys = acked_keys.lock().unwrap().clone();
    wait_until(
        Duration::from_secs(20),
        "the subscriber to see every write",
        || {
            let seen = seen.clone();
            let acked_keys = acked_keys.clone();
            async move {
                let seen: std::collections::HashSet<String> = seen
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(_, k)| k.clone())
                    .collect();
                acked_keys.iter().all(|k| seen.contains(k)).then_some(())
            }
        },
    )
    .await;
    follower.abort();
    let seen = seen.lock().unwrap().clone();
    let revisions: Vec<u64> = seen.iter().map(|(r, _)| *r).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "the subscription repeated or reordered a revision"
    );
    eprintln!(
        "the subscriber on a5 saw {} writes across the restarts, {} resets",
        seen.len(),
        resets.load(Ordering::Relaxed)
    );
    assert_eq!(
        resets.load(Ordering::Relaxed),
        0,
        "the subscription was reset"
    );

    for name in &names {
        wait_for_everyone(&fleet, name).await;
        let after = holdings(&fleet, name).await;
        assert_eq!(
            after,
            before,
            "{name} sees the fleet's holdings changed by the restarts:\n{}",
            fleet.logs()
        );
    }
    // The command still runs, and Ctrl-C (SIGTERM) releases its lock at once.
    assert!(cli.is_running(), "{}", cli.log_text());
    assert_eq!(
        cli.terminate(Duration::from_secs(10)),
        Some(0),
        "{}",
        cli.log_text()
    );
    let on_a1 = fleet.client("a1").await;
    wait_until(
        Duration::from_secs(5),
        "the command's lock to be free",
        || {
            let client = on_a1.clone();
            async move {
                let lock = client.lock("cli-lock").await.ok()?;
                lock.is_none_or(|l| l.holder.is_none()).then_some(())
            }
        },
    )
    .await;
}

/// The agent's fed-bytes counter, from its /metrics page.
async fn fed_bytes(fleet: &Fleet, name: &str) -> u64 {
    let gateway = fleet.gateway(name).await;
    let page = corral_tests::http::get(gateway, "/metrics").await;
    let text = String::from_utf8_lossy(&page.body).to_string();
    text.lines()
        .find_map(|line| {
            line.strip_prefix("corral_agent_replica_fed_bytes_total ")
                .or_else(|| line.strip_prefix("corral_agent_replica_fed_bytes "))
        })
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no fed-bytes counter on the metrics page:\n{text}"))
}

/// Starts agent `name` and answers how long it took to serve reads at `revision` or
/// later, and the bytes it read from the core by then.
async fn start_and_measure(fleet: &mut Fleet, name: &str, revision: u64) -> (Duration, u64) {
    let started = Instant::now();
    fleet.spawn_agent(name);
    let socket = fleet.agent(name).socket.clone();
    wait_until(
        Duration::from_secs(30),
        "the restarted agent to serve",
        || {
            let socket = socket.clone();
            async move {
                let client = corral_proto::AgentClient::connect(&socket).await.ok()?;
                let status = client.status().await.ok()?;
                (status.revision >= revision).then_some(())
            }
        },
    )
    .await;
    let serving = started.elapsed();
    (serving, fed_bytes(fleet, name).await)
}

/// An agent restarted with the replica it saved in its data directory serves reads at
/// once and reads from the core only what changed; without it, it reads the whole state.
/// Prints both (time from start to serving reads, bytes read from the core).
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_agent_catches_up_from_its_own_disk() {
    let root = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::start(root.path(), 1).await;
    let client = fleet.client("a1").await;
    let keys = 5_000u64;
    let mut writers = Vec::new();
    for w in 0..16 {
        let client = client.clone();
        writers.push(tokio::spawn(async move {
            let value = vec![b'v'; 256];
            let mut last = 0;
            for i in (w..keys).step_by(16) {
                last = client.put(&format!("state/{i:05}"), &value).await.unwrap();
            }
            last
        }));
    }
    let mut revision = 0;
    for writer in writers {
        revision = revision.max(writer.await.unwrap());
    }
    drop(client);

    assert_eq!(fleet.terminate_agent("a1"), Some(0));
    let saved = root.path().join("agent-a1").join("replica");
    assert!(saved.exists(), "the agent saved its replica at the stop");
    let (with_time, with_bytes) = start_and_measure(&mut fleet, "a1", revision).await;
    assert_eq!(fleet.terminate_agent("a1"), Some(0));
    std::fs::remove_file(&saved).unwrap();
    let (without_time, without_bytes) = start_and_measure(&mut fleet, "a1", revision).await;
    eprintln!(
        "restart of an agent holding {keys} keys of 256 B (revision {revision}): \
         with its saved replica serving after {with_time:?}, {with_bytes} B from the core; \
         without it after {without_time:?}, {without_bytes} B from the core"
    );
    assert!(
        with_bytes * 10 < without_bytes,
        "with its replica on disk the agent read {with_bytes} B from the core, \
         without it {without_bytes} B"
    );
}

/// Runs `corral agent leave` against `socket`, as user `uid` when given (with group root,
/// which the socket's mode 0660 admits); answers its exit status and output.
fn agent_leave(socket: &std::path::Path, uid: Option<u32>) -> std::process::Output {
    let binary = corral_tests::process::corral_binary();
    let mut command = match uid {
        Some(uid) => {
            let mut command = std::process::Command::new("setpriv");
            command.args([
                format!("--reuid={uid}"),
                "--regid=0".into(),
                "--clear-groups".into(),
            ]);
            command.arg(binary);
            command
        }
        None => std::process::Command::new(binary),
    };
    command.args(["agent", "leave", "--json", "--socket"]);
    command.arg(socket);
    command.output().expect("corral agent leave runs")
}

/// `corral agent leave` on a host that goes away for good: the core closes its node
/// session before the command answers, so a consistent read elsewhere right after it
/// shows the host's shard mastership moved, its lock free and its service gone (no node
/// grace waited out), and the agent exits. Another Unix user is refused and changes
/// nothing.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_told_to_leave_releases_its_host_at_once_and_exits() {
    let root = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::start(root.path(), 2).await;
    let on_a1 = fleet.client("a1").await;
    on_a1
        .write(AgentRequest::CreateShard { name: "m".into() })
        .await
        .unwrap();
    for (agent, address, priority) in [("a1", "10.0.0.1:7000", 30), ("a2", "10.0.0.2:7000", 10)] {
        fleet
            .client(agent)
            .await
            .write(AgentRequest::JoinShard {
                shard: "m".into(),
                address: address.into(),
                priority,
                detach: true,
            })
            .await
            .unwrap();
    }
    on_a1
        .write(AgentRequest::AcquireLock {
            name: "job".into(),
            wait_ms: 0,
            detach: true,
        })
        .await
        .unwrap();
    on_a1
        .write(AgentRequest::RegisterService {
            service: "api".into(),
            id: "api-a1".into(),
            address: "10.0.0.1".into(),
            port: 8080,
            tags: vec![],
            detach: true,
        })
        .await
        .unwrap();
    let status = on_a1.status().await.unwrap();
    let node_session = status.node_session.expect("a1 holds a node session");
    let shard = on_a1.shard("m").await.unwrap().expect("shard m");
    assert_eq!(shard.master.as_deref(), Some("10.0.0.1:7000"));
    drop(on_a1);

    let socket = fleet.agent("a1").socket.clone();
    if nix::unistd::getuid().is_root() {
        // Let group root reach the socket, then ask as user nobody in group root.
        use std::os::unix::fs::PermissionsExt;
        for dir in [
            root.path().to_path_buf(),
            socket.parent().unwrap().to_path_buf(),
        ] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        }
        let refused = agent_leave(&socket, Some(65534));
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success(),
            "nobody made a1 leave: {refused:?}"
        );
        assert!(
            stderr.contains("only root or the agent's own user"),
            "{stderr}"
        );
        let a1 = fleet.client("a1").await;
        assert_eq!(a1.status().await.unwrap().node_session, Some(node_session));
    } else {
        println!("not root: the refusal of another user is not tried");
    }

    let left = agent_leave(&socket, None);
    let stdout = String::from_utf8_lossy(&left.stdout);
    assert!(left.status.success(), "corral agent leave failed: {left:?}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["name"], "a1");
    assert_eq!(answer["node_session"], node_session);
    let closed_at = answer["closed_at_revision"].as_u64().expect("a revision");

    // A consistent read on a2 is at or after the close: everything a1 held is released.
    let a2 = fleet.client("a2").await;
    let read = a2
        .read(corral_proto::api::Query::Shard("m".into()), true)
        .await
        .unwrap();
    assert!(read.revision >= closed_at);
    let corral_proto::api::QueryResult::Shard(Some(shard)) = read.result else {
        panic!("shard m is gone: {:?}", read.result)
    };
    assert_eq!(shard.master.as_deref(), Some("10.0.0.2:7000"), "{shard:?}");
    assert!(shard.epoch > 1, "{shard:?}");
    assert!(
        !shard.replicas.iter().any(|r| r.address == "10.0.0.1:7000"),
        "{shard:?}"
    );
    assert!(
        a2.lock("job")
            .await
            .unwrap()
            .is_none_or(|l| l.holder.is_none())
    );
    assert!(a2.service("api").await.unwrap().is_empty());
    let members = a2.members().await.unwrap();
    assert!(
        members
            .iter()
            .all(|m| m.name != "a1" || m.session != Some(node_session)),
        "{members:?}"
    );
    // The agent exits by itself, with success, and says why in its log.
    let code = wait_until(Duration::from_secs(15), "a1 to exit", || {
        let code = fleet.exit_code("a1");
        async move { code }
    })
    .await;
    assert_eq!(code, 0, "{}", fleet.agent("a1").log_text());
    assert!(
        fleet
            .agent("a1")
            .log_text()
            .contains("asked over the socket to leave")
    );
}
