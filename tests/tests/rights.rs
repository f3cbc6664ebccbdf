//! Rights of apps and the state's quota, end to end: `corral acl` (the real binary, under
//! the admin certificate) sets rules, tokens, enforcement and the quota in the core, and
//! a real agent enforces them on its socket and its HTTP gateway.

use std::process::Command;
use std::time::Duration;

use corral_proto::api::{AgentRequest, ApiError, EventFilter};
use corral_proto::{ClientError, CommandError};
use corral_tests::process::corral_binary;
use corral_tests::{Fleet, http, wait_until};

/// Runs `corral COMMAND.. --core .. --tls-dir .. --tls-name CERTIFICATE ARGS..`; its
/// stdout, or its stderr as the error.
fn corral_as(
    fleet: &Fleet,
    certificate: &str,
    command: &[&str],
    args: &[&str],
) -> Result<String, String> {
    let members: Vec<String> = (1..=3).map(|i| fleet.core.address(i).to_string()).collect();
    let output = Command::new(corral_binary())
        .args(command)
        .args(["--core", &members.join(",")])
        .arg("--tls-dir")
        .arg(&fleet.core.pki.dir)
        .args(["--tls-name", certificate])
        .args(args)
        .output()
        .expect("corral runs");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn acl(fleet: &Fleet, args: &[&str]) -> String {
    corral_as(fleet, "admin", &["acl"], args).unwrap_or_else(|e| panic!("corral acl {args:?}: {e}"))
}

fn forbidden<T: std::fmt::Debug>(result: Result<T, ClientError>) -> bool {
    matches!(result, Err(ClientError::Api(ApiError::Forbidden(_))))
}

/// Waits until the agent's replica has applied everything the core has (the access
/// change just made included).
async fn settle(fleet: &Fleet, client: &corral_proto::AgentClient) {
    let mut core = 0;
    for id in 1..=3 {
        if let Some(status) = fleet.core.status(id).await {
            core = core.max(status.revision);
        }
    }
    wait_until(
        Duration::from_secs(10),
        "the replica to catch up",
        || async { (client.status().await.ok()?.revision >= core).then_some(()) },
    )
    .await;
}

/// Without enforcement every app may do everything; once an operator turns it on, a
/// socket client may do only what a rule grants its Unix user, and an HTTP client only
/// what a rule grants the token it presents; an agent's certificate cannot change any of
/// it.
#[tokio::test(flavor = "multi_thread")]
async fn rules_decide_who_may_do_what_once_enforced() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 1).await;
    let gw = fleet.gateway("a1").await;
    let app = fleet.client("a1").await;
    app.put("app/x", b"1").await.unwrap();
    app.put("etc/x", b"1").await.unwrap();

    acl(&fleet, &["enforce", "on"]);
    settle(&fleet, &app).await;
    assert!(forbidden(app.put("app/x", b"2").await));
    assert!(forbidden(app.get("app/x").await));
    let refused = http::get(gw, "/v1/kv/app/x").await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["code"], "forbidden");

    let uid = nix::unistd::getuid().as_raw().to_string();
    acl(
        &fleet,
        &[
            "rule", "set", "app", "--user", &uid, "--keys", "app/", "--write",
        ],
    );
    settle(&fleet, &app).await;
    app.put("app/x", b"2").await.unwrap();
    assert_eq!(app.get("app/x").await.unwrap().unwrap().value, b"2");
    assert!(forbidden(app.put("etc/x", b"2").await));
    assert!(forbidden(app.get("etc/x").await));
    assert!(forbidden(
        app.subscribe(EventFilter::everything(), None).await
    ));
    app.subscribe(EventFilter::keys("app/"), None)
        .await
        .unwrap();

    // A token of the core, with a rule on locks.
    let token = acl(&fleet, &["token", "add", "ci"]).trim().to_string();
    assert_eq!(token.len(), 64, "{token}");
    acl(
        &fleet,
        &[
            "rule",
            "set",
            "ci-deploy",
            "--token",
            "ci",
            "--locks",
            "deploy",
            "--write",
        ],
    );
    settle(&fleet, &app).await;
    let bearer = format!("Bearer {token}");
    let with_token = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    let opened = http::request(
        gw,
        "POST",
        "/v1/sessions",
        &with_token,
        br#"{"ttl_ms": 30000}"#,
    )
    .await;
    assert_eq!(opened.status, 200, "{:?}", opened.json());
    let session = opened.json()["id"].as_u64().unwrap();
    let lock = format!("/v1/locks/deploy?session={session}");
    let granted = http::request(gw, "POST", &lock, &with_token, b"").await;
    assert_eq!(granted.status, 200, "{:?}", granted.json());
    let keys = http::request(gw, "PUT", "/v1/kv/app/y", &with_token, b"no").await;
    assert_eq!(keys.status, 403, "{:?}", keys.json());
    // The session is the token's: without the token it is not usable.
    let anonymous = http::request(gw, "DELETE", &lock, &[], b"").await;
    assert_eq!(anonymous.status, 403, "{:?}", anonymous.json());
    let guessed = http::request(
        gw,
        "GET",
        "/v1/status",
        &[("Authorization", "Bearer 0123456789abcdef0123")],
        b"",
    )
    .await;
    assert_eq!(guessed.status, 401);

    // An agent's certificate changes nothing.
    let refused = corral_as(&fleet, "a1", &["acl"], &["enforce", "off"]).unwrap_err();
    assert!(refused.contains("admin certificate"), "{refused}");
    let listed: serde_json::Value =
        serde_json::from_str(&acl(&fleet, &["list", "--json"])).unwrap();
    assert_eq!(listed["enforce"], true);
    assert_eq!(listed["tokens"], serde_json::json!(["ci"]));
    assert_eq!(listed["rules"]["app"]["prefix"], "app/");

    acl(&fleet, &["enforce", "off"]);
    settle(&fleet, &app).await;
    app.put("etc/x", b"3").await.unwrap();
}

/// Past its quota the state refuses writes that grow it, over the socket and HTTP, with
/// `quota_exceeded`; the alarm shows in `corral core status` and `/metrics`; deleting
/// makes room again.
#[tokio::test(flavor = "multi_thread")]
async fn the_quota_refuses_growth_and_raises_the_alarm() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 1).await;
    let gw = fleet.gateway("a1").await;
    let app = fleet.client("a1").await;
    acl(&fleet, &["quota", "--keys", "5", "--bytes", "1000000"]);
    settle(&fleet, &app).await;
    for i in 0..5 {
        app.put(&format!("k{i}"), b"v").await.unwrap();
    }
    match app.put("k5", b"v").await {
        Err(ClientError::Api(ApiError::Refused {
            error: CommandError::QuotaExceeded { max: 5, .. },
            ..
        })) => {}
        other => panic!("expected quota_exceeded, got {other:?}"),
    }
    let refused = http::request(gw, "PUT", "/v1/kv/k5", &[], b"v").await;
    assert_eq!(refused.status, 507);
    assert_eq!(refused.json()["code"], "quota_exceeded");
    let status = wait_until(
        Duration::from_secs(10),
        "the alarm in core status",
        || async {
            let text = corral_as(&fleet, "admin", &["core", "status"], &["--json"]).ok()?;
            let status: serde_json::Value = serde_json::from_str(&text).ok()?;
            (status["quota_alarm"] == true).then_some(status)
        },
    )
    .await;
    assert_eq!(status["quota"]["keys"], 5);
    let metrics = String::from_utf8(http::get(gw, "/metrics").await.body).unwrap();
    assert!(metrics.contains("corral_state_quota_alarm 1"), "{metrics}");
    app.write(AgentRequest::Delete {
        key: "k0".into(),
        prefix: false,
    })
    .await
    .unwrap();
    app.put("k5", b"v").await.unwrap();
}
