//! The Python SDK (`clients/python`, package `allowly`) against the real `allowly` binary: its
//! pytest suite runs with the project venv (`scripts/setup.sh` installs its dependencies), on a
//! workspace made here, and must pass; then its wheel must build.

use std::process::Command;

use crate::support::*;
use serde_json::json;

#[test]
fn python_sdk_tests_pass_against_the_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    s.wait_ready();
    let c = s.client();
    let root = s.admin_token();
    let rules = json!({ "email.send": "confirm", "payments.*": "escalate" });
    let ws =
        c.post("/v1/workspaces", &root, json!({ "name": "python-sdk", "scope_rules": rules })).created("workspace");
    let ws = ws["id"].as_str().unwrap().to_owned();
    let key = |role: &str| {
        let v = c.post(&format!("/v1/workspaces/{ws}/api-keys"), &root, json!({ "roles": [role] })).created("key");
        v["secret"].as_str().unwrap().to_owned()
    };
    let sdk = repo_root().join("clients/python");
    let mut cmd = Command::new(venv_bin("python"));
    cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(&sdk)
        .env("PYTHONPATH", sdk.join("src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("ALLOWLY_TEST_URL", format!("http://{}", s.addr))
        .env("ALLOWLY_TEST_WORKSPACE", &ws)
        .env("ALLOWLY_TEST_ADMIN_KEY", key("admin"))
        .env("ALLOWLY_TEST_READ_KEY", key("read"))
        .env("ALLOWLY_TEST_CHECK_KEY", key("check"));
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run pytest: {e} (run scripts/setup.sh)"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(" passed") && !stdout.contains("skipped"),
        "{}\n{}",
        describe_output(&format!("{cmd:?}"), &out),
        s.diagnostics()
    );
}

#[test]
fn python_sdk_builds_a_wheel() {
    let out_dir = tempfile::tempdir().unwrap();
    // Built from a copy: setuptools writes `build/` and `*.egg-info` next to the sources.
    let src = tempfile::tempdir().unwrap();
    let sdk = src.path().join("python");
    copy_tree(&repo_root().join("clients/python"), &sdk);
    let mut cmd = Command::new(venv_bin("python"));
    // No build isolation: the venv's setuptools builds it, so this works without the network.
    cmd.args(["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check", "-q", "-w"])
        .arg(out_dir.path())
        .arg(&sdk)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run pip: {e}"));
    assert!(out.status.success(), "{}", describe_output(&format!("{cmd:?}"), &out));
    let wheels: Vec<_> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("allowly-0.1.0-") && n.ends_with(".whl"))
        .collect();
    assert_eq!(wheels.len(), 1, "{wheels:?}");
    // The wheel holds the package, its offline verifier and its type marker.
    let listing = Command::new(venv_bin("python"))
        .args(["-m", "zipfile", "-l"])
        .arg(out_dir.path().join(&wheels[0]))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for f in ["allowly/client.py", "allowly/verify.py", "allowly/errors.py", "allowly/py.typed"] {
        assert!(listing.contains(f), "{f} missing from the wheel:\n{listing}");
    }
}

/// Copies a directory tree (files and folders; `__pycache__` left out).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            if e.file_name() != "__pycache__" {
                copy_tree(&src, &dst);
            }
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}
