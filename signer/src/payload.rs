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

use hsm_config::Operation;
use hsmgate_signer_api::{PAYLOAD_OCSP_RESPONSE_DATA, PAYLOAD_TBS_CERTIFICATE};

use crate::error::Error;

/// The operation a call declares by its metadata value (`None`: absent).
pub fn declared(value: Option<&str>) -> Result<Operation, Error> {
    match value {
        None => Ok(Operation::SignRaw),
        Some(PAYLOAD_TBS_CERTIFICATE) => Ok(Operation::SignCertificate),
        Some(PAYLOAD_OCSP_RESPONSE_DATA) => Ok(Operation::SignOcsp),
        Some(other) => Err(Error::InvalidArgument(format!(
            "hsmgate-payload: unknown payload `{}`; expected `{PAYLOAD_TBS_CERTIFICATE}` or `{PAYLOAD_OCSP_RESPONSE_DATA}`",
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

    #[test]
    fn garbage_is_neither() {
        assert!(check(Operation::SignCertificate, b"\x30\x03\x02\x01\x01").is_err());
        assert!(check(Operation::SignOcsp, b"not der").is_err());
        assert!(check(Operation::SignRaw, b"").is_err());
    }
}
