//! `hsm-bench ocsp` against a real responder: `hsmgate-ocsp serve` on a SQLite store that
//! holds responses for 5,000 certificates of a throwaway P-256 issuer (one in ten revoked),
//! signed here with the issuer's key the way the pre-signer builds them
//! (`ocsp::sign_responses`). What must hold:
//!
//! - every kind of request was sent and answered as it must be: known serials with their
//!   listed status (good and revoked both seen), unknown serials `unauthorized`, truncated
//!   requests `malformedRequest`; no HTTP or transport errors; GET and POST, SHA-1 and SHA-256;
//! - sampled signatures verify; misses were cold (the responder's own cache counters agree);
//! - a serials file that lists the revoked certificates as good makes the run fail, with the
//!   wrong answers named in its report.
//!
//! Needs the `hsmgate-ocsp` binary of this build (`cargo build --workspace`;
//! `hsm-config/dev/test.sh` does it).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;
use common::{built, output_text};

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use async_trait::async_trait;
use ocsp::{CertStatus, IssuerName, Serial, TbsSigner};
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::DecodePrivateKey;
use serde_json::Value;

const ISSUER: &str = "bench-test-ca";
const CERTIFICATES: u64 = 5_000;
/// ecdsa-with-SHA256 (RFC 5758 §3.2: parameters absent).
const ECDSA_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];

/// Signs with the issuer's key in this process, as the gateway would with the HSM's.
#[derive(Debug)]
struct LocalSigner(p256::ecdsa::SigningKey);

#[async_trait]
impl TbsSigner for LocalSigner {
    async fn sign(
        &self,
        _key: &str,
        tbs: Vec<Vec<u8>>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ocsp::Error> {
        Ok(tbs
            .iter()
            .map(|t| {
                let sig: p256::ecdsa::Signature = self.0.sign(t);
                (sig.to_der().as_bytes().to_vec(), ECDSA_SHA256.to_vec())
            })
            .collect())
    }
}

fn serial(i: u64) -> Serial {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_be_bytes());
    b[8..].copy_from_slice(&(i ^ 0x5851_F42D_4C95_7F2D).to_be_bytes());
    b[0] = (b[0] & 0x7f) | 0x01;
    Serial::from_be_bytes(&b)
}

fn revoked(i: u64) -> bool {
    i % 10 == 3
}

/// The issuer, its store of signed responses, the responder's config, and the import list.
fn prepare(dir: &Path) -> PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hsm-bench ocsp test CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("issuer.pem"), cert.pem()).unwrap();
    let signer =
        LocalSigner(p256::ecdsa::SigningKey::from_pkcs8_der(&key.serialize_der()).unwrap());

    let issuer = ocsp::Issuer::new(ISSUER, "test-p256", cert.pem().as_bytes()).unwrap();
    let now = ocsp::unix_now();
    let revoked_at = now - 86_400;
    let items: Vec<(Serial, CertStatus)> = (0..CERTIFICATES)
        .map(|i| {
            let status = if revoked(i) {
                CertStatus::Revoked {
                    at: revoked_at,
                    reason: Some(1),
                }
            } else {
                CertStatus::Good
            };
            (serial(i), status)
        })
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = ocsp::store::SqliteStore::open(dir.join("ocsp.sqlite")).unwrap();
        for chunk in items.chunks(1000) {
            let signed = ocsp::sign_responses(
                &signer,
                &issuer,
                chunk,
                now - 60,
                now + 4 * 86_400,
                now - 60,
            )
            .await
            .unwrap();
            let rows = chunk
                .iter()
                .zip(signed)
                .map(|((s, _), r)| (IssuerName(ISSUER.into()), s.clone(), r))
                .collect();
            store.put_many(rows).await.unwrap();
        }
    });

    let mut list = String::from("# hsm-bench ocsp test: the store's certificates\n");
    for (s, status) in &items {
        match status {
            CertStatus::Good => writeln!(list, "{ISSUER} {} good", s.to_hex()).unwrap(),
            CertStatus::Revoked { at, .. } => {
                writeln!(list, "{ISSUER} {} revoked {at} 1", s.to_hex()).unwrap()
            }
        }
    }
    std::fs::write(dir.join("certs.txt"), list).unwrap();

    let mut typed =
        hsmgate_stack::configs::ocsp_sqlite(ISSUER, "issuer.pem", "test-p256", "ocsp.sqlite");
    typed.responder.cache_bytes = 64 << 20;
    typed.responder.cache_fresh_secs = 3600;
    let config = dir.join("ocsp.toml");
    hsmgate_stack::configs::write(&typed, &config).unwrap();
    config
}

/// `hsmgate-ocsp serve`, and its HTTP and metrics addresses once it printed READY (killed on
/// drop, by the stack kit's process).
struct Responder {
    _process: hsmgate_stack::Process,
    http: String,
    metrics: String,
}

fn serve(dir: &Path, config: &Path) -> Responder {
    let mut command = Command::new(built("hsmgate-ocsp"));
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn");
    let process = hsmgate_stack::Process::spawn_ready(
        "hsmgate-ocsp serve",
        command,
        hsmgate_stack::Log::File(dir.join("responder.log")),
        hsmgate_stack::READY_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("no READY line from the responder: {e}"));
    let field = |name: &str| {
        process
            .ready()
            .and_then(|r| r.field(name))
            .map(str::to_owned)
    };
    let (Some(http), Some(metrics)) = (field("http"), field("metrics")) else {
        panic!(
            "no READY line from the responder: {:?}\n{}",
            process.ready(),
            process.logs()
        );
    };
    Responder {
        _process: process,
        http,
        metrics,
    }
}

fn bench(responder: &Responder, dir: &Path, serials: &Path, json: &Path, extra: &[&str]) -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_hsm-bench"))
        .arg("ocsp")
        .args(["--url", &format!("http://{}", responder.http)])
        .arg("--issuer")
        .arg(dir.join("issuer.pem"))
        .arg("--serials")
        .arg(serials)
        .args([
            "--metrics",
            &format!("http://{}/metrics", responder.metrics),
        ])
        .args(["--concurrency", "8", "--verify-every", "10"])
        .arg("--json")
        .arg(json)
        .args(extra)
        .output()
        .unwrap();
    eprintln!("hsm-bench ocsp {extra:?}:\n{}", output_text(&out));
    out.status.success()
}

fn kind<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == name)
        .unwrap()
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

#[test]
fn every_kind_of_request_is_answered_as_it_must_be() {
    let dir = tempfile::tempdir().unwrap();
    let config = prepare(dir.path());
    if std::env::var_os("HSM_BENCH_OCSP_KEEP").is_some() {
        // The issuer, store, list and responder config, for a release run by hand.
        let kept = tempfile::TempDir::with_prefix("hsm-bench-ocsp-")
            .unwrap()
            .keep();
        for f in ["issuer.pem", "certs.txt", "ocsp.toml", "ocsp.sqlite"] {
            std::fs::copy(dir.path().join(f), kept.join(f)).unwrap();
        }
        eprintln!("HSM_BENCH_OCSP_KEEP: kept in {}", kept.display());
    }
    let responder = serve(dir.path(), &config);
    let json = dir.path().join("run.json");
    assert!(
        bench(
            &responder,
            dir.path(),
            &dir.path().join("certs.txt"),
            &json,
            &["--hot", "300", "--duration", "2s", "--warmup", "200ms"],
        ),
        "hsm-bench ocsp failed"
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();

    assert_eq!(n(&r["known"]), CERTIFICATES);
    assert_eq!(n(&r["known_revoked"]), CERTIFICATES / 10);
    assert_eq!(n(&r["wrong"]), 0);
    let b = &r["breakdown"];
    assert_eq!(n(&b["http_errors"]), 0, "{b}");
    assert_eq!(n(&b["try_later"]) + n(&b["other_ocsp"]), 0, "{b}");
    assert!(n(&b["good"]) > 0 && n(&b["revoked"]) > 0, "{b}");

    // Known serials got their status; unknown ones unauthorized; truncated ones malformed.
    for name in ["hit", "miss"] {
        let k = kind(&r, name);
        assert!(n(&k["requests"]) > 0, "no {name} requests");
        assert_eq!(
            n(&k["answers"]["good"]) + n(&k["answers"]["revoked"]),
            n(&k["requests"]),
            "{k}"
        );
    }
    let unknown = kind(&r, "unknown");
    assert!(n(&unknown["requests"]) > 0);
    assert_eq!(
        n(&unknown["answers"]["unauthorized"]),
        n(&unknown["requests"])
    );
    let malformed = kind(&r, "malformed");
    assert_eq!(
        n(&malformed["answers"]["malformed"]),
        n(&malformed["requests"])
    );
    assert_eq!(
        n(&b["unauthorized"]) + n(&b["malformed"]) + n(&b["good"]) + n(&b["revoked"]),
        n(&r["requests"])
    );
    // The default mix: mostly hits.
    assert!(n(&kind(&r, "hit")["requests"]) > n(&r["requests"]) / 2);

    for (field, keys) in [("methods", ["GET", "POST"]), ("hashes", ["sha1", "sha256"])] {
        for key in keys {
            assert!(n(&r[field][key]) > 0, "no {key} in {}", r[field]);
        }
    }

    let v = &r["verification"];
    assert!(n(&v["signatures_checked"]) > 0, "{v}");
    assert_eq!(n(&v["failed"]), 0, "{v}");

    // Misses were cold: the responder missed its cache at least once per miss and unknown
    // request of the window (unknown serials are never cached), give or take the requests in
    // flight at the window's edges.
    assert_eq!(n(&r["misses_reused"]), 0);
    let cache = &r["responder_cache"];
    let responder_misses = cache["miss"].as_f64().unwrap_or(0.0);
    let ours = (n(&kind(&r, "miss")["requests"]) + n(&unknown["requests"])) as f64;
    assert!(
        responder_misses + 16.0 >= ours,
        "responder cache {cache}, {ours} misses and unknowns sent"
    );
}

#[test]
fn a_wrong_status_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = prepare(dir.path());
    let responder = serve(dir.path(), &config);
    // The revoked certificates listed as good.
    let text = std::fs::read_to_string(dir.path().join("certs.txt")).unwrap();
    let lying: String = text
        .lines()
        .map(|l| match l.split_once(" revoked ") {
            Some((head, _)) => format!("{head} good\n"),
            None => format!("{l}\n"),
        })
        .collect();
    let serials = dir.path().join("lying.txt");
    std::fs::write(&serials, lying).unwrap();
    let json = dir.path().join("run.json");
    assert!(
        !bench(
            &responder,
            dir.path(),
            &serials,
            &json,
            &[
                "--mix",
                "hit=1",
                "--hot",
                "100",
                "--duration",
                "500ms",
                "--warmup",
                "0s"
            ],
        ),
        "hsm-bench ocsp accepted revoked answers for certificates listed as good"
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(n(&r["wrong"]) > 0);
    let samples = kind(&r, "hit")["wrong_samples"].to_string();
    assert!(
        samples.contains("expected good (HTTP 200), got revoked (HTTP 200)"),
        "{samples}"
    );
}
