//! The openraft type configuration of Corral's core.

use std::io::Cursor;

use corral_proto::{Command, CommandResponse};
use openraft::BasicNode;

openraft::declare_raft_types!(
    /// Corral's Raft: commands in, command responses out, members named by `u64` ids and
    /// reached at the address in [`BasicNode`].
    pub TypeConfig:
        D = Command,
        R = Option<CommandResponse>,
        NodeId = u64,
        Node = BasicNode,
);

pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BasicNode>;
pub type Raft = openraft::Raft<TypeConfig>;
