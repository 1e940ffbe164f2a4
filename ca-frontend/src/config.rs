//! The frontend's configuration: one TOML file, validated at start-up. Relative paths resolve
//! against the file's directory. Every error names the field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;
/// `validation.allow_private_addresses`, nameable where configs are built in code.
pub use crate::addresses::AllowPrivate;

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: Server,
    pub gateway: Gateway,
    pub ca: Ca,
    pub ocsp: Ocsp,
    #[serde(default)]
    pub validation: Validation,
    pub db: Db,
    #[serde(default)]
    pub limits: Limits,
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub listen: SocketAddr,
    /// The URL clients use to reach this server, without a trailing slash
    /// (`https://acme.example`); every JWS `url` must start with it.
    pub base_url: String,
    /// Serve HTTPS with this certificate chain and key (PEM). Without it the server speaks plain
    /// HTTP, which is allowed only on loopback.
    pub tls: Option<ServerTls>,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// How many of the most recently issued nonces are remembered (older ones are refused).
    #[serde(default = "default_nonces")]
    pub nonce_capacity: usize,
    /// Terms of service URL for the directory's `meta`.
    pub terms_of_service: Option<String>,
    /// `[server.connections]`: header-read and idle timeouts, connection age and cap of the
    /// listener (defaults in `hsmgate_signer_api::http_listener::Limits`).
    #[serde(default)]
    pub connections: hsmgate_signer_api::http_listener::Limits,
    /// Where `/metrics` is served (OpenMetrics text, `hsmgate_acme_*`: requests, problems,
    /// orders, issuance latency, validations, rate limits, database and gateway calls, the
    /// repair pass, remote perspectives), on a listener of its own; none if unset.
    pub metrics_listen: Option<SocketAddr>,
}

impl Server {
    /// Plain HTTP on `listen` (loopback only) for clients that use `base_url`, every other
    /// setting its default: what a file naming only those two loads as.
    pub fn new(listen: SocketAddr, base_url: impl Into<String>) -> Self {
        Self {
            listen,
            base_url: base_url.into(),
            tls: None,
            max_body_bytes: default_max_body(),
            nonce_capacity: default_nonces(),
            terms_of_service: None,
            connections: Default::default(),
            metrics_listen: None,
        }
    }
}

fn default_max_body() -> usize {
    64 * 1024
}

fn default_nonces() -> usize {
    1 << 20
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    /// The gateway's URL, or several separated by commas: calls are then balanced over the
    /// gateways that serve and move off one that dies (`hsmgate_signer_api::client`).
    pub url: String,
    /// mTLS files (PEM); without them `HSMGATE_TLS_CA/CERT/KEY`, else plain text (loopback
    /// gateways configured with `insecure_plaintext` only).
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The gateway key that signs end-entity certificates (the intermediate's).
    pub issuing_key: String,
    /// Certificates per `SignBatch` call at most; concurrent finalizations are batched.
    #[serde(default = "default_batch")]
    pub batch: usize,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl Gateway {
    /// The gateway(s) at `url`, signing with `issuing_key`; no TLS files (the environment's, else
    /// plain text), batch and timeout their defaults.
    pub fn new(url: impl Into<String>, issuing_key: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ca: None,
            cert: None,
            key: None,
            issuing_key: issuing_key.into(),
            batch: default_batch(),
            timeout_ms: default_timeout_ms(),
        }
    }
}

fn default_batch() -> usize {
    64
}

fn default_timeout_ms() -> u64 {
    10_000
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Ca {
    /// The root certificate (PEM), for clients' `openssl verify` and the chain check at start-up.
    pub root: PathBuf,
    /// The issuing (intermediate) certificate (PEM): its key is `gateway.issuing_key`.
    pub intermediate: PathBuf,
    /// OCSP URL put in the Authority Information Access of certificates whose profile includes
    /// `ocsp` in its `status`; required then.
    #[serde(default)]
    pub ocsp_url: Option<String>,
    /// caIssuers URL (where the intermediate can be fetched), optional.
    pub ca_issuers_url: Option<String>,
    pub profiles: Vec<Profile>,
    /// The profile an order gets when it names none.
    pub default_profile: String,
    /// Domains this CA recognises in CAA `issue`/`issuewild` records (RFC 8659 §4.2).
    pub caa_identities: Vec<String>,
    /// Leaf key policy: RSA modulus sizes allowed (bits); EC P-256 and P-384 are always allowed.
    #[serde(default = "default_rsa_sizes")]
    pub rsa_key_sizes: Vec<usize>,
    /// At most this many names per certificate.
    #[serde(default = "default_max_names")]
    pub max_names: usize,
    /// Special-use TLDs (RFC 6761: `test`, `example`, `localhost`, `invalid`; `local`, `alt`,
    /// `internal`) names are issued under. Never public: only for a CA that validates against
    /// a private DNS (the dev stack, tests). Default none. See [`crate::names`].
    #[serde(default)]
    pub allowed_special_tlds: Vec<String>,
}

impl Ca {
    /// The CA of `root` and `intermediate` (PEM files) issuing `profiles`, the first of them by
    /// default, for the CAA identities `caa_identities`; no OCSP or caIssuers URL, no special-use
    /// TLD, key sizes and name count their defaults.
    pub fn new(
        root: impl Into<PathBuf>,
        intermediate: impl Into<PathBuf>,
        profiles: Vec<Profile>,
        caa_identities: Vec<String>,
    ) -> Self {
        Self {
            root: root.into(),
            intermediate: intermediate.into(),
            ocsp_url: None,
            ca_issuers_url: None,
            default_profile: profiles.first().map(|p| p.name.clone()).unwrap_or_default(),
            profiles,
            caa_identities,
            rsa_key_sizes: default_rsa_sizes(),
            max_names: default_max_names(),
            allowed_special_tlds: Vec::new(),
        }
    }
}

fn default_rsa_sizes() -> Vec<usize> {
    vec![2048, 3072, 4096]
}

fn default_max_names() -> usize {
    100
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    /// Certificate lifetime in hours (90 days = 2160).
    pub validity_hours: u64,
    pub description: Option<String>,
    /// Where relying parties learn the status of this profile's certificates. Default `both`.
    #[serde(default)]
    pub status: StatusChannels,
}

impl Profile {
    /// A profile `name` of certificates valid `validity_hours`, no description, both status
    /// channels.
    pub fn new(name: impl Into<String>, validity_hours: u64) -> Self {
        Self {
            name: name.into(),
            validity_hours,
            description: None,
            status: StatusChannels::default(),
        }
    }
}

/// The revocation channels a certificate names (BR §7.1.2.7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StatusChannels {
    /// CRL Distribution Points only: the URL of the certificate's CRL shard, fixed at issuance
    /// (Let's Encrypt's certificates since May 2025). The AIA then carries only caIssuers.
    Crl,
    /// The OCSP responder's URL in the Authority Information Access only.
    Ocsp,
    /// Both.
    #[default]
    Both,
}

impl StatusChannels {
    pub fn crl(self) -> bool {
        matches!(self, Self::Crl | Self::Both)
    }
    pub fn ocsp(self) -> bool {
        matches!(self, Self::Ocsp | Self::Both)
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Ocsp {
    /// The OCSP service's config (`ocsp/examples/dev.toml`): its store and issuers. The frontend
    /// publishes each new certificate's status through the pre-signer it describes.
    pub config: PathBuf,
    /// The issuer's name in that config (the intermediate).
    pub issuer: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Validation {
    /// Port http-01 connects to (80 in production; like Pebble's `httpPort`).
    pub http_port: u16,
    /// Port tls-alpn-01 connects to (443 in production; Pebble's `tlsPort`).
    pub tls_port: u16,
    /// DNS server for TXT, CAA and address lookups (`127.0.0.1:8053`); none: the system's.
    pub dns_server: Option<SocketAddr>,
    pub timeout_ms: u64,
    /// Hours an authorization stays valid once validated (its `expires`).
    pub authz_valid_hours: u64,
    /// Hours a pending order and its authorizations live.
    pub pending_hours: u64,
    /// Let validation connect to loopback, private and other special-purpose addresses
    /// ([`crate::addresses`]), refused by default. Only for the dev stack and tests, whose names
    /// resolve to 127.0.0.1; start-up warns when it is set. `true`, or a list of addresses.
    pub allow_private_addresses: crate::addresses::AllowPrivate,
    /// `[validation.perspectives]`: remote perspectives (BR §3.2.2.9), none by default.
    pub perspectives: crate::perspective::Perspectives,
}

impl Default for Validation {
    fn default() -> Self {
        Self {
            http_port: 80,
            tls_port: 443,
            dns_server: None,
            timeout_ms: 10_000,
            authz_valid_hours: 24 * 30,
            pending_hours: 24 * 7,
            allow_private_addresses: Default::default(),
            perspectives: Default::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Db {
    Sqlite {
        path: PathBuf,
    },
    /// A libpq-style connection string (`host=127.0.0.1 user=postgres dbname=test`). Serialized
    /// verbatim, like every field: a password in it is in any file this config is written to.
    Postgres {
        url: String,
    },
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// New orders per account per hour (Let's Encrypt: 300 per 3 hours).
    pub orders_per_account_per_hour: u32,
    /// Certificates per registered domain per week (Let's Encrypt: 50).
    pub certificates_per_domain_per_week: u32,
    /// New accounts per hour from all clients.
    pub accounts_per_hour: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            orders_per_account_per_hour: 300,
            certificates_per_domain_per_week: 50,
            accounts_per_hour: 500,
        }
    }
}

impl Config {
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| Error::Config {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(Error::Config {
                path: path.display().to_string(),
                detail: problems.join("; "),
            });
        }
        Ok(config)
    }

    /// Where `/metrics` is served: `server.metrics_listen`, else its older spelling
    /// `validation.perspectives.metrics_listen`.
    pub fn metrics_listen(&self) -> Option<SocketAddr> {
        self.server
            .metrics_listen
            .or(self.validation.perspectives.metrics_listen)
    }

    /// Every problem with the values, each naming its field.
    pub fn validate(&self) -> Vec<String> {
        let mut out = Vec::new();
        let base = self.server.base_url.as_str();
        if !(base.starts_with("http://") || base.starts_with("https://")) || base.ends_with('/') {
            out.push(format!(
                "server.base_url `{base}`: must be an http(s) URL without a trailing slash"
            ));
        }
        if self.server.tls.is_none() && !self.server.listen.ip().is_loopback() {
            out.push(format!(
                "server.listen {}: plain HTTP is allowed on loopback only; configure server.tls",
                self.server.listen
            ));
        }
        out.extend(self.server.connections.problems("server.connections"));
        if let (Some(a), Some(b)) = (
            self.server.metrics_listen,
            self.validation.perspectives.metrics_listen,
        ) && a != b
        {
            out.push(format!(
                "validation.perspectives.metrics_listen {b}: the old spelling of server.metrics_listen, which says {a}; keep one"
            ));
        }
        if self.server.max_body_bytes < 1024 {
            out.push("server.max_body_bytes: at least 1024".into());
        }
        if self.gateway.batch == 0 {
            out.push("gateway.batch: at least 1".into());
        }
        if self.ca.profiles.is_empty() {
            out.push("ca.profiles: at least one profile".into());
        }
        for (i, p) in self.ca.profiles.iter().enumerate() {
            if p.status.ocsp() && self.ca.ocsp_url.is_none() {
                out.push(format!(
                    "ca.profiles[{i}].status: `{}` names the OCSP responder, but ca.ocsp_url is not set",
                    if p.status.crl() { "both" } else { "ocsp" }
                ));
            }
            // BR §7.1.2.7.7: the AIA must hold at least one access description; without OCSP
            // that is caIssuers.
            if !p.status.ocsp() && self.ca.ca_issuers_url.is_none() {
                out.push(format!(
                    "ca.profiles[{i}].status: `crl` leaves the Authority Information Access empty \
                     unless ca.ca_issuers_url is set (BR §7.1.2.7.7 requires one entry)"
                ));
            }
            // CA/Browser Forum BR §6.3.2: at most 398 days (and falling); at least an hour.
            if !(1..=398 * 24).contains(&p.validity_hours) {
                out.push(format!(
                    "ca.profiles[{i}].validity_hours {}: between 1 and 9552 (398 days)",
                    p.validity_hours
                ));
            }
        }
        if !self
            .ca
            .profiles
            .iter()
            .any(|p| p.name == self.ca.default_profile)
        {
            out.push(format!(
                "ca.default_profile `{}`: no profile of that name",
                self.ca.default_profile
            ));
        }
        if self.ca.caa_identities.is_empty() {
            out.push("ca.caa_identities: at least one domain".into());
        }
        if self.ca.rsa_key_sizes.iter().any(|b| *b < 2048) {
            out.push("ca.rsa_key_sizes: no size below 2048".into());
        }
        for tld in &self.ca.allowed_special_tlds {
            if !crate::names::allowable_special_tlds().any(|t| t == tld) {
                out.push(format!(
                    "ca.allowed_special_tlds `{tld}`: only special-use TLDs can be allowed ({})",
                    crate::names::allowable_special_tlds()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        if self.validation.timeout_ms == 0 {
            out.push("validation.timeout_ms: at least 1".into());
        }
        out
    }

    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }

    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.ca.profiles.iter().find(|p| p.name == name)
    }

    /// The gateway's client TLS files: from this file, else the environment.
    pub fn gateway_tls(&self) -> Option<hsmgate_signer_api::client::ClientTls> {
        let g = &self.gateway;
        match (&g.ca, &g.cert, &g.key) {
            (Some(ca), Some(cert), Some(key)) => Some(hsmgate_signer_api::client::ClientTls::new(
                self.resolve(ca),
                self.resolve(cert),
                self.resolve(key),
            )),
            _ => hsmgate_signer_api::client::ClientTls::from_env(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perspective::PerspectiveConfig;

    fn config(allowed: &str) -> Config {
        toml::from_str(&format!(
            r#"
[server]
listen = "127.0.0.1:0"
base_url = "http://127.0.0.1:4001"
[gateway]
url = "http://127.0.0.1:1"
issuing_key = "k"
[ca]
root = "r.pem"
intermediate = "i.pem"
ocsp_url = "http://127.0.0.1:2"
default_profile = "p"
caa_identities = ["ca.example"]
allowed_special_tlds = {allowed}
[[ca.profiles]]
name = "p"
validity_hours = 24
[ocsp]
config = "o.toml"
issuer = "i"
[db]
kind = "sqlite"
path = "x.sqlite"
"#
        ))
        .expect("toml")
    }

    #[test]
    fn only_special_use_tlds_can_be_allowed() {
        assert_eq!(
            config(r#"["test", "local"]"#).validate(),
            Vec::<String>::new()
        );
        for tld in ["com", "onion", "arpa", "home.arpa", "TEST"] {
            let problems = config(&format!("[\"{tld}\"]")).validate();
            assert!(
                problems.len() == 1 && problems[0].starts_with("ca.allowed_special_tlds"),
                "{tld}: {problems:?}"
            );
        }
    }

    /// A profile's status channels need their URLs: OCSP the responder's, CRL-only a
    /// caIssuers URL so that the AIA the BR require is not empty.
    #[test]
    fn status_channels_need_their_urls() {
        let mut c = config("[]");
        assert_eq!(c.ca.profiles[0].status, StatusChannels::Both);
        c.ca.ocsp_url = None;
        let problems = c.validate();
        assert!(
            problems.len() == 1
                && problems[0].starts_with("ca.profiles[0].status: `both`")
                && problems[0].contains("ca.ocsp_url is not set"),
            "{problems:?}"
        );
        c.ca.profiles[0].status = StatusChannels::Crl;
        let problems = c.validate();
        assert!(
            problems.len() == 1 && problems[0].contains("ca.ca_issuers_url"),
            "{problems:?}"
        );
        c.ca.ca_issuers_url = Some("http://127.0.0.1:3/issuer.der".into());
        assert_eq!(c.validate(), Vec::<String>::new());
        c.ca.profiles[0].status = StatusChannels::Ocsp;
        let problems = c.validate();
        assert!(
            problems.len() == 1 && problems[0].contains("`ocsp` names the OCSP responder"),
            "{problems:?}"
        );
    }

    /// Every `*.toml` under `ca-frontend/examples/`, loaded (and validated) as its command loads
    /// it: a file with a `[perspective]` table is `ca-frontend perspective`'s, others the
    /// frontend's.
    fn examples() -> (Vec<(PathBuf, Config)>, Vec<(PathBuf, PerspectiveConfig)>) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("ca-frontend/examples")
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        let (mut frontends, mut perspectives) = (Vec::new(), Vec::new());
        for path in paths {
            let text = std::fs::read_to_string(&path).expect("example");
            let table: toml::Table = toml::from_str(&text).expect("example is TOML");
            if table.contains_key("perspective") {
                let c = PerspectiveConfig::load(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                perspectives.push((path, c));
            } else {
                let c = Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                frontends.push((path, c));
            }
        }
        assert!(!frontends.is_empty() && !perspectives.is_empty());
        (frontends, perspectives)
    }

    /// `config` serialized and parsed back (the base directory is never serialized).
    fn round_trip<T: Serialize + serde::de::DeserializeOwned>(config: &T) -> (String, T) {
        let text = toml::to_string(config).expect("serializes");
        let back: T = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        (text, back)
    }

    /// Tests write configs from these types (`hsmgate_stack::configs::write`), not text: every
    /// example must come back from its serialization as the same config, defaults included.
    #[test]
    fn examples_round_trip_through_serialize() {
        let (frontends, perspectives) = examples();
        for (path, config) in frontends {
            let (text, mut back) = round_trip(&config);
            assert!(!text.contains("base_dir"), "{text}");
            back.base_dir = config.base_dir.clone();
            assert_eq!(back, config, "{}:\n{text}", path.display());
            assert_eq!(back.validate(), Vec::<String>::new(), "{}", path.display());
        }
        for (path, config) in perspectives {
            let (text, mut back) = round_trip(&config);
            assert!(!text.contains("base_dir"), "{text}");
            back.base_dir = config.base_dir.clone();
            assert_eq!(back, config, "{}:\n{text}", path.display());
        }
    }

    /// Fields changed from the examples survive, so the round trip is not comparing defaults.
    #[test]
    fn changed_fields_survive_the_round_trip() {
        let (mut frontends, mut perspectives) = examples();
        let (_, original) = frontends.swap_remove(0);
        let mut config = original.clone();
        config.server.connections.idle_timeout_secs = 3;
        config.server.tls = Some(ServerTls {
            cert: "tls/server.pem".into(),
            key: "tls/server.key".into(),
        });
        config.ca.profiles[0].status = StatusChannels::Crl;
        config.ca.rsa_key_sizes = vec![3072];
        config.validation.allow_private_addresses =
            crate::addresses::AllowPrivate::Only(vec!["127.0.0.2".parse().expect("ip")]);
        config.validation.perspectives.remote.clear();
        config.db = Db::Postgres {
            url: "host=127.0.0.1 user=postgres dbname=test".into(),
        };
        config.limits.accounts_per_hour = 1;
        let (text, mut back) = round_trip(&config);
        back.base_dir = config.base_dir.clone();
        assert_eq!(back, config, "{text}");
        assert!(text.contains(r#"status = "crl""#), "{text}");
        assert!(
            text.contains(r#"allow_private_addresses = ["127.0.0.2"]"#),
            "{text}"
        );
        assert_ne!(back, original);

        let (_, original) = perspectives.swap_remove(0);
        let mut config = original.clone();
        config.perspective.region = "elsewhere".into();
        config.validation.dns_server = None;
        config.validation.allow_private_addresses = crate::addresses::AllowPrivate::All(false);
        let (text, mut back) = round_trip(&config);
        back.base_dir = config.base_dir.clone();
        assert_eq!(back, config, "{text}");
        assert_ne!(back, original);
    }
}
