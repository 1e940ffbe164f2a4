//! Parsing OCSP requests, and the responder's whole HTTP handler on a cache hit.
//!
//! - `parse/*`: `ocsp::parse_request` on the DER OpenSSL sends (`tests/data/`: SHA-1 and
//!   SHA-256 CertIDs, with and without a nonce) — what every POST body and decoded GET path
//!   goes through.
//! - `handler_hit/*`: one request through `responder::router` in process (tower `oneshot`, no
//!   socket): GET (percent-encoded base64 path, RFC 6960 Appendix A.1) or POST
//!   (`application/ocsp-request`), SHA-1 or SHA-256 CertID, decoding, parsing, the issuer
//!   match, the cache hit, the response headers. Requests cycle over 1,024 serials whose
//!   responses are in the cache.
//!
//! ```sh
//! cargo bench -p ocsp --bench request -- --warm-up-time 1 --measurement-time 3
//! ```

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use criterion::{Criterion, criterion_group, criterion_main};
use tower::ServiceExt;

use ocsp::metrics::Metrics;
use ocsp::responder::{AppState, router};
use ocsp::{
    CachedSource, HashAlg, Health, IssuerName, Issuers, Serial, Source, StoreSource, parse_request,
};

const SERIALS: u64 = 1024;

fn parsing(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for (name, der) in [
        ("sha1", common::REQ_SHA1),
        ("sha256", common::REQ_SHA256),
        ("sha1_nonce", common::REQ_SHA1_NONCE),
        ("sha256_nonce", common::REQ_SHA256_NONCE),
    ] {
        assert!(parse_request(der).is_ok(), "{name}: the fixture must parse");
        group.bench_function(name, |b| b.iter(|| parse_request(black_box(der))));
    }
    group.finish();
}

/// RFC 6960 Appendix A.1's "url-encoding of base-64 encoding": `+`, `/` and `=` escaped.
fn get_path(der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut path = String::with_capacity(b64.len() + 16);
    path.push('/');
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

fn http_request(method: &Method, der: &[u8]) -> Request<Body> {
    let built = if *method == Method::GET {
        Request::builder()
            .method(Method::GET)
            .uri(get_path(der))
            .body(Body::empty())
    } else {
        Request::builder()
            .method(Method::POST)
            .uri("/")
            .header(header::CONTENT_TYPE, "application/ocsp-request")
            .body(Body::from(der.to_vec()))
    };
    match built {
        Ok(r) => r,
        Err(e) => panic!("HTTP request: {e}"),
    }
}

fn handler(c: &mut Criterion) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    let issuer = common::issuer();
    common::check_request_builder(&issuer);
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let serials: Vec<Serial> = (0..SERIALS).map(common::serial).collect();
    let (app, requests) = rt.block_on(async {
        let store = common::filled_store(&dir.path().join("ocsp.sqlite"), &issuer, &serials).await;
        let metrics = Metrics::unregistered();
        let health = Health::new(metrics.clone());
        let source = CachedSource::new(
            StoreSource::new(store, health, metrics.clone()),
            64 << 20,
            Duration::from_secs(3600),
            metrics.clone(),
        );
        let name = IssuerName(common::ISSUER_NAME.into());
        for s in &serials {
            // Warm the cache: every request below is a hit.
            black_box(source.response(&name, s, HashAlg::Sha1).await);
        }
        let mut issuers = Issuers::default();
        issuers.add(issuer.clone());
        let app = router(
            Arc::new(AppState {
                issuers: Arc::new(issuers),
                source: Arc::new(source),
                metrics,
                max_request_bytes: 4096,
                crl: None,
            }),
            1,
        );
        let requests = |alg| -> Vec<Vec<u8>> {
            serials
                .iter()
                .map(|s| common::request(alg, &issuer, s))
                .collect()
        };
        (app, [requests(HashAlg::Sha1), requests(HashAlg::Sha256)])
    });

    let mut group = c.benchmark_group("handler_hit");
    for method in [Method::GET, Method::POST] {
        for (alg, ders) in [("sha1", &requests[0]), ("sha256", &requests[1])] {
            let check = rt.block_on(app.clone().oneshot(http_request(&method, &ders[0])));
            match check {
                Ok(r) if r.status() == StatusCode::OK => {}
                other => panic!("{method} {alg}: expected 200, got {other:?}"),
            }
            let id = format!("{}_{alg}", method.as_str().to_ascii_lowercase());
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    // Requests are made outside the timed loop; the handler owns each one.
                    let reqs: Vec<Request<Body>> = (0..iters)
                        .map(|i| http_request(&method, &ders[(i % SERIALS) as usize]))
                        .collect();
                    rt.block_on(async {
                        let start = Instant::now();
                        for req in reqs {
                            black_box(app.clone().oneshot(req).await.ok());
                        }
                        start.elapsed()
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, parsing, handler);
criterion_main!(benches);
