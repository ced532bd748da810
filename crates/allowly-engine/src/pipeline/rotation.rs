//! Workspace key rotation, as the signing pipeline sees it. The rotation is a leaf of the
//! workspace log that the *signer* makes (`key.rotated`, signed by the new key), so it breaks
//! the pipeline's usual order — the store has a leaf before the signer does — for exactly one
//! index. The workspace's actor reserves that index (it stops sequencing and hands over
//! `next_index` = N once every group it staged is durable); this module then:
//!
//! 1. waits until the pipeline has signed the log up to N (the signer is at N too);
//! 2. records the reservation durably (`LogMeta::rotation_at = N`, with the caller's
//!    `Idempotency-Key` record id if any; synced) — from here on a
//!    crash leaves the index reserved, and whoever starts the workspace next finishes the
//!    rotation before any receipt can take N;
//! 3. takes the workspace's signing task off the registry (it is idle: nothing is committed
//!    past N) so that nobody else talks to the signer about this log meanwhile, and asks the
//!    signer to rotate at N (`RotateKey`; a repeat after a lost answer is answered again, so
//!    asking twice is safe);
//! 4. checks the answer like any checkpoint — the body is a well-formed `key.rotated` receipt of
//!    this workspace at N, every stored key is still in the new key set, the checkpoint is
//!    signed by the new key and signs exactly the stored leaves plus this one — and stores, in
//!    one synced write, the receipt at N, the new Merkle nodes, the checkpoint, the new key set,
//!    `next_index` = N + 1 with the reservation cleared, and the caller's own ops (its
//!    `Idempotency-Key` record);
//! 5. leaves the next commit to start a fresh signing task, which loads from the store (N + 1).
//!
//! A signer that refuses (answers an error) did not rotate: the reservation is cleared and the
//! workspace goes on at N. One that does not answer may have rotated: the reservation stays
//! (receipts are refused with `signer_unavailable`) until a later attempt gets the answer.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use allowly_receipt::merkle;
use allowly_receipt::note::{self, NoteVerifier};
use allowly_receipt::types::{EventKind, ReceiptBody};
use allowly_signer_proto::client::ClientError;
use allowly_signer_proto::ErrorCode;
use allowly_store::{IdempotencyRef, LogMeta, Op, PublicKeyRecord, ReceiptRecord};

use super::{signed_ops, write_fenced, Fresh, Pipelines, Signing, Stop};
use crate::error::{EngineError, Result};
use crate::health::Divergence;
use crate::model::KeyRotation;
use crate::receipts::{key_records, key_set, signed_envelope, verifier};
use crate::services::{blocking, Services};

/// Why a rotation did not finish, and whether it is settled: `false` when the signer may hold
/// the rotation leaf (no answer), so the index must stay reserved. `outcome` is its label in
/// `allowly_engine_key_rotations_total` (`metrics::KEY_ROTATION_OUTCOMES`).
#[derive(Debug)]
pub(crate) struct RotationFailed {
    pub error: EngineError,
    pub settled: bool,
    outcome: &'static str,
}

impl RotationFailed {
    fn settled(error: EngineError) -> Self {
        Self { error, settled: true, outcome: "failed" }
    }

    fn unsettled(error: EngineError) -> Self {
        Self { error, settled: false, outcome: "unfinished" }
    }

    fn labelled(self, outcome: &'static str) -> Self {
        Self { outcome, ..self }
    }
}

/// Counts a rotation attempt's outcome in `allowly_engine_key_rotations_total`; one that
/// finished, begun at `started`, sets `allowly_engine_key_rotation_last_seconds`.
pub(crate) fn count(shared: &Services, started: Instant, out: &std::result::Result<KeyRotation, RotationFailed>) {
    let outcome = match out {
        Ok(_) => {
            shared.metrics.key_rotation_last_seconds.set(started.elapsed().as_secs_f64());
            "rotated"
        }
        Err(failed) => failed.outcome,
    };
    shared.metrics.key_rotations.with_label_values(&[outcome]).inc();
}

/// Rotates workspace `ws`'s key with the `key.rotated` leaf at index `at` (see the module
/// docs). The caller (the workspace's actor) has made every receipt below `at` durable and
/// assigns nothing meanwhile. `extra` gives the ops to write with the rotation (from its
/// answer); `idem` is the `Idempotency-Key` record they file, kept in the reservation so that
/// whoever finishes the rotation files it. Also finishes a rotation a crash interrupted (the
/// reservation is found in the store).
pub(crate) async fn rotate(
    shared: &Arc<Services>,
    pipes: &Arc<Pipelines>,
    ws: &str,
    at: u64,
    idem: Option<IdempotencyRef>,
    extra: impl FnOnce(&KeyRotation) -> Result<Vec<Op>>,
) -> std::result::Result<KeyRotation, RotationFailed> {
    pipes.signed_up_to(shared, ws, at).await.map_err(|e| {
        // `signed_up_to` answers `SignerUnavailable` only when its bound passed.
        let timed_out = matches!(e, EngineError::SignerUnavailable(_));
        let failed = RotationFailed::settled(e);
        if timed_out {
            failed.labelled("drain_timeout")
        } else {
            failed
        }
    })?;
    let reserve = LogMeta { next_index: at, rotation_at: Some(at), rotation_idempotency: idem };
    write_fenced(shared, ws, vec![Op::PutLogMeta { workspace_id: ws.to_owned(), meta: reserve }])
        .await
        .map_err(RotationFailed::settled)?;
    // Idle (nothing committed past `at`): dropping its slot ends it; the next commit starts a
    // task that loads from the store, past the rotation.
    pipes.map.remove(ws);
    let unsettled = |e| RotationFailed::unsettled(e);
    let st = Signing::load(shared, ws, Arc::new(Mutex::new(Fresh::new(0, Arc::default())))).await.map_err(unsettled)?;
    if st.frontier.size() != at {
        let e = EngineError::Internal(format!("{ws}: signed size {} at a rotation at {at}", st.frontier.size()));
        return Err(RotationFailed::unsettled(e));
    }
    let out = match tokio::time::timeout(shared.cfg.signer_timeout, shared.signer.rotate_key(ws, at)).await {
        Err(_) => return Err(unsettled(EngineError::SignerUnavailable(crate::health::SIGNING_TIMED_OUT.into()))),
        Ok(Ok(out)) => out,
        Ok(Err(ClientError::Remote(reply))) => {
            // It answered, so it did not rotate: the index is free again.
            let why = format!("the signer refused a key rotation at {at}: {reply}");
            if reply.code == ErrorCode::SizeMismatch {
                // We stand at `at`, signed; a signer elsewhere has another log.
                shared.diverged.mark(ws, Divergence::Forked, &why, &shared.metrics);
            }
            release(shared, ws, at).await.map_err(unsettled)?;
            let e = EngineError::from_signer(ClientError::Remote(reply));
            tracing::warn!(workspace = %ws, error = %e, "{why}");
            return Err(RotationFailed::settled(e).labelled("refused"));
        }
        Ok(Err(e @ ClientError::Busy)) => {
            release(shared, ws, at).await.map_err(unsettled)?;
            return Err(RotationFailed::settled(EngineError::from_signer(e)).labelled("refused"));
        }
        Ok(Err(e)) => return Err(unsettled(EngineError::from_signer(e))),
    };
    let checked = check(ws, at, &st, &out.rotation.body, &out.rotation.checkpoint, &out.keys);
    let (record, appended, keys) = match checked {
        Ok(c) => c,
        Err(why) => {
            // The signer has a leaf at `at` we cannot accept: the logs disagree from here.
            shared.diverged.mark(ws, Divergence::Forked, &why, &shared.metrics);
            let e = EngineError::Conflict(format!("the signer's key rotation does not check: {why}"));
            return Err(unsettled(e).labelled("failed"));
        }
    };
    let proof = appended.proofs.first().cloned().unwrap_or_default();
    let answer = KeyRotation {
        keys: key_set(ws, &keys).map_err(unsettled)?,
        receipt: signed_envelope(&record, proof, out.rotation.checkpoint.clone()).map_err(unsettled)?,
    };
    let mut ws_record = shared
        .store
        .workspace(ws)
        .map_err(EngineError::from)
        .and_then(|r| r.ok_or(EngineError::NotFound { what: "workspace" }))
        .map_err(unsettled)?;
    ws_record.signing_keys = keys;
    let (nodes, wake) = signed_ops(shared, ws, appended, at, out.rotation.checkpoint).map_err(|s| match s {
        Stop::Retry(e) => unsettled(e),
        Stop::Diverged(why) => unsettled(EngineError::Internal(why)),
        Stop::Moved => unsettled(crate::ownership::moved(ws)),
    })?;
    let mut ops = vec![Op::PutReceipt(record)];
    ops.extend(nodes);
    ops.push(Op::PutWorkspace(ws_record));
    let done = LogMeta { next_index: at + 1, ..LogMeta::default() };
    ops.push(Op::PutLogMeta { workspace_id: ws.to_owned(), meta: done });
    ops.extend(extra(&answer).map_err(unsettled)?);
    // In a cluster, the record with the new key, for the other nodes' signers.
    ops.extend(super::key_record_op(shared, ws).await.map_err(unsettled)?);
    // If this fails the reservation stays: the next attempt asks again and gets the same answer.
    write_fenced(shared, ws, ops).await.map_err(unsettled)?;
    if wake {
        shared.webhook_wake.notify_one();
    }
    // Its checkpoint goes to the witnesses now, not with the workspace's next one.
    shared.witnessing.stored(ws, &shared.metrics);
    shared.metrics.receipts_signed.inc();
    tracing::info!(workspace = %ws, index = at, key_id = %answer.keys.keys.last().map_or("", |k| k.key_id.as_str()), "workspace key rotated");
    Ok(answer)
}

/// Clears the reservation of `at` (the signer refused the rotation: the index is free).
async fn release(shared: &Services, ws: &str, at: u64) -> Result<()> {
    let meta = LogMeta { next_index: at, ..LogMeta::default() };
    write_fenced(shared, ws, vec![Op::PutLogMeta { workspace_id: ws.to_owned(), meta }]).await
}

/// Checks the signer's rotation answer against the stored log (`st`, signed up to `at`): the
/// record to store, the tree extended by its leaf, and the new key set.
fn check(
    ws: &str,
    at: u64,
    st: &Signing,
    body: &[u8],
    checkpoint: &str,
    keys: &[allowly_signer_proto::KeyInfo],
) -> std::result::Result<(ReceiptRecord, merkle::Appended, Vec<PublicKeyRecord>), String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?;
    let parsed = ReceiptBody::from_json(&value).map_err(|e| format!("body: {e}"))?;
    parsed.validate().map_err(|e| format!("body: {e}"))?;
    if parsed.canonical_bytes().map_err(|e| e.to_string())? != body {
        return Err("the body is not in canonical form".into());
    }
    if parsed.kind != EventKind::KeyRotated || parsed.workspace_id != ws || parsed.log_index != at {
        return Err(format!("not a key.rotated receipt of {ws} at {at}"));
    }
    let new_key = parsed.key.as_ref().map(|k| k.key_id.clone()).ok_or("the body names no key")?;
    let records = key_records(keys);
    let active: Vec<&PublicKeyRecord> = records.iter().filter(|k| k.active).collect();
    if active.len() != 1 || active[0].key_id != new_key {
        return Err(format!("the new key {new_key} is not the one active key"));
    }
    let stored: Vec<String> = st.expect.keys.iter().map(|v| hex::encode(v.key_id())).collect();
    if let Some(gone) = stored.iter().find(|id| !records.iter().any(|k| &k.key_id == *id)) {
        return Err(format!("key {gone} is missing from the new key set"));
    }
    let verifiers =
        records.iter().map(|k| verifier(ws, k)).collect::<Result<Vec<NoteVerifier>>>().map_err(|e| e.to_string())?;
    let (cp, signers) = note::open_checkpoint(checkpoint, &st.expect.origin, &verifiers).map_err(|e| e.to_string())?;
    if !signers.iter().any(|v| hex::encode(v.key_id()) == new_key) {
        return Err("the checkpoint is not signed by the new key".into());
    }
    let leaf = merkle::leaf_hash(body);
    let mut next = st.frontier.clone();
    let appended = next.append(&[leaf]).map_err(|e| e.to_string())?;
    if cp.size != at + 1 || cp.root != appended.root {
        return Err(format!("the checkpoint (size {}) does not sign the stored leaves and the rotation", cp.size));
    }
    let record = ReceiptRecord {
        id: parsed.id,
        workspace_id: ws.to_owned(),
        authorization_id: None,
        seq: None,
        log_index: at,
        leaf,
        body: body.to_vec(),
    };
    Ok((record, appended, records))
}

impl Pipelines {
    /// Waits until workspace `ws`'s log is signed up to `size` (at least), starting its
    /// signing task if none runs. Woken by the task as it signs and when it ends (retired,
    /// replaced, stopped on a divergence), and by any divergence marked elsewhere: no polling.
    /// `SignerUnavailable` when it does not get there within `rotation_drain_timeout`; the
    /// divergence's error if the workspace diverges meanwhile.
    pub(crate) async fn signed_up_to(self: &Arc<Self>, shared: &Arc<Services>, ws: &str, size: u64) -> Result<()> {
        let bound = shared.cfg.rotation_drain_timeout;
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            // Registered before the mark is looked at, so a mark in between still wakes us.
            let marked = shared.diverged.marked();
            tokio::pin!(marked);
            marked.as_mut().enable();
            shared.diverged.require_not(ws, &shared.metrics)?;
            let progress = self.map.get(ws).map(|slot| slot.progress.clone());
            let Some(progress) = progress else {
                let store = shared.store.clone();
                let owned = ws.to_owned();
                let signed = blocking(move || Ok(store.latest_checkpoint(&owned)?)).await?.map_or(0, |(s, _)| s);
                if signed >= size {
                    return Ok(());
                }
                // Unsigned receipts and no task (it retired): start one.
                self.notify(shared, ws, size);
                continue;
            };
            // Registered before the state is read, so a change between the two still wakes us.
            let moved = progress.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            let signed = progress.signed.load(Ordering::Acquire);
            if signed != super::NOT_LOADED && signed >= size {
                return Ok(());
            }
            let timed_out = || {
                EngineError::SignerUnavailable(format!(
                    "the log was not signed up to {size} within {bound:?} (rotation_drain_timeout; a key rotation waits for that)"
                ))
            };
            if progress.ended.load(Ordering::Acquire) {
                // That task is gone: look again (a successor, or the store; `notify` replaces
                // an ended task). A task ends without a successor only when the engine stops.
                if shared.shutting_down.load(Ordering::Acquire) {
                    return Err(EngineError::ShuttingDown);
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(timed_out());
                }
                self.notify(shared, ws, size);
                tokio::task::yield_now().await;
                continue;
            }
            let woken = async {
                tokio::select! {
                    () = moved => {},
                    () = marked => {},
                }
            };
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return Err(timed_out());
            }
        }
    }
}
