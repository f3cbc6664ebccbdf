//! The durable stores pass openraft's own storage conformance suite, and what they
//! persist survives closing and reopening.

use corral_core::raft_types::{StorageError, TypeConfig};
use corral_core::storage::{LogStore, StateStore};
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateStore), StorageError> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = LogStore::open(&dir.path().join("raft.redb"))?;
        let (state, _) = StateStore::open(dir.path()).expect("an empty snapshot directory opens");
        Ok((dir, log, state))
    }
}

/// openraft's conformance suite: log reads, truncation, purge, vote, membership recovery,
/// snapshot install, all against the real redb files.
#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("the storage suite passes");
}

/// What the log store acknowledged is there after the store is closed and reopened.
#[tokio::test]
async fn acknowledged_log_and_vote_survive_reopening() {
    use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    let log_id = |index| LogId::new(CommittedLeaderId::new(3, 1), index);
    {
        let mut store = LogStore::open(&path).unwrap();
        store.save_vote(&Vote::new_committed(3, 1)).await.unwrap();
        let entries: Vec<Entry<TypeConfig>> = (1..=50)
            .map(|i| Entry {
                log_id: log_id(i),
                payload: EntryPayload::Normal(corral_core::raft_types::Proposal {
                    commands: vec![corral_proto::Command::Put {
                        key: format!("k{i}"),
                        value: vec![i as u8],
                        session: None,
                    }],
                }),
            })
            .collect();
        store.blocking_append(entries).await.unwrap();
        store.purge(log_id(10)).await.unwrap();
        store.truncate(log_id(41)).await.unwrap();
    }
    // The writer thread may still hold the database briefly after the store is dropped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut store = loop {
        match LogStore::open(&path) {
            Ok(store) => break store,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("the log store did not reopen: {e}")
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    assert_eq!(
        store.read_vote().await.unwrap(),
        Some(Vote::new_committed(3, 1))
    );
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(10)));
    assert_eq!(state.last_log_id, Some(log_id(40)));
    let entries = store.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        (11..=40).collect::<Vec<_>>()
    );
}
