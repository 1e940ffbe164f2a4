//! The OCSP service's configuration (TOML), validated at start-up.
//!
//! Validity and refresh follow the CA/Browser Forum Baseline Requirements §4.9.9: a response is
//! valid for 8 hours to 10 days; for validity of 16 hours or more it is re-signed at least 8 hours
//! before nextUpdate and no later than 4 days after thisUpdate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::Error;

#[derive(Clone, Debug, Deserialize)]
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

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Responder {
    pub listen: SocketAddr,
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Largest POST body accepted (RFC 5019 requests are ~100 bytes).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Bytes of DER responses the in-memory cache may hold.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
    /// A cached response younger than this is served without asking the store; older ones are
    /// checked against the store (so a revocation is served within this many seconds), and
    /// served from cache while the store is unreachable.
    #[serde(default = "default_cache_fresh_secs")]
    pub cache_fresh_secs: u64,
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

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    /// Name used in the store and in logs.
    pub name: String,
    /// The issuer's certificate (PEM): CertIDs are matched against its name and key hashes.
    pub certificate: PathBuf,
    /// The gateway key that signs this issuer's responses (the issuer's own key: responses are
    /// signed by the CA directly, responderID byKey).
    pub signing_key: String,
}

#[derive(Clone, Debug, Deserialize)]
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

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Presigner {
    /// The signing gateway (`http://127.0.0.1:50051`). No DNS: an IP literal.
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
        }
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
