//! Corral as shipped: a three-member core and three agents (hosts a1..a3) on loopback,
//! every link QUIC with mutual TLS, every write fsynced by a majority.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use corral_net::client::CoreClient;
use corral_net::rpc::ALPN_CORE;
use corral_net::transport::certificate_authority::ADMIN_NAME;
use corral_net::transport::{QuicTransport, TlsIdentity};
use corral_proto::api::{
    AgentRequest, EventFilter, MemberState, Query, QueryResult, SubscriptionItem,
};
use corral_proto::event::Event;
use corral_proto::{AgentClient, Command, ShardMap};
use nix::sys::signal::Signal;

use super::{Freeze, Holder, LOOKUP_SHARD, VALUE_SIZE, Writes};
use crate::process::{self, Server, check_ports_free, output, wait_for};
use crate::runner::{Op, op};

const CORE_PORTS: [u16; 3] = [17001, 17002, 17003];
/// Hosts a1..a3 run from the start; a4 joins once the state is filled (the footprint of
/// an agent that took the state by snapshot).
const GOSSIP_PORTS: [u16; 4] = [17101, 17102, 17103, 17104];
const HTTP_PORTS: [u16; 4] = [17201, 17202, 17203, 17204];
/// The agents' etcd v3 endpoints (`--etcd`).
const ETCD_PORTS: [u16; 4] = [17301, 17302, 17303, 17304];
/// The shard looked up: its master is registered from host a2.
const LOOKUP_MASTER: &str = "10.0.0.3:6379";

pub struct Corral {
    binary: PathBuf,
    dir: PathBuf,
    tls: PathBuf,
    cores: Vec<Server>,
    agents: Vec<Server>,
    sockets: Vec<PathBuf>,
    core_addresses: Vec<String>,
    transport: Arc<QuicTransport>,
    failovers: u32,
    /// The agent's gossip defaults, as its own `--help` states them.
    pub gossip_setting: String,
}

/// The core's node grace in these runs (`corral core --node-grace-ms`): how long it holds
/// the session of a host no member hears before a frozen host's masters fail over. Set to
/// the lease TTL etcd grants here (2 s) so that the frozen-host failovers compare like
/// with like; Corral's default, 5 s, is sized for an agent's restart to lose nothing.
pub const NODE_GRACE_MS: u64 = 2000;

/// "probe every P ms, suspicion S ms", read from `corral agent --help`.
fn gossip_defaults(binary: &str) -> String {
    let help = output(binary, &["agent", "--help"]).unwrap_or_default();
    let default_of = |flag: &str| {
        let line = help.lines().skip_while(|l| !l.contains(flag)).nth(1)?;
        let start = line.find("[default: ")? + "[default: ".len();
        Some(line[start..].split(']').next()?.to_string())
    };
    match (
        default_of("--probe-period-ms"),
        default_of("--suspect-to-down-ms"),
    ) {
        (Some(probe), Some(suspect)) => {
            format!("gossip probe every {probe} ms, suspicion {suspect} ms")
        }
        _ => "gossip settings: not read".into(),
    }
}

/// `corral core --peers` for members 1, 2, 3.. at `addresses`.
pub fn peers_arg(addresses: &[String]) -> String {
    addresses
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// Agent a1's etcd endpoint: where an etcd client on host a1 connects.
pub fn etcd_endpoints() -> Vec<String> {
    vec![format!("http://127.0.0.1:{}", ETCD_PORTS[0])]
}

impl Corral {
    pub async fn start(binary: &Path, dir: &Path) -> anyhow::Result<Corral> {
        let mut udp = CORE_PORTS.to_vec();
        udp.extend(GOSSIP_PORTS);
        let mut tcp = HTTP_PORTS.to_vec();
        tcp.extend(ETCD_PORTS);
        check_ports_free(&tcp, &udp)?;
        let tls = dir.join("tls");
        let bin = binary.display().to_string();
        output(
            &bin,
            &[
                "ca",
                "init",
                "--dir",
                &tls.display().to_string(),
                "--days",
                "2",
            ],
        )?;
        for name in ["core-1", "core-2", "core-3", "a1", "a2", "a3", "a4"] {
            output(
                &bin,
                &[
                    "ca",
                    "issue",
                    "--dir",
                    &tls.display().to_string(),
                    "--name",
                    name,
                    "--days",
                    "2",
                ],
            )?;
        }
        let core_addresses: Vec<String> = CORE_PORTS
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let peers = peers_arg(&core_addresses);
        let mut cores = Vec::new();
        for (i, address) in core_addresses.iter().enumerate() {
            let id = i + 1;
            let args = vec![
                "core".to_string(),
                "--id".into(),
                id.to_string(),
                "--data-dir".into(),
                dir.join(format!("core-{id}")).display().to_string(),
                "--listen".into(),
                address.clone(),
                "--peers".into(),
                peers.clone(),
                "--tls-dir".into(),
                tls.display().to_string(),
                "--node-grace-ms".into(),
                NODE_GRACE_MS.to_string(),
            ];
            let log = dir.join(format!("core-{id}.log"));
            cores.push(Server::spawn(
                &format!("corral core-{id}"),
                binary,
                &args,
                &log,
            )?);
        }
        let identity = TlsIdentity::load(&tls, ADMIN_NAME)?;
        let transport = Arc::new(QuicTransport::client(&identity, &[ALPN_CORE])?);
        let mut corral = Corral {
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            tls,
            cores,
            agents: Vec::new(),
            sockets: (1..=4).map(|i| dir.join(format!("a{i}.sock"))).collect(),
            core_addresses,
            transport,
            failovers: 0,
            gossip_setting: gossip_defaults(&bin),
        };
        let client = Arc::new(corral.core_client());
        wait_for(Duration::from_secs(30), "a Corral core leader", || {
            let client = client.clone();
            async move {
                client
                    .write(&Command::Put {
                        key: "bench/ready".into(),
                        value: Vec::new(),
                        session: None,
                    })
                    .await
                    .ok()
            }
        })
        .await?;
        for i in 0..3 {
            corral.spawn_agent(i)?;
        }
        corral.wait_for_hosts(Duration::from_secs(30)).await?;
        let a1 = corral.agent(0).await?;
        let _ = a1
            .write(AgentRequest::CreateShard {
                name: LOOKUP_SHARD.into(),
            })
            .await;
        let a2 = corral.agent(1).await?;
        a2.write(AgentRequest::JoinShard {
            shard: LOOKUP_SHARD.into(),
            address: LOOKUP_MASTER.into(),
            priority: 1,
            detach: true,
        })
        .await
        .context("registering the looked-up shard's master")?;
        // Every agent's replica must hold the master before lookups start.
        for i in 0..3 {
            let client = corral.agent(i).await?;
            client
                .read(Query::Shard(LOOKUP_SHARD.into()), true)
                .await
                .context("a consistent read of the looked-up shard")?;
        }
        Ok(corral)
    }

    fn spawn_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let name = format!("a{}", i + 1);
        let args = vec![
            "agent".to_string(),
            "--name".into(),
            name.clone(),
            "--data-dir".into(),
            self.dir.join(format!("agent-{name}")).display().to_string(),
            "--gossip".into(),
            format!("127.0.0.1:{}", GOSSIP_PORTS[i]),
            "--join".into(),
            format!("127.0.0.1:{}", GOSSIP_PORTS[0]),
            "--core".into(),
            self.core_addresses.join(","),
            "--socket".into(),
            self.sockets[i].display().to_string(),
            "--http".into(),
            format!("127.0.0.1:{}", HTTP_PORTS[i]),
            "--etcd".into(),
            format!("127.0.0.1:{}", ETCD_PORTS[i]),
            "--tls-dir".into(),
            self.tls.display().to_string(),
        ];
        let log = self.dir.join(format!("agent-{name}.log"));
        let server = Server::spawn(&format!("corral agent {name}"), &self.binary, &args, &log)?;
        if i < self.agents.len() {
            self.agents[i] = server;
        } else {
            self.agents.push(server);
        }
        Ok(())
    }

    /// Waits until every agent sees all three hosts alive, each with its node session.
    async fn wait_for_hosts(&self, timeout: Duration) -> anyhow::Result<()> {
        for i in 0..3 {
            let socket = self.sockets[i].clone();
            wait_for(
                timeout,
                &format!("agent a{} to see three hosts", i + 1),
                || {
                    let socket = socket.clone();
                    async move {
                        let client = AgentClient::connect(&socket).await.ok()?;
                        let members = client.members().await.ok()?;
                        let ready = members
                            .iter()
                            .filter(|m| m.state == MemberState::Alive && m.session.is_some())
                            .count();
                        (ready == 3).then_some(())
                    }
                },
            )
            .await?;
        }
        Ok(())
    }

    pub fn core_client(&self) -> CoreClient {
        CoreClient::new(self.transport.clone(), self.core_addresses.clone())
    }

    pub async fn agent(&self, i: usize) -> anyhow::Result<AgentClient> {
        AgentClient::connect(&self.sockets[i])
            .await
            .with_context(|| format!("connecting to {}", self.sockets[i].display()))
    }

    /// The core members and the agent that serves the benchmark's clients.
    pub fn processes(&self) -> Vec<(String, u32)> {
        let mut list: Vec<(String, u32)> = self
            .cores
            .iter()
            .map(|s| (s.name.clone(), s.pid()))
            .collect();
        list.push((self.agents[0].name.clone(), self.agents[0].pid()));
        list
    }

    /// Writes `keys` keys of `value_len` bytes straight to the core (32 writers), each
    /// once; answers the revision of the last write.
    pub async fn fill_state(&self, keys: usize, value_len: usize) -> anyhow::Result<u64> {
        const WRITERS: usize = 32;
        let client = Arc::new(self.core_client());
        // The keys the other workloads wrote go first: the state then holds exactly `keys`.
        for prefix in ["bench/", "/etcd-api/"] {
            let response = client
                .write(&Command::Delete {
                    key: prefix.into(),
                    prefix: true,
                })
                .await?;
            anyhow::ensure!(response.outcome.is_ok(), "{:?}", response.outcome);
        }
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut last = 0;
                for i in (w..keys).step_by(WRITERS) {
                    let command = Command::Put {
                        key: format!("state/{i:08}"),
                        value: vec![b'v'; value_len],
                        session: None,
                    };
                    let response = client.write(&command).await?;
                    anyhow::ensure!(response.outcome.is_ok(), "{:?}", response.outcome);
                    last = last.max(response.revision);
                }
                anyhow::Ok(last)
            }));
        }
        let mut last = 0;
        for task in tasks {
            last = last.max(task.await??);
        }
        Ok(last)
    }

    /// Waits until agent `i` (0-based) serves a replica at `revision` or later.
    pub async fn agent_reached(&self, i: usize, revision: u64) -> anyhow::Result<()> {
        let socket = self.sockets[i].clone();
        wait_for(
            Duration::from_secs(120),
            &format!("agent a{} to reach revision {revision}", i + 1),
            || {
                let socket = socket.clone();
                async move {
                    let client = AgentClient::connect(&socket).await.ok()?;
                    let status = client.status().await.ok()?;
                    (status.revision >= revision).then_some(())
                }
            },
        )
        .await
    }

    /// Starts host a4, which takes the whole state by snapshot, and waits until it
    /// serves `revision`.
    pub async fn join_agent(&mut self, revision: u64) -> anyhow::Result<()> {
        self.spawn_agent(3)?;
        self.agent_reached(3, revision).await
    }

    /// The core members, a1 (which followed every write) and a4 (which joined after).
    pub fn state_processes(&self) -> Vec<(String, u32)> {
        let mut list: Vec<(String, u32)> = self
            .cores
            .iter()
            .map(|s| (s.name.clone(), s.pid()))
            .collect();
        for (agent, how) in [(0, "followed the writes"), (3, "joined after them")] {
            if let Some(server) = self.agents.get(agent) {
                list.push((format!("{} ({how})", server.name), server.pid()));
            }
        }
        list
    }

    pub fn check_running(&mut self) -> anyhow::Result<()> {
        process::check_running(&mut self.cores)?;
        process::check_running(&mut self.agents)
    }

    /// "Who is the master of M3" from the shard map agent a1 publishes: no round trip.
    /// Each client keeps its own reader and yields after every lookup, so that 128 of
    /// them share the runtime as 128 socket clients would.
    pub fn map_lookup_clients(&self, clients: usize) -> anyhow::Result<Vec<Op>> {
        let mut ops: Vec<Op> = Vec::new();
        for _ in 0..clients {
            let mut map = ShardMap::for_socket(&self.sockets[0]);
            ops.push(Box::new(move || {
                let answer = map.master(LOOKUP_SHARD);
                op(async move {
                    tokio::task::yield_now().await;
                    match answer? {
                        Some(master) if master == LOOKUP_MASTER => Ok(None),
                        other => bail!("wrong answer: {other:?}"),
                    }
                })
            }));
        }
        Ok(ops)
    }

    /// "Who is the master of M3", from the local agent's replica, or linearizable.
    pub async fn lookup_clients(
        &self,
        clients: usize,
        linearizable: bool,
    ) -> anyhow::Result<Vec<Op>> {
        let mut ops: Vec<Op> = Vec::new();
        for _ in 0..clients {
            let client = self.agent(0).await?;
            ops.push(Box::new(move || {
                let client = client.clone();
                op(async move {
                    let reply = client
                        .read(Query::Shard(LOOKUP_SHARD.into()), linearizable)
                        .await?;
                    match reply.result {
                        QueryResult::Shard(Some(shard))
                            if shard.master.as_deref() == Some(LOOKUP_MASTER) =>
                        {
                            Ok(None)
                        }
                        other => bail!("wrong answer: {other:?}"),
                    }
                })
            }));
        }
        Ok(ops)
    }

    pub async fn write_clients(&self, clients: usize, writes: Writes) -> anyhow::Result<Vec<Op>> {
        let mut ops: Vec<Op> = Vec::new();
        let value = vec![b'v'; VALUE_SIZE];
        for c in 0..clients {
            let value = value.clone();
            let mut i = 0u64;
            match writes {
                Writes::Agent => {
                    let client = self.agent(0).await?;
                    ops.push(Box::new(move || {
                        i += 1;
                        let client = client.clone();
                        let value = value.clone();
                        op(async move {
                            client
                                .put(&format!("bench/{c}/{}", i % 1000), &value)
                                .await?;
                            Ok(None)
                        })
                    }));
                }
                Writes::Core => {
                    let client = Arc::new(self.core_client());
                    ops.push(Box::new(move || {
                        i += 1;
                        let client = client.clone();
                        let command = Command::Put {
                            key: format!("bench/{c}/{}", i % 1000),
                            value: value.clone(),
                            session: None,
                        };
                        op(async move {
                            let response = client.write(&command).await?;
                            if response.outcome.is_err() {
                                bail!("refused: {:?}", response.outcome);
                            }
                            Ok(None)
                        })
                    }));
                }
            }
        }
        Ok(ops)
    }

    /// Acquire and release of one lock; each client is its own session.
    pub async fn lock_clients(&self, clients: usize) -> anyhow::Result<Vec<Op>> {
        let mut ops: Vec<Op> = Vec::new();
        for _ in 0..clients {
            let client = self.agent(0).await?;
            ops.push(Box::new(move || {
                let client = client.clone();
                op(async move {
                    let t = Instant::now();
                    client.acquire_lock("bench-lock", 60_000).await?;
                    let waited = t.elapsed();
                    client.release_lock("bench-lock").await?;
                    Ok(Some(waited))
                })
            }));
        }
        Ok(ops)
    }

    /// Acquire and release of one lock over HTTP; each client opens a session of its
    /// own with a time-to-live (`POST /v1/sessions`) and names it on every request, over
    /// one kept-alive connection, as an HTTP client of any language would.
    pub async fn http_lock_clients(&self, clients: usize) -> anyhow::Result<Vec<Op>> {
        let gateway = std::net::SocketAddr::from(([127, 0, 0, 1], HTTP_PORTS[0]));
        let mut ops: Vec<Op> = Vec::new();
        for _ in 0..clients {
            let mut http = HttpConnection::connect(gateway).await?;
            let (status, body) = http
                .request("POST", "/v1/sessions", br#"{"ttl_ms": 60000}"#)
                .await?;
            if status != 200 {
                bail!("opening an HTTP session: {status} {body}");
            }
            let session = body
                .split("\"id\":")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|id| id.parse::<u64>().ok())
                .with_context(|| format!("no session id in {body}"))?;
            let path = format!("/v1/locks/bench-lock?session={session}&wait_ms=60000");
            let http = Arc::new(tokio::sync::Mutex::new(http));
            ops.push(Box::new(move || {
                let http = http.clone();
                let path = path.clone();
                op(async move {
                    let mut http = http.lock().await;
                    let t = Instant::now();
                    let (status, body) = http.request("POST", &path, b"").await?;
                    if status != 200 {
                        bail!("acquire over HTTP: {status} {body}");
                    }
                    let waited = t.elapsed();
                    let (status, body) = http.request("DELETE", &path, b"").await?;
                    if status != 200 {
                        bail!("release over HTTP: {status} {body}");
                    }
                    Ok(Some(waited))
                })
            }));
        }
        Ok(ops)
    }

    /// One failover: a holder process on host a2 registers the master of a fresh shard
    /// (bound to its connection), a slave on a3 waits; the holder is killed, or host a2
    /// (holder and agent) is frozen. Returns how long until a watcher on a1 hears of
    /// the new master.
    pub async fn failover(&mut self, bench: &Path, freeze: Freeze) -> anyhow::Result<Duration> {
        self.failovers += 1;
        let shard = format!("F{}", self.failovers);
        let master = format!("master-{shard}:1");
        let a1 = self.agent(0).await?;
        a1.write(AgentRequest::CreateShard {
            name: shard.clone(),
        })
        .await?;
        let (holder, _) = Holder::start(
            bench,
            &self.dir,
            &[
                "hold-corral".into(),
                self.sockets[1].display().to_string(),
                shard.clone(),
                master.clone(),
            ],
        )
        .await?;
        let a3 = self.agent(2).await?;
        a3.write(AgentRequest::JoinShard {
            shard: shard.clone(),
            address: format!("slave-{shard}:1"),
            priority: 1,
            detach: true,
        })
        .await?;
        let reply = a1.read(Query::Shard(shard.clone()), true).await?;
        match reply.result {
            QueryResult::Shard(Some(s)) if s.master.as_deref() == Some(master.as_str()) => {}
            other => bail!("the holder is not the master of {shard}: {other:?}"),
        }
        let mut subscription = a1
            .subscribe(
                EventFilter {
                    shards: true,
                    ..EventFilter::nothing()
                },
                None,
            )
            .await?;
        let started = Instant::now();
        match freeze {
            Freeze::Kill => holder.signal(Signal::SIGKILL),
            Freeze::Stop => {
                holder.signal(Signal::SIGSTOP);
                self.agents[1].signal(Signal::SIGSTOP);
            }
        }
        let noticed = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(item) = subscription.next().await {
                if let SubscriptionItem::Events(batch) = item {
                    for event in batch.events {
                        if let Event::MasterChanged {
                            shard: s, previous, ..
                        } = event
                            && s == shard
                            && previous.as_deref() == Some(master.as_str())
                        {
                            return Some(started.elapsed());
                        }
                    }
                }
            }
            None
        })
        .await;
        drop(holder);
        if freeze == Freeze::Stop {
            self.agents[1].signal(Signal::SIGCONT);
            // The thawed host takes a new identity and node session; wait for it.
            self.wait_for_hosts(Duration::from_secs(60)).await?;
        }
        match noticed {
            Ok(Some(elapsed)) => Ok(elapsed),
            Ok(None) => bail!("the subscription ended before the failover of {shard}"),
            Err(_) => bail!("no failover of {shard} within 60 s"),
        }
    }
}

/// The holder's side: register as master of `shard`, bound to this connection, and wait.
pub async fn hold(socket: &Path, shard: &str, address: &str) -> anyhow::Result<()> {
    let client = AgentClient::connect(socket).await?;
    client
        .write(AgentRequest::JoinShard {
            shard: shard.into(),
            address: address.into(),
            priority: 10,
            detach: false,
        })
        .await?;
    Holder::ready("");
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

impl Drop for Corral {
    fn drop(&mut self) {
        // Agents first, so that none reports the cores' shutdown as news.
        self.agents.clear();
        self.cores.clear();
    }
}

/// One kept-alive HTTP/1.1 connection to a gateway: enough for JSON requests whose
/// answers carry a `Content-Length`.
struct HttpConnection {
    stream: tokio::io::BufReader<tokio::net::TcpStream>,
    host: String,
}

impl HttpConnection {
    async fn connect(address: std::net::SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConnection {
            stream: tokio::io::BufReader::new(stream),
            host: address.to_string(),
        })
    }

    /// Sends one request and reads its answer: the status and the body.
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, String)> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.get_mut().write_all(&bytes).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}
