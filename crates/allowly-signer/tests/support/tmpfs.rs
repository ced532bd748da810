//! A tmpfs the test mounts (the tests run as root; CI too) and unmounts lazily when dropped,
//! whatever happens to the test: a small real volume for full-disk tests.
//!
//! Shared by the signer's and the server's tests (the server's include it by path).

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Mount(PathBuf);

impl Mount {
    /// A tmpfs of `size` (as `mount -o size=` takes it) at `at`, mode 0700.
    pub fn tmpfs(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        Self(at.to_owned())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
