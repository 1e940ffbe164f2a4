//! The promise the gateway exists to keep, on the development config exactly as `run.sh` runs
//! it (`hsm-config/examples/dev.toml`, mTLS, its own SoftHSM2 tokens): no client gets anything
//! signed by an issuing key — the intermediate `dev-p256`, the root `dev-root` — that does not
//! parse as the payload of an operation it holds. A TBSCertificate for `*.google.com` is sent
//! by every client of the dev config, declared as an OCSP ResponseData, as a CRL's TBSCertList
//! (the pre-signer holds `sign-crl` on the intermediate), as a certificate where
//! the client may not sign certificates, and undeclared, as a message and as a digest, by
//! `Sign` and `SignBatch`: every one is PERMISSION_DENIED and no HSM signs anything.
//! (Issue 12, item 1: before, `check_payload` was off unless a key set it, and the
//! pre-signer's `sign-ocsp` grant got the certificate signed.)

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Gateway, Pki, dev_config};
use hsmgate_signer_api::v1::{
    SignBatchRequest, SignRequest, SignatureAlgorithm as Alg, sign_request,
};
use hsmgate_signer_api::{
    PAYLOAD_HEADER, PAYLOAD_OCSP_RESPONSE_DATA, PAYLOAD_TBS_CERT_LIST, PAYLOAD_TBS_CERTIFICATE,
};
use sha2::Digest;
use tonic::Code;

/// Every `[[clients]]` entry of dev.toml.
const CLIENTS: &[&str] = &["ocsp-presigner", "ca-frontend", "ceremony", "bench"];

/// Who may sign certificates with which key in dev.toml: a certificate declared as one is
/// that client's job there (the frontend's leaves, the ceremony's intermediate).
const CERTIFICATE_SIGNERS: &[(&str, &str)] =
    &[("ca-frontend", "dev-p256"), ("ceremony", "dev-root")];

/// A DER TBSCertificate for `*.google.com` (subjectAltName dNSName), from a self-signed
/// certificate that openssl makes.
fn forged_tbs(dir: &std::path::Path) -> Vec<u8> {
    use der::{Decode, Encode};
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "90"])
        .args(["-subj", "/CN=*.google.com"])
        .args(["-addext", "subjectAltName=DNS:*.google.com,DNS:google.com"])
        .arg("-keyout")
        .arg(dir.join("forged.key"))
        .args(["-outform", "DER", "-out"])
        .arg(dir.join("forged.der"))
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let der = std::fs::read(dir.join("forged.der")).expect("certificate");
    let cert = x509_cert::Certificate::from_der(&der).expect("certificate");
    let tbs = cert.tbs_certificate().to_der().expect("tbs");
    assert!(
        tbs.windows(b"*.google.com".len())
            .any(|w| w == b"*.google.com"),
        "the SAN is in the TBSCertificate"
    );
    tbs
}

fn request(key: &str, input: sign_request::Input) -> SignRequest {
    SignRequest {
        key: key.into(),
        algorithm: Alg::Unspecified as i32,
        input: Some(input),
    }
}

fn declared<T>(message: T, payload: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(p) = payload {
        r.metadata_mut()
            .insert(PAYLOAD_HEADER, p.parse().expect("ascii"));
    }
    r.set_timeout(Duration::from_secs(10));
    r
}

/// Sum of `hsmgate_hsm_signatures_total` over every HSM: what the HSMs signed.
async fn hsm_signatures(gw: &Gateway) -> u64 {
    gw.metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with("hsmgate_hsm_signatures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn no_client_of_the_dev_config_gets_a_certificate_signed_outside_its_grants() {
    let pki = Pki::new(CLIENTS);
    let (config, tokens) = dev_config(&pki);
    assert!(
        config.keys.iter().all(|k| k.check_payload.is_none()),
        "the dev config relies on the default, not on check_payload"
    );
    let gw = Gateway::spawn_on(&config, tokens).unwrap_or_else(|e| panic!("gateway: {e}"));
    let mut bench = gw.tls_client(&pki.client_tls("bench")).await.expect("tls");
    gw.wait_every_key(&mut bench).await;

    let tbs = forged_tbs(gw.dir.path());
    let sha256 = sha2::Sha256::digest(&tbs).to_vec();
    let sha384 = sha2::Sha384::digest(&tbs).to_vec();
    let before = hsm_signatures(&gw).await;
    let mut tried = 0;
    for name in CLIENTS {
        let mut client = gw.tls_client(&pki.client_tls(name)).await.expect("tls");
        for key in ["dev-p256", "dev-root"] {
            let digest = if key == "dev-root" { &sha384 } else { &sha256 };
            for payload in [
                Some(PAYLOAD_OCSP_RESPONSE_DATA),
                Some(PAYLOAD_TBS_CERTIFICATE),
                Some(PAYLOAD_TBS_CERT_LIST),
                None,
            ] {
                for input in [
                    sign_request::Input::Message(tbs.clone()),
                    sign_request::Input::Digest(digest.clone()),
                ] {
                    let is_message = matches!(input, sign_request::Input::Message(_));
                    if payload == Some(PAYLOAD_TBS_CERTIFICATE)
                        && is_message
                        && CERTIFICATE_SIGNERS.contains(&(name, key))
                    {
                        continue; // its own job: checked below as the control
                    }
                    let case = format!(
                        "{name} -> {key}, declared {payload:?}, {}",
                        if is_message { "message" } else { "digest" }
                    );
                    let item = request(key, input);
                    let err = client
                        .sign(declared(item.clone(), payload))
                        .await
                        .expect_err(&format!("Sign signed: {case}"));
                    assert_eq!(err.code(), Code::PermissionDenied, "Sign {case}: {err:?}");
                    let batch = SignBatchRequest {
                        requests: vec![item.clone(), item],
                    };
                    let err = client
                        .sign_batch(declared(batch, payload))
                        .await
                        .expect_err(&format!("SignBatch signed: {case}"));
                    assert_eq!(
                        err.code(),
                        Code::PermissionDenied,
                        "SignBatch {case}: {err:?}"
                    );
                    tried += 2;
                }
            }
        }
    }
    // 4 clients x 2 keys x 8 cases, less the two certificate signers' own case, x 2 RPCs.
    assert_eq!(tried, (4 * 2 * 8 - 2) * 2);
    assert_eq!(
        hsm_signatures(&gw).await,
        before,
        "an HSM signed a refused request"
    );
    let records = gw.audit_records();
    assert_eq!(records.len(), tried, "one audit record per call");
    assert!(
        records
            .iter()
            .all(|r| r["outcome"].as_str() == Some("PermissionDenied")),
        "{records:?}"
    );

    // The control: the same TBSCertificate, declared as one by the client that may sign
    // certificates with the intermediate, is signed — so the refusals above are the checks,
    // not a key that cannot sign.
    let mut frontend = gw
        .tls_client(&pki.client_tls("ca-frontend"))
        .await
        .expect("tls");
    frontend
        .sign(declared(
            request("dev-p256", sign_request::Input::Message(tbs.clone())),
            Some(PAYLOAD_TBS_CERTIFICATE),
        ))
        .await
        .expect("the frontend signs certificates with dev-p256");
    assert_eq!(hsm_signatures(&gw).await, before + 1);

    // bench signs raw digests with its own key, which nothing trusts, and the gateway says at
    // start-up that this key takes unchecked payloads.
    bench
        .sign(declared(
            request("dev-bench-p256", sign_request::Input::Digest(sha256)),
            None,
        ))
        .await
        .expect("bench signs raw with dev-bench-p256");
    assert!(
        gw.logs()
            .contains("UNCHECKED PAYLOADS: issuing key `dev-bench-p256`"),
        "{}",
        gw.logs()
    );
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.lines().any(|l| l
            .starts_with("hsmgate_unchecked_payload_keys{key=\"dev-bench-p256\"")
            && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(!metrics.contains("hsmgate_unchecked_payload_keys{key=\"dev-p256\""));
}
