//! Checking histories that clients recorded under faults.
//!
//! * [`check_register`]: linearizability of one key used as a register (put a unique value,
//!   linearizable get), by the Wing–Gong search with Lowe's memoisation: operations are
//!   linearized one at a time, choosing only among those that no unlinearized operation
//!   finished before; a (linearized set, register value) pair already explored is never
//!   explored again. Keys are independent, so each is checked on its own.
//! * An operation whose outcome is unknown (timeout, lost connection, `outcome_unknown`)
//!   may have taken effect at any time after its invocation, or never: it is never
//!   required, and never constrains another operation's order.
//! * [`check_epochs`] and [`check_tokens`]: fencing numbers seen by observers only grow, and
//!   never name two different holders.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

/// What a client asked of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// Put a value unique within the history.
    Put(String),
    /// A linearizable read.
    Get,
}

/// How it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The put was acknowledged.
    Written,
    /// The read returned this value (None: the key was absent).
    Read(Option<String>),
    /// The client cannot know whether it took effect.
    Unknown,
    /// Definitely not applied (refused before reaching the core).
    Failed,
}

#[derive(Clone, Debug)]
pub struct Operation {
    pub client: String,
    pub call: Call,
    pub invoked: Instant,
    /// None when the outcome is unknown.
    pub completed: Option<Instant>,
    pub outcome: Outcome,
}

/// The verdict on one key.
#[derive(Debug)]
pub struct Verdict {
    pub operations: usize,
    pub linearizable: bool,
    /// Acknowledged puts of the history: every one must be visible to the reads after it.
    pub acknowledged_puts: usize,
    /// States explored by the search.
    pub explored: usize,
}

const SEARCH_LIMIT: usize = 5_000_000;

/// Linearizability of one register's history. Failed operations are dropped first.
pub fn check_register(history: &[Operation]) -> Verdict {
    let ops: Vec<&Operation> = history
        .iter()
        .filter(|op| op.outcome != Outcome::Failed)
        .filter(|op| !(op.call == Call::Get && op.outcome == Outcome::Unknown))
        .collect();
    let n = ops.len();
    let words = n.div_ceil(64).max(1);
    let required: Vec<bool> = ops
        .iter()
        .map(|op| op.outcome != Outcome::Unknown)
        .collect();
    let required_count = required.iter().filter(|r| **r).count();
    let acknowledged_puts = ops
        .iter()
        .filter(|op| op.outcome == Outcome::Written)
        .count();

    struct Search<'a> {
        ops: &'a [&'a Operation],
        required: &'a [bool],
        required_count: usize,
        seen: HashSet<(Vec<u64>, Option<String>)>,
        explored: usize,
    }

    impl Search<'_> {
        fn done(&self, set: &[u64]) -> bool {
            let linearized_required = (0..self.ops.len())
                .filter(|i| self.required[*i] && set[i / 64] & (1 << (i % 64)) != 0)
                .count();
            linearized_required == self.required_count
        }

        fn run(&mut self, set: &mut Vec<u64>, value: Option<String>) -> bool {
            if self.done(set) {
                return true;
            }
            if self.explored > SEARCH_LIMIT || !self.seen.insert((set.clone(), value.clone())) {
                return false;
            }
            self.explored += 1;
            // The earliest completion among operations not yet linearized: only an
            // operation invoked before it may come next.
            let horizon = (0..self.ops.len())
                .filter(|i| set[i / 64] & (1 << (i % 64)) == 0)
                .filter_map(|i| self.ops[i].completed)
                .min();
            for i in 0..self.ops.len() {
                if set[i / 64] & (1 << (i % 64)) != 0 {
                    continue;
                }
                let op = self.ops[i];
                if horizon.is_some_and(|h| op.invoked > h) {
                    continue;
                }
                let next = match (&op.call, &op.outcome) {
                    (Call::Put(v), _) => Some(Some(v.clone())),
                    (Call::Get, Outcome::Read(seen)) if *seen == value => Some(value.clone()),
                    _ => None,
                };
                let Some(next) = next else { continue };
                set[i / 64] |= 1 << (i % 64);
                if self.run(set, next) {
                    return true;
                }
                set[i / 64] &= !(1 << (i % 64));
            }
            false
        }
    }

    let mut search = Search {
        ops: &ops,
        required: &required,
        required_count,
        seen: HashSet::new(),
        explored: 0,
    };
    let mut set = vec![0u64; words];
    let linearizable = search.run(&mut set, None);
    Verdict {
        operations: n,
        linearizable,
        acknowledged_puts,
        explored: search.explored,
    }
}

/// Checks every key of a history; returns the keys that are not linearizable.
pub fn check_keys(history: &BTreeMap<String, Vec<Operation>>) -> (usize, Vec<String>) {
    let mut checked = 0;
    let mut bad = Vec::new();
    for (key, ops) in history {
        // The search recurses once per operation: give it a deep stack.
        let ops = ops.clone();
        let verdict = std::thread::Builder::new()
            .stack_size(1 << 30)
            .spawn(move || check_register(&ops))
            .expect("a checker thread")
            .join()
            .expect("the checker does not panic");
        checked += verdict.operations;
        if !verdict.linearizable {
            bad.push(key.clone());
        }
    }
    (checked, bad)
}

/// One observation of a fencing number (a shard's epoch with its master, a lock's token
/// with its holder).
#[derive(Clone, Debug)]
pub struct Fence {
    pub observer: String,
    pub number: u64,
    pub holder: Option<String>,
}

/// Anomalies among observations: a number seen with two different holders, or an
/// observer seeing a number go down.
pub fn check_fences(observations: &[Fence]) -> Vec<String> {
    let mut anomalies = Vec::new();
    let mut holder_of: BTreeMap<u64, Option<String>> = BTreeMap::new();
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for fence in observations {
        if let Some(previous) = holder_of.get(&fence.number)
            && *previous != fence.holder
        {
            anomalies.push(format!(
                "number {} held by both {previous:?} and {:?}",
                fence.number, fence.holder
            ));
        }
        holder_of.insert(fence.number, fence.holder.clone());
        let seen = last.entry(fence.observer.as_str()).or_insert(0);
        if fence.number < *seen {
            anomalies.push(format!(
                "{} saw {} after {}",
                fence.observer, fence.number, *seen
            ));
        }
        *seen = (*seen).max(fence.number);
    }
    anomalies
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn op(t0: Instant, from: u64, to: Option<u64>, call: Call, outcome: Outcome) -> Operation {
        Operation {
            client: "c".into(),
            call,
            invoked: t0 + Duration::from_millis(from),
            completed: to.map(|to| t0 + Duration::from_millis(to)),
            outcome,
        }
    }

    fn put(v: &str) -> Call {
        Call::Put(v.into())
    }

    fn read(v: Option<&str>) -> Outcome {
        Outcome::Read(v.map(str::to_string))
    }

    #[test]
    fn sequential_and_overlapping_histories_pass() {
        let t = Instant::now();
        let history = vec![
            op(t, 0, Some(10), put("a"), Outcome::Written),
            op(t, 20, Some(30), Call::Get, read(Some("a"))),
            // Concurrent put and read: the read may see either.
            op(t, 40, Some(60), put("b"), Outcome::Written),
            op(t, 45, Some(50), Call::Get, read(Some("a"))),
            op(t, 70, Some(80), Call::Get, read(Some("b"))),
        ];
        assert!(check_register(&history).linearizable);
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let t = Instant::now();
        let history = vec![
            op(t, 0, Some(10), put("a"), Outcome::Written),
            op(t, 20, Some(30), put("b"), Outcome::Written),
            op(t, 40, Some(50), Call::Get, read(Some("a"))),
        ];
        assert!(!check_register(&history).linearizable);
        let history = vec![
            op(t, 0, Some(10), put("a"), Outcome::Written),
            op(t, 40, Some(50), Call::Get, read(None)),
        ];
        assert!(!check_register(&history).linearizable);
    }

    #[test]
    fn a_stale_read_after_a_newer_read_is_caught() {
        let t = Instant::now();
        let history = vec![
            op(t, 0, Some(100), put("a"), Outcome::Written),
            op(t, 0, Some(100), put("b"), Outcome::Written),
            op(t, 110, Some(120), Call::Get, read(Some("b"))),
            op(t, 130, Some(140), Call::Get, read(Some("a"))),
        ];
        assert!(!check_register(&history).linearizable);
    }

    #[test]
    fn unknown_writes_may_or_may_not_have_happened() {
        let t = Instant::now();
        let took_effect = vec![
            op(t, 0, None, put("a"), Outcome::Unknown),
            op(t, 50, Some(60), Call::Get, read(Some("a"))),
        ];
        assert!(check_register(&took_effect).linearizable);
        let did_not = vec![
            op(t, 0, None, put("a"), Outcome::Unknown),
            op(t, 50, Some(60), Call::Get, read(None)),
        ];
        assert!(check_register(&did_not).linearizable);
        // But a value nobody wrote is never read.
        let invented = vec![
            op(t, 0, None, put("a"), Outcome::Unknown),
            op(t, 50, Some(60), Call::Get, read(Some("z"))),
        ];
        assert!(!check_register(&invented).linearizable);
    }

    #[test]
    fn fences_catch_two_holders_and_going_backwards() {
        let ok = vec![
            Fence {
                observer: "a".into(),
                number: 1,
                holder: Some("x".into()),
            },
            Fence {
                observer: "b".into(),
                number: 1,
                holder: Some("x".into()),
            },
            Fence {
                observer: "a".into(),
                number: 2,
                holder: Some("y".into()),
            },
        ];
        assert!(check_fences(&ok).is_empty());
        let two = vec![
            Fence {
                observer: "a".into(),
                number: 2,
                holder: Some("x".into()),
            },
            Fence {
                observer: "b".into(),
                number: 2,
                holder: Some("y".into()),
            },
        ];
        assert_eq!(check_fences(&two).len(), 1);
        let back = vec![
            Fence {
                observer: "a".into(),
                number: 3,
                holder: Some("x".into()),
            },
            Fence {
                observer: "a".into(),
                number: 2,
                holder: Some("x".into()),
            },
        ];
        assert_eq!(check_fences(&back).len(), 1);
    }
}
