//! Certificate download (RFC 8555 §7.4.2): the PEM chain, to the account it was issued to.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::signed::Signed;
use super::{Result, Shared};
use crate::Problem;

pub(super) async fn certificate(
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
