//! A real headless browser (Debian's `chromium`) driven over the DevTools protocol: open a
//! page, evaluate JavaScript in it while it runs.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Chromium and its helper processes, killed together on drop.
struct ProcessGroup(Child);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Browser {
    _process: ProcessGroup,
    _profile: tempfile::TempDir,
    page: Socket,
    next_id: u64,
}

/// The browser binary: `CHROMIUM` if set, else the first of chromium/chromium-browser/
/// google-chrome on PATH.
pub fn chromium() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

impl Browser {
    /// Starts a headless browser on `url` and connects to the page.
    pub async fn open(url: &str) -> Browser {
        let binary = chromium().expect(
            "no chromium on PATH: .ci/run installs it (apt-get install chromium), or set CHROMIUM",
        );
        let profile = tempfile::tempdir().expect("a profile directory");
        let child = Command::new(binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", profile.path().display()),
                url,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromium starts");
        // Owns the browser from here: a failed start below still kills it.
        let guard = ProcessGroup(child);
        // Chromium writes its DevTools port to DevToolsActivePort in the profile.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port: u16 = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok())
            {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "chromium opened no DevTools port in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let devtools = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let page_url = loop {
            let targets = crate::http::get(devtools, "/json/list").await.json();
            let page = targets.as_array().and_then(|targets| {
                targets
                    .iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
            });
            if let Some(page) = page {
                break page;
            }
            assert!(Instant::now() < deadline, "chromium shows no page target");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (page, _) = tokio_tungstenite::connect_async(page_url.as_str())
            .await
            .unwrap_or_else(|e| panic!("connect to the page's DevTools socket {page_url}: {e}"));
        Browser {
            _process: guard,
            _profile: profile,
            page,
            next_id: 1,
        }
    }

    /// Evaluates `expression` in the page and returns its value.
    pub async fn evaluate(&mut self, expression: &str) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let call = json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": true},
        });
        self.page
            .send(Message::Text(call.to_string().into()))
            .await
            .expect("send to DevTools");
        let answer = async {
            while let Some(message) = self.page.next().await {
                let Ok(Message::Text(text)) = message else {
                    continue;
                };
                let value: Value = serde_json::from_str(&text).expect("DevTools speaks JSON");
                if value["id"] == id {
                    return value["result"]["result"]["value"].clone();
                }
            }
            panic!("DevTools closed the page socket");
        };
        tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .expect("DevTools answers within 10 s")
    }
}
