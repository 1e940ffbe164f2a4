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

use crate::hash_alg::HashAlg;
use crate::record::Serial;

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
    match parse_common(der) {
        Some(request) => Ok(request),
        None => parse_decoded(der),
    }
}

/// [`parse`] through x509-ocsp's decoder: every request the walk ([`parse_common`]) does not
/// take, with the reason it is refused.
fn parse_decoded(der: &[u8]) -> Result<CertRequest, RequestError> {
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

/// One strict-DER TLV at the start of `input` with tag `tag`: (content, rest). `None` for
/// another tag, a length in anything but its shortest form (DER, X.690 §10.1), or one past
/// the input.
fn tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    if t != tag {
        return None;
    }
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81 => {
            let (&b, rest) = rest.split_first()?;
            (b >= 0x80).then_some((usize::from(b), rest))?
        }
        0x82 => {
            let len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
            (len >= 0x100).then_some((len, &rest[2..]))?
        }
        _ => return None,
    };
    let content = rest.get(..len)?;
    Some((content, &rest[len..]))
}

/// The request almost every client sends, read by walking its bytes: one Request, a SHA-1 or
/// SHA-256 CertID with hashes of the right length and a canonical non-negative serial of at
/// most 21 octets, and nothing optional (no version, requestorName, extensions, nonce or
/// signature). Anything else is `None` and goes through the full decode, which then accepts
/// or refuses it with its reason; whatever this accepts, the full decode accepts with the same
/// answer (the unit tests check both on every single-byte change and truncation of real
/// requests). It saves the decode's allocations on the responder's hot path.
fn parse_common(der: &[u8]) -> Option<CertRequest> {
    const SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
    const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
    let only = |input, tag| match tlv(input, tag) {
        Some((content, [])) => Some(content),
        _ => None,
    };
    let request = only(der, 0x30)?;
    let tbs = only(request, 0x30)?;
    let list = only(tbs, 0x30)?;
    let one = only(list, 0x30)?;
    let cert_id = only(one, 0x30)?;
    let (algorithm, rest) = tlv(cert_id, 0x30)?;
    let (name_hash, rest) = tlv(rest, 0x04)?;
    let (key_hash, rest) = tlv(rest, 0x04)?;
    let serial = only(rest, 0x02)?;
    let (oid, params) = tlv(algorithm, 0x06)?;
    if !matches!(params, [] | [0x05, 0x00]) {
        return None;
    }
    let (hash, len) = match oid {
        SHA1 => (HashAlg::Sha1, 20),
        SHA256 => (HashAlg::Sha256, 32),
        _ => return None,
    };
    if name_hash.len() != len || key_hash.len() != len {
        return None;
    }
    // Canonical (no redundant leading 0x00), non-negative, within x509-cert's 21 octets.
    match serial {
        [] => return None,
        [first, ..] if first & 0x80 != 0 => return None,
        [0, second, ..] if second & 0x80 == 0 => return None,
        _ if serial.len() > 21 => return None,
        _ => {}
    }
    Some(CertRequest {
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

    /// The walk (`parse_common`) never accepts what the full decode refuses, and gives the same
    /// answer when both accept: over the fixtures, every truncation, every single-byte change
    /// to a set of values at every position, and serials of every length class.
    #[test]
    fn the_walk_agrees_with_the_full_decode() {
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for fixture in [
            SHA1,
            SHA256,
            SHA1_NONCE,
            SHA256_NONCE,
            SHA512,
            SIGNED,
            TWO,
            LONG_SERIAL,
        ] {
            inputs.push(fixture.to_vec());
            for cut in 0..fixture.len() {
                inputs.push(fixture[..cut].to_vec());
            }
            for at in 0..fixture.len() {
                for v in [
                    0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x30, 0x7f, 0x80, 0x81, 0x82, 0xff,
                ] {
                    let mut d = fixture.to_vec();
                    d[at] = v;
                    inputs.push(d);
                    let mut d = fixture.to_vec();
                    d[at] = d[at].wrapping_add(1);
                    inputs.push(d);
                }
            }
        }
        let mut walked = 0;
        for input in &inputs {
            if let Some(fast) = parse_common(input) {
                walked += 1;
                assert_eq!(parse_decoded(input), Ok(fast), "{}", hex::encode(input));
            }
            // And `parse` as a whole answers as the full decode does.
            assert_eq!(parse(input), parse_decoded(input), "{}", hex::encode(input));
        }
        assert!(walked > 100, "the walk took only {walked} inputs");
        // The plain requests are the walk's.
        assert!(parse_common(SHA1).is_some() && parse_common(SHA256).is_some());
        assert!(parse_common(LONG_SERIAL).is_some());
        // Nonces, signatures, several certificates and other hashes are the decode's.
        for other in [SHA1_NONCE, SHA256_NONCE, SIGNED, TWO, SHA512] {
            assert!(parse_common(other).is_none());
        }
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
