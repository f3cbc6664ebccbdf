//! The agent's Unix socket: where apps on this host connect.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;

use super::connection;
use crate::agent::AgentContext;

/// Most app connections served at once; more wait in the listen backlog.
pub const CONNECTIONS_MAX: usize = 4096;

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
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    Ok(listener)
}

pub async fn run(listener: UnixListener, context: Arc<AgentContext>) {
    let limit = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
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
                let context = context.clone();
                tokio::spawn(async move {
                    connection::serve(context, stream).await;
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
