//! Configuration files written from the typed schemas, never from text templates.
//!
//! A gateway config is an [`hsm_config::Config`]: the kit edits the struct (port 0, a private
//! audit directory, PINs in the test's directory) and serializes it, so a schema change touches
//! the schema and the tests that mean to change, not every writer of TOML. The examples under
//! `hsm-config/examples/` are the starting points: tests run what operators read.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hsm_config::{Config, InsecurePlaintext, PinSource, ServerTls};
use serde::Serialize;

use crate::binaries::workspace_root;
use crate::error::Error;

/// Any config serialized as TOML (the gateway's, and the OCSP and ACME configs that derive
/// `Serialize`).
pub fn to_toml<T: Serialize + ?Sized>(config: &T) -> Result<String, Error> {
    Ok(toml::to_string(config)?)
}

/// Writes `config` as TOML to `path`.
pub fn write<T: Serialize + ?Sized>(config: &T, path: &Path) -> Result<(), Error> {
    let text = to_toml(config)?;
    std::fs::write(path, text).map_err(|e| Error::io("writing", path, e))
}

/// `hsm-config/examples/<name>`, e.g. `two-dc.toml` or `dev.toml`.
pub fn example_path(name: &str) -> PathBuf {
    workspace_root().join("hsm-config/examples").join(name)
}

/// Parses and validates the example `name`, relative paths resolved against `base_dir`.
pub fn example(name: &str, base_dir: &Path) -> Result<Config, Error> {
    let path = example_path(name);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
    Ok(Config::parse(&text, &path, base_dir.to_path_buf())?)
}

/// Listens on ephemeral loopback ports (gRPC, and metrics if `metrics`), as tests do.
pub fn ephemeral_ports(config: &mut Config, metrics: bool) {
    config.gateway.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.gateway.metrics_listen = metrics.then(|| SocketAddr::from(([127, 0, 0, 1], 0)));
}

/// Plain-text gRPC on loopback for `client` instead of mTLS.
pub fn plaintext(config: &mut Config, client: &str) {
    config.gateway.tls = None;
    config.gateway.insecure_plaintext = Some(InsecurePlaintext {
        client: client.to_owned(),
    });
}

/// mTLS with the files of a `hsm_config::devcerts` directory (`server.pem`, `server.key`,
/// `ca.pem`) instead of plain text.
pub fn dev_tls(config: &mut Config, certs: &Path) {
    config.gateway.insecure_plaintext = None;
    config.gateway.tls = Some(ServerTls {
        cert: certs.join("server.pem"),
        key: certs.join("server.key"),
        client_ca: certs.join("ca.pem"),
    });
}

/// Every HSM's PIN from the file `pin_file` (provisioning writes it if absent).
pub fn pins_from_file(config: &mut Config, pin_file: &Path) {
    for hsm in config
        .datacenters
        .iter_mut()
        .flat_map(|dc| dc.hsms.iter_mut())
    {
        hsm.pin = PinSource::File(pin_file.to_path_buf());
    }
}

/// Every PIN file moved into `dir` (same file names): the dev config's `target/dev/pins/`
/// becomes a test's own directory.
pub fn pins_into(config: &mut Config, dir: &Path) {
    for hsm in config
        .datacenters
        .iter_mut()
        .flat_map(|dc| dc.hsms.iter_mut())
    {
        if let PinSource::File(path) = &hsm.pin
            && let Some(name) = path.file_name()
        {
            hsm.pin = PinSource::File(dir.join(name));
        }
    }
}

/// Every HSM's PKCS#11 module replaced by `module` (hsm-sim, for fault injection).
pub fn module_everywhere(config: &mut Config, module: &Path) {
    for hsm in config
        .datacenters
        .iter_mut()
        .flat_map(|dc| dc.hsms.iter_mut())
    {
        hsm.module = module.to_path_buf();
    }
}

/// SoftHSM2's PKCS#11 module on Debian.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// p11-kit's client module on Debian: the PKCS#11 module of an HSM behind `p11-kit server`.
pub const P11KIT_CLIENT: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";

/// A test gateway: one datacenter `datacenter` (HSMs to be added), plain text on an ephemeral
/// loopback port for `client` (granted nothing yet), the audit log in `audit/` beside the
/// config file, every other setting its default.
pub fn plaintext_gateway(datacenter: &str, client: &str) -> Config {
    Config {
        gateway: hsm_config::Gateway {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: None,
            local_datacenter: datacenter.to_owned(),
            tls: None,
            insecure_plaintext: Some(InsecurePlaintext {
                client: client.to_owned(),
            }),
        },
        timeouts: hsm_config::Timeouts::default(),
        batching: hsm_config::Batching::default(),
        dispatch: hsm_config::Dispatch::default(),
        datacenters: vec![hsm_config::Datacenter {
            name: datacenter.to_owned(),
            hsms: Vec::new(),
        }],
        keys: Vec::new(),
        clients: vec![hsm_config::Client {
            name: client.to_owned(),
            subject: None,
            spki_sha256: None,
            grants: Vec::new(),
            limits: hsm_config::ClientLimits::default(),
        }],
        audit: hsm_config::Audit {
            dir: PathBuf::from("audit"),
            max_file_bytes: 64 << 20,
            on_failure: hsm_config::AuditFailure::default(),
            commit_delay_us: hsm_config::DEFAULT_AUDIT_COMMIT_DELAY_US,
            preallocate_bytes: hsm_config::DEFAULT_AUDIT_PREALLOCATE_BYTES,
            bench_unaudited: false,
        },
        base_dir: PathBuf::new(),
    }
}

/// A SoftHSM2 token `token_label` as HSM `name`, PIN from `pin_file`, `sessions` sessions.
pub fn softhsm(name: &str, token_label: &str, pin_file: &Path, sessions: u32) -> hsm_config::Hsm {
    hsm_config::Hsm {
        name: name.to_owned(),
        module: PathBuf::from(SOFTHSM_MODULE),
        token_label: token_label.to_owned(),
        pin: PinSource::File(pin_file.to_path_buf()),
        sessions,
        max_in_flight: 4_096,
        module_env: Default::default(),
    }
}

/// Key `name` (label the same) of `algorithm`, cloned into `hsms`.
pub fn key(name: &str, algorithm: hsm_config::KeyAlgorithm, hsms: &[&str]) -> hsm_config::Key {
    hsm_config::Key {
        name: name.to_owned(),
        label: name.to_owned(),
        algorithm,
        hsms: hsms.iter().map(|h| (*h).to_owned()).collect(),
        check_payload: None,
        allow_unchecked_payloads: None,
    }
}

/// Grants `operations` on `keys` (`"*"`: every key) to every client named `client`.
pub fn grant(
    config: &mut Config,
    client: &str,
    keys: &[&str],
    operations: &[hsm_config::Operation],
) {
    for c in config.clients.iter_mut().filter(|c| c.name == client) {
        c.grants.push(hsm_config::Grant {
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            operations: operations.to_vec(),
        });
    }
}

/// A responder's config for one issuer over an SQLite store, every listener on an ephemeral
/// loopback port (metrics too), the rest at its defaults: the starting point of the OCSP and
/// CRL tests. Paths are relative to the directory the file is written to.
pub fn ocsp_sqlite(
    issuer: &str,
    certificate: &str,
    signing_key: &str,
    store: &str,
) -> ocsp::config::Config {
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    ocsp::config::Config {
        responder: ocsp::config::Responder {
            metrics_listen: Some(any_port),
            ..ocsp::config::Responder::new(any_port)
        },
        issuers: vec![ocsp::config::Issuer {
            name: issuer.into(),
            certificate: certificate.into(),
            signing_key: signing_key.into(),
            crl: None,
        }],
        store: ocsp::config::Store::Sqlite { path: store.into() },
        presigner: Default::default(),
        base_dir: PathBuf::new(),
    }
}
