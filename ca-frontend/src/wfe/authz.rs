//! Authorizations and their challenges (RFC 8555 §7.5): reading and deactivating an
//! authorization, reading a challenge and answering it (which starts its validation,
//! [`crate::ca::authz`]).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde::Deserialize;

use super::signed::{Authed, Signed};
use super::{Result, Shared, json_response, with_header};
use crate::ca::{self, Ca};
use crate::model::{Authorization, AuthzStatus, Challenge, ChallengeStatus, ChallengeType};
use crate::{Problem, rfc3339, unix_now};

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

pub(super) async fn authorization(
    State(ca): Shared,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<Response> {
    let authed = signed.0;
    let mut authz = ca::owned_authz(&ca, &id, authed.account()?).await?;
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
        authz = ca::authz::deactivate(&ca, authz, authed.account()?, now).await?;
    }
    let r = json_response(StatusCode::OK, &authz_json(&ca, &authz, now));
    Ok(if authz.status_at(now) == AuthzStatus::Pending {
        with_header(r, header::RETRY_AFTER, "1")
    } else {
        r
    })
}

pub(super) async fn challenge(
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
    let mut authz = ca::owned_authz(&ca, authz_id, &account).await?;
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
        authz = ca::authz::start_validation(&ca, authz, index, &account, now).await?;
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
