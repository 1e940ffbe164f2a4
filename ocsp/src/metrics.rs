//! Prometheus metrics (`prometheus-client`) for the responder, and the `/metrics` server.
//!
//! One [`Registry`] per process: [`Metrics::register`] adds the responder's metrics to it, and
//! other parts of the service (the pre-signer) add theirs to the same `&mut Registry` before
//! it is frozen in an `Arc` and handed to [`serve`].
//!
//! What an operator can read from here:
//! - `ocsp_responses_total{status, source}`: answers by OCSP outcome (`good`, `revoked`,
//!   `unauthorized`, `malformed`, `try_later`) and where a signed answer came from (`cache`,
//!   `store`, `replica`; `none` for refusals);
//! - `ocsp_cache_requests_total{result}`: `hit`, `miss`, `revalidated` (an entry older than
//!   `cache_fresh_secs`, re-read from the store) and `stale` (served from cache because the
//!   store failed). Hit ratio = hit / (hit + miss + revalidated + stale);
//! - `ocsp_response_age_seconds` (now − thisUpdate) and `ocsp_response_time_to_expiry_seconds`
//!   (nextUpdate − now) at serving time: alert when the latter's low buckets fill, long before
//!   `ocsp_expired_total` (stored responses withheld because they reached nextUpdate) moves;
//! - `ocsp_store_latency_seconds{store, outcome}`, `ocsp_store_errors_total{store}`;
//! - `ocsp_degraded` (1 while the durable store is failing and answers come from the cache or
//!   the replica) and `ocsp_degraded_since_seconds` (Unix time, 0 when healthy);
//! - `ocsp_replica_writes_total{outcome}`: copies of primary hits into the local replica;
//! - `ocsp_requests_by_cert_id_hash_total{hash}`: well-formed requests by their CertID hash
//!   algorithm (`sha1`, `sha256`, `other`), whatever the answer. RFC 9919: "Operators
//!   of OCSP responders may consider logging the hash algorithm used by OCSP clients to inform
//!   their determination of when it is appropriate to obsolete the distribution of OCSP
//!   responses that employ SHA-1" — once the `sha1` rate stays at zero,
//!   `presigner.cert_id_hashes = ["sha256"]` drops the SHA-1 SingleResponse.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::hash_alg::HashAlg;

/// Shards of the metrics every request updates ([`ShardedCounter`], [`ValidityHistogram`]).
/// Each thread adds to its own shard (threads take shards in turn), and a scrape sums them: the
/// responder's HTTP threads answer on different cores, and one shared atomic (or the mutex of
/// `prometheus-client`'s `Histogram`) would move its cache line between the cores on every
/// request, five times per answer.
const SHARDS: usize = 8;

/// This thread's shard.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.try_with(|s| *s).unwrap_or(0)
}

/// One cache line (two: adjacent-line prefetch pairs them) per shard.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// A counter whose increments go to the calling thread's shard; exported as a `Counter`.
#[derive(Clone, Debug, Default)]
pub struct ShardedCounter(Arc<[Padded<AtomicU64>; SHARDS]>);

impl ShardedCounter {
    pub fn inc(&self) {
        self.0[shard()].0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Hour marks for the age and time-to-expiry histograms. Responses live 8 h to 10 days
/// (BR §4.9.9) and are re-signed after half their validity by default, so the interesting
/// boundaries are the first hours (about to expire) and the days around the refresh point.
const VALIDITY_HOURS: [u64; 15] = [1, 2, 4, 8, 12, 24, 36, 48, 60, 72, 84, 96, 120, 168, 240];

/// A histogram of whole seconds over [`VALIDITY_HOURS`] (and `+Inf`), sharded as
/// [`ShardedCounter`]; exported as a `Histogram` with the same series `prometheus-client`'s gave.
#[derive(Clone, Debug, Default)]
pub struct ValidityHistogram(Arc<[Padded<HistogramShard>; SHARDS]>);

#[derive(Debug, Default)]
struct HistogramShard {
    /// Per bucket (not cumulative), the last one `+Inf`.
    buckets: [AtomicU64; VALIDITY_HOURS.len() + 1],
    count: AtomicU64,
    /// Seconds: the observations are whole seconds, so the sum is exact.
    sum: AtomicU64,
}

impl ValidityHistogram {
    pub fn observe(&self, seconds: u64) {
        let bucket = VALIDITY_HOURS
            .iter()
            .position(|h| seconds <= h * 3600)
            .unwrap_or(VALIDITY_HOURS.len());
        let shard = &self.0[shard()].0;
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        shard.count.fetch_add(1, Ordering::Relaxed);
        shard.sum.fetch_add(seconds, Ordering::Relaxed);
    }
}

impl TypedMetric for ValidityHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ValidityHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (mut sum, mut count) = (0u64, 0u64);
        let mut buckets: Vec<(f64, u64)> = VALIDITY_HOURS
            .iter()
            .map(|h| (*h as f64 * 3600.0, 0))
            .chain(std::iter::once((f64::INFINITY, 0)))
            .collect();
        for shard in self.0.iter() {
            let shard = &shard.0;
            sum += shard.sum.load(Ordering::Relaxed);
            count += shard.count.load(Ordering::Relaxed);
            for (b, n) in buckets.iter_mut().zip(&shard.buckets) {
                b.1 += n.load(Ordering::Relaxed);
            }
        }
        encoder.encode_histogram::<NoLabelSet>(sum as f64, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub status: &'static str,
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub store: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreNameLabels {
    pub store: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HashLabels {
    pub hash: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn store_latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s: an in-process SQLite read is tens of µs, a Redis round trip ~100 µs.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// The responder's metric handles. Cheap to share: every handle is an `Arc` inside.
#[derive(Debug)]
pub struct Metrics {
    responses: Family<ResponseLabels, ShardedCounter>,
    cache: Family<ResultLabels, ShardedCounter>,
    response_age: ValidityHistogram,
    time_to_expiry: ValidityHistogram,
    expired: Counter,
    store_latency: HistogramFamily<StoreLabels>,
    store_errors: Family<StoreNameLabels, Counter>,
    replica_writes: Family<OutcomeLabels, Counter>,
    /// `ocsp_requests_by_cert_id_hash_total`, one handle per label taken at registration: the
    /// series exist (at 0) from start-up, so "no SHA-1 client" reads as a flat 0 rather than
    /// as a missing series, and a request costs one atomic add, not a family lookup.
    requests_sha1: ShardedCounter,
    requests_sha256: ShardedCounter,
    requests_other_hash: ShardedCounter,
    pub(crate) degraded: Gauge,
    pub(crate) degraded_since: Gauge,
    /// The series every cache hit increments (`responses{good|revoked, cache}`,
    /// `cache_requests{hit}`), resolved once on first use: a `Family` lookup takes its lock and
    /// hashes the labels on every call, and a series still appears only once it is used.
    hot: [std::sync::OnceLock<ShardedCounter>; 3],
}

impl Metrics {
    /// Registers the responder's metrics in `registry` and returns their handles.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let by_hash: Family<HashLabels, ShardedCounter> = Family::default();
        let hash_counter = |hash| by_hash.get_or_create(&HashLabels { hash }).clone();
        let m = Self {
            responses: Family::default(),
            cache: Family::default(),
            response_age: ValidityHistogram::default(),
            time_to_expiry: ValidityHistogram::default(),
            expired: Counter::default(),
            store_latency: Family::new_with_constructor(store_latency_histogram),
            store_errors: Family::default(),
            replica_writes: Family::default(),
            requests_sha1: hash_counter(HashAlg::Sha1.name()),
            requests_sha256: hash_counter(HashAlg::Sha256.name()),
            requests_other_hash: hash_counter("other"),
            degraded: Gauge::default(),
            degraded_since: Gauge::default(),
            hot: Default::default(),
        };
        registry.register(
            "ocsp_responses",
            "OCSP answers sent, by status and by where the signed response came from",
            m.responses.clone(),
        );
        registry.register(
            "ocsp_cache_requests",
            "In-memory cache lookups: hit, miss, revalidated (re-read from the store), stale (served while the store failed)",
            m.cache.clone(),
        );
        registry.register(
            "ocsp_response_age_seconds",
            "Seconds since thisUpdate of the responses served",
            m.response_age.clone(),
        );
        registry.register(
            "ocsp_response_time_to_expiry_seconds",
            "Seconds until nextUpdate of the responses served; low values mean the pre-signer is behind",
            m.time_to_expiry.clone(),
        );
        registry.register(
            "ocsp_expired",
            "Stored responses withheld because they had reached nextUpdate (answered unauthorized)",
            m.expired.clone(),
        );
        registry.register(
            "ocsp_store_latency_seconds",
            "Latency of store reads on the serving path",
            m.store_latency.clone(),
        );
        registry.register(
            "ocsp_store_errors",
            "Store reads on the serving path that failed or timed out",
            m.store_errors.clone(),
        );
        registry.register(
            "ocsp_replica_writes",
            "Copies of primary-store hits into the local replica: stored, kept (replica already newer), error, dropped (queue full)",
            m.replica_writes.clone(),
        );
        registry.register(
            "ocsp_requests_by_cert_id_hash",
            "Well-formed OCSP requests by CertID hash algorithm: sha1, sha256, other (RFC 9919: when sha1 stays at 0, SHA-1 CertIDs can go)",
            by_hash,
        );
        registry.register(
            "ocsp_degraded",
            "1 while the durable store fails and answers come from the cache or the replica",
            m.degraded.clone(),
        );
        registry.register(
            "ocsp_degraded_since_seconds",
            "Unix time the current degraded period began; 0 when healthy",
            m.degraded_since.clone(),
        );
        Arc::new(m)
    }

    /// Handles registered nowhere, for tests and tools that export no metrics.
    pub fn unregistered() -> Arc<Self> {
        Self::register(&mut Registry::default())
    }

    pub fn response(&self, status: &'static str, source: &'static str) {
        let labels = ResponseLabels { status, source };
        let hot = match (status, source) {
            ("good", "cache") => &self.hot[0],
            ("revoked", "cache") => &self.hot[1],
            _ => {
                self.responses.get_or_create(&labels).inc();
                return;
            }
        };
        hot.get_or_init(|| self.responses.get_or_create(&labels).clone())
            .inc();
    }

    /// A signed response served: its age and remaining validity, in seconds.
    pub fn served(&self, age: i64, time_to_expiry: i64) {
        self.response_age.observe(age.max(0) as u64);
        self.time_to_expiry.observe(time_to_expiry.max(0) as u64);
    }

    pub fn expired(&self) {
        self.expired.inc();
    }

    pub fn cache(&self, result: &'static str) {
        let labels = ResultLabels { result };
        if result == "hit" {
            self.hot[2]
                .get_or_init(|| self.cache.get_or_create(&labels).clone())
                .inc();
        } else {
            self.cache.get_or_create(&labels).inc();
        }
    }

    pub fn store_read(&self, store: &'static str, ok: bool, elapsed: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.store_latency
            .get_or_create(&StoreLabels { store, outcome })
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.store_errors
                .get_or_create(&StoreNameLabels { store })
                .inc();
        }
    }

    /// A well-formed request whose CertID uses `hash` (`None`: an algorithm this service does
    /// not serve).
    pub fn cert_id_hash(&self, hash: Option<HashAlg>) {
        match hash {
            Some(HashAlg::Sha1) => &self.requests_sha1,
            Some(HashAlg::Sha256) => &self.requests_sha256,
            None => &self.requests_other_hash,
        }
        .inc();
    }

    pub fn replica_write(&self, outcome: &'static str) {
        self.replica_writes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

/// The registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!("metrics encoding failed: {e}");
    }
    out
}

/// Serves `GET /metrics` from `registry` until `shutdown` resolves. Kept on its own listener
/// so operators can firewall it away from the public OCSP port.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    encode(&registry),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_metrics_export_what_prometheus_client_s_would() {
        let mut ours = Registry::default();
        let mut theirs = Registry::default();
        let (hist, counter) = (ValidityHistogram::default(), ShardedCounter::default());
        let reference = Histogram::new(VALIDITY_HOURS.iter().map(|h| *h as f64 * 3600.0));
        let reference_counter = Counter::<u64>::default();
        ours.register("h", "help", hist.clone());
        ours.register("c", "help", counter.clone());
        theirs.register("h", "help", reference.clone());
        theirs.register("c", "help", reference_counter.clone());
        // From several threads (several shards), on bucket bounds and past the last.
        let values = [0, 3600, 3601, 86_400, 864_000, 864_001, 10_000_000];
        std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| {
                    for v in values {
                        hist.observe(v);
                        counter.inc();
                    }
                });
            }
        });
        for _ in 0..3 {
            for v in values {
                reference.observe(v as f64);
                reference_counter.inc();
            }
        }
        assert_eq!(encode(&ours), encode(&theirs));
        assert_eq!(counter.get(), 3 * values.len() as u64);
    }

    #[test]
    fn requests_are_counted_by_cert_id_hash_from_zero() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        let line = |text: &str, hash: &str| {
            let prefix = format!("ocsp_requests_by_cert_id_hash_total{{hash=\"{hash}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .map(str::to_owned)
        };
        // Every series is there before the first request.
        let text = encode(&registry);
        for hash in ["sha1", "sha256", "other"] {
            assert_eq!(line(&text, hash).as_deref(), Some("0"), "{hash}: {text}");
        }
        m.cert_id_hash(Some(HashAlg::Sha1));
        m.cert_id_hash(Some(HashAlg::Sha1));
        m.cert_id_hash(Some(HashAlg::Sha256));
        m.cert_id_hash(None);
        let text = encode(&registry);
        assert_eq!(line(&text, "sha1").as_deref(), Some("2"), "{text}");
        assert_eq!(line(&text, "sha256").as_deref(), Some("1"), "{text}");
        assert_eq!(line(&text, "other").as_deref(), Some("1"), "{text}");
    }
}
