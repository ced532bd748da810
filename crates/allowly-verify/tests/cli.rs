//! Black-box tests of the `allowly-verify` binary: every committed test vector through the real
//! executable, checking exit status and the `--json` finding codes, plus usage errors.

use std::path::PathBuf;
use std::process::{Command, Output};

use allowly_receipt::cosignature::{self, CosignerKey};
use allowly_receipt::note::{self, NoteVerifier};
use ed25519_dalek::SigningKey;
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

// ---- Witness policy (--witness-key, --witness-quorum) -------------------------------------

/// Witness `i`'s signing key and verifier key (type 0x04).
fn witness(i: u8) -> (SigningKey, String) {
    let sk = SigningKey::from_bytes(&[0x70 + i; 32]);
    let vkey = CosignerKey::new(&format!("witness{i}.test"), sk.verifying_key()).expect("witness key").to_vkey();
    (sk, vkey)
}

/// `checkpoint` with cosignatures by the witnesses `by`.
fn cosigned(checkpoint: &str, by: &[u8]) -> String {
    let text = note::parse_signed_note(checkpoint).expect("signed note").text;
    let lines: String = by
        .iter()
        .map(|&i| {
            cosignature::cosign(&text, &format!("witness{i}.test"), &witness(i).0, 1_767_225_600).expect("cosign")
        })
        .collect();
    if lines.is_empty() {
        return checkpoint.to_owned();
    }
    cosignature::add_cosignatures(checkpoint, &lines).expect("add")
}

/// Runs `allowly-verify --json` and returns (exit status, sorted distinct finding codes).
fn verdict(args: &[&str]) -> (Option<i32>, Vec<String>) {
    let mut full = args.to_vec();
    full.push("--json");
    let out = run(&full);
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&full, &out)));
    let mut codes: Vec<String> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| f["code"].as_str().expect("code").to_owned())
        .collect();
    codes.sort_unstable();
    codes.dedup();
    (out.status.code(), codes)
}

#[test]
fn receipt_witness_quorum() {
    let dir = vectors_dir();
    let keys = dir.join("keys.json");
    let keys = keys.to_str().expect("utf8");
    let mut doc: Value =
        serde_json::from_slice(&std::fs::read(dir.join("valid/receipt-check-allow.json")).expect("read"))
            .expect("json");
    let checkpoint = doc["checkpoint"].as_str().expect("checkpoint").to_owned();
    let tmp = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, cp: String, doc: &mut Value| {
        doc["checkpoint"] = Value::String(cp);
        let p = tmp.path().join(name);
        std::fs::write(&p, serde_json::to_vec(doc).expect("json")).expect("write");
        p.to_str().expect("utf8").to_owned()
    };
    let none = write("none.json", checkpoint.clone(), &mut doc);
    let w12 = write("w12.json", cosigned(&checkpoint, &[1, 2]), &mut doc);
    // Witness 3 cosigned another checkpoint text; its line is moved onto this one.
    let other = checkpoint.replacen("\n", "x\n", 1);
    let bad3 = cosignature::cosign(&other[..other.find("\n\n").expect("text") + 1], "witness3.test", &witness(3).0, 5)
        .expect("cosign");
    let w12_bad3 = write(
        "bad3.json",
        cosignature::add_cosignatures(&cosigned(&checkpoint, &[1, 2]), &bad3).expect("add"),
        &mut doc,
    );
    let (k1, k2, k3) = (witness(1).1, witness(2).1, witness(3).1);
    let ok: (Option<i32>, Vec<String>) = (Some(0), vec![]);
    let gap = (Some(2), vec!["witness_quorum_not_met".to_owned()]);
    // Without a policy, cosignatures are unknown signature lines: ignored.
    for f in [&none, &w12, &w12_bad3] {
        assert_eq!(verdict(&["receipt", f, "--keys", keys]), ok, "{f}");
    }
    let policy = |n: &'static str| -> Vec<&str> {
        vec!["--witness-key", &k1, "--witness-key", &k2, "--witness-key", &k3, "--witness-quorum", n]
    };
    let with = |f: &str, n: &'static str| {
        let mut a = vec!["receipt", f, "--keys", keys];
        a.extend(policy(n));
        verdict(&a)
    };
    assert_eq!(with(&none, "1"), gap);
    assert_eq!(with(&w12, "1"), ok);
    assert_eq!(with(&w12, "2"), ok);
    assert_eq!(with(&w12, "3"), gap);
    // A trusted witness's bad cosignature is an integrity failure, whatever the quorum.
    assert_eq!(with(&w12_bad3, "2"), (Some(1), vec!["witness_cosignature_invalid".to_owned()]));
    // Only witness 3 trusted: the good cosignatures by 1 and 2 do not count.
    let only3 = verdict(&["receipt", &w12, "--keys", keys, "--witness-key", &k3, "--witness-quorum", "1"]);
    assert_eq!(only3, gap);
}

#[test]
fn bundle_witness_quorum_covers_every_checkpoint() {
    let dir = vectors_dir();
    let keys = dir.join("keys.json");
    let keys = keys.to_str().expect("utf8");
    let raw = std::fs::read_to_string(dir.join("valid/bundle-log.jsonl")).expect("read");
    // Every distinct checkpoint note in the bundle (listed or carried by a receipt).
    let mut notes: Vec<String> = Vec::new();
    for line in raw.lines().filter(|l| !l.trim().is_empty()) {
        collect_notes(&serde_json::from_str(line).expect("json line"), &mut notes);
    }
    notes.sort();
    notes.dedup();
    assert!(notes.len() >= 2, "{notes:?}");
    let rewrite = |skip: Option<usize>| {
        let mut out = raw.clone();
        for (i, n) in notes.iter().enumerate() {
            if Some(i) == skip {
                continue;
            }
            let (from, to) =
                (serde_json::to_string(n).expect("json"), serde_json::to_string(&cosigned(n, &[1])).expect("json"));
            assert!(out.contains(&from), "checkpoint not found verbatim in the bundle");
            out = out.replace(&from, &to);
        }
        out
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let all = tmp.path().join("all.jsonl");
    std::fs::write(&all, rewrite(None)).expect("write");
    let one_short = tmp.path().join("short.jsonl");
    std::fs::write(&one_short, rewrite(Some(notes.len() - 1))).expect("write");
    let k1 = witness(1).1;
    let (all, one_short) = (all.to_str().expect("utf8"), one_short.to_str().expect("utf8"));
    let policy = ["--keys", keys, "--witness-key", &k1, "--witness-quorum", "1"];
    let mut a = vec!["bundle", all];
    a.extend(policy);
    assert_eq!(verdict(&a), (Some(0), vec![]));
    let mut b = vec!["bundle", one_short];
    b.extend(policy);
    assert_eq!(verdict(&b), (Some(2), vec!["witness_quorum_not_met".to_owned()]));
    // An independently obtained checkpoint (--checkpoint) is held to the policy too: here the
    // same checkpoint without its cosignature.
    let extra = tmp.path().join("extra.note");
    std::fs::write(&extra, &notes[0]).expect("write");
    let mut c = a.clone();
    c.extend(["--checkpoint", extra.to_str().expect("utf8")]);
    assert_eq!(verdict(&c), (Some(2), vec!["witness_quorum_not_met".to_owned()]));
    // Without the policy the same bundle is valid: behaviour unchanged.
    assert_eq!(verdict(&["bundle", one_short, "--keys", keys]), (Some(0), vec![]));
    // The human report names the policy.
    let out = run(&a);
    assert!(String::from_utf8_lossy(&out.stdout).contains("witness policy: every checkpoint cosigned by 1 of 1"));
}

/// A `--checkpoint` file that is not UTF-8 breaks the signed-note encoding rule: a finding
/// (`checkpoint_malformed`, exit 1), as the other verifiers report it — not unusable input.
#[test]
fn a_checkpoint_file_that_is_not_utf8_is_checkpoint_malformed() {
    let dir = vectors_dir();
    let keys = dir.join("keys.json");
    let bundle = dir.join("valid/bundle-log.jsonl");
    let tmp = tempfile::tempdir().expect("tempdir");
    let note = tmp.path().join("latin1.note");
    std::fs::write(&note, b"allowly.example/ws\n3\n\xff\xfe\n").expect("write");
    let args = ["bundle", bundle.to_str().expect("utf8"), "--keys", keys.to_str().expect("utf8")];
    assert_eq!(verdict(&args), (Some(0), vec![]));
    let mut with = args.to_vec();
    with.extend(["--checkpoint", note.to_str().expect("utf8")]);
    assert_eq!(verdict(&with), (Some(1), vec!["checkpoint_malformed".to_owned()]));
}

fn collect_notes(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.contains("\n\n\u{2014} ") => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| collect_notes(x, out)),
        Value::Object(o) => o.values().for_each(|x| collect_notes(x, out)),
        _ => {}
    }
}

#[test]
fn witness_options_bad_usage_exit_64() {
    let dir = vectors_dir();
    let keys = dir.join("keys.json");
    let keys = keys.to_str().expect("utf8");
    let receipt = dir.join("valid/receipt-check-allow.json");
    let receipt = receipt.to_str().expect("utf8");
    let k1 = witness(1).1;
    // A log (type 0x01) key where a witness key (0x04) belongs.
    let log_key = NoteVerifier::new("witness1.test", witness(1).0.verifying_key()).expect("key").to_vkey();
    let cases: Vec<Vec<&str>> = vec![
        vec!["--witness-key", &k1],                                                // no quorum
        vec!["--witness-quorum", "1"],                                             // no key
        vec!["--witness-key", &k1, "--witness-quorum", "0"],                       // never meaningful
        vec!["--witness-key", &k1, "--witness-quorum", "2"],                       // can never be met
        vec!["--witness-key", &k1, "--witness-key", &k1, "--witness-quorum", "2"], // one witness twice
        vec!["--witness-key", &log_key, "--witness-quorum", "1"],                  // wrong key type
        vec!["--witness-key", "nonsense", "--witness-quorum", "1"],
    ];
    for extra in cases {
        for kind in ["receipt", "bundle"] {
            let file = if kind == "receipt" {
                receipt.to_owned()
            } else {
                dir.join("valid/bundle-log.jsonl").to_str().expect("utf8").to_owned()
            };
            let mut args = vec![kind, file.as_str(), "--keys", keys];
            args.extend(extra.iter().copied());
            let out = run(&args);
            assert_eq!(out.status.code(), Some(64), "{}", describe(&args, &out));
        }
    }
}

/// This package's directory, read when the test runs (cargo sets it): the value compiled in
/// can name another checkout that shared the target directory and built this binary.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
