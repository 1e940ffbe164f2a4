//! Fuzzes `ca_frontend::jws`, the parser every ACME POST body reaches first (before any
//! account lookup or nonce check): `ParsedJws::parse` (flattened JSON serialization, base64url
//! members, the protected header), then what the server does with a parsed JWS — the header's
//! `jwk` as a key (`PublicKey::from_jwk`, `thumbprint`), the signature check (`verify`), the
//! payload as JSON (`json`), and the DNS-name check (`check_dns_name`) on every string
//! of the payload, as new-order identifiers reach it.
//!
//! The properties: any input yields `Ok` or a `Problem` at every step — never a panic, an
//! abort or unbounded work; a signature only verifies under the `alg` of the key's own type;
//! a thumbprint is 43 base64url characters (SHA-256); a name `check_dns_name` accepts is
//! lowercase LDH (so an IA5String, as the certificate's dNSName needs) with at least two
//! labels and at most 253 characters.
//!
//! The input is the POST body itself, so the seeds are JSON files.

#![no_main]

use ca_frontend::jws::{ParsedJws, PublicKey};
use ca_frontend::check_dns_name;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(jws) = ParsedJws::parse(data) else {
        return;
    };
    if let Some(jwk) = &jws.header.jwk
        && let Ok(key) = PublicKey::from_jwk(jwk)
    {
        let thumbprint = key.thumbprint();
        assert_eq!(thumbprint.len(), 43, "{thumbprint}");
        assert!(
            thumbprint
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        if jws.verify(&key).is_ok() {
            let expected = match key {
                PublicKey::Rsa { .. } => "RS256",
                PublicKey::P256(_) => "ES256",
                PublicKey::P384(_) => "ES384",
                PublicKey::Ed25519(_) => "EdDSA",
            };
            assert_eq!(jws.header.alg, expected, "verified under another alg");
        }
    }
    if let Ok(payload) = jws.json::<serde_json::Value>() {
        let mut strings = Vec::new();
        collect(&payload, 0, &mut strings);
        for s in strings {
            if let Ok(checked) = check_dns_name(s, &["test".to_owned()]) {
                let (name, wildcard) = (checked.name, checked.wildcard);
                let base = name.strip_prefix("*.").unwrap_or(&name);
                assert_eq!(wildcard, base.len() != name.len());
                assert!(!base.is_empty() && base.len() <= 253, "{name}");
                assert!(base.contains('.'), "{name}");
                assert!(
                    base.bytes().all(|b| b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b == b'-'
                        || b == b'.'),
                    "{name}"
                );
            }
        }
    }
});

/// Every string in the payload (values and object keys), depth-first.
fn collect<'a>(value: &'a serde_json::Value, depth: usize, out: &mut Vec<&'a str>) {
    // serde_json refuses nesting deeper than 128 anyway.
    if depth > 128 {
        return;
    }
    match value {
        serde_json::Value::String(s) => out.push(s),
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect(v, depth + 1, out)),
        serde_json::Value::Object(o) => o.iter().for_each(|(k, v)| {
            out.push(k);
            collect(v, depth + 1, out);
        }),
        _ => {}
    }
}
