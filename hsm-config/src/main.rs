//! `hsm-config`: check a configuration file; provision SoftHSM2 tokens for a development one.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hsm_config::{Config, Error};

#[derive(Parser, Debug)]
#[command(version, about = "hsmgate configuration: validate files, provision dev HSMs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate FILE and print every error with its field path. Exit status 1 if invalid.
    Check { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { file } => match Config::load(&file) {
            Ok(config) => {
                let hsms = config.hsms().count();
                println!(
                    "{}: ok ({} datacenters, {hsms} HSMs, {} keys)",
                    file.display(),
                    config.datacenters.len(),
                    config.keys.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                report(&e);
                ExitCode::FAILURE
            }
        },
    }
}

/// Prints an error the way `check` and the signer do: one line per field.
fn report(e: &Error) {
    match e {
        Error::Invalid { path, errors } => {
            eprintln!("{}: {} error(s)", path.display(), errors.len());
            for fe in errors {
                eprintln!("  {fe}");
            }
        }
        other => eprintln!("{other}"),
    }
}
