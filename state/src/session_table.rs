//! Sessions, and the index of what each session owns.
//!
//! The table itself (id → owner) is part of the snapshot. The ownership index is derived:
//! it is rebuilt from the other tables when a snapshot is loaded, and kept up to date by
//! [`super::StateMachine`] on every write, so that ending a session costs the size of what
//! it owned rather than a scan of the whole state.

use std::collections::{BTreeMap, BTreeSet};

use corral_proto::{Session, SessionId, SessionOwner};
use serde::{Deserialize, Serialize};

/// Everything one session owns, by name. Derived state: never serialized.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Owned {
    pub(crate) keys: BTreeSet<String>,
    /// (shard, address)
    pub(crate) replicas: BTreeSet<(String, String)>,
    pub(crate) locks_held: BTreeSet<String>,
    pub(crate) locks_waiting: BTreeSet<String>,
    /// (service, instance id)
    pub(crate) services: BTreeSet<(String, String)>,
    /// Client sessions under a node session.
    pub(crate) children: BTreeSet<SessionId>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SessionIndex {
    /// The open node session of each node name (at most one at a time).
    pub(crate) nodes: BTreeMap<String, SessionId>,
    /// What each open session owns; every open session has an entry.
    pub(crate) owned: BTreeMap<SessionId, Owned>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct SessionTable {
    sessions: BTreeMap<SessionId, SessionOwner>,
    #[serde(skip)]
    pub(crate) index: SessionIndex,
}

impl SessionTable {
    pub(crate) fn get(&self, id: SessionId) -> Option<&SessionOwner> {
        self.sessions.get(&id)
    }

    pub(crate) fn contains(&self, id: SessionId) -> bool {
        self.sessions.contains_key(&id)
    }

    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = Session> + '_ {
        self.sessions.iter().map(|(id, owner)| Session {
            id: *id,
            owner: owner.clone(),
        })
    }

    /// The open node session of `name`, with its incarnation.
    pub(crate) fn node_session(&self, name: &str) -> Option<(SessionId, u64)> {
        let id = *self.index.nodes.get(name)?;
        match self.sessions.get(&id) {
            Some(SessionOwner::Node { incarnation, .. }) => Some((id, *incarnation)),
            _ => None,
        }
    }

    /// The client session opened under `node_session` with `client_key`, if still open.
    pub(crate) fn client_session(
        &self,
        node_session: SessionId,
        client_key: u64,
    ) -> Option<SessionId> {
        let children = &self.index.owned.get(&node_session)?.children;
        children.iter().copied().find(|child| {
            matches!(self.sessions.get(child), Some(SessionOwner::Client { client_key: k, .. }) if *k == client_key)
        })
    }

    /// The name of the node a session belongs to (its own, or its parent's).
    pub(crate) fn node_name(&self, id: SessionId) -> Option<&str> {
        match self.sessions.get(&id)? {
            SessionOwner::Node { name, .. } => Some(name),
            SessionOwner::Client { node_session, .. } => match self.sessions.get(node_session)? {
                SessionOwner::Node { name, .. } => Some(name),
                SessionOwner::Client { .. } => None,
            },
        }
    }

    /// True when `id` owns no key, replica, lock (held or awaited), service instance or
    /// client session.
    pub(crate) fn owns_nothing(&self, id: SessionId) -> bool {
        self.index.owned.get(&id).is_none_or(|o| {
            o.keys.is_empty()
                && o.replicas.is_empty()
                && o.locks_held.is_empty()
                && o.locks_waiting.is_empty()
                && o.services.is_empty()
                && o.children.is_empty()
        })
    }

    pub(crate) fn children(&self, id: SessionId) -> Vec<SessionId> {
        self.index
            .owned
            .get(&id)
            .map(|o| o.children.iter().copied().collect())
            .unwrap_or_default()
    }

    pub(crate) fn owned(&self, id: SessionId) -> Option<&Owned> {
        self.index.owned.get(&id)
    }

    pub(crate) fn owned_mut(&mut self, id: SessionId) -> &mut Owned {
        self.index
            .owned
            .get_mut(&id)
            .expect("every open session has an ownership entry")
    }

    /// Takes the ownership entry of a session that is being closed.
    pub(crate) fn take_owned(&mut self, id: SessionId) -> Owned {
        self.index.owned.get(&id).cloned().unwrap_or_default()
    }

    pub(crate) fn open(&mut self, id: SessionId, owner: SessionOwner) {
        match &owner {
            SessionOwner::Node { name, .. } => {
                let previous = self.index.nodes.insert(name.clone(), id);
                debug_assert!(
                    previous.is_none(),
                    "a node has at most one open node session"
                );
            }
            SessionOwner::Client { node_session, .. } => {
                self.owned_mut(*node_session).children.insert(id);
            }
        }
        self.index.owned.insert(id, Owned::default());
        self.sessions.insert(id, owner);
    }

    /// Gives the open node session `id` a new owner of the same name (a newer
    /// incarnation); its client sessions and all it owns stay.
    pub(crate) fn renew(&mut self, id: SessionId, owner: SessionOwner) {
        if let Some(current) = self.sessions.get_mut(&id) {
            debug_assert!(
                matches!((&*current, &owner), (SessionOwner::Node { name: a, .. }, SessionOwner::Node { name: b, .. }) if a == b),
                "a renewal keeps the node's name"
            );
            *current = owner;
        }
    }

    /// Removes a session from the table and the index; its owned things must already be
    /// gone.
    pub(crate) fn remove(&mut self, id: SessionId) -> Option<SessionOwner> {
        let owner = self.sessions.remove(&id)?;
        self.index.owned.remove(&id);
        match &owner {
            SessionOwner::Node { name, .. } => {
                if self.index.nodes.get(name) == Some(&id) {
                    self.index.nodes.remove(name);
                }
            }
            SessionOwner::Client { node_session, .. } => {
                if let Some(parent) = self.index.owned.get_mut(node_session) {
                    parent.children.remove(&id);
                }
            }
        }
        Some(owner)
    }

    /// A fresh index holding just the sessions; the caller adds ownership.
    pub(crate) fn sessions_index(&self) -> SessionIndex {
        let mut index = SessionIndex::default();
        for (id, owner) in &self.sessions {
            index.owned.insert(*id, Owned::default());
            if let SessionOwner::Node { name, .. } = owner {
                index.nodes.insert(name.clone(), *id);
            }
        }
        for (id, owner) in &self.sessions {
            if let SessionOwner::Client { node_session, .. } = owner
                && let Some(parent) = index.owned.get_mut(node_session)
            {
                parent.children.insert(*id);
            }
        }
        index
    }
}
