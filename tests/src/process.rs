//! Child processes of the `corral` binary, and waiting with deadlines.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The `corral` binary of this build profile, brought up to date once per test process
/// (`cargo build --workspace --bins`, a no-op when it is) so that tests always run the
/// code under test. `CORRAL_BINARY` names a binary already built from this tree instead:
/// `scripts/check` builds it in the same cargo run as the tests (one set of features for
/// the dependencies, so one compilation of them) and sets it.
pub fn corral_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(binary) = std::env::var_os("CORRAL_BINARY") {
            let binary = PathBuf::from(binary);
            assert!(
                binary.is_file(),
                "CORRAL_BINARY={} is not a file",
                binary.display()
            );
            return binary;
        }
        let exe = std::env::current_exe().expect("the test binary knows its path");
        // target/<profile>/deps/<test> -> target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("tests run from target/<profile>/deps");
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ is inside the workspace");
        let mut build = Command::new(cargo);
        build
            .current_dir(workspace)
            .args(["build", "--quiet", "--workspace", "--bins"]);
        without_package_env(&mut build);
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building the corral binary failed");
        let binary = profile_dir.join("corral");
        assert!(binary.exists(), "{} was not built", binary.display());
        binary
    })
}

/// Removes the variables cargo gives this test process about its own package
/// (CARGO_MANIFEST_DIR, ...) from `command`: a cargo build run under them looks changed to
/// build scripts that watch them (ring's does) and so rebuilds everything.
pub fn without_package_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let per_package = [
            "CARGO_PKG_",
            "CARGO_BIN_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
            || [
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
            ]
            .contains(&name.as_ref());
        if per_package {
            command.env_remove(name.as_ref());
        }
    }
}

/// Ports tests hand out: below the kernel's ephemeral range (32768 and up by default), so
/// that no socket bound to port 0 (a QUIC client's, an outgoing connection's) takes one
/// between the test picking it and the process it starts binding it.
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// The locks on ports this test process handed out, held until it exits: test processes
/// run side by side, and each takes a port only under its lock file.
static PORT_LOCKS: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());

/// A port of [`TEST_PORTS`] that no other test process holds and that is free for both
/// UDP and TCP on loopback now.
fn reserve_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let dir = std::env::temp_dir().join("corral-test-ports");
    std::fs::create_dir_all(&dir).expect("a directory for port locks");
    let span = TEST_PORTS.end - TEST_PORTS.start;
    // Processes start their search at different places.
    let start = (std::process::id() % u32::from(span)) as u16;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = TEST_PORTS.start + offset;
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
        else {
            continue;
        };
        if file.try_lock().is_err() {
            continue;
        }
        let free = std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free {
            PORT_LOCKS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(file);
            return port;
        }
    }
    panic!("no free port left in {TEST_PORTS:?}");
}

/// A free UDP port on loopback (QUIC listens on UDP), reserved for this test process.
pub fn free_udp_port() -> u16 {
    reserve_port()
}

/// A free TCP port on loopback, reserved for this test process.
pub fn free_tcp_port() -> u16 {
    reserve_port()
}

/// Polls `condition` every 50 ms until it yields a value or `timeout` passes.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `corral` child process, killed when dropped. Its output goes to a log file.
#[derive(Debug)]
pub struct ChildProcess {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

/// The example program `name` of the agent crate (`agent/examples/`), built beside the
/// `corral` binary that the tests run (`cargo build --examples` builds it; built here
/// once if it is missing).
pub fn example_binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let examples = corral_binary()
        .parent()
        .expect("the binary is in a directory")
        .join("examples");
    let binary = examples.join(name);
    if !binary.exists() {
        BUILT.get_or_init(|| {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("tests/ is inside the workspace");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            build.current_dir(workspace).args([
                "build",
                "--quiet",
                "-p",
                "corral-agent",
                "--examples",
            ]);
            without_package_env(&mut build);
            if examples.parent().is_some_and(|p| p.ends_with("release")) {
                build.arg("--release");
            }
            let status = build.status().expect("cargo runs");
            assert!(status.success(), "building the examples failed");
        });
    }
    assert!(binary.exists(), "{} was not built", binary.display());
    binary
}

impl ChildProcess {
    pub fn spawn(name: &str, args: &[String], log: &Path, env: &[(&str, &str)]) -> Self {
        Self::spawn_program(corral_binary(), name, args, log, env)
    }

    /// As [`ChildProcess::spawn`], running `program` rather than `corral`.
    pub fn spawn_program(
        program: &Path,
        name: &str,
        args: &[String],
        log: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the log file");
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log"))
            .stderr(log_file);
        for (key, value) in env {
            command.env(key, value);
        }
        if std::env::var("RUST_LOG").is_err() {
            command.env("RUST_LOG", "info,openraft=warn");
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        Self {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        let _ = kill(self.pid(), signal);
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait up to `timeout` for a clean exit; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
    }

    /// How the process ended, once it has (`None` while it runs).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process's log so far, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.signal(Signal::SIGCONT);
        self.kill();
    }
}
