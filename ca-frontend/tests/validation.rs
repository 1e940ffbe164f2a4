//! Domain validation against real servers on loopback: http-01 redirects as Let's Encrypt
//! follows them (a chain through HTTPS passes; the eleventh redirect, a redirect to port 8080,
//! to `ftp:` or to an IP address fails, naming the chain), and addresses validation must never
//! connect to (loopback, private, link-local, IPv4-mapped) refused before any connection — proved
//! by listeners that must see none.
//!
//! Real parts: names resolved by `pebble-challtestsrv` (every name is 127.0.0.1 unless a test
//! points it elsewhere), an HTTP server and an HTTPS server (a self-signed rcgen certificate the
//! validator must accept) on 127.0.0.1 at the ports the validator uses as 80 and 443.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use ca_frontend::challenge::Validator;
use ca_frontend::config::{AllowPrivate, Validation};
use ca_frontend::model::ChallengeType;
use ca_frontend::{Problem, ProblemType};

/// What a path answers: a redirect to a Location, or a body.
#[derive(Clone)]
enum Answer {
    Redirect(StatusCode, String),
    Body(String),
}

/// The servers every test shares. Started once per test binary; the DNS server dies with it.
struct Servers {
    dns: SocketAddr,
    dns_management: SocketAddr,
    http_port: u16,
    tls_port: u16,
    /// path → answer, for both servers.
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    /// Requests the HTTPS server answered.
    https_requests: Arc<AtomicUsize>,
    _dns: Child,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// POSTs `body` to pebble-challtestsrv's management API at `management` (`/add-a`, …).
fn manage(management: SocketAddr, path: &str, body: &serde_json::Value) {
    use std::io::Write;
    let body = body.to_string();
    let mut stream = std::net::TcpStream::connect(management).expect("challtestsrv management");
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read");
    assert!(reply.starts_with("HTTP/1.1 200"), "{path}: {reply}");
}

fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let dns_server = hsmgate_stack::ChallTestSrv::start_tied()
            .expect("pebble-challtestsrv (hsm-config/dev/setup.sh installs it)");
        let (dns, dns_management) = (dns_server.dns, dns_server.management);
        let answers: Arc<Mutex<HashMap<String, Answer>>> = Arc::default();
        let https_requests = Arc::new(AtomicUsize::new(0));
        let http = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let https = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let (http_port, tls_port) = (
            http.local_addr().expect("addr").port(),
            https.local_addr().expect("addr").port(),
        );
        let (a, counter) = (answers.clone(), https_requests.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rt");
            rt.block_on(serve(http, https, a, counter));
        });
        Servers {
            dns,
            dns_management,
            http_port,
            tls_port,
            answers,
            https_requests,
            _dns: dns_server.child,
        }
    })
}

fn answer(answers: &Mutex<HashMap<String, Answer>>, uri: &Uri) -> Response {
    match answers.lock().expect("lock").get(uri.path()).cloned() {
        Some(Answer::Redirect(status, location)) => {
            (status, [(header::LOCATION, location)]).into_response()
        }
        Some(Answer::Body(body)) => body.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn serve(
    http: std::net::TcpListener,
    https: std::net::TcpListener,
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    https_requests: Arc<AtomicUsize>,
) {
    let a = answers.clone();
    let plain = axum::Router::new().fallback(move |uri: Uri| {
        let a = a.clone();
        async move { answer(&a, &uri) }
    });
    let secure = axum::Router::new().fallback(move |uri: Uri| {
        let a = answers.clone();
        https_requests.fetch_add(1, Ordering::SeqCst);
        async move { answer(&a, &uri) }
    });
    // A self-signed certificate for a name the validator never asks for: an HTTPS hop accepts
    // any certificate, as Let's Encrypt's does.
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["not-the-name.invalid".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .expect("tls config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    http.set_nonblocking(true).expect("nonblocking");
    https.set_nonblocking(true).expect("nonblocking");
    let http = tokio::net::TcpListener::from_std(http).expect("listener");
    let https = tokio::net::TcpListener::from_std(https).expect("listener");
    tokio::spawn(async move { axum::serve(http, plain).await.expect("serve") });
    loop {
        let Ok((tcp, _)) = https.accept().await else {
            continue;
        };
        let (acceptor, app) = (acceptor.clone(), secure.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
        });
    }
}

/// A validator on the shared servers; `allow_private` is `validation.allow_private_addresses`.
fn validator(allow_private: AllowPrivate, http_port: u16, tls_port: u16) -> Validator {
    let s = servers();
    let config = Validation {
        http_port,
        tls_port,
        dns_server: Some(s.dns),
        timeout_ms: 5000,
        allow_private_addresses: allow_private,
        ..Validation::default()
    };
    Validator::new(&config, &["hsmgate.test".to_owned()], &["test".to_owned()]).expect("validator")
}

fn loopback_validator() -> Validator {
    let s = servers();
    validator(AllowPrivate::All(true), s.http_port, s.tls_port)
}

/// A fresh token and the key authorization of a made-up account.
fn new_token() -> (String, String) {
    let token = ca_frontend::random_id().expect("id");
    let key_auth = format!("{token}.thumbprint-of-an-account");
    (token, key_auth)
}

fn set(path: &str, answer: Answer) {
    servers()
        .answers
        .lock()
        .expect("lock")
        .insert(path.to_owned(), answer);
}

fn challenge_path(token: &str) -> String {
    format!("/.well-known/acme-challenge/{token}")
}

async fn http01(v: &Validator, domain: &str, key_auth: &str) -> Result<(), Problem> {
    v.validate(ChallengeType::Http01, domain, key_auth).await
}

#[tokio::test]
async fn a_redirect_chain_through_https_passes() {
    let s = servers();
    let (token, key_auth) = new_token();
    // http://start → relative path → https (default port: the tls port) on another name →
    // https with the explicit tls port → the key authorization.
    set(
        &challenge_path(&token),
        Answer::Redirect(StatusCode::FOUND, format!("/moved/{token}")),
    );
    set(
        &format!("/moved/{token}"),
        Answer::Redirect(
            StatusCode::MOVED_PERMANENTLY,
            format!("https://secure.redirect.test/step/{token}"),
        ),
    );
    set(
        &format!("/step/{token}"),
        Answer::Redirect(
            StatusCode::TEMPORARY_REDIRECT,
            format!("https://final.redirect.test:{}/final/{token}", s.tls_port),
        ),
    );
    set(
        &format!("/final/{token}"),
        Answer::Body(format!("{key_auth}\n")),
    );
    let before = s.https_requests.load(Ordering::SeqCst);
    http01(&loopback_validator(), "start.redirect.test", &key_auth)
        .await
        .expect("a redirect chain through HTTPS validates");
    assert_eq!(
        s.https_requests.load(Ordering::SeqCst) - before,
        2,
        "both HTTPS hops were requested over TLS"
    );
    // The wrong body at the end of the chain fails, and the detail lists the chain.
    set(&format!("/final/{token}"), Answer::Body("nope".into()));
    let p = http01(&loopback_validator(), "start.redirect.test", &key_auth)
        .await
        .expect_err("wrong body");
    assert_eq!(p.kind, ProblemType::Unauthorized, "{}", p.detail);
    assert!(
        p.detail.contains("redirects followed")
            && p.detail.contains("https://secure.redirect.test/step/")
            && p.detail.contains("302"),
        "{}",
        p.detail
    );
}

/// A chain of `n` redirects from the challenge path, then the key authorization.
fn chain_of(n: usize, token: &str, key_auth: &str) {
    let mut path = challenge_path(token);
    for i in 1..=n {
        let next = format!("/hop/{i}/{token}");
        set(&path, Answer::Redirect(StatusCode::FOUND, next.clone()));
        path = next;
    }
    set(&path, Answer::Body(key_auth.to_owned()));
}

#[tokio::test]
async fn ten_redirects_pass_and_eleven_fail() {
    let v = loopback_validator();
    let (token, key_auth) = new_token();
    chain_of(10, &token, &key_auth);
    http01(&v, "ten.redirect.test", &key_auth)
        .await
        .expect("ten redirects are followed");
    let (token, key_auth) = new_token();
    chain_of(11, &token, &key_auth);
    let p = http01(&v, "eleven.redirect.test", &key_auth)
        .await
        .expect_err("eleven redirects");
    assert_eq!(p.kind, ProblemType::Connection, "{}", p.detail);
    assert!(
        p.detail.contains("more than 10 redirects")
            && p.detail.contains(&format!("/hop/11/{token}")),
        "{}",
        p.detail
    );
}

#[tokio::test]
async fn redirects_to_other_ports_schemes_and_addresses_fail() {
    let v = loopback_validator();
    for (location, expected) in [
        ("http://other.redirect.test:8080/x".to_owned(), "not 8080"),
        ("https://other.redirect.test:8443/x".to_owned(), "not 8443"),
        ("ftp://other.redirect.test/x".to_owned(), "`ftp`"),
        ("gopher://other.redirect.test/x".to_owned(), "`gopher`"),
        (
            format!("http://127.0.0.1:{}/x", servers().http_port),
            "not IP addresses",
        ),
        ("http://[::1]/x".to_owned(), "not IP addresses"),
        (
            "http://metadata.internal/x".to_owned(),
            "not a name this CA validates",
        ),
        (
            "http://user:pw@other.redirect.test/x".to_owned(),
            "credentials",
        ),
    ] {
        let (token, key_auth) = new_token();
        set(
            &challenge_path(&token),
            Answer::Redirect(StatusCode::FOUND, location.clone()),
        );
        let p = http01(&v, "from.redirect.test", &key_auth)
            .await
            .expect_err(&location);
        assert_eq!(p.kind, ProblemType::Connection, "{location}: {}", p.detail);
        assert!(
            p.detail.contains(expected) && p.detail.contains("redirects followed"),
            "{location}: {}",
            p.detail
        );
    }
}

/// A listener on `ip` whose connections are counted: a validation refused before connecting
/// leaves it at zero.
fn counting_listener(ip: &str, port: u16) -> Arc<AtomicUsize> {
    let listener = std::net::TcpListener::bind((ip, port)).expect("bind counting listener");
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    seen
}

#[tokio::test]
async fn private_addresses_are_refused_before_any_connection() {
    let s = servers();
    // One port for both challenge types, on a listener that must see nothing: the names resolve
    // to 127.0.0.1 (challtestsrv's default), loopback, refused by the default policy.
    let port = free_port();
    let seen = counting_listener("127.0.0.1", port);
    let v = validator(AllowPrivate::All(false), port, port);
    let (_, key_auth) = new_token();
    let p = http01(&v, "private.refusal.test", &key_auth)
        .await
        .expect_err("loopback");
    assert_eq!(p.kind, ProblemType::Dns, "{}", p.detail);
    assert!(
        p.detail.contains("127.0.0.1 (127.0.0.0/8 Loopback"),
        "{}",
        p.detail
    );
    let p = v
        .validate(ChallengeType::TlsAlpn01, "private.refusal.test", &key_auth)
        .await
        .expect_err("loopback, tls-alpn-01");
    assert!(p.detail.contains("127.0.0.1 (127.0.0.0/8"), "{}", p.detail);
    // Private, link-local (cloud metadata), unique-local IPv6: each named with its block.
    // (IPv4-mapped IPv6 answers are refused too: the unit tests of `addresses`; the DNS server
    // used here does not serve them as AAAA records.)
    for (host, kind, address, block) in [
        (
            "ten.refusal.test",
            "/add-a",
            "10.0.0.1",
            "10.0.0.0/8 Private-Use",
        ),
        (
            "metadata.refusal.test",
            "/add-a",
            "169.254.169.254",
            "169.254.0.0/16 Link Local",
        ),
        (
            "six.refusal.test",
            "/add-aaaa",
            "fd00::1",
            "fc00::/7 Unique-Local",
        ),
    ] {
        manage(
            s.dns_management,
            kind,
            &serde_json::json!({"host": host, "addresses": [address]}),
        );
        if kind == "/add-aaaa" {
            // The A record stays challtestsrv's default (127.0.0.1): refused as well.
            manage(
                s.dns_management,
                "/add-a",
                &serde_json::json!({"host": host, "addresses": ["192.168.7.7"]}),
            );
        }
        let p = http01(&v, host, &key_auth).await.expect_err(host);
        assert!(
            p.detail.contains(&format!("{address} ({block}")),
            "{host}: {}",
            p.detail
        );
    }
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "no connection may reach a refused address"
    );
}

#[tokio::test]
async fn a_redirect_to_a_private_address_is_refused_before_connecting() {
    // 127.0.0.1 is allowed (the first hop), 127.0.0.2 is not: a redirect to a name resolving to
    // 127.0.0.2 is refused by the same check as the first hop, and its listener sees nothing.
    let s = servers();
    let seen = counting_listener("127.0.0.2", s.http_port);
    manage(
        s.dns_management,
        "/add-a",
        &serde_json::json!({"host": "inside.refusal.test", "addresses": ["127.0.0.2"]}),
    );
    let v = validator(
        AllowPrivate::Only(vec![std::net::Ipv4Addr::LOCALHOST.into()]),
        s.http_port,
        s.tls_port,
    );
    let (token, key_auth) = new_token();
    set(
        &challenge_path(&token),
        Answer::Redirect(
            StatusCode::FOUND,
            format!("http://inside.refusal.test/{token}"),
        ),
    );
    set(&format!("/{token}"), Answer::Body(key_auth.clone()));
    let p = http01(&v, "outside.refusal.test", &key_auth)
        .await
        .expect_err("redirect into 127.0.0.2");
    assert_eq!(p.kind, ProblemType::Dns, "{}", p.detail);
    assert!(
        p.detail.contains("127.0.0.2 (127.0.0.0/8 Loopback")
            && p.detail.contains("redirects followed"),
        "{}",
        p.detail
    );
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    // The same chain to a name on the allowed address validates.
    set(
        &challenge_path(&token),
        Answer::Redirect(
            StatusCode::FOUND,
            format!("http://allowed.refusal.test/{token}"),
        ),
    );
    http01(&v, "outside.refusal.test", &key_auth)
        .await
        .expect("127.0.0.1 is allowed");
}
