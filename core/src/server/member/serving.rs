//! The QUIC server of a member: connections of both protocols, one request per stream,
//! each checked against [`super::rules`] and answered.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use corral_net::rpc::{CoreError, CoreRequest, CoreResponse, NodeId};
use corral_net::transport::certificate_authority::core_member_name;
use corral_net::transport::quic;
use corral_net::transport::tls::peer_certificate;
use corral_proto::frame::{self, FRAME_LEN_MAX};
use quinn::{Connection, RecvStream, SendStream};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{CONNECTIONS_MAX, CoreMember, REQUEST_READ_TIMEOUT, rules};
use crate::raft_rpc::{ALPN_RAFT, RaftRequest, RaftResponse};
use crate::server::actor::{self, PeerNames};
use crate::server::watch_stream::{self, Served};

impl CoreMember {
    pub(super) async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.transport.endpoint().accept().await {
            if self.connections.load(Ordering::Relaxed) >= CONNECTIONS_MAX {
                incoming.refuse();
                continue;
            }
            let member = self.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(connection) => {
                        member.connections.fetch_add(1, Ordering::Relaxed);
                        member.clone().serve_connection(connection).await;
                        member.connections.fetch_sub(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::debug!(error = %e, "refused a connection"),
                }
            });
        }
    }

    async fn serve_connection(self: Arc<Self>, connection: Connection) {
        let peer = Arc::new(PeerNames::of(peer_certificate(&connection)));
        let raft = negotiated_protocol(&connection).as_deref() == Some(ALPN_RAFT);
        while let Ok((send, receive)) = connection.accept_bi().await {
            let streams = (connection.clone(), peer.clone(), send, receive);
            if raft {
                tokio::spawn(self.clone().serve_raft_stream(streams));
            } else {
                tokio::spawn(self.clone().serve_stream(streams));
            }
        }
    }

    /// Reads a stream's one request; answers a frame it cannot read, or a revoked
    /// certificate, with `refuse(reason)` and returns None.
    async fn read_request<Q: DeserializeOwned, A: Serialize>(
        &self,
        (connection, peer, send, receive): &mut Stream,
        refuse: impl Fn(String) -> A,
    ) -> Option<Q> {
        let request = tokio::time::timeout(
            REQUEST_READ_TIMEOUT,
            frame::read_frame::<_, Q>(receive, FRAME_LEN_MAX),
        )
        .await;
        let request = match request {
            Ok(Ok(Some(request))) => request,
            Ok(Ok(None)) | Err(_) => return None,
            Ok(Err(e)) => {
                tracing::debug!(peer = %connection.remote_address(), error = %e, "bad request frame");
                let _ = frame::write_frame(send, &refuse(e.to_string())).await;
                let _ = send.finish();
                return None;
            }
        };
        if peer
            .serial
            .as_ref()
            .is_some_and(|serial| self.revoked.read().contains(serial))
        {
            let _ = frame::write_frame(send, &refuse("this certificate is revoked".into())).await;
            let _ = send.finish();
            connection.close(0u32.into(), b"certificate revoked");
            return None;
        }
        Some(request)
    }

    async fn serve_stream(self: Arc<Self>, mut stream: Stream) {
        let refuse = |reason: String| CoreResponse::Error(CoreError::BadRequest(reason));
        let Some(request) = self
            .read_request::<CoreRequest, _>(&mut stream, refuse)
            .await
        else {
            return;
        };
        let (connection, peer, mut send, receive) = stream;
        let served = match request {
            CoreRequest::Watch { after } => Some(Served::Entries(after)),
            CoreRequest::Beats => Some(Served::Progress),
            _ => None,
        };
        if let Some(served) = served {
            // The watcher's beats follow on this stream: it has no end to take.
            watch_stream::serve(&self, &connection, served, send, receive).await;
            return;
        }
        let response = self.handle(&peer, request).await;
        if frame::write_frame(&mut send, &response).await.is_ok() {
            let _ = send.finish();
        }
        quic::take_end(receive);
    }

    async fn serve_raft_stream(self: Arc<Self>, mut stream: Stream) {
        let Some(request) = self
            .read_request::<RaftRequest, _>(&mut stream, RaftResponse::Refused)
            .await
        else {
            return;
        };
        let (_, peer, mut send, receive) = stream;
        let response = match rules::may_send_raft(request.sender(), &peer) {
            Err(refused) => RaftResponse::Refused(refused.to_string()),
            Ok(()) => self.handle_raft(request).await,
        };
        if frame::write_frame(&mut send, &response).await.is_ok() {
            let _ = send.finish();
        }
        quic::take_end(receive);
    }

    async fn handle_raft(&self, request: RaftRequest) -> RaftResponse {
        match request {
            RaftRequest::AppendEntries(rpc) => {
                RaftResponse::AppendEntries(self.raft.append_entries(rpc).await)
            }
            RaftRequest::Vote(rpc) => {
                if !self
                    .rejoin
                    .lock()
                    .allows_vote(rpc.vote.leader_id().term, rpc.last_log_id)
                {
                    return RaftResponse::Refused(
                        "this member is catching up after losing its data and votes only for a \
                         candidate holding every committed entry"
                            .into(),
                    );
                }
                RaftResponse::Vote(self.raft.vote(rpc).await)
            }
            RaftRequest::InstallSnapshot(rpc) => {
                RaftResponse::InstallSnapshot(self.raft.install_snapshot(rpc).await)
            }
        }
    }

    /// Answers one request of the core protocol, after [`rules::may_ask`].
    async fn handle(&self, peer: &PeerNames, request: CoreRequest) -> CoreResponse {
        let forbidden = |what: &str| CoreResponse::Error(CoreError::Forbidden(what.to_string()));
        let members = || {
            let mut ids: Vec<NodeId> = self.other_members().into_iter().map(|(id, _)| id).collect();
            ids.push(self.id);
            ids
        };
        if let Err(refused) = rules::may_ask(&request, peer, members) {
            return forbidden(refused);
        }
        match request {
            CoreRequest::Write(command) => match actor::attribute(peer, command) {
                Err(refused) => forbidden(&refused),
                Ok(command) => self.write(command).await,
            },
            CoreRequest::WriteBatch(commands) => {
                match commands
                    .into_iter()
                    .map(|command| actor::attribute(peer, command))
                    .collect::<Result<Vec<_>, _>>()
                {
                    Err(refused) => forbidden(&refused),
                    Ok(commands) => self.write_batch(commands).await,
                }
            }
            CoreRequest::Access => {
                CoreResponse::Access(self.applied.read(|a| a.machine.access().clone()))
            }
            CoreRequest::Heard { name, incarnation } => {
                let now = Instant::now();
                let liveness = self.liveness.lock();
                CoreResponse::Heard {
                    heard: liveness.heard(&name, incarnation, now),
                    silent_ms: liveness
                        .silent_for(&name, incarnation, now)
                        .map(|d| d.as_millis() as u64),
                }
            }
            CoreRequest::ReadIndex => match self.read_index().await {
                Ok(revision) => CoreResponse::ReadIndex { revision },
                Err(e) => CoreResponse::Error(e),
            },
            CoreRequest::Get { key, consistent } => {
                if consistent && let Err(e) = self.read_index().await {
                    return CoreResponse::Error(e);
                }
                let (revision, value) = self
                    .applied
                    .read(|a| (a.machine.revision(), a.machine.get(&key)));
                CoreResponse::Get { revision, value }
            }
            CoreRequest::Watch { .. } | CoreRequest::Beats => {
                CoreResponse::Error(CoreError::BadRequest("a watch needs its own stream".into()))
            }
            CoreRequest::Status => CoreResponse::Status(self.status().await),
            CoreRequest::StateDigest => {
                let (_, revision, digest, len) = self.state_digest();
                CoreResponse::StateDigest {
                    revision,
                    digest,
                    len,
                }
            }
            CoreRequest::GetLocal { key } => {
                let (revision, value) = self
                    .applied
                    .read(|a| (a.machine.revision(), a.machine.get(&key)));
                CoreResponse::Get { revision, value }
            }
            CoreRequest::Probe { fresh } => {
                if fresh
                    && let Some(id) = self
                        .config
                        .peers
                        .keys()
                        .find(|id| **id != self.id && peer.has(&core_member_name(**id)))
                {
                    self.fresh_probers.lock().insert(*id);
                }
                self.probe_answer().await
            }
            CoreRequest::ReportPositions { node, positions } => {
                if !peer.has(&node) {
                    return forbidden("positions are reported under the node's own certificate");
                }
                self.hear_positions(&node, positions)
            }
            CoreRequest::AddVoter { id, address } => self.add_voter(id, address).await,
            CoreRequest::RemoveVoter { id } => self.remove_voter(id).await,
        }
    }
}

/// A request stream: its connection, the peer's certificate names, and both directions.
type Stream = (Connection, Arc<PeerNames>, SendStream, RecvStream);

/// The ALPN protocol the connection agreed on.
fn negotiated_protocol(connection: &Connection) -> Option<Vec<u8>> {
    connection
        .handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}
