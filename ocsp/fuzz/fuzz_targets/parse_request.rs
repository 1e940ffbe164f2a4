//! Fuzzes `ocsp::parse_request`, the first code every byte from an OCSP client reaches.
//!
//! The property: any input yields `Ok` or a `RequestError` — never a panic, an abort or
//! unbounded work. On `Ok`, the result must also be self-consistent (hash lengths fit the
//! algorithm), since the responder looks issuers up by those bytes without further checks.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ocsp::HashAlg;

fuzz_target!(|data: &[u8]| {
    match ocsp::parse_request(data) {
        Ok(req) => {
            let len = match req.hash {
                HashAlg::Sha1 => 20,
                HashAlg::Sha256 => 32,
            };
            assert_eq!(req.issuer_name_hash.len(), len);
            assert_eq!(req.issuer_key_hash.len(), len);
            // A serial is a magnitude without leading zeros.
            assert_ne!(req.serial.as_bytes().first(), Some(&0));
        }
        Err(e) => {
            // Classifying and printing an error must not panic either.
            let _ = e.status();
            let _ = e.to_string();
        }
    }
});
