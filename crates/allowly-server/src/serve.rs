//! `allowly serve` from start to exit: data directory, store, signer, engine, webhook worker,
//! admin token, HTTP, and the shutdown order (stop accepting → drain requests → engine → webhook
//! worker → signer). The engine stops before the worker so that what it still signs is
//! enqueued; the worker lets attempts in flight finish (bounded) and leaves everything else in
//! the outbox for the next start.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use allowly_engine::{Engine, EngineConfig};
use allowly_signer_proto::client::{ClientOptions, SignerClient};
use allowly_store::Store;
use allowly_store_postgres::{PgOptions, PgStore};
use allowly_store_rocks::{RocksOptions, RocksStore};
use tokio::net::TcpListener;

use crate::config::{ServerConfig, SignerMode, StoreConfig};
use crate::error::Error;
use crate::http::App;
use crate::isolation::KeyIsolation;
use crate::layout::{ADMIN_TOKEN_FILE, DB_DIR, RUN_DIR, SIGNER_SOCKET};
use crate::signer_child::{self, create_private_dir, EmbeddedSigner};

/// Bound on draining the requests in flight at shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// What [`prepare`] did before the runtime started.
#[derive(Debug)]
pub struct Prepared {
    /// What this instance promises about its keys.
    pub isolation: KeyIsolation,
    /// The data directory, absolute (for messages).
    pub data_dir: PathBuf,
    /// The path files are opened under: `data_dir`, or `.` once the process works inside it
    /// (isolated: its parents need not be searchable by the front end's user).
    pub open_dir: PathBuf,
    /// Isolated: the listener bound as root, and the keeper of the signer.
    isolated: Option<(std::net::TcpListener, signer_child::Keeper)>,
    /// The listener's TLS certificate and key, read here: as root when started as root, so the
    /// key file may be root's alone (a reload on SIGHUP reads as the front end's user).
    tls: Option<ListenerTls>,
}

/// The start-up steps that must run before the runtime has threads: the data directory, and,
/// started as root with the embedded signer, everything of [`crate::isolation`] up to and
/// including the privilege drop.
pub fn prepare(cfg: &ServerConfig) -> Result<Prepared, Error> {
    create_private_dir(&cfg.data_dir).map_err(Error::signer)?;
    let data_dir = std::fs::canonicalize(&cfg.data_dir).map_err(io(format!("resolving {}", cfg.data_dir.display())))?;
    let root = rustix::process::geteuid().is_root();
    // A missing or wrong file fails the start here, naming it, with nothing started.
    let tls = match &cfg.tls {
        Some(files) => {
            let identity = allowly_tls::listener::ServerIdentity::load(&files.cert, &files.key)
                .map_err(|e| Error::Tls(e.to_string()))?;
            let config = identity.server_config().map_err(|e| Error::Tls(e.to_string()))?;
            Some((identity, config))
        }
        None => None,
    };
    let (bin, keystore) = match &cfg.signer {
        SignerMode::External { .. } => {
            let isolation = KeyIsolation::External;
            return Ok(Prepared { isolation, open_dir: data_dir.clone(), data_dir, isolated: None, tls });
        }
        SignerMode::Embedded { .. } if !root => {
            let isolation = KeyIsolation::SameUid;
            return Ok(Prepared { isolation, open_dir: data_dir.clone(), data_dir, isolated: None, tls });
        }
        SignerMode::Embedded { bin, keystore } => (bin, keystore),
    };
    let acc = crate::isolation::accounts(&cfg.users).map_err(Error::isolation)?;
    crate::isolation::take_over(&data_dir, &acc).map_err(Error::isolation)?;
    // Bound as root (a port below 1024 works), before anything is started.
    let listener = std::net::TcpListener::bind(cfg.listen).map_err(io(format!("listening on {}", cfg.listen)))?;
    listener.set_nonblocking(true).map_err(io("listener"))?;
    let bin = signer_child::find_binary(bin.clone()).map_err(Error::signer)?;
    let bin = std::fs::canonicalize(&bin).map_err(io(format!("resolving {}", bin.display())))?;
    let keeper = signer_child::Keeper::start(&bin, &data_dir, &acc, keystore).map_err(Error::signer)?;
    std::env::set_current_dir(&data_dir).map_err(io(format!("entering {}", data_dir.display())))?;
    crate::isolation::drop_privileges(acc.front).map_err(Error::isolation)?;
    tracing::info!(
        user = %cfg.users.user,
        uid = acc.front.uid,
        signer_user = %cfg.users.signer_user,
        signer_uid = acc.signer.uid,
        "keys isolated: the signer runs as its own user; this process dropped root"
    );
    Ok(Prepared {
        isolation: KeyIsolation::SeparateUsers,
        data_dir,
        open_dir: PathBuf::from("."),
        isolated: Some((listener, keeper)),
        tls,
    })
}

/// Runs the service until SIGTERM or SIGINT.
pub async fn run(cfg: ServerConfig, prepared: Prepared) -> Result<(), Error> {
    // Installed first, so a signal during start-up still shuts down in order.
    let shutdown = shutdown_signal().map_err(io("installing signal handlers"))?;
    let Prepared { isolation, data_dir: shown_dir, open_dir: data_dir, isolated, tls } = prepared;
    reload_on_sighup(tls.as_ref().map(|(identity, _)| identity.clone()))
        .map_err(io("installing the SIGHUP handler"))?;
    let tls = tls.map(|(_, config)| config);
    if isolation == KeyIsolation::SameUid {
        tracing::warn!(
            uid = rustix::process::geteuid().as_raw(),
            "keys are NOT isolated from the server: the signer runs under this process's uid, so a \
             file-read bug here reads every signing key; development only (start as root to run \
             front end and signer as two users, or use a separate signer service, see ops/)"
        );
    }

    let rocksdb_files = raise_fd_limit(cfg.connections.max);

    let (listener, keeper) = match isolated {
        Some((l, k)) => (TcpListener::from_std(l).map_err(io(format!("listening on {}", cfg.listen)))?, Some(k)),
        // Bind before anything is started, so a port in use fails fast with nothing to undo.
        None => (TcpListener::bind(cfg.listen).await.map_err(io(format!("listening on {}", cfg.listen)))?, None),
    };
    let addr = listener.local_addr().map_err(io("local address"))?;

    // Before the signer: a data directory in use by another instance fails here, on RocksDB's
    // lock, with nothing started (an isolated signer's keeper stops when `keeper` drops); a
    // database that cannot be reached, or is at a newer schema, fails here too.
    let store = match &cfg.store {
        StoreConfig::Rocks => {
            let db = data_dir.join(DB_DIR);
            let rocks = RocksOptions { max_open_files: rocksdb_files, ..RocksOptions::default() };
            Opened::Rocks(
                RocksStore::open(&db, rocks)
                    .map_err(|source| Error::Store { path: shown_dir.join(DB_DIR).display().to_string(), source })?,
            )
        }
        StoreConfig::Postgres(conninfo) => {
            // A node cut off mid-write holds its row locks (a lease's epoch row among them)
            // until the database ends its idle session: in a cluster, no longer than a lease
            // lasts, so that such a node delays a takeover by at most one more TTL.
            let mut opts = PgOptions::default();
            if let Some(c) = &cfg.cluster {
                opts.write_idle_limit = c.lease_ttl;
            }
            let store =
                PgStore::open(conninfo, opts).map_err(|source| Error::Store { path: "PostgreSQL".into(), source })?;
            tracing::info!(database = store.target(), "data kept in PostgreSQL (docs/postgres.md)");
            Opened::Postgres(store)
        }
    };

    let (signer_child, socket) = match (&cfg.signer, keeper) {
        (SignerMode::Embedded { .. }, Some(keeper)) => {
            let child = EmbeddedSigner::from_keeper(keeper, data_dir.join(RUN_DIR).join(SIGNER_SOCKET))
                .await
                .map_err(Error::signer)?;
            let socket = child.socket().to_owned();
            (Some(child), socket)
        }
        (SignerMode::Embedded { bin, keystore }, None) => {
            let bin = signer_child::find_binary(bin.clone()).map_err(Error::signer)?;
            let child = EmbeddedSigner::start(bin, &data_dir, keystore.clone()).await.map_err(Error::signer)?;
            let socket = child.socket().to_owned();
            (Some(child), socket)
        }
        (SignerMode::External { socket }, _) => (None, socket.clone()),
    };
    // `db/` and `signer/` are names in the data directory: RocksDB and the signer sync what is
    // inside them, not their own names. Make those durable before anything is acknowledged in
    // them (a power cut could otherwise take a directory recreated by this start whole).
    std::fs::File::open(&data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing {}", shown_dir.display())))?;

    let opts = ClientOptions { max_in_flight: cfg.signer_max_in_flight, ..ClientOptions::default() };
    let signer = SignerClient::new(socket.clone(), opts);
    let signer_socket = socket.clone();
    if signer_child.is_none() {
        // Not fatal: readiness reports it, and checks fail closed until the signer answers.
        if let Err(e) = signer.ping().await {
            tracing::warn!(socket = %socket.display(), "the signer does not answer yet: {e}");
        }
    }

    let dirs = (data_dir.as_path(), shown_dir.as_path());
    let result =
        serve_with_engine(&cfg, dirs, isolation, (listener, addr, tls), store, (signer, signer_socket), shutdown).await;
    if let Some(child) = signer_child {
        child.stop().await;
    }
    result
}

/// The listener's TLS identity (reloaded on SIGHUP) and the configuration presenting it.
type ListenerTls = (Arc<allowly_tls::listener::ServerIdentity>, Arc<rustls::ServerConfig>);

/// The store `run` opened: which engine decides what backups can do and which volume is watched.
#[derive(Debug)]
enum Opened {
    Rocks(RocksStore),
    Postgres(PgStore),
}

#[allow(clippy::too_many_arguments)]
async fn serve_with_engine(
    cfg: &ServerConfig,
    (data_dir, shown_dir): (&Path, &Path),
    isolation: KeyIsolation,
    (listener, addr, tls): (TcpListener, std::net::SocketAddr, Option<Arc<rustls::ServerConfig>>),
    store: Opened,
    (signer, signer_socket): (SignerClient, PathBuf),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let (store, backups, data_volume): (Arc<dyn Store>, _, _) = match store {
        Opened::Rocks(rocks) => {
            let rocks = Arc::new(rocks);
            let backups = crate::backup::Backups::new(Some(rocks.clone()), signer_socket, data_dir.to_owned());
            (rocks, backups, Some(data_dir.join(DB_DIR)))
        }
        // The database's volume is not this machine's to watch (its own monitoring and its
        // `disk full` errors, which fail writes closed as `NoSpace`, cover it); backups are the
        // database's own (`Backups::take` says so).
        Opened::Postgres(pg) => {
            (Arc::new(pg), crate::backup::Backups::new(None, signer_socket, data_dir.to_owned()), None)
        }
    };
    let cluster = cfg.cluster.as_ref().map(|c| allowly_engine::ClusterConfig {
        node_id: c.new_node_id(),
        address: c.advertise_url.clone(),
        lease_ttl: c.lease_ttl,
    });
    if let Some(c) = &cluster {
        tracing::info!(node_id = %c.node_id, address = %c.address, lease_ttl_ms = c.lease_ttl.as_millis() as u64, "one node of a cluster");
    }
    let metrics = crate::metrics::HttpMetrics::new();
    // The owner's own bound on the request (its commit deadline) and a margin for the hop.
    let forward_timeout = cfg.commit_timeout + Duration::from_secs(1);
    let forwarder = cluster
        .as_ref()
        .map(|c| {
            let ca = cfg.cluster.as_ref().and_then(|k| k.ca_file.as_deref()).map(allowly_tls::CaFile::read).transpose();
            let ca = ca.map_err(|e| format!("cluster_ca_file: {e}"))?;
            crate::forward::Forwarder::new(&c.node_id, forward_timeout, cfg.long_poll_max, ca.as_ref(), metrics.clone())
        })
        .transpose()
        .map_err(Error::Cluster)?;
    let engine = Engine::start(
        store.clone(),
        signer,
        EngineConfig {
            confirmation_ttl: cfg.confirmation_ttl,
            escalation_ttl: cfg.escalation_ttl,
            max_cached_authorizations: cfg.max_cached_authorizations,
            idle_timeout: cfg.idle_timeout,
            memory_high_water: cfg.memory_high_water,
            webhook_destinations: cfg.webhooks.destinations,
            signer_timeout: cfg.signer_timeout,
            rotation_drain_timeout: cfg.rotation_drain_timeout,
            commit_window: cfg.commit_window,
            sign_rounds_per_second: cfg.sign_rounds_per_second,
            data_volume,
            min_free_disk: cfg.min_free_disk,
            max_unsigned_age: cfg.max_unsigned_age,
            commit_timeout: cfg.commit_timeout,
            max_pending_writes: cfg.max_pending_writes,
            max_long_polls: cfg.max_long_polls,
            long_poll_max: cfg.long_poll_max,
            witnesses: cfg.witnesses.clone(),
            witness_quorum: cfg.witness_quorum,
            witness_timeout: cfg.witness_timeout,
            witness_refused_retry: cfg.witness_refused_retry,
            checkpoint_log: cfg.checkpoint_log.clone(),
            cluster: cluster.clone(),
            ..EngineConfig::default()
        },
    )
    .await
    .map_err(|source| Error::Engine { what: "starting the engine", source })?;
    let webhook_metrics = allowly_webhooks::Metrics::new();
    // Starts by scanning the whole outbox: deliveries a previous run left are taken up again.
    let outbox_store = store.clone();
    let worker = match allowly_webhooks::Worker::start(
        store,
        Arc::new(engine.clone()),
        engine.webhook_signal(),
        cfg.webhooks.clone(),
        webhook_metrics.clone(),
    ) {
        Ok(w) => w,
        Err(e) => {
            engine.shutdown().await;
            return Err(Error::Webhooks(e));
        }
    };
    let token = data_dir.join(ADMIN_TOKEN_FILE);
    let token_file = match ensure_admin_token(&engine, data_dir).await {
        Ok(present) => present,
        Err(e) => {
            engine.shutdown().await;
            worker.stop().await;
            return Err(e);
        }
    };

    let scheme = if tls.is_some() { "https" } else { "http" };
    // Machine-readable first line on stdout (tests and scripts parse it); the rest to stderr.
    println!("listening on {scheme}://{addr}");
    let _ = std::io::stdout().flush();
    let shown_token = shown_dir.join(ADMIN_TOKEN_FILE);
    if token_file {
        eprintln!(
            "allowly: listening on {scheme}://{addr}\n\
             allowly: instance admin key in {token} (mode 0600)\n\
             allowly: create a workspace:\n  \
             curl -sS -X POST {scheme}://{addr}/v1/workspaces -H \"Authorization: Bearer $(cat {token})\" \\\n    \
             -H 'Content-Type: application/json' -d '{{\"name\": \"my app\"}}'",
            token = shown_token.display()
        );
    } else {
        eprintln!(
            "allowly: listening on {scheme}://{addr}\n\
             allowly: no {token}: the instance admin key that is live was kept, no new one minted.\n\
             allowly: if it is lost, stop the server and run `allowly admin-key reset --data-dir {dir}`",
            token = shown_token.display(),
            dir = shown_dir.display()
        );
    }
    tracing::info!(%addr, data_dir = %shown_dir.display(), key_isolation = isolation.label(), "allowly serving");

    metrics.zero_server_errors(crate::routes::Route::Check.name());
    metrics.set_key_isolation(isolation);
    for c in [engine.collector(), webhook_metrics.collector(outbox_store)] {
        if let Err(e) = metrics.register(c) {
            engine.shutdown().await;
            worker.stop().await;
            return Err(Error::Metrics(e));
        }
    }
    let connections = crate::conn::Connections::new(cfg.connections, metrics.front.clone());
    let app = Arc::new(App {
        connections: Arc::new(connections),
        openapi: crate::openapi::document(),
        // A setting changed through another node of a cluster is read here within the bound.
        rate_limits: crate::ratelimit::RateLimits::new(cfg.rate_limit)
            .with_settings_max_age(cfg.cluster.as_ref().map(|_| allowly_engine::CLUSTER_CACHE_MAX_AGE)),
        metrics_token: cfg.metrics_token.clone(),
        key_isolation: isolation,
        engine: engine.clone(),
        metrics,
        body_limit: cfg.body_limit,
        request_ids: Default::default(),
        admin_token: token.clone(),
        backups,
        forwarder,
    });
    crate::http::serve(listener, app, tls, shutdown, DRAIN_TIMEOUT).await;
    tracing::info!("stopping the engine");
    engine.shutdown().await;
    tracing::info!("stopping the webhook worker");
    worker.stop().await;
    Ok(())
}

/// Descriptors kept for everything but client connections and RocksDB's table cache: the
/// WAL, the signer socket, webhook deliveries, the log.
const FD_RESERVE: u64 = 256;
/// Bounds of RocksDB's table cache (files kept open; more are reopened on demand).
const ROCKSDB_FILES: (u64, u64) = (64, 16_384);

/// Raises the soft limit on open files to the hard one (systemd's default soft limit is 1024):
/// every connection is a descriptor, and the connection caps, not `EMFILE` at accept or on a
/// WAL write, must be what limits clients. Returns RocksDB's share: what `--max-connections`
/// and the reserve leave, within [`ROCKSDB_FILES`] (RocksDB's own default, every file open,
/// turns a large database into EMFILE, which fails every check closed). Warns when even the
/// hard limit is too low for all three.
fn raise_fd_limit(max_connections: usize) -> i32 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (limit.current, limit.maximum) {
        if soft < hard {
            limit.current = Some(hard);
            if let Err(e) = setrlimit(Resource::Nofile, limit) {
                tracing::warn!("raising the open-file limit from {soft} to {hard}: {e}");
            }
        }
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let others = max_connections as u64 + FD_RESERVE;
    let needed = others + ROCKSDB_FILES.0;
    if soft < needed {
        tracing::warn!(
            open_file_limit = soft,
            max_connections,
            "the open-file limit is below --max-connections plus {needed}: clients may be refused by the kernel \
             (EMFILE) before the connection caps apply; raise LimitNOFILE or lower --max-connections"
        );
    }
    let files = soft.saturating_sub(others).clamp(ROCKSDB_FILES.0, ROCKSDB_FILES.1);
    i32::try_from(files).unwrap_or(i32::MAX)
}

/// Reads the listener's certificate and key again at each SIGHUP (a renewed certificate): new
/// connections get the new pair; a reload that fails keeps the pair in use and says why.
/// Without a TLS listener SIGHUP is logged and changes nothing: an operator's `reload` (or a
/// closed terminal) never stops the service, as SIGHUP's default action would.
fn reload_on_sighup(identity: Option<Arc<allowly_tls::listener::ServerIdentity>>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let Some(identity) = &identity else {
                tracing::info!("SIGHUP: nothing to reload (no TLS listener)");
                continue;
            };
            match identity.reload() {
                Ok(()) => tracing::info!(cert = %identity.cert_file().display(), "SIGHUP: TLS certificate reloaded"),
                Err(e) => tracing::error!(
                    error = %e,
                    "SIGHUP: the TLS certificate was not reloaded; the one in use stays"
                ),
            }
        }
    });
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!("{name}: shutting down");
    })
}

/// The instance admin key file: written with a new key at first start, never overwritten at
/// start. A new key is minted only while the instance has no live instance admin key. When the
/// file is missing but one is live, nothing is minted and the server starts without the file
/// (`Ok(false)`), saying so: the file may be gone by accident (the key still works where it is
/// kept, and a lost one is replaced by `allowly admin-key reset`, which also revokes it) or on
/// purpose (an operator who keeps the token in a secret store and off this disk). Minting then,
/// as earlier versions did, left a second live key that nobody asked for — the opposite of what
/// the operator of a token that leaked wants — and refusing to start would punish keeping the
/// token off the disk. A first start that crashed between storing its key and writing the file
/// lands here too; the message names the way out.
async fn ensure_admin_token(engine: &Engine, data_dir: &Path) -> Result<bool, Error> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if path.exists() {
        return Ok(true);
    }
    let live = engine
        .live_admin_keys()
        .await
        .map_err(|source| Error::Engine { what: "reading the instance admin keys", source })?;
    if live > 0 {
        tracing::warn!(
            live,
            path = %path.display(),
            "no admin-token file, and the instance has a live instance admin key: none minted; if it is lost, stop the server and run `allowly admin-key reset`"
        );
        return Ok(false);
    }
    let key = engine
        .create_admin_key()
        .await
        .map_err(|source| Error::Engine { what: "creating the instance admin key", source })?;
    crate::admin_token::create(&path, &key.secret).map_err(io(format!("creating {}", path.display())))?;
    tracing::info!(key_id = %key.key.id, path = %path.display(), "instance admin key created");
    Ok(true)
}
