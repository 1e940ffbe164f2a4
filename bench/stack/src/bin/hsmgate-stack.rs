//! `hsmgate-stack up`: the development stack of this checkout, as `hsm-config/dev/run.sh`
//! describes it (provisioned dev HSMs, the gateway, the dev CA, the OCSP pre-signer, CRL
//! updater and responder, the ACME frontend and its validation perspectives), until Ctrl-C or
//! until one of them exits. The steps and the table of services are [`DevStack`]'s.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand};
use hsmgate_stack::{DevStack, Error, StartedStack};

#[derive(Debug, Parser)]
#[command(about = "hsmgate's development stack")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Provisions and starts the dev stack (hsm-config/examples/dev.toml and friends) until
    /// Ctrl-C, SIGTERM, or one of its processes exits.
    Up {
        /// The workspace root (default: the checkout this binary was built from).
        #[arg(long)]
        root: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let Cmd::Up { root } = Cli::parse().command;
    let stack = DevStack::new(&root.unwrap_or_else(hsmgate_stack::workspace_root));
    // Ctrl-C and SIGTERM only set a flag: the services are stopped below, in order.
    let stop = Arc::new(AtomicBool::new(false));
    if let Err(e) = watch_signals(stop.clone()) {
        eprintln!("hsmgate-stack: cannot watch signals: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let mut started = StartedStack::default();
    let result = up(&stack, &mut started, &stop);
    match &result {
        Ok(()) => {
            if let Some((name, status)) = started.wait_any(|| stop.load(Ordering::Relaxed)) {
                eprintln!("hsmgate-stack: {name} exited ({status}); stopping the others");
            }
        }
        Err(e) => eprintln!("hsmgate-stack: {e}"),
    }
    started.stop_all();
    if result.is_ok() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// A thread with a small runtime that sets `stop` on SIGINT or SIGTERM.
fn watch_signals(stop: Arc<AtomicBool>) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                stop.store(true, Ordering::Relaxed);
            })
        })?;
    Ok(())
}

fn up(stack: &DevStack, started: &mut StartedStack, stop: &AtomicBool) -> Result<(), Error> {
    let dev = stack.dev.display().to_string();
    let abs_dev = stack.root.join(&stack.dev);
    std::fs::create_dir_all(&abs_dev).map_err(|e| Error::Step {
        step: format!("mkdir {dev}"),
        detail: e.to_string(),
    })?;
    let hsm_config = |args: &[&str]| -> Result<(), Error> {
        let out = stack.run("hsm-config", "hsm-config", args, None)?;
        print!("{out}");
        Ok(())
    };
    hsm_config(&["check", "hsm-config/examples/dev.toml"])?;
    let public_keys = format!("{dev}/public-keys");
    hsm_config(&[
        "provision",
        "hsm-config/examples/dev.toml",
        "--public-keys",
        &public_keys,
    ])?;
    // mTLS: a dev CA, the gateway's certificate for 127.0.0.1, a certificate per client
    // (ocsp-presigner, ca-frontend, ceremony, bench). Kept across runs.
    hsm_config(&["dev-certs", &format!("{dev}/tls")])?;

    let services = stack.services();
    let (gateway, rest) = services.split_first().ok_or_else(|| Error::Step {
        step: "the table of services".into(),
        detail: "empty".into(),
    })?;
    // The gateway; wait for its READY line.
    let process = stack.start(gateway)?;
    let ready = process.ready().map(|r| r.line.clone()).unwrap_or_default();
    println!("gateway: {ready} (log: {dev}/signer.log)");
    started.processes.push(process);

    // The dev CA: a root for the gateway's dev-root key and an intermediate for dev-p256,
    // signed by the root, both through the gateway by the `ceremony` identity (the keys never
    // leave the HSMs). Retried while the HSMs join the rotation.
    let (root_pem, issuer_pem) = (format!("{dev}/root.pem"), format!("{dev}/issuer.pem"));
    let non_empty = |p: &str| std::fs::metadata(stack.root.join(p)).is_ok_and(|m| m.len() > 0);
    if !non_empty(&root_pem) || !non_empty(&issuer_pem) {
        for _ in 0..50 {
            let made = stack.run(
                "ca-frontend",
                "ca-frontend",
                &[
                    "ceremony",
                    "--gateway",
                    "https://127.0.0.1:50051",
                    "--root-key",
                    "dev-root",
                    "--intermediate-key",
                    "dev-p256",
                    "--root-out",
                    &root_pem,
                    "--intermediate-out",
                    &issuer_pem,
                ],
                Some("ceremony"),
            );
            if made.is_ok() || stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("CA:      root {root_pem}, intermediate {issuer_pem}");
    let read = |p: &str| std::fs::read(stack.root.join(p)).unwrap_or_default();
    let chain = [read(&issuer_pem), read(&root_pem)].concat();
    let chain_path = abs_dev.join("ca-chain.pem");
    std::fs::write(&chain_path, chain).map_err(|e| Error::Step {
        step: format!("writing {}", chain_path.display()),
        detail: e.to_string(),
    })?;

    print!(
        "{}",
        stack.run(
            "ocsp",
            "hsmgate-ocsp",
            &[
                "import",
                "--config",
                "ocsp/examples/dev.toml",
                "ocsp/examples/dev-certificates.txt"
            ],
            None,
        )?
    );
    // Every other service but the responder, which starts last on the terminal.
    let (responder, middle) = rest.split_last().ok_or_else(|| Error::Step {
        step: "the table of services".into(),
        detail: "no responder".into(),
    })?;
    let mut crl_url = String::new();
    for service in middle {
        started.processes.push(stack.start(service)?);
        if service.name == "crl-update" {
            crl_url = stack
                .run(
                    "ocsp",
                    "hsmgate-ocsp",
                    &[
                        "crl-urls",
                        "--config",
                        "ocsp/examples/dev.toml",
                        "--issuer",
                        "dev-ca",
                        "--serial",
                        "1003",
                    ],
                    None,
                )?
                .trim()
                .to_owned();
        }
    }
    print_guide(stack, &crl_url);
    started.processes.push(stack.start(responder)?);
    Ok(())
}

/// What to try, as run.sh always printed it.
fn print_guide(stack: &DevStack, crl_url: &str) {
    let dev = stack.dev.display();
    let softhsm_conf = stack.softhsm_conf();
    let softhsm_conf = softhsm_conf.display();
    let bench_tls = stack.tls_env_text("bench");
    println!(
        "audit:   {dev}/audit/ — check the chain with: target/release/signer audit verify {dev}/audit
bench:   env SOFTHSM2_CONF={softhsm_conf} {bench_tls} target/release/hsm-bench compare --config hsm-config/examples/dev.toml --key dev-bench-p256 --gateway https://127.0.0.1:50051
OCSP:    http://127.0.0.1:8080/ — try, once the pre-signer has run (a few seconds):
  openssl ocsp -issuer {dev}/issuer.pem -CAfile {dev}/root.pem -serial 0x1001 -url http://127.0.0.1:8080 -no_nonce
  openssl ocsp -issuer {dev}/issuer.pem -CAfile {dev}/root.pem -serial 0x1003 -url http://127.0.0.1:8080 -no_nonce
CRL:     {crl_url} lists revoked serial 1003 (all shards: http://127.0.0.1:8080/dev-ca.json;
         updater log {dev}/crl-update.log, metrics http://127.0.0.1:9468/metrics) — check with:
  curl -s {crl_url} | openssl crl -inform DER -CAfile {dev}/ca-chain.pem -noout -text
ACME:    http://127.0.0.1:4001/directory (log: {dev}/acme.log, metrics http://127.0.0.1:9466/metrics) — get a certificate with:
  certbot certonly --server http://127.0.0.1:4001/directory --standalone --http-01-port 5002 \\
    --config-dir {dev}/certbot --work-dir {dev}/certbot --logs-dir {dev}/certbot \\
    --agree-tos --register-unsafely-without-email -d www.example.test
  openssl verify -CAfile {dev}/root.pem -untrusted {dev}/issuer.pem {dev}/certbot/live/www.example.test/cert.pem
metrics: gateway :9464, responder :9465, ACME :9466, pre-signer :9467, CRL updater :9468
  (http://127.0.0.1:PORT/metrics; scrape config and alert rules: hsm-config/deploy/prometheus/)"
    );
}
