//! Shared helpers for the black-box tests in this folder.

use std::path::PathBuf;
use std::process::Output;

/// The repository root.
pub fn repo_root() -> PathBuf {
    manifest_dir().join("..")
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

/// This package's directory, read when the test runs (cargo sets it): the value compiled in
/// can name another checkout that shared the target directory and built this binary.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
