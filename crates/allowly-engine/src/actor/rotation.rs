//! Workspace key rotation in the actor, the workspace's sequencer: the `key.rotated` leaf takes
//! the next log index, so the actor stops assigning indexes for the rotation's length. It
//! handles `RotateKey` to the end before it takes the next message: everything staged is
//! committed first (`settle`), then `pipeline::rotate` gets the log signed up to that index,
//! has the signer rotate there and stores the leaf; only then does `next_index` move past it.
//! Requests that arrive meanwhile wait in the mailbox (bounded: a full one is `Overloaded`),
//! so none is lost and none takes the rotation's index.

use allowly_store::{DocKind, IdempotencyRef, Op};

use super::{IdemDoc, WsState};
use crate::clock::now_ms;
use crate::error::{EngineError, Result};
use crate::mailbox::Idem;
use crate::model::KeyRotation;

impl WsState {
    /// Rotates the workspace's key (see the module docs). With an `Idempotency-Key`, a repeat
    /// gets the first answer (its record is written with the rotation, also when the rotation
    /// is finished later after a lost answer).
    pub(super) async fn rotate_key(&mut self, idem: Option<Idem>) -> Result<KeyRotation> {
        self.settle().await?;
        if let Some(idem) = &idem {
            if let Some((doc, _)) = self.doc::<IdemDoc>(DocKind::Idempotency, &idem.doc_id)? {
                if doc.is_live(now_ms(), self.shared.cfg.idempotency_ttl_ms()) {
                    return doc.replay(idem);
                }
            }
        }
        self.shared.require_healthy()?;
        self.not_diverged()?;
        let idem = idem.map(|i| IdempotencyRef { doc_id: i.doc_id, request_hash: i.request_hash });
        self.rotate_at(self.next_index, idem).await
    }

    /// Finishes a rotation left unfinished (a crash after the index was reserved, or a signer
    /// that did not answer): asks the signer again at the reserved index — it answers a repeat
    /// with the same rotation — and stores it, filing its answer under the first request's
    /// `Idempotency-Key` if it had one. Logged if it fails; tried again later.
    pub(super) async fn resume_rotation(&mut self) {
        let Some(at) = self.rotation_at else { return };
        if let Err(e) = self.settle().await {
            tracing::warn!(workspace = %self.ws.id, error = %e, "cannot finish an interrupted key rotation yet");
            return;
        }
        match self.rotate_at(at, self.rotation_idem.clone()).await {
            Ok(_) => tracing::info!(workspace = %self.ws.id, index = at, "an interrupted key rotation is finished"),
            Err(e) => {
                tracing::warn!(workspace = %self.ws.id, index = at, error = %e, "an interrupted key rotation is not finished yet")
            }
        }
    }

    /// The rotation at `at` (= `next_index`, every receipt below it durable), its answer filed
    /// under `idem`.
    async fn rotate_at(&mut self, at: u64, idem: Option<IdempotencyRef>) -> Result<KeyRotation> {
        if at != self.next_index {
            return Err(EngineError::Internal(format!("rotation at {at} but the next index is {}", self.next_index)));
        }
        self.rotation_at = Some(at);
        self.rotation_idem = idem.clone();
        let (ws, now) = (self.ws.id.clone(), now_ms());
        let record = |answer: &KeyRotation| -> Result<Vec<Op>> {
            let Some(r) = idem.as_ref() else { return Ok(Vec::new()) };
            let first = Idem { doc_id: r.doc_id.clone(), request_hash: r.request_hash };
            let doc = serde_json::to_value(IdemDoc::new(&first, now, answer)?)
                .map_err(|e| EngineError::Internal(e.to_string()))?;
            Ok(vec![Op::PutDoc { kind: DocKind::Idempotency, workspace_id: ws, id: first.doc_id, doc }])
        };
        let s = &self.shared;
        let reserved = self.rotation_idem.clone();
        let started = std::time::Instant::now();
        let out = crate::pipeline::rotate(&s.services, &s.pipelines, &self.ws.id, at, reserved, record).await;
        crate::pipeline::count_rotation(&s.services, started, &out);
        match out {
            Ok(answer) => {
                self.next_index = at + 1;
                self.rotation_at = None;
                self.rotation_idem = None;
                // The stored record has the new keys now; a later write of this copy (scope
                // rules) must not put the old ones back. Read off the async workers.
                let id = self.ws.id.clone();
                match self.shared.read_in_background(move |store| Ok(store.workspace(&id)?)).await {
                    Ok(Some(ws)) => self.ws = ws,
                    other => {
                        tracing::warn!(workspace = %self.ws.id, ?other, "cannot reread the workspace after a rotation");
                        self.reload().await;
                    }
                }
                Ok(answer)
            }
            Err(failed) => {
                if failed.settled {
                    self.rotation_at = None;
                    self.rotation_idem = None;
                }
                Err(failed.error)
            }
        }
    }

    /// Commits everything staged and waits until every group handed over is durable, so that
    /// `next_index` is the store's. A failed commit fails this too (the actor reloads when its
    /// `Committed` message comes).
    async fn settle(&mut self) -> Result<()> {
        self.flush().await;
        if let Some(last) = self.last_commit.take() {
            if !last.await.unwrap_or(false) {
                return Err(crate::commit::after_failed_commit(None));
            }
        }
        if self.next_index == u64::MAX {
            self.reload().await;
            if self.next_index == u64::MAX {
                return Err(EngineError::Internal("workspace state could not be reloaded".into()));
            }
        }
        Ok(())
    }
}
