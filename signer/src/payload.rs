//! What a key may sign: the payload a call declares, and the check that its items are that.
//!
//! A call declares its payload in the `hsmgate-payload` metadata (see
//! `hsmgate_signer_api::PAYLOAD_HEADER`); the declaration is the operation its grants are
//! checked against. For keys with `check_payload = true` the gateway also parses each item's
//! message: a `tbs-certificate` must be a DER `TBSCertificate` (RFC 5280 §4.1) and an
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
        Operation::SignCertificate => {
            use der::Decode;
            x509_cert::TbsCertificate::from_der(message)
                .map(|_| ())
                .map_err(|e| format!("does not parse as a TBSCertificate: {e}"))
        }
        Operation::SignOcsp => {
            use der07::Decode;
            x509_ocsp::ResponseData::from_der(message)
                .map(|_| ())
                .map_err(|e| format!("does not parse as an OCSP ResponseData: {e}"))
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

    #[test]
    fn garbage_is_neither() {
        assert!(check(Operation::SignCertificate, b"\x30\x03\x02\x01\x01").is_err());
        assert!(check(Operation::SignOcsp, b"not der").is_err());
        assert!(check(Operation::SignRaw, b"").is_err());
    }
}
