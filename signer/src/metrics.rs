//! Prometheus metrics (`prometheus-client`), served on `/metrics` by a small axum server.
//!
//! Per-HSM handles are resolved once when an HSM is created, so the signing path increments
//! plain atomics and never looks a label set up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HsmLabels {
    pub hsm: String,
    pub datacenter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HsmCodeLabels {
    pub hsm: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabels {
    pub client: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientCodeLabels {
    pub client: String,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLimitLabels {
    pub client: String,
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyReasonLabels {
    pub key: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// A gRPC code as its label value (the name of `tonic::Code`'s variant, as `{code:?}` prints
/// it), without formatting a string on every RPC.
pub(crate) fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s: deadlines are seconds, and a failover after a hang takes over one.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// Every metric the gateway exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    signatures: Family<HsmLabels, Counter>,
    hsm_errors: Family<HsmCodeLabels, Counter>,
    job_seconds: HistogramFamily<HsmLabels>,
    hsm_up: Family<HsmLabels, Gauge>,
    queue_depth: Family<HsmLabels, Gauge>,
    sessions_busy: Family<HsmLabels, Gauge>,
    sessions: Family<HsmLabels, Gauge>,
    rotation_exits: Family<HsmLabels, Counter>,
    retries: Family<HsmLabels, Counter>,
    rpcs: Family<RpcLabels, Counter>,
    rpc_seconds: HistogramFamily<MethodLabels>,
    rpc_signatures: Family<MethodLabels, Counter>,
    reloads: Family<OutcomeLabels, Counter>,
    client_requests: Family<ClientCodeLabels, Counter>,
    client_signatures: Family<ClientLabels, Counter>,
    client_in_flight: Family<ClientLabels, Gauge>,
    client_limited: Family<ClientLimitLabels, Counter>,
    client_limit: Family<ClientLimitLabels, Gauge>,
    unchecked_payload_keys: Family<KeyReasonLabels, Gauge>,
    audit_records: Family<OutcomeLabels, Counter>,
    audit_failures: Counter,
    audit_seconds: Histogram,
    audit_groups: Counter,
    audit_disabled: Gauge,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("hsmgate");
        let m = Self {
            signatures: Family::default(),
            hsm_errors: Family::default(),
            job_seconds: Family::new_with_constructor(latency_histogram),
            hsm_up: Family::default(),
            queue_depth: Family::default(),
            sessions_busy: Family::default(),
            sessions: Family::default(),
            rotation_exits: Family::default(),
            retries: Family::default(),
            rpcs: Family::default(),
            rpc_seconds: Family::new_with_constructor(latency_histogram),
            rpc_signatures: Family::default(),
            reloads: Family::default(),
            client_requests: Family::default(),
            client_signatures: Family::default(),
            client_in_flight: Family::default(),
            client_limited: Family::default(),
            client_limit: Family::default(),
            unchecked_payload_keys: Family::default(),
            audit_records: Family::default(),
            audit_failures: Counter::default(),
            audit_seconds: latency_histogram(),
            audit_groups: Counter::default(),
            audit_disabled: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "hsm_signatures",
            "Signatures made, per HSM",
            m.signatures.clone(),
        );
        registry.register(
            "hsm_errors",
            "PKCS#11 failures per HSM and CKR code",
            m.hsm_errors.clone(),
        );
        registry.register(
            "hsm_job_seconds",
            "Time a worker spent on one job (a chunk of signatures), per HSM",
            m.job_seconds.clone(),
        );
        registry.register(
            "hsm_up",
            "1 when the HSM is in rotation, 0 when out",
            m.hsm_up.clone(),
        );
        registry.register(
            "hsm_queue_depth",
            "Signatures queued or in progress, per HSM",
            m.queue_depth.clone(),
        );
        registry.register(
            "hsm_sessions_busy",
            "Sessions inside a PKCS#11 call, per HSM",
            m.sessions_busy.clone(),
        );
        registry.register(
            "hsm_sessions",
            "Sessions configured, per HSM",
            m.sessions.clone(),
        );
        registry.register(
            "hsm_rotation_exits",
            "Times the HSM was taken out of rotation (device fault, hang, repeated failures)",
            m.rotation_exits.clone(),
        );
        registry.register(
            "hsm_retries",
            "Jobs this HSM could not do that were retried on another HSM",
            m.retries.clone(),
        );
        registry.register(
            "rpcs",
            "RPCs answered, per method and gRPC code",
            m.rpcs.clone(),
        );
        registry.register(
            "rpc_seconds",
            "RPC latency, per method",
            m.rpc_seconds.clone(),
        );
        registry.register(
            "rpc_signatures",
            "Signatures returned, per method",
            m.rpc_signatures.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads, by outcome",
            m.reloads.clone(),
        );
        registry.register(
            "client_requests",
            "Signing RPCs per client (configured name, `-` for unknown callers) and gRPC code",
            m.client_requests.clone(),
        );
        registry.register(
            "client_signatures",
            "Signatures returned, per client",
            m.client_signatures.clone(),
        );
        registry.register(
            "client_in_flight",
            "Signing RPCs in progress, per client",
            m.client_in_flight.clone(),
        );
        registry.register(
            "client_limited",
            "Signing RPCs refused by a client's limit (rate or concurrency)",
            m.client_limited.clone(),
        );
        registry.register(
            "client_limit",
            "Configured per-client limits (signatures_per_sec, burst, max_concurrent, max_queued_signatures, share)",
            m.client_limit.clone(),
        );
        registry.register(
            "unchecked_payload_keys",
            "1 per issuing key that may sign unchecked payloads (allow_unchecked_payloads), with its reason",
            m.unchecked_payload_keys.clone(),
        );
        registry.register(
            "audit_records",
            "Audit records, by outcome of their write (written, failed)",
            m.audit_records.clone(),
        );
        registry.register(
            "audit_failures",
            "Failed audit writes (each fails every record of its group)",
            m.audit_failures.clone(),
        );
        registry.register(
            "audit_write_seconds",
            "Time from handing a record to the audit writer to its fdatasync",
            m.audit_seconds.clone(),
        );
        registry.register(
            "audit_groups",
            "Groups of audit records written together, each by one write and fdatasync (records per sync = audit_records_total / this)",
            m.audit_groups.clone(),
        );
        // Always exported (0 in production), so that an alert on `== 1` needs no other rule.
        registry.register(
            "audit_disabled",
            "1 while this gateway runs WITHOUT an audit log (a bench-unaudited build: benchmarks only)",
            m.audit_disabled.clone(),
        );
        Arc::new(Self { registry, ..m })
    }

    pub fn for_hsm(self: &Arc<Self>, hsm: &str, datacenter: &str, sessions: u32) -> HsmMetrics {
        let labels = HsmLabels {
            hsm: hsm.to_owned(),
            datacenter: datacenter.to_owned(),
        };
        self.sessions.get_or_create(&labels).set(sessions.into());
        HsmMetrics {
            hsm: hsm.to_owned(),
            signatures: self.signatures.get_or_create(&labels).clone(),
            job_seconds: self.job_seconds.get_or_create(&labels).clone(),
            up: self.hsm_up.get_or_create(&labels).clone(),
            queue_depth: self.queue_depth.get_or_create(&labels).clone(),
            sessions_busy: self.sessions_busy.get_or_create(&labels).clone(),
            rotation_exits: self.rotation_exits.get_or_create(&labels).clone(),
            retries: self.retries.get_or_create(&labels).clone(),
            errors: self.hsm_errors.clone(),
        }
    }

    pub fn rpc(&self, method: &'static str, code: tonic::Code, elapsed: Duration, signatures: u64) {
        self.rpcs
            .get_or_create(&RpcLabels {
                method,
                code: code_label(code),
            })
            .inc();
        let m = MethodLabels { method };
        self.rpc_seconds
            .get_or_create(&m)
            .observe(elapsed.as_secs_f64());
        if signatures > 0 {
            self.rpc_signatures.get_or_create(&m).inc_by(signatures);
        }
    }

    /// An audit record written (or not), and how long the caller waited for it.
    pub fn audit(&self, ok: bool, waited: Duration) {
        let outcome = if ok { "written" } else { "failed" };
        self.audit_records
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.audit_seconds.observe(waited.as_secs_f64());
    }

    /// A group of audit records written and synced together.
    pub fn audit_group(&self) {
        self.audit_groups.inc();
    }

    /// This gateway signs with no audit log (`[audit] bench_unaudited`, benchmarks only).
    pub fn audit_disabled(&self) {
        self.audit_disabled.set(1);
    }

    pub fn audit_failure(&self) {
        self.audit_failures.inc();
    }

    /// A signing RPC of `client` answered with `code`, with `signatures` returned.
    pub fn client_rpc(&self, client: &str, code: tonic::Code, signatures: u64) {
        self.client_requests
            .get_or_create(&ClientCodeLabels {
                client: client.to_owned(),
                code: code_label(code),
            })
            .inc();
        if signatures > 0 {
            self.client_signatures
                .get_or_create(&ClientLabels {
                    client: client.to_owned(),
                })
                .inc_by(signatures);
        }
    }

    /// The in-flight gauge of `client`.
    pub fn client_in_flight(&self, client: &str) -> Gauge {
        self.client_in_flight
            .get_or_create(&ClientLabels {
                client: client.to_owned(),
            })
            .clone()
    }

    pub fn client_limited(&self, client: &str, limit: &'static str) {
        self.client_limited
            .get_or_create(&ClientLimitLabels {
                client: client.to_owned(),
                limit,
            })
            .inc();
    }

    /// Publishes a client's configured limit (0 = none).
    pub fn set_client_limit(&self, client: &str, limit: &'static str, value: u32) {
        self.client_limit
            .get_or_create(&ClientLimitLabels {
                client: client.to_owned(),
                limit,
            })
            .set(value.into());
    }

    /// Marks `key` as an issuing key with `allow_unchecked_payloads` (`reason`).
    pub fn set_unchecked_payload_key(&self, key: &str, reason: &str) {
        self.unchecked_payload_keys
            .get_or_create(&KeyReasonLabels {
                key: key.to_owned(),
                reason: reason.chars().take(200).collect(),
            })
            .set(1);
    }

    /// Forgets the keys of the previous configuration (a reload may have removed an opt-in).
    pub fn clear_unchecked_payload_keys(&self) {
        self.unchecked_payload_keys.clear();
    }

    pub fn reload(&self, outcome: &'static str) {
        self.reloads.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("metrics encoding failed: {e}");
        }
        out
    }
}

/// One HSM's metric handles.
#[derive(Clone, Debug)]
pub struct HsmMetrics {
    hsm: String,
    signatures: Counter,
    job_seconds: Histogram,
    up: Gauge,
    queue_depth: Gauge,
    sessions_busy: Gauge,
    pub rotation_exits: Counter,
    pub retries: Counter,
    errors: Family<HsmCodeLabels, Counter>,
}

impl HsmMetrics {
    pub fn signed(&self, n: u64, elapsed: Duration) {
        self.signatures.inc_by(n);
        self.job_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn error(&self, code: &str) {
        self.errors
            .get_or_create(&HsmCodeLabels {
                hsm: self.hsm.clone(),
                code: code.to_owned(),
            })
            .inc();
    }

    pub fn set_up(&self, up: bool) {
        self.up.set(i64::from(up));
    }

    pub fn sample(&self, queue: usize, busy: usize) {
        self.queue_depth.set(queue as i64);
        self.sessions_busy.set(busy as i64);
    }
}

/// Serves `/metrics` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    );
    // A handful of connections for the scraper, with the usual timeouts.
    let gate = hsmgate_signer_api::http_listener::Gate::new(
        hsmgate_signer_api::http_listener::Limits::metrics(),
    );
    hsmgate_signer_api::http_listener::serve(listener, app, gate, shutdown).await
}

/// Where `/metrics` listens, for logs.
pub fn describe(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "disabled".to_owned(), |a| a.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_labels_are_the_variant_names() {
        for n in 0..=16 {
            let code = tonic::Code::from_i32(n);
            assert_eq!(code_label(code), format!("{code:?}"));
        }
    }
}
