//! The ACME objects (RFC 8555 §7.1) as the frontend stores them, and the rules that move their
//! statuses. URLs are not stored: the server derives them from ids and its base URL.

use serde::{Deserialize, Serialize};

/// `dns` is the only identifier type this CA issues for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identifier {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountStatus {
    Valid,
    Deactivated,
    Revoked,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    pub status: AccountStatus,
    pub contact: Vec<String>,
    /// The account key as the client sent it (a JWK object).
    pub jwk: serde_json::Value,
    /// RFC 7638 thumbprint of `jwk`: how a key finds its account.
    pub thumbprint: String,
    pub created: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Ready,
    Processing,
    Valid,
    Invalid,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ready => "ready",
            Self::Processing => "processing",
            Self::Valid => "valid",
            Self::Invalid => "invalid",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub account_id: String,
    pub status: OrderStatus,
    pub expires: i64,
    pub identifiers: Vec<Identifier>,
    pub authz_ids: Vec<String>,
    pub profile: String,
    /// ARI (RFC 9773 §5): the certificate this order replaces, by its ARI CertID.
    pub replaces: Option<String>,
    /// The issued certificate's serial (hex), once valid; while processing, the serial being
    /// signed (so a repair can find what a crashed finalization reserved).
    pub certificate: Option<String>,
    pub error: Option<serde_json::Value>,
    pub created: i64,
    /// CAA as the remote perspectives saw it at finalization (BR §3.2.2.9), one per name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caa_corroboration: Vec<crate::perspective::Corroboration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthzStatus {
    Pending,
    Valid,
    Invalid,
    Deactivated,
    Expired,
    Revoked,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChallengeStatus {
    Pending,
    Processing,
    Valid,
    Invalid,
}

/// The challenge types this CA offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChallengeType {
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "dns-01")]
    Dns01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl ChallengeType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http01 => "http-01",
            Self::Dns01 => "dns-01",
            Self::TlsAlpn01 => "tls-alpn-01",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Http01, Self::Dns01, Self::TlsAlpn01]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Challenge {
    #[serde(rename = "type")]
    pub kind: ChallengeType,
    pub token: String,
    pub status: ChallengeStatus,
    pub validated: Option<i64>,
    pub error: Option<serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Authorization {
    pub id: String,
    pub account_id: String,
    pub order_id: String,
    /// For a wildcard order (`*.example.com`), the base domain; `wildcard` says so.
    pub identifier: Identifier,
    pub wildcard: bool,
    pub status: AuthzStatus,
    pub expires: i64,
    pub challenges: Vec<Challenge>,
    /// What the remote perspectives found when a challenge was validated (BR §3.2.2.9): who
    /// agreed, who disagreed and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corroboration: Vec<crate::perspective::Corroboration>,
}

impl Authorization {
    /// The authorization's status as of `now` (a pending or valid one past `expires` is expired).
    pub fn status_at(&self, now: i64) -> AuthzStatus {
        match self.status {
            AuthzStatus::Pending | AuthzStatus::Valid if now >= self.expires => {
                AuthzStatus::Expired
            }
            s => s,
        }
    }
}

/// An issued certificate, as recorded before the client may download it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRecord {
    /// Serial number, lower-case hex of its DER content bytes.
    pub serial: String,
    pub account_id: String,
    pub order_id: String,
    pub issued: i64,
    pub not_before: i64,
    pub not_after: i64,
    /// DNS names, lower case, as in the SAN extension.
    pub names: Vec<String>,
    /// The leaf and the intermediate, PEM (what `application/pem-certificate-chain` serves).
    pub chain_pem: String,
    /// The leaf's SubjectPublicKeyInfo thumbprint (hex SHA-256), for revocation by the
    /// certificate's key.
    pub spki_sha256: String,
    pub revoked: Option<Revocation>,
    /// Named in an incident: ARI tells the client to renew now.
    pub renew_now: bool,
    /// The order whose certificate replaced this one (ARI `replaces`, RFC 9773 §5), once that
    /// order was finalized; another order naming this certificate gets `alreadyReplaced`.
    #[serde(default)]
    pub replaced_by: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub at: i64,
    /// RFC 5280 CRLReason code.
    pub reason: u8,
}

/// An order's status as its authorizations make it (RFC 8555 §7.1.6), for an order not yet
/// finalized.
pub fn order_status_from_authzs(order: &Order, authzs: &[Authorization], now: i64) -> OrderStatus {
    match order.status {
        OrderStatus::Processing | OrderStatus::Valid | OrderStatus::Invalid => order.status,
        _ if now >= order.expires => OrderStatus::Invalid,
        _ => {
            let statuses: Vec<AuthzStatus> = authzs.iter().map(|a| a.status_at(now)).collect();
            if statuses.iter().all(|s| *s == AuthzStatus::Valid) {
                OrderStatus::Ready
            } else if statuses
                .iter()
                .any(|s| *s != AuthzStatus::Pending && *s != AuthzStatus::Valid)
            {
                OrderStatus::Invalid
            } else {
                OrderStatus::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authz(status: AuthzStatus, expires: i64) -> Authorization {
        Authorization {
            id: "a".into(),
            account_id: "acct".into(),
            order_id: "o".into(),
            identifier: Identifier {
                kind: "dns".into(),
                value: "example.test".into(),
            },
            wildcard: false,
            status,
            expires,
            challenges: vec![],
            corroboration: vec![],
        }
    }

    fn order(status: OrderStatus) -> Order {
        Order {
            id: "o".into(),
            account_id: "acct".into(),
            status,
            expires: 1000,
            identifiers: vec![],
            authz_ids: vec![],
            profile: "classic".into(),
            replaces: None,
            certificate: None,
            error: None,
            created: 0,
            caa_corroboration: vec![],
        }
    }

    #[test]
    fn order_status_follows_its_authorizations() {
        let pending = order(OrderStatus::Pending);
        let valid = authz(AuthzStatus::Valid, 500);
        let open = authz(AuthzStatus::Pending, 500);
        let failed = authz(AuthzStatus::Invalid, 500);
        assert_eq!(
            order_status_from_authzs(&pending, &[valid.clone(), valid.clone()], 10),
            OrderStatus::Ready
        );
        assert_eq!(
            order_status_from_authzs(&pending, &[valid.clone(), open.clone()], 10),
            OrderStatus::Pending
        );
        assert_eq!(
            order_status_from_authzs(&pending, &[valid.clone(), failed], 10),
            OrderStatus::Invalid
        );
        // An authorization past its expiry no longer counts as valid.
        assert_eq!(
            order_status_from_authzs(&pending, std::slice::from_ref(&valid), 600),
            OrderStatus::Invalid
        );
        // An expired order is invalid whatever its authorizations say.
        assert_eq!(
            order_status_from_authzs(&pending, std::slice::from_ref(&valid), 1000),
            OrderStatus::Invalid
        );
        // Finalized orders keep their status.
        let processing = order(OrderStatus::Processing);
        assert_eq!(
            order_status_from_authzs(&processing, &[open], 10),
            OrderStatus::Processing
        );
    }
}
