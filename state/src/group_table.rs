//! Shard groups: the hash slots of each group and the shard that owns each, with the move
//! under way, if any (`corral_proto::slots`).
//!
//! Invariants (checked by `StateMachine::check_invariants` in tests):
//! - a group's ranges cover `0..SLOTS` in order, with no gap or overlap, and two
//!   neighbouring ranges differ in shard or destination (they are merged otherwise);
//! - every shard a range names, as owner or as destination, exists, and belongs to this
//!   group alone; a range never moves to the shard that owns it;
//! - a group's version grows by exactly one with every change of its ranges.

use std::collections::BTreeMap;

use corral_proto::limits::GROUPS_MAX;
use corral_proto::slots::{SLOTS, ShardGroup, SlotRange};
use corral_proto::{CommandError, Event};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GroupTable {
    groups: BTreeMap<String, ShardGroup>,
}

impl GroupTable {
    pub(crate) fn get(&self, name: &str) -> Option<&ShardGroup> {
        self.groups.get(name)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &ShardGroup> {
        self.groups.values()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The group whose ranges name `shard`, as owner or as destination.
    pub(crate) fn group_of(&self, shard: &str) -> Option<&str> {
        self.groups
            .values()
            .find(|g| {
                g.ranges
                    .iter()
                    .any(|r| r.shard == shard || r.moving_to.as_deref() == Some(shard))
            })
            .map(|g| g.name.as_str())
    }

    /// Refuses a shard that does not exist or is in another group than `group`.
    fn check_shard(
        &self,
        shard: &str,
        group: &str,
        exists: &impl Fn(&str) -> bool,
    ) -> Result<(), CommandError> {
        if !exists(shard) {
            return Err(CommandError::NoSuchShard {
                name: shard.to_string(),
            });
        }
        match self.group_of(shard) {
            Some(other) if other != group => Err(CommandError::ShardInGroup {
                shard: shard.to_string(),
                group: other.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Creates group `name`, the slots split evenly among `shards` in the order given.
    pub(crate) fn create(
        &mut self,
        name: &str,
        shards: &[String],
        exists: impl Fn(&str) -> bool,
        events: &mut Vec<Event>,
    ) -> Result<u64, CommandError> {
        if self.groups.contains_key(name) {
            return Err(CommandError::GroupExists {
                name: name.to_string(),
            });
        }
        if self.groups.len() >= GROUPS_MAX {
            return Err(CommandError::TooManyGroups { max: GROUPS_MAX });
        }
        for shard in shards {
            self.check_shard(shard, name, &exists)?;
        }
        let count = shards.len() as u32;
        let ranges = shards
            .iter()
            .enumerate()
            .map(|(i, shard)| {
                let i = i as u32;
                SlotRange {
                    first: (i * SLOTS as u32 / count) as u16,
                    last: ((i + 1) * SLOTS as u32 / count - 1) as u16,
                    shard: shard.clone(),
                    moving_to: None,
                }
            })
            .collect();
        let group = ShardGroup {
            name: name.to_string(),
            version: 1,
            ranges,
        };
        events.push(Event::GroupChanged(group.clone()));
        self.groups.insert(name.to_string(), group);
        Ok(1)
    }

    pub(crate) fn delete(
        &mut self,
        name: &str,
        events: &mut Vec<Event>,
    ) -> Result<(), CommandError> {
        if self.groups.remove(name).is_none() {
            return Err(CommandError::NoSuchGroup {
                name: name.to_string(),
            });
        }
        events.push(Event::GroupDeleted {
            group: name.to_string(),
        });
        Ok(())
    }

    fn group_mut(&mut self, name: &str) -> Result<&mut ShardGroup, CommandError> {
        self.groups
            .get_mut(name)
            .ok_or_else(|| CommandError::NoSuchGroup {
                name: name.to_string(),
            })
    }

    /// Marks slots `first..=last` of `group` as moving to `to`; answers the version.
    /// Slots `to` already owns do not move; if it owns them all, nothing changes.
    pub(crate) fn move_slots(
        &mut self,
        group: &str,
        (first, last): (u16, u16),
        to: &str,
        exists: impl Fn(&str) -> bool,
        events: &mut Vec<Event>,
    ) -> Result<u64, CommandError> {
        self.check_shard(to, group, &exists)?;
        let target = self.group_mut(group)?;
        if target.moving() {
            return Err(CommandError::MoveUnderWay {
                group: group.to_string(),
            });
        }
        let mut ranges = Vec::with_capacity(target.ranges.len() + 2);
        let mut changed = false;
        for range in &target.ranges {
            // The parts of `range` before, within and after first..=last.
            let within = (range.first.max(first), range.last.min(last));
            if within.0 > within.1 {
                ranges.push(range.clone());
                continue;
            }
            if range.first < within.0 {
                ranges.push(SlotRange {
                    last: within.0 - 1,
                    ..range.clone()
                });
            }
            let moves = range.shard != to;
            changed |= moves;
            ranges.push(SlotRange {
                first: within.0,
                last: within.1,
                shard: range.shard.clone(),
                moving_to: moves.then(|| to.to_string()),
            });
            if within.1 < range.last {
                ranges.push(SlotRange {
                    first: within.1 + 1,
                    ..range.clone()
                });
            }
        }
        if !changed {
            return Ok(target.version);
        }
        target.ranges = merged(ranges);
        target.version += 1;
        events.push(Event::GroupChanged(target.clone()));
        Ok(target.version)
    }

    /// Ends the move under way in `group`: with `commit` every moving slot goes to its
    /// destination at once, otherwise it stays. Answers the version.
    pub(crate) fn finish_move(
        &mut self,
        group: &str,
        commit: bool,
        events: &mut Vec<Event>,
    ) -> Result<u64, CommandError> {
        let target = self.group_mut(group)?;
        if !target.moving() {
            return Err(CommandError::NoMove {
                group: group.to_string(),
            });
        }
        let ranges = std::mem::take(&mut target.ranges)
            .into_iter()
            .map(|mut range| {
                if let Some(to) = range.moving_to.take()
                    && commit
                {
                    range.shard = to;
                }
                range
            })
            .collect();
        target.ranges = merged(ranges);
        target.version += 1;
        events.push(Event::GroupChanged(target.clone()));
        Ok(target.version)
    }

    /// Every invariant of the module's header, with `exists` telling which shards do.
    pub(crate) fn check(&self, exists: impl Fn(&str) -> bool) -> Result<(), String> {
        let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
        for group in self.groups.values() {
            let mut next = 0u32;
            for (i, range) in group.ranges.iter().enumerate() {
                if range.first as u32 != next || range.last < range.first {
                    return Err(format!(
                        "group {} has a gap or overlap at {next}",
                        group.name
                    ));
                }
                next = range.last as u32 + 1;
                if i > 0 {
                    let before = &group.ranges[i - 1];
                    if before.shard == range.shard && before.moving_to == range.moving_to {
                        return Err(format!("group {} has unmerged ranges", group.name));
                    }
                }
                if range.moving_to.as_deref() == Some(range.shard.as_str()) {
                    return Err(format!("group {} moves slots to their owner", group.name));
                }
                for shard in std::iter::once(&range.shard).chain(&range.moving_to) {
                    if !exists(shard) {
                        return Err(format!("group {} names missing shard {shard}", group.name));
                    }
                    if *owner.entry(shard).or_insert(&group.name) != group.name {
                        return Err(format!("shard {shard} is in two groups"));
                    }
                }
            }
            if next != SLOTS as u32 {
                return Err(format!("group {} ends at slot {next}", group.name));
            }
        }
        Ok(())
    }
}

/// `ranges` with neighbours of the same shard and destination merged.
fn merged(ranges: Vec<SlotRange>) -> Vec<SlotRange> {
    let mut out: Vec<SlotRange> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match out.last_mut() {
            Some(last) if last.shard == range.shard && last.moving_to == range.moving_to => {
                last.last = range.last;
            }
            _ => out.push(range),
        }
    }
    out
}
