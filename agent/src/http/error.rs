//! JSON errors with a stable `code`, a message and the right HTTP status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use corral_proto::api::ApiError;
use corral_proto::client::ClientError;
use serde_json::json;

#[derive(Debug)]
pub(crate) struct HttpError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) extra: serde_json::Value,
}

impl HttpError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        HttpError {
            status,
            code,
            message: message.into(),
            extra: serde_json::Value::Null,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        HttpError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        HttpError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

fn status_of(code: &str) -> StatusCode {
    match code {
        "bad_request" | "invalid" => StatusCode::BAD_REQUEST,
        "not_found" | "no_such_subscription" | "no_session" => StatusCode::NOT_FOUND,
        "not_owner" | "forbidden" => StatusCode::FORBIDDEN,
        "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "quota_exceeded" => StatusCode::INSUFFICIENT_STORAGE,
        "conflict" | "exists" | "epoch_mismatch" | "lock_held" | "refused" => StatusCode::CONFLICT,
        "session_lost" => StatusCode::GONE,
        "timeout" => StatusCode::GATEWAY_TIMEOUT,
        "too_many_requests" => StatusCode::TOO_MANY_REQUESTS,
        "outcome_unknown" => StatusCode::INTERNAL_SERVER_ERROR,
        // unavailable, replica_behind, shutting_down
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl From<ApiError> for HttpError {
    fn from(error: ApiError) -> Self {
        let code = error.code();
        let extra = match &error {
            ApiError::Conflict {
                key,
                version,
                revision,
            } => json!({"key": key, "version": version, "revision": revision}),
            ApiError::Refused { revision, .. } => json!({"revision": revision}),
            ApiError::ReplicaBehind { replica, needed } => {
                json!({"replica": replica, "needed": needed})
            }
            _ => serde_json::Value::Null,
        };
        HttpError {
            status: status_of(code),
            code,
            message: error.to_string(),
            extra,
        }
    }
}

impl From<ClientError> for HttpError {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::Api(api) => api.into(),
            other => HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                other.to_string(),
            ),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut body = json!({"code": self.code, "message": self.message});
        if let (Some(body), serde_json::Value::Object(extra)) = (body.as_object_mut(), self.extra) {
            body.extend(extra);
        }
        (self.status, Json(body)).into_response()
    }
}
