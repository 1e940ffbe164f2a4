//! The run: sets up the raw PKCS#11 load and/or the gateway (spawned or given) and its load,
//! then runs the requested modes in alternation — round 1: raw, Sign, SignBatch; round 2:
//! raw, Sign, SignBatch; … — so that every mode sees the same machine conditions, and builds
//! the report. `hsm-bench compare` runs all three modes, `hsm-bench raw` and `hsm-bench sign`
//! a subset, through the same code.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use hsm_config::Config;

use crate::gateway::{self, KeyStatus, SpawnedGateway};
use crate::grpc_load::{self, GrpcLoad, GrpcMode};
use crate::measure::{PhaseResult, Window};
use crate::options::{
    CompareArgs, GatewayArgs, GrpcLoadArgs, RawArgs, SignArgs, SignModes, TargetArgs, TimingArgs,
};
use crate::procstat::CpuProbe;
use crate::raw::RawBench;
use crate::report::{self, GatewayReport, KeyReport, Mode, ModeReport, Parameters, Report};
use crate::workload::Workload;

/// How long the gateway gets to put an HSM holding the key into rotation.
const KEY_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// What to run.
#[derive(Debug)]
pub struct Plan {
    tool: &'static str,
    modes: Vec<Mode>,
    target: TargetArgs,
    timing: TimingArgs,
    raw_threads: usize,
    load: Option<GrpcLoadArgs>,
    gateway: Option<GatewayArgs>,
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
        }
    }

    pub fn raw(a: RawArgs) -> Self {
        Self {
            tool: "hsm-bench raw",
            modes: vec![Mode::Raw],
            target: a.target,
            timing: a.timing,
            raw_threads: a.raw.threads as usize,
            load: None,
            gateway: None,
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
    let started_unix = unix_now();
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

    let timing = &plan.timing;
    let mut results: Vec<Vec<PhaseResult>> = plan.modes.iter().map(|_| Vec::new()).collect();
    for round in 1..=timing.rounds {
        for (m, &mode) in plan.modes.iter().enumerate() {
            let window = Window::starting_now(timing.warmup, timing.duration);
            let result = match (mode, raw.as_mut(), gw.as_mut(), grpc_mode(mode)) {
                (Mode::Raw, Some(raw), _, _) => raw.run_phase(window, &probe)?,
                (_, _, Some(g), Some(grpc)) => {
                    let r = g.load.run_phase(&g.runtime, grpc, window, &probe)?;
                    if let Some(s) = g.spawned.as_mut() {
                        s.check_alive()?;
                    }
                    r
                }
                _ => bail!("internal: no load generator for mode {}", mode.name()),
            };
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
    let mut report = Report {
        tool: plan.tool.to_owned(),
        command_line: std::env::args().collect(),
        started_unix,
        finished_unix: unix_now(),
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
        gateway: gw.as_ref().map(|g| GatewayReport {
            url: g.url.clone(),
            spawned: g.spawned.is_some(),
            signer: spawned.map(|s| s.signer.display().to_string()),
            signer_sha256: spawned.and_then(|s| s.sha256.clone()),
            pid: spawned.map(|s| s.pid),
            log: spawned.map(|s| s.log.display().to_string()),
            metrics: spawned.map(|s| s.metrics.clone()),
            key_status: Some(g.key_status.clone()),
            stopped: stopped.clone(),
        }),
        versions: report::versions(spawned.and_then(|s| s.version.clone())),
        machine: report::machine(),
        modes,
        ratios: Default::default(),
        targets: Vec::new(),
    };
    report.compute_ratios();
    print!("{}", report.summary());
    if let Some(path) = &timing.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("\nfull results: {}", path.display());
    }
    Ok(())
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
            let s = SpawnedGateway::spawn(&signer, &plan.target.config, &log)?;
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
