//! One shard of a store whose keys are split among shards by hash slot (a Corral shard
//! group), using only Corral's public Rust client: it registers as the replica of its
//! shard, and accepts a write only for a slot its shard owns, not moving, in the map its
//! agent publishes (`ShardMap`, a file read again only when the agent replaces it).
//!
//! Line protocol on TCP, one request per line:
//!
//! ```text
//!  PUT key value version  → OK slot version          (written; decided once this store's
//!                                                     map is at `version` or later)
//!                         → MOVED shard version      (another shard owns the slot: re-route)
//!                         → MOVING version           (the slot is on its way: retry soon)
//!  EXPORT first last version → key value lines, END  (once this store's map is at least at
//!                              `version`, the keys of those slots that are moving away)
//!  IMPORT key value       → OK
//!  DROP version           → OK count                 (once at `version`: forget the keys of
//!                                                     slots this shard no longer owns)
//!  DUMP                   → key value lines, END
//!  ACCEPTED               → "slot version" lines, END (every write taken, with the
//!                                                     map version that allowed it)
//! ```
//!
//! Requests are served one at a time per store (one lock), so a write taken before an
//! `EXPORT` is in what it exports, and none is taken for a moving slot after it.
//!
//! ```sh
//! cargo run --example slot_store -- --socket $CORRAL_SOCKET --group orders --shard orders-1
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_proto::AgentClient;
use corral_proto::api::AgentRequest;
use corral_proto::shard_map::ShardMap;
use corral_proto::slots::slot_of;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args();
    args.find(|a| a == name).and_then(|_| args.next())
}

struct Store {
    shard: String,
    group: String,
    map: ShardMap,
    keys: BTreeMap<String, String>,
    /// Every write taken: its slot and the map version that allowed it.
    accepted: Vec<(u16, u64)>,
}

/// How a slot stands for this store in its map.
enum Standing {
    Owned,
    Moving,
    Elsewhere(String),
}

impl Store {
    /// The group's version in this store's map, and how `slot` stands.
    fn standing(&mut self, slot: u16) -> Result<(u64, Standing), String> {
        let group = self
            .map
            .group(&self.group)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no group {}", self.group))?;
        let range = group.range_of(slot).ok_or("slot out of range")?;
        let standing = match (&range.shard, &range.moving_to) {
            (owner, None) if *owner == self.shard => Standing::Owned,
            (owner, Some(_)) if *owner == self.shard => Standing::Moving,
            (owner, _) => Standing::Elsewhere(owner.clone()),
        };
        Ok((group.version, standing))
    }

    fn version(&mut self) -> Result<u64, String> {
        Ok(self
            .map
            .group(&self.group)
            .map_err(|e| e.to_string())?
            .map_or(0, |g| g.version))
    }

    /// Waits (up to 10 s) until this store's map is at `version` or later.
    async fn reach(&mut self, version: u64) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.version()? < version {
            if Instant::now() > deadline {
                return Err(format!("the map did not reach version {version}"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    async fn handle(&mut self, line: &str) -> Result<Vec<String>, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| -> Result<u64, String> {
            words
                .get(i)
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| format!("bad request {line:?}"))
        };
        match words.first().copied() {
            Some("PUT") if words.len() == 4 => {
                // Routed with a newer map than this store's: decide once this store has
                // it too, rather than bounce the write with an older answer.
                self.reach(number(3)?).await?;
                let slot = slot_of(words[1].as_bytes());
                let (version, standing) = self.standing(slot)?;
                Ok(vec![match standing {
                    Standing::Owned => {
                        self.keys.insert(words[1].to_string(), words[2].to_string());
                        self.accepted.push((slot, version));
                        format!("OK {slot} {version}")
                    }
                    Standing::Moving => format!("MOVING {version}"),
                    Standing::Elsewhere(owner) => format!("MOVED {owner} {version}"),
                }])
            }
            Some("EXPORT") if words.len() == 4 => {
                let (first, last) = (number(1)? as u16, number(2)? as u16);
                self.reach(number(3)?).await?;
                let mut lines = Vec::new();
                for (key, value) in &self.keys {
                    let slot = slot_of(key.as_bytes());
                    if (first..=last).contains(&slot) {
                        lines.push(format!("{key} {value}"));
                    }
                }
                lines.push("END".into());
                Ok(lines)
            }
            Some("IMPORT") if words.len() == 3 => {
                self.keys.insert(words[1].to_string(), words[2].to_string());
                Ok(vec!["OK".into()])
            }
            Some("DROP") if words.len() == 2 => {
                self.reach(number(1)?).await?;
                let before = self.keys.len();
                let mut kept = BTreeMap::new();
                for (key, value) in std::mem::take(&mut self.keys) {
                    let slot = slot_of(key.as_bytes());
                    if !matches!(self.standing(slot)?.1, Standing::Elsewhere(_)) {
                        kept.insert(key, value);
                    }
                }
                self.keys = kept;
                Ok(vec![format!("OK {}", before - self.keys.len())])
            }
            Some("DUMP") => {
                let mut lines: Vec<String> =
                    self.keys.iter().map(|(k, v)| format!("{k} {v}")).collect();
                lines.push("END".into());
                Ok(lines)
            }
            Some("ACCEPTED") => {
                let mut lines: Vec<String> = self
                    .accepted
                    .iter()
                    .map(|(slot, version)| format!("{slot} {version}"))
                    .collect();
                lines.push("END".into());
                Ok(lines)
            }
            _ => Err(format!("bad request {line:?}")),
        }
    }
}

async fn serve(store: Arc<Mutex<Store>>, stream: TcpStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let answer = store.lock().await.handle(&line).await;
        let mut text = match answer {
            Ok(lines) => lines.join("\n"),
            Err(e) => format!("ERR {e}"),
        };
        text.push('\n');
        write.write_all(text.as_bytes()).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let socket = arg("--socket")
        .or_else(|| std::env::var("CORRAL_SOCKET").ok())
        .ok_or("give --socket PATH or set CORRAL_SOCKET")?;
    let shard = arg("--shard").ok_or("give --shard NAME")?;
    let group = arg("--group").ok_or("give --group NAME")?;
    let listener =
        TcpListener::bind(arg("--listen").unwrap_or_else(|| "127.0.0.1:0".into())).await?;
    let me = listener.local_addr()?.to_string();

    // The registration lives as long as this connection: keep it.
    let agent = AgentClient::connect(&socket).await?;
    let _ = agent
        .write(AgentRequest::CreateShard {
            name: shard.clone(),
        })
        .await; // Fine if it exists.
    agent
        .write(AgentRequest::JoinShard {
            shard: shard.clone(),
            address: me.clone(),
            priority: 1,
            detach: false,
        })
        .await?;
    println!("{shard} serving at {me}");

    let store = Arc::new(Mutex::new(Store {
        shard,
        group,
        map: ShardMap::for_socket(&socket),
        keys: BTreeMap::new(),
        accepted: Vec::new(),
    }));
    loop {
        let (stream, _) = listener.accept().await?;
        let store = store.clone();
        tokio::spawn(async move {
            let _ = serve(store, stream).await;
        });
        if agent.is_closed() {
            return Err("the agent connection closed: the registration is gone".into());
        }
    }
}
