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
//! **Several gateways.** A URL may be a comma-separated list (`https://gw1:50051,https://gw2:50051`):
//! [`connect_lazy`] then returns one channel that balances calls over the gateways that
//! answer their gRPC health check as `SERVING` (each probed every [`PROBE_INTERVAL`]). A
//! gateway that dies, drains for shutdown (its health turns `NOT_SERVING` first) or has no HSM
//! left in rotation is out of the set within one probe, and back once it serves again; calls
//! in flight on a gateway that died fail in transport ([`is_transport_failure`]), which callers
//! retry (the next call goes to a gateway in the set). tonic's own `balance_list` keeps sending to a gateway that
//! refuses connections (hyperium/tonic#1147, #2839); the health probe is what takes it out.
//!
//! With TLS the URL's scheme is forced to `https` (tonic silently speaks plain text to an
//! `http://` URL even with a TLS configuration, which would leak the request to whoever listens
//! and be refused by a TLS gateway). Tools that only take a URL (`hsmgate-ocsp issuer-cert`,
//! `hsm-bench`) read the files from `HSMGATE_TLS_CA`, `HSMGATE_TLS_CERT` and `HSMGATE_TLS_KEY`
//! ([`ClientTls::from_env`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc::Sender;
use tonic::transport::channel::Change;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How often each gateway of a list is health-checked.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// A health check slower than this counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

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

/// A channel that connects on first use and reconnects by itself. `urls` is one gateway's URL
/// or a comma-separated list of several, balanced over those that serve (see the module
/// documentation); with several, this must be called within a tokio runtime (the probes run
/// on it, until the channel and all its clones are dropped).
pub fn connect_lazy(urls: &str, tls: Option<&ClientTls>) -> Result<Channel, Error> {
    let list = gateway_urls(urls)?;
    if let [one] = list.as_slice() {
        return Ok(endpoint(one, tls)?.connect_lazy());
    }
    let endpoints = list
        .iter()
        .map(|url| endpoint(url, tls))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(balanced(endpoints))
}

/// Whether a call's failure was the connection's, not the gateway's answer: `UNAVAILABLE`
/// (refused, or no gateway serving), `UNKNOWN` (tonic's code for a connection reset or
/// closed mid-call; the gateway itself answers with precise codes and never `UNKNOWN`), or
/// `CANCELLED` carrying a transport error (hyper's "connection closed": a draining gateway
/// closed the connection under the call; the gateway never answers `CANCELLED` itself, and a
/// caller's own cancellation has no transport error). Such a call may be retried on another
/// gateway. A call whose own deadline ran out is not: tonic reports it as `CANCELLED` over a
/// transport error too, with `TimeoutExpired` further down the chain.
pub fn is_transport_failure(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown => true,
        tonic::Code::Cancelled => {
            let chain = std::iter::successors(std::error::Error::source(status), |e| e.source());
            let mut transport = false;
            for e in chain {
                if e.is::<tonic::TimeoutExpired>() {
                    return false;
                }
                transport |= e.is::<tonic::transport::Error>();
            }
            transport
        }
        _ => false,
    }
}

/// The URLs of a comma-separated list, trimmed; at least one, none twice.
pub fn gateway_urls(urls: &str) -> Result<Vec<&str>, Error> {
    let list: Vec<&str> = urls.split(',').map(str::trim).collect();
    let bad = |detail: &str| Error::Url {
        url: urls.to_owned(),
        detail: detail.to_owned(),
    };
    if list.iter().any(|u| u.is_empty()) {
        return Err(bad("an empty URL in the list"));
    }
    if list.iter().enumerate().any(|(i, u)| list[..i].contains(u)) {
        return Err(bad("a gateway listed twice"));
    }
    Ok(list)
}

/// A channel over `endpoints`, each in the balancer's set while its health check says
/// `SERVING`. All start in the set (a caller's first call need not wait for a probe).
fn balanced(endpoints: Vec<Endpoint>) -> Channel {
    // Room for one change per gateway and direction: probes send only on a transition.
    let (channel, changes) = Channel::balance_channel::<usize>(2 * endpoints.len() + 1);
    for (key, endpoint) in endpoints.into_iter().enumerate() {
        // Cannot fail: the capacity holds every initial insertion.
        let _ = changes.try_send(Change::Insert(key, endpoint.clone()));
        tokio::spawn(probe(key, endpoint, changes.clone()));
    }
    channel
}

/// Keeps gateway `key` in the balancer's set while it serves, for as long as the channel lives.
async fn probe(key: usize, endpoint: Endpoint, changes: Sender<Change<usize, Endpoint>>) {
    let gateway = endpoint.uri().to_string();
    let mut health = HealthClient::new(endpoint.clone().connect_lazy());
    let mut in_set = true;
    let mut ticks = tokio::time::interval(PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if changes.is_closed() {
            return; // the channel and its clones are gone
        }
        let check = health.check(HealthCheckRequest {
            service: String::new(),
        });
        let serving = match tokio::time::timeout(PROBE_TIMEOUT, check).await {
            Ok(Ok(r)) => r.get_ref().status == ServingStatus::Serving as i32,
            Ok(Err(_)) | Err(_) => false,
        };
        if serving == in_set {
            continue;
        }
        let change = if serving {
            Change::Insert(key, endpoint.clone())
        } else {
            Change::Remove(key)
        };
        if changes.send(change).await.is_err() {
            return;
        }
        in_set = serving;
        if serving {
            tracing::info!(%gateway, "gateway serves again: back among the gateways called");
        } else {
            tracing::warn!(%gateway, "gateway not serving (down, draining or no HSM in rotation): no longer called");
        }
    }
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
    fn only_connection_failures_are_retried_elsewhere() {
        assert!(is_transport_failure(&tonic::Status::unavailable("refused")));
        assert!(is_transport_failure(&tonic::Status::unknown("reset")));
        // A caller's own cancellation (no transport error under it) and the gateway's answers
        // are not the connection's.
        assert!(!is_transport_failure(&tonic::Status::cancelled("timeout")));
        assert!(!is_transport_failure(&tonic::Status::permission_denied(
            "grants"
        )));
        assert!(!is_transport_failure(&tonic::Status::invalid_argument(
            "key"
        )));
    }

    /// The caller's deadline running out under a call is not a lost connection, though tonic
    /// reports it as `CANCELLED` over a transport error: a real channel to a server that
    /// accepts and never answers.
    #[tokio::test]
    async fn a_call_past_its_deadline_is_not_retried_elsewhere() {
        use crate::v1::signer_client::SignerClient;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let channel = tonic::transport::Endpoint::from_shared(url)
            .expect("url")
            .connect_lazy();
        let mut request = tonic::Request::new(crate::v1::SignRequest::default());
        request.set_timeout(std::time::Duration::from_millis(200));
        let status = SignerClient::new(channel)
            .sign(request)
            .await
            .expect_err("nothing answers");
        silent.abort();
        assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
        assert!(!is_transport_failure(&status), "{status:?}");
    }

    #[test]
    fn gateway_lists_are_split_and_checked() {
        assert_eq!(
            gateway_urls("https://a:1, https://b:2").expect("two"),
            ["https://a:1", "https://b:2"]
        );
        assert_eq!(gateway_urls("http://a:1").expect("one"), ["http://a:1"]);
        assert!(matches!(
            gateway_urls("https://a:1,"),
            Err(Error::Url { .. })
        ));
        assert!(matches!(gateway_urls(""), Err(Error::Url { .. })));
        assert!(matches!(
            gateway_urls("https://a:1,https://a:1"),
            Err(Error::Url { .. })
        ));
    }

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
