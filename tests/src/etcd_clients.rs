//! etcd clients that other people wrote, for the tests of the agents' etcd endpoint:
//! Debian's `etcdctl` (package etcd-client, installed with apt-get when missing and this
//! is root) and Python's `etcd3` package (in a virtualenv made once under `target/`).

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::process::corral_binary;

/// How long one etcdctl or Python command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The Python `etcd3` release the tests use, the protobuf runtime its generated code
/// needs, and a tenacity that still takes the retry callbacks its lock passes.
const PYTHON_PACKAGES: [&str; 3] = ["etcd3==0.12.0", "protobuf==3.20.3", "tenacity==6.3.1"];

/// A directory under the build's target directory, shared by every test process.
fn target_dir() -> PathBuf {
    corral_binary()
        .parent()
        .and_then(Path::parent)
        .expect("the binary lives in target/<profile>/")
        .to_path_buf()
}

/// Runs `f` under an exclusive lock on `name` in the target directory, so that parallel
/// test processes install once.
fn exclusively<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let path = target_dir().join(format!("{name}.lock"));
    let file = File::create(&path).expect("create the lock file");
    file.lock().expect("lock the lock file");
    let result = f();
    let _ = file.unlock();
    result
}

/// Runs `command` to its end within [`COMMAND_TIMEOUT`]. Its output is read while it runs:
/// a program that writes more than a pipe holds would otherwise wait forever for a reader.
fn run_with_deadline(mut command: Command, input: Option<&str>) -> Output {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    if input.is_some() {
        command.stdin(Stdio::piped());
    } else {
        command.stdin(Stdio::null());
    }
    let mut child = command.spawn().expect("spawn the command");
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(input.as_bytes()).expect("write the input");
    }
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = stderr.join().unwrap_or_default();
            panic!(
                "{command:?} ran for more than {COMMAND_TIMEOUT:?}: {}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// A program of a Debian package: `$variable` if set, else `name` on the PATH, installed
/// with apt-get (as root) when missing.
pub fn debian_binary(variable: &str, name: &str, package: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(variable) {
        return PathBuf::from(path);
    }
    let found = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
        })
    };
    if let Some(path) = found() {
        return path;
    }
    exclusively(&format!("{package}-install"), || {
        if found().is_none() && nix::unistd::getuid().is_root() {
            let mut update = Command::new("apt-get");
            update.args(["update", "-qq"]);
            run_with_deadline(update, None);
            let mut install = Command::new("apt-get");
            install
                .args(["install", "-y", "-qq", package])
                .env("DEBIAN_FRONTEND", "noninteractive");
            run_with_deadline(install, None);
        }
    });
    found().unwrap_or_else(|| {
        panic!(
            "{name} is missing and could not be installed: install Debian's {package} or set \
             {variable}=/path/to/{name}"
        )
    })
}

/// Debian's etcdctl (package etcd-client), or `ETCDCTL`.
pub fn etcdctl_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| debian_binary("ETCDCTL", "etcdctl", "etcd-client"))
}

/// Debian's etcd server (package etcd-server), or `ETCD`.
pub fn etcd_server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| debian_binary("ETCD", "etcd", "etcd-server"))
}

/// A one-member etcd on loopback, killed when dropped.
#[derive(Debug)]
pub struct EtcdServer {
    child: Child,
    pub endpoint: SocketAddr,
}

impl EtcdServer {
    pub fn start(dir: &Path) -> EtcdServer {
        let client = crate::process::free_tcp_port();
        let peer = crate::process::free_tcp_port();
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = File::create(dir.join("etcd.log")).expect("create the etcd log");
        let child = Command::new(etcd_server_binary())
            .args(["--name", "source", "--data-dir"])
            .arg(dir.join("etcd-data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("source={peer_url}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        let server = EtcdServer {
            child,
            endpoint: SocketAddr::from(([127, 0, 0, 1], client)),
        };
        let etcdctl = Etcdctl::new(server.endpoint);
        let deadline = Instant::now() + Duration::from_secs(30);
        while etcdctl.run(&["endpoint", "health"]).is_err() {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcdctl, pointed at one endpoint.
#[derive(Clone, Debug)]
pub struct Etcdctl {
    pub endpoint: SocketAddr,
}

impl Etcdctl {
    pub fn new(endpoint: SocketAddr) -> Etcdctl {
        Etcdctl { endpoint }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(etcdctl_binary());
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .arg("--command-timeout=20s")
            .args(args);
        command
    }

    /// Runs etcdctl: its standard output, or its standard error when it failed.
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        self.run_with_input(args, None)
    }

    pub fn run_with_input(&self, args: &[&str], input: Option<&str>) -> Result<String, String> {
        let output = run_with_deadline(self.command(args), input);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&output.stderr),
                stdout
            ))
        }
    }

    /// Runs etcdctl and expects success.
    pub fn ok(&self, args: &[&str]) -> String {
        self.run(args)
            .unwrap_or_else(|error| panic!("etcdctl {args:?} failed: {error}"))
    }

    /// Starts a long-running etcdctl (watch, lock, elect, keep-alive) whose output goes
    /// to `output`.
    pub fn spawn(&self, args: &[&str], output: &Path) -> Child {
        let file = File::create(output).expect("create the output file");
        self.command(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone"))
            .stderr(file)
            .spawn()
            .expect("spawn etcdctl")
    }

    /// The revision of the endpoint's answer to a read of `key`.
    pub fn revision(&self, key: &str) -> u64 {
        let json = self.ok(&["get", key, "-w", "json"]);
        let value: serde_json::Value = serde_json::from_str(&json).expect("etcdctl's JSON");
        value["header"]["revision"].as_u64().expect("a revision")
    }
}

/// The Python interpreter of a virtualenv with the `etcd3` package, made once.
pub fn python_etcd3() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = target_dir().join("etcd3-venv");
        let python = venv.join("bin").join("python");
        let ready = venv.join("ready");
        exclusively("etcd3-venv", || {
            let wanted = PYTHON_PACKAGES.join(" ");
            if std::fs::read_to_string(&ready).is_ok_and(|made| made == wanted) {
                return;
            }
            let _ = std::fs::remove_dir_all(&venv);
            let mut create = Command::new("python3");
            create.args(["-m", "venv"]).arg(&venv);
            let output = run_with_deadline(create, None);
            assert!(
                output.status.success(),
                "python3 -m venv failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let mut install = Command::new(venv.join("bin").join("pip"));
            install.args(["install", "-q"]).args(PYTHON_PACKAGES);
            let output = run_with_deadline(install, None);
            assert!(
                output.status.success(),
                "pip install {PYTHON_PACKAGES:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::fs::write(&ready, wanted).expect("mark the virtualenv ready");
        });
        python
    })
}

/// Runs a Python script of `tests/python/` with the etcd3 virtualenv: its standard
/// output, or its output and error when it failed.
pub fn run_python(script: &str, args: &[String]) -> Result<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let mut command = Command::new(python_etcd3());
    command.arg(path).args(args);
    let output = run_with_deadline(command, None);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
