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
//! agent is carrying over.
//!
//! A node no member hears is not released at once either: its session is held for the
//! node grace (`--node-grace-ms`) after the last beat any member heard, so that an agent
//! restarted in that time (a new binary, SIGKILL and start again) takes its session back
//! with everything bound to it ([`hearing`]). The last beat is kept after the stream
//! ends for that. Free of I/O and of clocks.
//!
//! ```text
//!  heard within HEARD_WITHIN by a member ─► Alive (refused: NodeAlive)
//!  last beat younger than the grace      ─► InGrace (refused: NodeInGrace, reported again)
//!  older, or never heard                 ─► Silent (the report is proposed)
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub use corral_net::rpc::{BEAT_FRAME_MAX, BEAT_INTERVAL};

/// A node heard within this long is alive to the core: more than two beats, less than
/// the shortest time gossip takes to declare a death at its defaults.
pub const HEARD_WITHIN: Duration = Duration::from_millis(1250);

/// Longest node grace a member accepts; beats older than this are forgotten once the
/// stream that carried them ended.
pub const NODE_GRACE_MAX: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Heard {
    incarnation: u64,
    at: Instant,
    /// The stream that beat last: only its end stops the node being heard.
    stream: u64,
    /// That stream ended: the beat only dates the node's silence.
    ended: bool,
}

/// The last beat of every node whose watch stream this member serves.
#[derive(Debug, Default)]
pub struct Liveness {
    nodes: HashMap<String, Heard>,
    /// Streams ended since beats older than [`NODE_GRACE_MAX`] were last forgotten.
    ended_since_pruned: usize,
}

/// Stream ends between two passes that forget old beats.
const PRUNE_EVERY: usize = 1024;

impl Liveness {
    pub fn beat(&mut self, name: &str, incarnation: u64, stream: u64, now: Instant) {
        let heard = Heard {
            incarnation,
            at: now,
            stream,
            ended: false,
        };
        match self.nodes.get_mut(name) {
            Some(entry) => *entry = heard,
            None => {
                self.nodes.insert(name.to_string(), heard);
            }
        }
    }

    /// The watch stream `stream` of `name` ended: a process that is gone beats no more.
    /// Its last beat is kept to date its silence; those older than [`NODE_GRACE_MAX`] go.
    pub fn stream_ended(&mut self, name: &str, stream: u64, now: Instant) {
        if let Some(heard) = self.nodes.get_mut(name)
            && heard.stream == stream
        {
            heard.ended = true;
        }
        self.ended_since_pruned += 1;
        if self.ended_since_pruned >= PRUNE_EVERY {
            self.forget_old(now);
        }
    }

    /// Forgets the beats of ended streams older than [`NODE_GRACE_MAX`].
    pub fn forget_old(&mut self, now: Instant) {
        self.ended_since_pruned = 0;
        self.nodes
            .retain(|_, h| !h.ended || now.saturating_duration_since(h.at) <= NODE_GRACE_MAX);
    }

    /// Whether `name` at `incarnation` or newer beat within [`HEARD_WITHIN`] of `now`, on
    /// a stream still open.
    pub fn heard(&self, name: &str, incarnation: u64, now: Instant) -> bool {
        self.nodes.get(name).is_some_and(|h| {
            !h.ended
                && h.incarnation >= incarnation
                && now.saturating_duration_since(h.at) <= HEARD_WITHIN
        })
    }

    /// How long ago `name` at `incarnation` or newer last beat here; None when this member
    /// has not heard it (since it started, or within [`NODE_GRACE_MAX`]).
    pub fn silent_for(&self, name: &str, incarnation: u64, now: Instant) -> Option<Duration> {
        self.nodes
            .get(name)
            .filter(|h| h.incarnation >= incarnation)
            .map(|h| now.saturating_duration_since(h.at))
    }

    /// Whether any node's stream is open here.
    pub fn hears_any(&self) -> bool {
        self.nodes.values().any(|h| !h.ended)
    }
}

/// What the core makes of a death report, from each member's answer for the node:
/// whether it hears it, and how long ago it last heard it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hearing {
    /// `member` hears it: only gossip lost it.
    Alive { member: u64 },
    /// No member hears it, but one heard it less than the grace ago: its session is held
    /// for `remaining` more, for an agent restarting on the host.
    InGrace { remaining: Duration },
    /// Silent for the grace or longer, or never heard: the report goes through.
    Silent,
}

/// The verdict from the members' answers (member, heard, silent for).
pub fn hearing(
    answers: impl IntoIterator<Item = (u64, bool, Option<Duration>)>,
    grace: Duration,
) -> Hearing {
    let mut shortest: Option<Duration> = None;
    for (member, heard, silent) in answers {
        if heard {
            return Hearing::Alive { member };
        }
        if let Some(silent) = silent {
            shortest = Some(shortest.map_or(silent, |s| s.min(silent)));
        }
    }
    match shortest {
        Some(silent) if silent < grace => Hearing::InGrace {
            remaining: grace - silent,
        },
        _ => Hearing::Silent,
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
        liveness.stream_ended("a1", 1, t0);
        assert!(liveness.heard("a1", 7, t0));
        liveness.stream_ended("a1", 2, t0);
        assert!(!liveness.heard("a1", 7, t0));
        assert!(!liveness.hears_any());
    }

    #[test]
    fn silence_is_dated_from_the_last_beat_even_after_the_stream_ended() {
        let mut liveness = Liveness::default();
        let t0 = Instant::now();
        let later = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(liveness.silent_for("a1", 7, t0), None);
        liveness.beat("a1", 7, 1, t0);
        liveness.stream_ended("a1", 1, later(100));
        assert_eq!(
            liveness.silent_for("a1", 7, later(3000)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(liveness.silent_for("a1", 8, later(3000)), None);
        // Forgotten once older than the longest grace.
        liveness.forget_old(t0 + NODE_GRACE_MAX + Duration::from_secs(1));
        assert_eq!(liveness.silent_for("a1", 7, t0), None);
    }

    #[test]
    fn a_report_waits_out_the_grace_of_the_member_that_heard_the_node_last() {
        let grace = Duration::from_secs(5);
        let s = |ms| Some(Duration::from_millis(ms));
        assert_eq!(
            hearing([(1, false, s(4000)), (2, true, s(0))], grace),
            Hearing::Alive { member: 2 }
        );
        assert_eq!(
            hearing(
                [(1, false, s(4000)), (2, false, s(1500)), (3, false, None)],
                grace
            ),
            Hearing::InGrace {
                remaining: Duration::from_millis(3500)
            }
        );
        assert_eq!(
            hearing([(1, false, s(5000)), (2, false, None)], grace),
            Hearing::Silent
        );
        assert_eq!(hearing([(1, false, None)], grace), Hearing::Silent);
        assert_eq!(
            hearing([(1, false, s(100))], Duration::ZERO),
            Hearing::Silent,
            "no grace: released as soon as no member hears it"
        );
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
