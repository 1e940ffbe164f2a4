//! What a key may sign: the payload a call declares, and the check that its items are that.
//!
//! A call declares its payload in the `hsmgate-payload` metadata (see
//! `hsmgate_signer_api::PAYLOAD_HEADER`); the declaration is the operation its grants are
//! checked against. For keys that check payloads — every issuing key by default (one some
//! client may sign certificates or OCSP responses with; `hsm_config::Config::payload_policy`) —
//! the gateway also parses each item's message: a `tbs-certificate` must be a DER `TBSCertificate` (RFC 5280 §4.1) and an
//! `ocsp-response-data` a DER `ResponseData` (RFC 6960 §4.2.1), with nothing after it. So a
//! client granted only `sign-ocsp` on the intermediate key cannot get a certificate signed
//! with it: a TBSCertificate does not parse as a ResponseData. Digests cannot be checked and
//! are refused for such keys.
//!
//! A `tbs-cert-list` (operation `sign-crl`) must be a DER `TBSCertList` (RFC 5280 §5.1). CRL
//! shards are large — a million entries is ~40 MB — so that check streams: the list's fields
//! are decoded and re-encoded one at a time ([`check_tbs_cert_list`]), and what it holds beyond
//! the message is one entry, never a million decoded entries (~250 MB as x509-cert values).
//! It accepts exactly what `x509_cert::crl::TbsCertList::from_der` accepts and re-encodes to
//! the same bytes (the fuzz target checks that equivalence).

use hsm_config::Operation;
use hsmgate_signer_api::{
    PAYLOAD_OCSP_RESPONSE_DATA, PAYLOAD_TBS_CERT_LIST, PAYLOAD_TBS_CERTIFICATE,
};

use crate::error::Error;

/// The operation a call declares by its metadata value (`None`: absent).
pub fn declared(value: Option<&str>) -> Result<Operation, Error> {
    match value {
        None => Ok(Operation::SignRaw),
        Some(PAYLOAD_TBS_CERTIFICATE) => Ok(Operation::SignCertificate),
        Some(PAYLOAD_OCSP_RESPONSE_DATA) => Ok(Operation::SignOcsp),
        Some(PAYLOAD_TBS_CERT_LIST) => Ok(Operation::SignCrl),
        Some(other) => Err(Error::InvalidArgument(format!(
            "hsmgate-payload: unknown payload `{}`; expected `{PAYLOAD_TBS_CERTIFICATE}`, `{PAYLOAD_OCSP_RESPONSE_DATA}` or `{PAYLOAD_TBS_CERT_LIST}`",
            other.chars().take(64).collect::<String>()
        ))),
    }
}

/// Checks that `message` is what `op` says. `Err` carries the reason, for the caller.
pub fn check(op: Operation, message: &[u8]) -> Result<(), String> {
    match op {
        Operation::SignRaw => Err("a raw payload cannot be checked".into()),
        // Parsed, then re-encoded: the decoders accept some non-DER input (der 0.7 skips unknown
        // lower-numbered context-specific fields, so a ResponseData may carry any `[0]` blob
        // before its extensions), and what the HSM signs is the caller's bytes, not ours.
        Operation::SignCertificate => {
            use der::{Decode, Encode};
            let tbs = x509_cert::TbsCertificate::from_der(message)
                .map_err(|e| format!("does not parse as a TBSCertificate: {e}"))?;
            match tbs.to_der() {
                Ok(der) if der == message => Ok(()),
                _ => Err("is not the DER encoding of a TBSCertificate".into()),
            }
        }
        Operation::SignOcsp => {
            use der07::{Decode, Encode};
            let rd = x509_ocsp::ResponseData::from_der(message)
                .map_err(|e| format!("does not parse as an OCSP ResponseData: {e}"))?;
            match rd.to_der() {
                Ok(der) if der == message => Ok(()),
                _ => Err("is not the DER encoding of an OCSP ResponseData".into()),
            }
        }
        Operation::SignCrl => check_tbs_cert_list(message),
    }
}

/// Why a streamed `TBSCertList` check failed: the decoder's error, or a field that decoded but
/// is not its own DER.
enum Refusal {
    Der(der::Error),
    NotDer(&'static str),
}

impl From<der::Error> for Refusal {
    fn from(e: der::Error) -> Self {
        Refusal::Der(e)
    }
}

/// Decodes one field from its TLV bytes and checks it re-encodes to them.
fn exact<'a, T>(tlv: &'a [u8], what: &'static str) -> Result<T, Refusal>
where
    T: der::Decode<'a, Error = der::Error> + der::Encode,
{
    let value = T::from_der(tlv)?;
    if value.to_der()? != tlv {
        return Err(Refusal::NotDer(what));
    }
    Ok(value)
}

/// RFC 5280 §5.1, field by field, without holding the entries:
///
/// ```text
/// TBSCertList  ::=  SEQUENCE  {
///      version                 Version OPTIONAL, -- if present, MUST be v2
///      signature               AlgorithmIdentifier,
///      issuer                  Name,
///      thisUpdate              Time,
///      nextUpdate              Time OPTIONAL,
///      revokedCertificates     SEQUENCE OF SEQUENCE  { ... }  OPTIONAL,
///      crlExtensions           [0]  EXPLICIT Extensions OPTIONAL }
/// ```
///
/// As x509-cert's `TbsCertList` (whose `version` is not optional), the version must be there.
/// Each field is decoded from its own TLV and must re-encode to it; the SEQUENCE headers are
/// DER because the decoder refuses non-minimal lengths and indefinite forms.
pub fn check_tbs_cert_list(message: &[u8]) -> Result<(), String> {
    use der::asn1::ContextSpecific;
    use der::{Reader, SliceReader, Tag, TagNumber};
    use x509_cert::crl::RevokedCert;
    use x509_cert::ext::Extensions;
    use x509_cert::{Version, name::Name, spki::AlgorithmIdentifierOwned, time::Time};

    let walk = || -> Result<(), Refusal> {
        let mut outer = SliceReader::new(message)?;
        outer.sequence(|r: &mut SliceReader<'_>| -> Result<(), Refusal> {
            exact::<Version>(r.tlv_bytes()?, "version")?;
            exact::<AlgorithmIdentifierOwned>(r.tlv_bytes()?, "signature")?;
            exact::<Name>(r.tlv_bytes()?, "issuer")?;
            exact::<Time>(r.tlv_bytes()?, "thisUpdate")?;
            if !r.is_finished() && matches!(Tag::peek(r)?, Tag::UtcTime | Tag::GeneralizedTime) {
                exact::<Time>(r.tlv_bytes()?, "nextUpdate")?;
            }
            if !r.is_finished() && Tag::peek(r)? == Tag::Sequence {
                let list = r.tlv_bytes()?;
                let mut entries = SliceReader::new(list)?;
                entries.sequence(|e: &mut SliceReader<'_>| -> Result<(), Refusal> {
                    while !e.is_finished() {
                        exact::<RevokedCert>(e.tlv_bytes()?, "revokedCertificates entry")?;
                    }
                    Ok(())
                })?;
                entries.finish()?;
            }
            if !r.is_finished() {
                let ext = exact::<ContextSpecific<Extensions>>(r.tlv_bytes()?, "crlExtensions")?;
                if ext.tag_number != TagNumber(0) || ext.tag_mode != der::TagMode::Explicit {
                    return Err(Refusal::NotDer("crlExtensions"));
                }
            }
            Ok(())
        })?;
        outer.finish()?;
        Ok(())
    };
    match walk() {
        Ok(()) => Ok(()),
        Err(Refusal::Der(e)) => Err(format!("does not parse as a TBSCertList: {e}")),
        Err(Refusal::NotDer(field)) => Err(format!(
            "is not the DER encoding of a TBSCertList ({field})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_map_to_operations() {
        assert_eq!(declared(None).ok(), Some(Operation::SignRaw));
        assert_eq!(
            declared(Some("tbs-certificate")).ok(),
            Some(Operation::SignCertificate)
        );
        assert_eq!(
            declared(Some("ocsp-response-data")).ok(),
            Some(Operation::SignOcsp)
        );
        assert_eq!(
            declared(Some("tbs-cert-list")).ok(),
            Some(Operation::SignCrl)
        );
        assert!(declared(Some("crl")).is_err());
    }

    /// Found by `fuzz/` (payload_check): an OCSP ResponseData whose `[1]` responseExtensions
    /// tag was changed to `[0]` parsed (der 0.7 skips the unknown field, extensions and all)
    /// although it is no DER ResponseData; any `[0]` blob could ride along to the HSM.
    #[test]
    fn a_response_data_with_a_skipped_field_is_refused() {
        let good = include_bytes!(
            "../fuzz/corpus/payload_check/seed-ocsp-response-data-revoked-bykey-nonce.der"
        );
        assert_eq!(check(Operation::SignOcsp, good), Ok(()));
        // responseExtensions at offset 189: [1] (0xa1) becomes [0].
        assert_eq!(good[189], 0xa1);
        let mut smuggled = good.to_vec();
        smuggled[189] = 0xa0;
        let err = check(Operation::SignOcsp, &smuggled).expect_err("not DER ResponseData");
        assert!(err.contains("not the DER encoding"), "{err}");
        // Not a TBSCertificate either.
        assert!(check(Operation::SignCertificate, &smuggled).is_err());
        let tbs = include_bytes!("../fuzz/corpus/payload_check/seed-tbs-certificate-p256-leaf.der");
        assert_eq!(check(Operation::SignCertificate, tbs), Ok(()));
        assert!(check(Operation::SignOcsp, tbs).is_err());
    }

    const TBS_CERT_LIST: &[u8] =
        include_bytes!("../fuzz/corpus/payload_check/seed-tbs-cert-list-p256-two-entries-idp.der");

    /// The openssl-made seed (two entries, one with a reason; AKI, cRLNumber and a critical
    /// IDP) passes the streamed check and agrees with x509-cert's whole-list decoder; the
    /// other payloads' seeds are no TBSCertList and it is neither of theirs.
    #[test]
    fn a_tbs_cert_list_is_a_crl_and_nothing_else() {
        use der::{Decode, Encode};
        assert_eq!(check(Operation::SignCrl, TBS_CERT_LIST), Ok(()));
        let whole =
            x509_cert::crl::TbsCertList::<x509_cert::certificate::Rfc5280>::from_der(TBS_CERT_LIST)
                .expect("x509-cert decodes it");
        assert_eq!(whole.to_der().expect("encodes"), TBS_CERT_LIST);
        assert!(check(Operation::SignCertificate, TBS_CERT_LIST).is_err());
        assert!(check(Operation::SignOcsp, TBS_CERT_LIST).is_err());
        let tbs = include_bytes!("../fuzz/corpus/payload_check/seed-tbs-certificate-p256-leaf.der");
        let rd =
            include_bytes!("../fuzz/corpus/payload_check/seed-ocsp-response-data-good-byname.der");
        for other in [&tbs[..], &rd[..]] {
            let err = check(Operation::SignCrl, other).expect_err("not a TBSCertList");
            assert!(err.contains("TBSCertList"), "{err}");
        }
    }

    /// Refusals that a whole-list decoder would also make, found one field at a time: bytes
    /// after the list, a truncated entry, a BER (non-minimal) length, an entry that is not
    /// its own DER (a BOOLEAN `critical` of 0x01 rather than 0xff), an unknown trailing field.
    #[test]
    fn a_tbs_cert_list_that_is_not_der_is_refused() {
        let mut trailing = TBS_CERT_LIST.to_vec();
        trailing.push(0);
        assert!(check(Operation::SignCrl, &trailing).is_err());
        assert!(check(Operation::SignCrl, &TBS_CERT_LIST[..120]).is_err());
        // The outer length (0x81 0xf8) in a needless long form: 0x82 0x00 0xf8.
        assert_eq!(&TBS_CERT_LIST[..3], &[0x30, 0x81, 0xf8]);
        let mut ber = vec![0x30, 0x82, 0x00, 0xf8];
        ber.extend_from_slice(&TBS_CERT_LIST[3..]);
        assert!(check(Operation::SignCrl, &ber).is_err());
        // The IDP's critical flag (offset 213 in the seed: 01 01 ff) as BER TRUE 0x01.
        let idp_critical = TBS_CERT_LIST
            .windows(3)
            .rposition(|w| w == [0x01, 0x01, 0xff])
            .expect("a critical extension");
        let mut soft_true = TBS_CERT_LIST.to_vec();
        soft_true[idp_critical + 2] = 0x01;
        assert!(check(Operation::SignCrl, &soft_true).is_err());
        // A [1] field after crlExtensions: the list ends there.
        let mut extra = TBS_CERT_LIST.to_vec();
        extra.extend_from_slice(&[0xa1, 0x00]);
        extra[2] += 2;
        let err = check(Operation::SignCrl, &extra).expect_err("unknown field");
        assert!(err.contains("TBSCertList"), "{err}");
    }

    #[test]
    fn garbage_is_neither() {
        assert!(check(Operation::SignCrl, b"\x30\x00").is_err());
        assert!(check(Operation::SignCrl, b"").is_err());
        assert!(check(Operation::SignCertificate, b"\x30\x03\x02\x01\x01").is_err());
        assert!(check(Operation::SignOcsp, b"not der").is_err());
        assert!(check(Operation::SignRaw, b"").is_err());
    }
}
