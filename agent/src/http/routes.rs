//! The gateway's routes: each turns an HTTP request into a socket API request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query as QueryParams, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use corral_proto::Answer;
use corral_proto::api::{AgentRequest, Query, QueryResult, Reply};
use serde::Deserialize;
use serde_json::json;

use super::error::HttpError;
use super::gateway::{Gateway, body, flag, number, page_params, to_json, unexpected};
use super::guard::Guarded;
use super::sessions::{in_session, required_session, session_param};

/// Longest lock wait an HTTP request may ask for (the request stays open meanwhile).
const HTTP_LOCK_WAIT_MAX_MS: u64 = 5 * 60 * 1000;

/// Largest request body accepted (a value is at most this big over HTTP).
const BODY_LEN_MAX: usize = 1024 * 1024;

type Shared = State<Arc<Gateway>>;
type Params = QueryParams<HashMap<String, String>>;

// ----- status, members ---------------------------------------------------------------

async fn status(State(gateway): Shared) -> Result<Response, HttpError> {
    match gateway.call(AgentRequest::Status).await? {
        Reply::Status(status) => Ok(Json(to_json(&status)?).into_response()),
        other => Err(unexpected(&other)),
    }
}

async fn members(State(gateway): Shared) -> Result<Response, HttpError> {
    match gateway.call(AgentRequest::Members).await? {
        Reply::Members(members) => Ok(Json(to_json(&members)?).into_response()),
        other => Err(unexpected(&other)),
    }
}

// ----- keys --------------------------------------------------------------------------

async fn kv_get(
    State(gateway): Shared,
    Path(key): Path<String>,
    QueryParams(params): Params,
) -> Result<Response, HttpError> {
    let consistent = flag(&params, "consistent")?;
    let raw = flag(&params, "raw")?;
    let query = Query::Key(key.clone());
    let read = match gateway
        .call(AgentRequest::Read { query, consistent })
        .await?
    {
        Reply::Read(read) => read,
        other => return Err(unexpected(&other)),
    };
    let QueryResult::Key(Some(kv)) = read.result else {
        return Err(HttpError::not_found(format!("no key {key}")));
    };
    if raw {
        let headers = [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::ETAG, format!("\"{}\"", kv.version)),
        ];
        return Ok((headers, kv.value).into_response());
    }
    Ok(Json(json!({
        "revision": read.revision,
        "age_ms": read.age_ms,
        "kv": to_json(&kv)?,
    }))
    .into_response())
}

async fn kv_list(
    State(gateway): Shared,
    QueryParams(params): Params,
) -> Result<Response, HttpError> {
    let prefix = params.get("prefix").cloned().unwrap_or_default();
    let (start_after, limit) = page_params(&params)?;
    let read = gateway
        .read(
            Query::Page {
                prefix,
                start_after,
                limit,
            },
            &params,
        )
        .await?;
    Ok(Json(json!({
        "revision": read["revision"],
        "age_ms": read["age_ms"],
        "keys": read["result"]["Keys"]["keys"],
        "more": read["result"]["Keys"]["more"],
    }))
    .into_response())
}

async fn kv_put(
    State(gateway): Shared,
    Path(key): Path<String>,
    QueryParams(params): Params,
    value: Bytes,
) -> Result<Response, HttpError> {
    let value = value.to_vec();
    // A key put in a session is ephemeral: deleted when the session ends.
    let session = session_param(&params)?;
    let ephemeral = session.is_some();
    let request = match number(&params, "cas")? {
        Some(version) => AgentRequest::CompareAndSet {
            key,
            version,
            value,
            ephemeral,
        },
        None => AgentRequest::Put {
            key,
            value,
            ephemeral,
        },
    };
    gateway.write(in_session(session, request)).await
}

async fn kv_delete(
    State(gateway): Shared,
    Path(key): Path<String>,
    QueryParams(params): Params,
) -> Result<Response, HttpError> {
    let prefix = flag(&params, "prefix")?;
    let session = session_param(&params)?;
    gateway
        .write(in_session(session, AgentRequest::Delete { key, prefix }))
        .await
}

/// `POST /v1/txn`: a transaction written as JSON ([`crate::txn_json`]), in the session
/// `?session=ID` names when a put of it is ephemeral.
async fn txn(
    State(gateway): Shared,
    QueryParams(params): Params,
    bytes: Bytes,
) -> Result<Response, HttpError> {
    let txn = crate::txn_json::parse(&bytes)
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, "bad_txn", e))?;
    let session = if crate::api::translate::txn_is_bound(&txn) {
        Some(required_session(&params, "an ephemeral put")?)
    } else {
        session_param(&params)?
    };
    gateway
        .write(in_session(session, AgentRequest::Txn(txn)))
        .await
}

// ----- locks -------------------------------------------------------------------------

async fn locks(State(gateway): Shared, QueryParams(params): Params) -> Result<Response, HttpError> {
    let (start_after, limit) = page_params(&params)?;
    let query = Query::LockPage { start_after, limit };
    let read = gateway.read(query, &params).await?;
    Ok(Json(json!({
        "revision": read["revision"],
        "age_ms": read["age_ms"],
        "locks": read["result"]["LockPage"]["locks"],
        "more": read["result"]["LockPage"]["more"],
    }))
    .into_response())
}

async fn lock_get(
    State(gateway): Shared,
    Path(name): Path<String>,
    QueryParams(params): Params,
) -> Result<Response, HttpError> {
    let read = gateway.read(Query::Lock(name.clone()), &params).await?;
    let lock = &read["result"]["Lock"];
    if lock.is_null() {
        return Err(HttpError::not_found(format!("no lock {name}")));
    }
    Ok(
        Json(json!({"revision": read["revision"], "age_ms": read["age_ms"], "lock": lock}))
            .into_response(),
    )
}

async fn lock_acquire(
    State(gateway): Shared,
    Path(name): Path<String>,
    QueryParams(params): Params,
) -> Result<Response, HttpError> {
    let session = required_session(&params, "a lock")?;
    let wait_ms = number(&params, "wait_ms")?.unwrap_or(0);
    if wait_ms > HTTP_LOCK_WAIT_MAX_MS {
        return Err(HttpError::bad_request(format!(
            "wait_ms above the limit of {HTTP_LOCK_WAIT_MAX_MS} for HTTP"
        )));
    }
    let request = AgentRequest::AcquireLock {
        name,
        wait_ms,
        detach: false,
    };
    let reply = gateway.call(in_session(Some(session), request)).await?;
    match reply {
        Reply::Written {
            revision,
            answer: answer @ Answer::LockGranted(_),
        } => Ok(
            Json(json!({"revision": revision, "granted": true, "answer": to_json(&answer)?}))
                .into_response(),
        ),
        Reply::Written { revision, answer } => Ok((
            StatusCode::CONFLICT,
            Json(json!({
                "code": "lock_held",
                "message": "the lock is held by another session",
                "revision": revision,
                "answer": to_json(&answer)?,
            })),
        )
            .into_response()),
        other => Err(unexpected(&other)),
    }
}

async fn lock_release(
    State(gateway): Shared,
    Path(name): Path<String>,
    QueryParams(params): Params,
) -> Result<Response, HttpError> {
    let session = required_session(&params, "a lock")?;
    let request = AgentRequest::ReleaseLock {
        name,
        detach: false,
    };
    gateway.write(in_session(Some(session), request)).await
}

// ----- services ----------------------------------------------------------------------

async fn services(
    State(gateway): Shared,
    QueryParams(params): Params,
) -> Result<Response, HttpError> {
    let (start_after, limit) = page_params(&params)?;
    let query = Query::ServicePage { start_after, limit };
    let read = gateway.read(query, &params).await?;
    Ok(Json(json!({
        "revision": read["revision"],
        "age_ms": read["age_ms"],
        "services": read["result"]["ServicePage"]["services"],
        "more": read["result"]["ServicePage"]["more"],
    }))
    .into_response())
}

async fn service_get(
    State(gateway): Shared,
    Path(name): Path<String>,
    QueryParams(params): Params,
) -> Result<Response, HttpError> {
    let read = gateway.read(Query::Service(name), &params).await?;
    Ok(Json(json!({
        "revision": read["revision"],
        "age_ms": read["age_ms"],
        "instances": read["result"]["Service"],
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    address: String,
    port: u16,
    #[serde(default)]
    tags: Vec<String>,
}

async fn service_register(
    State(gateway): Shared,
    Path((service, id)): Path<(String, String)>,
    QueryParams(params): Params,
    bytes: Bytes,
) -> Result<Response, HttpError> {
    let session = required_session(&params, "a service instance")?;
    let RegisterBody {
        address,
        port,
        tags,
    } = body(&bytes)?;
    let request = AgentRequest::RegisterService {
        service,
        id,
        address,
        port,
        tags,
        detach: false,
    };
    gateway.write(in_session(Some(session), request)).await
}

async fn service_deregister(
    State(gateway): Shared,
    Path((service, id)): Path<(String, String)>,
    QueryParams(params): Params,
) -> Result<Response, HttpError> {
    let session = session_param(&params)?;
    gateway
        .write(in_session(
            session,
            AgentRequest::DeregisterService { service, id },
        ))
        .await
}

// ----- page, fallback, timing --------------------------------------------------------

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn fallback(request: Request) -> HttpError {
    HttpError::not_found(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}

async fn timed(State(gateway): Shared, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    gateway.latency.record(started.elapsed());
    response
}

/// Answers a body over the limit, or a method a route does not take, in JSON too.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let code = match status {
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "bad_request",
        };
        let message = status.canonical_reason().unwrap_or("error");
        return HttpError::new(status, code, message).into_response();
    }
    response
}

pub(super) fn router(gateway: Arc<Gateway>, guard: Arc<Guarded>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(super::metrics_page::metrics))
        .route("/v1/status", get(status))
        .route("/v1/members", get(members))
        .route("/v1/kv", get(kv_list))
        .route("/v1/kv/{*key}", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/txn", post(txn))
        .merge(super::shards::routes())
        .route("/v1/locks", get(locks))
        .route(
            "/v1/locks/{name}",
            get(lock_get).post(lock_acquire).delete(lock_release),
        )
        .route("/v1/services", get(services))
        .route("/v1/services/{name}", get(service_get))
        .route(
            "/v1/services/{name}/{id}",
            put(service_register).delete(service_deregister),
        )
        .route("/v1/watch", get(super::watch::watch))
        .route("/v1/sessions", post(super::sessions::open))
        .route(
            "/v1/sessions/{id}",
            axum::routing::delete(super::sessions::close),
        )
        .route("/v1/sessions/{id}/renew", put(super::sessions::renew))
        .route(
            "/v1/sessions/{id}/keepalive",
            get(super::sessions::keepalive),
        )
        .fallback(fallback)
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LEN_MAX))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(gateway.clone(), timed))
        .layer(middleware::from_fn_with_state(guard, super::guard::guard))
        .with_state(gateway)
}

/// Headers a browser or proxy needs to not buffer a stream.
pub(super) fn stream_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, "no-cache".parse().expect("valid"));
    headers.insert("x-accel-buffering", "no".parse().expect("valid"));
    headers
}
