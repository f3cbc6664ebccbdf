//! The etcd endpoint's listener: at most [`ETCD_CONNECTIONS_MAX`] connections at once; one
//! past it is closed at once rather than queued, so a flood of connections costs the
//! agent a bounded amount of memory.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Most connections the etcd endpoint holds at once.
pub const ETCD_CONNECTIONS_MAX: usize = 1024;

/// A connection, holding its place until it closes.
#[derive(Debug)]
pub(super) struct Limited {
    stream: TcpStream,
    _place: OwnedSemaphorePermit,
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The accepted connections of `listener`, each within the cap.
pub(super) fn limited(listener: TcpListener) -> impl Stream<Item = io::Result<Limited>> {
    let places = Arc::new(Semaphore::new(ETCD_CONNECTIONS_MAX));
    futures::stream::unfold((listener, places), |(listener, places)| async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => match places.clone().try_acquire_owned() {
                    Ok(place) => {
                        let _ = stream.set_nodelay(true);
                        let connection = Limited {
                            stream,
                            _place: place,
                        };
                        return Some((Ok(connection), (listener, places)));
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "etcd endpoint full ({ETCD_CONNECTIONS_MAX} connections): closing a new one");
                    }
                },
                Err(error) => {
                    // Out of file descriptors, or the like: wait rather than spin.
                    tracing::warn!(%error, "etcd endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}
