//! The ACME server with hostile and careless clients: forged, replayed and misdirected JWS,
//! unknown accounts, oversized and mistyped bodies, CSRs with other names or weak keys,
//! finalization before validation and twice at once, revocation by strangers and twice. Each
//! gets its RFC 8555 problem type; none panics; none issues a certificate it should not.
//!
//! Real parts: a `signer` gateway process on SoftHSM2 tokens (root and intermediate made through
//! it by the ceremony), http-01 validation against a server this test runs, names resolved by
//! `pebble-challtestsrv` (every name is 127.0.0.1), the OCSP pre-signer writing to SQLite. The
//! router is called in process. Issued certificates are checked with `openssl verify`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use ca_frontend::b64;
use ca_frontend::config::Config;
use ca_frontend::{Ca, router};
use http_body_util::BodyExt;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use tower::ServiceExt;

const BASE: &str = "http://acme.test";

/// Hostile input: names, JWS headers, keys, contacts, paths, CAA parameters; ACME statuses.
#[path = "acme/input.rs"]
mod input;

/// Remote perspectives: the hijack drill (issue 17).
#[path = "acme/perspectives.rs"]
mod perspectives;

/// The gateway: one SoftHSM2 token holding the root (P-384) and intermediate (P-256) keys,
/// plain text on loopback for client `tests`; PINs and the audit log in `dir`. Written from
/// the typed schema by the stack kit.
fn gateway_config(dir: &Path) -> hsm_config::Config {
    use hsm_config::{KeyAlgorithm, Operation};
    use hsmgate_stack::configs;
    let mut config = configs::plaintext_gateway("dc", "tests");
    configs::grant(
        &mut config,
        "tests",
        &["*"],
        &[Operation::SignCertificate, Operation::SignOcsp],
    );
    config.audit.dir = dir.join("audit");
    config.datacenters[0].hsms = vec![configs::softhsm(
        "hsm-a",
        "ACME-A",
        &dir.join("user.pin"),
        2,
    )];
    config.keys = vec![
        configs::key("root", KeyAlgorithm::EcdsaP384, &["hsm-a"]),
        configs::key("intermediate", KeyAlgorithm::EcdsaP256, &["hsm-a"]),
    ];
    config.base_dir = dir.to_path_buf();
    config
}

/// The processes every test shares: the gateway, the challenge DNS, the http-01 server, and
/// the CA certificates. Started once per test binary; they die with it (see [`hsmgate_stack::tied`]).
struct Infra {
    dir: PathBuf,
    gateway: String,
    dns: SocketAddr,
    /// pebble-challtestsrv's management API (to point a name at another address).
    dns_management: SocketAddr,
    /// pebble-challtestsrv's management API (CAA records, `tests/acme/input.rs`).
    mgmt_port: u16,
    http_port: u16,
    /// http-01 answers: token → key authorization.
    tokens: Arc<Mutex<HashMap<String, String>>>,
    /// The [`hsmgate_stack::tied`] children, holding their stdin pipes open until the binary exits.
    _children: Vec<Child>,
}

/// A workspace binary of this build, from the stack kit (built if missing: `signer` is not
/// this crate's, so Cargo does not build it for these tests).
fn binary(name: &str) -> PathBuf {
    hsmgate_stack::binary(name, name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn infra() -> &'static Infra {
    static INFRA: OnceLock<Infra> = OnceLock::new();
    INFRA.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("hsmgate-acme-test-")
            .tempdir()
            .expect("tempdir")
            .keep();
        let config_text =
            hsmgate_stack::configs::to_toml(&gateway_config(&dir)).expect("gateway config");
        let config =
            hsm_config::Config::parse(&config_text, &dir.join("gateway.toml"), dir.clone())
                .expect("gateway config");
        hsmgate_stack::Provisioned::new(&config, &dir).expect("provisioning SoftHSM2");
        std::fs::write(dir.join("gateway.toml"), &config_text).expect("write");
        let mut command = hsmgate_stack::tied(binary("signer"));
        command
            .arg("--config")
            .arg(dir.join("gateway.toml"))
            .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
            .env("TIED_CLEANUP", &dir);
        let gateway = hsmgate_stack::Process::spawn_ready_keeping_stdin(
            "signer",
            command,
            hsmgate_stack::Log::Null,
            hsmgate_stack::READY_TIMEOUT,
        )
        .expect("gateway READY line");
        let grpc = gateway.ready_addr("grpc").expect("grpc=").to_string();
        // Kept, with its stdin pipe, until this binary exits (see `tied`).
        let gateway = gateway.into_child().expect("the gateway's process");
        let dns = hsmgate_stack::ChallTestSrv::start_tied()
            .expect("pebble-challtestsrv (hsm-config/dev/setup.sh installs it)");
        // http-01 answers, on a thread with its own runtime (tests come and go with theirs).
        let tokens: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let http_port = listener.local_addr().expect("addr").port();
        let served = tokens.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rt");
            rt.block_on(async move {
                listener.set_nonblocking(true).expect("nonblocking");
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let app = axum::Router::new().route(
                    "/.well-known/acme-challenge/{token}",
                    axum::routing::get(
                        move |axum::extract::Path(token): axum::extract::Path<String>| {
                            let answer = served.lock().expect("lock").get(&token).cloned();
                            async move { answer.ok_or(StatusCode::NOT_FOUND) }
                        },
                    ),
                );
                axum::serve(listener, app).await.expect("serve");
            });
        });
        // The hierarchy, through the gateway (retried while its HSM joins the rotation).
        let url = format!("http://{grpc}");
        // On its own thread: infra() is first called from inside a test's runtime.
        let ceremony_url = url.clone();
        let (root, intermediate) = std::thread::spawn(move || {
            let url = ceremony_url;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rt");
            rt.block_on(async {
                for _ in 0..100 {
                    let channel =
                        hsmgate_signer_api::client::connect_lazy(&url, None).expect("channel");
                    if let Ok(pems) = ca_frontend::ceremony::make_hierarchy(
                        channel,
                        "root",
                        "CN=test root",
                        "intermediate",
                        "CN=test intermediate",
                        30,
                    )
                    .await
                    {
                        return pems;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!("the ceremony never succeeded");
            })
        })
        .join()
        .expect("ceremony thread");
        std::fs::write(dir.join("root.pem"), root).expect("write");
        std::fs::write(dir.join("intermediate.pem"), intermediate).expect("write");
        hsmgate_stack::configs::write(&ocsp_config(&url), &dir.join("ocsp.toml")).expect("write");
        Infra {
            dir,
            gateway: url,
            dns: dns.dns,
            dns_management: dns.management,
            mgmt_port: dns.management.port(),
            http_port,
            tokens,
            _children: vec![gateway, dns.child],
        }
    })
}

/// The shared OCSP service's configuration (`ocsp.toml` in the shared directory): the
/// intermediate's responses and 4 CRL shards, signed through the gateway at `gateway`, stored
/// in SQLite.
fn ocsp_config(gateway: &str) -> ocsp::config::Config {
    use ocsp::config::{Config, CrlConfig, Issuer, Presigner, Responder, Store};
    Config {
        responder: Responder::new(SocketAddr::from(([127, 0, 0, 1], 0))),
        issuers: vec![Issuer {
            name: "test".into(),
            certificate: "intermediate.pem".into(),
            signing_key: "intermediate".into(),
            crl: Some(CrlConfig {
                shards: 4,
                base_url: "http://127.0.0.1:1/crl".into(),
                ..CrlConfig::default()
            }),
        }],
        store: Store::Sqlite {
            path: "ocsp.sqlite".into(),
        },
        presigner: Presigner {
            gateway: gateway.into(),
            ..Presigner::default()
        },
        base_dir: PathBuf::new(),
    }
}

/// A fresh CA (its own database) over the shared infrastructure.
async fn ca() -> Arc<Ca> {
    ca_with(|_| {}).await
}

/// [`ca`] with its configuration edited first (e.g. its `[limits]`).
async fn ca_with(edit: impl FnOnce(&mut Config)) -> Arc<Ca> {
    ca_with_ocsp(edit, "ocsp.toml").await
}

/// [`ca_with`] whose OCSP pre-signer is configured by `ocsp_config` (in the shared directory).
async fn ca_with_ocsp(edit: impl FnOnce(&mut Config), ocsp_config: &str) -> Arc<Ca> {
    use ca_frontend::config::{
        AllowPrivate, Ca as CaConfig, Db, Gateway, Limits, Ocsp, Profile, Server, Validation,
    };
    let infra = infra();
    let db = infra.dir.join(format!(
        "ca-{}.sqlite",
        ca_frontend::random_id().expect("id")
    ));
    let mut config = Config {
        server: Server {
            max_body_bytes: 8192,
            ..Server::new(SocketAddr::from(([127, 0, 0, 1], 0)), BASE)
        },
        gateway: Gateway::new(&infra.gateway, "intermediate"),
        ca: CaConfig {
            ocsp_url: Some("http://127.0.0.1:1".into()),
            allowed_special_tlds: vec!["test".into()],
            ..CaConfig::new(
                "root.pem",
                "intermediate.pem",
                vec![Profile::new("classic", 2160)],
                vec!["hsmgate.test".into()],
            )
        },
        ocsp: Ocsp {
            config: ocsp_config.into(),
            issuer: "test".into(),
        },
        validation: Validation {
            http_port: infra.http_port,
            dns_server: Some(infra.dns),
            timeout_ms: 5000,
            allow_private_addresses: AllowPrivate::All(true),
            ..Validation::default()
        },
        db: Db::Sqlite { path: db },
        limits: Limits::default(),
        base_dir: PathBuf::new(),
    };
    edit(&mut config);
    let path = infra.dir.join(format!(
        "acme-{}.toml",
        ca_frontend::random_id().expect("id")
    ));
    hsmgate_stack::configs::write(&config, &path).expect("write");
    let config = Config::load(&path).expect("config");
    Ca::build(config).await.expect("CA")
}

/// What came back: status, problem type (if any), JSON body, headers.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The problem type's last part (`badNonce`), after checking it is a problem document.
    fn problem(&self) -> String {
        assert_eq!(
            self.headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{self:?}"
        );
        let t = self.json()["type"].as_str().unwrap_or_default().to_owned();
        t.strip_prefix("urn:ietf:params:acme:error:")
            .unwrap_or(&t)
            .to_owned()
    }

    fn location(&self) -> String {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

/// A small ACME client: an ES256 account key, JWS by hand (so tests can break them).
struct Client {
    app: axum::Router,
    key: EcdsaKeyPair,
    jwk: Value,
    kid: Option<String>,
}

impl Client {
    fn new(ca: &Arc<Ca>) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("key");
        let p = key.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..])});
        Self {
            app: router(ca.clone()),
            key,
            jwk,
            kid: None,
        }
    }

    fn thumbprint(&self) -> String {
        ca_frontend::jws::PublicKey::from_jwk(&self.jwk)
            .expect("jwk")
            .thumbprint()
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        assert!(
            headers.contains_key("replay-nonce"),
            "every response carries a nonce: {status}"
        );
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn nonce(&self) -> String {
        let r = self
            .send(
                Request::head("/acme/new-nonce")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await;
        r.headers["replay-nonce"]
            .to_str()
            .expect("ascii")
            .to_owned()
    }

    /// A flattened JWS by this key: `kid` when the client has an account, else `jwk`.
    fn jws(&self, url: &str, nonce: &str, payload: Option<&Value>) -> Vec<u8> {
        let mut header = json!({"alg": "ES256", "nonce": nonce, "url": url});
        match &self.kid {
            Some(kid) => header["kid"] = json!(kid),
            None => header["jwk"] = self.jwk.clone(),
        }
        self.sign(&header, payload)
    }

    fn sign(&self, header: &Value, payload: Option<&Value>) -> Vec<u8> {
        let protected = b64(header.to_string().as_bytes());
        let payload = payload
            .map(|p| b64(p.to_string().as_bytes()))
            .unwrap_or_default();
        let rng = ring::rand::SystemRandom::new();
        let sig = self
            .key
            .sign(&rng, format!("{protected}.{payload}").as_bytes())
            .expect("sign");
        json!({"protected": protected, "payload": payload, "signature": b64(sig.as_ref())})
            .to_string()
            .into_bytes()
    }

    async fn post_body(&self, path: &str, body: Vec<u8>) -> Reply {
        self.send(
            Request::post(path)
                .header("content-type", "application/jose+json")
                .body(Body::from(body))
                .expect("request"),
        )
        .await
    }

    /// POSTs `payload` (None: POST-as-GET) to `path`, signed properly.
    async fn post(&self, path: &str, payload: Option<&Value>) -> Reply {
        let nonce = self.nonce().await;
        let body = self.jws(&format!("{BASE}{path}"), &nonce, payload);
        self.post_body(path, body).await
    }

    async fn register(&mut self) {
        let r = self
            .post(
                "/acme/new-account",
                Some(&json!({"termsOfServiceAgreed": true})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
        self.kid = Some(r.location());
    }
}

fn path_of(url: &str) -> String {
    url.strip_prefix(BASE)
        .expect("an URL of this server")
        .to_owned()
}

/// An order for `names` whose authorizations are valid (http-01 really validated).
/// Serves the http-01 key authorization of the authorization at `authz_url` and asks the CA
/// to validate it; the challenge's reply.
async fn answer_http01(client: &Client, authz_url: &str) -> Reply {
    let authz = client.post(authz_url, None).await.json();
    let challenge = authz["challenges"]
        .as_array()
        .expect("challenges")
        .iter()
        .find(|c| c["type"] == "http-01")
        .expect("http-01 offered")
        .clone();
    let token = challenge["token"].as_str().expect("token").to_owned();
    infra()
        .tokens
        .lock()
        .expect("lock")
        .insert(token.clone(), format!("{token}.{}", client.thumbprint()));
    client
        .post(
            &path_of(challenge["url"].as_str().expect("url")),
            Some(&json!({})),
        )
        .await
}

async fn ready_order(client: &Client, names: &[&str]) -> (String, Value) {
    ready_order_with(client, names, json!({})).await
}

/// [`ready_order`] with more members in the new-order payload (e.g. `replaces`).
async fn ready_order_with(client: &Client, names: &[&str], mut payload: Value) -> (String, Value) {
    let identifiers: Vec<Value> = names
        .iter()
        .map(|n| json!({"type": "dns", "value": n}))
        .collect();
    payload["identifiers"] = json!(identifiers);
    let r = client.post("/acme/new-order", Some(&payload)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
    let order_url = r.location();
    let order = r.json();
    for authz_url in order["authorizations"].as_array().expect("authorizations") {
        let r = answer_http01(client, &path_of(authz_url.as_str().expect("url"))).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
        assert!(
            r.headers
                .get("link")
                .is_some_and(|l| l.to_str().unwrap_or_default().contains("rel=\"up\""))
        );
        let mut status = String::new();
        for _ in 0..100 {
            let authz = client
                .post(&path_of(authz_url.as_str().expect("url")), None)
                .await
                .json();
            status = authz["status"].as_str().unwrap_or_default().to_owned();
            if status != "pending" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(status, "valid", "http-01 validation of {authz_url}");
    }
    let order = client.post(&path_of(&order_url), None).await.json();
    assert_eq!(order["status"], "ready");
    (order_url, order)
}

fn csr(names: &[&str]) -> Vec<u8> {
    csr_with_key(names).0
}

/// A CSR and the PKCS#8 of its key.
fn csr_with_key(names: &[&str]) -> (Vec<u8>, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).expect("csr").der().to_vec();
    (csr, key.serialize_der())
}

fn openssl_csr(args: &[&str], name: &str) -> Vec<u8> {
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-nodes",
            "-keyout",
            "/dev/null",
            "-outform",
            "DER",
            "-subj",
            &format!("/CN={name}"),
        ])
        .args(["-addext", &format!("subjectAltName=DNS:{name}")])
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

async fn certificates_issued(ca: &Ca, order_url: &str) -> Option<String> {
    let id = order_url.rsplit('/').next().expect("id");
    ca.db
        .order(id)
        .await
        .expect("db")
        .and_then(|o| o.certificate)
}

#[tokio::test]
async fn issuance_works_and_a_second_finalization_loses() {
    let ca = ca().await;
    let mut client = Client::new(&ca);
    client.register().await;
    let (order_url, order) = ready_order(&client, &["one.example.test", "two.example.test"]).await;
    let finalize = path_of(order["finalize"].as_str().expect("finalize"));
    let payload = json!({"csr": b64(&csr(&["one.example.test", "two.example.test"]))});
    let (a, b) = tokio::join!(
        client.post(&finalize, Some(&payload)),
        client.post(&finalize, Some(&payload))
    );
    let (won, lost) = if a.status == StatusCode::OK {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(won.status, StatusCode::OK, "{:?}", won.json());
    assert_eq!(won.json()["status"], "valid");
    assert_eq!(lost.status, StatusCode::FORBIDDEN, "{:?}", lost.json());
    assert_eq!(lost.problem(), "orderNotReady");
    // A third, after the fact, is refused the same way.
    let r = client.post(&finalize, Some(&payload)).await;
    assert_eq!(r.problem(), "orderNotReady");

    let cert_url = won.json()["certificate"]
        .as_str()
        .expect("certificate URL")
        .to_owned();
    let r = client.post(&path_of(&cert_url), None).await;
    assert_eq!(
        r.headers["content-type"],
        "application/pem-certificate-chain"
    );
    // openssl, not our code, checks the signatures up to the root made by the ceremony.
    let chain = assert_chain_verifies(&r.body);
    // The OCSP response was stored before the order turned valid.
    let serial = certificates_issued(&ca, &order_url)
        .await
        .expect("recorded");
    let bytes = hex::decode(&serial).expect("hex");
    let stored = ca
        .presigner
        .store()
        .certificate(
            &ocsp::IssuerName("test".into()),
            &ocsp::Serial::from_be_bytes(&bytes),
        )
        .await
        .expect("ocsp worklist");
    assert_eq!(stored, Some(ocsp::CertStatus::Good));
    // The classic profile publishes both: the OCSP URL, and the CRL shard its serial falls in
    // (the last 8 octets, big-endian, modulo the 4 shards), as openssl reads them.
    let text = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-ext",
            "crlDistributionPoints,authorityInfoAccess",
            "-in",
        ])
        .arg(&chain)
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&text.stdout);
    let tail = &bytes[bytes.len().saturating_sub(8)..];
    let shard = tail.iter().fold(0u128, |n, b| (n << 8) | u128::from(*b)) % 4;
    assert!(
        text.contains(&format!("URI:http://127.0.0.1:1/crl/test/{shard}.crl")),
        "{text}"
    );
    assert!(text.contains("OCSP - URI:http://127.0.0.1:1"), "{text}");

    // Revocation: a stranger may not; the owner may, once; an unknown reason is refused.
    let der = ca_frontend::issuance::first_pem_der(&String::from_utf8_lossy(&r.body)).expect("pem");
    let mut stranger = Client::new(&ca);
    stranger.register().await;
    let revoke = |reason: Option<u8>| {
        let mut p = json!({"certificate": b64(&der)});
        if let Some(r) = reason {
            p["reason"] = json!(r);
        }
        p
    };
    let r = stranger
        .post("/acme/revoke-cert", Some(&revoke(None)))
        .await;
    assert_eq!(r.problem(), "unauthorized");
    let r = client
        .post("/acme/revoke-cert", Some(&revoke(Some(7))))
        .await;
    assert_eq!(r.problem(), "badRevocationReason");
    let r = client
        .post("/acme/revoke-cert", Some(&revoke(Some(4))))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    let r = client
        .post("/acme/revoke-cert", Some(&revoke(Some(4))))
        .await;
    assert_eq!(r.problem(), "alreadyRevoked");
    let status = ca
        .presigner
        .store()
        .certificate(
            &ocsp::IssuerName("test".into()),
            &ocsp::Serial::from_be_bytes(&bytes),
        )
        .await
        .expect("ocsp worklist");
    assert!(
        matches!(
            status,
            Some(ocsp::CertStatus::Revoked {
                reason: Some(4),
                ..
            })
        ),
        "{status:?}"
    );

    // What an operator's Prometheus reads of all that (this test's CA has its own registry).
    let m = metrics_text(&ca);
    for (series, want) in [
        (r#"hsmgate_acme_orders_total{state="pending"}"#, 1.0),
        (r#"hsmgate_acme_orders_total{state="processing"}"#, 1.0),
        (r#"hsmgate_acme_orders_total{state="valid"}"#, 1.0),
        ("hsmgate_acme_issuance_seconds_count", 1.0),
        (
            r#"hsmgate_acme_validations_total{challenge="http-01",outcome="valid"}"#,
            2.0,
        ),
        (
            r#"hsmgate_acme_requests_total{route="/acme/order/{id}/finalize",code="200"}"#,
            1.0,
        ),
        (
            r#"hsmgate_acme_requests_total{route="/acme/order/{id}/finalize",code="403"}"#,
            2.0,
        ),
        (r#"hsmgate_acme_problems_total{type="orderNotReady"}"#, 2.0),
        (
            r#"hsmgate_acme_problems_total{type="badRevocationReason"}"#,
            1.0,
        ),
        (r#"hsmgate_acme_problems_total{type="alreadyRevoked"}"#, 1.0),
        (
            r#"hsmgate_acme_gateway_seconds_count{call="sign_certificate"}"#,
            1.0,
        ),
        // good at issuance, revoked twice (the second answer is alreadyRevoked, published again)
        (
            r#"hsmgate_acme_gateway_seconds_count{call="publish_ocsp"}"#,
            3.0,
        ),
        (
            r#"hsmgate_acme_db_seconds_count{op="insert_certificate"}"#,
            1.0,
        ),
    ] {
        assert_eq!(sample(&m, series), Some(want), "{series} in\n{m}");
    }
    assert_eq!(sample(&m, "hsmgate_acme_db_errors_total"), None, "{m}");
    assert_eq!(sample(&m, "hsmgate_acme_gateway_errors_total"), None, "{m}");
}

/// The frontend's `/metrics` text, as `ca-frontend serve` serves it.
fn metrics_text(ca: &Ca) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &ca.registry).expect("metrics");
    text
}

/// The value of the sample `series` (name and labels exactly as written), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

#[tokio::test]
async fn bad_csrs_and_early_finalization_issue_nothing() {
    let ca = ca().await;
    let mut client = Client::new(&ca);
    client.register().await;
    // Before validation.
    let r = client
        .post(
            "/acme/new-order",
            Some(&json!({"identifiers": [{"type": "dns", "value": "early.example.test"}]})),
        )
        .await;
    let early_url = r.location();
    let finalize = path_of(r.json()["finalize"].as_str().expect("finalize"));
    let r = client
        .post(
            &finalize,
            Some(&json!({"csr": b64(&csr(&["early.example.test"]))})),
        )
        .await;
    assert_eq!(
        (r.status, r.problem()),
        (StatusCode::FORBIDDEN, "orderNotReady".into())
    );
    assert_eq!(certificates_issued(&ca, &early_url).await, None);

    let (order_url, order) = ready_order(&client, &["csr.example.test"]).await;
    let finalize = path_of(order["finalize"].as_str().expect("finalize"));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "another name",
            csr(&["csr.example.test", "evil.example.test"]),
        ),
        ("missing name", csr(&["other.example.test"])),
        (
            "RSA 1024",
            openssl_csr(&["-newkey", "rsa:1024"], "csr.example.test"),
        ),
        (
            "Ed25519",
            openssl_csr(&["-newkey", "ed25519"], "csr.example.test"),
        ),
        ("garbage", b"not a CSR".to_vec()),
    ];
    for (what, der) in cases {
        let r = client
            .post(&finalize, Some(&json!({"csr": b64(&der)})))
            .await;
        assert_eq!(
            (r.status, r.problem()),
            (StatusCode::BAD_REQUEST, "badCSR".into()),
            "{what}: {:?}",
            r.json()
        );
    }
    // A csr that is not base64url.
    let r = client.post(&finalize, Some(&json!({"csr": "!!"}))).await;
    assert_eq!(r.problem(), "badCSR");
    assert_eq!(certificates_issued(&ca, &order_url).await, None);
    // The order is still ready: a good CSR is then accepted.
    let r = client
        .post(
            &finalize,
            Some(&json!({"csr": b64(&csr(&["csr.example.test"]))})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    assert!(certificates_issued(&ca, &order_url).await.is_some());
}

#[tokio::test]
async fn forged_replayed_and_misdirected_requests_are_refused() {
    let ca = ca().await;
    let mut client = Client::new(&ca);
    client.register().await;
    let payload = json!({"identifiers": [{"type": "dns", "value": "x.example.test"}]});

    // Replayed: the same body twice.
    let nonce = client.nonce().await;
    let body = client.jws(&format!("{BASE}/acme/new-order"), &nonce, Some(&payload));
    assert_eq!(
        client
            .post_body("/acme/new-order", body.clone())
            .await
            .status,
        StatusCode::CREATED
    );
    let r = client.post_body("/acme/new-order", body).await;
    assert_eq!(
        (r.status, r.problem()),
        (StatusCode::BAD_REQUEST, "badNonce".into())
    );
    // A nonce this server never issued.
    let body = client.jws(
        &format!("{BASE}/acme/new-order"),
        "bm90LWEtbm9uY2U",
        Some(&payload),
    );
    assert_eq!(
        client.post_body("/acme/new-order", body).await.problem(),
        "badNonce"
    );

    // Wrong url: signed for another resource.
    let nonce = client.nonce().await;
    let body = client.jws(&format!("{BASE}/acme/new-account"), &nonce, Some(&payload));
    let r = client.post_body("/acme/new-order", body).await;
    assert_eq!(r.problem(), "unauthorized");

    // Forged: the account's kid, another key's signature.
    let mut forger = Client::new(&ca);
    forger.kid = client.kid.clone();
    let r = forger.post("/acme/new-order", Some(&payload)).await;
    assert_eq!(r.problem(), "malformed");
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("signature")
    );
    // A signature that was tampered with after signing.
    let nonce = client.nonce().await;
    let mut jws: Value = serde_json::from_slice(&client.jws(
        &format!("{BASE}/acme/new-order"),
        &nonce,
        Some(&payload),
    ))
    .expect("json");
    jws["payload"] = json!(b64(
        br#"{"identifiers":[{"type":"dns","value":"evil.example.test"}]}"#
    ));
    let r = client
        .post_body("/acme/new-order", jws.to_string().into_bytes())
        .await;
    assert_eq!(r.problem(), "malformed");

    // Unknown account.
    let mut ghost = Client::new(&ca);
    ghost.kid = Some(format!("{BASE}/acme/acct/no-such-account"));
    assert_eq!(
        ghost
            .post("/acme/new-order", Some(&payload))
            .await
            .problem(),
        "accountDoesNotExist"
    );
    // onlyReturnExisting for a key without an account.
    let stranger = Client::new(&ca);
    let r = stranger
        .post(
            "/acme/new-account",
            Some(&json!({"onlyReturnExisting": true})),
        )
        .await;
    assert_eq!(r.problem(), "accountDoesNotExist");
    // kid where jwk is required, and the other way round.
    assert_eq!(
        client
            .post("/acme/new-account", Some(&json!({})))
            .await
            .problem(),
        "malformed"
    );
    assert_eq!(
        stranger
            .post("/acme/new-order", Some(&payload))
            .await
            .problem(),
        "malformed"
    );

    // Oversized and mistyped bodies.
    let big = vec![b'{'; 100_000];
    let r = client.post_body("/acme/new-order", big).await;
    assert_eq!(
        (r.status, r.problem()),
        (StatusCode::PAYLOAD_TOO_LARGE, "malformed".into())
    );
    let r = client
        .send(
            Request::post("/acme/new-order")
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .expect("req"),
        )
        .await;
    assert_eq!(
        (r.status, r.problem()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "malformed".into())
    );
    for body in [&b""[..], b"null", b"{\"protected\":1}", b"\xff"] {
        assert_eq!(
            client
                .post_body("/acme/new-order", body.to_vec())
                .await
                .problem(),
            "malformed"
        );
    }

    // Bad identifiers.
    for (value, kind) in [
        ("127.0.0.1", "unsupportedIdentifier"),
        ("localhost", "rejectedIdentifier"),
        ("a_b.example.test", "rejectedIdentifier"),
    ] {
        let r = client
            .post(
                "/acme/new-order",
                Some(&json!({"identifiers": [{"type": "dns", "value": value}]})),
            )
            .await;
        assert_eq!(r.problem(), kind, "{value}");
    }
    // Another account's order is not readable.
    let r = client.post("/acme/new-order", Some(&payload)).await;
    let mut other = Client::new(&ca);
    other.register().await;
    assert_eq!(
        other.post(&path_of(&r.location()), None).await.problem(),
        "unauthorized"
    );
    // A method ACME does not use.
    let r = client
        .send(
            Request::put("/acme/new-order")
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn key_rollover_and_deactivation() {
    let ca = ca().await;
    let mut client = Client::new(&ca);
    client.register().await;
    let kid = client.kid.clone().expect("kid");
    let new = Client::new(&ca);
    let url = format!("{BASE}/acme/key-change");
    let inner = new.sign(
        &json!({"alg": "ES256", "jwk": new.jwk, "url": url}),
        Some(&json!({"account": kid, "oldKey": client.jwk})),
    );
    let inner: Value = serde_json::from_slice(&inner).expect("json");
    let r = client.post("/acme/key-change", Some(&inner)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    // The old key no longer signs for the account; the new one does.
    assert_eq!(
        client.post(&path_of(&kid), None).await.problem(),
        "malformed"
    );
    let mut rolled = Client::new(&ca);
    rolled.key = new.key;
    rolled.jwk = new.jwk;
    rolled.kid = Some(kid.clone());
    assert_eq!(
        rolled.post(&path_of(&kid), None).await.status,
        StatusCode::OK
    );
    // Deactivated, it can do nothing more.
    let r = rolled
        .post(&path_of(&kid), Some(&json!({"status": "deactivated"})))
        .await;
    assert_eq!(r.json()["status"], "deactivated");
    let r = rolled
        .post(
            "/acme/new-order",
            Some(&json!({"identifiers": [{"type": "dns", "value": "y.example.test"}]})),
        )
        .await;
    assert_eq!(r.problem(), "unauthorized");
}

#[tokio::test]
async fn renewal_info_follows_incidents() {
    let ca = ca().await;
    let mut client = Client::new(&ca);
    client.register().await;
    let (_, order) = ready_order(&client, &["ari.example.test"]).await;
    let r = client
        .post(
            &path_of(order["finalize"].as_str().expect("finalize")),
            Some(&json!({"csr": b64(&csr(&["ari.example.test"]))})),
        )
        .await;
    let serial = r.json()["certificate"]
        .as_str()
        .expect("cert")
        .rsplit('/')
        .next()
        .expect("serial")
        .to_owned();
    let id =
        ca_frontend::ari::cert_id(&ca.intermediate.key_id, &hex::decode(&serial).expect("hex"));
    let get = |id: String| {
        let client = &client;
        async move {
            client
                .send(
                    Request::get(format!("/acme/renewal-info/{id}"))
                        .body(Body::empty())
                        .expect("req"),
                )
                .await
        }
    };
    let now = ca_frontend::unix_now();
    let r = get(id.clone()).await;
    assert!(r.headers.contains_key("retry-after"));
    let start = r.json()["suggestedWindow"]["start"]
        .as_str()
        .expect("start")
        .to_owned();
    let start = time::OffsetDateTime::parse(&start, &time::format_description::well_known::Rfc3339)
        .expect("rfc3339");
    assert!(
        start.unix_timestamp() > now + 50 * 86_400,
        "a fresh 90-day certificate renews in its last third"
    );
    assert_eq!(
        ca.db
            .mark_renew_now(std::slice::from_ref(&serial))
            .await
            .expect("mark"),
        1
    );
    let end = get(id.clone()).await.json()["suggestedWindow"]["end"]
        .as_str()
        .expect("end")
        .to_owned();
    let end = time::OffsetDateTime::parse(&end, &time::format_description::well_known::Rfc3339)
        .expect("rfc3339");
    assert!(
        end.unix_timestamp() < now,
        "named in an incident: renew now"
    );
    // Unknown and malformed CertIDs.
    assert_eq!(
        get(format!("{}.AQID", b64(&ca.intermediate.key_id)))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get("not-a-cert-id".into()).await.problem(), "malformed");
}

#[tokio::test]
async fn rate_limits_answer_rate_limited_with_retry_after() {
    let ca = ca_with(|c| {
        c.limits = ca_frontend::config::Limits {
            orders_per_account_per_hour: 2,
            certificates_per_domain_per_week: 1,
            accounts_per_hour: 100,
        }
    })
    .await;
    let mut client = Client::new(&ca);
    client.register().await;
    // One certificate for limit.example.test uses the week's allowance of its registered domain.
    let (_, order) = ready_order(&client, &["a.limit.example.test"]).await;
    let finalize = path_of(order["finalize"].as_str().expect("finalize"));
    let r = client
        .post(
            &finalize,
            Some(&json!({"csr": b64(&csr(&["a.limit.example.test"]))})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    let (order_url, order) = ready_order(&client, &["b.limit.example.test"]).await;
    let finalize = path_of(order["finalize"].as_str().expect("finalize"));
    let r = client
        .post(
            &finalize,
            Some(&json!({"csr": b64(&csr(&["b.limit.example.test"]))})),
        )
        .await;
    assert_eq!(
        (r.status, r.problem()),
        (StatusCode::TOO_MANY_REQUESTS, "rateLimited".into())
    );
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("example.test")
    );
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(certificates_issued(&ca, &order_url).await, None);
    // Two orders this hour were the account's allowance.
    let r = client
        .post(
            "/acme/new-order",
            Some(&json!({"identifiers": [{"type": "dns", "value": "c.example.test"}]})),
        )
        .await;
    assert_eq!(
        (r.status, r.problem()),
        (StatusCode::TOO_MANY_REQUESTS, "rateLimited".into())
    );
    assert!(r.headers.contains_key("retry-after"));
    let m = metrics_text(&ca);
    for (series, want) in [
        (
            r#"hsmgate_acme_rate_limited_total{limit="certificates_per_domain_per_week"}"#,
            1.0,
        ),
        (
            r#"hsmgate_acme_rate_limited_total{limit="orders_per_account_per_hour"}"#,
            1.0,
        ),
        (r#"hsmgate_acme_problems_total{type="rateLimited"}"#, 2.0),
        (
            r#"hsmgate_acme_requests_total{route="/acme/new-order",code="429"}"#,
            1.0,
        ),
    ] {
        assert_eq!(sample(&m, series), Some(want), "{series} in\n{m}");
    }
}

#[tokio::test]
async fn the_certificate_key_may_revoke_and_replacements_skip_the_domain_limit() {
    let ca = ca_with(|c| {
        c.limits = ca_frontend::config::Limits {
            orders_per_account_per_hour: 50,
            certificates_per_domain_per_week: 1,
            accounts_per_hour: 100,
        }
    })
    .await;
    let mut client = Client::new(&ca);
    client.register().await;
    let (_, order) = ready_order(&client, &["key.revoke.test"]).await;
    let (csr_der, pkcs8) = csr_with_key(&["key.revoke.test"]);
    let r = client
        .post(
            &path_of(order["finalize"].as_str().expect("finalize")),
            Some(&json!({"csr": b64(&csr_der)})),
        )
        .await;
    let cert_url = r.json()["certificate"]
        .as_str()
        .expect("certificate")
        .to_owned();
    let serial = cert_url.rsplit('/').next().expect("serial").to_owned();
    let pem = client.post(&path_of(&cert_url), None).await.body;
    let der = ca_frontend::issuance::first_pem_der(&String::from_utf8_lossy(&pem)).expect("pem");

    // A replacement order (ARI `replaces`) gets its certificate although the domain's weekly
    // allowance is used up; the same order without `replaces` would not.
    let cert_id =
        ca_frontend::ari::cert_id(&ca.intermediate.key_id, &hex::decode(&serial).expect("hex"));
    let (_, order) = ready_order(&client, &["key.revoke.test"]).await;
    let limited = client
        .post(
            &path_of(order["finalize"].as_str().expect("finalize")),
            Some(&json!({"csr": b64(&csr(&["key.revoke.test"]))})),
        )
        .await;
    assert_eq!(limited.problem(), "rateLimited");
    let (replacement_url, order) =
        ready_order_with(&client, &["key.revoke.test"], json!({"replaces": cert_id})).await;
    assert_eq!(order["replaces"], json!(cert_id));
    let r = client
        .post(
            &path_of(order["finalize"].as_str().expect("finalize")),
            Some(&json!({"csr": b64(&csr(&["key.revoke.test"]))})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    assert!(certificates_issued(&ca, &replacement_url).await.is_some());
    // Replaced once by a finalized order: a second replacement is refused (RFC 9773 §5), as is
    // a `replaces` for an order that shares no name with the certificate.
    let again =
        json!({"identifiers": [{"type": "dns", "value": "key.revoke.test"}], "replaces": cert_id});
    let r = client.post("/acme/new-order", Some(&again)).await;
    assert_eq!(
        (r.status, r.problem()),
        (StatusCode::CONFLICT, "alreadyReplaced".into())
    );
    let unrelated = json!({"identifiers": [{"type": "dns", "value": "other.revoke.test"}], "replaces": cert_id});
    let r = client.post("/acme/new-order", Some(&unrelated)).await;
    assert_eq!(r.problem(), "malformed");
    // Another account may not claim to replace it.
    let mut other = Client::new(&ca);
    other.register().await;
    let r = other
        .post(
            "/acme/new-order",
            Some(&json!({"identifiers": [{"type": "dns", "value": "key.revoke.test"}], "replaces": cert_id})),
        )
        .await;
    assert_eq!(r.problem(), "unauthorized");

    // Signed by the certificate's own key (jwk), whoever holds it revokes it — as keyCompromise.
    let rng = ring::rand::SystemRandom::new();
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng).expect("key");
    let p = key.public_key().as_ref();
    let mut holder = Client::new(&ca);
    holder.jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..])});
    holder.key = key;
    let r = holder
        .post(
            "/acme/revoke-cert",
            Some(&json!({"certificate": b64(&der), "reason": 4})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    let record = ca
        .db
        .certificate(&serial)
        .await
        .expect("db")
        .expect("record");
    assert_eq!(
        record.revoked.map(|r| r.reason),
        Some(1),
        "revoked by its key: keyCompromise"
    );
    // A key that is neither the account's nor the certificate's may not.
    let stranger = Client::new(&ca);
    let r = stranger
        .post(
            "/acme/revoke-cert",
            Some(&json!({"certificate": b64(&der)})),
        )
        .await;
    assert_eq!(r.problem(), "unauthorized");
}

/// The OCSP worklist's status for one of `ca`'s serials (hex).
async fn ocsp_status(ca: &Ca, serial: &str) -> Option<ocsp::CertStatus> {
    ca.presigner
        .store()
        .certificate(
            &ocsp::IssuerName("test".into()),
            &ocsp::Serial::from_be_bytes(&hex::decode(serial).expect("hex")),
        )
        .await
        .expect("ocsp worklist")
}

#[tokio::test]
async fn a_crash_between_recording_and_publishing_is_repaired() {
    use ca_frontend::model::{CertificateRecord, OrderStatus, Revocation};
    use ca_frontend::republish::{GRACE, mark, republish_pending};
    use ocsp::CertStatus;
    let ca = ca().await;
    let mut client = Client::new(&ca);
    client.register().await;
    let (order_url, order) = ready_order(&client, &["crash.example.test"]).await;
    let r = client
        .post(
            &path_of(order["finalize"].as_str().expect("finalize")),
            Some(&json!({"csr": b64(&csr(&["crash.example.test"]))})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    let serial = certificates_issued(&ca, &order_url)
        .await
        .expect("recorded");
    assert!(
        ca.db
            .ocsp_pending(i64::MAX, 10)
            .await
            .expect("pending")
            .is_empty(),
        "a finished issuance leaves nothing unpublished"
    );

    // A revocation recorded, then the process dies before publishing: OCSP still says good.
    let revocation = Revocation {
        at: ca_frontend::unix_now(),
        reason: 1,
    };
    ca.db
        .revoke(&serial, revocation, mark())
        .await
        .expect("revoke")
        .expect("known serial");
    assert_eq!(ocsp_status(&ca, &serial).await, Some(CertStatus::Good));
    // A mark younger than the grace may be a request still in flight: left alone.
    assert_eq!(republish_pending(&ca, GRACE).await.expect("republish"), 0);
    // Once older (no grace here), the repair publishes the revocation, once.
    assert_eq!(
        republish_pending(&ca, Duration::ZERO)
            .await
            .expect("republish"),
        1
    );
    assert_eq!(
        ocsp_status(&ca, &serial).await,
        Some(CertStatus::Revoked {
            at: revocation.at,
            reason: Some(1)
        })
    );
    assert_eq!(
        republish_pending(&ca, Duration::ZERO)
            .await
            .expect("republish"),
        0
    );

    // An issuance that died after recording its certificate: the order stuck in processing,
    // OCSP not knowing the serial. The repair publishes `good` and completes the order.
    let (order_url, _) = ready_order(&client, &["crash2.example.test"]).await;
    let id = order_url.rsplit('/').next().expect("id");
    let mut stuck = ca.db.order(id).await.expect("db").expect("order");
    let stored_status = stuck.status;
    stuck.status = OrderStatus::Processing;
    assert!(
        ca.db
            .update_order(&stuck, Some(stored_status))
            .await
            .expect("db")
    );
    let serial = format!("42{}", hex::encode(rand_bytes()));
    let now = ca_frontend::unix_now();
    let record = CertificateRecord {
        serial: serial.clone(),
        account_id: stuck.account_id.clone(),
        order_id: stuck.id.clone(),
        issued: now,
        not_before: now,
        not_after: now + 86_400,
        names: vec!["crash2.example.test".into()],
        chain_pem: String::new(),
        spki_sha256: String::new(),
        revoked: None,
        renew_now: false,
        replaced_by: None,
    };
    ca.db
        .insert_certificate(&record, &[], mark())
        .await
        .expect("insert");
    assert_eq!(ocsp_status(&ca, &serial).await, None);
    assert_eq!(
        republish_pending(&ca, Duration::ZERO)
            .await
            .expect("republish"),
        1
    );
    assert_eq!(ocsp_status(&ca, &serial).await, Some(CertStatus::Good));
    let order = ca.db.order(id).await.expect("db").expect("order");
    assert_eq!(
        (order.status, order.certificate),
        (OrderStatus::Valid, Some(serial))
    );
}

fn rand_bytes() -> [u8; 15] {
    let mut bytes = [0u8; 15];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("random");
    bytes
}

/// The ARI cert-id of the certificate an order was issued.
async fn cert_id_of(ca: &Ca, order_url: &str) -> (String, String) {
    let serial = certificates_issued(ca, order_url).await.expect("issued");
    let id =
        ca_frontend::ari::cert_id(&ca.intermediate.key_id, &hex::decode(&serial).expect("hex"));
    (serial, id)
}

/// Finalizes a ready order with a fresh CSR for `names`.
async fn finalize(client: &Client, order: &Value, names: &[&str]) -> Reply {
    client
        .post(
            &path_of(order["finalize"].as_str().expect("finalize")),
            Some(&json!({"csr": b64(&csr(names))})),
        )
        .await
}

/// `openssl verify` of a downloaded chain against the ceremony's root; returns the file it
/// was written to.
fn assert_chain_verifies(pem: &[u8]) -> std::path::PathBuf {
    let chain = infra().dir.join(format!(
        "chain-{}.pem",
        ca_frontend::random_id().expect("id")
    ));
    std::fs::write(&chain, pem).expect("write");
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(infra().dir.join("root.pem"))
        .arg("-untrusted")
        .arg(&chain)
        .arg(&chain)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    chain
}

#[tokio::test]
async fn a_replacement_is_exempt_only_for_the_names_it_renews() {
    let ca = ca_with(|c| {
        c.limits = ca_frontend::config::Limits {
            orders_per_account_per_hour: 50,
            certificates_per_domain_per_week: 1,
            accounts_per_hour: 100,
        }
    })
    .await;
    let mut client = Client::new(&ca);
    client.register().await;
    // One certificate uses renew.test's weekly allowance.
    let (order_url, order) = ready_order(&client, &["a.renew.test"]).await;
    let r = finalize(&client, &order, &["a.renew.test"]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    let (serial, cert_id) = cert_id_of(&ca, &order_url).await;
    // Five orders, each claiming to replace it while adding a name under the same domain (all
    // made before any is finalized, so none is refused as already replaced): each new name is a
    // new certificate for renew.test, which is at its limit.
    let mut grown = Vec::new();
    for i in 0..5 {
        let new_name = format!("new{i}.renew.test");
        let (url, order) = ready_order_with(
            &client,
            &["a.renew.test", &new_name],
            json!({"replaces": cert_id}),
        )
        .await;
        grown.push((url, order, new_name));
    }
    for (url, order, new_name) in &grown {
        let r = finalize(&client, order, &["a.renew.test", new_name]).await;
        assert_eq!(
            (r.status, r.problem()),
            (StatusCode::TOO_MANY_REQUESTS, "rateLimited".into()),
            "{:?}",
            r.json()
        );
        assert!(r.headers.contains_key("retry-after"));
        assert_eq!(certificates_issued(&ca, url).await, None);
    }
    assert_eq!(
        ca.db
            .certificate(&serial)
            .await
            .expect("db")
            .and_then(|c| c.replaced_by),
        None,
        "a refused replacement replaced nothing"
    );
    // The renewal of the same set of names is exempt, and is recorded as the replacement.
    let (url, order) =
        ready_order_with(&client, &["a.renew.test"], json!({"replaces": cert_id})).await;
    let r = finalize(&client, &order, &["a.renew.test"]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    assert_eq!(r.json()["status"], "valid");
    assert_eq!(
        ca.db
            .certificate(&serial)
            .await
            .expect("db")
            .and_then(|c| c.replaced_by),
        url.rsplit('/').next().map(str::to_owned)
    );
}

#[tokio::test]
async fn two_finalizations_replacing_one_certificate_issue_one() {
    let ca = ca().await;
    let mut client = Client::new(&ca);
    client.register().await;
    let (order_url, order) = ready_order(&client, &["twice.replace.test"]).await;
    let r = finalize(&client, &order, &["twice.replace.test"]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    let (serial, cert_id) = cert_id_of(&ca, &order_url).await;
    // Two replacement orders, both accepted (neither finalized yet), finalized at once.
    let (url_a, order_a) = ready_order_with(
        &client,
        &["twice.replace.test"],
        json!({"replaces": cert_id}),
    )
    .await;
    let (url_b, order_b) = ready_order_with(
        &client,
        &["twice.replace.test"],
        json!({"replaces": cert_id}),
    )
    .await;
    let (a, b) = tokio::join!(
        finalize(&client, &order_a, &["twice.replace.test"]),
        finalize(&client, &order_b, &["twice.replace.test"])
    );
    let ((won, won_url), (lost, lost_url)) = if a.status == StatusCode::OK {
        ((a, url_a), (b, url_b))
    } else {
        ((b, url_b), (a, url_a))
    };
    assert_eq!(won.status, StatusCode::OK, "{:?}", won.json());
    assert_eq!(won.json()["status"], "valid");
    assert_eq!(
        (lost.status, lost.problem()),
        (StatusCode::CONFLICT, "alreadyReplaced".into()),
        "{:?}",
        lost.json()
    );
    assert!(certificates_issued(&ca, &won_url).await.is_some());
    assert_eq!(
        certificates_issued(&ca, &lost_url).await,
        None,
        "nothing issued to the loser"
    );
    assert_eq!(
        ca.db
            .certificate(&serial)
            .await
            .expect("db")
            .and_then(|c| c.replaced_by),
        won_url.rsplit('/').next().map(str::to_owned)
    );
}

#[tokio::test]
async fn concurrent_finalizations_do_not_overshoot_the_domain_limit() {
    let ca = ca_with(|c| {
        c.limits = ca_frontend::config::Limits {
            orders_per_account_per_hour: 50,
            certificates_per_domain_per_week: 3,
            accounts_per_hour: 100,
        }
    })
    .await;
    let mut client = Client::new(&ca);
    client.register().await;
    const N: usize = 8;
    let mut orders = Vec::new();
    for i in 0..N {
        let name = format!("n{i}.burst.test");
        let (url, order) = ready_order(&client, &[&name]).await;
        orders.push((url, order, name));
    }
    let names: Vec<[&str; 1]> = orders.iter().map(|(_, _, n)| [n.as_str()]).collect();
    let replies = futures_util::future::join_all(
        orders
            .iter()
            .zip(&names)
            .map(|((_, order, _), name)| finalize(&client, order, name)),
    )
    .await;
    let valid = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let limited = replies
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS && r.problem() == "rateLimited")
        .count();
    assert_eq!((valid, limited), (3, N - 3), "{replies:?}");
    let mut issued = 0;
    for (url, _, _) in &orders {
        issued += usize::from(certificates_issued(&ca, url).await.is_some());
    }
    assert_eq!(issued, 3, "exactly the limit is issued");
}

#[tokio::test]
async fn a_recorded_certificate_whose_publishing_failed_ends_valid() {
    use ca_frontend::republish::republish_pending;
    // This CA's OCSP store is its own, so locking it disturbs no other test.
    let id = ca_frontend::random_id().expect("id");
    let dir = &infra().dir;
    let mut own = ocsp::config::Config::load(dir.join("ocsp.toml")).expect("ocsp.toml");
    let store = dir.join(format!("ocsp-{id}.sqlite"));
    own.store = ocsp::config::Store::Sqlite {
        path: store.clone(),
    };
    hsmgate_stack::configs::write(&own, &dir.join(format!("ocsp-{id}.toml"))).expect("write");
    let ca = ca_with_ocsp(|_| {}, &format!("ocsp-{id}.toml")).await;
    let mut client = Client::new(&ca);
    client.register().await;
    let (order_url, order) = ready_order(&client, &["orphan.example.test"]).await;
    // Another writer holds the OCSP store: the certificate is signed and recorded, then storing
    // its `good` response fails (after the store's busy timeout).
    let lock = rusqlite::Connection::open(&store).expect("open the OCSP store");
    lock.busy_timeout(Duration::from_secs(10)).expect("timeout");
    lock.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let r = finalize(&client, &order, &["orphan.example.test"]).await;
    lock.execute_batch("ROLLBACK").expect("unlock");
    drop(lock);
    // Not invalid, not an error: the order is processing and the client is told to poll.
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    assert_eq!(r.json()["status"], "processing", "{:?}", r.json());
    assert!(r.headers.contains_key("retry-after"));
    let order_id = order_url.rsplit('/').next().expect("id");
    let pending = ca.db.ocsp_pending(i64::MAX, 10).await.expect("pending");
    let serial = pending
        .iter()
        .find(|(c, _)| c.order_id == order_id)
        .map(|(c, _)| c.serial.clone())
        .expect("the certificate is recorded, its OCSP response not yet published");
    assert_eq!(ocsp_status(&ca, &serial).await, None);
    // A repair pass while the store is still held fails, and says what it left.
    let lock = rusqlite::Connection::open(&store).expect("open the OCSP store");
    lock.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    assert!(republish_pending(&ca, Duration::ZERO).await.is_err());
    lock.execute_batch("ROLLBACK").expect("unlock");
    drop(lock);
    let m = metrics_text(&ca);
    for (series, want) in [
        (
            r#"hsmgate_acme_gateway_errors_total{call="publish_ocsp"}"#,
            Some(2.0),
        ),
        (
            r#"hsmgate_acme_orders_total{state="processing"}"#,
            Some(1.0),
        ),
        (r#"hsmgate_acme_orders_total{state="valid"}"#, None),
        ("hsmgate_acme_republish_pending", Some(1.0)),
        ("hsmgate_acme_republish_last_success_seconds", Some(0.0)),
    ] {
        assert_eq!(sample(&m, series), want, "{series} in\n{m}");
    }
    // The repair pass publishes `good` and completes the order.
    assert_eq!(
        republish_pending(&ca, Duration::ZERO)
            .await
            .expect("republish"),
        1
    );
    assert_eq!(
        ocsp_status(&ca, &serial).await,
        Some(ocsp::CertStatus::Good)
    );
    let m = metrics_text(&ca);
    for (series, want) in [
        ("hsmgate_acme_republished_total", 1.0),
        (r#"hsmgate_acme_orders_total{state="valid"}"#, 1.0),
        ("hsmgate_acme_republish_pending", 0.0),
    ] {
        assert_eq!(sample(&m, series), Some(want), "{series} in\n{m}");
    }
    assert!(
        sample(&m, "hsmgate_acme_republish_last_success_seconds")
            .is_some_and(|t| t >= ca_frontend::unix_now() as f64 - 60.0),
        "{m}"
    );
    let polled = client.post(&path_of(&order_url), None).await.json();
    assert_eq!(polled["status"], "valid", "{polled:?}");
    let cert_url = polled["certificate"].as_str().expect("certificate URL");
    assert!(cert_url.ends_with(&serial));
    let r = client.post(&path_of(cert_url), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_chain_verifies(&r.body);
}

/// Answers http-01 for names pointed at 127.0.0.2, each answer `delay` late: a validation
/// that is still running while the test acts.
fn slow_http01(delay: Duration) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(("127.0.0.2", infra().http_port))
        .expect("bind 127.0.0.2 at the http-01 port");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let token = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.strip_prefix("/.well-known/acme-challenge/"))
                    .unwrap_or_default()
                    .to_owned();
                std::thread::sleep(delay);
                let answer = infra().tokens.lock().expect("lock").get(&token).cloned();
                let reply = match answer {
                    Some(a) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{a}",
                        a.len()
                    ),
                    None => {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .into()
                    }
                };
                let _ = stream.write_all(reply.as_bytes());
            });
        }
    });
}

/// Points `host`'s A record at `address` in pebble-challtestsrv.
fn point_at(host: &str, address: &str) {
    use std::io::{Read, Write};
    let body = json!({"host": host, "addresses": [address]}).to_string();
    let mut stream =
        std::net::TcpStream::connect(infra().dns_management).expect("challtestsrv management");
    write!(
        stream,
        "POST /add-a HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

#[tokio::test]
async fn an_authorization_deactivated_during_validation_stays_deactivated() {
    let ca = ca().await;
    let mut client = Client::new(&ca);
    client.register().await;
    slow_http01(Duration::from_millis(1500));
    let name = "slow.deactivate.test";
    point_at(name, "127.0.0.2");
    let r = client
        .post(
            "/acme/new-order",
            Some(&json!({"identifiers": [{"type": "dns", "value": name}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
    let order_url = r.location();
    let order = r.json();
    let authz_url = path_of(order["authorizations"][0].as_str().expect("authz"));
    let r = answer_http01(&client, &authz_url).await;
    assert_eq!(r.json()["status"], "processing", "{:?}", r.json());
    // While the validation waits for its answer, the subscriber deactivates.
    let r = client
        .post(&authz_url, Some(&json!({"status": "deactivated"})))
        .await;
    assert_eq!(r.json()["status"], "deactivated", "{:?}", r.json());
    // The validation then succeeds, and must not revive the authorization.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let authz = client.post(&authz_url, None).await.json();
    assert_eq!(authz["status"], "deactivated", "{authz:?}");
    let order = client.post(&path_of(&order_url), None).await.json();
    assert_eq!(order["status"], "invalid", "{order:?}");
    let r = finalize(&client, &order, &[name]).await;
    assert_eq!(r.problem(), "orderNotReady");
    assert_eq!(certificates_issued(&ca, &order_url).await, None);
}

#[tokio::test]
async fn a_finalization_stopped_before_recording_gives_back_what_it_reserved() {
    use ca_frontend::db::{Begun, Issuance};
    use ca_frontend::model::OrderStatus;
    use ca_frontend::republish::{GRACE, abandon_stalled};
    let ca = ca_with(|c| {
        c.limits = ca_frontend::config::Limits {
            orders_per_account_per_hour: 50,
            certificates_per_domain_per_week: 3,
            accounts_per_hour: 100,
        }
    })
    .await;
    let mut client = Client::new(&ca);
    client.register().await;
    let (order_url, order) = ready_order(&client, &["a.stall.test"]).await;
    let r = finalize(&client, &order, &["a.stall.test"]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    let (serial, cert_id) = cert_id_of(&ca, &order_url).await;
    // A replacement's finalization begins (domains reserved, the certificate marked replaced),
    // then the process dies while signing: nothing is recorded, the order stays processing.
    let (url, _) = ready_order_with(&client, &["a.stall.test"], json!({"replaces": cert_id})).await;
    let id = url.rsplit('/').next().expect("id");
    let stored = ca.db.order(id).await.expect("db").expect("order");
    let planned = format!("43{}", hex::encode(rand_bytes()));
    let mut processing = stored.clone();
    processing.status = OrderStatus::Processing;
    processing.certificate = Some(planned.clone());
    let now = ca_frontend::unix_now();
    let issuance = Issuance {
        order: processing,
        expected: stored.status,
        serial: planned,
        issued: now - 5,
        domains: vec!["stall.test".into()],
        counted: vec![],
        since: now - ca_frontend::ratelimit::WEEK,
        limit: 2,
        replaces: Some(serial.clone()),
    };
    assert_eq!(
        ca.db.begin_issuance(&issuance).await.expect("begin"),
        Begun::Started
    );
    assert_eq!(
        ca.db
            .certificates_since("stall.test", 0, 10)
            .await
            .expect("count"),
        2
    );
    // Younger than the grace: maybe still signing, left alone.
    assert_eq!(abandon_stalled(&ca, GRACE).await.expect("repair"), 0);
    assert_eq!(
        abandon_stalled(&ca, Duration::ZERO).await.expect("repair"),
        1
    );
    let polled = client.post(&path_of(&url), None).await.json();
    assert_eq!(polled["status"], "invalid", "{polled:?}");
    assert!(polled.get("certificate").is_none());
    assert_eq!(
        ca.db
            .certificates_since("stall.test", 0, 10)
            .await
            .expect("count"),
        1,
        "the reservation is given back"
    );
    assert_eq!(
        ca.db
            .certificate(&serial)
            .await
            .expect("db")
            .and_then(|c| c.replaced_by),
        None
    );
    // So a new replacement goes through, and (the renewal counting, the lost reservation not)
    // a new certificate still fits the limit of three.
    let (_, order) =
        ready_order_with(&client, &["a.stall.test"], json!({"replaces": cert_id})).await;
    let r = finalize(&client, &order, &["a.stall.test"]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    let (_, order) = ready_order(&client, &["b.stall.test"]).await;
    let r = finalize(&client, &order, &["b.stall.test"]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    assert_eq!(
        abandon_stalled(&ca, Duration::ZERO).await.expect("repair"),
        0
    );
}
