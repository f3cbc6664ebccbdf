//! The in-memory index of the log: every entry after the purge pointer, where it lies on
//! disk, and the most recent entries themselves (the cache).

use std::collections::BTreeMap;
use std::fmt::Debug;

use crate::raft_types::{Entry, LogId};

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Pointers {
    pub(super) last_log_id: Option<LogId>,
    pub(super) last_purged: Option<LogId>,
}

/// Where a record's frame lies: segment, offset, length.
#[derive(Debug, Clone, Copy)]
pub(super) struct Location {
    pub(super) seq: u64,
    pub(super) offset: u64,
    pub(super) len: u32,
}

/// One entry of the index.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) log_id: LogId,
    /// The entry while it is cached; always present until `at` is known.
    pub(super) entry: Option<Entry>,
    pub(super) at: Option<Location>,
    /// Its encoded length, what it counts against the cache.
    pub(super) bytes: usize,
}

/// Every entry after the purge pointer, by index, and what of them is cached.
#[derive(Debug, Default)]
pub(super) struct Index {
    pub(super) slots: BTreeMap<u64, Slot>,
    pub(super) cached_bytes: usize,
    pub(super) cache_bytes_max: usize,
    /// No slot below this index holds a cached entry.
    pub(super) uncached_below: u64,
}

impl Index {
    pub(super) fn insert(&mut self, slot: Slot) {
        if slot.entry.is_some() {
            self.cached_bytes += slot.bytes;
            // Keep the eviction cursor at or below every cached entry.
            self.uncached_below = self.uncached_below.min(slot.log_id.index);
        }
        if let Some(old) = self.slots.insert(slot.log_id.index, slot) {
            self.forget(&old);
        }
    }

    pub(super) fn forget(&mut self, slot: &Slot) {
        if slot.entry.is_some() {
            self.cached_bytes -= slot.bytes;
        }
    }

    /// Removes the slots at and after `from`.
    pub(super) fn truncate(&mut self, from: u64) {
        for (_, slot) in self.slots.split_off(&from) {
            self.forget(&slot);
        }
        self.uncached_below = self.uncached_below.min(from);
    }

    /// Removes the slots up to and including `upto`.
    pub(super) fn purge(&mut self, upto: u64) {
        let kept = self.slots.split_off(&(upto + 1));
        for (_, slot) in std::mem::replace(&mut self.slots, kept) {
            self.forget(&slot);
        }
    }

    /// Drops cached entries, oldest first, that are written down, until within the budget.
    pub(super) fn evict(&mut self) {
        if self.cached_bytes <= self.cache_bytes_max {
            return;
        }
        for (&index, slot) in self.slots.range_mut(self.uncached_below..) {
            if self.cached_bytes <= self.cache_bytes_max {
                break;
            }
            if slot.at.is_none() {
                // Not written yet; neither it nor anything after it can be dropped.
                break;
            }
            if slot.entry.take().is_some() {
                self.cached_bytes -= slot.bytes;
            }
            self.uncached_below = index + 1;
        }
    }

    /// Records where the writer put the entry `log_id`, if the slot still holds it.
    pub(super) fn written(&mut self, log_id: LogId, at: Location) {
        if let Some(slot) = self.slots.get_mut(&log_id.index)
            && slot.log_id == log_id
        {
            slot.at = Some(at);
        }
    }
}
