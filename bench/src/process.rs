//! Server processes started by the benchmark: each is killed when dropped, so that no run
//! leaves a cluster behind, whatever way it ends.

use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub struct Server {
    pub name: String,
    child: Child,
}

impl Server {
    /// Starts `program args`, its output appended to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {} ({})", name, program.display()))?;
        Ok(Self {
            name: name.to_string(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status})", self.name);
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A frozen process must be thawed to die promptly on some kernels' accounting.
        let _ = self.child.kill();
        self.signal(Signal::SIGCONT);
        let _ = self.child.wait();
    }
}

/// The name and process id of each server.
pub fn pids(servers: &[Server]) -> Vec<(String, u32)> {
    servers.iter().map(|s| (s.name.clone(), s.pid())).collect()
}

/// Fails naming the first server that has exited.
pub fn check_running(servers: &mut [Server]) -> anyhow::Result<()> {
    servers.iter_mut().try_for_each(Server::check_running)
}

/// Fails naming every port of `tcp` and `udp` that is already taken on loopback.
pub fn check_ports_free(tcp: &[u16], udp: &[u16]) -> anyhow::Result<()> {
    let mut taken = Vec::new();
    for &port in tcp {
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            taken.push(format!("tcp {port}"));
        }
    }
    for &port in udp {
        if UdpSocket::bind(("127.0.0.1", port)).is_err() {
            taken.push(format!("udp {port}"));
        }
    }
    if !taken.is_empty() {
        bail!(
            "ports in use on 127.0.0.1: {}; stop what holds them",
            taken.join(", ")
        );
    }
    Ok(())
}

/// Polls `probe` every 100 ms until it answers Some, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("gave up after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a command to completion and returns its standard output, trimmed.
pub fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
