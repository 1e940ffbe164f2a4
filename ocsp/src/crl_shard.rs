//! The records of the CRL side, apart from the CRL machinery ([`crate::crl`]) so the stores can
//! hold them without depending on the updater and the server that depend on the stores: a
//! signed shard as stored, one revoked entry of a shard, and which shard a serial belongs to.

use crate::record::{ReasonCode, Serial};

/// A signed CRL shard as stored and served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCrl {
    /// cRLNumber (RFC 5280 §5.2.3); strictly increasing per shard.
    pub number: i64,
    /// thisUpdate and nextUpdate, Unix seconds.
    pub this_update: i64,
    pub next_update: i64,
    /// Entries listed (for metrics).
    pub entries: u64,
    /// The DER `CertificateList`.
    pub der: Vec<u8>,
}

/// The shard of a certificate with this serial among `shards` (at least 1): the serial's last
/// 8 octets as a big-endian integer, modulo `shards`. Fixed for the certificate's life as long
/// as the shard count is (the store refuses a changed count).
pub fn shard_of(serial: &Serial, shards: u32) -> u32 {
    let bytes = serial.as_bytes();
    let tail = &bytes[bytes.len().saturating_sub(8)..];
    let mut buf = [0u8; 8];
    buf[8 - tail.len()..].copy_from_slice(tail);
    (u64::from_be_bytes(buf) % u64::from(shards.max(1))) as u32
}

/// One revoked certificate of a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlEntry {
    pub serial: Serial,
    /// revocationDate, Unix seconds.
    pub revoked_at: i64,
    /// The recorded CRLReason code, if any.
    pub reason: Option<ReasonCode>,
}
