//! The Docker cluster of `deploy/` (three core members, five agents, each container with
//! its own address and certificate), and the faults a test inflicts on it: SIGKILL and
//! restart, `docker pause`, partitions with iptables, and loss with `tc netem` (or
//! iptables' `statistic` match where the kernel has no netem), all run inside a container's network namespace through `nsenter` (the image holds
//! nothing but the corral binary).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use corral_net::client::CoreClient;
use corral_net::rpc::ALPN_CORE;
use corral_net::transport::{QuicTransport, TlsIdentity};
use corral_proto::AgentClient;

use crate::wait_until;

pub const CORES: [&str; 3] = ["core1", "core2", "core3"];
pub const AGENTS: [&str; 5] = ["a1", "a2", "a3", "a4", "a5"];

/// True when a Docker engine answers.
pub fn available() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|out| out.status.success())
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub struct DockerCluster {
    deploy: PathBuf,
    project: String,
    net: String,
}

impl DockerCluster {
    /// Builds the image if needed and starts the cluster (deploy/up); waits until the core
    /// has a leader and every agent sees all five alive.
    pub async fn up() -> DockerCluster {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ is in the workspace")
            .join("deploy");
        let cluster = DockerCluster {
            deploy: deploy.clone(),
            project: "corralfaults".into(),
            net: std::env::var("CORRAL_NET").unwrap_or_else(|_| "172.28.7".into()),
        };
        cluster.compose_down();
        let mut up = Command::new(deploy.join("up"));
        up.env("COMPOSE_PROJECT_NAME", &cluster.project)
            .env("CORRAL_NET", &cluster.net);
        // deploy/up builds the image; it must not see this test's package variables.
        crate::process::without_package_env(&mut up);
        let status = up.status().expect("deploy/up runs");
        assert!(status.success(), "deploy/up failed");
        let core = cluster.core_client();
        wait_until(Duration::from_secs(60), "a core leader", || {
            let core = core.clone();
            async move { core.read_index().await.ok() }
        })
        .await;
        for agent in AGENTS {
            let client = cluster.client(agent).await;
            wait_until(
                Duration::from_secs(60),
                &format!("{agent} to see 5 alive"),
                || {
                    let client = client.clone();
                    async move {
                        let status = client.status().await.ok()?;
                        (status.members_alive == 5 && status.node_session.is_some()).then_some(())
                    }
                },
            )
            .await;
        }
        cluster
    }

    fn compose_down(&self) {
        let _ = Command::new(self.deploy.join("down"))
            .env("COMPOSE_PROJECT_NAME", &self.project)
            .env("CORRAL_NET", &self.net)
            .status();
    }

    /// The container of service `name`.
    pub fn container(&self, name: &str) -> String {
        format!("{}_{name}_1", self.project)
    }

    pub fn ip(&self, name: &str) -> String {
        let host = match name {
            "core1" => 11,
            "core2" => 12,
            "core3" => 13,
            agent => 20 + agent[1..].parse::<u8>().expect("agents are aN"),
        };
        format!("{}.{host}", self.net)
    }

    pub fn core_addresses(&self) -> Vec<String> {
        CORES
            .iter()
            .map(|c| format!("{}:7001", self.ip(c)))
            .collect()
    }

    pub fn core_client(&self) -> Arc<CoreClient> {
        let identity =
            TlsIdentity::load(&self.deploy.join("tls"), "admin").expect("admin certificate");
        let transport = QuicTransport::client(&identity, &[ALPN_CORE]).expect("a QUIC client");
        Arc::new(CoreClient::new(Arc::new(transport), self.core_addresses()))
    }

    pub fn socket(&self, agent: &str) -> PathBuf {
        self.deploy.join("state").join(agent).join("agent.sock")
    }

    /// A connection to `agent`'s socket (bind-mounted on the host).
    pub async fn client(&self, agent: &str) -> AgentClient {
        let socket = self.socket(agent);
        wait_until(
            Duration::from_secs(60),
            &format!("socket of {agent}"),
            || {
                let socket = socket.clone();
                async move { AgentClient::connect(&socket).await.ok() }
            },
        )
        .await
    }

    pub fn docker(&self, verb: &str, name: &str) {
        run("docker", &[verb, &self.container(name)]);
    }

    /// SIGKILL.
    pub fn kill(&self, name: &str) {
        self.docker("kill", name);
    }

    pub fn start(&self, name: &str) {
        self.docker("start", name);
    }

    pub fn pause(&self, name: &str) {
        self.docker("pause", name);
    }

    pub fn unpause(&self, name: &str) {
        self.docker("unpause", name);
    }

    fn pid(&self, name: &str) -> String {
        run(
            "docker",
            &["inspect", "-f", "{{.State.Pid}}", &self.container(name)],
        )
    }

    /// Runs `args` inside `name`'s network namespace.
    pub fn in_netns(&self, name: &str, args: &[&str]) {
        let pid = self.pid(name);
        let mut all = vec!["-t", pid.as_str(), "-n"];
        all.extend_from_slice(args);
        run("nsenter", &all);
    }

    /// Drops all traffic between `a` and `b`, both ways.
    pub fn cut(&self, a: &str, b: &str) {
        let (ip_a, ip_b) = (self.ip(a), self.ip(b));
        for (here, there) in [(a, &ip_b), (b, &ip_a)] {
            self.in_netns(
                here,
                &["iptables", "-A", "INPUT", "-s", there, "-j", "DROP"],
            );
            self.in_netns(
                here,
                &["iptables", "-A", "OUTPUT", "-d", there, "-j", "DROP"],
            );
        }
    }

    /// Removes every cut that involves `name` (its own rules).
    pub fn heal(&self, name: &str) {
        self.in_netns(name, &["iptables", "-F"]);
    }

    /// Drops `percent` of the packets arriving at `name`, so every link into it loses that
    /// share. With `tc netem` when the kernel has it; otherwise (some kernels ship without
    /// sch_netem) with iptables' random `statistic` match, which drops the same share.
    /// Returns which of the two did it.
    pub fn loss(&self, name: &str, percent: u32) -> &'static str {
        let pid = self.pid(name);
        let netem = Command::new("nsenter")
            .args([
                "-t", &pid, "-n", "tc", "qdisc", "replace", "dev", "eth0", "root", "netem",
            ])
            .args(["loss", &format!("{percent}%")])
            .output()
            .is_ok_and(|out| out.status.success());
        if netem {
            return "netem";
        }
        let probability = format!("{:.4}", f64::from(percent) / 100.0);
        self.in_netns(
            name,
            &[
                "iptables",
                "-A",
                "INPUT",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &probability,
                "-j",
                "DROP",
            ],
        );
        "iptables statistic"
    }

    /// Removes a netem qdisc added by [`DockerCluster::loss`] (iptables rules go with
    /// [`DockerCluster::heal`]).
    pub fn clear_netem(&self, name: &str) {
        let pid = self.pid(name);
        let _ = Command::new("nsenter")
            .args([
                "-t", &pid, "-n", "tc", "qdisc", "del", "dev", "eth0", "root",
            ])
            .status();
    }

    /// Delays the UDP packets `name` sends (to `to` only, when given) by `delay_ms` ±
    /// `jitter_ms` for `seconds`, in user space: an iptables rule in its network namespace
    /// hands them to NFQUEUE queue `queue`, and `nfq-delay` (built by `tests/faults/run`
    /// from `tests/faults/nfq_delay.c`) holds each before it lets it go. The rule bypasses
    /// the queue once the program exits; [`DockerCluster::heal`] removes it.
    pub fn delay(
        &self,
        name: &str,
        to: Option<&str>,
        queue: u16,
        (delay_ms, jitter_ms): (u32, u32),
        seconds: u32,
    ) -> std::process::Child {
        let queue_text = queue.to_string();
        let mut rule = vec!["iptables", "-A", "OUTPUT", "-p", "udp"];
        let destination = to.map(|to| self.ip(to));
        if let Some(ip) = &destination {
            rule.extend(["-d", ip.as_str()]);
        }
        rule.extend([
            "-j",
            "NFQUEUE",
            "--queue-num",
            &queue_text,
            "--queue-bypass",
        ]);
        self.in_netns(name, &rule);
        let program = nfq_delay_program();
        Command::new("nsenter")
            .args(["-t", &self.pid(name), "-n"])
            .arg(&program)
            .args([
                queue_text,
                delay_ms.to_string(),
                jitter_ms.to_string(),
                seconds.to_string(),
            ])
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()))
    }

    pub fn logs(&self, name: &str) -> String {
        Command::new("docker")
            .args(["logs", "--tail", "200", &self.container(name)])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    }
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for name in CORES.iter().chain(AGENTS.iter()) {
                eprintln!("===== {name} =====\n{}", self.logs(name));
            }
        }
        self.compose_down();
    }
}

/// The user-space delay program `tests/faults/run` builds.
pub fn nfq_delay_program() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("nfq-delay")
}
