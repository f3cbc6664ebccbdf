//! How Corral processes reach each other: QUIC with mutual TLS under the cluster's own CA.
//!
//! ```text
//!   certificate_authority  corral ca init / issue: the CA and node certificates (rcgen)
//!   tls                    load a node's identity; rustls configs; who is on the other end
//!   quic                   endpoints, cached connections, one request per stream
//! ```
//!
//! A peer's certificate name is its node name: `core-<id>` for core members (which also
//! carry the name `core`, the name agents and tools check when they dial any member), the
//! agent's `--name` for agents, `admin` for operators' tools.

pub mod certificate_authority;
pub mod quic;
pub mod tls;

pub use quic::{QuicTransport, TransportError};
pub use tls::{TlsError, TlsIdentity};
