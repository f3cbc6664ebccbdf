//! The replica as the agent's tasks share it: reads under a read lock, a revision that
//! writers wait on, a signal for every applied batch, and the frames of the recent
//! entries that the agent relays to the agents it feeds ([`super::relay`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use corral_net::rpc::WatchItem;
use corral_net::watch_serve::{FrameHistory, WatchSignal, WatchSource, WatchStart};
use corral_proto::{Command, EventBatch, Revision, frame};
use corral_state::digest::Checkpoint;

use super::checkpoints::{CheckpointCheck, Checkpoints};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{broadcast, watch};

use super::replica::{ItemOutcome, Replica, ReplicaError};

/// Signals buffered for subscribers; one that falls further behind resumes from history.
/// The buffer is allocated in full and holds the batches it last carried until they are
/// overwritten, whatever the history keeps: it stays small.
pub const SIGNALS_BUFFER: usize = 1024;

/// Entries announced to the agents this one feeds before a slow one is told it lagged
/// (it then resumes from the relay history), for the same reason.
pub const RELAY_BROADCAST_CAPACITY: usize = 1024;

/// Most entries whose frames are kept for the agents this one feeds: enough for one that
/// lost its feeder to resume here without a snapshot.
pub const RELAY_HISTORY_ENTRIES_MAX: usize = 20_000;
/// Most bytes of frames kept for the agents this one feeds.
pub const RELAY_HISTORY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Bytes of frames kept whatever the state: an agent that lost its feeder comes back
/// within a second or two, a few thousand small writes.
pub const RELAY_HISTORY_BYTES_MIN: usize = 512 * 1024;

/// The relay history's budget for a state of `state_bytes`: a sixteenth of it, between
/// the bounds above, so that it stays in proportion to what every host holds.
pub fn relay_history_budget(state_bytes: u64) -> usize {
    usize::try_from(state_bytes / 16)
        .unwrap_or(usize::MAX)
        .clamp(RELAY_HISTORY_BYTES_MIN, RELAY_HISTORY_BYTES_MAX)
}

/// Revisions the core was heard at, waiting for the replica to reach them.
const PENDING_FRESH_MAX: usize = 64;

#[derive(Clone, Debug)]
pub enum ReplicaSignal {
    Applied(Arc<EventBatch>),
    /// The state was replaced by a snapshot at this revision.
    Replaced(Revision),
}

#[derive(Debug)]
pub struct SharedReplica {
    state: RwLock<Replica>,
    revision: watch::Sender<Revision>,
    signals: broadcast::Sender<ReplicaSignal>,
    last_heard: Mutex<Option<Instant>>,
    feed: Mutex<Option<String>>,
    /// Watch streams the feed has opened: a count that keeps rising says the feed keeps
    /// losing its stream.
    feed_streams: AtomicU64,
    /// Bytes read from the core's watch streams.
    fed_bytes: AtomicU64,
    /// The core's Raft term and leader, as the feed last heard them.
    term: AtomicU64,
    leader: AtomicU64,
    /// The frames of the entries the replica applied, in order, for relaying. Locked
    /// after `state`, never before.
    relay: Mutex<FrameHistory>,
    /// Watch streams this agent serves to the agents it feeds.
    relay_streams: AtomicU64,
    /// Revisions a core member had applied when it echoed a beat sent at the instant
    /// beside them (progress-only streams): the replica is as fresh as that beat once it
    /// reaches the revision.
    pending_fresh: Mutex<std::collections::VecDeque<(Revision, Instant)>>,
    checkpoints: Mutex<Checkpoints>,
    /// Set by a mismatch, taken by the feed, which then leaves the agent feeding it.
    mismatch_seen: std::sync::atomic::AtomicBool,
    /// Why the feed takes no relay for now, shown with the feed.
    relays_off: Mutex<Option<String>>,
}

impl Default for SharedReplica {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedReplica {
    pub fn new() -> Self {
        SharedReplica {
            state: RwLock::new(Replica::new()),
            revision: watch::channel(0).0,
            signals: broadcast::channel(SIGNALS_BUFFER).0,
            last_heard: Mutex::new(None),
            feed: Mutex::new(None),
            feed_streams: AtomicU64::new(0),
            fed_bytes: AtomicU64::new(0),
            term: AtomicU64::new(0),
            leader: AtomicU64::new(0),
            relay: Mutex::new(FrameHistory::new(
                RELAY_HISTORY_ENTRIES_MAX,
                RELAY_HISTORY_BYTES_MIN,
                RELAY_BROADCAST_CAPACITY,
            )),
            relay_streams: AtomicU64::new(0),
            pending_fresh: Mutex::new(std::collections::VecDeque::new()),
            checkpoints: Mutex::new(Checkpoints::default()),
            mismatch_seen: std::sync::atomic::AtomicBool::new(false),
            relays_off: Mutex::new(None),
        }
    }

    pub fn read<R>(&self, f: impl FnOnce(&Replica) -> R) -> R {
        f(&self.state.read())
    }

    pub fn revision(&self) -> Revision {
        *self.revision.borrow()
    }

    /// How old the replica's view of the core may be: the time since the sending of the
    /// last beat that a progress item from a core member echoed (None: none yet).
    pub fn age(&self) -> Option<Duration> {
        self.last_heard.lock().map(|at| at.elapsed())
    }

    pub fn age_ms(&self) -> Option<u64> {
        self.age().map(|age| age.as_millis() as u64)
    }

    /// The core's Raft term as last heard (0: not yet).
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Relaxed)
    }

    /// The core's leader as last heard (None: none known).
    pub fn leader(&self) -> Option<u64> {
        Some(self.leader.load(Ordering::Relaxed)).filter(|id| *id != 0)
    }

    pub(crate) fn heard_leader(&self, leader: Option<u64>, term: u64) {
        self.term.fetch_max(term, Ordering::Relaxed);
        self.leader.store(leader.unwrap_or(0), Ordering::Relaxed);
    }

    /// What feeds the replica: a core member's address, or `relay NAME`; with why relays
    /// are not used, when they are not after a checkpoint mismatch.
    pub fn feed(&self) -> Option<String> {
        let feed = self.feed.lock().clone()?;
        Some(match &*self.relays_off.lock() {
            Some(why) => format!("{feed} ({why})"),
            None => feed,
        })
    }

    pub(crate) fn set_relays_off(&self, why: Option<String>) {
        *self.relays_off.lock() = why;
    }

    /// The core's checkpoint at `revision`: compared with the replica's own now, or once
    /// the replica reaches that revision.
    pub(crate) fn core_checkpoint(
        &self,
        revision: Revision,
        checksum: Checkpoint,
    ) -> CheckpointCheck {
        let check = self
            .checkpoints
            .lock()
            .core(revision, checksum, self.revision());
        self.checked(revision, check);
        check
    }

    /// Takes the replica's new checkpoint, if it has one, and compares it with the core's
    /// for the same revision if that came first. Called under the state's lock.
    fn own_checkpoint(&self, state: &Replica) {
        if let Some((revision, own)) = state.machine().checkpoint() {
            let check = self.checkpoints.lock().own(revision, own);
            if let Some(check) = check {
                self.checked(revision, check);
            }
        }
    }

    fn checked(&self, revision: Revision, check: CheckpointCheck) {
        if check == CheckpointCheck::Mismatched {
            self.mismatch_seen.store(true, Ordering::Relaxed);
            tracing::error!(
                revision,
                feed = ?self.feed.lock().clone(),
                "the replica's state differs from the core's at a checkpoint: it starts over from the core"
            );
        }
    }

    /// Whether a checkpoint mismatch was found since the last call.
    pub(crate) fn take_mismatch(&self) -> bool {
        self.mismatch_seen.swap(false, Ordering::Relaxed)
    }

    /// Checkpoints of the replica that matched the core's, since the agent started.
    pub fn checkpoints_matched(&self) -> u64 {
        self.checkpoints.lock().matched
    }

    /// Checkpoints of the replica that differed from the core's, since the agent started.
    pub fn checkpoint_mismatches(&self) -> u64 {
        self.checkpoints.lock().mismatched
    }

    /// Watch streams the feed has opened to core members, since the agent started.
    pub fn feed_streams(&self) -> u64 {
        self.feed_streams.load(Ordering::Relaxed)
    }

    pub(crate) fn set_feed(&self, member: Option<String>) {
        if member.is_some() {
            self.feed_streams.fetch_add(1, Ordering::Relaxed);
        }
        *self.feed.lock() = member;
    }

    /// Counts `bytes` more read from the core's watch streams.
    pub(crate) fn fed(&self, bytes: u64) {
        self.fed_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes read from the core's watch streams since the agent started: a start from the
    /// replica saved on disk reads only what changed since.
    pub fn fed_bytes(&self) -> u64 {
        self.fed_bytes.load(Ordering::Relaxed)
    }

    /// Starts from a state saved on disk, as if a snapshot at its revision had arrived;
    /// the feed resumes after it.
    pub fn install_saved(
        &self,
        machine: corral_state::StateMachine,
        history: Vec<corral_proto::EventBatch>,
    ) {
        let revision = machine.revision();
        let mut state = self.state.write();
        state.install_saved(machine, history);
        self.relay.lock().reset(revision);
        self.revision.send_replace(revision);
    }

    /// Drops the state (one that cannot belong to the core): subscribers are reset and
    /// the feed's next item makes it fetch a snapshot.
    pub fn start_over(&self) {
        let mut state = self.state.write();
        *state = Replica::new();
        self.relay.lock().reset(0);
        self.checkpoints.lock().replica_replaced();
        let _ = self.signals.send(ReplicaSignal::Replaced(0));
        self.revision.send_replace(0);
    }

    /// The core was heard as of `at`: what the replica holds is no older than that.
    pub(crate) fn heard_at(&self, at: Instant) {
        let mut last = self.last_heard.lock();
        if last.is_none_or(|last| last < at) {
            *last = Some(at);
        }
    }

    /// Subscribes to applied batches; call before reading the history to miss nothing.
    pub fn subscribe(&self) -> broadcast::Receiver<ReplicaSignal> {
        self.signals.subscribe()
    }

    pub fn revisions(&self) -> watch::Receiver<Revision> {
        self.revision.subscribe()
    }

    /// Applies one watch item and tells waiters and subscribers; `frame` is the frame the
    /// item came in, kept for relaying when it is an entry (None: encoded here if needed).
    pub(crate) fn handle_item(
        &self,
        item: WatchItem,
        frame: Option<Bytes>,
    ) -> Result<ItemOutcome, ReplicaError> {
        let mut state = self.state.write();
        let entry_frame = match &item {
            WatchItem::Entry { revision, command } => Some((
                *revision,
                frame.unwrap_or_else(|| entry_frame(*revision, command)),
            )),
            _ => None,
        };
        let outcome = state.handle_item(item);
        match &outcome {
            Ok(ItemOutcome::Applied(batch)) => {
                // Under the write lock, so signals go out in revision order.
                if let Some((revision, frame)) = entry_frame {
                    self.relay_push(&state, revision, frame);
                }
                let _ = self.signals.send(ReplicaSignal::Applied(batch.clone()));
                self.revision.send_replace(batch.revision);
                self.reached(batch.revision);
                self.own_checkpoint(&state);
            }
            Ok(ItemOutcome::Replaced(revision)) => {
                self.relay.lock().reset(*revision);
                let _ = self.signals.send(ReplicaSignal::Replaced(*revision));
                self.revision.send_replace(*revision);
                self.reached(*revision);
                drop(state);
                release_freed_memory();
            }
            Ok(ItemOutcome::Nothing | ItemOutcome::Progress(_)) => {}
            Err(ReplicaError::Diverged { .. }) => {
                self.relay.lock().reset(0);
                let _ = self.signals.send(ReplicaSignal::Replaced(0));
                self.revision.send_replace(0);
            }
            Err(_) => {}
        }
        outcome
    }

    /// A core member had applied `revision` when it echoed a beat sent at `at`: once the
    /// replica holds that revision, it is as fresh as that beat.
    pub(crate) fn core_at(&self, revision: Revision, at: Instant) {
        if self.revision() >= revision {
            self.heard_at(at);
            return;
        }
        let mut pending = self.pending_fresh.lock();
        if pending.len() == PENDING_FRESH_MAX {
            pending.pop_front();
        }
        pending.push_back((revision, at));
    }

    /// Since when the replica has been behind a revision the core was heard at (None: it
    /// is not): a feeder that keeps it behind for long is withholding entries.
    pub(crate) fn behind_core_since(&self) -> Option<Instant> {
        self.pending_fresh.lock().front().map(|(_, at)| *at)
    }

    /// Forgets the revisions the core was heard at (the replica follows a core member's
    /// stream again, whose own progress dates it).
    pub(crate) fn forget_core_progress(&self) {
        self.pending_fresh.lock().clear();
    }

    /// The replica reached `revision`: the beats of revisions up to it date it.
    fn reached(&self, revision: Revision) {
        let mut pending = self.pending_fresh.lock();
        let mut newest = None;
        while let Some((_, at)) = pending.front().filter(|(r, _)| *r <= revision) {
            newest = Some(*at);
            pending.pop_front();
        }
        drop(pending);
        if let Some(at) = newest {
            self.heard_at(at);
        }
    }

    /// Watch streams this agent serves now to the agents it feeds.
    pub fn relay_streams(&self) -> u64 {
        self.relay_streams.load(Ordering::Relaxed)
    }

    pub(crate) fn relay_stream_started(&self) -> RelayStreamGuard<'_> {
        self.relay_streams.fetch_add(1, Ordering::Relaxed);
        RelayStreamGuard(self)
    }

    /// Applies the agent's own write when the replica is one revision behind it (see
    /// [`Replica::apply_own`]), and tells waiters and subscribers as for a stream entry.
    pub(crate) fn apply_own(&self, revision: Revision, command: &Command) {
        let mut state = self.state.write();
        match state.apply_own(revision, command) {
            Ok(Some(batch)) => {
                self.relay_push(&state, revision, entry_frame(revision, command));
                let _ = self.signals.send(ReplicaSignal::Applied(batch));
                self.revision.send_replace(revision);
                self.reached(revision);
                self.own_checkpoint(&state);
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(%error, "the replica diverged applying this agent's own write; it starts over from a snapshot");
                self.relay.lock().reset(0);
                let _ = self.signals.send(ReplicaSignal::Replaced(0));
                self.revision.send_replace(0);
            }
        }
    }

    /// Keeps an applied entry's frame for the agents this one feeds, within a budget in
    /// proportion to the state.
    fn relay_push(&self, state: &Replica, revision: Revision, frame: Bytes) {
        let mut relay = self.relay.lock();
        relay.set_bytes_max(relay_history_budget(state.machine().quota_use().bytes));
        relay.push(revision, frame);
    }

    pub(crate) fn stream_ended(&self) {
        self.state.write().stream_ended();
    }

    /// Waits until the replica reached `revision`, for at most `timeout`. Returns the
    /// replica's revision then.
    pub async fn wait_for(
        &self,
        revision: Revision,
        timeout: Duration,
    ) -> Result<Revision, Revision> {
        let mut revisions = self.revision.subscribe();
        let wait = revisions.wait_for(|current| *current >= revision);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(current)) => Ok(*current),
            _ => Err(self.revision()),
        }
    }
}

/// One relayed stream, counted while it lasts.
#[derive(Debug)]
pub(crate) struct RelayStreamGuard<'a>(&'a SharedReplica);

impl Drop for RelayStreamGuard<'_> {
    fn drop(&mut self) {
        self.0.relay_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The watch frame of an entry, as a core member encodes it (the encoding is
/// deterministic: the same entry gives the same bytes everywhere).
fn entry_frame(revision: Revision, command: &Command) -> Bytes {
    let item = WatchItem::Entry {
        revision,
        command: command.clone(),
    };
    // An applied command always fits in a frame: the core validated it against
    // COMMAND_LEN_MAX, far below the frame limit.
    Bytes::from(frame::encode(&item).expect("an applied command fits in a watch frame"))
}

/// The agents this one feeds are served what the replica applied, as a core member
/// serves its watchers. A replica with no state yet serves nothing.
impl WatchSource for SharedReplica {
    fn watch_from(
        &self,
        after: Option<Revision>,
    ) -> (WatchStart, broadcast::Receiver<WatchSignal>) {
        let state = self.state.read();
        let relay = self.relay.lock();
        relay.watch_from(after, state.revision(), || {
            state.machine().to_snapshot_bytes()
        })
    }

    /// How far the replica is; the leader and term as this agent last heard them.
    fn progress(&self, beat: Option<u64>) -> WatchItem {
        WatchItem::Progress {
            revision: self.revision(),
            leader: self.leader(),
            term: self.term(),
            beat,
        }
    }
}

/// Hands memory freed by a snapshot install (the encoded snapshot, the replaced state)
/// back to the system. glibc keeps freed blocks in per-thread arenas otherwise, which
/// nearly doubled the resident size of an agent that loaded a large snapshot.
#[allow(unsafe_code)]
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
