//! What the OCSP service knows about a certificate: its issuer, serial and status, and a signed
//! response as stored. The rule for replacing one stored response by another is in
//! [`crate::publishing`]; the HTTP header values kept with a response in [`crate::http_memo`].

use std::fmt;

use crate::http_memo::HttpMemo;

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

#[cfg(test)]
mod tests {
    use super::*;

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
