//! The frontend's own work on a certificate, everything but the HSM's signature: what each
//! finalization costs before and after the gateway signs.
//!
//! - `check_csr`: parse the CSR, verify its self-signature, check its key and names
//!   (P-256 and RSA 2048 CSRs, two names; the RSA one is the fuzz corpus's seed);
//! - `build_leaf_tbs` + `lint`: build the TBSCertificate with `x509-cert`, decode it back and
//!   check it against the plan;
//! - `assemble`: wrap TBS + signature into the certificate, verifying the signature against the
//!   issuer's key, as every issuance does;
//! - `finalize_cpu`: all of the above for one P-256 CSR.
//!
//! The baseline in the same run is one ring ECDSA P-256 verification (`p256_verify`): the
//! CSR check and `assemble` each contain one, so their ratio to it says how much is parsing and
//! building around the cryptography.
//!
//! ```sh
//! cargo bench -p ca-frontend --bench issue -- --warm-up-time 1 --measurement-time 3
//! ```

use std::collections::BTreeSet;
use std::hint::black_box;

use ca_frontend::issuance::{
    IssuerCert, LeafPlan, assemble, build_leaf_tbs, check_csr, lint, random_serial,
    signature_algorithm,
};
use ca_frontend::jws::PublicKey;
use criterion::{Criterion, criterion_group, criterion_main};
use hsmgate_signer_api::v1::KeyType;
use ring::signature::{self as rs, KeyPair};

const NAMES: [&str; 2] = ["example.test", "www.example.test"];
const RSA_SIZES: [usize; 3] = [2048, 3072, 4096];

fn fail<T, E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> T + '_ {
    move |e| panic!("{what}: {e}")
}

fn csr(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(alg).unwrap_or_else(fail("CSR key"));
    let mut params = rcgen::CertificateParams::new(NAMES.map(String::from).to_vec())
        .unwrap_or_else(fail("CSR params"));
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .serialize_request(&key)
        .unwrap_or_else(fail("CSR"))
        .der()
        .to_vec()
}

/// A P-256 CA made here, with its key, so `assemble` gets a signature that verifies.
fn issuer() -> (IssuerCert, rs::EcdsaKeyPair) {
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap_or_else(fail("CA key"));
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).unwrap_or_else(fail("CA params"));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bench CA");
    params.key_identifier_method = rcgen::KeyIdMethod::Sha256;
    let cert = params.self_signed(&key).unwrap_or_else(fail("CA"));
    let issuer = IssuerCert::from_der(cert.der()).unwrap_or_else(fail("issuer"));
    let signing = rs::EcdsaKeyPair::from_pkcs8(
        &rs::ECDSA_P256_SHA256_ASN1_SIGNING,
        &key.serialize_der(),
        &ring::rand::SystemRandom::new(),
    )
    .unwrap_or_else(fail("CA signing key"));
    (issuer, signing)
}

fn plan(checked: &ca_frontend::issuance::CheckedCsr) -> LeafPlan {
    let now = ca_frontend::unix_now();
    LeafPlan {
        serial: random_serial().unwrap_or_else(fail("serial")),
        names: checked.names.clone(),
        spki: checked.spki.clone(),
        rsa: matches!(checked.key, PublicKey::Rsa { .. }),
        not_before: now - 60,
        not_after: now - 60 + 90 * 86_400 - 1,
        ocsp_url: Some("http://ocsp.example.test".into()),
        ca_issuers_url: Some("http://ca.example.test/issuer.der".into()),
        crl_url: Some("http://crl.example.test/e1/3.crl".into()),
    }
}

fn issue(c: &mut Criterion) {
    let names: BTreeSet<String> = NAMES.iter().map(|s| s.to_string()).collect();
    let (issuer, ca_key) = issuer();
    let algorithm = signature_algorithm(KeyType::EcdsaP256 as i32).unwrap_or_else(fail("alg"));
    let rng = ring::rand::SystemRandom::new();
    let p256 = csr(&rcgen::PKCS_ECDSA_P256_SHA256);
    // rcgen on ring cannot make RSA keys: the fuzz target's RSA 2048 seed (same two names).
    let rsa = include_bytes!("../fuzz/corpus/csr/seed-rsa2048-cn-san.der").to_vec();
    let checked = check_csr(&p256, &names, &RSA_SIZES, "thumb").unwrap_or_else(fail("CSR"));
    let leaf = plan(&checked);
    let tbs = build_leaf_tbs(&leaf, &issuer, &algorithm).unwrap_or_else(fail("TBS"));
    let signature = ca_key
        .sign(&rng, &tbs)
        .unwrap_or_else(fail("sign"))
        .as_ref()
        .to_vec();
    let verifier = rs::UnparsedPublicKey::new(
        &rs::ECDSA_P256_SHA256_ASN1,
        ca_key.public_key().as_ref().to_vec(),
    );

    let mut group = c.benchmark_group("issue");
    group.bench_function("p256_verify (baseline)", |b| {
        b.iter(|| verifier.verify(black_box(&tbs), black_box(&signature)))
    });
    group.bench_function("check_csr/p256", |b| {
        b.iter(|| check_csr(black_box(&p256), &names, &RSA_SIZES, "thumb"))
    });
    group.bench_function("check_csr/rsa2048", |b| {
        b.iter(|| check_csr(black_box(&rsa), &names, &RSA_SIZES, "thumb"))
    });
    group.bench_function("build_leaf_tbs+lint", |b| {
        b.iter(|| {
            let tbs = build_leaf_tbs(black_box(&leaf), &issuer, &algorithm);
            tbs.and_then(|t| lint(&t, &leaf, &issuer, &algorithm))
        })
    });
    group.bench_function("assemble", |b| {
        b.iter(|| assemble(black_box(&tbs), &algorithm, &signature, &issuer.spki))
    });
    group.bench_function("finalize_cpu/p256", |b| {
        b.iter(|| {
            let checked = check_csr(black_box(&p256), &names, &RSA_SIZES, "thumb")
                .unwrap_or_else(fail("CSR"));
            let leaf = plan(&checked);
            let tbs = build_leaf_tbs(&leaf, &issuer, &algorithm).unwrap_or_else(fail("TBS"));
            lint(&tbs, &leaf, &issuer, &algorithm).unwrap_or_else(fail("lint"));
            assemble(
                &tbs,
                &algorithm,
                &signature_for(&ca_key, &rng, &tbs),
                &issuer.spki,
            )
        })
    });
    group.finish();
}

fn signature_for(key: &rs::EcdsaKeyPair, rng: &ring::rand::SystemRandom, tbs: &[u8]) -> Vec<u8> {
    key.sign(rng, tbs)
        .unwrap_or_else(fail("sign"))
        .as_ref()
        .to_vec()
}

criterion_group!(benches, issue);
criterion_main!(benches);
