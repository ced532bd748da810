//! At start: does the signer's state match the store's? Two cases a restore produces.
//!
//! The engine relies on *store ≥ signer*: every leaf the signer has signed is in the store
//! (receipts are durable before they are sent to be signed). So at start the engine asks the
//! signer for every workspace's durable log size (`LogSizes`, read from its journal's index, no
//! workspace loaded) and compares each with the store:
//!
//! * **The signer is ahead of the store** (its size is above the store's *committed* size, plus
//!   one for a key rotation reserved at the next index, whose leaf the signer may hold): a
//!   store restored from a backup older than the signer's state. The signer has signed leaves —
//!   receipts that were handed out — that this store does not hold, and the next receipt the
//!   store makes at such an index would be another leaf under a signed size: a fork, which
//!   before this check showed only as receipts left `pending` while `/readyz` said ready. The
//!   workspace is marked [`Divergence::StoreBehindSigner`]: it refuses new receipts (`503
//!   workspace_log_behind_signer`) and `/readyz` is not ready with a cause of that code, until
//!   a newer store is restored (`docs/operations.md`, *Backup and restore*). Sizes are read from
//!   the signer first and the store second, and a store only grows, so a consistent pair is
//!   never flagged.
//! * **The signer is behind the store's *signed* size**: the normal state after restoring a
//!   backup (its signer state is taken *before* the store's checkpoint, so the store may hold
//!   checkpoints the snapshot's signer has not journaled). The workspace is fenced
//!   ([`Divergence::CatchingUp`], briefly) and [`crate::pipeline::resync`] re-feeds the signer the
//!   stored receipts, checking that every checkpoint it signs has the root already stored for
//!   its size (a signer whose log is not a prefix of the stored one stays fenced: that is a
//!   fork); then the fence is lifted and signing goes on. Meanwhile its new receipts are
//!   refused with `503 workspace_log_catching_up` (`Retry-After`: it passes by itself). The signing task of such a workspace
//!   is started by the resync, not at start.
//!
//! A signer size between the two is the ordinary lost answer, which the signing pipeline
//! reconciles as before.
//!
//! If the signer does not list its sizes within the signer timeout at start, the comparison is retried
//! every second in the background until it is done once; meanwhile checks fail closed anyway
//! (`signer_unavailable`), so a receipt can be made before the check only within one retry
//! interval after the signer comes up.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use allowly_signer_proto::client::ClientError;
use allowly_signer_proto::ErrorCode;

use crate::error::{EngineError, Result};
use crate::health::Divergence;
use crate::pipeline::Pipelines;
use crate::services::{blocking, Services};

/// Interval of the background retries when the signer did not answer at start.
const RETRY: Duration = Duration::from_secs(1);

/// Compares now, or keeps retrying in the background (see the module docs). Returns the
/// workspaces whose signer is being caught up (their signing task is the resync's to start).
pub(crate) async fn check_at_start(s: &Arc<Services>, pipes: &Arc<Pipelines>) -> HashSet<String> {
    match compare(s, pipes).await {
        Ok(lagging) => lagging,
        Err(e) => {
            tracing::warn!(error = %e, "cannot compare the signer's log sizes with the store yet; retrying in the background");
            tokio::spawn(retry(Arc::downgrade(s), Arc::downgrade(pipes)));
            HashSet::new()
        }
    }
}

async fn retry(s: Weak<Services>, pipes: Weak<Pipelines>) {
    loop {
        tokio::time::sleep(RETRY).await;
        let (Some(s), Some(pipes)) = (s.upgrade(), pipes.upgrade()) else { return };
        if compare(&s, &pipes).await.is_ok() {
            return;
        }
    }
}

/// Only the signer's answer is bounded by the signer timeout; the store's reads (two point
/// reads per workspace) take what they take.
async fn compare(s: &Arc<Services>, pipes: &Arc<Pipelines>) -> Result<HashSet<String>> {
    let sizes = match tokio::time::timeout(s.cfg.signer_timeout, s.signer.log_sizes()).await {
        Err(_) => return Err(EngineError::SignerUnavailable("the signer did not list its log sizes in time".into())),
        Ok(Ok(sizes)) => sizes,
        // A signer that predates the request: nothing to compare with, and nothing to retry.
        Ok(Err(ClientError::Remote(r))) if r.code == ErrorCode::UnknownKind => {
            tracing::warn!("the signer cannot list its log sizes (an older version): a store older than its state is found only when signing");
            return Ok(HashSet::new());
        }
        Ok(Err(e)) => return Err(EngineError::from_signer(e)),
    };
    let store = s.store.clone();
    let (ahead, lagging) = blocking(move || {
        let (mut ahead, mut lagging) = (Vec::new(), Vec::new());
        for (ws, size) in sizes {
            let meta = store.log_meta(&ws)?.unwrap_or_default();
            // A key rotation reserved at the next index may already be in the signer's log
            // (its answer lost to the crash): one leaf more is the rotation's, which the
            // workspace's actor stores as it starts (`actor/rotation.rs`).
            let stored = meta.next_index + u64::from(meta.rotation_at == Some(meta.next_index));
            let signed = store.latest_checkpoint(&ws)?.map_or(0, |(size, _)| size);
            if size > stored {
                ahead.push((ws, size, stored));
            } else if size < signed {
                lagging.push((ws, size, signed));
            }
        }
        Ok((ahead, lagging))
    })
    .await?;
    for (ws, signed, stored) in &ahead {
        let why = format!("the signer has signed {signed} leaves of this log, the store holds {stored}");
        s.diverged.mark(ws, Divergence::StoreBehindSigner, &why, &s.metrics);
    }
    let mut catching_up = HashSet::new();
    for (ws, size, signed) in lagging {
        tracing::warn!(workspace = %ws, signer = size, signed, "the signer's log is behind the stored checkpoints (a restored backup): re-feeding it the stored receipts");
        let why =
            format!("the signer's log ({size} leaves) is behind the stored checkpoints ({signed}); catching it up");
        s.diverged.mark(&ws, Divergence::CatchingUp, &why, &s.metrics);
        catching_up.insert(ws.clone());
        let (s, pipes) = (s.clone(), pipes.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::pipeline::resync(&s, &pipes, &ws).await {
                tracing::error!(workspace = %ws, error = %e, "catching the signer up failed: the workspace stays fenced until POST /v1/workspaces/{{ws}}/log/resync succeeds");
            }
        });
    }
    Ok(catching_up)
}
