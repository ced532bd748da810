//! Harness for the black-box tests: runs the real `allowly-signer` binary in a temp dir, waits
//! for it by polling, kills it on drop, and checks everything it answers with `allowly-receipt`
//! only (never by trusting the signer's own claims).
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allowly_receipt::merkle::{self, root_from, verify_inclusion, Hash, LeafList};
use allowly_receipt::note::{parse_signed_note, Checkpoint, NoteVerifier};
use allowly_receipt::types::{
    checkpoint_time, log_origin, HexHash, KeySet, KeyStatus, PublicKeyInfo, SignedReceipt, Timestamp, TrustedKeys,
    STATUS_SIGNED,
};
use allowly_signer_proto::client::{AppendOutcome, ClientOptions, SignerClient};
use allowly_signer_proto::KeyInfo;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

/// Everything in these tests waits at most this long for the signer.
pub const DEADLINE: Duration = Duration::from_secs(15);
/// Poll interval of [`Signer::ready`] and [`eventually`].
pub const POLL: Duration = Duration::from_millis(20);

/// The binary under test.
pub fn signer_bin() -> &'static str {
    env!("CARGO_BIN_EXE_allowly-signer")
}

/// A temp dir under /tmp that an unprivileged uid can traverse (mode 0711), so tests that run a
/// party as uid 65534 can reach paths inside it.
pub fn traversable_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("allowly-signer-bb-").tempdir_in("/tmp").expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod tempdir");
    dir
}

/// Copies the binary into `dir/bin` (mode 0755): the cargo target directory lives under /root,
/// which an unprivileged uid cannot traverse.
pub fn copy_bin_to(dir: &Path) -> PathBuf {
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).expect("mkdir bin");
    std::fs::set_permissions(&bin_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod bin");
    let bin = bin_dir.join("allowly-signer");
    std::fs::copy(signer_bin(), &bin).expect("copy signer binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod binary");
    bin
}

/// `allowly-signer init --dir <dir>` as the current user.
pub fn init_dir(dir: &Path) {
    let out = Command::new(signer_bin()).arg("init").arg("--dir").arg(dir).output().expect("run init");
    assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `cmd` to completion, failing the test after [`DEADLINE`].
pub fn run_with_deadline(cmd: &mut Command) -> (ExitStatus, String, String) {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let out = capture(child.stdout.take());
    let err = capture(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not exit within {DEADLINE:?}; stderr: {}", err.0.lock().expect("lock"));
        }
        std::thread::sleep(POLL);
    };
    let (out, err) = (out.finish(), err.finish());
    (status, out, err)
}

/// A pipe drained by a thread into a string.
pub struct Captured(Arc<Mutex<String>>, Option<std::thread::JoinHandle<()>>);

impl Captured {
    fn finish(mut self) -> String {
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
        self.0.lock().expect("lock").clone()
    }
}

fn capture(pipe: Option<impl std::io::Read + Send + 'static>) -> Captured {
    let text = Arc::new(Mutex::new(String::new()));
    let handle = pipe.map(|mut p| {
        let text = text.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match p.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => text.lock().expect("lock").push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        })
    });
    Captured(text, handle)
}

/// A running signer. Killed (SIGKILL) and reaped on drop; if the test is panicking, its stderr
/// and audit log are printed first.
pub struct Signer {
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Signer {
    /// `allowly-signer serve --dir <dir> --socket <socket>` as the current user.
    pub fn serve(dir: &Path, socket: &Path) -> Self {
        let mut cmd = Command::new(signer_bin());
        cmd.arg("serve").arg("--dir").arg(dir).arg("--socket").arg(socket);
        Self::spawn(cmd, dir, socket)
    }

    /// [`Signer::serve`] with more `serve` arguments (`--max-connections 2`, ...).
    pub fn serve_with(dir: &Path, socket: &Path, args: &[&str]) -> Self {
        let mut cmd = Command::new(signer_bin());
        cmd.arg("serve").arg("--dir").arg(dir).arg("--socket").arg(socket).args(args);
        Self::spawn(cmd, dir, socket)
    }

    /// Starts `cmd` (which must end up running `serve` on `socket` with data in `dir`).
    pub fn spawn(mut cmd: Command, dir: &Path, socket: &Path) -> Self {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).env("ALLOWLY_SIGNER_LOG", "debug");
        // Unless the test sets it itself, never inherit a master key from the environment.
        if !cmd.get_envs().any(|(k, _)| k == "ALLOWLY_SIGNER_MASTER_KEY") {
            cmd.env_remove("ALLOWLY_SIGNER_MASTER_KEY");
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let Captured(stderr, reader) = capture(child.stderr.take());
        Self { child: Some(child), dir: dir.to_owned(), socket: socket.to_owned(), stderr, reader }
    }

    /// The signer's pid (for a `setpriv` launch, setpriv exec'd the signer: same pid).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child").id()
    }

    /// `None` while the process runs.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().expect("child").try_wait().expect("try_wait")
    }

    /// What the signer wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// The signer's audit log (`<dir>/audit.log`).
    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("audit.log")).unwrap_or_else(|e| format!("(no audit log: {e})"))
    }

    /// The audit log as JSON values, one per line.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        self.audit_text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?} is not JSON: {e}")))
            .collect()
    }

    /// Stderr and audit log, for failure messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- signer stderr ({}) ---\n{}\n--- audit log ---\n{}",
            self.socket.display(),
            self.stderr(),
            self.audit_text()
        )
    }

    /// A client with a short reconnect backoff, once `ping` answers (polled every 20 ms).
    pub async fn ready(&mut self) -> SignerClient {
        let client = client(&self.socket);
        let start = Instant::now();
        loop {
            match client.ping().await {
                Ok(()) => return client,
                Err(e) => {
                    if let Some(status) = self.try_wait() {
                        panic!("signer exited ({status}) before answering ping: {e}\n{}", self.diagnostics());
                    }
                    if start.elapsed() > DEADLINE {
                        panic!("signer did not answer ping within {DEADLINE:?}: {e}\n{}", self.diagnostics());
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for the process to exit on its own (polled), failing after [`DEADLINE`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_wait() {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return s;
            }
            assert!(start.elapsed() < DEADLINE, "signer did not exit within {DEADLINE:?}\n{}", self.diagnostics());
            std::thread::sleep(POLL);
        }
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Signer {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        self.kill9();
        if panicking {
            eprintln!("{}", self.diagnostics());
        }
    }
}

/// A client that retries connecting quickly (readiness polling must not sit in a 2 s backoff).
pub fn client(socket: &Path) -> SignerClient {
    let opts = ClientOptions {
        reconnect_backoff_min: Duration::from_millis(1),
        reconnect_backoff_max: Duration::from_millis(20),
        ..ClientOptions::default()
    };
    SignerClient::new(socket.to_owned(), opts)
}

/// A fresh data dir (`init`) and a socket path in its own 0700 directory, under `root`.
pub fn fresh(root: &Path) -> (PathBuf, PathBuf) {
    let dir = root.join("data");
    init_dir(&dir);
    (dir, root.join("run").join("signer.sock"))
}

/// Polls `f` every 20 ms until it returns `Some`, panicking with `what` and `diag()` after
/// [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, diag: impl Fn() -> String, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_within(what, DEADLINE, POLL, diag, f).await
}

/// [`eventually`] with its own deadline and poll interval (for what the signer does on a
/// timescale of seconds).
pub async fn eventually_within<T, F, Fut>(
    what: &str,
    deadline: Duration,
    poll: Duration,
    diag: impl Fn() -> String,
    mut f: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}\n{}", diag());
        tokio::time::sleep(poll).await;
    }
}

/// Polls the signer's metrics until no workspace is loaded and at least `unloads` unloads
/// were counted (`--idle-unload-secs`); returns the metrics text.
pub async fn all_unloaded(s: &Signer, c: &SignerClient, unloads: f64) -> String {
    eventually(
        &format!("every workspace unloaded ({unloads} unloads)"),
        || s.diagnostics(),
        || {
            let c = c.clone();
            async move {
                let m = c.metrics().await.ok()?;
                let done = metric(&m, "allowly_signer_workspaces_loaded") == 0.0
                    && metric(&m, "allowly_signer_workspace_unloads_total") >= unloads;
                done.then_some(m)
            }
        },
    )
    .await
}

/// The value of a metric (name with labels, e.g. `x_total{a="b"}`), 0 when it was never
/// touched (a labelled counter has no line until its first increment).
pub fn metric0(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap_or_else(|e| panic!("metric {name}: {e}")))
}

/// The value of an unlabelled metric in Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("metric {name} missing from:\n{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

/// 2026-01-01T00:00:00Z: the time of the sample receipt at index 0 (index i is `T0 + i` ms, so
/// times never go backwards along a log).
pub const T0: u64 = 1_767_225_600_000;

/// Distinct, reproducible, well-formed receipt bodies of workspace `ws` at log indices
/// `from..from + n` (what the signer accepts).
pub fn bodies(ws: &str, from: usize, n: usize) -> Vec<Vec<u8>> {
    tagged(ws, "", from, n)
}

/// [`bodies`] whose leaves differ from those of another `tag` at the same indices.
pub fn tagged(ws: &str, tag: &str, from: usize, n: usize) -> Vec<Vec<u8>> {
    (from..from + n).map(|i| body_at(ws, tag, i as u64, T0 + i as u64)).collect()
}

/// One sample receipt body of `ws` at `index` decided at `time_ms`.
pub fn body_at(ws: &str, tag: &str, index: u64, time_ms: u64) -> Vec<u8> {
    allowly_signer::check::sample_body(ws, tag, index, time_ms).expect("sample body")
}

/// The RFC 9162 leaf hashes of `bodies`.
pub fn hashes(bodies: &[Vec<u8>]) -> Vec<Hash> {
    bodies.iter().map(|b| merkle::leaf_hash(b)).collect()
}

/// Small deterministic PRNG (xorshift64*), seeded per test; the seed is printed on failure.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn range(&mut self, lo: u64, hi_inclusive: u64) -> u64 {
        lo + self.next() % (hi_inclusive - lo + 1)
    }
}

// ---------------------------------------------------------------------------------------------
// Independent checks with allowly-receipt.

/// The note verifier of one published key, checked against the key id the signer announced.
pub fn verifier(ws: &str, k: &KeyInfo) -> NoteVerifier {
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&k.public_key).expect("public key is a point");
    let v = NoteVerifier::new(&log_origin(ws), vk).expect("verifier");
    assert_eq!(v.key_id(), k.key_id, "announced key id does not match the C2SP key id of the public key");
    v
}

/// The workspace's key set as a verifier would publish it.
pub fn key_set(ws: &str, keys: &[KeyInfo]) -> KeySet {
    let origin = log_origin(ws);
    KeySet {
        workspace_id: ws.to_owned(),
        origin: origin.clone(),
        keys: keys
            .iter()
            .map(|k| PublicKeyInfo {
                key_id: hex::encode(k.key_id),
                name: origin.clone(),
                algorithm: "ed25519".into(),
                public_key: B64.encode(k.public_key),
                vkey: verifier(ws, k).to_vkey(),
                not_before: Timestamp::from_unix_ms(k.not_before_ms).expect("not_before"),
                not_after: k.not_after_ms.map(|ms| Timestamp::from_unix_ms(ms).expect("not_after")),
                status: if k.active { KeyStatus::Active } else { KeyStatus::Retired },
            })
            .collect(),
    }
}

/// Parses and verifies a signed checkpoint note: signature by one of `verifiers`, origin of `ws`,
/// exactly one `time` extension. Returns the checkpoint and its time.
pub fn open_checkpoint(ws: &str, note: &str, verifiers: &[NoteVerifier]) -> (Checkpoint, Timestamp) {
    let signed = parse_signed_note(note).unwrap_or_else(|e| panic!("not a signed note ({e}): {note:?}"));
    signed.verify(verifiers).unwrap_or_else(|e| panic!("checkpoint signature does not verify ({e}): {note:?}"));
    let cp = Checkpoint::parse(&signed.text).unwrap_or_else(|e| panic!("not a checkpoint ({e}): {note:?}"));
    assert_eq!(cp.origin, log_origin(ws), "checkpoint of the wrong log");
    let time = checkpoint_time(&cp.extensions).unwrap_or_else(|e| panic!("checkpoint time ({e}): {note:?}"));
    (cp, time)
}

/// Checks a checkpoint against the key set's validity windows: some key that signed it was
/// valid at the checkpoint's own time.
pub fn signed_by_key_valid_at_its_time(ws: &str, note: &str, trusted: &TrustedKeys) -> Checkpoint {
    let signed = parse_signed_note(note).expect("signed note");
    let signers = signed.verify(&trusted.verifiers).expect("signature by a workspace key");
    let (cp, time) = open_checkpoint(ws, note, &trusted.verifiers);
    assert!(
        signers.iter().any(|v| trusted.valid_at(v, time)),
        "no key that signed this checkpoint was valid at its time {time}: {note:?}"
    );
    cp
}

/// Root of the first `size` leaves the test appended.
pub fn model_root(all: &[Hash], size: u64) -> Hash {
    let n = usize::try_from(size).expect("size");
    assert!(n <= all.len(), "checkpoint of size {size} covers more than the {} leaves appended", all.len());
    root_from(&LeafList(all[..n].to_vec()), size).expect("root")
}

/// Checks one `Appended` answer (from `append_batch_with_proofs`) for `batch` (placed at
/// `out.old_size`) against the leaves the test appended (`all` must already hold every leaf the
/// checkpoint covers): signature, origin, root recomputed from our own leaves, one inclusion
/// proof per leaf. Returns the checkpoint.
pub fn check_appended(
    ws: &str,
    all: &[Hash],
    batch: &[Vec<u8>],
    out: &AppendOutcome,
    v: &[NoteVerifier],
) -> Checkpoint {
    let cp = check_covered(ws, all, batch, out, v);
    let batch = hashes(batch);
    assert_eq!(out.proofs.len(), batch.len(), "one proof per leaf");
    for (i, (leaf, proof)) in batch.iter().zip(&out.proofs).enumerate() {
        let index = out.old_size + i as u64;
        assert_eq!(&all[index as usize], leaf, "the test's own bookkeeping");
        verify_inclusion(leaf, index, cp.size, proof, &cp.root)
            .unwrap_or_else(|e| panic!("inclusion proof of leaf {index} in tree {} fails: {e}", cp.size));
    }
    cp
}

/// [`check_appended`] for an answer to `append_batch` (no proofs asked): everything but the
/// proofs, and there must be none.
pub fn check_appended_without_proofs(
    ws: &str,
    all: &[Hash],
    batch: &[Vec<u8>],
    out: &AppendOutcome,
    v: &[NoteVerifier],
) -> Checkpoint {
    let cp = check_covered(ws, all, batch, out, v);
    assert!(out.proofs.is_empty(), "proofs sent although none were asked for");
    cp
}

/// The checkpoints `before` and `after` both open with `v`, and `after`'s tree extends
/// `before`'s (an RFC 9162 consistency proof over `all`, our own leaves): `(before, after)`.
pub fn check_extends(
    ws: &str,
    all: &[Hash],
    before: &str,
    after: &str,
    v: &[NoteVerifier],
) -> (Checkpoint, Checkpoint) {
    let (old, _) = open_checkpoint(ws, before, v);
    let (new, _) = open_checkpoint(ws, after, v);
    let proof = merkle::consistency_proof(&LeafList(all.to_vec()), old.size, new.size).unwrap();
    merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &proof).unwrap();
    (old, new)
}

/// Sizes, signature, origin, and a root recomputed from our own leaves.
fn check_covered(ws: &str, all: &[Hash], batch: &[Vec<u8>], out: &AppendOutcome, v: &[NoteVerifier]) -> Checkpoint {
    assert_eq!(out.new_size, out.old_size + batch.len() as u64, "sizes in the answer");
    let (cp, _) = open_checkpoint(ws, &out.checkpoint, v);
    assert!(
        cp.size >= out.new_size,
        "checkpoint of size {} does not cover the batch ending at {}",
        cp.size,
        out.new_size
    );
    assert_eq!(cp.root, model_root(all, cp.size), "checkpoint root is not the root of the leaves we appended");
    cp
}

/// `allowly-verify`, built beside the signer (`cargo build -p allowly-verify`).
pub fn verify_bin() -> PathBuf {
    let bin = Path::new(signer_bin()).with_file_name("allowly-verify");
    assert!(bin.is_file(), "{} is missing: run `cargo build -p allowly-verify`", bin.display());
    bin
}

/// The signed receipts of an append's `batch` (answered with proofs, in `out`).
pub fn signed_receipts(batch: &[Vec<u8>], out: &AppendOutcome) -> Vec<SignedReceipt> {
    assert_eq!(out.proofs.len(), batch.len(), "asked with proofs");
    batch
        .iter()
        .zip(&out.proofs)
        .enumerate()
        .map(|(i, (body, proof))| signed_receipt(body, out.old_size + i as u64, proof, &out.checkpoint))
        .collect()
}

/// The signed receipt of `body` at `log_index`, with its inclusion `proof` in `checkpoint`.
pub fn signed_receipt(body: &[u8], log_index: u64, proof: &[Hash], checkpoint: &str) -> SignedReceipt {
    SignedReceipt {
        status: STATUS_SIGNED.into(),
        body: serde_json::from_slice(body).expect("a receipt body"),
        log_index,
        inclusion_proof: proof.iter().copied().map(HexHash).collect(),
        checkpoint: checkpoint.to_owned(),
    }
}

/// The engine's repeat of a rotation that did not reach the log, at the log's size
/// (`all.len()`): it must answer one new key replacing `first`, whose `key.rotated` receipt
/// and two appends after it (signed by the new key) are checked and added to `all` and
/// `receipts`. The key set it answered.
pub async fn repeat_rotation(
    c: &SignerClient,
    ws: &str,
    first: &KeyInfo,
    all: &mut Vec<Hash>,
    receipts: &mut Vec<SignedReceipt>,
) -> Vec<KeyInfo> {
    let rot = c.rotate_key(ws, all.len() as u64).await.expect("the repeated rotation");
    assert_eq!(rot.keys.len(), 2, "{ws}: one new key: {:?}", rot.keys);
    let (old, new) = (&rot.keys[0], &rot.keys[1]);
    assert!(!old.active && new.active && old.key_id == first.key_id, "{ws}: {:?}", rot.keys);
    all.push(merkle::leaf_hash(&rot.rotation.body));
    let r = &rot.rotation;
    receipts.push(signed_receipt(&r.body, r.log_index, &r.proof, &r.checkpoint));
    let batch = bodies(ws, all.len(), 2);
    let out = c.append_batch_with_proofs(ws, all.len() as u64, batch.clone()).await.expect("append");
    all.extend(hashes(&batch));
    check_appended(ws, all, &batch, &out, &[verifier(ws, new)]);
    receipts.extend(signed_receipts(&batch, &out));
    rot.keys
}

/// Has the real `allowly-verify receipt` check each of `receipts` against `keys`, published as
/// `ws`'s key set (files written under `dir`); fails the test on the first it does not accept.
pub fn allowly_verify(ws: &str, keys: &[KeyInfo], receipts: &[SignedReceipt], dir: &Path) {
    let keys_path = dir.join(format!("{ws}-keys.json"));
    std::fs::write(&keys_path, serde_json::to_vec(&key_set(ws, keys)).expect("key set")).expect("write keys");
    for (i, r) in receipts.iter().enumerate() {
        let path = dir.join(format!("{ws}-receipt-{i}.json"));
        std::fs::write(&path, serde_json::to_vec(r).expect("receipt")).expect("write receipt");
        let mut cmd = Command::new(verify_bin());
        cmd.arg("receipt").arg(&path).arg("--keys").arg(&keys_path);
        let (status, out, err) = run_with_deadline(&mut cmd);
        assert_eq!(status.code(), Some(0), "allowly-verify refuses receipt {i} of {ws}:\n{out}{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Raw frames.

/// One encoded request frame (length prefix included).
pub fn frame(id: u64, req: &allowly_signer_proto::Request) -> Vec<u8> {
    let mut out = Vec::new();
    allowly_signer_proto::encode_request(id, req, &mut out).expect("encode request");
    out
}

/// A frame with an arbitrary header and body: `len ‖ version ‖ kind ‖ id ‖ body`.
pub fn raw_frame(version: u8, kind: u8, id: u64, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(10 + body.len()).expect("len");
    let mut out = len.to_be_bytes().to_vec();
    out.push(version);
    out.push(kind);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Reads and decodes one response frame, failing the test after [`DEADLINE`].
pub async fn read_response(stream: &mut tokio::net::UnixStream) -> Option<(u64, allowly_signer_proto::Response)> {
    let mut buf = Vec::new();
    let frame = tokio::time::timeout(DEADLINE, allowly_signer_proto::read_frame(stream, &mut buf))
        .await
        .expect("no answer within the deadline")
        .expect("read frame")?;
    Some(allowly_signer_proto::decode_response(frame).expect("decode response"))
}

/// Waits for the peer to close: reads (discarding) until EOF or a reset, failing the test if the
/// connection is still open after [`DEADLINE`]. Returns the bytes read before the close.
pub async fn wait_closed(stream: &mut tokio::net::UnixStream) -> usize {
    use tokio::io::AsyncReadExt as _;
    let mut total = 0;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
            Err(_) => panic!("the signer kept the connection open for {DEADLINE:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return total,
            Ok(Ok(n)) => total += n,
        }
    }
}
