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
//! - **Loss** (the token removed, a networked HSM restarting or unreachable, SoftHSM2's token
//!   directory gone): a session that fails as lost is reopened and logged in again once per
//!   failed call. The health check ([`KeyBackend::check`], what `Ping` answers with, which the
//!   service asks every half second) asks the token for its information and the session for its
//!   login: if the token does not answer, the signer fails closed (every `Ping` an error, so the
//!   service answers `503 signer_unavailable` and `/readyz` is not ready) and re-initialises the
//!   module — `C_Finalize`, `C_Initialize`, find the token by its label, open and log in a new
//!   pool of sessions — until the token answers again: at once, then [`LOST_TOKEN_REINIT_EVERY`]
//!   later, the wait doubling after each one that fails up to [`LOST_TOKEN_REINIT_MAX`] (a dead
//!   token is not asked twice a second forever), and from the start again once it is found. The
//!   loss and the return are logged once each. A
//!   module re-initialised may give the same objects other handles (and the old numbers to other
//!   objects), so every handle is tagged with the *epoch* of the module that gave it, and a key
//!   whose handle is from an older epoch (or that the token no longer knows) is found again by
//!   its `CKA_ID` before it signs. Calls hold the module's state for reading, a
//!   re-initialisation holds it for writing (PKCS#11 leaves `C_Finalize` undefined while another
//!   thread is inside the module); a call that needs handles (generate and label, find and
//!   delete) makes all of them under one hold, so it never uses a handle of another epoch.
//! - **Keys gone from a token that answers** (its objects removed and put back, an HSM restored
//!   from a backup): a recorded key that is not found fails its workspace's signing closed, and
//!   the next health check re-initialises the module to look again: a module may keep a stale
//!   view of the objects (SoftHSM2 does not read object files put back behind its back), and a
//!   fresh one finds them if they are there. Those re-initialisations back off
//!   ([`MISSING_KEY_REINIT_EVERY`] after the first, doubling to [`MISSING_KEY_REINIT_MAX`]) while
//!   a key stays missing — one destroyed for good would otherwise have every workspace's
//!   sessions reopened every few seconds, forever — and start again from the first once every
//!   missing key is found. A key going missing and being found again are logged once each.
//! - **Orphans**: before `C_GenerateKeyPair` the key store records its intent (the new
//!   `CKA_ID`, see [`crate::keystore`]); a crash between the generation and the key file leaves
//!   that intent, and the next start deletes the key pair it names if no key file records it.
//! - **Retired keys** of a workspace whose keys moved back to sealed files: once that rotation is
//!   in the log, their private key objects are destroyed by `CKA_ID` (the public ones stay; see
//!   `KeyStore::destroy_retired_token_keys`). Nothing else on the token is ever deleted: another
//!   signer may share it.
//!
//! The PIN ([`Pin`]) is read from a file of mode 0600 or from [`PIN_ENV`] (scrubbed from the
//! environment), held in locked memory for re-logins, and never logged.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

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
use crate::metrics::TokenMetrics;

/// Environment variable that may carry the PIN instead of a file.
pub const PIN_ENV: &str = "ALLOWLY_SIGNER_PKCS11_PIN";
/// Longest PIN accepted (PKCS#11 tokens allow far less; the bound is for our buffer).
pub const PIN_MAX: usize = 255;
/// Sessions kept open: signatures of different workspaces run in parallel up to this many
/// (each `C_Sign` holds its session), the rest wait for one.
const SESSIONS: usize = 4;
/// `CKA_EC_PARAMS` of Ed25519, in the two DER forms PKCS#11 3.0 allows: the OID 1.3.101.112
/// (RFC 8410 `id-Ed25519`) and the PrintableString `edwards25519` (the curve's name). Tokens
/// differ in which they take; the first that works is remembered ([`with_curve_forms`]).
pub const ED25519_PARAMS: [&[u8]; 2] = [&[0x06, 0x03, 0x2b, 0x65, 0x70], b"\x13\x0cedwards25519"];
/// Least time between any two re-initialisations of the module (for a lost token or a missing
/// key): the service's health probe comes every half second, and a module reloading its token
/// state on every one would keep a struggling HSM busy.
pub const REINIT_EVERY: Duration = Duration::from_secs(1);
/// Wait after the first re-initialisation that did not find a lost token before the next. The
/// first runs at once when the token is found lost (a session reset, a networked HSM failing
/// over: back within a second or two, and found then); each one that fails doubles the wait,
/// up to [`LOST_TOKEN_REINIT_MAX`].
pub const LOST_TOKEN_REINIT_EVERY: Duration = Duration::from_secs(1);
/// The longest wait between two re-initialisations while the token stays lost. A
/// re-initialisation is not free for the token: it loads the module's view of every object
/// (SoftHSM2 reads each object file; a networked HSM opens connections and logs four sessions
/// in), so a dead token is asked about twice a minute, not twice a second, for as long as it
/// stays dead; and a token that comes back after a long outage is found at most 30 s later
/// (one that comes back within the first minute, within the wait then running: 1, 2, 4, ... s).
pub const LOST_TOKEN_REINIT_MAX: Duration = Duration::from_secs(30);
/// Least time between the first two re-initialisations of the module because a recorded key
/// was missing from a token that answers. A module may keep a stale view of the token's
/// objects — SoftHSM2 does not read object files put back behind its back, and an HSM restored
/// from a backup or failed over to a replica may be seen the same way — so a key that is not
/// found is looked for again through a fresh module; but a key that is really gone would
/// otherwise have the module re-initialised (every workspace's sessions reopened) at every
/// retry of its appends. The wait doubles after each one that leaves a key missing.
pub const MISSING_KEY_REINIT_EVERY: Duration = Duration::from_secs(5);
/// The longest wait between two re-initialisations for a missing key: a key destroyed for good
/// costs one every five minutes, and a key put back is found at most this long after.
pub const MISSING_KEY_REINIT_MAX: Duration = Duration::from_secs(300);
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

/// A call into the token that failed, before it becomes a [`SignerError`]: kept structured so
/// the health check can tell a token that is gone from one that refuses.
#[derive(Debug)]
enum Fail {
    /// The module answered `error` while the signer was doing `op`.
    Call { op: &'static str, error: CkError },
    /// The token was lost and the module has not found it again yet (`why`: the last failure).
    Lost { op: &'static str, why: String },
    /// The token answered, but about something this backend must refuse (a wrong signature
    /// length, a key object that is not one of ours).
    Unfit { op: &'static str, detail: String },
}

impl Fail {
    fn call(op: &'static str) -> impl FnOnce(CkError) -> Self {
        move |error| Self::Call { op, error }
    }

    /// Whether this says the token (or the module's view of it) is gone, rather than that it
    /// refused something: only then can re-initialising the module help.
    fn token_gone(&self) -> bool {
        match self {
            Self::Lost { .. } => true,
            Self::Unfit { .. } => false,
            Self::Call { error, .. } => match error {
                CkError::Pkcs11(rv, _) => !matches!(
                    rv,
                    RvError::PinIncorrect
                        | RvError::PinLocked
                        | RvError::PinExpired
                        | RvError::PinLenRange
                        | RvError::UserPinNotInitialized
                ),
                _ => true,
            },
        }
    }
}

impl From<Fail> for SignerError {
    fn from(f: Fail) -> Self {
        match f {
            Fail::Call { op, error: CkError::Pkcs11(RvError::PinIncorrect, _) } => {
                SignerError::Token { op, detail: "the token refused the PIN (CKR_PIN_INCORRECT)".into() }
            }
            Fail::Call { op, error: CkError::Pkcs11(RvError::PinLocked, _) } => {
                SignerError::Token { op, detail: "the token's user PIN is locked (CKR_PIN_LOCKED)".into() }
            }
            Fail::Call { op, error } => SignerError::Token { op, detail: describe(&error) },
            Fail::Lost { op, why } => {
                SignerError::Token { op, detail: format!("the token is lost ({why}); looking for it again") }
            }
            Fail::Unfit { op, detail } => SignerError::Token { op, detail },
        }
    }
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

/// Runs `generate` with the forms of the curve in [`ED25519_PARAMS`], starting with the one at
/// `first` (the one that worked last), and moving on to the next only when the token refuses
/// how the curve is named ([`is_curve_refusal`]); any other error is returned at once. Gives
/// the index of the form that worked and what `generate` made.
fn with_curve_forms<T>(
    first: usize,
    mut generate: impl FnMut(&[u8]) -> std::result::Result<T, CkError>,
) -> std::result::Result<(usize, T), CkError> {
    let mut last = CkError::NotSupported;
    for k in 0..ED25519_PARAMS.len() {
        let i = (first + k) % ED25519_PARAMS.len();
        match generate(ED25519_PARAMS[i]) {
            Ok(made) => return Ok((i, made)),
            Err(e) if is_curve_refusal(&e) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// The module's state for the token: its slot and a pool of logged-in sessions, made at start
/// and again by every re-initialisation, and the epoch of the module that made them.
struct Live {
    slot: Slot,
    sessions: Vec<Mutex<Session>>,
}

/// A logged-in token: its module, and the module's state for it (or why there is none).
struct Token {
    ctx: Pkcs11,
    label: String,
    module: PathBuf,
    pin: Pin,
    /// Read-held by every call into the module, write-held by a re-initialisation. `Err`: the
    /// token is lost, with the last failure.
    live: RwLock<std::result::Result<Live, String>>,
    /// The module's epoch: moves (under the write hold) at every re-initialisation. A handle is
    /// valid only in the epoch that gave it.
    epoch: AtomicU64,
    /// When the module was last re-initialised (or tried to be).
    reinit_at: Mutex<Option<Instant>>,
    /// Recorded keys not found on the token while it answered, and when the module is
    /// re-initialised next to look for them (see [`MISSING_KEY_REINIT_EVERY`]).
    missing: Mutex<Missing>,
    /// While the token is lost: when the module is re-initialised next to look for it (see
    /// [`LOST_TOKEN_REINIT_EVERY`]); from the start again once it is found.
    lost_retry: Mutex<Backoff>,
    next: AtomicUsize,
    /// Index into [`ED25519_PARAMS`] of the form the token took last.
    params: AtomicUsize,
    metrics: TokenMetrics,
    /// Test seam: a form of [`ED25519_PARAMS`] refused as a token that does not take it
    /// refuses it (SoftHSM2 takes both), and how many times it was.
    #[cfg(test)]
    refuse_form: (AtomicUsize, AtomicUsize),
}

/// Key objects a look-up did not find on a token that answered, and the re-initialisations
/// that look for them again.
#[derive(Debug)]
struct Missing {
    /// The `CKA_ID`s not found (each removed when it is found again). At most one per key the
    /// signer has loaded.
    ids: std::collections::HashSet<Vec<u8>>,
    /// A look-up failed since the last re-initialisation: another one is worth doing.
    asked: bool,
    retry: Backoff,
}

impl Default for Missing {
    fn default() -> Self {
        Self { ids: Default::default(), asked: false, retry: Backoff::missing_key() }
    }
}

/// When the next re-initialisation of the module for one cause may run: at once the first
/// time, then `first` after it, the wait doubling after each one up to `max`; a fresh one
/// again once the cause is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Backoff {
    last: Option<Instant>,
    wait: Duration,
    max: Duration,
}

impl Backoff {
    /// For missing keys: [`MISSING_KEY_REINIT_EVERY`] doubling to [`MISSING_KEY_REINIT_MAX`].
    fn missing_key() -> Self {
        Self { last: None, wait: MISSING_KEY_REINIT_EVERY, max: MISSING_KEY_REINIT_MAX }
    }

    /// For a lost token: [`LOST_TOKEN_REINIT_EVERY`] doubling to [`LOST_TOKEN_REINIT_MAX`].
    fn lost_token() -> Self {
        Self { last: None, wait: LOST_TOKEN_REINIT_EVERY, max: LOST_TOKEN_REINIT_MAX }
    }

    fn due(&self, now: Instant) -> bool {
        self.last.is_none_or(|t| now.duration_since(t) >= self.wait)
    }

    /// One ran at `now`: the next waits twice as long as this one did.
    fn ran(&mut self, now: Instant) {
        if self.last.is_some() {
            self.wait = (self.wait * 2).min(self.max);
        }
        self.last = Some(now);
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("label", &self.label)
            .field("module", &self.module)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// How [`Token::with_session`] treats a session the token dropped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnLost {
    /// Reopen it and run the call again (a call that can be repeated).
    Retry,
    /// Reopen it for the next call, but fail this one: it may have done something already (a
    /// key pair generated, then the session lost) that repeating would do twice.
    Fail,
}

impl Token {
    fn open_session(ctx: &Pkcs11, slot: Slot, pin: &Pin) -> std::result::Result<Session, Fail> {
        let s = ctx.open_rw_session(slot).map_err(Fail::call("opening a session"))?;
        pin.login(&s).map_err(Fail::call("login"))?;
        Ok(s)
    }

    /// Finds the token in the (initialised) module and logs a pool of sessions in.
    fn connect(ctx: &Pkcs11, label: &str, module: &Path, pin: &Pin) -> Result<Live> {
        let slot = find_slot(ctx, label, module)?;
        let mut sessions = Vec::with_capacity(SESSIONS);
        for _ in 0..SESSIONS {
            sessions.push(Mutex::new(Self::open_session(ctx, slot, pin)?));
        }
        Ok(Live { slot, sessions })
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Runs `f` on a pooled session, holding the module's state (so its epoch) for the whole
    /// call; `None` if `at` is given and is not the module's epoch any more (the handles `f`
    /// would use are stale). A session the token dropped is reopened (and logged in) once, and
    /// `f` run again on it if `on_lost` allows.
    fn call<R>(
        &self,
        op: &'static str,
        at: Option<u64>,
        on_lost: OnLost,
        f: impl Fn(&Session) -> std::result::Result<R, Fail>,
    ) -> std::result::Result<Option<R>, Fail> {
        let live =
            self.live.read().map_err(|_| Fail::Unfit { op, detail: "the token's state lock was poisoned".into() })?;
        let live = live.as_ref().map_err(|why| Fail::Lost { op, why: why.clone() })?;
        if at.is_some_and(|e| e != self.epoch()) {
            return Ok(None);
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % live.sessions.len();
        let mut session =
            live.sessions[i].lock().map_err(|_| Fail::Unfit { op, detail: "a session lock was poisoned".into() })?;
        match f(&session) {
            Ok(r) => Ok(Some(r)),
            // A token may hide private objects from a session that lost its login (SoftHSM
            // answers CKR_OBJECT_HANDLE_INVALID): that is a lost login too.
            Err(Fail::Call { error, .. })
                if session_lost(&error) || (handle_invalid(&error) && !logged_in(&session)) =>
            {
                tracing::warn!(token = %self.label, op, error = %describe(&error), "PKCS#11 session lost; opening a new one");
                *session = Self::open_session(&self.ctx, live.slot, &self.pin)?;
                match on_lost {
                    OnLost::Retry => f(&session).map(Some),
                    OnLost::Fail => Err(Fail::Call { op, error }),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// [`Token::call`] whatever the epoch: for calls that use no handle from before.
    fn with_session<R>(
        &self,
        op: &'static str,
        f: impl Fn(&Session) -> std::result::Result<R, CkError>,
    ) -> std::result::Result<R, Fail> {
        let r = self.call(op, None, OnLost::Retry, |s| f(s).map_err(Fail::call(op)))?;
        r.ok_or(Fail::Unfit { op, detail: "no epoch was asked for".into() })
    }

    /// The handles of the objects of `class` whose `CKA_ID` is `id`, and the epoch they are of.
    fn find(&self, class: ObjectClass, id: &[u8]) -> std::result::Result<(u64, Vec<ObjectHandle>), Fail> {
        self.with_session("finding a key", |s| {
            // Read under the hold: the epoch cannot move while the handles are found.
            let epoch = self.epoch();
            let found = s.find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())])?;
            // Missing from a token we are logged in to (a session without the login sees no
            // private object at all: that is a lost login, not a missing key). Signing fails
            // closed now; the health check looks again through a fresh module.
            if found.is_empty() && logged_in(s) {
                self.key_missing(id);
            } else if !found.is_empty() {
                self.key_found(id);
            }
            Ok((epoch, found))
        })
    }

    /// One `CKM_EDDSA` (pure Ed25519) signature of `msg` by `key` (a handle of epoch `at`;
    /// `None` if that has passed).
    fn sign(&self, at: u64, key: ObjectHandle, msg: &[u8]) -> std::result::Result<Option<[u8; 64]>, Fail> {
        let mech = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
        let sig = off_worker(|| {
            self.call("signing", Some(at), OnLost::Retry, |s| s.sign(&mech, key, msg).map_err(Fail::call("signing")))
        })?;
        sig.map(|sig| {
            sig.try_into().map_err(|s: Vec<u8>| Fail::Unfit {
                op: "signing",
                detail: format!("the token returned {} bytes, not a 64-byte Ed25519 signature", s.len()),
            })
        })
        .transpose()
    }

    /// Generates an Ed25519 key pair for `ws` with `CKA_ID` `id`, reads its public key back
    /// and labels both halves `allowly:<ws>:<key id>`, all under one hold of the module (the
    /// handles never outlive it). Whatever fails after the generation deletes the pair; a
    /// session lost on the way fails the call without repeating it (a repeat would make a
    /// second pair with the same `CKA_ID`; the key store's intent covers a pair left behind).
    fn generate(&self, ws: &str, id: &[u8]) -> std::result::Result<(VerifyingKey, String), Fail> {
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
        let op = "generating a key pair";
        let made = self.call(op, None, OnLost::Fail, |s| {
            let first = self.params.load(Ordering::Relaxed) % ED25519_PARAMS.len();
            let (i, (public_h, private_h)) = with_curve_forms(first, |params| {
                #[cfg(test)]
                if ED25519_PARAMS.get(self.refuse_form.0.load(Ordering::Relaxed)) == Some(&params) {
                    self.refuse_form.1.fetch_add(1, Ordering::Relaxed);
                    let function = cryptoki::context::Function::GenerateKeyPair;
                    return Err(CkError::Pkcs11(RvError::CurveNotSupported, function));
                }
                let (public, private) = templates(params);
                s.generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &public, &private)
            })
            .map_err(Fail::call(op))?;
            self.params.store(i, Ordering::Relaxed);
            let named = || -> std::result::Result<(VerifyingKey, String), Fail> {
                let attrs = s.get_attributes(public_h, &[AttributeType::EcPoint]).map_err(Fail::call(op))?;
                let public = public_of(&attrs)?;
                let key_id = key_id_hex(ws, public)
                    .map_err(|e| Fail::Unfit { op, detail: format!("the token's public key: {e}") })?;
                let label = Attribute::Label(format!("allowly:{ws}:{key_id}").into_bytes());
                for h in [public_h, private_h] {
                    s.update_attributes(h, std::slice::from_ref(&label)).map_err(Fail::call("labelling a key"))?;
                }
                Ok((public, key_id))
            };
            named().inspect_err(|_| destroy_all(s, &self.label, &[public_h, private_h]))
        })?;
        made.ok_or(Fail::Unfit { op, detail: "no epoch was asked for".into() })
    }

    /// Deletes every object (both halves) with `CKA_ID` `id`; how many there were.
    /// Destroys the objects with `CKA_ID` `id` (only those of `class`, if given); how many.
    fn destroy_id(&self, id: &[u8], class: Option<ObjectClass>) -> std::result::Result<usize, Fail> {
        let op = "deleting a key";
        let mut template = vec![Attribute::Id(id.to_vec())];
        template.extend(class.map(Attribute::Class));
        // Found and deleted under one hold: a handle of another epoch could name another key.
        let n = self.call(op, None, OnLost::Retry, |s| {
            let found = s.find_objects(&template).map_err(Fail::call(op))?;
            for &h in &found {
                s.destroy_object(h).map_err(Fail::call(op))?;
            }
            Ok(found.len())
        })?;
        n.ok_or(Fail::Unfit { op, detail: "no epoch was asked for".into() })
    }

    /// Whether the token answers: its information, and a session logged in (logging in again
    /// if another application logged out).
    fn probe(&self) -> std::result::Result<(), Fail> {
        {
            let live =
                self.live.read().map_err(|_| Fail::Unfit { op: "checking the token", detail: "poisoned".into() })?;
            let live = live.as_ref().map_err(|why| Fail::Lost { op: "checking the token", why: why.clone() })?;
            // SoftHSM answers this from the token's files (CKR_GENERAL_ERROR once they are gone);
            // a hardware token that was pulled, CKR_TOKEN_NOT_PRESENT or CKR_DEVICE_REMOVED.
            self.ctx.get_token_info(live.slot).map_err(Fail::call("reading the token's information"))?;
        }
        let info = self.with_session("checking the session", |s| s.get_session_info())?;
        match info.session_state() {
            SessionState::RwUser | SessionState::RoUser => Ok(()),
            other => {
                // Logged out behind our back (another application's C_Logout): log in again.
                tracing::warn!(token = %self.label, state = ?other, "PKCS#11 session not logged in; logging in again");
                self.with_session("logging in again", |s| self.pin.login(s))
            }
        }
    }

    /// Marks the token lost (`why`), if it was not.
    fn lose(&self, why: &str) {
        let Ok(mut live) = self.live.write() else { return };
        if live.is_ok() {
            self.lost_now(why);
            // Sessions first (C_CloseSession), while the module is still initialised.
            *live = Err(why.to_owned());
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The token was answering and is lost now (`why`): said once, here, whichever call found
    /// it (a health check, or a re-initialisation for missing keys that did not find the token).
    fn lost_now(&self, why: &str) {
        tracing::error!(token = %self.label, reason = why, "PKCS#11 token lost: the signer fails closed, and looks for the token again at once, then {LOST_TOKEN_REINIT_EVERY:?} later, the wait doubling each time up to {LOST_TOKEN_REINIT_MAX:?}");
        self.metrics.lost.set(1);
    }

    /// A look-up on the token, logged in, found no object with `CKA_ID` `id`: its workspace's
    /// signing fails closed, and the health check re-initialises the module to look again.
    /// Logged when the key goes missing, not at every look-up.
    fn key_missing(&self, id: &[u8]) {
        let Ok(mut m) = self.missing.lock() else { return };
        m.asked = true;
        if m.ids.insert(id.to_vec()) {
            self.metrics.keys_missing.set(i64::try_from(m.ids.len()).unwrap_or(i64::MAX));
            self.metrics.missing_key_retry_seconds.set(m.retry.wait.as_secs() as i64);
            tracing::warn!(token = %self.label, object_id = %hex::encode(id), "a recorded key was not found on the token (which answers): its workspace's signing fails closed, and the module is re-initialised to look for it again, {MISSING_KEY_REINIT_EVERY:?} after the first time and then twice as long each time up to {MISSING_KEY_REINIT_MAX:?}");
        }
    }

    /// A look-up found `id`: if it was missing, it is not any more, and once nothing is
    /// missing the re-initialisations start again from the shortest wait.
    fn key_found(&self, id: &[u8]) {
        let Ok(mut m) = self.missing.lock() else { return };
        if m.ids.remove(id) {
            tracing::info!(token = %self.label, object_id = %hex::encode(id), "a missing key was found on the token again: its workspace signs again");
            self.metrics.keys_missing.set(i64::try_from(m.ids.len()).unwrap_or(i64::MAX));
            if m.ids.is_empty() {
                m.asked = false;
                m.retry = Backoff::missing_key();
                self.metrics.missing_key_retry_seconds.set(0);
            }
        }
    }

    /// A recorded key was missing from the token while it answered, and has been asked for
    /// since the last re-initialisation: re-initialises the module (when its [`Backoff`]
    /// allows) so that the next look-up sees the token as it is now. The token answers, so the
    /// check is `Ok` unless the re-initialisation loses it.
    fn look_for_missing_keys(&self) -> Result<()> {
        {
            let Ok(mut m) = self.missing.lock() else { return Ok(()) };
            let now = Instant::now();
            // Within REINIT_EVERY of another re-initialisation: asked again at the next check.
            if !m.asked || !m.retry.due(now) || !self.reinit_due(now) {
                return Ok(());
            }
            m.asked = false;
            m.retry.ran(now);
            self.metrics.missing_key_reinits.inc();
            self.metrics.missing_key_retry_seconds.set(m.retry.wait.as_secs() as i64);
            tracing::debug!(token = %self.label, missing = m.ids.len(), next_after = ?m.retry.wait, "re-initialising the module to look for missing keys");
        }
        self.reinitialise_now()
    }

    /// Whether a re-initialisation may run at `now` (at most once per [`REINIT_EVERY`]); if so,
    /// it counts as run from `now`.
    fn reinit_due(&self, now: Instant) -> bool {
        let Ok(mut at) = self.reinit_at.lock() else { return false };
        if at.is_some_and(|t| now.duration_since(t) < REINIT_EVERY) {
            return false;
        }
        *at = Some(now);
        true
    }

    /// The token is lost: re-initialises the module to find it again when its [`Backoff`]
    /// allows ([`LOST_TOKEN_REINIT_EVERY`] doubling to [`LOST_TOKEN_REINIT_MAX`], and never
    /// within [`REINIT_EVERY`] of another); `Ok` once it answers.
    fn reinitialise(&self) -> Result<()> {
        let now = Instant::now();
        let due = self.lost_retry.lock().is_ok_and(|mut b| {
            let due = b.due(now) && self.reinit_due(now);
            if due {
                b.ran(now);
                self.metrics.lost_retry_seconds.set(b.wait.as_secs() as i64);
            }
            due
        });
        if !due {
            let why = self.live.read().ok().and_then(|l| l.as_ref().err().cloned()).unwrap_or_default();
            return Err(Fail::Lost { op: "checking the token", why }.into());
        }
        self.reinitialise_now()
    }

    /// [`Token::reinitialise`] without the wait.
    fn reinitialise_now(&self) -> Result<()> {
        let Ok(mut live) = self.live.write() else {
            return Err(SignerError::Token { op: "re-initialising the module", detail: "poisoned".into() });
        };
        // A module re-initialised to look for missing keys had a token that answered: only a
        // lost token's return is news.
        let was_lost = live.is_err();
        // Every session goes (closed while the module is still initialised), then the module.
        *live = Err("re-initialising the module".into());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let again = || -> Result<Live> {
            match self.ctx.clone().finalize() {
                Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiNotInitialized, _)) => {}
                Err(e) => {
                    tracing::warn!(token = %self.label, error = %describe(&e), "C_Finalize failed; initialising anyway")
                }
            }
            initialize(&self.ctx)?;
            Self::connect(&self.ctx, &self.label, &self.module, &self.pin)
        };
        match again() {
            Ok(new) => {
                *live = Ok(new);
                self.metrics.reinits.with_label_values(&["ok"]).inc();
                self.metrics.lost.set(0);
                // Lost next time: looked for at once again, then after the first wait.
                if let Ok(mut b) = self.lost_retry.lock() {
                    *b = Backoff::lost_token();
                }
                self.metrics.lost_retry_seconds.set(0);
                if was_lost {
                    tracing::info!(token = %self.label, "PKCS#11 token found again (module re-initialised): keys are looked up again by CKA_ID, signing resumes");
                }
                Ok(())
            }
            Err(e) => {
                *live = Err(e.to_string());
                self.metrics.reinits.with_label_values(&["failed"]).inc();
                if was_lost {
                    tracing::debug!(token = %self.label, error = %e, "PKCS#11 token still lost");
                } else {
                    // Re-initialised to look for missing keys, and the token did not come back.
                    self.lost_now(&e.to_string());
                }
                Err(e)
            }
        }
    }
}

/// The public key in the attributes read from a public-key object.
fn public_of(attrs: &[Attribute]) -> std::result::Result<VerifyingKey, Fail> {
    let op = "reading a public key";
    let point = attrs.iter().find_map(|a| match a {
        Attribute::EcPoint(p) => Some(p.as_slice()),
        _ => None,
    });
    let bad = |why: &str| Fail::Unfit { op, detail: why.to_owned() };
    let raw = decode_ec_point(point.ok_or_else(|| bad("the token gave no CKA_EC_POINT"))?)
        .ok_or_else(|| bad("CKA_EC_POINT is not a 32-byte Ed25519 key (nor its DER OCTET STRING)"))?;
    VerifyingKey::from_bytes(&raw).map_err(|_| bad("CKA_EC_POINT is not an Ed25519 point"))
}

/// Deletes `handles` on session `s` (a generation that failed half-way). Best effort: a
/// failure is logged; the key store's intent still names the pair.
fn destroy_all(s: &Session, token: &str, handles: &[ObjectHandle]) {
    for &h in handles {
        if let Err(e) = s.destroy_object(h) {
            tracing::warn!(token, error = %describe(&e), "could not delete an unused key object from the token");
        }
    }
}

/// `C_Initialize` with OS locking (the signer calls the module from several threads).
fn initialize(ctx: &Pkcs11) -> Result<()> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Already initialised by this process (a second backend over the same module).
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(Fail::Call { op: "initialising the module", error: e }.into()),
    }
}

/// The PKCS#11 [`KeyBackend`].
#[derive(Debug, Clone)]
pub struct TokenBackend {
    token: Arc<Token>,
}

impl TokenBackend {
    /// Loads the module, finds the token labelled `cfg.token_label`, checks its mechanisms and
    /// logs in (see the module docs). `mlock` counts (or, if required, refuses) a PIN whose
    /// memory could not be locked; `metrics` are the backend's series.
    pub fn open(cfg: TokenConfig, mlock: &MlockPolicy, metrics: TokenMetrics) -> Result<Self> {
        mlock.check(cfg.pin.is_locked(), "PKCS#11 PIN", None)?;
        let module = cfg.module;
        let ctx = Pkcs11::new(&module).map_err(|e| SignerError::Token {
            op: "loading the module",
            detail: format!("{}: {}", module.display(), describe(&e)),
        })?;
        initialize(&ctx)?;
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
                Err(e) => return Err(Fail::Call { op: "checking mechanisms", error: e }.into()),
            }
        }
        let live = Token::connect(&ctx, &cfg.token_label, &module, &cfg.pin)?;
        let info = ctx.get_token_info(slot).map_err(Fail::call("reading token info"))?;
        tracing::info!(
            token = %cfg.token_label,
            module = %module.display(),
            manufacturer = info.manufacturer_id(),
            model = info.model(),
            "PKCS#11 token ready: workspace keys are generated and used inside it"
        );
        metrics.lost.set(0);
        let token = Token {
            ctx,
            label: cfg.token_label,
            module,
            pin: cfg.pin,
            live: RwLock::new(Ok(live)),
            epoch: AtomicU64::new(0),
            reinit_at: Mutex::new(None),
            missing: Mutex::new(Missing::default()),
            lost_retry: Mutex::new(Backoff::lost_token()),
            next: AtomicUsize::new(0),
            params: AtomicUsize::new(0),
            metrics,
            #[cfg(test)]
            refuse_form: (AtomicUsize::new(usize::MAX), AtomicUsize::new(0)),
        };
        Ok(Self { token: Arc::new(token) })
    }
}

/// The one slot whose token has `label` (labels are blank-padded to 32 bytes by the standard;
/// cryptoki trims them).
fn find_slot(ctx: &Pkcs11, label: &str, module: &Path) -> Result<Slot> {
    let slots = ctx.get_slots_with_token().map_err(Fail::call("listing slots"))?;
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

/// A key on the token: the private key object's `CKA_ID`, its (cached) handle with the epoch
/// of the module that gave it, and its public key.
struct TokenKey {
    token: Arc<Token>,
    id: Vec<u8>,
    handle: Mutex<Option<(u64, ObjectHandle)>>,
    public: VerifyingKey,
}

impl TokenKey {
    fn cached(&self) -> Result<Option<(u64, ObjectHandle)>> {
        self.handle.lock().map(|h| *h).map_err(|_| SignerError::Token { op: "signing", detail: "poisoned lock".into() })
    }

    /// Finds the private key again by its `CKA_ID` (one object, or it is not ours to use) and
    /// caches its handle with its epoch.
    fn look_up(&self) -> Result<(u64, ObjectHandle)> {
        let (epoch, found) = off_worker(|| self.token.find(ObjectClass::PRIVATE_KEY, &self.id))?;
        let [h] = found.as_slice() else {
            return Err(SignerError::Token {
                op: "finding a key",
                detail: format!(
                    "{} private key objects with CKA_ID {} (expected one)",
                    found.len(),
                    hex::encode(&self.id)
                ),
            });
        };
        if let Ok(mut cached) = self.handle.lock() {
            *cached = Some((epoch, *h));
        }
        Ok((epoch, *h))
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey").field("public", &self.public).field("token", &self.token.label).finish()
    }
}

/// Times a signature is tried with a handle found again (an epoch passed between finding and
/// signing, or the token dropped the handle): re-initialisations are [`REINIT_EVERY`] apart, so
/// this is not reached in practice.
const SIGN_TRIES: usize = 3;

impl WorkspaceKey for TokenKey {
    fn public_key(&self) -> VerifyingKey {
        self.public
    }

    fn sign(&self, msg: &[u8]) -> Result<[u8; 64]> {
        let t = &self.token;
        let mut looked_up = false;
        let mut tries = 0;
        let sig = loop {
            tries += 1;
            let (epoch, handle) = match self.cached()? {
                // Handles are the module's: after a re-initialisation the number may name
                // another object, so a handle of an older epoch is never used.
                Some((epoch, h)) if epoch == t.epoch() => (epoch, h),
                _ => {
                    looked_up = true;
                    self.look_up()?
                }
            };
            match t.sign(epoch, handle, msg) {
                Ok(Some(sig)) => break sig,
                Ok(None) if tries < SIGN_TRIES => {}
                Ok(None) => {
                    return Err(SignerError::Token { op: "signing", detail: "the module kept re-initialising".into() })
                }
                // Handles are not stable across a token's re-insertion or an HSM restart either:
                // look the key up again by its CKA_ID, and if it has a new handle, sign with that.
                Err(e) if !looked_up => {
                    looked_up = true;
                    let (_, again) = self.look_up().map_err(|_| SignerError::from(e))?;
                    if again == handle {
                        return Err(SignerError::Token {
                            op: "signing",
                            detail: "the token refused the key's handle, and finds the key under the same one".into(),
                        });
                    }
                    tracing::warn!(token = %t.label, "a key's object handle changed; using the new one");
                }
                Err(e) => return Err(e.into()),
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

    fn generate(
        &self,
        ws: &str,
        _when: &'static str,
        intent: &mut dyn FnMut(&KeyRef) -> Result<()>,
    ) -> Result<Generated> {
        let t = &self.token;
        let id = random_bytes::<16>()?;
        let stored = KeyRef::Token { object_id: hex::encode(id) };
        // Durable before the token has anything to lose track of: a crash after the
        // generation leaves this, and the next start deletes the pair if nothing records it.
        intent(&stored)?;
        let (public, key_id) = off_worker(|| t.generate(ws, &id))?;
        // Its handle is found by CKA_ID at its first signature (the probe's).
        let key = TokenKey { token: t.clone(), id: id.to_vec(), handle: Mutex::new(None), public };
        // The probe: the public key read back really is the private key's.
        if let Err(e) = key.sign(PROBE) {
            self.discard(ws, &stored);
            return Err(e);
        }
        tracing::info!(workspace = ws, key_id, token = %t.label, "key pair generated on the PKCS#11 token");
        Ok(Generated { key: Box::new(key), key_id, stored })
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
        let op = "loading a key";
        // Everything under one hold of the module: the handles found are the ones read.
        let found = off_worker(|| {
            t.call(op, None, OnLost::Retry, |s| {
                let find = |class| {
                    s.find_objects(&[Attribute::Class(class), Attribute::Id(id.clone())]).map_err(Fail::call(op))
                };
                let (privates, publics) = (find(ObjectClass::PRIVATE_KEY)?, find(ObjectClass::PUBLIC_KEY)?);
                let ([private_h], [public_h]) = (privates.as_slice(), publics.as_slice()) else {
                    return Ok(Err(format!(
                        "{} private and {} public key objects (expected one of each)",
                        privates.len(),
                        publics.len()
                    )));
                };
                let key = public_of(&s.get_attributes(*public_h, &[AttributeType::EcPoint]).map_err(Fail::call(op))?)?;
                let attrs = s
                    .get_attributes(
                        *private_h,
                        &[
                            AttributeType::Sensitive,
                            AttributeType::Extractable,
                            AttributeType::AlwaysSensitive,
                            AttributeType::NeverExtractable,
                            AttributeType::KeyType,
                        ],
                    )
                    .map_err(Fail::call(op))?;
                Ok(Ok((t.epoch(), *private_h, key, attrs)))
            })
        })?
        .ok_or(SignerError::Token { op, detail: "no epoch was asked for".into() })?;
        let (epoch, private_h, key, attrs) = found.map_err(|why| missing(&why))?;
        if key.as_bytes() != public {
            return Err(missing("the public key differs from the one published"));
        }
        // A key that is or ever was readable (not sensitive, extractable: imported, unwrapped,
        // or loosened later) is not one this backend made, and a token key is only trusted if
        // its value never left the token.
        let safe = attrs.contains(&Attribute::Sensitive(true))
            && attrs.contains(&Attribute::Extractable(false))
            && attrs.contains(&Attribute::AlwaysSensitive(true))
            && attrs.contains(&Attribute::NeverExtractable(true))
            && attrs.contains(&Attribute::KeyType(KeyType::EC_EDWARDS));
        if !safe {
            return Err(missing(
                "the private key is not an Ed25519 key that was always sensitive and never extractable",
            ));
        }
        // Missing before (its workspace unloaded meanwhile) and back now.
        t.key_found(&id);
        Ok(Box::new(TokenKey { token: t.clone(), id, handle: Mutex::new(Some((epoch, private_h))), public: key }))
    }

    fn destroy(&self, stored: &KeyRef) -> Result<usize> {
        let KeyRef::Token { object_id } = stored else { return Ok(0) };
        let id = hex::decode(object_id).map_err(|_| SignerError::Corrupt(format!("object id {object_id:?}")))?;
        Ok(off_worker(|| self.token.destroy_id(&id, None))?)
    }

    /// The private key object alone: the public one stays on the token beside the key file's
    /// copy, for whoever audits the token.
    fn destroy_private(&self, stored: &KeyRef) -> Result<usize> {
        let KeyRef::Token { object_id } = stored else { return Ok(0) };
        let id = hex::decode(object_id).map_err(|_| SignerError::Corrupt(format!("object id {object_id:?}")))?;
        Ok(off_worker(|| self.token.destroy_id(&id, Some(ObjectClass::PRIVATE_KEY)))?)
    }

    /// The token's information and a logged-in session: fails while the token is gone, and
    /// then re-initialises the module to find it again (see the module docs).
    fn check(&self) -> Result<()> {
        let t = &self.token;
        match t.probe() {
            Ok(()) => t.look_for_missing_keys(),
            Err(f) if f.token_gone() => {
                let e = SignerError::from(f);
                t.lose(&e.to_string());
                t.reinitialise()
            }
            Err(f) => Err(f.into()),
        }
    }
}

/// The SoftHSM2 fixture of the integration tests, for the one unit test that needs a real
/// token and the test seam ([`Token::refuse_form`]).
#[cfg(test)]
#[path = "../tests/support/softhsm.rs"]
mod test_softhsm;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The curve-form fallback on a real token. SoftHSM2 takes both forms of `CKA_EC_PARAMS`,
    /// so the test seam makes it refuse the first (the OID) with `CKR_CURVE_NOT_SUPPORTED`, as
    /// a token that knows Ed25519 only by the curve's name does. The backend's generation then
    /// makes the key pair with the name — stored so on the token, labelled, its public key read
    /// back, its probe signed and verified —, the key signs and opens again (as after a
    /// restart), and the next generation uses the name at once: the OID is not tried (nor
    /// refused) again. Without the fallback the first generation fails.
    #[test]
    fn a_token_that_refuses_the_oid_gets_keys_made_with_the_curve_name_and_is_asked_so_next() {
        let hsm = test_softhsm::softhsm(&["curve-fallback"]);
        let tmp = tempfile::tempdir().unwrap();
        let pin = Pin::from_file(&hsm.pin_file(tmp.path(), "pin", test_softhsm::USER_PIN)).unwrap();
        let cfg = TokenConfig { module: hsm.module.clone(), token_label: "curve-fallback".into(), pin };
        let b = TokenBackend::open(cfg, &MlockPolicy::default(), TokenMetrics::default()).unwrap();
        b.token.refuse_form.0.store(0, Ordering::Relaxed);
        let refusals = || b.token.refuse_form.1.load(Ordering::Relaxed);
        // CKA_EC_PARAMS of the public key object of `stored`, read on the token.
        let params_of = |stored: &KeyRef| {
            let KeyRef::Token { object_id } = stored else { panic!("not a token key: {stored:?}") };
            let id = hex::decode(object_id).unwrap();
            b.token
                .with_session("test", |s| {
                    let found =
                        s.find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY), Attribute::Id(id.clone())])?;
                    assert_eq!(found.len(), 1);
                    s.get_attributes(found[0], &[AttributeType::EcParams])
                })
                .unwrap()
        };
        let signs = |key: &dyn WorkspaceKey, msg: &[u8]| {
            let sig = key.sign(msg).unwrap();
            key.public_key().verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig)).unwrap();
        };

        let g = b.generate("ws_curve_a", "create", &mut |_| Ok(())).unwrap();
        assert_eq!(refusals(), 1, "the OID was tried first, and refused");
        assert_eq!(params_of(&g.stored), [Attribute::EcParams(ED25519_PARAMS[1].to_vec())]);
        signs(&*g.key, b"made with the curve's name");
        let public = g.key.public_key().to_bytes();
        let opened = b.open("ws_curve_a", &g.key_id, &public, &g.stored, "load").unwrap();
        signs(&*opened, b"opened again");

        let g = b.generate("ws_curve_b", "create", &mut |_| Ok(())).unwrap();
        assert_eq!(refusals(), 1, "the OID was tried again");
        assert_eq!(params_of(&g.stored), [Attribute::EcParams(ED25519_PARAMS[1].to_vec())]);
        signs(&*g.key, b"the name at once");
    }

    /// Re-initialisations for a missing key: the first at once, then 5 s, 10 s, 20 s, … apart,
    /// never more than 300 s, and from the start again once nothing is missing.
    #[test]
    fn missing_key_reinitialisations_back_off_to_a_cap() {
        let t0 = Instant::now();
        let mut b = Backoff::missing_key();
        assert!(b.due(t0));
        let mut at = t0;
        let mut gaps = Vec::new();
        for _ in 0..10 {
            assert!(b.due(at));
            b.ran(at);
            gaps.push(b.wait.as_secs());
            assert!(!b.due(at + b.wait - Duration::from_millis(1)), "not before its wait");
            at += b.wait;
        }
        assert_eq!(gaps, [5, 10, 20, 40, 80, 160, 300, 300, 300, 300]);
        assert_eq!(Backoff::missing_key().wait, MISSING_KEY_REINIT_EVERY);
    }

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

    /// The curve-name fallback: a token that refuses one form of `CKA_EC_PARAMS` (each way a
    /// token says so) gets the other; the form that worked is tried first next time; any other
    /// failure is not taken for a curve refusal (no second try); both refused is the last
    /// refusal.
    #[test]
    fn a_token_that_refuses_one_form_of_the_curve_gets_the_other_and_it_is_tried_first_next() {
        use cryptoki::context::Function;
        let refusal = |rv| CkError::Pkcs11(rv, Function::GenerateKeyPair);
        for rv in [
            RvError::CurveNotSupported,
            RvError::AttributeValueInvalid,
            RvError::DomainParamsInvalid,
            RvError::TemplateInconsistent,
        ] {
            // A token that takes only the curve's name (PKCS#11 3.0's PrintableString).
            let mut tried = Vec::new();
            let r = with_curve_forms(0, |p| {
                tried.push(p.to_vec());
                if p == ED25519_PARAMS[1] {
                    Ok("made")
                } else {
                    Err(refusal(rv))
                }
            });
            assert_eq!(r.unwrap(), (1, "made"), "{rv:?}");
            assert_eq!(tried, [ED25519_PARAMS[0].to_vec(), ED25519_PARAMS[1].to_vec()], "{rv:?}");
            // Next time the name is tried first, and the OID not at all.
            let mut tried = Vec::new();
            let r = with_curve_forms(1, |p| {
                tried.push(p.to_vec());
                if p == ED25519_PARAMS[1] {
                    Ok("made")
                } else {
                    Err(refusal(rv))
                }
            });
            assert_eq!((r.unwrap(), tried.len()), ((1, "made"), 1));
        }
        // A token that takes the OID: the first form, one try.
        let mut n = 0;
        assert_eq!(
            with_curve_forms(0, |p| {
                n += 1;
                if p == ED25519_PARAMS[0] {
                    Ok(())
                } else {
                    Err(refusal(RvError::CurveNotSupported))
                }
            })
            .unwrap()
            .0,
            0
        );
        assert_eq!(n, 1);
        // Not a curve refusal: returned at once, the other form not tried.
        let mut n = 0;
        let e = with_curve_forms(0, |_| -> std::result::Result<(), _> {
            n += 1;
            Err(refusal(RvError::DeviceError))
        });
        assert!(matches!(e, Err(CkError::Pkcs11(RvError::DeviceError, _))) && n == 1, "{e:?}");
        // Both refused: the last refusal.
        let e = with_curve_forms(0, |p| -> std::result::Result<(), _> {
            Err(refusal(if p == ED25519_PARAMS[0] {
                RvError::CurveNotSupported
            } else {
                RvError::AttributeValueInvalid
            }))
        });
        assert!(matches!(e, Err(CkError::Pkcs11(RvError::AttributeValueInvalid, _))), "{e:?}");
    }

    /// Whether a failure is the token being gone (re-initialising the module may help) or a
    /// refusal (a PIN: re-initialising would not, and must not be tried at every check).
    #[test]
    fn a_token_that_refuses_the_pin_is_not_taken_for_a_lost_one() {
        use cryptoki::context::Function;
        let call = |rv| Fail::Call { op: "x", error: CkError::Pkcs11(rv, Function::Login) };
        for rv in [RvError::PinIncorrect, RvError::PinLocked, RvError::PinExpired] {
            assert!(!call(rv).token_gone(), "{rv:?}");
        }
        for rv in [RvError::GeneralError, RvError::TokenNotPresent, RvError::DeviceRemoved, RvError::DeviceError] {
            assert!(call(rv).token_gone(), "{rv:?}");
        }
        assert!(Fail::Lost { op: "x", why: "gone".into() }.token_gone());
        assert!(!Fail::Unfit { op: "x", detail: "odd".into() }.token_gone());
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
