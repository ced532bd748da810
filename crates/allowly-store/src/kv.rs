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
//!
//! Two kinds of write depend on what is stored, and only these: a batch carrying a fence
//! ([`Op::Fence`]: the workspace's lease must still be at that epoch) and a change of a lease
//! (it must still be as it was read). They go through [`KvEngine::apply_checked`], which reads
//! the keys they expect and writes atomically with that read; everything else is
//! [`KvEngine::apply`], which reads nothing. The expected keys (the `leases` and `lease_epochs`
//! spaces) are written by `apply_checked` alone — no op stages them —, so an engine that keeps
//! one process's writers apart (RocksDB) need only keep `apply_checked` calls apart.

use std::collections::{BTreeMap, BTreeSet};

use crate::codec::{self, encode};
use crate::error::{Result, StoreError};
pub use crate::keys::Space;
use crate::keys::{self, check_id};
use crate::types::{Durability, EngineStats, Op, ReceiptRecord, WriteBatch};

/// A key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// One mutation as an engine applies it: the key space, the key, and `Some` value to put or
/// `None` to delete.
pub type Mutation<'a> = (Space, &'a [u8], Option<&'a [u8]>);

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
    /// Applies the groups of `write` whose expectations hold, atomically with reading the keys
    /// they expect: read the current value of every key of [`Checked::expected_keys`] (the
    /// latest committed one), ask [`Checked::plan`] which groups apply, write
    /// [`Plan::mutations`] and return [`Plan::into_outcome`] — with no other `apply_checked`
    /// (of this process or, for a networked engine, of any) changing an expected key in
    /// between. [`Durability`] and errors as for [`KvEngine::apply`]: an `Err` means none of
    /// the groups is acknowledged.
    fn apply_checked(&self, write: Checked, durability: Durability) -> Result<Outcome>;
    /// The engine's clock, in ms since the Unix epoch: what lease and membership expiries are
    /// computed and judged on. This machine's clock by default; a networked engine answers with
    /// its own (the database's), so that the nodes' clocks never need to agree.
    fn now_ms(&self) -> Result<u64> {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        // A clock before 1970 is a broken clock: 0 makes every lease look expired long ago,
        // which only lets a node take over a workspace whose fence then refuses the old owner.
        Ok(since.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }
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

/// [`Store::write`](crate::Store::write) over [`stage`]: a batch with a fence goes through
/// [`KvEngine::apply_checked`], any other through [`KvEngine::apply`].
pub(crate) fn write(e: &impl KvEngine, batch: WriteBatch, durability: Durability) -> Result<()> {
    let (muts, fences) = stage(batch)?;
    if fences.is_empty() {
        return e.apply(muts, durability);
    }
    let write = Checked::new(vec![(String::new(), Ok((muts, fences)))]);
    e.apply_checked(write, durability)?.single()?.map_err(Refusal::into_error)
}

/// [`Store::write_groups`](crate::Store::write_groups) over [`stage`]: one
/// [`KvEngine::apply_checked`] when a group carries a fence, else one [`KvEngine::apply`] of
/// the groups that validate.
pub(crate) fn write_groups(
    e: &impl KvEngine,
    groups: Vec<(String, WriteBatch)>,
    durability: Durability,
) -> Result<Vec<Result<()>>> {
    let staged: Vec<_> = groups.into_iter().map(|(chain, batch)| (chain, stage(batch))).collect();
    let fenced = staged.iter().any(|(_, s)| s.as_ref().is_ok_and(|(_, fences)| !fences.is_empty()));
    let write = Checked::new(staged);
    if fenced {
        let results = e.apply_checked(write, durability)?.into_results();
        return Ok(results.into_iter().map(|r| r.map_err(Refusal::into_error)).collect());
    }
    let (all, results) = write.into_unchecked();
    if results.iter().any(Result::is_ok) {
        e.apply(all, durability)?;
    }
    Ok(results)
}

/// What a group of a [`Checked`] write expects of the stored state.
#[derive(Debug)]
pub(crate) enum Guard {
    /// [`Op::Fence`]: the workspace's lease epoch (`lease_epochs`) is `epoch`.
    Fence { workspace_id: String, epoch: u64 },
    /// A lease change: the key holds what was read before (`None`: still nothing).
    Unchanged { space: Space, key: Vec<u8>, value: Option<Vec<u8>> },
    /// A change of a lease `node` holds, made without reading it first (a bulk renewal): its
    /// record names `node` at `address`. Beside a [`Guard::Fence`] at `epoch` in the same group
    /// (checked first), it is the lease `node` was granted at that epoch.
    HeldBy { workspace_id: String, epoch: u64, node: String, address: String },
}

impl Guard {
    fn key(&self) -> (Space, Vec<u8>) {
        match self {
            Guard::Fence { workspace_id, .. } => (Space::LeaseEpochs, keys::workspace(workspace_id)),
            Guard::Unchanged { space, key, .. } => (*space, key.clone()),
            Guard::HeldBy { workspace_id, .. } => (Space::Leases, keys::workspace(workspace_id)),
        }
    }

    /// Whether the guard holds when its key holds `current`.
    fn check(&self, current: Option<&[u8]>) -> Result<(), Refusal> {
        match self {
            Guard::Fence { workspace_id, epoch } => {
                let (space, key) = self.key();
                let current_epoch = codec::decode_epoch(space, &key, current).map_err(Refusal::Error)?;
                match current_epoch == *epoch {
                    true => Ok(()),
                    false => {
                        Err(Refusal::Error(StoreError::Fenced { workspace_id: workspace_id.clone(), current_epoch }))
                    }
                }
            }
            Guard::Unchanged { value, .. } => match value.as_deref() == current {
                true => Ok(()),
                false => Err(Refusal::Changed),
            },
            Guard::HeldBy { workspace_id, epoch, node, address } => {
                let (space, key) = self.key();
                let holds = match current {
                    None => false,
                    Some(bytes) => {
                        let l: codec::StoredLease = codec::decode(space, &key, bytes).map_err(Refusal::Error)?;
                        l.workspace_id == *workspace_id && l.node_id == *node && l.address == *address
                    }
                };
                match holds {
                    true => Ok(()),
                    // The epoch is current (its fence held): another node's at it, or never
                    // leased at all (then the fence already failed at 0).
                    false => Err(Refusal::Error(StoreError::Fenced {
                        workspace_id: workspace_id.clone(),
                        current_epoch: *epoch,
                    })),
                }
            }
        }
    }
}

/// Why a group of a [`Checked`] write was left out.
#[derive(Debug, Clone)]
pub(crate) enum Refusal {
    /// It did not validate, its fence did not hold, or an earlier group of its chain was left
    /// out: the group's answer.
    Error(StoreError),
    /// A key it expected unchanged had changed (a lease change lost a race): read and try again.
    Changed,
}

impl Refusal {
    /// As a group's answer (`Changed` is the lease code's to handle; `Store::write_groups`
    /// never stages a group that can be refused so).
    pub(crate) fn into_error(self) -> StoreError {
        match self {
            Refusal::Error(e) => e,
            Refusal::Changed => StoreError::Engine("a lease changed while it was being written".into()),
        }
    }
}

/// One group of a [`Checked`] write: its chain and what `stage` made of it.
type Group = (String, Result<(Mutations, Vec<Guard>)>);

/// A write whose groups apply only if what they expect of the stored state holds (see
/// [`KvEngine::apply_checked`]). Built only by this crate.
#[derive(Debug)]
pub struct Checked {
    groups: Vec<Group>,
    /// Every key some group expects, once, per space (so that [`Checked::is_expected`] looks a
    /// key up without copying it).
    expected: BTreeMap<Space, BTreeSet<Vec<u8>>>,
}

impl Checked {
    pub(crate) fn new(groups: Vec<Group>) -> Self {
        let mut expected: BTreeMap<Space, BTreeSet<Vec<u8>>> = BTreeMap::new();
        for (_, guards) in groups.iter().filter_map(|(_, staged)| staged.as_ref().ok()) {
            for (space, key) in guards.iter().map(Guard::key) {
                expected.entry(space).or_default().insert(key);
            }
        }
        Self { groups, expected }
    }

    /// Every key some group expects, once each, in key order: what the engine reads (and, if
    /// it can, locks) before [`Checked::plan`].
    pub fn expected_keys(&self) -> impl Iterator<Item = (Space, &[u8])> {
        self.expected.iter().flat_map(|(space, keys)| keys.iter().map(|k| (*space, k.as_slice())))
    }

    /// Whether some group expects `key` of `space` (an engine that writes before it checks
    /// writes these keys only after).
    pub fn is_expected(&self, space: Space, key: &[u8]) -> bool {
        self.expected.get(&space).is_some_and(|keys| keys.contains(key))
    }

    /// Which groups apply when every expected key holds what `read` answers for it (called
    /// once per key of [`Checked::expected_keys`]). A group applies if it validated, no earlier
    /// group of its chain was left out, and every expectation of it holds.
    pub fn plan(&self, mut read: impl FnMut(Space, &[u8]) -> Result<Option<Vec<u8>>>) -> Result<Plan<'_>> {
        let mut current = BTreeMap::new();
        for (space, key) in self.expected_keys() {
            current.insert((space, key), read(space, key)?);
        }
        Ok(self.plan_with(|guard| {
            let (space, key) = guard.key();
            guard.check(current.get(&(space, key.as_slice())).and_then(Option::as_deref))
        }))
    }

    /// The plan if every expectation held: every group that validated, by the chain rule (what
    /// an engine that writes before it checks writes first).
    pub fn plan_unchecked(&self) -> Plan<'_> {
        self.plan_with(|_| Ok(()))
    }

    fn plan_with(&self, mut guard: impl FnMut(&Guard) -> Result<(), Refusal>) -> Plan<'_> {
        let mut failed: Vec<(&str, Refusal)> = Vec::new();
        let mut verdicts = Vec::with_capacity(self.groups.len());
        for (chain, staged) in &self.groups {
            if let Some((_, earlier)) = failed.iter().find(|(c, _)| c == chain) {
                verdicts.push(Err(match earlier {
                    // Left out by a fence: so is the rest of its chain, for the same reason.
                    Refusal::Error(e @ StoreError::Fenced { .. }) => Refusal::Error(e.clone()),
                    Refusal::Error(_) => Refusal::Error(StoreError::InvalidOp(format!(
                        "an earlier group of {chain} in this write did not validate"
                    ))),
                    Refusal::Changed => Refusal::Changed,
                }));
                continue;
            }
            let verdict = match staged {
                Err(e) => Err(Refusal::Error(e.clone())),
                Ok((_, guards)) => guards.iter().try_for_each(&mut guard),
            };
            if let Err(refusal) = &verdict {
                failed.push((chain, refusal.clone()));
            }
            verdicts.push(verdict);
        }
        Plan { write: self, verdicts }
    }

    /// Without expectations: the mutations of every group that validated (moved, not copied)
    /// and every group's answer.
    fn into_unchecked(self) -> (Mutations, Vec<Result<()>>) {
        let verdicts = self.plan_unchecked().verdicts;
        let mut all = Mutations::default();
        let mut out = Vec::with_capacity(verdicts.len());
        for ((_, staged), verdict) in self.groups.into_iter().zip(verdicts) {
            match (staged, verdict) {
                (Ok((muts, _)), Ok(())) => {
                    all.merge(muts);
                    out.push(Ok(()));
                }
                (_, verdict) => out.push(verdict.map_err(Refusal::into_error)),
            }
        }
        (all, out)
    }
}

/// Which groups of a [`Checked`] write apply ([`Checked::plan`]).
#[derive(Debug)]
pub struct Plan<'a> {
    write: &'a Checked,
    verdicts: Vec<Result<(), Refusal>>,
}

impl<'a> Plan<'a> {
    /// The mutations of the groups that apply, a later group's winning over an earlier one's
    /// on the same key (as if applied in order), each key once, in key order within a space:
    /// `Some` = put, `None` = delete.
    pub fn mutations(&self) -> Vec<Mutation<'a>> {
        let mut merged: BTreeMap<(Space, &'a [u8]), Option<&'a [u8]>> = BTreeMap::new();
        for ((_, staged), verdict) in self.write.groups.iter().zip(&self.verdicts) {
            if let (Ok((muts, _)), Ok(())) = (staged, verdict) {
                merged.extend(muts.iter().map(|(space, key, value)| ((space, key), value)));
            }
        }
        merged.into_iter().map(|((space, key), value)| (space, key, value)).collect()
    }

    /// Whether the same groups apply in both plans.
    pub fn same_groups(&self, other: &Plan<'_>) -> bool {
        self.verdicts.len() == other.verdicts.len()
            && self.verdicts.iter().zip(&other.verdicts).all(|(a, b)| a.is_ok() == b.is_ok())
    }

    /// What the engine returns once it wrote [`Plan::mutations`].
    pub fn into_outcome(self) -> Outcome {
        Outcome(self.verdicts)
    }
}

/// Every group's answer to a [`Checked`] write, in group order ([`KvEngine::apply_checked`]).
#[derive(Debug)]
pub struct Outcome(Vec<Result<(), Refusal>>);

impl Outcome {
    pub(crate) fn into_results(self) -> Vec<Result<(), Refusal>> {
        self.0
    }

    /// The answer of a write of one group.
    pub(crate) fn single(self) -> Result<Result<(), Refusal>> {
        let n = self.0.len();
        let mut results = self.0;
        match (results.pop(), n) {
            (Some(result), 1) => Ok(result),
            _ => Err(StoreError::Engine(format!("the engine answered a write of one group with {n} results"))),
        }
    }
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
    pub fn iter(&self) -> impl Iterator<Item = Mutation<'_>> {
        Space::ALL
            .iter()
            .flat_map(move |&space| self.0[space.idx()].iter().map(move |(k, v)| (space, k.as_slice(), v.as_deref())))
    }
}

/// Turns a batch into mutations, and its fences into the guards they are checked by. Any
/// error means nothing of the batch may be written. No op reads stored state, so staging needs
/// no snapshot and concurrent writers never conflict.
pub(crate) fn stage(batch: WriteBatch) -> Result<(Mutations, Vec<Guard>)> {
    let mut st = Mutations::default();
    let mut fences = Vec::new();
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
            Op::Fence { workspace_id, epoch } => {
                check_id("workspace_id", &workspace_id)?;
                fences.push(Guard::Fence { workspace_id, epoch });
            }
        }
    }
    Ok((st, fences))
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
