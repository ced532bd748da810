//! Several `allowly serve` nodes over one real PostgreSQL (issue 16 parts 2 and 3,
//! docs/scale-out.md), each with its own signer, the signers sharing a master key: one owner per
//! workspace, requests forwarded to it, revocations visible through every node, a paused
//! owner's late writes refused by the lease epoch (fencing) after another node took the
//! workspace over, and the new owner's signer continuing the log the old one signed, so the
//! trail verifies offline as one log.

use crate::support::netns::{Host, Net};
use crate::support::*;
use crate::witness::Witness;
use serde_json::json;
use std::path::Path;

/// The master key every node's signer shares (provisioned per node in production, as
/// `ALLOWLY_SIGNER_MASTER_KEY` or a key file): a workspace's sealed key then opens in whichever
/// node's signer takes the workspace over.
const MASTER_KEY: &str = "6a1f0c5e9b3d47a28e1f6c0d9b2a4e7f3c8d1b6a0e9f2c5d8b4a7e1f0c3d6b9a";

/// Each node's checkpoint log, in its data directory.
const CHECKPOINT_LOG: &str = "checkpoints.jsonl";

/// A node `name` of a cluster on `conninfo`, on a port of its own that it advertises.
fn node(data: &Path, conninfo: &str, name: &str, extra: &[impl AsRef<std::ffi::OsStr>]) -> Server {
    let port = free_port();
    node_at(data, conninfo, name, extra, port, &format!("http://127.0.0.1:{port}"))
}

/// [`node`] listening on `port` and advertising `advertise` to its peers (a relay in front).
fn node_at(
    data: &Path,
    conninfo: &str,
    name: &str,
    extra: &[impl AsRef<std::ffi::OsStr>],
    port: u16,
    advertise: &str,
) -> Server {
    let listen = format!("127.0.0.1:{port}");
    let s = node_command(std::process::Command::new(allowly_bin()), data, conninfo, name, extra, &listen, advertise);
    s.wait_ready();
    s
}

/// [`node`] on `host` of a test network (a network namespace of its own, which a partition can
/// cut off), on its address.
fn node_on(host: &Host, data: &Path, conninfo: &str, name: &str, extra: &[impl AsRef<std::ffi::OsStr>]) -> Server {
    let listen = std::net::SocketAddr::new(host.addr, free_port()).to_string();
    let s =
        node_command(host.command(allowly_bin()), data, conninfo, name, extra, &listen, &format!("http://{listen}"));
    s.wait_ready();
    s
}

/// `cmd` (the `allowly` binary, perhaps inside a network namespace) as node `name`, started
/// (not yet known to be ready).
fn node_command(
    mut cmd: std::process::Command,
    data: &Path,
    conninfo: &str,
    name: &str,
    extra: &[impl AsRef<std::ffi::OsStr>],
    listen: &str,
    advertise: &str,
) -> Server {
    signer_bin();
    cmd.arg("serve").arg("--data-dir").arg(data);
    cmd.args(["--listen", listen, "--postgres", conninfo, "--node-name", name, "--advertise-url", advertise]);
    // Every checkpoint the node stores is also appended here, outside the database
    // (`every_checkpoint_is_of_one_log` walks them after a fault).
    // In the data directory: a server started as root writes it as its own user.
    cmd.arg("--checkpoint-log").arg(data.join(CHECKPOINT_LOG));
    cmd.args(extra);
    cmd.env("ALLOWLY_SIGNER_MASTER_KEY", MASTER_KEY);
    Server::start_command(cmd, data)
}

/// A throwaway PostgreSQL listening on `net`'s own address (which every host of it reaches,
/// and a partition can cut), with a fresh database `dbname`: the cluster, and the connection
/// string over TCP.
fn database_on(net: &Net, dbname: &str) -> (allowly_store_postgres::test_cluster::Cluster, String) {
    let cluster = allowly_store_postgres::test_cluster::Cluster::start_tcp_on(net.address(), None);
    cluster.fresh_database(dbname);
    let user = allowly_store_postgres::test_cluster::USER;
    // In plaintext: TLS to the database has tests of its own (allowly-store-postgres), and a
    // certificate would have to name this run's address.
    let conninfo =
        format!("host={} port={} user={user} dbname={dbname} sslmode=disable", net.address(), cluster.port());
    (cluster, conninfo)
}

/// `name`'s value in a Prometheus text exposition (0 if absent).
fn metric(s: &Server, name: &str) -> f64 {
    metric_in(&s.client().get("/metrics", None).text(), name).unwrap_or(0.0)
}

fn check(c: &Client, t: &Tenant, scope: &str) -> Resp {
    c.post("/v1/check", &t.checker, json!({ "authorization_id": t.az, "scopes": [scope] }))
}

/// A check that says another node forwarded it already: the node it reaches answers it itself.
fn check_marked_as_forwarded(c: &Client, t: &Tenant) -> Resp {
    let body = serde_json::to_vec(&json!({ "authorization_id": t.az, "scopes": ["files.read"] })).unwrap();
    let headers = vec![
        ("authorization".to_owned(), format!("Bearer {}", t.checker)),
        ("content-type".to_owned(), "application/json".to_owned()),
        ("allowly-forwarded-by".to_owned(), "a-test".to_owned()),
    ];
    c.request("POST", "/v1/check", &headers, Some(&body))
}

/// A read through `s`, asked again while it is refused for a moment (503 `read_timeout` on a
/// loaded machine, with these tests' short request bound), as a client would.
fn read(s: &Server, path: &str, key: Option<&str>) -> Resp {
    let c = s.client();
    eventually(
        path,
        || s.diagnostics(),
        || {
            let r = c.get(path, key);
            match r.status {
                200 => Some(r),
                503 => None,
                _ => panic!("{r}"),
            }
        },
    )
}

/// The authorization's trail as `(log index, receipt id)`, read through `s` (any node reads the
/// shared database). Every receipt of these tests' workspaces after the grant is in it.
fn log_indices(s: &Server, t: &Tenant) -> Vec<(u64, String)> {
    // Pages of 100: one read of the whole trail can outlast these tests' 1 s request bound on
    // a loaded machine, every time it is asked again.
    let mut out: Vec<(u64, String)> = Vec::new();
    let mut after = String::new();
    loop {
        let path = format!("/v1/receipts?authorization_id={}&limit=100{after}", t.az);
        let page = read(s, &path, Some(&t.reader)).json();
        out.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| (v["body"]["log_index"].as_u64().unwrap(), v["body"]["id"].as_str().unwrap().to_owned())),
        );
        if page["has_more"] != true {
            break;
        }
        after = format!("&starting_after={}", page["next_cursor"].as_str().unwrap());
    }
    out.sort();
    out
}

/// Waits until receipt `id` is signed, read through `s`.
fn signed(s: &Server, t: &Tenant, id: &str) {
    let c = s.client();
    eventually(
        &format!("receipt {id} to be signed"),
        || s.diagnostics(),
        || (c.get(&format!("/v1/receipts/{id}"), Some(&t.reader)).json()["status"] == "signed").then_some(()),
    );
}

/// The authorization's whole trail, exported through `s`, verifies offline with the real
/// `allowly-verify` against the workspace's published keys: one log, whichever node's signer
/// signed which part of it.
fn verifies_offline(s: &Server, t: &Tenant, dir: &Path, witness: Option<&Witness>) {
    let bundle = read(s, &format!("/v1/authorizations/{}/export", t.az), Some(&t.reader));
    let keys = read(s, &format!("/v1/workspaces/{}/keys", t.ws), None);
    let (bundle_file, keys_file) = (dir.join("trail.jsonl"), dir.join("keys.json"));
    std::fs::write(&bundle_file, &bundle.body).unwrap();
    std::fs::write(&keys_file, &keys.body).unwrap();
    let (code, shown) = run_verifier(&bundle_file, &keys_file, &[]);
    assert_eq!(code, Some(0), "{shown}");
    if let Some(w) = witness {
        let out = std::process::Command::new(verifier_bin())
            .arg("bundle")
            .arg(&bundle_file)
            .arg("--keys")
            .arg(&keys_file)
            .args(["--witness-key", &w.vkey, "--witness-quorum", "1"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// One log, no fork: consecutive indices from the grant's on, none twice.
fn assert_one_log(indices: &[(u64, String)]) {
    let first = indices.first().map_or(0, |(i, _)| *i);
    for (n, (index, id)) in indices.iter().enumerate() {
        assert_eq!(*index, first + n as u64, "log indices with a gap or a repeat (receipt {id}): {indices:?}");
    }
}

#[test]
fn nodes_forward_to_the_owner_and_see_its_revocations() {
    let cluster = allowly_store_postgres::test_cluster::shared();
    let conninfo = cluster.fresh_database("allowly_cluster_fwd");
    let tmp = tempfile::tempdir().unwrap();
    let a = node(&tmp.path().join("a"), &conninfo, "a", &[""; 0]);
    // The second node finds the instance admin key of the first in the database: it mints none.
    let b = node(&tmp.path().join("b"), &conninfo, "b", &[""; 0]);
    assert!(!tmp.path().join("b/admin-token").exists(), "a second node minted an admin key");
    // Created through `a`: `a` owns the workspace (its actor holds the lease).
    let t = tenant(&a, "cluster", &["files.read"]);
    let (ca, cb) = (a.client(), b.client());

    // Checks sent to `b` are decided by `a`, once each, in one log.
    let mut ids = Vec::new();
    for _ in 0..5 {
        let r = check(&cb, &t, "files.read");
        assert_eq!(r.status, 200, "{r}\n{}", b.diagnostics());
        assert_eq!(r.json()["decision"], "allow");
        ids.push(r.json()["receipt"]["receipt_id"].as_str().unwrap().to_owned());
    }
    assert!(metric(&b, "allowly_http_forwarded_total{outcome=\"answered\"}") >= 5.0, "{}", b.diagnostics());
    assert_eq!(metric(&a, "allowly_http_forwarded_total{outcome=\"answered\"}"), 0.0);
    assert_eq!(metric(&b, "allowly_engine_leases_held"), 0.0, "the forwarding node took a lease");

    // Signed by the owner's signer; readable through either node.
    let last = ids.last().unwrap().clone();
    eventually(
        "the forwarded checks' receipts to be signed",
        || a.diagnostics(),
        || (cb.get(&format!("/v1/receipts/{last}"), Some(&t.reader)).json()["status"] == "signed").then_some(()),
    );
    let log = log_indices(&b, &t);
    assert_one_log(&log);
    for id in &ids {
        assert!(log.iter().any(|(_, r)| r == id), "acknowledged receipt {id} missing from the log");
    }

    // A revocation sent to `b` is decided by the owner: every node then denies.
    let r = cb.post(&format!("/v1/authorizations/{}/revoke", t.az), &t.admin, json!({}));
    assert_eq!(r.status, 200, "{r}");
    for c in [&ca, &cb] {
        let r = check(c, &t, "files.read");
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.json()["decision"], "deny", "a node allowed a check after the revocation: {}", r.json());
    }

    // An API key revoked through one node stops working through the others too, though they
    // cached it as valid: `b` reads the trail with the read key itself (reads are not
    // forwarded), then the key is revoked through `a`.
    let key = ca.post(&format!("/v1/workspaces/{}/api-keys", t.ws), &t.admin, json!({ "roles": ["read"] }));
    let key = key.created("key");
    let (key_id, secret) = (key["id"].as_str().unwrap(), key["secret"].as_str().unwrap());
    let trail = format!("/v1/receipts?authorization_id={}&limit=1", t.az);
    assert_eq!(cb.get(&trail, Some(secret)).status, 200);
    let r = ca.post(&format!("/v1/workspaces/{}/api-keys/{key_id}/revoke", t.ws), &t.admin, json!({}));
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(ca.get(&trail, Some(secret)).status, 401, "the revoking node still takes the key");
    eventually(
        "the revoked key to be refused through the other node",
        || b.diagnostics(),
        || (cb.get(&trail, Some(secret)).status == 401).then_some(()),
    );

    // A request forwarded once is never forwarded again: two nodes that disagree about the
    // owner answer 503 instead of passing it back and forth.
    let r = check_marked_as_forwarded(&cb, &t);
    r.problem(503, "workspace_owned_elsewhere");
    assert_eq!(r.header("retry-after"), Some("1"), "{r}");
    assert!(metric(&b, "allowly_http_forwarded_total{outcome=\"already_forwarded\"}") >= 1.0);
    assert_one_log(&log_indices(&a, &t));

    // A graceful stop hands the workspace over at once (its lease released, not left to
    // lapse): the next request to `b` is decided by `b`, and `b`'s signer — after installing
    // the stored key record and adopting the stored log — signs it, extending `a`'s log.
    let mut a = a;
    a.stop();
    let r = check(&cb, &t, "files.read");
    assert_eq!(r.status, 200, "{r}\n{}", b.diagnostics());
    let id = r.json()["receipt"]["receipt_id"].as_str().unwrap().to_owned();
    signed(&b, &t, &id);
    assert!(metric(&b, "allowly_engine_leases_held") >= 1.0, "{}", b.diagnostics());
    assert_one_log(&log_indices(&b, &t));
    verifies_offline(&b, &t, tmp.path(), None);
}

#[test]
fn a_paused_owner_is_taken_over_and_its_late_writes_are_fenced() {
    let cluster = allowly_store_postgres::test_cluster::shared();
    let conninfo = cluster.fresh_database("allowly_cluster_fence");
    let tmp = tempfile::tempdir().unwrap();
    // Short leases and a short request bound: a forward to the paused owner gives up quickly.
    let mut witness = Witness::init(tmp.path(), "witness.test/s");
    let args = witnessed(&FAST, &witness);
    let a = node(&tmp.path().join("a"), &conninfo, "a", &args);
    let b = node(&tmp.path().join("b"), &conninfo, "b", &args);
    let t = tenant(&a, "fenced", &["files.read"]);
    witness.start(&[(&a, &t)]);
    let (ca, cb) = (a.client(), b.client());
    let first = check(&ca, &t, "files.read");
    assert_eq!(first.status, 200, "{first}");

    // The owner stops (a long GC pause, a frozen VM) with its workspace actor loaded.
    a.signal(rustix::process::Signal::STOP);
    // `b` forwards to `a` while `a`'s lease lasts (503: `a` does not answer), then takes the
    // workspace over once it has lapsed, and decides itself.
    let taken = eventually(
        "the second node to take the workspace over",
        || b.diagnostics(),
        || {
            let r = check(&cb, &t, "files.read");
            match r.status {
                200 => Some(r.json()),
                // Mostly `workspace_owned_elsewhere` (the owner does not answer); on a loaded
                // machine also the node's own transient refusals. Never acknowledged.
                503 if r.header("retry-after").is_some() => None,
                _ => panic!("unexpected answer while the owner is paused: {r}"),
            }
        },
    );
    assert_eq!(taken["decision"], "allow");
    let after_takeover = log_indices(&b, &t);
    assert_one_log(&after_takeover);

    // The former owner wakes up still holding the workspace's state and its old epoch. Asked
    // directly (marked as forwarded, so it answers itself), its write is fenced: refused,
    // nothing written.
    // Just woken, it may first fail closed on its own (its pause looked like a stalled data
    // volume or signer: `storage_slow`, `signer_slow`, with `Retry-After`) until its health task
    // sees otherwise; never a 200, and then the fence.
    a.signal(rustix::process::Signal::CONT);
    eventually(
        "the former owner's write to be fenced",
        || a.diagnostics(),
        || {
            let late = check_marked_as_forwarded(&ca, &t);
            assert_eq!(late.status, 503, "the former owner answered a late write: {late}");
            assert!(late.header("retry-after").is_some(), "{late}");
            (late.json()["code"] == "workspace_owned_elsewhere").then_some(())
        },
    );
    assert_eq!(log_indices(&b, &t), after_takeover, "the fenced owner appended to the log");
    assert!(a.stderr().contains("fenced"), "no fenced write logged by the former owner\n{}", a.diagnostics());

    // An ordinary request to the former owner is now forwarded to the new one.
    let r = check(&ca, &t, "files.read");
    assert_eq!(r.status, 200, "{r}\n{}", a.diagnostics());
    let log = log_indices(&b, &t);
    assert_one_log(&log);
    assert_eq!(log.len(), after_takeover.len() + 1, "{log:?}");

    // The new owner's signer continues the log the old one signed: every receipt is signed,
    // and the whole trail verifies offline as one log.
    signed(&b, &t, r.json()["receipt"]["receipt_id"].as_str().unwrap());
    verifies_offline(&b, &t, tmp.path(), Some(&witness));
    assert!(witness.requests("cosigned") > 0, "the witness cosigned nothing");
}

/// Lease and request bounds short enough for a takeover within a test's deadline.
const FAST: [&str; 4] = ["--lease-ttl-ms", "1500", "--commit-timeout-ms", "1000"];

/// `base`, and every checkpoint submitted to `w` with a quorum of one: a receipt is reported
/// signed only once `w` cosigned a checkpoint covering it, and `w` cosigns only checkpoints
/// consistent with the last it cosigned — so every receipt signed after a fault means every
/// checkpoint it saw extended the one before, and no fork was cosigned.
fn witnessed(base: &[&str], w: &Witness) -> Vec<String> {
    let witnessed = ["--witness", &w.arg(), "--witness-quorum", "1", "--witness-timeout-ms", "500"];
    base.iter().copied().chain(witnessed).map(str::to_owned).collect()
}

/// What a load run got: every acknowledged check's receipt id, per tenant.
type Acked = std::sync::Arc<std::sync::Mutex<Vec<Vec<String>>>>;

/// Checks spread round robin over `tenants` and `addrs` (some of which may be dead) by
/// `threads` clients until `stop`; every 200's receipt id is recorded under its tenant.
fn load(
    tenants: &[Tenant],
    addrs: &[std::net::SocketAddr],
    threads: usize,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (Acked, Vec<std::thread::JoinHandle<()>>) {
    let acked: Acked = std::sync::Arc::new(std::sync::Mutex::new(vec![Vec::new(); tenants.len()]));
    let body = |t: &Tenant| serde_json::to_vec(&json!({ "authorization_id": t.az, "scopes": ["files.read"] })).unwrap();
    let work: Vec<(String, Vec<u8>)> = tenants.iter().map(|t| (t.checker.clone(), body(t))).collect();
    let handles = (0..threads)
        .map(|n| {
            let (acked, stop, work, addrs) = (acked.clone(), stop.clone(), work.clone(), addrs.to_vec());
            std::thread::spawn(move || {
                let mut i = n;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (tenant, addr) = (i % work.len(), addrs[(i / work.len()) % addrs.len()]);
                    i += 1;
                    let (key, body) = &work[tenant];
                    // A dead node refuses the connection: not acknowledged, nothing to check.
                    let Some(r) = try_request(addr, "POST", "/v1/check", key, body) else { continue };
                    match r.status {
                        200 => {
                            let id = r.json()["receipt"]["receipt_id"].as_str().unwrap().to_owned();
                            acked.lock().unwrap()[tenant].push(id);
                        }
                        // Not acknowledged: the owner is gone or unreachable, the workspace is
                        // moving, or a request was cut; nothing was promised.
                        503 | 429 => {}
                        _ => panic!("unexpected answer under load: {r}"),
                    }
                }
            })
        })
        .collect();
    (acked, handles)
}

/// After a fault: every acknowledged receipt is in its workspace's one log (no gap, no
/// repeat), gets signed, and each trail verifies offline; read through `s`. With `witness`,
/// the trail must also verify under the policy "cosigned by it" (a fork would not be).
fn nothing_lost(s: &Server, tenants: &[Tenant], acked: &Acked, dir: &Path, witness: Option<&Witness>) {
    let acked = acked.lock().unwrap().clone();
    for (t, ids) in tenants.iter().zip(&acked) {
        let log = log_indices(s, t);
        assert_one_log(&log);
        for id in ids {
            assert!(log.iter().any(|(_, r)| r == id), "acknowledged receipt {id} of {} is missing", t.ws);
        }
        if let Some((_, last)) = log.last() {
            signed(s, t, last);
        }
        verifies_offline(s, t, dir, witness);
        assert!(every_checkpoint_is_of_one_log(s, t, dir) >= 1, "no checkpoint of {} was walked", t.ws);
    }
}

/// Every checkpoint any node stored for `t`'s workspace, as the nodes' checkpoint logs kept
/// them (outside the database, which a late write could have rewritten), is a head of the one
/// log: the whole log, exported through `s`, verifies offline against each of them, which no
/// two checkpoints of a fork could both pass. Returns how many distinct checkpoints it walked.
fn every_checkpoint_is_of_one_log(s: &Server, t: &Tenant, dir: &Path) -> usize {
    let mut notes = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path().join(CHECKPOINT_LOG);
        if !path.is_file() {
            continue;
        }
        // A line a kill cut short is not JSON: skipped (its checkpoint is appended again).
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if v["workspace_id"] == t.ws.as_str() {
                let note = v["checkpoint"].as_str().unwrap().to_owned();
                notes.insert(note, v["size"].as_u64().unwrap());
            }
        }
    }
    let Some(&size) = notes.values().max() else { return 0 };
    let walk = dir.join(format!("walk-{}", t.ws));
    std::fs::create_dir_all(&walk).unwrap();
    let export = read(s, &format!("/v1/workspaces/{}/log/export?from=0&to={size}", t.ws), Some(&t.reader));
    let keys = read(s, &format!("/v1/workspaces/{}/keys", t.ws), None);
    let (bundle, keys_file) = (walk.join("log.jsonl"), walk.join("keys.json"));
    std::fs::write(&bundle, &export.body).unwrap();
    std::fs::write(&keys_file, &keys.body).unwrap();
    let files: Vec<std::path::PathBuf> = notes
        .keys()
        .enumerate()
        .map(|(i, note)| {
            let f = walk.join(format!("checkpoint-{i}"));
            std::fs::write(&f, note).unwrap();
            f
        })
        .collect();
    let (code, shown) = run_verifier(&bundle, &keys_file, &files);
    assert_eq!(code, Some(0), "a stored checkpoint is not a head of the one log\n{shown}");
    files.len()
}

#[test]
fn three_nodes_lose_one_to_kill_9_under_load_and_lose_nothing() {
    let cluster = allowly_store_postgres::test_cluster::shared();
    let conninfo = cluster.fresh_database("allowly_cluster_kill");
    let tmp = tempfile::tempdir().unwrap();
    let mut witness = Witness::init(tmp.path(), "witness.test/k");
    // Short leases; the default request bound (a dead node refuses connections at once, and
    // the trail reads after the fault need more than 1 s on a loaded machine).
    let args = witnessed(&["--lease-ttl-ms", "1500"], &witness);
    let ports = [free_port(), free_port(), free_port()];
    let start = |i: usize| {
        let (name, port) = (["a", "b", "c"][i], ports[i]);
        node_at(&tmp.path().join(name), &conninfo, name, &args, port, &format!("http://127.0.0.1:{port}"))
    };
    let mut nodes: Vec<Server> = (0..3).map(start).collect();
    // Each node owns some workspaces (the node that creates a workspace's keys starts its actor).
    let root = nodes[0].admin_token();
    let tenants = vec![
        tenant(&nodes[0], "on a 1", &["files.read"]),
        tenant(&nodes[0], "on a 2", &["files.read"]),
        tenant_as(&nodes[1], &root, "on b", &["files.read"]),
        tenant_as(&nodes[2], &root, "on c", &["files.read"]),
    ];
    witness.start(&tenants.iter().map(|t| (&nodes[0], t)).collect::<Vec<_>>());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addrs: Vec<std::net::SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let (acked, handles) = load(&tenants, &addrs, 4, &stop);
    let count = |acked: &Acked| acked.lock().unwrap().iter().map(Vec::len).collect::<Vec<_>>();
    eventually(
        "checks acknowledged on every workspace",
        || nodes[0].diagnostics(),
        || count(&acked).iter().all(|&n| n >= 10).then_some(()),
    );
    // The soak tier, by hand (docs/scale-out.md): `ALLOWLY_CLUSTER_SOAK_ROUNDS=N` kills a node
    // N times in turn, each restarted (a new node id, its old data directory) before the next
    // kill. The default suite runs the first round: node a, owning two workspaces, dies.
    let rounds: usize = std::env::var("ALLOWLY_CLUSTER_SOAK_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let mut last = 0;
    for round in 0..rounds.max(1) {
        let victim = round % 3;
        // kill -9, with checks in flight on it.
        nodes[victim].kill9();
        let before = count(&acked);
        // The other nodes take its workspaces over once its leases lapse, and go on.
        let survivor = (victim + 1) % 3;
        eventually(
            &format!("every workspace to be checked again after kill {} (node {victim})", round + 1),
            || nodes[survivor].diagnostics(),
            || count(&acked).iter().zip(&before).all(|(now, then)| *now >= then + 10).then_some(()),
        );
        if round + 1 < rounds {
            nodes[victim] = start(victim);
        }
        last = survivor;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    nothing_lost(&nodes[last], &tenants, &acked, tmp.path(), Some(&witness));
    assert!(witness.requests("cosigned") > 0, "the witness cosigned nothing");
}

/// A partition between one node and the database, on a real network: each node in a network
/// namespace of its own, the database on the network's bridge, and the node's packets to and
/// from the database dropped (nftables) while they are cut.
#[test]
fn a_node_cut_off_from_the_database_is_fenced_when_it_comes_back() {
    let net = Net::new();
    let (_cluster, conninfo) = database_on(&net, "allowly_cluster_partition");
    let db_port = _cluster.port();
    let tmp = tempfile::tempdir().unwrap();
    // Both nodes submit every checkpoint to one C2SP witness and report a receipt signed only
    // once it cosigned: it cosigns only checkpoints consistent with the last it cosigned, so a
    // fork would never be.
    let mut witness = Witness::init_on(tmp.path(), "witness.test/w", net.address());
    let args = witnessed(&FAST, &witness);
    let (host_a, host_b) = (net.host("a"), net.host("b"));
    let a = node_on(&host_a, &tmp.path().join("a"), &conninfo, "a", &args);
    let b = node_on(&host_b, &tmp.path().join("b"), &conninfo, "b", &args);
    let t = tenant(&a, "partitioned", &["files.read"]);
    witness.start(&[(&a, &t)]);
    let tenants = vec![t];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (acked, handles) = load(&tenants, &[a.addr, b.addr], 2, &stop);
    let count = |acked: &Acked| acked.lock().unwrap()[0].len();
    eventually("checks acknowledged", || a.diagnostics(), || (count(&acked) >= 10).then_some(()));

    // The partition: what `a` sends the database is lost, and so is what the database sends
    // `a`; neither side is told. `a` cannot renew its lease; `b` takes the workspace over once
    // it lapsed and goes on acknowledging checks.
    assert_eq!(metric(&b, "allowly_engine_leases_held"), 0.0, "{}", b.diagnostics());
    host_a.cut(net.address(), Some(db_port));
    let during = count(&acked);
    eventually(
        "the other node to take the workspace over",
        || b.diagnostics(),
        || (metric(&b, "allowly_engine_leases_held") >= 1.0 && count(&acked) >= during + 10).then_some(()),
    );
    // Healed: what `a` retransmits reaches the database late, at its old lease epoch: fenced,
    // and `a` learns it lost the workspace.
    host_a.heal();
    eventually(
        "the cut-off node to learn it lost the workspace",
        || a.diagnostics(),
        || {
            let log = a.stderr();
            (log.contains("another node took the workspace over") || log.contains("a group was fenced")).then_some(())
        },
    );
    let healed = count(&acked);
    eventually(
        "checks through both nodes after the partition",
        || a.diagnostics(),
        || (count(&acked) >= healed + 10).then_some(()),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    nothing_lost(&b, &tenants, &acked, tmp.path(), Some(&witness));
    assert!(witness.requests("cosigned") > 0, "the witness cosigned nothing");
    drop(a);
}

/// A workspace where `payments.*` escalates, made through `s` (which then owns it): its admin
/// and read keys, and a pending escalation's id.
fn pending_escalation(s: &Server) -> (Tenant, String) {
    let (c, root) = (s.client(), s.admin_token());
    let rules = json!({ "payments.*": "escalate" });
    let ws = c.post("/v1/workspaces", &root, json!({ "name": "inbox", "scope_rules": rules })).created("workspace")
        ["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = |role: &str| {
        let v = c.post(&format!("/v1/workspaces/{ws}/api-keys"), &root, json!({ "roles": [role] })).created("key");
        (v["id"].as_str().unwrap().to_owned(), v["secret"].as_str().unwrap().to_owned())
    };
    let ((_, admin), (reader_id, reader), (_, checker)) = (key("admin"), key("read"), key("check"));
    let v = c.post("/v1/authorizations", &admin, json!({ "subject": "u", "scopes": ["payments.*"] }));
    let az = v.created("grant")["authorization"]["id"].as_str().unwrap().to_owned();
    let t = Tenant { ws, admin, reader, reader_id, checker, az };
    let r = check(&c, &t, "payments.send");
    assert_eq!(r.status, 200, "{r}");
    let esc = r.json()["escalation"]["id"].as_str().unwrap().to_owned();
    (t, esc)
}

/// A long-poll waits where the workspace's decisions are made, since only the owner's commits
/// wake it: sent to another node it is forwarded to the owner and held there for its whole
/// wait (not cut at the usual request bound), and the owner's resolution — itself sent through
/// the other node — ends it at once, long before its wait is over.
#[test]
fn a_long_poll_through_another_node_waits_at_the_owner_and_its_resolution_ends_it() {
    let cluster = allowly_store_postgres::test_cluster::shared();
    let conninfo = cluster.fresh_database("allowly_cluster_poll");
    let tmp = tempfile::tempdir().unwrap();
    // One long-poll at a time on the owner: a probe refused there means the forwarded one waits.
    let a = node(&tmp.path().join("a"), &conninfo, "a", &["--max-long-polls", "1"]);
    let b = node(&tmp.path().join("b"), &conninfo, "b", &[""; 0]);
    let (t, esc) = pending_escalation(&a);
    let wait = std::time::Duration::from_secs(50);
    std::thread::scope(|scope| {
        let (cb, reader, path) = (b.client(), t.reader.clone(), format!("/v1/escalations/{esc}?wait=50s"));
        let waiter = scope.spawn(move || {
            // A probe below may hold the owner's one slot for a moment: a refused long-poll
            // asks again (each refusal is immediate), until it waits.
            let start = std::time::Instant::now();
            loop {
                let r = cb.get(&path, Some(&reader));
                if r.status != 503 || start.elapsed() > DEADLINE {
                    return (std::time::Instant::now(), r);
                }
            }
        });
        eventually(
            "the long-poll sent to the other node to wait at the owner",
            || format!("{}\n{}", a.diagnostics(), b.diagnostics()),
            || {
                let r = a.client().get(&format!("/v1/escalations/{esc}?wait=1ms"), Some(&t.reader));
                (r.status == 503 && r.json()["code"] == "too_many_long_polls").then_some(())
            },
        );
        let r = b.client().post(
            &format!("/v1/escalations/{esc}/resolve"),
            &t.admin,
            json!({ "outcome": "declined", "by": "alice" }),
        );
        let resolved = std::time::Instant::now();
        assert_eq!(r.status, 200, "{r}");
        let (answered, r) = waiter.join().unwrap();
        assert_eq!(r.status, 200, "{r}");
        assert_eq!((r.json()["status"].as_str(), r.json()["by"].as_str()), (Some("declined"), Some("alice")), "{r}");
        let late = answered.saturating_duration_since(resolved);
        assert!(late < wait / 2, "the long-poll answered {late:?} after the resolution: it waited out its wait");
    });
    assert!(metric(&b, "allowly_http_forwarded_total{outcome=\"answered\"}") >= 2.0, "{}", b.diagnostics());
    assert_eq!(metric(&b, "allowly_engine_leases_held"), 0.0, "the forwarding node took the workspace");
}

/// Every node runs a webhook worker over the one outbox, but only the workspace's owner makes
/// its deliveries: while the owner's attempt is in flight (the receiver holds it), the other
/// node finds the delivery due and leaves it to the owner (counted) instead of sending it a
/// second time; once the owner is killed, the node that takes the workspace over makes the
/// attempt again (at least once, the same `webhook-id`) and records it delivered.
#[test]
fn webhooks_are_delivered_by_the_workspace_owner_only() {
    let cluster = allowly_store_postgres::test_cluster::shared();
    let conninfo = cluster.fresh_database("allowly_cluster_hooks");
    let tmp = tempfile::tempdir().unwrap();
    let hooks = ["--webhook-allow-private-networks", "--webhook-attempt-timeout-ms", "60000"];
    let args: Vec<&str> = FAST.iter().copied().chain(hooks).collect();
    let mut a = node(&tmp.path().join("a"), &conninfo, "a", &args);
    let b = node(&tmp.path().join("b"), &conninfo, "b", &args);
    let t = tenant(&a, "hooks", &["files.read"]);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let r = a.client().post("/v1/webhooks", &t.admin, json!({ "url": url, "events": ["authorization.revoked"] }));
    let hook = r.created("webhook");
    let (hook_id, secret) = (hook["id"].as_str().unwrap().to_owned(), hook["secret"].as_str().unwrap().to_owned());
    let rx =
        crate::webhooks::Receiver::start(tmp.path(), "hooks", &secret, port, &["--hang", "1", "--hang-secs", "300"]);

    // The event, decided by the owner: its attempt reaches the receiver, which holds it.
    let r = a.client().call("POST", &format!("/v1/authorizations/{}/revoke", t.az), Some(&t.admin), None);
    assert_eq!(r.status, 200, "{r}");
    eventually(
        "the owner's attempt",
        || format!("{}\n{}", a.diagnostics(), rx.dump()),
        || (!rx.records().is_empty()).then_some(()),
    );
    // The other node's worker scans the outbox at least every 5 s: it has found the delivery
    // due once it says it left it to the owner (or once it sent it too).
    eventually(
        "the other node to find the due delivery",
        || format!("{}\n{}", b.diagnostics(), rx.dump()),
        || {
            let left = metric(&b, "allowly_webhook_attempts_left_to_owner_total") >= 1.0;
            (left || rx.records().len() > 1).then_some(())
        },
    );
    assert_eq!(rx.records().len(), 1, "a node that does not own the workspace sent its delivery\n{}", rx.dump());

    // The owner dies with its attempt in flight: the node that takes the workspace over makes
    // the attempt again.
    a.kill9();
    let delivered = eventually(
        "the new owner to deliver",
        || format!("{}\n{}", b.diagnostics(), rx.dump()),
        || {
            let r = b.client().get(&format!("/v1/webhooks/{hook_id}/deliveries"), Some(&t.reader));
            let d = r.json()["data"].as_array().cloned().unwrap_or_default();
            (d.len() == 1 && d[0]["status"] == "delivered").then(|| d[0].clone())
        },
    );
    let records = rx.records();
    assert_eq!(records.len(), 2, "{}", rx.dump());
    assert_eq!(records[0]["webhook_id"], records[1]["webhook_id"], "{}", rx.dump());
    assert_eq!((records[0]["response"].as_str(), records[1]["response"].as_u64()), (Some("hang"), Some(204)));
    assert!(records.iter().all(|r| r["verified"] == true), "{}", rx.dump());
    // The dead owner's attempt was never recorded; the new owner's is the one.
    assert_eq!(delivered["attempts"], 1, "{delivered}");
}

/// A `socat` between two addresses (a TLS terminator or bridge), killed on drop; started once
/// it listens on `port`. Its stderr goes to `socat.log` in `dir`: the refusals some tests
/// provoke are expected.
struct Socat(std::process::Child);

impl Socat {
    fn start(listen: String, to: String, port: u16, dir: &Path) -> Socat {
        let child = std::process::Command::new("socat")
            .args([listen, to])
            .stdin(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("socat.log")).unwrap())
            .spawn()
            .expect("socat (scripts/setup.sh installs it)");
        let socat = Socat(child);
        eventually("socat to listen", String::new, || std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(drop));
        socat
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The same with the owner terminating TLS itself (`--tls-cert-file`, `--tls-key-file`):
/// no terminator in front of it, it advertises `https://` and speaks nothing else. The test's
/// own plain-HTTP client reaches it through a TLS bridge (socat's OpenSSL client, verifying
/// the test CA), only to set the workspace up there.
#[test]
fn nodes_forward_over_tls_to_an_owner_that_terminates_it_itself() {
    let cluster = allowly_store_postgres::test_cluster::shared();
    let conninfo = cluster.fresh_database("allowly_cluster_tls_native");
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = manifest_dir().join("tests/it/fixtures");
    let (cert, key, ca) =
        (fixtures.join("tls-server.pem"), fixtures.join("tls-server.key"), fixtures.join("tls-ca.pem"));
    let (b_port, bridge_port) = (free_port(), free_port());
    let tls = ["--tls-cert-file".as_ref(), cert.as_os_str(), "--tls-key-file".as_ref(), key.as_os_str()];
    let b_url = format!("https://127.0.0.1:{b_port}");
    let b_listen = format!("127.0.0.1:{b_port}");
    let cmd = std::process::Command::new(allowly_bin());
    let b = node_command(cmd, &tmp.path().join("b"), &conninfo, "b", &tls, &b_listen, &b_url);
    assert_eq!(b.addr.port(), b_port);
    let _bridge = Socat::start(
        format!("TCP-LISTEN:{bridge_port},bind=127.0.0.1,reuseaddr,fork"),
        format!("OPENSSL:127.0.0.1:{b_port},cafile={}", ca.display()),
        bridge_port,
        tmp.path(),
    );
    let via = Client { addr: ([127, 0, 0, 1], bridge_port).into() };
    eventually(
        "the owner to be ready, over TLS",
        || b.diagnostics(),
        || (via.get("/readyz", None).status == 200).then_some(()),
    );
    let t = tenant_through(&via, &b.admin_token(), "tls itself", &["files.read"]);
    only_a_node_trusting_the_owner_forwards_to_it(tmp.path(), &conninfo, &ca, &t);
}

/// Two nodes cut off from each other, both still reaching the database: the owner keeps its
/// workspace and goes on deciding; the cut-off node never takes the workspace (the owner's
/// lease is live) and never decides for it — what it forwards gets no answer, so it answers
/// 503 `workspace_owned_elsewhere` — and once the link heals it forwards again. One log
/// throughout, every acknowledged receipt in it.
#[test]
fn nodes_cut_off_from_each_other_refuse_rather_than_fork() {
    // Each node in a network namespace of its own; the partition drops every packet between
    // the two (nftables in `a`'s namespace), both still reaching the database.
    let net = Net::new();
    let (_cluster, conninfo) = database_on(&net, "allowly_cluster_split");
    let tmp = tempfile::tempdir().unwrap();
    let (host_a, host_b) = (net.host("a"), net.host("b"));
    let b = node_on(&host_b, &tmp.path().join("b"), &conninfo, "b", &FAST);
    let a = node_on(&host_a, &tmp.path().join("a"), &conninfo, "a", &FAST);
    let t = tenant(&b, "split", &["files.read"]);
    let (ca, cb) = (a.client(), b.client());
    let mut acked = Vec::new();
    let mut ack = |r: Resp| {
        assert_eq!(r.status, 200, "{r}");
        acked.push(r.json()["receipt"]["receipt_id"].as_str().unwrap().to_owned());
    };
    ack(check(&ca, &t, "files.read"));

    host_a.cut(host_b.addr, None);
    for _ in 0..2 {
        check(&ca, &t, "files.read").problem(503, "workspace_owned_elsewhere");
        ack(check(&cb, &t, "files.read"));
    }
    assert_eq!(metric(&a, "allowly_engine_leases_held"), 0.0, "the cut-off node took the workspace");
    assert!(metric(&a, "allowly_http_forwarded_total{outcome=\"unreachable\"}") >= 2.0, "{}", a.diagnostics());

    host_a.heal();
    let r = eventually(
        "the cut-off node to forward again",
        || a.diagnostics(),
        || Some(check(&ca, &t, "files.read")).filter(|r| r.status == 200),
    );
    ack(r);
    ack(check(&cb, &t, "files.read"));
    let log = log_indices(&b, &t);
    assert_one_log(&log);
    for id in &acked {
        assert!(log.iter().any(|(_, r)| r == id), "acknowledged receipt {id} missing from the log");
    }
    let last = acked.last().unwrap();
    signed(&b, &t, last);
    verifies_offline(&b, &t, tmp.path(), None);
}

/// A key rotation on one node, then the workspace handed to another: the new owner's signer
/// installs the stored key record as rotated (old key retired, new key current), signs with the
/// new key, and the whole trail — receipts signed before and after the rotation, by two nodes'
/// signers — verifies offline against the published key set, as one log.
#[test]
fn a_rotated_key_moves_with_the_workspace() {
    let cluster = allowly_store_postgres::test_cluster::shared();
    let conninfo = cluster.fresh_database("allowly_cluster_rotation");
    let tmp = tempfile::tempdir().unwrap();
    let mut a = node(&tmp.path().join("a"), &conninfo, "a", &[""; 0]);
    let b = node(&tmp.path().join("b"), &conninfo, "b", &[""; 0]);
    let t = tenant(&a, "rotated", &["files.read"]);
    let (ca, cb) = (a.client(), b.client());
    let before = check(&ca, &t, "files.read");
    assert_eq!(before.status, 200, "{before}");
    // Sent to `b`: forwarded to the owner, which rotates and stores the new key record.
    let r = cb.call("POST", &format!("/v1/workspaces/{}/keys/rotate", t.ws), Some(&t.admin), None);
    assert_eq!(r.status, 200, "{r}\n{}", a.diagnostics());
    let rotation = r.json()["receipt"]["body"].clone();
    let new_key = rotation["key"]["key_id"].as_str().unwrap().to_owned();
    assert_ne!(rotation["key"]["replaces"], new_key.as_str(), "{rotation}");

    // The owner stops: `b` takes the workspace over and signs with the rotated key.
    a.stop();
    let after = check(&cb, &t, "files.read");
    assert_eq!(after.status, 200, "{after}\n{}", b.diagnostics());
    let id = after.json()["receipt"]["receipt_id"].as_str().unwrap().to_owned();
    signed(&b, &t, &id);
    let receipt = read(&b, &format!("/v1/receipts/{id}"), Some(&t.reader)).json();
    let by = crate::rotation::signing_key_id(receipt["checkpoint"].as_str().unwrap());
    assert_eq!(by, new_key, "the new owner signed with another key than the rotated one: {receipt}");
    assert!(metric(&b, "allowly_engine_leases_held") >= 1.0, "{}", b.diagnostics());
    // The authorization's trail skips the rotation's receipt (a workspace receipt): the whole
    // log, exported, verifies against every checkpoint either node stored.
    verifies_offline(&b, &t, tmp.path(), None);
    let size = receipt["checkpoint"].as_str().unwrap().lines().nth(1).unwrap().to_owned();
    let line = format!("\"size\":{size},\"workspace_id\":\"{}\"", t.ws);
    eventually(
        "b's checkpoint log to hold the checkpoint it signed",
        || b.diagnostics(),
        || {
            let text = std::fs::read_to_string(tmp.path().join("b").join(CHECKPOINT_LOG)).unwrap_or_default();
            text.contains(&line).then_some(())
        },
    );
    assert!(every_checkpoint_is_of_one_log(&b, &t, tmp.path()) >= 2);
}

/// A node that advertises `https://` is reached over TLS: its owner sits behind a real TLS
/// terminator (socat's OpenSSL listener, with the test CA's certificate for 127.0.0.1). A node
/// given that CA (`--cluster-ca-file`) forwards to it and relays the owner's answer; a node
/// trusting only the Mozilla roots refuses the certificate, sends nothing (the request, and
/// the bearer key it carries, never leave over a connection it cannot verify) and answers 503
/// `workspace_owned_elsewhere` without deciding.
#[test]
fn nodes_forward_over_tls_to_an_owner_behind_a_terminator() {
    let cluster = allowly_store_postgres::test_cluster::shared();
    let conninfo = cluster.fresh_database("allowly_cluster_tls");
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = manifest_dir().join("tests/it/fixtures");
    let (b_port, tls_port) = (free_port(), free_port());
    let listen = format!(
        "OPENSSL-LISTEN:{tls_port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
        fixtures.join("tls-server.pem").display(),
        fixtures.join("tls-server.key").display()
    );
    let _socat = Socat::start(listen, format!("TCP:127.0.0.1:{b_port}"), tls_port, tmp.path());
    let b = node_at(&tmp.path().join("b"), &conninfo, "b", &[""; 0], b_port, &format!("https://127.0.0.1:{tls_port}"));
    let t = tenant(&b, "behind tls", &["files.read"]);
    only_a_node_trusting_the_owner_forwards_to_it(tmp.path(), &conninfo, &fixtures.join("tls-ca.pem"), &t);
}

/// With `t`'s workspace owned by a node advertising `https://`: a node given `ca` (which
/// issued the owner's certificate) forwards a check and relays the owner's answer; a node
/// trusting only the Mozilla roots answers 503 `workspace_owned_elsewhere`, takes nothing, and
/// its log names the certificate. One log: the grant and the one check forwarded.
fn only_a_node_trusting_the_owner_forwards_to_it(dir: &Path, conninfo: &str, ca: &Path, t: &Tenant) {
    let a = node(&dir.join("a"), conninfo, "a", &["--cluster-ca-file".as_ref(), ca.as_os_str()]);
    let c = node(&dir.join("c"), conninfo, "c", &[""; 0]);
    let r = check(&a.client(), t, "files.read");
    assert_eq!((r.status, r.json()["decision"].as_str()), (200, Some("allow")), "{r}\n{}", a.diagnostics());
    assert!(metric(&a, "allowly_http_forwarded_total{outcome=\"answered\"}") >= 1.0, "{}", a.diagnostics());

    check(&c.client(), t, "files.read").problem(503, "workspace_owned_elsewhere");
    assert!(metric(&c, "allowly_http_forwarded_total{outcome=\"unreachable\"}") >= 1.0, "{}", c.diagnostics());
    assert_eq!(metric(&c, "allowly_engine_leases_held"), 0.0, "the node that could not verify the owner took over");
    assert!(c.stderr().contains("certificate"), "the refusal names the certificate:\n{}", c.stderr());
    // Read through `a`: any node reads the shared database.
    let log = log_indices(&a, t);
    assert_one_log(&log);
    assert_eq!(log.len(), 2, "the grant and the one check forwarded over TLS: {log:?}");
}

/// The partition tests' network does what they rely on: a cut host's packets are dropped
/// silently (a connection attempt is neither accepted nor refused: it times out), only those of
/// the cut port when a port is named, and a heal lets them through again.
#[test]
fn a_cut_on_the_test_network_drops_packets_silently_until_healed() {
    let net = Net::new();
    let (a, b) = (net.host("a"), net.host("b"));
    let port = free_port();
    let mut listener = a
        .command("socat")
        .args([format!("TCP-LISTEN:{port},bind={},fork,reuseaddr", a.addr).as_str(), "EXEC:cat"])
        .spawn()
        .expect("socat");
    // bash's exit status connecting from `b` to `a`: 0 connected, 1 refused, 124 `timeout`
    // ended the wait (the SYN went unanswered).
    let connect = |seconds: &str| {
        b.command("timeout")
            .args([seconds, "bash", "-c", &format!("exec 3<>/dev/tcp/{}/{port}", a.addr)])
            .status()
            .expect("bash")
            .code()
    };
    eventually("the listener", String::new, || (connect("5") == Some(0)).then_some(()));
    b.cut(a.addr, Some(port + 1));
    assert_eq!(connect("5"), Some(0), "a cut of another port cut this one");
    b.heal();
    b.cut(a.addr, None);
    assert_eq!(connect("1"), Some(124), "a cut host answered");
    b.heal();
    assert_eq!(connect("5"), Some(0), "a healed host was unreachable");
    let _ = listener.kill();
    let _ = listener.wait();
}
