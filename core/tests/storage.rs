//! The durable stores pass openraft's own storage conformance suite, and what they
//! persist survives closing and reopening.

use corral_core::raft_types::{StorageError, TypeConfig};
use corral_core::storage::{LOG_CACHE_BYTES, LogStore, SEGMENT_BYTES, StateStore, wal};
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

/// Builds stores with the given segment size and entry cache.
struct Builder {
    segment_bytes: u64,
    cache_bytes: usize,
}

impl StoreBuilder<TypeConfig, LogStore, StateStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateStore), StorageError> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = LogStore::open_with_limits(
            &dir.path().join("log"),
            self.segment_bytes,
            self.cache_bytes,
        )?;
        let (state, _) = StateStore::open(dir.path()).expect("an empty snapshot directory opens");
        Ok((dir, log, state))
    }
}

/// openraft's conformance suite: log reads, truncation, purge, vote, membership recovery,
/// snapshot install, all against real segment files.
#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder {
        segment_bytes: SEGMENT_BYTES,
        cache_bytes: LOG_CACHE_BYTES,
    })
    .expect("the storage suite passes");
}

/// The same suite with tiny segments and no entry cache: every entry written is read back
/// from its segment file.
#[test]
fn openraft_storage_suite_reading_from_segments() {
    Suite::test_all(Builder {
        segment_bytes: 512,
        cache_bytes: 0,
    })
    .expect("the storage suite passes");
}

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(3, 1), index)
}

fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<Entry<TypeConfig>> {
    range
        .map(|i| Entry {
            log_id: log_id(i),
            payload: EntryPayload::Normal(corral_core::raft_types::Proposal {
                commands: vec![corral_proto::Command::Put {
                    key: format!("k{i}"),
                    value: vec![i as u8; 200],
                    session: None,
                }],
            }),
        })
        .collect()
}

async fn indexes(store: &mut LogStore) -> Vec<u64> {
    store
        .try_get_log_entries(0..u64::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect()
}

fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    files
}

/// What the log store acknowledged is there after the store is closed and reopened.
#[tokio::test]
async fn acknowledged_log_and_vote_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    {
        let mut store = LogStore::open(&path).unwrap();
        store.save_vote(&Vote::new_committed(3, 1)).await.unwrap();
        store.blocking_append(entries(1..=50)).await.unwrap();
        store.purge(log_id(10)).await.unwrap();
        store.truncate(log_id(41)).await.unwrap();
        store.save_committed(Some(log_id(30))).await.unwrap();
        // The committed pointer is made durable by the next flushed write.
        store.blocking_append(entries(41..=41)).await.unwrap();
    }
    let mut store = LogStore::open(&path).unwrap();
    assert_eq!(
        store.read_vote().await.unwrap(),
        Some(Vote::new_committed(3, 1))
    );
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(30)));
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(10)));
    assert_eq!(state.last_log_id, Some(log_id(41)));
    assert_eq!(indexes(&mut store).await, (11..=41).collect::<Vec<_>>());
}

/// The contract the patched openraft relies on (written at the top of
/// `core/src/storage/log_store.rs`): entries are readable as soon as `append` returns,
/// whether or not their flush was reported, and nothing submitted after an append (a vote,
/// a truncation, later entries) is on disk before it, so a vote or a truncation that
/// returned implies every earlier append is durable too.
#[tokio::test]
async fn appends_are_readable_at_once_and_nothing_later_is_durable_before_them() {
    use futures::FutureExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    {
        let store = LogStore::open(&path).unwrap();
        for batch in 0..20u64 {
            let first = batch * 50 + 1;
            let mut appending = store.clone();
            // One poll submits the append; its flush is not waited for.
            let mut append = Box::pin(appending.blocking_append(entries(first..=first + 49)));
            assert!(append.as_mut().now_or_never().is_none_or(|r| r.is_ok()));
            let mut reader = store.clone();
            let read = reader
                .try_get_log_entries(first..=first + 49)
                .await
                .unwrap();
            assert_eq!(read.len(), 50, "batch {batch} not readable once submitted");
            drop(append);
        }
        // Entries 901..=1000 are truncated away after being submitted unflushed.
        store.clone().truncate(log_id(901)).await.unwrap();
        store
            .clone()
            .save_vote(&Vote::new_committed(4, 2))
            .await
            .unwrap();
    }
    let mut store = LogStore::open(&path).unwrap();
    assert_eq!(
        store.read_vote().await.unwrap(),
        Some(Vote::new_committed(4, 2))
    );
    assert_eq!(indexes(&mut store).await, (1..=900).collect::<Vec<_>>());
}

/// Segments roll over as the log grows; purging deletes the old ones, and the vote saved
/// in a deleted segment survives through the next segment's opening record.
#[tokio::test]
async fn segments_roll_over_and_purged_ones_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    {
        let mut store = LogStore::open_with_limits(&path, 4096, LOG_CACHE_BYTES).unwrap();
        store.save_vote(&Vote::new_committed(3, 1)).await.unwrap();
        for start in (1..=500).step_by(10) {
            store
                .blocking_append(entries(start..=start + 9))
                .await
                .unwrap();
        }
        let before = segment_files(&path).len();
        assert!(
            before > 20,
            "500 entries of 200 bytes fill more than 20 segments of 4 KiB, got {before}"
        );
        store.purge(log_id(400)).await.unwrap();
        let after = segment_files(&path).len();
        assert!(
            after * 3 < before,
            "purging 400 of 500 entries leaves {after} of {before} segments"
        );
    }
    let mut store = LogStore::open_with_limits(&path, 4096, LOG_CACHE_BYTES).unwrap();
    assert_eq!(
        store.read_vote().await.unwrap(),
        Some(Vote::new_committed(3, 1))
    );
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(400)));
    assert_eq!(indexes(&mut store).await, (401..=500).collect::<Vec<_>>());
}

/// Where the data of a segment ends (the preallocated zeroes begin).
fn data_end(segment: &std::path::Path) -> usize {
    let decoded = wal::decode_segment(&std::fs::read(segment).unwrap()).unwrap();
    assert!(!decoded.torn);
    decoded.valid_len
}

/// A batch cut short by a crash is cut off on opening and the log goes on after it, in
/// space that reads as zeroes again; damage in the middle of a segment stops the store
/// with an error naming the file.
#[tokio::test]
async fn a_torn_end_is_cut_off_and_damage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    {
        let mut store = LogStore::open(&path).unwrap();
        store.blocking_append(entries(1..=20)).await.unwrap();
    }
    let segment = segment_files(&path).pop().unwrap();
    let whole = std::fs::read(&segment).unwrap();
    assert_eq!(
        whole.len() as u64,
        SEGMENT_BYTES,
        "the segment is preallocated"
    );
    let end = data_end(&segment);
    // Half of a batch's frame, as a crash in the middle of a write leaves it.
    let mut torn = whole.clone();
    torn[end..end + 10].copy_from_slice(&[120, 0, 0, 0, 1, 2, 3, 4, 5, 6]);
    std::fs::write(&segment, &torn).unwrap();
    {
        let mut store = LogStore::open(&path).unwrap();
        assert_eq!(indexes(&mut store).await, (1..=20).collect::<Vec<_>>());
        assert_eq!(std::fs::read(&segment).unwrap(), whole);
        store.blocking_append(entries(21..=25)).await.unwrap();
    }
    let mut store = LogStore::open(&path).unwrap();
    assert_eq!(indexes(&mut store).await, (1..=25).collect::<Vec<_>>());
    drop(store);

    let mut damaged = std::fs::read(&segment).unwrap();
    // Inside the batch of entries 1..=20, which the batch of 21..=25 follows.
    damaged[end / 2] ^= 0x5a;
    std::fs::write(&segment, &damaged).unwrap();
    let error = LogStore::open(&path).unwrap_err().to_string();
    assert!(
        error.contains("corrupt") && error.contains(&*segment.to_string_lossy()),
        "the error names the damaged segment: {error}"
    );
}

/// A crash can leave part of the last batch on disk and lose another part, so that whole
/// records follow a broken one in the middle of the batch. The batch was never
/// acknowledged: it is cut off as a torn end, not refused as damage, and the log goes on.
#[tokio::test]
async fn a_batch_torn_in_its_middle_is_a_torn_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    {
        let mut store = LogStore::open(&path).unwrap();
        store.blocking_append(entries(1..=10)).await.unwrap();
        store.blocking_append(entries(11..=40)).await.unwrap();
    }
    let segment = segment_files(&path).pop().unwrap();
    let bytes = std::fs::read(&segment).unwrap();
    let decoded = wal::decode_segment(&bytes).unwrap();
    let record_of = |index: u64| {
        decoded
            .records
            .iter()
            .find(|r| matches!(&r.record, wal::Record::Entry(e) if e.log_id.index == index))
            .unwrap()
    };
    // Bytes in the middle of entry 20's record never reached the disk; its frame header
    // and the 20 records after it did.
    let broken = record_of(20);
    let mut torn = bytes.clone();
    let lost = broken.offset + broken.len / 2;
    torn[lost..lost + 16].fill(0);
    std::fs::write(&segment, &torn).unwrap();
    {
        let mut store = LogStore::open(&path).unwrap();
        assert_eq!(indexes(&mut store).await, (1..=10).collect::<Vec<_>>());
        store.blocking_append(entries(11..=12)).await.unwrap();
    }
    let mut store = LogStore::open(&path).unwrap();
    assert_eq!(indexes(&mut store).await, (1..=12).collect::<Vec<_>>());
}

/// A segment written record by record, as earlier versions did, is read; the log goes on
/// in a new segment of the batched format, and both read back after reopening.
#[tokio::test]
async fn a_segment_of_the_earlier_format_is_read_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    std::fs::create_dir_all(&path).unwrap();
    let mut old = Vec::new();
    wal::Record::Meta(wal::LogMeta {
        vote: Some(Vote::new_committed(2, 1)),
        ..wal::LogMeta::default()
    })
    .encode_into(&mut old);
    for entry in entries(1..=15) {
        old.extend(wal::encode_entry(&entry));
    }
    wal::Record::Committed(Some(log_id(12))).encode_into(&mut old);
    let old_segment = path.join(format!("{:016x}.wal", 1));
    std::fs::write(&old_segment, &old).unwrap();
    {
        let mut store = LogStore::open(&path).unwrap();
        assert_eq!(
            store.read_vote().await.unwrap(),
            Some(Vote::new_committed(2, 1))
        );
        assert_eq!(store.read_committed().await.unwrap(), Some(log_id(12)));
        assert_eq!(indexes(&mut store).await, (1..=15).collect::<Vec<_>>());
        store.blocking_append(entries(16..=20)).await.unwrap();
    }
    assert_eq!(
        std::fs::read(&old_segment).unwrap(),
        old,
        "the old segment is left as it was"
    );
    let segments = segment_files(&path);
    assert_eq!(segments.len(), 2);
    let new = std::fs::read(&segments[1]).unwrap();
    assert!(new.starts_with(&wal::SEGMENT_MAGIC));
    let mut store = LogStore::open(&path).unwrap();
    assert_eq!(indexes(&mut store).await, (1..=20).collect::<Vec<_>>());
    assert_eq!(
        store.read_vote().await.unwrap(),
        Some(Vote::new_committed(2, 1))
    );
}

/// A data directory that holds the log format of an earlier Corral is refused with a
/// message that says what to do; nothing in it is read or changed.
#[test]
fn a_log_of_an_earlier_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("raft.redb"), b"an older log").unwrap();
    let error = LogStore::open_in_data_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("raft.redb") && error.contains("remove the data directory"),
        "{error}"
    );
    assert!(!dir.path().join("log").exists());
    assert_eq!(
        std::fs::read(dir.path().join("raft.redb")).unwrap(),
        b"an older log"
    );
}

/// With a cache smaller than the log, old entries are read back from their segments, the
/// same as they were written, before and after reopening.
#[tokio::test]
async fn entries_beyond_the_cache_are_read_back_from_segments() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let written = entries(1..=300);
    let check = |read: Vec<Entry<TypeConfig>>| {
        assert_eq!(read.len(), written.len());
        for (a, b) in read.iter().zip(&written) {
            assert_eq!(a, b);
        }
    };
    {
        let mut store = LogStore::open_with_limits(&path, 8192, 4096).unwrap();
        for start in (1..=300).step_by(30) {
            store
                .blocking_append(entries(start..=start + 29))
                .await
                .unwrap();
        }
        check(store.try_get_log_entries(1..=300).await.unwrap());
        store.truncate(log_id(251)).await.unwrap();
        store.blocking_append(entries(251..=300)).await.unwrap();
        check(store.try_get_log_entries(1..=300).await.unwrap());
    }
    let mut store = LogStore::open_with_limits(&path, 8192, 4096).unwrap();
    check(store.try_get_log_entries(1..=300).await.unwrap());
    assert_eq!(
        store.try_get_log_entries(120..130).await.unwrap()[..],
        written[119..129]
    );
}
