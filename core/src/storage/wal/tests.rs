use super::*;
use crate::raft_types::Proposal;
use openraft::{CommittedLeaderId, EntryPayload};
use proptest::prelude::*;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Proposal {
            commands: vec![corral_proto::Command::Put {
                key: format!("k{index}"),
                value: vec![index as u8; (index % 7) as usize],
                session: None,
            }],
        }),
    }
}

fn segment(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        r.encode_into(&mut out);
    }
    out
}

fn indexes(replay: &Replay<Entry>) -> Vec<u64> {
    replay.entries.keys().copied().collect()
}

fn apply(replay: &mut Replay<Entry>, record: Record) {
    replay.apply(record, |e| e);
}

/// An entry encoded by reference decodes as the owned record.
#[test]
fn an_entry_encoded_by_reference_decodes_as_a_record() {
    let mut bytes = segment(&[Record::Meta(LogMeta::default())]);
    bytes.extend(encode_entry(&entry(2, 5)));
    let decoded = decode_segment(&bytes).unwrap();
    assert!(!decoded.torn);
    assert_eq!(decoded.valid_len, bytes.len());
    assert_eq!(
        decoded.records[1].offset + decoded.records[1].len,
        bytes.len()
    );
    assert_eq!(
        decode_entry_frame(&bytes[decoded.records[1].offset..]).unwrap(),
        entry(2, 5)
    );
    match &decoded.records[1].record {
        Record::Entry(e) => assert_eq!(*e, entry(2, 5)),
        other => panic!("expected an entry, got {other:?}"),
    }
}

/// Replay applies truncation, purge and a later segment's meta as they were written.
#[test]
fn replay_follows_truncate_purge_and_meta() {
    let mut replay = Replay::<Entry>::default();
    for i in 1..=10 {
        apply(&mut replay, Record::Entry(entry(1, i)));
    }
    apply(
        &mut replay,
        Record::Vote(openraft::Vote::new_committed(2, 1)),
    );
    apply(&mut replay, Record::Truncate { from: 8 });
    for i in 8..=12 {
        apply(&mut replay, Record::Entry(entry(2, i)));
    }
    apply(&mut replay, Record::Purge(log_id(1, 3)));
    // A later segment whose meta carries a purge pointer beyond this one.
    apply(
        &mut replay,
        Record::Meta(LogMeta {
            vote: Some(openraft::Vote::new_committed(2, 1)),
            committed: Some(log_id(2, 9)),
            purged: Some(log_id(1, 5)),
        }),
    );
    let replay = replay.finish().unwrap();
    assert_eq!(indexes(&replay), (6..=12).collect::<Vec<_>>());
    assert_eq!(replay.entries[&9].1.log_id, log_id(2, 9));
    assert_eq!(replay.last_log_id(), Some(log_id(2, 12)));
    assert_eq!(replay.meta.committed, Some(log_id(2, 9)));
}

/// A missing entry is an error, not a shorter log.
#[test]
fn a_gap_is_refused() {
    let mut replay = Replay::<Entry>::default();
    for i in [1, 2, 4] {
        apply(&mut replay, Record::Entry(entry(1, i)));
    }
    assert_eq!(
        replay.finish().unwrap_err(),
        WalError::Gap {
            missing: 3,
            next: 4
        }
    );
    let mut replay = Replay::<Entry>::default();
    apply(&mut replay, Record::Purge(log_id(1, 3)));
    apply(&mut replay, Record::Entry(entry(1, 6)));
    assert!(matches!(
        replay.finish(),
        Err(WalError::Gap { missing: 4, .. })
    ));
}

/// A segment that does not start with its meta record is refused.
#[test]
fn a_segment_without_meta_is_refused() {
    let bytes = encode_entry(&entry(1, 1));
    assert_eq!(decode_segment(&bytes).unwrap_err(), WalError::NoMeta);
}

/// Damage followed by a whole record is refused; the last record damaged is a torn end.
#[test]
fn damage_in_the_middle_is_refused_and_a_damaged_end_is_torn() {
    let records = [
        Record::Meta(LogMeta::default()),
        Record::Entry(entry(1, 1)),
        Record::Entry(entry(1, 2)),
    ];
    let bytes = segment(&records);
    let second = {
        let mut first = Vec::new();
        records[0].encode_into(&mut first);
        first.len()
    };
    let mut middle = bytes.clone();
    middle[second + FRAME_HEADER_LEN + 3] ^= 0x40;
    assert_eq!(
        decode_segment(&middle).unwrap_err(),
        WalError::Damaged { offset: second }
    );
    let mut end = bytes.clone();
    let last = end.len() - 1;
    end[last] ^= 0x40;
    let decoded = decode_segment(&end).unwrap();
    assert!(decoded.torn);
    assert_eq!(decoded.records.len(), 2);
}

/// A batched segment: magic, the meta batch, one batch per write, preallocated zeroes.
fn batched(batches: &[Vec<Record>], zeros: usize) -> (Vec<u8>, Vec<usize>) {
    let mut out = segment_header(&LogMeta::default());
    let mut ends = vec![out.len()];
    for batch in batches {
        let start = begin_batch(&mut out);
        for r in batch {
            r.encode_into(&mut out);
        }
        assert!(seal_batch(&mut out, start));
        ends.push(out.len());
    }
    out.extend(std::iter::repeat_n(0u8, zeros));
    (out, ends)
}

fn entry_batches(count: u64, per_batch: u64) -> Vec<Vec<Record>> {
    (0..count)
        .map(|b| {
            (1..=per_batch)
                .map(|i| Record::Entry(entry(1, b * per_batch + i)))
                .collect()
        })
        .collect()
}

/// A batched segment reads to where its zeroes begin, which is not a torn end, and each
/// entry's offset is where its own frame lies.
#[test]
fn a_batched_segment_reads_up_to_its_zeroes() {
    let (bytes, ends) = batched(&entry_batches(3, 4), 4096);
    let decoded = decode_segment(&bytes).unwrap();
    assert_eq!(decoded.format, SegmentFormat::Batches);
    assert!(!decoded.torn);
    assert_eq!(decoded.valid_len, *ends.last().unwrap());
    assert_eq!(decoded.records.len(), 13);
    for (i, r) in decoded.records.iter().skip(1).enumerate() {
        let e = decode_entry_frame(&bytes[r.offset..r.offset + r.len]).unwrap();
        assert_eq!(e, entry(1, i as u64 + 1));
    }
    // A legacy segment is told apart by its missing magic.
    let legacy = segment(&[Record::Meta(LogMeta::default())]);
    assert_eq!(
        decode_segment(&legacy).unwrap().format,
        SegmentFormat::Records
    );
}

/// A batch with no record is not written: its zero length would end the segment.
#[test]
fn an_empty_batch_is_not_sealed() {
    let mut out = vec![7u8];
    let start = begin_batch(&mut out);
    assert!(!seal_batch(&mut out, start));
    assert_eq!(out, vec![7u8]);
}

/// A damaged batch followed by a whole one is damage; damage in the last batch, or
/// stray bytes among the zeroes, is a torn end.
#[test]
fn a_damaged_batch_before_another_is_refused() {
    let (bytes, ends) = batched(&entry_batches(3, 4), 512);
    let mut middle = bytes.clone();
    middle[(ends[1] + ends[2]) / 2] ^= 0x10;
    assert_eq!(
        decode_segment(&middle).unwrap_err(),
        WalError::Damaged { offset: ends[1] }
    );
    let mut last = bytes.clone();
    last[(ends[2] + ends[3]) / 2] ^= 0x10;
    let decoded = decode_segment(&last).unwrap();
    assert!(decoded.torn);
    assert_eq!(decoded.valid_len, ends[2]);
    let mut stray = bytes.clone();
    stray[ends[3] + 100] = 1;
    let decoded = decode_segment(&stray).unwrap();
    assert!(decoded.torn);
    assert_eq!(decoded.valid_len, ends[3]);
}

proptest! {
    /// Whatever a crash leaves of the last batch of a preallocated segment (any part of
    /// it written, any part still zeroes), the segment reads as every earlier batch.
    #[test]
    fn any_torn_last_batch_reads_as_the_batches_before_it(
        count in 1u64..6,
        lost_from in any::<prop::sample::Index>(),
        lost_len in 0usize..600,
    ) {
        let (bytes, ends) = batched(&entry_batches(count, 3), 256);
        let last_start = ends[ends.len() - 2];
        let last_end = ends[ends.len() - 1];
        let from = last_start + lost_from.index(last_end - last_start);
        let to = (from + lost_len).min(last_end);
        let mut torn = bytes.clone();
        torn[from..to].fill(0);
        let decoded = decode_segment(&torn).unwrap();
        if torn == bytes {
            // Only bytes that were zeroes anyway were lost: the batch is whole.
            prop_assert_eq!(decoded.valid_len, last_end);
        } else {
            prop_assert_eq!(decoded.valid_len, last_start);
            prop_assert_eq!(decoded.records.len() as u64, 1 + (count - 1) * 3);
        }
    }

    /// Whatever prefix of a segment survives a crash decodes to a prefix of its records,
    /// and zeroes after it (a file extended but not written) read as a torn end.
    #[test]
    fn any_cut_decodes_to_a_prefix(count in 1u64..20, cut in any::<prop::sample::Index>(), zeros in 0usize..64) {
        let mut records = vec![Record::Meta(LogMeta::default())];
        records.extend((1..=count).map(|i| Record::Entry(entry(1, i))));
        let bytes = segment(&records);
        let cut = cut.index(bytes.len() + 1);
        let mut damaged = bytes[..cut].to_vec();
        damaged.extend(std::iter::repeat_n(0u8, zeros));
        match decode_segment(&damaged) {
            Ok(decoded) => {
                // Zeroes may complete a record cut short in its own trailing zeroes; it
                // then reads back as the record that was written.
                prop_assert_eq!(decoded.torn, decoded.valid_len < damaged.len());
                let mut again = Vec::new();
                for r in &decoded.records { r.record.encode_into(&mut again); }
                prop_assert_eq!(again.len(), decoded.valid_len);
                prop_assert!(bytes.starts_with(&again));
            }
            Err(e) => prop_assert!(false, "a cut segment must read as torn, not as {e}"),
        }
    }

    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn arbitrary_bytes_do_not_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_segment(&bytes);
    }
}
