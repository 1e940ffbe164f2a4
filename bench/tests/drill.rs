//! `hsm-bench drill` end to end, interrupted: a real gateway on SoftHSM2 tokens, the drill
//! killed (SIGKILL, as a crash) while it re-signs the revoked responses, then run again on the
//! same directory. What must hold: the second run resumes (it re-signs only what the first did
//! not store), and afterwards every certificate's stored response parses as `revoked`, none is
//! missing, and the sampled signatures verify.
//!
//! A second test runs the drill against modelled HSMs (`--model`).
//!
//! Needs the `signer`, `hsm-config` and `hsmgate-ocsp` binaries and `libhsm_sim.so` of this build
//! (`cargo build --workspace`; `hsm-config/dev/test.sh` does it), `softhsm2`, `opensc` and
//! `openssl`.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;
use common::{built, output_text};

use std::io::{BufRead, BufReader};

use hsmgate_stack::{Log, Process};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Certificates in the drill: enough that re-signing them takes seconds in a debug build.
const COUNT: u64 = 30_000;

/// The development configuration, with its tokens, PINs and port in `dir`: written from the
/// typed schema by the stack kit.
fn provision(dir: &Path) -> PathBuf {
    let examples = hsmgate_stack::configs::example_path("dev.toml");
    let mut config =
        hsmgate_stack::configs::example("dev.toml", examples.parent().unwrap()).unwrap();
    // Plain text on loopback for the `bench` client (the dev config's mTLS is tested in
    // signer/tests/security.rs), no metrics listener, the audit log and PINs in `dir`.
    hsmgate_stack::configs::plaintext(&mut config, "bench");
    hsmgate_stack::configs::ephemeral_ports(&mut config, false);
    config.audit.dir = dir.join("audit");
    hsmgate_stack::configs::pins_into(&mut config, &dir.join("pins"));
    let path = dir.join("gateway.toml");
    hsmgate_stack::configs::write(&config, &path).unwrap();
    let out = Command::new(built("hsm-config"))
        .arg("provision")
        .arg(&path)
        .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "provision: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// The gateway, and its gRPC URL once it printed READY.
fn gateway(dir: &Path, config: &Path) -> (Process, String) {
    let mut command = Command::new(built("signer"));
    command
        .arg("--config")
        .arg(config)
        .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"));
    let process = Process::spawn_ready(
        "signer",
        command,
        Log::File(dir.join("signer.log")),
        hsmgate_stack::READY_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let addr = process.ready_addr("grpc").unwrap_or_else(|e| panic!("{e}"));
    (process, format!("http://{addr}"))
}

fn drill(dir: &Path, config: &Path, url: &str, json: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hsm-bench"));
    cmd.arg("drill")
        .arg("--config")
        .arg(config)
        .args(["--key", "dev-bench-p256", "--gateway", url])
        .args(["--count", &COUNT.to_string(), "--signbatch-seconds", "1"])
        .arg("--dir")
        .arg(dir.join("work"))
        .arg("--json")
        .arg(json)
        .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"));
    cmd
}

#[test]
fn an_interrupted_drill_resumes_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = provision(dir.path());
    let (mut gateway, url) = gateway(dir.path(), &config);

    // First run: killed 0.5 s into re-signing.
    let first_json = dir.path().join("first.json");
    let mut first = drill(dir.path(), &config, &url, &first_json)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(first.stderr.take().unwrap());
    let started = Instant::now();
    let mut resigning = false;
    for line in stderr.lines() {
        let line = line.unwrap();
        if line.starts_with("re-signing") {
            resigning = true;
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no re-signing phase"
        );
    }
    assert!(resigning, "the drill ended before re-signing");
    // Killed once some revoked responses are stored (read from the drill's own SQLite file, as
    // another process would): a fixed delay could kill it before the first chunk on a slow
    // machine, or after the last on a fast one.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store =
        ocsp::store::SqliteStore::open(dir.path().join("work").join("ocsp.sqlite")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let pending = runtime
            .block_on(store.backlog(ocsp::unix_now(), 0))
            .unwrap()
            .revocations_pending;
        if pending < COUNT {
            assert!(
                pending > 0,
                "the first run finished before it could be killed"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no revoked response stored");
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        !first_json.exists(),
        "the first run finished before it was killed: nothing was interrupted"
    );

    // Second run: resumes.
    let second_json = dir.path().join("second.json");
    let out = drill(dir.path(), &config, &url, &second_json)
        .output()
        .unwrap();
    gateway.kill();
    assert!(out.status.success(), "second run: {}", output_text(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&second_json).unwrap()).unwrap();
    assert_eq!(report["resumed"], true);
    let resigned = report["resigned"].as_u64().unwrap();
    assert!(
        resigned < COUNT,
        "the second run re-signed {resigned} of {COUNT}: the first run's work was lost"
    );
    assert_eq!(report["verified_revoked"].as_u64().unwrap(), COUNT);
    assert_eq!(report["missing"].as_u64().unwrap(), 0);
    assert_eq!(report["not_revoked"].as_u64().unwrap(), 0);
    assert!(report["signatures_checked"].as_u64().unwrap() >= 1000);
    assert_eq!(report["signatures_bad"].as_u64().unwrap(), 0);
    // The CRL side: every one of the 128 shards re-signed, read back, signed by the issuer's
    // key, listing every revoked serial exactly once between them.
    let crl = &report["crl"];
    assert_eq!(crl["shards"].as_u64().unwrap(), 128, "{crl}");
    assert_eq!(crl["stored"].as_u64().unwrap(), 128, "{crl}");
    assert_eq!(crl["failed"].as_u64().unwrap(), 0, "{crl}");
    assert_eq!(crl["verified"].as_u64().unwrap(), 128, "{crl}");
    assert_eq!(crl["bad"].as_u64().unwrap(), 0, "{crl}");
    assert_eq!(crl["entries"].as_u64().unwrap(), COUNT, "{crl}");
    assert_eq!(crl["missing_entries"].as_u64().unwrap(), 0, "{crl}");
    assert_eq!(crl["unexpected_entries"].as_u64().unwrap(), 0, "{crl}");
    assert!(crl["bytes"].as_u64().unwrap() > COUNT * 20, "{crl}");
}

/// `--model`: the drill sets up two modelled HSMs (hsm-sim over SoftHSM2, real signatures),
/// runs against them, and says so; the gateway's speed is the model's, not SoftHSM2's.
#[test]
fn a_drill_against_modelled_hsms_runs_at_their_speed_and_says_so() {
    const N: u64 = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_hsm-bench"))
        .arg("drill")
        // Two slow modelled HSMs (4 units, 2,000/s each), so that any test machine keeps up.
        .args(["--model", "units=4 rate=2000", "--sessions", "8"])
        .arg("--signer")
        .arg(built("signer"))
        .arg("--sim")
        .arg(built("libhsm_sim.so"))
        .args(["--count", &N.to_string(), "--signbatch-seconds", "1"])
        .arg("--dir")
        .arg(dir.path().join("work"))
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{}: {text}", out.status);
    assert!(!text.contains("STAND-IN"), "{text}");

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let models = report["modelled_hsms"].as_array().unwrap();
    assert_eq!(models.len(), 2, "{report}");
    for m in models {
        assert_eq!(m["rated_per_s"].as_f64().unwrap(), 2000.0, "{m}");
        assert_eq!(m["stand_in_signatures"], false);
    }
    assert_eq!(report["stand_in_signatures"], false);
    // The model bounds the gateway: SoftHSM2 alone signs several times faster than 4,000/s.
    let signbatch = report["signbatch_per_s"].as_f64().unwrap();
    assert!(
        signbatch > 0.0 && signbatch < 4_400.0,
        "SignBatch {signbatch}/s"
    );
    assert_eq!(report["resigned"].as_u64().unwrap(), N);
    assert_eq!(report["verified_revoked"].as_u64().unwrap(), N);
    assert_eq!(report["missing"].as_u64().unwrap(), 0);
    assert_eq!(report["not_revoked"].as_u64().unwrap(), 0);
    assert_eq!(report["signatures_checked"].as_u64().unwrap(), 1_000);
    assert_eq!(report["signatures_bad"].as_u64().unwrap(), 0);
}
