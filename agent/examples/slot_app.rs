//! An app of the slot store (`slot_store`), using only Corral's public Rust client: it
//! writes keys where their slot goes, routing each write from the shard map its agent
//! publishes (no round trip to the agent), and moves slots between shards while writes go
//! on.
//!
//! ```text
//!  write:   key ──ShardMap::route──► master of the slot's shard ──PUT key value version──►
//!           MOVED / MOVING: route again with the map as it is now, and retry
//!  migrate: MoveSlots (both sides see the slots moving; their owner refuses writes to them)
//!           ─► EXPORT from each owner (once it has seen the move) ─► IMPORT into the new one
//!           ─► FinishMove commit (every slot flips at once) ─► DROP at the old owners
//! ```
//!
//! ```sh
//! cargo run --example slot_app -- write --socket $CORRAL_SOCKET --group orders --seconds 10
//! cargo run --example slot_app -- migrate --socket $CORRAL_SOCKET --group orders \
//!     --slots 12000-16383 --to orders-4
//! ```
//!
//! `write` prints, at the end, one JSON line: the last value acknowledged for each key and
//! how many writes were refused and retried.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use corral_proto::api::{AgentRequest, Query, QueryResult};
use corral_proto::shard_map::ShardMap;
use corral_proto::{AgentClient, Answer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

type Error = Box<dyn std::error::Error>;

fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args();
    args.find(|a| a == name).and_then(|_| args.next())
}

/// A line-protocol connection to one store.
struct Link {
    read: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

impl Link {
    async fn open(address: &str) -> Result<Link, Error> {
        let (read, write) = TcpStream::connect(address).await?.into_split();
        Ok(Link {
            read: BufReader::new(read).lines(),
            write,
        })
    }

    async fn line(&mut self) -> Result<String, Error> {
        Ok(self.read.next_line().await?.ok_or("the store closed")?)
    }

    async fn ask(&mut self, request: &str) -> Result<String, Error> {
        self.write
            .write_all(format!("{request}\n").as_bytes())
            .await?;
        self.line().await
    }

    /// Lines up to `END`.
    async fn ask_lines(&mut self, request: &str) -> Result<Vec<String>, Error> {
        let mut lines = vec![self.ask(request).await?];
        while lines.last().map(String::as_str) != Some("END") {
            lines.push(self.line().await?);
        }
        lines.pop();
        Ok(lines)
    }
}

async fn write(socket: &str, group: &str) -> Result<(), Error> {
    let seconds: u64 = arg("--seconds").map_or(Ok(10), |s| s.parse())?;
    let keys: u64 = arg("--keys").map_or(Ok(300), |s| s.parse())?;
    let mut map = ShardMap::for_socket(socket);
    let mut links: HashMap<String, Link> = HashMap::new();
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let (mut writes, mut retries, mut route_ns) = (0u64, 0u64, 0u128);
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut i = 0u64;
    while Instant::now() < end {
        let key = format!("k{}", i % keys);
        let value = i;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if Instant::now() > deadline {
                return Err(format!("{key} found no shard to take it within 10 s").into());
            }
            let routed = Instant::now();
            let route = map.route(group, key.as_bytes())?;
            route_ns += routed.elapsed().as_nanos();
            let Some(master) = route.as_ref().and_then(|r| r.master.clone()) else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let version = route.map_or(0, |r| r.version);
            if !links.contains_key(&master) {
                links.insert(master.clone(), Link::open(&master).await?);
            }
            let link = links.get_mut(&master).expect("opened above");
            let answer = link.ask(&format!("PUT {key} {value} {version}")).await?;
            if answer.starts_with("OK ") {
                acked.insert(key.clone(), value);
                writes += 1;
                break;
            }
            if !(answer.starts_with("MOVED ") || answer.starts_with("MOVING ")) {
                return Err(format!("{key}: {answer}").into());
            }
            // Routed with a map the store no longer agrees with: route again once this
            // app's map is at least at the store's version.
            retries += 1;
            let theirs: u64 = answer
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while map.group(group)?.map_or(0, |g| g.version) < theirs && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        i += 1;
    }
    let summary = serde_json::json!({
        "acked": acked,
        "writes": writes,
        "retries": retries,
        "route_ns_mean": route_ns / u128::from((writes + retries).max(1)),
    });
    println!("{summary}");
    Ok(())
}

/// The master of each shard, as the agent's replica has it.
async fn masters(agent: &AgentClient) -> Result<HashMap<String, String>, Error> {
    let reply = agent.read(Query::Shards, true).await?;
    let QueryResult::Shards(shards) = reply.result else {
        return Err("unexpected answer".into());
    };
    Ok(shards
        .into_iter()
        .filter_map(|s| Some((s.name.clone(), s.master?)))
        .collect())
}

async fn migrate(socket: &str, group: &str) -> Result<(), Error> {
    let slots = arg("--slots").ok_or("give --slots FIRST-LAST")?;
    let to = arg("--to").ok_or("give --to SHARD")?;
    let (first, last) = slots.split_once('-').ok_or("--slots is FIRST-LAST")?;
    let (first, last): (u16, u16) = (first.parse()?, last.parse()?);
    let agent = AgentClient::connect(socket).await?;
    let started = Instant::now();
    let begun = agent
        .write(AgentRequest::MoveSlots {
            group: group.into(),
            first,
            last,
            to: to.clone(),
        })
        .await?;
    let Answer::GroupChanged { version } = begun.1 else {
        return Err(format!("unexpected answer {:?}", begun.1).into());
    };
    // The owners of the moving slots, as of that version.
    let reply = agent.read(Query::Group(group.into()), true).await?;
    let QueryResult::Group(Some(layout)) = reply.result else {
        return Err(format!("no group {group}").into());
    };
    let masters = masters(&agent).await?;
    let mut target = Link::open(masters.get(&to).ok_or("the destination has no master")?).await?;
    let mut sources = Vec::new();
    let mut moved = 0;
    for range in layout
        .ranges
        .iter()
        .filter(|r| r.moving_to.as_ref() == Some(&to))
    {
        let master = masters.get(&range.shard).ok_or("a source has no master")?;
        let mut source = Link::open(master).await?;
        let request = format!("EXPORT {} {} {version}", range.first, range.last);
        for line in source.ask_lines(&request).await? {
            let (key, value) = line.split_once(' ').ok_or("bad export line")?;
            let answer = target.ask(&format!("IMPORT {key} {value}")).await?;
            if answer != "OK" {
                return Err(format!("import of {key}: {answer}").into());
            }
            moved += 1;
        }
        sources.push(source);
    }
    let finished = agent
        .write(AgentRequest::FinishMove {
            group: group.into(),
            commit: true,
        })
        .await?;
    let Answer::GroupChanged { version } = finished.1 else {
        return Err(format!("unexpected answer {:?}", finished.1).into());
    };
    for source in &mut sources {
        let answer = source.ask(&format!("DROP {version}")).await?;
        if !answer.starts_with("OK") {
            return Err(format!("drop: {answer}").into());
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "slots": format!("{first}-{last}"),
            "to": to,
            "keys_moved": moved,
            "version": version,
            "ms": started.elapsed().as_millis() as u64,
        })
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let socket = arg("--socket")
        .or_else(|| std::env::var("CORRAL_SOCKET").ok())
        .ok_or("give --socket PATH or set CORRAL_SOCKET")?;
    let group = arg("--group").ok_or("give --group NAME")?;
    match std::env::args().nth(1).as_deref() {
        Some("write") => write(&socket, &group).await,
        Some("migrate") => migrate(&socket, &group).await,
        _ => Err("give write or migrate first".into()),
    }
}
