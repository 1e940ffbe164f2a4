//! `signer --config FILE`: runs the hsmgate signing gateway.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hsm_config::{Config, Error as ConfigError};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "hsmgate signing gateway: PKCS#11 HSM pools behind gRPC"
)]
struct Cli {
    /// The gateway's configuration (TOML). SIGHUP re-reads it.
    #[arg(long, short)]
    config: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // cryptoki logs an ERROR for every session it fails to close on a dead HSM;
                // the gateway already reports that HSM's fault once, with context.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,cryptoki=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(ConfigError::Invalid { path, errors }) => {
            eprintln!(
                "{}: {} error(s); refusing to start",
                path.display(),
                errors.len()
            );
            for e in errors {
                eprintln!("  {e}");
            }
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("{e}; refusing to start");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(signer::server::run(cli.config, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
