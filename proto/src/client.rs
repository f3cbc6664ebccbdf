//! The async Rust client of the agent's Unix socket.
//!
//! ```text
//!  AgentClient::call ──frame──► writer half ──► agent
//!        ▲ oneshot                               │
//!        └──────── reader task ◄─────────────────┘  replies by id, events to Subscription
//!  poller task: keeps the runtime polling for a moment while a reply is awaited
//! ```
//!
//! The agent answers a lookup from memory within microseconds, faster than a sleeping
//! thread wakes on many machines: after a request, the runtime keeps polling for its reply
//! for an adaptive window ([`crate::idle_poll`], at most [`ClientOptions::reply_poll_max`]),
//! which stays shut while replies take longer (writes wait for the core).
//!
//! One connection is one client session: what it creates as ephemeral lives as long as
//! the [`AgentClient`] (and its clones) do. Dropping the last clone closes the connection.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Mutex, mpsc, oneshot, watch};

use crate::answer::Answer;
use crate::api::{
    AgentFrame, AgentRequest, AgentStatus, ApiError, ClientFrame, EventFilter, MemberInfo, Query,
    QueryResult, ReadReply, Reply, SubscriptionItem,
};
use crate::frame::{self, FrameError};
use crate::idle_poll::IdlePoll;
use crate::limits::FRAME_LEN_MAX;
use crate::model::{KeyValue, Lock, LockGrant, Revision, ServiceInstance, SessionId, Shard};

/// Items buffered per subscription before the reader task waits for the app.
pub const SUBSCRIPTION_BUFFER: usize = 4096;

/// Environment variable naming the agent's socket.
pub const SOCKET_ENV: &str = "CORRAL_SOCKET";

/// How a connection to the agent behaves.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// Longest the runtime keeps polling for a reply before its thread sleeps (zero:
    /// never polls). The window adapts to how soon replies come.
    pub reply_poll_max: Duration,
    /// Items a subscription holds for its reader before the connection stops reading
    /// (and the agent, past its budget, ends the subscription): memory for bursts.
    pub subscription_buffer: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            reply_poll_max: Duration::from_micros(50),
            subscription_buffer: SUBSCRIPTION_BUFFER,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the agent at {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("connection to the agent lost: {0}")]
    Disconnected(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("unexpected reply from the agent: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// The API error, if the agent answered with one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            ClientError::Api(e) => Some(e),
            _ => None,
        }
    }
}

type Pending = HashMap<u64, oneshot::Sender<Result<Reply, ApiError>>>;

struct Shared {
    writer: Mutex<OwnedWriteHalf>,
    pending: closable::Map<Pending>,
    subscriptions: closable::Map<HashMap<u64, mpsc::Sender<SubscriptionItem>>>,
    next_id: AtomicU64,
    reply_poll: Arc<IdlePoll>,
    subscription_buffer: usize,
    reader: tokio::task::JoinHandle<()>,
    /// Dropped with the connection: ends the poller task.
    _poller_stop: watch::Sender<bool>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A tiny mutex-protected map that never holds its guard across an await.
mod closable {
    #[derive(Debug, Default)]
    pub(crate) struct Map<T>(std::sync::Mutex<Option<T>>);

    impl<T: Default> Map<T> {
        pub(crate) fn new() -> Self {
            Map(std::sync::Mutex::new(Some(T::default())))
        }

        /// Runs `f` on the map; None once the connection is closed.
        pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
            let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
            guard.as_mut().map(f)
        }

        /// Closes the map and returns what it held.
        pub(crate) fn close(&self) -> Option<T> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
        }
    }
}

/// A connection to the local agent. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct AgentClient {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient").finish_non_exhaustive()
    }
}

/// The events of one subscription, in revision order.
#[derive(Debug)]
pub struct Subscription {
    pub id: u64,
    /// The replica's revision when the subscription started.
    pub revision: Revision,
    items: mpsc::Receiver<SubscriptionItem>,
    client: AgentClient,
}

impl Subscription {
    /// The next item; None when the connection is gone.
    pub async fn next(&mut self) -> Option<SubscriptionItem> {
        self.items.recv().await
    }

    /// Ends the subscription.
    pub async fn cancel(self) -> Result<(), ClientError> {
        self.client
            .call(AgentRequest::Unsubscribe {
                subscription: self.id,
            })
            .await
            .map(|_| ())
    }
}

impl AgentClient {
    /// Connects to the agent listening at `path`.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        Self::connect_with(path, ClientOptions::default()).await
    }

    /// Connects to the agent listening at `path`, with `options`.
    pub async fn connect_with(
        path: impl AsRef<Path>,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (read, write) = stream.into_split();
        let reply_poll = IdlePoll::new(options.reply_poll_max);
        let (poller_stop, stopped) = watch::channel(false);
        tokio::spawn(reply_poll.clone().run(stopped));
        let shared = Arc::new_cyclic(|weak: &std::sync::Weak<Shared>| {
            let weak = weak.clone();
            Shared {
                writer: Mutex::new(write),
                pending: closable::Map::new(),
                subscriptions: closable::Map::new(),
                next_id: AtomicU64::new(1),
                reply_poll,
                subscription_buffer: options.subscription_buffer.max(1),
                reader: tokio::spawn(read_loop(read, weak)),
                _poller_stop: poller_stop,
            }
        });
        Ok(AgentClient { shared })
    }

    /// Connects to the socket named by `CORRAL_SOCKET`.
    pub async fn connect_from_env() -> Result<Self, ClientError> {
        let path = std::env::var(SOCKET_ENV).map_err(|_| ClientError::Connect {
            path: format!("${SOCKET_ENV}"),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not set"),
        })?;
        Self::connect(path).await
    }

    /// Sends one request and waits for its reply.
    /// True once the connection to the agent is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.pending.with(|_| ()).is_none()
    }

    pub async fn call(&self, request: AgentRequest) -> Result<Reply, ClientError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        if self
            .shared
            .pending
            .with(|pending| pending.insert(id, sender))
            .is_none()
        {
            return Err(ClientError::Disconnected("connection closed".into()));
        }
        self.send(ClientFrame { id, request }).await?;
        self.shared.reply_poll.awaiting(std::time::Instant::now());
        match receiver.await {
            Ok(result) => Ok(result?),
            Err(_) => Err(ClientError::Disconnected("connection closed".into())),
        }
    }

    async fn send(&self, message: ClientFrame) -> Result<(), ClientError> {
        let mut writer = self.shared.writer.lock().await;
        let id = message.id;
        frame::write_frame(&mut *writer, &message)
            .await
            .inspect_err(|_| {
                self.shared.pending.with(|p| p.remove(&id));
            })?;
        Ok(())
    }

    pub async fn status(&self) -> Result<AgentStatus, ClientError> {
        match self.call(AgentRequest::Status).await? {
            Reply::Status(status) => Ok(status),
            other => Err(unexpected(&other)),
        }
    }

    /// Asks the agent to leave for good ([`AgentRequest::Leave`]); answers its name and
    /// the node session the core closed, with the revision it closed it at.
    pub async fn leave(&self) -> Result<(String, Option<(SessionId, Revision)>), ClientError> {
        match self.call(AgentRequest::Leave).await? {
            Reply::Leaving { name, closed } => Ok((name, closed)),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn members(&self) -> Result<Vec<MemberInfo>, ClientError> {
        match self.call(AgentRequest::Members).await? {
            Reply::Members(members) => Ok(members),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn read(&self, query: Query, consistent: bool) -> Result<ReadReply, ClientError> {
        match self.call(AgentRequest::Read { query, consistent }).await? {
            Reply::Read(read) => Ok(read),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, ClientError> {
        match self.read(Query::Key(key.into()), false).await?.result {
            QueryResult::Key(value) => Ok(value),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn shard(&self, name: &str) -> Result<Option<Shard>, ClientError> {
        match self.read(Query::Shard(name.into()), false).await?.result {
            QueryResult::Shard(shard) => Ok(shard),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn lock(&self, name: &str) -> Result<Option<Lock>, ClientError> {
        match self.read(Query::Lock(name.into()), false).await?.result {
            QueryResult::Lock(lock) => Ok(lock),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn service(&self, name: &str) -> Result<Vec<ServiceInstance>, ClientError> {
        match self.read(Query::Service(name.into()), false).await?.result {
            QueryResult::Service(instances) => Ok(instances),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Sends a write and returns its revision and answer.
    pub async fn write(&self, request: AgentRequest) -> Result<(Revision, Answer), ClientError> {
        match self.call(request).await? {
            Reply::Written { revision, answer } => Ok((revision, answer)),
            other => Err(unexpected(&other)),
        }
    }

    /// Opens a session the agent holds beyond this connection: with `ttl`, it ends unless
    /// renewed ([`AgentClient::renew_session`]) within that time; without, it lives until
    /// closed or until the host dies. Any connection of the same Unix user may act in it
    /// ([`AgentClient::write_in`]), so an app keeps what it holds across a reconnect.
    pub async fn open_session(
        &self,
        ttl: Option<std::time::Duration>,
        label: &str,
    ) -> Result<SessionId, ClientError> {
        let request = AgentRequest::OpenSession {
            ttl_ms: ttl.map(|ttl| ttl.as_millis() as u64),
            label: label.into(),
        };
        match self.call(request).await? {
            Reply::Session { session, .. } => Ok(session),
            other => Err(unexpected(&other)),
        }
    }

    /// Restarts a held session's time-to-live.
    pub async fn renew_session(&self, session: SessionId) -> Result<(), ClientError> {
        match self.call(AgentRequest::RenewSession { session }).await? {
            Reply::Session { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Ends a held session, releasing everything bound to it.
    pub async fn close_session(&self, session: SessionId) -> Result<Revision, ClientError> {
        self.write(AgentRequest::CloseSession { session })
            .await
            .map(|(revision, _)| revision)
    }

    /// A write acting in held session `session`: what it creates is bound to it.
    pub async fn write_in(
        &self,
        session: SessionId,
        request: AgentRequest,
    ) -> Result<(Revision, Answer), ClientError> {
        self.write(AgentRequest::InSession {
            session,
            request: Box::new(request),
        })
        .await
    }

    /// Reports how far replica `address` of `shard`, registered on this connection, has
    /// replicated (see [`AgentRequest::ReportPosition`]). Cheap: nothing is written to the
    /// core, so a store may report as often as its position moves.
    pub async fn report_position(
        &self,
        shard: &str,
        address: &str,
        position: u64,
    ) -> Result<(), ClientError> {
        let request = AgentRequest::ReportPosition {
            shard: shard.into(),
            address: address.into(),
            position,
        };
        match self.call(request).await? {
            Reply::PositionReported => Ok(()),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn put(&self, key: &str, value: &[u8]) -> Result<Revision, ClientError> {
        let request = AgentRequest::Put {
            key: key.into(),
            value: value.to_vec(),
            ephemeral: false,
        };
        Ok(self.write(request).await?.0)
    }

    /// Acquires `name`, waiting up to `wait_ms` in the queue.
    pub async fn acquire_lock(&self, name: &str, wait_ms: u64) -> Result<LockGrant, ClientError> {
        let request = AgentRequest::AcquireLock {
            name: name.into(),
            wait_ms,
            detach: false,
        };
        match self.write(request).await? {
            (_, Answer::LockGranted(grant)) => Ok(grant),
            (_, other) => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn release_lock(&self, name: &str) -> Result<Revision, ClientError> {
        let request = AgentRequest::ReleaseLock {
            name: name.into(),
            detach: false,
        };
        Ok(self.write(request).await?.0)
    }

    /// Subscribes to events matching `filter` after `after` (None: from now).
    pub async fn subscribe(
        &self,
        filter: EventFilter,
        after: Option<Revision>,
    ) -> Result<Subscription, ClientError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (items_sender, items) = mpsc::channel(self.shared.subscription_buffer);
        let (sender, receiver) = oneshot::channel();
        let registered = self
            .shared
            .subscriptions
            .with(|s| s.insert(id, items_sender));
        let pending = self.shared.pending.with(|p| p.insert(id, sender));
        if registered.is_none() || pending.is_none() {
            return Err(ClientError::Disconnected("connection closed".into()));
        }
        let request = AgentRequest::Subscribe { filter, after };
        self.send(ClientFrame { id, request }).await?;
        let reply = match receiver.await {
            Ok(result) => result.inspect_err(|_| {
                self.shared.subscriptions.with(|s| s.remove(&id));
            })?,
            Err(_) => return Err(ClientError::Disconnected("connection closed".into())),
        };
        match reply {
            Reply::Subscribed { revision } => Ok(Subscription {
                id,
                revision,
                items,
                client: self.clone(),
            }),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(reply: &Reply) -> ClientError {
    ClientError::Unexpected(format!("{reply:?}"))
}

async fn read_loop(read: OwnedReadHalf, shared: std::sync::Weak<Shared>) {
    let mut reader = BufReader::new(read);
    let reason = loop {
        let frame = match frame::read_frame::<_, AgentFrame>(&mut reader, FRAME_LEN_MAX).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break "the agent closed the connection".to_string(),
            Err(e) => break e.to_string(),
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match frame {
            AgentFrame::Reply { id, result } => {
                shared.reply_poll.arrived(std::time::Instant::now());
                if let Some(Some(sender)) = shared.pending.with(|p| p.remove(&id)) {
                    let _ = sender.send(result);
                }
            }
            AgentFrame::Event { subscription, item } => {
                let ended = matches!(item, SubscriptionItem::Ended { .. });
                let sender = shared
                    .subscriptions
                    .with(|s| s.get(&subscription).cloned())
                    .flatten();
                if let Some(sender) = sender {
                    // Waiting here applies back-pressure to the agent, which ends the
                    // subscription if the app stops reading altogether.
                    if sender.send(item).await.is_err() || ended {
                        shared.subscriptions.with(|s| s.remove(&subscription));
                    }
                }
            }
        }
    };
    if let Some(shared) = shared.upgrade() {
        // Fail every waiting call and end every subscription.
        drop(shared.pending.close());
        if let Some(subscriptions) = shared.subscriptions.close() {
            for sender in subscriptions.into_values() {
                let _ = sender.try_send(SubscriptionItem::Ended {
                    reason: reason.clone(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// An agent stand-in that answers every request with an empty member list, each
    /// after `delay`.
    async fn fake_agent(delay: Duration) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let (read, mut write) = stream.into_split();
            let mut read = BufReader::new(read);
            while let Ok(Some(request)) =
                frame::read_frame::<_, ClientFrame>(&mut read, FRAME_LEN_MAX).await
            {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let reply = AgentFrame::Reply {
                    id: request.id,
                    result: Ok(Reply::Members(Vec::new())),
                };
                if frame::write_frame(&mut write, &reply).await.is_err() {
                    return;
                }
            }
        });
        (dir, path)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn quick_replies_open_the_reply_window_and_slow_ones_shut_it() {
        // A millisecond: quick for a reply within one test process, even unoptimised.
        let options = ClientOptions {
            reply_poll_max: Duration::from_millis(1),
            ..ClientOptions::default()
        };
        let (_dir, path) = fake_agent(Duration::ZERO).await;
        let client = AgentClient::connect_with(&path, options)
            .await
            .expect("connect");
        for _ in 0..20 {
            assert!(client.members().await.expect("reply").is_empty());
        }
        let window = client.shared.reply_poll.window();
        assert!(
            window > Duration::ZERO && window <= options.reply_poll_max,
            "{window:?}"
        );

        let (_dir, path) = fake_agent(Duration::from_millis(5)).await;
        let client = AgentClient::connect_with(&path, options)
            .await
            .expect("connect");
        // Open the window as quick replies would, then let slow replies shut it.
        client.shared.reply_poll.awaiting(std::time::Instant::now());
        client.shared.reply_poll.arrived(std::time::Instant::now());
        assert!(client.shared.reply_poll.window() > Duration::ZERO);
        for _ in 0..20 {
            assert!(client.members().await.expect("reply").is_empty());
        }
        assert_eq!(client.shared.reply_poll.window(), Duration::ZERO);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_zero_reply_poll_never_polls() {
        let (_dir, path) = fake_agent(Duration::ZERO).await;
        let options = ClientOptions {
            reply_poll_max: Duration::ZERO,
            ..ClientOptions::default()
        };
        let client = AgentClient::connect_with(&path, options)
            .await
            .expect("connect");
        for _ in 0..20 {
            assert!(client.members().await.expect("reply").is_empty());
        }
        assert_eq!(client.shared.reply_poll.window(), Duration::ZERO);
    }
}
