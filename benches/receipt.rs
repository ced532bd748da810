//! Receipt-format hot paths, each beside a baseline in the same run:
//! canonicalization vs `serde_json::to_vec`, leaf hashing vs one raw SHA-256, a 256-leaf frontier
//! append (root + every inclusion proof) vs one raw Ed25519 signature, checkpoint signing vs one
//! raw Ed25519 signature of the same bytes, receipt verification vs one raw `verify_strict`.

use std::hint::black_box;

use allowly_benches::{print_ratios, Ratio};
use allowly_receipt::merkle::{self, Frontier, Hash};
use allowly_receipt::note::{self, Checkpoint, NoteVerifier};
use allowly_receipt::types::*;
use allowly_receipt::{jcs, verify};
use base64::Engine as _;
use criterion::{BatchSize, Criterion};
use ed25519_dalek::{Signer as _, SigningKey};
use sha2::{Digest, Sha256};

const WS: &str = "ws_bench";

fn key() -> SigningKey {
    SigningKey::from_bytes(&Sha256::digest(b"bench key").into())
}

fn typical_body(i: u64) -> ReceiptBody {
    ReceiptBody {
        v: FORMAT_VERSION,
        id: format!("rcpt_01JDXQ3M8ZK4T6N2P9RWS{i:05}"),
        workspace_id: WS.into(),
        authorization_id: Some("auth_01JDXQ2W7H3F5G8KJ4M6N9P2QR".into()),
        seq: Some(17),
        prev: Some(HexHash(Sha256::digest(b"prev").into())),
        log_index: 1_000_000 + i,
        kind: EventKind::Check,
        decision: Some(Decision::Allow),
        reason: Some("granted".into()),
        scopes: vec!["files.read".into(), "files.list".into()],
        resource: Some("drive:file/quarterly-report-2026.pdf".into()),
        time: Timestamp::parse("2026-11-30T09:00:00.123Z").expect("time"),
        auth_state_hash: Some(HexHash(Sha256::digest(b"state").into())),
        grant: None,
        approval: None,
        escalation_id: None,
        context_hash: None,
        key: None,
        asked_authorization_id: None,
        expires_at: None,
        scope_rules: None,
    }
}

fn keyset(k: &SigningKey) -> KeySet {
    let origin = log_origin(WS);
    let v = NoteVerifier::new(&origin, k.verifying_key()).expect("verifier");
    KeySet {
        workspace_id: WS.into(),
        origin: origin.clone(),
        keys: vec![PublicKeyInfo {
            key_id: hex_id(v.key_id()),
            name: origin,
            algorithm: "ed25519".into(),
            public_key: base64::engine::general_purpose::STANDARD.encode(k.verifying_key().as_bytes()),
            vkey: v.to_vkey(),
            not_before: Timestamp::parse("2026-01-01T00:00:00.000Z").expect("time"),
            not_after: None,
            status: KeyStatus::Active,
        }],
    }
}

fn hex_id(id: [u8; 4]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn checkpoint_text(size: u64, root: Hash) -> String {
    Checkpoint {
        origin: log_origin(WS),
        size,
        root,
        extensions: vec![format!("{TIME_EXTENSION_PREFIX}2026-11-30T09:00:01.000Z")],
    }
    .to_text()
    .expect("checkpoint")
}

fn benches(c: &mut Criterion) {
    let k = key();
    let body = typical_body(1);
    let canonical = jcs::to_canonical_vec(&body).expect("canonical");

    let mut g = c.benchmark_group("canonicalize");
    g.bench_function("jcs_to_canonical_vec", |b| b.iter(|| jcs::to_canonical_vec(black_box(&body))));
    g.bench_function("baseline_serde_json_to_vec", |b| b.iter(|| serde_json::to_vec(black_box(&body))));
    g.finish();

    let mut g = c.benchmark_group("leaf_hash");
    g.bench_function("merkle_leaf_hash", |b| b.iter(|| merkle::leaf_hash(black_box(&canonical))));
    g.bench_function("baseline_sha256", |b| b.iter(|| Sha256::digest(black_box(&canonical))));
    g.finish();

    let leaves: Vec<Hash> = (0..256u64).map(|i| merkle::leaf_hash(&i.to_be_bytes())).collect();
    let mut start = Frontier::new();
    start.append(&(0..1_000_003u64).map(|i| merkle::leaf_hash(&i.to_le_bytes())).collect::<Vec<_>>()).expect("fill");
    let text = checkpoint_text(start.size(), start.root());
    let mut g = c.benchmark_group("sign");
    g.bench_function("frontier_append_256_with_proofs", |b| {
        let mut out = merkle::Appended::default();
        b.iter_batched_ref(
            || start.clone(),
            |f| f.append_into(black_box(&leaves), &mut out).expect("append"),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("checkpoint_sign_note", |b| {
        b.iter(|| note::sign_note(black_box(&text), "allowly/ws_bench", &k).expect("sign"))
    });
    g.bench_function("baseline_ed25519_sign", |b| b.iter(|| k.sign(black_box(text.as_bytes()))));
    g.finish();

    // A signed receipt proven in a log of ~1M leaves (a 20-hash proof).
    let mut v = serde_json::to_value(&body).expect("value");
    v["log_index"] = serde_json::json!(start.size());
    let receipt_body = v;
    let leaf = merkle::leaf_hash(&jcs::canonicalize(&receipt_body).expect("canonical"));
    let mut f = start.clone();
    let appended = f.append(&[leaf]).expect("append");
    let checkpoint =
        note::sign_note(&checkpoint_text(appended.new_size, appended.root), "allowly/ws_bench", &k).expect("sign");
    let receipt = AnyReceipt::Signed(SignedReceipt {
        status: STATUS_SIGNED.into(),
        body: receipt_body,
        log_index: appended.old_size,
        inclusion_proof: appended.proofs[0].iter().copied().map(HexHash).collect(),
        checkpoint,
    });
    let keys = keyset(&k);
    assert_eq!(verify::verify_receipt(&receipt, &keys).expect("keys").outcome(), verify::Outcome::Valid);
    let sig = k.sign(text.as_bytes());
    let vk = k.verifying_key();
    let mut g = c.benchmark_group("verify");
    g.bench_function("verify_signed_receipt", |b| b.iter(|| verify::verify_receipt(black_box(&receipt), &keys)));
    g.bench_function("baseline_ed25519_verify_strict", |b| {
        b.iter(|| vk.verify_strict(black_box(text.as_bytes()), &sig).expect("verify"))
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    print_ratios(
        "receipt format",
        &[
            Ratio {
                label: "canonicalize a typical receipt body",
                measured: "canonicalize/jcs_to_canonical_vec",
                per: 1.0,
                baseline: "canonicalize/baseline_serde_json_to_vec",
            },
            Ratio {
                label: "leaf hash of a canonical body",
                measured: "leaf_hash/merkle_leaf_hash",
                per: 1.0,
                baseline: "leaf_hash/baseline_sha256",
            },
            Ratio {
                label: "frontier append, per leaf (batch 256, proofs)",
                measured: "sign/frontier_append_256_with_proofs",
                per: 256.0,
                baseline: "sign/baseline_ed25519_sign",
            },
            Ratio {
                label: "checkpoint signing (signed note)",
                measured: "sign/checkpoint_sign_note",
                per: 1.0,
                baseline: "sign/baseline_ed25519_sign",
            },
            Ratio {
                label: "verify one signed receipt",
                measured: "verify/verify_signed_receipt",
                per: 1.0,
                baseline: "verify/baseline_ed25519_verify_strict",
            },
        ],
    );
}
