//! What the OCSP service knows about a certificate, and the rule that keeps publishing safe.

use std::fmt;

/// An issuer, by the name given in the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IssuerName(pub String);

/// A certificate serial number: the big-endian magnitude, without leading zero bytes (so the
/// same serial always has the same bytes, whatever DER INTEGER padding a request used).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

impl Serial {
    pub fn from_be_bytes(bytes: &[u8]) -> Self {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        Serial(bytes[start..].to_vec())
    }

    pub fn from_hex(hex_str: &str) -> Option<Self> {
        let clean: String = hex_str.chars().filter(|c| *c != ':').collect();
        let clean = if clean.len() % 2 == 1 {
            format!("0{clean}")
        } else {
            clean
        };
        hex::decode(clean).ok().map(|b| Self::from_be_bytes(&b))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lower-case hex, no separators; "00" for zero.
    pub fn to_hex(&self) -> String {
        if self.0.is_empty() {
            "00".into()
        } else {
            hex::encode(&self.0)
        }
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({})", self.to_hex())
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// RFC 5280 §5.3.1 CRLReason codes (7 is unused).
pub type ReasonCode = u8;

/// A certificate's status as the CA knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertStatus {
    Good,
    /// Revoked at `at` (Unix seconds, UTC), with an optional CRLReason.
    Revoked {
        at: i64,
        reason: Option<ReasonCode>,
    },
}

impl CertStatus {
    pub fn is_revoked(self) -> bool {
        matches!(self, CertStatus::Revoked { .. })
    }
}

/// A signed response as stored: the status it attests, its validity, and its DER bytes
/// (a complete `OCSPResponse`, ready to send).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: CertStatus,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds.
    pub next_update: i64,
    pub der: Vec<u8>,
    /// What the responder sends for this response besides its status line, derived from the
    /// fields above on first use and kept with the response (so a cache hit formats nothing
    /// and hashes nothing). Not part of the response's identity: ignored by `==`.
    pub http: HttpMemo,
}

/// See [`StoredResponse::http`]. Boxed: most responses the pre-signer handles are never served
/// by this process, and should not carry the space.
#[derive(Clone, Debug, Default)]
pub struct HttpMemo(pub std::sync::OnceLock<Box<HttpParts>>);

impl PartialEq for HttpMemo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for HttpMemo {}

/// The body and the headers of a response that do not change while it is served.
#[derive(Clone, Debug)]
pub struct HttpParts {
    pub body: axum::body::Bytes,
    /// The quoted hex SHA-256 of the DER.
    pub etag: axum::http::HeaderValue,
    /// thisUpdate as an HTTP date.
    pub last_modified: axum::http::HeaderValue,
    /// nextUpdate as an HTTP date.
    pub expires: axum::http::HeaderValue,
    /// The CertID hash algorithms the response has a SingleResponse for, read from the DER
    /// (`response::cert_id_hashes_in`; empty if it does not parse): the responder answers a
    /// request with this response only if its CertID hash is among them.
    pub cert_id_hashes: Vec<crate::issuers::HashAlg>,
}

/// Whether `new` may replace `old`. Publishing is monotonic:
/// - a revocation is never replaced by a `good` response — not by a refresh that started
///   before the revocation, not after a crash;
/// - a revocation is never replaced by one with a different revocation time or reason (the
///   first recorded revocation stands);
/// - otherwise the newer response (by thisUpdate) wins; an equal thisUpdate with the same
///   status is an idempotent retry and may replace it.
pub fn may_replace(old: &StoredResponse, new: &StoredResponse) -> bool {
    match (old.status, new.status) {
        (CertStatus::Revoked { .. }, CertStatus::Good) => false,
        (CertStatus::Revoked { at: a, reason: r }, CertStatus::Revoked { at: b, reason: s }) => {
            a == b && r == s && new.this_update >= old.this_update
        }
        (CertStatus::Good, CertStatus::Revoked { .. }) => true,
        (CertStatus::Good, CertStatus::Good) => new.this_update >= old.this_update,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: CertStatus, this_update: i64) -> StoredResponse {
        StoredResponse {
            status,
            this_update,
            next_update: this_update + 86_400,
            der: vec![],
            http: Default::default(),
        }
    }

    #[test]
    fn a_revocation_is_never_replaced_by_good() {
        let revoked = resp(
            CertStatus::Revoked {
                at: 100,
                reason: Some(1),
            },
            100,
        );
        assert!(!may_replace(&revoked, &resp(CertStatus::Good, 1_000)));
        assert!(!may_replace(
            &revoked,
            &resp(
                CertStatus::Revoked {
                    at: 200,
                    reason: Some(1)
                },
                300
            )
        ));
        assert!(may_replace(
            &revoked,
            &resp(
                CertStatus::Revoked {
                    at: 100,
                    reason: Some(1)
                },
                300
            )
        ));
        assert!(!may_replace(
            &revoked,
            &resp(
                CertStatus::Revoked {
                    at: 100,
                    reason: Some(1)
                },
                50
            )
        ));
        assert!(may_replace(&resp(CertStatus::Good, 500), &revoked));
        assert!(!may_replace(
            &resp(CertStatus::Good, 500),
            &resp(CertStatus::Good, 400)
        ));
    }

    #[test]
    fn serials_are_canonical() {
        assert_eq!(
            Serial::from_be_bytes(&[0, 0, 0x12]),
            Serial::from_be_bytes(&[0x12])
        );
        assert_eq!(
            Serial::from_hex("0a:bc").map(|s| s.to_hex()),
            Some("0abc".into())
        );
        assert_eq!(
            Serial::from_hex("abc").map(|s| s.to_hex()),
            Some("0abc".into())
        );
        assert_eq!(Serial::from_be_bytes(&[0]).to_hex(), "00");
    }
}
