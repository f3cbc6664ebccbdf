//! Sequences of well-formed gossip messages addressed to one engine, with arbitrary
//! senders, incarnations, probe numbers and piggy-backed updates (about itself too),
//! interleaved with its own timers firing. Where `gossip_datagrams` mostly exercises the
//! decoder, this reaches suspicion, refutation, renaming and death. Never a panic, and
//! the engine's own incarnation never goes down.
#![no_main]

use corral_agent::gossip::engine::{GossipEffect, GossipEngine, GossipInput};
use corral_agent::gossip::{GossipConfig, NodeIdentity};
use foca::{Codec, Header, Member, Message, PostcardCodec, State};
use libfuzzer_sys::fuzz_target;

fn node(i: u8, incarnation: u64) -> NodeIdentity {
    NodeIdentity {
        name: format!("n{}", i % 6),
        address: format!("127.0.0.1:{}", 7100 + u16::from(i % 6))
            .parse()
            .expect("an address"),
        incarnation,
    }
}

/// Reads the fuzz input a byte at a time; zero once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes(data);
    let me = node(0, 1);
    let mut engine = GossipEngine::new(me.clone(), &GossipConfig::default(), 7);
    let known = (1..4).map(|i| node(i, 1));
    let mut timers = Vec::new();
    let collect = |effects: Vec<GossipEffect>, timers: &mut Vec<_>| {
        for effect in effects {
            if let GossipEffect::Schedule { timer, .. } = effect {
                if timers.len() < 64 {
                    timers.push(timer);
                }
            }
        }
    };
    if let Ok(effects) = engine.preload(known) {
        collect(effects, &mut timers);
    }
    let mut incarnation = engine.identity().incarnation;
    for _ in 0..32 {
        if input.done() {
            break;
        }
        let op = input.u8();
        let result = if op % 4 == 0 && !timers.is_empty() {
            let timer = timers.remove(usize::from(input.u8()) % timers.len());
            engine.handle(GossipInput::Timer(timer))
        } else {
            let src = node(input.u8() % 5 + 1, u64::from(input.u8() % 4));
            let dst = if input.u8() % 8 == 0 {
                node(input.u8(), 1)
            } else {
                engine.identity().clone()
            };
            let other = node(input.u8(), u64::from(input.u8() % 4));
            let probe_number = input.u8();
            let message = match input.u8() % 11 {
                0 => Message::Ping(probe_number),
                1 => Message::Ack(probe_number),
                2 => Message::PingReq { target: other, probe_number },
                3 => Message::IndirectPing { origin: other, probe_number },
                4 => Message::IndirectAck { target: other, probe_number },
                5 => Message::ForwardedAck { origin: other, probe_number },
                6 => Message::Announce,
                7 => Message::Feed,
                8 => Message::Gossip,
                9 => Message::Broadcast,
                _ => Message::TurnUndead,
            };
            let header = Header {
                src,
                src_incarnation: input.u16() % 8,
                dst,
                message,
            };
            let mut packet = Vec::new();
            let mut codec = PostcardCodec;
            if codec.encode_header(&header, &mut packet).is_err() {
                continue;
            }
            let updates = input.u8() % 5;
            packet.extend_from_slice(&u16::from(updates).to_be_bytes());
            for _ in 0..updates {
                let state = match input.u8() % 3 {
                    0 => State::Alive,
                    1 => State::Suspect,
                    _ => State::Down,
                };
                let about = node(input.u8(), u64::from(input.u8() % 4));
                let member = Member::new(about, input.u16() % 8, state);
                if codec.encode_member(&member, &mut packet).is_err() {
                    break;
                }
            }
            // Sometimes trailing bytes, or a packet cut short.
            match input.u8() % 8 {
                0 => packet.push(input.u8()),
                1 => {
                    let keep = usize::from(input.u8()) % (packet.len() + 1);
                    packet.truncate(keep);
                }
                _ => {}
            }
            engine.handle(GossipInput::Datagram(packet))
        };
        if let Ok(effects) = result {
            collect(effects, &mut timers);
        }
        let now = engine.identity().incarnation;
        assert!(now >= incarnation, "our incarnation went down: {incarnation} -> {now}");
        incarnation = now;
        assert!(engine.active_count() <= 5, "more members than could exist");
    }
});
