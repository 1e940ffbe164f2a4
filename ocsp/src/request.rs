//! Parsing `OCSPRequest`s from untrusted clients (RFC 6960 §4.1, profiled by RFC 5019 §2.1 and
//! RFC 9919).
//!
//! Every byte here comes from the network, so [`parse`] must never panic: it decodes with
//! x509-ocsp (der 0.7, strict DER), then checks the profile and returns either the one
//! certificate asked about or a [`RequestError`] that says which OCSP error status the client
//! gets ([`RequestError::status`]). The HTTP layer decides nothing about requests itself.
//!
//! What is deliberately ignored:
//! - the request signature: RFC 5019 §2.1.2, "Clients SHOULD NOT send signed OCSPRequests.
//!   Responders MAY ignore the signature on OCSPRequests." Our answers are public and
//!   pre-signed, so a signature would authorise nothing;
//! - the nonce and any other extension: pre-generated responses cannot echo a nonce, and
//!   RFC 5019 §4 ("Clients that opt to include a nonce in the request SHOULD NOT reject a
//!   corresponding OCSPResponse solely on the basis of the non-existent expected nonce") has
//!   clients fall back to time-based freshness.

use std::fmt;

use der07::Decode;
use der07::asn1::Null;
use der07::oid::ObjectIdentifier;
use x509_ocsp::OcspRequest;

use crate::issuers::HashAlg;
use crate::model::Serial;

/// id-sha1, RFC 3279 §2.2.1 / RFC 5019 §2.1.1.
const OID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
/// id-sha256, RFC 5754 §2 (the CertID hash RFC 9919 has new clients use).
const OID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");

/// The one certificate an RFC 5019 request asks about, as its CertID names it
/// (RFC 6960 §4.1.1):
///
/// ```text
/// CertID ::= SEQUENCE {
///     hashAlgorithm       AlgorithmIdentifier,
///     issuerNameHash      OCTET STRING, -- Hash of issuer's DN
///     issuerKeyHash       OCTET STRING, -- Hash of issuer's public key
///     serialNumber        CertificateSerialNumber }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertRequest {
    pub hash: HashAlg,
    pub issuer_name_hash: Vec<u8>,
    pub issuer_key_hash: Vec<u8>,
    /// The serial's magnitude (the INTEGER without its sign-padding zero byte).
    pub serial: Serial,
}

/// The OCSP error status a refused request is answered with (RFC 6960 §4.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `malformedRequest (1) -- Illegal confirmation request`.
    Malformed,
    /// `unauthorized (6) -- Request unauthorized`, which RFC 5019 §2.2.3 extends to "the server
    /// is not capable of responding authoritatively".
    Unauthorized,
}

/// Why a request was refused. The variants carry what an operator needs in a log line; the
/// client only ever sees [`RequestError::status`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// Not a DER `OCSPRequest` (truncated, trailing bytes, wrong tags, non-canonical
    /// encodings, a serial longer than 21 bytes…).
    Der(der07::Error),
    /// `requestList` is empty.
    NoCertificate,
    /// RFC 5019 §2.1.1: "OCSPRequests conforming to this profile MUST include only one Request
    /// in the OCSPRequest.RequestList structure." Holds how many there were.
    SeveralCertificates(usize),
    /// A CertID hash algorithm other than SHA-1 or SHA-256 (holds the OID, dotted).
    UnknownHash(String),
    /// SHA-1 / SHA-256 AlgorithmIdentifier parameters that are neither absent nor NULL.
    HashParameters,
    /// A hash whose length does not fit the algorithm (`field` is `issuerNameHash` or
    /// `issuerKeyHash`).
    HashLength {
        field: &'static str,
        expected: usize,
        got: usize,
    },
    /// RFC 5280 §4.1.2.2: "CAs MUST force the serialNumber to be a non-negative integer."
    NegativeSerial,
}

impl RequestError {
    /// The OCSP error status the client gets.
    ///
    /// - Anything that is not a well-formed single-certificate request is `malformedRequest`,
    ///   including hashes of the wrong length (as Boulder answered).
    /// - A well-formed request we cannot answer is `unauthorized`: a hash algorithm other
    ///   than SHA-1/SHA-256 (RFC 6960 lets a CertID use any hash, so the request is not
    ///   malformed; RFC 5019 §2.2.3 defines `unauthorized` as "the server is not capable of
    ///   responding authoritatively", and a client may retry with SHA-1 — Boulder's filter
    ///   answered `unauthorized` for hashes it did not serve too), and a negative serial,
    ///   which our CA never issues, so it is an unknown certificate like any other.
    pub fn status(&self) -> Refusal {
        match self {
            RequestError::UnknownHash(_) | RequestError::NegativeSerial => Refusal::Unauthorized,
            RequestError::Der(_)
            | RequestError::NoCertificate
            | RequestError::SeveralCertificates(_)
            | RequestError::HashParameters
            | RequestError::HashLength { .. } => Refusal::Malformed,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Der(e) => write!(f, "not a DER OCSPRequest: {e}"),
            RequestError::NoCertificate => f.write_str("requestList is empty"),
            RequestError::SeveralCertificates(n) => {
                write!(f, "requestList holds {n} certificates; RFC 5019 allows one")
            }
            RequestError::UnknownHash(oid) => {
                write!(f, "CertID hash algorithm {oid} is not served")
            }
            RequestError::HashParameters => {
                f.write_str("CertID hash algorithm parameters are not NULL")
            }
            RequestError::HashLength {
                field,
                expected,
                got,
            } => {
                write!(f, "{field} is {got} bytes; the algorithm gives {expected}")
            }
            RequestError::NegativeSerial => f.write_str("negative serial number"),
        }
    }
}

impl std::error::Error for RequestError {}

/// Parses one DER `OCSPRequest` (RFC 6960 §4.1.1) under the RFC 5019 profile:
///
/// ```text
/// OCSPRequest ::= SEQUENCE {
///     tbsRequest              TBSRequest,
///     optionalSignature   [0] EXPLICIT Signature OPTIONAL }
/// TBSRequest ::= SEQUENCE {
///     version             [0] EXPLICIT Version DEFAULT v1,
///     requestorName       [1] EXPLICIT GeneralName OPTIONAL,
///     requestList             SEQUENCE OF Request,
///     requestExtensions   [2] EXPLICIT Extensions OPTIONAL }
/// ```
///
/// The whole input must be the request: bytes after it are refused (`der` checks the reader
/// is empty), so two requests glued together cannot smuggle a second CertID past the checks.
pub fn parse(der: &[u8]) -> Result<CertRequest, RequestError> {
    let request = OcspRequest::from_der(der).map_err(RequestError::Der)?;
    let list = &request.tbs_request.request_list;
    let one = match list.as_slice() {
        [one] => one,
        [] => return Err(RequestError::NoCertificate),
        several => return Err(RequestError::SeveralCertificates(several.len())),
    };
    let cert_id = &one.req_cert;

    let (hash, len) = match cert_id.hash_algorithm.oid {
        OID_SHA1 => (HashAlg::Sha1, 20),
        OID_SHA256 => (HashAlg::Sha256, 32),
        other => return Err(RequestError::UnknownHash(other.to_string())),
    };
    // RFC 5754 §2 has SHA-2 parameters absent, RFC 3279 has SHA-1's NULL, and clients send
    // both for both (OpenSSL sends NULL). Anything else is not one of these algorithms.
    if let Some(params) = &cert_id.hash_algorithm.parameters
        && params.decode_as::<Null>().is_err()
    {
        return Err(RequestError::HashParameters);
    }

    let name_hash = cert_id.issuer_name_hash.as_bytes();
    let key_hash = cert_id.issuer_key_hash.as_bytes();
    for (field, got) in [
        ("issuerNameHash", name_hash.len()),
        ("issuerKeyHash", key_hash.len()),
    ] {
        if got != len {
            return Err(RequestError::HashLength {
                field,
                expected: len,
                got,
            });
        }
    }

    // `SerialNumber::as_bytes` is the INTEGER's two's-complement contents, canonical (der
    // refused redundant leading bytes). A set top bit is a negative number: refuse it rather
    // than read its bytes as a magnitude, or -1 (0xff) would name serial 255.
    let serial = cert_id.serial_number.as_bytes();
    if serial.first().is_some_and(|b| b & 0x80 != 0) {
        return Err(RequestError::NegativeSerial);
    }

    Ok(CertRequest {
        hash,
        issuer_name_hash: name_hash.to_vec(),
        issuer_key_hash: key_hash.to_vec(),
        serial: Serial::from_be_bytes(serial),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::issuers::Issuer;

    // Made with `openssl ocsp -issuer ca.pem -serial 0x1001 … -reqout` from a throwaway CA
    // (ca.pem, P-256); see tests/data/README.md.
    const CA: &[u8] = include_bytes!("../tests/data/ca.pem");
    const SHA1: &[u8] = include_bytes!("../tests/data/req-sha1.der");
    const SHA1_NONCE: &[u8] = include_bytes!("../tests/data/req-sha1-nonce.der");
    const SHA256: &[u8] = include_bytes!("../tests/data/req-sha256.der");
    const SHA256_NONCE: &[u8] = include_bytes!("../tests/data/req-sha256-nonce.der");
    const SHA512: &[u8] = include_bytes!("../tests/data/req-sha512.der");
    const SIGNED: &[u8] = include_bytes!("../tests/data/req-signed.der");
    const TWO: &[u8] = include_bytes!("../tests/data/req-two-certs.der");
    const LONG_SERIAL: &[u8] = include_bytes!("../tests/data/req-sha1-20-byte-serial.der");

    fn ca() -> Issuer {
        Issuer::new("test", "k", CA).unwrap()
    }

    #[test]
    fn sha1_and_sha256_name_the_issuer_and_serial() {
        let ca = ca();
        for (der, alg) in [
            (SHA1, HashAlg::Sha1),
            (SHA1_NONCE, HashAlg::Sha1),
            (SHA256, HashAlg::Sha256),
            (SHA256_NONCE, HashAlg::Sha256),
            (SIGNED, HashAlg::Sha1),
        ] {
            let req = parse(der).unwrap();
            assert_eq!(req.hash, alg);
            assert_eq!(req.issuer_name_hash, ca.name_hash.get(alg));
            assert_eq!(req.issuer_key_hash, ca.key_hash.get(alg));
            assert_eq!(req.serial.to_hex(), "1001");
        }
    }

    #[test]
    fn serial_with_top_bit_set_is_read_as_its_magnitude() {
        let req = parse(LONG_SERIAL).unwrap();
        assert_eq!(
            req.serial.to_hex(),
            "8ba1c3d4e5f60718293a4b5c6d7e8f9012345678"
        );
    }

    #[test]
    fn several_certificates_are_malformed() {
        let err = parse(TWO).unwrap_err();
        assert_eq!(err, RequestError::SeveralCertificates(2));
        assert_eq!(err.status(), Refusal::Malformed);
    }

    #[test]
    fn other_hashes_are_unauthorized() {
        let err = parse(SHA512).unwrap_err();
        assert_eq!(
            err,
            RequestError::UnknownHash("2.16.840.1.101.3.4.2.3".into())
        );
        assert_eq!(err.status(), Refusal::Unauthorized);
    }

    #[test]
    fn truncated_and_trailing_bytes_are_malformed() {
        for cut in 0..SHA1.len() {
            let err = parse(&SHA1[..cut]).unwrap_err();
            assert_eq!(err.status(), Refusal::Malformed, "cut at {cut}");
        }
        let mut long = SHA1.to_vec();
        long.push(0);
        assert!(matches!(parse(&long), Err(RequestError::Der(_))));
        let mut twice = SHA1.to_vec();
        twice.extend_from_slice(SHA1);
        assert!(matches!(parse(&twice), Err(RequestError::Der(_))));
    }

    /// Offset of `needle` in `hay` (test fixtures are tiny).
    fn find(hay: &[u8], needle: &[u8]) -> usize {
        hay.windows(needle.len()).position(|w| w == needle).unwrap()
    }

    #[test]
    fn hash_of_the_wrong_length_is_malformed() {
        // Shorten issuerNameHash from 20 to 19 bytes, fixing every enclosing length.
        let ca = ca();
        let at = find(SHA1, &ca.name_hash.sha1);
        let mut der = SHA1.to_vec();
        assert_eq!(der[at - 1], 20);
        der[at - 1] = 19;
        der.remove(at);
        for len_at in [1, 3, 5, 7, 9] {
            der[len_at] -= 1; // the five SEQUENCEs around the CertID, all short-form lengths
        }
        let err = parse(&der).unwrap_err();
        assert_eq!(
            err,
            RequestError::HashLength {
                field: "issuerNameHash",
                expected: 20,
                got: 19
            }
        );
        assert_eq!(err.status(), Refusal::Malformed);
    }

    #[test]
    fn negative_serial_is_unauthorized() {
        // INTEGER 0x1001 -> 0x9001 (two bytes, top bit set: negative).
        let at = find(SHA1, &[0x02, 0x02, 0x10, 0x01]);
        let mut der = SHA1.to_vec();
        der[at + 2] = 0x90;
        let err = parse(&der).unwrap_err();
        assert_eq!(err, RequestError::NegativeSerial);
        assert_eq!(err.status(), Refusal::Unauthorized);
    }

    #[test]
    fn sha1_without_null_parameters_is_accepted() {
        // AlgorithmIdentifier { sha1, NULL } -> { sha1 }: drop `05 00`, fix lengths.
        let at = find(
            SHA1,
            &[0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00],
        );
        let mut der = SHA1.to_vec();
        der.drain(at + 7..at + 9);
        der[at - 1] -= 2;
        for len_at in [1, 3, 5, 7, 9] {
            der[len_at] -= 2;
        }
        assert_eq!(parse(&der).unwrap().serial.to_hex(), "1001");

        // …but parameters that are not NULL are not SHA-1.
        let mut der = SHA1.to_vec();
        der[at + 7] = 0x04; // OCTET STRING, empty
        assert_eq!(parse(&der).unwrap_err(), RequestError::HashParameters);
    }

    #[test]
    fn garbage_never_panics() {
        for input in [
            &[][..],
            &[0x30],
            &[0x30, 0x80],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0xff; 64],
        ] {
            assert_eq!(parse(input).unwrap_err().status(), Refusal::Malformed);
        }
    }
}
