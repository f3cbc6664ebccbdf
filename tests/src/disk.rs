//! A small file system of its own (a tmpfs) under a member's data directory, so that a
//! test can fill it up and then give it room again.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted at `path`, unmounted when dropped.
#[derive(Debug)]
pub struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `mib` MiB at `path` (created if missing). Where this process may
    /// not mount file systems (not root), returns `None` after saying so, unless the run is
    /// CI's (`CI=true`), which must run every test and fails instead.
    pub fn mount(path: &Path, mib: u64) -> Option<Self> {
        std::fs::create_dir_all(path).expect("create the mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path)
            .status();
        match status {
            Ok(s) if s.success() => Some(Self {
                path: path.to_path_buf(),
            }),
            other => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "cannot mount a tmpfs at {} ({other:?}); CI runs as root",
                    path.display()
                );
                println!("cannot mount a tmpfs here (not root?): skipping");
                None
            }
        }
    }

    /// Grows (or shrinks) the file system to `mib` MiB, keeping what it holds.
    pub fn resize(&self, mib: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.path)
            .status()
            .expect("run mount");
        assert!(status.success(), "remount {} failed", self.path.display());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
