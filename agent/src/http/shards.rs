//! The gateway's shard routes: the shards, their replicas (joining, leaving, their priority
//! and replication position) and hand-overs.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query as QueryParams, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use corral_proto::api::{AgentRequest, Query, Reply};
use serde::Deserialize;
use serde_json::json;

use super::error::HttpError;
use super::gateway::{Gateway, body, page_params, unexpected};
use super::sessions::{in_session, required_session, session_param};

type Shared = State<Arc<Gateway>>;
type Params = QueryParams<HashMap<String, String>>;

pub(super) fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/v1/shards", get(shards))
        .route(
            "/v1/shards/{name}",
            get(shard_get).put(shard_create).delete(shard_delete),
        )
        .route("/v1/shards/{name}/replicas", post(shard_join))
        .route(
            "/v1/shards/{name}/replicas/{address}",
            axum::routing::delete(shard_leave),
        )
        .route(
            "/v1/shards/{name}/replicas/{address}/priority",
            put(shard_priority),
        )
        .route(
            "/v1/shards/{name}/replicas/{address}/position",
            put(shard_position),
        )
        .route("/v1/shards/{name}/handover", post(shard_handover))
        .route("/v1/groups/{name}", get(group_get))
        .route("/v1/groups/{name}/route", get(group_route))
}

async fn group_get(
    State(gateway): Shared,
    Path(name): Path<String>,
    QueryParams(params): Params,
) -> Result<Response, HttpError> {
    let read = gateway.read(Query::Group(name.clone()), &params).await?;
    let group = &read["result"]["Group"];
    if group.is_null() {
        return Err(HttpError::not_found(format!("no shard group {name}")));
    }
    Ok(
        Json(json!({"revision": read["revision"], "age_ms": read["age_ms"], "group": group}))
            .into_response(),
    )
}

/// `?key=K`: where the key goes.
async fn group_route(
    State(gateway): Shared,
    Path(group): Path<String>,
    QueryParams(params): Params,
) -> Result<Response, HttpError> {
    let Some(key) = params.get("key").cloned() else {
        return Err(HttpError::bad_request("give the key: ?key=K"));
    };
    let read = gateway
        .read(
            Query::Route {
                group: group.clone(),
                key,
            },
            &params,
        )
        .await?;
    let route = &read["result"]["Route"];
    if route.is_null() {
        return Err(HttpError::not_found(format!("no shard group {group}")));
    }
    Ok(
        Json(json!({"revision": read["revision"], "age_ms": read["age_ms"], "route": route}))
            .into_response(),
    )
}

async fn shards(
    State(gateway): Shared,
    QueryParams(params): Params,
) -> Result<Response, HttpError> {
    let (start_after, limit) = page_params(&params)?;
    let query = Query::ShardPage { start_after, limit };
    let read = gateway.read(query, &params).await?;
    Ok(Json(json!({
        "revision": read["revision"],
        "age_ms": read["age_ms"],
        "shards": read["result"]["ShardPage"]["shards"],
        "more": read["result"]["ShardPage"]["more"],
    }))
    .into_response())
}

async fn shard_get(
    State(gateway): Shared,
    Path(name): Path<String>,
    QueryParams(params): Params,
) -> Result<Response, HttpError> {
    let read = gateway.read(Query::Shard(name.clone()), &params).await?;
    let shard = &read["result"]["Shard"];
    if shard.is_null() {
        return Err(HttpError::not_found(format!("no shard {name}")));
    }
    Ok(
        Json(json!({"revision": read["revision"], "age_ms": read["age_ms"], "shard": shard}))
            .into_response(),
    )
}

async fn shard_create(
    State(gateway): Shared,
    Path(name): Path<String>,
) -> Result<Response, HttpError> {
    gateway.write(AgentRequest::CreateShard { name }).await
}

async fn shard_delete(
    State(gateway): Shared,
    Path(name): Path<String>,
) -> Result<Response, HttpError> {
    gateway.write(AgentRequest::DeleteShard { name }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    address: String,
    /// 0 makes a standby, never master; 1 unless given.
    #[serde(default = "default_priority")]
    priority: u32,
}

fn default_priority() -> u32 {
    1
}

async fn shard_join(
    State(gateway): Shared,
    Path(shard): Path<String>,
    QueryParams(params): Params,
    bytes: Bytes,
) -> Result<Response, HttpError> {
    let session = required_session(&params, "a shard replica")?;
    let JoinBody { address, priority } = body(&bytes)?;
    let request = AgentRequest::JoinShard {
        shard,
        address,
        priority,
        detach: false,
    };
    gateway.write(in_session(Some(session), request)).await
}

async fn shard_leave(
    State(gateway): Shared,
    Path((shard, address)): Path<(String, String)>,
    QueryParams(params): Params,
) -> Result<Response, HttpError> {
    let session = session_param(&params)?;
    gateway
        .write(in_session(
            session,
            AgentRequest::LeaveShard { shard, address },
        ))
        .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HandoverBody {
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    epoch: Option<u64>,
}

async fn shard_handover(
    State(gateway): Shared,
    Path(shard): Path<String>,
    QueryParams(params): Params,
    bytes: Bytes,
) -> Result<Response, HttpError> {
    let session = session_param(&params)?;
    let HandoverBody { to, epoch } = if bytes.is_empty() {
        HandoverBody::default()
    } else {
        body(&bytes)?
    };
    gateway
        .write(in_session(
            session,
            AgentRequest::Handover { shard, to, epoch },
        ))
        .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriorityBody {
    priority: u32,
}

async fn shard_priority(
    State(gateway): Shared,
    Path((shard, address)): Path<(String, String)>,
    QueryParams(params): Params,
    bytes: Bytes,
) -> Result<Response, HttpError> {
    let session = session_param(&params)?;
    let PriorityBody { priority } = body(&bytes)?;
    let request = AgentRequest::SetPriority {
        shard,
        address,
        priority,
    };
    gateway.write(in_session(session, request)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PositionBody {
    position: u64,
}

/// Nothing is written to the core: the agent keeps the position for the leader.
async fn shard_position(
    State(gateway): Shared,
    Path((shard, address)): Path<(String, String)>,
    QueryParams(params): Params,
    bytes: Bytes,
) -> Result<Response, HttpError> {
    let session = required_session(&params, "a replica's position")?;
    let PositionBody { position } = body(&bytes)?;
    let request = AgentRequest::ReportPosition {
        shard,
        address,
        position,
    };
    match gateway.call(in_session(Some(session), request)).await? {
        Reply::PositionReported => Ok(Json(json!({ "position": position })).into_response()),
        other => Err(unexpected(&other)),
    }
}
