//! Orders (RFC 8555 §7.4): new-order, reading an order, and finalize; what they do to the CA is
//! [`crate::ca::order`]'s and [`crate::ca::finalize`]'s.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde::Deserialize;

use super::signed::{Authed, Signed};
use super::{Result, Shared, json_response, with_header};
use crate::ca::order::OrderRequest;
use crate::ca::{self, Ca};
use crate::model::{Identifier, Order, OrderStatus};
use crate::{Problem, ProblemType, rfc3339};

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

pub(super) async fn new_order(State(ca): Shared, signed: Signed) -> Result<Response> {
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
    let order = ca::order::new_order(
        ca,
        &account,
        OrderRequest {
            identifiers: request.identifiers,
            profile: request.profile,
            replaces: request.replaces,
        },
    )
    .await?;
    Ok(order_response(
        ca,
        StatusCode::CREATED,
        &order,
        OrderStatus::Pending,
    ))
}

pub(super) async fn order(
    State(ca): Shared,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<Response> {
    let authed = signed.0;
    let (order, _, status) = ca::owned_order(&ca, &id, authed.account()?).await?;
    Ok(order_response(&ca, StatusCode::OK, &order, status))
}

#[derive(Deserialize)]
struct Finalize {
    csr: String,
}

pub(super) async fn finalize(
    State(ca): Shared,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<Response> {
    finalize_inner(&ca, &id, signed.0).await
}

async fn finalize_inner(ca: &Ca, id: &str, authed: Authed) -> Result<Response> {
    let account = authed.account()?.clone();
    let ready = ca::finalize::ready_order(ca, id, &account).await?;
    let request: Finalize = authed.jws.json()?;
    let csr_der = crate::unb64(&request.csr)
        .ok_or_else(|| Problem::new(ProblemType::BadCsr, "csr is not base64url"))?;
    let (order, status) = ca::finalize::finalize(ca, &account, ready, &csr_der).await?;
    Ok(order_response(ca, StatusCode::OK, &order, status))
}
