//! `corral dev`: a whole Corral on loopback in one command — a three-member core and N
//! agents as child processes, with a throwaway CA — and, with `--demo`, the failover of a
//! sharded store played and narrated (see `demo.rs`).
//!
//! ```text
//!  base port P:  core-i  127.0.0.1:P+i        (Raft and clients, QUIC)
//!                agent i gossip 127.0.0.1:P+100+i, HTTP 127.0.0.1:P+200+i,
//!                        etcd v3 API 127.0.0.1:P+300+i, DNS 127.0.0.1:P+400+i
//!                socket  DIR/aI.sock, logs DIR/logs/
//! ```

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use corral_net::client::CoreClient;
use corral_net::rpc::ALPN_CORE;
use corral_net::transport::certificate_authority::{self, ADMIN_NAME};
use corral_net::transport::{QuicTransport, TlsIdentity};
use corral_proto::AgentClient;

use super::demo;

#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// Directory for data, certificates, sockets and logs (default: a fresh temporary
    /// directory, removed on exit).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Number of agents (hosts).
    #[arg(long, default_value_t = 5)]
    agents: usize,
    /// First port of the layout: cores at +1.., gossip at +101.., HTTP at +201.., etcd at
    /// +301.., DNS at +401..
    #[arg(long, default_value_t = 7000)]
    base_port: u16,
    /// Play the sharded-store failover scenario, narrated, then stop.
    #[arg(long)]
    demo: bool,
}

/// The processes of a dev cluster. Dropping it stops them.
pub(crate) struct DevCluster {
    pub(crate) dir: PathBuf,
    pub(crate) core_addresses: Vec<String>,
    pub(crate) agents: Vec<DevAgent>,
    cores: Vec<Child>,
    temporary: bool,
}

pub(crate) struct DevAgent {
    pub(crate) name: String,
    pub(crate) socket: PathBuf,
    pub(crate) http: SocketAddr,
    /// Its etcd v3 gRPC endpoint.
    pub(crate) etcd: SocketAddr,
    /// Its DNS server (UDP and TCP).
    pub(crate) dns: SocketAddr,
    pub(crate) gossip: SocketAddr,
    pub(crate) process: Option<Child>,
}

impl DevAgent {
    /// SIGKILL: the host dies without a word.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_udp(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

fn free_tcp(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn spawn(dir: &Path, log: &str, args: &[String]) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("cannot find the corral binary")?;
    let log_path = dir.join("logs").join(log);
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut command = Command::new(exe);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // The children get their settings from their flags only.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CORRAL_") {
            command.env_remove(name);
        }
    }
    command
        .spawn()
        .with_context(|| format!("cannot start corral {}", args.join(" ")))
}

impl DevCluster {
    pub(crate) async fn start(args: &DevArgs) -> anyhow::Result<DevCluster> {
        if args.agents == 0 || args.agents > 99 {
            bail!("--agents must be between 1 and 99, not {}", args.agents);
        }
        let base = args.base_port;
        if u32::from(base) + 300 > u32::from(u16::MAX) {
            bail!("--base-port {base} leaves no room for the layout (it needs base+300)");
        }
        let (dir, temporary) = match &args.dir {
            Some(dir) => (dir.clone(), false),
            None => {
                let dir = std::env::temp_dir().join(format!("corral-dev-{}", std::process::id()));
                (dir, true)
            }
        };
        if dir.join("tls").exists() {
            bail!(
                "{} already holds a dev cluster; remove it or pick another --dir",
                dir.display()
            );
        }
        for sub in ["tls", "logs", "data"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        let mut taken = Vec::new();
        for i in 1..=3u16 {
            if !free_udp(base + i) {
                taken.push(format!("udp {}", base + i));
            }
        }
        for i in 1..=args.agents as u16 {
            if !free_udp(base + 100 + i) {
                taken.push(format!("udp {}", base + 100 + i));
            }
            for port in [base + 200 + i, base + 300 + i, base + 400 + i] {
                if !free_tcp(port) {
                    taken.push(format!("tcp {port}"));
                }
            }
            if !free_udp(base + 400 + i) {
                taken.push(format!("udp {}", base + 400 + i));
            }
        }
        if !taken.is_empty() {
            bail!(
                "ports in use: {}; pick another --base-port",
                taken.join(", ")
            );
        }

        let tls = dir.join("tls");
        certificate_authority::init(&tls, 30)?;
        for id in 1..=3u64 {
            certificate_authority::issue(&tls, &certificate_authority::core_member_name(id), 30)?;
        }
        let core_addresses: Vec<String> = (1..=3u16)
            .map(|i| format!("127.0.0.1:{}", base + i))
            .collect();
        let peers = core_addresses
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut cores = Vec::new();
        for (i, address) in core_addresses.iter().enumerate() {
            let id = i + 1;
            let args: Vec<String> = vec![
                "core".into(),
                "--id".into(),
                id.to_string(),
                "--data-dir".into(),
                dir.join("data")
                    .join(format!("core-{id}"))
                    .display()
                    .to_string(),
                "--listen".into(),
                address.clone(),
                "--peers".into(),
                peers.clone(),
                "--tls-dir".into(),
                tls.display().to_string(),
            ];
            cores.push(spawn(&dir, &format!("core-{id}.log"), &args)?);
        }
        let mut cluster = DevCluster {
            dir: dir.clone(),
            core_addresses,
            agents: Vec::new(),
            cores,
            temporary,
        };
        cluster.wait_for_leader(Duration::from_secs(20)).await?;

        for i in 1..=args.agents as u16 {
            let name = format!("a{i}");
            certificate_authority::issue(&tls, &name, 30)?;
            let agent = DevAgent {
                socket: dir.join(format!("{name}.sock")),
                http: SocketAddr::from(([127, 0, 0, 1], base + 200 + i)),
                etcd: SocketAddr::from(([127, 0, 0, 1], base + 300 + i)),
                dns: SocketAddr::from(([127, 0, 0, 1], base + 400 + i)),
                gossip: SocketAddr::from(([127, 0, 0, 1], base + 100 + i)),
                name,
                process: None,
            };
            cluster.agents.push(agent);
            cluster.spawn_agent(usize::from(i - 1))?;
        }
        for agent in &cluster.agents {
            wait_for_socket(&agent.socket, Duration::from_secs(20)).await?;
        }
        cluster
            .wait_for_members(args.agents, Duration::from_secs(20))
            .await?;
        Ok(cluster)
    }

    fn spawn_agent(&mut self, index: usize) -> anyhow::Result<()> {
        let seed = self.agents[0].gossip.to_string();
        let tls = self.dir.join("tls");
        let agent = &self.agents[index];
        let args: Vec<String> = vec![
            "agent".into(),
            "--name".into(),
            agent.name.clone(),
            "--data-dir".into(),
            self.dir
                .join("data")
                .join(&agent.name)
                .display()
                .to_string(),
            "--gossip".into(),
            agent.gossip.to_string(),
            "--join".into(),
            seed,
            "--core".into(),
            self.core_addresses.join(","),
            "--socket".into(),
            agent.socket.display().to_string(),
            "--http".into(),
            agent.http.to_string(),
            "--etcd".into(),
            agent.etcd.to_string(),
            "--dns".into(),
            agent.dns.to_string(),
            "--tls-dir".into(),
            tls.display().to_string(),
        ];
        let child = spawn(&self.dir, &format!("{}.log", agent.name), &args)?;
        self.agents[index].process = Some(child);
        Ok(())
    }

    pub(crate) fn core_client(&self) -> anyhow::Result<CoreClient> {
        let identity = TlsIdentity::load(&self.dir.join("tls"), ADMIN_NAME)?;
        let transport = Arc::new(QuicTransport::client(&identity, &[ALPN_CORE])?);
        Ok(CoreClient::new(transport, self.core_addresses.clone()))
    }

    async fn wait_for_leader(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let client = self.core_client()?;
        let deadline = Instant::now() + timeout;
        loop {
            for (i, core) in self.cores.iter_mut().enumerate() {
                if let Ok(Some(status)) = core.try_wait() {
                    bail!(
                        "core-{} exited ({status}); see {}",
                        i + 1,
                        self.dir
                            .join("logs")
                            .join(format!("core-{}.log", i + 1))
                            .display()
                    );
                }
            }
            for address in &self.core_addresses {
                if let Ok(status) = client.status(address).await
                    && status.leader.is_some()
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the core elected no leader within {timeout:?}; see {}/logs",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_for_members(&self, expected: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for agent in &self.agents {
            let client = AgentClient::connect(&agent.socket).await?;
            loop {
                let status = client.status().await?;
                if status.members_alive == expected && status.node_session.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{} sees {} of {expected} agents alive after {timeout:?}; see {}/logs",
                        agent.name,
                        status.members_alive,
                        self.dir.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    fn print_welcome(&self) {
        println!(
            "Corral is running on loopback (data, certificates and logs in {}):",
            self.dir.display()
        );
        println!();
        println!("  core     {}", self.core_addresses.join("  "));
        println!();
        println!(
            "  {:<6} {:<38} {:<24} {:<18} {:<18} gossip",
            "agent", "socket", "HTTP gateway", "etcd v3 API", "DNS"
        );
        for agent in &self.agents {
            println!(
                "  {:<6} {:<38} http://{:<17} {:<18} {:<18} {}",
                agent.name,
                agent.socket.display(),
                agent.http,
                agent.etcd,
                agent.dns,
                agent.gossip
            );
        }
        let first = &self.agents[0];
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "corral".into());
        println!();
        println!("Try, in another terminal:");
        println!();
        println!("  export CORRAL_SOCKET={}", first.socket.display());
        println!("  alias corral={exe}");
        println!("  corral status");
        println!("  corral members");
        println!("  corral kv put config/mode fast && corral kv get config/mode");
        println!(
            "  corral shard create M3 && corral shard join M3 10.0.0.7:6379 --detach && corral shard get M3"
        );
        println!("  corral watch --prefix config/");
        println!("  curl -s http://{}/v1/status", first.http);
        println!(
            "  curl -s -X PUT http://{}/v1/kv/hello -d world",
            first.http
        );
        println!("  curl -sN 'http://{}/v1/watch?prefix=hello'", first.http);
        println!("  open http://{}/ for the status page", first.http);
        println!(
            "  etcdctl --endpoints={} put hello world && etcdctl --endpoints={} get hello",
            first.etcd, first.etcd
        );
        println!(
            "  dig @{} -p {} +short master.M3.shard.corral. api.service.corral. SRV",
            first.dns.ip(),
            first.dns.port()
        );
        println!();
        println!(
            "Kill an agent to watch the others notice: kill -9 <pid of aN>, pids in {}/pids",
            self.dir.display()
        );
        println!("Ctrl-C stops everything.");
    }

    fn write_pids(&self) -> anyhow::Result<()> {
        let mut text = String::new();
        for (i, core) in self.cores.iter().enumerate() {
            text.push_str(&format!("core-{} {}\n", i + 1, core.id()));
        }
        for agent in &self.agents {
            if let Some(child) = &agent.process {
                text.push_str(&format!("{} {}\n", agent.name, child.id()));
            }
        }
        std::fs::write(self.dir.join("pids"), text)?;
        Ok(())
    }

    /// Stops agents first (they leave and close their sessions), then the core.
    pub(crate) fn stop(&mut self) {
        let mut children: Vec<&mut Child> = self
            .agents
            .iter_mut()
            .filter_map(|a| a.process.as_mut())
            .collect();
        terminate(&mut children);
        let mut cores: Vec<&mut Child> = self.cores.iter_mut().collect();
        terminate(&mut cores);
        self.cores.clear();
        for agent in &mut self.agents {
            agent.process = None;
        }
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGTERM, up to 5 s to exit, then SIGKILL.
fn terminate(children: &mut [&mut Child]) {
    for child in children.iter_mut() {
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for child in children.iter_mut() {
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

async fn wait_for_socket(socket: &Path, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if AgentClient::connect(socket).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no agent answers on {} after {timeout:?}", socket.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn run(args: DevArgs) -> anyhow::Result<()> {
    super::init_logging("warn");
    super::runtime()?.block_on(async move {
        let started = Instant::now();
        let cluster = tokio::select! {
            cluster = DevCluster::start(&args) => cluster?,
            () = super::shutdown_signal() => bail!("interrupted while starting"),
        };
        let mut cluster = cluster;
        cluster.write_pids()?;
        println!("(up in {:.1} s)", started.elapsed().as_secs_f64());
        if args.demo {
            let result = demo::play(&mut cluster).await;
            cluster.stop();
            return result;
        }
        cluster.print_welcome();
        super::shutdown_signal().await;
        println!("stopping");
        cluster.stop();
        Ok(())
    })
}
