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
