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
    /// None when the search gave up at [`SEARCH_LIMIT`] states: undecided.
    pub linearizable: Option<bool>,
    /// Acknowledged puts of the history: every one must be visible to the reads after it.
    pub acknowledged_puts: usize,
    /// States explored by the search.
    pub explored: usize,
}

/// States the search explores before it gives up on a key (undecided, not a pass).
pub const SEARCH_LIMIT: usize = 5_000_000;

/// Linearizability of one register's history. Dropped first, as they change nothing:
/// failed operations, reads whose outcome is unknown, and puts whose outcome is unknown
/// and whose value nobody read (leaving such a put out of a linearization never makes
/// it invalid).
pub fn check_register(history: &[Operation]) -> Verdict {
    let read_values: HashSet<&str> = history
        .iter()
        .filter_map(|op| match &op.outcome {
            Outcome::Read(Some(value)) => Some(value.as_str()),
            _ => None,
        })
        .collect();
    let mut ops: Vec<&Operation> = history
        .iter()
        .filter(|op| op.outcome != Outcome::Failed)
        .filter(|op| {
            op.outcome != Outcome::Unknown
                || matches!(&op.call, Call::Put(v) if read_values.contains(v.as_str()))
        })
        .collect();
    // In order of invocation: the operations that may come next are then a window.
    ops.sort_by_key(|op| op.invoked);
    let n = ops.len();
    let required: Vec<bool> = ops
        .iter()
        .map(|op| op.outcome != Outcome::Unknown)
        .collect();
    let required_count = required.iter().filter(|r| **r).count();
    let acknowledged_puts = ops
        .iter()
        .filter(|op| op.outcome == Outcome::Written)
        .count();
    let mut search = Search {
        ops: &ops,
        required: &required,
        required_count,
        seen: HashSet::new(),
        explored: 0,
    };
    let mut set = vec![0u64; n.div_ceil(64).max(1)];
    let found = search.run(&mut set);
    Verdict {
        operations: n,
        linearizable: match found {
            Some(true) => Some(true),
            _ if search.explored > SEARCH_LIMIT => None,
            _ => Some(false),
        },
        acknowledged_puts,
        explored: search.explored,
    }
}

/// The Wing–Gong search over operations sorted by invocation, with Lowe's memoisation,
/// depth first on a stack of its own (a history is tens of thousands of operations deep).
struct Search<'a> {
    ops: &'a [&'a Operation],
    required: &'a [bool],
    required_count: usize,
    /// States explored: the first operation missing from the set, the set's words from
    /// there on, and the register's value.
    seen: HashSet<(usize, Vec<u64>, Option<String>)>,
    explored: usize,
}

/// One state of the search: the operations in the set are linearized, in some order that
/// left the register at `value`.
struct Frame {
    value: Option<String>,
    /// Required operations in the set.
    done: usize,
    /// No operation before it is missing from the set.
    first: usize,
    /// The earliest completion among operations not in the set: only an operation
    /// invoked before it may come next.
    horizon: Option<Instant>,
    /// Where the look for the next candidate resumes.
    next: usize,
    /// The operation whose linearization led here.
    via: Option<usize>,
}

fn is_set(set: &[u64], i: usize) -> bool {
    set[i / 64] & (1 << (i % 64)) != 0
}

fn flip(set: &mut [u64], i: usize) {
    set[i / 64] ^= 1 << (i % 64);
}

enum Entered {
    Linearized,
    GaveUp,
    SeenBefore,
    Open(Frame),
}

impl Search<'_> {
    /// Whether every required operation can be linearized. None once the search gave up.
    fn run(&mut self, set: &mut [u64]) -> Option<bool> {
        let mut stack = match self.enter(set, None, 0, 0, None) {
            Entered::Linearized => return Some(true),
            Entered::GaveUp => return None,
            Entered::SeenBefore => return Some(false),
            Entered::Open(root) => vec![root],
        };
        while let Some(top) = stack.last_mut() {
            let Some(i) = self.candidate(set, top) else {
                if let Some(via) = top.via {
                    flip(set, via);
                }
                stack.pop();
                continue;
            };
            top.next = i + 1;
            let op = self.ops[i];
            let value = match (&op.call, &op.outcome) {
                (Call::Put(v), _) => Some(v.clone()),
                _ => top.value.clone(),
            };
            let (done, first) = (top.done + usize::from(self.required[i]), top.first);
            flip(set, i);
            match self.enter(set, value, done, first, Some(i)) {
                Entered::Linearized => return Some(true),
                Entered::GaveUp => return None,
                Entered::SeenBefore => flip(set, i),
                Entered::Open(frame) => stack.push(frame),
            }
        }
        Some(false)
    }

    /// The state reached with `set`: done, given up, already explored, or to explore.
    fn enter(
        &mut self,
        set: &[u64],
        value: Option<String>,
        done: usize,
        first: usize,
        via: Option<usize>,
    ) -> Entered {
        if done == self.required_count {
            return Entered::Linearized;
        }
        if self.explored > SEARCH_LIMIT {
            return Entered::GaveUp;
        }
        let n = self.ops.len();
        let mut first = first;
        while first < n && is_set(set, first) {
            first += 1;
        }
        // Everything before `first` is in the set: the words from there on tell the rest.
        let from = (first / 64).min(set.len());
        let to = set
            .iter()
            .rposition(|w| *w != 0)
            .map_or(from, |last| last + 1);
        let words = set[from..to.max(from)].to_vec();
        if !self.seen.insert((first, words, value.clone())) {
            return Entered::SeenBefore;
        }
        self.explored += 1;
        // Operations are in invocation order: none invoked after the earliest completion
        // found so far can lower it.
        let mut horizon: Option<Instant> = None;
        for i in first..n {
            let op = self.ops[i];
            if horizon.is_some_and(|h| op.invoked > h) {
                break;
            }
            if let (false, Some(completed)) = (is_set(set, i), op.completed) {
                horizon = Some(horizon.map_or(completed, |h| h.min(completed)));
            }
        }
        Entered::Open(Frame {
            value,
            done,
            first,
            horizon,
            next: first,
            via,
        })
    }

    /// The next operation that may follow in `frame`'s state: not in the set, invoked
    /// before the horizon, and a put or a read of the register's value.
    fn candidate(&self, set: &[u64], frame: &Frame) -> Option<usize> {
        (frame.next..self.ops.len())
            .take_while(|i| frame.horizon.is_none_or(|h| self.ops[*i].invoked <= h))
            .find(|i| {
                !is_set(set, *i)
                    && match (&self.ops[*i].call, &self.ops[*i].outcome) {
                        (Call::Put(_), _) => true,
                        (Call::Get, Outcome::Read(seen)) => *seen == frame.value,
                        _ => false,
                    }
            })
    }
}

/// Checks every key of a history, the keys side by side; returns the operations checked
/// and the keys that are not linearizable (or that the search could not decide).
pub fn check_keys(history: &BTreeMap<String, Vec<Operation>>) -> (usize, Vec<String>) {
    let verdicts: Vec<(String, Verdict)> = std::thread::scope(|scope| {
        let checks: Vec<_> = history
            .iter()
            .map(|(key, ops)| (key.clone(), scope.spawn(move || check_register(ops))))
            .collect();
        checks
            .into_iter()
            .map(|(key, check)| (key, check.join().expect("the checker does not panic")))
            .collect()
    });
    let mut checked = 0;
    let mut bad = Vec::new();
    for (key, verdict) in verdicts {
        checked += verdict.operations;
        match verdict.linearizable {
            Some(true) => {}
            Some(false) => bad.push(format!("{key}: not linearizable")),
            None => bad.push(format!(
                "{key}: undecided ({} operations, search gave up after {SEARCH_LIMIT} states)",
                verdict.operations
            )),
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
        assert_eq!(check_register(&history).linearizable, Some(true));
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let t = Instant::now();
        let history = vec![
            op(t, 0, Some(10), put("a"), Outcome::Written),
            op(t, 20, Some(30), put("b"), Outcome::Written),
            op(t, 40, Some(50), Call::Get, read(Some("a"))),
        ];
        assert_eq!(check_register(&history).linearizable, Some(false));
        let history = vec![
            op(t, 0, Some(10), put("a"), Outcome::Written),
            op(t, 40, Some(50), Call::Get, read(None)),
        ];
        assert_eq!(check_register(&history).linearizable, Some(false));
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
        assert_eq!(check_register(&history).linearizable, Some(false));
    }

    #[test]
    fn unknown_writes_may_or_may_not_have_happened() {
        let t = Instant::now();
        let took_effect = vec![
            op(t, 0, None, put("a"), Outcome::Unknown),
            op(t, 50, Some(60), Call::Get, read(Some("a"))),
        ];
        assert_eq!(check_register(&took_effect).linearizable, Some(true));
        let did_not = vec![
            op(t, 0, None, put("a"), Outcome::Unknown),
            op(t, 50, Some(60), Call::Get, read(None)),
        ];
        assert_eq!(check_register(&did_not).linearizable, Some(true));
        // But a value nobody wrote is never read.
        let invented = vec![
            op(t, 0, None, put("a"), Outcome::Unknown),
            op(t, 50, Some(60), Call::Get, read(Some("z"))),
        ];
        assert_eq!(check_register(&invented).linearizable, Some(false));
    }

    /// A long history of overlapping operations (each overlaps the next two), every
    /// 50th put with its outcome unknown, linearized at a point inside each operation.
    fn long_history(n: u64) -> Vec<Operation> {
        let t = Instant::now();
        let mut value: Option<String> = None;
        let mut history = Vec::new();
        for i in 0..n {
            let (from, to) = (i * 10, i * 10 + 25);
            if i % 2 == 0 {
                let v = format!("v{i}");
                value = Some(v.clone());
                let unknown = i % 100 == 0;
                history.push(op(
                    t,
                    from,
                    (!unknown).then_some(to),
                    put(&v),
                    if unknown {
                        Outcome::Unknown
                    } else {
                        Outcome::Written
                    },
                ));
            } else {
                history.push(op(t, from, Some(to), Call::Get, read(value.as_deref())));
            }
        }
        history
    }

    /// Long histories are checked in time near-linear in their length (the search only
    /// looks at operations that overlap), and a stale read deep inside one is still
    /// caught.
    #[test]
    fn long_histories_are_checked_and_a_stale_read_in_one_is_caught() {
        let history = long_history(60_000);
        let started = Instant::now();
        let verdict = check_register(&history);
        println!(
            "60,000 operations: {:?} after {} states in {:?}",
            verdict.linearizable,
            verdict.explored,
            started.elapsed()
        );
        assert_eq!(verdict.linearizable, Some(true));
        let mut stale = history;
        stale[40_001].outcome = read(Some("v30000"));
        assert_eq!(check_register(&stale).linearizable, Some(false));
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
