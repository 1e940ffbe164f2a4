//! revokeCert (RFC 8555 §7.6), signed by the certificate's account or by its key; the
//! revocation itself is [`crate::ca::revoke`]'s.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::signed::{AnyKey, Signed};
use super::{Result, Shared};
use crate::Problem;
use crate::ca;

#[derive(Deserialize)]
struct RevokeCert {
    certificate: String,
    #[serde(default)]
    reason: Option<u8>,
}

pub(super) async fn revoke_cert(State(ca): Shared, signed: Signed<AnyKey>) -> Result<Response> {
    let authed = signed.0;
    let request: RevokeCert = authed.jws.json()?;
    let der_bytes = crate::unb64(&request.certificate)
        .ok_or_else(|| Problem::malformed("certificate is not base64url"))?;
    ca::revoke::revoke(
        &ca,
        &der_bytes,
        request.reason,
        authed.account.as_ref(),
        &authed.key,
    )
    .await?;
    Ok(StatusCode::OK.into_response())
}
