//! Sessions over HTTP: an HTTP client has no connection whose end tells the agent it is
//! gone, so it opens a session with a time-to-live and keeps it alive; what it takes
//! (`?session=ID` on locks, replicas, services and keys) is released when the session
//! ends: deleted, not renewed in time, or its host dead.
//!
//! | route | what it does |
//! |---|---|
//! | `POST /v1/sessions` `{"ttl_ms": N}` | opens one: `{"id": ID, "ttl_ms": N}` |
//! | `PUT /v1/sessions/{id}/renew` | restarts its time-to-live |
//! | `GET /v1/sessions/{id}/keepalive` | renews it every third of its time-to-live while the stream is open (Server-Sent Events, one `renewed` event each time) |
//! | `DELETE /v1/sessions/{id}` | ends it, releasing all it holds |

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use corral_proto::SessionId;
use corral_proto::api::{AgentRequest, Reply};
use serde::Deserialize;
use serde_json::json;

use super::error::HttpError;
use super::gateway::{Gateway, body, to_json, unexpected};
use super::routes::stream_headers;
use super::server::PeerAddress;
use axum::Extension;

type Shared = State<std::sync::Arc<Gateway>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenBody {
    ttl_ms: u64,
    #[serde(default)]
    label: String,
}

pub(super) async fn open(State(gateway): Shared, bytes: Bytes) -> Result<Response, HttpError> {
    let OpenBody { ttl_ms, label } = body(&bytes)?;
    let label = if label.is_empty() {
        "http".to_string()
    } else {
        format!("http: {label}")
    };
    match gateway
        .call(AgentRequest::OpenSession {
            ttl_ms: Some(ttl_ms),
            label,
        })
        .await?
    {
        Reply::Session { session, ttl_ms } => {
            Ok(Json(json!({"id": session, "ttl_ms": ttl_ms})).into_response())
        }
        other => Err(unexpected(&other)),
    }
}

pub(super) async fn renew(
    State(gateway): Shared,
    Path(session): Path<SessionId>,
) -> Result<Response, HttpError> {
    match gateway.call(AgentRequest::RenewSession { session }).await? {
        Reply::Session { session, ttl_ms } => {
            Ok(Json(json!({"id": session, "ttl_ms": ttl_ms})).into_response())
        }
        other => Err(unexpected(&other)),
    }
}

pub(super) async fn close(
    State(gateway): Shared,
    Path(session): Path<SessionId>,
) -> Result<Response, HttpError> {
    match gateway.call(AgentRequest::CloseSession { session }).await? {
        Reply::Written { revision, answer } => {
            Ok(Json(json!({"revision": revision, "answer": to_json(&answer)?})).into_response())
        }
        other => Err(unexpected(&other)),
    }
}

/// Renews the session every third of its time-to-live for as long as the client keeps
/// the stream open; a client that goes away stops the renewals, and the session ends one
/// time-to-live later.
pub(super) async fn keepalive(
    State(gateway): Shared,
    Path(session): Path<SessionId>,
    peer: Option<Extension<PeerAddress>>,
) -> Result<Response, HttpError> {
    let ttl_ms = match gateway.call(AgentRequest::RenewSession { session }).await? {
        Reply::Session { ttl_ms, .. } => ttl_ms,
        other => return Err(unexpected(&other)),
    };
    let Some(ttl_ms) = ttl_ms else {
        return Err(HttpError::bad_request(format!(
            "session {session} has no time-to-live to keep alive"
        )));
    };
    let period = Duration::from_millis((ttl_ms / 3).max(1));
    let watcher = gateway.watcher(peer.map(|Extension(peer)| peer))?;
    let client = gateway.connect_for_stream().await?;
    let events = futures::stream::unfold(
        (client, false, watcher),
        move |(client, ended, watcher)| async move {
            if ended {
                return None;
            }
            tokio::time::sleep(period).await;
            let (event, ended) = match client.call(AgentRequest::RenewSession { session }).await {
                Ok(_) => (
                    Event::default()
                        .event("renewed")
                        .data(json!({"id": session, "ttl_ms": ttl_ms}).to_string()),
                    false,
                ),
                Err(error) => (
                    Event::default()
                        .event("ended")
                        .data(json!({"id": session, "reason": error.to_string()}).to_string()),
                    true,
                ),
            };
            Some((Ok::<_, Infallible>(event), (client, ended, watcher)))
        },
    );
    let first = futures::stream::once(async move {
        Ok::<_, Infallible>(
            Event::default()
                .event("renewed")
                .data(json!({"id": session, "ttl_ms": ttl_ms}).to_string()),
        )
    });
    use futures::StreamExt;
    let stream = first.chain(events);
    Ok((
        stream_headers(),
        Sse::new(stream).keep_alive(KeepAlive::default()),
    )
        .into_response())
}

/// The `session` query parameter, if given.
pub(super) fn session_param(
    params: &std::collections::HashMap<String, String>,
) -> Result<Option<SessionId>, HttpError> {
    params
        .get("session")
        .map(|text| {
            text.parse().map_err(|_| {
                HttpError::bad_request(format!(
                    "query parameter session: expected a session id, got {text:?}"
                ))
            })
        })
        .transpose()
}

/// The `session` query parameter of a request that takes something for it.
pub(super) fn required_session(
    params: &std::collections::HashMap<String, String>,
    what: &str,
) -> Result<SessionId, HttpError> {
    session_param(params)?.ok_or_else(|| {
        HttpError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "session_required",
            format!(
                "{what} is held by a session: open one with POST /v1/sessions {{\"ttl_ms\": N}}, \
                 keep it alive, and name it with ?session=ID"
            ),
        )
    })
}

/// `request` acting in `session`, if one is named.
pub(super) fn in_session(session: Option<SessionId>, request: AgentRequest) -> AgentRequest {
    match session {
        Some(session) => AgentRequest::InSession {
            session,
            request: Box::new(request),
        },
        None => request,
    }
}
