//! etcd as shipped by Debian (3.4), three members on loopback, plain HTTP/2 (no TLS, as
//! its defaults have it), its default heartbeat (100 ms) and election timeout (1000 ms).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use etcd_client::{Client, EventType, GetOptions, LockOptions, PutOptions};
use nix::sys::signal::Signal;

use super::{Freeze, Holder, VALUE_SIZE};
use crate::process::{self, Server, check_ports_free, wait_for};
use crate::runner::{Op, op};

const CLIENT_PORTS: [u16; 3] = [12379, 22379, 32379];
const PEER_PORTS: [u16; 3] = [12380, 22380, 32380];
const LOOKUP_KEY: &str = "/shards/M3/master";
const LOOKUP_MASTER: &str = "10.0.0.3:6379";

pub struct Etcd {
    dir: PathBuf,
    members: Vec<Server>,
    failovers: u32,
    /// The TTL, in seconds, etcd granted for the shortest lease asked.
    pub granted_ttl: Option<i64>,
}

pub fn endpoints() -> Vec<String> {
    CLIENT_PORTS
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect()
}

async fn connect() -> anyhow::Result<Client> {
    Client::connect(endpoints(), None)
        .await
        .context("connecting to etcd")
}

impl Etcd {
    pub async fn start(dir: &Path) -> anyhow::Result<Etcd> {
        let mut tcp = CLIENT_PORTS.to_vec();
        tcp.extend(PEER_PORTS);
        check_ports_free(&tcp, &[])?;
        let cluster = PEER_PORTS
            .iter()
            .enumerate()
            .map(|(i, p)| format!("e{}=http://127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for i in 0..3 {
            let name = format!("e{}", i + 1);
            let client = format!("http://127.0.0.1:{}", CLIENT_PORTS[i]);
            let peer = format!("http://127.0.0.1:{}", PEER_PORTS[i]);
            let args = vec![
                "--name".to_string(),
                name.clone(),
                "--data-dir".into(),
                dir.join(&name).display().to_string(),
                "--listen-client-urls".into(),
                client.clone(),
                "--advertise-client-urls".into(),
                client,
                "--listen-peer-urls".into(),
                peer.clone(),
                "--initial-advertise-peer-urls".into(),
                peer,
                "--initial-cluster".into(),
                cluster.clone(),
                "--initial-cluster-token".into(),
                "corral-bench".into(),
                "--initial-cluster-state".into(),
                "new".into(),
            ];
            let log = dir.join(format!("{name}.log"));
            members.push(Server::spawn(
                &format!("etcd {name}"),
                Path::new("etcd"),
                &args,
                &log,
            )?);
        }
        let etcd = Etcd {
            dir: dir.to_path_buf(),
            members,
            failovers: 0,
            granted_ttl: None,
        };
        wait_for(Duration::from_secs(30), "an etcd leader", || async {
            let mut client = connect().await.ok()?;
            client.put(LOOKUP_KEY, LOOKUP_MASTER, None).await.ok()
        })
        .await?;
        // Every member answers before the clock starts.
        for endpoint in endpoints() {
            let mut client = Client::connect([endpoint.as_str()], None).await?;
            client.get(LOOKUP_KEY, None).await?;
        }
        Ok(etcd)
    }

    pub fn processes(&self) -> Vec<(String, u32)> {
        process::pids(&self.members)
    }

    pub fn check_running(&mut self) -> anyhow::Result<()> {
        process::check_running(&mut self.members)
    }

    /// A get of the shard's master: serializable (any member's copy) or linearizable.
    pub async fn lookup_clients(
        &self,
        clients: usize,
        linearizable: bool,
    ) -> anyhow::Result<Vec<Op>> {
        let mut ops: Vec<Op> = Vec::new();
        for _ in 0..clients {
            let client = connect().await?;
            ops.push(Box::new(move || {
                let mut client = client.clone();
                op(async move {
                    let options = (!linearizable).then(|| GetOptions::new().with_serializable());
                    let response = client.get(LOOKUP_KEY, options).await?;
                    match response.kvs().first() {
                        Some(kv) if kv.value() == LOOKUP_MASTER.as_bytes() => Ok(None),
                        other => bail!("wrong answer: {other:?}"),
                    }
                })
            }));
        }
        Ok(ops)
    }

    pub async fn write_clients(&self, clients: usize) -> anyhow::Result<Vec<Op>> {
        let mut ops: Vec<Op> = Vec::new();
        let value = vec![b'v'; VALUE_SIZE];
        for c in 0..clients {
            let client = connect().await?;
            let value = value.clone();
            let mut i = 0u64;
            ops.push(Box::new(move || {
                i += 1;
                let mut client = client.clone();
                let key = format!("bench/{c}/{}", i % 1000);
                let value = value.clone();
                op(async move {
                    client.put(key, value, None).await?;
                    Ok(None)
                })
            }));
        }
        Ok(ops)
    }

    /// etcd's lock API (v3lock), each client with its own lease.
    pub async fn lock_clients(&self, clients: usize) -> anyhow::Result<Vec<Op>> {
        let mut ops: Vec<Op> = Vec::new();
        for _ in 0..clients {
            let mut client = connect().await?;
            let lease = client.lease_grant(300, None).await?.id();
            ops.push(Box::new(move || {
                let mut client = client.clone();
                op(async move {
                    let t = Instant::now();
                    let response = client
                        .lock("bench-lock", Some(LockOptions::new().with_lease(lease)))
                        .await?;
                    let waited = t.elapsed();
                    client.unlock(response.key()).await?;
                    Ok(Some(waited))
                })
            }));
        }
        Ok(ops)
    }

    /// A holder process puts a key under the shortest lease etcd grants and keeps the
    /// lease alive; it is killed or frozen; a watcher's DELETE event ends the clock.
    pub async fn failover(&mut self, bench: &Path, freeze: Freeze) -> anyhow::Result<Duration> {
        self.failovers += 1;
        let key = format!("/failover/F{}", self.failovers);
        let (holder, ttl) = Holder::start(
            bench,
            &self.dir,
            &["hold-etcd".into(), key.clone(), "master".into()],
        )
        .await?;
        self.granted_ttl = ttl.parse().ok();
        let mut client = connect().await?;
        let mut stream = client.watch(key.as_str(), None).await?;
        if client.get(key.as_str(), None).await?.kvs().is_empty() {
            bail!("the holder's key {key} is missing");
        }
        let started = Instant::now();
        holder.signal(match freeze {
            Freeze::Kill => Signal::SIGKILL,
            Freeze::Stop => Signal::SIGSTOP,
        });
        let noticed = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(response)) = stream.message().await {
                if response
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
                {
                    return Some(started.elapsed());
                }
            }
            None
        })
        .await;
        drop(holder);
        match noticed {
            Ok(Some(elapsed)) => Ok(elapsed),
            Ok(None) => bail!("the watch on {key} ended"),
            Err(_) => bail!("{key} was not deleted within 60 s"),
        }
    }
}

/// The holder's side: the shortest lease etcd allows (it raises a 1 s ask to its
/// minimum), kept alive every third of its TTL as etcd's own client does.
pub async fn hold(key: &str, value: &str) -> anyhow::Result<()> {
    let mut client = connect().await?;
    let lease = client.lease_grant(1, None).await?;
    let ttl = lease.ttl();
    client
        .put(key, value, Some(PutOptions::new().with_lease(lease.id())))
        .await?;
    let (mut keeper, mut responses) = client.lease_keep_alive(lease.id()).await?;
    Holder::ready(&ttl.to_string());
    let period = Duration::from_millis((ttl.max(1) as u64) * 1000 / 3);
    loop {
        tokio::time::sleep(period).await;
        keeper.keep_alive().await?;
        responses.message().await?;
    }
}
