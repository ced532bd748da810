//! The one error of this crate (DESIGN §9): why a command (`allowly serve`, `backup`,
//! `restore`, an operator command) stopped, or why a step of one failed. Its own module, below
//! everything that returns it, so that the operator commands and the HTTP client need not
//! import `serve` (which imports them). Its text is for the operator (stderr, the log); the
//! only one an HTTP request can meet, a failed backup, is mapped to a problem once, at the edge
//! (`Problem::from_backup`), and never detailed to the caller.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::config::BODY_LIMIT_RANGE;
use crate::signer_child::{MAX_SOCKET_PATH, SIGNER_BIN};

/// Why a command of this crate stopped, or a step of one failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file, socket or process operation failed.
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },

    // `allowly serve`, and the operator commands.
    #[error("opening the store at {path}: {source}")]
    Store { path: String, source: allowly_store::StoreError },
    /// A step of starting the embedded signer (its binary, its directories, its process).
    #[error("starting the embedded signer: {0}")]
    Signer(Box<Error>),
    #[error("{what}: {source}")]
    Engine { what: &'static str, source: allowly_engine::EngineError },
    #[error("starting the webhook worker: {0}")]
    Webhooks(String),
    /// Two collectors share a metric name (a programming error, caught at the first start).
    #[error("registering metrics: {0}")]
    Metrics(#[source] prometheus::Error),
    /// A step of isolating the signer's keys (the users, the data directory, the privilege
    /// drop).
    #[error("isolating the signer's keys (started as root): {0}")]
    Isolation(Box<Error>),
    /// An operator command (`admin_cli`) got an answer other than 2xx from the server.
    #[error("the server answered {status}: {body}")]
    Remote { status: u16, body: String },

    // The configuration (`config`): flags, environment and file.
    #[error("cannot read config file {}: {source}", path.display())]
    ConfigRead { path: PathBuf, source: std::io::Error },
    #[error("config file {}: {source}", path.display())]
    ConfigParse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("body_limit {0} is outside {min}..={max}", min = BODY_LIMIT_RANGE.start(), max = BODY_LIMIT_RANGE.end())]
    BodyLimit(usize),
    #[error("webhook settings: {0}")]
    WebhookSettings(String),
    #[error("witness settings: {0}")]
    Witnesses(String),
    #[error("cluster settings: {0}")]
    Cluster(String),
    /// The listener's TLS settings, or its certificate and key files.
    #[error("TLS listener: {0}")]
    Tls(String),
    #[error("checkpoint_log: {0}")]
    CheckpointLog(String),
    #[error("{0} must be within 1 s..=30 days")]
    Ttl(&'static str),
    #[error("signer_max_in_flight must be within 1..=65536")]
    SignerInFlight,
    #[error("{0} is outside {1}")]
    OutOfRange(&'static str, &'static str),
    #[error("signer key store: {0}")]
    Keystore(String),
    #[error("min_free_disk: {0}")]
    MinFreeDisk(String),
    #[error("metrics_token_file: {0}")]
    MetricsToken(String),

    // The embedded signer's process (`signer_child`).
    #[error(
        "cannot find the {SIGNER_BIN} binary (looked next to {exe} and on PATH); \
         install it there or pass --signer-bin / ALLOWLY_SIGNER_BIN"
    )]
    SignerNotFound { exe: String },
    #[error("`{bin} init` failed ({status}): {stderr}")]
    SignerInit { bin: String, status: ExitStatus, stderr: String },
    #[error("the signer exited ({0}) before answering; its log above says why")]
    SignerExitedEarly(ExitStatus),
    #[error("the signer did not answer within {0:?}: {1}")]
    SignerNotReady(Duration, String),
    #[error(
        "signer socket path {0} is too long for a Unix socket ({MAX_SOCKET_PATH} bytes); use a shorter --data-dir"
    )]
    SignerSocketPath(String),

    // Key isolation, started as root (`isolation`).
    #[error("cannot create system user {name}: {detail}")]
    UserAdd { name: String, detail: String },
    #[error("user {0} must not be root (uid 0)")]
    RootUser(String),
    #[error("--user and --signer-user must be two different users (both are uid {0})")]
    SameUser(u32),
    #[error("dropping privileges: {0}")]
    DropPrivileges(String),

    // Backup and restore (`backup`).
    /// The store (the live one, or the backup's copy) failed.
    #[error("{what}: {source}")]
    BackupStore { what: String, source: allowly_store::StoreError },
    /// The signer refused or failed the snapshot, or its state could not be read.
    #[error("signer: {0}")]
    BackupSigner(String),
    /// The server did not answer the backup request as expected.
    #[error("server: {0}")]
    BackupServer(String),
    /// The command line or the directories given are not usable.
    #[error("{0}")]
    Usage(String),
    /// The backup does not pass its checks (its pair disagrees, or it is older than what was
    /// handed out); the text says what to do.
    #[error("{0}")]
    Refused(String),
    /// This server's store has no backup of ours (PostgreSQL: the database's own tools back it
    /// up); the text says what to use instead.
    #[error("{0}")]
    BackupNotSupported(String),
}

impl Error {
    /// `e` happened while starting the embedded signer.
    pub fn signer(e: Self) -> Self {
        Self::Signer(Box::new(e))
    }

    /// `e` happened while isolating the signer's keys.
    pub fn isolation(e: Self) -> Self {
        Self::Isolation(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    /// The texts operators (and their scripts) see, as they were when `config`, `signer_child`,
    /// `isolation` and `backup` had an error enum each.
    #[test]
    fn messages_keep_their_text() {
        let not_found = Error::signer(Error::SignerNotFound { exe: "/x/allowly".into() });
        assert_eq!(
            not_found.to_string(),
            "starting the embedded signer: cannot find the allowly-signer binary (looked next to /x/allowly and on \
             PATH); install it there or pass --signer-bin / ALLOWLY_SIGNER_BIN"
        );
        assert_eq!(
            Error::SignerSocketPath("/p".into()).to_string(),
            "signer socket path /p is too long for a Unix socket (107 bytes); use a shorter --data-dir"
        );
        assert_eq!(Error::BodyLimit(1).to_string(), "body_limit 1 is outside 1024..=16777216");
        assert_eq!(Error::isolation(Error::SameUser(7)).to_string(), "isolating the signer's keys (started as root): --user and --signer-user must be two different users (both are uid 7)");
        assert_eq!(Error::BackupSigner("refused".into()).to_string(), "signer: refused");
        assert_eq!(Error::DropPrivileges("x".into()).to_string(), "dropping privileges: x");
    }
}
