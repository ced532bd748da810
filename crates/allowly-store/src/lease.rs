//! Node membership and workspace leases, written once over [`KvEngine`]: the
//! [`Store`](crate::Store) methods `heartbeat`, `live_nodes`, `acquire_lease`, `renew_lease`,
//! `release_lease`, `renew_leases`, `release_leases` and `lease`. `docs/scale-out.md` has the model; in short:
//!
//! - Times are the engine's ([`KvEngine::now_ms`]: the database's for PostgreSQL), so the
//!   nodes' clocks never need to agree. A lease has expired when its `expires_at_ms <= now`.
//! - A lease is two keys under the workspace id: `leases` (owner, address, expiry) and
//!   `lease_epochs` (the epoch, alone, because it is what a fence reads and it changes only
//!   with the owner). Neither is ever deleted, so an epoch is never granted twice.
//! - Every change reads the lease, decides, and writes with [`KvEngine::apply_checked`]
//!   expecting both keys unchanged: of two nodes racing, one writes and the other reads again
//!   (and then finds the lease held). A fenced write expects the epoch key too, through the
//!   same call, so a takeover is ordered entirely before or entirely after it.

use std::time::Duration;

use crate::codec::{self, decode, encode, StoredLease};
use crate::error::{Result, StoreError};
use crate::keys::{self, check_id, Space};
use crate::kv::{Checked, Guard, KvEngine, Mutations, Refusal};
use crate::types::{Durability, Lease, LeaseAnswer, Member};

/// Longest node address, in bytes.
const MAX_ADDRESS: usize = 512;
/// How often a lease change is tried again after another change of the same lease got in
/// first. Each lost race means another node changed the lease, which the next read sees: an
/// acquirer then finds it held, a renewal finds it kept or lost. Reaching this bound needs a
/// dozen nodes changing one lease at once.
const ROUNDS: usize = 16;
/// Members read per scan of `members`.
const PAGE: usize = 1024;

/// Addresses are what peers dial: printable ASCII without spaces (`http://10.0.0.5:8080`,
/// `[::1]:9000`), at most [`MAX_ADDRESS`] bytes.
fn check_address(address: &str) -> Result<()> {
    if address.is_empty() || address.len() > MAX_ADDRESS || !address.bytes().all(|b| b.is_ascii_graphic()) {
        let shown: String = address.chars().take(64).collect();
        return Err(StoreError::InvalidOp(format!(
            "node address {shown:?}: not 1..={MAX_ADDRESS} bytes of printable ASCII without spaces"
        )));
    }
    Ok(())
}

/// `now + ttl`, in ms, saturating (a TTL of years is "forever", not an overflow).
fn expiry(now: u64, ttl: Duration) -> u64 {
    now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

/// Records that `node` is alive and reachable at `address` until `ttl` from now.
pub(crate) fn heartbeat(e: &impl KvEngine, node: &str, address: &str, ttl: Duration) -> Result<Member> {
    check_id("node_id", node)?;
    check_address(address)?;
    let member =
        Member { node_id: node.to_owned(), address: address.to_owned(), expires_at_ms: expiry(e.now_ms()?, ttl) };
    let mut muts = Mutations::default();
    muts.put(Space::Members, node.as_bytes().to_vec(), encode(&member)?);
    e.apply(muts, Durability::Sync)?;
    Ok(member)
}

/// Every member whose heartbeat has not lapsed, in node id order.
pub(crate) fn live_nodes(e: &impl KvEngine) -> Result<Vec<Member>> {
    let now = e.now_ms()?;
    let space = Space::Members;
    e.read(|view| {
        let mut live = Vec::new();
        let mut cursor = Vec::new();
        loop {
            let page = view.scan(space, &cursor, None, PAGE, false)?;
            let Some((last, _)) = page.last() else { return Ok(live) };
            cursor = last.clone();
            cursor.push(0);
            for (k, v) in &page {
                let m: Member = decode(space, k, v)?;
                if m.node_id.as_bytes() != k.as_slice() {
                    return Err(StoreError::corrupt(space.name(), k, "member is filed under another node id"));
                }
                if m.expires_at_ms > now {
                    live.push(m);
                }
            }
        }
    })
}

/// A workspace's lease as read, with the stored bytes a change must find unchanged.
struct Seen {
    lease: Option<Lease>,
    record: Option<Vec<u8>>,
    epoch: Option<Vec<u8>>,
}

fn read(e: &impl KvEngine, ws: &str) -> Result<Seen> {
    let key = keys::workspace(ws);
    let (record, epoch) = e.read(|view| Ok((view.get(Space::Leases, &key)?, view.get(Space::LeaseEpochs, &key)?)))?;
    let lease = match (&record, &epoch) {
        (None, None) => None,
        (Some(bytes), Some(_)) => {
            let r: StoredLease = decode(Space::Leases, &key, bytes)?;
            if r.workspace_id != ws {
                return Err(StoreError::corrupt(Space::Leases.name(), &key, "lease is filed under another workspace"));
            }
            let epoch = codec::decode_epoch(Space::LeaseEpochs, &key, epoch.as_deref())?;
            Some(Lease {
                workspace_id: r.workspace_id,
                node_id: r.node_id,
                address: r.address,
                epoch,
                expires_at_ms: r.expires_at_ms,
            })
        }
        // Both are written in every change that creates a lease, and neither is ever deleted.
        (Some(_), None) => return Err(StoreError::corrupt(Space::Leases.name(), &key, "a lease without its epoch")),
        (None, Some(_)) => {
            return Err(StoreError::corrupt(Space::LeaseEpochs.name(), &key, "an epoch without its lease"))
        }
    };
    Ok(Seen { lease, record, epoch })
}

/// Writes `next` if the lease is still as `seen`: `false` if another change got in first.
fn put(e: &impl KvEngine, seen: Seen, next: &Lease) -> Result<bool> {
    let key = keys::workspace(&next.workspace_id);
    let mut muts = Mutations::default();
    muts.put(Space::Leases, key.clone(), encode(&stored(next))?);
    if seen.lease.as_ref().map(|l| l.epoch) != Some(next.epoch) {
        muts.put(Space::LeaseEpochs, key.clone(), next.epoch.to_be_bytes().to_vec());
    }
    let guards = vec![
        Guard::Unchanged { space: Space::Leases, key: key.clone(), value: seen.record },
        Guard::Unchanged { space: Space::LeaseEpochs, key, value: seen.epoch },
    ];
    let write = Checked::new(vec![(next.workspace_id.clone(), Ok((muts, guards)))]);
    match e.apply_checked(write, Durability::Sync)?.single()? {
        Ok(()) => Ok(true),
        Err(Refusal::Changed) => Ok(false),
        Err(Refusal::Error(e)) => Err(e),
    }
}

fn raced(ws: &str, node: &str, what: &str) -> StoreError {
    StoreError::Engine(format!(
        "lease of {ws}: changed by other nodes {ROUNDS} times in a row while {node} tried to {what} it"
    ))
}

/// Grants the lease of `ws` to `node` when there is none, when it expired, or when `node`
/// already holds it (at its epoch); otherwise answers with the live lease of its holder.
pub(crate) fn acquire(e: &impl KvEngine, ws: &str, node: &str, address: &str, ttl: Duration) -> Result<LeaseAnswer> {
    check_id("workspace_id", ws)?;
    check_id("node_id", node)?;
    check_address(address)?;
    for _ in 0..ROUNDS {
        // The time is read before the lease: "expired at `now`" stays true when the write
        // lands later, and the expiry granted is at most `ttl` after the write.
        let now = e.now_ms()?;
        let seen = read(e, ws)?;
        let epoch = match &seen.lease {
            None => 1,
            // The same owner: a renewal, at its epoch (it never stopped being the fenced owner).
            Some(l) if l.node_id == node => l.epoch,
            Some(l) if l.expires_at_ms > now => return Ok(LeaseAnswer::Held(l.clone())),
            Some(l) => l.epoch.checked_add(1).ok_or_else(|| {
                StoreError::corrupt(Space::LeaseEpochs.name(), &keys::workspace(ws), "epoch at its largest value")
            })?,
        };
        let next = Lease {
            workspace_id: ws.to_owned(),
            node_id: node.to_owned(),
            address: address.to_owned(),
            epoch,
            expires_at_ms: expiry(now, ttl),
        };
        if put(e, seen, &next)? {
            return Ok(LeaseAnswer::Granted(next));
        }
    }
    Err(raced(ws, node, "acquire"))
}

/// Changes the lease `node` holds at `epoch` with `f(lease, now)`, or answers
/// [`StoreError::Fenced`] if it no longer holds it (expired but not taken over still counts
/// as held: nobody else has written since).
fn change_own(
    e: &impl KvEngine,
    ws: &str,
    node: &str,
    epoch: u64,
    what: &str,
    f: impl Fn(&Lease, u64) -> u64,
) -> Result<Lease> {
    check_id("workspace_id", ws)?;
    check_id("node_id", node)?;
    for _ in 0..ROUNDS {
        let now = e.now_ms()?;
        let seen = read(e, ws)?;
        let next = match &seen.lease {
            Some(l) if l.node_id == node && l.epoch == epoch => Lease { expires_at_ms: f(l, now), ..l.clone() },
            other => {
                let current_epoch = other.as_ref().map_or(0, |l| l.epoch);
                return Err(StoreError::Fenced { workspace_id: ws.to_owned(), current_epoch });
            }
        };
        if put(e, seen, &next)? {
            return Ok(next);
        }
    }
    Err(raced(ws, node, what))
}

/// The `leases` record of `lease` (its epoch is kept apart, in `lease_epochs`).
fn stored(lease: &Lease) -> StoredLease {
    StoredLease {
        workspace_id: lease.workspace_id.clone(),
        node_id: lease.node_id.clone(),
        address: lease.address.clone(),
        expires_at_ms: lease.expires_at_ms,
    }
}

/// Sets the expiry of many leases `node` (reachable at `address`) holds, `(workspace, epoch)`
/// each, to `expiry(now)`: one clock read and one checked write, nothing read before it. Each
/// lease is a group of its own that applies only if the workspace's epoch is still the one
/// given *and* its record still names `node` at `address` (both read, and locked where the
/// engine can, by the write itself): so `node` holds it, and the group rewrites only its
/// expiry. One that does not hold is [`StoreError::Fenced`], alone. Each lease's answer, in
/// order.
fn set_expiry_many(
    e: &impl KvEngine,
    node: &str,
    address: &str,
    held: &[(String, u64)],
    expiry: impl Fn(u64) -> u64,
) -> Result<Vec<Result<Lease>>> {
    check_id("node_id", node)?;
    check_address(address)?;
    let now = e.now_ms()?;
    let expires_at_ms = expiry(now);
    let mut answers: Vec<Option<Result<Lease>>> = Vec::with_capacity(held.len());
    let mut groups = Vec::new();
    let mut planned = Vec::new();
    for (i, (ws, epoch)) in held.iter().enumerate() {
        if let Err(e) = check_id("workspace_id", ws) {
            answers.push(Some(Err(e)));
            continue;
        }
        answers.push(None);
        let next = Lease {
            workspace_id: ws.clone(),
            node_id: node.to_owned(),
            address: address.to_owned(),
            epoch: *epoch,
            expires_at_ms,
        };
        let mut muts = Mutations::default();
        muts.put(Space::Leases, keys::workspace(ws), encode(&stored(&next))?);
        let guards = vec![
            Guard::Fence { workspace_id: ws.clone(), epoch: *epoch },
            Guard::HeldBy {
                workspace_id: ws.clone(),
                epoch: *epoch,
                node: node.to_owned(),
                address: address.to_owned(),
            },
        ];
        groups.push((ws.clone(), Ok((muts, guards))));
        planned.push((i, next));
    }
    if !groups.is_empty() {
        // One result per group; a lease an engine left unanswered is answered below.
        let results = e.apply_checked(Checked::new(groups), Durability::Sync)?.into_results();
        for ((i, next), result) in planned.into_iter().zip(results) {
            answers[i] = Some(result.map(|()| next).map_err(Refusal::into_error));
        }
    }
    Ok(answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(StoreError::Engine("a lease left unanswered".into()))))
        .collect())
}

/// Extends the lease `node` holds at `epoch` to `ttl` from now.
pub(crate) fn renew(e: &impl KvEngine, ws: &str, node: &str, epoch: u64, ttl: Duration) -> Result<Lease> {
    change_own(e, ws, node, epoch, "renew", |_, now| expiry(now, ttl))
}

/// Expires the lease `node` holds at `epoch` now (never later than it would have).
pub(crate) fn release(e: &impl KvEngine, ws: &str, node: &str, epoch: u64) -> Result<Lease> {
    change_own(e, ws, node, epoch, "release", |l, now| l.expires_at_ms.min(now))
}

/// [`renew`] for many leases `node` (at `address`) holds, `(workspace, epoch)` each, in one
/// write ([`set_expiry_many`]); each lease's answer, in order.
pub(crate) fn renew_many(
    e: &impl KvEngine,
    node: &str,
    address: &str,
    held: &[(String, u64)],
    ttl: Duration,
) -> Result<Vec<Result<Lease>>> {
    set_expiry_many(e, node, address, held, |now| expiry(now, ttl))
}

/// [`release`] for many leases, as [`renew_many`]: each expires now.
pub(crate) fn release_many(
    e: &impl KvEngine,
    node: &str,
    address: &str,
    held: &[(String, u64)],
) -> Result<Vec<Result<Lease>>> {
    set_expiry_many(e, node, address, held, |now| now)
}

/// The lease of `ws`, live or expired.
pub(crate) fn lease(e: &impl KvEngine, ws: &str) -> Result<Option<Lease>> {
    check_id("workspace_id", ws)?;
    Ok(read(e, ws)?.lease)
}
