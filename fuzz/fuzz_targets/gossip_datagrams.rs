//! Any bytes as a gossip datagram: the header check the transport runs before foca, then
//! the engine itself. Never a panic.
#![no_main]

use corral_agent::gossip::engine::{GossipEngine, GossipInput};
use corral_agent::gossip::{GossipConfig, NodeIdentity};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader: &[u8] = data;
    let _ = foca::Codec::<NodeIdentity>::decode_header(&mut foca::PostcardCodec, &mut reader);
    let identity = NodeIdentity {
        name: "me".into(),
        address: "127.0.0.1:7101".parse().expect("an address"),
        incarnation: 1,
    };
    let mut engine = GossipEngine::new(identity, &GossipConfig::default(), 7);
    let _ = engine.handle(GossipInput::Datagram(data.to_vec()));
    let _ = engine.handle(GossipInput::Datagram(data.to_vec()));
});
