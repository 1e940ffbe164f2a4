//! Durable stores of signed responses, and of the certificates the pre-signer keeps fresh.
//!
//! - [`SqliteStore`]: the embedded default. SQLite (bundled, WAL mode) rather than redb or fjall
//!   because several processes share it on one machine — the responder, the pre-signer and the
//!   `import` command — and redb/fjall lock their file to one process. See the module for the
//!   lookup cost measured here.
//! - [`RedisStore`]: for deployments that outgrow one machine (the way Let's Encrypt keeps OCSP
//!   responses in Redis); a single node or a Redis Cluster.
//!
//! Every `put` applies [`crate::publishing::may_replace`] atomically inside the store (a SQLite
//! transaction; a Lua script in Redis), so two writers racing — a refresh and a revocation —
//! can never leave a `good` response over a revoked one.
//!
//! # One response per CertID hash
//! A certificate has one stored response per CertID hash the pre-signer signs for
//! (`presigner.cert_id_hashes`), each with exactly one SingleResponse (RFC 5019 §2.2.1), kept
//! under its [`Slot`]: the store reads the slot from the response's signed bytes, so a put
//! cannot file a response under a hash it does not answer for. Responses signed before this
//! layout carry a SingleResponse per hash under one signature: they sit in the
//! [`Slot::Legacy`] slot, and a request for a hash with no response of its own is answered
//! from there until the refresh re-signs the certificate into the new layout.
//!
//! The monotonic rule holds per certificate across its slots ([`may_store`]): no slot takes
//! `good` while another holds a revocation, no slot takes a different revocation than another
//! holds, and storing a revocation removes the `good` responses of the other slots — so a
//! revocation never leaves a `good` answer behind for some hash, even while the other hash's
//! revoked response is still being signed.

use async_trait::async_trait;

use crate::crl_shard::StoredCrl;
use crate::error::Error;
use crate::hash_alg::HashAlg;
use crate::publishing::may_replace;
use crate::record::{IssuerName, Serial, StoredResponse};

mod redis;
mod sqlite;

pub use redis::{RedisOptions, RedisStore, response_key};
pub use sqlite::{Backlog, SqliteOptions, SqliteStore, enable_wal};

/// Where signed responses live.
#[async_trait]
pub trait ResponseStore: Send + Sync + std::fmt::Debug {
    /// Short name for metrics and logs (`sqlite`, `redis`).
    fn kind(&self) -> &'static str;

    /// The response to answer a request whose CertID uses `hash`: the certificate's response
    /// for that hash, else its old-layout one ([`Slot::Legacy`]), if any (expired ones
    /// included: the caller decides what to serve). A store with one response per certificate
    /// (test doubles) answers [`Self::get`].
    async fn get_for(
        &self,
        issuer: &IssuerName,
        serial: &Serial,
        hash: HashAlg,
    ) -> Result<Option<StoredResponse>, Error> {
        let _ = hash;
        self.get(issuer, serial).await
    }

    /// A stored response for this certificate, if any: SHA-1's, else SHA-256's, else one of the
    /// old layout ([`Slot::PREFERRED`]; expired ones included). For callers that want the certificate's status, not
    /// the bytes a given request gets ([`Self::get_for`]).
    async fn get(
        &self,
        issuer: &IssuerName,
        serial: &Serial,
    ) -> Result<Option<StoredResponse>, Error>;

    /// Stores `response` in its [`Slot`] unless the stored ones must win ([`may_store`]);
    /// returns whether it was stored. Atomic against concurrent writers.
    async fn put(
        &self,
        issuer: &IssuerName,
        serial: &Serial,
        response: &StoredResponse,
    ) -> Result<bool, Error>;
}

/// Where signed CRL shards live ([`crate::crl`]): the same stores as the responses.
#[async_trait]
pub trait CrlStore: Send + Sync + std::fmt::Debug {
    /// Short name for metrics and logs (`sqlite`, `redis`).
    fn crl_store_kind(&self) -> &'static str;

    /// The stored shard, if any (expired ones included: the caller decides).
    async fn get_crl(&self, issuer: &IssuerName, shard: u32) -> Result<Option<StoredCrl>, Error>;

    /// Compare-and-set: stores `crl` only if its number is greater than the stored shard's
    /// (or none is stored); returns whether it was stored. Atomic against other writers, so
    /// the cRLNumber a store serves strictly increases whatever runs against it.
    async fn put_crl(
        &self,
        issuer: &IssuerName,
        shard: u32,
        crl: &StoredCrl,
    ) -> Result<bool, Error>;
}

/// Where a certificate's response is kept: per CertID hash, or the old layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// A response from before one response per hash: several SingleResponses (or bytes that
    /// do not parse, which answer no request). Read for any hash without its own response.
    Legacy,
    /// The response whose one SingleResponse has a CertID under this hash.
    Hash(HashAlg),
}

impl Slot {
    /// The slot of a signed `OCSPResponse`, from its SingleResponses.
    ///
    /// Every put asks this, so the common case is read by walking the DER's tags and lengths
    /// down to the CertID hash algorithms ([`walk_cert_id_hashes`], no allocation) instead of
    /// decoding the whole response (the pre-signer's profile showed the decode at several µs per
    /// response); bytes the walk does not recognise go through the full decode.
    pub fn of(der: &[u8]) -> Self {
        let hashes = match walk_cert_id_hashes(der) {
            Some(found) => found,
            None => {
                return match crate::response::cert_id_hashes_in(der).as_deref() {
                    Some([alg]) => Slot::Hash(*alg),
                    _ => Slot::Legacy,
                };
            }
        };
        match hashes {
            (1, Some(alg)) => Slot::Hash(alg),
            _ => Slot::Legacy,
        }
    }

    /// Every slot, by code (the Redis script's key order depends on it).
    pub const ALL: [Slot; 3] = [
        Slot::Legacy,
        Slot::Hash(HashAlg::Sha1),
        Slot::Hash(HashAlg::Sha256),
    ];

    /// The order [`ResponseStore::get`] prefers: the per-hash responses, then one of the old
    /// layout, which is stale once the refresh has re-signed the certificate per hash.
    pub const PREFERRED: [Slot; 3] = [
        Slot::Hash(HashAlg::Sha1),
        Slot::Hash(HashAlg::Sha256),
        Slot::Legacy,
    ];

    /// The integer the SQLite store keeps (`cert_id_hash`).
    pub fn code(self) -> i64 {
        match self {
            Slot::Legacy => 0,
            Slot::Hash(HashAlg::Sha1) => 1,
            Slot::Hash(HashAlg::Sha256) => 2,
        }
    }

    pub fn from_code(code: i64) -> Option<Self> {
        Slot::ALL.into_iter().find(|s| s.code() == code)
    }
}

/// One DER TLV at the start of `input`: (tag, content, rest). Definite lengths up to 2^24.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81..=0x83 => {
            let n = usize::from(first & 0x7f);
            let bytes = rest.get(..n)?;
            let len = bytes.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b));
            (len, &rest[n..])
        }
        _ => return None,
    };
    let content = rest.get(..len)?;
    Some((tag, content, &rest[len..]))
}

/// The CertID hash algorithms of a successful `OCSPResponse`'s SingleResponses, read by
/// walking tags and lengths (RFC 6960 §4.2.1): how many SingleResponses have a SHA-1 or SHA-256
/// CertID, and the first such hash. `None` when the bytes are not laid out as expected (then
/// [`Slot::of`] decodes them fully); each level must be consumed exactly.
fn walk_cert_id_hashes(der: &[u8]) -> Option<(usize, Option<HashAlg>)> {
    const SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
    const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
    const BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
    let expect = |input, want: u8| match tlv(input) {
        Some((tag, content, rest)) if tag == want => Some((content, rest)),
        _ => None,
    };
    let (response, rest) = expect(der, 0x30)?;
    if !rest.is_empty() {
        return None;
    }
    let (status, rest) = expect(response, 0x0a)?;
    let (explicit, rest2) = expect(rest, 0xa0)?;
    if status != [0] || !rest2.is_empty() {
        return None;
    }
    let (bytes, rest) = expect(explicit, 0x30)?;
    let (oid, rest2) = expect(bytes, 0x06)?;
    if !rest.is_empty() || oid != BASIC {
        return None;
    }
    let (octets, rest) = expect(rest2, 0x04)?;
    let (basic, rest2) = expect(octets, 0x30)?;
    if !rest.is_empty() || !rest2.is_empty() {
        return None;
    }
    let (tbs, _) = expect(basic, 0x30)?;
    let (mut tag, _, mut rest) = tlv(tbs)?;
    if tag == 0xa0 {
        (tag, _, rest) = tlv(rest)?; // version
    }
    if tag != 0xa1 && tag != 0xa2 {
        return None; // responderID
    }
    let (_, rest) = expect(rest, 0x18)?; // producedAt
    let (mut singles, _) = expect(rest, 0x30)?;
    let (mut count, mut first) = (0, None);
    while !singles.is_empty() {
        let (single, next) = expect(singles, 0x30)?;
        let (cert_id, _) = expect(single, 0x30)?;
        let (alg, _) = expect(cert_id, 0x30)?;
        let (oid, _) = expect(alg, 0x06)?;
        let hash = match oid {
            SHA1 => Some(HashAlg::Sha1),
            SHA256 => Some(HashAlg::Sha256),
            _ => None,
        };
        if let Some(h) = hash {
            count += 1;
            first = first.or(Some(h));
        }
        singles = next;
    }
    Some((count, first))
}

/// Whether `new`, for `slot`, may be stored beside what the certificate has (`stored`: each
/// slot's response). [`may_replace`] against the response a request for `slot` is answered
/// with today (its own, else the old-layout one), and across the other slots: a revocation
/// anywhere admits only the same revocation (time and reason) anywhere else.
pub fn may_store(stored: &[(Slot, StoredResponse)], slot: Slot, new: &StoredResponse) -> bool {
    let own = stored.iter().find(|(s, _)| *s == slot);
    let same = own.or_else(|| stored.iter().find(|(s, _)| *s == Slot::Legacy));
    if same.is_some_and(|(_, old)| !may_replace(old, new)) {
        return false;
    }
    stored.iter().all(|(_, old)| match old.status {
        crate::record::CertStatus::Revoked { .. } => old.status == new.status,
        crate::record::CertStatus::Good => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::CertStatus;

    fn resp(status: CertStatus, this_update: i64) -> StoredResponse {
        StoredResponse {
            status,
            this_update,
            next_update: this_update + 100,
            der: vec![],
            http: Default::default(),
        }
    }

    const SHA1: Slot = Slot::Hash(HashAlg::Sha1);
    const SHA256: Slot = Slot::Hash(HashAlg::Sha256);
    const REVOKED: CertStatus = CertStatus::Revoked {
        at: 50,
        reason: Some(1),
    };

    #[test]
    fn the_monotonic_rule_holds_across_every_hash_of_a_certificate() {
        let good = resp(CertStatus::Good, 100);
        let revoked = resp(REVOKED, 100);
        // Nothing stored: anything goes.
        assert!(may_store(&[], SHA1, &good));
        // A revocation under SHA-1 keeps SHA-256 from taking `good`, even a newer one.
        let stored = [(SHA1, revoked.clone())];
        assert!(!may_store(&stored, SHA256, &resp(CertStatus::Good, 500)));
        assert!(may_store(&stored, SHA256, &resp(REVOKED, 100)));
        // ... and from taking another revocation.
        let other = CertStatus::Revoked {
            at: 60,
            reason: Some(1),
        };
        assert!(!may_store(&stored, SHA256, &resp(other, 200)));
        // An old-layout revocation binds both hashes.
        let stored = [(Slot::Legacy, revoked.clone())];
        assert!(!may_store(&stored, SHA1, &resp(CertStatus::Good, 500)));
        assert!(may_store(&stored, SHA1, &resp(REVOKED, 200)));
        // A hash without its own response is compared with the old-layout one it is served.
        let stored = [(Slot::Legacy, resp(CertStatus::Good, 300))];
        assert!(!may_store(&stored, SHA256, &resp(CertStatus::Good, 200)));
        assert!(may_store(&stored, SHA256, &resp(CertStatus::Good, 300)));
        // Its own response decides the thisUpdate order once it has one.
        let stored = [
            (Slot::Legacy, resp(CertStatus::Good, 300)),
            (SHA256, resp(CertStatus::Good, 100)),
        ];
        assert!(may_store(&stored, SHA256, &resp(CertStatus::Good, 200)));
        assert!(!may_store(&stored, SHA256, &resp(CertStatus::Good, 50)));
        // A revocation replaces good everywhere.
        assert!(may_store(&stored, SHA1, &revoked));
    }

    #[test]
    fn slots_round_trip_and_unparsable_bytes_are_legacy() {
        for slot in Slot::ALL {
            assert_eq!(Slot::from_code(slot.code()), Some(slot));
        }
        assert_eq!(Slot::from_code(3), None);
        assert_eq!(Slot::of(b"not der"), Slot::Legacy);
    }
}
