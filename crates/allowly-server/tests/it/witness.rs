//! Witnessed checkpoints, black box (docs/witness.md): the real `allowly` (with its real signer)
//! and real `allowly-witness` processes on loopback. The server submits each stored checkpoint
//! to its witnesses, stores their cosignatures and serves them; with a quorum, a receipt is
//! signed only once a checkpoint covering it carries the quorum's cosignatures, and
//! `allowly-verify --witness-quorum` accepts what it serves — as do the Python and TypeScript
//! SDKs' verifiers with the same witness policy, and the SDKs report a witness-quorum pending.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use allowly_receipt::cosignature::{self, CosignerKey};
use allowly_receipt::note;
use serde_json::json;

use crate::support::{
    allowly_bin, eventually, free_port, repo_root, tenant, venv_bin, verifier_bin, Client, Server, Tenant,
};

fn witness_bin() -> PathBuf {
    let bin = Path::new(allowly_bin()).with_file_name("allowly-witness");
    assert!(bin.is_file(), "{} is missing: run `cargo build -p allowly-witness`", bin.display());
    bin
}

/// A witness: its directory, key and port; running or not.
pub(crate) struct Witness {
    dir: PathBuf,
    name: String,
    pub(crate) vkey: String,
    /// The address it listens on: this host's loopback, or a test network's (netns).
    ip: std::net::IpAddr,
    port: u16,
    child: Option<Child>,
    addr: Option<SocketAddr>,
}

impl Witness {
    pub(crate) fn init(root: &Path, name: &str) -> Self {
        Self::init_on(root, name, std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// A witness that will listen on `ip` (a test network's address, which nodes in other
    /// network namespaces reach).
    pub(crate) fn init_on(root: &Path, name: &str, ip: std::net::IpAddr) -> Self {
        let dir = root.join(name.replace('/', "_"));
        let out =
            Command::new(witness_bin()).args(["init", "--dir"]).arg(&dir).args(["--name", name]).output().unwrap();
        assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
        let vkey = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Self { dir, name: name.to_owned(), vkey, ip, port: free_port(), child: None, addr: None }
    }

    fn key(&self) -> CosignerKey {
        CosignerKey::parse_vkey(&self.vkey).unwrap()
    }

    /// `--witness VKEY=URL` for the server.
    pub(crate) fn arg(&self) -> String {
        format!("{}=http://{}:{}", self.vkey, self.ip, self.port)
    }

    /// Serves on `port` with a config naming the logs of `tenants` (their origin and keys).
    fn start_on(&mut self, port: u16, servers: &[(&Server, &Tenant)]) {
        let mut config = String::new();
        for (s, t) in servers {
            let keys = s.client().get(&format!("/v1/workspaces/{}/keys", t.ws), None).json();
            let vkeys: Vec<String> =
                keys["keys"].as_array().unwrap().iter().map(|k| format!("{:?}", k["vkey"].as_str().unwrap())).collect();
            config.push_str(&format!("[[log]]\norigin = \"allowly/{}\"\nvkeys = [{}]\n", t.ws, vkeys.join(", ")));
        }
        let path = self.dir.join("logs.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(witness_bin())
            .arg("serve")
            .arg("--dir")
            .arg(&self.dir)
            .args(["--listen", &format!("{}:{port}", self.ip), "--config"])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("allowly-witness listening on ").map(|a| a.parse().unwrap());
        assert!(addr.is_some(), "witness {} did not start: {line:?}", self.name);
        self.child = Some(child);
        self.addr = addr;
    }

    pub(crate) fn start(&mut self, servers: &[(&Server, &Tenant)]) {
        self.start_on(self.port, servers);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.addr = None;
    }

    /// `allowly_witness_requests_total{outcome}` as the running witness reports it.
    pub(crate) fn requests(&self, outcome: &str) -> u64 {
        let c = Client { addr: self.addr.expect("witness running") };
        metric(&c.get("/metrics", None).text(), &format!("allowly_witness_requests_total{{outcome=\"{outcome}\"}}"))
    }

    fn post(&self, body: &[u8]) -> crate::support::Resp {
        let c = Client { addr: self.addr.expect("witness running") };
        c.request("POST", "/add-checkpoint", &[], Some(body))
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The value of the series `series` (name and labels exactly) on a Prometheus page, 0 if absent.
fn metric(page: &str, series: &str) -> u64 {
    page.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse::<f64>().ok())).map_or(0, |v| v as u64)
}

/// `allowly_engine_witness_submissions_total` of `witness` and `outcome` (labels in any order).
fn server_metric(s: &Server, witness: &str, outcome: &str) -> u64 {
    let page = s.client().get("/metrics", None).text();
    let (w, o) = (format!("witness=\"{witness}\""), format!("outcome=\"{outcome}\""));
    page.lines()
        .filter(|l| l.starts_with("allowly_engine_witness_submissions_total{") && l.contains(&w) && l.contains(&o))
        .find_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .map_or(0, |v| v as u64)
}

/// A server with its data in `root/name` (again, for a restart) and `args` (see [`server_args`]).
fn start_server(root: &Path, name: &str, args: &[String]) -> Server {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    Server::start_with(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn server_args(witnesses: &[&Witness], quorum: usize) -> Vec<String> {
    let mut args: Vec<String> = witnesses.iter().flat_map(|w| ["--witness".to_owned(), w.arg()]).collect();
    args.extend(["--witness-quorum".to_owned(), quorum.to_string(), "--witness-timeout-ms".into(), "500".into()]);
    args
}

/// One allowed check; its receipt id.
fn check(s: &Server, t: &Tenant) -> String {
    let r = s.client().post("/v1/check", &t.checker, json!({ "authorization_id": t.az, "scopes": ["files.read"] }));
    assert_eq!(r.status, 200, "{r}");
    r.json()["receipt"]["receipt_id"].as_str().unwrap().to_owned()
}

fn receipt(s: &Server, t: &Tenant, id: &str) -> crate::support::Resp {
    s.client().get(&format!("/v1/receipts/{id}"), Some(&t.reader))
}

/// Waits until the receipt is reported signed; returns it.
fn signed(s: &Server, t: &Tenant, id: &str) -> serde_json::Value {
    eventually(
        &format!("receipt {id} signed"),
        || receipt(s, t, id).text(),
        || {
            let v = receipt(s, t, id).json();
            (v["status"] == "signed").then_some(v)
        },
    )
}

/// The names of the witnesses whose valid cosignature `note` carries, among `witnesses`.
fn cosigned_by(note: &str, witnesses: &[&Witness]) -> Vec<String> {
    let keys: Vec<CosignerKey> = witnesses.iter().map(|w| w.key()).collect();
    let signed = note::parse_signed_note(note).unwrap();
    cosignature::verify_cosignatures(&signed, &keys).unwrap().iter().map(|c| c.witness.name().to_owned()).collect()
}

/// `allowly-verify receipt` with the workspace's keys and a witness policy; exit code and output.
fn verify(s: &Server, t: &Tenant, receipt: &serde_json::Value, witnesses: &[&Witness], quorum: usize) -> (i32, String) {
    let tmp = tempfile::tempdir().unwrap();
    let (r, k) = (tmp.path().join("r.json"), tmp.path().join("keys.json"));
    std::fs::write(&r, receipt.to_string()).unwrap();
    std::fs::write(&k, s.client().get(&format!("/v1/workspaces/{}/keys", t.ws), None).body).unwrap();
    let mut cmd = Command::new(verifier_bin());
    cmd.arg("receipt").arg(&r).arg("--keys").arg(&k);
    for w in witnesses {
        cmd.args(["--witness-key", &w.vkey]);
    }
    cmd.args(["--witness-quorum", &quorum.to_string()]);
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn receipts_carry_two_cosignatures_and_verify_with_a_quorum_of_two() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (Witness::init(tmp.path(), "wa.test/w"), Witness::init(tmp.path(), "wb.test/w"));
    let s = start_server(tmp.path(), "s", &server_args(&[&a, &b], 2));
    let t = tenant(&s, "witnessed", &["files.read"]);
    a.start(&[(&s, &t)]);
    b.start(&[(&s, &t)]);
    let ids: Vec<String> = (0..3).map(|_| check(&s, &t)).collect();
    for id in &ids {
        let r = signed(&s, &t, id);
        let cp = r["checkpoint"].as_str().unwrap();
        assert_eq!(cosigned_by(cp, &[&a, &b]).len(), 2, "{cp}");
        let (code, out) = verify(&s, &t, &r, &[&a, &b], 2);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("VALID"), "{out}");
    }
    // The checkpoint endpoint serves the same cosignatures, and says where the quorum is.
    let v = s.client().get(&format!("/v1/workspaces/{}/log/checkpoint", t.ws), Some(&t.reader)).json();
    assert_eq!(cosigned_by(v["checkpoint"].as_str().unwrap(), &[&a, &b]).len(), 2, "{v}");
    assert_eq!(v["witness"]["quorum"], 2, "{v}");
    assert_eq!(v["witness"]["witnessed_size"], v["size"], "{v}");
    // A bundle (export) too: its checkpoint carries them, and the verifier takes the quorum.
    let size = v["size"].as_u64().unwrap();
    let bundle = s.client().get(&format!("/v1/workspaces/{}/log/export?from=0&to={size}", t.ws), Some(&t.reader));
    assert_eq!(bundle.status, 200, "{bundle}");
    let dir = tempfile::tempdir().unwrap();
    let (bp, kp) = (dir.path().join("b.jsonl"), dir.path().join("keys.json"));
    std::fs::write(&bp, &bundle.body).unwrap();
    std::fs::write(&kp, s.client().get(&format!("/v1/workspaces/{}/keys", t.ws), None).body).unwrap();
    let out = Command::new(verifier_bin())
        .arg("bundle")
        .arg(&bp)
        .arg("--keys")
        .arg(&kp)
        .args(["--witness-key", &a.vkey, "--witness-key", &b.vkey, "--witness-quorum", "2"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // With a third witness key demanded, the same receipt falls short of the policy.
    let c = Witness::init(tmp.path(), "wc.test/w");
    let r = signed(&s, &t, &ids[0]);
    let (code, out) = verify(&s, &t, &r, &[&a, &b, &c], 3);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("witness_quorum_not_met"), "{out}");
}

#[test]
fn a_stopped_witness_holds_back_a_quorum_of_two_and_catches_up_through_its_409() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (Witness::init(tmp.path(), "wa.test/w"), Witness::init(tmp.path(), "wb.test/w"));
    let two = start_server(tmp.path(), "two", &server_args(&[&a, &b], 2));
    let one = start_server(tmp.path(), "one", &server_args(&[&a, &b], 1));
    let (t2, t1) = (tenant(&two, "q2", &["files.read"]), tenant(&one, "q1", &["files.read"]));
    let logs = [(&two, &t2), (&one, &t1)];
    a.start(&logs);
    b.start(&logs);
    signed(&two, &t2, &check(&two, &t2));
    signed(&one, &t1, &check(&one, &t1));
    let size_at_stop = two.client().get(&format!("/v1/workspaces/{}/log/checkpoint", t2.ws), Some(&t2.reader)).json()
        ["size"]
        .as_u64()
        .unwrap();
    // (The receipt is the log's last leaf, so quorum 2 means b cosigned `size_at_stop`.)
    let diag = || two.client().get("/metrics", None).text();
    eventually("b cosigned both first checkpoints", diag, || (b.requests("cosigned") >= 2).then_some(()));

    b.stop();
    // Checks still answer; the quorum-1 receipt is signed (a alone), the quorum-2 one waits
    // for b, and says so.
    let (r2, r1) = (check(&two, &t2), check(&one, &t1));
    let v1 = signed(&one, &t1, &r1);
    assert_eq!(cosigned_by(v1["checkpoint"].as_str().unwrap(), &[&a, &b]), vec!["wa.test/w".to_owned()]);
    eventually("the quorum-2 checkpoint is stored and cosigned by a", diag, || {
        let v = two.client().get(&format!("/v1/workspaces/{}/log/checkpoint", t2.ws), Some(&t2.reader)).json();
        (v["size"].as_u64().unwrap() > size_at_stop && cosigned_by(v["checkpoint"].as_str().unwrap(), &[&a]).len() == 1)
            .then_some(())
    });
    let pending = receipt(&two, &t2, &r2);
    assert_eq!(pending.json()["status"], "pending", "{pending}");
    assert_eq!(pending.header("allowly-pending-reason"), Some("witness_quorum"), "{pending}");
    let cp = two.client().get(&format!("/v1/workspaces/{}/log/checkpoint", t2.ws), Some(&t2.reader)).json();
    assert_eq!(cp["witness"]["witnessed_size"].as_u64(), Some(size_at_stop), "{cp}");
    assert!(two.client().get("/readyz", None).status == 200, "witnesses down do not make the server unready");

    // Meanwhile b cosigns the server's newest checkpoint from elsewhere (as if it had got it
    // from another client): it is then ahead of what the server recorded for it, and the
    // server's next request meets a 409 naming b's size.
    let new_size = cp["size"].as_u64().unwrap();
    b.start_on(0, &logs);
    let proof = two
        .client()
        .get(
            &format!("/v1/workspaces/{}/log/consistency?old_size={size_at_stop}&new_size={new_size}", t2.ws),
            Some(&t2.reader),
        )
        .json();
    let mut body = format!("old {size_at_stop}\n");
    for h in proof["proof"].as_array().unwrap() {
        let bytes = hex::decode(h.as_str().unwrap()).unwrap();
        body.push_str(&base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes));
        body.push('\n');
    }
    let note_only = proof["new_checkpoint"].as_str().unwrap();
    let note_only = note_only.split_inclusive('\n').filter(|l| !l.starts_with("— wa.test/w ")).collect::<String>();
    body.push('\n');
    body.push_str(&note_only);
    let direct = b.post(body.as_bytes());
    assert_eq!(direct.status, 200, "{direct}");
    b.stop();

    // b back where the server expects it: it catches up, through the 409, and the quorum-2
    // receipt becomes signed with both cosignatures.
    let before = server_metric(&two, "wb.test/w", "old_size_mismatch");
    b.start(&logs);
    let v2 = signed(&two, &t2, &r2);
    assert_eq!(cosigned_by(v2["checkpoint"].as_str().unwrap(), &[&a, &b]).len(), 2, "{v2}");
    assert!(server_metric(&two, "wb.test/w", "old_size_mismatch") > before, "the catch-up went through a 409");
    let (code, out) = verify(&two, &t2, &v2, &[&a, &b], 2);
    assert_eq!(code, 0, "{out}");
}

/// An HTTP/1.1 server on loopback that answers each request (one per connection) with
/// `answer(body)`: a status and a body. Returns its address and the `User-Agent` of every
/// request it answered, in order (so also how many it answered).
fn http_stub(
    answer: impl Fn(&str) -> (u16, String) + Send + 'static,
) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let agents = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = agents.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let (mut len, mut agent) = (0usize, String::new());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if line.to_ascii_lowercase().starts_with("user-agent:") {
                    agent = line["user-agent:".len()..].trim().to_owned();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let (status, text) = answer(&String::from_utf8_lossy(&body));
            seen.lock().unwrap().push(agent);
            let head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", text.len());
            let _ = conn.write_all(format!("{head}{text}").as_bytes());
        }
    });
    (addr, agents)
}

/// The checkpoint text of an `add-checkpoint` body (`old`, proof lines, blank line, the note).
fn submitted_text(body: &str) -> Option<String> {
    body.split_once("\n\n").and_then(|(_, n)| n.split_once("\n\n")).map(|(t, _)| format!("{t}\n"))
}

/// Answers every `add-checkpoint` with a cosignature line under `name` that is not `name`'s
/// (signed by another key): a witness answering garbage.
fn bad_witness(name: &'static str) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    http_stub(move |body| {
        let wrong = ed25519_dalek::SigningKey::from_bytes(&[0x77; 32]);
        (200, submitted_text(body).and_then(|t| cosignature::cosign(&t, name, &wrong, 1).ok()).unwrap_or_default())
    })
}

#[test]
fn a_witness_answering_a_bad_cosignature_is_counted_and_nothing_of_it_is_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Witness::init(tmp.path(), "wa.test/w");
    let (fake_addr, agents) = bad_witness("fake.test/w");
    let fake_key =
        CosignerKey::new("fake.test/w", ed25519_dalek::SigningKey::from_bytes(&[0x55; 32]).verifying_key()).unwrap();
    let fake_arg = format!("{}=http://{fake_addr}", fake_key.to_vkey());
    let mut args = server_args(&[&a], 2);
    args.extend(["--witness".to_owned(), fake_arg]);
    let s = start_server(tmp.path(), "s", &args);
    let t = tenant(&s, "fake", &["files.read"]);
    a.start(&[(&s, &t)]);
    let id = check(&s, &t);
    let note = eventually(
        "the fake witness's answer counted as bad",
        || s.client().get("/metrics", None).text(),
        || {
            // Until the newest checkpoint (the check's) is cosigned by a.
            let cp = s.client().get(&format!("/v1/workspaces/{}/log/checkpoint", t.ws), Some(&t.reader)).json();
            // (No checkpoint yet: a 404.)
            let note = cp["checkpoint"].as_str()?.to_owned();
            (server_metric(&s, "fake.test/w", "bad_cosignature") >= 1 && cosigned_by(&note, &[&a]).len() == 1)
                .then_some(note)
        },
    );
    // Submissions say what they are, not that they are webhook deliveries.
    let agents = agents.lock().unwrap().clone();
    assert!(!agents.is_empty() && agents.iter().all(|a| a.starts_with("allowly-witness-submitter/")), "{agents:?}");
    assert!(!note.contains("— fake.test/w "), "a bad cosignature was stored and served: {note}");
    // Quorum 2 with one good witness: pending.
    assert_eq!(receipt(&s, &t, &id).json()["status"], "pending");
}

#[test]
fn a_restarted_server_submits_from_the_size_each_witness_last_cosigned() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Witness::init(tmp.path(), "wa.test/w");
    let mut s = start_server(tmp.path(), "s", &server_args(&[&a], 1));
    let t = tenant(&s, "restart", &["files.read"]);
    a.start(&[(&s, &t)]);
    signed(&s, &t, &check(&s, &t));
    signed(&s, &t, &check(&s, &t));
    let cosigned = a.requests("cosigned");
    assert!(cosigned >= 1);
    assert_eq!(a.requests("old_size_mismatch"), 0);
    s.stop();
    let s = start_server(tmp.path(), "s", &server_args(&[&a], 1));
    let v = signed(&s, &t, &check(&s, &t));
    assert_eq!(cosigned_by(v["checkpoint"].as_str().unwrap(), &[&a]).len(), 1, "{v}");
    assert!(a.requests("cosigned") > cosigned);
    // Had the restarted server sent `old 0`, the witness would have answered 409 first.
    assert_eq!(a.requests("old_size_mismatch"), 0, "the restarted server did not start from the recorded size");
}

/// The verifiers: `allowly-verify`, the Python SDK's (`tests/crosslang/verify.py` runs
/// `allowly.verify` from the checkout), the TypeScript SDK's (`allowly-verify-js`, compiled
/// here by the SDK's locked `tsc`) and the Node one of `tests/crosslang/verify.mjs`. None of
/// the last three shares code with the Rust one or with each other.
struct Verifiers {
    /// The TypeScript SDK compiled with its test config: `src/` and `test/` under it.
    ts: tempfile::TempDir,
}

/// What one verifier said: its exit code, outcome and finding codes (none on exit 64), and
/// everything it printed.
#[derive(Debug)]
struct Verdict {
    who: &'static str,
    exit: Option<i32>,
    codes: std::collections::BTreeSet<String>,
    output: String,
}

impl Verifiers {
    fn new() -> Self {
        let (sdk, compiler) = crate::clients::typescript_sdk();
        let ts = tempfile::tempdir().unwrap();
        crate::clients::tsc(&sdk, &compiler, "tsconfig.test.json", ts.path());
        Self { ts }
    }

    /// Runs `args` (`receipt FILE --keys KEYS …` or `bundle FILE …`) with each of the three.
    fn run(&self, args: &[String]) -> Vec<Verdict> {
        let mut rust = Command::new(verifier_bin());
        rust.arg("--json");
        let mut python = Command::new(crate::contract::python());
        python.arg(crate::contract::crosslang("verify.py"));
        let mut node = Command::new("node");
        node.arg(self.ts.path().join("src/cli.js"));
        let mut crosslang_node = Command::new("node");
        crosslang_node.arg(crate::contract::crosslang("verify.mjs"));
        [("allowly-verify", rust), ("python", python), ("typescript", node), ("node (tests/crosslang)", crosslang_node)]
            .into_iter()
            .map(|(who, mut cmd)| {
                let out =
                    cmd.args(args).output().unwrap_or_else(|e| panic!("running {who}: {e} (run scripts/setup.sh)"));
                let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                let output = format!("{who}: {args:?}\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
                let codes = match (who, out.status.code()) {
                    (_, Some(64)) => Default::default(),
                    ("allowly-verify", _) => {
                        let report: serde_json::Value =
                            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {output}"));
                        report["findings"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|f| f["code"].as_str().unwrap().to_owned())
                            .collect()
                    }
                    // `code [class]: detail` (Python) or `code: detail` (TypeScript); then notes
                    // and the outcome.
                    _ => stdout
                        .lines()
                        .filter(|l| !l.starts_with("note:") && !l.starts_with("outcome:"))
                        .filter_map(|l| l.split([':', ' ']).next())
                        .filter(|c| !c.is_empty())
                        .map(str::to_owned)
                        .collect(),
                };
                Verdict { who, exit: out.status.code(), codes, output }
            })
            .collect()
    }

    /// Every verifier exits `exit` with exactly the finding codes `codes`.
    fn agree(&self, args: &[String], exit: i32, codes: &[&str]) {
        let want: std::collections::BTreeSet<String> = codes.iter().map(|c| (*c).to_owned()).collect();
        for v in self.run(args) {
            assert_eq!((v.exit, &v.codes), (Some(exit), &want), "{} disagrees\n{}", v.who, v.output);
        }
    }
}

/// `--witness-key VKEY…` for `witnesses` and `--witness-quorum N`.
fn policy_args(witnesses: &[&Witness], quorum: usize) -> Vec<String> {
    let mut args: Vec<String> = witnesses.iter().flat_map(|w| ["--witness-key".to_owned(), w.vkey.clone()]).collect();
    args.extend(["--witness-quorum".to_owned(), quorum.to_string()]);
    args
}

/// Flips one bit of the signature in the first cosignature line by `w` in `text` (a bundle, or
/// a receipt document: the note's lines are JSON-escaped there, the line itself is not).
fn tamper_first_cosignature(text: &str, w: &Witness) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let prefix = format!("— {} ", w.name);
    let start = text.find(&prefix).unwrap_or_else(|| panic!("no cosignature by {} in {text}", w.name)) + prefix.len();
    let len = text[start..].find("\\n").unwrap();
    let mut raw = b64.decode(&text[start..start + len]).unwrap();
    assert_eq!(raw.len(), 76, "key id, timestamp, signature");
    raw[40] ^= 1;
    format!("{}{}{}", &text[..start], b64.encode(raw), &text[start + len..])
}

/// The witness policy of docs/receipt-format.md §7.5 in every verifier, on what a server
/// with two real witnesses exports: a log bundle and a receipt that verify with the quorum the
/// cosignatures meet; `witness_quorum_not_met` when more witnesses are asked for than cosigned;
/// `witness_cosignature_invalid` when one cosignature's bytes are changed (and nothing when that
/// witness is not in the policy, or without a policy: cosignatures are then unknown signatures);
/// a quorum above the number of keys is bad usage.
#[test]
fn all_three_verifiers_apply_a_witness_policy_to_what_the_server_exports() {
    let verifiers = Verifiers::new();
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (Witness::init(tmp.path(), "wa.test/w"), Witness::init(tmp.path(), "wb.test/w"));
    // Known to the verifiers, never started: it cosigns nothing.
    let c = Witness::init(tmp.path(), "wc.test/w");
    let s = start_server(tmp.path(), "s", &server_args(&[&a, &b], 2));
    let t = tenant(&s, "three", &["files.read"]);
    a.start(&[(&s, &t)]);
    b.start(&[(&s, &t)]);
    let ids: Vec<String> = (0..3).map(|_| check(&s, &t)).collect();
    let receipts: Vec<serde_json::Value> = ids.iter().map(|id| signed(&s, &t, id)).collect();
    let v = s.client().get(&format!("/v1/workspaces/{}/log/checkpoint", t.ws), Some(&t.reader)).json();
    assert_eq!(v["witness"]["witnessed_size"], v["size"], "{v}");
    let size = v["size"].as_u64().unwrap();
    let bundle = s.client().get(&format!("/v1/workspaces/{}/log/export?from=0&to={size}", t.ws), Some(&t.reader));
    assert_eq!(bundle.status, 200, "{bundle}");
    let bundle = bundle.text();
    assert!(bundle.contains("— wa.test/w ") && bundle.contains("— wb.test/w "), "{bundle}");

    let file = |name: &str, data: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, data).unwrap();
        p.display().to_string()
    };
    let keys = file("keys.json", &s.client().get(&format!("/v1/workspaces/{}/keys", t.ws), None).text());
    let good = file("bundle.jsonl", &bundle);
    let bad = file("tampered.jsonl", &tamper_first_cosignature(&bundle, &b));
    let receipt = file("receipt.json", &receipts[1].to_string());
    let bad_receipt = file("tampered-receipt.json", &tamper_first_cosignature(&receipts[1].to_string(), &a));
    let with = |what: &str, f: &str, policy: Vec<String>| {
        let mut args = vec![what.to_owned(), f.to_owned(), "--keys".to_owned(), keys.clone()];
        args.extend(policy);
        args
    };

    for (what, f) in [("bundle", &good), ("receipt", &receipt)] {
        verifiers.agree(&with(what, f, vec![]), 0, &[]);
        verifiers.agree(&with(what, f, policy_args(&[&a, &b], 2)), 0, &[]);
        verifiers.agree(&with(what, f, policy_args(&[&a, &b, &c], 2)), 0, &[]);
        // More witnesses asked for than cosigned: a coverage gap.
        verifiers.agree(&with(what, f, policy_args(&[&a, &b, &c], 3)), 2, &["witness_quorum_not_met"]);
        verifiers.agree(&with(what, f, policy_args(&[&a, &c], 2)), 2, &["witness_quorum_not_met"]);
        // A quorum no set of these keys could meet: bad usage.
        verifiers.agree(&with(what, f, policy_args(&[&a, &b], 3)), 64, &[]);
    }
    // One cosignature's bytes changed: an integrity failure once its witness is in the policy,
    // even with the quorum met by the others; ignored otherwise.
    verifiers.agree(&with("bundle", &bad, policy_args(&[&a, &b], 2)), 1, &["witness_cosignature_invalid"]);
    verifiers.agree(&with("bundle", &bad, policy_args(&[&a, &b], 1)), 1, &["witness_cosignature_invalid"]);
    verifiers.agree(&with("bundle", &bad, policy_args(&[&a, &c], 1)), 0, &[]);
    verifiers.agree(&with("bundle", &bad, vec![]), 0, &[]);
    verifiers.agree(&with("receipt", &bad_receipt, policy_args(&[&a, &b], 2)), 1, &["witness_cosignature_invalid"]);
    verifiers.agree(&with("receipt", &bad_receipt, policy_args(&[&b], 1)), 0, &[]);
}

/// Kills a child process on drop (a test that fails while an SDK suite runs leaves none behind).
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The SDKs read what the server says while a witness of a quorum of two is down: the Python
/// SDK (sync and async) and the TypeScript SDK each get a receipt pending with
/// `pending_reason` `witness_quorum` and the checkpoint's `witness` status, and their
/// `wait_for_receipt` / `waitForReceipt` keep waiting through that pending until the witness is
/// back and the receipt is signed — which then verifies with the witness policy. The SDK sides
/// are `clients/python/tests/live_witness.py` and `clients/typescript/test/liveWitness.ts`.
#[test]
fn the_sdks_report_a_witness_quorum_pending_and_wait_through_it() {
    let (sdk, compiler) = crate::clients::typescript_sdk();
    let ts = tempfile::tempdir().unwrap();
    crate::clients::tsc(&sdk, &compiler, "tsconfig.test.json", ts.path());
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (Witness::init(tmp.path(), "wa.test/w"), Witness::init(tmp.path(), "wb.test/w"));
    let s = start_server(tmp.path(), "s", &server_args(&[&a, &b], 2));
    let t = tenant(&s, "sdks", &["files.read"]);
    let logs = [(&s, &t)];
    a.start(&logs);
    b.start(&logs);
    signed(&s, &t, &check(&s, &t));

    let python_sdk = repo_root().join("clients/python");
    let suites: [(&str, Command); 2] = [
        ("python", {
            let mut cmd = Command::new(venv_bin("python"));
            cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/live_witness.py"])
                .current_dir(&python_sdk)
                .env("PYTHONPATH", python_sdk.join("src"))
                .env("PYTHONDONTWRITEBYTECODE", "1");
            cmd
        }),
        ("typescript", {
            let mut cmd = Command::new("node");
            cmd.arg("--test").arg(ts.path().join("test/liveWitness.js")).current_dir(ts.path());
            cmd
        }),
    ];
    for (sdk, mut cmd) in suites {
        b.stop();
        let id = check(&s, &t);
        eventually(
            &format!("receipt {id} pending for the witness quorum"),
            || receipt(&s, &t, &id).to_string(),
            || (receipt(&s, &t, &id).header("allowly-pending-reason") == Some("witness_quorum")).then_some(()),
        );
        let signal = tmp.path().join(format!("{sdk}.pending-seen"));
        let (out, err) = (tmp.path().join(format!("{sdk}.out")), tmp.path().join(format!("{sdk}.err")));
        cmd.env("ALLOWLY_TEST_URL", format!("http://{}", s.addr))
            .env("ALLOWLY_TEST_READ_KEY", &t.reader)
            .env("ALLOWLY_TEST_WORKSPACE", &t.ws)
            .env("ALLOWLY_TEST_PENDING_RECEIPT", &id)
            .env("ALLOWLY_TEST_WITNESS_KEYS", format!("{},{}", a.vkey, b.vkey))
            .env("ALLOWLY_TEST_WITNESS_QUORUM", "2")
            .env("ALLOWLY_TEST_SIGNAL", &signal)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        let mut child = Reaped(Some(cmd.spawn().unwrap_or_else(|e| panic!("{sdk}: {e} (run scripts/setup.sh)"))));
        let printed = || {
            let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
            format!("--- {sdk} stdout ---\n{}\n--- stderr ---\n{}\n{}", read(&out), read(&err), s.diagnostics())
        };
        // Until the SDK has seen the receipt pending (or has failed: then say why).
        eventually(&format!("the {sdk} SDK to see the pending receipt"), printed, || {
            if signal.exists() {
                return Some(());
            }
            let status = child.0.as_mut().unwrap().try_wait().unwrap();
            assert!(status.is_none(), "the {sdk} SDK's test ended early ({status:?})\n{}", printed());
            None
        });
        b.start(&logs);
        let status = child.0.take().unwrap().wait().unwrap();
        assert!(status.success(), "the {sdk} SDK's test failed\n{}", printed());
        let stdout = std::fs::read_to_string(&out).unwrap();
        match sdk {
            "python" => assert!(stdout.contains("1 passed") && !stdout.contains("skipped"), "{stdout}"),
            _ => assert!(stdout.contains("# pass 1") && stdout.contains("# fail 0"), "{stdout}"),
        }
    }
}

/// A checkpoint stored while its only witness (quorum 1) was away, and the server restarted
/// before the witness came back: the restarted server submits it by itself (its start-up
/// sweep of the checkpoints each witness has not cosigned, then its backoff until the witness
/// answers), and the receipt it covers is reported signed with no further check in that
/// workspace. Without the sweep nothing would queue the workspace again until its next
/// checkpoint, and the receipt would stay pending for good in an idle workspace.
#[test]
fn a_restarted_server_submits_the_checkpoints_a_witness_missed_without_a_new_check() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Witness::init(tmp.path(), "wa.test/w");
    let mut s = start_server(tmp.path(), "s", &server_args(&[&a], 1));
    let t = tenant(&s, "sweep", &["files.read"]);
    a.start(&[(&s, &t)]);
    signed(&s, &t, &check(&s, &t));
    a.stop();

    let id = check(&s, &t);
    let diag = || receipt(&s, &t, &id).text();
    eventually("its checkpoint stored, waiting for the witness", diag, || {
        (receipt(&s, &t, &id).header("allowly-pending-reason") == Some("witness_quorum")).then_some(())
    });
    s.stop();
    let s = start_server(tmp.path(), "s", &server_args(&[&a], 1));
    s.wait_ready();
    let pending = receipt(&s, &t, &id);
    assert_eq!(pending.header("allowly-pending-reason"), Some("witness_quorum"), "{pending}");

    a.start(&[(&s, &t)]);
    let v = signed(&s, &t, &id);
    assert_eq!(cosigned_by(v["checkpoint"].as_str().unwrap(), &[&a]), vec!["wa.test/w".to_owned()], "{v}");
    let (code, out) = verify(&s, &t, &v, &[&a], 1);
    assert_eq!(code, 0, "{out}");
}

/// A witness that refuses a workspace's checkpoint (404: it was not given that log) is sent it
/// again later by itself (`--witness-refused-retry-ms`): once the witness is given the log, the
/// receipt waiting for it (quorum 1) is reported signed with no further check in that
/// workspace. Before, a refused workspace waited for its next checkpoint — for good in an idle
/// one.
#[test]
fn a_refused_checkpoint_is_submitted_again_and_cosigned_once_the_witness_knows_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Witness::init(tmp.path(), "wa.test/w");
    let mut args = server_args(&[&a], 1);
    args.extend(["--witness-refused-retry-ms".to_owned(), "300".to_owned()]);
    let s = start_server(tmp.path(), "s", &args);
    let (known, unknown) = (tenant(&s, "known", &["files.read"]), tenant(&s, "unknown", &["files.read"]));
    a.start(&[(&s, &known)]);
    signed(&s, &known, &check(&s, &known));

    let id = check(&s, &unknown);
    let diag = || s.client().get("/metrics", None).text();
    eventually("the check's checkpoint stored, waiting for the witness", diag, || {
        (receipt(&s, &unknown, &id).header("allowly-pending-reason") == Some("witness_quorum")).then_some(())
    });
    // Refused while the witness does not know the log, and again later (the retries go on,
    // further apart), with no new checkpoint in between.
    let refused = server_metric(&s, "wa.test/w", "refused");
    assert!(refused >= 1, "{}", diag());
    eventually("refused again", diag, || (server_metric(&s, "wa.test/w", "refused") > refused).then_some(()));

    a.stop();
    a.start(&[(&s, &known), (&s, &unknown)]);
    let v = signed(&s, &unknown, &id);
    assert_eq!(cosigned_by(v["checkpoint"].as_str().unwrap(), &[&a]), vec!["wa.test/w".to_owned()], "{v}");
}

/// `body` POSTed to `/add-checkpoint` at `addr`, one connection; the answer's status and body,
/// or `None` if nothing answered there.
fn forward(addr: SocketAddr, body: &str) -> Option<(u16, String)> {
    let mut up = std::net::TcpStream::connect(addr).ok()?;
    let head = format!(
        "POST /add-checkpoint HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    up.write_all(format!("{head}{body}").as_bytes()).ok()?;
    let mut answer = String::new();
    up.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    Some((head.split(' ').nth(1)?.parse().ok()?, body.to_owned()))
}

/// A witness whose first two cosignatures are corrupted on the way (a relay in front of a real
/// `allowly-witness` flips a bit of the signature in its first two 200 answers) while the
/// workspace stays idle: the checkpoint is submitted again after the retry wait, with no new
/// checkpoint, until a valid cosignature comes — through the witness's 409, since it recorded
/// the checkpoint it cosigned — and the receipt waiting for it (quorum 1) is reported signed.
/// Each bad answer is counted `bad_cosignature`. Before, such a checkpoint waited for the
/// workspace's next one: for good in an idle workspace.
#[test]
fn a_checkpoint_whose_cosignature_does_not_verify_is_submitted_again_until_one_does() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Witness::init(tmp.path(), "wa.test/w");
    let upstream = SocketAddr::from(([127, 0, 0, 1], a.port));
    let corrupted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let flipped = corrupted.clone();
    let (relay, _) = http_stub(move |body| match forward(upstream, body) {
        Some((200, line)) if flipped.load(std::sync::atomic::Ordering::SeqCst) < 2 => {
            let (name, sig) = line.trim_end().rsplit_once(' ').unwrap();
            let mut raw = b64.decode(sig).unwrap();
            raw[40] ^= 1;
            flipped.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (200, format!("{name} {}\n", b64.encode(raw)))
        }
        Some(answer) => answer,
        // The witness not started yet.
        None => (502, String::new()),
    });
    let mut args = server_args(&[], 1);
    args.extend(["--witness".to_owned(), format!("{}=http://{relay}", a.vkey)]);
    args.extend(["--witness-refused-retry-ms".to_owned(), "200".to_owned()]);
    let s = start_server(tmp.path(), "s", &args);
    let t = tenant(&s, "corrupted", &["files.read"]);
    let id = check(&s, &t);
    a.start(&[(&s, &t)]);
    let v = signed(&s, &t, &id);
    assert_eq!(cosigned_by(v["checkpoint"].as_str().unwrap(), &[&a]), vec!["wa.test/w".to_owned()], "{v}");
    assert_eq!(corrupted.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(server_metric(&s, "wa.test/w", "bad_cosignature"), 2);
    assert!(server_metric(&s, "wa.test/w", "old_size_mismatch") >= 1, "resubmitted through the witness's 409");
}

// ---- Anchoring: the checkpoint log (--checkpoint-log) -------------------------------------

/// The checkpoint log's lines: (workspace, size, signed note), in file order; a line that does
/// not read (one a crash cut short) is left out.
fn checkpoint_log_lines(path: &Path) -> Vec<(String, u64, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            let (ws, size, note) = (&v["workspace_id"], &v["size"], &v["checkpoint"]);
            (ws.as_str().unwrap().to_owned(), size.as_u64().unwrap(), note.as_str().unwrap().to_owned())
        })
        .collect()
}

/// `--checkpoint-log FILE`, black box: the real server appends every checkpoint it stores to
/// the file as its signed note. With the file's directory gone, appends fail (counted in
/// `allowly_engine_checkpoint_log_failures_total`) while checks and signing go on; the server is
/// then killed (`kill -9`) with those checkpoints not appended, the directory comes back, and
/// the restarted server appends them without a new check. In the end the file holds every
/// checkpoint the store holds (read from the store itself once the server stopped), each note
/// signed by the workspace's key with the size its line says, in size order; a repeat (at least
/// once) is only ever the same line again.
#[test]
fn every_stored_checkpoint_is_in_the_checkpoint_log_after_a_crash_and_a_restart() {
    use allowly_store::Store as _;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("anchor");
    std::fs::create_dir(&dir).unwrap();
    // A server started as root runs as its own user, which must reach and write the directory.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let log = dir.join("checkpoints.jsonl");
    let args = vec!["--checkpoint-log".to_owned(), log.display().to_string()];
    let mut s = start_server(tmp.path(), "s", &args);
    let t = tenant(&s, "anchored", &["files.read"]);
    let first = signed(&s, &t, &check(&s, &t));
    let note = first["checkpoint"].as_str().unwrap().to_owned();
    let diag = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually("the first receipt's checkpoint in the log", diag, || {
        checkpoint_log_lines(&log).iter().any(|(_, _, n)| *n == note).then_some(())
    });

    // The directory away: appends fail; checks and signing go on.
    let away = tmp.path().join("anchor.away");
    std::fs::rename(&dir, &away).unwrap();
    let ids: Vec<String> = (0..3).map(|_| check(&s, &t)).collect();
    let all: Vec<serde_json::Value> = ids.iter().map(|id| signed(&s, &t, id)).collect();
    let last = &all[all.len() - 1];
    let failures = || metric(&s.client().get("/metrics", None).text(), "allowly_engine_checkpoint_log_failures_total");
    eventually("appends failing", || s.client().get("/metrics", None).text(), || (failures() >= 1).then_some(()));
    let keys = s.client().get(&format!("/v1/workspaces/{}/keys", t.ws), None).json();
    s.kill9();
    std::fs::rename(&away, &dir).unwrap();
    let missing = last["checkpoint"].as_str().unwrap().to_owned();
    assert!(!checkpoint_log_lines(&log).iter().any(|(_, _, n)| *n == missing), "appended while the directory was away");

    let mut s = start_server(tmp.path(), "s", &args);
    eventually("the checkpoints missed appended after the restart, with no new check", diag, || {
        checkpoint_log_lines(&log).iter().any(|(_, _, n)| *n == missing).then_some(())
    });
    s.stop();

    let store =
        allowly_store_rocks::RocksStore::open(&tmp.path().join("s/db"), allowly_store_rocks::RocksOptions::default())
            .unwrap();
    let mut stored = Vec::new();
    while let Some((size, note)) = store.checkpoint_at_or_after(&t.ws, stored.last().map_or(1, |(n, _)| n + 1)).unwrap()
    {
        stored.push((size, note));
    }
    let lines = checkpoint_log_lines(&log);
    let mut appended: Vec<(u64, String)> =
        lines.iter().filter(|(ws, _, _)| *ws == t.ws).map(|(_, size, note)| (*size, note.clone())).collect();
    appended.dedup();
    assert!(stored.len() >= 2, "one before the directory went away, one after: {stored:?}");
    assert_eq!(appended, stored, "the log holds every stored checkpoint, in order, a repeat only of the same line");
    signed_at_their_sizes(&keys, &t.ws, &appended);
}

/// Each note of `notes` is a checkpoint of workspace `ws`, signed by a key of `keys` (its
/// published key set), at the size beside it.
fn signed_at_their_sizes(keys: &serde_json::Value, ws: &str, notes: &[(u64, String)]) {
    let verifiers: Vec<note::NoteVerifier> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| note::NoteVerifier::parse_vkey(k["vkey"].as_str().unwrap()).unwrap())
        .collect();
    for (size, n) in notes {
        let (cp, _) = note::open_checkpoint(n, &format!("allowly/{ws}"), &verifiers).unwrap();
        assert_eq!(cp.size, *size, "{n}");
    }
}

/// Checks signed and their checkpoints read back: the notes, signed by the workspace's key at
/// the size each line says, of every line of `lines` for `t`'s workspace; at least `n` of them.
fn verified_lines(s: &Server, t: &Tenant, lines: &[(String, u64, String)], n: usize) -> Vec<(u64, String)> {
    let keys = s.client().get(&format!("/v1/workspaces/{}/keys", t.ws), None).json();
    let mine: Vec<(u64, String)> =
        lines.iter().filter(|(ws, _, _)| *ws == t.ws).map(|(_, size, note)| (*size, note.clone())).collect();
    assert!(mine.len() >= n, "{mine:?}");
    signed_at_their_sizes(&keys, &t.ws, &mine);
    mine
}

/// A directory the server's own user (it drops root) can write in, under `tmp`.
fn shared_dir(tmp: &Path, name: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// `--checkpoint-log syslog:SOCKET`, black box, with a real `rsyslogd` listening on the socket
/// and writing what it receives to a file: every checkpoint the server stores reaches the
/// logger as one message, which the logger parses as the program `allowly` at `user.notice`,
/// its text the JSON line (the signed note, at the size the line says).
#[test]
fn checkpoints_reach_a_real_syslog_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = shared_dir(tmp.path(), "syslog");
    let (socket, out) = (dir.join("log.sock"), dir.join("received.log"));
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{dir}\")\n\
             module(load=\"imuxsock\" SysSock.Use=\"off\")\n\
             input(type=\"imuxsock\" Socket=\"{socket}\" RateLimit.Interval=\"0\")\n\
             template(name=\"seen\" type=\"string\" string=\"%programname% %syslogfacility-text%.%syslogseverity-text% %msg%\\n\")\n\
             *.* action(type=\"omfile\" file=\"{out}\" template=\"seen\")\n",
            dir = dir.display(),
            socket = socket.display(),
            out = out.display()
        ),
    )
    .unwrap();
    let mut daemon = std::process::Command::new("/usr/sbin/rsyslogd")
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(dir.join("rsyslogd.pid"))
        .spawn()
        .expect("rsyslogd (scripts/setup.sh installs it)");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _daemon = Kill(&mut daemon);
    eventually("rsyslogd's socket", String::new, || socket.exists().then_some(()));
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();

    let args = vec!["--checkpoint-log".to_owned(), format!("syslog:{}", socket.display())];
    let s = start_server(tmp.path(), "s", &args);
    let t = tenant(&s, "logged", &["files.read"]);
    let ids: Vec<String> = (0..3).map(|_| check(&s, &t)).collect();
    let last = signed(&s, &t, ids.last().unwrap())["checkpoint"].as_str().unwrap().to_owned();
    let received = || std::fs::read_to_string(&out).unwrap_or_default();
    let lines = eventually("the last checkpoint at the logger", received, || {
        let lines: Vec<(String, u64, String)> = received()
            .lines()
            .map(|l| {
                let json = l.strip_prefix("allowly user.notice ").unwrap_or_else(|| panic!("parsed otherwise: {l}"));
                let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
                let (ws, size, note) = (&v["workspace_id"], &v["size"], &v["checkpoint"]);
                (ws.as_str().unwrap().to_owned(), size.as_u64().unwrap(), note.as_str().unwrap().to_owned())
            })
            .collect();
        lines.iter().any(|(_, _, n)| *n == last).then_some(lines)
    });
    verified_lines(&s, &t, &lines, 1);
}

/// `--checkpoint-log git:DIR`, black box, with the real `git`: every checkpoint the server
/// stores is committed to `checkpoints.jsonl` in the work tree, by "Allowly", each line a
/// signed note at the size it says, and every commit extends the one before (the work tree is
/// clean after each round: nothing appended is left uncommitted).
#[test]
fn checkpoints_are_committed_to_a_git_work_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = shared_dir(tmp.path(), "anchors");
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git").arg("-C").arg(&repo).args(args).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    git(&["init", "--quiet"]);
    // The server's user writes objects into it.
    let status = std::process::Command::new("chmod").arg("-R").arg("a+rwX").arg(&repo).status().unwrap();
    assert!(status.success());

    let args = vec!["--checkpoint-log".to_owned(), format!("git:{}", repo.display())];
    let s = start_server(tmp.path(), "s", &args);
    let t = tenant(&s, "committed", &["files.read"]);
    let first = signed(&s, &t, &check(&s, &t))["checkpoint"].as_str().unwrap().to_owned();
    let committed = || {
        let text = std::process::Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["show", "HEAD:checkpoints.jsonl"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| {
                let (ws, size, note) = (&v["workspace_id"], &v["size"], &v["checkpoint"]);
                (ws.as_str().unwrap().to_owned(), size.as_u64().unwrap(), note.as_str().unwrap().to_owned())
            })
            .collect::<Vec<_>>()
    };
    eventually(
        "the first checkpoint committed",
        || git(&["log", "--stat"]),
        || committed().iter().any(|(_, _, n)| *n == first).then_some(()),
    );
    let ids: Vec<String> = (0..3).map(|_| check(&s, &t)).collect();
    let last = signed(&s, &t, ids.last().unwrap())["checkpoint"].as_str().unwrap().to_owned();
    let lines = eventually(
        "the last checkpoint committed",
        || git(&["log", "--stat"]),
        || {
            let lines = committed();
            lines.iter().any(|(_, _, n)| *n == last).then_some(lines)
        },
    );
    verified_lines(&s, &t, &lines, 2);
    let authors = git(&["log", "--format=%an <%ae>"]);
    assert!(authors.lines().count() >= 2, "{authors}");
    assert!(authors.lines().all(|a| a == "Allowly <allowly@localhost>"), "{authors}");
    // One line of history, nothing left uncommitted once the last round was committed.
    assert_eq!(git(&["rev-list", "--merges", "HEAD"]), "");
    eventually("a clean work tree", || git(&["status"]), || git(&["status", "--porcelain"]).is_empty().then_some(()));
}
