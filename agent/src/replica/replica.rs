//! The agent's copy of the core's state, as a plain value fed by watch items.
//!
//! ```text
//!  WatchItem ──► Replica::handle_item ──► applied EventBatch (kept in a bounded history)
//!                     │ checks: next revision exactly, snapshot never older, same result
//!                     └──► ReplicaError: the feed reconnects from `revision()` (or anew)
//! ```
//!
//! Invariant: the replica's revision only grows and every revision between its first
//! snapshot and now was applied exactly once, in order. A gap, a repeat or a divergence
//! is an error that the feed repairs by resuming from the replica's revision; it is never
//! served.
//!
//! The agent's own writes may run ahead of the stream: when the core answers that a
//! command changed the state at revision R and the replica is at R − 1, the replica
//! applies that command at once ([`Replica::apply_own`]), as the stream would, so the
//! writer reads its write without waiting for the stream. The stream's copy of R is then
//! checked against it (the same command, or the replica starts over) and not applied
//! twice.

use std::collections::VecDeque;
use std::sync::Arc;

use corral_net::rpc::WatchItem;
use corral_proto::{Command, EventBatch, KeyValue, Revision};
use corral_state::StateMachine;

/// Largest snapshot the replica assembles, so a hostile or broken member cannot make it
/// allocate without bound.
pub const SNAPSHOT_LEN_MAX: usize = 2 * 1024 * 1024 * 1024;

/// Most event batches kept for subscribers resuming from a past revision.
pub const HISTORY_BATCHES_MAX: usize = 50_000;

/// Most bytes of memory the kept event batches take, however large the state.
pub const HISTORY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Bytes of history an agent may keep whatever its state: a few thousand small writes,
/// enough for a subscriber that reconnects to resume without a reset.
pub const HISTORY_BYTES_MIN: usize = 1024 * 1024;

/// The history's budget for a state of `state_bytes` (keys and values): an eighth of
/// it, between [`HISTORY_BYTES_MIN`] and [`HISTORY_BYTES_MAX`]. Every host holds the
/// history beside the state, so it stays in proportion to it; a subscriber whose
/// revision is older than the history gets the current state instead (a reset), and an
/// etcd watcher a "compacted" answer, as from etcd after a compaction.
pub fn history_budget(state_bytes: u64) -> usize {
    usize::try_from(state_bytes / 8)
        .unwrap_or(usize::MAX)
        .clamp(HISTORY_BYTES_MIN, HISTORY_BYTES_MAX)
}

/// Most own writes applied ahead of the stream; past it, writes wait for the stream.
pub const AHEAD_MAX: usize = 1024;

/// A snapshot arriving in chunks, kept as they came: joined once, at its exact length,
/// when the last one is in (a buffer grown chunk by chunk would hold up to twice the
/// snapshot while it decodes).
#[derive(Debug)]
struct PendingSnapshot {
    revision: Revision,
    chunks: Vec<Vec<u8>>,
    len: usize,
}

impl PendingSnapshot {
    fn joined(self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.len);
        for chunk in self.chunks {
            bytes.extend_from_slice(&chunk);
        }
        bytes
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplicaError {
    /// An entry arrived out of order. Nothing was applied.
    #[error("expected revision {expected}, got {got}")]
    Gap { expected: Revision, got: Revision },
    /// A snapshot older than the replica: taking it would move reads backwards.
    #[error("snapshot at {snapshot} is older than the replica at {replica}")]
    OldSnapshot {
        snapshot: Revision,
        replica: Revision,
    },
    /// Chunks of different snapshots mixed, or an entry inside a snapshot.
    #[error("snapshot stream broken: {0}")]
    BrokenSnapshot(String),
    #[error("snapshot larger than {SNAPSHOT_LEN_MAX} bytes")]
    SnapshotTooLarge,
    /// Applying the entry gave another revision than the core's: the replica cannot be
    /// trusted any more and must start over from a snapshot.
    #[error("replica diverged: applying revision {expected} gave {got}")]
    Diverged { expected: Revision, got: Revision },
    /// An entry arrived before any snapshot or base.
    #[error("entry {0} before the replica has a base")]
    NoBase(Revision),
}

/// What one item did.
#[derive(Debug, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Nothing visible changed (a snapshot chunk, or a progress note).
    Nothing,
    Applied(Arc<EventBatch>),
    /// The whole state was replaced by a snapshot at this revision; subscribers whose
    /// position is older must be reset.
    Replaced(Revision),
    /// The member is at `revision`.
    Progress(Revision),
}

#[derive(Debug, Default)]
pub struct Replica {
    machine: StateMachine,
    /// False until the first snapshot (or the first entry at revision 1).
    has_base: bool,
    pending_snapshot: Option<PendingSnapshot>,
    history: VecDeque<Arc<EventBatch>>,
    history_bytes: usize,
    /// Own writes applied before the stream delivered them, oldest first.
    ahead: VecDeque<(Revision, Command)>,
}

/// Memory a kept batch takes: the batch behind its `Arc`, its events, and the strings
/// and values they own (other events count a typical size for what they own).
fn batch_bytes(batch: &EventBatch) -> usize {
    use corral_proto::Event;
    const ARC_HEADER: usize = 2 * std::mem::size_of::<usize>();
    const SLOT: usize = std::mem::size_of::<Arc<EventBatch>>();
    const OTHER_OWNED: usize = 64;
    let owned: usize = batch
        .events
        .iter()
        .map(|event| match event {
            Event::KeyPut(kv) => kv.key.capacity() + kv.value.capacity(),
            Event::KeyDeleted { key } => key.capacity(),
            _ => OTHER_OWNED,
        })
        .sum();
    ARC_HEADER
        + SLOT
        + std::mem::size_of::<EventBatch>()
        + batch.events.capacity() * std::mem::size_of::<corral_proto::Event>()
        + owned
}

impl Replica {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn machine(&self) -> &StateMachine {
        &self.machine
    }

    pub fn revision(&self) -> Revision {
        self.machine.revision()
    }

    /// Where a feed resumes from: None until the replica has a base.
    pub fn resume_point(&self) -> Option<Revision> {
        self.has_base.then(|| self.revision())
    }

    /// The oldest revision a subscriber may resume after without a reset.
    pub fn history_floor(&self) -> Revision {
        match self.history.front() {
            Some(first) => first.revision - 1,
            None => self.revision(),
        }
    }

    /// The batches after `after`, or None when the history no longer reaches back there.
    pub fn history_after(&self, after: Revision) -> Option<Vec<Arc<EventBatch>>> {
        if after < self.history_floor() {
            return None;
        }
        let start = self.history.partition_point(|b| b.revision <= after);
        Some(self.history.range(start..).cloned().collect())
    }

    /// Whether any key of `range` changed after revision `after`: None when the history no
    /// longer reaches back there.
    pub fn range_changed_since(
        &self,
        after: Revision,
        range: &corral_proto::range::KeyRange,
    ) -> Option<bool> {
        if after < self.history_floor() {
            return None;
        }
        let start = self.history.partition_point(|b| b.revision <= after);
        Some(self.history.range(start..).any(|batch| {
            batch
                .events
                .iter()
                .filter_map(corral_proto::Event::key)
                .any(|key| range.contains(key.as_bytes()))
        }))
    }

    /// The value `key` had just before revision `revision`, as far as the history shows:
    /// Some(None) when it did not exist, None when the history does not tell.
    pub fn value_before(&self, revision: Revision, key: &str) -> Option<Option<KeyValue>> {
        let end = self.history.partition_point(|b| b.revision < revision);
        for batch in self.history.range(..end).rev() {
            for event in batch.events.iter().rev() {
                match event {
                    corral_proto::Event::KeyPut(kv) if kv.key == key => {
                        return Some(Some(kv.clone()));
                    }
                    corral_proto::Event::KeyDeleted { key: deleted } if deleted == key => {
                        return Some(None);
                    }
                    _ => {}
                }
            }
        }
        None
    }

    /// Forgets any half-received snapshot (the stream it came on ended). A new stream
    /// resumes after the replica's revision, own writes included, so it will not deliver
    /// those again.
    pub fn stream_ended(&mut self) {
        self.pending_snapshot = None;
        self.ahead.clear();
    }

    /// Applies the agent's own write, which the core answered changed the state at
    /// `revision`, if the replica is exactly one revision behind it. Returns the applied
    /// batch, or None when it must wait for the stream instead.
    pub fn apply_own(
        &mut self,
        revision: Revision,
        command: &Command,
    ) -> Result<Option<Arc<EventBatch>>, ReplicaError> {
        if !self.has_base
            || self.pending_snapshot.is_some()
            || revision != self.revision() + 1
            || self.ahead.len() >= AHEAD_MAX
        {
            return Ok(None);
        }
        let batch = self.apply_entry(revision, command)?;
        self.ahead.push_back((revision, command.clone()));
        Ok(Some(batch))
    }

    /// Applies `command` as revision `revision`, which must be the next one.
    fn apply_entry(
        &mut self,
        revision: Revision,
        command: &Command,
    ) -> Result<Arc<EventBatch>, ReplicaError> {
        let (_, events) = self.machine.apply(command);
        let got = self.machine.revision();
        if got != revision {
            // Start over: drop everything, the feed asks for a snapshot.
            *self = Replica::new();
            return Err(ReplicaError::Diverged {
                expected: revision,
                got,
            });
        }
        self.has_base = true;
        let batch = Arc::new(EventBatch { revision, events });
        self.remember(batch.clone());
        Ok(batch)
    }

    pub fn handle_item(&mut self, item: WatchItem) -> Result<ItemOutcome, ReplicaError> {
        match item {
            WatchItem::SnapshotChunk {
                revision,
                bytes,
                last,
            } => self.handle_chunk(revision, bytes, last),
            WatchItem::Entry { revision, command } => {
                if self.pending_snapshot.is_some() {
                    self.pending_snapshot = None;
                    return Err(ReplicaError::BrokenSnapshot(format!(
                        "entry {revision} inside a snapshot"
                    )));
                }
                if let Some((own, own_command)) = self.ahead.front() {
                    // The stream catching up with own writes: each must be the same.
                    if revision == *own {
                        if command != *own_command {
                            *self = Replica::new();
                            return Err(ReplicaError::Diverged {
                                expected: revision,
                                got: revision,
                            });
                        }
                        self.ahead.pop_front();
                        return Ok(ItemOutcome::Nothing);
                    }
                    return Err(ReplicaError::Gap {
                        expected: *own,
                        got: revision,
                    });
                }
                let expected = self.revision() + 1;
                if !self.has_base && revision != 1 {
                    return Err(ReplicaError::NoBase(revision));
                }
                if revision != expected {
                    return Err(ReplicaError::Gap {
                        expected,
                        got: revision,
                    });
                }
                Ok(ItemOutcome::Applied(self.apply_entry(revision, &command)?))
            }
            WatchItem::Progress { revision, .. } => Ok(ItemOutcome::Progress(revision)),
            // Checked against the core's own, on the core's stream ([`super::shared`]);
            // one on an entry stream (a relay's) proves nothing.
            WatchItem::Checkpoint { .. } => Ok(ItemOutcome::Nothing),
        }
    }

    fn handle_chunk(
        &mut self,
        revision: Revision,
        bytes: Vec<u8>,
        last: bool,
    ) -> Result<ItemOutcome, ReplicaError> {
        if self.has_base && revision < self.revision() {
            self.pending_snapshot = None;
            return Err(ReplicaError::OldSnapshot {
                snapshot: revision,
                replica: self.revision(),
            });
        }
        let pending = self
            .pending_snapshot
            .get_or_insert_with(|| PendingSnapshot {
                revision,
                chunks: Vec::new(),
                len: 0,
            });
        if pending.revision != revision {
            self.pending_snapshot = None;
            return Err(ReplicaError::BrokenSnapshot(
                "chunks of two snapshots".into(),
            ));
        }
        if pending.len + bytes.len() > SNAPSHOT_LEN_MAX {
            self.pending_snapshot = None;
            return Err(ReplicaError::SnapshotTooLarge);
        }
        pending.len += bytes.len();
        pending.chunks.push(bytes);
        if !last {
            return Ok(ItemOutcome::Nothing);
        }
        let buffer = self.pending_snapshot.take().expect("set above").joined();
        let machine = StateMachine::from_snapshot_bytes(&buffer)
            .map_err(|e| ReplicaError::BrokenSnapshot(e.to_string()))?;
        if machine.revision() != revision {
            return Err(ReplicaError::BrokenSnapshot(format!(
                "snapshot announced revision {revision} but holds {}",
                machine.revision()
            )));
        }
        self.machine = machine;
        self.has_base = true;
        // The history no longer connects to the new state.
        self.history.clear();
        self.history_bytes = 0;
        // The snapshot is no older than the replica, so it holds every own write too.
        self.ahead.clear();
        Ok(ItemOutcome::Replaced(revision))
    }

    /// Takes a state saved on disk as its base, with the history of batches that led to
    /// it (so that subscribers resume across the restart without a reset): the feed
    /// resumes after its revision. Batches that do not end at the state's revision, in
    /// order and without a hole, are dropped.
    pub fn install_saved(&mut self, machine: StateMachine, history: Vec<EventBatch>) {
        let revision = machine.revision();
        let joined = history
            .windows(2)
            .all(|pair| pair[1].revision == pair[0].revision + 1)
            && history.last().is_none_or(|last| last.revision == revision);
        *self = Replica {
            machine,
            has_base: true,
            ..Replica::default()
        };
        if joined {
            for batch in history {
                self.remember(Arc::new(batch));
            }
        }
    }

    /// The batches this replica keeps for subscribers to resume from, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &Arc<EventBatch>> {
        self.history.iter()
    }

    fn remember(&mut self, batch: Arc<EventBatch>) {
        self.history_bytes += batch_bytes(&batch);
        self.history.push_back(batch);
        let budget = history_budget(self.machine.quota_use().bytes);
        while self.history.len() > HISTORY_BATCHES_MAX || self.history_bytes > budget {
            match self.history.pop_front() {
                Some(old) => {
                    self.history_bytes = self.history_bytes.saturating_sub(batch_bytes(&old))
                }
                None => break,
            }
        }
    }

    /// Memory the kept history takes (see [`history_budget`]).
    pub fn history_bytes(&self) -> usize {
        self.history_bytes
    }
}

#[cfg(test)]
#[path = "replica_tests.rs"]
mod tests;
