//! Black-box tests of the `allowly-witness` binary: the real process on loopback, spoken to over
//! plain HTTP/1.1 from the test, a log simulated here with the receipt crate's Merkle and note
//! code. Every failure prints the witness's stderr.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};

use allowly_receipt::cosignature::{self, CosignerKey};
use allowly_receipt::merkle::{self, Hash, LeafList};
use allowly_receipt::note::{self, Checkpoint, NoteVerifier};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::SigningKey;

const ORIGIN: &str = "allowly/ws_witness_test";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_allowly-witness")
}

/// A witness directory with a key, and the config naming `logs`.
struct Setup {
    tmp: tempfile::TempDir,
    vkey: CosignerKey,
}

impl Setup {
    fn new(logs: &[&Log]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let out = Command::new(bin())
            .args(["init", "--dir"])
            .arg(tmp.path().join("w"))
            .args(["--name", "witness.test/w1"])
            .output()
            .expect("run init");
        assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
        let vkey = CosignerKey::parse_vkey(String::from_utf8_lossy(&out.stdout).trim()).expect("init prints a vkey");
        let mut config = String::new();
        for l in logs {
            config.push_str(&format!("[[log]]\norigin = \"{}\"\nvkeys = [\"{}\"]\n", l.origin, l.verifier.to_vkey()));
        }
        std::fs::write(tmp.path().join("logs.toml"), config).expect("write config");
        Self { tmp, vkey }
    }

    fn dir(&self) -> PathBuf {
        self.tmp.path().join("w")
    }

    fn start(&self) -> Witness {
        let stderr = self.tmp.path().join(format!("stderr-{}", std::process::id()));
        let mut child = Command::new(bin())
            .arg("serve")
            .arg("--dir")
            .arg(self.dir())
            .args(["--listen", "127.0.0.1:0", "--config"])
            .arg(self.tmp.path().join("logs.toml"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start witness");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read stdout");
        let addr = line.trim().strip_prefix("allowly-witness listening on ").map(|a| a.parse().expect("address"));
        let Some(addr) = addr else {
            let _ = child.kill();
            panic!("witness did not start: {line:?}\n{}", std::fs::read_to_string(&stderr).unwrap_or_default());
        };
        Witness { child, addr, stderr }
    }
}

/// A running witness; killed with SIGKILL when dropped.
struct Witness {
    child: Child,
    addr: SocketAddr,
    stderr: PathBuf,
}

impl Drop for Witness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

impl Witness {
    /// `kill -9`: no chance to flush anything.
    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn post(&self, body: &[u8]) -> Answer {
        post(self.addr, "/add-checkpoint", body)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

fn post(addr: SocketAddr, path: &str, body: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).expect("connect");
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: w\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).expect("write head");
    // A body the server refuses early may not be read to its end; that is fine.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read answer");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP answer");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status");
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_owned))
        .unwrap_or_default();
    Answer { status, content_type, body: body.to_owned() }
}

/// A simulated log: leaves, a key, checkpoints and consistency proofs.
struct Log {
    origin: String,
    key: SigningKey,
    verifier: NoteVerifier,
    leaves: Vec<Hash>,
}

impl Log {
    fn new(origin: &str, seed: u8) -> Self {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let verifier = NoteVerifier::new(origin, key.verifying_key()).expect("verifier");
        Self { origin: origin.to_owned(), key, verifier, leaves: Vec::new() }
    }

    /// The same log with leaves from `at` on replaced by the branch `tag`: a fork.
    fn fork(&self, at: usize) -> Self {
        let mut f = Log::new(&self.origin, 0);
        f.key = self.key.clone();
        f.verifier = self.verifier.clone();
        f.leaves = self.leaves[..at].to_vec();
        f
    }

    fn grow_to(&mut self, size: usize, tag: &str) {
        while self.leaves.len() < size {
            self.leaves.push(merkle::leaf_hash(format!("{tag} {}", self.leaves.len()).as_bytes()));
        }
    }

    fn root(&self, size: u64) -> Hash {
        merkle::root_from(&LeafList(self.leaves.clone()), size).expect("root")
    }

    fn text(&self, size: u64) -> String {
        Checkpoint {
            origin: self.origin.clone(),
            size,
            root: self.root(size),
            extensions: vec!["time 2026-12-06T00:00:00.000Z".into()],
        }
        .to_text()
        .expect("checkpoint text")
    }

    fn checkpoint(&self, size: u64) -> String {
        note::sign_note(&self.text(size), &self.origin, &self.key).expect("sign")
    }

    fn proof(&self, old: u64, new: u64) -> Vec<Hash> {
        if old == 0 || old == new {
            return Vec::new();
        }
        merkle::consistency_proof(&LeafList(self.leaves.clone()), old, new).expect("proof")
    }

    /// The add-checkpoint body from `old` to `new`.
    fn request(&self, old: u64, new: u64) -> Vec<u8> {
        request(old, &self.proof(old, new), &self.checkpoint(new))
    }
}

fn request(old: u64, proof: &[Hash], checkpoint: &str) -> Vec<u8> {
    let mut b = format!("old {old}\n");
    for h in proof {
        b.push_str(&B64.encode(h));
        b.push('\n');
    }
    b.push('\n');
    b.push_str(checkpoint);
    b.into_bytes()
}

fn expect(w: &Witness, a: &Answer, status: u16, what: &str) {
    assert_eq!(a.status, status, "{what}: {a:?}\nwitness stderr:\n{}", w.logs());
}

/// A 200 answer must be a valid cosignature by the witness on exactly that checkpoint.
fn expect_cosigned(w: &Witness, s: &Setup, log: &Log, size: u64, a: &Answer) {
    expect(w, a, 200, &format!("cosign size {size}"));
    let note = cosignature::add_cosignatures(&log.checkpoint(size), &a.body).expect("answer is signature lines");
    let ws = [s.vkey.clone()];
    let v = cosignature::check_witness_quorum(&note, &log.origin, std::slice::from_ref(&log.verifier), &ws, 1)
        .expect("cosignature verifies");
    assert!(v.met(), "{a:?}");
}

/// The head the witness holds, learnt the way a client learns it: `old 0` answers 409 with it.
fn recorded_size(w: &Witness, log: &Log) -> u64 {
    // Only called once something was cosigned, so `old 0` cannot succeed.
    let a = w.post(&log.request(0, log.leaves.len() as u64));
    expect(w, &a, 409, "probe with old 0");
    a.body.trim().parse().expect("size body")
}

#[test]
fn cosigns_a_growing_sequence() {
    let mut log = Log::new(ORIGIN, 1);
    let s = Setup::new(&[&log]);
    let w = s.start();
    log.grow_to(40, "main");
    let mut old = 0;
    for size in [1u64, 3, 3, 8, 9, 16, 17, 40] {
        expect_cosigned(&w, &s, &log, size, &w.post(&log.request(old, size)));
        old = size;
    }
    assert_eq!(recorded_size(&w, &log), 40);
    // The metrics count them.
    let m = {
        let mut st = TcpStream::connect(w.addr).expect("connect");
        st.write_all(b"GET /metrics HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n").expect("write");
        let mut out = String::new();
        st.read_to_string(&mut out).expect("read");
        out
    };
    assert!(m.contains("allowly_witness_requests_total{outcome=\"cosigned\"} 8"), "{m}");
}

#[test]
fn stale_old_size_is_409_with_the_recorded_size() {
    let mut log = Log::new(ORIGIN, 2);
    let s = Setup::new(&[&log]);
    let w = s.start();
    log.grow_to(12, "main");
    expect_cosigned(&w, &s, &log, 5, &w.post(&log.request(0, 5)));
    for old in [0u64, 3, 4, 6] {
        let a = w.post(&log.request(old, 12));
        expect(&w, &a, 409, &format!("old {old}"));
        assert_eq!((a.content_type.as_str(), a.body.as_str()), ("text/x.tlog.size", "5\n"));
    }
    expect_cosigned(&w, &s, &log, 12, &w.post(&log.request(5, 12)));
}

#[test]
fn refuses_a_fork_at_the_same_size_and_a_smaller_tree() {
    let mut log = Log::new(ORIGIN, 3);
    let s = Setup::new(&[&log]);
    let w = s.start();
    log.grow_to(10, "main");
    expect_cosigned(&w, &s, &log, 8, &w.post(&log.request(0, 8)));
    let mut fork = log.fork(6);
    fork.grow_to(10, "fork");
    // Same size, another root.
    let a = w.post(&fork.request(8, 8));
    expect(&w, &a, 409, "fork at the recorded size");
    // A smaller tree: old above the checkpoint's size is a bad request, and from its own size a
    // conflict; either way no cosignature.
    expect(&w, &w.post(&request(8, &[], &log.checkpoint(6))), 400, "smaller tree, old = recorded");
    expect(&w, &w.post(&log.request(6, 6)), 409, "smaller tree, old = its size");
    // A bigger fork from the recorded head cannot have a valid proof (checked in the 422 test);
    // the head is still 8 and the honest log continues.
    assert_eq!(recorded_size(&w, &log), 8);
    expect_cosigned(&w, &s, &log, 10, &w.post(&log.request(8, 10)));
    // Re-submitting the recorded checkpoint itself is fine (same root).
    expect_cosigned(&w, &s, &log, 10, &w.post(&log.request(10, 10)));
}

#[test]
fn wrong_consistency_proof_is_422() {
    let mut log = Log::new(ORIGIN, 4);
    let s = Setup::new(&[&log]);
    let w = s.start();
    log.grow_to(20, "main");
    expect_cosigned(&w, &s, &log, 7, &w.post(&log.request(0, 7)));
    // A fork that extends a different size-7 tree, with its own (valid for it) proof.
    let mut fork = log.fork(5);
    fork.grow_to(20, "fork");
    expect(&w, &w.post(&fork.request(7, 20)), 422, "fork with its own proof");
    // The honest checkpoint with a tampered proof, a truncated one, and none.
    let mut p = log.proof(7, 20);
    p[0][0] ^= 1;
    expect(&w, &w.post(&request(7, &p, &log.checkpoint(20))), 422, "tampered proof");
    let p = log.proof(7, 20);
    expect(&w, &w.post(&request(7, &p[1..], &log.checkpoint(20))), 422, "short proof");
    expect(&w, &w.post(&request(7, &[], &log.checkpoint(20))), 422, "no proof");
    assert_eq!(recorded_size(&w, &log), 7);
    expect_cosigned(&w, &s, &log, 20, &w.post(&log.request(7, 20)));
}

#[test]
fn unknown_origin_is_404_and_bad_log_signature_is_403() {
    let mut log = Log::new(ORIGIN, 5);
    let s = Setup::new(&[&log]);
    let w = s.start();
    log.grow_to(4, "main");
    let mut other = Log::new("allowly/ws_other", 6);
    other.grow_to(4, "x");
    expect(&w, &w.post(&other.request(0, 4)), 404, "unknown origin");
    // Right origin, signed by a key the witness does not trust for it.
    let mut impostor = Log::new(ORIGIN, 7);
    impostor.grow_to(4, "main");
    expect(&w, &w.post(&impostor.request(0, 4)), 403, "unknown key");
    // Right key, tampered text.
    let tampered = log.checkpoint(4).replacen("\n4\n", "\n3\n", 1);
    expect(&w, &w.post(&request(0, &[], &tampered)), 403, "tampered checkpoint");
    // None of those moved the head.
    expect_cosigned(&w, &s, &log, 4, &w.post(&log.request(0, 4)));
}

#[test]
fn malformed_and_oversized_requests_are_refused() {
    let mut log = Log::new(ORIGIN, 8);
    let s = Setup::new(&[&log]);
    let w = s.start();
    log.grow_to(4, "main");
    for bad in [&b"old 1\n"[..], b"", b"old 01\n\nx", b"old 0\nnope\n\nx"] {
        expect(&w, &w.post(bad), 400, &String::from_utf8_lossy(bad));
    }
    let huge = vec![b'a'; allowly_witness::http::MAX_BODY + 1];
    expect(&w, &w.post(&huge), 413, "oversized body");
    expect(&w, &post(w.addr, "/nope", b""), 404, "unknown route");
    expect_cosigned(&w, &s, &log, 4, &w.post(&log.request(0, 4)));
}

#[test]
fn state_survives_kill_9() {
    let mut log = Log::new(ORIGIN, 9);
    let s = Setup::new(&[&log]);
    log.grow_to(30, "main");
    let w = s.start();
    expect_cosigned(&w, &s, &log, 11, &w.post(&log.request(0, 11)));
    w.kill9();
    let w = s.start();
    // The restarted witness remembers 11: a fork of that size, and starting over from 0, are
    // refused.
    let mut fork = log.fork(9);
    fork.grow_to(30, "fork");
    expect(&w, &w.post(&fork.request(11, 11)), 409, "fork at 11 after restart");
    let a = w.post(&fork.request(0, 30));
    expect(&w, &a, 409, "fork from scratch after restart");
    assert_eq!(a.body, "11\n");
    expect_cosigned(&w, &s, &log, 30, &w.post(&log.request(11, 30)));
    w.kill9();
    let w = s.start();
    assert_eq!(recorded_size(&w, &log), 30);
}

#[test]
fn racing_forks_from_one_head_yield_exactly_one_cosignature() {
    const RACERS: usize = 8;
    let mut log = Log::new(ORIGIN, 10);
    let s = Setup::new(&[&log]);
    let w = s.start();
    log.grow_to(5, "main");
    expect_cosigned(&w, &s, &log, 5, &w.post(&log.request(0, 5)));
    let mut head = 5usize;
    for round in 0..5 {
        // RACERS different extensions of the recorded head, each with a valid proof from it.
        let bodies: Vec<Vec<u8>> = (0..RACERS)
            .map(|i| {
                let mut f = log.fork(head);
                f.grow_to(head + 3, &format!("r{round}b{i}"));
                f.request(head as u64, head as u64 + 3)
            })
            .collect();
        let barrier = Arc::new(Barrier::new(RACERS));
        let addr = w.addr;
        let answers: Vec<Answer> = std::thread::scope(|sc| {
            let hs: Vec<_> = bodies
                .iter()
                .map(|b| {
                    let barrier = Arc::clone(&barrier);
                    sc.spawn(move || {
                        barrier.wait();
                        post(addr, "/add-checkpoint", b)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("racer")).collect()
        });
        let winners: Vec<usize> = (0..RACERS).filter(|&i| answers[i].status == 200).collect();
        assert_eq!(winners.len(), 1, "round {round}: {answers:?}\n{}", w.logs());
        assert!(answers.iter().all(|a| a.status == 200 || a.status == 409), "{answers:?}");
        // The honest log continues from the winner's branch.
        let i = winners[0];
        let mut next = log.fork(head);
        next.grow_to(head + 3, &format!("r{round}b{i}"));
        log = next;
        head += 3;
        assert_eq!(recorded_size(&w, &log), head as u64);
    }
}
