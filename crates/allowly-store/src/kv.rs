//! The ordered key-value model an embedded or distributed engine implements (RocksDB in
//! `allowly-store-rocks`, TiKV later), and the one place where write ops become key mutations.
//!
//! An engine implements [`KvRead`] and [`KvEngine`] — keep bytes, read ranges, apply a set of
//! mutations atomically — and is then a [`Store`](crate::Store): the staging of ops (`stage`)
//! and every getter (`crate::query`) are written once, here, over these two traits. So
//! `MemStore` and `RocksStore` cannot drift apart (they differ only in how bytes are kept), and
//! an engine crate never sees a record, a key encoding or a tenant check. (A SQL engine would
//! implement [`Store`](crate::Store) directly instead.)
//!
//! Only this crate can put anything into [`Mutations`]: an engine writes what `stage` produced
//! from validated ops, never bytes a caller chose.

use std::collections::BTreeMap;

use crate::codec::{self, encode};
use crate::error::{Result, StoreError};
pub use crate::keys::Space;
use crate::keys::{self, check_id};
use crate::types::{Durability, EngineStats, Op, ReceiptRecord, WriteBatch};

/// A key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// Point and range reads over the key spaces. Keys compare as bytes (lexicographically).
pub trait KvRead {
    /// The value at `key`, if any.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Up to `limit` pairs with `lower <= key < upper` (`None` = no upper bound), ascending, or
    /// descending from the top of the range when `reverse`. An empty or inverted range, or a
    /// `limit` of 0, is an empty answer, not an error.
    fn scan(&self, space: Space, lower: &[u8], upper: Option<&[u8]>, limit: usize, reverse: bool) -> Result<Vec<Pair>>;
}

/// An engine: latest-state reads (for single-key getters), consistent multi-key reads, and
/// atomic batch writes. Every [`KvEngine`] is a [`Store`](crate::Store).
pub trait KvEngine: KvRead + Send + Sync + 'static {
    /// Runs `f` over one consistent view (no write lands half-way through it).
    fn read<T>(&self, f: impl FnOnce(&dyn KvRead) -> Result<T>) -> Result<T>;
    /// Applies `muts` atomically: after `Ok`, all of them are visible (and with
    /// [`Durability::Sync`] survive a machine crash); after a crash, all or none of them. An
    /// `Err` means "not acknowledged" (see [`StoreError::Engine`]), never "applied in part".
    fn apply(&self, muts: Mutations, durability: Durability) -> Result<()>;
    /// The engine's own figures ([`Store::engine_stats`](crate::Store::engine_stats)); none by
    /// default.
    fn stats(&self) -> EngineStats {
        EngineStats::default()
    }
    /// [`Store::recover`](crate::Store::recover); a no-op by default.
    fn recover(&self) -> Result<()> {
        Ok(())
    }
}

/// [`Store::write`](crate::Store::write) over [`stage`].
pub(crate) fn write(e: &impl KvEngine, batch: WriteBatch, durability: Durability) -> Result<()> {
    e.apply(stage(batch)?, durability)
}

/// [`Store::write_groups`](crate::Store::write_groups) over [`stage`].
pub(crate) fn write_groups(
    e: &impl KvEngine,
    groups: Vec<(String, WriteBatch)>,
    durability: Durability,
) -> Result<Vec<Result<()>>> {
    let mut all = Mutations::default();
    let mut failed: Vec<String> = Vec::new();
    let mut out = Vec::with_capacity(groups.len());
    for (chain, batch) in groups {
        if failed.contains(&chain) {
            out.push(Err(StoreError::InvalidOp(format!("an earlier group of {chain} in this write did not validate"))));
            continue;
        }
        match stage(batch) {
            Ok(muts) => {
                all.merge(muts);
                out.push(Ok(()));
            }
            Err(e) => {
                failed.push(chain);
                out.push(Err(e));
            }
        }
    }
    if out.iter().any(Result::is_ok) {
        e.apply(all, durability)?;
    }
    Ok(out)
}

/// The mutations of one batch, per key space: `Some` = put, `None` = delete. Later ops
/// overwrite earlier ones on the same key, as in a write batch applied in order.
#[derive(Debug, Default)]
pub struct Mutations([BTreeMap<Vec<u8>, Option<Vec<u8>>>; Space::ALL.len()]);

impl Mutations {
    /// Puts `value` at `key` (crate-only: engines apply mutations, they never make them).
    pub(crate) fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        self.0[space.idx()].insert(key, Some(value));
    }

    fn delete(&mut self, space: Space, key: Vec<u8>) {
        self.0[space.idx()].insert(key, None);
    }

    /// Adds `later`'s mutations, which win over this one's on the same key (as if applied after).
    fn merge(&mut self, later: Mutations) {
        for (mine, theirs) in self.0.iter_mut().zip(later.0) {
            if mine.is_empty() {
                *mine = theirs;
            } else {
                mine.extend(theirs);
            }
        }
    }

    /// Every mutation, grouped by key space, in key order within a space: `Some` = put,
    /// `None` = delete.
    pub fn iter(&self) -> impl Iterator<Item = (Space, &[u8], Option<&[u8]>)> {
        Space::ALL
            .iter()
            .flat_map(move |&space| self.0[space.idx()].iter().map(move |(k, v)| (space, k.as_slice(), v.as_deref())))
    }
}

/// Turns a batch into mutations. Any error means nothing of the batch may be written. No op
/// reads stored state, so staging needs no snapshot and concurrent writers never conflict.
pub(crate) fn stage(batch: WriteBatch) -> Result<Mutations> {
    let mut st = Mutations::default();
    for op in batch.ops {
        match op {
            Op::PutWorkspace(r) => {
                check_id("workspace_id", &r.id)?;
                st.put(Space::Workspaces, keys::workspace(&r.id), encode(&r)?);
            }
            Op::PutApiKey(r) => {
                check_id("api_key_id", &r.id)?;
                if let Some(ws) = &r.workspace_id {
                    check_id("workspace_id", ws)?;
                }
                st.put(Space::ApiKeyIds, keys::api_key_id(r.workspace_id.as_deref(), &r.id), r.key_hash.to_vec());
                st.put(Space::ApiKeys, r.key_hash.to_vec(), encode(&r)?);
            }
            Op::PutAuthorization(r) => {
                check_id("workspace_id", &r.workspace_id)?;
                check_id("authorization_id", &r.id)?;
                st.put(Space::Authorizations, keys::ws_id(&r.workspace_id, &r.id), encode(&r)?);
            }
            Op::PutReceipt(r) => put_receipt(&mut st, r)?,
            Op::PutNodes { workspace_id: ws, nodes } => {
                check_id("workspace_id", &ws)?;
                for (level, index, hash) in nodes {
                    st.put(Space::Nodes, keys::node(&ws, level, index), hash.to_vec());
                }
            }
            Op::PutCheckpoint { workspace_id: ws, size, note } => {
                check_id("workspace_id", &ws)?;
                st.put(Space::Checkpoints, keys::ws_u64(&ws, size), note.into_bytes());
            }
            Op::PutLogMeta { workspace_id: ws, meta } => {
                check_id("workspace_id", &ws)?;
                st.put(Space::LogMeta, keys::workspace(&ws), encode(&meta)?);
            }
            Op::PutDoc { kind, workspace_id: ws, id, doc } => {
                check_id("workspace_id", &ws)?;
                check_id("doc_id", &id)?;
                let key = keys::ws_id(&ws, &id);
                let stored = codec::StoredDoc { workspace_id: ws, id, doc };
                st.put(Space::of_doc(kind), key, encode(&stored)?);
            }
            Op::DeleteDoc { kind, workspace_id: ws, id } => {
                check_id("workspace_id", &ws)?;
                check_id("doc_id", &id)?;
                st.delete(Space::of_doc(kind), keys::ws_id(&ws, &id));
            }
            Op::PutCosignature { workspace_id: ws, size, witness, line } => {
                check_id("workspace_id", &ws)?;
                if !codec::is_one_line(&line) {
                    return Err(StoreError::InvalidOp(format!(
                        "cosignature of {ws} at {size}: not one signature line"
                    )));
                }
                st.put(Space::Cosignatures, keys::cosignature(&ws, size, &witness), line.into_bytes());
            }
            Op::PutWitnessHead { workspace_id: ws, witness, size } => {
                check_id("workspace_id", &ws)?;
                st.put(Space::WitnessHeads, keys::witness_head(&ws, &witness), size.to_be_bytes().to_vec());
            }
        }
    }
    Ok(st)
}

fn put_receipt(st: &mut Mutations, r: ReceiptRecord) -> Result<()> {
    let ws = &r.workspace_id;
    check_id("workspace_id", ws)?;
    check_id("receipt_id", &r.id)?;
    match (&r.authorization_id, r.seq) {
        (Some(auth), Some(seq)) => {
            check_id("authorization_id", auth)?;
            // `leaf ‖ log index`: the trail's last entry is the authorization's trail head (next
            // seq, prev), and the index is the receipt's key.
            st.put(Space::Trail, keys::trail(ws, auth, seq), codec::encode_leaf(&r.leaf, r.log_index));
        }
        (None, None) => {}
        // A receipt that names an authorization but no seq (or the reverse) would silently be
        // missing from its trail, where a gap is reported as tampering.
        _ => {
            return Err(StoreError::InvalidOp(format!(
                "receipt {}: authorization_id and seq must be set together",
                r.id
            )))
        }
    }
    // Keyed by log index: a workspace's receipts are one range in log order, so the unsigned
    // ones are a seek and a scan, and a receipt needs no second index.
    st.put(Space::Receipts, keys::ws_u64(ws, r.log_index), codec::encode_receipt(&r)?);
    Ok(())
}
