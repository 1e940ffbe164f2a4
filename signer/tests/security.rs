//! Who may sign what, on the real `signer` binary over real TLS: mTLS refusals at the
//! handshake, grants (PERMISSION_DENIED, audited), payload checks, per-client limits, the
//! hash-chained audit log and `signer audit verify`, fail-closed on a lost audit sink, and a
//! full run whose logs, audit records and metrics never contain the PIN.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Gateway, Pki, client, digest_for, digest_request, mtls_config, verify};
use hsm_config::{AuditFailure, Client, ClientLimits, Config, Operation, ServerTls};
use hsmgate_signer_api::v1::signer_client::SignerClient;
use hsmgate_signer_api::v1::{
    ListKeysRequest, SignBatchRequest, SignRequest, SignatureAlgorithm as Alg, sign_request,
};
use hsmgate_signer_api::{PAYLOAD_HEADER, PAYLOAD_OCSP_RESPONSE_DATA, PAYLOAD_TBS_CERTIFICATE};
use hsmgate_stack::configs;
use tonic::Code;
use tonic::transport::Channel;

/// `frontend` may sign certificates with ca-p256 (which checks payloads) and raw digests with
/// ca-p384; `ocsp` may sign OCSP responses with ca-p256; `stranger` has a certificate from the
/// right CA but no `[[clients]]` entry; `limited` may sign 5 signatures then waits.
fn clients() -> Vec<Client> {
    use Operation::{SignCertificate, SignOcsp, SignRaw};
    let limited = |name: &str, keys: &[&str], limits: ClientLimits| Client {
        limits,
        ..client(name, &[(keys, &[SignRaw])])
    };
    vec![
        client(
            "frontend",
            &[
                (&["ca-p256"], &[SignCertificate]),
                (&["ca-p384"], &[SignRaw]),
            ],
        ),
        client("ocsp", &[(&["ca-p256"], &[SignOcsp])]),
        limited(
            "limited",
            &["ca-p384"],
            ClientLimits {
                signatures_per_sec: Some(1),
                burst: Some(5),
                max_concurrent: 4,
                ..ClientLimits::default()
            },
        ),
        limited(
            "single",
            &["ca-rsa"],
            ClientLimits {
                max_concurrent: 1,
                ..ClientLimits::default()
            },
        ),
    ]
}

const NAMES: &[&str] = &["frontend", "ocsp", "stranger", "limited", "single"];

/// Starts a gateway with mTLS from `pki` and waits (over mTLS) until every HSM holds every key.
async fn start(pki: &Pki, edit: impl FnOnce(&mut Config)) -> Gateway {
    // No `check_payload` anywhere: ca-p256 checks payloads because it is an issuing key (the
    // default), which is what the payload test relies on.
    let mut config = mtls_config(pki, clients());
    edit(&mut config);
    assert!(
        config.keys.iter().all(|k| k.check_payload.is_none()),
        "{config:?}"
    );
    let gw = Gateway::spawn(&config).unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    let mut client = gw
        .tls_client(&pki.client_tls("frontend"))
        .await
        .expect("connect over mTLS");
    gw.wait_every_key(&mut client).await;
    gw
}

fn with_payload<T>(message: T, payload: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert(PAYLOAD_HEADER, payload.parse().expect("ascii"));
    r
}

/// A real TBSCertificate: the one inside a client certificate the dev PKI made.
fn tbs_certificate(pki: &Pki) -> Vec<u8> {
    use der::{Decode, Encode};
    let out = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(pki.path("frontend.pem"))
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl x509 failed");
    let cert = x509_cert::Certificate::from_der(&out.stdout).expect("certificate");
    let tbs = cert.tbs_certificate().to_der().expect("tbs");
    assert!(x509_cert::TbsCertificate::from_der(&tbs).is_ok());
    tbs
}

/// A DER OCSP ResponseData (RFC 6960 §4.2.1): responderID byKey, producedAt, no responses.
fn ocsp_response_data() -> Vec<u8> {
    let mut der = vec![0x30, 0x2b, 0xa2, 0x16, 0x04, 0x14];
    der.extend_from_slice(&[0x11; 20]);
    der.extend_from_slice(&[0x18, 0x0f]);
    der.extend_from_slice(b"20261127143111Z");
    der.extend_from_slice(&[0x30, 0x00]);
    use der07::Decode;
    x509_ocsp::ResponseData::from_der(&der).expect("a valid ResponseData");
    der
}

fn message(key: &str, msg: Vec<u8>) -> SignRequest {
    SignRequest {
        key: key.into(),
        algorithm: Alg::Unspecified as i32,
        input: Some(sign_request::Input::Message(msg)),
    }
}

fn audit_verify(dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_signer"))
        .args(["audit", "verify"])
        .arg(dir)
        .output()
        .expect("run signer audit verify");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A raw tonic client with `tls` (possibly without a client identity) to the gateway.
async fn raw_client(
    gw: &Gateway,
    tls: Option<tonic::transport::ClientTlsConfig>,
    scheme: &str,
) -> Result<SignerClient<Channel>, tonic::transport::Error> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", gw.grpc))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(SignerClient::new(endpoint.connect().await?))
}

/// A call that must not get through: the connection fails, or the RPC does, and never with a
/// signature.
async fn refused(client: Result<SignerClient<Channel>, tonic::transport::Error>) -> String {
    match client {
        Err(e) => format!("connect failed: {e}"),
        Ok(mut c) => match c.sign(digest_request("ca-p384", digest_for(1, 48))).await {
            Ok(r) => panic!(
                "signed without a valid client certificate: {:?}",
                r.into_inner()
            ),
            Err(status) => {
                // Refused by the connection (TLS alert, closed stream), not answered by a
                // service: a status the gateway sent has no transport error behind it.
                use std::error::Error as _;
                assert!(
                    status.source().is_some(),
                    "the gateway answered instead of refusing the connection: {status:?}"
                );
                format!("rpc failed: {status}")
            }
        },
    }
}

#[tokio::test]
async fn no_client_certificate_or_one_from_another_ca_is_refused_at_the_handshake() {
    let pki = Pki::new(NAMES);
    let other = Pki::new(&["frontend"]); // same subject, another CA
    let gw = start(&pki, |_| {}).await;

    // Control: a valid client certificate signs.
    let mut ok = gw
        .tls_client(&pki.client_tls("frontend"))
        .await
        .expect("valid client connects");
    ok.sign(digest_request("ca-p384", digest_for(7, 48)))
        .await
        .expect("valid client signs");
    let records_before = gw.audit_records().len();

    // No client certificate (the server's CA is trusted, so only the client side is missing).
    let ca = std::fs::read(pki.path("ca.pem")).expect("ca");
    let no_identity = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca));
    let why = refused(raw_client(&gw, Some(no_identity), "https").await).await;
    eprintln!("no client certificate: {why}");

    // A client certificate from another CA, with the very subject a client is granted under.
    let other_tls = other.client_tls("frontend");
    let foreign = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(&other_tls.cert).expect("cert"),
            std::fs::read(&other_tls.key).expect("key"),
        ));
    let why = refused(raw_client(&gw, Some(foreign), "https").await).await;
    eprintln!("other CA: {why}");

    // Plain text against the TLS listener.
    let why = refused(raw_client(&gw, None, "http").await).await;
    eprintln!("plain text: {why}");

    // None of them reached the service: nothing more was audited.
    assert_eq!(gw.audit_records().len(), records_before);
}

#[tokio::test]
async fn grants_decide_and_every_refusal_is_audited() {
    let pki = Pki::new(NAMES);
    let gw = start(&pki, |_| {}).await;
    let mut frontend = gw
        .tls_client(&pki.client_tls("frontend"))
        .await
        .expect("connect");
    let mut ocsp = gw
        .tls_client(&pki.client_tls("ocsp"))
        .await
        .expect("connect");
    let mut stranger = gw
        .tls_client(&pki.client_tls("stranger"))
        .await
        .expect("connect");

    // A valid request: signature verified independently, and its audit record.
    let digest = digest_for(42, 48);
    let resp = frontend
        .sign(digest_request("ca-p384", digest.clone()))
        .await
        .expect("granted")
        .into_inner();
    verify("ca-p384", Alg::EcdsaSha384, &digest, &resp.signature, true).expect("signature");
    let records = gw.audit_records();
    let last = records.last().expect("a record");
    assert_eq!(last["client"], "frontend");
    assert_eq!(last["outcome"], "OK");
    assert_eq!(last["method"], "Sign");
    assert_eq!(last["operation"], "sign-raw");
    assert_eq!(last["items"][0]["key"], "ca-p384");
    use sha2::Digest;
    assert_eq!(
        last["items"][0]["sha256"],
        hex::encode(sha2::Sha256::digest(&digest))
    );
    assert_eq!(last["hsms"][0], resp.hsm);
    assert!(
        last["identity"]
            .as_str()
            .is_some_and(|i| i.starts_with("CN=frontend,O=hsmgate dev; spki-sha256=")),
        "{last}"
    );

    // Outside the grant: another key, and a granted key with another operation.
    let err = ocsp
        .sign(digest_request("ca-p384", digest_for(1, 48)))
        .await
        .expect_err("ocsp has no grant on ca-p384");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message()
            .contains("client `ocsp` may not sign-raw with key `ca-p384`"),
        "{}",
        err.message()
    );
    let err = frontend
        .sign_batch(SignBatchRequest {
            requests: vec![
                digest_request("ca-p384", digest_for(2, 48)),
                digest_request("west-only", digest_for(3, 32)),
            ],
        })
        .await
        .expect_err("frontend has no grant on west-only");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().starts_with("requests[1].key:"),
        "{}",
        err.message()
    );

    // A certificate from the right CA that is no configured client may do nothing at all.
    let err = stranger
        .sign(digest_request("ca-p384", digest_for(4, 48)))
        .await
        .expect_err("stranger is not a client");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = stranger
        .list_keys(ListKeysRequest {})
        .await
        .expect_err("stranger may not list keys");
    assert_eq!(err.code(), Code::PermissionDenied);

    let records = gw.audit_records();
    let denied: Vec<_> = records
        .iter()
        .filter(|r| r["outcome"] == "PermissionDenied")
        .collect();
    assert_eq!(denied.len(), 3, "{records:#?}");
    assert_eq!(denied[0]["client"], "ocsp");
    assert_eq!(denied[1]["client"], "frontend");
    // Refused before any HSM was asked: a summary, not a line per item.
    assert_eq!(denied[1]["items"].as_array().map(Vec::len), Some(0));
    assert_eq!(denied[1]["refused"]["items"], 2);
    assert_eq!(denied[2]["client"], "-");
    assert!(
        denied[2]["identity"]
            .as_str()
            .is_some_and(|i| i.starts_with("CN=stranger"))
    );
    assert!(
        denied
            .iter()
            .all(|r| r["hsms"].as_array().is_some_and(Vec::is_empty))
    );

    // The chain verifies.
    let (ok, out) = audit_verify(&gw.audit_dir());
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("OK: {} records", records.len())),
        "{out}"
    );
}

#[tokio::test]
async fn a_key_that_checks_payloads_signs_only_what_parses_as_declared() {
    let pki = Pki::new(NAMES);
    let gw = start(&pki, |_| {}).await;
    let mut frontend = gw
        .tls_client(&pki.client_tls("frontend"))
        .await
        .expect("connect");
    let mut ocsp = gw
        .tls_client(&pki.client_tls("ocsp"))
        .await
        .expect("connect");
    let tbs = tbs_certificate(&pki);
    let rd = ocsp_response_data();

    // The OCSP signer may sign an OCSP ResponseData...
    let resp = ocsp
        .sign(with_payload(
            message("ca-p256", rd.clone()),
            PAYLOAD_OCSP_RESPONSE_DATA,
        ))
        .await
        .expect("OCSP ResponseData signed")
        .into_inner();
    verify("ca-p256", Alg::EcdsaSha256, &rd, &resp.signature, false).expect("signature");
    // ...but not a certificate, whatever it declares.
    let err = ocsp
        .sign(with_payload(
            message("ca-p256", tbs.clone()),
            PAYLOAD_OCSP_RESPONSE_DATA,
        ))
        .await
        .expect_err("a TBSCertificate is no ResponseData");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("does not parse as an OCSP ResponseData"),
        "{}",
        err.message()
    );
    let err = ocsp
        .sign(with_payload(
            message("ca-p256", tbs.clone()),
            PAYLOAD_TBS_CERTIFICATE,
        ))
        .await
        .expect_err("no sign-certificate grant");
    assert_eq!(err.code(), Code::PermissionDenied);
    // Undeclared or digest input cannot be checked: refused on this key.
    let err = ocsp
        .sign(digest_request("ca-p256", digest_for(5, 32)))
        .await
        .expect_err("raw on a checked key");
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut digest_req = with_payload(
        digest_request("ca-p256", digest_for(6, 32)),
        PAYLOAD_OCSP_RESPONSE_DATA,
    );
    digest_req.set_timeout(Duration::from_secs(5));
    let err = ocsp
        .sign(digest_req)
        .await
        .expect_err("a digest cannot be checked");
    assert_eq!(err.code(), Code::PermissionDenied);

    // The frontend may sign the certificate, and not OCSP.
    let resp = frontend
        .sign(with_payload(
            message("ca-p256", tbs.clone()),
            PAYLOAD_TBS_CERTIFICATE,
        ))
        .await
        .expect("certificate signed")
        .into_inner();
    verify("ca-p256", Alg::EcdsaSha256, &tbs, &resp.signature, false).expect("signature");
    let err = frontend
        .sign(with_payload(
            message("ca-p256", rd),
            PAYLOAD_OCSP_RESPONSE_DATA,
        ))
        .await
        .expect_err("frontend has no sign-ocsp grant");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = frontend
        .sign(with_payload(message("ca-p256", tbs), "crl"))
        .await
        .expect_err("unknown payload");
    assert_eq!(err.code(), Code::InvalidArgument);

    let ops: Vec<String> = gw
        .audit_records()
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r["client"].as_str().unwrap_or(""),
                r["operation"].as_str().unwrap_or(""),
                r["outcome"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            "ocsp sign-ocsp OK",
            "ocsp sign-ocsp PermissionDenied",
            "ocsp sign-certificate PermissionDenied",
            "ocsp sign-raw PermissionDenied",
            "ocsp sign-ocsp PermissionDenied",
            "frontend sign-certificate OK",
            "frontend sign-ocsp PermissionDenied",
            "frontend invalid InvalidArgument",
        ]
    );
}

#[tokio::test]
async fn a_client_over_its_rate_is_limited_and_others_are_not() {
    let pki = Pki::new(NAMES);
    let gw = start(&pki, |_| {}).await;
    let mut limited = gw
        .tls_client(&pki.client_tls("limited"))
        .await
        .expect("connect");
    let mut frontend = gw
        .tls_client(&pki.client_tls("frontend"))
        .await
        .expect("connect");
    // Burst of 5, then 1/s.
    for n in 0..5 {
        limited
            .sign(digest_request("ca-p384", digest_for(n, 48)))
            .await
            .expect("within the burst");
    }
    let err = limited
        .sign(digest_request("ca-p384", digest_for(9, 48)))
        .await
        .expect_err("over the rate");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("client `limited`"),
        "{}",
        err.message()
    );
    // Another client is unaffected.
    frontend
        .sign(digest_request("ca-p384", digest_for(10, 48)))
        .await
        .expect("other clients keep signing");
    // The bucket refills.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    limited
        .sign(digest_request("ca-p384", digest_for(11, 48)))
        .await
        .expect("refilled");

    let m = gw.metrics_text().await;
    for line in [
        r#"hsmgate_client_limited_total{client="limited",limit="signatures_per_sec"} 1"#,
        r#"hsmgate_client_limit{client="limited",limit="signatures_per_sec"} 1"#,
        r#"hsmgate_client_limit{client="limited",limit="max_concurrent"} 4"#,
        r#"hsmgate_client_signatures_total{client="limited"} 6"#,
        r#"hsmgate_client_requests_total{client="limited",code="ResourceExhausted"} 1"#,
        r#"hsmgate_audit_records_total{outcome="written"} 8"#,
        // A production gateway says it is audited, so an alert on `== 1` is enough.
        "hsmgate_audit_disabled 0",
    ] {
        assert!(m.contains(line), "missing `{line}` in metrics:\n{m}");
    }
}

#[tokio::test]
async fn a_hand_edited_audit_log_is_named_by_audit_verify() {
    let pki = Pki::new(NAMES);
    let mut gw = start(&pki, |c| c.audit.max_file_bytes = 4096).await;
    let mut frontend = gw
        .tls_client(&pki.client_tls("frontend"))
        .await
        .expect("connect");
    for n in 0..12 {
        frontend
            .sign(digest_request("ca-p384", digest_for(n, 48)))
            .await
            .expect("signed");
    }
    let dir = gw.audit_dir();
    let (ok, out) = audit_verify(&dir);
    assert!(ok, "{out}");
    assert!(out.contains("OK: 12 records in"), "{out}");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("audit dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "rotated by size: {files:?}");

    // Edit the second record of the second file: the key it was signed with.
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(15)), Some(0));
    let victim = &files[1];
    let text = std::fs::read_to_string(victim).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    let seq = serde_json::from_str::<serde_json::Value>(lines[1]).expect("json")["seq"]
        .as_u64()
        .expect("seq");
    let edited = lines[1].replace("\"ca-p384\"", "\"ca-p256\"");
    assert_ne!(edited, lines[1]);
    let mut new = text.replacen(lines[1], &edited, 1);
    std::fs::write(victim, &new).expect("write");
    let (ok, out) = audit_verify(&dir);
    assert!(!ok, "{out}");
    let name = victim
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        out.contains(&name)
            && out.contains(&format!("line 2 (record seq {seq})"))
            && out.contains("edited"),
        "{out}"
    );

    // Remove that record instead: the next one's link breaks.
    new = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    std::fs::write(victim, &new).expect("write");
    let (ok, out) = audit_verify(&dir);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("seq {}", seq + 1)) && out.contains("missing"),
        "{out}"
    );
}

/// A gateway whose audit directory disappeared after one signed request.
struct LostSink {
    gw: Gateway,
    frontend: SignerClient<Channel>,
    /// Where the audit directory was (now a file, so no new audit file can be created there).
    dir: std::path::PathBuf,
    /// Where it was moved to.
    saved: std::path::PathBuf,
    /// 64 signatures: more than the 4,096-byte audit files hold, so the next record needs a
    /// new file.
    big: SignBatchRequest,
}

/// Starts a gateway with 4,096-byte audit files (and `audit_settings` added to `[audit]`),
/// signs once as `frontend`, then moves the audit directory away and puts a file in its place.
async fn lose_the_audit_sink(pki: &Pki, on_failure: AuditFailure) -> LostSink {
    let gw = start(pki, |c| {
        c.audit.max_file_bytes = 4096;
        c.audit.on_failure = on_failure;
    })
    .await;
    let mut frontend = gw
        .tls_client(&pki.client_tls("frontend"))
        .await
        .expect("connect");
    frontend
        .sign(digest_request("ca-p384", digest_for(1, 48)))
        .await
        .expect("signed");
    let dir = gw.audit_dir();
    let saved = gw.dir.path().join("audit.saved");
    std::fs::rename(&dir, &saved).expect("move the audit dir away");
    std::fs::write(&dir, b"not a directory").expect("file in its place");
    let big = SignBatchRequest {
        requests: (0..64)
            .map(|n| digest_request("ca-p384", digest_for(100 + n, 48)))
            .collect(),
    };
    LostSink {
        gw,
        frontend,
        dir,
        saved,
        big,
    }
}

#[tokio::test]
async fn losing_the_audit_sink_stops_signing_until_it_is_back() {
    let pki = Pki::new(NAMES);
    let LostSink {
        gw,
        mut frontend,
        dir,
        saved,
        big,
    } = lose_the_audit_sink(&pki, AuditFailure::StopSigning).await;
    let err = frontend
        .sign_batch(big.clone())
        .await
        .expect_err("no audit record, no signature");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("audit log"), "{}", err.message());
    assert!(
        gw.log_shows("audit log write failed", Duration::from_secs(5))
            .await,
        "{}",
        gw.logs()
    );
    // Back: signing resumes by itself, the chain continues.
    std::fs::remove_file(&dir).expect("rm");
    std::fs::rename(&saved, &dir).expect("restore");
    let resp = frontend
        .sign_batch(big)
        .await
        .expect("signing resumed")
        .into_inner();
    assert_eq!(resp.responses.len(), 64);
    let (ok, out) = audit_verify(&dir);
    assert!(ok, "{out}");
    assert!(out.contains("OK: 2 records"), "{out}");
    let m = gw.metrics_text().await;
    assert!(m.contains("hsmgate_audit_failures_total 1"), "{m}");
}

#[tokio::test]
async fn the_pin_appears_in_no_log_audit_record_or_metric() {
    let pki = Pki::new(NAMES);
    let pin = std::fs::read_to_string(common::tokens().dir.join("user.pin")).expect("pin");
    let pin = pin.trim();
    assert!(pin.len() >= 4, "the PIN is long enough to grep for");
    // A full run: every kind of outcome, a reload, a drain.
    let mut gw = start(&pki, |_| {}).await;
    let mut frontend = gw
        .tls_client(&pki.client_tls("frontend"))
        .await
        .expect("connect");
    let mut stranger = gw
        .tls_client(&pki.client_tls("stranger"))
        .await
        .expect("connect");
    frontend
        .sign(digest_request("ca-p384", digest_for(1, 48)))
        .await
        .expect("signed");
    let _ = frontend
        .sign(digest_request("nope", digest_for(1, 48)))
        .await;
    let _ = frontend
        .sign(digest_request("ca-p384", vec![1, 2, 3]))
        .await;
    let _ = stranger
        .sign(digest_request("ca-p384", digest_for(1, 48)))
        .await;
    gw.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = gw.metrics_text().await;
    let audit: String = gw.audit_records().iter().map(|r| r.to_string()).collect();
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(15)), Some(0));
    let logs = gw.logs();
    assert!(logs.contains("configuration reloaded"), "{logs}");
    for (what, text) in [("logs", &logs), ("audit", &audit), ("metrics", &metrics)] {
        assert!(!text.is_empty(), "{what} is empty");
        assert!(!text.contains(pin), "the PIN is in the {what}");
    }
}

#[tokio::test]
async fn grants_reload_with_the_config_and_a_bad_file_keeps_the_last_good_ones() {
    let pki = Pki::new(NAMES);
    let gw = start(&pki, |_| {}).await;
    let mut ocsp = gw
        .tls_client(&pki.client_tls("ocsp"))
        .await
        .expect("connect");
    let err = ocsp
        .sign(digest_request("ca-p384", digest_for(1, 48)))
        .await
        .expect_err("no grant yet");
    assert_eq!(err.code(), Code::PermissionDenied);

    // Grant `ocsp` raw signing with ca-p384, and reload.
    let mut granted = Config::load(&gw.config_path).expect("config");
    configs::grant(&mut granted, "ocsp", &["ca-p384"], &[Operation::SignRaw]);
    configs::write(&granted, &gw.config_path).expect("write config");
    gw.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match ocsp
            .sign(digest_request("ca-p384", digest_for(2, 48)))
            .await
        {
            Ok(_) => break,
            Err(e) => assert!(
                e.code() == Code::PermissionDenied && std::time::Instant::now() < deadline,
                "{e:?}\n{}",
                gw.logs()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A broken file (a grant on a key that does not exist) is refused; the grant stays.
    let mut broken = granted;
    let ocsp_client = broken
        .clients
        .iter_mut()
        .find(|c| c.name == "ocsp")
        .expect("client ocsp");
    ocsp_client.grants[1].keys = vec!["root".into()];
    configs::write(&broken, &gw.config_path).expect("write config");
    gw.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !gw.logs().contains("reload refused") {
        assert!(std::time::Instant::now() < deadline, "{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gw.logs().contains("keys[0]: no key is named `root`"),
        "{}",
        gw.logs()
    );
    ocsp.sign(digest_request("ca-p384", digest_for(3, 48)))
        .await
        .expect("the last good grants still apply");
}

#[test]
fn unusable_tls_files_or_a_shared_audit_directory_refuse_start_up() {
    let pki = Pki::new(NAMES);
    let config = mtls_config(&pki, clients());
    let mut missing = config.clone();
    missing.gateway.tls = Some(ServerTls {
        cert: "/nonexistent/server.pem".into(),
        ..pki.server_tls()
    });
    let err = Gateway::spawn(&missing)
        .err()
        .expect("must refuse to start");
    assert!(err.contains("exit Some(2)"), "{err}");
    assert!(
        err.contains("gateway.tls.cert: cannot read /nonexistent/server.pem"),
        "{err}"
    );
    // A key file that is a certificate.
    let mut wrong = config.clone();
    wrong.gateway.tls = Some(ServerTls {
        key: pki.path("ca.pem"),
        ..pki.server_tls()
    });
    let err = Gateway::spawn(&wrong).err().expect("must refuse to start");
    assert!(err.contains("gateway.tls.key: not a PEM file"), "{err}");
    // Two gateways on one audit directory would fork the chain: the second refuses.
    let shared = pki.dir.path().join("shared-audit");
    let mut config = config;
    config.audit.dir = shared;
    let _first = Gateway::spawn(&config).expect("first gateway");
    let err = Gateway::spawn(&config)
        .err()
        .expect("second gateway must refuse");
    assert!(
        err.contains("exit Some(2)") && err.contains("in use by another gateway"),
        "{err}"
    );
}

#[tokio::test]
async fn the_plain_text_opt_in_says_so_loudly_and_callers_act_as_its_client() {
    let gw = Gateway::start(common::Module::SoftHsm);
    gw.wait_available("ca-p256", 1, Duration::from_secs(20))
        .await;
    assert!(
        gw.logs()
            .contains("INSECURE: the signing API speaks PLAIN TEXT"),
        "{}",
        gw.logs()
    );
    let mut client = gw.client().await;
    client
        .sign(digest_request("ca-p256", digest_for(1, 32)))
        .await
        .expect("signed");
    let records = gw.audit_records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["client"], "tests");
    assert_eq!(records[0]["identity"], "plaintext");
}

#[tokio::test]
async fn a_client_at_its_concurrency_limit_is_refused_until_its_call_ends() {
    let pki = Pki::new(NAMES);
    let gw = start(&pki, |_| {}).await;
    let mut first = gw
        .tls_client(&pki.client_tls("single"))
        .await
        .expect("connect");
    let mut second = gw
        .tls_client(&pki.client_tls("single"))
        .await
        .expect("connect");
    // A long call: 1,500 RSA signatures (about a second here).
    let batch = |base: u64| SignBatchRequest {
        requests: (0..1500u64)
            .map(|i| SignRequest {
                key: "ca-rsa".into(),
                algorithm: Alg::RsaPkcs1Sha256 as i32,
                input: Some(sign_request::Input::Digest(digest_for(base + i, 32))),
            })
            .collect(),
    };
    let long = tokio::spawn(async move { first.sign_batch(batch(0)).await });
    // Wait until the gateway counts it in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !gw
        .metrics_text()
        .await
        .contains(r#"hsmgate_client_in_flight{client="single"} 1"#)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the long call never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let err = second
        .sign(digest_request("ca-rsa", digest_for(9, 32)))
        .await
        .expect_err("second concurrent call");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("concurrent"), "{}", err.message());
    let done = long
        .await
        .expect("task")
        .expect("the long call finishes")
        .into_inner();
    assert_eq!(done.responses.len(), 1500);
    second
        .sign(digest_request("ca-rsa", digest_for(10, 32)))
        .await
        .expect("free again");
    let m = gw.metrics_text().await;
    assert!(
        m.contains(r#"hsmgate_client_limited_total{client="single",limit="max_concurrent"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn log_and_continue_returns_signatures_without_records_and_counts_it() {
    let pki = Pki::new(NAMES);
    let LostSink {
        gw,
        mut frontend,
        big,
        ..
    } = lose_the_audit_sink(&pki, AuditFailure::LogAndContinue).await;
    let resp = frontend
        .sign_batch(big)
        .await
        .expect("fail open: signed anyway")
        .into_inner();
    assert_eq!(resp.responses.len(), 64);
    assert!(
        gw.log_shows("no audit record for this call", Duration::from_secs(5))
            .await,
        "{}",
        gw.logs()
    );
    let m = gw.metrics_text().await;
    assert!(m.contains("hsmgate_audit_failures_total 1"), "{m}");
    assert!(
        m.contains(r#"hsmgate_audit_records_total{outcome="failed"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_client_known_by_its_key_hash_is_recognised_whatever_its_subject() {
    use der::{Decode, Encode};
    use sha2::Digest;
    let pki = Pki::new(NAMES);
    // The SHA-256 of `stranger`'s SubjectPublicKeyInfo, computed here from its certificate.
    let out = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(pki.path("stranger.pem"))
        .output()
        .expect("openssl");
    assert!(out.status.success());
    let cert = x509_cert::Certificate::from_der(&out.stdout).expect("certificate");
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .expect("spki");
    let hash = hex::encode(sha2::Sha256::digest(&spki));
    let gw = start(&pki, |c| {
        c.clients.push(Client {
            subject: None,
            spki_sha256: Some(hash.to_uppercase()),
            ..client("by-key", &[(&["ca-p384"], &[Operation::SignRaw])])
        })
    })
    .await;
    let mut client = gw
        .tls_client(&pki.client_tls("stranger"))
        .await
        .expect("connect");
    let digest = digest_for(77, 48);
    let resp = client
        .sign(digest_request("ca-p384", digest.clone()))
        .await
        .expect("recognised by its key")
        .into_inner();
    verify("ca-p384", Alg::EcdsaSha384, &digest, &resp.signature, true).expect("signature");
    let records = gw.audit_records();
    let last = records.last().expect("record");
    assert_eq!(last["client"], "by-key");
    assert!(
        last["identity"]
            .as_str()
            .is_some_and(|i| i.ends_with(&format!("spki-sha256={hash}"))),
        "{last}"
    );
}

/// `[audit] bench_unaudited` exists for `bench/security/run.sh` only: a signer built without
/// the `bench-unaudited` feature (every build but that benchmark's) refuses to start on it,
/// naming the field, and signs nothing unaudited.
#[cfg(not(feature = "bench-unaudited"))]
#[test]
fn a_normal_build_refuses_to_run_without_its_audit_log() {
    let mut config = common::tokens().config.clone();
    config.audit.bench_unaudited = true;
    let err = Gateway::spawn(&config).err().expect("must refuse to start");
    assert!(err.contains("exit Some(2)"), "{err}");
    assert!(
        err.contains("audit.bench_unaudited: refused: this signer was built without the `bench-unaudited` feature"),
        "{err}"
    );
    assert!(!err.contains("READY"), "{err}");
}

/// In a `bench-unaudited` build (`cargo test -p signer --features bench-unaudited`) the switch
/// works, and says so: a loud warning, `hsmgate_audit_disabled 1`, and no audit file.
#[cfg(feature = "bench-unaudited")]
#[tokio::test]
async fn a_bench_unaudited_build_runs_without_its_audit_log_and_says_so() {
    let gw = Gateway::start_with(common::Module::SoftHsm, |c| c.audit.bench_unaudited = true);
    gw.wait_available("ca-p256", 1, Duration::from_secs(20))
        .await;
    assert!(
        gw.logs()
            .contains("UNAUDITED: this gateway keeps NO AUDIT LOG"),
        "{}",
        gw.logs()
    );
    let mut client = gw.client().await;
    client
        .sign(digest_request("ca-p256", digest_for(1, 32)))
        .await
        .expect("signed");
    assert!(!gw.audit_dir().exists(), "an unaudited gateway wrote a log");
    let m = gw.metrics_text().await;
    assert!(m.contains("hsmgate_audit_disabled 1"), "{m}");
}
