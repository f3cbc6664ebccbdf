//! Any bytes as a frame of each protocol: a typed error or a message that re-encodes to
//! a frame that decodes to the same message; never a panic.
#![no_main]

use corral_proto::api::{AgentFrame, ClientFrame};
use corral_proto::frame;
use corral_proto::limits::FRAME_LEN_MAX;
use libfuzzer_sys::fuzz_target;

fn round_trip<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok((message, used)) = frame::decode::<T>(data, FRAME_LEN_MAX) {
        assert!(used <= data.len());
        let bytes = frame::encode(&message).expect("a decoded message encodes");
        let (again, _) = frame::decode::<T>(&bytes, FRAME_LEN_MAX).expect("and decodes again");
        assert_eq!(message, again);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<ClientFrame>(data);
    round_trip::<AgentFrame>(data);
    let _ = frame::decode::<corral_net::rpc::CoreRequest>(data, FRAME_LEN_MAX);
    let _ = frame::decode::<corral_net::rpc::CoreResponse>(data, FRAME_LEN_MAX);
});
