//! Multi-perspective issuance corroboration (CA/Browser Forum Baseline Requirements §3.2.2.9,
//! ballot SC-067): domain validation and the CAA check repeated from remote network
//! perspectives, each with its own resolver, so that a BGP or DNS hijack that fools one vantage
//! point does not get a certificate issued.
//!
//! ```text
//!  frontend ── its own check (the primary perspective) ─────────────┐
//!     │                                                             ├─▶ quorum ─▶ valid | refused
//!     └── POST /check over mTLS ─▶ perspective a, b, c (in parallel) ┘     recorded + metrics
//! ```
//!
//! A remote perspective is this binary's `perspective` subcommand ([`serve`]): a [`Validator`]
//! with its own DNS server and address policy behind an HTTPS listener that asks for a client
//! certificate from the configured CA. The frontend ([`Corroborator`]) asks every configured
//! perspective alongside its own check. Its own check must pass; of the remote ones, as
//! §3.2.2.9's table says, with 2 to 5 remote perspectives at most one may disagree, with 6 or
//! more at most two (a perspective that cannot be reached disagrees). Which perspective agreed
//! or disagreed, and why, is recorded with the authorization (challenges) or the order (CAA at
//! finalization), counted in metrics, and named in the problem when the quorum fails.
//!
//! Not built: the BR's minimum number of perspectives and their 500 km separation are a
//! deployment's business (the configuration lists them; start-up warns under two).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use http_body_util::{BodyExt, Full, Limited};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::config::Validation;
use crate::model::{Authorization, ChallengeStatus, ChallengeType};
use super::{CaaRequester, Validator};
use crate::{Error, Problem, ProblemType};

/// A reply body larger than this is not a perspective's answer.
const MAX_REPLY: usize = 64 * 1024;

/// `[validation.perspectives]` in the frontend's configuration: the remote perspectives asked
/// and the client certificate that asks them. No `remote`: corroboration is off.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Perspectives {
    /// `[[validation.perspectives.remote]]`: name, region, `https://` URL of each.
    pub remote: Vec<RemoteConfig>,
    /// The CA that signs the perspectives' server certificates (PEM).
    pub ca: Option<PathBuf>,
    /// The frontend's client certificate and key for the perspectives (PEM).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Deprecated spelling of `server.metrics_listen` (kept so older files still load): where
    /// the frontend serves `/metrics`, validation and everything else.
    pub metrics_listen: Option<SocketAddr>,
}

/// One remote perspective, as the frontend knows it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    pub name: String,
    /// Where it is (a region or site name): recorded and shown beside its name.
    #[serde(default)]
    pub region: String,
    /// `https://HOST:PORT`.
    pub url: String,
}

/// The configuration of the `perspective` subcommand: one TOML file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerspectiveConfig {
    pub perspective: PerspectiveServer,
    /// Its own validation settings: DNS server, ports, address policy, timeout.
    #[serde(default)]
    pub validation: Validation,
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[perspective]`: who this perspective is and how it is reached.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerspectiveServer {
    pub name: String,
    #[serde(default)]
    pub region: String,
    pub listen: SocketAddr,
    /// The server certificate chain and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA whose client certificates may ask (PEM): the frontends'.
    pub client_ca: PathBuf,
    /// As the frontend's `ca.caa_identities` and `ca.allowed_special_tlds`.
    pub caa_identities: Vec<String>,
    #[serde(default)]
    pub allowed_special_tlds: Vec<String>,
}

impl PerspectiveConfig {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let fail = |detail: String| Error::Config {
            path: path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let mut config: Self = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
        config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if config.perspective.caa_identities.is_empty() {
            return Err(fail(
                "perspective.caa_identities: at least one domain".into(),
            ));
        }
        if config.validation.timeout_ms == 0 {
            return Err(fail("validation.timeout_ms: at least 1".into()));
        }
        Ok(config)
    }

    fn resolve(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }
}

/// What the frontend asks a perspective.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "check", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CheckRequest {
    /// A challenge (RFC 8555 §8), as [`Validator::validate`].
    Challenge {
        kind: ChallengeType,
        domain: String,
        key_authorization: String,
    },
    /// CAA for a name about to be issued for, as [`Validator::check_caa`].
    Caa {
        domain: String,
        wildcard: bool,
        account_uri: String,
        method: ChallengeType,
    },
}

impl CheckRequest {
    /// What is checked, as recorded and labelled in metrics: the challenge type, or `caa`.
    pub fn label(&self) -> &'static str {
        match self {
            CheckRequest::Challenge { kind, .. } => kind.as_str(),
            CheckRequest::Caa { .. } => "caa",
        }
    }
}

/// A perspective's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckReply {
    pub perspective: String,
    pub ok: bool,
    /// Why not, when not: the RFC 8555 type's name (`unauthorized`) and the detail.
    pub problem: Option<(String, String)>,
}

/// What one perspective found, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerspectiveOutcome {
    pub perspective: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    pub agreed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One corroborated check: what each remote perspective found and whether the quorum held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Corroboration {
    /// `http-01`, `dns-01`, `tls-alpn-01`, or `caa`.
    pub check: String,
    /// The name checked.
    pub domain: String,
    pub at: i64,
    /// Whether enough remote perspectives agreed (BR §3.2.2.9).
    pub quorum: bool,
    pub remote: Vec<PerspectiveOutcome>,
}

impl Corroboration {
    /// The perspectives that disagreed, for a problem's detail: `b (region): detail`.
    pub fn disagreeing(&self) -> Vec<String> {
        self.remote
            .iter()
            .filter(|o| !o.agreed)
            .map(|o| {
                let region = if o.region.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", o.region)
                };
                format!(
                    "perspective {}{region}: {}",
                    o.perspective,
                    o.detail.as_deref().unwrap_or("disagreed")
                )
            })
            .collect()
    }
}

/// BR §3.2.2.9: how many remote perspectives may fail to corroborate, out of `remote`.
pub fn allowed_disagreements(remote: usize) -> usize {
    match remote {
        0..=1 => 0,
        2..=5 => 1,
        _ => 2,
    }
}

// ---------------------------------------------------------------- the frontend's side

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PerspectiveLabels {
    perspective: String,
    check: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuorumLabels {
    check: String,
    outcome: String,
}

/// The remote perspectives the frontend asks, with their metrics.
#[derive(Clone, Debug)]
pub struct Corroborator {
    remotes: Vec<Remote>,
    timeout: Duration,
    answers: Family<PerspectiveLabels, Counter>,
    quorums: Family<QuorumLabels, Counter>,
}

#[derive(Clone)]
struct Remote {
    name: String,
    region: String,
    /// Where to connect.
    authority: String,
    server_name: rustls_pki_types::ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({} {})", self.name, self.authority)
    }
}

impl Corroborator {
    /// The perspectives of `config` (paths resolved by `resolve`); each ask times out after
    /// `timeout` (a perspective's own validation timeout, and a little more). Its counters are
    /// registered in `registry` (prefix `hsmgate_acme`).
    pub fn new(
        config: &Perspectives,
        resolve: impl Fn(&Path) -> PathBuf,
        timeout: Duration,
        registry: &mut Registry,
    ) -> Result<Self, Error> {
        let fail = |field: &str, detail: String| Error::Config {
            path: format!("validation.perspectives.{field}"),
            detail,
        };
        let mut remotes = Vec::new();
        if !config.remote.is_empty() {
            let (Some(ca), Some(cert), Some(key)) = (&config.ca, &config.cert, &config.key) else {
                return Err(fail(
                    "ca",
                    "ca, cert and key are required to reach remote perspectives (mTLS)".into(),
                ));
            };
            let tls = client_tls(&resolve(ca), &resolve(cert), &resolve(key))
                .map_err(|e| fail("cert", e))?;
            for (i, r) in config.remote.iter().enumerate() {
                let url = url::Url::parse(&r.url)
                    .map_err(|e| fail(&format!("remote[{i}].url"), e.to_string()))?;
                let (Some(host), Some(port), "https") =
                    (url.host_str(), url.port_or_known_default(), url.scheme())
                else {
                    return Err(fail(
                        &format!("remote[{i}].url"),
                        format!("`{}`: an https://HOST:PORT URL", r.url),
                    ));
                };
                let host = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                let server_name = rustls_pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| fail(&format!("remote[{i}].url"), e.to_string()))?;
                if remotes.iter().any(|x: &Remote| x.name == r.name) {
                    return Err(fail(
                        &format!("remote[{i}].name"),
                        format!("`{}` twice", r.name),
                    ));
                }
                remotes.push(Remote {
                    name: r.name.clone(),
                    region: r.region.clone(),
                    authority: match url.host() {
                        Some(url::Host::Ipv6(ip)) => format!("[{ip}]:{port}"),
                        _ => format!("{host}:{port}"),
                    },
                    server_name,
                    tls: tls.clone(),
                });
            }
            if remotes.len() < 2 {
                tracing::warn!(
                    remote = remotes.len(),
                    "fewer than two remote perspectives: BR §3.2.2.9 requires more for a public CA"
                );
            }
        }
        let answers = Family::<PerspectiveLabels, Counter>::default();
        let quorums = Family::<QuorumLabels, Counter>::default();
        registry.register(
            "perspective_answers",
            "Remote perspectives' answers by perspective, check and outcome (agreed, disagreed, unreachable)",
            answers.clone(),
        );
        registry.register(
            "corroborations",
            "Corroborated checks by check and outcome (quorum met or failed)",
            quorums.clone(),
        );
        Ok(Self {
            remotes,
            timeout,
            answers,
            quorums,
        })
    }

    /// Whether any remote perspective is configured.
    pub fn is_on(&self) -> bool {
        !self.remotes.is_empty()
    }

    /// Runs `primary` (this frontend's own check) and asks every remote perspective `request`
    /// at the same time. `Ok` only if the primary check passed and the remote quorum held. The
    /// corroboration (none when no remote is configured) is returned either way, to be
    /// recorded.
    pub async fn corroborate(
        &self,
        primary: impl Future<Output = Result<(), Problem>>,
        request: CheckRequest,
        domain: &str,
    ) -> (Result<(), Problem>, Option<Corroboration>) {
        if self.remotes.is_empty() {
            return (primary.await, None);
        }
        let asks =
            futures_util::future::join_all(self.remotes.iter().map(|r| self.ask(r, &request)));
        let (own, remote) = tokio::join!(primary, asks);
        let check = request.label();
        let disagreements = remote.iter().filter(|o| !o.agreed).count();
        let allowed = allowed_disagreements(remote.len());
        let corroboration = Corroboration {
            check: check.to_owned(),
            domain: domain.to_owned(),
            at: crate::unix_now(),
            quorum: disagreements <= allowed,
            remote,
        };
        let outcome = if corroboration.quorum {
            "met"
        } else {
            "failed"
        };
        self.quorums
            .get_or_create(&QuorumLabels {
                check: check.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        if disagreements > 0 {
            tracing::warn!(check, domain, disagreeing = ?corroboration.disagreeing(), quorum = corroboration.quorum, "remote perspectives disagree");
        }
        let result = match own {
            Err(p) => Err(p),
            Ok(()) if corroboration.quorum => Ok(()),
            Ok(()) => {
                let kind = if check == "caa" {
                    ProblemType::Caa
                } else {
                    ProblemType::Unauthorized
                };
                Err(Problem::new(
                    kind,
                    format!(
                        "{check} check of {domain} passed from this CA's own network but was not corroborated: {disagreements} of {} remote perspectives disagree, at most {allowed} may (BR §3.2.2.9): {}",
                        corroboration.remote.len(),
                        corroboration.disagreeing().join("; ")
                    ),
                ))
            }
        };
        (result, Some(corroboration))
    }

    /// Asks `remote`; any failure to get an answer is a disagreement.
    async fn ask(&self, remote: &Remote, request: &CheckRequest) -> PerspectiveOutcome {
        let reply = tokio::time::timeout(self.timeout, self.post(remote, request))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)));
        let (agreed, detail, outcome) = match reply {
            Ok(r) if r.ok => (true, None, "agreed"),
            Ok(r) => (
                false,
                Some(
                    r.problem
                        .map(|(kind, detail)| format!("{kind}: {detail}"))
                        .unwrap_or_else(|| "failed".into()),
                ),
                "disagreed",
            ),
            Err(e) => (false, Some(format!("unreachable: {e}")), "unreachable"),
        };
        self.answers
            .get_or_create(&PerspectiveLabels {
                perspective: remote.name.clone(),
                check: request.label().to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        PerspectiveOutcome {
            perspective: remote.name.clone(),
            region: remote.region.clone(),
            agreed,
            detail,
        }
    }

    async fn post(&self, remote: &Remote, request: &CheckRequest) -> Result<CheckReply, String> {
        let tcp = tokio::net::TcpStream::connect(&remote.authority)
            .await
            .map_err(|e| format!("{}: {e}", remote.authority))?;
        let tls = remote
            .tls
            .connect(remote.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", remote.authority))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        let request = hyper::Request::post("/check")
            .header(hyper::header::HOST, &remote.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(hyper::body::Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_REPLY)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "answered HTTP {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("an answer that does not parse: {e}"))
    }

    /// CAA for every name of an order about to be issued (as [`Validator::check_order_caa`]),
    /// from this frontend and every remote perspective: the corroborations, or the first
    /// problem.
    pub async fn check_order_caa(
        &self,
        validator: &Validator,
        authzs: &[Authorization],
        account_uri: &str,
    ) -> Result<Vec<Corroboration>, Error> {
        let mut out = Vec::new();
        for authz in authzs {
            let method = authz
                .challenges
                .iter()
                .find(|c| c.status == ChallengeStatus::Valid)
                .map(|c| c.kind)
                .ok_or_else(|| {
                    Error::Internal(format!(
                        "authorization {} of a ready order has no valid challenge",
                        authz.id
                    ))
                })?;
            let domain = authz.identifier.value.as_str();
            let requester = CaaRequester {
                account_uri,
                method,
            };
            let request = CheckRequest::Caa {
                domain: domain.to_owned(),
                wildcard: authz.wildcard,
                account_uri: account_uri.to_owned(),
                method,
            };
            let (result, corroboration) = self
                .corroborate(
                    validator.check_caa(domain, authz.wildcard, requester),
                    request,
                    domain,
                )
                .await;
            result?;
            out.extend(corroboration);
        }
        Ok(out)
    }
}

fn client_tls(ca: &Path, cert: &Path, key: &Path) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .map_err(|e| e.to_string())?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

// ---------------------------------------------------------------- the perspective's side

#[derive(Debug)]
struct Checker {
    name: String,
    validator: Validator,
}

/// The perspective's router: `POST /check`.
pub fn router(name: &str, validator: Validator) -> axum::Router {
    let checker = Arc::new(Checker {
        name: name.to_owned(),
        validator,
    });
    axum::Router::new()
        .route("/check", axum::routing::post(check))
        .with_state(checker)
}

/// `POST /check`: a [`CheckRequest`] in, a [`CheckReply`] out (JSON); a body that does not
/// parse is a 400 saying why.
async fn check(
    State(checker): State<Arc<Checker>>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::http::{StatusCode, header::CONTENT_TYPE};
    use axum::response::IntoResponse;
    let request: CheckRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("not a check request: {e}")).into_response();
        }
    };
    let result = match &request {
        CheckRequest::Challenge {
            kind,
            domain,
            key_authorization,
        } => {
            checker
                .validator
                .validate(*kind, domain, key_authorization)
                .await
        }
        CheckRequest::Caa {
            domain,
            wildcard,
            account_uri,
            method,
        } => {
            let requester = CaaRequester {
                account_uri,
                method: *method,
            };
            checker
                .validator
                .check_caa(domain, *wildcard, requester)
                .await
        }
    };
    if let Err(p) = &result {
        tracing::info!(check = request.label(), problem = %p, "check failed");
    }
    let reply = CheckReply {
        perspective: checker.name.clone(),
        ok: result.is_ok(),
        problem: result.err().map(|p| (p.kind.name().to_owned(), p.detail)),
    };
    match serde_json::to_vec(&reply) {
        Ok(json) => ([(CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The TLS acceptor of a perspective: its certificate, and client certificates from
/// `client_ca` required.
pub fn server_tls(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(client_ca)
        .map_err(|e| format!("{}: {e}", client_ca.display()))?
    {
        let c = c.map_err(|e| format!("{}: {e}", client_ca.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", client_ca.display()))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("client verifier: {e}"))?;
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves the perspective of `config` on `listener` until `shutdown`.
pub async fn serve(
    config: &PerspectiveConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let p = &config.perspective;
    let validator = Validator::new(
        &config.validation,
        &p.caa_identities,
        &p.allowed_special_tlds,
    )?;
    let acceptor = server_tls(
        &config.resolve(&p.cert),
        &config.resolve(&p.key),
        &config.resolve(&p.client_ca),
    )
    .map_err(|detail| Error::Config {
        path: "perspective.cert".into(),
        detail,
    })?;
    let app = router(&p.name, validator);
    let gate = hsmgate_signer_api::http_listener::Gate::new(Default::default());
    hsmgate_signer_api::http_listener::serve_with(listener, app, gate, shutdown, move |tcp| {
        let acceptor = acceptor.clone();
        async move { acceptor.accept(tcp).await }
    })
    .await
    .map_err(|e| Error::Internal(format!("perspective listener: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_configs_parse_and_agree() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let frontend = crate::config::Config::load(dir.join("dev.toml")).expect("dev.toml");
        let names: Vec<&str> = frontend
            .validation
            .perspectives
            .remote
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, ["dev-a", "dev-b", "dev-c"]);
        assert!(frontend.validation.allow_private_addresses.any());
        let p = PerspectiveConfig::load(&dir.join("perspective.toml")).expect("perspective.toml");
        assert_eq!(p.perspective.caa_identities, frontend.ca.caa_identities);
        assert_eq!(
            p.perspective.allowed_special_tlds,
            frontend.ca.allowed_special_tlds
        );
        assert_eq!(p.validation.dns_server, frontend.validation.dns_server);
        assert_eq!(
            (p.validation.http_port, p.validation.tls_port),
            (frontend.validation.http_port, frontend.validation.tls_port)
        );
    }

    #[tokio::test]
    async fn a_perspective_that_cannot_be_reached_disagrees() {
        let dir = tempfile::tempdir().expect("tempdir");
        hsm_config::devcerts::ensure(dir.path(), &["ca-frontend"]).expect("certificates");
        // Two ports nothing listens on.
        let closed: Vec<u16> = (0..2)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
                    .expect("port")
            })
            .collect();
        let config = Perspectives {
            remote: closed
                .iter()
                .enumerate()
                .map(|(i, port)| RemoteConfig {
                    name: format!("gone-{i}"),
                    region: "nowhere".into(),
                    url: format!("https://127.0.0.1:{port}"),
                })
                .collect(),
            ca: Some("ca.pem".into()),
            cert: Some("ca-frontend.pem".into()),
            key: Some("ca-frontend.key".into()),
            metrics_listen: None,
        };
        let mut registry = Registry::with_prefix("hsmgate_acme");
        let c = Corroborator::new(
            &config,
            |p| dir.path().join(p),
            Duration::from_secs(2),
            &mut registry,
        )
        .expect("corroborator");
        let request = CheckRequest::Challenge {
            kind: ChallengeType::Dns01,
            domain: "x.example.test".into(),
            key_authorization: "t.k".into(),
        };
        let (result, corroboration) = c
            .corroborate(async { Ok(()) }, request, "x.example.test")
            .await;
        // Two remote perspectives allow one disagreement; two unreachable ones refuse.
        let problem = result.expect_err("not corroborated");
        assert_eq!(problem.kind, ProblemType::Unauthorized);
        assert!(
            problem.detail.contains("2 of 2")
                && problem
                    .detail
                    .contains("perspective gone-0 (nowhere): unreachable")
                && problem
                    .detail
                    .contains("perspective gone-1 (nowhere): unreachable"),
            "{}",
            problem.detail
        );
        let corroboration = corroboration.expect("recorded");
        assert!(!corroboration.quorum);
        assert_eq!(corroboration.check, "dns-01");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("metrics");
        assert!(
            text.contains(r#"hsmgate_acme_perspective_answers_total{perspective="gone-0",check="dns-01",outcome="unreachable"} 1"#)
                && text.contains(r#"hsmgate_acme_corroborations_total{check="dns-01",outcome="failed"} 1"#),
            "{text}"
        );
        // The frontend's own failure is what the client sees, whatever the perspectives say.
        let request = CheckRequest::Challenge {
            kind: ChallengeType::Dns01,
            domain: "x.example.test".into(),
            key_authorization: "t.k".into(),
        };
        let (result, _) = c
            .corroborate(
                async { Err(Problem::new(ProblemType::Dns, "own check failed")) },
                request,
                "x.example.test",
            )
            .await;
        assert_eq!(result.expect_err("own").detail, "own check failed");
    }

    #[test]
    fn a_remote_url_must_be_https_and_names_unique() {
        let remote = |name: &str, url: &str| RemoteConfig {
            name: name.into(),
            region: String::new(),
            url: url.into(),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        hsm_config::devcerts::ensure(dir.path(), &["ca-frontend"]).expect("certificates");
        let with = |remote: Vec<RemoteConfig>| Perspectives {
            remote,
            ca: Some("ca.pem".into()),
            cert: Some("ca-frontend.pem".into()),
            key: Some("ca-frontend.key".into()),
            metrics_listen: None,
        };
        let build = |p: &Perspectives| {
            Corroborator::new(
                p,
                |x| dir.path().join(x),
                Duration::from_secs(1),
                &mut Registry::default(),
            )
            .err()
            .map(|e| e.to_string())
        };
        let e = build(&with(vec![remote("a", "http://127.0.0.1:1")])).expect("http refused");
        assert!(e.contains("remote[0].url"), "{e}");
        let twice = vec![
            remote("a", "https://127.0.0.1:1"),
            remote("a", "https://127.0.0.1:2"),
        ];
        let e = build(&with(twice)).expect("same name refused");
        assert!(e.contains("remote[1].name"), "{e}");
        let mut no_cert = with(vec![remote("a", "https://127.0.0.1:1")]);
        no_cert.cert = None;
        let e = build(&no_cert).expect("mTLS required");
        assert!(e.contains("mTLS"), "{e}");
        assert_eq!(build(&with(vec![remote("a", "https://[::1]:7101")])), None);
    }

    #[test]
    fn the_quorum_follows_the_baseline_requirements_table() {
        // BR §3.2.2.9: 2–5 remote perspectives, at most 1 non-corroborating; ≥ 6, at most 2.
        for (remote, allowed) in [(1, 0), (2, 1), (3, 1), (5, 1), (6, 2), (7, 2), (20, 2)] {
            assert_eq!(allowed_disagreements(remote), allowed, "{remote}");
        }
    }

    #[test]
    fn requests_round_trip_and_unknown_members_are_refused() {
        let r = CheckRequest::Caa {
            domain: "a.test".into(),
            wildcard: true,
            account_uri: "https://x/acme/acct/1".into(),
            method: ChallengeType::Dns01,
        };
        let text = serde_json::to_string(&r).expect("json");
        assert!(
            text.contains(r#""check":"caa""#) && text.contains(r#""method":"dns-01""#),
            "{text}"
        );
        let back: CheckRequest = serde_json::from_str(&text).expect("parse");
        assert_eq!(back.label(), "caa");
        assert!(
            serde_json::from_str::<CheckRequest>(r#"{"check":"challenge","kind":"http-01","domain":"a","key_authorization":"k","extra":1}"#)
                .is_err()
        );
    }
}
