//! Log output of the real `signer` binary (`hsmgate_signer_api::logging`, which every hsmgate
//! binary uses): `HSMGATE_LOG_FORMAT=json` gives one JSON object per line that a log shipper
//! can parse, with the level and the message among the fields; an unknown format stops the
//! process before it reads its configuration, saying which variable is wrong.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

#[test]
fn json_log_lines_parse_and_an_unknown_format_is_refused() {
    let tokens = common::tokens();
    let dir = tempfile::tempdir().expect("tempdir");
    let softhsm_conf = common::private_store(dir.path());
    let config = dir.path().join("signer.toml");
    hsmgate_stack::configs::write(&tokens.config, &config).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_signer"))
        .arg("--config")
        .arg(&config)
        .env("SOFTHSM2_CONF", &softhsm_conf)
        .env("HSMGATE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn signer");
    // Started (READY on stdout), then stopped: SIGTERM drains and logs the shutdown.
    let stdout = child.stdout.take().expect("stdout");
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.starts_with("READY "));
    assert!(ready, "the gateway did not start");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "{exit:?}\n{stderr}");

    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "too few log lines:\n{stderr}");
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for event in &events {
        assert!(
            event["timestamp"].is_string()
                && event["level"].is_string()
                && event["target"].is_string()
                && event["fields"]["message"].is_string(),
            "{event}"
        );
    }
    assert!(
        events
            .iter()
            .any(|e| e["level"] == "INFO" && e["target"].as_str() == Some("signer::server")),
        "{stderr}"
    );
    // The PIN file's content is never among the fields.
    let pin = std::fs::read_to_string(tokens.dir.join("user.pin")).expect("pin");
    assert!(!stderr.contains(pin.trim()), "the PIN was logged");

    // An unknown format: exit status 2 at once, naming the variable, before the config is
    // even read (the file given does not exist).
    let out = Command::new(env!("CARGO_BIN_EXE_signer"))
        .args(["--config", "/nonexistent/signer.toml"])
        .env("HSMGATE_LOG_FORMAT", "xml")
        .stdin(Stdio::null())
        .output()
        .expect("run signer");
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("HSMGATE_LOG_FORMAT") && text.contains("xml"),
        "{text}"
    );
    assert!(!text.contains("nonexistent"), "{text}");
}
