//! Reading entries back from segment files.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::raft_types::{Entry, StorageError};
use crate::storage::wal::{self};

use super::index::Location;
use super::{Message, read_err, segment_name};

/// Reads entries back from segment files, keeping the last file it opened.
pub(super) struct SegmentReader<'a> {
    pub(super) dir: &'a Path,
    pub(super) open: Option<(u64, File)>,
    pub(super) buf: Vec<u8>,
}

impl<'a> SegmentReader<'a> {
    pub(super) fn new(dir: &'a Path) -> Self {
        Self {
            dir,
            open: None,
            buf: Vec::new(),
        }
    }

    pub(super) fn read(&mut self, at: Location) -> Result<Entry, StorageError> {
        let path = || self.dir.join(segment_name(at.seq));
        if self.open.as_ref().is_none_or(|(seq, _)| *seq != at.seq) {
            let file = File::open(path()).map_err(|e| {
                read_err(Message(format!(
                    "cannot open log segment {}: {e}",
                    path().display()
                )))
            })?;
            self.open = Some((at.seq, file));
        }
        let (_, file) = self.open.as_ref().expect("opened above");
        self.buf.resize(at.len as usize, 0);
        file.read_exact_at(&mut self.buf, at.offset).map_err(|e| {
            read_err(Message(format!(
                "cannot read log segment {} at byte {}: {e}",
                path().display(),
                at.offset
            )))
        })?;
        wal::decode_entry_frame(&self.buf).map_err(|e| {
            read_err(Message(format!(
                "log segment {} is corrupt at byte {}: {e}",
                path().display(),
                at.offset
            )))
        })
    }
}
