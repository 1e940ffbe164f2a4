//! Revocation (RFC 8555 §7.6): by the certificate's account, or by whoever holds its key (then
//! the reason is keyCompromise). The revocation is recorded, then its `revoked` OCSP response
//! stored, before the request is answered; a crash between the two is repaired by
//! [`republish`].

use ocsp::Serial;

use super::{Ca, Result, republish};
use crate::issuance;
use crate::jws::PublicKey;
use crate::metrics::GatewayCall;
use crate::model::{Account, Revocation};
use crate::{Error, Problem, ProblemType, unix_now};

/// Reasons a subscriber may give (RFC 5280 §5.3.1): unspecified, keyCompromise,
/// affiliationChanged, superseded, cessationOfOperation — as Let's Encrypt accepts.
const SUBSCRIBER_REASONS: [u8; 5] = [0, 1, 3, 4, 5];
const KEY_COMPROMISE: u8 = 1;

/// Revokes the certificate `der_bytes` (DER) for a request signed by `key`, which is the key of
/// `account` when the request named one (`kid`) and otherwise was given in the request (`jwk`).
pub(crate) async fn revoke(
    ca: &Ca,
    der_bytes: &[u8],
    reason: Option<u8>,
    account: Option<&Account>,
    key: &PublicKey,
) -> Result<()> {
    use der::Decode;
    let cert = x509_cert::Certificate::from_der(der_bytes)
        .map_err(|e| Problem::malformed(format!("the certificate does not parse: {e}")))?;
    let tbs = cert.tbs_certificate();
    if tbs.issuer() != &ca.intermediate.subject {
        return Err(Problem::not_found("certificate issued by this CA").into());
    }
    let serial = hex::encode(tbs.serial_number().as_bytes());
    let record = ca
        .db
        .certificate(&serial)
        .await?
        .ok_or_else(|| Problem::not_found("certificate issued by this CA"))?;
    // The bytes sent must be the certificate recorded, not merely share its serial.
    let recorded = issuance::first_pem_der(&record.chain_pem)?;
    if recorded != der_bytes {
        return Err(Problem::unauthorized(
            "the certificate is not the one this CA issued with that serial",
        )
        .into());
    }
    let by_cert_key = match account {
        Some(account) if account.id == record.account_id => false,
        Some(_) => {
            return Err(Problem::unauthorized("the certificate belongs to another account").into());
        }
        None => {
            let cert_key = PublicKey::from_spki(tbs.subject_public_key_info())?;
            if &cert_key != key {
                return Err(Problem::unauthorized(
                    "the JWS is not signed by the certificate's key",
                )
                .into());
            }
            true
        }
    };
    let reason = match (reason, by_cert_key) {
        (Some(r), _) if !SUBSCRIBER_REASONS.contains(&r) => {
            return Err(Problem::new(
                ProblemType::BadRevocationReason,
                format!("reason {r} is not accepted; use one of {SUBSCRIBER_REASONS:?}"),
            )
            .into());
        }
        // Whoever holds the key and asks, the key is compromised.
        (_, true) => KEY_COMPROMISE,
        (r, false) => r.unwrap_or(0),
    };
    let now = unix_now();
    let (revocation, recorded_now) = ca
        .db
        .revoke(&serial, Revocation { at: now, reason }, republish::mark())
        .await?
        .ok_or_else(|| Problem::not_found("certificate"))?;
    // Publish the revocation in force even when it was recorded earlier: a crash between the
    // two writes must not leave OCSP saying `good`. The record's mark has `republish` repair
    // that within a minute if no retry comes.
    let status = republish::revoked_status(revocation);
    let bytes = hex::decode(&serial).map_err(|e| Error::Internal(e.to_string()))?;
    let publish = async {
        ca.presigner
            .publish(&ca.ocsp_issuer, &Serial::from_be_bytes(&bytes), status)
            .await?;
        Ok(())
    };
    ca.metrics
        .gateway(GatewayCall::PublishOcsp, publish)
        .await?;
    // Revoked is final: whatever mark the record carries is answered.
    ca.db.ocsp_published(&serial, None, None).await?;
    if !recorded_now {
        return Err(Problem::new(
            ProblemType::AlreadyRevoked,
            "the certificate was already revoked",
        )
        .into());
    }
    tracing::info!(serial = %serial, reason, "certificate revoked");
    Ok(())
}
