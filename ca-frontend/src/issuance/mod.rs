//! Turning a validated order into a certificate, in three steps that each have their module:
//! the CSR checks (`csr`), building the `TBSCertificate` (`tbs`), and the lint that runs
//! before any HSM sees it ([`lint`]). What comes back from the gateway is checked here
//! ([`assemble`]): the signed certificate is verified against the intermediate's public key
//! before it is recorded, so a faulty HSM or a confused gateway cannot hand a subscriber a
//! certificate that does not verify. Signing itself is `crate::ca::signer`'s.
//!
//! ```text
//!  CSR ──csr::check_csr──▶ CheckedCsr ─┐
//!                     profile, serial ─┴▶ LeafPlan ──tbs::build_leaf_tbs──▶ TBS (DER)
//!                         TBS ──lint::lint (decoded back with x509-cert, against the plan)──▶
//!                         gateway signature ──assemble (parses, verifies)──▶ certificate
//! ```

use const_oid::db::{rfc5280, rfc5912};
use der::asn1::BitString;
use der::{Decode, Encode, Sequence};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::ext::pkix::SubjectKeyIdentifier;
use x509_cert::name::Name;

use crate::Error;
use crate::jws::PublicKey;

mod csr;
mod lint;
mod tbs;
#[cfg(test)]
mod tests;

pub use csr::{CheckedCsr, check_csr};
pub use lint::lint;
pub use tbs::{
    LeafPlan, Tbs, Validity, build_leaf_tbs, extension, key_identifier, random_serial, x509_time,
};

/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }`, with the
/// TBS kept as the exact bytes that were signed.
#[derive(Clone, Debug, Sequence)]
struct SignedCertificate {
    tbs: der::Any,
    algorithm: AlgorithmIdentifierOwned,
    signature: BitString,
}

/// The signature AlgorithmIdentifier a gateway key of this type signs with (what a TBS names;
/// [`verify_signature`] checks the result).
pub fn signature_algorithm(key_type: i32) -> Result<AlgorithmIdentifierOwned, Error> {
    use hsmgate_signer_api::v1::KeyType;
    let none = |oid| AlgorithmIdentifierOwned {
        oid,
        parameters: None,
    };
    Ok(match KeyType::try_from(key_type) {
        Ok(KeyType::EcdsaP256) => none(rfc5912::ECDSA_WITH_SHA_256),
        Ok(KeyType::EcdsaP384) => none(rfc5912::ECDSA_WITH_SHA_384),
        Ok(KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096) => AlgorithmIdentifierOwned {
            oid: rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
            parameters: Some(der::Any::from(der::asn1::Null)),
        },
        Ok(KeyType::Ed25519) => none(const_oid::db::rfc8410::ID_ED_25519),
        _ => {
            return Err(Error::Gateway(format!(
                "unsupported issuing key type {key_type}"
            )));
        }
    })
}

/// An issuing CA certificate (the intermediate, or the root in a ceremony).
#[derive(Clone, Debug)]
pub struct IssuerCert {
    pub der: Vec<u8>,
    pub subject: Name,
    pub spki: SubjectPublicKeyInfoOwned,
    /// Its SubjectKeyIdentifier: the AKI of what it signs, and the first half of ARI CertIDs.
    pub key_id: Vec<u8>,
}

impl IssuerCert {
    pub fn from_der(der_bytes: &[u8]) -> Result<Self, Error> {
        let cert = x509_cert::Certificate::from_der(der_bytes)?;
        let tbs = cert.tbs_certificate();
        let spki = tbs.subject_public_key_info().clone();
        let key_id = tbs
            .extensions()
            .into_iter()
            .flatten()
            .find(|e| e.extn_id == rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER)
            .and_then(|e| SubjectKeyIdentifier::from_der(e.extn_value.as_bytes()).ok())
            .map(|ski| ski.0.as_bytes().to_vec())
            .unwrap_or_else(|| key_identifier(&spki));
        Ok(Self {
            der: der_bytes.to_vec(),
            subject: tbs.subject().clone(),
            spki,
            key_id,
        })
    }

    /// The first certificate of a PEM file.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let der_bytes = first_pem_der(pem)?;
        Self::from_der(&der_bytes)
    }

    pub fn pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.der)
    }
}

pub fn first_pem_der(pem: &str) -> Result<Vec<u8>, Error> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| Error::Build("no CERTIFICATE in the PEM".into()))?
        .map(|c| c.as_ref().to_vec())
        .map_err(|e| Error::Build(format!("PEM: {e}")))
}

pub fn pem_encode(label: &str, der_bytes: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der_bytes);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Verifies `signature` over `message` by `spki` under `algorithm` (X.509 encodings: DER ECDSA).
pub fn verify_signature(
    spki: &SubjectPublicKeyInfoOwned,
    algorithm: &AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    use ring::signature as rs;
    let key = PublicKey::from_spki(spki).map_err(|p| p.detail)?;
    let alg: &dyn rs::VerificationAlgorithm = match (&key, algorithm.oid) {
        (PublicKey::P256(_), o) if o == rfc5912::ECDSA_WITH_SHA_256 => &rs::ECDSA_P256_SHA256_ASN1,
        (PublicKey::P256(_), o) if o == rfc5912::ECDSA_WITH_SHA_384 => &rs::ECDSA_P256_SHA384_ASN1,
        (PublicKey::P384(_), o) if o == rfc5912::ECDSA_WITH_SHA_256 => &rs::ECDSA_P384_SHA256_ASN1,
        (PublicKey::P384(_), o) if o == rfc5912::ECDSA_WITH_SHA_384 => &rs::ECDSA_P384_SHA384_ASN1,
        (PublicKey::Rsa { .. }, o) if o == rfc5912::SHA_256_WITH_RSA_ENCRYPTION => {
            &rs::RSA_PKCS1_2048_8192_SHA256
        }
        (PublicKey::Rsa { .. }, o) if o == rfc5912::SHA_384_WITH_RSA_ENCRYPTION => {
            &rs::RSA_PKCS1_2048_8192_SHA384
        }
        (PublicKey::Rsa { .. }, o) if o == rfc5912::SHA_512_WITH_RSA_ENCRYPTION => {
            &rs::RSA_PKCS1_2048_8192_SHA512
        }
        (PublicKey::Ed25519(_), o) if o == const_oid::db::rfc8410::ID_ED_25519 => &rs::ED25519,
        (_, o) => {
            return Err(format!(
                "signature algorithm {o} is not supported for this key"
            ));
        }
    };
    let bits = spki
        .subject_public_key
        .as_bytes()
        .ok_or("public key with unused bits")?;
    rs::UnparsedPublicKey::new(alg, bits)
        .verify(message, signature)
        .map_err(|_| "bad signature".to_owned())
}

/// Attaches `signature` to `tbs_der`; checks the result parses and verifies against `issuer`.
pub fn assemble(
    tbs_der: &[u8],
    algorithm: &AlgorithmIdentifierOwned,
    signature: &[u8],
    issuer_spki: &SubjectPublicKeyInfoOwned,
) -> Result<Vec<u8>, Error> {
    let cert = SignedCertificate {
        tbs: der::Any::from_der(tbs_der)?,
        algorithm: algorithm.clone(),
        signature: BitString::from_bytes(signature)?,
    }
    .to_der()?;
    x509_cert::Certificate::from_der(&cert)
        .map_err(|e| Error::Build(format!("the signed certificate does not parse: {e}")))?;
    verify_signature(issuer_spki, algorithm, tbs_der, signature).map_err(|e| {
        Error::Gateway(format!(
            "the gateway's signature does not verify with the issuer's key: {e}"
        ))
    })?;
    Ok(cert)
}
