//! Sharded CRLs end to end (issue 15): the real `signer` on SoftHSM2 signs every shard
//! (`sign-crl`, payload `tbs-cert-list`), `hsmgate-ocsp serve` serves them, and clients nobody
//! here wrote verify what it serves: `openssl crl`, Python `cryptography`
//! (`tests/clients/crl_check.py`) and Go's `crypto/x509` (`tests/clients/crlcheck`). Also: cRLNumbers under
//! two concurrent updaters and across a restart (SQLite and Redis), an expired certificate
//! leaving its shard, BR bounds refused at load, and serving with the gateway and Redis down.
//!
//! Needs `target/debug/signer`: run `cargo build -p signer` first.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Env, ISSUER_P256, ISSUER_RSA};
use ocsp::config::{Config, CrlConfig, Store};
use ocsp::crl::{CrlMetrics, ShardMap, Updater};
use ocsp::presigner::{Presigner, PresignerMetrics};
use ocsp::store::CrlStore;
use ocsp::{CertStatus, IssuerName, Serial, unix_now};

const SHARDS: u32 = 4;
const BASE_URL: &str = "http://crl.hsmgate.test";

/// Adds `[issuers.crl]` (4 shards, updated hourly, valid a day) to both issuers of the common
/// configuration, each then edited by `edit`.
fn with_crl(config: &mut Config, edit: impl Fn(&mut CrlConfig)) {
    for issuer in &mut config.issuers {
        let mut crl = CrlConfig {
            shards: SHARDS,
            base_url: BASE_URL.into(),
            update_period_secs: 3600,
            next_update_secs: 86400,
            ..CrlConfig::default()
        };
        edit(&mut crl);
        issuer.crl = Some(crl);
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `hsmgate-ocsp serve`; its process and HTTP address.
fn serve(config: &Path) -> (Proc, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hsmgate-ocsp"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("READY line");
    let http = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("http="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no READY line: {line:?}"));
    (Proc(child), http)
}

/// A plain HTTP/1.1 request; (status, headers lower-cased, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: crl\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn serial(hex: &str) -> Serial {
    Serial::from_hex(hex).expect("hex")
}

/// `openssl crl -inform DER -CAfile ISSUER -noout`: "verify OK".
fn openssl_crl(crl: &Path, issuer: &Path) -> String {
    let out = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-in"])
        .arg(crl)
        .arg("-CAfile")
        .arg(issuer)
        .output()
        .expect("openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("verify OK"),
        "openssl crl: {text}"
    );
    text
}

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn python_crl(crl: &Path, issuer: &Path, url: &str, number_min: i64, expects: &[String]) -> String {
    let out = Command::new("python3")
        .arg(clients_dir().join("crl_check.py"))
        .arg(crl)
        .arg(issuer)
        .arg(url)
        .arg(number_min.to_string())
        .args(expects)
        .output()
        .expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "crl_check.py: {text}");
    text
}

/// Builds `tests/clients/crlcheck` offline (Debian's Go, GOPATH from golang-*-dev packages).
fn go_crlcheck(dir: &Path) -> PathBuf {
    let bin = dir.join("crlcheck");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(clients_dir().join("crlcheck"))
        .env("GOPATH", "/usr/share/gocode")
        .env("GO111MODULE", "off")
        .env("GOCACHE", dir.join("gocache"))
        .output()
        .expect("go build");
    assert!(
        out.status.success(),
        "go build crlcheck: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

fn go_crl(bin: &Path, crl: &Path, issuer: &Path, serials: &[&str]) -> String {
    let out = Command::new(bin)
        .arg(crl)
        .arg(issuer)
        .args(serials)
        .output()
        .expect("crlcheck");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "crlcheck: {text}");
    text
}

async fn publish(presigner: &Presigner, issuer: &str, items: &[(&str, CertStatus)]) {
    presigner
        .publish_many(
            items
                .iter()
                .map(|(hex, status)| (IssuerName(issuer.into()), serial(hex), *status))
                .collect(),
        )
        .await
        .expect("publish");
}

#[tokio::test]
async fn served_shards_verify_with_openssl_python_and_go_and_keep_being_served() {
    let env = Env::start_with(|c| with_crl(c, |_| {}));
    let config = env.config();
    let presigner = Presigner::from_config(&config, PresignerMetrics::default())
        .await
        .expect("presigner");
    let now = unix_now();
    let at = now - 3600;
    let revoked = |reason| CertStatus::Revoked { at, reason };
    // Serials ending in 01: shard 1 of 4 (the last 64 bits modulo 4).
    let key_compromise = "7a11000000000000000000000000000001";
    let unspecified = "7a11000000000000000000000000000005";
    let hold = "7a11000000000000000000000000000009"; // certificateHold: BR forbid it
    let superseded = "7a1100000000000000000000000000000d";
    let expired = "7a11000000000000000000000000000011";
    let good = "7a11000000000000000000000000000015";
    let elsewhere = "7a11000000000000000000000000000002"; // shard 2
    publish(
        &presigner,
        ISSUER_P256,
        &[
            (key_compromise, revoked(Some(1))),
            (unspecified, revoked(Some(0))),
            (hold, revoked(Some(6))),
            (superseded, revoked(Some(4))),
            (expired, revoked(Some(1))),
            (good, CertStatus::Good),
            (elsewhere, revoked(None)),
        ],
    )
    .await;
    publish(
        &presigner,
        ISSUER_RSA,
        &[(key_compromise, revoked(Some(5)))],
    )
    .await;
    let p256 = IssuerName(ISSUER_P256.into());
    presigner
        .record_not_after(vec![
            (p256.clone(), serial(expired), now - 60),
            (p256.clone(), serial(key_compromise), now + 86_400),
        ])
        .await
        .expect("not_after");
    let map = ShardMap::new(&p256, config.issuers[0].crl.as_ref().expect("crl"));
    assert_eq!(map.shard_of(&serial(key_compromise)), 1);
    assert_eq!(map.shard_of(&serial(elsewhere)), 2);

    let updater = Updater::from_config(&config, CrlMetrics::default())
        .await
        .expect("updater");
    updater.prepare().await.expect("prepare");
    let report = updater.pass(now, false).await.expect("pass");
    assert_eq!(report.stored, 2 * SHARDS as usize, "{report:?}");
    assert_eq!(report.failed, 0);
    // Nothing is due right after: no revocation pending, every shard fresh.
    assert_eq!(
        updater.pass(now, false).await.expect("pass"),
        Default::default()
    );

    let (_serve, addr) = serve(&env.config_path);
    let (status, headers, der) = http(addr, "GET", "/test-p256/1.crl", &[]);
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/pkix-crl")
    );
    let cache = header(&headers, "cache-control").expect("cache-control");
    let max_age: i64 = cache
        .strip_prefix("public, max-age=")
        .and_then(|v| v.parse().ok())
        .expect(cache);
    assert!((1..=3600).contains(&max_age), "{cache}");
    let etag = header(&headers, "etag").expect("etag").to_owned();
    let last_modified = header(&headers, "last-modified")
        .expect("last-modified")
        .to_owned();
    assert_eq!(
        httpdate::parse_http_date(&last_modified).ok(),
        Some(std::time::UNIX_EPOCH + Duration::from_secs(now as u64))
    );

    let crl_path = env.write("p256-1.crl", &der);
    openssl_crl(&crl_path, &env.issuer_p256);
    let expects = [
        format!("{key_compromise}:{at}:key_compromise"),
        format!("{unspecified}:{at}:none"),
        format!("{hold}:{at}:none"),
        format!("{superseded}:{at}:superseded"),
        format!("{expired}:absent"),
        format!("{good}:absent"),
        format!("{elsewhere}:absent"),
    ];
    let py = python_crl(&crl_path, &env.issuer_p256, &map.shard_url(1), 1, &expects);
    assert!(py.contains("4 entries"), "{py}");
    let go = go_crlcheck(env.dir.path());
    let text = go_crl(
        &go,
        &crl_path,
        &env.issuer_p256,
        &[key_compromise, unspecified, hold, superseded],
    );
    assert!(text.contains("4 entries"), "{text}");

    // RSA issuer, and an empty shard (no revokedCertificates at all).
    let (status, _, der) = http(addr, "GET", "/test-rsa/1.crl", &[]);
    assert_eq!(status, 200);
    let rsa_path = env.write("rsa-1.crl", &der);
    openssl_crl(&rsa_path, &env.issuer_rsa);
    let rsa_url = format!("{BASE_URL}/test-rsa/1.crl");
    python_crl(
        &rsa_path,
        &env.issuer_rsa,
        &rsa_url,
        1,
        &[format!("{key_compromise}:{at}:cessation_of_operation")],
    );
    go_crl(&go, &rsa_path, &env.issuer_rsa, &[key_compromise]);
    let (status, _, der) = http(addr, "GET", "/test-rsa/3.crl", &[]);
    assert_eq!(status, 200);
    let empty = env.write("rsa-3.crl", &der);
    openssl_crl(&empty, &env.issuer_rsa);
    python_crl(
        &empty,
        &env.issuer_rsa,
        &format!("{BASE_URL}/test-rsa/3.crl"),
        1,
        &[],
    );

    // Caching: 304 on the ETag and on If-Modified-Since; HEAD has GET's headers, no body.
    let (status, headers, body) =
        http(addr, "GET", "/test-p256/1.crl", &[("If-None-Match", &etag)]);
    assert_eq!((status, body.len()), (304, 0));
    assert_eq!(header(&headers, "etag"), Some(etag.as_str()));
    let (status, _, _) = http(
        addr,
        "GET",
        "/test-p256/1.crl",
        &[("If-Modified-Since", &last_modified)],
    );
    assert_eq!(status, 304);
    let (status, _, _) = http(
        addr,
        "GET",
        "/test-p256/1.crl",
        &[("If-None-Match", "\"other\"")],
    );
    assert_eq!(status, 200);
    let (status, headers, body) = http(addr, "HEAD", "/test-p256/1.crl", &[]);
    assert_eq!(status, 200);
    assert!(body.is_empty());
    assert_eq!(
        header(&headers, "content-length"),
        Some(der_len(&crl_path).as_str())
    );
    // Not ours: 404, never an OCSP answer.
    for path in [
        "/test-p256/4.crl",
        "/nobody/0.crl",
        "/test-p256/01.crl",
        "/nobody.json",
    ] {
        assert_eq!(http(addr, "GET", path, &[]).0, 404, "{path}");
    }
    // The CCADB list: every shard URL.
    let (status, headers, body) = http(addr, "GET", "/test-p256.json", &[]);
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let urls: Vec<String> = serde_json::from_slice(&body).expect("json");
    assert_eq!(urls, map.urls());
    assert_eq!(urls.len(), SHARDS as usize);

    // The gateway and HSMs gone: the shards are still served, bytes unchanged.
    drop(env.gateway);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _, again) = http(addr, "GET", "/test-p256/1.crl", &[]);
    assert_eq!(status, 200);
    assert_eq!(again, std::fs::read(&crl_path).expect("crl"));
    // ... and the updater fails loudly (counted), without touching what is served.
    publish_direct(&config, &p256, "7a11000000000000000000000000000021").await;
    let report = updater.pass(unix_now(), false).await.expect("pass");
    assert_eq!((report.stored, report.failed), (0, 1), "{report:?}");
}

fn der_len(path: &Path) -> String {
    std::fs::metadata(path).expect("file").len().to_string()
}

/// Records a revocation in the worklist without signing its OCSP response (the gateway is down).
async fn publish_direct(config: &Config, issuer: &IssuerName, hex: &str) {
    let path = match &config.store {
        ocsp::config::Store::Sqlite { path } => config.resolve(path),
        ocsp::config::Store::Redis { replica, .. } => config.resolve(replica),
    };
    let store = ocsp::store::SqliteStore::open(path).expect("store");
    store.set_crl_shards(ocsp::crl::crl_shard_counts(config));
    store
        .upsert_certificates(vec![(
            issuer.clone(),
            serial(hex),
            CertStatus::Revoked {
                at: unix_now() - 10,
                reason: Some(1),
            },
        )])
        .await
        .expect("upsert");
}

/// Every shard's stored number, per issuer and shard.
async fn numbers(store: &dyn CrlStore, issuer: &IssuerName) -> Vec<i64> {
    let mut out = Vec::new();
    for shard in 0..SHARDS {
        out.push(
            store
                .get_crl(issuer, shard)
                .await
                .expect("get")
                .map_or(0, |c| c.number),
        );
    }
    out
}

async fn numbers_increase(config: Config, store: Arc<dyn CrlStore>) {
    let p256 = IssuerName(ISSUER_P256.into());
    let a = Updater::from_config(&config, CrlMetrics::default())
        .await
        .expect("a");
    let b = Updater::from_config(&config, CrlMetrics::default())
        .await
        .expect("b");
    a.prepare().await.expect("prepare");
    let mut last = numbers(store.as_ref(), &p256).await;
    let mut superseded = 0;
    for round in 0..4 {
        let now = unix_now();
        let (ra, rb) = tokio::join!(a.pass(now, true), b.pass(now, true));
        let (ra, rb) = (ra.expect("a"), rb.expect("b"));
        assert_eq!(ra.failed + rb.failed, 0, "{ra:?} {rb:?}");
        // Every shard stored by at least one of the two in every round.
        assert!(
            ra.stored + rb.stored >= 2 * SHARDS as usize,
            "round {round}: {ra:?} {rb:?}"
        );
        superseded += ra.superseded + rb.superseded;
        let now_numbers = numbers(store.as_ref(), &p256).await;
        for (shard, (old, new)) in last.iter().zip(&now_numbers).enumerate() {
            assert!(new > old, "round {round} shard {shard}: {old} then {new}");
        }
        last = now_numbers;
    }
    // A restarted updater (nothing in memory) still goes up from what is stored.
    drop((a, b));
    let c = Updater::from_config(&config, CrlMetrics::default())
        .await
        .expect("c");
    c.prepare().await.expect("prepare");
    c.pass(unix_now(), true).await.expect("pass");
    for (old, new) in last.iter().zip(numbers(store.as_ref(), &p256).await) {
        assert!(new > *old, "{old} then {new} after a restart");
    }
    // A shard offered with a number not above the stored one is refused by the store itself.
    let stored = store.get_crl(&p256, 0).await.expect("get").expect("stored");
    let stale = ocsp::crl::StoredCrl {
        number: stored.number,
        ..stored.clone()
    };
    assert!(!store.put_crl(&p256, 0, &stale).await.expect("put"));
    let older = ocsp::crl::StoredCrl {
        number: stored.number - 1,
        ..stored
    };
    assert!(!store.put_crl(&p256, 0, &older).await.expect("put"));
    eprintln!("superseded signings across rounds: {superseded}");
}

#[tokio::test]
async fn crl_numbers_increase_under_two_updaters_and_across_a_restart_in_sqlite() {
    let env = Env::start_with(|c| with_crl(c, |_| {}));
    let config = env.config();
    let store = Arc::new(
        ocsp::store::SqliteStore::open(env.dir.path().join("ocsp.sqlite")).expect("store"),
    );
    numbers_increase(config, store).await;
}

fn redis_up() -> bool {
    std::net::TcpStream::connect_timeout(
        &"127.0.0.1:6379".parse().expect("addr"),
        Duration::from_millis(300),
    )
    .is_ok()
}

#[tokio::test]
async fn crl_numbers_increase_in_redis_and_shards_are_served_from_the_replica_with_redis_down() {
    assert!(
        redis_up(),
        "these tests need Redis at 127.0.0.1:6379 (hsm-config/dev/setup.sh)"
    );
    let env = Env::start_with(|c| {
        with_crl(c, |_| {});
        c.store = Store::Redis {
            urls: vec!["redis://127.0.0.1:6379/".into()],
            cluster: false,
            replica: "replica.sqlite".into(),
        };
    });
    // Keys of this test's issuers only: clear what an earlier run left.
    let redis = ocsp::store::RedisStore::open(&["redis://127.0.0.1:6379/".into()], false)
        .await
        .expect("redis");
    let _ = &redis;
    let config = env.config();
    // Another run's shards for the same issuer names may be in Redis with numbers from its
    // clock: the test only compares before and after, so they do no harm.
    numbers_increase(config.clone(), Arc::new(redis)).await;

    // Redis unreachable: the responder reads the replica the updater kept.
    let mut down = config;
    match &mut down.store {
        Store::Redis { urls, .. } => *urls = vec!["redis://127.0.0.1:1/".into()],
        Store::Sqlite { .. } => panic!("the store is Redis"),
    }
    let down_path = env.dir.path().join("down.toml");
    common::write_config(&down, &down_path);
    let (_serve, addr) = serve(&down_path);
    let (status, _, der) = http(addr, "GET", "/test-p256/0.crl", &[]);
    assert_eq!(status, 200);
    openssl_crl(&env.write("replica-0.crl", &der), &env.issuer_p256);
}

#[tokio::test]
async fn a_revocation_reaches_its_shard_within_the_revocation_delay() {
    let env = Env::start_with(|c| with_crl(c, |crl| crl.revocation_delay_secs = 4));
    let config = env.config();
    let presigner = Presigner::from_config(&config, PresignerMetrics::default())
        .await
        .expect("presigner");
    let updater = Updater::from_config(&config, CrlMetrics::default())
        .await
        .expect("updater");
    updater.prepare().await.expect("prepare");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(updater.run(stopped));
    let (_serve, addr) = serve(&env.config_path);
    let hex = "0bad000000000000000000000000000003";
    // Every shard exists first.
    wait_for(addr, "/test-p256/3.crl", |der| !der.is_empty()).await;
    let revoked_at = unix_now();
    publish(
        &presigner,
        ISSUER_P256,
        &[(
            hex,
            CertStatus::Revoked {
                at: revoked_at,
                reason: Some(1),
            },
        )],
    )
    .await;
    let started = std::time::Instant::now();
    let der = wait_for(addr, "/test-p256/3.crl", |der| {
        let path = env.write("latest.crl", der);
        Command::new("python3")
            .arg(clients_dir().join("crl_check.py"))
            .arg(&path)
            .arg(&env.issuer_p256)
            .arg(format!("{BASE_URL}/test-p256/3.crl"))
            .arg("1")
            .arg(format!("{hex}:{revoked_at}:key_compromise"))
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .await;
    // The delay is 4 s; the responder's cache may add cache_fresh_secs (5 s by default).
    assert!(
        started.elapsed() < Duration::from_secs(4 + 5 + 2),
        "{:?}",
        started.elapsed()
    );
    openssl_crl(&env.write("revoked.crl", &der), &env.issuer_p256);
    let _ = stop.send(true);
    running.await.expect("updater");
}

async fn wait_for(addr: SocketAddr, path: &str, ok: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    for _ in 0..300 {
        let (status, _, body) = http(addr, "GET", path, &[]);
        if status == 200 && ok(&body) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never became what was expected");
}

/// A rule broken: its name, the edit that breaks it, the field the error must name.
type BrokenRule = (&'static str, fn(&mut CrlConfig), &'static str);

#[test]
fn br_bounds_are_refused_at_load_with_the_field_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [BrokenRule; 7] = [
        (
            "update_period_secs = 604801",
            |c| c.update_period_secs = 604_801,
            "issuers[0].crl.update_period_secs",
        ),
        (
            "next_update_secs = 864001",
            |c| c.next_update_secs = 864_001,
            "issuers[0].crl.next_update_secs",
        ),
        (
            "revocation_delay_secs = 86401",
            |c| c.revocation_delay_secs = 86_401,
            "issuers[0].crl.revocation_delay_secs",
        ),
        (
            "revocation_delay_secs = 0",
            |c| c.revocation_delay_secs = 0,
            "issuers[0].crl.revocation_delay_secs",
        ),
        ("shards = 0", |c| c.shards = 0, "issuers[0].crl.shards"),
        (
            "update_period_secs = 7200, next_update_secs = 3600",
            |c| {
                c.update_period_secs = 7200;
                c.next_update_secs = 3600;
            },
            "issuers[0].crl.next_update_secs",
        ),
        (
            "base_url = \"https://crl.example\"",
            |c| c.base_url = "https://crl.example".into(),
            "issuers[0].crl.base_url",
        ),
    ];
    for (setting, edit, field) in cases {
        // Otherwise the defaults, as a file naming only these settings loads.
        let mut crl = CrlConfig {
            base_url: "http://crl.example".into(),
            ..CrlConfig::default()
        };
        edit(&mut crl);
        let mut config = hsmgate_stack::configs::ocsp_sqlite("r1", "r1.pem", "k", "x.sqlite");
        config.responder.metrics_listen = None;
        config.issuers[0].crl = Some(crl);
        let path = dir.path().join("ocsp.toml");
        common::write_config(&config, &path);
        let err = Config::load(&path).expect_err(setting).to_string();
        assert!(err.contains(field), "{setting}: {err}");
    }
}

#[tokio::test]
async fn a_changed_shard_count_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ocsp::store::SqliteStore::open(dir.path().join("s.sqlite")).expect("store");
    let issuer = IssuerName("r1".into());
    store.crl_register(&issuer, 128).await.expect("first");
    store.crl_register(&issuer, 128).await.expect("same");
    let err = store
        .crl_register(&issuer, 64)
        .await
        .expect_err("changed")
        .to_string();
    assert!(err.contains("shards") && err.contains("128"), "{err}");
}

/// The issue's end-to-end figure: build + sign + store every shard of an issuer holding
/// 1,000,000 revoked certificates over 128 shards, through the real gateway (SoftHSM2) into
/// SQLite. Not a pass/fail test (speed is measured, not asserted): run it in release with
///
/// ```sh
/// cargo build --release -p signer
/// cargo test --release -p ocsp --test crl -- --ignored --nocapture bench_128_shards
/// ```
#[tokio::test]
#[ignore]
async fn bench_128_shards_of_one_million_revoked() {
    const N: u64 = 1_000_000;
    let env = Env::start_with(|c| {
        let p256 = c
            .issuers
            .iter_mut()
            .find(|i| i.name == ISSUER_P256)
            .expect("the P-256 issuer");
        p256.crl = Some(CrlConfig {
            shards: 128,
            base_url: BASE_URL.into(),
            ..CrlConfig::default()
        });
    });
    let config = env.config();
    let store = ocsp::store::SqliteStore::open(env.dir.path().join("ocsp.sqlite")).expect("store");
    if std::env::var_os("CRL_BENCH_NO_SHARDS").is_none() {
        store.set_crl_shards(ocsp::crl::crl_shard_counts(&config));
    }
    let p256 = IssuerName(ISSUER_P256.into());
    let started = std::time::Instant::now();
    let now = unix_now();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in 0..N / 10_000 {
        let items = (0..10_000u64)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let mut s = [0u8; 16];
                s[0] = 0x4c;
                s[1..9].copy_from_slice(&x.to_be_bytes());
                s[9..].copy_from_slice(&(chunk * 10_000 + i).to_be_bytes()[1..]);
                (
                    p256.clone(),
                    Serial::from_be_bytes(&s),
                    CertStatus::Revoked {
                        at: now - 60,
                        reason: (i % 3 == 0).then_some(1),
                    },
                )
            })
            .collect();
        store.upsert_certificates(items).await.expect("upsert");
    }
    eprintln!("recorded {N} revocations in {:?}", started.elapsed());
    let updater = Updater::from_config(&config, CrlMetrics::default())
        .await
        .expect("updater");
    let started = std::time::Instant::now();
    updater.prepare().await.expect("prepare");
    eprintln!("prepare (shard count, backfill) in {:?}", started.elapsed());
    let started = std::time::Instant::now();
    let report = updater.pass(unix_now(), true).await.expect("pass");
    let elapsed = started.elapsed();
    assert_eq!((report.stored, report.failed), (128, 0), "{report:?}");
    let mut bytes = 0;
    let mut largest = 0;
    let mut entries = 0;
    for shard in 0..128 {
        let crl = store
            .get_crl(&p256, shard)
            .await
            .expect("get")
            .expect("stored");
        bytes += crl.der.len();
        largest = largest.max(crl.der.len());
        entries += crl.entries;
    }
    assert_eq!(entries, N);
    eprintln!(
        "128 shards, {entries} entries: built, signed and stored in {elapsed:?}; {bytes} DER bytes in all, largest shard {largest} bytes"
    );
    let one = env.write(
        "bench-0.crl",
        &store
            .get_crl(&p256, 0)
            .await
            .expect("get")
            .expect("stored")
            .der,
    );
    openssl_crl(&one, &env.issuer_p256);
}

/// A leaf certificate for `serial_hex` from the P-256 issuer, signed through the gateway
/// (declared `tbs-certificate`), whose CRL distribution point is `crl_url`; its PEM file.
async fn leaf(env: &Env, serial_hex: &str, crl_url: &str) -> PathBuf {
    use der07::asn1::{BitString, Ia5String};
    use der07::{Decode, DecodePem, Encode, EncodePem};
    use x509_cert_02::certificate::{Certificate, TbsCertificate, Version};
    use x509_cert_02::ext::AsExtension;
    use x509_cert_02::ext::pkix::CrlDistributionPoints;
    use x509_cert_02::ext::pkix::crl::dp::DistributionPoint;
    use x509_cert_02::ext::pkix::name::{DistributionPointName, GeneralName};
    use x509_cert_02::name::Name;
    use x509_cert_02::serial_number::SerialNumber;
    use x509_cert_02::time::{Time, Validity};

    let issuer =
        Certificate::from_pem(std::fs::read(&env.issuer_p256).expect("issuer")).expect("pem");
    let subject: Name = std::str::FromStr::from_str("CN=leaf.hsmgate.test").expect("name");
    let time = |secs: i64| {
        Time::UtcTime(
            der07::asn1::UtcTime::from_unix_duration(Duration::from_secs(secs as u64))
                .expect("time"),
        )
    };
    let now = unix_now();
    let dp = CrlDistributionPoints(vec![DistributionPoint {
        distribution_point: Some(DistributionPointName::FullName(vec![
            GeneralName::UniformResourceIdentifier(Ia5String::new(crl_url).expect("url")),
        ])),
        reasons: None,
        crl_issuer: None,
    }]);
    let algorithm = spki07::AlgorithmIdentifierOwned {
        oid: der07::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
        parameters: None,
    };
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(serial(serial_hex).as_bytes()).expect("serial"),
        signature: algorithm.clone(),
        issuer: issuer.tbs_certificate.subject.clone(),
        validity: Validity {
            not_before: time(now - 3600),
            not_after: time(now + 86_400),
        },
        subject: subject.clone(),
        subject_public_key_info: issuer.tbs_certificate.subject_public_key_info.clone(),
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(vec![dp.to_extension(&subject, &[]).expect("crl dp")]),
    };
    let signer =
        hsmgate_signer_api::BatchSigner::connect_lazy(&env.gateway.url(), None).expect("gateway");
    let signed = signer
        .sign_one(
            common::KEY_P256,
            hsmgate_signer_api::v1::SignatureAlgorithm::EcdsaSha256,
            hsmgate_signer_api::Payload::TbsCertificate,
            tbs.to_der().expect("tbs"),
        )
        .await
        .expect("sign leaf");
    let (signature, used) = (signed.signature, signed.algorithm_identifier);
    assert_eq!(
        spki07::AlgorithmIdentifierOwned::from_der(&used).expect("alg"),
        algorithm
    );
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: algorithm,
        signature: BitString::from_bytes(&signature).expect("bits"),
    };
    let pem = cert.to_pem(der07::pem::LineEnding::LF).expect("pem");
    env.write(&format!("leaf-{serial_hex}.pem"), pem.as_bytes())
}

/// `openssl verify -crl_check -CRLfile <shard> -CAfile <issuer> <leaf>`.
fn openssl_verify(env: &Env, crl_der: &[u8], leaf: &Path) -> (bool, String) {
    let der_path = env.write("verify.crl.der", crl_der);
    let pem_path = env.dir.path().join("verify.crl.pem");
    let conv = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-outform", "PEM", "-in"])
        .arg(&der_path)
        .arg("-out")
        .arg(&pem_path)
        .output()
        .expect("openssl crl");
    assert!(conv.status.success());
    let out = Command::new("openssl")
        .args(["verify", "-crl_check", "-CAfile"])
        .arg(&env.issuer_p256)
        .arg("-CRLfile")
        .arg(&pem_path)
        .arg(leaf)
        .output()
        .expect("openssl verify");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn openssl_verify_crl_check_sees_the_revocation_in_the_certificates_own_shard() {
    let env = Env::start_with(|c| with_crl(c, |_| {}));
    let config = env.config();
    let presigner = Presigner::from_config(&config, PresignerMetrics::default())
        .await
        .expect("presigner");
    let updater = Updater::from_config(&config, CrlMetrics::default())
        .await
        .expect("updater");
    updater.prepare().await.expect("prepare");
    let p256 = IssuerName(ISSUER_P256.into());
    let map = ShardMap::new(&p256, config.issuers[0].crl.as_ref().expect("crl"));
    let hex = "5eed000000000000000000000000000006";
    let shard = map.shard_of(&serial(hex));
    let leaf = leaf(&env, hex, &map.url_for(&serial(hex))).await;
    publish(&presigner, ISSUER_P256, &[(hex, CertStatus::Good)]).await;
    updater.pass(unix_now(), true).await.expect("pass");
    let store = ocsp::store::SqliteStore::open(env.dir.path().join("ocsp.sqlite")).expect("store");
    let crl = store
        .get_crl(&p256, shard)
        .await
        .expect("get")
        .expect("stored");
    let (ok, text) = openssl_verify(&env, &crl.der, &leaf);
    assert!(ok && text.contains("OK"), "before the revocation: {text}");

    publish(
        &presigner,
        ISSUER_P256,
        &[(
            hex,
            CertStatus::Revoked {
                at: unix_now() - 5,
                reason: Some(1),
            },
        )],
    )
    .await;
    let report = updater.pass(unix_now(), false).await.expect("pass");
    assert_eq!(report.stored, 1, "only the pending shard: {report:?}");
    let crl = store
        .get_crl(&p256, shard)
        .await
        .expect("get")
        .expect("stored");
    let (ok, text) = openssl_verify(&env, &crl.der, &leaf);
    assert!(
        !ok && text.contains("certificate revoked"),
        "after the revocation: {text}"
    );
}

/// A revocation recorded by a process that does not know the CRL configuration (no shard in
/// its record) still reaches its shard: the updater's next pass assigns the shard and signs it.
#[tokio::test]
async fn a_revocation_recorded_without_a_shard_is_backfilled_and_listed() {
    let env = Env::start_with(|c| with_crl(c, |_| {}));
    let config = env.config();
    let updater = Updater::from_config(&config, CrlMetrics::default())
        .await
        .expect("updater");
    updater.prepare().await.expect("prepare");
    updater.pass(unix_now(), true).await.expect("pass");
    let p256 = IssuerName(ISSUER_P256.into());
    let hex = "0ff1ce00000000000000000000000000000002";
    let store = ocsp::store::SqliteStore::open(env.dir.path().join("ocsp.sqlite")).expect("store");
    let at = unix_now() - 5;
    // No set_crl_shards: as an older frontend would record it.
    store
        .upsert_certificates(vec![(
            p256.clone(),
            serial(hex),
            CertStatus::Revoked {
                at,
                reason: Some(4),
            },
        )])
        .await
        .expect("upsert");
    let before = store.get_crl(&p256, 2).await.expect("get").expect("stored");
    assert_eq!(before.entries, 0);
    let report = updater.pass(unix_now(), false).await.expect("pass");
    assert_eq!(report.stored, 1, "{report:?}");
    let after = store.get_crl(&p256, 2).await.expect("get").expect("stored");
    assert_eq!(after.entries, 1);
    assert!(after.number > before.number);
    let path = env.write("backfilled.crl", &after.der);
    python_crl(
        &path,
        &env.issuer_p256,
        &format!("{BASE_URL}/test-p256/2.crl"),
        before.number + 1,
        &[format!("{hex}:{at}:superseded")],
    );
}
