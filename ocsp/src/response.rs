//! Encoding OCSP responses (RFC 6960 §4.2, with the RFC 5019 / RFC 9919 profile): the ASN.1
//! only. What gets signed, and how, is [`crate::signing`]'s job.
//!
//! ```text
//!  (serial, status) ──▶ ResponseData (DER, `template`) ──▶ signed elsewhere (crate::signing)
//!                                                              │ signature, AlgorithmIdentifier
//!  OCSPResponse (DER) ◀── BasicOCSPResponse ◀──────────────────┘
//! ```
//!
//! x509-ocsp's own builder wants a synchronous signer; the HSMs sit behind gRPC, so the
//! `ResponseData` DER is written here, those bytes are signed through the gateway, and the
//! signature and the gateway's `AlgorithmIdentifier` are attached around them here. The bytes are written from
//! a per-issuer template (`template`: only the serial, the status and the times change from
//! one response to the next), byte for byte what x509-ocsp's structs encode to (the unit tests
//! compare the two). x509-ocsp is on the der 0.7 line (renamed `der07` here): only DER bytes
//! leave this module.

use std::fmt;
use std::time::Duration;

use der07::asn1::{GeneralizedTime, ObjectIdentifier};
use der07::oid::AssociatedOid;
use der07::{Decode, Encode};
use x509_cert_02::ext::pkix::CrlReason;
use x509_cert_02::serial_number::SerialNumber;
use x509_ocsp::{BasicOcspResponse, OcspGeneralizedTime, OcspResponse, OcspResponseStatus};
// The encoder the template (`template`) is checked against, in the unit tests.
#[cfg(test)]
use {
    der07::asn1::{AnyRef, BitString, Null, OctetString},
    spki07::AlgorithmIdentifierOwned,
    x509_ocsp::{
        CertId, ResponderId, ResponseBytes, ResponseData, RevokedInfo, SingleResponse, Version,
    },
};

// The response layouts the test-only encoder (`response_data`) writes.
#[cfg(test)]
use crate::config::CertIdHashes;
use crate::error::Error;
use crate::hash_alg::HashAlg;
use crate::record::{ReasonCode, Serial};
#[cfg(test)]
use {crate::issuers::Issuer, crate::record::CertStatus};

pub(crate) mod template;

/// BasicOCSPResponse (RFC 6960 §4.2.1) around a tbsResponseData that is already DER: the bytes
/// that were signed are embedded as they are instead of being decoded and encoded again (which
/// was most of the pre-signer's encoding work).
#[cfg(test)]
#[derive(der07::Sequence)]
struct SignedBasicResponse<'a> {
    tbs_response_data: AnyRef<'a>,
    signature_algorithm: AlgorithmIdentifierOwned,
    signature: BitString,
}

/// A successful `OCSPResponse` carrying the BasicOCSPResponse made of `tbs`, the gateway's
/// `algorithm` (DER AlgorithmIdentifier) and `signature`.
#[cfg(test)]
fn ocsp_response(tbs: &[u8], algorithm: &[u8], signature: &[u8]) -> Result<Vec<u8>, Error> {
    let basic = SignedBasicResponse {
        tbs_response_data: AnyRef::try_from(tbs).map_err(|e| encoding("ResponseData", e))?,
        signature_algorithm: AlgorithmIdentifierOwned::from_der(algorithm)
            .map_err(|e| encoding("signatureAlgorithm from the gateway", e))?,
        signature: BitString::from_bytes(signature).map_err(|e| encoding("signature", e))?,
    }
    .to_der()
    .map_err(|e| encoding("BasicOCSPResponse", e))?;
    OcspResponse {
        response_status: OcspResponseStatus::Successful,
        response_bytes: Some(ResponseBytes {
            response_type: <BasicOcspResponse as AssociatedOid>::OID,
            response: OctetString::new(basic).map_err(|e| encoding("responseBytes", e))?,
        }),
    }
    .to_der()
    .map_err(|e| encoding("OCSPResponse", e))
}

/// id-sha1 (RFC 3279 §2.2.1): the CertID hash of RFC 5019 clients.
const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
/// id-sha256 (RFC 5754 §2.2): the CertID hash of RFC 9919 clients.
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");

pub(crate) fn encoding(what: &str, e: impl fmt::Display) -> Error {
    Error::Encoding {
        what: what.to_owned(),
        detail: e.to_string(),
    }
}

/// Unix seconds as an RFC 6960 GeneralizedTime: whole seconds, UTC (`YYYYMMDDHHMMSSZ`), as
/// RFC 5280 §4.1.2.5.2 requires of GeneralizedTime in PKIX.
pub(crate) fn generalized_time(unix_secs: i64, what: &str) -> Result<OcspGeneralizedTime, Error> {
    let secs = u64::try_from(unix_secs)
        .map_err(|_| encoding(what, format!("{unix_secs} is before 1970")))?;
    GeneralizedTime::from_unix_duration(Duration::from_secs(secs))
        .map(OcspGeneralizedTime)
        .map_err(|e| encoding(what, e))
}

/// A serial as the DER INTEGER of a CertID (RFC 6960 §4.1.1 `serialNumber
/// CertificateSerialNumber`): positive, so a magnitude whose first bit is set gets a leading
/// 0x00. RFC 5280 §4.1.2.2 allows 20 octets; a 20-byte magnitude with the high bit set takes 21
/// when encoded, which x509-cert's constructor refuses but its decoder accepts (as certificates
/// in the wild carry such serials), so that case is built from its encoding.
pub fn serial_number(serial: &Serial) -> Result<SerialNumber, Error> {
    let bytes = serial.as_bytes();
    if bytes.is_empty() {
        // Zero (not a valid serial, RFC 5280 §4.1.2.2, but certificates carrying it exist):
        // x509-cert 0.2 encodes an empty magnitude as `02 00`, which is not DER.
        return SerialNumber::from_der(&[0x02, 0x01, 0x00])
            .map_err(|e| encoding("serial number", e));
    }
    match SerialNumber::new(bytes) {
        Ok(s) => Ok(s),
        Err(e) if bytes.len() == 20 && bytes[0] & 0x80 != 0 => {
            let mut der = vec![0x02, 21, 0x00];
            der.extend_from_slice(bytes);
            SerialNumber::from_der(&der).map_err(|_| encoding("serial number", e))
        }
        Err(_) => Err(encoding(
            "serial number",
            format!("{serial}: longer than the 20 octets RFC 5280 §4.1.2.2 allows"),
        )),
    }
}

/// RFC 5280 §5.3.1 `CRLReason` from its code (7 is not assigned).
fn crl_reason(code: ReasonCode) -> Result<CrlReason, Error> {
    Ok(match code {
        0 => CrlReason::Unspecified,
        1 => CrlReason::KeyCompromise,
        2 => CrlReason::CaCompromise,
        3 => CrlReason::AffiliationChanged,
        4 => CrlReason::Superseded,
        5 => CrlReason::CessationOfOperation,
        6 => CrlReason::CertificateHold,
        8 => CrlReason::RemoveFromCRL,
        9 => CrlReason::PrivilegeWithdrawn,
        10 => CrlReason::AaCompromise,
        other => {
            return Err(encoding(
                "revocation reason",
                format!("{other} is not a CRLReason code (RFC 5280 §5.3.1: 0-6, 8-10)"),
            ));
        }
    })
}

/// Whether `code` is a CRLReason an OCSP response may carry.
pub fn is_valid_reason(code: ReasonCode) -> bool {
    crl_reason(code).is_ok()
}

/// RFC 6960 §4.1.1:
///
/// ```text
/// CertID ::= SEQUENCE {
///     hashAlgorithm       AlgorithmIdentifier,
///     issuerNameHash      OCTET STRING, -- Hash of issuer's DN
///     issuerKeyHash       OCTET STRING, -- Hash of issuer's public key
///     serialNumber        CertificateSerialNumber }
/// ```
///
/// The hash AlgorithmIdentifier carries NULL parameters, as OpenSSL and Go write it in their
/// requests (RFC 5754 §2 asks receivers to accept both forms).
#[cfg(test)]
fn cert_id(alg: HashAlg, issuer: &Issuer, serial: &SerialNumber) -> Result<CertId, Error> {
    let oid = match alg {
        HashAlg::Sha1 => ID_SHA1,
        HashAlg::Sha256 => ID_SHA256,
    };
    Ok(CertId {
        hash_algorithm: AlgorithmIdentifierOwned {
            oid,
            parameters: Some(Null.into()),
        },
        issuer_name_hash: OctetString::new(issuer.name_hash.get(alg))
            .map_err(|e| encoding("CertID", e))?,
        issuer_key_hash: OctetString::new(issuer.key_hash.get(alg))
            .map_err(|e| encoding("CertID", e))?,
        serial_number: serial.clone(),
    })
}

/// RFC 6960 §4.2.1:
///
/// ```text
/// CertStatus ::= CHOICE {
///     good        [0]     IMPLICIT NULL,
///     revoked     [1]     IMPLICIT RevokedInfo,
///     unknown     [2]     IMPLICIT UnknownInfo }
///
/// RevokedInfo ::= SEQUENCE {
///     revocationTime              GeneralizedTime,
///     revocationReason    [0]     EXPLICIT CRLReason OPTIONAL }
/// ```
#[cfg(test)]
fn cert_status(status: CertStatus) -> Result<x509_ocsp::CertStatus, Error> {
    Ok(match status {
        CertStatus::Good => x509_ocsp::CertStatus::good(),
        CertStatus::Revoked { at, reason } => x509_ocsp::CertStatus::revoked(RevokedInfo {
            revocation_time: generalized_time(at, "revocationTime")?,
            revocation_reason: reason.map(crl_reason).transpose()?,
        }),
    })
}

/// The `ResponseData` (RFC 6960 §4.2.1) for one certificate:
///
/// ```text
/// ResponseData ::= SEQUENCE {
///     version              [0] EXPLICIT Version DEFAULT v1,
///     responderID              ResponderID,
///     producedAt               GeneralizedTime,
///     responses                SEQUENCE OF SingleResponse,
///     responseExtensions   [1] EXPLICIT Extensions OPTIONAL }
///
/// ResponderID ::= CHOICE {
///     byName   [1] Name,
///     byKey    [2] KeyHash }
///
/// KeyHash ::= OCTET STRING -- SHA-1 hash of responder's public key
///                          -- (excluding the tag and length fields)
///
/// SingleResponse ::= SEQUENCE {
///     certID                       CertID,
///     certStatus                   CertStatus,
///     thisUpdate                   GeneralizedTime,
///     nextUpdate         [0]       EXPLICIT GeneralizedTime OPTIONAL,
///     singleExtensions   [1]       EXPLICIT Extensions OPTIONAL }
/// ```
///
/// - version v1 is the DEFAULT, so DER omits it;
/// - responderID byKey: the issuer signs its own responses (RFC 5019 §2.2.3 prefers byKey);
/// - one SingleResponse per CertID hash in `hashes`, all for the one certificate, SHA-1
///   first. The pre-signer passes one hash at a time: RFC 5019 §2.2.1 and RFC 9919 §2.2.1 say
///   responses "SHOULD include only one SingleResponse", and Go's `ocsp.ParseResponse` and
///   Python `cryptography`'s `certificate_status` refuse two, so each configured hash gets its
///   own signed response (see [`CertIdHashes`]). Two hashes in one response is the layout
///   responses were stored in before (one signature covering both); it is still built here
///   for [`sign_responses`] and for tests of how such stored responses are served;
/// - nextUpdate always present (RFC 5019 §2.2.4: a response without it would be "newer
///   information is always available" and uncacheable);
/// - no extensions and no nonce: responses are pregenerated (RFC 5019 §2.2.1).
#[cfg(test)]
fn response_data(
    issuer: &Issuer,
    hashes: &CertIdHashes,
    serial: &Serial,
    status: CertStatus,
    this_update: &OcspGeneralizedTime,
    next_update: &OcspGeneralizedTime,
    produced_at: &OcspGeneralizedTime,
) -> Result<ResponseData, Error> {
    let serial = serial_number(serial)?;
    let cert_status = cert_status(status)?;
    let single = |alg| -> Result<SingleResponse, Error> {
        Ok(SingleResponse {
            cert_id: cert_id(alg, issuer, &serial)?,
            cert_status,
            this_update: *this_update,
            next_update: Some(*next_update),
            single_extensions: None,
        })
    };
    Ok(ResponseData {
        version: Version::V1,
        responder_id: ResponderId::ByKey(
            OctetString::new(issuer.key_hash.sha1.to_vec())
                .map_err(|e| encoding("responderID", e))?,
        ),
        produced_at: *produced_at,
        responses: hashes.iter().map(single).collect::<Result<_, _>>()?,
        response_extensions: None,
    })
}

/// The CertID hash algorithms of the SingleResponses in a signed `OCSPResponse` (`der`, as
/// stored), in their order; algorithms other than SHA-1 and SHA-256 are left out. `None` if
/// `der` is not a successful response carrying a BasicOCSPResponse.
///
/// The responder reads this once per stored response (it is kept with the response's HTTP
/// parts) to answer a request only with a response that holds a SingleResponse for the
/// request's CertID hash. Only the algorithm is compared: the store found the response by
/// the issuer the CertID's hashes named and by its serial, and the pre-signer built every
/// SingleResponse from those.
pub fn cert_id_hashes_in(der: &[u8]) -> Option<Vec<HashAlg>> {
    let response = OcspResponse::from_der(der).ok()?;
    let bytes = response.response_bytes?;
    if bytes.response_type != <BasicOcspResponse as AssociatedOid>::OID {
        return None;
    }
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes()).ok()?;
    Some(
        basic
            .tbs_response_data
            .responses
            .iter()
            .filter_map(|r| match r.cert_id.hash_algorithm.oid {
                ID_SHA1 => Some(HashAlg::Sha1),
                ID_SHA256 => Some(HashAlg::Sha256),
                _ => None,
            })
            .collect(),
    )
}

/// An `OCSPResponse` with a status and no `responseBytes` (RFC 6960 §4.2.1: "If the value of
/// responseStatus is one of the error conditions, the responseBytes field is not set"), e.g.
/// `unauthorized` (`30 03 0a 01 06`) for a certificate this responder does not answer for
/// (RFC 5019 §2.2.3) and `malformedRequest` (`30 03 0a 01 01`). Such responses are not signed.
pub fn status_only(status: OcspResponseStatus) -> Vec<u8> {
    let response = OcspResponse {
        response_status: status,
        response_bytes: None,
    };
    match response.to_der() {
        Ok(der) => der,
        // Encoding a one-byte ENUMERATED in a SEQUENCE cannot fail; should it ever, the bytes
        // are these (the unit test checks the two agree).
        Err(_) => vec![0x30, 0x03, 0x0a, 0x01, status as u8],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::{TbsSigner, sign_responses, sign_responses_with};
    use async_trait::async_trait;
    use std::sync::Mutex;

    /// Returns fixed bytes as signatures and records what it was asked to sign.
    #[derive(Debug, Default)]
    struct FakeSigner {
        seen: Mutex<Vec<Vec<u8>>>,
    }

    // ecdsa-with-SHA256, no parameters (RFC 5758 §3.2).
    const ECDSA_SHA256: &[u8] = &[
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
    ];

    #[async_trait]
    impl TbsSigner for FakeSigner {
        async fn sign(
            &self,
            _key: &str,
            tbs: Vec<Vec<u8>>,
        ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Error> {
            let out = tbs
                .iter()
                .map(|_| (vec![0x30, 0x00], ECDSA_SHA256.to_vec()))
                .collect();
            self.seen.lock().unwrap().extend(tbs);
            Ok(out)
        }
    }

    /// `cert_id` carries `issuer`'s name and key hashes under `alg`.
    fn assert_names_issuer(cert_id: &CertId, issuer: &Issuer, alg: HashAlg) {
        assert_eq!(
            cert_id.issuer_name_hash.as_bytes(),
            issuer.name_hash.get(alg)
        );
        assert_eq!(cert_id.issuer_key_hash.as_bytes(), issuer.key_hash.get(alg));
    }

    const ISSUER_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBejCCAR+gAwIBAgIUeD8IUzJEL3I5rKNvBXHPPBUg3lowCgYIKoZIzj0EAwIw
EjEQMA4GA1UEAwwHVGVzdCBDQTAeFw0yNjExMjcxMjUzMTZaFw0zNjExMjQxMjUz
MTZaMBIxEDAOBgNVBAMMB1Rlc3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AASPsZvlplFuvmT2ZZoUPFO1xmlaj26dZJGSP2iujfYhyghXU5E17YwVPbwd1BZh
GhJDOiFTHmjijfQeUxGl11Zao1MwUTAdBgNVHQ4EFgQUAm4pIbh77Kue18XNapH1
3yS/L7EwHwYDVR0jBBgwFoAUAm4pIbh77Kue18XNapH13yS/L7EwDwYDVR0TAQH/
BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEA7i5aqjQxCc3FVWrjf0aOOp3V/veH
oqmvrAf5tbRQFdQCIQCpZ72fpBE/ecRqUX96VOFi2aJRymPGFGCn8PRMn6knzQ==
-----END CERTIFICATE-----
";

    fn issuer() -> Issuer {
        Issuer::new("test", "k", ISSUER_PEM.as_bytes()).expect("issuer")
    }

    #[test]
    fn status_only_matches_the_known_bytes() {
        assert_eq!(
            status_only(OcspResponseStatus::Unauthorized),
            [0x30, 0x03, 0x0a, 0x01, 0x06]
        );
        assert_eq!(
            status_only(OcspResponseStatus::MalformedRequest),
            [0x30, 0x03, 0x0a, 0x01, 0x01]
        );
        assert_eq!(
            status_only(OcspResponseStatus::TryLater),
            [0x30, 0x03, 0x0a, 0x01, 0x03]
        );
        assert_eq!(
            status_only(OcspResponseStatus::InternalError),
            [0x30, 0x03, 0x0a, 0x01, 0x02]
        );
    }

    #[test]
    fn serials_are_positive_integers() {
        let der = |hex: &str| {
            serial_number(&Serial::from_hex(hex).unwrap())
                .unwrap()
                .to_der()
                .unwrap()
        };
        assert_eq!(der("01"), [0x02, 0x01, 0x01]);
        assert_eq!(der("7f"), [0x02, 0x01, 0x7f]);
        assert_eq!(der("80"), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(der("00ff01"), [0x02, 0x03, 0x00, 0xff, 0x01]);
        assert_eq!(der("00"), [0x02, 0x01, 0x00]);
        let twenty_high = "ff".repeat(20);
        let encoded = der(&twenty_high);
        assert_eq!(&encoded[..3], &[0x02, 21, 0x00]);
        assert_eq!(encoded.len(), 23);
        assert!(serial_number(&Serial::from_hex(&"01".repeat(21)).unwrap()).is_err());
    }

    #[test]
    fn reasons_follow_rfc5280() {
        assert!(
            is_valid_reason(0) && is_valid_reason(6) && is_valid_reason(8) && is_valid_reason(10)
        );
        assert!(!is_valid_reason(7) && !is_valid_reason(11));
    }

    #[tokio::test]
    async fn a_response_has_two_single_responses_and_the_signed_bytes() {
        let signer = FakeSigner::default();
        let issuer = issuer();
        let serial = Serial::from_hex("8badf00d").unwrap();
        let status = CertStatus::Revoked {
            at: 1_700_000_000,
            reason: Some(1),
        };
        let out = sign_responses(
            &signer,
            &issuer,
            &[(serial.clone(), status)],
            1_800_000_000,
            1_800_345_600,
            1_800_003_600,
        )
        .await
        .unwrap();
        assert_eq!(out.len(), 1);
        let resp = OcspResponse::from_der(&out[0].der).unwrap();
        assert_eq!(resp.response_status, OcspResponseStatus::Successful);
        let bytes = resp.response_bytes.unwrap();
        assert_eq!(bytes.response_type.to_string(), "1.3.6.1.5.5.7.48.1.1");
        let basic = BasicOcspResponse::from_der(bytes.response.as_bytes()).unwrap();
        assert!(basic.certs.is_none());
        let tbs = basic.tbs_response_data.to_der().unwrap();
        assert_eq!(
            signer.seen.lock().unwrap()[0],
            tbs,
            "the signed bytes are the embedded ones"
        );
        // version v1 is the DEFAULT: no [0] right after the SEQUENCE header.
        let header_len = if tbs[1] & 0x80 != 0 {
            2 + (tbs[1] & 0x7f) as usize
        } else {
            2
        };
        assert_eq!(tbs[header_len], 0xa2, "responderID byKey comes first");
        let rd = basic.tbs_response_data;
        assert_eq!(
            rd.responder_id,
            ResponderId::ByKey(OctetString::new(issuer.key_hash.sha1.to_vec()).unwrap())
        );
        assert!(rd.response_extensions.is_none());
        assert_eq!(rd.responses.len(), 2);
        let algs: Vec<String> = rd
            .responses
            .iter()
            .map(|r| r.cert_id.hash_algorithm.oid.to_string())
            .collect();
        assert_eq!(algs, ["1.3.14.3.2.26", "2.16.840.1.101.3.4.2.1"]);
        for (r, alg) in rd.responses.iter().zip([HashAlg::Sha1, HashAlg::Sha256]) {
            assert_names_issuer(&r.cert_id, &issuer, alg);
            assert_eq!(
                r.cert_id.serial_number.to_der().unwrap(),
                [0x02, 0x05, 0x00, 0x8b, 0xad, 0xf0, 0x0d]
            );
            assert_eq!(r.this_update.0.to_unix_duration().as_secs(), 1_800_000_000);
            assert_eq!(
                r.next_update.unwrap().0.to_unix_duration().as_secs(),
                1_800_345_600
            );
            match r.cert_status {
                x509_ocsp::CertStatus::Revoked(info) => {
                    assert_eq!(
                        info.revocation_time.0.to_unix_duration().as_secs(),
                        1_700_000_000
                    );
                    assert_eq!(info.revocation_reason, Some(CrlReason::KeyCompromise));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(rd.produced_at.0.to_unix_duration().as_secs(), 1_800_003_600);
        // Whole seconds, UTC: GeneralizedTime "YYYYMMDDHHMMSSZ" (tag 0x18, 15 bytes).
        let produced = rd.produced_at.to_der().unwrap();
        assert_eq!(&produced[..2], &[0x18, 15]);
        assert_eq!(produced.last(), Some(&b'Z'));
        assert_eq!(basic.signature_algorithm.to_der().unwrap(), ECDSA_SHA256);
    }

    /// The SingleResponses of a built `OCSPResponse`, decoded by x509-ocsp (not by the code
    /// that built it).
    fn singles(der: &[u8]) -> Vec<SingleResponse> {
        let resp = OcspResponse::from_der(der).unwrap();
        let bytes = resp.response_bytes.unwrap();
        BasicOcspResponse::from_der(bytes.response.as_bytes())
            .unwrap()
            .tbs_response_data
            .responses
    }

    #[tokio::test]
    async fn each_cert_id_hash_setting_gives_exactly_its_single_responses_under_one_signature() {
        let issuer = issuer();
        let items: Vec<(Serial, CertStatus)> = ["01", "8badf00d", "7f"]
            .iter()
            .map(|h| (Serial::from_hex(h).unwrap(), CertStatus::Good))
            .collect();
        for (setting, oids) in [
            (
                CertIdHashes::default(),
                &["1.3.14.3.2.26", "2.16.840.1.101.3.4.2.1"][..],
            ),
            (CertIdHashes::only(HashAlg::Sha1), &["1.3.14.3.2.26"][..]),
            (
                CertIdHashes::only(HashAlg::Sha256),
                &["2.16.840.1.101.3.4.2.1"][..],
            ),
        ] {
            let signer = FakeSigner::default();
            let out = sign_responses_with(
                &signer,
                &issuer,
                &setting,
                &items,
                1_800_000_000,
                1_800_345_600,
                1_800_000_000,
            )
            .await
            .unwrap();
            // One signature per certificate, whatever the number of SingleResponses.
            assert_eq!(
                signer.seen.lock().unwrap().len(),
                items.len(),
                "{setting:?}"
            );
            assert_eq!(out.len(), items.len());
            let expected: Vec<HashAlg> = setting.iter().collect();
            for (response, (serial, _)) in out.iter().zip(&items) {
                let singles = singles(&response.der);
                let got: Vec<String> = singles
                    .iter()
                    .map(|r| r.cert_id.hash_algorithm.oid.to_string())
                    .collect();
                assert_eq!(got, oids, "{setting:?}");
                for (single, alg) in singles.iter().zip(setting.iter()) {
                    assert_names_issuer(&single.cert_id, &issuer, alg);
                    assert_eq!(single.cert_id.serial_number, serial_number(serial).unwrap());
                    assert_eq!(single.cert_status, x509_ocsp::CertStatus::good());
                }
                assert_eq!(cert_id_hashes_in(&response.der), Some(expected.clone()));
                // The store's walk over the bytes agrees with the full decode, and bytes cut
                // short are the legacy slot, as the decode says.
                let slot = match expected.as_slice() {
                    [alg] => crate::store::Slot::Hash(*alg),
                    _ => crate::store::Slot::Legacy,
                };
                assert_eq!(crate::store::Slot::of(&response.der), slot);
                let cut = &response.der[..response.der.len() - 1];
                assert_eq!(crate::store::Slot::of(cut), crate::store::Slot::Legacy);
                assert_eq!(cert_id_hashes_in(cut), None);
            }
        }
        // The default layout is the one `sign_responses` has always built, byte for byte.
        let (a, b) = (FakeSigner::default(), FakeSigner::default());
        let old = sign_responses(&a, &issuer, &items, 10, 20, 10)
            .await
            .unwrap();
        let new = sign_responses_with(&b, &issuer, &CertIdHashes::default(), &items, 10, 20, 10)
            .await
            .unwrap();
        assert_eq!(old, new);
    }

    /// Issue 12 item 7: a revocation signed an hour-backdated thisUpdate before its
    /// revocationTime. Read back from the DER by x509-ocsp.
    #[tokio::test]
    async fn a_revoked_response_never_has_this_update_before_the_revocation() {
        let signer = FakeSigner::default();
        let issuer = issuer();
        let now = 1_800_000_000;
        let (this_update, next_update) = (now - 3_600, now - 3_600 + 345_600);
        let cases = [
            // Revoked a minute ago: thisUpdate moves up to the revocation time.
            (now - 60, now - 60),
            // Revoked long ago: the backdate stands.
            (now - 86_400, this_update),
            // A revocation time ahead of the clock: thisUpdate stops at producedAt.
            (now + 600, now),
        ];
        let items: Vec<(Serial, CertStatus)> = cases
            .iter()
            .enumerate()
            .map(|(i, (at, _))| {
                let status = CertStatus::Revoked {
                    at: *at,
                    reason: Some(1),
                };
                (Serial::from_be_bytes(&[i as u8 + 1]), status)
            })
            .chain([(Serial::from_be_bytes(&[9]), CertStatus::Good)])
            .collect();
        let out = sign_responses(&signer, &issuer, &items, this_update, next_update, now)
            .await
            .unwrap();
        let expected = cases.iter().map(|(_, t)| *t).chain([this_update]);
        for ((response, want), (_, status)) in out.iter().zip(expected).zip(&items) {
            assert_eq!(response.this_update, want, "{status:?}");
            assert_eq!(response.next_update - response.this_update, 345_600);
            for single in singles(&response.der) {
                let signed_this = single.this_update.0.to_unix_duration().as_secs() as i64;
                assert_eq!(signed_this, want, "{status:?}");
                if let x509_ocsp::CertStatus::Revoked(info) = single.cert_status {
                    let at = info.revocation_time.0.to_unix_duration().as_secs() as i64;
                    assert!(
                        signed_this >= at.min(now),
                        "{status:?}: {signed_this} < {at}"
                    );
                }
            }
        }
    }

    /// The template writer (`template`) against x509-ocsp's encoder (`response_data`,
    /// `ocsp_response` through der 0.7), byte for byte: serials of every length class (zero,
    /// one byte, high bit set and not, leading-zero input, 19-21 encoded octets), good and
    /// revoked with and without a reason (every CRLReason), one and two CertID hashes, times
    /// from 1970 to 9999 (leap days, end of years), and signatures from empty to RSA-4096 size
    /// (long-form lengths).
    #[test]
    fn the_template_writes_exactly_what_der_encodes() {
        let issuer = issuer();
        let mut serials: Vec<String> = [
            "", "00", "01", "7f", "80", "ff", "00ff", "0100", "7fff", "8000", "0080", "7fffffff",
            "80000000", "8badf00d",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for n in [15, 16, 19, 20] {
            serials.push("ff".repeat(n));
            serials.push(format!("7f{}", "ff".repeat(n - 1)));
            serials.push(format!("80{}", "00".repeat(n - 1)));
            serials.push(format!("00{}", "a5".repeat(n)));
        }
        let times = [
            (0, 1, 0),
            (951_782_400, 951_868_799, 951_782_400), // 2000-02-29, 2000-02-29T23:59:59
            (1_800_000_000, 1_800_345_600, 1_800_003_600),
            (1_704_067_199, 1_704_067_200, 1_704_067_199), // 2023-12-31T23:59:59, 2024-01-01
            (4_107_542_400, 4_107_628_800, 4_107_542_400), // 2100-03-01 (2100 is no leap year)
            (253_402_300_700, 253_402_300_799, 253_402_300_799), // 9999-12-31
        ];
        let mut statuses = vec![
            CertStatus::Good,
            CertStatus::Revoked {
                at: 0,
                reason: None,
            },
            CertStatus::Revoked {
                at: 1_700_000_000,
                reason: None,
            },
        ];
        for reason in [0, 1, 2, 3, 4, 5, 6, 8, 9, 10] {
            statuses.push(CertStatus::Revoked {
                at: 1_700_000_000 + i64::from(reason),
                reason: Some(reason),
            });
        }
        let hash_sets = [
            CertIdHashes::default(),
            CertIdHashes::only(HashAlg::Sha1),
            CertIdHashes::only(HashAlg::Sha256),
        ];
        let mut compared = 0;
        for hashes in &hash_sets {
            let tmpl = template::Template::new(&issuer, hashes);
            for hex in &serials {
                let serial = Serial::from_hex(hex).unwrap();
                let serial_der = template::SerialDer::new(&serial).unwrap();
                for status in &statuses {
                    for (this, next, produced) in times {
                        let gt = |t| generalized_time(t, "t").unwrap();
                        let reference = response_data(
                            &issuer,
                            hashes,
                            &serial,
                            *status,
                            &gt(this),
                            &gt(next),
                            &gt(produced),
                        )
                        .unwrap()
                        .to_der()
                        .unwrap();
                        let tb = |t| template::time_bytes(t, "t").unwrap();
                        let written = tmpl
                            .response_data(
                                &serial_der,
                                *status,
                                &tb(this),
                                &tb(next),
                                &tb(produced),
                            )
                            .unwrap();
                        assert_eq!(written, reference, "{hashes:?} {hex} {status:?} {this}");
                        compared += 1;
                    }
                }
            }
        }
        assert_eq!(compared, 3 * serials.len() * statuses.len() * times.len());

        // The whole OCSPResponse around a short and a long ResponseData.
        let rsa_sha256: &[u8] = &[
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05,
            0x00,
        ];
        let tmpl = template::Template::new(&issuer, &CertIdHashes::default());
        let tb = |t| template::time_bytes(t, "t").unwrap();
        let long = tmpl
            .response_data(
                &template::SerialDer::new(&Serial::from_hex(&"ff".repeat(20)).unwrap()).unwrap(),
                statuses[5],
                &tb(10),
                &tb(20),
                &tb(10),
            )
            .unwrap();
        assert!(long.len() > 256, "{}", long.len());
        for tbs in [&[0x30, 0x00][..], &long[..]] {
            for algorithm in [ECDSA_SHA256, rsa_sha256] {
                for sig_len in [0usize, 1, 70, 72, 127, 128, 255, 256, 512] {
                    let signature: Vec<u8> = (0..sig_len).map(|i| i as u8).collect();
                    let mut check = template::AlgorithmCheck::default();
                    check.check(algorithm).unwrap();
                    assert_eq!(
                        template::ocsp_response(tbs, algorithm, &signature),
                        ocsp_response(tbs, algorithm, &signature).unwrap(),
                        "tbs {} alg {algorithm:02x?} sig {sig_len}",
                        tbs.len()
                    );
                }
            }
        }
    }

    #[test]
    fn template_times_and_serials_refuse_what_der_refuses() {
        // Every day boundary of four years, and spot values across the range.
        let mut t = 1_700_000_000 - 2 * 365 * 86_400;
        while t < 1_700_000_000 + 2 * 365 * 86_400 {
            for s in [t, t + 1, t + 86_399] {
                assert_eq!(
                    template::time_bytes(s, "t").unwrap()[..],
                    generalized_time(s, "t").unwrap().to_der().unwrap()[2..],
                    "{s}"
                );
            }
            t += 86_400;
        }
        for bad in [-1, i64::MIN, 253_402_300_800, i64::MAX] {
            assert!(template::time_bytes(bad, "t").is_err(), "{bad}");
            assert!(generalized_time(bad, "t").is_err(), "{bad}");
        }
        assert!(template::SerialDer::new(&Serial::from_hex(&"01".repeat(21)).unwrap()).is_err());
        assert!(template::SerialDer::new(&Serial::from_hex(&"ff".repeat(20)).unwrap()).is_ok());
        // A bad algorithm from the gateway is refused; a good one is accepted again cheaply.
        let mut check = template::AlgorithmCheck::default();
        assert!(check.check(&[0x30, 0x03, 0x06, 0x01]).is_err());
        assert!(check.check(b"").is_err());
        assert!(check.check(ECDSA_SHA256).is_ok() && check.check(ECDSA_SHA256).is_ok());
        assert!(check.check(&ECDSA_SHA256[..5]).is_err());
    }

    #[test]
    fn cert_id_hashes_in_refuses_what_is_not_a_signed_response() {
        assert_eq!(cert_id_hashes_in(b"not der"), None);
        assert_eq!(
            cert_id_hashes_in(&status_only(OcspResponseStatus::Unauthorized)),
            None
        );
    }

    #[tokio::test]
    async fn bad_inputs_are_refused_before_signing() {
        let signer = FakeSigner::default();
        let issuer = issuer();
        let s = Serial::from_hex("01").unwrap();
        let bad_reason = [(
            s.clone(),
            CertStatus::Revoked {
                at: 1,
                reason: Some(7),
            },
        )];
        assert!(matches!(
            sign_responses(&signer, &issuer, &bad_reason, 10, 20, 10).await,
            Err(Error::Encoding { .. })
        ));
        let good = [(s, CertStatus::Good)];
        assert!(
            sign_responses(&signer, &issuer, &good, 20, 20, 20)
                .await
                .is_err()
        );
        assert!(
            sign_responses(&signer, &issuer, &good, -5, 20, 20)
                .await
                .is_err()
        );
        assert!(signer.seen.lock().unwrap().is_empty());
    }
}
