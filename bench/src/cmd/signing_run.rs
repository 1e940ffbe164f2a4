//! The run: sets up the raw PKCS#11 load and/or the gateway (spawned or given) and its load,
//! then runs the requested modes in alternation — round 1: raw, Sign, SignBatch; round 2:
//! raw, Sign, SignBatch; … — so that every mode sees the same machine conditions, and builds
//! the report. `hsm-bench compare` runs all three modes, `hsm-bench raw` and `hsm-bench sign`
//! a subset, through the same code.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use hsm_config::Config;

use crate::gateway::{self, KeyStatus, SpawnedGateway};
use crate::grpc_load::{self, GrpcLoad, GrpcMode, OpenLoop};
use crate::measure::PhaseResult;
use crate::options::{
    CompareArgs, GatewayArgs, GrpcLoadArgs, RawArgs, SignArgs, SignModes, TargetArgs, TimingArgs,
};
use crate::procstat::CpuProbe;
use crate::raw::RawBench;
use crate::report::{
    self, GatewayReport, KeyReport, Mode, ModeReport, Parameters, Report, SweepPoint, SweepReport,
};
use crate::window::Window;
use crate::workload::Workload;
use crate::{plot, progress, simsetup};

/// How long the gateway gets to put an HSM holding the key into rotation.
const KEY_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// What to run.
#[derive(Debug)]
pub struct Plan {
    pub tool: &'static str,
    modes: Vec<Mode>,
    target: TargetArgs,
    timing: TimingArgs,
    raw_threads: usize,
    load: Option<GrpcLoadArgs>,
    gateway: Option<GatewayArgs>,
    /// `raw --sweep`: the thread counts to step through.
    sweep: Option<Vec<usize>>,
}

/// 1, 2, 4, … up to `max` (and `max` itself).
pub fn sweep_steps(max: usize) -> Vec<usize> {
    let mut steps = Vec::new();
    let mut n = 1;
    while n < max {
        steps.push(n);
        n *= 2;
    }
    steps.push(max.max(1));
    steps
}

impl Plan {
    pub fn compare(a: CompareArgs) -> Self {
        Self {
            tool: "hsm-bench compare",
            modes: vec![Mode::Raw, Mode::Sign, Mode::SignBatch],
            target: a.target,
            timing: a.timing,
            raw_threads: a.raw.threads as usize,
            load: Some(a.load),
            gateway: Some(a.gateway),
            sweep: None,
        }
    }

    pub fn raw(a: RawArgs) -> Self {
        let sweep = a.sweep.then(|| sweep_steps(a.max_threads as usize));
        Self {
            tool: if a.sweep {
                "hsm-bench raw --sweep"
            } else {
                "hsm-bench raw"
            },
            modes: vec![Mode::Raw],
            target: a.target,
            timing: a.timing,
            raw_threads: if a.sweep {
                a.max_threads as usize
            } else {
                a.raw.threads as usize
            },
            load: None,
            gateway: None,
            sweep,
        }
    }

    pub fn sign(a: SignArgs) -> Self {
        let modes = match a.mode {
            SignModes::Sign => vec![Mode::Sign],
            SignModes::Batch => vec![Mode::SignBatch],
            SignModes::Both => vec![Mode::Sign, Mode::SignBatch],
        };
        Self {
            tool: "hsm-bench sign",
            modes,
            target: a.target,
            timing: a.timing,
            raw_threads: 0,
            load: Some(a.load),
            gateway: Some(a.gateway),
            sweep: None,
        }
    }

    /// `hsm-bench capacity`'s single phase, described like a `sign` run.
    pub fn capacity(
        target: TargetArgs,
        mode: Mode,
        timing: TimingArgs,
        load: GrpcLoadArgs,
        gateway: GatewayArgs,
    ) -> Self {
        Self {
            tool: "hsm-bench capacity",
            modes: vec![mode],
            target,
            timing,
            raw_threads: 0,
            load: Some(load),
            gateway: Some(gateway),
            sweep: None,
        }
    }

    fn uses_gateway(&self) -> bool {
        self.modes.iter().any(|m| *m != Mode::Raw)
    }
}

/// The gateway side of a run.
struct GatewaySide {
    runtime: tokio::runtime::Runtime,
    load: GrpcLoad,
    url: String,
    spawned: Option<SpawnedGateway>,
    key_status: KeyStatus,
}

pub fn run(plan: Plan) -> Result<()> {
    let started_unix = report::unix_now();
    let config_path = &plan.target.config;
    let config = Config::load(config_path)?;
    let workload = Arc::new(Workload::new(&config, &plan.target.key)?);
    let mut probe = CpuProbe::new();

    // Raw first: loading modules sets their environment variables, which must happen while
    // hsm-bench has no other thread (no runtime, no gateway stdout reader yet).
    let mut raw = if plan.modes.contains(&Mode::Raw) {
        let bench = RawBench::open(&config, &workload, plan.raw_threads)?;
        eprintln!(
            "raw: {} thread(s) logged in on {}",
            bench.threads(),
            bench.hsms.join("; ")
        );
        Some(bench)
    } else {
        None
    };

    if let (Some(steps), Some(bench)) = (&plan.sweep, raw.as_mut()) {
        let sweep = run_sweep(&plan, steps, bench, &probe)?;
        let hsms = bench.hsms.clone();
        let modules = bench.modules.clone();
        drop(raw);
        let mut report = base_report(&plan, &config, &workload, started_unix, hsms, modules);
        report.sweep = Some(sweep);
        return finish(&report, &plan.timing);
    }

    let mut gw = if plan.uses_gateway() {
        Some(start_gateway(&plan, &workload, &mut probe)?)
    } else {
        None
    };

    let load_args = plan.load.clone();
    let grpc_mode = |mode: Mode| -> Option<GrpcMode> {
        let l = load_args.as_ref()?;
        match mode {
            Mode::Raw => None,
            Mode::Sign => Some(GrpcMode::Sign {
                concurrency: l.sign_concurrency as usize,
            }),
            Mode::SignBatch => Some(GrpcMode::SignBatch {
                concurrency: l.batch_concurrency as usize,
                batch: l.batch as usize,
            }),
        }
    };

    let open = load_args.as_ref().and_then(|l| {
        l.rate.map(|rate| OpenLoop {
            rate,
            max_in_flight: l.max_in_flight as usize,
        })
    });
    let timing = &plan.timing;
    let mut results: Vec<Vec<PhaseResult>> = plan.modes.iter().map(|_| Vec::new()).collect();
    for round in 1..=timing.rounds {
        for (m, &mode) in plan.modes.iter().enumerate() {
            let window =
                Window::starting_now(timing.warmup, timing.duration).with_bucket(timing.interval);
            let _bar = progress::phase(
                &format!("round {round}/{} {}", timing.rounds, mode.name()),
                &window,
            );
            let result = match (mode, raw.as_mut(), gw.as_mut(), grpc_mode(mode)) {
                (Mode::Raw, Some(raw), _, _) => raw.run_phase(window, &probe)?,
                (_, _, Some(g), Some(grpc)) => {
                    let r = g.load.run_phase(&g.runtime, grpc, open, window, &probe)?;
                    if let Some(s) = g.spawned.as_mut() {
                        s.check_alive()?;
                    }
                    r
                }
                _ => bail!("internal: no load generator for mode {}", mode.name()),
            };
            drop(_bar);
            let errors = result.tally.error_count();
            eprintln!(
                "round {round}/{}  {:<10} {:>8} sig/s  p50 {:>9}  p99 {:>9}{}",
                timing.rounds,
                mode.name(),
                report::thousands(result.signatures_per_s()),
                report::micros(quantile_us(&result, 0.5)),
                report::micros(quantile_us(&result, 0.99)),
                if errors > 0 {
                    format!("  errors {errors}: {:?}", result.tally.errors)
                } else {
                    String::new()
                }
            );
            results[m].push(result);
        }
    }

    // Stop the gateway before reporting, so that how it ended is in the report.
    let stopped = gw
        .as_mut()
        .and_then(|g| g.spawned.as_mut())
        .map(SpawnedGateway::stop);
    let raw_hsms = raw.as_ref().map(|r| r.hsms.clone()).unwrap_or_default();
    let raw_modules = raw.as_ref().map(|r| r.modules.clone()).unwrap_or_default();
    drop(raw);

    let load = plan.load.as_ref();
    let gateway_args = plan.gateway.as_ref();
    let channels = gateway_args.map_or(1, |g| g.channels as usize);
    let ch = if channels == 1 {
        "1 channel".to_owned()
    } else {
        format!("{channels} channels")
    };
    let modes = plan
        .modes
        .iter()
        .zip(&results)
        .map(|(&mode, rounds)| {
            let describe = match mode {
                Mode::Raw => format!("{} threads", plan.raw_threads),
                Mode::Sign | Mode::SignBatch if open.is_some() => format!(
                    "open loop {}/s{}, {ch}",
                    report::thousands(open.map_or(0.0, |o| o.rate)),
                    if mode == Mode::SignBatch {
                        format!(" in batches of {}", load.map_or(0, |l| l.batch))
                    } else {
                        String::new()
                    }
                ),
                Mode::Sign => format!("{} in flight, {ch}", load.map_or(0, |l| l.sign_concurrency)),
                Mode::SignBatch => format!(
                    "{} × {} in flight, {ch}",
                    load.map_or(0, |l| l.batch_concurrency),
                    load.map_or(0, |l| l.batch)
                ),
            };
            ModeReport::new(mode, describe, rounds)
        })
        .collect();

    let spawned = gw.as_ref().and_then(|g| g.spawned.as_ref());
    let mut report = base_report(
        &plan,
        &config,
        &workload,
        started_unix,
        raw_hsms,
        raw_modules,
    );
    report.modes = modes;
    report.gateway = gw.as_ref().map(|g| GatewayReport {
        url: g.url.clone(),
        spawned: g.spawned.is_some(),
        signer: spawned.map(|s| s.signer.display().to_string()),
        signer_sha256: spawned.and_then(|s| s.sha256.clone()),
        pid: spawned.map(|s| s.pid),
        log: spawned.map(|s| s.log.display().to_string()),
        metrics: spawned.map(|s| s.metrics.clone()),
        key_status: Some(g.key_status.clone()),
        stopped: stopped.clone(),
    });
    report.versions = report::versions(spawned.and_then(|s| s.version.clone()));
    report.compute_ratios();
    finish(&report, timing)
}

/// The report's common part: what was run, on what, by whom; no results yet.
pub fn base_report(
    plan: &Plan,
    config: &Config,
    workload: &Workload,
    started_unix: u64,
    raw_hsms: Vec<String>,
    raw_modules: Vec<String>,
) -> Report {
    let timing = &plan.timing;
    let load = plan.load.as_ref();
    let gateway_args = plan.gateway.as_ref();
    let config_path = &plan.target.config;
    Report {
        tool: plan.tool.to_owned(),
        command_line: std::env::args().collect(),
        started_unix,
        finished_unix: report::unix_now(),
        parameters: Parameters {
            order: plan.modes.clone(),
            rounds: timing.rounds,
            duration_s: timing.duration.as_secs_f64(),
            warmup_s: timing.warmup.as_secs_f64(),
            raw_threads: raw_hsms.first().map(|_| plan.raw_threads),
            sign_concurrency: load.map(|l| l.sign_concurrency as usize),
            batch_concurrency: load.map(|l| l.batch_concurrency as usize),
            batch: load.map(|l| l.batch as usize),
            channels: gateway_args.map(|g| g.channels as usize),
            client_threads: gateway_args.map(|g| g.client_threads as usize),
            rate: load.and_then(|l| l.rate),
            max_in_flight: load.and_then(|l| l.rate.map(|_| l.max_in_flight as usize)),
            interval_ms: timing.interval.as_secs_f64() * 1e3,
        },
        config: config_path.display().to_string(),
        config_absolute: std::fs::canonicalize(config_path)
            .ok()
            .map(|p| p.display().to_string()),
        key: KeyReport {
            name: workload.key.clone(),
            label: workload.label.clone(),
            algorithm: workload.algorithm.as_str().to_owned(),
            hsms: workload.hsms.clone(),
            input: workload.describe(),
        },
        raw_hsms,
        raw_modules,
        gateway: None,
        versions: report::versions(None),
        machine: report::machine(),
        modes: Vec::new(),
        ratios: Default::default(),
        targets: Vec::new(),
        sim_models: simsetup::describe_models(config, None),
        sweep: None,
        capacity: None,
    }
}

/// Prints the summary, writes `--json` and `--plot`.
pub fn finish(report: &Report, timing: &TimingArgs) -> Result<()> {
    write_outputs(report, timing.json.as_deref(), timing.plot.as_deref())
}

/// Prints the summary, writes the JSON and the plot if asked.
pub fn write_outputs(
    report: &Report,
    json: Option<&std::path::Path>,
    plot_file: Option<&std::path::Path>,
) -> Result<()> {
    print!("{}", report.summary());
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("\nfull results: {}", path.display());
    }
    if let Some(path) = plot_file {
        plot::write(report, path)?;
        println!("plot: {}", path.display());
    }
    Ok(())
}

/// `raw --sweep`: every round steps through the thread counts; the median per step.
fn run_sweep(
    plan: &Plan,
    steps: &[usize],
    bench: &mut RawBench,
    probe: &CpuProbe,
) -> Result<SweepReport> {
    let timing = &plan.timing;
    let mut results: Vec<Vec<PhaseResult>> = steps.iter().map(|_| Vec::new()).collect();
    for round in 1..=timing.rounds {
        for (i, &threads) in steps.iter().enumerate() {
            let window =
                Window::starting_now(timing.warmup, timing.duration).with_bucket(timing.interval);
            let bar = progress::phase(
                &format!("round {round}/{} raw × {threads}", timing.rounds),
                &window,
            );
            let r = bench.run_phase_with(threads, window, probe)?;
            drop(bar);
            eprintln!(
                "round {round}/{}  raw × {threads:<5} {:>8} sig/s  p99 {:>9}",
                timing.rounds,
                report::thousands(r.signatures_per_s()),
                report::micros(quantile_us(&r, 0.99)),
            );
            results[i].push(r);
        }
    }
    let points = steps
        .iter()
        .zip(&results)
        .map(|(&threads, rounds)| {
            let m = ModeReport::new(Mode::Raw, format!("{threads} threads"), rounds);
            SweepPoint {
                threads,
                median_signatures_per_s: m.median_signatures_per_s,
                per_round: m.rounds.iter().map(|r| r.signatures_per_s).collect(),
                p50_us: m.latency.p50_us,
                p99_us: m.latency.p99_us,
                errors: m.errors.values().sum(),
            }
        })
        .collect();
    Ok(SweepReport::new(points))
}

fn start_gateway(
    plan: &Plan,
    workload: &Arc<Workload>,
    probe: &mut CpuProbe,
) -> Result<GatewaySide> {
    let args = plan
        .gateway
        .as_ref()
        .context("internal: gateway modes without gateway options")?;
    let mut spawned = None;
    let url = match &args.gateway {
        Some(url) => url.clone(),
        None => {
            let signer = match &args.signer {
                Some(s) => s.clone(),
                None => gateway::default_signer()?,
            };
            let log = args
                .gateway_log
                .clone()
                .unwrap_or_else(gateway::default_log);
            let s = SpawnedGateway::spawn(&signer, &plan.target.config, &log, &[])?;
            eprintln!(
                "gateway: started {} (pid {}), gRPC {}, log {}",
                signer.display(),
                s.pid,
                s.grpc,
                log.display()
            );
            probe.watch("gateway", s.pid);
            let url = s.url();
            spawned = Some(s);
            url
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    builder.worker_threads(args.client_threads as usize);
    let runtime = builder.build().context("cannot start the async runtime")?;
    let (load, key_status) = runtime
        .block_on(async {
            let mut client = grpc_load::connect(&url).await?;
            let status =
                gateway::wait_for_key(&mut client, &workload.key, KEY_READY_TIMEOUT).await?;
            let load = GrpcLoad::connect(&url, args.channels as usize, workload.clone()).await?;
            Ok::<_, anyhow::Error>((load, status))
        })
        .map_err(|e| match &spawned {
            Some(s) => e.context(format!("gateway log: {}", s.log.display())),
            None => e,
        })?;
    eprintln!(
        "gateway: key {} in rotation on {}/{} HSM(s) after {:.1} s",
        workload.key,
        key_status.hsms_available,
        key_status.hsms.len(),
        key_status.waited_s
    );
    Ok(GatewaySide {
        runtime,
        load,
        url,
        spawned,
        key_status,
    })
}

fn quantile_us(r: &PhaseResult, q: f64) -> f64 {
    if r.tally.latency.is_empty() {
        0.0
    } else {
        r.tally.latency.value_at_quantile(q) as f64 / 1e3
    }
}
