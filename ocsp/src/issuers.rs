//! Issuers: the CA certificates whose certificates this service answers for, and the hashes a
//! request's CertID names them by (RFC 6960 §4.1.1: the hash of the issuer's DER-encoded name
//! and of its public key BIT STRING's value), in both SHA-1 (RFC 5019) and SHA-256 (RFC 9919).

use std::collections::HashMap;

use der07::{Decode, DecodePem, Encode};
use sha1_010::Sha1;
use sha2_010::{Digest, Sha256};
use x509_cert_02::Certificate;

use crate::config::Config;
use crate::error::Error;
use crate::hash_alg::HashAlg;
use crate::record::IssuerName;

/// One value hashed both ways.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashPair {
    pub sha1: [u8; 20],
    pub sha256: [u8; 32],
}

impl HashPair {
    fn of(data: &[u8]) -> Self {
        Self {
            sha1: Sha1::digest(data).into(),
            sha256: Sha256::digest(data).into(),
        }
    }

    pub fn get(&self, alg: HashAlg) -> &[u8] {
        match alg {
            HashAlg::Sha1 => &self.sha1,
            HashAlg::Sha256 => &self.sha256,
        }
    }
}

/// An issuer this service answers for.
#[derive(Clone, Debug)]
pub struct Issuer {
    pub name: IssuerName,
    /// The gateway key that signs its responses (the issuer's own key).
    pub signing_key: String,
    pub certificate_der: Vec<u8>,
    /// Hashes of the DER subject name.
    pub name_hash: HashPair,
    /// Hashes of the subjectPublicKey BIT STRING's bytes; SHA-1 is also the responderID byKey.
    pub key_hash: HashPair,
}

impl Issuer {
    /// Reads an issuer certificate (PEM or DER).
    pub fn new(name: &str, signing_key: &str, cert: &[u8]) -> Result<Self, Error> {
        let fail = |detail: String| Error::Config {
            path: format!("issuer {name}"),
            detail,
        };
        let parsed = Certificate::from_pem(cert)
            .or_else(|_| Certificate::from_der(cert))
            .map_err(|e| fail(format!("not a PEM or DER certificate: {e}")))?;
        let subject = parsed
            .tbs_certificate
            .subject
            .to_der()
            .map_err(|e| fail(e.to_string()))?;
        let key = parsed
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| fail("public key BIT STRING has unused bits".into()))?;
        Ok(Self {
            name: IssuerName(name.to_owned()),
            signing_key: signing_key.to_owned(),
            certificate_der: parsed.to_der().map_err(|e| fail(e.to_string()))?,
            name_hash: HashPair::of(&subject),
            key_hash: HashPair::of(key),
        })
    }
}

/// Every issuer, found by name or by CertID hashes.
#[derive(Clone, Debug, Default)]
pub struct Issuers {
    by_name: HashMap<IssuerName, Issuer>,
}

impl Issuers {
    pub fn load(config: &Config) -> Result<Self, Error> {
        let mut issuers = Self::default();
        for i in &config.issuers {
            let path = config.resolve(&i.certificate);
            let bytes = std::fs::read(&path).map_err(|e| Error::Config {
                path: path.display().to_string(),
                detail: e.to_string(),
            })?;
            issuers.add(Issuer::new(&i.name, &i.signing_key, &bytes)?);
        }
        Ok(issuers)
    }

    pub fn add(&mut self, issuer: Issuer) {
        self.by_name.insert(issuer.name.clone(), issuer);
    }

    pub fn get(&self, name: &IssuerName) -> Option<&Issuer> {
        self.by_name.get(name)
    }

    /// The issuer a CertID names, if this service answers for it.
    pub fn find(&self, alg: HashAlg, name_hash: &[u8], key_hash: &[u8]) -> Option<&Issuer> {
        self.by_name
            .values()
            .find(|i| i.name_hash.get(alg) == name_hash && i.key_hash.get(alg) == key_hash)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Issuer> {
        self.by_name.values()
    }
}
