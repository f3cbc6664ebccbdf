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
mod tests;
