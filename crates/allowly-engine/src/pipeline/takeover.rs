//! In a cluster: a workspace's signing moving to this node's signer (issue 16 part 3,
//! docs/scale-out.md "Signing across nodes").
//!
//! Every node runs its own signer. A workspace's key record — public keys, and the private
//! halves sealed under the master key the signers share (or named as objects of a token they
//! share), as the signer that created the key exported it — is kept in the database
//! (`DocKind::SignerKeys`), written with the workspace and again after each rotation. Before a
//! signing task of a cluster node sends its first round it makes the node's signer ready:
//!
//! 1. installs the stored key record (`ImportKeys`: the same record again, or a rotation's
//!    extension, is accepted; the signer refuses, with nothing written, a record that is not
//!    the workspace's or does not open under its master key);
//! 2. if the signer's log of the workspace is behind the newest stored checkpoint (it never
//!    had it, or had it before another node extended it), makes it continue from that
//!    checkpoint (`Adopt`, with the checkpoint's frontier from the stored Merkle nodes and a
//!    consistency proof from the signer's own size). The signer accepts only a checkpoint
//!    signed by the workspace's key that extends what it signed itself; a refusal is a
//!    divergence (the workspace stops recording receipts until resynced).
//!
//! What this trusts: nothing the database says is signed by the signer without checking —
//! the signer verifies the checkpoint's signature and the frontier against it. What it cannot
//! catch (a database rolled back to an older, genuinely signed checkpoint) is the witnesses'
//! job (docs/witness.md).

use allowly_receipt::merkle::{self, Hash};
use allowly_receipt::types::ReceiptBodyView;
use allowly_signer_proto::client::ClientError;
use allowly_signer_proto::ErrorCode;
use allowly_store::{DocKind, Op, StoredNodes};
use base64::Engine as _;

use super::{signer_failed, write_fenced, Signing, Stop};
use crate::error::{EngineError, Result};
use crate::services::Services;

/// The id of the workspace's key record among its `SignerKeys` documents.
const RECORD_ID: &str = "keys";

/// In a cluster, the write that keeps `ws`'s key record (as the node's signer exports it now)
/// in the database; `None` outside one. Called after the key is created and after a rotation.
pub(crate) async fn key_record_op(shared: &Services, ws: &str) -> Result<Option<Op>> {
    if shared.ownership.is_none() {
        return Ok(None);
    }
    let record = match tokio::time::timeout(shared.cfg.signer_timeout, shared.signer.export_keys(ws)).await {
        Err(_) => return Err(EngineError::SignerUnavailable(crate::health::SIGNING_TIMED_OUT.into())),
        Ok(r) => r.map_err(EngineError::from_signer)?,
    };
    Ok(Some(record_op(ws, &record)))
}

fn record_op(ws: &str, record: &[u8]) -> Op {
    let doc = serde_json::json!({ "record": base64::engine::general_purpose::STANDARD.encode(record) });
    Op::PutDoc { kind: DocKind::SignerKeys, workspace_id: ws.to_owned(), id: RECORD_ID.to_owned(), doc }
}

fn record_of(doc: &serde_json::Value) -> Result<Vec<u8>> {
    let text =
        doc["record"].as_str().ok_or_else(|| EngineError::Internal("stored key record has no `record`".into()))?;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| EngineError::Internal(format!("stored key record is not base64: {e}")))
}

/// What the stored log needs from the signer before an adopt: the newest stored checkpoint
/// (size, note), the consistency proof from `from`, and the time of the last receipt.
struct Stored {
    note: String,
    proof: Vec<Hash>,
    last_leaf_ms: u64,
}

impl Signing {
    /// Makes this node's signer ready to extend the workspace's stored log (module docs).
    pub(super) async fn take_over(&self, shared: &Services) -> Result<(), Stop> {
        // The signer's size of the log: 0 if it never saw the workspace (`UnknownWorkspace`), or
        // holds its keys but no log of it.
        let latest = match self.within(shared, shared.signer.latest_checkpoint(&self.ws)).await? {
            Err(ClientError::Remote(r)) if r.code == ErrorCode::UnknownWorkspace => 0,
            Err(e) => return Err(signer_failed(shared, e)),
            Ok(c) => c.size,
        };
        self.install_keys(shared).await?;
        let ours = self.frontier.size();
        // Ahead (a lost answer) or level: the rounds' own reconciliation decides, as on one node.
        // Level at 0 is adopted too (the empty log): a signer that holds the keys but no log of
        // the workspace starts it; one with an empty log answers that nothing changed.
        if latest > ours || (latest == ours && ours > 0) {
            return Ok(());
        }
        let stored = if ours == 0 {
            Stored { note: String::new(), proof: Vec::new(), last_leaf_ms: 0 }
        } else {
            self.stored_for_adopt(shared, latest, ours).await?
        };
        self.adopt(shared, latest, stored).await
    }

    /// The newest stored checkpoint (of `ours` leaves), the consistency proof from the signer's
    /// size `from`, and the time of the last receipt, read off the async workers.
    async fn stored_for_adopt(&self, shared: &Services, from: u64, ours: u64) -> Result<Stored, Stop> {
        let ws = self.ws.clone();
        Ok(shared
            .read_in_background(move |store| {
                let (size, note) = store
                    .latest_checkpoint(&ws)?
                    .ok_or_else(|| EngineError::Internal(format!("no stored checkpoint of {ws}")))?;
                if size != ours {
                    return Err(EngineError::Internal(format!("the newest checkpoint of {ws} moved to {size}")));
                }
                let proof = if from == 0 {
                    Vec::new()
                } else {
                    let nodes = StoredNodes::new(store, &ws);
                    merkle::consistency_proof(&nodes, from, ours).map_err(|e| match nodes.take_error() {
                        Some(se) => EngineError::Store(se),
                        None => EngineError::Internal(format!("consistency proof {from}..{ours}: {e}")),
                    })?
                };
                let last_leaf_ms = match store.receipt_at(&ws, ours - 1)? {
                    Some(r) => ReceiptBodyView::parse(&r.body).map_or(0, |b| b.time.unix_ms()),
                    None => 0,
                };
                Ok(Stored { note, proof, last_leaf_ms })
            })
            .await?)
    }

    /// Has the signer continue the log from `stored` (the stored tree: this task's frontier),
    /// its own log being `from` leaves.
    async fn adopt(&self, shared: &Services, from: u64, stored: Stored) -> Result<(), Stop> {
        let ours = self.frontier.size();
        let peaks = self.frontier.peaks().to_vec();
        let adopt = shared.signer.adopt(&self.ws, stored.note, peaks, stored.proof, stored.last_leaf_ms);
        match self.within(shared, adopt).await? {
            Ok(done) if done.size == ours && done.root == self.frontier.root() => {
                tracing::info!(workspace = %self.ws, from, size = ours, "this node's signer continues the workspace's log");
                Ok(())
            }
            Ok(done) => Err(Stop::Diverged(format!(
                "the signer adopted size {} with another root than the stored checkpoint of size {ours}",
                done.size
            ))),
            Err(ClientError::Remote(r)) if matches!(r.code, ErrorCode::AdoptRefused | ErrorCode::SizeMismatch) => {
                Err(Stop::Diverged(format!("the signer refused to continue the stored log from size {from}: {r}")))
            }
            Err(e) => Err(signer_failed(shared, e)),
        }
    }

    /// Installs the stored key record in this node's signer; with none stored (a workspace
    /// from before cluster mode), stores the one this node's signer holds, if it holds one.
    async fn install_keys(&self, shared: &Services) -> Result<(), Stop> {
        let ws = self.ws.clone();
        let doc = shared.read_in_background(move |store| Ok(store.doc(DocKind::SignerKeys, &ws, RECORD_ID)?)).await?;
        let Some(doc) = doc else {
            let ops = key_record_op(shared, &self.ws).await?.into_iter().collect();
            return Ok(write_fenced(shared, &self.ws, ops).await?);
        };
        let record = record_of(&doc)?;
        match self.within(shared, shared.signer.import_keys(&self.ws, record)).await? {
            Ok(_) => Ok(()),
            Err(ClientError::Remote(r)) if r.code == ErrorCode::KeyRecordRefused => {
                // Not a divergence of the log: this signer cannot hold the key (another master
                // key, another token). Said loudly; retried, so a fixed configuration heals.
                tracing::error!(workspace = %self.ws, error = %r, "this node's signer refuses the workspace's key record: is its master key (or token) the cluster's?");
                Err(Stop::Retry(EngineError::from_signer(ClientError::Remote(r))))
            }
            Err(e) => Err(signer_failed(shared, e)),
        }
    }
}
