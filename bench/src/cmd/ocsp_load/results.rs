//! What `hsm-bench ocsp` reports: the JSON document (`--json`), the console summary and the
//! SVG plot (`--plot`), from the run's tallies.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, anyhow};
use serde::Serialize;

use super::Kind;
use crate::measure::Timeline;
use crate::options::Mix;
use crate::report::{LatencyReport, Machine, Versions, micros, thousands};

/// The report of a run (`--json`).
#[derive(Debug, Serialize)]
pub struct OcspReport {
    pub tool: String,
    pub command_line: Vec<String>,
    pub started_unix: u64,
    pub finished_unix: u64,
    pub url: String,
    pub issuer_file: String,
    pub issuer_name: String,
    pub serials_file: String,
    pub known: usize,
    pub known_good: usize,
    pub known_revoked: usize,
    pub hot: usize,
    pub cold: usize,
    pub parameters: OcspParameters,
    pub versions: Versions,
    pub machine: Machine,
    /// Asking every hot serial once before the window (not counted).
    pub preload_requests: usize,
    pub preload_seconds: f64,
    pub seconds: f64,
    /// Requests completed in the window, answered or failed.
    pub requests: u64,
    pub requests_per_s: f64,
    /// Of every answered request in the window.
    pub latency: LatencyReport,
    pub kinds: Vec<KindReport>,
    pub breakdown: Breakdown,
    /// Answers by HTTP status, and failed requests by error (`Transport`, `Timeout`).
    pub http_status: BTreeMap<String, u64>,
    pub methods: BTreeMap<String, u64>,
    pub hashes: BTreeMap<String, u64>,
    /// Wrong answers in the whole run (preload and warm-up included).
    pub wrong: u64,
    /// Misses that had to reuse a cold serial (all asked already): possibly cache hits.
    pub misses_reused: u64,
    pub verification: Verification,
    /// The responder's `ocsp_cache_requests_total` by result over the window (`--metrics`).
    pub responder_cache: Option<BTreeMap<String, f64>>,
    /// Requests (answered) and failures per bucket of the window, all kinds.
    pub timeline: Timeline,
}

#[derive(Debug, Serialize)]
pub struct OcspParameters {
    pub mix: Mix,
    pub post_share: f64,
    pub sha256_share: f64,
    pub concurrency: u32,
    pub client_threads: u32,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub timeout_s: f64,
    pub verify_every: u64,
    pub interval_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct KindReport {
    pub kind: Kind,
    /// What every answer of this kind must be.
    pub expected: String,
    pub requests: u64,
    pub share: f64,
    pub requests_per_s: f64,
    pub latency: LatencyReport,
    pub answers: BTreeMap<String, u64>,
    pub wrong: u64,
    pub wrong_samples: BTreeMap<String, String>,
    pub errors: BTreeMap<String, u64>,
    pub error_samples: BTreeMap<String, String>,
    pub timeline: Timeline,
}

/// Requests of the window by outcome.
#[derive(Debug, Default, Serialize)]
pub struct Breakdown {
    pub good: u64,
    pub revoked: u64,
    pub unauthorized: u64,
    pub malformed: u64,
    pub try_later: u64,
    /// Other OCSP answers: internalError, sigRequired, certStatus unknown, a response for
    /// another certificate.
    pub other_ocsp: u64,
    /// No OCSP answer: connection errors, timeouts, HTTP answers without an OCSPResponse.
    pub http_errors: u64,
}

#[derive(Debug, Serialize)]
pub struct Verification {
    pub every: u64,
    /// Signed answers checked (CertID, times, and signature when the key is P-256).
    pub checked: u64,
    pub signatures_checked: u64,
    pub failed: u64,
    pub samples: Vec<String>,
    pub note: Option<String>,
}

pub(super) fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1} %", part as f64 * 100.0 / whole as f64)
    }
}

/// The console summary.
pub fn summary(r: &OcspReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let p = &r.parameters;
    let _ = writeln!(
        s,
        "hsm-bench ocsp: {} — {} in flight, {:.0} s measured; {} known serials of `{}` ({} good, {} revoked): hot set {}, cold {}",
        r.url,
        p.concurrency,
        r.seconds,
        thousands(r.known as f64),
        r.issuer_name,
        thousands(r.known_good as f64),
        thousands(r.known_revoked as f64),
        thousands(r.hot as f64),
        thousands(r.cold as f64),
    );
    let _ = writeln!(
        s,
        "preload: {} hot serials asked once in {:.2} s\n",
        thousands(r.preload_requests as f64),
        r.preload_seconds
    );
    let _ = writeln!(
        s,
        "{:<10} {:>7} {:>10} {:>9} {:>10} {:>10} {:>10} {:>10}  answers",
        "kind", "share", "requests", "req/s", "p50", "p90", "p99", "p99.9"
    );
    let row = |s: &mut String,
               name: &str,
               share: String,
               n: u64,
               rate: f64,
               l: &LatencyReport,
               answers: String| {
        let _ = writeln!(
            s,
            "{:<10} {:>7} {:>10} {:>9} {:>10} {:>10} {:>10} {:>10}  {answers}",
            name,
            share,
            thousands(n as f64),
            thousands(rate),
            micros(l.p50_us),
            micros(l.p90_us),
            micros(l.p99_us),
            micros(l.p999_us),
        );
    };
    for k in &r.kinds {
        let mut answers: Vec<String> = k
            .answers
            .iter()
            .map(|(a, n)| format!("{a} {}", thousands(*n as f64)))
            .collect();
        answers.extend(
            k.errors
                .iter()
                .map(|(e, n)| format!("{e} {}", thousands(*n as f64))),
        );
        row(
            &mut s,
            k.kind.name(),
            percent(k.requests, r.requests),
            k.requests,
            k.requests_per_s,
            &k.latency,
            answers.join(", "),
        );
    }
    row(
        &mut s,
        "all",
        "100 %".into(),
        r.requests,
        r.requests_per_s,
        &r.latency,
        String::new(),
    );
    let b = &r.breakdown;
    let _ = writeln!(
        s,
        "\nstatus: good {} · revoked {} · unauthorized {} · malformed {} · tryLater {} · other OCSP {} · HTTP errors {}",
        thousands(b.good as f64),
        thousands(b.revoked as f64),
        thousands(b.unauthorized as f64),
        thousands(b.malformed as f64),
        thousands(b.try_later as f64),
        thousands(b.other_ocsp as f64),
        thousands(b.http_errors as f64),
    );
    let counts = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {}", thousands(*v as f64)))
            .collect::<Vec<_>>()
            .join(" · ")
    };
    let _ = writeln!(
        s,
        "HTTP: {}; methods: {}; CertID hashes: {}",
        counts(&r.http_status),
        counts(&r.methods),
        counts(&r.hashes)
    );
    if let Some(cache) = &r.responder_cache {
        let _ = writeln!(
            s,
            "responder's cache over the window: {}",
            cache
                .iter()
                .map(|(k, v)| format!("{k} {}", thousands(*v)))
                .collect::<Vec<_>>()
                .join(" · ")
        );
    }
    if r.misses_reused > 0 {
        let _ = writeln!(
            s,
            "note: {} misses reused a cold serial already asked (the cold set ran out): they may have been cache hits",
            thousands(r.misses_reused as f64)
        );
    }
    let v = &r.verification;
    let _ = writeln!(
        s,
        "checked: every answer's status; {} signed answers in full (every {}th: CertID, times, {} signatures), {} failed",
        thousands(v.checked as f64),
        v.every,
        thousands(v.signatures_checked as f64),
        v.failed
    );
    if let Some(note) = &v.note {
        let _ = writeln!(s, "note: {note}");
    }
    for sample in &v.samples {
        let _ = writeln!(s, "  check failed: {sample}");
    }
    let _ = writeln!(s, "wrong answers: {}", r.wrong);
    for k in &r.kinds {
        for (what, example) in &k.wrong_samples {
            let _ = writeln!(s, "  {}: {what} (e.g. {example})", k.kind.name());
        }
        for (code, message) in &k.error_samples {
            let _ = writeln!(s, "  {} error {code}: {message}", k.kind.name());
        }
    }
    s
}

pub(super) fn plot(r: &OcspReport, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1100, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("plotting: {e}"))?;
    let (upper, lower) = root.split_vertically(400);
    let series = |t: &Timeline| -> Vec<(f64, f64)> {
        let bucket_s = t.bucket_ms / 1e3;
        t.rates()
            .into_iter()
            .enumerate()
            .map(|(i, v)| ((i as f64 + 0.5) * bucket_s, v))
            .collect()
    };
    let mut lines = vec![("all".to_owned(), series(&r.timeline))];
    lines.extend(
        r.kinds
            .iter()
            .filter(|k| k.requests > 0)
            .map(|k| (k.kind.name().to_owned(), series(&k.timeline))),
    );
    crate::plot::xy_panel(
        &upper,
        &format!(
            "hsm-bench ocsp: {} — {:.0} requests/s, {} in flight",
            r.url, r.requests_per_s, r.parameters.concurrency
        ),
        &format!(
            "seconds into the measured window (buckets of {} ms)",
            r.parameters.interval_ms
        ),
        "requests/s",
        &lines,
        &[],
        None,
    )?;
    let lat: Vec<(String, Vec<(f64, f64)>)> = std::iter::once(("all", &r.latency))
        .chain(
            r.kinds
                .iter()
                .filter(|k| k.requests > 0)
                .map(|k| (k.kind.name(), &k.latency)),
        )
        .map(|(name, l)| {
            let v = [l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us];
            (
                name.to_owned(),
                v.iter()
                    .enumerate()
                    .map(|(i, us)| (i as f64, us / 1e3))
                    .collect(),
            )
        })
        .collect();
    crate::plot::xy_panel(
        &lower,
        "latency percentiles of one request, ms: p50, p90, p99, p99.9, max",
        "percentile (0 = p50, 1 = p90, 2 = p99, 3 = p99.9, 4 = max)",
        "ms",
        &lat,
        &[],
        None,
    )?;
    root.present().map_err(|e| anyhow!("plotting: {e}"))?;
    Ok(())
}
