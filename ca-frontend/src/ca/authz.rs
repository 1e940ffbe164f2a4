//! Authorizations (RFC 8555 §7.5): made with their challenges for a new order, deactivated on
//! request, and validated in the background when a challenge is answered — corroborated from
//! the remote perspectives (BR §3.2.2.9) — with the outcome recorded only over the record the
//! validation started from.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{Ca, Result, owned_authz};
use crate::challenge::perspective::CheckRequest;
use crate::jws::key_authorization;
use crate::model::{
    Account, Authorization, AuthzStatus, Challenge, ChallengeStatus, ChallengeType, Identifier,
};
use crate::{Error, random_id, unix_now};

/// One pending authorization per name of a new order, each with the challenges that can prove
/// it.
pub(crate) fn new_authorizations(
    account_id: &str,
    order_id: &str,
    names: &BTreeSet<String>,
    expires: i64,
) -> Result<Vec<Authorization>> {
    let mut authzs = Vec::with_capacity(names.len());
    for name in names {
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
            account_id: account_id.to_owned(),
            order_id: order_id.to_owned(),
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
    Ok(authzs)
}

/// Deactivates `authz` (RFC 8555 §7.5.2) for its `account`; returns it as it now is. Never
/// answers for a deactivation that did not happen.
pub(crate) async fn deactivate(
    ca: &Ca,
    mut authz: Authorization,
    account: &Account,
    now: i64,
) -> Result<Authorization> {
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
        authz = owned_authz(ca, &authz.id, account).await?;
    }
    // Never report a deactivation that did not happen.
    if matches!(
        authz.status_at(now),
        AuthzStatus::Pending | AuthzStatus::Valid
    ) {
        return Err(Error::Internal(
            "the authorization kept changing while it was being deactivated; retry".into(),
        ));
    }
    Ok(authz)
}

/// Answers a challenge (RFC 8555 §7.5.1): challenge `index` of `authz`, if it and the
/// authorization are pending and no other challenge is being validated, turns processing and is
/// validated in the background. Returns the authorization as it now is.
pub(crate) async fn start_validation(
    ca: &Arc<Ca>,
    mut authz: Authorization,
    index: usize,
    account: &Account,
    now: i64,
) -> Result<Authorization> {
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
            let key_auth = key_authorization(&authz.challenges[index].token, &account.thumbprint);
            tokio::spawn(run_validation(ca.clone(), authz.clone(), index, key_auth));
        } else {
            authz = owned_authz(ca, &authz.id, account).await?;
        }
    }
    Ok(authz)
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
