//! [`Engine`]: the engine's public face. Every method is what one API endpoint needs; the
//! server maps requests onto them and errors back to HTTP, and does nothing else.
//!
//! Writes that must be sequenced (anything that adds a receipt, and scope rules, which
//! decisions read) go through the workspace's actor. Reads go straight to the store: the actor
//! acknowledges nothing before it is durable, so the store always holds every acknowledged
//! change. The webhook endpoint and delivery methods are in `webhooks.rs` (same type).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use allowly_receipt::bundle::{self, Bundle, Header};
use allowly_receipt::merkle;
use allowly_receipt::types::{HexHash, KeySet};
use allowly_signer_proto::client::SignerClient;
use allowly_store::{DocKind, Durability, Op, ReceiptRecord, Store, StoreError, StoredNodes, WriteBatch};
use ractor::{Actor, ActorRef, MessagingErr};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

use crate::actor::{IdemDoc, WorkspaceActor, WsArgs};
use crate::clock::{now_ms, ts};
use crate::config::EngineConfig;
use crate::error::{EngineError, Result};
use crate::health::{Divergence, Health};
use crate::ids::{is_secret_shaped, new_id, new_secret, open_secret, seal_secret, secret_hash};
use crate::mailbox::{Idem, Reply, WsHandle, WsMsg};
use crate::metrics::Metrics;
use crate::model::*;
use crate::receipts::{key_records, key_set, pending_envelope, signed_envelope};
use crate::services::{blocking, Services};
use crate::shared::Shared;
use crate::{validate, views};

/// Most records one list page looks at (see [`Engine::authorizations`]).
pub const MAX_LIST_SCAN: usize = 10_000;

/// Most receipts one export returns (larger trails or ranges are exported in parts).
pub const MAX_EXPORT_RECEIPTS: u64 = 100_000;

/// An evidence export's bound, in `commit_timeout`s ([`Engine::export_timeout`]). An export
/// is long by nature — up to [`MAX_EXPORT_RECEIPTS`] receipts read in one scan, each with its
/// inclusion proof — so the bound of one request's reads would refuse large exports on a
/// healthy volume; but it must not wait for ever on a stalled one either (it holds one of the
/// `MAX_PENDING_READS` places and its client's connection). Scaled with the commit timeout:
/// an operator who allows a slower volume allows slower exports too.
pub const EXPORT_TIMEOUT_FACTOR: u32 = 30;

/// How often the signer is probed when nothing else talks to it.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How often memory pressure is looked at (and unused workspace locks forgotten).
const PRESSURE_INTERVAL: Duration = Duration::from_secs(1);
/// Most actors stopped per `PRESSURE_INTERVAL` under memory pressure.
const MAX_PRESSURE_STOPS: usize = 1024;

/// The engine. Cheap to clone (clones share everything).
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("actors", &self.shared.actors.len()).finish_non_exhaustive()
    }
}

/// Store ids from the network: a malformed id cannot name anything, so it is "not found".
pub(crate) fn not_found_if_invalid(what: &'static str) -> impl Fn(StoreError) -> EngineError {
    move |e| match e {
        StoreError::InvalidId { .. } => EngineError::NotFound { what },
        other => EngineError::Store(other),
    }
}

impl Engine {
    /// Starts the engine over `store`, talking to the signer through `signer`: starts the
    /// signing pipeline and the signer health probe, and schedules signing of every receipt a
    /// previous run left pending. Must be called inside a tokio runtime.
    pub async fn start(store: Arc<dyn Store>, signer: SignerClient, cfg: EngineConfig) -> Result<Self> {
        let metrics = Metrics::new();
        let faults = Arc::new(crate::health::Faults::default());
        let committer = crate::commit::Committer::start(
            store.clone(),
            metrics.clone(),
            faults.clone(),
            cfg.commit_timeout / 2,
            cfg.commit_window,
            tokio::runtime::Handle::current(),
        )
        .map_err(|e| EngineError::Internal(format!("cannot start the committer thread: {e}")))?;
        // A quarter of the backlog bound: pacing alone never makes the instance fail closed.
        let sign_pacer = crate::pace::Pacer::new(cfg.sign_rounds_per_second, cfg.max_unsigned_age / 4);
        let sign_batcher = crate::sign_batcher::SignBatcher::start(
            signer.clone(),
            metrics.sign_request_workspaces.clone(),
            metrics.sign_rounds_queued.clone(),
        );
        let witnessing = Arc::new(crate::witnessing::Witnessing::new(&cfg));
        crate::witnessing::start(
            &witnessing,
            store.clone(),
            metrics.clone(),
            cfg.witness_timeout,
            cfg.witness_refused_retry,
        )
        .map_err(|e| EngineError::Internal(format!("cannot start the witness client or the checkpoint log: {e}")))?;
        let ownership = cfg.cluster.clone().map(|c| crate::ownership::Ownership::new(c, metrics.leases_held.clone()));
        // Revocations through other nodes are not seen here: cached keys are read again.
        let key_cache_max_age = ownership.as_ref().map(|_| crate::services::CLUSTER_CACHE_MAX_AGE);
        let services = Arc::new(Services {
            ownership,
            witnessing,
            store,
            committer,
            signer,
            sign_batcher,
            sign_pacer,
            cfg,
            metrics,
            health: Health::default(),
            faults,
            diverged: Default::default(),
            shutting_down: Default::default(),
            endpoints: Default::default(),
            webhook_wake: Default::default(),
            api_keys: crate::services::ApiKeyCache::new(key_cache_max_age),
            cached_authorizations: Default::default(),
            signer_scrape: Default::default(),
            admissions: Default::default(),
            pending_reads: Default::default(),
            background_reads: Default::default(),
        });
        let watchers = crate::watchers::Watchers::with_capacity(services.cfg.max_long_polls);
        let shared = Arc::new(Shared {
            services,
            pipelines: Default::default(),
            actors: Default::default(),
            locks: Default::default(),
            instance_idem: Default::default(),
            watchers,
        });
        let engine = Self { shared: shared.clone() };
        shared.probe_signer(|| true).await;
        tokio::spawn(probe_loop(Arc::downgrade(&shared)));
        tokio::spawn(pressure_loop(Arc::downgrade(&shared)));
        crate::monitor::check(&shared, true).await;
        tokio::spawn(crate::monitor::health_loop(Arc::downgrade(&shared)));
        let every = shared.cfg.idempotency_sweep_interval;
        tokio::spawn(periodic(Arc::downgrade(&shared), every, "expired Idempotency-Key records", |e| async move {
            e.sweep_idempotency().await
        }));
        let every = shared.cfg.escalation_sweep_interval;
        tokio::spawn(periodic(Arc::downgrade(&shared), every, "overdue escalations", |e| async move {
            e.expire_due_escalations().await
        }));
        tokio::spawn(lease_loop(Arc::downgrade(&shared)));
        // Before anything is signed or decided: a store older than the signer's state.
        let catching_up = crate::signer_ahead::check_at_start(&shared.services, &shared.pipelines).await;
        // Receipts a previous run committed but did not get signed.
        let s = shared.clone();
        let pending = blocking(move || {
            let mut out = Vec::new();
            for ws in s.store.workspaces_with_unsigned()? {
                let meta = s.store.log_meta(&ws)?.unwrap_or_default();
                out.push((ws, meta));
            }
            Ok(out)
        })
        .await?;
        for (ws, meta) in pending.into_iter().filter(|(ws, _)| !catching_up.contains(ws)) {
            // In a cluster, only a workspace this node can take is signed here: one another
            // node owns is that node's to sign.
            if shared.ownership.is_some() {
                let (s, id) = (shared.clone(), ws.clone());
                let taken = blocking(move || s.ownership.as_ref().map_or(Ok(0), |o| o.acquire(s.store.as_ref(), &id)));
                if let Err(e) = taken.await {
                    tracing::debug!(workspace = %ws, error = %e, "not signing a workspace another node owns");
                    continue;
                }
            }
            tracing::info!(workspace = %ws, "signing receipts left pending by a previous run");
            shared.pipelines.notify(&shared.services, &ws, meta.next_index);
            if meta.rotation_at.is_some() {
                // Its actor finishes the key rotation a crash interrupted as it starts.
                tracing::info!(workspace = %ws, "finishing a key rotation left unfinished by a previous run");
                let until = tokio::time::Instant::now() + shared.cfg.commit_timeout;
                if let Err(e) = engine.actor_for(&ws, until).await {
                    tracing::warn!(workspace = %ws, error = %e, "cannot start the workspace to finish its key rotation");
                }
            }
        }
        Ok(engine)
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops taking work, finishes every decision in flight, signs what is pending (bounded by
    /// `EngineConfig::shutdown_timeout`), and stops the actors.
    pub async fn shutdown(&self) {
        let s = &self.shared;
        s.shutting_down.store(true, Ordering::Release);
        // Long-polls answer what they have now rather than hold the drain up.
        s.watchers.close();
        // Signing rounds waiting for their paced slot go now.
        s.pipelines.wake_all();
        let deadline = tokio::time::Instant::now() + s.cfg.shutdown_timeout;
        let actors: Vec<WsHandle> = s.actors.iter().map(|e| e.value().clone()).collect();
        for h in actors {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let _ = h.actor.drain_and_wait(Some(left)).await;
        }
        // Let the pipelines sign what was committed — except in workspaces whose log diverged
        // from the signer's: nothing of theirs is signed before a resync, so waiting is useless.
        loop {
            let store = s.store.clone();
            let pending = blocking(move || Ok(store.workspaces_with_unsigned()?)).await;
            match pending {
                // In a cluster, other nodes sign their own workspaces' receipts.
                Ok(p) if p.iter().all(|ws| s.diverged.contains(ws) || !s.owns(ws)) => {
                    if !p.is_empty() {
                        tracing::warn!(
                            workspaces = p.len(),
                            "shutting down with unsigned receipts in workspaces whose log diverged from the signer's: they are signed only after a resync (POST /v1/workspaces/{{ws}}/log/resync)"
                        );
                    }
                    break;
                }
                Ok(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => {
                    tracing::warn!(
                        ?other,
                        "shutting down with receipts still unsigned: they are signed after the next start, once the signer answers and its log agrees with the stored one"
                    );
                    break;
                }
            }
        }
        release_leases(s).await;
    }

    /// Readiness (`/readyz`): accepting work, the signer answering, and no fault active. Each
    /// reason not to be ready is one entry of the list, so a new reason is one more push.
    pub fn readiness(&self) -> Readiness {
        let s = &self.shared;
        let signer = s.health.is_up();
        let cause = |code: &str, detail: String| NotReady { code: code.to_owned(), detail };
        let mut causes = Vec::new();
        if s.shutting_down.load(Ordering::Acquire) {
            causes.push(cause("shutting_down", "the server is stopping".to_owned()));
        }
        if let Some(outage) = s.health.outage() {
            // `signer_slow`, `signer_token_unavailable` or `signer_unavailable`: the same code
            // as the refusals.
            let detail = match &outage {
                EngineError::SignerSlow(d)
                | EngineError::SignerUnavailable(d)
                | EngineError::SignerTokenUnavailable(d) => d.clone(),
                other => other.to_string(),
            };
            causes.push(cause(outage.code(), detail));
        }
        causes.extend(s.faults.active().into_iter().map(|(f, detail)| cause(f.code(), detail)));
        let diverged = s.diverged.list();
        let behind = diverged.iter().filter(|d| d.1 == Divergence::StoreBehindSigner).count();
        if behind > 0 {
            // Receipts that were handed out are missing: not one tenant's trouble but the whole
            // store's (a restore older than the signer's state), so the instance is not ready.
            causes.push(cause(
                Divergence::StoreBehindSigner.code(),
                format!(
                    "{behind} workspace(s) whose signer signed more receipts than this store holds: the store is older \
                     than the signer's state (restored from an old backup?); restore a newer backup (docs/operations.md, \
                     Backup and restore)"
                ),
            ));
        }
        let mut r = Readiness::from_causes(signer, causes);
        r.diverged_workspaces = diverged
            .into_iter()
            .map(|(workspace_id, kind, _reason, since_ms)| DivergedWorkspace {
                workspace_id,
                code: kind.code().to_owned(),
                since_ms,
            })
            .collect();
        // One bad tenant does not take the instance out of a load balancer: the others work.
        // It shows here, in the gauge and in the logs, and its requests get 503s.
        if r.detail.is_none() && !r.diverged_workspaces.is_empty() {
            let n = r.diverged_workspaces.len();
            r.detail = Some(format!("{n} workspace(s) refuse new receipts (why: their code in diverged_workspaces)"));
        }
        r
    }

    /// The recovery path of a workspace whose log diverged from the signer's (503
    /// `workspace_log_diverged`): checks both logs again and, where one is a prefix of the other
    /// (the signer ahead and signing exactly the stored leaves; or behind, after a restore from
    /// an old backup, and then re-fed the stored receipts), clears the mark and resumes
    /// signing. `Conflict` while they fork. See `docs/threat-model.md` ("When a workspace's log diverges: recovery").
    pub async fn resync_log(&self, ws: &str) -> Result<Resynced> {
        self.require_workspace(ws).await?;
        crate::pipeline::resync(&self.shared.services, &self.shared.pipelines, ws).await
    }

    /// The engine's metrics as one collector for the process's registry: collecting reads the
    /// figures known only at scrape time (store figures, pending escalations and
    /// confirmations), so the registry's `gather` must run on a blocking thread.
    pub fn collector(&self) -> Box<dyn prometheus::core::Collector> {
        Box::new(crate::monitor::ScrapeCollector {
            shared: Arc::downgrade(&self.shared),
            metrics: self.shared.metrics.clone(),
        })
    }

    /// The signer's own metrics (re-exported: the signer has no port of its own), Prometheus
    /// text. Waits at most 100 ms for a fresh copy, else serves the last one fetched (empty
    /// until the signer answered once): a scrape never waits for a hung signer, and the
    /// signer's series do not vanish while it is down
    /// (`allowly_engine_signer_metrics_age_seconds` says how old they are).
    pub async fn signer_metrics_text(&self) -> Arc<str> {
        crate::monitor::signer_metrics(&self.shared.services).await
    }

    /// Authorizations cached by all workspace actors right now.
    pub fn cached_authorizations(&self) -> usize {
        self.shared.cached_authorizations.load(Ordering::Relaxed)
    }

    /// The engine's metrics registry (for benches and tests that read counters directly).
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    // ---- API keys -------------------------------------------------------------------------

    /// What [`Engine::authenticate`] answers when it needs no store read (a cached key, or a
    /// secret that cannot be a key): `None` when only the store knows.
    pub fn cached_principal(&self, secret: &str) -> Option<Option<Principal>> {
        if !is_secret_shaped(secret) {
            return Some(None);
        }
        self.shared.api_keys.get(&secret_hash(secret)).map(Some)
    }

    /// Runs `f` — store reads for a request — off the async workers, and answers within
    /// `commit_timeout` however slow the data volume ([`Services::read_until`]): past it
    /// `ReadTimeout` (503 `read_timeout`, nothing changed), while the read goes on until the
    /// volume answers. Called on an async worker, a read that blocked for the volume held up
    /// every request sharing the worker (two of them on a 2-core machine), `/readyz` and
    /// `/healthz` too.
    ///
    /// [`Services::read_until`]: crate::services::Services::read_until
    pub async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Engine) -> Result<T> + Send + 'static) -> Result<T> {
        self.read_within(self.shared.cfg.commit_timeout, f).await
    }

    /// [`Engine::read`] with another bound: an evidence export's ([`Engine::export_timeout`]).
    pub async fn read_within<T: Send + 'static>(
        &self,
        bound: Duration,
        f: impl FnOnce(&Engine) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + bound;
        let engine = self.clone();
        self.shared.services.read_until(deadline, move || f(&engine)).await
    }

    /// How long an evidence export ([`Engine::export`]) may take before it is answered
    /// `read_timeout`: [`EXPORT_TIMEOUT_FACTOR`] times `commit_timeout` (60 s by default).
    pub fn export_timeout(&self) -> Duration {
        self.shared.cfg.commit_timeout.saturating_mul(EXPORT_TIMEOUT_FACTOR)
    }

    /// The caller behind a secret, or `None` when the secret is unknown, malformed or revoked.
    /// Looked up by SHA-256 of the secret (the secret itself is never stored).
    pub fn authenticate(&self, secret: &str) -> Result<Option<Principal>> {
        if !is_secret_shaped(secret) {
            return Ok(None);
        }
        let hash = secret_hash(secret);
        let cache = &self.shared.api_keys;
        if let Some(p) = cache.get(&hash) {
            return Ok(Some(p));
        }
        let generation = cache.generation();
        let Some(k) = self.shared.store.api_key_by_hash(&hash)? else { return Ok(None) };
        // The lookup already matched; compare again in constant time so no code path depends
        // on where two hashes first differ.
        if !bool::from(k.key_hash.ct_eq(&hash)) || k.revoked_at_ms.is_some() {
            return Ok(None);
        }
        let p = Principal { key_id: k.id, workspace_id: k.workspace_id, roles: k.roles };
        cache.insert(hash, p.clone(), generation);
        Ok(Some(p))
    }

    /// A synced write outside any actor (instance-scope records, sweeps), answered within
    /// `commit_timeout` like an actor's: past it `CommitTimeout`, and the write may still land.
    pub(crate) async fn write(&self, ops: Vec<Op>) -> Result<()> {
        let store = self.shared.store.clone();
        let deadline = self.shared.cfg.commit_timeout;
        let write = blocking(move || Ok(store.write(WriteBatch::from(ops), Durability::Sync)?));
        match tokio::time::timeout(deadline, write).await {
            Ok(r) => r,
            Err(_) => {
                self.shared.metrics.commit_timeouts.inc();
                Err(EngineError::CommitTimeout { waited_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX) })
            }
        }
    }

    /// Creates an API key for workspace `ws` on behalf of `caller` (whose bearer secret is
    /// `caller_secret`). With an `Idempotency-Key`, a repeat by the same caller gets the same
    /// answer, secret included: the record keeps the secret sealed under a key derived from
    /// the caller's secret (`ids::seal_secret`), so the database alone cannot reveal it.
    pub async fn create_api_key(
        &self,
        ws: &str,
        req: NewApiKey,
        idem: Option<&str>,
        caller: &Principal,
        caller_secret: &str,
    ) -> Result<CreatedApiKey> {
        let roles = validate::roles(req.roles.clone())?;
        self.require_workspace(ws).await?;
        // Another caller with the same key is another request (its secret cannot open this
        // one's record).
        let idem = idempotency(idem, "api_key_create", &(&caller.key_id, &req))?;
        let fresh = new_secret()?;
        let sealed_secret = match &idem {
            Some(i) => Some(seal_secret(&fresh, caller_secret, &i.doc_id)?),
            None => None,
        };
        let record_id = idem.as_ref().map(|i| i.doc_id.clone());
        let key_hash = secret_hash(&fresh);
        let staged = self.ask(ws, |reply| WsMsg::CreateApiKey { roles, key_hash, sealed_secret, idem, reply }).await?;
        let secret = match (staged.sealed_secret, record_id) {
            (Some(sealed), Some(id)) => open_secret(&sealed, caller_secret, &id)?,
            _ => fresh,
        };
        Ok(CreatedApiKey { key: staged.key, secret })
    }

    /// Revokes API key `key_id` of workspace `ws` (NotFound if it is another workspace's).
    /// Revoking a revoked key is a Conflict.
    pub async fn revoke_api_key(&self, ws: &str, key_id: &str, idem: Option<&str>) -> Result<ApiKeyView> {
        // Checked here so a malformed or foreign id never reaches (or starts) an actor; off the
        // async workers, within the request's bound (`Engine::read`).
        let (owned_ws, owned_id) = (ws.to_owned(), key_id.to_owned());
        let found = self
            .read(move |e| {
                e.shared.store.api_key_by_id(Some(&owned_ws), &owned_id).map_err(not_found_if_invalid("API key"))
            })
            .await?;
        let Some(found) = found else { return Err(EngineError::NotFound { what: "API key" }) };
        let idem = idempotency(idem, "api_key_revoke", &key_id)?;
        let id = key_id.to_owned();
        let answer = self.ask(ws, |reply| WsMsg::RevokeApiKey { id, idem, reply }).await;
        // Whatever the answer (a repeat, a conflict), the key is revoked or about to be: it
        // leaves the cache before anyone hears so.
        self.shared.api_keys.revoked(&found.key_hash);
        answer
    }

    /// Deletes the records of `Idempotency-Key`s past their lifetime; answers how many. Runs
    /// every `idempotency_sweep_interval`. A workspace's records are deleted by its actor (which
    /// checks again, since a key may have been used anew since), the instance's under the lock
    /// keyed workspace creation holds.
    pub async fn sweep_idempotency(&self) -> Result<usize> {
        const PAGE: usize = 1000;
        let s = &self.shared;
        let ttl_ms = s.cfg.idempotency_ttl_ms();
        let mut after: Option<(String, String)> = None;
        let mut deleted = 0;
        loop {
            let (store, from) = (s.store.clone(), after.clone());
            let page = blocking(move || {
                let from = from.as_ref().map(|(w, i)| (w.as_str(), i.as_str()));
                Ok(store.all_docs(DocKind::Idempotency, from, PAGE)?)
            })
            .await?;
            let now = now_ms();
            let mut expired: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            for (ws, id, v) in &page {
                let live = serde_json::from_value::<IdemDoc>(v.clone()).map(|d| d.is_live(now, ttl_ms));
                // A record that does not parse answers nobody: it goes too.
                if !matches!(live, Ok(true)) {
                    expired.entry(ws.clone()).or_default().push(id.clone());
                }
            }
            for (ws, ids) in expired {
                deleted += if ws == INSTANCE_SCOPE {
                    // Looked at again under the lock: the key may have been used anew since.
                    let _one_at_a_time = s.instance_idem.lock().await;
                    let store = s.store.clone();
                    let ops = blocking(move || {
                        let mut ops = Vec::new();
                        for id in ids {
                            let v = store.doc(DocKind::Idempotency, INSTANCE_SCOPE, &id)?;
                            let live = v.and_then(|v| serde_json::from_value::<IdemDoc>(v).ok());
                            if !live.is_some_and(|d| d.is_live(now_ms(), ttl_ms)) {
                                let workspace_id = INSTANCE_SCOPE.to_owned();
                                ops.push(Op::DeleteDoc { kind: DocKind::Idempotency, workspace_id, id });
                            }
                        }
                        Ok(ops)
                    })
                    .await?;
                    let n = ops.len();
                    self.write(ops).await?;
                    n
                } else {
                    // One workspace that cannot answer must not hold up the others.
                    match self.ask(&ws, |reply| WsMsg::SweepIdempotency { ids, reply }).await {
                        Ok(n) => n,
                        // Its owner sweeps it.
                        Err(EngineError::NotOwner { .. }) => 0,
                        Err(e) => {
                            tracing::warn!(workspace = %ws, error = %e, "sweeping Idempotency-Key records failed");
                            0
                        }
                    }
                };
            }
            if page.len() < PAGE {
                s.metrics.idempotency_swept.inc_by(deleted as u64);
                return Ok(deleted);
            }
            after = page.last().map(|(w, i, _)| (w.clone(), i.clone()));
        }
    }

    /// Deletes the confirmations' due-index entries whose nonce expired (no receipt: the
    /// expiry of a nonce is recorded when someone tries to answer it). The index only feeds
    /// `allowly_engine_confirmations_pending`, which skips expired entries anyway: this keeps
    /// it from growing. Entries sort by expiry, so it reads only what it deletes (plus one page).
    async fn prune_confirmation_due(&self) -> Result<()> {
        const PAGE: usize = 256;
        loop {
            let store = self.shared.store.clone();
            let page = blocking(move || {
                Ok(store.docs(DocKind::EscalationDue, crate::actor::CONFIRMATION_DUE_SCOPE, None, PAGE)?)
            })
            .await?;
            let now = now_ms();
            let expired: Vec<Op> = page
                .iter()
                .take_while(|(id, _)| crate::monitor::due_ms(id).is_none_or(|t| t <= now))
                .map(|(id, _)| Op::DeleteDoc {
                    kind: DocKind::EscalationDue,
                    workspace_id: crate::actor::CONFIRMATION_DUE_SCOPE.into(),
                    id: id.clone(),
                })
                .collect();
            let (n, full) = (expired.len(), page.len() == PAGE);
            if n > 0 {
                self.write(expired).await?;
            }
            if n < PAGE || !full {
                return Ok(());
            }
        }
    }

    /// Resolves every escalation past its expiry to deny (receipt, `escalation.resolved`
    /// event), in due order; answers how many. Runs every `escalation_sweep_interval`, so an
    /// escalation expires on time even if nobody reads it. Skipped while the signer is down
    /// (an expiry records a receipt); it catches up afterwards.
    pub async fn expire_due_escalations(&self) -> Result<usize> {
        const PAGE: usize = 256;
        let s = &self.shared;
        self.prune_confirmation_due().await?;
        if !s.is_healthy() {
            return Ok(0);
        }
        let mut expired = 0;
        let mut after: Option<String> = None;
        loop {
            let (store, from) = (s.store.clone(), after.clone());
            let page = blocking(move || {
                Ok(store.docs(DocKind::EscalationDue, crate::actor::DUE_SCOPE, from.as_deref(), PAGE)?)
            })
            .await?;
            let now = now_ms();
            for (id, v) in &page {
                after = Some(id.clone());
                let entry: Option<crate::actor::DueEntry> = serde_json::from_value(v.clone()).ok();
                let Some(entry) = entry.filter(|e| e.id() == *id) else {
                    tracing::warn!(id, "dropping a malformed escalation due entry");
                    self.write(vec![Op::DeleteDoc {
                        kind: DocKind::EscalationDue,
                        workspace_id: crate::actor::DUE_SCOPE.into(),
                        id: id.clone(),
                    }])
                    .await?;
                    continue;
                };
                if entry.expires_at_ms > now {
                    return Ok(expired);
                }
                if s.diverged.contains(&entry.workspace_id) {
                    continue; // it records no receipt until resynced; expired then
                }
                let esc = entry.escalation_id.clone();
                let answer = self.ask(&entry.workspace_id, |reply| WsMsg::ExpireEscalation { id: esc, reply }).await;
                s.watchers.wake(&entry.workspace_id, &entry.escalation_id);
                match answer {
                    Ok(v) if v.status == EscalationStatus::Expired => expired += 1,
                    // Resolved meanwhile (its entry went with the resolution) or gone: the
                    // entry is stale.
                    Ok(_) | Err(EngineError::Refused { .. }) | Err(EngineError::NotFound { .. }) => {
                        self.write(vec![entry.delete_op()]).await?;
                    }
                    // In a cluster: the node that owns the workspace expires it.
                    Err(EngineError::NotOwner { .. }) => {}
                    // Retried next time; one workspace that cannot answer must not hold up
                    // the escalations due after it.
                    Err(e) => {
                        tracing::warn!(workspace = %entry.workspace_id, escalation = %entry.escalation_id,
                            error = %e, "expiring an overdue escalation failed");
                    }
                }
            }
            if page.len() < PAGE {
                return Ok(expired);
            }
        }
    }

    // ---- Workspaces -----------------------------------------------------------------------

    /// Creates a workspace and its signing key (in the signer). With an `Idempotency-Key`, a
    /// repeat gets the first answer (keyed creations are serialised; the key's record is
    /// written with the workspace, under the instance's own record space).
    pub async fn create_workspace(&self, req: NewWorkspace, idem: Option<&str>) -> Result<WorkspaceView> {
        validate::name(&req.name)?;
        validate::scope_rules(&req.scope_rules)?;
        let Some(idem) = idempotency(idem, "workspace_create", &req)? else {
            let (ops, view) = self.new_workspace(req).await?;
            self.write(ops).await?;
            return Ok(view);
        };
        let _one_at_a_time = self.shared.instance_idem.lock().await;
        if let Some(first) = self.instance_replay(&idem).await? {
            return Ok(first);
        }
        let (mut ops, view) = self.new_workspace(req).await?;
        ops.push(instance_idem_op(idem, &view)?);
        self.write(ops).await?;
        Ok(view)
    }

    /// The first answer filed under `idem` in the instance's own scope, if it is still live
    /// (`IdempotencyMismatch` if it answers another request). Call under `instance_idem`.
    pub(crate) async fn instance_replay<T: serde::de::DeserializeOwned>(&self, idem: &Idem) -> Result<Option<T>> {
        let s = &self.shared;
        let store = s.store.clone();
        let doc_id = idem.doc_id.clone();
        let stored = blocking(move || Ok(store.doc(DocKind::Idempotency, INSTANCE_SCOPE, &doc_id)?)).await?;
        let Some(v) = stored else { return Ok(None) };
        let doc: IdemDoc =
            serde_json::from_value(v).map_err(|e| EngineError::Internal(format!("stored idempotent answer: {e}")))?;
        if !doc.is_live(now_ms(), s.cfg.idempotency_ttl_ms()) {
            return Ok(None);
        }
        doc.replay(idem).map(Some)
    }

    /// A new workspace's record (its key made in the signer), not yet written.
    async fn new_workspace(&self, req: NewWorkspace) -> Result<(Vec<Op>, WorkspaceView)> {
        let s = &self.shared;
        let id = new_id("ws_")?;
        let keys = match tokio::time::timeout(s.cfg.signer_timeout, s.signer.create_key(id.clone())).await {
            Err(_) => return Err(EngineError::SignerUnavailable(crate::health::SIGNING_TIMED_OUT.into())),
            Ok(r) => r.map_err(EngineError::from_signer)?,
        };
        // In a cluster the key record goes to the database with the workspace, for whichever
        // node's signer takes the workspace over.
        let key_record = crate::pipeline::key_record_op(&s.services, &id).await?;
        let record = allowly_store::WorkspaceRecord {
            id,
            name: req.name,
            created_at_ms: now_ms(),
            scope_rules: req.scope_rules,
            fail_open: false,
            signing_keys: key_records(&keys),
            rate_limit: None,
        };
        let view = views::workspace(&record)?;
        Ok((std::iter::once(Op::PutWorkspace(record)).chain(key_record).collect(), view))
    }

    pub(crate) fn workspace_record(&self, ws: &str) -> Result<allowly_store::WorkspaceRecord> {
        self.shared
            .store
            .workspace(ws)
            .map_err(not_found_if_invalid("workspace"))?
            .ok_or(EngineError::NotFound { what: "workspace" })
    }

    /// `NotFound` unless workspace `ws` exists, for a write checked before it reaches its actor:
    /// a store read, so off the async workers and within the request's bound (`Engine::read`).
    pub(crate) async fn require_workspace(&self, ws: &str) -> Result<()> {
        let ws = ws.to_owned();
        self.read(move |e| e.workspace_record(&ws).map(|_| ())).await
    }

    /// A workspace.
    pub fn workspace(&self, ws: &str) -> Result<WorkspaceView> {
        views::workspace(&self.workspace_record(ws)?)
    }

    /// Replaces a workspace's scope rules.
    /// Replaces the workspace's scope rules; the change is a receipt in the workspace log, so
    /// it fails closed like every receipt (`SignerUnavailable`, a fault) and answers once the
    /// receipt is durable.
    pub async fn set_scope_rules(&self, ws: &str, req: ScopeRules) -> Result<ScopeRulesChange> {
        validate::scope_rules(&req.scope_rules)?;
        self.fail_closed(ws)?;
        self.ask(ws, |reply| WsMsg::SetScopeRules { rules: req.scope_rules, reply }).await
    }

    /// Sets (or, with `None`, clears back to the instance default) the request rate each of
    /// the workspace's API keys may use. The front end enforces it.
    pub async fn set_rate_limit(&self, ws: &str, req: RateLimitSetting) -> Result<WorkspaceView> {
        if let Some(limit) = &req.rate_limit {
            validate::rate_limit(limit)?;
        }
        self.ask(ws, |reply| WsMsg::SetRateLimit { rate_limit: req.rate_limit, reply }).await
    }

    /// The workspace's public keys (every key it ever signed with, with validity windows).
    /// Public: needs no authentication. NotFound for an unknown workspace.
    pub fn keys(&self, ws: &str) -> Result<KeySet> {
        key_set(ws, &self.workspace_record(ws)?.signing_keys)
    }

    /// Rotates workspace `ws`'s signing key: the signer makes a new key and logs the rotation
    /// as a `key.rotated` receipt at the log's next index, signed by the new key; the old key
    /// stays published, retired, with its `not_after`. Sequenced by the workspace's actor (see
    /// `actor/rotation.rs`). With an `Idempotency-Key`, a repeat gets the first answer.
    pub async fn rotate_workspace_key(&self, ws: &str, idem: Option<&str>) -> Result<KeyRotation> {
        self.require_workspace(ws).await?;
        let idem = idempotency(idem, "workspace_key_rotate", &())?;
        self.fail_closed_unless_keyed(ws, idem.is_some())?;
        // A rotation waits for the pipeline, the signer and two synced writes (see
        // `EngineConfig::commit_timeout`).
        let cfg = &self.shared.cfg;
        let deadline = cfg.rotation_drain_timeout + cfg.signer_timeout + 2 * cfg.commit_timeout;
        self.ask_within(ws, deadline, |reply| WsMsg::RotateKey { idem, reply }).await
    }

    // ---- Authorizations and checks --------------------------------------------------------

    /// Sends a request to the workspace's actor and waits for its answer, at most
    /// `commit_timeout` (see [`Self::ask_within`]).
    pub(crate) async fn ask<T>(&self, ws: &str, make: impl FnOnce(Reply<T>) -> WsMsg) -> Result<T> {
        self.ask_within(ws, self.shared.cfg.commit_timeout, make).await
    }

    /// Sends a request to the workspace's actor and waits for its answer. Starts the actor if
    /// none runs. Refused at once when the workspace's mailbox is full (`Overloaded`) or when
    /// `max_pending_writes` requests are pending for the committer (`StorageSlow` while the
    /// volume is slow, else `Overloaded`). Past `deadline` the answer is `CommitTimeout`: the
    /// actor drops the request undecided if it has not taken it up yet, but one decided
    /// already may still become durable (the client retries with its `Idempotency-Key`).
    pub(crate) async fn ask_within<T>(
        &self,
        ws: &str,
        deadline: Duration,
        make: impl FnOnce(Reply<T>) -> WsMsg,
    ) -> Result<T> {
        let s = &self.shared;
        let Some(admitted) = s.admissions.admit(s.cfg.max_pending_writes) else {
            // Full because the volume is slow: say so (503, nothing written); else it is a
            // burst the committer has not caught up with yet (429).
            let slow = crate::fault::Fault::StorageSlow;
            if s.faults.is_active(slow) {
                s.metrics.fault_refusals.with_label_values(&[slow.code()]).inc();
                let detail = format!("{} writes are pending (max_pending_writes)", s.cfg.max_pending_writes);
                return Err(EngineError::Unavailable { fault: slow, detail });
            }
            s.metrics.overloaded.inc();
            return Err(EngineError::Overloaded);
        };
        // One deadline for the whole request: starting its actor (store reads), the wait in the
        // actor's queue, the actor's reads for it, and the synced write.
        let until = tokio::time::Instant::now() + deadline;
        let (tx, rx) = oneshot::channel();
        let mut msg = make(Reply::new(tx, admitted, until));
        let mut attempts = 0;
        loop {
            let h = self.actor_for(ws, until).await?;
            h.last_used.store(crate::clock::now_ms(), Ordering::Relaxed);
            if h.queued.fetch_add(1, Ordering::AcqRel) >= s.cfg.mailbox_capacity {
                h.queued.fetch_sub(1, Ordering::AcqRel);
                s.metrics.overloaded.inc();
                return Err(EngineError::Overloaded);
            }
            match h.actor.send_message(msg) {
                Ok(()) => break,
                Err(MessagingErr::SendErr(m)) if attempts < 3 => {
                    // The actor stopped (passivated) between lookup and send: start a new one.
                    h.queued.fetch_sub(1, Ordering::AcqRel);
                    s.actors.remove_if(ws, |_, cur| cur.actor.get_id() == h.actor.get_id());
                    attempts += 1;
                    msg = m;
                }
                Err(_) => {
                    h.queued.fetch_sub(1, Ordering::AcqRel);
                    return Err(EngineError::Internal("workspace actor unreachable".into()));
                }
            }
        }
        match tokio::time::timeout_at(until, rx).await {
            Ok(Ok(Err(e))) if crate::ownership::is_fenced(&e) => Err(self.owner_of(ws, until).await),
            Ok(Ok(answer)) => answer,
            // A fenced actor stops without answering what it had not decided yet.
            Ok(Err(_)) if !s.owns(ws) => Err(self.owner_of(ws, until).await),
            Ok(Err(_)) => Err(EngineError::Internal("workspace actor stopped before answering".into())),
            Err(_) => {
                s.metrics.commit_timeouts.inc();
                Err(EngineError::CommitTimeout { waited_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX) })
            }
        }
    }

    /// The running actor of `ws`, started if none runs. Starting one reads the workspace's
    /// record, log position and newest receipt: off the async workers, answered by `until`
    /// (`ReadTimeout` past it, nothing started).
    async fn actor_for(&self, ws: &str, until: tokio::time::Instant) -> Result<WsHandle> {
        let s = &self.shared;
        if let Some(h) = s.actors.get(ws) {
            return Ok(h.clone());
        }
        if s.shutting_down.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        // A workspace another node owns, seen just now: forwarded without a store read.
        if let Some(owner) = s.ownership.as_ref().and_then(|o| o.known_owner(ws)) {
            return Err(owner);
        }
        let locks = s.locks.entry(ws.to_owned()).or_default().clone();
        let _spawning = locks.spawn.lock().await;
        if let Some(h) = s.actors.get(ws) {
            return Ok(h.clone());
        }
        // Waits until a passivated predecessor has finished and let go of the workspace.
        let life = locks.life.clone().lock_owned().await;
        let owned = ws.to_owned();
        let (lease_epoch, record, meta, last_receipt_ms) = s
            .services
            .read_until(until, {
                let engine = self.clone();
                move || {
                    // In a cluster the lease comes first and the state is read after it was
                    // granted: a takeover then reads everything the former owner committed
                    // (its later writes are fenced).
                    let lease_epoch = match &engine.shared.ownership {
                        Some(o) => {
                            // Only an existing workspace is leased (another tenant's id is
                            // still a 404, and no lease row is made for it).
                            engine.workspace_record(&owned)?;
                            Some(o.acquire(engine.shared.store.as_ref(), &owned)?)
                        }
                        None => None,
                    };
                    let record = engine.workspace_record(&owned)?;
                    let meta = engine.shared.store.log_meta(&owned)?.unwrap_or_default();
                    let last = crate::actor::last_receipt_ms(&engine.shared, &owned, meta.next_index);
                    Ok((lease_epoch, record, meta, last))
                }
            })
            .await?;
        let queued = Arc::new(AtomicUsize::new(0));
        let last_used = Arc::new(AtomicU64::new(crate::clock::now_ms()));
        let args = WsArgs {
            shared: s.clone(),
            ws: record,
            next_index: meta.next_index,
            rotation_at: meta.rotation_at,
            rotation_idem: meta.rotation_idempotency,
            last_receipt_ms,
            queued: queued.clone(),
            last_used: last_used.clone(),
            life,
            lease_epoch,
        };
        let (actor, _join) = Actor::spawn(None, WorkspaceActor, args)
            .await
            .map_err(|e| EngineError::Internal(format!("starting workspace actor: {e}")))?;
        let h = WsHandle { actor, queued, last_used };
        s.actors.insert(ws.to_owned(), h.clone());
        Ok(h)
    }

    /// After a write of `ws` was fenced (nothing of the request was written): the node that
    /// owns the workspace now ([`EngineError::NotOwner`], where the server forwards the
    /// request), or, if its lease is free again, a retryable refusal.
    async fn owner_of(&self, ws: &str, until: tokio::time::Instant) -> EngineError {
        let Some(o) = &self.shared.ownership else {
            return EngineError::Internal("a write was fenced outside a cluster".into());
        };
        let owned = ws.to_owned();
        let store = self.shared.store.clone();
        let lease = self.shared.services.read_until(until, move || Ok(store.lease(&owned)?)).await;
        match lease {
            Ok(Some(l)) if o.cfg.node_id != l.node_id => {
                EngineError::NotOwner { node_id: l.node_id, address: l.address }
            }
            Ok(_) => crate::ownership::moved(ws),
            Err(e) => e,
        }
    }

    /// In a cluster: forgets that any workspace is owned by the node at `address` (a request
    /// forwarded there could not even connect: the node is gone). The next request for those
    /// workspaces asks the database, and takes the workspace over if its lease is free.
    pub fn forget_owner(&self, address: &str) {
        if let Some(o) = &self.shared.ownership {
            o.forget_address(address);
        }
    }

    /// In a cluster: makes sure this node owns `ws` for work that must run where the
    /// workspace's decisions are made — a long-poll (only the owner's commits wake it), a
    /// webhook attempt (only the owner delivers) — and keeps the lease renewed until the guard
    /// is dropped. The lease is taken if it is free, as a request would take it; another
    /// node's is [`EngineError::NotOwner`] (the request is forwarded there). `None` in one
    /// process alone: nothing to hold.
    pub(crate) async fn hold_here(&self, ws: &str) -> Result<Option<crate::ownership::Pinned>> {
        let Some(o) = &self.shared.ownership else { return Ok(None) };
        if let Some(owner) = o.known_owner(ws) {
            return Err(owner);
        }
        // Pinned before the lease is taken: the keeper must not release it in between.
        let pin = o.pin(ws);
        if o.epoch(ws).is_none() {
            let owned = ws.to_owned();
            self.read(move |e| match &e.shared.ownership {
                Some(o) => o.acquire(e.shared.store.as_ref(), &owned).map(|_| ()),
                None => Ok(()),
            })
            .await?;
        }
        Ok(Some(pin))
    }

    fn fail_closed(&self, ws: &str) -> Result<()> {
        self.fail_closed_unless_keyed(ws, false)
    }

    /// Refuses new work while shutting down, and fails closed while the signer is down or the
    /// workspace's log has diverged from the signer's — except for a request with an
    /// `Idempotency-Key`, which goes on to its actor: a repeat is answered from the stored
    /// answer, signer or not, and only a first use fails closed there (`WsState::idempotent`).
    fn fail_closed_unless_keyed(&self, ws: &str, keyed: bool) -> Result<()> {
        let s = &self.shared;
        if s.shutting_down.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        if keyed {
            return Ok(());
        }
        s.require_healthy()?;
        s.diverged.require_not(ws, &s.metrics)
    }

    /// Records a user's grant; answers once its `authorization.created` receipt is durable.
    /// With an `Idempotency-Key` (`idem`), a repeat answers the first answer again.
    pub async fn create_authorization(
        &self,
        ws: &str,
        req: NewAuthorization,
        idem: Option<&str>,
    ) -> Result<AuthorizationChange> {
        validate::new_authorization(&req)?;
        let idem = idempotency(idem, "authorization_create", &req)?;
        self.fail_closed_unless_keyed(ws, idem.is_some())?;
        self.ask(ws, |reply| WsMsg::CreateAuthorization { req, idem, reply }).await
    }

    /// An authorization.
    pub fn authorization(&self, ws: &str, id: &str) -> Result<AuthorizationView> {
        let a = self.authorization_record(ws, id)?;
        views::authorization(&a, now_ms())
    }

    /// The workspace's authorizations in id order, filtered. A page scans at most
    /// `MAX_LIST_SCAN` records: with a selective filter it may hold fewer than `limit` items
    /// and still have `has_more` (follow `next_cursor`).
    pub fn authorizations(
        &self,
        ws: &str,
        filter: &AuthorizationFilter,
        starting_after: Option<&str>,
        limit: usize,
    ) -> Result<Page<AuthorizationView>> {
        self.workspace_record(ws)?;
        let limit = limit.clamp(1, 1000);
        let bad_cursor = || EngineError::invalid("starting_after", "not a cursor from this list");
        if starting_after.is_some_and(|c| allowly_receipt::types::validate_id("cursor", c).is_err()) {
            return Err(bad_cursor());
        }
        let now = now_ms();
        let mut after = starting_after.map(str::to_owned);
        let (mut data, mut scanned) = (Vec::new(), 0usize);
        loop {
            let chunk = (limit + 1).max(256);
            let recs = self.shared.store.authorizations(ws, after.as_deref(), chunk)?;
            let end = recs.len() < chunk;
            for r in recs {
                scanned += 1;
                after = Some(r.id.clone());
                if filter.subject.as_ref().is_some_and(|s| *s != r.subject) {
                    continue;
                }
                let v = views::authorization(&r, now)?;
                if filter.status.is_some_and(|s| s != v.status) {
                    continue;
                }
                data.push(v);
                if data.len() > limit {
                    data.truncate(limit);
                    let next_cursor = data.last().map(|v| v.id.clone());
                    return Ok(Page { data, has_more: true, next_cursor });
                }
            }
            if end {
                return Ok(Page { data, has_more: false, next_cursor: None });
            }
            if scanned >= MAX_LIST_SCAN {
                return Ok(Page { data, has_more: true, next_cursor: after });
            }
        }
    }

    fn authorization_record(&self, ws: &str, id: &str) -> Result<allowly_store::AuthorizationRecord> {
        self.shared
            .store
            .authorization(ws, id)
            .map_err(not_found_if_invalid("authorization"))?
            .ok_or(EngineError::NotFound { what: "authorization" })
    }

    /// Revokes an authorization; answers once its revocation receipt is durable. Revoking a
    /// revoked authorization is a Conflict.
    pub async fn revoke_authorization(&self, ws: &str, id: &str, idem: Option<&str>) -> Result<AuthorizationChange> {
        // Checked here so a malformed or foreign id never reaches (or starts) an actor; off the
        // async workers, within the request's bound (`Engine::read`).
        let (owned_ws, owned_id) = (ws.to_owned(), id.to_owned());
        self.read(move |e| e.authorization_record(&owned_ws, &owned_id).map(|_| ())).await?;
        let idem = idempotency(idem, "authorization_revoke", &id)?;
        self.fail_closed_unless_keyed(ws, idem.is_some())?;
        let id = id.to_owned();
        self.ask(ws, |reply| WsMsg::Revoke { id, idem, reply }).await
    }

    /// Decides a check; answers once its receipt is durable. Fails closed with
    /// `SignerUnavailable` while the signer does not answer.
    pub async fn check(&self, ws: &str, req: CheckRequest, idem: Option<&str>) -> Result<CheckOutcome> {
        validate::check(&req)?;
        let idem = idempotency(idem, "check", &req)?;
        self.fail_closed_unless_keyed(ws, idem.is_some())?;
        self.ask(ws, |reply| WsMsg::Check { req, idem, reply }).await
    }

    /// The user's answer to a `confirm` decision: the final decision and its receipt, once
    /// durable. A nonce is answered once: a used or expired one is `Refused`
    /// (`confirmation_used`, `confirmation_expired`) with a receipt of the attempt; an unknown
    /// one (or another workspace's) is `NotFound` without one.
    pub async fn confirm(
        &self,
        ws: &str,
        nonce: &str,
        answer: ConfirmationAnswer,
        idem: Option<&str>,
    ) -> Result<Resolution> {
        validate::answer(&answer)?;
        if allowly_receipt::types::validate_id("nonce", nonce).is_err() {
            return Err(EngineError::NotFound { what: "confirmation" });
        }
        self.require_workspace(ws).await?;
        let idem = idempotency(idem, "confirmation", &(nonce, &answer))?;
        self.fail_closed_unless_keyed(ws, idem.is_some())?;
        let owned = nonce.to_owned();
        let answered = self.ask(ws, |reply| WsMsg::Confirm { nonce: owned, answer, idem, reply }).await;
        // Answered, or found expired and recorded: its long-polls read it again.
        self.shared.watchers.wake(ws, nonce);
        answered
    }

    /// A confirmation or escalation document; a malformed, unknown or foreign id is
    /// `NotFound` (`what`), like every other object (nothing is written).
    fn hitl_doc<D: serde::de::DeserializeOwned>(
        &self,
        kind: DocKind,
        ws: &str,
        id: &str,
        what: &'static str,
    ) -> Result<D> {
        let doc = self.shared.store.doc(kind, ws, id).map_err(|e| match e {
            StoreError::InvalidId { .. } => EngineError::NotFound { what },
            other => EngineError::Store(other),
        })?;
        let v = doc.ok_or(EngineError::NotFound { what })?;
        serde_json::from_value(v).map_err(|e| EngineError::Internal(format!("stored {kind:?} {id}: {e}")))
    }

    /// A confirmation's state (an unknown nonce, or another workspace's, is
    /// `NotFound`).
    pub fn confirmation(&self, ws: &str, nonce: &str) -> Result<ConfirmationView> {
        let doc: crate::actor::ConfirmationDoc = self.hitl_doc(DocKind::Confirmation, ws, nonce, "confirmation")?;
        doc.view(nonce, now_ms())
    }

    /// An escalation. One past its expiry is resolved to deny first (with its receipt).
    pub async fn escalation(&self, ws: &str, id: &str) -> Result<EscalationView> {
        // Off the async workers, within the request's bound (`Engine::read`).
        let (owned_ws, owned_id) = (ws.to_owned(), id.to_owned());
        let doc: crate::actor::EscalationDoc =
            self.read(move |e| e.hitl_doc(DocKind::Escalation, &owned_ws, &owned_id, "escalation")).await?;
        if !doc.is_overdue(now_ms()) {
            return doc.view(id);
        }
        self.fail_closed(ws)?;
        let owned = id.to_owned();
        let expired = self.ask(ws, |reply| WsMsg::ExpireEscalation { id: owned, reply }).await;
        self.shared.watchers.wake(ws, id);
        expired
    }

    /// The approver's answer: resolves a pending escalation once (a second answer is
    /// `Refused` `escalation_already_resolved` and changes nothing; an overdue one is resolved
    /// to deny and `Refused` `escalation_expired` with that receipt).
    pub async fn resolve_escalation(
        &self,
        ws: &str,
        id: &str,
        answer: EscalationAnswer,
        idem: Option<&str>,
    ) -> Result<Resolution> {
        validate::answer(&answer)?;
        if allowly_receipt::types::validate_id("escalation_id", id).is_err() {
            return Err(EngineError::NotFound { what: "escalation" });
        }
        self.require_workspace(ws).await?;
        let idem = idempotency(idem, "escalation_resolve", &(id, &answer))?;
        self.fail_closed_unless_keyed(ws, idem.is_some())?;
        let owned = id.to_owned();
        let resolved = self.ask(ws, |reply| WsMsg::Resolve { id: owned, answer, idem, reply }).await;
        self.shared.watchers.wake(ws, id);
        resolved
    }

    // ---- Receipts and the log -------------------------------------------------------------

    /// The newest stored checkpoint, if any (without cosignatures).
    fn latest(&self, ws: &str) -> Result<Option<(u64, String)>> {
        self.shared.store.latest_checkpoint(ws).map_err(not_found_if_invalid("workspace"))
    }

    /// A stored checkpoint as it is served: with the witnesses' stored cosignatures on it
    /// (none when witnesses are off: then exactly the stored note).
    fn served(&self, ws: &str, size: u64, note: String) -> Result<String> {
        Ok(self.shared.witnessing.cosigned(&*self.shared.store, ws, size, note)?)
    }

    /// The checkpoint receipts are reported signed against, as served: the newest stored one;
    /// with a witness quorum, the newest one cosigned by the quorum (`None` while there is
    /// none: every receipt is pending). Also the newest stored size, to tell a receipt that
    /// waits for the witnesses from one that waits for the signer.
    fn basis(&self, ws: &str) -> Result<(Option<(u64, String)>, u64)> {
        let Some((size, note)) = self.latest(ws)? else { return Ok((None, 0)) };
        let w = &self.shared.witnessing;
        let store = &*self.shared.store;
        let Some(at) = w.witnessed_size(store, ws, size)? else { return Ok((None, size)) };
        let note = match at == size {
            true => note,
            false => store
                .checkpoint(ws, at)?
                .ok_or_else(|| EngineError::Internal(format!("cosigned checkpoint {at} of {ws} is not stored")))?,
        };
        Ok((Some((at, self.served(ws, at, note)?)), size))
    }

    /// The nodes of `ws`, for the proofs of one request: one source for all of them, so the
    /// receipts' leaf hashes it reads for the lowest levels are read once per block of eight.
    fn nodes<'a>(&'a self, ws: &'a str) -> StoredNodes<'a, dyn allowly_store::Store> {
        StoredNodes::new(&*self.shared.store, ws)
    }

    fn proof(nodes: &StoredNodes<'_, dyn allowly_store::Store>, index: u64, size: u64) -> Result<Vec<merkle::Hash>> {
        merkle::inclusion_proof(nodes, index, size).map_err(|e| match nodes.take_error() {
            Some(se) => EngineError::Store(se),
            None => EngineError::Internal(format!("inclusion proof of {index} in {size}: {e}")),
        })
    }

    /// A stored receipt's envelope: signed against `latest` when it is covered by it (its
    /// proof from `nodes`, which are its workspace's).
    fn view(
        nodes: &StoredNodes<'_, dyn allowly_store::Store>,
        r: &ReceiptRecord,
        latest: Option<&(u64, String)>,
    ) -> Result<ReceiptView> {
        // Signed iff the newest checkpoint covers its leaf (nothing in the receipt records it).
        match latest {
            Some((size, note)) if r.log_index < *size => {
                Ok(ReceiptView::Signed(signed_envelope(r, Self::proof(nodes, r.log_index, *size)?, note.clone())?))
            }
            _ => Ok(ReceiptView::Pending(pending_envelope(r)?)),
        }
    }

    /// A receipt: signed (with a proof against the newest checkpoint) or still pending.
    pub fn receipt(&self, ws: &str, id: &str) -> Result<ReceiptView> {
        Ok(self.receipt_with_reason(ws, id)?.0)
    }

    /// [`Engine::receipt`], and why it is pending if it is pending only because the witness
    /// quorum has not cosigned a checkpoint covering it yet (`witness_quorum`; its checkpoint
    /// is signed and stored).
    pub fn receipt_with_reason(&self, ws: &str, id: &str) -> Result<(ReceiptView, Option<&'static str>)> {
        // The id names the log index (the store's key); the stored receipt must have this id.
        let not_found = EngineError::NotFound { what: "receipt" };
        let Some(index) = crate::ids::receipt_index(id) else { return Err(not_found) };
        let r = self
            .shared
            .store
            .receipt_at(ws, index)
            .map_err(not_found_if_invalid("receipt"))?
            .filter(|r| r.id == id)
            .ok_or(not_found)?;
        let (basis, stored) = self.basis(ws)?;
        let view = Self::view(&self.nodes(ws), &r, basis.as_ref())?;
        // Pending below the stored size: its checkpoint waits for the quorum (without
        // witnesses the basis is the newest checkpoint, and nothing below it is pending).
        let reason = match &view {
            ReceiptView::Pending(p) if p.log_index < stored => Some(WITNESS_PENDING_REASON),
            _ => None,
        };
        Ok((view, reason))
    }

    /// An authorization's trail in `seq` order. `starting_after` is a cursor from a previous
    /// page; `limit` is clamped to 1..=1000.
    pub fn trail(
        &self,
        ws: &str,
        authorization_id: &str,
        starting_after: Option<&str>,
        limit: usize,
    ) -> Result<Page<ReceiptView>> {
        self.authorization_record(ws, authorization_id)?;
        let after = starting_after
            .map(|c| {
                c.parse::<u64>().map_err(|_| EngineError::invalid("starting_after", "not a cursor from this list"))
            })
            .transpose()?;
        let limit = limit.clamp(1, 1000);
        let (latest, _) = self.basis(ws)?;
        let mut recs = self.shared.store.trail(ws, authorization_id, after, limit + 1)?;
        let has_more = recs.len() > limit;
        recs.truncate(limit);
        let next_cursor = if has_more { recs.last().and_then(|r| r.seq).map(|s| s.to_string()) } else { None };
        let nodes = self.nodes(ws);
        let data = recs.iter().map(|r| Self::view(&nodes, r, latest.as_ref())).collect::<Result<Vec<_>>>()?;
        Ok(Page { data, has_more, next_cursor })
    }

    /// The newest signed checkpoint (NotFound while nothing is signed).
    pub fn latest_checkpoint(&self, ws: &str) -> Result<CheckpointView> {
        self.workspace_record(ws)?;
        let (size, checkpoint) = self.latest(ws)?.ok_or(EngineError::NotFound { what: "checkpoint" })?;
        let checkpoint = self.served(ws, size, checkpoint)?;
        let w = &self.shared.witnessing;
        let witness = match w.enabled() {
            false => None,
            true => Some(WitnessStatus {
                quorum: w.quorum(),
                witnessed_size: w.witnessed_size(&*self.shared.store, ws, size)?,
            }),
        };
        Ok(CheckpointView { workspace_id: ws.to_owned(), size, checkpoint, witness })
    }

    /// A stored checkpoint as served (the newest if `size` is `None`).
    fn checkpoint_of(&self, ws: &str, size: Option<u64>) -> Result<(u64, String)> {
        self.workspace_record(ws)?;
        let (n, note) = match size {
            None => self.latest(ws)?.ok_or(EngineError::NotFound { what: "checkpoint" })?,
            Some(n) => {
                let note = self.shared.store.checkpoint(ws, n)?.ok_or(EngineError::NotFound { what: "checkpoint" })?;
                (n, note)
            }
        };
        Ok((n, self.served(ws, n, note)?))
    }

    /// Inclusion proof of leaf `log_index` in the tree of `tree_size` leaves (default: the
    /// newest checkpoint); `tree_size` must be the size of a stored checkpoint.
    pub fn inclusion_proof(&self, ws: &str, log_index: u64, tree_size: Option<u64>) -> Result<InclusionProofView> {
        let (size, checkpoint) = self.checkpoint_of(ws, tree_size)?;
        if log_index >= size {
            return Err(EngineError::invalid("log_index", format!("must be below the tree size {size}")));
        }
        let r = self.shared.store.receipt_at(ws, log_index)?.ok_or(EngineError::NotFound { what: "leaf" })?;
        let proof = Self::proof(&self.nodes(ws), log_index, size)?;
        Ok(InclusionProofView {
            log_index,
            tree_size: size,
            leaf_hash: HexHash(r.leaf),
            proof: proof.into_iter().map(HexHash).collect(),
            checkpoint,
        })
    }

    /// Consistency proof from `old_size` to `new_size` (default: the newest checkpoint); both
    /// must be sizes of stored checkpoints.
    pub fn consistency_proof(&self, ws: &str, old_size: u64, new_size: Option<u64>) -> Result<ConsistencyProofView> {
        let (new, new_checkpoint) = self.checkpoint_of(ws, new_size)?;
        if old_size == 0 || old_size > new {
            return Err(EngineError::invalid("old_size", format!("must be in 1..={new}")));
        }
        let (_, old_checkpoint) = self.checkpoint_of(ws, Some(old_size))?;
        let nodes = StoredNodes::new(&*self.shared.store, ws);
        let proof = merkle::consistency_proof(&nodes, old_size, new).map_err(|e| match nodes.take_error() {
            Some(se) => EngineError::Store(se),
            None => EngineError::Internal(format!("consistency proof {old_size}..{new}: {e}")),
        })?;
        Ok(ConsistencyProofView {
            old_size,
            new_size: new,
            proof: proof.into_iter().map(HexHash).collect(),
            old_checkpoint,
            new_checkpoint,
        })
    }

    /// An evidence bundle (JSON Lines, `allowly-verify bundle` format): the workspace's keys,
    /// the newest checkpoint, and every receipt in scope with a proof against it (receipts not
    /// yet signed are included as pending).
    pub fn export(&self, ws: &str, scope: ExportScope) -> Result<Vec<u8>> {
        let record = self.workspace_record(ws)?;
        let (latest, _) = self.basis(ws)?;
        let store = &self.shared.store;
        let (scope, recs) = match scope {
            ExportScope::Authorization(id) => {
                let a = self.authorization_record(ws, &id)?;
                if a.next_seq > MAX_EXPORT_RECEIPTS {
                    return Err(EngineError::invalid(
                        "authorization_id",
                        "trail too long for one export; export log ranges",
                    ));
                }
                let recs = store.trail(ws, &id, None, a.next_seq as usize)?;
                let last_seq = recs.last().and_then(|r| r.seq).unwrap_or(0);
                (bundle::Scope::Authorization { authorization_id: id, last_seq }, recs)
            }
            ExportScope::Log { from, to } => {
                let next = store.log_meta(ws)?.unwrap_or_default().next_index;
                if from >= to || to > next {
                    return Err(EngineError::invalid("to", format!("need from < to <= {next} (the log size)")));
                }
                if to - from > MAX_EXPORT_RECEIPTS {
                    return Err(EngineError::invalid(
                        "to",
                        format!("at most {MAX_EXPORT_RECEIPTS} receipts per export"),
                    ));
                }
                (bundle::Scope::Log { from, to }, store.receipts_in_range(ws, from, to, (to - from) as usize)?)
            }
        };
        let nodes = self.nodes(ws);
        let receipts = recs
            .iter()
            .map(|r| {
                Self::view(&nodes, r, latest.as_ref())?.into_any().map_err(|e| EngineError::Internal(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let b = Bundle {
            header: Some(Header {
                v: bundle::BUNDLE_VERSION,
                workspace_id: ws.to_owned(),
                scope,
                created_at: ts(now_ms())?,
            }),
            keys: vec![key_set(ws, &record.signing_keys)?],
            checkpoints: latest.map(|(_, note)| vec![note]).unwrap_or_default(),
            consistency: Vec::new(),
            receipts,
        };
        b.to_jsonl().map_err(|e| EngineError::Internal(format!("bundle: {e}")))
    }
}

/// Why a receipt whose checkpoint is stored is still pending: the witness quorum has not
/// cosigned a checkpoint that covers it (`Allowly-Pending-Reason` on `GET /v1/receipts/{id}`).
pub const WITNESS_PENDING_REASON: &str = "witness_quorum";

/// Most bytes of an `Idempotency-Key` header value.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Files an `Idempotency-Key` for the actor: the key's record id is a hash of the key (any
/// printable text fits the id alphabet that way), and the request hash covers the route and
/// the parsed request, so "the same body" means the same request, whatever its whitespace.
/// The op that files `answer` under `idem` in the instance's own scope (written with the
/// change it answers).
pub(crate) fn instance_idem_op<T: serde::Serialize>(idem: Idem, answer: &T) -> Result<Op> {
    let doc = serde_json::to_value(IdemDoc::new(&idem, now_ms(), answer)?)
        .map_err(|e| EngineError::Internal(e.to_string()))?;
    Ok(Op::PutDoc { kind: DocKind::Idempotency, workspace_id: INSTANCE_SCOPE.into(), id: idem.doc_id, doc })
}

pub(crate) fn idempotency<R: serde::Serialize + ?Sized>(
    key: Option<&str>,
    route: &str,
    req: &R,
) -> Result<Option<Idem>> {
    let Some(key) = key else { return Ok(None) };
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN || !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(EngineError::invalid(
            "Idempotency-Key",
            format!("must be 1..={MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters without spaces"),
        ));
    }
    let body = serde_json::to_vec(req).map_err(|e| EngineError::Internal(e.to_string()))?;
    let mut h = Sha256::new();
    h.update(route.as_bytes());
    h.update([0]);
    h.update(&body);
    Ok(Some(Idem {
        doc_id: format!("ik_{}", hex::encode(Sha256::digest(key.as_bytes()))),
        request_hash: h.finalize().into(),
    }))
}

/// Runs `work` every `every` (the first time one interval after the start). Ends with the
/// engine or at shutdown; a failure is logged and retried next time.
async fn periodic<F, Fut>(shared: std::sync::Weak<Shared>, every: Duration, what: &'static str, work: F)
where
    F: Fn(Engine) -> Fut,
    Fut: std::future::Future<Output = Result<usize>>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        if shared.shutting_down.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = work(Engine { shared }).await {
            tracing::warn!(error = %e, "housekeeping ({what}) failed; retried next time");
        }
    }
}

/// Waits for `tick`'s next tick; then the engine, unless it is gone or shutting down (the
/// periodic tasks end then).
async fn next_tick(tick: &mut tokio::time::Interval, shared: &std::sync::Weak<Shared>) -> Option<Arc<Shared>> {
    tick.tick().await;
    let s = shared.upgrade()?;
    (!s.shutting_down.load(Ordering::Acquire)).then_some(s)
}

/// Once a second: forgets the locks of workspaces nobody uses any more (so the lock table
/// follows the live workspaces, not every workspace ever seen), and while resident memory is
/// above `memory_high_water`, stops the least recently used quarter of the actors idle for
/// `pressure_min_idle` (their cached authorizations go with them). Ends with the engine.
async fn pressure_loop(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(PRESSURE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while let Some(s) = next_tick(&mut tick, &shared).await {
        // A lock entry is in use while anyone holds it: `actor_for` (it clones the entry under
        // the map's shard lock, which `retain` holds too) or a running or stopping actor (its
        // life guard). Removing it then could let two sequencers run for one workspace.
        s.locks.retain(|_, l| Arc::strong_count(l) > 1 || Arc::strong_count(&l.life) > 1);
        let high = s.cfg.memory_high_water;
        if high == 0 || crate::clock::resident_bytes().is_none_or(|rss| rss <= high) {
            continue;
        }
        let min_idle = s.cfg.pressure_min_idle;
        let idle_since = crate::clock::now_ms().saturating_sub(min_idle.as_millis() as u64);
        let mut idle: Vec<(u64, ActorRef<WsMsg>)> = s
            .actors
            .iter()
            .map(|e| (e.last_used.load(Ordering::Relaxed), e.actor.clone()))
            .filter(|(used, _)| *used <= idle_since)
            .collect();
        idle.sort_unstable_by_key(|(used, _)| *used);
        // A quarter per second (memory falls only as stopped actors let go), and never a burst
        // of restarts for the store to absorb.
        let n = idle.len().div_ceil(4).min(MAX_PRESSURE_STOPS);
        for (_, actor) in idle.into_iter().take(n) {
            // The actor checks its own idleness again: a request may have arrived meanwhile.
            let _ = actor.send_message(WsMsg::Passivate { min_idle });
        }
    }
}

/// In a cluster, the lease keeper: every third of the lease TTL it renews this node's
/// membership and the lease of every workspace with an actor or a signing task here, and
/// releases the others (another node may take them at once). A renewal that is fenced means
/// another node took the workspace over: forgotten here; the actor and the signing task stop at
/// their next write, which is fenced too. A renewal that fails otherwise (the database
/// unreachable) is retried next time: the lease may lapse meanwhile, which is safe (writes are
/// fenced by epoch, not by time) and only lets another node take the workspace over.
async fn lease_loop(shared: std::sync::Weak<Shared>) {
    let Some(period) = shared.upgrade().and_then(|s| s.ownership.as_ref().map(|o| o.period())) else { return };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while let Some(s) = next_tick(&mut tick, &shared).await {
        let Some(o) = &s.ownership else { return };
        let now = std::time::Instant::now();
        let (used, idle): (Vec<_>, Vec<_>) = o.snapshot().into_iter().partition(|(ws, h)| {
            s.actors.contains_key(ws)
                || s.pipelines.is_running(ws)
                || o.is_pinned(ws)
                // Just granted (an actor may be starting): kept until the next round.
                || now.saturating_duration_since(h.since) < period
        });
        let keep = s.clone();
        let kept = blocking(move || {
            let s = keep;
            let Some(o) = &s.ownership else { return Ok(()) };
            if let Err(e) = s.store.heartbeat(&o.cfg.node_id, &o.cfg.address, o.cfg.lease_ttl) {
                tracing::warn!(error = %e, "cannot renew this node's membership");
            }
            o.renew(s.store.as_ref(), &used);
            o.release(s.store.as_ref(), &idle);
            Ok(())
        });
        let _ = kept.await;
    }
}

/// At shutdown, after the actors stopped and the pipelines signed what they could: lets every
/// lease this node holds expire now, so the other nodes take its workspaces over at once
/// rather than after the TTL.
async fn release_leases(s: &Arc<Shared>) {
    let Some(o) = &s.ownership else { return };
    let held = o.snapshot();
    let n = held.len();
    let keep = s.clone();
    let released = blocking(move || {
        let Some(o) = &keep.ownership else { return Ok(()) };
        o.release(keep.store.as_ref(), &held);
        Ok(())
    });
    let _ = released.await;
    tracing::info!(workspaces = n, "released this node's workspace leases");
}

/// Pings the signer now and then so `/readyz` and fail-closed follow it even when idle. Ends
/// with the engine. After a failed signing exchange a pong counts only once no receipt of a
/// workspace that is not diverged waits to be signed (the backlog the `signing_backlog` fault
/// measures): until then the pipeline's own exchanges decide (`Health::pong`).
async fn probe_loop(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(s) = shared.upgrade() else { return };
        s.probe_signer(|| s.pipelines.backlog(|ws| s.diverged.contains(ws)).oldest.is_none()).await;
    }
}
