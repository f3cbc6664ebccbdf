//! The members an agent last knew alive, kept in its data directory, so that an agent
//! restarted on its host finds the pool again even when the seeds it was given are down
//! or are itself (a restarted seed): the addresses it joins through at start are its
//! `--join` seeds and these.
//!
//! ```text
//!  every SAVE_INTERVAL and at a stop: alive members' addresses ─► DATA_DIR/known-peers
//!  at start: --join ∪ known-peers (at most KNOWN_PEERS_MAX, not itself) ─► gossip seeds
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::watch;

use super::service::GossipView;
use corral_proto::api::MemberState;

/// Most addresses kept: enough to find a pool that lost many members at once.
pub const KNOWN_PEERS_MAX: usize = 32;

/// How often the file is written while the agent runs.
const SAVE_INTERVAL: Duration = Duration::from_secs(10);

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("known-peers")
}

/// The addresses to join through: `seeds` first, then the known peers, without `own`
/// and without repeats. Lines that are not addresses are skipped (and named in the log).
pub fn seeds_with_known(seeds: &[SocketAddr], known: &str, own: SocketAddr) -> Vec<SocketAddr> {
    let mut all: Vec<SocketAddr> = seeds.to_vec();
    for line in known.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.parse::<SocketAddr>() {
            Ok(address) if address != own && !all.contains(&address) => all.push(address),
            Ok(_) => {}
            Err(_) => tracing::warn!(line, "not an address in the known peers; skipped"),
        }
        if all.len() >= seeds.len() + KNOWN_PEERS_MAX {
            break;
        }
    }
    all
}

/// The seeds joined through at start: `seeds` and the peers saved in `data_dir`.
pub fn load(data_dir: &Path, seeds: &[SocketAddr], own: SocketAddr) -> Vec<SocketAddr> {
    let known = std::fs::read_to_string(path(data_dir)).unwrap_or_default();
    seeds_with_known(seeds, &known, own)
}

/// The alive members other than `own`, as the file holds them.
pub fn text(view: &GossipView, own: &str) -> String {
    let mut addresses: Vec<String> = view
        .members
        .iter()
        .filter(|(name, m)| *name != own && m.state == MemberState::Alive)
        .map(|(_, m)| m.identity.address.to_string())
        .collect();
    addresses.sort();
    addresses.truncate(KNOWN_PEERS_MAX);
    addresses.join("\n")
}

fn save(data_dir: &Path, view: &RwLock<GossipView>, own: &str) {
    let text = text(&view.read(), own);
    if text.is_empty() {
        return;
    }
    let target = path(data_dir);
    let tmp = target.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &target)) {
        tracing::warn!(path = %target.display(), error = %e, "cannot save the known peers");
    }
}

/// Saves the known peers every [`SAVE_INTERVAL`] and once more at the stop.
pub async fn run(
    data_dir: PathBuf,
    view: Arc<RwLock<GossipView>>,
    own: String,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(SAVE_INTERVAL) => save(&data_dir, &view, &own),
            _ = shutdown.changed() => {
                save(&data_dir, &view, &own);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_come_first_then_known_peers_without_itself_or_repeats() {
        let a: SocketAddr = "10.0.0.1:7946".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:7946".parse().unwrap();
        let own: SocketAddr = "10.0.0.9:7946".parse().unwrap();
        let known = "10.0.0.2:7946\n\n10.0.0.9:7946\nnot an address\n10.0.0.3:7946\n";
        assert_eq!(
            seeds_with_known(&[a, b], known, own),
            vec![a, b, "10.0.0.3:7946".parse().unwrap()]
        );
        assert_eq!(seeds_with_known(&[own], "", own), vec![own]);
        let many: String = (1..100).map(|i| format!("10.1.0.{i}:1\n")).collect();
        assert_eq!(
            seeds_with_known(&[a], &many, own).len(),
            1 + KNOWN_PEERS_MAX
        );
    }
}
