//! The Raft log's format on disk, and the replay that rebuilds the log from it. No I/O.
//!
//! ```text
//!  log/0000000000000001.wal   [Meta][Entry][Entry][Vote][Entry][Committed]...
//!  log/0000000000000002.wal   [Meta][Entry][Truncate][Entry][Purge]...
//!
//!  record = len: u32 LE | crc32(body): u32 LE | body (postcard of `Record`)
//! ```
//!
//! A segment is a sequence of records appended in the order they were written. Every
//! segment opens with a `Meta` record holding the vote, the committed pointer and the
//! purge pointer as they stood when it was created, so an old segment whose entries are
//! all purged can be deleted without losing them. Replaying every segment in order, each
//! record applied on top of the last, gives back the log, vote and pointers.
//!
//! Only the end of the last segment can be torn by a crash (a batch is written and
//! flushed before the next one starts, and a segment is flushed before the next segment
//! is created). [`decode_segment`] tells a torn end, which the store cuts off, from damage
//! in the middle, which stops the member.

use std::collections::BTreeMap;

use openraft::RaftLogId;
use serde::{Deserialize, Serialize};

use crate::raft_types::{Entry, LogId, Vote};

/// The largest record accepted when reading; a length above it is damage, not a record.
pub const RECORD_LEN_MAX: usize = 64 << 20;
/// Bytes of framing before each record's body: its length and its CRC.
pub const FRAME_HEADER_LEN: usize = 8;

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

fn frame_into(record: &RecordRef<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    *out = postcard::to_extend(record, std::mem::take(out)).expect("a log record always encodes");
    let body_len = out.len() - start - FRAME_HEADER_LEN;
    let crc = crc32fast::hash(&out[start + FRAME_HEADER_LEN..]);
    let len = u32::try_from(body_len).expect("a log record is smaller than 4 GiB");
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
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
    pub records: Vec<DecodedRecord>,
    /// The bytes that hold whole, checked records; a torn end starts here.
    pub valid_len: usize,
    /// Whether bytes after `valid_len` were cut short or unreadable.
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

/// Decodes a segment's bytes. A bad frame is a torn end when nothing readable follows it,
/// and damage when a whole record follows right after it.
pub fn decode_segment(bytes: &[u8]) -> Result<DecodedSegment, WalError> {
    let mut records = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let Some(body) = frame_at(bytes, offset) else {
            if let Some(header) = bytes.get(offset..offset + FRAME_HEADER_LEN) {
                let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
                let next = offset.saturating_add(FRAME_HEADER_LEN).saturating_add(len);
                if len > 0 && len <= RECORD_LEN_MAX && frame_at(bytes, next).is_some() {
                    return Err(WalError::Damaged { offset });
                }
            }
            return Ok(DecodedSegment {
                records,
                valid_len: offset,
                torn: true,
            });
        };
        let record = postcard::from_bytes::<Record>(body).map_err(|e| WalError::Undecodable {
            offset,
            reason: e.to_string(),
        })?;
        if offset == 0 && !matches!(record, Record::Meta(_)) {
            return Err(WalError::NoMeta);
        }
        let len = FRAME_HEADER_LEN + body.len();
        records.push(DecodedRecord {
            offset,
            len,
            record,
        });
        offset += len;
    }
    Ok(DecodedSegment {
        records,
        valid_len: offset,
        torn: false,
    })
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

    proptest! {
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
