//! Any bytes as a Raft log segment read back from disk: a torn end, a typed error, or
//! records that re-encode to exactly the bytes they were read from; never a panic. The
//! records then replay without a panic.
#![no_main]

use corral_core::storage::wal::{Replay, SegmentFormat, decode_segment};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = decode_segment(data) {
        assert!(decoded.valid_len <= data.len());
        let rest = &data[decoded.valid_len..];
        match decoded.format {
            SegmentFormat::Records => {
                assert_eq!(decoded.torn, !rest.is_empty());
                let mut again = Vec::new();
                for decoded in &decoded.records {
                    assert_eq!(decoded.offset, again.len());
                    decoded.record.encode_into(&mut again);
                    assert_eq!(decoded.offset + decoded.len, again.len());
                }
                assert_eq!(again, &data[..decoded.valid_len]);
            }
            SegmentFormat::Batches => {
                // What follows the data is zeroes, or else a torn end.
                assert_eq!(decoded.torn, rest.iter().any(|&b| b != 0));
                let mut after = 0;
                for decoded in &decoded.records {
                    assert!(decoded.offset >= after);
                    let mut again = Vec::new();
                    decoded.record.encode_into(&mut again);
                    assert_eq!(again, &data[decoded.offset..decoded.offset + decoded.len]);
                    after = decoded.offset + decoded.len;
                }
                assert!(after <= decoded.valid_len);
            }
        }
        let mut replay = Replay::<()>::default();
        for decoded in decoded.records {
            replay.apply(decoded.record, |_| ());
        }
        let _ = replay.finish();
    }
});
