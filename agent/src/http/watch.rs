//! `GET /v1/watch`: the socket's subscriptions as Server-Sent Events.
//!
//! Query: `prefix=P` for key events under P; `shards`, `locks`, `services`, `sessions`,
//! `members` for those events; none of them means everything. `from=REV` starts at REV
//! (inclusive). Each batch is an `events` event whose id is its revision, so a browser's
//! `EventSource` resumes where it stopped (it sends `Last-Event-ID` on reconnecting); a
//! revision older than the agent's history starts with a `reset` event holding the state.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query as QueryParams, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use corral_proto::api::{AgentRequest, EventFilter, SubscriptionItem};

use super::error::HttpError;
use super::gateway::Gateway;
use super::routes::stream_headers;
use super::server::PeerAddress;
use crate::json::readable;
use axum::Extension;

fn filter_of(params: &HashMap<String, String>) -> Result<EventFilter, HttpError> {
    let on = |name: &str| -> Result<bool, HttpError> {
        match params.get(name).map(String::as_str) {
            None | Some("false" | "0") => Ok(false),
            Some("" | "true" | "1") => Ok(true),
            Some(other) => Err(HttpError::bad_request(format!(
                "query parameter {name}: expected true or false, got {other:?}"
            ))),
        }
    };
    let filter = EventFilter {
        keys: params.get("prefix").cloned(),
        shards: on("shards")?,
        locks: on("locks")?,
        services: on("services")?,
        sessions: on("sessions")?,
        members: on("members")?,
    };
    let nothing = filter.keys.is_none()
        && !(filter.shards || filter.locks || filter.services || filter.sessions || filter.members);
    Ok(if nothing {
        EventFilter::everything()
    } else {
        filter
    })
}

/// Where the stream starts: after `Last-Event-ID` if the browser resumes, else before
/// `from`, else now.
fn start_of(
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Option<u64>, HttpError> {
    if let Some(last) = headers.get("last-event-id") {
        let last = last
            .to_str()
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or_else(|| HttpError::bad_request("Last-Event-ID is not a revision"))?;
        return Ok(Some(last));
    }
    match params.get("from") {
        None => Ok(None),
        Some(text) => text
            .parse::<u64>()
            .map(|from| Some(from.saturating_sub(1)))
            .map_err(|_| {
                HttpError::bad_request(format!(
                    "query parameter from: expected a revision, got {text:?}"
                ))
            }),
    }
}

fn sse_event(item: &SubscriptionItem) -> Event {
    let data = readable(item)
        .map(|json| json.to_string())
        .unwrap_or_else(|e| format!("{{\"encode_error\":\"{e}\"}}"));
    let (name, id) = match item {
        SubscriptionItem::Events(batch) => ("events", Some(batch.revision)),
        SubscriptionItem::Reset { revision, .. } => ("reset", Some(*revision)),
        SubscriptionItem::Member(_) => ("member", None),
        SubscriptionItem::Ended { .. } => ("ended", None),
    };
    let event = Event::default().event(name).data(data);
    match id {
        Some(id) => event.id(id.to_string()),
        None => event,
    }
}

pub(super) async fn watch(
    State(gateway): State<Arc<Gateway>>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
    peer: Option<Extension<PeerAddress>>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let filter = filter_of(&params)?;
    let after = start_of(&params, &headers)?;
    gateway.check_rights(&AgentRequest::Subscribe {
        filter: filter.clone(),
        after,
    })?;
    let watcher = gateway.watcher(peer.map(|Extension(peer)| peer))?;
    // A connection of its own: it closes, ending the subscription, when the HTTP client
    // goes away and this stream is dropped.
    let client = gateway.connect_for_stream().await?;
    let subscription = client.subscribe(filter, after).await?;
    let stream = futures::stream::unfold(Some((subscription, watcher)), |state| async move {
        let (mut subscription, watcher) = state?;
        let item = subscription.next().await?;
        let ended = matches!(item, SubscriptionItem::Ended { .. });
        let event: Result<Event, Infallible> = Ok(sse_event(&item));
        Some((event, (!ended).then_some((subscription, watcher))))
    });
    let sse = Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10)));
    Ok((stream_headers(), sse).into_response())
}
