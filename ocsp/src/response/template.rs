//! The pre-signer's DER writer: `ResponseData` and `OCSPResponse` bytes written straight from
//! precomputed pieces instead of filling x509-ocsp's structs and encoding them.
//!
//! Everything in a pre-signed response but the serial, the status and three times is the same
//! for every response of an issuer and CertID hash: the responderID, and each CertID's
//! `hashAlgorithm`, `issuerNameHash` and `issuerKeyHash`. A [`Template`] holds those as DER once
//! (per call of [`crate::signing::sign_responses_with`], i.e. per gateway batch); per response only the
//! serial's INTEGER, the CertStatus and the GeneralizedTimes are written, and the lengths are
//! computed, not measured by a second encoding pass. The encoding is the one
//! [`super::response_data`] gives through der 0.7: the unit tests compare the two byte for byte
//! over serials of every length class, good and revoked statuses with and without a reason,
//! and one or two CertID hashes.
//!
//! ```text
//! ResponseData    30 L  a2 16 04 14 <SHA-1 key hash>          responderID byKey (template)
//!                       18 0f <producedAt>
//!                       30 L  SingleResponse*
//! SingleResponse  30 L  30 L <hashAlg, nameHash, keyHash (template)> 02 L <serial>
//!                       80 00 | a1 L (18 0f <revocationTime> [a0 03 0a 01 <reason>])
//!                       18 0f <thisUpdate>   a0 11 18 0f <nextUpdate>
//! ```

use der07::Decode;
use spki07::AlgorithmIdentifierOwned;

use super::{crl_reason, encoding, generalized_time};
use crate::config::CertIdHashes;
use crate::error::Error;
use crate::hash_alg::HashAlg;
use crate::issuers::Issuer;
use crate::record::{CertStatus, Serial};

/// `AlgorithmIdentifier` of id-sha1 with NULL parameters (RFC 3279 §2.2.1), as `cert_id` writes
/// it.
const SHA1_ALG: &[u8] = &[
    0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00,
];
/// `AlgorithmIdentifier` of id-sha256 with NULL parameters (RFC 5754 §2.2).
const SHA256_ALG: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
];
/// `responseStatus successful` (ENUMERATED 0).
const SUCCESSFUL: &[u8] = &[0x0a, 0x01, 0x00];
/// `responseType id-pkix-ocsp-basic` (1.3.6.1.5.5.7.48.1.1).
const ID_PKIX_OCSP_BASIC: &[u8] = &[
    0x06, 0x09, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01,
];

/// Unix seconds of 9999-12-31T23:59:59Z, the last second a four-digit GeneralizedTime holds.
const MAX_TIME: i64 = 253_402_300_799;

/// Length of a DER header (tag and length) for `len` bytes of content.
fn header_len(len: usize) -> usize {
    match len {
        0..=0x7f => 2,
        0x80..=0xff => 3,
        0x100..=0xffff => 4,
        _ => 5,
    }
}

/// Length of a whole TLV with `len` bytes of content.
fn tlv_len(len: usize) -> usize {
    header_len(len) + len
}

/// Appends a DER tag and definite length.
fn push_header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    match len {
        0..=0x7f => out.push(len as u8),
        0x80..=0xff => out.extend_from_slice(&[0x81, len as u8]),
        0x100..=0xffff => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
        _ => out.extend_from_slice(&[0x83, (len >> 16) as u8, (len >> 8) as u8, len as u8]),
    }
}

/// A GeneralizedTime's 15 content bytes, `YYYYMMDDHHMMSSZ` (RFC 5280 §4.1.2.5.2: UTC, whole
/// seconds), for Unix seconds from 1970 through 9999; other times are the error
/// [`generalized_time`] gives for them.
pub(crate) fn time_bytes(unix_secs: i64, what: &str) -> Result<[u8; 15], Error> {
    if !(0..=MAX_TIME).contains(&unix_secs) {
        generalized_time(unix_secs, what)?;
        return Err(encoding(what, format!("{unix_secs} is after 9999")));
    }
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = [0u8; 15];
    let mut put = |at: usize, value: i64, digits: usize| {
        let mut v = value;
        for i in (0..digits).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(4, month, 2);
    put(6, day, 2);
    put(8, secs / 3_600, 2);
    put(10, secs / 60 % 60, 2);
    put(12, secs % 60, 2);
    out[14] = b'Z';
    Ok(out)
}

/// A serial's DER INTEGER (RFC 6960 `CertificateSerialNumber`), tag and length included, in a
/// buffer on the stack: positive (a 0x00 before a first byte with its high bit set), zero as
/// `02 01 00`, at most 20 octets of magnitude (RFC 5280 §4.1.2.2) — what
/// [`super::serial_number`] accepts and encodes.
pub(crate) struct SerialDer {
    buf: [u8; 23],
    len: usize,
}

impl SerialDer {
    pub(crate) fn new(serial: &Serial) -> Result<Self, Error> {
        let bytes = serial.as_bytes();
        let mut buf = [0u8; 23];
        if bytes.is_empty() {
            buf[..3].copy_from_slice(&[0x02, 0x01, 0x00]);
            return Ok(Self { buf, len: 3 });
        }
        if bytes.len() > 20 {
            // The same refusal, worded the same way.
            super::serial_number(serial)?;
            return Err(encoding("serial number", format!("{serial}: too long")));
        }
        let pad = usize::from(bytes[0] & 0x80 != 0);
        let content = bytes.len() + pad;
        buf[0] = 0x02;
        buf[1] = content as u8;
        buf[2 + pad..2 + content].copy_from_slice(bytes);
        Ok(Self {
            buf,
            len: 2 + content,
        })
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// A CertStatus (RFC 6960 §4.2.1), encoded: `good [0] IMPLICIT NULL` or `revoked [1] IMPLICIT
/// RevokedInfo` with the optional `[0] EXPLICIT CRLReason`.
struct StatusDer {
    buf: [u8; 24],
    len: usize,
}

impl StatusDer {
    fn new(status: CertStatus) -> Result<Self, Error> {
        let mut buf = [0u8; 24];
        match status {
            CertStatus::Good => {
                buf[..2].copy_from_slice(&[0x80, 0x00]);
                Ok(Self { buf, len: 2 })
            }
            CertStatus::Revoked { at, reason } => {
                let time = time_bytes(at, "revocationTime")?;
                let content = 17 + if reason.is_some() { 5 } else { 0 };
                buf[0] = 0xa1;
                buf[1] = content as u8;
                buf[2] = 0x18;
                buf[3] = 15;
                buf[4..19].copy_from_slice(&time);
                if let Some(code) = reason {
                    crl_reason(code)?;
                    buf[19..24].copy_from_slice(&[0xa0, 0x03, 0x0a, 0x01, code]);
                }
                Ok(Self {
                    buf,
                    len: 2 + content,
                })
            }
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// An issuer's constant parts of a `ResponseData`, for one set of CertID hashes.
#[derive(Clone, Debug)]
pub(crate) struct Template {
    /// `responderID byKey`: `a2 16 04 14` and the SHA-1 key hash.
    responder_id: Vec<u8>,
    /// Per CertID hash, in order: the CertID's content before the serial (hashAlgorithm,
    /// issuerNameHash, issuerKeyHash).
    cert_id_prefixes: Vec<Vec<u8>>,
}

impl Template {
    pub(crate) fn new(issuer: &Issuer, hashes: &CertIdHashes) -> Self {
        let key_hash = &issuer.key_hash.sha1;
        let mut responder_id = Vec::with_capacity(4 + key_hash.len());
        push_header(&mut responder_id, 0xa2, tlv_len(key_hash.len()));
        push_header(&mut responder_id, 0x04, key_hash.len());
        responder_id.extend_from_slice(key_hash);
        let cert_id_prefixes = hashes
            .iter()
            .map(|alg| {
                let (oid, name, key) = match alg {
                    HashAlg::Sha1 => (
                        SHA1_ALG,
                        issuer.name_hash.get(alg),
                        issuer.key_hash.get(alg),
                    ),
                    HashAlg::Sha256 => (
                        SHA256_ALG,
                        issuer.name_hash.get(alg),
                        issuer.key_hash.get(alg),
                    ),
                };
                let mut p =
                    Vec::with_capacity(oid.len() + tlv_len(name.len()) + tlv_len(key.len()));
                p.extend_from_slice(oid);
                push_header(&mut p, 0x04, name.len());
                p.extend_from_slice(name);
                push_header(&mut p, 0x04, key.len());
                p.extend_from_slice(key);
                p
            })
            .collect();
        Self {
            responder_id,
            cert_id_prefixes,
        }
    }

    /// The DER `ResponseData` for one certificate: one SingleResponse per hash of the template.
    /// Times are the 15 bytes of [`time_bytes`].
    pub(crate) fn response_data(
        &self,
        serial: &SerialDer,
        status: CertStatus,
        this_update: &[u8; 15],
        next_update: &[u8; 15],
        produced_at: &[u8; 15],
    ) -> Result<Vec<u8>, Error> {
        let status = StatusDer::new(status)?;
        let serial = serial.as_bytes();
        let status = status.as_bytes();
        // thisUpdate (17) and nextUpdate [0] EXPLICIT (19).
        const TIMES: usize = 17 + 19;
        let single_lens: Vec<(usize, usize)> = self
            .cert_id_prefixes
            .iter()
            .map(|prefix| {
                let cert_id = prefix.len() + serial.len();
                (cert_id, tlv_len(cert_id) + status.len() + TIMES)
            })
            .collect();
        let responses: usize = single_lens.iter().map(|(_, s)| tlv_len(*s)).sum();
        let content = self.responder_id.len() + 17 + tlv_len(responses);
        let mut out = Vec::with_capacity(tlv_len(content));
        push_header(&mut out, 0x30, content);
        out.extend_from_slice(&self.responder_id);
        out.extend_from_slice(&[0x18, 15]);
        out.extend_from_slice(produced_at);
        push_header(&mut out, 0x30, responses);
        for (prefix, (cert_id, single)) in self.cert_id_prefixes.iter().zip(single_lens) {
            push_header(&mut out, 0x30, single);
            push_header(&mut out, 0x30, cert_id);
            out.extend_from_slice(prefix);
            out.extend_from_slice(serial);
            out.extend_from_slice(status);
            out.extend_from_slice(&[0x18, 15]);
            out.extend_from_slice(this_update);
            out.extend_from_slice(&[0xa0, 17, 0x18, 15]);
            out.extend_from_slice(next_update);
        }
        debug_assert_eq!(out.len(), out.capacity());
        Ok(out)
    }
}

/// Checks that gateway answers' `AlgorithmIdentifier`s are DER AlgorithmIdentifiers, decoding
/// each distinct one once (a batch's answers all name the same algorithm).
#[derive(Default)]
pub(crate) struct AlgorithmCheck {
    last_ok: Vec<u8>,
}

impl AlgorithmCheck {
    pub(crate) fn check(&mut self, algorithm: &[u8]) -> Result<(), Error> {
        if !self.last_ok.is_empty() && self.last_ok == algorithm {
            return Ok(());
        }
        AlgorithmIdentifierOwned::from_der(algorithm)
            .map_err(|e| encoding("signatureAlgorithm from the gateway", e))?;
        self.last_ok.clear();
        self.last_ok.extend_from_slice(algorithm);
        Ok(())
    }
}

/// A successful `OCSPResponse` (RFC 6960 §4.2.1) carrying the BasicOCSPResponse of `tbs` (the
/// DER ResponseData that was signed), `algorithm` (a checked DER AlgorithmIdentifier) and
/// `signature` (a BIT STRING with no unused bits), no `certs`; written in one allocation.
pub(crate) fn ocsp_response(tbs: &[u8], algorithm: &[u8], signature: &[u8]) -> Vec<u8> {
    let basic = tbs.len() + algorithm.len() + tlv_len(signature.len() + 1);
    let response_bytes = ID_PKIX_OCSP_BASIC.len() + tlv_len(tlv_len(basic));
    let content = SUCCESSFUL.len() + tlv_len(tlv_len(response_bytes));
    let mut out = Vec::with_capacity(tlv_len(content));
    push_header(&mut out, 0x30, content);
    out.extend_from_slice(SUCCESSFUL);
    push_header(&mut out, 0xa0, tlv_len(response_bytes));
    push_header(&mut out, 0x30, response_bytes);
    out.extend_from_slice(ID_PKIX_OCSP_BASIC);
    push_header(&mut out, 0x04, tlv_len(basic));
    push_header(&mut out, 0x30, basic);
    out.extend_from_slice(tbs);
    out.extend_from_slice(algorithm);
    push_header(&mut out, 0x03, signature.len() + 1);
    out.push(0);
    out.extend_from_slice(signature);
    debug_assert_eq!(out.len(), out.capacity());
    out
}
