//! The CRL updater's Prometheus metrics (`hsmgate_crl_*`): per shard what it holds and how old
//! it is, per issuer how far behind revocations it runs, what failed, and the configured
//! periods the alerts compare against.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::StoredCrl;
use crate::config::CrlConfig;
use crate::record::IssuerName;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ShardLabels {
    pub(super) issuer: String,
    pub(super) shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct IssuerLabels {
    pub(super) issuer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KindLabels {
    pub(super) issuer: String,
    pub(super) kind: &'static str,
}

/// The updater's metrics, under `hsmgate_crl_`: per shard what it holds and how old it is, per
/// issuer how far behind revocations it runs and what failed. A stale shard shows as a growing
/// `shard_age_seconds` (alert well before `next_update_secs`) before any relying party sees an
/// expired CRL.
#[derive(Clone, Debug, Default)]
pub struct CrlMetrics {
    pub(super) entries: Family<ShardLabels, Gauge>,
    pub(super) bytes: Family<ShardLabels, Gauge>,
    pub(super) number: Family<ShardLabels, Gauge>,
    pub(super) this_update: Family<ShardLabels, Gauge>,
    pub(super) age: Family<ShardLabels, Gauge>,
    pub(super) pending: Family<IssuerLabels, Gauge>,
    pub(super) lag: Family<IssuerLabels, Gauge>,
    pub(super) oldest_pending: Family<IssuerLabels, Gauge>,
    pub(super) signed: Family<IssuerLabels, Counter>,
    pub(super) superseded: Family<IssuerLabels, Counter>,
    pub(super) failures: Family<KindLabels, Counter>,
    pub(super) update_period: Family<IssuerLabels, Gauge>,
    pub(super) validity: Family<IssuerLabels, Gauge>,
    pub(super) revocation_delay: Family<IssuerLabels, Gauge>,
}

impl CrlMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("hsmgate_crl");
        r.register(
            "shard_entries",
            "Entries in the stored shard",
            self.entries.clone(),
        );
        r.register(
            "shard_bytes",
            "DER bytes of the stored shard",
            self.bytes.clone(),
        );
        r.register(
            "shard_number",
            "cRLNumber of the stored shard (microseconds)",
            self.number.clone(),
        );
        r.register(
            "shard_this_update_seconds",
            "thisUpdate (Unix time) of the stored shard",
            self.this_update.clone(),
        );
        r.register(
            "shard_age_seconds",
            "Age of the stored shard's thisUpdate at the last tick: alert well before next_update_secs",
            self.age.clone(),
        );
        r.register(
            "pending_shards",
            "Shards with a revocation not yet in a stored CRL, at the last tick",
            self.pending.clone(),
        );
        r.register(
            "revocation_lag_seconds",
            "For the last pending shard stored: seconds from its first unpublished revocation to its CRL being stored",
            self.lag.clone(),
        );
        r.register(
            "oldest_pending_seconds",
            "Age of the oldest unpublished revocation at the last tick (0: none); must stay below revocation_delay_secs",
            self.oldest_pending.clone(),
        );
        r.register(
            "shards_signed",
            "Shards signed and stored",
            self.signed.clone(),
        );
        r.register(
            "shards_superseded",
            "Shards signed but not stored: another updater stored a greater cRLNumber first",
            self.superseded.clone(),
        );
        r.register(
            "failures",
            "Updater failures by kind",
            self.failures.clone(),
        );
        // The configured periods, so that alerts compare ages with them rather than with
        // numbers copied from the config file.
        r.register(
            "update_period_seconds",
            "Configured update_period_secs: every shard is re-signed at least this often",
            self.update_period.clone(),
        );
        r.register(
            "validity_seconds",
            "Configured next_update_secs: nextUpdate - thisUpdate of every shard",
            self.validity.clone(),
        );
        r.register(
            "revocation_delay_seconds",
            "Configured revocation_delay_secs: a revocation is in a stored shard within this",
            self.revocation_delay.clone(),
        );
    }

    /// Publishes `config`'s periods for `issuer`.
    pub(super) fn configured(&self, issuer: &IssuerName, config: &CrlConfig) {
        let l = IssuerLabels {
            issuer: issuer.0.clone(),
        };
        let secs = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
        self.update_period
            .get_or_create(&l)
            .set(secs(config.update_period_secs));
        self.validity
            .get_or_create(&l)
            .set(secs(config.next_update_secs));
        self.revocation_delay
            .get_or_create(&l)
            .set(secs(config.revocation_delay_secs));
    }

    pub(super) fn shard(&self, issuer: &IssuerName, shard: u32, crl: &StoredCrl) {
        let l = ShardLabels {
            issuer: issuer.0.clone(),
            shard: shard.to_string(),
        };
        self.entries.get_or_create(&l).set(crl.entries as i64);
        self.bytes.get_or_create(&l).set(crl.der.len() as i64);
        self.number.get_or_create(&l).set(crl.number);
        self.this_update.get_or_create(&l).set(crl.this_update);
    }

    pub(super) fn failure(&self, issuer: &IssuerName, kind: &'static str) {
        self.failures
            .get_or_create(&KindLabels {
                issuer: issuer.0.clone(),
                kind,
            })
            .inc();
    }
}
