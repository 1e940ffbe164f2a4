//! Repairs what a crash between the two writes of an issuance or a revocation leaves behind.
//!
//! Issuance records the certificate, then publishes its `good` OCSP response, then turns the
//! order `valid`; a revocation records itself, then publishes `revoked`. The OCSP write is in
//! another store, so the two cannot share a transaction: a process that dies between them
//! leaves a revocation that OCSP does not know of (it would keep serving `good`, and the
//! pre-signer would keep re-signing `good`, until the subscriber happened to retry) or an
//! order stuck in `processing`.
//!
//! So each of those records carries a mark (a timestamp in nanoseconds, [`mark`]) from the
//! moment it is written until its OCSP response is stored. [`republish_pending`], run at
//! start-up and then every [`INTERVAL`] by `ca-frontend serve`, publishes the status recorded
//! for every mark older than [`GRACE`] (younger ones belong to requests still in flight, here
//! or in another frontend sharing the database), completes the order of an issuance, and clears
//! the mark. Publishing is idempotent and monotonic, so racing a live request is harmless.
//!
//! A live finalization whose publish fails (the gateway refusing or gone, the OCSP store busy)
//! ends the same way: its certificate is recorded and good, so its order stays `processing`,
//! never `invalid`, and this pass completes it. One that stopped before its certificate was
//! recorded (a crash while signing) left its order processing with the domains reserved:
//! once its reservation is older than the grace, the order is made invalid and the
//! reservation and any replacement mark given back ([`abandon_stalled`]); the client orders
//! again.

use std::sync::Arc;
use std::time::Duration;

use ocsp::{CertStatus, Serial};

use super::Ca;
use crate::metrics::GatewayCall;
use crate::model::{CertificateRecord, OrderStatus, Revocation};
use crate::{Error, Problem, ProblemType};

/// How often `serve` looks for unpublished records.
pub const INTERVAL: Duration = Duration::from_secs(30);
/// How old a mark must be before it is taken for a crash's: longer than a request that
/// records and publishes can take (the gateway client retries for at most 30 s).
pub const GRACE: Duration = Duration::from_secs(60);
/// Records repaired per database read.
const BATCH: u32 = 500;

/// A fresh mark: the time in nanoseconds, so marks order by age and two writes of one
/// certificate (its issuance, then its revocation) do not share one.
pub fn mark() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The OCSP status a record says the certificate has.
pub fn ocsp_status(record: &CertificateRecord) -> CertStatus {
    record.revoked.map_or(CertStatus::Good, revoked_status)
}

/// The OCSP status of a recorded revocation.
pub fn revoked_status(r: Revocation) -> CertStatus {
    CertStatus::Revoked {
        at: r.at,
        reason: Some(r.reason),
    }
}

/// Publishes every record marked more than `grace` ago; returns how many. Stops at the first
/// failure (the next run starts again from the oldest).
pub async fn republish_pending(ca: &Ca, grace: Duration) -> Result<usize, Error> {
    let grace = i64::try_from(grace.as_nanos()).unwrap_or(i64::MAX);
    let before = mark().saturating_sub(grace);
    let mut done = 0;
    loop {
        let pending = ca.db.ocsp_pending(before, BATCH).await?;
        let last_batch = pending.len() < BATCH as usize;
        let found = pending.len();
        for (i, (record, mark)) in pending.into_iter().enumerate() {
            if let Err(e) = republish(ca, &record, mark).await {
                // What this batch still holds: a lower bound of what is left.
                ca.metrics.republish_pass(found - i, false);
                return Err(e);
            }
            done += 1;
        }
        if last_batch {
            ca.metrics.republish_pass(0, true);
            return Ok(done);
        }
    }
}

/// Publishes `status` for a recorded certificate: its OCSP response signed and stored, and its
/// notAfter in the status record, so that once revoked and expired it leaves its CRL shard.
/// Both are idempotent: the repair pass repeats them after a crash between the two.
pub(crate) async fn publish_record(
    ca: &Ca,
    record: &CertificateRecord,
    status: CertStatus,
) -> Result<(), Error> {
    let serial = hex::decode(&record.serial)
        .map_err(|e| Error::Internal(format!("certificate {}: {e}", record.serial)))?;
    let serial = Serial::from_be_bytes(&serial);
    let publish = async {
        ca.presigner
            .publish(&ca.ocsp_issuer, &serial, status)
            .await?;
        ca.presigner
            .record_not_after(vec![(ca.ocsp_issuer.clone(), serial, record.not_after)])
            .await?;
        Ok(())
    };
    ca.metrics.gateway(GatewayCall::PublishOcsp, publish).await
}

async fn republish(ca: &Ca, record: &CertificateRecord, mark: i64) -> Result<(), Error> {
    let status = ocsp_status(record);
    publish_record(ca, record, status).await?;
    // An issuance that stopped here never told its client: the order becomes valid now.
    let order = match status {
        CertStatus::Good => ca
            .db
            .order(&record.order_id)
            .await?
            .filter(|o| o.status == OrderStatus::Processing)
            .map(|mut o| {
                o.status = OrderStatus::Valid;
                o.certificate = Some(record.serial.clone());
                o
            }),
        _ => None,
    };
    ca.db
        .ocsp_published(&record.serial, Some(mark), order.as_ref())
        .await?;
    ca.metrics.republished();
    if order.is_some() {
        ca.metrics.order(OrderStatus::Valid);
    }
    tracing::warn!(serial = %record.serial, status = ?status, "published an OCSP status a crash had left unpublished");
    Ok(())
}

/// Makes invalid every order left processing by a finalization that reserved its domains more
/// than `grace` ago and recorded no certificate; returns how many.
pub async fn abandon_stalled(ca: &Ca, grace: Duration) -> Result<usize, Error> {
    let before = crate::unix_now() - i64::try_from(grace.as_secs()).unwrap_or(i64::MAX / 2);
    let mut done = 0;
    for order in ca.db.processing_orders(BATCH).await? {
        // Orders processing since before serials were kept in them are left alone.
        let Some(serial) = order.certificate.clone() else {
            continue;
        };
        if ca.db.certificate(&serial).await?.is_some() {
            continue; // recorded: republish_pending completes it
        }
        if ca
            .db
            .reserved_at(&serial)
            .await?
            .is_none_or(|at| at >= before)
        {
            continue; // in flight
        }
        // The replaced certificate's `replaced_by` is given back with the reservation; if it
        // cannot be read now, the order waits for the next pass rather than keep the mark.
        let replaced = match &order.replaces {
            Some(cert_id) => match super::ari::certificate(ca, cert_id).await {
                Ok(r) => Some(r.serial),
                Err(e) => {
                    tracing::warn!(order = %order.id, "stalled order left for the next pass: its replaced certificate could not be read: {e:?}");
                    continue;
                }
            },
            None => None,
        };
        let mut invalid = order.clone();
        invalid.status = OrderStatus::Invalid;
        invalid.certificate = None;
        invalid.error = Some(
            Problem::new(
                ProblemType::ServerInternal,
                "the finalization stopped before a certificate was issued; order again",
            )
            .to_json(),
        );
        if ca
            .db
            .abandon_issuance(&invalid, &serial, replaced.as_deref())
            .await?
        {
            tracing::warn!(order = %order.id, serial = %serial, "made invalid an order whose finalization stopped before recording");
            ca.metrics.abandoned();
            done += 1;
        }
    }
    Ok(done)
}

/// [`republish_pending`] and [`abandon_stalled`] now and every [`INTERVAL`], for as long as
/// the process runs.
pub async fn run(ca: Arc<Ca>) {
    let mut ticks = tokio::time::interval(INTERVAL);
    loop {
        ticks.tick().await;
        if let Err(e) = republish_pending(&ca, GRACE).await {
            tracing::error!(error = %e, "could not publish the OCSP statuses left unpublished");
        }
        if let Err(e) = abandon_stalled(&ca, GRACE).await {
            tracing::error!(error = %e, "could not give back the reservations of stopped finalizations");
        }
    }
}
