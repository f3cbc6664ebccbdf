//! A minimal HTTP/1.1 client over a real TCP socket, enough to drive the gateway:
//! one request per connection (`Connection: close`), and line-by-line reading of
//! Server-Sent Events.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} with a body that is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

fn request_bytes(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> (u16, BTreeMap<String, String>) {
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .await
        .expect("a status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.expect("a header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    (status, headers)
}

/// Sends one request and reads the whole response (the server closes the connection).
pub async fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    request_with_host(address, &address.to_string(), method, path, headers, body).await
}

/// Sends one request naming `host` in its Host header (as a page reached through
/// another DNS name would), and reads the whole response.
pub async fn request_with_host(
    address: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let exchange = async {
        let mut stream = TcpStream::connect(address)
            .await
            .expect("connect to the gateway");
        stream
            .write_all(&request_bytes(host, method, path, headers, body))
            .await
            .expect("send the request");
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader).await;
        let mut body = Vec::new();
        if headers
            .get("transfer-encoding")
            .is_some_and(|t| t == "chunked")
        {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size).await.expect("a chunk size");
                let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
                let mut chunk = vec![0; size + 2];
                reader.read_exact(&mut chunk).await.expect("a chunk");
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(length) = headers.get("content-length").and_then(|l| l.parse().ok()) {
            body = vec![0; length];
            reader.read_exact(&mut body).await.expect("the body");
        } else {
            reader.read_to_end(&mut body).await.expect("the body");
        }
        Response {
            status,
            headers,
            body,
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no response within 10 s"))
}

pub async fn get(address: SocketAddr, path: &str) -> Response {
    request(address, "GET", path, &[], b"").await
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }
}

/// An open event stream.
pub struct EventStream {
    pub status: u16,
    reader: BufReader<TcpStream>,
    chunked: bool,
    /// Decoded bytes not yet split into lines.
    pending: String,
}

impl EventStream {
    pub async fn open(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> EventStream {
        let stream = TcpStream::connect(address)
            .await
            .expect("connect to the gateway");
        Self::over(stream, address, path, headers).await
    }

    /// Opens the stream from the loopback address `source` (127.0.0.x): another client
    /// to the gateway.
    pub async fn open_from(
        source: std::net::Ipv4Addr,
        address: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> EventStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind(SocketAddr::from((source, 0)))
            .expect("bind a loopback source");
        let stream = socket
            .connect(address)
            .await
            .expect("connect to the gateway");
        Self::over(stream, address, path, headers).await
    }

    async fn over(
        mut stream: TcpStream,
        address: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> EventStream {
        stream
            .write_all(&request_bytes(
                &address.to_string(),
                "GET",
                path,
                headers,
                b"",
            ))
            .await
            .expect("send the request");
        let mut reader = BufReader::new(stream);
        let (status, head) = read_head(&mut reader).await;
        let chunked = head
            .get("transfer-encoding")
            .is_some_and(|t| t == "chunked");
        EventStream {
            status,
            reader,
            chunked,
            pending: String::new(),
        }
    }

    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.pending.find('\n') {
                let line: String = self.pending.drain(..=end).collect();
                return Some(line.trim_end_matches(['\r', '\n']).to_string());
            }
            if self.chunked {
                let mut size = String::new();
                if self.reader.read_line(&mut size).await.ok()? == 0 {
                    return None;
                }
                let size = usize::from_str_radix(size.trim(), 16).ok()?;
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk).await.ok()?;
                if size == 0 {
                    return None;
                }
                self.pending
                    .push_str(&String::from_utf8_lossy(&chunk[..size]));
            } else {
                let mut line = String::new();
                if self.reader.read_line(&mut line).await.ok()? == 0 {
                    return None;
                }
                self.pending.push_str(&line);
            }
        }
    }

    /// The next event (comments and keep-alives skipped), or None after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let read = async {
            let mut event = SseEvent::default();
            let mut seen = false;
            loop {
                let line = self.line().await?;
                if line.is_empty() {
                    if seen {
                        return Some(event);
                    }
                    continue;
                }
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                seen = true;
                match field {
                    "event" => event.event = value.to_string(),
                    "id" => event.id = Some(value.to_string()),
                    "data" => {
                        if !event.data.is_empty() {
                            event.data.push('\n');
                        }
                        event.data.push_str(value);
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(timeout, read).await.ok().flatten()
    }
}

/// The JSON content type, for requests with a JSON body.
pub const JSON: &[(&str, &str)] = &[("Content-Type", "application/json")];

/// Opens an HTTP session with a time-to-live at the gateway `gateway`; its id.
pub async fn open_session(gateway: SocketAddr, ttl_ms: u64) -> u64 {
    let body = format!(r#"{{"ttl_ms": {ttl_ms}}}"#);
    let opened = request(gateway, "POST", "/v1/sessions", JSON, body.as_bytes()).await;
    assert_eq!(
        opened.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&opened.body)
    );
    let json = opened.json();
    assert_eq!(json["ttl_ms"], ttl_ms);
    json["id"].as_u64().expect("a session id")
}
