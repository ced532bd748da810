//! `allowly`: see the `allowly_server` crate docs, or `allowly serve --help`.

use std::process::ExitCode;

use allowly_server::config::{Cli, Command};
use clap::Parser as _;

/// See the workspace Cargo.toml for why this allocator.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ALLOWLY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match cli.command {
        Command::Serve(args) => match args.resolve() {
            Ok(cfg) => run(cfg),
            Err(e) => Err(e.to_string()),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("allowly: error: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(cfg: allowly_server::config::ServerConfig) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(allowly_server::serve::run(cfg)).map_err(|e| e.to_string())
}
