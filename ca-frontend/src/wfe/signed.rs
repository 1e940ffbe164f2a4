//! Authentication of every ACME POST (RFC 8555 §6.2–6.5): the body is a JWS with the exact URL
//! it was sent to, a nonce this server issued and has not seen back, and a key — an existing
//! account's (`kid`) or one in the request (`jwk`) — under which it verifies. [`Signed`] is the
//! body extractor of every POST handler, so that no handler can forget any of it.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use super::Result;
use crate::ca::Ca;
use crate::jws::{ParsedJws, PublicKey};
use crate::model::{Account, AccountStatus};
use crate::{Problem, ProblemType};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyBy {
    /// `kid`: an existing account (most requests).
    Account,
    /// `jwk`: new-account.
    Jwk,
    /// Either (revokeCert: by account, or by the certificate's key).
    Either,
}

/// Who may sign a request: the rule a [`Signed`] extractor applies.
pub(super) trait KeyRule {
    const BY: KeyBy;
}

/// An existing account's key (`kid`): every request but the two below.
#[derive(Debug)]
pub(super) struct AccountKey;
impl KeyRule for AccountKey {
    const BY: KeyBy = KeyBy::Account;
}

/// A key in the request (`jwk`): new-account.
#[derive(Debug)]
pub(super) struct NewKey;
impl KeyRule for NewKey {
    const BY: KeyBy = KeyBy::Jwk;
}

/// Either: revokeCert, by the account or by the certificate's key.
#[derive(Debug)]
pub(super) struct AnyKey;
impl KeyRule for AnyKey {
    const BY: KeyBy = KeyBy::Either;
}

/// A POST whose JWS verified under rule `R`: the body extractor of every ACME POST handler, so
/// that authentication is one piece of code that no handler can forget.
pub(super) struct Signed<R = AccountKey>(pub(super) Authed, std::marker::PhantomData<R>);

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

pub(super) struct Authed {
    pub(super) jws: ParsedJws,
    /// The account that signed (`kid`), or none (`jwk`).
    pub(super) account: Option<Account>,
    pub(super) key: PublicKey,
}

impl Authed {
    pub(super) fn account(&self) -> Result<&Account> {
        self.account.as_ref().ok_or_else(|| {
            Problem::malformed("this request must be signed by an account key (`kid`)").into()
        })
    }

    pub(super) fn is_post_as_get(&self) -> bool {
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
