//! Fuzzes `signer::payload`, the checks every signing request's bytes reach on a key with
//! `check_payload = true`: `check` (DER `TBSCertificate` / OCSP `ResponseData` / CRL
//! `TBSCertList` parses; the last streamed, entry by entry) and
//! `declared` (the `hsmgate-payload` metadata value).
//!
//! The property: any input yields `Ok` or `Err` for each operation — never a panic, an abort
//! or unbounded work. On `Ok`, the message must be exactly the DER of what was parsed (it
//! re-encodes to the same bytes): the check's promise is "this is a DER TBSCertificate /
//! ResponseData with nothing after it", and the HSM signs the caller's bytes, not ours.
//! The input is the message itself (no selector byte), so the seeds are plain DER files.

#![no_main]

use hsm_config::Operation;
use libfuzzer_sys::fuzz_target;
use signer::{check_payload as check, declared_payload as declared};

fuzz_target!(|data: &[u8]| {
    // A raw payload is never checkable.
    assert!(check(Operation::SignRaw, data).is_err());

    match check(Operation::SignCertificate, data) {
        Ok(()) => {
            use der::{Decode, Encode};
            let tbs = x509_cert::TbsCertificate::from_der(data).expect("check accepted it");
            let der = tbs.to_der().expect("an accepted TBSCertificate re-encodes");
            assert_eq!(der, data, "accepted TBSCertificate is not its own DER");
        }
        Err(e) => assert!(!e.is_empty()),
    }

    match check(Operation::SignOcsp, data) {
        Ok(()) => {
            use der07::{Decode, Encode};
            let rd = x509_ocsp::ResponseData::from_der(data).expect("check accepted it");
            let der = rd.to_der().expect("an accepted ResponseData re-encodes");
            assert_eq!(der, data, "accepted ResponseData is not its own DER");
        }
        Err(e) => assert!(!e.is_empty()),
    }

    // The streamed TBSCertList check accepts exactly what x509-cert's whole-list decoder
    // accepts and re-encodes to the input.
    let whole = {
        use der::{Decode, Encode};
        x509_cert::crl::TbsCertList::<x509_cert::certificate::Rfc5280>::from_der(data)
            .ok()
            .and_then(|l| l.to_der().ok())
            .is_some_and(|der| der == data)
    };
    match check(Operation::SignCrl, data) {
        Ok(()) => assert!(whole, "streamed check accepted what the decoder refuses"),
        Err(e) => {
            assert!(!e.is_empty());
            assert!(!whole, "streamed check refused a DER TBSCertList: {e}");
        }
    }

    // The same bytes as a metadata value: unknown values are refused with a bounded echo.
    let text = String::from_utf8_lossy(data);
    match declared(Some(&text)) {
        Ok(op) => assert!(matches!(
            op,
            Operation::SignCertificate | Operation::SignOcsp | Operation::SignCrl
        )),
        Err(e) => {
            let msg = e.to_string();
            // At most 64 characters of the caller's value, plus the fixed wording.
            assert!(
                msg.len() < 64 * 4 + 200,
                "unbounded echo: {} bytes",
                msg.len()
            );
        }
    }
});
