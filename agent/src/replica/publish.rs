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
            shard_map::encode(r.revision(), core_heard, &shards)
        })
        .map_err(std::io::Error::other)?;
    std::fs::write(temporary, bytes)?;
    std::fs::rename(temporary, path)
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
