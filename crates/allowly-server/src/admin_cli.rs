//! The operator's commands next to `allowly serve`: `allowly workspace-key rotate`, `allowly
//! admin-key rotate|revoke` (which ask the running server, over its HTTP API, with the instance
//! admin key) and `allowly admin-key reset` (break glass, offline: the server stopped).
//!
//! Why the key commands go through the server rather than to the signer directly: a workspace
//! key rotation is a leaf of the workspace's log, and only the server sequences that log (its
//! store is always at or ahead of the signer). A rotation made at the signer behind its back
//! would take an index the server may already have given a receipt — a fork — or leave the
//! signer a leaf ahead whose body the store lacks. The server reserves the index, has the
//! signer rotate there, and stores the receipt (`allowly_engine`'s `actor/rotation.rs`).
//!
//! The client (`http_client`) speaks `http://` (the API on loopback) and `https://` (the API
//! behind a TLS terminator; Mozilla's roots, or `--ca-file`). Answers go to stdout as the
//! server sent them; a problem document makes the command fail with it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::error::Error;
use crate::http_client::ApiArgs;
use crate::layout::{ADMIN_TOKEN_FILE, DB_DIR};

/// Where the running server is and how to authenticate to it.
#[derive(Debug, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// File holding the instance admin key [default: ./allowly-data/admin-token].
    #[arg(long, env = "ALLOWLY_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// The `Idempotency-Key` of an operator command that changes something.
#[derive(Debug, Args)]
pub struct IdempotencyArgs {
    /// The request's Idempotency-Key [default: a new random one, printed on stderr]. When the
    /// answer is lost (the connection breaks after the request went out) the command sends the
    /// request again with the same key by itself; to repeat the command by hand later (within
    /// 24 h), give it the key it printed. Either way the server answers a repeat with what it did
    /// the first time instead of doing it twice.
    #[arg(long, value_name = "KEY", value_parser = parse_idempotency_key)]
    pub idempotency_key: Option<String>,
}

/// What the server accepts (1 to 255 printable ASCII characters, no space): checked here too,
/// since the key goes into a header line as given.
fn parse_idempotency_key(s: &str) -> Result<String, String> {
    let ok = (1..=255).contains(&s.len()) && s.bytes().all(|b| (0x21..=0x7e).contains(&b));
    ok.then(|| s.to_owned()).ok_or_else(|| "expected 1 to 255 printable ASCII characters without spaces".into())
}

impl IdempotencyArgs {
    /// The given key, or a new random one (`cli-` and 32 hex digits).
    fn key(&self) -> Result<String, Error> {
        if let Some(k) = &self.idempotency_key {
            return Ok(k.clone());
        }
        let mut bytes = [0u8; 16];
        getrandom::getrandom(&mut bytes).map_err(|e| Error::Io {
            what: "making an Idempotency-Key".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(format!("cli-{}", hex::encode(bytes)))
    }
}

/// `allowly workspace-key …`
#[derive(Debug, Subcommand)]
pub enum WorkspaceKeyCommand {
    /// Rotate a workspace's signing key through the running server: the answer is the new key
    /// set and the signed `key.rotated` receipt (JSON on stdout).
    Rotate {
        /// The workspace (`ws_…`).
        #[arg(long, value_name = "ID")]
        workspace: String,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        idempotency: IdempotencyArgs,
    },
    /// Move a workspace's signing key to another key store — onto a PKCS#11 token, or back to
    /// sealed files — by rotating it: the signer makes the new key in its --signer-keystore (on
    /// a token: generated there, never extractable), the old key is retired with its window
    /// and stays published, and no private key is ever copied. The signer must run with
    /// --signer-keystore KIND --signer-previous-keystore OLD. Nothing is done if the active key
    /// is in KIND already; its Idempotency-Key defaults to `migrate-<workspace>-<active key id>`,
    /// so the same command run again after a lost answer repeats that rotation, never a second
    /// one. Reads the signer's key files (public data): run it as a user that can (root, when
    /// the signer is isolated).
    Migrate {
        /// The workspace (`ws_…`).
        #[arg(long, value_name = "ID")]
        workspace: String,
        /// The key store to move the key to.
        #[arg(long, value_enum, value_name = "KIND")]
        to: crate::signer_child::KeystoreKind,
        /// The signer's directory.
        #[arg(long, value_name = "DIR", default_value = "./allowly-data/signer")]
        signer_dir: PathBuf,
        /// The allowly-signer binary (reads the key files) [default: next to allowly, else on PATH].
        #[arg(long, env = "ALLOWLY_SIGNER_BIN", value_name = "PATH")]
        signer_bin: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        idempotency: IdempotencyArgs,
    },
}

/// `allowly admin-key …`
#[derive(Debug, Subcommand)]
pub enum AdminKeyCommand {
    /// Replace the instance admin key the token file holds (the server writes the new one to
    /// its `admin-token` and refuses the old one from then on). The answer, with the new
    /// secret, goes to stdout.
    Rotate {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        idempotency: IdempotencyArgs,
    },
    /// List the instance admin keys (ids, creation and revocation times; no secrets).
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Revoke an instance admin key by id (refused for the last one not revoked).
    Revoke {
        /// The key's id (`ak_…`).
        #[arg(long, value_name = "ID")]
        key_id: String,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        idempotency: IdempotencyArgs,
    },
    /// Break glass, with the server stopped: revoke every instance admin key and write a new
    /// one to `<data-dir>/admin-token`. For a lost or compromised admin token.
    Reset {
        /// The server's data directory.
        #[arg(long, env = "ALLOWLY_DATA_DIR", default_value = "./allowly-data", value_name = "DIR")]
        data_dir: PathBuf,
    },
}

/// Runs `allowly workspace-key …`; returns what to print.
pub fn workspace_key(cmd: WorkspaceKeyCommand) -> Result<String, Error> {
    match cmd {
        WorkspaceKeyCommand::Rotate { workspace, server, idempotency } => {
            if !crate::extract::valid_path_id(&workspace) {
                return Err(invalid(format!("not a workspace id: {workspace:?}")));
            }
            server.post(&format!("/v1/workspaces/{workspace}/keys/rotate"), &idempotency.key()?)
        }
        WorkspaceKeyCommand::Migrate { workspace, to, signer_dir, signer_bin, server, idempotency } => {
            if !crate::extract::valid_path_id(&workspace) {
                return Err(invalid(format!("not a workspace id: {workspace:?}")));
            }
            let bin = crate::signer_child::find_binary(signer_bin).map_err(Error::signer)?;
            let (key_id, held_by) = active_key(&bin, &signer_dir, &workspace)?;
            if held_by == to.name() {
                let done = serde_json::json!({ "workspace_id": workspace, "active_key_id": key_id, "keystore": held_by, "rotated": false });
                return Ok(done.to_string());
            }
            // Derived from the key being replaced: the same command run again after a lost
            // answer repeats this rotation (and finds the key moved), never makes a second one.
            let key = idempotency.idempotency_key.unwrap_or_else(|| format!("migrate-{workspace}-{key_id}"));
            let answer = server.post(&format!("/v1/workspaces/{workspace}/keys/rotate"), &key)?;
            let (new_id, now_in) = active_key(&bin, &signer_dir, &workspace)?;
            if now_in != to.name() {
                return Err(invalid(format!(
                    "the key of {workspace} was rotated ({key_id} -> {new_id}), but the signer made the new key in its {now_in} key store, not {}: start it with --signer-keystore {} --signer-previous-keystore {held_by} and run this again",
                    to.name(),
                    to.name()
                )));
            }
            Ok(answer)
        }
    }
}

/// The active key of `ws` in signer directory `dir` and the key store holding it, as
/// `allowly-signer keys` reads them from the key files.
fn active_key(bin: &Path, dir: &Path, ws: &str) -> Result<(String, String), Error> {
    let out = std::process::Command::new(bin)
        .args(["keys", "--workspace", ws, "--dir"])
        .arg(dir)
        .output()
        .map_err(|source| Error::Io { what: format!("running {} keys", bin.display()), source })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        return Err(invalid(format!("reading the keys of {ws} in {}: {}", dir.display(), why.trim())));
    }
    let listed: serde_json::Value = serde_json::from_str(text.trim())
        .map_err(|e| invalid(format!("{} keys printed {text:?}: {e}", bin.display())))?;
    let active = listed["keys"].as_array().into_iter().flatten().find(|k| k["status"] == "active");
    match active.map(|k| (k["key_id"].as_str(), k["keystore"].as_str())) {
        Some((Some(id), Some(store))) => Ok((id.to_owned(), store.to_owned())),
        _ => Err(invalid(format!("{ws} has no active key in {}", dir.display()))),
    }
}

/// Runs `allowly admin-key …`; returns what to print.
pub fn admin_key(cmd: AdminKeyCommand) -> Result<String, Error> {
    match cmd {
        // The token is read once: a repeat of a rotation must bear the key it revoked (the
        // server has written the new one to the file by then).
        AdminKeyCommand::Rotate { server, idempotency } => server.post("/v1/admin-key/rotate", &idempotency.key()?),
        AdminKeyCommand::List { server } => server.call("GET", "/v1/admin-keys", None),
        AdminKeyCommand::Revoke { key_id, server, idempotency } => {
            if !crate::extract::valid_path_id(&key_id) {
                return Err(invalid(format!("not a key id: {key_id:?}")));
            }
            server.post(&format!("/v1/admin-keys/{key_id}/revoke"), &idempotency.key()?)
        }
        AdminKeyCommand::Reset { data_dir } => reset(&data_dir),
    }
}

/// Offline reset: RocksDB's lock refuses it while a server has the store open.
fn reset(data_dir: &Path) -> Result<String, Error> {
    let db = data_dir.join(DB_DIR);
    if !db.is_dir() {
        return Err(invalid(format!("{} is not a data directory (no {DB_DIR}/)", data_dir.display())));
    }
    // A `db/` without a RocksDB database: a server on PostgreSQL (started as root it still
    // creates an empty `db/`), or one never started. Opening it would create an empty RocksDB,
    // reset keys no server reads, and overwrite the token of the live ones.
    if !db.join("CURRENT").is_file() {
        return Err(invalid(format!(
            "{} holds no RocksDB database: `admin-key reset` works on a RocksDB data directory only \
             (not yet on a server on PostgreSQL: docs/postgres.md)",
            db.display()
        )));
    }
    let store = allowly_store_rocks::RocksStore::open(&db, allowly_store_rocks::RocksOptions::default())
        .map_err(|source| Error::Store { path: format!("{} (is the server still running?)", db.display()), source })?;
    let (created, revoked) = allowly_engine::reset_instance_admin_keys(&store)
        .map_err(|source| Error::Engine { what: "resetting the instance admin keys", source })?;
    drop(store);
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    crate::admin_token::replace(&path, &created.secret)
        .map_err(|source| Error::Io { what: format!("writing {}", path.display()), source })?;
    give_back(&db, &path).map_err(|source| Error::Io { what: format!("chown of {}", db.display()), source })?;
    Ok(format!("revoked {revoked} instance admin key(s); the new one, {}, is in {}", created.key.id, path.display()))
}

/// Run as root on a data directory whose `db/` belongs to another user (the server's, when it
/// isolates itself): what this command created in `db/`, and the token file, go to that user,
/// or the server could not open them at its next start.
fn give_back(db: &Path, token: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let owner = std::fs::metadata(db)?;
    let (uid, gid) = (owner.uid(), owner.gid());
    if uid == 0 {
        return Ok(());
    }
    for entry in std::fs::read_dir(db)? {
        let path = entry?.path();
        if std::fs::symlink_metadata(&path)?.uid() != uid {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        }
    }
    std::os::unix::fs::chown(token, Some(uid), Some(gid))
}

fn invalid(what: String) -> Error {
    Error::Io { what, source: std::io::Error::from(std::io::ErrorKind::InvalidInput) }
}

/// How long one call may take (a rotation waits for the signer).
const TIMEOUT: Duration = Duration::from_secs(60);
/// Pauses before the second and third sending of a request whose answer was lost (then the
/// command gives up, printing the key to repeat it with).
const RESEND_AFTER: [Duration; 2] = [Duration::from_millis(250), Duration::from_secs(1)];

impl ServerArgs {
    fn token(&self) -> Result<String, Error> {
        let path = self.token_file.clone().unwrap_or_else(|| Path::new("./allowly-data").join(ADMIN_TOKEN_FILE));
        let text = std::fs::read_to_string(&path)
            .map_err(|source| Error::Io { what: format!("reading {}", path.display()), source })?;
        Ok(text.trim().to_owned())
    }

    /// `method path` with no body, with `Idempotency-Key: key` if given; the answer's body when
    /// it is a 2xx.
    fn call(&self, method: &str, path: &str, key: Option<&str>) -> Result<String, Error> {
        let auth = format!("Bearer {}", self.token()?);
        let mut headers = vec![("Authorization", auth.as_str())];
        headers.extend(key.map(|k| ("Idempotency-Key", k)));
        let request = crate::http_client::Request {
            url: &self.api.url,
            ca_file: self.api.ca_file.as_deref(),
            method,
            path,
            headers: &headers,
            timeout: TIMEOUT,
        };
        let mut pauses = RESEND_AFTER.iter();
        loop {
            match request.send() {
                // Only a keyed request is sent again: the server answers the repeat with the
                // first outcome, so a lost answer never makes the command act twice.
                Err(e) if key.is_some() && crate::http_client::answer_lost(&e) => match pauses.next() {
                    Some(pause) => {
                        eprintln!("allowly: no answer ({e}); sending the request again with the same Idempotency-Key");
                        std::thread::sleep(*pause);
                    }
                    None => return Err(e),
                },
                other => return other,
            }
        }
    }

    /// A bodyless `POST path` carrying `Idempotency-Key: key` (told on stderr, so the command can
    /// be repeated with it), sent again if its answer is lost.
    fn post(&self, path: &str, key: &str) -> Result<String, Error> {
        eprintln!("allowly: Idempotency-Key {key} (repeat with --idempotency-key {key} to get this answer again)");
        self.call("POST", path, Some(key))
    }
}
