//! Accounts (RFC 8555 §7.3): creation and look-up by key, reading and updating (contacts,
//! deactivation), the account's orders, and key rollover (§7.3.5).

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::signed::{Authed, NewKey, Signed};
use super::{Result, Shared, json_response, with_header};
use crate::ca::{Ca, ratelimit};
use crate::jws::{ParsedJws, PublicKey};
use crate::metrics::Limit;
use crate::model::{Account, AccountStatus};
use crate::{Problem, ProblemType, random_id, rfc3339, unix_now};

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

pub(super) async fn new_account(State(ca): Shared, signed: Signed<NewKey>) -> Result<Response> {
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

pub(super) async fn account(
    State(ca): Shared,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<Response> {
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

pub(super) async fn account_orders(
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

pub(super) async fn key_change(State(ca): Shared, signed: Signed) -> Result<Response> {
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
