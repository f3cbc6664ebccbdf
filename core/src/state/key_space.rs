//! The key space: `/`-separated keys with values and their revision history.

use std::collections::BTreeMap;
use std::ops::Bound;

use corral_proto::{CompareOp, CompareTarget, KeyMeta, KeyValue, Revision, SessionId};
use serde::{Deserialize, Serialize};

/// One stored key, without its name (the map holds that).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyRecord {
    pub(crate) value: Vec<u8>,
    pub(crate) create_revision: Revision,
    pub(crate) modify_revision: Revision,
    pub(crate) version: u64,
    pub(crate) session: Option<SessionId>,
}

impl KeyRecord {
    fn meta(&self) -> KeyMeta {
        KeyMeta {
            create_revision: self.create_revision,
            modify_revision: self.modify_revision,
            version: self.version,
        }
    }

    pub(crate) fn to_key_value(&self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            modify_revision: self.modify_revision,
            version: self.version,
            session: self.session,
        }
    }
}

/// All keys, ordered, so that prefix lists are range scans and snapshots are deterministic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeySpace {
    keys: BTreeMap<String, KeyRecord>,
    /// Bytes of every key and value: derived, rebuilt when a snapshot loads.
    #[serde(skip)]
    bytes: u64,
}

/// What a put replaced, so the caller can move ownership between sessions.
pub(crate) struct PutOutcome {
    pub(crate) meta: KeyMeta,
    pub(crate) previous_session: Option<SessionId>,
}

impl KeySpace {
    pub(crate) fn get(&self, key: &str) -> Option<&KeyRecord> {
        self.keys.get(key)
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Bytes of every key and value.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Recounts the bytes, after a snapshot loaded.
    pub(crate) fn recount(&mut self) {
        self.bytes = self
            .keys
            .iter()
            .map(|(key, record)| (key.len() + record.value.len()) as u64)
            .sum();
    }

    /// How many keys and bytes the state would hold after putting `len` bytes of value
    /// under `key`.
    pub(crate) fn after_put(&self, key: &str, len: usize) -> (u64, u64) {
        match self.keys.get(key) {
            Some(record) => (
                self.keys.len() as u64,
                self.bytes - record.value.len() as u64 + len as u64,
            ),
            None => (
                self.keys.len() as u64 + 1,
                self.bytes + (key.len() + len) as u64,
            ),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &KeyRecord)> {
        self.keys.iter()
    }

    /// Keys that start with `prefix`, in order, beginning after `start_after` if given.
    pub(crate) fn range_prefix<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a String, &'a KeyRecord)> + 'a {
        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        self.keys
            .range::<str, _>((lower, Bound::Unbounded))
            .take_while(move |(key, _)| key.starts_with(prefix))
    }

    /// Names of the keys under `prefix` (or just `key` when not a prefix delete) that exist.
    pub(crate) fn matching(&self, key: &str, prefix: bool) -> Vec<String> {
        if prefix {
            self.range_prefix(key, None)
                .map(|(k, _)| k.clone())
                .collect()
        } else if self.keys.contains_key(key) {
            vec![key.to_string()]
        } else {
            Vec::new()
        }
    }

    pub(crate) fn put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        session: Option<SessionId>,
        revision: Revision,
    ) -> PutOutcome {
        match self.keys.get_mut(key) {
            Some(record) => {
                let previous_session = record.session;
                self.bytes = self.bytes - record.value.len() as u64 + value.len() as u64;
                record.value = value;
                record.modify_revision = revision;
                record.version += 1;
                record.session = session;
                PutOutcome {
                    meta: record.meta(),
                    previous_session,
                }
            }
            None => {
                self.bytes += (key.len() + value.len()) as u64;
                let record = KeyRecord {
                    value,
                    create_revision: revision,
                    modify_revision: revision,
                    version: 1,
                    session,
                };
                let meta = record.meta();
                self.keys.insert(key.to_string(), record);
                PutOutcome {
                    meta,
                    previous_session: None,
                }
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &str) -> Option<KeyRecord> {
        let record = self.keys.remove(key)?;
        self.bytes -= (key.len() + record.value.len()) as u64;
        Some(record)
    }

    /// Which branch of `txn` runs against the current state: whether its compares all
    /// hold, and that branch's operations.
    pub(crate) fn txn_branch<'t>(
        &self,
        txn: &'t corral_proto::Txn,
    ) -> (bool, &'t [corral_proto::TxnOp]) {
        let succeeded = txn
            .compares
            .iter()
            .all(|c| self.compare(&c.key, c.op, &c.target));
        let branch = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        (succeeded, branch)
    }

    /// Evaluates one transaction compare against the current state.
    pub(crate) fn compare(&self, key: &str, op: CompareOp, target: &CompareTarget) -> bool {
        let record = self.keys.get(key);
        let ordering = match target {
            CompareTarget::Version(v) => record.map_or(0, |r| r.version).cmp(v),
            CompareTarget::CreateRevision(v) => record.map_or(0, |r| r.create_revision).cmp(v),
            CompareTarget::ModifyRevision(v) => record.map_or(0, |r| r.modify_revision).cmp(v),
            CompareTarget::Value(v) => record.map(|r| r.value.as_slice()).cmp(&Some(v.as_slice())),
        };
        match op {
            CompareOp::Equal => ordering.is_eq(),
            CompareOp::NotEqual => ordering.is_ne(),
            CompareOp::Less => ordering.is_lt(),
            CompareOp::Greater => ordering.is_gt(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_stops_at_the_end_of_the_prefix_and_resumes_after_a_key() {
        let mut keys = KeySpace::default();
        for (i, k) in ["a", "app/1", "app/2", "app/3", "apq", "b"]
            .iter()
            .enumerate()
        {
            keys.put(k, vec![], None, i as u64 + 1);
        }
        let names: Vec<_> = keys
            .range_prefix("app/", None)
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(names, ["app/1", "app/2", "app/3"]);
        let names: Vec<_> = keys
            .range_prefix("app/", Some("app/1"))
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(names, ["app/2", "app/3"]);
        assert_eq!(keys.range_prefix("", None).count(), 6);
    }

    #[test]
    fn compares_treat_an_absent_key_as_version_zero_and_no_value() {
        let mut keys = KeySpace::default();
        assert!(keys.compare("x", CompareOp::Equal, &CompareTarget::Version(0)));
        assert!(keys.compare("x", CompareOp::Less, &CompareTarget::Value(vec![])));
        keys.put("x", b"v".to_vec(), None, 5);
        assert!(keys.compare("x", CompareOp::Equal, &CompareTarget::Version(1)));
        assert!(keys.compare("x", CompareOp::Equal, &CompareTarget::ModifyRevision(5)));
        assert!(keys.compare(
            "x",
            CompareOp::Greater,
            &CompareTarget::Value(b"a".to_vec())
        ));
    }
}
