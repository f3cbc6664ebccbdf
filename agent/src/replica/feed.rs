//! The task that keeps the replica fed: from a core member's watch stream, or from
//! another agent that relays one ([`super::relay`]), as the feed tree says
//! ([`super::feed_tree`]).
//!
//! ```text
//!  feed tree: a feeder for me? ──yes──► agent's relay stream ─┐   beats ──► core member
//!        │ no, or none answers                                 ├──► SharedReplica
//!        └───────────────────────────► core member's stream ──┘   (beats on its side)
//!        ▲                                                     │ error / silence / lag
//!        └──────────── next feeder or member, resume from revision ◄┘
//! ```
//!
//! A first connection, or a resume below the source's history, starts from a snapshot
//! (the source decides). A core member's stream moves to another member when its member
//! fails, goes quiet, or has no leader (it may sit in a minority and hold stale state). A
//! relay's stream moves to the next feeder when the relay fails, goes quiet, or keeps the
//! replica behind a revision the core was heard at; when no feeder answers, a core member
//! feeds the agent until the tree is checked again.
//!
//! Agents fed by the core feed from followers where they can: the leader already sends
//! every write to every follower and answers every writer, so each stream it also serves
//! costs it one more packet per commit. A feed passes over the member its core client
//! knows as leader, and leaves one that became leader, unless a failure brought it there
//! (then it stays until that stream ends, so that a core whose followers are down is still
//! followed).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_net::client::{CoreClient, WatchStream};
use corral_net::rpc::{CoreRequest, WatchItem};
use parking_lot::RwLock;
use tokio::sync::watch;

use super::beats::{self, AbortOnDrop, BeatIdentity, SharedBeatsSent};
use super::feed_tree::FeedTree;
use super::replica::ReplicaError;
use super::shared::SharedReplica;
use crate::gossip::GossipTransport;
use crate::gossip::service::GossipView;
use corral_proto::api::MemberState;

/// A core member's stream with no item for this long is given up (members send progress
/// every 250 ms).
pub const FEED_SILENCE: Duration = Duration::from_secs(2);

/// A relay's stream with no item for this long is given up (relays send progress every
/// 250 ms): the agents a dead relay fed resume elsewhere within a second.
pub const RELAY_SILENCE: Duration = Duration::from_millis(600);

/// A relay that keeps the replica behind a revision the core was heard at for this long,
/// while it says it holds more, is left: it withholds entries.
pub const RELAY_BEHIND_MAX: Duration = Duration::from_secs(2);

/// A relay that keeps the replica behind the core for this long is left even when it
/// is behind itself: it lags too far (a relay only somewhat behind, on a host short of
/// CPU, is kept: moving every agent it feeds to the core would load the core with the
/// fleet).
pub const RELAY_LAG_MAX: Duration = Duration::from_secs(10);

/// A member that reports no leader for this long is left for another.
pub const FEED_LEADERLESS: Duration = Duration::from_secs(2);

const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A feed leaves a member that became leader once it has followed it this long.
pub const LEAVE_LEADER_AFTER: Duration = Duration::from_secs(1);

/// A stream that lasted this long before it failed does not count as a recent failure.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// How often a feed checks that it follows the source the tree names.
const TREE_CHECK: Duration = Duration::from_secs(5);

/// A relay that failed is not asked again for this long.
const RELAY_FAILED_FOR: Duration = Duration::from_secs(15);

/// Relays are not used for this long after the core stopped hearing this agent's beats
/// on their own stream (a core that does not serve them, or cannot be reached): the
/// core's own stream carries the beats then.
const RELAYS_OFF_FOR: Duration = Duration::from_secs(60);

/// What the feed does after a stream ends.
enum Next {
    /// Reconnect to the same source.
    Same,
    /// Move to another source, after a pause.
    Elsewhere,
    /// The member leads: move to a follower at once.
    OffTheLeader,
    /// The tree names another source: go there.
    Retree,
    /// The core does not hear this agent's beats on their own stream: follow the core.
    BeatsLost,
    /// The replica's checkpoint differed from the core's: it starts over from the core.
    Mismatched,
}

/// What the feed needs to take its stream from other agents.
pub struct Relays {
    pub name: String,
    pub view: Arc<RwLock<GossipView>>,
    pub transport: Arc<GossipTransport>,
    pub tree: FeedTree,
    /// Whether the agent joins a pool through seeds other than itself: a joining agent
    /// waits a moment for gossip to show it the pool before it takes its first snapshot.
    pub joins: bool,
}

impl std::fmt::Debug for Relays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relays")
            .field("tree", &self.tree)
            .finish_non_exhaustive()
    }
}

/// A feeder the tree names.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Feeder {
    name: String,
    address: SocketAddr,
}

impl Relays {
    /// The feeders the tree names for this agent, best first, among the agents alive.
    fn feeders(&self) -> Vec<Feeder> {
        let view = self.view.read();
        let alive = view
            .members
            .values()
            .filter(|m| m.state == MemberState::Alive)
            .map(|m| m.identity.name.as_str());
        self.tree
            .feeders(&self.name, alive)
            .into_iter()
            .filter_map(|name| {
                let address = view.members.get(&name)?.identity.address;
                Some(Feeder { name, address })
            })
            .collect()
    }
}

/// The feed's choice among core members: at random first, then in turn.
struct Members {
    members: Vec<String>,
    index: usize,
    /// False after a stream failed: the feed then takes members in turn, the leader too.
    healthy: bool,
}

pub async fn run(
    client: Arc<CoreClient>,
    replica: Arc<SharedReplica>,
    identity: BeatIdentity,
    relays: Option<Relays>,
    mut shutdown: watch::Receiver<bool>,
) {
    let members = client.members().to_vec();
    if members.is_empty() {
        tracing::error!("no core member configured: the replica stays empty");
        return;
    }
    let mut core = Members {
        index: rand::random::<u32>() as usize % members.len(),
        members,
        healthy: true,
    };
    // A joining agent takes its first snapshot from a peer, not the core: it lets gossip
    // show it the pool before it chooses.
    if let Some(relays) = &relays
        && relays.joins
        && replica.read(|r| r.resume_point()).is_none()
    {
        tokio::select! {
            _ = pool_settled(relays) => {}
            _ = shutdown.changed() => return,
        }
    }
    let mut failed_relays: HashMap<String, Instant> = HashMap::new();
    let mut relays_off_until: Option<Instant> = None;
    // Beats to the core while a relay feeds this agent.
    let mut core_beats: Option<(AbortOnDrop, Arc<parking_lot::Mutex<Instant>>)> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        failed_relays.retain(|_, at| at.elapsed() < RELAY_FAILED_FOR);
        let relays_on = relays_off_until.is_none_or(|until| Instant::now() >= until);
        if relays_on && relays_off_until.take().is_some() {
            replica.set_relays_off(None);
        }
        let feeder = relays
            .as_ref()
            .filter(|_| relays_on)
            .and_then(|r| usable(r, &failed_relays));
        let next = match (&relays, feeder) {
            (Some(relays), Some(feeder)) => {
                let heard = &core_beats
                    .get_or_insert_with(|| {
                        let heard = Arc::new(parking_lot::Mutex::new(Instant::now()));
                        let task = beats::spawn_core_beats(
                            client.clone(),
                            replica.clone(),
                            identity.clone(),
                            heard.clone(),
                        );
                        (task, heard)
                    })
                    .1;
                let next = tokio::select! {
                    next = follow_relay(relays, &replica, &feeder, heard, &failed_relays) => next,
                    _ = shutdown.changed() => return,
                };
                replica.stream_ended();
                replica.set_feed(None);
                match next {
                    Next::Elsewhere => {
                        failed_relays.insert(feeder.name.clone(), Instant::now());
                    }
                    Next::BeatsLost => {
                        tracing::warn!(
                            "the core does not hear this agent's beats on their own stream; a core member feeds it"
                        );
                        relays_off_until = Some(Instant::now() + RELAYS_OFF_FOR);
                    }
                    Next::Mismatched => {
                        failed_relays.insert(feeder.name.clone(), Instant::now());
                        relays_off_until = Some(Instant::now() + RELAYS_OFF_FOR);
                        starts_over_from_the_core(&replica, &format!("relay {}", feeder.name));
                    }
                    _ => {}
                }
                continue;
            }
            _ => {
                if core_beats.take().is_some() {
                    replica.forget_core_progress();
                }
                let retree = relays.as_ref().filter(|_| relays_on);
                let address = core.next_address(&client);
                let started = Instant::now();
                let next = tokio::select! {
                    next = follow_core(&client, &replica, &identity, &address, core.healthy, retree, &failed_relays) => next,
                    _ = shutdown.changed() => return,
                };
                replica.stream_ended();
                replica.set_feed(None);
                (next, address, started)
            }
        };
        let (next, address, started) = next;
        match next {
            Next::Same | Next::Retree | Next::BeatsLost => {}
            Next::Mismatched => {
                // The state came from a relay before this member's stream: relays stay off.
                relays_off_until = Some(Instant::now() + RELAYS_OFF_FOR);
                starts_over_from_the_core(&replica, "an earlier feeder");
            }
            Next::OffTheLeader => {
                tracing::info!(
                    member = address,
                    "replica feed leaves the leader for a follower"
                );
                core.off_the_leader();
            }
            Next::Elsewhere => {
                core.failed(started.elapsed() >= HEALTHY_AFTER);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Longest a joining agent waits for gossip to show it the pool.
const POOL_SETTLE_MAX: Duration = Duration::from_secs(2);

/// The pool counts as settled once it has held other members, in the same number, this
/// long; an agent alone this long counts as a pool of one.
const POOL_STEADY: Duration = Duration::from_millis(300);
const POOL_ALONE: Duration = Duration::from_millis(500);

/// Returns once gossip shows other members and their count held for [`POOL_STEADY`], once
/// the agent has been alone for [`POOL_ALONE`] (the first agent of a pool), or after
/// [`POOL_SETTLE_MAX`].
async fn pool_settled(relays: &Relays) {
    let started = Instant::now();
    let mut last = (0, Instant::now());
    while started.elapsed() < POOL_SETTLE_MAX {
        let alive = relays
            .view
            .read()
            .members
            .values()
            .filter(|m| m.state == MemberState::Alive)
            .count();
        if alive != last.0 {
            last = (alive, Instant::now());
        } else if (alive > 1 && last.1.elapsed() >= POOL_STEADY)
            || (alive <= 1 && last.1.elapsed() >= POOL_ALONE)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Drops the replica, whose state differed from the core's at a checkpoint, so that the
/// core's stream fetches it whole; the feed says why relays are off meanwhile.
fn starts_over_from_the_core(replica: &SharedReplica, source: &str) {
    replica.set_relays_off(Some(format!(
        "relays off for {} s: the state that {source} fed differed from the core's at a checkpoint",
        RELAYS_OFF_FOR.as_secs()
    )));
    replica.start_over();
}

/// The best feeder the tree names that did not fail recently.
fn usable(relays: &Relays, failed: &HashMap<String, Instant>) -> Option<Feeder> {
    relays.feeders().into_iter().find(|f| {
        failed
            .get(&f.name)
            .is_none_or(|at| at.elapsed() >= RELAY_FAILED_FOR)
    })
}

impl Members {
    /// The member to follow next: passes over the leader while healthy.
    fn next_address(&mut self, client: &CoreClient) -> String {
        let count = self.members.len();
        if self.healthy
            && count > 1
            && client.leader().as_ref() == Some(&self.members[self.index % count])
        {
            self.index += 1;
        }
        self.members[self.index % count].clone()
    }

    /// Any other member, at random, so that agents spread over the followers.
    fn off_the_leader(&mut self) {
        let count = self.members.len();
        self.index += 1 + rand::random::<u32>() as usize % (count - 1);
    }

    fn failed(&mut self, after_a_healthy_stream: bool) {
        self.healthy = after_a_healthy_stream;
        self.index += 1;
    }
}

/// Follows one member's stream until it ends, and says where to go next: to the same
/// member after a gap the member itself is fine with, elsewhere after a failure, off the
/// member once it is known to lead (when `leave_leader`), or to a relay once the tree
/// names one (when `retree`).
async fn follow_core(
    client: &CoreClient,
    replica: &SharedReplica,
    identity: &BeatIdentity,
    address: &str,
    leave_leader: bool,
    retree: Option<&Relays>,
    failed_relays: &HashMap<String, Instant>,
) -> Next {
    let after = replica.read(|r| r.resume_point());
    let mut stream = match client.watch(address, after).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(member = address, error = %e, "watch stream not opened");
            return Next::Elsewhere;
        }
    };
    let sent = SharedBeatsSent::default();
    let _beats = stream
        .take_beat_sender()
        .map(|send| beats::start(send, identity.clone(), sent.clone()));
    tracing::info!(member = address, ?after, "replica feed connected");
    replica.set_feed(Some(address.to_string()));
    let mut leader_seen = Instant::now();
    let connected = Instant::now();
    let mut tree_checked = Instant::now();
    let others = client.members().len() > 1;
    let mut counted = 0;
    loop {
        let next = tokio::time::timeout(FEED_SILENCE, stream.next_frame()).await;
        replica.fed(stream.bytes_received() - counted);
        counted = stream.bytes_received();
        let (item, frame) = match next {
            Ok(Ok(Some(item))) => item,
            Ok(Ok(None)) => {
                tracing::info!(member = address, "watch stream ended by the member");
                return Next::Elsewhere;
            }
            Ok(Err(e)) => {
                tracing::info!(member = address, error = %e, "watch stream failed");
                return Next::Elsewhere;
            }
            Err(_) => {
                tracing::warn!(
                    member = address,
                    "watch stream silent; trying another member"
                );
                return Next::Elsewhere;
            }
        };
        let (has_leader, echoed) = match &item {
            WatchItem::Progress {
                leader, term, beat, ..
            } => {
                replica.heard_leader(*leader, *term);
                (
                    leader.is_some(),
                    beat.and_then(|seq| sent.lock().sent_at(seq)),
                )
            }
            _ => (true, None),
        };
        if matches!(item, WatchItem::Progress { .. }) {
            if leave_leader
                && others
                && connected.elapsed() >= LEAVE_LEADER_AFTER
                && client.leader().as_deref() == Some(address)
            {
                return Next::OffTheLeader;
            }
            if let Some(relays) = retree
                && tree_checked.elapsed() >= TREE_CHECK
            {
                tree_checked = Instant::now();
                if usable(relays, failed_relays).is_some() {
                    tracing::info!(
                        member = address,
                        "the feed tree names a relay for this agent"
                    );
                    return Next::Retree;
                }
            }
        }
        if has_leader {
            leader_seen = Instant::now();
            // Fresh as of the echoed beat's sending, however long the item sat in buffers.
            if let Some(at) = echoed {
                replica.heard_at(at);
            }
        } else if leader_seen.elapsed() > FEED_LEADERLESS {
            tracing::warn!(
                member = address,
                "member has no leader; trying another member"
            );
            return Next::Elsewhere;
        }
        if let Some(next) = apply(replica, item, frame, after, address) {
            return next;
        }
    }
}

/// Applies one item; says where to go when the stream must end.
fn apply(
    replica: &SharedReplica,
    item: WatchItem,
    frame: bytes::Bytes,
    after: Option<corral_proto::Revision>,
    source: &str,
) -> Option<Next> {
    let handled = replica.handle_item(item, Some(frame));
    if replica.take_mismatch() {
        return Some(Next::Mismatched);
    }
    match handled {
        Ok(_) if after.is_some() && replica.read(|r| r.resume_point()).is_none() => {
            tracing::warn!(source, "the replica started over; fetching the state");
            Some(Next::Same)
        }
        Ok(_) => None,
        Err(e @ (ReplicaError::Gap { .. } | ReplicaError::NoBase(_))) => {
            tracing::warn!(source, error = %e, "replica feed resumes");
            Some(Next::Same)
        }
        Err(e) => {
            tracing::error!(source, error = %e, "replica feed refused an item");
            Some(Next::Elsewhere)
        }
    }
}

/// Follows one relay's stream until it ends, and says where to go next.
async fn follow_relay(
    relays: &Relays,
    replica: &SharedReplica,
    feeder: &Feeder,
    beats_heard: &parking_lot::Mutex<Instant>,
    failed_relays: &HashMap<String, Instant>,
) -> Next {
    let source = format!("relay {}", feeder.name);
    let after = replica.read(|r| r.resume_point());
    let mut stream = match open_relay(relays, feeder, after).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::info!(relay = feeder.name, error = %e, "relay stream not opened");
            return Next::Elsewhere;
        }
    };
    tracing::info!(
        relay = feeder.name,
        ?after,
        "replica feed connected to a relay"
    );
    replica.set_feed(Some(source.clone()));
    let mut tree_checked = Instant::now();
    let mut counted = 0;
    loop {
        let next = tokio::time::timeout(RELAY_SILENCE, stream.next_frame()).await;
        replica.fed(stream.bytes_received() - counted);
        counted = stream.bytes_received();
        let (item, frame) = match next {
            Ok(Ok(Some(item))) => item,
            Ok(Ok(None)) => {
                tracing::info!(relay = feeder.name, "relay stream ended by the relay");
                return Next::Elsewhere;
            }
            Ok(Err(e)) => {
                tracing::info!(relay = feeder.name, error = %e, "relay stream failed");
                return Next::Elsewhere;
            }
            Err(_) => {
                tracing::warn!(
                    relay = feeder.name,
                    "relay stream silent; trying another feeder"
                );
                return Next::Elsewhere;
            }
        };
        if let WatchItem::Progress { revision, .. } = &item {
            let relay_revision = *revision;
            if beats_heard.lock().elapsed() > RELAYS_BEATS_SILENCE {
                return Next::BeatsLost;
            }
            let withholds = relay_revision > replica.revision();
            if replica.behind_core_since().is_some_and(|since| {
                since.elapsed() > RELAY_LAG_MAX || (withholds && since.elapsed() > RELAY_BEHIND_MAX)
            }) {
                tracing::warn!(
                    relay = feeder.name,
                    "the relay keeps the replica behind the core; trying another feeder"
                );
                return Next::Elsewhere;
            }
            if tree_checked.elapsed() >= TREE_CHECK {
                tree_checked = Instant::now();
                if usable(relays, failed_relays).as_ref() != Some(feeder) {
                    tracing::info!(relay = feeder.name, "the feed tree names another source");
                    return Next::Retree;
                }
            }
        }
        if let Some(next) = apply(replica, item, frame, after, &source) {
            return next;
        }
    }
}

/// The core has not answered this agent's beats on their own stream for this long: they
/// go on the core's watch stream again.
const RELAYS_BEATS_SILENCE: Duration = Duration::from_secs(4);

async fn open_relay(
    relays: &Relays,
    feeder: &Feeder,
    after: Option<corral_proto::Revision>,
) -> Result<WatchStream, String> {
    let connection = relays
        .transport
        .connect_relay(feeder.address, &feeder.name)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, receive) = connection.open_bi().await.map_err(|e| e.to_string())?;
    corral_proto::frame::write_frame(&mut send, &CoreRequest::Watch { after })
        .await
        .map_err(|e| e.to_string())?;
    // The watcher's side stays open in the stream (its end would end the stream) and
    // carries nothing: the core hears this agent's beats on their own stream. The
    // streams hold the connection.
    Ok(WatchStream::from_streams(send, receive))
}
