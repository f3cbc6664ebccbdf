//! The voting core as real processes on loopback: election, durability across a leader
//! kill, restart from disk, a full disk, catch-up of a wiped member through a snapshot, membership
//! changes, and refusal of foreign certificates and bad frames.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use corral_core::raft_rpc::{ALPN_RAFT, RaftRequest, RaftResponse};
use corral_core::raft_types::{Entry, LogId, Proposal};
use corral_core::state::StateMachine;
use corral_core::storage::{SnapshotFile, wal};
use corral_net::client::ClientError;
use corral_net::rpc::{ALPN_CORE, CoreError, CoreRequest, CoreResponse};
use corral_net::transport::{QuicTransport, TlsIdentity};
use corral_proto::{Answer, Command, SessionOwner};
use corral_tests::core_cluster::{admin_client, client_as};
use corral_tests::{CoreCluster, CoreOptions, Pki, SmallDisk, wait_until};
use openraft::EntryPayload;

const STARTUP: Duration = Duration::from_secs(20);
/// The longest a leader's SIGKILL may leave the core without one, by the default timers: a
/// follower that had a leader waits out its lease (the maximum election timeout, 1 s) and
/// its own election timeout (0.5–1 s); if the first to try holds the shorter log, the
/// other refuses it, adopts its term and starts its own timeout (up to 1 s more). That is
/// 3 s, plus the RPCs and a loaded test machine.
const LEADER_FAILOVER_MAX: Duration = Duration::from_secs(4);

fn put(key: &str, value: &[u8]) -> Command {
    Command::Put {
        key: key.to_string(),
        value: value.to_vec(),
        session: None,
    }
}

/// Three members elect one leader, which serves writes and linearizable reads.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_is_elected_and_serves() {
    let root = tempfile::tempdir().unwrap();
    let cluster = CoreCluster::start(root.path(), CoreOptions::default());
    let leader = cluster.wait_for_leader(STARTUP).await;
    let response = cluster
        .client()
        .write(&put("config/a", b"1"))
        .await
        .unwrap();
    assert!(
        matches!(response.outcome, Ok(Answer::Put(_))),
        "{response:?}"
    );
    let (revision, value) = cluster.client().get("config/a", true).await.unwrap();
    assert_eq!(value.unwrap().value, b"1");
    assert!(revision >= response.revision);
    let status = cluster.status(leader).await.unwrap();
    assert_eq!(status.voters.len(), 3);
}

/// 1,000 acknowledged writes survive SIGKILL of the leader in the middle of the load and
/// are present on both survivors, and a new leader serves a write within
/// [`LEADER_FAILOVER_MAX`] of the kill.
#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_killing_the_leader() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = CoreCluster::start(root.path(), CoreOptions::default());
    let leader = cluster.wait_for_leader(STARTUP).await;

    let client = Arc::new(admin_client(
        &cluster.pki.dir,
        cluster.addresses.values().cloned().collect(),
    ));
    let acknowledged = Arc::new(Acked::default());
    let target = 1000;
    let mut writers = Vec::new();
    for w in 0..8 {
        let client = client.clone();
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while acknowledged.count() < target {
                let key = format!("w/{w}/{i}");
                i += 1;
                if let Ok(response) = client.write(&put(&key, key.as_bytes())).await {
                    assert!(response.outcome.is_ok(), "{response:?}");
                    acknowledged.add(key);
                }
            }
        }));
    }
    wait_until(
        Duration::from_secs(30),
        "400 acknowledged writes",
        || async { (acknowledged.count() >= 400).then_some(()) },
    )
    .await;
    cluster.kill(leader);
    let killed_at = Instant::now();

    // A new leader among the survivors serves a write.
    let survivors: Vec<u64> = cluster
        .addresses
        .keys()
        .copied()
        .filter(|id| *id != leader)
        .collect();
    let survivor_client = admin_client(
        &cluster.pki.dir,
        survivors
            .iter()
            .map(|id| cluster.address(*id).to_string())
            .collect(),
    );
    let new_leader = loop {
        let mut found = None;
        for id in &survivors {
            if let Some(status) = cluster.status(*id).await
                && status.state == "leader"
            {
                found = Some(*id);
            }
        }
        if let Some(id) = found {
            break id;
        }
        assert!(
            killed_at.elapsed() < LEADER_FAILOVER_MAX,
            "no new leader {LEADER_FAILOVER_MAX:?} after the kill:\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let probe = survivor_client
        .write(&put("probe/after-kill", b"x"))
        .await
        .expect("the new leader serves");
    let failover = killed_at.elapsed();
    assert!(probe.outcome.is_ok());
    assert!(
        failover < LEADER_FAILOVER_MAX,
        "new leader {new_leader} served only after {failover:?}"
    );

    for writer in writers {
        writer.await.unwrap();
    }
    let keys = acknowledged.keys();
    assert!(keys.len() >= target);
    cluster
        .wait_for_identical_state(Duration::from_secs(20))
        .await;
    for id in &survivors {
        let mut missing = Vec::new();
        for key in &keys {
            let (_, value) = cluster
                .client()
                .get_local(cluster.address(*id), key)
                .await
                .unwrap();
            if value.map(|v| v.value) != Some(key.as_bytes().to_vec()) {
                missing.push(key.clone());
            }
        }
        assert!(
            missing.is_empty(),
            "member {id} lost {} acknowledged writes: {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }
}

/// Writes `key` until one attempt is acknowledged. A leader that stops mid-write leaves
/// the outcome unknown; the same put again is harmless.
async fn put_acknowledged(cluster: &CoreCluster, key: &str, value: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match cluster.client().write(&put(key, value)).await {
            Ok(response) if response.outcome.is_ok() => return,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "{key} not acknowledged within 20 s: {other:?}\n{}",
                    cluster.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A member whose disk fills up stops with an error that names the cause, and loses
/// nothing it acknowledged; the other two go on serving every write. Once the disk has
/// room again, the member starts from its data directory and catches up.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_whose_disk_fills_up_stops_and_catches_up_once_freed() {
    const DISK_MIB: u64 = 20;
    let root = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&root.path().join("core-3"), DISK_MIB) else {
        return;
    };
    let mut cluster = CoreCluster::start(root.path(), CoreOptions::default());
    cluster.wait_for_leader(STARTUP).await;

    // 128 KiB values until member 3 has stopped: 20 MiB hold fewer than 160 of them.
    let value = vec![0x5a_u8; 128 * 1024];
    let mut written = 0;
    while cluster.process(3).is_running() {
        assert!(
            written < 400,
            "member 3 still runs after {written} writes of 128 KiB onto {DISK_MIB} MiB:\n{}",
            cluster.logs()
        );
        put_acknowledged(&cluster, &format!("fill/{written}"), &value).await;
        written += 1;
    }
    let status = cluster
        .process(3)
        .exit_status()
        .expect("member 3 has exited");
    assert!(
        !status.success(),
        "a member that cannot write its log fails: {status:?}"
    );
    let log = cluster.process(3).log_text();
    assert!(
        log.contains("No space left on device"),
        "member 3's log names the full disk:\n{log}"
    );

    // The two others go on, and every acknowledged write is there (read from the leader,
    // which holds every committed write).
    for i in 0..50 {
        put_acknowledged(&cluster, &format!("after/{i}"), b"x").await;
    }
    for i in 0..written {
        let (_, found) = cluster
            .client()
            .get(&format!("fill/{i}"), false)
            .await
            .unwrap();
        assert_eq!(found.map(|kv| kv.value), Some(value.clone()), "fill/{i}");
    }

    // Room again: member 3 starts from what it has on disk and catches up.
    disk.resize(256);
    cluster.spawn(3);
    let deadline = Instant::now() + Duration::from_secs(60);
    let revision = loop {
        let digests: Vec<_> = [1, 2, 3].into_iter().map(|id| cluster.digest(id)).collect();
        let digests = futures_util::future::join_all(digests).await;
        if let Some(Some((revision, digest))) = digests.first().cloned()
            && digests.iter().all(|d| *d == Some((revision, digest)))
        {
            break revision;
        }
        assert!(
            Instant::now() < deadline,
            "member 3 has not caught up within 60 s: {digests:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (_, last) = cluster
        .client()
        .get_local(cluster.address(3), "after/49")
        .await
        .unwrap();
    assert_eq!(last.map(|kv| kv.value), Some(b"x".to_vec()));
    assert!(revision > written as u64, "{revision}");
}

/// Killing every member and starting them again from their data directories gives the
/// same state, byte for byte, on all three.
#[tokio::test(flavor = "multi_thread")]
async fn restarting_every_member_from_disk_keeps_identical_state() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = CoreCluster::start(
        root.path(),
        CoreOptions {
            snapshot_every: Some(150),
            ..Default::default()
        },
    );
    cluster.wait_for_leader(STARTUP).await;
    let client = cluster.client();
    let session = match client
        .write(&Command::OpenSession {
            owner: SessionOwner::Node {
                name: "host1".into(),
                incarnation: 1,
            },
        })
        .await
        .unwrap()
        .outcome
    {
        Ok(Answer::SessionOpened { session, .. }) => session,
        other => panic!("{other:?}"),
    };
    client
        .write(&Command::CreateShard { name: "M1".into() })
        .await
        .unwrap();
    client
        .write(&Command::RegisterReplica {
            shard: "M1".into(),
            address: "host1:7000".into(),
            priority: 1,
            session,
        })
        .await
        .unwrap();
    client
        .write(&Command::AcquireLock {
            name: "L".into(),
            session,
            wait: false,
        })
        .await
        .unwrap();
    for i in 0..400 {
        client
            .write(&put(&format!("k/{i}"), &[i as u8; 32]))
            .await
            .unwrap();
    }
    let before = cluster
        .wait_for_identical_state(Duration::from_secs(20))
        .await;

    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.spawn(id);
    }
    cluster.wait_for_leader(STARTUP).await;
    let after = cluster
        .wait_for_identical_state(Duration::from_secs(20))
        .await;
    assert_eq!(after, before, "the state after a restart differs");
    let shard = cluster
        .client()
        .get_local(cluster.address(1), "k/399")
        .await
        .unwrap();
    assert_eq!(shard.1.unwrap().value, vec![143u8; 32]);
}

/// Appends to the log in `log_dir` the entry `make` builds from the log's last log id, the
/// way the member's writer does (one batch at the end of the last segment), and returns
/// that last log id. The member must be stopped.
fn append_to_stopped_log(log_dir: &Path, make: impl FnOnce(LogId) -> Entry) -> LogId {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(log_dir)
        .unwrap()
        .map(|item| item.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    let mut replay = wal::Replay::<()>::default();
    let mut tail = 0;
    for path in &segments {
        let decoded = wal::decode_segment(&std::fs::read(path).unwrap()).unwrap();
        assert!(!decoded.torn, "{} is torn", path.display());
        for record in decoded.records {
            replay.apply(record.record, |_| ());
        }
        tail = decoded.valid_len;
    }
    let last = replay
        .finish()
        .unwrap()
        .last_log_id()
        .expect("a log with entries");
    let mut batch = Vec::new();
    let start = wal::begin_batch(&mut batch);
    wal::Record::Entry(make(last)).encode_into(&mut batch);
    assert!(wal::seal_batch(&mut batch, start));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(segments.last().unwrap())
        .unwrap();
    file.write_all_at(&batch, tail as u64).unwrap();
    file.sync_all().unwrap();
    last
}

/// A leader sends entries to its followers before its own copy is on disk, so a leader
/// killed at the wrong moment restarts without an entry a follower holds, under the same
/// leader id. It must not lead again on its old vote: its next entry would carry the same
/// log id as the follower's, which the follower would keep and apply, and the members'
/// states would part for good. Here the follower's extra entry is written into its log
/// while the whole core is stopped; after the restart every member must end with the same
/// state (the entry is either committed everywhere by a new leader, or replaced).
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_leader_that_lost_an_entry_a_follower_holds_does_not_reuse_its_log_id() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = CoreCluster::start(root.path(), CoreOptions::default());
    let leader = cluster.wait_for_leader(STARTUP).await;
    for i in 0..20 {
        put_acknowledged(&cluster, &format!("k/{i}"), b"before").await;
    }
    cluster
        .wait_for_identical_state(Duration::from_secs(20))
        .await;
    for id in 1..=3 {
        cluster.kill(id);
    }
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let last = append_to_stopped_log(&cluster.data_dir(follower).join("log"), |last| Entry {
        log_id: LogId {
            leader_id: last.leader_id,
            index: last.index + 1,
        },
        payload: EntryPayload::Normal(Proposal {
            commands: vec![put("ghost", b"sent before the leader's crash")],
        }),
    });
    assert_eq!(
        last.leader_id.node_id, leader,
        "the follower's last entry is the leader's"
    );
    // The old leader first, and answering, so that it would be back before anyone could
    // stand against it.
    cluster.spawn(leader);
    wait_until(STARTUP, "the old leader to answer", || {
        cluster.status(leader)
    })
    .await;
    for id in (1..=3).filter(|id| *id != leader) {
        cluster.spawn(id);
    }
    cluster.wait_for_leader(STARTUP).await;
    for i in 0..20 {
        put_acknowledged(&cluster, &format!("k/{i}"), b"after").await;
    }
    let (revision, _) = cluster
        .wait_for_identical_state(Duration::from_secs(20))
        .await;
    let ghosts: Vec<bool> = futures_util::future::join_all((1..=3).map(|id| {
        let cluster = &cluster;
        async move {
            let (_, kv) = cluster
                .client()
                .get_local(cluster.address(id), "ghost")
                .await
                .unwrap();
            kv.is_some()
        }
    }))
    .await;
    assert!(
        ghosts.iter().all(|g| *g == ghosts[0]),
        "the follower's entry is on some members only, at revision {revision}: {ghosts:?}"
    );
}

/// The leader compares the members' states while the core is at rest and names a member
/// whose state differs from the others' at the same revision. The difference is made by
/// changing one value in a stopped follower's snapshot file (its checksum made valid
/// again): nothing in Raft notices that, and the member would serve the changed value.
/// A state digest is refused under an agent's certificate.
#[tokio::test(flavor = "multi_thread")]
async fn the_leader_names_a_member_whose_state_differs_at_the_same_revision() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = CoreCluster::start(
        root.path(),
        CoreOptions {
            snapshot_every: Some(20),
            state_check_secs: Some(1),
            ..Default::default()
        },
    );
    let leader = cluster.wait_for_leader(STARTUP).await;
    put_acknowledged(&cluster, "victim", b"original-value-0123").await;
    for i in 0..60 {
        put_acknowledged(&cluster, &format!("k/{i}"), b"later").await;
    }
    let (revision, _) = cluster
        .wait_for_identical_state(Duration::from_secs(20))
        .await;
    let agreed = wait_until(
        Duration::from_secs(20),
        "the leader to find every member's state the same",
        || async {
            let status = cluster.status(leader).await?;
            (status.state_checked == Some(revision)).then_some(status.state_differs)
        },
    )
    .await;
    assert_eq!(agreed, Vec::<u64>::new());

    for id in 1..=3 {
        cluster.kill(id);
    }
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let file = SnapshotFile::new(cluster.data_dir(follower).join("snapshot.bin"));
    let (meta, mut data) = file.read().unwrap().expect("the follower has a snapshot");
    let at = data
        .windows(b"original".len())
        .position(|w| w == b"original")
        .expect("the snapshot holds the value written before it");
    data[at..at + b"ORIGINAL".len()].copy_from_slice(b"ORIGINAL");
    assert!(StateMachine::from_snapshot_bytes(&data).is_ok());
    file.write(&meta, &data).unwrap();
    for id in 1..=3 {
        cluster.spawn(id);
    }
    let new_leader = cluster.wait_for_leader(STARTUP).await;
    let differing = wait_until(
        Duration::from_secs(20),
        "the leader to name the member whose state differs",
        || async {
            let status = cluster.status(new_leader).await?;
            (!status.state_differs.is_empty()).then_some(status.state_differs)
        },
    )
    .await;
    assert_eq!(differing, vec![follower], "leader {new_leader}");
    // The changed member does serve the changed value: only the check tells.
    let (_, value) = cluster
        .client()
        .get_local(cluster.address(follower), "victim")
        .await
        .unwrap();
    assert_eq!(value.unwrap().value, b"ORIGINAL-value-0123");

    // A digest serializes the whole state under the read lock: not for agents.
    cluster.pki.issue("agent-1");
    let members: Vec<String> = (1..=3).map(|i| cluster.address(i).to_string()).collect();
    let agent = client_as(&cluster.pki.dir, "agent-1", members);
    let refused = agent.state_digest(cluster.address(follower)).await;
    assert!(
        matches!(refused, Err(ClientError::Core(CoreError::Forbidden(_)))),
        "{refused:?}"
    );
    assert!(cluster.digest(follower).await.is_some());
}

/// A member whose data directory was wiped rejoins and catches up through a snapshot,
/// because the others compacted the log it would need.
#[tokio::test(flavor = "multi_thread")]
async fn a_wiped_member_catches_up_through_a_snapshot() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = CoreCluster::start(
        root.path(),
        CoreOptions {
            snapshot_every: Some(100),
            ..Default::default()
        },
    );
    let leader = cluster.wait_for_leader(STARTUP).await;
    for i in 0..1000 {
        cluster
            .client()
            .write(&put(&format!("k/{i}"), b"v"))
            .await
            .unwrap();
    }
    let before = cluster
        .wait_for_identical_state(Duration::from_secs(20))
        .await;
    let leader_status = cluster.status(leader).await.unwrap();
    assert!(
        leader_status.purged_index.unwrap_or(0) >= 800,
        "the leader did not compact its log: {leader_status:?}"
    );

    let wiped = (1..=3).find(|id| *id != leader).unwrap();
    cluster.kill(wiped);
    cluster.wipe(wiped);
    cluster.spawn(wiped);
    let after = cluster
        .wait_for_identical_state(Duration::from_secs(30))
        .await;
    assert_eq!(after, before);
    let status = cluster.status(wiped).await.unwrap();
    assert!(
        status.snapshot_index.is_some(),
        "caught up without a snapshot: {status:?}"
    );
    assert!(
        cluster
            .process(wiped)
            .log_text()
            .contains("snapshot installed"),
        "no snapshot was installed:\n{}",
        cluster.logs()
    );
    // And it takes part again: writes go on with the wiped member's vote counted.
    cluster
        .client()
        .write(&put("after/rejoin", b"1"))
        .await
        .unwrap();
    cluster
        .wait_for_identical_state(Duration::from_secs(20))
        .await;
}

/// Voters are added and removed while the core serves writes.
#[tokio::test(flavor = "multi_thread")]
async fn voters_are_added_and_removed_while_serving() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = CoreCluster::start(root.path(), CoreOptions::default());
    cluster.wait_for_leader(STARTUP).await;
    for i in 0..100 {
        cluster
            .client()
            .write(&put(&format!("k/{i}"), b"v"))
            .await
            .unwrap();
    }
    cluster.pki.issue("core-4");
    let address = cluster.add_address(4);
    cluster.spawn(4);
    let status = cluster.client().add_voter(4, address).await.unwrap();
    assert_eq!(
        status.voters.iter().map(|m| m.id).collect::<BTreeSet<_>>(),
        BTreeSet::from([1, 2, 3, 4])
    );
    cluster
        .client()
        .write(&put("after/add", b"1"))
        .await
        .unwrap();
    cluster
        .wait_for_identical_state(Duration::from_secs(20))
        .await;

    let status = cluster.client().remove_voter(1).await.unwrap();
    assert_eq!(
        status.voters.iter().map(|m| m.id).collect::<BTreeSet<_>>(),
        BTreeSet::from([2, 3, 4])
    );
    cluster.kill(1);
    let client = admin_client(
        &cluster.pki.dir,
        (2..=4).map(|id| cluster.address(id).to_string()).collect(),
    );
    let response = client.write(&put("after/remove", b"1")).await.unwrap();
    assert!(response.outcome.is_ok());
    let (_, value) = client.get("k/99", true).await.unwrap();
    assert!(value.is_some());
}

/// A member whose certificate comes from another CA is refused by the others and cannot
/// take part; a tool with such a certificate is refused too.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_with_a_foreign_certificate_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = CoreCluster::start(root.path(), CoreOptions::default());
    // Replace member 3 by an impostor with a certificate from another CA.
    cluster.kill(3);
    cluster.wipe(3);
    let foreign = Pki::new(&root.path().join("foreign"), &["core-3"]);
    let args = cluster.member_args(3, &foreign.dir);
    cluster.spawn_with_args(3, &args);

    // Members 1 and 2 form the cluster and serve without it.
    let client = admin_client(
        &cluster.pki.dir,
        vec![cluster.address(1).into(), cluster.address(2).into()],
    );
    wait_until(STARTUP, "members 1 and 2 serve", || async {
        client.write(&put("a", b"1")).await.ok()
    })
    .await;
    for i in 0..20 {
        client.write(&put(&format!("k/{i}"), b"v")).await.unwrap();
    }
    // The genuine admin cannot talk to the impostor: its certificate is not from our CA.
    let err = cluster
        .client()
        .status(cluster.address(3))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Transport(_)), "{err}");
    // The impostor, asked with its own CA, never received anything from the cluster.
    let foreign_client = admin_client(&foreign.dir, vec![cluster.address(3).into()]);
    let status = foreign_client.status(cluster.address(3)).await.unwrap();
    assert_eq!(status.revision, 0);
    assert_eq!(status.leader, None);
    // And a foreign tool cannot reach the real members.
    let err = foreign_client.status(cluster.address(1)).await.unwrap_err();
    assert!(matches!(err, ClientError::Transport(_)), "{err}");
    assert!(cluster.process(1).is_running() && cluster.process(2).is_running());
}

/// Raft messages are accepted only over a connection whose certificate names the member
/// they claim to come from: an agent's valid certificate cannot forge a vote.
#[tokio::test(flavor = "multi_thread")]
async fn raft_messages_need_the_senders_member_certificate() {
    let root = tempfile::tempdir().unwrap();
    let cluster = CoreCluster::start(root.path(), CoreOptions::default());
    let leader = cluster.wait_for_leader(STARTUP).await;
    cluster.pki.issue("agent-1");
    let raft_transport = transport_with(&cluster, "agent-1", ALPN_RAFT);
    let forged = RaftRequest::Vote(openraft::raft::VoteRequest::new(
        openraft::Vote::new(1000, 2),
        None,
    ));
    let answer: RaftResponse = raft_transport
        .call(
            cluster.address(leader),
            "core",
            &forged,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(
        matches!(&answer, RaftResponse::Refused(why) if why.contains("only from the core member")),
        "{answer:?}"
    );
    let status = cluster.status(leader).await.unwrap();
    assert!(status.term < 1000, "the forged vote raised the term");
    let transport = transport_as(&cluster, "agent-1");
    // The agent certificate cannot change the membership either.
    let answer: CoreResponse = transport
        .call(
            cluster.address(leader),
            "core",
            &CoreRequest::RemoveVoter { id: 1 },
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(
        matches!(answer, CoreResponse::Error(CoreError::Forbidden(_))),
        "{answer:?}"
    );
}

/// Oversized, garbage and truncated frames get a clear error, and the member goes on
/// serving everyone else.
#[tokio::test(flavor = "multi_thread")]
async fn bad_frames_get_an_error_and_the_member_keeps_serving() {
    let root = tempfile::tempdir().unwrap();
    let cluster = CoreCluster::start(root.path(), CoreOptions::default());
    let leader = cluster.wait_for_leader(STARTUP).await;
    let transport = transport_as(&cluster, "admin");
    let connection = transport
        .connection(cluster.address(leader), "core")
        .await
        .unwrap();

    let oversized = ((corral_proto::frame::FRAME_LEN_MAX + 1) as u32)
        .to_be_bytes()
        .to_vec();
    let mut garbage = 64u32.to_be_bytes().to_vec();
    garbage.push(1);
    garbage.extend(std::iter::repeat_n(0xff, 63));
    let mut truncated = 1000u32.to_be_bytes().to_vec();
    truncated.extend([1, 2, 3]);
    let mut wrong_version = 2u32.to_be_bytes().to_vec();
    wrong_version.extend([9, 0]);
    for (what, bytes, expected) in [
        ("oversized", oversized, "exceeds the limit"),
        ("garbage", garbage, "undecodable"),
        ("truncated", truncated, "truncated"),
        ("wrong version", wrong_version, "unsupported frame version"),
    ] {
        let (mut send, mut receive) = connection.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        send.finish().unwrap();
        let answer: CoreResponse =
            corral_proto::frame::read_frame(&mut receive, corral_proto::frame::FRAME_LEN_MAX)
                .await
                .unwrap()
                .unwrap();
        match answer {
            CoreResponse::Error(CoreError::BadRequest(message)) => {
                assert!(message.contains(expected), "{what}: {message}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    let response = cluster
        .client()
        .write(&put("still/serving", b"1"))
        .await
        .unwrap();
    assert!(response.outcome.is_ok());
    let status = cluster.status(leader).await.unwrap();
    assert_eq!(status.state, "leader");
}

/// Keys whose writes were acknowledged, shared by the writer tasks.
#[derive(Default)]
struct Acked {
    keys: std::sync::Mutex<Vec<String>>,
    count: AtomicUsize,
}

impl Acked {
    fn add(&self, key: String) {
        self.keys.lock().unwrap().push(key);
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn keys(&self) -> Vec<String> {
        self.keys.lock().unwrap().clone()
    }
}

/// A leader cut off from its quorum (both followers frozen with SIGSTOP) refuses new
/// writes after about an election timeout, saying why and that nothing was written,
/// instead of holding them until the write timeout; once the followers thaw, the cluster
/// takes writes again.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_without_a_quorum_refuses_writes_at_once() {
    use nix::sys::signal::Signal;

    let root = tempfile::tempdir().unwrap();
    let mut cluster = CoreCluster::start(root.path(), CoreOptions::default());
    let leader = cluster.wait_for_leader(STARTUP).await;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let transport = transport_as(&cluster, "admin");
    let write = |key: &'static str| CoreRequest::Write(put(key, b"v"));
    let answer: CoreResponse = transport
        .call(
            cluster.address(leader),
            "core",
            &write("before"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(matches!(answer, CoreResponse::Write(_)), "{answer:?}");

    for id in &followers {
        cluster.process(*id).signal(Signal::SIGSTOP);
    }
    // Each attempt is one request to the leader, answered well within its 12 s timeout
    // once the leader knows it has no quorum.
    let refusal = wait_until(
        Duration::from_secs(20),
        "the leader refusing a write",
        || {
            let transport = &transport;
            let address = cluster.address(leader).to_string();
            async move {
                match transport
                    .call::<_, CoreResponse>(
                        &address,
                        "core",
                        &write("during"),
                        Duration::from_secs(3),
                    )
                    .await
                {
                    Ok(CoreResponse::Error(CoreError::Unavailable(reason))) => Some(reason),
                    _ => None,
                }
            }
        },
    )
    .await;
    assert!(
        refusal.contains("no quorum") && refusal.contains("nothing was written"),
        "{refusal}"
    );

    for id in &followers {
        cluster.process(*id).signal(Signal::SIGCONT);
    }
    let written = wait_until(
        Duration::from_secs(20),
        "a write after the thaw",
        || async { cluster.client().write(&put("after", b"v")).await.ok() },
    )
    .await;
    assert!(written.outcome.is_ok(), "{written:?}");
}

/// A batch of writes is answered command by command, in order, as if each had been sent on
/// its own: applied ones with rising revisions, refused ones with their own error. A
/// follower refuses the whole batch with one redirect, and an oversized batch is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_batch_answers_each_command_on_its_own() {
    let root = tempfile::tempdir().unwrap();
    let cluster = CoreCluster::start(root.path(), CoreOptions::default());
    let leader = cluster.wait_for_leader(STARTUP).await;
    let commands = vec![
        put("batch/a", b"1"),
        Command::Put {
            key: "batch/ephemeral".into(),
            value: b"x".to_vec(),
            session: Some(987_654),
        },
        put("batch/b", b"2"),
        put(
            &"k".repeat(corral_proto::limits::KEY_LEN_MAX + 1),
            b"too long a key",
        ),
    ];
    let answers = cluster.client().write_batch(&commands).await;
    assert_eq!(answers.len(), 4, "{answers:?}");
    let first = answers[0].as_ref().unwrap();
    assert!(matches!(first.outcome, Ok(Answer::Put(_))), "{first:?}");
    let refused = answers[1].as_ref().unwrap();
    assert!(
        matches!(
            refused.outcome,
            Err(corral_proto::CommandError::NoSuchSession { session: 987_654 })
        ),
        "{refused:?}"
    );
    let third = answers[2].as_ref().unwrap();
    assert!(matches!(third.outcome, Ok(Answer::Put(_))), "{third:?}");
    assert!(third.revision > first.revision, "{answers:?}");
    assert!(
        matches!(answers[3], Err(ClientError::Core(CoreError::Invalid(_)))),
        "{:?}",
        answers[3]
    );
    let (_, value) = cluster.client().get("batch/b", true).await.unwrap();
    assert_eq!(value.unwrap().value, b"2");

    cluster.pki.issue("agent-1");
    let transport = transport_as(&cluster, "agent-1");
    let follower = cluster
        .addresses
        .keys()
        .copied()
        .find(|id| *id != leader)
        .unwrap();
    let answer: CoreResponse = transport
        .call(
            cluster.address(follower),
            "core",
            &CoreRequest::WriteBatch(vec![put("batch/c", b"3"), put("batch/d", b"4")]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(
        matches!(
            &answer,
            CoreResponse::Error(CoreError::NotLeader { leader: Some((id, _)) }) if *id == leader
        ),
        "{answer:?}"
    );
    let oversized = vec![put("batch/e", b"5"); corral_net::rpc::WRITE_BATCH_MAX + 1];
    let answer: CoreResponse = transport
        .call(
            cluster.address(leader),
            "core",
            &CoreRequest::WriteBatch(oversized),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(
        matches!(answer, CoreResponse::Error(CoreError::BadRequest(_))),
        "{answer:?}"
    );
    let (_, value) = cluster.client().get("batch/e", true).await.unwrap();
    assert!(value.is_none(), "the refused batch wrote {value:?}");
}

/// A client transport to the core under the certificate `name` (issued already).
fn transport_as(cluster: &CoreCluster, name: &str) -> QuicTransport {
    transport_with(cluster, name, ALPN_CORE)
}

/// A client transport under the certificate `name` that speaks the protocol `alpn`.
fn transport_with(cluster: &CoreCluster, name: &str, alpn: &[u8]) -> QuicTransport {
    let identity = TlsIdentity::load(&cluster.pki.dir, name).unwrap();
    QuicTransport::client(&identity, &[alpn]).unwrap()
}

/// Waits until the member at `member` says it hears the node `name` (incarnation 1) beat.
async fn wait_until_heard(transport: &QuicTransport, member: &str, name: &str, what: &str) {
    let heard = CoreRequest::Heard {
        name: name.into(),
        incarnation: 1,
    };
    wait_until(STARTUP, what, || {
        let heard = &heard;
        async move {
            match transport
                .call::<_, CoreResponse>(member, "core", heard, Duration::from_secs(5))
                .await
            {
                Ok(CoreResponse::Heard { heard: true, .. }) => Some(()),
                _ => None,
            }
        }
    })
    .await;
}

/// Every request and answer ends its stream right after its one frame, and the other side
/// takes that end: neither tells the other to stop sending, which would cost a packet of
/// its own (and a wake-up of the peer) on every request. A watch stream is not one of
/// those: the watcher's first beat, sent in the very packet of its request, is read as a
/// beat, and the member hears the watcher.
#[tokio::test(flavor = "multi_thread")]
async fn requests_end_their_streams_cleanly_and_a_beat_sent_with_the_watch_request_counts() {
    use corral_net::rpc::WatchBeat;
    use corral_net::transport::quic::call_on;
    use corral_proto::frame;

    let root = tempfile::tempdir().unwrap();
    let cluster = CoreCluster::start(root.path(), CoreOptions::default());
    let leader = cluster.wait_for_leader(STARTUP).await;
    cluster.pki.issue("agent-1");
    let transport = transport_as(&cluster, "agent-1");

    let connection = transport
        .connection(cluster.address(leader), "core")
        .await
        .unwrap();
    for i in 0..20 {
        let answer: CoreResponse = call_on(
            &connection,
            &CoreRequest::Write(put(&format!("ends/{i}"), b"v")),
        )
        .await
        .unwrap();
        assert!(matches!(answer, CoreResponse::Write(_)), "{answer:?}");
    }
    // The member's last answers may still be on their way: what counts is what it sent
    // about our requests, and what we sent about its answers.
    let stats = connection.stats();
    assert_eq!(
        stats.frame_rx.stop_sending, 0,
        "the member stopped reading requests it had read whole"
    );
    assert_eq!(
        stats.frame_tx.stop_sending, 0,
        "the client stopped reading answers it had read whole"
    );

    // The watch request and the first beat, in one write: the member reads the beat.
    let member = cluster.address(2);
    let connection = transport.connection(member, "core").await.unwrap();
    let (mut send, mut receive) = connection.open_bi().await.unwrap();
    let mut bytes = frame::encode(&CoreRequest::Watch { after: None }).unwrap();
    bytes.extend(
        frame::encode(&WatchBeat {
            name: "agent-1".into(),
            incarnation: 1,
            seq: 1,
        })
        .unwrap(),
    );
    send.write_all(&bytes).await.unwrap();
    let admin = transport_as(&cluster, "admin");
    wait_until_heard(
        &admin,
        member,
        "agent-1",
        "member 2 to hear the beat sent with the request",
    )
    .await;
    // And the stream is still open: it carries the member's items, and its progress
    // items echo the beat (what lets the watcher date how fresh its copy is).
    let echoed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let item = frame::read_frame::<_, corral_net::rpc::WatchItem>(&mut receive, 1 << 20)
                .await
                .unwrap()
                .expect("the member ended the watch stream");
            if let corral_net::rpc::WatchItem::Progress {
                beat: Some(seq), ..
            } = item
            {
                break seq;
            }
        }
    })
    .await
    .expect("a progress item echoing the beat within 5 s");
    assert_eq!(echoed, 1);
}

/// A node's session is opened and renewed only under its own certificate (or an admin's),
/// and a death report of a node that beats on a watch stream is refused until its beats
/// stop; a beat under a name the certificate does not carry ends the stream.
#[tokio::test(flavor = "multi_thread")]
async fn the_core_refuses_to_close_a_node_it_hears_and_binds_node_sessions_to_certificates() {
    use corral_net::rpc::WatchBeat;
    use corral_proto::{CommandError, frame};

    let root = tempfile::tempdir().unwrap();
    let cluster = CoreCluster::start(root.path(), CoreOptions::default());
    cluster.wait_for_leader(STARTUP).await;
    let members: Vec<String> = (1..=3).map(|i| cluster.address(i).to_string()).collect();
    for name in ["agent-1", "agent-2"] {
        cluster.pki.issue(name);
    }
    let agent = client_as(&cluster.pki.dir, "agent-1", members.clone());
    let open = |name: &str, incarnation| Command::OpenSession {
        owner: SessionOwner::Node {
            name: name.into(),
            incarnation,
        },
    };
    // Another node's session, under agent-1's certificate: refused, nothing written.
    for command in [
        open("agent-2", 1),
        Command::RenewNode {
            name: "agent-2".into(),
            from: 1,
            to: 2,
        },
    ] {
        let error = agent.write(&command).await.unwrap_err();
        assert!(
            matches!(error, ClientError::Core(CoreError::Forbidden(_))),
            "{error}"
        );
    }
    let session = match agent.write(&open("agent-1", 1)).await.unwrap().outcome {
        Ok(Answer::SessionOpened { session, .. }) => session,
        other => panic!("{other:?}"),
    };

    // agent-1 beats on a watch stream to member 2, which need not be the leader.
    let mut stream = agent.watch(cluster.address(2), None).await.unwrap();
    let mut beats = stream.take_beat_sender().unwrap();
    let beating = tokio::spawn(async move {
        loop {
            let beat = WatchBeat {
                name: "agent-1".into(),
                incarnation: 1,
                seq: 1,
            };
            if frame::write_frame(&mut beats, &beat).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // Member 2 hears agent-1 once its first beat arrived: only then is a report refused.
    let transport = transport_as(&cluster, "admin");
    wait_until_heard(
        &transport,
        cluster.address(2),
        "agent-1",
        "member 2 to hear agent-1",
    )
    .await;
    let admin = cluster.client();
    let report = Command::CloseNode {
        name: "agent-1".into(),
        incarnation: 1,
    };
    let refused = match admin.write(&report).await {
        Err(ClientError::Core(CoreError::NodeAlive { member, .. })) => member,
        other => panic!("a report of a node the core hears: {other:?}"),
    };
    assert_eq!(refused, 2, "member 2 hears agent-1");
    let open_client = || async move {
        admin
            .write(&Command::OpenSession {
                owner: SessionOwner::Client {
                    node_session: session,
                    client_key: 1,
                    label: String::new(),
                },
            })
            .await
            .unwrap()
            .outcome
    };
    // The session is still open: a client session opens under it.
    assert!(open_client().await.is_ok());

    // The beats stop: the stream ends, the member forgets agent-1 at once, the report goes
    // through and the session is closed.
    beating.abort();
    drop(stream);
    let closed = wait_until(STARTUP, "the report committed", || {
        let (admin, report) = (admin, &report);
        async move {
            match admin.write(report).await {
                Ok(response) => match response.outcome {
                    Ok(Answer::SessionsClosed { sessions }) => Some(sessions),
                    _ => None,
                },
                Err(_) => None,
            }
        }
    })
    .await;
    assert!(closed.contains(&session), "{closed:?}");
    assert!(matches!(
        open_client().await,
        Err(CommandError::NoSuchSession { .. })
    ));

    // A beat under a name the certificate does not carry ends the stream.
    let mut stream = agent.watch(cluster.address(2), None).await.unwrap();
    let mut beats = stream.take_beat_sender().unwrap();
    let impostor = WatchBeat {
        name: "agent-2".into(),
        incarnation: 1,
        seq: 1,
    };
    frame::write_frame(&mut beats, &impostor).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.next().await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream went on after a forged beat");
}
