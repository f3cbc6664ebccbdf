//! The gateway's shared state: its connection to the agent's socket, the requests it
//! sends on behalf of the HTTP client being served, its places for streams, and the
//! helpers every route uses to read parameters and answer JSON.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use corral_proto::access::Identity;
use corral_proto::api::{AgentRequest, Query, Reply};
use corral_proto::{AgentClient, ClientOptions};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::error::HttpError;
use super::guard::TOKEN;
use super::server::PeerAddress;
use crate::agent::AgentContext;
use crate::api::rights;
use crate::json::readable;
use crate::metrics::Histogram;

/// The gateway's shared state.
#[derive(Debug)]
pub struct Gateway {
    pub(super) context: Arc<AgentContext>,
    socket: PathBuf,
    client: Mutex<Option<AgentClient>>,
    /// HTTP request latency, all routes together.
    pub(super) latency: Histogram,
    /// Places for streams (watches, keep-alives).
    watchers: Arc<tokio::sync::Semaphore>,
    /// Streams open, by client (token or address).
    watchers_by_client: Arc<WatcherCounts>,
}

/// Streams open by each client.
#[derive(Debug, Default)]
pub(super) struct WatcherCounts(parking_lot::Mutex<HashMap<String, usize>>);

impl WatcherCounts {
    fn lock_blocking(&self) -> parking_lot::MutexGuard<'_, HashMap<String, usize>> {
        self.0.lock()
    }
}

/// One open stream's place, given back when the stream ends.
#[derive(Debug)]
pub(super) struct Watcher {
    _permit: tokio::sync::OwnedSemaphorePermit,
    key: String,
    counts: Arc<WatcherCounts>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let mut counts = self.counts.lock_blocking();
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Most streams one client (one token, or else one address) holds open at once.
pub const HTTP_WATCHERS_PER_CLIENT_MAX: usize = 16;

/// Most streams (watches and session keep-alives) the gateway serves at once.
pub const HTTP_WATCHERS_MAX: usize = 64;

/// Items a stream's connection holds for a slow HTTP client.
const STREAM_BUFFER: usize = 8;

impl Gateway {
    pub(super) fn new(context: Arc<AgentContext>, socket: PathBuf) -> Self {
        Gateway {
            context,
            socket,
            client: Mutex::new(None),
            latency: Histogram::default(),
            watchers: Arc::new(tokio::sync::Semaphore::new(HTTP_WATCHERS_MAX)),
            watchers_by_client: Arc::new(WatcherCounts::default()),
        }
    }

    /// The shared connection to the agent's socket, reconnected when it was lost.
    pub(super) async fn client(&self) -> Result<AgentClient, HttpError> {
        let mut client = self.client.lock().await;
        if let Some(existing) = client.as_ref().filter(|c| !c.is_closed()) {
            return Ok(existing.clone());
        }
        let fresh = AgentClient::connect(&self.socket).await?;
        *client = Some(fresh.clone());
        Ok(fresh)
    }

    /// A connection of its own, for a stream: it holds few items for a slow reader, so
    /// that the agent ends the subscription rather than the gateway buffering for it.
    pub(super) async fn connect_for_stream(&self) -> Result<AgentClient, HttpError> {
        let options = ClientOptions {
            subscription_buffer: STREAM_BUFFER,
            ..ClientOptions::default()
        };
        AgentClient::connect_with(&self.socket, options)
            .await
            .map_err(HttpError::from)
    }

    /// A place for one more stream (watch or keep-alive) of `client` (its token, or else
    /// its address), or 429 when the gateway's or the client's are all taken.
    pub(super) fn watcher(&self, client: Option<PeerAddress>) -> Result<Watcher, HttpError> {
        let too_many = |message: String| {
            HttpError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_watchers", message)
        };
        let key = match (token_of_request(), client) {
            (Some(token), _) => format!("token {token}"),
            (None, Some(PeerAddress(address))) => format!("address {}", address.ip()),
            (None, None) => "unknown".to_string(),
        };
        let permit = self.watchers.clone().try_acquire_owned().map_err(|_| {
            too_many(format!(
                "this gateway serves at most {HTTP_WATCHERS_MAX} streams at once"
            ))
        })?;
        {
            let mut counts = self.watchers_by_client.lock_blocking();
            let count = counts.entry(key.clone()).or_default();
            if *count >= HTTP_WATCHERS_PER_CLIENT_MAX {
                return Err(too_many(format!(
                    "{key} already has {HTTP_WATCHERS_PER_CLIENT_MAX} streams open here"
                )));
            }
            *count += 1;
        }
        Ok(Watcher {
            _permit: permit,
            key,
            counts: self.watchers_by_client.clone(),
        })
    }

    /// Sends `request` to the agent on behalf of the HTTP client being served: as the
    /// token it presented, for the access rules and the sessions it holds.
    pub(super) async fn call(&self, request: AgentRequest) -> Result<Reply, HttpError> {
        let request = AgentRequest::OnBehalf {
            token: token_of_request(),
            request: Box::new(request),
        };
        Ok(self.client().await?.call(request).await?)
    }

    /// Refuses what the access rules do not grant the HTTP client being served (for
    /// requests that do not go through [`Gateway::call`], such as subscriptions).
    pub(super) fn check_rights(&self, request: &AgentRequest) -> Result<(), HttpError> {
        let identity = match token_of_request() {
            Some(name) => Identity::Token(name),
            None => Identity::Anonymous,
        };
        self.context
            .replica
            .read(|r| rights::check(r.machine().access(), &identity, request))
            .map_err(HttpError::from)
    }

    pub(super) async fn read(
        &self,
        query: Query,
        params: &HashMap<String, String>,
    ) -> Result<Value, HttpError> {
        let consistent = flag(params, "consistent")?;
        match self.call(AgentRequest::Read { query, consistent }).await? {
            Reply::Read(read) => Ok(json!({
                "revision": read.revision,
                "age_ms": read.age_ms,
                "result": to_json(&read.result)?,
            })),
            other => Err(unexpected(&other)),
        }
    }

    pub(super) async fn write(&self, request: AgentRequest) -> Result<Response, HttpError> {
        match self.call(request).await? {
            Reply::Written { revision, answer } => Ok(Json(
                json!({"revision": revision, "answer": to_json(&answer)?}),
            )
            .into_response()),
            other => Err(unexpected(&other)),
        }
    }
}

/// The core token of the HTTP request being served (None: none).
pub(super) fn token_of_request() -> Option<String> {
    TOKEN.try_with(Clone::clone).ok().flatten()
}

pub(super) fn unexpected(reply: &Reply) -> HttpError {
    HttpError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "unexpected",
        format!("unexpected reply from the agent: {reply:?}"),
    )
}

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> Result<Value, HttpError> {
    readable(value)
        .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "encode", e.to_string()))
}

/// A boolean query flag: absent is false; present with no value, `true` or `1` is true.
pub(super) fn flag(params: &HashMap<String, String>, name: &str) -> Result<bool, HttpError> {
    match params.get(name).map(String::as_str) {
        None | Some("false" | "0") => Ok(false),
        Some("" | "true" | "1") => Ok(true),
        Some(other) => Err(HttpError::bad_request(format!(
            "query parameter {name}: expected true or false, got {other:?}"
        ))),
    }
}

/// A numeric query parameter.
pub(super) fn number(
    params: &HashMap<String, String>,
    name: &str,
) -> Result<Option<u64>, HttpError> {
    params
        .get(name)
        .map(|text| {
            text.parse().map_err(|_| {
                HttpError::bad_request(format!(
                    "query parameter {name}: expected a number, got {text:?}"
                ))
            })
        })
        .transpose()
}

/// `start_after` and `limit` of a list (1,000 by default).
pub(super) fn page_params(
    params: &HashMap<String, String>,
) -> Result<(Option<String>, u32), HttpError> {
    let limit = number(params, "limit")?.unwrap_or(1000);
    let limit = u32::try_from(limit).map_err(|_| HttpError::bad_request("limit too large"))?;
    Ok((params.get("start_after").cloned(), limit))
}

/// A JSON body of type `T`; malformed JSON is a `bad_json` error naming the problem.
pub(super) fn body<T: for<'de> Deserialize<'de>>(bytes: &Bytes) -> Result<T, HttpError> {
    serde_json::from_slice(bytes)
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, "bad_json", e.to_string()))
}
