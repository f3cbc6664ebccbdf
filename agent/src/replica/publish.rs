//! The shard map beside the socket: the replica's shards in a file that apps read with
//! no round trip to the agent (`corral_proto::ShardMap`).
//!
//! ```text
//!  replica signal (a shard event, or a snapshot) ─┐
//!  every PUBLISH_EVERY (freshness) ───────────────┴─► encode ─► NAME.tmp ─► rename
//! ```
//!
//! The file is replaced, never edited, so a reader sees one whole version or the one
//! before. It is removed when the agent stops; after a crash its age gives it away.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use corral_proto::Event;
use corral_proto::shard_map::{self, PUBLISH_EVERY};
use tokio::sync::{broadcast, watch};

use super::{ReplicaSignal, SharedReplica};

fn concerns_shards(event: &Event) -> bool {
    matches!(
        event,
        Event::ShardCreated { .. }
            | Event::ShardDeleted { .. }
            | Event::ReplicaAdded { .. }
            | Event::ReplicaRemoved { .. }
            | Event::ReplicaPriority { .. }
            | Event::GroupChanged(_)
            | Event::GroupDeleted { .. }
            | Event::MasterChanged { .. }
    )
}

fn publish(replica: &SharedReplica, path: &Path, temporary: &Path) -> std::io::Result<()> {
    let core_heard = replica
        .age()
        .and_then(|age| SystemTime::now().checked_sub(age));
    let bytes = replica
        .read(|r| {
            let shards: Vec<_> = r.machine().shards().collect();
            let groups: Vec<_> = r.machine().groups().collect();
            shard_map::encode(r.revision(), core_heard, &shards, &groups)
        })
        .map_err(std::io::Error::other)?;
    write_exclusively(temporary, &bytes)?;
    std::fs::rename(temporary, path)
}

/// Writes `bytes` to a file created anew at `path`: whatever is there already (a link a
/// local user planted, a file left by a crash) is removed, never written through, and if
/// something reappears in between the create fails rather than follow it.
fn write_exclusively(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)?;
    file.write_all(bytes)
}

pub async fn run(replica: Arc<SharedReplica>, path: PathBuf, mut shutdown: watch::Receiver<bool>) {
    let mut temporary = path.clone().into_os_string();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut signals = replica.subscribe();
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        let due = tokio::select! {
            _ = tick.tick() => true,
            signal = signals.recv() => match signal {
                Ok(ReplicaSignal::Applied(batch)) => batch.events.iter().any(concerns_shards),
                Ok(ReplicaSignal::Replaced(_)) | Err(broadcast::error::RecvError::Lagged(_)) => true,
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = shutdown.changed() => break,
        };
        if !due {
            continue;
        }
        match publish(&replica, &path, &temporary) {
            Ok(()) => {
                if failing {
                    tracing::info!(path = %path.display(), "the shard map is published again");
                    failing = false;
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(path = %path.display(), %error, "cannot publish the shard map");
                    failing = true;
                }
            }
        }
    }
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&temporary);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link planted at the temporary name is replaced, and what it points to is left
    /// alone.
    #[test]
    fn a_planted_link_is_never_written_through() {
        let dir = tempfile_dir();
        let victim = dir.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let temporary = dir.join("a1.sock.shards.tmp");
        std::os::unix::fs::symlink(&victim, &temporary).unwrap();
        write_exclusively(&temporary, b"map").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&temporary).unwrap(), b"map");
        assert!(!std::fs::symlink_metadata(&temporary).unwrap().is_symlink());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("corral-publish-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
