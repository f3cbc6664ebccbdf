//! A client of the core, for agents and tools: finds the leader, sends writes and
//! linearizable reads to it, and opens watch streams on any member.
//!
//! ```text
//!  write(cmd) ─► cached leader ─► NotLeader{leader} ─► retry at that leader
//!                     │ unreachable ─► next member that has not failed lately
//!                     └ lost after sending ─► OutcomeUnknown (unless the command is
//!                                             idempotent, then retried)
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use corral_proto::access::AccessTable;
use corral_proto::frame::{self, FRAME_LEN_MAX, FrameError};
use corral_proto::{Command, CommandResponse, KeyValue, Revision};
use parking_lot::Mutex;
use quinn::{RecvStream, SendStream};

use crate::rpc::NodeId;
use crate::rpc::{CoreError, CoreRequest, CoreResponse, CoreStatus, WatchItem};
use crate::transport::certificate_authority::CORE_NAME;
use crate::transport::{QuicTransport, TransportError};

/// Longest one request to one member may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(12);
/// Longest a request may take in all, across leader changes.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause before asking again while the core elects a leader.
const ELECTION_BACKOFF: Duration = Duration::from_millis(100);
/// How long a member that could not be reached is passed over. A dead member costs a
/// whole QUIC idle timeout per try; without this, a client cycling through the members
/// after a leader's death would keep paying it.
const UNREACHABLE_FOR: Duration = Duration::from_secs(5);
/// How long a member that could not be reached is not believed when a follower names it
/// leader. Followers name the old leader until their election timeout (0.5–1 s by
/// default) has passed; after that the name is news: after a whole-core restart, every
/// member failed a moment ago and the one named is the new leader.
const LEADER_HINT_DISTRUST: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The core refused the request; nothing was written.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The request may or may not have been applied.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// No member could serve the request in time; nothing was written.
    #[error("the core is unavailable: {0}")]
    Unavailable(String),
    #[error("unexpected answer from the core: {0}")]
    Unexpected(String),
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl ClientError {
    /// The same error for another request of one batch: a transport error, which cannot be
    /// copied, becomes the outcome-unknown error it stands for.
    fn duplicate(&self) -> ClientError {
        match self {
            ClientError::Core(e) => ClientError::Core(e.clone()),
            ClientError::OutcomeUnknown(reason) => ClientError::OutcomeUnknown(reason.clone()),
            ClientError::Unavailable(reason) => ClientError::Unavailable(reason.clone()),
            ClientError::Unexpected(reason) => ClientError::Unexpected(reason.clone()),
            ClientError::Transport(e) if e.is_before_send() => {
                ClientError::Unavailable(e.to_string())
            }
            ClientError::Transport(e) => ClientError::OutcomeUnknown(e.to_string()),
        }
    }
}

pub struct CoreClient {
    transport: Arc<QuicTransport>,
    members: Vec<String>,
    next_member: AtomicUsize,
    leader: Mutex<Option<String>>,
    /// When each member (by index in `members`) last failed to answer at all.
    unreachable_since: Mutex<Vec<Option<Instant>>>,
}

impl std::fmt::Debug for CoreClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreClient")
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

impl CoreClient {
    pub fn new(transport: Arc<QuicTransport>, members: Vec<String>) -> Self {
        Self {
            transport,
            next_member: AtomicUsize::new(0),
            leader: Mutex::new(None),
            unreachable_since: Mutex::new(vec![None; members.len()]),
            members,
        }
    }

    pub fn members(&self) -> &[String] {
        &self.members
    }

    pub fn transport(&self) -> &Arc<QuicTransport> {
        &self.transport
    }

    /// The member the client currently believes leads.
    pub fn leader(&self) -> Option<String> {
        self.leader.lock().clone()
    }

    fn pick(&self) -> Option<String> {
        if let Some(leader) = self.leader.lock().clone() {
            return Some(leader);
        }
        if self.members.is_empty() {
            return None;
        }
        let start = self.next_member.fetch_add(1, Ordering::Relaxed);
        let unreachable = self.unreachable_since.lock();
        let n = self.members.len();
        // The next member in turn that has not failed lately; when all have, the next
        // one in turn, since one of them may be back.
        let i = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| !recently(unreachable[i]))
            .unwrap_or(start % n);
        Some(self.members[i].clone())
    }

    fn forget_leader(&self, address: &str) {
        let mut leader = self.leader.lock();
        if leader.as_deref() == Some(address) {
            *leader = None;
        }
    }

    /// Notes that `address` did not answer, so that the next picks pass it over.
    fn mark_unreachable(&self, address: &str) {
        self.forget_leader(address);
        if let Some(i) = self.members.iter().position(|m| m == address) {
            self.unreachable_since.lock()[i] = Some(Instant::now());
        }
    }

    fn mark_reachable(&self, address: &str) {
        if let Some(i) = self.members.iter().position(|m| m == address) {
            self.unreachable_since.lock()[i] = None;
        }
    }

    /// Whether `address` failed to answer within the last `within`.
    fn failed_within(&self, address: &str, within: Duration) -> bool {
        self.members
            .iter()
            .position(|m| m == address)
            .is_some_and(|i| {
                self.unreachable_since.lock()[i].is_some_and(|at| at.elapsed() < within)
            })
    }

    /// Sends `request` to the leader, following redirects. With `repeatable`, a request
    /// whose outcome was lost is sent again; otherwise that is an `OutcomeUnknown` error.
    pub async fn call_leader(
        &self,
        request: &CoreRequest,
        repeatable: bool,
    ) -> Result<CoreResponse, ClientError> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut last_error = String::from("no core member is configured");
        while Instant::now() < deadline {
            let Some(target) = self.pick() else { break };
            let timeout = CALL_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
            match self
                .transport
                .call::<_, CoreResponse>(&target, CORE_NAME, request, timeout)
                .await
            {
                Ok(CoreResponse::Error(CoreError::NotLeader { leader })) => {
                    self.mark_reachable(&target);
                    self.forget_leader(&target);
                    match leader {
                        // A follower names the old leader until its election timeout;
                        // a leader that just failed to answer is not taken at its word.
                        Some((_, address))
                            if address != target
                                && !self.failed_within(&address, LEADER_HINT_DISTRUST) =>
                        {
                            *self.leader.lock() = Some(address)
                        }
                        _ => tokio::time::sleep(ELECTION_BACKOFF).await,
                    }
                    last_error = format!("{target} is not the leader");
                }
                Ok(CoreResponse::Error(CoreError::Unavailable(reason))) => {
                    self.forget_leader(&target);
                    last_error = format!("{target}: {reason}");
                    tokio::time::sleep(ELECTION_BACKOFF).await;
                }
                Ok(CoreResponse::Error(CoreError::OutcomeUnknown(reason))) if !repeatable => {
                    self.forget_leader(&target);
                    return Err(ClientError::OutcomeUnknown(format!("{target}: {reason}")));
                }
                Ok(CoreResponse::Error(CoreError::OutcomeUnknown(reason))) => {
                    self.forget_leader(&target);
                    last_error = format!("{target}: {reason}");
                }
                Ok(CoreResponse::Error(e)) => return Err(ClientError::Core(e)),
                Ok(answer) => {
                    self.mark_reachable(&target);
                    *self.leader.lock() = Some(target);
                    return Ok(answer);
                }
                Err(e) if e.is_before_send() || repeatable => {
                    self.mark_unreachable(&target);
                    last_error = format!("{target}: {e}");
                    tokio::time::sleep(ELECTION_BACKOFF / 2).await;
                }
                Err(e) => {
                    self.mark_unreachable(&target);
                    return Err(ClientError::OutcomeUnknown(format!("{target}: {e}")));
                }
            }
        }
        Err(ClientError::Unavailable(last_error))
    }

    /// Proposes a command and returns its result once the leader applied it.
    pub async fn write(&self, command: &Command) -> Result<CommandResponse, ClientError> {
        let request = CoreRequest::Write(command.clone());
        match self.call_leader(&request, command.is_idempotent()).await? {
            CoreResponse::Write(response) => Ok(response),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Proposes several commands in one request (at most `WRITE_BATCH_MAX`) and returns
    /// each one's result, in order. A command the leader refused without proposing it (it
    /// lost leadership or its quorum), or an idempotent one whose outcome was lost, is sent
    /// again on its own; a member that does not know batches gets them one by one.
    pub async fn write_batch(
        &self,
        commands: &[Command],
    ) -> Vec<Result<CommandResponse, ClientError>> {
        let request = CoreRequest::WriteBatch(commands.to_vec());
        let repeatable = commands.iter().all(Command::is_idempotent);
        let results = match self.call_leader(&request, repeatable).await {
            Ok(CoreResponse::WriteBatch(results)) if results.len() == commands.len() => results,
            Ok(other) => {
                let unexpected = format!("{other:?}");
                return commands
                    .iter()
                    .map(|_| Err(ClientError::Unexpected(unexpected.clone())))
                    .collect();
            }
            Err(ClientError::Core(CoreError::BadRequest(_))) => {
                let mut results = Vec::with_capacity(commands.len());
                for command in commands {
                    results.push(self.write(command).await);
                }
                return results;
            }
            Err(e) => return commands.iter().map(|_| Err(e.duplicate())).collect(),
        };
        let mut answers = Vec::with_capacity(commands.len());
        for (command, result) in commands.iter().zip(results) {
            answers.push(match result {
                Ok(response) => Ok(response),
                Err(CoreError::NotLeader { .. } | CoreError::Unavailable(_)) => {
                    self.write(command).await
                }
                Err(CoreError::OutcomeUnknown(_)) if command.is_idempotent() => {
                    self.write(command).await
                }
                Err(CoreError::OutcomeUnknown(reason)) => Err(ClientError::OutcomeUnknown(reason)),
                Err(e) => Err(ClientError::Core(e)),
            });
        }
        answers
    }

    /// The revision a linearizable read must reflect.
    pub async fn read_index(&self) -> Result<Revision, ClientError> {
        match self.call_leader(&CoreRequest::ReadIndex, true).await? {
            CoreResponse::ReadIndex { revision } => Ok(revision),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Reads a key from the leader, linearizably when `consistent`.
    pub async fn get(
        &self,
        key: &str,
        consistent: bool,
    ) -> Result<(Revision, Option<KeyValue>), ClientError> {
        match self
            .call_leader(
                &CoreRequest::Get {
                    key: key.to_string(),
                    consistent,
                },
                true,
            )
            .await?
        {
            CoreResponse::Get { revision, value } => Ok((revision, value)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The access rules, tokens and quota, as the member at `address` holds them (admin
    /// certificate only).
    pub async fn access(&self, address: &str) -> Result<AccessTable, ClientError> {
        match self
            .transport
            .call::<_, CoreResponse>(address, CORE_NAME, &CoreRequest::Access, CALL_TIMEOUT)
            .await?
        {
            CoreResponse::Access(table) => Ok(table),
            CoreResponse::Error(e) => Err(ClientError::Core(e)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The status of one member.
    pub async fn status(&self, address: &str) -> Result<CoreStatus, ClientError> {
        match self
            .transport
            .call::<_, CoreResponse>(address, CORE_NAME, &CoreRequest::Status, CALL_TIMEOUT)
            .await?
        {
            CoreResponse::Status(status) => Ok(status),
            CoreResponse::Error(e) => Err(ClientError::Core(e)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The revision and a checksum of the whole state of the member at `address`.
    pub async fn state_digest(&self, address: &str) -> Result<(Revision, u32), ClientError> {
        match self
            .transport
            .call::<_, CoreResponse>(address, CORE_NAME, &CoreRequest::StateDigest, CALL_TIMEOUT)
            .await?
        {
            CoreResponse::StateDigest {
                revision, digest, ..
            } => Ok((revision, digest)),
            CoreResponse::Error(e) => Err(ClientError::Core(e)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Reads a key from the state of the member at `address`, whatever its role.
    pub async fn get_local(
        &self,
        address: &str,
        key: &str,
    ) -> Result<(Revision, Option<KeyValue>), ClientError> {
        let request = CoreRequest::GetLocal {
            key: key.to_string(),
        };
        match self
            .transport
            .call::<_, CoreResponse>(address, CORE_NAME, &request, CALL_TIMEOUT)
            .await?
        {
            CoreResponse::Get { revision, value } => Ok((revision, value)),
            CoreResponse::Error(e) => Err(ClientError::Core(e)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn add_voter(&self, id: NodeId, address: String) -> Result<CoreStatus, ClientError> {
        match self
            .call_leader(&CoreRequest::AddVoter { id, address }, true)
            .await?
        {
            CoreResponse::MembershipChanged(status) => Ok(status),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn remove_voter(&self, id: NodeId) -> Result<CoreStatus, ClientError> {
        match self
            .call_leader(&CoreRequest::RemoveVoter { id }, true)
            .await?
        {
            CoreResponse::MembershipChanged(status) => Ok(status),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Opens a progress-only stream on the member at `address` ([`CoreRequest::Beats`]).
    pub async fn beats(&self, address: &str) -> Result<WatchStream, ClientError> {
        let (send, receive) = self
            .transport
            .open_stream(address, CORE_NAME, &CoreRequest::Beats)
            .await?;
        Ok(WatchStream::from_streams(send, receive))
    }

    /// Opens a watch stream on the member at `address`, from after revision `after`.
    pub async fn watch(
        &self,
        address: &str,
        after: Option<Revision>,
    ) -> Result<WatchStream, ClientError> {
        let (send, receive) = self
            .transport
            .open_stream(address, CORE_NAME, &CoreRequest::Watch { after })
            .await?;
        Ok(WatchStream::from_streams(send, receive))
    }
}

fn recently(failed_at: Option<Instant>) -> bool {
    failed_at.is_some_and(|at| at.elapsed() < UNREACHABLE_FOR)
}

/// The receiving end of a watch stream. The stream lasts while its send half does.
pub struct WatchStream {
    send: Option<SendStream>,
    receive: RecvStream,
    /// Bytes read from the stream so far.
    received: u64,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream").finish_non_exhaustive()
    }
}

impl WatchStream {
    /// The stream's send half, for beats ([`crate::rpc::WatchBeat`]); None once taken.
    /// The member ends the stream when it is finished or dropped.
    pub fn take_beat_sender(&mut self) -> Option<SendStream> {
        self.send.take()
    }

    /// The next item; `Ok(None)` when the member ended the stream.
    pub async fn next(&mut self) -> Result<Option<WatchItem>, ClientError> {
        let mut counted = Counted {
            inner: &mut self.receive,
            bytes: &mut self.received,
        };
        frame::read_frame::<_, WatchItem>(&mut counted, FRAME_LEN_MAX)
            .await
            .map_err(|e| ClientError::Unavailable(format!("watch stream failed: {e}")))
    }

    /// The next item and the frame it came in, as received (a relay forwards entries'
    /// frames as they are); `Ok(None)` when the source ended the stream.
    pub async fn next_frame(&mut self) -> Result<Option<(WatchItem, Bytes)>, ClientError> {
        let mut counted = Counted {
            inner: &mut self.receive,
            bytes: &mut self.received,
        };
        let failed = |e: FrameError| ClientError::Unavailable(format!("watch stream failed: {e}"));
        let Some(raw) = frame::read_raw_frame(&mut counted, FRAME_LEN_MAX)
            .await
            .map_err(failed)?
        else {
            return Ok(None);
        };
        let item = frame::decode_body(&raw[frame::FRAME_HEADER_LEN..]).map_err(failed)?;
        Ok(Some((item, Bytes::from(raw))))
    }

    /// Wraps a stream opened by other means (an agent's relay) as a watch stream.
    pub fn from_streams(send: SendStream, receive: RecvStream) -> Self {
        WatchStream {
            send: Some(send),
            receive,
            received: 0,
        }
    }

    /// Bytes read from the stream so far (frames and their headers).
    pub fn bytes_received(&self) -> u64 {
        self.received
    }
}

/// A reader that counts the bytes read through it.
struct Counted<'a, R> {
    inner: &'a mut R,
    bytes: &'a mut u64,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<'_, R> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut *this.inner).poll_read(cx, buf);
        *this.bytes += (buf.filled().len() - before) as u64;
        polled
    }
}
