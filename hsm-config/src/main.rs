//! `hsm-config`: check a configuration file; provision SoftHSM2 tokens for a development one;
//! make development certificates for mTLS.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use hsm_config::{Config, Error};
use hsm_config::{ProvisionOptions, provision};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "hsmgate configuration: validate files, provision dev HSMs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate FILE and print every error with its field path. Exit status 1 if invalid.
    Check { file: PathBuf },
    /// Create a SoftHSM2 token for every HSM of FILE and clone every key into the HSMs that
    /// hold it (development and tests only; idempotent). Missing PIN files get a random PIN.
    Provision {
        file: PathBuf,
        /// SoftHSM2 config to use; created with a `tokens` dir next to it if absent.
        /// Default: $SOFTHSM2_CONF.
        #[arg(long, value_name = "PATH")]
        softhsm_conf: Option<PathBuf>,
        /// Where to write `<key>.spki.der` and `<key>.pub.pem`.
        /// Default: `public-keys` next to the SoftHSM2 config.
        #[arg(long, value_name = "DIR")]
        public_keys: Option<PathBuf>,
    },
    /// Make a development CA, a gateway certificate for 127.0.0.1/localhost and client
    /// certificates (`CN=<name>,O=hsmgate dev`) in DIR, for mTLS in development. Idempotent:
    /// existing files are kept.
    DevCerts {
        dir: PathBuf,
        /// A client to make a certificate for (repeatable).
        #[arg(long = "client", value_name = "NAME", default_values_t = ["ocsp-presigner".to_owned(), "ca-frontend".to_owned(), "ceremony".to_owned(), "bench".to_owned()])]
        clients: Vec<String>,
    },
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
        Command::Provision {
            file,
            softhsm_conf,
            public_keys,
        } => match run_provision(&file, softhsm_conf, public_keys) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                report(&e);
                ExitCode::FAILURE
            }
        },
        Command::DevCerts { dir, clients } => {
            let names: Vec<&str> = clients.iter().map(String::as_str).collect();
            match hsm_config::devcerts::ensure(&dir, &names) {
                Ok(r) => {
                    println!(
                        "{}: development CA, gateway and client certificates ({} new files)",
                        dir.display(),
                        r.created.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    report(&e);
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run_provision(
    file: &std::path::Path,
    softhsm_conf: Option<PathBuf>,
    public_keys: Option<PathBuf>,
) -> Result<(), Error> {
    let config = Config::load(file)?;
    let conf = softhsm_conf
        .or_else(|| std::env::var_os("SOFTHSM2_CONF").map(PathBuf::from))
        .ok_or_else(|| {
            Error::Provision("set SOFTHSM2_CONF or pass --softhsm-conf PATH".to_owned())
        })?;
    let mut options = ProvisionOptions::new(conf);
    if let Some(dir) = public_keys {
        options.public_key_dir = dir;
    }
    let started = Instant::now();
    let r = provision(&config, &options)?;
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    println!(
        "{}: {} HSMs provisioned in SoftHSM2 ({}) in {:.2} s",
        file.display(),
        config.hsms().count(),
        options.softhsm_conf.display(),
        started.elapsed().as_secs_f64()
    );
    println!("  tokens created:       {}", list(&r.tokens_created));
    println!("  keys created:         {}", list(&r.keys_created));
    println!("  keys already present: {}", list(&r.keys_present));
    for pin_file in &r.pin_files_created {
        println!("  new random PIN in:    {}", pin_file.display());
    }
    println!(
        "  public keys:          {}/<key>.spki.der and <key>.pub.pem",
        options.public_key_dir.display()
    );
    Ok(())
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
