//! The responder end to end, in-process on 127.0.0.1:0: a real `SqliteStore` (temp file)
//! holding responses signed by a throwaway OpenSSL CA, queried by clients nobody here wrote
//! (`openssl ocsp` over POST, `curl` over GET) and by a raw HTTP/1.1 client that controls every
//! byte of the request line (for `//`, `+` and escapes in the GET path).
//!
//! Needs `openssl` and `curl` on PATH (Debian's packages; both are on the CI image).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use der07::Decode;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use x509_ocsp::{BasicOcspResponse, OcspResponse};

use ocsp::metrics::{self, Metrics};
use ocsp::responder::{AppState, router};
use ocsp::store::ResponseStore;
use ocsp::store::SqliteStore;
use ocsp::{
    CachedSource, CertStatus, Error, HashAlg, Health, Issuer, IssuerName, Issuers, Serial,
    StoreSource, StoredResponse,
};

const ISSUER: &str = "test-ca";
const MALFORMED: &[u8] = &[0x30, 0x03, 0x0a, 0x01, 0x01];
const TRY_LATER: &[u8] = &[0x30, 0x03, 0x0a, 0x01, 0x03];
const UNAUTHORIZED: &[u8] = &[0x30, 0x03, 0x0a, 0x01, 0x06];

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ---------------------------------------------------------------------------------------------
// A throwaway CA, and responses signed by `openssl ocsp` acting as a responder.

struct Pki {
    dir: tempfile::TempDir,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("openssl")
            .current_dir(dir.path())
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .args(["-keyout", "ca.key", "-out", "ca.pem", "-days", "30"])
            .args(["-subj", "/CN=hsmgate responder test CA/O=hsmgate"]));
        std::fs::write(dir.path().join("index.txt"), "").unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.path("ca.pem")).unwrap()
    }

    /// Records `serial` (hex, no 0x) in the CA database as valid, or revoked for keyCompromise
    /// on 2026-11-01, replacing an earlier line for it.
    fn set_status(&self, serial: &str, revoked: bool) {
        let serial = serial.to_uppercase();
        let index = std::fs::read_to_string(self.path("index.txt")).unwrap();
        let mut lines: Vec<String> = index
            .lines()
            .filter(|l| l.split('\t').nth(3) != Some(serial.as_str()))
            .map(str::to_owned)
            .collect();
        lines.push(if revoked {
            format!(
                "R\t361231235959Z\t261101120000Z,keyCompromise\t{serial}\tunknown\t/CN={serial}"
            )
        } else {
            format!("V\t361231235959Z\t\t{serial}\tunknown\t/CN={serial}")
        });
        std::fs::write(self.path("index.txt"), lines.join("\n") + "\n").unwrap();
    }

    /// An OCSP request for `serial` made by `openssl ocsp -reqout`.
    fn request(&self, serial: &str, sha256: bool) -> Vec<u8> {
        let mut cmd = Command::new("openssl");
        cmd.current_dir(self.dir.path()).arg("ocsp");
        if sha256 {
            cmd.arg("-sha256");
        }
        run(cmd
            .args([
                "-issuer",
                "ca.pem",
                "-serial",
                &format!("0x{serial}"),
                "-no_nonce",
            ])
            .args(["-reqout", "req.der"]));
        std::fs::read(self.path("req.der")).unwrap()
    }

    /// The response `openssl ocsp` as a responder gives to `request` (valid 4 days).
    fn respond(&self, request: &[u8]) -> Vec<u8> {
        std::fs::write(self.path("in.der"), request).unwrap();
        run(Command::new("openssl")
            .current_dir(self.dir.path())
            .args([
                "ocsp",
                "-index",
                "index.txt",
                "-CA",
                "ca.pem",
                "-rsigner",
                "ca.pem",
            ])
            .args([
                "-rkey", "ca.key", "-reqin", "in.der", "-respout", "out.der", "-ndays", "4",
            ]));
        std::fs::read(self.path("out.der")).unwrap()
    }

    /// `openssl ocsp` checking a response it was handed (from GET, where it cannot fetch).
    fn verify_response(&self, der: &[u8], serial: &str) -> String {
        std::fs::write(self.path("check.der"), der).unwrap();
        run(Command::new("openssl")
            .current_dir(self.dir.path())
            .args([
                "ocsp",
                "-respin",
                "check.der",
                "-issuer",
                "ca.pem",
                "-CAfile",
                "ca.pem",
            ])
            .args(["-serial", &format!("0x{serial}")]))
    }
}

/// thisUpdate and nextUpdate of a response, read back from its DER.
fn times(der: &[u8]) -> (i64, i64) {
    let resp = OcspResponse::from_der(der).unwrap();
    let basic =
        BasicOcspResponse::from_der(resp.response_bytes.unwrap().response.as_bytes()).unwrap();
    let single = &basic.tbs_response_data.responses[0];
    let secs = |t: &x509_ocsp::OcspGeneralizedTime| t.0.to_unix_duration().as_secs() as i64;
    (
        secs(&single.this_update),
        secs(single.next_update.as_ref().unwrap()),
    )
}

fn stored(der: Vec<u8>, status: CertStatus) -> StoredResponse {
    let (this_update, next_update) = times(&der);
    StoredResponse {
        status,
        this_update,
        next_update,
        der,
        http: Default::default(),
    }
}

const KEY_COMPROMISE: CertStatus = CertStatus::Revoked {
    at: 1_793_534_400,
    reason: Some(1),
};

// ---------------------------------------------------------------------------------------------
// The store: real SQLite, with a switch that makes every call fail (a store that went away).

#[derive(Debug)]
struct Flaky {
    inner: SqliteStore,
    down: AtomicBool,
}

#[async_trait]
impl ResponseStore for Flaky {
    fn kind(&self) -> &'static str {
        "sqlite"
    }
    async fn get(
        &self,
        issuer: &IssuerName,
        serial: &Serial,
    ) -> Result<Option<StoredResponse>, Error> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Store {
                store: "sqlite",
                detail: "test: store is down".into(),
            });
        }
        self.inner.get(issuer, serial).await
    }
    async fn get_for(
        &self,
        issuer: &IssuerName,
        serial: &Serial,
        hash: HashAlg,
    ) -> Result<Option<StoredResponse>, Error> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Store {
                store: "sqlite",
                detail: "test: store is down".into(),
            });
        }
        self.inner.get_for(issuer, serial, hash).await
    }
    async fn put(
        &self,
        issuer: &IssuerName,
        serial: &Serial,
        response: &StoredResponse,
    ) -> Result<bool, Error> {
        self.inner.put(issuer, serial, response).await
    }
}

// ---------------------------------------------------------------------------------------------
// The responder, in-process.

struct Server {
    addr: SocketAddr,
    store: Arc<Flaky>,
    registry: Arc<Registry>,
    health: Arc<Health>,
    pki: Pki,
    _db: tempfile::TempDir,
}

impl Server {
    async fn start(fresh: Duration) -> Self {
        let pki = Pki::new();
        let db = tempfile::tempdir().unwrap();
        let store = Arc::new(Flaky {
            inner: SqliteStore::open(db.path().join("ocsp.db")).unwrap(),
            down: AtomicBool::new(false),
        });
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let health = Health::new(metrics.clone());
        let inner = StoreSource::new(store.clone(), health.clone(), metrics.clone());
        let source = CachedSource::new(inner, 1 << 20, fresh, metrics.clone());
        let mut issuers = Issuers::default();
        issuers.add(Issuer::new(ISSUER, "ca-key", &pki.ca_pem()).unwrap());
        let state = Arc::new(AppState {
            issuers: Arc::new(issuers),
            source: Arc::new(source),
            metrics,
            max_request_bytes: 10_000,
            crl: None,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(state, 1)).await });
        Self {
            addr,
            store,
            registry: Arc::new(registry),
            health,
            pki,
            _db: db,
        }
    }

    /// Marks `serial` good (or revoked) in the CA database, has OpenSSL sign a response for the
    /// request `openssl ocsp` makes for it, and stores it. Returns the DER.
    async fn publish(&self, serial: &str, revoked: bool, sha256: bool) -> Vec<u8> {
        self.pki.set_status(serial, revoked);
        let der = self.pki.respond(&self.pki.request(serial, sha256));
        self.put(serial, der.clone(), revoked).await;
        der
    }

    async fn put(&self, serial: &str, der: Vec<u8>, revoked: bool) {
        let status = if revoked {
            KEY_COMPROMISE
        } else {
            CertStatus::Good
        };
        let serial = Serial::from_hex(serial).unwrap();
        let stored = stored(der, status);
        assert!(
            self.store
                .put(&IssuerName(ISSUER.into()), &serial, &stored)
                .await
                .unwrap()
        );
    }

    fn metrics(&self) -> String {
        metrics::encode(&self.registry)
    }

    /// `openssl ocsp` as a client of this server (off the runtime: it blocks).
    async fn openssl(&self, serial: &str, extra: &[&str]) -> String {
        let (addr, dir) = (self.addr, self.pki.dir.path().to_owned());
        let serial = serial.to_owned();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let out = Command::new("openssl")
                .current_dir(&dir)
                .arg("ocsp")
                .args(&extra)
                .args([
                    "-issuer",
                    "ca.pem",
                    "-CAfile",
                    "ca.pem",
                    "-serial",
                    &format!("0x{serial}"),
                ])
                .args(["-url", &format!("http://{addr}/")])
                .output()
                .unwrap();
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .await
        .unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client: the request line goes out exactly as written.

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn http(addr: SocketAddr, head: &str, body: &[u8]) -> Reply {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let request = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    // The server may answer (413) and close before reading a large body: a failed write is
    // expected then, and the answer is still there to read.
    let _ = conn.write_all(body).await;
    let mut raw = Vec::new();
    let _ = conn.read_to_end(&mut raw).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

async fn get(addr: SocketAddr, path: &str, extra_headers: &str) -> Reply {
    let head = if extra_headers.is_empty() {
        format!("GET {path} HTTP/1.1")
    } else {
        format!("GET {path} HTTP/1.1\r\n{extra_headers}")
    };
    http(addr, &head, b"").await
}

async fn post(addr: SocketAddr, content_type: Option<&str>, body: &[u8]) -> Reply {
    let mut head = format!("POST / HTTP/1.1\r\nContent-Length: {}", body.len());
    if let Some(ct) = content_type {
        head.push_str(&format!("\r\nContent-Type: {ct}"));
    }
    http(addr, &head, body).await
}

fn assert_refused(reply: &Reply, http_status: u16, body: &[u8]) {
    assert_eq!(reply.status, http_status, "{reply:?}");
    assert_eq!(reply.body, body, "{reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/ocsp-response")
    );
    assert_eq!(reply.header("cache-control"), Some("max-age=0, no-cache"));
    assert_eq!(reply.header("etag"), None);
}

fn percent_encode_all(b64: &str) -> String {
    b64.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_over_post_gets_good_revoked_and_unauthorized() {
    let s = Server::start(Duration::from_secs(5)).await;
    s.publish("1001", false, false).await;
    s.publish("1002", true, false).await;
    s.publish("1003", false, true).await; // a SHA-256 CertID response

    let out = s.openssl("1001", &["-no_nonce"]).await;
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(out.contains("0x1001: good"), "{out}");

    // With a nonce (openssl's default): ignored, and openssl still accepts the answer.
    let out = s.openssl("1002", &[]).await;
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(out.contains("0x1002: revoked"), "{out}");
    assert!(out.contains("Reason: keyCompromise"), "{out}");
    assert!(
        out.contains("Revocation Time: Nov  1 12:00:00 2026 GMT"),
        "{out}"
    );

    let out = s.openssl("1003", &["-sha256", "-no_nonce"]).await;
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(out.contains("0x1003: good"), "{out}");

    // Never issued: unauthorized, never good.
    let out = s.openssl("1004", &["-no_nonce"]).await;
    assert!(out.contains("Responder Error: unauthorized (6)"), "{out}");
    assert!(!out.contains("good"), "{out}");

    let m = s.metrics();
    assert!(
        m.contains(r#"ocsp_responses_total{status="good",source="store"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"ocsp_responses_total{status="revoked",source="store"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"ocsp_responses_total{status="unauthorized",source="none"} 1"#),
        "{m}"
    );
}

/// A stored response answers only requests whose CertID hash it has a SingleResponse for
/// (`presigner.cert_id_hashes = ["sha1"]` or `["sha256"]` leaves one): the other hash gets
/// `unauthorized`, not a signed response the client cannot match to its request. OpenSSL as
/// the responder signs exactly one SingleResponse, with the request's hash, so these are
/// single-hash responses made by someone else. Requests are counted by CertID hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_cert_id_hash_the_response_lacks_is_unauthorized() {
    // Fresh for a minute: the second GET of 2001 must be a cache hit however slow the machine.
    let s = Server::start(Duration::from_secs(60)).await;
    s.publish("2001", false, false).await; // SHA-1 CertID only
    s.publish("2002", true, true).await; // SHA-256 CertID only

    let out = s.openssl("2001", &["-no_nonce"]).await;
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(out.contains("0x2001: good"), "{out}");
    let out = s.openssl("2001", &["-sha256", "-no_nonce"]).await;
    assert!(out.contains("Responder Error: unauthorized (6)"), "{out}");
    assert!(!out.contains("good"), "{out}");

    let out = s.openssl("2002", &["-sha256", "-no_nonce"]).await;
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(out.contains("0x2002: revoked"), "{out}");
    let out = s.openssl("2002", &["-no_nonce"]).await;
    assert!(out.contains("Responder Error: unauthorized (6)"), "{out}");
    assert!(!out.contains("revoked"), "{out}");

    // Over GET, byte for byte, and from the cache this time (the entry is held, the refusal
    // is per request): the bare `unauthorized` with no-cache headers, no ETag.
    for _ in 0..2 {
        let req = s.pki.request("2001", true);
        let reply = get(s.addr, &format!("/{}", B64.encode(&req)), "").await;
        assert_refused(&reply, 200, UNAUTHORIZED);
        // …and with an If-None-Match that the stored response's ETag would have matched.
        let reply = get(
            s.addr,
            &format!("/{}", B64.encode(&req)),
            "If-None-Match: *",
        )
        .await;
        assert_refused(&reply, 200, UNAUTHORIZED);
    }
    let req = s.pki.request("2001", false);
    let reply = get(s.addr, &format!("/{}", B64.encode(&req)), "").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.header("etag").is_some(), "{reply:?}");

    // A hash this service does not serve at all (SHA-512) is counted as `other`.
    let reply = post(
        s.addr,
        Some("application/ocsp-request"),
        include_bytes!("data/req-sha512.der"),
    )
    .await;
    assert_refused(&reply, 200, UNAUTHORIZED);

    let m = s.metrics();
    for line in [
        // openssl 2001 sha1, 2002 sha1, one GET sha1.
        r#"ocsp_requests_by_cert_id_hash_total{hash="sha1"} 3"#,
        // openssl 2001 sha256, 2002 sha256, four GETs sha256.
        r#"ocsp_requests_by_cert_id_hash_total{hash="sha256"} 6"#,
        r#"ocsp_requests_by_cert_id_hash_total{hash="other"} 1"#,
        r#"ocsp_responses_total{status="unauthorized",source="none"} 7"#,
        r#"ocsp_responses_total{status="good",source="store"} 1"#,
        r#"ocsp_responses_total{status="good",source="cache"} 1"#,
        r#"ocsp_responses_total{status="revoked",source="store"} 1"#,
    ] {
        assert!(m.contains(line), "{line} missing from:\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_sets_caching_headers_and_honours_if_none_match() {
    let s = Server::start(Duration::from_secs(5)).await;
    let der = s.publish("1001", false, false).await;
    let (this_update, next_update) = times(&der);
    let b64 = B64.encode(s.pki.request("1001", false));

    let r = get(s.addr, &format!("/{b64}"), "").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, der);
    assert_eq!(r.header("content-type"), Some("application/ocsp-response"));
    let fmt = |t: i64| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(t as u64));
    assert_eq!(r.header("last-modified"), Some(fmt(this_update).as_str()));
    assert_eq!(r.header("expires"), Some(fmt(next_update).as_str()));
    let cc = r.header("cache-control").unwrap();
    let max_age: i64 = cc
        .strip_prefix("max-age=")
        .and_then(|rest| rest.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!((next_update - now() - max_age).abs() <= 2, "{cc}");
    assert!(
        cc.ends_with(", public, no-transform, must-revalidate"),
        "{cc}"
    );
    let etag = format!(
        "\"{}\"",
        hex::encode(<sha2_010::Sha256 as sha2_010::Digest>::digest(&der))
    );
    assert_eq!(r.header("etag"), Some(etag.as_str()));

    // What GET served is what openssl verifies.
    let out = s.pki.verify_response(&r.body, "1001");
    assert!(
        out.contains("Response verify OK") && out.contains("0x1001: good"),
        "{out}"
    );

    // Revalidation: 304, no body, the same caching headers.
    let r304 = get(
        s.addr,
        &format!("/{b64}"),
        &format!("If-None-Match: {etag}"),
    )
    .await;
    assert_eq!(r304.status, 304, "{r304:?}");
    assert!(r304.body.is_empty());
    assert_eq!(r304.header("etag"), Some(etag.as_str()));
    assert_eq!(r304.header("expires"), r.header("expires"));
    assert!(
        r304.header("cache-control")
            .unwrap()
            .contains("must-revalidate")
    );
    let other = get(s.addr, &format!("/{b64}"), "If-None-Match: \"0000\"").await;
    assert_eq!(other.status, 200);
    assert_eq!(other.body, der);

    // POST answers identically.
    let p = post(
        s.addr,
        Some("application/ocsp-request"),
        &s.pki.request("1001", false),
    )
    .await;
    assert_eq!(p.status, 200);
    assert_eq!(p.body, der);
    assert_eq!(p.header("etag"), Some(etag.as_str()));

    // A SHA-256 CertID names the same certificate, but OpenSSL signed this response for a
    // SHA-1 request: it holds no SingleResponse a SHA-256 client could match, so that client
    // gets `unauthorized` rather than these bytes (see
    // `a_request_whose_cert_id_hash_the_response_lacks_is_unauthorized`).
    let b64_256 = B64.encode(s.pki.request("1001", true));
    let r256 = get(s.addr, &format!("/{b64_256}"), "").await;
    assert_refused(&r256, 200, UNAUTHORIZED);

    // Served twice from the cache by now; the refusal is not counted as served.
    let m = s.metrics();
    assert!(
        m.contains(r#"ocsp_responses_total{status="good",source="cache"}"#),
        "{m}"
    );
    assert!(
        m.contains(r#"ocsp_cache_requests_total{result="hit"}"#),
        "{m}"
    );
    assert!(m.contains("ocsp_response_age_seconds_count 4"), "{m}");
    assert!(
        m.contains("ocsp_response_time_to_expiry_seconds_count 4"),
        "{m}"
    );
}

/// `HEAD` (RFC 9110 §9.3.2) on every kind of GET URL gets GET's status and header fields,
/// Content-Length included, and no body — through the raw client (which sees every byte the
/// server sends) and through `curl -I`. It answered 405 before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_like_get_without_a_body() {
    let s = Server::start(Duration::from_secs(5)).await;
    let der = s.publish("1001", false, false).await;
    let b64 = B64.encode(s.pki.request("1001", false));
    let unknown = B64.encode(s.pki.request("1002", false));
    let etag = format!(
        "\"{}\"",
        hex::encode(<sha2_010::Sha256 as sha2_010::Digest>::digest(&der))
    );
    let cases: [(String, String, u16); 7] = [
        (format!("/{b64}"), String::new(), 200),
        // A client that built `{url}/{b64}` from a URL ending in `/`, and full escaping.
        (
            format!("//{}", percent_encode_all(&b64)),
            String::new(),
            200,
        ),
        (format!("/{b64}"), format!("If-None-Match: {etag}"), 304),
        (format!("/{unknown}"), String::new(), 200),
        ("/not-base64!".into(), String::new(), 400),
        ("/".into(), String::new(), 400),
        (format!("/{}", "A".repeat(50_000)), String::new(), 414),
    ];
    for (path, extra, status) in &cases {
        let got = get(s.addr, path, extra).await;
        let head = if extra.is_empty() {
            format!("HEAD {path} HTTP/1.1")
        } else {
            format!("HEAD {path} HTTP/1.1\r\n{extra}")
        };
        let r = http(s.addr, &head, b"").await;
        let what = &path[..path.len().min(40)];
        assert_eq!(got.status, *status, "GET {what}: {got:?}");
        assert_eq!(r.status, got.status, "HEAD {what}: {r:?}");
        assert!(r.body.is_empty(), "HEAD {what} sent a body: {r:?}");
        // Every header GET sent, with the same value (Date may tick between the two).
        let without_date = |reply: &Reply| {
            let mut h: Vec<(String, String)> = reply
                .headers
                .iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("date"))
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect();
            h.sort();
            h
        };
        let (get_headers, head_headers) = (without_date(&got), without_date(&r));
        // max-age counts down by the second: compare it within one second.
        let strip_age = |h: &[(String, String)]| -> Vec<(String, String)> {
            h.iter()
                .filter(|(k, _)| k != "cache-control" && (*status != 304 || k != "content-length"))
                .cloned()
                .collect()
        };
        assert_eq!(
            strip_age(&head_headers),
            strip_age(&get_headers),
            "HEAD {what}"
        );
        let cc = |reply: &Reply| reply.header("cache-control").map(str::to_owned);
        if *status == 200 && got.header("etag").is_some() {
            let age = |v: Option<String>| -> i64 {
                v.unwrap()
                    .strip_prefix("max-age=")
                    .and_then(|rest| rest.split(',').next())
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            assert!((age(cc(&got)) - age(cc(&r))).abs() <= 1, "HEAD {what}");
        } else {
            assert_eq!(cc(&r), cc(&got), "HEAD {what}");
        }
        if *status == 304 {
            // RFC 9110 §8.6: on a 304, only the length a 200 would have.
            for reply in [&got, &r] {
                if let Some(n) = reply.header("content-length") {
                    assert_eq!(n, der.len().to_string(), "{reply:?}");
                }
            }
        } else {
            assert_eq!(
                r.header("content-length"),
                Some(got.body.len().to_string().as_str()),
                "HEAD {what}: {r:?}"
            );
        }
    }

    // curl -I: what caches and probes send.
    let url = format!("http://{}/{}", s.addr, percent_encode_all(&b64));
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "-I", "--max-time", "10", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(
        lower.contains(&format!("content-length: {}\r\n", der.len())),
        "{text}"
    );
    assert!(
        lower.contains("content-type: application/ocsp-response"),
        "{text}"
    );
    assert!(lower.contains(&format!("etag: {etag}")), "{text}");
}

/// A 3-byte serial whose SHA-1 request's base64 holds `//`, `+` and `=` padding. The
/// request's layout is fixed (the CA's hashes are fixed-length), so the last base64 groups
/// are the serial's bytes; search rather than hard-code offsets.
fn awkward_serial(template: &[u8]) -> (String, Vec<u8>) {
    // template: a request for serial 0x1001 (`02 02 10 01` at its end).
    assert_eq!(&template[template.len() - 4..], &[0x02, 0x02, 0x10, 0x01]);
    for a in 0x10u8..0x7f {
        for b in [0xff, 0xfe, 0xfb, 0xf7, 0xef, 0xbf] {
            for c in 0u8..=0xff {
                let mut der = template[..template.len() - 4].to_vec();
                der.extend_from_slice(&[0x02, 0x03, a, b, c]);
                // Five enclosing SEQUENCEs, short-form lengths: one byte longer each.
                for at in [1, 3, 5, 7, 9] {
                    der[at] += 1;
                }
                let b64 = B64.encode(&der);
                if b64.contains("//") && b64.contains('+') && b64.ends_with('=') {
                    return (hex::encode([a, b, c]), der);
                }
            }
        }
    }
    panic!("no serial gives // and + in base64");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_paths_with_slashes_plus_and_escapes_reach_the_right_response() {
    let s = Server::start(Duration::from_secs(5)).await;
    let (serial, request) = awkward_serial(&s.pki.request("1001", false));
    s.pki.set_status(&serial, false);
    let der = s.pki.respond(&request);
    s.put(&serial, der.clone(), false).await;
    let b64 = B64.encode(&request);
    assert!(b64.contains("//") && b64.contains('+'), "{b64}");

    for path in [
        format!("/{b64}"),
        format!("/{}", b64.trim_end_matches('=')),
        format!("//{b64}"),
        format!("/{}", percent_encode_all(&b64)),
        format!("/{}", b64.replace('+', "%20")),
        format!("/{}", b64.replace('/', "%2f")),
        format!("/{b64}?cache-buster=1"),
    ] {
        let r = get(s.addr, &path, "").await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.body, der, "{path}");
    }

    // curl, with `//` and `+` as they are (`--path-as-is`: no dot-segment squashing).
    let (addr, dir) = (s.addr, s.pki.dir.path().to_owned());
    let out = tokio::task::spawn_blocking(move || {
        run(Command::new("curl")
            .current_dir(&dir)
            .args(["-sS", "--fail", "--path-as-is", "-o", "curl.der"])
            .arg(format!("http://{addr}/{b64}")));
        std::fs::read(dir.join("curl.der")).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out, der);
    let checked = s.pki.verify_response(&out, &serial);
    assert!(checked.contains("Response verify OK"), "{checked}");
    assert!(checked.contains(&format!("0x{serial}: good")), "{checked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_statuses() {
    let s = Server::start(Duration::from_secs(5)).await;
    s.publish("1001", false, false).await;
    let good = s.pki.request("1001", false);
    let ocsp = Some("application/ocsp-request");

    // Truncated DER, over POST and GET.
    assert_refused(
        &post(s.addr, ocsp, &good[..good.len() - 3]).await,
        400,
        MALFORMED,
    );
    assert_refused(
        &get(s.addr, &format!("/{}", B64.encode(&good[..40])), "").await,
        400,
        MALFORMED,
    );
    // Trailing bytes.
    let mut long = good.clone();
    long.push(0);
    assert_refused(&post(s.addr, ocsp, &long).await, 400, MALFORMED);
    // Garbage base64 / URL escapes, and a GET without a request.
    assert_refused(&get(s.addr, "/not*base64!", "").await, 400, MALFORMED);
    assert_refused(&get(s.addr, "/MEIw%ZZ", "").await, 400, MALFORMED);
    assert_refused(&get(s.addr, "/", "").await, 400, MALFORMED);
    assert_refused(&get(s.addr, "/favicon.ico", "").await, 400, MALFORMED);
    // Wrong or missing content type.
    assert_refused(
        &post(s.addr, Some("application/octet-stream"), &good).await,
        400,
        MALFORMED,
    );
    assert_refused(&post(s.addr, None, &good).await, 400, MALFORMED);
    // …while parameters and case are fine.
    let ok = post(
        s.addr,
        Some("Application/OCSP-Request; charset=binary"),
        &good,
    )
    .await;
    assert_eq!(ok.status, 200);
    // Huge bodies: refused by Content-Length, and when chunked.
    assert_refused(
        &post(s.addr, ocsp, &vec![0x30; 10_001]).await,
        413,
        MALFORMED,
    );
    let chunk = vec![b'a'; 20_000];
    let mut chunked = format!("{:x}\r\n", chunk.len()).into_bytes();
    chunked.extend_from_slice(&chunk);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let head =
        "POST / HTTP/1.1\r\nContent-Type: application/ocsp-request\r\nTransfer-Encoding: chunked";
    assert_refused(&http(s.addr, head, &chunked).await, 413, MALFORMED);
    // A body at the limit is read (and is not a request).
    assert_refused(
        &post(s.addr, ocsp, &vec![0x30; 10_000]).await,
        400,
        MALFORMED,
    );
    // A GET path far beyond any request.
    assert_refused(
        &get(s.addr, &format!("/{}", "A".repeat(50_000)), "").await,
        414,
        MALFORMED,
    );
    // Several certificates in one request.
    let two = include_bytes!("data/req-two-certs.der");
    assert_refused(&post(s.addr, ocsp, two).await, 400, MALFORMED);
    // A hash algorithm we do not serve: a well-formed request we cannot answer.
    let sha512 = include_bytes!("data/req-sha512.der");
    assert_refused(&post(s.addr, ocsp, sha512).await, 200, UNAUTHORIZED);
    // An issuer we do not serve (the fixtures' CA is not this server's).
    let other_ca = include_bytes!("data/req-sha1.der");
    assert_refused(&post(s.addr, ocsp, other_ca).await, 200, UNAUTHORIZED);

    // Methods.
    for method in ["PUT", "DELETE", "PATCH", "OPTIONS"] {
        let r = http(
            s.addr,
            &format!(
                "{method} /{} HTTP/1.1\r\nContent-Length: 0",
                B64.encode(&good)
            ),
            b"",
        )
        .await;
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD, POST"), "{method}");
    }

    let m = s.metrics();
    assert!(
        m.contains(r#"ocsp_responses_total{status="malformed",source="none"} 14"#),
        "{m}"
    );
    assert!(
        m.contains(r#"ocsp_responses_total{status="unauthorized",source="none"} 2"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_response_is_never_served() {
    let s = Server::start(Duration::from_secs(5)).await;
    let der = s.pki.respond(&{
        s.pki.set_status("1001", false);
        s.pki.request("1001", false)
    });
    let (this_update, _) = times(&der);
    // Stored as if its nextUpdate had passed a minute ago.
    let expired = StoredResponse {
        status: CertStatus::Good,
        this_update: this_update - 5 * 86_400,
        next_update: now() - 60,
        der,
        http: Default::default(),
    };
    let serial = Serial::from_hex("1001").unwrap();
    assert!(
        s.store
            .put(&IssuerName(ISSUER.into()), &serial, &expired)
            .await
            .unwrap()
    );

    let b64 = B64.encode(s.pki.request("1001", false));
    for _ in 0..2 {
        assert_refused(
            &get(s.addr, &format!("/{b64}"), "").await,
            200,
            UNAUTHORIZED,
        );
    }
    let out = s.openssl("1001", &["-no_nonce"]).await;
    assert!(out.contains("Responder Error: unauthorized (6)"), "{out}");
    let m = s.metrics();
    assert!(m.contains("ocsp_expired_total 3"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_is_served_within_cache_fresh_secs() {
    let s = Server::start(Duration::from_secs(2)).await;
    s.publish("1001", false, false).await;
    let b64 = B64.encode(s.pki.request("1001", false));
    let good = get(s.addr, &format!("/{b64}"), "").await;
    assert!(
        s.pki
            .verify_response(&good.body, "1001")
            .contains("0x1001: good")
    );

    let revoked = s.publish("1001", true, false).await;
    // Still cached…
    let r = get(s.addr, &format!("/{b64}"), "").await;
    assert_eq!(r.body, good.body);
    // …until the entry is older than cache_fresh_secs.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = get(s.addr, &format!("/{b64}"), "").await;
    assert_eq!(r.body, revoked);
    assert!(
        s.pki
            .verify_response(&r.body, "1001")
            .contains("0x1001: revoked")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_its_store_from_cache_and_says_degraded() {
    // Every cached entry is re-read from the store on each request (fresh = 0).
    let s = Server::start(Duration::ZERO).await;
    let der = s.publish("1001", false, false).await;
    s.publish("1002", false, false).await;
    let b64 = B64.encode(s.pki.request("1001", false));
    let b64_uncached = B64.encode(s.pki.request("1002", false));
    assert_eq!(get(s.addr, &format!("/{b64}"), "").await.body, der);
    assert!(s.metrics().contains("ocsp_degraded 0"));

    s.store.down.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let r = get(s.addr, &format!("/{b64}"), "").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, der);
    }
    let out = s.openssl("1001", &["-no_nonce"]).await;
    assert!(
        out.contains("Response verify OK") && out.contains("0x1001: good"),
        "{out}"
    );
    // Nothing cached for this one: try later.
    assert_refused(
        &get(s.addr, &format!("/{b64_uncached}"), "").await,
        503,
        TRY_LATER,
    );

    let m = s.metrics();
    assert!(m.contains("ocsp_degraded 1"), "{m}");
    assert!(!m.contains("ocsp_degraded_since_seconds 0"), "{m}");
    assert!(
        m.contains(r#"ocsp_cache_requests_total{result="stale"} 4"#),
        "{m}"
    );
    assert!(
        m.contains(r#"ocsp_responses_total{status="good",source="cache"} 4"#),
        "{m}"
    );
    assert!(
        m.contains(r#"ocsp_responses_total{status="try_later",source="none"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"ocsp_store_errors_total{store="sqlite"}"#),
        "{m}"
    );
    assert!(s.health.last_error().unwrap().contains("store is down"));

    s.store.down.store(false, Ordering::SeqCst);
    assert_eq!(
        get(s.addr, &format!("/{b64_uncached}"), "").await.status,
        200
    );
    let m = s.metrics();
    assert!(m.contains("ocsp_degraded 0"), "{m}");
    assert!(m.contains("ocsp_degraded_since_seconds 0"), "{m}");
    assert!(s.health.degraded_since().is_none());
}

/// `hsmgate-ocsp serve --config FILE`: starts on port 0, says where in its READY line, answers
/// openssl, exports metrics, and stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_command_runs_the_responder_until_sigterm() {
    let pki = Pki::new();
    pki.set_status("1001", true);
    let der = pki.respond(&pki.request("1001", false));
    {
        let store = SqliteStore::open(pki.path("ocsp.db")).unwrap();
        let serial = Serial::from_hex("1001").unwrap();
        let r = stored(der, KEY_COMPROMISE);
        assert!(
            store
                .put(&IssuerName(ISSUER.into()), &serial, &r)
                .await
                .unwrap()
        );
    }
    let config = hsmgate_stack::configs::ocsp_sqlite(ISSUER, "ca.pem", "ca-key", "ocsp.db");
    hsmgate_stack::configs::write(&config, &pki.path("ocsp.toml")).expect("write ocsp.toml");

    let mut command = Command::new(env!("CARGO_BIN_EXE_hsmgate-ocsp"));
    command
        .args(["serve", "--config"])
        .arg(pki.path("ocsp.toml"));
    let mut child = tokio::task::spawn_blocking(move || {
        hsmgate_stack::Process::spawn_ready(
            "hsmgate-ocsp serve",
            command,
            hsmgate_stack::Log::Null,
            Duration::from_secs(30),
        )
    })
    .await
    .unwrap()
    .expect("READY within 30 s");
    let field = |name: &str| -> SocketAddr { child.ready_addr(name).unwrap() };
    let (http_addr, metrics_addr) = (field("http"), field("metrics"));

    let dir = pki.path("");
    let out = tokio::task::spawn_blocking(move || {
        let out = Command::new("openssl")
            .current_dir(&dir)
            .args([
                "ocsp",
                "-no_nonce",
                "-issuer",
                "ca.pem",
                "-CAfile",
                "ca.pem",
                "-serial",
                "0x1001",
            ])
            .args(["-url", &format!("http://{http_addr}/")])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
    .await
    .unwrap();
    assert!(
        out.contains("Response verify OK") && out.contains("0x1001: revoked"),
        "{out}"
    );

    let m = get(metrics_addr, "/metrics", "").await;
    assert_eq!(m.status, 200);
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains(r#"ocsp_responses_total{status="revoked",source="store"} 1"#),
        "{text}"
    );
    assert!(text.contains("ocsp_degraded 0"), "{text}");

    child.signal("TERM").unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait_exit(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("exited after SIGTERM");
    assert!(status.success(), "{status:?}");
}
