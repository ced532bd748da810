//! The connection threads, and the one way a caller reaches them.
//!
//! Callers are synchronous and may be anywhere: a std thread, tokio's blocking pool, or a tokio
//! async worker (where a client that blocks on a runtime of its own would panic). So no caller
//! runs database code: [`Pool::call`] puts a job into one bounded queue and blocks on the job's
//! answer. Each of [`PgOptions::connections`] threads owns a current-thread tokio runtime and at
//! most one `tokio-postgres` connection ([`Conn`]), opened on first use and dropped when it
//! broke or a deadline passed (the next job opens a new one). Every wait is bounded by the
//! call's deadline: the queue (a full queue is back pressure until the deadline, then an error),
//! connecting, every statement (`timeout_at`, which drops the connection mid-statement), and
//! the caller's wait for the answer. A hung database therefore ends in errors, not in a hang.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use allowly_store::{EngineStats, Result, StoreError};
use crossbeam_channel::{RecvTimeoutError, SendTimeoutError, Sender};
use tokio_postgres::Client;

use crate::error::Failure;
use crate::schema::{self, Stmts};
use crate::tls::Tls;
use crate::PgOptions;

/// [`PgOptions::test_hook`], as a checked write's transaction calls it.
#[cfg(feature = "test-cluster")]
pub(crate) type Hook = Option<crate::TestHook>;

/// No hooks in a build without the `test-cluster` feature.
#[cfg(not(feature = "test-cluster"))]
pub(crate) struct Hook;

/// Work for a connection thread. It answers through a channel of its own.
pub(crate) type Job = Box<dyn FnOnce(&mut Conn) + Send>;

/// How long past a call's deadline its caller still waits for the answer: the connection thread
/// enforces the deadline itself, this only covers the hand-over.
const GRACE: Duration = Duration::from_millis(500);

/// The connection threads and their queue.
pub(crate) struct Pool {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    timeout: Duration,
    gauges: Arc<Gauges>,
}

/// What the pool is doing, for `/metrics` ([`Pool::stats`]).
#[derive(Debug, Default)]
struct Gauges {
    /// Connections open now (each [`Live`] counts itself while it exists).
    open: AtomicU64,
    /// Connection threads running a job now.
    busy: AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("threads", &self.threads.len()).field("timeout", &self.timeout).finish()
    }
}

/// What every connection thread shares.
struct Shared {
    config: tokio_postgres::Config,
    tls: Tls,
    opts: PgOptions,
    gauges: Arc<Gauges>,
}

impl Pool {
    pub(crate) fn start(mut config: tokio_postgres::Config, tls: Tls, opts: &PgOptions) -> Result<Self> {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(opts.connect_timeout);
        }
        let (tx, rx) = crossbeam_channel::bounded::<Job>(opts.queue.max(1));
        let gauges = Arc::new(Gauges::default());
        let shared = Arc::new(Shared { config, tls, opts: opts.clone(), gauges: gauges.clone() });
        let mut threads = Vec::new();
        for i in 0..opts.connections.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| StoreError::Engine(format!("postgres: starting a connection thread's runtime: {e}")))?;
            let (rx, shared) = (rx.clone(), shared.clone());
            let thread = std::thread::Builder::new()
                .name(format!("allowly-pg-{i}"))
                .spawn(move || {
                    let mut conn = Conn { rt, shared, live: None };
                    // Ends when the store is dropped (every sender gone) and the queue is empty.
                    for job in rx {
                        conn.shared.gauges.busy.fetch_add(1, Ordering::Relaxed);
                        job(&mut conn);
                        conn.shared.gauges.busy.fetch_sub(1, Ordering::Relaxed);
                    }
                })
                .map_err(|e| StoreError::Engine(format!("postgres: starting a connection thread: {e}")))?;
            threads.push(thread);
        }
        Ok(Self { jobs: Some(tx), threads, timeout: opts.timeout, gauges })
    }

    /// Connections open and busy, and calls queued, now: the store's figures for `/metrics`
    /// (the database's own are its monitoring's to show).
    pub(crate) fn stats(&self) -> EngineStats {
        let mut stats = EngineStats::default();
        stats.connections_open = Some(self.gauges.open.load(Ordering::Relaxed));
        stats.connections_busy = Some(self.gauges.busy.load(Ordering::Relaxed));
        stats.calls_queued = Some(self.jobs.as_ref().map_or(0, |j| j.len() as u64));
        stats
    }

    /// The deadline of a call starting now.
    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// Queues `job`, waiting for room until `deadline`.
    pub(crate) fn submit(&self, job: Job, deadline: Instant) -> Result<()> {
        let jobs = self.jobs.as_ref().ok_or_else(|| StoreError::Engine("postgres: the store is closed".into()))?;
        match jobs.send_timeout(job, deadline.saturating_duration_since(Instant::now())) {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Timeout(_)) => Err(StoreError::Unavailable(format!(
                "postgres: every connection stayed busy and the queue full for {:?}",
                self.timeout
            ))),
            Err(SendTimeoutError::Disconnected(_)) => {
                Err(StoreError::Engine("postgres: the connection threads have stopped".into()))
            }
        }
    }

    /// Runs `f` on a connection thread, within this call's deadline, and returns its answer.
    /// `f` is not run at all if its deadline passed while it waited in the queue.
    pub(crate) fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Conn, Instant) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let deadline = self.deadline();
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.submit(
            Box::new(move |conn| {
                if Instant::now() < deadline {
                    // The caller may have given up: nobody to tell then.
                    let _ = tx.send(f(conn, deadline));
                }
            }),
            deadline,
        )?;
        answer(&rx, deadline)
    }
}

/// Waits for a job's answer until shortly after its deadline.
pub(crate) fn answer<T>(rx: &crossbeam_channel::Receiver<Result<T>>, deadline: Instant) -> Result<T> {
    match rx.recv_timeout((deadline + GRACE).saturating_duration_since(Instant::now())) {
        Ok(r) => r,
        Err(RecvTimeoutError::Timeout) => {
            Err(StoreError::Unavailable("postgres: no answer from the connection thread before the deadline".into()))
        }
        Err(RecvTimeoutError::Disconnected) => Err(StoreError::Unavailable(
            "postgres: the call was dropped unanswered (its deadline passed in the queue)".into(),
        )),
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the queue ends every thread once the jobs already queued are done (each
        // bounded by its deadline); joined so that their connections are closed when the store
        // is gone.
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One open connection and its prepared statements.
pub(crate) struct Live {
    pub client: Client,
    pub stmts: Stmts,
    /// Drives the connection's socket (whenever the thread's runtime runs).
    task: tokio::task::JoinHandle<()>,
    /// The pool's gauges, where this connection counts itself as open while it exists.
    gauges: Arc<Gauges>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.task.abort();
        self.gauges.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a job's attempts may recover from a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A statement or transaction of its own: open a connection if there is none, and run it
    /// again after a serialization failure (it had no effect).
    Own,
    /// A statement inside a transaction this thread holds open: no new connection (it would
    /// not be inside the transaction), no retry (the transaction is aborted).
    InTransaction,
}

/// A connection thread's state.
pub(crate) struct Conn {
    rt: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    live: Option<Rc<Live>>,
}

/// A future borrowing the job's data, run on the thread's runtime.
pub(crate) type Attempt<'b, T> = Pin<Box<dyn Future<Output = std::result::Result<T, Failure>> + 'b>>;

impl Conn {
    /// [`PgOptions::timeout`].
    pub(crate) fn timeout(&self) -> Duration {
        self.shared.opts.timeout
    }

    /// [`PgOptions::async_buffered_commits`].
    pub(crate) fn async_buffered_commits(&self) -> bool {
        self.shared.opts.async_buffered_commits
    }

    /// [`PgOptions::test_hook`].
    #[cfg(feature = "test-cluster")]
    pub(crate) fn test_hook(&self) -> Hook {
        self.shared.opts.test_hook.clone()
    }

    /// No hooks in a build without the `test-cluster` feature.
    #[cfg(not(feature = "test-cluster"))]
    pub(crate) fn test_hook(&self) -> Hook {
        Hook
    }

    /// Runs `op` on this thread's connection before `deadline`: opens the connection if needed
    /// ([`Mode::Own`]), drops it after a timeout or when it broke, and runs `op` again after a
    /// serialization failure up to [`PgOptions::serialization_retries`] times. `what` names the
    /// job in errors.
    pub(crate) fn attempt<'b, T>(
        &mut self,
        what: &str,
        deadline: Instant,
        mode: Mode,
        op: impl Fn(Rc<Live>) -> Attempt<'b, T>,
    ) -> Result<T> {
        let mut retries = 0;
        loop {
            let live = match (&self.live, mode) {
                (Some(live), _) => live.clone(),
                (None, Mode::InTransaction) => {
                    return Err(StoreError::Unavailable(format!(
                        "postgres: {what}: the transaction's connection was lost"
                    )))
                }
                (None, Mode::Own) => {
                    let shared = self.shared.clone();
                    let tls = &shared.tls;
                    self.connect(deadline).map_err(|f| f.into_store(&format!("{what}, connecting ({tls})")))?
                }
            };
            let failure = match run(&self.rt, deadline, op(live)) {
                Ok(v) => return Ok(v),
                Err(f) => f,
            };
            if matches!(failure, Failure::TimedOut) || self.live.as_ref().is_some_and(|l| l.client.is_closed()) {
                // Mid-statement or broken: the protocol state is unknown, so the connection goes.
                self.live = None;
            }
            if mode == Mode::Own
                && failure.is_retryable()
                && retries < self.shared.opts.serialization_retries
                && Instant::now() < deadline
            {
                retries += 1;
                backoff(retries, deadline);
                continue;
            }
            return Err(failure.into_store(what));
        }
    }

    /// Opens a connection and prepares it (schema version, settings, statements).
    fn connect(&mut self, deadline: Instant) -> std::result::Result<Rc<Live>, Failure> {
        let shared = self.shared.clone();
        let (client, task) = self.open_raw(deadline)?;
        let stmts = run(&self.rt, deadline, Box::pin(async { schema::prepare(&client, &shared.opts).await }))?;
        shared.gauges.open.fetch_add(1, Ordering::Relaxed);
        let live = Rc::new(Live { client, stmts, task, gauges: shared.gauges.clone() });
        self.live = Some(live.clone());
        Ok(live)
    }

    /// A connection without statements (for creating the schema), driven by this thread.
    fn open_raw(&mut self, deadline: Instant) -> std::result::Result<(Client, tokio::task::JoinHandle<()>), Failure> {
        let (config, tls) = (self.shared.config.clone(), self.shared.tls.clone());
        let (client, connection) =
            run(&self.rt, deadline, Box::pin(async move { config.connect(tls).await.map_err(Failure::Connect) }))?;
        let task = self.rt.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres connection ended");
            }
        });
        Ok((client, task))
    }

    /// Creates the schema if absent, on a connection of its own (closed after), retrying a race
    /// with another store doing the same.
    pub(crate) fn ensure_schema(&mut self, deadline: Instant) -> Result<()> {
        let mut retries = 0;
        loop {
            let result = self.open_raw(deadline).and_then(|(client, _task)| {
                run(&self.rt, deadline, Box::pin(async move { schema::ensure(&client).await }))
            });
            match result {
                Ok(()) => return Ok(()),
                Err(f) if f.is_retryable_ddl() && retries < self.shared.opts.serialization_retries => {
                    retries += 1;
                    backoff(retries, deadline);
                }
                Err(f) => return Err(f.into_store(&format!("creating the schema ({})", self.shared.tls))),
            }
        }
    }
}

/// Runs `fut` on `rt` until it ends or `deadline` passes.
fn run<T>(rt: &tokio::runtime::Runtime, deadline: Instant, fut: Attempt<'_, T>) -> std::result::Result<T, Failure> {
    // The timer is made inside the runtime (it needs its time driver).
    rt.block_on(async move {
        tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), fut).await.unwrap_or(Err(Failure::TimedOut))
    })
}

/// Waits before a retry: 1, 2, 4 … ms, at most 100 ms, never past `deadline`, with the
/// sub-millisecond part of the clock as jitter so that two conflicting writers drift apart.
fn backoff(retry: u32, deadline: Instant) {
    let base = Duration::from_millis(1u64 << retry.min(7)).min(Duration::from_millis(100));
    let jitter = Duration::from_nanos(u64::from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos()) % 1_000_000,
    ));
    std::thread::sleep((base + jitter).min(deadline.saturating_duration_since(Instant::now())));
}
