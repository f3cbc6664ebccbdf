//! The replica saved in the agent's data directory, so that a restarted agent serves
//! reads from it at once and takes from the core only what changed since (a fleet-wide
//! restart does not make every agent fetch the whole state).
//!
//! ```text
//!  every SAVE_INTERVAL (when the revision moved) and at a stop:
//!      state and history ─► MAGIC ‖ crc32 ‖ postcard(snapshot bytes, batches)
//!          ─► DATA_DIR/replica.tmp ─fsync, rename─► replica
//!  at start: replica file ─► checked (magic, checksum, the state's own invariants)
//!      ─► the agent's replica; the feed resumes after its revision
//! ```
//!
//! The history of recent batches is saved too, so that an app's subscription resumes
//! across the restart from the revision it had reached, without a reset.
//!
//! A file that fails a check is named in the log and set aside: the agent then starts
//! empty and takes a snapshot from the core, as a new one does. A saved revision ahead of
//! the core (a data directory from another cluster, or a core restored from an older
//! backup) is dropped the same way by the agent's start ([`ahead_of_core`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use corral_net::client::CoreClient;
use corral_proto::{EventBatch, Revision};
use corral_state::StateMachine;
use tokio::sync::watch;

use super::shared::SharedReplica;

const MAGIC: &[u8; 8] = b"CRLREPL2";

/// What the file holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    /// Read as bytes, copied whole (the same encoding as a sequence of `u8`).
    #[serde(with = "serde_bytes")]
    snapshot: Vec<u8>,
    history: Vec<EventBatch>,
}

/// How often the replica is saved while the agent runs, when it changed.
const SAVE_INTERVAL: Duration = Duration::from_secs(30);

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("replica")
}

/// Writes the file for `snapshot` (a state's snapshot bytes) and the `history` that led
/// to it: the encoding of [`Saved`], written in parts so that neither the state nor the
/// batches are copied into one buffer first (the batches are those the replica shares).
pub fn write(
    out: &mut impl std::io::Write,
    snapshot: &[u8],
    history: &[Arc<EventBatch>],
) -> std::io::Result<()> {
    let encode_err = |e: postcard::Error| std::io::Error::other(e.to_string());
    // A sequence's length, as postcard encodes it before the elements.
    let length = |n: usize| postcard::to_stdvec(&n).map_err(encode_err);
    let snapshot_len = length(snapshot.len())?;
    let mut batches = length(history.len())?;
    for batch in history {
        batches = postcard::to_extend(batch.as_ref(), batches).map_err(encode_err)?;
    }
    let mut crc = crc32fast::Hasher::new();
    for part in [&snapshot_len[..], snapshot, &batches[..]] {
        crc.update(part);
    }
    out.write_all(MAGIC)?;
    out.write_all(&crc.finalize().to_le_bytes())?;
    for part in [&snapshot_len[..], snapshot, &batches[..]] {
        out.write_all(part)?;
    }
    Ok(())
}

/// The state and history in a file's bytes, checked.
pub fn decode(bytes: &[u8]) -> Result<(StateMachine, Vec<EventBatch>), String> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a saved replica (wrong magic)")?;
    if rest.len() < 4 {
        return Err("truncated".into());
    }
    let (crc, body) = rest.split_at(4);
    let expected = u32::from_le_bytes(crc.try_into().expect("four bytes"));
    if crc32fast::hash(body) != expected {
        return Err("checksum mismatch".into());
    }
    let saved: Saved = postcard::from_bytes(body).map_err(|e| e.to_string())?;
    let machine = StateMachine::from_snapshot_bytes(&saved.snapshot).map_err(|e| e.to_string())?;
    Ok((machine, saved.history))
}

/// The saved state, if there is a readable one; an unreadable file is set aside.
pub fn load(data_dir: &Path) -> Option<(StateMachine, Vec<EventBatch>)> {
    let path = path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read the saved replica");
            return None;
        }
    };
    match decode(&bytes) {
        Ok(saved) => Some(saved),
        Err(e) => {
            set_aside(&path, &e);
            None
        }
    }
}

/// Whether a saved state at `saved` is ahead of the core, whose read index is `core`:
/// it cannot belong to this core's history.
pub fn ahead_of_core(saved: Revision, core: Revision) -> bool {
    saved > core
}

/// Once the core answers its read index, drops a saved state that is ahead of it: the
/// replica starts over from the core's snapshot.
pub async fn check_against_core(
    core: Arc<CoreClient>,
    replica: Arc<SharedReplica>,
    saved: Revision,
    data_dir: PathBuf,
) {
    let core_revision = loop {
        match core.read_index().await {
            Ok(revision) => break revision,
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    if ahead_of_core(saved, core_revision) {
        set_aside(
            &path(&data_dir),
            &format!("saved at revision {saved}, the core is at {core_revision}"),
        );
        replica.start_over();
    }
}

pub fn set_aside(path: &Path, why: &str) {
    let aside = path.with_extension("unreadable");
    tracing::error!(
        path = %path.display(),
        aside = %aside.display(),
        why,
        "the saved replica cannot be used; set aside, the state comes from the core"
    );
    let _ = std::fs::rename(path, aside);
}

fn save(data_dir: &Path, snapshot: &[u8], history: &[Arc<EventBatch>]) -> std::io::Result<()> {
    let target = path(data_dir);
    let tmp = target.with_extension("tmp");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    write(&mut file, snapshot, history)?;
    let file = file.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &target)
}

/// Saves the replica every [`SAVE_INTERVAL`] when its revision moved, and at the stop.
pub async fn run(
    data_dir: PathBuf,
    replica: Arc<SharedReplica>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut saved_at = replica.revision();
    loop {
        let stopping = tokio::select! {
            () = tokio::time::sleep(SAVE_INTERVAL) => false,
            _ = shutdown.changed() => true,
        };
        let (revision, snapshot) = replica.read(|r| {
            (
                r.revision(),
                (r.resume_point().is_some() && r.revision() != saved_at).then(|| {
                    (
                        r.machine().to_snapshot_bytes(),
                        r.history().cloned().collect::<Vec<Arc<EventBatch>>>(),
                    )
                }),
            )
        });
        if let Some((snapshot, history)) = snapshot {
            let dir = data_dir.clone();
            match tokio::task::spawn_blocking(move || save(&dir, &snapshot, &history)).await {
                Ok(Ok(())) => saved_at = revision,
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot save the replica"),
                Err(e) => tracing::warn!(error = %e, "saving the replica failed"),
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_state_comes_back_and_damage_is_refused() {
        let mut machine = StateMachine::default();
        for i in 0..3 {
            machine.apply(&corral_proto::Command::Put {
                key: format!("k{i}"),
                value: b"v".to_vec(),
                session: None,
            });
        }
        let history = vec![
            EventBatch {
                revision: 2,
                events: vec![],
            },
            EventBatch {
                revision: 3,
                events: vec![corral_proto::Event::KeyDeleted { key: "k9".into() }],
            },
        ];
        let shared: Vec<Arc<EventBatch>> = history.iter().cloned().map(Arc::new).collect();
        let mut bytes = Vec::new();
        write(&mut bytes, &machine.to_snapshot_bytes(), &shared).unwrap();
        // The parts make up the encoding of the file's record, as read back.
        let whole = postcard::to_stdvec(&Saved {
            snapshot: machine.to_snapshot_bytes(),
            history: history.clone(),
        })
        .unwrap();
        assert_eq!(&bytes[12..], &whole[..]);
        let (back, back_history) = decode(&bytes).unwrap();
        assert_eq!(back.revision(), 3);
        assert_eq!(back.to_snapshot_bytes(), machine.to_snapshot_bytes());
        assert_eq!(back_history, history);
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(decode(&flipped).err().as_deref(), Some("checksum mismatch"));
        assert!(decode(&bytes[..10]).is_err());
        assert!(decode(b"something else entirely").is_err());
        assert!(ahead_of_core(10, 9));
        assert!(!ahead_of_core(9, 9));
    }
}
