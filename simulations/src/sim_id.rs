//! The identity of a simulated member: an index and an incarnation, 16 bytes, where the
//! agent's [`NodeIdentity`] holds a name string and a socket address.
//!
//! On the wire it is exactly a `NodeIdentity` (name `host-00042`, address
//! `10.0.0.42:7946`), so every simulated packet has the size the agent's would have,
//! and foca packs as many updates into one datagram as it does in the agent. In memory it
//! is small enough for ten thousand members to each know ten thousand others.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use corral_agent::gossip::{GossipIdentity, NodeIdentity};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The gossip port every simulated host uses, as the agent's default does.
const GOSSIP_PORT: u16 = 7946;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SimId {
    pub index: u32,
    pub incarnation: u64,
}

impl SimId {
    pub fn name(index: u32) -> String {
        format!("host-{index:05}")
    }

    pub fn address(index: u32) -> SocketAddr {
        let [_, b, c, d] = index.to_be_bytes();
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, b, c, d), GOSSIP_PORT))
    }

    fn index_of(address: SocketAddr) -> Option<u32> {
        match address {
            SocketAddr::V4(v4) if v4.port() == GOSSIP_PORT => {
                let [a, b, c, d] = v4.ip().octets();
                (a == 10).then(|| u32::from_be_bytes([0, b, c, d]))
            }
            _ => None,
        }
    }

    fn to_node_identity(self) -> NodeIdentity {
        NodeIdentity {
            // A seed is addressed by its address only, as in the agent.
            name: if self.incarnation == 0 {
                String::new()
            } else {
                SimId::name(self.index)
            },
            address: SimId::address(self.index),
            incarnation: self.incarnation,
        }
    }
}

impl std::fmt::Display for SimId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", SimId::name(self.index), self.incarnation)
    }
}

impl Serialize for SimId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_node_identity().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SimId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let node = NodeIdentity::deserialize(deserializer)?;
        let index = SimId::index_of(node.address)
            .ok_or_else(|| serde::de::Error::custom("not a simulated address"))?;
        Ok(SimId {
            index,
            incarnation: node.incarnation,
        })
    }
}

impl foca::Identity for SimId {
    type Addr = u32;

    fn renew(&self) -> Option<Self> {
        Some(SimId {
            incarnation: self.incarnation + 1,
            ..*self
        })
    }

    fn addr(&self) -> u32 {
        self.index
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

impl GossipIdentity for SimId {
    fn seed(index: u32) -> Self {
        SimId {
            index,
            incarnation: 0,
        }
    }

    fn incarnation(&self) -> u64 {
        self.incarnation
    }

    fn with_incarnation(&self, incarnation: u64) -> Self {
        SimId {
            incarnation,
            ..*self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated identity encodes to the agent's bytes for the same member, and back.
    #[test]
    fn encodes_as_the_agent_identity_does() {
        let id = SimId {
            index: 9_999,
            incarnation: 3,
        };
        let node = NodeIdentity {
            name: "host-09999".into(),
            address: "10.0.39.15:7946".parse().unwrap(),
            incarnation: 3,
        };
        let bytes = postcard::to_stdvec(&id).unwrap();
        assert_eq!(bytes, postcard::to_stdvec(&node).unwrap());
        assert_eq!(postcard::from_bytes::<SimId>(&bytes).unwrap(), id);
    }

    #[test]
    fn a_foreign_address_is_refused() {
        let node = NodeIdentity {
            name: "x".into(),
            address: "192.168.0.1:7946".parse().unwrap(),
            incarnation: 1,
        };
        let bytes = postcard::to_stdvec(&node).unwrap();
        assert!(postcard::from_bytes::<SimId>(&bytes).is_err());
    }
}
