//! QUIC endpoints and request/response over streams.
//!
//! ```text
//!  call(addr, name, request) ─► cached Connection to (addr, name) ─► open_bi
//!       ─► write one frame, finish ─► read one frame ─► response
//! ```
//!
//! One endpoint per process both listens (members) and dials. Connections are cached per
//! (address, expected name) and reused while open; a failed call, or one timed out on a
//! connection that heard nothing from the peer meanwhile, drops the cached connection so
//! that the next one dials afresh.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use corral_proto::frame::{self, FRAME_LEN_MAX, FrameError};
use futures::FutureExt;
use parking_lot::Mutex;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream, TransportConfig, VarInt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::tls::{TlsError, TlsIdentity};

/// Time allowed to establish a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A connection with no traffic for this long is closed; keep-alives prevent it while the
/// peer lives. It is also how fast a caller learns that a peer vanished without a word (a
/// killed host sends no reset): a request in flight to a dead leader fails after this and
/// is retried elsewhere, so it bounds client-visible failover together with the election
/// timeout.
pub const IDLE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long the dialing side lets a connection go quiet before it sends a keep-alive
/// (two per idle timeout). Only the dialing side sends them: its ping and the answer's
/// acknowledgement keep both ends alive, and a core member accepting thousands of agents'
/// connections would otherwise ping each of them too (with 50 agents at rest the core
/// spent 5.3% of a core instead of 3.7%). Longer than [`crate::rpc::BEAT_INTERVAL`]: an
/// agent hears the answer to a beat every interval, which puts its keep-alive off, so a
/// beating connection carries no keep-alives at all (at 500 ms, the keep-alive fired just
/// before each answer was due, two more packets a second per agent at the core).
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_millis(750);
const _: () = assert!(
    KEEP_ALIVE_INTERVAL.as_millis() > crate::rpc::BEAT_INTERVAL.as_millis()
        && 2 * KEEP_ALIVE_INTERVAL.as_millis() <= IDLE_TIMEOUT.as_millis(),
    "beats put keep-alives off, and a lost keep-alive has a second one before the timeout"
);
/// Packets a peer may receive before it must acknowledge them: a request's answer carries
/// the acknowledgement of the request, so most acknowledgements ride along and a separate
/// ACK packet is rarely needed. Eleven full packets stay within QUIC's initial congestion
/// window, so a sender never stalls waiting for one.
pub const ACK_ELICITING_THRESHOLD: u32 = 10;
/// The longest a peer may hold an acknowledgement back (QUIC's default is 25 ms); it also
/// bounds how long a lost last packet goes unnoticed.
pub const MAX_ACK_DELAY: Duration = Duration::from_millis(5);
/// Most concurrent request streams a peer may open on one connection.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("cannot connect to {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream failed: {0}")]
    Stream(String),
    #[error("the peer closed the stream without answering")]
    NoAnswer,
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot bind {address}: {reason}")]
    Bind { address: SocketAddr, reason: String },
}

impl TransportError {
    /// True when the request certainly did not reach the peer's application (so retrying
    /// it elsewhere cannot apply it twice).
    pub fn is_before_send(&self) -> bool {
        matches!(
            self,
            TransportError::Resolve(_)
                | TransportError::Connect { .. }
                | TransportError::Tls(_)
                | TransportError::Bind { .. }
        )
    }
}

/// The transport settings of a connection; `keep_alive` on the side that dialed it.
fn transport_config(keep_alive: Option<Duration>) -> TransportConfig {
    let mut config = TransportConfig::default();
    config.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("the idle timeout fits QUIC's range"),
    ));
    config.keep_alive_interval(keep_alive);
    config.max_concurrent_bidi_streams(VarInt::from_u32(STREAMS_PER_CONNECTION_MAX));
    config.max_concurrent_uni_streams(VarInt::from_u32(0));
    config.stream_receive_window(VarInt::from_u32(8 * 1024 * 1024));
    config.receive_window(VarInt::from_u32(32 * 1024 * 1024));
    config.send_window(32 * 1024 * 1024);
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(VarInt::from_u32(ACK_ELICITING_THRESHOLD))
        .max_ack_delay(Some(MAX_ACK_DELAY));
    config.ack_frequency_config(Some(acks));
    config
}

/// A QUIC endpoint with its cache of outgoing connections.
pub struct QuicTransport {
    endpoint: Endpoint,
    connections: Mutex<HashMap<(String, String), Connection>>,
    /// The client configuration of new connections, replaced when the TLS files are
    /// reloaded.
    client: Mutex<Option<quinn::ClientConfig>>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("local", &self.endpoint.local_addr().ok())
            .finish()
    }
}

fn client_config(
    identity: &TlsIdentity,
    alpn: &[&[u8]],
) -> Result<quinn::ClientConfig, TransportError> {
    let crypto = QuicClientConfig::try_from(identity.client_config(alpn)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(Some(KEEP_ALIVE_INTERVAL))));
    Ok(config)
}

/// The server configuration for `identity`, with the given transport settings.
pub fn server_config(
    identity: &TlsIdentity,
    alpn: &[&[u8]],
    transport: TransportConfig,
) -> Result<quinn::ServerConfig, TransportError> {
    let crypto = QuicServerConfig::try_from(identity.server_config(alpn)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

impl QuicTransport {
    /// An endpoint that accepts connections on `listen` and dials from the same socket.
    pub fn server(
        identity: &TlsIdentity,
        listen: SocketAddr,
        alpn: &[&[u8]],
    ) -> Result<Self, TransportError> {
        let server = server_config(identity, alpn, transport_config(None))?;
        let mut endpoint = Endpoint::server(server, listen).map_err(|e| TransportError::Bind {
            address: listen,
            reason: e.to_string(),
        })?;
        let client = client_config(identity, alpn)?;
        endpoint.set_default_client_config(client.clone());
        let transport = Self::from_endpoint(endpoint);
        *transport.client.lock() = Some(client);
        Ok(transport)
    }

    /// An endpoint that only dials.
    pub fn client(identity: &TlsIdentity, alpn: &[&[u8]]) -> Result<Self, TransportError> {
        let bind: SocketAddr = "0.0.0.0:0".parse().expect("a literal address");
        let mut endpoint = Endpoint::client(bind).map_err(|e| TransportError::Bind {
            address: bind,
            reason: e.to_string(),
        })?;
        let client = client_config(identity, alpn)?;
        endpoint.set_default_client_config(client.clone());
        let transport = Self::from_endpoint(endpoint);
        *transport.client.lock() = Some(client);
        Ok(transport)
    }

    pub fn from_endpoint(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            connections: Mutex::new(HashMap::new()),
            client: Mutex::new(None),
        }
    }

    /// Takes new TLS files (a renewed certificate, a new revocation list) for every
    /// connection made from now on, accepted (`serves`) and dialed. Connections already
    /// open are dropped from the cache, so the next request dials anew.
    pub fn reload(
        &self,
        identity: &TlsIdentity,
        alpn: &[&[u8]],
        serves: bool,
    ) -> Result<(), TransportError> {
        if serves {
            self.reload_server(identity, alpn)?;
        }
        self.reload_client(identity, alpn)
    }

    /// Accepts connections under new TLS files, for the protocols `alpn`, from now on.
    pub fn reload_server(
        &self,
        identity: &TlsIdentity,
        alpn: &[&[u8]],
    ) -> Result<(), TransportError> {
        let config = server_config(identity, alpn, transport_config(None))?;
        self.endpoint.set_server_config(Some(config));
        Ok(())
    }

    /// Dials with `alpn` from now on (a server that serves several protocols dials with
    /// one); connections already open are dropped from the cache.
    pub fn reload_client(
        &self,
        identity: &TlsIdentity,
        alpn: &[&[u8]],
    ) -> Result<(), TransportError> {
        *self.client.lock() = Some(client_config(identity, alpn)?);
        self.connections.lock().clear();
        Ok(())
    }

    /// A transport that dials from this one's endpoint (the same UDP socket) with `alpn`,
    /// and keeps its own connections.
    pub fn sharing_endpoint(
        &self,
        identity: &TlsIdentity,
        alpn: &[&[u8]],
    ) -> Result<Self, TransportError> {
        let transport = Self::from_endpoint(self.endpoint.clone());
        *transport.client.lock() = Some(client_config(identity, alpn)?);
        Ok(transport)
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A live connection to `address` whose certificate carries `server_name`.
    pub async fn connection(
        &self,
        address: &str,
        server_name: &str,
    ) -> Result<Connection, TransportError> {
        let key = (address.to_string(), server_name.to_string());
        if let Some(connection) = self.connections.lock().get(&key)
            && connection.close_reason().is_none()
        {
            return Ok(connection.clone());
        }
        let target = resolve(address).await?;
        let config = self.client.lock().clone();
        let connecting = match config {
            Some(config) => self.endpoint.connect_with(config, target, server_name),
            None => self.endpoint.connect(target, server_name),
        };
        let connecting = connecting.map_err(|e| TransportError::Connect {
            address: address.to_string(),
            reason: e.to_string(),
        })?;
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| TransportError::Connect {
                address: address.to_string(),
                reason: format!("no handshake within {CONNECT_TIMEOUT:?}"),
            })?
            .map_err(|e| TransportError::Connect {
                address: address.to_string(),
                reason: e.to_string(),
            })?;
        self.connections.lock().insert(key, connection.clone());
        Ok(connection)
    }

    /// Drops the cached connection to `address`, so the next call dials again.
    pub fn forget(&self, address: &str, server_name: &str) {
        if let Some(connection) = self
            .connections
            .lock()
            .remove(&(address.to_string(), server_name.to_string()))
        {
            connection.close(VarInt::from_u32(0), b"forgotten");
        }
    }

    /// Sends one request and waits for its answer, within `timeout`.
    pub async fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        address: &str,
        server_name: &str,
        request: &Q,
        timeout: Duration,
    ) -> Result<A, TransportError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let connection = match tokio::time::timeout(timeout, self.connection(address, server_name))
            .await
            .unwrap_or(Err(TransportError::Timeout(timeout)))
        {
            Ok(connection) => connection,
            Err(e) => {
                self.forget(address, server_name);
                return Err(e);
            }
        };
        let heard = connection.stats().udp_rx.datagrams;
        let result = tokio::time::timeout_at(deadline, call_on(&connection, request))
            .await
            .unwrap_or(Err(TransportError::Timeout(timeout)));
        match &result {
            Ok(_) | Err(TransportError::Frame(_)) => {}
            // The peer answered other packets meanwhile: it lives and was only slow with
            // this one. Closing the connection would fail its other calls and start the
            // next one from a cold congestion window.
            Err(TransportError::Timeout(_)) if connection.stats().udp_rx.datagrams > heard => {}
            Err(_) => self.forget(address, server_name),
        }
        result
    }

    /// Opens a request stream to `address` and sends `request`, for answers that arrive as
    /// a stream of frames (watches).
    pub async fn open_stream<Q: Serialize>(
        &self,
        address: &str,
        server_name: &str,
        request: &Q,
    ) -> Result<(SendStream, RecvStream), TransportError> {
        let connection = self.connection(address, server_name).await?;
        let (mut send, receive) = connection
            .open_bi()
            .await
            .inspect_err(|_| self.forget(address, server_name))?;
        frame::write_frame(&mut send, request).await?;
        Ok((send, receive))
    }
}

/// How long a stream whose frame was read waits for its end before it is dropped.
const STREAM_END_WAIT: Duration = Duration::from_secs(1);

/// Resolves `HOST:PORT`, preferring the first address.
pub async fn resolve(address: &str) -> Result<SocketAddr, TransportError> {
    if let Ok(addr) = address.parse() {
        return Ok(addr);
    }
    tokio::net::lookup_host(address)
        .await
        .map_err(|_| TransportError::Resolve(address.to_string()))?
        .next()
        .ok_or_else(|| TransportError::Resolve(address.to_string()))
}

/// One request, one answer, on a fresh stream of `connection`.
pub async fn call_on<Q: Serialize, A: DeserializeOwned>(
    connection: &Connection,
    request: &Q,
) -> Result<A, TransportError> {
    let (mut send, mut receive) = connection.open_bi().await?;
    frame::write_frame(&mut send, request).await?;
    send.finish()
        .map_err(|e| TransportError::Stream(e.to_string()))?;
    match frame::read_frame(&mut receive, FRAME_LEN_MAX).await? {
        Some(answer) => {
            take_end(receive);
            Ok(answer)
        }
        None => Err(TransportError::NoAnswer),
    }
}

/// Takes the end of a stream whose one frame was read. Every request and answer finishes
/// its stream right after its frame; a stream dropped before its end was read tells the
/// peer to stop sending (`STOP_SENDING`), in a packet of its own: one more packet, and one
/// more wake-up of the peer, for every request and every answer. The end usually came
/// with the frame; when the peer's runtime sent it in a packet of its own, a task waits
/// for it a moment, so that the caller need not.
pub fn take_end(mut receive: RecvStream) {
    let mut byte = [0u8; 1];
    if receive.read(&mut byte).now_or_never().is_none() {
        tokio::spawn(async move {
            let _ = tokio::time::timeout(STREAM_END_WAIT, receive.read(&mut byte)).await;
        });
    }
}
