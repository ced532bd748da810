//! The independent Python and Node verifiers (written from docs/receipt-format.md alone) must
//! reach the labelled verdict and finding codes on every committed vector. `scripts/setup.sh`
//! installs their dependencies; a missing dependency fails this test rather than skipping it.

use std::path::PathBuf;
use std::process::Command;

use allowly_tests::{describe, repo_root, vectors_dir};

fn check(program: PathBuf, script: &str) {
    let manifest = vectors_dir().join("manifest.json");
    let script = repo_root().join("tests/crosslang").join(script);
    let what = format!("{} {} vectors {}", program.display(), script.display(), manifest.display());
    let out = Command::new(&program)
        .arg(&script)
        .arg("vectors")
        .arg(&manifest)
        .output()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e} (run scripts/setup.sh)"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default().to_owned();
    let passed: usize = last.split(" passed").next().and_then(|n| n.trim().parse().ok()).unwrap_or(0);
    assert!(out.status.success() && last.ends_with(" 0 failed") && passed > 20, "{}", describe(&what, &out));
}

#[test]
fn python_verifier_agrees_on_every_vector() {
    let venv = std::env::var_os("ALLOWLY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/allowly/venv"));
    check(venv.join("bin/python"), "verify.py");
}

#[test]
fn node_verifier_agrees_on_every_vector() {
    check(PathBuf::from("node"), "verify.mjs");
}
