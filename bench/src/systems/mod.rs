//! The three systems, each started as a three-member cluster on loopback and driven
//! through its own client library by the same closed loop.

pub mod corral;
pub mod etcd;
pub mod etcd_api;
pub mod zookeeper;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The shard whose master the lookups ask for.
pub const LOOKUP_SHARD: &str = "M3";
/// Bytes per written value.
pub const VALUE_SIZE: usize = 256;

/// How the holder of a registration is taken away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freeze {
    /// SIGKILL of the process that holds the registration.
    Kill,
    /// SIGSTOP of its host: the process (and, for Corral, the host's agent).
    Stop,
}

impl Freeze {
    pub fn label(self) -> &'static str {
        match self {
            Freeze::Kill => "SIGKILL",
            Freeze::Stop => "SIGSTOP",
        }
    }
}

/// How a lookup reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Corral only: the shard map the local agent publishes, read with no round trip.
    Map,
    /// The nearest copy: Corral's local agent, etcd serializable, ZooKeeper's member.
    Local,
    /// A read that reflects every write acknowledged before it began.
    Linearizable,
}

/// Where a Corral write enters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writes {
    Agent,
    Core,
}

/// How a Corral lock client holds its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockVia {
    /// The socket connection is the session.
    Socket,
    /// An HTTP client with a session of its own (`POST /v1/sessions`, `?session=ID`).
    HttpSession,
}

/// A child process of this benchmark that holds a registration (a master's shard
/// replica, an ephemeral node, a leased key) until it is killed or frozen.
pub struct Holder {
    child: Child,
}

impl Holder {
    /// Starts the holder and waits for its "ready" line; returns what followed the word
    /// (the lease or session timeout it was granted).
    pub async fn start(
        bench: &Path,
        dir: &Path,
        args: &[String],
    ) -> anyhow::Result<(Holder, String)> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("holders.log"))?;
        let mut child = Command::new(bench)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start the holder {}", bench.display()))?;
        let stdout = child.stdout.take().context("the holder's stdout")?;
        let mut holder = Holder { child };
        let line = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                let _ = BufReader::new(stdout).read_line(&mut line);
                line
            }),
        )
        .await;
        match line {
            Ok(Ok(line)) if line.starts_with("ready") => {
                Ok((holder, line["ready".len()..].trim().to_string()))
            }
            _ => {
                let _ = holder.child.kill();
                bail!(
                    "the holder ({}) did not register; see {}",
                    args.join(" "),
                    dir.join("holders.log").display()
                )
            }
        }
    }

    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
    }

    /// Called in the holder process once its registration stands.
    pub fn ready(info: &str) {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "ready {info}");
        let _ = out.flush();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        self.signal(Signal::SIGCONT);
        let _ = self.child.wait();
    }
}
