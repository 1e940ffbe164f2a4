//! The files of one stack under its directory, and its four configs written from the typed
//! schemas: the examples operators read (`hsm-config/examples/dev.toml`,
//! `ocsp/examples/dev.toml`, `ca-frontend/examples/{dev,perspective}.toml`) loaded as structs,
//! moved into the stack's directory and onto its ports, edited by `--set` overrides, and
//! serialized. A schema change is a compile error here, not a stale `sed`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ports::Ports;
use crate::configs;
use crate::error::Error;

/// Where a stack keeps its tokens, certificates, configs, databases and logs.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Absolute.
    pub dir: PathBuf,
}

impl Layout {
    pub fn tls(&self) -> PathBuf {
        self.dir.join("tls")
    }
    pub fn softhsm_conf(&self) -> PathBuf {
        self.dir.join("softhsm2.conf")
    }
    pub fn public_keys(&self) -> PathBuf {
        self.dir.join("public-keys")
    }
    pub fn audit(&self) -> PathBuf {
        self.dir.join("audit")
    }
    pub fn root_pem(&self) -> PathBuf {
        self.dir.join("root.pem")
    }
    pub fn issuer_pem(&self) -> PathBuf {
        self.dir.join("issuer.pem")
    }
    /// The intermediate then the root, for `openssl crl -CAfile`.
    pub fn ca_chain(&self) -> PathBuf {
        self.dir.join("ca-chain.pem")
    }
    pub fn config(&self, file: ConfigFile) -> PathBuf {
        self.dir.join(file.file_name())
    }
}

/// The four configs of a stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigFile {
    /// `gateway.toml`: the gateway (`hsm_config::Config`).
    Gateway,
    /// `ocsp.toml`: responder, pre-signer, CRL updater (`ocsp::config::Config`).
    Ocsp,
    /// `acme.toml`: the ACME frontend (`ca_frontend::config::Config`).
    Acme,
    /// `perspective.toml`: the remote perspectives (`ca_frontend::perspective::PerspectiveConfig`).
    Perspective,
}

impl ConfigFile {
    pub const ALL: [ConfigFile; 4] = [Self::Gateway, Self::Ocsp, Self::Acme, Self::Perspective];

    /// The name `--set` uses: `gateway`, `ocsp`, `acme`, `perspective`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Ocsp => "ocsp",
            Self::Acme => "acme",
            Self::Perspective => "perspective",
        }
    }

    pub fn file_name(self) -> String {
        format!("{}.toml", self.name())
    }
}

/// `--set FILE.PATH=VALUE`: one field of one config, changed after the stack has moved the
/// example into its directory and onto its ports. PATH is dotted (`responder.connections.
/// idle_timeout_secs`; a number indexes an array: `issuers.0.crl.revocation_delay_secs`);
/// VALUE is a TOML value (`3`, `true`, `["sha1", "sha256"]`), or else a string. Or `--unset
/// FILE.PATH` ([`Override::unset`]): an optional field or table removed (`gateway.gateway.tls`).
#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    pub file: ConfigFile,
    pub path: Vec<String>,
    /// `None`: remove the field.
    pub value: Option<toml::Value>,
}

impl Override {
    /// `--unset FILE.PATH`.
    pub fn unset(text: &str) -> Result<Self, String> {
        let (file, path) = Self::file_and_path(text, text)?;
        Ok(Self {
            file,
            path,
            value: None,
        })
    }

    fn file_and_path(key: &str, text: &str) -> Result<(ConfigFile, Vec<String>), String> {
        let mut path = key.trim().split('.').map(str::to_owned);
        let file_name = path.next().unwrap_or_default();
        let file = ConfigFile::ALL
            .into_iter()
            .find(|f| f.name() == file_name)
            .ok_or_else(|| {
                format!("`{text}`: the config is one of gateway, ocsp, acme, perspective")
            })?;
        let path: Vec<String> = path.collect();
        if path.is_empty() || path.iter().any(String::is_empty) {
            return Err(format!("`{text}`: no field named after `{file_name}.`"));
        }
        Ok((file, path))
    }
}

impl std::str::FromStr for Override {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| format!("`{text}`: expected FILE.PATH=VALUE"))?;
        let (file, path) = Self::file_and_path(key, text)?;
        // A TOML value if it parses as one, else the text as a string (`--set x=abc`).
        let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_owned()));
        Ok(Self {
            file,
            path,
            value: Some(value),
        })
    }
}

/// `config` with `overrides` (those of its file) applied, parsed back into its type: a field
/// that does not exist, or a value of the wrong type, is an error naming it.
pub fn apply_overrides<T: Serialize + DeserializeOwned>(
    config: &T,
    file: ConfigFile,
    overrides: &[Override],
) -> Result<T, Error> {
    let mine: Vec<&Override> = overrides.iter().filter(|o| o.file == file).collect();
    if mine.is_empty() {
        return toml::Value::try_from(config)?
            .try_into()
            .map_err(|e| override_error(file, "", e));
    }
    let mut value = toml::Value::try_from(config)?;
    for o in &mine {
        let dotted = o.path.join(".");
        set(&mut value, &o.path, o.value.clone())
            .map_err(|detail| override_error(file, &dotted, detail))?;
    }
    value
        .try_into()
        .map_err(|e| override_error(file, "", e.to_string()))
}

fn override_error(file: ConfigFile, path: &str, detail: impl std::fmt::Display) -> Error {
    Error::Step {
        step: format!("--set/--unset {}.{path}", file.name()),
        detail: detail.to_string(),
    }
}

/// Sets `path` in `value`, creating tables on the way (an array index must exist); `None`
/// removes the field, which must be there.
fn set(value: &mut toml::Value, path: &[String], new: Option<toml::Value>) -> Result<(), String> {
    let Some((first, rest)) = path.split_first() else {
        if let Some(new) = new {
            *value = new;
        }
        return Ok(());
    };
    if rest.is_empty() && new.is_none() {
        let toml::Value::Table(table) = value else {
            return Err(format!("`{first}` is not a field of a table"));
        };
        return match table.remove(first) {
            Some(_) => Ok(()),
            None => Err(format!("no field `{first}` to unset")),
        };
    }
    let next = match value {
        toml::Value::Table(table) => table
            .entry(first.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new())),
        toml::Value::Array(items) => {
            let index: usize = first
                .parse()
                .map_err(|_| format!("`{first}` indexes an array: a number is needed"))?;
            let len = items.len();
            items
                .get_mut(index)
                .ok_or_else(|| format!("index {index} out of {len} items"))?
        }
        other => return Err(format!("`{first}` is inside a {}", other.type_str())),
    };
    set(next, rest, new)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Writes the four configs of a stack into `layout.dir`, from the examples under `root`; the
/// ACME frontend on HTTPS with `acme_tls` (certificate, key) if given.
pub fn write_all(
    root: &Path,
    layout: &Layout,
    ports: &Ports,
    acme_tls: Option<&(PathBuf, PathBuf)>,
    overrides: &[Override],
) -> Result<(), Error> {
    let to = |file| layout.config(file);
    let gateway = gateway(root, layout, ports)?;
    finish(
        &gateway,
        ConfigFile::Gateway,
        overrides,
        &to(ConfigFile::Gateway),
    )?;
    let ocsp = ocsp(root, layout, ports)?;
    finish(&ocsp, ConfigFile::Ocsp, overrides, &to(ConfigFile::Ocsp))?;
    let mut acme = acme(root, layout, ports)?;
    if let Some((cert, key)) = acme_tls {
        acme.server.base_url = format!("https://127.0.0.1:{}", ports.acme);
        acme.server.tls = Some(ca_frontend::config::ServerTls {
            cert: cert.clone(),
            key: key.clone(),
        });
    }
    finish(&acme, ConfigFile::Acme, overrides, &to(ConfigFile::Acme))?;
    let perspective = perspective(root, layout, ports)?;
    finish(
        &perspective,
        ConfigFile::Perspective,
        overrides,
        &to(ConfigFile::Perspective),
    )
}

/// Loads `from` as a config of kind `file` (its own checks), applies `overrides` (written
/// `FILE.PATH=VALUE` with this kind's FILE), checks it again and writes it to `to`: how a script
/// derives a second config from a stack's (`hsmgate-stack config`). Relative paths in `from` are
/// written as they are, so `to` belongs beside `from`; a stack's own configs hold absolute paths.
pub fn rewrite(
    file: ConfigFile,
    from: &Path,
    to: &Path,
    overrides: &[Override],
) -> Result<(), Error> {
    let loaded = |e: &dyn std::fmt::Display| load_error(from, e);
    match file {
        ConfigFile::Gateway => finish(&hsm_config::Config::load(from)?, file, overrides, to),
        ConfigFile::Ocsp => {
            let config = ocsp::config::Config::load(from).map_err(|e| loaded(&e))?;
            finish(&config, file, overrides, to)
        }
        ConfigFile::Acme => {
            let config = ca_frontend::config::Config::load(from).map_err(|e| loaded(&e))?;
            finish(&config, file, overrides, to)
        }
        ConfigFile::Perspective => {
            let config =
                ca_frontend::perspective::PerspectiveConfig::load(from).map_err(|e| loaded(&e))?;
            finish(&config, file, overrides, to)
        }
    }
}

/// A config type's own checks, run on what is about to be written to `to`.
pub(super) trait Checked {
    fn problems(&self, to: &Path) -> Result<Vec<String>, Error>;
}

impl Checked for hsm_config::Config {
    /// Parsed back as the gateway will parse it: the schema's checks, each naming its field.
    fn problems(&self, to: &Path) -> Result<Vec<String>, Error> {
        let base = to.parent().map(Path::to_path_buf).unwrap_or_default();
        hsm_config::Config::parse(&configs::to_toml(self)?, to, base)?;
        Ok(Vec::new())
    }
}

impl Checked for ocsp::config::Config {
    fn problems(&self, _: &Path) -> Result<Vec<String>, Error> {
        Ok(self.validate())
    }
}

impl Checked for ca_frontend::config::Config {
    fn problems(&self, _: &Path) -> Result<Vec<String>, Error> {
        Ok(self.validate())
    }
}

impl Checked for ca_frontend::perspective::PerspectiveConfig {
    /// Its checks run when the perspective loads it; none here.
    fn problems(&self, _: &Path) -> Result<Vec<String>, Error> {
        Ok(Vec::new())
    }
}

/// `config` with `overrides` applied, checked, written to `to`.
pub(super) fn finish<T: Serialize + DeserializeOwned + Checked>(
    config: &T,
    file: ConfigFile,
    overrides: &[Override],
    to: &Path,
) -> Result<(), Error> {
    let config = apply_overrides(config, file, overrides)?;
    let problems = config.problems(to)?;
    if !problems.is_empty() {
        return Err(invalid(file, problems));
    }
    configs::write(&config, to)
}

fn invalid(file: ConfigFile, problems: Vec<String>) -> Error {
    Error::Step {
        step: format!("checking {}", file.file_name()),
        detail: problems.join("; "),
    }
}

fn load_error(path: &Path, detail: impl std::fmt::Display) -> Error {
    Error::Step {
        step: format!("loading {}", path.display()),
        detail: detail.to_string(),
    }
}

/// `hsm-config/examples/dev.toml` in the stack's directory, on its ports, mTLS with its certs.
pub(super) fn gateway(
    root: &Path,
    layout: &Layout,
    ports: &Ports,
) -> Result<hsm_config::Config, Error> {
    let examples = root.join("hsm-config/examples");
    let path = examples.join("dev.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
    let mut config = hsm_config::Config::parse(&text, &path, examples)?;
    config.gateway.listen = loopback(ports.gateway);
    config.gateway.metrics_listen = Some(loopback(ports.gateway_metrics));
    configs::dev_tls(&mut config, &layout.tls());
    configs::pins_into(&mut config, &layout.dir.join("pins"));
    config.audit.dir = layout.audit();
    Ok(config)
}

/// `ocsp/examples/dev.toml`: its store, CRL directory and issuer in the stack's directory, its
/// responder (and the CRL URLs it serves) and the gateway on the stack's ports.
pub(super) fn ocsp(
    root: &Path,
    layout: &Layout,
    ports: &Ports,
) -> Result<ocsp::config::Config, Error> {
    let path = root.join("ocsp/examples/dev.toml");
    let mut config = ocsp::config::Config::load(&path).map_err(|e| load_error(&path, e))?;
    config.responder.listen = loopback(ports.responder);
    config.responder.metrics_listen = Some(loopback(ports.responder_metrics));
    for issuer in &mut config.issuers {
        issuer.certificate = layout.issuer_pem();
        if let Some(crl) = &mut issuer.crl {
            crl.base_url = format!("http://127.0.0.1:{}", ports.responder);
            crl.directory = Some(layout.dir.join("crl"));
        }
    }
    config.store = ocsp::config::Store::Sqlite {
        path: layout.dir.join("ocsp.sqlite"),
    };
    config.presigner.gateway = format!("http://127.0.0.1:{}", ports.gateway);
    Ok(config)
}

/// `ca-frontend/examples/dev.toml`: the gateway, OCSP, DNS and perspectives on the stack's
/// ports, its CA, certificates and database in the stack's directory.
pub(super) fn acme(
    root: &Path,
    layout: &Layout,
    ports: &Ports,
) -> Result<ca_frontend::config::Config, Error> {
    let path = root.join("ca-frontend/examples/dev.toml");
    let mut config = ca_frontend::config::Config::load(&path).map_err(|e| load_error(&path, e))?;
    let tls = layout.tls();
    config.server.listen = loopback(ports.acme);
    config.server.base_url = format!("http://127.0.0.1:{}", ports.acme);
    config.server.metrics_listen = Some(loopback(ports.acme_metrics));
    config.gateway.url = format!("https://127.0.0.1:{}", ports.gateway);
    config.gateway.ca = Some(tls.join("ca.pem"));
    config.gateway.cert = Some(tls.join("ca-frontend.pem"));
    config.gateway.key = Some(tls.join("ca-frontend.key"));
    config.ca.root = layout.root_pem();
    config.ca.intermediate = layout.issuer_pem();
    config.ca.ocsp_url = Some(format!("http://127.0.0.1:{}", ports.responder));
    config.ocsp.config = layout.config(ConfigFile::Ocsp);
    config.validation.http_port = ports.http01;
    config.validation.tls_port = ports.tls_alpn01;
    config.validation.dns_server = Some(loopback(ports.dns));
    config.db = ca_frontend::config::Db::Sqlite {
        path: layout.dir.join("ca.sqlite"),
    };
    let perspectives = &mut config.validation.perspectives;
    perspectives.ca = Some(tls.join("ca.pem"));
    perspectives.cert = Some(tls.join("ca-frontend.pem"));
    perspectives.key = Some(tls.join("ca-frontend.key"));
    for (remote, port) in perspectives.remote.iter_mut().zip(ports.perspectives) {
        remote.url = format!("https://127.0.0.1:{port}");
    }
    Ok(config)
}

/// `ca-frontend/examples/perspective.toml`: mTLS with the stack's certificates, the stack's
/// validation DNS and ports (each perspective is started with its own `--name` and `--listen`).
pub(super) fn perspective(
    root: &Path,
    layout: &Layout,
    ports: &Ports,
) -> Result<ca_frontend::perspective::PerspectiveConfig, Error> {
    let path = root.join("ca-frontend/examples/perspective.toml");
    let mut config = ca_frontend::perspective::PerspectiveConfig::load(&path)
        .map_err(|e| load_error(&path, e))?;
    let tls = layout.tls();
    config.perspective.listen = loopback(ports.perspectives[0]);
    config.perspective.cert = tls.join("server.pem");
    config.perspective.key = tls.join("server.key");
    config.perspective.client_ca = tls.join("ca.pem");
    config.validation.http_port = ports.http01;
    config.validation.tls_port = ports.tls_alpn01;
    config.validation.dns_server = Some(loopback(ports.dns));
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_names_a_config_a_path_and_a_toml_value() {
        let o: Override = "ocsp.issuers.0.crl.revocation_delay_secs=3"
            .parse()
            .unwrap();
        assert_eq!(o.file, ConfigFile::Ocsp);
        assert_eq!(o.path, ["issuers", "0", "crl", "revocation_delay_secs"]);
        assert_eq!(o.value, Some(toml::Value::Integer(3)));
        let o: Override = r#"ocsp.presigner.cert_id_hashes=["sha1", "sha256"]"#
            .parse()
            .unwrap();
        assert!(matches!(o.value, Some(toml::Value::Array(ref a)) if a.len() == 2));
        let o: Override = "acme.server.base_url=https://x.test".parse().unwrap();
        assert_eq!(o.value, Some(toml::Value::String("https://x.test".into())));
        let o = Override::unset("gateway.gateway.tls").unwrap();
        assert_eq!((o.file, o.value), (ConfigFile::Gateway, None));
        assert!(Override::unset("gateway").is_err());
        assert!("nginx.a=1".parse::<Override>().is_err());
        assert!("ocsp=1".parse::<Override>().is_err());
        assert!("ocsp.responder.listen".parse::<Override>().is_err());
    }

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: String,
        items: Vec<Item>,
        #[serde(default)]
        extra: Option<Item>,
    }
    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        n: u32,
    }

    #[test]
    fn overrides_change_fields_and_refuse_unknown_or_mistyped_ones() {
        let sample = Sample {
            name: "a".into(),
            items: vec![Item { n: 1 }, Item { n: 2 }],
            extra: None,
        };
        let sets: Vec<Override> = ["ocsp.items.1.n=7", "ocsp.extra.n=9", "acme.name=other"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let changed = apply_overrides(&sample, ConfigFile::Ocsp, &sets).unwrap();
        assert_eq!(changed.items[1].n, 7);
        assert_eq!(changed.extra, Some(Item { n: 9 }));
        assert_eq!(changed.name, "a", "acme.* is another file's");
        for bad in ["ocsp.nmae=x", "ocsp.items.5.n=1", "ocsp.items.0.n=\"x\""] {
            let sets = [bad.parse::<Override>().unwrap()];
            let err = apply_overrides(&sample, ConfigFile::Ocsp, &sets).unwrap_err();
            assert!(err.to_string().contains("--unset ocsp."), "{bad}: {err}");
        }
        // --unset removes an optional field; a required or absent one is an error.
        let with_extra = Sample {
            extra: Some(Item { n: 3 }),
            ..changed
        };
        let unset = [Override::unset("ocsp.extra").unwrap()];
        let removed = apply_overrides(&with_extra, ConfigFile::Ocsp, &unset).unwrap();
        assert_eq!(removed.extra, None);
        for bad in ["ocsp.name", "ocsp.extra"] {
            let unset = [Override::unset(bad).unwrap()];
            assert!(
                apply_overrides(&removed, ConfigFile::Ocsp, &unset).is_err(),
                "{bad}"
            );
        }
    }
}
