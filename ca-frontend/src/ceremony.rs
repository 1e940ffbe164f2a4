//! The CA hierarchy, made through the gateway: a self-signed root for the root key and an
//! intermediate certificate for the issuing key, signed by the root key. The keys never leave
//! the HSMs; the caller needs a gateway identity granted `sign-certificate` on the root key
//! (the dev config's `ceremony` client), and nothing else ever is.

use std::str::FromStr;
use std::time::Duration;

use const_oid::db::rfc5280;
use der::asn1::OctetString;
use der::{Decode, Encode};
use hsmgate_signer_api::v1::signer_client::SignerClient;
use hsmgate_signer_api::v1::{
    GetPublicKeyRequest, SignBatchRequest, SignRequest, SignatureAlgorithm, sign_request,
};
use hsmgate_signer_api::{PAYLOAD_HEADER, PAYLOAD_TBS_CERTIFICATE};
use spki::SubjectPublicKeyInfoOwned;
use tonic::transport::Channel;
use x509_cert::certificate::Version;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier,
};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;

use crate::Error;
use crate::issue::{self, IssuerCert, Tbs, Validity, extension, key_identifier, x509_time};

/// A gateway key's public key and signature algorithm.
struct GatewayKey {
    name: String,
    spki: SubjectPublicKeyInfoOwned,
    algorithm: spki::AlgorithmIdentifierOwned,
}

async fn gateway_key(client: &mut SignerClient<Channel>, name: &str) -> Result<GatewayKey, Error> {
    let public = client
        .get_public_key(GetPublicKeyRequest {
            key: name.to_owned(),
        })
        .await
        .map_err(|s| Error::Gateway(format!("GetPublicKey {name}: {}", s.message())))?
        .into_inner();
    let algorithm = issue::signature_algorithm(public.key_type)?;
    Ok(GatewayKey {
        name: name.to_owned(),
        spki: SubjectPublicKeyInfoOwned::from_der(&public.spki_der)?,
        algorithm,
    })
}

/// A CA certificate for `subject_key`, signed by `issuer_key` (the same key for a root).
async fn ca_certificate(
    client: &mut SignerClient<Channel>,
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
        serial_number: SerialNumber::new(&issue::random_serial()?)?,
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
    let mut request = tonic::Request::new(SignBatchRequest {
        requests: vec![SignRequest {
            key: signing_key.name.clone(),
            algorithm: SignatureAlgorithm::Unspecified as i32,
            input: Some(sign_request::Input::Message(tbs.clone())),
        }],
    });
    request.set_timeout(Duration::from_secs(30));
    if let Ok(v) = PAYLOAD_TBS_CERTIFICATE.parse() {
        request.metadata_mut().insert(PAYLOAD_HEADER, v);
    }
    let answer = client
        .sign_batch(request)
        .await
        .map_err(|s| {
            Error::Gateway(format!(
                "SignBatch {}: {:?}: {}",
                signing_key.name,
                s.code(),
                s.message()
            ))
        })?
        .into_inner();
    let signed = answer
        .responses
        .first()
        .ok_or_else(|| Error::Gateway("SignBatch returned no signature".into()))?;
    if signed.algorithm_identifier != signing_key.algorithm.to_der()? {
        return Err(Error::Gateway(
            "the gateway signed with another algorithm than the TBS names".into(),
        ));
    }
    issue::assemble(
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
    let mut client = SignerClient::new(channel);
    let root = gateway_key(&mut client, root_key).await?;
    let intermediate = gateway_key(&mut client, intermediate_key).await?;
    let name = |s: &str| Name::from_str(s).map_err(|e| Error::Build(format!("subject `{s}`: {e}")));
    let root_der =
        ca_certificate(&mut client, &name(root_subject)?, &root, None, days, None).await?;
    let root_cert = IssuerCert::from_der(&root_der)?;
    let intermediate_der = ca_certificate(
        &mut client,
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
