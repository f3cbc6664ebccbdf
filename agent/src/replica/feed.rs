//! The task that keeps the replica fed from the core's watch streams.
//!
//! ```text
//!  core member i ──watch(after = replica revision)──► SharedReplica::handle_item
//!       ▲                                                   │ error / silence / no leader
//!       └────────────── next member, resume from revision ◄─┘
//! ```
//!
//! A first connection, or a resume below the member's history, starts from a snapshot
//! (the member decides). The stream moves to another member when its member fails, goes
//! quiet, or has no leader (it may sit in a minority and hold stale state).

use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_core::client::CoreClient;
use corral_core::rpc::WatchItem;
use tokio::sync::watch;

use super::replica::ReplicaError;
use super::shared::SharedReplica;

/// A stream with no item for this long is given up (members send progress every 250 ms).
pub const FEED_SILENCE: Duration = Duration::from_secs(2);

/// A member that reports no leader for this long is left for another.
pub const FEED_LEADERLESS: Duration = Duration::from_secs(2);

const RETRY_PAUSE: Duration = Duration::from_millis(200);

pub async fn run(
    client: Arc<CoreClient>,
    replica: Arc<SharedReplica>,
    mut shutdown: watch::Receiver<bool>,
) {
    let members = client.members().to_vec();
    if members.is_empty() {
        tracing::error!("no core member configured: the replica stays empty");
        return;
    }
    let mut index = rand::random::<u32>() as usize % members.len();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let address = members[index % members.len()].clone();
        let change_member = tokio::select! {
            change = follow(&client, &replica, &address) => change,
            _ = shutdown.changed() => return,
        };
        replica.stream_ended();
        replica.set_feed(None);
        if change_member {
            index += 1;
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// Follows one member's stream. Returns true to move to another member, false to
/// reconnect to the same one (after a gap the member itself is fine).
async fn follow(client: &CoreClient, replica: &SharedReplica, address: &str) -> bool {
    let after = replica.read(|r| r.resume_point());
    let mut stream = match client.watch(address, after).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(member = address, error = %e, "watch stream not opened");
            return true;
        }
    };
    tracing::info!(member = address, ?after, "replica feed connected");
    replica.set_feed(Some(address.to_string()));
    let mut leader_seen = Instant::now();
    loop {
        let item = match tokio::time::timeout(FEED_SILENCE, stream.next()).await {
            Ok(Ok(Some(item))) => item,
            Ok(Ok(None)) => {
                tracing::info!(member = address, "watch stream ended by the member");
                return true;
            }
            Ok(Err(e)) => {
                tracing::info!(member = address, error = %e, "watch stream failed");
                return true;
            }
            Err(_) => {
                tracing::warn!(
                    member = address,
                    "watch stream silent; trying another member"
                );
                return true;
            }
        };
        let has_leader = match &item {
            WatchItem::Progress { leader, .. } => leader.is_some(),
            _ => true,
        };
        if has_leader {
            leader_seen = Instant::now();
            replica.heard();
        } else if leader_seen.elapsed() > FEED_LEADERLESS {
            tracing::warn!(
                member = address,
                "member has no leader; trying another member"
            );
            return true;
        }
        match replica.handle_item(item) {
            Ok(_) => {}
            Err(e @ (ReplicaError::Gap { .. } | ReplicaError::NoBase(_))) => {
                tracing::warn!(member = address, error = %e, "replica feed resumes");
                return false;
            }
            Err(e) => {
                tracing::error!(member = address, error = %e, "replica feed refused an item");
                return true;
            }
        }
    }
}
