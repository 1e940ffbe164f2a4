//! Finalization (RFC 8555 §7.4) and issuance: the order must be ready; the CSR is checked
//! against it, the limits and CAA (corroborated) are checked, the order turns processing in one
//! transaction with the domains' reservations, and the certificate is built, linted, signed,
//! verified and recorded. Its `good` OCSP response is stored before the order reads `valid`;
//! a failure after the certificate is recorded leaves the order processing for [`republish`]
//! to complete, never invalid.

use std::collections::BTreeSet;

use ocsp::{CertStatus, Serial};
use sha2::{Digest, Sha256};

use super::{Ca, Result, ari, owned_order, ratelimit, republish};
use crate::db::{Begun, Issuance};
use crate::issuance::{self, CheckedCsr, LeafPlan};
use crate::jws::PublicKey;
use crate::metrics::{GatewayCall, Limit};
use crate::model::{Account, Authorization, CertificateRecord, Order, OrderStatus};
use crate::{Error, Problem, ProblemType, unix_now};

/// An order of the account's that is ready to be finalized.
#[derive(Debug)]
pub(crate) struct ReadyOrder {
    order: Order,
    authzs: Vec<Authorization>,
    /// When the finalize request came: the issuance latency is measured from here.
    started: std::time::Instant,
}

/// Order `id` of `account`, if it is ready; `orderNotReady` saying why if not.
pub(crate) async fn ready_order(ca: &Ca, id: &str, account: &Account) -> Result<ReadyOrder> {
    let started = std::time::Instant::now();
    let (order, authzs, status) = owned_order(ca, id, account).await?;
    if status != OrderStatus::Ready {
        return Err(Problem::new(
            ProblemType::OrderNotReady,
            format!(
                "the order is {}, not ready: {}",
                status.as_str(),
                match status {
                    OrderStatus::Pending => "complete its authorizations first",
                    OrderStatus::Processing | OrderStatus::Valid => "it was already finalized",
                    _ => "it cannot be finalized",
                }
            ),
        )
        .into());
    }
    Ok(ReadyOrder {
        order,
        authzs,
        started,
    })
}

/// Finalizes `ready` with the CSR `csr_der`: the order as it now is, and its status (valid,
/// or processing if the certificate is recorded but its publication must be repaired).
pub(crate) async fn finalize(
    ca: &Ca,
    account: &Account,
    ready: ReadyOrder,
    csr_der: &[u8],
) -> Result<(Order, OrderStatus)> {
    let ReadyOrder {
        order,
        authzs,
        started,
    } = ready;
    let names: BTreeSet<String> = order.identifiers.iter().map(|i| i.value.clone()).collect();
    // The policy again: an order made before a name was refused must not be issued for.
    for name in &names {
        crate::names::check_dns_name(name, &ca.config.ca.allowed_special_tlds)?;
    }
    let checked = issuance::check_csr(
        csr_der,
        &names,
        &ca.config.ca.rsa_key_sizes,
        &account.thumbprint,
    )?;
    let name_list: Vec<String> = names.iter().cloned().collect();
    // A renewal that names the certificate it replaces (ARI, RFC 9773 §5) is not held back by
    // the per-domain limit for the names it renews (an incident's mass renewal must not be
    // rate-limited into failure); names it adds count as any new certificate's do.
    let replaced = match &order.replaces {
        Some(cert_id) => Some(ari::certificate(ca, cert_id).await?),
        None => None,
    };
    let counted =
        ratelimit::counted_domains(&name_list, replaced.as_ref().map(|r| r.names.as_slice()));
    ca.metrics.limited(
        Limit::CertificatesPerDomainPerWeek,
        ratelimit::certificates(ca.db.as_ref(), &ca.config.limits, &counted, unix_now()).await,
    )?;
    let caa_corroboration = ca
        .corroborator
        .check_order_caa(&ca.validator, &authzs, &ca.account_url(&account.id))
        .await?;
    // Taken after the CAA lookups (up to a DNS timeout per name): the reservation's time must
    // say when signing starts, or the stalled-order repair could take a slow finalization for
    // an abandoned one while it is still signing.
    let now = unix_now();
    // Ready → processing, once (a second finalize, or another frontend, loses this race), in
    // one transaction with the domains' reservations under the serial to be signed and the
    // replaced certificate's `replaced_by`: concurrent finalizations can neither overshoot a
    // limit together nor both replace one certificate.
    let serial_bytes = issuance::random_serial()?;
    let mut processing = order.clone();
    processing.status = OrderStatus::Processing;
    processing.certificate = Some(hex::encode(&serial_bytes));
    processing.caa_corroboration = caa_corroboration;
    let limit = u64::from(ca.config.limits.certificates_per_domain_per_week);
    let issuance = Issuance {
        order: processing.clone(),
        expected: order.status,
        serial: hex::encode(&serial_bytes),
        issued: now,
        domains: ratelimit::registered_domains(&name_list),
        counted,
        since: now - ratelimit::WEEK,
        limit,
        replaces: replaced.as_ref().map(|r| r.serial.clone()),
    };
    match ca.db.begin_issuance(&issuance).await? {
        Begun::Started => ca.metrics.order(OrderStatus::Processing),
        Begun::NotReady => {
            return Err(Problem::new(
                ProblemType::OrderNotReady,
                "the order is already being finalized, or an authorization is no longer valid",
            )
            .into());
        }
        Begun::Limited(domain) => {
            ca.metrics.limit_hit(Limit::CertificatesPerDomainPerWeek);
            return Err(ratelimit::domain_limited(&domain, limit));
        }
        Begun::AlreadyReplaced(by) => {
            return Err(Problem::new(
                ProblemType::AlreadyReplaced,
                format!(
                    "the certificate was already replaced by order {}",
                    ca.order_url(&by)
                ),
            )
            .into());
        }
    }
    let mark = republish::mark();
    let record = match sign_and_record(ca, &processing, account, checked, serial_bytes, now, mark)
        .await
    {
        Ok(record) => record,
        Err(e) => {
            let problem = Problem::from(e);
            let mut invalid = processing.clone();
            invalid.status = OrderStatus::Invalid;
            invalid.certificate = None;
            invalid.error = Some(problem.to_json());
            // Nothing recorded: the reservations and the replacement mark go, the order is
            // invalid. Recorded after all (the write's answer was lost): it is finished below.
            if ca
                .db
                .abandon_issuance(&invalid, &issuance.serial, issuance.replaces.as_deref())
                .await?
            {
                ca.metrics.order(OrderStatus::Invalid);
                return Err(problem.into());
            }
            tracing::warn!(order = %processing.id, error = %problem, "recording a certificate failed, yet it is recorded");
            match ca.db.certificate(&issuance.serial).await? {
                Some(record) => record,
                None => return Err(problem.into()),
            }
        }
    };
    Ok(publish_and_complete(ca, processing, &record, mark, started).await)
}

/// Publishes a recorded certificate's `good` OCSP response and completes its order. A failure
/// here (the gateway busy or gone, the OCSP store unwritable) leaves a good certificate
/// recorded, so the order is never made invalid: it stays processing, its record keeps the
/// unpublished mark, and [`republish`] publishes and completes it. The client, told to poll,
/// sees it valid then.
async fn publish_and_complete(
    ca: &Ca,
    processing: Order,
    record: &CertificateRecord,
    mark: i64,
    started: std::time::Instant,
) -> (Order, OrderStatus) {
    let published = async {
        republish::publish_record(ca, record, CertStatus::Good).await?;
        let mut valid = processing.clone();
        valid.status = OrderStatus::Valid;
        valid.certificate = Some(record.serial.clone());
        ca.db
            .ocsp_published(&record.serial, Some(mark), Some(&valid))
            .await?;
        Ok::<_, Error>(valid)
    }
    .await;
    match published {
        Ok(valid) => {
            ca.metrics.issued(started);
            (valid, OrderStatus::Valid)
        }
        Err(e) => {
            tracing::error!(order = %processing.id, serial = %record.serial, error = %e, "a recorded certificate's OCSP response or order could not be saved; the repair pass completes it");
            (processing, OrderStatus::Processing)
        }
    }
}

/// Builds, lints, signs, checks and records the certificate (with the unpublished `mark`,
/// [`republish`]); its `good` OCSP response is stored by [`publish_and_complete`] before the
/// client may learn of it.
async fn sign_and_record(
    ca: &Ca,
    order: &Order,
    account: &Account,
    csr: CheckedCsr,
    serial: Vec<u8>,
    now: i64,
    mark: i64,
) -> Result<CertificateRecord> {
    let profile = ca.config.profile(&order.profile).ok_or_else(|| {
        Error::Internal(format!(
            "order {} has unknown profile {}",
            order.id, order.profile
        ))
    })?;
    // Backdated a minute for clients whose clocks run a little slow; the lifetime stays exact.
    let not_before = now - 60;
    // The shard is fixed now, by the serial, for the certificate's life.
    let crl_url = match &ca.crl_shards {
        Some(shards) if profile.status.crl() => {
            Some(shards.url_for(&Serial::from_be_bytes(&serial)))
        }
        _ => None,
    };
    let plan = LeafPlan {
        serial,
        names: csr.names.clone(),
        spki: csr.spki.clone(),
        rsa: matches!(csr.key, PublicKey::Rsa { .. }),
        not_before,
        not_after: not_before + i64::try_from(profile.validity_hours * 3600).unwrap_or(0) - 1,
        ocsp_url: ca
            .config
            .ca
            .ocsp_url
            .clone()
            .filter(|_| profile.status.ocsp()),
        ca_issuers_url: ca.config.ca.ca_issuers_url.clone(),
        crl_url,
    };
    let tbs = issuance::build_leaf_tbs(&plan, &ca.intermediate, &ca.signer.algorithm)?;
    issuance::lint(&tbs, &plan, &ca.intermediate, &ca.signer.algorithm)?;
    let signature = ca
        .metrics
        .gateway(GatewayCall::SignCertificate, ca.signer.sign(tbs.clone()))
        .await?;
    let der_bytes = issuance::assemble(
        &tbs,
        &ca.signer.algorithm,
        &signature,
        &ca.intermediate.spki,
    )?;
    let serial = hex::encode(&plan.serial);
    let record = CertificateRecord {
        serial: serial.clone(),
        account_id: account.id.clone(),
        order_id: order.id.clone(),
        issued: now,
        not_before: plan.not_before,
        not_after: plan.not_after,
        names: plan.names.iter().cloned().collect(),
        chain_pem: format!(
            "{}{}",
            issuance::pem_encode("CERTIFICATE", &der_bytes),
            ca.intermediate.pem()
        ),
        spki_sha256: hex::encode(Sha256::digest(csr.spki.subject_public_key.raw_bytes())),
        revoked: None,
        renew_now: false,
        replaced_by: None,
    };
    // The domains were reserved under this serial when the finalization began.
    ca.db.insert_certificate(&record, &[], mark).await?;
    tracing::info!(serial = %serial, order = %order.id, names = ?record.names, "certificate issued");
    Ok(record)
}
