//! The getters of [`Store`], written once over [`KvEngine`], and the impl that makes every
//! `KvEngine` a `Store`. Every record read is
//! checked against the key it was found under (workspace, id, index, seq): a mismatch is
//! [`StoreError::Corrupt`], never another tenant's data.

use std::time::Duration;

use crate::codec::{self, decode};
use crate::error::{Result, StoreError};
use crate::keys::{self, check_id, Space};
use crate::kv::{self, KvEngine, KvRead};
use crate::lease;
use crate::store::Store;
use crate::types::{
    ApiKeyRecord, AuthorizationRecord, DocKind, Durability, EngineStats, Lease, LeaseAnswer, LogMeta, Member,
    ReceiptRecord, WorkspaceRecord, WriteBatch,
};

fn corrupt(space: Space, key: &[u8], reason: &str) -> StoreError {
    StoreError::corrupt(space.name(), key, reason)
}

/// Decodes a receipt found under `key` and checks it is the one the key names.
/// A stored receipt, checked against its key: its workspace and log index must be the key's.
fn check_receipt(key: &[u8], bytes: &[u8], ws: &str, index: u64) -> Result<ReceiptRecord> {
    let r = codec::decode_receipt(Space::Receipts, key, bytes)?;
    if r.workspace_id != ws || r.log_index != index {
        return Err(corrupt(Space::Receipts, key, "receipt is filed under another workspace or log index"));
    }
    Ok(r)
}

/// The receipts of `receipts` pairs of workspace `ws` (each checked against its key).
fn receipts_of(ws: &str, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Vec<ReceiptRecord>> {
    pairs
        .into_iter()
        .map(|(k, v)| {
            let index =
                keys::u64_suffix(&k, ws.len() + 1).ok_or_else(|| corrupt(Space::Receipts, &k, "bad key length"))?;
            check_receipt(&k, &v, ws, index)
        })
        .collect()
}

fn workspace(e: &impl KvEngine, id: &str) -> Result<Option<WorkspaceRecord>> {
    check_id("workspace_id", id)?;
    let key = keys::workspace(id);
    let Some(bytes) = e.get(Space::Workspaces, &key)? else { return Ok(None) };
    let r: WorkspaceRecord = decode(Space::Workspaces, &key, &bytes)?;
    if r.id != id {
        return Err(corrupt(Space::Workspaces, &key, "record has another id"));
    }
    Ok(Some(r))
}

fn api_key_by_hash(e: &impl KvEngine, hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>> {
    let Some(bytes) = e.get(Space::ApiKeys, hash)? else { return Ok(None) };
    let r: ApiKeyRecord = decode(Space::ApiKeys, hash, &bytes)?;
    if &r.key_hash != hash {
        return Err(corrupt(Space::ApiKeys, hash, "record has another key hash"));
    }
    Ok(Some(r))
}

fn api_key_by_id(e: &impl KvEngine, ws: Option<&str>, id: &str) -> Result<Option<ApiKeyRecord>> {
    if let Some(ws) = ws {
        check_id("workspace_id", ws)?;
    }
    check_id("api_key_id", id)?;
    let key = keys::api_key_id(ws, id);
    let Some(hash) = e.get(Space::ApiKeyIds, &key)? else { return Ok(None) };
    let hash: [u8; 32] = hash.try_into().map_err(|_| corrupt(Space::ApiKeyIds, &key, "not a 32-byte hash"))?;
    let missing = || corrupt(Space::ApiKeyIds, &key, "points at a missing API key");
    let r = api_key_by_hash(e, &hash)?.ok_or_else(missing)?;
    if r.id != id || r.workspace_id.as_deref() != ws {
        return Err(corrupt(Space::ApiKeyIds, &key, "points at another key"));
    }
    Ok(Some(r))
}

/// The instance's own API keys (no workspace), revoked ones included, in id order: the
/// `api_key_ids` range of the empty workspace id, each resolved and checked like
/// [`api_key_by_id`].
fn instance_api_keys(e: &impl KvEngine, limit: usize) -> Result<Vec<ApiKeyRecord>> {
    let space = Space::ApiKeyIds;
    let ids = e.read(|view| view.scan(space, &[keys::SEP], Some(&[keys::SEP + 1]), limit, false))?;
    let mut out = Vec::with_capacity(ids.len());
    for (k, _) in ids {
        let id =
            k.get(1..).and_then(|id| std::str::from_utf8(id).ok()).ok_or_else(|| corrupt(space, &k, "not an id"))?;
        let r = api_key_by_id(e, None, id)?.ok_or_else(|| corrupt(space, &k, "vanished while read"))?;
        out.push(r);
    }
    Ok(out)
}

fn authorization(e: &impl KvEngine, ws: &str, id: &str) -> Result<Option<AuthorizationRecord>> {
    check_id("workspace_id", ws)?;
    check_id("authorization_id", id)?;
    let key = keys::ws_id(ws, id);
    e.read(|view| {
        let Some(bytes) = view.get(Space::Authorizations, &key)? else { return Ok(None) };
        let mut r: AuthorizationRecord = decode(Space::Authorizations, &key, &bytes)?;
        if r.workspace_id != ws || r.id != id {
            return Err(corrupt(Space::Authorizations, &key, "record is filed under another workspace or id"));
        }
        with_trail_head(view, &mut r)?;
        Ok(Some(r))
    })
}

/// Sets `r.next_seq` and `r.last_leaf` from the last entry of its trail (`0` and zeros for an
/// empty trail): one reverse seek bounded to that trail.
fn with_trail_head(view: &dyn KvRead, r: &mut AuthorizationRecord) -> Result<()> {
    let start = keys::trail_start(&r.workspace_id, &r.id);
    let last = view.scan(Space::Trail, &start, Some(&keys::trail_end(&r.workspace_id, &r.id)), 1, true)?;
    (r.next_seq, r.last_leaf) = match last.first() {
        None => (0, [0; 32]),
        Some((k, v)) => {
            let seq = keys::u64_suffix(k, start.len()).ok_or_else(|| corrupt(Space::Trail, k, "bad key length"))?;
            let next = seq.checked_add(1).ok_or_else(|| corrupt(Space::Trail, k, "seq overflows"))?;
            (next, codec::decode_leaf(Space::Trail, k, v)?.0)
        }
    };
    Ok(())
}

/// The smallest key after `ws ‖ 0x00 ‖ after` (ids have no 0x00, so appending one is next),
/// or the workspace's first key.
fn ws_lower_bound(ws: &str, after: Option<&str>) -> Result<Vec<u8>> {
    Ok(match after {
        Some(a) => {
            check_id("after", a)?;
            let mut k = keys::ws_id(ws, a);
            k.push(0);
            k
        }
        None => keys::ws_start(ws),
    })
}

fn authorizations(e: &impl KvEngine, ws: &str, after: Option<&str>, limit: usize) -> Result<Vec<AuthorizationRecord>> {
    check_id("workspace_id", ws)?;
    let lower = ws_lower_bound(ws, after)?;
    let space = Space::Authorizations;
    e.read(|view| {
        let pairs = view.scan(space, &lower, Some(&keys::ws_end(ws)), limit, false)?;
        pairs
            .into_iter()
            .map(|(k, v)| {
                let mut r: AuthorizationRecord = decode(space, &k, &v)?;
                if r.workspace_id != ws || k != keys::ws_id(ws, &r.id) {
                    return Err(corrupt(space, &k, "record is filed under another workspace or id"));
                }
                with_trail_head(view, &mut r)?;
                Ok(r)
            })
            .collect()
    })
}

fn receipt_at(e: &impl KvEngine, ws: &str, index: u64) -> Result<Option<ReceiptRecord>> {
    check_id("workspace_id", ws)?;
    let key = keys::ws_u64(ws, index);
    e.get(Space::Receipts, &key)?.map(|v| check_receipt(&key, &v, ws, index)).transpose()
}

fn trail(e: &impl KvEngine, ws: &str, auth: &str, after_seq: Option<u64>, limit: usize) -> Result<Vec<ReceiptRecord>> {
    check_id("workspace_id", ws)?;
    check_id("authorization_id", auth)?;
    let first = match after_seq {
        None => 0,
        Some(seq) => match seq.checked_add(1) {
            Some(next) => next,
            None => return Ok(Vec::new()),
        },
    };
    if limit == 0 {
        return Ok(Vec::new());
    }
    let prefix_len = keys::trail_start(ws, auth).len();
    e.read(|view| {
        let pairs =
            view.scan(Space::Trail, &keys::trail(ws, auth, first), Some(&keys::trail_end(ws, auth)), limit, false)?;
        pairs
            .into_iter()
            .map(|(k, v)| {
                let seq =
                    keys::u64_suffix(&k, prefix_len).ok_or_else(|| corrupt(Space::Trail, &k, "bad key length"))?;
                let (leaf, index) = codec::decode_leaf(Space::Trail, &k, &v)?;
                let rkey = keys::ws_u64(ws, index);
                let bytes = view
                    .get(Space::Receipts, &rkey)?
                    .ok_or_else(|| corrupt(Space::Trail, &k, "points at a missing receipt"))?;
                let r = check_receipt(&rkey, &bytes, ws, index)?;
                if r.seq != Some(seq) || r.authorization_id.as_deref() != Some(auth) || r.leaf != leaf {
                    return Err(corrupt(Space::Trail, &k, "receipt has another authorization, seq or leaf"));
                }
                Ok(r)
            })
            .collect()
    })
}

fn receipts_in_range(e: &impl KvEngine, ws: &str, from: u64, to: u64, limit: usize) -> Result<Vec<ReceiptRecord>> {
    check_id("workspace_id", ws)?;
    if from >= to || limit == 0 {
        return Ok(Vec::new());
    }
    let pairs = e.scan(Space::Receipts, &keys::ws_u64(ws, from), Some(&keys::ws_u64(ws, to)), limit, false)?;
    receipts_of(ws, pairs)
}

fn leaf_hashes(e: &impl KvEngine, ws: &str, from: u64, to: u64, limit: usize) -> Result<Vec<(u64, [u8; 32])>> {
    check_id("workspace_id", ws)?;
    if from >= to || limit == 0 {
        return Ok(Vec::new());
    }
    // Decodes whole receipts (with BlobDB, reads their blobs): only reconciliation after a lost
    // answer uses this; signing is sent bodies, which it gets from `receipts_in_range`.
    let pairs = e.scan(Space::Receipts, &keys::ws_u64(ws, from), Some(&keys::ws_u64(ws, to)), limit, false)?;
    Ok(receipts_of(ws, pairs)?.into_iter().map(|r| (r.log_index, r.leaf)).collect())
}

fn node(e: &impl KvEngine, ws: &str, level: u8, index: u64) -> Result<Option<[u8; 32]>> {
    check_id("workspace_id", ws)?;
    let key = keys::node(ws, level, index);
    e.get(Space::Nodes, &key)?.map(|v| codec::hash(Space::Nodes, &key, &v)).transpose()
}

fn note(key: &[u8], bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|_| corrupt(Space::Checkpoints, key, "note is not UTF-8"))
}

/// The first (or last) checkpoint in `[lower, ws_end)`, with its size.
fn first_checkpoint(e: &dyn KvRead, ws: &str, lower: &[u8], reverse: bool) -> Result<Option<(u64, String)>> {
    let pairs = e.scan(Space::Checkpoints, lower, Some(&keys::ws_end(ws)), 1, reverse)?;
    let Some((k, v)) = pairs.into_iter().next() else { return Ok(None) };
    let size = keys::u64_suffix(&k, ws.len() + 1).ok_or_else(|| corrupt(Space::Checkpoints, &k, "bad key length"))?;
    Ok(Some((size, note(&k, v)?)))
}

fn checkpoint(e: &impl KvEngine, ws: &str, size: u64) -> Result<Option<String>> {
    check_id("workspace_id", ws)?;
    let key = keys::ws_u64(ws, size);
    e.get(Space::Checkpoints, &key)?.map(|v| note(&key, v)).transpose()
}

fn latest_checkpoint(e: &impl KvEngine, ws: &str) -> Result<Option<(u64, String)>> {
    check_id("workspace_id", ws)?;
    first_checkpoint(e, ws, &keys::ws_start(ws), true)
}

fn checkpoint_at_or_after(e: &impl KvEngine, ws: &str, size: u64) -> Result<Option<(u64, String)>> {
    check_id("workspace_id", ws)?;
    first_checkpoint(e, ws, &keys::ws_u64(ws, size), false)
}

/// A `cosignatures` pair of workspace `ws`, checked: its key's tree size and witness key, and
/// its line (UTF-8, one line).
fn cosignature_of(ws: &str, (k, v): (Vec<u8>, Vec<u8>)) -> Result<(u64, [u8; 32], String)> {
    let bad = |why| corrupt(Space::Cosignatures, &k, why);
    let at = ws.len() + 1;
    let size = k.get(at..at + 8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes);
    let witness = k.get(at + 8..).and_then(|b| <[u8; 32]>::try_from(b).ok());
    let (Some(size), Some(witness)) = (size, witness) else { return Err(bad("bad key length")) };
    let line = String::from_utf8(v).map_err(|_| bad("cosignature is not UTF-8"))?;
    if !codec::is_one_line(&line) {
        return Err(bad("not one signature line"));
    }
    Ok((size, witness, line))
}

/// Most cosignatures read for one checkpoint: far more witnesses than any policy names.
const MAX_COSIGNATURES_PER_CHECKPOINT: usize = 1024;

fn cosignatures(e: &impl KvEngine, ws: &str, size: u64) -> Result<Vec<([u8; 32], String)>> {
    check_id("workspace_id", ws)?;
    let (lower, upper) = (keys::ws_u64(ws, size), keys::cosignature(ws, size, &[0xff; 32]));
    // `upper` is exclusive: the one key it would miss (a witness key of 32 0xff bytes) is not
    // a valid Ed25519 point, so no witness has it.
    let pairs = e.scan(Space::Cosignatures, &lower, Some(&upper), MAX_COSIGNATURES_PER_CHECKPOINT, false)?;
    pairs.into_iter().map(|p| cosignature_of(ws, p).map(|(_, w, line)| (w, line))).collect()
}

fn recent_cosignatures(
    e: &impl KvEngine,
    ws: &str,
    at_most: u64,
    limit: usize,
) -> Result<Vec<(u64, [u8; 32], String)>> {
    check_id("workspace_id", ws)?;
    let upper = match at_most.checked_add(1) {
        Some(n) => keys::ws_u64(ws, n),
        None => keys::ws_end(ws),
    };
    let pairs = e.scan(Space::Cosignatures, &keys::ws_start(ws), Some(&upper), limit, true)?;
    pairs.into_iter().map(|p| cosignature_of(ws, p)).collect()
}

fn witness_head(e: &dyn KvRead, ws: &str, witness: &[u8; 32]) -> Result<Option<u64>> {
    check_id("workspace_id", ws)?;
    let key = keys::witness_head(ws, witness);
    let Some(v) = e.get(Space::WitnessHeads, &key)? else { return Ok(None) };
    let v: [u8; 8] = v.try_into().map_err(|_| corrupt(Space::WitnessHeads, &key, "not a u64"))?;
    Ok(Some(u64::from_be_bytes(v)))
}

/// Calls `f` with every workspace that has a log (one `log_meta` entry each), in byte order,
/// and its stored record; keeps the workspaces `f` answers true for.
fn logged_workspaces(
    view: &dyn KvRead,
    mut f: impl FnMut(&dyn KvRead, &str, LogMeta) -> Result<bool>,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cursor = Vec::new();
    loop {
        let page = view.scan(Space::LogMeta, &cursor, None, 1024, false)?;
        let Some((last, _)) = page.last() else { break };
        cursor = last.clone();
        cursor.push(0);
        for (k, v) in &page {
            let ws = std::str::from_utf8(k)
                .ok()
                .filter(|ws| check_id("workspace_id", ws).is_ok())
                .ok_or_else(|| corrupt(Space::LogMeta, k, "key is not a workspace id"))?;
            if f(view, ws, decode(Space::LogMeta, k, v)?)? {
                out.push(ws.to_owned());
            }
        }
    }
    Ok(out)
}

/// Every workspace whose log has leaves beyond its newest stored checkpoint, or a key rotation
/// not yet stored (`LogMeta::rotation_at`): one pass over `log_meta` (one entry per workspace)
/// and at most two seeks per workspace (its newest checkpoint, then a receipt at or past that
/// size), never a scan of receipts.
fn workspaces_with_unsigned(e: &impl KvEngine) -> Result<Vec<String>> {
    e.read(|view| {
        logged_workspaces(view, |view, ws, meta| {
            let signed = first_checkpoint(view, ws, &keys::ws_start(ws), true)?.map_or(0, |(size, _)| size);
            // The stored `next_index` may lag the log (see `log_meta`): a receipt at or past the
            // signed size is what says there is something to sign.
            let unsigned = meta.next_index > signed || newest_receipt_from(view, ws, signed)?.is_some();
            Ok(unsigned || meta.rotation_at.is_some())
        })
    })
}

/// Every workspace whose newest stored checkpoint is larger than what `witness` is recorded as
/// having cosigned (nothing recorded: 0): one pass over `log_meta` and two point reads per
/// workspace.
fn workspaces_behind_witness(e: &impl KvEngine, witness: &[u8; 32]) -> Result<Vec<String>> {
    e.read(|view| {
        logged_workspaces(view, |view, ws, _| {
            let Some((newest, _)) = first_checkpoint(view, ws, &keys::ws_start(ws), true)? else { return Ok(false) };
            Ok(witness_head(view, ws, witness)?.unwrap_or(0) < newest)
        })
    })
}

/// The log index of the newest receipt of `ws` at or past `floor`, if there is one: one seek.
fn newest_receipt_from(view: &dyn KvRead, ws: &str, floor: u64) -> Result<Option<u64>> {
    let newest = view.scan(Space::Receipts, &keys::ws_u64(ws, floor), Some(&keys::ws_end(ws)), 1, true)?;
    newest
        .first()
        .map(|(k, _)| keys::u64_suffix(k, ws.len() + 1).ok_or_else(|| corrupt(Space::Receipts, k, "bad key length")))
        .transpose()
}

/// A workspace's log position. `next_index` is not rewritten by every commit (it was one more
/// key per workspace per group, the same key thousands of times over in every memtable when
/// the load is spread over many workspaces): the sequencer writes the record when its rotation
/// state changes, and the position is the stored `next_index` or one past the newest receipt,
/// whichever is larger. The log itself is the truth, so the two can never disagree after a
/// crash either. One seek: receipts at or past the stored value.
fn log_meta(e: &impl KvEngine, ws: &str) -> Result<Option<LogMeta>> {
    check_id("workspace_id", ws)?;
    let key = keys::workspace(ws);
    e.read(|view| {
        let stored =
            view.get(Space::LogMeta, &key)?.map(|v| decode::<LogMeta>(Space::LogMeta, &key, &v)).transpose()?;
        let floor = stored.as_ref().map_or(0, |m| m.next_index);
        let past_newest = newest_receipt_from(view, ws, floor)?.map(|i| i.saturating_add(1));
        Ok(match (stored, past_newest) {
            (None, None) => None,
            (stored, past_newest) => {
                let mut meta = stored.unwrap_or_default();
                meta.next_index = meta.next_index.max(past_newest.unwrap_or(0));
                Some(meta)
            }
        })
    })
}

fn check_doc(space: Space, key: &[u8], bytes: &[u8], ws: Option<&str>, id: Option<&str>) -> Result<codec::StoredDoc> {
    let d: codec::StoredDoc = decode(space, key, bytes)?;
    if ws.is_some_and(|w| w != d.workspace_id)
        || id.is_some_and(|i| i != d.id)
        || keys::ws_id(&d.workspace_id, &d.id) != key
    {
        return Err(corrupt(space, key, "document is filed under another workspace or id"));
    }
    Ok(d)
}

fn doc(e: &impl KvEngine, kind: DocKind, ws: &str, id: &str) -> Result<Option<serde_json::Value>> {
    check_id("workspace_id", ws)?;
    check_id("doc_id", id)?;
    let space = Space::of_doc(kind);
    let key = keys::ws_id(ws, id);
    let Some(bytes) = e.get(space, &key)? else { return Ok(None) };
    Ok(Some(check_doc(space, &key, &bytes, Some(ws), Some(id))?.doc))
}

fn docs(
    e: &impl KvEngine,
    kind: DocKind,
    ws: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<(String, serde_json::Value)>> {
    check_id("workspace_id", ws)?;
    if let Some(a) = after {
        check_id("doc_id", a)?;
    }
    let space = Space::of_doc(kind);
    let lower = ws_lower_bound(ws, after)?;
    let pairs = e.read(|view| view.scan(space, &lower, Some(&keys::ws_end(ws)), limit, false))?;
    pairs.iter().map(|(k, v)| check_doc(space, k, v, Some(ws), None).map(|d| (d.id, d.doc))).collect()
}

/// The first key after document `(ws, id)` of any workspace (the start when `None`).
fn after_doc(after: Option<(&str, &str)>) -> Result<Vec<u8>> {
    let Some((ws, id)) = after else { return Ok(Vec::new()) };
    check_id("workspace_id", ws)?;
    check_id("doc_id", id)?;
    let mut k = keys::ws_id(ws, id);
    k.push(0);
    Ok(k)
}

fn all_docs(
    e: &impl KvEngine,
    kind: DocKind,
    after: Option<(&str, &str)>,
    limit: usize,
) -> Result<Vec<(String, String, serde_json::Value)>> {
    let space = Space::of_doc(kind);
    let lower = after_doc(after)?;
    let pairs = e.read(|view| view.scan(space, &lower, None, limit, false))?;
    pairs.iter().map(|(k, v)| check_doc(space, k, v, None, None).map(|d| (d.workspace_id, d.id, d.doc))).collect()
}

fn all_doc_ids(
    e: &impl KvEngine,
    kind: DocKind,
    after: Option<(&str, &str)>,
    limit: usize,
) -> Result<Vec<(String, String)>> {
    let space = Space::of_doc(kind);
    let lower = after_doc(after)?;
    let pairs = e.read(|view| view.scan(space, &lower, None, limit, false))?;
    // The key alone names the document (`ws ‖ 0x00 ‖ id`): the value is not decoded.
    pairs
        .iter()
        .map(|(k, _)| {
            let (ws, id) = keys::split_ws_id(k).ok_or_else(|| corrupt(space, k, "not a workspace and id key"))?;
            Ok((ws.to_owned(), id.to_owned()))
        })
        .collect()
}

/// Every [`KvEngine`] is a [`Store`]: writes are staged by `kv::stage`, reads are this
/// module's getters, so no engine decides for itself what a record or a key means.
impl<E: KvEngine> Store for E {
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        kv::write(self, batch, durability)
    }
    fn write_groups(&self, groups: Vec<(String, WriteBatch)>, durability: Durability) -> Result<Vec<Result<()>>> {
        kv::write_groups(self, groups, durability)
    }
    fn workspace(&self, id: &str) -> Result<Option<WorkspaceRecord>> {
        workspace(self, id)
    }
    fn api_key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>> {
        api_key_by_hash(self, hash)
    }
    fn api_key_by_id(&self, ws: Option<&str>, id: &str) -> Result<Option<ApiKeyRecord>> {
        api_key_by_id(self, ws, id)
    }
    fn authorization(&self, ws: &str, id: &str) -> Result<Option<AuthorizationRecord>> {
        authorization(self, ws, id)
    }
    fn instance_api_keys(&self, limit: usize) -> Result<Vec<ApiKeyRecord>> {
        instance_api_keys(self, limit)
    }
    fn authorizations(&self, ws: &str, after: Option<&str>, limit: usize) -> Result<Vec<AuthorizationRecord>> {
        authorizations(self, ws, after, limit)
    }
    fn receipt_at(&self, ws: &str, index: u64) -> Result<Option<ReceiptRecord>> {
        receipt_at(self, ws, index)
    }
    fn trail(&self, ws: &str, auth: &str, after_seq: Option<u64>, limit: usize) -> Result<Vec<ReceiptRecord>> {
        trail(self, ws, auth, after_seq, limit)
    }
    fn receipts_in_range(&self, ws: &str, from: u64, to: u64, limit: usize) -> Result<Vec<ReceiptRecord>> {
        receipts_in_range(self, ws, from, to, limit)
    }
    fn node(&self, ws: &str, level: u8, index: u64) -> Result<Option<[u8; 32]>> {
        node(self, ws, level, index)
    }
    fn checkpoint(&self, ws: &str, size: u64) -> Result<Option<String>> {
        checkpoint(self, ws, size)
    }
    fn latest_checkpoint(&self, ws: &str) -> Result<Option<(u64, String)>> {
        latest_checkpoint(self, ws)
    }
    fn checkpoint_at_or_after(&self, ws: &str, size: u64) -> Result<Option<(u64, String)>> {
        checkpoint_at_or_after(self, ws, size)
    }
    fn leaf_hashes(&self, ws: &str, from: u64, to: u64, limit: usize) -> Result<Vec<(u64, [u8; 32])>> {
        leaf_hashes(self, ws, from, to, limit)
    }
    fn cosignatures(&self, ws: &str, size: u64) -> Result<Vec<([u8; 32], String)>> {
        cosignatures(self, ws, size)
    }
    fn recent_cosignatures(&self, ws: &str, at_most: u64, limit: usize) -> Result<Vec<(u64, [u8; 32], String)>> {
        recent_cosignatures(self, ws, at_most, limit)
    }
    fn witness_head(&self, ws: &str, witness: &[u8; 32]) -> Result<Option<u64>> {
        witness_head(self, ws, witness)
    }
    fn workspaces_with_unsigned(&self) -> Result<Vec<String>> {
        workspaces_with_unsigned(self)
    }
    fn workspaces_behind_witness(&self, witness: &[u8; 32]) -> Result<Vec<String>> {
        workspaces_behind_witness(self, witness)
    }
    fn log_meta(&self, ws: &str) -> Result<Option<LogMeta>> {
        log_meta(self, ws)
    }
    fn doc(&self, kind: DocKind, ws: &str, id: &str) -> Result<Option<serde_json::Value>> {
        doc(self, kind, ws, id)
    }
    fn docs(
        &self,
        kind: DocKind,
        ws: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, serde_json::Value)>> {
        docs(self, kind, ws, after, limit)
    }
    fn all_docs(
        &self,
        kind: DocKind,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, String, serde_json::Value)>> {
        all_docs(self, kind, after, limit)
    }
    fn all_doc_ids(&self, kind: DocKind, after: Option<(&str, &str)>, limit: usize) -> Result<Vec<(String, String)>> {
        all_doc_ids(self, kind, after, limit)
    }
    fn heartbeat(&self, node: &str, address: &str, ttl: Duration) -> Result<Member> {
        lease::heartbeat(self, node, address, ttl)
    }
    fn live_nodes(&self) -> Result<Vec<Member>> {
        lease::live_nodes(self)
    }
    fn acquire_lease(&self, ws: &str, node: &str, address: &str, ttl: Duration) -> Result<LeaseAnswer> {
        lease::acquire(self, ws, node, address, ttl)
    }
    fn renew_lease(&self, ws: &str, node: &str, epoch: u64, ttl: Duration) -> Result<Lease> {
        lease::renew(self, ws, node, epoch, ttl)
    }
    fn release_lease(&self, ws: &str, node: &str, epoch: u64) -> Result<Lease> {
        lease::release(self, ws, node, epoch)
    }
    fn renew_leases(
        &self,
        node: &str,
        address: &str,
        held: &[(String, u64)],
        ttl: Duration,
    ) -> Result<Vec<Result<Lease>>> {
        lease::renew_many(self, node, address, held, ttl)
    }
    fn release_leases(&self, node: &str, address: &str, held: &[(String, u64)]) -> Result<Vec<Result<Lease>>> {
        lease::release_many(self, node, address, held)
    }
    fn lease(&self, ws: &str) -> Result<Option<Lease>> {
        lease::lease(self, ws)
    }
    fn engine_stats(&self) -> EngineStats {
        self.stats()
    }
    fn recover(&self) -> Result<()> {
        KvEngine::recover(self)
    }
}
