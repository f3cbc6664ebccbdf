//! The writer thread: drains the queue in order, one write and one `fdatasync` per batch,
//! rolls segments over and deletes purged ones.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::storage::wal::{self, LogMeta, Record};

use super::index::{Index, Location};
use super::{Segment, WRITE_BATCH_MAX, WriteOp, segment_name, sync_dir};

/// The writer thread's state: the segments on disk and the one being appended to.
pub(super) struct Writer {
    pub(super) dir: PathBuf,
    /// The store's index, told where each entry was written.
    pub(super) index: Arc<Mutex<Index>>,
    pub(super) segments: VecDeque<Segment>,
    pub(super) file: Option<File>,
    /// Bytes in the current segment.
    pub(super) size: u64,
    /// The vote and pointers as written so far; a new segment opens with them.
    pub(super) meta: LogMeta,
    /// The vote and committed pointer as last saved by openraft.
    pub(super) saved: Arc<Mutex<LogMeta>>,
    /// The last index in the log as written so far.
    pub(super) last_index: Option<u64>,
    pub(super) buf: Vec<u8>,
    pub(super) segment_bytes: u64,
    /// Set once preallocating a segment failed (and was reported).
    pub(super) preallocation_failed: bool,
}

impl Writer {
    /// Drains the queue in batches, one write and one flush per batch.
    pub(super) fn run(mut self, mut queue: mpsc::Receiver<WriteOp>) {
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
                None => self.commit_batch(&batch).map_err(|e| e.to_string()),
            };
            if let Err(reason) = &result
                && poisoned.is_none()
            {
                tracing::error!(error = %reason, "the Raft log could not be written; this member stops");
                poisoned = Some(format!("the log store failed earlier: {reason}"));
            }
            for op in batch {
                match op {
                    WriteOp::Append { flushed, .. } => {
                        flushed.log_io_completed(result.clone().map_err(std::io::Error::other));
                    }
                    WriteOp::SaveVote { ack, .. }
                    | WriteOp::Truncate { ack, .. }
                    | WriteOp::Purge { ack, .. } => {
                        let _ = ack.send(result.clone());
                    }
                }
            }
        }
    }

    pub(super) fn commit_batch(&mut self, batch: &[WriteOp]) -> std::io::Result<()> {
        if self.size >= self.segment_bytes {
            let next = self.segments.back().map_or(1, |s| s.seq + 1);
            self.start_segment(next)?;
        }
        self.buf.clear();
        let batch_start = wal::begin_batch(&mut self.buf);
        let mut max_index = None;
        let mut purged = false;
        let seq = self
            .segments
            .back()
            .expect("a segment is open while writing")
            .seq;
        let mut written = Vec::new();
        for op in batch {
            match op {
                WriteOp::Append { entries, .. } => {
                    for (log_id, bytes) in entries {
                        let at = Location {
                            seq,
                            offset: self.size + self.buf.len() as u64,
                            len: u32::try_from(bytes.len()).expect("a record is under 4 GiB"),
                        };
                        written.push((*log_id, at));
                        self.buf.extend_from_slice(bytes);
                        max_index = Some(log_id.index);
                        self.last_index = Some(log_id.index);
                    }
                }
                WriteOp::SaveVote { vote, .. } => {
                    Record::Vote(*vote).encode_into(&mut self.buf);
                    self.meta.vote = Some(*vote);
                }
                WriteOp::Truncate { from, .. } => {
                    Record::Truncate { from: *from }.encode_into(&mut self.buf);
                    self.last_index = from.checked_sub(1);
                }
                WriteOp::Purge { log_id, .. } => {
                    Record::Purge(*log_id).encode_into(&mut self.buf);
                    self.meta.purged = Some(*log_id);
                    self.last_index = self.last_index.max(Some(log_id.index));
                    purged = true;
                }
            }
        }
        // The committed pointer goes after the entries it covers: one openraft saved before
        // its entries reached this batch waits for a later one.
        let committed = self.saved.lock().committed;
        if committed != self.meta.committed
            && committed.is_some_and(|c| self.last_index.is_some_and(|last| c.index <= last))
        {
            Record::Committed(committed).encode_into(&mut self.buf);
            self.meta.committed = committed;
        }
        if !wal::seal_batch(&mut self.buf, batch_start) {
            return Ok(());
        }
        let file = self.file.as_ref().expect("a segment is open while writing");
        file.write_all_at(&self.buf, self.size)?;
        self.size += self.buf.len() as u64;
        file.sync_data()?;
        if let (Some(index), Some(current)) = (max_index, self.segments.back_mut()) {
            current.max_index = Some(current.max_index.map_or(index, |m| m.max(index)));
        }
        if !written.is_empty() {
            let mut index = self.index.lock();
            for (log_id, at) in written {
                index.written(log_id, at);
            }
            index.evict();
        }
        if purged {
            self.delete_purged_segments();
        }
        Ok(())
    }

    /// Flushes the current segment and starts segment `seq`, preallocated, opening with
    /// the meta record.
    pub(super) fn start_segment(&mut self, seq: u64) -> std::io::Result<()> {
        if let Some(file) = &self.file {
            file.sync_data()?;
        }
        let path = self.dir.join(segment_name(seq));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)?;
        let header = wal::segment_header(&self.meta);
        file.write_all_at(&header, 0)?;
        self.preallocate(&file);
        file.sync_all()?;
        sync_dir(&self.dir)?;
        self.file = Some(file);
        self.size = header.len() as u64;
        self.segments.push_back(Segment {
            seq,
            max_index: None,
        });
        Ok(())
    }

    /// Reserves the segment's space, so that writes within it do not grow the file. A file
    /// system that cannot is reported once; the log works the same, its flushes slower.
    pub(super) fn preallocate(&mut self, file: &File) {
        let Ok(len) = i64::try_from(self.segment_bytes) else {
            return;
        };
        if let Err(e) = nix::fcntl::fallocate(file, nix::fcntl::FallocateFlags::empty(), 0, len)
            && !self.preallocation_failed
        {
            self.preallocation_failed = true;
            tracing::warn!(dir = %self.dir.display(), error = %e, "log segments cannot be preallocated here; every flush will also grow the file");
        }
    }

    /// Deletes the oldest segments whose entries are all purged, keeping the current one.
    pub(super) fn delete_purged_segments(&mut self) {
        let purged = self.meta.purged.map(|p| p.index);
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            let all_purged = match (oldest.max_index, purged) {
                (None, _) => true,
                (Some(max), Some(purged)) => max <= purged,
                (Some(_), None) => false,
            };
            if !all_purged {
                break;
            }
            let path = self.dir.join(segment_name(oldest.seq));
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(segment = %path.display(), error = %e, "a purged log segment could not be deleted");
                break;
            }
            self.segments.pop_front();
        }
    }
}
