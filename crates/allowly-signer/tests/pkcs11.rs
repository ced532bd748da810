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
use allowly_receipt::types::{AnyReceipt, HexHash, SignedReceipt, STATUS_SIGNED};
use allowly_receipt::verify::{verify_receipt, Outcome};
use allowly_signer::keystore::{KeyBackend, MlockPolicy};
use allowly_signer::pkcs11::{decode_ec_point, Pin, TokenBackend, TokenConfig};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use softhsm::{softhsm, SoftHsm, USER_PIN};
use support::*;

/// Every token this test binary uses, one per test (tests run in parallel).
const TOKENS: &[&str] = &["sign", "rotate", "refuse", "env", "loss", "idle"];

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

/// `serve` on `label` with the PIN in `pin_file`.
fn serve_on(label: &str, dir: &Path, sock: &Path, pin_file: &Path) -> Signer {
    serve_on_with(label, dir, sock, pin_file, &[])
}

/// [`serve_on`] with more `serve` arguments.
fn serve_on_with(label: &str, dir: &Path, sock: &Path, pin_file: &Path, extra: &[&str]) -> Signer {
    let mut cmd = Command::new(signer_bin());
    cmd.arg("serve").arg("--dir").arg(dir).arg("--socket").arg(sock).args(hsm().signer_args(label, pin_file));
    cmd.args(extra);
    cmd.env_remove(allowly_signer::pkcs11::PIN_ENV);
    Signer::spawn(cmd, dir, sock)
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
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh_pkcs11(tmp.path());
    let pin = hsm().pin_file(tmp.path(), "pin", USER_PIN);
    let mut s = serve_on("sign", &dir, &sock, &pin);
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
    let (old, _) = open_checkpoint(ws, &before.checkpoint, &v);
    let (new, _) = open_checkpoint(ws, &after.checkpoint, &v);
    let proof = merkle::consistency_proof(&merkle::LeafList(all.clone()), old.size, new.size).unwrap();
    merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &proof).unwrap();
    assert_eq!(c.list_keys(ws).await.unwrap(), keys, "the same key, found on the token again");
    let ids = token_objects(&dir, ws);
    check_on_token("idle", &ids[0], ws, keys[0].key_id, &keys[0].public_key);
    let (status, out, err) =
        run_with_deadline(Command::new(signer_bin()).args(["audit", "verify"]).arg(dir.join("audit.log")));
    assert_eq!(status.code(), Some(0), "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_restart_find_the_keys_on_the_token_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh_pkcs11(tmp.path());
    let pin = hsm().pin_file(tmp.path(), "pin", USER_PIN);
    let ws = "ws_hsm_rotate";
    let mut s = serve_on("rotate", &dir, &sock, &pin);
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
    let receipt = AnyReceipt::Signed(SignedReceipt {
        status: STATUS_SIGNED.into(),
        body: serde_json::from_slice(&rot.rotation.body).unwrap(),
        log_index: rot.rotation.log_index,
        inclusion_proof: rot.rotation.proof.iter().copied().map(HexHash).collect(),
        checkpoint: rot.rotation.checkpoint.clone(),
    });
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
    let pid = rustix::process::Pid::from_raw(s.pid() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(s.wait_exit().success(), "{}", s.diagnostics());
    drop(s);
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
    let backend = TokenBackend::open(cfg, &MlockPolicy::default()).unwrap();
    let key = backend.generate("ws_loss", "create").unwrap().key;
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
    assert!(e.to_string().contains("PinIncorrect"), "{e}");
    assert!(e.public_message().contains("PKCS#11 token is unavailable"), "{}", e.public_message());

    // The PIN is put back: the next check logs in again and signing works.
    let s = other;
    s.login(UserType::User, Some(&new)).unwrap();
    s.set_pin(&new, &old).unwrap();
    s.logout().unwrap();
    backend.check().unwrap();
    assert!(matches!(sign(b"four"), Ok(Ok(()))));
}
