//! Hash slots: a shard group splits [`SLOTS`] slots among its shards, and a key belongs to
//! the slot its hash names, as in Redis Cluster (CRC-16/XMODEM of the key modulo 16,384;
//! a key with a non-empty `{tag}` hashes by the tag alone, so that related keys share a
//! slot).
//!
//! ```text
//!  key ──slot_of──► slot ──ShardGroup::range_of──► SlotRange { shard, moving_to }
//!                                  + the shard's master and epoch, the group's version = Route
//! ```
//!
//! A group's `version` grows by one with every change of who owns what (a move begun, a
//! move finished or cancelled): a store refuses a write routed with another version than
//! its own map's when ownership differs, and the writer retries with the newer map.

use serde::{Deserialize, Serialize};

use crate::model::Shard;

/// Slots of every group.
pub const SLOTS: u16 = 16_384;

/// CRC-16/XMODEM (polynomial 0x1021, initial 0), Redis Cluster's key hash.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= (byte as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of `key`: of its `{tag}` when it has a non-empty one (the first `{` and the
/// first `}` after it), else of the whole key.
pub fn slot_of(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS
}

/// Slots `first..=last`, owned by `shard`; with `moving_to`, on their way to that shard (a
/// move begun and not yet finished: both sides know it, the owner still owns them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRange {
    pub first: u16,
    pub last: u16,
    pub shard: String,
    pub moving_to: Option<String>,
}

/// A shard group: every slot of `0..SLOTS` in exactly one range, in slot order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardGroup {
    pub name: String,
    /// Grows by one with every change of the ranges.
    pub version: u64,
    pub ranges: Vec<SlotRange>,
}

impl ShardGroup {
    /// The range holding `slot`.
    pub fn range_of(&self, slot: u16) -> Option<&SlotRange> {
        let index = self.ranges.partition_point(|r| r.last < slot);
        self.ranges.get(index).filter(|r| r.first <= slot)
    }

    /// The shards that own slots, once each, in slot order of their first range.
    pub fn shards(&self) -> Vec<&str> {
        let mut shards: Vec<&str> = Vec::new();
        for range in &self.ranges {
            if !shards.contains(&range.shard.as_str()) {
                shards.push(&range.shard);
            }
        }
        shards
    }

    /// True when any slot is on its way to another shard.
    pub fn moving(&self) -> bool {
        self.ranges.iter().any(|r| r.moving_to.is_some())
    }

    /// Where `key` goes: its slot, the shard that owns it (with `shard`'s master and
    /// epoch, when given the shard record), and the group's version.
    pub fn route<'a>(
        &self,
        key: &[u8],
        shard: impl Fn(&str) -> Option<&'a Shard>,
    ) -> Option<Route> {
        let slot = slot_of(key);
        let range = self.range_of(slot)?;
        let record = shard(&range.shard);
        Some(Route {
            group: self.name.clone(),
            slot,
            shard: range.shard.clone(),
            master: record.and_then(|s| s.master.clone()),
            epoch: record.map_or(0, |s| s.epoch),
            version: self.version,
            moving_to: range.moving_to.clone(),
        })
    }
}

/// Where a key goes, as of the group's `version`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub group: String,
    pub slot: u16,
    pub shard: String,
    /// The shard's master's address (None: it has none now).
    pub master: Option<String>,
    /// The shard's fencing epoch.
    pub epoch: u64,
    /// The group's version this answer comes from.
    pub version: u64,
    /// The shard the slot is on its way to, while a move is under way.
    pub moving_to: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values Redis Cluster's `CLUSTER KEYSLOT` answers.
    #[test]
    fn slots_are_redis_clusters() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"bar"), 5061);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"));
        assert_ne!(slot_of(b"foo{}{bar}"), slot_of(b"bar"));
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
        assert_eq!(slot_of(b""), 0);
    }

    #[test]
    fn a_slot_is_found_in_its_range() {
        let group = ShardGroup {
            name: "orders".into(),
            version: 1,
            ranges: vec![
                SlotRange {
                    first: 0,
                    last: 99,
                    shard: "M1".into(),
                    moving_to: None,
                },
                SlotRange {
                    first: 100,
                    last: SLOTS - 1,
                    shard: "M2".into(),
                    moving_to: Some("M1".into()),
                },
            ],
        };
        assert_eq!(group.range_of(0).unwrap().shard, "M1");
        assert_eq!(group.range_of(99).unwrap().shard, "M1");
        assert_eq!(group.range_of(100).unwrap().shard, "M2");
        assert_eq!(group.range_of(SLOTS - 1).unwrap().shard, "M2");
        assert!(group.range_of(SLOTS).is_none());
        assert_eq!(group.shards(), ["M1", "M2"]);
        assert!(group.moving());
    }
}
