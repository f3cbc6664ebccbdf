//! The Raft log and vote, durable in a redb database.
//!
//! ```text
//!  openraft ──append/save_vote/truncate/purge──► queue ──► writer thread
//!      │                                                    │ one redb transaction
//!      └─reads─► pending (in memory) + redb                 │ per batch, fsync on commit
//!                                                           └─► LogFlushed / acks
//! ```
//!
//! One writer thread drains the queue in order and commits everything queued in a single
//! transaction, so the cost of an fsync is shared by all entries that arrived while the
//! previous one ran. Order is kept: operations are applied within a transaction in the
//! order they were queued, and transactions commit in order. An append is readable as
//! soon as `append` returns (from `pending`) and is reported flushed only after its
//! transaction committed with `Durability::Immediate`. A vote is persisted before
//! `save_vote` returns.
//!
//! A failed commit (disk full, I/O error) poisons the store: every later operation fails,
//! openraft stops the node, and the server exits loudly rather than serve from a log it
//! can no longer trust.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{RaftLogId, StorageIOError};
use parking_lot::Mutex;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::raft_types::{Entry, LogId, StorageError, TypeConfig, Vote};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const PURGED_KEY: &str = "last_purged";

/// Operations queued for the writer thread.
pub const WRITE_QUEUE_MAX: usize = 4096;
/// Most operations folded into one transaction.
pub const WRITE_BATCH_MAX: usize = 1024;

type Ack = oneshot::Sender<Result<(), String>>;

enum WriteOp {
    Append {
        entries: Vec<(LogId, Vec<u8>)>,
        flushed: LogFlushed<TypeConfig>,
    },
    SaveVote {
        bytes: Vec<u8>,
        ack: Ack,
    },
    SaveCommitted {
        bytes: Vec<u8>,
    },
    Truncate {
        from: u64,
        ack: Ack,
    },
    Purge {
        upto: u64,
        bytes: Vec<u8>,
        ack: Ack,
    },
}

#[derive(Debug, Default, Clone, Copy)]
struct Pointers {
    last_log_id: Option<LogId>,
    last_purged: Option<LogId>,
}

struct Inner {
    db: Arc<Database>,
    /// Appended entries the writer has not committed yet, by index.
    pending: Arc<Mutex<BTreeMap<u64, Entry>>>,
    pointers: Mutex<Pointers>,
    writer: mpsc::Sender<WriteOp>,
}

/// The log store; clones share one database and one writer.
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

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StorageError> {
    postcard::from_bytes(bytes)
        .map_err(|e| read_err(Message(format!("corrupt {what} in the log store: {e}"))))
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("log records always encode")
}

impl LogStore {
    /// Opens (or creates) the log database at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let db = Arc::new(Database::create(path).map_err(read_err)?);
        {
            // Make sure both tables exist so that read transactions can open them.
            let txn = db.begin_write().map_err(write_err)?;
            txn.open_table(LOG).map_err(write_err)?;
            txn.open_table(META).map_err(write_err)?;
            txn.commit().map_err(write_err)?;
        }
        let (last_purged, last_entry) = {
            let txn = db.begin_read().map_err(read_err)?;
            let meta = txn.open_table(META).map_err(read_err)?;
            let last_purged: Option<LogId> = match meta.get(PURGED_KEY).map_err(read_err)? {
                Some(v) => Some(decode(v.value(), "purge pointer")?),
                None => None,
            };
            let log = txn.open_table(LOG).map_err(read_err)?;
            let last_entry: Option<Entry> = match log.last().map_err(read_err)? {
                Some((_, v)) => Some(decode(v.value(), "log entry")?),
                None => None,
            };
            (last_purged, last_entry)
        };
        let last_log_id = last_entry.map(|e| *e.get_log_id()).or(last_purged);
        let pending = Arc::new(Mutex::new(BTreeMap::new()));
        let (writer, queue) = mpsc::channel(WRITE_QUEUE_MAX);
        let thread_db = db.clone();
        let thread_pending = pending.clone();
        std::thread::Builder::new()
            .name("corral-log-writer".into())
            .spawn(move || write_loop(&thread_db, &thread_pending, queue))
            .map_err(write_err)?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                pending,
                pointers: Mutex::new(Pointers {
                    last_log_id,
                    last_purged,
                }),
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

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let txn = self.inner.db.begin_read().map_err(read_err)?;
        let meta = txn.open_table(META).map_err(read_err)?;
        match meta.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(decode(v.value(), key)?)),
            None => Ok(None),
        }
    }

    /// The entries in `range`, from pending first and then from the database (an entry
    /// leaves pending only after its transaction committed, so reading in this order
    /// never misses one).
    fn entries(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry>, StorageError> {
        let upper = match end {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        let mut found: BTreeMap<u64, Entry> = self
            .inner
            .pending
            .lock()
            .range((Bound::Included(start), upper))
            .map(|(i, e)| (*i, e.clone()))
            .collect();
        // Entries not yet flushed are all in `pending`. When it holds the whole range, the
        // database is not touched: opening a read transaction waits for a commit in
        // progress, and the leader's replication would wait for its own fsync.
        let last = self.inner.pointers.lock().last_log_id.map(|l| l.index);
        let wanted_end = match (end, last) {
            (Some(end), _) => Some(end),
            (None, Some(last)) => Some(last + 1),
            (None, None) => None,
        };
        if let Some(wanted_end) = wanted_end
            && wanted_end > start
            && found.len() as u64 == wanted_end - start
            && found.keys().next() == Some(&start)
        {
            return Ok(found.into_values().collect());
        }
        let txn = self.inner.db.begin_read().map_err(read_err)?;
        let log = txn.open_table(LOG).map_err(read_err)?;
        for item in log
            .range::<u64>((Bound::Included(start), upper))
            .map_err(read_err)?
        {
            let (index, value) = item.map_err(read_err)?;
            found
                .entry(index.value())
                .or_insert(decode(value.value(), "log entry")?);
        }
        Ok(found.into_values().collect())
    }

    fn log_id_at(&self, index: u64) -> Result<Option<LogId>, StorageError> {
        let purged = self.inner.pointers.lock().last_purged;
        if let Some(p) = purged
            && p.index == index
        {
            return Ok(Some(p));
        }
        Ok(self
            .entries(index, Some(index + 1))?
            .first()
            .map(|e| *e.get_log_id()))
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
        let bytes = encode(vote);
        self.send_and_wait(|ack| WriteOp::SaveVote { bytes, ack })
            .await
            .map_err(|e| StorageIOError::write_vote(&Message(e.to_string())).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(VOTE_KEY)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.send(WriteOp::SaveCommitted {
            bytes: encode(&committed),
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_meta::<Option<LogId>>(COMMITTED_KEY)?.flatten())
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
            let mut pending = self.inner.pending.lock();
            let mut pointers = self.inner.pointers.lock();
            for entry in entries {
                let log_id = *entry.get_log_id();
                encoded.push((log_id, encode(&entry)));
                pending.insert(log_id.index, entry);
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
        let before = match log_id.index.checked_sub(1) {
            Some(i) => self.log_id_at(i)?,
            None => None,
        };
        {
            let mut pending = self.inner.pending.lock();
            pending.retain(|i, _| *i < log_id.index);
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
            let mut pending = self.inner.pending.lock();
            pending.retain(|i, _| *i > log_id.index);
            let mut pointers = self.inner.pointers.lock();
            pointers.last_purged = Some(log_id);
            if pointers
                .last_log_id
                .is_none_or(|last| last.index < log_id.index)
            {
                pointers.last_log_id = Some(log_id);
            }
        }
        let bytes = encode(&log_id);
        self.send_and_wait(|ack| WriteOp::Purge {
            upto: log_id.index,
            bytes,
            ack,
        })
        .await
    }
}

/// The writer thread: drains the queue in batches, one transaction per batch.
fn write_loop(
    db: &Database,
    pending: &Mutex<BTreeMap<u64, Entry>>,
    mut queue: mpsc::Receiver<WriteOp>,
) {
    let mut poisoned: Option<String> = None;
    while let Some(first) = queue.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < WRITE_BATCH_MAX {
            match queue.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let result = match &poisoned {
            Some(reason) => Err(reason.clone()),
            None => commit_batch(db, &batch).map_err(|e| e.to_string()),
        };
        if let Err(reason) = &result
            && poisoned.is_none()
        {
            tracing::error!(error = %reason, "the Raft log could not be written; this member stops");
            poisoned = Some(format!("the log store failed earlier: {reason}"));
        }
        for op in batch {
            match op {
                WriteOp::Append { entries, flushed } => {
                    if result.is_ok() {
                        let mut pending = pending.lock();
                        for (log_id, _) in &entries {
                            // Leave an entry that a later truncate and append replaced.
                            if pending
                                .get(&log_id.index)
                                .is_some_and(|e| e.get_log_id() == log_id)
                            {
                                pending.remove(&log_id.index);
                            }
                        }
                    }
                    flushed.log_io_completed(result.clone().map_err(std::io::Error::other));
                }
                WriteOp::SaveVote { ack, .. }
                | WriteOp::Truncate { ack, .. }
                | WriteOp::Purge { ack, .. } => {
                    let _ = ack.send(result.clone());
                }
                WriteOp::SaveCommitted { .. } => {}
            }
        }
    }
}

fn commit_batch(db: &Database, batch: &[WriteOp]) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    // A batch holding nothing but the committed pointer need not be flushed on its own:
    // the pointer is an optimisation, made durable by the next flushed batch.
    let only_committed = batch
        .iter()
        .all(|op| matches!(op, WriteOp::SaveCommitted { .. }));
    txn.set_durability(if only_committed {
        Durability::None
    } else {
        Durability::Immediate
    })
    .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
    {
        let mut log = txn.open_table(LOG)?;
        let mut meta = txn.open_table(META)?;
        for op in batch {
            match op {
                WriteOp::Append { entries, .. } => {
                    for (log_id, bytes) in entries {
                        log.insert(log_id.index, bytes.as_slice())?;
                    }
                }
                WriteOp::SaveVote { bytes, .. } => {
                    meta.insert(VOTE_KEY, bytes.as_slice())?;
                }
                WriteOp::SaveCommitted { bytes } => {
                    meta.insert(COMMITTED_KEY, bytes.as_slice())?;
                }
                WriteOp::Truncate { from, .. } => {
                    log.retain_in(*from.., |_, _| false)?;
                }
                WriteOp::Purge { upto, bytes, .. } => {
                    log.retain_in(..=*upto, |_, _| false)?;
                    meta.insert(PURGED_KEY, bytes.as_slice())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}
