//! A replica of one shard of a sharded store, using only Corral's public Rust client.
//!
//! It serves a tiny line protocol on TCP (`PUT key value` → `OK epoch`, `GET key` →
//! `VALUE value`), registers itself as a replica of the shard with its local agent, and
//! accepts writes only while its agent shows it as the shard's master. Its registration
//! is bound to its connection to the agent: when this process (or its host) dies, the
//! core promotes another replica with a higher epoch.
//!
//! ```sh
//! cargo run --example shard_master -- --socket /tmp/corral-dev-*/a1.sock \
//!     --shard M1 --listen 127.0.0.1:9101 --priority 10
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use corral_proto::api::{AgentRequest, EventFilter, Query, QueryResult, SubscriptionItem};
use corral_proto::{AgentClient, Event};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;

fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args();
    args.find(|a| a == name).and_then(|_| args.next())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let socket = arg("--socket")
        .or_else(|| std::env::var("CORRAL_SOCKET").ok())
        .ok_or("give --socket PATH or set CORRAL_SOCKET")?;
    let shard = arg("--shard").ok_or("give --shard NAME")?;
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:0".into());
    let priority: u32 = arg("--priority").map_or(Ok(1), |p| p.parse())?;

    let listener = TcpListener::bind(&listen).await?;
    let me = listener.local_addr()?.to_string();
    let agent = AgentClient::connect(&socket).await?;

    // Follow the shard's master and epoch as the local replica shows them: subscribe
    // first, then read, so that no change falls in between.
    let filter = EventFilter {
        shards: true,
        ..EventFilter::nothing()
    };
    let mut events = agent.subscribe(filter, None).await?;
    let (role_sender, role) = watch::channel((None::<String>, 0u64));
    let _ = agent
        .write(AgentRequest::CreateShard {
            name: shard.clone(),
        })
        .await; // Fine if it exists.
    agent
        .write(AgentRequest::JoinShard {
            shard: shard.clone(),
            address: me.clone(),
            priority,
            detach: false,
        })
        .await?;
    if let QueryResult::Shard(Some(current)) =
        agent.read(Query::Shard(shard.clone()), false).await?.result
    {
        role_sender.send_replace((current.master, current.epoch));
    }
    let watched = shard.clone();
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
                        && shard == watched
                    {
                        role_sender.send_replace((master, epoch));
                    }
                }
            }
        }
        eprintln!("lost the agent: stopping");
        std::process::exit(1);
    });

    let mut roles = role.clone();
    let me_for_log = me.clone();
    tokio::spawn(async move {
        loop {
            let (master, epoch) = roles.borrow_and_update().clone();
            let what = if master.as_deref() == Some(me_for_log.as_str()) {
                "master"
            } else {
                "slave"
            };
            println!(
                "{me_for_log}: {what} of {} at epoch {epoch}",
                arg("--shard").unwrap_or_default()
            );
            if roles.changed().await.is_err() {
                return;
            }
        }
    });

    let store: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let (role, store, me) = (role.clone(), store.clone(), me.clone());
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let (master, epoch) = role.borrow().clone();
                let mut words = line.splitn(3, ' ');
                let answer = match (words.next(), words.next(), words.next()) {
                    // Fencing: only the master the core chose, at the current epoch, writes.
                    (Some("PUT"), Some(key), Some(value)) if master.as_deref() == Some(&me) => {
                        store.lock().unwrap().insert(key.into(), value.into());
                        format!("OK {epoch}\n")
                    }
                    (Some("PUT"), _, _) => format!("NOT_MASTER {epoch}\n"),
                    (Some("GET"), Some(key), None) => match store.lock().unwrap().get(key) {
                        Some(value) => format!("VALUE {value}\n"),
                        None => "NONE\n".into(),
                    },
                    _ => "ERROR expected PUT key value or GET key\n".into(),
                };
                if write.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}
