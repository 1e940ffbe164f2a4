//! The HTTP layer: the ACME resources of RFC 8555 §7 and RFC 9773, on axum.
//!
//! Every response carries a fresh `Replay-Nonce`, `Link: <directory>;rel="index"` and
//! `Cache-Control: no-store`; every POST is a JWS whose `url` must be exactly the URL it was sent
//! to (under `server.base_url`). Errors are `application/problem+json`; internal errors are
//! logged with their detail and reach the client as `serverInternal` without it.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use ocsp::model::{CertStatus, IssuerName, Serial};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::db::{Begun, Db, Issuance};
use crate::issue::{self, CertSigner, IssuerCert, LeafPlan};
use crate::jws::{ParsedJws, PublicKey, key_authorization};
use crate::metrics::{AcmeMetrics, GatewayCall, InstrumentedDb, Limit};
use crate::model::*;
use crate::nonce::NonceService;
use crate::perspective::{CheckRequest, Corroborator};
use crate::validate::Validator;
use crate::{Error, Problem, ProblemType, ari, random_id, ratelimit, republish, rfc3339, unix_now};

/// Reasons a subscriber may give (RFC 5280 §5.3.1): unspecified, keyCompromise,
/// affiliationChanged, superseded, cessationOfOperation — as Let's Encrypt accepts.
const SUBSCRIBER_REASONS: [u8; 5] = [0, 1, 3, 4, 5];
const KEY_COMPROMISE: u8 = 1;
/// RFC 9773 §4.3: how long a client should wait before asking about a certificate again.
const ARI_RETRY_AFTER_SECS: u64 = 6 * 3600;

/// Everything a request handler needs. Cheap to share.
#[derive(Debug)]
pub struct Ca {
    pub config: Config,
    pub db: Arc<dyn Db>,
    pub nonces: NonceService,
    pub validator: Validator,
    /// The remote perspectives validation and CAA are corroborated from (BR §3.2.2.9).
    pub corroborator: Corroborator,
    pub signer: CertSigner,
    pub intermediate: IssuerCert,
    pub presigner: ocsp::presigner::Presigner,
    pub ocsp_issuer: IssuerName,
    /// The issuer's CRL shards (`[issuers.crl]` of the OCSP config), for the CRL Distribution
    /// Point of certificates whose profile publishes CRLs.
    pub crl_shards: Option<ocsp::crl::ShardMap>,
    /// Requests, orders, issuance, validations, limits, database and gateway calls.
    pub metrics: Arc<AcmeMetrics>,
    /// `metrics` and the perspectives' counters, served at `server.metrics_listen`.
    pub registry: Arc<prometheus_client::registry::Registry>,
}

type Shared = State<Arc<Ca>>;
type Result<T> = std::result::Result<T, Error>;

/// The router for `ca`.
pub fn router(ca: Arc<Ca>) -> Router {
    let metrics = ca.metrics.clone();
    Router::new()
        .route("/directory", get(directory))
        .route("/acme/new-nonce", get(new_nonce).head(new_nonce))
        .route("/acme/new-account", post(new_account))
        .route("/acme/acct/{id}", post(account))
        .route("/acme/acct/{id}/orders", post(account_orders))
        .route("/acme/new-order", post(new_order))
        .route("/acme/order/{id}", post(order))
        .route("/acme/order/{id}/finalize", post(finalize))
        .route("/acme/authz/{id}", post(authorization))
        .route("/acme/chall/{authz}/{kind}", post(challenge))
        .route("/acme/cert/{serial}", post(certificate))
        .route("/acme/revoke-cert", post(revoke_cert))
        .route("/acme/key-change", post(key_change))
        .route("/acme/renewal-info/{id}", get(renewal_info))
        .fallback(not_found)
        .layer(axum::middleware::map_response(
            crate::error::problem_for_rejections,
        ))
        .layer(axum::middleware::map_response_with_state(
            ca.clone(),
            common_headers,
        ))
        // Outermost: it sees the final status and the problem type of every response.
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            crate::metrics::count_requests,
        ))
        .with_state(ca)
}

async fn not_found(method: Method) -> Response {
    if method == Method::GET || method == Method::POST || method == Method::HEAD {
        Problem::not_found("resource").into_response()
    } else {
        Problem::malformed(format!("method {method} is not allowed"))
            .with_status(StatusCode::METHOD_NOT_ALLOWED)
            .into_response()
    }
}

async fn common_headers(State(ca): Shared, mut response: Response) -> Response {
    let headers = response.headers_mut();
    if let Ok(nonce) = ca.nonces.issue()
        && let Ok(v) = HeaderValue::from_str(&nonce)
    {
        headers.insert("replay-nonce", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("<{}>;rel=\"index\"", ca.url("/directory"))) {
        headers.append(header::LINK, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

impl Ca {
    /// Everything `config` names, checked: the root and intermediate certificates (the
    /// intermediate must chain to the root, and its key must be the gateway's issuing key), the
    /// database (migrated), the gateway (retried for 30 s while it starts), the OCSP pre-signer.
    pub async fn build(config: Config) -> Result<Arc<Self>> {
        use der::{Decode, Encode};
        let read = |p: &std::path::Path| {
            let p = config.resolve(p);
            std::fs::read_to_string(&p).map_err(|e| Error::Config {
                path: p.display().to_string(),
                detail: e.to_string(),
            })
        };
        let root = IssuerCert::from_pem(&read(&config.ca.root)?)?;
        let intermediate = IssuerCert::from_pem(&read(&config.ca.intermediate)?)?;
        // A mismatched pair would issue chains that verify nowhere.
        let cert = x509_cert::Certificate::from_der(&intermediate.der)?;
        let tbs = cert.tbs_certificate().to_der()?;
        let signature = cert.signature().as_bytes().unwrap_or_default();
        issue::verify_signature(&root.spki, cert.signature_algorithm(), &tbs, signature).map_err(
            |e| Error::Config {
                path: config.ca.intermediate.display().to_string(),
                detail: format!(
                    "not signed by the root in {}: {e}",
                    config.ca.root.display()
                ),
            },
        )?;
        let metrics = Arc::new(AcmeMetrics::default());
        let mut registry = prometheus_client::registry::Registry::with_prefix("hsmgate_acme");
        metrics.register(&mut registry);
        let db = InstrumentedDb::wrap(crate::db::open(&config).await?, metrics.clone());
        let channel = hsmgate_signer_api::client::connect_lazy(
            &config.gateway.url,
            config.gateway_tls().as_ref(),
        )
        .map_err(|e| Error::Gateway(e.to_string()))?;
        let timeout = std::time::Duration::from_millis(config.gateway.timeout_ms);
        let mut attempt = 0;
        let (signer, gateway_spki) = loop {
            match CertSigner::start(
                channel.clone(),
                config.gateway.issuing_key.clone(),
                config.gateway.batch,
                timeout,
            )
            .await
            {
                Ok(s) => break s,
                Err(e) if attempt < 60 => {
                    attempt += 1;
                    tracing::debug!(error = %e, "gateway not ready");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        };
        if gateway_spki != intermediate.spki {
            return Err(Error::Config {
                path: "gateway.issuing_key".into(),
                detail: format!(
                    "gateway key `{}` is not the key of the intermediate certificate {}",
                    config.gateway.issuing_key,
                    config.ca.intermediate.display()
                ),
            });
        }
        let ocsp_path = config.resolve(&config.ocsp.config);
        let ocsp_config = ocsp::config::Config::load(&ocsp_path)?;
        if !ocsp_config
            .issuers
            .iter()
            .any(|i| i.name == config.ocsp.issuer)
        {
            return Err(Error::Config {
                path: "ocsp.issuer".into(),
                detail: format!(
                    "`{}` is not an issuer of {}",
                    config.ocsp.issuer,
                    ocsp_path.display()
                ),
            });
        }
        let crl_shards = ocsp::crl::ShardMap::all(&ocsp_config)
            .into_iter()
            .find(|m| m.issuer().0 == config.ocsp.issuer);
        if crl_shards.is_none()
            && let Some(i) = config.ca.profiles.iter().position(|p| p.status.crl())
        {
            return Err(Error::Config {
                path: format!("ca.profiles[{i}].status"),
                detail: format!(
                    "profile `{}` publishes CRLs, but issuer `{}` of {} has no [issuers.crl]",
                    config.ca.profiles[i].name,
                    config.ocsp.issuer,
                    ocsp_path.display()
                ),
            });
        }
        let presigner = ocsp::presigner::Presigner::from_config(
            &ocsp_config,
            ocsp::presigner::PresignerMetrics::default(),
        )
        .await?;
        let validator = Validator::new(
            &config.validation,
            &config.ca.caa_identities,
            &config.ca.allowed_special_tlds,
        )?;
        // A perspective's answer may take its whole validation timeout; a little more for the
        // connection.
        let corroborator = Corroborator::new(
            &config.validation.perspectives,
            |p| config.resolve(p),
            std::time::Duration::from_millis(config.validation.timeout_ms + 2_000),
            &mut registry,
        )?;
        Ok(Arc::new(Ca {
            nonces: NonceService::new(config.server.nonce_capacity),
            db,
            validator,
            corroborator,
            signer,
            intermediate,
            presigner,
            ocsp_issuer: IssuerName(config.ocsp.issuer.clone()),
            crl_shards,
            config,
            metrics,
            registry: Arc::new(registry),
        }))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.server.base_url)
    }

    fn account_url(&self, id: &str) -> String {
        self.url(&format!("/acme/acct/{id}"))
    }

    fn order_url(&self, id: &str) -> String {
        self.url(&format!("/acme/order/{id}"))
    }

    fn authz_url(&self, id: &str) -> String {
        self.url(&format!("/acme/authz/{id}"))
    }

    fn challenge_url(&self, authz: &str, kind: ChallengeType) -> String {
        self.url(&format!("/acme/chall/{authz}/{}", kind.as_str()))
    }

    fn cert_url(&self, serial: &str) -> String {
        self.url(&format!("/acme/cert/{serial}"))
    }
}

// ---------------------------------------------------------------- authentication

#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyBy {
    /// `kid`: an existing account (most requests).
    Account,
    /// `jwk`: new-account.
    Jwk,
    /// Either (revokeCert: by account, or by the certificate's key).
    Either,
}

/// Who may sign a request: the rule a [`Signed`] extractor applies.
trait KeyRule {
    const BY: KeyBy;
}

/// An existing account's key (`kid`): every request but the two below.
#[derive(Debug)]
struct AccountKey;
impl KeyRule for AccountKey {
    const BY: KeyBy = KeyBy::Account;
}

/// A key in the request (`jwk`): new-account.
#[derive(Debug)]
struct NewKey;
impl KeyRule for NewKey {
    const BY: KeyBy = KeyBy::Jwk;
}

/// Either: revokeCert, by the account or by the certificate's key.
#[derive(Debug)]
struct AnyKey;
impl KeyRule for AnyKey {
    const BY: KeyBy = KeyBy::Either;
}

/// A POST whose JWS verified under rule `R`: the body extractor of every ACME POST handler, so
/// that authentication is one piece of code that no handler can forget.
struct Signed<R = AccountKey>(Authed, std::marker::PhantomData<R>);

impl<R: KeyRule + Send> axum::extract::FromRequest<Arc<Ca>> for Signed<R> {
    type Rejection = Response;

    async fn from_request(
        request: axum::extract::Request,
        ca: &Arc<Ca>,
    ) -> std::result::Result<Self, Response> {
        let (parts, body) = request.into_parts();
        authenticate(ca, &parts.uri, &parts.headers, body, R::BY)
            .await
            .map(|authed| Signed(authed, std::marker::PhantomData))
            .map_err(IntoResponse::into_response)
    }
}

struct Authed {
    jws: ParsedJws,
    account: Option<Account>,
    key: PublicKey,
}

impl Authed {
    fn account(&self) -> Result<&Account> {
        self.account.as_ref().ok_or_else(|| {
            Problem::malformed("this request must be signed by an account key (`kid`)").into()
        })
    }

    fn is_post_as_get(&self) -> bool {
        self.jws.payload.is_empty()
    }
}

async fn read_body(ca: &Ca, headers: &HeaderMap, body: Body) -> Result<Vec<u8>> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.split(';').next().map(str::trim) != Some("application/jose+json") {
        return Err(Problem::malformed(format!(
            "Content-Type must be application/jose+json, not `{content_type}`"
        ))
        .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        .into());
    }
    let limit = ca.config.server.max_body_bytes;
    let bytes = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|_| {
            Problem::malformed(format!("the request body is larger than {limit} bytes"))
                .with_status(StatusCode::PAYLOAD_TOO_LARGE)
        })?
        .to_bytes();
    Ok(bytes.to_vec())
}

async fn authenticate(
    ca: &Ca,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    by: KeyBy,
) -> Result<Authed> {
    let body = read_body(ca, headers, body).await?;
    let jws = ParsedJws::parse(&body)?;
    let expected_url = ca.url(uri.path());
    match jws.header.url.as_deref() {
        Some(url) if url == expected_url => {}
        // RFC 8555 §6.4: "the server MUST reject the request as unauthorized" (Boulder and
        // Pebble answer `malformed`; the RFC decides).
        Some(url) => {
            return Err(Problem::unauthorized(format!(
                "the JWS url `{url}` is not the URL this request was sent to (`{expected_url}`)"
            ))
            .into());
        }
        None => return Err(Problem::malformed("the protected header has no `url`").into()),
    }
    let nonce = jws.header.nonce.as_deref().ok_or_else(|| {
        Problem::new(ProblemType::BadNonce, "the protected header has no `nonce`")
    })?;
    if !ca.nonces.consume(nonce) {
        return Err(Problem::new(
            ProblemType::BadNonce,
            "the nonce was not issued by this server, or was already used; retry with the nonce in this response",
        )
        .into());
    }
    let (account, key) = match (&jws.header.kid, &jws.header.jwk, by) {
        (Some(_), Some(_), _) => {
            return Err(Problem::malformed("the header has both `jwk` and `kid`").into());
        }
        (Some(kid), None, KeyBy::Account | KeyBy::Either) => {
            // Not an account URL at all: `malformed`, as Boulder and Pebble answer.
            let id = kid.strip_prefix(&ca.url("/acme/acct/")).ok_or_else(|| {
                Problem::malformed(format!("`{kid}` is not an account URL of this server"))
            })?;
            let account = ca.db.account(id).await?.ok_or_else(|| {
                Problem::new(
                    ProblemType::AccountDoesNotExist,
                    format!("no account `{kid}`"),
                )
            })?;
            if account.status != AccountStatus::Valid {
                return Err(Problem::unauthorized(
                    format!("the account is {:?}", account.status).to_lowercase(),
                )
                .into());
            }
            let key = PublicKey::from_jwk(&account.jwk)?;
            (Some(account), key)
        }
        (None, Some(jwk), KeyBy::Jwk | KeyBy::Either) => (None, PublicKey::from_jwk(jwk)?),
        (Some(_), None, KeyBy::Jwk) => {
            return Err(Problem::malformed("this request must carry a `jwk`, not a `kid`").into());
        }
        (None, Some(_), KeyBy::Account) => {
            return Err(Problem::malformed(
                "this request must carry a `kid` (an account URL), not a `jwk`",
            )
            .into());
        }
        (None, None, _) => {
            return Err(Problem::malformed("the header has neither `jwk` nor `kid`").into());
        }
    };
    jws.verify(&key)?;
    Ok(Authed { jws, account, key })
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn with_header(mut r: Response, name: header::HeaderName, value: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().append(name, v);
    }
    r
}

// ---------------------------------------------------------------- directory, nonces

async fn directory(State(ca): Shared) -> Response {
    let profiles: serde_json::Map<String, serde_json::Value> = ca
        .config
        .ca
        .profiles
        .iter()
        .map(|p| {
            let text = p
                .description
                .clone()
                .unwrap_or_else(|| format!("{} hours", p.validity_hours));
            (p.name.clone(), serde_json::Value::String(text))
        })
        .collect();
    let mut meta = serde_json::json!({
        "caaIdentities": ca.config.ca.caa_identities,
        "profiles": profiles,
    });
    if let Some(tos) = &ca.config.server.terms_of_service {
        meta["termsOfService"] = serde_json::Value::String(tos.clone());
    }
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "newNonce": ca.url("/acme/new-nonce"),
            "newAccount": ca.url("/acme/new-account"),
            "newOrder": ca.url("/acme/new-order"),
            "revokeCert": ca.url("/acme/revoke-cert"),
            "keyChange": ca.url("/acme/key-change"),
            "renewalInfo": ca.url("/acme/renewal-info"),
            "meta": meta,
        }),
    )
}

async fn new_nonce(method: Method) -> StatusCode {
    // RFC 8555 §7.2: 200 to HEAD, 204 to GET.
    if method == Method::HEAD {
        StatusCode::OK
    } else {
        StatusCode::NO_CONTENT
    }
}

// ---------------------------------------------------------------- accounts

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewAccount {
    #[serde(default)]
    contact: Option<Vec<String>>,
    #[serde(default)]
    only_return_existing: bool,
    #[serde(default, rename = "termsOfServiceAgreed")]
    _terms_of_service_agreed: Option<bool>,
}

fn account_json(ca: &Ca, a: &Account) -> serde_json::Value {
    serde_json::json!({
        "status": a.status,
        "contact": a.contact,
        "orders": ca.url(&format!("/acme/acct/{}/orders", a.id)),
        // The RFC 7638 members only, also for an account stored before keys were reduced.
        "key": PublicKey::from_jwk(&a.jwk).map_or_else(|_| a.jwk.clone(), |k| k.to_jwk()),
        "createdAt": rfc3339(a.created),
    })
}

async fn new_account(State(ca): Shared, signed: Signed<NewKey>) -> Result<Response> {
    new_account_inner(&ca, signed.0).await
}

async fn new_account_inner(ca: &Ca, authed: Authed) -> Result<Response> {
    let request: NewAccount = authed.jws.json()?;
    let thumbprint = authed.key.thumbprint();
    if let Some(existing) = ca.db.account_by_thumbprint(&thumbprint).await? {
        // As Boulder and Pebble answer: the key's account exists but cannot be used.
        if existing.status != AccountStatus::Valid {
            return Err(Problem::unauthorized(format!(
                "the account of this key is {}",
                format!("{:?}", existing.status).to_lowercase()
            ))
            .into());
        }
        let r = json_response(StatusCode::OK, &account_json(ca, &existing));
        return Ok(with_header(
            r,
            header::LOCATION,
            &ca.account_url(&existing.id),
        ));
    }
    if request.only_return_existing {
        return Err(Problem::new(
            ProblemType::AccountDoesNotExist,
            "no account exists for this key",
        )
        .into());
    }
    let contact = request.contact.unwrap_or_default();
    crate::contact::check_contacts(&contact, &ca.config.ca.allowed_special_tlds)?;
    let now = unix_now();
    ca.metrics.limited(
        Limit::AccountsPerHour,
        ratelimit::new_account(ca.db.as_ref(), &ca.config.limits, now).await,
    )?;
    // Stored and echoed: the public key's RFC 7638 members, not whatever else the jwk held.
    let jwk = authed.key.to_jwk();
    let account = Account {
        id: random_id()?,
        status: AccountStatus::Valid,
        contact,
        jwk,
        thumbprint,
        created: now,
    };
    let (status, account) = match ca.db.insert_account(&account).await? {
        Ok(()) => (StatusCode::CREATED, account),
        // Another request created it meanwhile: the same answer as if it had come first.
        Err(existing) => (StatusCode::OK, existing),
    };
    tracing::info!(account = %account.id, "new account");
    let r = json_response(status, &account_json(ca, &account));
    Ok(with_header(
        r,
        header::LOCATION,
        &ca.account_url(&account.id),
    ))
}

#[derive(Deserialize)]
struct AccountUpdate {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    contact: Option<Vec<String>>,
}

async fn account(State(ca): Shared, Path(id): Path<String>, signed: Signed) -> Result<Response> {
    account_inner(&ca, &id, signed.0).await
}

async fn account_inner(ca: &Ca, id: &str, authed: Authed) -> Result<Response> {
    let mut account = authed.account()?.clone();
    if account.id != id {
        return Err(Problem::unauthorized("the request is signed by another account").into());
    }
    if !authed.is_post_as_get() {
        let update: AccountUpdate = authed.jws.json()?;
        if let Some(contact) = update.contact {
            crate::contact::check_contacts(&contact, &ca.config.ca.allowed_special_tlds)?;
            account.contact = contact;
        }
        match update.status.as_deref() {
            None => {}
            Some("deactivated") => account.status = AccountStatus::Deactivated,
            Some(other) => {
                return Err(Problem::malformed(format!(
                    "an account's status can only be set to `deactivated`, not `{other}`"
                ))
                .into());
            }
        }
        ca.db.update_account(&account).await?;
    }
    Ok(json_response(StatusCode::OK, &account_json(ca, &account)))
}

async fn account_orders(
    State(ca): Shared,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<Response> {
    let authed = signed.0;
    if authed.account()?.id != id {
        return Err(Problem::unauthorized("the request is signed by another account").into());
    }
    let ids = ca.db.orders_of_account(&id).await?;
    let urls: Vec<String> = ids.iter().map(|o| ca.order_url(o)).collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "orders": urls }),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyChangeInner {
    account: String,
    old_key: serde_json::Value,
}

async fn key_change(State(ca): Shared, signed: Signed) -> Result<Response> {
    let authed = signed.0;
    let mut account = authed.account()?.clone();
    // RFC 8555 §7.3.5: the payload is a JWS by the new key, same url, no nonce.
    let inner = ParsedJws::parse(&authed.jws.payload)?;
    if inner.header.url != authed.jws.header.url {
        return Err(Problem::malformed("the inner JWS's url differs from the outer's").into());
    }
    if inner.header.nonce.is_some() || inner.header.kid.is_some() {
        return Err(Problem::malformed("the inner JWS must have a jwk and no nonce or kid").into());
    }
    let new_jwk = inner
        .header
        .jwk
        .clone()
        .ok_or_else(|| Problem::malformed("the inner JWS has no jwk"))?;
    let new_key = PublicKey::from_jwk(&new_jwk)?;
    inner.verify(&new_key)?;
    let new_jwk = new_key.to_jwk();
    let request: KeyChangeInner = inner.json()?;
    if request.account != ca.account_url(&account.id) {
        return Err(Problem::malformed("the inner payload names another account").into());
    }
    if PublicKey::from_jwk(&request.old_key)? != authed.key {
        return Err(Problem::malformed("oldKey is not the account's current key").into());
    }
    account.jwk = new_jwk;
    account.thumbprint = new_key.thumbprint();
    if !ca.db.update_account(&account).await? {
        let other = ca.db.account_by_thumbprint(&account.thumbprint).await?;
        // RFC 8555 §7.3.5: 409 Conflict, with the other account's URL.
        let r = Problem::new(
            ProblemType::Conflict,
            "the new key already belongs to an account",
        )
        .into_response();
        return Ok(match other {
            Some(o) => with_header(r, header::LOCATION, &ca.account_url(&o.id)),
            None => r,
        });
    }
    tracing::info!(account = %account.id, "account key rolled over");
    Ok(json_response(StatusCode::OK, &account_json(&ca, &account)))
}

// ---------------------------------------------------------------- orders

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewOrder {
    identifiers: Vec<Identifier>,
    #[serde(default)]
    not_before: Option<String>,
    #[serde(default)]
    not_after: Option<String>,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    replaces: Option<String>,
}

fn order_json(ca: &Ca, o: &Order, status: OrderStatus) -> serde_json::Value {
    let mut body = serde_json::json!({
        "status": status.as_str(),
        "expires": rfc3339(o.expires),
        "identifiers": o.identifiers,
        "authorizations": o.authz_ids.iter().map(|a| ca.authz_url(a)).collect::<Vec<_>>(),
        "finalize": ca.url(&format!("/acme/order/{}/finalize", o.id)),
        "profile": o.profile,
    });
    if let Some(serial) = &o.certificate
        && status == OrderStatus::Valid
    {
        body["certificate"] = serde_json::Value::String(ca.cert_url(serial));
    }
    if let Some(error) = &o.error {
        body["error"] = error.clone();
    }
    if let Some(r) = &o.replaces {
        body["replaces"] = serde_json::Value::String(r.clone());
    }
    body
}

fn order_response(ca: &Ca, status_code: StatusCode, o: &Order, status: OrderStatus) -> Response {
    let r = json_response(status_code, &order_json(ca, o, status));
    let r = with_header(r, header::LOCATION, &ca.order_url(&o.id));
    if matches!(status, OrderStatus::Processing | OrderStatus::Pending) {
        with_header(r, header::RETRY_AFTER, "1")
    } else {
        r
    }
}

async fn new_order(State(ca): Shared, signed: Signed) -> Result<Response> {
    new_order_inner(&ca, signed.0).await
}

async fn new_order_inner(ca: &Ca, authed: Authed) -> Result<Response> {
    let account = authed.account()?.clone();
    let request: NewOrder = authed.jws.json()?;
    if request.not_before.is_some() || request.not_after.is_some() {
        return Err(Problem::malformed(
            "notBefore and notAfter are not supported; choose a profile",
        )
        .into());
    }
    if request.identifiers.is_empty() {
        return Err(Problem::malformed("an order needs at least one identifier").into());
    }
    if request.identifiers.len() > ca.config.ca.max_names {
        return Err(Problem::new(
            ProblemType::RejectedIdentifier,
            format!("at most {} names per certificate", ca.config.ca.max_names),
        )
        .into());
    }
    let mut names = BTreeSet::new();
    for id in &request.identifiers {
        if id.kind != "dns" {
            return Err(Problem::new(
                ProblemType::UnsupportedIdentifier,
                format!("identifier type `{}` is not supported", id.kind),
            )
            .into());
        }
        let checked = crate::names::check_dns_name(&id.value, &ca.config.ca.allowed_special_tlds)?;
        names.insert(checked.name);
    }
    let profile = request
        .profile
        .unwrap_or_else(|| ca.config.ca.default_profile.clone());
    if ca.config.profile(&profile).is_none() {
        return Err(Problem::new(
            ProblemType::InvalidProfile,
            format!("unknown profile `{profile}`; see the directory's meta.profiles"),
        )
        .into());
    }
    // RFC 9773 §5: the replaced certificate must be this account's, share a name with the
    // order, and not be replaced already (checked again, atomically, when finalization begins).
    if let Some(replaces) = &request.replaces {
        let record = ari_certificate(ca, replaces).await?;
        if record.account_id != account.id {
            return Err(
                Problem::unauthorized("`replaces` names a certificate of another account").into(),
            );
        }
        if !record.names.iter().any(|n| names.contains(n)) {
            return Err(Problem::malformed(
                "`replaces` names a certificate that shares no identifier with this order",
            )
            .into());
        }
        if let Some(by) = &record.replaced_by {
            return Err(Problem::new(
                ProblemType::AlreadyReplaced,
                format!(
                    "the certificate was already replaced by order {}",
                    ca.order_url(by)
                ),
            )
            .into());
        }
    }
    let now = unix_now();
    ca.metrics.limited(
        Limit::OrdersPerAccountPerHour,
        ratelimit::new_order(ca.db.as_ref(), &ca.config.limits, &account.id, now).await,
    )?;
    let order_id = random_id()?;
    let expires =
        now + i64::try_from(ca.config.validation.pending_hours * 3600).unwrap_or(i64::MAX / 2);
    let mut authzs = Vec::with_capacity(names.len());
    for name in &names {
        let (base, wildcard) = match name.strip_prefix("*.") {
            Some(b) => (b.to_owned(), true),
            None => (name.clone(), false),
        };
        // A wildcard is proven by DNS only (RFC 8555 §7.1.3).
        let kinds: &[ChallengeType] = if wildcard {
            &[ChallengeType::Dns01]
        } else {
            &[
                ChallengeType::Http01,
                ChallengeType::Dns01,
                ChallengeType::TlsAlpn01,
            ]
        };
        let challenges = kinds
            .iter()
            .map(|k| {
                Ok(Challenge {
                    kind: *k,
                    token: crate::b64(&crate::random_bytes::<32>()?),
                    status: ChallengeStatus::Pending,
                    validated: None,
                    error: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        authzs.push(Authorization {
            id: random_id()?,
            account_id: account.id.clone(),
            order_id: order_id.clone(),
            identifier: Identifier {
                kind: "dns".into(),
                value: base,
            },
            wildcard,
            status: AuthzStatus::Pending,
            expires,
            challenges,
            corroboration: Vec::new(),
        });
    }
    let order = Order {
        id: order_id,
        account_id: account.id.clone(),
        status: OrderStatus::Pending,
        expires,
        identifiers: names
            .iter()
            .map(|n| Identifier {
                kind: "dns".into(),
                value: n.clone(),
            })
            .collect(),
        authz_ids: authzs.iter().map(|a| a.id.clone()).collect(),
        profile,
        replaces: request.replaces,
        certificate: None,
        error: None,
        created: now,
        caa_corroboration: Vec::new(),
    };
    ca.db.insert_order(&order, &authzs).await?;
    ca.metrics.order(OrderStatus::Pending);
    Ok(order_response(
        ca,
        StatusCode::CREATED,
        &order,
        OrderStatus::Pending,
    ))
}

/// Loads an order owned by `account`, with its status as its authorizations make it now.
async fn owned_order(
    ca: &Ca,
    id: &str,
    account: &Account,
) -> Result<(Order, Vec<Authorization>, OrderStatus)> {
    let order = ca
        .db
        .order(id)
        .await?
        .ok_or_else(|| Problem::not_found("order"))?;
    if order.account_id != account.id {
        return Err(Problem::unauthorized("the order belongs to another account").into());
    }
    let mut authzs = Vec::with_capacity(order.authz_ids.len());
    for a in &order.authz_ids {
        authzs.push(ca.db.authz(a).await?.ok_or_else(|| {
            Error::Internal(format!("order {id} names a missing authorization {a}"))
        })?);
    }
    let status = order_status_from_authzs(&order, &authzs, unix_now());
    Ok((order, authzs, status))
}

async fn order(State(ca): Shared, Path(id): Path<String>, signed: Signed) -> Result<Response> {
    let authed = signed.0;
    let (order, _, status) = owned_order(&ca, &id, authed.account()?).await?;
    Ok(order_response(&ca, StatusCode::OK, &order, status))
}

#[derive(Deserialize)]
struct Finalize {
    csr: String,
}

async fn finalize(State(ca): Shared, Path(id): Path<String>, signed: Signed) -> Result<Response> {
    finalize_inner(&ca, &id, signed.0).await
}

async fn finalize_inner(ca: &Ca, id: &str, authed: Authed) -> Result<Response> {
    let started = std::time::Instant::now();
    let account = authed.account()?.clone();
    let (order, authzs, status) = owned_order(ca, id, &account).await?;
    if status != OrderStatus::Ready {
        return Err(Problem::new(
            ProblemType::OrderNotReady,
            format!(
                "the order is {}, not ready: {}",
                status.as_str(),
                match status {
                    OrderStatus::Pending => "complete its authorizations first",
                    OrderStatus::Processing | OrderStatus::Valid => "it was already finalized",
                    _ => "it cannot be finalized",
                }
            ),
        )
        .into());
    }
    let request: Finalize = authed.jws.json()?;
    let csr_der = crate::unb64(&request.csr)
        .ok_or_else(|| Problem::new(ProblemType::BadCsr, "csr is not base64url"))?;
    let names: BTreeSet<String> = order.identifiers.iter().map(|i| i.value.clone()).collect();
    // The policy again: an order made before a name was refused must not be issued for.
    for name in &names {
        crate::names::check_dns_name(name, &ca.config.ca.allowed_special_tlds)?;
    }
    let checked = issue::check_csr(
        &csr_der,
        &names,
        &ca.config.ca.rsa_key_sizes,
        &account.thumbprint,
    )?;
    let name_list: Vec<String> = names.iter().cloned().collect();
    // A renewal that names the certificate it replaces (ARI, RFC 9773 §5) is not held back by
    // the per-domain limit for the names it renews (an incident's mass renewal must not be
    // rate-limited into failure); names it adds count as any new certificate's do.
    let replaced = match &order.replaces {
        Some(cert_id) => Some(ari_certificate(ca, cert_id).await?),
        None => None,
    };
    let counted =
        ratelimit::counted_domains(&name_list, replaced.as_ref().map(|r| r.names.as_slice()));
    ca.metrics.limited(
        Limit::CertificatesPerDomainPerWeek,
        ratelimit::certificates(ca.db.as_ref(), &ca.config.limits, &counted, unix_now()).await,
    )?;
    let caa_corroboration = ca
        .corroborator
        .check_order_caa(&ca.validator, &authzs, &ca.account_url(&account.id))
        .await?;
    // Taken after the CAA lookups (up to a DNS timeout per name): the reservation's time must
    // say when signing starts, or the stalled-order repair could take a slow finalization for
    // an abandoned one while it is still signing.
    let now = unix_now();
    // Ready → processing, once (a second finalize, or another frontend, loses this race), in
    // one transaction with the domains' reservations under the serial to be signed and the
    // replaced certificate's `replaced_by`: concurrent finalizations can neither overshoot a
    // limit together nor both replace one certificate.
    let serial_bytes = issue::random_serial()?;
    let mut processing = order.clone();
    processing.status = OrderStatus::Processing;
    processing.certificate = Some(hex::encode(&serial_bytes));
    processing.caa_corroboration = caa_corroboration;
    let limit = u64::from(ca.config.limits.certificates_per_domain_per_week);
    let issuance = Issuance {
        order: processing.clone(),
        expected: order.status,
        serial: hex::encode(&serial_bytes),
        issued: now,
        domains: ratelimit::registered_domains(&name_list),
        counted,
        since: now - ratelimit::WEEK,
        limit,
        replaces: replaced.as_ref().map(|r| r.serial.clone()),
    };
    match ca.db.begin_issuance(&issuance).await? {
        Begun::Started => ca.metrics.order(OrderStatus::Processing),
        Begun::NotReady => {
            return Err(Problem::new(
                ProblemType::OrderNotReady,
                "the order is already being finalized, or an authorization is no longer valid",
            )
            .into());
        }
        Begun::Limited(domain) => {
            ca.metrics.limit_hit(Limit::CertificatesPerDomainPerWeek);
            return Err(ratelimit::domain_limited(&domain, limit));
        }
        Begun::AlreadyReplaced(by) => {
            return Err(Problem::new(
                ProblemType::AlreadyReplaced,
                format!(
                    "the certificate was already replaced by order {}",
                    ca.order_url(&by)
                ),
            )
            .into());
        }
    }
    let mark = republish::mark();
    let record = match sign_and_record(ca, &processing, &account, checked, serial_bytes, now, mark)
        .await
    {
        Ok(record) => record,
        Err(e) => {
            let problem = Problem::from(e);
            let mut invalid = processing.clone();
            invalid.status = OrderStatus::Invalid;
            invalid.certificate = None;
            invalid.error = Some(problem.to_json());
            // Nothing recorded: the reservations and the replacement mark go, the order is
            // invalid. Recorded after all (the write's answer was lost): it is finished below.
            if ca
                .db
                .abandon_issuance(&invalid, &issuance.serial, issuance.replaces.as_deref())
                .await?
            {
                ca.metrics.order(OrderStatus::Invalid);
                return Err(problem.into());
            }
            tracing::warn!(order = %processing.id, error = %problem, "recording a certificate failed, yet it is recorded");
            match ca.db.certificate(&issuance.serial).await? {
                Some(record) => record,
                None => return Err(problem.into()),
            }
        }
    };
    Ok(publish_and_complete(ca, processing, &record, mark, started).await)
}

/// Publishes a recorded certificate's `good` OCSP response and completes its order. A failure
/// here (the gateway busy or gone, the OCSP store unwritable) leaves a good certificate
/// recorded, so the order is never made invalid: it stays processing, its record keeps the
/// unpublished mark, and [`republish`] publishes and completes it. The client, told to poll,
/// sees it valid then.
async fn publish_and_complete(
    ca: &Ca,
    processing: Order,
    record: &CertificateRecord,
    mark: i64,
    started: std::time::Instant,
) -> Response {
    let published = async {
        republish::publish_record(ca, record, CertStatus::Good).await?;
        let mut valid = processing.clone();
        valid.status = OrderStatus::Valid;
        valid.certificate = Some(record.serial.clone());
        ca.db
            .ocsp_published(&record.serial, Some(mark), Some(&valid))
            .await?;
        Ok::<_, Error>(valid)
    }
    .await;
    match published {
        Ok(valid) => {
            ca.metrics.issued(started);
            order_response(ca, StatusCode::OK, &valid, OrderStatus::Valid)
        }
        Err(e) => {
            tracing::error!(order = %processing.id, serial = %record.serial, error = %e, "a recorded certificate's OCSP response or order could not be saved; the repair pass completes it");
            order_response(ca, StatusCode::OK, &processing, OrderStatus::Processing)
        }
    }
}

/// Builds, lints, signs, checks and records the certificate (with the unpublished `mark`,
/// [`republish`]); its `good` OCSP response is stored by [`publish_and_complete`] before the
/// client may learn of it.
async fn sign_and_record(
    ca: &Ca,
    order: &Order,
    account: &Account,
    csr: issue::CheckedCsr,
    serial: Vec<u8>,
    now: i64,
    mark: i64,
) -> Result<CertificateRecord> {
    let profile = ca.config.profile(&order.profile).ok_or_else(|| {
        Error::Internal(format!(
            "order {} has unknown profile {}",
            order.id, order.profile
        ))
    })?;
    // Backdated a minute for clients whose clocks run a little slow; the lifetime stays exact.
    let not_before = now - 60;
    // The shard is fixed now, by the serial, for the certificate's life.
    let crl_url = match &ca.crl_shards {
        Some(shards) if profile.status.crl() => {
            Some(shards.url_for(&Serial::from_be_bytes(&serial)))
        }
        _ => None,
    };
    let plan = LeafPlan {
        serial,
        names: csr.names.clone(),
        spki: csr.spki.clone(),
        rsa: matches!(csr.key, PublicKey::Rsa { .. }),
        not_before,
        not_after: not_before + i64::try_from(profile.validity_hours * 3600).unwrap_or(0) - 1,
        ocsp_url: ca
            .config
            .ca
            .ocsp_url
            .clone()
            .filter(|_| profile.status.ocsp()),
        ca_issuers_url: ca.config.ca.ca_issuers_url.clone(),
        crl_url,
    };
    let tbs = issue::build_leaf_tbs(&plan, &ca.intermediate, &ca.signer.algorithm)?;
    issue::lint(&tbs, &plan, &ca.intermediate, &ca.signer.algorithm)?;
    let signature = ca
        .metrics
        .gateway(GatewayCall::SignCertificate, ca.signer.sign(tbs.clone()))
        .await?;
    let der_bytes = issue::assemble(
        &tbs,
        &ca.signer.algorithm,
        &signature,
        &ca.intermediate.spki,
    )?;
    let serial = hex::encode(&plan.serial);
    let record = CertificateRecord {
        serial: serial.clone(),
        account_id: account.id.clone(),
        order_id: order.id.clone(),
        issued: now,
        not_before: plan.not_before,
        not_after: plan.not_after,
        names: plan.names.iter().cloned().collect(),
        chain_pem: format!(
            "{}{}",
            issue::pem_encode("CERTIFICATE", &der_bytes),
            ca.intermediate.pem()
        ),
        spki_sha256: hex::encode(Sha256::digest(csr.spki.subject_public_key.raw_bytes())),
        revoked: None,
        renew_now: false,
        replaced_by: None,
    };
    // The domains were reserved under this serial when the finalization began.
    ca.db.insert_certificate(&record, &[], mark).await?;
    tracing::info!(serial = %serial, order = %order.id, names = ?record.names, "certificate issued");
    Ok(record)
}

// ---------------------------------------------------------------- authorizations, challenges

fn challenge_json(ca: &Ca, authz: &Authorization, c: &Challenge) -> serde_json::Value {
    let mut body = serde_json::json!({
        "type": c.kind.as_str(),
        "url": ca.challenge_url(&authz.id, c.kind),
        "token": c.token,
        "status": c.status,
    });
    if let Some(t) = c.validated {
        body["validated"] = serde_json::Value::String(rfc3339(t));
    }
    if let Some(e) = &c.error {
        body["error"] = e.clone();
    }
    body
}

fn authz_json(ca: &Ca, a: &Authorization, now: i64) -> serde_json::Value {
    let mut body = serde_json::json!({
        "identifier": a.identifier,
        "status": a.status_at(now),
        "expires": rfc3339(a.expires),
        "challenges": a.challenges.iter().map(|c| challenge_json(ca, a, c)).collect::<Vec<_>>(),
    });
    if a.wildcard {
        body["wildcard"] = serde_json::Value::Bool(true);
    }
    body
}

async fn owned_authz(ca: &Ca, id: &str, account: &Account) -> Result<Authorization> {
    let authz = ca
        .db
        .authz(id)
        .await?
        .ok_or_else(|| Problem::not_found("authorization"))?;
    if authz.account_id != account.id {
        return Err(Problem::unauthorized("the authorization belongs to another account").into());
    }
    Ok(authz)
}

async fn authorization(
    State(ca): Shared,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<Response> {
    let authed = signed.0;
    let mut authz = owned_authz(&ca, &id, authed.account()?).await?;
    let now = unix_now();
    if !authed.is_post_as_get() {
        #[derive(Deserialize)]
        struct Update {
            status: String,
        }
        let update: Update = authed.jws.json()?;
        if update.status != "deactivated" {
            return Err(Problem::malformed(
                "an authorization's status can only be set to `deactivated`",
            )
            .into());
        }
        // Compare-and-set, retried on the record as it now is: a validation finishing at the
        // same moment changes pending into valid, which is deactivated just the same.
        for _ in 0..3 {
            if !matches!(
                authz.status_at(now),
                AuthzStatus::Pending | AuthzStatus::Valid
            ) {
                break;
            }
            let mut deactivated = authz.clone();
            deactivated.status = AuthzStatus::Deactivated;
            if ca.db.update_authz_if(&deactivated, &authz).await? {
                authz = deactivated;
                break;
            }
            authz = owned_authz(&ca, &id, authed.account()?).await?;
        }
        // Never answer 200 for a deactivation that did not happen.
        if matches!(
            authz.status_at(now),
            AuthzStatus::Pending | AuthzStatus::Valid
        ) {
            return Err(Error::Internal(
                "the authorization kept changing while it was being deactivated; retry".into(),
            ));
        }
    }
    let r = json_response(StatusCode::OK, &authz_json(&ca, &authz, now));
    Ok(if authz.status_at(now) == AuthzStatus::Pending {
        with_header(r, header::RETRY_AFTER, "1")
    } else {
        r
    })
}

async fn challenge(
    State(ca): Shared,
    Path((authz_id, kind)): Path<(String, String)>,
    signed: Signed,
) -> Result<Response> {
    challenge_inner(ca, &authz_id, &kind, signed.0).await
}

async fn challenge_inner(
    ca: Arc<Ca>,
    authz_id: &str,
    kind: &str,
    authed: Authed,
) -> Result<Response> {
    let account = authed.account()?.clone();
    let mut authz = owned_authz(&ca, authz_id, &account).await?;
    let kind = ChallengeType::parse(kind).ok_or_else(|| Problem::not_found("challenge"))?;
    let index = authz
        .challenges
        .iter()
        .position(|c| c.kind == kind)
        .ok_or_else(|| Problem::not_found("challenge"))?;
    let now = unix_now();
    // A POST with a payload (`{}`) asks for validation; POST-as-GET only reads.
    if !authed.is_post_as_get() {
        let _: serde_json::Value = authed.jws.json()?;
        let pending = authz.status_at(now) == AuthzStatus::Pending
            && authz.challenges[index].status == ChallengeStatus::Pending
            && !authz
                .challenges
                .iter()
                .any(|c| c.status == ChallengeStatus::Processing);
        if pending {
            let mut processing = authz.clone();
            processing.challenges[index].status = ChallengeStatus::Processing;
            // Only from the record as read: a deactivation in between is not undone.
            if ca.db.update_authz_if(&processing, &authz).await? {
                authz = processing;
                let key_auth =
                    key_authorization(&authz.challenges[index].token, &account.thumbprint);
                tokio::spawn(run_validation(ca.clone(), authz.clone(), index, key_auth));
            } else {
                authz = owned_authz(&ca, authz_id, &account).await?;
            }
        }
    }
    let r = json_response(
        StatusCode::OK,
        &challenge_json(&ca, &authz, &authz.challenges[index]),
    );
    let r = with_header(
        r,
        header::LINK,
        &format!("<{}>;rel=\"up\"", ca.authz_url(&authz.id)),
    );
    Ok(
        if authz.challenges[index].status == ChallengeStatus::Processing {
            with_header(r, header::RETRY_AFTER, "1")
        } else {
            r
        },
    )
}

/// Validates in the background; the client polls the authorization.
async fn run_validation(ca: Arc<Ca>, mut authz: Authorization, index: usize, key_auth: String) {
    let started = authz.clone();
    let began = std::time::Instant::now();
    let kind = authz.challenges[index].kind;
    let domain = authz.identifier.value.clone();
    let request = CheckRequest::Challenge {
        kind,
        domain: domain.clone(),
        key_authorization: key_auth.clone(),
    };
    let (outcome, corroboration) = ca
        .corroborator
        .corroborate(
            ca.validator.validate(kind, &domain, &key_auth),
            request,
            &domain,
        )
        .await;
    authz.corroboration.extend(corroboration);
    ca.metrics.validated(kind, outcome.is_ok(), began);
    let now = unix_now();
    let challenge = &mut authz.challenges[index];
    match outcome {
        Ok(()) => {
            challenge.status = ChallengeStatus::Valid;
            challenge.validated = Some(now);
            authz.status = AuthzStatus::Valid;
            authz.expires =
                now + i64::try_from(ca.config.validation.authz_valid_hours * 3600).unwrap_or(0);
        }
        Err(problem) => {
            tracing::info!(authz = %authz.id, kind = kind.as_str(), domain = %authz.identifier.value, problem = %problem, "validation failed");
            challenge.status = ChallengeStatus::Invalid;
            challenge.error = Some(problem.to_json());
            authz.status = AuthzStatus::Invalid;
        }
    }
    // Compare-and-set from the record as this validation left it (pending, the challenge
    // processing): an authorization deactivated meanwhile stays deactivated and cannot
    // authorize an order.
    match ca.db.update_authz_if(&authz, &started).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(authz = %authz.id, "the authorization changed while it was validated (deactivated); the outcome is dropped");
        }
        Err(e) => {
            tracing::error!(authz = %authz.id, error = %e, "could not record a validation outcome");
        }
    }
}

// ---------------------------------------------------------------- certificates, revocation

async fn certificate(
    State(ca): Shared,
    Path(serial): Path<String>,
    signed: Signed,
) -> Result<Response> {
    let authed = signed.0;
    let record = ca
        .db
        .certificate(&serial)
        .await?
        .ok_or_else(|| Problem::not_found("certificate"))?;
    if record.account_id != authed.account()?.id {
        return Err(Problem::unauthorized("the certificate belongs to another account").into());
    }
    let mut r = (StatusCode::OK, record.chain_pem).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pem-certificate-chain"),
    );
    Ok(r)
}

#[derive(Deserialize)]
struct RevokeCert {
    certificate: String,
    #[serde(default)]
    reason: Option<u8>,
}

async fn revoke_cert(State(ca): Shared, signed: Signed<AnyKey>) -> Result<Response> {
    revoke_inner(&ca, signed.0).await
}

async fn revoke_inner(ca: &Ca, authed: Authed) -> Result<Response> {
    use der::Decode;
    let request: RevokeCert = authed.jws.json()?;
    let der_bytes = crate::unb64(&request.certificate)
        .ok_or_else(|| Problem::malformed("certificate is not base64url"))?;
    let cert = x509_cert::Certificate::from_der(&der_bytes)
        .map_err(|e| Problem::malformed(format!("the certificate does not parse: {e}")))?;
    let tbs = cert.tbs_certificate();
    if tbs.issuer() != &ca.intermediate.subject {
        return Err(Problem::not_found("certificate issued by this CA").into());
    }
    let serial = hex::encode(tbs.serial_number().as_bytes());
    let record = ca
        .db
        .certificate(&serial)
        .await?
        .ok_or_else(|| Problem::not_found("certificate issued by this CA"))?;
    // The bytes sent must be the certificate recorded, not merely share its serial.
    let recorded = issue::first_pem_der(&record.chain_pem)?;
    if recorded != der_bytes {
        return Err(Problem::unauthorized(
            "the certificate is not the one this CA issued with that serial",
        )
        .into());
    }
    let by_cert_key = match &authed.account {
        Some(account) if account.id == record.account_id => false,
        Some(_) => {
            return Err(Problem::unauthorized("the certificate belongs to another account").into());
        }
        None => {
            let cert_key = PublicKey::from_spki(tbs.subject_public_key_info())?;
            if cert_key != authed.key {
                return Err(Problem::unauthorized(
                    "the JWS is not signed by the certificate's key",
                )
                .into());
            }
            true
        }
    };
    let reason = match (request.reason, by_cert_key) {
        (Some(r), _) if !SUBSCRIBER_REASONS.contains(&r) => {
            return Err(Problem::new(
                ProblemType::BadRevocationReason,
                format!("reason {r} is not accepted; use one of {SUBSCRIBER_REASONS:?}"),
            )
            .into());
        }
        // Whoever holds the key and asks, the key is compromised.
        (_, true) => KEY_COMPROMISE,
        (r, false) => r.unwrap_or(0),
    };
    let now = unix_now();
    let (revocation, recorded_now) = ca
        .db
        .revoke(&serial, Revocation { at: now, reason }, republish::mark())
        .await?
        .ok_or_else(|| Problem::not_found("certificate"))?;
    // Publish the revocation in force even when it was recorded earlier: a crash between the
    // two writes must not leave OCSP saying `good`. The record's mark has `republish` repair
    // that within a minute if no retry comes.
    let status = republish::revoked_status(revocation);
    let bytes = hex::decode(&serial).map_err(|e| Error::Internal(e.to_string()))?;
    let publish = async {
        ca.presigner
            .publish(&ca.ocsp_issuer, &Serial::from_be_bytes(&bytes), status)
            .await?;
        Ok(())
    };
    ca.metrics
        .gateway(GatewayCall::PublishOcsp, publish)
        .await?;
    // Revoked is final: whatever mark the record carries is answered.
    ca.db.ocsp_published(&serial, None, None).await?;
    if !recorded_now {
        return Err(Problem::new(
            ProblemType::AlreadyRevoked,
            "the certificate was already revoked",
        )
        .into());
    }
    tracing::info!(serial = %serial, reason, "certificate revoked");
    Ok(StatusCode::OK.into_response())
}

// ---------------------------------------------------------------- renewal information

pub(crate) async fn ari_certificate(ca: &Ca, cert_id: &str) -> Result<CertificateRecord> {
    let (key_id, serial) = ari::parse_cert_id(cert_id)
        .ok_or_else(|| Problem::malformed(format!("`{cert_id}` is not an ARI CertID")))?;
    if key_id != ca.intermediate.key_id {
        return Err(Problem::not_found("certificate issued by this CA").into());
    }
    let serial = hex::encode(serial);
    Ok(ca
        .db
        .certificate(&serial)
        .await?
        .ok_or_else(|| Problem::not_found("certificate"))?)
}

async fn renewal_info(State(ca): Shared, Path(id): Path<String>) -> Result<Response> {
    let record = ari_certificate(&ca, &id).await?;
    let r = json_response(
        StatusCode::OK,
        &ari::renewal_info(&record, unix_now(), None),
    );
    Ok(with_header(
        r,
        header::RETRY_AFTER,
        &ARI_RETRY_AFTER_SECS.to_string(),
    ))
}
