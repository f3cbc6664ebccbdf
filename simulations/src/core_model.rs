//! The core's side of a failover, as the simulations run it: agents report a death, the
//! core commits `CloseNode` after a commit latency, and the real state machine decides
//! the new masters; each revision then streams to every agent's replica.
//!
//! ```text
//!  MemberDown at agent ──(its declarer and the first-ranked at once; others after 3 s)──►
//!     report over a reliable link ──► commit latency ──► StateMachine::apply(CloseNode)
//!        ──► MasterChanged events ──► watch fan-out: each core member sends to its share
//!            of the agents one after another, each arriving after the link's latency
//! ```
//!
//! The Raft exchange inside the core is not simulated: the commit latency stands for it,
//! taken from `corral bench put` on three members (fsync on every member).

use std::collections::HashMap;

use corral_agent::sessions::node_session;
use corral_proto::{Answer, Command, Event, Revision, SessionId, SessionOwner};
use corral_state::StateMachine;
use rand::RngExt;
use rand::rngs::StdRng;

use crate::network::Micros;
use crate::sim_id::SimId;

#[derive(Clone, Debug, PartialEq)]
pub struct CoreConfig {
    /// Voting members; agents' watch streams are spread over them.
    pub members: u32,
    /// Time from a write reaching the leader to its commit (µs): the fixed part and the
    /// mean of an exponential tail.
    pub commit_us: Micros,
    pub commit_jitter_us: Micros,
    /// Time a core member spends sending one revision to one watching agent (µs).
    pub watch_send_us: Micros,
    /// Shards per member of the fleet, each with three replicas on distinct hosts.
    pub shards_per_member: f64,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            members: 3,
            // `corral bench put`, one client, three members on one machine: p50 1.93 ms,
            // p99 3.65 ms.
            commit_us: 1_900,
            commit_jitter_us: 400,
            watch_send_us: 4,
            shards_per_member: 0.25,
        }
    }
}

/// One replica placement: shard name, host index, priority.
pub type Placement = (String, u32, u32);

#[derive(Debug)]
pub struct CoreModel {
    config: CoreConfig,
    machine: StateMachine,
    /// When the last commit happened; commits are applied in order.
    last_commit: Micros,
    /// When each core member is next free to send a watch item.
    sender_free_at: Vec<Micros>,
    /// The revision at which each node name's session was last closed.
    closed_at: HashMap<String, Revision>,
    /// Bytes of watch items sent, over all agents.
    pub watch_bytes: u64,
    pub watch_items: u64,
    pub reports_received: u64,
    pub commits: u64,
}

/// What a committed command changed that the simulation follows.
#[derive(Debug, Default)]
pub struct Committed {
    pub revision: Revision,
    /// Hosts whose shards changed master in this revision.
    pub masters_lost_by: Vec<u32>,
    pub changed: bool,
    /// Encoded size of the revision's watch item.
    pub item_bytes: usize,
}

impl CoreModel {
    pub fn new(config: CoreConfig) -> Self {
        let senders = config.members.max(1) as usize;
        CoreModel {
            config,
            machine: StateMachine::new(),
            last_commit: 0,
            sender_free_at: vec![0; senders],
            closed_at: HashMap::new(),
            watch_bytes: 0,
            watch_items: 0,
            reports_received: 0,
            commits: 0,
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    pub fn machine(&self) -> &StateMachine {
        &self.machine
    }

    /// Opens the node sessions of `hosts` and places the shards, before the run starts.
    pub fn setup(
        &mut self,
        hosts: impl Iterator<Item = SimId>,
        placements: &[Placement],
    ) -> anyhow::Result<()> {
        let mut sessions: HashMap<u32, SessionId> = HashMap::new();
        for id in hosts {
            let session = self.open_node(id)?;
            sessions.insert(id.index, session);
        }
        for (shard, host, priority) in placements {
            if self.machine.shard(shard).is_none() {
                self.apply_checked(&Command::CreateShard {
                    name: shard.clone(),
                })?;
            }
            let session = *sessions
                .get(host)
                .ok_or_else(|| anyhow::anyhow!("no session for host {host}"))?;
            self.apply_checked(&Command::RegisterReplica {
                shard: shard.clone(),
                address: replica_address(*host),
                priority: *priority,
                session,
            })?;
        }
        Ok(())
    }

    fn open_node(&mut self, id: SimId) -> anyhow::Result<SessionId> {
        let answer = self.apply_checked(&Command::OpenSession {
            owner: SessionOwner::Node {
                name: SimId::name(id.index),
                incarnation: id.incarnation,
            },
        })?;
        match answer {
            Answer::SessionOpened { session, .. } => Ok(session),
            other => anyhow::bail!("unexpected answer to OpenSession: {other:?}"),
        }
    }

    fn apply_checked(&mut self, command: &Command) -> anyhow::Result<Answer> {
        let (response, _) = self.machine.apply(command);
        response
            .outcome
            .map_err(|e| anyhow::anyhow!("{command:?} refused: {e:?}"))
    }

    /// Whether `observer_revision` still shows the node session of `dead` open: what an
    /// agent's replica at that revision would say.
    pub fn session_open_at(&self, dead: SimId, observer_revision: Revision) -> bool {
        let name = SimId::name(dead.index);
        if let Some((_, incarnation)) = self.machine.node_session(&name)
            && incarnation <= dead.incarnation
        {
            return true;
        }
        self.closed_at
            .get(&name)
            .is_some_and(|closed| *closed > observer_revision)
    }

    /// When a write that reached the leader at `arrival` commits.
    pub fn commit_time(&mut self, arrival: Micros, rng: &mut StdRng) -> Micros {
        let jitter = if self.config.commit_jitter_us == 0 {
            0
        } else {
            let u: f64 = rng.random_range(f64::EPSILON..1.0);
            ((-u.ln()) * self.config.commit_jitter_us as f64) as Micros
        };
        let at = (arrival + self.config.commit_us + jitter).max(self.last_commit);
        self.last_commit = at;
        at
    }

    /// Applies a death report (`CloseNode`) at its commit.
    pub fn commit_close(&mut self, dead: SimId) -> Committed {
        self.commits += 1;
        let name = SimId::name(dead.index);
        let (response, events) = self.machine.apply(&Command::CloseNode {
            name: name.clone(),
            incarnation: dead.incarnation,
        });
        self.committed(response.revision, &events, Some(name))
    }

    /// Applies the node session of a renewed member, as its agent asks for it
    /// (`node_session::session_command`): its open session moves to the new incarnation
    /// (true), or, if the core closed it, a new one opens (false).
    pub fn commit_open(&mut self, id: SimId) -> (Committed, bool) {
        self.commits += 1;
        let name = SimId::name(id.index);
        let held = self.machine.node_session(&name);
        let command = node_session::session_command(held, &name, id.incarnation);
        let renew = matches!(command, Command::RenewNode { .. });
        let (response, events) = self.machine.apply(&command);
        if !renew || response.outcome.is_ok() {
            return (self.committed(response.revision, &events, None), renew);
        }
        let open = node_session::open_command(&name, id.incarnation);
        let (response, events) = self.machine.apply(&open);
        (self.committed(response.revision, &events, None), false)
    }

    fn committed(
        &mut self,
        revision: Revision,
        events: &[Event],
        closed: Option<String>,
    ) -> Committed {
        if events.is_empty() {
            return Committed {
                revision,
                ..Committed::default()
            };
        }
        let mut masters_lost_by = Vec::new();
        for event in events {
            match event {
                Event::SessionClosed {
                    owner: SessionOwner::Node { name, .. },
                    ..
                } => {
                    self.closed_at.insert(name.clone(), revision);
                }
                Event::MasterChanged {
                    previous: Some(previous),
                    ..
                } => {
                    if let Some(host) = host_of_replica(previous) {
                        masters_lost_by.push(host);
                    }
                }
                _ => {}
            }
        }
        if let Some(name) = closed {
            self.closed_at.entry(name).or_insert(revision);
        }
        masters_lost_by.sort_unstable();
        masters_lost_by.dedup();
        Committed {
            revision,
            masters_lost_by,
            changed: true,
            item_bytes: postcard::to_stdvec(&(revision, events))
                .map(|b| b.len())
                .unwrap_or(0),
        }
    }

    /// When agent `host` receives an item committed at `committed_at`, given the link's
    /// delivery time `link` (None when cut): each core member sends to its agents one
    /// after another.
    pub fn watch_delivery(
        &mut self,
        host: u32,
        committed_at: Micros,
        item_bytes: usize,
        link: Option<Micros>,
    ) -> Option<Micros> {
        let sender = host as usize % self.sender_free_at.len();
        let start = self.sender_free_at[sender].max(committed_at);
        let sent = start + self.config.watch_send_us;
        self.sender_free_at[sender] = sent;
        self.watch_bytes += item_bytes as u64;
        self.watch_items += 1;
        link.map(|after| sent + after)
    }
}

pub fn replica_address(host: u32) -> String {
    format!("{}:9000", SimId::name(host))
}

fn host_of_replica(address: &str) -> Option<u32> {
    address
        .strip_prefix("host-")?
        .strip_suffix(":9000")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Closing the node session of a shard's master hands the shard to another replica,
    /// in the real state machine.
    #[test]
    fn a_dead_master_loses_its_shard() {
        let mut core = CoreModel::new(CoreConfig::default());
        let hosts = (0..3).map(|index| SimId {
            index,
            incarnation: 1,
        });
        let placements: Vec<Placement> = (0..3).map(|h| ("s1".to_string(), h, 3 - h)).collect();
        core.setup(hosts, &placements).unwrap();
        let master = core.machine().shard("s1").unwrap().master.clone().unwrap();
        let host = host_of_replica(&master).unwrap();
        let before = core.machine().revision();
        assert!(core.session_open_at(
            SimId {
                index: host,
                incarnation: 1
            },
            before
        ));
        let committed = core.commit_close(SimId {
            index: host,
            incarnation: 1,
        });
        assert_eq!(committed.masters_lost_by, vec![host]);
        assert!(!core.session_open_at(
            SimId {
                index: host,
                incarnation: 1
            },
            committed.revision
        ));
        assert!(core.session_open_at(
            SimId {
                index: host,
                incarnation: 1
            },
            before
        ));
        // A second report changes nothing.
        assert!(
            !core
                .commit_close(SimId {
                    index: host,
                    incarnation: 1
                })
                .changed
        );
    }
}
