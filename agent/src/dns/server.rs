//! The agent's DNS server (`--dns ADDRESS`, UDP and TCP): each query is answered from the
//! local replica and the gossip view ([`super::zone`]), with no call to the core, so an
//! answer changes the moment the replica applies a failover.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::{DNSClass, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use super::zone::{self, Nodes, Question};
use crate::agent::AgentContext;
use crate::gossip::GossipHandle;
use crate::metrics::DnsOutcome;
use corral_proto::api::MemberState;

/// Largest UDP answer offered with EDNS (larger ones are truncated: ask over TCP).
const EDNS_PAYLOAD_MAX: u16 = 1232;

/// Answers queries under `corral.` from the agent's own state.
pub struct Handler {
    context: Arc<AgentContext>,
    ttl: u32,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("dns::Handler")
            .field("ttl", &self.ttl)
            .finish()
    }
}

struct GossipNodes<'a>(&'a GossipHandle);

impl Nodes for GossipNodes<'_> {
    fn address(&self, name: &str) -> Option<IpAddr> {
        let view = self.0.view.read();
        let member = view.members.get(name).or_else(|| {
            let mut matching = view
                .members
                .values()
                .filter(|m| m.identity.name.eq_ignore_ascii_case(name));
            let first = matching.next()?;
            matching.next().is_none().then_some(first)
        })?;
        (member.state != MemberState::Down).then(|| member.identity.address.ip())
    }
}

impl Handler {
    pub fn new(context: Arc<AgentContext>, ttl: u32) -> Handler {
        Handler { context, ttl }
    }

    pub(super) fn metrics(&self) -> &crate::metrics::AgentMetrics {
        &self.context.metrics
    }

    /// The response code, answers and additional records for `request`, and whether the
    /// zone's SOA goes in the authority section.
    fn resolve(&self, request: &Request) -> (ResponseCode, Vec<Record>, Vec<Record>, bool) {
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            return (ResponseCode::NotImp, Vec::new(), Vec::new(), false);
        }
        let Ok(info) = request.request_info() else {
            return (ResponseCode::FormErr, Vec::new(), Vec::new(), false);
        };
        if info.query.query_class() != DNSClass::IN && info.query.query_class() != DNSClass::ANY {
            return (ResponseCode::Refused, Vec::new(), Vec::new(), false);
        }
        let name = info.query.original().name();
        let question = match zone::question(name) {
            Ok(question) => question,
            Err(true) => return (ResponseCode::NXDomain, Vec::new(), Vec::new(), true),
            Err(false) => return (ResponseCode::Refused, Vec::new(), Vec::new(), false),
        };
        let nodes = GossipNodes(&self.context.gossip);
        let record_type = info.query.query_type();
        let answer = match &question {
            // Only the gossip view: no need to hold the replica.
            Question::Node(_) | Question::Addr(_) => zone::answer(
                &question,
                name,
                record_type,
                &corral_state::StateMachine::new(),
                &nodes,
                self.ttl,
            ),
            _ => self.context.replica.read(|r| {
                zone::answer(&question, name, record_type, r.machine(), &nodes, self.ttl)
            }),
        };
        if !answer.exists {
            return (ResponseCode::NXDomain, Vec::new(), Vec::new(), true);
        }
        if question == Question::Apex && matches!(record_type, RecordType::SOA | RecordType::ANY) {
            return (
                ResponseCode::NoError,
                vec![zone::soa(self.ttl)],
                Vec::new(),
                false,
            );
        }
        let empty = answer.answers.is_empty();
        (
            ResponseCode::NoError,
            answer.answers,
            answer.additionals,
            empty,
        )
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let (code, answers, additionals, with_soa) = self.resolve(request);
        self.context.metrics.dns_query(match code {
            ResponseCode::NoError => DnsOutcome::Answered,
            ResponseCode::NXDomain => DnsOutcome::NxDomain,
            ResponseCode::FormErr => DnsOutcome::Malformed,
            _ => DnsOutcome::Refused,
        });
        let edns = request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().clamp(512, EDNS_PAYLOAD_MAX));
            edns
        });
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = code == ResponseCode::NoError || code == ResponseCode::NXDomain;
        metadata.recursion_available = false;
        metadata.response_code = code;
        let soa: Vec<Record> = if with_soa {
            vec![zone::soa(self.ttl)]
        } else {
            Vec::new()
        };
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let response = builder.build(metadata, &answers, [], &soa, &additionals);
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "a DNS answer could not be sent");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(hickory_server::proto::op::Header {
                    metadata,
                    counts: Default::default(),
                })
            }
        }
    }
}

/// The handler shared between the UDP server and the TCP connections.
struct SharedHandler(Arc<Handler>);

#[async_trait::async_trait]
impl RequestHandler for SharedHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.0
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds UDP and TCP on `address` (the same port for both).
pub async fn bind(
    address: SocketAddr,
) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let udp = tokio::net::UdpSocket::bind(address).await?;
    let tcp = tokio::net::TcpListener::bind(udp.local_addr()?).await?;
    Ok((udp, tcp))
}

/// Serves DNS on the bound sockets until `shutdown` turns true: UDP by hickory's server,
/// TCP by [`super::tcp`], which caps its connections.
pub async fn serve(
    sockets: (tokio::net::UdpSocket, tokio::net::TcpListener),
    handler: Handler,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let handler = Arc::new(handler);
    let (udp, tcp) = sockets;
    let tcp = tokio::spawn(super::tcp::serve(tcp, handler.clone()));
    let _stop_tcp = AbortOnDrop(tcp);
    let mut server = Server::new(SharedHandler(handler));
    server.register_socket(udp);
    let stopping = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let stopped = tokio::select! {
        result = server.block_until_done() => {
            if let Err(error) = result {
                tracing::error!(%error, "the DNS server stopped");
            }
            false
        }
        () = stopping => true,
    };
    if stopped {
        let _ = server.shutdown_gracefully().await;
    }
}
