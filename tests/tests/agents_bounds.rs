//! One careless app cannot take its host down, tried against real `corral agent`
//! processes over their real sockets: a subscriber that never reads, a reply larger than
//! a frame, a frame started and never finished. Each is bounded or refused with a clear
//! error, and nothing the app or anybody else holds is lost.

use std::time::{Duration, Instant};

use corral_proto::api::{
    AgentFrame, AgentRequest, ApiError, ClientFrame, EventFilter, Query, QueryResult,
    SubscriptionItem,
};
use corral_proto::limits::{FRAME_LEN_MAX, VALUE_LEN_MAX};
use corral_proto::{Answer, ClientError, frame};
use corral_tests::http;
use corral_tests::{Fleet, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Resident memory of a process, in bytes.
fn rss_of(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

async fn send_frame(stream: &mut UnixStream, frame: &ClientFrame) {
    stream
        .write_all(&frame::encode(frame).unwrap())
        .await
        .unwrap();
}

/// A subscriber that subscribes to everything and never reads, while 1 MiB values are
/// written as fast as the core takes them: the agent's resident memory grows by at most
/// its bounds (a connection's budget and the replica's history), the host stays alive in
/// the pool, and the subscriber, once it reads, finds its subscription ended with the
/// reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_that_never_reads_is_cut_off_and_the_agent_stays_small() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 2).await;
    let writer = fleet.client("a1").await;
    let names = fleet.names();
    fleet
        .wait_for_members(&names, &names, Duration::from_secs(20))
        .await;
    writer.put("warm", b"up").await.unwrap();
    let pid = fleet.agent("a1").pid();
    let before = rss_of(pid);

    let mut lazy = UnixStream::connect(&fleet.agent("a1").socket)
        .await
        .unwrap();
    let subscribe = ClientFrame {
        id: 1,
        request: AgentRequest::Subscribe {
            filter: EventFilter::everything(),
            after: None,
        },
    };
    send_frame(&mut lazy, &subscribe).await;
    // And an HTTP watcher that never reads either.
    let gw = fleet.agent("a1").http;
    let mut lazy_http = tokio::net::TcpStream::connect(gw).await.unwrap();
    lazy_http
        .write_all(format!("GET /v1/watch HTTP/1.1\r\nHost: {gw}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let value = vec![7u8; VALUE_LEN_MAX];
    let writes = 120;
    let mut peak = before;
    for i in 0..writes {
        writer.put(&format!("big/{}", i % 4), &value).await.unwrap();
        peak = peak.max(rss_of(pid));
    }
    let growth = peak.saturating_sub(before);
    println!(
        "{writes} MiB written past a socket subscriber and an HTTP watcher that never read: agent RSS {} MB before, peak {} MB",
        before / 1_000_000,
        peak / 1_000_000
    );
    // The bounds: 8 MiB queued for each connection, 8 items held by the gateway for its
    // watcher, 16 MiB of replica history, the state itself (4 MiB), the values in flight
    // through the write path and the allocator's slack. Unbounded, the queues grew by
    // over a gigabyte in the same run.
    assert!(
        growth < 192 * 1024 * 1024,
        "the agent grew by {} MB",
        growth / 1_000_000
    );
    // Its host is alive to everybody.
    let other = fleet.client("a2").await;
    let members = other.members().await.unwrap();
    assert!(
        members
            .iter()
            .all(|m| m.state == corral_proto::api::MemberState::Alive),
        "{members:?}"
    );
    // Reading now, the subscriber finds its subscription ended, saying why.
    let mut buffer = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let reason = 'found: loop {
        let mut chunk = vec![0u8; 1 << 20];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, lazy.read(&mut chunk))
            .await
            .expect("the Ended item within 20 s")
            .unwrap();
        assert!(
            n > 0,
            "the agent closed the connection instead of ending the subscription"
        );
        buffer.extend_from_slice(&chunk[..n]);
        while let Ok((message, used)) = frame::decode::<AgentFrame>(&buffer, FRAME_LEN_MAX) {
            buffer.drain(..used);
            if let AgentFrame::Event {
                item: SubscriptionItem::Ended { reason },
                ..
            } = message
            {
                break 'found reason;
            }
        }
    };
    assert!(reason.contains("did not read"), "{reason}");
    // The connection lives on: it can subscribe again from where it was.
    let status = ClientFrame {
        id: 2,
        request: AgentRequest::Status,
    };
    send_frame(&mut lazy, &status).await;
}

/// A list whose answer is larger than a frame gets `too_large` with how to page, over
/// the socket and over HTTP; the connection, its session and the lock it holds live on,
/// and the pages together hold every key.
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_larger_than_a_frame_is_refused_and_the_session_lives_on() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 1).await;
    let app = fleet.client("a1").await;
    let (_, granted) = app
        .write(AgentRequest::AcquireLock {
            name: "held".into(),
            wait_ms: 0,
            detach: false,
        })
        .await
        .unwrap();
    let Answer::LockGranted(grant) = granted else {
        panic!("{granted:?}")
    };
    let value = vec![1u8; VALUE_LEN_MAX];
    for i in 0..6 {
        app.put(&format!("big/{i}"), &value).await.unwrap();
    }
    let listed = app
        .read(
            Query::Prefix {
                prefix: "big/".into(),
                limit: 100,
            },
            false,
        )
        .await;
    match listed {
        Err(ClientError::Api(ApiError::TooLarge { len, max, hint })) => {
            assert!(len > max, "{len} {max}");
            assert!(hint.contains("start_after"), "{hint}");
        }
        other => panic!("expected too_large, got {other:?}"),
    }
    // Same connection, same session: the lock is still ours.
    let lock = app.lock("held").await.unwrap().unwrap();
    assert_eq!(lock.holder.unwrap().session, grant.session);
    assert_eq!(
        app.status().await.unwrap().client_session,
        Some(grant.session)
    );
    // Page through.
    let mut start_after = None;
    let mut seen = Vec::new();
    loop {
        let page = app
            .read(
                Query::Page {
                    prefix: "big/".into(),
                    start_after: start_after.clone(),
                    limit: 2,
                },
                false,
            )
            .await
            .unwrap();
        let QueryResult::Keys { keys, more } = page.result else {
            panic!("keys")
        };
        seen.extend(keys.iter().map(|kv| kv.key.clone()));
        start_after = keys.last().map(|kv| kv.key.clone());
        if !more {
            break;
        }
    }
    assert_eq!(seen, (0..6).map(|i| format!("big/{i}")).collect::<Vec<_>>());

    // Over HTTP: 413 with the code, then pages.
    let gw = fleet.agent("a1").http;
    wait_until(Duration::from_secs(20), "the HTTP gateway", || async move {
        tokio::net::TcpStream::connect(gw).await.ok()
    })
    .await;
    let whole = http::get(gw, "/v1/kv?prefix=big/").await;
    assert_eq!(whole.status, 413);
    assert_eq!(whole.json()["code"], "too_large");
    let page = http::get(gw, "/v1/kv?prefix=big/&start_after=big/3&limit=2").await;
    assert_eq!(page.status, 200);
    let keys: Vec<String> = page.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| kv["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, vec!["big/4", "big/5"]);
    // Shards and locks page the same way.
    for name in ["M1", "M2", "M3"] {
        app.write(AgentRequest::CreateShard { name: name.into() })
            .await
            .unwrap();
    }
    let first = http::get(gw, "/v1/shards?limit=2").await.json();
    assert_eq!(first["shards"].as_array().unwrap().len(), 2, "{first}");
    assert_eq!(first["more"], true);
    let rest = http::get(gw, "/v1/shards?limit=2&start_after=M2")
        .await
        .json();
    assert_eq!(rest["shards"][0]["name"], "M3");
    assert_eq!(rest["more"], false);
    let locks = http::get(gw, "/v1/locks?limit=1").await.json();
    assert_eq!(locks["locks"][0]["name"], "held");
    assert_eq!(locks["more"], false);
    assert_eq!(
        app.lock("held")
            .await
            .unwrap()
            .unwrap()
            .holder
            .unwrap()
            .session,
        grant.session
    );
}

/// A frame whose first bytes came and whose rest never does is answered with an error
/// and closed once the frame's deadline passes; the agent serves everyone else meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_frame_started_and_never_finished_times_out() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 1).await;
    let app = fleet.client("a1").await;
    let mut stuck = UnixStream::connect(&fleet.agent("a1").socket)
        .await
        .unwrap();
    let whole = frame::encode(&ClientFrame {
        id: 9,
        request: AgentRequest::Status,
    })
    .unwrap();
    stuck.write_all(&whole[..3]).await.unwrap();
    let started = Instant::now();
    app.put("meanwhile", b"served").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        corral_agent::api::connection::FRAME_READ_TIMEOUT + Duration::from_secs(5),
        stuck.read_to_end(&mut answer),
    )
    .await
    .expect("closed within the frame deadline")
    .unwrap();
    let waited = started.elapsed();
    assert!(waited >= corral_agent::api::connection::FRAME_READ_TIMEOUT - Duration::from_secs(1));
    let (reply, _) = frame::decode::<AgentFrame>(&answer, FRAME_LEN_MAX).expect("an error frame");
    match reply {
        AgentFrame::Reply {
            result: Err(ApiError::BadRequest(message)),
            ..
        } => assert!(message.contains("not finished"), "{message}"),
        other => panic!("{other:?}"),
    }
}
