//! The pre-signer's Prometheus metrics: what it signed and refused, its errors by kind, the
//! backlog of due certificates, and the age of the oldest response it keeps.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::as_i64;
use crate::error::{Error, error_kind};
use crate::store::Backlog;

/// The pre-signer's metrics; register them with [`PresignerMetrics::register`] into the
/// registry the responder serves.
#[derive(Clone, Debug, Default)]
pub struct PresignerMetrics {
    pub(super) signed: Counter,
    pub(super) refused: Counter,
    pub(super) errors: Family<ErrorLabels, Counter>,
    pub(super) backlog: Gauge,
    pub(super) revocations_pending: Gauge,
    pub(super) certificates: Gauge,
    pub(super) oldest_this_update: Gauge,
    pub(super) last_success: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ErrorLabels {
    kind: &'static str,
}

impl PresignerMetrics {
    /// Responses signed since start (the `responses_signed` counter).
    pub fn signed_total(&self) -> u64 {
        self.signed.get()
    }

    /// Registers every metric under `hsmgate_ocsp_presigner_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("hsmgate_ocsp_presigner");
        r.register(
            "responses_signed",
            "Responses signed (rate: signatures per second through the gateway)",
            self.signed.clone(),
        );
        r.register(
            "responses_refused",
            "Signed responses the store refused because the stored one must win (a revocation, or a newer response)",
            self.refused.clone(),
        );
        r.register("errors", "Pre-signer errors by kind", self.errors.clone());
        r.register(
            "backlog",
            "Certificates due for (re-)signing at the last refresh tick, after it ran",
            self.backlog.clone(),
        );
        r.register(
            "revocations_pending",
            "Revocations recorded but not yet published, at the last refresh tick",
            self.revocations_pending.clone(),
        );
        r.register(
            "certificates",
            "Certificates in the worklist",
            self.certificates.clone(),
        );
        r.register(
            "oldest_this_update_seconds",
            "thisUpdate (Unix time) of the stalest published response: alert well before it is validity_hours old",
            self.oldest_this_update.clone(),
        );
        r.register(
            "last_success_seconds",
            "Unix time of the last refresh tick that completed without error",
            self.last_success.clone(),
        );
    }

    /// Counts `error` under its kind.
    pub fn error(&self, error: &Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                kind: error_kind(error),
            })
            .inc();
    }

    pub(super) fn backlog(&self, b: &Backlog) {
        self.revocations_pending.set(as_i64(b.revocations_pending));
        self.certificates.set(as_i64(b.certificates));
        if let Some(t) = b.oldest_this_update {
            self.oldest_this_update.set(t);
        }
    }
}
