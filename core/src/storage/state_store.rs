//! openraft's view of the state machine: apply, snapshot, install.
//!
//! The state lives in memory in [`AppliedState`]; durability comes from the log plus the
//! snapshot file. On start the state is loaded from the snapshot and openraft re-applies
//! the committed log after it.

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{OptionalSend, StorageIOError};

use super::snapshot_file::{SnapshotFile, SnapshotFileError};
use crate::applied_state::AppliedState;
use crate::raft_types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::state::StateMachine;

#[derive(Clone, Debug)]
pub struct StateStore {
    applied: Arc<AppliedState>,
    file: Arc<SnapshotFile>,
    builds: Arc<AtomicU64>,
}

fn snapshot_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_snapshot(None, &e).into()
}

fn snapshot_write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, &e).into()
}

impl StateStore {
    /// Loads the last snapshot in `data_dir` (if any) into a fresh applied state.
    pub fn open(data_dir: &Path) -> Result<(Self, Arc<AppliedState>), SnapshotFileError> {
        let file = SnapshotFile::new(data_dir.join("snapshot.bin"));
        let applied = match file.read()? {
            Some((meta, data)) => {
                let machine = StateMachine::from_snapshot_bytes(&data).map_err(|e| {
                    SnapshotFileError::Corrupt {
                        path: data_dir.join("snapshot.bin"),
                        reason: e.to_string(),
                    }
                })?;
                AppliedState::new(machine, meta.last_log_id, meta.last_membership)
            }
            None => AppliedState::new(StateMachine::new(), None, StoredMembership::default()),
        };
        let applied = Arc::new(applied);
        let store = Self {
            applied: applied.clone(),
            file: Arc::new(file),
            builds: Arc::new(AtomicU64::new(0)),
        };
        Ok((store, applied))
    }

    async fn write_file(&self, meta: SnapshotMeta, data: Vec<u8>) -> Result<Vec<u8>, StorageError> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.write(&meta, &data).map(|()| data))
            .await
            .map_err(snapshot_write_err)?
            .map_err(snapshot_write_err)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (data, last_applied, last_membership) = self.applied.read(|a| {
            (
                a.machine.to_snapshot_bytes(),
                a.last_applied,
                a.last_membership.clone(),
            )
        });
        let build = self.builds.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{build}", id.leader_id, id.index),
            None => format!("none-{build}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership,
            snapshot_id,
        };
        let data = self.write_file(meta.clone(), data).await?;
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.len(), "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateStore {
    type SnapshotBuilder = StateStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(self
            .applied
            .read(|a| (a.last_applied, a.last_membership.clone())))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> Result<Vec<Vec<corral_proto::CommandResponse>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        Ok(self.applied.apply_entries(entries))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let machine = StateMachine::from_snapshot_bytes(&data).map_err(snapshot_err)?;
        self.write_file(meta.clone(), data).await?;
        self.applied
            .replace(machine, meta.last_log_id, meta.last_membership.clone());
        tracing::info!(last_log_id = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let file = self.file.clone();
        let read = tokio::task::spawn_blocking(move || file.read())
            .await
            .map_err(snapshot_err)?;
        Ok(read.map_err(snapshot_err)?.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
