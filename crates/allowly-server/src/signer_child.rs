//! The embedded signer: `allowly serve` without `--signer-socket` runs `allowly-signer` as a
//! child process on `<data>/run/signer.sock`, with its state in `<data>/signer`.
//!
//! - The child is started with `--parent-pid <our pid>`: the kernel kills it when we die, even
//!   by SIGKILL, so a crashed server never leaves a signer holding the state directory (whose
//!   lock would stop the next one). The death signal is tied to the *thread* that forked the
//!   child, so children are forked by one dedicated thread that outlives them.
//! - Start-up waits until the signer answers a ping (bounded); afterwards a supervisor task
//!   restarts it with exponential backoff whenever it exits. The engine's client reconnects by
//!   itself, and checks fail closed (503) in between.
//! - Stopping sends SIGTERM and waits (bounded), then SIGKILL.
//! - Isolated (`allowly serve` started as root, see [`crate::isolation`]): the same start,
//!   supervision and stop run in a root [`Keeper`] process (`allowly signer-keeper`), which
//!   launches the signer as the signer's user, relative to its state directory
//!   (`--dir . --socket ../run/signer.sock --allow-uid <front end>`); the front end, once
//!   unprivileged, only waits for the ping and, to stop, closes the keeper's stdin.

#![allow(unsafe_code)] // `pre_exec` of the isolated launch; the one unsafe block is justified there.

use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use allowly_signer_proto::client::{ClientOptions, SignerClient};

use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::Error;

/// A kind of key store (`--signer-keystore`, `--signer-previous-keystore`; the signer's
/// `--keystore`, `--previous-keystore`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KeystoreKind {
    /// Sealed files under the signer's master key.
    #[default]
    File,
    /// A PKCS#11 token (an HSM).
    Pkcs11,
}

impl KeystoreKind {
    /// As the signer's options and `allowly-signer keys` name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Pkcs11 => "pkcs11",
        }
    }
}

/// The embedded signer's PKCS#11 token. Paths absolute: the signer may run in another working
/// directory (isolated mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    pub module: PathBuf,
    pub token_label: String,
    pub pin_file: PathBuf,
}

/// The embedded signer's key store, resolved: where new keys are made, the key store used
/// before while workspaces are moved off it (`allowly workspace-key migrate`), and the token
/// if either is `pkcs11`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SignerKeystore {
    pub kind: KeystoreKind,
    pub previous: Option<KeystoreKind>,
    pub token: Option<TokenSettings>,
}

/// File name of the signer binary.
pub const SIGNER_BIN: &str = "allowly-signer";
/// Longest wait for a freshly started signer to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for the signer to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);
const RESTART_MIN: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(10);
/// A child that ran this long before exiting was healthy: the next restart is immediate-ish.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// `sun_path` holds 108 bytes including the terminating NUL.
pub(crate) const MAX_SOCKET_PATH: usize = 107;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The signer binary: `explicit` if given, else next to the running executable, else on PATH.
pub fn find_binary(explicit: Option<PathBuf>) -> Result<PathBuf, Error> {
    if let Some(bin) = explicit {
        return Ok(bin);
    }
    let exe = std::env::current_exe().ok();
    if let Some(beside) = exe.as_deref().and_then(Path::parent).map(|d| d.join(SIGNER_BIN)) {
        if beside.is_file() {
            return Ok(beside);
        }
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(SIGNER_BIN))
        .find(|p| p.is_file());
    on_path.ok_or_else(|| Error::SignerNotFound {
        exe: exe.map_or_else(|| "this binary".into(), |e| e.display().to_string()),
    })
}

/// A running, supervised signer: supervised by this process, or (isolated) by a keeper process.
#[derive(Debug)]
pub struct EmbeddedSigner {
    socket: PathBuf,
    supervisor: Supervisor,
}

#[derive(Debug)]
enum Supervisor {
    /// A task of this process restarts the child (same uid, no isolation).
    Task { stop: watch::Sender<bool>, task: JoinHandle<()> },
    /// The root keeper process does ([`crate::isolation`]); closing its stdin stops it.
    Keeper(Keeper),
}

/// How the signer is started: where, and (isolated) as whom.
#[derive(Debug, Clone)]
struct Launch {
    bin: PathBuf,
    /// The signer's state directory and socket, as the signer is told them.
    dir: PathBuf,
    socket: PathBuf,
    keystore: SignerKeystore,
    isolated: Option<Isolated>,
}

impl SignerKeystore {
    /// The `allowly-signer serve` options that select this key store (the keeper takes the
    /// same ones).
    fn signer_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec!["--keystore".into(), self.kind.name().into()];
        if let Some(previous) = self.previous {
            args.extend(["--previous-keystore".into(), previous.name().into()]);
        }
        if let Some(t) = &self.token {
            args.extend([
                "--pkcs11-module".into(),
                t.module.clone().into(),
                "--pkcs11-token-label".into(),
                t.token_label.clone().into(),
                "--pkcs11-pin-file".into(),
                t.pin_file.clone().into(),
            ]);
        }
        args
    }
}

/// An isolated launch: the binary is opened by root and executed through `/proc/self/fd/N`
/// (the signer's user need not be able to reach it), in `cwd` (entered as root, so its parents
/// need not be searchable), after [`crate::isolation::child_drop`].
#[derive(Debug, Clone)]
struct Isolated {
    exe: Arc<std::fs::File>,
    cwd: PathBuf,
    uid: u32,
    gid: u32,
    allow_uid: u32,
}

impl Launch {
    fn command(&self) -> Command {
        let Some(iso) = &self.isolated else { return Command::new(&self.bin) };
        let mut cmd = Command::new(format!("/proc/self/fd/{}", iso.exe.as_raw_fd()));
        cmd.arg0(&self.bin).current_dir(&iso.cwd);
        let (uid, gid) = (iso.uid, iso.gid);
        // SAFETY: the closure runs in the forked child before exec and only makes raw system
        // calls (no allocation, no locks): async-signal-safe.
        unsafe { cmd.pre_exec(move || crate::isolation::child_drop(uid, gid)) };
        cmd
    }
}

/// Starts signer children, always from one thread of its own that lives until the supervisor
/// is done: the parent-death signal fires when the forking *thread* exits, and runtime threads
/// can end (a worker that entered `block_in_place` becomes a blocking thread, which times out).
#[derive(Debug)]
struct Spawner {
    requests: std::sync::mpsc::Sender<oneshot::Sender<Result<Child, Error>>>,
}

impl Spawner {
    fn new(launch: Launch) -> Result<Self, Error> {
        let (requests, rx) = std::sync::mpsc::channel::<oneshot::Sender<Result<Child, Error>>>();
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("signer-spawner".into())
            .spawn(move || {
                // tokio's child reaping needs the runtime's context.
                let _rt = runtime.enter();
                for reply in rx {
                    let _ = reply.send(spawn(&launch));
                }
            })
            .map_err(io("starting the signer spawner thread"))?;
        Ok(Self { requests })
    }

    async fn spawn(&self) -> Result<Child, Error> {
        let gone = || Error::Io {
            what: "starting the signer".into(),
            source: std::io::Error::other("the spawner thread is gone"),
        };
        let (tx, rx) = oneshot::channel();
        self.requests.send(tx).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

fn spawn(launch: &Launch) -> Result<Child, Error> {
    let (bin, socket) = (&launch.bin, &launch.socket);
    let mut cmd = launch.command();
    cmd.arg("serve").arg("--dir").arg(&launch.dir).arg("--socket").arg(socket).args(launch.keystore.signer_args());
    if let Some(iso) = &launch.isolated {
        cmd.arg("--allow-uid").arg(iso.allow_uid.to_string());
    }
    cmd.arg("--parent-pid")
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Its own process group: a terminal's Ctrl-C (sent to the whole foreground group) must
        // reach only us, so the signer keeps serving while requests drain and stops last.
        .process_group(0);
    let child = cmd.spawn().map_err(io(format!("starting {} serve", bin.display())))?;
    tracing::info!(pid = child.id(), socket = %socket.display(), "signer started");
    Ok(child)
}

/// `allowly-signer init` (first run: creates the directory, and the master key unless the keys
/// are on a PKCS#11 token), as the signer will run.
async fn init_if_needed(launch: &Launch, state_dir: &Path) -> Result<(), Error> {
    let done = match launch.keystore.kind {
        KeystoreKind::File => state_dir.join("master.key").exists(),
        KeystoreKind::Pkcs11 => state_dir.is_dir(),
    };
    if done {
        return Ok(());
    }
    let bin = &launch.bin;
    let keystore = launch.keystore.kind.name();
    let out = launch
        .command()
        .arg("init")
        .arg("--dir")
        .arg(&launch.dir)
        .args(["--keystore", keystore])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(io(format!("running {} init", bin.display())))?;
    if !out.status.success() {
        return Err(Error::SignerInit {
            bin: bin.display().to_string(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    tracing::info!(dir = %state_dir.display(), "signer state directory created");
    Ok(())
}

/// Starts the supervisor task of `child`.
fn supervised(child: Child, spawner: Spawner) -> Supervisor {
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(supervise(child, spawner, stop_rx));
    Supervisor::Task { stop, task }
}

impl EmbeddedSigner {
    /// Prepares `<data>/signer` (first run: `allowly-signer init`) and `<data>/run` (0700),
    /// starts the signer under this process's uid and waits until it answers.
    pub async fn start(bin: PathBuf, data_dir: &Path, keystore: SignerKeystore) -> Result<Self, Error> {
        let dir = data_dir.join(crate::layout::SIGNER_DIR);
        let run = data_dir.join(crate::layout::RUN_DIR);
        let socket = run.join(crate::layout::SIGNER_SOCKET);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(Error::SignerSocketPath(socket.display().to_string()));
        }
        let launch = Launch { bin, dir: dir.clone(), socket: socket.clone(), keystore, isolated: None };
        init_if_needed(&launch, &dir).await?;
        create_private_dir(&run)?;

        let spawner = Spawner::new(launch)?;
        let mut child = spawner.spawn().await?;
        if let Err(e) = wait_ready(|| child.try_wait(), &socket).await {
            terminate(child).await;
            return Err(e);
        }
        Ok(Self { socket, supervisor: supervised(child, spawner) })
    }

    /// Takes over a started [`Keeper`] (isolated mode; called after this process dropped to
    /// the front end's user, whose uid the signer allows): waits until the signer answers on
    /// `socket` (relative to the data directory, the working directory by then).
    pub async fn from_keeper(mut keeper: Keeper, socket: PathBuf) -> Result<Self, Error> {
        if let Err(e) = wait_ready(|| keeper.child.try_wait(), &socket).await {
            keeper.stop().await;
            return Err(e);
        }
        Ok(Self { socket, supervisor: Supervisor::Keeper(keeper) })
    }

    /// The socket the signer serves on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops supervising and terminates the child (SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]).
    pub async fn stop(self) {
        match self.supervisor {
            Supervisor::Task { stop, task } => {
                let _ = stop.send(true);
                let _ = task.await;
            }
            Supervisor::Keeper(keeper) => keeper.stop().await,
        }
    }
}

/// The root keeper of an isolated signer, seen from the front end: a child process whose stdin
/// is the only channel (EOF = stop the signer and exit). The front end, once unprivileged,
/// cannot signal it; it can only close the pipe and wait.
#[derive(Debug)]
pub struct Keeper {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
}

/// Name of the hidden subcommand the keeper runs.
pub const KEEPER_COMMAND: &str = "signer-keeper";

impl Keeper {
    /// Starts `<this binary> signer-keeper` (as root, before privileges are dropped).
    pub fn start(
        signer_bin: &Path,
        data_dir: &Path,
        acc: &crate::isolation::Accounts,
        keystore: &SignerKeystore,
    ) -> Result<Self, Error> {
        use std::os::unix::process::CommandExt as _;
        let exe = std::env::current_exe().map_err(io("finding this executable"))?;
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg(KEEPER_COMMAND)
            .arg("--signer-bin")
            .arg(signer_bin)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--uid", &acc.signer.uid.to_string(), "--gid", &acc.signer.gid.to_string()])
            .args(["--allow-uid", &acc.front.uid.to_string()]);
        cmd.args(keystore.signer_args());
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Its own group: a terminal's Ctrl-C must reach only the front end (which drains,
            // then closes the pipe), not stop the signer under requests still in flight.
            .process_group(0);
        let mut child = cmd.spawn().map_err(io(format!("starting {} {KEEPER_COMMAND}", exe.display())))?;
        let stdin = child.stdin.take();
        tracing::info!(pid = child.id(), "signer keeper started");
        Ok(Self { child, stdin })
    }

    /// Closes the pipe and waits (bounded) for the keeper to stop the signer and exit.
    pub async fn stop(mut self) {
        drop(self.stdin.take());
        let start = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    tracing::info!("signer keeper stopped ({status})");
                    return;
                }
                Ok(None) if start.elapsed() < STOP_TIMEOUT + Duration::from_secs(5) => {
                    tokio::time::sleep(POLL).await;
                }
                Ok(None) => {
                    tracing::warn!("the signer keeper did not exit in time; leaving it (it stops at our exit)");
                    return;
                }
                Err(e) => {
                    tracing::warn!("waiting for the signer keeper: {e}");
                    return;
                }
            }
        }
    }
}

/// Arguments of the hidden `allowly signer-keeper` subcommand (set by [`Keeper::start`]).
#[derive(Debug, Clone, clap::Args)]
pub struct KeeperArgs {
    #[arg(long)]
    pub signer_bin: PathBuf,
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long)]
    pub uid: u32,
    #[arg(long)]
    pub gid: u32,
    #[arg(long)]
    pub allow_uid: u32,
    /// The embedded signer's key stores (as `allowly-signer serve` takes them).
    #[arg(long, value_enum, default_value_t)]
    pub keystore: KeystoreKind,
    #[arg(long, value_enum)]
    pub previous_keystore: Option<KeystoreKind>,
    /// Its PKCS#11 token (all three, or none).
    #[arg(long, requires_all = ["pkcs11_token_label", "pkcs11_pin_file"])]
    pub pkcs11_module: Option<PathBuf>,
    #[arg(long, requires = "pkcs11_module")]
    pub pkcs11_token_label: Option<String>,
    #[arg(long, requires = "pkcs11_module")]
    pub pkcs11_pin_file: Option<PathBuf>,
}

/// The keeper's whole life: starts the signer as the signer's user, restarts it whenever it
/// exits, and stops it when stdin reaches EOF (the front end closed it, or died) or on SIGTERM.
/// SIGINT is ignored (see [`Keeper::start`]).
pub async fn keep(args: KeeperArgs) -> Result<(), Error> {
    use tokio::io::AsyncReadExt as _;
    use tokio::signal::unix::{signal, SignalKind};
    let exe = std::fs::File::open(&args.signer_bin).map_err(io(format!("opening {}", args.signer_bin.display())))?;
    let state_dir = args.data_dir.join(crate::layout::SIGNER_DIR);
    let token = match (args.pkcs11_module, args.pkcs11_token_label, args.pkcs11_pin_file) {
        (Some(module), Some(token_label), Some(pin_file)) => Some(TokenSettings { module, token_label, pin_file }),
        _ => None,
    };
    let keystore = SignerKeystore { kind: args.keystore, previous: args.previous_keystore, token };
    let launch = Launch {
        bin: args.signer_bin.clone(),
        dir: PathBuf::from("."),
        socket: PathBuf::from("../run/signer.sock"),
        keystore,
        isolated: Some(Isolated {
            exe: Arc::new(exe),
            cwd: state_dir.clone(),
            uid: args.uid,
            gid: args.gid,
            allow_uid: args.allow_uid,
        }),
    };
    let mut term = signal(SignalKind::terminate()).map_err(io("installing signal handlers"))?;
    let _int = signal(SignalKind::interrupt()).map_err(io("installing signal handlers"))?;
    init_if_needed(&launch, &state_dir).await?;
    let socket = args.data_dir.join(crate::layout::RUN_DIR).join(crate::layout::SIGNER_SOCKET);
    let before = socket_inode(&socket);
    let spawner = Spawner::new(launch)?;
    let mut child = spawner.spawn().await?;
    first_start(&mut child, &socket, before).await?;
    let supervisor = supervised(child, spawner);
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            r = stdin.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            _ = term.recv() => break,
        }
    }
    EmbeddedSigner { socket: PathBuf::new(), supervisor }.stop().await;
    Ok(())
}

/// Identifies the socket file: a new bind makes a new file, whose inode number may be the
/// old one's again but whose change time is not.
fn socket_inode(socket: &Path) -> Option<(u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::symlink_metadata(socket).ok().map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
}

/// The keeper's wait for its first signer: a signer that cannot start at all (a PKCS#11 token
/// that refuses its PIN, a module that is not there, a corrupt state directory) makes this
/// start fail — the keeper exits with the error and the front end with it — instead of being
/// restarted forever behind a front end that waits in vain. Started means the signer bound a
/// new socket (the keeper, root, is not on the signer's allow-list, so it cannot ping it); it
/// binds only after its keys and journal are open. Restarts after that are supervised as usual.
async fn first_start(child: &mut Child, socket: &Path, before: Option<(u64, i64, i64)>) -> Result<(), Error> {
    let start = Instant::now();
    while start.elapsed() < READY_TIMEOUT {
        if let Some(status) = child.try_wait().map_err(io("waiting for the signer"))? {
            // Bound its socket and then died (killed between two polls): it did start, and the
            // front end may already be serving through it. A crash after start is the
            // supervisor's to restart (its `wait` returns this status at once, and it logs it),
            // not a failed start that takes the instance down.
            if socket_inode(socket).is_some_and(|id| Some(id) != before) {
                return Ok(());
            }
            return Err(Error::SignerExitedEarly(status));
        }
        if socket_inode(socket).is_some_and(|id| Some(id) != before) {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
    // Not bound yet, not dead either: the front end's own wait decides.
    Ok(())
}

/// Polls the signer with pings until it answers; `exited` tells whether the process that should
/// serve (the child, or the keeper) is gone.
async fn wait_ready(
    mut exited: impl FnMut() -> std::io::Result<Option<ExitStatus>>,
    socket: &Path,
) -> Result<(), Error> {
    // Its own client: the engine's backs off for up to seconds after a failed connect.
    let probe = SignerClient::new(
        socket.to_owned(),
        ClientOptions {
            request_timeout: Duration::from_secs(2),
            reconnect_backoff_min: Duration::from_millis(1),
            reconnect_backoff_max: POLL,
            ..ClientOptions::default()
        },
    );
    let start = Instant::now();
    loop {
        if let Some(status) = exited().map_err(io("waiting for the signer"))? {
            return Err(Error::SignerExitedEarly(status));
        }
        match probe.ping().await {
            Ok(()) => return Ok(()),
            Err(e) if start.elapsed() > READY_TIMEOUT => {
                return Err(Error::SignerNotReady(READY_TIMEOUT, e.to_string()));
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

async fn supervise(mut child: Child, spawner: Spawner, mut stop: watch::Receiver<bool>) {
    let mut backoff = RESTART_MIN;
    loop {
        let started = Instant::now();
        let exited = tokio::select! {
            s = child.wait() => s,
            _ = stop.changed() => {
                terminate(child).await;
                return;
            }
        };
        if started.elapsed() > HEALTHY_RUN {
            backoff = RESTART_MIN;
        }
        match exited {
            Ok(status) => tracing::error!("the signer exited ({status}); restarting it in {backoff:?}"),
            Err(e) => tracing::error!("waiting for the signer: {e}; restarting it in {backoff:?}"),
        }
        child = loop {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(RESTART_MAX);
            match spawner.spawn().await {
                Ok(c) => break c,
                Err(e) => tracing::error!("{e}; retrying in {backoff:?}"),
            }
        };
    }
}

/// SIGTERM, wait up to [`STOP_TIMEOUT`], then SIGKILL.
async fn terminate(mut child: Child) {
    let pid = child.id().and_then(|p| i32::try_from(p).ok()).and_then(rustix::process::Pid::from_raw);
    let Some(pid) = pid else { return }; // already reaped
    if let Err(e) = rustix::process::kill_process(pid, rustix::process::Signal::TERM) {
        tracing::warn!("signalling the signer: {e}");
    }
    match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) => tracing::info!("signer stopped ({status})"),
        Ok(Err(e)) => tracing::warn!("waiting for the signer to stop: {e}"),
        Err(_) => {
            tracing::warn!("the signer did not stop within {STOP_TIMEOUT:?}; killing it");
            let _ = child.kill().await;
        }
    }
}

/// Creates `dir` (and parents) with mode 0700 if missing; an existing directory is made 0700.
/// Then fsyncs the directory holding its name, and those of every parent it created: a new
/// directory's name is durable only once its parent is synced (POSIX; ext4's ordered journal
/// happens to commit it with the next fsync of anything, other file systems need not), and
/// without it a power cut after the first start could take the whole data directory, with
/// every receipt acknowledged in it (found by the power-loss tier, `tests/it/powerloss.rs`). The
/// parent is synced at every start, not only when created: a process crash between creating
/// and syncing leaves a directory that exists but is not durable.
pub fn create_private_dir(dir: &Path) -> Result<(), Error> {
    let err = |source| Error::Io { what: format!("creating {}", dir.display()), source };
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let mut created = Vec::new();
    let mut missing = dir.parent();
    while let Some(p) = missing.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        created.push(p);
        missing = p.parent();
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    for d in std::iter::once(dir).chain(created) {
        let parent = d.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let sync_err = |source| Error::Io { what: format!("syncing {}", parent.display()), source };
        match std::fs::File::open(parent) {
            Ok(f) => f.sync_all().map_err(sync_err)?,
            // A parent this user may search but not list (e.g. 0711) cannot be opened to be
            // fsynced. Whoever provisioned it can; say so rather than refuse to start.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => tracing::warn!(
                dir = %parent.display(),
                "cannot open the directory holding {} to fsync it: its name may not survive a power cut",
                d.display()
            ),
            Err(e) => return Err(sync_err(e)),
        }
    }
    Ok(())
}
