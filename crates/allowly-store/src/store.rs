//! The storage contract. Nothing here names an engine: it is meant to be implemented over
//! RocksDB today and a networked engine (distributed SQL, TiKV) later.

use std::cell::RefCell;
use std::fmt;
use std::time::Duration;

use allowly_receipt::merkle::{self, Hash, NodeSource};

use crate::error::{Result, StoreError};
use crate::types::{
    ApiKeyRecord, AuthorizationRecord, DocKind, Durability, EngineStats, Lease, LeaseAnswer, LogMeta, Member,
    ReceiptRecord, WorkspaceRecord, WriteBatch,
};

/// Where Allowly keeps everything. Implementations behave identically (one conformance suite
/// runs against all of them); they differ only in what survives a crash.
///
/// Every id argument is validated (`1..=128` of `[A-Za-z0-9_-]`, else
/// [`StoreError::InvalidId`]); every record returned was checked against the key it was filed
/// under, so a call for workspace `a` can only ever return workspace `a`'s data.
pub trait Store: Send + Sync + 'static {
    /// Applies `batch` atomically, in op order. `Ok` means every op is visible to later reads
    /// and, with [`Durability::Sync`], survives a crash. A validation error (`InvalidId`,
    /// `InvalidOp`, `NotFound`, `Corrupt`) means nothing was written; an `Engine` error means
    /// "not acknowledged" (see [`StoreError::Engine`]). A batch is never applied in part. A
    /// batch with an [`Op::Fence`](crate::Op::Fence) whose epoch is not the workspace's lease
    /// epoch when it is applied is refused with [`StoreError::Fenced`], nothing written.
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()>;
    /// Applies many groups with ONE write (one fsync with [`Durability::Sync`]): each group is
    /// validated on its own, and one that does not validate is left out with its error — as is
    /// every later group of the same `chain` (a chain's later groups were built on its earlier
    /// ones, e.g. one workspace's consecutive commits). The groups that validated are applied
    /// atomically together, in order. A group whose fence does not hold is left out the same
    /// way, with [`StoreError::Fenced`] (and so are its chain's later groups), checked
    /// atomically with the write of the others. The outer `Err` is an engine failure: none of
    /// the groups is acknowledged, as with [`Store::write`].
    fn write_groups(&self, groups: Vec<(String, WriteBatch)>, durability: Durability) -> Result<Vec<Result<()>>>;
    /// A workspace by id.
    fn workspace(&self, id: &str) -> Result<Option<WorkspaceRecord>>;
    /// An API key by the hash of its secret (the caller compares nothing itself: the lookup is the
    /// comparison, and the hash is what a timing side channel could reveal, not the secret).
    fn api_key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>>;
    /// An API key by id: of workspace `ws`, or an instance key when `ws` is `None`. Another
    /// workspace's key is `None`, exactly like a missing one.
    fn api_key_by_id(&self, ws: Option<&str>, id: &str) -> Result<Option<ApiKeyRecord>>;
    /// Up to `limit` of the instance's own API keys (those of no workspace: the instance admin
    /// keys), revoked ones included, in id order.
    fn instance_api_keys(&self, limit: usize) -> Result<Vec<ApiKeyRecord>>;
    /// An authorization of workspace `ws`.
    fn authorization(&self, ws: &str, id: &str) -> Result<Option<AuthorizationRecord>>;
    /// Up to `limit` authorizations of `ws` with id > `after` (all when `None`), in id order.
    fn authorizations(&self, ws: &str, after: Option<&str>, limit: usize) -> Result<Vec<AuthorizationRecord>>;
    /// The receipt at leaf `index` of workspace `ws`'s log. Receipts are keyed by log index
    /// only: a caller that knows a receipt by id knows its index from the id (the engine puts
    /// it there) and checks the id of what it reads.
    fn receipt_at(&self, ws: &str, index: u64) -> Result<Option<ReceiptRecord>>;
    /// Up to `limit` receipts of an authorization's trail with `seq > after_seq` (all when
    /// `None`), in `seq` order: pass the last `seq` seen to get the next page.
    fn trail(&self, ws: &str, auth: &str, after_seq: Option<u64>, limit: usize) -> Result<Vec<ReceiptRecord>>;
    /// Up to `limit` receipts at log indices `[from, to)`, in log order.
    fn receipts_in_range(&self, ws: &str, from: u64, to: u64, limit: usize) -> Result<Vec<ReceiptRecord>>;
    /// A Merkle complete-subtree hash (`level` 0 = leaves).
    fn node(&self, ws: &str, level: u8, index: u64) -> Result<Option<[u8; 32]>>;
    /// The signed checkpoint note of tree size `size`.
    fn checkpoint(&self, ws: &str, size: u64) -> Result<Option<String>>;
    /// The stored checkpoint with the largest size.
    fn latest_checkpoint(&self, ws: &str) -> Result<Option<(u64, String)>>;
    /// The stored checkpoint with the smallest size `>= size`: the first signature that covers
    /// leaf `size - 1`.
    fn checkpoint_at_or_after(&self, ws: &str, size: u64) -> Result<Option<(u64, String)>>;
    /// Up to `limit` `(log index, leaf hash)` pairs at indices `[from, to)`, in log order (what
    /// reconciling with the signer compares). The unsigned leaves are the range `[newest
    /// checkpoint's size, log_meta().next_index)`, so reading them costs the same whatever the
    /// log's history.
    fn leaf_hashes(&self, ws: &str, from: u64, to: u64, limit: usize) -> Result<Vec<(u64, [u8; 32])>>;
    /// The witness cosignatures stored for the checkpoint of tree size `size`: (witness public
    /// key, signature line), in key order.
    fn cosignatures(&self, ws: &str, size: u64) -> Result<Vec<([u8; 32], String)>>;
    /// Up to `limit` stored cosignatures of checkpoints of size `<= at_most`, newest
    /// checkpoint first: (tree size, witness public key, signature line).
    fn recent_cosignatures(&self, ws: &str, at_most: u64, limit: usize) -> Result<Vec<(u64, [u8; 32], String)>>;
    /// The largest tree size `witness` (its public key) is recorded as having cosigned.
    fn witness_head(&self, ws: &str, witness: &[u8; 32]) -> Result<Option<u64>>;
    /// Every workspace whose log has leaves beyond its newest stored checkpoint, or a key
    /// rotation not yet stored (what a restart must finish signing).
    fn workspaces_with_unsigned(&self) -> Result<Vec<String>>;
    /// Every workspace with a stored checkpoint larger than the size `witness` (its public key)
    /// is recorded as having cosigned — none recorded counts as 0 — in byte order: what a
    /// restart must submit to that witness.
    fn workspaces_behind_witness(&self, witness: &[u8; 32]) -> Result<Vec<String>>;
    /// A workspace's log position: the stored record, with `next_index` at least one past the
    /// newest stored receipt (the record is not rewritten by every commit).
    fn log_meta(&self, ws: &str) -> Result<Option<LogMeta>>;
    /// A document of workspace `ws`.
    fn doc(&self, kind: DocKind, ws: &str, id: &str) -> Result<Option<serde_json::Value>>;
    /// Up to `limit` documents of `ws` with id > `after` (all when `None`), in id order.
    fn docs(
        &self,
        kind: DocKind,
        ws: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, serde_json::Value)>>;
    /// Up to `limit` documents of every workspace after `(ws, id)`, in (workspace, id) order:
    /// for background work that spans workspaces (the webhook outbox).
    fn all_docs(
        &self,
        kind: DocKind,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, String, serde_json::Value)>>;
    /// What [`Store::all_docs`] answers, without the documents: `(workspace, id)` pairs, for
    /// counting (a gauge of the outbox or of a due index reads ids alone).
    fn all_doc_ids(&self, kind: DocKind, after: Option<(&str, &str)>, limit: usize) -> Result<Vec<(String, String)>>;
    /// Records that node `node` is alive and reachable by its peers at `address` until `ttl`
    /// from now, on the store's clock (the database's for a networked store: the nodes' clocks
    /// need not agree). A TTL of zero records that it left. `address`: 1..=512 bytes of
    /// printable ASCII without spaces, else [`StoreError::InvalidOp`].
    fn heartbeat(&self, node: &str, address: &str, ttl: Duration) -> Result<Member>;
    /// Every node whose last heartbeat has not lapsed, in node id order.
    fn live_nodes(&self) -> Result<Vec<Member>>;
    /// Makes `node` (reachable at `address`) the owner of workspace `ws` until `ttl` from now,
    /// if nobody holds its lease, the holder's lease expired, or `node` holds it already:
    /// [`LeaseAnswer::Granted`], at a new epoch (one more than the last; 1 for the first) when
    /// the owner changes, at the same epoch when it does not. Otherwise
    /// [`LeaseAnswer::Held`] names the owner, so the request can be forwarded to it. A node
    /// id must be unique per running process (a restarted node under the same id would get
    /// its predecessor's epoch back): see `docs/scale-out.md`.
    fn acquire_lease(&self, ws: &str, node: &str, address: &str, ttl: Duration) -> Result<LeaseAnswer>;
    /// Extends the lease `node` holds at `epoch` to `ttl` from now. [`StoreError::Fenced`]
    /// when `node` no longer holds it at that epoch (another node took over: stop writing).
    /// A lease that expired but was not taken over is still the caller's and is renewed.
    fn renew_lease(&self, ws: &str, node: &str, epoch: u64, ttl: Duration) -> Result<Lease>;
    /// Lets the lease `node` holds at `epoch` expire now, so another node may take the
    /// workspace over at once; returns it. The lease is kept (with its epoch, never granted
    /// again); [`StoreError::Fenced`] as for [`Store::renew_lease`].
    fn release_lease(&self, ws: &str, node: &str, epoch: u64) -> Result<Lease>;
    /// [`Store::renew_lease`] for many leases `node` (reachable at `address`) holds,
    /// `(workspace, epoch)` each: each lease's answer, in order (one fenced does not keep the
    /// others from being renewed; one `node` does not hold at `address` is fenced). An `Err` of
    /// the whole call: none of them is known to be renewed. A key-value store does it in one
    /// write for them all, checked against the stored epochs and records: a node's keeper
    /// renews every lease it holds in a few statements, not a few per workspace.
    fn renew_leases(
        &self,
        node: &str,
        address: &str,
        held: &[(String, u64)],
        ttl: Duration,
    ) -> Result<Vec<Result<Lease>>>;
    /// [`Store::release_lease`] for many leases, as [`Store::renew_leases`]: each expires now.
    fn release_leases(&self, node: &str, address: &str, held: &[(String, u64)]) -> Result<Vec<Result<Lease>>>;
    /// The lease of workspace `ws`, live or expired (`None`: never leased).
    fn lease(&self, ws: &str) -> Result<Option<Lease>>;
    /// The storage engine's own figures (write stalls, compaction debt, sizes), cheap to read:
    /// for `/metrics`, at scrape time.
    fn engine_stats(&self) -> EngineStats;
    /// After a write failed with [`StoreError::NoSpace`] or [`StoreError::Io`]: makes the
    /// store take writes again if it refuses them until told (RocksDB does, after a failed
    /// write-ahead-log write), or says why it cannot yet (the device still failing). Never
    /// makes a failed write durable, never loses an acknowledged one. A no-op for a store that
    /// needs no telling. Blocking; may take as long as a flush.
    fn recover(&self) -> Result<()> {
        Ok(())
    }
}

/// The lowest Merkle level a writer needs to store: nodes below it are recomputed from the
/// receipts' leaf hashes when a proof asks for them (at most `2^FIRST_STORED_LEVEL` leaves, one
/// range read, see [`StoredNodes`]).
///
/// Why not store them: with many busy workspaces every stored node is another cold insert into
/// the memtable's skip list and another entry to flush and compact, and levels 1 and 2 are
/// three quarters of all nodes above the leaves. Proofs are read far more rarely than receipts
/// are written. Stores written before (every level from 1 up) still serve their stored nodes.
pub const FIRST_STORED_LEVEL: u8 = 3;

/// Leaves in the aligned block [`StoredNodes`] reads to recompute an unstored node.
const BLOCK: u64 = 1 << FIRST_STORED_LEVEL;

/// Serves Merkle proofs from the nodes a [`Store`] holds for one workspace
/// (`allowly_receipt::merkle::inclusion_proof(&StoredNodes::new(&store, ws), ..)`).
///
/// A node the store does not hold below [`FIRST_STORED_LEVEL`] (a level-0 node is the leaf
/// hash in the receipt at that index) is hashed from the leaf hashes of the aligned block of
/// [`BLOCK`] receipts that holds it, read once and kept for the next node of the same block:
/// one proof's lowest siblings all lie in one block.
///
/// [`NodeSource`] can only say "missing", so a *store* failure is also reported as
/// [`allowly_receipt::Error::MissingNode`]; it is logged and kept, and the caller must check
/// [`StoredNodes::take_error`] after a failed proof to tell "not there" (a coverage problem)
/// from "could not read" (an outage) — they deserve different answers.
pub struct StoredNodes<'a, S: Store + ?Sized> {
    store: &'a S,
    ws: &'a str,
    error: RefCell<Option<StoreError>>,
    /// The last block read: its first index and the leaf hash at each offset (`None`: no
    /// receipt there, e.g. past the log's end).
    block: RefCell<Option<(u64, [Option<Hash>; BLOCK as usize])>>,
}

impl<'a, S: Store + ?Sized> StoredNodes<'a, S> {
    /// Nodes of workspace `ws` in `store`.
    pub fn new(store: &'a S, ws: &'a str) -> Self {
        Self { store, ws, error: RefCell::new(None), block: RefCell::new(None) }
    }

    /// The first store error met since the last call, if any.
    pub fn take_error(&self) -> Option<StoreError> {
        self.error.borrow_mut().take()
    }

    /// Node `(level, index)` (`level < FIRST_STORED_LEVEL`) hashed from its leaves, or `None`
    /// if a leaf of it is not stored.
    fn hashed_from_leaves(&self, level: u8, index: u64) -> Result<Option<Hash>> {
        let width = 1u64 << level;
        let Some(first) = index.checked_mul(width) else { return Ok(None) };
        let start = first & !(BLOCK - 1);
        // Offsets inside the block: `first - start + width <= BLOCK` as the node is aligned.
        let (lo, hi) = ((first - start) as usize, (first - start + width) as usize);
        let mut block = self.block.borrow_mut();
        let whole =
            |leaves: &[Option<Hash>]| leaves.get(lo..hi).and_then(|l| l.iter().copied().collect::<Option<Vec<_>>>());
        if let Some(leaves) = block.as_ref().filter(|(at, _)| *at == start).and_then(|(_, l)| whole(l)) {
            return Ok(Some(merkle::complete_subtree_hash(&leaves)));
        }
        let mut leaves = [None; BLOCK as usize];
        for (i, hash) in self.store.leaf_hashes(self.ws, start, start.saturating_add(BLOCK), BLOCK as usize)? {
            if let Some(slot) = i.checked_sub(start).and_then(|o| leaves.get_mut(o as usize)) {
                *slot = Some(hash);
            }
        }
        let found = whole(&leaves).map(|l| merkle::complete_subtree_hash(&l));
        *block = Some((start, leaves));
        Ok(found)
    }
}

impl<S: Store + ?Sized> fmt::Debug for StoredNodes<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredNodes").field("ws", &self.ws).field("error", &self.error).finish_non_exhaustive()
    }
}

impl<S: Store + ?Sized> NodeSource for StoredNodes<'_, S> {
    fn node(&self, level: u8, index: u64) -> allowly_receipt::Result<Hash> {
        let found = match self.store.node(self.ws, level, index) {
            Ok(None) if level < FIRST_STORED_LEVEL => self.hashed_from_leaves(level, index),
            other => other,
        };
        match found {
            Ok(Some(hash)) => Ok(hash),
            Ok(None) => Err(allowly_receipt::Error::MissingNode { level, index }),
            Err(e) => {
                tracing::warn!(workspace = self.ws, level, index, error = %e, "cannot read Merkle node");
                let mut first = self.error.borrow_mut();
                if first.is_none() {
                    *first = Some(e);
                }
                Err(allowly_receipt::Error::MissingNode { level, index })
            }
        }
    }
}
