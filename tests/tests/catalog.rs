//! What the socket API could do and the command line and HTTP could not: transactions
//! (`corral kv txn`, `POST /v1/txn`), the list of every service (`corral service list`,
//! `GET /v1/services`), leaving and deleting a shard from the command line. Real `corral`
//! processes, over real sockets.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use corral_tests::Fleet;
use corral_tests::http;
use serde_json::{Value, json};

/// Runs `corral ARGS --socket SOCKET`, with `stdin` on its standard input.
fn corral(socket: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(corral_tests::corral_binary())
        .args(args)
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// The JSON a successful command printed.
fn ok_json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn failed_with(output: &Output, text: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "succeeded: {stderr}");
    assert!(stderr.contains(text), "{text:?} not in: {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_run_from_the_command_line_and_over_http() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 1).await;
    let gw = fleet.gateway("a1").await;
    let socket = fleet.agent("a1").socket.clone();

    // Create only if absent, then read: the success branch.
    let create = br#"{"compare": [{"key": "cfg/v", "version": 0}],
                      "success": [{"put": "cfg/v", "value": "1"}, {"put": "cfg/w", "value_hex": "ff00"},
                                  {"get": "cfg/", "prefix": true}],
                      "failure": [{"get": "cfg/v"}]}"#;
    let first = ok_json(&corral(&socket, &["kv", "txn", "--json"], create));
    assert_eq!(first["succeeded"], true, "{first}");
    let read = &first["results"][2]["Range"]["keys"];
    assert_eq!(read[0]["key"], "cfg/v");
    assert_eq!(read[0]["value"], "1");
    assert_eq!(read[1]["value_hex"], "ff00");
    // The same again: the key exists, the failure branch runs and reads it.
    let again = ok_json(&corral(&socket, &["kv", "txn", "--json", "-"], create));
    assert_eq!(again["succeeded"], false, "{again}");
    assert_eq!(again["results"][0]["Range"]["keys"][0]["value"], "1");
    assert!(again["revision"].as_u64() >= first["revision"].as_u64());
    // From a file, in text.
    let file = root.path().join("txn.json");
    std::fs::write(
        &file,
        br#"{"compare": [{"key": "cfg/v", "value": "1"}],
             "success": [{"delete": "cfg/", "prefix": true}]}"#,
    )
    .unwrap();
    let text = corral(&socket, &["kv", "txn", file.to_str().unwrap()], b"");
    assert!(text.status.success(), "{text:?}");
    let printed = String::from_utf8_lossy(&text.stdout);
    assert!(printed.starts_with("success (revision "), "{printed}");
    assert!(printed.contains("deleted 2"), "{printed}");
    // A misspelt condition is an error, not a transaction without it; nothing is written.
    let before = ok_json(&corral(&socket, &["status", "--json"], b""))["revision"].clone();
    let misspelt = br#"{"compare": [{"key": "cfg/v", "verison": 0}],
                        "success": [{"put": "cfg/v", "value": "x"}]}"#;
    failed_with(
        &corral(&socket, &["kv", "txn"], misspelt),
        "unknown field `verison`",
    );
    failed_with(&corral(&socket, &["kv", "txn"], b"not json"), "transaction");
    failed_with(
        &corral(&socket, &["kv", "txn", "/nonexistent/txn.json"], b""),
        "cannot read /nonexistent/txn.json",
    );
    let after = ok_json(&corral(&socket, &["status", "--json"], b""))["revision"].clone();
    assert_eq!(before, after, "a refused transaction wrote nothing");

    // Over HTTP: the same form, the answer under "answer".
    let body = br#"{"compare": [{"key": "web/v", "create_revision": 0}],
                    "success": [{"put": "web/v", "value": "a"}]}"#;
    let done = http::request(gw, "POST", "/v1/txn", http::JSON, body).await;
    assert_eq!(done.status, 200, "{:?}", done.json());
    assert_eq!(done.json()["answer"]["Txn"]["succeeded"], true);
    let repeat = http::request(gw, "POST", "/v1/txn", http::JSON, body).await;
    assert_eq!(repeat.json()["answer"]["Txn"]["succeeded"], false);
    let bad = http::request(gw, "POST", "/v1/txn", http::JSON, br#"{"success": [{}]}"#).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["code"], "bad_txn");
    assert!(
        bad.json()["message"]
            .as_str()
            .unwrap()
            .contains("success 0: give exactly one of put, delete and get"),
        "{:?}",
        bad.json()
    );
    // A form post from a page is refused before it is read.
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    assert_eq!(
        http::request(gw, "POST", "/v1/txn", &form, body)
            .await
            .status,
        415
    );
    // An ephemeral put needs the session that will hold the key.
    let ephemeral = br#"{"success": [{"put": "web/e", "value": "x", "ephemeral": true}]}"#;
    let unbound = http::request(gw, "POST", "/v1/txn", http::JSON, ephemeral).await;
    assert_eq!(unbound.status, 400);
    assert_eq!(unbound.json()["code"], "session_required");
    let session = http::open_session(gw, 30_000).await;
    let path = format!("/v1/txn?session={session}");
    let bound = http::request(gw, "POST", &path, http::JSON, ephemeral).await;
    assert_eq!(bound.status, 200, "{:?}", bound.json());
    let key = http::get(gw, "/v1/kv/web/e").await.json();
    assert_eq!(key["kv"]["session"], session);
    let closed = http::request(gw, "DELETE", &format!("/v1/sessions/{session}"), &[], b"").await;
    assert_eq!(closed.status, 200);
    assert_eq!(http::get(gw, "/v1/kv/web/e").await.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_service_is_listed_and_shards_leave_and_go_from_the_command_line() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 1).await;
    let gw = fleet.gateway("a1").await;
    let socket = fleet.agent("a1").socket.clone();

    let session = http::open_session(gw, 30_000).await;
    for (service, id, tags) in [
        ("api", "api-1", json!(["v2", "eu"])),
        ("api", "api-2", json!(["v1", "eu"])),
        ("db", "db-1", json!([])),
        ("web", "web-1", json!(["edge"])),
    ] {
        let body = json!({"address": "10.0.0.7", "port": 8080, "tags": tags});
        let registered = http::request(
            gw,
            "PUT",
            &format!("/v1/services/{service}/{id}?session={session}"),
            http::JSON,
            body.to_string().as_bytes(),
        )
        .await;
        assert_eq!(registered.status, 200, "{:?}", registered.json());
    }

    let all = http::get(gw, "/v1/services").await;
    assert_eq!(all.status, 200);
    assert_eq!(
        all.json()["services"],
        json!([
            {"name": "api", "instances": 2, "tags": ["eu", "v1", "v2"]},
            {"name": "db", "instances": 1, "tags": []},
            {"name": "web", "instances": 1, "tags": ["edge"]},
        ])
    );
    assert_eq!(all.json()["more"], false);
    let first = http::get(gw, "/v1/services?limit=2").await.json();
    assert_eq!(first["services"].as_array().unwrap().len(), 2);
    assert_eq!(first["more"], true);
    let rest = http::get(gw, "/v1/services?start_after=db&limit=2")
        .await
        .json();
    assert_eq!(rest["services"][0]["name"], "web");
    assert_eq!(rest["more"], false);

    let listed = ok_json(&corral(&socket, &["service", "list", "--json"], b""));
    assert_eq!(listed["services"], all.json()["services"]);
    let text = corral(&socket, &["service", "list", "--limit", "1"], b"");
    let printed = String::from_utf8_lossy(&text.stdout);
    assert!(
        printed.starts_with("api  instances 2  tags eu,v1,v2\n"),
        "{printed}"
    );
    assert!(printed.contains("(more services beyond 1)"), "{printed}");

    // A shard: created, joined by a detached replica, left, deleted.
    assert!(
        corral(&socket, &["shard", "create", "M7"], b"")
            .status
            .success()
    );
    let joined = corral(
        &socket,
        &["shard", "join", "M7", "10.0.0.9:6379", "--detach"],
        b"",
    );
    assert!(joined.status.success(), "{joined:?}");
    failed_with(&corral(&socket, &["shard", "delete", "M7"], b""), "M7");

    // A standby beside it, joined over HTTP; priorities and positions set from the
    // command line (for the replica it holds) and over HTTP (for the HTTP client's).
    let joined = http::request(
        gw,
        "POST",
        &format!("/v1/shards/M7/replicas?session={session}"),
        http::JSON,
        br#"{"address": "10.0.0.8:6379", "priority": 0}"#,
    )
    .await;
    assert_eq!(
        joined.status,
        200,
        "{}",
        String::from_utf8_lossy(&joined.body)
    );
    let reported = corral(
        &socket,
        &["shard", "position", "M7", "10.0.0.9:6379", "42"],
        b"",
    );
    assert!(reported.status.success(), "{reported:?}");
    failed_with(
        &corral(
            &socket,
            &["shard", "position", "M7", "10.0.0.5:1", "1"],
            b"",
        ),
        "not a replica of M7",
    );
    failed_with(
        &corral(
            &socket,
            &["shard", "position", "M7", "10.0.0.9:6379", "x"],
            b"",
        ),
        "invalid value",
    );
    // The master cannot become a standby while the only other replica is one.
    failed_with(
        &corral(
            &socket,
            &["shard", "priority", "M7", "10.0.0.9:6379", "0"],
            b"",
        ),
        "no other replica",
    );
    let path = "/v1/shards/M7/replicas/10.0.0.8:6379/position";
    let body = br#"{"position": 7}"#;
    let unbound = http::request(gw, "PUT", path, http::JSON, body).await;
    assert_eq!(
        unbound.status,
        400,
        "{}",
        String::from_utf8_lossy(&unbound.body)
    );
    let with_session = format!("{path}?session={session}");
    let bad = http::request(
        gw,
        "PUT",
        &with_session,
        http::JSON,
        br#"{"position": "x"}"#,
    )
    .await;
    assert_eq!(bad.status, 400, "{}", String::from_utf8_lossy(&bad.body));
    // Not the session that holds 10.0.0.9: refused.
    let foreign = http::request(
        gw,
        "PUT",
        &format!("/v1/shards/M7/replicas/10.0.0.9:6379/position?session={session}"),
        http::JSON,
        body,
    )
    .await;
    assert_eq!(
        foreign.status,
        400,
        "{}",
        String::from_utf8_lossy(&foreign.body)
    );
    let put = http::request(gw, "PUT", &with_session, http::JSON, body).await;
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    assert_eq!(put.json()["position"], 7);
    let priority = format!("/v1/shards/M7/replicas/10.0.0.8:6379/priority?session={session}");
    let raised = http::request(gw, "PUT", &priority, http::JSON, br#"{"priority": 3}"#).await;
    assert_eq!(
        raised.status,
        200,
        "{}",
        String::from_utf8_lossy(&raised.body)
    );
    let lowered = ok_json(&corral(
        &socket,
        &["shard", "priority", "M7", "10.0.0.9:6379", "0", "--json"],
        b"",
    ));
    assert_eq!(
        lowered["answer"]["PrioritySet"]["master"], "10.0.0.8:6379",
        "{lowered}"
    );
    let left = http::request(
        gw,
        "DELETE",
        &format!("/v1/shards/M7/replicas/10.0.0.8:6379?session={session}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(left.status, 200, "{}", String::from_utf8_lossy(&left.body));
    let shard = ok_json(&corral(&socket, &["shard", "get", "M7", "--json"], b""));
    // The one left is a standby now: M7 has no master.
    assert_eq!(shard["shard"]["master"], Value::Null, "{shard}");
    let left = corral(&socket, &["shard", "leave", "M7", "10.0.0.9:6379"], b"");
    assert!(left.status.success(), "{left:?}");
    let deleted = corral(&socket, &["shard", "delete", "M7"], b"");
    assert!(deleted.status.success(), "{deleted:?}");
    failed_with(
        &corral(&socket, &["shard", "get", "M7"], b""),
        "does not exist",
    );
}
