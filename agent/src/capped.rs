//! Accepting TCP connections under a cap, as the HTTP gateway and DNS over TCP do: a
//! connection past the cap is closed at once and counted, and a failed `accept` (out of
//! descriptors, most likely) is paused on rather than retried in a spin.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a failed `accept` is paused on.
const ACCEPT_FAILED_PAUSE: Duration = Duration::from_millis(50);

/// The next connection a slot of `slots` is free for, with that slot; those that find
/// none are closed and counted in `refused`. `what` names the listener in logs.
pub async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    refused: &AtomicU64,
    what: &str,
) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting a {what} connection failed");
                tokio::time::sleep(ACCEPT_FAILED_PAUSE).await;
                continue;
            }
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => return (stream, peer, slot),
            Err(_) => {
                refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "{what} connection refused: all slots taken");
            }
        }
    }
}
