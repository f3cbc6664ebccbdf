//! Key ranges and range reads, as etcd's v3 API defines them: `[start, end)` over the
//! bytes of keys, with a limit, filters on revisions and a sort order.
//!
//! ```text
//!  (key, range_end) ──KeyRange::from_etcd──► Single | [start, end) | [start, ∞)
//!  RangeQuery { range, limit, sort, filters } ──(the state machine)──► RangeResult
//! ```
//!
//! Keys are UTF-8 text in Corral, and UTF-8 orders as its bytes do, so a byte range is a
//! range of text keys; its bounds may be any bytes (the end of a prefix range often is not
//! UTF-8). The state machine evaluates queries (`corral-core`); these types only describe
//! them and check their limits.

use serde::{Deserialize, Serialize};

use crate::command::InvalidCommand;
use crate::limits::KEY_LEN_MAX;
use crate::model::{KeyValue, Revision};

/// Where a range ends.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RangeEnd {
    /// The range is the start key alone.
    Single,
    /// Every key from the start up to, not including, these bytes.
    Before(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Every key from the start on.
    Unbounded,
}

/// A range of keys by their bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyRange {
    #[serde(with = "serde_bytes")]
    pub start: Vec<u8>,
    pub end: RangeEnd,
}

impl KeyRange {
    /// The range etcd means by `key` and `range_end`: no end is `key` alone, an end of
    /// one NUL byte is every key from `key` on (and with an empty or NUL `key`, every
    /// key), any other end is `[key, range_end)`.
    pub fn from_etcd(key: &[u8], range_end: &[u8]) -> KeyRange {
        let end = match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            end => RangeEnd::Before(end.to_vec()),
        };
        let start = if key == [0] && end == RangeEnd::Unbounded {
            Vec::new()
        } else {
            key.to_vec()
        };
        KeyRange { start, end }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &str) -> KeyRange {
        let end = prefix_end(prefix.as_bytes());
        KeyRange {
            start: prefix.as_bytes().to_vec(),
            end: if end == [0] {
                RangeEnd::Unbounded
            } else {
                RangeEnd::Before(end)
            },
        }
    }

    /// One key.
    pub fn single(key: &str) -> KeyRange {
        KeyRange {
            start: key.as_bytes().to_vec(),
            end: RangeEnd::Single,
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            RangeEnd::Single => key == self.start.as_slice(),
            RangeEnd::Before(end) => key >= self.start.as_slice() && key < end.as_slice(),
            RangeEnd::Unbounded => key >= self.start.as_slice(),
        }
    }

    /// Whether the range is empty whatever the keys (an end at or before its start).
    pub fn is_empty(&self) -> bool {
        matches!(&self.end, RangeEnd::Before(end) if end.as_slice() <= self.start.as_slice())
    }

    /// The start as text: the smallest text key at or after the start bytes (their
    /// longest UTF-8 prefix, which sorts at or before them).
    pub fn start_floor(&self) -> &str {
        match std::str::from_utf8(&self.start) {
            Ok(text) => text,
            Err(error) => {
                // The bytes up to the error are valid UTF-8 by definition.
                std::str::from_utf8(&self.start[..error.valid_up_to()]).unwrap_or_default()
            }
        }
    }

    /// The prefix this range covers exactly, if it is a prefix range (or all keys).
    pub fn as_prefix(&self) -> Option<&str> {
        let prefix = std::str::from_utf8(&self.start).ok()?;
        let exact = match &self.end {
            RangeEnd::Single => false,
            RangeEnd::Unbounded => prefix.is_empty() || prefix_end(&self.start) == [0],
            RangeEnd::Before(end) => *end == prefix_end(&self.start),
        };
        exact.then_some(prefix)
    }

    /// The longest text prefix every key of the range starts with: what the access rules
    /// are checked against for a range.
    pub fn covering_prefix(&self) -> String {
        let common = match &self.end {
            RangeEnd::Single => return self.start_floor().to_string(),
            RangeEnd::Unbounded => {
                return match self.as_prefix() {
                    Some(prefix) => prefix.to_string(),
                    None => String::new(),
                };
            }
            RangeEnd::Before(end) => {
                if let Some(prefix) = self.as_prefix() {
                    return prefix.to_string();
                }
                let shared = self
                    .start
                    .iter()
                    .zip(end)
                    .take_while(|(a, b)| a == b)
                    .count();
                &self.start[..shared]
            }
        };
        let valid = match std::str::from_utf8(common) {
            Ok(text) => text.len(),
            Err(error) => error.valid_up_to(),
        };
        String::from_utf8_lossy(&common[..valid]).into_owned()
    }

    /// Checks the bounds' lengths.
    pub fn validate(&self) -> Result<(), InvalidCommand> {
        let too_long = |what: &str, len: usize| InvalidCommand::Key {
            key: format!("{what} of a range"),
            reason: format!("{len} bytes, more than the limit of {KEY_LEN_MAX}"),
        };
        if self.start.len() > KEY_LEN_MAX {
            return Err(too_long("start", self.start.len()));
        }
        if let RangeEnd::Before(end) = &self.end
            && end.len() > KEY_LEN_MAX + 1
        {
            return Err(too_long("end", end.len()));
        }
        Ok(())
    }
}

/// The end of the range of keys that start with `prefix`: its last byte below 0xff
/// incremented, the bytes after it dropped; for a prefix of 0xff bytes only (or none),
/// one NUL byte, meaning "no end".
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// What a range is sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SortTarget {
    Key,
    Version,
    CreateRevision,
    ModifyRevision,
    Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SortOrder {
    Ascend,
    Descend,
}

/// A read of a range of keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RangeQuery {
    pub range: KeyRange,
    /// Most keys returned; 0: no limit.
    pub limit: u64,
    /// None: by key, ascending.
    pub sort: Option<(SortTarget, SortOrder)>,
    pub keys_only: bool,
    pub count_only: bool,
    /// Bounds on the keys' modify and create revisions; 0: no bound.
    pub min_modify_revision: Revision,
    pub max_modify_revision: Revision,
    pub min_create_revision: Revision,
    pub max_create_revision: Revision,
}

impl RangeQuery {
    /// Every key of `range`, by key.
    pub fn of(range: KeyRange) -> RangeQuery {
        RangeQuery {
            range,
            limit: 0,
            sort: None,
            keys_only: false,
            count_only: false,
            min_modify_revision: 0,
            max_modify_revision: 0,
            min_create_revision: 0,
            max_create_revision: 0,
        }
    }

    /// Whether a key with these revisions passes the query's filters.
    pub fn admits(&self, modify_revision: Revision, create_revision: Revision) -> bool {
        let above = |value: Revision, min: Revision| min == 0 || value >= min;
        let below = |value: Revision, max: Revision| max == 0 || value <= max;
        above(modify_revision, self.min_modify_revision)
            && below(modify_revision, self.max_modify_revision)
            && above(create_revision, self.min_create_revision)
            && below(create_revision, self.max_create_revision)
    }

    /// Whether the answer needs every key of the range before it can pick the first
    /// `limit` (a sort on anything but the key, ascending).
    pub fn needs_all(&self) -> bool {
        !matches!(self.sort, None | Some((SortTarget::Key, SortOrder::Ascend)))
    }
}

/// What a range read found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResult {
    /// The keys, sorted and limited (empty when only counting).
    pub keys: Vec<KeyValue>,
    /// Whether keys past the limit match.
    pub more: bool,
    /// Every key in the range, whatever the limit and filters.
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_ranges_read_as_etcd_means_them() {
        assert_eq!(KeyRange::from_etcd(b"a", b"").end, RangeEnd::Single);
        let all = KeyRange::from_etcd(b"\0", b"\0");
        assert!(all.start.is_empty() && all.end == RangeEnd::Unbounded);
        assert_eq!(all.as_prefix(), Some(""));
        let from = KeyRange::from_etcd(b"k", b"\0");
        assert!(from.contains(b"z") && !from.contains(b"a"));
        assert_eq!(from.as_prefix(), None);
        let prefix = KeyRange::from_etcd(b"app/", b"app0");
        assert_eq!(prefix.as_prefix(), Some("app/"));
        assert!(prefix.contains(b"app/x") && !prefix.contains(b"app0"));
        assert_eq!(KeyRange::prefix("app/"), prefix);
    }

    #[test]
    fn a_prefix_ends_after_its_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"ab"), b"ac");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), [0]);
        assert_eq!(prefix_end(b""), [0]);
        // The end of a prefix of text need not be text: its range still holds the keys.
        let range = KeyRange::prefix("\u{7ff}");
        assert!(range.contains("\u{7ff}x".as_bytes()));
        assert!(!range.contains("\u{800}".as_bytes()));
    }

    #[test]
    fn the_rules_see_the_narrowest_prefix_that_covers_a_range() {
        assert_eq!(
            KeyRange::from_etcd(b"app/a", b"app/m").covering_prefix(),
            "app/"
        );
        assert_eq!(KeyRange::from_etcd(b"app/a", b"\0").covering_prefix(), "");
        assert_eq!(KeyRange::single("app/a").covering_prefix(), "app/a");
        assert_eq!(KeyRange::prefix("svc/").covering_prefix(), "svc/");
    }

    #[test]
    fn revision_filters_bound_both_ways_and_zero_means_none() {
        let mut query = RangeQuery::of(KeyRange::prefix(""));
        query.max_create_revision = 5;
        assert!(query.admits(9, 5) && !query.admits(9, 6));
    }
}
