//! Fuzzes `ca_frontend::issuance::check_csr`, the parser and checks a finalize request's CSR
//! (DER, from the client) goes through, and what follows when it is accepted: the leaf's
//! `TBSCertificate` built from it (`build_leaf_tbs`) and the pre-signing lint (`lint`) that
//! decides whether an HSM ever sees those bytes.
//!
//! The properties: any input yields `Ok` or a `Problem` — never a panic, an abort or unbounded
//! work; an accepted CSR asks for exactly the order's names (CN and SAN dNSNames) with an
//! allowed key; and the builder builds a TBS from every accepted CSR that the lint accepts. A
//! CSR the check lets through but the lint refuses fails the order at finalize with an internal
//! error after the client did everything right, and means the two disagree about what may be
//! signed.
//!
//! A mutated CSR almost never carries a valid self-signature, so the accepting path would only
//! ever see the seeds. So each input is tried twice: as it is, and — when it parses as a CSR
//! whose public key is one of the fixture keys (`fixtures/{p256,p384,rsa2048}.pk8`, which the
//! seeds use) — re-signed with that key, as a client would sign whatever it sends.
//!
//! The order is fixed ([`ORDER`]), as are the issuer (`fixtures/issuer.der`, a P-256 CA made
//! with `openssl req -x509`), its ECDSA P-256 signature algorithm, the serial and the validity.
//! The input is the CSR itself, so the seeds are plain DER files.

#![no_main]

use std::collections::BTreeSet;
use std::sync::LazyLock;

use ca_frontend::issuance::{
    IssuerCert, LeafPlan, build_leaf_tbs, check_csr, lint, signature_algorithm,
};
use ca_frontend::jws::PublicKey;
use der::{Decode, Encode};
use hsmgate_signer_api::v1::KeyType;
use libfuzzer_sys::fuzz_target;
use ring::signature::{self as rs, KeyPair};
use spki::AlgorithmIdentifierOwned;
use x509_cert::request::CertReq;

/// The order's names (the seeds ask for these, in various ways).
const ORDER: [&str; 2] = ["example.test", "www.example.test"];
/// RSA key sizes allowed, as in the example configuration.
const RSA_SIZES: [usize; 3] = [2048, 3072, 4096];

struct Fixed {
    names: BTreeSet<String>,
    issuer: IssuerCert,
    algorithm: AlgorithmIdentifierOwned,
    keys: Vec<FixtureKey>,
    rng: ring::rand::SystemRandom,
}

/// A key the seeds' CSRs are made with, to re-sign mutated ones.
enum FixtureKey {
    Ecdsa(rs::EcdsaKeyPair, AlgorithmIdentifierOwned),
    Rsa(rs::RsaKeyPair, AlgorithmIdentifierOwned),
}

impl FixtureKey {
    fn public(&self) -> &[u8] {
        match self {
            Self::Ecdsa(k, _) => k.public_key().as_ref(),
            Self::Rsa(k, _) => k.public_key().as_ref(),
        }
    }

    fn sign(
        &self,
        rng: &ring::rand::SystemRandom,
        message: &[u8],
    ) -> (AlgorithmIdentifierOwned, Vec<u8>) {
        match self {
            Self::Ecdsa(k, alg) => {
                let sig = k.sign(rng, message).expect("ECDSA signs");
                (alg.clone(), sig.as_ref().to_vec())
            }
            Self::Rsa(k, alg) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&rs::RSA_PKCS1_SHA256, rng, message, &mut sig)
                    .expect("RSA signs");
                (alg.clone(), sig)
            }
        }
    }
}

static FIXED: LazyLock<Fixed> = LazyLock::new(|| {
    let rng = ring::rand::SystemRandom::new();
    let issuer =
        IssuerCert::from_der(include_bytes!("../fixtures/issuer.der")).expect("issuer fixture");
    let alg = |t: KeyType| signature_algorithm(t as i32).expect("algorithm");
    let ecdsa = |a, pk8: &[u8], t| {
        FixtureKey::Ecdsa(
            rs::EcdsaKeyPair::from_pkcs8(a, pk8, &rng).expect("EC fixture key"),
            alg(t),
        )
    };
    let keys = vec![
        ecdsa(
            &rs::ECDSA_P256_SHA256_ASN1_SIGNING,
            include_bytes!("../fixtures/p256.pk8"),
            KeyType::EcdsaP256,
        ),
        ecdsa(
            &rs::ECDSA_P384_SHA384_ASN1_SIGNING,
            include_bytes!("../fixtures/p384.pk8"),
            KeyType::EcdsaP384,
        ),
        FixtureKey::Rsa(
            rs::RsaKeyPair::from_pkcs8(include_bytes!("../fixtures/rsa2048.pk8"))
                .expect("RSA fixture key"),
            alg(KeyType::Rsa2048),
        ),
    ];
    Fixed {
        names: ORDER.iter().map(|s| s.to_string()).collect(),
        issuer,
        algorithm: alg(KeyType::EcdsaP256),
        keys,
        rng,
    }
});

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(resigned) = resign(data) {
        check(&resigned);
    }
});

/// The CSR re-signed with the fixture key it names, if it parses and names one.
fn resign(data: &[u8]) -> Option<Vec<u8>> {
    let fixed = &*FIXED;
    let mut csr = CertReq::from_der(data).ok()?;
    let public = csr.info.public_key.subject_public_key.raw_bytes();
    let key = fixed.keys.iter().find(|k| k.public() == public)?;
    let info = csr.info.to_der().ok()?;
    let (algorithm, signature) = key.sign(&fixed.rng, &info);
    csr.algorithm = algorithm;
    csr.signature = der::asn1::BitString::from_bytes(&signature).ok()?;
    csr.to_der().ok()
}

fn check(data: &[u8]) {
    let fixed = &*FIXED;
    let Ok(checked) = check_csr(data, &fixed.names, &RSA_SIZES, "thumb") else {
        return;
    };
    assert_eq!(checked.names, fixed.names, "accepted other names");
    match &checked.key {
        PublicKey::Rsa { .. } => assert!(RSA_SIZES.contains(&checked.key.bits())),
        PublicKey::P256(_) | PublicKey::P384(_) => {}
        PublicKey::Ed25519(_) => panic!("Ed25519 accepted"),
    }
    let plan = LeafPlan {
        serial: vec![
            0x3c, 0x51, 0x0b, 0x9e, 0x27, 0x44, 0xd0, 0x18, 0x6a, 0x93, 0xf2, 0x05, 0x7d, 0xc1,
            0x8e, 0x46,
        ],
        names: checked.names.clone(),
        spki: checked.spki.clone(),
        rsa: matches!(checked.key, PublicKey::Rsa { .. }),
        not_before: 1_800_000_000,
        not_after: 1_800_000_000 + 90 * 86_400 - 1,
        ocsp_url: Some("http://ocsp.example.test".into()),
        ca_issuers_url: Some("http://ca.example.test/e1.der".into()),
        crl_url: Some("http://crl.example.test/e1/3.crl".into()),
    };
    let tbs = build_leaf_tbs(&plan, &fixed.issuer, &fixed.algorithm)
        .unwrap_or_else(|e| panic!("no TBS built for an accepted CSR: {e}"));
    if let Err(e) = lint(&tbs, &plan, &fixed.issuer, &fixed.algorithm) {
        panic!("the lint refuses the TBS built for an accepted CSR: {e}");
    }
}
