//! The hijack drill (issue 17, BR §3.2.2.9): three remote perspectives, each a real
//! `ca-frontend perspective` process reached over mTLS, each resolving through its own
//! `pebble-challtestsrv`. A perspective whose DNS is "hijacked" sees the name at an attacker's
//! server (http-01) or sees CAA records refusing this CA. One hijacked perspective: issuance
//! succeeds and its disagreement is recorded (authorization, order, metrics); two: refused with
//! a problem naming them.

use super::*;

use ca_frontend::config::{AllowPrivate, Validation};
use ca_frontend::perspective::{PerspectiveConfig, PerspectiveServer, Perspectives, RemoteConfig};

/// A perspective: where it listens, and its own DNS server's management address.
struct Perspective {
    addr: String,
    dns_management: SocketAddr,
}

/// The three perspectives and the `[validation.perspectives]` that asks them; started once per
/// test binary and tied to it.
struct Drill {
    perspectives: Vec<Perspective>,
    config: Perspectives,
    _children: Vec<Child>,
}

/// Answers every http-01 request on 127.0.0.3 at the http-01 port with the attacker's body.
fn attacker_http01() {
    use std::io::{Read, Write};
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let listener = std::net::TcpListener::bind(("127.0.0.3", infra().http_port))
            .expect("bind 127.0.0.3 at the http-01 port");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut buf = [0u8; 2048];
                let _ = stream.read(&mut buf);
                let body = "the-attackers-key-authorization";
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
    });
}

/// POSTs `body` to the pebble-challtestsrv management API at `management`.
fn manage(management: SocketAddr, path: &str, body: &Value) {
    use std::io::{Read, Write};
    let body = body.to_string();
    let mut stream = std::net::TcpStream::connect(management).expect("challtestsrv management");
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read");
    assert!(reply.starts_with("HTTP/1.1 200"), "{path}: {reply}");
}

fn drill() -> &'static Drill {
    static DRILL: OnceLock<Drill> = OnceLock::new();
    DRILL.get_or_init(|| {
        let dir = infra().dir.join("perspectives");
        // mTLS: a CA, a server certificate for 127.0.0.1 (every perspective's), a client
        // certificate for the frontend.
        hsm_config::devcerts::ensure(&dir, &["ca-frontend"]).expect("perspective certificates");
        let perspective = PerspectiveConfig {
            perspective: PerspectiveServer {
                name: "set-by-flag".into(),
                region: "loopback".into(),
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                cert: "server.pem".into(),
                key: "server.key".into(),
                client_ca: "ca.pem".into(),
                caa_identities: vec!["hsmgate.test".into()],
                allowed_special_tlds: vec!["test".into()],
            },
            validation: Validation {
                http_port: infra().http_port,
                timeout_ms: 5000,
                allow_private_addresses: AllowPrivate::All(true),
                ..Validation::default()
            },
            base_dir: PathBuf::new(),
        };
        hsmgate_stack::configs::write(&perspective, &dir.join("perspective.toml")).expect("write");
        let mut children = Vec::new();
        let mut perspectives = Vec::new();
        let mut config = Perspectives {
            ca: Some(dir.join("ca.pem")),
            cert: Some(dir.join("ca-frontend.pem")),
            key: Some(dir.join("ca-frontend.key")),
            ..Perspectives::default()
        };
        for name in ["a", "b", "c"] {
            let dns = hsmgate_stack::ChallTestSrv::start_tied().expect("pebble-challtestsrv");
            let mut command = hsmgate_stack::tied(env!("CARGO_BIN_EXE_ca-frontend"));
            command
                .arg("perspective")
                .arg("--config")
                .arg(dir.join("perspective.toml"))
                .args(["--name", name, "--dns-server", &dns.dns.to_string()]);
            let perspective = hsmgate_stack::Process::spawn_ready_keeping_stdin(
                "ca-frontend perspective",
                command,
                hsmgate_stack::Log::Null,
                hsmgate_stack::READY_TIMEOUT,
            )
            .expect("perspective READY line");
            let addr = perspective
                .ready()
                .and_then(|r| r.field("https"))
                .expect("READY https=ADDR")
                .to_owned();
            // Kept, with its stdin pipe, until this binary exits (see `hsmgate_stack::tied`).
            let perspective = perspective.into_child().expect("the perspective's process");
            config.remote.push(RemoteConfig {
                name: name.into(),
                region: format!("loopback-{name}"),
                url: format!("https://{addr}"),
            });
            perspectives.push(Perspective {
                addr,
                dns_management: dns.management,
            });
            children.push(dns.child);
            children.push(perspective);
        }
        Drill {
            perspectives,
            config,
            _children: children,
        }
    })
}

/// Points `host` at the attacker (127.0.0.3) in the DNS of the first `n` perspectives.
fn hijack_address(host: &str, n: usize) {
    attacker_http01();
    point_at(host, n, "127.0.0.3");
}

/// Points `host` at `address` in the DNS of the first `n` perspectives.
fn point_at(host: &str, n: usize, address: &str) {
    for p in &drill().perspectives[..n] {
        manage(
            p.dns_management,
            "/add-a",
            &json!({"host": host, "addresses": [address]}),
        );
    }
}

/// Makes the first `n` perspectives see CAA records at `host` that name another CA.
fn hijack_caa(host: &str, n: usize) {
    for p in &drill().perspectives[..n] {
        manage(
            p.dns_management,
            "/add-caa",
            &json!({"host": format!("{host}."), "policies": [{"tag": "issue", "value": "other-ca.example"}]}),
        );
    }
}

/// Orders `name`, answers its http-01 challenge and waits for the authorization to be
/// refused: the order and the challenge's error.
async fn refused_http01(client: &Client, name: &str) -> (Value, Value) {
    let r = client
        .post(
            "/acme/new-order",
            Some(&json!({"identifiers": [{"type": "dns", "value": name}]})),
        )
        .await;
    let order = r.json();
    let authz_url = path_of(order["authorizations"][0].as_str().expect("authz"));
    answer_http01(client, &authz_url).await;
    let mut authz = Value::Null;
    for _ in 0..200 {
        authz = client.post(&authz_url, None).await.json();
        if authz["status"] != "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(authz["status"], "invalid", "{authz:?}");
    let error = authz["challenges"]
        .as_array()
        .expect("challenges")
        .iter()
        .find(|c| c["type"] == "http-01")
        .expect("http-01")["error"]
        .clone();
    (order, error)
}

/// The authorization of `order`'s first name, as recorded.
async fn recorded_authz(ca: &Ca, order: &Value) -> ca_frontend::model::Authorization {
    let url = order["authorizations"][0].as_str().expect("authz");
    let id = url.rsplit('/').next().expect("id");
    ca.db.authz(id).await.expect("db").expect("recorded")
}

/// A frontend whose checks the drill's three perspectives corroborate, and a registered
/// client of it.
async fn drill_ca() -> (Arc<Ca>, Client) {
    let ca = ca_with(|c| c.validation.perspectives = drill().config.clone()).await;
    let mut client = Client::new(&ca);
    client.register().await;
    (ca, client)
}

/// A fresh name under `label`.
fn fresh(label: &str) -> String {
    format!("{label}-{}.example.test", hex::encode(&rand_bytes()[..6]))
}

#[tokio::test]
async fn one_hijacked_perspective_is_outvoted_and_two_refuse_http01() {
    let (ca, client) = drill_ca().await;

    // No hijack: all three agree.
    let name = fresh("honest");
    let (_, order) = ready_order(&client, &[&name]).await;
    let authz = recorded_authz(&ca, &order).await;
    let c = &authz.corroboration[0];
    assert!(c.quorum && c.remote.iter().all(|o| o.agreed), "{c:?}");
    assert_eq!(c.check, "http-01");
    assert_eq!(c.remote.len(), 3);

    // One perspective's DNS points the name at the attacker: outvoted, recorded, issued.
    let name = fresh("hijack-one");
    hijack_address(&name, 1);
    let (order_url, order) = ready_order(&client, &[&name]).await;
    let authz = recorded_authz(&ca, &order).await;
    let c = &authz.corroboration[0];
    assert!(c.quorum, "{c:?}");
    let disagreeing: Vec<&str> = c
        .remote
        .iter()
        .filter(|o| !o.agreed)
        .map(|o| o.perspective.as_str())
        .collect();
    assert_eq!(disagreeing, ["a"], "{c:?}");
    let detail = c.remote[0].detail.as_deref().unwrap_or_default();
    assert!(detail.contains("127.0.0.3"), "{detail}");
    let r = finalize(&client, &order, &[&name]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    assert!(certificates_issued(&ca, &order_url).await.is_some());

    // Two: refused, naming both.
    let name = fresh("hijack-two");
    hijack_address(&name, 2);
    let (order, error) = refused_http01(&client, &name).await;
    let detail = error["detail"].as_str().unwrap_or_default();
    // Both hijacked perspectives fetched the attacker's answer: the type they answered with.
    assert_eq!(
        error["type"], "urn:ietf:params:acme:error:unauthorized",
        "{detail}"
    );
    let recorded = recorded_authz(&ca, &order).await;
    assert!(
        detail.contains("perspective a (loopback-a)")
            && detail.contains("perspective b (loopback-b)")
            && !detail.contains("perspective c")
            && detail.contains("2 of 3"),
        "{detail}"
    );
    assert!(!recorded.corroboration[0].quorum);

    let text = metrics_text(&ca);
    for line in [
        r#"hsmgate_acme_perspective_answers_total{perspective="a",check="http-01",outcome="disagreed"} 2"#,
        r#"hsmgate_acme_perspective_answers_total{perspective="b",check="http-01",outcome="disagreed"} 1"#,
        r#"hsmgate_acme_perspective_answers_total{perspective="c",check="http-01",outcome="agreed"} 3"#,
        r#"hsmgate_acme_corroborations_total{check="http-01",outcome="failed"} 1"#,
        r#"hsmgate_acme_corroborations_total{check="http-01",outcome="met"} 2"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

/// The frontend's own check passes; two perspectives cannot connect to the name's address.
/// The refusal carries their type, `connection`, as the frontend's own failure would.
#[tokio::test]
async fn a_refused_quorum_carries_the_type_the_perspectives_answered_with() {
    let (_ca, client) = drill_ca().await;
    let name = fresh("unreachable-two");
    point_at(&name, 2, "127.0.0.4"); // where nothing listens
    let (_, error) = refused_http01(&client, &name).await;
    let detail = error["detail"].as_str().unwrap_or_default();
    assert_eq!(
        error["type"], "urn:ietf:params:acme:error:connection",
        "{detail}"
    );
    assert!(
        detail.contains("not corroborated") && detail.contains("127.0.0.4"),
        "{detail}"
    );
}

#[tokio::test]
async fn one_hijacked_caa_view_is_outvoted_and_two_refuse() {
    let (ca, client) = drill_ca().await;

    let name = fresh("caa-one");
    hijack_caa(&name, 1);
    let (order_url, order) = ready_order(&client, &[&name]).await;
    let r = finalize(&client, &order, &[&name]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    let id = order_url.rsplit('/').next().expect("id");
    let recorded = ca.db.order(id).await.expect("db").expect("order");
    let c = &recorded.caa_corroboration[0];
    assert!(c.quorum && c.check == "caa" && c.domain == name, "{c:?}");
    let disagreeing: Vec<&str> = c
        .remote
        .iter()
        .filter(|o| !o.agreed)
        .map(|o| o.perspective.as_str())
        .collect();
    assert_eq!(disagreeing, ["a"], "{c:?}");
    assert!(
        c.remote[0]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("caa") && d.contains("do not name this CA")),
        "{c:?}"
    );

    let name = fresh("caa-two");
    hijack_caa(&name, 2);
    let (order_url, order) = ready_order(&client, &[&name]).await;
    let r = finalize(&client, &order, &[&name]).await;
    assert_eq!(
        (r.status, r.problem()),
        (StatusCode::FORBIDDEN, "caa".into()),
        "{:?}",
        r.json()
    );
    let detail = r.json()["detail"].as_str().unwrap_or_default().to_owned();
    assert!(
        detail.contains("perspective a (loopback-a)")
            && detail.contains("perspective b (loopback-b)")
            && !detail.contains("perspective c"),
        "{detail}"
    );
    assert!(certificates_issued(&ca, &order_url).await.is_none());
}

#[tokio::test]
async fn a_perspective_answers_only_clients_with_a_certificate_from_its_ca() {
    use rustls_pki_types::pem::PemObject;
    let p = &drill().perspectives[0];
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(
        infra().dir.join("perspectives").join("ca.pem"),
    )
    .expect("ca.pem")
    {
        roots.add(c.expect("pem")).expect("root");
    }
    // The server is trusted; the client shows no certificate.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&p.addr)
        .await
        .expect("connect");
    let server_name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let answered = async {
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let body = r#"{"check":"challenge","kind":"http-01","domain":"x.example.test","key_authorization":"t.k"}"#;
        let request = hyper::Request::post("/check")
            .header("host", &p.addr)
            .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        sender
            .send_request(request)
            .await
            .map(|r| r.status())
            .map_err(|e| e.to_string())
    }
    .await;
    assert!(
        answered.is_err(),
        "a client without a certificate got an answer: {answered:?}"
    );
}
