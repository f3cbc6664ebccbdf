//! The state machine as applied on this member, with the recent history that watch
//! streams are served from.
//!
//! ```text
//!  openraft apply ──► AppliedState::apply_entries ──┬─► StateMachine (write lock)
//!                                                   ├─► history (bounded ring of frames)
//!                                                   └─► broadcast ──► watch streams
//! ```
//!
//! Each history entry is the pre-encoded watch frame of one command that changed the
//! state, so a command is encoded once however many agents watch. A watcher subscribes
//! under the read lock, so between the history (or snapshot) it is given and the
//! broadcast it then follows there is neither a gap nor an overlap.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use corral_proto::{Command, CommandResponse, Revision, frame};
use openraft::{EntryPayload, RaftLogId};
use parking_lot::RwLock;
use tokio::sync::broadcast;

use crate::raft_types::{Entry, LogId, StoredMembership};
use crate::state::StateMachine;
use corral_net::rpc::WatchItem;

/// Most commands kept in the watch history.
pub const WATCH_HISTORY_ENTRIES_MAX: usize = 100_000;
/// Most bytes of encoded commands kept in the watch history.
pub const WATCH_HISTORY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Signals buffered per watcher before it is told it lagged and must resume.
pub const WATCH_BROADCAST_CAPACITY: usize = 16_384;

/// One applied command, encoded once as a watch frame.
#[derive(Debug)]
pub struct HistoryEntry {
    pub revision: Revision,
    pub frame: Bytes,
}

/// What the broadcast carries to watch streams.
#[derive(Clone, Debug)]
pub enum WatchSignal {
    Entry(Arc<HistoryEntry>),
    /// The state was replaced by a snapshot at this revision; watchers must restart.
    Reset {
        revision: Revision,
    },
}

/// The state of this member as applied, plus what openraft needs to know about it.
#[derive(Debug)]
pub struct Applied {
    pub machine: StateMachine,
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    history: VecDeque<Arc<HistoryEntry>>,
    history_bytes: usize,
}

/// How a new watcher starts.
pub enum WatchStart {
    /// Replay these entries (all after the requested revision), then follow the receiver.
    Entries(Vec<Arc<HistoryEntry>>),
    /// The requested revision is older than the history (or newer than the state, after a
    /// wiped member rejoined): start from this snapshot of the whole state.
    Snapshot { revision: Revision, bytes: Vec<u8> },
}

pub struct AppliedState {
    inner: RwLock<Applied>,
    signals: broadcast::Sender<WatchSignal>,
}

impl std::fmt::Debug for AppliedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppliedState").finish_non_exhaustive()
    }
}

impl AppliedState {
    pub fn new(
        machine: StateMachine,
        last_applied: Option<LogId>,
        last_membership: StoredMembership,
    ) -> Self {
        let (signals, _) = broadcast::channel(WATCH_BROADCAST_CAPACITY);
        Self {
            inner: RwLock::new(Applied {
                machine,
                last_applied,
                last_membership,
                history: VecDeque::new(),
                history_bytes: 0,
            }),
            signals,
        }
    }

    /// Runs `f` on the applied state under the read lock. Keep `f` short: apply waits.
    pub fn read<R>(&self, f: impl FnOnce(&Applied) -> R) -> R {
        f(&self.inner.read())
    }

    pub fn revision(&self) -> Revision {
        self.inner.read().machine.revision()
    }

    /// Applies committed entries in order and returns, per entry, one response per command.
    pub fn apply_entries(
        &self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Vec<Vec<CommandResponse>> {
        let mut applied = self.inner.write();
        let mut responses = Vec::new();
        for entry in entries {
            let log_id = *entry.get_log_id();
            applied.last_applied = Some(log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(Vec::new()),
                EntryPayload::Membership(membership) => {
                    applied.last_membership = StoredMembership::new(Some(log_id), membership);
                    responses.push(Vec::new());
                }
                EntryPayload::Normal(proposal) => {
                    let mut answers = Vec::with_capacity(proposal.commands.len());
                    for command in proposal.commands {
                        let (response, events) = applied.machine.apply(&command);
                        if !events.is_empty() {
                            let revision = applied.machine.revision();
                            let entry = applied.push_history(revision, command);
                            // Sent under the write lock, so signals are in history order.
                            // Nobody listening is fine: the history keeps the entry.
                            let _ = self.signals.send(WatchSignal::Entry(entry));
                        }
                        answers.push(response);
                    }
                    responses.push(answers);
                }
            }
        }
        responses
    }

    /// Replaces the whole state (snapshot install). Watchers are told to restart.
    pub fn replace(
        &self,
        machine: StateMachine,
        last_applied: Option<LogId>,
        last_membership: StoredMembership,
    ) {
        let mut applied = self.inner.write();
        let revision = machine.revision();
        applied.machine = machine;
        applied.last_applied = last_applied;
        applied.last_membership = last_membership;
        applied.history.clear();
        applied.history_bytes = 0;
        let _ = self.signals.send(WatchSignal::Reset { revision });
    }

    /// Starts a watcher that has seen everything up to `after` (None: nothing yet).
    pub fn watch_from(
        &self,
        after: Option<Revision>,
    ) -> (WatchStart, broadcast::Receiver<WatchSignal>) {
        let applied = self.inner.read();
        let receiver = self.signals.subscribe();
        let current = applied.machine.revision();
        let start = match after {
            Some(after) if after == current => WatchStart::Entries(Vec::new()),
            Some(after) if after < current && applied.history_covers(after) => {
                let skip = applied.history.partition_point(|e| e.revision <= after);
                WatchStart::Entries(applied.history.iter().skip(skip).cloned().collect())
            }
            _ => WatchStart::Snapshot {
                revision: current,
                bytes: applied.machine.to_snapshot_bytes(),
            },
        };
        (start, receiver)
    }

    /// The oldest revision a watcher can resume from without a snapshot.
    pub fn history_floor(&self) -> Revision {
        let applied = self.inner.read();
        applied
            .history
            .front()
            .map_or(applied.machine.revision(), |e| e.revision - 1)
    }
}

impl Applied {
    fn history_covers(&self, after: Revision) -> bool {
        self.history
            .front()
            .is_some_and(|first| first.revision <= after + 1)
    }

    fn push_history(&mut self, revision: Revision, command: Command) -> Arc<HistoryEntry> {
        let item = WatchItem::Entry { revision, command };
        // An applied command always fits in a frame: it was validated against
        // COMMAND_LEN_MAX, far below the frame limit.
        let frame =
            Bytes::from(frame::encode(&item).expect("an applied command fits in a watch frame"));
        self.history_bytes += frame.len();
        let entry = Arc::new(HistoryEntry { revision, frame });
        self.history.push_back(entry.clone());
        while self.history.len() > WATCH_HISTORY_ENTRIES_MAX
            || self.history_bytes > WATCH_HISTORY_BYTES_MAX
        {
            match self.history.pop_front() {
                Some(old) => self.history_bytes -= old.frame.len(),
                None => break,
            }
        }
        entry
    }
}
