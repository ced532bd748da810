//! The real server on a real PostgreSQL (issue 16 part 1): `allowly serve --postgres` on a
//! private cluster this process starts (`allowly_store_postgres::test_cluster`), a workspace, a
//! grant and checks whose receipts verify offline with `allowly-verify`; then the server is
//! stopped and started again on the same database, and the receipts and the trail are still
//! there, unchanged, and the log goes on.

use crate::support::*;
use allowly_receipt::types::KeySet;
use allowly_receipt::verify::{verify_bundle, Outcome};
use serde_json::json;

#[test]
fn the_server_runs_on_postgres_and_its_receipts_survive_a_restart() {
    let cluster = allowly_store_postgres::test_cluster::shared();
    let conninfo = cluster.fresh_database("allowly_blackbox");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut s = Server::start_with(&data, &["--postgres", &conninfo]);
    let t = tenant(&s, "on postgres", &["files.read"]);
    let c = s.client();
    let check = |c: &Client, scope: &str| {
        let r = c.post("/v1/check", &t.checker, json!({ "authorization_id": t.az, "scopes": [scope] }));
        assert_eq!(r.status, 200, "{r}");
        r.json()
    };
    let allowed = check(&c, "files.read");
    assert_eq!(allowed["decision"], "allow", "{allowed}");
    let denied = check(&c, "files.write");
    assert_eq!(denied["decision"], "deny");
    let rid = allowed["receipt"]["receipt_id"].as_str().unwrap().to_owned();
    let signed = |s: &Server, rid: &str| {
        let c = s.client();
        eventually(
            "the receipt to be signed",
            || s.diagnostics(),
            || {
                let r = c.get(&format!("/v1/receipts/{rid}"), Some(&t.reader));
                (r.status == 200 && r.json()["status"] == "signed").then(|| r.json())
            },
        )
    };
    let receipt = signed(&s, &rid);
    // The whole trail signed before it is exported (the deny's receipt is the log's last).
    signed(&s, denied["receipt"]["receipt_id"].as_str().unwrap());
    // The data went to PostgreSQL: no RocksDB database in the data directory (started as root,
    // the server still creates an empty `db/` when it takes the directory over).
    assert!(!data.join("db/CURRENT").exists(), "a RocksDB database was created in postgres mode");

    // The trail verifies offline with the real verifier, against the published keys.
    let trail = |s: &Server| {
        let r = s.client().get(&format!("/v1/authorizations/{}/export", t.az), Some(&t.reader));
        assert_eq!(r.status, 200, "{r}");
        r.body
    };
    let keys_of = |s: &Server| s.client().get(&format!("/v1/workspaces/{}/keys", t.ws), None).body;
    let verify = |bundle: &[u8], keys: &[u8], name: &str| {
        let (bundle_file, keys_file) =
            (tmp.path().join(format!("{name}.jsonl")), tmp.path().join(format!("{name}.keys")));
        std::fs::write(&bundle_file, bundle).unwrap();
        std::fs::write(&keys_file, keys).unwrap();
        let (code, shown) = run_verifier(&bundle_file, &keys_file, &[]);
        assert_eq!(code, Some(0), "{shown}");
        let keys: KeySet = serde_json::from_slice(keys).unwrap();
        assert_eq!(verify_bundle(bundle, Some(&keys), &[]).unwrap().outcome(), Outcome::Valid);
    };
    let before = trail(&s);
    verify(&before, &keys_of(&s), "before");

    // `/metrics` shows the connection pool's figures, not RocksDB's.
    let page = c.get("/metrics", None).text();
    let value =
        |name: &str| page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok());
    assert!(value("allowly_store_connections_open").is_some_and(|v| v >= 1.0), "{page}");
    assert!(value("allowly_store_connections_busy").is_some(), "{page}");
    assert_eq!(value("allowly_store_calls_queued"), Some(0.0), "{page}");
    assert_eq!(value("allowly_store_memtable_bytes"), None, "RocksDB's figures on PostgreSQL: {page}");

    // Backups are the database's own: the endpoint says so, as a problem, not a 500.
    let r = c.call("POST", "/v1/admin/backup", Some(&s.admin_token()), None);
    let problem = r.problem(501, "backup_not_supported");
    assert!(problem["detail"].as_str().unwrap().contains("PostgreSQL"), "{problem}");
    assert_eq!(problem["title"], "Backup not supported");

    // Restarted on the same database (and data directory: the signer's state and the token).
    s.stop();
    // The offline reset is RocksDB's: refused here, rather than minting a key into an empty
    // RocksDB and overwriting the live key's token.
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let out = std::process::Command::new(allowly_bin())
        .args(["admin-key", "reset", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", describe_output("admin-key reset", &out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no RocksDB database"), "{}", describe_output("reset", &out));
    assert_eq!(std::fs::read_to_string(data.join("admin-token")).unwrap(), token);
    let s = Server::start_with(&data, &["--postgres", &conninfo]);
    s.wait_ready();
    let c = s.client();
    // The instance admin key from before the restart still works (it is in PostgreSQL).
    c.post("/v1/workspaces", token.trim(), json!({ "name": "after the restart" })).created("workspace");
    let again = signed(&s, &rid);
    assert_eq!((&again["body"], &again["log_index"]), (&receipt["body"], &receipt["log_index"]), "{again}");
    // Every receipt of the trail (the export's header says when it was made: left out).
    let receipts = |bundle: &[u8]| -> Vec<serde_json::Value> {
        let text = String::from_utf8(bundle.to_vec()).unwrap();
        let lines = text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap());
        lines.filter(|v| v["type"] == "receipt").collect()
    };
    let after = trail(&s);
    assert_eq!(receipts(&before).len(), 3, "{}", String::from_utf8_lossy(&before));
    assert_eq!(receipts(&after), receipts(&before), "the trail changed across the restart");
    // The log goes on where it was.
    let next = check(&c, "files.read");
    let next_id = next["receipt"]["receipt_id"].as_str().unwrap().to_owned();
    let next_receipt = signed(&s, &next_id);
    assert!(next_receipt["log_index"].as_u64() > receipt["log_index"].as_u64(), "{next_receipt}");
    verify(&trail(&s), &keys_of(&s), "after");
}

/// The database going away is a fault of its own, as a full or failing disk is: with the
/// PostgreSQL server stopped (every connection closed, new ones refused), checks are answered
/// `503 storage_unavailable` with `Retry-After` (a `503 commit_timeout` at most for a write
/// already waiting), `/readyz` names the cause and the fault gauge is 1; once the database is
/// back the server serves again by itself, without a restart, and every receipt acknowledged
/// before the outage and after it is stored, signed and exported. Before, the store's errors
/// were its generic kind: `500 storage_error`, `/readyz` ready throughout.
#[test]
fn a_database_out_of_reach_fails_closed_as_storage_unavailable_and_recovers_by_itself() {
    use crate::resilience::{
        check_once, checks_acknowledged, metric, not_ready_because, serves_again, wait_all_signed, Acked,
    };
    // A cluster of its own: the shared one serves the other tests.
    let cluster = allowly_store_postgres::test_cluster::Cluster::start();
    let conninfo = cluster.fresh_database("allowly_outage");
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start_with(&tmp.path().join("data"), &["--postgres", &conninfo, "--commit-timeout-ms", "1000"]);
    s.wait_ready();
    let t = tenant(&s, "outage", &["files.read"]);
    let c = s.client();
    let check = || check_once(&c, &t);
    let mut acked: Vec<Acked> = Vec::new();
    checks_acknowledged(&c, &t, 3, &mut acked);
    wait_all_signed(&s, &t.reader, &acked);
    let fault = r#"allowly_engine_fault{cause="storage_unavailable"}"#;
    assert_eq!(metric(&c, fault), Some(0.0));

    cluster.stop_server();
    let refused = eventually(
        "a check answered 503 storage_unavailable",
        || s.diagnostics(),
        || {
            let r = check();
            assert!(r.status == 503, "a check was answered while the database was down: {r}");
            let code = r.json()["code"].as_str().unwrap_or_default().to_owned();
            assert!(["storage_unavailable", "commit_timeout"].contains(&code.as_str()), "{r}");
            (code == "storage_unavailable").then_some(r)
        },
    );
    assert_eq!(refused.header("retry-after"), Some("1"), "{refused}");
    let ready = not_ready_because(&c, "storage_unavailable");
    assert!(ready.to_string().contains("postgres"), "the cause says what failed: {ready}");
    assert_eq!(metric(&c, fault), Some(1.0));
    // A read that needs the database is refused the same way, not with a 500.
    let r = c.get(&format!("/v1/receipts/{}", acked[0].id), Some(&t.reader));
    assert!(r.status == 200 || r.problem(503, "storage_unavailable").is_object(), "{r}");

    cluster.start_server();
    serves_again(&s, &t, &mut acked);
    assert_eq!(metric(&c, fault), Some(0.0));
    wait_all_signed(&s, &t.reader, &acked);
    let export = c.get(&format!("/v1/authorizations/{}/export", t.az), Some(&t.reader));
    assert_eq!(export.status, 200, "{export}");
    for a in &acked {
        assert!(export.text().contains(&a.id), "receipt {} missing from the export", a.id);
    }
}
