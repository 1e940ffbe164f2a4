//! Turning a validated order into a certificate: the CSR checks, the `TBSCertificate`, the lint
//! that runs before any HSM sees it, the signature through the gateway, and the check of what
//! came back.
//!
//! The `TBSCertificate` is built with `x509-cert`'s types in a local [`Tbs`] structure (the
//! crate's own keeps its fields private behind a builder that wants a synchronous signer) and
//! then **decoded back with `x509-cert`** by [`lint`], which checks the bytes the HSM would sign
//! — not the structure that produced them — against the profile. The signed certificate is
//! verified against the intermediate's public key before it is recorded: a faulty HSM or a
//! confused gateway cannot hand a subscriber a certificate that does not verify.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use const_oid::ObjectIdentifier;
use const_oid::db::{rfc5280, rfc5912};
use der::asn1::{BitString, Ia5String, OctetString};
use der::{Decode, Encode, Sequence};
use hsmgate_signer_api::v1::signer_client::SignerClient;
use hsmgate_signer_api::v1::{SignBatchRequest, SignRequest, SignatureAlgorithm, sign_request};
use hsmgate_signer_api::{PAYLOAD_HEADER, PAYLOAD_TBS_CERTIFICATE};
use sha2::{Digest, Sha256};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use x509_cert::certificate::Version;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::certpolicy::PolicyInformation;
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{
    AccessDescription, AuthorityInfoAccessSyntax, AuthorityKeyIdentifier, BasicConstraints,
    CertificatePolicies, CrlDistributionPoints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::name::Name;
use x509_cert::request::CertReq;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Time;

use crate::jws::PublicKey;
use crate::{Error, Problem, ProblemType};

/// CA/Browser Forum TLS BR §7.1.6.1: domain validated.
const POLICY_DOMAIN_VALIDATED: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.140.1.2.1");
/// A TBSCertificate larger than this is refused by the lint (real ones are ~1 KiB).
const MAX_TBS_BYTES: usize = 16 * 1024;
/// Serial numbers: 16 random bytes, top bit clear (positive), so ≥ 120 bits of entropy.
const SERIAL_BYTES: usize = 16;

/// RFC 5280 §4.1.1.1, with the fields in the order they are encoded.
#[derive(Clone, Debug, Sequence)]
pub struct Tbs {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT")]
    pub version: Version,
    pub serial_number: SerialNumber,
    pub signature: AlgorithmIdentifierOwned,
    pub issuer: Name,
    pub validity: Validity,
    pub subject: Name,
    pub subject_public_key_info: SubjectPublicKeyInfoOwned,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    pub extensions: Option<Vec<Extension>>,
}

#[derive(Clone, Debug, Sequence)]
pub struct Validity {
    pub not_before: Time,
    pub not_after: Time,
}

/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }`, with the
/// TBS kept as the exact bytes that were signed.
#[derive(Clone, Debug, Sequence)]
struct SignedCertificate {
    tbs: der::Any,
    algorithm: AlgorithmIdentifierOwned,
    signature: BitString,
}

/// Unix seconds as an X.509 `Time` (UTCTime before 2050, GeneralizedTime after).
pub fn x509_time(unix: i64) -> Result<Time, Error> {
    let secs = u64::try_from(unix).map_err(|_| Error::Build(format!("time {unix} before 1970")))?;
    let dt = der::DateTime::from_unix_duration(Duration::from_secs(secs))?;
    Ok(Time::from(dt))
}

fn time_unix(t: &Time) -> i64 {
    i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
}

pub fn extension(
    oid: ObjectIdentifier,
    critical: bool,
    value: &impl Encode,
) -> Result<Extension, Error> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value.to_der()?)?,
    })
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

/// RFC 7093 §2 method 1: the leftmost 160 bits of SHA-256 of the subjectPublicKey.
pub fn key_identifier(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    let bits = spki.subject_public_key.raw_bytes();
    Sha256::digest(bits)[..20].to_vec()
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

fn bad_csr(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemType::BadCsr, detail)
}

/// What a checked CSR contributes: its key, and the names it asks for.
#[derive(Debug, Clone)]
pub struct CheckedCsr {
    pub spki: SubjectPublicKeyInfoOwned,
    pub key: PublicKey,
    pub names: BTreeSet<String>,
}

/// Parses and checks a CSR (RFC 2986) against an order: its self-signature verifies, its key
/// is allowed (RSA of an allowed size, EC P-256/P-384; not the account's key), and its names
/// (CN and SAN dNSNames) are exactly the order's.
pub fn check_csr(
    der_bytes: &[u8],
    order_names: &BTreeSet<String>,
    rsa_sizes: &[usize],
    account_thumbprint: &str,
) -> Result<CheckedCsr, Problem> {
    let csr = CertReq::from_der(der_bytes)
        .map_err(|e| bad_csr(format!("the CSR does not parse: {e}")))?;
    let spki = csr.info.public_key.clone();
    let key = PublicKey::from_spki(&spki).map_err(|p| bad_csr(p.detail))?;
    // RFC 3279 §2.3.1 and BR §7.1.3.1.1: an RSA key's AlgorithmIdentifier has NULL parameters.
    // `from_spki` reads only the key bits, and the SubjectPublicKeyInfo goes into the
    // certificate byte for byte: anything else here reached the HSM, and a blob past the lint's
    // 16 KiB limit failed an accepted CSR at finalize (found writing the `csr` fuzz target).
    if matches!(key, PublicKey::Rsa { .. })
        && spki.algorithm.parameters != Some(der::Any::from(der::asn1::Null))
    {
        return Err(bad_csr("an RSA key's algorithm parameters must be NULL"));
    }
    match &key {
        PublicKey::Rsa { .. } if !rsa_sizes.contains(&key.bits()) => {
            return Err(bad_csr(format!(
                "RSA keys of {} bits are not allowed; allowed sizes: {rsa_sizes:?}",
                key.bits()
            )));
        }
        PublicKey::Ed25519(_) => {
            return Err(bad_csr("Ed25519 keys are not allowed in TLS certificates"));
        }
        _ => {}
    }
    if key.thumbprint() == account_thumbprint {
        return Err(bad_csr(
            "the CSR's key is the account key; use a different key",
        ));
    }
    let info = csr.info.to_der().map_err(|e| bad_csr(e.to_string()))?;
    let signature = csr
        .signature
        .as_bytes()
        .ok_or_else(|| bad_csr("the CSR signature has unused bits"))?;
    verify_signature(&spki, &csr.algorithm, &info, signature)
        .map_err(|e| bad_csr(format!("the CSR's signature does not verify: {e}")))?;

    let mut names = BTreeSet::new();
    for attr in csr.info.attributes.iter() {
        if attr.oid != const_oid::db::rfc5912::ID_EXTENSION_REQ {
            continue;
        }
        for value in attr.values.iter() {
            let req = x509_cert::request::ExtensionReq::from_der(
                &value.to_der().map_err(|e| bad_csr(e.to_string()))?,
            )
            .map_err(|e| bad_csr(format!("extensionRequest: {e}")))?;
            for ext in req.0 {
                if ext.extn_id == rfc5280::ID_CE_SUBJECT_ALT_NAME {
                    let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
                        .map_err(|e| bad_csr(format!("subjectAltName: {e}")))?;
                    for n in san.0 {
                        match n {
                            GeneralName::DnsName(d) => {
                                names.insert(d.to_string().to_ascii_lowercase());
                            }
                            other => {
                                return Err(Problem::new(
                                    ProblemType::RejectedIdentifier,
                                    format!(
                                        "the CSR asks for a name this CA does not issue: {other:?}"
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    {
        for atv in csr.info.subject.iter() {
            if atv.oid == const_oid::db::rfc4519::CN {
                let cn = der::asn1::Utf8StringRef::try_from(&atv.value)
                    .map(|s| s.as_str().to_owned())
                    .or_else(|_| {
                        der::asn1::PrintableStringRef::try_from(&atv.value)
                            .map(|s| s.as_str().to_owned())
                    })
                    .or_else(|_| {
                        der::asn1::Ia5StringRef::try_from(&atv.value).map(|s| s.as_str().to_owned())
                    })
                    .map_err(|_| bad_csr("the CSR's common name is not a string"))?;
                names.insert(cn.to_ascii_lowercase());
            }
        }
    }
    if &names != order_names {
        let extra: Vec<_> = names.difference(order_names).cloned().collect();
        let missing: Vec<_> = order_names.difference(&names).cloned().collect();
        return Err(bad_csr(format!(
            "the CSR's names differ from the order's (not in the order: {extra:?}; missing: {missing:?})"
        )));
    }
    Ok(CheckedCsr { spki, key, names })
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

/// What a leaf certificate will say: everything the lint checks the TBS against.
#[derive(Debug, Clone)]
pub struct LeafPlan {
    pub serial: Vec<u8>,
    pub names: BTreeSet<String>,
    pub spki: SubjectPublicKeyInfoOwned,
    pub rsa: bool,
    pub not_before: i64,
    pub not_after: i64,
    /// The OCSP responder, in the AIA (when the profile's `status` includes OCSP).
    pub ocsp_url: Option<String>,
    pub ca_issuers_url: Option<String>,
    /// The URL of the certificate's CRL shard, in its CRL Distribution Points (when the
    /// profile's `status` includes CRLs); fixed here, at issuance, for the certificate's life.
    pub crl_url: Option<String>,
}

/// A fresh random serial: positive, non-zero first byte, SERIAL_BYTES long.
pub fn random_serial() -> Result<Vec<u8>, Error> {
    let mut serial = crate::random_bytes::<SERIAL_BYTES>()?.to_vec();
    serial[0] &= 0x7f;
    if serial[0] == 0 {
        serial[0] = 0x01;
    }
    Ok(serial)
}

fn dns_names(names: &BTreeSet<String>) -> Result<SubjectAltName, Error> {
    Ok(SubjectAltName(
        names
            .iter()
            .map(|n| Ia5String::new(n).map(GeneralName::DnsName))
            .collect::<Result<_, _>>()?,
    ))
}

/// One distribution point, a full name of one URI: the certificate's CRL shard (BR
/// §7.1.2.11.2: HTTP URL of a CRL covering it; no reasons, no cRLIssuer).
fn crl_distribution_points(url: &str) -> Result<CrlDistributionPoints, Error> {
    Ok(CrlDistributionPoints(vec![DistributionPoint {
        distribution_point: Some(DistributionPointName::FullName(vec![
            GeneralName::UniformResourceIdentifier(Ia5String::new(url)?),
        ])),
        reasons: None,
        crl_issuer: None,
    }]))
}

/// Builds a leaf's TBSCertificate (DER).
pub fn build_leaf_tbs(
    plan: &LeafPlan,
    issuer: &IssuerCert,
    signature: &AlgorithmIdentifierOwned,
) -> Result<Vec<u8>, Error> {
    let first = plan.names.iter().find(|n| n.len() <= 64);
    let subject = match first {
        Some(cn) => Name::from_str(&format!("CN={cn}")).map_err(|e| Error::Build(e.to_string()))?,
        None => Name::default(),
    };
    let mut usages = KeyUsages::DigitalSignature.into();
    if plan.rsa {
        usages |= KeyUsages::KeyEncipherment;
    }
    let mut aia = Vec::new();
    for (method, url) in [
        (rfc5280::ID_AD_OCSP, &plan.ocsp_url),
        (rfc5280::ID_AD_CA_ISSUERS, &plan.ca_issuers_url),
    ] {
        if let Some(url) = url {
            aia.push(AccessDescription {
                access_method: method,
                access_location: GeneralName::UniformResourceIdentifier(Ia5String::new(url)?),
            });
        }
    }
    let mut extensions = vec![
        extension(rfc5280::ID_CE_KEY_USAGE, true, &KeyUsage(usages))?,
        extension(
            rfc5280::ID_CE_EXT_KEY_USAGE,
            false,
            &ExtendedKeyUsage(vec![rfc5280::ID_KP_SERVER_AUTH]),
        )?,
        extension(
            rfc5280::ID_CE_BASIC_CONSTRAINTS,
            true,
            &BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
        )?,
        extension(
            rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER,
            false,
            &AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(issuer.key_id.clone())?),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
        )?,
        extension(
            rfc5280::ID_CE_CERTIFICATE_POLICIES,
            false,
            &CertificatePolicies(vec![PolicyInformation {
                policy_identifier: POLICY_DOMAIN_VALIDATED,
                policy_qualifiers: None,
            }]),
        )?,
        // Critical when the subject is empty (RFC 5280 §4.2.1.6).
        extension(
            rfc5280::ID_CE_SUBJECT_ALT_NAME,
            first.is_none(),
            &dns_names(&plan.names)?,
        )?,
    ];
    // The configuration guarantees an entry (OCSP or caIssuers), as BR §7.1.2.7.7 requires;
    // the lint refuses a certificate without one.
    if !aia.is_empty() {
        extensions.push(extension(
            rfc5280::ID_PE_AUTHORITY_INFO_ACCESS,
            false,
            &AuthorityInfoAccessSyntax(aia),
        )?);
    }
    if let Some(url) = &plan.crl_url {
        extensions.push(extension(
            rfc5280::ID_CE_CRL_DISTRIBUTION_POINTS,
            false,
            &crl_distribution_points(url)?,
        )?);
    }
    let tbs = Tbs {
        version: Version::V3,
        serial_number: SerialNumber::new(&plan.serial)?,
        signature: signature.clone(),
        issuer: issuer.subject.clone(),
        validity: Validity {
            not_before: x509_time(plan.not_before)?,
            not_after: x509_time(plan.not_after)?,
        },
        subject,
        subject_public_key_info: plan.spki.clone(),
        extensions: Some(extensions),
    };
    Ok(tbs.to_der()?)
}

/// The pre-signing lint: decodes `tbs_der` with `x509-cert` and checks it says exactly what
/// `plan` intended under the issuer and signature algorithm, and nothing else. A failure here
/// never reaches an HSM.
pub fn lint(
    tbs_der: &[u8],
    plan: &LeafPlan,
    issuer: &IssuerCert,
    signature: &AlgorithmIdentifierOwned,
) -> Result<(), Error> {
    let fail = |m: String| Err(Error::Lint(m));
    if tbs_der.len() > MAX_TBS_BYTES {
        return fail(format!(
            "TBS is {} bytes (limit {MAX_TBS_BYTES})",
            tbs_der.len()
        ));
    }
    let tbs = x509_cert::TbsCertificate::from_der(tbs_der)
        .map_err(|e| Error::Lint(format!("does not decode: {e}")))?;
    if tbs.to_der().map_err(|e| Error::Lint(e.to_string()))? != tbs_der {
        return fail("not canonical DER".into());
    }
    if tbs.version() != Version::V3 {
        return fail("not version 3".into());
    }
    let serial = tbs.serial_number().as_bytes();
    if serial != plan.serial.as_slice()
        || serial.len() < 9
        || serial.len() > 20
        || serial[0] & 0x80 != 0
    {
        return fail(format!(
            "serial {} is not the planned positive 9..20-byte serial",
            hex::encode(serial)
        ));
    }
    if tbs.signature() != signature {
        return fail("signature algorithm differs from the issuing key's".into());
    }
    if tbs.issuer() != &issuer.subject {
        return fail("issuer is not the intermediate's subject".into());
    }
    let (nb, na) = (
        time_unix(&tbs.validity().not_before),
        time_unix(&tbs.validity().not_after),
    );
    if nb != plan.not_before || na != plan.not_after || na <= nb {
        return fail(format!(
            "validity {nb}..{na} is not the profile's {}..{}",
            plan.not_before, plan.not_after
        ));
    }
    if na - nb > 398 * 86_400 {
        return fail("validity longer than 398 days (BR §6.3.2)".into());
    }
    if tbs.subject_public_key_info() != &plan.spki {
        return fail("subject public key is not the CSR's".into());
    }
    if tbs.issuer_unique_id().is_some() || tbs.subject_unique_id().is_some() {
        return fail("unique identifiers present".into());
    }
    let extensions = tbs.extensions().map(|e| e.as_slice()).unwrap_or_default();
    let mut seen = BTreeSet::new();
    let mut san_names = None;
    for ext in extensions {
        if !seen.insert(ext.extn_id) {
            return fail(format!("extension {} appears twice", ext.extn_id));
        }
        let value = ext.extn_value.as_bytes();
        let id = ext.extn_id;
        if id == rfc5280::ID_CE_BASIC_CONSTRAINTS {
            let bc = BasicConstraints::from_der(value).map_err(|e| Error::Lint(e.to_string()))?;
            if bc.ca || !ext.critical {
                return fail("basicConstraints must be critical with cA false".into());
            }
        } else if id == rfc5280::ID_CE_KEY_USAGE {
            let ku = KeyUsage::from_der(value).map_err(|e| Error::Lint(e.to_string()))?;
            if !ext.critical || !ku.digital_signature() || ku.key_cert_sign() || ku.crl_sign() {
                return fail(
                    "keyUsage must be critical, digitalSignature, never keyCertSign/cRLSign".into(),
                );
            }
        } else if id == rfc5280::ID_CE_EXT_KEY_USAGE {
            let eku = ExtendedKeyUsage::from_der(value).map_err(|e| Error::Lint(e.to_string()))?;
            if eku.0 != [rfc5280::ID_KP_SERVER_AUTH] {
                return fail("extKeyUsage must be serverAuth only".into());
            }
        } else if id == rfc5280::ID_CE_SUBJECT_ALT_NAME {
            let san = SubjectAltName::from_der(value).map_err(|e| Error::Lint(e.to_string()))?;
            let mut names = BTreeSet::new();
            for n in san.0 {
                match n {
                    GeneralName::DnsName(d) => {
                        names.insert(d.to_string());
                    }
                    _ => return fail("subjectAltName holds a non-DNS name".into()),
                }
            }
            san_names = Some(names);
        } else if id == rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER {
            let aki =
                AuthorityKeyIdentifier::from_der(value).map_err(|e| Error::Lint(e.to_string()))?;
            if aki.key_identifier.as_ref().map(|k| k.as_bytes()) != Some(issuer.key_id.as_slice()) {
                return fail(
                    "authorityKeyIdentifier is not the intermediate's key identifier".into(),
                );
            }
        } else if id == rfc5280::ID_PE_AUTHORITY_INFO_ACCESS {
            let aia = AuthorityInfoAccessSyntax::from_der(value)
                .map_err(|e| Error::Lint(e.to_string()))?;
            // Exactly the planned entries, in order: OCSP, then caIssuers.
            let found: Vec<(ObjectIdentifier, Option<&str>)> = aia
                .0
                .iter()
                .map(|a| {
                    let url = match &a.access_location {
                        GeneralName::UniformResourceIdentifier(u) => Some(u.as_str()),
                        _ => None,
                    };
                    (a.access_method, url)
                })
                .collect();
            let planned: Vec<(ObjectIdentifier, Option<&str>)> = [
                (rfc5280::ID_AD_OCSP, plan.ocsp_url.as_deref()),
                (rfc5280::ID_AD_CA_ISSUERS, plan.ca_issuers_url.as_deref()),
            ]
            .into_iter()
            .filter(|(_, url)| url.is_some())
            .collect();
            if found.is_empty() || found != planned {
                return fail(format!(
                    "authorityInfoAccess {found:?} is not the profile's {planned:?}"
                ));
            }
        } else if id == rfc5280::ID_CE_CRL_DISTRIBUTION_POINTS {
            let Some(url) = &plan.crl_url else {
                return fail(
                    "cRLDistributionPoints in a certificate whose profile has none".into(),
                );
            };
            let cdp =
                CrlDistributionPoints::from_der(value).map_err(|e| Error::Lint(e.to_string()))?;
            if ext.critical || cdp != crl_distribution_points(url)? {
                return fail(format!(
                    "cRLDistributionPoints is not one non-critical point naming the shard {url}"
                ));
            }
        } else if id != rfc5280::ID_CE_CERTIFICATE_POLICIES {
            return fail(format!("unexpected extension {id}"));
        }
    }
    for required in [
        rfc5280::ID_CE_BASIC_CONSTRAINTS,
        rfc5280::ID_CE_KEY_USAGE,
        rfc5280::ID_CE_EXT_KEY_USAGE,
        rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER,
        rfc5280::ID_PE_AUTHORITY_INFO_ACCESS,
    ] {
        if !seen.contains(&required) {
            return fail(format!("extension {required} missing"));
        }
    }
    if plan.crl_url.is_some() && !seen.contains(&rfc5280::ID_CE_CRL_DISTRIBUTION_POINTS) {
        return fail("cRLDistributionPoints missing: the profile publishes CRLs".into());
    }
    if san_names.as_ref() != Some(&plan.names) {
        return fail(format!(
            "subjectAltName {san_names:?} is not the order's names {:?}",
            plan.names
        ));
    }
    {
        for atv in tbs.subject().iter() {
            let cn = der::asn1::Utf8StringRef::try_from(&atv.value)
                .map(|s| s.as_str().to_owned())
                .ok();
            if atv.oid != const_oid::db::rfc4519::CN || !cn.is_some_and(|c| plan.names.contains(&c))
            {
                return fail("subject holds something other than a CN from the SAN".into());
            }
        }
    }
    Ok(())
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

/// Signs TBS certificates through the gateway's `SignBatch`, gathering concurrent requests into
/// one call: finalizations that arrive together share a round trip and the HSM's batch.
#[derive(Debug, Clone)]
pub struct CertSigner {
    queue: mpsc::Sender<Job>,
    /// The issuing key's signature algorithm, as put in each TBS.
    pub algorithm: AlgorithmIdentifierOwned,
    pub algorithm_der: Vec<u8>,
}

#[derive(Debug)]
struct Job {
    tbs: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<u8>, Error>>,
}

impl CertSigner {
    /// Asks the gateway for the issuing key and starts the batching task.
    pub async fn start(
        channel: Channel,
        key: String,
        batch: usize,
        timeout: Duration,
    ) -> Result<(Self, SubjectPublicKeyInfoOwned), Error> {
        let mut client = SignerClient::new(channel);
        let mut request =
            tonic::Request::new(hsmgate_signer_api::v1::GetPublicKeyRequest { key: key.clone() });
        request.set_timeout(timeout);
        let public = client
            .get_public_key(request)
            .await
            .map_err(|s| Error::Gateway(format!("GetPublicKey {key}: {}", s.message())))?
            .into_inner();
        let spki = SubjectPublicKeyInfoOwned::from_der(&public.spki_der)?;
        let algorithm = signature_algorithm(public.key_type)?;
        let algorithm_der = algorithm.to_der()?;
        let (tx, rx) = mpsc::channel(batch * 16);
        tokio::spawn(batch_loop(
            client,
            key,
            batch.max(1),
            timeout,
            rx,
            algorithm_der.clone(),
        ));
        Ok((
            Self {
                queue: tx,
                algorithm,
                algorithm_der,
            },
            spki,
        ))
    }

    /// The signature over `tbs` (DER for ECDSA).
    pub async fn sign(&self, tbs: Vec<u8>) -> Result<Vec<u8>, Error> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { tbs, reply })
            .await
            .map_err(|_| Error::Internal("the signing task stopped".into()))?;
        answer
            .await
            .map_err(|_| Error::Internal("the signing task dropped a request".into()))?
    }
}

/// At most this many `SignBatch` calls in flight.
const IN_FLIGHT: usize = 4;

/// `SignBatch`, retried while it fails in transport (the gateway unreachable, or gone
/// mid-call) and `timeout` has not passed: with
/// several gateways (`gateway.url` a list) the call that went to a gateway that just died is
/// repeated on another once the channel's probe has taken the dead one out, so no
/// finalization fails because one gateway did. A retried call may sign a TBS that an earlier
/// attempt also signed, if that gateway died after signing: the earlier signature never reached
/// the frontend, and only the one that did is recorded and issued.
async fn sign_batch_retried(
    client: &mut SignerClient<Channel>,
    batch: SignBatchRequest,
    timeout: Duration,
) -> Result<tonic::Response<hsmgate_signer_api::v1::SignBatchResponse>, tonic::Status> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut request = tonic::Request::new(batch.clone());
        request.set_timeout(left);
        if let Ok(v) = PAYLOAD_TBS_CERTIFICATE.parse() {
            request.metadata_mut().insert(PAYLOAD_HEADER, v);
        }
        match client.sign_batch(request).await {
            Err(s)
                if hsmgate_signer_api::client::is_transport_failure(&s)
                    && left > 2 * hsmgate_signer_api::client::PROBE_INTERVAL =>
            {
                tracing::warn!(error = %s.message(), "SignBatch unavailable; retrying on another gateway");
                tokio::time::sleep(2 * hsmgate_signer_api::client::PROBE_INTERVAL).await;
            }
            answer => return answer,
        }
    }
}

async fn batch_loop(
    client: SignerClient<Channel>,
    key: String,
    batch: usize,
    timeout: Duration,
    mut rx: mpsc::Receiver<Job>,
    algorithm_der: Vec<u8>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        // Whatever queued while the previous calls ran goes in this one.
        let mut jobs = vec![first];
        while jobs.len() < batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut client = client.clone();
        let key = key.clone();
        let algorithm_der = algorithm_der.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let requests = jobs
                .iter()
                .map(|j| SignRequest {
                    key: key.clone(),
                    algorithm: SignatureAlgorithm::Unspecified as i32,
                    input: Some(sign_request::Input::Message(j.tbs.clone())),
                })
                .collect();
            match sign_batch_retried(&mut client, SignBatchRequest { requests }, timeout).await {
                Ok(answer) => {
                    let responses = answer.into_inner().responses;
                    if responses.len() != jobs.len() {
                        for job in jobs {
                            let _ = job.reply.send(Err(Error::Gateway(
                                "SignBatch answered a different number of signatures".into(),
                            )));
                        }
                        return;
                    }
                    for (job, r) in jobs.into_iter().zip(responses) {
                        let result = if r.algorithm_identifier != algorithm_der {
                            Err(Error::Gateway(
                                "the gateway signed with another algorithm than the TBS names"
                                    .into(),
                            ))
                        } else {
                            Ok(r.signature)
                        };
                        let _ = job.reply.send(result);
                    }
                }
                Err(status) => {
                    let detail = format!("SignBatch: {:?}: {}", status.code(), status.message());
                    for job in jobs {
                        let _ = job.reply.send(Err(Error::Gateway(detail.clone())));
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> (IssuerCert, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test intermediate");
        let cert = params.self_signed(&key).expect("cert");
        (IssuerCert::from_der(cert.der()).expect("issuer"), key)
    }

    fn csr(names: &[&str]) -> (Vec<u8>, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        // rcgen's default CN is not a DNS name; a real client's CN is one of its SANs or absent.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        let csr = params.serialize_request(&key).expect("csr");
        (csr.der().to_vec(), key)
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn csr_names_must_be_the_orders() {
        let (der_bytes, _) = csr(&["a.example.test", "b.example.test"]);
        let ok = check_csr(
            &der_bytes,
            &set(&["a.example.test", "b.example.test"]),
            &[2048],
            "x",
        )
        .expect("ok");
        assert_eq!(ok.names, set(&["a.example.test", "b.example.test"]));
        let err =
            check_csr(&der_bytes, &set(&["a.example.test"]), &[2048], "x").expect_err("extra name");
        assert_eq!(err.kind, ProblemType::BadCsr);
        assert!(err.detail.contains("b.example.test"), "{}", err.detail);
    }

    #[test]
    fn a_csr_with_a_broken_signature_is_refused() {
        let (mut der_bytes, _) = csr(&["a.example.test"]);
        let last = der_bytes.len() - 3;
        der_bytes[last] ^= 0x55;
        let err =
            check_csr(&der_bytes, &set(&["a.example.test"]), &[2048], "x").expect_err("bad sig");
        assert_eq!(err.kind, ProblemType::BadCsr);
        assert_eq!(
            check_csr(b"junk", &set(&["a"]), &[2048], "x")
                .map_err(|p| p.kind)
                .err(),
            Some(ProblemType::BadCsr)
        );
    }

    #[test]
    fn an_rsa_key_whose_parameters_are_not_null_is_refused() {
        // The `csr` fuzz target's regression seeds: RSA 2048 CSRs, validly signed, whose key's
        // AlgorithmIdentifier carries a 17,000-byte OCTET STRING as parameters (accepted, then
        // the 17 KiB TBS built from it refused by the lint), or no parameters (accepted and
        // copied into the certificate: not the encoding the BRs require).
        let names = set(&["example.test", "www.example.test"]);
        for (what, der_bytes) in [
            (
                "a parameters blob",
                &include_bytes!("../../fuzz/corpus/csr/seed-regression-rsa-key-parameters-blob.der")[..],
            ),
            (
                "absent parameters",
                &include_bytes!("../../fuzz/corpus/csr/seed-regression-rsa-key-parameters-absent.der")
                    [..],
            ),
        ] {
            let err = check_csr(der_bytes, &names, &[2048], "x").expect_err(what);
            assert_eq!(err.kind, ProblemType::BadCsr, "{what}");
            assert!(err.detail.contains("NULL"), "{what}: {}", err.detail);
        }
        // The same key and names with NULL parameters, as openssl makes the CSR, are accepted.
        let openssl = include_bytes!("../../fuzz/corpus/csr/seed-rsa2048-cn-san.der");
        check_csr(openssl, &names, &[2048], "x").expect("NULL parameters");
    }

    fn plan(spki: SubjectPublicKeyInfoOwned) -> LeafPlan {
        LeafPlan {
            serial: random_serial().expect("serial"),
            names: set(&["a.example.test", "b.example.test"]),
            spki,
            rsa: false,
            not_before: 1_800_000_000,
            not_after: 1_800_000_000 + 90 * 86_400,
            ocsp_url: Some("http://127.0.0.1:8080".into()),
            ca_issuers_url: None,
            crl_url: None,
        }
    }

    /// The test issuer and its key, the P-256 signature algorithm, and the plan of a leaf for
    /// a checked CSR naming two names.
    fn leaf() -> (
        IssuerCert,
        rcgen::KeyPair,
        AlgorithmIdentifierOwned,
        LeafPlan,
    ) {
        let (issuer, issuer_key) = issuer();
        let (der_bytes, _) = csr(&["a.example.test", "b.example.test"]);
        let checked = check_csr(
            &der_bytes,
            &set(&["a.example.test", "b.example.test"]),
            &[2048],
            "x",
        )
        .expect("csr");
        let alg =
            signature_algorithm(hsmgate_signer_api::v1::KeyType::EcdsaP256 as i32).expect("alg");
        (issuer, issuer_key, alg, plan(checked.spki.clone()))
    }

    /// Each profile's status channels: a CRL-only certificate names its shard in its CRL
    /// Distribution Points and carries no OCSP URL; the lint holds the TBS to exactly the
    /// planned URLs, so a certificate cannot name another shard, lose its shard, or gain an
    /// OCSP URL its profile does not have. Read back by `openssl x509`, not by our decoder.
    #[test]
    fn crl_distribution_points_and_aia_follow_the_profile() {
        let (issuer, _, alg, mut crl_only) = leaf();
        crl_only.ocsp_url = None;
        crl_only.ca_issuers_url = Some("http://127.0.0.1:9/issuer.der".into());
        crl_only.crl_url = Some("http://127.0.0.1:8080/crl/dev-p256/17.crl".into());
        let tbs = build_leaf_tbs(&crl_only, &issuer, &alg).expect("tbs");
        lint(&tbs, &crl_only, &issuer, &alg).expect("lint passes");
        // openssl reads the extensions of the TBS wrapped as a (badly signed) certificate.
        let cert = SignedCertificate {
            tbs: der::Any::from_der(&tbs).expect("any"),
            algorithm: alg.clone(),
            signature: BitString::from_bytes(&[0; 64]).expect("bits"),
        }
        .to_der()
        .expect("der");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("leaf.der");
        std::fs::write(&path, &cert).expect("write");
        let out = std::process::Command::new("openssl")
            .args(["x509", "-inform", "DER", "-noout", "-text", "-in"])
            .arg(&path)
            .output()
            .expect("openssl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("X509v3 CRL Distribution Points")
                && text.contains("URI:http://127.0.0.1:8080/crl/dev-p256/17.crl"),
            "{text}"
        );
        assert!(
            text.contains("CA Issuers - URI:http://127.0.0.1:9/issuer.der"),
            "{text}"
        );
        assert!(!text.contains("OCSP - URI"), "{text}");

        // Another shard, no shard, or an OCSP URL the profile lacks: refused on these bytes.
        let mut other_shard = crl_only.clone();
        other_shard.crl_url = Some("http://127.0.0.1:8080/crl/dev-p256/18.crl".into());
        let mut no_crl = crl_only.clone();
        no_crl.crl_url = None;
        let mut with_ocsp = crl_only.clone();
        with_ocsp.ocsp_url = Some("http://127.0.0.1:8080".into());
        for (what, p) in [
            ("another shard", &other_shard),
            ("no CRL", &no_crl),
            ("OCSP", &with_ocsp),
        ] {
            match lint(&tbs, p, &issuer, &alg) {
                Err(Error::Lint(m)) => eprintln!("{what}: {m}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        // A profile with both: both present, and a TBS built for CRL-only fails its lint.
        let mut both = crl_only.clone();
        both.ocsp_url = Some("http://127.0.0.1:8080".into());
        let tbs_both = build_leaf_tbs(&both, &issuer, &alg).expect("tbs");
        lint(&tbs_both, &both, &issuer, &alg).expect("both pass");
        assert!(lint(&tbs_both, &crl_only, &issuer, &alg).is_err());
    }

    #[test]
    fn a_built_leaf_passes_the_lint_and_a_tampered_one_does_not() {
        let (issuer, issuer_key, alg, plan) = leaf();
        let tbs = build_leaf_tbs(&plan, &issuer, &alg).expect("tbs");
        lint(&tbs, &plan, &issuer, &alg).expect("lint passes");

        // Another plan (a name the order does not have) must fail the lint on the same bytes.
        let mut other = plan.clone();
        other.names.insert("evil.example.test".into());
        assert!(matches!(
            lint(&tbs, &other, &issuer, &alg),
            Err(Error::Lint(_))
        ));
        let mut longer = plan.clone();
        longer.not_after += 1;
        assert!(matches!(
            lint(&tbs, &longer, &issuer, &alg),
            Err(Error::Lint(_))
        ));
        // A CA:true certificate never passes.
        let mut ca = plan.clone();
        ca.serial = random_serial().expect("serial");
        let tbs_ca = build_leaf_tbs(&ca, &issuer, &alg).expect("tbs");
        let mut bytes = tbs_ca.clone();
        // basicConstraints `30 00` → `30 03 01 01 ff` changes lengths; instead flip the serial.
        bytes[15] ^= 1;
        assert!(lint(&bytes, &ca, &issuer, &alg).is_err());

        // Signed with the issuer's key, the certificate assembles and verifies; with another
        // key it does not.
        let signature = sign_p256(&issuer_key, &tbs);
        let cert = assemble(&tbs, &alg, &signature, &issuer.spki).expect("assembles");
        x509_cert::Certificate::from_der(&cert).expect("parses");
        let (_, stranger) = csr(&["x"]);
        let forged = sign_p256(&stranger, &tbs);
        assert!(assemble(&tbs, &alg, &forged, &issuer.spki).is_err());
    }

    fn sign_p256(key: &rcgen::KeyPair, message: &[u8]) -> Vec<u8> {
        let pkcs8 = key.serialize_der();
        let rng = ring::rand::SystemRandom::new();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &pkcs8,
            &rng,
        )
        .expect("pkcs8");
        pair.sign(&rng, message).expect("sign").as_ref().to_vec()
    }
}
