//! The `allowly-witness` binary: `init` makes the witness's key, `vkey` prints its verifier key,
//! `serve` runs the HTTP service. Exit status: 0 success, 1 failure (message on stderr).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use allowly_witness::metrics::Metrics;
use allowly_witness::state::StateDir;
use allowly_witness::witness::Witness;
use allowly_witness::{config, http, keyfile, Error, Result};
use clap::{Parser, Subcommand};

/// A C2SP tlog-witness: cosigns checkpoints that extend the last one it cosigned.
#[derive(Debug, Parser)]
#[command(name = "allowly-witness", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the witness's Ed25519 key in DIR (file witness.key, mode 0600; never overwritten)
    /// and print its verifier key (type 0x04) for verifiers' `--witness-key`.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// The witness's name, e.g. `witness.example.com/w1` (no spaces, no '+').
        #[arg(long)]
        name: String,
    },
    /// Print the verifier key of the witness in DIR.
    Vkey {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Serve POST /add-checkpoint and GET /metrics.
    Serve {
        #[arg(long)]
        dir: PathBuf,
        /// Address to listen on; port 0 picks a free one (the address is printed once listening).
        #[arg(long)]
        listen: SocketAddr,
        /// The logs the witness knows: TOML with `[[log]]` entries `origin` and `vkeys`.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("allowly-witness: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init { dir, name } => {
            println!("{}", keyfile::init(&dir, &name)?.public.to_vkey());
            Ok(())
        }
        Command::Vkey { dir } => {
            println!("{}", keyfile::load(&dir)?.public.to_vkey());
            Ok(())
        }
        Command::Serve { dir, listen, config } => {
            let key = keyfile::load(&dir)?;
            let logs = config::load(&config)?;
            let state = StateDir::open(&dir)?;
            let witness = Arc::new(Witness::new(key, logs, state, Metrics::new())?);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Setup(format!("runtime: {e}")))?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|e| Error::Setup(format!("listen on {listen}: {e}")))?;
                let addr = listener.local_addr()?;
                // Tests and supervisors read this line to learn the port.
                println!("allowly-witness listening on {addr}");
                tokio::select! {
                    r = http::serve(listener, witness) => r,
                    // Every head is durable before its cosignature is sent: stopping at any
                    // point loses nothing, so a signal simply ends the process.
                    _ = shutdown_signal() => Ok(()),
                }
            })
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
