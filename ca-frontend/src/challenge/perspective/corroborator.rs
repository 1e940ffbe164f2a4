//! The frontend's side of corroboration: every configured perspective asked over mTLS
//! alongside the frontend's own check, the answers counted and the quorum applied.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::challenge::{CaaRequester, Validator};
use crate::model::{Authorization, ChallengeStatus};
use crate::{Error, Problem, ProblemType};

use super::*;

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
        let (own, asked) = tokio::join!(primary, asks);
        let (remote, problems): (Vec<PerspectiveOutcome>, Vec<Option<ProblemType>>) =
            asked.into_iter().unzip();
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
            tracing::warn!(check, domain, remote = ?corroboration.remote, quorum = corroboration.quorum, "remote perspectives disagree");
        }
        let result = match own {
            Err(p) => Err(p),
            Ok(()) if corroboration.quorum => Ok(()),
            Ok(()) => {
                let kind = if check == "caa" {
                    ProblemType::Caa
                } else {
                    refusal_type(
                        corroboration
                            .remote
                            .iter()
                            .zip(&problems)
                            .filter(|(o, _)| !o.agreed)
                            .map(|(_, p)| *p),
                    )
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

    /// Asks `remote`; any failure to get an answer is a disagreement. With the outcome, the
    /// type of the problem it answered with (none when it agreed or could not be reached; a
    /// name not among [`VALIDATION_FAILURES`] is `unauthorized`).
    async fn ask(
        &self,
        remote: &Remote,
        request: &CheckRequest,
    ) -> (PerspectiveOutcome, Option<ProblemType>) {
        let reply = tokio::time::timeout(self.timeout, self.post(remote, request))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)));
        let unreachable = reply.is_err();
        let (agreed, detail, problem, outcome) = match reply {
            Ok(r) if r.ok => (true, None, None, "agreed"),
            Ok(r) => {
                let kind = answered_type(r.problem.as_ref().map(|(kind, _)| kind.as_str()));
                let detail = r
                    .problem
                    .map(|(kind, detail)| format!("{kind}: {detail}"))
                    .unwrap_or_else(|| "failed".into());
                (false, Some(detail), Some(kind), "disagreed")
            }
            Err(e) => (
                false,
                Some(format!("unreachable: {e}")),
                None,
                "unreachable",
            ),
        };
        self.answers
            .get_or_create(&PerspectiveLabels {
                perspective: remote.name.clone(),
                check: request.label().to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        let outcome = PerspectiveOutcome {
            perspective: remote.name.clone(),
            region: remote.region.clone(),
            agreed,
            unreachable,
            detail,
        };
        (outcome, problem)
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

/// The types a perspective's check fails with (what its [`Validator`] answers). A remote
/// answer naming any other type counts as `unauthorized`: a perspective cannot make a refusal
/// read as a rate limit, a bad nonce or a server error.
const VALIDATION_FAILURES: &[ProblemType] = &[
    ProblemType::Dns,
    ProblemType::Connection,
    ProblemType::Tls,
    ProblemType::Unauthorized,
    ProblemType::IncorrectResponse,
    ProblemType::Caa,
    // A redirect whose `Location` is not a URL (http-01).
    ProblemType::Malformed,
];

/// The type of a perspective's refusal named `name` (none: it named no problem), as
/// [`VALIDATION_FAILURES`] allows.
fn answered_type(name: Option<&str>) -> ProblemType {
    name.and_then(ProblemType::from_name)
        .filter(|kind| VALIDATION_FAILURES.contains(kind))
        .unwrap_or(ProblemType::Unauthorized)
}

/// The type of the problem when this frontend's own check passed and the remote quorum did
/// not, from the problems of the perspectives that disagreed (`None`: it could not be reached).
/// The type shared by those that answered, when they answered alike: it names what the
/// subscriber can act on (a resolver that did not answer is `dns`, as it is when the frontend's
/// own lookup fails), as Boulder passes on its remote VAs' problem. `serverInternal` when none
/// of them answered: the CA's own perspectives were out of reach, not the subscriber's name.
/// `unauthorized` when they answered differently.
fn refusal_type(disagreeing: impl Iterator<Item = Option<ProblemType>>) -> ProblemType {
    let mut answered = disagreeing.flatten();
    let Some(first) = answered.next() else {
        return ProblemType::ServerInternal;
    };
    if answered.all(|kind| kind == first) {
        first
    } else {
        ProblemType::Unauthorized
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_perspective_can_only_answer_with_a_validation_failure() {
        assert_eq!(answered_type(Some("dns")), ProblemType::Dns);
        assert_eq!(answered_type(Some("connection")), ProblemType::Connection);
        assert_eq!(answered_type(Some("caa")), ProblemType::Caa);
        // Types that would tell the client to back off, retry or fix its request.
        for name in [
            "rateLimited",
            "badNonce",
            "serverInternal",
            "badSignatureAlgorithm",
        ] {
            assert_eq!(
                answered_type(Some(name)),
                ProblemType::Unauthorized,
                "{name}"
            );
        }
        assert_eq!(
            answered_type(Some("no-such-type")),
            ProblemType::Unauthorized
        );
        assert_eq!(answered_type(None), ProblemType::Unauthorized);
    }

    #[test]
    fn a_refusal_carries_the_type_the_disagreeing_perspectives_answered_with() {
        use ProblemType::{Connection, Dns, ServerInternal, Unauthorized};
        let cases: &[(&[Option<ProblemType>], ProblemType)] = &[
            (&[Some(Dns), Some(Dns)], Dns),
            (
                &[Some(Connection), Some(Connection), Some(Connection)],
                Connection,
            ),
            // One out of reach says nothing of the name; the other's answer does.
            (&[None, Some(Dns)], Dns),
            (&[Some(Dns), None], Dns),
            (&[None, None], ServerInternal),
            (&[Some(Dns), Some(Connection)], Unauthorized),
            (&[Some(Dns), None, Some(Unauthorized)], Unauthorized),
        ];
        for (disagreeing, expected) in cases {
            assert_eq!(
                refusal_type(disagreeing.iter().copied()),
                *expected,
                "{disagreeing:?}"
            );
        }
    }
}
