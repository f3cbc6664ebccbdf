//! Who may act, tried as an attacker would, against a real fleet (three `corral core`
//! processes, agents as `corral agent` processes) over real sockets: HTTP sessions and
//! their time-to-live, ownership enforced by the core across hosts and within one, the
//! gateway's refusal of hostile pages, and its bounds on connections.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use corral_net::client::ClientError;
use corral_net::rpc::CoreError;
use corral_proto::api::{AgentRequest, EventFilter, Query, QueryResult, SubscriptionItem};
use corral_proto::{Answer, Command, CommandError, Event};
use corral_tests::core_cluster::client_as;
use corral_tests::http;
use corral_tests::{Fleet, wait_until};

/// The holder of lock `name` as the agent's replica shows it.
async fn holder(gw: SocketAddr, name: &str) -> Option<u64> {
    let lock = http::get(gw, &format!("/v1/locks/{name}")).await;
    if lock.status == 404 {
        return None;
    }
    lock.json()["lock"]["holder"]["session"].as_u64()
}

/// Two HTTP sessions race for one lock, each taking and releasing it twenty times:
/// every grant is to the asking session and, in the lock's own event history, no grant
/// ever comes while another session holds it. A session not renewed then loses its lock
/// one time-to-live later; one kept alive by its keep-alive stream does not.
#[tokio::test(flavor = "multi_thread")]
async fn http_sessions_hold_a_lock_one_at_a_time_and_end_with_their_time_to_live() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 1).await;
    let gw = fleet.gateway("a1").await;
    let observer = fleet.client("a1").await;
    let mut events = observer
        .subscribe(
            EventFilter {
                locks: true,
                ..EventFilter::nothing()
            },
            None,
        )
        .await
        .unwrap();

    let sessions = [
        http::open_session(gw, 30_000).await,
        http::open_session(gw, 30_000).await,
    ];
    let rounds = 20;
    let racers = sessions.map(|session| {
        tokio::spawn(async move {
            let path = format!("/v1/locks/race?session={session}&wait_ms=10000");
            for round in 0..rounds {
                let granted = http::request(gw, "POST", &path, &[], b"").await;
                assert_eq!(granted.status, 200, "round {round}: {:?}", granted.json());
                let grant = granted.json();
                assert_eq!(grant["granted"], true);
                assert_eq!(grant["answer"]["LockGranted"]["session"], session);
                tokio::time::sleep(Duration::from_millis(5)).await;
                let released = http::request(gw, "DELETE", &path, &[], b"").await;
                assert_eq!(released.status, 200, "{:?}", released.json());
            }
        })
    });
    for racer in racers {
        racer.await.unwrap();
    }
    // Replay the lock's history: a grant while another session holds it is two holders.
    let mut held_by: Option<u64> = None;
    let mut grants = 0;
    while grants < 2 * rounds || held_by.is_some() {
        let item = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("the lock's events")
            .expect("an open subscription");
        let SubscriptionItem::Events(batch) = item else {
            continue;
        };
        for event in batch.events {
            match event {
                Event::LockGranted { name, grant } if name == "race" => {
                    assert!(
                        held_by.is_none(),
                        "revision {}: granted to {} while {held_by:?} holds it",
                        batch.revision,
                        grant.session
                    );
                    assert!(sessions.contains(&grant.session));
                    held_by = Some(grant.session);
                    grants += 1;
                }
                Event::LockReleased { name, session } if name == "race" => {
                    assert_eq!(held_by, Some(session), "a release by a non-holder");
                    held_by = None;
                }
                _ => {}
            }
        }
    }
    assert_eq!(grants, 2 * rounds);

    // A session that is not renewed ends one time-to-live after its last renewal, and
    // its lock with it.
    let idle = http::open_session(gw, 1_000).await;
    let kept = http::open_session(gw, 1_000).await;
    let take = |session: u64, name: &str| {
        let path = format!("/v1/locks/{name}?session={session}");
        async move { http::request(gw, "POST", &path, &[], b"").await }
    };
    assert_eq!(take(idle, "idle").await.status, 200);
    assert_eq!(take(kept, "kept").await.status, 200);
    let renewed = Instant::now();
    let mut keepalive =
        http::EventStream::open(gw, &format!("/v1/sessions/{kept}/keepalive"), &[]).await;
    assert_eq!(keepalive.status, 200);
    wait_until(
        Duration::from_secs(5),
        "the idle session's lock to go",
        || async move { holder(gw, "idle").await.is_none().then_some(()) },
    )
    .await;
    let ended_after = renewed.elapsed();
    assert!(
        ended_after >= Duration::from_millis(900),
        "ended {ended_after:?} after its renewal, before its time-to-live"
    );
    println!("a 1 s session without renewal ended its lock after {ended_after:?}");
    let renew = http::request(gw, "PUT", &format!("/v1/sessions/{idle}/renew"), &[], b"").await;
    assert_eq!(renew.status, 404, "an ended session cannot be renewed");
    // The kept session outlives three of its time-to-lives.
    for _ in 0..6 {
        let event = keepalive
            .next(Duration::from_secs(2))
            .await
            .expect("a renewal on the keep-alive stream");
        assert_eq!(event.event, "renewed");
    }
    assert_eq!(holder(gw, "kept").await, Some(kept));
    // Deleting a session releases what it held at once.
    let closed = http::request(gw, "DELETE", &format!("/v1/sessions/{kept}"), &[], b"").await;
    assert_eq!(closed.status, 200, "{:?}", closed.json());
    assert_eq!(holder(gw, "kept").await, None);
}

/// What an app on a2 holds (a replica that is its shard's master, a service instance,
/// an ephemeral key, a lock) cannot be removed or taken over from a1's gateway, by a
/// session of a1, by another app on a2, or by a1's certificate at the core; the app
/// itself can.
#[tokio::test(flavor = "multi_thread")]
async fn what_an_app_holds_cannot_be_taken_by_another_host_or_app() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 2).await;
    let gw1 = fleet.gateway("a1").await;
    let gw2 = fleet.gateway("a2").await;
    let app = fleet.client("a2").await;
    app.write(AgentRequest::CreateShard { name: "M3".into() })
        .await
        .unwrap();
    let owned = [
        AgentRequest::JoinShard {
            shard: "M3".into(),
            address: "10.0.0.2:6379".into(),
            priority: 1,
            detach: false,
        },
        AgentRequest::JoinShard {
            shard: "M3".into(),
            address: "10.0.0.3:6379".into(),
            priority: 1,
            detach: false,
        },
        AgentRequest::RegisterService {
            service: "api".into(),
            id: "web-2".into(),
            address: "10.0.0.2".into(),
            port: 80,
            tags: vec![],
            detach: false,
        },
        AgentRequest::Put {
            key: "live/a2".into(),
            value: b"up".to_vec(),
            ephemeral: true,
        },
        AgentRequest::AcquireLock {
            name: "deploy".into(),
            wait_ms: 0,
            detach: false,
        },
    ];
    for request in owned {
        app.write(request).await.unwrap();
    }
    let app_session = app.status().await.unwrap().client_session.unwrap();
    let state_of = |client: corral_proto::AgentClient| async move {
        let shard = client.shard("M3").await.unwrap().unwrap();
        let service = client.service("api").await.unwrap();
        let key = client.get("live/a2").await.unwrap();
        let lock = client.lock("deploy").await.unwrap();
        (
            shard.replicas.len(),
            shard.master,
            shard.epoch,
            service.len(),
            key.is_some(),
            lock.and_then(|l| l.holder).map(|h| h.session),
        )
    };
    let before = state_of(app.clone()).await;
    assert_eq!(before.0, 2);
    assert_eq!(before.5, Some(app_session));

    let attacks = |session: Option<u64>| {
        let q = session.map_or(String::new(), |s| format!("?session={s}"));
        vec![
            (
                "DELETE",
                format!("/v1/shards/M3/replicas/10.0.0.2:6379{q}"),
                String::new(),
            ),
            (
                "POST",
                format!("/v1/shards/M3/handover{q}"),
                r#"{"to": "10.0.0.3:6379"}"#.to_string(),
            ),
            (
                "DELETE",
                format!("/v1/services/api/web-2{q}"),
                String::new(),
            ),
            ("DELETE", format!("/v1/kv/live/a2{q}"), String::new()),
            (
                "DELETE",
                format!(
                    "/v1/kv/live/{}",
                    if q.is_empty() {
                        "?prefix".to_string()
                    } else {
                        format!("{q}&prefix")
                    }
                ),
                String::new(),
            ),
            ("PUT", format!("/v1/kv/live/a2{q}"), "mine now".to_string()),
        ]
    };
    let foreign = http::open_session(gw1, 30_000).await;
    let neighbour = http::open_session(gw2, 30_000).await;
    for (gw, session, who) in [
        (gw1, None, "a1 without a session"),
        (gw1, Some(foreign), "a session of a1"),
        (gw2, None, "another client of a2 without a session"),
        (gw2, Some(neighbour), "another session of a2"),
    ] {
        for (method, path, body) in attacks(session) {
            let response = http::request(gw, method, &path, http::JSON, body.as_bytes()).await;
            assert_eq!(
                response.status,
                403,
                "{who}: {method} {path}: {:?}",
                String::from_utf8_lossy(&response.body)
            );
            let json = response.json();
            assert_eq!(json["code"], "not_owner", "{who}: {method} {path}: {json}");
            let message = json["message"].as_str().unwrap();
            assert!(
                message.contains(&app_session.to_string()),
                "names the owner: {message}"
            );
        }
        // Releasing the app's lock in another session: that session holds nothing.
        let release = http::request(
            gw,
            "DELETE",
            &format!("/v1/locks/deploy?session={}", session.unwrap_or(foreign)),
            &[],
            b"",
        )
        .await;
        assert_ne!(release.status, 200, "{who} released the app's lock");
    }
    // Another session of a2, over the socket, fares no better than over HTTP.
    let other = fleet.client("a2").await;
    let error = other
        .write(AgentRequest::LeaveShard {
            shard: "M3".into(),
            address: "10.0.0.2:6379".into(),
        })
        .await
        .unwrap_err();
    assert!(error.to_string().contains("belongs to session"), "{error}");

    // At the core, a1's certificate can neither end a2's sessions nor act in them.
    let members: Vec<String> = (1..=3).map(|i| fleet.core.address(i).to_string()).collect();
    let a1 = client_as(&fleet.core.pki.dir, "a1", members);
    let node_session = app.status().await.unwrap().node_session.unwrap();
    for command in [
        Command::CloseSession {
            session: node_session,
        },
        Command::CloseSession {
            session: app_session,
        },
        Command::ReleaseLock {
            name: "deploy".into(),
            session: app_session,
        },
        Command::DeregisterReplica {
            shard: "M3".into(),
            address: "10.0.0.2:6379".into(),
        },
    ] {
        match a1.write(&command).await {
            Ok(response) => assert!(
                matches!(
                    response.outcome,
                    Err(CommandError::NotOwner { .. } | CommandError::ForeignSession { .. })
                ),
                "{command:?}: {:?}",
                response.outcome
            ),
            Err(error) => assert!(
                matches!(error, ClientError::Core(CoreError::Forbidden(_))),
                "{error}"
            ),
        }
    }
    // A certificate cannot claim to be another.
    let forged = Command::CloseSession {
        session: app_session,
    }
    .acted_by(corral_proto::Actor {
        certificate: "a2".into(),
        session: Some(app_session),
    });
    let error = a1.write(&forged).await.unwrap_err();
    assert!(
        matches!(error, ClientError::Core(CoreError::Forbidden(_))),
        "{error}"
    );

    assert_eq!(state_of(app.clone()).await, before, "nothing changed");
    // The owner itself may.
    let (_, answer) = app
        .write(AgentRequest::Handover {
            shard: "M3".into(),
            to: Some("10.0.0.3:6379".into()),
            epoch: None,
        })
        .await
        .unwrap();
    assert!(matches!(answer, Answer::HandedOver { .. }), "{answer:?}");
    app.write(AgentRequest::DeregisterService {
        service: "api".into(),
        id: "web-2".into(),
    })
    .await
    .unwrap();
    assert!(app.service("api").await.unwrap().is_empty());
}

/// A page on another site, or one reached through a rebound DNS name, can change
/// nothing: a cross-origin form post, a cross-site fetch and a foreign Host are refused
/// before any route, and a http::JSON route needs a http::JSON body.
#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_web_page_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 1).await;
    let gw = fleet.gateway("a1").await;
    assert_eq!(
        http::request(gw, "PUT", "/v1/kv/config/mode", &[], b"safe")
            .await
            .status,
        200
    );
    assert_eq!(
        http::request(gw, "PUT", "/v1/shards/M3", &[], b"")
            .await
            .status,
        200
    );
    let session = http::open_session(gw, 30_000).await;
    let join = format!("/v1/shards/M3/replicas?session={session}");
    let body = br#"{"address": "6.6.6.6:6379", "priority": 100}"#;
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "POST",
            &join,
            vec![
                ("Content-Type", "text/plain"),
                ("Origin", "http://evil.example"),
            ],
            403,
            "cross_origin",
        ),
        (
            "POST",
            &join,
            vec![
                ("Content-Type", "application/json"),
                ("Origin", "http://evil.example"),
            ],
            403,
            "cross_origin",
        ),
        (
            "POST",
            "/v1/shards/M3/handover",
            vec![("Content-Type", "text/plain"), ("Origin", "null")],
            403,
            "cross_origin",
        ),
        (
            "POST",
            &join,
            vec![
                ("Content-Type", "text/plain"),
                ("Sec-Fetch-Site", "cross-site"),
            ],
            403,
            "cross_origin",
        ),
        (
            "POST",
            &join,
            vec![("Content-Type", "text/plain")],
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            &join,
            vec![("Content-Type", "application/x-www-form-urlencoded")],
            415,
            "unsupported_media_type",
        ),
        (
            "PUT",
            "/v1/kv/config/mode",
            vec![("Origin", "http://evil.example")],
            403,
            "cross_origin",
        ),
    ];
    for (method, path, headers, status, code) in cases {
        let response = http::request(gw, method, path, &headers, body).await;
        assert_eq!(response.status, status, "{method} {path} {headers:?}");
        assert_eq!(response.json()["code"], code, "{method} {path} {headers:?}");
    }
    // DNS rebinding: the page's own name, resolved to loopback, in the Host header.
    for (method, path) in [
        ("GET", "/v1/kv/config/mode"),
        ("PUT", "/v1/kv/config/mode"),
        ("GET", "/"),
    ] {
        let response =
            http::request_with_host(gw, "rebind.evil.example", method, path, &[], b"pwned").await;
        assert_eq!(response.status, 403, "{method} {path}");
        assert_eq!(response.json()["code"], "host_not_allowed");
    }
    let shard = http::get(gw, "/v1/shards/M3").await.json();
    assert_eq!(
        shard["shard"]["replicas"].as_array().unwrap().len(),
        0,
        "{shard}"
    );
    assert_eq!(http::get(gw, "/v1/kv/config/mode?raw").await.body, b"safe");
    // Its own status page's origin is welcome.
    let own = format!("http://{gw}");
    let response = http::request(gw, "GET", "/v1/status", &[("Origin", own.as_str())], b"").await;
    assert_eq!(response.status, 200);
}

/// Idle connections cannot starve the agent: past the cap they are closed at once, the
/// socket API and the shard map carry on, and idle ones are closed once their header
/// deadline passes, after which HTTP answers again.
#[tokio::test(flavor = "multi_thread")]
async fn idle_http_connections_are_capped_and_timed_out() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 1).await;
    let gw = fleet.gateway("a1").await;
    let client = fleet.client("a1").await;
    let mut idle = Vec::new();
    for _ in 0..corral_agent::http::HTTP_CONNECTIONS_MAX + 200 {
        match tokio::net::TcpStream::connect(gw).await {
            Ok(stream) => idle.push(stream),
            Err(error) => panic!("connect: {error}"),
        }
    }
    let opened = Instant::now();
    // The socket API still writes and reads.
    client.put("alive", b"yes").await.unwrap();
    let read = client
        .read(Query::Key("alive".into()), false)
        .await
        .unwrap();
    assert!(matches!(read.result, QueryResult::Key(Some(_))));
    // Every idle connection is closed by the gateway within its header deadline (those
    // past the cap at once).
    let deadline = corral_agent::http::HEADER_READ_TIMEOUT + Duration::from_secs(5);
    let mut closed = 0;
    for mut stream in idle {
        let mut byte = [0u8; 1];
        let left = deadline.saturating_sub(opened.elapsed());
        use tokio::io::AsyncReadExt;
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(left, stream.read(&mut byte)).await {
            closed += 1;
        }
    }
    assert_eq!(
        closed,
        corral_agent::http::HTTP_CONNECTIONS_MAX + 200,
        "idle connections left open"
    );
    println!(
        "{closed} idle connections closed within {:?}",
        opened.elapsed()
    );
    assert_eq!(http::get(gw, "/v1/status").await.status, 200);

    // Streams are capped too: per client (here, per source address), and in all.
    let per_client = corral_agent::http::HTTP_WATCHERS_PER_CLIENT_MAX;
    let clients = corral_agent::http::HTTP_WATCHERS_MAX / per_client;
    let mut streams = Vec::new();
    for client in 0..clients {
        let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + client as u8);
        for _ in 0..per_client {
            let stream = http::EventStream::open_from(source, gw, "/v1/watch?locks", &[]).await;
            assert_eq!(stream.status, 200, "client {source}");
            streams.push(stream);
        }
        let refused = http::EventStream::open_from(source, gw, "/v1/watch?locks", &[]).await;
        assert_eq!(refused.status, 429, "client {source} past its share");
    }
    let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + clients as u8);
    let refused = http::EventStream::open_from(source, gw, "/v1/watch?locks", &[]).await;
    assert_eq!(refused.status, 429, "past the gateway's cap");
    // A stream that ends gives its place back.
    drop(streams);
    wait_until(
        Duration::from_secs(5),
        "a place for a stream",
        || async move {
            let stream = http::EventStream::open_from(source, gw, "/v1/watch?locks", &[]).await;
            (stream.status == 200).then_some(())
        },
    )
    .await;
}
