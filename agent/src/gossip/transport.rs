//! Gossip packets in QUIC datagrams, over one endpoint that both listens and dials.
//!
//! ```text
//!  send(to, bytes) ──► per-peer queue ──► link task: connect (mTLS), send_datagram
//!  any connection ──read_datagram──► check: claimed sender = certificate name ──► inbound
//! ```
//!
//! Every connection is mutual TLS under the cluster CA, so a peer without a certificate
//! from it never completes a handshake. A datagram whose foca header claims a sender
//! other than the name in its connection's certificate is dropped before it reaches foca.
//! Queues are bounded and sending never blocks the gossip task: when a peer is slow or
//! unreachable its packets are dropped, which gossip tolerates by design.
//!
//! The same endpoint carries the relay protocol (ALPN [`ALPN_RELAY`]): agents feeding
//! agents. A connection of that protocol is handed to the relay server
//! ([`crate::replica::relay`]); a gossip connection may not open streams.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use corral_net::transport::TlsIdentity;
use corral_net::transport::tls::{certificate_has_name, peer_certificate};
use foca::Codec;
use parking_lot::Mutex;
use quinn::{Connection, Endpoint, TransportConfig, VarInt};
use tokio::sync::mpsc;

use super::config::GOSSIP_PACKET_LEN_MAX;
use super::identity::NodeIdentity;
use crate::replica::relay::ALPN_RELAY;

/// ALPN of gossip connections.
pub const ALPN_GOSSIP: &[u8] = b"corral-gossip/1";

/// Packets queued for one peer while its connection is being made.
pub const PEER_QUEUE_LEN_MAX: usize = 256;

/// Packets received and not yet taken by the gossip task.
pub const INBOUND_QUEUE_LEN_MAX: usize = 8192;

/// Relay connections accepted and not yet taken by the relay server.
const RELAY_QUEUE_LEN_MAX: usize = 64;

/// A connection that carried nothing for this long closes.
const CONNECTION_IDLE: Duration = Duration::from_secs(30);

/// A link with no packet to send for this long is closed.
const LINK_IDLE: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A relay's handshake is given up after this: a dead relay the gossip still shows alive
/// costs the agents it would have fed no more than this before they try the next one (a
/// handshake on a network of hosts takes a few milliseconds; a host that cannot finish
/// one in this time is no feeder either).
pub const RELAY_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A datagram that passed the identity check.
#[derive(Debug)]
pub struct Inbound {
    pub from: String,
    pub data: Vec<u8>,
}

/// Counters of what the transport dropped, for status and metrics.
#[derive(Debug, Default)]
pub struct GossipCounters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Dropped because a queue was full or the peer unreachable.
    pub dropped_send: AtomicU64,
    pub dropped_inbound: AtomicU64,
    /// Dropped because the claimed sender did not match the certificate, or undecodable.
    pub rejected: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum GossipTransportError {
    #[error("cannot listen for gossip on {address}: {reason}")]
    Bind { address: SocketAddr, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot reach the relay at {address}: {reason}")]
    Relay { address: SocketAddr, reason: String },
}

/// The client configurations of the endpoint's two protocols.
#[derive(Clone)]
struct ClientConfigs {
    gossip: quinn::ClientConfig,
    relay: quinn::ClientConfig,
}

pub struct GossipTransport {
    endpoint: Endpoint,
    /// Replaced when the TLS files are reloaded.
    client_config: Mutex<ClientConfigs>,
    links: Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>,
    /// The newest connection with each peer address, whichever side opened it. A peer
    /// that restarted dials us afresh, and its old connection is dead: packets for it
    /// must go on the new one at once, not after the old one's idle timeout.
    newest: Mutex<HashMap<SocketAddr, Connection>>,
    inbound: mpsc::Sender<Inbound>,
    relays: mpsc::Sender<Connection>,
    relay_receiver: Mutex<Option<mpsc::Receiver<Connection>>>,
    pub counters: Arc<GossipCounters>,
}

impl std::fmt::Debug for GossipTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipTransport")
            .field("local", &self.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

/// `streams`: the bidirectional streams a peer may open (a relay's watchers open one per
/// connection; gossip opens none).
///
/// No keep-alive: an agent ends up with a connection to most members of the pool, and a
/// ping on each every second cost an idle agent of a pool of 200 about 400 packets a
/// second (two hundred idle agents then kept two cores busy and gossip missed its probes).
/// A connection that carried nothing for [`CONNECTION_IDLE`] closes, and the next packet
/// makes a new one; a peer that restarted dials afresh and its new connection is used at
/// once (`newest`).
fn transport_config(streams: u32) -> TransportConfig {
    let mut config = TransportConfig::default();
    config.max_idle_timeout(Some(
        CONNECTION_IDLE
            .try_into()
            .expect("the idle timeout fits QUIC's range"),
    ));
    config.keep_alive_interval(None);
    config.max_concurrent_bidi_streams(VarInt::from_u32(streams));
    config.max_concurrent_uni_streams(VarInt::from_u32(0));
    config.datagram_receive_buffer_size(Some(1024 * 1024));
    config.datagram_send_buffer_size(1024 * 1024);
    config
}

impl GossipTransport {
    /// Takes new TLS files (a renewed certificate, a new revocation list) for the
    /// connections accepted and dialed from now on.
    pub fn reload(&self, identity: &TlsIdentity) -> Result<(), GossipTransportError> {
        let (server, client) = Self::configs(identity)?;
        self.endpoint.set_server_config(Some(server));
        *self.client_config.lock() = client;
        Ok(())
    }

    fn configs(
        identity: &TlsIdentity,
    ) -> Result<(quinn::ServerConfig, ClientConfigs), GossipTransportError> {
        let tls = |e: &dyn std::fmt::Display| GossipTransportError::Tls(e.to_string());
        let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(
            identity
                .server_config(&[ALPN_GOSSIP, ALPN_RELAY])
                .map_err(|e| tls(&e))?,
        )
        .map_err(|e| tls(&e))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(Arc::new(transport_config(1)));
        let client = |alpn: &[u8]| -> Result<quinn::ClientConfig, GossipTransportError> {
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(
                identity
                    .client_config_any_member(&[alpn])
                    .map_err(|e| tls(&e))?,
            )
            .map_err(|e| tls(&e))?;
            let mut config = quinn::ClientConfig::new(Arc::new(crypto));
            config.transport_config(Arc::new(transport_config(0)));
            Ok(config)
        };
        Ok((
            server,
            ClientConfigs {
                gossip: client(ALPN_GOSSIP)?,
                relay: client(ALPN_RELAY)?,
            },
        ))
    }

    /// The relay connections other agents open to this one; the first call takes them.
    pub fn relay_connections(&self) -> Option<mpsc::Receiver<Connection>> {
        self.relay_receiver.lock().take()
    }

    /// Connects to the relay of the agent `name` at `address`: the peer must hold a
    /// certificate of the cluster that names it.
    pub async fn connect_relay(
        &self,
        address: SocketAddr,
        name: &str,
    ) -> Result<Connection, GossipTransportError> {
        let failed = |reason: String| GossipTransportError::Relay { address, reason };
        let config = self.client_config.lock().relay.clone();
        let connecting = self
            .endpoint
            .connect_with(config, address, "member")
            .map_err(|e| failed(e.to_string()))?;
        let connection = tokio::time::timeout(RELAY_CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| failed("handshake timed out".into()))?
            .map_err(|e| failed(e.to_string()))?;
        if !peer_certificate(&connection).is_some_and(|cert| certificate_has_name(&cert, name)) {
            connection.close(VarInt::from_u32(1), b"not the agent asked for");
            return Err(failed(format!("its certificate does not name {name}")));
        }
        Ok(connection)
    }

    /// Listens on `listen`. Accepted datagrams go to the returned receiver.
    pub fn bind(
        identity: &TlsIdentity,
        listen: SocketAddr,
    ) -> Result<(Arc<Self>, mpsc::Receiver<Inbound>), GossipTransportError> {
        let (server, client_config) = Self::configs(identity)?;
        let endpoint =
            Endpoint::server(server, listen).map_err(|e| GossipTransportError::Bind {
                address: listen,
                reason: e.to_string(),
            })?;
        let (inbound, receiver) = mpsc::channel(INBOUND_QUEUE_LEN_MAX);
        let (relays, relay_receiver) = mpsc::channel(RELAY_QUEUE_LEN_MAX);
        let transport = Arc::new(GossipTransport {
            endpoint,
            client_config: Mutex::new(client_config),
            links: Mutex::new(HashMap::new()),
            newest: Mutex::new(HashMap::new()),
            inbound,
            relays,
            relay_receiver: Mutex::new(Some(relay_receiver)),
            counters: Arc::new(GossipCounters::default()),
        });
        tokio::spawn(accept_loop(transport.clone()));
        Ok((transport, receiver))
    }

    pub fn local_address(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// Queues `data` for `to`. Never waits: when the peer's queue is full the packet is
    /// dropped and counted.
    pub fn send(self: &Arc<Self>, to: &NodeIdentity, data: Vec<u8>) {
        if data.len() > GOSSIP_PACKET_LEN_MAX {
            self.counters.dropped_send.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                len = data.len(),
                "gossip packet larger than the limit, dropped"
            );
            return;
        }
        let data = Bytes::from(data);
        let mut links = self.links.lock();
        let sender = links.entry(to.address).or_insert_with(|| {
            let (sender, receiver) = mpsc::channel(PEER_QUEUE_LEN_MAX);
            tokio::spawn(link(self.clone(), to.address, receiver));
            sender
        });
        match sender.try_send(data) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.dropped_send.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(data)) => {
                // The link ended (idle); start a fresh one.
                let (sender, receiver) = mpsc::channel(PEER_QUEUE_LEN_MAX);
                let _ = sender.try_send(data);
                tokio::spawn(link(self.clone(), to.address, receiver));
                links.insert(to.address, sender);
            }
        }
    }

    /// Closes every connection, after giving queued datagrams `grace` to leave.
    pub async fn close(&self, grace: Duration) {
        tokio::time::sleep(grace).await;
        self.endpoint.close(VarInt::from_u32(0), b"leaving");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    fn deliver(&self, connection: &Connection, verified: &mut Option<String>, data: Bytes) {
        let mut reader: &[u8] = &data;
        let header = match foca::PostcardCodec.decode_header(&mut reader) {
            Ok(header) => header,
            Err(e) => {
                self.reject(connection, &format!("undecodable header: {e}"));
                return;
            }
        };
        let claimed: &NodeIdentity = &header.src;
        let matches = match verified {
            Some(name) => *name == claimed.name,
            None => false,
        };
        if !matches {
            let has_name = peer_certificate(connection)
                .is_some_and(|cert| certificate_has_name(&cert, &claimed.name));
            if !has_name {
                self.reject(
                    connection,
                    &format!("claims to be {claimed} but its certificate says otherwise"),
                );
                return;
            }
            *verified = Some(claimed.name.clone());
        }
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        let inbound = Inbound {
            from: claimed.name.clone(),
            data: data.to_vec(),
        };
        if self.inbound.try_send(inbound).is_err() {
            self.counters
                .dropped_inbound
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn reject(&self, connection: &Connection, reason: &str) {
        let count = self.counters.rejected.fetch_add(1, Ordering::Relaxed);
        // One line per hundred, so a hostile peer cannot flood the log.
        if count.is_multiple_of(100) {
            tracing::warn!(peer = %connection.remote_address(), reason, "gossip datagram dropped");
        }
    }
}

async fn accept_loop(transport: Arc<GossipTransport>) {
    while let Some(incoming) = transport.endpoint.accept().await {
        let transport = transport.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(CONNECT_TIMEOUT, incoming).await {
                Ok(Ok(connection)) if protocol(&connection).as_deref() == Some(ALPN_RELAY) => {
                    if let Err(mpsc::error::TrySendError::Full(connection)) =
                        transport.relays.try_send(connection)
                    {
                        connection.close(VarInt::from_u32(2), b"relay busy");
                    }
                }
                Ok(Ok(connection)) => {
                    transport
                        .newest
                        .lock()
                        .insert(connection.remote_address(), connection.clone());
                    tokio::spawn(refuse_streams(connection.clone()));
                    read_datagrams(transport, connection).await
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "gossip handshake failed"),
                Err(_) => tracing::debug!("gossip handshake timed out"),
            }
        });
    }
}

/// The application protocol a connection negotiated.
fn protocol(connection: &Connection) -> Option<Vec<u8>> {
    connection
        .handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// Gossip travels in datagrams: a stream opened on a gossip connection is refused at once
/// rather than left to hold the peer's data.
async fn refuse_streams(connection: Connection) {
    while let Ok((mut send, mut receive)) = connection.accept_bi().await {
        let _ = send.reset(VarInt::from_u32(1));
        let _ = receive.stop(VarInt::from_u32(1));
    }
}

async fn read_datagrams(transport: Arc<GossipTransport>, connection: Connection) {
    let mut verified = None;
    while let Ok(data) = connection.read_datagram().await {
        transport.deliver(&connection, &mut verified, data);
    }
    let mut newest = transport.newest.lock();
    let address = connection.remote_address();
    if newest
        .get(&address)
        .is_some_and(|c| c.stable_id() == connection.stable_id())
    {
        newest.remove(&address);
    }
}

/// Carries the packets for one peer address: connects, sends, reconnects with backoff.
async fn link(
    transport: Arc<GossipTransport>,
    address: SocketAddr,
    mut packets: mpsc::Receiver<Bytes>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let config = transport.client_config.lock().gossip.clone();
        let connection = match transport.endpoint.connect_with(config, address, "member") {
            Ok(connecting) => match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                Ok(Ok(connection)) => Some(connection),
                Ok(Err(e)) => {
                    tracing::debug!(%address, error = %e, "gossip connect failed");
                    None
                }
                Err(_) => None,
            },
            Err(e) => {
                tracing::debug!(%address, error = %e, "gossip connect refused locally");
                None
            }
        };
        let Some(connection) = connection else {
            // Unreachable: drop what is queued meanwhile (it would be stale) and retry.
            let until = tokio::time::Instant::now() + backoff;
            loop {
                match tokio::time::timeout_at(until, packets.recv()).await {
                    Ok(Some(_)) => {
                        transport
                            .counters
                            .dropped_send
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
            continue;
        };
        backoff = Duration::from_millis(100);
        transport.newest.lock().insert(address, connection.clone());
        tokio::spawn(read_datagrams(transport.clone(), connection.clone()));
        let mut connection = connection;
        loop {
            let packet = match tokio::time::timeout(LINK_IDLE, packets.recv()).await {
                Ok(Some(packet)) => packet,
                Ok(None) | Err(_) => {
                    connection.close(VarInt::from_u32(0), b"idle");
                    return;
                }
            };
            let newest = transport.newest.lock().get(&address).cloned();
            if let Some(newest) = newest
                && newest.stable_id() != connection.stable_id()
                && newest.close_reason().is_none()
            {
                connection = newest;
            }
            match connection.send_datagram(packet) {
                Ok(()) => {
                    transport.counters.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(quinn::SendDatagramError::ConnectionLost(_)) => {
                    transport
                        .counters
                        .dropped_send
                        .fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    transport
                        .counters
                        .dropped_send
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%address, error = %e, "gossip datagram not sent");
                }
            }
        }
    }
}
