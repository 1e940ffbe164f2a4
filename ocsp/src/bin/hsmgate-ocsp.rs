//! `hsmgate-ocsp`: the OCSP responder, the pre-signer, and the commands that feed them.
//!
//! - `serve --config FILE`: the OCSP responder (HTTP), until SIGTERM/SIGINT.
//! - `presign --config FILE [--once]`: the refresh loop, until SIGTERM/SIGINT; with `--once`,
//!   signs everything due now and exits (non-zero if anything is still due).
//! - `import --config FILE LIST`: records certificates and statuses from a file (see
//!   `ocsp::presigner::Presigner::import` for the format); the refresh loop signs them.
//! - `publish --config FILE --issuer NAME --serial HEX (--good | --revoked [--reason N] [--at T])`:
//!   records a status and returns once its signed response is durable.
//! - `crl-update --config FILE [--once] [--metrics-listen ADDR]`: keeps every CRL shard of the
//!   issuers with `[issuers.crl]` signed and fresh (`ocsp::crl::Updater`) until SIGTERM; with
//!   `--once`, re-signs every shard now and exits.
//! - `crl-urls --config FILE --issuer NAME [--serial HEX]`: prints the issuer's shard URLs (the
//!   CCADB list), or the CRL distribution point of one serial.
//! - `issuer-cert --gateway URL --key NAME --subject DN --days N --out FILE.pem`: a self-signed
//!   CA certificate for a gateway key (for development and tests: a real CA's certificate comes
//!   from its key ceremony).
//!
//! Exit status: 0 on success, 2 for a configuration or usage error, 1 otherwise.

/// See Cargo.toml: glibc's allocator cost the responder ~4 % per request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use clap::{Args, Parser, Subcommand};
use der07::asn1::{BitString, GeneralizedTime, OctetString, UtcTime};
use der07::{Decode, Encode};
use hsmgate_signer_api::client::ClientTls;
use hsmgate_signer_api::v1::SignatureAlgorithm;
use hsmgate_signer_api::{BatchSigner, Payload};
use ocsp::config::Config;
use ocsp::presigner::{self, Presigner, PresignerMetrics};
use ocsp::{CertStatus, Error, IssuerName, Serial};
use prometheus_client::registry::Registry;
use sha1_010::{Digest, Sha1};
use spki07::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert_02::certificate::{Certificate, TbsCertificate, Version};
use x509_cert_02::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier};
use x509_cert_02::ext::{AsExtension, Extension};
use x509_cert_02::name::Name;
use x509_cert_02::serial_number::SerialNumber;
use x509_cert_02::time::{Time, Validity};

#[derive(Parser, Debug)]
#[command(version, about = "hsmgate OCSP responder and pre-signer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the OCSP responder until SIGTERM/SIGINT; prints `READY http=ADDR metrics=ADDR`.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Keeps every certificate's response fresh (the refresh loop) until SIGTERM; `--once`:
    /// signs everything due now, then exits (non-zero if anything is still due).
    Presign {
        #[arg(long)]
        config: PathBuf,
        /// Sign what is due (no per-tick bound), then exit: 0 when everything was signed and
        /// stored, 1 with a message otherwise (for cron-style runs and the benchmark).
        #[arg(long)]
        once: bool,
        /// Serve the pre-signer's Prometheus metrics at http://ADDR/metrics.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
    },
    /// Records certificates and their statuses from LIST (one per line:
    /// `<issuer> <serial hex> good` or `<issuer> <serial hex> revoked <time> [reason]`).
    Import {
        #[arg(long)]
        config: PathBuf,
        list: PathBuf,
    },
    /// Records one certificate's status and signs and stores its response now.
    Publish {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        issuer: String,
        /// Serial number in hex (`0a:1b` or `0a1b`).
        #[arg(long)]
        serial: String,
        #[command(flatten)]
        status: StatusArgs,
        /// Also write the response (DER) to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Keeps every CRL shard signed and fresh until SIGTERM; `--once`: re-sign all now, exit.
    CrlUpdate {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        once: bool,
        /// Serve the updater's Prometheus metrics at http://ADDR/metrics.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
    },
    /// Prints an issuer's CRL shard URLs, or the one a certificate with `--serial` names.
    CrlUrls {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        serial: Option<String>,
    },
    /// Creates a self-signed CA certificate whose key is a gateway key.
    IssuerCert {
        /// The signing gateway (`http://127.0.0.1:50051`).
        #[arg(long)]
        gateway: String,
        /// The gateway key name.
        #[arg(long)]
        key: String,
        /// Subject and issuer, RFC 4514 (`CN=hsmgate test CA,O=hsmgate`).
        #[arg(long)]
        subject: String,
        #[arg(long)]
        days: u32,
        /// Where to write the certificate (PEM).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
#[group(skip)]
struct StatusArgs {
    #[arg(long, conflicts_with = "revoked", required_unless_present = "revoked")]
    good: bool,
    #[arg(long)]
    revoked: bool,
    /// CRLReason code (RFC 5280 §5.3.1: 0-6, 8-10).
    // `conflicts_with` rather than `requires = "revoked"`: clap counts a flag's default
    // (`false`) as present for `requires`.
    #[arg(long, conflicts_with = "good")]
    reason: Option<u8>,
    /// Revocation time: RFC 3339 or Unix seconds (default: now).
    // `conflicts_with` rather than `requires = "revoked"`: clap counts a flag's default
    // (`false`) as present for `requires`.
    #[arg(long, conflicts_with = "good")]
    at: Option<String>,
}

fn main() -> ExitCode {
    hsmgate_signer_api::logging::init("info");
    let cli = Cli::parse();
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
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hsmgate-ocsp: {e}");
            match e {
                Error::Config { .. } | Error::Import { .. } | Error::UnknownIssuer(_) => {
                    ExitCode::from(2)
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn dispatch(command: Command) -> Result<(), Error> {
    match command {
        Command::Presign {
            config,
            once,
            metrics_listen,
        } => presign(&config, once, metrics_listen).await,
        Command::Import { config, list } => {
            let config = Config::load(&config)?;
            let presigner = Presigner::from_config(&config, PresignerMetrics::default()).await?;
            let report = presigner.import(&list).await?;
            println!(
                "imported {} certificates from {} ({} new or newly revoked); `presign` signs them",
                report.certificates,
                list.display(),
                report.changed
            );
            Ok(())
        }
        Command::Publish {
            config,
            issuer,
            serial,
            status,
            out,
        } => publish(&config, issuer, &serial, status, out.as_deref()).await,
        Command::IssuerCert {
            gateway,
            key,
            subject,
            days,
            out,
        } => {
            let signer = BatchSigner::connect_lazy(&gateway, ClientTls::from_env().as_ref())?;
            let pem = issuer_cert(&signer, &key, &subject, days).await?;
            std::fs::write(&out, pem)?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Serve { config } => ocsp::responder::run(Config::load(&config)?).await,
        Command::CrlUpdate {
            config,
            once,
            metrics_listen,
        } => crl_update(&config, once, metrics_listen).await,
        Command::CrlUrls {
            config,
            issuer,
            serial,
        } => {
            let config = Config::load(&config)?;
            let map = ocsp::crl::ShardMap::all(&config)
                .into_iter()
                .find(|m| m.issuer().0 == issuer)
                .ok_or_else(|| Error::Config {
                    path: "issuers.crl".into(),
                    detail: format!("issuer `{issuer}` publishes no CRLs"),
                })?;
            use std::io::Write;
            // Written, not printed: `crl-urls | head` must not panic on a closed pipe.
            let mut out = std::io::stdout().lock();
            match serial {
                Some(hex) => {
                    let serial =
                        Serial::from_hex(&hex.replace(':', "")).ok_or_else(|| Error::Config {
                            path: "--serial".into(),
                            detail: format!("`{hex}` is not hexadecimal"),
                        })?;
                    let _ = writeln!(out, "{}", map.url_for(&serial));
                }
                None => {
                    for url in map.urls() {
                        if writeln!(out, "{url}").is_err() {
                            break;
                        }
                    }
                }
            }
            Ok(())
        }
    }
}

async fn presign(
    config_path: &Path,
    once: bool,
    metrics_listen: Option<SocketAddr>,
) -> Result<(), Error> {
    let config = Config::load(config_path)?;
    let metrics = PresignerMetrics::default();
    let presigner = Presigner::from_config(&config, metrics.clone()).await?;
    check_keys(&config).await?;
    if let Some(addr) = metrics_listen {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        serve_metrics(addr, Arc::new(registry)).await?;
    }
    if once {
        let started = std::time::Instant::now();
        let report = presigner.run_once(ocsp::unix_now()).await?;
        println!(
            "presign --once: {} responses signed for {} certificates in {:.2} s; {} certificates still due",
            report.responses,
            report.certificates,
            started.elapsed().as_secs_f64(),
            report.still_due
        );
        return if report.still_due == 0 {
            Ok(())
        } else {
            Err(Error::Store {
                store: "sqlite",
                detail: format!(
                    "{} certificates are still due after the run ({} of them revocations): the store \
                     refused their responses (it keeps a revocation, or a newer response from another \
                     signer); see the log",
                    report.still_due, report.revocations_pending
                ),
            })
        };
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    tracing::info!(issuers = config.issuers.len(), gateway = %config.presigner.gateway, "pre-signer running");
    println!("READY presign");
    presigner.run(rx).await;
    Ok(())
}

async fn crl_update(
    config_path: &Path,
    once: bool,
    metrics_listen: Option<SocketAddr>,
) -> Result<(), Error> {
    let config = Config::load(config_path)?;
    let metrics = ocsp::crl::CrlMetrics::default();
    let updater = ocsp::crl::Updater::from_config(&config, metrics.clone()).await?;
    check_keys(&config).await?;
    updater.prepare().await?;
    if once {
        let report = updater.pass(ocsp::unix_now(), true).await?;
        println!(
            "CRL shards: {} stored, {} superseded by another updater, {} failed",
            report.stored, report.superseded, report.failed
        );
        return if report.failed == 0 {
            Ok(())
        } else {
            Err(Error::Store {
                store: "crl",
                detail: format!(
                    "{} shards could not be updated (see the log)",
                    report.failed
                ),
            })
        };
    }
    if let Some(addr) = metrics_listen {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        serve_metrics(addr, Arc::new(registry)).await?;
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    for map in updater.shard_maps() {
        tracing::info!(issuer = %map.issuer().0, shards = map.shards(), list = %map.list_url(), "CRL updater running");
    }
    println!("READY crl-update");
    updater.run(rx).await;
    Ok(())
}

/// A gateway key that is not the issuer's key is a configuration error; an unreachable gateway
/// is not (the loop retries every tick), so the pre-signer starts anyway.
async fn check_keys(config: &Config) -> Result<(), Error> {
    let issuers = ocsp::Issuers::load(config)?;
    let signer =
        BatchSigner::connect_lazy(&config.presigner.gateway, ClientTls::from_env().as_ref())?
            .with_timeout(Duration::from_secs(5));
    match presigner::verify_issuer_keys(&signer, &issuers).await {
        Ok(()) => Ok(()),
        Err(e @ (Error::Config { .. } | Error::Encoding { .. })) => Err(e),
        Err(Error::Gateway {
            code: tonic::Code::NotFound,
            detail,
            ..
        }) => Err(Error::Config {
            path: "issuers.signing_key".into(),
            detail,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "could not check the issuers' keys at the gateway; continuing");
            Ok(())
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers there is no clean stop; Ctrl-C's default still ends us.
            std::future::pending::<()>().await;
        }
    }
}

async fn serve_metrics(addr: SocketAddr, registry: Arc<Registry>) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "metrics");
    tokio::spawn(async move {
        if let Err(e) = ocsp::metrics::serve(listener, registry, std::future::pending()).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}

async fn publish(
    config_path: &Path,
    issuer: String,
    serial: &str,
    status: StatusArgs,
    out: Option<&Path>,
) -> Result<(), Error> {
    let config = Config::load(config_path)?;
    let serial = Serial::from_hex(serial)
        .filter(|_| !serial.is_empty())
        .ok_or_else(|| Error::Config {
            path: "--serial".into(),
            detail: format!("`{serial}` is not hexadecimal"),
        })?;
    let status = if status.good {
        CertStatus::Good
    } else {
        let at = match &status.at {
            Some(t) => presigner::parse_time(t).ok_or_else(|| Error::Config {
                path: "--at".into(),
                detail: format!("`{t}` is neither RFC 3339 nor Unix seconds"),
            })?,
            None => ocsp::unix_now(),
        };
        CertStatus::Revoked {
            at,
            reason: status.reason,
        }
    };
    let presigner = Presigner::from_config(&config, PresignerMetrics::default()).await?;
    let response = presigner
        .publish(&IssuerName(issuer.clone()), &serial, status)
        .await?;
    if let Some(out) = out {
        std::fs::write(out, &response.der)?;
    }
    println!(
        "published {issuer}/{serial}: {:?}, thisUpdate {}, nextUpdate {}, {} bytes",
        response.status,
        response.this_update,
        response.next_update,
        response.der.len()
    );
    Ok(())
}

fn encoding(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Encoding {
        what: what.to_owned(),
        detail: e.to_string(),
    }
}

/// RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050.
fn x509_time(unix_secs: u64) -> Result<Time, Error> {
    let d = Duration::from_secs(unix_secs);
    // 2050-01-01T00:00:00Z
    if unix_secs < 2_524_608_000 {
        UtcTime::from_unix_duration(d).map(Time::UtcTime)
    } else {
        GeneralizedTime::from_unix_duration(d).map(Time::GeneralTime)
    }
    .map_err(|e| encoding("validity", e))
}

fn extension<T: AsExtension>(value: &T, subject: &Name) -> Result<Extension, Error> {
    value
        .to_extension(subject, &[])
        .map_err(|e| encoding("extension", e))
}

/// A self-signed v3 CA certificate for `key` (RFC 5280 §4.1), signed through the gateway, as
/// PEM. The gateway's algorithm is learnt first from a probe signature: `TBSCertificate.signature`
/// must name the algorithm before the signature exists, and the gateway is the one that knows
/// which AlgorithmIdentifier it produces (e.g. parameters absent for ECDSA, RFC 5758 §3.2).
async fn issuer_cert(
    signer: &BatchSigner,
    key: &str,
    subject: &str,
    days: u32,
) -> Result<String, Error> {
    let spki_der = signer.public_key(key).await?.spki_der;
    let spki = SubjectPublicKeyInfoOwned::from_der(&spki_der)
        .map_err(|e| encoding("public key from the gateway", e))?;
    let algorithm_der = signer
        .sign_one(
            key,
            SignatureAlgorithm::Unspecified,
            Payload::Raw,
            b"hsmgate-ocsp issuer-cert: which algorithm".to_vec(),
        )
        .await?
        .algorithm_identifier;
    let algorithm = AlgorithmIdentifierOwned::from_der(&algorithm_der)
        .map_err(|e| encoding("algorithm from the gateway", e))?;
    let name = Name::from_str(subject).map_err(|e| Error::Config {
        path: "--subject".into(),
        detail: format!("`{subject}`: {e}"),
    })?;
    // RFC 5280 §4.1.2.2: positive, at most 20 octets; 16 random bytes (CA/B BR §7.1 asks for
    // at least 64 bits of CSPRNG output), first bit cleared so no 0x00 padding is needed.
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial).map_err(|e| encoding("serial number", e))?;
    serial[0] = (serial[0] & 0x7f).max(1);
    let now = u64::try_from(ocsp::unix_now()).unwrap_or(0);
    // Backdated an hour for verifiers whose clocks run behind.
    let validity = Validity {
        not_before: x509_time(now.saturating_sub(3600))?,
        not_after: x509_time(now + u64::from(days) * 86_400)?,
    };
    // RFC 5280 §4.2.1.2 method (1): SHA-1 of the subjectPublicKey BIT STRING's value.
    let key_id = Sha1::digest(spki.subject_public_key.raw_bytes());
    let extensions = vec![
        extension(
            &BasicConstraints {
                ca: true,
                path_len_constraint: None,
            },
            &name,
        )
        .map(|mut e| {
            // RFC 5280 §4.2.1.9: critical in CA certificates.
            e.critical = true;
            e
        })?,
        extension(
            &KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign),
            &name,
        )?,
        extension(
            &SubjectKeyIdentifier(
                OctetString::new(key_id.to_vec())
                    .map_err(|e| encoding("subjectKeyIdentifier", e))?,
            ),
            &name,
        )?,
    ];
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&serial).map_err(|e| encoding("serial number", e))?,
        signature: algorithm.clone(),
        issuer: name.clone(),
        validity,
        subject: name,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let tbs_der = tbs.to_der().map_err(|e| encoding("TBSCertificate", e))?;
    let signed = signer
        .sign_one(key, SignatureAlgorithm::Unspecified, Payload::Raw, tbs_der)
        .await?;
    let (signature, used) = (signed.signature, signed.algorithm_identifier);
    if used != algorithm_der {
        return Err(encoding(
            "certificate signature",
            "the gateway signed with another algorithm than its probe signature used",
        ));
    }
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: algorithm,
        signature: BitString::from_bytes(&signature).map_err(|e| encoding("signature", e))?,
    };
    let der = cert.to_der().map_err(|e| encoding("certificate", e))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    Ok(pem)
}
