//! Callers that know several gateways (`hsmgate_signer_api::client::connect_lazy` with a
//! comma-separated list): two real `signer` processes on copies of the same tokens, one
//! balanced channel, and calls that keep succeeding while one gateway drains (SIGTERM) or dies
//! (SIGKILL). A caller retries a call that failed in transport once, as the ACME frontend's
//! certificate signer does; no call may fail after that retry, and every signature
//! verifies against the key's public key, independently of the gateway.

mod common;

use std::time::{Duration, Instant};

use common::{Gateway, Module, digest_for, digest_request, verify};
use hsmgate_signer_api::v1::signer_client::SignerClient;
use hsmgate_signer_api::v1::{SignRequest, SignatureAlgorithm as Alg};
use tonic::transport::Channel;

const KEY: &str = "ca-p256";

/// Signs `request`; one retry after a transport failure (the gateway the call went to died or
/// closed).
/// Returns the signature and whether it needed the retry.
async fn sign_once_retried(
    client: &mut SignerClient<Channel>,
    request: &SignRequest,
) -> Result<(Vec<u8>, bool), tonic::Status> {
    let mut retried = false;
    loop {
        let mut call = tonic::Request::new(request.clone());
        call.set_timeout(Duration::from_secs(10));
        match client.sign(call).await {
            Ok(r) => return Ok((r.into_inner().signature, retried)),
            Err(s) if hsmgate_signer_api::client::is_transport_failure(&s) && !retried => {
                retried = true;
                // The probe takes a dead gateway out within PROBE_INTERVAL.
                tokio::time::sleep(hsmgate_signer_api::client::PROBE_INTERVAL * 2).await;
            }
            Err(s) => return Err(s),
        }
    }
}

/// Calls `n` signatures one after another on `client`, running `event` after `at` of them;
/// returns how many needed a retry. Panics on a failed call or a bad signature.
async fn sign_through(
    client: &mut SignerClient<Channel>,
    n: u64,
    at: u64,
    mut event: impl FnMut(),
) -> usize {
    let mut retries = 0;
    for i in 0..n {
        if i == at {
            event();
        }
        let digest = digest_for(i, 32);
        let (signature, retried) = sign_once_retried(client, &digest_request(KEY, digest.clone()))
            .await
            .unwrap_or_else(|s| panic!("call {i} failed after its retry: {s:?}"));
        verify(KEY, Alg::EcdsaSha256, &digest, &signature, true)
            .unwrap_or_else(|e| panic!("call {i}: the signature does not verify: {e}"));
        retries += usize::from(retried);
    }
    retries
}

async fn signatures_of(gateway: &Gateway) -> f64 {
    gateway
        .metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with("hsmgate_rpc_signatures_total"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_move_to_the_other_gateway_when_one_drains_or_dies() {
    let a = Gateway::start(Module::SoftHsm);
    let mut b = Gateway::start(Module::SoftHsm);
    // SERVING too: the channel's probes take a gateway out of the set while its health says
    // otherwise, which it can for up to 250 ms after its key is available (a CI run sent all
    // of the first 60 calls to b).
    for g in [&a, &b] {
        g.wait_available(KEY, 4, Duration::from_secs(30)).await;
        g.wait_serving("", Duration::from_secs(5)).await;
    }
    let urls = format!("http://{},http://{}", a.grpc, b.grpc);
    let channel = hsmgate_signer_api::client::connect_lazy(&urls, None).expect("channel");
    let mut client = SignerClient::new(channel);

    // Both serve: the calls are spread over both.
    sign_through(&mut client, 60, u64::MAX, || {}).await;
    let (on_a, on_b) = (signatures_of(&a).await, signatures_of(&b).await);
    assert!(on_a >= 5.0 && on_b >= 5.0, "a {on_a}, b {on_b}");

    // b drains (SIGTERM: its health turns NOT_SERVING before it closes): nothing fails.
    let retries = sign_through(&mut client, 200, 20, || b.signal("TERM")).await;
    assert_eq!(
        b.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        b.logs()
    );
    assert!(
        retries <= 2,
        "{retries} calls needed a retry while b drained"
    );

    // A second b on the same port is not possible (the port is the OS's choice): start a
    // third gateway, give the caller a list of a and c, and SIGKILL a mid-run.
    let c = Gateway::start(Module::SoftHsm);
    c.wait_available(KEY, 4, Duration::from_secs(30)).await;
    c.wait_serving("", Duration::from_secs(5)).await;
    let urls = format!("http://{},http://{}", a.grpc, c.grpc);
    let channel = hsmgate_signer_api::client::connect_lazy(&urls, None).expect("channel");
    let mut client = SignerClient::new(channel);
    sign_through(&mut client, 20, u64::MAX, || {}).await;
    let before = signatures_of(&c).await;
    let started = Instant::now();
    let retries = sign_through(&mut client, 200, 20, || a.signal("KILL")).await;
    let after = signatures_of(&c).await;
    // Every call after the kill went to c, and at most the calls in flight within one probe
    // interval needed their retry.
    assert!(after - before >= 180.0, "c signed {}", after - before);
    assert!(retries <= 3, "{retries} retries after a SIGKILL");
    assert!(started.elapsed() < Duration::from_secs(60));
}
