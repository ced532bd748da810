//! The PKCS#11 key backend: workspace keys are generated inside a token (a hardware security
//! module, or SoftHSM2 in the tests) as non-extractable Ed25519 key pairs, and every checkpoint
//! signature is made by the token (`CKM_EDDSA`). No private key byte ever exists in this
//! process: a compromised signer host can use the keys while it holds the token's session, but
//! cannot copy them off it.
//!
//! - **Start** ([`TokenBackend::open`]): load the module, find the one token with the configured
//!   label, check that it offers `CKM_EC_EDWARDS_KEY_PAIR_GEN` and `CKM_EDDSA`, open a small
//!   pool of read-write sessions and log in with the PIN. Any failure is an error naming what
//!   failed (module, label, PIN refused) and the signer does not start: fail closed.
//! - **Generate**: `C_GenerateKeyPair` with the private key `CKA_TOKEN`, `CKA_PRIVATE`,
//!   `CKA_SENSITIVE`, `CKA_SIGN` true and `CKA_EXTRACTABLE` false; both halves get a random
//!   16-byte `CKA_ID` (what the key file records, and how a restart finds the key) and the
//!   label `allowly:<workspace>:<key id>` (for operators). The public key is read back
//!   (`CKA_EC_POINT`, see [`decode_ec_point`]) and a probe signature is verified with it before
//!   the key is published.
//! - **Sign**: one `C_Sign` per checkpoint, on a pooled session; the signature is verified
//!   against the published key before it leaves (a wrong object or a faulty token must never
//!   release a checkpoint that does not verify). A call into the token may block for
//!   milliseconds (a networked HSM), so it runs in `block_in_place`, off the async workers.
//! - **Loss**: a session that the token dropped (HSM restart, token re-inserted, a networked
//!   HSM's reconnect) is reopened and logged in again once per failed call; if that fails too,
//!   the call fails and `Ping` answers an error ([`KeyBackend::check`]), so the service fails
//!   closed until the token is back.
//!
//! The PIN ([`Pin`]) is read from a file of mode 0600 or from [`PIN_ENV`] (scrubbed from the
//! environment), held in locked memory for re-logins, and never logged.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::RawAuthPin;
use ed25519_dalek::VerifyingKey;

use crate::error::{Result, SignerError};
use crate::hardening::{random_bytes, take_env_var, LockedBytes};
use crate::keystore::{key_id_hex, Generated, KeyBackend, KeyRef, MlockPolicy, WorkspaceKey};

/// Environment variable that may carry the PIN instead of a file.
pub const PIN_ENV: &str = "ALLOWLY_SIGNER_PKCS11_PIN";
/// Longest PIN accepted (PKCS#11 tokens allow far less; the bound is for our buffer).
pub const PIN_MAX: usize = 255;
/// Sessions kept open: signatures of different workspaces run in parallel up to this many
/// (each `C_Sign` holds its session), the rest wait for one.
const SESSIONS: usize = 4;
/// `CKA_EC_PARAMS` of Ed25519, in the two DER forms PKCS#11 3.0 allows: the OID 1.3.101.112
/// (RFC 8410 `id-Ed25519`) and the PrintableString `edwards25519`. Tokens differ in which they
/// take; the first that works is remembered.
const ED25519_PARAMS: [&[u8]; 2] = [&[0x06, 0x03, 0x2b, 0x65, 0x70], b"\x13\x0cedwards25519"];
/// Signed once with every new key and verified with the public key read back from the token.
const PROBE: &[u8] = b"allowly-signer: does this token key match its public key?\n";

/// The PKCS#11 user PIN: in locked, dump-excluded memory, zeroed on drop, never printed.
pub struct Pin {
    bytes: LockedBytes<{ PIN_MAX + 1 }>,
    len: usize,
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pin(..)")
    }
}

impl Pin {
    /// The PIN in `text`, surrounding ASCII whitespace (a final newline) ignored.
    fn parse(text: &[u8]) -> Result<Self> {
        let t = text.trim_ascii();
        if t.is_empty() {
            return Err(SignerError::Pin("empty".into()));
        }
        if t.len() > PIN_MAX {
            return Err(SignerError::Pin(format!("longer than {PIN_MAX} bytes")));
        }
        let mut bytes = LockedBytes::new();
        bytes[..t.len()].copy_from_slice(t);
        Ok(Self { bytes, len: t.len() })
    }

    /// Reads a PIN file: a regular file owned by this user with no group or other permissions
    /// (mode 0600 or stricter), read straight into locked memory.
    pub fn from_file(path: &Path) -> Result<Self> {
        use std::io::Read as _;
        use std::os::unix::fs::MetadataExt as _;
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| SignerError::Pin(format!("{shown}: {e}")))?;
        if !meta.is_file() || meta.mode() & 0o077 != 0 {
            return Err(SignerError::Pin(format!("{shown} must be a file of mode 0600")));
        }
        if meta.uid() != rustix::process::geteuid().as_raw() {
            return Err(SignerError::Pin(format!("{shown} is not owned by this user")));
        }
        let mut text = LockedBytes::<{ PIN_MAX + 2 }>::new();
        let mut f = std::fs::File::open(path).map_err(|e| SignerError::Pin(format!("{shown}: {e}")))?;
        let mut n = 0;
        loop {
            match f.read(&mut text[n..]).map_err(|e| SignerError::Pin(format!("{shown}: {e}")))? {
                0 => break,
                k => n += k,
            }
            if n == text.len() {
                return Err(SignerError::Pin(format!("{shown}: longer than {PIN_MAX} bytes")));
            }
        }
        Self::parse(&text[..n])
    }

    /// Reads the PIN from [`PIN_ENV`], if set, and scrubs it from the process environment (see
    /// [`take_env_var`]). Call while the process has one thread.
    pub fn from_env() -> Option<Result<Self>> {
        take_env_var(PIN_ENV, Self::parse)
    }

    /// Whether the PIN's memory is locked in RAM.
    pub fn is_locked(&self) -> bool {
        self.bytes.is_locked()
    }

    /// A login with this PIN. cryptoki wants the PIN in a `Vec` of its own: that copy lives
    /// only during `C_Login` and is zeroed when dropped (`secrecy`), but is not locked.
    fn login(&self, session: &Session) -> std::result::Result<(), CkError> {
        let pin = RawAuthPin::new(Box::new(self.bytes[..self.len].to_vec()));
        match session.login_with_raw(UserType::User, &pin) {
            // Login state is per application, not per session: another session did it.
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            other => other,
        }
    }
}

/// What the PKCS#11 backend needs to start.
#[derive(Debug)]
pub struct TokenConfig {
    /// The token's PKCS#11 module (a shared library, e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token's label (`CKA_LABEL` of the token, as `C_GetTokenInfo` reports it).
    pub token_label: String,
    pub pin: Pin,
}

/// `e` as an operator reads it: the function and the return value's name, e.g.
/// `Login: PinIncorrect` (cryptoki's own text is a paragraph of the specification).
fn describe(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("C_{function:?}: {rv:?}"),
        other => other.to_string(),
    }
}

fn token_err(op: &'static str) -> impl FnOnce(CkError) -> SignerError {
    move |e| SignerError::Token { op, detail: describe(&e) }
}

/// Whether `e` means the session (or the login) is gone rather than this call being wrong: the
/// token was reset, removed and re-inserted, or a networked HSM reconnected.
fn session_lost(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::DeviceError
                | RvError::CryptokiNotInitialized,
            _
        )
    )
}

fn handle_invalid(e: &CkError) -> bool {
    matches!(e, CkError::Pkcs11(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid, _))
}

fn logged_in(s: &Session) -> bool {
    s.get_session_info().is_ok_and(|i| matches!(i.session_state(), SessionState::RwUser | SessionState::RoUser))
}

/// Runs a call into the token off the async workers when on a multi-threaded runtime (a token
/// may take milliseconds per call); elsewhere (tools, tests) directly.
fn off_worker<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The public key in a `CKA_EC_POINT` value. PKCS#11 3.0 says it is the DER encoding of an
/// OCTET STRING holding the 32-byte key (`04 20 ‖ key`); some tokens return the bare 32 bytes.
/// Both are unambiguous by length; anything else (another length, a long-form or wrong DER
/// length, trailing bytes) is refused rather than guessed at. The key must be a canonical,
/// non-weak Ed25519 point (checked by [`key_id_hex`]'s verifier).
pub fn decode_ec_point(value: &[u8]) -> Option<[u8; 32]> {
    match value {
        [0x04, 0x20, key @ ..] if key.len() == 32 => key.try_into().ok(),
        key if key.len() == 32 => key.try_into().ok(),
        _ => None,
    }
}

/// A logged-in token: its module, slot and a pool of sessions.
struct Token {
    ctx: Pkcs11,
    slot: Slot,
    label: String,
    module: PathBuf,
    pin: Pin,
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    /// Index into [`ED25519_PARAMS`] of the form the token took last.
    params: AtomicUsize,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("label", &self.label)
            .field("module", &self.module)
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl Token {
    fn open_session(ctx: &Pkcs11, slot: Slot, pin: &Pin) -> Result<Session> {
        let s = ctx.open_rw_session(slot).map_err(token_err("opening a session"))?;
        pin.login(&s).map_err(|e| match e {
            CkError::Pkcs11(RvError::PinIncorrect, _) => {
                SignerError::Token { op: "login", detail: "the token refused the PIN (CKR_PIN_INCORRECT)".into() }
            }
            CkError::Pkcs11(RvError::PinLocked, _) => {
                SignerError::Token { op: "login", detail: "the token's user PIN is locked (CKR_PIN_LOCKED)".into() }
            }
            other => token_err("login")(other),
        })?;
        Ok(s)
    }

    /// Runs `f` on a pooled session. A session the token dropped is reopened (and logged in)
    /// once, and `f` tried again on it.
    fn with_session<R>(&self, op: &'static str, f: impl Fn(&Session) -> std::result::Result<R, CkError>) -> Result<R> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.sessions.len();
        let mut session = self.sessions[i]
            .lock()
            .map_err(|_| SignerError::Token { op, detail: "a session lock was poisoned".into() })?;
        match f(&session) {
            Ok(r) => Ok(r),
            // A token may hide private objects from a session that lost its login (SoftHSM
            // answers CKR_OBJECT_HANDLE_INVALID): that is a lost login too.
            Err(e) if session_lost(&e) || (handle_invalid(&e) && !logged_in(&session)) => {
                tracing::warn!(token = %self.label, op, error = %describe(&e), "PKCS#11 session lost; opening a new one");
                *session = Self::open_session(&self.ctx, self.slot, &self.pin)?;
                f(&session).map_err(token_err(op))
            }
            Err(e) => Err(token_err(op)(e)),
        }
    }

    /// The handles of the objects of `class` whose `CKA_ID` is `id`.
    fn find(&self, class: ObjectClass, id: &[u8]) -> Result<Vec<ObjectHandle>> {
        self.with_session("finding a key", |s| s.find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())]))
    }

    /// The public key of the public-key object `h`.
    fn public_key(&self, h: ObjectHandle) -> Result<VerifyingKey> {
        let attrs = self.with_session("reading a public key", |s| s.get_attributes(h, &[AttributeType::EcPoint]))?;
        let point = attrs.iter().find_map(|a| match a {
            Attribute::EcPoint(p) => Some(p.as_slice()),
            _ => None,
        });
        let bad = |why: &str| SignerError::Token { op: "reading a public key", detail: why.to_owned() };
        let raw = decode_ec_point(point.ok_or_else(|| bad("the token gave no CKA_EC_POINT"))?)
            .ok_or_else(|| bad("CKA_EC_POINT is not a 32-byte Ed25519 key (nor its DER OCTET STRING)"))?;
        VerifyingKey::from_bytes(&raw).map_err(|_| bad("CKA_EC_POINT is not an Ed25519 point"))
    }

    /// One `CKM_EDDSA` (pure Ed25519) signature of `msg` by `key`.
    fn sign(&self, key: ObjectHandle, msg: &[u8]) -> Result<[u8; 64]> {
        let mech = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
        let sig = off_worker(|| self.with_session("signing", |s| s.sign(&mech, key, msg)))?;
        sig.try_into().map_err(|s: Vec<u8>| SignerError::Token {
            op: "signing",
            detail: format!("the token returned {} bytes, not a 64-byte Ed25519 signature", s.len()),
        })
    }

    fn generate_pair(&self, ws: &str, id: &[u8]) -> Result<(ObjectHandle, ObjectHandle)> {
        let label = format!("allowly:{ws}").into_bytes();
        let templates = |params: &[u8]| {
            let public = vec![
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Verify(true),
                Attribute::EcParams(params.to_vec()),
                Attribute::Label(label.clone()),
                Attribute::Id(id.to_vec()),
            ];
            let private = vec![
                Attribute::Token(true),
                Attribute::Private(true),
                // The two that make the key non-exportable: its value is never revealed, not
                // even wrapped under another key.
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Derive(false),
                Attribute::Label(label.clone()),
                Attribute::Id(id.to_vec()),
            ];
            (public, private)
        };
        let first = self.params.load(Ordering::Relaxed) % ED25519_PARAMS.len();
        let (i, pair) = self.with_session("generating a key pair", |s| {
            let mut last = CkError::NotSupported;
            for k in 0..ED25519_PARAMS.len() {
                let i = (first + k) % ED25519_PARAMS.len();
                let (public, private) = templates(ED25519_PARAMS[i]);
                match s.generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &public, &private) {
                    Ok(pair) => return Ok((i, pair)),
                    // The other encoding of the curve may be the one this token takes.
                    Err(e) if is_curve_refusal(&e) => last = e,
                    Err(e) => return Err(e),
                }
            }
            Err(last)
        })?;
        self.params.store(i, Ordering::Relaxed);
        Ok(pair)
    }

    fn destroy(&self, handles: &[ObjectHandle]) {
        for &h in handles {
            if let Err(e) = self.with_session("deleting a key", |s| s.destroy_object(h)) {
                tracing::warn!(token = %self.label, error = %e, "could not delete an unused key object from the token");
            }
        }
    }
}

/// Whether a key generation failed because of how the curve was named.
fn is_curve_refusal(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::CurveNotSupported
                | RvError::AttributeValueInvalid
                | RvError::DomainParamsInvalid
                | RvError::TemplateInconsistent,
            _
        )
    )
}

/// The PKCS#11 [`KeyBackend`].
#[derive(Debug, Clone)]
pub struct TokenBackend {
    token: Arc<Token>,
}

impl TokenBackend {
    /// Loads the module, finds the token labelled `cfg.token_label`, checks its mechanisms and
    /// logs in (see the module docs). `mlock` counts (or, if required, refuses) a PIN whose
    /// memory could not be locked.
    pub fn open(cfg: TokenConfig, mlock: &MlockPolicy) -> Result<Self> {
        mlock.check(cfg.pin.is_locked(), "PKCS#11 PIN", None)?;
        let module = cfg.module;
        let ctx = Pkcs11::new(&module).map_err(|e| SignerError::Token {
            op: "loading the module",
            detail: format!("{}: {}", module.display(), describe(&e)),
        })?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            // Already initialised by this process (a second backend over the same module).
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(token_err("initialising the module")(e)),
        }
        let slot = find_slot(&ctx, &cfg.token_label, &module)?;
        // Asked one by one (not C_GetMechanismList, whose every mechanism cryptoki does not
        // know it logs as an error).
        for (m, name) in [
            (MechanismType::ECC_EDWARDS_KEY_PAIR_GEN, "CKM_EC_EDWARDS_KEY_PAIR_GEN"),
            (MechanismType::EDDSA, "CKM_EDDSA"),
        ] {
            match ctx.get_mechanism_info(slot, m) {
                Ok(_) => {}
                Err(CkError::Pkcs11(RvError::MechanismInvalid, _)) => {
                    return Err(SignerError::Token {
                        op: "checking mechanisms",
                        detail: format!("token {:?} does not offer {name} (Ed25519)", cfg.token_label),
                    });
                }
                Err(e) => return Err(token_err("checking mechanisms")(e)),
            }
        }
        let mut sessions = Vec::with_capacity(SESSIONS);
        for _ in 0..SESSIONS {
            sessions.push(Mutex::new(Token::open_session(&ctx, slot, &cfg.pin)?));
        }
        let info = ctx.get_token_info(slot).map_err(token_err("reading token info"))?;
        tracing::info!(
            token = %cfg.token_label,
            module = %module.display(),
            manufacturer = info.manufacturer_id(),
            model = info.model(),
            "PKCS#11 token ready: workspace keys are generated and used inside it"
        );
        let token = Token {
            ctx,
            slot,
            label: cfg.token_label,
            module,
            pin: cfg.pin,
            sessions,
            next: AtomicUsize::new(0),
            params: AtomicUsize::new(0),
        };
        Ok(Self { token: Arc::new(token) })
    }
}

/// The one slot whose token has `label` (labels are blank-padded to 32 bytes by the standard;
/// cryptoki trims them).
fn find_slot(ctx: &Pkcs11, label: &str, module: &Path) -> Result<Slot> {
    let slots = ctx.get_slots_with_token().map_err(token_err("listing slots"))?;
    let mut seen = Vec::new();
    let mut found = Vec::new();
    for slot in slots {
        // Another token of the module may be unreadable for a moment (SoftHSM2 answers
        // CKR_GENERAL_ERROR while another process rewrites that token's files): asked again at
        // once, and if it stays so, it is not ours to fail on; it is named if ours is missing.
        let info =
            (0..3).map(|_| ctx.get_token_info(slot)).find(Result::is_ok).unwrap_or_else(|| ctx.get_token_info(slot));
        match info {
            Ok(info) => {
                if info.label() == label {
                    found.push(slot);
                }
                seen.push(format!("{:?}", info.label()));
            }
            Err(e) => seen.push(format!("(slot {slot}: {})", describe(&e))),
        }
    }
    match found.as_slice() {
        [slot] => Ok(*slot),
        [] => Err(SignerError::Token {
            op: "finding the token",
            detail: format!(
                "no token labelled {label:?} in {} (tokens present: {})",
                module.display(),
                if seen.is_empty() { "none".to_owned() } else { seen.join(", ") }
            ),
        }),
        _ => Err(SignerError::Token {
            op: "finding the token",
            detail: format!("{} tokens are labelled {label:?}; refusing to guess", found.len()),
        }),
    }
}

/// A key on the token: the private key object's `CKA_ID` and (cached) handle, and its public
/// key.
struct TokenKey {
    token: Arc<Token>,
    id: Vec<u8>,
    handle: Mutex<ObjectHandle>,
    public: VerifyingKey,
}

impl TokenKey {
    fn new(token: Arc<Token>, id: Vec<u8>, handle: ObjectHandle, public: VerifyingKey) -> Self {
        Self { token, id, handle: Mutex::new(handle), public }
    }

    fn handle(&self) -> Result<ObjectHandle> {
        self.handle.lock().map(|h| *h).map_err(|_| SignerError::Token { op: "signing", detail: "poisoned lock".into() })
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey").field("public", &self.public).field("token", &self.token.label).finish()
    }
}

impl WorkspaceKey for TokenKey {
    fn public_key(&self) -> VerifyingKey {
        self.public
    }

    fn sign(&self, msg: &[u8]) -> Result<[u8; 64]> {
        let handle = self.handle()?;
        let sig = match self.token.sign(handle, msg) {
            Ok(sig) => sig,
            Err(e) => {
                // Handles are not stable across a token's re-insertion or an HSM restart: look
                // the key up again by its CKA_ID, and if it has a new handle, sign with that.
                let found = off_worker(|| self.token.find(ObjectClass::PRIVATE_KEY, &self.id));
                match found.as_deref() {
                    Ok([h]) if *h != handle => {
                        tracing::warn!(token = %self.token.label, "a key's object handle changed; using the new one");
                        if let Ok(mut cached) = self.handle.lock() {
                            *cached = *h;
                        }
                        self.token.sign(*h, msg)?
                    }
                    _ => return Err(e),
                }
            }
        };
        // Nothing that does not verify under the published key leaves the signer.
        self.public.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig)).map_err(|_| {
            SignerError::Token {
                op: "signing",
                detail: "the token's signature does not verify under the key's public key".into(),
            }
        })?;
        Ok(sig)
    }
}

impl KeyBackend for TokenBackend {
    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    fn generate(&self, ws: &str, _when: &'static str) -> Result<Generated> {
        let t = &self.token;
        let id = random_bytes::<16>()?;
        let (public_h, private_h) = off_worker(|| t.generate_pair(ws, &id))?;
        let made = || -> Result<(VerifyingKey, String)> {
            let public = t.public_key(public_h)?;
            let key_id = key_id_hex(ws, public)?;
            let label = Attribute::Label(format!("allowly:{ws}:{key_id}").into_bytes());
            for h in [public_h, private_h] {
                t.with_session("labelling a key", |s| s.update_attributes(h, std::slice::from_ref(&label)))?;
            }
            Ok((public, key_id))
        };
        let (public, key_id) = match made() {
            Ok(x) => x,
            Err(e) => {
                t.destroy(&[public_h, private_h]);
                return Err(e);
            }
        };
        let key = TokenKey::new(t.clone(), id.to_vec(), private_h, public);
        // The probe: the public key read back really is the private key's.
        if let Err(e) = key.sign(PROBE) {
            t.destroy(&[public_h, private_h]);
            return Err(e);
        }
        tracing::info!(workspace = ws, key_id, token = %t.label, "key pair generated on the PKCS#11 token");
        Ok(Generated { key: Box::new(key), key_id, stored: KeyRef::Token { object_id: hex::encode(id) } })
    }

    fn open(
        &self,
        ws: &str,
        key_id: &str,
        public: &[u8; 32],
        stored: &KeyRef,
        _when: &'static str,
    ) -> Result<Box<dyn WorkspaceKey>> {
        let KeyRef::Token { object_id } = stored else {
            return Err(SignerError::WrongKeyBackend {
                workspace: ws.to_owned(),
                key_id: key_id.to_owned(),
                stored: stored.kind(),
                serving: self.kind(),
            });
        };
        let missing = |what: &str| SignerError::Token {
            op: "loading a key",
            detail: format!("key {key_id} of {ws} (CKA_ID {object_id}): {what} on token {:?}", self.token.label),
        };
        let id =
            hex::decode(object_id).map_err(|_| SignerError::Corrupt(format!("key {key_id} of {ws}: object id")))?;
        let t = &self.token;
        let (privates, publics) = off_worker(|| {
            Ok::<_, SignerError>((t.find(ObjectClass::PRIVATE_KEY, &id)?, t.find(ObjectClass::PUBLIC_KEY, &id)?))
        })?;
        let ([private_h], [public_h]) = (privates.as_slice(), publics.as_slice()) else {
            return Err(missing(&format!(
                "{} private and {} public key objects (expected one of each)",
                privates.len(),
                publics.len()
            )));
        };
        let key = off_worker(|| t.public_key(*public_h))?;
        if key.as_bytes() != public {
            return Err(missing("the public key differs from the one published"));
        }
        // A key that became extractable (or was never sensitive) is not one this backend made.
        let attrs = off_worker(|| {
            t.with_session("loading a key", |s| {
                s.get_attributes(
                    *private_h,
                    &[AttributeType::Sensitive, AttributeType::Extractable, AttributeType::KeyType],
                )
            })
        })?;
        let safe = attrs.contains(&Attribute::Sensitive(true))
            && attrs.contains(&Attribute::Extractable(false))
            && attrs.contains(&Attribute::KeyType(KeyType::EC_EDWARDS));
        if !safe {
            return Err(missing("the private key is not a sensitive, non-extractable Ed25519 key"));
        }
        Ok(Box::new(TokenKey::new(t.clone(), id.clone(), *private_h, key)))
    }

    fn discard(&self, ws: &str, stored: &KeyRef) {
        let KeyRef::Token { object_id } = stored else { return };
        let Ok(id) = hex::decode(object_id) else { return };
        let t = &self.token;
        let found = off_worker(|| -> Result<Vec<ObjectHandle>> {
            let mut all = t.find(ObjectClass::PRIVATE_KEY, &id)?;
            all.extend(t.find(ObjectClass::PUBLIC_KEY, &id)?);
            Ok(all)
        });
        match found {
            Ok(handles) => {
                off_worker(|| t.destroy(&handles));
                tracing::info!(workspace = ws, object_id, "deleted an unrecorded key pair from the token");
            }
            Err(e) => {
                tracing::warn!(workspace = ws, object_id, error = %e, "could not find an unrecorded key pair to delete")
            }
        }
    }

    /// A session call that needs the login: fails (after one reopen) while the token is gone.
    fn check(&self) -> Result<()> {
        let info = self.token.with_session("checking the session", |s| s.get_session_info())?;
        match info.session_state() {
            SessionState::RwUser | SessionState::RoUser => Ok(()),
            other => {
                // Logged out behind our back (another application's C_Logout): log in again.
                tracing::warn!(token = %self.token.label, state = ?other, "PKCS#11 session not logged in; logging in again");
                self.token.with_session("logging in again", |s| self.token.pin.login(s))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ec_points_decode_only_in_their_two_unambiguous_forms() {
        let key = [7u8; 32];
        let der = [&[0x04, 0x20][..], &key].concat();
        assert_eq!(decode_ec_point(&der), Some(key), "DER OCTET STRING");
        assert_eq!(decode_ec_point(&key), Some(key), "bare key");
        for bad in [
            vec![],
            vec![0x04, 0x20],
            [&[0x04, 0x21][..], &key, &[0]].concat(), // wrong length byte
            [&[0x04, 0x81, 0x20][..], &key].concat(), // long form: not DER
            [&[0x03, 0x20][..], &key].concat(),       // BIT STRING
            [&der[..], &[0]].concat(),                // trailing byte
            key[..31].to_vec(),
        ] {
            assert_eq!(decode_ec_point(&bad), None, "{bad:02x?}");
        }
    }

    #[test]
    fn pins_are_trimmed_bounded_and_never_printed() {
        let p = Pin::parse(b"  12345678\n").unwrap();
        assert_eq!(&p.bytes[..p.len], b"12345678");
        assert_eq!(format!("{p:?}"), "Pin(..)");
        assert!(matches!(Pin::parse(b" \n"), Err(SignerError::Pin(_))));
        assert!(matches!(Pin::parse(&[b'1'; PIN_MAX + 1]), Err(SignerError::Pin(_))));
        assert!(Pin::parse(&[b'1'; PIN_MAX]).is_ok());
    }

    #[test]
    fn pin_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "secret-pin\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Pin::from_file(&p).unwrap_err();
        assert!(matches!(e, SignerError::Pin(_)) && !e.to_string().contains("secret-pin"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(&Pin::from_file(&p).unwrap().bytes[..10], b"secret-pin");
        assert!(matches!(Pin::from_file(&dir.path().join("none")), Err(SignerError::Pin(_))));
    }
}
