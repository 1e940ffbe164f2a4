//! The gateway under test: spawned by hsm-bench (the default) or already running.
//!
//! A spawned gateway is the `signer` binary beside hsm-bench (same target directory), run as
//! `signer --config FILE` with hsm-bench's environment (`SOFTHSM2_CONF` and all). Its stderr
//! (the log) goes to a file; its stdout is read until the line `READY grpc=ADDR metrics=ADDR`,
//! which gives the address actually bound (so `listen = "127.0.0.1:0"` works). It is sent
//! SIGTERM at the end (SIGKILL if it has not exited after its drain time), also when hsm-bench
//! fails half-way.
//!
//! Either way hsm-bench then waits until `ListKeys` says an HSM holding the key is in rotation.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use hsmgate_signer_api::v1::ListKeysRequest;
use hsmgate_signer_api::v1::signer_client::SignerClient;
use hsmgate_stack::{Log, Process};
use sha2::{Digest as _, Sha256};
use tonic::transport::Channel;

/// How long the spawned gateway may take to print READY.
const READY_TIMEOUT: Duration = hsmgate_stack::READY_TIMEOUT;
/// After SIGTERM, how long before SIGKILL (the gateway drains for up to `drain_ms`, 10 s by
/// default; nothing is in flight when hsm-bench stops it).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A `signer` process started by hsm-bench (through the stack kit's [`Process`]). Dropping it
/// stops it.
#[derive(Debug)]
pub struct SpawnedGateway {
    process: Option<Process>,
    pub pid: u32,
    pub signer: PathBuf,
    pub log: PathBuf,
    /// The gRPC address from the READY line.
    pub grpc: SocketAddr,
    /// The metrics address from the READY line, as printed.
    pub metrics: String,
    /// `signer --version`, if it answered.
    pub version: Option<String>,
    /// SHA-256 of the binary (it is rebuilt often; the version alone does not tell builds apart).
    pub sha256: Option<String>,
}

/// The default `signer` path: beside the running hsm-bench.
pub fn default_signer() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find hsm-bench's own path")?;
    Ok(exe.with_file_name("signer"))
}

/// The default log path of a spawned gateway.
pub fn default_log() -> PathBuf {
    std::env::temp_dir().join(format!("hsm-bench-signer-{}.log", std::process::id()))
}

impl SpawnedGateway {
    /// Starts `signer --config config` (with hsm-bench's environment plus `envs`) and waits
    /// for its READY line.
    pub fn spawn(
        signer: &Path,
        config: &Path,
        log: &Path,
        envs: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Self> {
        if !signer.is_file() {
            bail!(
                "no gateway binary at {} (build it: cargo build --release -p signer; or pass \
                 --signer PATH or --gateway URL)",
                signer.display()
            );
        }
        let version = Command::new(signer)
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        let mut command = Command::new(signer);
        command
            .arg("--config")
            .arg(config)
            .envs(envs.iter().copied());
        let log_tail_of = |log: &Path| log_tail(log);
        let process =
            Process::spawn_ready("signer", command, Log::File(log.to_owned()), READY_TIMEOUT)
                .map_err(|e| match e {
                    hsmgate_stack::Error::NotReady { reason, exit, .. } => anyhow!(
                        "the gateway did not become ready: {reason} (exit code {exit:?}){}",
                        log_tail_of(log)
                    ),
                    other => anyhow!("cannot start {}: {other}", signer.display()),
                })?;
        let line = process.ready().map(|r| r.line.clone()).unwrap_or_default();
        let (grpc, metrics) = parse_ready(&line)?;
        Ok(Self {
            pid: process.pid(),
            process: Some(process),
            signer: signer.to_owned(),
            log: log.to_owned(),
            grpc,
            metrics,
            version,
            sha256: std::fs::read(signer)
                .ok()
                .map(|bytes| hex::encode(Sha256::digest(&bytes))),
        })
    }

    /// The URL to reach the gRPC listener (loopback if it listens on every address).
    pub fn url(&self) -> String {
        let mut addr = self.grpc;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                [127, 0, 0, 1].into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        format!("http://{addr}")
    }

    /// An error if the gateway has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        let Some(process) = self.process.as_mut() else {
            bail!("the gateway was stopped");
        };
        if let Some(status) = process.try_exited() {
            self.process = None;
            bail!(
                "the gateway exited during the run ({status}){}",
                self.log_tail()
            );
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `STOP_TIMEOUT`. Returns how it ended.
    pub fn stop(&mut self) -> String {
        match self.process.take() {
            Some(mut process) => process.stop(STOP_TIMEOUT),
            None => "not running".to_owned(),
        }
    }

    /// The end of the gateway's log, as a suffix for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

/// The end of the log at `path`, as a suffix for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n  ");
    if tail.is_empty() {
        format!("; its log {} is empty", path.display())
    } else {
        format!("; end of its log {}:\n  {tail}", path.display())
    }
}

impl Drop for SpawnedGateway {
    fn drop(&mut self) {
        if self.process.is_some() {
            self.stop();
        }
    }
}

/// Parses `READY grpc=ADDR metrics=ADDR`.
pub fn parse_ready(line: &str) -> Result<(SocketAddr, String)> {
    let mut grpc = None;
    let mut metrics = String::new();
    for word in line.split_whitespace().skip(1) {
        if let Some(a) = word.strip_prefix("grpc=") {
            grpc = Some(
                a.parse::<SocketAddr>()
                    .with_context(|| format!("bad gRPC address in `{line}`"))?,
            );
        } else if let Some(m) = word.strip_prefix("metrics=") {
            metrics = m.to_owned();
        }
    }
    let grpc = grpc.ok_or_else(|| anyhow!("no grpc= in the gateway's `{line}`"))?;
    Ok((grpc, metrics))
}

/// What `ListKeys` said about the key when the gateway was found ready.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KeyStatus {
    pub hsms: Vec<String>,
    pub hsms_available: u32,
    pub waited_s: f64,
}

/// Polls `ListKeys` until an HSM holding `key` is in rotation (an error after `timeout`);
/// then up to `ALL_HSMS_GRACE` more for the others, so that the gateway starts measuring with
/// the same HSMs as the raw phase whenever it can.
pub async fn wait_for_key(
    client: &mut SignerClient<Channel>,
    key: &str,
    timeout: Duration,
) -> Result<KeyStatus> {
    const ALL_HSMS_GRACE: Duration = Duration::from_secs(5);
    let started = Instant::now();
    let mut first_available: Option<Instant> = None;
    let mut last: Option<KeyStatus> = None;
    let mut last_error = String::new();
    loop {
        match client.list_keys(ListKeysRequest {}).await {
            Ok(response) => {
                let keys = response.into_inner().keys;
                let Some(info) = keys.into_iter().find(|k| k.name == key) else {
                    bail!("the gateway does not know key `{key}`");
                };
                let status = KeyStatus {
                    hsms_available: info.hsms_available,
                    waited_s: started.elapsed().as_secs_f64(),
                    hsms: info.hsms,
                };
                if status.hsms_available as usize >= status.hsms.len() {
                    return Ok(status);
                }
                if status.hsms_available > 0 {
                    let since = *first_available.get_or_insert_with(Instant::now);
                    if since.elapsed() >= ALL_HSMS_GRACE {
                        return Ok(status);
                    }
                }
                last = Some(status);
            }
            Err(status) => last_error = format!("{:?}: {}", status.code(), status.message()),
        }
        if first_available.is_none() && started.elapsed() >= timeout {
            match last {
                Some(s) => bail!(
                    "no HSM holding `{key}` came into rotation within {} s (HSMs: {})",
                    timeout.as_secs(),
                    s.hsms.join(", ")
                ),
                None => bail!(
                    "ListKeys kept failing for {} s: {last_error}",
                    timeout.as_secs()
                ),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_parses() {
        let (grpc, metrics) =
            parse_ready("READY grpc=127.0.0.1:41234 metrics=127.0.0.1:9464").expect("valid");
        assert_eq!(grpc, "127.0.0.1:41234".parse().expect("addr"));
        assert_eq!(metrics, "127.0.0.1:9464");
        let (grpc, metrics) = parse_ready("READY grpc=[::]:50051 metrics=none").expect("valid");
        assert_eq!(grpc.port(), 50051);
        assert_eq!(metrics, "none");
        assert!(parse_ready("READY metrics=none").is_err());
    }
}
