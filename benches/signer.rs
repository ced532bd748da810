//! The signer's cost per receipt, beside baselines from the same run:
//! - CPU: `sign_batch` (frontier append + one checkpoint signature, without proofs as the
//!   service asks since protocol v2; and with every inclusion proof) at batch sizes 1, 16, 256
//!   and 4096, reported per receipt against one raw Ed25519 signature. The goal (DESIGN §7) is
//!   ≤ 5 % of a raw signature per receipt at batch 256.
//! - CPU since protocol v3: `check_and_sign` = `check::check_batch` (read every receipt body
//!   the service sent, check it, hash it) followed by `sign_batch`, on ~0.5 KiB sample bodies:
//!   the whole per-receipt cost of an append; `check_batch_*` alone shows what checking adds.
//! - CPU per body: `ReceiptBodyView::parse_canonical` (the one-pass reader of canonical bodies
//!   the signer uses), `ReceiptBodyView::parse` (the general parser, used before and still the
//!   fallback), the leaf hash, and reader + hash, each against one raw Ed25519 signature.
//! - Socket: one 16-leaf `AppendBatch` round trip to a real signer server (real socket, the
//!   real journal fsync) and one `Ping`, beside a bare Unix-socket ping-pong.

use std::cell::Cell;
use std::hint::black_box;
use std::io::{Read as _, Write as _};

use allowly_benches::{print_ratios, Ratio};
use allowly_receipt::merkle::{self, Frontier, Hash};
use allowly_receipt::types::ReceiptBodyView;
use allowly_signer::check::{check_batch, sample_body};
use allowly_signer::workspace::sign_batch;
use allowly_signer::{server, Shared};
use allowly_signer_proto::client::{ClientOptions, SignerClient};
use criterion::{BatchSize, Criterion};
use ed25519_dalek::{Signer as _, SigningKey};
use sha2::{Digest, Sha256};

const ORIGIN: &str = "allowly/ws_bench";
const WS: &str = "ws_bench";
/// The bodies' times and the clock the check compares them with.
const T0: u64 = 1_767_225_600_000;
const SIZES: [usize; 4] = [1, 16, 256, 4096];

fn cpu(c: &mut Criterion) {
    let key = SigningKey::from_bytes(&Sha256::digest(b"signer bench").into());
    let mut base = Frontier::new();
    base.append(&(0..1_000_003u64).map(|i| merkle::leaf_hash(&i.to_le_bytes())).collect::<Vec<Hash>>()).expect("fill");
    let mut g = c.benchmark_group("signer_cpu");
    for n in SIZES {
        let leaves: Vec<Hash> = (0..n as u64).map(|i| merkle::leaf_hash(&i.to_be_bytes())).collect();
        for (name, want_proofs) in [("sign_batch", false), ("sign_batch_with_proofs", true)] {
            g.bench_function(format!("{name}_{n}"), |b| {
                b.iter_batched_ref(
                    || base.clone(),
                    |f| sign_batch(f, black_box(&leaves), ORIGIN, &key, 1_764_000_000_000, want_proofs).expect("sign"),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    let at = base.size();
    for n in SIZES {
        let bodies: Vec<Vec<u8>> =
            (0..n as u64).map(|i| sample_body(WS, "bench", at + i, T0 + i).expect("body")).collect();
        g.bench_function(format!("check_batch_{n}"), |b| {
            b.iter(|| check_batch(WS, at, black_box(&bodies), T0 + 1_000).expect("check"))
        });
        g.bench_function(format!("check_and_sign_{n}"), |b| {
            b.iter_batched_ref(
                || base.clone(),
                |f| {
                    let c = check_batch(WS, at, black_box(&bodies), T0 + 1_000).expect("check");
                    sign_batch(f, &c.leaves, ORIGIN, &key, 1_764_000_000_000, false).expect("sign")
                },
                BatchSize::SmallInput,
            )
        });
    }
    // One body as the service sends it (canonical): the one-pass reader the signer uses, the
    // general parser it falls back to (the reader before it), the leaf hash, and the two
    // together (the signer's whole per-body check), beside the signature below.
    let body = sample_body(WS, "bench", at, T0).expect("body");
    g.bench_function("body_parse_canonical", |b| {
        b.iter(|| ReceiptBodyView::parse_canonical(black_box(&body)).expect("canonical"))
    });
    g.bench_function("body_parse_general", |b| b.iter(|| ReceiptBodyView::parse(black_box(&body)).expect("parse")));
    g.bench_function("body_leaf_hash", |b| b.iter(|| merkle::leaf_hash(black_box(&body))));
    g.bench_function("body_read_and_hash", |b| {
        b.iter(|| {
            let view = ReceiptBodyView::parse_canonical(black_box(&body)).expect("canonical");
            (view.log_index, merkle::leaf_hash(black_box(&body)))
        })
    });
    let msg =
        format!("{ORIGIN}\n1000004\nLVq89R6mDHSQ/SYwo2fn3QcOFEAMwpSlw2mNc/dsjkI=\ntime 2026-11-30T09:00:00.000Z\n");
    g.bench_function("baseline_ed25519_sign", |b| b.iter(|| key.sign(black_box(msg.as_bytes()))));
    g.finish();
}

fn socket(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let shared = Shared::open_local(dir.path()).expect("signer state");
    let sock = dir.path().join("run/signer.sock");
    let listener = rt.block_on(async { server::bind(&sock) }).expect("bind");
    rt.spawn(server::serve(listener, shared, std::future::pending()));
    let client = SignerClient::new(sock.clone(), ClientOptions::default());
    rt.block_on(client.create_key("ws_bench")).expect("create key");
    let size = Cell::new(0u64);

    // Bare baseline: a 14-byte request and reply over a Unix socket pair, echoed by a thread.
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair().expect("pair");
    std::thread::spawn(move || {
        let mut buf = [0u8; 14];
        while b.read_exact(&mut buf).is_ok() {
            if b.write_all(&buf).is_err() {
                break;
            }
        }
    });

    let mut g = c.benchmark_group("signer_socket");
    g.bench_function("append_16_round_trip", |bch| {
        bch.iter(|| {
            let at = size.get();
            let bodies = (at..at + 16).map(|i| sample_body(WS, "bench", i, T0 + i).expect("body")).collect();
            let out = rt.block_on(client.append_batch(WS, at, bodies)).expect("append");
            size.set(out.new_size);
        })
    });
    g.bench_function("ping_round_trip", |bch| bch.iter(|| rt.block_on(client.ping()).expect("ping")));
    g.bench_function("baseline_bare_unix_ping_pong", |bch| {
        let mut buf = [0u8; 14];
        bch.iter(|| {
            a.write_all(&[1u8; 14]).expect("write");
            a.read_exact(&mut buf).expect("read");
        })
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    cpu(&mut c);
    socket(&mut c);
    c.final_summary();
    let mut rows: Vec<Ratio> = SIZES
        .iter()
        .map(|&n| Ratio {
            label: match n {
                1 => "signer CPU per receipt with proofs, batch 1",
                16 => "signer CPU per receipt with proofs, batch 16",
                256 => "signer CPU per receipt with proofs, batch 256",
                _ => "signer CPU per receipt with proofs, batch 4096",
            },
            measured: match n {
                1 => "signer_cpu/sign_batch_with_proofs_1",
                16 => "signer_cpu/sign_batch_with_proofs_16",
                256 => "signer_cpu/sign_batch_with_proofs_256",
                _ => "signer_cpu/sign_batch_with_proofs_4096",
            },
            per: n as f64,
            baseline: "signer_cpu/baseline_ed25519_sign",
        })
        .collect();
    rows.extend(SIZES.iter().map(|&n| Ratio {
        label: match n {
            1 => "signer CPU per receipt, batch 1",
            16 => "signer CPU per receipt, batch 16",
            256 => "signer CPU per receipt, batch 256 (goal <= 0.05x)",
            _ => "signer CPU per receipt, batch 4096",
        },
        measured: match n {
            1 => "signer_cpu/sign_batch_1",
            16 => "signer_cpu/sign_batch_16",
            256 => "signer_cpu/sign_batch_256",
            _ => "signer_cpu/sign_batch_4096",
        },
        per: n as f64,
        baseline: "signer_cpu/baseline_ed25519_sign",
    }));
    rows.extend(SIZES.iter().map(|&n| Ratio {
        label: match n {
            1 => "signer CPU per receipt incl. body check, batch 1",
            16 => "signer CPU per receipt incl. body check, batch 16",
            256 => "signer CPU per receipt incl. body check, batch 256 (goal <= 0.05x)",
            _ => "signer CPU per receipt incl. body check, batch 4096",
        },
        measured: match n {
            1 => "signer_cpu/check_and_sign_1",
            16 => "signer_cpu/check_and_sign_16",
            256 => "signer_cpu/check_and_sign_256",
            _ => "signer_cpu/check_and_sign_4096",
        },
        per: n as f64,
        baseline: "signer_cpu/baseline_ed25519_sign",
    }));
    for (label, measured) in [
        ("one body read in one pass (parse_canonical)", "signer_cpu/body_parse_canonical"),
        ("one body read by the general parser", "signer_cpu/body_parse_general"),
        ("one body's leaf hash (SHA-256)", "signer_cpu/body_leaf_hash"),
        ("one body read and hashed (the signer's check)", "signer_cpu/body_read_and_hash"),
    ] {
        rows.push(Ratio { label, measured, per: 1.0, baseline: "signer_cpu/baseline_ed25519_sign" });
    }
    rows.push(Ratio {
        label: "AppendBatch(16) round trip incl. the journal fsync",
        measured: "signer_socket/append_16_round_trip",
        per: 1.0,
        baseline: "signer_socket/baseline_bare_unix_ping_pong",
    });
    rows.push(Ratio {
        label: "Ping round trip through the signer",
        measured: "signer_socket/ping_round_trip",
        per: 1.0,
        baseline: "signer_socket/baseline_bare_unix_ping_pong",
    });
    print_ratios("signer", &rows);
}
