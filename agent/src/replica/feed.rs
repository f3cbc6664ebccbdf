//! The task that keeps the replica fed from the core's watch streams.
//!
//! ```text
//!  core member i ──watch(after = replica revision)──► SharedReplica::handle_item
//!       ▲                                                   │ error / silence / no leader
//!       └────────────── next member, resume from revision ◄─┘
//! ```
//!
//! A first connection, or a resume below the member's history, starts from a snapshot
//! (the member decides). The stream moves to another member when its member fails, goes
//! quiet, or has no leader (it may sit in a minority and hold stale state). The agent beats
//! on its side of the stream, so that the core hears it whatever gossip says.
//!
//! Agents feed from followers where they can: the leader already sends every write to
//! every follower and answers every writer, so each stream it also serves costs it one
//! more packet per commit. A feed passes over the member its core client knows as leader,
//! and leaves one that became leader, unless a failure brought it there (then it stays
//! until that stream ends, so that a core whose followers are down is still followed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_net::client::CoreClient;
use corral_net::rpc::BEAT_INTERVAL;
use corral_net::rpc::{WatchBeat, WatchItem};
use corral_proto::frame;
use quinn::SendStream;
use tokio::sync::watch;

use super::replica::ReplicaError;
use super::shared::SharedReplica;
use crate::gossip::NodeIdentity;

/// A stream with no item for this long is given up (members send progress every 250 ms).
pub const FEED_SILENCE: Duration = Duration::from_secs(2);

/// A member that reports no leader for this long is left for another.
pub const FEED_LEADERLESS: Duration = Duration::from_secs(2);

const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A feed leaves a member that became leader once it has followed it this long.
pub const LEAVE_LEADER_AFTER: Duration = Duration::from_secs(1);

/// A stream that lasted this long before it failed does not count as a recent failure.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// What the feed does after a stream ends.
enum Next {
    /// Reconnect to the same member.
    Same,
    /// Move to another member, after a pause.
    Elsewhere,
    /// The member leads: move to a follower at once.
    OffTheLeader,
}

/// This agent's gossip identity, whose name and incarnation its feed beats on the watch
/// stream so that the core hears it (`corral_core::server::liveness`).
pub type BeatIdentity = watch::Receiver<NodeIdentity>;

pub async fn run(
    client: Arc<CoreClient>,
    replica: Arc<SharedReplica>,
    identity: BeatIdentity,
    mut shutdown: watch::Receiver<bool>,
) {
    let members = client.members().to_vec();
    if members.is_empty() {
        tracing::error!("no core member configured: the replica stays empty");
        return;
    }
    let mut index = rand::random::<u32>() as usize % members.len();
    // False after a stream failed: the feed then takes members in turn, the leader too.
    let mut healthy = true;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let leader = client.leader();
        if healthy && members.len() > 1 && leader.as_ref() == Some(&members[index % members.len()])
        {
            index += 1;
        }
        let address = members[index % members.len()].clone();
        let started = Instant::now();
        let next = tokio::select! {
            next = follow(&client, &replica, &identity, &address, healthy) => next,
            _ = shutdown.changed() => return,
        };
        replica.stream_ended();
        replica.set_feed(None);
        match next {
            Next::Same => {}
            Next::OffTheLeader => {
                tracing::info!(
                    member = address,
                    "replica feed leaves the leader for a follower"
                );
                // Any other member, at random, so that agents spread over the followers.
                index += 1 + rand::random::<u32>() as usize % (members.len() - 1);
            }
            Next::Elsewhere => {
                healthy = started.elapsed() >= HEALTHY_AFTER;
                index += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Follows one member's stream until it ends, and says where to go next: to the same
/// member after a gap the member itself is fine with, elsewhere after a failure, or off
/// the member once it is known to lead (when `leave_leader`).
async fn follow(
    client: &CoreClient,
    replica: &SharedReplica,
    identity: &BeatIdentity,
    address: &str,
    leave_leader: bool,
) -> Next {
    let after = replica.read(|r| r.resume_point());
    let mut stream = match client.watch(address, after).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(member = address, error = %e, "watch stream not opened");
            return Next::Elsewhere;
        }
    };
    // Beats go out from their own task, which the stream's end aborts: a read of the
    // stream is never cut short for one. Their send times date the progress items that
    // echo them.
    let sent = Arc::new(parking_lot::Mutex::new(BeatsSent::default()));
    let _beats = stream
        .take_beat_sender()
        .map(|send| AbortOnDrop(tokio::spawn(beat(send, identity.clone(), sent.clone()))));
    tracing::info!(member = address, ?after, "replica feed connected");
    replica.set_feed(Some(address.to_string()));
    let mut leader_seen = Instant::now();
    let connected = Instant::now();
    let others = client.members().len() > 1;
    let mut counted = 0;
    loop {
        let next = tokio::time::timeout(FEED_SILENCE, stream.next()).await;
        replica.fed(stream.bytes_received() - counted);
        counted = stream.bytes_received();
        let item = match next {
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
        if leave_leader
            && others
            && matches!(item, WatchItem::Progress { .. })
            && connected.elapsed() >= LEAVE_LEADER_AFTER
            && client.leader().as_deref() == Some(address)
        {
            return Next::OffTheLeader;
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
        match replica.handle_item(item) {
            Ok(_) if after.is_some() && replica.read(|r| r.resume_point()).is_none() => {
                tracing::warn!(
                    member = address,
                    "the replica started over; fetching the state"
                );
                return Next::Same;
            }
            Ok(_) => {}
            Err(e @ (ReplicaError::Gap { .. } | ReplicaError::NoBase(_))) => {
                tracing::warn!(member = address, error = %e, "replica feed resumes");
                return Next::Same;
            }
            Err(e) => {
                tracing::error!(member = address, error = %e, "replica feed refused an item");
                return Next::Elsewhere;
            }
        }
    }
}

/// When the recent beats of a stream were sent, by sequence number.
#[derive(Debug, Default)]
struct BeatsSent {
    recent: std::collections::VecDeque<(u64, Instant)>,
    next: u64,
}

/// Beats whose send times are kept: a progress item echoes a beat a few intervals old at
/// most, unless the stream stalled for longer than these cover.
const BEATS_KEPT: usize = 64;

impl BeatsSent {
    fn record(&mut self, at: Instant) -> u64 {
        self.next += 1;
        if self.recent.len() == BEATS_KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back((self.next, at));
        self.next
    }

    /// When beat `seq` was sent; None for a beat older than those kept (its echo then
    /// dates nothing: claiming a later time would claim a fresher view than there is).
    fn sent_at(&self, seq: u64) -> Option<Instant> {
        self.recent
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, at)| *at)
    }
}

/// Sends a beat every [`BEAT_INTERVAL`], and one at once when the identity changes, until
/// the stream fails; records when each went out.
async fn beat(
    mut send: SendStream,
    mut identity: BeatIdentity,
    sent: Arc<parking_lot::Mutex<BeatsSent>>,
) {
    let mut tick = tokio::time::interval(BEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // False once the identity's sender is gone (the agent is stopping): beats go on, as
    // they were, on the interval alone.
    let mut follows = true;
    loop {
        let beat = {
            let identity = identity.borrow_and_update();
            WatchBeat {
                name: identity.name.clone(),
                incarnation: identity.incarnation,
                seq: sent.lock().record(Instant::now()),
            }
        };
        if frame::write_frame(&mut send, &beat).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tick.tick() => {}
            changed = identity.changed(), if follows => follows = changed.is_ok(),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
