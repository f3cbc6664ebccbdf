//! The Raft log's format on disk, and the replay that rebuilds the log from it. No I/O.
//!
//! ```text
//!  log/0000000000000001.wal   MAGIC [Meta][Entry Entry Vote][Entry Committed] 0 0 0 ... 0
//!  log/0000000000000002.wal   MAGIC [Meta][Entry Truncate Entry][Purge]       0 0 0 ... 0
//!
//!  segment = MAGIC (8 bytes) | batch | batch | ... | zeroes up to the preallocated size
//!  batch   = len: u32 LE | crc32(body): u32 LE | body (records)
//!  record  = len: u32 LE | crc32(body): u32 LE | body (postcard of `Record`)
//! ```
//!
//! A segment is a sequence of batches, each the records of one write and one flush, in
//! the order they were written. Every segment opens with a batch holding only a `Meta`
//! record: the vote, the committed pointer and the purge pointer as they stood when it was
//! created, so an old segment whose entries are all purged can be deleted without losing
//! them. Replaying every segment in order, each record applied on top of the last, gives
//! back the log, vote and pointers.
//!
//! Segments are preallocated (their space reserved, reading as zeroes) so that a flush
//! writes data into space the file already has, without the file-system journal commit
//! that growing a file costs. The data ends where the zeroes begin.
//!
//! Only the last batch can be torn by a crash (a batch is written and flushed before the
//! next one starts, and a segment is flushed before the next segment is created). Its
//! checksum covers the whole batch, so a batch is either all there or not at all, even
//! when the disk kept a later page of it and lost an earlier one. [`decode_segment`] tells
//! a torn end, which the store cuts off, from damage in the middle, which stops the member.
//!
//! Segments written by earlier versions hold records one after the other with no batch
//! frames and no magic; they are still read (the first four bytes of such a segment are a
//! record length of at most [`RECORD_LEN_MAX`], which the magic's are not).

use std::collections::BTreeMap;

use openraft::RaftLogId;
use serde::{Deserialize, Serialize};

use crate::raft_types::{Entry, LogId, Vote};

/// The largest record accepted when reading; a length above it is damage, not a record.
pub const RECORD_LEN_MAX: usize = 64 << 20;
/// Bytes of framing before each record's or batch's body: its length and its CRC.
pub const FRAME_HEADER_LEN: usize = 8;
/// The first bytes of a segment written in batches.
pub const SEGMENT_MAGIC: [u8; 8] = *b"CRLWAL\x02\n";

/// How a segment's records are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentFormat {
    /// [`SEGMENT_MAGIC`], then batches, then zeroes.
    Batches,
    /// Records one after the other, as earlier versions wrote them.
    Records,
}

/// The vote and pointers that every segment's first record carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogMeta {
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub purged: Option<LogId>,
}

/// One record of a segment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Record {
    /// The first record of every segment.
    Meta(LogMeta),
    /// An appended entry; it replaces any entry at the same index.
    Entry(Entry),
    Vote(Vote),
    Committed(Option<LogId>),
    /// Entries at and after `from` are removed.
    Truncate {
        from: u64,
    },
    /// Entries up to and including this one are removed, and it becomes the purge pointer.
    Purge(LogId),
}

/// `Record` by reference, so that an entry is encoded without being copied. Its variants
/// are those of `Record`, in the same order, so both encode alike.
#[derive(Serialize)]
enum RecordRef<'a> {
    Meta(&'a LogMeta),
    Entry(&'a Entry),
    Vote(&'a Vote),
    Committed(&'a Option<LogId>),
    Truncate { from: u64 },
    Purge(&'a LogId),
}

impl Record {
    fn as_ref(&self) -> RecordRef<'_> {
        match self {
            Record::Meta(m) => RecordRef::Meta(m),
            Record::Entry(e) => RecordRef::Entry(e),
            Record::Vote(v) => RecordRef::Vote(v),
            Record::Committed(c) => RecordRef::Committed(c),
            Record::Truncate { from } => RecordRef::Truncate { from: *from },
            Record::Purge(p) => RecordRef::Purge(p),
        }
    }

    /// Appends this record, framed, to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        frame_into(&self.as_ref(), out);
    }
}

/// An entry's record, framed, ready to be appended to a segment.
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::new();
    frame_into(&RecordRef::Entry(entry), &mut out);
    out
}

/// Starts a batch at the end of `out` by reserving its frame header; returns where it
/// starts. Records encoded into `out` after it belong to the batch until [`seal_batch`].
pub fn begin_batch(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    start
}

/// Writes the length and checksum of the batch begun at `start`. Returns false, and
/// removes the header, when the batch holds no record: an empty batch is never written
/// (its zero length would read as the end of the segment).
pub fn seal_batch(out: &mut Vec<u8>, start: usize) -> bool {
    let body_len = out.len() - start - FRAME_HEADER_LEN;
    if body_len == 0 {
        out.truncate(start);
        return false;
    }
    seal_frame(out, start);
    true
}

/// Fills in the header of the frame at `start`, whose body runs to the end of `out`.
fn seal_frame(out: &mut [u8], start: usize) {
    let body_len = out.len() - start - FRAME_HEADER_LEN;
    let crc = crc32fast::hash(&out[start + FRAME_HEADER_LEN..]);
    let len = u32::try_from(body_len).expect("a log record or batch is smaller than 4 GiB");
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The opening bytes of a new segment: the magic and a batch holding its meta record.
pub fn segment_header(meta: &LogMeta) -> Vec<u8> {
    let mut out = SEGMENT_MAGIC.to_vec();
    let start = begin_batch(&mut out);
    Record::Meta(meta.clone()).encode_into(&mut out);
    seal_batch(&mut out, start);
    out
}

fn frame_into(record: &RecordRef<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    *out = postcard::to_extend(record, std::mem::take(out)).expect("a log record always encodes");
    seal_frame(out, start);
}

/// A record read back, with where its frame lies in the segment.
#[derive(Debug)]
pub struct DecodedRecord {
    pub offset: usize,
    /// The frame's length, header included.
    pub len: usize,
    pub record: Record,
}

/// A segment's records and how it ends.
#[derive(Debug)]
pub struct DecodedSegment {
    pub format: SegmentFormat,
    pub records: Vec<DecodedRecord>,
    /// The bytes that hold whole, checked records (and batches); a torn end starts here.
    pub valid_len: usize,
    /// Whether bytes after `valid_len` were cut short or unreadable (not just the zeroes
    /// of a preallocated segment).
    pub torn: bool,
}

/// Damage that is not a torn end: a member that finds it stops instead of guessing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalError {
    /// A record in the middle of a segment fails its checksum, yet records follow it.
    #[error("the record at byte {offset} is damaged (checksum mismatch) and records follow it")]
    Damaged { offset: usize },
    /// A record's checksum matches but its body is not a record this version reads.
    #[error("the record at byte {offset} does not decode: {reason}")]
    Undecodable { offset: usize, reason: String },
    /// A segment does not start with its `Meta` record.
    #[error("the segment does not start with its meta record")]
    NoMeta,
    /// After replay, the entries do not run without a gap from the purge pointer.
    #[error("the log has a gap: index {missing} is missing before {next}")]
    Gap { missing: u64, next: u64 },
}

/// The frame at `offset`, when it is whole and its checksum matches.
fn frame_at(bytes: &[u8], offset: usize) -> Option<&[u8]> {
    let header = bytes.get(offset..offset + FRAME_HEADER_LEN)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len == 0 || len > RECORD_LEN_MAX {
        return None;
    }
    let body_start = offset + FRAME_HEADER_LEN;
    let body = bytes.get(body_start..body_start.checked_add(len)?)?;
    (crc32fast::hash(body) == crc).then_some(body)
}

/// Decodes the entry whose frame is `frame` (read back from where it was written).
pub fn decode_entry_frame(frame: &[u8]) -> Result<Entry, WalError> {
    let body = frame_at(frame, 0).ok_or(WalError::Damaged { offset: 0 })?;
    match postcard::from_bytes::<Record>(body) {
        Ok(Record::Entry(entry)) => Ok(entry),
        Ok(other) => Err(WalError::Undecodable {
            offset: 0,
            reason: format!("expected an entry, found {other:?}"),
        }),
        Err(e) => Err(WalError::Undecodable {
            offset: 0,
            reason: e.to_string(),
        }),
    }
}

/// Whether the bad frame at `offset` is damage rather than a torn end: its header holds a
/// plausible length and a whole frame follows right after it.
fn damage_at(bytes: &[u8], offset: usize) -> Result<(), WalError> {
    if let Some(header) = bytes.get(offset..offset + FRAME_HEADER_LEN) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let next = offset.saturating_add(FRAME_HEADER_LEN).saturating_add(len);
        if len > 0 && len <= RECORD_LEN_MAX && frame_at(bytes, next).is_some() {
            return Err(WalError::Damaged { offset });
        }
    }
    Ok(())
}

/// Decodes a segment's bytes, in either format. A bad frame is a torn end when nothing
/// readable follows it, and damage when a whole frame follows right after it.
pub fn decode_segment(bytes: &[u8]) -> Result<DecodedSegment, WalError> {
    let decoded = if bytes.starts_with(&SEGMENT_MAGIC) {
        decode_batches(bytes)?
    } else {
        decode_records(bytes)?
    };
    if decoded
        .records
        .first()
        .is_some_and(|first| !matches!(first.record, Record::Meta(_)))
    {
        return Err(WalError::NoMeta);
    }
    Ok(decoded)
}

/// Records one after the other: a batch's body, or a whole segment of the earlier format.
fn decode_records(bytes: &[u8]) -> Result<DecodedSegment, WalError> {
    let mut records = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let Some(body) = frame_at(bytes, offset) else {
            damage_at(bytes, offset)?;
            return Ok(DecodedSegment {
                format: SegmentFormat::Records,
                records,
                valid_len: offset,
                torn: true,
            });
        };
        let record = postcard::from_bytes::<Record>(body).map_err(|e| WalError::Undecodable {
            offset,
            reason: e.to_string(),
        })?;
        let len = FRAME_HEADER_LEN + body.len();
        records.push(DecodedRecord {
            offset,
            len,
            record,
        });
        offset += len;
    }
    Ok(DecodedSegment {
        format: SegmentFormat::Records,
        records,
        valid_len: offset,
        torn: false,
    })
}

/// The magic, then checked batches, then zeroes. Bytes other than zeroes after the last
/// whole batch are a torn end.
fn decode_batches(bytes: &[u8]) -> Result<DecodedSegment, WalError> {
    let mut records = Vec::new();
    let mut offset = SEGMENT_MAGIC.len();
    loop {
        let Some(body) = frame_at(bytes, offset) else {
            let torn = bytes[offset..].iter().any(|&b| b != 0);
            if torn {
                damage_at(bytes, offset)?;
            }
            return Ok(DecodedSegment {
                format: SegmentFormat::Batches,
                records,
                valid_len: offset,
                torn,
            });
        };
        let body_at = offset + FRAME_HEADER_LEN;
        let batch = decode_records(body).map_err(|e| match e {
            WalError::Damaged { offset } => WalError::Damaged {
                offset: body_at + offset,
            },
            WalError::Undecodable { offset, reason } => WalError::Undecodable {
                offset: body_at + offset,
                reason,
            },
            other => other,
        })?;
        if batch.torn {
            // The batch's checksum holds, yet a record inside it does not.
            return Err(WalError::Undecodable {
                offset: body_at + batch.valid_len,
                reason: "a checked batch holds a broken record".into(),
            });
        }
        records.extend(batch.records.into_iter().map(|r| DecodedRecord {
            offset: body_at + r.offset,
            ..r
        }));
        offset = body_at + body.len();
    }
}

/// The log rebuilt from records, applied in the order they were written; each entry is
/// kept as whatever `T` the caller makes of it (the entry itself, or where to find it).
#[derive(Debug)]
pub struct Replay<T> {
    pub meta: LogMeta,
    pub entries: BTreeMap<u64, (LogId, T)>,
}

impl<T> Default for Replay<T> {
    fn default() -> Self {
        Self {
            meta: LogMeta::default(),
            entries: BTreeMap::new(),
        }
    }
}

impl<T> Replay<T> {
    /// Applies one record; an entry is kept as `keep(entry)`.
    pub fn apply(&mut self, record: Record, keep: impl FnOnce(Entry) -> T) {
        match record {
            Record::Meta(meta) => self.meta = meta,
            Record::Entry(entry) => {
                let log_id = *entry.get_log_id();
                self.entries.insert(log_id.index, (log_id, keep(entry)));
            }
            Record::Vote(vote) => self.meta.vote = Some(vote),
            Record::Committed(committed) => self.meta.committed = committed,
            Record::Truncate { from } => {
                self.entries.split_off(&from);
            }
            Record::Purge(log_id) => {
                self.entries = self.entries.split_off(&(log_id.index + 1));
                self.meta.purged = Some(log_id);
            }
        }
    }

    /// Checks that the entries left run without a gap after the purge pointer (entries at
    /// or before it, seen before a later segment's meta moved it, are dropped).
    pub fn finish(mut self) -> Result<Self, WalError> {
        if let Some(purged) = self.meta.purged {
            self.entries = self.entries.split_off(&(purged.index + 1));
            if let Some((&first, _)) = self.entries.first_key_value()
                && first != purged.index + 1
            {
                return Err(WalError::Gap {
                    missing: purged.index + 1,
                    next: first,
                });
            }
        }
        let mut expected = None;
        for &index in self.entries.keys() {
            if let Some(expected) = expected
                && index != expected
            {
                return Err(WalError::Gap {
                    missing: expected,
                    next: index,
                });
            }
            expected = Some(index + 1);
        }
        Ok(self)
    }

    /// The last log id: the last entry's, or the purge pointer when no entry is left.
    pub fn last_log_id(&self) -> Option<LogId> {
        self.entries
            .last_key_value()
            .map(|(_, (log_id, _))| *log_id)
            .or(self.meta.purged)
    }
}

#[cfg(test)]
mod tests {
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
}
