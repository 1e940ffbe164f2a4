//! The web front end (Boulder's WFE): the ACME resources of RFC 8555 §7 and RFC 9773 on axum,
//! one module per resource. Handlers parse and authenticate requests and shape responses; what
//! a request does to the CA (orders, issuance, revocation, validation) is [`crate::ca`]'s.
//!
//! Every response carries a fresh `Replay-Nonce`, `Link: <directory>;rel="index"` and
//! `Cache-Control: no-store`; every POST is a JWS whose `url` must be exactly the URL it was sent
//! to (under `server.base_url`), checked by the [`signed::Signed`] extractor. Errors are
//! `application/problem+json`; internal errors are logged with their detail and reach the client
//! as `serverInternal` without it.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::Problem;
use crate::ca::Ca;

mod account;
mod authz;
mod certificate;
mod directory;
mod order;
mod renewal_info;
mod revoke;
mod signed;

type Shared = State<Arc<Ca>>;
type Result<T> = std::result::Result<T, crate::Error>;

/// The router for `ca`.
pub fn router(ca: Arc<Ca>) -> Router {
    let metrics = ca.metrics.clone();
    Router::new()
        .route("/directory", get(directory::directory))
        .route(
            "/acme/new-nonce",
            get(directory::new_nonce).head(directory::new_nonce),
        )
        .route("/acme/new-account", post(account::new_account))
        .route("/acme/acct/{id}", post(account::account))
        .route("/acme/acct/{id}/orders", post(account::account_orders))
        .route("/acme/new-order", post(order::new_order))
        .route("/acme/order/{id}", post(order::order))
        .route("/acme/order/{id}/finalize", post(order::finalize))
        .route("/acme/authz/{id}", post(authz::authorization))
        .route("/acme/chall/{authz}/{kind}", post(authz::challenge))
        .route("/acme/cert/{serial}", post(certificate::certificate))
        .route("/acme/revoke-cert", post(revoke::revoke_cert))
        .route("/acme/key-change", post(account::key_change))
        .route("/acme/renewal-info/{id}", get(renewal_info::renewal_info))
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
