//! Raft between core members: a protocol of its own (ALPN [`ALPN_RAFT`]), apart from what
//! agents and tools send ([`corral_net::rpc`]). A member serves it only on connections
//! whose certificate is a core member's, and a message only from the member it claims to
//! come from.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::raft_types::{NodeId, TypeConfig};

/// ALPN protocol name of Raft connections between core members.
pub const ALPN_RAFT: &[u8] = b"corral-raft/1";

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
}

impl RaftRequest {
    /// The member the message says it comes from (the leader or candidate of its vote).
    pub fn sender(&self) -> Option<NodeId> {
        let vote = match self {
            RaftRequest::AppendEntries(rpc) => &rpc.vote,
            RaftRequest::Vote(rpc) => &rpc.vote,
            RaftRequest::InstallSnapshot(rpc) => &rpc.vote,
        };
        vote.leader_id().voted_for()
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// The member refused the message (a certificate that is not the sender's, a member
    /// catching up that votes for nobody yet, a frame it could not read).
    Refused(String),
}
