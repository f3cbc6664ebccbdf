//! The snapshot file: the last snapshot of the state machine, with its Raft metadata.
//!
//! ```text
//! "CORRALSN" | format: u8 | meta_len: u32 | meta (postcard) | data_len: u64 | data | crc32
//! ```
//!
//! Written as a temporary file, fsynced, renamed over the old one, then the directory is
//! fsynced, so a crash leaves either the old snapshot or the new one, never a torn file.
//! A file that fails its checksum is reported, never loaded.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::raft_types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"CORRALSN";
const FORMAT: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("snapshot file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Debug)]
pub struct SnapshotFile {
    path: PathBuf,
}

impl SnapshotFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    fn io(&self, source: std::io::Error) -> SnapshotFileError {
        SnapshotFileError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, reason: impl Into<String>) -> SnapshotFileError {
        SnapshotFileError::Corrupt {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// Writes the snapshot durably, replacing the previous one atomically.
    pub fn write(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), SnapshotFileError> {
        let meta_bytes = postcard::to_stdvec(meta).expect("snapshot metadata always encodes");
        let meta_len =
            u32::try_from(meta_bytes.len()).map_err(|_| self.corrupt("metadata too large"))?;
        let mut bytes =
            Vec::with_capacity(MAGIC.len() + 1 + 4 + meta_bytes.len() + 8 + data.len() + 4);
        bytes.extend_from_slice(MAGIC);
        bytes.push(FORMAT);
        bytes.extend_from_slice(&meta_len.to_le_bytes());
        bytes.extend_from_slice(&meta_bytes);
        bytes.extend_from_slice(&(data.len() as u64).to_le_bytes());
        bytes.extend_from_slice(data);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());

        let tmp = self.path.with_extension("tmp");
        let mut file = File::create(&tmp).map_err(|e| self.io(e))?;
        file.write_all(&bytes).map_err(|e| self.io(e))?;
        file.sync_all().map_err(|e| self.io(e))?;
        drop(file);
        fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io(e))?;
        Ok(())
    }

    /// Reads the snapshot, or `None` when there is none yet.
    pub fn read(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, SnapshotFileError> {
        let mut bytes = Vec::new();
        match File::open(&self.path) {
            Ok(mut file) => file.read_to_end(&mut bytes).map_err(|e| self.io(e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        self.parse(&bytes).map(Some)
    }

    fn parse(&self, bytes: &[u8]) -> Result<(SnapshotMeta, Vec<u8>), SnapshotFileError> {
        let (body, crc) = bytes
            .split_last_chunk::<4>()
            .ok_or_else(|| self.corrupt("shorter than a checksum"))?;
        if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
            return Err(self.corrupt("checksum mismatch"));
        }
        let rest = body
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| self.corrupt("not a snapshot file"))?;
        let (&format, rest) = rest
            .split_first()
            .ok_or_else(|| self.corrupt("truncated"))?;
        if format != FORMAT {
            return Err(self.corrupt(format!("unknown format {format}")));
        }
        let (meta_len, rest) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| self.corrupt("truncated"))?;
        let meta_len = u32::from_le_bytes(*meta_len) as usize;
        let meta_bytes = rest
            .get(..meta_len)
            .ok_or_else(|| self.corrupt("truncated metadata"))?;
        let meta: SnapshotMeta =
            postcard::from_bytes(meta_bytes).map_err(|e| self.corrupt(format!("metadata: {e}")))?;
        let rest = &rest[meta_len..];
        let (data_len, data) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| self.corrupt("truncated"))?;
        if u64::from_le_bytes(*data_len) != data.len() as u64 {
            return Err(self.corrupt("data length mismatch"));
        }
        Ok((meta, data.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let file = SnapshotFile::new(dir.path().join("snapshot.bin"));
        assert!(file.read().unwrap().is_none());
        let meta = SnapshotMeta {
            snapshot_id: "1-2-3".into(),
            ..Default::default()
        };
        file.write(&meta, b"state bytes").unwrap();
        let (read_meta, data) = file.read().unwrap().unwrap();
        assert_eq!(read_meta, meta);
        assert_eq!(data, b"state bytes");

        let good = fs::read(dir.path().join("snapshot.bin")).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            fs::write(dir.path().join("snapshot.bin"), &bad).unwrap();
            assert!(
                matches!(file.read(), Err(SnapshotFileError::Corrupt { .. })),
                "flip at {i} went unnoticed"
            );
        }
        fs::write(dir.path().join("snapshot.bin"), &good[..good.len() / 2]).unwrap();
        assert!(matches!(
            file.read(),
            Err(SnapshotFileError::Corrupt { .. })
        ));
    }
}
