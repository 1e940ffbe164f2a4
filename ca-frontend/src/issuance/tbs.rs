//! Building a leaf's `TBSCertificate` (RFC 5280 §4.1) from a [`LeafPlan`]: the profile's
//! extensions (BR §7.1.2.7), the certificate's CRL shard and AIA URLs, a random serial.
//!
//! The TBS is built with `x509-cert`'s types in a local [`Tbs`] structure (the crate's own keeps
//! its fields private behind a builder that wants a synchronous signer); [`super::lint`] decodes
//! the bytes back to check them.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use const_oid::ObjectIdentifier;
use const_oid::db::rfc5280;
use der::asn1::{Ia5String, OctetString};
use der::{Encode, Sequence};
use sha2::{Digest, Sha256};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::certificate::Version;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::certpolicy::PolicyInformation;
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{
    AccessDescription, AuthorityInfoAccessSyntax, AuthorityKeyIdentifier, BasicConstraints,
    CertificatePolicies, CrlDistributionPoints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName,
};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Time;

use super::IssuerCert;
use crate::Error;

/// CA/Browser Forum TLS BR §7.1.6.1: domain validated.
const POLICY_DOMAIN_VALIDATED: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.140.1.2.1");
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

/// Unix seconds as an X.509 `Time` (UTCTime before 2050, GeneralizedTime after).
pub fn x509_time(unix: i64) -> Result<Time, Error> {
    let secs = u64::try_from(unix).map_err(|_| Error::Build(format!("time {unix} before 1970")))?;
    let dt = der::DateTime::from_unix_duration(Duration::from_secs(secs))?;
    Ok(Time::from(dt))
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

/// RFC 7093 §2 method 1: the leftmost 160 bits of SHA-256 of the subjectPublicKey.
pub fn key_identifier(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    let bits = spki.subject_public_key.raw_bytes();
    Sha256::digest(bits)[..20].to_vec()
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
pub(super) fn crl_distribution_points(url: &str) -> Result<CrlDistributionPoints, Error> {
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
