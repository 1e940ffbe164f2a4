//! tls-alpn-01 (RFC 8737): a TLS handshake negotiating ALPN `acme-tls/1`, whose self-signed
//! certificate names the domain and carries the key authorization's digest.

use std::sync::Arc;

use der::Decode;
use sha2::{Digest, Sha256};

use crate::{Problem, ProblemType};

use super::{Validator, problem};

/// `id-pe-acmeIdentifier` (RFC 8737 §6.1).
const ID_PE_ACME_IDENTIFIER: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.1.31");

impl Validator {
    pub(super) async fn tls_alpn01(
        &self,
        domain: &str,
        key_authorization: &str,
    ) -> Result<(), Problem> {
        let (stream, addr) = self.connect(domain, self.tls_port).await?;
        let tls =
            |detail: String| problem(ProblemType::Tls, format!("{domain} ({addr}): {detail}"));
        let config = unverified_client(b"acme-tls/1").map_err(|e| tls(e.to_string()))?;
        let server_name = rustls_pki_types::ServerName::try_from(domain.to_owned())
            .map_err(|e| tls(format!("not a server name: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name, stream)
            .await
            .map_err(|e| tls(format!("handshake: {e}")))?;
        let (_, session) = stream.get_ref();
        if session.alpn_protocol() != Some(b"acme-tls/1") {
            return Err(tls("the server did not negotiate ALPN acme-tls/1".into()));
        }
        let certificate = session
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| tls("no certificate".into()))?;
        check_alpn_certificate(certificate.as_ref(), domain, key_authorization)
    }
}

/// Checks a tls-alpn-01 certificate (RFC 8737 §3): one dNSName SAN, the domain; a critical
/// acmeIdentifier extension holding SHA-256 of the key authorization.
fn check_alpn_certificate(
    der_bytes: &[u8],
    domain: &str,
    key_authorization: &str,
) -> Result<(), Problem> {
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    let tls = |detail: String| problem(ProblemType::Tls, format!("{domain}: {detail}"));
    let cert = x509_cert::Certificate::from_der(der_bytes)
        .map_err(|e| tls(format!("the certificate does not parse: {e}")))?;
    let extensions = cert
        .tbs_certificate()
        .extensions()
        .map(|e| e.as_slice())
        .unwrap_or_default();
    let mut names = Vec::new();
    let mut digest = None;
    for ext in extensions {
        if ext.extn_id == const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME {
            let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
                .map_err(|e| tls(format!("subjectAltName: {e}")))?;
            for name in san.0 {
                match name {
                    GeneralName::DnsName(n) => names.push(n.to_string().to_ascii_lowercase()),
                    _ => return Err(tls("the SAN holds a name that is not a dNSName".into())),
                }
            }
        } else if ext.extn_id == ID_PE_ACME_IDENTIFIER {
            if !ext.critical {
                return Err(tls("the acmeIdentifier extension is not critical".into()));
            }
            let value = der::asn1::OctetString::from_der(ext.extn_value.as_bytes())
                .map_err(|e| tls(format!("acmeIdentifier: {e}")))?;
            digest = Some(value.as_bytes().to_vec());
        }
    }
    if names != [domain.to_ascii_lowercase()] {
        return Err(tls(format!(
            "the certificate names {names:?}, not exactly {domain}"
        )));
    }
    match digest {
        Some(d) if d == Sha256::digest(key_authorization.as_bytes()).as_slice() => Ok(()),
        Some(_) => Err(problem(
            ProblemType::Unauthorized,
            format!(
                "{domain}: the acmeIdentifier is not the digest of this account's key authorization"
            ),
        )),
        None => Err(tls("the certificate has no acmeIdentifier extension".into())),
    }
}

/// A TLS client offering `alpn` that accepts any server certificate ([`AcceptAnyCertificate`]):
/// for tls-alpn-01, and for http-01 redirects to HTTPS (RFC 8555 §8.3: validation does not
/// check the certificate).
pub(super) fn unverified_client(alpn: &[u8]) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate))
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// tls-alpn-01 looks at the certificate's contents, not its chain: the validation server's
/// certificate is self-signed by design (RFC 8737 §3).
#[derive(Debug)]
struct AcceptAnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        verify_handshake(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        verify_handshake(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        use rustls::SignatureScheme as S;
        vec![
            S::ECDSA_NISTP256_SHA256,
            S::ECDSA_NISTP384_SHA384,
            S::ED25519,
            S::RSA_PSS_SHA256,
            S::RSA_PSS_SHA384,
            S::RSA_PKCS1_SHA256,
            S::RSA_PKCS1_SHA384,
        ]
    }
}

/// Checks the handshake signature with the certificate's key. Not through webpki, which refuses
/// to parse the certificate at all: its critical acmeIdentifier extension is unknown to it.
fn verify_handshake(
    message: &[u8],
    cert: &rustls_pki_types::CertificateDer<'_>,
    dss: &rustls::DigitallySignedStruct,
) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
    use ring::signature as rs;
    use rustls::SignatureScheme as S;
    let bad = |m: &str| rustls::Error::General(format!("tls-alpn-01 handshake signature: {m}"));
    let parsed = x509_cert::Certificate::from_der(cert.as_ref())
        .map_err(|_| bad("certificate does not parse"))?;
    let spki = parsed.tbs_certificate().subject_public_key_info();
    let key = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| bad("key has unused bits"))?;
    let alg: &dyn rs::VerificationAlgorithm = match dss.scheme {
        S::ECDSA_NISTP256_SHA256 => &rs::ECDSA_P256_SHA256_ASN1,
        S::ECDSA_NISTP384_SHA384 => &rs::ECDSA_P384_SHA384_ASN1,
        S::ED25519 => &rs::ED25519,
        S::RSA_PSS_SHA256 => &rs::RSA_PSS_2048_8192_SHA256,
        S::RSA_PSS_SHA384 => &rs::RSA_PSS_2048_8192_SHA384,
        S::RSA_PKCS1_SHA256 => &rs::RSA_PKCS1_2048_8192_SHA256,
        S::RSA_PKCS1_SHA384 => &rs::RSA_PKCS1_2048_8192_SHA384,
        _ => return Err(bad("unsupported scheme")),
    };
    rs::UnparsedPublicKey::new(alg, key)
        .verify(message, dss.signature())
        .map_err(|_| bad("does not verify"))?;
    Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
}
