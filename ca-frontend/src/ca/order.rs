//! New orders (RFC 8555 §7.4): the identifier policy, the profile, the certificate an ARI
//! renewal replaces (RFC 9773 §5), the per-account limit, and the order stored with one pending
//! authorization per name.

use std::collections::BTreeSet;

use super::{Ca, Result, ari, authz, ratelimit};
use crate::metrics::Limit;
use crate::model::{Account, Identifier, Order, OrderStatus};
use crate::{Problem, ProblemType, random_id, unix_now};

/// What a new-order request asks for, as the web front end read it.
#[derive(Debug)]
pub(crate) struct OrderRequest {
    pub identifiers: Vec<Identifier>,
    pub profile: Option<String>,
    /// The ARI CertID of the certificate this order renews.
    pub replaces: Option<String>,
}

/// Checks `request` for `account` and stores it as a pending order.
pub(crate) async fn new_order(ca: &Ca, account: &Account, request: OrderRequest) -> Result<Order> {
    if request.identifiers.is_empty() {
        return Err(Problem::malformed("an order needs at least one identifier").into());
    }
    if request.identifiers.len() > ca.config.ca.max_names {
        return Err(Problem::new(
            ProblemType::RejectedIdentifier,
            format!("at most {} names per certificate", ca.config.ca.max_names),
        )
        .into());
    }
    let mut names = BTreeSet::new();
    for id in &request.identifiers {
        if id.kind != "dns" {
            return Err(Problem::new(
                ProblemType::UnsupportedIdentifier,
                format!("identifier type `{}` is not supported", id.kind),
            )
            .into());
        }
        let checked = crate::names::check_dns_name(&id.value, &ca.config.ca.allowed_special_tlds)?;
        names.insert(checked.name);
    }
    let profile = request
        .profile
        .unwrap_or_else(|| ca.config.ca.default_profile.clone());
    if ca.config.profile(&profile).is_none() {
        return Err(Problem::new(
            ProblemType::InvalidProfile,
            format!("unknown profile `{profile}`; see the directory's meta.profiles"),
        )
        .into());
    }
    // RFC 9773 §5: the replaced certificate must be this account's, share a name with the
    // order, and not be replaced already (checked again, atomically, when finalization begins).
    if let Some(replaces) = &request.replaces {
        let record = ari::certificate(ca, replaces).await?;
        if record.account_id != account.id {
            return Err(
                Problem::unauthorized("`replaces` names a certificate of another account").into(),
            );
        }
        if !record.names.iter().any(|n| names.contains(n)) {
            return Err(Problem::malformed(
                "`replaces` names a certificate that shares no identifier with this order",
            )
            .into());
        }
        if let Some(by) = &record.replaced_by {
            return Err(Problem::new(
                ProblemType::AlreadyReplaced,
                format!(
                    "the certificate was already replaced by order {}",
                    ca.order_url(by)
                ),
            )
            .into());
        }
    }
    let now = unix_now();
    ca.metrics.limited(
        Limit::OrdersPerAccountPerHour,
        ratelimit::new_order(ca.db.as_ref(), &ca.config.limits, &account.id, now).await,
    )?;
    let order_id = random_id()?;
    let expires =
        now + i64::try_from(ca.config.validation.pending_hours * 3600).unwrap_or(i64::MAX / 2);
    let authzs = authz::new_authorizations(&account.id, &order_id, &names, expires)?;
    let order = Order {
        id: order_id,
        account_id: account.id.clone(),
        status: OrderStatus::Pending,
        expires,
        identifiers: names
            .iter()
            .map(|n| Identifier {
                kind: "dns".into(),
                value: n.clone(),
            })
            .collect(),
        authz_ids: authzs.iter().map(|a| a.id.clone()).collect(),
        profile,
        replaces: request.replaces,
        certificate: None,
        error: None,
        created: now,
        caa_corroboration: Vec::new(),
    };
    ca.db.insert_order(&order, &authzs).await?;
    ca.metrics.order(OrderStatus::Pending);
    Ok(order)
}
