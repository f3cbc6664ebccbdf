//! Corral's errors as etcd's own gRPC errors: etcd clients recognise an error by its code
//! and its exact message (Go's `rpctypes`, Python's `etcd3` exceptions), so where etcd
//! has an error for the case, its message is kept word for word, and what Corral adds
//! goes in the `corral-detail` metadata of the answer.

use corral_proto::CommandError;
use corral_proto::api::ApiError;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// etcd's error, with Corral's explanation in the `corral-detail` metadata.
fn etcd(code: Code, message: &str, detail: &str) -> Status {
    let mut status = Status::new(code, message);
    if let Ok(value) = MetadataValue::try_from(sanitize(detail)) {
        status.metadata_mut().insert("corral-detail", value);
    }
    status
}

/// Header values are visible ASCII; anything else becomes '?'.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(1024)
        .collect()
}

pub(super) fn compacted(detail: &str) -> Status {
    etcd(
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
        detail,
    )
}

pub(super) fn future_revision() -> Status {
    etcd(
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
        "the revision asked for is newer than the agent's replica",
    )
}

pub(super) fn lease_not_found(detail: &str) -> Status {
    etcd(
        Code::NotFound,
        "etcdserver: requested lease not found",
        detail,
    )
}

pub(super) fn key_not_found() -> Status {
    etcd(
        Code::InvalidArgument,
        "etcdserver: key not found",
        "ignore_value and ignore_lease need the key to exist",
    )
}

pub(super) fn empty_key() -> Status {
    etcd(Code::InvalidArgument, "etcdserver: key is not provided", "")
}

pub(super) fn value_provided() -> Status {
    etcd(Code::InvalidArgument, "etcdserver: value is provided", "")
}

pub(super) fn lease_provided() -> Status {
    etcd(Code::InvalidArgument, "etcdserver: lease is provided", "")
}

pub(super) fn too_many_ops(detail: &str) -> Status {
    etcd(
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
        detail,
    )
}

pub(super) fn duplicate_key() -> Status {
    etcd(
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
        "",
    )
}

pub(super) fn too_large(detail: &str) -> Status {
    etcd(
        Code::InvalidArgument,
        "etcdserver: request is too large",
        detail,
    )
}

pub(super) fn no_space(detail: &str) -> Status {
    etcd(
        Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded",
        detail,
    )
}

pub(super) fn auth_not_enabled() -> Status {
    etcd(
        Code::FailedPrecondition,
        "etcdserver: authentication is not enabled",
        "Corral's access rules are off (corral acl enforce on turns them on)",
    )
}

pub(super) fn auth_failed() -> Status {
    etcd(
        Code::InvalidArgument,
        "etcdserver: authentication failed, invalid user ID or password",
        "the user is a core token's name and the password its secret",
    )
}

pub(super) fn invalid_token() -> Status {
    etcd(
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
        "the token is neither a core token nor one of the agent's own",
    )
}

pub(super) fn token_required() -> Status {
    etcd(
        Code::InvalidArgument,
        "etcdserver: user name is empty",
        "this endpoint needs a token: Authenticate, or send authorization: Bearer TOKEN",
    )
}

pub(super) fn permission_denied(detail: &str) -> Status {
    etcd(
        Code::PermissionDenied,
        "etcdserver: permission denied",
        detail,
    )
}

pub(super) fn unavailable(detail: &str) -> Status {
    etcd(Code::Unavailable, "etcdserver: no leader", detail)
}

pub(super) fn timeout(detail: &str) -> Status {
    etcd(Code::Unavailable, "etcdserver: request timed out", detail)
}

/// Something Corral does not do, said plainly.
pub(super) fn unsupported(what: &str) -> Status {
    Status::unimplemented(format!("corral: {what}"))
}

/// A request etcd would accept that Corral's limits refuse (a key that is not text, a
/// key too long), said plainly.
pub(super) fn invalid(detail: &str) -> Status {
    Status::invalid_argument(format!("corral: {detail}"))
}

/// The etcd error for an error of the agent's socket API.
pub(super) fn from_api(error: &ApiError) -> Status {
    let detail = error.to_string();
    match error {
        ApiError::BadRequest(_) | ApiError::Invalid(_) => invalid(&detail),
        ApiError::Refused { error, .. } => match error {
            CommandError::QuotaExceeded { .. } => no_space(&detail),
            CommandError::NotOwner { .. }
            | CommandError::ForeignSession { .. }
            | CommandError::ForeignNode { .. }
            | CommandError::AdminOnly { .. } => permission_denied(&detail),
            CommandError::NoSuchSession { .. } => lease_not_found(&detail),
            CommandError::RangeTooLarge { .. } => too_large(&detail),
            CommandError::Invalid(_) => invalid(&detail),
            _ => Status::failed_precondition(format!("corral: {detail}")),
        },
        ApiError::Conflict { .. } => Status::aborted(format!("corral: {detail}")),
        ApiError::Unavailable(_) | ApiError::ShuttingDown => unavailable(&detail),
        ApiError::OutcomeUnknown(_) | ApiError::Timeout(_) | ApiError::ReplicaBehind { .. } => {
            timeout(&detail)
        }
        ApiError::NotHeld { .. } | ApiError::SessionLost(_) => lease_not_found(&detail),
        ApiError::Forbidden(_) => permission_denied(&detail),
        ApiError::TooLarge { .. } => too_large(&detail),
        ApiError::TooManyRequests(_) => Status::resource_exhausted(format!("corral: {detail}")),
        ApiError::NoSuchSubscription(_) => Status::not_found(format!("corral: {detail}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clients match etcd's messages exactly; Corral's explanation rides beside them.
    #[test]
    fn errors_keep_etcds_words_and_add_corrals_in_metadata() {
        let status = from_api(&ApiError::Refused {
            revision: 7,
            error: CommandError::QuotaExceeded {
                what: "keys".into(),
                would: 11,
                max: 10,
            },
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "etcdserver: mvcc: database space exceeded"
        );
        let detail = status.metadata().get("corral-detail").unwrap();
        assert!(detail.to_str().unwrap().contains("quota of 10"));
        let status = from_api(&ApiError::NotHeld {
            session: 9,
            reason: "ended\n".into(),
        });
        assert_eq!(status.message(), "etcdserver: requested lease not found");
        assert!(!status.metadata().get("corral-detail").unwrap().is_empty());
    }
}
