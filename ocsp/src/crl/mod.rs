//! Sharded ("partitioned") CRLs: the revocation channel every publicly trusted CA must publish
//! (BR §4.9.7, §7.2), built from the same status records as the OCSP responses.
//!
//! ```text
//!  ACME frontend / import ──▶ worklist (SQLite `certificates`: status, revoked_at, reason,
//!        publish()                 crl_shard, not_after) ──┬──▶ pre-signer ──▶ OCSP responses
//!                                  │ a revocation marks     │
//!                                  ▼ its shard pending      │
//!                       crl_pending(issuer, shard, seq) ────┴──▶ crl-update (updater)
//!                                                                │ build TBSCertList (x509-cert)
//!                                                                │ Sign, payload tbs-cert-list
//!                                                                ▼
//!            CRL store (SQLite `crl_shards` | Redis), compare-and-set on the CRL number
//!                                  │                   └──▶ optional directory (atomic rename)
//!                                  ▼
//!  relying party ──GET/HEAD /<issuer>/<shard>.crl, /<issuer>.json──▶ responder (cache + store)
//! ```
//!
//! # How CRLs and OCSP share the status records
//! There is one record per certificate: the pre-signer's worklist row (`certificates` in the
//! SQLite file, [`crate::store::SqliteStore`]). OCSP responses are signed per certificate from it;
//! CRL shards are built from the revoked rows of each shard. The record also carries the
//! certificate's shard (`crl_shard`, written when the record is, from [`shard_of`]) and, when
//! known, its notAfter (`not_after`: an entry leaves its shard once the certificate has
//! expired). The monotonic rule of the worklist (a revoked certificate never becomes good
//! again, a recorded revocation keeps its time and reason) therefore holds for both channels:
//! a revocation that OCSP serves is the revocation the CRL lists. Recording a revocation marks
//! its shard pending in the same transaction, so the updater cannot miss it after a crash.
//!
//! # Shards
//! Per issuer a fixed number of shards (`[issuers.crl] shards`, any positive number). A
//! certificate's shard is [`shard_of`] its serial: the serial's last 8 octets (the CSPRNG bits
//! BR §7.1 requires, at least 64) as a big-endian integer, modulo the shard count — stable,
//! computable by the ACME frontend at issuance without asking anyone, and uniform because the
//! bits are random. The shard count is recorded in the store the first time an updater runs
//! and a different count is refused afterwards: changing it would move certificates out of the
//! shard their CRL Distribution Point names. [`ShardMap`] is the API the frontend calls.
//!
//! # Numbers, freshness, resumption
//! See [`Updater`]: the cRLNumber is `max(stored + 1, now in microseconds)`, stored with a
//! compare-and-set (greater than what the store holds), so it strictly increases per shard
//! across restarts and when several updaters run against one store. Each shard is re-signed at
//! its own slot of every `update_period` (spread evenly), and within `revocation_delay` of a
//! revocation in it.

mod build;
mod metrics;
pub(crate) mod serve;
mod updater;

use std::collections::HashMap;

use crate::config::{Config, CrlConfig};
use crate::record::{IssuerName, Serial};

pub use crate::crl_shard::{CrlEntry, StoredCrl, shard_of};
pub use build::{CrlSigner, IssuerCrl};
pub use metrics::CrlMetrics;
pub use serve::CrlServer;
pub use updater::{PassReport, ShardOutcome, Updater};

/// Where an issuer's shards live: what the ACME frontend puts in each certificate's CRL
/// Distribution Points, and the complete list CCADB asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMap {
    issuer: IssuerName,
    shards: u32,
    base_url: String,
}

impl ShardMap {
    /// The map of `issuer` under `config` (as validated by [`crate::config::Config::load`]).
    pub fn new(issuer: &IssuerName, config: &CrlConfig) -> Self {
        Self {
            issuer: issuer.clone(),
            shards: config.shards,
            base_url: config.base_url.trim_end_matches('/').to_owned(),
        }
    }

    /// The maps of every issuer of `config` that publishes CRLs.
    pub fn all(config: &Config) -> Vec<ShardMap> {
        config
            .issuers
            .iter()
            .filter_map(|i| {
                i.crl
                    .as_ref()
                    .map(|c| ShardMap::new(&IssuerName(i.name.clone()), c))
            })
            .collect()
    }

    pub fn issuer(&self) -> &IssuerName {
        &self.issuer
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The shard of a certificate with this serial ([`shard_of`]).
    pub fn shard_of(&self, serial: &Serial) -> u32 {
        shard_of(serial, self.shards)
    }

    /// `<base_url>/<issuer>/<shard>.crl`: the CRL DP of the shard's certificates and the
    /// distributionPoint of its issuingDistributionPoint (they must be equal, BR §7.2.2).
    pub fn shard_url(&self, shard: u32) -> String {
        format!("{}/{}/{shard}.crl", self.base_url, self.issuer.0)
    }

    /// The CRL DP URL for a certificate with this serial.
    pub fn url_for(&self, serial: &Serial) -> String {
        self.shard_url(self.shard_of(serial))
    }

    /// Every shard's URL, in shard order: the CCADB "JSON array of partitioned CRL URLs".
    pub fn urls(&self) -> Vec<String> {
        (0..self.shards).map(|s| self.shard_url(s)).collect()
    }

    /// `<base_url>/<issuer>.json`, where the responder serves [`Self::urls`].
    pub fn list_url(&self) -> String {
        format!("{}/{}.json", self.base_url, self.issuer.0)
    }
}

/// Each CRL-publishing issuer's shard count, for [`SqliteStore::set_crl_shards`].
///
/// [`SqliteStore::set_crl_shards`]: crate::store::SqliteStore::set_crl_shards
pub fn crl_shard_counts(config: &Config) -> HashMap<IssuerName, u32> {
    config
        .issuers
        .iter()
        .filter_map(|i| {
            i.crl
                .as_ref()
                .map(|c| (IssuerName(i.name.clone()), c.shards))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn shards_come_from_the_serials_last_64_bits_and_never_move() {
        let s = Serial::from_hex("7f000000000000000000000000000000000003").unwrap();
        assert_eq!(shard_of(&s, 128), 3);
        assert_eq!(shard_of(&s, 1), 0);
        // Leading octets do not count; short serials are padded.
        let t = Serial::from_hex("01000000000000000003").unwrap();
        assert_eq!(shard_of(&t, 128), 3);
        assert_eq!(shard_of(&Serial::from_hex("05").unwrap(), 3), 2);
        assert_eq!(shard_of(&Serial::from_be_bytes(&[]), 7), 0);
        // u64::MAX % 100 = 15: the whole 64 bits, unsigned.
        let max = Serial::from_hex("ffffffffffffffff").unwrap();
        assert_eq!(shard_of(&max, 100), (u64::MAX % 100) as u32);
        // Uniform enough over random serials: every one of 128 shards gets some of 10,000.
        let mut seen = [0u32; 128];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            seen[shard_of(&Serial::from_be_bytes(&x.to_be_bytes()), 128) as usize] += 1;
        }
        assert!(seen.iter().all(|n| (40..120).contains(n)), "{seen:?}");
    }

    #[test]
    fn urls_are_stable_and_complete() {
        let config = CrlConfig {
            shards: 3,
            base_url: "http://crl.example.org/".into(),
            ..CrlConfig::default()
        };
        let map = ShardMap::new(&IssuerName("r1".into()), &config);
        assert_eq!(map.shard_url(2), "http://crl.example.org/r1/2.crl");
        assert_eq!(map.list_url(), "http://crl.example.org/r1.json");
        assert_eq!(
            map.urls(),
            [
                "http://crl.example.org/r1/0.crl",
                "http://crl.example.org/r1/1.crl",
                "http://crl.example.org/r1/2.crl"
            ]
        );
        assert_eq!(
            map.url_for(&Serial::from_hex("0a").unwrap()),
            "http://crl.example.org/r1/1.crl"
        );
    }
}
