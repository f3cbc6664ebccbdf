//! The task that owns the gossip engine and performs its effects.
//!
//! ```text
//!  transport inbound ─┐
//!  timer heap (due) ──┼──► GossipEngine::handle ──► effects: send / schedule / member changes
//!  commands ──────────┘                                         │
//!                        GossipView (shared, read by API and death reports) ◄─┘
//!                        member events (broadcast to subscribers)
//! ```
//!
//! Timers are kept in one min-heap and delivered in order of due time; none is dropped.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use corral_proto::api::{MemberInfo, MemberState};
use foca::{State, Timer};
use parking_lot::RwLock;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::config::GossipConfig;
use super::engine::{GossipEffect, GossipEngine, GossipInput};
use super::identity::NodeIdentity;
use super::transport::{GossipCounters, GossipTransport, Inbound};

/// Member events buffered for slow subscribers before they lag.
pub const MEMBER_EVENTS_BUFFER: usize = 4096;

/// Commands queued for the gossip task.
const COMMANDS_BUFFER: usize = 64;

/// While no other member is known, the seeds are asked again this often.
const REJOIN_INTERVAL: Duration = Duration::from_secs(1);

/// How often suspicion states are read back from foca into the view.
const VIEW_REFRESH_INTERVAL: Duration = Duration::from_millis(100);

/// One member as this agent sees it: the newest incarnation known under its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewMember {
    pub identity: NodeIdentity,
    pub state: MemberState,
    pub since: Instant,
    /// Down, and declared so by this agent's own suspicion rather than by gossip.
    pub declared_here: bool,
}

/// A member incarnation the gossip pool holds dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dead {
    pub since: Instant,
    /// This agent declared the death itself (its probe failed and the suspicion ran out):
    /// it is among the first in the pool to know.
    pub declared_here: bool,
}

/// The gossip pool as this agent sees it, by name. Includes this agent.
#[derive(Debug, Default)]
pub struct GossipView {
    pub members: HashMap<String, ViewMember>,
}

impl GossipView {
    /// How many members are (alive, suspect, down).
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |state| self.members.values().filter(|m| m.state == state).count();
        (
            count(MemberState::Alive),
            count(MemberState::Suspect),
            count(MemberState::Down),
        )
    }

    /// Records `identity` in `state`, unless a newer incarnation of the name is known.
    /// Returns the member when something changed.
    pub(crate) fn record(
        &mut self,
        identity: &NodeIdentity,
        state: MemberState,
        declared_here: bool,
    ) -> Option<MemberInfo> {
        let entry = self.members.get(&identity.name);
        if let Some(known) = entry
            && (known.identity.incarnation > identity.incarnation
                || (known.identity == *identity && known.state == state))
        {
            return None;
        }
        self.members.insert(
            identity.name.clone(),
            ViewMember {
                identity: identity.clone(),
                state,
                since: Instant::now(),
                declared_here: declared_here && state == MemberState::Down,
            },
        );
        Some(member_info(identity, state))
    }

    /// True when the gossip pool shows that incarnation `incarnation` of `name` is dead:
    /// it was declared down, or a newer incarnation of the name has been seen.
    pub fn is_dead(&self, name: &str, incarnation: u64) -> Option<Dead> {
        let member = self.members.get(name)?;
        if member.identity.incarnation > incarnation {
            Some(Dead {
                since: member.since,
                declared_here: false,
            })
        } else if member.identity.incarnation == incarnation && member.state == MemberState::Down {
            Some(Dead {
                since: member.since,
                declared_here: member.declared_here,
            })
        } else {
            None
        }
    }

    pub fn alive_names(&self) -> impl Iterator<Item = &str> {
        self.members
            .values()
            .filter(|m| m.state != MemberState::Down)
            .map(|m| m.identity.name.as_str())
    }
}

fn member_info(identity: &NodeIdentity, state: MemberState) -> MemberInfo {
    MemberInfo {
        name: identity.name.clone(),
        address: identity.address.to_string(),
        incarnation: identity.incarnation,
        state,
        session: None,
    }
}

fn member_state(state: State) -> MemberState {
    match state {
        State::Alive => MemberState::Alive,
        State::Suspect => MemberState::Suspect,
        State::Down => MemberState::Down,
    }
}

#[derive(Debug)]
enum GossipCommand {
    Leave(oneshot::Sender<()>),
    Renew { above: u64 },
}

/// The agent's handle on its gossip task.
#[derive(Clone, Debug)]
pub struct GossipHandle {
    commands: mpsc::Sender<GossipCommand>,
    pub view: Arc<RwLock<GossipView>>,
    pub events: broadcast::Sender<MemberInfo>,
    pub identity: watch::Receiver<NodeIdentity>,
    pub counters: Arc<GossipCounters>,
}

impl GossipHandle {
    /// Leaves the pool gracefully and waits until the leave went out.
    pub async fn leave(&self) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(GossipCommand::Leave(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Takes a new incarnation, above `above`.
    pub async fn renew_above(&self, above: u64) {
        let _ = self.commands.send(GossipCommand::Renew { above }).await;
    }
}

struct Service {
    engine: GossipEngine,
    transport: Arc<GossipTransport>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_payloads: HashMap<u64, Timer<NodeIdentity>>,
    timer_seq: u64,
    view: Arc<RwLock<GossipView>>,
    events: broadcast::Sender<MemberInfo>,
    identity: watch::Sender<NodeIdentity>,
    seeds: Vec<SocketAddr>,
    active: bool,
}

/// Starts the gossip task for `identity` on `transport`, joining through `seeds`.
pub fn spawn(
    identity: NodeIdentity,
    config: &GossipConfig,
    transport: Arc<GossipTransport>,
    inbound: mpsc::Receiver<Inbound>,
    seeds: Vec<SocketAddr>,
) -> GossipHandle {
    let (commands, command_receiver) = mpsc::channel(COMMANDS_BUFFER);
    let view = Arc::new(RwLock::new(GossipView::default()));
    let (events, _) = broadcast::channel(MEMBER_EVENTS_BUFFER);
    let (identity_sender, identity_receiver) = watch::channel(identity.clone());
    view.write().record(&identity, MemberState::Alive, false);
    let seeds: Vec<SocketAddr> = seeds
        .into_iter()
        .filter(|seed| *seed != identity.address)
        .collect();
    let service = Service {
        engine: GossipEngine::new(identity, config, rand::random()),
        transport: transport.clone(),
        timers: BinaryHeap::new(),
        timer_payloads: HashMap::new(),
        timer_seq: 0,
        view: view.clone(),
        events: events.clone(),
        identity: identity_sender,
        seeds,
        active: false,
    };
    tokio::spawn(service.run(inbound, command_receiver));
    GossipHandle {
        commands,
        view,
        events,
        identity: identity_receiver,
        counters: transport.counters.clone(),
    }
}

impl Service {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut commands: mpsc::Receiver<GossipCommand>,
    ) {
        self.announce_to_seeds();
        let mut rejoin = tokio::time::interval(REJOIN_INTERVAL);
        let mut refresh = tokio::time::interval(VIEW_REFRESH_INTERVAL);
        loop {
            let next_timer = self
                .timers
                .peek()
                .map(|Reverse((due, _))| *due)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                Some(packet) = inbound.recv() => {
                    self.input(GossipInput::Datagram(packet.data));
                }
                () = tokio::time::sleep_until(next_timer) => {
                    let now = Instant::now();
                    while let Some(Reverse((due, seq))) = self.timers.peek().copied() {
                        if due > now {
                            break;
                        }
                        self.timers.pop();
                        if let Some(timer) = self.timer_payloads.remove(&seq) {
                            self.input(GossipInput::Timer(timer));
                        }
                    }
                }
                command = commands.recv() => match command {
                    Some(GossipCommand::Renew { above }) => self.input(GossipInput::Renew { above }),
                    Some(GossipCommand::Leave(done)) => {
                        self.input(GossipInput::Leave);
                        // send_datagram only queues: give the leave time to go out.
                        self.transport.close(Duration::from_millis(300)).await;
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
                _ = rejoin.tick() => {
                    if !self.active {
                        self.announce_to_seeds();
                    }
                }
                _ = refresh.tick() => self.refresh_view(),
            }
        }
    }

    fn announce_to_seeds(&mut self) {
        for seed in self.seeds.clone() {
            self.input(GossipInput::Announce(seed));
        }
    }

    fn input(&mut self, input: GossipInput) {
        match self.engine.handle(input) {
            Ok(effects) => self.perform(effects),
            Err(e) => tracing::debug!(error = %e, "gossip input refused"),
        }
    }

    fn perform(&mut self, effects: Vec<GossipEffect>) {
        for effect in effects {
            match effect {
                GossipEffect::Send { to, data } => self.transport.send(&to, data),
                GossipEffect::Schedule { timer, after } => {
                    self.timer_seq += 1;
                    let seq = self.timer_seq;
                    self.timers.push(Reverse((Instant::now() + after, seq)));
                    self.timer_payloads.insert(seq, timer);
                }
                GossipEffect::MemberUp(id) => self.record(&id, MemberState::Alive, false),
                GossipEffect::MemberDown { id, declared_here } => {
                    tracing::info!(member = %id, declared_here, "gossip declared a member dead");
                    self.record(&id, MemberState::Down, declared_here);
                }
                GossipEffect::Renamed { old, new } => {
                    tracing::info!(%old, %new, "a member came back as a new incarnation");
                    self.record(&new, MemberState::Alive, false);
                }
                GossipEffect::IdentityChanged(id) => {
                    tracing::warn!(identity = %id, "this agent takes a new incarnation");
                    self.record(&id, MemberState::Alive, false);
                    let _ = self.identity.send(id);
                }
                GossipEffect::Active => self.active = true,
                GossipEffect::Idle => self.active = false,
            }
        }
    }

    fn record(&mut self, identity: &NodeIdentity, state: MemberState, declared_here: bool) {
        if let Some(info) = self.view.write().record(identity, state, declared_here) {
            let _ = self.events.send(info);
        }
    }

    /// Reads suspicion back from foca (it notifies only up and down).
    fn refresh_view(&mut self) {
        let changes: Vec<(NodeIdentity, MemberState)> = {
            let view = self.view.read();
            self.engine
                .members()
                .filter_map(|(id, state)| {
                    let state = member_state(state);
                    let known = view.members.get(&id.name);
                    let changed = match known {
                        Some(known) => {
                            known.identity.incarnation < id.incarnation
                                || (known.identity == *id && known.state != state)
                        }
                        None => true,
                    };
                    changed.then(|| (id.clone(), state))
                })
                .collect()
        };
        for (id, state) in changes {
            self.record(&id, state, false);
        }
    }
}
