//! ACME Renewal Information (RFC 9773): which certificate a `renewalInfo` URL names, and when
//! its subscriber should renew.
//!
//! The CertID is `base64url(AKI keyIdentifier) "." base64url(serial DER content)` (§4.1). The
//! suggested window is the middle of the last third of the lifetime (Let's Encrypt's choice);
//! for a revoked certificate, or one an operator named in an incident, the window is moved into
//! the past so that clients renew at once (§4.2).

use super::{Ca, Result};
use crate::model::CertificateRecord;
use crate::{Problem, b64, rfc3339, unb64};

/// The ARI CertID of a certificate issued under an intermediate with key identifier `aki`.
pub fn cert_id(aki: &[u8], serial: &[u8]) -> String {
    format!("{}.{}", b64(aki), b64(serial))
}

/// Splits a CertID into (key identifier, serial content bytes).
pub fn parse_cert_id(id: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let (aki, serial) = id.split_once('.')?;
    let (aki, serial) = (unb64(aki)?, unb64(serial)?);
    (!aki.is_empty() && !serial.is_empty()).then_some((aki, serial))
}

/// (start, end) of the suggested renewal window, Unix seconds.
pub fn suggested_window(cert: &CertificateRecord, now: i64) -> (i64, i64) {
    if cert.revoked.is_some() || cert.renew_now {
        // In the past: "renew now" (RFC 9773 §4.2).
        return (now - 2 * 86_400, now - 86_400);
    }
    let lifetime = (cert.not_after - cert.not_before).max(3);
    let third = lifetime / 3;
    let start = cert.not_after - third;
    (start, start + third / 2)
}

/// The `renewalInfo` JSON body.
pub fn renewal_info(
    cert: &CertificateRecord,
    now: i64,
    explanation: Option<&str>,
) -> serde_json::Value {
    let (start, end) = suggested_window(cert, now);
    let mut body = serde_json::json!({
        "suggestedWindow": {"start": rfc3339(start), "end": rfc3339(end)},
    });
    if let Some(url) = explanation {
        body["explanationURL"] = serde_json::Value::String(url.to_owned());
    }
    body
}

/// The certificate an ARI CertID names, if this CA issued it.
pub(crate) async fn certificate(ca: &Ca, cert_id: &str) -> Result<CertificateRecord> {
    let (key_id, serial) = parse_cert_id(cert_id)
        .ok_or_else(|| Problem::malformed(format!("`{cert_id}` is not an ARI CertID")))?;
    if key_id != ca.intermediate.key_id {
        return Err(Problem::not_found("certificate issued by this CA").into());
    }
    let serial = hex::encode(serial);
    Ok(ca
        .db
        .certificate(&serial)
        .await?
        .ok_or_else(|| Problem::not_found("certificate"))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Revocation;

    fn record(not_before: i64, not_after: i64) -> CertificateRecord {
        CertificateRecord {
            serial: "01".into(),
            account_id: "a".into(),
            order_id: "o".into(),
            issued: not_before,
            not_before,
            not_after,
            names: vec![],
            chain_pem: String::new(),
            spki_sha256: String::new(),
            revoked: None,
            renew_now: false,
            replaced_by: None,
        }
    }

    #[test]
    fn cert_id_round_trips() {
        // RFC 9773 §4.1's example: AKI 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4,
        // serial 00:87:65:43:21.
        let aki = hex::decode("69885B6B87464041E1B37B847BA0AE2CDE01C8D4").expect("hex");
        let serial = hex::decode("0087654321").expect("hex");
        let id = cert_id(&aki, &serial);
        assert_eq!(id, "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE");
        assert_eq!(parse_cert_id(&id), Some((aki, serial)));
        assert_eq!(parse_cert_id("nodot"), None);
        assert_eq!(parse_cert_id("a+b.c"), None);
    }

    #[test]
    fn window_is_in_the_last_third_and_moves_to_the_past_when_revoked() {
        let day = 86_400;
        let mut cert = record(0, 90 * day);
        let (start, end) = suggested_window(&cert, 10 * day);
        assert_eq!(start, 60 * day);
        assert_eq!(end, 75 * day);
        cert.revoked = Some(Revocation {
            at: 11 * day,
            reason: 1,
        });
        let (start, end) = suggested_window(&cert, 12 * day);
        assert!(end < 12 * day && start < end);
        let mut marked = record(0, 90 * day);
        marked.renew_now = true;
        assert!(suggested_window(&marked, 5 * day).1 < 5 * day);
    }
}
