//! The signer's CPU per appended receipt, for instruction counting under callgrind (no timing,
//! so it is safe on a busy machine):
//!
//! ```sh
//! cargo build --release -p allowly-signer --example leaf_cost
//! valgrind --tool=callgrind --toggle-collect='*check_batch*' target/release/examples/leaf_cost 16 256
//! valgrind --tool=callgrind --toggle-collect='*sign_batch*'  target/release/examples/leaf_cost 16 256
//! valgrind --tool=callgrind --toggle-collect='*audit*Entry*line*' --toggle-collect='*chain_lines*' \
//!     target/release/examples/leaf_cost 16 256
//! ```
//!
//! Runs `rounds` appends of `batch` sample receipt bodies (~0.5 KiB) to one workspace log that
//! already holds 1,000,003 leaves: `check::check_batch` (read, check and hash every body: what
//! protocol v3 added) then `workspace::sign_batch` (extend the frontier and sign one checkpoint:
//! the whole per-batch work before v3), then the group's audit line (which now lists its leaf
//! hashes) and its hash chain link, as the journal thread adds it. Instructions per receipt =
//! the collected total divided by `rounds × batch`. (Valgrind hides SHA-NI, so SHA-256 runs its
//! portable code there; the example also prints native nanoseconds per receipt for each phase,
//! and for one raw Ed25519 signature as the baseline, measured in the same run.)

use allowly_receipt::merkle::{leaf_hash, Frontier, Hash};
use allowly_signer::audit::{chain_lines, Entry, Event, GENESIS};
use allowly_signer::check::{check_batch, sample_body};
use allowly_signer::workspace::sign_batch;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = |n: usize, default: u64| std::env::args().nth(n).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (rounds, batch) = (arg(1, 16), arg(2, 256));
    const WS: &str = "ws_bench";
    const T0: u64 = 1_767_225_600_000;
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let mut f = Frontier::new();
    f.append_nodes(&(0..1_000_003u64).map(|i| leaf_hash(&i.to_le_bytes())).collect::<Vec<Hash>>())?;
    let mut bytes = 0usize;
    let (mut head, mut audit) = (GENESIS, Vec::new());
    let mut spent = [std::time::Duration::ZERO; 3];
    for r in 0..rounds {
        let at = f.size();
        let bodies: Vec<Vec<u8>> =
            (at..at + batch).map(|i| sample_body(WS, "cost", i, T0 + i)).collect::<Result<_, _>>()?;
        bytes += bodies.iter().map(Vec::len).sum::<usize>();
        let t = std::time::Instant::now();
        let checked = check_batch(WS, at, &bodies, T0 + 10_000_000).map_err(|e| format!("{e:?}"))?;
        spent[0] += t.elapsed();
        let t = std::time::Instant::now();
        let (note, _) = sign_batch(&mut f, &checked.leaves, "allowly/ws_bench", &key, T0 + r, false)?;
        spent[1] += t.elapsed();
        let t = std::time::Instant::now();
        let line = Entry {
            time: allowly_receipt::types::Timestamp::from_unix_ms(T0)?,
            event: Event::Checkpoint,
            workspace_id: WS,
            size: f.size(),
            root: Some("LVq89R6mDHSQ/SYwo2fn3QcOFEAMwpSlw2mNc/dsjkI=".into()),
            key_id: Some("0a1b2c3d".into()),
            peer_uid: Some(1000),
            detail: None,
            leaves: Some(&checked.leaves),
        }
        .line()?;
        audit.clear();
        chain_lines(&mut head, &line, &mut audit);
        spent[2] += t.elapsed();
        std::hint::black_box((note, &audit));
    }
    let n = (rounds * batch) as f64;
    let t = std::time::Instant::now();
    for i in 0..2_000u32 {
        std::hint::black_box(ed25519_dalek::Signer::sign(&key, &i.to_be_bytes()));
    }
    let ed = t.elapsed().as_nanos() as f64 / 2_000.0;
    let per = |d: std::time::Duration| d.as_nanos() as f64 / n;
    let (check, sign, audit) = (per(spent[0]), per(spent[1]), per(spent[2]));
    println!(
        "ns per receipt: check_batch {check:.0}, sign_batch {sign:.0}, audit line + chain {audit:.0}; \
         one Ed25519 signature {ed:.0} ns; before (sign_batch) {:.3}x, after (all three) {:.3}x of a signature",
        sign / ed,
        (check + sign + audit) / ed
    );
    println!("{} receipts of {} bytes on average", rounds * batch, bytes as u64 / (rounds * batch));
    Ok(())
}
