//! Faults below the process that make the engine fail closed: a data volume below its
//! free-space floor or a store write the device refused, a signer that cannot make its journal
//! durable, and signing that fell too far behind. Each is a [`Fault`] with a stable code; while
//! one is active every receipt-producing call is refused with it (HTTP 503), `/readyz` lists it,
//! and its gauge is 1. Each clears by itself once its cause does.
//!
//! The request path reads one atomic word ([`Faults::first`] when it is non-zero); the causes
//! are raised and cleared off the request path — by the health task (`monitor::health_loop`, every
//! `EngineConfig::health_interval`: free space and a probe write while a store write failure is
//! outstanding; the signing backlog every 1/64 of `max_unsigned_age`, at most every second), by
//! the committer (a failed synced write), and by the signing pipeline (the signer's answers).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use allowly_store::StoreError;
use dashmap::DashMap;

use crate::clock::now_ms;
use crate::error::{EngineError, Result};
pub use crate::fault::Fault;
use crate::metrics::Metrics;

/// The active faults: a bit mask for the request path, the detail of each for `/readyz` and
/// the log.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    mask: AtomicU32,
    details: Mutex<[Option<String>; Fault::ALL.len()]>,
    /// A store write failed with a device fault: the health task probes with a small synced
    /// write until one succeeds (free space alone does not prove the store writes again).
    pub(crate) write_failed: AtomicBool,
    /// Store writes that failed with a device fault, ever: a probe clears `write_failed` only
    /// if none failed since it started.
    pub(crate) write_failures: AtomicU64,
    /// A probe write is running (at most one at a time: on a stalled volume it may never end).
    pub(crate) probing: AtomicBool,
    /// How the last probe write failed since the last write failure, if one did: the fault its
    /// error stands for and the detail (`None`: none has failed since, or one succeeded).
    pub(crate) probe_failure: Mutex<Option<(Fault, String)>>,
    /// When the next recovering probe may start, and the wait after the one before: each one
    /// that fails doubles it up to [`MAX_PROBE_BACKOFF`], since a recovery that succeeds while
    /// writes still fail (RocksDB's flushes every memtable) must not run four times a second.
    pub(crate) probe_backoff: Mutex<Option<(std::time::Instant, Duration)>>,
    /// Signer answers in a row that said its journal failed (reset by any successful append).
    signer_failures: AtomicU32,
}

/// The longest wait between two recovering probes while store writes keep failing.
pub const MAX_PROBE_BACKOFF: Duration = Duration::from_secs(5);

/// How many `StorageFailed` answers in a row from the signer make [`Fault::SignerStorageFailed`]:
/// one failed group can be a transient error the signer already undid; several in a row (the
/// pipeline retries within about a second) is a disk that stays full or broken.
pub const SIGNER_STORAGE_FAILURES: u32 = 3;

impl Faults {
    /// The first active fault with its detail, or `None` (one atomic load when healthy).
    pub fn first(&self) -> Option<(Fault, String)> {
        if self.mask.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.active().into_iter().next()
    }

    /// Whether `fault` is active.
    pub fn is_active(&self, fault: Fault) -> bool {
        self.mask.load(Ordering::Acquire) & fault.bit() != 0
    }

    /// Every active fault with its detail, in [`Fault::ALL`] order.
    pub fn active(&self) -> Vec<(Fault, String)> {
        let mask = self.mask.load(Ordering::Acquire);
        let details = self.details.lock().map(|d| d.clone()).unwrap_or_default();
        Fault::ALL
            .iter()
            .zip(details)
            .filter(|(f, _)| mask & f.bit() != 0)
            .map(|(f, d)| (*f, d.unwrap_or_default()))
            .collect()
    }

    /// Raises `fault` (or updates its detail), logging when it becomes active.
    pub fn raise(&self, fault: Fault, detail: String, m: &Metrics) {
        if let Ok(mut d) = self.details.lock() {
            d[fault as usize] = Some(detail.clone());
        }
        if self.mask.fetch_or(fault.bit(), Ordering::AcqRel) & fault.bit() == 0 {
            tracing::error!(cause = fault.code(), detail = %detail, "failing closed: receipt-producing calls answer 503");
        }
        m.faults.with_label_values(&[fault.code()]).set(1);
    }

    /// Clears `fault`, logging when it was active.
    pub fn clear(&self, fault: Fault, m: &Metrics) {
        if self.mask.fetch_and(!fault.bit(), Ordering::AcqRel) & fault.bit() != 0 {
            tracing::info!(cause = fault.code(), "cleared: serving again");
        }
        m.faults.with_label_values(&[fault.code()]).set(0);
    }

    /// Sets or clears `fault` as `detail` says.
    pub fn set(&self, fault: Fault, detail: Option<String>, m: &Metrics) {
        match detail {
            Some(d) => self.raise(fault, d, m),
            None => self.clear(fault, m),
        }
    }

    /// A store write failed: raises its fault (if it is a device fault) at once, and has the
    /// health task probe the store until a write succeeds.
    pub fn store_write_failed(&self, e: &StoreError, m: &Metrics) {
        if let Some(fault) = Fault::of_store_error(e) {
            self.write_failures.fetch_add(1, Ordering::AcqRel);
            self.write_failed.store(true, Ordering::Release);
            self.raise(fault, format!("a store write failed: {e}"), m);
        }
    }
}

impl Faults {
    /// The signer refused an append because its journal failed; the third in a row fails the
    /// engine closed.
    pub fn signer_storage_failed(&self, detail: &str, m: &Metrics) {
        let n = self.signer_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= SIGNER_STORAGE_FAILURES {
            self.raise(Fault::SignerStorageFailed, format!("{n} signer journal writes failed in a row: {detail}"), m);
        }
    }

    /// The signer made an append durable: its journal works (cheap when nothing was wrong).
    pub fn signer_stored(&self, m: &Metrics) {
        let was = self.signer_failures.swap(0, Ordering::AcqRel);
        if was != 0 || self.mask.load(Ordering::Acquire) & Fault::SignerStorageFailed.bit() != 0 {
            self.clear(Fault::SignerStorageFailed, m);
        }
    }
}

/// Free space of the data volume, as `statvfs` reports it to an unprivileged writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeSpace {
    pub free_bytes: u64,
    pub total_bytes: u64,
}

impl VolumeSpace {
    /// Reads the space of the file system holding `path`.
    pub fn of(path: &std::path::Path) -> std::io::Result<Self> {
        let s = rustix::fs::statvfs(path)?;
        Ok(Self {
            free_bytes: s.f_bavail.saturating_mul(s.f_frsize),
            total_bytes: s.f_blocks.saturating_mul(s.f_frsize),
        })
    }
}

/// The default free-space floor: 256 MiB or 1 % of the volume, whichever is larger. 256 MiB
/// holds RocksDB's next preallocated write-ahead log (~70 MiB) and a memtable flush with room
/// to spare; the percentage keeps the margin proportional on large volumes.
pub fn default_min_free(total_bytes: u64) -> u64 {
    (256u64 << 20).max(total_bytes / 100)
}

/// The detail of [`Fault::StorageFull`] when `space` is below `floor`, else `None`.
pub(crate) fn below_floor(space: VolumeSpace, floor: u64) -> Option<String> {
    (space.free_bytes < floor).then(|| {
        format!(
            "the data volume has {} MiB free, below the floor of {} MiB (--min-free-disk)",
            space.free_bytes >> 20,
            floor >> 20
        )
    })
}

/// The detail of [`Fault::SigningBacklog`] when the oldest unsigned receipt is older than
/// `bound`, else `None`.
pub(crate) fn backlog_too_old(oldest: Option<Duration>, unsigned: u64, bound: Duration) -> Option<String> {
    let age = oldest?;
    (age > bound).then(|| {
        format!(
            "the oldest of {unsigned} unsigned receipts is {:.1} s old, above the bound of {:.1} s (--max-unsigned-age-ms)",
            age.as_secs_f64(),
            bound.as_secs_f64()
        )
    })
}

/// Whether the signer answers. Updated by the probe and by every signing exchange.
///
/// A pong is weaker evidence than a signing exchange: the signer answers pings without touching
/// its disk, so with its journal's volume slow or stalled it pongs at once while every append
/// times out. After a signing exchange failed (`set_down`, the pipeline's outage), a pong alone
/// therefore does not bring the signer back up while receipts wait to be signed: only an
/// answered exchange does (`set_up`; the pipeline retries at least once a second), or a pong once
/// nothing is left to sign. Otherwise each pong reopened the fail-closed window — checks
/// acknowledged for another `signer_timeout` — for as long as the volume stayed slow.
#[derive(Debug, Default)]
pub(crate) struct Health {
    up: AtomicBool,
    /// The detail of the outage (`None` while up), and whether the last signing exchange
    /// failed; one lock, so a pong cannot undo an exchange's failure it raced with.
    state: Mutex<HealthState>,
    /// Woken when the signer is up again after an outage (`pipeline/token.rs`: signing rounds
    /// that wait out a lost token go on at once when it is back).
    came_up: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct HealthState {
    detail: Option<String>,
    signing_failed: bool,
    /// The last failed signing exchange failed by taking longer than `signer_timeout`
    /// ([`SIGNING_TIMED_OUT`]), not with an error or a lost connection.
    timed_out: bool,
    /// Down, and the signer answered a ping after a signing exchange timed out: it is there but
    /// too slow to sign (its journal's volume, or an overloaded host), not gone. Refusals say
    /// `signer_slow` rather than `signer_unavailable`, so an operator and a client can tell
    /// them apart. Until a ping answers after the timed-out exchange this is not known, and the
    /// outage is `signer_unavailable`; a failed ping, an exchange that fails otherwise (an
    /// error, a lost connection) or a recovery ends it.
    slow: bool,
    /// Down because the signer answered the last ping that its PKCS#11 token is unavailable
    /// (`TokenUnavailable`: the token is lost, the signer fails closed and looks for it by
    /// itself): refusals and `/readyz` say `signer_token_unavailable`, not the generic
    /// `signer_unavailable`. Any other failure or a recovery ends it.
    token: bool,
}

/// What a refusal says when a signing exchange got no answer within `signer_timeout`.
pub(crate) const SIGNING_TIMED_OUT: &str = "signer did not answer in time";

/// How a signing exchange failed ([`Health::set_down`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SigningFailure<'a> {
    /// No answer within `signer_timeout`: a signer that still answers pings is then
    /// [`HealthState::slow`].
    TimedOut,
    /// An error or a lost connection, as described.
    Failed(&'a str),
}

impl<'a> SigningFailure<'a> {
    /// The text refusals and `/readyz` give.
    pub(crate) fn detail(self) -> &'a str {
        match self {
            Self::TimedOut => SIGNING_TIMED_OUT,
            Self::Failed(why) => why,
        }
    }
}

impl Health {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        // Two plain fields: a panic elsewhere cannot leave them half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A signing exchange was answered: the signer is up.
    pub fn set_up(&self, m: &Metrics) {
        let mut st = self.state();
        st.signing_failed = false;
        self.up(&mut st, m);
    }

    /// A signing exchange failed (no answer in time, connection lost): down until one is
    /// answered, or a pong finds nothing left to sign ([`Health::pong`]).
    pub fn set_down(&self, m: &Metrics, failure: SigningFailure<'_>) {
        let mut st = self.state();
        st.signing_failed = true;
        st.timed_out = failure == SigningFailure::TimedOut;
        // Still slow while exchanges keep timing out (the signer answered a ping before);
        // another failure says nothing about speed.
        st.slow &= st.timed_out;
        st.token = false;
        Self::down(&self.up, &mut st, m, failure.detail());
    }

    /// The probe's ping was answered. Up, unless the last signing exchange failed and receipts
    /// still wait to be signed (`nothing_to_sign` is asked only then): the pipeline's next
    /// exchange decides.
    pub fn pong(&self, m: &Metrics, nothing_to_sign: impl FnOnce() -> bool) {
        let mut st = self.state();
        if st.signing_failed && !nothing_to_sign() {
            st.slow = st.timed_out;
            if !st.detail.as_deref().is_some_and(|d| d.contains(PONG_NOTE)) {
                let why = st.detail.take().unwrap_or_else(|| "a signing exchange failed".into());
                st.detail = Some(format!("{why}; {PONG_NOTE}"));
            }
            return;
        }
        st.signing_failed = false;
        self.up(&mut st, m);
    }

    /// The probe's ping failed; `token`: the signer answered that its PKCS#11 token is
    /// unavailable (see [`HealthState::token`]).
    pub fn ping_failed(&self, m: &Metrics, why: &str, token: bool) {
        let mut st = self.state();
        // Not answering at all: gone, not slow.
        st.slow = false;
        st.token = token;
        Self::down(&self.up, &mut st, m, why);
    }

    fn up(&self, st: &mut HealthState, m: &Metrics) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!("signer is answering");
            self.came_up.notify_waiters();
        }
        st.detail = None;
        st.slow = false;
        st.token = false;
        m.signer_up.set(1);
    }

    /// Completes when the signer is up again after an outage (register it, with `enable`,
    /// before looking at [`Health::is_up`], so a recovery in between still wakes the waiter).
    pub fn came_up(&self) -> tokio::sync::futures::Notified<'_> {
        self.came_up.notified()
    }

    fn down(up: &AtomicBool, st: &mut HealthState, m: &Metrics, why: &str) {
        if up.swap(false, Ordering::AcqRel) {
            tracing::warn!(reason = why, "signer unavailable: checks fail closed");
        }
        st.detail = Some(why.to_owned());
        m.signer_up.set(0);
    }

    #[cfg(test)]
    pub fn detail(&self) -> Option<String> {
        self.state().detail.clone()
    }

    /// Why the signer is down, as an error: [`EngineError::SignerSlow`] when it answers pings
    /// but not signing exchanges in time, [`EngineError::SignerTokenUnavailable`] when it
    /// answers that its token is unavailable, else [`EngineError::SignerUnavailable`]. `None`
    /// while up.
    pub fn outage(&self) -> Option<EngineError> {
        if self.is_up() {
            return None;
        }
        let st = self.state();
        let detail = st.detail.clone().unwrap_or_else(|| "signer down".into());
        Some(if st.slow {
            EngineError::SignerSlow(detail)
        } else if st.token {
            EngineError::SignerTokenUnavailable(detail)
        } else {
            EngineError::SignerUnavailable(detail)
        })
    }

    /// Fails closed while the signer is down (counted): nothing may be decided or written.
    pub fn require_up(&self, m: &Metrics) -> Result<()> {
        match self.outage() {
            None => Ok(()),
            Some(e) => {
                m.failed_closed.inc();
                Err(e)
            }
        }
    }
}

/// Added to the outage's detail when the signer answers pings but not signing exchanges.
const PONG_NOTE: &str = "the signer answers pings but not signing requests (is its journal's volume slow or stalled?)";

/// How a workspace's stored log and the signer's disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Divergence {
    /// A fork or a rollback found while signing (or a signer refusing the stored receipts):
    /// `workspace_log_diverged`; the instance stays ready, the workspace is listed.
    Forked,
    /// Found at start: the signer has signed more leaves than the store holds at all, so
    /// receipts that were handed out are missing from this store (a restore older than the
    /// signer's state): `workspace_log_behind_signer`, and the instance is not ready.
    StoreBehindSigner,
    /// Found at start: the signer's log is behind the stored checkpoints (a restored backup),
    /// and it is being re-fed the stored receipts: `workspace_log_catching_up`, passes by
    /// itself (`Retry-After`); neither counted as a divergence nor making the instance unready.
    CatchingUp,
    /// Found while signing: the workspace's active key is in a key store the signer does not
    /// open (`workspace_key_store_not_open`). Its receipts could never be signed until an
    /// operator restarts the signer with that store, so it refuses new ones rather than
    /// acknowledging decisions whose receipts stay pending; cleared by the first signing round
    /// that succeeds again. Not a divergence of the logs; the instance stays ready.
    KeyStoreNotOpen,
    /// Found while signing: the signer answered that its PKCS#11 token is unavailable for this
    /// workspace (its key object is missing from a token that answers, or the token is lost):
    /// `signer_token_unavailable`, with `Retry-After`. Its receipts cannot be signed until the
    /// signer finds the key again (by itself), so it refuses new ones meanwhile; cleared by the
    /// first signing round that succeeds again (`pipeline/token.rs`). Not a divergence of the
    /// logs; the instance stays ready (a lost token makes it unready through the signer's health).
    TokenUnavailable,
}

impl Divergence {
    /// The problem code of the refusals, and the `/readyz` cause.
    pub fn code(self) -> &'static str {
        match self {
            Self::Forked => "workspace_log_diverged",
            Self::StoreBehindSigner => "workspace_log_behind_signer",
            Self::CatchingUp => "workspace_log_catching_up",
            Self::KeyStoreNotOpen => "workspace_key_store_not_open",
            Self::TokenUnavailable => "signer_token_unavailable",
        }
    }
}

/// Workspaces whose stored log and the signer's log disagree, with how, why and since when.
/// Kept in memory: after a restart the first signing round (which runs at start for every
/// workspace with unsigned receipts, and a diverged one always has some) finds a fork again,
/// and the start-up comparison of log sizes (`signer_ahead`) a store behind the signer.
#[derive(Debug, Default)]
pub(crate) struct Diverged {
    map: DashMap<String, (Divergence, String, u64)>,
    /// Woken at every mark. A key rotation waiting for its workspace's log to be signed
    /// (`Pipelines::signed_up_to`) must learn of a divergence at once, and not every mark comes
    /// from the signing task it otherwise listens to (the start-up comparison's background
    /// retry, `signer_ahead`, marks a store behind its signer). Marks are rare: every waiter
    /// wakes and looks at its own workspace.
    marked: tokio::sync::Notify,
}

impl Diverged {
    /// Marks `ws` diverged (logged, counted, the gauge set). A workspace already marked
    /// `StoreBehindSigner` keeps that mark (the signing round that follows sees the same gap as
    /// a fork).
    pub fn mark(&self, ws: &str, kind: Divergence, why: &str, m: &Metrics) {
        let mut new = false;
        self.map
            .entry(ws.to_owned())
            .and_modify(|v| {
                if v.0 != Divergence::StoreBehindSigner {
                    *v = (kind, why.to_owned(), v.2);
                }
            })
            .or_insert_with(|| {
                new = true;
                (kind, why.to_owned(), now_ms())
            });
        if new && kind == Divergence::CatchingUp {
            tracing::info!(workspace = %ws, reason = %why, "the workspace refuses new receipts until the signer has caught up");
        } else if new && kind == Divergence::TokenUnavailable {
            tracing::error!(workspace = %ws, reason = %why, "the signer's key token is unavailable for this workspace: it refuses new receipts until one is signed again (the signer looks for the token and the key by itself)");
        } else if new && kind == Divergence::KeyStoreNotOpen {
            tracing::error!(workspace = %ws, reason = %why, "the workspace's key is in a key store the signer does not open: it refuses new receipts until one is signed again");
        } else if new {
            m.log_divergence.inc();
            tracing::error!(workspace = %ws, reason = %why, code = kind.code(), "signer log diverges from the stored log: the workspace refuses new receipts until resynced");
        }
        m.workspaces_diverged.set(i64::try_from(self.map.len()).unwrap_or(i64::MAX));
        self.marked.notify_waiters();
    }

    /// Completes at the next [`Diverged::mark`] of any workspace (register it, with `enable`,
    /// before looking at the marks, so a mark in between still wakes the waiter).
    pub fn marked(&self) -> tokio::sync::futures::Notified<'_> {
        self.marked.notified()
    }

    /// Clears `ws` if it is marked `kind` (and only then); whether it was.
    pub fn clear_if(&self, ws: &str, kind: Divergence, m: &Metrics) -> bool {
        let was = self.map.remove_if(ws, |_, v| v.0 == kind).is_some();
        if was {
            m.workspaces_diverged.set(i64::try_from(self.map.len()).unwrap_or(i64::MAX));
        }
        was
    }

    /// Clears `ws` (after a successful resync); whether it was marked.
    pub fn clear(&self, ws: &str, m: &Metrics) -> bool {
        let was = self.map.remove(ws).is_some();
        m.workspaces_diverged.set(i64::try_from(self.map.len()).unwrap_or(i64::MAX));
        was
    }

    pub fn contains(&self, ws: &str) -> bool {
        self.map.contains_key(ws)
    }

    /// Fails closed for a diverged workspace (counted), with the code of its kind.
    pub fn require_not(&self, ws: &str, m: &Metrics) -> Result<()> {
        let Some((kind, why)) = self.map.get(ws).map(|v| (v.0, v.1.clone())) else { return Ok(()) };
        m.diverged_refusals.inc();
        Err(match kind {
            Divergence::Forked => EngineError::WorkspaceLogDiverged,
            Divergence::StoreBehindSigner => EngineError::WorkspaceLogBehindSigner,
            Divergence::CatchingUp => EngineError::WorkspaceLogCatchingUp,
            Divergence::KeyStoreNotOpen => EngineError::WorkspaceKeyStoreNotOpen(why),
            Divergence::TokenUnavailable => EngineError::SignerTokenUnavailable(why),
        })
    }

    /// `(workspace, kind, reason, since ms)` of every diverged workspace, by workspace id.
    pub fn list(&self) -> Vec<(String, Divergence, String, u64)> {
        let mut v: Vec<_> =
            self.map.iter().map(|e| (e.key().clone(), e.value().0, e.value().1.clone(), e.value().2)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// The signer's own metrics text, as last fetched (`monitor::signer_metrics`). A scrape starts
/// a fetch (unless one is running) and waits for it briefly, then serves whatever is newest:
/// the scrape never waits for a hung signer (a fetch is bounded by the signer timeout and goes
/// on in the background), and the signer's series stay on the page, with their age in
/// `allowly_engine_signer_metrics_age_seconds`, while it does not answer.
#[derive(Debug)]
pub(crate) struct SignerScrape {
    /// The last good copy and when it was fetched.
    pub last: std::sync::Mutex<Option<(std::sync::Arc<str>, std::time::Instant)>>,
    /// A fetch is running (at most one at a time).
    pub fetching: std::sync::atomic::AtomicBool,
    /// Notified when a fetch ends, good or not.
    pub done: tokio::sync::Notify,
    /// When the engine started (the age of "no copy yet").
    pub started: std::time::Instant,
}

impl Default for SignerScrape {
    fn default() -> Self {
        Self {
            last: Default::default(),
            fetching: Default::default(),
            done: Default::default(),
            started: std::time::Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind refuses with its own code; a store behind its signer is never downgraded to a
    /// fork by the signing round that meets the same gap; a catch-up is not counted as a
    /// divergence (it would page someone after every restore).
    #[test]
    fn divergence_kinds_keep_their_code_and_only_real_ones_count() {
        let (d, m) = (Diverged::default(), Metrics::new());
        d.mark("a", Divergence::StoreBehindSigner, "signer 7, store 5", &m);
        d.mark("a", Divergence::Forked, "signer log has 7 leaves, only 5 are stored", &m);
        d.mark("b", Divergence::CatchingUp, "signer 3, signed 9", &m);
        d.mark("c", Divergence::Forked, "another root", &m);
        assert_eq!(m.log_divergence.get(), 2, "a and c");
        assert_eq!(m.workspaces_diverged.get(), 3);
        let code = |ws| d.require_not(ws, &m).expect_err("refused").code();
        assert_eq!(
            [code("a"), code("b"), code("c")],
            ["workspace_log_behind_signer", "workspace_log_catching_up", "workspace_log_diverged"]
        );
        assert!(d.require_not("d", &m).is_ok());
        assert!(d.clear("b", &m));
        assert_eq!(
            d.list().iter().map(|e| (e.0.as_str(), e.1)).collect::<Vec<_>>(),
            [("a", Divergence::StoreBehindSigner), ("c", Divergence::Forked)]
        );
    }

    /// A pong does not undo a failed signing exchange while receipts wait to be signed (a
    /// signer whose disk is slow answers pings at once); an answered exchange does, and so does
    /// a pong once nothing is left to sign. A failed ping alone is undone by the next pong.
    #[test]
    fn a_pong_does_not_undo_a_failed_signing_exchange_while_receipts_wait() {
        let (h, m) = (Health::default(), Metrics::new());
        h.pong(&m, || panic!("nothing to ask: no exchange failed"));
        assert!(h.is_up());
        h.set_down(&m, SigningFailure::TimedOut);
        h.pong(&m, || false);
        h.pong(&m, || false);
        assert!(!h.is_up(), "a pong reopened the fail-closed window");
        let detail = h.detail().unwrap_or_default();
        assert!(
            detail.starts_with("signer did not answer in time; ") && detail.matches(PONG_NOTE).count() == 1,
            "{detail}"
        );
        h.set_up(&m);
        assert!(h.is_up() && h.detail().is_none());
        h.set_down(&m, SigningFailure::TimedOut);
        h.pong(&m, || true);
        assert!(h.is_up(), "nothing left to sign: the pong is all the evidence there is");
        h.ping_failed(&m, "connection refused", false);
        assert!(!h.is_up());
        h.pong(&m, || panic!("nothing to ask: only a ping failed"));
        assert!(h.is_up());
    }

    /// A signer that answers pings while its signing exchanges time out is refused as
    /// `signer_slow`; one that does not answer at all (or before any ping answered after the
    /// failed exchange) as `signer_unavailable`; and a signer back up refuses nothing.
    #[test]
    fn a_signer_that_pongs_but_does_not_sign_is_slow_not_unavailable() {
        let (h, m) = (Health::default(), Metrics::new());
        let code = |h: &Health| h.require_up(&m).err().map(|e| e.code());
        h.set_up(&m);
        assert_eq!(code(&h), None);
        h.set_down(&m, SigningFailure::TimedOut);
        assert_eq!(code(&h), Some("signer_unavailable"), "not known to be there yet");
        h.pong(&m, || false);
        assert_eq!(code(&h), Some("signer_slow"));
        assert!(matches!(h.outage(), Some(EngineError::SignerSlow(d)) if d.contains(PONG_NOTE)));
        h.set_down(&m, SigningFailure::TimedOut);
        assert_eq!(code(&h), Some("signer_slow"), "another exchange timing out: still there, still slow");
        h.ping_failed(&m, "connection refused", false);
        assert_eq!(code(&h), Some("signer_unavailable"), "gone now");
        h.set_down(&m, SigningFailure::TimedOut);
        h.pong(&m, || false);
        h.set_up(&m);
        assert_eq!(code(&h), None);
        h.set_down(&m, SigningFailure::TimedOut);
        assert_eq!(code(&h), Some("signer_unavailable"), "slowness is not remembered across a recovery");
        h.set_down(&m, SigningFailure::Failed("the signer's PKCS#11 token is unavailable"));
        h.pong(&m, || false);
        assert_eq!(code(&h), Some("signer_unavailable"), "it answered, with an error: not slow");
        h.set_down(&m, SigningFailure::TimedOut);
        h.pong(&m, || false);
        assert_eq!(code(&h), Some("signer_slow"));
        h.set_down(&m, SigningFailure::Failed("connection lost"));
        assert_eq!(code(&h), Some("signer_unavailable"), "a lost connection ends it");
    }

    /// A ping the signer answers with "my token is unavailable" is refused (and `/readyz`
    /// named) as `signer_token_unavailable`, not as a generic outage; any other failure is the
    /// generic one again; and the signer coming back up wakes whoever waits for it (a signing
    /// round waiting out the token), while one that was up all along wakes nobody.
    #[tokio::test]
    async fn a_ping_refused_for_the_token_is_its_own_outage_and_its_end_wakes_waiters() {
        let (h, m) = (Health::default(), Metrics::new());
        let code = |h: &Health| h.require_up(&m).err().map(|e| e.code());
        // Whether a registered waiter is woken already (polled once, not waited for).
        async fn woken(w: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) -> bool {
            tokio::time::timeout(Duration::ZERO, w).await.is_ok()
        }
        h.set_up(&m);
        {
            let w = h.came_up();
            tokio::pin!(w);
            w.as_mut().enable();
            h.pong(&m, || true);
            assert!(!woken(w).await, "up all along: nothing came back");
        }
        h.ping_failed(&m, "the signer's PKCS#11 token is unavailable (see the signer's log)", true);
        assert_eq!(code(&h), Some("signer_token_unavailable"));
        assert!(matches!(h.outage(), Some(EngineError::SignerTokenUnavailable(d)) if d.contains("PKCS#11")));
        let w = h.came_up();
        tokio::pin!(w);
        w.as_mut().enable();
        h.set_down(&m, SigningFailure::Failed("connection lost"));
        assert_eq!(code(&h), Some("signer_unavailable"), "another failure is the generic outage");
        h.ping_failed(&m, "token", true);
        h.ping_failed(&m, "connection refused", false);
        assert_eq!(code(&h), Some("signer_unavailable"));
        h.ping_failed(&m, "token", true);
        assert!(!woken(w.as_mut()).await, "still down");
        h.pong(&m, || true);
        assert_eq!(code(&h), None);
        assert!(woken(w).await, "the end of the outage wakes the waiter");
    }

    #[test]
    fn store_errors_become_faults_only_for_the_device() {
        assert_eq!(Fault::of_store_error(&StoreError::NoSpace("x".into())), Some(Fault::StorageFull));
        assert_eq!(Fault::of_store_error(&StoreError::Io("x".into())), Some(Fault::StorageFailed));
        assert_eq!(Fault::of_store_error(&StoreError::Engine("busy".into())), None);
        assert_eq!(Fault::of_store_error(&StoreError::InvalidOp("x".into())), None);
    }

    #[test]
    fn the_floor_defaults_to_256_mib_or_one_percent() {
        assert_eq!(default_min_free(1 << 30), 256 << 20);
        assert_eq!(default_min_free(100 << 30), 1 << 30);
        let space = |free| VolumeSpace { free_bytes: free, total_bytes: 1 << 30 };
        assert!(below_floor(space(255 << 20), 256 << 20).is_some());
        assert!(below_floor(space(256 << 20), 256 << 20).is_none());
    }

    #[test]
    fn the_backlog_counts_only_when_older_than_the_bound() {
        let bound = Duration::from_secs(60);
        assert!(backlog_too_old(None, 0, bound).is_none());
        assert!(backlog_too_old(Some(Duration::from_secs(60)), 5, bound).is_none());
        let d = backlog_too_old(Some(Duration::from_secs(61)), 5, bound).unwrap_or_default();
        assert!(d.contains("5 unsigned") && d.contains("61.0 s"), "{d}");
    }

    #[test]
    fn faults_list_in_order_and_clear() {
        let (f, m) = (Faults::default(), Metrics::new());
        assert!(f.first().is_none());
        f.raise(Fault::SigningBacklog, "late".into(), &m);
        f.raise(Fault::StorageFull, "full".into(), &m);
        assert_eq!(f.first(), Some((Fault::StorageFull, "full".into())));
        assert_eq!(f.active().len(), 2);
        assert!(m.text().contains(r#"allowly_engine_fault{cause="storage_full"} 1"#), "{}", m.text());
        f.clear(Fault::StorageFull, &m);
        assert_eq!(f.first(), Some((Fault::SigningBacklog, "late".into())));
        f.clear(Fault::SigningBacklog, &m);
        assert!(f.first().is_none());
        assert!(m.text().contains(r#"allowly_engine_fault{cause="storage_full"} 0"#));
    }
}
