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
    assert_eq!(check(&c, "files.write")["decision"], "deny");
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
