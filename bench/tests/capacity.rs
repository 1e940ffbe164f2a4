//! `hsm-bench capacity` end to end, as an operator runs it: a real gateway process in front of
//! two modelled HSMs (hsm-sim over private SoftHSM2 tokens, stand-in signatures), one of them
//! knocked out and brought back mid-run.
//!
//! What is asserted is not speed (this is not a benchmark) but what must hold on any machine:
//! no request fails through the knockout (the gateway retries on the survivor), every
//! signature is counted in the timeline, the knockout happened and was undone, and the report
//! says the signatures were stand-ins.
//!
//! Needs the `signer` binary and `libhsm_sim.so` of this build (`cargo test --workspace` builds
//! both; `hsm-config/dev/test.sh` too), `softhsm2`, `opensc` and `openssl`.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;
use common::{built, output_text};

use std::process::Command;

#[test]
fn a_knockout_fails_no_request_and_the_report_says_stand_in() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let svg = dir.path().join("report.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_hsm-bench"))
        .arg("capacity")
        .arg("--dir")
        .arg(dir.path().join("work"))
        .arg("--signer")
        .arg(built("signer"))
        .arg("--sim")
        .arg(built("libhsm_sim.so"))
        // Slow modelled HSMs, so that a busy test machine keeps up with them.
        .args(["--hsm-rate", "1000", "--units", "4", "--sessions", "8"])
        .args([
            "--sign-concurrency",
            "16",
            "--duration",
            "4s",
            "--warmup",
            "500ms",
        ])
        .args(["--knockout-at", "1s", "--restore-at", "2500ms"])
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{}: {text}", out.status);
    assert!(text.contains("STAND-IN SIGNATURES"), "{text}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let cap = &report["capacity"];
    assert_eq!(cap["failed_requests"], 0, "{text}");
    assert_eq!(cap["stand_in_signatures"], true);
    assert_eq!(cap["knocked_out"], "SIM-1");
    let (out_at, back_at) = (
        cap["knockout_at_s"].as_f64().unwrap(),
        cap["restore_at_s"].as_f64().unwrap(),
    );
    assert!((1.0..1.5).contains(&out_at), "knocked out at {out_at}");
    assert!((2.5..3.0).contains(&back_at), "back at {back_at}");
    assert!(cap["rated_total_per_s"].as_f64().unwrap() > 1999.0);

    // Both modelled HSMs are reported with their model, as stand-ins.
    let models = report["sim_models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert!(models.iter().all(|m| m["stand_in_signatures"] == true));

    // Every counted signature is in the timeline, and signing went on while SIM-1 was out.
    let round = &report["modes"][0]["rounds"][0];
    let timeline: Vec<u64> = round["timeline"]["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(timeline.len(), 40);
    assert_eq!(
        timeline.iter().sum::<u64>(),
        round["signatures"].as_u64().unwrap()
    );
    let while_out: u64 = timeline[15..25].iter().sum();
    assert!(
        while_out > 0,
        "nothing signed while SIM-1 was out: {timeline:?}"
    );

    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(
        chart.starts_with("<svg") && chart.contains("SIM-1 out"),
        "{chart:.200}"
    );
}
