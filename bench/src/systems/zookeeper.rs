//! ZooKeeper as shipped by Debian (3.8, its zoo.cfg: tickTime 2000 ms), three members
//! on loopback with `forceSync=yes`. Two settings differ from the shipped file: the
//! admin HTTP server is off (its port would clash) and `maxClientCnxns=0`, so that 128
//! clients from one address are let in.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use zookeeper_client as zk;

use super::{Freeze, Holder, VALUE_SIZE};
use crate::process::{self, Server, check_ports_free, wait_for};
use crate::runner::{Op, op};

const CLIENT_PORTS: [u16; 3] = [12181, 12182, 12183];
const QUORUM_PORTS: [u16; 3] = [12888, 12889, 12890];
const ELECTION_PORTS: [u16; 3] = [13888, 13889, 13890];
pub const TICK_MS: u64 = 2000;
const LOOKUP_PATH: &str = "/shards/M3/master";
const LOOKUP_MASTER: &str = "10.0.0.3:6379";
const CLASSPATH: &str = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar";

pub struct ZooKeeper {
    dir: PathBuf,
    members: Vec<Server>,
    failovers: u32,
    /// The session timeout ZooKeeper granted for the shortest one asked.
    pub granted_timeout: Option<Duration>,
}

pub fn connect_string() -> String {
    CLIENT_PORTS
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",")
}

async fn connect() -> anyhow::Result<zk::Client> {
    zk::Client::connect(&connect_string())
        .await
        .context("connecting to ZooKeeper")
}

fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

/// Creates `path` and its ancestors, persistent, where missing.
async fn ensure_path(client: &zk::Client, path: &str, data: &[u8]) -> anyhow::Result<()> {
    let mut prefix = String::new();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        prefix.push('/');
        prefix.push_str(part);
        let value: &[u8] = if i + 1 == parts.len() { data } else { &[] };
        match client.create(&prefix, value, &persistent()).await {
            Ok(_) | Err(zk::Error::NodeExists) => {}
            Err(e) => return Err(e).with_context(|| format!("creating {prefix}")),
        }
    }
    Ok(())
}

impl ZooKeeper {
    pub async fn start(dir: &Path) -> anyhow::Result<ZooKeeper> {
        let mut tcp = CLIENT_PORTS.to_vec();
        tcp.extend(QUORUM_PORTS);
        tcp.extend(ELECTION_PORTS);
        check_ports_free(&tcp, &[])?;
        let mut members = Vec::new();
        for (i, client_port) in CLIENT_PORTS.iter().enumerate() {
            let name = format!("z{}", i + 1);
            let data = dir.join(&name);
            std::fs::create_dir_all(&data)?;
            std::fs::write(data.join("myid"), format!("{}\n", i + 1))?;
            let mut config = format!(
                "tickTime={TICK_MS}\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={}\n\
                 forceSync=yes\nadmin.enableServer=false\nmaxClientCnxns=0\n",
                data.display(),
                client_port
            );
            for (j, (quorum, election)) in QUORUM_PORTS.iter().zip(ELECTION_PORTS).enumerate() {
                config.push_str(&format!("server.{}=127.0.0.1:{quorum}:{election}\n", j + 1));
            }
            let config_path = dir.join(format!("{name}.cfg"));
            std::fs::write(&config_path, config)?;
            let args = vec![
                "-cp".to_string(),
                CLASSPATH.into(),
                "org.apache.zookeeper.server.quorum.QuorumPeerMain".into(),
                config_path.display().to_string(),
            ];
            let log = dir.join(format!("{name}.log"));
            members.push(Server::spawn(
                &format!("zookeeper {name}"),
                Path::new("java"),
                &args,
                &log,
            )?);
        }
        let zookeeper = ZooKeeper {
            dir: dir.to_path_buf(),
            members,
            failovers: 0,
            granted_timeout: None,
        };
        let client = wait_for(Duration::from_secs(60), "a ZooKeeper quorum", || async {
            let client = connect().await.ok()?;
            client.sync("/").await.ok()?;
            Some(client)
        })
        .await?;
        ensure_path(&client, LOOKUP_PATH, LOOKUP_MASTER.as_bytes()).await?;
        ensure_path(&client, "/bench", &[]).await?;
        ensure_path(&client, "/locks/bench", &[]).await?;
        ensure_path(&client, "/failover", &[]).await?;
        // Every member answers before the clock starts.
        for port in CLIENT_PORTS {
            let member = zk::Client::connect(&format!("127.0.0.1:{port}")).await?;
            member.sync(LOOKUP_PATH).await?;
            member.get_data(LOOKUP_PATH).await?;
        }
        Ok(zookeeper)
    }

    pub fn processes(&self) -> Vec<(String, u32)> {
        process::pids(&self.members)
    }

    pub fn check_running(&mut self) -> anyhow::Result<()> {
        process::check_running(&mut self.members)
    }

    /// getData of the shard's master: from the connected member's copy, or after a
    /// `sync` (ZooKeeper's way to read what the leader has committed).
    pub async fn lookup_clients(
        &self,
        clients: usize,
        linearizable: bool,
    ) -> anyhow::Result<Vec<Op>> {
        let mut ops: Vec<Op> = Vec::new();
        for _ in 0..clients {
            let client = connect().await?;
            ops.push(Box::new(move || {
                let client = client.clone();
                op(async move {
                    if linearizable {
                        client.sync(LOOKUP_PATH).await?;
                    }
                    let (data, _) = client.get_data(LOOKUP_PATH).await?;
                    if data != LOOKUP_MASTER.as_bytes() {
                        bail!("wrong answer: {data:?}");
                    }
                    Ok(None)
                })
            }));
        }
        Ok(ops)
    }

    /// setData of 256 bytes, each client on its own node.
    pub async fn write_clients(&self, clients: usize) -> anyhow::Result<Vec<Op>> {
        let mut ops: Vec<Op> = Vec::new();
        let value = vec![b'v'; VALUE_SIZE];
        for c in 0..clients {
            let client = connect().await?;
            let path = format!("/bench/c{c}");
            ensure_path(&client, &path, &[]).await?;
            let value = value.clone();
            ops.push(Box::new(move || {
                let client = client.clone();
                let path = path.clone();
                let value = value.clone();
                op(async move {
                    client.set_data(&path, &value, None).await?;
                    Ok(None)
                })
            }));
        }
        Ok(ops)
    }

    /// The lock recipe of ZooKeeper's documentation, as Curator's InterProcessMutex
    /// does it: an ephemeral sequential node, then wait for the deletion of the node
    /// just before it; release deletes the node. Each client is its own session.
    pub async fn lock_clients(&self, clients: usize) -> anyhow::Result<Vec<Op>> {
        let mut ops: Vec<Op> = Vec::new();
        for _ in 0..clients {
            let client = connect().await?;
            ops.push(Box::new(move || {
                let client = client.clone();
                op(async move {
                    let t = Instant::now();
                    let own = acquire(&client, "/locks/bench").await?;
                    let waited = t.elapsed();
                    client.delete(&own, None).await?;
                    Ok(Some(waited))
                })
            }));
        }
        Ok(ops)
    }

    /// A holder process creates an ephemeral node in a session with the shortest
    /// timeout ZooKeeper grants (2 × tickTime); it is killed or frozen; a watcher's
    /// NodeDeleted event ends the clock.
    pub async fn failover(&mut self, bench: &Path, freeze: Freeze) -> anyhow::Result<Duration> {
        // A holder whose session does not come up (a freshly started ensemble can time out
        // a new session) is set-up, not a measurement: try again on a path of its own.
        let mut attempt = 0;
        let (holder, timeout, path) = loop {
            attempt += 1;
            self.failovers += 1;
            let path = format!("/failover/F{}", self.failovers);
            match Holder::start(bench, &self.dir, &["hold-zookeeper".into(), path.clone()]).await {
                Ok((holder, timeout)) => break (holder, timeout, path),
                Err(e) if attempt < 3 => println!("ZooKeeper holder: {e:#}; trying again"),
                Err(e) => return Err(e),
            }
        };
        self.granted_timeout = timeout.parse().ok().map(Duration::from_millis);
        let client = connect().await?;
        let (stat, watcher) = client.check_and_watch_stat(&path).await?;
        if stat.is_none() {
            bail!("the holder's node {path} is missing");
        }
        let started = Instant::now();
        holder.signal(match freeze {
            Freeze::Kill => Signal::SIGKILL,
            Freeze::Stop => Signal::SIGSTOP,
        });
        let event = tokio::time::timeout(Duration::from_secs(60), watcher.changed()).await;
        let elapsed = started.elapsed();
        drop(holder);
        match event {
            Ok(event) if event.event_type == zk::EventType::NodeDeleted => Ok(elapsed),
            Ok(event) => bail!("unexpected event on {path}: {event:?}"),
            Err(_) => bail!("{path} was not deleted within 60 s"),
        }
    }
}

/// Takes the lock under `dir`; returns the path of this client's node.
async fn acquire(client: &zk::Client, dir: &str) -> anyhow::Result<String> {
    let options = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
    let prefix = format!("{dir}/lock-");
    let (_, sequence) = client.create(&prefix, &[], &options).await?;
    let own_name = format!("lock-{sequence}");
    let own = format!("{dir}/{own_name}");
    loop {
        let (mut children, _) = client.get_children(dir).await?;
        children.sort();
        let position = children
            .iter()
            .position(|c| *c == own_name)
            .context("the lock node vanished")?;
        if position == 0 {
            return Ok(own);
        }
        let before = format!("{dir}/{}", children[position - 1]);
        let (stat, watcher) = client.check_and_watch_stat(&before).await?;
        if stat.is_some() {
            watcher.changed().await;
        }
    }
}

/// The holder's side: an ephemeral node in a session asking for a 1 ms timeout, which
/// ZooKeeper raises to its minimum; the granted timeout is reported.
pub async fn hold(path: &str) -> anyhow::Result<()> {
    let client = zk::Client::connector()
        .with_session_timeout(Duration::from_millis(1))
        .connect(&connect_string())
        .await?;
    let options = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    client.create(path, b"master", &options).await?;
    Holder::ready(&client.session_timeout().as_millis().to_string());
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
