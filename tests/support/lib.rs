//! Shared helpers for the black-box tests in this folder.

use std::path::{Path, PathBuf};
use std::process::Output;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The committed receipt test vectors.
pub fn vectors_dir() -> PathBuf {
    repo_root().join("crates/allowly-receipt/tests/vectors")
}

/// Everything useful about a finished command, for assertion messages.
pub fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}\nstatus: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
