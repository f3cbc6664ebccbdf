//! The machine's bare gRPC round trip through the etcd client the benchmark drives: what
//! a get over etcd's API costs before the server does any work. A tonic server on one
//! thread (as a Corral agent runs by default) answers every Range at once with the same
//! key-value; the same `etcd-client` as the workloads drives the same closed loop.

use std::net::SocketAddr;
use std::time::Duration;

use etcd_client::proto::{
    PbCompactionRequest, PbCompactionResponse, PbDeleteRequest, PbDeleteResponse, PbKvServer,
    PbKvService, PbPutRequest, PbPutResponse, PbRangeRequest, PbRangeResponse, PbTxnRequest,
    PbTxnResponse,
};
use etcd_client::{Client, GetOptions};
use tonic::{Request, Response, Status};

use crate::runner::{Op, closed_loop, op};

const KEY: &str = "/etcd-api/config";
const VALUE: &str = "10.0.0.3:6379";

#[derive(Clone, Copy)]
struct Constant;

#[tonic::async_trait]
impl PbKvService for Constant {
    async fn range(&self, _: Request<PbRangeRequest>) -> Result<Response<PbRangeResponse>, Status> {
        let kv = etcd_client::proto::PbKeyValue {
            key: KEY.into(),
            value: VALUE.into(),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            lease: 0,
        };
        Ok(Response::new(PbRangeResponse {
            header: None,
            kvs: vec![kv],
            more: false,
            count: 1,
        }))
    }

    async fn put(&self, _: Request<PbPutRequest>) -> Result<Response<PbPutResponse>, Status> {
        Err(Status::unimplemented("the floor only reads"))
    }

    async fn delete_range(
        &self,
        _: Request<PbDeleteRequest>,
    ) -> Result<Response<PbDeleteResponse>, Status> {
        Err(Status::unimplemented("the floor only reads"))
    }

    async fn txn(&self, _: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        Err(Status::unimplemented("the floor only reads"))
    }

    async fn compact(
        &self,
        _: Request<PbCompactionRequest>,
    ) -> Result<Response<PbCompactionResponse>, Status> {
        Err(Status::unimplemented("the floor only reads"))
    }
}

/// p50 of a serializable get answered at once, in µs, with `clients` clients.
pub async fn round_trip_p50_us(clients: usize, measure: Duration) -> anyhow::Result<u64> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address: SocketAddr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(PbKvServer::new(Constant))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await?;
            Ok(())
        })
    });
    let endpoint = format!("http://{address}");
    let mut ops: Vec<Op> = Vec::new();
    for _ in 0..clients {
        let client = Client::connect([endpoint.as_str()], None).await?;
        ops.push(Box::new(move || {
            let mut client = client.clone();
            op(async move {
                client
                    .get(KEY, Some(GetOptions::new().with_serializable()))
                    .await?;
                Ok(None)
            })
        }));
    }
    let sample = closed_loop(ops, Duration::from_millis(300), measure).await;
    let _ = stop.send(());
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the probe's server thread panicked"))??;
    anyhow::ensure!(
        sample.ops > 0,
        "the gRPC probe completed nothing: {:?}",
        sample.first_error
    );
    Ok(sample.quantile_us(0.5))
}
