//! Which agents feed which, decided by each agent alone from the gossip membership it
//! already knows: no coordination, no state of its own, no I/O.
//!
//! ```text
//!  core ──► level 1: the `top` agents lowest in rank
//!              └──► level 2: the next top × fanout, each fed by one agent of level 1
//!                       └──► level 3: the next top × fanout², each fed by one of level 2 …
//! ```
//!
//! An agent's rank is the place of a hash of its name among those of every agent alive.
//! An agent of level k ≥ 2 is fed by an agent of level k − 1, the one that scores highest
//! for it (rendezvous hashing: a hash of both names): each feeder gets about `fanout`
//! agents, and when one feeder dies only the agents it fed move, each to its next best.
//! Depth grows as log_fanout of the fleet; the core feeds `top` agents however large the
//! fleet. Agents that see slightly different memberships may pick different feeders for a
//! moment, which costs nothing: any agent serves whoever asks, up to a bound.

use ring::digest::{SHA256, digest};

/// Agents the core feeds.
pub const TOP_DEFAULT: usize = 4;

/// Agents each relay feeds, on average.
pub const FANOUT_DEFAULT: usize = 16;

/// Feeders an agent tries, best first, before it falls back to the core.
pub const CANDIDATES: usize = 3;

/// The shape of the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedTree {
    /// Agents fed by the core (level 1). Zero: every agent is fed by the core.
    pub top: usize,
    /// Agents fed by each relay of a level, on average (each level is `fanout` times the
    /// one above it).
    pub fanout: usize,
}

impl Default for FeedTree {
    fn default() -> Self {
        FeedTree {
            top: TOP_DEFAULT,
            fanout: FANOUT_DEFAULT,
        }
    }
}

fn hash64(parts: &[&[u8]]) -> u64 {
    let mut input = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for part in parts {
        input.extend_from_slice(part);
        // A separator no name contains, so ("ab", "c") and ("a", "bc") differ.
        input.push(0);
    }
    let hash = digest(&SHA256, &input);
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// An agent's place in the ranking: the same on every agent.
fn rank_key(name: &str) -> (u64, &str) {
    (hash64(&[b"corral-feed-rank", name.as_bytes()]), name)
}

/// The agents alive in rank order, computed once for any number of
/// [`FeedTree::candidates`] questions.
#[derive(Clone, Debug)]
pub struct Ranking<'a> {
    ranked: Vec<(u64, &'a str)>,
}

impl<'a> Ranking<'a> {
    /// Ranks `alive`; a name given twice counts once.
    pub fn new(alive: impl IntoIterator<Item = &'a str>) -> Self {
        let mut ranked: Vec<(u64, &str)> = alive.into_iter().map(rank_key).collect();
        ranked.sort_unstable();
        ranked.dedup();
        Ranking { ranked }
    }

    pub fn len(&self) -> usize {
        self.ranked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranked.is_empty()
    }

    /// The name at `rank` (0: the lowest).
    pub fn name(&self, rank: usize) -> Option<&'a str> {
        self.ranked.get(rank).map(|(_, name)| *name)
    }

    /// The rank of `name`, if it is among the agents ranked.
    pub fn rank_of(&self, name: &str) -> Option<usize> {
        let key = rank_key(name);
        self.ranked.binary_search(&key).ok()
    }
}

impl FeedTree {
    /// Whether agents feed agents at all.
    pub fn relays(&self) -> bool {
        self.top > 0 && self.fanout > 0
    }

    /// The agents that should feed `me`, best first (at most [`CANDIDATES`]), among the
    /// agents `alive` (which may or may not include `me`). Empty: the core feeds `me`.
    pub fn feeders<'a>(
        &self,
        me: &'a str,
        alive: impl IntoIterator<Item = &'a str>,
    ) -> Vec<String> {
        if !self.relays() {
            return Vec::new();
        }
        let ranking = Ranking::new(alive.into_iter().chain(std::iter::once(me)));
        match ranking.rank_of(me) {
            Some(rank) => self
                .candidates(&ranking, rank)
                .into_iter()
                .map(str::to_string)
                .collect(),
            None => Vec::new(),
        }
    }

    /// The feeders of the agent at `rank` in `ranking`, best first: what
    /// [`FeedTree::feeders`] says for it. Empty: the core feeds it.
    pub fn candidates<'a>(&self, ranking: &Ranking<'a>, rank: usize) -> Vec<&'a str> {
        if !self.relays() || rank >= ranking.len() {
            return Vec::new();
        }
        // Levels: [0, top), [top, top + top·fanout), …
        let (mut start, mut size) = (0usize, self.top);
        let mut parents = 0..0;
        while rank >= start + size {
            parents = start..start + size;
            start += size;
            size = size.saturating_mul(self.fanout);
        }
        let me = ranking.ranked[rank].1;
        // The CANDIDATES highest scores, highest first (ties: the greater name first).
        let mut best: Vec<(u64, &str)> = Vec::with_capacity(CANDIDATES + 1);
        for (_, parent) in &ranking.ranked[parents] {
            let scored = (hash64(&[me.as_bytes(), parent.as_bytes()]), *parent);
            if best.len() == CANDIDATES && best.last().is_some_and(|last| scored <= *last) {
                continue;
            }
            let at = best.partition_point(|b| *b > scored);
            best.insert(at, scored);
            best.truncate(CANDIDATES);
        }
        best.into_iter().map(|(_, name)| name).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn fleet(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("host-{i}")).collect()
    }

    /// The first feeder of every agent, by agent.
    fn first_feeders(tree: FeedTree, names: &[String]) -> BTreeMap<String, Option<String>> {
        let alive = || names.iter().map(String::as_str);
        names
            .iter()
            .map(|me| (me.clone(), tree.feeders(me, alive()).into_iter().next()))
            .collect()
    }

    /// Depth of `me` below the core, following first feeders.
    fn depth(feeders: &BTreeMap<String, Option<String>>, me: &str) -> usize {
        let mut depth = 1;
        let mut at = me.to_string();
        while let Some(Some(parent)) = feeders.get(&at) {
            depth += 1;
            at = parent.clone();
            assert!(depth <= feeders.len(), "a cycle through {me}");
        }
        depth
    }

    /// A fleet of 2,000: the core feeds `top` agents, no agent feeds more than a few times
    /// the fan-out, the depth is log_fanout of the fleet, and there is no cycle.
    #[test]
    fn the_core_feeds_top_agents_and_the_rest_form_a_shallow_tree() {
        let tree = FeedTree::default();
        let names = fleet(2_000);
        let feeders = first_feeders(tree, &names);
        let from_core = feeders.values().filter(|f| f.is_none()).count();
        assert_eq!(from_core, TOP_DEFAULT);
        let mut children: BTreeMap<&str, usize> = BTreeMap::new();
        for parent in feeders.values().flatten() {
            *children.entry(parent).or_default() += 1;
        }
        let most = children.values().max().copied().unwrap_or(0);
        assert!(most <= 3 * FANOUT_DEFAULT, "a relay feeds {most}");
        // 4 + 64 + 1024 < 2000 ≤ 4 + 64 + 1024 + 16384: four levels.
        let deepest = names.iter().map(|n| depth(&feeders, n)).max().unwrap();
        assert_eq!(deepest, 4);
    }

    /// Fleets as small as `top` are all fed by the core; no relays, no tree.
    #[test]
    fn small_fleets_and_no_relays_mean_the_core_feeds_everyone() {
        let names = fleet(4);
        assert!(
            first_feeders(FeedTree::default(), &names)
                .values()
                .all(Option::is_none)
        );
        let off = FeedTree { top: 0, fanout: 16 };
        assert!(
            first_feeders(off, &fleet(100))
                .values()
                .all(Option::is_none)
        );
    }

    /// When one agent dies, only those it fed and a handful at level boundaries change
    /// feeder: the tree does not reshuffle the fleet.
    #[test]
    fn a_death_moves_only_the_agents_near_it() {
        let tree = FeedTree::default();
        let names = fleet(1_000);
        let before = first_feeders(tree, &names);
        let mut children: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (child, parent) in &before {
            if let Some(parent) = parent {
                children.entry(parent).or_default().insert(child);
            }
        }
        // A relay of level 2, with children of its own.
        let (dead, orphans) = children
            .iter()
            .find(|(parent, _)| {
                before[**parent]
                    .as_ref()
                    .is_some_and(|p| before[p].is_none())
            })
            .map(|(p, c)| (p.to_string(), c.clone()))
            .unwrap();
        let survivors: Vec<String> = names.iter().filter(|n| **n != dead).cloned().collect();
        let after = first_feeders(tree, &survivors);
        let moved: Vec<&String> = survivors
            .iter()
            .filter(|n| before[*n] != after[*n])
            .collect();
        for orphan in &orphans {
            assert_ne!(after[*orphan].as_deref(), Some(dead.as_str()));
        }
        assert!(
            moved.len() <= orphans.len() + 2 * FANOUT_DEFAULT,
            "{} agents moved for {} orphans",
            moved.len(),
            orphans.len()
        );
    }

    /// Candidates are distinct, never the agent itself, and the same whoever computes them.
    #[test]
    fn candidates_are_distinct_and_do_not_include_the_agent() {
        let tree = FeedTree::default();
        let names = fleet(300);
        for me in &names {
            let mut shuffled: Vec<&str> = names.iter().map(String::as_str).rev().collect();
            let candidates = tree.feeders(me, names.iter().map(String::as_str));
            assert!(!candidates.contains(me));
            let distinct: BTreeSet<_> = candidates.iter().collect();
            assert_eq!(distinct.len(), candidates.len());
            shuffled.rotate_left(7);
            assert_eq!(candidates, tree.feeders(me, shuffled));
        }
    }

    /// The bounded selection of the best parents gives what sorting every parent's score
    /// gives, for every agent of a fleet whose levels have more parents than candidates.
    #[test]
    fn candidates_are_the_highest_scores_among_the_level_above() {
        let tree = FeedTree { top: 5, fanout: 4 };
        let names = fleet(400);
        let ranking = Ranking::new(names.iter().map(String::as_str));
        for rank in 0..ranking.len() {
            let me = ranking.name(rank).unwrap();
            let (mut start, mut size, mut parents) = (0, tree.top, 0..0);
            while rank >= start + size {
                parents = start..start + size;
                start += size;
                size *= tree.fanout;
            }
            let mut scored: Vec<(u64, &str)> = parents
                .map(|p| {
                    let parent = ranking.name(p).unwrap();
                    (hash64(&[me.as_bytes(), parent.as_bytes()]), parent)
                })
                .collect();
            scored.sort_unstable_by(|a, b| b.cmp(a));
            let expected: Vec<&str> = scored.into_iter().take(CANDIDATES).map(|s| s.1).collect();
            assert_eq!(tree.candidates(&ranking, rank), expected, "rank {rank}");
            assert_eq!(tree.feeders(me, names.iter().map(String::as_str)), expected);
        }
    }
}
