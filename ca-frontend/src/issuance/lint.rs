//! The pre-signing lint (as Boulder lints before it signs): the `TBSCertificate` is **decoded
//! back with `x509-cert`** and checked against the [`LeafPlan`] — the bytes the HSM would sign,
//! not the structure that produced them.

use std::collections::BTreeSet;

use const_oid::ObjectIdentifier;
use const_oid::db::rfc5280;
use der::{Decode, Encode};
use spki::AlgorithmIdentifierOwned;
use x509_cert::certificate::Version;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityInfoAccessSyntax, AuthorityKeyIdentifier, BasicConstraints, CrlDistributionPoints,
    ExtendedKeyUsage, KeyUsage, SubjectAltName,
};
use x509_cert::time::Time;

use super::IssuerCert;
use super::tbs::{LeafPlan, crl_distribution_points};
use crate::Error;

/// A TBSCertificate larger than this is refused by the lint (real ones are ~1 KiB).
const MAX_TBS_BYTES: usize = 16 * 1024;

fn time_unix(t: &Time) -> i64 {
    i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
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
