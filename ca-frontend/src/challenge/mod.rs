//! Proving control of a name (RFC 8555 §8): http-01, dns-01 (RFC 8555 §8.3–8.4), tls-alpn-01
//! (RFC 8737), and the CAA check (RFC 8659) before issuance.
//!
//! The DNS server and the ports the validator connects to are configuration (as Pebble's
//! `-dnsserver`, `httpPort`, `tlsPort`), so tests run entirely on 127.0.0.1. DNS answers are not
//! cached: a TXT record set a moment ago must be seen. A validation failure is a [`Problem`] of
//! the RFC 8555 type that says what failed (`dns`, `connection`, `unauthorized`, `tls`,
//! `incorrectResponse`, `caa`), with the detail a subscriber needs to fix it.
//!
//! CAA records may bind issuance to one ACME account and to validation methods (RFC 8657):
//! an `issue`/`issuewild` record naming this CA with an `accounturi` other than the
//! requester's, or a `validationmethods` list without the challenge type that proved control,
//! does not authorize this CA.
//!
//! As Let's Encrypt's validation authority: http-01 follows up to [`MAX_REDIRECTS`] redirects,
//! to `http:`/`https:` on the two challenge ports only (80 and 443 in production; the configured
//! `http_port`/`tls_port` stand in for them), accepting any certificate on an HTTPS hop; and
//! no connection — first request, redirect hop or tls-alpn-01 handshake — goes to an address in
//! the special-purpose registries (`crate::addresses`) unless `allow_private_addresses` says
//! so. The problem names the redirects followed and the addresses refused. The same checks run
//! at each remote perspective ([`crate::perspective`]).

//!
//! Each challenge type has its module (`http01`, `dns01`, `tls_alpn01`) and so has the CAA
//! check (`caa`); [`crate::perspective`] asks the same of remote perspectives (BR §3.2.2.9).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::config::Validation;
use crate::model::ChallengeType;
use crate::{Error, Problem, ProblemType};

mod caa;
mod dns01;
mod http01;
pub(crate) mod perspective;
mod tls_alpn01;

pub use caa::{CaaRecord, CaaRequester, caa_allows};

/// An http-01 response body longer than this is not a key authorization.
const MAX_HTTP_BODY: usize = 4096;
/// Redirects http-01 follows at most (Let's Encrypt's limit).
pub const MAX_REDIRECTS: usize = 10;

#[derive(Debug, Clone)]
pub struct Validator {
    resolver: Arc<TokioResolver>,
    http_port: u16,
    tls_port: u16,
    timeout: Duration,
    caa_identities: Vec<String>,
    /// Special-purpose addresses connected to all the same (dev stack and tests only).
    allow_private: crate::addresses::AllowPrivate,
    /// Special-use TLDs the identifier policy allows: a redirect's host must pass it too.
    special_tlds: Vec<String>,
}

fn problem(kind: ProblemType, detail: impl Into<String>) -> Problem {
    Problem::new(kind, detail)
}

impl Validator {
    /// A validator with `config`'s DNS, ports and address policy, recognising `caa_identities`
    /// in CAA records and following redirects to names under `special_tlds` (see
    /// [`crate::names::check_dns_name`]).
    pub fn new(
        config: &Validation,
        caa_identities: &[String],
        special_tlds: &[String],
    ) -> Result<Self, Error> {
        if config.allow_private_addresses.any() {
            tracing::warn!(
                allowed = ?config.allow_private_addresses,
                "validation.allow_private_addresses is set: validation connects to loopback, private or other reserved addresses (dev and tests only, never a public CA)"
            );
        }
        let mut options = ResolverOpts::default();
        options.cache_size = 0;
        options.timeout = Duration::from_millis(config.timeout_ms.min(5_000));
        options.attempts = 2;
        let builder = match config.dns_server {
            Some(server) => {
                let mut ns = NameServerConfig::udp_and_tcp(server.ip());
                for c in &mut ns.connections {
                    c.port = server.port();
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio()
                .map_err(|e| Error::Internal(format!("the system's DNS configuration: {e}")))?,
        };
        let resolver = builder
            .with_options(options)
            .build()
            .map_err(|e| Error::Internal(format!("building the DNS resolver: {e}")))?;
        Ok(Self {
            resolver: Arc::new(resolver),
            http_port: config.http_port,
            tls_port: config.tls_port,
            timeout: Duration::from_millis(config.timeout_ms),
            caa_identities: caa_identities
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            allow_private: config.allow_private_addresses.clone(),
            special_tlds: special_tlds.to_vec(),
        })
    }

    /// Validates one challenge for `domain`; `Ok(())` means control was shown.
    pub async fn validate(
        &self,
        kind: ChallengeType,
        domain: &str,
        key_authorization: &str,
    ) -> Result<(), Problem> {
        let work = async {
            match kind {
                ChallengeType::Http01 => self.http01(domain, key_authorization).await,
                ChallengeType::Dns01 => self.dns01(domain, key_authorization).await,
                ChallengeType::TlsAlpn01 => self.tls_alpn01(domain, key_authorization).await,
            }
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(problem(
                    ProblemType::Connection,
                    format!(
                        "{} validation of {domain} timed out after {:?}",
                        kind.as_str(),
                        self.timeout
                    ),
                ))
            })
    }

    /// A DNS lookup for `name` (addresses, TXT, CAA), given half of the validation's time: a
    /// resolver that does not answer is a `dns` problem that says so, not the whole validation
    /// timing out as if the client's server had not answered (`connection`).
    async fn within_dns_budget<T>(
        &self,
        name: &str,
        lookup: impl std::future::Future<Output = T>,
    ) -> Result<T, Problem> {
        let budget = self.timeout / 2;
        tokio::time::timeout(budget, lookup).await.map_err(|_| {
            problem(
                ProblemType::Dns,
                format!("the DNS lookup of {name} got no answer within {budget:?}"),
            )
        })
    }

    /// The addresses to try for `domain`, IPv6 first (as Let's Encrypt does).
    async fn addresses(&self, domain: &str) -> Result<Vec<IpAddr>, Problem> {
        let lookup = self
            .within_dns_budget(domain, self.resolver.lookup_ip(domain))
            .await?
            .map_err(|e| problem(ProblemType::Dns, format!("no address for {domain}: {e}")))?;
        let mut addrs: Vec<IpAddr> = lookup.iter().collect();
        addrs.sort_by_key(|a| a.is_ipv4());
        if addrs.is_empty() {
            return Err(problem(
                ProblemType::Dns,
                format!("no A/AAAA record for {domain}"),
            ));
        }
        Ok(addrs)
    }

    /// A connection to the first of `host`'s addresses that accepts one on `port`. Addresses in
    /// the special-purpose registries ([`crate::addresses`]) are dropped before any connection
    /// unless `allow_private_addresses` is set; a name left with none fails, naming them.
    async fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(tokio::net::TcpStream, SocketAddr), Problem> {
        let mut refused = Vec::new();
        let mut allowed = Vec::new();
        for ip in self.addresses(host).await? {
            match crate::addresses::reserved(ip) {
                Some(block) if !self.allow_private.allows(ip) => {
                    refused.push(format!("{ip} ({block})"))
                }
                _ => allowed.push(ip),
            }
        }
        if allowed.is_empty() {
            return Err(problem(
                ProblemType::Dns,
                format!(
                    "{host} resolves only to addresses validation never connects to: {}",
                    refused.join(", ")
                ),
            ));
        }
        let mut last = String::new();
        for ip in allowed {
            let addr = SocketAddr::new(ip, port);
            match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => return Ok((stream, addr)),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        let skipped = if refused.is_empty() {
            String::new()
        } else {
            format!(" (not tried: {})", refused.join(", "))
        };
        Err(problem(
            ProblemType::Connection,
            format!("cannot connect to {host} port {port}: {last}{skipped}"),
        ))
    }
}
