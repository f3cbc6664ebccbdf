//! A client of the agent's socket that outlives the agent's restarts (an upgrade, a crash
//! and `Restart=always`): it connects again by itself, keeps a session the agent holds
//! beyond one connection (renewed every third of its time-to-live, through whichever
//! connection is up), and resumes its subscriptions after the last revision they
//! delivered, so that an app sees no gap, no repeat and no end of its session.
//!
//! ```text
//!  app ─► ReconnectingClient ─► AgentClient (current connection) ─► agent
//!             │  the connection fails: connect again, for up to RECONNECT_FOR
//!             ├─ renewer task: RenewSession(session) every ttl/3
//!             └─ ReconnectingSubscription: Subscribe{after: last revision} again
//! ```
//!
//! Reads are asked again on the new connection. A write whose connection failed before
//! its answer may or may not have happened: it answers `Disconnected`, and the app decides
//! (an idempotent write is simply sent again).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::answer::Answer;
use crate::api::{AgentRequest, EventFilter, Query, ReadReply, SubscriptionItem};
use crate::client::{AgentClient, ClientError, ClientOptions, Subscription};
use crate::model::{Revision, SessionId};

/// How long the client keeps trying to connect again before it gives up on a call.
pub const RECONNECT_FOR: Duration = Duration::from_secs(30);

/// Pause between two attempts to connect.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// A connection to the local agent that is made again whenever it fails. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ReconnectingClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    options: ClientOptions,
    current: Mutex<Option<AgentClient>>,
    session: Option<SessionId>,
    /// Set when the agent refused to renew the session: it ended (expired, closed, or its
    /// host declared dead).
    session_ended: AtomicBool,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(renewer) = &self.renewer {
            renewer.abort();
        }
    }
}

/// Whether `error` says the connection failed (rather than the agent refusing).
fn connection_failed(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Connect { .. } | ClientError::Disconnected(_) | ClientError::Frame(_)
    )
}

impl ReconnectingClient {
    /// Connects to the agent at `path`. With `session_ttl`, opens a session the agent holds
    /// beyond this connection, ended unless renewed within that time: the client renews
    /// it, and what the app creates in it ([`ReconnectingClient::write_in_session`]) lasts
    /// across the agent's restarts shorter than the time-to-live.
    pub async fn connect(
        path: impl AsRef<Path>,
        options: ClientOptions,
        session_ttl: Option<Duration>,
        label: &str,
    ) -> Result<Self, ClientError> {
        let path = path.as_ref().to_path_buf();
        let first = AgentClient::connect_with(&path, options).await?;
        let session = match session_ttl {
            Some(ttl) => Some(first.open_session(Some(ttl), label).await?),
            None => None,
        };
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<Inner>| Inner {
            path,
            options,
            current: Mutex::new(Some(first)),
            session,
            session_ended: AtomicBool::new(false),
            renewer: session
                .zip(session_ttl)
                .map(|(session, ttl)| tokio::spawn(renew(weak.clone(), session, ttl))),
        });
        Ok(ReconnectingClient { inner })
    }

    /// The session the client keeps, if it opened one.
    pub fn session(&self) -> Option<SessionId> {
        self.inner.session
    }

    /// True once the agent refused to renew the session: it ended, and what it held with
    /// it.
    pub fn session_ended(&self) -> bool {
        self.inner.session_ended.load(Ordering::Relaxed)
    }

    /// The current connection, made again if it failed (for up to [`RECONNECT_FOR`]).
    pub async fn client(&self) -> Result<AgentClient, ClientError> {
        connection(&self.inner).await
    }

    /// A read, asked again on a new connection if its connection failed.
    pub async fn read(&self, query: Query, consistent: bool) -> Result<ReadReply, ClientError> {
        let deadline = Instant::now() + RECONNECT_FOR;
        loop {
            let client = self.client().await?;
            match client.read(query.clone(), consistent).await {
                Err(e) if connection_failed(&e) && Instant::now() < deadline => continue,
                other => return other,
            }
        }
    }

    /// A write on the current connection (made again first if it failed). A failure of
    /// the connection during the write answers `Disconnected`: it may have happened.
    pub async fn write(&self, request: AgentRequest) -> Result<(Revision, Answer), ClientError> {
        self.client().await?.write(request).await
    }

    /// A write acting in the client's session: what it creates (a lock, a replica, a
    /// service, an ephemeral key) lasts as long as the session, across reconnects.
    pub async fn write_in_session(
        &self,
        request: AgentRequest,
    ) -> Result<(Revision, Answer), ClientError> {
        let session = self.inner.session.ok_or_else(|| {
            ClientError::Unexpected("this client was connected without a session".into())
        })?;
        self.client().await?.write_in(session, request).await
    }

    /// Subscribes to events matching `filter` after `after` (None: from now); the
    /// subscription resumes by itself after a failed connection.
    pub async fn subscribe(
        &self,
        filter: EventFilter,
        after: Option<Revision>,
    ) -> Result<ReconnectingSubscription, ClientError> {
        let current = self
            .client()
            .await?
            .subscribe(filter.clone(), after)
            .await?;
        Ok(ReconnectingSubscription {
            client: self.clone(),
            filter,
            last: after.unwrap_or(current.revision),
            current,
        })
    }
}

async fn connection(inner: &Inner) -> Result<AgentClient, ClientError> {
    let mut current = inner.current.lock().await;
    if let Some(client) = current.as_ref()
        && !client.is_closed()
    {
        return Ok(client.clone());
    }
    let deadline = Instant::now() + RECONNECT_FOR;
    loop {
        match AgentClient::connect_with(&inner.path, inner.options).await {
            Ok(client) => {
                *current = Some(client.clone());
                return Ok(client);
            }
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(RECONNECT_PAUSE).await,
        }
    }
}

/// Renews `session` every third of `ttl` through whichever connection is up, until the
/// client is dropped.
async fn renew(inner: std::sync::Weak<Inner>, session: SessionId, ttl: Duration) {
    let every = (ttl / 3).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        let renewed = match connection(&inner).await {
            Ok(client) => client.renew_session(session).await,
            Err(e) => Err(e),
        };
        match renewed {
            Ok(()) => {}
            // Tried again at the next turn, on a new connection.
            Err(e) if connection_failed(&e) => {}
            Err(_) => {
                // Expired or ended: nothing to renew any more.
                inner.session_ended.store(true, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// A subscription that resumes after the last revision it delivered when its connection
/// fails or the agent ends it.
#[derive(Debug)]
pub struct ReconnectingSubscription {
    client: ReconnectingClient,
    filter: EventFilter,
    /// The last revision delivered (or the one the subscription started at).
    last: Revision,
    current: Subscription,
}

impl ReconnectingSubscription {
    /// The last revision this subscription delivered.
    pub fn revision(&self) -> Revision {
        self.last
    }

    /// The next item; None once the agent could not be reached again within
    /// [`RECONNECT_FOR`]. `Ended` never comes: the subscription is resumed instead.
    pub async fn next(&mut self) -> Option<SubscriptionItem> {
        loop {
            match self.current.next().await {
                Some(SubscriptionItem::Ended { .. }) => {}
                Some(item) => {
                    match &item {
                        SubscriptionItem::Events(batch) => self.last = batch.revision,
                        SubscriptionItem::Reset { revision, .. } => self.last = *revision,
                        SubscriptionItem::Member(_) | SubscriptionItem::Ended { .. } => {}
                    }
                    return Some(item);
                }
                None => {}
            }
            let client = self.client.client().await.ok()?;
            match client.subscribe(self.filter.clone(), Some(self.last)).await {
                Ok(subscription) => self.current = subscription,
                Err(_) => tokio::time::sleep(RECONNECT_PAUSE).await,
            }
        }
    }
}
