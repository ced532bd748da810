//! `allowly-signer`: see the crate docs. `init` prepares a development data directory;
//! `serve` runs the key process; `ping` checks a running signer (for health checks).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use allowly_signer::hardening::{harden_process, is_non_dumpable};
use allowly_signer::journal::{Journal, JournalOptions};
use allowly_signer::keystore::{FileBackend, KeyBackend, KeyStore, MasterKey, MlockPolicy};
use allowly_signer::metrics::Metrics;
use allowly_signer::pkcs11::{Pin, TokenBackend, TokenConfig, PIN_ENV};
use allowly_signer::{server, Limits, Shared};
use clap::{Parser, Subcommand};

/// See the workspace Cargo.toml for why this allocator. Here: a signed receipt costs a few
/// allocations (its body is decoded into its own buffer on a connection task and freed by the
/// workspace actor, often on another thread), and glibc's malloc/free were about 7 % of the
/// signer's CPU at the check knee (perf). Key material does not depend on the allocator: it
/// lives in locked allocations zeroed on drop (`hardening`), whichever allocator hands them out.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "allowly-signer", version, about = "Allowly's isolated key process")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a data directory (mode 0700) with a fresh master key file (mode 0600) for development.
    /// With --keystore pkcs11 only the directory is made: the keys live on the token.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_enum, default_value_t = Keystore::File)]
        keystore: Keystore,
    },
    /// Run the signer.
    Serve {
        /// Data directory (keys, journal of log states, audit log).
        #[arg(long)]
        dir: PathBuf,
        /// Unix socket to listen on; its directory must be 0700 (or 0710 for a separate service user).
        #[arg(long)]
        socket: PathBuf,
        /// Master key file (64 hex digits, mode 0600). Default: <dir>/master.key, unless
        /// ALLOWLY_SIGNER_MASTER_KEY is set.
        #[arg(long)]
        master_key_file: Option<PathBuf>,
        /// Uid allowed to connect (repeatable). The signer's own uid is always allowed.
        #[arg(long = "allow-uid")]
        allow_uids: Vec<u32>,
        /// Refuse to run when key memory cannot be locked (mlock).
        #[arg(long)]
        require_mlock: bool,
        /// Microseconds a journal group may wait for the next batch of other workspaces that
        /// signed lately (in the last 50 delays), so that they share one fsync (0: never wait; a
        /// workspace signing alone never waits). Trades up to that much latency per signature
        /// for CPU: an fdatasync costs more than signing a batch.
        #[arg(long, env = "ALLOWLY_SIGNER_JOURNAL_COMMIT_DELAY_US", default_value_t = 2000, value_name = "US")]
        journal_commit_delay_us: u64,
        /// Threads of the async runtime that reads requests, checks bodies and signs (the
        /// journal has a thread of its own). One by default: at the check knee a second one
        /// mostly woke up to find nothing to do, costing the kernel more than it saved.
        #[arg(long, env = "ALLOWLY_SIGNER_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        worker_threads: u16,
        /// Run as the child of process PID: exit (SIGKILL) when the parent dies, and refuse to
        /// start if PID is already gone. Set by `allowly serve` for its embedded signer.
        #[arg(long, value_name = "PID", value_parser = clap::value_parser!(i32).range(1..))]
        parent_pid: Option<i32>,
        #[command(flatten)]
        keys: KeyArgs,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Exit 0 if a signer answers on the socket.
    Ping {
        #[arg(long)]
        socket: PathBuf,
    },
    /// Print every workspace's keys in a signer directory, one JSON object per line:
    /// `{"workspace_id", "keys": [{"key_id", "status", "keystore", "not_before_ms",
    /// "not_after_ms"}]}` — `keystore` says which key store holds the private half (`file`,
    /// `pkcs11`); `status` is `active`, `retired` or `pending` (a rotation's key whose leaf never
    /// reached the log, kept for the next rotation). Reads the public key files only; works on a running signer's directory
    /// (`allowly workspace-key migrate` reads it).
    Keys {
        #[arg(long)]
        dir: PathBuf,
        /// Only this workspace (exit 1 if it has no keys).
        #[arg(long, value_name = "ID")]
        workspace: Option<String>,
    },
    /// Print every workspace's durable log head in a signer directory (its journal), one JSON
    /// object per line: `{"workspace_id", "size", "checkpoint"}`. Reads only; works on a
    /// stopped signer's directory or a backup's (`allowly restore` compares them).
    Heads {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Work with the signer's audit log (`<dir>/audit.log`).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

/// Where workspace keys are generated, kept and used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Keystore {
    /// Generated here, sealed under the master key in `<dir>/keys`, locked in memory.
    File,
    /// Generated and used inside a PKCS#11 token (an HSM) as non-extractable keys.
    Pkcs11,
}

#[derive(Debug, clap::Args)]
struct KeyArgs {
    /// Where workspace keys are generated and kept.
    #[arg(long, value_enum, default_value_t = Keystore::File)]
    keystore: Keystore,
    /// While moving workspaces from one key store to the other: the key store used before.
    /// Workspaces whose active key is there go on signing with it until their key is rotated
    /// (`allowly workspace-key migrate`), which makes the new key in --keystore; nothing new is
    /// made here. Drop it once `allowly-signer keys` shows no active key in it.
    #[arg(long, value_enum, value_name = "KIND")]
    previous_keystore: Option<Keystore>,
    /// --keystore pkcs11 (or --previous-keystore pkcs11): the token's PKCS#11 module (a shared
    /// library, e.g. /usr/lib/softhsm/libsofthsm2.so).
    #[arg(long, value_name = "PATH")]
    pkcs11_module: Option<PathBuf>,
    /// The label of the token to use (exactly one token must have it).
    #[arg(long, value_name = "LABEL")]
    pkcs11_token_label: Option<String>,
    /// File with the token's user PIN (mode 0600). Default: the ALLOWLY_SIGNER_PKCS11_PIN
    /// environment variable (removed once read).
    #[arg(long, value_name = "FILE")]
    pkcs11_pin_file: Option<PathBuf>,
}

/// What the signer holds for its callers at most (see `allowly_signer::Limits` and the
/// `server` and `registry` modules for what each bound covers).
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Limits")]
struct LimitArgs {
    /// Most leaves one checkpoint signature covers. Appends queued for one workspace are signed
    /// together up to this many leaves; the rest wait for its next signature (back pressure,
    /// no error). One append larger than this is signed alone, never split. Bounds one signed
    /// group's memory, journal record and audit line (each lists every leaf).
    #[arg(long, env = "ALLOWLY_SIGNER_MAX_GROUP_LEAVES", value_name = "LEAVES",
          default_value_t = Limits::DEFAULT_MAX_GROUP_LEAVES as u32,
          value_parser = clap::value_parser!(u32).range(1..=Limits::MAX_GROUP_LEAVES as i64))]
    max_group_leaves: u32,
    /// Bytes of appends one workspace may have waiting to be signed. An append that finds its
    /// workspace at this is answered Busy at once (the service retries it after a pause and
    /// never takes the signer for down); other workspaces are not held up.
    #[arg(long, env = "ALLOWLY_SIGNER_MAX_WORKSPACE_QUEUED_BYTES", value_name = "BYTES",
          default_value_t = Limits::default().max_workspace_queued_bytes as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_workspace_queued_bytes: u64,
    /// Bytes of requests, over all connections, read and not yet answered. At this the signer
    /// stops reading its socket until answers go out (back pressure: callers' requests wait,
    /// within their timeout). Bounds the signer's memory for requests. At least 16 MiB (the
    /// largest frame).
    #[arg(long, env = "ALLOWLY_SIGNER_MAX_QUEUED_BYTES", value_name = "BYTES",
          default_value_t = Limits::default().max_queued_bytes as u64,
          value_parser = clap::value_parser!(u64).range(allowly_signer_proto::MAX_FRAME as u64..))]
    max_queued_bytes: u64,
    /// Connections served at once. One more is closed as soon as it is accepted, counted in
    /// allowly_signer_connections_refused_total and logged (at most once per 10 s).
    #[arg(long, env = "ALLOWLY_SIGNER_MAX_CONNECTIONS", value_name = "N",
          default_value_t = Limits::default().max_connections as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Unload a workspace after this many seconds without a request: its keys are wiped and
    /// their memory unlocked, its state stays in the journal, and its next request loads it
    /// again (the log goes on exactly as if it had stayed loaded). Fractions allowed; 0: never.
    #[arg(long, env = "ALLOWLY_SIGNER_IDLE_UNLOAD_SECS", value_name = "SECS", default_value = "300",
          value_parser = parse_idle_unload)]
    idle_unload_secs: IdleUnload,
}

/// `--idle-unload-secs`: `None` for 0 (never unload).
#[derive(Debug, Clone, Copy)]
struct IdleUnload(Option<std::time::Duration>);

fn parse_idle_unload(s: &str) -> Result<IdleUnload, String> {
    let secs: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err("expected a number of seconds, 0 or more".into());
    }
    let d = std::time::Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())?;
    Ok(IdleUnload((!d.is_zero()).then_some(d)))
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        let bytes = |b: u64| usize::try_from(b).unwrap_or(usize::MAX);
        Limits {
            max_group_leaves: self.max_group_leaves as usize,
            max_workspace_queued_bytes: bytes(self.max_workspace_queued_bytes),
            max_queued_bytes: bytes(self.max_queued_bytes),
            max_connections: self.max_connections as usize,
            idle_unload: self.idle_unload_secs.0,
        }
    }
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the audit log's hash chain: exit 0 if intact (printing its line count and head),
    /// 1 with the first broken line if a line was deleted, inserted, reordered or edited, 2 if
    /// the file cannot be read. Needs no key and no running signer.
    Verify {
        /// The audit log.
        file: PathBuf,
        /// A head printed by an earlier run (64 hex digits): the log must still contain the
        /// line it names, which detects lines cut from the end since then.
        #[arg(long)]
        head: Option<String>,
    },
}

fn main() -> ExitCode {
    // Started through /proc/self/fd/N (an isolated embedded signer), the kernel names the process
    // "N": give it its name back, for ps and for anyone looking for it.
    let _ = rustix::thread::set_name(c"allowly-signer");
    // Before anything else can hold a secret: no core dumps, no same-uid memory reads.
    if let Err(e) = harden_process() {
        eprintln!("allowly-signer: cannot harden the process: {e}");
        return ExitCode::from(1);
    }
    match allowly_logs::LogFormat::from_env() {
        Ok(format) => allowly_logs::init(format, "ALLOWLY_SIGNER_LOG", "info"),
        Err(e) => {
            eprintln!("allowly-signer: error: {e}");
            return ExitCode::from(2);
        }
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init { dir, keystore } => init(&dir, keystore),
        Command::Serve {
            dir,
            socket,
            master_key_file,
            allow_uids,
            require_mlock,
            parent_pid,
            journal_commit_delay_us,
            worker_threads,
            keys,
            limits,
        } => {
            let tuning = Tuning {
                journal: JournalOptions {
                    commit_delay: std::time::Duration::from_micros(journal_commit_delay_us),
                    ..JournalOptions::default()
                },
                worker_threads: usize::from(worker_threads),
                limits: limits.limits(),
            };
            serve(dir, socket, master_key_file, allow_uids, require_mlock, parent_pid, keys, tuning)
        }
        Command::Ping { socket } => ping(socket),
        Command::Keys { dir, workspace } => keys(&dir, workspace.as_deref()),
        Command::Heads { dir } => heads(&dir),
        Command::Audit { command: AuditCommand::Verify { file, head } } => return audit_verify(&file, head.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("allowly-signer: {e}");
            ExitCode::from(1)
        }
    }
}

type AnyResult = Result<(), Box<dyn std::error::Error>>;

fn audit_verify(file: &Path, head: Option<&str>) -> ExitCode {
    let head = match head.map(allowly_receipt::types::HexHash::parse).transpose() {
        Ok(h) => h.map(|h| h.0),
        Err(_) => {
            eprintln!("allowly-signer: --head must be 64 lowercase hex digits");
            return ExitCode::from(2);
        }
    };
    let text = match std::fs::read(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("allowly-signer: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    match allowly_signer::audit::verify_chain(&text, head) {
        Ok(s) => {
            println!("audit log intact: {} lines, head {}", s.lines, hex::encode(s.head));
            if let Some(line) = s.head_line {
                println!("the recorded head is line {line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("audit log TAMPERED: {e}");
            ExitCode::from(1)
        }
    }
}

fn keys(dir: &Path, workspace: Option<&str>) -> AnyResult {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    for (ws, keys) in allowly_signer::keystore::list_keys(dir, workspace)? {
        writeln!(out, "{}", serde_json::json!({ "workspace_id": ws, "keys": keys }))?;
    }
    Ok(())
}

fn heads(dir: &Path) -> AnyResult {
    use std::io::Write as _;
    let states = allowly_signer::journal::read_states(dir)?;
    let mut out = std::io::stdout().lock();
    for (ws, state) in states {
        let line = serde_json::json!({ "workspace_id": ws, "size": state.size, "checkpoint": state.checkpoint });
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn init(dir: &Path, keystore: Keystore) -> AnyResult {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if keystore == Keystore::Pkcs11 {
        println!("{} ready (mode 0700); keys will be generated on the PKCS#11 token", dir.display());
        return Ok(());
    }
    let key = dir.join("master.key");
    if key.exists() {
        println!("{} exists; keeping it", key.display());
    } else {
        MasterKey::create_file(&key)?;
        println!("created {} (mode 0600)", key.display());
    }
    Ok(())
}

fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(worker_threads).enable_all().build()
}

/// `serve`'s performance settings and limits.
struct Tuning {
    journal: JournalOptions,
    worker_threads: usize,
    limits: Limits,
}

// One argument per flag (group) of `serve`; its only caller is `main`'s match on the command.
#[allow(clippy::too_many_arguments)]
fn serve(
    dir: PathBuf,
    socket: PathBuf,
    master_key_file: Option<PathBuf>,
    mut allowed_uids: Vec<u32>,
    require_mlock: bool,
    parent_pid: Option<i32>,
    keys: KeyArgs,
    tuning: Tuning,
) -> AnyResult {
    if let Some(pid) = parent_pid {
        die_with_parent(pid)?;
    }
    // Held (open) until the process exits; taken before the socket is bound, since binding
    // replaces a socket file that another signer may be serving on.
    let _lock = lock_dir(&dir)?;
    // Still one thread here (the runtime starts below): the environment can be edited safely.
    // Both secret variables are always taken out and overwritten, even when a file takes
    // precedence or the other key store is used, so they are never left for children or
    // /proc/<pid>/environ.
    let from_env = MasterKey::from_env();
    let pin_from_env = Pin::from_env();
    let metrics = Metrics::new();
    let mlock = MlockPolicy { failures: metrics.mlock_failures.clone(), required: require_mlock };
    let kinds = [Some(keys.keystore), keys.previous_keystore];
    if keys.previous_keystore == Some(keys.keystore) {
        return Err("--previous-keystore must be the other key store than --keystore".into());
    }
    let uses = |k: Keystore| kinds.contains(&Some(k));
    if !uses(Keystore::Pkcs11)
        && (keys.pkcs11_module.is_some() || keys.pkcs11_token_label.is_some() || keys.pkcs11_pin_file.is_some())
    {
        return Err("--pkcs11-* options need --keystore pkcs11 (or --previous-keystore pkcs11)".into());
    }
    if !uses(Keystore::File) && master_key_file.is_some() {
        return Err("--master-key-file is for --keystore file; a PKCS#11 signer has no master key".into());
    }
    let mut file = None;
    if uses(Keystore::File) {
        let master = match (master_key_file, from_env) {
            (Some(f), _) => MasterKey::from_file(&f)?,
            (None, Some(env)) => env?,
            (None, None) => MasterKey::from_file(&dir.join("master.key"))?,
        };
        mlock.check(master.is_locked(), "master key", None)?;
        file = Some(Box::new(FileBackend::new(master).with_mlock_policy(mlock.clone())) as Box<dyn KeyBackend>);
    }
    let mut token = None;
    if uses(Keystore::Pkcs11) {
        let (Some(module), Some(token_label)) = (keys.pkcs11_module, keys.pkcs11_token_label) else {
            return Err("--keystore pkcs11 needs --pkcs11-module and --pkcs11-token-label".into());
        };
        let pin = match (keys.pkcs11_pin_file, pin_from_env) {
            (Some(f), _) => Pin::from_file(&f)?,
            (None, Some(env)) => env?,
            (None, None) => return Err(format!("--keystore pkcs11 needs --pkcs11-pin-file or {PIN_ENV}").into()),
        };
        // Fails closed: a module, token or PIN that does not work stops the signer here.
        let backend = TokenBackend::open(TokenConfig { module, token_label, pin }, &mlock, metrics.token())?;
        token = Some(Box::new(backend) as Box<dyn KeyBackend>);
    }
    let (main, previous) = match keys.keystore {
        Keystore::File => (file, token),
        Keystore::Pkcs11 => (token, file),
    };
    let main = main.ok_or("no key store")?;
    if require_mlock {
        probe_mlock()?;
    }
    allowed_uids.push(rustix::process::geteuid().as_raw());
    let mut keystore = KeyStore::open(&dir, main)?;
    if let Some(previous) = previous {
        keystore = keystore.with_previous(previous)?;
        let left = allowly_signer::keystore::list_keys(&dir, None)?
            .iter()
            .filter(|(_, keys)| {
                keys.iter().any(|k| k.status == "active" && Some(k.keystore) == keystore.previous_kind())
            })
            .count();
        tracing::warn!(
            keystore = keystore.kind(),
            previous = keystore.previous_kind(),
            workspaces_left = left,
            "moving keys between key stores: workspaces whose active key is in the previous key store sign with it until `allowly workspace-key migrate` rotates them"
        );
    }
    // Before serving: nothing is being generated, so an intent no key file records is a crash's.
    let orphans = keystore.destroy_orphans()?;
    metrics.orphan_keys_destroyed.inc_by(orphans as u64);
    // Recovers the journal (cutting a torn tail, refusing a corrupt record) before serving.
    let journal = Journal::open(&dir, tuning.journal, metrics.clone())?;
    let limits = tuning.limits;
    tracing::info!(
        max_group_leaves = limits.max_group_leaves,
        max_workspace_queued_bytes = limits.max_workspace_queued_bytes,
        max_queued_bytes = limits.max_queued_bytes,
        max_connections = limits.max_connections,
        idle_unload_secs = limits.idle_unload.map_or(0.0, |d| d.as_secs_f64()),
        "limits"
    );
    let shared = Arc::new(Shared::new(dir, keystore, journal, metrics, allowed_uids, limits));
    runtime(tuning.worker_threads)?.block_on(async move {
        let listener = server::bind(&socket)?;
        let keystore = shared.keystore.kind();
        tracing::info!(socket = %socket.display(), non_dumpable = is_non_dumpable(), keystore, "allowly-signer ready");
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
            }
        };
        server::serve(listener, shared, shutdown).await;
        let _ = std::fs::remove_file(&socket);
        tracing::info!("allowly-signer stopped");
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

/// Asks the kernel for SIGKILL when the parent dies, then checks that the parent is still
/// `expected`: if it died before the request, we were re-parented and no signal would come.
fn die_with_parent(expected: i32) -> AnyResult {
    use rustix::process::{getppid, set_parent_process_death_signal, Pid, Signal};
    set_parent_process_death_signal(Some(Signal::KILL))?;
    let actual = Pid::as_raw(getppid());
    if actual != expected {
        return Err(format!("--parent-pid {expected}: that process is gone (parent is now {actual}); exiting").into());
    }
    Ok(())
}

/// An exclusive lock on `<dir>/lock` for as long as the returned file stays open: two signers
/// serving one state directory would each extend their own copy of a log and fork it.
fn lock_dir(dir: &Path) -> Result<std::fs::File, Box<dyn std::error::Error>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(format!(
            "another allowly-signer is serving {} (it holds {}); refusing to start a second one on the same state",
            dir.display(),
            path.display()
        )
        .into()),
        Err(e) => Err(format!("cannot lock {}: {e}", path.display()).into()),
    }
}

/// Fails when this process cannot lock a page (RLIMIT_MEMLOCK too small).
fn probe_mlock() -> AnyResult {
    let mut seed = allowly_signer::hardening::random_bytes::<32>()?;
    let probe = allowly_signer::hardening::LockedSigningKey::from_seed(&mut seed);
    if !probe.is_locked() {
        return Err("--require-mlock: key memory cannot be locked (raise RLIMIT_MEMLOCK / LimitMEMLOCK)".into());
    }
    Ok(())
}

fn ping(socket: PathBuf) -> AnyResult {
    use allowly_signer_proto::client::{ClientOptions, SignerClient};
    runtime(1)?.block_on(async move {
        let c = SignerClient::new(socket, ClientOptions::default());
        c.ping().await?;
        println!("pong");
        Ok(())
    })
}
