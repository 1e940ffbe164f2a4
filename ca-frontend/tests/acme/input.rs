//! Hostile input through the real ACME server (the same gateway, challenge DNS and http-01
//! server as the rest of `tests/acme.rs`): internal and look-alike names, `crit` headers,
//! private and oversized account keys, contacts, paths that are not UTF-8, CAA records that
//! bind issuance to an account or to validation methods (RFC 8657), and the statuses that
//! clients depend on (Boulder's and Pebble's).

use super::*;

/// Issue 12 item 4's names, each issued for (or accepted at newOrder) before the policy.
const ISSUE_12_NAMES: [&str; 8] = [
    "printer.local",
    "db.internal",
    "abc.home.arpa",
    "127.1",
    "0x7f.1",
    "ab--c.example.com",
    "xn--a.example.com",
    "foo.onion",
];

async fn orders_of(client: &Client) -> Value {
    let kid = client.kid.clone().expect("registered");
    client
        .post(&format!("{}/orders", path_of(&kid)), None)
        .await
        .json()["orders"]
        .clone()
}

#[tokio::test]
async fn internal_and_look_alike_names_are_refused_and_nothing_is_made() {
    let ca = ca().await;
    let mut client = Client::new(&ca);
    client.register().await;
    let more = [
        "*.com",
        "*.co.uk",
        "a.*.example.test",
        "example.com",
        "www.example.org",
        "router.lan",
        "x.alt",
        "1.0.0.127.in-addr.arpa",
        "a.localhost",
        "0177.0.0.1",
    ];
    for name in ISSUE_12_NAMES.iter().chain(&more) {
        let r = client
            .post(
                "/acme/new-order",
                Some(&json!({"identifiers": [{"type": "dns", "value": name}]})),
            )
            .await;
        assert_eq!(
            (r.status, r.problem()),
            (StatusCode::BAD_REQUEST, "rejectedIdentifier".into()),
            "{name}: {:?}",
            r.json()
        );
        let detail = r.json()["detail"].as_str().unwrap_or_default().to_owned();
        assert!(detail.contains(name), "the detail names `{name}`: {detail}");
    }
    // One bad name refuses the whole order.
    let r = client
        .post(
            "/acme/new-order",
            Some(&json!({"identifiers": [
                {"type": "dns", "value": "fine.example.test"},
                {"type": "dns", "value": "printer.local"},
            ]})),
        )
        .await;
    assert_eq!(r.problem(), "rejectedIdentifier");
    assert_eq!(orders_of(&client).await, json!([]), "no order was made");
    // The configured .test still works.
    let r = client
        .post(
            "/acme/new-order",
            Some(&json!({"identifiers": [{"type": "dns", "value": "fine.example.test"}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
}

#[tokio::test]
async fn finalize_applies_the_policy_to_orders_made_before_it() {
    let ca = ca().await;
    let mut client = Client::new(&ca);
    client.register().await;
    let name = "legacy.example.test";
    let (order_url, order) = ready_order(&client, &[name]).await;
    // The same database, served under a policy that no longer allows .test.
    let mut config = ca.config.clone();
    config.ca.allowed_special_tlds.clear();
    let strict = Ca::build(config).await.expect("CA");
    client.app = router(strict.clone());
    let r = client
        .post(
            &path_of(order["finalize"].as_str().expect("finalize")),
            Some(&json!({"csr": b64(&csr(&[name]))})),
        )
        .await;
    assert_eq!(
        (r.status, r.problem()),
        (StatusCode::BAD_REQUEST, "rejectedIdentifier".into()),
        "{:?}",
        r.json()
    );
    assert!(certificates_issued(&strict, &order_url).await.is_none());
}

#[tokio::test]
async fn crit_headers_are_refused() {
    let ca = ca().await;
    let mut client = Client::new(&ca);
    client.register().await;
    let payload = json!({"identifiers": [{"type": "dns", "value": "crit.example.test"}]});
    for crit in [json!(["b64"]), json!("anything"), json!([])] {
        let nonce = client.nonce().await;
        let header = json!({
            "alg": "ES256", "nonce": nonce, "url": format!("{BASE}/acme/new-order"),
            "kid": client.kid, "crit": crit, "b64": false,
        });
        let r = client
            .post_body("/acme/new-order", client.sign(&header, Some(&payload)))
            .await;
        assert_eq!(
            (r.status, r.problem()),
            (StatusCode::BAD_REQUEST, "malformed".into()),
            "{crit}"
        );
        assert!(
            r.json()["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("crit")
        );
    }
    assert_eq!(orders_of(&client).await, json!([]));
}

#[tokio::test]
async fn account_keys_are_public_bounded_and_stored_reduced() {
    let ca = ca().await;
    let client = Client::new(&ca);
    let new_account = |jwk: Value| {
        let client = &client;
        async move {
            let nonce = client.nonce().await;
            let header = json!({"alg": "ES256", "nonce": nonce, "url": format!("{BASE}/acme/new-account"), "jwk": jwk});
            let body = client.sign(&header, Some(&json!({"termsOfServiceAgreed": true})));
            client.post_body("/acme/new-account", body).await
        }
    };
    for member in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
        let mut private = client.jwk.clone();
        private[member] = json!(b64(&[7u8; 32]));
        let r = new_account(private).await;
        assert_eq!(
            (r.status, r.problem()),
            (StatusCode::BAD_REQUEST, "badPublicKey".into()),
            "{member}"
        );
    }
    // Junk over the JWK cap (the test server's body limit is 8 KiB; production's 64 KiB
    // would let 30 KB through to this check).
    let mut junk = client.jwk.clone();
    junk["junk"] = json!("j".repeat(5000));
    let r = new_account(junk).await;
    assert_eq!(r.problem(), "badPublicKey");
    // Small extra members are ignored (RFC 7517 §4) and neither stored nor echoed.
    let mut extra = client.jwk.clone();
    extra["kid"] = json!("my-key");
    extra["x-note"] = json!("n".repeat(500));
    let r = new_account(extra).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
    assert_eq!(r.json()["key"], client.jwk);
    let id = r.location().rsplit('/').next().expect("id").to_owned();
    let stored = ca.db.account(&id).await.expect("db").expect("account");
    assert_eq!(
        stored.jwk, client.jwk,
        "only the RFC 7638 members are stored"
    );
}

#[tokio::test]
async fn contacts_are_bounded_and_checked() {
    let ca = ca().await;
    let mut client = Client::new(&ca);
    let many: Vec<String> = (0..11)
        .map(|i| format!("mailto:a{i}@example.test"))
        .collect();
    for (contact, kind) in [
        (
            json!([format!("mailto:{}@example.test", "a".repeat(5000))]),
            "invalidContact",
        ),
        (json!(["mailto:a@printer.local"]), "invalidContact"),
        (json!(["mailto:a@example.com"]), "invalidContact"),
        (
            json!(["mailto:a@example.test?subject=hi"]),
            "invalidContact",
        ),
        (
            json!(["mailto:a@example.test,b@example.test"]),
            "invalidContact",
        ),
        (json!(["tel:+15551234567"]), "unsupportedContact"),
        (json!(many), "malformed"),
    ] {
        let r = client
            .post(
                "/acme/new-account",
                Some(&json!({"termsOfServiceAgreed": true, "contact": contact})),
            )
            .await;
        assert_eq!(
            (r.status, r.problem()),
            (StatusCode::BAD_REQUEST, kind.into()),
            "{contact}"
        );
        assert!(r.body.len() < 1024, "the problem quotes only the start");
    }
    let r = client
        .post(
            "/acme/new-account",
            Some(&json!({"termsOfServiceAgreed": true, "contact": ["mailto:ops@example.test"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
    client.kid = Some(r.location());
    let account = path_of(&r.location());
    let r = client
        .post(
            &account,
            Some(&json!({"contact": ["mailto:x@db.internal"]})),
        )
        .await;
    assert_eq!(r.problem(), "invalidContact");
    let r = client.post(&account, None).await;
    assert_eq!(r.json()["contact"], json!(["mailto:ops@example.test"]));
}

#[tokio::test]
async fn paths_that_are_not_utf8_get_problem_documents() {
    let ca = ca().await;
    let mut client = Client::new(&ca);
    client.register().await;
    let r = client
        .send(
            Request::get("/acme/renewal-info/%FF%FE.AQID")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(
        (r.status, r.problem()),
        (StatusCode::BAD_REQUEST, "malformed".into()),
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    let r = client.post("/acme/order/%C3%28", None).await;
    assert_eq!(
        (r.status, r.problem()),
        (StatusCode::BAD_REQUEST, "malformed".into())
    );
}

/// POSTs `body` to pebble-challtestsrv's management API (`/add-caa`, `/clear-caa`).
fn challtestsrv(path: &str, body: &Value) {
    use std::io::{Read, Write};
    let body = body.to_string();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", infra().mgmt_port))
        .expect("challtestsrv management");
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

fn set_caa(host: &str, value: &str) {
    challtestsrv("/clear-caa", &json!({"host": format!("{host}.")}));
    challtestsrv(
        "/add-caa",
        &json!({"host": format!("{host}."), "policies": [{"tag": "issue", "value": value}]}),
    );
}

#[tokio::test]
async fn caa_accounturi_and_validationmethods_are_honoured() {
    let ca = ca().await;
    let mut client = Client::new(&ca);
    client.register().await;
    let kid = client.kid.clone().expect("kid");
    let name = format!("caa-{}.example.test", hex::encode(&rand_bytes()[..6]));
    let (order_url, order) = ready_order(&client, &[&name]).await;
    let finalize = path_of(order["finalize"].as_str().expect("finalize"));
    let payload = json!({"csr": b64(&csr(&[&name]))});
    for (value, says) in [
        (
            "hsmgate.test; accounturi=http://acme.test/acme/acct/someone-else".to_owned(),
            "someone-else",
        ),
        (
            "other-ca.example; accounturi=x".to_owned(),
            "do not name this CA",
        ),
        (
            format!("hsmgate.test; accounturi={kid}; validationmethods=dns-01"),
            "http-01",
        ),
        (
            "hsmgate.test; validationmethods=tls-alpn-01".to_owned(),
            "http-01",
        ),
    ] {
        set_caa(&name, &value);
        let r = client.post(&finalize, Some(&payload)).await;
        assert_eq!(
            (r.status, r.problem()),
            (StatusCode::FORBIDDEN, "caa".into()),
            "{value}: {:?}",
            r.json()
        );
        let detail = r.json()["detail"].as_str().unwrap_or_default().to_owned();
        assert!(detail.contains(says), "{value}: {detail}");
        assert!(
            certificates_issued(&ca, &order_url).await.is_none(),
            "{value}"
        );
    }
    // This account, and the method it used: issued.
    set_caa(
        &name,
        &format!("hsmgate.test; accounturi={kid}; validationmethods=dns-01,http-01"),
    );
    let r = client.post(&finalize, Some(&payload)).await;
    challtestsrv("/clear-caa", &json!({"host": format!("{name}.")}));
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    assert!(certificates_issued(&ca, &order_url).await.is_some());
}

/// Issue 13: the statuses Boulder and Pebble answer, which clients depend on.
#[tokio::test]
async fn statuses_are_boulders_and_pebbles() {
    let ca = ca().await;
    // onlyReturnExisting for an unknown key: 400 accountDoesNotExist, and no account is made.
    let mut client = Client::new(&ca);
    let r = client
        .post(
            "/acme/new-account",
            Some(&json!({"onlyReturnExisting": true})),
        )
        .await;
    assert_eq!(
        (r.status, r.problem()),
        (StatusCode::BAD_REQUEST, "accountDoesNotExist".into())
    );
    client.register().await; // 201: there was none
    // The same key again (by `jwk`): 200 and the account's URL.
    let kid = client.kid.take();
    let r = client
        .post(
            "/acme/new-account",
            Some(&json!({"onlyReturnExisting": true})),
        )
        .await;
    client.kid = kid;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(Some(r.location()), client.kid);

    // An unknown account URL: 400 accountDoesNotExist.
    let mut ghost = Client::new(&ca);
    ghost.kid = Some(format!("{BASE}/acme/acct/nobody"));
    let r = ghost.post("/acme/new-order", Some(&json!({}))).await;
    assert_eq!(
        (r.status, r.problem()),
        (StatusCode::BAD_REQUEST, "accountDoesNotExist".into())
    );
    // An unknown profile: 400 invalidProfile.
    let r = client
        .post(
            "/acme/new-order",
            Some(&json!({"identifiers": [{"type": "dns", "value": "p.example.test"}], "profile": "nope"})),
        )
        .await;
    assert_eq!(
        (r.status, r.problem()),
        (StatusCode::BAD_REQUEST, "invalidProfile".into())
    );
    // An algorithm the key does not sign with: 400 badSignatureAlgorithm with `algorithms`.
    let nonce = client.nonce().await;
    let header = json!({"alg": "RS256", "nonce": nonce, "url": format!("{BASE}/acme/new-order"), "kid": client.kid});
    let r = client
        .post_body("/acme/new-order", client.sign(&header, Some(&json!({}))))
        .await;
    assert_eq!(
        (r.status, r.problem()),
        (StatusCode::BAD_REQUEST, "badSignatureAlgorithm".into())
    );
    assert_eq!(
        r.json()["algorithms"],
        json!(["RS256", "ES256", "ES384", "EdDSA"])
    );
    // A deactivated account's key at newAccount: 403 unauthorized, as both answer.
    let kid = client.kid.clone().expect("kid");
    let r = client
        .post(&path_of(&kid), Some(&json!({"status": "deactivated"})))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    client.kid = None;
    let r = client
        .post(
            "/acme/new-account",
            Some(&json!({"termsOfServiceAgreed": true})),
        )
        .await;
    assert_eq!(
        (r.status, r.problem()),
        (StatusCode::FORBIDDEN, "unauthorized".into())
    );
}
