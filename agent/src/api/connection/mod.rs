//! One app connection on the agent's socket: its requests, its client session and its
//! subscriptions.
//!
//! ```text
//!  reader ─┬─ local lookup ─────────────────────────────── reply ─────────────┐
//!          ├─ spawn handler (≤ REQUESTS_IN_FLIGHT_MAX) ─── reply ─────────────┼─► write half
//!          └─ spawn subscription ─ its replies, events ─► queue ─► writer task ┘
//!  bad frame: error reply, then the connection is closed
//!  close: every subscription ends; the client session is closed in the core at once
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use corral_net::client::ClientError as CoreClientError;
use corral_net::rpc::CoreError;
use corral_proto::api::{
    AgentFrame, AgentRequest, AgentStatus, ApiError, ClientFrame, EventFilter, LOCK_WAIT_MAX_MS,
    MemberInfo, REQUESTS_IN_FLIGHT_MAX, ReadReply, Reply, SUBSCRIPTIONS_PER_CONNECTION_MAX,
    SubscriptionItem,
};
use corral_proto::limits::FRAME_LEN_MAX;
use corral_proto::{
    Answer, Command, CommandError, Event, EventBatch, Revision, SessionId, SessionOwner, frame,
};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{Semaphore, broadcast, oneshot};

use self::sessions::Target;
use super::rights;
use super::translate::{self, Binding};
use crate::sessions::held_sessions::Holder;
use crate::sessions::node_session;
use corral_proto::access::Identity;

mod outgoing;
mod positions;
mod reads;
mod sessions;
mod subscription;

pub use self::outgoing::CONNECTION_BYTES_MAX;
use self::outgoing::FrameWriter;
use crate::agent::AgentContext;
use crate::metrics::RequestKind;
use crate::replica::ReplicaSignal;

/// How long a write waits for the local replica to apply it before answering anyway.
pub const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(5);

/// A replica silent this long makes a write probe the core first.
const CORE_SILENT_AFTER: Duration = Duration::from_secs(3);

/// How long that probe may take before the write is refused.
const CORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a write that needs the agent's node session waits for it after the agent starts.
const NODE_SESSION_WAIT: Duration = Duration::from_secs(5);

/// Longest an app may take to finish sending a frame it has started.
pub const FRAME_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a consistent read waits for the replica to reach the read index.
const CONSISTENT_READ_WAIT: Duration = Duration::from_secs(5);

struct Connection {
    context: Arc<AgentContext>,
    writer: FrameWriter,
    /// The connection's client session, and the node session it was opened under.
    session: tokio::sync::Mutex<Option<(SessionId, SessionId)>>,
    client_key: u64,
    /// The Unix user of the app (`SO_PEERCRED`): the holder of the sessions it opens.
    holder: Holder,
    /// Who the app is to the access rules.
    identity: Identity,
    /// The agent's own user or root: may act on behalf of HTTP clients.
    privileged: bool,
    /// Highest revision this connection wrote: its reads never show less.
    watermark: Mutex<Revision>,
    subscriptions: Mutex<HashMap<u64, oneshot::Sender<()>>>,
}

pub async fn serve(context: Arc<AgentContext>, stream: UnixStream) {
    // Without credentials the app is nobody: it may hold sessions of its own only.
    let (uid, gid) = stream
        .peer_cred()
        .map_or((u32::MAX - 1, u32::MAX - 1), |c| (c.uid(), c.gid()));
    let privileged = uid == 0 || uid == nix::unistd::getuid().as_raw();
    let (read, write) = stream.into_split();
    let (write, frames) = FrameWriter::new(write, context.idle_poll.clone());
    let mut runner = write.clone();
    runner.close_queue();
    let writer = tokio::spawn(runner.run(frames));
    let client_key = context.next_client_key();
    let connection = Arc::new(Connection {
        context: context.clone(),
        writer: write.clone(),
        session: tokio::sync::Mutex::new(None),
        client_key,
        holder: Holder::Uid(uid),
        identity: Identity::Unix { uid, gid },
        privileged,
        watermark: Mutex::new(0),
        subscriptions: Mutex::new(HashMap::new()),
    });
    let in_flight = Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX));
    let mut reader = BufReader::new(read);
    let mut shutdown = context.shutdown.clone();
    // One wait for shutdown across all frames, polled only when no frame is ready (the
    // runtime's budget makes a busy connection yield now and then).
    let shutdown = shutdown.changed();
    tokio::pin!(shutdown);
    loop {
        // Wait for a frame's first byte for as long as the app likes; once it started, the
        // rest must follow within FRAME_READ_TIMEOUT.
        let started = tokio::select! {
            biased;
            ready = reader.fill_buf() => ready.map(|buffered| !buffered.is_empty()),
            _ = &mut shutdown => break,
        };
        if !matches!(started, Ok(true)) {
            break;
        }
        let message = match tokio::time::timeout(
            FRAME_READ_TIMEOUT,
            frame::read_frame::<_, ClientFrame>(&mut reader, FRAME_LEN_MAX),
        )
        .await
        {
            Ok(message) => message,
            Err(_) => {
                tracing::info!(
                    "a frame started but was not finished in time; closing the connection"
                );
                let reply = AgentFrame::Reply {
                    id: 0,
                    result: Err(ApiError::BadRequest(format!(
                        "a frame was started but not finished within {FRAME_READ_TIMEOUT:?}"
                    ))),
                };
                let _ = write.queue_reply(&reply).await;
                break;
            }
        };
        let arrived = std::time::Instant::now();
        let message = match message {
            Ok(Some(message)) => {
                context.idle_poll.arrived(arrived);
                message
            }
            Ok(None) => break,
            Err(e) => {
                if !e.is_clean_close() {
                    tracing::info!(error = %e, "bad frame on the socket; closing the connection");
                    let reply = AgentFrame::Reply {
                        id: 0,
                        result: Err(ApiError::BadRequest(e.to_string())),
                    };
                    let _ = write.queue_reply(&reply).await;
                }
                break;
            }
        };
        // A lookup the replica can answer now is answered here, without a task or a
        // queue in between: the local read is the agent's hot path.
        if let AgentRequest::Read {
            query,
            consistent: false,
        } = &message.request
            && let Some(result) = connection.read_now(query)
        {
            let answered = std::time::Instant::now();
            context
                .metrics
                .record(RequestKind::Read, answered - arrived, result.is_ok());
            let reply = AgentFrame::Reply {
                id: message.id,
                result,
            };
            if !write.write(&reply, Some(answered)).await {
                break;
            }
            continue;
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            let reply = AgentFrame::Reply {
                id: message.id,
                result: Err(ApiError::TooManyRequests(REQUESTS_IN_FLIGHT_MAX)),
            };
            if !write.queue_reply(&reply).await {
                break;
            }
            continue;
        };
        let connection = connection.clone();
        let write = write.clone();
        tokio::spawn(async move {
            let id = message.id;
            let kind = request_kind(&message.request);
            // A subscription's own replies stay in the queue, in order with its events;
            // any other reply goes out from here, without waking the writer task first.
            let queued = matches!(
                message.request,
                AgentRequest::Subscribe { .. } | AgentRequest::Unsubscribe { .. }
            );
            let started = std::time::Instant::now();
            let result = connection.handle(id, message.request).await;
            if let Some(kind) = kind {
                let ok = result.as_ref().is_none_or(Result::is_ok);
                connection
                    .context
                    .metrics
                    .record(kind, started.elapsed(), ok);
            }
            if let Some(result) = result {
                let reply = AgentFrame::Reply { id, result };
                if queued {
                    let _ = connection.writer.queue_reply(&reply).await;
                } else {
                    write.write(&reply, None).await;
                }
            }
            drop(permit);
        });
    }
    // The connection is gone: end subscriptions, release the session at once.
    connection.subscriptions.lock().clear();
    drop(write);
    connection.close_session().await;
    drop(connection);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
}

/// How a request's latency is counted; None for subscriptions, whose reply time says
/// nothing useful.
fn request_kind(request: &AgentRequest) -> Option<RequestKind> {
    Some(match request {
        AgentRequest::Read {
            consistent: false, ..
        } => RequestKind::Read,
        AgentRequest::Read {
            consistent: true, ..
        } => RequestKind::ConsistentRead,
        AgentRequest::AcquireLock { .. } | AgentRequest::ReleaseLock { .. } => RequestKind::Lock,
        AgentRequest::Status
        | AgentRequest::Members
        | AgentRequest::Leave
        | AgentRequest::ReportPosition { .. } => RequestKind::Other,
        AgentRequest::Subscribe { .. } | AgentRequest::Unsubscribe { .. } => return None,
        _ => RequestKind::Write,
    })
}

fn core_error(error: CoreClientError) -> ApiError {
    match error {
        CoreClientError::OutcomeUnknown(e) => ApiError::OutcomeUnknown(e),
        CoreClientError::Core(CoreError::Invalid(e)) => ApiError::Invalid(e),
        CoreClientError::Core(CoreError::OutcomeUnknown(e)) => ApiError::OutcomeUnknown(e),
        CoreClientError::Core(e) => ApiError::Unavailable(e.to_string()),
        other => ApiError::Unavailable(other.to_string()),
    }
}

impl Connection {
    /// Handles one request. None when the reply was already sent (subscriptions).
    async fn handle(
        self: &Arc<Self>,
        id: u64,
        request: AgentRequest,
    ) -> Option<Result<Reply, ApiError>> {
        let (identity, holder, request) = match request {
            AgentRequest::Leave => return Some(self.leave().await),
            AgentRequest::OnBehalf { token, request } if self.privileged => (
                token.clone().map_or(Identity::Anonymous, Identity::Token),
                Holder::Http(token),
                *request,
            ),
            AgentRequest::OnBehalf { .. } => {
                return Some(Err(ApiError::Forbidden(
                    "only the agent's own HTTP gateway acts on behalf of HTTP clients".into(),
                )));
            }
            request => (self.identity.clone(), self.holder.clone(), request),
        };
        if let Err(refused) = self
            .context
            .replica
            .read(|r| rights::check(r.machine().access(), &identity, &request))
        {
            return Some(Err(refused));
        }
        Some(match request {
            AgentRequest::OnBehalf { .. } => Err(ApiError::BadRequest(
                "a request acts on behalf of one client only".into(),
            )),
            AgentRequest::Leave => Err(ApiError::Forbidden(
                "only the host's operator, on the agent's socket, makes the agent leave".into(),
            )),
            AgentRequest::OpenSession { ttl_ms, label } => {
                self.handle_open_session(ttl_ms, label, &holder).await
            }
            AgentRequest::RenewSession { session } => self.handle_renew_session(session, &holder),
            AgentRequest::CloseSession { session } => {
                self.handle_close_session(session, &holder).await
            }
            AgentRequest::InSession { session, request } => {
                self.handle_in_session(session, *request, &holder).await
            }
            AgentRequest::Status => Ok(Reply::Status(self.status().await)),
            AgentRequest::Members => Ok(Reply::Members(self.members())),
            AgentRequest::Read { query, consistent } => self.read(query, consistent).await,
            AgentRequest::Subscribe { filter, after } => {
                return self.subscribe(id, filter, after).await.err().map(Err);
            }
            AgentRequest::ReportPosition {
                shard,
                address,
                position,
            } => {
                let session = self.session.lock().await.map(|(id, _)| id);
                self.report_position(&shard, &address, position, session)
            }
            AgentRequest::Unsubscribe { subscription } => {
                match self.subscriptions.lock().remove(&subscription) {
                    Some(stop) => {
                        let _ = stop.send(());
                        Ok(Reply::Unsubscribed)
                    }
                    None => Err(ApiError::NoSuchSubscription(subscription)),
                }
            }
            write => self.write_or_wait(write, None).await,
        })
    }

    /// [`AgentRequest::Leave`] from this connection: only the agent's own Unix user or
    /// root may make the host leave the fleet.
    /// The node session is closed before the answer, so that the answer says that what
    /// the host held is released; when the core cannot close it, the agent stays.
    async fn leave(&self) -> Result<Reply, ApiError> {
        if !self.privileged {
            return Err(ApiError::Forbidden(
                "only root or the agent's own user makes the agent leave".into(),
            ));
        }
        let context = &self.context;
        if context.leaving.swap(true, Ordering::SeqCst) {
            return Err(ApiError::Unavailable("the agent is already leaving".into()));
        }
        let node_session = *context.node_session.borrow();
        tracing::info!(?node_session, "asked over the socket to leave for good");
        let closed = match node_session {
            None => None,
            Some(id) => match node_session::close(&context.core, id).await {
                Ok(revision) => Some((id, revision)),
                Err(error) => {
                    context.leaving.store(false, Ordering::SeqCst);
                    return Err(ApiError::Unavailable(format!(
                        "node session {id} could not be closed, so the agent stays: {error}"
                    )));
                }
            },
        };
        context.leave_asked.notify_one();
        Ok(Reply::Leaving {
            name: context.name.clone(),
            closed,
        })
    }

    /// A write, acting in held session `named` if given; a lock acquire with a wait
    /// queues until granted or the wait ends.
    async fn write_or_wait(
        &self,
        request: AgentRequest,
        named: Option<SessionId>,
    ) -> Result<Reply, ApiError> {
        match request {
            AgentRequest::AcquireLock { wait_ms, .. } if wait_ms > LOCK_WAIT_MAX_MS => Err(
                ApiError::BadRequest(format!("wait_ms above the limit of {LOCK_WAIT_MAX_MS}")),
            ),
            AgentRequest::AcquireLock {
                ref name, wait_ms, ..
            } if wait_ms > 0 => {
                let name = name.clone();
                self.acquire_waiting(request, name, wait_ms, named).await
            }
            write => self.write(write, named).await,
        }
    }

    /// A request acting in held session `session`: only writes, reads and lock waits.
    async fn handle_in_session(
        &self,
        session: SessionId,
        request: AgentRequest,
        holder: &Holder,
    ) -> Result<Reply, ApiError> {
        self.check_held(session, holder)?;
        match request {
            AgentRequest::Read { query, consistent } => self.read(query, consistent).await,
            AgentRequest::ReportPosition {
                shard,
                address,
                position,
            } => self.report_position(&shard, &address, position, Some(session)),
            AgentRequest::Status
            | AgentRequest::Members
            | AgentRequest::Subscribe { .. }
            | AgentRequest::Unsubscribe { .. }
            | AgentRequest::OpenSession { .. }
            | AgentRequest::RenewSession { .. }
            | AgentRequest::CloseSession { .. }
            | AgentRequest::OnBehalf { .. }
            | AgentRequest::Leave
            | AgentRequest::InSession { .. } => Err(ApiError::BadRequest(
                "only reads and writes act in a session".into(),
            )),
            write => self.write_or_wait(write, Some(session)).await,
        }
    }

    fn raise_watermark(&self, revision: Revision) {
        let mut watermark = self.watermark.lock();
        *watermark = (*watermark).max(revision);
    }

    /// Refuses at once, with nothing sent, when the core has been silent for a while and
    /// does not answer a short probe: a host cut off from the core learns it in about
    /// [`CORE_PROBE_TIMEOUT`], not after the full retry budget of a write.
    async fn check_core_reachable(&self) -> Result<(), ApiError> {
        let Some(age) = self.context.replica.age() else {
            return Ok(());
        };
        if age < CORE_SILENT_AFTER {
            return Ok(());
        }
        match tokio::time::timeout(CORE_PROBE_TIMEOUT, self.context.core.read_index()).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ApiError::Unavailable(format!(
                "cut off from the core: not heard from for {} ms and not answering; nothing was written",
                age.as_millis()
            ))),
        }
    }

    /// Sends a write and waits until the local replica applied it; `named` is the held
    /// session it acts in, if it names one.
    async fn write(
        &self,
        request: AgentRequest,
        named: Option<SessionId>,
    ) -> Result<Reply, ApiError> {
        self.check_core_reachable().await?;
        let target = self.target(&request, named).await?;
        self.write_in(request, target).await
    }

    /// Sends a write bound to and acting in the sessions of `target`.
    async fn write_in(&self, request: AgentRequest, target: Target) -> Result<Reply, ApiError> {
        let Some(command) = translate::command_for(&request, target.bound) else {
            return Err(ApiError::BadRequest("not a write".into()));
        };
        let command = command.acted_by(self.actor(target.acting));
        command.validate()?;
        let response = self
            .context
            .writes
            .write(command.clone())
            .await
            .map_err(core_error)?;
        let revision = response.revision;
        self.settle(&command, &response).await;
        match response.outcome {
            Ok(Answer::Txn {
                succeeded: false, ..
            }) if matches!(request, AgentRequest::CompareAndSet { .. }) => {
                let AgentRequest::CompareAndSet { key, .. } = request else {
                    unreachable!("matched above")
                };
                let version = self
                    .context
                    .replica
                    .read(|r| r.machine().get(&key).map_or(0, |kv| kv.version));
                Err(ApiError::Conflict {
                    key,
                    version,
                    revision,
                })
            }
            Ok(answer) => Ok(Reply::Written { revision, answer }),
            Err(CommandError::NoSuchSession { session: lost }) if Some(lost) == target.bound => {
                // The session was closed by the core: forget it, tell the app.
                let mut session = self.session.lock().await;
                if session.is_some_and(|(id, _)| id == lost) {
                    *session = None;
                }
                self.context.held.lock().remove(lost);
                Err(ApiError::SessionLost(lost))
            }
            Err(error) => Err(ApiError::Refused { revision, error }),
        }
    }

    /// A lock acquire that may wait in the queue until granted or `wait_ms` passes.
    async fn acquire_waiting(
        &self,
        request: AgentRequest,
        name: String,
        wait_ms: u64,
        named: Option<SessionId>,
    ) -> Result<Reply, ApiError> {
        self.check_core_reachable().await?;
        let target = self.target(&request, named).await?;
        let Some(session) = target.bound else {
            return Err(ApiError::BadRequest(
                "a lock request needs a session".into(),
            ));
        };
        // Subscribe before writing so that a grant right after the queueing is not missed.
        let mut signals = self.context.replica.subscribe();
        let reply = self.write_in(request, target).await?;
        let Reply::Written {
            answer: Answer::LockQueued { .. },
            revision,
        } = reply
        else {
            return Ok(reply);
        };
        let granted_now = |revision: Revision| {
            self.context.replica.read(|r| {
                r.machine()
                    .lock(&name)
                    .and_then(|l| l.holder.clone())
                    .filter(|h| h.session == session)
                    .map(|grant| (r.revision().max(revision), grant))
            })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        loop {
            if let Some((at, grant)) = granted_now(revision) {
                return Ok(Reply::Written {
                    revision: at,
                    answer: Answer::LockGranted(grant),
                });
            }
            let signal = tokio::select! {
                signal = signals.recv() => signal,
                () = tokio::time::sleep_until(deadline) => break,
            };
            match signal {
                Ok(ReplicaSignal::Applied(batch)) => {
                    for event in &batch.events {
                        match event {
                            Event::LockGranted { name: n, grant }
                                if *n == name && grant.session == session =>
                            {
                                self.raise_watermark(batch.revision);
                                return Ok(Reply::Written {
                                    revision: batch.revision,
                                    answer: Answer::LockGranted(grant.clone()),
                                });
                            }
                            Event::SessionClosed { session: s, .. } if *s == session => {
                                return Err(ApiError::SessionLost(session));
                            }
                            _ => {}
                        }
                    }
                }
                // Lagged or replaced: the state check at the loop's top covers it.
                Ok(ReplicaSignal::Replaced(_)) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(ApiError::ShuttingDown);
                }
            }
        }
        // Gave up: leave the queue (or release, if the grant came just now).
        let release = Command::ReleaseLock {
            name: name.clone(),
            session,
        }
        .acted_by(self.actor(Some(session)));
        let _ = self.context.core.write(&release).await;
        Err(ApiError::Timeout(format!(
            "lock {name} not granted within {wait_ms} ms"
        )))
    }
}
