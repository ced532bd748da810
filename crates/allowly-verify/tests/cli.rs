//! Black-box tests of the `allowly-verify` binary: every committed test vector through the real
//! executable, checking exit status and the `--json` finding codes, plus usage errors.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn vectors_dir() -> PathBuf {
    manifest_dir().join("../allowly-receipt/tests/vectors")
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_allowly-verify")).args(args).output().expect("start allowly-verify");
    out
}

fn describe(args: &[&str], out: &Output) -> String {
    format!(
        "allowly-verify {}\nstatus: {:?}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn every_vector_gets_its_exit_status_and_codes() {
    let dir = vectors_dir();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest")).expect("json");
    let vectors = manifest["vectors"].as_array().expect("vectors");
    assert!(vectors.len() > 20, "expected the full vector set");
    for v in vectors {
        let file = dir.join(v["file"].as_str().expect("file"));
        let file = file.to_str().expect("utf8 path").to_owned();
        let keys = v["keys"].as_str().map(|k| dir.join(k).to_str().expect("utf8").to_owned());
        let mut args = vec![v["kind"].as_str().expect("kind"), file.as_str(), "--json"];
        if let Some(k) = &keys {
            args.extend(["--keys", k.as_str()]);
        }
        match v.get("semantics").and_then(Value::as_bool) {
            Some(true) => args.push("--semantics"),
            Some(false) => args.push("--no-semantics"),
            None => {}
        }
        let out = run(&args);
        let want_status = match v["outcome"].as_str().expect("outcome") {
            "valid" => 0,
            "integrity_failure" => 1,
            "coverage_gap" => 2,
            "valid_unpinned" => 3,
            "unusable" => 64,
            other => panic!("unknown outcome {other}"),
        };
        assert_eq!(out.status.code(), Some(want_status), "{}", describe(&args, &out));
        if want_status == 64 {
            assert!(out.stdout.is_empty() && !out.stderr.is_empty(), "{}", describe(&args, &out));
            continue;
        }
        let report: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&args, &out)));
        let mut got: Vec<&str> = report["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .map(|f| f["code"].as_str().expect("code"))
            .collect();
        got.sort_unstable();
        got.dedup();
        let mut want: Vec<&str> =
            v["codes"].as_array().expect("codes").iter().map(|c| c.as_str().expect("code")).collect();
        want.sort_unstable();
        assert_eq!(got, want, "{}", describe(&args, &out));
        assert_eq!(report["outcome"], v["outcome"], "{}", describe(&args, &out));
    }
}

#[test]
fn human_output_names_the_result() {
    let dir = vectors_dir();
    let keys = dir.join("keys.json");
    let ok = dir.join("valid/bundle-authorization.jsonl");
    let args = ["bundle", ok.to_str().expect("utf8"), "--keys", keys.to_str().expect("utf8")];
    let out = run(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("result: VALID"), "{}", describe(&args, &out));

    let bad = dir.join("invalid/bundle-edited-receipt.jsonl");
    let args = ["bundle", bad.to_str().expect("utf8"), "--keys", keys.to_str().expect("utf8")];
    let out = run(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("chain_broken") && text.contains("result: INTEGRITY FAILURE"), "{}", describe(&args, &out));

    // Without --keys the bundle vouches for itself: an auditor skimming the output must not read
    // a bare "VALID", and a script must not see exit 0.
    let args = ["bundle", ok.to_str().expect("utf8")];
    let out = run(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.code() == Some(3) && text.contains("result: VALID (UNPINNED)"), "{}", describe(&args, &out));
    let args = ["bundle", ok.to_str().expect("utf8"), "--json"];
    let out = run(&args);
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&args, &out)));
    assert!(report["outcome"] == "valid_unpinned" && report["pinned"] == false, "{}", describe(&args, &out));
}

/// Semantic verification (§7.4): on by default for a log export, off with --no-semantics, on
/// for an authorization export only with --semantics; `--json` says how many decisions it
/// judged (`null` when it did not run).
#[test]
fn semantics_flags() {
    let dir = vectors_dir();
    let keys = dir.join("keys-semantics.json");
    let keys = keys.to_str().expect("utf8");
    let json = |args: &[&str], status: i32| -> Value {
        let out = run(args);
        assert_eq!(out.status.code(), Some(status), "{}", describe(args, &out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(args, &out)))
    };
    let log = dir.join("invalid/bundle-semantics-allow-not-granted.jsonl");
    let log = log.to_str().expect("utf8");
    let r = json(&["bundle", log, "--keys", keys, "--json"], 1);
    assert_eq!(r["findings"][0]["code"], "decision_unjustified", "{r:#}");
    assert!(r["findings"][0]["subject"].as_str().is_some_and(|s| s.contains("log index 8")), "{r:#}");
    assert!(r["findings"][0]["detail"].as_str().is_some_and(|s| s.contains("scope_not_granted")), "{r:#}");
    assert_eq!(r["decisions_checked"], 7, "{r:#}");
    let r = json(&["bundle", log, "--keys", keys, "--json", "--no-semantics"], 0);
    assert!(r["findings"].as_array().is_some_and(Vec::is_empty) && r["decisions_checked"].is_null(), "{r:#}");

    let auth = dir.join("invalid/bundle-semantics-authorization-export.jsonl");
    let auth = auth.to_str().expect("utf8");
    let r = json(&["bundle", auth, "--keys", keys, "--json"], 0);
    assert!(r["decisions_checked"].is_null(), "{r:#}");
    let r = json(&["bundle", auth, "--keys", keys, "--json", "--semantics"], 1);
    assert_eq!(r["findings"][0]["code"], "decision_unjustified", "{r:#}");

    let both = ["bundle", log, "--semantics", "--no-semantics"];
    assert_eq!(run(&both).status.code(), Some(64), "{}", describe(&both, &run(&both)));
}

/// The verifier an auditor builds must not link the server: no RocksDB, no tokio, no engine,
/// only the format crate and the pure decision function (`allowly-decide`).
#[test]
fn links_nothing_of_the_server() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let args = ["tree", "--locked", "--offline", "--edges", "normal", "--prefix", "none", "--format", "{p}", "-p"];
    let out = Command::new(cargo).args(args).arg("allowly-verify").current_dir(manifest_dir()).output().expect("cargo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cargo tree: {}", String::from_utf8_lossy(&out.stderr));
    let deps: Vec<&str> = stdout.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(deps.contains(&"allowly-decide") && deps.contains(&"allowly-receipt"), "{deps:?}");
    for forbidden in ["tokio", "rocksdb", "librocksdb-sys", "allowly-engine", "allowly-store", "hyper"] {
        assert!(!deps.contains(&forbidden), "allowly-verify depends on {forbidden}: {deps:?}");
    }
}

#[test]
fn bad_usage_and_unreadable_input_exit_64() {
    let dir = vectors_dir();
    let keys = dir.join("keys.json");
    let keys = keys.to_str().expect("utf8");
    let receipt = dir.join("valid/receipt-check-allow.json");
    let receipt = receipt.to_str().expect("utf8");
    let not_json = dir.join("manifest.json");
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["frobnicate"],
        vec!["receipt", receipt], // --keys is required
        vec!["receipt", "/nonexistent/file", "--keys", keys],
        vec!["receipt", receipt, "--keys", receipt], // not a key set
        vec!["receipt", keys, "--keys", keys],       // not a receipt
        vec!["bundle", receipt],                     // not a bundle
        vec!["bundle", not_json.to_str().expect("utf8")],
    ];
    for args in cases {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(64), "{}", describe(&args, &out));
    }
    let out = run(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && help.contains("Exit status") && help.contains("3 valid (unpinned)"), "{help}");
}

/// This package's directory, read when the test runs (cargo sets it): the value compiled in
/// can name another checkout that shared the target directory and built this binary.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
