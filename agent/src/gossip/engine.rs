//! The gossip protocol as a plain value: foca plus the effects it asks for.
//!
//! ```text
//!  GossipInput (datagram, timer, announce, leave) ──► GossipEngine::handle
//!                                                        │ foca
//!                    Vec<GossipEffect> ◄─────────────────┘ send / schedule / notify
//! ```
//!
//! No sockets, clocks or threads here: the agent's gossip task performs the effects, and
//! the simulations drive the very same engine on a virtual clock.

use std::time::Duration;

use foca::{Foca, NoCustomBroadcast, Notification, PostcardCodec, Runtime, State, Timer};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::config::GossipConfig;
use super::identity::{GossipIdentity, NodeIdentity};

#[derive(Debug)]
pub enum GossipInput<I: GossipIdentity = NodeIdentity> {
    Datagram(Vec<u8>),
    Timer(Timer<I>),
    /// Ask the member at this address to let us in.
    Announce(I::Addr),
    /// Leave the pool gracefully.
    Leave,
    /// Take a new incarnation above `above` (our node session was closed, or the core
    /// knows a newer incarnation of our name): we must come back as new.
    Renew {
        above: u64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum GossipEffect<I: GossipIdentity = NodeIdentity> {
    Send {
        to: I,
        data: Vec<u8>,
    },
    Schedule {
        timer: Timer<I>,
        after: Duration,
    },
    MemberUp(I),
    /// A member is dead. `declared_here` when this member's own suspicion of it ran out,
    /// rather than the news arriving by gossip: the first to know of a death is a member
    /// whose probe of it failed.
    MemberDown {
        id: I,
        declared_here: bool,
    },
    /// A member came back under a newer identity.
    Renamed {
        old: I,
        new: I,
    },
    /// Our own identity changed (the pool had declared us dead, or we renewed).
    IdentityChanged(I),
    /// We are known by at least one member.
    Active,
    /// Every other member is gone or dead.
    Idle,
}

struct Effects<'a, I: GossipIdentity>(&'a mut Vec<GossipEffect<I>>);

impl<I: GossipIdentity> Runtime<I> for Effects<'_, I> {
    fn notify(&mut self, notification: Notification<'_, I>) {
        let effect = match notification {
            Notification::MemberUp(id) => GossipEffect::MemberUp(id.clone()),
            Notification::MemberDown(id) => GossipEffect::MemberDown {
                id: id.clone(),
                declared_here: false,
            },
            Notification::Rename(old, new) => GossipEffect::Renamed {
                old: old.clone(),
                new: new.clone(),
            },
            Notification::Rejoin(id) => GossipEffect::IdentityChanged(id.clone()),
            Notification::Active => GossipEffect::Active,
            Notification::Idle => GossipEffect::Idle,
            // Not reachable: our identity always renews itself.
            Notification::Defunct => return,
        };
        self.0.push(effect);
    }

    fn send_to(&mut self, to: I, data: &[u8]) {
        self.0.push(GossipEffect::Send {
            to,
            data: data.to_vec(),
        });
    }

    fn submit_after(&mut self, timer: Timer<I>, after: Duration) {
        self.0.push(GossipEffect::Schedule { timer, after });
    }
}

/// Why an input could not be handled. Nothing changed in the membership.
#[derive(Debug, thiserror::Error)]
#[error("gossip: {0}")]
pub struct GossipError(String);

pub struct GossipEngine<I: GossipIdentity = NodeIdentity> {
    foca: Foca<I, PostcardCodec, StdRng, NoCustomBroadcast>,
}

impl<I: GossipIdentity> std::fmt::Debug for GossipEngine<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipEngine")
            .field("identity", self.foca.identity())
            .finish_non_exhaustive()
    }
}

impl<I: GossipIdentity> GossipEngine<I> {
    /// `config` must have passed [`GossipConfig::validate`]. `seed` feeds the random
    /// choice of probe targets.
    pub fn new(identity: I, config: &GossipConfig, seed: u64) -> Self {
        GossipEngine {
            foca: Foca::new(
                identity,
                config.to_foca(),
                StdRng::seed_from_u64(seed),
                PostcardCodec,
            ),
        }
    }

    pub fn identity(&self) -> &I {
        self.foca.identity()
    }

    /// Effects to perform at start: the first probe and periodic timers.
    pub fn start(&mut self) -> Vec<GossipEffect<I>> {
        // Foca arms its timers on the first member it learns of; nothing to do before.
        Vec::new()
    }

    pub fn handle(&mut self, input: GossipInput<I>) -> Result<Vec<GossipEffect<I>>, GossipError> {
        let mut effects = Vec::new();
        let runtime = Effects(&mut effects);
        // Only a suspicion timer sends the `TurnUndead` that may be false.
        let suspicion_ends = matches!(input, GossipInput::Timer(Timer::ChangeSuspectToDown { .. }));
        let result = match input {
            GossipInput::Datagram(data) => self.foca.handle_data(&data, runtime),
            GossipInput::Timer(timer) => self.foca.handle_timer(timer, runtime),
            GossipInput::Announce(address) => self.foca.announce(I::seed(address), runtime),
            GossipInput::Leave => self.foca.leave_cluster(runtime),
            GossipInput::Renew { above } => {
                let current = self.foca.identity();
                let renewed = current.with_incarnation(current.incarnation().max(above) + 1);
                let result = self.foca.change_identity(renewed.clone(), runtime);
                if result.is_ok() {
                    effects.push(GossipEffect::IdentityChanged(renewed));
                }
                result
            }
        };
        result.map_err(|e| GossipError(e.to_string()))?;
        if suspicion_ends {
            self.drop_false_turn_undead(&mut effects);
            for effect in &mut effects {
                if let GossipEffect::MemberDown { declared_here, .. } = effect {
                    *declared_here = true;
                }
            }
        }
        Ok(effects)
    }

    /// Drops the `TurnUndead` messages foca sends to members it holds alive.
    ///
    /// foca 2.0 sends `TurnUndead` ("the pool thinks you are down") when a suspicion timer
    /// fires, even when the suspect refuted in time and stays alive. The receiver then
    /// takes a new identity, which for an agent means a new node session: its apps'
    /// sessions end and its shards fail over, after a pause of one second. The simulations
    /// showed it (one renewal for every other one-second pause). `TurnUndead` is right only
    /// to a member this engine holds down, so that is the only one it goes to.
    fn drop_false_turn_undead(&self, effects: &mut Vec<GossipEffect<I>>) {
        effects.retain(|effect| {
            let GossipEffect::Send { to, data } = effect else {
                return true;
            };
            let mut reader: &[u8] = data;
            let is_turn_undead = matches!(
                foca::Codec::<I>::decode_header(&mut PostcardCodec, &mut reader),
                Ok(header) if header.message == foca::Message::TurnUndead
            );
            !is_turn_undead || !self.holds_alive(to)
        });
    }

    fn holds_alive(&self, id: &I) -> bool {
        self.foca
            .iter_membership_state()
            .any(|member| member.id() == id && member.state() != State::Down)
    }

    /// Every member foca knows, with its state (dead members until forgotten).
    pub fn members(&self) -> impl Iterator<Item = (&I, State)> {
        self.foca
            .iter_membership_state()
            .map(|member| (member.id(), member.state()))
    }

    pub fn active_count(&self) -> usize {
        self.foca.num_members()
    }

    /// Installs an already converged membership at once (simulations of large pools),
    /// as if every member had been known for long: nothing is left to disseminate.
    pub fn preload(
        &mut self,
        members: impl Iterator<Item = I>,
    ) -> Result<Vec<GossipEffect<I>>, GossipError> {
        let mut effects = Vec::new();
        self.foca
            .apply_many(
                members.map(foca::Member::alive),
                false,
                Effects(&mut effects),
            )
            .map_err(|e| GossipError(e.to_string()))?;
        Ok(effects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(name: &str, port: u16) -> NodeIdentity {
        NodeIdentity {
            name: name.into(),
            address: format!("127.0.0.1:{port}").parse().unwrap(),
            incarnation: 1,
        }
    }

    /// Two engines exchanging their effects directly converge: each sees the other up.
    #[test]
    fn two_engines_find_each_other() {
        let config = GossipConfig::default();
        let mut a = GossipEngine::new(identity("a", 1), &config, 1);
        let mut b = GossipEngine::new(identity("b", 2), &config, 2);
        let mut queue: Vec<(char, GossipEffect)> = a
            .handle(GossipInput::Announce(b.identity().address))
            .unwrap()
            .into_iter()
            .map(|e| ('a', e))
            .collect();
        let mut a_saw_b = false;
        let mut b_saw_a = false;
        for _ in 0..100 {
            let Some((from, effect)) = queue.pop() else {
                break;
            };
            match (from, effect) {
                ('a', GossipEffect::Send { data, .. }) => queue.extend(
                    b.handle(GossipInput::Datagram(data))
                        .unwrap()
                        .into_iter()
                        .map(|e| ('b', e)),
                ),
                ('b', GossipEffect::Send { data, .. }) => queue.extend(
                    a.handle(GossipInput::Datagram(data))
                        .unwrap()
                        .into_iter()
                        .map(|e| ('a', e)),
                ),
                ('a', GossipEffect::MemberUp(id)) => a_saw_b |= id.name == "b",
                ('b', GossipEffect::MemberUp(id)) => b_saw_a |= id.name == "a",
                _ => {}
            }
        }
        assert!(a_saw_b && b_saw_a);
        assert_eq!(a.active_count(), 1);
    }

    /// Engines on a virtual clock: datagrams arrive 100 µs after they are sent, timers
    /// fire in order of due time; nothing reaches or leaves a member that is cut off, and
    /// a member whose timers are held only answers what it receives.
    struct Pool {
        engines: Vec<GossipEngine>,
        queue: std::collections::BTreeMap<(Duration, u64), (usize, GossipInput)>,
        seq: u64,
        now: Duration,
        cut: Option<usize>,
        timers_held: Option<usize>,
        downs: Vec<(usize, String, bool)>,
    }

    impl Pool {
        fn new(size: u16) -> Self {
            let config = GossipConfig::default();
            let engines = (0..size)
                .map(|i| GossipEngine::new(identity(&format!("m{i}"), 1 + i), &config, i.into()))
                .collect();
            Pool {
                engines,
                queue: Default::default(),
                seq: 0,
                now: Duration::ZERO,
                cut: None,
                timers_held: None,
                downs: Vec::new(),
            }
        }

        fn push(&mut self, after: Duration, to: usize, input: GossipInput) {
            self.seq += 1;
            self.queue.insert((self.now + after, self.seq), (to, input));
        }

        fn input(&mut self, to: usize, input: GossipInput) {
            if self.cut == Some(to) {
                return;
            }
            for effect in self.engines[to].handle(input).unwrap_or_default() {
                match effect {
                    GossipEffect::Send { to: id, data } => {
                        let port = id.address.port();
                        let index = usize::from(port - 1);
                        if self.cut != Some(index) {
                            self.push(
                                Duration::from_micros(100),
                                index,
                                GossipInput::Datagram(data),
                            );
                        }
                    }
                    GossipEffect::Schedule { timer, after } if self.timers_held != Some(to) => {
                        self.push(after, to, GossipInput::Timer(timer));
                    }
                    GossipEffect::MemberDown { id, declared_here } => {
                        self.downs.push((to, id.name, declared_here));
                    }
                    _ => {}
                }
            }
        }

        fn run_for(&mut self, span: Duration) {
            let until = self.now + span;
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > until {
                    break;
                }
                let ((due, _), (to, input)) = entry.remove_entry();
                self.now = due;
                self.input(to, input);
            }
            self.now = until;
        }
    }

    /// The member whose probe failed declares the death itself; a member that hears of
    /// it by gossip does not. The agent lets the first report at once (death_reports).
    #[test]
    fn a_death_is_declared_here_only_by_the_member_whose_suspicion_ran_out() {
        let mut pool = Pool::new(3);
        for (from, to) in [(0, 1), (0, 2), (1, 2)] {
            let address = pool.engines[to].identity().address;
            pool.input(from, GossipInput::Announce(address));
        }
        pool.run_for(Duration::from_secs(3));
        assert!(pool.engines.iter().all(|e| e.active_count() == 2));

        // m1 never probes, so only m0 can suspect m2; m1 learns of the death from m0.
        pool.timers_held = Some(1);
        pool.cut = Some(2);
        pool.run_for(Duration::from_secs(10));
        assert_eq!(
            pool.downs,
            vec![(0, "m2".to_string(), true), (1, "m2".to_string(), false)]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut a = GossipEngine::new(identity("a", 1), &GossipConfig::default(), 1);
        for data in [vec![], vec![0xff; 7], vec![1; 2000]] {
            assert!(a.handle(GossipInput::Datagram(data)).is_err());
        }
    }
}
