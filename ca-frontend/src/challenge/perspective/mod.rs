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
//!
//! The frontend's side is [`Corroborator`] (`corroborator`); the perspective's is [`serve`]
//! (`server`). The configuration, the request and reply on the wire, and the quorum are here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::config::Validation;
use crate::model::ChallengeType;

mod corroborator;
mod server;

pub use corroborator::Corroborator;
pub use server::{router, serve, server_tls};

/// A reply body larger than this is not a perspective's answer.
const MAX_REPLY: usize = 64 * 1024;

/// `[validation.perspectives]` in the frontend's configuration: the remote perspectives asked
/// and the client certificate that asks them. No `remote`: corroboration is off.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
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
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
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
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
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
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
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
    /// A challenge (RFC 8555 §8), as [`crate::challenge::Validator::validate`].
    Challenge {
        kind: ChallengeType,
        domain: String,
        key_authorization: String,
    },
    /// CAA for a name about to be issued for, as [`crate::challenge::Validator::check_caa`].
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
    /// It gave no answer (connection, TLS, timeout, an answer that does not parse).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unreachable: bool,
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
    /// The perspectives that disagreed, for a problem's detail: `perspective b (region):
    /// detail`. One that could not be reached is only `unreachable`: its address and the error
    /// are the CA's business (recorded with the corroboration and logged), not the subscriber's.
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
                let detail = if o.unreachable {
                    "unreachable"
                } else {
                    o.detail.as_deref().unwrap_or("disagreed")
                };
                format!("perspective {}{region}: {detail}", o.perspective)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus_client::registry::Registry;

    use super::*;
    use crate::{Problem, ProblemType};

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
        // Two remote perspectives allow one disagreement; two unreachable ones refuse, as the
        // CA's failure (nothing was learnt of the name).
        let problem = result.expect_err("not corroborated");
        assert_eq!(problem.kind, ProblemType::ServerInternal);
        // The client is told which perspectives were out of reach, not where they are or why.
        assert!(
            problem.detail.contains("2 of 2")
                && problem
                    .detail
                    .ends_with("perspective gone-0 (nowhere): unreachable; perspective gone-1 (nowhere): unreachable")
                && !problem.detail.contains("127.0.0.1"),
            "{}",
            problem.detail
        );
        let corroboration = corroboration.expect("recorded");
        assert!(!corroboration.quorum);
        // The record keeps why.
        assert!(
            corroboration
                .remote
                .iter()
                .all(|o| o.unreachable
                    && o.detail.as_deref().is_some_and(|d| d.contains("127.0.0.1"))),
            "{corroboration:?}"
        );
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
