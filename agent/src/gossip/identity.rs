//! A gossip member's identity: its name (the name in its certificate), the address it
//! gossips on, and its incarnation.
//!
//! The incarnation is a generation number chosen at start and raised whenever the pool
//! declared this member dead, so a restarted or revived agent is never mistaken for its
//! dead predecessor: same name and address, a higher incarnation wins.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub name: String,
    pub address: SocketAddr,
    pub incarnation: u64,
}

impl NodeIdentity {
    /// The identity a joining member addresses a seed by: only the address is known, and
    /// foca accepts an announce to any identity with the receiver's address.
    pub fn seed(address: SocketAddr) -> Self {
        NodeIdentity {
            name: String::new(),
            address,
            incarnation: 0,
        }
    }
}

/// What the gossip engine needs of an identity. The agent uses [`NodeIdentity`]; the
/// simulations use a compact identity that encodes to the very same bytes, so that a
/// fleet of ten thousand fits in memory with the agent's message sizes.
pub trait GossipIdentity:
    foca::Identity + Serialize + serde::de::DeserializeOwned + std::fmt::Debug
{
    /// The identity a joining member addresses a seed by.
    fn seed(address: Self::Addr) -> Self;
    fn incarnation(&self) -> u64;
    /// The same member under another incarnation.
    fn with_incarnation(&self, incarnation: u64) -> Self;
}

impl GossipIdentity for NodeIdentity {
    fn seed(address: SocketAddr) -> Self {
        NodeIdentity::seed(address)
    }

    fn incarnation(&self) -> u64 {
        self.incarnation
    }

    fn with_incarnation(&self, incarnation: u64) -> Self {
        NodeIdentity {
            incarnation,
            ..self.clone()
        }
    }
}

impl std::fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}@{}", self.name, self.incarnation, self.address)
    }
}

impl foca::Identity for NodeIdentity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(NodeIdentity {
            incarnation: self.incarnation + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.address
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.incarnation, &self.name) > (adversary.incarnation, &adversary.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    #[test]
    fn a_renewed_identity_wins_over_its_predecessor() {
        let old = NodeIdentity {
            name: "a".into(),
            address: "127.0.0.1:1".parse().unwrap(),
            incarnation: 5,
        };
        let new = old.renew().unwrap();
        assert_eq!(new.incarnation, 6);
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
    }
}
