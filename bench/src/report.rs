//! Results: the per-mode figures (median over rounds, latency percentiles, errors, CPU), the
//! ratios to raw PKCS#11 and the project's targets, rendered as a readable summary and as a
//! JSON document that also records everything needed to reproduce the run (parameters,
//! versions, machine).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::measure::{PhaseResult, Timeline, histogram};
use crate::procstat::{CpuReport, is_worker};
use crate::simsetup::SimModelReport;

mod capacity;

pub use capacity::CapacityReport;

/// A kind of phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Mode {
    /// In-process PKCS#11, no gateway.
    #[serde(rename = "raw")]
    Raw,
    /// Unary `Sign` RPCs.
    Sign,
    /// `SignBatch` RPCs.
    SignBatch,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Raw => "raw",
            Mode::Sign => "Sign",
            Mode::SignBatch => "SignBatch",
        }
    }

    fn latency_of(self) -> &'static str {
        match self {
            Mode::Raw => "one C_SignInit + C_Sign",
            Mode::Sign => "one Sign RPC",
            Mode::SignBatch => "one SignBatch RPC",
        }
    }
}

/// The whole run, as written to `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub tool: String,
    pub command_line: Vec<String>,
    pub started_unix: u64,
    pub finished_unix: u64,
    pub parameters: Parameters,
    /// The configuration file, as given and as an absolute path.
    pub config: String,
    pub config_absolute: Option<String>,
    pub key: KeyReport,
    /// HSMs the raw phase used, and the PKCS#11 modules it loaded.
    pub raw_hsms: Vec<String>,
    pub raw_modules: Vec<String>,
    pub gateway: Option<GatewayReport>,
    pub versions: Versions,
    pub machine: Machine,
    pub modes: Vec<ModeReport>,
    /// `Sign/raw`, `SignBatch/raw`: ratios of the median signatures per second.
    pub ratios: BTreeMap<String, f64>,
    pub targets: Vec<TargetCheck>,
    /// HSMs of the configuration behind hsm-sim, and their timing models. A model with
    /// `stand_in_signatures` means the HSMs returned fake signatures: the figures measure the
    /// gateway, not signing.
    pub sim_models: Vec<SimModelReport>,
    /// `raw --sweep`: throughput against concurrency.
    pub sweep: Option<SweepReport>,
    /// `capacity`: the modelled HSMs' scenario.
    pub capacity: Option<CapacityReport>,
}

/// `raw --sweep`: one point per thread count.
#[derive(Debug, Serialize)]
pub struct SweepReport {
    pub points: Vec<SweepPoint>,
    pub max_signatures_per_s: f64,
    /// The fewest threads reaching 95 % of the best throughput: where it stops growing.
    pub knee_threads: usize,
}

#[derive(Debug, Serialize)]
pub struct SweepPoint {
    pub threads: usize,
    pub median_signatures_per_s: f64,
    pub per_round: Vec<f64>,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
}

impl SweepReport {
    pub fn new(points: Vec<SweepPoint>) -> Self {
        let max = points
            .iter()
            .map(|p| p.median_signatures_per_s)
            .fold(0.0, f64::max);
        let knee = points
            .iter()
            .find(|p| p.median_signatures_per_s >= 0.95 * max)
            .map_or(0, |p| p.threads);
        Self {
            points,
            max_signatures_per_s: max,
            knee_threads: knee,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Parameters {
    pub order: Vec<Mode>,
    pub rounds: u32,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub raw_threads: Option<usize>,
    pub sign_concurrency: Option<usize>,
    pub batch_concurrency: Option<usize>,
    pub batch: Option<usize>,
    pub channels: Option<usize>,
    /// Worker threads of the load generator's async runtime.
    pub client_threads: Option<usize>,
    /// Open loop: target signatures per second (none: closed loop).
    pub rate: Option<f64>,
    pub max_in_flight: Option<usize>,
    /// Width of a timeline bucket.
    pub interval_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct KeyReport {
    pub name: String,
    pub label: String,
    pub algorithm: String,
    pub hsms: Vec<String>,
    pub input: String,
}

#[derive(Debug, Serialize)]
pub struct GatewayReport {
    pub url: String,
    pub spawned: bool,
    pub signer: Option<String>,
    pub signer_sha256: Option<String>,
    pub pid: Option<u32>,
    pub log: Option<String>,
    pub metrics: Option<String>,
    /// What `ListKeys` said when measuring started.
    pub key_status: Option<crate::gateway::KeyStatus>,
    /// How the spawned gateway ended.
    pub stopped: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Versions {
    pub hsm_bench: String,
    pub signer: Option<String>,
    /// `rustc --version` of the rustc on PATH when the run was made.
    pub rustc: Option<String>,
    /// `git describe --always --dirty` of the tree hsm-bench was run from.
    pub git: Option<String>,
    pub softhsm2: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: Option<String>,
    pub mem_total: Option<String>,
    pub kernel: Option<String>,
    pub hostname: Option<String>,
    pub softhsm2_conf: Option<String>,
}

/// One mode over all rounds.
#[derive(Debug, Serialize)]
pub struct ModeReport {
    pub mode: Mode,
    /// e.g. "64 in flight, 1 channel".
    pub load: String,
    pub median_signatures_per_s: f64,
    pub min_signatures_per_s: f64,
    pub max_signatures_per_s: f64,
    pub median_calls_per_s: f64,
    /// Over every round's calls together.
    pub latency: LatencyReport,
    pub errors: BTreeMap<String, u64>,
    pub error_samples: BTreeMap<String, String>,
    /// Mean over rounds.
    pub cpu: Option<CpuSummary>,
    pub rounds: Vec<RoundReport>,
}

#[derive(Debug, Serialize)]
pub struct RoundReport {
    pub round: u32,
    pub seconds: f64,
    pub signatures: u64,
    pub calls: u64,
    pub signatures_per_s: f64,
    pub latency: LatencyReport,
    pub errors: BTreeMap<String, u64>,
    pub error_samples: BTreeMap<String, String>,
    pub cpu: Option<CpuReport>,
    /// Signatures and errors per bucket of the window.
    pub timeline: Timeline,
}

/// Latency of one call, in microseconds.
#[derive(Debug, Serialize)]
pub struct LatencyReport {
    pub of: &'static str,
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl LatencyReport {
    pub(crate) fn new(of: &'static str, h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1e3;
        let q = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                us(h.value_at_quantile(q))
            }
        };
        Self {
            of,
            count: h.len(),
            mean_us: if h.is_empty() { 0.0 } else { h.mean() / 1e3 },
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if h.is_empty() { 0.0 } else { us(h.max()) },
        }
    }
}

/// CPU in cores, mean over a mode's rounds.
#[derive(Debug, Default, Serialize)]
pub struct CpuSummary {
    /// Fraction of the machine's CPU time that was busy (0..1).
    pub machine_busy: f64,
    pub bench: f64,
    pub gateway: Option<f64>,
    /// `<hsm>-w<i>` threads: PKCS#11 calls, so SoftHSM2's signing.
    pub gateway_workers: Option<f64>,
    /// `tokio-rt-worker` (and other `tokio-`) threads: gRPC, HTTP/2, protobuf, dispatch.
    pub gateway_runtime: Option<f64>,
    /// `sup-<hsm>` threads.
    pub gateway_supervisors: Option<f64>,
    pub gateway_other: Option<f64>,
    /// The busiest of hsm-bench's async runtime threads (the gRPC load generator), in cores:
    /// near 1.0 means the load generator itself may be the bottleneck.
    pub bench_runtime_per_thread: f64,
    /// Everything else on the machine (other processes, the kernel's own threads): busy
    /// cores minus hsm-bench minus the gateway. Not zero on a shared machine: check it.
    pub others: f64,
}

impl CpuSummary {
    fn mean(reports: &[&CpuReport], nproc: usize) -> Option<Self> {
        if reports.is_empty() {
            return None;
        }
        let n = reports.len() as f64;
        let mut s = CpuSummary::default();
        let mut gw = [0.0; 5];
        let mut has_gateway = false;
        for r in reports {
            s.machine_busy += r.machine_busy.unwrap_or(0.0) / n;
            if let Some(b) = r.process("hsm-bench") {
                s.bench += b.cores / n;
                s.bench_runtime_per_thread +=
                    b.busiest_thread_where(|t| t.starts_with("tokio-")) / n;
            }
            if let Some(g) = r.process("gateway").filter(|g| g.seen) {
                has_gateway = true;
                let workers = g.cores_where(is_worker);
                let runtime = g.cores_where(|t| t.starts_with("tokio-"));
                let sup = g.cores_where(|t| t.starts_with("sup-"));
                for (acc, v) in gw.iter_mut().zip([
                    g.cores,
                    workers,
                    runtime,
                    sup,
                    g.cores - workers - runtime - sup,
                ]) {
                    *acc += v / n;
                }
            }
        }
        if has_gateway {
            s.gateway = Some(gw[0]);
            s.gateway_workers = Some(gw[1]);
            s.gateway_runtime = Some(gw[2]);
            s.gateway_supervisors = Some(gw[3]);
            s.gateway_other = Some(gw[4].max(0.0));
        }
        s.others = (s.machine_busy * nproc as f64 - s.bench - s.gateway.unwrap_or(0.0)).max(0.0);
        Some(s)
    }
}

#[derive(Debug, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub measured: f64,
    pub met: bool,
}

impl ModeReport {
    pub fn new(mode: Mode, load: String, rounds: &[PhaseResult]) -> Self {
        let rates: Vec<f64> = rounds.iter().map(PhaseResult::signatures_per_s).collect();
        let calls: Vec<f64> = rounds
            .iter()
            .map(|r| r.tally.calls as f64 / r.seconds)
            .collect();
        let mut all = histogram();
        let mut errors = BTreeMap::new();
        let mut error_samples = BTreeMap::new();
        for r in rounds {
            let _ = all.add(&r.tally.latency);
            for (code, n) in &r.tally.errors {
                *errors.entry(code.clone()).or_insert(0) += n;
            }
            for (code, m) in &r.tally.error_samples {
                error_samples
                    .entry(code.clone())
                    .or_insert_with(|| m.clone());
            }
        }
        let cpu: Vec<&CpuReport> = rounds.iter().filter_map(|r| r.cpu.as_ref()).collect();
        Self {
            mode,
            load,
            median_signatures_per_s: median(&rates),
            min_signatures_per_s: rates.iter().copied().fold(f64::INFINITY, f64::min),
            max_signatures_per_s: rates.iter().copied().fold(0.0, f64::max),
            median_calls_per_s: median(&calls),
            latency: LatencyReport::new(mode.latency_of(), &all),
            errors,
            error_samples,
            cpu: CpuSummary::mean(
                &cpu,
                std::thread::available_parallelism().map_or(1, usize::from),
            ),
            rounds: rounds
                .iter()
                .zip(1..)
                .map(|(r, round)| RoundReport {
                    round,
                    seconds: r.seconds,
                    signatures: r.tally.signatures,
                    calls: r.tally.calls,
                    signatures_per_s: r.signatures_per_s(),
                    latency: LatencyReport::new(mode.latency_of(), &r.tally.latency),
                    errors: r.tally.errors.clone(),
                    error_samples: r.tally.error_samples.clone(),
                    cpu: r.cpu.clone(),
                    timeline: r.tally.timeline.clone(),
                })
                .collect(),
        }
    }
}

/// The median; the mean of the middle two for an even count; 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Report {
    /// Fills `ratios` and `targets` from `modes`.
    pub fn compute_ratios(&mut self) {
        let rate = |m: Mode| {
            self.modes
                .iter()
                .find(|r| r.mode == m)
                .map(|r| r.median_signatures_per_s)
        };
        let raw = rate(Mode::Raw).filter(|r| *r > 0.0);
        let sign = rate(Mode::Sign);
        let batch = rate(Mode::SignBatch);
        if let (Some(raw), Some(sign)) = (raw, sign) {
            self.ratios.insert("Sign/raw".into(), sign / raw);
            self.targets.push(TargetCheck {
                target: "Sign >= 0.5 x raw".into(),
                measured: sign / raw,
                met: sign / raw >= 0.5,
            });
        }
        if let (Some(raw), Some(batch)) = (raw, batch) {
            self.ratios.insert("SignBatch/raw".into(), batch / raw);
            self.targets.push(TargetCheck {
                target: "SignBatch >= 0.75 x raw".into(),
                measured: batch / raw,
                met: batch / raw >= 0.75,
            });
        }
        // An open loop runs at the rate it was given: no throughput target applies.
        if let Some(batch) = batch
            && self.key.algorithm == "ecdsa-p256"
            && self.parameters.rate.is_none()
        {
            self.targets.push(TargetCheck {
                target: "SignBatch >= 20,000 ECDSA P-256 signatures/s".into(),
                measured: batch,
                met: batch >= 20_000.0,
            });
        }
    }

    /// The human-readable summary.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let p = &self.parameters;
        let _ = writeln!(out, "\n{} — key {}", self.tool, self.key.input);
        for m in &self.sim_models {
            let _ = writeln!(
                out,
                "modelled HSM {} (token {}): {}",
                m.hsm,
                m.token_label,
                m.model
                    .as_deref()
                    .unwrap_or("no model: SoftHSM2's own speed")
            );
        }
        if self.sim_models.iter().any(|m| m.stand_in_signatures) {
            let _ = writeln!(
                out,
                "NOTE: STAND-IN SIGNATURES — the modelled HSMs returned fake signatures; these \
                 figures measure the gateway and the model, not signing."
            );
        }
        if !self.raw_hsms.is_empty() {
            let _ = writeln!(out, "raw HSMs:  {}", self.raw_hsms.join("; "));
        }
        if let Some(g) = &self.gateway {
            let how = if g.spawned {
                format!(
                    "spawned {} (pid {})",
                    g.signer.as_deref().unwrap_or("?"),
                    g.pid.unwrap_or(0)
                )
            } else {
                "running".to_owned()
            };
            let _ = writeln!(out, "gateway:   {} — {how}", g.url);
        }
        let order: Vec<&str> = p.order.iter().map(|m| m.name()).collect();
        let _ = writeln!(
            out,
            "{} round(s) of {} · {:.1} s measured + {:.1} s warm-up per phase · {} CPUs ({})\n",
            p.rounds,
            order.join(" → "),
            p.duration_s,
            p.warmup_s,
            self.machine.nproc,
            self.machine.cpu_model.as_deref().unwrap_or("unknown CPU")
        );
        if !self.modes.is_empty() {
            let _ = writeln!(
                out,
                "{:<10} {:<30} {:>12}  {:<26} {:>10} {:>10} {:>7} {:>7}",
                "mode", "load", "sig/s median", "per round", "p50", "p99", "errors", "vs raw"
            );
        }
        let raw = self
            .modes
            .iter()
            .find(|m| m.mode == Mode::Raw)
            .map(|m| m.median_signatures_per_s)
            .filter(|r| *r > 0.0);
        for m in &self.modes {
            let per_round: Vec<String> = m
                .rounds
                .iter()
                .map(|r| thousands(r.signatures_per_s))
                .collect();
            let ratio = raw.map_or("-".to_owned(), |raw| {
                format!("{:.2}", m.median_signatures_per_s / raw)
            });
            let _ = writeln!(
                out,
                "{:<10} {:<30} {:>12}  {:<26} {:>10} {:>10} {:>7} {:>7}",
                m.mode.name(),
                m.load,
                thousands(m.median_signatures_per_s),
                per_round.join(" "),
                micros(m.latency.p50_us),
                micros(m.latency.p99_us),
                m.errors.values().sum::<u64>(),
                ratio
            );
        }
        if !self.modes.is_empty() {
            let _ = writeln!(
                out,
                "latency is per call: raw = one C_SignInit + C_Sign; Sign = one RPC; SignBatch = \
                 one RPC of {} signatures",
                p.batch.unwrap_or(0)
            );
        }
        for m in &self.modes {
            for (code, n) in &m.errors {
                let sample = m.error_samples.get(code).map_or("", String::as_str);
                let _ = writeln!(
                    out,
                    "  {} errors: {code} × {n} (e.g. \"{sample}\")",
                    m.mode.name()
                );
            }
        }

        if self.modes.iter().any(|m| m.cpu.is_some()) {
            let _ = writeln!(
                out,
                "\nCPU in cores, mean over rounds (the machine has {}):",
                self.machine.nproc
            );
            let _ = writeln!(
                out,
                "{:<10} {:>8} {:>9} {:>8}   {:>8} {:>8} {:>8} {:>6}   {:>6}",
                "mode",
                "machine",
                "hsm-bench",
                "gateway",
                "workers",
                "runtime",
                "superv.",
                "other",
                "others"
            );
            let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
            for m in &self.modes {
                if let Some(c) = &m.cpu {
                    let _ = writeln!(
                        out,
                        "{:<10} {:>7.0}% {:>9.2} {:>8}   {:>8} {:>8} {:>8} {:>6}   {:>6.2}",
                        m.mode.name(),
                        c.machine_busy * 100.0,
                        c.bench,
                        opt(c.gateway),
                        opt(c.gateway_workers),
                        opt(c.gateway_runtime),
                        opt(c.gateway_supervisors),
                        opt(c.gateway_other),
                        c.others,
                    );
                }
            }
            let _ = writeln!(
                out,
                "gateway threads: workers = <hsm>-w<i> (PKCS#11 calls: the signing itself), \
                 runtime = tokio (gRPC, HTTP/2, protobuf), superv. = sup-<hsm>;\n\
                 others = every other process on the machine (should be ~0 for clean figures)"
            );
        }
        for m in &self.modes {
            if let Some(c) = m.cpu.as_ref().filter(|c| c.bench_runtime_per_thread > 0.85) {
                let _ = writeln!(
                    out,
                    "warning: in {}, a load generator thread was busy {:.0}% of the time: the \
                     load generator may be the bottleneck (try --client-threads N)",
                    m.mode.name(),
                    c.bench_runtime_per_thread * 100.0
                );
            }
        }
        if let Some(sweep) = &self.sweep {
            let _ = writeln!(out, "\nsweep (median over rounds):");
            let _ = writeln!(
                out,
                "{:>8} {:>12} {:>10} {:>10} {:>7}",
                "threads", "sig/s", "p50", "p99", "errors"
            );
            for p in &sweep.points {
                let _ = writeln!(
                    out,
                    "{:>8} {:>12} {:>10} {:>10} {:>7}",
                    p.threads,
                    thousands(p.median_signatures_per_s),
                    micros(p.p50_us),
                    micros(p.p99_us),
                    p.errors
                );
            }
            let _ = writeln!(
                out,
                "throughput stops growing at {} threads: {} sig/s, the first step within 95 % \
                 of the best ({} sig/s)",
                sweep.knee_threads,
                thousands(
                    sweep
                        .points
                        .iter()
                        .find(|p| p.threads == sweep.knee_threads)
                        .map_or(0.0, |p| p.median_signatures_per_s)
                ),
                thousands(sweep.max_signatures_per_s)
            );
        }
        if let Some(c) = &self.capacity {
            out.push_str(&c.summary());
        }
        if !self.targets.is_empty() {
            let _ = writeln!(out, "\ntargets:");
            for t in &self.targets {
                let shown = if t.measured > 100.0 {
                    format!("{}/s", thousands(t.measured))
                } else {
                    format!("{:.2}", t.measured)
                };
                let _ = writeln!(
                    out,
                    "  {:<46} {:>10}  {}",
                    t.target,
                    shown,
                    if t.met { "met" } else { "MISSED" }
                );
            }
        }
        out
    }
}

/// `31188.4` → `31,188`.
pub fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Microseconds, in the unit that reads best.
pub fn micros(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.1} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// Versions of what was measured and what measured it. Runs a few cheap commands.
pub fn versions(signer: Option<String>) -> Versions {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(ToOwned::to_owned));
    let git = exe_dir.and_then(|dir| {
        command_output(
            Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(["describe", "--always", "--dirty"]),
        )
    });
    Versions {
        hsm_bench: env!("CARGO_PKG_VERSION").to_owned(),
        signer,
        rustc: command_output(Command::new("rustc").arg("--version")),
        git,
        softhsm2: command_output(Command::new("softhsm2-util").arg("--version")),
    }
}

fn command_output(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// This machine, from `/proc`.
pub fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let field = |text: &Option<String>, name: &str| {
        text.as_ref().and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
    };
    let cpuinfo = read("/proc/cpuinfo");
    let meminfo = read("/proc/meminfo");
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, usize::from),
        cpu_model: field(&cpuinfo, "model name"),
        mem_total: field(&meminfo, "MemTotal"),
        kernel: read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()),
        hostname: read("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()),
        softhsm2_conf: std::env::var("SOFTHSM2_CONF").ok(),
    }
}

/// Now, in seconds since the Unix epoch: when a run started and finished.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(31188.4), "31,188");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(micros(57.24), "57.2 µs");
        assert_eq!(micros(12_345.0), "12.35 ms");
    }
}
