//! The gateway's listener: a bounded number of connections, each with a deadline for its
//! request headers, served by hyper until the agent stops.
//!
//! ```text
//!  accept ─► (≤ HTTP_CONNECTIONS_MAX, else closed at once) ─► hyper http1
//!              header read ≤ HEADER_READ_TIMEOUT (an idle keep-alive connection too)
//!              ─► guard ─► routes
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::gateway::Gateway;
use super::guard::{Guard, Guarded, HttpPolicy};
use super::routes::router;
use crate::agent::AgentContext;

/// Most HTTP connections open at once; one more is closed as soon as it is accepted,
/// so that idle connections cannot exhaust the agent's file descriptors.
pub const HTTP_CONNECTIONS_MAX: usize = 1024;

/// Longest a client may take to send a request's headers, and longest a keep-alive
/// connection may sit idle before its next request.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The address an HTTP request came from, in its extensions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerAddress(pub(crate) SocketAddr);

/// How long open connections get to finish when the agent stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Binds the gateway's address (so that a taken port fails the agent's start).
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves the gateway until the agent stops.
pub async fn serve(
    listener: TcpListener,
    context: Arc<AgentContext>,
    socket: PathBuf,
    policy: HttpPolicy,
) {
    let local = match listener.local_addr() {
        Ok(local) => local,
        Err(error) => {
            tracing::warn!(%error, "HTTP gateway has no address");
            return;
        }
    };
    let gateway = Arc::new(Gateway::new(context.clone(), socket));
    let guarded = Guarded {
        guard: Guard::new(policy, local),
        context: context.clone(),
    };
    let app = router(gateway, Arc::new(guarded));
    let limit = Arc::new(Semaphore::new(HTTP_CONNECTIONS_MAX));
    let mut shutdown = context.shutdown.clone();
    loop {
        let refused = &context.metrics.http_refused;
        let (stream, peer, permit) = tokio::select! {
            accepted = crate::capped::accept(&listener, &limit, refused, "HTTP") => accepted,
            _ = shutdown.changed() => return,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            request.extensions_mut().insert(PeerAddress(peer));
            tower::ServiceExt::oneshot(app.clone(), request)
        });
        let mut shutdown = context.shutdown.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            let stopping = async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            };
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stopping => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
                }
            }
            drop(permit);
        });
    }
}
