//! `allowly`: see the `allowly_server` crate docs, or `allowly serve --help`.

use std::process::ExitCode;

use allowly_server::config::{Cli, Command};
use clap::Parser as _;

/// See the workspace Cargo.toml for why this allocator.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match allowly_logs::LogFormat::from_env() {
        Ok(format) => allowly_logs::init(format, "ALLOWLY_LOG", allowly_logs::DEFAULT_FILTER),
        Err(e) => {
            eprintln!("allowly: error: {e}");
            return ExitCode::from(2);
        }
    }
    let result = match cli.command {
        Command::Serve(args) => match args.resolve() {
            Ok(cfg) => run(cfg),
            Err(e) => Err(e.to_string()),
        },
        Command::SignerKeeper(args) => keep(args),
        Command::Backup(args) => allowly_server::backup::backup(args).map_err(|e| e.to_string()),
        Command::Restore(args) => allowly_server::backup::restore(args).map_err(|e| e.to_string()),
        Command::WorkspaceKey(cmd) => print(allowly_server::admin_cli::workspace_key(cmd)),
        Command::AdminKey(cmd) => print(allowly_server::admin_cli::admin_key(cmd)),
        Command::Openapi => {
            print!("{}", allowly_server::openapi::text());
            Ok(())
        }
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
    // Before the runtime exists: as root, this drops privileges, which needs a single thread.
    let prepared = allowly_server::serve::prepare(&cfg).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(allowly_server::serve::run(cfg, prepared)).map_err(|e| e.to_string())
}

/// An operator command's answer to stdout.
fn print(answer: Result<String, allowly_server::error::Error>) -> Result<(), String> {
    let text = answer.map_err(|e| e.to_string())?;
    println!("{}", text.trim_end());
    Ok(())
}

fn keep(args: allowly_server::signer_child::KeeperArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let result = runtime.block_on(allowly_server::signer_child::keep(args)).map_err(|e| e.to_string());
    // Stopped by SIGTERM, the stdin reader may still block in a pool thread: do not wait for it.
    runtime.shutdown_background();
    result
}
