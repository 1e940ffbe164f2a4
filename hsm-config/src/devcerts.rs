//! Development certificates for mTLS between the gateway and its callers (`hsm-config
//! dev-certs DIR`).
//!
//! One development CA signs the gateway's server certificate (for `127.0.0.1`, `::1` and
//! `localhost`) and one client certificate per caller (`CN=<name>,O=hsmgate dev`). The gateway
//! trusts that CA for client certificates; callers trust it for the server's. Files, in `DIR`:
//!
//! ```text
//! ca.pem  ca.key                 the development CA (keep ca.key to issue more)
//! server.pem  server.key         the gateway's certificate and key
//! <client>.pem  <client>.key     one pair per client name
//! ```
//!
//! Idempotent: an existing CA is reused and existing files are kept, so a running gateway's
//! certificates stay valid across `run.sh` invocations. Private keys are written with mode
//! 0600. Never for production: production CAs for client authentication live in the PKI.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::error::Error;

/// Organisation of every development certificate's subject.
pub const DEV_ORGANIZATION: &str = "hsmgate dev";

/// What [`ensure`] found or made.
#[derive(Debug, Default)]
pub struct Report {
    /// Files written by this call (absent before).
    pub created: Vec<PathBuf>,
}

/// The subject a client certificate made here carries, as the gateway's `clients[].subject`
/// matches it (RFC 4514, most specific RDN first).
pub fn client_subject(name: &str) -> String {
    format!("CN={name},O={DEV_ORGANIZATION}")
}

/// `(certificate, key)` paths of client `name` in `dir`.
pub fn client_files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
}

/// Makes (or completes) the development PKI in `dir`: the CA, the server certificate and a
/// certificate for each of `clients`.
pub fn ensure(dir: &Path, clients: &[&str]) -> Result<Report, Error> {
    let fail = |what: &str, e: &dyn std::fmt::Display| Error::Certificates(format!("{what}: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| fail(&dir.display().to_string(), &e))?;
    let mut report = Report::default();

    let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    // An issuer is its subject name and key: an existing CA is reused by loading its key and
    // rebuilding the same parameters (rcgen reads certificates only with its x509-parser
    // feature, which would pull another ASN.1 stack into the tree).
    let params = ca_params().map_err(|e| fail("CA", &e))?;
    let issuer = if ca_pem.exists() && ca_key.exists() {
        let key_pem = std::fs::read_to_string(&ca_key)
            .map_err(|e| fail(&ca_key.display().to_string(), &e))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| fail("ca.key", &e))?;
        Issuer::new(params, key)
    } else {
        let key = KeyPair::generate().map_err(|e| fail("CA key", &e))?;
        let cert = params.self_signed(&key).map_err(|e| fail("CA", &e))?;
        write(&ca_pem, cert.pem().as_bytes(), 0o644)?;
        write(&ca_key, key.serialize_pem().as_bytes(), 0o600)?;
        report.created.extend([ca_pem.clone(), ca_key.clone()]);
        Issuer::new(params, key)
    };

    let leaf = |cn: &str, sans: Vec<String>, eku: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().map_err(|e| fail(cn, &e))?;
        let mut params = CertificateParams::new(sans).map_err(|e| fail(cn, &e))?;
        params.distinguished_name = name(cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![eku];
        let cert = params.signed_by(&key, &issuer).map_err(|e| fail(cn, &e))?;
        Ok::<_, Error>((cert.pem(), key.serialize_pem()))
    };

    let mut wanted: Vec<(
        String,
        PathBuf,
        PathBuf,
        Vec<String>,
        ExtendedKeyUsagePurpose,
    )> = vec![(
        "hsmgate dev gateway".to_owned(),
        dir.join("server.pem"),
        dir.join("server.key"),
        vec!["127.0.0.1".into(), "::1".into(), "localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    )];
    for client in clients {
        let (cert, key) = client_files(dir, client);
        wanted.push((
            (*client).to_owned(),
            cert,
            key,
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        ));
    }
    for (cn, cert_path, key_path, sans, eku) in wanted {
        if cert_path.exists() && key_path.exists() {
            continue;
        }
        let (cert, key) = leaf(&cn, sans, eku)?;
        write(&cert_path, cert.as_bytes(), 0o644)?;
        write(&key_path, key.as_bytes(), 0o600)?;
        report.created.extend([cert_path, key_path]);
    }
    Ok(report)
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name("hsmgate dev CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, DEV_ORGANIZATION);
    dn.push(DnType::CommonName, cn);
    dn
}

/// Writes a new file with `mode` (replacing any old one).
fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let fail = |e: std::io::Error| Error::Certificates(format!("{}: {e}", path.display()));
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(fail)?;
    f.write_all(bytes).map_err(fail)?;
    f.sync_all().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_ca_server_and_clients_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ensure(dir.path(), &["alpha", "beta"]).expect("dev certs");
        assert_eq!(first.created.len(), 8, "{:?}", first.created);
        let server_key = std::fs::metadata(dir.path().join("server.key")).expect("key");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(server_key.permissions().mode() & 0o777, 0o600);
        // Reused CA: a new client only; existing files untouched.
        let ca_before = std::fs::read(dir.path().join("ca.pem")).expect("ca");
        let second = ensure(dir.path(), &["alpha", "beta", "gamma"]).expect("again");
        assert_eq!(second.created.len(), 2, "{:?}", second.created);
        assert_eq!(
            std::fs::read(dir.path().join("ca.pem")).expect("ca"),
            ca_before
        );
    }
}
