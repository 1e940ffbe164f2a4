//! `acme`: orders completed per second, end to end, against any ACME server (ca-frontend,
//! Pebble, …), with the `instant-acme` client library.
//!
//! ```text
//!  --concurrency workers, one ACME account each (created before measuring, not timed)
//!    loop: new order (1 name, o<N>.<run>.<domain>)            ── new-order
//!          fetch the authorization, publish the http-01 key authorization in the shared map,
//!          POST the challenge, poll the order until `ready`     ── validation
//!          finalize with a fresh P-256 CSR, poll until `valid`  ── finalize
//!          download the chain                                   ── download
//!  the http-01 responder: 127.0.0.1:--http-port, token → key authorization (the CA under test
//!  connects to it; pebble-challtestsrv resolves every name to 127.0.0.1)
//! ```
//!
//! Each name is new (a random run label in it), so no authorization is reused: every order is
//! really validated. Polling is the benchmark's own (a fixed `--poll-interval`, Retry-After not
//! honoured) so that both servers are polled alike; the polls per order are reported.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, ChallengeType, Identifier, NewAccount, NewOrder,
    Order, OrderStatus, RevocationReason, RevocationRequest,
};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::measure::histogram;
use crate::options::parse_duration;
use crate::procstat::{CpuProbe, CpuReport};
use crate::report::{self, Machine, Versions};
use crate::window::Window;

/// `hsm-bench acme` options.
#[derive(Args, Debug, Clone)]
pub struct AcmeArgs {
    /// The ACME directory URL (`https://127.0.0.1:14000/dir`).
    #[arg(long, value_name = "URL")]
    pub directory: String,
    /// CA certificate (PEM) to trust for an https directory (default: the system's roots).
    #[arg(long, value_name = "PEM")]
    pub root: Option<PathBuf>,
    /// A name for the server in the report (`pebble`, `ca-frontend`).
    #[arg(long, default_value = "acme")]
    pub label: String,
    /// Orders in flight: this many workers, one account each, each running one order at a time.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Measure this many orders (started after the warm-up); the rate is orders ÷ the time from
    /// the warm-up's end to the last one's completion.
    #[arg(long, conflicts_with = "duration")]
    pub orders: Option<u64>,
    /// Measure for this long (default 20s unless --orders): orders completed inside the window
    /// ÷ its length.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    /// Warm-up: orders completed before the measurement starts are not counted.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub warmup: Duration,
    /// Port of the http-01 responder (the CA's `httpPort` / `validation.http_port`).
    #[arg(long, default_value_t = 5002)]
    pub http_port: u16,
    /// Address the http-01 responder listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub http_listen: std::net::IpAddr,
    /// Names are `o<N>.<run label>.<domain>`; the DNS the CA uses must resolve them to the
    /// responder (pebble-challtestsrv answers 127.0.0.1 for every name).
    #[arg(long, default_value = "bench.example.test")]
    pub domain: String,
    /// Pause between polls of a pending/processing order (fixed; Retry-After is not honoured).
    #[arg(long, default_value = "10ms", value_parser = parse_duration, value_name = "DURATION")]
    pub poll_interval: Duration,
    /// An order taking longer fails with `timeout`.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub order_timeout: Duration,
    /// Speak HTTP/1.1 only (default: HTTP/2 when the server offers it by ALPN).
    #[arg(long)]
    pub http1: bool,
    /// Threads of the load generator's async runtime.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub client_threads: u32,
    /// Measure the CPU of another process during the window (duration mode), e.g.
    /// `--watch ca-frontend=1234`; repeatable.
    #[arg(long, value_name = "ROLE=PID")]
    pub watch: Vec<String>,
    /// Write everything to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Keep every chain downloaded, warm-up included, as DIR/<name>.pem: the drills check that
    /// each certificate a client received has its record and its OCSP status.
    #[arg(long, value_name = "DIR")]
    pub save_chains: Option<PathBuf>,
    /// Revoke every Nth certificate (keyCompromise) once downloaded, as the account that
    /// ordered it; with --save-chains, DIR/<name>.revoked marks it. A failed revocation fails
    /// the order (phase `revoke`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub revoke_every: Option<u64>,
}

// ------------------------------------------------------------------------------- results

const PHASES: [&str; 5] = ["new-order", "validation", "finalize", "download", "total"];

/// One completed order's phase durations.
#[derive(Debug, Clone, Copy)]
struct Timing {
    phases: [Duration; 5],
    validation_polls: u32,
    finalize_polls: u32,
}

#[derive(Debug)]
struct Failure {
    phase: &'static str,
    kind: String,
    message: String,
}

fn fail(phase: &'static str) -> impl Fn(instant_acme::Error) -> Failure {
    move |e| {
        let kind = match &e {
            instant_acme::Error::Api(p) => p
                .r#type
                .as_deref()
                .map_or("problem", |t| {
                    t.strip_prefix("urn:ietf:params:acme:error:").unwrap_or(t)
                })
                .to_owned(),
            instant_acme::Error::Timeout(_) => "timeout".into(),
            instant_acme::Error::Other(_) | instant_acme::Error::Hyper(_) => "http".into(),
            instant_acme::Error::Json(_) => "json".into(),
            other => format!("{other:?}")
                .split(['(', ' ', '{'])
                .next()
                .unwrap_or("error")
                .to_owned(),
        };
        Failure {
            phase,
            kind,
            message: e.to_string(),
        }
    }
}

fn failure(phase: &'static str, kind: &str, message: impl Into<String>) -> Failure {
    Failure {
        phase,
        kind: kind.to_owned(),
        message: message.into(),
    }
}

/// What a worker counted.
#[derive(Debug)]
struct Tally {
    phases: Vec<Histogram<u64>>,
    ok: u64,
    validation_polls: u64,
    finalize_polls: u64,
    errors: BTreeMap<String, u64>,
    error_samples: BTreeMap<String, String>,
    /// Completions per second of the window.
    timeline: Vec<u64>,
    last_done: Option<Instant>,
}

impl Tally {
    fn new(seconds: usize) -> Self {
        Self {
            phases: PHASES.iter().map(|_| histogram()).collect(),
            ok: 0,
            validation_polls: 0,
            finalize_polls: 0,
            errors: BTreeMap::new(),
            error_samples: BTreeMap::new(),
            timeline: vec![0; seconds.max(1)],
            last_done: None,
        }
    }

    fn merge(&mut self, other: Tally) {
        for (a, b) in self.phases.iter_mut().zip(&other.phases) {
            let _ = a.add(b);
        }
        self.ok += other.ok;
        self.validation_polls += other.validation_polls;
        self.finalize_polls += other.finalize_polls;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_insert(0) += v;
        }
        for (k, v) in other.error_samples {
            self.error_samples.entry(k).or_insert(v);
        }
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize(other.timeline.len(), 0);
        }
        for (a, b) in self.timeline.iter_mut().zip(&other.timeline) {
            *a += b;
        }
        self.last_done = self.last_done.max(other.last_done);
    }
}

#[derive(Debug, Serialize)]
pub struct PhaseStats {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn stats(h: &Histogram<u64>) -> PhaseStats {
    let ms = |v: u64| v as f64 / 1e6;
    PhaseStats {
        count: h.len(),
        mean_ms: h.mean() / 1e6,
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    }
}

/// The run, as written to `--json`.
#[derive(Debug, Serialize)]
pub struct AcmeReport {
    pub tool: String,
    pub command_line: Vec<String>,
    pub label: String,
    pub directory: String,
    pub started_unix: u64,
    pub finished_unix: u64,
    pub concurrency: u32,
    /// `orders` or `duration`.
    pub mode: String,
    pub warmup_s: f64,
    pub poll_interval_ms: f64,
    pub http1_only: bool,
    pub client_threads: u32,
    /// The names' run label (`o<N>.<run>.<domain>`).
    pub run_label: String,
    pub account_setup_s: f64,
    /// Measured time: the window (duration mode), or warm-up end → last completion.
    pub measured_s: f64,
    pub orders_ok: u64,
    pub orders_failed: u64,
    pub orders_per_s: f64,
    /// Per phase, over the measured orders that completed.
    pub phases: BTreeMap<String, PhaseStats>,
    pub mean_validation_polls: f64,
    pub mean_finalize_polls: f64,
    /// `phase/kind` → count; a sample message per key.
    pub errors: BTreeMap<String, u64>,
    pub error_samples: BTreeMap<String, String>,
    /// Requests the http-01 responder answered during the whole run (warm-up included), and
    /// those for tokens it did not know (404).
    pub http01_answered: u64,
    pub http01_unknown: u64,
    /// Completed orders per second of the window.
    pub timeline: Vec<u64>,
    pub cpu: Option<CpuReport>,
    pub versions: Versions,
    pub machine: Machine,
}

// ------------------------------------------------------------------------------- http-01

/// token → key authorization, shared by the workers and the responder.
type KeyAuths = Arc<Mutex<HashMap<String, String>>>;

#[derive(Debug, Default)]
struct ResponderStats {
    answered: AtomicU64,
    unknown: AtomicU64,
}

async fn serve_http01(
    listener: tokio::net::TcpListener,
    keys: KeyAuths,
    stats: Arc<ResponderStats>,
) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let (keys, stats) = (keys.clone(), stats.clone());
        tokio::spawn(async move {
            let _ = sock.set_nodelay(true);
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 2048];
            // One request per connection (we answer `Connection: close`).
            loop {
                match tokio::time::timeout(Duration::from_secs(10), sock.read(&mut chunk)).await {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return,
                    Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                }
                if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
                if buf.len() > 16 * 1024 {
                    return;
                }
            }
            let head = String::from_utf8_lossy(&buf);
            let path = head
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("");
            let answer = path
                .strip_prefix("/.well-known/acme-challenge/")
                .and_then(|t| keys.lock().ok()?.get(t).cloned());
            let response = match answer {
                Some(body) => {
                    stats.answered.fetch_add(1, Ordering::Relaxed);
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                }
                None => {
                    stats.unknown.fetch_add(1, Ordering::Relaxed);
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_owned()
                }
            };
            let _ = sock.write_all(response.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

// ------------------------------------------------------------------------------- client

fn http_client(args: &AcmeArgs) -> Result<Box<dyn instant_acme::HttpClient>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = &args.root {
        for cert in CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading {}", path.display()))?
        {
            roots
                .add(cert.with_context(|| format!("a certificate in {}", path.display()))?)
                .context("adding the root")?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let connector = if args.http1 {
        builder.enable_http1().build()
    } else {
        builder.enable_http1().enable_http2().build()
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build::<_, BodyWrapper<Bytes>>(connector);
    Ok(Box::new(client))
}

fn csr_for(name: &str) -> Result<Vec<u8>, Failure> {
    let bad = |e: rcgen::Error| failure("finalize", "csr", e.to_string());
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(bad)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(bad)?;
    Ok(params.serialize_request(&key).map_err(bad)?.der().to_vec())
}

/// Why an order went invalid: the first challenge error of its authorizations.
async fn invalid_reason(order: &mut Order, phase: &'static str) -> Failure {
    if let Some(e) = order.state().error.clone() {
        return fail(phase)(instant_acme::Error::Api(e));
    }
    let mut authzs = order.authorizations();
    while let Some(Ok(mut a)) = authzs.next().await {
        if let Ok(state) = a.refresh().await {
            for c in &state.challenges {
                if let Some(e) = &c.error {
                    return fail(phase)(instant_acme::Error::Api(e.clone()));
                }
            }
        }
    }
    failure(
        phase,
        "order-invalid",
        "the order became invalid (no error given)",
    )
}

async fn one_order(
    account: &Account,
    name: String,
    keys: &KeyAuths,
    poll: Duration,
    save_chains: Option<&Path>,
    revoke: bool,
) -> Result<Timing, Failure> {
    let t0 = Instant::now();
    let ids = [Identifier::Dns(name.clone())];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(fail("new-order"))?;
    let t1 = Instant::now();

    // Validation: publish the key authorizations, ask for validation, poll until ready.
    let mut tokens = Vec::new();
    let result = async {
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a = a.map_err(fail("validation"))?;
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(failure(
                        "validation",
                        "authz-state",
                        format!("authorization is {other:?} before validation"),
                    ));
                }
            }
            let mut ch = a.challenge(ChallengeType::Http01).ok_or_else(|| {
                failure("validation", "no-http-01", "no http-01 challenge offered")
            })?;
            let token = ch.token.clone();
            if let Ok(mut map) = keys.lock() {
                map.insert(token.clone(), ch.key_authorization().as_str().to_owned());
            }
            tokens.push(token);
            ch.set_ready().await.map_err(fail("validation"))?;
        }
        Ok(())
    }
    .await;
    let mut validation_polls = 0;
    let result = match result {
        Ok(()) => loop {
            let state = order.refresh().await.map_err(fail("validation"));
            validation_polls += 1;
            match state.map(|s| s.status) {
                Ok(OrderStatus::Ready) => break Ok(()),
                Ok(OrderStatus::Pending | OrderStatus::Processing) => {
                    tokio::time::sleep(poll).await
                }
                Ok(OrderStatus::Invalid) => {
                    break Err(invalid_reason(&mut order, "validation").await);
                }
                Ok(OrderStatus::Valid) => {
                    break Err(failure(
                        "validation",
                        "order-state",
                        "valid before finalize",
                    ));
                }
                Err(e) => break Err(e),
            }
        },
        Err(e) => Err(e),
    };
    if let Ok(mut map) = keys.lock() {
        for t in &tokens {
            map.remove(t);
        }
    }
    result?;
    let t2 = Instant::now();

    // Finalize with a fresh key; poll while processing.
    let csr = csr_for(&name)?;
    let t2b = Instant::now();
    order.finalize_csr(&csr).await.map_err(fail("finalize"))?;
    let mut finalize_polls = 0;
    loop {
        match order.state().status {
            OrderStatus::Valid => break,
            OrderStatus::Processing | OrderStatus::Ready => {
                tokio::time::sleep(poll).await;
                order.refresh().await.map_err(fail("finalize"))?;
                finalize_polls += 1;
            }
            OrderStatus::Invalid => return Err(invalid_reason(&mut order, "finalize").await),
            OrderStatus::Pending => {
                return Err(failure("finalize", "order-state", "pending after finalize"));
            }
        }
    }
    let t3 = Instant::now();
    let chain = order
        .certificate()
        .await
        .map_err(fail("download"))?
        .ok_or_else(|| failure("download", "no-certificate", "no certificate"))?;
    if !chain.contains("-----BEGIN CERTIFICATE-----") {
        return Err(failure(
            "download",
            "not-pem",
            "the chain has no PEM certificate",
        ));
    }
    let t4 = Instant::now();
    if let Some(dir) = save_chains {
        // A few kilobytes to the page cache: not worth a blocking-pool hop.
        std::fs::write(dir.join(format!("{name}.pem")), &chain)
            .map_err(|e| failure("download", "save", e.to_string()))?;
    }
    if revoke {
        use rustls_pki_types::pem::PemObject as _;
        let leaf = rustls_pki_types::CertificateDer::pem_slice_iter(chain.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| failure("revoke", "not-pem", "no certificate in the chain"))?;
        account
            .revoke(&RevocationRequest {
                certificate: &leaf,
                reason: Some(RevocationReason::KeyCompromise),
            })
            .await
            .map_err(fail("revoke"))?;
        if let Some(dir) = save_chains {
            std::fs::write(dir.join(format!("{name}.revoked")), b"")
                .map_err(|e| failure("revoke", "save", e.to_string()))?;
        }
    }
    Ok(Timing {
        phases: [t1 - t0, t2 - t1, t3 - t2b, t4 - t3, (t4 - t0) - (t2b - t2)],
        validation_polls,
        finalize_polls,
    })
}

// ------------------------------------------------------------------------------- the run

struct Plan {
    /// End of the warm-up: orders completing before it are not counted.
    start: Instant,
    /// Duration mode: no order starts after it; completions after it are not counted.
    end: Option<Instant>,
    /// Orders mode: tickets left.
    tickets: Option<AtomicU64>,
    counter: AtomicU64,
    run_label: String,
    domain: String,
    poll: Duration,
    order_timeout: Duration,
    save_chains: Option<PathBuf>,
    revoke_every: Option<u64>,
    stop: AtomicBool,
}

async fn worker(account: Account, plan: Arc<Plan>, keys: KeyAuths, seconds: usize) -> Tally {
    let mut tally = Tally::new(seconds);
    loop {
        if plan.stop.load(Ordering::Relaxed) {
            break;
        }
        let now = Instant::now();
        if plan.end.is_some_and(|end| now >= end) {
            break;
        }
        let measured_start = now >= plan.start;
        if let Some(t) = &plan.tickets
            && measured_start
            && t.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_err()
        {
            break;
        }
        let n = plan.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("o{n}.{}.{}", plan.run_label, plan.domain);
        let outcome = tokio::time::timeout(
            plan.order_timeout,
            one_order(
                &account,
                name,
                &keys,
                plan.poll,
                plan.save_chains.as_deref(),
                plan.revoke_every
                    .is_some_and(|every| n.is_multiple_of(every)),
            ),
        )
        .await
        .unwrap_or_else(|_| {
            Err(failure(
                "total",
                "timeout",
                format!("order not done after {:?}", plan.order_timeout),
            ))
        });
        let done = Instant::now();
        // Orders mode counts the orders started after the warm-up; duration mode the orders
        // completed inside the window.
        let counts = match (&plan.tickets, plan.end) {
            (Some(_), _) => measured_start,
            (None, Some(end)) => done >= plan.start && done <= end,
            (None, None) => false,
        };
        match outcome {
            Ok(t) if counts => {
                tally.ok += 1;
                for (h, d) in tally.phases.iter_mut().zip(t.phases) {
                    let _ = h.record(d.as_nanos().max(1) as u64);
                }
                tally.validation_polls += u64::from(t.validation_polls);
                tally.finalize_polls += u64::from(t.finalize_polls);
                let sec = done.saturating_duration_since(plan.start).as_secs() as usize;
                if sec >= tally.timeline.len() {
                    tally.timeline.resize(sec + 1, 0);
                }
                tally.timeline[sec] += 1;
                tally.last_done = Some(done);
            }
            Ok(_) => {}
            Err(f) => {
                if counts {
                    let key = format!("{}/{}", f.phase, f.kind);
                    *tally.errors.entry(key.clone()).or_insert(0) += 1;
                    tally.error_samples.entry(key).or_insert(f.message);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    tally
}

pub fn run(args: AcmeArgs) -> Result<()> {
    if let Some(dir) = &args.save_chains {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads as usize)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let report = runtime.block_on(run_async(args.clone()))?;
    println!("{}", summary(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if report.orders_ok == 0 {
        bail!("no order completed");
    }
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn run_async(args: AcmeArgs) -> Result<AcmeReport> {
    let started_unix = unix_now();
    let mut watch = CpuProbe::new();
    for w in &args.watch {
        let (role, pid) = w
            .split_once('=')
            .ok_or_else(|| anyhow!("--watch {w}: expected ROLE=PID"))?;
        watch.watch(
            role,
            pid.parse().with_context(|| format!("--watch {w}: pid"))?,
        );
    }

    // The http-01 responder.
    let keys: KeyAuths = Arc::default();
    let rstats = Arc::new(ResponderStats::default());
    let addr = SocketAddr::new(args.http_listen, args.http_port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("http-01 responder on {addr}"))?;
    let responder = tokio::spawn(serve_http01(listener, keys.clone(), rstats.clone()));

    // One account per worker, in parallel.
    let t = Instant::now();
    let mut creating = Vec::new();
    for _ in 0..args.concurrency {
        let http = http_client(&args)?;
        let dir = args.directory.clone();
        creating.push(tokio::spawn(async move {
            Account::builder_with_http(http)
                .create(
                    &NewAccount {
                        contact: &[],
                        terms_of_service_agreed: true,
                        only_return_existing: false,
                    },
                    dir,
                    None,
                )
                .await
        }));
    }
    let mut accounts = Vec::new();
    for c in creating {
        let (account, _) = c
            .await
            .context("account task")?
            .with_context(|| format!("creating an account at {}", args.directory))?;
        accounts.push(account);
    }
    let account_setup_s = t.elapsed().as_secs_f64();

    let mut label = [0u8; 4];
    getrandom::fill(&mut label).map_err(|e| anyhow!("random: {e}"))?;
    let run_label = format!("r{}", hex::encode(label));
    let start = Instant::now() + args.warmup;
    let duration = match (args.orders, args.duration) {
        (Some(_), _) => None,
        (None, d) => Some(d.unwrap_or(Duration::from_secs(20))),
    };
    let end = duration.map(|d| start + d);
    let plan = Arc::new(Plan {
        start,
        end,
        tickets: args.orders.map(AtomicU64::new),
        counter: AtomicU64::new(0),
        run_label: run_label.clone(),
        domain: args.domain.clone(),
        poll: args.poll_interval,
        order_timeout: args.order_timeout,
        save_chains: args.save_chains.clone(),
        revoke_every: args.revoke_every,
        stop: AtomicBool::new(false),
    });
    let seconds = duration.map_or(60, |d| d.as_secs_f64().ceil() as usize);
    let cpu = if let Some(end) = end {
        let window = Window {
            start,
            end,
            bucket: Duration::from_secs(1),
        };
        let probe = watch.clone();
        Some(std::thread::spawn(move || probe.measure(&window)))
    } else {
        None
    };
    let mut workers = Vec::new();
    for account in accounts {
        workers.push(tokio::spawn(worker(
            account,
            plan.clone(),
            keys.clone(),
            seconds,
        )));
    }
    let mut total = Tally::new(seconds);
    for w in workers {
        total.merge(w.await.context("worker task")?);
    }
    responder.abort();
    let cpu = cpu.and_then(|h| h.join().ok().flatten());

    let measured_s = match end {
        Some(end) => (end - start).as_secs_f64(),
        None => total
            .last_done
            .map_or(0.0, |d| d.saturating_duration_since(start).as_secs_f64()),
    };
    let failed: u64 = total.errors.values().sum();
    let n = total.ok.max(1) as f64;
    Ok(AcmeReport {
        tool: format!("hsm-bench {}", env!("CARGO_PKG_VERSION")),
        command_line: std::env::args().collect(),
        label: args.label.clone(),
        directory: args.directory.clone(),
        started_unix,
        finished_unix: unix_now(),
        concurrency: args.concurrency,
        mode: if args.orders.is_some() {
            format!("orders {}", args.orders.unwrap_or(0))
        } else {
            format!("duration {:.1}s", measured_s)
        },
        warmup_s: args.warmup.as_secs_f64(),
        poll_interval_ms: args.poll_interval.as_secs_f64() * 1e3,
        http1_only: args.http1,
        client_threads: args.client_threads,
        run_label,
        account_setup_s,
        measured_s,
        orders_ok: total.ok,
        orders_failed: failed,
        orders_per_s: if measured_s > 0.0 {
            total.ok as f64 / measured_s
        } else {
            0.0
        },
        phases: PHASES
            .iter()
            .zip(&total.phases)
            .map(|(name, h)| ((*name).to_owned(), stats(h)))
            .collect(),
        mean_validation_polls: total.validation_polls as f64 / n,
        mean_finalize_polls: total.finalize_polls as f64 / n,
        errors: total.errors,
        error_samples: total.error_samples,
        http01_answered: rstats.answered.load(Ordering::Relaxed),
        http01_unknown: rstats.unknown.load(Ordering::Relaxed),
        timeline: total.timeline,
        cpu,
        versions: report::versions(None),
        machine: report::machine(),
    })
}

fn summary(r: &AcmeReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "acme {} ({}): {} in flight, {}, warm-up {:.1}s, poll {} ms{}",
        r.label,
        r.directory,
        r.concurrency,
        r.mode,
        r.warmup_s,
        r.poll_interval_ms,
        if r.http1_only { ", HTTP/1.1 only" } else { "" }
    );
    let _ = writeln!(
        out,
        "orders ok {}  failed {}  in {:.2}s  →  {:.1} orders/s   (accounts made in {:.2}s)",
        r.orders_ok, r.orders_failed, r.measured_s, r.orders_per_s, r.account_setup_s
    );
    let _ = writeln!(
        out,
        "{:<11} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "phase", "mean", "p50", "p90", "p99", "max"
    );
    for name in PHASES {
        if let Some(s) = r.phases.get(name) {
            let _ = writeln!(
                out,
                "{:<11} {:>9} {:>9} {:>9} {:>9} {:>9}",
                name,
                report::micros(s.mean_ms * 1e3),
                report::micros(s.p50_ms * 1e3),
                report::micros(s.p90_ms * 1e3),
                report::micros(s.p99_ms * 1e3),
                report::micros(s.max_ms * 1e3),
            );
        }
    }
    let _ = writeln!(
        out,
        "polls per order: validation {:.2}, finalize {:.2}; http-01 answered {} (unknown token {})",
        r.mean_validation_polls, r.mean_finalize_polls, r.http01_answered, r.http01_unknown
    );
    for (k, v) in &r.errors {
        let _ = writeln!(
            out,
            "error {k}: {v}  (e.g. {})",
            r.error_samples.get(k).map_or("", String::as_str)
        );
    }
    if let Some(cpu) = &r.cpu {
        let _ = write!(
            out,
            "CPU (cores): machine {:.2}",
            cpu.machine_busy.unwrap_or(0.0) * r.machine.nproc as f64
        );
        for p in &cpu.processes {
            let _ = write!(out, ", {} {:.2}", p.role, p.cores);
        }
        let _ = writeln!(out);
    }
    out
}
