//! http-01 (RFC 8555 §8.3): the key authorization at
//! `http://{domain}/.well-known/acme-challenge/{token}`, redirects followed as Let's Encrypt
//! follows them.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Empty, Limited};

use crate::{Problem, ProblemType};

use super::tls_alpn01::unverified_client;
use super::{MAX_HTTP_BODY, MAX_REDIRECTS, Validator, problem};

impl Validator {
    /// http-01 (RFC 8555 §8.3), following redirects as Let's Encrypt does: at most
    /// [`MAX_REDIRECTS`], to `http:` or `https:` only, on the http-01 or tls-alpn-01 port only (80
    /// and 443 in production), to a name the identifier policy accepts (not an IP address), each
    /// hop's addresses checked like the first's; an HTTPS hop accepts any certificate (the
    /// subscriber may have none yet). A failure's detail lists the redirects followed.
    pub(super) async fn http01(
        &self,
        domain: &str,
        key_authorization: &str,
    ) -> Result<(), Problem> {
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
        let config = unverified_client(b"http/1.1").map_err(|e| tls(e.to_string()))?;
        let server_name = rustls_pki_types::ServerName::try_from(hop.host.clone())
            .map_err(|e| tls(format!("not a server name: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name, stream)
            .await
            .map_err(|e| tls(format!("handshake: {e}")))?;
        get(url, hop, addr, stream).await
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
