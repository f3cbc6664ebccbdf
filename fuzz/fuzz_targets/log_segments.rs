//! Any bytes as a Raft log segment read back from disk: a torn end, a typed error, or
//! records that re-encode to exactly the bytes they were read from; never a panic. The
//! records then replay without a panic.
#![no_main]

use corral_core::storage::wal::{Replay, decode_segment};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = decode_segment(data) {
        assert!(decoded.valid_len <= data.len());
        assert_eq!(decoded.torn, decoded.valid_len < data.len());
        let mut again = Vec::new();
        for decoded in &decoded.records {
            assert_eq!(decoded.offset, again.len());
            decoded.record.encode_into(&mut again);
            assert_eq!(decoded.offset + decoded.len, again.len());
        }
        assert_eq!(again, &data[..decoded.valid_len]);
        let mut replay = Replay::<()>::default();
        for decoded in decoded.records {
            replay.apply(decoded.record, |_| ());
        }
        let _ = replay.finish();
    }
});
