//! The agent's Unix socket: where apps on this host connect.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use corral_proto::api::{AgentFrame, ApiError};
use corral_proto::frame;
use tokio::net::UnixListener;

use super::connection;
use crate::agent::AgentContext;

/// Most app connections served at once; more wait in the listen backlog.
pub const CONNECTIONS_MAX: usize = 16_384;

/// Most connections of one Unix user at once: one app that opens connections and never
/// closes them cannot lock the others out. One more gets an error frame and is closed.
pub const CONNECTIONS_PER_USER_MAX: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{path}: another agent is listening there")]
    InUse { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds the socket at `path` with mode 0660. A stale socket file (nobody listening) is
/// replaced; a live one is an error.
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let io = |source| SocketError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    // Created with no permission beyond owner and group from the start, not only once
    // chmod ran: nobody else can connect in between.
    let previous = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o117));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(previous);
    let listener = bound.map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    Ok(listener)
}

/// Open connections by Unix user.
#[derive(Debug, Default)]
struct PerUser {
    open: parking_lot::Mutex<HashMap<u32, usize>>,
}

impl PerUser {
    /// Counts one more connection of `uid`, if it has room.
    fn admit(self: &Arc<Self>, uid: u32) -> Option<UserSlot> {
        let mut open = self.open.lock();
        let count = open.entry(uid).or_default();
        if *count >= CONNECTIONS_PER_USER_MAX {
            return None;
        }
        *count += 1;
        Some(UserSlot {
            users: self.clone(),
            uid,
        })
    }
}

/// One connection's place in its user's count, given back when dropped.
struct UserSlot {
    users: Arc<PerUser>,
    uid: u32,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut open = self.users.open.lock();
        if let Some(count) = open.get_mut(&self.uid) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

/// Tells a connection over its user's cap why it is closed.
async fn refuse(mut stream: tokio::net::UnixStream, uid: u32) {
    use tokio::io::AsyncWriteExt;
    let reply = AgentFrame::Reply {
        id: 0,
        result: Err(ApiError::TooManyRequests(CONNECTIONS_PER_USER_MAX)),
    };
    if let Ok(bytes) = frame::encode(&reply) {
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&bytes)).await;
    }
    tracing::warn!(
        uid,
        "socket connection refused: this user has {CONNECTIONS_PER_USER_MAX} open"
    );
}

pub async fn run(listener: UnixListener, context: Arc<AgentContext>) {
    let limit = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let users = Arc::new(PerUser::default());
    let mut shutdown = context.shutdown.clone();
    loop {
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => permit.expect("never closed"),
            _ = shutdown.changed() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let uid = stream.peer_cred().map_or(u32::MAX - 1, |c| c.uid());
                let Some(slot) = users.admit(uid) else {
                    context
                        .metrics
                        .socket_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(refuse(stream, uid));
                    continue;
                };
                let context = context.clone();
                tokio::spawn(async move {
                    connection::serve(context, stream).await;
                    drop(slot);
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a socket connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A user gets at most its share of connections, others are not affected, and a
    /// closed connection gives its place back.
    #[test]
    fn each_user_gets_at_most_its_share_of_connections() {
        let users = Arc::new(PerUser::default());
        let slots: Vec<UserSlot> = (0..CONNECTIONS_PER_USER_MAX)
            .map(|_| users.admit(1000).expect("within the share"))
            .collect();
        assert!(users.admit(1000).is_none());
        let other = users.admit(1001).expect("another user");
        drop(slots);
        assert!(users.admit(1000).is_some());
        drop(other);
        assert!(users.open.lock().is_empty(), "every place given back");
    }

    #[tokio::test]
    async fn a_live_socket_is_refused_and_a_stale_one_replaced() {
        let dir = std::env::temp_dir().join(format!("corral-server-test-{}", std::process::id()));
        let path = dir.join("agent.sock");
        let _ = std::fs::remove_dir_all(&dir);
        let live = bind(&path).expect("a fresh socket binds");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert!(matches!(bind(&path), Err(SocketError::InUse { .. })));
        drop(live);
        // The file is left behind, but nobody listens: it is replaced.
        assert!(path.exists());
        bind(&path).expect("a stale socket is replaced");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
