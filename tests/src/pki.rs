//! A throwaway certificate authority made with `corral ca`, as an operator would.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::corral_binary;

#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// Creates a CA in `dir` and issues a certificate for each name.
    pub fn new(dir: &Path, names: &[&str]) -> Self {
        run(&["ca", "init", "--dir", &dir.display().to_string()]);
        let pki = Self {
            dir: dir.to_path_buf(),
        };
        for name in names {
            pki.issue(name);
        }
        pki
    }

    pub fn issue(&self, name: &str) {
        run(&[
            "ca",
            "issue",
            "--dir",
            &self.dir.display().to_string(),
            "--name",
            name,
        ]);
    }
}

fn run(args: &[&str]) {
    let output = Command::new(corral_binary())
        .args(args)
        .output()
        .expect("run corral ca");
    assert!(
        output.status.success(),
        "corral {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
