//! JSON Web Signatures as ACME carries them (RFC 8555 §6.2): flattened JSON serialization, one
//! signature, a protected header naming `alg`, `nonce`, `url` and either `jwk` (new accounts,
//! revocation by certificate key) or `kid` (everything else).
//!
//! Verification is `ring`'s: RS256 (RSA ≥ 2048 bits), ES256, ES384 (raw `r‖s`, RFC 7518 §3.4)
//! and EdDSA (Ed25519). The algorithm must match the key; `none` and HMAC never verify.
//!
//! A header with `crit` is refused: RFC 7515 §4.1.11 has a recipient reject a JWS whose
//! critical extensions it does not understand, and this server understands none (RFC 8555
//! §6.2 lists the members ACME uses). A `jwk` must be a public key only — a member of a private
//! or symmetric key (RFC 7518 §6.2.2, §6.3.2, §6.4.1) is refused, not stored — and at most
//! [`MAX_JWK_BYTES`]; what an account stores and echoes is [`PublicKey::to_jwk`], the RFC 7638
//! members alone, whatever else the client sent.

use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{Problem, ProblemType, b64, unb64};

/// A flattened JWS as it arrives in a POST body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlattenedJws {
    pub protected: String,
    pub payload: String,
    pub signature: String,
}

/// The protected header's members this server reads.
#[derive(Debug, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default)]
    pub nonce: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub jwk: Option<serde_json::Value>,
    #[serde(default)]
    pub kid: Option<String>,
}

/// A JWS whose structure and header parsed; its signature is not yet checked.
#[derive(Debug)]
pub struct ParsedJws {
    pub header: Header,
    /// The decoded payload; empty for POST-as-GET.
    pub payload: Vec<u8>,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
}

/// The JWS algorithms accepted, for the `badSignatureAlgorithm` problem's `algorithms` list.
pub const ALGORITHMS: [&str; 4] = ["RS256", "ES256", "ES384", "EdDSA"];

/// A JWK's JSON at most: an RSA-8192 key with `kid`, `alg` and `use` is about 1.5 KB.
pub const MAX_JWK_BYTES: usize = 4096;

/// Members that only a private or symmetric key has: RSA's `d`, `p`, `q`, `dp`, `dq`, `qi`,
/// `oth` (RFC 7518 §6.3.2), EC's and OKP's `d` (§6.2.2, RFC 8037 §2), `oct`'s `k` (§6.4.1).
const PRIVATE_JWK_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Checks a JWK as a client sends it: an object, at most [`MAX_JWK_BYTES`], no private member.
pub fn check_public_jwk(jwk: &serde_json::Value) -> Result<(), Problem> {
    let object = jwk
        .as_object()
        .ok_or_else(|| bad_key("the jwk is not a JSON object"))?;
    let size = jwk.to_string().len();
    if size > MAX_JWK_BYTES {
        return Err(bad_key(format!(
            "the jwk is {size} bytes; at most {MAX_JWK_BYTES}"
        )));
    }
    if let Some(member) = PRIVATE_JWK_MEMBERS
        .iter()
        .find(|m| object.contains_key(**m))
    {
        return Err(bad_key(format!(
            "the jwk holds `{member}`, a member of a private or symmetric key; send the public key only"
        )));
    }
    Ok(())
}

impl ParsedJws {
    pub fn parse(body: &[u8]) -> Result<Self, Problem> {
        let jws: FlattenedJws = serde_json::from_slice(body)
            .map_err(|e| Problem::malformed(format!("the body is not a flattened JWS: {e}")))?;
        let protected = unb64(&jws.protected)
            .ok_or_else(|| Problem::malformed("the protected header is not base64url"))?;
        let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&protected)
            .map_err(|e| {
                Problem::malformed(format!("the protected header is not a JSON object: {e}"))
            })?;
        if header.contains_key("crit") {
            return Err(Problem::malformed(
                "the protected header has `crit`: this server understands no JWS extension \
                 (RFC 7515 §4.1.11; RFC 8555 §6.2 lists the members ACME uses)",
            ));
        }
        let header: Header = serde_json::from_value(serde_json::Value::Object(header))
            .map_err(|e| Problem::malformed(format!("the protected header: {e}")))?;
        if let Some(jwk) = &header.jwk {
            check_public_jwk(jwk)?;
        }
        let payload = unb64(&jws.payload)
            .ok_or_else(|| Problem::malformed("the payload is not base64url"))?;
        let signature = unb64(&jws.signature)
            .ok_or_else(|| Problem::malformed("the signature is not base64url"))?;
        let signing_input = format!("{}.{}", jws.protected, jws.payload).into_bytes();
        Ok(Self {
            header,
            payload,
            signing_input,
            signature,
        })
    }

    /// Verifies the signature with `key` under the header's `alg`.
    pub fn verify(&self, key: &PublicKey) -> Result<(), Problem> {
        key.verify_jws(&self.header.alg, &self.signing_input, &self.signature)
    }

    /// The payload as JSON of type `T` (POST-as-GET payloads are empty and refused here).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Problem> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| Problem::malformed(format!("the payload is not the expected JSON: {e}")))
    }
}

/// An account or certificate public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed point `04‖x‖y`.
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
}

fn strip_zeros(bytes: &[u8]) -> Vec<u8> {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes[start..].to_vec()
}

fn bad_key(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemType::BadPublicKey, detail)
}

impl PublicKey {
    /// From a JWK (RFC 7517/7518): RSA ≥ 2048 bits, EC P-256/P-384, OKP Ed25519.
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<Self, Problem> {
        let member = |name: &str| -> Result<Vec<u8>, Problem> {
            let text = jwk
                .get(name)
                .and_then(|v| v.as_str())
                .ok_or_else(|| bad_key(format!("the JWK has no `{name}`")))?;
            unb64(text).ok_or_else(|| bad_key(format!("the JWK's `{name}` is not base64url")))
        };
        let text = |name: &str| jwk.get(name).and_then(|v| v.as_str()).unwrap_or("");
        match (text("kty"), text("crv")) {
            ("RSA", _) => {
                let n = strip_zeros(&member("n")?);
                let e = strip_zeros(&member("e")?);
                if n.len() * 8 < 2048 {
                    return Err(bad_key(format!(
                        "RSA keys must have at least 2048 bits; this one has {}",
                        n.len() * 8
                    )));
                }
                if n.len() * 8 > 8192 || e.is_empty() || e.len() > 4 {
                    return Err(bad_key("unsupported RSA key size or exponent"));
                }
                Ok(Self::Rsa { n, e })
            }
            ("EC", crv @ ("P-256" | "P-384")) => {
                let size = if crv == "P-256" { 32 } else { 48 };
                let (x, y) = (member("x")?, member("y")?);
                if x.len() != size || y.len() != size {
                    return Err(bad_key(format!("{crv} coordinates must be {size} bytes")));
                }
                let point = [&[4u8][..], &x, &y].concat();
                Ok(if size == 32 {
                    Self::P256(point)
                } else {
                    Self::P384(point)
                })
            }
            ("OKP", "Ed25519") => {
                let x = member("x")?;
                if x.len() != 32 {
                    return Err(bad_key("an Ed25519 key is 32 bytes"));
                }
                Ok(Self::Ed25519(x))
            }
            (kty, crv) => Err(bad_key(format!(
                "unsupported key type `{kty}` {crv}; accepted: RSA (2048+), EC P-256, EC P-384, OKP Ed25519"
            ))),
        }
    }

    /// RFC 7638 thumbprint (SHA-256, base64url): members in lexicographic order, no spaces.
    pub fn thumbprint(&self) -> String {
        b64(&Sha256::digest(self.canonical_jwk().as_bytes()))
    }

    /// The key as a JWK of its required public members only (RFC 7638 §3.2): what an account
    /// stores and shows, whatever else the client's `jwk` held.
    pub fn to_jwk(&self) -> serde_json::Value {
        // The canonical form is JSON this module wrote; it always parses.
        serde_json::from_str(&self.canonical_jwk()).unwrap_or(serde_json::Value::Null)
    }

    /// RFC 7638 §3.3: the required members, in lexicographic order, no whitespace.
    fn canonical_jwk(&self) -> String {
        match self {
            Self::Rsa { n, e } => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, b64(e), b64(n)),
            Self::P256(p) | Self::P384(p) => {
                let crv = if matches!(self, Self::P256(_)) {
                    "P-256"
                } else {
                    "P-384"
                };
                let half = (p.len() - 1) / 2;
                format!(
                    r#"{{"crv":"{crv}","kty":"EC","x":"{}","y":"{}"}}"#,
                    b64(&p[1..=half]),
                    b64(&p[1 + half..])
                )
            }
            Self::Ed25519(x) => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64(x)),
        }
    }

    /// Checks a JWS signature; `alg` must be the one this key signs with.
    pub fn verify_jws(&self, alg: &str, message: &[u8], sig: &[u8]) -> Result<(), Problem> {
        let bad_sig = || Problem::malformed("the JWS signature does not verify");
        let ok = match (self, alg) {
            (Self::Rsa { n, e }, "RS256") => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok(),
            (Self::P256(p), "ES256") => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, p)
                    .verify(message, sig)
                    .is_ok()
            }
            (Self::P384(p), "ES384") => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, p)
                    .verify(message, sig)
                    .is_ok()
            }
            (Self::Ed25519(x), "EdDSA") => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, sig)
                .is_ok(),
            (_, alg) if ALGORITHMS.contains(&alg) => {
                return Err(Problem::new(
                    ProblemType::BadSignatureAlgorithm,
                    format!("`{alg}` does not match the key's type"),
                ));
            }
            (_, alg) => {
                return Err(Problem::new(
                    ProblemType::BadSignatureAlgorithm,
                    format!(
                        "`{alg}` is not supported; use one of {}",
                        ALGORITHMS.join(", ")
                    ),
                ));
            }
        };
        if ok { Ok(()) } else { Err(bad_sig()) }
    }

    /// From a DER SubjectPublicKeyInfo (a CSR's or a certificate's key).
    pub fn from_spki(spki: &spki::SubjectPublicKeyInfoOwned) -> Result<Self, Problem> {
        use const_oid::db::{rfc5912, rfc8410};
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| bad_key("the public key has unused bits"))?;
        let oid = spki.algorithm.oid;
        if oid == rfc5912::RSA_ENCRYPTION {
            let key = RsaPublicKey::from_der_bytes(bits)
                .ok_or_else(|| bad_key("the RSA public key is not a valid RSAPublicKey"))?;
            return Ok(Self::Rsa {
                n: strip_zeros(&key.0),
                e: strip_zeros(&key.1),
            });
        }
        if oid == rfc5912::ID_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<const_oid::ObjectIdentifier>().ok());
            return match curve {
                Some(c) if c == rfc5912::SECP_256_R_1 && bits.len() == 65 && bits[0] == 4 => {
                    Ok(Self::P256(bits.to_vec()))
                }
                Some(c) if c == rfc5912::SECP_384_R_1 && bits.len() == 97 && bits[0] == 4 => {
                    Ok(Self::P384(bits.to_vec()))
                }
                _ => Err(bad_key(
                    "EC keys must be P-256 or P-384, as uncompressed points",
                )),
            };
        }
        if oid == rfc8410::ID_ED_25519 && bits.len() == 32 {
            return Ok(Self::Ed25519(bits.to_vec()));
        }
        Err(bad_key(format!("unsupported public key algorithm {oid}")))
    }

    /// Key size in bits (RSA modulus; the curve's size for EC and Ed25519).
    pub fn bits(&self) -> usize {
        match self {
            Self::Rsa { n, .. } => n.len() * 8,
            Self::P256(_) | Self::Ed25519(_) => 256,
            Self::P384(_) => 384,
        }
    }
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }` (RFC 8017 A.1.1).
struct RsaPublicKey(Vec<u8>, Vec<u8>);

impl RsaPublicKey {
    fn from_der_bytes(der_bytes: &[u8]) -> Option<Self> {
        use der::{Decode, Reader, SliceReader, asn1::UintRef};
        let mut reader = SliceReader::new(der_bytes).ok()?;
        let (n, e) = reader
            .sequence(|r| -> der::Result<(Vec<u8>, Vec<u8>)> {
                let n = UintRef::decode(r)?;
                let e = UintRef::decode(r)?;
                Ok((n.as_bytes().to_vec(), e.as_bytes().to_vec()))
            })
            .ok()?;
        reader.finish().ok()?;
        Some(Self(n, e))
    }
}

/// The key authorization of a challenge token for an account key (RFC 8555 §8.1).
pub fn key_authorization(token: &str, thumbprint: &str) -> String {
    format!("{token}.{thumbprint}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{EcdsaKeyPair, KeyPair};

    fn es256_jws(header: &serde_json::Value, payload: &[u8]) -> (Vec<u8>, serde_json::Value) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("keygen");
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .expect("key");
        let point = key.public_key().as_ref();
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..])});
        let mut header = header.clone();
        header["jwk"] = jwk.clone();
        let protected = b64(header.to_string().as_bytes());
        let payload = b64(payload);
        let sig = key
            .sign(&rng, format!("{protected}.{payload}").as_bytes())
            .expect("sign");
        let body = serde_json::json!({"protected": protected, "payload": payload, "signature": b64(sig.as_ref())});
        (body.to_string().into_bytes(), jwk)
    }

    #[test]
    fn es256_verifies_and_a_changed_payload_does_not() {
        let header =
            serde_json::json!({"alg": "ES256", "nonce": "n", "url": "http://x/acme/new-account"});
        let (body, jwk) = es256_jws(&header, b"{}");
        let jws = ParsedJws::parse(&body).expect("parse");
        let key = PublicKey::from_jwk(&jwk).expect("jwk");
        jws.verify(&key).expect("verifies");

        let mut tampered: serde_json::Value = serde_json::from_slice(&body).expect("json");
        tampered["payload"] = serde_json::Value::String(b64(b"{\"x\":1}"));
        let jws = ParsedJws::parse(tampered.to_string().as_bytes()).expect("parse");
        assert_eq!(
            jws.verify(&key).map_err(|p| p.kind),
            Err(ProblemType::Malformed)
        );
    }

    #[test]
    fn algorithm_must_match_the_key() {
        let header = serde_json::json!({"alg": "ES256"});
        let (body, jwk) = es256_jws(&header, b"");
        let mut v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let mut h: serde_json::Value =
            serde_json::from_slice(&unb64(v["protected"].as_str().expect("s")).expect("b64"))
                .expect("h");
        for alg in ["RS256", "none", "HS256"] {
            h["alg"] = serde_json::Value::String(alg.into());
            v["protected"] = serde_json::Value::String(b64(h.to_string().as_bytes()));
            let jws = ParsedJws::parse(v.to_string().as_bytes()).expect("parse");
            let key = PublicKey::from_jwk(&jwk).expect("jwk");
            assert_eq!(
                jws.verify(&key).map_err(|p| p.kind),
                Err(ProblemType::BadSignatureAlgorithm),
                "{alg}"
            );
        }
    }

    #[test]
    fn thumbprint_matches_rfc7638_example() {
        // RFC 7638 §3.1.
        let jwk = serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        let key = PublicKey::from_jwk(&jwk).expect("jwk");
        assert_eq!(
            key.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn weak_and_unknown_keys_are_refused() {
        let small = serde_json::json!({"kty": "RSA", "n": b64(&[0xc5; 128]), "e": "AQAB"});
        assert_eq!(
            PublicKey::from_jwk(&small).map_err(|p| p.kind),
            Err(ProblemType::BadPublicKey)
        );
        let oct = serde_json::json!({"kty": "oct", "k": "AAAA"});
        assert_eq!(
            PublicKey::from_jwk(&oct).map_err(|p| p.kind),
            Err(ProblemType::BadPublicKey)
        );
        let short = serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&[1; 31]), "y": b64(&[1; 32])});
        assert_eq!(
            PublicKey::from_jwk(&short).map_err(|p| p.kind),
            Err(ProblemType::BadPublicKey)
        );
    }

    #[test]
    fn crit_headers_are_refused_whatever_their_value() {
        for crit in [
            serde_json::json!(["b64"]),
            serde_json::json!([]),
            serde_json::json!("x"),
            serde_json::Value::Null,
        ] {
            let header = serde_json::json!({"alg": "ES256", "nonce": "n", "url": "u", "crit": crit, "b64": false});
            let (body, _) = es256_jws(&header, b"{}");
            let refused = ParsedJws::parse(&body).expect_err("crit");
            assert_eq!(refused.kind, ProblemType::Malformed);
            assert!(refused.detail.contains("crit"), "{}", refused.detail);
        }
    }

    #[test]
    fn private_and_oversized_jwks_are_refused_and_only_public_members_kept() {
        let header = serde_json::json!({"alg": "ES256", "nonce": "n", "url": "u"});
        let (body, jwk) = es256_jws(&header, b"{}");
        let parsed = ParsedJws::parse(&body).expect("public jwk");
        let key = PublicKey::from_jwk(parsed.header.jwk.as_ref().expect("jwk")).expect("key");
        assert_eq!(
            key.to_jwk(),
            jwk,
            "an EC key's RFC 7638 members are all it sends here"
        );
        for member in PRIVATE_JWK_MEMBERS {
            let mut private = jwk.clone();
            private[member] = serde_json::json!("AAAA");
            assert_eq!(
                check_public_jwk(&private).map_err(|p| p.kind),
                Err(ProblemType::BadPublicKey),
                "{member}"
            );
        }
        let mut junk = jwk.clone();
        junk["junk"] = serde_json::json!("j".repeat(30_000));
        assert_eq!(
            check_public_jwk(&junk).map_err(|p| p.kind),
            Err(ProblemType::BadPublicKey)
        );
        let mut extra = jwk.clone();
        extra["kid"] = serde_json::json!("mine");
        extra["use"] = serde_json::json!("sig");
        check_public_jwk(&extra).expect("small extra members are allowed");
        let reduced = PublicKey::from_jwk(&extra).expect("key").to_jwk();
        assert_eq!(reduced, jwk, "extra members are not kept");
        assert_eq!(
            reduced
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>()),
            Some(vec!["crv".into(), "kty".into(), "x".into(), "y".into()])
        );
    }

    #[test]
    fn garbage_bodies_are_malformed() {
        for body in [
            &b""[..],
            b"{}",
            b"{\"protected\":\"!\",\"payload\":\"\",\"signature\":\"\"}",
            b"\xff\xfe",
        ] {
            assert_eq!(
                ParsedJws::parse(body).map_err(|p| p.kind).err(),
                Some(ProblemType::Malformed)
            );
        }
    }
}
