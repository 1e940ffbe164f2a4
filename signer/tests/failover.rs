//! Failover under load with real PKCS#11 faults: `hsm-sim` (a PKCS#11 module that forwards to
//! SoftHSM2) makes tokens return `CKR_DEVICE_ERROR`, hang in `C_Sign`, or come back, while
//! clients keep signing. Required: zero failed requests, traffic moves to the other HSM or
//! datacenter, a returning HSM takes traffic again within 5 s, a hung HSM does not hang callers.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::{Gateway, LoadReport, Module, served_between};

/// Runs load (4 batch tasks of 8 and 2 unary tasks) while `script` injects faults. The script
/// gets the instant load started and returns the moments it wants to refer to afterwards.
async fn under_load<F, Fut>(gw: &Gateway, script: F) -> (LoadReport, Vec<Duration>)
where
    F: FnOnce(Instant) -> Fut,
    Fut: Future<Output = Vec<Duration>>,
{
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let batches = common::load(gw, "ca-p256", 4, 8, stop_rx.clone());
    let unary = common::load(gw, "ca-p256", 2, 1, stop_rx);
    let driver = async {
        let marks = script(started).await;
        let _ = stop_tx.send(true);
        marks
    };
    let (mut a, b, marks) = tokio::join!(batches, unary, driver);
    a.ok += b.ok;
    a.failed.extend(b.failed);
    a.served_by.extend(b.served_by);
    a.served_by.sort();
    a.max_latency = a.max_latency.max(b.max_latency);
    (a, marks)
}

fn assert_no_failures(report: &LoadReport, gw: &Gateway) {
    assert!(
        report.failed.is_empty(),
        "{} of {} requests failed, first: {:?}\nlogs:\n{}",
        report.failed.len(),
        report.ok + report.failed.len() as u64,
        &report.failed[..report.failed.len().min(5)],
        gw.logs()
    );
    assert!(
        report.ok > 500,
        "too little load to prove anything: {}",
        report.ok
    );
}

/// How long after `from` `hsm` first signed something.
fn first_served(report: &LoadReport, hsm: &str, from: Duration) -> Option<Duration> {
    report
        .served_by
        .iter()
        .find(|(t, h)| *t >= from && h == hsm)
        .map(|(t, _)| *t - from)
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_local_hsm_failing_under_load_fails_no_request_and_it_rejoins() {
    let gw = Gateway::start(Module::Sim);
    gw.wait_available("ca-p256", 4, Duration::from_secs(20))
        .await;
    let gw = &gw;
    let (report, marks) = under_load(gw, |start| async move {
        sleep_ms(1000).await;
        gw.set_faults("EAST-1 fail 0x30\n");
        let fault = start.elapsed();
        sleep_ms(1500).await;
        gw.set_faults("");
        let healed = start.elapsed();
        sleep_ms(5500).await;
        vec![fault, healed]
    })
    .await;
    assert_no_failures(&report, gw);
    let (fault, healed) = (marks[0], marks[1]);
    // While east-1 fails, east-2 carries the load; the other datacenter is not needed.
    let during = served_between(&report, fault + Duration::from_millis(300), healed);
    eprintln!(
        "ok={} max_latency={:?} during the fault: {during:?}",
        report.ok, report.max_latency
    );
    assert!(
        !during.contains_key("east-1"),
        "east-1 served while failing: {during:?}"
    );
    assert!(
        during.get("east-2").copied().unwrap_or(0) > 50,
        "{during:?}"
    );
    let back = first_served(&report, "east-1", healed).expect("east-1 never served again");
    eprintln!(
        "east-1 rejoined {} ms after the fault was cleared",
        back.as_millis()
    );
    assert!(
        back < Duration::from_secs(5),
        "east-1 took {back:?} to rejoin"
    );
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains(r#"hsmgate_hsm_errors_total{hsm="east-1",code="CKR_DEVICE_ERROR"}"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_local_hsms_failing_moves_traffic_to_the_other_datacenter() {
    let gw = Gateway::start(Module::Sim);
    gw.wait_available("ca-p256", 4, Duration::from_secs(20))
        .await;
    let gw = &gw;
    let (report, marks) = under_load(gw, |start| async move {
        sleep_ms(1000).await;
        gw.set_faults("EAST-1 fail 0x30\nEAST-2 fail 0xE0\n");
        let fault = start.elapsed();
        sleep_ms(2000).await;
        gw.set_faults("");
        let healed = start.elapsed();
        sleep_ms(5500).await;
        vec![fault, healed]
    })
    .await;
    assert_no_failures(&report, gw);
    let (fault, healed) = (marks[0], marks[1]);
    let before = served_between(&report, Duration::ZERO, fault);
    let during = served_between(&report, fault + Duration::from_millis(300), healed);
    let after = served_between(
        &report,
        healed + Duration::from_secs(5),
        Duration::from_secs(3600),
    );
    eprintln!(
        "ok={} before: {before:?} during: {during:?} after: {after:?}",
        report.ok
    );
    assert!(before.keys().all(|h| h.starts_with("east-")), "{before:?}");
    assert!(
        !during.is_empty() && during.keys().all(|h| h.starts_with("west-")),
        "{during:?}"
    );
    // Back home: the local pair takes the traffic again.
    let back = first_served(&report, "east-1", healed)
        .into_iter()
        .chain(first_served(&report, "east-2", healed))
        .max()
        .expect("the local pair never came back");
    eprintln!(
        "local pair back {} ms after the fault was cleared",
        back.as_millis()
    );
    assert!(back < Duration::from_secs(5), "{back:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_hsm_does_not_hang_callers() {
    // hsm_call_ms = 1000 in two-dc.toml: a call running longer marks the HSM hung.
    let gw = Gateway::start(Module::Sim);
    gw.wait_available("ca-p256", 4, Duration::from_secs(20))
        .await;
    let gw = &gw;
    let (report, marks) = under_load(gw, |start| async move {
        sleep_ms(1000).await;
        gw.set_faults("EAST-1 hang\n");
        let hang = start.elapsed();
        sleep_ms(3000).await;
        gw.set_faults("");
        let healed = start.elapsed();
        sleep_ms(5000).await;
        vec![hang, healed]
    })
    .await;
    assert_no_failures(&report, gw);
    let (hang, healed) = (marks[0], marks[1]);
    // Callers caught in the hang were answered by east-2 within the watchdog's 1 s (plus the
    // retry), far inside their 10 s deadline.
    eprintln!("ok={} max latency {:?}", report.ok, report.max_latency);
    assert!(
        report.max_latency < Duration::from_millis(2500),
        "{:?}",
        report.max_latency
    );
    let during = served_between(&report, hang + Duration::from_millis(1500), healed);
    assert!(!during.contains_key("east-1"), "{during:?}");
    assert!(
        during.get("east-2").copied().unwrap_or(0) > 50,
        "{during:?}"
    );
    let back = first_served(&report, "east-1", healed).expect("east-1 never served again");
    eprintln!(
        "east-1 rejoined {} ms after the hang ended",
        back.as_millis()
    );
    assert!(back < Duration::from_secs(5), "{back:?}");
    assert!(gw.logs().contains("hung HSM"), "{}", gw.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_session_is_replaced_without_leaving_rotation() {
    let gw = Gateway::start(Module::Sim);
    gw.wait_available("ca-p256", 4, Duration::from_secs(20))
        .await;
    let gw = &gw;
    let (report, marks) = under_load(gw, |start| async move {
        sleep_ms(500).await;
        // Exactly-once faults are not expressible in the control file; a short burst of
        // CKR_SESSION_HANDLE_INVALID on C_Sign stands in for a session the HSM dropped.
        gw.set_faults("EAST-1 fail-sign 0xB3\n");
        let fault = start.elapsed();
        sleep_ms(60).await;
        gw.set_faults("");
        sleep_ms(3000).await;
        vec![fault]
    })
    .await;
    assert_no_failures(&report, gw);
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains(
            r#"hsmgate_hsm_errors_total{hsm="east-1",code="CKR_SESSION_HANDLE_INVALID"}"#
        ) || gw.logs().contains("session replaced"),
        "the fault was never seen:\n{}",
        gw.logs()
    );
    let late = served_between(
        &report,
        marks[0] + Duration::from_millis(2500),
        Duration::from_secs(3600),
    );
    assert!(
        late.contains_key("east-1"),
        "east-1 is not serving after the burst: {late:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_signs_through_the_simulated_hsm() {
    let gw = Gateway::start(Module::Sim);
    gw.wait_available("ca-ed25519", 4, Duration::from_secs(20))
        .await;
    let mut client = gw.client().await;
    let message = b"tbsCertificate bytes".to_vec();
    let resp = client
        .sign(common::message_request(
            "ca-ed25519",
            hsmgate_signer_api::v1::SignatureAlgorithm::Ed25519,
            message.clone(),
        ))
        .await
        .expect("ed25519 via hsm-sim")
        .into_inner();
    common::verify(
        "ca-ed25519",
        hsmgate_signer_api::v1::SignatureAlgorithm::Ed25519,
        &message,
        &resp.signature,
        false,
    )
    .expect("verifies");
}
