//! Black-box tests of the real `allowly-signer` binary over its real Unix socket.
//!
//! Every signature and proof is checked with `allowly-receipt` against leaves the test itself
//! appended; nothing the signer says about itself is taken on trust. Each spawned signer is
//! killed on drop, and a failing test prints the signer's stderr and audit log.
#![allow(clippy::unwrap_used)]

mod hygiene;
mod limits;
mod moving;
mod support;
#[path = "support/tmpfs.rs"]
mod tmpfs;
use tmpfs::Mount;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::Command;

use allowly_receipt::merkle::{self, consistency_proof, verify_consistency, verify_inclusion, Hash, LeafList};
use allowly_receipt::note::parse_signed_note;
use allowly_receipt::types::{AnyReceipt, HexHash, SignedReceipt, STATUS_SIGNED};
use allowly_receipt::verify::{verify_receipt, Outcome};
use allowly_signer_proto::client::{AppendOutcome, ClientError, SignerClient};
use allowly_signer_proto::{ErrorCode, ErrorReply, Request, Response, MAX_FRAME, PROTOCOL_VERSION};
use support::*;
use tokio::io::AsyncWriteExt as _;
use tokio::net::UnixStream;

const NOBODY: &str = "65534";

fn remote(r: Result<impl std::fmt::Debug, ClientError>, what: &str) -> ErrorReply {
    match r {
        Err(ClientError::Remote(e)) => e,
        other => panic!("{what}: expected an error answer from the signer, got {other:?}"),
    }
}

fn size_mismatch(r: Result<impl std::fmt::Debug, ClientError>, what: &str, current: u64) {
    let e = remote(r, what);
    assert_eq!(e.code, ErrorCode::SizeMismatch, "{what}: {e}");
    assert_eq!(e.current_size, Some(current), "{what}: current_size must name the log's size: {e}");
}

async fn metrics(c: &SignerClient) -> String {
    c.metrics().await.unwrap()
}

fn setpriv_nobody() -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".into()]);
    cmd
}

// ---------------------------------------------------------------------------------------------
// 1. Appends, checkpoints, proofs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_checkpoints_and_proofs_verify_against_the_published_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());
    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    let ws = "ws_basic";

    let created = c.create_key(ws).await.unwrap();
    assert_eq!(created.len(), 1);
    assert!(created[0].active && created[0].not_after_ms.is_none());
    assert_eq!(remote(c.create_key(ws).await, "second CreateKey").code, ErrorCode::WorkspaceExists);
    let keys = c.list_keys(ws).await.unwrap();
    assert_eq!(keys, created);
    let v = vec![verifier(ws, &keys[0])];

    let empty = c.latest_checkpoint(ws).await.unwrap();
    assert_eq!((empty.size, empty.checkpoint), (0, None));

    let mut all: Vec<Hash> = Vec::new();
    let mut last = String::new();
    let mut last_time = None;
    for n in [1, 3, 17] {
        let batch = bodies(ws, all.len(), n);
        let out = c.append_batch_with_proofs(ws, all.len() as u64, batch.clone()).await.unwrap();
        assert_eq!(out.old_size, all.len() as u64);
        all.extend(hashes(&batch));
        let cp = check_appended(ws, &all, &batch, &out, &v);
        assert_eq!(cp.size, all.len() as u64, "a lone batch's checkpoint is exactly its new size");
        let (_, time) = open_checkpoint(ws, &out.checkpoint, &v);
        assert!(last_time.is_none_or(|t| t <= time), "checkpoint time went backwards");
        last_time = Some(time);
        last = out.checkpoint;
    }
    let latest = c.latest_checkpoint(ws).await.unwrap();
    assert_eq!(latest.size, 21);
    assert_eq!(latest.checkpoint.as_deref(), Some(last.as_str()), "LatestCheckpoint is the last note answered");

    // Control: another workspace's key does not verify this log's checkpoints.
    let other = c.create_key("ws_basic_other").await.unwrap();
    let foreign = allowly_receipt::note::NoteVerifier::new(
        &allowly_receipt::types::log_origin(ws),
        ed25519_dalek::VerifyingKey::from_bytes(&other[0].public_key).unwrap(),
    )
    .unwrap();
    assert!(parse_signed_note(&last).unwrap().verify(&[foreign]).is_err(), "a foreign key verified the note");
}

/// Requests pipelined on one connection (written in one go, in order, before any answer is
/// read) all succeed and share signatures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_appends_on_one_connection_all_succeed_and_share_signatures() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());
    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    let ws = "ws_pipeline";
    let v = vec![verifier(ws, &c.create_key(ws).await.unwrap()[0])];
    let signed_before = metric(&metrics(&c).await, "allowly_signer_checkpoints_signed_total");

    const N: usize = 60;
    let mut all: Vec<Hash> = Vec::new();
    let mut sent: Vec<(u64, Vec<Vec<u8>>)> = Vec::new();
    let mut wire = Vec::new();
    for i in 0..N {
        let batch = bodies(ws, all.len(), 1 + i % 3);
        let expected_size = all.len() as u64;
        wire.extend(frame(
            i as u64 + 1,
            // Half ask for proofs: a coalesced group serves both kinds.
            &Request::AppendBatch {
                workspace_id: ws.into(),
                expected_size,
                bodies: batch.clone(),
                want_proofs: i % 2 == 0,
            },
        ));
        all.extend(hashes(&batch));
        sent.push((expected_size, batch));
    }
    let mut stream = UnixStream::connect(&sock).await.unwrap();
    stream.write_all(&wire).await.unwrap();
    let mut answers = HashMap::new();
    for _ in 0..N {
        let (id, resp) = read_response(&mut stream).await.expect("connection closed early");
        assert!(answers.insert(id, resp).is_none(), "two answers to request {id}");
    }

    let mut distinct = HashSet::new();
    let mut failures = Vec::new();
    for (i, (expected_size, batch)) in sent.iter().enumerate() {
        match answers.remove(&(i as u64 + 1)).expect("every request answered") {
            Response::Appended { old_size, new_size, checkpoint, proofs } => {
                let out = AppendOutcome { old_size, new_size, checkpoint, proofs };
                assert_eq!(out.old_size, *expected_size);
                if i % 2 == 0 {
                    check_appended(ws, &all, batch, &out, &v);
                } else {
                    check_appended_without_proofs(ws, &all, batch, &out, &v);
                }
                distinct.insert(out.checkpoint);
            }
            other => failures.push(format!("request {} (expected_size {expected_size}): {other:?}", i + 1)),
        }
    }
    assert!(failures.is_empty(), "in-order pipelined appends were refused:\n{}", failures.join("\n"));
    assert!(distinct.len() < N, "no coalescing: {N} batches got {} distinct checkpoints", distinct.len());
    let signed = metric(&metrics(&c).await, "allowly_signer_checkpoints_signed_total") - signed_before;
    assert_eq!(signed as usize, distinct.len(), "one signature per distinct checkpoint");
    let latest = c.latest_checkpoint(ws).await.unwrap();
    assert_eq!(latest.size, all.len() as u64);
    assert!(distinct.contains(latest.checkpoint.as_deref().unwrap()));
}

/// Several connections race with compare-and-swap appends (retrying at `current_size` on
/// `SizeMismatch`): every batch lands exactly once, contiguously, and every proof verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_connections_append_exactly_once_with_compare_and_swap() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());
    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    let ws = "ws_race";
    let v = vec![verifier(ws, &c.create_key(ws).await.unwrap()[0])];

    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..4usize {
        let sock = sock.clone();
        tasks.spawn(async move {
            let c = client(&sock);
            let mut done = Vec::new();
            let mut guess = 0u64;
            for b in 0..6usize {
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    assert!(attempts < 1000, "task {t} batch {b}: no progress");
                    // Bodies name their log index, so a batch is rebuilt for each guess.
                    let batch = tagged(ws, &format!("task{t}/{b}"), guess as usize, 1 + (t + b) % 4);
                    match c.append_batch_with_proofs(ws, guess, batch.clone()).await {
                        Ok(out) => {
                            guess = out.new_size;
                            done.push((batch, out));
                            break;
                        }
                        Err(ClientError::Remote(e)) if e.code == ErrorCode::SizeMismatch => {
                            guess = e.current_size.expect("SizeMismatch carries current_size");
                        }
                        Err(e) => panic!("task {t} batch {b}: {e}"),
                    }
                }
            }
            done
        });
    }
    let mut done = Vec::new();
    while let Some(r) = tasks.join_next().await {
        done.extend(r.unwrap());
    }
    done.sort_by_key(|(_, out)| out.old_size);
    let mut all: Vec<Hash> = Vec::new();
    for (batch, out) in &done {
        assert_eq!(out.old_size, all.len() as u64, "batches overlap or leave a gap");
        all.extend(hashes(batch));
    }
    for (batch, out) in &done {
        check_appended(ws, &all, batch, out, &v);
    }
    assert_eq!(c.latest_checkpoint(ws).await.unwrap().size, all.len() as u64);
}

// ---------------------------------------------------------------------------------------------
// 2. Rotation.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_old_checkpoints_valid_and_logs_a_verifiable_key_rotated_receipt() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());
    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    let ws = "ws_rotate";
    let first = c.create_key(ws).await.unwrap();
    let old_v = verifier(ws, &first[0]);

    let mut all: Vec<Hash> = Vec::new();
    let mut before = Vec::new();
    for n in [2, 3] {
        let batch = bodies(ws, all.len(), n);
        let out = c.append_batch_with_proofs(ws, all.len() as u64, batch.clone()).await.unwrap();
        all.extend(hashes(&batch));
        check_appended(ws, &all, &batch, &out, std::slice::from_ref(&old_v));
        before.push(out.checkpoint);
    }
    let size = all.len() as u64;
    let forks0 = metric(&metrics(&c).await, "allowly_signer_fork_attempts_total");
    size_mismatch(c.rotate_key(ws, size - 1).await, "RotateKey at a stale size", size);
    assert_eq!(metric(&metrics(&c).await, "allowly_signer_fork_attempts_total") - forks0, 1.0);
    let uid = u64::from(rustix::process::geteuid().as_raw());
    let refused = s.audit().into_iter().filter(|l| l["event"] == "refused" && l["workspace_id"] == ws).count();
    assert_eq!(refused, 1, "a refused rotation (a fork attempt) must be audited like a refused append");
    assert!(s.audit().iter().any(|l| l["event"] == "refused" && l["peer_uid"].as_u64() == Some(uid)));
    let rot = c.rotate_key(ws, size).await.unwrap();
    // A lost answer asked for again gets the same answer: no second key, nothing new signed,
    // not a fork attempt (the service stores the leaf it never received).
    let forks1 = metric(&metrics(&c).await, "allowly_signer_fork_attempts_total");
    let again = c.rotate_key(ws, size).await.unwrap();
    assert_eq!((&again.keys, &again.rotation), (&rot.keys, &rot.rotation), "a repeated rotation is answered again");
    assert_eq!(metric(&metrics(&c).await, "allowly_signer_fork_attempts_total"), forks1);

    let keys = c.list_keys(ws).await.unwrap();
    assert_eq!(keys, rot.keys);
    assert_eq!(keys.len(), 2, "{keys:?}");
    let (old, new) = (&keys[0], &keys[1]);
    assert_eq!(old.key_id, first[0].key_id);
    assert!(!old.active && old.not_after_ms.is_some(), "old key retired: {old:?}");
    assert!(new.active && new.not_after_ms.is_none(), "new key active: {new:?}");
    assert_eq!(Some(new.not_before_ms), old.not_after_ms, "windows meet");
    let new_v = verifier(ws, new);
    let ks = key_set(ws, &keys);
    let trusted = ks.trusted().unwrap();

    // The key.rotated leaf, at the old size.
    assert_eq!(rot.rotation.log_index, size);
    let body: serde_json::Value = serde_json::from_slice(&rot.rotation.body).unwrap();
    assert_eq!(body["kind"], "key.rotated");
    assert_eq!(body["log_index"], size);
    assert_eq!(body["workspace_id"], ws);
    // The service's receipt id form (`rc_` + index in 16 hex digits + 32 hex digits): found by id.
    let id = body["id"].as_str().unwrap();
    assert!(id.len() == 51 && id.starts_with(&format!("rc_{size:016x}")), "{id}");
    assert_eq!(body["key"]["key_id"], hex::encode(new.key_id));
    assert_eq!(body["key"]["replaces"], hex::encode(old.key_id));
    assert_eq!(body["key"]["vkey"], new_v.to_vkey());
    let leaf = merkle::leaf_hash(&rot.rotation.body);
    all.push(leaf);
    let cp = signed_by_key_valid_at_its_time(ws, &rot.rotation.checkpoint, &trusted);
    assert_eq!(cp.size, all.len() as u64);
    assert_eq!(cp.root, model_root(&all, cp.size));
    verify_inclusion(&leaf, size, cp.size, &rot.rotation.proof, &cp.root).unwrap();
    assert!(parse_signed_note(&rot.rotation.checkpoint).unwrap().verify(std::slice::from_ref(&old_v)).is_err());

    let receipt = AnyReceipt::Signed(SignedReceipt {
        status: STATUS_SIGNED.into(),
        body,
        log_index: rot.rotation.log_index,
        inclusion_proof: rot.rotation.proof.iter().copied().map(HexHash).collect(),
        checkpoint: rot.rotation.checkpoint.clone(),
    });
    let report = verify_receipt(&receipt, &ks).unwrap();
    assert_eq!(report.outcome(), Outcome::Valid, "{report:?}");
    assert_eq!(report.signed, 1);
    // Control: with only the old key published, the rotation receipt does not verify.
    let report = verify_receipt(&receipt, &key_set(ws, &keys[..1])).unwrap();
    assert_ne!(report.outcome(), Outcome::Valid, "verified without the new key: {report:?}");

    // Checkpoints signed before the rotation still verify: the old key was valid at their time.
    for note in &before {
        signed_by_key_valid_at_its_time(ws, note, &trusted);
        assert!(parse_signed_note(note).unwrap().verify(std::slice::from_ref(&new_v)).is_err());
    }

    // After the rotation the new key signs; the old key was no longer valid at that time.
    let batch = bodies(ws, all.len(), 4);
    let out = c.append_batch_with_proofs(ws, all.len() as u64, batch.clone()).await.unwrap();
    all.extend(hashes(&batch));
    check_appended(ws, &all, &batch, &out, std::slice::from_ref(&new_v));
    signed_by_key_valid_at_its_time(ws, &out.checkpoint, &trusted);
    let (_, t) = open_checkpoint(ws, &out.checkpoint, &trusted.verifiers);
    assert!(!trusted.valid_at(&old_v, t), "old key still valid at a post-rotation checkpoint");
    assert!(parse_signed_note(&out.checkpoint).unwrap().verify(std::slice::from_ref(&old_v)).is_err());

    let audit = s.audit();
    assert!(audit.iter().any(|l| l["event"] == "rotation" && l["workspace_id"] == ws), "no rotation audit line");
}

// ---------------------------------------------------------------------------------------------
// 3. Crash and restart.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_and_restart_continue_exactly_from_the_last_answered_checkpoint() {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("crash test seed: {seed}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());
    let ws = "ws_crash";
    let mut all: Vec<Hash> = Vec::new();
    let mut last: Option<String> = None;
    // A batch whose answer was lost in the crash: the signer may or may not have applied it.
    let mut unanswered: Option<(u64, Vec<Vec<u8>>)> = None;

    for round in 0..5 {
        let mut s = Signer::serve(&dir, &sock);
        let c = s.ready().await;
        if round == 0 {
            c.create_key(ws).await.unwrap();
        }
        let v: Vec<_> = c.list_keys(ws).await.unwrap().iter().map(|k| verifier(ws, k)).collect();
        let latest = c.latest_checkpoint(ws).await.unwrap();

        if let Some((at, batch)) = unanswered.take() {
            // Either outcome is fine, but only one of the two, and the retry must succeed:
            // applied → replayed with the same checkpoint; not applied → appended now.
            let applied = latest.size == at + batch.len() as u64;
            assert!(applied || latest.size == at, "after a crash mid-append the log has {} leaves", latest.size);
            let out = c.append_batch_with_proofs(ws, at, batch.clone()).await.unwrap();
            all.extend(hashes(&batch));
            check_appended(ws, &all, &batch, &out, &v);
            if applied {
                assert_eq!(Some(&out.checkpoint), latest.checkpoint.as_ref(), "retry of an applied batch re-signed");
            }
            last = Some(out.checkpoint);
        } else {
            assert_eq!(latest.size, all.len() as u64, "round {round}: size after restart");
            assert_eq!(latest.checkpoint, last, "round {round}: checkpoint after restart");
        }

        let old_size = all.len() as u64;
        let old_root = last.as_ref().map(|n| open_checkpoint(ws, n, &v).0.root);
        for _ in 0..rng.range(1, 4) {
            let batch = bodies(ws, all.len(), rng.range(1, 25) as usize);
            let out = c.append_batch_with_proofs(ws, all.len() as u64, batch.clone()).await.unwrap();
            all.extend(hashes(&batch));
            check_appended(ws, &all, &batch, &out, &v);
            last = Some(out.checkpoint);
        }
        let (new_cp, _) = open_checkpoint(ws, last.as_deref().unwrap(), &v);
        if let Some(old_root) = old_root {
            let proof = consistency_proof(&LeafList(all.clone()), old_size, new_cp.size).unwrap();
            verify_consistency(old_size, new_cp.size, &old_root, &new_cp.root, &proof)
                .unwrap_or_else(|e| panic!("round {round}: {old_size} -> {} not consistent: {e}", new_cp.size));
        }
        let stale = rng.range(0, all.len() as u64 - 1);
        size_mismatch(
            c.append_batch(ws, stale, tagged(ws, "stale", stale as usize, 2)).await,
            "append at a stale size after restart",
            all.len() as u64,
        );

        if round == 3 {
            // Crash with an append in flight.
            let batch = bodies(ws, all.len(), rng.range(1, 9) as usize);
            let mut raw = UnixStream::connect(&sock).await.unwrap();
            let req = Request::AppendBatch {
                workspace_id: ws.into(),
                expected_size: all.len() as u64,
                bodies: batch,
                want_proofs: false,
            };
            raw.write_all(&frame(1, &req)).await.unwrap();
            let Request::AppendBatch { expected_size, bodies, .. } = req else { unreachable!() };
            unanswered = Some((expected_size, bodies));
        }
        s.kill9();
    }
}

/// `audit.log` is not fsynced per group (the journal holds its lines): lines that a machine
/// crash would lose from the page cache, or garble, are back after a restart — before the
/// signer answers anything — and the chain verifies with the real `audit verify`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_lines_lost_in_a_crash_are_back_after_the_restart_and_the_chain_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());
    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    let ws = "ws_lost_lines";
    c.create_key(ws).await.unwrap();
    for at in 0..3 {
        c.append_batch(ws, at, bodies(ws, at as usize, 1)).await.unwrap();
    }
    let acknowledged = s.audit_text();
    s.kill9();
    drop(c);
    // What an unsynced tail can look like after a machine crash: the last lines gone, a piece
    // of one left, zeros where a page was never written.
    let lines: Vec<&str> = acknowledged.split_inclusive('\n').collect();
    assert_eq!(lines.len(), 4, "{acknowledged}");
    let kept = lines[..2].concat();
    let damaged = format!("{kept}{}{}", &lines[2][..20], "\0".repeat(100));
    std::fs::write(dir.join("audit.log"), damaged).unwrap();

    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    assert_eq!(s.audit_text(), acknowledged, "audit.log repaired before serving\n{}", s.diagnostics());
    c.append_batch(ws, 3, bodies(ws, 3, 1)).await.unwrap();
    let (status, out, err) =
        run_with_deadline(Command::new(signer_bin()).args(["audit", "verify"]).arg(dir.join("audit.log")));
    assert_eq!(status.code(), Some(0), "{out}{err}");
    let events: Vec<_> = s.audit().iter().map(|l| l["event"].as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(events, ["created", "checkpoint", "checkpoint", "checkpoint", "resumed", "checkpoint"]);
}

// ---------------------------------------------------------------------------------------------
// 4. Forks, rollbacks, and the replay of a lost answer.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_and_rollbacks_are_refused_counted_and_audited_and_a_lost_answer_is_replayed() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());
    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    let ws = "ws_fork";
    let v = vec![verifier(ws, &c.create_key(ws).await.unwrap()[0])];
    let a = bodies(ws, 0, 4);
    let out_a = c.append_batch(ws, 0, a.clone()).await.unwrap();
    let b = bodies(ws, 4, 6);
    let out_b = c.append_batch_with_proofs(ws, 4, b.clone()).await.unwrap();
    let all: Vec<Hash> = hashes(&[a.clone(), b.clone()].concat());
    check_appended(ws, &all, &b, &out_b, &v);
    let size = all.len() as u64;

    let m0 = metrics(&c).await;
    let forks0 = metric(&m0, "allowly_signer_fork_attempts_total");
    let signed0 = metric(&m0, "allowly_signer_checkpoints_signed_total");

    size_mismatch(
        c.append_batch(ws, size - 1, tagged(ws, "fork", size as usize - 1, 1)).await,
        "rollback by one",
        size,
    );
    size_mismatch(c.append_batch(ws, size + 5, tagged(ws, "fork", size as usize + 5, 1)).await, "skip ahead", size);
    // Same place as the last batch but different leaves: a fork, not a retry.
    let mut forged = b.clone();
    forged[2] = body_at(ws, "forged", 6, T0 + 6);
    size_mismatch(c.append_batch(ws, 4, forged).await, "fork of the last batch", size);
    // A batch older than the last signed group is not replayed either.
    size_mismatch(c.append_batch(ws, 0, a.clone()).await, "retry of an older batch", size);

    let m1 = metrics(&c).await;
    assert_eq!(metric(&m1, "allowly_signer_fork_attempts_total") - forks0, 4.0, "every refusal counted");
    let uid = u64::from(rustix::process::geteuid().as_raw());
    let audit = s.audit();
    let refused: Vec<_> = audit.iter().filter(|l| l["event"] == "refused" && l["workspace_id"] == ws).collect();
    assert_eq!(refused.len(), 4, "one audit line per refusal: {refused:?}");
    for l in &refused {
        assert_eq!(l["peer_uid"].as_u64(), Some(uid), "refusal audited with the peer uid: {l}");
        assert_eq!(l["size"].as_u64(), Some(size), "{l}");
    }
    for expected in [size - 1, size + 5] {
        let needle = format!("expected_size {expected} ");
        assert!(
            refused.iter().any(|l| l["detail"].as_str().is_some_and(|d| d.contains(&needle))),
            "no refusal names expected_size {expected}: {refused:?}"
        );
    }

    // The exact last batch again (its answer was "lost"): same checkpoint, valid proofs, no new
    // signature, log unchanged.
    let replay = c.append_batch_with_proofs(ws, 4, b.clone()).await.unwrap();
    assert_eq!(replay.checkpoint, out_b.checkpoint, "a retry of the last batch must get the same checkpoint");
    assert_eq!(replay.proofs, out_b.proofs);
    check_appended(ws, &all, &b, &replay, &v);
    // Replayed again without proofs (what the service asks): same checkpoint, no proofs.
    let bare = c.append_batch(ws, 4, b.clone()).await.unwrap();
    assert_eq!(bare.checkpoint, out_b.checkpoint);
    check_appended_without_proofs(ws, &all, &b, &bare, &v);
    // Behind but agreeing (the last batch again with one new receipt after it, as a service
    // retrying a lost answer with what it committed meanwhile): told the size, not a fork.
    let mut more = b.clone();
    more.extend(bodies(ws, 10, 1));
    size_mismatch(c.append_batch(ws, 4, more).await, "retry with more leaves", size);
    let m2 = metrics(&c).await;
    assert_eq!(metric(&m2, "allowly_signer_checkpoints_signed_total"), signed0, "the replay signed something");
    assert_eq!(metric(&m2, "allowly_signer_fork_attempts_total") - forks0, 4.0, "a replay counted as a fork");
    let replays =
        |m: &str, answer: &str| metric0(m, &format!("allowly_signer_append_replays_total{{answer=\"{answer}\"}}"));
    assert_eq!(replays(&m2, "checkpoint") - replays(&m0, "checkpoint"), 2.0, "exact replays counted");
    assert_eq!(replays(&m2, "size_mismatch") - replays(&m0, "size_mismatch"), 1.0, "the stale retry counted");
    let stale: Vec<_> = s.audit().into_iter().filter(|l| l["event"] == "stale" && l["workspace_id"] == ws).collect();
    assert_eq!(stale.len(), 1, "the stale retry is audited as such: {stale:?}");
    assert_eq!(s.audit().iter().filter(|l| l["event"] == "refused").count(), 4, "and not as a refusal");
    let latest = c.latest_checkpoint(ws).await.unwrap();
    assert_eq!((latest.size, latest.checkpoint.as_deref()), (size, Some(out_b.checkpoint.as_str())));
    assert_ne!(out_a.checkpoint, out_b.checkpoint);
}

/// The forged-leaf scenario: a client on the signer's socket (what a compromised front end is)
/// tries to get a checkpoint over something that is not the next receipt of that workspace's
/// log. Every attempt is refused as a whole batch, nothing is signed, each refusal is counted
/// by reason and audited with the peer uid, and the honest log goes on afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signer_refuses_anything_but_the_next_receipts_of_that_workspace() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());
    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    let ws = "ws_forge";
    let v = vec![verifier(ws, &c.create_key(ws).await.unwrap()[0])];
    c.create_key("ws_other").await.unwrap();
    let good = bodies(ws, 0, 3);
    let mut all = hashes(&good);
    let out = c.append_batch(ws, 0, good.clone()).await.unwrap();
    check_appended_without_proofs(ws, &all, &good, &out, &v);
    let m0 = metrics(&c).await;

    // A key.rotated receipt is the signer's own: a caller may not append one.
    let mut rotated: serde_json::Value = serde_json::from_slice(&body_at(ws, "", 3, T0 + 3)).unwrap();
    for member in ["authorization_id", "seq", "prev", "decision", "reason", "resource", "context_hash"] {
        rotated[member] = serde_json::Value::Null;
    }
    rotated["kind"] = "key.rotated".into();
    rotated["key"] = serde_json::json!({"key_id": "00000000", "vkey": "x", "replaces": "11111111"});
    let rotated = allowly_receipt::jcs::canonicalize(&rotated).unwrap();
    let mut no_time: serde_json::Value = serde_json::from_slice(&body_at(ws, "", 3, T0 + 3)).unwrap();
    no_time.as_object_mut().unwrap().remove("time");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;

    let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
        ("a bare leaf hash", vec![merkle::leaf_hash(b"forged").to_vec()], "malformed"),
        ("JSON that is not a receipt", vec![br#"{"decision":"allow"}"#.to_vec()], "malformed"),
        ("a body without its time", vec![allowly_receipt::jcs::canonicalize(&no_time).unwrap()], "malformed"),
        ("a receipt of another workspace", vec![body_at("ws_other", "", 3, T0 + 3)], "workspace"),
        ("a receipt claiming another index", vec![body_at(ws, "", 7, T0 + 7)], "log_index"),
        ("a good body then a wrong index", vec![body_at(ws, "", 3, T0 + 3), body_at(ws, "", 3, T0 + 3)], "log_index"),
        ("a key.rotated receipt", vec![rotated], "kind"),
        (
            "time going backwards in a batch",
            vec![body_at(ws, "", 3, T0 + 9), body_at(ws, "", 4, T0 + 8)],
            "time_backwards",
        ),
        ("time before the log's last leaf", vec![body_at(ws, "", 3, T0 + 1)], "time_backwards"),
        ("time an hour ahead of the signer", vec![body_at(ws, "", 3, now + 3_600_000)], "time_future"),
    ];
    let uid = u64::from(rustix::process::geteuid().as_raw());
    for (what, batch, _) in &cases {
        let e = remote(c.append_batch(ws, 3, batch.clone()).await, what);
        assert_eq!(e.code, ErrorCode::ReceiptRefused, "{what}: {e}");
        assert!(
            e.message.contains("log_index 3") || e.message.contains("log index 3") || e.message.contains("index 4"),
            "{what}: the refusal names the index: {e}"
        );
    }
    let m1 = metrics(&c).await;
    assert_eq!(
        metric(&m1, "allowly_signer_checkpoints_signed_total"),
        metric(&m0, "allowly_signer_checkpoints_signed_total"),
        "something was signed"
    );
    assert_eq!(metric(&m1, "allowly_signer_fork_attempts_total"), metric(&m0, "allowly_signer_fork_attempts_total"));
    for reason in ["malformed", "workspace", "log_index", "kind", "time_backwards", "time_future"] {
        let name = format!("allowly_signer_receipts_refused_total{{reason=\"{reason}\"}}");
        let want = cases.iter().filter(|(_, _, r)| *r == reason).count() as f64;
        assert_eq!(metric0(&m1, &name) - metric0(&m0, &name), want, "refusals counted by reason {reason}");
    }
    let latest = c.latest_checkpoint(ws).await.unwrap();
    assert_eq!((latest.size, latest.checkpoint.as_deref()), (3, Some(out.checkpoint.as_str())), "the log moved");
    let refused: Vec<_> =
        s.audit().into_iter().filter(|l| l["event"] == "receipt_refused" && l["workspace_id"] == ws).collect();
    assert_eq!(refused.len(), cases.len(), "one audit line per refused batch: {refused:?}");
    assert!(refused.iter().all(|l| l["peer_uid"].as_u64() == Some(uid) && l["size"] == 3), "{refused:?}");

    // The honest next receipts are still signed, over exactly the leaves the test computed.
    let next = bodies(ws, 3, 2);
    let out = c.append_batch(ws, 3, next.clone()).await.unwrap();
    all.extend(hashes(&next));
    check_appended_without_proofs(ws, &all, &next, &out, &v);
    // The audit line of a signed group lists its leaf hashes.
    let audit = s.audit();
    let line = audit.iter().rev().find(|l| l["event"] == "checkpoint" && l["workspace_id"] == ws).unwrap();
    let listed: Vec<String> =
        line["leaves"].as_array().unwrap().iter().map(|h| h.as_str().unwrap().to_owned()).collect();
    assert_eq!(listed, all[3..].iter().map(hex::encode).collect::<Vec<_>>(), "{line}");
}

/// The time floor survives a restart: it is in the signer's journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_floor_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());
    let ws = "ws_floor";
    {
        let mut s = Signer::serve(&dir, &sock);
        let c = s.ready().await;
        c.create_key(ws).await.unwrap();
        c.append_batch(ws, 0, vec![body_at(ws, "", 0, T0 + 1000)]).await.unwrap();
        s.kill9();
    }
    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    let e = remote(c.append_batch(ws, 1, vec![body_at(ws, "", 1, T0 + 999)]).await, "backwards after restart");
    assert_eq!(e.code, ErrorCode::ReceiptRefused, "{e}");
    c.append_batch(ws, 1, vec![body_at(ws, "", 1, T0 + 1000)]).await.unwrap();
}

/// A benign recovery is not a fork attempt: the signer is stopped (SIGSTOP) while the service,
/// whose answer is late, sends the same append again and then again with what it committed
/// meanwhile; resumed, the signer signs once and answers the repeats as replays, with no fork
/// counted and no `refused` audit line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_signer_answers_repeated_appends_as_replays_not_forks() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());
    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    let ws = "ws_pause";
    c.create_key(ws).await.unwrap();
    c.append_batch(ws, 0, bodies(ws, 0, 2)).await.unwrap();
    let m0 = metrics(&c).await;

    let first = bodies(ws, 2, 3);
    let mut more = first.clone();
    more.extend(bodies(ws, 5, 2));
    let mut wire = Vec::new();
    for (id, batch) in [(1, &first), (2, &first), (3, &more)] {
        let req = Request::AppendBatch {
            workspace_id: ws.into(),
            expected_size: 2,
            bodies: batch.clone(),
            want_proofs: false,
        };
        wire.extend(frame(id, &req));
    }
    let pid = rustix::process::Pid::from_raw(s.pid() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    let mut st = UnixStream::connect(&sock).await.unwrap();
    st.write_all(&wire).await.unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    let mut answers = HashMap::new();
    for _ in 0..3 {
        let (id, resp) = read_response(&mut st).await.expect("answered");
        answers.insert(id, resp);
    }
    let Some(Response::Appended { new_size: 5, .. }) = answers.get(&1) else { panic!("{answers:?}") };
    for id in [2, 3] {
        match &answers[&id] {
            Response::Appended { new_size: 5, .. } => {}
            Response::Error(e) if e.code == ErrorCode::SizeMismatch && e.current_size == Some(5) => {}
            other => panic!("request {id}: {other:?}"),
        }
    }
    let m1 = metrics(&c).await;
    assert_eq!(metric(&m1, "allowly_signer_fork_attempts_total"), metric(&m0, "allowly_signer_fork_attempts_total"));
    let replays = |m: &str| {
        ["checkpoint", "size_mismatch"]
            .iter()
            .map(|a| metric0(m, &format!("allowly_signer_append_replays_total{{answer=\"{a}\"}}")))
            .sum::<f64>()
    };
    assert_eq!(replays(&m1) - replays(&m0), 2.0, "both repeats counted as replays");
    assert_eq!(
        metric(&m1, "allowly_signer_checkpoints_signed_total") - metric(&m0, "allowly_signer_checkpoints_signed_total"),
        1.0
    );
    assert!(!s.audit().iter().any(|l| l["event"] == "refused"), "a replay audited as a refusal");
    assert!(!s.stderr().contains("fork"), "a replay logged as a fork:\n{}", s.stderr());
    // The caller catches up at the size it was told.
    c.append_batch(ws, 5, bodies(ws, 5, 2)).await.unwrap();
}

/// `allowly-signer audit verify` on the real audit log of a real signer: intact passes (and
/// prints its head); each kind of tampering fails with a message naming the line, exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_passes_an_intact_log_and_names_each_kind_of_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());
    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    let ws = "ws_audit";
    c.create_key(ws).await.unwrap();
    for at in 0..4 {
        c.append_batch(ws, at, bodies(ws, at as usize, 1)).await.unwrap();
    }
    let _ = c.append_batch(ws, 0, bodies(ws, 0, 1)).await; // a refusal line too
    let text = s.audit_text();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    assert!(lines.len() >= 6, "{text}");

    let verify = |name: &str, content: &str, head: Option<&str>| {
        let path = tmp.path().join(name);
        std::fs::write(&path, content).unwrap();
        let mut cmd = Command::new(signer_bin());
        cmd.args(["audit", "verify"]).arg(&path);
        if let Some(h) = head {
            cmd.args(["--head", h]);
        }
        let (status, out, err) = run_with_deadline(&mut cmd);
        (status.code(), format!("{out}{err}"))
    };
    let (code, out) = verify("intact", &text, None);
    assert_eq!(code, Some(0), "{out}");
    let head = out.split("head ").nth(1).unwrap().trim().to_owned();
    assert_eq!(head.len(), 64, "{out}");
    let (code, out) = verify("intact_head", &text, Some(&head));
    assert_eq!(code, Some(0), "{out}");

    let without = |i: usize| lines.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, l)| *l).collect::<String>();
    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    let mut duplicated = lines.clone();
    duplicated.insert(2, lines[1]);
    let edited = text.replacen("\"size\":1", "\"size\":9", 1);
    assert_ne!(edited, text);
    let last = lines.len();
    let torn = format!("last line ({}) has no newline", last + 1);
    let cases: Vec<(&str, String, Option<&str>, &str)> = vec![
        ("deleted_line", without(2), None, "line 3's prev is not the hash of line 2"),
        ("deleted_first", without(0), None, "line 1 does not start the chain"),
        ("reordered", swapped.concat(), None, "line 2's prev is not the hash of line 1"),
        ("inserted", duplicated.concat(), None, "line 3's prev is not the hash of line 2"),
        ("edited", edited, None, "prev is not the hash of line"),
        ("garbage", format!("{}not json\n{}", lines[0], lines[1..].concat()), None, "line 2 is not a JSON object"),
        ("torn", format!("{}{{\"prev\"", text), None, &torn),
        ("cut_tail", without(last - 1), Some(&head), "no line has the recorded head hash"),
    ];
    for (name, content, h, needle) in cases {
        let (code, out) = verify(name, &content, h);
        assert_eq!(code, Some(1), "{name}: {out}");
        assert!(out.contains("TAMPERED") && out.contains(needle), "{name}: expected {needle:?} in:\n{out}");
    }
    let (status, _, err) =
        run_with_deadline(Command::new(signer_bin()).args(["audit", "verify", "/nonexistent/audit.log"]));
    assert_eq!(status.code(), Some(2), "{err}");
}

// ---------------------------------------------------------------------------------------------
// 5. Peer check.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_configured_uids_reach_the_signer() {
    let tmp = traversable_tempdir();
    let bin = copy_bin_to(tmp.path());
    let dir = tmp.path().join("data");
    init_dir(&dir);
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o711)).unwrap();
    let sock = run.join("signer.sock");
    let open_socket = |sock: &Path| std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o777)).unwrap();
    let ping_as_nobody = |sock: &Path| {
        let mut cmd = setpriv_nobody();
        cmd.arg(&bin).arg("ping").arg("--socket").arg(sock);
        run_with_deadline(&mut cmd)
    };

    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    open_socket(&sock);
    let rejected0 = metric(&metrics(&c).await, "allowly_signer_peer_rejected_total");
    let (status, out, err) = ping_as_nobody(&sock);
    assert!(!status.success(), "uid {NOBODY} got an answer: {out} {err}");
    assert!(!err.contains("Permission denied"), "the attempt must reach connect(), not fail on file modes: {err}");
    let rejected = metric(&metrics(&c).await, "allowly_signer_peer_rejected_total");
    assert!(rejected >= 1.0 && rejected > rejected0, "rejection not counted: {rejected}");

    // Control: root (the signer's own uid) is answered.
    let (status, out, err) = run_with_deadline(Command::new(&bin).arg("ping").arg("--socket").arg(&sock));
    assert!(status.success() && out.contains("pong"), "root ping failed: {out} {err}");
    drop(c);
    s.kill9();

    // Control: the same unprivileged ping succeeds once its uid is configured, so the refusal
    // above is the peer check and not the test set-up.
    let mut cmd = Command::new(signer_bin());
    cmd.arg("serve").arg("--dir").arg(&dir).arg("--socket").arg(&sock).args(["--allow-uid", NOBODY]);
    let mut s = Signer::spawn(cmd, &dir, &sock);
    let _c = s.ready().await;
    open_socket(&sock);
    let (status, out, err) = ping_as_nobody(&sock);
    assert!(status.success() && out.contains("pong"), "allowed uid {NOBODY} not answered: {out} {err}");
}

// ---------------------------------------------------------------------------------------------
// 6. Memory not readable by the signer's own uid.

/// Kills and reaps a plain child on drop.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn proc_field(pid: u32, file: &str, prefix: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in /proc/{pid}/{file}")).into()
}

/// Opens `/proc/<pid>/mem` for reading as uid 65534. Returns (opened, stderr).
fn open_mem_as_nobody(pid: u32) -> (bool, String) {
    let mut cmd = setpriv_nobody();
    cmd.args(["/bin/sh", "-c", &format!("exec 3</proc/{pid}/mem && echo opened")]);
    let (status, out, err) = run_with_deadline(&mut cmd);
    (status.success() && out.contains("opened"), err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signer_memory_is_not_readable_by_its_own_uid() {
    let tmp = traversable_tempdir();
    let bin = copy_bin_to(tmp.path());
    let dir = tmp.path().join("data");
    let run = tmp.path().join("run");
    for d in [&dir, &run] {
        std::fs::create_dir(d).unwrap();
        std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let mut init = setpriv_nobody();
    init.arg(&bin).arg("init").arg("--dir").arg(&dir);
    let (status, _, err) = run_with_deadline(&mut init);
    assert!(status.success(), "init as {NOBODY}: {err}");
    assert_eq!(std::fs::metadata(dir.join("master.key")).unwrap().uid(), 65534);

    let sock = run.join("signer.sock");
    let mut cmd = setpriv_nobody();
    cmd.arg(&bin).arg("serve").arg("--dir").arg(&dir).arg("--socket").arg(&sock).args(["--allow-uid", "0"]);
    let mut s = Signer::spawn(cmd, &dir, &sock);
    let c = s.ready().await;
    // Key material in memory.
    c.create_key("ws_mem").await.unwrap();
    c.append_batch("ws_mem", 0, bodies("ws_mem", 0, 3)).await.unwrap();
    let pid = s.pid();
    assert_eq!(proc_field(pid, "status", "Uid:").split_whitespace().nth(1), Some(NOBODY), "signer runs as nobody");
    let core = proc_field(pid, "limits", "Max core file size");
    assert_eq!(core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(), ["0", "0"], "core limit: {core}");

    let (opened, err) = open_mem_as_nobody(pid);
    assert!(!opened, "uid {NOBODY} opened the signer's /proc/{pid}/mem");
    assert!(err.contains("Permission denied"), "expected EACCES, got: {err}");

    // Control: the same reader opens the memory of an ordinary (dumpable) process of its uid.
    let mut sleeper = setpriv_nobody();
    sleeper.args(["sleep", "30"]).stdin(std::process::Stdio::null());
    let ctl = ChildGuard(sleeper.spawn().unwrap());
    let cpid = ctl.0.id();
    eventually("the control process to exec sleep", String::new, || async {
        (std::fs::read_to_string(format!("/proc/{cpid}/comm")).ok()? == "sleep\n").then_some(())
    })
    .await;
    assert_eq!(proc_field(cpid, "status", "Uid:").split_whitespace().nth(1), Some(NOBODY));
    let (opened, err) = open_mem_as_nobody(cpid);
    assert!(opened, "control: uid {NOBODY} cannot open /proc/{cpid}/mem of its own dumpable process: {err}");
    assert!(s.try_wait().is_none(), "signer died");
}

// ---------------------------------------------------------------------------------------------
// 7. Malformed input.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_errors_or_a_closed_connection_and_the_signer_stays_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());
    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    let bad0 = metric(&metrics(&c).await, "allowly_signer_bad_frames_total");

    let mut st = UnixStream::connect(&sock).await.unwrap();
    let append = |id, ws: &str| {
        frame(
            id,
            &Request::AppendBatch {
                workspace_id: ws.into(),
                expected_size: 0,
                bodies: vec![body_at(ws, "", 0, T0)],
                want_proofs: false,
            },
        )
    };
    let truncated = {
        let full = append(103, "ws_x");
        let body = &full[4..full.len() - 5];
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    };
    let empty_batch = {
        let mut body = 4u32.to_be_bytes().to_vec();
        body.extend_from_slice(b"ws_x");
        body.extend_from_slice(&0u64.to_be_bytes());
        body.extend_from_slice(&0u32.to_be_bytes());
        raw_frame(PROTOCOL_VERSION, 0x05, 105, &body)
    };
    let cases: Vec<(Vec<u8>, u64, ErrorCode)> = vec![
        // Version 1 (before want_proofs) and 2 (leaf hashes, not bodies) are refused like any other.
        (raw_frame(1, 0x01, 101, &[]), 101, ErrorCode::UnsupportedVersion),
        (raw_frame(2, 0x01, 106, &[]), 106, ErrorCode::UnsupportedVersion),
        (raw_frame(PROTOCOL_VERSION, 0x42, 102, &[]), 102, ErrorCode::UnknownKind),
        (truncated, 103, ErrorCode::BadFrame),
        (append(104, "ws_nobody_created"), 104, ErrorCode::UnknownWorkspace),
        (empty_batch, 105, ErrorCode::InvalidArgument),
    ];
    for (bytes, id, code) in &cases {
        st.write_all(bytes).await.unwrap();
        match read_response(&mut st).await.expect("connection closed after an addressable error") {
            (got, Response::Error(e)) => {
                assert_eq!(got, *id, "answer addressed to the request id");
                assert_eq!(e.code, *code, "request {id}: {e}");
            }
            other => panic!("request {id}: expected Error({code}), got {other:?}"),
        }
    }
    // The connection survives addressable errors.
    st.write_all(&frame(106, &Request::Ping)).await.unwrap();
    assert_eq!(read_response(&mut st).await.unwrap(), (106, Response::Pong));

    // Unaddressable input closes that connection (without our closing our side first).
    let oversize = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
    for bytes in [oversize, vec![0, 0, 0, 0], vec![0, 0, 0, 3, 1, 2, 3]] {
        let mut st = UnixStream::connect(&sock).await.unwrap();
        st.write_all(&bytes).await.unwrap();
        assert_eq!(wait_closed(&mut st).await, 0, "no answer to {bytes:?}, just a close");
    }
    // Random garbage (then end of input, since random bytes may announce a long frame).
    for seed in 1..=8u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let garbage: Vec<u8> = (0..rng.range(1, 4096)).map(|_| rng.next() as u8).collect();
        let mut st = UnixStream::connect(&sock).await.unwrap();
        // The signer may close before reading everything: a failed write is fine.
        let _ = st.write_all(&garbage).await;
        let _ = st.shutdown().await;
        wait_closed(&mut st).await;
    }

    assert!(s.try_wait().is_none(), "the signer exited on malformed input\n{}", s.diagnostics());
    let fresh_client = client(&sock);
    fresh_client.ping().await.unwrap();
    let v = vec![verifier("ws_after", &fresh_client.create_key("ws_after").await.unwrap()[0])];
    let batch = bodies("ws_after", 0, 3);
    let out = fresh_client.append_batch_with_proofs("ws_after", 0, batch.clone()).await.unwrap();
    check_appended("ws_after", &hashes(&batch), &batch, &out, &v);
    let bad = metric(&metrics(&c).await, "allowly_signer_bad_frames_total") - bad0;
    assert!(bad >= 7.0, "bad frames not counted: {bad}");
    assert!(s.try_wait().is_none());
}

// ---------------------------------------------------------------------------------------------
// 8. Start-up refusals.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_whose_log_state_vanished_is_refused_not_restarted() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());
    let ws = "ws_lost_state";
    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    c.create_key(ws).await.unwrap();
    let out = c.append_batch(ws, 0, bodies(ws, 0, 5)).await.unwrap();
    s.kill9();
    drop(c);

    std::fs::remove_file(dir.join("journal")).unwrap();
    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    for (at, what) in [(0, "append at 0 (a restarted log)"), (out.new_size, "append at the old size")] {
        let e = remote(c.append_batch(ws, at, bodies(ws, 100, 1)).await, what);
        assert_eq!(e.code, ErrorCode::Internal, "{what}: {e}");
    }
    // Asked for its log, it says it has none (size 0, no checkpoint) — what a new owner's signer
    // with imported keys says too, so the caller knows to `Adopt` a verified checkpoint — and
    // still never restarts one by itself (the appends above).
    let latest = c.latest_checkpoint(ws).await.unwrap();
    assert_eq!((latest.size, latest.checkpoint), (0, None));
    assert_eq!(remote(c.rotate_key(ws, 0).await, "RotateKey").code, ErrorCode::Internal);
    assert_eq!(remote(c.create_key(ws).await, "CreateKey").code, ErrorCode::WorkspaceExists);
    let journal = std::fs::read(dir.join("journal")).unwrap();
    let needle = format!("\"ws\":\"{ws}\"");
    assert!(!journal.windows(needle.len()).any(|w| w == needle.as_bytes()), "the signer recreated the log state");
    eventually(
        "the refusal in the signer's log",
        || s.diagnostics(),
        || async { s.stderr().contains("refusing to restart the log").then_some(()) },
    )
    .await;
    // Other workspaces are unaffected.
    c.create_key("ws_fine").await.unwrap();
    c.append_batch("ws_fine", 0, bodies("ws_fine", 0, 1)).await.unwrap();

    // The other way round: the journal keeps a log whose keys vanished. Creating the workspace
    // again would restart that log at 0 (a fork); it is refused.
    std::fs::remove_file(dir.join("keys").join("ws_fine.json")).unwrap();
    s.kill9();
    drop(c);
    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    assert_eq!(remote(c.create_key("ws_fine").await, "CreateKey over a kept log").code, ErrorCode::Internal);
    assert!(!dir.join("keys").join("ws_fine.json").exists(), "keys created over an existing log");
    // A workspace whose creation wrote its (empty) record but not its keys can be created again.
    c.create_key("ws_new").await.unwrap();
    std::fs::remove_file(dir.join("keys").join("ws_new.json")).unwrap();
    s.kill9();
    drop(c);
    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    c.create_key("ws_new").await.unwrap();
    c.append_batch("ws_new", 0, bodies("ws_new", 0, 2)).await.unwrap();
}

/// Appends without proofs (the service's call): the checkpoint covers exactly our leaves, the
/// answer carries no proofs, and it is the same tree as with proofs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_without_proofs_sign_the_same_log_and_send_no_proofs() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());
    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    let ws = "ws_noproofs";
    let v = vec![verifier(ws, &c.create_key(ws).await.unwrap()[0])];
    let mut all: Vec<Hash> = Vec::new();
    for (i, n) in [1usize, 2, 7, 64, 1, 300].into_iter().enumerate() {
        let batch = bodies(ws, all.len(), n);
        let at = all.len() as u64;
        all.extend(hashes(&batch));
        if i % 2 == 0 {
            let out = c.append_batch(ws, at, batch.clone()).await.unwrap();
            check_appended_without_proofs(ws, &all, &batch, &out, &v);
        } else {
            let out = c.append_batch_with_proofs(ws, at, batch.clone()).await.unwrap();
            check_appended(ws, &all, &batch, &out, &v);
        }
    }
    assert_eq!(c.latest_checkpoint(ws).await.unwrap().size, all.len() as u64);
}

/// `AppendMany`: one request carries several workspaces' appends, each signed as its own
/// checkpoint over exactly our leaves; one append's refusal (a stale size, a body of another
/// workspace, an unknown workspace) is its own result and the others in the request are signed
/// (a stale size with the bodies already signed there would be a replay, answered as such: so
/// the stale append here carries other bodies, a fork attempt);
/// a request naming a workspace twice is refused whole, with nothing appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_append_many_signs_each_workspace_on_its_own_and_refuses_only_the_bad_appends() {
    use allowly_signer_proto::Append;
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());
    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    let names: Vec<String> = (0..5).map(|w| format!("ws_multi_{w}")).collect();
    let mut verifiers = HashMap::new();
    for ws in &names {
        verifiers.insert(ws.clone(), vec![verifier(ws, &c.create_key(ws).await.unwrap()[0])]);
    }
    let mut all: HashMap<String, Vec<Hash>> = names.iter().map(|w| (w.clone(), Vec::new())).collect();
    let m0 = metrics(&c).await;
    // Two clean rounds over every workspace, different batch sizes each.
    for round in 0..2 {
        let mut appends = Vec::new();
        for (i, ws) in names.iter().enumerate() {
            let at = all[ws].len();
            appends.push(Append {
                workspace_id: ws.clone(),
                expected_size: at as u64,
                bodies: bodies(ws, at, 1 + i + round),
            });
        }
        let sent = appends.clone();
        let results = c.append_many(appends).await.unwrap();
        assert_eq!(results.len(), sent.len());
        for (a, r) in sent.iter().zip(results) {
            let out = r.unwrap_or_else(|e| panic!("{}: {e}", a.workspace_id));
            let leaves = all.get_mut(&a.workspace_id).unwrap();
            leaves.extend(hashes(&a.bodies));
            check_appended_without_proofs(&a.workspace_id, leaves, &a.bodies, &out, &verifiers[&a.workspace_id]);
        }
    }
    let m1 = metrics(&c).await;
    let signed =
        metric(&m1, "allowly_signer_checkpoints_signed_total") - metric(&m0, "allowly_signer_checkpoints_signed_total");
    assert_eq!(signed as usize, 2 * names.len(), "one checkpoint per workspace per request");
    assert_eq!(
        metric(&m1, "allowly_signer_requests_total{op=\"AppendMany\",outcome=\"ok\"}"),
        2.0,
        "two requests carried the ten appends"
    );

    // One request with three bad appends among good ones.
    let (good0, stale, foreign, good1) = (&names[0], &names[1], &names[2], &names[3]);
    let sizes: HashMap<String, usize> = all.iter().map(|(w, l)| (w.clone(), l.len())).collect();
    let at = |ws: &str| sizes[ws];
    let appends = vec![
        Append { workspace_id: good0.clone(), expected_size: at(good0) as u64, bodies: bodies(good0, at(good0), 3) },
        Append {
            workspace_id: stale.clone(),
            expected_size: at(stale) as u64 - 1,
            bodies: tagged(stale, "fork", at(stale) - 1, 1),
        },
        Append {
            workspace_id: foreign.clone(),
            expected_size: at(foreign) as u64,
            bodies: bodies(good1, at(foreign), 1),
        },
        Append { workspace_id: "ws_never_created".into(), expected_size: 0, bodies: bodies("ws_never_created", 0, 1) },
        Append { workspace_id: good1.clone(), expected_size: at(good1) as u64, bodies: bodies(good1, at(good1), 2) },
    ];
    let sent = appends.clone();
    let results = c.append_many(appends).await.unwrap();
    let mut results = results.into_iter();
    let out = results.next().unwrap().unwrap();
    let leaves = all.get_mut(good0).unwrap();
    leaves.extend(hashes(&sent[0].bodies));
    check_appended_without_proofs(good0, leaves, &sent[0].bodies, &out, &verifiers[good0]);
    size_mismatch(results.next().unwrap(), "stale size", at(stale) as u64);
    assert_eq!(remote(results.next().unwrap(), "another workspace's body").code, ErrorCode::ReceiptRefused);
    assert_eq!(remote(results.next().unwrap(), "unknown workspace").code, ErrorCode::UnknownWorkspace);
    let out = results.next().unwrap().unwrap();
    let leaves = all.get_mut(good1).unwrap();
    leaves.extend(hashes(&sent[4].bodies));
    check_appended_without_proofs(good1, leaves, &sent[4].bodies, &out, &verifiers[good1]);
    for ws in [stale, foreign] {
        assert_eq!(c.latest_checkpoint(ws.clone()).await.unwrap().size, all[ws].len() as u64, "{ws} unchanged");
    }

    // A workspace twice in one request: refused whole (the client refuses to send it, so the
    // frame is written by hand), nothing appended to either.
    let w = &names[4];
    let one = |n: u64| Append { workspace_id: w.clone(), expected_size: n, bodies: bodies(w, n as usize, 1) };
    assert!(matches!(
        c.append_many(vec![one(at(w) as u64), one(at(w) as u64 + 1)]).await,
        Err(ClientError::InvalidRequest(_))
    ));
    // Encoded with a stand-in id of the same length, which is then overwritten with `w`'s.
    let stand_in = "ws_multi_X";
    assert_eq!(stand_in.len(), w.len());
    let second = Append { workspace_id: stand_in.into(), ..one(at(w) as u64 + 1) };
    let mut raw = frame(41, &Request::AppendMany { appends: vec![one(at(w) as u64), second] });
    let pos = raw.windows(stand_in.len()).position(|x| x == stand_in.as_bytes()).unwrap();
    raw[pos..pos + stand_in.len()].copy_from_slice(w.as_bytes());
    let mut stream = UnixStream::connect(&sock).await.unwrap();
    stream.write_all(&raw).await.unwrap();
    let mut buf = Vec::new();
    let answer = allowly_signer_proto::read_frame(&mut stream, &mut buf).await.unwrap().unwrap();
    let (id, resp) = allowly_signer_proto::decode_response(answer).unwrap();
    assert_eq!(id, 41);
    assert!(
        matches!(&resp, Response::Error(e) if e.code == ErrorCode::InvalidArgument),
        "a workspace twice in one request: {resp:?}"
    );
    assert_eq!(c.latest_checkpoint(w.clone()).await.unwrap().size, all[w].len() as u64, "nothing appended");
}

/// Audit lines: one per created workspace, per signed checkpoint and per load, all whole JSON;
/// the journal costs at most one fsync per signed group, shared across workspaces, and
/// `audit.log` none (the journal holds its lines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_workspaces_appending_at_once_are_all_signed_and_audited() {
    const WORKSPACES: usize = 40;
    const ROUNDS: usize = 5;
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());
    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    for w in 0..WORKSPACES {
        c.create_key(format!("ws_many_{w}")).await.unwrap();
    }
    let m0 = metrics(&c).await;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WORKSPACES {
        let c = c.clone();
        tasks.spawn(async move {
            let ws = format!("ws_many_{w}");
            let mut size = 0u64;
            for r in 0..ROUNDS {
                let out = c.append_batch(ws.clone(), size, bodies(&ws, r, 1)).await.unwrap();
                size = out.new_size;
            }
            (ws, size)
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (ws, size) = r.unwrap();
        assert_eq!(c.latest_checkpoint(ws).await.unwrap().size, ROUNDS as u64);
        assert_eq!(size, ROUNDS as u64);
    }
    let m1 = metrics(&c).await;
    let signed =
        metric(&m1, "allowly_signer_checkpoints_signed_total") - metric(&m0, "allowly_signer_checkpoints_signed_total");
    assert_eq!(signed as usize, WORKSPACES * ROUNDS, "one checkpoint per sequential batch");
    let fsyncs = metric(&m1, "allowly_signer_fsyncs_total{file=\"journal\"}")
        - metric(&m0, "allowly_signer_fsyncs_total{file=\"journal\"}");
    assert!(fsyncs >= 1.0 && fsyncs <= signed, "journal fsyncs {fsyncs} for {signed} signatures");
    let audit_fsyncs = metric(&m1, "allowly_signer_fsyncs_total{file=\"audit\"}")
        - metric(&m0, "allowly_signer_fsyncs_total{file=\"audit\"}");
    assert_eq!(audit_fsyncs, 0.0, "audit.log fsynced per group");
    let checkpoints = s.audit().into_iter().filter(|l| l["event"] == "checkpoint").count();
    assert_eq!(checkpoints, WORKSPACES * ROUNDS, "one audit line per signed checkpoint");

    // After a restart every workspace continues where it was, with a `resumed` line.
    s.kill9();
    drop(c);
    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    for w in 0..WORKSPACES {
        let ws = format!("ws_many_{w}");
        c.append_batch(ws.clone(), ROUNDS as u64, bodies(&ws, ROUNDS, 1)).await.unwrap();
    }
    let resumed = s.audit().into_iter().filter(|l| l["event"] == "resumed").count();
    assert_eq!(resumed, WORKSPACES);
}

/// Fills the filesystem of `dir` with a file until a write fails with ENOSPC.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x55u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    path
}

/// A real full disk (a small tmpfs): appends fail (nothing signed leaves), the journal is not
/// torn, appends work again once there is space, and a restart continues from exactly the last
/// acknowledged checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_appends_cleanly_and_they_resume_when_space_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    let _mount = Mount::tmpfs(&mnt, "4m");
    let (dir, sock) = fresh(&mnt);
    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    let ws = "ws_full";
    let v = vec![verifier(ws, &c.create_key(ws).await.unwrap()[0])];
    let mut all: Vec<Hash> = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let batch = bodies(ws, all.len(), 8);
        let out = c.append_batch(ws, all.len() as u64, batch.clone()).await.unwrap();
        all.extend(hashes(&batch));
        check_appended_without_proofs(ws, &all, &batch, &out, &v);
        last = Some(out.checkpoint);
    }

    let filler = fill(&mnt);
    // The journal's last page may have room for a few more records; then writes must fail.
    let mut refused = None;
    for _ in 0..10_000 {
        let batch = bodies(ws, all.len(), 64);
        match c.append_batch(ws, all.len() as u64, batch.clone()).await {
            Ok(out) => {
                all.extend(hashes(&batch));
                check_appended_without_proofs(ws, &all, &batch, &out, &v);
                last = Some(out.checkpoint);
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = remote(refused.map_or(Ok(()), Err), "append on a full disk");
    assert_eq!(e.code, ErrorCode::StorageFailed, "{e}");
    // Nothing of the failed group was kept: the log is where the last answer left it.
    let latest = c.latest_checkpoint(ws).await.unwrap();
    assert_eq!((latest.size, latest.checkpoint.as_ref()), (all.len() as u64, last.as_ref()));
    assert!(metric(&metrics(&c).await, "allowly_signer_journal_failures_total") >= 1.0);

    std::fs::remove_file(&filler).unwrap();
    let batch = bodies(ws, all.len(), 5);
    let out = c.append_batch(ws, all.len() as u64, batch.clone()).await.unwrap();
    all.extend(hashes(&batch));
    check_appended_without_proofs(ws, &all, &batch, &out, &v);
    last = Some(out.checkpoint);

    s.kill9();
    drop(c);
    let mut s = Signer::serve(&dir, &sock);
    let c = s.ready().await;
    let latest = c.latest_checkpoint(ws).await.unwrap();
    assert_eq!((latest.size, latest.checkpoint.as_ref()), (all.len() as u64, last.as_ref()), "after restart");
    assert!(!s.stderr().contains("torn"), "the journal was torn:\n{}", s.diagnostics());
    let batch = bodies(ws, all.len(), 1);
    c.append_batch(ws, all.len() as u64, batch).await.unwrap();
}

#[test]
fn a_master_key_readable_by_others_stops_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());
    let key = dir.join("master.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut s = Signer::serve(&dir, &sock);
    let status = s.wait_exit();
    assert!(!status.success(), "serve ran with a 0644 master key\n{}", s.diagnostics());
    let err = s.stderr();
    assert!(err.contains("master key") && err.contains("0600"), "unhelpful message: {err}");
    assert!(!sock.exists(), "the socket was bound anyway");

    // Control: the same directory serves once the mode is fixed.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut s = Signer::serve(&dir, &sock);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async { s.ready().await.ping().await.unwrap() });
}

// ---------------------------------------------------------------------------------------------
// 9. One signer per state directory; an embedded signer dies with its parent.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signer_on_the_same_directory_is_refused_and_the_first_keeps_its_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());
    let mut first = Signer::serve(&dir, &sock);
    let c = first.ready().await;
    c.create_key("ws_lock").await.unwrap();

    // Same directory and same socket: binding would have replaced the first signer's socket.
    let mut second = Signer::serve(&dir, &sock);
    let status = second.wait_exit();
    assert!(!status.success(), "a second signer served the same directory\n{}", second.diagnostics());
    let err = second.stderr();
    assert!(err.contains("another allowly-signer") && err.contains("lock"), "unhelpful message: {err}");

    // The first one is still the one answering, on a fresh connection through the socket path.
    assert!(first.try_wait().is_none(), "the first signer died\n{}", first.diagnostics());
    let fresh_client = client(&sock);
    fresh_client.ping().await.unwrap();
    assert_eq!(fresh_client.list_keys("ws_lock").await.unwrap().len(), 1);

    // Control: once the holder is gone (even by kill -9), the lock is free again.
    first.kill9();
    let mut third = Signer::serve(&dir, &sock);
    third.ready().await.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_parent_pid_dies_with_its_parent_and_refuses_a_parent_that_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());

    // A parent shell that starts the signer in the background, prints its pid, and waits.
    let mut parent = Command::new("sh")
        .arg("-c")
        .arg(r#""$0" serve --dir "$1" --socket "$2" --parent-pid $$ & echo $!; wait"#)
        .arg(signer_bin())
        .arg(&dir)
        .arg(&sock)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(parent.stdout.take().unwrap()), &mut line).unwrap();
    let pid: u32 = line.trim().parse().unwrap_or_else(|e| panic!("signer pid {line:?}: {e}"));
    let alive = move || {
        // Gone, or a zombie nobody reaps (the signer was re-parented): both are dead.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()).map(|st| st != "Z"))
            .unwrap_or(false)
    };
    let c = client(&sock);
    eventually("the signer under the shell to answer", String::new, || async { c.ping().await.ok() }).await;
    assert!(alive(), "control: the signer runs while its parent does");

    parent.kill().unwrap();
    parent.wait().unwrap();
    eventually("the signer to die with its parent", String::new, || async { (!alive()).then_some(()) }).await;

    // A parent pid that is not our parent (it died before the signer could ask): refuse.
    let (status, _, err) = run_with_deadline(
        Command::new(signer_bin())
            .arg("serve")
            .arg("--dir")
            .arg(&dir)
            .arg("--socket")
            .arg(&sock)
            .args(["--parent-pid", "1"]),
    );
    assert!(!status.success(), "served with a parent pid that is not its parent");
    assert!(err.contains("--parent-pid 1"), "unhelpful message: {err}");
}
