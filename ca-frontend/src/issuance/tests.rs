//! The CSR checks, the TBS and its lint, and assembly, against certificates `rcgen` and
//! `openssl` make and read.

use std::collections::BTreeSet;

use super::*;
use crate::ProblemType;

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
    let err = check_csr(&der_bytes, &set(&["a.example.test"]), &[2048], "x").expect_err("bad sig");
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
    let alg = signature_algorithm(hsmgate_signer_api::v1::KeyType::EcdsaP256 as i32).expect("alg");
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
