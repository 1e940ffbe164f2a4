//! What the OCSP benches share: the issuer certificate and the OpenSSL-made requests of
//! `tests/data/` (a throwaway P-256 CA; see its README), requests for any serial built the way
//! `openssl ocsp -no_nonce -reqout` builds them (checked byte for byte against OpenSSL's), and
//! stored responses of the pre-signer's shape.

#![allow(dead_code)] // each bench uses a different part

use async_trait::async_trait;
use der07::Encode;
use der07::asn1::{Null, ObjectIdentifier, OctetString};
use spki07::AlgorithmIdentifierOwned;
use x509_ocsp::{CertId, OcspRequest, Request, TbsRequest, Version};

use ocsp::{
    CertStatus, Error, HashAlg, Issuer, Serial, StoredResponse, TbsSigner, serial_number,
    sign_responses,
};

pub const ISSUER_PEM: &[u8] = include_bytes!("../../tests/data/ca.pem");
/// `openssl ocsp -issuer ca.pem -serial 0x1001 -no_nonce -reqout req-sha1.der`, and the rest.
pub const REQ_SHA1: &[u8] = include_bytes!("../../tests/data/req-sha1.der");
pub const REQ_SHA256: &[u8] = include_bytes!("../../tests/data/req-sha256.der");
pub const REQ_SHA1_NONCE: &[u8] = include_bytes!("../../tests/data/req-sha1-nonce.der");
pub const REQ_SHA256_NONCE: &[u8] = include_bytes!("../../tests/data/req-sha256-nonce.der");

pub const ISSUER_NAME: &str = "bench-ca";

pub fn issuer() -> Issuer {
    match Issuer::new(ISSUER_NAME, "bench-p256", ISSUER_PEM) {
        Ok(i) => i,
        Err(e) => panic!("tests/data/ca.pem: {e}"),
    }
}

/// A DER `OCSPRequest` for `serial` as OpenSSL makes it without a nonce: one Request, the
/// CertID's hash AlgorithmIdentifier with NULL parameters, no extensions, unsigned.
pub fn request(alg: HashAlg, issuer: &Issuer, serial: &Serial) -> Vec<u8> {
    let oid = match alg {
        HashAlg::Sha1 => ObjectIdentifier::new_unwrap("1.3.14.3.2.26"),
        HashAlg::Sha256 => ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1"),
    };
    let octets = |b: &[u8]| match OctetString::new(b) {
        Ok(o) => o,
        Err(e) => panic!("OCTET STRING: {e}"),
    };
    let serial_number = match serial_number(serial) {
        Ok(s) => s,
        Err(e) => panic!("serial {serial}: {e}"),
    };
    let request = OcspRequest {
        tbs_request: TbsRequest {
            version: Version::V1,
            requestor_name: None,
            request_list: vec![Request {
                req_cert: CertId {
                    hash_algorithm: AlgorithmIdentifierOwned {
                        oid,
                        parameters: Some(Null.into()),
                    },
                    issuer_name_hash: octets(issuer.name_hash.get(alg)),
                    issuer_key_hash: octets(issuer.key_hash.get(alg)),
                    serial_number,
                },
                single_request_extensions: None,
            }],
            request_extensions: None,
        },
        optional_signature: None,
    };
    match request.to_der() {
        Ok(der) => der,
        Err(e) => panic!("OCSPRequest: {e}"),
    }
}

/// Serials of the pre-signer's kind: 16 random-looking bytes (as a CA's 128-bit serials),
/// derived from `i` so that runs repeat, top bit clear.
pub fn serial(i: u64) -> Serial {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5851_F42D_4C95_7F2D;
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(8) {
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        chunk.copy_from_slice(&x.to_be_bytes());
    }
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Serial::from_be_bytes(&bytes)
}

/// A [`TbsSigner`] that signs nothing: a fixed 72-byte `Ecdsa-Sig-Value` and the
/// ecdsa-with-SHA256 AlgorithmIdentifier the gateway would return for a P-256 key. What is
/// left of `sign_responses` is building and encoding.
#[derive(Debug)]
pub struct StandIn;

/// DER `Ecdsa-Sig-Value` of the usual size: SEQUENCE { INTEGER (33 bytes), INTEGER (33 bytes) }.
pub fn stand_in_signature() -> Vec<u8> {
    let mut sig = vec![0x30, 70, 0x02, 33, 0x00];
    sig.extend(std::iter::repeat_n(0xa5, 32));
    sig.extend([0x02, 33, 0x00]);
    sig.extend(std::iter::repeat_n(0x5a, 32));
    sig
}

/// ecdsa-with-SHA256 (RFC 5758 §3.2: parameters absent).
pub const ECDSA_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];

#[async_trait]
impl TbsSigner for StandIn {
    async fn sign(&self, _key: &str, tbs: Vec<Vec<u8>>) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Error> {
        let sig = stand_in_signature();
        Ok(tbs
            .iter()
            .map(|_| (sig.clone(), ECDSA_SHA256.to_vec()))
            .collect())
    }
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Responses as the pre-signer stores them (two SingleResponses, 4 days' validity), with a
/// stand-in signature: every third one revoked.
/// A SQLite store at `path` holding a response of [`responses`] for each of `serials`, under
/// [`ISSUER_NAME`].
pub async fn filled_store(
    path: &std::path::Path,
    issuer: &Issuer,
    serials: &[Serial],
) -> std::sync::Arc<ocsp::store::SqliteStore> {
    let store = match ocsp::store::SqliteStore::open(path) {
        Ok(s) => std::sync::Arc::new(s),
        Err(e) => panic!("SQLite store: {e}"),
    };
    let name = ocsp::IssuerName(ISSUER_NAME.into());
    let items = serials
        .iter()
        .zip(responses(issuer, serials).await)
        .map(|(s, r)| (name.clone(), s.clone(), r))
        .collect();
    if let Err(e) = store.put_many(items).await {
        panic!("storing responses: {e}");
    }
    store
}

pub async fn responses(issuer: &Issuer, serials: &[Serial]) -> Vec<StoredResponse> {
    let now = unix_now();
    let items: Vec<(Serial, CertStatus)> = serials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let status = if i % 3 == 2 {
                CertStatus::Revoked {
                    at: now - 86_400,
                    reason: Some(1),
                }
            } else {
                CertStatus::Good
            };
            (s.clone(), status)
        })
        .collect();
    match sign_responses(
        &StandIn,
        issuer,
        &items,
        now - 60,
        now + 4 * 86_400,
        now - 60,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => panic!("building responses: {e}"),
    }
}

/// The request builder must produce what OpenSSL produced for the fixtures.
pub fn check_request_builder(issuer: &Issuer) {
    let serial = Serial::from_be_bytes(&[0x10, 0x01]);
    assert_eq!(request(HashAlg::Sha1, issuer, &serial), REQ_SHA1);
    assert_eq!(request(HashAlg::Sha256, issuer, &serial), REQ_SHA256);
}
