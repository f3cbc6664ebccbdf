//! DNS over TCP, served here rather than by hickory so that connections are capped: at
//! most [`TCP_CONNECTIONS_MAX`] at once (one more is closed at once, [`crate::capped`]),
//! each closed after
//! [`TCP_IDLE`] without a complete query. Messages are framed by a two-byte length
//! (RFC 1035 4.2.2); each is answered by the same [`Handler`] as UDP.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::server::Handler;

/// Most TCP connections served at once.
pub const TCP_CONNECTIONS_MAX: usize = 256;
/// How long a connection may go without a complete query.
pub const TCP_IDLE: Duration = Duration::from_secs(5);

/// Keeps the encoded answer for the connection to write.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Option<Vec<u8>>>>);

#[async_trait::async_trait]
impl ResponseHandler for Captured {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(u16::MAX);
        let info = response.destructive_emit(&mut encoder)?;
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes);
        Ok(info)
    }
}

/// Accepts connections until the listener fails for good.
pub async fn serve(listener: TcpListener, handler: Arc<Handler>) {
    let slots = Arc::new(Semaphore::new(TCP_CONNECTIONS_MAX));
    let refused = &handler.metrics().dns_tcp_refused;
    loop {
        let (stream, peer, slot) =
            crate::capped::accept(&listener, &slots, refused, "DNS over TCP").await;
        let handler = handler.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = connection(stream, peer, &handler).await;
        });
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: &Handler,
) -> std::io::Result<()> {
    loop {
        let mut length = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut length)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return Ok(()),
        }
        let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut message)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return Ok(()),
        }
        // What does not parse as a DNS message ends the connection, as a framing error.
        let Ok(request) = Request::from_bytes(message, peer, Protocol::Tcp) else {
            return Ok(());
        };
        let captured = Captured::default();
        handler
            .handle_request::<_, TokioTime>(&request, captured.clone())
            .await;
        let answer = captured.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(answer) = answer else {
            return Ok(());
        };
        let Ok(length) = u16::try_from(answer.len()) else {
            return Ok(());
        };
        stream.write_all(&length.to_be_bytes()).await?;
        stream.write_all(&answer).await?;
    }
}
