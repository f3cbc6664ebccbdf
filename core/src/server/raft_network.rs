//! openraft's network: Raft RPCs to other members over QUIC, on connections of Raft's own
//! ALPN ([`crate::raft_rpc`]).

use std::sync::Arc;

use corral_proto::FrameError;
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::RPCTypes;
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::raft_rpc::{RaftRequest, RaftResponse};
use crate::raft_types::{Entry, NodeId, TypeConfig};
use corral_net::transport::certificate_authority::core_member_name;
use corral_net::transport::{QuicTransport, TransportError};

/// Most encoded bytes of entries in one AppendEntries. Each AppendEntries with entries has
/// half an election timeout (250 ms by default, see third_party/openraft/PATCH.md) to cross
/// the network and the follower's disk; a member far behind a log of large values is sent
/// it in pieces that do, instead of pieces of megabytes that time out on every attempt.
pub(crate) const APPEND_ENTRIES_BYTES_MAX: usize = 1 << 20;

/// How many of `entries` fit in [`APPEND_ENTRIES_BYTES_MAX`] (at least one), when not all
/// of them do.
fn entries_that_fit(entries: &[Entry]) -> Option<usize> {
    if entries.len() <= 1 {
        return None;
    }
    let mut bytes = 0;
    for (i, entry) in entries.iter().enumerate() {
        bytes += postcard::experimental::serialized_size(entry).unwrap_or(0);
        if bytes > APPEND_ENTRIES_BYTES_MAX {
            return Some(i.max(1));
        }
    }
    None
}

#[derive(Clone, Debug)]
pub(crate) struct Network {
    pub(crate) self_id: NodeId,
    pub(crate) transport: Arc<QuicTransport>,
}

#[derive(Debug)]
pub(crate) struct PeerClient {
    self_id: NodeId,
    target: NodeId,
    address: String,
    name: String,
    transport: Arc<QuicTransport>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            self_id: self.self_id,
            target,
            address: node.addr.clone(),
            name: core_member_name(target),
            transport: self.transport.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unexpected(String);

impl PeerClient {
    async fn call<E: std::error::Error>(
        &self,
        request: RaftRequest,
        option: &RPCOption,
        entries: usize,
        action: RPCTypes,
    ) -> Result<RaftResponse, RPCError<NodeId, BasicNode, E>> {
        let ttl = option.hard_ttl();
        match self
            .transport
            .call(&self.address, &self.name, &request, ttl)
            .await
        {
            Ok(RaftResponse::Refused(reason)) => {
                Err(RPCError::Network(NetworkError::new(&Unexpected(reason))))
            }
            Ok(answer) => Ok(answer),
            Err(TransportError::Frame(FrameError::TooLarge { .. })) => {
                Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint((entries / 2).max(1) as u64),
                ))
            }
            Err(TransportError::Timeout(_)) => Err(RPCError::Timeout(Timeout {
                action,
                id: self.self_id,
                target: self.target,
                timeout: ttl,
            })),
            Err(e) if e.is_before_send() => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

fn unexpected<E: std::error::Error>(answer: RaftResponse) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&Unexpected(format!(
        "unexpected answer {answer:?}"
    ))))
}

type Rpc<T, E = RaftError<NodeId>> = Result<T, RPCError<NodeId, BasicNode, E>>;

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>> {
        if let Some(fit) = entries_that_fit(&rpc.entries) {
            // openraft sends again at once, with at most this many entries.
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit as u64),
            ));
        }
        let entries = rpc.entries.len();
        match self
            .call(
                RaftRequest::AppendEntries(rpc),
                &option,
                entries,
                RPCTypes::AppendEntries,
            )
            .await?
        {
            RaftResponse::AppendEntries(Ok(answer)) => Ok(answer),
            RaftResponse::AppendEntries(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        match self
            .call(
                RaftRequest::InstallSnapshot(rpc),
                &option,
                1,
                RPCTypes::InstallSnapshot,
            )
            .await?
        {
            RaftResponse::InstallSnapshot(Ok(answer)) => Ok(answer),
            RaftResponse::InstallSnapshot(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<NodeId>> {
        match self
            .call(RaftRequest::Vote(rpc), &option, 1, RPCTypes::Vote)
            .await?
        {
            RaftResponse::Vote(Ok(answer)) => Ok(answer),
            RaftResponse::Vote(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(unexpected(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft_types::Proposal;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    fn entry(index: u64, value_len: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal {
                commands: vec![corral_proto::Command::Put {
                    key: format!("k{index}"),
                    value: vec![7; value_len],
                    session: None,
                }],
            }),
        }
    }

    /// Entries beyond the byte budget are left for the next AppendEntries; one entry always
    /// goes, however large.
    #[test]
    fn append_entries_are_cut_to_the_byte_budget() {
        let small: Vec<Entry> = (1..=100).map(|i| entry(i, 1024)).collect();
        assert_eq!(entries_that_fit(&small), None);
        let large: Vec<Entry> = (1..=100).map(|i| entry(i, 32 * 1024)).collect();
        assert_eq!(entries_that_fit(&large), Some(31));
        let huge: Vec<Entry> = (1..=3).map(|i| entry(i, 2 << 20)).collect();
        assert_eq!(entries_that_fit(&huge), Some(1));
        assert_eq!(entries_that_fit(&huge[..1]), None);
    }
}
