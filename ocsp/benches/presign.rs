//! The pre-signer's own CPU per response, without the gateway: `Presigner::run_once` over an
//! embedded SQLite store with a signer that returns a fixed signature at once (`StandIn`), so
//! what is measured is the `due` queries, building and encoding each response, and the store
//! transactions (`put_and_mark_many`: the certificate's rows read, the responses written, the
//! publication marked, one commit per chunk), on the cores of this process only.
//!
//! Two passes per round on a fresh file of `--count` certificates (two responses each, SHA-1
//! and SHA-256 CertIDs): the first publication (every row inserted), then a refresh of all of
//! them (every row replaced), which is the pre-signer's steady state. CPU is the process's user
//! + system time (`/proc/self/stat`), so the blocking threads' SQLite work and fsync count.
//!
//! ```sh
//! cargo bench -p ocsp --bench presign -- --count 100000 --rounds 3
//! ```
//!
//! `bench/ocsp/run.sh` measures the same with the real gateway and the gRPC client added.

mod common;

use std::sync::Arc;
use std::time::Instant;

use ocsp::config;
use ocsp::presigner::{Presigner, PresignerMetrics, Responses};
use ocsp::store::SqliteStore;
use ocsp::{CertStatus, IssuerName, Issuers};

/// The same allocator as the `hsmgate-ocsp` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// User + system CPU of this process so far, in seconds.
fn process_cpu_seconds() -> f64 {
    let stat = match std::fs::read_to_string("/proc/self/stat") {
        Ok(s) => s,
        Err(e) => panic!("/proc/self/stat: {e}"),
    };
    // Fields after the command name (which may hold spaces) start at `state` (field 3):
    // utime and stime are fields 14 and 15, in clock ticks (100 per second on Linux).
    let after = match stat.rfind(')') {
        Some(i) => &stat[i + 2..],
        None => panic!("/proc/self/stat: no command name"),
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields[i - 3].parse::<u64>().unwrap_or(0);
    (ticks(14) + ticks(15)) as f64 / 100.0
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| match v.parse() {
            Ok(n) => n,
            Err(e) => panic!("{name} {v}: {e}"),
        })
}

/// Runs one pass and returns (responses, CPU µs per response, wall seconds).
async fn pass(presigner: &Presigner, now: i64) -> (u64, f64, f64) {
    let cpu = process_cpu_seconds();
    let wall = Instant::now();
    let report = match presigner.run_once(now).await {
        Ok(r) => r,
        Err(e) => panic!("run_once: {e}"),
    };
    let wall = wall.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu;
    assert_eq!(report.still_due, 0, "every certificate signed");
    (report.responses, cpu / report.responses as f64 * 1e6, wall)
}

async fn round(count: u64) -> ((u64, f64, f64), (u64, f64, f64)) {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("temporary directory: {e}"),
    };
    let store = match SqliteStore::open(dir.path().join("ocsp.sqlite")) {
        Ok(s) => Arc::new(s),
        Err(e) => panic!("SQLite store: {e}"),
    };
    let name = IssuerName(common::ISSUER_NAME.into());
    for start in (0..count).step_by(10_000) {
        let items = (start..(start + 10_000).min(count))
            .map(|i| (name.clone(), common::serial(i), CertStatus::Good))
            .collect();
        if let Err(e) = store.upsert_certificates(items).await {
            panic!("import: {e}");
        }
    }
    let mut issuers = Issuers::default();
    issuers.add(common::issuer());
    let presign_config = config::Presigner::default();
    let refresh_after = presign_config.refresh_after_hours as i64 * 3600;
    let presigner = Presigner::new(
        store,
        Responses::Embedded,
        issuers,
        Arc::new(common::StandIn),
        presign_config,
        PresignerMetrics::default(),
    );
    let now = common::unix_now();
    let first = pass(&presigner, now).await;
    let refresh = pass(&presigner, now + refresh_after + 1).await;
    (first, refresh)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once, small.
    let quick = !args.iter().any(|a| a == "--bench");
    let count = arg(&args, "--count", if quick { 1_000 } else { 100_000 }) as u64;
    let rounds = arg(&args, "--rounds", if quick { 1 } else { 3 });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    println!(
        "pre-signer, stand-in signer, embedded SQLite store: {count} certificates, {rounds} rounds"
    );
    println!("| round | pass | responses | CPU per response | wall | responses/s |");
    println!("|---:|---|---:|---:|---:|---:|");
    let mut firsts = Vec::new();
    let mut refreshes = Vec::new();
    for r in 1..=rounds {
        let (first, refresh) = rt.block_on(round(count));
        for (label, (n, us, wall)) in [("first", first), ("refresh", refresh)] {
            println!(
                "| {r} | {label} | {n} | {us:.2} µs | {wall:.2} s | {:.0} |",
                n as f64 / wall
            );
        }
        firsts.push(first.1);
        refreshes.push(refresh.1);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "median CPU per response: first {:.2} µs, refresh {:.2} µs",
        median(&mut firsts),
        median(&mut refreshes)
    );
}
