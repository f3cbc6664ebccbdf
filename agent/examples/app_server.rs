//! An app server of the sharded store, using only Corral's public Rust client: it looks
//! each shard's master up through its local agent (no network hop), writes to it, and
//! follows failover through a subscription, switching as soon as its agent's replica
//! shows the new master.
//!
//! ```sh
//! cargo run --example app_server -- --socket /tmp/corral-dev-*/a2.sock --shards M1,M2
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use corral_proto::api::{EventFilter, Query, QueryResult, SubscriptionItem};
use corral_proto::{AgentClient, Event};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args();
    args.find(|a| a == name).and_then(|_| args.next())
}

/// Sends `PUT key value` to `master`; the epoch it accepted the write at.
async fn put(master: &str, key: &str, value: &str) -> Result<u64, String> {
    let attempt = async {
        let mut stream = TcpStream::connect(master)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(format!("PUT {key} {value}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(&mut stream)
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        match line.trim().split_once(' ') {
            Some(("OK", epoch)) => epoch.parse().map_err(|_| line.clone()),
            _ => Err(line.trim().to_string()),
        }
    };
    tokio::time::timeout(Duration::from_millis(500), attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let socket = arg("--socket")
        .or_else(|| std::env::var("CORRAL_SOCKET").ok())
        .ok_or("give --socket PATH or set CORRAL_SOCKET")?;
    let shards: Vec<String> = arg("--shards")
        .unwrap_or_else(|| "M1,M2,M3".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let agent = AgentClient::connect(&socket).await?;

    // The masters, as the local agent's replica shows them: the state, then each change.
    let filter = EventFilter {
        shards: true,
        ..EventFilter::nothing()
    };
    let mut events = agent.subscribe(filter, None).await?;
    let (masters_sender, masters) = watch::channel(BTreeMap::<String, (String, u64)>::new());
    if let QueryResult::Shards(all) = agent.read(Query::Shards, false).await?.result {
        masters_sender.send_modify(|m| {
            for shard in all {
                if let Some(master) = shard.master {
                    m.insert(shard.name, (master, shard.epoch));
                }
            }
        });
    }
    tokio::spawn(async move {
        while let Some(item) = events.next().await {
            if let SubscriptionItem::Events(batch) = item {
                for event in batch.events {
                    if let Event::MasterChanged {
                        shard,
                        master,
                        epoch,
                        ..
                    } = event
                    {
                        println!("{shard}: master is now {master:?} at epoch {epoch}");
                        masters_sender.send_modify(|m| match master {
                            Some(master) => {
                                m.insert(shard, (master, epoch));
                            }
                            None => {
                                m.remove(&shard);
                            }
                        });
                    }
                }
            }
        }
        eprintln!("lost the agent: stopping");
        std::process::exit(1);
    });

    let mut n = 0u64;
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    loop {
        for shard in &shards {
            let Some((master, _)) = masters.borrow().get(shard).cloned() else {
                continue;
            };
            match put(&master, &format!("key-{n}"), "value").await {
                Ok(epoch) => {
                    if last.get(shard) != Some(&master) {
                        println!("{shard}: writing to {master} (epoch {epoch})");
                        last.insert(shard.clone(), master);
                    }
                }
                Err(error) => println!("{shard}: write to {master} failed: {error}"),
            }
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
