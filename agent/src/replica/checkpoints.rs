//! The replica's checkpoints against the core's: a fed agent's proof that what another
//! agent relayed to it is what the core holds. Plain values, no I/O.
//!
//! ```text
//!  replica applies a revision that is a multiple of CHECKPOINT_EVERY ──► own(r, c)
//!  a core member's progress-only stream ──WatchItem::Checkpoint(r, c)──► core(r, c)
//!                    both known for r: equal ─► matched · different ─► mismatched
//! ```
//!
//! Either side may come first: the core's waits for the replica to reach its revision,
//! the replica's waits for the core's. A replica past a revision without its own
//! checkpoint of it (it loaded a snapshot after it) cannot tell, and says so.

use std::collections::VecDeque;

use corral_proto::Revision;
use corral_state::digest::Checkpoint;

/// Checkpoints kept, the replica's own and the core's that wait for the replica.
const KEPT: usize = 8;

/// How a comparison of checkpoints came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointCheck {
    Matched,
    /// The replica holds another state than the core at that revision: what fed it was
    /// altered, or wrong.
    Mismatched,
    /// The replica has not reached the revision yet: compared when it does.
    Pending,
    /// The replica is past the revision without its own checkpoint of it.
    Unknown,
}

#[derive(Debug, Default)]
pub struct Checkpoints {
    own: VecDeque<(Revision, Checkpoint)>,
    /// The core's, for revisions the replica has not reached yet.
    core: VecDeque<(Revision, Checkpoint)>,
    pub matched: u64,
    pub mismatched: u64,
}

fn keep(queue: &mut VecDeque<(Revision, Checkpoint)>, item: (Revision, Checkpoint)) {
    if queue.len() == KEPT {
        queue.pop_front();
    }
    queue.push_back(item);
}

impl Checkpoints {
    /// The core's checkpoint at `revision`, for a replica now at `replica_revision`.
    pub fn core(
        &mut self,
        revision: Revision,
        checksum: Checkpoint,
        replica_revision: Revision,
    ) -> CheckpointCheck {
        if let Some((_, own)) = self.own.iter().find(|(r, _)| *r == revision) {
            let own = *own;
            return self.compare(&own, &checksum);
        }
        if replica_revision < revision {
            keep(&mut self.core, (revision, checksum));
            return CheckpointCheck::Pending;
        }
        CheckpointCheck::Unknown
    }

    /// The replica's own checkpoint at `revision`: compared at once when the core's came
    /// first (None when it did not, or when this one is already known).
    pub fn own(&mut self, revision: Revision, checksum: Checkpoint) -> Option<CheckpointCheck> {
        if self.own.back().is_some_and(|(r, _)| *r >= revision) {
            return None;
        }
        keep(&mut self.own, (revision, checksum));
        let core = self
            .core
            .iter()
            .position(|(r, _)| *r == revision)
            .and_then(|i| self.core.remove(i));
        // The core's for revisions the replica passed without a checkpoint are moot.
        self.core.retain(|(r, _)| *r > revision);
        core.map(|(_, core)| self.compare(&checksum, &core))
    }

    /// Forgets the replica's checkpoints (it starts over); the core's stay pending.
    pub fn replica_replaced(&mut self) {
        self.own.clear();
    }

    fn compare(&mut self, own: &Checkpoint, core: &Checkpoint) -> CheckpointCheck {
        if own == core {
            self.matched += 1;
            CheckpointCheck::Matched
        } else {
            self.mismatched += 1;
            CheckpointCheck::Mismatched
        }
    }
}

#[cfg(test)]
mod tests {
    use corral_proto::Command;
    use corral_state::StateMachine;
    use corral_state::digest::CHECKPOINT_EVERY;

    use super::*;

    fn put(machine: &mut StateMachine, key: &str, value: &[u8]) {
        machine.apply(&Command::Put {
            key: key.into(),
            value: value.to_vec(),
            session: None,
        });
    }

    /// A replica that took an altered snapshot from a relay, then the same entries as the
    /// core: its checkpoint differs from the core's, whichever comes first; a faithful
    /// one matches.
    #[test]
    fn an_altered_snapshot_is_caught_at_the_next_checkpoint() {
        let mut core = StateMachine::new();
        for i in 0..100u32 {
            put(&mut core, &format!("k/{i}"), &i.to_le_bytes());
        }
        let mut faithful = StateMachine::from_snapshot_bytes(&core.to_snapshot_bytes()).unwrap();
        // The relay changed one value, keeping the revision.
        let mut altered_bytes = core.to_snapshot_bytes();
        let at = altered_bytes
            .windows(4)
            .position(|w| w == 42u32.to_le_bytes())
            .unwrap();
        altered_bytes[at] ^= 0x80;
        let mut altered = StateMachine::from_snapshot_bytes(&altered_bytes).unwrap();
        assert_eq!(altered.revision(), core.revision());
        while core.revision() < CHECKPOINT_EVERY {
            let key = format!("later/{}", core.revision());
            for machine in [&mut core, &mut faithful, &mut altered] {
                put(machine, &key, b"x");
            }
        }
        let (revision, checksum) = core.checkpoint().unwrap();

        // The core's first: pending, then compared when the replica gets there.
        let mut first = Checkpoints::default();
        assert_eq!(
            first.core(revision, checksum, revision - 5),
            CheckpointCheck::Pending
        );
        let (r, own) = altered.checkpoint().unwrap();
        assert_eq!(first.own(r, own), Some(CheckpointCheck::Mismatched));
        assert_eq!(first.mismatched, 1);

        // The replica's first.
        let mut second = Checkpoints::default();
        let (r, own) = faithful.checkpoint().unwrap();
        assert_eq!(second.own(r, own), None);
        assert_eq!(second.core(revision, checksum, r), CheckpointCheck::Matched);
        assert_eq!((second.matched, second.mismatched), (1, 0));

        // A replica that loaded a snapshot past the revision cannot tell.
        let mut third = Checkpoints::default();
        assert_eq!(
            third.core(revision, checksum, revision + 3),
            CheckpointCheck::Unknown
        );
    }
}
