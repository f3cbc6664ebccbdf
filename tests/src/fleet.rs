//! A fleet on loopback: a core of real `corral core` processes and agents as real
//! `corral agent` processes, each with its own certificate, gossip port and socket.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_proto::AgentClient;
use corral_proto::api::{MemberInfo, MemberState};
use nix::sys::signal::Signal;

use crate::core_cluster::{CoreCluster, CoreOptions};
use crate::process::{ChildProcess, free_tcp_port, free_udp_port, wait_until};

pub struct Fleet {
    pub core: CoreCluster,
    pub agents: BTreeMap<String, AgentProcess>,
    root: PathBuf,
    /// Given to every agent after the usual ones.
    agent_args: Vec<String>,
}

pub struct AgentProcess {
    pub name: String,
    pub gossip: String,
    pub socket: PathBuf,
    /// The HTTP gateway's address.
    pub http: std::net::SocketAddr,
    /// Its etcd v3 gRPC endpoint.
    pub etcd: std::net::SocketAddr,
    /// Its DNS server (UDP and TCP).
    pub dns: std::net::SocketAddr,
    process: Option<ChildProcess>,
}

impl AgentProcess {
    pub fn pid(&self) -> nix::unistd::Pid {
        self.process.as_ref().expect("running").pid()
    }

    pub fn log_text(&self) -> String {
        self.process
            .as_ref()
            .map(ChildProcess::log_text)
            .unwrap_or_default()
    }
}

impl Fleet {
    /// Starts a three-member core and `agents` agents named `a1`..; the first agent is
    /// everyone's seed. Call within a tokio runtime.
    pub async fn start(root: &Path, agents: usize) -> Fleet {
        Self::start_with(root, agents, &[]).await
    }

    /// As [`Fleet::start`], with `agent_args` given to every agent (and to those started
    /// again).
    pub async fn start_with(root: &Path, agents: usize, agent_args: &[&str]) -> Fleet {
        let core = CoreCluster::start(root, CoreOptions::default());
        core.wait_for_leader(Duration::from_secs(20)).await;
        let mut fleet = Fleet {
            core,
            agents: BTreeMap::new(),
            root: root.to_path_buf(),
            agent_args: agent_args.iter().map(|a| a.to_string()).collect(),
        };
        for i in 1..=agents {
            fleet.add_agent(&format!("a{i}"));
        }
        fleet
    }

    /// Starts a new agent `name` (with a certificate of its own) that joins the fleet.
    pub fn add_agent(&mut self, name: &str) {
        self.core.pki.issue(name);
        let agent = AgentProcess {
            name: name.to_string(),
            gossip: format!("127.0.0.1:{}", free_udp_port()),
            socket: self.root.join("sockets").join(format!("{name}.sock")),
            http: std::net::SocketAddr::from(([127, 0, 0, 1], free_tcp_port())),
            etcd: std::net::SocketAddr::from(([127, 0, 0, 1], free_tcp_port())),
            dns: std::net::SocketAddr::from(([127, 0, 0, 1], free_tcp_port())),
            process: None,
        };
        self.agents.insert(name.to_string(), agent);
        self.spawn_agent(name);
    }

    pub fn names(&self) -> Vec<String> {
        self.agents.keys().cloned().collect()
    }

    fn seed(&self) -> String {
        self.agents
            .values()
            .next()
            .expect("one agent")
            .gossip
            .clone()
    }

    /// Starts (or restarts) agent `name`, with the first agent as its seed (a restarted
    /// first agent finds the pool again through the peers it saved).
    pub fn spawn_agent(&mut self, name: &str) {
        let seed = self.seed();
        let core: Vec<String> = self.core.addresses.values().cloned().collect();
        let root = self.root.clone();
        let tls = self.core.pki.dir.clone();
        let extra = self.agent_args.clone();
        let agent = self.agents.get_mut(name).expect("a known agent");
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--name".into(),
            name.into(),
            "--data-dir".into(),
            root.join(format!("agent-{name}")).display().to_string(),
            "--gossip".into(),
            agent.gossip.clone(),
            "--join".into(),
            seed,
            "--core".into(),
            core.join(","),
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
        args.extend(extra);
        let log = root.join(format!("agent-{name}.log"));
        agent.process = Some(ChildProcess::spawn(name, &args, &log, &[]));
    }

    pub fn agent(&self, name: &str) -> &AgentProcess {
        &self.agents[name]
    }

    pub fn kill_agent(&mut self, name: &str) {
        if let Some(mut process) = self.agents.get_mut(name).and_then(|a| a.process.take()) {
            process.kill();
        }
    }

    /// SIGTERM to agent `name`, waiting up to 10 s for it to exit; answers its exit code.
    pub fn terminate_agent(&mut self, name: &str) -> Option<i32> {
        let mut process = self.agents.get_mut(name).and_then(|a| a.process.take())?;
        process.terminate(Duration::from_secs(10))
    }

    /// Agent `name`'s exit code once its process ended by itself (None while it runs).
    pub fn exit_code(&mut self, name: &str) -> Option<i32> {
        let agent = self.agents.get_mut(name)?;
        agent.process.as_mut()?.exit_status()?.code()
    }

    pub fn signal_agent(&self, name: &str, signal: Signal) {
        if let Some(process) = &self.agents[name].process {
            process.signal(signal);
        }
    }

    /// The HTTP gateway of agent `name`, once it answers.
    pub async fn gateway(&self, name: &str) -> std::net::SocketAddr {
        // The gateway answers once the agent has started; the socket is a good sign of that.
        let _ = self.client(name).await;
        let address = self.agent(name).http;
        wait_until(Duration::from_secs(20), "the HTTP gateway", || async move {
            tokio::net::TcpStream::connect(address).await.ok()
        })
        .await;
        address
    }

    /// The etcd endpoint of agent `name`, once it answers.
    pub async fn etcd(&self, name: &str) -> std::net::SocketAddr {
        let _ = self.client(name).await;
        let address = self.agent(name).etcd;
        wait_until(
            Duration::from_secs(20),
            "the etcd endpoint",
            || async move { tokio::net::TcpStream::connect(address).await.ok() },
        )
        .await;
        address
    }

    /// A new connection to agent `name`, once its socket answers (within 20 s, or the
    /// test fails with the agent's log).
    pub async fn client(&self, name: &str) -> AgentClient {
        let agent = &self.agents[name];
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(client) = AgentClient::connect(&agent.socket).await {
                return client;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "the socket of {name} did not answer within 20 s; its log:\n{}",
                    agent.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every agent in `names` sees exactly `expected` alive, each with a node
    /// session, and returns how long it took.
    pub async fn wait_for_members(
        &self,
        names: &[String],
        expected: &[String],
        timeout: Duration,
    ) -> Duration {
        let started = std::time::Instant::now();
        for name in names {
            let client = self.client(name).await;
            wait_until(timeout, &format!("{name} to see {expected:?}"), || {
                let client = client.clone();
                async move {
                    let members = client.members().await.ok()?;
                    let alive: Vec<&MemberInfo> = members
                        .iter()
                        .filter(|m| m.state == MemberState::Alive && m.session.is_some())
                        .collect();
                    let names: Vec<&str> = alive.iter().map(|m| m.name.as_str()).collect();
                    (names == expected.iter().map(String::as_str).collect::<Vec<_>>()).then_some(())
                }
            })
            .await;
        }
        started.elapsed()
    }

    pub fn logs(&self) -> String {
        let mut text = self.core.logs();
        for agent in self.agents.values() {
            text.push_str(&format!(
                "\n===== {} =====\n{}",
                agent.name,
                agent.log_text()
            ));
        }
        text
    }
}
