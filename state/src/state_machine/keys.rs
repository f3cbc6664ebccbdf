//! Keys: puts, deletes, ranges, and transactions over them.

use corral_proto::limits::TXN_RANGE_BYTES_MAX;
use corral_proto::range::{KeyRange, RangeQuery};
use corral_proto::{Answer, CommandError, Event, Revision, SessionId, Txn, TxnOp, TxnOpResult};

use super::{Outcome, StateMachine};

impl StateMachine {
    pub(super) fn put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        session: Option<SessionId>,
        next: Revision,
        events: &mut Vec<Event>,
    ) -> corral_proto::KeyMeta {
        let outcome = self.keys.put(key, value, session, next);
        if outcome.previous_session != session {
            if let Some(old) = outcome.previous_session {
                self.sessions.owned_mut(old).keys.remove(key);
            }
            if let Some(new) = session {
                self.sessions.owned_mut(new).keys.insert(key.to_string());
            }
        }
        let record = self.keys.get(key).expect("the key was just written");
        events.push(Event::KeyPut(record.to_key_value(key)));
        outcome.meta
    }

    pub(super) fn delete(&mut self, key: &str, prefix: bool, events: &mut Vec<Event>) -> u64 {
        let names = self.keys.matching(key, prefix);
        for name in &names {
            self.remove_key(name, events);
        }
        names.len() as u64
    }

    pub(super) fn remove_key(&mut self, key: &str, events: &mut Vec<Event>) {
        if let Some(record) = self.keys.remove(key) {
            if let Some(session) = record.session {
                self.sessions.owned_mut(session).keys.remove(key);
            }
            events.push(Event::KeyDeleted {
                key: key.to_string(),
            });
        }
    }

    /// Deletes every key of `range`.
    pub(super) fn delete_range(&mut self, range: &KeyRange, events: &mut Vec<Event>) -> u64 {
        let names: Vec<String> = self
            .keys
            .in_range(range)
            .map(|(k, _)| k.to_string())
            .collect();
        for name in &names {
            self.remove_key(name, events);
        }
        names.len() as u64
    }

    /// An upper bound of the bytes the reads of `branch` answer: exact for a read before
    /// any write; after one, every key of its range plus everything the branch puts.
    pub(super) fn txn_range_bytes(&self, branch: &[TxnOp]) -> u64 {
        let mut total = 0u64;
        let mut written = false;
        let put_bytes: u64 = branch
            .iter()
            .map(|op| match op {
                TxnOp::Put { key, value, .. } => (key.len() + value.len()) as u64,
                _ => 0,
            })
            .sum();
        for op in branch {
            match op {
                TxnOp::Range(query) if !written => {
                    total += match self.keys.range(query, u64::MAX) {
                        Ok(result) => result
                            .keys
                            .iter()
                            .map(|kv| (kv.key.len() + kv.value.len()) as u64)
                            .sum(),
                        Err(bytes) => bytes,
                    };
                }
                TxnOp::Range(query) => {
                    let all = RangeQuery {
                        limit: 0,
                        sort: None,
                        ..query.clone()
                    };
                    total += put_bytes
                        + match self.keys.range(&all, u64::MAX) {
                            Ok(result) => result
                                .keys
                                .iter()
                                .map(|kv| (kv.key.len() + kv.value.len()) as u64)
                                .sum(),
                            Err(bytes) => bytes,
                        };
                }
                _ => written = true,
            }
        }
        total
    }

    pub(super) fn apply_txn(
        &mut self,
        txn: &Txn,
        next: Revision,
        events: &mut Vec<Event>,
    ) -> Outcome {
        let (succeeded, branch) = self.keys.txn_branch(txn);
        if branch.iter().any(|op| matches!(op, TxnOp::Range(_))) {
            let bytes = self.txn_range_bytes(branch);
            if bytes > TXN_RANGE_BYTES_MAX {
                return Err(CommandError::RangeTooLarge {
                    bytes,
                    max: TXN_RANGE_BYTES_MAX,
                });
            }
        }
        // Check every operation of the branch before applying any, so that the branch is
        // all or nothing.
        let (mut keys_added, mut bytes_added) = (0u64, 0u64);
        for op in branch {
            if let TxnOp::Put {
                session,
                key,
                value,
            } = op
            {
                self.require_session(*session)?;
                let (keys, bytes) = self.keys.after_put(key, value.len());
                keys_added += keys.saturating_sub(self.keys.len() as u64);
                bytes_added += bytes.saturating_sub(self.keys.bytes());
            }
        }
        // Deletes in the branch are not counted against its puts: a branch that only
        // stays within the quota by deleting first is refused near the limit.
        let quota = self.access.quota;
        let keys_after = self.keys.len() as u64 + keys_added;
        if keys_added > 0 && keys_after > quota.keys_max {
            return Err(CommandError::QuotaExceeded {
                what: "keys".into(),
                would: keys_after,
                max: quota.keys_max,
            });
        }
        let bytes_after = self.keys.bytes() + bytes_added;
        if bytes_added > 0 && bytes_after > quota.bytes_max {
            return Err(CommandError::QuotaExceeded {
                what: "bytes of keys and values".into(),
                would: bytes_after,
                max: quota.bytes_max,
            });
        }
        let results = branch
            .iter()
            .map(|op| match op {
                TxnOp::Put {
                    key,
                    value,
                    session,
                } => TxnOpResult::Put(self.put(key, value.clone(), *session, next, events)),
                TxnOp::Delete { key, prefix } => TxnOpResult::Deleted {
                    count: self.delete(key, *prefix, events),
                },
                TxnOp::DeleteRange(range) => TxnOpResult::Deleted {
                    count: self.delete_range(range, events),
                },
                TxnOp::Range(query) => {
                    TxnOpResult::Range(self.keys.range(query, u64::MAX).unwrap_or_default())
                }
            })
            .collect();
        Ok(Answer::Txn { succeeded, results })
    }
}
