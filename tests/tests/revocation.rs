//! Certificate revocation against real `corral core` processes: `corral ca revoke` (the
//! real binary) writes the CA's revocation list, the members read it on SIGHUP, and from
//! then on the revoked certificate is refused on the connection it already had and in
//! every new handshake, while other certificates go on as before.

use std::process::Command as Process;
use std::time::Duration;

use corral_net::client::ClientError;
use corral_net::rpc::CoreError;
use corral_proto::Command;
use corral_tests::core_cluster::{CoreCluster, CoreOptions, client_as};
use corral_tests::process::corral_binary;
use corral_tests::wait_until;
use nix::sys::signal::Signal;

fn put(key: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: b"v".to_vec(),
        session: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_certificate_is_refused_after_sighup_on_old_and_new_connections() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = CoreCluster::start(root.path(), CoreOptions::default());
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    cluster.pki.issue("stolen");
    cluster.pki.issue("honest");
    let members: Vec<String> = (1..=3).map(|i| cluster.address(i).to_string()).collect();
    let stolen = client_as(&cluster.pki.dir, "stolen", members.clone());
    let honest = client_as(&cluster.pki.dir, "honest", members.clone());
    stolen.write(&put("before")).await.unwrap();
    honest.write(&put("before")).await.unwrap();

    let revoked = Process::new(corral_binary())
        .args(["ca", "revoke", "--name", "stolen", "--dir"])
        .arg(&cluster.pki.dir)
        .output()
        .unwrap();
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    for id in 1..=3 {
        cluster.process(id).signal(Signal::SIGHUP);
    }
    // The connection it already has is refused once the members reloaded.
    let error = wait_until(
        Duration::from_secs(10),
        "the revocation to take",
        || async { stolen.write(&put("after")).await.err() },
    )
    .await;
    assert!(
        matches!(&error, ClientError::Core(CoreError::Forbidden(m)) if m.contains("revoked"))
            || !matches!(error, ClientError::Core(_)),
        "{error}"
    );
    // A new connection fails its handshake: no member gets as far as answering it.
    let fresh = client_as(&cluster.pki.dir, "stolen", members.clone());
    let error = fresh.write(&put("after")).await.unwrap_err();
    assert!(!matches!(error, ClientError::Core(_)), "{error}");
    // Everybody else goes on, and the members still reach each other.
    honest.write(&put("after")).await.unwrap();
    let status = cluster
        .status(cluster.wait_for_leader(Duration::from_secs(5)).await)
        .await
        .unwrap();
    assert!(status.revision >= 3);
    // Revoking again changes nothing; a bad name is an error.
    let again = Process::new(corral_binary())
        .args(["ca", "revoke", "--name", "stolen", "--dir"])
        .arg(&cluster.pki.dir)
        .output()
        .unwrap();
    assert!(again.status.success());
    let missing = Process::new(corral_binary())
        .args(["ca", "revoke", "--name", "nobody", "--dir"])
        .arg(&cluster.pki.dir)
        .output()
        .unwrap();
    assert!(!missing.status.success());
}
