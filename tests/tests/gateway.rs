//! The HTTP gateway and the status page, driven over real sockets against a real fleet
//! (three `corral core` processes, agents as `corral agent` processes), and the page in a
//! real headless chromium.

use std::time::Duration;

use corral_proto::api::MemberState;
use corral_tests::browser::Browser;
use corral_tests::http::{self, EventStream};
use corral_tests::{Fleet, wait_until};

/// Keys over HTTP: status codes, read-your-writes, consistent reads, CAS conflicts.
#[tokio::test(flavor = "multi_thread")]
async fn keys_over_http_have_the_right_status_codes_and_conflicts() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 1).await;
    let gw = fleet.gateway("a1").await;

    let put = http::request(gw, "PUT", "/v1/kv/app/config", &[], b"v1").await;
    assert_eq!(put.status, 200, "{:?}", put.json());
    let revision = put.json()["revision"].as_u64().unwrap();

    let got = http::get(gw, "/v1/kv/app/config").await;
    assert_eq!(got.status, 200);
    let got = got.json();
    assert_eq!(got["kv"]["value"], "v1");
    assert_eq!(got["kv"]["version"], 1);
    assert!(
        got["revision"].as_u64().unwrap() >= revision,
        "read-your-writes"
    );

    let consistent = http::get(gw, "/v1/kv/app/config?consistent").await;
    assert_eq!(consistent.status, 200);
    assert_eq!(consistent.json()["kv"]["value"], "v1");

    let raw = http::get(gw, "/v1/kv/app/config?raw").await;
    assert_eq!(raw.status, 200);
    assert_eq!(raw.body, b"v1");

    // Compare-and-set: the wrong version is a 409 with the current version.
    let conflict = http::request(gw, "PUT", "/v1/kv/app/config?cas=7", &[], b"v2").await;
    assert_eq!(conflict.status, 409);
    let body = conflict.json();
    assert_eq!(body["code"], "conflict");
    assert_eq!(body["version"], 1);
    let ok = http::request(gw, "PUT", "/v1/kv/app/config?cas=1", &[], b"v2").await;
    assert_eq!(ok.status, 200, "{:?}", ok.json());
    assert_eq!(
        http::get(gw, "/v1/kv/app/config").await.json()["kv"]["value"],
        "v2"
    );
    // cas=0: create only if absent.
    let exists = http::request(gw, "PUT", "/v1/kv/app/config?cas=0", &[], b"v3").await;
    assert_eq!(exists.status, 409);

    let list = http::get(gw, "/v1/kv?prefix=app/").await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json()["keys"].as_array().unwrap().len(), 1);

    let deleted = http::request(gw, "DELETE", "/v1/kv/app/config", &[], b"").await;
    assert_eq!(deleted.status, 200);
    let missing = http::get(gw, "/v1/kv/app/config").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["code"], "not_found");

    // Shards and locks over HTTP.
    assert_eq!(
        http::request(gw, "PUT", "/v1/shards/M3", &[], b"")
            .await
            .status,
        200
    );
    assert_eq!(
        http::request(gw, "PUT", "/v1/shards/M3", &[], b"")
            .await
            .status,
        409
    );
    // What a client takes over HTTP is held by a session it opened.
    let session = http::open_session(gw, 30_000).await;
    let joined = http::request(
        gw,
        "POST",
        &format!("/v1/shards/M3/replicas?session={session}"),
        http::JSON,
        br#"{"address": "10.0.0.7:6379", "priority": 5}"#,
    )
    .await;
    assert_eq!(joined.status, 200, "{:?}", joined.json());
    let shard = http::get(gw, "/v1/shards/M3").await.json();
    assert_eq!(shard["shard"]["master"], "10.0.0.7:6379");
    assert_eq!(shard["shard"]["epoch"], 1);
    assert_eq!(http::get(gw, "/v1/shards/nope").await.status, 404);

    let without = http::request(gw, "POST", "/v1/locks/deploy", &[], b"").await;
    assert_eq!(without.status, 400);
    assert_eq!(without.json()["code"], "session_required");
    let lock_path = format!("/v1/locks/deploy?session={session}");
    let granted = http::request(gw, "POST", &lock_path, &[], b"").await;
    assert_eq!(granted.status, 200);
    assert_eq!(granted.json()["granted"], true);
    let lock = http::get(gw, "/v1/locks/deploy").await.json();
    assert!(lock["lock"]["holder"]["token"].as_u64().unwrap() > 0);
    assert_eq!(lock["lock"]["holder"]["session"], session);
    assert_eq!(
        http::request(gw, "DELETE", &lock_path, &[], b"")
            .await
            .status,
        200
    );

    let metrics = http::get(gw, "/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.body).unwrap();
    for series in [
        "corral_core_up 1",
        "corral_core_term ",
        "corral_core_commit_index ",
        "corral_agent_replica_revision ",
        "corral_agent_members{state=\"alive\"} 1",
        "corral_agent_watch_lag_revisions ",
        "corral_agent_request_duration_seconds_count{kind=\"write\"} ",
        "corral_http_request_duration_seconds_bucket{le=\"+Inf\"} ",
    ] {
        assert!(text.contains(series), "/metrics lacks {series:?}:\n{text}");
    }
    // A healthy feed opened one watch stream, or two if it started on the leader and left
    // it for a follower; more means it kept losing its stream.
    let streams: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("corral_agent_replica_feed_streams_total "))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("/metrics lacks the feed's stream count:\n{text}"));
    assert!(
        (1..=3).contains(&streams),
        "the replica feed opened {streams} watch streams"
    );
}

/// Bad http::JSON, bad parameters, unknown routes, wrong methods and oversized bodies get http::JSON
/// errors with a stable code; the gateway carries on.
#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_json_errors() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 1).await;
    let gw = fleet.gateway("a1").await;
    assert_eq!(
        http::request(gw, "PUT", "/v1/shards/M1", &[], b"")
            .await
            .status,
        200
    );

    let long_key = format!("/v1/kv/{}", "k".repeat(5000));
    let session = http::open_session(gw, 30_000).await;
    let replicas = format!("/v1/shards/M1/replicas?session={session}");
    let instance = format!("/v1/services/api/x?session={session}");
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("POST", &replicas, b"{not json".to_vec(), 400, "bad_json"),
        (
            "POST",
            &replicas,
            br#"{"address": 7}"#.to_vec(),
            400,
            "bad_json",
        ),
        (
            "POST",
            &replicas,
            br#"{"address": "a:1", "evil": 1}"#.to_vec(),
            400,
            "bad_json",
        ),
        ("PUT", &instance, b"[]".to_vec(), 400, "bad_json"),
        (
            "POST",
            "/v1/shards/M1/replicas?session=12x",
            b"{}".to_vec(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/sessions",
            br#"{"ttl_ms": 1}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "PUT",
            "/v1/sessions/999999/renew",
            Vec::new(),
            404,
            "no_session",
        ),
        (
            "POST",
            "/v1/locks/x?session=999999",
            Vec::new(),
            404,
            "no_session",
        ),
        ("PUT", "/v1/kv/k?cas=abc", b"v".to_vec(), 400, "bad_request"),
        (
            "GET",
            "/v1/kv/k?consistent=maybe",
            Vec::new(),
            400,
            "bad_request",
        ),
        (
            "GET",
            "/v1/watch?from=yesterday",
            Vec::new(),
            400,
            "bad_request",
        ),
        ("GET", "/v1/nothing/here", Vec::new(), 404, "not_found"),
        ("PATCH", "/v1/status", Vec::new(), 405, "method_not_allowed"),
        (
            "PUT",
            "/v1/kv/big",
            vec![b'x'; 2 * 1024 * 1024],
            413,
            "too_large",
        ),
        ("PUT", "/v1/kv/", b"v".to_vec(), 404, "not_found"),
        ("PUT", &long_key, b"v".to_vec(), 400, "invalid"),
    ];
    for (method, path, body, status, code) in cases {
        let response = http::request(gw, method, path, http::JSON, &body).await;
        assert_eq!(
            response.status,
            status,
            "{method} {path}: {:?}",
            String::from_utf8_lossy(&response.body)
        );
        let json = response.json();
        assert_eq!(json["code"], code, "{method} {path}: {json}");
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let resume = http::request(gw, "GET", "/v1/watch", &[("Last-Event-ID", "soon")], b"").await;
    assert_eq!(resume.status, 400);
    assert_eq!(resume.json()["code"], "bad_request");
    // Still serving.
    assert_eq!(http::get(gw, "/v1/status").await.status, 200);
}

/// The watch stream starts at a given revision, and resumes after Last-Event-ID.
#[tokio::test(flavor = "multi_thread")]
async fn the_watch_stream_resumes_from_a_revision() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 2).await;
    let gw1 = fleet.gateway("a1").await;
    let gw2 = fleet.gateway("a2").await;
    // a2's replica must hold a base before the writes, or they come to it inside that
    // base and a watch from before it rightly starts with a reset.
    let a2 = fleet.client("a2").await;
    wait_until(Duration::from_secs(10), "a2's replica to be fed", || {
        let a2 = a2.clone();
        async move {
            let status = a2.status().await.ok()?;
            (status.feed.is_some() && status.revision > 0).then_some(())
        }
    })
    .await;
    let mut revisions = Vec::new();
    for i in 1..=3 {
        let put = http::request(
            gw1,
            "PUT",
            &format!("/v1/kv/w/k{i}"),
            &[],
            format!("{i}").as_bytes(),
        )
        .await;
        revisions.push(put.json()["revision"].as_u64().unwrap());
    }

    // From the second write, inclusive, on another agent.
    let path = format!("/v1/watch?prefix=w/&from={}", revisions[1]);
    let mut stream = EventStream::open(gw2, &path, &[]).await;
    assert_eq!(stream.status, 200);
    let first = stream
        .next(Duration::from_secs(10))
        .await
        .expect("an event");
    assert_eq!(first.event, "events");
    assert_eq!(first.id.as_deref(), Some(revisions[1].to_string().as_str()));
    assert_eq!(first.json()["Events"]["events"][0]["KeyPut"]["key"], "w/k2");
    let second = stream
        .next(Duration::from_secs(10))
        .await
        .expect("an event");
    assert_eq!(
        second.id.as_deref(),
        Some(revisions[2].to_string().as_str())
    );
    // A write after the stream opened arrives live.
    let put = http::request(gw1, "PUT", "/v1/kv/w/k4", &[], b"4").await;
    let live = stream
        .next(Duration::from_secs(10))
        .await
        .expect("a live event");
    assert_eq!(live.id, Some(put.json()["revision"].to_string()));
    assert_eq!(live.json()["Events"]["events"][0]["KeyPut"]["value"], "4");

    // A browser reconnecting with Last-Event-ID resumes right after it.
    let last = revisions[0].to_string();
    let mut resumed =
        EventStream::open(gw2, "/v1/watch?prefix=w/", &[("Last-Event-ID", &last)]).await;
    let next = resumed
        .next(Duration::from_secs(10))
        .await
        .expect("an event");
    assert_eq!(next.id.as_deref(), Some(revisions[1].to_string().as_str()));
}

/// The status page, loaded in headless chromium, shows the members, and then shows one
/// going down without being reloaded.
#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_a_member_going_down() {
    let root = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::start(root.path(), 3).await;
    let names = fleet.names();
    fleet
        .wait_for_members(&names, &names, Duration::from_secs(20))
        .await;
    let gw = fleet.gateway("a1").await;
    let page = http::get(gw, "/").await;
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("<table"));

    let mut browser = Browser::open(&format!("http://{gw}/")).await;
    let rows = "Array.from(document.querySelectorAll('tr[data-member]'))\
                .map(r => r.dataset.member + '=' + r.dataset.state).join(',')";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let shown = browser.evaluate(rows).await;
        if shown == "a1=Alive,a2=Alive,a3=Alive" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the page shows {shown}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    fleet.kill_agent("a3");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let shown = browser.evaluate(rows).await;
        if shown.as_str().is_some_and(|s| s.contains("a3=Down")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the page still shows {shown} 15 s after a3 was killed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The page's own gateway agrees.
    let members = http::get(gw, "/v1/members").await.json();
    let a3 = members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "a3")
        .unwrap();
    assert_eq!(a3["state"], format!("{:?}", MemberState::Down));
}
