//! Connecting to the gateway: an endpoint URL and, for mTLS, the CA that signed the gateway's
//! certificate and this client's certificate and key, all PEM files.
//!
//! ```no_run
//! # async fn f() -> Result<(), hsmgate_signer_api::client::Error> {
//! use hsmgate_signer_api::client::{ClientTls, connect};
//! let tls = ClientTls::new("target/dev/tls/ca.pem", "target/dev/tls/bench.pem", "target/dev/tls/bench.key");
//! let channel = connect("https://127.0.0.1:50051", Some(&tls)).await?;
//! let mut client = hsmgate_signer_api::v1::signer_client::SignerClient::new(channel);
//! # Ok(()) }
//! ```
//!
//! With TLS the URL's scheme is forced to `https` (tonic silently speaks plain text to an
//! `http://` URL even with a TLS configuration, which would leak the request to whoever listens
//! and be refused by a TLS gateway). Tools that only take a URL (`hsmgate-ocsp issuer-cert`,
//! `hsm-bench`) read the files from `HSMGATE_TLS_CA`, `HSMGATE_TLS_CERT` and `HSMGATE_TLS_KEY`
//! ([`ClientTls::from_env`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Environment variables [`ClientTls::from_env`] reads.
pub const ENV_CA: &str = "HSMGATE_TLS_CA";
pub const ENV_CERT: &str = "HSMGATE_TLS_CERT";
pub const ENV_KEY: &str = "HSMGATE_TLS_KEY";

/// What can go wrong while setting up a connection. Never carries key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("gateway URL `{url}`: {detail}")]
    Url { url: String, detail: String },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS settings: {0}")]
    Tls(String),
    #[error("cannot connect to the gateway at {url}: {detail}")]
    Connect { url: String, detail: String },
}

/// Client-side mTLS files (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    /// CA certificate(s) the gateway's certificate must chain to.
    pub ca: PathBuf,
    /// This client's certificate (chain).
    pub cert: PathBuf,
    /// This client's private key.
    pub key: PathBuf,
}

impl ClientTls {
    pub fn new(ca: impl Into<PathBuf>, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
        }
    }

    /// From `HSMGATE_TLS_CA`, `HSMGATE_TLS_CERT`, `HSMGATE_TLS_KEY`; `None` unless all three
    /// are set and non-empty.
    pub fn from_env() -> Option<Self> {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        Some(Self::new(var(ENV_CA)?, var(ENV_CERT)?, var(ENV_KEY)?))
    }

    /// tonic's TLS configuration for these files.
    pub fn config(&self) -> Result<ClientTlsConfig, Error> {
        let ca = read(&self.ca)?;
        let cert = read(&self.cert)?;
        let key = zeroize::Zeroizing::new(read(&self.key)?);
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key.as_slice())))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// An endpoint for `url`: `tls` when given, else none (plain text, for a gateway configured
/// with `insecure_plaintext` on loopback). Connect timeout 5 s, Nagle off.
pub fn endpoint(url: &str, tls: Option<&ClientTls>) -> Result<Endpoint, Error> {
    let bad = |detail: String| Error::Url {
        url: url.to_owned(),
        detail,
    };
    let url = match (tls, url.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}"),
        _ => url.to_owned(),
    };
    if tls.is_none() && url.starts_with("https://") {
        return Err(bad(
            "an https URL needs the client's TLS files (CA, certificate, key)".into(),
        ));
    }
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.config()?)
            .map_err(|e| Error::Tls(e.to_string()))?;
    }
    Ok(endpoint)
}

/// Connects now; fails if the gateway cannot be reached or the handshake fails.
pub async fn connect(url: &str, tls: Option<&ClientTls>) -> Result<Channel, Error> {
    endpoint(url, tls)?
        .connect()
        .await
        .map_err(|e| Error::Connect {
            url: url.to_owned(),
            detail: error_chain(&e),
        })
}

/// A channel that connects on first use and reconnects by itself.
pub fn connect_lazy(url: &str, tls: Option<&ClientTls>) -> Result<Channel, Error> {
    Ok(endpoint(url, tls)?.connect_lazy())
}

/// An error and its sources on one line (tonic's transport errors say little at the top).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_without_tls_files_is_refused() {
        assert!(matches!(
            endpoint("https://127.0.0.1:1", None),
            Err(Error::Url { .. })
        ));
        assert!(endpoint("http://127.0.0.1:1", None).is_ok());
    }

    #[test]
    fn missing_tls_files_are_named() {
        let tls = ClientTls::new(
            "/nonexistent/ca.pem",
            "/nonexistent/c.pem",
            "/nonexistent/k",
        );
        match endpoint("http://127.0.0.1:1", Some(&tls)) {
            Err(Error::Read { path, .. }) => assert_eq!(path, Path::new("/nonexistent/ca.pem")),
            other => panic!("expected a read error, got {other:?}"),
        }
    }
}
