//! The PKCS#11 key backend against a real SoftHSM2 token: the real `allowly-signer` binary with
//! `--keystore pkcs11` over its socket (keys made on the token, checkpoints that verify under
//! the published keys, rotation, restart, a token that refuses), and the backend in-process
//! where only this process can make the token misbehave (a lost login, a changed PIN). What the
//! signer made is inspected on the token itself through PKCS#11, never taken on its word.
#![allow(clippy::unwrap_used)]

#[path = "support/softhsm.rs"]
mod softhsm;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use allowly_receipt::merkle::{self, Hash};
use allowly_receipt::types::AnyReceipt;
use allowly_receipt::verify::{verify_receipt, Outcome};
use allowly_signer::keystore::{KeyBackend, KeyRef, KeyStore, MlockPolicy};
use allowly_signer::pkcs11::{decode_ec_point, Pin, TokenBackend, TokenConfig, ED25519_PARAMS};
use allowly_signer_proto::client::{ClientError, SignerClient};
use allowly_signer_proto::{ErrorCode, KeyInfo};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use softhsm::{softhsm, SoftHsm, USER_PIN};
use support::*;

/// Every token this test binary uses, one per test (tests run in parallel).
const TOKENS: &[&str] = &[
    "sign", "rotate", "refuse", "env", "loss", "idle", "gone", "stale", "curve", "orphan", "cut", "retire", "vanish",
    "miss", "lost", "moving",
];

fn hsm() -> &'static SoftHsm {
    softhsm(TOKENS)
}

/// `allowly-signer init --keystore pkcs11` in `root/data`, and a socket path beside it.
fn fresh_pkcs11(root: &Path) -> (PathBuf, PathBuf) {
    let dir = root.join("data");
    let out = Command::new(signer_bin())
        .args(["init", "--keystore", "pkcs11", "--dir"])
        .arg(&dir)
        .output()
        .expect("run init");
    assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.join("master.key").exists(), "a PKCS#11 signer has no master key");
    (dir, root.join("run").join("signer.sock"))
}

/// A fresh PKCS#11 signer directory served on token `label`: the temp dir holding everything,
/// the signer's directory, its socket, the PIN file, and the signer.
fn served_on(label: &str) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf, Signer) {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh_pkcs11(tmp.path());
    let pin = hsm().pin_file(tmp.path(), "pin", USER_PIN);
    let s = serve_on(label, &dir, &sock, &pin);
    (tmp, dir, sock, pin, s)
}

/// `serve` on `label` with the PIN in `pin_file`.
fn serve_on(label: &str, dir: &Path, sock: &Path, pin_file: &Path) -> Signer {
    serve_on_with(label, dir, sock, pin_file, &[])
}

/// [`serve_on`] with more `serve` arguments.
fn serve_on_with(label: &str, dir: &Path, sock: &Path, pin_file: &Path, extra: &[&str]) -> Signer {
    let token = hsm().signer_args(label, pin_file);
    let args: Vec<&str> = token.iter().map(String::as_str).chain(extra.iter().copied()).collect();
    serve_on_with_args(dir, sock, &args)
}

/// This process's own view of the tokens, for inspecting what the signer made.
fn module() -> &'static Pkcs11 {
    static CTX: OnceLock<Pkcs11> = OnceLock::new();
    CTX.get_or_init(|| {
        let ctx = Pkcs11::new(&hsm().module).unwrap();
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => panic!("C_Initialize: {e}"),
        }
        ctx
    })
}

/// A read-write session on token `label`, logged in as the user.
fn user_session(label: &str) -> Session {
    let ctx = module();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        // Another token may be unreadable while a signer rewrites its files: not ours.
        .find(|s| ctx.get_token_info(*s).is_ok_and(|i| i.label() == label))
        .unwrap_or_else(|| panic!("no token {label}"));
    let s = ctx.open_rw_session(slot).unwrap();
    match s.login(UserType::User, Some(&AuthPin::from(USER_PIN))) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("login: {e}"),
    }
    s
}

/// The `token_object` (CKA_ID, hex) of every key in `<dir>/keys/<ws>.json`, checking that no
/// key has a sealed seed.
fn token_objects(dir: &Path, ws: &str) -> Vec<Vec<u8>> {
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("keys").join(format!("{ws}.json"))).unwrap()).unwrap();
    file["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            assert!(
                k.get("sealed_seed").is_none() && k.get("nonce").is_none(),
                "a sealed key on a PKCS#11 signer: {k}"
            );
            hex::decode(k["token_object"].as_str().unwrap()).unwrap()
        })
        .collect()
}

fn one(s: &Session, class: ObjectClass, id: &[u8]) -> ObjectHandle {
    let found = s.find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())]).unwrap();
    assert_eq!(found.len(), 1, "objects of class {class:?} with CKA_ID {}", hex::encode(id));
    found[0]
}

/// Checks on the token that the key pair with CKA_ID `id` is a non-extractable Ed25519 key
/// labelled for `ws` and `key_id`, whose private value cannot be read, and whose public key is
/// `public`.
fn check_on_token(label: &str, id: &[u8], ws: &str, key_id: [u8; 4], public: &[u8; 32]) {
    let s = user_session(label);
    let private = one(&s, ObjectClass::PRIVATE_KEY, id);
    let want_label = format!("allowly:{ws}:{}", hex::encode(key_id)).into_bytes();
    let attrs = s
        .get_attributes(
            private,
            &[
                AttributeType::KeyType,
                AttributeType::Token,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::AlwaysSensitive,
                AttributeType::NeverExtractable,
                AttributeType::Label,
            ],
        )
        .unwrap();
    for want in [
        Attribute::KeyType(KeyType::EC_EDWARDS),
        Attribute::Token(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::AlwaysSensitive(true),
        Attribute::NeverExtractable(true),
        Attribute::Label(want_label.clone()),
    ] {
        assert!(attrs.contains(&want), "private key lacks {want:?}: {attrs:?}");
    }
    // The attempt to read the private key: the token refuses it (CKR_ATTRIBUTE_SENSITIVE).
    let info = s.get_attribute_info(private, &[AttributeType::Value]).unwrap();
    assert!(matches!(info.as_slice(), [AttributeInfo::Sensitive]), "CKA_VALUE is {info:?}");
    let got = s.get_attributes(private, &[AttributeType::Value]).unwrap();
    assert!(!got.iter().any(|a| matches!(a, Attribute::Value(_))), "CKA_VALUE was readable: {got:?}");

    let public_h = one(&s, ObjectClass::PUBLIC_KEY, id);
    let attrs = s.get_attributes(public_h, &[AttributeType::EcPoint, AttributeType::Label]).unwrap();
    assert!(attrs.contains(&Attribute::Label(want_label)), "{attrs:?}");
    let point = attrs.iter().find_map(|a| if let Attribute::EcPoint(p) = a { Some(p.clone()) } else { None });
    assert_eq!(decode_ec_point(&point.unwrap()).as_ref(), Some(public), "CKA_EC_POINT is not the published key");
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_made_on_the_token_unreadable_and_sign_checkpoints_that_verify() {
    let (_tmp, dir, _sock, _pin, mut s) = served_on("sign");
    let c = s.ready().await;
    let ws = "ws_hsm_sign";

    let keys = c.create_key(ws).await.unwrap();
    assert_eq!(keys.len(), 1);
    let v = vec![verifier(ws, &keys[0])];
    let mut all: Vec<Hash> = Vec::new();
    for n in [1, 5, 40] {
        let batch = bodies(ws, all.len(), n);
        let out = c.append_batch_with_proofs(ws, all.len() as u64, batch.clone()).await.unwrap();
        all.extend(hashes(&batch));
        check_appended(ws, &all, &batch, &out, &v);
    }
    // A second workspace gets a key of its own.
    let other = c.create_key("ws_hsm_other").await.unwrap();
    assert_ne!(other[0].public_key, keys[0].public_key);

    let ids = token_objects(&dir, ws);
    assert_eq!(ids.len(), 1);
    check_on_token("sign", &ids[0], ws, keys[0].key_id, &keys[0].public_key);
    let metrics = c.metrics().await.unwrap();
    assert_eq!(metric(&metrics, "allowly_signer_checkpoints_signed_total"), 3.0, "{metrics}");
}

/// An idle workspace on a token is unloaded like a sealed-file one (its key object's cached
/// handle forgotten), and its next append finds the key on the token again and signs on from
/// the same checkpoint: consistent with the one before, under the same published key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_workspace_on_a_token_is_unloaded_and_its_next_append_signs_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh_pkcs11(tmp.path());
    let pin = hsm().pin_file(tmp.path(), "pin", USER_PIN);
    let ws = "ws_hsm_idle";
    let mut s = serve_on_with("idle", &dir, &sock, &pin, &["--idle-unload-secs", "0.2"]);
    let c = s.ready().await;
    let keys = c.create_key(ws).await.unwrap();
    let v = vec![verifier(ws, &keys[0])];
    let mut all: Vec<Hash> = Vec::new();
    let batch = bodies(ws, 0, 5);
    let before = c.append_batch(ws, 0, batch.clone()).await.unwrap();
    all.extend(hashes(&batch));
    check_appended_without_proofs(ws, &all, &batch, &before, &v);

    all_unloaded(&s, &c, 1.0).await;
    let batch = bodies(ws, all.len(), 3);
    let after = c.append_batch(ws, all.len() as u64, batch.clone()).await.unwrap();
    all.extend(hashes(&batch));
    check_appended_without_proofs(ws, &all, &batch, &after, &v);
    check_extends(ws, &all, &before.checkpoint, &after.checkpoint, &v);
    assert_eq!(c.list_keys(ws).await.unwrap(), keys, "the same key, found on the token again");
    let ids = token_objects(&dir, ws);
    check_on_token("idle", &ids[0], ws, keys[0].key_id, &keys[0].public_key);
    let (status, out, err) =
        run_with_deadline(Command::new(signer_bin()).args(["audit", "verify"]).arg(dir.join("audit.log")));
    assert_eq!(status.code(), Some(0), "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_restart_find_the_keys_on_the_token_again() {
    let (_tmp, dir, sock, pin, mut s) = served_on("rotate");
    let ws = "ws_hsm_rotate";
    let c = s.ready().await;
    let first = c.create_key(ws).await.unwrap();
    let old_v = verifier(ws, &first[0]);
    let mut all: Vec<Hash> = Vec::new();
    let batch = bodies(ws, 0, 4);
    let out = c.append_batch_with_proofs(ws, 0, batch.clone()).await.unwrap();
    all.extend(hashes(&batch));
    check_appended(ws, &all, &batch, &out, std::slice::from_ref(&old_v));

    // Rotation through the signer's protocol: a key.rotated receipt signed by the new key.
    let rot = c.rotate_key(ws, all.len() as u64).await.unwrap();
    assert_eq!(rot.keys.len(), 2);
    let (old, new) = (&rot.keys[0], &rot.keys[1]);
    assert!(!old.active && new.active && old.key_id == first[0].key_id, "{:?}", rot.keys);
    let new_v = verifier(ws, new);
    all.push(merkle::leaf_hash(&rot.rotation.body));
    let r = &rot.rotation;
    let receipt = AnyReceipt::Signed(signed_receipt(&r.body, r.log_index, &r.proof, &r.checkpoint));
    let report = verify_receipt(&receipt, &key_set(ws, &rot.keys)).unwrap();
    assert_eq!(report.outcome(), Outcome::Valid, "{report:?}");
    let ids = token_objects(&dir, ws);
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    check_on_token("rotate", &ids[0], ws, old.key_id, &old.public_key);
    check_on_token("rotate", &ids[1], ws, new.key_id, &new.public_key);
    let batch = bodies(ws, all.len(), 3);
    let out = c.append_batch(ws, all.len() as u64, batch.clone()).await.unwrap();
    all.extend(hashes(&batch));
    check_appended_without_proofs(ws, &all, &batch, &out, std::slice::from_ref(&new_v));
    assert!(
        open_checkpoint_result(ws, &out.checkpoint, std::slice::from_ref(&old_v)).is_err(),
        "signed by the retired key"
    );

    // Restart: the keys are found on the token again and the log goes on where it was.
    stop(s);
    let mut s = serve_on("rotate", &dir, &sock, &pin);
    let c = s.ready().await;
    assert_eq!(c.list_keys(ws).await.unwrap(), rot.keys);
    assert_eq!(c.latest_checkpoint(ws).await.unwrap().size, all.len() as u64);
    let batch = bodies(ws, all.len(), 2);
    let out = c.append_batch_with_proofs(ws, all.len() as u64, batch.clone()).await.unwrap();
    all.extend(hashes(&batch));
    check_appended(ws, &all, &batch, &out, std::slice::from_ref(&new_v));
    assert!(s.audit().iter().any(|l| l["event"] == "resumed" && l["workspace_id"] == ws), "{}", s.diagnostics());
}

/// The signature check of `open_checkpoint`, as a result.
fn open_checkpoint_result(ws: &str, note: &str, v: &[allowly_receipt::note::NoteVerifier]) -> Result<(), String> {
    let signed = allowly_receipt::note::parse_signed_note(note).map_err(|e| e.to_string())?;
    signed.verify(v).map(|_| ()).map_err(|e| format!("{e} ({ws})"))
}

/// Runs `serve` with `args` (on token `refuse` unless they say otherwise) and expects it to exit
/// non-zero before serving, with `expect` in its stderr; returns the stderr.
fn refused(tmp: &Path, name: &str, args: &[String], env_pin: Option<&str>, expect: &str) -> String {
    let (dir, sock) = fresh_pkcs11(&tmp.join(format!("case-{name}")));
    let mut cmd = Command::new(signer_bin());
    cmd.arg("serve").arg("--dir").arg(&dir).arg("--socket").arg(&sock).args(args);
    cmd.env_remove(allowly_signer::pkcs11::PIN_ENV);
    if let Some(p) = env_pin {
        cmd.env(allowly_signer::pkcs11::PIN_ENV, p);
    }
    let (status, _, stderr) = run_with_deadline(&mut cmd);
    assert!(!status.success(), "{name}: the signer started: {stderr}");
    assert!(stderr.contains(expect), "{name}: stderr does not say {expect:?}:\n{stderr}");
    assert!(!sock.exists(), "{name}: the socket was bound");
    assert!(!stderr.contains(USER_PIN), "{name}: the PIN was printed:\n{stderr}");
    stderr
}

#[test]
fn a_token_that_refuses_or_is_missing_stops_the_signer_before_it_serves() {
    let h = hsm();
    let tmp = tempfile::tempdir().unwrap();
    let good = h.pin_file(tmp.path(), "pin", USER_PIN);
    let wrong = h.pin_file(tmp.path(), "wrong-pin", "0000-wrong-pin");
    let stderr = refused(tmp.path(), "pin", &h.signer_args("refuse", &wrong), None, "CKR_PIN_INCORRECT");
    assert!(!stderr.contains("0000-wrong-pin"), "the wrong PIN was printed:\n{stderr}");
    refused(tmp.path(), "label", &h.signer_args("no-such-token", &good), None, "no token labelled \"no-such-token\"");
    let mut args = h.signer_args("refuse", &good);
    args[3] = "/nonexistent/libpkcs11.so".into();
    refused(tmp.path(), "module", &args, None, "/nonexistent/libpkcs11.so");
    // A PIN file others can read is refused before the token is asked.
    let open = h.pin_file(tmp.path(), "open-pin", USER_PIN);
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    refused(tmp.path(), "mode", &h.signer_args("refuse", &open), None, "must be a file of mode 0600");
    // No PIN at all; half a configuration.
    let no_pin: Vec<String> = h.signer_args("refuse", &good)[..6].to_vec();
    refused(tmp.path(), "no-pin", &no_pin, None, "ALLOWLY_SIGNER_PKCS11_PIN");
    refused(tmp.path(), "no-label", &no_pin[..4], None, "--pkcs11-token-label");
    refused(tmp.path(), "file", &h.signer_args("refuse", &good)[2..], None, "need --keystore pkcs11");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pin_can_come_from_the_environment_and_is_scrubbed_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh_pkcs11(tmp.path());
    let mut cmd = Command::new(signer_bin());
    cmd.arg("serve").arg("--dir").arg(&dir).arg("--socket").arg(&sock);
    cmd.args(&hsm().signer_args("env", Path::new("-"))[..6]).env(allowly_signer::pkcs11::PIN_ENV, USER_PIN);
    let mut s = Signer::spawn(cmd, &dir, &sock);
    let c = s.ready().await;
    let keys = c.create_key("ws_env").await.unwrap();
    let batch = bodies("ws_env", 0, 2);
    let out = c.append_batch("ws_env", 0, batch.clone()).await.unwrap();
    check_appended_without_proofs("ws_env", &hashes(&batch), &batch, &out, &[verifier("ws_env", &keys[0])]);
    let environ = std::fs::read(format!("/proc/{}/environ", s.pid())).unwrap();
    assert!(!environ.windows(USER_PIN.len()).any(|w| w == USER_PIN.as_bytes()), "the PIN is still in environ");
}

#[test]
fn a_lost_login_is_restored_and_a_changed_pin_fails_the_backend_closed() {
    let h = hsm();
    let tmp = tempfile::tempdir().unwrap();
    let pin = Pin::from_file(&h.pin_file(tmp.path(), "pin", USER_PIN)).unwrap();
    let cfg = TokenConfig { module: h.module.clone(), token_label: "loss".into(), pin };
    let backend = TokenBackend::open(cfg, &MlockPolicy::default(), Default::default()).unwrap();
    let key = backend.generate("ws_loss", "create", &mut |_| Ok(())).unwrap().key;
    let public = key.public_key();
    let sign =
        |msg: &[u8]| key.sign(msg).map(|sig| public.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig)));
    assert!(matches!(sign(b"one"), Ok(Ok(()))));

    // Another session of this process logs out: the login (per application) is gone.
    let other = user_session("loss");
    other.logout().unwrap();
    let r = sign(b"two");
    assert!(matches!(r, Ok(Ok(()))), "the backend did not log in again: {r:?}");
    backend.check().unwrap();

    // The PIN changes under it, then the login is lost: signing and the health check fail.
    let other = user_session("loss");
    let (old, new) = (AuthPin::from(USER_PIN), AuthPin::from("5555-new-pin"));
    other.set_pin(&old, &new).unwrap();
    other.logout().unwrap();
    let e = sign(b"three").unwrap_err();
    assert!(e.to_string().contains("CKR_PIN_INCORRECT"), "{e}");
    let e = backend.check().unwrap_err();
    assert!(e.to_string().contains("CKR_PIN_INCORRECT"), "{e}");
    assert!(e.public_message().contains("PKCS#11 token is unavailable"), "{}", e.public_message());

    // The PIN is put back: the next check logs in again and signing works.
    let s = other;
    s.login(UserType::User, Some(&new)).unwrap();
    s.set_pin(&new, &old).unwrap();
    s.logout().unwrap();
    backend.check().unwrap();
    assert!(matches!(sign(b"four"), Ok(Ok(()))));
}

/// The in-process backend on token `label`.
fn backend_on(label: &str, dir: &Path) -> TokenBackend {
    let pin = Pin::from_file(&hsm().pin_file(dir, &format!("pin-{label}"), USER_PIN)).unwrap();
    let cfg = TokenConfig { module: hsm().module.clone(), token_label: label.into(), pin };
    TokenBackend::open(cfg, &MlockPolicy::default(), Default::default()).unwrap()
}

/// `msg` signed by `key` verifies under its public key.
fn signs(key: &dyn allowly_signer::keystore::WorkspaceKey, msg: &[u8]) {
    let sig = key.sign(msg).unwrap_or_else(|e| panic!("signing failed: {e}"));
    key.public_key().verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig)).unwrap();
}

/// A key whose object handle went stale under the backend (the object was copied and the
/// original deleted, as a token re-import or an HSM restore does: same `CKA_ID`, another
/// handle) still signs: the backend finds it again by its `CKA_ID`. Without the re-lookup the
/// signature fails with `CKR_OBJECT_HANDLE_INVALID`.
#[test]
fn a_key_whose_handle_went_stale_is_found_again_by_its_id_and_signs() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = backend_on("stale", tmp.path());
    let g = backend.generate("ws_stale", "create", &mut |_| Ok(())).unwrap();
    signs(&*g.key, b"before");
    let KeyRef::Token { object_id } = &g.stored else { panic!("not a token key: {:?}", g.stored) };
    let id = hex::decode(object_id).unwrap();
    let s = user_session("stale");
    let old = one(&s, ObjectClass::PRIVATE_KEY, &id);
    let copy = s.copy_object(old, &[]).unwrap();
    s.destroy_object(old).unwrap();
    assert_ne!(copy, old);
    assert_eq!(one(&s, ObjectClass::PRIVATE_KEY, &id), copy, "the copy has the key's CKA_ID");
    for msg in [&b"after"[..], b"and again"] {
        signs(&*g.key, msg);
    }
    // Loaded again (as after an unload or a restart), the key opens and signs too.
    let public = g.key.public_key().to_bytes();
    let opened = backend.open("ws_stale", &g.key_id, &public, &g.stored, "load").unwrap();
    signs(&*opened, b"opened");
}

/// The two forms of `CKA_EC_PARAMS` the backend tries (the OID, then the curve's name) are
/// each a form a real token takes for Ed25519: a key pair generated with either has that value
/// stored and signs Ed25519 signatures its public key verifies. And the backend's own keys
/// carry the first form, the one it tries first.
#[test]
fn each_curve_form_the_backend_tries_makes_an_ed25519_key_on_a_real_token() {
    let s = user_session("curve");
    let mech = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
    for (i, params) in ED25519_PARAMS.iter().enumerate() {
        let id = vec![0xc0, i as u8];
        let public = [
            Attribute::Token(false),
            Attribute::Verify(true),
            Attribute::EcParams(params.to_vec()),
            Attribute::Id(id.clone()),
        ];
        let private = [Attribute::Token(false), Attribute::Sign(true), Attribute::Sensitive(true), Attribute::Id(id)];
        let (pub_h, priv_h) = s
            .generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &public, &private)
            .unwrap_or_else(|e| panic!("form {i} ({params:02x?}) refused: {e}"));
        let attrs = s.get_attributes(pub_h, &[AttributeType::EcParams, AttributeType::EcPoint]).unwrap();
        assert!(attrs.contains(&Attribute::EcParams(params.to_vec())), "form {i}: {attrs:?}");
        let point = attrs.iter().find_map(|a| if let Attribute::EcPoint(p) = a { Some(p.clone()) } else { None });
        let key = ed25519_dalek::VerifyingKey::from_bytes(&decode_ec_point(&point.unwrap()).unwrap()).unwrap();
        let sig: [u8; 64] = s.sign(&mech, priv_h, b"curve").unwrap().try_into().unwrap();
        key.verify_strict(b"curve", &ed25519_dalek::Signature::from_bytes(&sig)).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let g = backend_on("curve", tmp.path()).generate("ws_curve", "create", &mut |_| Ok(())).unwrap();
    let KeyRef::Token { object_id } = &g.stored else { panic!("not a token key") };
    let public_h = one(&s, ObjectClass::PUBLIC_KEY, &hex::decode(object_id).unwrap());
    let attrs = s.get_attributes(public_h, &[AttributeType::EcParams]).unwrap();
    assert_eq!(attrs, vec![Attribute::EcParams(ED25519_PARAMS[0].to_vec())]);
}

/// The objects on token `label` labelled for workspace `ws` (`allowly:<ws>:…`).
fn labelled_for(label: &str, ws: &str) -> Vec<Vec<u8>> {
    let s = user_session(label);
    let prefix = format!("allowly:{ws}:");
    let mut ids = Vec::new();
    for h in s.find_objects(&[]).unwrap() {
        let attrs = s.get_attributes(h, &[AttributeType::Label, AttributeType::Id]).unwrap();
        let is_ours = attrs.iter().any(|a| matches!(a, Attribute::Label(l) if l.starts_with(prefix.as_bytes())));
        if is_ours {
            ids.extend(attrs.into_iter().filter_map(|a| if let Attribute::Id(id) = a { Some(id) } else { None }));
        }
    }
    ids
}

/// A crash between the token's key generation and the key's record leaves a key pair on the
/// token that nothing names. Made here as the signer makes it — its own key store generates
/// the pair (recording its intent first) and then nothing more happens, exactly what a crash at
/// that point leaves on disk and on the token — the real signer's next start deletes it, and
/// only it: a recorded key on the same token stays and signs, the workspace whose creation
/// crashed is created again, and no intent is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_left_unrecorded_by_a_crash_is_deleted_at_the_next_start_and_only_it() {
    let (tmp, dir, sock, pin, mut s) = served_on("orphan");
    let c = s.ready().await;
    let kept = c.create_key("ws_kept").await.unwrap();
    let pending = dir.join(allowly_signer::keystore::PENDING_DIR);
    assert_eq!(std::fs::read_dir(&pending).unwrap().count(), 0, "a recorded key's intent is settled");
    stop(s);

    {
        let store = KeyStore::open(&dir, Box::new(backend_on("orphan", tmp.path()))).unwrap();
        let made = store.prepare("ws_crashed", 1).unwrap();
        // The crash: neither `commit_new` nor `discard`; the process state is gone.
        drop(made);
    }
    let orphans = labelled_for("orphan", "ws_crashed");
    assert_eq!(orphans.len(), 2, "the crash left the key pair on the token");
    assert!(!dir.join("keys").join("ws_crashed.json").exists());
    assert_eq!(std::fs::read_dir(&pending).unwrap().count(), 1, "the intent is what the crash left behind");

    let mut s = serve_on("orphan", &dir, &sock, &pin);
    let c = s.ready().await;
    assert!(labelled_for("orphan", "ws_crashed").is_empty(), "the orphan is still on the token\n{}", s.diagnostics());
    assert_eq!(std::fs::read_dir(&pending).unwrap().count(), 0);
    let m = c.metrics().await.unwrap();
    assert_eq!(metric(&m, "allowly_signer_orphan_keys_destroyed_total"), 1.0, "{m}");
    assert!(s.stderr().contains("never recorded"), "{}", s.diagnostics());
    // The recorded key is untouched and signs; the crashed creation can be made again.
    let ids = token_objects(&dir, "ws_kept");
    check_on_token("orphan", &ids[0], "ws_kept", kept[0].key_id, &kept[0].public_key);
    let batch = bodies("ws_kept", 0, 2);
    let out = c.append_batch("ws_kept", 0, batch.clone()).await.unwrap();
    check_appended_without_proofs("ws_kept", &hashes(&batch), &batch, &out, &[verifier("ws_kept", &kept[0])]);
    let again = c.create_key("ws_crashed").await.unwrap();
    assert_eq!(labelled_for("orphan", "ws_crashed").len(), 2, "one key pair: the new one");
    let batch = bodies("ws_crashed", 0, 1);
    let out = c.append_batch("ws_crashed", 0, batch.clone()).await.unwrap();
    check_appended_without_proofs("ws_crashed", &hashes(&batch), &batch, &out, &[verifier("ws_crashed", &again[0])]);
}

/// The token goes away under a serving signer (its SoftHSM2 directory moved off, as a pulled
/// token or an HSM that restarts) and comes back. While it is gone the signer fails closed —
/// `Ping` answers an error saying the token is unavailable, appends are refused, nothing is
/// signed — and says so in `allowly_signer_token_lost`. When it is back the signer finds it by
/// itself (re-initialising the module) and the same appends are signed at the sizes they were
/// asked at, by the same keys, with checkpoints consistent with those before, for both
/// workspaces (their keys found again by `CKA_ID`: the module's handles are new).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_goes_away_fails_the_signer_closed_and_signing_resumes_when_it_is_back() {
    let (_tmp, dir, _sock, _pin, mut s) = served_on("gone");
    let c = s.ready().await;
    let spaces = ["ws_gone_a", "ws_gone_b"];
    let mut logs = Vec::new();
    for ws in spaces {
        let keys = c.create_key(ws).await.unwrap();
        let batch = bodies(ws, 0, 3);
        let out = c.append_batch(ws, 0, batch.clone()).await.unwrap();
        check_appended_without_proofs(ws, &hashes(&batch), &batch, &out, &[verifier(ws, &keys[0])]);
        logs.push((keys, hashes(&batch), out.checkpoint));
    }

    let home = hsm().token_dir("gone");
    let away = hsm().root.join("gone-away");
    std::fs::rename(&home, &away).unwrap();
    let e =
        eventually("the signer to fail its health check", || s.diagnostics(), || async { c.ping().await.err() }).await;
    assert!(e.to_string().contains("PKCS#11 token is unavailable"), "{e}");
    token_unavailable(c.ping().await, "Ping while the token is gone");
    for (&ws, (_, all, _)) in spaces.iter().zip(&logs) {
        let batch = bodies(ws, all.len(), 2);
        token_unavailable(c.append_batch(ws, all.len() as u64, batch).await, ws);
    }
    let m = c.metrics().await.unwrap();
    assert_eq!(metric(&m, "allowly_signer_token_lost"), 1.0, "{m}");
    let refused = r#"allowly_signer_requests_total{op="AppendBatch",outcome="token_unavailable"}"#;
    assert_eq!(metric(&m, refused), 2.0, "{m}");
    assert_eq!(metric(&m, "allowly_signer_checkpoints_signed_total"), 2.0, "nothing signed meanwhile: {m}");

    std::fs::rename(&away, &home).unwrap();
    eventually("the signer to find the token again", || s.diagnostics(), || async { c.ping().await.ok() }).await;
    for (&ws, (keys, all, before)) in spaces.iter().zip(&mut logs) {
        let batch = bodies(ws, all.len(), 2);
        let out = c.append_batch(ws, all.len() as u64, batch.clone()).await.unwrap();
        let v = [verifier(ws, &keys[0])];
        let from = all.len() as u64;
        all.extend(hashes(&batch));
        check_appended_without_proofs(ws, all, &batch, &out, &v);
        let (old, new) = check_extends(ws, all, before, &out.checkpoint, &v);
        assert_eq!((old.size, new.size), (from, all.len() as u64));
        assert_eq!(c.list_keys(ws).await.unwrap(), *keys, "{ws}: the same key");
    }
    let m = c.metrics().await.unwrap();
    assert_eq!(metric(&m, "allowly_signer_token_lost"), 0.0, "{m}");
    assert!(metric(&m, "allowly_signer_token_reinitialisations_total{outcome=\"ok\"}") >= 1.0, "{m}");
    let (status, out, err) =
        run_with_deadline(Command::new(signer_bin()).args(["audit", "verify"]).arg(dir.join("audit.log")));
    assert_eq!(status.code(), Some(0), "{out}{err}");
}

/// What the signer tells a caller whose request the token failed: its own code, and no word of
/// the module's (object ids, return values) — those are in its log.
fn token_unavailable<T: std::fmt::Debug>(r: Result<T, ClientError>, what: &str) {
    match r {
        Err(ClientError::Remote(e)) => {
            assert_eq!(e.code, ErrorCode::TokenUnavailable, "{what}: {e}");
            assert_eq!(e.message, "the signer's PKCS#11 token is unavailable (see the signer's log)", "{what}");
        }
        other => panic!("{what}: expected a TokenUnavailable answer, got {other:?}"),
    }
}

/// Stops a signer by SIGTERM and waits for its clean exit.
fn stop(mut s: Signer) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(s.pid() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(s.wait_exit().success(), "{}", s.diagnostics());
}

/// A rotation cut off between its key file and its `key.rotated` leaf — what a signer stopped
/// right there leaves: made here by the signer's own key store rotating the key file of the
/// stopped signer (the new key generated on the token and recorded), with no leaf in its log —
/// is finished by the engine's repeat of the rotation at the same size, with the key the cut
/// attempt made: one new key pair on the token, not two, and a key set without a key that
/// never signed. Until then the workspace's published keys are those its log knows. Every
/// receipt, before and after, passes the real `allowly-verify` against the final key set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_cut_off_before_its_leaf_is_finished_by_its_repeat_with_the_key_it_made() {
    let (tmp, dir, sock, pin, mut s) = served_on("cut");
    let ws = "ws_hsm_cut";
    let c = s.ready().await;
    let first = c.create_key(ws).await.unwrap();
    let mut all: Vec<Hash> = Vec::new();
    let batch = bodies(ws, 0, 3);
    let out = c.append_batch_with_proofs(ws, 0, batch.clone()).await.unwrap();
    all.extend(hashes(&batch));
    check_appended(ws, &all, &batch, &out, &[verifier(ws, &first[0])]);
    let mut receipts = signed_receipts(&batch, &out);
    stop(s);

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let cut = KeyStore::open(&dir, Box::new(backend_on("cut", tmp.path()))).unwrap().rotate(ws, now).unwrap();
    let made = cut.active.public_key().to_bytes();
    drop(cut);
    assert_eq!(labelled_for("cut", ws).len(), 4, "the cut rotation made its key pair on the token");

    let mut s = serve_on("cut", &dir, &sock, &pin);
    let c = s.ready().await;
    assert_eq!(c.list_keys(ws).await.unwrap(), first, "a key its log never got is published\n{}", s.diagnostics());
    // The engine's repeat: the same size, since nothing was logged.
    let keys = repeat_rotation(&c, ws, &first[0], &mut all, &mut receipts).await;
    assert_eq!(keys[1].public_key, made, "not the key the cut rotation made");
    assert_eq!(labelled_for("cut", ws).len(), 4, "a second key pair on the token");
    assert_eq!(token_objects(&dir, ws).len(), 2);
    allowly_verify(ws, &keys, &receipts, tmp.path());
}

/// How many objects of `class` with CKA_ID `id` token `label` holds.
fn objects(label: &str, class: ObjectClass, id: &[u8]) -> usize {
    user_session(label).find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())]).unwrap().len()
}

/// A workspace whose keys move back from the token to sealed files (the signer restarted with
/// `--keystore file --previous-keystore pkcs11`, the move a key rotation): once that rotation
/// is in the log, the private key objects of its retired token keys — the one it signed with
/// until then and one retired by an earlier rotation on the token — are destroyed on the token
/// (their public halves stay, there and in the key file), so no key of the workspace that
/// nothing needs is left usable outside the signer's files. The published key set keeps every
/// public key: every receipt, signed by either token key or the new file key, passes the real
/// `allowly-verify`. A workspace still on the token keeps its keys, and the signer restarts
/// without the token at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_back_to_files_destroys_the_retired_token_keys_once_the_move_is_logged() {
    let (tmp, dir, sock, pin, mut s) = served_on("retire");
    let (ws, other) = ("ws_hsm_back", "ws_hsm_stays");
    let c = s.ready().await;
    let first = c.create_key(ws).await.unwrap();
    let kept = c.create_key(other).await.unwrap();
    let (mut all, mut receipts): (Vec<Hash>, Vec<_>) = (Vec::new(), Vec::new());
    let mut append = async |c: &SignerClient, key: &KeyInfo, all: &mut Vec<Hash>| {
        let batch = bodies(ws, all.len(), 2);
        let out = c.append_batch_with_proofs(ws, all.len() as u64, batch.clone()).await.unwrap();
        all.extend(hashes(&batch));
        check_appended(ws, all, &batch, &out, &[verifier(ws, key)]);
        receipts.extend(signed_receipts(&batch, &out));
    };
    append(&c, &first[0], &mut all).await;
    // A rotation on the token: two token keys, one retired.
    let rot = c.rotate_key(ws, all.len() as u64).await.unwrap();
    let r = &rot.rotation;
    all.push(merkle::leaf_hash(&r.body));
    let mut rotations = vec![signed_receipt(&r.body, r.log_index, &r.proof, &r.checkpoint)];
    append(&c, &rot.keys[1], &mut all).await;
    stop(s);
    let token_keys = token_objects(&dir, ws);
    assert_eq!(token_keys.len(), 2);
    for id in &token_keys {
        assert_eq!(objects("retire", ObjectClass::PRIVATE_KEY, id), 1);
    }

    // Back to sealed files, the token as the previous key store.
    std::fs::write(dir.join("master.key"), format!("{}\n", "5a".repeat(32))).unwrap();
    std::fs::set_permissions(dir.join("master.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut back = hsm().signer_args("retire", &pin);
    back[1] = "file".into();
    back.extend(["--previous-keystore".into(), "pkcs11".into()]);
    let back: Vec<&str> = back.iter().map(String::as_str).collect();
    let mut s = serve_on_with_args(&dir, &sock, &back);
    let c = s.ready().await;
    let moved = c.rotate_key(ws, all.len() as u64).await.unwrap();
    assert_eq!(moved.keys.len(), 3, "{:?}", moved.keys);
    let r = &moved.rotation;
    all.push(merkle::leaf_hash(&r.body));
    rotations.push(signed_receipt(&r.body, r.log_index, &r.proof, &r.checkpoint));
    append(&c, &moved.keys[2], &mut all).await;
    for id in &token_keys {
        assert_eq!(objects("retire", ObjectClass::PRIVATE_KEY, id), 0, "a retired token key is still on the token");
        assert_eq!(objects("retire", ObjectClass::PUBLIC_KEY, id), 1, "its public half went too");
    }
    let listed = list_keys_json(&dir, ws);
    assert_eq!(
        listed.iter().map(|k| (k["keystore"].as_str().unwrap(), k["private_destroyed"].as_bool())).collect::<Vec<_>>(),
        [("pkcs11", Some(true)), ("pkcs11", Some(true)), ("file", None)],
        "{listed:?}"
    );
    // The workspace that stays on the token keeps its key.
    let kept_id = &token_objects(&dir, other)[0];
    check_on_token("retire", kept_id, other, kept[0].key_id, &kept[0].public_key);
    stop(s);

    // Without the token: the moved workspace signs on with its file key.
    let mut s = serve_on_with_args(&dir, &sock, &[]);
    let c = s.ready().await;
    append(&c, &moved.keys[2], &mut all).await;
    receipts.extend(rotations);
    allowly_verify(ws, &moved.keys, &receipts, tmp.path());
}

/// `serve` with `args` only (the key store options included).
fn serve_on_with_args(dir: &Path, sock: &Path, args: &[&str]) -> Signer {
    let mut cmd = Command::new(signer_bin());
    cmd.arg("serve").arg("--dir").arg(dir).arg("--socket").arg(sock).args(args);
    cmd.env_remove(allowly_signer::pkcs11::PIN_ENV);
    Signer::spawn(cmd, dir, sock)
}

/// `allowly-signer keys --workspace ws`: its keys as listed.
fn list_keys_json(dir: &Path, ws: &str) -> Vec<serde_json::Value> {
    let (status, out, err) =
        run_with_deadline(Command::new(signer_bin()).args(["keys", "--workspace", ws, "--dir"]).arg(dir));
    assert_eq!(status.code(), Some(0), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    v["keys"].as_array().unwrap().clone()
}

/// The token's key objects vanish under a serving signer and come back — not its directory, as
/// in the test above, but the module's object files (the token itself, its label and login
/// stay: an HSM restored from an older backup, a replica without the objects, files moved by
/// hand). The token still answers, so nothing re-initialises; the signer must fail closed by
/// itself for every workspace whose key is gone: each append is refused and nothing is signed
/// (no other key, no checkpoint). When the objects are back (under new handles) the same
/// appends are signed at the sizes they were asked at, by the same keys, with checkpoints
/// consistent with those before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_objects_that_vanish_from_a_working_token_fail_signing_closed_until_they_are_back() {
    let (tmp, dir, _sock, _pin, mut s) = served_on("vanish");
    let c = s.ready().await;
    let ws = "ws_hsm_vanish";
    let keys = c.create_key(ws).await.unwrap();
    let v = [verifier(ws, &keys[0])];
    let mut all: Vec<Hash> = Vec::new();
    let batch = bodies(ws, 0, 3);
    let before = c.append_batch(ws, 0, batch.clone()).await.unwrap();
    all.extend(hashes(&batch));
    check_appended_without_proofs(ws, &all, &batch, &before, &v);

    let (home, away) = (hsm().token_dir("vanish"), tmp.path().join("objects-away"));
    let moved = hsm().move_key_objects("vanish", &away);
    assert_eq!(moved.len(), 2, "the workspace's key pair: {moved:?}");
    let signed = metric(&c.metrics().await.unwrap(), "allowly_signer_checkpoints_signed_total");
    for _ in 0..3 {
        let r = c.append_batch(ws, all.len() as u64, bodies(ws, all.len(), 2)).await;
        // Its own code (the signer's log names the key's CKA_ID and the module's answer).
        token_unavailable(r, "an append while the key is gone");
    }
    let m = c.metrics().await.unwrap();
    assert_eq!(metric(&m, "allowly_signer_checkpoints_signed_total"), signed, "something was signed: {m}");

    for n in &moved {
        std::fs::rename(away.join(n), home.join(n)).unwrap();
    }
    let batch = bodies(ws, all.len(), 2);
    let after = eventually(
        "the key to sign again",
        || s.diagnostics(),
        // The service pings every half second (the signer's health check, which looks again).
        || async {
            let _ = c.ping().await;
            c.append_batch(ws, all.len() as u64, batch.clone()).await.ok()
        },
    )
    .await;
    all.extend(hashes(&batch));
    check_appended_without_proofs(ws, &all, &batch, &after, &v);
    check_extends(ws, &all, &before.checkpoint, &after.checkpoint, &v);
    assert_eq!(c.list_keys(ws).await.unwrap(), keys, "the same key");
    let (status, out, err) =
        run_with_deadline(Command::new(signer_bin()).args(["audit", "verify"]).arg(dir.join("audit.log")));
    assert_eq!(status.code(), Some(0), "{out}{err}");
}

/// A key whose objects are gone from a token that answers (destroyed, or not restored yet) is
/// looked for again by re-initialising the module — but less and less often: the first at
/// once, the next 5 s later, then 10 s, 20 s, … (to at most 300 s), not every 5 s forever, and
/// the signer says the key is missing once, not at every attempt. Driven the way the service
/// drives it (a health check and the append retried every 100 ms), and timed on the signer's
/// own count of those re-initialisations: three of them span 15 s (every 5 s: 10 s).
/// Meanwhile every append is refused as `TokenUnavailable`. Put back, the key is found at the
/// next re-initialisation, signs again, and the backoff starts over: the next key to go
/// missing is looked for 5 s after the first attempt again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_is_looked_for_less_and_less_often_and_from_the_start_once_found() {
    let (tmp, _dir, _sock, _pin, mut s) = served_on("miss");
    let c = s.ready().await;
    let ws = "ws_hsm_miss";
    let keys = c.create_key(ws).await.unwrap();
    let batch = bodies(ws, 0, 2);
    let before = c.append_batch(ws, 0, batch.clone()).await.unwrap();
    let mut all = hashes(&batch);
    let away = tmp.path().join("objects-away");
    let moved = hsm().move_key_objects("miss", &away);
    assert_eq!(moved.len(), 2, "the workspace's key pair: {moved:?}");

    let next = bodies(ws, all.len(), 1);
    let reinits = |m: &str| metric(m, "allowly_signer_token_missing_key_reinitialisations_total");
    let start = std::time::Instant::now();
    let mut at = Vec::new();
    for n in 1..=3 {
        let m = eventually_within(
            &format!("missing-key re-initialisation {n}"),
            std::time::Duration::from_secs(60),
            std::time::Duration::from_millis(100),
            || s.diagnostics(),
            || async {
                let _ = c.ping().await;
                let m = c.metrics().await.unwrap();
                if reinits(&m) >= f64::from(n) {
                    return Some(m);
                }
                // Not yet: the key stays missing (the module has not looked again).
                token_unavailable(c.append_batch(ws, all.len() as u64, next.clone()).await, "append, key missing");
                None
            },
        )
        .await;
        at.push(start.elapsed());
        assert_eq!(reinits(&m), f64::from(n), "one at a time: {m}");
        assert_eq!(metric(&m, "allowly_signer_token_keys_missing"), 1.0, "{m}");
        // The wait after re-initialisation n: 5 s, 10 s, 20 s.
        assert_eq!(metric(&m, "allowly_signer_token_missing_key_retry_seconds"), 5.0 * f64::from(1 << (n - 1)), "{m}");
        if n == 2 {
            // Back before the third: that one finds it.
            for name in &moved {
                std::fs::rename(away.join(name), hsm().token_dir("miss").join(name)).unwrap();
            }
        }
    }
    let span = at[2] - at[0];
    assert!(span >= std::time::Duration::from_millis(14_500), "3 re-initialisations in {span:?}: {at:?}");
    let missing_lines = |s: &Signer| s.stderr().matches("a recorded key was not found on the token").count();
    assert_eq!(missing_lines(&s), 1, "said once:\n{}", s.diagnostics());

    let after = eventually(
        "the key to sign again",
        || s.diagnostics(),
        || async { c.append_batch(ws, all.len() as u64, next.clone()).await.ok() },
    )
    .await;
    all.extend(hashes(&next));
    let v = [verifier(ws, &keys[0])];
    check_appended_without_proofs(ws, &all, &next, &after, &v);
    check_extends(ws, &all, &before.checkpoint, &after.checkpoint, &v);
    let m = c.metrics().await.unwrap();
    assert_eq!(metric(&m, "allowly_signer_token_keys_missing"), 0.0, "{m}");
    assert_eq!(metric(&m, "allowly_signer_token_missing_key_retry_seconds"), 0.0, "{m}");
    assert_eq!(s.stderr().matches("a missing key was found on the token again").count(), 1, "{}", s.diagnostics());

    // Missing again: the backoff starts from the first wait.
    hsm().move_key_objects("miss", &away);
    let m = eventually(
        "the key to be missed again",
        || s.diagnostics(),
        || async {
            let r = c.append_batch(ws, all.len() as u64, bodies(ws, all.len(), 1)).await;
            token_unavailable(r, "append, key missing again");
            let _ = c.ping().await;
            let m = c.metrics().await.unwrap();
            (reinits(&m) >= 4.0).then_some(m)
        },
    )
    .await;
    assert_eq!(metric(&m, "allowly_signer_token_missing_key_retry_seconds"), 5.0, "{m}");
    assert_eq!(missing_lines(&s), 2, "said again, once:\n{}", s.diagnostics());
}

/// A token that stays lost (its SoftHSM2 directory moved off) is looked for less and less
/// often: the module is re-initialised at once, then 1 s later, then 2 s, 4 s, … (to at most
/// 30 s), not every second forever; the wait now is in `allowly_signer_token_lost_retry_seconds`,
/// and the loss is logged once, not at every attempt. Driven the way the service drives it (a
/// health check every 100 ms here) and timed on the signer's own count of the failed
/// re-initialisations: four of them span 7 s (every second: 3 s). Back, the token is found by
/// the next one and signs; lost again, it is looked for from the first wait again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_token_is_looked_for_less_and_less_often_and_from_the_start_once_found() {
    let (_tmp, _dir, _sock, _pin, mut s) = served_on("lost");
    let c = s.ready().await;
    let ws = "ws_hsm_lost";
    let keys = c.create_key(ws).await.unwrap();
    let batch = bodies(ws, 0, 2);
    c.append_batch(ws, 0, batch.clone()).await.unwrap();
    let mut all = hashes(&batch);
    let (home, away) = (hsm().token_dir("lost"), hsm().root.join("lost-away"));
    let failed = |m: &str| metric(m, r#"allowly_signer_token_reinitialisations_total{outcome="failed"}"#);
    let wait = |m: &str| metric(m, "allowly_signer_token_lost_retry_seconds");
    let lost_lines = |s: &Signer| s.stderr().matches("PKCS#11 token lost").count();
    // Health checks until the signer has counted `n` failed re-initialisations; its metrics then.
    let failed_reinits = |n: f64| {
        let (c, s) = (&c, &s);
        async move {
            eventually_within(
                &format!("{n} failed re-initialisations"),
                std::time::Duration::from_secs(60),
                std::time::Duration::from_millis(100),
                move || s.diagnostics(),
                move || async move {
                    // The health check that finds the token lost, or looks for it again.
                    let _ = c.ping().await;
                    let m = c.metrics().await.unwrap();
                    (failed(&m) >= n).then_some(m)
                },
            )
            .await
        }
    };

    std::fs::rename(&home, &away).unwrap();
    let start = std::time::Instant::now();
    let mut at = Vec::new();
    for n in 1..=4 {
        let m = failed_reinits(f64::from(n)).await;
        at.push(start.elapsed());
        assert_eq!(failed(&m), f64::from(n), "one at a time: {m}");
        assert_eq!(metric(&m, "allowly_signer_token_lost"), 1.0, "{m}");
        // The wait after failed re-initialisation n: 1 s, 2 s, 4 s, 8 s.
        assert_eq!(wait(&m), f64::from(1 << (n - 1)), "{m}");
    }
    let span = at[3] - at[0];
    assert!(span >= std::time::Duration::from_millis(6_500), "4 re-initialisations in {span:?}: {at:?}");
    assert_eq!(lost_lines(&s), 1, "said once:\n{}", s.diagnostics());

    // Back: found by the next re-initialisation (within 8 s), and it signs again.
    std::fs::rename(&away, &home).unwrap();
    eventually_within(
        "the token to be found again",
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(100),
        || s.diagnostics(),
        || async { c.ping().await.ok() },
    )
    .await;
    let m = c.metrics().await.unwrap();
    assert_eq!((metric(&m, "allowly_signer_token_lost"), wait(&m)), (0.0, 0.0), "{m}");
    assert_eq!(s.stderr().matches("PKCS#11 token found again").count(), 1, "{}", s.diagnostics());
    let next = bodies(ws, all.len(), 1);
    let out = c.append_batch(ws, all.len() as u64, next.clone()).await.unwrap();
    all.extend(hashes(&next));
    check_appended_without_proofs(ws, &all, &next, &out, &[verifier(ws, &keys[0])]);

    // Lost again: looked for at once and then after the first wait again.
    std::fs::rename(&home, &away).unwrap();
    let before = failed(&m);
    let m = failed_reinits(before + 1.0).await;
    assert_eq!(wait(&m), 1.0, "{m}");
    assert_eq!(lost_lines(&s), 2, "said again, once:\n{}", s.diagnostics());
    std::fs::rename(&away, &home).unwrap();
}

/// Two signers on one token (each its own directory, neither with a master key) move a
/// workspace: the exported record holds token object ids only; a record that names another
/// workspace's token object for this workspace's key is refused (the token has the object, its
/// public key is not this key's); the real record installs, B adopts A's checkpoint and signs
/// on with the same token key, extending A's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_signers_on_one_token_move_a_workspace_between_them() {
    let label = "moving";
    let (_ta, _dir_a, _sock_a, _pin_a, mut sa) = served_on(label);
    let (_tb, _dir_b, _sock_b, _pin_b, mut sb) = served_on(label);
    let (a, b) = (sa.ready().await, sb.ready().await);
    let (ws, other) = ("ws_token_move", "ws_token_other");
    let keys = a.create_key(ws).await.unwrap();
    a.create_key(other).await.unwrap();
    let batch = bodies(ws, 0, 6);
    let mut all = hashes(&batch);
    let note = a.append_batch(ws, 0, batch).await.unwrap().checkpoint;

    let record = a.export_keys(ws).await.unwrap();
    let json = |r: &[u8]| -> serde_json::Value { serde_json::from_slice(r).unwrap() };
    let mine = json(&record);
    assert!(mine["keys"][0]["token_object"].is_string(), "{mine}");
    assert!(mine["keys"][0].get("sealed_seed").is_none() && mine["keys"][0].get("nonce").is_none(), "{mine}");
    let mut swapped = mine.clone();
    swapped["keys"][0]["token_object"] = json(&a.export_keys(other).await.unwrap())["keys"][0]["token_object"].clone();
    let refused = b.import_keys(ws, serde_json::to_vec(&swapped).unwrap()).await;
    match refused {
        Err(ClientError::Remote(e)) => assert_eq!(e.code, ErrorCode::KeyRecordRefused, "{e}\n{}", sb.diagnostics()),
        other => panic!("another workspace's token object was installed: {other:?}"),
    }
    assert_eq!(b.import_keys(ws, record).await.unwrap(), keys);

    let peaks = merkle::Frontier::from_source(&merkle::LeafList(all.clone()), 6).unwrap().peaks().to_vec();
    let got = b.adopt(ws, note.clone(), peaks, vec![], T0 + 5).await.unwrap();
    assert_eq!((got.size, got.changed), (6, true));
    let batch = bodies(ws, 6, 3);
    all.extend(hashes(&batch));
    let out = b.append_batch(ws, 6, batch.clone()).await.unwrap();
    let v = vec![verifier(ws, &keys[0])];
    check_appended_without_proofs(ws, &all, &batch, &out, &v);
    check_extends(ws, &all, &note, &out.checkpoint, &v);
}
