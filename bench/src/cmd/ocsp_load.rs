//! `ocsp`: load on an OCSP responder (`hsmgate-ocsp serve`, or any RFC 5019 responder) with
//! the mix a CA's responder sees, and a check of every answer.
//!
//! ```text
//!  --serials FILE (import format: serial + status) ──▶ hot set │ cold set
//!  --issuer PEM ──▶ CertID hashes (SHA-1, SHA-256), the key for sampled signature checks
//!
//!  preload: every hot serial asked once (not counted) ──▶ the responder's cache holds them
//!  window: --concurrency tasks, each one request at a time (HTTP/1.1 keep-alive):
//!     kind   hit (hot set) | miss (a cold serial, each asked once) | unknown (random serial)
//!            | malformed (a truncated request)
//!     method GET /{percent-encoded base64} | POST application/ocsp-request
//!     CertID SHA-1 | SHA-256
//!  every answer: decoded (x509-ocsp) and compared with what it must be — the listed status
//!  for known serials, `unauthorized` for unknown ones, `malformedRequest` (HTTP 400) for
//!  malformed ones; every N-th signed answer also has its signature, CertID and times checked
//! ```
//!
//! Requests are built as `openssl ocsp -no_nonce -reqout` builds them (a unit test compares
//! them with OpenSSL's bytes). Latency is per request, from sending it to the last byte of the
//! answer. A wrong answer (status, CertID, signature) fails the run after the report; errors
//! (connections, timeouts, bodies that are no OCSP response) are reported by kind.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use der07::asn1::{Null, ObjectIdentifier, OctetString};
use der07::{Decode, Encode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ocsp::{CertStatus, HashAlg, Issuer, Issuers, Serial};
use serde::Serialize;
use x509_cert_02::spki::AlgorithmIdentifierOwned;
use x509_ocsp::{BasicOcspResponse, CertId, OcspRequest, OcspResponse, OcspResponseStatus};

use crate::measure::{Tally, Timeline};
use crate::options::OcspArgs;
use crate::report::{self, LatencyReport};
use crate::window::Window;

mod results;

use results::{Breakdown, KindReport, OcspParameters, OcspReport, Verification, plot, summary};

/// Requests answered, counted or not: the progress bar's live rate.
static LIVE_REQUESTS: AtomicU64 = AtomicU64::new(0);

const OID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const OID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");

/// What a request asks about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Hit,
    Miss,
    Unknown,
    Malformed,
}

const KINDS: [Kind; 4] = [Kind::Hit, Kind::Miss, Kind::Unknown, Kind::Malformed];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hit => "hit",
            Kind::Miss => "miss",
            Kind::Unknown => "unknown",
            Kind::Malformed => "malformed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What an answer says, as counted in the breakdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Good,
    Revoked,
    /// `certStatus unknown`: hsmgate never sends it (unknown serials are `unauthorized`).
    CertUnknown,
    Status(OcspResponseStatus),
    /// A successful response without a SingleResponse for the serial and hash asked about.
    NotForThisCertificate,
}

impl Answer {
    fn name(self) -> &'static str {
        match self {
            Answer::Good => "good",
            Answer::Revoked => "revoked",
            Answer::CertUnknown => "cert_unknown",
            Answer::Status(OcspResponseStatus::Successful) => "successful",
            Answer::Status(OcspResponseStatus::MalformedRequest) => "malformed",
            Answer::Status(OcspResponseStatus::InternalError) => "internal_error",
            Answer::Status(OcspResponseStatus::TryLater) => "try_later",
            Answer::Status(OcspResponseStatus::SigRequired) => "sig_required",
            Answer::Status(OcspResponseStatus::Unauthorized) => "unauthorized",
            Answer::NotForThisCertificate => "wrong_certificate",
        }
    }

    /// The HTTP status hsmgate's responder sends with this answer.
    fn http_status(self) -> StatusCode {
        match self {
            Answer::Status(OcspResponseStatus::MalformedRequest) => StatusCode::BAD_REQUEST,
            Answer::Status(OcspResponseStatus::TryLater) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::OK,
        }
    }
}

/// What the answer to a request must be.
fn expected(kind: Kind, status: Option<CertStatus>) -> Answer {
    match (kind, status) {
        (Kind::Hit | Kind::Miss, Some(CertStatus::Good)) => Answer::Good,
        (Kind::Hit | Kind::Miss, Some(CertStatus::Revoked { .. })) => Answer::Revoked,
        (Kind::Malformed, _) => Answer::Status(OcspResponseStatus::MalformedRequest),
        _ => Answer::Status(OcspResponseStatus::Unauthorized),
    }
}

/// A small, fast random source per task (SplitMix64).
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let mut seed = [0u8; 8];
        // An unseeded run is still a valid run: fall back on the clock.
        if getrandom::fill(&mut seed).is_err() {
            seed = unix_nanos().to_le_bytes();
        }
        Rng(u64::from_le_bytes(seed))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A DER `OCSPRequest` for `serial`, as `openssl ocsp -no_nonce -reqout` makes it: one
/// Request, the hash AlgorithmIdentifier with NULL parameters, no extensions, unsigned
/// (RFC 6960 §4.1.1, profiled by RFC 5019 §2.1).
pub fn request_der(alg: HashAlg, issuer: &Issuer, serial: &Serial) -> Result<Vec<u8>> {
    let oid = match alg {
        HashAlg::Sha1 => OID_SHA1,
        HashAlg::Sha256 => OID_SHA256,
    };
    let request = OcspRequest {
        tbs_request: x509_ocsp::TbsRequest {
            version: x509_ocsp::Version::V1,
            requestor_name: None,
            request_list: vec![x509_ocsp::Request {
                req_cert: CertId {
                    hash_algorithm: AlgorithmIdentifierOwned {
                        oid,
                        parameters: Some(Null.into()),
                    },
                    issuer_name_hash: OctetString::new(issuer.name_hash.get(alg))?,
                    issuer_key_hash: OctetString::new(issuer.key_hash.get(alg))?,
                    serial_number: ocsp::serial_number(serial)
                        .map_err(|e| anyhow!("serial {serial}: {e}"))?,
                },
                single_request_extensions: None,
            }],
            request_extensions: None,
        },
        optional_signature: None,
    };
    Ok(request.to_der()?)
}

/// RFC 6960 Appendix A.1: `GET {url}/{url-encoding of base-64 encoding of the DER}`.
pub fn get_path(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut path = String::with_capacity(b64.len() + 16);
    for c in b64.chars() {
        match c {
            '+' => path.push_str("%2B"),
            '/' => path.push_str("%2F"),
            '=' => path.push_str("%3D"),
            c => path.push(c),
        }
    }
    path
}

/// Reads the known certificates of `issuer_name` (or the file's only issuer) from an import
/// file, with the project's own import parser.
fn read_serials(
    path: &Path,
    issuer_pem: &[u8],
    issuer_name: Option<&str>,
) -> Result<(Issuer, Vec<(Serial, CertStatus)>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split('#').next())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    names.sort_unstable();
    names.dedup();
    let name = match (issuer_name, names.as_slice()) {
        (Some(n), _) => n.to_owned(),
        (None, [only]) => (*only).to_owned(),
        (None, []) => bail!("{}: no certificates listed", path.display()),
        (None, several) => bail!(
            "{} names several issuers ({}): choose one with --issuer-name",
            path.display(),
            several.join(", ")
        ),
    };
    // Other issuers' lines become blank, so that line numbers in errors stay right.
    let mine: String = text
        .lines()
        .map(|l| {
            let first = l
                .split('#')
                .next()
                .and_then(|c| c.split_whitespace().next());
            if first.is_none_or(|f| f == name) {
                l
            } else {
                ""
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let issuer = Issuer::new(&name, "", issuer_pem).map_err(|e| anyhow!("--issuer: {e}"))?;
    let mut issuers = Issuers::default();
    issuers.add(issuer.clone());
    let items =
        ocsp::presigner::parse_import(&mine, &path.display().to_string(), &issuers, unix_now())
            .map_err(|e| anyhow!("{e}"))?;
    if items.is_empty() {
        bail!("{}: no certificates of issuer `{name}`", path.display());
    }
    Ok((
        issuer,
        items.into_iter().map(|(_, s, st)| (s, st)).collect(),
    ))
}

/// The issuer's P-256 key, for sampled signature checks (none for other key types).
fn verifying_key(issuer: &Issuer) -> Option<p256::ecdsa::VerifyingKey> {
    use p256::pkcs8::DecodePublicKey;
    let cert = x509_cert_02::Certificate::from_der(&issuer.certificate_der).ok()?;
    let spki = cert.tbs_certificate.subject_public_key_info.to_der().ok()?;
    p256::ecdsa::VerifyingKey::from_public_key_der(&spki).ok()
}

/// Everything the tasks share.
#[derive(Debug)]
struct Plan {
    base: String,
    issuer: Issuer,
    key: Option<p256::ecdsa::VerifyingKey>,
    hot: Vec<(Serial, CertStatus)>,
    cold: Vec<(Serial, CertStatus)>,
    cold_next: AtomicUsize,
    known: HashSet<Serial>,
    /// Cumulative thresholds of hit, miss, unknown (malformed: the rest), in [0, 1].
    thresholds: [f64; 3],
    post: f64,
    sha256: f64,
    timeout: Duration,
    verify_every: u64,
}

impl Plan {
    fn kind(&self, rng: &mut Rng) -> Kind {
        let u = rng.unit();
        let [hit, miss, unknown] = self.thresholds;
        if u < hit {
            Kind::Hit
        } else if u < miss {
            Kind::Miss
        } else if u < unknown {
            Kind::Unknown
        } else {
            Kind::Malformed
        }
    }

    /// The serial of a request of `kind`, its listed status, and whether a miss had to reuse
    /// a cold serial (every one asked already).
    fn serial(&self, kind: Kind, rng: &mut Rng) -> (Serial, Option<CertStatus>, bool) {
        match kind {
            Kind::Hit | Kind::Malformed => {
                let (s, st) = &self.hot[rng.below(self.hot.len())];
                (s.clone(), Some(*st), false)
            }
            Kind::Miss => {
                let i = self.cold_next.fetch_add(1, Ordering::Relaxed);
                match self.cold.get(i) {
                    Some((s, st)) => (s.clone(), Some(*st), false),
                    None => {
                        let (s, st) = &self.cold[rng.below(self.cold.len())];
                        (s.clone(), Some(*st), true)
                    }
                }
            }
            Kind::Unknown => loop {
                // 16 random bytes, as a CA's serials; never one the store holds.
                let mut b = [0u8; 16];
                for chunk in b.chunks_mut(8) {
                    chunk.copy_from_slice(&rng.next().to_be_bytes());
                }
                b[0] = (b[0] & 0x7f) | 0x01;
                let s = Serial::from_be_bytes(&b);
                if !self.known.contains(&s) {
                    break (s, None, false);
                }
            },
        }
    }
}

/// What one task saw of one kind.
#[derive(Debug)]
struct KindTally {
    /// Requests answered with an OCSP response (`calls`, latency) or failing (`errors`).
    tally: Tally,
    /// Answers by name (`good`, `unauthorized`, …), in the window.
    answers: BTreeMap<String, u64>,
    /// Wrong answers in the whole run (preload and warm-up included), with a sample of each.
    wrong: u64,
    wrong_samples: BTreeMap<String, String>,
}

impl KindTally {
    fn new(window: &Window) -> Self {
        Self {
            tally: Tally::for_window(window),
            answers: BTreeMap::new(),
            wrong: 0,
            wrong_samples: BTreeMap::new(),
        }
    }

    fn merge(&mut self, other: KindTally) {
        self.tally.merge(other.tally);
        for (k, n) in other.answers {
            *self.answers.entry(k).or_default() += n;
        }
        self.wrong += other.wrong;
        for (k, v) in other.wrong_samples {
            self.wrong_samples.entry(k).or_insert(v);
        }
    }
}

/// What one task saw.
#[derive(Debug)]
struct TaskTally {
    kinds: Vec<KindTally>,
    http_status: BTreeMap<String, u64>,
    methods: BTreeMap<String, u64>,
    hashes: BTreeMap<String, u64>,
    misses_reused: u64,
    signed_seen: u64,
    verified: u64,
    signatures_checked: u64,
    verify_failed: u64,
    verify_samples: Vec<String>,
}

impl TaskTally {
    fn new(window: &Window) -> Self {
        Self {
            kinds: KINDS.iter().map(|_| KindTally::new(window)).collect(),
            http_status: BTreeMap::new(),
            methods: BTreeMap::new(),
            hashes: BTreeMap::new(),
            misses_reused: 0,
            signed_seen: 0,
            verified: 0,
            signatures_checked: 0,
            verify_failed: 0,
            verify_samples: Vec::new(),
        }
    }

    fn merge(&mut self, other: TaskTally) {
        for (a, b) in self.kinds.iter_mut().zip(other.kinds) {
            a.merge(b);
        }
        for (mine, theirs) in [
            (&mut self.http_status, other.http_status),
            (&mut self.methods, other.methods),
            (&mut self.hashes, other.hashes),
        ] {
            for (k, n) in theirs {
                *mine.entry(k).or_default() += n;
            }
        }
        self.misses_reused += other.misses_reused;
        self.signed_seen += other.signed_seen;
        self.verified += other.verified;
        self.signatures_checked += other.signatures_checked;
        self.verify_failed += other.verify_failed;
        for s in other.verify_samples {
            if self.verify_samples.len() < 5 {
                self.verify_samples.push(s);
            }
        }
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Sends one request; `(HTTP status, body)` or the error's code and message.
async fn send(
    client: &HttpClient,
    plan: &Plan,
    method: &Method,
    der: &[u8],
) -> Result<(StatusCode, Bytes), (String, String)> {
    let built = if *method == Method::GET {
        Request::get(format!("{}/{}", plan.base, get_path(der))).body(Full::new(Bytes::new()))
    } else {
        Request::post(format!("{}/", plan.base))
            .header(header::CONTENT_TYPE, "application/ocsp-request")
            .body(Full::new(Bytes::copy_from_slice(der)))
    };
    let request = built.map_err(|e| ("Request".to_owned(), e.to_string()))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| ("Transport".to_owned(), format!("{e:?}")))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ("Transport".to_owned(), e.to_string()))?
            .to_bytes();
        Ok((status, body))
    };
    match tokio::time::timeout(plan.timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err((
            "Timeout".to_owned(),
            format!("no complete answer within {:?}", plan.timeout),
        )),
    }
}

/// A decoded answer, and for a signed one what the sampled check needs.
struct Decoded {
    answer: Answer,
    basic: Option<BasicOcspResponse>,
}

fn decode(body: &[u8], serial: &Serial, alg: HashAlg) -> Result<Decoded, String> {
    let response =
        OcspResponse::from_der(body).map_err(|e| format!("not a DER OCSPResponse: {e}"))?;
    if response.response_status != OcspResponseStatus::Successful {
        return Ok(Decoded {
            answer: Answer::Status(response.response_status),
            basic: None,
        });
    }
    let bytes = response
        .response_bytes
        .ok_or("successful, without responseBytes")?;
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())
        .map_err(|e| format!("responseBytes is not a BasicOCSPResponse: {e}"))?;
    let oid = match alg {
        HashAlg::Sha1 => OID_SHA1,
        HashAlg::Sha256 => OID_SHA256,
    };
    let answer = basic
        .tbs_response_data
        .responses
        .iter()
        .find(|s| {
            s.cert_id.hash_algorithm.oid == oid
                && Serial::from_be_bytes(s.cert_id.serial_number.as_bytes()) == *serial
        })
        .map_or(Answer::NotForThisCertificate, |s| match s.cert_status {
            x509_ocsp::CertStatus::Good(_) => Answer::Good,
            x509_ocsp::CertStatus::Revoked(_) => Answer::Revoked,
            x509_ocsp::CertStatus::Unknown(_) => Answer::CertUnknown,
        });
    Ok(Decoded {
        answer,
        basic: Some(basic),
    })
}

/// The sampled check of a signed answer: the SingleResponse's CertID names our issuer,
/// thisUpdate is not in the future and nextUpdate not past, and (P-256 issuers) the
/// signature verifies over tbsResponseData.
fn verify(plan: &Plan, basic: &BasicOcspResponse, serial: &Serial, alg: HashAlg) -> Result<bool> {
    use p256::ecdsa::signature::Verifier;
    let single = basic
        .tbs_response_data
        .responses
        .iter()
        .find(|s| Serial::from_be_bytes(s.cert_id.serial_number.as_bytes()) == *serial)
        .ok_or_else(|| anyhow!("no SingleResponse for {serial}"))?;
    if single.cert_id.issuer_name_hash.as_bytes()
        != plan.issuer.name_hash.get(single_alg(single, alg))
        || single.cert_id.issuer_key_hash.as_bytes()
            != plan.issuer.key_hash.get(single_alg(single, alg))
    {
        bail!("{serial}: the CertID names another issuer");
    }
    let now = unix_now();
    let secs = |t: &x509_ocsp::OcspGeneralizedTime| t.0.to_unix_duration().as_secs() as i64;
    if secs(&single.this_update) > now + 60 {
        bail!("{serial}: thisUpdate is in the future");
    }
    match &single.next_update {
        Some(next) if secs(next) > now => {}
        Some(_) => bail!("{serial}: nextUpdate has passed"),
        None => bail!("{serial}: no nextUpdate"),
    }
    let Some(key) = &plan.key else {
        return Ok(false);
    };
    let tbs = basic.tbs_response_data.to_der()?;
    let signature = p256::ecdsa::Signature::from_der(basic.signature.raw_bytes())
        .map_err(|e| anyhow!("{serial}: signature is not a DER Ecdsa-Sig-Value: {e}"))?;
    key.verify(&tbs, &signature)
        .map_err(|_| anyhow!("{serial}: the signature does not verify with the issuer's key"))?;
    Ok(true)
}

/// The hash of a SingleResponse's CertID (hsmgate sends SHA-1 and SHA-256 ones).
fn single_alg(single: &x509_ocsp::SingleResponse, asked: HashAlg) -> HashAlg {
    match single.cert_id.hash_algorithm.oid {
        OID_SHA1 => HashAlg::Sha1,
        OID_SHA256 => HashAlg::Sha256,
        _ => asked,
    }
}

/// One request of `kind`: built, sent, decoded, checked; recorded in `t` (counted only when it
/// completes inside `window`, its answer checked always).
async fn one(
    client: &HttpClient,
    plan: &Plan,
    window: &Window,
    kind: Kind,
    serial_choice: Option<(Serial, Option<CertStatus>)>,
    rng: &mut Rng,
    t: &mut TaskTally,
) {
    let (serial, status) = match serial_choice {
        Some(c) => c,
        None => {
            let (s, st, reused) = plan.serial(kind, rng);
            if reused {
                t.misses_reused += 1;
            }
            (s, st)
        }
    };
    let alg = if rng.unit() < plan.sha256 {
        HashAlg::Sha256
    } else {
        HashAlg::Sha1
    };
    let method = if rng.unit() < plan.post {
        Method::POST
    } else {
        Method::GET
    };
    let mut der = match request_der(alg, &plan.issuer, &serial) {
        Ok(d) => d,
        Err(e) => {
            t.kinds[kind.index()]
                .tally
                .error("Request".into(), || e.to_string());
            return;
        }
    };
    if kind == Kind::Malformed {
        // A request cut short, as a broken client or proxy sends it.
        der.truncate(der.len().saturating_sub(3));
    }
    let started = Instant::now();
    let result = send(client, plan, &method, &der).await;
    let done = Instant::now();
    LIVE_REQUESTS.fetch_add(1, Ordering::Relaxed);
    let counted = window.counts(done);
    let kt = &mut t.kinds[kind.index()];
    let (http, body) = match result {
        Ok(r) => r,
        Err((code, message)) => {
            if counted {
                kt.tally.error_at(done, code.clone(), || message);
                *t.http_status.entry(code).or_default() += 1;
            }
            return;
        }
    };
    let want = expected(kind, status);
    let decoded = match decode(&body, &serial, alg) {
        Ok(d) => d,
        Err(why) => {
            if counted {
                let code = format!("HTTP {} (no OCSP response)", http.as_u16());
                kt.tally.error_at(done, code.clone(), || why);
                *t.http_status.entry(http.as_u16().to_string()).or_default() += 1;
            }
            return;
        }
    };
    if decoded.answer != want || http != want.http_status() {
        kt.wrong += 1;
        let key = format!(
            "expected {} (HTTP {}), got {} (HTTP {})",
            want.name(),
            want.http_status().as_u16(),
            decoded.answer.name(),
            http.as_u16()
        );
        kt.wrong_samples
            .entry(key)
            .or_insert_with(|| format!("serial {serial}, {method} {alg:?}"));
    }
    if counted {
        kt.tally.success(1, started, done);
        *kt.answers
            .entry(decoded.answer.name().to_owned())
            .or_default() += 1;
        *t.http_status.entry(http.as_u16().to_string()).or_default() += 1;
        *t.methods.entry(method.as_str().to_owned()).or_default() += 1;
        *t.hashes
            .entry(match alg {
                HashAlg::Sha1 => "sha1".to_owned(),
                HashAlg::Sha256 => "sha256".to_owned(),
            })
            .or_default() += 1;
    }
    if let Some(basic) = &decoded.basic
        && matches!(decoded.answer, Answer::Good | Answer::Revoked)
    {
        t.signed_seen += 1;
        if plan.verify_every > 0 && t.signed_seen % plan.verify_every == 1 % plan.verify_every {
            t.verified += 1;
            match verify(plan, basic, &serial, alg) {
                Ok(signature) => t.signatures_checked += u64::from(signature),
                Err(e) => {
                    t.verify_failed += 1;
                    if t.verify_samples.len() < 5 {
                        t.verify_samples.push(e.to_string());
                    }
                }
            }
        }
    }
}

/// Scrapes `ocsp_cache_requests_total{result="…"}` from the responder's metrics.
async fn cache_counters(client: &HttpClient, url: &str) -> Option<BTreeMap<String, f64>> {
    let request = Request::get(url).body(Full::new(Bytes::new())).ok()?;
    let response = client.request(request).await.ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("ocsp_cache_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let result = labels
            .split(',')
            .find_map(|l| l.strip_prefix("result=\""))
            .map(|r| r.trim_end_matches('"').to_owned());
        if let (Some(result), Ok(v)) = (result, value.trim().parse::<f64>()) {
            out.insert(result, v);
        }
    }
    Some(out)
}

/// Runs `hsm-bench ocsp`.
pub fn run(args: OcspArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads as usize)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let report = runtime.block_on(load(&args))?;
    print!("{}", summary(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        plot(&report, path)?;
    }
    if report.wrong > 0 || report.verification.failed > 0 {
        bail!(
            "the responder gave {} wrong answer(s) and {} sampled answer(s) failed their check",
            report.wrong,
            report.verification.failed
        );
    }
    Ok(())
}

async fn load(args: &OcspArgs) -> Result<OcspReport> {
    let started_unix = unix_now() as u64;
    let base = args.url.trim_end_matches('/').to_owned();
    if !base.starts_with("http://") {
        bail!(
            "--url {}: expected http://HOST:PORT (OCSP is served over plain HTTP)",
            args.url
        );
    }
    let pem = std::fs::read(&args.issuer)
        .with_context(|| format!("reading {}", args.issuer.display()))?;
    let (issuer, known) = read_serials(&args.serials, &pem, args.issuer_name.as_deref())?;
    let key = verifying_key(&issuer);

    // Hot and cold sets from a shuffled list.
    let mut rng = Rng::seeded();
    let mut shuffled = known.clone();
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, rng.below(i + 1));
    }
    let mix = args.mix;
    let hot_n = args
        .hot
        .unwrap_or((known.len() / 10).clamp(1, 10_000))
        .clamp(1, known.len());
    let cold = shuffled.split_off(hot_n);
    let hot = shuffled;
    if mix.miss > 0.0 && cold.is_empty() {
        bail!(
            "the mix has misses but every one of the {} known serials is in the hot set: \
             list more serials or lower --hot",
            known.len()
        );
    }
    let total = mix.hit + mix.miss + mix.unknown + mix.malformed;
    let plan = Arc::new(Plan {
        base: base.clone(),
        known: known.iter().map(|(s, _)| s.clone()).collect(),
        key,
        hot,
        cold,
        cold_next: AtomicUsize::new(0),
        thresholds: [
            mix.hit / total,
            (mix.hit + mix.miss) / total,
            (mix.hit + mix.miss + mix.unknown) / total,
        ],
        post: args.post,
        sha256: args.sha256,
        timeout: args.timeout,
        verify_every: args.verify_every,
        issuer,
    });

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.concurrency as usize)
        .build(connector);

    // Preload: every hot serial once, so that hits are hits.
    let preload_started = Instant::now();
    let far = Window::starting_now(Duration::from_secs(86_400), Duration::from_secs(1));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, plan, next) = (client.clone(), plan.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::seeded();
            let mut t = TaskTally::new(&far);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((s, st)) = plan.hot.get(i) else {
                    break;
                };
                let choice = Some((s.clone(), Some(*st)));
                one(&client, &plan, &far, Kind::Hit, choice, &mut rng, &mut t).await;
            }
            t
        }));
    }
    let mut preload = TaskTally::new(&far);
    for task in tasks {
        preload.merge(task.await.context("a preload task panicked")?);
    }
    let preload_seconds = preload_started.elapsed().as_secs_f64();

    // The measured run.
    let window = Window::starting_now(args.warmup, args.duration).with_bucket(args.interval);
    let bar = crate::progress::phase_counting("ocsp", &window, &LIVE_REQUESTS, "req/s");
    let scrape = args.metrics.clone().map(|url| {
        let client = client.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(window.start.into()).await;
            let before = cache_counters(&client, &url).await;
            tokio::time::sleep_until(window.end.into()).await;
            let after = cache_counters(&client, &url).await;
            before.zip(after).map(|(b, a)| {
                a.iter()
                    .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0.0)))
                    .collect::<BTreeMap<String, f64>>()
            })
        })
    });
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, plan) = (client.clone(), plan.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::seeded();
            let mut t = TaskTally::new(&window);
            while Instant::now() < window.end {
                let kind = plan.kind(&mut rng);
                one(&client, &plan, &window, kind, None, &mut rng, &mut t).await;
            }
            t
        }));
    }
    let mut all = TaskTally::new(&window);
    for task in tasks {
        all.merge(task.await.context("a load task panicked")?);
    }
    drop(bar);
    let responder_cache = match scrape {
        Some(handle) => handle.await.ok().flatten(),
        None => None,
    };

    // Preload answers count only for their wrongness.
    for (a, p) in all.kinds.iter_mut().zip(&preload.kinds) {
        a.wrong += p.wrong;
        for (k, v) in &p.wrong_samples {
            a.wrong_samples
                .entry(format!("preload: {k}"))
                .or_insert_with(|| v.clone());
        }
    }
    all.verified += preload.verified;
    all.signatures_checked += preload.signatures_checked;
    all.verify_failed += preload.verify_failed;
    all.verify_samples.extend(preload.verify_samples);

    let seconds = window.seconds();
    let mut latency_all = crate::measure::histogram();
    let mut timeline = Timeline::default();
    let mut breakdown = Breakdown::default();
    let mut requests = 0;
    let mut kinds = Vec::new();
    for (kind, kt) in KINDS.iter().zip(all.kinds) {
        let n = kt.tally.calls + kt.tally.error_count();
        requests += n;
        let _ = latency_all.add(&kt.tally.latency);
        let t = kt.tally.timeline.clone();
        if timeline.signatures.is_empty() {
            timeline = t.clone();
        } else {
            for (a, b) in timeline.signatures.iter_mut().zip(&t.signatures) {
                *a += b;
            }
            for (a, b) in timeline.errors.iter_mut().zip(&t.errors) {
                *a += b;
            }
        }
        for (answer, count) in &kt.answers {
            let slot = match answer.as_str() {
                "good" => &mut breakdown.good,
                "revoked" => &mut breakdown.revoked,
                "unauthorized" => &mut breakdown.unauthorized,
                "malformed" => &mut breakdown.malformed,
                "try_later" => &mut breakdown.try_later,
                _ => &mut breakdown.other_ocsp,
            };
            *slot += count;
        }
        breakdown.http_errors += kt.tally.error_count();
        let expected = match kind {
            Kind::Hit | Kind::Miss => "the listed status (good or revoked), HTTP 200",
            Kind::Unknown => "unauthorized, HTTP 200",
            Kind::Malformed => "malformedRequest, HTTP 400",
        };
        kinds.push(KindReport {
            kind: *kind,
            expected: expected.to_owned(),
            requests: n,
            share: 0.0,
            requests_per_s: n as f64 / seconds,
            latency: LatencyReport::new("one HTTP request", &kt.tally.latency),
            answers: kt.answers,
            wrong: kt.wrong,
            wrong_samples: kt.wrong_samples,
            errors: kt.tally.errors,
            error_samples: kt.tally.error_samples,
            timeline: t,
        });
    }
    for k in &mut kinds {
        k.share = if requests > 0 {
            k.requests as f64 / requests as f64
        } else {
            0.0
        };
    }
    let wrong = kinds.iter().map(|k| k.wrong).sum();
    let known_revoked = known.iter().filter(|(_, s)| s.is_revoked()).count();
    Ok(OcspReport {
        tool: format!("hsm-bench {} ocsp", env!("CARGO_PKG_VERSION")),
        command_line: std::env::args().collect(),
        started_unix,
        finished_unix: unix_now() as u64,
        url: base,
        issuer_file: args.issuer.display().to_string(),
        issuer_name: plan.issuer.name.0.clone(),
        serials_file: args.serials.display().to_string(),
        known: known.len(),
        known_good: known.len() - known_revoked,
        known_revoked,
        hot: plan.hot.len(),
        cold: plan.cold.len(),
        parameters: OcspParameters {
            mix,
            post_share: args.post,
            sha256_share: args.sha256,
            concurrency: args.concurrency,
            client_threads: args.client_threads,
            duration_s: args.duration.as_secs_f64(),
            warmup_s: args.warmup.as_secs_f64(),
            timeout_s: args.timeout.as_secs_f64(),
            verify_every: args.verify_every,
            interval_ms: window.bucket.as_secs_f64() * 1e3,
        },
        versions: report::versions(None),
        machine: report::machine(),
        preload_requests: plan.hot.len(),
        preload_seconds,
        seconds,
        requests,
        requests_per_s: requests as f64 / seconds,
        latency: LatencyReport::new("one HTTP request", &latency_all),
        kinds,
        breakdown,
        http_status: all.http_status,
        methods: all.methods,
        hashes: all.hashes,
        wrong,
        misses_reused: all.misses_reused,
        verification: Verification {
            every: args.verify_every,
            checked: all.verified,
            signatures_checked: all.signatures_checked,
            failed: all.verify_failed,
            samples: all.verify_samples,
            note: plan
                .key
                .is_none()
                .then(|| "the issuer's key is not P-256: signatures were not checked".into()),
        },
        responder_cache,
        timeline,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const CA: &[u8] = include_bytes!("../../../ocsp/tests/data/ca.pem");
    const REQ_SHA1: &[u8] = include_bytes!("../../../ocsp/tests/data/req-sha1.der");
    const REQ_SHA256: &[u8] = include_bytes!("../../../ocsp/tests/data/req-sha256.der");

    #[test]
    fn requests_are_byte_for_byte_what_openssl_sends() {
        let issuer = Issuer::new("test", "", CA).unwrap();
        let serial = Serial::from_hex("1001").unwrap();
        assert_eq!(
            request_der(HashAlg::Sha1, &issuer, &serial).unwrap(),
            REQ_SHA1
        );
        assert_eq!(
            request_der(HashAlg::Sha256, &issuer, &serial).unwrap(),
            REQ_SHA256
        );
        // ... and the responder's parser reads them back.
        let parsed = ocsp::parse_request(REQ_SHA256).unwrap();
        assert_eq!(parsed.serial, serial);
    }

    #[test]
    fn get_paths_escape_base64() {
        assert_eq!(get_path(&[0xfb, 0xff]), "%2B%2F8%3D");
        assert!(!get_path(REQ_SHA1).contains(['+', '/', '=']));
    }

    #[test]
    fn answers_are_decoded() {
        let unauthorized = [0x30, 0x03, 0x0a, 0x01, 0x06];
        let serial = Serial::from_hex("1001").unwrap();
        let d = decode(&unauthorized, &serial, HashAlg::Sha1).unwrap();
        assert_eq!(d.answer, Answer::Status(OcspResponseStatus::Unauthorized));
        assert_eq!(d.answer, expected(Kind::Unknown, None));
        assert!(decode(b"<html>", &serial, HashAlg::Sha1).is_err());
        assert_eq!(
            expected(Kind::Malformed, None).http_status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn import_lines_of_other_issuers_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certs.txt");
        std::fs::write(
            &path,
            "# list\nca-a 1001 good\nca-b 2002 good\nca-a 1003 revoked 2026-11-01T00:00:00Z 1\n",
        )
        .unwrap();
        assert!(read_serials(&path, CA, None).is_err(), "two issuers");
        let (issuer, items) = read_serials(&path, CA, Some("ca-a")).unwrap();
        assert_eq!(issuer.name.0, "ca-a");
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[0],
            (Serial::from_hex("1001").unwrap(), CertStatus::Good)
        );
        assert!(items[1].1.is_revoked());
    }
}
