//! `signer --config FILE`: runs the hsmgate signing gateway.
//! `signer audit verify DIR`: checks the hash chain of an audit log and names the first break.
//!
//! `audit verify` lives here rather than in `hsm-config` because the record format and its
//! hashing are the gateway's (`signer::audit`): one implementation writes and checks them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hsm_config::{Config, Error as ConfigError};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "hsmgate signing gateway: PKCS#11 HSM pools behind gRPC"
)]
struct Cli {
    /// The gateway's configuration (TOML). SIGHUP re-reads it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check every record's hash and the chain across files; exit 1 at the first break.
    Verify {
        /// The `[audit] dir` of a gateway.
        dir: PathBuf,
    },
}

fn audit_verify(dir: &std::path::Path) -> ExitCode {
    match signer::verify_audit_log(dir) {
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Ok(v) => match &v.broken {
            Some(b) => {
                println!("BROKEN: {b} ({} records before it verified)", v.records);
                ExitCode::FAILURE
            }
            None if v.records == 0 => {
                println!("{}: no audit records", dir.display());
                ExitCode::SUCCESS
            }
            None => {
                println!(
                    "OK: {} records in {} file(s), seq {}..{}, last hash {}",
                    v.records,
                    v.files,
                    v.first_seq.unwrap_or(0),
                    v.last_seq.unwrap_or(0),
                    v.last_hash.as_deref().unwrap_or("")
                );
                if v.first_seq.is_some_and(|s| s > 1) {
                    println!(
                        "note: the log starts at seq {}: earlier files are not in {}",
                        v.first_seq.unwrap_or(0),
                        dir.display()
                    );
                }
                ExitCode::SUCCESS
            }
        },
    }
}

fn main() -> ExitCode {
    // cryptoki logs an ERROR for every session it fails to close on a dead HSM; the gateway
    // already reports that HSM's fault once, with context.
    hsmgate_signer_api::logging::init("info,cryptoki=off");
    let cli = Cli::parse();
    let config_path = match (cli.command, cli.config) {
        (
            Some(Command::Audit {
                command: AuditCommand::Verify { dir },
            }),
            _,
        ) => return audit_verify(&dir),
        (None, Some(path)) => path,
        (None, None) => {
            eprintln!("--config FILE is required");
            return ExitCode::from(2);
        }
    };
    let config = match Config::load(&config_path) {
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
    match runtime.block_on(signer::run(config_path, config)) {
        Ok(()) => ExitCode::SUCCESS,
        // Unusable TLS files or audit directory, or a setting this build refuses
        // (`audit.bench_unaudited`): like an invalid configuration.
        Err(
            e @ (signer::Error::Tls { .. } | signer::Error::Audit(_) | signer::Error::Config(_)),
        ) => {
            tracing::error!("{e}; refusing to start");
            ExitCode::from(2)
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
