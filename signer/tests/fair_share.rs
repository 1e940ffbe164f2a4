//! Fair shares of HSM capacity, on the real `signer` binary over mTLS: a client flooding the
//! gateway with full batches neither starves another client nor makes it fail, and a call the
//! gateway refuses has spent no HSM signature (every signature the HSMs made was returned to
//! a caller).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Gateway, Module, Pki, client, digest_for, digest_request, mtls_config, verify};
use hsmgate_signer_api::v1::{SignBatchRequest, SignRequest, SignatureAlgorithm as Alg};
use tonic::Code;

/// `flood` and `frontend` sign raw digests with the same keys on the same four HSMs, so they
/// compete for one capacity pool. Neither has configured limits: the defaults apply.
fn clients() -> Vec<hsm_config::Client> {
    use hsm_config::Operation::SignRaw;
    vec![
        client("flood", &[(&["ca-rsa", "ca-p384"], &[SignRaw])]),
        client("frontend", &[(&["ca-p384"], &[SignRaw])]),
    ]
}

/// Each of the four HSMs holds 64 signatures in flight: the pool holds 256, two full batches
/// (a batch is bounded by the two HSMs of key `west-only`).
const PER_HSM: usize = 64;
const BATCH: usize = 2 * PER_HSM;

async fn start(pki: &Pki, module: Module) -> Gateway {
    let mut config = mtls_config(pki, clients());
    module.apply(&mut config);
    for hsm in config
        .datacenters
        .iter_mut()
        .flat_map(|dc| dc.hsms.iter_mut())
    {
        hsm.max_in_flight = PER_HSM as u32;
    }
    config.batching.max_request_items = BATCH;
    let gw = Gateway::spawn(&config).unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    let mut client = gw
        .tls_client(&pki.client_tls("frontend"))
        .await
        .expect("connect over mTLS");
    gw.wait_every_key(&mut client).await;
    // One signature, so that every later count starts from a known total.
    client
        .sign(digest_request("ca-p384", digest_for(0, 48)))
        .await
        .expect("first signature");
    gw
}

/// The sum of `hsmgate_hsm_signatures_total` over every HSM.
async fn signatures_made(gw: &Gateway) -> u64 {
    gw.metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with("hsmgate_hsm_signatures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits until `hsmgate_client_in_flight` of `client` reads at least `calls`.
async fn wait_in_flight(gw: &Gateway, client: &str, calls: u64) {
    let series = format!("hsmgate_client_in_flight{{client=\"{client}\"}} ");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = gw.metrics_text().await;
        let now = text
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        if now >= calls {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{client} never had {calls} calls in flight (now {now}): an earlier call ended \
             before this one arrived?"
        );
        // Each poll runs curl: often enough to see a batch that takes a second, rarely enough
        // not to slow the signing it waits for.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Signs until a signature takes the 50 ms hsm-sim adds (it rereads its control file on a
/// signing call at most every ~20 ms).
async fn wait_for_the_delay(gw: &Gateway, pki: &Pki) {
    let mut frontend = gw
        .tls_client(&pki.client_tls("frontend"))
        .await
        .expect("connect");
    for n in 0..100u64 {
        let started = Instant::now();
        frontend
            .sign(digest_request("ca-p384", digest_for(2_000_000 + n, 48)))
            .await
            .expect("a signature");
        if started.elapsed() >= Duration::from_millis(50) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("hsm-sim's delay never took effect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_client_neither_starves_another_nor_spends_signatures_it_does_not_return() {
    let pki = Pki::new(&["flood", "frontend"]);
    let gw = start(&pki, Module::SoftHsm).await;
    let before = signatures_made(&gw).await;

    // The flood: 12 callers each sending full RSA batches back to back. The pool holds two
    // batches and the client may queue one more, so most calls are refused at once.
    let stop = Arc::new(AtomicBool::new(false));
    let returned = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut flooders = Vec::new();
    for task in 0..12u64 {
        let mut client = gw
            .tls_client(&pki.client_tls("flood"))
            .await
            .expect("connect");
        let (stop, returned, refused) = (stop.clone(), returned.clone(), refused.clone());
        flooders.push(tokio::spawn(async move {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let requests = (0..BATCH as u64)
                    .map(|i| SignRequest {
                        key: "ca-rsa".into(),
                        algorithm: Alg::RsaPkcs1Sha256 as i32,
                        input: Some(hsmgate_signer_api::v1::sign_request::Input::Digest(
                            digest_for((task << 40) | (round << 16) | i, 32),
                        )),
                    })
                    .collect();
                match client.sign_batch(SignBatchRequest { requests }).await {
                    Ok(r) => {
                        returned
                            .fetch_add(r.into_inner().responses.len() as u64, Ordering::Relaxed);
                    }
                    Err(s) => {
                        assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message());
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }));
    }
    // Let the flood fill the pool, then the frontend signs one at a time, as an ACME
    // finalization does.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut frontend = gw
        .tls_client(&pki.client_tls("frontend"))
        .await
        .expect("connect");
    let mut slowest = Duration::ZERO;
    for n in 1..=20u64 {
        let digest = digest_for(1_000_000 + n, 48);
        let started = Instant::now();
        let signed = frontend
            .sign(digest_request("ca-p384", digest.clone()))
            .await
            .unwrap_or_else(|s| {
                panic!(
                    "frontend call {n} failed during the flood: {:?} {}",
                    s.code(),
                    s.message()
                )
            })
            .into_inner();
        slowest = slowest.max(started.elapsed());
        verify(
            "ca-p384",
            Alg::EcdsaSha384,
            &digest,
            &signed.signature,
            true,
        )
        .expect("the frontend's signature verifies");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.await.expect("flood task");
    }
    let refused = refused.load(Ordering::Relaxed);
    let returned = returned.load(Ordering::Relaxed);
    eprintln!(
        "flood: {returned} signatures returned, {refused} calls refused; \
         frontend: 20 signed, slowest {slowest:?}"
    );
    assert!(refused > 0, "the flood was never refused: no contention");
    assert!(returned >= BATCH as u64, "the flood signed nothing");

    // Every signature the HSMs made went to a caller: the refused calls spent none.
    let made = signatures_made(&gw).await - before;
    assert_eq!(
        made,
        returned + 20,
        "HSM signatures made vs returned ({refused} refused calls)"
    );
    let m = gw.metrics_text().await;
    assert!(
        m.contains(r#"hsmgate_client_limit{client="flood",limit="max_queued_signatures"} 128"#),
        "{m}"
    );
    assert!(
        m.contains(r#"hsmgate_client_limit{client="frontend",limit="max_concurrent"} 1024"#),
        "{m}"
    );
}

/// A call that would take the client past what it may queue is refused at once, having signed
/// nothing, while the calls admitted or queued before it complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_that_cannot_be_admitted_signs_nothing() {
    let pki = Pki::new(&["flood", "frontend"]);
    // Behind hsm-sim, each signature takes 50 ms more. Dispatch fills dc-east's two HSMs (4
    // sessions) with the first batch before the second spills to dc-west, so each admitted
    // batch holds its half of the pool for ~1.6 s (128 signatures on 4 sessions) however fast
    // or loaded the machine is. At SoftHSM2's own speed the first could finish (and the third
    // be admitted instead of queued) before the test saw the third arrive.
    let gw = start(&pki, Module::Sim).await;
    let mut flood = gw
        .tls_client(&pki.client_tls("flood"))
        .await
        .expect("connect");
    gw.set_faults("* delay 50000\n");
    wait_for_the_delay(&gw, &pki).await;
    let before = signatures_made(&gw).await;
    // Hold the pool: two full RSA batches admitted, a third queued; a fourth is refused at once
    // (the client may queue one batch).
    let batch = |base: u64| SignBatchRequest {
        requests: (0..BATCH as u64)
            .map(|i| SignRequest {
                key: "ca-rsa".into(),
                algorithm: Alg::RsaPkcs1Sha256 as i32,
                input: Some(hsmgate_signer_api::v1::sign_request::Input::Digest(
                    digest_for(base + i, 32),
                )),
            })
            .collect(),
    };
    let mut running = Vec::new();
    for k in 0..3u64 {
        let mut c = flood.clone();
        let b = batch(k << 20);
        running.push(tokio::spawn(async move { c.sign_batch(b).await }));
        // In order: the third must be the one that queues. A sleep alone let a loaded machine
        // deliver a later call first.
        wait_in_flight(&gw, "flood", k + 1).await;
    }
    // The three are at the gateway now, and the pool stays full for ~1.6 s: far longer than
    // the fourth call's trip.
    let third = flood
        .sign_batch(batch(9 << 20))
        .await
        .expect_err("a fourth full batch neither fits nor may queue");
    assert_eq!(third.code(), Code::ResourceExhausted, "{}", third.message());
    assert!(
        third.message().contains("max_queued_signatures"),
        "{}",
        third.message()
    );
    let m = gw.metrics_text().await;
    assert!(
        m.contains(
            r#"hsmgate_client_limited_total{client="flood",limit="max_queued_signatures"} 1"#
        ),
        "{m}"
    );
    let mut returned = 0u64;
    for r in running {
        returned += r
            .await
            .expect("task")
            .expect("admitted batches sign")
            .into_inner()
            .responses
            .len() as u64;
    }
    assert_eq!(
        signatures_made(&gw).await - before,
        returned,
        "only the admitted calls spent signatures"
    );
}
