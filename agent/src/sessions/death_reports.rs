//! Reporting the deaths gossip declares, so the core closes the dead node's sessions.
//!
//! The core knows nothing of gossip. Every agent compares the node sessions its replica
//! shows with what its gossip view says, and reports `CloseNode{name, incarnation}` for
//! each session whose incarnation the pool declared dead (or has seen superseded by a
//! newer one). The report is repeated while the replica still shows the session open, so
//! none is forgotten across leader changes, lost writes or restarts.
//!
//! To keep a fleet from sending one report per agent, only a few agents report at once:
//! the agent that declared the death itself (its probe failed and its suspicion ran out,
//! so it is the first to know) and the few ranked first for the dead node by a hash of
//! both names. A few more, ranked next, report if the session is still open after
//! `BACKUP_REPORT_DELAY`; the rest never do.
//!
//! The core refuses a report while it hears the node itself (a gossip partition, not a
//! death: `corral_core::server::liveness`); the agent then holds that death back for
//! `REFUSED_BACKOFF`.
//!
//! ```text
//!  gossip member event ─┐
//!  CHECK_INTERVAL tick ─┴─► check: replica's node sessions × gossip view ─► due deaths
//!                              (rank, declared here, backup delay, REPORT_INTERVAL)
//!                                                                   │
//!                                        CloseNode to the core ◄────┘ one task each
//! ```
//!
//! A check runs as soon as gossip reports a death, so the report leaves the moment this
//! agent learns of it; the tick repeats reports and catches the rest (a session that
//! reaches the replica after its death did, an incarnation superseded by a newer one).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use corral_net::client::{ClientError, CoreClient};
use corral_net::rpc::CoreError;
use corral_proto::api::{MemberInfo, MemberState};
use corral_proto::{Command, SessionOwner};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use crate::gossip::{Dead, GossipView};
use crate::replica::SharedReplica;

/// Agents ranked first for a death, which report it at once.
pub const FIRST_REPORTERS: usize = 3;

/// Agents ranked after the first that report a death still not committed after
/// `BACKUP_REPORT_DELAY`; those ranked lower never do. Twelve ranked reporters and the one
/// that declared the death cover reporters that are dead or cut off from the core
/// themselves; more would mostly repeat a refusal (the core hears the node), and a pool
/// cut in two must not send one report per member per death.
pub const BACKUP_REPORTERS: usize = 9;

/// When the backup reporters report a death that is still not committed.
pub const BACKUP_REPORT_DELAY: Duration = Duration::from_secs(3);

/// How long an agent holds back a death the core refused because it hears the node.
pub const REFUSED_BACKOFF: Duration = Duration::from_secs(5);

/// Least time between two reports of the same death by one agent.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// How often the check runs when gossip reports nothing.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// A node session the core should close.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Death {
    pub name: String,
    pub incarnation: u64,
}

/// The order in which members report the death of `dead`: lowest first. Deterministic,
/// so every agent agrees on it without a message.
pub fn rank_hash(dead: &str, member: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    dead.hash(&mut hasher);
    member.hash(&mut hasher);
    hasher.finish()
}

/// Whether `me` is among the `FIRST_REPORTERS` live members ranked first to report the
/// death of `dead`.
pub fn ranks_first<S: AsRef<str>>(dead: &str, me: &str, alive: impl Iterator<Item = S>) -> bool {
    ranks_within(dead, me, alive, FIRST_REPORTERS)
}

/// Whether `me` is among the `n` live members ranked first to report the death of `dead`.
/// Stops at the `n`th member ranked before `me`: after a mass death in a large pool, most
/// agents learn they are not among the first from a few names, not the whole pool.
pub fn ranks_within<S: AsRef<str>>(
    dead: &str,
    me: &str,
    alive: impl Iterator<Item = S>,
    n: usize,
) -> bool {
    let mine = (rank_hash(dead, me), me);
    alive
        .filter(|name| {
            let name = name.as_ref();
            name != dead && name != me && (rank_hash(dead, name), name) < mine
        })
        .take(n)
        .count()
        < n
}

/// Whether `me` reports the death of `dead` now, `dead_for` after gossip declared it: at
/// once when it declared the death itself or ranks among the first reporters among the
/// members it holds alive (`alive`, asked again for each ranking), after
/// `BACKUP_REPORT_DELAY` when it ranks among the backups, never otherwise. The agent's
/// rule, which the simulations run for every simulated host.
pub fn report_due<I, S>(
    dead: &str,
    me: &str,
    declared_here: bool,
    dead_for: Duration,
    alive: impl Fn() -> I,
) -> bool
where
    I: Iterator<Item = S>,
    S: AsRef<str>,
{
    declared_here
        || ranks_first(dead, me, alive())
        || (dead_for >= BACKUP_REPORT_DELAY
            && ranks_within(dead, me, alive(), FIRST_REPORTERS + BACKUP_REPORTERS))
}

/// What the reporting rule reads of an agent's gossip view: the agent's [`GossipView`],
/// or a simulated host's.
pub trait MemberView {
    /// Whether the pool holds incarnation `incarnation` of `name` dead (declared down, or
    /// a newer incarnation seen), since when, and whether this agent declared it.
    fn is_dead(&self, name: &str, incarnation: u64) -> Option<Dead>;
    /// The names of the members held alive (alive or suspect).
    fn alive_names(&self) -> impl Iterator<Item = impl AsRef<str>>;
}

impl MemberView for GossipView {
    fn is_dead(&self, name: &str, incarnation: u64) -> Option<Dead> {
        GossipView::is_dead(self, name, incarnation)
    }

    fn alive_names(&self) -> impl Iterator<Item = impl AsRef<str>> {
        GossipView::alive_names(self)
    }
}

/// The agent's death reporting as a plain value, free of I/O and of clocks: at each check
/// it is given the agent's view, the node sessions its replica shows open and the time,
/// and answers the reports to send now; told of a refusal, it holds that death back.
/// `watch_deaths` drives it in the agent; the simulations drive it for every simulated
/// host.
#[derive(Debug)]
pub struct DeathReporter {
    me: String,
    pacer: ReportPacer,
}

impl DeathReporter {
    pub fn new(me: String) -> Self {
        DeathReporter {
            me,
            pacer: ReportPacer::default(),
        }
    }

    /// The reports to send now: the deaths the rule finds due ([`deaths_to_report`]),
    /// through the pacer.
    pub fn check(
        &mut self,
        view: &impl MemberView,
        sessions: impl Iterator<Item = (String, u64)>,
        now: Instant,
    ) -> Vec<Death> {
        let due = deaths_to_report(view, sessions, &self.me, now);
        self.pacer.to_send(due, now)
    }

    /// The core refused `death`: it hears the node, so only gossip lost it.
    pub fn refused(&mut self, death: Death, now: Instant) {
        self.pacer.refused(death, now);
    }
}

/// The deaths this agent should report now. `sessions` are the open node sessions the
/// replica shows, as (name, incarnation).
pub fn deaths_to_report(
    view: &impl MemberView,
    sessions: impl Iterator<Item = (String, u64)>,
    me: &str,
    now: Instant,
) -> Vec<Death> {
    sessions
        .filter(|(name, _)| name != me)
        .filter_map(|(name, incarnation)| {
            let dead = view.is_dead(&name, incarnation)?;
            let due = report_due(
                &name,
                me,
                dead.declared_here,
                now.duration_since(dead.since),
                || view.alive_names(),
            );
            due.then_some(Death { name, incarnation })
        })
        .collect()
}

/// Which of the deaths due at a check go out now: each at most once per
/// `REPORT_INTERVAL`, and none for `REFUSED_BACKOFF` after the core refused it.
#[derive(Debug, Default)]
pub struct ReportPacer {
    last_sent: HashMap<Death, Instant>,
    refused: HashMap<Death, Instant>,
}

impl ReportPacer {
    pub fn to_send(&mut self, due: Vec<Death>, now: Instant) -> Vec<Death> {
        self.last_sent.retain(|death, _| due.contains(death));
        self.refused
            .retain(|death, at| due.contains(death) && now.duration_since(*at) < REFUSED_BACKOFF);
        due.into_iter()
            .filter(|death| {
                let recent = self
                    .last_sent
                    .get(death)
                    .is_some_and(|at| now.duration_since(*at) < REPORT_INTERVAL)
                    || self.refused.contains_key(death);
                if !recent {
                    self.last_sent.insert(death.clone(), now);
                }
                !recent
            })
            .collect()
    }

    /// The core refused `death`: it hears the node, so only gossip lost it.
    pub fn refused(&mut self, death: Death, now: Instant) {
        self.refused.insert(death, now);
    }
}

/// The open node sessions `replica` shows, as (name, incarnation).
fn node_sessions(replica: &SharedReplica) -> Vec<(String, u64)> {
    replica.read(|r| {
        r.machine()
            .sessions()
            .filter_map(|s| match s.owner {
                SessionOwner::Node { name, incarnation } => Some((name, incarnation)),
                SessionOwner::Client { .. } => None,
            })
            .collect()
    })
}

/// Checks on every gossip member event and every `CHECK_INTERVAL`, and sends each death
/// to report into `reports`. Returns at shutdown.
pub async fn watch_deaths(
    me: String,
    sessions: impl Fn() -> Vec<(String, u64)>,
    view: Arc<parking_lot::RwLock<GossipView>>,
    events: broadcast::Receiver<MemberInfo>,
    mut shutdown: watch::Receiver<bool>,
    reports: mpsc::UnboundedSender<Death>,
    mut refusals: mpsc::UnboundedReceiver<Death>,
) {
    let mut reporter = DeathReporter::new(me);
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut events = Some(events);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            open = member_changes(&mut events) => if !open {
                // The gossip task is gone (the agent is stopping): the tick alone goes on.
                events = None;
            },
            Some(death) = refusals.recv() => {
                reporter.refused(death, Instant::now());
                continue;
            }
            _ = shutdown.changed() => return,
        }
        // The replica first, then the view: the gossip task waits on the view's lock only
        // for the comparison, not for the replica's too.
        let open = sessions();
        let now = Instant::now();
        let send = reporter.check(&*view.read(), open.into_iter(), now);
        for death in send {
            if reports.send(death).is_err() {
                return;
            }
        }
    }
}

/// Waits for gossip's next death and takes every event queued behind it, since one check
/// covers them all. Other changes (suspicions, refutations, joins) wait for the tick: they
/// come often in a large pool and report nothing. False when the events have ended; never
/// returns without them.
async fn member_changes(events: &mut Option<broadcast::Receiver<MemberInfo>>) -> bool {
    let Some(receiver) = events else {
        return std::future::pending().await;
    };
    loop {
        match receiver.recv().await {
            Ok(info) if info.state != MemberState::Down => continue,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) =
                    receiver.try_recv()
                {}
                return true;
            }
            Err(broadcast::error::RecvError::Closed) => return false,
        }
    }
}

pub async fn run(
    me: String,
    core: Arc<CoreClient>,
    replica: Arc<SharedReplica>,
    view: Arc<parking_lot::RwLock<GossipView>>,
    events: broadcast::Receiver<MemberInfo>,
    shutdown: watch::Receiver<bool>,
) {
    let (reports, mut due) = mpsc::unbounded_channel();
    let (refused, refusals) = mpsc::unbounded_channel();
    let watch = watch_deaths(
        me,
        move || node_sessions(&replica),
        view,
        events,
        shutdown,
        reports,
        refusals,
    );
    let send = async move {
        while let Some(death) = due.recv().await {
            tokio::spawn(report(core.clone(), death, refused.clone()));
        }
    };
    tokio::join!(watch, send);
}

async fn report(core: Arc<CoreClient>, death: Death, refused: mpsc::UnboundedSender<Death>) {
    let command = Command::CloseNode {
        name: death.name.clone(),
        incarnation: death.incarnation,
    };
    match core.write(&command).await {
        Ok(response) => tracing::info!(
            node = death.name,
            incarnation = death.incarnation,
            revision = response.revision,
            "reported a dead node to the core"
        ),
        Err(ClientError::Core(CoreError::NodeAlive { member, .. })) => {
            tracing::info!(
                node = death.name,
                incarnation = death.incarnation,
                member,
                "death report refused: the core hears the node, so only gossip lost it"
            );
            let _ = refused.send(death);
        }
        // The node is held for its grace: reported again on a later check (every
        // REPORT_INTERVAL), which goes through once the grace ran out.
        Err(ClientError::Core(CoreError::NodeInGrace { retry_ms, .. })) => tracing::debug!(
            node = death.name,
            incarnation = death.incarnation,
            retry_ms,
            "death report held back: the core holds the node for its grace"
        ),
        // Repeated on a later check while the session stays open.
        Err(e) => tracing::warn!(node = death.name, error = %e, "death report failed"),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::gossip::NodeIdentity;

    fn member(name: &str, port: u16) -> NodeIdentity {
        NodeIdentity {
            name: name.into(),
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            incarnation: 1,
        }
    }

    /// A view of `names`, all alive, and the first of them that is not ranked among the
    /// first reporters of `dead`'s death.
    fn view_and_a_late_reporter(names: &[&str], dead: &str) -> (GossipView, String) {
        let mut view = GossipView::default();
        for (port, name) in (1..).zip(names) {
            view.record(&member(name, port), MemberState::Alive, false);
        }
        let late = names
            .iter()
            .find(|me| **me != dead && !ranks_first(dead, me, names.iter().copied()))
            .expect("7 members leave 3 ranked after the first 3")
            .to_string();
        (view, late)
    }

    const NAMES: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "dead"];

    #[test]
    fn the_agent_that_declared_a_death_reports_it_at_once_whatever_its_rank() {
        let (mut view, me) = view_and_a_late_reporter(&NAMES, "dead");
        let sessions = || vec![("dead".to_string(), 1)].into_iter();
        view.record(&member("dead", 8), MemberState::Down, false);
        let now = Instant::now();
        assert_eq!(deaths_to_report(&view, sessions(), &me, now), vec![]);
        let later = now + BACKUP_REPORT_DELAY;
        assert_eq!(deaths_to_report(&view, sessions(), &me, later).len(), 1);

        // The same death, declared by this agent's own suspicion.
        let mut view = view_and_a_late_reporter(&NAMES, "dead").0;
        view.record(&member("dead", 8), MemberState::Down, true);
        assert_eq!(
            deaths_to_report(&view, sessions(), &me, now),
            vec![Death {
                name: "dead".into(),
                incarnation: 1
            }]
        );
        // A newer incarnation alive: the old one is dead, but no longer declared here.
        let mut renewed = member("dead", 8);
        renewed.incarnation = 2;
        view.record(&renewed, MemberState::Alive, false);
        assert_eq!(deaths_to_report(&view, sessions(), &me, now), vec![]);
    }

    /// A pacer that has just sent the death of "dead", that death, and when it was sent.
    fn a_death_sent_once() -> (ReportPacer, Death, Instant) {
        let mut pacer = ReportPacer::default();
        let death = Death {
            name: "dead".into(),
            incarnation: 1,
        };
        let now = Instant::now();
        assert_eq!(pacer.to_send(vec![death.clone()], now).len(), 1);
        (pacer, death, now)
    }

    #[test]
    fn a_death_is_sent_again_only_after_the_report_interval() {
        let (mut pacer, death, now) = a_death_sent_once();
        let soon = now + REPORT_INTERVAL / 2;
        assert_eq!(pacer.to_send(vec![death.clone()], soon), vec![]);
        assert_eq!(
            pacer
                .to_send(vec![death.clone()], now + REPORT_INTERVAL)
                .len(),
            1
        );
        // Once no longer due (committed), it is forgotten, and sent at once if due again.
        assert_eq!(pacer.to_send(vec![], now + REPORT_INTERVAL), vec![]);
        assert_eq!(pacer.to_send(vec![death], soon + REPORT_INTERVAL).len(), 1);
    }

    /// On a paused clock: the report of a death leaves when gossip's event of it arrives,
    /// with no time passing; other events do not run the check, which the tick then does.
    #[tokio::test(start_paused = true)]
    async fn a_death_is_reported_on_the_gossip_event_not_on_the_next_tick() {
        let names = ["a", "b", "c", "d", "e", "f", "g", "dead", "dead2"];
        let (view, me) = view_and_a_late_reporter(&names, "dead");
        let view = Arc::new(parking_lot::RwLock::new(view));
        let (events, event_receiver) = broadcast::channel(16);
        let (_stop, shutdown) = watch::channel(false);
        let (reports, mut reported) = mpsc::unbounded_channel();
        let (_refused, refusals) = mpsc::unbounded_channel();
        let started = Instant::now();
        tokio::spawn(watch_deaths(
            me,
            || vec![("dead".to_string(), 1), ("dead2".to_string(), 1)],
            view.clone(),
            event_receiver,
            shutdown,
            reports,
            refusals,
        ));
        // Past the first tick, well before the second.
        tokio::time::sleep(CHECK_INTERVAL / 4).await;
        assert!(reported.try_recv().is_err());

        // A death in the view, but only a suspicion announced: the tick finds the death.
        view.write()
            .record(&member("dead", 8), MemberState::Down, true);
        let suspect = view
            .write()
            .record(&member("b", 2), MemberState::Suspect, false)
            .expect("a change");
        events.send(suspect).unwrap();
        assert_eq!(reported.recv().await.expect("a report").name, "dead");
        assert_eq!(
            Instant::now(),
            started + CHECK_INTERVAL,
            "a suspicion ran the check"
        );

        // A death announced: reported at once.
        tokio::time::sleep(CHECK_INTERVAL / 4).await;
        let declared_at = Instant::now();
        let down = view
            .write()
            .record(&member("dead2", 9), MemberState::Down, true)
            .expect("a change");
        events.send(down).unwrap();
        assert_eq!(reported.recv().await.expect("a report").name, "dead2");
        assert_eq!(
            Instant::now(),
            declared_at,
            "reported at a tick, not on the event"
        );
    }

    #[test]
    fn a_refused_death_is_held_back_until_the_backoff_passes_or_it_is_due_anew() {
        let (mut pacer, death, now) = a_death_sent_once();
        pacer.refused(death.clone(), now);
        let later = now + REPORT_INTERVAL;
        assert_eq!(pacer.to_send(vec![death.clone()], later), vec![]);
        let almost = now + REFUSED_BACKOFF - Duration::from_millis(1);
        assert_eq!(pacer.to_send(vec![death.clone()], almost), vec![]);
        assert_eq!(
            pacer
                .to_send(vec![death.clone()], now + REFUSED_BACKOFF)
                .len(),
            1
        );
        // A refused death that stops being due (the node came back) is forgotten: if it
        // dies again, it is reported at once.
        pacer.refused(death.clone(), later);
        assert_eq!(pacer.to_send(vec![], later), vec![]);
        assert_eq!(pacer.to_send(vec![death], later).len(), 1);
    }

    /// In a pool of 40, 3 members report a death at once and 9 more after the backup
    /// delay; the other 27 never do, whatever the time.
    #[test]
    fn backups_are_the_next_ranked_members_and_no_more() {
        let names: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
        let mut view = GossipView::default();
        for (port, name) in (1..).zip(&names) {
            view.record(&member(name, port), MemberState::Alive, false);
        }
        view.record(&member("m0", 1), MemberState::Down, false);
        let sessions = || vec![("m0".to_string(), 1)].into_iter();
        let reporters = |at: Instant| {
            names
                .iter()
                .filter(|me| !deaths_to_report(&view, sessions(), me, at).is_empty())
                .count()
        };
        let now = Instant::now();
        assert_eq!(reporters(now), FIRST_REPORTERS);
        let later = now + BACKUP_REPORT_DELAY;
        assert_eq!(reporters(later), FIRST_REPORTERS + BACKUP_REPORTERS);
        assert_eq!(
            reporters(later + Duration::from_secs(3600)),
            FIRST_REPORTERS + BACKUP_REPORTERS
        );
    }

    #[test]
    fn exactly_the_first_ranked_members_report_at_once() {
        let members: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        let first: Vec<&String> = members
            .iter()
            .filter(|me| ranks_first("dead", me, members.iter().map(String::as_str)))
            .collect();
        assert_eq!(first.len(), FIRST_REPORTERS);
    }
}
