//! The OCSP service's configuration (TOML), validated at start-up.
//!
//! Validity and refresh follow the CA/Browser Forum Baseline Requirements §4.9.9: a response is
//! valid for 8 hours to 10 days; for validity of 16 hours or more it is re-signed at least 8 hours
//! before nextUpdate and no later than 4 days after thisUpdate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::hash_alg::HashAlg;

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub responder: Responder,
    pub issuers: Vec<Issuer>,
    pub store: Store,
    #[serde(default)]
    pub presigner: Presigner,
    /// Directory of the file; relative paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Responder {
    pub listen: SocketAddr,
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Largest POST body accepted (RFC 5019 requests are ~100 bytes).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Bytes of DER responses the in-memory cache may hold. The HTTP threads also keep memos
    /// of answered GET paths (`responder::front`), an eighth of this shared among them: the
    /// process holds up to `cache_bytes × 1.125` whatever its number of cores.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
    /// A cached response younger than this is served without asking the store; older ones are
    /// checked against the store (so a revocation is served within this many seconds), and
    /// served from cache while the store is unreachable.
    #[serde(default = "default_cache_fresh_secs")]
    pub cache_fresh_secs: u64,
    /// `[responder.connections]`: header-read and idle timeouts, connection age and cap of the
    /// HTTP listener (defaults in `hsmgate_signer_api::http_listener::Limits`).
    #[serde(default)]
    pub connections: hsmgate_signer_api::http_listener::Limits,
}

impl Responder {
    /// A responder on `listen` with every other setting its default: what a file naming only
    /// `listen` loads as (for configs built in code and serialized).
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            metrics_listen: None,
            max_request_bytes: default_max_request_bytes(),
            cache_bytes: default_cache_bytes(),
            cache_fresh_secs: default_cache_fresh_secs(),
            connections: Default::default(),
        }
    }
}

fn default_max_request_bytes() -> usize {
    10_000
}
fn default_cache_bytes() -> u64 {
    256 << 20
}
fn default_cache_fresh_secs() -> u64 {
    5
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    /// Name used in the store and in logs.
    pub name: String,
    /// The issuer's certificate (PEM): CertIDs are matched against its name and key hashes.
    pub certificate: PathBuf,
    /// The gateway key that signs this issuer's responses (the issuer's own key: responses are
    /// signed by the CA directly, responderID byKey).
    pub signing_key: String,
    /// `[issuers.crl]`: this issuer publishes sharded CRLs (see [`crate::crl`]), signed with
    /// `signing_key` (the gateway must grant this client `sign-crl` on it).
    #[serde(default)]
    pub crl: Option<CrlConfig>,
}

/// BR §4.9.7: a subscriber CRL is re-issued at least every 7 days, and its nextUpdate is at
/// most 10 days after its thisUpdate.
pub const BR_MAX_UPDATE_PERIOD_SECS: u64 = 7 * 86_400;
pub const BR_MAX_CRL_VALIDITY_SECS: u64 = 10 * 86_400;
/// BR §4.9.7 (via §4.9.1.1 timelines): a revocation reaches the CRL within 24 hours.
pub const BR_MAX_REVOCATION_DELAY_SECS: u64 = 86_400;

/// `[issuers.crl]`: an issuer's CRL shards and how fresh they are kept.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CrlConfig {
    /// Number of shards (any positive number; Let's Encrypt uses 128). Fixed once published:
    /// the store refuses another count, as certificates name their shard's URL.
    pub shards: u32,
    /// `http://host[:port][/path]` where the shards are published: shard `n` is at
    /// `<base_url>/<issuer>/<n>.crl`, the list of all at `<base_url>/<issuer>.json`. The
    /// responder serves those paths, so this is its address (or a CDN's in front of it).
    pub base_url: String,
    /// Every shard is re-signed at least this often (BR §4.9.7: at most 7 days), each at its
    /// own offset within the period so the work is spread evenly. Default 6 hours.
    pub update_period_secs: u64,
    /// A shard with a new revocation is re-signed within this many seconds (BR: 24 hours).
    /// Default 60.
    pub revocation_delay_secs: u64,
    /// nextUpdate − thisUpdate (BR §4.9.7: at most 10 days); more than `update_period_secs`,
    /// so a shard never expires between two updates. Default 7 days.
    pub next_update_secs: u64,
    /// Also write every shard to `<directory>/<issuer>/<n>.crl` and the list to
    /// `<directory>/<issuer>.json` (atomic rename), for nginx, a CDN origin or object storage.
    pub directory: Option<PathBuf>,
}

impl Default for CrlConfig {
    fn default() -> Self {
        Self {
            shards: 128,
            base_url: String::new(),
            update_period_secs: 6 * 3600,
            revocation_delay_secs: 60,
            next_update_secs: 7 * 86_400,
            directory: None,
        }
    }
}

impl CrlConfig {
    /// Every rule broken, each naming its field under `path` (`issuers[0].crl`).
    pub fn problems(&self, path: &str, issuer: &str) -> Vec<String> {
        let mut errors = Vec::new();
        if !(1..=65_536).contains(&self.shards) {
            errors.push(format!("{path}.shards: must be between 1 and 65536"));
        }
        let url_ok = self.base_url.strip_prefix("http://").is_some_and(|rest| {
            !rest.is_empty()
                && !rest.starts_with('/')
                && rest.bytes().all(|b| b.is_ascii_graphic())
                && !rest.contains(['?', '#'])
        });
        if !url_ok {
            errors.push(format!(
                "{path}.base_url: must be an http:// URL without query or fragment (BR §7.1.2.11.2: CRL distribution points are HTTP URLs), got `{}`",
                self.base_url.chars().take(100).collect::<String>()
            ));
        }
        if issuer.is_empty()
            || !issuer
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            errors.push(format!(
                "{path}: the issuer's name is part of its CRL URLs: use only [A-Za-z0-9._-]"
            ));
        }
        if self.update_period_secs > BR_MAX_UPDATE_PERIOD_SECS {
            errors.push(format!(
                "{path}.update_period_secs: must be at most {BR_MAX_UPDATE_PERIOD_SECS} (BR §4.9.7: a new CRL at least every 7 days)"
            ));
        }
        if self.update_period_secs < 60 {
            errors.push(format!("{path}.update_period_secs: must be at least 60"));
        }
        if self.next_update_secs > BR_MAX_CRL_VALIDITY_SECS {
            errors.push(format!(
                "{path}.next_update_secs: must be at most {BR_MAX_CRL_VALIDITY_SECS} (BR §4.9.7: nextUpdate at most 10 days after thisUpdate)"
            ));
        }
        if self.next_update_secs <= self.update_period_secs {
            errors.push(format!(
                "{path}.next_update_secs: must be more than update_period_secs ({}), or shards expire before they are re-signed",
                self.update_period_secs
            ));
        }
        if !(1..=BR_MAX_REVOCATION_DELAY_SECS).contains(&self.revocation_delay_secs) {
            errors.push(format!(
                "{path}.revocation_delay_secs: must be between 1 and {BR_MAX_REVOCATION_DELAY_SECS} (BR §4.9.7: within 24 hours of a revocation)"
            ));
        }
        errors
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum Store {
    /// The embedded SQLite file.
    Sqlite { path: PathBuf },
    /// Redis: one URL for a single node, several (seed nodes) with `cluster = true`. The
    /// embedded SQLite file at `replica` keeps a local copy of every response served, so the
    /// responder keeps answering when Redis is down.
    Redis {
        urls: Vec<String>,
        #[serde(default)]
        cluster: bool,
        replica: PathBuf,
    },
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Presigner {
    /// The signing gateway (`http://127.0.0.1:50051`), or several separated by commas: calls
    /// are then balanced over the gateways that serve and move off one that dies
    /// (`hsmgate_signer_api::client`). No DNS: IP literals.
    pub gateway: String,
    /// nextUpdate - thisUpdate.
    pub validity_hours: u64,
    /// A response is re-signed once it is this old.
    pub refresh_after_hours: u64,
    /// Signatures per `SignBatch`.
    pub batch: usize,
    /// How often the refresh loop looks for due responses.
    pub interval_secs: u64,
    /// mTLS to the gateway (PEM files, relative to this file): the CA of the gateway's
    /// certificate, and this client's certificate and key. All three or none; none falls back
    /// to `HSMGATE_TLS_CA` / `_CERT` / `_KEY`, and without those the connection is plain text
    /// (a test gateway with `insecure_plaintext`).
    pub gateway_ca: Option<PathBuf>,
    pub gateway_cert: Option<PathBuf>,
    pub gateway_key: Option<PathBuf>,
    /// The CertID hash algorithms the pre-signer signs a response for, one response (one
    /// SingleResponse, one HSM signature) per hash per certificate; see [`CertIdHashes`].
    pub cert_id_hashes: CertIdHashes,
}

/// `presigner.cert_id_hashes`: the CertID hashes the pre-signer keeps a response for. Each is
/// a separately signed response with exactly one SingleResponse (RFC 5019 §2.2.1 and RFC 9919
/// §2.2.1: responses "SHOULD include only one SingleResponse"; Go's `ocsp.ParseResponse` and
/// Python `cryptography`'s `certificate_status` refuse two), stored per (certificate, hash);
/// a request is answered with the response for the hash its CertID used, and a request whose
/// hash has no response gets `unauthorized`.
///
/// **Cost: one HSM signature per certificate per hash, at every refresh and revocation** —
/// two hashes double the signing load of the capacity plan (README, "Speed"; the drill's
/// projection counts it).
///
/// - `["sha1", "sha256"]` (the default): every client finds its CertID — RFC 5019 clients
///   (OpenSSL's default, Go, Python, most TLS stacks' stapling) send SHA-1 and RFC 9919 clients
///   SHA-256 — so no request answered before this layout is answered `unauthorized` after it.
///   Chosen for that: a CA whose subscribers run every common client should not turn SHA-256
///   clients away to save signatures it can afford. At 2 signatures per certificate.
/// - `["sha1"]`: what Let's Encrypt served and RFC 5019 profiles; half the signatures;
///   SHA-256 requests are answered `unauthorized`.
/// - `["sha256"]`: RFC 9919 only: "OCSP responders SHOULD NOT distribute OCSP responses that
///   contain CertIDs that use SHA-1 if the OCSP responder has no clients that require the use
///   of SHA-1". `ocsp_requests_by_cert_id_hash_total{hash="sha1"}` says when that point has
///   come.
///
/// The responder reads the store, not this setting: after a change, the responses of a hash
/// dropped from the list are served until they expire (a revocation removes them at once:
/// see `store`), and those of an added hash appear as the pre-signer re-signs (within
/// `refresh_after_hours`). Responses signed before this layout (one response with a
/// SingleResponse per hash) are served for either hash until the refresh re-signs them.
///
/// Non-empty, no name twice, only `sha1` and `sha256`; a bad value fails the load with an
/// error naming `presigner.cert_id_hashes` (the type cannot hold one: the pre-signer takes it
/// as it is). Kept in SHA-1-then-SHA-256 order whatever order the file lists them in.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct CertIdHashes(Vec<HashAlg>);

impl CertIdHashes {
    /// The set of `algs`: non-empty, no duplicates.
    pub fn new(algs: &[HashAlg]) -> Result<Self, String> {
        const FIELD: &str = "presigner.cert_id_hashes";
        if algs.is_empty() {
            return Err(format!(
                "{FIELD}: must name at least one of \"sha1\", \"sha256\""
            ));
        }
        if let Some(dup) = algs
            .iter()
            .enumerate()
            .find_map(|(i, a)| algs[..i].contains(a).then_some(a))
        {
            return Err(format!("{FIELD}: \"{}\" is listed twice", dup.name()));
        }
        Ok(Self(
            HashAlg::ALL
                .into_iter()
                .filter(|a| algs.contains(a))
                .collect(),
        ))
    }

    /// Only `alg`.
    pub fn only(alg: HashAlg) -> Self {
        Self(vec![alg])
    }

    /// SHA-1 first.
    pub fn iter(&self) -> impl Iterator<Item = HashAlg> + '_ {
        self.0.iter().copied()
    }

    pub fn contains(&self, alg: HashAlg) -> bool {
        self.0.contains(&alg)
    }
}

impl Default for CertIdHashes {
    /// Both, as separate responses (see [`CertIdHashes`] for why).
    fn default() -> Self {
        Self(HashAlg::ALL.to_vec())
    }
}

impl TryFrom<Vec<String>> for CertIdHashes {
    type Error = String;

    fn try_from(names: Vec<String>) -> Result<Self, String> {
        let algs = names
            .iter()
            .map(|n| {
                HashAlg::from_name(n).ok_or_else(|| {
                    format!(
                        "presigner.cert_id_hashes: unknown hash \"{n}\" (expected \"sha1\" or \"sha256\")"
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(&algs)
    }
}

/// Written as the names the file uses (`["sha1", "sha256"]`), so a serialized config loads back.
impl From<CertIdHashes> for Vec<String> {
    fn from(hashes: CertIdHashes) -> Self {
        hashes.iter().map(|a| a.name().to_owned()).collect()
    }
}

impl Default for Presigner {
    fn default() -> Self {
        Self {
            gateway: "http://127.0.0.1:50051".into(),
            validity_hours: 96,
            refresh_after_hours: 48,
            batch: 256,
            interval_secs: 60,
            gateway_ca: None,
            gateway_cert: None,
            gateway_key: None,
            cert_id_hashes: CertIdHashes::default(),
        }
    }
}

impl Config {
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let fail = |detail: String| Error::Config {
            path: path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let mut config: Config = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
        config.base_dir = path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));
        let errors = config.validate();
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(fail(errors.join("; ")))
        }
    }

    /// Every rule broken, each naming its field.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let p = &self.presigner;
        if !(8..=240).contains(&p.validity_hours) {
            errors.push("presigner.validity_hours: must be between 8 and 240 (BR §4.9.9)".into());
        }
        if p.validity_hours >= 16 {
            if p.refresh_after_hours + 8 > p.validity_hours {
                errors.push(format!(
                    "presigner.refresh_after_hours: must be at most validity_hours - 8 = {} (re-sign at least 8 h before nextUpdate, BR §4.9.9)",
                    p.validity_hours.saturating_sub(8)
                ));
            }
            if p.refresh_after_hours > 96 {
                errors.push("presigner.refresh_after_hours: must be at most 96 (re-sign no later than 4 days after thisUpdate, BR §4.9.9)".into());
            }
        } else if p.refresh_after_hours >= p.validity_hours {
            errors.push("presigner.refresh_after_hours: must be less than validity_hours".into());
        }
        if p.refresh_after_hours == 0 {
            errors.push("presigner.refresh_after_hours: must be at least 1".into());
        }
        let tls_set = [&p.gateway_ca, &p.gateway_cert, &p.gateway_key]
            .iter()
            .filter(|f| f.is_some())
            .count();
        if tls_set != 0 && tls_set != 3 {
            errors.push(
                "presigner.gateway_cert: set gateway_ca, gateway_cert and gateway_key together"
                    .into(),
            );
        }
        if !(1..=10_000).contains(&p.batch) {
            errors.push("presigner.batch: must be between 1 and 10000".into());
        }
        if self.issuers.is_empty() {
            errors.push("issuers: at least one issuer is required".into());
        }
        for (i, issuer) in self.issuers.iter().enumerate() {
            if issuer.name.is_empty() || issuer.name.contains(':') {
                errors.push(format!(
                    "issuers[{i}].name: must be non-empty and contain no `:`"
                ));
            }
            if let Some(crl) = &issuer.crl {
                errors.extend(crl.problems(&format!("issuers[{i}].crl"), &issuer.name));
            }
        }
        errors.extend(self.responder.connections.problems("responder.connections"));
        if self.responder.max_request_bytes < 64 {
            errors.push("responder.max_request_bytes: must be at least 64".into());
        }
        if let Store::Redis { urls, .. } = &self.store
            && urls.is_empty()
        {
            errors.push("store.urls: at least one Redis URL is required".into());
        }
        errors
    }

    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }

    /// The pre-signer's mTLS files for the gateway: from this file, else the environment.
    pub fn gateway_tls(&self) -> Option<hsmgate_signer_api::client::ClientTls> {
        let p = &self.presigner;
        match (&p.gateway_ca, &p.gateway_cert, &p.gateway_key) {
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

    const DEV: &str = include_str!("../examples/dev.toml");

    fn parse(text: &str) -> Config {
        let mut c: Config = toml::from_str(text).expect("config parses");
        c.base_dir = PathBuf::from("/etc/hsmgate");
        c
    }

    fn with_hashes(line: &str) -> String {
        DEV.replace("[presigner]\n", &format!("[presigner]\n{line}\n"))
    }

    #[test]
    fn cert_id_hashes_default_to_both_and_take_either_alone() {
        assert_eq!(
            parse(DEV)
                .presigner
                .cert_id_hashes
                .iter()
                .collect::<Vec<_>>(),
            [HashAlg::Sha1, HashAlg::Sha256]
        );
        for (line, expect) in [
            (
                r#"cert_id_hashes = ["sha1", "sha256"]"#,
                &[HashAlg::Sha1, HashAlg::Sha256][..],
            ),
            // Listed the other way round: still SHA-1 first, the bytes of the default.
            (
                r#"cert_id_hashes = ["sha256", "sha1"]"#,
                &[HashAlg::Sha1, HashAlg::Sha256][..],
            ),
            (r#"cert_id_hashes = ["sha1"]"#, &[HashAlg::Sha1][..]),
            (r#"cert_id_hashes = ["sha256"]"#, &[HashAlg::Sha256][..]),
        ] {
            let c = parse(&with_hashes(line));
            assert!(c.validate().is_empty(), "{line}: {:?}", c.validate());
            let got: Vec<HashAlg> = c.presigner.cert_id_hashes.iter().collect();
            assert_eq!(got, expect, "{line}");
        }
    }

    #[test]
    fn bad_cert_id_hashes_fail_the_load_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        for (line, why) in [
            ("cert_id_hashes = []", "must name at least one"),
            (
                r#"cert_id_hashes = ["sha1", "sha1"]"#,
                "\"sha1\" is listed twice",
            ),
            (
                r#"cert_id_hashes = ["sha256", "md5"]"#,
                "unknown hash \"md5\"",
            ),
            (r#"cert_id_hashes = ["SHA1"]"#, "unknown hash \"SHA1\""),
            (r#"cert_id_hashes = "sha1""#, "cert_id_hashes"),
        ] {
            let path = dir.path().join("ocsp.toml");
            std::fs::write(&path, with_hashes(line)).unwrap();
            let err = Config::load(&path).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, Error::Config { .. }), "{line}: {text}");
            assert!(text.contains("cert_id_hashes"), "{line}: {text}");
            assert!(text.contains(why), "{line}: {text}");
            if why != "cert_id_hashes" {
                assert!(
                    text.contains("presigner.cert_id_hashes: "),
                    "{line}: {text}"
                );
            }
        }
        assert!(CertIdHashes::new(&[]).is_err());
        assert!(CertIdHashes::new(&[HashAlg::Sha256, HashAlg::Sha256]).is_err());
        assert_eq!(
            CertIdHashes::new(&[HashAlg::Sha256]).unwrap(),
            CertIdHashes::only(HashAlg::Sha256)
        );
    }

    /// Every `*.toml` under `ocsp/examples/`, loaded (and validated) as operators load it.
    fn examples() -> Vec<(PathBuf, Config)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("ocsp/examples")
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        assert!(!paths.is_empty(), "no examples in {}", dir.display());
        paths
            .into_iter()
            .map(|p| {
                let c = Config::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                (p, c)
            })
            .collect()
    }

    /// `config` serialized and parsed back, with the (never serialized) base directory it had.
    fn round_trip(config: &Config) -> (String, Config) {
        let text = toml::to_string(config).expect("serializes");
        let mut back: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        back.base_dir = config.base_dir.clone();
        (text, back)
    }

    /// Tests write configs from this type (`hsmgate_stack::configs::write`), not text: every
    /// example must come back from its serialization as the same config, defaults included.
    #[test]
    fn examples_round_trip_through_serialize() {
        for (path, config) in examples() {
            let (text, back) = round_trip(&config);
            assert_eq!(back, config, "{}:\n{text}", path.display());
            assert!(back.validate().is_empty(), "{}", path.display());
        }
    }

    /// Fields changed from the example survive, so the round trip is not comparing defaults.
    #[test]
    fn changed_fields_survive_the_round_trip() {
        let (_, mut config) = examples().swap_remove(0);
        config.presigner.cert_id_hashes = CertIdHashes::only(HashAlg::Sha256);
        config.presigner.gateway_ca = Some("tls/ca.pem".into());
        config.presigner.gateway_cert = Some("tls/p.pem".into());
        config.presigner.gateway_key = Some("tls/p.key".into());
        config.responder.connections.max_connections = 7;
        config.responder.metrics_listen = None;
        config.issuers[0].crl = None;
        config.store = Store::Redis {
            urls: vec!["redis://127.0.0.1:1".into(), "redis://127.0.0.1:2".into()],
            cluster: true,
            replica: "replica.sqlite".into(),
        };
        let (text, back) = round_trip(&config);
        assert_eq!(back, config, "{text}");
        assert!(text.contains(r#"cert_id_hashes = ["sha256"]"#), "{text}");
        assert!(text.contains(r#"kind = "redis""#), "{text}");
        assert!(!text.contains("base_dir"), "{text}");
        let (_, original) = examples().swap_remove(0);
        assert_ne!(back, original);
    }

    #[test]
    fn gateway_tls_files_come_together_and_resolve_against_the_file() {
        let full = DEV.replace(
            "[presigner]\n",
            "[presigner]\ngateway_ca = \"tls/ca.pem\"\ngateway_cert = \"tls/p.pem\"\ngateway_key = \"tls/p.key\"\n",
        );
        let c = parse(&full);
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let tls = c.gateway_tls().expect("tls from the file");
        assert_eq!(tls.ca, Path::new("/etc/hsmgate/tls/ca.pem"));
        assert_eq!(tls.key, Path::new("/etc/hsmgate/tls/p.key"));

        let partial = DEV.replace(
            "[presigner]\n",
            "[presigner]\ngateway_cert = \"tls/p.pem\"\n",
        );
        let errors = parse(&partial).validate();
        assert!(
            errors.iter().any(|e| e.starts_with(
                "presigner.gateway_cert: set gateway_ca, gateway_cert and gateway_key together"
            )),
            "{errors:?}"
        );
    }
}
