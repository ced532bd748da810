//! `allowly-verify`: checks Allowly receipts and evidence bundles offline, with nothing but the
//! workspace's public keys. Depends only on `allowly-receipt` (and through it on
//! `allowly-decide`, the engine's pure decision function): no RocksDB, no tokio, no network.
//!
//! Exit status: 0 all valid · 1 integrity failure · 2 coverage gap (nothing altered) ·
//! 3 valid but unpinned (a bundle checked against its own keys) · 64 bad usage or unreadable input.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use allowly_receipt::cosignature::CosignerKey;
use allowly_receipt::types::KeySet;
use allowly_receipt::verify::{self, Class, Outcome, Report, Semantics, WitnessPolicy};
use clap::{Args, Parser, Subcommand};

const EXIT_USAGE: u8 = 64;
/// `VALID (UNPINNED)` (docs/receipt-format.md §8): distinct from 0 so that a script testing
/// for success is not fooled by a bundle that vouches for itself.
const EXIT_VALID_UNPINNED: u8 = 3;

/// Verify Allowly receipts offline with only a workspace's public keys.
#[derive(Debug, Parser)]
#[command(
    name = "allowly-verify",
    version,
    after_help = "Exit status: 0 valid, 1 integrity failure, 2 coverage gap, 3 valid (unpinned): a bundle \
                  verified without --keys, against the key set it carries itself, which proves only its \
                  internal consistency; 64 bad usage or unreadable input."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print the report as JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify one receipt (signed or pending) against the workspace's key set.
    Receipt {
        /// The receipt JSON (as returned by GET /v1/receipts/{id}).
        file: PathBuf,
        /// The key set JSON (as returned by GET /v1/workspaces/{id}/keys).
        #[arg(long)]
        keys: PathBuf,
        #[command(flatten)]
        witness: WitnessArgs,
    },
    /// Verify an evidence bundle (JSON Lines): every receipt, every trail, every checkpoint.
    Bundle {
        /// The bundle file (as returned by the export endpoint).
        file: PathBuf,
        /// Pin the workspace's published key set; without it the bundle's own keys are used and
        /// the best verdict is VALID (UNPINNED), exit 3.
        #[arg(long)]
        keys: Option<PathBuf>,
        /// A signed checkpoint obtained independently (repeatable). For a log export it detects a
        /// bundle cut short (leaves below the checkpoint's size must be present) and any fork.
        /// For an authorization export it proves only that the bundle's checkpoints belong to
        /// the same log (no fork); it cannot show that the trail has no later receipts: verify a
        /// log export up to the checkpoint's size for that (docs/receipt-format.md §10).
        #[arg(long = "checkpoint")]
        checkpoints: Vec<PathBuf>,
        /// Re-derive every allow, confirm and escalate, and every answer that allows, from the
        /// grants, revocations, expiries and scope rules before it in the bundle, with the
        /// engine's own decision function; one that does not follow is `decision_unjustified`,
        /// an integrity failure (docs/receipt-format.md §7.4). On by default for log exports;
        /// this turns it on for authorization exports too (which carry no scope rules, so only
        /// what the grant allows is judged there).
        #[arg(long, conflicts_with = "no_semantics")]
        semantics: bool,
        /// Do not re-derive decisions, not even for a log export.
        #[arg(long)]
        no_semantics: bool,
        #[command(flatten)]
        witness: WitnessArgs,
    },
}

/// A witness policy (docs/receipt-format.md §7.5, docs/witness.md): every checkpoint must carry
/// valid cosignatures by at least N of the given witnesses, or the report has a finding.
#[derive(Debug, Args)]
struct WitnessArgs {
    /// A witness's verifier key (C2SP vkey of type 0x04, as `allowly-witness init` prints it).
    /// Repeatable; needs --witness-quorum.
    #[arg(long = "witness-key", value_name = "VKEY", requires = "witness_quorum")]
    witness_keys: Vec<String>,
    /// How many distinct witnesses of --witness-key must have cosigned every checkpoint
    /// (`witness_quorum_not_met`, a coverage gap, if fewer did; a bad cosignature by one of
    /// them is `witness_cosignature_invalid`, an integrity failure).
    #[arg(long, value_name = "N", requires = "witness_keys")]
    witness_quorum: Option<usize>,
}

impl WitnessArgs {
    fn policy(&self) -> Result<Option<WitnessPolicy>, String> {
        let Some(quorum) = self.witness_quorum else { return Ok(None) };
        let keys = self
            .witness_keys
            .iter()
            .map(|k| CosignerKey::parse_vkey(k).map_err(|e| format!("--witness-key {k:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        WitnessPolicy::new(keys, quorum).map(Some).map_err(|e| format!("--witness-quorum: {e}"))
    }

    /// The report's remark naming the policy, so a reader knows what "valid" covered.
    fn note(&self) -> Option<String> {
        self.witness_quorum.map(|n| {
            format!("witness policy: every checkpoint cosigned by {n} of {} witness keys", self.witness_keys.len())
        })
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EXIT_USAGE) } else { ExitCode::SUCCESS };
        }
    };
    match run(&cli) {
        Ok((what, report)) => {
            if cli.json {
                print_json(&what, &report);
            } else {
                print_human(&what, &report);
            }
            ExitCode::from(match report.outcome() {
                Outcome::Valid => 0,
                Outcome::ValidUnpinned => EXIT_VALID_UNPINNED,
                Outcome::IntegrityFailure => 1,
                Outcome::CoverageGap => 2,
            })
        }
        Err(msg) => {
            eprintln!("allowly-verify: {msg}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn read_keys(path: &Path) -> Result<KeySet, String> {
    KeySet::parse(&read(path)?).map_err(|e| format!("{}: not a key set: {e}", path.display()))
}

fn run(cli: &Cli) -> Result<(String, Report), String> {
    match &cli.command {
        Command::Receipt { file, keys, witness } => {
            let policy = witness.policy()?;
            let keys = read_keys(keys)?;
            let mut report = verify::verify_receipt_bytes_witnessed(&read(file)?, &keys, policy.as_ref())
                .map_err(|e| format!("{}: not a verifiable receipt: {e}", file.display()))?;
            report.notes.extend(witness.note());
            Ok((format!("receipt {}", file.display()), report))
        }
        Command::Bundle { file, keys, checkpoints, semantics, no_semantics, witness } => {
            let policy = witness.policy()?;
            let pinned = keys.as_deref().map(read_keys).transpose()?;
            // Bytes as they are: a note that is not UTF-8 is a finding (`checkpoint_malformed`).
            let extra = checkpoints.iter().map(|p| read(p)).collect::<Result<Vec<_>, _>>()?;
            let semantics = match (semantics, no_semantics) {
                (true, _) => Semantics::On,
                (_, true) => Semantics::Off,
                _ => Semantics::Default,
            };
            let mut report =
                verify::verify_bundle_witnessed(&read(file)?, pinned.as_ref(), &extra, semantics, policy.as_ref())
                    .map_err(|e| format!("{}: not a verifiable bundle: {e}", file.display()))?;
            report.notes.extend(witness.note());
            Ok((format!("bundle {}", file.display()), report))
        }
    }
}

fn outcome_text(o: Outcome) -> &'static str {
    match o {
        Outcome::Valid => "VALID",
        Outcome::ValidUnpinned => "VALID (UNPINNED)",
        Outcome::CoverageGap => "COVERAGE GAP",
        Outcome::IntegrityFailure => "INTEGRITY FAILURE",
    }
}

fn print_human(what: &str, r: &Report) {
    println!("{what}: {} receipts, {} signed and proven, {} checkpoints", r.receipts, r.signed, r.checkpoints);
    for f in &r.findings {
        let class = match f.class {
            Class::Integrity => "integrity",
            Class::Coverage => "coverage ",
        };
        println!("  {class}  {:<28} {}: {}", f.code.as_str(), f.subject, f.detail);
    }
    if let Some(n) = r.decisions_checked {
        println!("  decisions re-derived from the log: {n}");
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
    println!("result: {}", outcome_text(r.outcome()));
}

fn print_json(what: &str, r: &Report) {
    let doc = serde_json::json!({
        "input": what,
        "outcome": r.outcome(),
        "pinned": !r.unpinned,
        "receipts": r.receipts,
        "signed": r.signed,
        "checkpoints": r.checkpoints,
        "decisions_checked": r.decisions_checked,
        "findings": r.findings,
        "notes": r.notes,
    });
    println!("{doc:#}");
}
