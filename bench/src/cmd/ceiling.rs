//! `hsm-bench ceiling`: the most signatures one gateway process moves when the HSMs cost
//! nothing, and the gateway's own CPU per signature.
//!
//! For each count of `--hsms` (default 2, 4, 8, 16) it provisions that many hsm-sim tokens
//! (`simsetup`, the same configuration `capacity` writes: plain text on loopback, **audit log
//! on**), gives every token a model with no rate limit — one unit, 1 ns per signature, stand-in
//! signatures: `C_Sign` returns at once with bytes of the right length — spawns the gateway and
//! drives it closed loop with `SignBatch` and then unary `Sign` (`--modes`), each for
//! `--duration` after `--warmup`. What limits the throughput is then the gateway itself (and
//! the load generator, which shares the machine: its CPU is in the table).
//!
//! The gateway's CPU comes from `/proc/<pid>/stat` (utime + stime, every thread of the
//! process including ones that exited) read at the start and end of the measured window;
//! divided by the signatures completed in the window it is the gateway's CPU per signature.
//! hsm-sim runs inside the gateway (it is the PKCS#11 module the workers call), so its small
//! stand-in cost is included, as a real HSM's client library would be.
//!
//! Targets (issue 16): `SignBatch` ≥ 100,000 sig/s with ≤ 10 µs of gateway CPU per signature;
//! unary `Sign` ≥ 25,000 RPC/s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use hsm_config::Config;
use serde::Serialize;

use crate::gateway;
use crate::grpc_load::{GrpcLoad, GrpcMode};
use crate::options::parse_duration;
use crate::procstat::{CpuProbe, process_ticks};
use crate::report::thousands;
use crate::simsetup::{self, SimGateway};
use crate::window::Window;
use crate::workload::Workload;

/// The model with no rate limit: one unit booked for 1 ns, so no signature ever waits for
/// the model or sleeps (the booked end has passed by the time it is checked).
pub const UNLIMITED_MODEL: &str = "* model units=1 rate=1000000000 dist=fixed signature=stand-in\n";

/// How long the gateway gets to put the modelled HSMs into rotation.
const KEY_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// `hsm-bench ceiling`.
#[derive(clap::Args, Debug, Clone)]
pub struct CeilingArgs {
    /// Counts of modelled HSMs to measure, comma-separated.
    #[arg(long, default_value = "2,4,8,16", value_delimiter = ',')]
    pub hsms: Vec<u32>,
    /// RPCs to drive, in order, comma-separated: `batch`, `sign`.
    #[arg(long, default_value = "batch,sign", value_delimiter = ',')]
    pub modes: Vec<String>,
    /// Gateway sessions (worker threads) per HSM.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub sessions: u32,
    /// The gateway's `batching.worker_chunk`: signatures per job handed to a worker.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub worker_chunk: u32,
    /// Signatures per `SignBatch` call.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
    /// `SignBatch` calls in flight.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_concurrency: u32,
    /// `Sign` calls in flight.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub sign_concurrency: u32,
    /// HTTP/2 connections to the gateway; the load's tasks are spread over them.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub channels: u32,
    /// Threads of the load generator's async runtime (it shares the machine with the gateway).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub client_threads: u32,
    /// Measured time of each phase.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Duration,
    /// Warm-up of each phase, not counted.
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub warmup: Duration,
    /// Working directory (one subdirectory per HSM count: tokens, configuration, control
    /// file, gateway log, audit log). It must be on a disk, not tmpfs, for the audit log's
    /// `fdatasync` to cost what it costs. Default: a new directory in the temp dir.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The `signer` binary. Default: `signer` in hsm-bench's own directory.
    #[arg(long, value_name = "PATH")]
    pub signer: Option<PathBuf>,
    /// The hsm-sim module. Default: `libhsm_sim.so` in hsm-bench's own directory.
    #[arg(long, value_name = "PATH")]
    pub sim: Option<PathBuf>,
    /// Write the table's rows and the gateway configurations to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// One row of the table.
#[derive(Debug, Serialize)]
pub struct CeilingRow {
    pub hsms: u32,
    pub mode: &'static str,
    pub load: String,
    pub signatures_per_s: f64,
    pub calls_per_s: f64,
    pub p99_us: f64,
    pub errors: u64,
    /// Gateway CPU in the window, cores (utime + stime of the whole process).
    pub gateway_cores: f64,
    pub gateway_us_per_signature: f64,
    pub gateway_us_per_call: f64,
    /// The load generator's cores (it shares the machine).
    pub bench_cores: Option<f64>,
    /// All CPUs' busy fraction.
    pub machine_busy: Option<f64>,
}

#[derive(Debug, Serialize)]
struct CeilingReport<'a> {
    command: Vec<String>,
    git: Option<String>,
    model: &'static str,
    rows: &'a [CeilingRow],
    gateway_configs: Vec<String>,
}

pub fn run(args: CeilingArgs) -> Result<()> {
    let sim = simsetup::sim_module(args.sim.as_ref())?;
    let signer = match &args.signer {
        Some(s) => s.clone(),
        None => gateway::default_signer()?,
    };
    let mut modes = Vec::new();
    for m in &args.modes {
        modes.push(match m.as_str() {
            "batch" => GrpcMode::SignBatch {
                concurrency: args.batch_concurrency as usize,
                batch: args.batch as usize,
            },
            "sign" => GrpcMode::Sign {
                concurrency: args.sign_concurrency as usize,
            },
            other => bail!("--modes: `{other}` is not `batch` or `sign`"),
        });
    }
    if args.hsms.iter().any(|&n| !(1..=16).contains(&n)) {
        bail!("--hsms: each count must be 1..=16");
    }
    simsetup::parse_models(UNLIMITED_MODEL)?;
    let base = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("hsm-bench-ceiling-{}", std::process::id()))
    });
    let ticks_per_s = 100.0;
    let mut rows = Vec::new();
    let mut configs = Vec::new();
    for &hsms in &args.hsms {
        let dir = base.join(format!("hsms-{hsms}"));
        let g = SimGateway {
            module: sim.clone(),
            hsms,
            sessions: args.sessions,
            worker_chunk: args.worker_chunk,
        };
        eprintln!("ceiling: {hsms} modelled HSM(s) in {}", dir.display());
        let setup = simsetup::prepare(&dir, &g)?;
        simsetup::write_control(&setup.control, UNLIMITED_MODEL)?;
        let config = Config::load(&setup.config)?;
        configs.push(std::fs::read_to_string(&setup.config).unwrap_or_default());
        let workload = Arc::new(Workload::new(&config, simsetup::KEY)?);
        let mut spawned = setup.spawn_gateway(&signer)?;
        let log = setup.gateway_log();
        let mut probe = CpuProbe::new();
        probe.watch("gateway", spawned.pid);
        let url = spawned.url();
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all();
        builder.worker_threads(args.client_threads as usize);
        let runtime = builder.build().context("cannot start the async runtime")?;
        let load = runtime
            .block_on(async {
                let mut client = crate::grpc_load::connect(&url).await?;
                let status =
                    gateway::wait_for_key(&mut client, &workload.key, KEY_READY_TIMEOUT).await?;
                if (status.hsms_available as usize) < status.hsms.len() {
                    bail!(
                        "only {}/{} HSMs in rotation",
                        status.hsms_available,
                        status.hsms.len()
                    );
                }
                GrpcLoad::connect(&url, args.channels as usize, workload.clone()).await
            })
            .with_context(|| format!("gateway log: {}", log.display()))?;
        for &mode in &modes {
            let window = Window::starting_now(args.warmup, args.duration);
            // The gateway's ticks at the window's edges, read by a thread of hsm-bench that
            // is not the load generator's.
            let pid = spawned.pid;
            let ticker = std::thread::spawn(move || {
                sleep_until(window.start);
                let before = process_ticks(pid);
                sleep_until(window.end);
                (before, process_ticks(pid))
            });
            let result = load.run_phase(&runtime, mode, None, window, &probe)?;
            let (before, after) = ticker
                .join()
                .map_err(|_| anyhow::anyhow!("the CPU sampling thread panicked"))?;
            let cores = match (before, after) {
                (Some(b), Some(a)) => a.saturating_sub(b) as f64 / ticks_per_s / result.seconds,
                _ => f64::NAN,
            };
            let sigs = result.signatures_per_s();
            let calls = result.tally.calls as f64 / result.seconds;
            let (name, describe) = match mode {
                GrpcMode::SignBatch { concurrency, batch } => {
                    ("SignBatch", format!("{concurrency} × {batch}"))
                }
                GrpcMode::Sign { concurrency } => ("Sign", format!("{concurrency} in flight")),
            };
            let cpu = result.cpu.as_ref();
            rows.push(CeilingRow {
                hsms,
                mode: name,
                load: format!("{describe}, {} ch", args.channels),
                signatures_per_s: sigs,
                calls_per_s: calls,
                // The histogram counts nanoseconds.
                p99_us: result.tally.latency.value_at_quantile(0.99) as f64 / 1e3,
                errors: result.tally.error_count(),
                gateway_cores: cores,
                gateway_us_per_signature: cores * 1e6 / sigs.max(1e-9),
                gateway_us_per_call: cores * 1e6 / calls.max(1e-9),
                bench_cores: cpu.and_then(|c| c.process("hsm-bench")).map(|p| p.cores),
                machine_busy: cpu.and_then(|c| c.machine_busy),
            });
            eprintln!("{}", row_text(rows.last().expect("just pushed")));
        }
        drop(load);
        drop(runtime);
        spawned.check_alive()?;
        spawned.stop();
    }
    println!("\n{}", table(&rows));
    println!("{}", targets(&rows));
    println!(
        "model: {} (no rate limit, stand-in signatures); audit log on; work directory {}",
        UNLIMITED_MODEL.trim(),
        base.display()
    );
    if let Some(path) = &args.json {
        let report = CeilingReport {
            command: std::env::args().collect(),
            git: std::process::Command::new("git")
                .args(["describe", "--always", "--dirty"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()),
            model: UNLIMITED_MODEL,
            rows: &rows,
            gateway_configs: configs,
        };
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn sleep_until(t: std::time::Instant) {
    let left = t.saturating_duration_since(std::time::Instant::now());
    std::thread::sleep(left);
}

const HEADER: &str = "| HSMs | RPC | load | sig/s | RPC/s | p99 | errors | gateway cores | gateway µs/sig | gateway µs/RPC | hsm-bench cores | machine busy |";

fn row_text(r: &CeilingRow) -> String {
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.1} | {} | {} |",
        r.hsms,
        r.mode,
        r.load,
        thousands(r.signatures_per_s),
        thousands(r.calls_per_s),
        crate::report::micros(r.p99_us),
        r.errors,
        r.gateway_cores,
        r.gateway_us_per_signature,
        r.gateway_us_per_call,
        r.bench_cores.map_or("-".into(), |c| format!("{c:.2}")),
        r.machine_busy
            .map_or("-".into(), |b| format!("{:.0} %", b * 100.0)),
    )
}

/// The table, markdown.
pub fn table(rows: &[CeilingRow]) -> String {
    let mut out =
        format!("{HEADER}\n|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        out.push_str(&row_text(r));
        out.push('\n');
    }
    out
}

/// The targets against the best row of each RPC.
pub fn targets(rows: &[CeilingRow]) -> String {
    let best = |mode: &str| {
        rows.iter()
            .filter(|r| r.mode == mode)
            .max_by(|a, b| a.signatures_per_s.total_cmp(&b.signatures_per_s))
    };
    let mut out = String::new();
    if let Some(b) = best("SignBatch") {
        let met = b.signatures_per_s >= 100_000.0 && b.gateway_us_per_signature <= 10.0;
        out.push_str(&format!(
            "target SignBatch >= 100,000 sig/s with <= 10 µs gateway CPU/sig: {} ({} sig/s, {:.2} µs/sig, {} HSMs)\n",
            if met { "MET" } else { "not met" },
            thousands(b.signatures_per_s),
            b.gateway_us_per_signature,
            b.hsms
        ));
    }
    if let Some(s) = best("Sign") {
        let met = s.calls_per_s >= 25_000.0;
        out.push_str(&format!(
            "target Sign >= 25,000 RPC/s: {} ({} RPC/s, {:.1} µs gateway CPU/RPC, {} HSMs)\n",
            if met { "MET" } else { "not met" },
            thousands(s.calls_per_s),
            s.gateway_us_per_call,
            s.hsms
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unlimited_model_never_waits() {
        let state = simsetup::parse_models(UNLIMITED_MODEL).expect("valid");
        let m = state.model_for("SIM-7").expect("applies to every token");
        assert_eq!(m.signature, hsm_sim::SignatureMode::StandIn);
        assert!(m.mean <= Duration::from_nanos(1), "{:?}", m.mean);
        assert!(m.rated_per_s() >= 1e9 * 0.99);
    }

    #[test]
    fn process_ticks_reads_this_process() {
        let t = process_ticks(std::process::id()).expect("own /proc/<pid>/stat");
        // Burn a little CPU: the count cannot go down.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(process_ticks(std::process::id()).expect("again") >= t);
    }

    #[test]
    fn the_table_names_what_met_its_target() {
        let row = |mode, sigs: f64, calls: f64, us: f64| CeilingRow {
            hsms: 2,
            mode,
            load: String::new(),
            signatures_per_s: sigs,
            calls_per_s: calls,
            p99_us: 1000.0,
            errors: 0,
            gateway_cores: 1.0,
            gateway_us_per_signature: us,
            gateway_us_per_call: us,
            bench_cores: None,
            machine_busy: None,
        };
        let rows = vec![
            row("SignBatch", 120_000.0, 500.0, 8.0),
            row("Sign", 20_000.0, 20_000.0, 50.0),
        ];
        let t = targets(&rows);
        assert!(
            t.contains("sig/s with <= 10 µs gateway CPU/sig: MET"),
            "{t}"
        );
        assert!(t.contains("25,000 RPC/s: not met"), "{t}");
        assert_eq!(table(&rows).lines().count(), 4);
    }
}
