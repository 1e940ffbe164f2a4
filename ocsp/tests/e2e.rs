//! The whole OCSP pipeline as operators run it, with clients nobody here wrote: the real
//! `signer` on SoftHSM2, `hsmgate-ocsp import`, `presign` and `serve` as separate processes,
//! and `openssl ocsp` asking over HTTP (POST) and `curl` (GET). Then the backends go away —
//! the gateway, and in Redis mode Redis itself — and the responder keeps answering.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{Env, ISSUER_P256, hsmgate_ocsp};
use ocsp::HashAlg;
use ocsp::config::{CertIdHashes, Config, Store};

/// Metrics on an ephemeral loopback port.
fn metrics_on_any_port(config: &mut Config) {
    config.responder.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
}

/// A child process killed on drop (the stack kit's).
type Proc = hsmgate_stack::Process;

/// Starts `hsmgate-ocsp serve`; its process and HTTP address (from the READY line).
fn serve(config: &Path) -> (Proc, SocketAddr, Option<SocketAddr>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hsmgate-ocsp"));
    command
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn");
    let process = Proc::spawn_ready(
        "hsmgate-ocsp serve",
        command,
        hsmgate_stack::Log::Inherit,
        hsmgate_stack::READY_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let http = process.ready_addr("http").unwrap_or_else(|e| panic!("{e}"));
    let metrics = process.ready().and_then(|r| r.addr("metrics"));
    (process, http, metrics)
}

/// Starts `hsmgate-ocsp presign` (the refresh loop).
fn presign(config: &Path) -> Proc {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hsmgate-ocsp"));
    command
        .args(["presign", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn");
    Proc::spawn("hsmgate-ocsp presign", command, hsmgate_stack::Log::Inherit)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `openssl ocsp -url`: builds the request itself and POSTs it; its whole output.
fn ask(issuer: &Path, serial: &str, url: SocketAddr, sha256: bool) -> String {
    let mut cmd = Command::new("openssl");
    cmd.arg("ocsp")
        .arg("-issuer")
        .arg(issuer)
        .arg("-CAfile")
        .arg(issuer);
    if sha256 {
        cmd.arg("-sha256");
    }
    let out = cmd
        .args([
            "-serial",
            &format!("0x{serial}"),
            "-no_nonce",
            "-url",
            &format!("http://{url}"),
        ])
        .output()
        .expect("openssl ocsp");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asks until `openssl ocsp` reports `want` for the serial, for at most `limit`.
fn ask_until(issuer: &Path, serial: &str, url: SocketAddr, want: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = ask(issuer, serial, url, false);
        if text.contains(&format!("0x{serial}: {want}")) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// GET `/{base64 of the DER request}` with curl, the request made by `openssl ocsp -reqout`;
/// the response is then checked by `openssl ocsp -respin`.
fn get_with_curl(env: &Env, issuer: &Path, serial: &str, url: SocketAddr) -> String {
    let req = env.dir.path().join(format!("req-{serial}.der"));
    let status = Command::new("openssl")
        .arg("ocsp")
        .arg("-issuer")
        .arg(issuer)
        .args(["-serial", &format!("0x{serial}"), "-no_nonce", "-reqout"])
        .arg(&req)
        .status()
        .expect("openssl reqout");
    assert!(status.success());
    let der = std::fs::read(&req).expect("request");
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let path = percent_encode(&b64);
    let resp = env.dir.path().join(format!("resp-{serial}.der"));
    let out = Command::new("curl")
        .args(["-s", "--path-as-is", "-D", "-", "-o"])
        .arg(&resp)
        .arg(format!("http://{url}/{path}"))
        .output()
        .expect("curl");
    let headers = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(headers.contains("200"), "{headers}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: application/ocsp-response"),
        "{headers}"
    );
    let check = common::openssl_ocsp(&resp, issuer, serial, false, &["-no_nonce"]);
    assert!(check.success, "{}", check.text);
    check.text
}

fn percent_encode(b64: &str) -> String {
    b64.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

fn metrics(addr: SocketAddr) -> String {
    let out = Command::new("curl")
        .args(["-s", &format!("http://{addr}/metrics")])
        .output()
        .expect("curl metrics");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn import(env: &Env, lines: &str) {
    let list = env.write("import.txt", lines.as_bytes());
    let config = env.config_path.display().to_string();
    let out = hsmgate_ocsp(&["import", "--config", &config, &list.display().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `hsmgate-ocsp publish` of a revocation (keyCompromise, 2026-11-01 10:00 UTC) of `serial`
/// under the P-256 issuer; panics with its stderr if it fails.
fn publish_revoked(config: &Path, serial: &str) {
    let out = hsmgate_ocsp(&[
        "publish",
        "--config",
        &config.display().to_string(),
        "--issuer",
        ISSUER_P256,
        "--serial",
        serial,
        "--revoked",
        "--reason",
        "1",
        "--at",
        "2026-11-01T10:00:00Z",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn imported_certificates_are_served_good_then_revoked_and_survive_the_gateway() {
    let mut env = Env::start_with(|c| {
        metrics_on_any_port(c);
        c.responder.cache_fresh_secs = 1;
    });
    let issuer = env.issuer_p256.clone();
    let serials = ["5e1a0001", "5e1a0002", "00ff5e1a0003"];
    import(
        &env,
        &serials
            .iter()
            .map(|s| format!("{ISSUER_P256} {s} good\n"))
            .collect::<String>(),
    );
    let _presigner = presign(&env.config_path);
    let (_responder, http, metrics_addr) = serve(&env.config_path);

    // The refresh loop signs the imported certificates; openssl then verifies them as good,
    // with SHA-1 and SHA-256 CertIDs, over POST...
    for serial in serials {
        let text = ask_until(&issuer, serial, http, "good", Duration::from_secs(20));
        assert!(text.contains(&format!("0x{serial}: good")), "{text}");
        assert!(text.contains("Response verify OK"), "{text}");
    }
    let text = ask(&issuer, serials[0], http, true);
    assert!(
        text.contains("good") && text.contains("Response verify OK"),
        "{text}"
    );
    // ...and over GET.
    let text = get_with_curl(&env, &issuer, serials[1], http);
    assert!(text.contains(": good"), "{text}");

    // A serial never issued is never good.
    let text = ask(&issuer, "0badbad0", http, false);
    assert!(text.contains("unauthorized"), "{text}");

    // Revocation: durable and signed before `publish` returns; served within cache_fresh_secs.
    publish_revoked(&env.config_path, serials[0]);
    let text = ask_until(&issuer, serials[0], http, "revoked", Duration::from_secs(5));
    assert!(
        text.contains(&format!("0x{}: revoked", serials[0])),
        "{text}"
    );
    assert!(text.contains("Reason: keyCompromise"), "{text}");
    assert!(
        text.contains("Revocation Time: Nov  1 10:00:00 2026 GMT"),
        "{text}"
    );
    assert!(text.contains("Response verify OK"), "{text}");

    // The gateway and its HSMs go away: the responder does not notice.
    env.gateway.kill();
    std::thread::sleep(Duration::from_millis(1500));
    for (serial, want) in [
        (serials[0], "revoked"),
        (serials[1], "good"),
        (serials[2], "good"),
    ] {
        let text = ask(&issuer, serial, http, false);
        assert!(
            text.contains(&format!("0x{serial}: {want}")),
            "after the gateway died: {text}"
        );
    }
    let m = metrics(metrics_addr.expect("metrics listener"));
    assert!(m.contains("ocsp_responses_total"), "{m}");
}

/// A private Redis server on a free port, killed on drop.
struct Redis {
    proc: Option<Proc>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut command = Command::new("redis-server");
        command
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null());
        let process = Proc::spawn_as_configured("redis-server", command).expect("redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            proc: Some(process),
            port,
            _dir: dir,
        }
    }

    fn kill(&mut self) {
        self.proc = None;
    }
}

#[test]
fn with_redis_the_responder_outlives_redis_and_the_gateway() {
    let mut redis = Redis::start();
    let port = redis.port;
    let mut env = Env::start_with(|c| {
        metrics_on_any_port(c);
        c.responder.cache_fresh_secs = 1;
        c.store = Store::Redis {
            urls: vec![format!("redis://127.0.0.1:{port}")],
            cluster: false,
            replica: "replica.sqlite".into(),
        };
    });
    let issuer = env.issuer_p256.clone();
    let serials = ["7ed150001", "7ed150002"];
    import(
        &env,
        &serials
            .iter()
            .map(|s| format!("{ISSUER_P256} {s} good\n"))
            .collect::<String>(),
    );
    let presigner = presign(&env.config_path);
    let (_responder, http, metrics_addr) = serve(&env.config_path);
    for serial in serials {
        let text = ask_until(&issuer, serial, http, "good", Duration::from_secs(20));
        assert!(
            text.contains(&format!("0x{serial}: good")) && text.contains("Response verify OK"),
            "{text}"
        );
    }
    let metrics_addr = metrics_addr.expect("metrics listener");
    assert!(metrics(metrics_addr).contains("ocsp_degraded 0"));

    // Everything behind the responder stops: Redis, the pre-signer, the gateway.
    redis.kill();
    drop(presigner);
    env.gateway.kill();
    std::thread::sleep(Duration::from_millis(1500)); // past cache_fresh_secs: cache entries are stale
    for serial in serials {
        let text = ask(&issuer, serial, http, false);
        assert!(
            text.contains(&format!("0x{serial}: good")) && text.contains("Response verify OK"),
            "with Redis down: {text}"
        );
    }
    let m = metrics(metrics_addr);
    assert!(
        m.contains("ocsp_degraded 1"),
        "the responder does not say it is degraded:\n{m}"
    );
    // A certificate it never saw cannot be vouched for: never `good`.
    let text = ask(&issuer, "7ed15ffff", http, false);
    assert!(!text.contains(": good"), "{text}");
}

/// `presigner.cert_id_hashes = ["sha256"]` through the processes: the refresh loop signs
/// SHA-256-only responses, `openssl ocsp -sha256` gets good, a SHA-1 request gets
/// `unauthorized` (the response has nothing it could match), and the responder counts both
/// kinds of request. A bad value stops `serve` at start-up naming the field.
#[test]
fn sha256_only_responses_answer_sha256_and_refuse_sha1() {
    let env = Env::start_with(|c| {
        metrics_on_any_port(c);
        c.presigner.cert_id_hashes = CertIdHashes::only(HashAlg::Sha256);
    });
    let issuer = env.issuer_p256.clone();
    let serial = "5e256001";
    import(&env, &format!("{ISSUER_P256} {serial} good\n"));
    let _presigner = presign(&env.config_path);
    let (_responder, http, metrics_addr) = serve(&env.config_path);

    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = ask(&issuer, serial, http, true);
        if text.contains(&format!("0x{serial}: good")) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(text.contains(&format!("0x{serial}: good")), "{text}");
    assert!(text.contains("Response verify OK"), "{text}");

    let text = ask(&issuer, serial, http, false);
    assert!(text.contains("Responder Error: unauthorized (6)"), "{text}");
    assert!(!text.contains("good"), "{text}");

    let m = metrics(metrics_addr.expect("metrics listener"));
    let count = |hash: &str| -> u64 {
        let prefix = format!("ocsp_requests_by_cert_id_hash_total{{hash=\"{hash}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {hash} series in:\n{m}"))
    };
    assert_eq!(count("sha1"), 1, "{m}");
    assert!(count("sha256") >= 1, "{m}");
    assert_eq!(count("other"), 0, "{m}");

    // A value the typed config cannot hold: set in the serialized tree instead.
    let mut tree = toml::Table::try_from(env.config()).expect("config as TOML");
    tree["presigner"]["cert_id_hashes"] = toml::Value::from(vec!["sha256", "sha512"]);
    let bad = env.dir.path().join("bad.toml");
    hsmgate_stack::configs::write(&tree, &bad).expect("write bad.toml");
    let out = hsmgate_ocsp(&["serve", "--config", &bad.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("presigner.cert_id_hashes: unknown hash \"sha512\""),
        "{stderr}"
    );
}

/// Issue 13: every response the responder sends holds exactly one SingleResponse, whose CertID
/// uses the hash the request used — with the default `cert_id_hashes` (both hashes, two
/// separately signed responses per certificate) and with `["sha1"]` (SHA-256 requests then get
/// `unauthorized`). Checked over HTTP by `openssl ocsp` (count of "Cert Status:" and the hash
/// algorithm it prints) and by Python `cryptography`'s single-response `certificate_status`
/// (what certbot reads), for a good and a revoked certificate.
#[test]
fn each_response_has_one_single_response_for_the_hash_the_request_used() {
    let python = common::python_cryptography();
    if !python {
        println!("NOTE: python3 `cryptography` is not installed: skipping the Python checks");
    }
    for setting in [None, Some(CertIdHashes::only(HashAlg::Sha1))] {
        let env = Env::start_with(|c| {
            if let Some(hashes) = setting.clone() {
                c.presigner.cert_id_hashes = hashes;
            }
        });
        let issuer = env.issuer_p256.clone();
        let (good, revoked) = ("5e1e0001", "5e1e0002");
        import(
            &env,
            &format!("{ISSUER_P256} {good} good\n{ISSUER_P256} {revoked} good\n"),
        );
        let _presigner = presign(&env.config_path);
        let (_responder, http, _) = serve(&env.config_path);
        let text = ask_until(&issuer, good, http, "good", Duration::from_secs(20));
        assert!(text.contains(&format!("0x{good}: good")), "{text}");
        publish_revoked(&env.config_path, revoked);
        let text = ask_until(&issuer, revoked, http, "revoked", Duration::from_secs(10));
        assert!(text.contains(&format!("0x{revoked}: revoked")), "{text}");

        for (serial, expected) in [
            (good, "good".to_owned()),
            (revoked, "revoked:1793527200:key_compromise".to_owned()),
        ] {
            for (hash, sha256) in [("sha1", false), ("sha256", true)] {
                let resp = env.dir.path().join(format!("{serial}-{hash}.der"));
                let mut cmd = Command::new("openssl");
                cmd.arg("ocsp")
                    .arg("-issuer")
                    .arg(&issuer)
                    .arg("-CAfile")
                    .arg(&issuer);
                if sha256 {
                    cmd.arg("-sha256");
                }
                let out = cmd
                    .args(["-serial", &format!("0x{serial}"), "-no_nonce", "-resp_text"])
                    .args(["-url", &format!("http://{http}"), "-respout"])
                    .arg(&resp)
                    .output()
                    .expect("openssl ocsp");
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                println!("--- {setting:?} 0x{serial} {hash}\n{text}");
                if setting.is_some() && sha256 {
                    assert!(text.contains("Responder Error: unauthorized (6)"), "{text}");
                    continue;
                }
                assert!(text.contains("Response verify OK"), "{text}");
                assert_eq!(text.matches("Cert Status:").count(), 1, "{text}");
                assert!(text.contains(&format!("Hash Algorithm: {hash}")), "{text}");
                let word = if expected == "good" {
                    "good"
                } else {
                    "revoked"
                };
                assert!(text.contains(&format!("0x{serial}: {word}")), "{text}");
                if python {
                    match common::python_check(&resp, &issuer, serial, &expected, &[hash]) {
                        Ok(text) => println!("{}", text.trim()),
                        Err(text) => panic!("python cryptography, {setting:?} {hash}: {text}"),
                    }
                }
            }
        }
    }
}
