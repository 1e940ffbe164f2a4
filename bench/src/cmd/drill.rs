//! `drill`: the mass-revocation drill. How long would it take to revoke every certificate we
//! have issued and re-sign every OCSP response, with this HSM pair?
//!
//! ```text
//!  N certificates (deterministic serials) ──import──▶ worklist (SQLite) ──presign──▶ `good` responses
//!        │                                            (the issued fleet; untimed)
//!        ▼ revoke all (one worklist update)
//!  refresh_once ──SignBatch──▶ gateway ──▶ `revoked` responses        ◀── timed: the drill
//!        ▼
//!  verify every serial: stored, parses as an OCSPResponse whose SingleResponses are all
//!  `revoked` (x509-ocsp, not the store's status column); a sample of signatures checked with
//!  RustCrypto against the gateway's public key
//! ```
//!
//! The work lives in `--dir` (the OCSP store, the issuer certificate, `drill-state.json`): run
//! the same command again after an interruption and it resumes. The worklist is the
//! pre-signer's own (`ocsp::presigner`): a response is marked published in the transaction that
//! stores it, so what was stored is never signed again and what was not is still due. Phases
//! already done are recorded in the state file and skipped.
//!
//! The reference rate is the gateway's own `SignBatch` rate, measured in the same run by
//! `hsm-bench sign --mode batch` against the same gateway, just before and just after the timed
//! phase (their mean).
//!
//! With `--model` the gateway runs in front of modelled HSMs (hsm-sim's Luna-class model, the
//! setup `capacity` uses) instead of `--config`'s. On this machine SoftHSM2 signs on the same
//! two cores as the pre-signer, so against the tokens themselves the ratio measures how the
//! cores are shared; against a modelled pair, whose rated speed and not the host's CPU limits
//! signing (as a network HSM's does), it measures whether the pipeline keeps up with the HSMs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use der07::{Decode, Encode};
use hsm_config::Config;
use hsmgate_signer_api::v1::GetPublicKeyRequest;
use ocsp::presigner::{Presigner, PresignerMetrics};
use ocsp::store::ResponseStore;
use ocsp::store::Slot;
use ocsp::{CertStatus, IssuerName, Serial, unix_now};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::gateway::{self, SpawnedGateway};
use crate::grpc_load;
use crate::progress;
use crate::simsetup::{self, SimGateway, SimModelReport};

/// `hsm-bench drill` options.
#[derive(Args, Debug)]
pub struct DrillArgs {
    /// The gateway configuration: spawned with it (unless `--gateway`), and read for nothing
    /// else. Not with `--model`, which writes its own.
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    pub config: Option<PathBuf>,
    /// The gateway key that signs the drill issuer's OCSP responses (with `--model`: the
    /// modelled HSMs' key).
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    pub key: Option<String>,
    /// Drill against modelled HSMs instead of `--config`'s: `--hsms` tokens behind hsm-sim's
    /// Luna-class timing model, given in its syntax, e.g. `"units=10 rate=10000"` (a pair
    /// rated 20,000/s, SoftHSM2 making the signatures) or `"... signature=stand-in"` (fake
    /// signatures: the gateway and pipeline at a rate this machine cannot sign at; statuses
    /// are still checked, signatures cannot be). The setup (tokens, gateway config, hsm-sim
    /// control file) goes to `--dir`/hsms, as `capacity` makes it.
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// With `--model`: how many modelled HSMs.
    #[arg(long, default_value_t = 2, requires = "model")]
    pub hsms: u32,
    /// With `--model`: gateway sessions per modelled HSM (more than its units, so it has a
    /// queue).
    #[arg(long, default_value_t = 32, requires = "model")]
    pub sessions: u32,
    /// With `--model`: the hsm-sim module (default: `libhsm_sim.so` beside hsm-bench).
    #[arg(long, requires = "model")]
    pub sim: Option<PathBuf>,
    /// Use a running gateway at this URL instead of spawning one.
    #[arg(long)]
    pub gateway: Option<String>,
    /// The `signer` binary to spawn (default: beside hsm-bench).
    #[arg(long)]
    pub signer: Option<PathBuf>,
    /// The working directory (store, issuer certificate, state); kept for resuming.
    #[arg(long, default_value = "hsm-bench-drill")]
    pub dir: PathBuf,
    /// Certificates in the fleet.
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// Responses per `SignBatch` call.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Seconds of the `SignBatch` reference measurement.
    #[arg(long, default_value_t = 5)]
    pub signbatch_seconds: u64,
    /// Fleet size for the projection.
    #[arg(long, default_value_t = 200_000_000)]
    pub fleet: u64,
    /// CRL shards of the drill's issuer (Let's Encrypt: 128). After the revocation, the CRL
    /// updater re-signs every shard; the report gives the time to the last one stored, the
    /// bytes, and the shard sizes projected to `--fleet`.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub crl_shards: u32,
    /// CRLReason of the revocations (RFC 5280 §5.3.1; 4 = superseded).
    #[arg(long, default_value_t = 4)]
    pub reason: u8,
    /// Signatures verified with RustCrypto (a random sample; all statuses are checked).
    #[arg(long, default_value_t = 1000)]
    pub verify_sample: usize,
    /// Write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the re-signing rate over time as an SVG chart.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// The name of the drill's issuer in the OCSP configuration.
const ISSUER: &str = "drill";
/// Rows per worklist transaction while importing and revoking.
const WRITE_CHUNK: usize = 10_000;
/// How often the re-signing rate is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// What survives an interruption: the phases done.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    count: u64,
    /// The fleet was imported and every certificate has its `good` response.
    issued: bool,
    /// When the revocation was recorded (Unix seconds), once it was.
    revoked_at: Option<i64>,
}

/// The drill's report (`--json`).
#[derive(Debug, Serialize)]
pub struct DrillReport {
    pub tool: String,
    pub count: u64,
    pub key: String,
    pub gateway: String,
    pub batch: usize,
    /// Certificates whose responses this run re-signed (fewer than `count` when resuming).
    pub resigned: u64,
    /// HSM signatures each certificate's revocation costs: one response per CertID hash of
    /// `presigner.cert_id_hashes` (2 with the default `["sha1", "sha256"]`, 1 with one hash).
    pub signatures_per_certificate: u64,
    pub resumed: bool,
    pub seconds: f64,
    /// Responses (signatures) per second: `signatures_per_certificate` per certificate.
    pub responses_per_s: f64,
    /// The mean of `signbatch_before` and `signbatch_after`.
    pub signbatch_per_s: f64,
    pub signbatch_before: f64,
    pub signbatch_after: f64,
    pub ratio_to_signbatch: f64,
    pub verified_revoked: u64,
    pub missing: u64,
    pub not_revoked: u64,
    pub signatures_checked: u64,
    pub signatures_bad: u64,
    /// The hsm-sim HSMs of the gateway and their timing models (empty: real HSMs).
    pub modelled_hsms: Vec<SimModelReport>,
    /// The modelled HSMs returned stand-in signatures: no signature was checked, and the
    /// responses are not valid OCSP responses (the statuses were still checked).
    pub stand_in_signatures: bool,
    pub fleet: u64,
    /// Hours to revoke the fleet and re-sign its responses at the measured rate (none when
    /// this run had nothing left to re-sign): `fleet × signatures_per_certificate` responses.
    pub fleet_revocation_hours: Option<f64>,
    /// Hours for the revocations plus a new certificate and its OCSP responses per certificate
    /// (1 + `signatures_per_certificate` more signatures each, at the `SignBatch` rate).
    pub fleet_replacement_hours: Option<f64>,
    /// Responses re-signed per second, per sample interval.
    pub timeline: Vec<(f64, f64)>,
    /// The CRL side of the drill.
    pub crl: CrlReport,
}

/// The CRL side of the drill: every shard of the issuer re-signed by the CRL updater once the
/// revocations are durable, then read back from the store and checked.
#[derive(Debug, Default, Serialize)]
pub struct CrlReport {
    pub shards: u32,
    /// Seconds from the revocations being durable to the last shard stored (this run's
    /// revocation; when resuming, the updater pass alone).
    pub seconds_to_last_shard: f64,
    /// Seconds of the updater pass itself (build, sign through the gateway, store).
    pub pass_seconds: f64,
    pub stored: usize,
    pub failed: usize,
    /// Entries over all shards, read back from the stored DER (each must be one of the
    /// drill's serials; together they must be all of them).
    pub entries: u64,
    pub bytes: u64,
    pub largest_shard_bytes: u64,
    pub largest_shard_entries: u64,
    /// Shards whose DER parses as a CertificateList of the issuer and whose signature verifies
    /// (RustCrypto, P-256; 0 with stand-in signatures).
    pub verified: u32,
    pub bad: u32,
    /// Serials listed that are not the drill's, or the drill's listed twice or not at all.
    pub unexpected_entries: u64,
    pub missing_entries: u64,
    /// `bytes / entries`, and a shard of `--fleet` certificates all revoked (the relying
    /// party's download) at that size.
    pub bytes_per_entry: f64,
    pub fleet_shard_bytes: f64,
    pub fleet_total_bytes: f64,
    /// The gateway's largest `sign-crl` item (`batching.max_crl_bytes`): a projected shard
    /// beyond it could not be signed without more shards or a higher limit.
    pub gateway_max_crl_bytes: Option<u64>,
}

/// Runs the drill.
pub fn run(args: DrillArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let report = runtime.block_on(drill(&args))?;
    print_summary(&report);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        plot(&report, path)?;
    }
    let crl = &report.crl;
    if crl.failed > 0 || crl.bad > 0 || crl.missing_entries > 0 || crl.unexpected_entries > 0 {
        bail!(
            "the drill's CRLs are wrong: {} shards failed, {} bad, {} serials missing, {} unexpected entries",
            crl.failed,
            crl.bad,
            crl.missing_entries,
            crl.unexpected_entries
        );
    }
    if report.missing > 0 || report.not_revoked > 0 || report.signatures_bad > 0 {
        bail!(
            "the drill lost responses: {} missing, {} not revoked, {} bad signatures",
            report.missing,
            report.not_revoked,
            report.signatures_bad
        );
    }
    Ok(())
}

async fn drill(args: &DrillArgs) -> Result<DrillReport> {
    if args.count == 0 || args.batch == 0 {
        bail!("--count and --batch must be at least 1");
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args.dir.canonicalize()?;
    let target = match &args.model {
        Some(model) => modelled(args, model, &dir)?,
        None => Target {
            config: args.config.clone().context("--config is required")?,
            key: args.key.clone().context("--key is required")?,
            envs: Vec::new(),
            control: None,
        },
    };
    let mut spawned = None;
    let url = match &args.gateway {
        Some(url) => url.clone(),
        None => {
            let signer = match &args.signer {
                Some(p) => p.clone(),
                None => gateway::default_signer()?,
            };
            let envs: Vec<(&str, &std::ffi::OsStr)> = target
                .envs
                .iter()
                .map(|(k, v)| (*k, v.as_os_str()))
                .collect();
            let g = SpawnedGateway::spawn(&signer, &target.config, &dir.join("signer.log"), &envs)?;
            let url = g.url();
            spawned = Some(g);
            url
        }
    };
    let result = drill_against(args, &target, &dir, &url).await;
    if let Some(mut g) = spawned {
        g.stop();
    }
    result
}

/// The gateway the drill runs against: its configuration, the key, and what the gateway's
/// environment needs (the modelled HSMs' SoftHSM2 store and hsm-sim control file).
struct Target {
    config: PathBuf,
    key: String,
    envs: Vec<(&'static str, PathBuf)>,
    control: Option<PathBuf>,
}

/// `--model`: tokens, gateway configuration and control file in `dir/hsms` (kept, so a
/// resumed drill finds the same key), the model written for every token.
fn modelled(args: &DrillArgs, model: &str, dir: &Path) -> Result<Target> {
    let line = format!("* model {model}\n");
    simsetup::parse_models(&line).with_context(|| format!("--model {model:?}"))?;
    let module = match &args.sim {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("libhsm_sim.so"),
    };
    if !module.is_file() {
        bail!(
            "no hsm-sim module at {} (build it: cargo build --release -p hsm-sim; or --sim PATH)",
            module.display()
        );
    }
    let g = SimGateway {
        module,
        hsms: args.hsms,
        sessions: args.sessions,
        worker_chunk: 32,
    };
    eprintln!(
        "modelled HSMs: {} × `{model}` in {}/hsms",
        args.hsms,
        dir.display()
    );
    let setup = simsetup::prepare(&dir.join("hsms"), &g)?;
    simsetup::write_control(&setup.control, &line)?;
    Ok(Target {
        config: setup.config,
        key: simsetup::KEY.to_owned(),
        envs: vec![
            ("SOFTHSM2_CONF", setup.softhsm_conf),
            ("HSMSIM_CONTROL", setup.control.clone()),
        ],
        control: Some(setup.control),
    })
}

async fn drill_against(
    args: &DrillArgs,
    target: &Target,
    dir: &Path,
    url: &str,
) -> Result<DrillReport> {
    let models = Config::load(&target.config)
        .map(|c| simsetup::describe_models(&c, target.control.as_deref()))
        .unwrap_or_default();
    let stand_in = models.iter().any(|m| m.stand_in_signatures);
    let max_crl_bytes = Config::load(&target.config)
        .ok()
        .map(|c| c.batching.max_crl_bytes as u64);
    let mut client = grpc_load::connect(url).await?;
    gateway::wait_for_key(&mut client, &target.key, Duration::from_secs(30)).await?;
    let spki = client
        .get_public_key(GetPublicKeyRequest {
            key: target.key.clone(),
        })
        .await
        .map_err(|s| anyhow!("GetPublicKey: {s}"))?
        .into_inner()
        .spki_der;

    let state_path = dir.join("drill-state.json");
    let mut state: State = match std::fs::read(&state_path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a drill state", state_path.display()))?,
        Err(_) => State {
            count: args.count,
            ..State::default()
        },
    };
    if state.count != args.count {
        bail!(
            "{} holds a drill of {} certificates, not {}: use another --dir",
            dir.display(),
            state.count,
            args.count
        );
    }
    let save = |state: &State| -> Result<()> {
        std::fs::write(&state_path, serde_json::to_vec_pretty(state)?)
            .with_context(|| format!("writing {}", state_path.display()))
    };

    let issuer_pem = dir.join("issuer.pem");
    if !issuer_pem.exists() {
        issuer_certificate(url, &target.key, &issuer_pem)?;
    }
    let config_path = dir.join("ocsp.toml");
    hsmgate_stack::configs::write(
        &ocsp_config(url, &target.key, args.batch, args.crl_shards),
        &config_path,
    )?;
    let config = ocsp::config::Config::load(&config_path).map_err(|e| anyhow!("{e}"))?;
    let metrics = PresignerMetrics::default();
    let presigner = Presigner::from_config(&config, metrics.clone())
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let issuer = IssuerName(ISSUER.into());
    let serials: Vec<Serial> = (0..args.count).map(serial).collect();

    if !state.issued {
        eprintln!(
            "issuing: {} certificates and their `good` responses",
            args.count
        );
        for chunk in serials.chunks(WRITE_CHUNK) {
            let items = chunk
                .iter()
                .map(|s| (issuer.clone(), s.clone(), CertStatus::Good))
                .collect();
            presigner
                .store()
                .upsert_certificates(items)
                .await
                .map_err(|e| anyhow!("{e}"))?;
        }
        presigner
            .refresh_once(unix_now())
            .await
            .map_err(|e| anyhow!("{e}"))?;
        state.issued = true;
        save(&state)?;
    }

    eprintln!(
        "reference: SignBatch for {} s against the same gateway",
        args.signbatch_seconds
    );
    let signbatch_before = signbatch_rate(args, target, url, dir)?;

    let resumed = state.revoked_at.is_some();
    let revoked_at = match state.revoked_at {
        Some(t) => t,
        None => {
            let at = unix_now();
            eprintln!("revoking all {} certificates", args.count);
            let status = CertStatus::Revoked {
                at,
                reason: Some(args.reason),
            };
            for chunk in serials.chunks(WRITE_CHUNK) {
                let items = chunk
                    .iter()
                    .map(|s| (issuer.clone(), s.clone(), status))
                    .collect();
                presigner
                    .store()
                    .upsert_certificates(items)
                    .await
                    .map_err(|e| anyhow!("{e}"))?;
            }
            state.revoked_at = Some(at);
            save(&state)?;
            at
        }
    };
    let revocations_durable = Instant::now();

    eprintln!(
        "CRLs: re-signing every one of {} shards through the gateway",
        args.crl_shards
    );
    let crl = crl_phase(
        args, &config, &presigner, &issuer, &serials, &spki, stand_in,
    )
    .await
    .map(|mut r| {
        if !resumed {
            r.seconds_to_last_shard = revocations_durable.elapsed().as_secs_f64();
        }
        r.gateway_max_crl_bytes = max_crl_bytes;
        r
    })?;

    let pending = presigner
        .store()
        .backlog(unix_now(), 0)
        .await
        .map_err(|e| anyhow!("{e}"))?
        .revocations_pending;
    eprintln!("re-signing {pending} revoked responses (revoked at {revoked_at})");
    let bar = progress::count_bar(pending, "re-signed");
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let metrics = metrics.clone();
        let done = done.clone();
        let bar = bar.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let first = metrics.signed_total();
            let mut last = (0.0, first);
            let mut timeline = Vec::new();
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(SAMPLE_EVERY).await;
                let t = start.elapsed().as_secs_f64();
                let n = metrics.signed_total();
                timeline.push((t, (n - last.1) as f64 / (t - last.0).max(1e-9)));
                last = (t, n);
                bar.set_position(n - first);
            }
            timeline
        })
    };
    let signed_before = metrics.signed_total();
    let started = Instant::now();
    let result = presigner.refresh_once(unix_now()).await;
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let timeline = sampler.await.unwrap_or_default();
    bar.finish_and_clear();
    result.map_err(|e| anyhow!("re-signing: {e}"))?;
    // The pre-signer counts signatures: one response per CertID hash per certificate.
    let per_certificate = (config.presigner.cert_id_hashes.iter().count() as u64).max(1);
    let signatures = metrics.signed_total() - signed_before;
    let resigned = signatures / per_certificate;
    // The reference again after the timed phase: on a shared machine one short measurement
    // can be off by a third; the report uses the mean of the two.
    eprintln!(
        "reference again: SignBatch for {} s",
        args.signbatch_seconds
    );
    let signbatch_after = signbatch_rate(args, target, url, dir)?;
    let signbatch_per_s = (signbatch_before + signbatch_after) / 2.0;

    eprintln!("verifying {} responses", args.count);
    let sample = if stand_in { 0 } else { args.verify_sample };
    let hashes: Vec<_> = config.presigner.cert_id_hashes.iter().collect();
    let check = verify(&presigner, &issuer, &serials, &hashes, &spki, sample).await?;

    let responses_per_s = signatures as f64 / seconds.max(1e-9);
    let fleet = args.fleet as f64;
    let signatures = per_certificate as f64;
    let measured = resigned > 0 && signbatch_per_s > 0.0;
    Ok(DrillReport {
        tool: format!("hsm-bench {}", env!("CARGO_PKG_VERSION")),
        count: args.count,
        key: target.key.clone(),
        gateway: url.to_owned(),
        batch: args.batch,
        resigned,
        signatures_per_certificate: per_certificate,
        resumed,
        seconds,
        responses_per_s,
        signbatch_per_s,
        signbatch_before,
        signbatch_after,
        ratio_to_signbatch: responses_per_s / signbatch_per_s.max(1e-9),
        verified_revoked: check.revoked,
        missing: check.missing,
        not_revoked: check.not_revoked,
        signatures_checked: check.signatures_checked,
        signatures_bad: check.signatures_bad,
        modelled_hsms: models,
        stand_in_signatures: stand_in,
        fleet: args.fleet,
        fleet_revocation_hours: measured.then(|| fleet * signatures / responses_per_s / 3600.0),
        fleet_replacement_hours: measured.then(|| {
            (fleet * signatures / responses_per_s + (1.0 + signatures) * fleet / signbatch_per_s)
                / 3600.0
        }),
        timeline,
        crl,
    })
}

/// Runs one forced pass of the CRL updater over the drill issuer's shards, then reads every
/// shard back from the store and checks it: parses, is signed by the issuer's key (RustCrypto,
/// P-256), and lists exactly the drill's serials, each once, over all shards.
async fn crl_phase(
    args: &DrillArgs,
    config: &ocsp::config::Config,
    presigner: &Presigner,
    issuer: &IssuerName,
    serials: &[Serial],
    spki: &[u8],
    stand_in: bool,
) -> Result<CrlReport> {
    use der07::Decode as _;
    use ocsp::store::CrlStore;
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    let updater = ocsp::crl::Updater::from_config(config, ocsp::crl::CrlMetrics::default())
        .await
        .map_err(|e| anyhow!("CRL updater: {e}"))?;
    updater
        .prepare()
        .await
        .map_err(|e| anyhow!("CRL updater: {e}"))?;
    let started = Instant::now();
    let pass = updater
        .pass(unix_now(), true)
        .await
        .map_err(|e| anyhow!("CRL pass: {e}"))?;
    let pass_seconds = started.elapsed().as_secs_f64();
    let key = if stand_in {
        None
    } else {
        p256::ecdsa::VerifyingKey::from_public_key_der(spki).ok()
    };
    let expected: std::collections::HashSet<&[u8]> = serials.iter().map(|s| s.as_bytes()).collect();
    let mut seen: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
    let mut r = CrlReport {
        shards: args.crl_shards,
        pass_seconds,
        seconds_to_last_shard: pass_seconds,
        stored: pass.stored,
        failed: pass.failed,
        ..CrlReport::default()
    };
    let store = presigner.store();
    for shard in 0..args.crl_shards {
        let Some(stored) = store
            .get_crl(issuer, shard)
            .await
            .map_err(|e| anyhow!("{e}"))?
        else {
            r.bad += 1;
            continue;
        };
        r.bytes += stored.der.len() as u64;
        r.largest_shard_bytes = r.largest_shard_bytes.max(stored.der.len() as u64);
        let Ok(list) = x509_cert_02::crl::CertificateList::from_der(&stored.der) else {
            r.bad += 1;
            continue;
        };
        let entries = list
            .tbs_cert_list
            .revoked_certificates
            .as_deref()
            .unwrap_or_default();
        r.entries += entries.len() as u64;
        r.largest_shard_entries = r.largest_shard_entries.max(entries.len() as u64);
        for entry in entries {
            let serial = Serial::from_be_bytes(entry.serial_number.as_bytes());
            if !expected.contains(serial.as_bytes()) || !seen.insert(serial.as_bytes().to_vec()) {
                r.unexpected_entries += 1;
            }
        }
        if let Some(key) = &key {
            use der07::Encode as _;
            let tbs = list.tbs_cert_list.to_der()?;
            let ok = list
                .signature
                .as_bytes()
                .and_then(|sig| p256::ecdsa::Signature::from_der(sig).ok())
                .is_some_and(|sig| key.verify(&tbs, &sig).is_ok());
            if ok {
                r.verified += 1;
            } else {
                r.bad += 1;
            }
        }
    }
    r.missing_entries = (serials.len() - seen.len().min(serials.len())) as u64;
    r.bytes_per_entry = r.bytes as f64 / (r.entries.max(1)) as f64;
    r.fleet_shard_bytes = r.bytes_per_entry * args.fleet as f64 / f64::from(args.crl_shards);
    r.fleet_total_bytes = r.bytes_per_entry * args.fleet as f64;
    Ok(r)
}

/// Serial `i` of the drill's fleet: 16 bytes derived from `i` (so a resumed run finds the same
/// ones without a list), positive.
fn serial(i: u64) -> Serial {
    let digest = Sha256::new()
        .chain_update(b"hsmgate drill serial")
        .chain_update(i.to_be_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[0] = (bytes[0] & 0x7f).max(1);
    Serial::from_be_bytes(&bytes)
}

/// The OCSP service configuration of the drill (relative paths resolve against `--dir`). The
/// pre-signer presents the client certificate named by `HSMGATE_TLS_CA` / `_CERT` / `_KEY`
/// when they are set, as hsm-bench's own connections do.
fn ocsp_config(gateway: &str, key: &str, batch: usize, crl_shards: u32) -> ocsp::config::Config {
    use ocsp::config::{Config, CrlConfig, Issuer, Presigner, Responder, Store};
    let (gateway_ca, gateway_cert, gateway_key) = match (
        std::env::var_os("HSMGATE_TLS_CA"),
        std::env::var_os("HSMGATE_TLS_CERT"),
        std::env::var_os("HSMGATE_TLS_KEY"),
    ) {
        (Some(ca), Some(cert), Some(key)) => (Some(ca.into()), Some(cert.into()), Some(key.into())),
        _ => (None, None, None),
    };
    Config {
        responder: Responder::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        issuers: vec![Issuer {
            name: ISSUER.into(),
            certificate: "issuer.pem".into(),
            signing_key: key.into(),
            crl: Some(CrlConfig {
                shards: crl_shards,
                base_url: "http://crl.drill.test".into(),
                ..CrlConfig::default()
            }),
        }],
        store: Store::Sqlite {
            path: "ocsp.sqlite".into(),
        },
        presigner: Presigner {
            gateway: gateway.into(),
            validity_hours: 96,
            refresh_after_hours: 48,
            batch,
            interval_secs: 1,
            gateway_ca,
            gateway_cert,
            gateway_key,
            ..Presigner::default()
        },
        base_dir: PathBuf::new(),
    }
}

/// A binary built beside hsm-bench.
fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .ok_or_else(|| anyhow!("hsm-bench has no directory"))?
        .join(name);
    if !path.is_file() {
        bail!(
            "no {name} beside hsm-bench at {} (cargo build --release -p ocsp -p hsm-bench)",
            path.display()
        );
    }
    Ok(path)
}

/// The drill issuer's certificate, made through the gateway by `hsmgate-ocsp issuer-cert`.
fn issuer_certificate(gateway: &str, key: &str, out: &Path) -> Result<()> {
    let output = Command::new(sibling("hsmgate-ocsp")?)
        .args(["issuer-cert", "--gateway", gateway, "--key", key])
        .args(["--subject", "CN=hsmgate drill CA,O=hsmgate", "--days", "30"])
        .arg("--out")
        .arg(out)
        .output()
        .context("running hsmgate-ocsp issuer-cert")?;
    if !output.status.success() {
        bail!(
            "hsmgate-ocsp issuer-cert failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The gateway's `SignBatch` rate (median signatures/s), by `hsm-bench sign --mode batch`.
fn signbatch_rate(args: &DrillArgs, target: &Target, gateway: &str, dir: &Path) -> Result<f64> {
    let json = dir.join("signbatch.json");
    let output = Command::new(std::env::current_exe()?)
        .arg("sign")
        .arg("--config")
        .arg(&target.config)
        .args([
            "--key",
            &target.key,
            "--mode",
            "batch",
            "--gateway",
            gateway,
        ])
        .args(["--batch", &args.batch.to_string(), "--rounds", "1"])
        .args(["--duration", &format!("{}s", args.signbatch_seconds)])
        .arg("--json")
        .arg(&json)
        .output()
        .context("running hsm-bench sign")?;
    if !output.status.success() {
        bail!(
            "hsm-bench sign failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    report["modes"][0]["median_signatures_per_s"]
        .as_f64()
        .ok_or_else(|| anyhow!("no SignBatch rate in {}", json.display()))
}

#[derive(Default)]
struct Check {
    revoked: u64,
    missing: u64,
    not_revoked: u64,
    signatures_checked: u64,
    signatures_bad: u64,
}

/// Reads every serial's stored response for each CertID hash of `hashes` (a certificate whose
/// response for one of them is absent, or only of the old layout, is missing) and checks, from
/// its DER, that it is a successful OCSPResponse for that serial whose every SingleResponse
/// says `revoked`; verifies with RustCrypto (P-256 keys) the signature of one response of every
/// `len / sample`-th certificate, the hashes taking turns.
async fn verify(
    presigner: &Presigner,
    issuer: &IssuerName,
    serials: &[Serial],
    hashes: &[ocsp::HashAlg],
    spki: &[u8],
    sample: usize,
) -> Result<Check> {
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    let key = if sample == 0 {
        eprintln!("note: stand-in signatures (or --verify-sample 0): no signature is checked");
        None
    } else {
        let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki).ok();
        if key.is_none() {
            eprintln!("note: the key is not P-256; signatures are not sampled");
        }
        key
    };
    let every = (serials.len() / sample.max(1)).max(1);
    let mut check = Check::default();
    'serials: for (i, serial) in serials.iter().enumerate() {
        let mut all_revoked = true;
        // A sampled certificate has one response's signature checked, each hash in turn.
        let checked_hash = if i % every == 0 {
            hashes.get((i / every) % hashes.len().max(1)).copied()
        } else {
            None
        };
        for &hash in hashes {
            let stored = presigner
                .store()
                .get_for(issuer, serial, hash)
                .await
                .map_err(|e| anyhow!("{e}"))?;
            let Some(stored) = stored.filter(|s| Slot::of(&s.der) == Slot::Hash(hash)) else {
                check.missing += 1;
                continue 'serials;
            };
            let Ok((revoked, tbs, signature)) = parse(&stored.der, serial) else {
                all_revoked = false;
                continue;
            };
            all_revoked &= revoked;
            if let Some(key) = &key
                && checked_hash == Some(hash)
            {
                check.signatures_checked += 1;
                let ok = p256::ecdsa::Signature::from_der(&signature)
                    .is_ok_and(|sig| key.verify(&tbs, &sig).is_ok());
                if !ok {
                    check.signatures_bad += 1;
                }
            }
        }
        if all_revoked {
            check.revoked += 1;
        } else {
            check.not_revoked += 1;
        }
    }
    Ok(check)
}

/// (every SingleResponse revoked and for `serial`, tbsResponseData DER, signature).
fn parse(der: &[u8], serial: &Serial) -> Result<(bool, Vec<u8>, Vec<u8>)> {
    use x509_ocsp::{BasicOcspResponse, OcspResponse, OcspResponseStatus};
    let response = OcspResponse::from_der(der)?;
    if response.response_status != OcspResponseStatus::Successful {
        bail!("not successful");
    }
    let bytes = response
        .response_bytes
        .ok_or_else(|| anyhow!("no responseBytes"))?;
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())?;
    let singles = &basic.tbs_response_data.responses;
    let all_revoked = !singles.is_empty()
        && singles.iter().all(|s| {
            matches!(s.cert_status, x509_ocsp::CertStatus::Revoked(_))
                && Serial::from_be_bytes(s.cert_id.serial_number.as_bytes()) == *serial
        });
    Ok((
        all_revoked,
        basic.tbs_response_data.to_der()?,
        basic.signature.raw_bytes().to_vec(),
    ))
}

fn print_summary(r: &DrillReport) {
    println!(
        "mass-revocation drill: {} certificates, key {}",
        r.count, r.key
    );
    for m in &r.modelled_hsms {
        println!(
            "modelled HSM {} ({}): {}",
            m.hsm,
            m.token_label,
            m.model
                .as_deref()
                .unwrap_or("no model: SoftHSM2's own speed")
        );
    }
    if r.stand_in_signatures {
        println!(
            "STAND-IN SIGNATURES: the responses are not validly signed; this run measures the \
             gateway and the pipeline, not signing"
        );
    }
    println!("| figure | value |\n|---|---:|");
    println!(
        "| revoked certificates re-signed (this run) | {}{} |",
        r.resigned,
        if r.resumed { " (resumed)" } else { "" }
    );
    println!("| wall time | {:.1} s |", r.seconds);
    println!(
        "| re-signing rate | {:.0} responses/s ({} per certificate: one per CertID hash) |",
        r.responses_per_s, r.signatures_per_certificate
    );
    println!(
        "| gateway SignBatch (same run: before, after → mean) | {:.0}, {:.0} → {:.0} signatures/s |",
        r.signbatch_before, r.signbatch_after, r.signbatch_per_s
    );
    println!("| ratio | {:.2} |", r.ratio_to_signbatch);
    println!(
        "| verified revoked / missing / not revoked | {} / {} / {} |",
        r.verified_revoked, r.missing, r.not_revoked
    );
    println!(
        "| signatures checked (RustCrypto) / bad | {} / {} |",
        r.signatures_checked, r.signatures_bad
    );
    let c = &r.crl;
    println!(
        "| CRL shards re-signed (stored / failed) | {} / {} of {} |",
        c.stored, c.failed, c.shards
    );
    println!(
        "| revocations durable → last CRL shard stored | {:.1} s (updater pass {:.1} s) |",
        c.seconds_to_last_shard, c.pass_seconds
    );
    println!(
        "| CRL entries read back / missing / unexpected | {} / {} / {} |",
        c.entries, c.missing_entries, c.unexpected_entries
    );
    println!(
        "| CRL bytes (all shards; largest shard) | {} ({:.1} bytes an entry); {} bytes, {} entries |",
        c.bytes, c.bytes_per_entry, c.largest_shard_bytes, c.largest_shard_entries
    );
    println!(
        "| CRL shards verified (RustCrypto) / bad | {} / {} |",
        c.verified, c.bad
    );
    println!(
        "\n{} M certificates all revoked, {} shards: {:.1} MB a shard (what a relying party \
         downloads), {:.1} GB in all.",
        r.fleet / 1_000_000,
        c.shards,
        c.fleet_shard_bytes / 1e6,
        c.fleet_total_bytes / 1e9
    );
    if let Some(max) = c.gateway_max_crl_bytes
        && c.fleet_shard_bytes > max as f64
    {
        println!(
            "WARNING: such a shard is more than the gateway's batching.max_crl_bytes ({:.1} MB): \
             it could not be signed. Use at least {} shards, or raise the limit (up to 256 MiB).",
            max as f64 / 1e6,
            (c.fleet_total_bytes / max as f64).ceil() as u64
        );
    }
    match (r.fleet_revocation_hours, r.fleet_replacement_hours) {
        (Some(revocations), Some(replacement)) => println!(
            "\n{} M certificates: {revocations:.1} h for the revocations, {replacement:.1} h for \
             revocations + new certificates + their OCSP responses, with this HSM pair \
             ({} signatures per certificate's OCSP responses: one per CertID hash).",
            r.fleet / 1_000_000,
            r.signatures_per_certificate
        ),
        _ => println!("\nNothing was left to re-sign: no projection from this run."),
    }
}

fn plot(r: &DrillReport, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("plotting: {e}"))?;
    crate::plot::xy_panel(
        &root,
        &format!(
            "mass-revocation drill: {} certificates re-signed, {:.0} responses/s",
            r.resigned, r.responses_per_s
        ),
        "seconds",
        "responses re-signed per second",
        &[("re-signed/s".into(), r.timeline.clone())],
        &[],
        Some(r.signbatch_per_s),
    )?;
    root.present().map_err(|e| anyhow!("plotting: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn serials_are_stable_positive_and_distinct() {
        let a: Vec<Serial> = (0..10_000).map(serial).collect();
        let b: Vec<Serial> = (0..10_000).map(serial).collect();
        assert_eq!(a, b);
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), a.len());
        assert!(
            a.iter()
                .all(|s| !s.as_bytes().is_empty() && s.as_bytes()[0] < 0x80)
        );
    }
}
