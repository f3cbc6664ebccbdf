//! Which agents this member hears from, so that a gossip partition cannot close the
//! sessions of agents the core still reaches.
//!
//! ```text
//!  agent ──watch stream, a beat {name, incarnation} every BEAT_INTERVAL──► member: Liveness
//!  agent ──CloseNode{name, incarnation}──► leader ──Heard?──► every member
//!                                              any heard it within HEARD_WITHIN: refused
//!                                              (CoreError::NodeAlive), else proposed
//! ```
//!
//! Gossip declares a member dead when the members that probe it stop hearing from it. A
//! partition of the gossip network alone (a firewall rule, a broken overlay) makes each
//! side declare the other dead while every agent still talks to the core; the core, which
//! hears the reported agent, is the one that knows better. A frozen or dead host beats no
//! more: by the time gossip declares it (suspicion 1.5 s after its probe failed, at the
//! defaults) its last beat is older than `HEARD_WITHIN`, so the report goes through at once.
//! A beat of a newer incarnation counts too: a report of the old one is then either moot
//! (a restarted agent's new session ends the old one) or would end the session a renewed
//! agent is carrying over. Free of I/O and of clocks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub use corral_net::rpc::{BEAT_FRAME_MAX, BEAT_INTERVAL};

/// A node heard within this long is alive to the core: more than two beats, less than
/// the shortest time gossip takes to declare a death at its defaults.
pub const HEARD_WITHIN: Duration = Duration::from_millis(1250);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Heard {
    incarnation: u64,
    at: Instant,
    /// The stream that beat last: only its end forgets the node.
    stream: u64,
}

/// The last beat of every node whose watch stream this member serves.
#[derive(Debug, Default)]
pub struct Liveness {
    nodes: HashMap<String, Heard>,
}

impl Liveness {
    pub fn beat(&mut self, name: &str, incarnation: u64, stream: u64, now: Instant) {
        let heard = Heard {
            incarnation,
            at: now,
            stream,
        };
        match self.nodes.get_mut(name) {
            Some(entry) => *entry = heard,
            None => {
                self.nodes.insert(name.to_string(), heard);
            }
        }
    }

    /// The watch stream `stream` of `name` ended: a process that is gone beats no more.
    pub fn stream_ended(&mut self, name: &str, stream: u64) {
        if self.nodes.get(name).is_some_and(|h| h.stream == stream) {
            self.nodes.remove(name);
        }
    }

    /// Whether `name` at `incarnation` or newer beat within [`HEARD_WITHIN`] of `now`.
    pub fn heard(&self, name: &str, incarnation: u64, now: Instant) -> bool {
        self.nodes.get(name).is_some_and(|h| {
            h.incarnation >= incarnation && now.saturating_duration_since(h.at) <= HEARD_WITHIN
        })
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// How long the leader trusts another member's "I hear it" for further reports of the
/// same node: a partition sends each death several reports at once, one question to the
/// members settles them all. A "no" is never kept, so a real death waits for nothing.
pub const HEARD_ANSWER_KEPT: Duration = Duration::from_millis(250);

/// Answers kept beyond which the oldest go at the next answer.
const HEARD_ANSWERS_MAX: usize = 16_384;

/// The leader's recent "a member hears it" answers.
#[derive(Debug, Default)]
pub struct HeardAnswers {
    answers: HashMap<String, (u64, u64, Instant)>,
}

impl HeardAnswers {
    /// The member that heard `name` at `incarnation` or newer within
    /// [`HEARD_ANSWER_KEPT`] of `now`, by an answer kept.
    pub fn get(&self, name: &str, incarnation: u64, now: Instant) -> Option<u64> {
        let (heard, member, at) = self.answers.get(name)?;
        (*heard >= incarnation && now.saturating_duration_since(*at) <= HEARD_ANSWER_KEPT)
            .then_some(*member)
    }

    pub fn keep(&mut self, name: &str, incarnation: u64, member: u64, now: Instant) {
        if self.answers.len() >= HEARD_ANSWERS_MAX {
            self.answers
                .retain(|_, (_, _, at)| now.saturating_duration_since(*at) <= HEARD_ANSWER_KEPT);
        }
        if self.answers.len() < HEARD_ANSWERS_MAX {
            self.answers
                .insert(name.to_string(), (incarnation, member, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_heard_until_its_beats_age_out_or_its_stream_ends() {
        let mut liveness = Liveness::default();
        let t0 = Instant::now();
        assert!(!liveness.heard("a1", 7, t0), "never heard");
        liveness.beat("a1", 7, 1, t0);
        assert!(liveness.heard("a1", 7, t0 + HEARD_WITHIN));
        assert!(!liveness.heard("a1", 7, t0 + HEARD_WITHIN + Duration::from_millis(1)));
        // An older incarnation is covered by a newer beat; a newer one is not.
        assert!(liveness.heard("a1", 6, t0));
        assert!(!liveness.heard("a1", 8, t0));
        assert!(!liveness.heard("a2", 7, t0));

        // The node moved to another stream: the old stream's end does not forget it.
        liveness.beat("a1", 7, 2, t0);
        liveness.stream_ended("a1", 1);
        assert!(liveness.heard("a1", 7, t0));
        liveness.stream_ended("a1", 2);
        assert!(!liveness.heard("a1", 7, t0));
        assert!(liveness.is_empty());
    }

    #[test]
    fn a_kept_answer_settles_reports_for_a_moment_only() {
        let mut answers = HeardAnswers::default();
        let t0 = Instant::now();
        answers.keep("a1", 7, 2, t0);
        assert_eq!(answers.get("a1", 7, t0 + HEARD_ANSWER_KEPT), Some(2));
        assert_eq!(answers.get("a1", 6, t0), Some(2));
        assert_eq!(
            answers.get("a1", 8, t0),
            None,
            "a newer incarnation is asked anew"
        );
        assert_eq!(
            answers.get("a1", 7, t0 + HEARD_ANSWER_KEPT + Duration::from_millis(1)),
            None
        );
        assert_eq!(answers.get("a2", 1, t0), None);
    }
}
