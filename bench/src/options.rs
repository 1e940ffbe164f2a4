//! Command-line options, grouped so that the subcommands (`compare`, `raw`, `sign`, and the
//! ones to come) share their meaning and defaults: what to sign with (config and key), how
//! long and how often to measure, the raw load, the gateway and its load.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};

/// The HSMs and key: a gateway configuration and one of its keys.
#[derive(clap::Args, Debug, Clone)]
pub struct TargetArgs {
    /// Gateway configuration (TOML): the HSMs, their PINs, and the keys.
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    /// Name of the key to sign with (a `[[keys]]` name of the configuration).
    #[arg(long, value_name = "NAME")]
    pub key: String,
}

/// How long and how often each phase runs, and where the full results go.
#[derive(clap::Args, Debug, Clone)]
pub struct TimingArgs {
    /// Measured time of each phase (e.g. `5s`, `500ms`, `1m`).
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Duration,
    /// Warm-up at the start of each phase, not counted.
    #[arg(long, default_value = "500ms", value_parser = parse_duration, value_name = "DURATION")]
    pub warmup: Duration,
    /// Rounds; each round runs every phase once, in turn.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Write everything (parameters, per-round figures, versions, machine) to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a chart to FILE (SVG): throughput over time and latency percentiles (for
    /// `raw --sweep`: throughput and latency against concurrency).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Width of a throughput-over-time bucket (timelines in the JSON and the plot).
    #[arg(long, default_value = "100ms", value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Duration,
}

/// The raw PKCS#11 load.
#[derive(clap::Args, Debug, Clone)]
pub struct RawLoadArgs {
    /// Raw PKCS#11 threads, one logged-in session each, spread over the key's HSMs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub threads: u32,
}

/// Which gateway, and how the client reaches it.
#[derive(clap::Args, Debug, Clone)]
pub struct GatewayArgs {
    /// URL of a running gateway (`http://127.0.0.1:50051`). Default: spawn the `signer`
    /// binary found beside hsm-bench with `--config`, and stop it at the end.
    #[arg(long, value_name = "URL")]
    pub gateway: Option<String>,
    /// The `signer` binary to spawn. Default: `signer` in hsm-bench's own directory.
    #[arg(long, value_name = "PATH", conflicts_with = "gateway")]
    pub signer: Option<PathBuf>,
    /// Where the spawned gateway's log (its stderr) goes. Default: a file in the temp dir.
    #[arg(long, value_name = "FILE", conflicts_with = "gateway")]
    pub gateway_log: Option<PathBuf>,
    /// HTTP/2 connections to the gateway; the load's tasks are spread over them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub channels: u32,
    /// Threads of the load generator's async runtime. One drives ~60k Sign RPCs/s and, on a
    /// machine shared with the gateway, steals the least CPU from it; raise it when the
    /// gateway runs elsewhere or the summary warns that the load generator is saturated.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub client_threads: u32,
}

/// The gateway load: how many RPCs are in flight, how big a batch is.
#[derive(clap::Args, Debug, Clone)]
pub struct GrpcLoadArgs {
    /// `Sign` RPCs in flight (tasks calling Sign in a loop).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub sign_concurrency: u32,
    /// `SignBatch` RPCs in flight.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_concurrency: u32,
    /// Digests per `SignBatch` request.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch: u32,
    /// Open loop: issue calls at this many signatures per second (a `SignBatch` call carries
    /// `--batch`), whatever the gateway does; latency counts from each call's intended start.
    /// Default: closed loop (the concurrency options, as fast as the gateway answers).
    #[arg(long, value_name = "SIG_PER_S", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Open loop: most calls outstanding; a call beyond it is not sent and counts as a
    /// `ClientBacklog` error. Keep it bounded: with tens of thousands of calls queued on one
    /// HTTP/2 connection (a stalled machine at 19,500/s) the connection itself failed
    /// (`transport error`, `h2 protocol error`) in a run here.
    #[arg(long, default_value_t = 4_096, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_in_flight: u32,
}

/// `hsm-bench compare`.
#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub raw: RawLoadArgs,
    #[command(flatten)]
    pub load: GrpcLoadArgs,
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(flatten)]
    pub timing: TimingArgs,
}

/// `hsm-bench raw`.
#[derive(clap::Args, Debug, Clone)]
pub struct RawArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub raw: RawLoadArgs,
    #[command(flatten)]
    pub timing: TimingArgs,
    /// Step the concurrency (1, 2, 4, … threads up to `--max-threads`; each step one phase per
    /// round) and report where throughput stops growing. `--threads` is ignored.
    #[arg(long)]
    pub sweep: bool,
    /// Largest thread count of `--sweep`.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_threads: u32,
}

/// Which gateway RPCs `hsm-bench sign` drives.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignModes {
    /// Unary `Sign` only.
    Sign,
    /// `SignBatch` only.
    Batch,
    /// `Sign`, then `SignBatch`, in each round.
    Both,
}

/// `hsm-bench sign`.
#[derive(clap::Args, Debug, Clone)]
pub struct SignArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// RPCs to drive.
    #[arg(long, value_enum, default_value_t = SignModes::Both)]
    pub mode: SignModes,
    #[command(flatten)]
    pub load: GrpcLoadArgs,
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(flatten)]
    pub timing: TimingArgs,
}

/// `hsm-bench capacity`: the Luna-class model behind the gateway.
#[derive(clap::Args, Debug, Clone)]
pub struct CapacityArgs {
    /// Working directory for the tokens, configuration, control file and gateway log
    /// (created; default: a new directory in the temp dir, kept for inspection).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The `signer` binary. Default: `signer` in hsm-bench's own directory.
    #[arg(long, value_name = "PATH")]
    pub signer: Option<PathBuf>,
    /// The hsm-sim module. Default: `libhsm_sim.so` in hsm-bench's own directory.
    #[arg(long, value_name = "PATH")]
    pub sim: Option<PathBuf>,
    /// Modelled HSMs (one datacenter).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub hsms: u32,
    /// Rated signatures/s of each modelled HSM.
    #[arg(long, default_value_t = 10_000.0, value_parser = parse_rate)]
    pub hsm_rate: f64,
    /// Parallel signing units of each modelled HSM.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub units: u32,
    /// Latency distribution: `fixed`, `exp` or `lognormal` (floor: 80 % of the mean).
    #[arg(long, default_value = "exp")]
    pub dist: String,
    /// Let SoftHSM2 make real signatures instead of stand-ins (this machine cannot sign
    /// ECDSA P-256 at 20,000/s alongside the gateway: the default is stand-in signatures).
    #[arg(long)]
    pub real_signatures: bool,
    /// Gateway sessions (worker threads) per HSM: more than `--units`, so the HSM has a queue.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub sessions: u32,
    /// The gateway's `batching.worker_chunk`.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub worker_chunk: u32,
    /// Knock the first HSM out (`fail 0x30` in the control file) this long into the measured
    /// window. Default: no knockout.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub knockout_at: Option<Duration>,
    /// Bring it back this long into the measured window (default: knockout + 20 s).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub restore_at: Option<Duration>,
    /// RPCs to drive.
    #[arg(long, value_enum, default_value_t = SignModes::Sign)]
    pub mode: SignModes,
    #[command(flatten)]
    pub load: GrpcLoadArgs,
    /// HTTP/2 connections to the gateway.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub channels: u32,
    /// Threads of the load generator's async runtime.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub client_threads: u32,
    /// Measured time.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Duration,
    /// Warm-up, not counted.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub warmup: Duration,
    /// Width of a throughput-over-time bucket.
    #[arg(long, default_value = "100ms", value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Duration,
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

/// `hsm-bench ocsp`: load on an OCSP responder.
#[derive(clap::Args, Debug, Clone)]
pub struct OcspArgs {
    /// Base URL of the responder (`http://127.0.0.1:8080`); plain HTTP, as OCSP is served.
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// The issuer certificate (PEM or DER): the CertIDs' issuerNameHash and issuerKeyHash, and
    /// the key that sampled signatures are checked against.
    #[arg(long, value_name = "PEM")]
    pub issuer: PathBuf,
    /// Certificates the responder's store knows, in the import format of
    /// `hsmgate-ocsp import` (`<issuer> <serial hex> good | revoked <time> [reason]`): their
    /// serials and the status each must be answered with.
    #[arg(long, value_name = "FILE")]
    pub serials: PathBuf,
    /// Which issuer of the file `--issuer` is (default: the only one named in the file).
    #[arg(long, value_name = "NAME")]
    pub issuer_name: Option<String>,
    /// The request mix, as relative weights: `hit` (the hot set, warmed into the responder's
    /// cache first), `miss` (known serials never asked before in this run: cold unless the
    /// responder served them earlier), `unknown` (random serials the store does not hold:
    /// `unauthorized`), `malformed` (truncated requests: `malformedRequest`).
    #[arg(long, default_value = "hit=80,miss=10,unknown=9,malformed=1", value_parser = parse_mix, value_name = "KIND=WEIGHT,...")]
    pub mix: Mix,
    /// Known serials in the hot set (default: a tenth of the list, at least 1, at most 10,000).
    #[arg(long, value_name = "N")]
    pub hot: Option<usize>,
    /// Share of POST requests (`application/ocsp-request`); the rest are GET with the
    /// percent-encoded base64 request in the path (RFC 6960 Appendix A.1).
    #[arg(long, default_value_t = 0.5, value_parser = parse_share, value_name = "0..1")]
    pub post: f64,
    /// Share of SHA-256 CertIDs (RFC 9919 clients); the rest are SHA-1 (RFC 5019).
    #[arg(long, default_value_t = 0.5, value_parser = parse_share, value_name = "0..1")]
    pub sha256: f64,
    /// Requests in flight (tasks each sending one request at a time, HTTP/1.1 keep-alive, one
    /// connection each).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,
    /// Threads of the load generator's async runtime.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub client_threads: u32,
    /// Measured time.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Duration,
    /// Warm-up after the hot set is loaded, not counted.
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub warmup: Duration,
    /// A request taking longer than this fails (`Timeout`).
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// Check the signature (P-256 issuers), CertID and validity times of every N-th signed
    /// response of each task (0: never). Every response's status is checked regardless.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub verify_every: u64,
    /// The responder's metrics URL (`http://127.0.0.1:9465/metrics`): its own cache hit and
    /// miss counts over the window are reported beside the load generator's.
    #[arg(long, value_name = "URL")]
    pub metrics: Option<String>,
    /// Width of a throughput-over-time bucket.
    #[arg(long, default_value = "100ms", value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Duration,
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

/// Relative weights of the OCSP request kinds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Mix {
    pub hit: f64,
    pub miss: f64,
    pub unknown: f64,
    pub malformed: f64,
}

/// `hit=80,miss=10,unknown=9,malformed=1`; kinds left out weigh 0.
pub fn parse_mix(text: &str) -> anyhow::Result<Mix> {
    let mut mix = Mix {
        hit: 0.0,
        miss: 0.0,
        unknown: 0.0,
        malformed: 0.0,
    };
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (kind, weight) = part
            .split_once('=')
            .with_context(|| format!("`{part}`: expected KIND=WEIGHT"))?;
        let w: f64 = weight
            .trim()
            .parse()
            .ok()
            .filter(|w: &f64| w.is_finite() && *w >= 0.0)
            .with_context(|| format!("`{part}`: the weight must be a number >= 0"))?;
        match kind.trim() {
            "hit" => mix.hit = w,
            "miss" => mix.miss = w,
            "unknown" => mix.unknown = w,
            "malformed" => mix.malformed = w,
            other => bail!("`{other}`: the kinds are hit, miss, unknown and malformed"),
        }
    }
    if mix.hit + mix.miss + mix.unknown + mix.malformed <= 0.0 {
        bail!("`{text}`: at least one kind must weigh more than 0");
    }
    Ok(mix)
}

/// A share between 0 and 1.
pub fn parse_share(text: &str) -> anyhow::Result<f64> {
    let v: f64 = text
        .trim()
        .parse()
        .with_context(|| format!("`{text}`: expected a number between 0 and 1"))?;
    if !(0.0..=1.0).contains(&v) {
        bail!("`{text}`: expected a number between 0 and 1");
    }
    Ok(v)
}

/// A positive rate.
pub fn parse_rate(text: &str) -> anyhow::Result<f64> {
    let v: f64 = text
        .trim()
        .replace('_', "")
        .parse()
        .with_context(|| format!("`{text}`: expected a number (per second)"))?;
    if !v.is_finite() || v <= 0.0 || v > 1e9 {
        bail!("`{text}`: expected a rate above 0 and at most 1e9");
    }
    Ok(v)
}

/// Parses `5s`, `500ms`, `2.5s`, `1m`, `100us`; a bare number is seconds.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .with_context(|| format!("`{text}`: expected a number followed by ms, s or m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        other => bail!("`{text}`: unknown unit `{other}` (use us, ms, s or m)"),
    };
    if !seconds.is_finite() || seconds > 86_400.0 {
        bail!("`{text}`: out of range");
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        let d = |s| parse_duration(s).expect("valid duration");
        assert_eq!(d("5s"), Duration::from_secs(5));
        assert_eq!(d("5"), Duration::from_secs(5));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("2.5s"), Duration::from_millis(2500));
        assert_eq!(d("1m"), Duration::from_secs(60));
        assert_eq!(d("250us"), Duration::from_micros(250));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn mixes_parse() {
        let m = parse_mix("hit=80, miss=10,unknown=9,malformed=1").expect("valid");
        assert_eq!(
            (m.hit, m.miss, m.unknown, m.malformed),
            (80.0, 10.0, 9.0, 1.0)
        );
        let m = parse_mix("unknown=1").expect("valid");
        assert_eq!((m.hit, m.unknown), (0.0, 1.0));
        for bad in ["", "hit=0", "hit=-1", "hot=5", "hit"] {
            assert!(parse_mix(bad).is_err(), "{bad}");
        }
        assert!(parse_share("1.5").is_err());
        assert_eq!(parse_share("0.25").expect("valid"), 0.25);
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("20_000").expect("valid"), 20_000.0);
        assert_eq!(parse_rate("2.5").expect("valid"), 2.5);
        for bad in ["0", "-5", "fast", "inf"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
