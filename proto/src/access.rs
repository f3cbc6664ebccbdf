//! Rights of apps: rules stored in the core, enforced by the agent that serves the app,
//! the way etcd's roles and Consul's ACLs are; and the quota on the whole state.
//!
//! ```text
//!  app ── Unix user/group (SO_PEERCRED) or bearer token (HTTP) ──► agent
//!     agent: every request ─► the resources it reads or writes ─► a rule that grants
//!            each one to that identity, or `forbidden` (only while rules are enforced)
//! ```
//!
//! A rule grants one subject read or write (which includes read) on the names under a
//! prefix of one kind of resource. With enforcement off (what `corral dev` runs), every
//! app may do everything; once an operator turns it on, nothing is allowed that no rule
//! grants. The core's own ownership checks ([`crate::Actor`]) hold either way.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::limits::{STATE_BYTES_MAX_DEFAULT, STATE_KEYS_MAX_DEFAULT};

/// Who a rule is for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Subject {
    /// A Unix user of a socket client, by uid.
    User(u32),
    /// A Unix group of a socket client, by gid (its primary group).
    Group(u32),
    /// An HTTP client presenting the bearer token of this name.
    Token(String),
    /// Anybody, HTTP clients without a token included.
    Anyone,
}

/// What kind of thing a rule is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ResourceKind {
    Keys,
    Shards,
    Locks,
    Services,
}

/// What a rule allows; `Write` includes `Read`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Access {
    Read,
    Write,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRule {
    pub subject: Subject,
    pub kind: ResourceKind,
    /// Names (keys, shard, lock or service names) that start with this; empty: all.
    pub prefix: String,
    pub access: Access,
}

/// The most the state may hold; writes that would grow it further are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub keys_max: u64,
    /// Bytes of keys and values together.
    pub bytes_max: u64,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            keys_max: STATE_KEYS_MAX_DEFAULT,
            bytes_max: STATE_BYTES_MAX_DEFAULT,
        }
    }
}

/// The access part of the state: rules, token digests, whether rules are enforced, and
/// the quota.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTable {
    pub enforce: bool,
    pub rules: BTreeMap<String, AccessRule>,
    /// SHA-256 of each token, by name: the tokens themselves are never stored.
    pub tokens: BTreeMap<String, Vec<u8>>,
    pub quota: Quota,
}

/// Who asks, as the agent established it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// A socket client: its Unix user and primary group.
    Unix { uid: u32, gid: u32 },
    /// An HTTP client that presented the token of this name.
    Token(String),
    /// An HTTP client without a token.
    Anonymous,
}

impl AccessTable {
    /// Whether `identity` may have `access` to the resource `name` of `kind`.
    pub fn allows(
        &self,
        identity: &Identity,
        kind: ResourceKind,
        name: &str,
        access: Access,
    ) -> bool {
        if !self.enforce {
            return true;
        }
        self.rules.values().any(|rule| {
            rule.kind == kind
                && rule.access >= access
                && name.starts_with(&rule.prefix)
                && matches_subject(&rule.subject, identity)
        })
    }

    /// The name of the token whose digest is `digest`, if any.
    pub fn token_named_by(&self, digest: &[u8]) -> Option<&str> {
        self.tokens
            .iter()
            .find(|(_, stored)| constant_time_eq(stored, digest))
            .map(|(name, _)| name.as_str())
    }
}

fn matches_subject(subject: &Subject, identity: &Identity) -> bool {
    match (subject, identity) {
        (Subject::Anyone, _) => true,
        (Subject::User(uid), Identity::Unix { uid: who, .. }) => uid == who,
        (Subject::Group(gid), Identity::Unix { gid: group, .. }) => gid == group,
        (Subject::Token(name), Identity::Token(who)) => name == who,
        _ => false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(subject: Subject, kind: ResourceKind, prefix: &str, access: Access) -> AccessRule {
        AccessRule {
            subject,
            kind,
            prefix: prefix.into(),
            access,
        }
    }

    /// Off, everything is allowed; on, only what a rule grants, by subject, kind,
    /// prefix and access, with write including read.
    #[test]
    fn rules_grant_by_subject_kind_prefix_and_access() {
        let alice = Identity::Unix {
            uid: 1000,
            gid: 100,
        };
        let bob = Identity::Unix {
            uid: 1001,
            gid: 200,
        };
        let ci = Identity::Token("ci".into());
        let mut table = AccessTable::default();
        assert!(table.allows(&bob, ResourceKind::Shards, "M3", Access::Write));
        table.enforce = true;
        assert!(!table.allows(&bob, ResourceKind::Shards, "M3", Access::Read));
        table.rules.insert(
            "a".into(),
            rule(
                Subject::User(1000),
                ResourceKind::Keys,
                "app/",
                Access::Write,
            ),
        );
        table.rules.insert(
            "g".into(),
            rule(
                Subject::Group(200),
                ResourceKind::Keys,
                "app/",
                Access::Read,
            ),
        );
        table.rules.insert(
            "t".into(),
            rule(
                Subject::Token("ci".into()),
                ResourceKind::Locks,
                "deploy",
                Access::Write,
            ),
        );
        table.rules.insert(
            "all".into(),
            rule(Subject::Anyone, ResourceKind::Services, "", Access::Read),
        );
        assert!(table.allows(&alice, ResourceKind::Keys, "app/x", Access::Write));
        assert!(table.allows(&alice, ResourceKind::Keys, "app/x", Access::Read));
        assert!(!table.allows(&alice, ResourceKind::Keys, "other", Access::Read));
        assert!(!table.allows(&alice, ResourceKind::Shards, "app/x", Access::Read));
        assert!(table.allows(&bob, ResourceKind::Keys, "app/x", Access::Read));
        assert!(!table.allows(&bob, ResourceKind::Keys, "app/x", Access::Write));
        assert!(table.allows(&ci, ResourceKind::Locks, "deploy-eu", Access::Write));
        assert!(!table.allows(&ci, ResourceKind::Keys, "app/x", Access::Read));
        assert!(table.allows(
            &Identity::Anonymous,
            ResourceKind::Services,
            "api",
            Access::Read
        ));
        assert!(!table.allows(
            &Identity::Anonymous,
            ResourceKind::Services,
            "api",
            Access::Write
        ));
    }

    #[test]
    fn a_token_is_found_by_its_digest_only() {
        let mut table = AccessTable::default();
        table.tokens.insert("ci".into(), vec![1; 32]);
        assert_eq!(table.token_named_by(&[1; 32]), Some("ci"));
        assert_eq!(table.token_named_by(&[2; 32]), None);
        assert_eq!(table.token_named_by(&[1; 31]), None);
    }
}
