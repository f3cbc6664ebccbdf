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

use bytes::Bytes;
use corral_net::watch_serve::{FrameHistory, WATCH_BROADCAST_CAPACITY, WatchSignal, WatchStart};
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

/// The state of this member as applied, plus what openraft needs to know about it.
#[derive(Debug)]
pub struct Applied {
    pub machine: StateMachine,
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    history: FrameHistory,
}

pub struct AppliedState {
    inner: RwLock<Applied>,
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
        Self {
            inner: RwLock::new(Applied {
                machine,
                last_applied,
                last_membership,
                history: FrameHistory::new(
                    WATCH_HISTORY_ENTRIES_MAX,
                    WATCH_HISTORY_BYTES_MAX,
                    WATCH_BROADCAST_CAPACITY,
                ),
            }),
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
                            // Under the write lock, so signals are in history order.
                            applied.push_history(revision, command);
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
        applied.history.reset(revision);
    }

    /// Starts a watcher that has seen everything up to `after` (None: nothing yet).
    pub fn watch_from(
        &self,
        after: Option<Revision>,
    ) -> (WatchStart, broadcast::Receiver<WatchSignal>) {
        let applied = self.inner.read();
        let current = applied.machine.revision();
        applied
            .history
            .watch_from(after, current, || applied.machine.to_snapshot_bytes())
    }

    /// The oldest revision a watcher can resume from without a snapshot.
    pub fn history_floor(&self) -> Revision {
        let applied = self.inner.read();
        applied.history.floor(applied.machine.revision())
    }
}

impl Applied {
    fn push_history(&mut self, revision: Revision, command: Command) {
        let item = WatchItem::Entry { revision, command };
        // An applied command always fits in a frame: it was validated against
        // COMMAND_LEN_MAX, far below the frame limit.
        let frame =
            Bytes::from(frame::encode(&item).expect("an applied command fits in a watch frame"));
        self.history.push(revision, frame);
    }
}
