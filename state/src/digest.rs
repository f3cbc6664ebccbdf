//! Checksums of the state that cost nothing to keep: a digest of a set of rows that each
//! insert or removal updates in constant time, and the checkpoint that binds it to the
//! rest of the state at a revision.
//!
//! ```text
//!  row (key, record) ──SHA-256──► seed ──SHA-256(seed ‖ i), i < 8──► 32 lanes of 64 bits
//!  set digest = Σ lanes of every row, lane by lane, wrapping      (insert: +, remove: −)
//!  checkpoint(revision) = SHA-256(revision ‖ set digest of the keys ‖ the other tables)
//! ```
//!
//! The sum does not depend on the order rows came in, so a state built from a snapshot
//! and one built entry by entry have the same digest exactly when they hold the same
//! rows. A sum of hashes over a group this large (2,048 bits) resists forgery by a
//! generalized birthday search far beyond any key count a snapshot can hold (about 2^80
//! work for 16 million rows); the other tables, small beside the keys, are hashed whole.
//! Deterministic: no randomness, no clock, the same on every member and every agent.

use ring::digest::{Context, SHA256, digest};

/// Lanes of a set digest.
pub const LANES: usize = 32;

/// A checkpoint is taken at every revision that is a multiple of this.
pub const CHECKPOINT_EVERY: u64 = 1024;

/// The digest of a set of rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetDigest([u64; LANES]);

impl Default for SetDigest {
    fn default() -> Self {
        SetDigest([0; LANES])
    }
}

/// One row's contribution to a set digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowDigest([u64; LANES]);

impl RowDigest {
    /// The contribution of the row whose canonical bytes `write` feeds to the hash.
    pub fn of(write: impl FnOnce(&mut Context)) -> Self {
        let mut context = Context::new(&SHA256);
        context.update(b"corral-row-v1\0");
        write(&mut context);
        let seed = context.finish();
        let mut lanes = [0u64; LANES];
        for (i, chunk) in lanes.chunks_mut(4).enumerate() {
            let mut block = [0u8; 33];
            block[..32].copy_from_slice(seed.as_ref());
            block[32] = i as u8;
            let expanded = digest(&SHA256, &block);
            for (lane, bytes) in chunk.iter_mut().zip(expanded.as_ref().chunks_exact(8)) {
                let mut word = [0u8; 8];
                word.copy_from_slice(bytes);
                *lane = u64::from_le_bytes(word);
            }
        }
        RowDigest(lanes)
    }
}

impl SetDigest {
    pub fn insert(&mut self, row: &RowDigest) {
        for (lane, add) in self.0.iter_mut().zip(row.0) {
            *lane = lane.wrapping_add(add);
        }
    }

    pub fn remove(&mut self, row: &RowDigest) {
        for (lane, sub) in self.0.iter_mut().zip(row.0) {
            *lane = lane.wrapping_sub(sub);
        }
    }

    /// Feeds the digest to a hash.
    pub fn write_to(&self, context: &mut Context) {
        for lane in self.0 {
            context.update(&lane.to_le_bytes());
        }
    }
}

/// A checksum of the whole state at a revision, which every member and every agent that
/// reaches that revision computes alike.
pub type Checkpoint = [u8; 32];

#[cfg(test)]
mod tests {
    use super::*;

    fn row(text: &str) -> RowDigest {
        RowDigest::of(|c| c.update(text.as_bytes()))
    }

    /// The digest depends on which rows are in the set, not on their order or on rows that
    /// came and went; any row more, less or changed moves it.
    #[test]
    fn a_set_digest_depends_on_the_rows_alone() {
        let mut a = SetDigest::default();
        for text in ["x", "y", "z"] {
            a.insert(&row(text));
        }
        let mut b = SetDigest::default();
        for text in ["z", "gone", "x", "y"] {
            b.insert(&row(text));
        }
        b.remove(&row("gone"));
        assert_eq!(a, b);
        b.remove(&row("z"));
        assert_ne!(a, b);
        b.insert(&row("z "));
        assert_ne!(a, b);
        b.remove(&row("z "));
        b.insert(&row("z"));
        assert_eq!(a, b);
        assert_ne!(a, SetDigest::default());
    }
}
