//! The CA hierarchy, made through the gateway: a self-signed root for the root key and an
//! intermediate certificate for the issuing key, signed by the root key. The keys never leave
//! the HSMs; the caller needs a gateway identity granted `sign-certificate` on the root key
//! (the dev config's `ceremony` client), and nothing else ever is.

use std::str::FromStr;
use std::time::Duration;

use const_oid::db::rfc5280;
use der::asn1::OctetString;
use der::{Decode, Encode};
use hsmgate_signer_api::v1::SignatureAlgorithm;
use hsmgate_signer_api::{BatchSigner, Payload};
use spki::SubjectPublicKeyInfoOwned;
use tonic::transport::Channel;
use x509_cert::certificate::Version;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier,
};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;

use crate::Error;
use crate::ca::signer::sign_error;
use crate::issuance::{self, IssuerCert, Tbs, Validity, extension, key_identifier, x509_time};

/// A gateway key's public key and signature algorithm.
struct GatewayKey {
    name: String,
    spki: SubjectPublicKeyInfoOwned,
    algorithm: spki::AlgorithmIdentifierOwned,
}

async fn gateway_key(gateway: &BatchSigner, name: &str) -> Result<GatewayKey, Error> {
    let public = gateway.public_key(name).await.map_err(sign_error)?;
    let algorithm = issuance::signature_algorithm(public.key_type)?;
    Ok(GatewayKey {
        name: name.to_owned(),
        spki: SubjectPublicKeyInfoOwned::from_der(&public.spki_der)?,
        algorithm,
    })
}

/// A CA certificate for `subject_key`, signed by `issuer_key` (the same key for a root).
async fn ca_certificate(
    gateway: &BatchSigner,
    subject: &Name,
    subject_key: &GatewayKey,
    issuer: Option<(&IssuerCert, &GatewayKey)>,
    days: u64,
    path_len: Option<u8>,
) -> Result<Vec<u8>, Error> {
    let (issuer_name, issuer_key_id, signing_key) = match issuer {
        Some((cert, key)) => (cert.subject.clone(), cert.key_id.clone(), key),
        None => (
            subject.clone(),
            key_identifier(&subject_key.spki),
            subject_key,
        ),
    };
    let now = crate::unix_now();
    let not_after = now + i64::try_from(days * 86_400).unwrap_or(i64::MAX / 2);
    let extensions = vec![
        extension(
            rfc5280::ID_CE_BASIC_CONSTRAINTS,
            true,
            &BasicConstraints {
                ca: true,
                path_len_constraint: path_len,
            },
        )?,
        extension(
            rfc5280::ID_CE_KEY_USAGE,
            true,
            &KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign | KeyUsages::DigitalSignature),
        )?,
        extension(
            rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER,
            false,
            &SubjectKeyIdentifier(OctetString::new(key_identifier(&subject_key.spki))?),
        )?,
        extension(
            rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER,
            false,
            &AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(issuer_key_id)?),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
        )?,
    ];
    let tbs = Tbs {
        version: Version::V3,
        serial_number: SerialNumber::new(&issuance::random_serial()?)?,
        signature: signing_key.algorithm.clone(),
        issuer: issuer_name,
        validity: Validity {
            not_before: x509_time(now - 3600)?,
            not_after: x509_time(not_after)?,
        },
        subject: subject.clone(),
        subject_public_key_info: subject_key.spki.clone(),
        extensions: Some(extensions),
    }
    .to_der()?;
    // One certificate: `Sign`, naming the algorithm the TBS was built for.
    let signed = gateway
        .sign_one(
            &signing_key.name,
            SignatureAlgorithm::Unspecified,
            Payload::TbsCertificate,
            tbs.clone(),
        )
        .await
        .map_err(sign_error)?;
    if signed.algorithm_identifier != signing_key.algorithm.to_der()? {
        return Err(Error::Gateway(
            "the gateway signed with another algorithm than the TBS names".into(),
        ));
    }
    issuance::assemble(
        &tbs,
        &signing_key.algorithm,
        &signed.signature,
        &signing_key.spki,
    )
}

/// The root (self-signed by `root_key`) and the intermediate (for `intermediate_key`, signed by
/// `root_key`), as PEM.
pub async fn make_hierarchy(
    channel: Channel,
    root_key: &str,
    root_subject: &str,
    intermediate_key: &str,
    intermediate_subject: &str,
    days: u64,
) -> Result<(String, String), Error> {
    // Four calls, one at a time, each within 30 s: no batching to speak of, but the same
    // client (payload declaration, retry on another gateway) as every other caller.
    let gateway = BatchSigner::new(channel).with_timeout(Duration::from_secs(30));
    let root = gateway_key(&gateway, root_key).await?;
    let intermediate = gateway_key(&gateway, intermediate_key).await?;
    let name = |s: &str| Name::from_str(s).map_err(|e| Error::Build(format!("subject `{s}`: {e}")));
    let root_der = ca_certificate(&gateway, &name(root_subject)?, &root, None, days, None).await?;
    let root_cert = IssuerCert::from_der(&root_der)?;
    let intermediate_der = ca_certificate(
        &gateway,
        &name(intermediate_subject)?,
        &intermediate,
        Some((&root_cert, &root)),
        days / 2,
        Some(0),
    )
    .await?;
    Ok((
        root_cert.pem(),
        IssuerCert::from_der(&intermediate_der)?.pem(),
    ))
}
