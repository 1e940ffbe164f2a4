//! The gateway against real SoftHSM2 tokens: every algorithm, batches, public keys, bad input,
//! configuration errors, reload and drain. Every signature is verified with RustCrypto against
//! the public key provisioning wrote, never by the gateway.

mod common;

use std::time::Duration;

use common::{Gateway, Module, digest_for, digest_request, message_request, spki, verify};
use hsmgate_signer_api::v1::{
    GetPublicKeyRequest, KeyType, ListKeysRequest, SignBatchRequest, SignRequest,
    SignatureAlgorithm as Alg, sign_request,
};
use tonic::Code;

#[tokio::test]
async fn every_algorithm_signs_digests_and_messages_that_verify() {
    let gw = Gateway::start(Module::SoftHsm);
    gw.wait_available("ca-rsa", 4, Duration::from_secs(20))
        .await;
    gw.wait_available("ca-ed25519", 4, Duration::from_secs(20))
        .await;
    let mut client = gw.client().await;
    let cases = [
        ("ca-p256", Alg::EcdsaSha256, 32),
        ("ca-p384", Alg::EcdsaSha384, 48),
        ("ca-rsa", Alg::RsaPkcs1Sha256, 32),
        ("ca-rsa", Alg::RsaPkcs1Sha384, 48),
        ("ca-rsa", Alg::RsaPssSha256, 32),
        ("ca-rsa", Alg::RsaPssSha384, 48),
    ];
    for (i, (key, alg, len)) in cases.into_iter().enumerate() {
        // A digest...
        let digest = digest_for(i as u64, len);
        let req = SignRequest {
            key: key.into(),
            algorithm: alg as i32,
            input: Some(sign_request::Input::Digest(digest.clone())),
        };
        let resp = client.sign(req).await.expect("sign digest").into_inner();
        assert_eq!(resp.algorithm, alg as i32);
        verify(key, alg, &digest, &resp.signature, true)
            .unwrap_or_else(|e| panic!("{key} {alg:?} digest: {e}"));
        assert!(!resp.algorithm_identifier.is_empty());
        // ...and a message the gateway hashes.
        let message = format!("tbs {i}").into_bytes();
        let resp = client
            .sign(message_request(key, alg, message.clone()))
            .await
            .expect("sign message")
            .into_inner();
        verify(key, alg, &message, &resp.signature, false)
            .unwrap_or_else(|e| panic!("{key} {alg:?} message: {e}"));
        // A signature over something else must not verify: the verifier can fail.
        assert!(verify(key, alg, b"something else", &resp.signature, false).is_err());
    }
    let message = b"an Ed25519 message".to_vec();
    let resp = client
        .sign(message_request(
            "ca-ed25519",
            Alg::Unspecified,
            message.clone(),
        ))
        .await
        .expect("sign ed25519")
        .into_inner();
    assert_eq!(resp.algorithm, Alg::Ed25519 as i32);
    verify("ca-ed25519", Alg::Ed25519, &message, &resp.signature, false).expect("ed25519 verifies");
}

#[tokio::test]
async fn batches_come_back_in_order_across_keys_and_hsms() {
    let gw = Gateway::start(Module::SoftHsm);
    gw.wait_available("ca-p256", 4, Duration::from_secs(20))
        .await;
    gw.wait_available("ca-p384", 4, Duration::from_secs(20))
        .await;
    let mut client = gw.client().await;
    let requests: Vec<SignRequest> = (0..1000u64)
        .map(|i| {
            if i % 5 == 0 {
                digest_request("ca-p384", digest_for(i, 48))
            } else {
                digest_request("ca-p256", digest_for(i, 32))
            }
        })
        .collect();
    let resp = client
        .sign_batch(SignBatchRequest { requests })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(resp.responses.len(), 1000);
    let mut hsms = std::collections::BTreeSet::new();
    for (i, r) in resp.responses.iter().enumerate() {
        let (key, alg, len) = if i % 5 == 0 {
            ("ca-p384", Alg::EcdsaSha384, 48)
        } else {
            ("ca-p256", Alg::EcdsaSha256, 32)
        };
        verify(key, alg, &digest_for(i as u64, len), &r.signature, true)
            .unwrap_or_else(|e| panic!("item {i}: {e}"));
        hsms.insert(r.hsm.clone());
    }
    // Both local HSMs took part; the other datacenter was not needed.
    assert_eq!(hsms.into_iter().collect::<Vec<_>>(), ["east-1", "east-2"]);
}

#[tokio::test]
async fn public_keys_and_key_list_match_provisioning() {
    let gw = Gateway::start(Module::SoftHsm);
    gw.wait_available("west-only", 2, Duration::from_secs(20))
        .await;
    gw.wait_available("ca-p256", 4, Duration::from_secs(20))
        .await;
    let mut client = gw.client().await;
    for key in ["ca-p256", "ca-p384", "ca-rsa", "ca-ed25519", "west-only"] {
        gw.wait_available(key, 1, Duration::from_secs(20)).await;
        let resp = client
            .get_public_key(GetPublicKeyRequest { key: key.into() })
            .await
            .expect("public key")
            .into_inner();
        assert_eq!(resp.spki_der, spki(key), "{key}");
    }
    let keys = client
        .list_keys(ListKeysRequest {})
        .await
        .expect("list")
        .into_inner()
        .keys;
    let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        names,
        ["ca-ed25519", "ca-p256", "ca-p384", "ca-rsa", "west-only"]
    );
    let west = keys
        .iter()
        .find(|k| k.name == "west-only")
        .expect("west-only");
    assert_eq!(west.hsms, ["west-1", "west-2"]);
    assert_eq!(west.hsms_available, 2);
    assert_eq!(west.key_type, KeyType::EcdsaP256 as i32);
    let rsa = keys.iter().find(|k| k.name == "ca-rsa").expect("ca-rsa");
    assert_eq!(rsa.algorithms.len(), 4);
    // A key held only by the other datacenter is still signed, by it.
    let resp = client
        .sign(digest_request("west-only", digest_for(7, 32)))
        .await
        .expect("west-only")
        .into_inner();
    assert!(resp.hsm.starts_with("west-"), "{}", resp.hsm);
    verify(
        "west-only",
        Alg::EcdsaSha256,
        &digest_for(7, 32),
        &resp.signature,
        true,
    )
    .expect("verifies");
    let status = client
        .get_public_key(GetPublicKeyRequest { key: "nope".into() })
        .await
        .expect_err("unknown key");
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn bad_input_gets_a_precise_error_and_nothing_is_signed() {
    let gw = Gateway::start(Module::SoftHsm);
    gw.wait_available("ca-p256", 2, Duration::from_secs(20))
        .await;
    let mut client = gw.client().await;
    let ok = || digest_request("ca-p256", digest_for(1, 32));

    fn check<T>(r: Result<tonic::Response<T>, tonic::Status>, code: Code, needle: &str) {
        let status = r
            .err()
            .unwrap_or_else(|| panic!("expected {code:?} containing {needle:?}"));
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(
            status.message().contains(needle),
            "{:?} does not contain {needle:?}",
            status.message()
        );
    }
    let batch = |requests: Vec<SignRequest>| SignBatchRequest { requests };

    check(
        client
            .sign_batch(batch(vec![
                ok(),
                digest_request("no-such-key", vec![0; 32]),
            ]))
            .await,
        Code::NotFound,
        "requests[1].key: unknown key `no-such-key`",
    );
    check(
        client
            .sign_batch(batch(vec![
                ok(),
                ok(),
                digest_request("ca-p256", vec![0; 31]),
            ]))
            .await,
        Code::InvalidArgument,
        "requests[2].digest: expected a 32-byte SHA-256 digest",
    );
    check(
        client.sign(digest_request("ca-p384", vec![0; 32])).await,
        Code::InvalidArgument,
        "48-byte SHA-384",
    );
    check(
        client.sign_batch(batch(vec![])).await,
        Code::InvalidArgument,
        "empty",
    );
    check(
        client
            .sign_batch(batch((0..8_193).map(|_| ok()).collect()))
            .await,
        Code::InvalidArgument,
        "at most 8192",
    );
    check(
        client.sign(digest_request("ca-ed25519", vec![0; 32])).await,
        Code::InvalidArgument,
        "send `message`",
    );
    let mut wrong_alg = ok();
    wrong_alg.algorithm = Alg::RsaPssSha256 as i32;
    check(
        client.sign(wrong_alg).await,
        Code::InvalidArgument,
        "not possible with a ecdsa-p256 key",
    );
    let mut unknown_alg = ok();
    unknown_alg.algorithm = 99;
    check(
        client.sign(unknown_alg).await,
        Code::InvalidArgument,
        "unknown value 99",
    );
    let mut no_input = ok();
    no_input.input = None;
    check(
        client.sign(no_input).await,
        Code::InvalidArgument,
        "set `digest` or `message`",
    );

    // The gateway is unharmed.
    let resp = client.sign(ok()).await.expect("still signs").into_inner();
    verify(
        "ca-p256",
        Alg::EcdsaSha256,
        &digest_for(1, 32),
        &resp.signature,
        true,
    )
    .expect("verifies");
    // Rejected requests never reached an HSM.
    let metrics = gw.metrics_text().await;
    let signed: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("hsmgate_hsm_signatures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(signed, 1, "{metrics}");
}

#[tokio::test]
async fn an_invalid_config_is_refused_with_every_field_named() {
    let mut config = common::tokens().config.clone();
    config.datacenters[0].hsms[0].sessions = 0;
    config.gateway.local_datacenter = "dc-nowhere".into();
    let west_only = config
        .keys
        .iter_mut()
        .find(|k| k.hsms == ["west-1", "west-2"])
        .expect("a key on the west pair only");
    west_only.hsms[1] = "west-3".into();
    let err = Gateway::spawn(&config).err().expect("must refuse to start");
    assert!(err.contains("exit Some(2)"), "{err}");
    for needle in [
        "datacenters[0].hsms[0].sessions: must be between 1 and 1024",
        "gateway.local_datacenter: `dc-nowhere` is not one of the datacenters",
        "keys[4].hsms[1]: no HSM is named `west-3`",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    // An inline PIN is refused without being echoed. The typed config cannot hold one: set it
    // in the serialized tree.
    let mut tree = toml::Table::try_from(&common::tokens().config).expect("config as TOML");
    tree["datacenters"][0]["hsms"][0]["pin"] = toml::Value::from("s3cr3t-9931");
    let err = Gateway::spawn(&tree)
        .err()
        .expect("must refuse an inline PIN");
    assert!(
        err.contains("datacenters[0].hsms[0].pin: inline PINs are refused"),
        "{err}"
    );
    assert!(!err.contains("s3cr3t-9931"), "the PIN was echoed:\n{err}");
}

#[tokio::test]
async fn reload_applies_a_valid_file_and_keeps_the_last_good_one() {
    let gw = Gateway::start(Module::SoftHsm);
    gw.wait_available("ca-p256", 4, Duration::from_secs(20))
        .await;
    let original = std::fs::read_to_string(&gw.config_path).expect("config");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = {
        let gw = &gw;
        async move { common::load(gw, "ca-p256", 4, 16, stop_rx).await }
    };
    let reloads = async {
        // An invalid file: refused, the gateway keeps serving.
        std::fs::write(
            &gw.config_path,
            original.replacen("sessions = 2", "sessions = 5000", 1),
        )
        .expect("write");
        gw.signal("HUP");
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A valid change: a new key name for the same HSM key.
        let added = format!(
            "{original}\n[[keys]]\nname = \"ca-p256-alias\"\nlabel = \"ca-p256\"\nalgorithm = \"ecdsa-p256\"\nhsms = [\"east-1\", \"east-2\"]\n"
        );
        std::fs::write(&gw.config_path, added).expect("write");
        gw.signal("HUP");
        gw.wait_available("ca-p256-alias", 2, Duration::from_secs(10))
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = stop_tx.send(true);
    };
    let (report, ()) = tokio::join!(load, reloads);
    assert!(
        report.failed.is_empty(),
        "requests failed during reloads: {:?}",
        &report.failed[..report.failed.len().min(5)]
    );
    assert!(report.ok > 100, "too little load: {}", report.ok);
    let logs = gw.logs();
    assert!(logs.contains("reload refused"), "{logs}");
    assert!(
        logs.contains("datacenters[0].hsms[0].sessions: must be between 1 and 1024"),
        "{logs}"
    );
    let mut client = gw.client().await;
    let resp = client
        .sign(digest_request("ca-p256-alias", digest_for(3, 32)))
        .await
        .expect("alias signs")
        .into_inner();
    verify(
        "ca-p256",
        Alg::EcdsaSha256,
        &digest_for(3, 32),
        &resp.signature,
        true,
    )
    .expect("same key");
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains(r#"hsmgate_config_reloads_total{outcome="refused"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"hsmgate_config_reloads_total{outcome="applied"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn sigterm_lets_in_flight_work_finish() {
    let mut gw = Gateway::start(Module::SoftHsm);
    gw.wait_available("ca-rsa", 4, Duration::from_secs(20))
        .await;
    let mut client = gw.client().await;
    // ~1 s of RSA signing on the local pair.
    let requests: Vec<SignRequest> = (0..2000u64)
        .map(|i| SignRequest {
            key: "ca-rsa".into(),
            algorithm: Alg::RsaPkcs1Sha256 as i32,
            input: Some(sign_request::Input::Digest(digest_for(i, 32))),
        })
        .collect();
    let call = tokio::spawn(async move { client.sign_batch(SignBatchRequest { requests }).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.signal("TERM");
    let resp = call
        .await
        .expect("task")
        .expect("in-flight batch finished")
        .into_inner();
    assert_eq!(resp.responses.len(), 2000);
    verify(
        "ca-rsa",
        Alg::RsaPkcs1Sha256,
        &digest_for(1999, 32),
        &resp.responses[1999].signature,
        true,
    )
    .expect("verifies");
    assert_eq!(
        gw.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        gw.logs()
    );
    assert!(gw.logs().contains("drained"), "{}", gw.logs());
}

#[tokio::test]
async fn health_and_metrics_report_each_hsm() {
    let gw = Gateway::start(Module::SoftHsm);
    gw.wait_available("ca-p256", 4, Duration::from_secs(20))
        .await;
    gw.wait_serving("hsmgate.signer.v1.Signer", Duration::from_secs(4))
        .await;
    let metrics = gw.metrics_text().await;
    for hsm in ["east-1", "east-2", "west-1", "west-2"] {
        assert!(
            metrics.contains(&format!("hsmgate_hsm_up{{hsm=\"{hsm}\"")),
            "no hsm_up for {hsm}:\n{metrics}"
        );
    }
    // Every HSM is in rotation: each of the four series reads 1.
    let up: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("hsmgate_hsm_up{"))
        .collect();
    assert_eq!(up.len(), 4, "{metrics}");
    assert!(up.iter().all(|l| l.ends_with(" 1")), "{metrics}");
}

#[tokio::test]
async fn work_spills_to_the_other_datacenter_past_the_spill_depth() {
    // With a spill depth of 1, a big batch overflows the local pair at once.
    let gw = Gateway::start_with(Module::SoftHsm, |c| c.dispatch.spill_queue_depth = 1);
    gw.wait_available("ca-p256", 4, Duration::from_secs(20))
        .await;
    let mut client = gw.client().await;
    let requests: Vec<SignRequest> = (0..2000u64)
        .map(|i| digest_request("ca-p256", digest_for(i, 32)))
        .collect();
    let resp = client
        .sign_batch(SignBatchRequest { requests })
        .await
        .expect("batch")
        .into_inner();
    let mut per_hsm = std::collections::BTreeMap::<String, u32>::new();
    for (i, r) in resp.responses.iter().enumerate() {
        verify(
            "ca-p256",
            Alg::EcdsaSha256,
            &digest_for(i as u64, 32),
            &r.signature,
            true,
        )
        .expect("verifies");
        *per_hsm.entry(r.hsm.clone()).or_default() += 1;
    }
    eprintln!("{per_hsm:?}");
    assert!(
        per_hsm.keys().any(|h| h.starts_with("west-")),
        "nothing spilled: {per_hsm:?}"
    );
    assert!(
        per_hsm.keys().any(|h| h.starts_with("east-")),
        "local pair unused: {per_hsm:?}"
    );
}

#[tokio::test]
async fn saturated_hsms_shed_load_with_resource_exhausted() {
    // Every HSM accepts at most 2 signatures in flight, so batches are at most 4 (west-only's
    // pair holds 4 together: validation refuses more). A chunk of 4 fits only an idle HSM:
    // 200 such batches at once cannot all be admitted.
    let gw = Gateway::start_with(Module::SoftHsm, |c| {
        for hsm in c.datacenters.iter_mut().flat_map(|dc| dc.hsms.iter_mut()) {
            hsm.max_in_flight = 2;
        }
        c.batching.max_request_items = 4;
    });
    gw.wait_available("ca-p256", 4, Duration::from_secs(20))
        .await;
    let client = gw.client().await;
    let calls = (0..200u64).map(|n| {
        let mut client = client.clone();
        tokio::spawn(async move {
            let requests: Vec<SignRequest> = (0..4u64)
                .map(|i| digest_request("ca-p256", digest_for(n * 4 + i, 32)))
                .collect();
            client.sign_batch(SignBatchRequest { requests }).await
        })
    });
    let mut shed = 0;
    for call in calls.collect::<Vec<_>>() {
        match call.await.expect("task") {
            Ok(_) => {}
            Err(status) => {
                assert_eq!(
                    status.code(),
                    Code::ResourceExhausted,
                    "{}",
                    status.message()
                );
                shed += 1;
            }
        }
    }
    assert!(
        shed > 0,
        "200 concurrent batches on 4 HSMs of 2 in flight: none shed"
    );
    let mut client = client;
    // A single signature still fits.
    let resp = client
        .sign(digest_request("ca-p256", digest_for(1, 32)))
        .await
        .expect("fits")
        .into_inner();
    verify(
        "ca-p256",
        Alg::EcdsaSha256,
        &digest_for(1, 32),
        &resp.signature,
        true,
    )
    .expect("verifies");
}
