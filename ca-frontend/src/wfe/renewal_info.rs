//! renewalInfo (RFC 9773 §4): when the subscriber of a certificate should renew it.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::Response;

use super::{Result, Shared, json_response, with_header};
use crate::ca::ari;
use crate::unix_now;

/// RFC 9773 §4.3: how long a client should wait before asking about a certificate again.
const ARI_RETRY_AFTER_SECS: u64 = 6 * 3600;

pub(super) async fn renewal_info(State(ca): Shared, Path(id): Path<String>) -> Result<Response> {
    let record = ari::certificate(&ca, &id).await?;
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
