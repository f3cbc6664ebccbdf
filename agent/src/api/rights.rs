//! What a request reads and writes, checked against the access rules in the replica
//! ([`corral_proto::access`]) for the identity that asks. No I/O: the connection and the
//! gateway call it with the replica's table.
//!
//! ```text
//!  AgentRequest ─► needs(): [(kind, name, read|write)] ─► AccessTable::allows each
//!                                                          └─ one missing: Forbidden
//! ```

use corral_proto::TxnOp;
use corral_proto::access::{Access, AccessTable, Identity, ResourceKind};
use corral_proto::api::{AgentRequest, ApiError, EventFilter, Query};

/// One thing a request touches.
pub type Need = (ResourceKind, String, Access);

/// Every resource `request` reads or writes. Session management, status and the gossip
/// view need none.
pub fn needs(request: &AgentRequest) -> Vec<Need> {
    use Access::{Read, Write};
    use ResourceKind::{Keys, Locks, Services, Shards};
    let one = |kind, name: &str, access| vec![(kind, name.to_string(), access)];
    match request {
        AgentRequest::Status
        | AgentRequest::Members
        | AgentRequest::Leave
        | AgentRequest::Unsubscribe { .. }
        | AgentRequest::OpenSession { .. }
        | AgentRequest::RenewSession { .. }
        | AgentRequest::CloseSession { .. } => Vec::new(),
        AgentRequest::Read { query, .. } => match query {
            Query::Key(key) => one(Keys, key, Read),
            Query::Prefix { prefix, .. } | Query::Page { prefix, .. } => one(Keys, prefix, Read),
            Query::Shard(name) => one(Shards, name, Read),
            // A group and the shards it routes to are read under the group's name.
            Query::Group(group) | Query::Route { group, .. } => one(Shards, group, Read),
            Query::Shards => one(Shards, "", Read),
            Query::Lock(name) => one(Locks, name, Read),
            Query::Locks | Query::LockPage { .. } => one(Locks, "", Read),
            Query::ShardPage { .. } => one(Shards, "", Read),
            Query::Service(name) => one(Services, name, Read),
            Query::ServicePage { .. } => one(Services, "", Read),
        },
        AgentRequest::Put { key, .. }
        | AgentRequest::CompareAndSet { key, .. }
        | AgentRequest::Delete { key, .. } => one(Keys, key, Write),
        AgentRequest::Txn(txn) => {
            let mut needs: Vec<Need> = txn
                .compares
                .iter()
                .map(|c| (Keys, c.key.clone(), Read))
                .collect();
            for op in txn.success.iter().chain(&txn.failure) {
                needs.push(match op {
                    TxnOp::Put { key, .. } | TxnOp::Delete { key, .. } => {
                        (Keys, key.clone(), Write)
                    }
                    TxnOp::Range(query) => (Keys, query.range.covering_prefix(), Read),
                    TxnOp::DeleteRange(range) => (Keys, range.covering_prefix(), Write),
                });
            }
            needs
        }
        AgentRequest::CreateShard { name }
        | AgentRequest::DeleteShard { name }
        | AgentRequest::CreateGroup { name, .. }
        | AgentRequest::DeleteGroup { name }
        | AgentRequest::MoveSlots { group: name, .. }
        | AgentRequest::FinishMove { group: name, .. } => one(Shards, name, Write),
        AgentRequest::JoinShard { shard, .. }
        | AgentRequest::LeaveShard { shard, .. }
        | AgentRequest::SetPriority { shard, .. }
        | AgentRequest::ReportPosition { shard, .. }
        | AgentRequest::Handover { shard, .. } => one(Shards, shard, Write),
        AgentRequest::AcquireLock { name, .. } | AgentRequest::ReleaseLock { name, .. } => {
            one(Locks, name, Write)
        }
        AgentRequest::RegisterService { service, .. }
        | AgentRequest::DeregisterService { service, .. } => one(Services, service, Write),
        AgentRequest::Subscribe { filter, .. } => subscription_needs(filter),
        AgentRequest::InSession { request, .. } | AgentRequest::OnBehalf { request, .. } => {
            needs(request)
        }
    }
}

fn subscription_needs(filter: &EventFilter) -> Vec<Need> {
    let mut needs = Vec::new();
    if let Some(prefix) = &filter.keys {
        needs.push((ResourceKind::Keys, prefix.clone(), Access::Read));
    }
    for (on, kind) in [
        (filter.shards, ResourceKind::Shards),
        (filter.locks, ResourceKind::Locks),
        (filter.services, ResourceKind::Services),
    ] {
        if on {
            needs.push((kind, String::new(), Access::Read));
        }
    }
    needs
}

/// Refuses `request` for `identity` unless the rules grant everything it touches; the
/// error names the first thing missing.
pub fn check(
    table: &AccessTable,
    identity: &Identity,
    request: &AgentRequest,
) -> Result<(), ApiError> {
    if !table.enforce {
        return Ok(());
    }
    for (kind, name, access) in needs(request) {
        if !table.allows(identity, kind, &name, access) {
            return Err(ApiError::Forbidden(format!(
                "no access rule grants {identity:?} {access:?} on {kind:?} {name:?}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use corral_proto::access::{AccessRule, Subject};

    use super::*;

    /// With rules enforced, a request passes only when every resource it touches is
    /// granted; a subscription needs read on every kind it selects.
    #[test]
    fn a_request_needs_a_rule_for_everything_it_touches() {
        let mut table = AccessTable {
            enforce: true,
            ..AccessTable::default()
        };
        table.rules.insert(
            "app".into(),
            AccessRule {
                subject: Subject::User(1000),
                kind: ResourceKind::Keys,
                prefix: "app/".into(),
                access: Access::Write,
            },
        );
        let app = Identity::Unix {
            uid: 1000,
            gid: 1000,
        };
        let other = Identity::Unix {
            uid: 1001,
            gid: 1001,
        };
        let put = AgentRequest::Put {
            key: "app/x".into(),
            value: vec![],
            ephemeral: false,
        };
        assert!(check(&table, &app, &put).is_ok());
        assert!(matches!(
            check(&table, &other, &put),
            Err(ApiError::Forbidden(_))
        ));
        let wrapped = AgentRequest::InSession {
            session: 3,
            request: Box::new(AgentRequest::Put {
                key: "etc/x".into(),
                value: vec![],
                ephemeral: true,
            }),
        };
        assert!(check(&table, &app, &wrapped).is_err());
        let subscribe = |filter| AgentRequest::Subscribe {
            filter,
            after: None,
        };
        assert!(check(&table, &app, &subscribe(EventFilter::keys("app/"))).is_ok());
        assert!(check(&table, &app, &subscribe(EventFilter::everything())).is_err());
        assert!(check(&table, &app, &AgentRequest::Status).is_ok());
        table.enforce = false;
        assert!(check(&table, &other, &put).is_ok());
    }
}
