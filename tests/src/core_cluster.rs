//! A core cluster of real `corral core` processes on loopback.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use corral_net::client::CoreClient;
use corral_net::rpc::{ALPN_CORE, CoreStatus};
use corral_net::transport::{QuicTransport, TlsIdentity};
use corral_proto::Revision;

use super::pki::Pki;
use super::process::{ChildProcess, free_udp_port, wait_until};

#[derive(Clone, Debug)]
pub struct CoreOptions {
    pub members: u64,
    pub snapshot_every: Option<u64>,
    /// Seconds between the leader's state checks (the member's default when None).
    pub state_check_secs: Option<u64>,
}

impl Default for CoreOptions {
    fn default() -> Self {
        Self {
            members: 3,
            snapshot_every: None,
            state_check_secs: None,
        }
    }
}

pub struct CoreCluster {
    pub root: PathBuf,
    pub pki: Pki,
    pub addresses: BTreeMap<u64, String>,
    processes: BTreeMap<u64, ChildProcess>,
    options: CoreOptions,
    client: CoreClient,
}

impl CoreCluster {
    /// Makes a CA with certificates for every member and starts them. Call within a tokio
    /// runtime.
    pub fn start(root: &Path, options: CoreOptions) -> Self {
        let names: Vec<String> = (1..=options.members)
            .map(|id| format!("core-{id}"))
            .collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let pki = Pki::new(&root.join("tls"), &name_refs);
        let addresses: BTreeMap<u64, String> = (1..=options.members)
            .map(|id| (id, format!("127.0.0.1:{}", free_udp_port())))
            .collect();
        let client = admin_client(&pki.dir, addresses.values().cloned().collect());
        let mut cluster = Self {
            root: root.to_path_buf(),
            pki,
            addresses,
            processes: BTreeMap::new(),
            options,
            client,
        };
        for id in 1..=cluster.options.members {
            cluster.spawn(id);
        }
        cluster
    }

    pub fn peers_arg(&self) -> String {
        self.addresses
            .iter()
            .map(|(id, a)| format!("{id}={a}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.root.join(format!("core-{id}"))
    }

    /// The command-line arguments that run member `id`.
    pub fn member_args(&self, id: u64, tls_dir: &Path) -> Vec<String> {
        let mut args = vec![
            "core".to_string(),
            "--id".into(),
            id.to_string(),
            "--data-dir".into(),
            self.data_dir(id).display().to_string(),
            "--listen".into(),
            self.addresses[&id].clone(),
            "--peers".into(),
            self.peers_arg(),
            "--tls-dir".into(),
            tls_dir.display().to_string(),
        ];
        if let Some(secs) = self.options.state_check_secs {
            args.extend(["--state-check-secs".into(), secs.to_string()]);
        }
        if let Some(every) = self.options.snapshot_every {
            // Compact aggressively so that a lagging member needs the snapshot.
            args.extend([
                "--snapshot-every".into(),
                every.to_string(),
                "--snapshot-catchup-entries".into(),
                "10".into(),
            ]);
        }
        args
    }

    /// Starts member `id` (again).
    pub fn spawn(&mut self, id: u64) {
        let args = self.member_args(id, &self.pki.dir.clone());
        self.spawn_with_args(id, &args);
    }

    pub fn spawn_with_args(&mut self, id: u64, args: &[String]) {
        let log = self.root.join(format!("core-{id}.log"));
        self.processes.insert(
            id,
            ChildProcess::spawn(&format!("core-{id}"), args, &log, &[]),
        );
    }

    /// Adds the address of a member that is not part of the initial cluster.
    pub fn add_address(&mut self, id: u64) -> String {
        let address = format!("127.0.0.1:{}", free_udp_port());
        self.addresses.insert(id, address.clone());
        address
    }

    pub fn process(&mut self, id: u64) -> &mut ChildProcess {
        self.processes.get_mut(&id).expect("a started member")
    }

    /// SIGKILL member `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut process) = self.processes.remove(&id) {
            process.kill();
        }
    }

    /// Deletes member `id`'s data directory (it must be stopped).
    pub fn wipe(&mut self, id: u64) {
        assert!(
            !self.processes.contains_key(&id),
            "stop member {id} before wiping it"
        );
        let _ = std::fs::remove_dir_all(self.data_dir(id));
    }

    pub fn client(&self) -> &CoreClient {
        &self.client
    }

    pub fn address(&self, id: u64) -> &str {
        &self.addresses[&id]
    }

    pub async fn status(&self, id: u64) -> Option<CoreStatus> {
        self.client.status(self.address(id)).await.ok()
    }

    /// Waits until the running members agree on one leader, and returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> u64 {
        let running: Vec<u64> = self.processes.keys().copied().collect();
        wait_until(
            timeout,
            "a leader every running member agrees on",
            || async {
                let mut leader = None;
                for id in &running {
                    let status = self.status(*id).await?;
                    let this = status.leader?;
                    if leader.is_some_and(|l| l != this) || !running.contains(&this) {
                        return None;
                    }
                    leader = Some(this);
                }
                let leader = leader?;
                (self.status(leader).await?.state == "leader").then_some(leader)
            },
        )
        .await
    }

    /// The revision and state checksum of member `id`.
    pub async fn digest(&self, id: u64) -> Option<(Revision, u32)> {
        self.client.state_digest(self.address(id)).await.ok()
    }

    /// Waits until every running member is at the same revision with the same state.
    pub async fn wait_for_identical_state(&self, timeout: Duration) -> (Revision, u32) {
        let running: Vec<u64> = self.processes.keys().copied().collect();
        wait_until(
            timeout,
            "every member at the same revision with the same state",
            || async {
                let mut first = None;
                for id in &running {
                    let digest = self.digest(*id).await?;
                    match first {
                        None => first = Some(digest),
                        Some(f) if f != digest => return None,
                        Some(_) => {}
                    }
                }
                first
            },
        )
        .await
    }

    /// Every member's log, for failure messages.
    pub fn logs(&self) -> String {
        self.processes
            .values()
            .map(|p| format!("---- {} ----\n{}", p.name, p.log_text()))
            .collect()
    }
}

/// A core client presenting the `admin` certificate of the CA in `tls_dir`.
pub fn admin_client(tls_dir: &Path, members: Vec<String>) -> CoreClient {
    client_as(tls_dir, "admin", members)
}

/// A core client presenting the certificate issued for `name` in `tls_dir`.
pub fn client_as(tls_dir: &Path, name: &str, members: Vec<String>) -> CoreClient {
    let identity = TlsIdentity::load(tls_dir, name).expect("the certificate loads");
    let transport =
        Arc::new(QuicTransport::client(&identity, &[ALPN_CORE]).expect("a client endpoint"));
    CoreClient::new(transport, members)
}
