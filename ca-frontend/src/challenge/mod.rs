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
//! the special-purpose registries ([`crate::addresses`]) unless `allow_private_addresses` says
//! so. The problem names the redirects followed and the addresses refused. The same checks run
//! at each remote perspective ([`crate::perspective`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use der::Decode;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use http_body_util::{BodyExt, Empty, Limited};
use sha2::{Digest, Sha256};

use crate::config::Validation;
use crate::model::ChallengeType;
use crate::{Error, Problem, ProblemType, b64};

/// `id-pe-acmeIdentifier` (RFC 8737 §6.1).
const ID_PE_ACME_IDENTIFIER: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.1.31");
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

    /// The addresses to try for `domain`, IPv6 first (as Let's Encrypt does).
    async fn addresses(&self, domain: &str) -> Result<Vec<IpAddr>, Problem> {
        let lookup = self
            .resolver
            .lookup_ip(domain)
            .await
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

    /// http-01 (RFC 8555 §8.3), following redirects as Let's Encrypt does: at most
    /// [`MAX_REDIRECTS`], to `http:` or `https:` only, on the http-01 or tls-alpn-01 port only (80
    /// and 443 in production), to a name the identifier policy accepts (not an IP address), each
    /// hop's addresses checked like the first's; an HTTPS hop accepts any certificate (the
    /// subscriber may have none yet). A failure's detail lists the redirects followed.
    async fn http01(&self, domain: &str, key_authorization: &str) -> Result<(), Problem> {
        let token = key_authorization.split('.').next().unwrap_or_default();
        let first = format!("http://{domain}/.well-known/acme-challenge/{token}");
        let mut url = url::Url::parse(&first)
            .map_err(|e| problem(ProblemType::Malformed, format!("{first} is not a URL: {e}")))?;
        let mut hop = Hop {
            host: domain.to_owned(),
            port: self.http_port,
            tls: false,
        };
        // "URL (address) → status", one per redirect followed.
        let mut chain: Vec<String> = Vec::new();
        let with_chain = |mut p: Problem, chain: &[String]| {
            if !chain.is_empty() {
                p.detail = format!("{}; redirects followed: {}", p.detail, chain.join(", "));
            }
            p
        };
        loop {
            let fetched = self
                .fetch(&url, &hop)
                .await
                .map_err(|p| with_chain(p, &chain))?;
            match fetched {
                Fetched::Redirect {
                    status,
                    location,
                    addr,
                } => {
                    chain.push(format!("{url} ({addr}) {status} → {location}"));
                    if chain.len() > MAX_REDIRECTS {
                        return Err(with_chain(
                            problem(
                                ProblemType::Connection,
                                format!(
                                    "{first}: more than {MAX_REDIRECTS} redirects, which is too many"
                                ),
                            ),
                            &chain,
                        ));
                    }
                    (url, hop) = self
                        .redirect_target(&url, &location)
                        .map_err(|p| with_chain(p, &chain))?;
                }
                Fetched::Body { body, addr } => {
                    let text = String::from_utf8_lossy(&body);
                    // RFC 8555 §8.3: the client may add whitespace; the server strips it.
                    if text.trim() != key_authorization {
                        return Err(with_chain(
                            problem(
                                ProblemType::Unauthorized,
                                format!(
                                    "{url} ({addr}) returned a body that is not the key authorization for this account"
                                ),
                            ),
                            &chain,
                        ));
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Where a redirect from `from` to `location` goes, if it may be followed.
    fn redirect_target(&self, from: &url::Url, location: &str) -> Result<(url::Url, Hop), Problem> {
        let refuse = |why: String| {
            problem(
                ProblemType::Connection,
                format!("redirect from {from} to {location} not followed: {why}"),
            )
        };
        let url = from
            .join(location)
            .map_err(|e| refuse(format!("not a URL ({e})")))?;
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(refuse(format!("the scheme `{other}` is not http or https")));
            }
        };
        let port = match url.port() {
            None if tls => self.tls_port,
            None => self.http_port,
            Some(p) if p == self.http_port || p == self.tls_port => p,
            Some(p) => {
                return Err(refuse(format!(
                    "only ports {} and {} are followed, not {p}",
                    self.http_port, self.tls_port
                )));
            }
        };
        let host = match url.host() {
            Some(url::Host::Domain(name)) => name.to_owned(),
            Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => {
                return Err(refuse(
                    "only domain names are followed, not IP addresses".into(),
                ));
            }
            None => return Err(refuse("no host".into())),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse("the URL carries credentials".into()));
        }
        crate::names::check_dns_name(&host, &self.special_tlds).map_err(|p| {
            refuse(format!(
                "the host is not a name this CA validates: {}",
                p.detail
            ))
        })?;
        Ok((url, Hop { host, port, tls }))
    }

    /// One request of an http-01 validation: GET `url` from `hop`.
    async fn fetch(&self, url: &url::Url, hop: &Hop) -> Result<Fetched, Problem> {
        let (stream, addr) = self.connect(&hop.host, hop.port).await?;
        if !hop.tls {
            return get(url, hop, addr, stream).await;
        }
        let tls = |detail: String| problem(ProblemType::Tls, format!("{url} ({addr}): {detail}"));
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate))
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = rustls_pki_types::ServerName::try_from(hop.host.clone())
            .map_err(|e| tls(format!("not a server name: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name, stream)
            .await
            .map_err(|e| tls(format!("handshake: {e}")))?;
        get(url, hop, addr, stream).await
    }

    async fn dns01(&self, domain: &str, key_authorization: &str) -> Result<(), Problem> {
        let expected = b64(&Sha256::digest(key_authorization.as_bytes()));
        let name = format!("_acme-challenge.{domain}.");
        let lookup = self
            .resolver
            .lookup(name.as_str(), RecordType::TXT)
            .await
            .map_err(|e| problem(ProblemType::Dns, format!("TXT lookup of {name}: {e}")))?;
        let mut seen = 0;
        for record in lookup.answers() {
            if let RData::TXT(txt) = &record.data {
                seen += 1;
                let value: Vec<u8> = txt
                    .txt_data
                    .iter()
                    .flat_map(|s| s.iter().copied())
                    .collect();
                if value == expected.as_bytes() {
                    return Ok(());
                }
            }
        }
        Err(problem(
            ProblemType::Unauthorized,
            format!(
                "none of the {seen} TXT records at {name} is the expected digest of the key authorization"
            ),
        ))
    }

    async fn tls_alpn01(&self, domain: &str, key_authorization: &str) -> Result<(), Problem> {
        let (stream, addr) = self.connect(domain, self.tls_port).await?;
        let tls =
            |detail: String| problem(ProblemType::Tls, format!("{domain} ({addr}): {detail}"));
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate))
        .with_no_client_auth();
        config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
        let server_name = rustls_pki_types::ServerName::try_from(domain.to_owned())
            .map_err(|e| tls(format!("not a server name: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name, stream)
            .await
            .map_err(|e| tls(format!("handshake: {e}")))?;
        let (_, session) = stream.get_ref();
        if session.alpn_protocol() != Some(b"acme-tls/1") {
            return Err(tls("the server did not negotiate ALPN acme-tls/1".into()));
        }
        let certificate = session
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| tls("no certificate".into()))?;
        check_alpn_certificate(certificate.as_ref(), domain, key_authorization)
    }

    /// CAA (RFC 8659 §3): the relevant record set is the first non-empty one climbing from
    /// `domain` to the root; issuance is allowed if there is none or one of its `issue` (or, for
    /// a wildcard, `issuewild`) records names this CA and `requester` (RFC 8657). A DNS failure
    /// refuses issuance. For every name of an order, with the remote perspectives:
    /// [`crate::perspective::Corroborator::check_order_caa`].
    pub async fn check_caa(
        &self,
        domain: &str,
        wildcard: bool,
        requester: CaaRequester<'_>,
    ) -> Result<(), Problem> {
        let mut name = domain.trim_end_matches('.').to_ascii_lowercase();
        loop {
            let records = self.caa_records(&name).await?;
            if !records.is_empty() {
                return caa_allows(
                    &self.caa_identities,
                    domain,
                    &name,
                    &records,
                    wildcard,
                    requester,
                );
            }
            match name.split_once('.') {
                Some((_, parent)) if !parent.is_empty() => name = parent.to_owned(),
                _ => return Ok(()),
            }
        }
    }

    async fn caa_records(&self, name: &str) -> Result<Vec<CaaRecord>, Problem> {
        match self
            .resolver
            .lookup(format!("{name}."), RecordType::CAA)
            .await
        {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::CAA(caa) => Some(CaaRecord {
                        critical: caa.issuer_critical,
                        tag: caa.tag.to_ascii_lowercase(),
                        value: caa.value.clone(),
                    }),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(vec![]),
            Err(e) => Err(problem(
                ProblemType::Dns,
                format!("CAA lookup of {name} failed, so issuance is refused: {e}"),
            )),
        }
    }
}

/// Where one request of an http-01 validation goes.
#[derive(Clone, Debug)]
struct Hop {
    host: String,
    port: u16,
    tls: bool,
}

/// What one request of an http-01 validation got: a redirect to follow, or a body.
enum Fetched {
    Redirect {
        status: hyper::StatusCode,
        location: String,
        addr: SocketAddr,
    },
    Body {
        body: hyper::body::Bytes,
        addr: SocketAddr,
    },
}

/// GET `url`'s path over `stream` (HTTP/1.1 by hyper): a redirect's `Location`, or a 2xx
/// answer's body (at most [`MAX_HTTP_BODY`] bytes); any other answer fails.
async fn get<S>(url: &url::Url, hop: &Hop, addr: SocketAddr, stream: S) -> Result<Fetched, Problem>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = |e: String| problem(ProblemType::Connection, format!("{url} ({addr}): {e}"));
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| connection(e.to_string()))?;
    tokio::spawn(conn);
    let mut target = url.path().to_owned();
    if let Some(query) = url.query() {
        target = format!("{target}?{query}");
    }
    // An explicit port is part of the Host header (RFC 9110 §7.2); the default one is not.
    let host = match url.port() {
        Some(p) => format!("{}:{p}", hop.host),
        None => hop.host.clone(),
    };
    let request = hyper::Request::get(target)
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "hsmgate-ca-frontend validator")
        .header(hyper::header::ACCEPT, "*/*")
        .body(Empty::<hyper::body::Bytes>::new())
        .map_err(|e| connection(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| connection(e.to_string()))?;
    let status = response.status();
    if status.is_redirection() {
        let location = response
            .headers()
            .get(hyper::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        return match location {
            Some(location) => Ok(Fetched::Redirect {
                status,
                location,
                addr,
            }),
            None => Err(problem(
                ProblemType::Unauthorized,
                format!("{url} ({addr}) answered HTTP {status} without a usable Location"),
            )),
        };
    }
    if !status.is_success() {
        return Err(problem(
            ProblemType::Unauthorized,
            format!("{url} ({addr}) answered HTTP {status}"),
        ));
    }
    let body = Limited::new(response.into_body(), MAX_HTTP_BODY)
        .collect()
        .await
        .map_err(|e| connection(format!("reading the body: {e}")))?
        .to_bytes();
    Ok(Fetched::Body { body, addr })
}

/// One CAA resource record (RFC 8659 §4.1): its issuer-critical flag, tag (lower case), value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaaRecord {
    pub critical: bool,
    pub tag: String,
    pub value: Vec<u8>,
}

/// Who asks for a certificate and how control was proved: what RFC 8657's `accounturi` and
/// `validationmethods` parameters restrict.
#[derive(Clone, Copy, Debug)]
pub struct CaaRequester<'a> {
    /// The ACME account URL (`https://…/acme/acct/ID`), compared exactly (RFC 8657 §3).
    pub account_uri: &'a str,
    /// The challenge that validated the name; its type is the method label (RFC 8657 §4).
    pub method: ChallengeType,
}

/// Whether the relevant record set `records` (found at `at`) lets the CA known by `identities`
/// issue for `domain` to `requester`. An `issue` value is parsed by hickory's RFC 8659 §4.2
/// grammar; one that does not parse authorizes nothing.
pub fn caa_allows(
    identities: &[String],
    domain: &str,
    at: &str,
    records: &[CaaRecord],
    wildcard: bool,
    requester: CaaRequester<'_>,
) -> Result<(), Problem> {
    use hickory_resolver::proto::rr::rdata::caa::read_issuer;
    if let Some(record) = records
        .iter()
        .find(|r| r.critical && !matches!(r.tag.as_str(), "issue" | "issuewild" | "iodef"))
    {
        return Err(problem(
            ProblemType::Caa,
            format!(
                "CAA at {at} has a critical `{}` record this CA does not understand",
                record.tag
            ),
        ));
    }
    let tag = if wildcard && records.iter().any(|r| r.tag == "issuewild") {
        "issuewild"
    } else {
        "issue"
    };
    let method = requester.method.as_str();
    // Why each record naming this CA still does not authorize the request.
    let mut refusals = Vec::new();
    for record in records.iter().filter(|r| r.tag == tag) {
        let shown = String::from_utf8_lossy(&record.value);
        let (issuer, parameters) = match read_issuer(&record.value) {
            Ok((Some(issuer), parameters)) => (issuer, parameters),
            // `issue ";"`: no CA may issue.
            Ok((None, _)) => continue,
            Err(e) => {
                refusals.push(format!("`{tag} \"{shown}\"` does not parse ({e})"));
                continue;
            }
        };
        let issuer = issuer.to_ascii().trim_end_matches('.').to_ascii_lowercase();
        if !identities.contains(&issuer) {
            continue;
        }
        let parameter = |key: &'static str| {
            parameters
                .iter()
                .filter(move |p| p.key().eq_ignore_ascii_case(key))
                .map(|p| p.value())
        };
        // RFC 8657 §3: "the CA MUST only issue if the ACME account URI matches".
        if let Some(other) = parameter("accounturi").find(|uri| *uri != requester.account_uri) {
            refusals.push(format!(
                "`{tag} \"{shown}\"` binds issuance to account {other}, not {}",
                requester.account_uri
            ));
            continue;
        }
        // RFC 8657 §4: only the listed validation methods may be used.
        if let Some(methods) =
            parameter("validationmethods").find(|list| !list.split(',').any(|m| m.trim() == method))
        {
            refusals.push(format!(
                "`{tag} \"{shown}\"` allows validation by {methods} only, and {domain} was validated by {method}"
            ));
            continue;
        }
        return Ok(());
    }
    let why = if refusals.is_empty() {
        format!("they do not name this CA ({})", identities.join(", "))
    } else {
        refusals.join("; ")
    };
    Err(problem(
        ProblemType::Caa,
        format!("CAA records at {at} do not allow this CA to issue for {domain}: {why}"),
    ))
}

/// Checks a tls-alpn-01 certificate (RFC 8737 §3): one dNSName SAN, the domain; a critical
/// acmeIdentifier extension holding SHA-256 of the key authorization.
fn check_alpn_certificate(
    der_bytes: &[u8],
    domain: &str,
    key_authorization: &str,
) -> Result<(), Problem> {
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    let tls = |detail: String| problem(ProblemType::Tls, format!("{domain}: {detail}"));
    let cert = x509_cert::Certificate::from_der(der_bytes)
        .map_err(|e| tls(format!("the certificate does not parse: {e}")))?;
    let extensions = cert
        .tbs_certificate()
        .extensions()
        .map(|e| e.as_slice())
        .unwrap_or_default();
    let mut names = Vec::new();
    let mut digest = None;
    for ext in extensions {
        if ext.extn_id == const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME {
            let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
                .map_err(|e| tls(format!("subjectAltName: {e}")))?;
            for name in san.0 {
                match name {
                    GeneralName::DnsName(n) => names.push(n.to_string().to_ascii_lowercase()),
                    _ => return Err(tls("the SAN holds a name that is not a dNSName".into())),
                }
            }
        } else if ext.extn_id == ID_PE_ACME_IDENTIFIER {
            if !ext.critical {
                return Err(tls("the acmeIdentifier extension is not critical".into()));
            }
            let value = der::asn1::OctetString::from_der(ext.extn_value.as_bytes())
                .map_err(|e| tls(format!("acmeIdentifier: {e}")))?;
            digest = Some(value.as_bytes().to_vec());
        }
    }
    if names != [domain.to_ascii_lowercase()] {
        return Err(tls(format!(
            "the certificate names {names:?}, not exactly {domain}"
        )));
    }
    match digest {
        Some(d) if d == Sha256::digest(key_authorization.as_bytes()).as_slice() => Ok(()),
        Some(_) => Err(problem(
            ProblemType::Unauthorized,
            format!(
                "{domain}: the acmeIdentifier is not the digest of this account's key authorization"
            ),
        )),
        None => Err(tls("the certificate has no acmeIdentifier extension".into())),
    }
}

/// tls-alpn-01 looks at the certificate's contents, not its chain: the validation server's
/// certificate is self-signed by design (RFC 8737 §3).
#[derive(Debug)]
struct AcceptAnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        verify_handshake(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        verify_handshake(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        use rustls::SignatureScheme as S;
        vec![
            S::ECDSA_NISTP256_SHA256,
            S::ECDSA_NISTP384_SHA384,
            S::ED25519,
            S::RSA_PSS_SHA256,
            S::RSA_PSS_SHA384,
            S::RSA_PKCS1_SHA256,
            S::RSA_PKCS1_SHA384,
        ]
    }
}

/// Checks the handshake signature with the certificate's key. Not through webpki, which refuses
/// to parse the certificate at all: its critical acmeIdentifier extension is unknown to it.
fn verify_handshake(
    message: &[u8],
    cert: &rustls_pki_types::CertificateDer<'_>,
    dss: &rustls::DigitallySignedStruct,
) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
    use ring::signature as rs;
    use rustls::SignatureScheme as S;
    let bad = |m: &str| rustls::Error::General(format!("tls-alpn-01 handshake signature: {m}"));
    let parsed = x509_cert::Certificate::from_der(cert.as_ref())
        .map_err(|_| bad("certificate does not parse"))?;
    let spki = parsed.tbs_certificate().subject_public_key_info();
    let key = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| bad("key has unused bits"))?;
    let alg: &dyn rs::VerificationAlgorithm = match dss.scheme {
        S::ECDSA_NISTP256_SHA256 => &rs::ECDSA_P256_SHA256_ASN1,
        S::ECDSA_NISTP384_SHA384 => &rs::ECDSA_P384_SHA384_ASN1,
        S::ED25519 => &rs::ED25519,
        S::RSA_PSS_SHA256 => &rs::RSA_PSS_2048_8192_SHA256,
        S::RSA_PSS_SHA384 => &rs::RSA_PSS_2048_8192_SHA384,
        S::RSA_PKCS1_SHA256 => &rs::RSA_PKCS1_2048_8192_SHA256,
        S::RSA_PKCS1_SHA384 => &rs::RSA_PKCS1_2048_8192_SHA384,
        _ => return Err(bad("unsupported scheme")),
    };
    rs::UnparsedPublicKey::new(alg, key)
        .verify(message, dss.signature())
        .map_err(|_| bad("does not verify"))?;
    Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "https://acme.test/acme/acct/mine";

    fn issue(value: &str) -> CaaRecord {
        CaaRecord {
            critical: false,
            tag: "issue".into(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn allows(records: &[CaaRecord], method: ChallengeType) -> Result<(), String> {
        let requester = CaaRequester {
            account_uri: ACCOUNT,
            method,
        };
        caa_allows(
            &["hsmgate.test".into()],
            "www.example.de",
            "example.de",
            records,
            false,
            requester,
        )
        .map_err(|p| {
            assert_eq!(p.kind, ProblemType::Caa);
            p.detail
        })
    }

    #[test]
    fn an_issue_record_naming_this_ca_allows() {
        assert_eq!(
            allows(&[issue("hsmgate.test")], ChallengeType::Http01),
            Ok(())
        );
        assert_eq!(
            allows(&[issue("HSMGATE.test; foo=bar")], ChallengeType::Dns01),
            Ok(())
        );
        // Another CA's record among ours does not matter; only another CA's does.
        assert_eq!(
            allows(
                &[issue("other.example"), issue("hsmgate.test")],
                ChallengeType::Http01
            ),
            Ok(())
        );
        assert!(allows(&[issue("other.example")], ChallengeType::Http01).is_err());
        assert!(allows(&[issue(";")], ChallengeType::Http01).is_err());
        assert!(allows(&[issue("hsmgate.test; bad param")], ChallengeType::Http01).is_err());
    }

    #[test]
    fn accounturi_binds_issuance_to_one_account() {
        let mine = issue(&format!("hsmgate.test; accounturi={ACCOUNT}"));
        assert_eq!(allows(&[mine], ChallengeType::Http01), Ok(()));
        let other = issue("hsmgate.test; accounturi=https://acme.test/acme/acct/other");
        let detail =
            allows(std::slice::from_ref(&other), ChallengeType::Http01).expect_err("other");
        assert!(detail.contains("acct/other"), "{detail}");
        // A record for the account beside one for another: the first authorizes.
        let mine = issue(&format!("hsmgate.test; accounturi={ACCOUNT}"));
        assert_eq!(allows(&[other, mine], ChallengeType::Http01), Ok(()));
    }

    #[test]
    fn validationmethods_restricts_the_challenge_types() {
        let dns_only = issue("hsmgate.test; validationmethods=dns-01");
        assert_eq!(
            allows(std::slice::from_ref(&dns_only), ChallengeType::Dns01),
            Ok(())
        );
        let detail = allows(&[dns_only], ChallengeType::Http01).expect_err("http-01");
        assert!(detail.contains("http-01"), "{detail}");
        let both = issue(&format!(
            "hsmgate.test; accounturi={ACCOUNT}; validationmethods=dns-01,http-01"
        ));
        assert_eq!(
            allows(std::slice::from_ref(&both), ChallengeType::Http01),
            Ok(())
        );
        assert!(allows(&[both], ChallengeType::TlsAlpn01).is_err());
    }
}
