//! The independent Python and Node verifiers (written from docs/receipt-format.md alone) must
//! reach the labelled verdict and finding codes on every committed vector, and the same verdict
//! as the Rust verifier (the library `allowly-verify` runs) under a witness policy (§7.5), which
//! the vectors cannot carry: its cases are made here by cosigning the vectors' checkpoints with
//! witness keys of the test's own. `scripts/setup.sh` installs the verifiers' dependencies; a
//! missing dependency fails these tests rather than skipping them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use allowly_receipt::cosignature::{self, CosignerKey};
use allowly_receipt::note;
use allowly_receipt::types::KeySet;
use allowly_receipt::verify::{self, Outcome, Semantics, WitnessPolicy};
use allowly_tests::{describe, repo_root, vectors_dir};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};

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

fn python() -> PathBuf {
    let venv = std::env::var_os("ALLOWLY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/allowly/venv"));
    venv.join("bin/python")
}

#[test]
fn python_verifier_agrees_on_every_vector() {
    check(python(), "verify.py");
}

#[test]
fn node_verifier_agrees_on_every_vector() {
    check(PathBuf::from("node"), "verify.mjs");
}

// ---- Witness policy (§7.5: --witness-key VKEY … --witness-quorum N) -----------------------

/// A witness of the test: an Ed25519 key under a name.
struct Witness {
    key: SigningKey,
    name: String,
}

impl Witness {
    fn new(i: u8) -> Self {
        Self { key: SigningKey::from_bytes(&[0x60 + i; 32]), name: format!("w{i}.crosslang.test") }
    }

    /// The same key under another name: one witness, whatever it is called (§7.5).
    fn alias(&self, name: &str) -> Self {
        Self { key: self.key.clone(), name: name.to_owned() }
    }

    /// Its verifier key (type 0x04), as `--witness-key` takes it.
    fn vkey(&self) -> String {
        CosignerKey::new(&self.name, self.key.verifying_key()).expect("witness key").to_vkey()
    }

    /// A valid `cosignature/v1` line on the note text `text`.
    fn cosign(&self, text: &str) -> String {
        cosignature::cosign(text, &self.name, &self.key, 1_767_225_600).expect("cosign")
    }

    /// A line naming this witness (name and key id) whose payload is `payload`, verbatim.
    fn line(&self, payload: &[u8]) -> String {
        let mut blob = cosignature::cosigner_key_id(&self.name, &self.key.verifying_key()).to_vec();
        blob.extend_from_slice(payload);
        format!("\u{2014} {} {}\n", self.name, B64.encode(blob))
    }

    /// A correctly signed cosignature whose timestamp, `time`, may break the 2^63 − 1 bound.
    fn cosign_at(&self, text: &str, time: u64) -> String {
        let sig = self.key.sign(&cosignature::signed_message(text, time));
        self.line(&[&time.to_be_bytes()[..], &sig.to_bytes()].concat())
    }
}

/// `checkpoint` (a signed note) with `lines` appended.
fn with_lines(checkpoint: &str, lines: &[String]) -> String {
    if lines.is_empty() {
        return checkpoint.to_owned();
    }
    cosignature::add_cosignatures(checkpoint, &lines.concat()).expect("add lines")
}

fn text_of(checkpoint: &str) -> String {
    note::parse_signed_note(checkpoint).expect("signed note").text
}

/// Every distinct checkpoint note in a bundle, listed or carried by a receipt.
fn notes_in(bundle: &str) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) if s.contains("\n\n\u{2014} ") => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for line in bundle.lines().filter(|l| !l.trim().is_empty()) {
        walk(&serde_json::from_str(line).expect("bundle line"), &mut out);
    }
    out.sort();
    out.dedup();
    out
}

/// `bundle` with each of its checkpoint notes replaced by `f(note)` wherever it occurs.
fn rewrite_notes(bundle: &str, mut f: impl FnMut(usize, &str) -> String) -> String {
    let mut out = bundle.to_owned();
    for (i, n) in notes_in(bundle).iter().enumerate() {
        let (from, to) = (serde_json::to_string(n).expect("json"), serde_json::to_string(&f(i, n)).expect("json"));
        assert!(out.contains(&from), "checkpoint not found verbatim in the bundle");
        out = out.replace(&from, &to);
    }
    out
}

/// One verification: `receipt FILE` or `bundle FILE`, the vectors' keys, `--checkpoint`s, and
/// a witness policy (keys and quorum as given on a command line).
struct Run<'a> {
    kind: &'static str,
    file: &'a Path,
    extra: &'a [&'a Path],
    witnesses: &'a [&'a Witness],
    quorum: Option<&'a str>,
}

impl Run<'_> {
    fn args(&self) -> Vec<String> {
        let keys = vectors_dir().join("keys.json");
        let mut args = vec![self.kind.to_owned(), path(self.file), "--keys".to_owned(), path(&keys)];
        for p in self.extra {
            args.extend(["--checkpoint".to_owned(), path(p)]);
        }
        for w in self.witnesses {
            args.extend(["--witness-key".to_owned(), w.vkey()]);
        }
        if let Some(n) = self.quorum {
            args.extend(["--witness-quorum".to_owned(), n.to_owned()]);
        }
        args
    }

    /// What `allowly-verify` says: its library with the policy built as its command line
    /// builds it (a key or quorum it refuses is bad usage, exit 64).
    fn rust(&self) -> (Option<i32>, BTreeSet<String>) {
        let policy = match self.quorum {
            None => None,
            Some(n) => {
                let keys: Result<Vec<CosignerKey>, _> =
                    self.witnesses.iter().map(|w| CosignerKey::parse_vkey(&w.vkey())).collect();
                match (keys, n.parse::<usize>()) {
                    (Ok(keys), Ok(n)) => match WitnessPolicy::new(keys, n) {
                        Ok(p) => Some(p),
                        Err(_) => return (Some(64), BTreeSet::new()),
                    },
                    _ => return (Some(64), BTreeSet::new()),
                }
            }
        };
        let keys = KeySet::parse(&std::fs::read(vectors_dir().join("keys.json")).expect("keys")).expect("key set");
        let data = std::fs::read(self.file).expect("read");
        let report = if self.kind == "receipt" {
            verify::verify_receipt_bytes_witnessed(&data, &keys, policy.as_ref())
        } else {
            let extra: Vec<Vec<u8>> = self.extra.iter().map(|p| std::fs::read(p).expect("note")).collect();
            verify::verify_bundle_witnessed(&data, Some(&keys), &extra, Semantics::Default, policy.as_ref())
        };
        let Ok(report) = report else { return (Some(64), BTreeSet::new()) };
        let exit = match report.outcome() {
            Outcome::Valid => 0,
            Outcome::IntegrityFailure => 1,
            Outcome::CoverageGap => 2,
            Outcome::ValidUnpinned => 3,
        };
        (Some(exit), report.findings.iter().map(|f| f.code.as_str().to_owned()).collect())
    }

    /// Node's and Python's verdicts: exit status and the codes of the `code [class]: detail`
    /// lines they print.
    fn independent(&self) -> Vec<(&'static str, Option<i32>, BTreeSet<String>, String)> {
        let args = self.args();
        let dir = repo_root().join("tests/crosslang");
        [("node", PathBuf::from("node"), "verify.mjs"), ("python", python(), "verify.py")]
            .into_iter()
            .map(|(who, program, script)| {
                let out = Command::new(&program)
                    .arg(dir.join(script))
                    .args(&args)
                    .output()
                    .unwrap_or_else(|e| panic!("cannot start {}: {e} (run scripts/setup.sh)", program.display()));
                let stdout = String::from_utf8_lossy(&out.stdout);
                let codes = stdout
                    .lines()
                    .filter(|l| !l.starts_with("note:") && !l.starts_with("outcome:"))
                    .filter_map(|l| l.split([' ', ':']).next())
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect();
                (who, out.status.code(), codes, describe(&format!("{who} {script} {args:?}"), &out))
            })
            .collect()
    }

    /// All three verifiers exit `exit` with exactly the finding codes `codes`.
    fn agree(&self, exit: i32, codes: &[&str]) {
        let want = (Some(exit), codes.iter().map(|c| (*c).to_owned()).collect::<BTreeSet<_>>());
        assert_eq!(self.rust(), want, "allowly-verify (library): {:?}", self.args());
        for (who, exit, codes, output) in self.independent() {
            assert_eq!((exit, codes), want, "{who} disagrees with allowly-verify\n{output}");
        }
    }
}

fn path(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_owned()
}

fn write(dir: &Path, name: &str, data: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write");
    p
}

/// A receipt's checkpoint under a witness policy: quorum met (one key under two names counting
/// once), not met, a cosignature by a policy witness that does not verify (bad signature, wrong
/// length, timestamp above 2^63 − 1; integrity, whatever the quorum; ignored when that witness
/// is not in the policy), a checkpoint that did not open (not judged), and policies that can
/// never be met (bad usage).
#[test]
fn all_three_verifiers_judge_a_receipts_cosignatures_alike() {
    let (w1, w2, w3) = (Witness::new(1), Witness::new(2), Witness::new(3));
    let w1_alias = w1.alias("w1-again.crosslang.test");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vectors_dir().join("valid/receipt-check-allow.json")).expect("read"))
            .expect("json");
    let checkpoint = doc["checkpoint"].as_str().expect("checkpoint").to_owned();
    let text = text_of(&checkpoint);
    let tmp = tempfile::tempdir().expect("tempdir");
    let receipt = |name: &str, lines: &[String]| {
        let mut doc = doc.clone();
        doc["checkpoint"] = serde_json::Value::String(with_lines(&checkpoint, lines));
        write(tmp.path(), name, &doc.to_string())
    };
    let good = [w1.cosign(&text), w2.cosign(&text)];
    let flipped = {
        let mut sig = w1.key.sign(&cosignature::signed_message(&text, 7)).to_bytes();
        sig[5] ^= 1;
        w1.line(&[&7_u64.to_be_bytes()[..], &sig].concat())
    };
    let none = receipt("none.json", &[]);
    let both = receipt("both.json", &good);
    let twice = receipt("one-key-two-names.json", &[w1.cosign(&text), w1_alias.cosign(&text)]);
    // Witness 3 cosigned another text; its line is moved onto this checkpoint.
    let moved = receipt("moved.json", &[good[0].clone(), good[1].clone(), w3.cosign(&text.replacen('\n', "x\n", 1))]);
    let bad_sig = receipt("flipped.json", &[flipped, good[1].clone()]);
    let short = receipt("short.json", &[w1.line(&[0; 71]), good[1].clone()]);
    let late = receipt("late.json", &[w1.cosign_at(&text, 1 << 63), good[1].clone()]);
    let max_time = receipt("max-time.json", &[w1.cosign_at(&text, (1 << 63) - 1)]);
    // The workspace's signature no longer verifies: the checkpoint does not open, so the
    // policy does not judge it (its one finding is the signature's).
    let unopened = {
        let mut doc = doc.clone();
        let cosigned = with_lines(&checkpoint, &good);
        doc["checkpoint"] = serde_json::Value::String(cosigned.replacen("\ntime ", "\ntime 1", 1));
        write(tmp.path(), "unopened.json", &doc.to_string())
    };

    let run = |file: &Path, witnesses: &[&Witness], quorum: Option<&str>, exit: i32, codes: &[&str]| {
        Run { kind: "receipt", file, extra: &[], witnesses, quorum }.agree(exit, codes);
    };
    const GAP: &[&str] = &["witness_quorum_not_met"];
    const BAD: &[&str] = &["witness_cosignature_invalid"];
    // Without a policy, cosignatures (good or bad) are signature lines by unknown keys.
    for f in [&none, &both, &moved, &bad_sig, &short, &late] {
        run(f, &[], None, 0, &[]);
    }
    run(&none, &[&w1, &w2], Some("1"), 2, GAP);
    run(&both, &[&w1, &w2], Some("2"), 0, &[]);
    run(&both, &[&w1, &w2, &w3], Some("2"), 0, &[]);
    run(&both, &[&w1, &w2, &w3], Some("3"), 2, GAP);
    run(&both, &[&w3], Some("1"), 2, GAP);
    run(&max_time, &[&w1], Some("1"), 0, &[]);
    // One key under two names is one witness.
    run(&twice, &[&w1, &w1_alias], Some("1"), 0, &[]);
    run(&twice, &[&w1, &w1_alias, &w2], Some("2"), 2, GAP);
    // A policy witness's line that does not verify: integrity, even with the quorum met.
    run(&moved, &[&w1, &w2, &w3], Some("2"), 1, BAD);
    run(&moved, &[&w1, &w2], Some("2"), 0, &[]);
    for f in [&bad_sig, &short, &late] {
        run(f, &[&w1, &w2], Some("1"), 1, BAD);
        run(f, &[&w2], Some("1"), 0, &[]);
    }
    run(&unopened, &[&w1, &w2], Some("2"), 1, &["checkpoint_signature_invalid"]);
    // Policies no set of cosignatures could meet, and keys that are not witness keys.
    run(&both, &[&w1, &w2], Some("3"), 64, &[]);
    run(&both, &[&w1, &w2], Some("0"), 64, &[]);
    run(&both, &[&w1, &w1_alias], Some("2"), 64, &[]);
    run(&both, &[&w1, &w2], Some("two"), 64, &[]);
    // A workspace (type 0x01) key where a witness key belongs, and a key id that is not the
    // name's: bad usage in every verifier (allowly-verify's own tests cover the rest of its
    // command line, e.g. a key without a quorum).
    let log_key = note::NoteVerifier::new(&w1.name, w1.key.verifying_key()).expect("key").to_vkey();
    let wrong_id = w1.vkey().replacen(&w1.name, "w9.crosslang.test", 1);
    for vkey in [log_key, wrong_id] {
        let args = |extra: &[&str]| {
            let mut a = vec!["receipt".to_owned(), path(&both), "--keys".to_owned()];
            a.push(path(&vectors_dir().join("keys.json")));
            a.extend(extra.iter().map(|s| (*s).to_owned()));
            a
        };
        assert!(CosignerKey::parse_vkey(&vkey).is_err(), "{vkey}");
        for extra in [
            vec!["--witness-key", &vkey, "--witness-quorum", "1"],
            vec!["--witness-key", &vkey],
            vec!["--witness-quorum", "1"],
        ] {
            for (program, script) in [(PathBuf::from("node"), "verify.mjs"), (python(), "verify.py")] {
                let out = Command::new(&program)
                    .arg(repo_root().join("tests/crosslang").join(script))
                    .args(args(&extra))
                    .output()
                    .expect("run");
                assert_eq!(out.status.code(), Some(64), "{}", describe(&format!("{script} {extra:?}"), &out));
            }
        }
    }
}

/// A bundle under a witness policy: every checkpoint it lists or its receipts carry, and every
/// `--checkpoint`, must meet the quorum; one without it is a coverage gap, one bad cosignature
/// anywhere an integrity failure.
#[test]
fn all_three_verifiers_judge_every_checkpoint_of_a_bundle_alike() {
    let (w1, w2) = (Witness::new(1), Witness::new(2));
    let raw = std::fs::read_to_string(vectors_dir().join("valid/bundle-log.jsonl")).expect("read");
    let notes = notes_in(&raw);
    assert!(notes.len() >= 2, "{notes:?}");
    let tmp = tempfile::tempdir().expect("tempdir");
    let all = write(
        tmp.path(),
        "all.jsonl",
        &rewrite_notes(&raw, |_, n| with_lines(n, &[w1.cosign(&text_of(n)), w2.cosign(&text_of(n))])),
    );
    let last = notes.len() - 1;
    let one_short = write(
        tmp.path(),
        "short.jsonl",
        &rewrite_notes(&raw, |i, n| if i == last { n.to_owned() } else { with_lines(n, &[w1.cosign(&text_of(n))]) }),
    );
    let one_bad = write(
        tmp.path(),
        "bad.jsonl",
        &rewrite_notes(&raw, |i, n| {
            let text = text_of(n);
            let w2_line = if i == 0 { w2.cosign(&text.replacen('\n', "x\n", 1)) } else { w2.cosign(&text) };
            with_lines(n, &[w1.cosign(&text), w2_line])
        }),
    );
    // The same checkpoint obtained elsewhere, without cosignatures.
    let plain = write(tmp.path(), "plain.note", &notes[0]);
    let cosigned = write(tmp.path(), "cosigned.note", &with_lines(&notes[0], &[w1.cosign(&text_of(&notes[0]))]));

    let run =
        |file: &Path, extra: &[&Path], witnesses: &[&Witness], quorum: Option<&str>, exit: i32, codes: &[&str]| {
            Run { kind: "bundle", file, extra, witnesses, quorum }.agree(exit, codes);
        };
    for f in [&all, &one_short, &one_bad] {
        run(f, &[], &[], None, 0, &[]);
    }
    run(&all, &[], &[&w1, &w2], Some("2"), 0, &[]);
    run(&all, &[&cosigned], &[&w1, &w2], Some("1"), 0, &[]);
    run(&all, &[&plain], &[&w1, &w2], Some("1"), 2, &["witness_quorum_not_met"]);
    run(&one_short, &[], &[&w1], Some("1"), 2, &["witness_quorum_not_met"]);
    run(&one_short, &[], &[&w1, &w2], Some("2"), 2, &["witness_quorum_not_met"]);
    run(&one_bad, &[], &[&w1, &w2], Some("1"), 1, &["witness_cosignature_invalid"]);
    run(&one_bad, &[], &[&w1], Some("1"), 0, &[]);
    run(&all, &[], &[&w1, &w2], Some("3"), 64, &[]);
}
