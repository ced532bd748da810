//! A workspace moving between two signers (issue 16 part 3, signing across nodes): two real
//! signer processes with separate data directories and the same master key. The key record
//! travels (`ExportKeys` → `ImportKeys`), the log goes on from the last checkpoint the other
//! signer signed (`Adopt`), and whatever would fork or roll the log back, or install a key that
//! is not the workspace's, is refused with nothing changed. Every checkpoint is checked with
//! `allowly-receipt` against leaves the test appended itself.

use std::path::{Path, PathBuf};

use allowly_receipt::merkle::{self, Frontier, Hash, LeafList};
use allowly_receipt::note::NoteVerifier;
use allowly_signer_proto::client::{AdoptOutcome, ClientError, SignerClient};
use allowly_signer_proto::{ErrorCode, ErrorReply, KeyInfo};

use crate::support::*;

fn remote<T: std::fmt::Debug>(r: Result<T, ClientError>, what: &str) -> ErrorReply {
    match r {
        Err(ClientError::Remote(e)) => e,
        other => panic!("{what}: expected an error answer from the signer, got {other:?}"),
    }
}

/// A data directory for a second (third) signer holding `master`'s master key.
fn fresh_with_master(root: &Path, master: &Path) -> (PathBuf, PathBuf) {
    let (dir, sock) = fresh(root);
    std::fs::copy(master, dir.join("master.key")).unwrap();
    (dir, sock)
}

/// Two signers serving: A with a fresh directory, B with its own and A's master key.
async fn pair(root: &Path) -> (Signer, Signer, SignerClient, SignerClient) {
    let (dir_a, sock_a) = fresh(&root.join("a"));
    let (dir_b, sock_b) = fresh_with_master(&root.join("b"), &dir_a.join("master.key"));
    let (mut sa, mut sb) = (Signer::serve(&dir_a, &sock_a), Signer::serve(&dir_b, &sock_b));
    let (a, b) = (sa.ready().await, sb.ready().await);
    (sa, sb, a, b)
}

/// The frontier (peaks) of the first `size` of `all`, as the service computes it from its
/// stored Merkle nodes.
fn peaks(all: &[Hash], size: u64) -> Vec<Hash> {
    Frontier::from_source(&LeafList(all.to_vec()), size).unwrap().peaks().to_vec()
}

fn proof(all: &[Hash], from: u64, to: u64) -> Vec<Hash> {
    merkle::consistency_proof(&LeafList(all.to_vec()), from, to).unwrap()
}

fn verifiers(ws: &str, keys: &[KeyInfo]) -> Vec<NoteVerifier> {
    keys.iter().map(|k| verifier(ws, k)).collect()
}

/// Appends `batch` at `at` and returns the checkpoint.
async fn append(c: &SignerClient, ws: &str, at: u64, batch: Vec<Vec<u8>>) -> String {
    let out = c.append_batch(ws, at, batch).await.unwrap_or_else(|e| panic!("append at {at}: {e}"));
    out.checkpoint
}

async fn adopt(
    c: &SignerClient,
    ws: &str,
    note: &str,
    peaks: Vec<Hash>,
    proof: Vec<Hash>,
) -> Result<AdoptOutcome, ClientError> {
    c.adopt(ws, note.to_owned(), peaks, proof, 0).await
}

/// One refused adopt: what it is, the note, its peaks and proof, the code B answers.
type Case<'a> = (&'a str, &'a str, Vec<Hash>, Vec<Hash>, ErrorCode);

fn events(s: &Signer) -> Vec<String> {
    s.audit().iter().map(|l| l["event"].as_str().unwrap_or_default().to_owned()).collect()
}

/// The whole move: A creates the key and signs; its record goes to B; B adopts A's checkpoint
/// (B has no log of the workspace yet), survives a kill -9 right after the answer, and its
/// appends extend A's log exactly: B's checkpoints verify under the workspace's key and are
/// consistent with A's. The receipt time floor travelled with the adopt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_moves_to_another_signer_and_its_log_goes_on_there() {
    let tmp = traversable_tempdir();
    let (sa, mut sb, a, b) = pair(tmp.path()).await;
    let ws = "ws_moving";

    let keys = a.create_key(ws).await.unwrap();
    let v = verifiers(ws, &keys);
    let batch = bodies(ws, 0, 5);
    let mut all = hashes(&batch);
    append(&a, ws, 0, batch).await;
    let batch = bodies(ws, 5, 3);
    all.extend(hashes(&batch));
    let note_a = append(&a, ws, 5, batch).await;
    let (cp_a, _) = open_checkpoint(ws, &note_a, &v);
    assert_eq!(cp_a.size, 8);

    // Before the record: B knows no such workspace.
    assert_eq!(
        remote(adopt(&b, ws, &note_a, peaks(&all, 8), vec![]).await, "adopt without keys").code,
        ErrorCode::UnknownWorkspace
    );
    let record = a.export_keys(ws).await.unwrap();
    assert_eq!(
        record,
        std::fs::read(sa.dir.join("keys").join(format!("{ws}.json"))).unwrap(),
        "the key file as stored"
    );
    assert_eq!(b.import_keys(ws, record.clone()).await.unwrap(), keys, "B publishes A's keys");
    assert_eq!(b.import_keys(ws, record.clone()).await.unwrap(), keys, "the same record again");
    assert_eq!(b.export_keys(ws).await.unwrap(), record);

    // The receipt at index 7 is at T0 + 7: the floor for B's next append.
    let got = b.adopt(ws, note_a.clone(), peaks(&all, 8), vec![], T0 + 7).await.unwrap();
    assert_eq!((got.size, got.root, got.changed), (8, cp_a.root, true));
    // Durable before the answer: a kill -9 right after it loses nothing.
    sb.kill9();
    let mut sb = Signer::serve(&sb.dir, &sb.socket);
    let b = sb.ready().await;
    let again = adopt(&b, ws, &note_a, peaks(&all, 8), vec![]).await.unwrap();
    assert_eq!((again.size, again.changed), (8, false), "already there after the restart");
    let latest = b.latest_checkpoint(ws).await.unwrap();
    assert_eq!((latest.size, latest.checkpoint.as_deref()), (8, Some(note_a.as_str())));

    // A receipt older than the adopted log's last one is refused: the floor travelled.
    let old = body_at(ws, "", 8, T0 + 6);
    assert_eq!(remote(b.append_batch(ws, 8, vec![old]).await, "time backwards").code, ErrorCode::ReceiptRefused);
    let batch = bodies(ws, 8, 4);
    all.extend(hashes(&batch));
    let out = b.append_batch(ws, 8, batch.clone()).await.unwrap();
    check_appended_without_proofs(ws, &all, &batch, &out, &v);
    check_extends(ws, &all, &note_a, &out.checkpoint, &v);
    // A, which signed up to 8, would have signed the same tree: the log did not fork.
    assert_eq!(open_checkpoint(ws, &out.checkpoint, &v).0.root, model_root(&all, 12));

    let eb = events(&sb);
    assert!(eb.contains(&"keys_imported".to_owned()) && eb.contains(&"adopted".to_owned()), "{eb:?}");
    let m = b.metrics().await.unwrap();
    assert_eq!(metric(&m, "allowly_signer_fork_attempts_total"), 0.0);
    assert_eq!(metric(&m, r#"allowly_signer_adopts_total{outcome="unchanged"}"#), 1.0);
    drop(sa);
}

/// Everything a compromised front end could send B instead of the right adopt, while B holds
/// the workspace's log at 8 (loaded, so the adopts go through its actor): each is refused with
/// its code, counted and audited, and B's state is unchanged (its checkpoint, and an append at
/// its size that then extends A's log exactly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopts_that_would_fork_or_roll_the_log_back_are_refused_and_change_nothing() {
    let tmp = traversable_tempdir();
    let (sa, sb, a, b) = pair(tmp.path()).await;
    let (dir_c, sock_c) = fresh_with_master(&tmp.path().join("c"), &sa.dir.join("master.key"));
    let mut sc = Signer::serve(&dir_c, &sock_c);
    let c = sc.ready().await;
    let ws = "ws_forked";

    let keys = a.create_key(ws).await.unwrap();
    let v = verifiers(ws, &keys);
    let mut all = hashes(&bodies(ws, 0, 12));
    let note5 = append(&a, ws, 0, bodies(ws, 0, 5)).await;
    let note8 = append(&a, ws, 5, bodies(ws, 5, 3)).await;
    let record = a.export_keys(ws).await.unwrap();
    b.import_keys(ws, record.clone()).await.unwrap();
    assert!(adopt(&b, ws, &note8, peaks(&all, 8), vec![]).await.unwrap().changed);
    // Loads B's actor for the workspace.
    assert_eq!(b.latest_checkpoint(ws).await.unwrap().size, 8);
    let note12 = append(&a, ws, 8, bodies(ws, 8, 4)).await;

    // C: the same keys, a log forked at 5 (other leaves from 5 on), genuinely signed.
    c.import_keys(ws, record).await.unwrap();
    adopt(&c, ws, &note5, peaks(&all, 5), vec![]).await.unwrap();
    let mut forked = all[..5].to_vec();
    let fork = tagged(ws, "fork", 5, 5);
    forked.extend(hashes(&fork));
    let fork8 = append(&c, ws, 5, fork[..3].to_vec()).await;
    let fork10 = append(&c, ws, 8, fork[3..].to_vec()).await;

    let altered = note12.replacen("\n12\n", "\n11\n", 1);
    assert_ne!(altered, note12);
    let stranger = {
        let k = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
        let text = note12.split("\n\n").next().unwrap().to_owned() + "\n";
        allowly_receipt::note::sign_note(&text, &allowly_receipt::types::log_origin(ws), &k).unwrap()
    };
    let mut bad_peaks = peaks(&all, 12);
    bad_peaks[0][0] ^= 1;
    let cases: Vec<Case> = vec![
        ("an altered note", &altered, peaks(&all, 11), proof(&all, 8, 11), ErrorCode::AdoptRefused),
        ("a note signed by another key", &stranger, peaks(&all, 12), proof(&all, 8, 12), ErrorCode::AdoptRefused),
        ("wrong peaks", &note12, bad_peaks, proof(&all, 8, 12), ErrorCode::AdoptRefused),
        ("peaks of another size", &note12, peaks(&all, 11), proof(&all, 8, 12), ErrorCode::AdoptRefused),
        ("a smaller size (rollback)", &note5, peaks(&all, 5), vec![], ErrorCode::SizeMismatch),
        ("the same size with another root", &fork8, peaks(&forked, 8), vec![], ErrorCode::AdoptRefused),
        ("a bigger note without a proof", &note12, peaks(&all, 12), vec![], ErrorCode::AdoptRefused),
        ("a bigger note with a bad proof", &note12, peaks(&all, 12), proof(&all, 7, 12), ErrorCode::AdoptRefused),
        (
            "a fork of B's own log, with its proof",
            &fork10,
            peaks(&forked, 10),
            proof(&forked, 8, 10),
            ErrorCode::AdoptRefused,
        ),
    ];
    let n = cases.len() as f64;
    for (what, note, p, q, code) in cases {
        let e = remote(adopt(&b, ws, note, p, q).await, what);
        assert_eq!((e.code, e.current_size), (code, Some(8)), "{what}: {e}");
        let latest = b.latest_checkpoint(ws).await.unwrap();
        assert_eq!((latest.size, latest.checkpoint.as_deref()), (8, Some(note8.as_str())), "{what} changed B's state");
    }
    let m = b.metrics().await.unwrap();
    assert_eq!(metric(&m, "allowly_signer_fork_attempts_total"), n);
    assert_eq!(metric(&m, r#"allowly_signer_adopt_refusals_total{reason="rollback"}"#), 1.0);
    assert_eq!(metric(&m, r#"allowly_signer_adopt_refusals_total{reason="fork"}"#), 1.0);
    assert_eq!(metric(&m, r#"allowly_signer_adopt_refusals_total{reason="consistency"}"#), 3.0);
    let refused = sb
        .audit()
        .iter()
        .filter(|l| l["event"] == "refused" && l["detail"].as_str().is_some_and(|d| d.starts_with("adopt:")))
        .count();
    assert_eq!(refused as f64, n, "every refusal audited");

    // Unchanged: an append at 8 extends A's log, the same tree A signed at 12; then the right
    // adopt (A's 12 with its proof from 8) is "already there".
    let out = b.append_batch(ws, 8, bodies(ws, 8, 4)).await.unwrap();
    let (_, cp12) = check_extends(ws, &all, &note8, &out.checkpoint, &v);
    assert_eq!(cp12.root, open_checkpoint(ws, &note12, &v).0.root);
    assert!(!adopt(&b, ws, &note12, peaks(&all, 12), vec![]).await.unwrap().changed);
    // And a genuine extension from A's log is adopted through the loaded actor.
    let note14 = append(&a, ws, 12, bodies(ws, 12, 2)).await;
    all.extend(hashes(&bodies(ws, 12, 2)));
    let got = adopt(&b, ws, &note14, peaks(&all, 14), proof(&all, 12, 14)).await.unwrap();
    assert_eq!((got.size, got.changed), (14, true));
    drop((sa, sc));
}

/// Key records that would install a key that is not the workspace's, or take one away, are
/// refused with nothing written; a rotation's record extends the installed one, and the log
/// (adopted at the rotation's checkpoint) goes on signed by the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_records_that_swap_drop_or_misplace_keys_are_refused_and_a_rotation_extends() {
    let tmp = traversable_tempdir();
    let (sa, _sb, a, b) = pair(tmp.path()).await;
    let (ws, other) = ("ws_keys", "ws_other");
    a.create_key(ws).await.unwrap();
    a.create_key(other).await.unwrap();
    let rec1 = a.export_keys(ws).await.unwrap();
    b.import_keys(ws, rec1.clone()).await.unwrap();
    let rotated = a.rotate_key(ws, 0).await.unwrap();
    let rec2 = a.export_keys(ws).await.unwrap();

    let json = |r: &[u8]| -> serde_json::Value { serde_json::from_slice(r).unwrap() };
    let mut swapped = json(&rec2);
    let theirs = json(&a.export_keys(other).await.unwrap());
    for field in ["nonce", "sealed_seed"] {
        swapped["keys"][1][field] = theirs["keys"][0][field].clone();
    }
    let mut dropped = json(&rec2);
    dropped["keys"].as_array_mut().unwrap().remove(0);
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("another workspace's sealed seed", ws, serde_json::to_vec(&swapped).unwrap()),
        ("a record of another workspace", other, rec2.clone()),
        ("a record without the installed key", ws, serde_json::to_vec(&dropped).unwrap()),
        ("not a record", ws, b"{\"version\":1}".to_vec()),
    ];
    for (what, to, record) in cases {
        let e = remote(b.import_keys(to, record).await, what);
        assert_eq!(e.code, ErrorCode::KeyRecordRefused, "{what}: {e}");
        assert_eq!(b.export_keys(ws).await.unwrap(), rec1, "{what} changed B's record");
    }
    assert_eq!(remote(b.export_keys(other).await, "nothing installed").code, ErrorCode::UnknownWorkspace);

    // The rotation extends the installed record; the older record would now take it back.
    assert_eq!(b.import_keys(ws, rec2.clone()).await.unwrap(), rotated.keys);
    let e = remote(b.import_keys(ws, rec1).await, "the older record");
    assert_eq!(e.code, ErrorCode::KeyRecordRefused, "{e}");
    assert_eq!(b.export_keys(ws).await.unwrap(), rec2);
    let m = b.metrics().await.unwrap();
    assert_eq!(metric(&m, r#"allowly_signer_key_imports_total{outcome="refused"}"#), 5.0);

    // The rotation's leaf is A's log at size 1, signed by the new key: B adopts it and signs on
    // with the new key only.
    let leaf = merkle::leaf_hash(&rotated.rotation.body);
    let got = adopt(&b, ws, &rotated.rotation.checkpoint, vec![leaf], vec![]).await.unwrap();
    assert_eq!((got.size, got.changed), (1, true));
    let out = b.append_batch(ws, 1, bodies(ws, 1, 2)).await.unwrap();
    let new_key = rotated.keys.iter().find(|k| k.active).unwrap();
    let all: Vec<Hash> = std::iter::once(leaf).chain(hashes(&bodies(ws, 1, 2))).collect();
    check_extends(ws, &all, &rotated.rotation.checkpoint, &out.checkpoint, &[verifier(ws, new_key)]);
    drop(sa);
}

/// An adopt behind appends on one connection (the service pipelines): the appends queued before
/// it are signed first, so it sees the log they made (the note is then "already there"), and
/// an append behind it extends what it adopted. Never an adopt that jumps a queued append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopt_runs_in_order_with_the_appends_around_it() {
    use allowly_signer_proto::{Request, Response};
    use tokio::io::AsyncWriteExt as _;

    let tmp = traversable_tempdir();
    let (sa, sb, a, b) = pair(tmp.path()).await;
    let ws = "ws_ordered";
    a.create_key(ws).await.unwrap();
    let all = hashes(&bodies(ws, 0, 16));
    let note8 = append(&a, ws, 0, bodies(ws, 0, 8)).await;
    let note12 = append(&a, ws, 8, bodies(ws, 8, 4)).await;
    let note14 = append(&a, ws, 12, bodies(ws, 12, 2)).await;
    b.import_keys(ws, a.export_keys(ws).await.unwrap()).await.unwrap();
    adopt(&b, ws, &note8, peaks(&all, 8), vec![]).await.unwrap();
    assert_eq!(b.latest_checkpoint(ws).await.unwrap().size, 8, "loads B's actor");

    let reqs = [
        Request::AppendBatch {
            workspace_id: ws.into(),
            expected_size: 8,
            bodies: bodies(ws, 8, 4),
            want_proofs: false,
        },
        Request::Adopt {
            workspace_id: ws.into(),
            checkpoint: note12.clone(),
            peaks: peaks(&all, 12),
            proof: vec![],
            last_leaf_ms: 0,
        },
        Request::Adopt {
            workspace_id: ws.into(),
            checkpoint: note14,
            peaks: peaks(&all, 14),
            proof: proof(&all, 12, 14),
            last_leaf_ms: 0,
        },
        Request::AppendBatch {
            workspace_id: ws.into(),
            expected_size: 14,
            bodies: bodies(ws, 14, 2),
            want_proofs: false,
        },
    ];
    let mut wire = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        wire.extend(frame(i as u64 + 1, r));
    }
    let mut stream = tokio::net::UnixStream::connect(&sb.socket).await.unwrap();
    stream.write_all(&wire).await.unwrap();
    let mut answers = std::collections::HashMap::new();
    for _ in 0..reqs.len() {
        let (id, resp) = read_response(&mut stream).await.expect("an answer");
        answers.insert(id, resp);
    }
    match &answers[&1] {
        Response::Appended { old_size: 8, new_size: 12, .. } => {}
        other => panic!("the append before the adopt: {other:?}\n{}", sb.diagnostics()),
    }
    match &answers[&2] {
        Response::Adopted { size: 12, changed: false, .. } => {}
        other => panic!("the adopt behind the append saw the log before it: {other:?}"),
    }
    match &answers[&3] {
        Response::Adopted { size: 14, changed: true, .. } => {}
        other => panic!("the adopt of 14: {other:?}"),
    }
    let v = verifiers(ws, &b.list_keys(ws).await.unwrap());
    match &answers[&4] {
        Response::Appended { old_size: 14, new_size: 16, checkpoint, .. } => {
            check_extends(ws, &all, &note12, checkpoint, &v);
        }
        other => panic!("the append behind the adopts: {other:?}"),
    }
    drop(sa);
}

/// Ownership goes B → A → B, and A rotates the key meanwhile: B (restarted, so the workspace is
/// not loaded, with its own older log) imports A's rotated record and adopts A's newest
/// checkpoint, signed by the new key. B's older log's last checkpoint was signed by the old key:
/// a load of the workspace would take the imported rotation for one that never reached the log
/// and put it aside, so the adopt does not load it that way; B signs on with the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_comes_back_after_the_other_signer_rotated_its_key() {
    let tmp = traversable_tempdir();
    let (sa, mut sb, a, b) = pair(tmp.path()).await;
    let ws = "ws_back";
    a.create_key(ws).await.unwrap();
    let mut all = hashes(&bodies(ws, 0, 6));
    let note4 = append(&a, ws, 0, bodies(ws, 0, 4)).await;
    b.import_keys(ws, a.export_keys(ws).await.unwrap()).await.unwrap();
    adopt(&b, ws, &note4, peaks(&all, 4), vec![]).await.unwrap();
    let note6 = append(&b, ws, 4, bodies(ws, 4, 2)).await;

    // A takes the workspace back, and rotates its key.
    assert!(adopt(&a, ws, &note6, peaks(&all, 6), proof(&all, 4, 6)).await.unwrap().changed);
    let rotated = a.rotate_key(ws, 6).await.unwrap();
    all.push(merkle::leaf_hash(&rotated.rotation.body));
    let batch = bodies(ws, 7, 2);
    all.extend(hashes(&batch));
    let note9 = append(&a, ws, 7, batch).await;
    let record = a.export_keys(ws).await.unwrap();

    // B again, restarted: nothing of the workspace is loaded.
    sb.kill9();
    let mut sb = Signer::serve(&sb.dir, &sb.socket);
    let b = sb.ready().await;
    assert_eq!(b.import_keys(ws, record.clone()).await.unwrap(), rotated.keys);
    let got = adopt(&b, ws, &note9, peaks(&all, 9), proof(&all, 6, 9)).await.unwrap();
    assert_eq!((got.size, got.changed), (9, true), "{}", sb.diagnostics());
    assert_eq!(b.list_keys(ws).await.unwrap(), rotated.keys, "the rotation was put aside");
    assert_eq!(b.export_keys(ws).await.unwrap(), record);
    let batch = bodies(ws, 9, 2);
    all.extend(hashes(&batch));
    let out = b.append_batch(ws, 9, batch).await.unwrap();
    let new_key = rotated.keys.iter().find(|k| k.active).unwrap();
    check_extends(ws, &all, &note9, &out.checkpoint, &[verifier(ws, new_key)]);
    drop(sa);
}
