//! `hsmgate-stack up`: the development stack of this checkout, as `hsm-config/dev/run.sh`
//! describes it (provisioned dev HSMs, the gateway, the dev CA, the OCSP pre-signer, CRL
//! updater and responder, the ACME frontend and its validation perspectives), until Ctrl-C or
//! until one of them exits. The steps and the table of services are [`DevStack`]'s.
//!
//! Scripts run a stack of their own with it: `hsmgate-stack up --dir D --ports ephemeral
//! --env-file D/stack.env [--set ocsp.…=…]` in the background, then `. D/stack.env` once the
//! file exists (`bench/stack/stack.sh` does both).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use hsmgate_stack::{
    ConfigFile, DevStack, Error, MultiStack, Override, Ports, StackInfo, StartedStack,
};

#[derive(Debug, Parser)]
#[command(about = "hsmgate's development stack")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Provisions and starts a stack until Ctrl-C, SIGTERM, or one of its processes exits:
    /// by default the dev stack (target/dev, the example configs' ports, the responder on the
    /// terminal); with --dir, a stack of its own there, every log in a file.
    Up {
        /// The workspace root (default: the checkout this binary was built from).
        #[arg(long)]
        root: Option<PathBuf>,
        /// The stack's directory (tokens, certificates, configs, databases, logs).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// `dev`: the example configs' ports; `ephemeral`: free ports, so that it runs beside
        /// the dev stack and other stacks.
        #[arg(long, value_enum, default_value_t = PortsChoice::Dev)]
        ports: PortsChoice,
        /// Once every service is READY, writes the stack's addresses, files and process ids
        /// here as `STACK_*='…'` lines for `. FILE` (written whole, by a rename).
        #[arg(long)]
        env_file: Option<PathBuf>,
        /// Changes one field of a written config: FILE.PATH=VALUE, FILE one of gateway, ocsp,
        /// acme, perspective; PATH dotted (a number indexes an array); VALUE a TOML value.
        /// E.g. `--set ocsp.issuers.0.crl.revocation_delay_secs=3`. Repeatable.
        #[arg(long = "set", value_name = "FILE.PATH=VALUE")]
        overrides: Vec<Override>,
        /// Removes an optional field or table of a written config (FILE.PATH). Repeatable.
        #[arg(long = "unset", value_name = "FILE.PATH", value_parser = Override::unset)]
        unsets: Vec<Override>,
        /// The ACME frontend serves HTTPS with this certificate (PEM; with --acme-key).
        #[arg(long, requires = "acme_key")]
        acme_cert: Option<PathBuf>,
        /// The key of --acme-cert (PEM).
        #[arg(long, requires = "acme_cert")]
        acme_key: Option<PathBuf>,
    },
    /// The multi-instance deployment (issue 19) in DIR on ephemeral ports: four HSMs in two
    /// datacenters, each behind its own p11-kit server; two gateways; two ACME frontends on
    /// PostgreSQL; a pre-signer, two CRL updaters and two responders on a Redis Cluster of
    /// three masters and three replicas. Until Ctrl-C, SIGTERM, or one process exits.
    Multi {
        #[arg(long)]
        root: Option<PathBuf>,
        #[arg(long)]
        dir: PathBuf,
        /// As for `up`: every address, file and process id, once all are READY.
        #[arg(long)]
        env_file: Option<PathBuf>,
    },
    /// Derives a config from another: loads FROM as a config of kind KIND (gateway, ocsp, acme,
    /// perspective), applies the --set changes (written KIND.PATH=VALUE), checks it and writes
    /// TO. Relative paths are kept as written (a stack's configs hold absolute paths).
    Config {
        kind: String,
        from: PathBuf,
        to: PathBuf,
        #[arg(long = "set", value_name = "KIND.PATH=VALUE")]
        overrides: Vec<Override>,
        /// Removes an optional field or table (KIND.PATH), after the --set changes. Repeatable.
        #[arg(long = "unset", value_name = "KIND.PATH", value_parser = Override::unset)]
        unsets: Vec<Override>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PortsChoice {
    Dev,
    Ephemeral,
}

fn main() -> std::process::ExitCode {
    let (root, dir, ports, env_file, overrides, acme_tls) = match Cli::parse().command {
        Cmd::Up {
            root,
            dir,
            ports,
            env_file,
            overrides,
            unsets,
            acme_cert,
            acme_key,
        } => (
            root,
            dir,
            ports,
            env_file,
            [overrides, unsets].concat(),
            acme_cert.zip(acme_key),
        ),
        Cmd::Config {
            kind,
            from,
            to,
            overrides,
            unsets,
        } => return config(&kind, &from, &to, &[overrides, unsets].concat()),
        Cmd::Multi {
            root,
            dir,
            env_file,
        } => return multi(root, &dir, env_file.as_deref()),
    };
    let root = root.unwrap_or_else(hsmgate_stack::workspace_root);
    let ports = match ports {
        PortsChoice::Dev => Ok(Ports::dev()),
        PortsChoice::Ephemeral => Ports::ephemeral(),
    };
    let mut stack = match (dir, ports) {
        (_, Err(e)) => {
            eprintln!("hsmgate-stack: {e}");
            return std::process::ExitCode::FAILURE;
        }
        (None, Ok(ports)) => DevStack {
            ports,
            ..DevStack::new(&root)
        },
        (Some(dir), Ok(ports)) => DevStack::in_dir(&root, &dir, ports),
    };
    stack.overrides = overrides;
    stack.acme_tls = acme_tls;
    run_until_stopped(
        |started, stop| {
            let info = stack.up(started, stop, |info| print_guide(&stack, info))?;
            match &env_file {
                Some(path) => write_env_file(path.as_path(), &info),
                None => Ok(()),
            }
        },
        |_, _, _| false,
    )
}

/// `hsmgate-stack multi`.
fn multi(root: Option<PathBuf>, dir: &Path, env_file: Option<&Path>) -> std::process::ExitCode {
    let root = root.unwrap_or_else(hsmgate_stack::workspace_root);
    let stack = match MultiStack::new(&root, dir) {
        Ok(stack) => stack,
        Err(e) => {
            eprintln!("hsmgate-stack: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = run_until_stopped(
        |started, stop| {
            let info = stack.up(started, stop)?;
            env_file.map_or(Ok(()), |path| write_env_file(path, &info))?;
            Ok(info)
        },
        // Supervised: a process that exits (a drill killed it) is started again, as systemd's
        // `Restart=always` would, and the env file gets its new pid.
        |name, started, info| {
            std::thread::sleep(Duration::from_millis(500));
            match stack.restart(name) {
                Ok((process, pid_var)) => {
                    eprintln!("hsmgate-stack: {name} restarted (pid {})", process.pid());
                    info.set(&pid_var, process.pid());
                    if let Some(slot) = started.processes.iter_mut().find(|p| p.name() == name) {
                        *slot = process;
                    }
                    if let Some(path) = env_file
                        && let Err(e) = write_env_file(path, info)
                    {
                        eprintln!("hsmgate-stack: {e}");
                    }
                    true
                }
                Err(e) => {
                    eprintln!("hsmgate-stack: cannot restart {name}: {e}");
                    false
                }
            }
        },
    );
    if let Err(e) = stack.drop_schema() {
        eprintln!("hsmgate-stack: {e}");
    }
    code
}

/// Ctrl-C and SIGTERM only set a flag. `start` brings processes up into the stack; it then runs
/// until the flag is set, or until a process exits and `on_exit` (its name, the stack, what
/// `start` returned) says not to go on; then every process is stopped, in order.
fn run_until_stopped<S>(
    start: impl FnOnce(&mut StartedStack, &AtomicBool) -> Result<S, Error>,
    mut on_exit: impl FnMut(&str, &mut StartedStack, &mut S) -> bool,
) -> std::process::ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    if let Err(e) = watch_signals(stop.clone()) {
        eprintln!("hsmgate-stack: cannot watch signals: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let mut started = StartedStack::default();
    let code = match start(&mut started, &stop) {
        Ok(mut state) => {
            while let Some((name, status)) = started.wait_any(|| stop.load(Ordering::Relaxed)) {
                eprintln!("hsmgate-stack: {name} exited ({status})");
                if !on_exit(&name, &mut started, &mut state) {
                    eprintln!("hsmgate-stack: stopping the others");
                    break;
                }
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hsmgate-stack: {e}");
            std::process::ExitCode::FAILURE
        }
    };
    started.stop_all();
    code
}

/// `hsmgate-stack config`.
fn config(kind: &str, from: &Path, to: &Path, overrides: &[Override]) -> std::process::ExitCode {
    let Some(file) = ConfigFile::ALL.into_iter().find(|f| f.name() == kind) else {
        eprintln!("hsmgate-stack config: KIND is one of gateway, ocsp, acme, perspective");
        return std::process::ExitCode::FAILURE;
    };
    match hsmgate_stack::rewrite_config(file, from, to, overrides) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hsmgate-stack config: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Writes `info` to `path` whole: a temporary file beside it, then a rename, so that a script
/// polling for the file never reads half of it.
fn write_env_file(path: &Path, info: &StackInfo) -> Result<(), Error> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    std::fs::write(&partial, info.env_text()).map_err(|e| Error::Step {
        step: format!("writing {}", partial.display()),
        detail: e.to_string(),
    })?;
    std::fs::rename(&partial, path).map_err(|e| Error::Step {
        step: format!("renaming {} to {}", partial.display(), path.display()),
        detail: e.to_string(),
    })
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

/// What to try, as run.sh always printed it, with this stack's files and ports.
fn print_guide(stack: &DevStack, info: &StackInfo) {
    let dev = stack.dir.display();
    let get = |name: &str| info.get(name).unwrap_or("?").to_owned();
    let (softhsm_conf, crl_url) = (get("SOFTHSM2_CONF"), get("DEV_CRL_URL"));
    let (ocsp, acme) = (get("OCSP_URL"), get("ACME_DIRECTORY"));
    let (gateway, gateway_config) = (get("GATEWAY_URL"), stack.config(ConfigFile::Gateway));
    let gateway_config = gateway_config.display();
    let bench_tls = stack.tls_env_text("bench");
    let ports = &stack.ports;
    let http01 = ports.http01;
    println!(
        "audit:   {dev}/audit/ — check the chain with: target/release/signer audit verify {dev}/audit
bench:   env SOFTHSM2_CONF={softhsm_conf} {bench_tls} target/release/hsm-bench compare --config {gateway_config} --key dev-bench-p256 --gateway {gateway}
OCSP:    {ocsp}/ — try, once the pre-signer has run (a few seconds):
  openssl ocsp -issuer {dev}/issuer.pem -CAfile {dev}/root.pem -serial 0x1001 -url {ocsp} -no_nonce
  openssl ocsp -issuer {dev}/issuer.pem -CAfile {dev}/root.pem -serial 0x1003 -url {ocsp} -no_nonce
CRL:     {crl_url} lists revoked serial 1003 (all shards: {ocsp}/dev-ca.json;
         updater log {dev}/crl-update.log, metrics http://127.0.0.1:{crl_metrics}/metrics) — check with:
  curl -s {crl_url} | openssl crl -inform DER -CAfile {dev}/ca-chain.pem -noout -text
ACME:    {acme} (log: {dev}/acme.log, metrics http://127.0.0.1:{acme_metrics}/metrics) — get a certificate with:
  certbot certonly --server {acme} --standalone --http-01-port {http01} \\
    --config-dir {dev}/certbot --work-dir {dev}/certbot --logs-dir {dev}/certbot \\
    --agree-tos --register-unsafely-without-email -d www.example.test
  openssl verify -CAfile {dev}/root.pem -untrusted {dev}/issuer.pem {dev}/certbot/live/www.example.test/cert.pem
metrics: gateway :{gm}, responder :{rm}, ACME :{acme_metrics}, pre-signer :{pm}, CRL updater :{crl_metrics}
  (http://127.0.0.1:PORT/metrics; scrape config and alert rules: hsm-config/deploy/prometheus/)",
        crl_metrics = ports.crl_metrics,
        acme_metrics = ports.acme_metrics,
        gm = ports.gateway_metrics,
        rm = ports.responder_metrics,
        pm = ports.presign_metrics,
    );
}
