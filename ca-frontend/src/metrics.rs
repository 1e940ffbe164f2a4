//! The frontend's metrics, under `hsmgate_acme_`: what subscribers asked and were answered,
//! how orders move through their states, how long issuance takes, and the latency and errors
//! of what the frontend depends on (its database, the gateway, the OCSP store), so that an
//! operator sees issuance failing or slowing before subscribers do.
//!
//! Every label set is bounded: routes are the router's templates (`/acme/order/{id}`, not the
//! id), problem types the ACME registry's, database operations the [`Db`] methods' names.
//! Served with the remote perspectives' counters (the same registry) at
//! `server.metrics_listen`; `hsm-config/deploy/prometheus/alerts.yml` alerts on them.
//!
//! The database is measured by wrapping it ([`InstrumentedDb`]): every [`Db`] call is timed
//! and its failures counted by operation, whichever backend (SQLite, PostgreSQL) is behind it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::db::{Begun, Db, Issuance};
use crate::model::{
    Account, Authorization, CertificateRecord, ChallengeType, Order, OrderStatus, Revocation,
};
use crate::{Error, ProblemType};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProblemLabels {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ValidationLabels {
    challenge: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChallengeLabels {
    challenge: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: &'static str,
}

/// A rate limit of `[limits]`, as the `limit` label of `hsmgate_acme_rate_limited_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    AccountsPerHour,
    OrdersPerAccountPerHour,
    CertificatesPerDomainPerWeek,
}

impl Limit {
    fn as_str(self) -> &'static str {
        match self {
            Self::AccountsPerHour => "accounts_per_hour",
            Self::OrdersPerAccountPerHour => "orders_per_account_per_hour",
            Self::CertificatesPerDomainPerWeek => "certificates_per_domain_per_week",
        }
    }
}

/// A call to the signing pipeline, as the `call` label of `hsmgate_acme_gateway_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayCall {
    /// A certificate's `SignBatch` item (batched with concurrent finalizations).
    SignCertificate,
    /// A certificate's OCSP status published: the response signed through the gateway and
    /// stored (OCSP store write included).
    PublishOcsp,
}

impl GatewayCall {
    fn as_str(self) -> &'static str {
        match self {
            Self::SignCertificate => "sign_certificate",
            Self::PublishOcsp => "publish_ocsp",
        }
    }
}

/// Seconds from 0.5 ms to ~16 s: requests, database calls, signing.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
}

/// Seconds from 10 ms to ~80 s: issuance (CAA re-check, signing, recording, OCSP) and
/// validation (DNS, HTTP or TLS to the subscriber, remote perspectives).
fn slow_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// The frontend's metrics; cheap to clone (every field is a shared handle).
#[derive(Clone, Debug)]
pub struct AcmeMetrics {
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    problems: Family<ProblemLabels, Counter>,
    orders: Family<StateLabels, Counter>,
    issuance_seconds: Histogram,
    validations: Family<ValidationLabels, Counter>,
    validation_seconds: Family<ChallengeLabels, Histogram, fn() -> Histogram>,
    rate_limited: Family<LimitLabels, Counter>,
    db_seconds: Family<OpLabels, Histogram, fn() -> Histogram>,
    db_errors: Family<OpLabels, Counter>,
    gateway_seconds: Family<CallLabels, Histogram, fn() -> Histogram>,
    gateway_errors: Family<CallLabels, Counter>,
    republish_pending: Gauge,
    republish_last_success: Gauge,
    republished: Counter,
    abandoned: Counter,
}

impl Default for AcmeMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_buckets),
            problems: Family::default(),
            orders: Family::default(),
            issuance_seconds: slow_buckets(),
            validations: Family::default(),
            validation_seconds: Family::new_with_constructor(slow_buckets),
            rate_limited: Family::default(),
            db_seconds: Family::new_with_constructor(latency_buckets),
            db_errors: Family::default(),
            gateway_seconds: Family::new_with_constructor(latency_buckets),
            gateway_errors: Family::default(),
            republish_pending: Gauge::default(),
            republish_last_success: Gauge::default(),
            republished: Counter::default(),
            abandoned: Counter::default(),
        }
    }
}

impl AcmeMetrics {
    /// Registers every family in `registry` (whose prefix should be `hsmgate_acme`).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "requests",
            "HTTP requests by route template and status code",
            self.requests.clone(),
        );
        r.register(
            "request_seconds",
            "Time to answer a request, by route template",
            self.request_seconds.clone(),
        );
        r.register(
            "problems",
            "Problem documents answered, by ACME problem type (serverInternal: our fault)",
            self.problems.clone(),
        );
        r.register(
            "orders",
            "Orders that reached a state: pending (created), processing (finalization begun), valid (certificate delivered), invalid (finalization failed or abandoned; failed validations are in validations_total)",
            self.orders.clone(),
        );
        r.register(
            "issuance_seconds",
            "From a finalize request to its order valid: CAA re-check, signing, recording, OCSP publication",
            self.issuance_seconds.clone(),
        );
        r.register(
            "validations",
            "Challenge validations by challenge type and outcome (valid, invalid), corroboration included",
            self.validations.clone(),
        );
        r.register(
            "validation_seconds",
            "Time a challenge validation took, remote perspectives included, by challenge type",
            self.validation_seconds.clone(),
        );
        r.register(
            "rate_limited",
            "Requests refused by a rate limit, by limit",
            self.rate_limited.clone(),
        );
        r.register(
            "db_seconds",
            "CA database calls by operation (one transaction each)",
            self.db_seconds.clone(),
        );
        r.register(
            "db_errors",
            "CA database calls that failed, by operation (the database unreachable, a query refused)",
            self.db_errors.clone(),
        );
        r.register(
            "gateway_seconds",
            "Signing-pipeline calls by kind: sign_certificate (gateway SignBatch item), publish_ocsp (response signed and stored)",
            self.gateway_seconds.clone(),
        );
        r.register(
            "gateway_errors",
            "Signing-pipeline calls that failed, by kind",
            self.gateway_errors.clone(),
        );
        r.register(
            "republish_pending",
            "Records whose OCSP status the last repair pass left unpublished past the grace period (0 after a complete pass; a lower bound when it stopped at a failure)",
            self.republish_pending.clone(),
        );
        r.register(
            "republish_last_success_seconds",
            "Unix time the last repair pass finished without a failure",
            self.republish_last_success.clone(),
        );
        r.register(
            "republished",
            "OCSP statuses the repair pass published (left unpublished by a crash or a failed publish)",
            self.republished.clone(),
        );
        r.register(
            "abandoned_orders",
            "Orders the repair pass made invalid: their finalization stopped before a certificate was recorded",
            self.abandoned.clone(),
        );
    }

    /// An order reached `state`.
    pub fn order(&self, state: OrderStatus) {
        self.orders
            .get_or_create(&StateLabels {
                state: state.as_str(),
            })
            .inc();
    }

    /// A finalization that began `since` ended with its order valid.
    pub fn issued(&self, since: Instant) {
        self.order(OrderStatus::Valid);
        self.issuance_seconds.observe(since.elapsed().as_secs_f64());
    }

    /// A validation of `kind` that began `since` ended `valid` or not.
    pub fn validated(&self, kind: ChallengeType, valid: bool, since: Instant) {
        let challenge = kind.as_str();
        self.validations
            .get_or_create(&ValidationLabels {
                challenge,
                outcome: if valid { "valid" } else { "invalid" },
            })
            .inc();
        self.validation_seconds
            .get_or_create(&ChallengeLabels { challenge })
            .observe(since.elapsed().as_secs_f64());
    }

    /// Counts `result` against `limit` if it is that limit's refusal; returns it unchanged.
    pub fn limited<T>(&self, limit: Limit, result: Result<T, Error>) -> Result<T, Error> {
        if let Err(Error::Problem(p)) = &result
            && p.kind == ProblemType::RateLimited
        {
            self.limit_hit(limit);
        }
        result
    }

    /// A request refused by `limit`.
    pub fn limit_hit(&self, limit: Limit) {
        self.rate_limited
            .get_or_create(&LimitLabels {
                limit: limit.as_str(),
            })
            .inc();
    }

    /// Times `call` and counts its failure.
    pub async fn gateway<T>(
        &self,
        call: GatewayCall,
        fut: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let started = Instant::now();
        let result = fut.await;
        let labels = CallLabels {
            call: call.as_str(),
        };
        self.gateway_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.gateway_errors.get_or_create(&labels).inc();
        }
        result
    }

    /// A repair pass ended with `pending` records left unpublished (a lower bound if it
    /// stopped at a failure, `ok` false).
    pub fn republish_pass(&self, pending: usize, ok: bool) {
        self.republish_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        if ok {
            self.republish_last_success.set(crate::unix_now());
        }
    }

    /// The repair pass published one record's status.
    pub fn republished(&self) {
        self.republished.inc();
    }

    /// The repair pass made a stalled order invalid.
    pub fn abandoned(&self) {
        self.abandoned.inc();
        self.order(OrderStatus::Invalid);
    }

    async fn db<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let started = Instant::now();
        let result = fut.await;
        let labels = OpLabels { op };
        self.db_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.db_errors.get_or_create(&labels).inc();
        }
        result
    }

    fn request(&self, route: &str, code: u16, took: Duration, problem: Option<ProblemType>) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                code,
            })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
        if let Some(kind) = problem {
            self.problems
                .get_or_create(&ProblemLabels {
                    r#type: kind.name(),
                })
                .inc();
        }
    }
}

/// Middleware (outermost layer): counts and times every request by its route template, and the
/// problem type of every problem document (which [`crate::Problem`]'s response carries as an
/// extension). Unrouted paths count as `other`, so scanners cannot grow the label set.
pub async fn count_requests(
    State(metrics): State<Arc<AcmeMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let problem = response.extensions().get::<ProblemType>().copied();
    metrics.request(
        &route,
        response.status().as_u16(),
        started.elapsed(),
        problem,
    );
    response
}

/// A [`Db`] whose every call is timed and whose failures are counted, by operation.
#[derive(Debug)]
pub struct InstrumentedDb {
    inner: Arc<dyn Db>,
    metrics: Arc<AcmeMetrics>,
}

impl InstrumentedDb {
    pub fn wrap(inner: Arc<dyn Db>, metrics: Arc<AcmeMetrics>) -> Arc<dyn Db> {
        Arc::new(Self { inner, metrics })
    }
}

#[async_trait]
impl Db for InstrumentedDb {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn insert_account(&self, account: &Account) -> Result<Result<(), Account>, Error> {
        let f = self.inner.insert_account(account);
        self.metrics.db("insert_account", f).await
    }
    async fn account(&self, id: &str) -> Result<Option<Account>, Error> {
        self.metrics.db("account", self.inner.account(id)).await
    }
    async fn account_by_thumbprint(&self, thumbprint: &str) -> Result<Option<Account>, Error> {
        let f = self.inner.account_by_thumbprint(thumbprint);
        self.metrics.db("account_by_thumbprint", f).await
    }
    async fn update_account(&self, account: &Account) -> Result<bool, Error> {
        let f = self.inner.update_account(account);
        self.metrics.db("update_account", f).await
    }
    async fn accounts_since(&self, since: i64, at_most: u64) -> Result<u64, Error> {
        let f = self.inner.accounts_since(since, at_most);
        self.metrics.db("accounts_since", f).await
    }
    async fn insert_order(&self, order: &Order, authzs: &[Authorization]) -> Result<(), Error> {
        let f = self.inner.insert_order(order, authzs);
        self.metrics.db("insert_order", f).await
    }
    async fn order(&self, id: &str) -> Result<Option<Order>, Error> {
        self.metrics.db("order", self.inner.order(id)).await
    }
    async fn orders_of_account(&self, account_id: &str) -> Result<Vec<String>, Error> {
        let f = self.inner.orders_of_account(account_id);
        self.metrics.db("orders_of_account", f).await
    }
    async fn orders_since(&self, account_id: &str, since: i64, at_most: u64) -> Result<u64, Error> {
        let f = self.inner.orders_since(account_id, since, at_most);
        self.metrics.db("orders_since", f).await
    }
    async fn update_order(
        &self,
        order: &Order,
        expected: Option<OrderStatus>,
    ) -> Result<bool, Error> {
        let f = self.inner.update_order(order, expected);
        self.metrics.db("update_order", f).await
    }
    async fn authz(&self, id: &str) -> Result<Option<Authorization>, Error> {
        self.metrics.db("authz", self.inner.authz(id)).await
    }
    async fn update_authz(&self, authz: &Authorization) -> Result<(), Error> {
        let f = self.inner.update_authz(authz);
        self.metrics.db("update_authz", f).await
    }
    async fn update_authz_if(
        &self,
        authz: &Authorization,
        expected: &Authorization,
    ) -> Result<bool, Error> {
        let f = self.inner.update_authz_if(authz, expected);
        self.metrics.db("update_authz_if", f).await
    }
    async fn begin_issuance(&self, issuance: &Issuance) -> Result<Begun, Error> {
        let f = self.inner.begin_issuance(issuance);
        self.metrics.db("begin_issuance", f).await
    }
    async fn abandon_issuance(
        &self,
        order: &Order,
        serial: &str,
        replaces: Option<&str>,
    ) -> Result<bool, Error> {
        let f = self.inner.abandon_issuance(order, serial, replaces);
        self.metrics.db("abandon_issuance", f).await
    }
    async fn processing_orders(&self, limit: u32) -> Result<Vec<Order>, Error> {
        let f = self.inner.processing_orders(limit);
        self.metrics.db("processing_orders", f).await
    }
    async fn reserved_at(&self, serial: &str) -> Result<Option<i64>, Error> {
        let f = self.inner.reserved_at(serial);
        self.metrics.db("reserved_at", f).await
    }
    async fn insert_certificate(
        &self,
        record: &CertificateRecord,
        domains: &[String],
        mark: i64,
    ) -> Result<(), Error> {
        let f = self.inner.insert_certificate(record, domains, mark);
        self.metrics.db("insert_certificate", f).await
    }
    async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, Error> {
        let f = self.inner.certificate(serial);
        self.metrics.db("certificate", f).await
    }
    async fn revoke(
        &self,
        serial: &str,
        revocation: Revocation,
        mark: i64,
    ) -> Result<Option<(Revocation, bool)>, Error> {
        let f = self.inner.revoke(serial, revocation, mark);
        self.metrics.db("revoke", f).await
    }
    async fn ocsp_published(
        &self,
        serial: &str,
        mark: Option<i64>,
        order: Option<&Order>,
    ) -> Result<(), Error> {
        let f = self.inner.ocsp_published(serial, mark, order);
        self.metrics.db("ocsp_published", f).await
    }
    async fn ocsp_pending(
        &self,
        before: i64,
        limit: u32,
    ) -> Result<Vec<(CertificateRecord, i64)>, Error> {
        let f = self.inner.ocsp_pending(before, limit);
        self.metrics.db("ocsp_pending", f).await
    }
    async fn mark_renew_now(&self, serials: &[String]) -> Result<usize, Error> {
        let f = self.inner.mark_renew_now(serials);
        self.metrics.db("mark_renew_now", f).await
    }
    async fn mark_replaced(&self, serial: &str, by_order: &str) -> Result<bool, Error> {
        let f = self.inner.mark_replaced(serial, by_order);
        self.metrics.db("mark_replaced", f).await
    }
    async fn certificates_since(
        &self,
        domain: &str,
        since: i64,
        at_most: u64,
    ) -> Result<u64, Error> {
        let f = self.inner.certificates_since(domain, since, at_most);
        self.metrics.db("certificates_since", f).await
    }
}
