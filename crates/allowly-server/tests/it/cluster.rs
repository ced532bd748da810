//! Several `allowly serve` nodes over one real PostgreSQL (issue 16 parts 2 and 3,
//! docs/scale-out.md), each with its own signer, the signers sharing a master key: one owner per
//! workspace, requests forwarded to it, revocations visible through every node, a paused
//! owner's late writes refused by the lease epoch (fencing) after another node took the
//! workspace over, and the new owner's signer continuing the log the old one signed, so the
//! trail verifies offline as one log.

use crate::support::*;
use serde_json::json;
use std::path::Path;

/// The master key every node's signer shares (provisioned per node in production, as
/// `ALLOWLY_SIGNER_MASTER_KEY` or a key file): a workspace's sealed key then opens in whichever
/// node's signer takes the workspace over.
const MASTER_KEY: &str = "6a1f0c5e9b3d47a28e1f6c0d9b2a4e7f3c8d1b6a0e9f2c5d8b4a7e1f0c3d6b9a";

/// A node `name` of a cluster on `conninfo`, on a port of its own that it advertises.
fn node(data: &Path, conninfo: &str, name: &str, extra: &[&str]) -> Server {
    signer_bin();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let advertise = format!("http://{listen}");
    let mut cmd = std::process::Command::new(allowly_bin());
    cmd.arg("serve").arg("--data-dir").arg(data);
    cmd.args(["--listen", &listen, "--postgres", conninfo, "--node-name", name, "--advertise-url", &advertise]);
    cmd.args(extra);
    cmd.env("ALLOWLY_SIGNER_MASTER_KEY", MASTER_KEY);
    let s = Server::start_command(cmd, data);
    s.wait_ready();
    s
}

/// `name`'s value in a Prometheus text exposition (0 if absent).
fn metric(s: &Server, name: &str) -> f64 {
    let text = s.client().get("/metrics", None).text();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
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

/// The authorization's trail as `(log index, receipt id)`, read through `s` (any node reads the
/// shared database). Every receipt of these tests' workspaces after the grant is in it.
fn log_indices(s: &Server, t: &Tenant) -> Vec<(u64, String)> {
    let r = s.client().get(&format!("/v1/receipts?authorization_id={}&limit=1000", t.az), Some(&t.reader));
    assert_eq!(r.status, 200, "{r}");
    let page = r.json();
    assert_eq!(page["has_more"], false, "{page}");
    let mut out: Vec<(u64, String)> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["body"]["log_index"].as_u64().unwrap(), v["body"]["id"].as_str().unwrap().to_owned()))
        .collect();
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
fn verifies_offline(s: &Server, t: &Tenant, dir: &Path) {
    let c = s.client();
    let bundle = c.get(&format!("/v1/authorizations/{}/export", t.az), Some(&t.reader));
    assert_eq!(bundle.status, 200, "{bundle}");
    let keys = c.get(&format!("/v1/workspaces/{}/keys", t.ws), None);
    let (bundle_file, keys_file) = (dir.join("trail.jsonl"), dir.join("keys.json"));
    std::fs::write(&bundle_file, &bundle.body).unwrap();
    std::fs::write(&keys_file, &keys.body).unwrap();
    let (code, shown) = run_verifier(&bundle_file, &keys_file, &[]);
    assert_eq!(code, Some(0), "{shown}");
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
    let a = node(&tmp.path().join("a"), &conninfo, "a", &[]);
    // The second node finds the instance admin key of the first in the database: it mints none.
    let b = node(&tmp.path().join("b"), &conninfo, "b", &[]);
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
    verifies_offline(&b, &t, tmp.path());
}

#[test]
fn a_paused_owner_is_taken_over_and_its_late_writes_are_fenced() {
    let cluster = allowly_store_postgres::test_cluster::shared();
    let conninfo = cluster.fresh_database("allowly_cluster_fence");
    let tmp = tempfile::tempdir().unwrap();
    // Short leases and a short request bound: a forward to the paused owner gives up quickly.
    let fast = ["--lease-ttl-ms", "1500", "--commit-timeout-ms", "1000"];
    let a = node(&tmp.path().join("a"), &conninfo, "a", &fast);
    let b = node(&tmp.path().join("b"), &conninfo, "b", &fast);
    let t = tenant(&a, "fenced", &["files.read"]);
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
                503 => {
                    r.problem(503, "workspace_owned_elsewhere");
                    None
                }
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
    a.signal(rustix::process::Signal::CONT);
    let late = check_marked_as_forwarded(&ca, &t);
    late.problem(503, "workspace_owned_elsewhere");
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
    verifies_offline(&b, &t, tmp.path());
}
