//! Who may do what: the check every command a core member proposes passes before it is
//! applied ([`Command::Act`]), deterministic like the rest of the state machine.
//!
//! ```text
//!   certificate ── binds ──► node sessions of that name ──► client sessions under them
//!   a command acting in session A may touch what is owned by A, or, when A is a node
//!   session, by any client session under A; the admin certificate may touch anything
//! ```
//!
//! Two checks, both before anything changes:
//! - a session the command acts as (a lock it takes or releases, a replica or service it
//!   registers, an ephemeral key it binds, the session it closes) must belong to the
//!   actor's certificate and be the session the request acts in (or one under it);
//! - something owned the command removes or takes over (a replica, a service instance,
//!   an ephemeral key, the master role of a shard) must be owned so too.
//!
//! What no session owns (plain keys, shards themselves) is left to the rights of the
//! agents' rules, not to this check.

use corral_proto::{Actor, Command, CommandError, SessionId, SessionOwner, TxnOp};

use super::key_space::KeySpace;
use super::service_table::ServiceTable;
use super::session_table::SessionTable;
use super::shard_table::ShardTable;

/// The tables an ownership check reads.
pub(super) struct Ownership<'a> {
    pub(super) sessions: &'a SessionTable,
    pub(super) keys: &'a KeySpace,
    pub(super) shards: &'a ShardTable,
    pub(super) services: &'a ServiceTable,
}

impl Ownership<'_> {
    /// Refuses `command` if `actor` may not do it. What the command would do anyway
    /// (refuse an unknown session, a missing replica) is left to the command itself.
    pub(super) fn authorize(&self, actor: &Actor, command: &Command) -> Result<(), CommandError> {
        if actor.is_admin() {
            return Ok(());
        }
        match command {
            Command::Put {
                key,
                session: Some(session),
                ..
            } => {
                self.acts_as(actor, *session)?;
                self.may_overwrite(actor, key, Some(*session))
            }
            Command::Put { key, session, .. } => self.may_overwrite(actor, key, *session),
            Command::Delete { key, prefix } => self.may_delete(actor, key, *prefix),
            Command::Txn(txn) => {
                let (_, branch) = self.keys.txn_branch(txn);
                for op in branch {
                    match op {
                        TxnOp::Put { key, session, .. } => {
                            if let Some(session) = session {
                                self.acts_as(actor, *session)?;
                            }
                            self.may_overwrite(actor, key, *session)?;
                        }
                        TxnOp::Delete { key, prefix } => self.may_delete(actor, key, *prefix)?,
                        TxnOp::DeleteRange(range) => {
                            for (name, record) in self.keys.in_range(range) {
                                if let Some(owner) = record.session {
                                    self.owned_by(actor, owner, || {
                                        format!("ephemeral key {name:?}")
                                    })?;
                                }
                            }
                        }
                        TxnOp::Range(_) => {}
                    }
                }
                Ok(())
            }
            Command::OpenSession {
                owner: SessionOwner::Node { name, .. },
            }
            | Command::RenewNode { name, .. } => {
                if *name == actor.certificate {
                    Ok(())
                } else {
                    Err(CommandError::ForeignNode {
                        name: name.clone(),
                        certificate: actor.certificate.clone(),
                    })
                }
            }
            Command::OpenSession {
                owner: SessionOwner::Client { node_session, .. },
            } => self.bound_to_certificate(actor, *node_session),
            Command::CloseSession { session }
            | Command::RegisterReplica { session, .. }
            | Command::JoinShard { session, .. }
            | Command::AcquireLock { session, .. }
            | Command::ReleaseLock { session, .. }
            | Command::RegisterService { session, .. } => self.acts_as(actor, *session),
            Command::DeregisterReplica { shard, address }
            | Command::SetReplicaPriority { shard, address, .. } => {
                match self.shards.replica_session(shard, address) {
                    Ok(owner) => {
                        self.owned_by(actor, owner, || format!("replica {address} of {shard}"))
                    }
                    Err(_) => Ok(()),
                }
            }
            Command::Handover { shard, .. } => {
                match self.shards.get(shard).and_then(|s| s.master_replica()) {
                    Some(master) => self.owned_by(actor, master.session, || {
                        format!("the master role of {shard} (held by {})", master.address)
                    }),
                    None => Ok(()),
                }
            }
            Command::DeregisterService { service, id } => {
                match self.services.session_of(service, id) {
                    Ok(owner) => self.owned_by(actor, owner, || {
                        format!("instance {id} of service {service}")
                    }),
                    Err(_) => Ok(()),
                }
            }
            Command::SetRule { .. }
            | Command::SetToken { .. }
            | Command::SetEnforce { .. }
            | Command::SetQuota { .. } => Err(CommandError::AdminOnly {
                what: "access rules, tokens and the quota".into(),
                certificate: actor.certificate.clone(),
            }),
            // A death report is any agent's to make; the core's hearing gate decides it.
            Command::CloseNode { .. }
            | Command::CreateShard { .. }
            | Command::DeleteShard { .. }
            | Command::CreateGroup { .. }
            | Command::DeleteGroup { .. }
            | Command::MoveSlots { .. }
            | Command::FinishMove { .. }
            | Command::Promoting { .. }
            | Command::Act { .. } => Ok(()),
        }
    }

    /// The command acts as `session`: it must be bound to the actor's certificate and be
    /// the session the request acts in, or a client session under it.
    fn acts_as(&self, actor: &Actor, session: SessionId) -> Result<(), CommandError> {
        self.owned_by(actor, session, || format!("session {session}"))
    }

    /// `session` must belong to a node of the actor's certificate.
    fn bound_to_certificate(&self, actor: &Actor, session: SessionId) -> Result<(), CommandError> {
        match self.sessions.node_name(session) {
            Some(node) if node != actor.certificate => Err(CommandError::ForeignSession {
                session,
                node: node.to_string(),
                certificate: actor.certificate.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// What `owner` owns may be touched by the actor: the same certificate, and the owner
    /// is the session the request acts in or a client session under it.
    fn owned_by(
        &self,
        actor: &Actor,
        owner: SessionId,
        what: impl FnOnce() -> String,
    ) -> Result<(), CommandError> {
        let Some(node) = self.sessions.node_name(owner) else {
            // Not open: the command itself refuses it.
            return Ok(());
        };
        let parent = match self.sessions.get(owner) {
            Some(SessionOwner::Client { node_session, .. }) => Some(*node_session),
            _ => None,
        };
        let same_certificate = node == actor.certificate;
        let acting = actor.session;
        if same_certificate && (acting == Some(owner) || (acting.is_some() && acting == parent)) {
            return Ok(());
        }
        Err(CommandError::NotOwner {
            what: what(),
            owner,
            node: node.to_string(),
            acting,
        })
    }

    /// A put may rebind or unbind an ephemeral key only for the key's owner.
    fn may_overwrite(
        &self,
        actor: &Actor,
        key: &str,
        session: Option<SessionId>,
    ) -> Result<(), CommandError> {
        match self.keys.get(key).and_then(|record| record.session) {
            Some(owner) if Some(owner) != session => {
                self.owned_by(actor, owner, || format!("ephemeral key {key:?}"))
            }
            _ => Ok(()),
        }
    }

    /// A delete may remove ephemeral keys only of sessions the actor acts for.
    fn may_delete(&self, actor: &Actor, key: &str, prefix: bool) -> Result<(), CommandError> {
        for name in self.keys.matching(key, prefix) {
            if let Some(owner) = self.keys.get(&name).and_then(|record| record.session) {
                self.owned_by(actor, owner, || format!("ephemeral key {name:?}"))?;
            }
        }
        Ok(())
    }
}
