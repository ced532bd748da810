//! Signatures per second of a PKCS#11 token, as the signer's PKCS#11 backend uses it: the
//! token's ceiling, to hold against the receipts per second the service gets signed through it
//! (one signature per checkpoint, many receipts per checkpoint). `docs/performance.md` has the
//! figures and the service-side command.
//!
//! ```sh
//! cargo run --release -p allowly-signer --example token_sign -- MODULE LABEL PIN_FILE [SECONDS] [THREADS]
//! ```
//!
//! Makes one key pair on the token (as the backend does for a workspace), then for SECONDS each:
//! raw `C_Sign` (`CKM_EDDSA`) of checkpoint-sized text on one session of its own; the backend's
//! sign (`C_Sign` on a pooled session plus the Ed25519 verification it does before releasing a
//! signature) on one thread; the same on THREADS threads at once. Deletes the key pair at the end.

use std::time::{Duration, Instant};

use allowly_signer::keystore::{KeyBackend, KeyRef, MlockPolicy};
use allowly_signer::pkcs11::{Pin, TokenBackend, TokenConfig};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

/// A checkpoint note's text as the signer signs it (origin, size, root, time extension).
const TEXT: &str = "allowly.dev/log/ws_01kbench00000000000000000000\n1048576\n\
                    qSeD7xmD2GlTnEJZ5D0mlq5iA4LQjC2n9yAEtCfBkVs=\n\
                    time 2026-12-05T12:00:00.000Z\n";

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, module, label, pin_file, rest @ ..] = args.as_slice() else {
        return Err("usage: token_sign MODULE LABEL PIN_FILE [SECONDS] [THREADS]".into());
    };
    let seconds = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(5u64);
    let threads = rest.get(1).map(|s| s.parse()).transpose()?.unwrap_or(4usize);
    let span = Duration::from_secs(seconds);

    let cfg = TokenConfig {
        module: module.into(),
        token_label: label.clone(),
        pin: Pin::from_file(std::path::Path::new(pin_file))?,
    };
    let backend = TokenBackend::open(cfg, &MlockPolicy::default(), Default::default())?;
    let generated = backend.generate("ws_token_bench", "create", &mut |_| Ok(()))?;
    let KeyRef::Token { object_id } = &generated.stored else { return Err("not a token key".into()) };

    // Raw C_Sign on a session of this tool's own (same module instance, so same login state).
    let ctx = Pkcs11::new(module)?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(e.into()),
    }
    let slot = ctx
        .get_slots_with_token()?
        .into_iter()
        .find(|s| ctx.get_token_info(*s).is_ok_and(|i| i.label() == label.as_str()))
        .ok_or("token not found")?;
    let session = ctx.open_ro_session(slot)?;
    let pin = std::fs::read_to_string(pin_file)?;
    match session.login(UserType::User, Some(&AuthPin::from(pin.trim()))) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => return Err(e.into()),
    }
    let id = hex::decode(object_id)?;
    let key = *session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Id(id)])?
        .first()
        .ok_or("key not found")?;
    let mech = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
    let (start, mut n) = (Instant::now(), 0u64);
    while start.elapsed() < span {
        session.sign(&mech, key, TEXT.as_bytes())?;
        n += 1;
    }
    let raw = rate(n, start.elapsed());

    let k = &generated.key;
    let (start, mut n) = (Instant::now(), 0u64);
    while start.elapsed() < span {
        k.sign(TEXT.as_bytes())?;
        n += 1;
    }
    let one = rate(n, start.elapsed());

    let start = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while start.elapsed() < span {
                        if k.sign(TEXT.as_bytes()).is_err() {
                            break;
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let many = rate(total, start.elapsed());

    println!("token {label:?} ({module}), {seconds} s each, {} B of checkpoint text:", TEXT.len());
    println!("  raw C_Sign (CKM_EDDSA), 1 session:          {raw:>10.0} signatures/s");
    println!("  backend sign (+ verification), 1 thread:   {one:>10.0} signatures/s");
    println!("  backend sign (+ verification), {threads} threads: {many:>10.0} signatures/s");
    backend.discard("ws_token_bench", &generated.stored);
    Ok(())
}
