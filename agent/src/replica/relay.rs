//! Feeding other agents: the watch protocol of the core, served from this agent's replica
//! on its gossip endpoint, so that the core sends each write to a few agents and not to
//! every agent of the fleet ([`super::feed_tree`] says who feeds whom).
//!
//! ```text
//!  gossip endpoint ──ALPN corral-relay/1──► serve_connection ──► one watch stream
//!                                                 │ CoreRequest::Watch { after }
//!                                                 ▼
//!                    corral_net::watch_serve::serve(SharedReplica) ──► WatchItem frames
//! ```
//!
//! Entries go out in the very frames this agent received (or, for its own writes, in the
//! frames a core member encodes for them: the encoding is deterministic). Connections
//! are mutual TLS under the cluster's CA, as every connection to a core member is, and a
//! relay answers the same requests a core member answers any certificate of the cluster:
//! a watch. It serves at most [`RELAY_STREAMS_MAX`] streams at once, refuses any other
//! request, and serves nothing while its replica has no state.

use std::sync::Arc;
use std::time::Duration;

use corral_net::rpc::{BEAT_FRAME_MAX, CoreRequest, WatchBeat};
use corral_net::watch_serve::{self, BeatsHeard, WatchEnd};
use corral_proto::frame;
use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::{mpsc, watch};

use super::shared::SharedReplica;

/// ALPN of an agent's relay connections, on its gossip endpoint.
pub const ALPN_RELAY: &[u8] = b"corral-relay/1";

/// Most streams an agent serves at once: several times the fan-out of the tree, so that
/// agents that see the membership differently for a moment are still served.
pub const RELAY_STREAMS_MAX: u64 = 64;

/// Longest request frame read on a relay stream.
const REQUEST_LEN_MAX: usize = 1024;

/// How long a new stream has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves relay connections handed over by the gossip transport until shutdown.
pub async fn run(
    replica: Arc<SharedReplica>,
    mut connections: mpsc::Receiver<Connection>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let connection = tokio::select! {
            connection = connections.recv() => match connection {
                Some(connection) => connection,
                None => return,
            },
            _ = shutdown.changed() => return,
        };
        tokio::spawn(serve_connection(
            replica.clone(),
            connection,
            shutdown.clone(),
        ));
    }
}

async fn serve_connection(
    replica: Arc<SharedReplica>,
    connection: Connection,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (send, receive) = tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok(streams) => streams,
                Err(_) => return,
            },
            _ = shutdown.changed() => {
                connection.close(0u32.into(), b"agent stopping");
                return;
            }
        };
        tokio::spawn(serve_stream(
            replica.clone(),
            connection.remote_address(),
            send,
            receive,
        ));
    }
}

async fn serve_stream(
    replica: Arc<SharedReplica>,
    peer: std::net::SocketAddr,
    mut send: SendStream,
    mut receive: RecvStream,
) {
    let request = tokio::time::timeout(
        REQUEST_TIMEOUT,
        frame::read_frame::<_, CoreRequest>(&mut receive, REQUEST_LEN_MAX),
    )
    .await;
    let after = match request {
        Ok(Ok(Some(CoreRequest::Watch { after }))) => after,
        Ok(Ok(Some(other))) => {
            tracing::debug!(%peer, ?other, "relay refused a request that is not a watch");
            refuse(send, receive);
            return;
        }
        _ => {
            refuse(send, receive);
            return;
        }
    };
    if replica.relay_streams() >= RELAY_STREAMS_MAX {
        tracing::debug!(%peer, "relay full: watch refused");
        let _ = send.finish();
        return;
    }
    if replica.read(|r| r.resume_point()).is_none() {
        // Nothing to serve yet: the watcher goes to another feeder at once.
        let _ = send.finish();
        return;
    }
    let _counted = replica.relay_stream_started();
    let beats = BeatsHeard::default();
    let result = tokio::select! {
        result = watch_serve::serve(&*replica, after, &mut send, &beats) => result,
        end = watcher_side(&mut receive, &beats) => Err(end),
    };
    match result {
        Ok(()) | Err(WatchEnd::Stopped) => {
            let _ = send.finish();
        }
        Err(WatchEnd::Gone(reason)) => tracing::debug!(%peer, %reason, "relay stream ended"),
    }
}

/// Ends both directions of a stream at once, so that the peer's next stream may open.
fn refuse(mut send: SendStream, mut receive: RecvStream) {
    let _ = send.reset(1u32.into());
    let _ = receive.stop(1u32.into());
}

/// Reads the watcher's side until it ends: beats are counted for the echo in progress
/// items (the watcher's liveness is the core's business, on its own stream).
async fn watcher_side(receive: &mut RecvStream, beats: &BeatsHeard) -> WatchEnd {
    loop {
        match frame::read_frame::<_, WatchBeat>(receive, BEAT_FRAME_MAX).await {
            Ok(Some(beat)) => beats.heard(beat.seq),
            Ok(None) => return WatchEnd::Gone("closed by the watcher".into()),
            Err(e) => return WatchEnd::Gone(format!("bad beat: {e}")),
        }
    }
}
