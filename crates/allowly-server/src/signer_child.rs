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

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use allowly_signer_proto::client::{ClientOptions, SignerClient};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

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
const MAX_SOCKET_PATH: usize = 107;

/// Why the embedded signer could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SignerChildError {
    #[error(
        "cannot find the {SIGNER_BIN} binary (looked next to {exe} and on PATH); \
         install it there or pass --signer-bin / ALLOWLY_SIGNER_BIN"
    )]
    NotFound { exe: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("`{bin} init` failed ({status}): {stderr}")]
    Init { bin: String, status: ExitStatus, stderr: String },
    #[error("the signer exited ({0}) before answering; its log above says why")]
    ExitedEarly(ExitStatus),
    #[error("the signer did not answer within {0:?}: {1}")]
    NotReady(Duration, String),
    #[error(
        "signer socket path {0} is too long for a Unix socket ({MAX_SOCKET_PATH} bytes); use a shorter --data-dir"
    )]
    SocketPath(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SignerChildError {
    let what = what.into();
    move |source| SignerChildError::Io { what, source }
}

/// The signer binary: `explicit` if given, else next to the running executable, else on PATH.
pub fn find_binary(explicit: Option<PathBuf>) -> Result<PathBuf, SignerChildError> {
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
    on_path.ok_or_else(|| SignerChildError::NotFound {
        exe: exe.map_or_else(|| "this binary".into(), |e| e.display().to_string()),
    })
}

/// A running, supervised signer child.
#[derive(Debug)]
pub struct EmbeddedSigner {
    socket: PathBuf,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Starts signer children, always from one thread of its own that lives until the supervisor
/// is done: the parent-death signal fires when the forking *thread* exits, and runtime threads
/// can end (a worker that entered `block_in_place` becomes a blocking thread, which times out).
#[derive(Debug)]
struct Spawner {
    requests: std::sync::mpsc::Sender<oneshot::Sender<Result<Child, SignerChildError>>>,
}

impl Spawner {
    fn new(bin: PathBuf, dir: PathBuf, socket: PathBuf) -> Result<Self, SignerChildError> {
        let (requests, rx) = std::sync::mpsc::channel::<oneshot::Sender<Result<Child, SignerChildError>>>();
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("signer-spawner".into())
            .spawn(move || {
                // tokio's child reaping needs the runtime's context.
                let _rt = runtime.enter();
                for reply in rx {
                    let _ = reply.send(spawn(&bin, &dir, &socket));
                }
            })
            .map_err(io("starting the signer spawner thread"))?;
        Ok(Self { requests })
    }

    async fn spawn(&self) -> Result<Child, SignerChildError> {
        let gone = || SignerChildError::Io {
            what: "starting the signer".into(),
            source: std::io::Error::other("the spawner thread is gone"),
        };
        let (tx, rx) = oneshot::channel();
        self.requests.send(tx).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

fn spawn(bin: &Path, dir: &Path, socket: &Path) -> Result<Child, SignerChildError> {
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--dir")
        .arg(dir)
        .arg("--socket")
        .arg(socket)
        .arg("--parent-pid")
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

impl EmbeddedSigner {
    /// Prepares `<data>/signer` (first run: `allowly-signer init`) and `<data>/run` (0700),
    /// starts the signer and waits until it answers.
    pub async fn start(bin: PathBuf, data_dir: &Path) -> Result<Self, SignerChildError> {
        let dir = data_dir.join("signer");
        if !dir.join("master.key").exists() {
            let out = Command::new(&bin)
                .arg("init")
                .arg("--dir")
                .arg(&dir)
                .stdin(Stdio::null())
                .output()
                .await
                .map_err(io(format!("running {} init", bin.display())))?;
            if !out.status.success() {
                return Err(SignerChildError::Init {
                    bin: bin.display().to_string(),
                    status: out.status,
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                });
            }
            tracing::info!(dir = %dir.display(), "signer state directory created");
        }
        let run = data_dir.join("run");
        crate::serve::create_private_dir(&run)?;
        let socket = run.join("signer.sock");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(SignerChildError::SocketPath(socket.display().to_string()));
        }

        let spawner = Spawner::new(bin, dir, socket.clone())?;
        let mut child = spawner.spawn().await?;
        if let Err(e) = wait_ready(&mut child, &socket).await {
            terminate(child).await;
            return Err(e);
        }
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(child, spawner, stop_rx));
        Ok(Self { socket, stop, task })
    }

    /// The socket the signer serves on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops supervising and terminates the child (SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn wait_ready(child: &mut Child, socket: &Path) -> Result<(), SignerChildError> {
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
        if let Some(status) = child.try_wait().map_err(io("waiting for the signer"))? {
            return Err(SignerChildError::ExitedEarly(status));
        }
        match probe.ping().await {
            Ok(()) => return Ok(()),
            Err(e) if start.elapsed() > READY_TIMEOUT => {
                return Err(SignerChildError::NotReady(READY_TIMEOUT, e.to_string()));
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
