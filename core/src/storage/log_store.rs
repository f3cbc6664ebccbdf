//! The Raft log and vote: appended to segment files, the recent entries cached in memory.
//!
//! ```text
//!  openraft ──append/save_vote/truncate/purge──► index ──► queue ──► writer thread
//!      │                                                              │ one write + one
//!      └─reads─► index: cached entry, or its place in a segment      │ fdatasync per batch
//!                                                                     └─► LogFlushed / acks
//! ```
//!
//! Every entry after the purge pointer has a slot in an in-memory index: the entry itself
//! while it is among the most recent [`LOG_CACHE_BYTES`] (and always until it is written),
//! and where its record lies in a segment. Replication reads the tail, which is cached; a
//! member catching up from further back is served from the segment files. The disk holds
//! an append-only record of every change
//! ([`super::wal`]): one writer thread drains the queue in order, appends everything
//! queued as one write, and flushes it with one `fdatasync`, so the cost of a flush is
//! shared by all operations that arrived while the previous one ran. An append is
//! readable as soon as `append` returns and is reported flushed only after its batch is
//! on disk. A vote, truncation or purge returns only once it is on disk.
//!
//! Segments roll over at [`SEGMENT_BYTES`]; a segment whose entries are all purged is
//! deleted once a later segment exists (which opens with the vote and pointers). A new
//! segment's space is reserved when it is created (`fallocate`), so a batch's flush writes
//! data into the file without growing it: no file-system journal commit for a new file
//! size on every flush, which measured 25–50 µs off each `fdatasync` on ext4.
//!
//! The patched openraft (third_party/openraft/PATCH.md) relies on exactly these orderings:
//! a leader replicates entries whose append it submitted but did not wait for, which is
//! safe only because nothing submitted after them (a vote, a truncation, a purge, later
//! entries) can be on disk before them, and because they are readable before they are
//! flushed. A change to the queue or the writer must keep both.
//!
//! This file holds the store and what openraft calls; `index` is the in-memory index and
//! cache, `writer` the writer thread, `segment_reader` reads entries back from disk.
//!
//! A failed write (disk full, I/O error) poisons the store: every later operation fails,
//! openraft stops the node, and the server exits loudly rather than serve from a log it
//! can no longer trust.

mod index;
mod segment_reader;
mod writer;

use index::{Index, Location, Pointers, Slot};
use segment_reader::SegmentReader;
use writer::Writer;

use std::collections::VecDeque;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{RaftLogId, StorageIOError};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::wal::{self, LogMeta, Replay};
use crate::raft_types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// Operations queued for the writer thread.
pub const WRITE_QUEUE_MAX: usize = 4096;
/// Most operations folded into one write and flush.
pub const WRITE_BATCH_MAX: usize = 1024;
/// A segment at least this long is closed and a new one started before the next write.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// Encoded bytes of the most recent entries kept in memory; older ones are read back from
/// their segment when asked for.
pub const LOG_CACHE_BYTES: usize = 16 << 20;

type Ack = oneshot::Sender<Result<(), String>>;

enum WriteOp {
    Append {
        /// Each entry's log id and its framed record.
        entries: Vec<(LogId, Vec<u8>)>,
        flushed: LogFlushed<TypeConfig>,
    },
    SaveVote {
        vote: Vote,
        ack: Ack,
    },
    Truncate {
        from: u64,
        ack: Ack,
    },
    Purge {
        log_id: LogId,
        ack: Ack,
    },
}

struct Inner {
    dir: PathBuf,
    index: Arc<Mutex<Index>>,
    pointers: Mutex<Pointers>,
    /// The vote and committed pointer as last saved (read back by openraft on start). The
    /// writer reads the committed pointer from here and writes it with its next batch.
    meta: Arc<Mutex<LogMeta>>,
    writer: mpsc::Sender<WriteOp>,
}

/// The log store; clones share one log and one writer.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("pointers", &*self.inner.pointers.lock())
            .finish()
    }
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

fn segment_seq(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let hex = name.strip_suffix(".wal")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// One segment file as the writer knows it.
#[derive(Debug)]
struct Segment {
    seq: u64,
    /// The highest entry index appended to it, if any.
    max_index: Option<u64>,
}

impl LogStore {
    /// Opens the log of the member whose data directory is `data_dir` (in `log/`),
    /// refusing a directory that holds the log format of an earlier Corral.
    pub fn open_in_data_dir(data_dir: &Path) -> Result<Self, StorageError> {
        let old_log = data_dir.join("raft.redb");
        if old_log.exists() {
            return Err(read_err(Message(format!(
                "{} holds a log in the format of an earlier Corral, which this one does not read; \
                 remove the data directory and let this member rejoin and catch up from the others",
                old_log.display()
            ))));
        }
        Self::open(&data_dir.join("log"))
    }

    /// Opens (or creates) the log in directory `dir`, replays it, and starts its writer.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        Self::open_with_limits(dir, SEGMENT_BYTES, LOG_CACHE_BYTES)
    }

    /// As [`LogStore::open`], rolling segments over at `segment_bytes` and caching the most
    /// recent `cache_bytes` of entries.
    pub fn open_with_limits(
        dir: &Path,
        segment_bytes: u64,
        cache_bytes: usize,
    ) -> Result<Self, StorageError> {
        let at = |what: &str, e: std::io::Error| {
            read_err(Message(format!("{what} {}: {e}", dir.display())))
        };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| at("cannot create the log directory", e))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent).map_err(|e| at("cannot flush the parent of", e))?;
            }
        }
        let mut seqs: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| at("cannot list the log directory", e))?
            .filter_map(|item| item.ok().and_then(|d| segment_seq(&d.path())))
            .collect();
        seqs.sort_unstable();

        let mut replay = Replay::<(Location, usize)>::default();
        let mut segments = VecDeque::new();
        // The last segment's format and where its data ends.
        let mut tail = None;
        for (i, &seq) in seqs.iter().enumerate() {
            let path = dir.join(segment_name(seq));
            let bytes =
                std::fs::read(&path).map_err(|e| at("cannot read the log segment in", e))?;
            let decoded = wal::decode_segment(&bytes).map_err(|e| {
                read_err(Message(format!(
                    "log segment {} is corrupt: {e}",
                    path.display()
                )))
            })?;
            let last = i + 1 == seqs.len();
            if decoded.torn && !last {
                return Err(read_err(Message(format!(
                    "log segment {} ends in a damaged record at byte {}, but it is not the last segment",
                    path.display(),
                    decoded.valid_len
                ))));
            }
            if decoded.torn {
                tracing::warn!(
                    segment = %path.display(),
                    kept = decoded.valid_len,
                    cut = bytes.len() - decoded.valid_len,
                    "the log ends in a partly written record (a crash during a write); it is cut off"
                );
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| at("cannot open the log segment in", e))?;
                // Cut, then (below) preallocated again: the space after the data reads as
                // zeroes, as in a segment never torn.
                file.set_len(decoded.valid_len as u64)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| at("cannot cut the torn end of the log segment in", e))?;
            }
            if decoded.records.is_empty() {
                // Created but its first record never reached the disk: only possible last.
                if !last {
                    return Err(read_err(Message(format!(
                        "log segment {} is empty, but it is not the last segment",
                        path.display()
                    ))));
                }
                std::fs::remove_file(&path)
                    .map_err(|e| at("cannot remove an empty segment in", e))?;
                continue;
            }
            if last {
                tail = Some((decoded.format, decoded.valid_len as u64));
            }
            let mut max_index = None;
            for wal::DecodedRecord {
                offset,
                len,
                record,
            } in decoded.records
            {
                let at = Location {
                    seq,
                    offset: offset as u64,
                    len: u32::try_from(len).expect("a record is at most RECORD_LEN_MAX"),
                };
                replay.apply(record, |entry| {
                    max_index = Some(entry.get_log_id().index);
                    (at, len)
                });
            }
            segments.push_back(Segment { seq, max_index });
        }
        let replay = replay.finish().map_err(|e| {
            read_err(Message(format!(
                "the log in {} is corrupt: {e}",
                dir.display()
            )))
        })?;

        let mut index = Index {
            cache_bytes_max: cache_bytes,
            ..Index::default()
        };
        for (_, (log_id, (at, bytes))) in replay.entries.iter() {
            index.insert(Slot {
                log_id: *log_id,
                entry: None,
                at: Some(*at),
                bytes: *bytes,
            });
        }
        // Warm the cache with the most recent entries, which replication reads first.
        let mut warm = Vec::new();
        let mut warm_bytes = 0;
        for (&i, (_, (at, bytes))) in replay.entries.iter().rev() {
            if warm_bytes + bytes > cache_bytes {
                break;
            }
            warm_bytes += bytes;
            warm.push((i, *at));
        }
        let mut reader = SegmentReader::new(dir);
        for (i, at) in warm.into_iter().rev() {
            let entry = reader.read(at)?;
            let slot = index.slots.get_mut(&i).expect("warmed from the index");
            slot.entry = Some(entry);
            index.cached_bytes += slot.bytes;
        }
        index.uncached_below = index
            .slots
            .iter()
            .find(|(_, slot)| slot.entry.is_some())
            .map_or(replay.last_log_id().map_or(0, |l| l.index + 1), |(&i, _)| i);
        let index = Arc::new(Mutex::new(index));
        let saved = Arc::new(Mutex::new(replay.meta.clone()));

        let next_seq = segments.back().map_or(1, |s| s.seq + 1);
        let mut writer_state = Writer {
            index: index.clone(),
            dir: dir.to_path_buf(),
            segments,
            file: None,
            size: 0,
            meta: replay.meta.clone(),
            saved: saved.clone(),
            last_index: replay.last_log_id().map(|l| l.index),
            buf: Vec::new(),
            segment_bytes,
            preallocation_failed: false,
        };
        match (writer_state.segments.back(), tail) {
            (Some(last), Some((wal::SegmentFormat::Batches, valid_len))) => {
                let path = dir.join(segment_name(last.seq));
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| at("cannot open the log segment in", e))?;
                writer_state.preallocate(&file);
                file.sync_all()
                    .map_err(|e| at("cannot flush the log segment in", e))?;
                writer_state.size = valid_len;
                writer_state.file = Some(file);
            }
            // No segment yet, or the last is in the earlier format: go on in a new one.
            _ => writer_state
                .start_segment(next_seq)
                .map_err(|e| at("cannot create a log segment in", e))?,
        }

        let last_log_id = replay.last_log_id();
        let last_purged = replay.meta.purged;
        let (writer, queue) = mpsc::channel(WRITE_QUEUE_MAX);
        std::thread::Builder::new()
            .name("corral-log-writer".into())
            .spawn(move || writer_state.run(queue))
            .map_err(write_err)?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                index,
                pointers: Mutex::new(Pointers {
                    last_log_id,
                    last_purged,
                }),
                meta: saved,
                writer,
            }),
        })
    }

    async fn send(&self, op: WriteOp) -> Result<(), StorageError> {
        self.inner
            .writer
            .send(op)
            .await
            .map_err(|_| write_err(Message("the log writer has stopped".into())))
    }

    async fn send_and_wait(&self, make: impl FnOnce(Ack) -> WriteOp) -> Result<(), StorageError> {
        let (ack, done) = oneshot::channel();
        self.send(make(ack)).await?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(write_err(Message(e))),
            Err(_) => Err(write_err(Message("the log writer has stopped".into()))),
        }
    }

    /// The entries in `[start, end)`: cached ones from memory, the others read back from
    /// their segments.
    fn entries(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry>, StorageError> {
        let upper = match end {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        if end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        let mut found: Vec<Result<Entry, Location>> = Vec::new();
        {
            let index = self.inner.index.lock();
            for (_, slot) in index.slots.range((Bound::Included(start), upper)) {
                match (&slot.entry, slot.at) {
                    (Some(entry), _) => found.push(Ok(entry.clone())),
                    (None, Some(at)) => found.push(Err(at)),
                    (None, None) => unreachable!("an entry stays cached until it is written"),
                }
            }
        }
        let mut reader = SegmentReader::new(&self.inner.dir);
        found
            .into_iter()
            .map(|item| match item {
                Ok(entry) => Ok(entry),
                Err(at) => reader.read(at),
            })
            .collect()
    }

    fn log_id_at(&self, index: u64) -> Option<LogId> {
        let purged = self.inner.pointers.lock().last_purged;
        if let Some(p) = purged
            && p.index == index
        {
            return Some(p);
        }
        self.inner.index.lock().slots.get(&index).map(|s| s.log_id)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => Some(e + 1),
            Bound::Excluded(e) => Some(*e),
            Bound::Unbounded => None,
        };
        self.entries(start, end)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let pointers = *self.inner.pointers.lock();
        Ok(LogState {
            last_purged_log_id: pointers.last_purged,
            last_log_id: pointers.last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.send_and_wait(|ack| WriteOp::SaveVote { vote, ack })
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&Message(e.to_string()))))?;
        self.inner.meta.lock().vote = Some(vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.inner.meta.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not worth a wake-up of the writer on its own: the pointer only spares a restarted
        // member re-learning its commit index, so it rides with the next batch written.
        self.inner.meta.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.inner.meta.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut encoded = Vec::new();
        {
            let mut index = self.inner.index.lock();
            let mut pointers = self.inner.pointers.lock();
            for entry in entries {
                let log_id = *entry.get_log_id();
                let record = wal::encode_entry(&entry);
                index.insert(Slot {
                    log_id,
                    entry: Some(entry),
                    at: None,
                    bytes: record.len(),
                });
                encoded.push((log_id, record));
                pointers.last_log_id = Some(log_id);
            }
        }
        self.send(WriteOp::Append {
            entries: encoded,
            flushed: callback,
        })
        .await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let before = log_id.index.checked_sub(1).and_then(|i| self.log_id_at(i));
        {
            self.inner.index.lock().truncate(log_id.index);
            let mut pointers = self.inner.pointers.lock();
            pointers.last_log_id = before.or(pointers.last_purged);
        }
        self.send_and_wait(|ack| WriteOp::Truncate {
            from: log_id.index,
            ack,
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            self.inner.index.lock().purge(log_id.index);
            let mut pointers = self.inner.pointers.lock();
            pointers.last_purged = Some(log_id);
            if pointers
                .last_log_id
                .is_none_or(|last| last.index < log_id.index)
            {
                pointers.last_log_id = Some(log_id);
            }
        }
        self.send_and_wait(|ack| WriteOp::Purge { log_id, ack })
            .await
    }
}
