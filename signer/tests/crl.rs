//! `sign-crl` (issue 15) through the real gateway on the development config: a client granted
//! only `sign-crl` on the intermediate gets CRLs signed — a million-entry shard included, far
//! above the 16 KiB every other payload is held to — and nothing else: no TBSCertificate, no
//! OCSP ResponseData, no digest. The converse: a client that may sign certificates or OCSP
//! responses cannot get a CRL signed, and a `sign-crl` grant does not make a ResponseData or a
//! TBSCertificate pass as a TBSCertList.

mod common;

use std::str::FromStr;
use std::time::Duration;

use common::{Gateway, Pki, dev_config};
use der::Encode;
use der::asn1::UtcTime;
use hsmgate_signer_api::v1::{SignRequest, SignatureAlgorithm as Alg, sign_request};
use hsmgate_signer_api::{
    PAYLOAD_HEADER, PAYLOAD_OCSP_RESPONSE_DATA, PAYLOAD_TBS_CERT_LIST, PAYLOAD_TBS_CERTIFICATE,
};
use tonic::Code;
use x509_cert::certificate::Rfc5280;
use x509_cert::crl::{RevokedCert, TbsCertList};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_cert::time::Time;

const CLIENTS: &[&str] = &[
    "ocsp-presigner",
    "ca-frontend",
    "ceremony",
    "bench",
    "crl-only",
];

/// A client of the dev gateway that may do nothing but sign CRLs with the intermediate.
fn crl_only() -> hsm_config::Client {
    common::client(
        "crl-only",
        &[(&["dev-p256"], &[hsm_config::Operation::SignCrl])],
    )
}

const TBS_CERTIFICATE: &[u8] =
    include_bytes!("../fuzz/corpus/payload_check/seed-tbs-certificate-p256-leaf.der");
const RESPONSE_DATA: &[u8] =
    include_bytes!("../fuzz/corpus/payload_check/seed-ocsp-response-data-good-byname.der");

/// A DER TBSCertList of `entries` revoked serials, every third with reason keyCompromise.
fn tbs_cert_list(entries: u64) -> Vec<u8> {
    let time =
        |secs| Time::UtcTime(UtcTime::from_unix_duration(Duration::from_secs(secs)).expect("time"));
    // reasonCode keyCompromise (RFC 5280 §5.3.1): ENUMERATED 1.
    let reason = Extension {
        extn_id: der::oid::db::rfc5280::ID_CE_CRL_REASONS,
        critical: false,
        extn_value: der::asn1::OctetString::new(vec![0x0a, 0x01, 0x01]).expect("octets"),
    };
    let revoked = (0..entries)
        .map(|i| {
            let mut serial = [0u8; 16];
            serial[0] = 0x4c;
            serial[8..].copy_from_slice(&i.to_be_bytes());
            RevokedCert {
                serial_number: SerialNumber::<Rfc5280>::new(&serial).expect("serial"),
                revocation_date: time(1_780_000_000 + i % 86_400),
                crl_entry_extensions: (i % 3 == 0).then(|| vec![reason.clone()]),
            }
        })
        .collect::<Vec<_>>();
    TbsCertList {
        version: x509_cert::Version::V2,
        signature: AlgorithmIdentifierOwned {
            oid: der::oid::db::rfc5912::ECDSA_WITH_SHA_256,
            parameters: None,
        },
        issuer: Name::from_str("CN=hsmgate dev intermediate,O=hsmgate dev").expect("name"),
        this_update: time(1_780_100_000),
        next_update: Some(time(1_780_100_000 + 7 * 86_400)),
        revoked_certificates: (!revoked.is_empty()).then_some(revoked),
        crl_extensions: None,
    }
    .to_der()
    .expect("TBSCertList")
}

fn declared(
    key: &str,
    input: sign_request::Input,
    payload: Option<&str>,
) -> tonic::Request<SignRequest> {
    let mut r = tonic::Request::new(SignRequest {
        key: key.into(),
        algorithm: Alg::Unspecified as i32,
        input: Some(input),
    });
    if let Some(p) = payload {
        r.metadata_mut()
            .insert(PAYLOAD_HEADER, p.parse().expect("ascii"));
    }
    r.set_timeout(Duration::from_secs(60));
    r
}

fn verify(spki: &[u8], message: &[u8], signature: &[u8]) {
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki).expect("P-256 key");
    let sig = p256::ecdsa::Signature::from_der(signature).expect("DER ECDSA signature");
    key.verify(message, &sig).expect("the signature verifies");
}

#[tokio::test]
async fn a_sign_crl_client_signs_crls_of_a_million_entries_and_nothing_else() {
    let pki = Pki::new(CLIENTS);
    let (mut config, tokens) = dev_config(&pki);
    config.clients.push(crl_only());
    let gw = Gateway::spawn_on(&config, tokens).unwrap_or_else(|e| panic!("gateway: {e}"));
    let tls = |name| {
        let gw = &gw;
        let pki = &pki;
        async move {
            gw.tls_client(&pki.client_tls(name))
                .await
                .expect("tls")
                .max_encoding_message_size(128 << 20)
                .max_decoding_message_size(128 << 20)
        }
    };
    let mut bench = tls("bench").await;
    gw.wait_every_key(&mut bench).await;
    let mut crl = tls("crl-only").await;
    let spki = crl
        .get_public_key(hsmgate_signer_api::v1::GetPublicKeyRequest {
            key: "dev-p256".into(),
        })
        .await
        .expect("public key")
        .into_inner()
        .spki_der;

    // Its job: a small CRL, and a shard of a million entries.
    let small = tbs_cert_list(10);
    let signed = crl
        .sign(declared(
            "dev-p256",
            sign_request::Input::Message(small.clone()),
            Some(PAYLOAD_TBS_CERT_LIST),
        ))
        .await
        .expect("crl-only signs a CRL")
        .into_inner();
    verify(&spki, &small, &signed.signature);

    let large = tbs_cert_list(1_000_000);
    assert!(large.len() > 30 << 20, "{} bytes", large.len());
    let signed = crl
        .sign(declared(
            "dev-p256",
            sign_request::Input::Message(large.clone()),
            Some(PAYLOAD_TBS_CERT_LIST),
        ))
        .await
        .expect("crl-only signs a million-entry CRL")
        .into_inner();
    verify(&spki, &large, &signed.signature);

    // Nothing else, whatever it declares.
    let mut refusals = 0;
    for (what, input, payload) in [
        (
            "a TBSCertificate as one",
            TBS_CERTIFICATE.to_vec(),
            Some(PAYLOAD_TBS_CERTIFICATE),
        ),
        (
            "a ResponseData as one",
            RESPONSE_DATA.to_vec(),
            Some(PAYLOAD_OCSP_RESPONSE_DATA),
        ),
        (
            "a TBSCertificate as a CRL",
            TBS_CERTIFICATE.to_vec(),
            Some(PAYLOAD_TBS_CERT_LIST),
        ),
        (
            "a ResponseData as a CRL",
            RESPONSE_DATA.to_vec(),
            Some(PAYLOAD_TBS_CERT_LIST),
        ),
        (
            "a CRL as a ResponseData",
            small.clone(),
            Some(PAYLOAD_OCSP_RESPONSE_DATA),
        ),
        ("a CRL undeclared", small.clone(), None),
    ] {
        let err = crl
            .sign(declared(
                "dev-p256",
                sign_request::Input::Message(input),
                payload,
            ))
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::PermissionDenied, "{what}: {err:?}");
        refusals += 1;
    }
    let digest = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&small));
    let err = crl
        .sign(declared(
            "dev-p256",
            sign_request::Input::Digest(digest.to_vec()),
            Some(PAYLOAD_TBS_CERT_LIST),
        ))
        .await
        .expect_err("a digest cannot be checked");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("send the message"), "{err:?}");
    refusals += 1;

    // The converse: certificate and OCSP signers get no CRL signed, the large one included
    // (refused for the grant, not for its size), and the pre-signer's `sign-crl` grant does
    // not let a ResponseData through as a CRL.
    let mut frontend = tls("ca-frontend").await;
    for tbs in [&small, &large] {
        let err = frontend
            .sign(declared(
                "dev-p256",
                sign_request::Input::Message(tbs.clone()),
                Some(PAYLOAD_TBS_CERT_LIST),
            ))
            .await
            .expect_err("ca-frontend may not sign CRLs");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(err.message().contains("may not sign-crl"), "{err:?}");
        refusals += 1;
    }
    let mut presigner = tls("ocsp-presigner").await;
    let err = presigner
        .sign(declared(
            "dev-p256",
            sign_request::Input::Message(RESPONSE_DATA.to_vec()),
            Some(PAYLOAD_TBS_CERT_LIST),
        ))
        .await
        .expect_err("a ResponseData is no TBSCertList");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("TBSCertList"), "{err:?}");
    refusals += 1;

    // Other payloads keep their 16 KiB limit: a 20 KiB "ResponseData" is refused for its size.
    let err = presigner
        .sign(declared(
            "dev-p256",
            sign_request::Input::Message(vec![0x30; 20 << 10]),
            Some(PAYLOAD_OCSP_RESPONSE_DATA),
        ))
        .await
        .expect_err("too large for an OCSP ResponseData");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("at most 16384"), "{err:?}");
    refusals += 1;

    let records = gw.audit_records();
    let crl_records: Vec<_> = records
        .iter()
        .filter(|r| r["operation"].as_str() == Some("sign-crl"))
        .collect();
    assert_eq!(
        crl_records
            .iter()
            .filter(|r| r["outcome"].as_str() == Some("OK"))
            .count(),
        2,
        "{records:?}"
    );
    assert_eq!(
        records
            .iter()
            .filter(|r| r["outcome"].as_str() != Some("OK"))
            .count(),
        refusals,
        "one audit record per refused call"
    );
}
