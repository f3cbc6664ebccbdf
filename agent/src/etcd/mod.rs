//! etcd's v3 gRPC API on the agent, so that every etcd client (etcdctl, the etcd
//! libraries of every language) talks to Corral unchanged.
//!
//! ```text
//!  etcd client ──gRPC (HTTP/2)──► listener.rs (1,024 connections) ──► server.rs
//!              ── identity (token) ──► the services:
//!     kv.rs        Range from the replica (linearizable: the core's read index first);
//!                  Put, DeleteRange, Txn ──► the agent's own socket, as the gateway does
//!     watch.rs     the replica's applied batches and history, as etcd events
//!     lease.rs     a lease is a held session with a time-to-live
//!     recipes.rs   Lock and Election: etcd's own recipes on keys and leases
//!     cluster.rs   MemberList, Status, Alarm, Auth
//!  convert.rs (pure) etcd messages ⇄ Corral's queries, commands and records
//!  errors.rs         Corral's errors as etcd's own gRPC errors
//! ```
//!
//! Reads are answered from the local replica where etcd answers from a member: a
//! serializable read costs no network hop at all. Writes go through the agent's socket
//! on behalf of the client (as the HTTP gateway's do), so they get the socket's
//! semantics, rights and sessions exactly: a write's answer comes once the local replica
//! applied it, so a read that follows sees it.

mod cluster;
mod convert;
mod errors;
mod kv;
mod lease;
mod listener;
mod recipes;
mod server;
mod watch;

pub use listener::ETCD_CONNECTIONS_MAX;
pub use server::{EtcdPolicy, bind, serve};

/// etcd's messages and services, compiled from `agent/proto/etcd` (etcd's field numbers).
#[allow(unreachable_pub, clippy::all, missing_docs)]
pub mod pb {
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    pub mod v3lockpb {
        tonic::include_proto!("v3lockpb");
    }
    pub mod v3electionpb {
        tonic::include_proto!("v3electionpb");
    }
}

/// The services, over the shared state.
#[derive(Clone, Debug)]
struct Services(std::sync::Arc<server::Etcd>);

/// Resolves once the agent stops.
async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The etcd API version the agent answers as (etcdctl checks it).
pub const ETCD_API_VERSION: &str = "3.5.0";
