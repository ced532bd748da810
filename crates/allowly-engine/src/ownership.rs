//! Which workspaces this node may sequence, in a cluster of nodes over one database (issue 16
//! part 2; the model is in docs/scale-out.md). Absent in the default single-process mode.
//!
//! A node sequences a workspace only while it holds the workspace's lease, and every write of
//! the workspace carries the lease's epoch ([`Op::Fence`]): the store applies it only if the
//! epoch is still current, atomically with the write. That, not anything kept here, is what
//! keeps a former owner — paused, partitioned, with a lapsed lease — from ever appending after
//! another node took over: this table only remembers which epoch to fence with and which leases
//! to renew. Safety needs no clock; how soon a dead owner's workspaces move needs the TTL.
//!
//! What holds a lease: an actor or a signing task of the workspace running here, or work in
//! progress that pinned it ([`Ownership::pin`]: a webhook attempt, a long-poll). The keeper
//! (`Engine`'s `lease_loop`) renews those every third of the TTL and releases the others, so
//! another node can take an idle workspace over at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use allowly_store::{LeaseAnswer, Op, Store, StoreError};
use dashmap::DashMap;

use crate::config::ClusterConfig;
use crate::error::{EngineError, Result};

/// Most workspaces remembered as another node's (a few MiB); past it the memory starts over.
const MAX_KNOWN_OWNERS: usize = 100_000;
/// Leases renewed or released per store call (one read and one write of them all): bounds a
/// transaction's size, not the keeper's round.
const LEASES_PER_CALL: usize = 512;

/// `(workspace, epoch)` of each lease, as the store takes them.
fn epochs(held: &[(String, Held)]) -> Vec<(String, u64)> {
    held.iter().map(|(ws, h)| (ws.clone(), h.epoch)).collect()
}

/// Each lease's answer of a bulk call, the call's own failure repeated for each.
fn each(
    answers: allowly_store::Result<Vec<allowly_store::Result<allowly_store::Lease>>>,
    n: usize,
) -> Vec<std::result::Result<(), StoreError>> {
    match answers {
        Ok(answers) if answers.len() == n => answers.into_iter().map(|a| a.map(|_| ())).collect(),
        Ok(answers) => {
            let e = StoreError::Engine(format!("the store answered {} of {n} leases", answers.len()));
            vec![Err(e); n]
        }
        Err(e) => vec![Err(e); n],
    }
}

/// A lease this node holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Held {
    pub epoch: u64,
    /// When it was last granted or renewed, on this node's monotonic clock, taken *before*
    /// the call (the store's "now" was read after it): the lease lasts at least until
    /// `since + ttl` as the store counts.
    pub since: Instant,
}

pub(crate) struct Ownership {
    pub cfg: ClusterConfig,
    held: DashMap<String, Held>,
    /// Workspaces another node was seen to own, and when (this node's clock): requests for
    /// them are forwarded without asking the database again for a third of the TTL. A stale
    /// entry sends a request to a former owner, which answers it 503 rather than forwarding it
    /// again (`allowly-forwarded-by`); the client's retry finds the new owner. Bounded.
    others: DashMap<String, (String, String, Instant)>,
    /// `allowly_engine_leases_held`, kept equal to `held.len()`.
    gauge: prometheus::IntGauge,
    /// Work in progress per workspace that keeps its lease renewed ([`Self::pin`]).
    pins: Arc<DashMap<String, usize>>,
}

/// A workspace's lease kept by work in progress ([`Ownership::pin`]) until this is dropped.
pub(crate) struct Pinned {
    ws: String,
    pins: Arc<DashMap<String, usize>>,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        self.pins.remove_if_mut(&self.ws, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

impl Ownership {
    pub fn new(cfg: ClusterConfig, gauge: prometheus::IntGauge) -> Self {
        Self { cfg, held: DashMap::new(), others: DashMap::new(), gauge, pins: Arc::default() }
    }

    /// Keeps the lease of `ws`, once held, renewed until the guard is dropped, even with no
    /// actor or signing task of the workspace here: for work that needs the workspace to stay
    /// this node's while it lasts (a webhook attempt, a long-poll waiting for a decision).
    pub fn pin(&self, ws: &str) -> Pinned {
        *self.pins.entry(ws.to_owned()).or_default() += 1;
        Pinned { ws: ws.to_owned(), pins: self.pins.clone() }
    }

    /// Whether work in progress pinned `ws` ([`Self::pin`]).
    pub fn is_pinned(&self, ws: &str) -> bool {
        self.pins.contains_key(ws)
    }

    fn count(&self) {
        self.gauge.set(i64::try_from(self.held.len()).unwrap_or(i64::MAX));
    }

    /// Takes (or keeps) the lease of `ws` for this node: its epoch, to fence every write of the
    /// workspace with. [`EngineError::NotOwner`] names the node holding a live lease. A store
    /// call: run it off the async workers. (Callers that can skip the call for an owner seen
    /// just now ask [`Self::known_owner`] first.)
    pub fn acquire(&self, store: &dyn Store, ws: &str) -> Result<u64> {
        let since = Instant::now();
        match store.acquire_lease(ws, &self.cfg.node_id, &self.cfg.address, self.cfg.lease_ttl)? {
            LeaseAnswer::Granted(lease) => {
                self.others.remove(ws);
                let taken_over = self.held.insert(ws.to_owned(), Held { epoch: lease.epoch, since });
                if taken_over.is_none_or(|h| h.epoch != lease.epoch) {
                    tracing::info!(workspace = %ws, epoch = lease.epoch, "this node owns the workspace");
                    self.count();
                }
                Ok(lease.epoch)
            }
            LeaseAnswer::Held(lease) => {
                if self.held.remove(ws).is_some() {
                    self.count();
                }
                if self.others.len() >= MAX_KNOWN_OWNERS {
                    self.others.clear();
                }
                self.others.insert(ws.to_owned(), (lease.node_id.clone(), lease.address.clone(), since));
                Err(EngineError::NotOwner { node_id: lease.node_id, address: lease.address })
            }
        }
    }

    /// Another node seen owning `ws` less than a keeper period ago, as the error that sends the
    /// request there.
    pub fn known_owner(&self, ws: &str) -> Option<EngineError> {
        let seen = self.others.get(ws)?;
        let (node_id, address, at) = &*seen;
        (at.elapsed() < self.period())
            .then(|| EngineError::NotOwner { node_id: node_id.clone(), address: address.clone() })
    }

    /// Forgets every workspace seen owned by the node at `address`.
    pub fn forget_address(&self, address: &str) {
        self.others.retain(|_, (_, a, _)| a != address);
    }

    /// The epoch of the lease this node holds for `ws`, if it holds one.
    pub fn epoch(&self, ws: &str) -> Option<u64> {
        self.held.get(ws).map(|h| h.epoch)
    }

    /// The fence a write of `ws` carries: this node's epoch, or `NotOwner`-like refusal when it
    /// holds no lease (it lost it; nothing may be written for the workspace).
    pub fn fence(&self, ws: &str) -> Result<Op> {
        match self.epoch(ws) {
            Some(epoch) => Ok(Op::Fence { workspace_id: ws.to_owned(), epoch }),
            None => Err(moved(ws)),
        }
    }

    /// `ws` was taken over (a write or a renewal at `epoch` was fenced): forget it.
    pub fn lost(&self, ws: &str, epoch: u64) {
        if self.forget(ws, epoch) {
            tracing::warn!(workspace = %ws, epoch, "another node took the workspace over");
        }
    }

    /// Forgets the lease of `ws` at `epoch`, unless a newer grant replaced it meanwhile;
    /// whether it did.
    fn forget(&self, ws: &str, epoch: u64) -> bool {
        let gone = self.held.remove_if(ws, |_, h| h.epoch == epoch).is_some();
        if gone {
            self.count();
        }
        gone
    }

    /// Every lease held, for the keeper.
    pub fn snapshot(&self) -> Vec<(String, Held)> {
        self.held.iter().map(|e| (e.key().clone(), *e.value())).collect()
    }

    /// Renews the leases `held` (the keeper, for the workspaces in use), a chunk of them per
    /// store call. Fenced: another node took that workspace over ([`Self::lost`]). Any other
    /// failure is only logged: tried again next round (the lease may lapse meanwhile, which is
    /// safe: writes are fenced by epoch). A store call: run it off the async workers.
    pub fn renew(&self, store: &dyn Store, held: &[(String, Held)]) {
        for chunk in held.chunks(LEASES_PER_CALL) {
            let since = Instant::now();
            let answers = store.renew_leases(&self.cfg.node_id, &self.cfg.address, &epochs(chunk), self.cfg.lease_ttl);
            for ((ws, h), answer) in chunk.iter().zip(each(answers, chunk.len())) {
                match answer {
                    Ok(()) => {
                        if let Some(mut now) = self.held.get_mut(ws) {
                            if now.epoch == h.epoch {
                                now.since = since;
                            }
                        }
                    }
                    Err(StoreError::Fenced { .. }) => self.lost(ws, h.epoch),
                    Err(e) => tracing::warn!(workspace = %ws, error = %e, "cannot renew the workspace's lease"),
                }
            }
        }
    }

    /// Lets the leases `held` expire now and forgets them (the keeper, for idle workspaces;
    /// shutdown, for all), a chunk per store call: another node may take those workspaces over
    /// at once. One that cannot be released lapses by itself. A store call: run it off the
    /// async workers.
    pub fn release(&self, store: &dyn Store, held: &[(String, Held)]) {
        for chunk in held.chunks(LEASES_PER_CALL) {
            let answers = store.release_leases(&self.cfg.node_id, &self.cfg.address, &epochs(chunk));
            for ((ws, h), answer) in chunk.iter().zip(each(answers, chunk.len())) {
                match answer {
                    Ok(()) | Err(StoreError::Fenced { .. }) => {
                        self.forget(ws, h.epoch);
                    }
                    Err(e) => {
                        tracing::warn!(workspace = %ws, error = %e, "cannot release the workspace's lease; it lapses by itself")
                    }
                }
            }
        }
    }

    /// How often the keeper runs: a third of the TTL, so a lease is renewed twice before it
    /// could lapse.
    pub fn period(&self) -> Duration {
        (self.cfg.lease_ttl / 3).max(Duration::from_millis(10))
    }
}

/// The error of a write of `ws` that this node may no longer make: the same the store answers
/// a fenced write with (the epoch that replaced ours is not known here: 0).
pub(crate) fn moved(ws: &str) -> EngineError {
    EngineError::Store(StoreError::Fenced { workspace_id: ws.to_owned(), current_epoch: 0 })
}

/// Whether `e` says a write or renewal of the workspace was refused because another node
/// holds it now.
pub(crate) fn is_fenced(e: &EngineError) -> bool {
    matches!(e, EngineError::Store(StoreError::Fenced { .. }))
}
