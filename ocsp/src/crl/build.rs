//! Building a shard's `CertificateList` (RFC 5280 §5, BR §7.2) with RustCrypto's `x509-cert`
//! CRL types and `der`; the signature comes from the gateway ([`CrlSigner`]).
//!
//! What a shard holds:
//! - version v2, `signature` = the issuer key's algorithm (the gateway is asked for exactly that
//!   algorithm, and its answer must name it: the CRL carries it inside what is signed), issuer
//!   = the issuer certificate's subject, thisUpdate, nextUpdate;
//! - crlExtensions: authorityKeyIdentifier (the issuer's subjectKeyIdentifier, else the SHA-1
//!   of its key, RFC 5280 §4.2.1.2 method 1), cRLNumber (non-critical), and a critical
//!   issuingDistributionPoint whose fullName is the shard's URL with `onlyContainsUserCerts`
//!   (BR §7.2.2: required of a partitioned CRL, and equal to the certificates' CRL DP);
//! - one entry per revoked, unexpired certificate of the shard: serial, revocationDate and a
//!   reasonCode only for the reasons BR §7.2.2 allows in subscriber CRLs — keyCompromise (1),
//!   affiliationChanged (3), superseded (4), cessationOfOperation (5), privilegeWithdrawn (9).
//!   `unspecified` (0) is never written (the entry has no reasonCode); a reason BR forbids for
//!   subscriber certificates (caCompromise, certificateHold, removeFromCRL, aACompromise) is
//!   left out too, and counted ([`reason_extension`] returns `None`), since dropping the entry
//!   would un-revoke the certificate.
//!
//! x509-cert 0.3.0 gives `IssuingDistributionPoint` the OID of subjectInfoAccess
//! (`AssociatedOid`); the extension is built with id-ce-issuingDistributionPoint (2.5.29.28)
//! explicitly, and a test checks the OID in the DER.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use der08::asn1::{AnyRef, BitString, Ia5String, OctetString, Uint};
use der08::oid::ObjectIdentifier;
use der08::oid::db::{rfc5280, rfc5912, rfc8410};
use der08::{DateTime, Decode, Encode};
use hsmgate_signer_api::v1::SignatureAlgorithm;
use sha1_010::{Digest, Sha1};
use x509_cert_03::Certificate;
use x509_cert_03::certificate::Rfc5280;
use x509_cert_03::crl::{RevokedCert, TbsCertList};
use x509_cert_03::ext::Extension;
use x509_cert_03::ext::pkix::crl::dp::IssuingDistributionPoint;
use x509_cert_03::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert_03::ext::pkix::{AuthorityKeyIdentifier, CrlReason};
use x509_cert_03::name::Name;
use x509_cert_03::serial_number::SerialNumber;
use x509_cert_03::spki::AlgorithmIdentifierOwned;
use x509_cert_03::time::Time;

use crate::crl_shard::CrlEntry;
use crate::error::Error;
use crate::record::{IssuerName, ReasonCode};

fn encoding(what: &str, e: impl fmt::Display) -> Error {
    Error::Encoding {
        what: what.to_owned(),
        detail: e.to_string(),
    }
}

/// Unix seconds as an RFC 5280 §5.1.2.4 Time: UTCTime through 2049, GeneralizedTime after.
pub fn time(unix_secs: i64, what: &str) -> Result<Time, Error> {
    let secs = u64::try_from(unix_secs)
        .map_err(|_| encoding(what, format!("{unix_secs} is before 1970")))?;
    DateTime::from_unix_duration(Duration::from_secs(secs))
        .map(Time::from)
        .map_err(|e| encoding(what, e))
}

/// The reasonCode a subscriber CRL may carry for `code` (BR §7.2.2), or `None` (no reasonCode:
/// `unspecified`, or a reason BR does not allow for subscriber certificates).
pub fn listed_reason(code: ReasonCode) -> Option<CrlReason> {
    match code {
        1 => Some(CrlReason::KeyCompromise),
        3 => Some(CrlReason::AffiliationChanged),
        4 => Some(CrlReason::Superseded),
        5 => Some(CrlReason::CessationOfOperation),
        9 => Some(CrlReason::PrivilegeWithdrawn),
        _ => None,
    }
}

/// The reasonCode entry extension for `code`, if BR allow one (see [`listed_reason`]).
pub fn reason_extension(code: ReasonCode) -> Result<Option<Extension>, Error> {
    let Some(reason) = listed_reason(code) else {
        return Ok(None);
    };
    let value = reason.to_der().map_err(|e| encoding("reasonCode", e))?;
    Ok(Some(Extension {
        extn_id: rfc5280::ID_CE_CRL_REASONS,
        critical: false,
        extn_value: OctetString::new(value).map_err(|e| encoding("reasonCode", e))?,
    }))
}

fn extension(
    oid: ObjectIdentifier,
    critical: bool,
    value: &impl Encode,
) -> Result<Extension, Error> {
    let what = oid.to_string();
    let der = value.to_der().map_err(|e| encoding(&what, e))?;
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(der).map_err(|e| encoding(&what, e))?,
    })
}

/// What every shard of one issuer shares: its name, key identifier and signature algorithm.
#[derive(Clone, Debug)]
pub struct IssuerCrl {
    pub name: IssuerName,
    /// The gateway key that signs (the issuer's own).
    pub signing_key: String,
    issuer: Name,
    aki: Extension,
    algorithm: SignatureAlgorithm,
    signature: AlgorithmIdentifierOwned,
    signature_der: Vec<u8>,
    /// reasonCode extensions by code, built once.
    reasons: Vec<Option<Extension>>,
}

impl IssuerCrl {
    /// From the issuer's DER certificate.
    pub fn new(
        name: &IssuerName,
        signing_key: &str,
        certificate_der: &[u8],
    ) -> Result<Self, Error> {
        let fail = |detail: String| Error::Config {
            path: format!("issuer {}", name.0),
            detail,
        };
        let cert = Certificate::from_der(certificate_der)
            .map_err(|e| fail(format!("certificate: {e}")))?;
        let tbs = cert.tbs_certificate();
        let spki = tbs.subject_public_key_info();
        let key_id = match tbs.extensions().and_then(|exts| {
            exts.iter()
                .find(|e| e.extn_id == rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER)
        }) {
            Some(ski) => OctetString::from_der(ski.extn_value.as_bytes())
                .map_err(|e| fail(format!("subjectKeyIdentifier: {e}")))?
                .as_bytes()
                .to_vec(),
            None => Sha1::digest(spki.subject_public_key.raw_bytes()).to_vec(),
        };
        let aki = extension(
            rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER,
            false,
            &AuthorityKeyIdentifier {
                key_identifier: Some(
                    OctetString::new(key_id).map_err(|e| fail(format!("key identifier: {e}")))?,
                ),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
        )?;
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        let (algorithm, oid, null_params) = match (spki.algorithm.oid, curve) {
            (rfc5912::ID_EC_PUBLIC_KEY, Some(rfc5912::SECP_256_R_1)) => (
                SignatureAlgorithm::EcdsaSha256,
                rfc5912::ECDSA_WITH_SHA_256,
                false,
            ),
            (rfc5912::ID_EC_PUBLIC_KEY, Some(rfc5912::SECP_384_R_1)) => (
                SignatureAlgorithm::EcdsaSha384,
                rfc5912::ECDSA_WITH_SHA_384,
                false,
            ),
            (rfc5912::RSA_ENCRYPTION, _) => (
                SignatureAlgorithm::RsaPkcs1Sha256,
                rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
                true,
            ),
            (rfc8410::ID_ED_25519, _) => (SignatureAlgorithm::Ed25519, rfc8410::ID_ED_25519, false),
            (other, _) => {
                return Err(fail(format!(
                    "no CRL signature algorithm for key type {other}"
                )));
            }
        };
        // RFC 4055 §5: sha256WithRSAEncryption has NULL parameters; RFC 5758 §3.2 and RFC 8410
        // §3: ECDSA and Ed25519 have none.
        let signature = AlgorithmIdentifierOwned {
            oid,
            parameters: null_params.then(|| der08::asn1::Any::from(der08::asn1::Null)),
        };
        let signature_der = signature
            .to_der()
            .map_err(|e| fail(format!("signature algorithm: {e}")))?;
        let reasons = (0..=10u8)
            .map(reason_extension)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: name.clone(),
            signing_key: signing_key.to_owned(),
            issuer: tbs.subject().clone(),
            aki,
            algorithm,
            signature,
            signature_der,
            reasons,
        })
    }

    /// The algorithm the gateway must sign with (named inside the TBSCertList).
    pub fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }

    /// The DER TBSCertList of a shard. `entries` in any order; those whose reason BR do not
    /// allow get no reasonCode.
    pub fn tbs(
        &self,
        url: &str,
        number: i64,
        this_update: i64,
        next_update: i64,
        entries: &[CrlEntry],
    ) -> Result<Vec<u8>, Error> {
        let number = u64::try_from(number)
            .map_err(|_| encoding("cRLNumber", format!("{number} is negative")))?;
        let crl_number = Uint::new(&number.to_be_bytes()).map_err(|e| encoding("cRLNumber", e))?;
        let idp = IssuingDistributionPoint {
            distribution_point: Some(DistributionPointName::FullName(vec![
                GeneralName::UniformResourceIdentifier(
                    Ia5String::new(url).map_err(|e| encoding("shard URL", e))?,
                ),
            ])),
            only_contains_user_certs: true,
            only_contains_ca_certs: false,
            only_some_reasons: None,
            indirect_crl: false,
            only_contains_attribute_certs: false,
        };
        let extensions = vec![
            self.aki.clone(),
            extension(rfc5280::ID_CE_CRL_NUMBER, false, &crl_number)?,
            extension(rfc5280::ID_CE_ISSUING_DISTRIBUTION_POINT, true, &idp)?,
        ];
        let mut revoked = Vec::with_capacity(entries.len());
        for e in entries {
            let serial = SerialNumber::<Rfc5280>::new(e.serial.as_bytes())
                .or_else(|_| {
                    // A 20-octet serial with its top bit set encodes in 21 octets, which the
                    // constructor refuses and the decoder accepts (certificates carry them).
                    let mut der = vec![0x02, (e.serial.as_bytes().len() + 1) as u8, 0x00];
                    der.extend_from_slice(e.serial.as_bytes());
                    SerialNumber::from_der(&der)
                })
                .map_err(|err| encoding("serial number", format!("{}: {err}", e.serial)))?;
            let reason = e
                .reason
                .and_then(|r| self.reasons.get(usize::from(r)).cloned().flatten());
            revoked.push(RevokedCert {
                serial_number: serial,
                revocation_date: time(e.revoked_at, "revocationDate")?,
                crl_entry_extensions: reason.map(|r| vec![r]),
            });
        }
        TbsCertList {
            version: x509_cert_03::Version::V2,
            signature: self.signature.clone(),
            issuer: self.issuer.clone(),
            this_update: time(this_update, "thisUpdate")?,
            next_update: Some(time(next_update, "nextUpdate")?),
            // RFC 5280 §5.1.2.6: "When there are no revoked certificates, the revoked
            // certificates list MUST be absent."
            revoked_certificates: (!revoked.is_empty()).then_some(revoked),
            crl_extensions: Some(extensions),
        }
        .to_der()
        .map_err(|e| encoding("TBSCertList", e))
    }

    /// The signed `CertificateList`: `tbs` with the algorithm it names and `signature` (a DER
    /// Ecdsa-Sig-Value, or the raw RSA / Ed25519 signature). `algorithm_der` is what the
    /// gateway says it signed with, and must be this issuer's.
    pub fn assemble(
        &self,
        tbs: &[u8],
        algorithm_der: &[u8],
        signature: &[u8],
    ) -> Result<Vec<u8>, Error> {
        if algorithm_der != self.signature_der {
            return Err(encoding(
                "CRL signature",
                format!(
                    "the gateway signed with {} but the TBSCertList names {}",
                    hex::encode(algorithm_der),
                    hex::encode(&self.signature_der)
                ),
            ));
        }
        let bits = BitString::from_bytes(signature).map_err(|e| encoding("signature", e))?;
        let bits = bits.to_der().map_err(|e| encoding("signature", e))?;
        // CertificateList ::= SEQUENCE { tbsCertList, signatureAlgorithm, signatureValue }:
        // the three already-encoded elements as a SEQUENCE, without decoding the (possibly
        // 40 MB) TBSCertList again.
        let parts = vec![
            AnyRef::from_der(tbs).map_err(|e| encoding("TBSCertList", e))?,
            AnyRef::from_der(&self.signature_der).map_err(|e| encoding("algorithm", e))?,
            AnyRef::from_der(&bits).map_err(|e| encoding("signature", e))?,
        ];
        parts.to_der().map_err(|e| encoding("CertificateList", e))
    }
}

/// Signs a shard's TBSCertList: returns `(signature, DER AlgorithmIdentifier)`.
#[async_trait]
pub trait CrlSigner: Send + Sync + fmt::Debug {
    async fn sign_crl(
        &self,
        key: &str,
        algorithm: SignatureAlgorithm,
        tbs: Vec<u8>,
    ) -> Result<(Vec<u8>, Vec<u8>), Error>;
}

#[async_trait]
impl CrlSigner for hsmgate_signer_api::BatchSigner {
    async fn sign_crl(
        &self,
        key: &str,
        algorithm: SignatureAlgorithm,
        tbs: Vec<u8>,
    ) -> Result<(Vec<u8>, Vec<u8>), Error> {
        // One shard per `Sign` call: a shard can be tens of MB.
        let signed = self
            .sign_one(
                key,
                algorithm,
                hsmgate_signer_api::Payload::TbsCertList,
                tbs,
            )
            .await?;
        Ok((signed.signature, signed.algorithm_identifier))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reasons_follow_the_baseline_requirements() {
        for code in [1, 3, 4, 5, 9] {
            assert!(listed_reason(code).is_some(), "{code}");
        }
        for code in [0, 2, 6, 7, 8, 10, 11] {
            assert!(listed_reason(code).is_none(), "{code}");
        }
        let ext = reason_extension(1).unwrap().unwrap();
        assert_eq!(ext.extn_value.as_bytes(), [0x0a, 0x01, 0x01]);
        assert!(!ext.critical);
    }

    #[test]
    fn times_switch_to_generalized_in_2050() {
        assert!(matches!(
            time(1_780_000_000, "t").unwrap(),
            Time::UtcTime(_)
        ));
        assert!(matches!(
            time(2_600_000_000, "t").unwrap(),
            Time::GeneralTime(_)
        ));
        assert!(time(-1, "t").is_err());
    }
}
