//! Reporting the deaths gossip declares, so the core closes the dead node's sessions.
//!
//! The core knows nothing of gossip. Every agent compares the node sessions its replica
//! shows with what its gossip view says, and reports `CloseNode{name, incarnation}` for
//! each session whose incarnation the pool declared dead (or has seen superseded by a
//! newer one). The report is repeated while the replica still shows the session open, so
//! none is forgotten across leader changes, lost writes or restarts.
//!
//! To keep a fleet from sending one report per agent, only the few agents ranked first
//! for the dead node (by a hash of both names) report at once; the others report only if
//! the session is still open after `backup_delay`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use corral_core::client::CoreClient;
use corral_proto::{Command, SessionOwner};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::gossip::GossipView;
use crate::replica::SharedReplica;

/// Agents that report a death at once.
pub const FIRST_REPORTERS: usize = 3;

/// When the others report a death that is still not committed.
pub const BACKUP_REPORT_DELAY: Duration = Duration::from_secs(3);

/// Least time between two reports of the same death by one agent.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

const CHECK_INTERVAL: Duration = Duration::from_millis(100);

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

/// Where `me` ranks among the live members reporting the death of `dead` (0 = first).
pub fn reporter_rank<'a>(dead: &str, me: &str, alive: impl Iterator<Item = &'a str>) -> usize {
    let mine = (rank_hash(dead, me), me);
    alive
        .filter(|name| *name != dead && *name != me)
        .filter(|name| (rank_hash(dead, name), *name) < mine)
        .count()
}

/// The deaths this agent should report now. `sessions` are the open node sessions the
/// replica shows, as (name, incarnation).
pub fn deaths_to_report(
    view: &GossipView,
    sessions: impl Iterator<Item = (String, u64)>,
    me: &str,
    now: Instant,
) -> Vec<Death> {
    sessions
        .filter(|(name, _)| name != me)
        .filter_map(|(name, incarnation)| {
            let since = view.is_dead(&name, incarnation)?;
            let first = reporter_rank(&name, me, view.alive_names()) < FIRST_REPORTERS;
            (first || now.duration_since(since) >= BACKUP_REPORT_DELAY)
                .then_some(Death { name, incarnation })
        })
        .collect()
}

pub async fn run(
    me: String,
    core: Arc<CoreClient>,
    replica: Arc<SharedReplica>,
    view: Arc<parking_lot::RwLock<GossipView>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_sent: HashMap<Death, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let sessions: Vec<(String, u64)> = replica.read(|r| {
            r.machine()
                .sessions()
                .filter_map(|s| match s.owner {
                    SessionOwner::Node { name, incarnation } => Some((name, incarnation)),
                    SessionOwner::Client { .. } => None,
                })
                .collect()
        });
        let now = Instant::now();
        let deaths = deaths_to_report(&view.read(), sessions.into_iter(), &me, now);
        last_sent.retain(|death, _| deaths.contains(death));
        for death in deaths {
            if last_sent
                .get(&death)
                .is_some_and(|at| now.duration_since(*at) < REPORT_INTERVAL)
            {
                continue;
            }
            last_sent.insert(death.clone(), now);
            let core = core.clone();
            tokio::spawn(async move {
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
                    // Repeated on the next check while the session stays open.
                    Err(e) => tracing::warn!(node = death.name, error = %e, "death report failed"),
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_the_first_ranked_members_report_at_once() {
        let members: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        let first: Vec<&String> = members
            .iter()
            .filter(|me| {
                reporter_rank("dead", me, members.iter().map(String::as_str)) < FIRST_REPORTERS
            })
            .collect();
        assert_eq!(first.len(), FIRST_REPORTERS);
    }
}
