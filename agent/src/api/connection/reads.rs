//! A connection's reads: the agent's status and gossip view, and queries answered from
//! the replica (waiting, where the connection wrote or asked for a consistent read, for
//! the replica to reach the revision it must show).

use super::*;

impl Connection {
    pub(super) async fn status(&self) -> AgentStatus {
        let context = &self.context;
        let identity = context.gossip.identity.borrow().clone();
        let (alive, suspect, down) = context.gossip.view.read().counts();
        let (revision, keys, shards) = context.replica.read(|r| {
            let counts = r.machine().counts();
            (r.revision(), counts.keys, counts.shards)
        });
        let node_session = *context.node_session.borrow();
        let client_session = self.session.lock().await.map(|(s, _)| s);
        AgentStatus {
            name: identity.name,
            incarnation: identity.incarnation,
            gossip_address: identity.address.to_string(),
            node_session,
            client_session,
            revision,
            age_ms: context.replica.age_ms(),
            feed: context.replica.feed(),
            members_alive: alive,
            members_suspect: suspect,
            members_down: down,
            keys,
            shards,
            gossip_received: context.gossip.counters.received.load(Ordering::Relaxed),
            gossip_rejected: context.gossip.counters.rejected.load(Ordering::Relaxed),
        }
    }

    pub(super) fn members(&self) -> Vec<MemberInfo> {
        let sessions: HashMap<(String, u64), SessionId> = self.context.replica.read(|r| {
            r.machine()
                .sessions()
                .filter_map(|s| match s.owner {
                    SessionOwner::Node { name, incarnation } => Some(((name, incarnation), s.id)),
                    SessionOwner::Client { .. } => None,
                })
                .collect()
        });
        let view = self.context.gossip.view.read();
        let mut members: Vec<MemberInfo> = view
            .members
            .values()
            .map(|m| MemberInfo {
                name: m.identity.name.clone(),
                address: m.identity.address.to_string(),
                incarnation: m.identity.incarnation,
                state: m.state,
                session: sessions
                    .get(&(m.identity.name.clone(), m.identity.incarnation))
                    .copied(),
            })
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        members
    }

    pub(super) async fn read(
        &self,
        query: corral_proto::api::Query,
        consistent: bool,
    ) -> Result<Reply, ApiError> {
        let replica = &self.context.replica;
        let mut needed = *self.watermark.lock();
        if consistent {
            let index = self.context.reads.read_index().await.map_err(core_error)?;
            needed = needed.max(index);
        }
        if replica.revision() < needed {
            let wait = if consistent {
                CONSISTENT_READ_WAIT
            } else {
                READ_YOUR_WRITES_WAIT
            };
            replica
                .wait_for(needed, wait)
                .await
                .map_err(|current| ApiError::ReplicaBehind {
                    replica: current,
                    needed,
                })?;
        }
        Self::answer(replica, &query, None)
    }

    /// A local read, when the replica already holds everything this connection wrote;
    /// None when it must wait for the replica first.
    pub(super) fn read_now(
        &self,
        query: &corral_proto::api::Query,
    ) -> Option<Result<Reply, ApiError>> {
        let replica = &self.context.replica;
        if replica.revision() < *self.watermark.lock() {
            return None;
        }
        Some(Self::answer(replica, query, Some(&self.identity)))
    }

    /// Answers `query` from the replica; with `identity`, only if the access rules grant
    /// it (checked under the same look at the replica).
    pub(super) fn answer(
        replica: &crate::replica::SharedReplica,
        query: &corral_proto::api::Query,
        identity: Option<&Identity>,
    ) -> Result<Reply, ApiError> {
        let (revision, result) = replica.read(|r| {
            let machine = r.machine();
            if let Some(identity) = identity
                && machine.access().enforce
            {
                let request = AgentRequest::Read {
                    query: query.clone(),
                    consistent: false,
                };
                if let Err(refused) = rights::check(machine.access(), identity, &request) {
                    return (r.revision(), Err(refused));
                }
            }
            (r.revision(), translate::answer(machine, query))
        });
        Ok(Reply::Read(ReadReply {
            revision,
            age_ms: replica.age_ms(),
            result: result?,
        }))
    }
}
