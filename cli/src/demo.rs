//! `corral dev --demo`: the problem Corral exists for, played on a dev cluster.
//!
//! Three shards M1..M3, each with a master and two slaves on different hosts. Every
//! replica is a tiny TCP store (`PUT key value` → `OK epoch`) that registers with its
//! host's agent and accepts writes only while its own agent shows it as master at the
//! current epoch. Every host runs an app server that looks the masters up through its
//! local agent and writes to them. Then M1's master's host is killed (its agent SIGKILLed,
//! its replicas and app server gone with it), and the failover is narrated: who noticed,
//! when the core promoted whom, when each app server switched.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use corral_proto::api::{AgentRequest, EventFilter, MemberState, SubscriptionItem};
use corral_proto::{AgentClient, Event};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::dev::DevCluster;

const SHARDS: [&str; 3] = ["M1", "M2", "M3"];
const WRITE_EVERY: Duration = Duration::from_millis(20);
const WRITE_TIMEOUT: Duration = Duration::from_millis(300);
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);

/// What happened, for the narration.
#[derive(Debug)]
enum Note {
    Noticed {
        observer: String,
        at: Instant,
    },
    Promoted {
        observer: String,
        master: Option<String>,
        epoch: u64,
        at: Instant,
    },
    Wrote {
        app: String,
        shard: String,
        master: String,
        epoch: u64,
        at: Instant,
    },
}

/// The masters as one agent's replica shows them: shard → (master, epoch).
type Masters = BTreeMap<String, (Option<String>, u64)>;

/// Follows the shard map through `client`'s subscription.
async fn follow_masters(
    client: AgentClient,
    masters: watch::Sender<Masters>,
) -> anyhow::Result<()> {
    let mut subscription = client
        .subscribe(
            EventFilter {
                shards: true,
                ..EventFilter::nothing()
            },
            None,
        )
        .await?;
    // The state at subscription time, then every change.
    let shards = match client
        .read(corral_proto::api::Query::Shards, false)
        .await?
        .result
    {
        corral_proto::api::QueryResult::Shards(shards) => shards,
        _ => Vec::new(),
    };
    masters.send_modify(|m| {
        for shard in shards {
            m.insert(shard.name.clone(), (shard.master.clone(), shard.epoch));
        }
    });
    while let Some(item) = subscription.next().await {
        match item {
            SubscriptionItem::Events(batch) => {
                for event in batch.events {
                    if let Event::MasterChanged {
                        shard,
                        master,
                        epoch,
                        ..
                    } = event
                    {
                        masters.send_modify(|m| {
                            let entry = m.entry(shard).or_insert((None, 0));
                            if epoch >= entry.1 {
                                *entry = (master, epoch);
                            }
                        });
                    }
                }
            }
            SubscriptionItem::Reset { shards, .. } => masters.send_modify(|m| {
                for shard in shards {
                    m.insert(shard.name.clone(), (shard.master.clone(), shard.epoch));
                }
            }),
            SubscriptionItem::Ended { reason } => bail!("subscription ended: {reason}"),
            SubscriptionItem::Member(_) => {}
        }
    }
    Ok(())
}

/// One replica of `shard`: a TCP store that accepts writes only while its agent shows it
/// as the master.
async fn replica(
    socket: std::path::PathBuf,
    shard: String,
    priority: u32,
) -> anyhow::Result<(SocketAddr, Vec<JoinHandle<()>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let client = AgentClient::connect(&socket).await?;
    let (masters_sender, masters) = watch::channel(Masters::new());
    let follower = tokio::spawn({
        let client = client.clone();
        async move {
            if let Err(e) = follow_masters(client, masters_sender).await {
                tracing::debug!(error = %e, "replica stopped following the shard map");
            }
        }
    });
    client
        .write(AgentRequest::JoinShard {
            shard: shard.clone(),
            address: address.to_string(),
            priority,
            detach: false,
        })
        .await
        .with_context(|| format!("joining {shard}"))?;
    let me = address.to_string();
    let server = tokio::spawn(async move {
        // The registration lives as long as this connection: keep it here.
        let _registration = client;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let masters = masters.clone();
            let shard = shard.clone();
            let me = me.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let (master, epoch) =
                        masters.borrow().get(&shard).cloned().unwrap_or((None, 0));
                    let answer =
                        if master.as_deref() == Some(me.as_str()) && line.starts_with("PUT ") {
                            format!("OK {epoch}\n")
                        } else {
                            format!("NOT_MASTER {epoch}\n")
                        };
                    if write.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((address, vec![follower, server]))
}

/// Writes `PUT` to `master`; Some(epoch) when the master accepted it.
async fn put(master: &str, key: &str) -> Option<u64> {
    let attempt = async {
        let mut stream = TcpStream::connect(master).await.ok()?;
        stream
            .write_all(format!("PUT {key} v\n").as_bytes())
            .await
            .ok()?;
        let mut line = String::new();
        BufReader::new(&mut stream)
            .read_line(&mut line)
            .await
            .ok()?;
        line.strip_prefix("OK ")?.trim().parse().ok()
    };
    tokio::time::timeout(WRITE_TIMEOUT, attempt)
        .await
        .ok()
        .flatten()
}

/// An app server on host `name`: looks masters up through its local agent and writes to
/// each shard's master in turn, reporting every accepted write.
async fn app_server(
    name: String,
    socket: std::path::PathBuf,
    notes: mpsc::UnboundedSender<Note>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let client = AgentClient::connect(&socket).await?;
    let (masters_sender, masters) = watch::channel(Masters::new());
    let follower = tokio::spawn(async move {
        let _ = follow_masters(client, masters_sender).await;
    });
    let writer = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            for shard in SHARDS {
                let current = masters.borrow().get(shard).cloned();
                if let Some((Some(master), _)) = current
                    && let Some(epoch) = put(&master, &format!("{name}-{n}")).await
                {
                    let _ = notes.send(Note::Wrote {
                        app: name.clone(),
                        shard: shard.to_string(),
                        master,
                        epoch,
                        at: Instant::now(),
                    });
                }
                n += 1;
            }
            tokio::time::sleep(WRITE_EVERY).await;
        }
    });
    Ok(vec![follower, writer])
}

/// Reports when `observer`'s agent sees `victim` down and M1's new master.
async fn observe(
    observer: String,
    socket: std::path::PathBuf,
    victim: String,
    notes: mpsc::UnboundedSender<Note>,
) -> anyhow::Result<JoinHandle<()>> {
    let client = AgentClient::connect(&socket).await?;
    let mut subscription = client
        .subscribe(
            EventFilter {
                shards: true,
                members: true,
                ..EventFilter::nothing()
            },
            None,
        )
        .await?;
    Ok(tokio::spawn(async move {
        let _client = client;
        while let Some(item) = subscription.next().await {
            let at = Instant::now();
            match item {
                SubscriptionItem::Member(member)
                    if member.name == victim && member.state == MemberState::Down =>
                {
                    let _ = notes.send(Note::Noticed {
                        observer: observer.clone(),
                        at,
                    });
                }
                SubscriptionItem::Events(batch) => {
                    for event in batch.events {
                        if let Event::MasterChanged {
                            shard,
                            master,
                            epoch,
                            ..
                        } = event
                            && shard == SHARDS[0]
                        {
                            let _ = notes.send(Note::Promoted {
                                observer: observer.clone(),
                                master,
                                epoch,
                                at,
                            });
                        }
                    }
                }
                _ => {}
            }
        }
    }))
}

fn ms(from: Instant, at: Instant) -> f64 {
    at.saturating_duration_since(from).as_secs_f64() * 1000.0
}

pub(crate) async fn play(cluster: &mut DevCluster) -> anyhow::Result<()> {
    let hosts = cluster.agents.len();
    if hosts < 4 {
        bail!("the demo needs at least 4 agents (--agents 4 or more)");
    }
    println!(
        "Demo: shards {} with a master and two slaves each, on {hosts} hosts; an app server on every host.",
        SHARDS.join(", ")
    );
    let setup = AgentClient::connect(&cluster.agents[0].socket).await?;
    for shard in SHARDS {
        setup
            .write(AgentRequest::CreateShard { name: shard.into() })
            .await
            .with_context(|| format!("creating {shard}"))?;
    }
    // Replicas: shard k on hosts k, k+1, k+2; the first is preferred as master.
    let mut host_tasks: HashMap<String, Vec<JoinHandle<()>>> = HashMap::new();
    let mut where_is: HashMap<String, String> = HashMap::new();
    for (k, shard) in SHARDS.iter().enumerate() {
        for j in 0..3 {
            let host = &cluster.agents[(k + j) % hosts];
            let (address, tasks) =
                replica(host.socket.clone(), shard.to_string(), 30 - 10 * j as u32).await?;
            where_is.insert(address.to_string(), host.name.clone());
            host_tasks
                .entry(host.name.clone())
                .or_default()
                .extend(tasks);
        }
    }
    let (notes_sender, mut notes) = mpsc::unbounded_channel();
    for host in &cluster.agents {
        let tasks =
            app_server(host.name.clone(), host.socket.clone(), notes_sender.clone()).await?;
        host_tasks
            .entry(host.name.clone())
            .or_default()
            .extend(tasks);
    }

    // Wait until every app server writes to every shard's master.
    let mut writing: HashMap<(String, String), (String, u64)> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while writing.len() < hosts * SHARDS.len() {
        let note = tokio::time::timeout_at(deadline.into(), notes.recv())
            .await
            .context("app servers did not all reach the masters within 20 s")?
            .context("app servers stopped")?;
        if let Note::Wrote {
            app,
            shard,
            master,
            epoch,
            ..
        } = note
        {
            writing.insert((app, shard), (master, epoch));
        }
    }
    let shards = setup.read(corral_proto::api::Query::Shards, false).await?;
    println!();
    if let corral_proto::api::QueryResult::Shards(shards) = shards.result {
        for shard in shards {
            let master = shard.master.clone().unwrap_or_default();
            let slaves: Vec<String> = shard
                .slaves()
                .map(|r| {
                    format!(
                        "{} on {}",
                        r.address,
                        where_is.get(&r.address).map_or("?", String::as_str)
                    )
                })
                .collect();
            println!(
                "  {}  master {} on {}  (epoch {})  slaves {}",
                shard.name,
                master,
                where_is.get(&master).map_or("?", String::as_str),
                shard.epoch,
                slaves.join(", ")
            );
        }
    }
    println!("  every app server is writing to every master.");

    let (old_master, old_epoch) = writing
        .get(&(cluster.agents[1].name.clone(), SHARDS[0].to_string()))
        .cloned()
        .context("no master of M1")?;
    let victim = where_is
        .get(&old_master)
        .cloned()
        .context("M1's master host unknown")?;
    let survivors: Vec<(String, std::path::PathBuf)> = cluster
        .agents
        .iter()
        .filter(|a| a.name != victim)
        .map(|a| (a.name.clone(), a.socket.clone()))
        .collect();
    let mut observers = Vec::new();
    for (name, socket) in &survivors {
        observers.push(
            observe(
                name.clone(),
                socket.clone(),
                victim.clone(),
                notes_sender.clone(),
            )
            .await?,
        );
    }
    drop(setup);

    println!();
    println!(
        "Killing host {victim} (SIGKILL of its agent; its replicas and app server die with it): it holds M1's master {old_master}."
    );
    let killed_at = Instant::now();
    if let Some(agent) = cluster.agents.iter_mut().find(|a| a.name == victim) {
        agent.kill();
    }
    for task in host_tasks.remove(&victim).unwrap_or_default() {
        task.abort();
    }
    // Drain notes from before the kill.
    while notes.try_recv().is_ok() {}

    let mut noticed: Vec<(String, f64)> = Vec::new();
    let mut promoted: Option<(String, u64, f64)> = None;
    let mut switched: BTreeMap<String, f64> = BTreeMap::new();
    let deadline = killed_at + FAILOVER_DEADLINE;
    while switched.len() < survivors.len() {
        let note = match tokio::time::timeout_at(deadline.into(), notes.recv()).await {
            Ok(Some(note)) => note,
            _ => bail!(
                "after {FAILOVER_DEADLINE:?}, only {} of {} app servers write to a new master of M1",
                switched.len(),
                survivors.len()
            ),
        };
        match note {
            Note::Noticed { observer, at } => {
                let t = ms(killed_at, at);
                if noticed.is_empty() {
                    println!("  +{t:6.0} ms  {observer} noticed {victim} is dead (gossip)");
                }
                noticed.push((observer, t));
                if noticed.len() == survivors.len() {
                    println!("  +{t:6.0} ms  every surviving agent knows {victim} is dead");
                }
            }
            Note::Promoted {
                observer,
                master,
                epoch,
                at,
            } => {
                if promoted.is_none() && epoch > old_epoch {
                    let t = ms(killed_at, at);
                    let master = master.unwrap_or_else(|| "nobody".into());
                    let host = where_is.get(&master).cloned().unwrap_or_default();
                    println!(
                        "  +{t:6.0} ms  the core promoted {master} on {host} to master of M1, epoch {epoch} (seen first by {observer})"
                    );
                    promoted = Some((master, epoch, t));
                }
            }
            Note::Wrote {
                app,
                shard,
                master,
                epoch,
                at,
            } => {
                if shard == SHARDS[0]
                    && master != old_master
                    && epoch > old_epoch
                    && !switched.contains_key(&app)
                {
                    let t = ms(killed_at, at);
                    println!(
                        "  +{t:6.0} ms  app server on {app} wrote to the new master {master} (epoch {epoch})"
                    );
                    switched.insert(app, t);
                }
            }
        }
    }
    let last = switched.values().copied().fold(0.0, f64::max);
    let first_noticed = noticed
        .iter()
        .map(|(_, t)| *t)
        .fold(f64::INFINITY, f64::min);
    println!();
    println!("Failover of M1 after its master's host died:");
    if first_noticed.is_finite() {
        println!("  first agent noticed        {first_noticed:6.0} ms");
    }
    if let Some((_, _, t)) = &promoted {
        println!("  new master promoted        {t:6.0} ms");
    }
    println!("  last app server switched   {last:6.0} ms");
    println!("Every app server is writing to the promoted master.");
    for task in observers {
        task.abort();
    }
    for tasks in host_tasks.into_values() {
        for task in tasks {
            task.abort();
        }
    }
    Ok(())
}
