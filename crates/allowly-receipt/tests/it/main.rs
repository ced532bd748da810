//! The receipt format's integration tests, one binary (each extra test binary is linked again).
//! proptest keeps the seeds of past failures of `<module>.rs` in
//! `tests/proptest-regressions/<module>.txt` (its default next to a directory with a `main.rs`).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod body_view;
mod jcs_proptest;
mod merkle;
mod tamper;
mod vectors;

/// The committed test vectors, `tests/vectors/`, under this package's directory as read when the
/// test runs (cargo sets it): the value compiled in can name another checkout that shared the
/// target directory and built this binary.
pub fn vectors_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), std::path::PathBuf::from)
        .join("tests/vectors")
}
