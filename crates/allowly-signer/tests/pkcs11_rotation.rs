//! A workspace key rotation whose token is lost between the rotation's key file and its
//! `key.rotated` leaf, against a real SoftHSM2 token. The loss has to come at exactly that
//! moment, which no outside process can time, so the signer runs in this process (its real
//! key store, journal, workspace actors and socket server, over the real PKCS#11 backend) and
//! the token is lost as the other tests lose one — its SoftHSM2 directory moved away — by the
//! new key's first signature, the leaf's. A binary of its own: it re-initialises the module
//! in this process (as the backend does to find a lost token), which another test's
//! in-process sessions must not share.
#![allow(clippy::unwrap_used)]

#[path = "support/softhsm.rs"]
mod softhsm;
mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use allowly_receipt::merkle::Hash;
use allowly_signer::error::Result;
use allowly_signer::journal::{Journal, JournalOptions};
use allowly_signer::keystore::{Generated, KeyBackend, KeyRef, KeyStore, MlockPolicy, WorkspaceKey};
use allowly_signer::metrics::Metrics;
use allowly_signer::pkcs11::{Pin, TokenBackend, TokenConfig};
use allowly_signer::{server, Limits, Shared};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use softhsm::{softhsm, SoftHsm, USER_PIN};
use support::*;

const LABEL: &str = "repeat";

fn hsm() -> &'static SoftHsm {
    softhsm(&[LABEL])
}

/// The token backend, except that while `armed` the first key it opens for a rotation (the
/// new key, opened once its key file is written) loses the token at its first signature —
/// the rotation's leaf — before signing.
#[derive(Debug)]
struct LosesTheToken {
    inner: TokenBackend,
    armed: Arc<AtomicBool>,
    home: PathBuf,
    away: PathBuf,
}

impl KeyBackend for LosesTheToken {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn generate(
        &self,
        ws: &str,
        when: &'static str,
        intent: &mut dyn FnMut(&KeyRef) -> Result<()>,
    ) -> Result<Generated> {
        self.inner.generate(ws, when, intent)
    }
    fn open(
        &self,
        ws: &str,
        key_id: &str,
        public: &[u8; 32],
        stored: &KeyRef,
        when: &'static str,
    ) -> Result<Box<dyn WorkspaceKey>> {
        let key = self.inner.open(ws, key_id, public, stored, when)?;
        if when == "rotate" && self.armed.swap(false, Ordering::SeqCst) {
            let lose = Mutex::new(Some((self.home.clone(), self.away.clone())));
            return Ok(Box::new(LostAtFirstSignature { key, lose }));
        }
        Ok(key)
    }
    fn destroy(&self, stored: &KeyRef) -> Result<usize> {
        self.inner.destroy(stored)
    }
    fn check(&self) -> Result<()> {
        self.inner.check()
    }
}

#[derive(Debug)]
struct LostAtFirstSignature {
    key: Box<dyn WorkspaceKey>,
    lose: Mutex<Option<(PathBuf, PathBuf)>>,
}

impl WorkspaceKey for LostAtFirstSignature {
    fn public_key(&self) -> ed25519_dalek::VerifyingKey {
        self.key.public_key()
    }
    fn sign(&self, msg: &[u8]) -> Result<[u8; 64]> {
        if let Some((home, away)) = self.lose.lock().unwrap().take() {
            std::fs::rename(home, away).unwrap();
        }
        self.key.sign(msg)
    }
}

/// This process's own view of the token, for counting what the signer made on it. Never
/// dropped: cryptoki finalises the module when its context drops, which would end the
/// backend's sessions too.
fn module() -> &'static Pkcs11 {
    static CTX: OnceLock<Pkcs11> = OnceLock::new();
    CTX.get_or_init(|| Pkcs11::new(&hsm().module).unwrap())
}

/// How many objects on the token are labelled for workspace `ws` (`allowly:<ws>:…`; two per
/// key pair). Asked once the backend has the token again: its re-initialisation finalised
/// the module (for this process), so it is initialised here if it is not.
fn labelled_for(ws: &str) -> usize {
    let ctx = module();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("C_Initialize: {e}"),
    }
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).is_ok_and(|i| i.label() == LABEL))
        .unwrap();
    let s = ctx.open_ro_session(slot).unwrap();
    match s.login(UserType::User, Some(&AuthPin::from(USER_PIN))) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("login: {e}"),
    }
    let prefix = format!("allowly:{ws}:");
    s.find_objects(&[])
        .unwrap()
        .into_iter()
        .filter(|h| {
            s.get_attributes(*h, &[AttributeType::Label])
                .unwrap()
                .iter()
                .any(|a| matches!(a, Attribute::Label(l) if l.starts_with(prefix.as_bytes())))
        })
        .count()
}

/// The signer over `dir`, in this process, on the token through [`LosesTheToken`] (which
/// moves the token's directory from `home` to `away`).
fn signer(dir: &Path, armed: Arc<AtomicBool>, home: PathBuf, away: PathBuf) -> Arc<Shared> {
    let pin = Pin::from_file(&hsm().pin_file(dir, "pin", USER_PIN)).unwrap();
    let cfg = TokenConfig { module: hsm().module.clone(), token_label: LABEL.into(), pin };
    let metrics = Metrics::new();
    let inner = TokenBackend::open(cfg, &MlockPolicy::default(), metrics.token()).unwrap();
    let backend = LosesTheToken { inner, armed, home, away };
    let keystore = KeyStore::open(dir, Box::new(backend)).unwrap();
    let journal = Journal::open(dir, JournalOptions::default(), metrics.clone()).unwrap();
    let uids = vec![rustix::process::geteuid().as_raw()];
    Arc::new(Shared::new(dir.to_owned(), keystore, journal, metrics, uids, Limits::default()))
}

/// The token is lost by the rotation's leaf signature (after the new key's file is written)
/// and comes back; the rotation is answered with an error, so — as the engine takes it — it
/// did not happen: the workspace signs on with its old key, at the size the rotation was
/// asked at, and its published keys are the old ones. Then the engine's repeat of the rotation
/// uses the key the first attempt made: one new key pair on the token per rotation, not one
/// per attempt, and no retired key that never signed. Done twice, once with the repeat at the
/// same size (nothing appended meanwhile) and once after appends. Every receipt passes the
/// real `allowly-verify` against the final key set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_lost_between_a_rotations_key_file_and_its_leaf_makes_no_second_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let sock = tmp.path().join("run").join("signer.sock");
    let armed = Arc::new(AtomicBool::new(false));
    let (home, away) = (hsm().token_dir(LABEL), hsm().root.join(format!("{LABEL}-away")));
    let shared = signer(&dir, armed.clone(), home.clone(), away.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = server::bind(&sock).unwrap();
    let serving = tokio::spawn(server::serve(listener, shared.clone(), async {
        let _ = stopped.await;
    }));
    let c = client(&sock);
    let diag = || String::new();

    for (ws, appended_between) in [("ws_repeat_same", 0), ("ws_repeat_after", 2)] {
        let first = c.create_key(ws).await.unwrap();
        let old_v = [verifier(ws, &first[0])];
        let mut all: Vec<Hash> = Vec::new();
        let batch = bodies(ws, 0, 3);
        let out = c.append_batch_with_proofs(ws, 0, batch.clone()).await.unwrap();
        all.extend(hashes(&batch));
        check_appended(ws, &all, &batch, &out, &old_v);
        let mut receipts = signed_receipts(&batch, &out);

        armed.store(true, Ordering::SeqCst);
        let e = c.rotate_key(ws, all.len() as u64).await.unwrap_err();
        assert!(!armed.load(Ordering::SeqCst), "the rotation never opened its new key");
        assert!(e.to_string().contains("PKCS#11 token is unavailable"), "{ws}: {e}");
        std::fs::rename(&away, &home).unwrap();
        eventually("the signer to find the token again", diag, || async { c.ping().await.ok() }).await;
        assert_eq!(labelled_for(ws), 4, "{ws}: the first attempt made its key pair");
        assert_eq!(c.list_keys(ws).await.unwrap(), first, "{ws}: a rotation answered with an error was published");

        if appended_between > 0 {
            let batch = bodies(ws, all.len(), appended_between);
            let out = c.append_batch_with_proofs(ws, all.len() as u64, batch.clone()).await.unwrap();
            all.extend(hashes(&batch));
            check_appended(ws, &all, &batch, &out, &old_v);
            receipts.extend(signed_receipts(&batch, &out));
        }
        // The engine's repeat.
        let keys = repeat_rotation(&c, ws, &first[0], &mut all, &mut receipts).await;
        assert_eq!(labelled_for(ws), 4, "{ws}: a second key pair on the token");
        allowly_verify(ws, &keys, &receipts, tmp.path());
    }
    let _ = stop.send(());
    serving.await.unwrap();
}
