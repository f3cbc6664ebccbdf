//! The agent's beats to the core: on the side of its watch stream when a core member
//! feeds it, and on a progress-only stream of their own ([`CoreRequest::Beats`]) when
//! another agent does. Either way the core hears the agent whatever gossip says, and each
//! progress item echoes the last beat the member had received, which dates how fresh the
//! replica is.
//!
//! [`CoreRequest::Beats`]: corral_net::rpc::CoreRequest::Beats

use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_net::client::CoreClient;
use corral_net::rpc::{BEAT_INTERVAL, WatchBeat, WatchItem};
use corral_proto::frame;
use quinn::SendStream;
use tokio::sync::watch;

use super::shared::SharedReplica;
use crate::gossip::NodeIdentity;

/// This agent's gossip identity, whose name and incarnation it beats so that the core
/// hears it (`corral_core::server::liveness`).
pub type BeatIdentity = watch::Receiver<NodeIdentity>;

/// A progress-only stream with no item for this long is given up.
const BEATS_SILENCE: Duration = Duration::from_secs(2);

const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// When the recent beats of a stream were sent, by sequence number.
#[derive(Debug, Default)]
pub(crate) struct BeatsSent {
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
    pub(crate) fn sent_at(&self, seq: u64) -> Option<Instant> {
        self.recent
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, at)| *at)
    }
}

pub(crate) type SharedBeatsSent = Arc<parking_lot::Mutex<BeatsSent>>;

/// Starts beating on `send` from a task of its own, which the returned guard aborts: a
/// read of the stream is never cut short for a beat. Their send times, in `sent`, date
/// the progress items that echo them.
pub(crate) fn start(
    send: SendStream,
    identity: BeatIdentity,
    sent: SharedBeatsSent,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(beat(send, identity, sent)))
}

/// Sends a beat every [`BEAT_INTERVAL`], and one at once when the identity changes, until
/// the stream fails; records when each went out.
async fn beat(mut send: SendStream, mut identity: BeatIdentity, sent: SharedBeatsSent) {
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

/// Aborts its task when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Beats to the core on progress-only streams while another agent feeds this one, moving
/// between members as the feed does; `heard` is when a member last answered.
pub(crate) fn spawn_core_beats(
    client: Arc<CoreClient>,
    replica: Arc<SharedReplica>,
    identity: BeatIdentity,
    heard: Arc<parking_lot::Mutex<Instant>>,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(core_beats(client, replica, identity, heard)))
}

async fn core_beats(
    client: Arc<CoreClient>,
    replica: Arc<SharedReplica>,
    identity: BeatIdentity,
    heard: Arc<parking_lot::Mutex<Instant>>,
) {
    let members = client.members().to_vec();
    if members.is_empty() {
        return;
    }
    let mut index = rand::random::<u32>() as usize;
    loop {
        // A follower where one is known: the leader has enough to do.
        let leader = client.leader();
        if members.len() > 1 && leader.as_ref() == Some(&members[index % members.len()]) {
            index += 1;
        }
        let address = &members[index % members.len()];
        if let Err(reason) = beat_on(&client, &replica, &identity, &heard, address).await {
            tracing::debug!(member = address, %reason, "beat stream ended");
        }
        index += 1;
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Beats on one member's progress-only stream until it fails.
async fn beat_on(
    client: &CoreClient,
    replica: &SharedReplica,
    identity: &BeatIdentity,
    heard: &parking_lot::Mutex<Instant>,
    address: &str,
) -> Result<(), String> {
    let mut stream = client.beats(address).await.map_err(|e| e.to_string())?;
    let sent = SharedBeatsSent::default();
    let _beats = stream
        .take_beat_sender()
        .map(|send| start(send, identity.clone(), sent.clone()));
    let mut leader_seen = Instant::now();
    loop {
        let item = match tokio::time::timeout(BEATS_SILENCE, stream.next()).await {
            Ok(Ok(Some(item))) => item,
            Ok(Ok(None)) => return Err("ended by the member".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("silent".into()),
        };
        let (revision, leader, term, beat) = match item {
            WatchItem::Progress {
                revision,
                leader,
                term,
                beat,
            } => (revision, leader, term, beat),
            WatchItem::Checkpoint { revision, checksum } => {
                replica.core_checkpoint(revision, checksum);
                continue;
            }
            _ => return Err("an entry or a snapshot on a beat stream".into()),
        };
        *heard.lock() = Instant::now();
        replica.heard_leader(leader, term);
        if leader.is_some() {
            leader_seen = Instant::now();
            if let Some(at) = beat.and_then(|seq| sent.lock().sent_at(seq)) {
                replica.core_at(revision, at);
            }
        } else if leader_seen.elapsed() > super::feed::FEED_LEADERLESS {
            return Err("the member has no leader".into());
        }
    }
}
