//! Check-quorum: a leader that has heard from no quorum for an election timeout takes no
//! more writes.
//!
//! ```text
//!  raft.metrics().millis_since_quorum_ack ──every 100 ms──► QuorumWatch (lost: bool)
//!                                                              │
//!        member.write ◄── refuse at once ─────────────────────┤
//!        proposer     ◄── end waiting proposals, refuse queued ┘
//! ```
//!
//! openraft 0.9 keeps a leader that is cut off from the other members leading until it
//! hears of a higher term, and it accepts writes it can never commit. Agents that still
//! reach it would wait out a whole write timeout while the majority has long elected a
//! new leader. Raft's check-quorum (Ongaro's thesis, §6.2) closes this: a leader that has
//! had no acknowledgement from a quorum for an election timeout stops acting as one. Here
//! it stops taking writes: new writes are refused with nothing written, and writes already
//! waiting are answered "outcome unknown", so that clients move on to the new leader in
//! about one election timeout.

use std::time::Duration;

use openraft::ServerState;
use tokio::sync::watch;

use crate::raft_types::Raft;
use corral_net::rpc::CoreError;

/// How often the leader's quorum contact is checked.
pub(crate) const QUORUM_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Whether this member leads without a quorum, shared by the write paths.
#[derive(Clone)]
pub(crate) struct QuorumWatch {
    lost: watch::Receiver<bool>,
    raft: Raft,
    silent_after: Duration,
}

impl QuorumWatch {
    /// Starts watching `raft`; a leader is without a quorum once none acknowledged it for
    /// `silent_after`.
    pub(crate) fn start(raft: Raft, silent_after: Duration) -> Self {
        let (tx, lost) = watch::channel(false);
        let watched = raft.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(QUORUM_CHECK_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                if tx.is_closed() {
                    return;
                }
                let now_lost = silence(&watched, silent_after).is_some();
                tx.send_if_modified(|lost| {
                    if *lost == now_lost {
                        return false;
                    }
                    if now_lost {
                        tracing::warn!(
                            silent_ms = silent_after.as_millis() as u64,
                            "this leader has heard from no quorum; it takes no writes until it does"
                        );
                    } else {
                        tracing::info!(
                            "this member hears from a quorum again (or no longer leads)"
                        );
                    }
                    *lost = now_lost;
                    true
                });
            }
        });
        Self {
            lost,
            raft,
            silent_after,
        }
    }

    /// How long this leader has gone without a quorum's acknowledgement, when that is
    /// longer than allowed.
    pub(crate) fn lost_for(&self) -> Option<Duration> {
        if !*self.lost.borrow() {
            return None;
        }
        silence(&self.raft, self.silent_after)
    }

    /// Resolves when this member leads without a quorum (at once if it does now).
    pub(crate) async fn wait_lost(&self) {
        let mut lost = self.lost.clone();
        if lost.wait_for(|lost| *lost).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The answer to a write this member refuses for want of a quorum: nothing was written.
pub(crate) fn quorum_lost(silent: Duration) -> CoreError {
    CoreError::Unavailable(format!(
        "this member leads but has heard from no quorum for {} ms (cut off from the other members?); nothing was written",
        silent.as_millis()
    ))
}

/// The time since a quorum last acknowledged this member, if it leads and that is longer
/// than `silent_after`.
fn silence(raft: &Raft, silent_after: Duration) -> Option<Duration> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    if metrics.state != ServerState::Leader {
        return None;
    }
    let silent = Duration::from_millis(metrics.millis_since_quorum_ack?);
    (silent > silent_after).then_some(silent)
}
