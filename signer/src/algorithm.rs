//! Signature algorithms: which ones each key type allows, how a request becomes the input of a
//! PKCS#11 mechanism, and how the HSM's output becomes what X.509 and OCSP carry.
//!
//! Hashing happens on the host: SoftHSM2 has no `CKM_ECDSA_SHA256`, and hashing locally means a
//! network HSM receives 32 or 48 bytes instead of a whole certificate. So every ECDSA key uses
//! `CKM_ECDSA` on a digest, every RSA PKCS#1 v1.5 key `CKM_RSA_PKCS` on a `DigestInfo`, and PSS
//! `CKM_RSA_PKCS_PSS` on a digest. Ed25519 is pure EdDSA (RFC 8032) and signs the message itself.

use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use der::Encode;
use der::asn1::UintRef;
use hsm_config::KeyAlgorithm;
use hsmgate_signer_api::v1::{KeyType, SignatureAlgorithm as Alg};
use sha2::Digest;

/// Hash functions the gateway computes or expects digests of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hash {
    Sha256,
    Sha384,
}

impl Hash {
    /// Output size in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Hash::Sha256 => "SHA-256",
            Hash::Sha384 => "SHA-384",
        }
    }

    pub fn digest(self, message: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => sha2::Sha256::digest(message).to_vec(),
            Hash::Sha384 => sha2::Sha384::digest(message).to_vec(),
        }
    }

    /// DER `DigestInfo` up to the digest (RFC 8017 §9.2, note 1).
    fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Hash::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            Hash::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
        }
    }
}

/// The PKCS#11 operation a signature needs, decided once per request item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `CKM_ECDSA` over a digest; the raw r‖s output is DER-encoded afterwards.
    Ecdsa,
    /// `CKM_RSA_PKCS` over a `DigestInfo`.
    RsaPkcs1,
    /// `CKM_RSA_PKCS_PSS` over a digest, MGF1 with the same hash, salt as long as the hash.
    RsaPss(Hash),
    /// `CKM_EDDSA` over the message.
    Ed25519,
}

impl Operation {
    pub fn mechanism(self) -> Mechanism<'static> {
        match self {
            Operation::Ecdsa => Mechanism::Ecdsa,
            Operation::RsaPkcs1 => Mechanism::RsaPkcs,
            Operation::RsaPss(hash) => {
                let (hash_alg, mgf) = match hash {
                    Hash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
                    Hash::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
                };
                Mechanism::RsaPkcsPss(PkcsPssParams {
                    hash_alg,
                    mgf,
                    s_len: (hash.output_len() as u64).into(),
                })
            }
            Operation::Ed25519 => Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
        }
    }

    /// Turns the HSM's output into the signature X.509 and OCSP carry.
    pub fn finish(self, raw: Vec<u8>) -> Result<Vec<u8>, String> {
        match self {
            Operation::Ecdsa => ecdsa_raw_to_der(&raw),
            _ => Ok(raw),
        }
    }
}

/// Largest Ed25519 message sent to an HSM.
pub const MAX_ED25519_MESSAGE: usize = 1 << 20;

/// What the client sent to be signed.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    Digest(&'a [u8]),
    Message(&'a [u8]),
}

pub fn key_type(key: KeyAlgorithm) -> KeyType {
    match key {
        KeyAlgorithm::EcdsaP256 => KeyType::EcdsaP256,
        KeyAlgorithm::EcdsaP384 => KeyType::EcdsaP384,
        KeyAlgorithm::Rsa2048 => KeyType::Rsa2048,
        KeyAlgorithm::Rsa3072 => KeyType::Rsa3072,
        KeyAlgorithm::Rsa4096 => KeyType::Rsa4096,
        KeyAlgorithm::Ed25519 => KeyType::Ed25519,
    }
}

/// Signature algorithms a key type can produce; the first is its default.
pub fn allowed(key: KeyAlgorithm) -> &'static [Alg] {
    match key {
        KeyAlgorithm::EcdsaP256 => &[Alg::EcdsaSha256],
        KeyAlgorithm::EcdsaP384 => &[Alg::EcdsaSha384],
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => &[
            Alg::RsaPkcs1Sha256,
            Alg::RsaPkcs1Sha384,
            Alg::RsaPssSha256,
            Alg::RsaPssSha384,
        ],
        KeyAlgorithm::Ed25519 => &[Alg::Ed25519],
    }
}

/// Resolves the requested algorithm against the key; `Err` says why it does not fit.
pub fn resolve(key: KeyAlgorithm, requested: Alg) -> Result<Alg, String> {
    let allowed = allowed(key);
    if requested == Alg::Unspecified {
        return Ok(allowed[0]);
    }
    if allowed.contains(&requested) {
        Ok(requested)
    } else {
        Err(format!(
            "{} is not possible with a {} key (allowed: {})",
            requested.as_str_name(),
            key.as_str(),
            allowed
                .iter()
                .map(|a| a.as_str_name())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

fn hash_of(alg: Alg) -> Option<Hash> {
    match alg {
        Alg::EcdsaSha256 | Alg::RsaPkcs1Sha256 | Alg::RsaPssSha256 => Some(Hash::Sha256),
        Alg::EcdsaSha384 | Alg::RsaPkcs1Sha384 | Alg::RsaPssSha384 => Some(Hash::Sha384),
        Alg::Ed25519 | Alg::Unspecified => None,
    }
}

/// Checks the input against a resolved algorithm and produces the bytes the HSM signs.
/// `Err` is a message for `INVALID_ARGUMENT`, naming the expected size.
pub fn prepare(alg: Alg, input: Input<'_>) -> Result<(Operation, Vec<u8>), String> {
    let operation = match alg {
        Alg::EcdsaSha256 | Alg::EcdsaSha384 => Operation::Ecdsa,
        Alg::RsaPkcs1Sha256 | Alg::RsaPkcs1Sha384 => Operation::RsaPkcs1,
        Alg::RsaPssSha256 => Operation::RsaPss(Hash::Sha256),
        Alg::RsaPssSha384 => Operation::RsaPss(Hash::Sha384),
        Alg::Ed25519 => {
            return match input {
                // The HSM hashes an Ed25519 message itself: a huge one would hold a session
                // (and the watchdog's patience) for long. A CRL of 1 MiB is ~30,000 entries.
                Input::Message(m) if m.len() > MAX_ED25519_MESSAGE => Err(format!(
                    "{} bytes: Ed25519 messages are limited to {MAX_ED25519_MESSAGE} bytes",
                    m.len()
                )),
                Input::Message(m) => Ok((Operation::Ed25519, m.to_vec())),
                Input::Digest(_) => Err(
                    "Ed25519 signs the message itself (RFC 8032 pure EdDSA): send `message`, not `digest`"
                        .to_owned(),
                ),
            };
        }
        Alg::Unspecified => return Err("no signature algorithm".to_owned()),
    };
    let hash = hash_of(alg).ok_or("no hash for this algorithm")?;
    let digest = match input {
        Input::Digest(d) if d.len() == hash.output_len() => d.to_vec(),
        Input::Digest(d) => {
            return Err(format!(
                "expected a {}-byte {} digest for {}, got {} bytes",
                hash.output_len(),
                hash.name(),
                alg.as_str_name(),
                d.len()
            ));
        }
        Input::Message(m) => hash.digest(m),
    };
    let data = match operation {
        Operation::RsaPkcs1 => [hash.digest_info_prefix(), &digest].concat(),
        _ => digest,
    };
    Ok((operation, data))
}

/// DER `AlgorithmIdentifier` of each signature algorithm, as X.509 and OCSP write it.
pub fn algorithm_identifier(alg: Alg) -> &'static [u8] {
    match alg {
        // ecdsa-with-SHA256 / -SHA384 (RFC 5758 §3.2: parameters absent)
        Alg::EcdsaSha256 => &ECDSA_SHA256,
        Alg::EcdsaSha384 => &ECDSA_SHA384,
        // sha256WithRSAEncryption / sha384WithRSAEncryption (RFC 4055 §5: parameters NULL)
        Alg::RsaPkcs1Sha256 => &RSA_PKCS1_SHA256,
        Alg::RsaPkcs1Sha384 => &RSA_PKCS1_SHA384,
        // id-RSASSA-PSS with explicit RSASSA-PSS-params (RFC 4055 §3.1)
        Alg::RsaPssSha256 => &RSA_PSS_SHA256,
        Alg::RsaPssSha384 => &RSA_PSS_SHA384,
        // id-Ed25519 (RFC 8410 §3: parameters absent)
        Alg::Ed25519 => &ED25519,
        Alg::Unspecified => &[],
    }
}

const ECDSA_SHA256: [u8; 12] = [
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];
const ECDSA_SHA384: [u8; 12] = [
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
];
const RSA_PKCS1_SHA256: [u8; 15] = [
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00,
];
const RSA_PKCS1_SHA384: [u8; 15] = [
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c, 0x05, 0x00,
];
const ED25519: [u8; 7] = [0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];
const RSA_PSS_SHA256: [u8; 67] = rsa_pss_identifier(0x01, 32);
const RSA_PSS_SHA384: [u8; 67] = rsa_pss_identifier(0x02, 48);

/// Builds `AlgorithmIdentifier { id-RSASSA-PSS, RSASSA-PSS-params { hashAlgorithm [0],
/// maskGenAlgorithm [1] mgf1(hash), saltLength [2] } }` for SHA-2 hash number `sha2_arc`
/// (2.16.840.1.101.3.4.2.`sha2_arc`). Every part has a fixed length, so the whole is a constant.
const fn rsa_pss_identifier(sha2_arc: u8, salt: u8) -> [u8; 67] {
    let hash = [
        0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, sha2_arc, 0x05,
        0x00,
    ];
    let mut out = [0u8; 67];
    let head = [
        0x30, 0x41, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, 0x30, 0x34,
        0xa0, 0x0f,
    ];
    let mgf1 = [
        0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08,
    ];
    let salt_len = [0xa2, 0x03, 0x02, 0x01, salt];
    let mut at = put(&mut out, 0, &head);
    at = put(&mut out, at, &hash);
    at = put(&mut out, at, &mgf1);
    at = put(&mut out, at, &hash);
    put(&mut out, at, &salt_len);
    out
}

/// Copies `part` into `out` at `at`; returns where the next part goes.
const fn put(out: &mut [u8; 67], at: usize, part: &[u8]) -> usize {
    let mut j = 0;
    while j < part.len() {
        out[at + j] = part[j];
        j += 1;
    }
    at + part.len()
}

/// `Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` (RFC 3279 §2.2.3).
#[derive(der::Sequence)]
struct EcdsaSigValue<'a> {
    r: UintRef<'a>,
    s: UintRef<'a>,
}

/// PKCS#11 `CKM_ECDSA` returns r‖s, each as long as the curve order; X.509 wants DER.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>, String> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return Err(format!("ECDSA signature of odd length {}", raw.len()));
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let value = EcdsaSigValue {
        r: UintRef::new(r).map_err(|e| e.to_string())?,
        s: UintRef::new(s).map_err(|e| e.to_string())?,
    };
    value.to_der().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Decode;

    #[test]
    fn algorithm_identifiers_decode_to_their_oids() {
        let cases = [
            (Alg::EcdsaSha256, "1.2.840.10045.4.3.2", false),
            (Alg::EcdsaSha384, "1.2.840.10045.4.3.3", false),
            (Alg::RsaPkcs1Sha256, "1.2.840.113549.1.1.11", true),
            (Alg::RsaPkcs1Sha384, "1.2.840.113549.1.1.12", true),
            (Alg::RsaPssSha256, "1.2.840.113549.1.1.10", true),
            (Alg::RsaPssSha384, "1.2.840.113549.1.1.10", true),
            (Alg::Ed25519, "1.3.101.112", false),
        ];
        for (alg, oid, has_params) in cases {
            let id = spki::AlgorithmIdentifierOwned::from_der(algorithm_identifier(alg))
                .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(id.oid.to_string(), oid, "{alg:?}");
            assert_eq!(id.parameters.is_some(), has_params, "{alg:?}");
        }
    }

    #[test]
    fn pss_parameters_name_hash_mgf_and_salt() {
        let id = spki::AlgorithmIdentifierOwned::from_der(&RSA_PSS_SHA384).expect("decodes");
        let params = id.parameters.expect("present").to_der().expect("encodes");
        // hashAlgorithm sha384 appears twice (hash and MGF1's hash), salt 48.
        let sha384 = [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
        let count = params
            .windows(sha384.len())
            .filter(|w| *w == sha384)
            .count();
        assert_eq!(count, 2);
        assert_eq!(&params[params.len() - 3..], &[0x02, 0x01, 48]);
    }

    #[test]
    fn ecdsa_der_strips_and_pads_integers() {
        let mut raw = vec![0u8; 64];
        raw[1] = 0x01; // r has a leading zero byte to strip
        raw[32] = 0x80; // s has its high bit set: needs a 0x00 pad
        let der = ecdsa_raw_to_der(&raw).expect("encodes");
        assert_eq!(der[0], 0x30);
        assert_eq!(&der[2..4], &[0x02, 31]);
        assert_eq!(der[4], 0x01);
        let s_at = 4 + 31;
        assert_eq!(&der[s_at..s_at + 3], &[0x02, 33, 0x00]);
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_err());
    }

    #[test]
    fn wrong_digest_length_names_the_sizes() {
        let err = prepare(Alg::EcdsaSha256, Input::Digest(&[0; 31])).expect_err("31 bytes");
        assert!(err.contains("32-byte SHA-256"), "{err}");
        assert!(prepare(Alg::Ed25519, Input::Digest(&[0; 32])).is_err());
        let (op, data) = prepare(Alg::RsaPkcs1Sha384, Input::Message(b"abc")).expect("ok");
        assert_eq!(op, Operation::RsaPkcs1);
        assert_eq!(data.len(), 19 + 48);
    }

    #[test]
    fn algorithms_must_fit_the_key() {
        assert_eq!(
            resolve(KeyAlgorithm::EcdsaP384, Alg::Unspecified),
            Ok(Alg::EcdsaSha384)
        );
        assert!(resolve(KeyAlgorithm::EcdsaP256, Alg::EcdsaSha384).is_err());
        assert!(resolve(KeyAlgorithm::Rsa2048, Alg::Ed25519).is_err());
    }
}
