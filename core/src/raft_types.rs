//! The openraft type configuration of Corral's core.

use std::io::Cursor;

use corral_proto::{Command, CommandResponse};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};

/// What one log entry carries: the commands that arrived together at the leader, applied
/// in order, each with its own revision and answer. Batching them shares one fsync (and
/// one round of replication) among all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub commands: Vec<Command>,
}

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "proposal of {} commands", self.commands.len())
    }
}

openraft::declare_raft_types!(
    /// Corral's Raft: proposals in, one command response per command out, members named by
    /// `u64` ids and reached at the address in [`BasicNode`].
    pub TypeConfig:
        D = Proposal,
        R = Vec<CommandResponse>,
        NodeId = u64,
        Node = BasicNode,
);

pub use corral_net::rpc::NodeId;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BasicNode>;
pub type Raft = openraft::Raft<TypeConfig>;
