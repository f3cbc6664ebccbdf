//! The same etcd client (`etcd-client`, Rust, tonic) against any etcd v3 endpoint: etcd's
//! own members, or a Corral agent's etcd API. Serializable and linearizable gets, puts,
//! compare-and-swap transactions and the lock API, as a closed loop.

use std::time::Instant;

use anyhow::{Context, bail};
use etcd_client::{Client, Compare, CompareOp, GetOptions, LockOptions, Txn, TxnOp};

use super::VALUE_SIZE;
use crate::runner::{Op, op};

/// The key every get reads.
pub const GET_KEY: &str = "/etcd-api/config";
const GET_VALUE: &str = "10.0.0.3:6379";

/// What one run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtcdWorkload {
    SerializableGet,
    LinearizableGet,
    Put,
    Txn,
    Lock,
}

impl EtcdWorkload {
    pub const ALL: [EtcdWorkload; 5] = [
        EtcdWorkload::SerializableGet,
        EtcdWorkload::LinearizableGet,
        EtcdWorkload::Put,
        EtcdWorkload::Txn,
        EtcdWorkload::Lock,
    ];

    pub fn label(self) -> &'static str {
        match self {
            EtcdWorkload::SerializableGet => "serializable get",
            EtcdWorkload::LinearizableGet => "linearizable get",
            EtcdWorkload::Put => "put",
            EtcdWorkload::Txn => "txn",
            EtcdWorkload::Lock => "lock",
        }
    }
}

async fn connect(endpoints: &[String]) -> anyhow::Result<Client> {
    Client::connect(endpoints, None)
        .await
        .with_context(|| format!("connecting to {endpoints:?}"))
}

/// Writes the key the gets read.
pub async fn prepare(endpoints: &[String]) -> anyhow::Result<()> {
    connect(endpoints)
        .await?
        .put(GET_KEY, GET_VALUE, None)
        .await?;
    Ok(())
}

/// `clients` closed-loop clients of `workload`, each its own connection.
pub async fn clients(
    endpoints: &[String],
    clients: usize,
    workload: EtcdWorkload,
) -> anyhow::Result<Vec<Op>> {
    let mut ops: Vec<Op> = Vec::new();
    let value = vec![b'v'; VALUE_SIZE];
    for c in 0..clients {
        let mut client = connect(endpoints).await?;
        let mut i = 0u64;
        let value = value.clone();
        let lease = match workload {
            EtcdWorkload::Lock => Some(client.lease_grant(300, None).await?.id()),
            _ => None,
        };
        ops.push(Box::new(move || {
            i += 1;
            let mut client = client.clone();
            let key = format!("/etcd-api/{c}/{}", i % 1000);
            let value = value.clone();
            op(async move {
                match workload {
                    EtcdWorkload::SerializableGet | EtcdWorkload::LinearizableGet => {
                        let options = (workload == EtcdWorkload::SerializableGet)
                            .then(|| GetOptions::new().with_serializable());
                        let response = client.get(GET_KEY, options).await?;
                        match response.kvs().first() {
                            Some(kv) if kv.value() == GET_VALUE.as_bytes() => Ok(None),
                            other => bail!("wrong answer: {other:?}"),
                        }
                    }
                    EtcdWorkload::Put => {
                        client.put(key, value, None).await?;
                        Ok(None)
                    }
                    EtcdWorkload::Txn => {
                        // Compare-and-swap on the key's version, as a config update does:
                        // it may fail (another round of the same client wrote it), and
                        // either branch is a completed transaction.
                        let txn = Txn::new()
                            .when([Compare::version(key.as_str(), CompareOp::Greater, 0)])
                            .and_then([TxnOp::put(key.as_str(), value, None)])
                            .or_else([TxnOp::put(key.as_str(), b"first".to_vec(), None)]);
                        client.txn(txn).await?;
                        Ok(None)
                    }
                    EtcdWorkload::Lock => {
                        let started = Instant::now();
                        let options = LockOptions::new().with_lease(lease.unwrap_or(0));
                        let response = client.lock("etcd-api-lock", Some(options)).await?;
                        let waited = started.elapsed();
                        client.unlock(response.key()).await?;
                        Ok(Some(waited))
                    }
                }
            })
        }));
    }
    Ok(ops)
}
