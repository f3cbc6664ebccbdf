//! The shard map an agent publishes beside its socket, for lookups with no round trip.
//!
//! ```text
//!  replica ──(shard changed, or every second)──► agent writes a1.shards.tmp, renames it
//!                                                 to a1.shards (atomic replace)
//!  app: ShardMap::shard("M3") ── stat(a1.shards) ── unchanged? answer from memory
//!                                              └─ replaced? read and check it, then answer
//! ```
//!
//! A lookup costs one `stat` when nothing changed: no message to the agent, no thread
//! to wake. The map is the agent's replica as of `revision`, so it is exactly as fresh
//! as a local read through the socket, a few milliseconds later at most. The agent
//! rewrites the file at least every [`PUBLISH_EVERY`]; a map older than
//! [`STALE_AFTER`] means its agent is down or frozen, and lookups fail with
//! [`ShardMapError::Stale`] instead of answering from a dead copy.
//!
//! File layout, little-endian: magic `CRLSHRD1`, revision u64, written-at (Unix ms) u64,
//! core last heard (Unix ms, 0: never) u64, body length u32, CRC-32 of the body u32,
//! then the body: the shards, then the shard groups, postcard-encoded (a reader of the
//! version before reads the shards and ignores the groups; a map without them reads as
//! having none).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Revision;
use crate::model::Shard;
use crate::slots::{Route, ShardGroup};

const MAGIC: &[u8; 8] = b"CRLSHRD1";
const HEADER_LEN: usize = 8 + 8 + 8 + 8 + 4 + 4;
/// Largest body a reader accepts.
pub const BODY_LEN_MAX: usize = 256 * 1024 * 1024;
/// The agent rewrites the map at least this often, changed or not.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// A map not rewritten for this long is refused: its agent is not running.
pub const STALE_AFTER: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ShardMapError {
    #[error("cannot read the shard map {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the shard map {path} is damaged: {reason}")]
    Damaged { path: String, reason: String },
    #[error(
        "the shard map {path} was last written {age_ms} ms ago: its agent is not running or is frozen"
    )]
    Stale { path: String, age_ms: u64 },
}

/// The file name of the map an agent listening on `socket` publishes.
pub fn path_for_socket(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".shards");
    PathBuf::from(name)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The bytes of a map file (the agent's side).
pub fn encode(
    revision: Revision,
    core_heard: Option<SystemTime>,
    shards: &[&Shard],
    groups: &[&ShardGroup],
) -> Result<Vec<u8>, postcard::Error> {
    let body = postcard::to_stdvec(&(shards, groups))?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&revision.to_le_bytes());
    bytes.extend_from_slice(&unix_ms(SystemTime::now()).to_le_bytes());
    bytes.extend_from_slice(&core_heard.map_or(0, unix_ms).to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// What one map file holds.
#[derive(Debug)]
pub struct Published {
    pub revision: Revision,
    pub written_at_ms: u64,
    /// When the agent last heard from the core (Unix ms), if ever.
    pub core_heard_ms: Option<u64>,
    pub shards: Arc<HashMap<String, Shard>>,
    pub groups: Arc<HashMap<String, ShardGroup>>,
    /// CRC-32 of the encoded shards: a rewrite with the same body is not decoded again.
    body_crc: u32,
}

/// Parses a map file; every length and checksum is checked.
pub fn decode(bytes: &[u8]) -> Result<Published, String> {
    decode_after(bytes, None)
}

/// As [`decode`], but keeps `previous`'s shards, undecoded, when the body is the same: the
/// agent rewrites an unchanged map every second to show it is alive.
fn decode_after(bytes: &[u8], previous: Option<&Published>) -> Result<Published, String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!("{} bytes, shorter than the header", bytes.len()));
    }
    if &bytes[..8] != MAGIC {
        return Err("not a Corral shard map (bad magic)".into());
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
    let revision = u64_at(8);
    let written_at_ms = u64_at(16);
    let core_heard_ms = Some(u64_at(24)).filter(|&ms| ms != 0);
    let len = u32_at(32) as usize;
    let crc = u32_at(36);
    if len > BODY_LEN_MAX || bytes.len() != HEADER_LEN + len {
        return Err(format!(
            "body length {len} does not match the file ({} bytes)",
            bytes.len()
        ));
    }
    let body = &bytes[HEADER_LEN..];
    if crc32(body) != crc {
        return Err("checksum mismatch".into());
    }
    let (shards, groups) = match previous {
        Some(p) if p.body_crc == crc && p.revision == revision => {
            (p.shards.clone(), p.groups.clone())
        }
        _ => {
            let undecodable = |e: postcard::Error| format!("undecodable body: {e}");
            let (shards, rest): (Vec<Shard>, _) =
                postcard::take_from_bytes(body).map_err(undecodable)?;
            let groups: Vec<ShardGroup> = if rest.is_empty() {
                Vec::new()
            } else {
                postcard::from_bytes(rest).map_err(undecodable)?
            };
            (
                Arc::new(shards.into_iter().map(|s| (s.name.clone(), s)).collect()),
                Arc::new(groups.into_iter().map(|g| (g.name.clone(), g)).collect()),
            )
        }
    };
    Ok(Published {
        revision,
        written_at_ms,
        core_heard_ms,
        shards,
        groups,
        body_crc: crc,
    })
}

fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Identifies one version of the file: the agent replaces it, never edits it in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileVersion {
    inode: u64,
    device: u64,
    len: u64,
    modified: Option<SystemTime>,
}

fn version_of(metadata: &std::fs::Metadata) -> FileVersion {
    use std::os::unix::fs::MetadataExt;
    FileVersion {
        inode: metadata.ino(),
        device: metadata.dev(),
        len: metadata.len(),
        modified: metadata.modified().ok(),
    }
}

/// An app's view of its agent's shard map. Not shared between threads: each keeps its
/// own (they are cheap), or wraps one in a mutex.
#[derive(Debug)]
pub struct ShardMap {
    path: PathBuf,
    current: Option<(FileVersion, Arc<Published>)>,
}

impl ShardMap {
    /// The map published by the agent listening on `socket`.
    pub fn for_socket(socket: impl AsRef<Path>) -> Self {
        Self::open(path_for_socket(socket.as_ref()))
    }

    pub fn open(path: impl Into<PathBuf>) -> Self {
        ShardMap {
            path: path.into(),
            current: None,
        }
    }

    fn io(&self, source: std::io::Error) -> ShardMapError {
        ShardMapError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// The map as the agent last published it, reloaded if the agent replaced it.
    pub fn load(&mut self) -> Result<Arc<Published>, ShardMapError> {
        let metadata = std::fs::metadata(&self.path).map_err(|e| self.io(e))?;
        let version = version_of(&metadata);
        let published = match &self.current {
            Some((v, published)) if *v == version => published.clone(),
            _ => {
                let bytes = std::fs::read(&self.path).map_err(|e| self.io(e))?;
                let previous = self.current.as_ref().map(|(_, p)| p.as_ref());
                let published = Arc::new(decode_after(&bytes, previous).map_err(|reason| {
                    ShardMapError::Damaged {
                        path: self.path.display().to_string(),
                        reason,
                    }
                })?);
                self.current = Some((version, published.clone()));
                published
            }
        };
        let age_ms = unix_ms(SystemTime::now()).saturating_sub(published.written_at_ms);
        if age_ms > STALE_AFTER.as_millis() as u64 {
            return Err(ShardMapError::Stale {
                path: self.path.display().to_string(),
                age_ms,
            });
        }
        Ok(published)
    }

    /// "Who is the master of `name`, and which are its slaves": the shard, or None if
    /// the agent's replica has no such shard.
    pub fn shard(&mut self, name: &str) -> Result<Option<Shard>, ShardMapError> {
        Ok(self.load()?.shards.get(name).cloned())
    }

    /// The master's address of `name`, if the shard exists and has one.
    pub fn master(&mut self, name: &str) -> Result<Option<String>, ShardMapError> {
        Ok(self.load()?.shards.get(name).and_then(|s| s.master.clone()))
    }

    /// Where `key` goes in shard group `group` (slot, shard, master, the group's version),
    /// or None if the agent's replica has no such group.
    pub fn route(&mut self, group: &str, key: &[u8]) -> Result<Option<Route>, ShardMapError> {
        let published = self.load()?;
        Ok(published
            .groups
            .get(group)
            .and_then(|g| g.route(key, |shard| published.shards.get(shard))))
    }

    /// Shard group `group`, or None if the agent's replica has no such group.
    pub fn group(&mut self, group: &str) -> Result<Option<ShardGroup>, ShardMapError> {
        Ok(self.load()?.groups.get(group).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Replica;

    fn shard(name: &str, master: &str) -> Shard {
        Shard {
            name: name.into(),
            replicas: vec![Replica {
                address: master.into(),
                priority: 1,
                session: 7,
                registered_revision: 3,
            }],
            master: Some(master.into()),
            epoch: 2,
            create_revision: 1,
        }
    }

    #[test]
    fn a_map_round_trips_and_every_damage_is_refused() {
        let m3 = shard("M3", "10.0.0.3:6379");
        let bytes = encode(42, None, &[&m3], &[]).unwrap();
        let published = decode(&bytes).unwrap();
        assert_eq!(published.revision, 42);
        assert_eq!(published.core_heard_ms, None);
        assert_eq!(published.shards["M3"], m3);
        for cut in [0, 10, HEADER_LEN, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for flip in [0, 9, HEADER_LEN + 1, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[flip] ^= 0x40;
            let decoded = decode(&damaged);
            // A flipped bit in the revision or timestamps is not detectable; anywhere
            // else it must be.
            if !(8..32).contains(&flip) {
                assert!(decoded.is_err(), "flip at {flip}");
            }
        }
    }

    /// Groups route from the file; a file of the version before (shards alone) reads with
    /// no groups, and one with groups reads as shards alone to that version's reader.
    #[test]
    fn groups_route_from_the_map_and_the_earlier_layout_reads() {
        use crate::slots::{SLOTS, SlotRange};
        let m3 = shard("M3", "10.0.0.3:6379");
        let group = ShardGroup {
            name: "orders".into(),
            version: 4,
            ranges: vec![SlotRange {
                first: 0,
                last: SLOTS - 1,
                shard: "M3".into(),
                moving_to: None,
            }],
        };
        let published = decode(&encode(1, None, &[&m3], &[&group]).unwrap()).unwrap();
        let route = published.groups["orders"]
            .route(b"foo", |s| published.shards.get(s))
            .unwrap();
        assert_eq!(route.slot, 12182);
        assert_eq!(route.master.as_deref(), Some("10.0.0.3:6379"));
        assert_eq!((route.epoch, route.version), (2, 4));
        let body = postcard::to_stdvec(&(&[&m3][..], &[&group][..])).unwrap();
        let earlier_reader: Vec<Shard> = postcard::from_bytes(&body).unwrap();
        assert_eq!(earlier_reader, vec![m3.clone()]);
        // The layout before: the shards alone.
        let mut earlier = encode(1, None, &[&m3], &[]).unwrap();
        let shards_only = postcard::to_stdvec(&[&m3][..]).unwrap();
        earlier.truncate(HEADER_LEN);
        earlier[32..36].copy_from_slice(&(shards_only.len() as u32).to_le_bytes());
        earlier[36..40].copy_from_slice(&crc32(&shards_only).to_le_bytes());
        earlier.extend_from_slice(&shards_only);
        let published = decode(&earlier).unwrap();
        assert!(published.groups.is_empty());
        assert_eq!(published.shards["M3"], m3);
    }

    #[test]
    fn the_reader_follows_replacements_and_refuses_a_stale_map() {
        let dir = std::env::temp_dir().join(format!("corral-shard-map-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("a1.sock");
        let path = path_for_socket(&socket);
        let mut map = ShardMap::for_socket(&socket);
        assert!(matches!(map.shard("M3"), Err(ShardMapError::Io { .. })));

        let publish = |bytes: Vec<u8>| {
            let tmp = dir.join("a1.sock.shards.tmp");
            std::fs::write(&tmp, bytes).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        };
        publish(encode(1, None, &[&shard("M3", "a:1")], &[]).unwrap());
        assert_eq!(map.master("M3").unwrap().as_deref(), Some("a:1"));
        assert_eq!(map.shard("M9").unwrap(), None);
        publish(encode(2, None, &[&shard("M3", "b:1")], &[]).unwrap());
        assert_eq!(map.master("M3").unwrap().as_deref(), Some("b:1"));
        // The once-a-second rewrite of an unchanged map is read, but not decoded again.
        let before = map.load().unwrap().shards.clone();
        publish(encode(2, None, &[&shard("M3", "b:1")], &[]).unwrap());
        let after = map.load().unwrap().shards.clone();
        assert!(Arc::ptr_eq(&before, &after));

        // Written long ago: the agent is gone.
        let mut old = encode(3, None, &[&shard("M3", "c:1")], &[]).unwrap();
        let long_ago = unix_ms(SystemTime::now()) - 60_000;
        old[16..24].copy_from_slice(&long_ago.to_le_bytes());
        publish(old);
        assert!(matches!(map.master("M3"), Err(ShardMapError::Stale { .. })));

        publish(b"garbage".to_vec());
        assert!(matches!(
            map.master("M3"),
            Err(ShardMapError::Damaged { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
