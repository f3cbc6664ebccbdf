//! The key space: `/`-separated keys with values and their revision history.

use std::collections::BTreeMap;
use std::ops::Bound;

use std::cmp::Ordering;

use corral_proto::range::{KeyRange, RangeEnd, RangeQuery, RangeResult, SortOrder, SortTarget};
use corral_proto::{CompareOp, CompareTarget, KeyMeta, KeyValue, Revision, SessionId};
use serde::{Deserialize, Serialize};

use crate::digest::{RowDigest, SetDigest};

/// One stored key, without its name (the map holds that).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyRecord {
    /// Encoded as bytes (postcard: a length, then the bytes, the same encoding as a
    /// sequence of `u8`), copied whole instead of one `u8` at a time.
    #[serde(with = "serde_bytes")]
    pub(crate) value: Box<[u8]>,
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

    /// This key's row in the key space's digest.
    fn row_digest(&self, key: &str) -> RowDigest {
        RowDigest::of(|context| {
            context.update(&(key.len() as u64).to_le_bytes());
            context.update(key.as_bytes());
            context.update(&(self.value.len() as u64).to_le_bytes());
            context.update(&self.value);
            context.update(&self.create_revision.to_le_bytes());
            context.update(&self.modify_revision.to_le_bytes());
            context.update(&self.version.to_le_bytes());
            match self.session {
                Some(session) => {
                    context.update(&[1]);
                    context.update(&session.to_le_bytes());
                }
                None => context.update(&[0]),
            }
        })
    }

    pub(crate) fn to_key_value(&self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: self.value.to_vec(),
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
    keys: BTreeMap<Box<str>, KeyRecord>,
    /// Bytes of every key and value: derived, rebuilt when a snapshot loads.
    #[serde(skip)]
    bytes: u64,
    /// The digest of every key and its record: derived, rebuilt when a snapshot loads.
    #[serde(skip)]
    digest: SetDigest,
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

    /// The digest of every key and its record (see [`crate::digest`]).
    pub(crate) fn digest(&self) -> &SetDigest {
        &self.digest
    }

    /// Recounts the bytes and the digest, after a snapshot loaded; packs the map.
    pub(crate) fn recount(&mut self) {
        // Decoding inserts the keys one by one in order, which leaves every node of the
        // map a little over half full; building it from the sorted entries fills them
        // (128,000 keys: 9 MiB less).
        self.keys = std::mem::take(&mut self.keys).into_iter().collect();
        self.bytes = self
            .keys
            .iter()
            .map(|(key, record)| (key.len() + record.value.len()) as u64)
            .sum();
        let mut digest = SetDigest::default();
        for (key, record) in &self.keys {
            digest.insert(&record.row_digest(key));
        }
        self.digest = digest;
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

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &KeyRecord)> {
        self.keys.iter().map(|(key, record)| (&**key, record))
    }

    /// Keys that start with `prefix`, in order, beginning after `start_after` if given.
    pub(crate) fn range_prefix<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a str, &'a KeyRecord)> + 'a {
        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        self.keys
            .range::<str, _>((lower, Bound::Unbounded))
            .take_while(move |(key, _)| key.starts_with(prefix))
            .map(|(key, record)| (&**key, record))
    }

    /// The keys of `range`, in order.
    pub(crate) fn in_range<'a>(
        &'a self,
        range: &'a KeyRange,
    ) -> impl Iterator<Item = (&'a str, &'a KeyRecord)> + 'a {
        let start = range.start.as_slice();
        self.keys
            .range::<str, _>((Bound::Included(range.start_floor()), Bound::Unbounded))
            .skip_while(move |(key, _)| key.as_bytes() < start)
            .take_while(move |(key, _)| match &range.end {
                RangeEnd::Single => key.as_bytes() == start,
                RangeEnd::Before(end) => key.as_bytes() < end.as_slice(),
                RangeEnd::Unbounded => true,
            })
            .map(|(key, record)| (&**key, record))
    }

    /// Answers a range read. Refuses, with the bytes it would hold, an answer whose keys
    /// and values exceed `bytes_max`.
    pub(crate) fn range(&self, query: &RangeQuery, bytes_max: u64) -> Result<RangeResult, u64> {
        let mut count = 0u64;
        let mut found: Vec<(&str, &KeyRecord)> = Vec::new();
        let mut matched = 0u64;
        let limit = usize::try_from(query.limit).unwrap_or(usize::MAX);
        let needs_all = query.needs_all();
        for (key, record) in self.in_range(&query.range) {
            count += 1;
            if !query.admits(record.modify_revision, record.create_revision) {
                continue;
            }
            matched += 1;
            if query.count_only || (!needs_all && limit > 0 && found.len() >= limit) {
                continue;
            }
            found.push((key, record));
        }
        if let Some((target, order)) = query.sort {
            found.sort_by(|(key_a, a), (key_b, b)| {
                let ordering = compare_by(target, key_a, a, key_b, b);
                match order {
                    SortOrder::Ascend => ordering,
                    SortOrder::Descend => ordering.reverse(),
                }
            });
        }
        if limit > 0 {
            found.truncate(limit);
        }
        let mut bytes = 0u64;
        for (key, record) in &found {
            bytes += key.len() as u64
                + if query.keys_only {
                    0
                } else {
                    record.value.len() as u64
                };
        }
        if bytes > bytes_max {
            return Err(bytes);
        }
        let keys = found
            .into_iter()
            .map(|(key, record)| {
                let mut kv = record.to_key_value(key);
                if query.keys_only {
                    kv.value = Vec::new();
                }
                kv
            })
            .collect();
        Ok(RangeResult {
            keys,
            more: limit > 0 && matched > limit as u64,
            count,
        })
    }

    /// Names of the keys under `prefix` (or just `key` when not a prefix delete) that exist.
    pub(crate) fn matching(&self, key: &str, prefix: bool) -> Vec<String> {
        if prefix {
            self.range_prefix(key, None)
                .map(|(k, _)| k.to_string())
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
                self.digest.remove(&record.row_digest(key));
                record.value = value.into();
                record.modify_revision = revision;
                record.version += 1;
                record.session = session;
                self.digest.insert(&record.row_digest(key));
                PutOutcome {
                    meta: record.meta(),
                    previous_session,
                }
            }
            None => {
                self.bytes += (key.len() + value.len()) as u64;
                let record = KeyRecord {
                    value: value.into(),
                    create_revision: revision,
                    modify_revision: revision,
                    version: 1,
                    session,
                };
                let meta = record.meta();
                self.digest.insert(&record.row_digest(key));
                self.keys.insert(key.into(), record);
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
        self.digest.remove(&record.row_digest(key));
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
            CompareTarget::Value(v) => record.map(|r| &r.value[..]).cmp(&Some(v.as_slice())),
            CompareTarget::Session(v) => record.and_then(|r| r.session).unwrap_or(0).cmp(v),
        };
        match op {
            CompareOp::Equal => ordering.is_eq(),
            CompareOp::NotEqual => ordering.is_ne(),
            CompareOp::Less => ordering.is_lt(),
            CompareOp::Greater => ordering.is_gt(),
        }
    }
}

/// The order of two keys by `target`, ties by key.
fn compare_by(
    target: SortTarget,
    key_a: &str,
    a: &KeyRecord,
    key_b: &str,
    b: &KeyRecord,
) -> Ordering {
    let ordering = match target {
        SortTarget::Key => Ordering::Equal,
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::CreateRevision => a.create_revision.cmp(&b.create_revision),
        SortTarget::ModifyRevision => a.modify_revision.cmp(&b.modify_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    ordering.then_with(|| key_a.cmp(key_b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value encodes as bytes exactly as it did as a sequence of `u8`, so snapshots and
    /// saved replicas written either way read back.
    #[test]
    fn a_value_encodes_as_a_sequence_of_bytes_did() {
        #[derive(Serialize, Deserialize)]
        struct AsSequence {
            value: Box<[u8]>,
            create_revision: Revision,
            modify_revision: Revision,
            version: u64,
            session: Option<SessionId>,
        }
        let record = KeyRecord {
            value: (0..=255u8).cycle().take(1000).collect(),
            create_revision: 3,
            modify_revision: 9,
            version: 2,
            session: Some(7),
        };
        let sequence = AsSequence {
            value: record.value.clone(),
            create_revision: 3,
            modify_revision: 9,
            version: 2,
            session: Some(7),
        };
        let bytes = postcard::to_stdvec(&record).unwrap();
        assert_eq!(bytes, postcard::to_stdvec(&sequence).unwrap());
        assert_eq!(postcard::from_bytes::<KeyRecord>(&bytes).unwrap(), record);
        let back: AsSequence = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.value, record.value);
    }

    #[test]
    fn prefix_range_stops_at_the_end_of_the_prefix_and_resumes_after_a_key() {
        let mut keys = KeySpace::default();
        for (i, k) in ["a", "app/1", "app/2", "app/3", "apq", "b"]
            .iter()
            .enumerate()
        {
            keys.put(k, vec![], None, i as u64 + 1);
        }
        let names: Vec<_> = keys.range_prefix("app/", None).map(|(k, _)| k).collect();
        assert_eq!(names, ["app/1", "app/2", "app/3"]);
        let names: Vec<_> = keys
            .range_prefix("app/", Some("app/1"))
            .map(|(k, _)| k)
            .collect();
        assert_eq!(names, ["app/2", "app/3"]);
        assert_eq!(keys.range_prefix("", None).count(), 6);
    }

    #[test]
    fn ranges_limit_sort_and_filter_as_etcd_does() {
        let mut keys = KeySpace::default();
        for (revision, key) in [(4, "l/c"), (2, "l/a"), (3, "l/b"), (5, "m")] {
            keys.put(key, key.as_bytes().to_vec(), None, revision);
        }
        let mut query = RangeQuery::of(KeyRange::prefix("l/"));
        query.limit = 1;
        query.sort = Some((SortTarget::CreateRevision, SortOrder::Descend));
        let found = keys.range(&query, u64::MAX).unwrap();
        assert_eq!(found.keys.len(), 1);
        assert_eq!(found.keys[0].key, "l/c");
        assert!(found.more);
        assert_eq!(found.count, 3);
        query.max_create_revision = 3;
        let found = keys.range(&query, u64::MAX).unwrap();
        assert_eq!(found.keys[0].key, "l/b");
        query.count_only = true;
        let found = keys.range(&query, u64::MAX).unwrap();
        assert!(found.keys.is_empty() && found.count == 3);
        // A from-key range, and an answer too large to carry.
        let from = RangeQuery::of(KeyRange::from_etcd(b"l/b", b"\0"));
        let names: Vec<_> = keys
            .range(&from, u64::MAX)
            .unwrap()
            .keys
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(names, ["l/b", "l/c", "m"]);
        assert_eq!(keys.range(&from, 4), Err(14));
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
