//! The HTTP layer (axum): OCSP over HTTP as RFC 6960 Appendix A and the RFC 5019 §5/§6 /
//! RFC 9919 profile describe it. It turns HTTP requests into [`request::parse`] calls and
//! [`Source`] lookups, and lookups into HTTP responses; it does not know where answers live.
//!
//! ```text
//!  GET|HEAD /{url-encoded base64 DER}  ─┐
//!  POST / (application/ocsp-request) ──────┴─▶ request::parse ─▶ Issuers::find ─▶ Source::response
//!                                                                              │
//!   200 application/ocsp-response + caching headers ◀── signed DER, if before nextUpdate
//! ```
//!
//! What clients get:
//!
//! | case | HTTP | OCSP status / body |
//! |---|---|---|
//! | stored response, before its nextUpdate | 200 (304 on a matching `If-None-Match`) | the signed response |
//! | unknown issuer or serial, expired response, other hash algorithm | 200 | `unauthorized` |
//! | stored response without a SingleResponse for the request's CertID hash (`presigner.cert_id_hashes`) | 200 | `unauthorized` |
//! | not a single-certificate DER request, bad base64 or URL escape, wrong content type | 400 | `malformedRequest` |
//! | POST body larger than `max_request_bytes` | 413 | `malformedRequest` |
//! | GET path longer than the encoding of `max_request_bytes` | 414 | `malformedRequest` |
//! | store down and nothing cached | 503 | `tryLater` |
//! | `HEAD` on any of the above | the same status and headers as GET (Content-Length included) | none |
//! | any method but GET, HEAD and POST | 405, `Allow: GET, HEAD, POST` | none |
//!
//! Every error answer carries `Cache-Control: max-age=0, no-cache` so caches in between keep
//! nothing that is not a signed response. A 400 for malformed requests follows the issue (and
//! Boulder); 413/414 say precisely what was wrong while still giving OCSP clients an OCSP body.
//! `tryLater` (RFC 6960 §4.2.1, "Try again later") rather than Boulder's `internalError`:
//! a store outage is transient and retrying is the right client behaviour.
//!
//! Nothing on the serving path resolves names or blocks the runtime: listen addresses are
//! socket addresses, and store reads are async.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use futures_util::future::Either;
use percent_encoding::percent_decode_str;
use sha2_010::{Digest, Sha256};
use tower_service::Service;
use x509_ocsp::OcspResponseStatus;

use crate::clock::unix_now;
use crate::crl::CrlServer;
use crate::crl::serve::{CrlPath, Found};
use crate::http_memo::HttpParts;
use crate::issuers::Issuers;
use crate::metrics::Metrics;
use crate::record::{CertStatus, StoredResponse};
use crate::request::{self, Refusal};
use crate::response::{cert_id_hashes_in, status_only};
use crate::source::{Lookup, Origin, Source};

use super::front::{Front, Hit};

/// The unsigned error answers (RFC 6960 §4.2.1: "If the value of responseStatus is one of the
/// error conditions, the responseBytes field is not set"), encoded once.
static MALFORMED_REQUEST: LazyLock<Bytes> =
    LazyLock::new(|| Bytes::from(status_only(OcspResponseStatus::MalformedRequest)));
static TRY_LATER: LazyLock<Bytes> =
    LazyLock::new(|| Bytes::from(status_only(OcspResponseStatus::TryLater)));
static UNAUTHORIZED: LazyLock<Bytes> =
    LazyLock::new(|| Bytes::from(status_only(OcspResponseStatus::Unauthorized)));

/// RFC 6960 Appendix A.1: "Content-Type: application/ocsp-request".
const OCSP_REQUEST: &str = "application/ocsp-request";
/// RFC 6960 Appendix A.2: "Content-Type: application/ocsp-response".
const OCSP_RESPONSE: &str = "application/ocsp-response";
/// For error answers and anything not a signed response: cache nothing.
const NO_CACHE: &str = "max-age=0, no-cache";

/// Standard base64 (RFC 4648 §4), padding optional: RFC 6960 Appendix A.1 asks for padding,
/// but clients and proxies have been seen dropping the `=` (or its `%3D` escape).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What the handler needs: who we answer for, where answers come from, and limits.
#[derive(Clone, Debug)]
pub struct AppState {
    pub issuers: Arc<Issuers>,
    pub source: Arc<dyn Source>,
    pub metrics: Arc<Metrics>,
    /// Largest request accepted, in DER bytes (POST body; a GET's decoded path).
    pub max_request_bytes: usize,
    /// CRL shards and lists (`/<issuer>/<shard>.crl`, `/<issuer>.json`; [`crate::crl::serve`]),
    /// when some issuer publishes CRLs.
    pub crl: Option<Arc<CrlServer>>,
}

/// The responder's routes. Everything goes to one fallback handler, which reads the raw
/// request path: a router that matched on path segments could collapse or split on the `/`
/// that base64 contains — `//` collapsed by routers caused OCSP outages (boulder#884,
/// vault#18938).
///
/// Each call builds its own [`Front`] (the memo of answered GET paths): the responder calls
/// this once per HTTP thread, `threads` in all, and they share [`Source::front_bytes`].
pub fn router(state: Arc<AppState>, threads: usize) -> Router {
    let front = Front::new(state.source.front_bytes() / threads.max(1));
    Router::new().fallback_service(Responder(Arc::new(Routed { state, front })))
}

/// A router's state: the shared [`AppState`] and the router's own [`Front`].
#[derive(Debug)]
struct Routed {
    state: Arc<AppState>,
    front: Front,
}

/// The handler as a `Service`: a [`Front`] hit is answered in `call`, as a ready future;
/// everything else runs [`handle`] (boxed, as an axum handler's future would be).
#[derive(Clone, Debug)]
struct Responder(Arc<Routed>);

type Answer = Result<Response, Infallible>;

impl Service<Request> for Responder {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Answer>, Pin<Box<dyn Future<Output = Answer> + Send>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if matches!(*req.method(), Method::GET | Method::HEAD) {
            let now = unix_now();
            if let Some(hit) = self.0.front.get(req.uri().path(), now, Instant::now()) {
                let inm = req.headers().get(header::IF_NONE_MATCH);
                return Either::Left(ready(Ok(front_hit(&self.0.state, &hit, now, inm))));
            }
        }
        let routed = self.0.clone();
        Either::Right(Box::pin(async move { Ok(handle(&routed, req).await) }))
    }
}

async fn handle(routed: &Routed, req: Request) -> Response {
    let state = &*routed.state;
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    if get && let Some(path) = crate::crl::serve::parse_path(req.uri().path()) {
        return crl_answer(state, path, req.headers()).await;
    }
    let if_none_match = req.headers().get(header::IF_NONE_MATCH).cloned();
    let (der, memo) = match *req.method() {
        Method::GET | Method::HEAD => (
            from_get_path(req.uri().path(), state.max_request_bytes),
            Some((&routed.front, req.uri().path())),
        ),
        Method::POST => (from_post(req, state.max_request_bytes).await, None),
        _ => {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                [(header::ALLOW, "GET, HEAD, POST")],
            )
                .into_response();
        }
    };
    // HEAD runs exactly the GET path: same status, same headers, same metrics. RFC 9110
    // §9.3.2: "The HEAD method is identical to GET except that the server MUST NOT send content
    // in the response"; §9.1: "All general-purpose servers MUST support the methods GET and
    // HEAD." axum's router drops the body of a HEAD answer after setting Content-Length from
    // it (`Route`, for the fallback too), so caches and probes see GET's Content-Length.
    match der {
        Ok(der) => answer(state, &der, if_none_match.as_ref(), memo).await,
        Err((http, why)) => {
            tracing::debug!("malformed request: {why}");
            refuse(&state.metrics, http, Refusal::Malformed)
        }
    }
}

/// A GET the [`Front`] answers: counted as the same request answered from the cache would be
/// (`answer`'s `Lookup::Found` branch: hash, cache hit, age and expiry, status).
fn front_hit(
    state: &AppState,
    hit: &Hit,
    now: i64,
    if_none_match: Option<&HeaderValue>,
) -> Response {
    let metrics = &state.metrics;
    metrics.cert_id_hash(Some(hit.hash));
    metrics.cache("hit");
    metrics.served(now - hit.this_update, hit.next_update - now);
    metrics.response(status_label(hit.status), Origin::Cache.label());
    signed(hit.next_update, &hit.parts, now, if_none_match)
}

fn status_label(status: CertStatus) -> &'static str {
    match status {
        CertStatus::Good => "good",
        CertStatus::Revoked { .. } => "revoked",
    }
}

/// A CRL shard or list (see [`crate::crl::serve`] for what each case gets).
async fn crl_answer(state: &AppState, path: CrlPath<'_>, headers: &HeaderMap) -> Response {
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, NO_CACHE)],
            "no such CRL\n",
        )
            .into_response()
    };
    let Some(crl) = &state.crl else {
        return not_found();
    };
    let (issuer, shard) = match path {
        CrlPath::Shard(issuer, shard) => (issuer, shard),
        CrlPath::List(issuer) => {
            return match crl.list(issuer) {
                Some(json) => (
                    StatusCode::OK,
                    [
                        (header::CONTENT_TYPE, "application/json"),
                        (header::CACHE_CONTROL, "public, max-age=3600"),
                    ],
                    json,
                )
                    .into_response(),
                None => not_found(),
            };
        }
        CrlPath::Other => return not_found(),
    };
    let served = match crl.shard(issuer, shard).await {
        Found::Shard(s) => s,
        Found::NotStored | Found::Unknown => return not_found(),
        Found::Unavailable(why) => {
            tracing::warn!(issuer, shard, "CRL unavailable: {why}");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [
                    (header::CACHE_CONTROL, NO_CACHE),
                    (header::RETRY_AFTER, "10"),
                ],
                "CRL temporarily unavailable\n",
            )
                .into_response();
        }
    };
    let now = unix_now();
    let etag = format!("\"{:x}\"", served.number);
    let last_modified = http_date(served.this_update);
    let max_age = crl.max_age(issuer, &served, now);
    let cache_control = if max_age > 0 {
        format!("public, max-age={max_age}")
    } else {
        NO_CACHE.to_owned()
    };
    // RFC 9110 §13.1.3: If-Modified-Since is ignored when If-None-Match is present.
    let not_modified = match headers.get(header::IF_NONE_MATCH) {
        Some(inm) => etag_matches(inm, etag.as_bytes()),
        None => headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .is_some_and(|t| t.as_secs() as i64 >= served.this_update),
    };
    let headers = [
        (header::CACHE_CONTROL, cache_control),
        (header::ETAG, etag),
        (header::LAST_MODIFIED, last_modified),
    ];
    if not_modified {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/pkix-crl")],
        headers,
        served.der.clone(),
    )
        .into_response()
}

type Rejected = (StatusCode, &'static str);

/// RFC 6960 Appendix A.1: "An OCSP request using the GET method is constructed as follows:
/// GET {url}/{url-encoding of base-64 encoding of the DER encoding of the OCSPRequest}".
///
/// The path is taken raw (never normalised) and:
/// - leading `/`s are dropped: a request's base64 always starts with `M` (DER SEQUENCE, 0x30),
///   and clients that build `{url}/{b64}` from a URL ending in `/` send `//M…` (Boulder
///   stripped one for the same reason); a `//` inside the base64 is kept;
/// - percent escapes are decoded (`%2F`, `%2B`, `%3D`);
/// - a space (raw, or `%20`) is read as `+`: some clients form-encode the base64 so `+`
///   arrives as a space, and Boulder accepted that too (space is never valid base64);
/// - padding is optional.
fn from_get_path(path: &str, max_request_bytes: usize) -> Result<Vec<u8>, Rejected> {
    // base64 is 4/3 of the DER and escaping can triple a character: a bound that needs no
    // decoding to check.
    if path.len() > max_request_bytes.saturating_mul(4) {
        return Err((StatusCode::URI_TOO_LONG, "GET path too long"));
    }
    let encoded = path.trim_start_matches('/');
    if encoded.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "GET without a request"));
    }
    let der = if encoded.bytes().any(|b| b == b'%' || b == b' ') {
        // Sized once: `collect` from `PercentDecode` (a lower size hint of a third) reallocates.
        let mut b64: Vec<u8> = Vec::with_capacity(encoded.len());
        b64.extend(percent_decode_str(encoded));
        for byte in &mut b64 {
            if *byte == b' ' {
                *byte = b'+';
            }
        }
        BASE64.decode(&b64)
    } else {
        // Nothing escaped (most clients): the path is the base64, no copy needed.
        BASE64.decode(encoded)
    }
    .map_err(|_| (StatusCode::BAD_REQUEST, "GET path is not base64"))?;
    if der.len() > max_request_bytes {
        return Err((StatusCode::URI_TOO_LONG, "GET request too large"));
    }
    Ok(der)
}

/// RFC 6960 Appendix A.1: "An OCSP request using the POST method is constructed as follows:
/// The Content-Type header has the value "application/ocsp-request", while the body of the
/// message is the binary value of the DER encoding of the OCSPRequest."
async fn from_post(req: Request, max_request_bytes: usize) -> Result<Vec<u8>, Rejected> {
    if !is_ocsp_request(req.headers()) {
        return Err((
            StatusCode::BAD_REQUEST,
            "POST without Content-Type: application/ocsp-request",
        ));
    }
    // Refuse on the declared length before reading a byte; `to_bytes` enforces the cap on
    // bodies that lie or are chunked.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_request_bytes as u64) {
        return Err((StatusCode::PAYLOAD_TOO_LARGE, "POST body too large"));
    }
    match axum::body::to_bytes(req.into_body(), max_request_bytes).await {
        Ok(bytes) => Ok(bytes.to_vec()),
        // `to_bytes` reports the limit as a length-limit error; any other error is a broken
        // connection, for which the status hardly matters.
        Err(e) if is_length_limit(&e) => {
            Err((StatusCode::PAYLOAD_TOO_LARGE, "POST body too large"))
        }
        Err(_) => Err((StatusCode::BAD_REQUEST, "POST body unreadable")),
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// `application/ocsp-request`, ignoring case and parameters (RFC 9110 §8.3.1: the type and
/// subtype are case-insensitive).
fn is_ocsp_request(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(OCSP_REQUEST))
}

/// `memo`: for a GET, this router's [`Front`] and the request's path, to keep the answer under.
async fn answer(
    state: &AppState,
    der: &[u8],
    if_none_match: Option<&HeaderValue>,
    memo: Option<(&Front, &str)>,
) -> Response {
    let req = match request::parse(der) {
        Ok(r) => r,
        Err(e) => {
            if matches!(e, request::RequestError::UnknownHash(_)) {
                state.metrics.cert_id_hash(None);
            }
            tracing::debug!("request refused: {e}");
            let http = match e.status() {
                Refusal::Malformed => StatusCode::BAD_REQUEST,
                Refusal::Unauthorized => StatusCode::OK,
            };
            return refuse(&state.metrics, http, e.status());
        }
    };
    state.metrics.cert_id_hash(Some(req.hash));
    let Some(issuer) = state
        .issuers
        .find(req.hash, &req.issuer_name_hash, &req.issuer_key_hash)
    else {
        tracing::debug!(serial = %req.serial, "request for an issuer we do not serve");
        return refuse(&state.metrics, StatusCode::OK, Refusal::Unauthorized);
    };
    let (lookup, until) = state
        .source
        .response_until(&issuer.name, &req.serial, req.hash)
        .await;
    match lookup {
        Lookup::Found(response, origin) => {
            let now = unix_now();
            // The last gate: whatever a source returned, a response at or past its nextUpdate
            // is not sent (RFC 5019 §6.2 caching would keep it alive even longer).
            if response.next_update <= now {
                state.metrics.expired();
                // Per request, so debug: `ocsp_expired_total` is what to alert on.
                tracing::debug!(issuer = %issuer.name.0, serial = %req.serial, "stored response has expired; answering unauthorized");
                return refuse(&state.metrics, StatusCode::OK, Refusal::Unauthorized);
            }
            let parts = response
                .http
                .0
                .get_or_init(|| Box::new(http_parts(&response)));
            // A client accepts a response only if "the certificate identified in a received
            // response corresponds to the certificate that was identified in the
            // corresponding request" (RFC 6960 §3.2): a response with no SingleResponse for the
            // request's CertID hash answers nothing that was asked (`openssl ocsp` says "No
            // Status found"). Such a request gets `unauthorized`, which RFC 5019 §2.2.3 (and
            // RFC 9919 after it) gives as "the responder is not capable of responding
            // authoritatively" — what this responder is for that CertID; a client may retry
            // with the other hash.
            // The source asked the store for the response of the request's hash (one per
            // hash, `store::Slot`), which falls back to a response of the old layout (a
            // SingleResponse per hash) until it is re-signed; this check reads the signed
            // bytes, not `presigner.cert_id_hashes` (the responder may run with another file
            // than the pre-signer): the bytes are what the client will check, so they decide.
            if !parts.cert_id_hashes.contains(&req.hash) {
                tracing::debug!(issuer = %issuer.name.0, serial = %req.serial, hash = req.hash.name(), "stored response has no SingleResponse for this CertID hash; answering unauthorized");
                return refuse(&state.metrics, StatusCode::OK, Refusal::Unauthorized);
            }
            state
                .metrics
                .served(now - response.this_update, response.next_update - now);
            state
                .metrics
                .response(status_label(response.status), origin.label());
            if let (Some((front, path)), Some(until)) = (memo, until) {
                front.put(path, req.hash, &response, parts, until);
            }
            signed(response.next_update, parts, now, if_none_match)
        }
        Lookup::NotFound => refuse(&state.metrics, StatusCode::OK, Refusal::Unauthorized),
        Lookup::Unavailable(e) => {
            // Per request, so debug: `Health` logs the store's failure once, at warn.
            tracing::debug!(serial = %req.serial, "no response available: {e}");
            state.metrics.response("try_later", "none");
            error_response(StatusCode::SERVICE_UNAVAILABLE, &TRY_LATER)
        }
    }
}

/// An error answer: an unsigned `OCSPResponse` carrying only `responseStatus`.
fn refuse(metrics: &Metrics, http: StatusCode, refusal: Refusal) -> Response {
    let (label, der) = match refusal {
        Refusal::Malformed => ("malformed", &*MALFORMED_REQUEST),
        Refusal::Unauthorized => ("unauthorized", &*UNAUTHORIZED),
    };
    metrics.response(label, "none");
    error_response(http, der)
}

fn error_response(http: StatusCode, der: &Bytes) -> Response {
    (
        http,
        [
            (header::CONTENT_TYPE, OCSP_RESPONSE),
            (header::CACHE_CONTROL, NO_CACHE),
        ],
        der.clone(),
    )
        .into_response()
}

/// A signed response with the caching headers of RFC 5019 §6.2 (and Boulder's responder):
///
/// - `Last-Modified`: thisUpdate; `Expires`: nextUpdate;
/// - `Cache-Control: max-age=<nextUpdate - now>, public, no-transform, must-revalidate` — the
///   response is the same for everyone (public), must not be re-encoded by proxies
///   (no-transform: the bytes are signed), and must not be served by a cache past nextUpdate;
/// - `ETag`: the quoted hex SHA-256 of the DER, so `If-None-Match` revalidations cost a 304.
///
/// RFC 9110 §15.4.5: a 304 carries the headers a 200 would have (Cache-Control, ETag, Expires,
/// Last-Modified), and no body.
fn signed(
    next_update: i64,
    parts: &HttpParts,
    now: i64,
    if_none_match: Option<&HeaderValue>,
) -> Response {
    let max_age = (next_update - now).max(0);
    // The response's own header map, filled in place: `(StatusCode, HeaderMap, Body)` would
    // build a second map and copy this one into it. Every value is precomputed
    // (`HttpParts`, `cache_control`): nothing is formatted per request.
    let not_modified = if_none_match.is_some_and(|v| etag_matches(v, parts.etag.as_bytes()));
    let mut answer = if not_modified {
        Response::new(Body::empty())
    } else {
        Response::new(Body::from(parts.body.clone()))
    };
    let headers = answer.headers_mut();
    headers.reserve(6);
    headers.insert(header::LAST_MODIFIED, parts.last_modified.clone());
    headers.insert(header::EXPIRES, parts.expires.clone());
    headers.insert(header::CACHE_CONTROL, cache_control(max_age));
    headers.insert(header::ETAG, parts.etag.clone());
    if not_modified {
        // RFC 9110 §8.6: a 304 may carry Content-Length only with the value a 200 would have.
        // Said explicitly, or the router's default (0, from the empty body) reaches a HEAD.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(parts.body.len()));
        *answer.status_mut() = StatusCode::NOT_MODIFIED;
        return answer;
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(OCSP_RESPONSE),
    );
    answer
}

/// `Cache-Control` for a response `max_age` seconds from its nextUpdate: `max-age=<n>, public,
/// no-transform, must-revalidate`. Formatted once per value per thread: the responses a
/// responder serves in one second share a few hundred nextUpdates at most, and a clone of a
/// `HeaderValue` made from `Bytes` is a reference count, where formatting is an allocation.
fn cache_control(max_age: i64) -> HeaderValue {
    const SLOTS: usize = 256;
    thread_local! {
        static MEMO: std::cell::RefCell<Vec<Option<(i64, HeaderValue)>>> =
            std::cell::RefCell::new(vec![None; SLOTS]);
    }
    let format = || {
        let text = format!("max-age={max_age}, public, no-transform, must-revalidate");
        // ASCII we formatted: cannot fail; an empty value would only drop the directive.
        HeaderValue::from_maybe_shared(Bytes::from(text))
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    };
    MEMO.try_with(|memo| {
        let mut memo = memo.borrow_mut();
        let slot = &mut memo[max_age.rem_euclid(SLOTS as i64) as usize];
        match slot {
            Some((age, value)) if *age == max_age => value.clone(),
            _ => {
                let value = format();
                *slot = Some((max_age, value.clone()));
                value
            }
        }
    })
    .unwrap_or_else(|_| format())
}

/// Computes [`HttpParts`] once per stored response.
fn http_parts(response: &StoredResponse) -> HttpParts {
    let etag = format!("\"{}\"", hex::encode(Sha256::digest(&response.der)));
    // ASCII we formatted: `from_str` cannot fail on it; `from_static("")` is never reached.
    let value = |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""));
    HttpParts {
        body: Bytes::from(response.der.clone()),
        etag: value(etag),
        last_modified: value(http_date(response.this_update)),
        expires: value(http_date(response.next_update)),
        // The pre-signer only stores responses it built; one that does not parse answers no
        // request (unauthorized) rather than being sent as it is.
        cert_id_hashes: cert_id_hashes_in(&response.der).unwrap_or_default(),
    }
}

/// RFC 9110 §13.1.2: `If-None-Match` is `*` or a list of entity tags, compared weakly (a `W/`
/// prefix is ignored).
fn etag_matches(header: &HeaderValue, etag: &[u8]) -> bool {
    header
        .as_bytes()
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .any(|tag| tag == b"*" || tag.strip_prefix(b"W/").unwrap_or(tag) == etag)
}

/// An IMF-fixdate (RFC 9110 §5.6.7) for Unix seconds.
fn http_date(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    httpdate::fmt_http_date(t)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MAX: usize = 10_000;

    #[test]
    fn get_paths_tolerate_escapes_spaces_padding_and_leading_slashes() {
        // A DER-ish input whose base64 holds `+`, `/` and padding.
        let der = [0x30, 0x08, 0x00, 0xfb, 0xef, 0xbe, 0xff, 0xff, 0xff, 0x00];
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        assert_eq!(b64, "MAgA++++////AA==");
        for path in [
            "/MAgA++++////AA==",
            "/MAgA++++////AA",
            "//MAgA++++////AA==",
            "///MAgA++++////AA=",
            "/MAgA%2B%2B%2B%2B%2F%2F%2F%2FAA%3D%3D",
            "/MAgA%2b%2b++%2f%2F//AA%3d",
            "/MAgA    ////AA==",
            "/MAgA%20%20++////AA==",
        ] {
            assert_eq!(from_get_path(path, MAX).unwrap(), der, "{path}");
        }
        for path in [
            "/",
            "",
            "//",
            "/MAgA++++////AA===",
            "/not*base64",
            "/MAgA%ZZ",
            "/MAgA----____AA==",
        ] {
            assert_eq!(
                from_get_path(path, MAX).unwrap_err().0,
                StatusCode::BAD_REQUEST,
                "{path}"
            );
        }
        let long = format!("/{}", "A".repeat(4 * MAX));
        assert_eq!(
            from_get_path(&long, MAX).unwrap_err().0,
            StatusCode::URI_TOO_LONG
        );
    }

    #[test]
    fn etags_compare_weakly_and_in_lists() {
        let tag = b"\"ab\"";
        for (header, expect) in [
            ("\"ab\"", true),
            ("W/\"ab\"", true),
            ("\"x\", \"ab\"", true),
            ("*", true),
            ("\"AB\"", false),
            ("ab", false),
            ("", false),
        ] {
            assert_eq!(
                etag_matches(&HeaderValue::from_static(header), tag),
                expect,
                "{header}"
            );
        }
    }

    #[test]
    fn http_dates_are_imf_fixdate() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn error_bodies_are_ocsp_responses_without_bytes() {
        use der07::Decode;
        use x509_ocsp::OcspResponse;
        for (der, status, bytes) in [
            (
                &MALFORMED_REQUEST,
                OcspResponseStatus::MalformedRequest,
                [0x30, 0x03, 0x0a, 0x01, 0x01],
            ),
            (
                &TRY_LATER,
                OcspResponseStatus::TryLater,
                [0x30, 0x03, 0x0a, 0x01, 0x03],
            ),
            (
                &UNAUTHORIZED,
                OcspResponseStatus::Unauthorized,
                [0x30, 0x03, 0x0a, 0x01, 0x06],
            ),
        ] {
            assert_eq!(der.as_ref(), bytes);
            let r = OcspResponse::from_der(der).unwrap();
            assert_eq!(r.response_status, status);
            assert!(r.response_bytes.is_none());
        }
    }
}
