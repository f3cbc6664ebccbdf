//! Configuration of a core member.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::raft_types::NodeId;

/// Entries between two snapshots (after which the log before the snapshot is purged).
pub const SNAPSHOT_EVERY_DEFAULT: u64 = 10_000;
/// Entries kept in the log behind a snapshot, so that a briefly lagging member catches up
/// from the log rather than a whole snapshot.
pub const SNAPSHOT_CATCHUP_ENTRIES_DEFAULT: u64 = 5_000;
pub const HEARTBEAT_MS_DEFAULT: u64 = 100;
pub const ELECTION_TIMEOUT_MIN_MS_DEFAULT: u64 = 500;
pub const ELECTION_TIMEOUT_MAX_MS_DEFAULT: u64 = 1000;
/// How long the core holds the session of a node no member hears any more, from its last
/// beat: the agent's gossip detection time at its defaults (about 2 s) and 3 s for an
/// agent restarting on the host to take its session back.
pub const NODE_GRACE_MS_DEFAULT: u64 = 5000;

#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub id: NodeId,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// The initial members, this one included (unless it joins later with add-voter).
    pub peers: BTreeMap<NodeId, String>,
    pub tls_dir: PathBuf,
    pub snapshot_every: u64,
    pub snapshot_catchup_entries: u64,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Seconds between the leader's checks that every member holds the same state
    /// ([`super::state_check`]).
    pub state_check_secs: u64,
    /// How long a node's session is held after the core last heard it
    /// ([`super::liveness`]): an agent restarted within it keeps everything bound to it.
    pub node_grace_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid --peers entry {0:?}: expected ID=HOST:PORT")]
    BadPeer(String),
    #[error("--peers lists member {0} twice")]
    DuplicatePeer(NodeId),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, address) = item
            .split_once('=')
            .ok_or_else(|| ConfigError::BadPeer(item.to_string()))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| ConfigError::BadPeer(item.to_string()))?;
        let address = address.trim();
        if address
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(ConfigError::BadPeer(item.to_string()));
        }
        if peers.insert(id, address.to_string()).is_some() {
            return Err(ConfigError::DuplicatePeer(id));
        }
    }
    Ok(peers)
}

impl CoreConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_string(),
            })
        };
        if self.peers.is_empty() {
            return invalid("peers", "at least one member is needed");
        }
        if self.snapshot_every == 0 {
            return invalid("snapshot-every", "must be at least 1");
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms * 3 > self.election_timeout_min_ms {
            return invalid(
                "heartbeat-ms",
                "must be positive and at most a third of the election timeout",
            );
        }
        if self.state_check_secs == 0 {
            return invalid("state-check-secs", "must be at least 1");
        }
        if self.node_grace_ms > super::liveness::NODE_GRACE_MAX.as_millis() as u64 {
            return invalid("node-grace-ms", "must be at most an hour (3600000)");
        }
        if self.election_timeout_min_ms >= self.election_timeout_max_ms {
            return invalid(
                "election-timeout-ms",
                "the minimum must be below the maximum",
            );
        }
        Ok(())
    }

    /// True when this member is one of the initial members, so it may help form the
    /// cluster; otherwise it waits to be added with add-voter.
    pub fn is_initial_member(&self) -> bool {
        self.peers.contains_key(&self.id)
    }

    pub fn raft_config(&self) -> openraft::Config {
        openraft::Config {
            cluster_name: "corral".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: 10_000,
            max_payload_entries: 512,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            snapshot_max_chunk_size: 1024 * 1024,
            max_in_snapshot_log_to_keep: self.snapshot_catchup_entries,
            purge_batch_size: 256,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_bad_entries_are_named() {
        let peers = parse_peers("1=127.0.0.1:7001, 2=host-b:7002,3=[::1]:7003").unwrap();
        assert_eq!(peers.len(), 3);
        assert_eq!(peers[&3], "[::1]:7003");
        for bad in ["1", "x=h:1", "1=h", "1=:80", "1=h:99999", "1=h:1,1=h:2"] {
            assert!(parse_peers(bad).is_err(), "{bad} was accepted");
        }
    }
}
