//! `hsm-bench`: the operators' tool to measure HSMs and the hsmgate gateway in front of them.
//!
//! This file is only the command line; the work is in the modules: `cmd/` holds one file per
//! subcommand (`cmd::signing_run` orchestrates `compare`, `raw` and `sign`); `raw` and
//! `grpc_load` are the two load generators; `window`, `measure` and `procstat` measure a
//! phase; `report`, `plot` and `progress` show it; `simsetup` is the one place a gateway
//! configuration is written, and `gateway` spawns and watches one.

mod cmd;
mod gateway;
mod grpc_load;
mod measure;
mod options;
mod plot;
mod procstat;
mod progress;
mod raw;
mod report;
mod simsetup;
mod window;
mod workload;

use cmd::{acme, capacity, ceiling, drill, ocsp_load, signing_run};

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "hsmgate benchmarks: raw PKCS#11 versus the signing gateway, on the same HSMs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Alternate raw PKCS#11, gateway Sign and gateway SignBatch phases in one run and compare
    /// their throughput and latency (the gateway's cost over raw PKCS#11).
    Compare(options::CompareArgs),
    /// Raw PKCS#11 only: N threads, one session each, C_Sign in a loop (`--sweep`: step the
    /// thread count and find where throughput stops growing).
    Raw(options::RawArgs),
    /// Gateway only: Sign and/or SignBatch load against a spawned or running gateway, closed
    /// loop or at a target rate (`--rate`).
    Sign(options::SignArgs),
    /// The gateway in front of Luna-class modelled HSMs (hsm-sim): rated speed, latency, and
    /// an HSM knocked out and brought back mid-run (`--knockout-at`).
    Capacity(options::CapacityArgs),
    /// The gateway's own ceiling: hsm-sim HSMs with no rate limit (stand-in signatures),
    /// 2/4/8/16 of them, SignBatch and unary Sign closed loop; sig/s and the gateway's CPU per
    /// signature, as a table.
    Ceiling(ceiling::CeilingArgs),
    /// The mass-revocation drill: N certificates issued with OCSP responses, all revoked, every
    /// response re-signed through the gateway and verified; the time, the rate against
    /// `SignBatch`, and the projection to a fleet. Resumable (`--dir`).
    Drill(drill::DrillArgs),
    /// Load on an OCSP responder: cache hits, cold misses, unknown serials and malformed
    /// requests over GET and POST, SHA-1 and SHA-256 CertIDs; requests/s, latency per kind,
    /// the status breakdown, and every answer checked against the serials' listed statuses.
    Ocsp(options::OcspArgs),
    /// End-to-end ACME issuance (new order → http-01 → finalize → download) with instant-acme
    /// against any ACME server: orders/s and per-phase latency.
    Acme(acme::AcmeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Compare(args) => signing_run::run(signing_run::Plan::compare(args)),
        Command::Raw(args) => signing_run::run(signing_run::Plan::raw(args)),
        Command::Sign(args) => signing_run::run(signing_run::Plan::sign(args)),
        Command::Capacity(args) => capacity::run(args),
        Command::Ceiling(args) => ceiling::run(args),
        Command::Drill(args) => drill::run(args),
        Command::Ocsp(args) => ocsp_load::run(args),
        Command::Acme(args) => acme::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hsm-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
