//! Workspace keys: where their private halves are made, kept and used ([`KeyBackend`]), and
//! their public record (`<dir>/keys/<ws>.json`: key ids, public keys, validity windows, and
//! where each private half is), written atomically.
//!
//! Two backends: [`FileBackend`] (the default) generates keys here and seals them with
//! XChaCha20-Poly1305 under the master key into the key file; the PKCS#11 backend
//! ([`crate::pkcs11`]) has a token generate them as non-extractable keys and sign with them, and
//! the key file records only which token object each key is. Either way the files hold public
//! data, ciphertext or object ids only.

use std::any::Any;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use allowly_receipt::note::{self, NoteVerifier};
use allowly_receipt::types::log_origin;
use allowly_signer_proto::KeyInfo;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Result, SignerError};
use crate::hardening::{random_bytes, take_env_var, LockedBytes, LockedSigningKey};

/// A workspace's private key as the signer uses it: it can say its public key and sign, and
/// offers no way to read the private half (which may not even be in this process).
pub trait WorkspaceKey: Any + Send + Sync + std::fmt::Debug {
    /// The Ed25519 public key, as published.
    fn public_key(&self) -> VerifyingKey;
    /// An Ed25519 signature of `msg` (the signer passes only checkpoint note text).
    fn sign(&self, msg: &[u8]) -> Result<[u8; 64]>;
}

impl WorkspaceKey for LockedSigningKey {
    fn public_key(&self) -> VerifyingKey {
        self.verifying_key()
    }
    fn sign(&self, msg: &[u8]) -> Result<[u8; 64]> {
        Ok(LockedSigningKey::sign(self, msg).to_bytes())
    }
}

/// A plain in-memory key: for benchmarks and tests of the signing path (never used by the
/// signer's own backends, which lock their keys or keep them on a token).
impl WorkspaceKey for ed25519_dalek::SigningKey {
    fn public_key(&self) -> VerifyingKey {
        self.verifying_key()
    }
    fn sign(&self, msg: &[u8]) -> Result<[u8; 64]> {
        Ok(ed25519_dalek::Signer::sign(self, msg).to_bytes())
    }
}

/// Where a key's private half is, as its key file records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// The seed, sealed under the master key (base64 nonce and ciphertext): [`FileBackend`].
    Sealed { nonce: String, sealed_seed: String },
    /// A key pair on a PKCS#11 token, by its `CKA_ID` (hex): [`crate::pkcs11::TokenBackend`].
    Token { object_id: String },
}

impl KeyRef {
    /// The backend kind that can open it (as [`KeyBackend::kind`] says).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sealed { .. } => "file",
            Self::Token { .. } => "pkcs11",
        }
    }
}

/// A key pair a backend just generated: the key to sign with, its C2SP key id (hex), and what
/// the key file is to record about its private half.
#[derive(Debug)]
pub struct Generated {
    pub key: Box<dyn WorkspaceKey>,
    pub key_id: String,
    pub stored: KeyRef,
}

/// Where workspace keys are generated, kept and used. The [`KeyStore`] keeps the public record
/// (key files, windows, rotation) and asks its backend for the private halves.
pub trait KeyBackend: Send + Sync + std::fmt::Debug {
    /// `"file"` or `"pkcs11"`: for logs and for refusing a key the other backend made.
    fn kind(&self) -> &'static str;
    /// Generates a key pair for `ws` (`when`: `create` or `rotate`, for logs). The private half
    /// never leaves the backend in the clear. A backend that makes something outside the key
    /// file (a token object) calls `intent` with its reference first, so a crash before the
    /// key is recorded leaves a trace ([`KeyStore::destroy_orphans`]).
    fn generate(
        &self,
        ws: &str,
        when: &'static str,
        intent: &mut dyn FnMut(&KeyRef) -> Result<()>,
    ) -> Result<Generated>;
    /// Opens the key `key_id` of `ws` recorded as `stored`, whose public key must be `public`.
    fn open(
        &self,
        ws: &str,
        key_id: &str,
        public: &[u8; 32],
        stored: &KeyRef,
        when: &'static str,
    ) -> Result<Box<dyn WorkspaceKey>>;
    /// Destroys what `stored` refers to outside the key file (a token's objects with its
    /// `CKA_ID`; nothing for a sealed key); how many objects there were.
    fn destroy(&self, stored: &KeyRef) -> Result<usize>;
    /// Destroys the private half of a retired key kept outside the key file (a token's private
    /// key object with its `CKA_ID`), so it can never sign again; its public key stays
    /// published. Nothing for a sealed key (deleting the master key erases those). How many
    /// objects there were.
    fn destroy_private(&self, _stored: &KeyRef) -> Result<usize> {
        Ok(0)
    }
    /// Whether keys can be used now (`Ping` answers with this): an error while a token is gone.
    fn check(&self) -> Result<()>;

    /// Destroys a generated key that was never recorded (its creation or rotation failed
    /// afterwards). Best effort: a failure is logged, never fatal (the intent stays, and the
    /// next start tries again).
    fn discard(&self, ws: &str, stored: &KeyRef) {
        match self.destroy(stored) {
            Ok(0) => {}
            Ok(objects) => tracing::info!(workspace = ws, objects, "deleted an unrecorded key from its key store"),
            Err(e) => tracing::warn!(workspace = ws, error = %e, "could not delete an unrecorded key"),
        }
    }
}

/// Signs `text` as a C2SP note of key name `name` with `key` (wherever it is): what
/// `allowly_receipt::note::sign_note` does for an in-memory key.
pub fn sign_note(text: &str, name: &str, key: &dyn WorkspaceKey) -> Result<String> {
    // Checked before the key is used: nothing invalid is ever signed.
    note::validate_note_text(text)?;
    note::validate_key_name(name)?;
    let id = note::key_id(name, &key.public_key());
    let sig = key.sign(text.as_bytes())?;
    Ok(note::note_with_signature(text, name, id, &sig)?)
}

/// The C2SP key id (hex) of `key` as a key of `ws`'s log; refuses keys a verifier would refuse
/// (small order, non-canonical).
pub(crate) fn key_id_hex(ws: &str, key: VerifyingKey) -> Result<String> {
    Ok(hex::encode(NoteVerifier::new(&log_origin(ws), key)?.key_id()))
}

/// Environment variable that may carry the master key (64 hex digits) instead of a file.
pub const MASTER_KEY_ENV: &str = "ALLOWLY_SIGNER_MASTER_KEY";

/// The key that seals every workspace key: 32 bytes in locked, dump-excluded memory, zeroed on
/// drop. It is written there directly from the file or the environment (no other copy is made).
pub struct MasterKey(LockedBytes<32>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// Longest master key text accepted: 64 hex digits plus surrounding whitespace.
const MASTER_TEXT_MAX: usize = 128;

fn parse_master_hex(text: &[u8]) -> Result<MasterKey> {
    let mut key = LockedBytes::<32>::new();
    let t = text.trim_ascii();
    if t.len() != 64 || hex::decode_to_slice(t, &mut key[..]).is_err() {
        return Err(SignerError::MasterKey("expected 64 hex digits".into()));
    }
    Ok(MasterKey(key))
}

impl MasterKey {
    /// Reads a master key file: it must be a regular file owned by this user with no group or
    /// other permissions (mode 0600 or stricter). The text is read into locked memory.
    pub fn from_file(path: &Path) -> Result<Self> {
        use std::io::Read as _;
        let meta = fs::metadata(path).map_err(|e| SignerError::MasterKey(format!("{}: {e}", path.display())))?;
        if !meta.is_file() || meta.mode() & 0o077 != 0 {
            return Err(SignerError::MasterKey(format!("{} must be a file of mode 0600", path.display())));
        }
        if meta.uid() != rustix::process::geteuid().as_raw() {
            return Err(SignerError::MasterKey(format!("{} is not owned by this user", path.display())));
        }
        let mut text = LockedBytes::<{ MASTER_TEXT_MAX + 1 }>::new();
        let mut f = File::open(path)?;
        let mut n = 0;
        loop {
            match f.read(&mut text[n..])? {
                0 => break,
                k => n += k,
            }
            if n == text.len() {
                return Err(SignerError::MasterKey(format!("{}: expected 64 hex digits", path.display())));
            }
        }
        let key = parse_master_hex(&text[..n]);
        crate::hardening::scrub_stack();
        key
    }

    /// Reads the master key from [`MASTER_KEY_ENV`], if set, and scrubs it from the process
    /// environment (the array and the bytes themselves; see [`take_env_var`]). Call while the
    /// process has one thread.
    pub fn from_env() -> Option<Result<Self>> {
        let key = take_env_var(MASTER_KEY_ENV, parse_master_hex);
        crate::hardening::scrub_stack();
        key
    }

    /// Creates a new random master key file (mode 0600); fails if it exists. For development
    /// set-ups; production provisions the key from its secret store.
    pub fn create_file(path: &Path) -> Result<Self> {
        let mut key = LockedBytes::<32>::new();
        getrandom::getrandom(&mut key[..]).map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut text = LockedBytes::<65>::new();
        hex::encode_to_slice(&key[..], &mut text[..64]).map_err(|e| SignerError::MasterKey(e.to_string()))?;
        text[64] = b'\n';
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
        f.write_all(&text[..])?;
        f.sync_all()?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))?;
        Ok(Self(key))
    }

    /// Whether the key's memory is locked in RAM.
    pub fn is_locked(&self) -> bool {
        self.0.is_locked()
    }

    /// Runs `f` with an AEAD keyed by the master key. The cipher holds a copy of the key (zeroed
    /// when it drops); building it in a frame of its own and overwriting that stack space
    /// afterwards ([`scrub_stack`](crate::hardening::scrub_stack)) also clears the temporaries
    /// the compiler made on the way, so no copy outlives the call.
    fn with_cipher<R>(&self, f: impl FnOnce(&XChaCha20Poly1305) -> R) -> R {
        #[inline(never)]
        fn keyed<R>(key: &[u8; 32], f: impl FnOnce(&XChaCha20Poly1305) -> R) -> R {
            let cipher = XChaCha20Poly1305::new(key.into());
            f(&cipher)
        }
        let out = keyed(&self.0, f);
        crate::hardening::scrub_stack();
        out
    }
}

/// What to do when key memory cannot be locked (`mlock` fails, e.g. `RLIMIT_MEMLOCK` used up):
/// every failure is counted and logged where it happens; with `required` the operation fails.
#[derive(Debug, Clone)]
pub struct MlockPolicy {
    /// `allowly_signer_mlock_failures_total`.
    pub failures: prometheus::IntCounter,
    /// `--require-mlock`: refuse instead of going on with unlocked key memory.
    pub required: bool,
}

impl Default for MlockPolicy {
    /// A counter of its own (registered nowhere); not required.
    fn default() -> Self {
        let failures = prometheus::IntCounter::new("allowly_signer_mlock_failures_total", "unregistered")
            .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        Self { failures, required: false }
    }
}

impl MlockPolicy {
    /// Counts and logs an unlocked secret (`what`: master key, or a workspace key at creation,
    /// rotation or load); an error if locking is required.
    pub fn check(&self, locked: bool, what: &'static str, ws: Option<&str>) -> Result<()> {
        if locked {
            return Ok(());
        }
        self.failures.inc();
        tracing::warn!(
            what,
            workspace = ws.unwrap_or("-"),
            required = self.required,
            "key memory could not be locked (mlock failed: RLIMIT_MEMLOCK too small or used up); \
             the key could be swapped to disk"
        );
        if self.required {
            return Err(SignerError::MemoryLock(what));
        }
        Ok(())
    }
}

/// One key as stored: public metadata in clear, and where its private half is: the seed sealed
/// (`nonce`, `sealed_seed`) or a token object (`token_object`, its `CKA_ID` in hex).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKey {
    key_id: String,
    public_key: String,
    not_before_ms: u64,
    not_after_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_seed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_object: Option<String>,
    /// Made by a rotation whose `key.rotated` leaf never reached the log (the token was lost,
    /// or the signer stopped, between the key file and the leaf's signature): not in the
    /// published key set and never used to sign, but recorded (so not an orphan) and kept for
    /// the workspace's next rotation, which uses it instead of generating another key. Its
    /// window is meaningless until then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pending: bool,
    /// A retired token key whose private key object was destroyed, once the workspace's keys
    /// moved to sealed files ([`KeyStore::destroy_retired_token_keys`]). Its public key stays.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    private_destroyed: bool,
}

impl StoredKey {
    fn new(key_id: String, public_key: &VerifyingKey, now_ms: u64, stored: KeyRef) -> Self {
        let mut k = Self {
            key_id,
            public_key: B64.encode(public_key.as_bytes()),
            not_before_ms: now_ms,
            not_after_ms: None,
            nonce: None,
            sealed_seed: None,
            token_object: None,
            pending: false,
            private_destroyed: false,
        };
        match stored {
            KeyRef::Sealed { nonce, sealed_seed } => (k.nonce, k.sealed_seed) = (Some(nonce), Some(sealed_seed)),
            KeyRef::Token { object_id } => k.token_object = Some(object_id),
        }
        k
    }

    /// The one key that signs (at most one per file): not retired, not pending.
    fn is_active(&self) -> bool {
        self.not_after_ms.is_none() && !self.pending
    }

    /// Where the private half is: exactly one of the two forms, complete.
    fn key_ref(&self, ws: &str) -> Result<KeyRef> {
        match (&self.nonce, &self.sealed_seed, &self.token_object) {
            (Some(n), Some(s), None) => Ok(KeyRef::Sealed { nonce: n.clone(), sealed_seed: s.clone() }),
            (None, None, Some(o)) => Ok(KeyRef::Token { object_id: o.clone() }),
            _ => Err(SignerError::Corrupt(format!(
                "key {} of {ws}: no (or more than one) private key reference",
                self.key_id
            ))),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    workspace_id: String,
    keys: Vec<StoredKey>,
}

/// A workspace's keys in memory: every public key with its window, and the one active key.
#[derive(Debug)]
pub struct WorkspaceKeys {
    pub infos: Vec<KeyInfo>,
    pub active: Box<dyn WorkspaceKey>,
}

impl WorkspaceKeys {
    /// The active key's C2SP key id.
    pub fn active_key_id(&self) -> [u8; 4] {
        self.infos.iter().find(|k| k.active).map(|k| k.key_id).unwrap_or_default()
    }
}

/// A workspace's first key, generated but not recorded yet (public data and ciphertext or a
/// token object id, like the file it becomes). Give it to [`KeyStore::commit_new`], or to
/// [`KeyStore::discard`] if the creation fails before that.
#[derive(Debug)]
pub struct NewKeys {
    file: KeyFile,
}

impl NewKeys {
    /// The new key's C2SP key id, hex.
    pub fn key_id(&self) -> &str {
        self.file.keys.first().map(|k| k.key_id.as_str()).unwrap_or_default()
    }
}

/// The key store: public records in `<dir>/keys/<workspace>.json`, private halves in its
/// [`KeyBackend`] — and, while a signer moves from one backend to the other, keys not yet
/// rotated onto it in the *previous* backend, which only opens them (see
/// [`KeyStore::with_previous`]).
#[derive(Debug)]
pub struct KeyStore {
    dir: PathBuf,
    /// `<dir>/keys-pending/`: an intent per key being made outside the key file (see
    /// [`KeyStore::destroy_orphans`]). Not in the key directory, so a backup (which copies
    /// `keys/`) never carries one into another signer's start.
    pending: PathBuf,
    backend: Box<dyn KeyBackend>,
    previous: Option<Box<dyn KeyBackend>>,
}

/// Directory of the intents, under the signer's directory.
pub const PENDING_DIR: &str = "keys-pending";

/// An intent: a key about to be made outside the key file, for `workspace_id`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Intent {
    workspace_id: String,
    /// [`KeyRef::kind`] of the reference.
    keystore: String,
    object_id: String,
}

/// One key as `allowly-signer keys` lists it (public data only).
#[derive(Debug, Clone, Serialize)]
pub struct KeyListing {
    pub key_id: String,
    /// `active`, `retired`, or `pending` (made by a rotation that did not reach the log, kept
    /// for the next one; see `StoredKey::pending`).
    pub status: &'static str,
    /// The backend holding its private half: `file` or `pkcs11` ([`KeyRef::kind`]).
    pub keystore: &'static str,
    pub not_before_ms: u64,
    pub not_after_ms: Option<u64>,
    /// A retired token key whose private key object was destroyed (the workspace moved to
    /// sealed files).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub private_destroyed: bool,
}

/// Whether `ws` has the form of a workspace id (`[A-Za-z0-9_-]{1,128}`, as the protocol's
/// `wsid`): checked before a name read from a file or the command line becomes a path.
fn valid_workspace_id(ws: &str) -> bool {
    !ws.is_empty() && ws.len() <= 128 && ws.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Every workspace's keys under signer directory `dir` (or only `only`'s), by workspace id,
/// read from the key files alone: no backend, no key opened. For `allowly-signer keys` (which
/// `allowly workspace-key migrate` reads) and for the start-up count of keys still in a
/// previous backend.
pub fn list_keys(dir: &Path, only: Option<&str>) -> Result<Vec<(String, Vec<KeyListing>)>> {
    let keys = dir.join("keys");
    let names: Vec<String> = match only {
        Some(ws) if !valid_workspace_id(ws) => {
            return Err(SignerError::InvalidArgument(format!("not a workspace id: {ws:?}")))
        }
        Some(ws) => vec![format!("{ws}.json")],
        // A signer that never created a workspace has no key directory yet.
        None if !keys.is_dir() => Vec::new(),
        None => {
            let mut v = Vec::new();
            for e in fs::read_dir(&keys)? {
                let name = e?.file_name();
                if let Some(n) = name.to_str().filter(|n| n.ends_with(".json")) {
                    v.push(n.to_owned());
                }
            }
            v.sort();
            v
        }
    };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let ws = name.trim_end_matches(".json");
        let bytes = match fs::read(keys.join(&name)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && only.is_some() => {
                return Err(SignerError::UnknownWorkspace)
            }
            Err(e) => return Err(e.into()),
        };
        let file: KeyFile =
            serde_json::from_slice(&bytes).map_err(|e| SignerError::Corrupt(format!("key file of {ws}: {e}")))?;
        let mut listed = Vec::with_capacity(file.keys.len());
        for k in &file.keys {
            listed.push(KeyListing {
                key_id: k.key_id.clone(),
                status: match (k.pending, k.not_after_ms) {
                    (true, _) => "pending",
                    (false, None) => "active",
                    (false, Some(_)) => "retired",
                },
                keystore: k.key_ref(ws)?.kind(),
                not_before_ms: k.not_before_ms,
                not_after_ms: k.not_after_ms,
                private_destroyed: k.private_destroyed,
            });
        }
        out.push((file.workspace_id, listed));
    }
    Ok(out)
}

/// AAD binds a sealed seed to its workspace and key id, so ciphertexts cannot be swapped
/// between workspaces or keys.
fn aad(ws: &str, key_id: &str) -> Vec<u8> {
    format!("allowly-signer/key/v1\0{ws}\0{key_id}").into_bytes()
}

pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically and durably: temp file, fsync, rename, fsync directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

impl KeyStore {
    /// Opens (creating if needed, mode 0700) the key directory, with `backend` for the private
    /// halves.
    pub fn open(dir: &Path, backend: Box<dyn KeyBackend>) -> Result<Self> {
        let pending = dir.join(PENDING_DIR);
        let dir = dir.join("keys");
        for d in [&dir, &pending] {
            fs::create_dir_all(d)?;
            fs::set_permissions(d, fs::Permissions::from_mode(0o700))?;
        }
        Ok(Self { dir, pending, backend, previous: None })
    }

    /// Also opens keys kept by `previous` (the other kind of backend), the one this signer used
    /// before: a workspace whose active key is there signs with it until its next rotation,
    /// which makes the new key with the main backend — moving a workspace between backends is a
    /// key rotation, never a copy of a private key (`allowly workspace-key migrate`). Nothing
    /// new is ever made by `previous`.
    pub fn with_previous(mut self, previous: Box<dyn KeyBackend>) -> Result<Self> {
        if previous.kind() == self.backend.kind() {
            return Err(SignerError::InvalidArgument(format!(
                "the previous key store must be the other kind than {}",
                self.backend.kind()
            )));
        }
        self.previous = Some(previous);
        Ok(self)
    }

    /// The backend's kind (`file`, `pkcs11`).
    pub fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// The previous backend's kind, if there is one.
    pub fn previous_kind(&self) -> Option<&'static str> {
        self.previous.as_ref().map(|b| b.kind())
    }

    /// The backend that holds keys referred to as `r`, if this store has it.
    fn backend_for(&self, r: &KeyRef) -> Option<&dyn KeyBackend> {
        std::iter::once(&self.backend).chain(self.previous.as_ref()).find(|b| b.kind() == r.kind()).map(|b| &**b)
    }

    /// Whether keys can be used now (see [`KeyBackend::check`]): every backend's keys, since
    /// workspaces not yet moved still sign with the previous one's.
    pub fn check(&self) -> Result<()> {
        self.backend.check()?;
        self.previous.as_ref().map_or(Ok(()), |p| p.check())
    }

    fn intent_path(&self, r: &KeyRef) -> Option<PathBuf> {
        match r {
            KeyRef::Token { object_id } => Some(self.pending.join(format!("{}-{object_id}.json", r.kind()))),
            KeyRef::Sealed { .. } => None,
        }
    }

    /// Records, durably, that a key referred to as `r` is about to be made for `ws`.
    fn intend(&self, ws: &str, r: &KeyRef) -> Result<()> {
        let (Some(path), KeyRef::Token { object_id }) = (self.intent_path(r), r) else { return Ok(()) };
        let intent =
            Intent { workspace_id: ws.to_owned(), keystore: r.kind().to_owned(), object_id: object_id.clone() };
        let bytes = serde_json::to_vec(&intent).map_err(|e| SignerError::Corrupt(e.to_string()))?;
        write_atomic(&path, &bytes)?;
        Ok(())
    }

    /// Forgets the intent for `r`: its key is recorded in a key file, or destroyed.
    fn settle(&self, r: &KeyRef) {
        let Some(path) = self.intent_path(r) else { return };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Left behind, it is settled again at the next start (the key file records it).
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not remove a key intent"),
        }
    }

    /// Finds the keys a crash left made but unrecorded — an intent whose key no key file
    /// records: the crash came between the backend's generation (a token's
    /// `C_GenerateKeyPair`) and the key file — and destroys them; returns how many. Such a key
    /// was never published nor used to sign anything released (its only signature is the
    /// backend's probe), so destroying it loses nothing, while keeping it would leave a usable
    /// key nobody accounts for. Only keys named by this signer's own intents are touched: a
    /// token may be shared with other signers, whose keys this one cannot tell from orphans.
    /// Run at start, before serving (a generation in flight would look the same).
    pub fn destroy_orphans(&self) -> Result<usize> {
        let mut destroyed = 0;
        let mut names: Vec<PathBuf> = Vec::new();
        for e in fs::read_dir(&self.pending)? {
            let path = e?.path();
            match path.extension().and_then(|x| x.to_str()) {
                Some("json") => names.push(path),
                // A temp file of an intent whose write did not finish: nothing was generated.
                Some("tmp") => fs::remove_file(&path)?,
                _ => {}
            }
        }
        names.sort();
        for path in names {
            let intent: Intent = match fs::read(&path).map(|b| serde_json::from_slice(&b)) {
                Ok(Ok(i)) => i,
                Ok(Err(e)) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable key intent; left for the operator");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let ws = intent.workspace_id.as_str();
            if !valid_workspace_id(ws) || intent.keystore != "pkcs11" {
                tracing::warn!(path = %path.display(), "key intent names no workspace or key store this signer knows; left for the operator");
                continue;
            }
            let r = KeyRef::Token { object_id: intent.object_id.clone() };
            let recorded = match self.read(ws) {
                Ok(file) => {
                    file.is_some_and(|f| f.keys.iter().any(|k| k.token_object.as_deref() == Some(&intent.object_id)))
                }
                // Not this start's to fail on (the workspace refuses to load by itself), and a
                // key it may record is not deleted on a guess.
                Err(e) => {
                    tracing::warn!(workspace = ws, error = %e, "cannot read the key file a key intent names; left for the next start");
                    continue;
                }
            };
            if recorded {
                self.settle(&r);
                continue;
            }
            let Some(backend) = self.backend_for(&r) else {
                tracing::warn!(workspace = ws, object_id = %intent.object_id, keystore = %intent.keystore, "an unrecorded key of a key store this signer does not open: it is deleted at the next start with that key store");
                continue;
            };
            match backend.destroy(&r) {
                Ok(objects) => {
                    tracing::warn!(workspace = ws, object_id = %intent.object_id, objects, "deleted a key a crash left generated but never recorded (between C_GenerateKeyPair and the key file)");
                    destroyed += usize::from(objects > 0);
                    self.settle(&r);
                }
                Err(e) => {
                    tracing::warn!(workspace = ws, object_id = %intent.object_id, error = %e, "could not delete an unrecorded key; trying again at the next start")
                }
            }
        }
        Ok(destroyed)
    }

    fn path(&self, ws: &str) -> PathBuf {
        self.dir.join(format!("{ws}.json"))
    }

    /// Whether the workspace has keys.
    pub fn exists(&self, ws: &str) -> bool {
        self.path(ws).exists()
    }

    /// A new key made by the main backend (its intent recorded first, if it needs one; settled
    /// by [`Self::recorded`] or [`Self::discard_key`]).
    fn new_key(&self, ws: &str, now_ms: u64, when: &'static str) -> Result<StoredKey> {
        let mut intended = Vec::new();
        let made = self.backend.generate(ws, when, &mut |r| {
            self.intend(ws, r)?;
            intended.push(r.clone());
            Ok(())
        });
        match made {
            Ok(g) => Ok(StoredKey::new(g.key_id, &g.key.public_key(), now_ms, g.stored)),
            Err(e) => {
                // Whatever the generation left behind goes; the intent only once it has.
                for r in &intended {
                    if self.backend.destroy(r).is_ok() {
                        self.settle(r);
                    }
                }
                Err(e)
            }
        }
    }

    /// `k` is in a durable key file now: its intent is settled.
    fn recorded(&self, ws: &str, k: &StoredKey) {
        if let Ok(r) = k.key_ref(ws) {
            self.settle(&r);
        }
    }

    /// Destroys what `k` refers to in its backend (a key that is not, and will not be,
    /// recorded); its intent is settled once that succeeded.
    fn discard_key(&self, ws: &str, k: &StoredKey) {
        let r = match k.key_ref(ws) {
            Ok(r) => r,
            Err(e) => return tracing::warn!(workspace = ws, error = %e, "cannot discard an unrecorded key"),
        };
        let Some(backend) = self.backend_for(&r) else { return };
        match backend.destroy(&r) {
            Ok(objects) => {
                if objects > 0 {
                    tracing::info!(workspace = ws, objects, "deleted an unrecorded key from its key store");
                }
                self.settle(&r);
            }
            Err(e) => {
                tracing::warn!(workspace = ws, error = %e, "could not delete an unrecorded key; its intent stays for the next start")
            }
        }
    }

    fn write(&self, file: &KeyFile) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(file).map_err(|e| SignerError::Corrupt(e.to_string()))?;
        write_atomic(&self.path(&file.workspace_id), &bytes)?;
        Ok(())
    }

    fn read(&self, ws: &str) -> Result<Option<KeyFile>> {
        let bytes = match fs::read(self.path(ws)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let file: KeyFile =
            serde_json::from_slice(&bytes).map_err(|e| SignerError::Corrupt(format!("key file of {ws}: {e}")))?;
        if file.version != 1 || file.workspace_id != ws {
            return Err(SignerError::Corrupt(format!("key file of {ws}: wrong version or workspace")));
        }
        Ok(Some(file))
    }

    fn to_memory(&self, ws: &str, file: &KeyFile, when: &'static str) -> Result<WorkspaceKeys> {
        let mut infos = Vec::with_capacity(file.keys.len());
        let mut active = None;
        // A pending key is neither published nor opened: it has not been logged.
        for k in file.keys.iter().filter(|k| !k.pending) {
            let corrupt = || SignerError::Corrupt(format!("key {} of {ws}", k.key_id));
            let mut key_id = [0u8; 4];
            hex::decode_to_slice(&k.key_id, &mut key_id).map_err(|_| corrupt())?;
            let public_key: [u8; 32] =
                B64.decode(&k.public_key).ok().and_then(|v| v.try_into().ok()).ok_or_else(corrupt)?;
            let is_active = k.not_after_ms.is_none();
            if is_active {
                if active.is_some() {
                    return Err(SignerError::Corrupt(format!("{ws} has two active keys")));
                }
                // Only the active key is opened: retired keys never sign again.
                let stored = k.key_ref(ws)?;
                let backend = self.backend_for(&stored).ok_or_else(|| SignerError::WrongKeyBackend {
                    workspace: ws.to_owned(),
                    key_id: k.key_id.clone(),
                    stored: stored.kind(),
                    serving: self.backend.kind(),
                })?;
                active = Some(backend.open(ws, &k.key_id, &public_key, &stored, when)?);
            }
            infos.push(KeyInfo {
                key_id,
                public_key,
                not_before_ms: k.not_before_ms,
                not_after_ms: k.not_after_ms,
                active: is_active,
            });
        }
        let active = active.ok_or_else(|| SignerError::Corrupt(format!("{ws} has no active key")))?;
        Ok(WorkspaceKeys { infos, active })
    }

    /// Loads a workspace's keys (opening only the active one).
    pub fn load(&self, ws: &str) -> Result<WorkspaceKeys> {
        let file = self.read(ws)?.ok_or(SignerError::UnknownWorkspace)?;
        self.to_memory(ws, &file, "load")
    }

    /// Creates the workspace's first key. Fails with `WorkspaceExists` if it has one.
    pub fn create(&self, ws: &str, now_ms: u64) -> Result<WorkspaceKeys> {
        let new = self.prepare(ws, now_ms)?;
        self.commit_new(new)
    }

    /// Generates a workspace's first key without recording it, so its key id can go into the
    /// journal's `created` record before the key file exists: a key file without a log record
    /// would refuse to load forever.
    pub fn prepare(&self, ws: &str, now_ms: u64) -> Result<NewKeys> {
        let stored = self.new_key(ws, now_ms, "create")?;
        Ok(NewKeys { file: KeyFile { version: 1, workspace_id: ws.to_owned(), keys: vec![stored] } })
    }

    /// Gives up keys from [`Self::prepare`] that will not be committed (a token deletes the
    /// key pair it made; sealed keys simply vanish).
    pub fn discard(&self, new: NewKeys) {
        for k in &new.file.keys {
            self.discard_key(&new.file.workspace_id, k);
        }
    }

    /// Stores keys from [`Self::prepare`] and loads them. Fails with `WorkspaceExists` if the
    /// workspace has keys.
    pub fn commit_new(&self, new: NewKeys) -> Result<WorkspaceKeys> {
        match self.write_new(&new.file) {
            Ok(()) => {}
            Err(e) => {
                self.discard(new);
                return Err(e);
            }
        }
        let ws = new.file.workspace_id.as_str();
        for k in &new.file.keys {
            self.recorded(ws, k);
        }
        let file = self.read(ws)?.ok_or(SignerError::UnknownWorkspace)?;
        self.to_memory(ws, &file, "create")
    }

    /// Writes a new workspace's key file; `WorkspaceExists` if it has one.
    fn write_new(&self, file: &KeyFile) -> Result<()> {
        let ws = file.workspace_id.as_str();
        let bytes = serde_json::to_vec_pretty(file).map_err(|e| SignerError::Corrupt(e.to_string()))?;
        // create_new: two concurrent creations cannot both succeed.
        let tmp = self.dir.join(format!("{ws}.json.new"));
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        match fs::hard_link(&tmp, self.path(ws)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = fs::remove_file(&tmp);
                return Err(SignerError::WorkspaceExists);
            }
            Err(e) => return Err(e.into()),
        }
        fs::remove_file(&tmp)?;
        sync_dir(&self.dir)?;
        Ok(())
    }

    /// Retires the active key at `now_ms` and makes a new one active from `now_ms`. The old
    /// public key stays in the file with its end time. Durable before it returns.
    ///
    /// The new key is the workspace's pending key if it has one in the main backend (made by
    /// a rotation that did not reach the log, see [`Self::unrotate`]), else a new one: however
    /// often a rotation is repeated, it makes one key. A pending key the backend cannot open
    /// while the backend itself is fine (its token objects deleted by hand) is dropped and a
    /// new key made; while the backend is not fine (the token lost) the rotation fails.
    pub fn rotate(&self, ws: &str, now_ms: u64) -> Result<WorkspaceKeys> {
        let mut file = self.read(ws)?.ok_or(SignerError::UnknownWorkspace)?;
        let reused = self.take_pending(ws, &mut file)?;
        for k in file.keys.iter_mut().filter(|k| k.is_active()) {
            k.not_after_ms = Some(now_ms);
        }
        let made = reused.is_none();
        let mut stored = match reused {
            Some(k) => k,
            None => self.new_key(ws, now_ms, "rotate")?,
        };
        (stored.pending, stored.not_before_ms, stored.not_after_ms) = (false, now_ms, None);
        file.keys.push(stored.clone());
        if let Err(e) = self.write(&file) {
            if made {
                self.discard_key(ws, &stored);
            }
            return Err(e);
        }
        self.recorded(ws, &stored);
        self.to_memory(ws, &file, "rotate").inspect_err(|_| {
            // Recorded but not usable (the token went away since): the workspace's previous
            // key signs on, and the next rotation tries this key again.
            if let Err(e) = self.unrotate(ws) {
                tracing::error!(workspace = ws, error = %e, "could not put a failed rotation's key aside");
            }
        })
    }

    /// Takes the workspace's pending key of the main backend out of `file`, for a rotation to
    /// use, if it has one that opens. See [`Self::rotate`].
    fn take_pending(&self, ws: &str, file: &mut KeyFile) -> Result<Option<StoredKey>> {
        let kind = self.backend.kind();
        let Some(i) = file.keys.iter().position(|k| k.pending && k.key_ref(ws).is_ok_and(|r| r.kind() == kind)) else {
            return Ok(None);
        };
        let k = &file.keys[i];
        let stored = k.key_ref(ws)?;
        let public: [u8; 32] = B64
            .decode(&k.public_key)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| SignerError::Corrupt(format!("key {} of {ws}", k.key_id)))?;
        match self.backend.open(ws, &k.key_id, &public, &stored, "rotate") {
            Ok(_) => {
                tracing::info!(workspace = ws, key_id = %k.key_id, "a rotation uses the key an earlier, unlogged attempt made");
                Ok(Some(file.keys.remove(i)))
            }
            Err(e) if self.backend.check().is_ok() => {
                tracing::warn!(workspace = ws, key_id = %k.key_id, error = %e, "the pending key of an unlogged rotation does not open on a working key store; dropping it and making a new key");
                let dropped = file.keys.remove(i);
                // Intended first: whatever is left of it is found at a start if this fails.
                self.intend(ws, &stored)?;
                self.write(file)?;
                self.discard_key(ws, &dropped);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Puts the last rotation of `ws` aside: its key, which never signed its `key.rotated`
    /// leaf, becomes pending (kept for the next rotation, see [`Self::rotate`]) and the key it
    /// replaced is active again, as if the rotation had not happened. For a rotation whose leaf
    /// could not be signed or logged, so the key file never names a key the log does not.
    /// Nothing to do if the active key replaced none.
    pub fn unrotate(&self, ws: &str) -> Result<()> {
        let mut file = self.read(ws)?.ok_or(SignerError::UnknownWorkspace)?;
        let Some(new) = file.keys.iter().position(StoredKey::is_active) else { return Ok(()) };
        let since = file.keys[new].not_before_ms;
        let Some(old) = file.keys.iter().position(|k| !k.pending && k.not_after_ms == Some(since)) else {
            return Ok(());
        };
        file.keys[old].not_after_ms = None;
        file.keys[new].pending = true;
        // One pending key at most: the one this rotation made (an older one of the other
        // backend, if any, stays too; it is used when that backend makes keys again).
        let k = file.keys.remove(new);
        file.keys.push(k);
        self.write(&file)?;
        tracing::warn!(workspace = ws, key_id = %file.keys.last().map_or("", |k| k.key_id.as_str()), "a rotation did not reach the log; its key is kept aside for the next rotation and the previous key signs on");
        Ok(())
    }

    /// Destroys the private key objects of `ws`'s retired token keys once its keys are in
    /// sealed files: this signer makes file keys and the active key is one. Call only once that
    /// key's rotation is durable in the log (its `key.rotated` leaf journaled): from then on
    /// no retired key signs again, and one left on the token would be a usable signing key of
    /// the workspace that nothing needs — outside the signer's own files, where deleting the
    /// master key cannot erase it. The public keys stay in the key file and the published key
    /// set, so receipts they signed still verify. Each destroyed key is marked in the key file
    /// (done once); a key whose token is not open or does not answer is left for the
    /// workspace's next rotation. How many private key objects were destroyed.
    pub fn destroy_retired_token_keys(&self, ws: &str) -> Result<usize> {
        let mut file = self.read(ws)?.ok_or(SignerError::UnknownWorkspace)?;
        let moved = self.backend.kind() == "file"
            && file.keys.iter().any(|k| k.is_active() && k.key_ref(ws).is_ok_and(|r| r.kind() == "file"));
        if !moved {
            return Ok(0);
        }
        let (mut destroyed, mut marked) = (0, false);
        for k in file.keys.iter_mut().filter(|k| k.not_after_ms.is_some() && !k.pending && !k.private_destroyed) {
            let r = k.key_ref(ws)?;
            let (KeyRef::Token { .. }, Some(backend)) = (&r, self.backend_for(&r)) else { continue };
            match backend.destroy_private(&r) {
                Ok(objects) => {
                    tracing::info!(workspace = ws, key_id = %k.key_id, objects, "destroyed a retired key's private key object on the token (the workspace's keys are in sealed files now)");
                    destroyed += objects;
                    (k.private_destroyed, marked) = (true, true);
                }
                Err(e) => {
                    tracing::warn!(workspace = ws, key_id = %k.key_id, error = %e, "could not destroy a retired key on the token; trying again at the workspace's next rotation")
                }
            }
        }
        if marked {
            self.write(&file)?;
        }
        Ok(destroyed)
    }

    /// Loads a workspace's keys for its log, whose last signed checkpoint is `checkpoint`: if
    /// the active key replaced another and did not sign that checkpoint (or the log is empty),
    /// its rotation never reached the log — the signer stopped between the key file and the
    /// `key.rotated` leaf — and it is put aside ([`Self::unrotate`]) before the keys load, so
    /// the workspace signs with the key its log last used and the engine's repeat of the
    /// rotation uses this key.
    pub fn load_for_log(&self, ws: &str, checkpoint: Option<&str>) -> Result<WorkspaceKeys> {
        let file = self.read(ws)?.ok_or(SignerError::UnknownWorkspace)?;
        let active = file.keys.iter().find(|k| k.is_active());
        let rotated = active.is_some_and(|a| file.keys.iter().any(|k| k.not_after_ms == Some(a.not_before_ms)));
        let logged = match (active, checkpoint) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(cp)) => note::parse_signed_note(cp)
                .map_err(|e| SignerError::Corrupt(format!("the last checkpoint of {ws}: {e}")))?
                .signatures
                .iter()
                .any(|s| hex::encode(s.key_id) == a.key_id),
        };
        if rotated && !logged {
            self.unrotate(ws)?;
            return self.load(ws);
        }
        self.to_memory(ws, &file, "load")
    }
}

/// Moving a workspace's keys to another signer (`ExportKeys` / `ImportKeys`, issue 16 part 3):
/// the key file's bytes travel, and they hold public data, ciphertext and token object ids only.
impl KeyStore {
    /// The workspace's key record: the bytes of its key file, as stored (checked to parse as
    /// one, for this workspace, and to fit the protocol's bound).
    pub fn export(&self, ws: &str) -> Result<Vec<u8>> {
        let bytes = match fs::read(self.path(ws)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SignerError::UnknownWorkspace),
            Err(e) => return Err(e.into()),
        };
        let file: KeyFile =
            serde_json::from_slice(&bytes).map_err(|e| SignerError::Corrupt(format!("key file of {ws}: {e}")))?;
        if file.version != 1 || file.workspace_id != ws {
            return Err(SignerError::Corrupt(format!("key file of {ws}: wrong version or workspace")));
        }
        if bytes.len() > allowly_signer_proto::MAX_KEY_RECORD_LEN {
            return Err(SignerError::KeyRecordRefused(format!(
                "the key record of {ws} is {} bytes, more than the protocol carries",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// Installs `record`, a key record another signer exported ([`Self::export`]), as `ws`'s
    /// key file, atomically and synced. The caller is the (possibly compromised) service, so
    /// the record is refused (`KeyRecordRefused`, nothing written) unless
    ///
    /// * it parses as a key file (unknown members refused) of version 1 naming `ws`, within the
    ///   protocol's size bound;
    /// * every key's id is the C2SP key id of its public key under `ws`'s log origin, no id
    ///   twice, and its private half is exactly one reference;
    /// * every key whose private half this signer can reach opens and matches its public key: a
    ///   sealed seed under this signer's master key with `ws` and the key id as associated data
    ///   (so another workspace's or key's sealed seed swapped in does not open), a token object
    ///   with that public key; the active key must be reachable (else `KeyStoreNotOpen`);
    /// * the published keys' windows are consistent: in file order, each retired key's window
    ///   ends where the next begins or before, and the last key is the one active key;
    /// * it keeps every key this signer already has for `ws` (same id, public key, start and
    ///   private half; its end unchanged, or set where the installed record left it open: the
    ///   rotation that retired it), and every key it adds starts no earlier than the latest
    ///   installed key. A key installed only as `pending` (a rotation that never reached this
    ///   signer's log) may be dropped or become published.
    ///
    /// Returns whether anything was written (`false`: the same record was installed already).
    /// Token errors while opening a key are `TokenUnavailable`, not refusals, while the token
    /// itself does not answer.
    pub fn import(&self, ws: &str, record: &[u8]) -> Result<bool> {
        let refuse = |why: String| SignerError::KeyRecordRefused(why);
        if record.len() > allowly_signer_proto::MAX_KEY_RECORD_LEN {
            return Err(refuse(format!("{} bytes, more than a key record may be", record.len())));
        }
        let file: KeyFile = serde_json::from_slice(record).map_err(|e| refuse(format!("does not parse: {e}")))?;
        if file.version != 1 {
            return Err(refuse(format!("version {} (this signer reads 1)", file.version)));
        }
        if file.workspace_id != ws {
            return Err(refuse("it is the record of another workspace".into()));
        }
        self.check_record(ws, &file)?;
        let installed = match fs::read(self.path(ws)) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        if installed.as_deref() == Some(record) {
            return Ok(false);
        }
        if installed.is_some() {
            let current = self.read(ws)?.ok_or(SignerError::UnknownWorkspace)?;
            extends(&current, &file).map_err(refuse)?;
        }
        write_atomic(&self.path(ws), record)?;
        Ok(true)
    }

    /// The checks of [`Self::import`] on the record alone.
    fn check_record(&self, ws: &str, file: &KeyFile) -> Result<()> {
        let refuse = |why: String| SignerError::KeyRecordRefused(why);
        let mut ids = std::collections::HashSet::new();
        for k in &file.keys {
            if !ids.insert(k.key_id.as_str()) {
                return Err(refuse(format!("key id {} twice", k.key_id)));
            }
            let public: [u8; 32] = B64
                .decode(&k.public_key)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| refuse(format!("key {}: public key is not 32 bytes of base64", k.key_id)))?;
            let vk = VerifyingKey::from_bytes(&public)
                .map_err(|_| refuse(format!("key {}: public key is not a point", k.key_id)))?;
            let id = key_id_hex(ws, vk).map_err(|e| refuse(format!("key {}: {e}", k.key_id)))?;
            if id != k.key_id {
                return Err(refuse(format!("key {}: not the key id of its public key ({id})", k.key_id)));
            }
            let stored = k.key_ref(ws).map_err(|e| refuse(e.to_string()))?;
            if k.private_destroyed {
                // Nothing left to open; only a retired token key may have lost its private half.
                if k.is_active() || !matches!(stored, KeyRef::Token { .. }) {
                    return Err(refuse(format!("key {}: marked destroyed but active or sealed", k.key_id)));
                }
                continue;
            }
            let Some(backend) = self.backend_for(&stored) else {
                if k.is_active() {
                    return Err(SignerError::WrongKeyBackend {
                        workspace: ws.to_owned(),
                        key_id: k.key_id.clone(),
                        stored: stored.kind(),
                        serving: self.backend.kind(),
                    });
                }
                // A retired or pending key of a key store this signer does not open never
                // signs here; its public half is all that is used.
                continue;
            };
            match backend.open(ws, &k.key_id, &public, &stored, "import") {
                Ok(key) => drop(key),
                Err(e @ SignerError::MemoryLock(_)) => return Err(e),
                // A token that does not answer says nothing about the record: `TokenUnavailable`,
                // retried. One that answers and has no such object, or one with another public
                // key (another workspace's object named here), refuses the record.
                Err(e @ SignerError::Token { .. }) if backend.check().is_err() => return Err(e),
                Err(e) => return Err(refuse(format!("key {}: {e}", k.key_id))),
            }
        }
        let published: Vec<&StoredKey> = file.keys.iter().filter(|k| !k.pending).collect();
        let Some((last, earlier)) = published.split_last() else {
            return Err(refuse("no published key".into()));
        };
        if !last.is_active() {
            return Err(refuse("the last published key is not active".into()));
        }
        for (i, k) in earlier.iter().enumerate() {
            let next = published[i + 1];
            match k.not_after_ms {
                Some(end) if k.not_before_ms <= end && end <= next.not_before_ms => {}
                _ => return Err(refuse(format!("key {}: its window overlaps the next or is not closed", k.key_id))),
            }
        }
        Ok(())
    }
}

/// Whether `new` keeps every key of `current` (see [`KeyStore::import`]); why not.
fn extends(current: &KeyFile, new: &KeyFile) -> std::result::Result<(), String> {
    let find = |id: &str| new.keys.iter().find(|k| k.key_id == id);
    let same_private = |a: &StoredKey, b: &StoredKey| {
        (&a.nonce, &a.sealed_seed, &a.token_object) == (&b.nonce, &b.sealed_seed, &b.token_object)
    };
    for k in &current.keys {
        let n = match find(&k.key_id) {
            Some(n) => n,
            None if k.pending => continue,
            None => return Err(format!("it drops key {}", k.key_id)),
        };
        if n.public_key != k.public_key || !same_private(k, n) {
            return Err(format!("it replaces key {}", k.key_id));
        }
        if k.pending {
            continue;
        }
        let end_kept = n.not_after_ms == k.not_after_ms || (k.not_after_ms.is_none() && n.not_after_ms.is_some());
        if n.pending || n.not_before_ms != k.not_before_ms || !end_kept || (k.private_destroyed && !n.private_destroyed)
        {
            return Err(format!("it changes key {}", k.key_id));
        }
    }
    let latest = current.keys.iter().filter(|k| !k.pending).map(|k| k.not_before_ms).max().unwrap_or(0);
    let known = |id: &str| current.keys.iter().any(|k| k.key_id == id && !k.pending);
    if let Some(k) = new.keys.iter().find(|k| !k.pending && !known(&k.key_id) && k.not_before_ms < latest) {
        return Err(format!("it adds key {} with a window before the installed keys'", k.key_id));
    }
    Ok(())
}

/// The default backend: keys generated in this process, held locked in memory, and sealed at
/// rest with XChaCha20-Poly1305 under the master key (AAD = workspace + key id).
#[derive(Debug)]
pub struct FileBackend {
    master: MasterKey,
    mlock: MlockPolicy,
}

impl FileBackend {
    pub fn new(master: MasterKey) -> Self {
        Self { master, mlock: MlockPolicy::default() }
    }

    /// Counts unlocked key memory in `policy.failures` and, if `policy.required`, refuses to hold
    /// a key it cannot lock (creation, rotation and load then fail).
    pub fn with_mlock_policy(mut self, policy: MlockPolicy) -> Self {
        self.mlock = policy;
        self
    }

    fn seal(&self, ws: &str, key_id: &str, seed: &[u8; 32]) -> Result<KeyRef> {
        let nonce = random_bytes::<24>()?;
        let sealed = self
            .master
            .with_cipher(|c| c.encrypt(XNonce::from_slice(&nonce), Payload { msg: seed, aad: &aad(ws, key_id) }))
            .map_err(|_| SignerError::Corrupt("sealing failed".into()))?;
        Ok(KeyRef::Sealed { nonce: B64.encode(nonce), sealed_seed: B64.encode(sealed) })
    }
}

impl KeyBackend for FileBackend {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn generate(
        &self,
        ws: &str,
        when: &'static str,
        _intent: &mut dyn FnMut(&KeyRef) -> Result<()>,
    ) -> Result<Generated> {
        // No intent: nothing exists outside the key file until it is written.
        let mut seed = random_bytes::<32>()?;
        let seed_copy = Zeroizing::new(seed);
        let key = LockedSigningKey::from_seed(&mut seed);
        // Refused before anything is written: no key file or log record for a key we cannot lock.
        self.mlock.check(key.is_locked(), when, Some(ws))?;
        let key_id = key_id_hex(ws, key.verifying_key())?;
        let stored = self.seal(ws, &key_id, &seed_copy)?;
        Ok(Generated { key: Box::new(key), key_id, stored })
    }

    fn open(
        &self,
        ws: &str,
        key_id: &str,
        public: &[u8; 32],
        stored: &KeyRef,
        when: &'static str,
    ) -> Result<Box<dyn WorkspaceKey>> {
        let KeyRef::Sealed { nonce, sealed_seed } = stored else {
            return Err(SignerError::WrongKeyBackend {
                workspace: ws.to_owned(),
                key_id: key_id.to_owned(),
                stored: stored.kind(),
                serving: self.kind(),
            });
        };
        let corrupt = |what: &str| SignerError::Corrupt(format!("key {key_id} of {ws}: {what}"));
        let nonce = B64.decode(nonce).map_err(|_| corrupt("nonce"))?;
        let sealed = B64.decode(sealed_seed).map_err(|_| corrupt("sealed seed"))?;
        if nonce.len() != 24 {
            return Err(corrupt("nonce length"));
        }
        let plain = self
            .master
            .with_cipher(|c| {
                c.decrypt(XNonce::from_slice(&nonce), Payload { msg: &sealed, aad: &aad(ws, key_id) })
                    .map(Zeroizing::new)
            })
            .map_err(|_| corrupt("does not open under this master key"))?;
        let mut seed: [u8; 32] = plain.as_slice().try_into().map_err(|_| corrupt("seed length"))?;
        let key = LockedSigningKey::from_seed(&mut seed);
        self.mlock.check(key.is_locked(), when, Some(ws))?;
        if key.verifying_key().as_bytes() != public {
            return Err(corrupt("public key does not match the sealed seed"));
        }
        Ok(Box::new(key))
    }

    fn destroy(&self, _stored: &KeyRef) -> Result<usize> {
        // Nothing to do: a sealed seed exists only in the key file.
        Ok(0)
    }

    fn check(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn store(dir: &Path) -> KeyStore {
        store_with(dir, "ab")
    }

    fn store_with(dir: &Path, master_byte: &str) -> KeyStore {
        let master = parse_master_hex(master_byte.repeat(32).as_bytes()).unwrap();
        KeyStore::open(dir, Box::new(FileBackend::new(master))).unwrap()
    }

    /// The file backend's key behind a loaded key (its private bytes, for the scans below).
    fn locked(k: &WorkspaceKeys) -> &LockedSigningKey {
        let any: &dyn Any = &*k.active;
        any.downcast_ref::<LockedSigningKey>().unwrap()
    }

    /// Every file under `dir`, recursively.
    fn all_files(dir: &Path) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(all_files(&p));
            } else {
                out.push(fs::read(&p).unwrap());
            }
        }
        out
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn no_private_key_bytes_on_disk_in_any_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let ks = store(dir.path());
        let mut keys = vec![ks.create("ws_a", 1).unwrap()];
        keys.push(ks.rotate("ws_a", 2).unwrap());
        keys.push(ks.rotate("ws_a", 3).unwrap());
        let mut files = all_files(dir.path());
        // What `ExportKeys` sends, and what another signer installed from it holds.
        let exported = ks.export("ws_a").unwrap();
        let other = tempfile::tempdir().unwrap();
        assert!(store(other.path()).import("ws_a", &exported).unwrap());
        files.push(exported);
        files.extend(all_files(other.path()));
        assert!(!files.is_empty());
        for k in &keys {
            let seed = locked(k).signing_key().to_bytes();
            let pair = locked(k).signing_key().to_keypair_bytes();
            let needles: Vec<Vec<u8>> = vec![
                seed.to_vec(),
                pair.to_vec(),
                hex::encode(seed).into_bytes(),
                hex::encode_upper(seed).into_bytes(),
                B64.encode(seed).into_bytes(),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(seed).into_bytes(),
                B64.encode([&[1u8][..], &seed[..]].concat()).into_bytes(),
            ];
            for f in &files {
                for n in &needles {
                    assert!(!contains(f, n), "private key material found on disk");
                }
            }
        }
    }

    fn refused(r: Result<bool>) -> String {
        match r {
            Err(SignerError::KeyRecordRefused(why)) => why,
            other => panic!("expected KeyRecordRefused, got {other:?}"),
        }
    }

    /// A record travels between two signers with the same master key: installed once, the
    /// same again changes nothing, a rotation extends it; everything an attacker holding only
    /// the service could send instead is refused with nothing written.
    #[test]
    fn imports_install_identical_or_extended_records_and_refuse_the_rest() {
        let (a_dir, b_dir, c_dir) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (store(a_dir.path()), store(b_dir.path()));
        let first = a.create("ws_a", 10).unwrap();
        a.create("ws_c", 10).unwrap();
        let rec1 = a.export("ws_a").unwrap();
        assert_eq!(rec1, fs::read(a.path("ws_a")).unwrap(), "the key file's bytes");
        assert!(b.import("ws_a", &rec1).unwrap());
        assert!(!b.import("ws_a", &rec1).unwrap(), "the same record again: nothing written");
        assert_eq!(b.load("ws_a").unwrap().active.public_key(), first.active.public_key());
        let rotated = a.rotate("ws_a", 20).unwrap();
        let rec2 = a.export("ws_a").unwrap();
        assert!(b.import("ws_a", &rec2).unwrap(), "a rotation extends the installed record");
        assert_eq!(b.load("ws_a").unwrap().active.public_key(), rotated.active.public_key());
        assert_eq!(b.export("ws_a").unwrap(), rec2);

        let installed = fs::read(b.path("ws_a")).unwrap();
        let parse = |r: &[u8]| -> KeyFile { serde_json::from_slice(r).unwrap() };
        let bytes = |f: &KeyFile| serde_json::to_vec_pretty(f).unwrap();
        assert!(refused(b.import("ws_a", &rec1)).contains("changes key"), "the older record reopens the retired key");
        let mut dropped = parse(&rec2);
        dropped.keys.remove(0);
        assert!(refused(b.import("ws_a", &bytes(&dropped))).contains("drops key"));
        assert!(refused(b.import("ws_b", &rec2)).contains("another workspace"));
        // ws_c's sealed seed in ws_a's record: the associated data binds it to ws_c.
        let c: KeyFile = parse(&a.export("ws_c").unwrap());
        let mut swapped = parse(&rec2);
        (swapped.keys[1].nonce, swapped.keys[1].sealed_seed) = (c.keys[0].nonce.clone(), c.keys[0].sealed_seed.clone());
        assert!(refused(b.import("ws_a", &bytes(&swapped))).contains("does not open"));
        // ws_c's whole key (its id and public key too) in ws_a's record: its id is not the
        // key id of its public key under ws_a's origin.
        let mut foreign = parse(&rec2);
        foreign.keys[1] = c.keys[0].clone();
        foreign.keys[1].not_before_ms = 20;
        assert!(refused(b.import("ws_a", &bytes(&foreign))).contains("not the key id"));
        let mut two_active = parse(&rec2);
        two_active.keys[0].not_after_ms = None;
        assert!(refused(b.import("ws_a", &bytes(&two_active))).contains("window"));
        assert!(refused(b.import("ws_a", b"{")).contains("does not parse"));
        let big = vec![b' '; allowly_signer_proto::MAX_KEY_RECORD_LEN + 1];
        assert!(refused(b.import("ws_a", &big)).contains("bytes"));
        assert_eq!(fs::read(b.path("ws_a")).unwrap(), installed, "nothing written by any refusal");
        // Another master key: nothing opens.
        assert!(refused(store_with(c_dir.path(), "cd").import("ws_a", &rec2)).contains("does not open"));
        assert!(!c_dir.path().join("keys/ws_a.json").exists());
    }

    #[test]
    fn keys_survive_reload_and_rotation_keeps_old_public_keys() {
        let dir = tempfile::tempdir().unwrap();
        let ks = store(dir.path());
        let first = ks.create("ws_a", 10).unwrap();
        assert!(matches!(ks.create("ws_a", 11), Err(SignerError::WorkspaceExists)));
        let rotated = ks.rotate("ws_a", 20).unwrap();
        assert_eq!(rotated.infos.len(), 2);
        assert_eq!(rotated.infos[0].public_key, first.active.public_key().to_bytes());
        assert_eq!(rotated.infos[0].not_after_ms, Some(20));
        assert!(!rotated.infos[0].active && rotated.infos[1].active);
        let reloaded = store(dir.path()).load("ws_a").unwrap();
        assert_eq!(reloaded.active.public_key(), rotated.active.public_key());
        assert!(matches!(ks.load("ws_missing"), Err(SignerError::UnknownWorkspace)));
    }

    #[test]
    fn wrong_master_key_or_swapped_ciphertext_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ks = store(dir.path());
        ks.create("ws_a", 1).unwrap();
        ks.create("ws_b", 1).unwrap();
        let other = store_with(dir.path(), "cd");
        assert!(matches!(other.load("ws_a"), Err(SignerError::Corrupt(_))));
        // Move ws_b's sealed seed into ws_a's file: the AAD binds it to ws_b, so it must not open.
        let mut a: KeyFile = serde_json::from_slice(&fs::read(ks.path("ws_a")).unwrap()).unwrap();
        let b: KeyFile = serde_json::from_slice(&fs::read(ks.path("ws_b")).unwrap()).unwrap();
        a.keys[0].sealed_seed = b.keys[0].sealed_seed.clone();
        a.keys[0].nonce = b.keys[0].nonce.clone();
        ks.write(&a).unwrap();
        assert!(matches!(ks.load("ws_a"), Err(SignerError::Corrupt(_))));
    }

    #[test]
    fn a_key_of_the_other_backend_or_with_an_unclear_reference_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ks = store(dir.path());
        ks.create("ws_a", 1).unwrap();
        let mut file: KeyFile = serde_json::from_slice(&fs::read(ks.path("ws_a")).unwrap()).unwrap();
        // Both references: neither is trusted.
        file.keys[0].token_object = Some("00".repeat(16));
        ks.write(&file).unwrap();
        assert!(matches!(ks.load("ws_a"), Err(SignerError::Corrupt(_))));
        // Only a token object: a key the PKCS#11 backend made, which this one cannot open.
        (file.keys[0].nonce, file.keys[0].sealed_seed) = (None, None);
        ks.write(&file).unwrap();
        let e = ks.load("ws_a").unwrap_err();
        assert!(matches!(e, SignerError::WrongKeyBackend { stored: "pkcs11", serving: "file", .. }), "{e}");
        // Neither.
        file.keys[0].token_object = None;
        ks.write(&file).unwrap();
        assert!(matches!(ks.load("ws_a"), Err(SignerError::Corrupt(_))));
    }

    /// A backend that makes keys "outside the key file" (as a token does) in memory, recording
    /// what it is asked to destroy, and failing destruction while `refuse` is set.
    #[derive(Debug, Default)]
    struct Outside {
        made: std::sync::Mutex<Vec<String>>,
        destroyed: std::sync::Mutex<Vec<String>>,
        refuse: std::sync::atomic::AtomicBool,
    }

    #[derive(Debug)]
    struct Shared(std::sync::Arc<Outside>);

    impl KeyBackend for Shared {
        fn kind(&self) -> &'static str {
            "pkcs11"
        }
        fn generate(
            &self,
            ws: &str,
            _when: &'static str,
            intent: &mut dyn FnMut(&KeyRef) -> Result<()>,
        ) -> Result<Generated> {
            let object_id = hex::encode(random_bytes::<16>()?);
            let stored = KeyRef::Token { object_id: object_id.clone() };
            intent(&stored)?;
            self.0.made.lock().unwrap().push(object_id);
            let key = ed25519_dalek::SigningKey::from_bytes(&random_bytes::<32>()?);
            let key_id = key_id_hex(ws, key.verifying_key())?;
            Ok(Generated { key: Box::new(key), key_id, stored })
        }
        fn open(
            &self,
            ws: &str,
            key_id: &str,
            _: &[u8; 32],
            _: &KeyRef,
            _: &'static str,
        ) -> Result<Box<dyn WorkspaceKey>> {
            Err(SignerError::Corrupt(format!("{ws} {key_id}: not kept")))
        }
        fn destroy(&self, stored: &KeyRef) -> Result<usize> {
            let KeyRef::Token { object_id } = stored else { return Ok(0) };
            if self.0.refuse.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(SignerError::Token { op: "deleting a key", detail: "refused".into() });
            }
            self.0.destroyed.lock().unwrap().push(object_id.clone());
            Ok(2)
        }
        fn check(&self) -> Result<()> {
            Ok(())
        }
    }

    fn pending(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir.join(PENDING_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    /// An intent lives from before a key is made outside the key file until the key file records
    /// it or it is destroyed; at start, `destroy_orphans` destroys exactly the keys of intents no
    /// key file records (a crash between the two), settles the intents of recorded ones, and
    /// keeps what it cannot settle (a refused deletion, an intent it cannot read).
    #[test]
    fn orphan_keys_are_those_of_unsettled_intents_that_no_key_file_records() {
        let dir = tempfile::tempdir().unwrap();
        let outside = std::sync::Arc::new(Outside::default());
        let ks = KeyStore::open(dir.path(), Box::new(Shared(outside.clone()))).unwrap();
        let new = ks.prepare("ws_a", 1).unwrap();
        assert_eq!(pending(dir.path()).len(), 1, "written before the key was made");
        // The key file cannot be opened back (this backend keeps nothing), but it is written:
        // the intent is settled by the record.
        assert!(ks.commit_new(new).is_err());
        assert!(pending(dir.path()).is_empty());
        let recorded = outside.made.lock().unwrap()[0].clone();

        // A crash after the key was made and before it was recorded, twice; and a crash after a
        // key file was written but before its intent was removed (an intent for `recorded`).
        drop(ks.prepare("ws_b", 1).unwrap());
        drop(ks.prepare("ws_c", 1).unwrap());
        let orphans: Vec<String> = outside.made.lock().unwrap()[1..].to_vec();
        let stale = Intent { workspace_id: "ws_a".into(), keystore: "pkcs11".into(), object_id: recorded.clone() };
        write_atomic(
            &dir.path().join(PENDING_DIR).join(format!("pkcs11-{recorded}.json")),
            &serde_json::to_vec(&stale).unwrap(),
        )
        .unwrap();
        fs::write(dir.path().join(PENDING_DIR).join("pkcs11-garbled.json"), b"{").unwrap();
        let bad = Intent { workspace_id: "../ws_a".into(), keystore: "pkcs11".into(), object_id: "00".into() };
        fs::write(dir.path().join(PENDING_DIR).join("pkcs11-00.json"), serde_json::to_vec(&bad).unwrap()).unwrap();
        assert_eq!(pending(dir.path()).len(), 5);

        // The token refuses: nothing is settled that was not destroyed.
        outside.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(ks.destroy_orphans().unwrap(), 0);
        assert_eq!(pending(dir.path()).len(), 4, "only the recorded key's intent is settled");
        outside.refuse.store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(ks.destroy_orphans().unwrap(), 2);
        let mut destroyed = outside.destroyed.lock().unwrap().clone();
        destroyed.sort();
        let mut want = orphans.clone();
        want.sort();
        assert_eq!(destroyed, want, "exactly the unrecorded keys, never the recorded one");
        assert_eq!(pending(dir.path()), ["pkcs11-00.json", "pkcs11-garbled.json"], "what it cannot read stays");
    }

    /// A rotation put aside (its leaf never logged) leaves the previous key active and its
    /// own key pending: unpublished, never opened, listed as pending; the next rotation uses
    /// that key instead of making another, and a load for a log whose last checkpoint the
    /// active key did not sign puts its rotation aside the same way. A pending key that does
    /// not open on a working key store is dropped and a new key made.
    #[test]
    fn a_rotation_put_aside_keeps_its_key_for_the_next_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let ks = store(dir.path());
        let first = ks.create("ws_a", 10).unwrap();
        let cut = ks.rotate("ws_a", 20).unwrap();
        ks.unrotate("ws_a").unwrap();
        let back = ks.load("ws_a").unwrap();
        assert_eq!((back.infos.len(), back.infos[0].not_after_ms), (1, None));
        assert_eq!(back.active.public_key(), first.active.public_key());
        let listed = list_keys(dir.path(), Some("ws_a")).unwrap();
        assert_eq!(listed[0].1.iter().map(|k| k.status).collect::<Vec<_>>(), ["active", "pending"]);
        ks.unrotate("ws_a").unwrap();
        assert_eq!(ks.load("ws_a").unwrap().infos.len(), 1, "nothing to put aside: the key replaced none");

        let again = ks.rotate("ws_a", 30).unwrap();
        assert_eq!(again.active.public_key(), cut.active.public_key(), "the pending key, not a new one");
        assert_eq!((again.infos.len(), again.infos[0].not_after_ms, again.infos[1].not_before_ms), (2, Some(30), 30));

        // The log's last checkpoint, signed by the old key: the rotation never reached it.
        let origin = log_origin("ws_a");
        let note = |size: u64, key: &dyn WorkspaceKey| {
            let text = format!("{origin}\n{size}\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n");
            sign_note(&text, &origin, key).unwrap()
        };
        let old = note(1, &*first.active);
        let loaded = ks.load_for_log("ws_a", Some(&old)).unwrap();
        assert_eq!(loaded.active.public_key(), first.active.public_key());
        let again = ks.rotate("ws_a", 40).unwrap();
        assert_eq!(again.active.public_key(), cut.active.public_key());
        // Signed by the active key, or a workspace never rotated: loaded as it is.
        let new = note(2, &*again.active);
        assert_eq!(ks.load_for_log("ws_a", Some(&new)).unwrap().infos.len(), 2);
        ks.create("ws_b", 1).unwrap();
        assert_eq!(ks.load_for_log("ws_b", None).unwrap().infos.len(), 1);
        assert_eq!(ks.load_for_log("ws_a", None).unwrap().infos.len(), 1, "an empty log has no rotation");

        // The pending key's seal damaged: it does not open, the file backend is fine.
        let mut file = ks.read("ws_a").unwrap().unwrap();
        let pending = file.keys.iter_mut().find(|k| k.pending).unwrap();
        pending.nonce = Some(B64.encode([0u8; 24]));
        ks.write(&file).unwrap();
        let fresh = ks.rotate("ws_a", 50).unwrap();
        assert_ne!(fresh.active.public_key(), cut.active.public_key());
        assert_eq!(fresh.infos.len(), 2);
        assert!(!list_keys(dir.path(), Some("ws_a")).unwrap()[0].1.iter().any(|k| k.status == "pending"));
    }

    #[test]
    fn keys_are_listed_from_the_key_files_with_the_store_that_holds_each() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list_keys(dir.path(), None).unwrap().is_empty(), "no key directory yet");
        let ks = store(dir.path());
        ks.create("ws_a", 10).unwrap();
        ks.rotate("ws_a", 20).unwrap();
        ks.create("ws_b", 30).unwrap();
        let all = list_keys(dir.path(), None).unwrap();
        assert_eq!(
            all.iter().map(|(ws, keys)| (ws.as_str(), keys.len())).collect::<Vec<_>>(),
            [("ws_a", 2), ("ws_b", 1)]
        );
        let (_, a) = &all[0];
        assert_eq!((a[0].status, a[0].keystore, a[0].not_after_ms), ("retired", "file", Some(20)));
        assert_eq!((a[1].status, a[1].keystore, a[1].not_before_ms), ("active", "file", 20));
        assert_eq!(list_keys(dir.path(), Some("ws_b")).unwrap().len(), 1);
        assert!(matches!(list_keys(dir.path(), Some("ws_none")), Err(SignerError::UnknownWorkspace)));
        assert!(matches!(list_keys(dir.path(), Some("../ws_a")), Err(SignerError::InvalidArgument(_))));
    }

    #[test]
    fn master_key_file_permissions_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        MasterKey::create_file(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert!(MasterKey::from_file(&p).is_ok());
        assert!(MasterKey::create_file(&p).is_err(), "never overwrites a master key");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(MasterKey::from_file(&p), Err(SignerError::MasterKey(_))));
        assert!(parse_master_hex(b"abc").is_err());
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(MasterKey::from_file(&p).unwrap().is_locked());
        fs::write(&p, "ab".repeat(100)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(MasterKey::from_file(&p), Err(SignerError::MasterKey(_))), "overlong file");
        fs::write(&p, format!("  {}\n", "0a".repeat(32))).unwrap();
        assert_eq!(*MasterKey::from_file(&p).unwrap().0, [0x0a; 32], "surrounding whitespace is trimmed");
    }
}
