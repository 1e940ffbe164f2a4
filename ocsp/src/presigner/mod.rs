//! The pre-signer: keeps a signed, unexpired response for every certificate in the worklist,
//! and publishes status changes (issuance, revocation) before they are acknowledged.
//!
//! ```text
//!  import file / ACME frontend ──▶ worklist (SQLite `certificates`, monotonic upsert)
//!                                     │ due(now): revocations, never published, oldest
//!                                     ▼
//!                        sign_responses ──SignBatch──▶ gateway
//!                                     │
//!                                     ▼ put (monotonic: may_replace) ──▶ SQLite | Redis
//!                               mark_published (only if the status is still current)
//! ```
//!
//! # Validity (CA/Browser Forum BR §4.9.9)
//! thisUpdate = now − backdate (whole seconds; see [`Presigner::with_backdate`]), nextUpdate =
//! thisUpdate + `validity_hours`. A response is due again once thisUpdate is
//! `refresh_after_hours` old. The configuration is checked against the BR bounds when it is
//! loaded ([`crate::config::Config::validate`]).
//!
//! # Publishing is monotonic
//! Three layers keep a revoked certificate from ever being served as good, whatever the order in
//! which a refresh and a revocation run: the worklist never moves a revoked certificate back to
//! good; `put` refuses to replace a revocation (inside the store, atomically); and
//! `mark_published` only records a publication whose status is still the current one, so a
//! refresh that signed `good` just before a revocation cannot mark the revocation done.
//! [`Presigner::publish`] returns only once the response is durable in the response store.
//!
//! # Spreading the work
//! See [`max_per_tick`]: the refresh loop signs a bounded number of routine refreshes per tick,
//! so a day's refresh does not arrive as one spike; revocations and never-published
//! certificates are not counted against that bound.
//!
//! # Layout
//! This file: [`Presigner`] (publishing, signing and storing, the refresh loop) and the issuer
//! key check at start-up; `import`: the import file format ([`parse_import`]); `metrics`:
//! [`PresignerMetrics`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use der07::Decode;
use futures_util::future::try_join_all;
use hsmgate_signer_api::BatchSigner;
use spki07::SubjectPublicKeyInfoOwned;
use tokio::sync::watch;
use x509_cert_02::Certificate;

use crate::clock::unix_now;
use crate::config::{self, Config};
use crate::error::Error;
use crate::issuers::Issuers;
use crate::record::{CertStatus, IssuerName, Serial, StoredResponse};
use crate::response;
use crate::signing::{self, TbsSigner};
use crate::store::{RedisStore, ResponseStore, SqliteStore};

mod import;
mod metrics;

pub use import::{parse_import, parse_time};
pub use metrics::PresignerMetrics;

/// Largest backdate of thisUpdate: enough for clients whose clocks run an hour behind.
pub const MAX_BACKDATE: Duration = Duration::from_secs(3600);

/// Gateway batches per stored chunk: a chunk's responses are stored (and marked published) in
/// one transaction while the following batches are being signed. Each commit has a fixed cost
/// (the WAL's fsync, SQLite's page-cache bookkeeping): 32 batches (8,192 responses at batch
/// 256; ~40 ms holding the write lock at ~5 µs of store work a response) cost 0.91 x the CPU
/// per refreshed response of 8 (`ocsp/benches/presign.rs`, issue 16).
const BATCHES_PER_CHUNK: usize = 32;

/// Chunks fetched from the worklist per `due` query (after the first window, which is one
/// chunk). The next window is read while the current one's last batches are signed
/// ([`Presigner::refresh_round`]); a query also lists what is not yet stored, to be left out,
/// so a window should be large next to the ~20,000 certificates in flight or waiting for the
/// store: 16 chunks of [`BATCHES_PER_CHUNK`] batches are 131,072 certificates at batch 256.
const CHUNKS_PER_WINDOW: usize = 16;

/// Concurrent `put`s into a store without a batch write (Redis: one round trip each).
const PUT_CONCURRENCY: usize = 64;

/// Where signed responses go.
#[derive(Clone, Debug)]
pub enum Responses {
    /// The worklist's own SQLite file: each chunk of responses is one transaction
    /// (`put_many`), as one fsync per response would cap the pre-signer near 1,000/s.
    Embedded,
    /// Another store (Redis): one atomic `put` per response, [`PUT_CONCURRENCY`] at a time.
    Other(Arc<dyn ResponseStore>),
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Most routine refreshes signed per tick of the refresh loop, given `certificates` in the
/// worklist (revocations and never-published certificates come on top).
///
/// ```text
/// D      = the BR §4.9.9 deadline, as an age: min(validity − 8 h, 96 h) for validity ≥ 16 h,
///          validity / 2 below (then "prior to one-half of the validity period")
/// slack  = D − refresh_after        (how long a due response may wait)
/// window = min(refresh_after, slack / 2)
/// max_per_tick = max(batch, ceil(certificates × interval / window))
/// ```
///
/// In steady state each certificate needs one signature per `refresh_after`, so the rate is
/// `certificates / refresh_after`; the bound allows `certificates / window` ≥ that, so the loop
/// keeps up. When every response fell due at once (a mass import signed in one go, two days
/// later), the bound spreads the re-signing over `window` instead of one spike, and since
/// `window ≤ slack / 2` it still finishes with half the slack left for a gateway outage, and
/// the responses signed in that window then fall due spread out too. With the defaults (96 h,
/// 48 h, 60 s) and 1,000,000 certificates: window = 20 h, 834 per tick (~14/s). If the
/// slack is shorter than one tick, there is nothing to spread: no bound.
pub fn max_per_tick(certificates: u64, config: &config::Presigner) -> usize {
    const HOUR: u64 = 3600;
    let validity = config.validity_hours * HOUR;
    let refresh = config.refresh_after_hours * HOUR;
    let deadline = if config.validity_hours >= 16 {
        (validity - 8 * HOUR).min(96 * HOUR)
    } else {
        validity / 2
    };
    let window = refresh.min(deadline.saturating_sub(refresh) / 2);
    let interval = config.interval_secs.max(1);
    if window < interval {
        return usize::MAX;
    }
    let per_tick = (u128::from(certificates) * u128::from(interval)).div_ceil(u128::from(window));
    usize::try_from(per_tick)
        .unwrap_or(usize::MAX)
        .max(config.batch)
}

/// What happened to one signed response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stored and marked published.
    Published(StoredResponse),
    /// The store kept what it had: a revocation (refusing a stale `good`), or a newer response
    /// of the same status (then `stored` is that one, and it counts as published).
    Refused {
        signed: StoredResponse,
        stored: Option<StoredResponse>,
    },
}

impl Outcome {
    /// The durable response for the status that was signed, if there is one.
    pub fn durable(&self) -> Option<&StoredResponse> {
        match self {
            Outcome::Published(r) => Some(r),
            Outcome::Refused {
                signed,
                stored: Some(s),
            } if s.status == signed.status => Some(s),
            Outcome::Refused { .. } => None,
        }
    }
}

/// Counts of an [`Presigner::import`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Certificates listed (distinct).
    pub certificates: usize,
    /// Worklist rows that changed (new certificates and new revocations).
    pub changed: u64,
}

/// What one [`Presigner::run_once`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OnceReport {
    /// Certificates signed for (each gets one response per configured CertID hash).
    pub certificates: usize,
    /// Responses signed.
    pub responses: u64,
    /// Certificates still due afterwards (their responses were refused by the store).
    pub still_due: u64,
    /// Of those, revocations not published.
    pub revocations_pending: u64,
}

/// The pre-signer. Cheap to clone: clones share the stores, the gateway channel and the metrics.
#[derive(Clone, Debug)]
pub struct Presigner {
    store: Arc<SqliteStore>,
    responses: Responses,
    issuers: Issuers,
    signer: Arc<dyn TbsSigner>,
    config: config::Presigner,
    metrics: PresignerMetrics,
    backdate_secs: i64,
}

impl Presigner {
    /// `store` holds the worklist (and, with [`Responses::Embedded`], the responses).
    /// thisUpdate is backdated by [`MAX_BACKDATE`]; see [`Self::with_backdate`].
    pub fn new(
        store: Arc<SqliteStore>,
        responses: Responses,
        issuers: Issuers,
        signer: Arc<dyn TbsSigner>,
        config: config::Presigner,
        metrics: PresignerMetrics,
    ) -> Self {
        let presigner = Self {
            store,
            responses,
            issuers,
            signer,
            config,
            metrics,
            backdate_secs: 0,
        };
        presigner.with_backdate(MAX_BACKDATE)
    }

    /// Backdates thisUpdate by `backdate` (at most [`MAX_BACKDATE`], and less than half of
    /// `refresh_after` so a response is never due again the moment it is signed). Clients reject
    /// a response whose thisUpdate is in their future; RFC 5019 §4 notes that responders and
    /// clients' clocks drift. The cost is that much less useful life per response.
    pub fn with_backdate(mut self, backdate: Duration) -> Self {
        let cap = MAX_BACKDATE
            .as_secs()
            .min(self.config.refresh_after_hours * 3600 / 2);
        self.backdate_secs = as_i64(backdate.as_secs().min(cap));
        self
    }

    /// The stores, issuers and gateway of `config`. Does not contact the gateway or Redis.
    /// Embedded store: the worklist and the responses share the SQLite file. Redis: responses
    /// go to Redis, the worklist lives in the `replica` SQLite file.
    pub async fn from_config(config: &Config, metrics: PresignerMetrics) -> Result<Self, Error> {
        let issuers = Issuers::load(config)?;
        let signer =
            BatchSigner::connect_lazy(&config.presigner.gateway, config.gateway_tls().as_ref())?
                .with_batch(config.presigner.batch);
        let (path, responses) = match &config.store {
            config::Store::Sqlite { path } => (config.resolve(path), Responses::Embedded),
            config::Store::Redis {
                urls,
                cluster,
                replica,
            } => {
                let redis: Arc<dyn ResponseStore> =
                    Arc::new(RedisStore::open(urls, *cluster).await?);
                (config.resolve(replica), Responses::Other(redis))
            }
        };
        let store = tokio::task::spawn_blocking(move || SqliteStore::open(path))
            .await
            .map_err(|e| Error::Store {
                store: "sqlite",
                detail: format!("opening the store: {e}"),
            })??;
        // Records get their CRL shard, and revocations mark it pending, as they are recorded.
        store.set_crl_shards(crate::crl::crl_shard_counts(config));
        Ok(Self::new(
            Arc::new(store),
            responses,
            issuers,
            Arc::new(signer),
            config.presigner.clone(),
            metrics,
        ))
    }

    /// Records certificates' notAfter (Unix seconds) in the worklist, so a revoked certificate
    /// leaves its CRL shard once expired (without it, the entry stays). The ACME frontend
    /// calls this when it records an issued certificate.
    pub async fn record_not_after(
        &self,
        items: Vec<(IssuerName, Serial, i64)>,
    ) -> Result<u64, Error> {
        self.store.record_not_after(items).await
    }

    pub fn metrics(&self) -> &PresignerMetrics {
        &self.metrics
    }

    pub fn store(&self) -> &Arc<SqliteStore> {
        &self.store
    }

    fn refresh_after_secs(&self) -> i64 {
        as_i64(self.config.refresh_after_hours * 3600)
    }

    /// (thisUpdate, nextUpdate) for a response signed at `now`.
    pub fn validity(&self, now: i64) -> (i64, i64) {
        let this_update = now - self.backdate_secs;
        (
            this_update,
            this_update + as_i64(self.config.validity_hours * 3600),
        )
    }

    /// Records `status` for the certificate (monotonic: a revoked certificate stays revoked, the
    /// first recorded revocation keeps its time and reason), signs a response for the status
    /// now in force, stores it and marks it published. Returns once the response is durable:
    /// this is what the ACME frontend calls before answering its client. The returned
    /// response's status may differ from `status` when the record refused the change (e.g.
    /// `good` for a revoked certificate).
    pub async fn publish(
        &self,
        issuer: &IssuerName,
        serial: &Serial,
        status: CertStatus,
    ) -> Result<StoredResponse, Error> {
        let mut out = self
            .publish_many(vec![(issuer.clone(), serial.clone(), status)])
            .await?;
        out.pop().ok_or_else(|| Error::Encoding {
            what: "publish".into(),
            detail: "no response was produced".into(),
        })
    }

    /// [`Self::publish`] for many certificates: one worklist transaction, one signing call per
    /// issuer, one store write; responses in the order of `items`.
    pub async fn publish_many(
        &self,
        items: Vec<(IssuerName, Serial, CertStatus)>,
    ) -> Result<Vec<StoredResponse>, Error> {
        let result = self.publish_many_inner(items).await;
        if let Err(e) = &result {
            self.metrics.error(e);
        }
        result
    }

    async fn publish_many_inner(
        &self,
        items: Vec<(IssuerName, Serial, CertStatus)>,
    ) -> Result<Vec<StoredResponse>, Error> {
        // Check before recording: a status that cannot be signed is refused whole.
        for (issuer, serial, status) in &items {
            self.check(issuer, serial, *status)?;
        }
        self.store.upsert_certificates(items.clone()).await?;
        let mut current = Vec::with_capacity(items.len());
        for (issuer, serial, _) in items {
            let status = self
                .store
                .certificate(&issuer, &serial)
                .await?
                .ok_or_else(|| Error::Store {
                    store: "sqlite",
                    detail: format!(
                        "certificate {}/{serial} vanished after it was recorded",
                        issuer.0
                    ),
                })?;
            current.push((issuer, serial, status));
        }
        let now = unix_now();
        let outcomes = self.sign_and_store(&current, now).await?;
        outcomes
            .into_iter()
            .zip(&current)
            .map(|(outcome, (issuer, serial, _))| match outcome.durable() {
                Some(r) => Ok(r.clone()),
                None => Err(Error::Store {
                    store: self.responses_kind(),
                    detail: format!(
                        "the store kept another response for {}/{serial} than the recorded status: {outcome:?}",
                        issuer.0
                    ),
                }),
            })
            .collect()
    }

    fn responses_kind(&self) -> &'static str {
        match &self.responses {
            Responses::Embedded => "sqlite",
            Responses::Other(r) => r.kind(),
        }
    }

    /// Whether a response can be built for this certificate.
    fn check(&self, issuer: &IssuerName, serial: &Serial, status: CertStatus) -> Result<(), Error> {
        if self.issuers.get(issuer).is_none() {
            return Err(Error::UnknownIssuer(issuer.0.clone()));
        }
        response::serial_number(serial)?;
        if let CertStatus::Revoked { at, reason } = status {
            response::generalized_time(at, "revocation time")?;
            if let Some(r) = reason
                && !response::is_valid_reason(r)
            {
                return Err(Error::Encoding {
                    what: "revocation reason".into(),
                    detail: format!("{r} is not a CRLReason code (RFC 5280 §5.3.1: 0-6, 8-10)"),
                });
            }
        }
        Ok(())
    }

    /// Signs a response for each item as of `now`, stores them (monotonic put) and marks the
    /// stored ones published; one [`Outcome`] per item, in order. Items whose status is no
    /// longer current are still signed and offered to the store: the store and
    /// `mark_published` decide (that is the race the monotonic rule is for).
    ///
    /// Each certificate gets one response per CertID hash (`presigner.cert_id_hashes`); its
    /// [`Outcome`] is its first refused response's, else [`Outcome::Published`] with the
    /// response of the first hash.
    pub async fn sign_and_store(
        &self,
        items: &[(IssuerName, Serial, CertStatus)],
        now: i64,
    ) -> Result<Vec<Outcome>, Error> {
        let signed = self.sign_items(items, now).await?;
        let per_certificate = self.config.cert_id_hashes.iter().count().max(1);
        let outcomes = self.store_signed(signed).await?;
        Ok(outcomes
            .chunks(per_certificate)
            .filter_map(|group| {
                group
                    .iter()
                    .find(|(_, _, o)| matches!(o, Outcome::Refused { .. }))
                    .or_else(|| group.first())
                    .map(|(_, _, o)| o.clone())
            })
            .collect())
    }

    /// Signs, grouping by issuer (one gateway key each): one response per configured CertID
    /// hash for each item, each with exactly one SingleResponse under its own signature (RFC
    /// 5019 §2.2.1: "SHOULD include only one"; Go's `ocsp.ParseResponse` and Python
    /// `cryptography`'s `certificate_status` refuse two). Results in the order of `items`, a
    /// certificate's responses next to each other in hash order. So each hash costs one HSM
    /// signature per certificate per refresh.
    async fn sign_items(
        &self,
        items: &[(IssuerName, Serial, CertStatus)],
        now: i64,
    ) -> Result<Vec<(IssuerName, Serial, StoredResponse)>, Error> {
        let (this_update, next_update) = self.validity(now);
        let hashes: Vec<_> = self.config.cert_id_hashes.iter().collect();
        let mut by_issuer: BTreeMap<&IssuerName, Vec<usize>> = BTreeMap::new();
        for (i, (issuer, _, _)) in items.iter().enumerate() {
            by_issuer.entry(issuer).or_default().push(i);
        }
        let mut out: Vec<Vec<StoredResponse>> = vec![Vec::new(); items.len()];
        for (name, positions) in by_issuer {
            let issuer = self
                .issuers
                .get(name)
                .ok_or_else(|| Error::UnknownIssuer(name.0.clone()))?;
            let batch: Vec<(Serial, CertStatus)> = positions
                .iter()
                .map(|&i| (items[i].1.clone(), items[i].2))
                .collect();
            // One gateway call per hash, each a full batch: the signatures of the two hashes
            // are as many as of two certificates.
            let signed = try_join_all(hashes.iter().map(|alg| {
                let only = config::CertIdHashes::only(*alg);
                let batch = &batch;
                async move {
                    signing::sign_responses_with(
                        self.signer.as_ref(),
                        issuer,
                        &only,
                        batch,
                        this_update,
                        next_update,
                        now,
                    )
                    .await
                }
            }))
            .await?;
            for responses in signed {
                self.metrics.signed.inc_by(responses.len() as u64);
                for (&i, r) in positions.iter().zip(responses) {
                    out[i].push(r);
                }
            }
        }
        let mut flat = Vec::with_capacity(items.len() * hashes.len());
        for ((issuer, serial, _), responses) in items.iter().zip(out) {
            if responses.len() != hashes.len() {
                return Err(Error::Encoding {
                    what: "signer answer".into(),
                    detail: format!("no response for {}/{serial}", issuer.0),
                });
            }
            flat.extend(
                responses
                    .into_iter()
                    .map(|r| (issuer.clone(), serial.clone(), r)),
            );
        }
        Ok(flat)
    }

    /// Puts, then marks what was stored as published (after the put, or in its transaction:
    /// nothing is marked before it is durable).
    async fn store_signed(
        &self,
        signed: Vec<(IssuerName, Serial, StoredResponse)>,
    ) -> Result<Vec<(IssuerName, Serial, Outcome)>, Error> {
        // Marks still to make: all of them for another store; for the embedded store only
        // those of refused responses whose status is in place all the same.
        let mut marks = Vec::new();
        let results: Vec<(IssuerName, Serial, StoredResponse, bool)> = match &self.responses {
            Responses::Embedded => self.store.put_and_mark_many(signed).await?,
            Responses::Other(store) => {
                let mut stored = Vec::with_capacity(signed.len());
                for group in signed.chunks(PUT_CONCURRENCY) {
                    let puts = group
                        .iter()
                        .map(|(issuer, serial, r)| store.put(issuer, serial, r));
                    stored.extend(try_join_all(puts).await?);
                }
                let results: Vec<_> = signed
                    .into_iter()
                    .zip(stored)
                    .map(|((issuer, serial, response), stored)| (issuer, serial, response, stored))
                    .collect();
                marks.extend(
                    results
                        .iter()
                        .filter(|r| r.3)
                        .map(|(i, s, r, _)| (i.clone(), s.clone(), r.status, r.this_update)),
                );
                results
            }
        };
        let mut outcomes = Vec::with_capacity(results.len());
        for (issuer, serial, response, stored) in results {
            if stored {
                outcomes.push((issuer, serial, Outcome::Published(response)));
                continue;
            }
            self.metrics.refused.inc();
            // What a request for this response's hash is now answered with.
            let hash = match crate::store::Slot::of(&response.der) {
                crate::store::Slot::Hash(alg) => alg,
                crate::store::Slot::Legacy => crate::hash_alg::HashAlg::Sha1,
            };
            let kept = match &self.responses {
                Responses::Embedded => self.store.get_for(&issuer, &serial, hash).await?,
                Responses::Other(store) => store.get_for(&issuer, &serial, hash).await?,
            };
            match &kept {
                // A newer response of the same status is in place (another signer was faster):
                // published all the same.
                Some(k) if k.status == response.status => {
                    marks.push((issuer.clone(), serial.clone(), k.status, k.this_update));
                }
                Some(k) => tracing::info!(
                    issuer = %issuer.0, %serial, signed = ?response.status, stored = ?k.status,
                    "store kept its response (a revocation is never replaced)"
                ),
                None => {
                    tracing::warn!(issuer = %issuer.0, %serial, "store refused a response and holds none")
                }
            }
            outcomes.push((
                issuer,
                serial,
                Outcome::Refused {
                    signed: response,
                    stored: kept,
                },
            ));
        }
        if !marks.is_empty() {
            self.store.mark_published_many(marks).await?;
        }
        Ok(outcomes)
    }

    /// Re-signs everything due at `now` (revocations first, then never-published certificates,
    /// then the oldest responses), with no bound; returns how many responses were signed.
    pub async fn refresh_once(&self, now: i64) -> Result<usize, Error> {
        self.refresh(now, usize::MAX).await
    }

    /// Signs up to `limit` due responses; returns how many certificates were signed for. Rounds
    /// of [`Self::refresh_round`] until one finds nothing due: a round reads the worklist as it
    /// goes, so the round after it, from a fresh `due`, only catches a status that changed while
    /// the certificate's earlier response was in flight (a revocation during the round).
    async fn refresh(&self, now: i64, limit: usize) -> Result<usize, Error> {
        let stored = Mutex::new(Stored::default());
        let mut done = 0usize;
        while done < limit {
            let signed = self.refresh_round(now, limit - done, &stored).await?;
            if signed == 0 {
                break;
            }
            done += signed;
        }
        Ok(done)
    }

    /// One stream of `SignBatch` calls, [`DEFAULT_IN_FLIGHT`](hsmgate_signer_api::DEFAULT_IN_FLIGHT)
    /// at a time, over windows of `due`, stored a chunk at a time by a concurrent consumer. The
    /// next window is read while the current one's last batches are still being signed, so the
    /// gateway never waits for a query, a drain or a store write between windows: reading after
    /// each window was stored left the HSMs idle ~0.27 s per 131,072 certificates (pre-signing
    /// at 0.965 of `SignBatch` over 1,000,000; bench/RESULTS.md, issue 16). A `due` at that
    /// moment still lists what is in flight or not yet stored, with the status it was read
    /// with: those are left out, by key and status (a certificate revoked meanwhile is listed
    /// again, revoked, and signed again). So are the refusals of this pass (`stored`), as
    /// before. The first window is one chunk, so the first batches leave at once.
    async fn refresh_round(
        &self,
        now: i64,
        limit: usize,
        stored: &Mutex<Stored>,
    ) -> Result<usize, Error> {
        use futures_util::StreamExt;
        use futures_util::future::OptionFuture;
        use futures_util::stream::FuturesOrdered;

        let batch = self.config.batch.max(1);
        let chunk = batch.saturating_mul(BATCHES_PER_CHUNK).max(1);
        let window = chunk.saturating_mul(CHUNKS_PER_WINDOW);
        let in_flight = hsmgate_signer_api::DEFAULT_IN_FLIGHT;
        lock(stored).certificates = 0;
        // (certificates, their responses): the consumer counts certificates stored.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Vec<Signed>)>(2);
        let producer = async move {
            // Windows read and not yet wholly stored, each with the round position of its first
            // certificate; positions up to `read` are in them, those below `issued` were sent.
            let mut windows: VecDeque<(usize, Arc<Vec<Due>>)> = VecDeque::new();
            let mut read = 0usize;
            let mut issued = 0usize;
            let mut exhausted = false;
            let mut reading = None;
            let mut signing = FuturesOrdered::new();
            let mut acc: Vec<Signed> = Vec::with_capacity(chunk);
            let mut acc_certificates = 0usize;
            loop {
                let done_below = lock(stored).certificates;
                while windows
                    .front()
                    .is_some_and(|(start, w)| start + w.len() <= done_below)
                {
                    windows.pop_front();
                }
                if reading.is_none()
                    && !exhausted
                    && read < limit
                    && read - issued <= 2 * in_flight * batch
                {
                    let want = if read == 0 { chunk } else { window }.min(limit - read);
                    // Not yet stored: every window's certificates from `done_below` on.
                    let pending: Vec<(usize, Arc<Vec<Due>>)> = windows
                        .iter()
                        .map(|(start, w)| (done_below.saturating_sub(*start), Arc::clone(w)))
                        .collect();
                    reading = Some(Box::pin(self.next_window(now, want, pending, stored)));
                }
                while signing.len() < in_flight && issued < read {
                    let Some((start, w)) = windows
                        .iter()
                        .rev()
                        .find(|(start, _)| *start <= issued)
                        .map(|(start, w)| (*start, Arc::clone(w)))
                    else {
                        break;
                    };
                    let from = issued - start;
                    let to = (from + batch).min(w.len());
                    issued += to - from;
                    signing.push_back(async move {
                        let signed = self.sign_items(&w[from..to], now).await?;
                        Ok::<_, Error>((to - from, signed))
                    });
                }
                if signing.is_empty() && reading.is_none() {
                    break;
                }
                tokio::select! {
                    Some(signed) = signing.next(), if !signing.is_empty() => {
                        let (certificates, responses) = signed?;
                        acc.extend(responses);
                        acc_certificates += certificates;
                        // The next chunk's vector at its full size: grown from empty, each
                        // chunk was copied four times over, into freshly faulted pages.
                        if acc.len() >= chunk {
                            let full = std::mem::replace(&mut acc, Vec::with_capacity(chunk));
                            if tx.send((std::mem::take(&mut acc_certificates), full)).await.is_err() {
                                return Ok(issued);
                            }
                        }
                    }
                    Some(due) = OptionFuture::from(reading.as_mut()), if reading.is_some() => {
                        reading = None;
                        let (due, all_read) = due?;
                        exhausted = all_read;
                        if !due.is_empty() {
                            let n = due.len();
                            windows.push_back((read, Arc::new(due)));
                            read += n;
                        }
                    }
                    // Not reached (a branch is enabled whenever this runs); what was not sent
                    // stays due for the next round.
                    else => break,
                }
            }
            if !acc.is_empty() {
                let _ = tx.send((acc_certificates, acc)).await;
            }
            Ok::<usize, Error>(issued)
        };
        // Only the refusals are kept from each chunk's outcomes: holding every stored response
        // of a window (~130,000 certificates, ~100 MB) until its end made the allocator fetch
        // and zero fresh pages all along (4 % of the pre-signer's CPU).
        let consumer = async {
            while let Some((certificates, responses)) = rx.recv().await {
                let outcomes = self.store_signed(responses).await?;
                let mut s = lock(stored);
                note_refused(&mut s.refused, outcomes);
                s.certificates += certificates;
            }
            Ok::<_, Error>(())
        };
        let (p, c) = tokio::join!(producer, consumer);
        let issued = p?;
        c?;
        Ok(issued)
    }

    /// The next window of a round: up to `want` due certificates that are not in `pending`
    /// (each window's certificates from its offset on: sent or about to be, not yet stored)
    /// with the status they were read with, nor refused earlier in the pass with the status
    /// listed. Also whether that was all that is due.
    async fn next_window(
        &self,
        now: i64,
        want: usize,
        pending: Vec<(usize, Arc<Vec<Due>>)>,
        stored: &Mutex<Stored>,
    ) -> Result<(Vec<Due>, bool), Error> {
        let pending_count: usize = pending
            .iter()
            .map(|(from, w)| w.len().saturating_sub(*from))
            .sum();
        // Each certificate left out makes room for one more: `due` lists what is in flight
        // first (it is the most overdue).
        let ask = want
            .saturating_add(pending_count)
            .saturating_add(lock(stored).refused.len());
        let due = self.store.due(now, self.refresh_after_secs(), ask).await?;
        let due_len = due.len();
        // (Without exclusions, as in a first window, no per-item key is built.)
        let pending: HashMap<(&IssuerName, &Serial), CertStatus> = pending
            .iter()
            .flat_map(|(from, w)| w.get(*from..).unwrap_or_default())
            .map(|(issuer, serial, status)| ((issuer, serial), *status))
            .collect();
        let s = lock(stored);
        let mut fresh: Vec<Due> = if pending.is_empty() && s.refused.is_empty() {
            due
        } else {
            due.into_iter()
                .filter(|(i, s_, st)| {
                    pending.get(&(i, s_)) != Some(st)
                        && (s.refused.is_empty()
                            || s.refused.get(&(i.clone(), s_.clone())) != Some(st))
                })
                .collect()
        };
        // All that is due was read (fewer rows than asked), and none of it is left for later.
        let all_read = due_len < ask && fresh.len() <= want;
        fresh.truncate(want);
        let exhausted = all_read || fresh.is_empty();
        Ok((fresh, exhausted))
    }

    /// `hsmgate-ocsp presign --once`: signs everything due at `now` (revocations, never
    /// published certificates, then every response past `refresh_after_hours`: no per-tick
    /// bound, as a cron-style run has no next tick to leave work for), then counts what is
    /// still due. A gateway or store failure is an error; a certificate still due afterwards
    /// (its response was refused by the store, which kept a revocation or a newer response) is
    /// reported in [`OnceReport::still_due`] for the caller to fail on.
    pub async fn run_once(&self, now: i64) -> Result<OnceReport, Error> {
        let before = self.metrics.signed.get();
        let result = self.refresh_once(now).await;
        if let Err(e) = &result {
            self.metrics.error(e);
        }
        let certificates = result?;
        let backlog = self.store.backlog(now, self.refresh_after_secs()).await?;
        self.metrics.backlog(&backlog);
        self.metrics.backlog.set(as_i64(backlog.due));
        self.metrics.last_success.set(now);
        Ok(OnceReport {
            certificates,
            responses: self.metrics.signed.get() - before,
            still_due: backlog.due,
            revocations_pending: backlog.revocations_pending,
        })
    }

    /// One tick of the refresh loop: counts the backlog, signs what is urgent and a bounded
    /// share of the routine refreshes ([`max_per_tick`]); returns how many were signed.
    pub async fn tick(&self, now: i64) -> Result<usize, Error> {
        let backlog = self.store.backlog(now, self.refresh_after_secs()).await?;
        self.metrics.backlog(&backlog);
        // `due` lists revocations and never-published certificates first, so exempting the
        // first `urgent` items from the bound is exempting exactly those.
        let urgent = usize::try_from(backlog.revocations_pending + backlog.unpublished)
            .unwrap_or(usize::MAX);
        let limit = urgent.saturating_add(max_per_tick(backlog.certificates, &self.config));
        let signed = self.refresh(now, limit).await?;
        self.metrics
            .backlog
            .set(as_i64(backlog.due.saturating_sub(signed as u64)));
        Ok(signed)
    }

    /// The refresh loop: a [`Self::tick`] every `interval_secs` until `shutdown` turns true (or
    /// its sender is dropped). A tick interrupted by shutdown is safe to drop: signing is
    /// idempotent, a started store write commits, and whatever was not marked published is
    /// due again at the next start.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut ticker =
            tokio::time::interval(Duration::from_secs(self.config.interval_secs.max(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() || shutdown.has_changed().is_err() {
                break;
            }
            let now = unix_now();
            let result = tokio::select! {
                r = self.tick(now) => r,
                _ = shutdown.changed() => break,
            };
            match result {
                Ok(n) => {
                    self.metrics.last_success.set(now);
                    if n > 0 {
                        tracing::info!(signed = n, "refresh tick");
                    }
                }
                Err(e) => {
                    self.metrics.error(&e);
                    tracing::warn!(error = %e, "refresh tick failed; retrying at the next tick");
                }
            }
        }
        tracing::info!("pre-signer stopped");
    }

    /// Imports certificates from a text file, one per line:
    ///
    /// ```text
    /// # comment
    /// <issuer name> <serial hex> good
    /// <issuer name> <serial hex> revoked <RFC 3339 time | Unix seconds> [reason code]
    /// ```
    ///
    /// Every line is checked first (issuer configured, serial of at most 20 octets, time, CRL
    /// reason 0-6 or 8-10, no conflicting duplicate); the first bad line fails the import with
    /// an error naming it, and nothing is recorded. Then everything is recorded in one
    /// transaction (monotonic, as [`Self::publish`]). The refresh loop signs them: revocations
    /// and new certificates at its next tick.
    pub async fn import(&self, file: &Path) -> Result<ImportReport, Error> {
        let owned = file.to_owned();
        let text = tokio::task::spawn_blocking(move || std::fs::read_to_string(owned))
            .await
            .map_err(std::io::Error::other)??;
        let items = parse_import(
            &text,
            &file.display().to_string(),
            &self.issuers,
            unix_now(),
        )?;
        let certificates = items.len();
        let changed = self.store.upsert_certificates(items).await?;
        Ok(ImportReport {
            certificates,
            changed,
        })
    }
}

/// A due certificate, as [`SqliteStore::due`] lists it.
type Due = (IssuerName, Serial, CertStatus);

/// A signed response of a certificate, ready for the store.
type Signed = (IssuerName, Serial, StoredResponse);

/// What the consumer of a [`Presigner::refresh_round`] has done, for its producer: the
/// certificates of the round stored (their chunks' transactions finished), and the responses
/// refused in the whole pass, with the status they were signed for.
#[derive(Debug, Default)]
struct Stored {
    certificates: usize,
    refused: HashMap<(IssuerName, Serial), CertStatus>,
}

fn lock(stored: &Mutex<Stored>) -> MutexGuard<'_, Stored> {
    stored.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Remembers the responses that were not published, with the status they were signed for.
fn note_refused(
    refused: &mut HashMap<(IssuerName, Serial), CertStatus>,
    outcomes: Vec<(IssuerName, Serial, Outcome)>,
) {
    for (issuer, serial, outcome) in outcomes {
        if outcome.durable().is_none()
            && let Outcome::Refused { signed, .. } = outcome
        {
            refused.insert((issuer, serial), signed.status);
        }
    }
}

/// Checks that each issuer's signing key at the gateway is the key in its certificate: a
/// response signed by another key would be rejected by every client. A mismatch is an
/// `Error::Config` naming the issuer; a gateway that could not be asked, its `Error::Gateway`
/// (the caller decides whether to start anyway).
pub async fn verify_issuer_keys(signer: &BatchSigner, issuers: &Issuers) -> Result<(), Error> {
    for issuer in issuers.iter() {
        let spki = signer.public_key(&issuer.signing_key).await?.spki_der;
        let at_gateway =
            SubjectPublicKeyInfoOwned::from_der(&spki).map_err(|e| Error::Encoding {
                what: format!("public key of `{}` from the gateway", issuer.signing_key),
                detail: e.to_string(),
            })?;
        let cert = Certificate::from_der(&issuer.certificate_der).map_err(|e| Error::Encoding {
            what: format!("certificate of issuer `{}`", issuer.name.0),
            detail: e.to_string(),
        })?;
        if cert.tbs_certificate.subject_public_key_info != at_gateway {
            return Err(Error::Config {
                path: format!("issuers.{}.signing_key", issuer.name.0),
                detail: format!(
                    "gateway key `{}` is not the key of the issuer's certificate",
                    issuer.signing_key
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presigner_config(validity: u64, refresh: u64) -> config::Presigner {
        config::Presigner {
            validity_hours: validity,
            refresh_after_hours: refresh,
            ..config::Presigner::default()
        }
    }

    #[test]
    fn the_per_tick_bound_keeps_up_and_spreads() {
        let c = presigner_config(96, 48);
        // window = min(48 h, (88 h - 48 h) / 2) = 20 h = 72,000 s.
        assert_eq!(max_per_tick(1_000_000, &c), 834);
        assert_eq!(max_per_tick(10, &c), c.batch);
        // 240 h validity, 48 h refresh: deadline capped at 96 h, window = 24 h.
        assert_eq!(max_per_tick(864_000, &presigner_config(240, 48)), 600);
        // Slack under a tick: no bound.
        assert_eq!(
            max_per_tick(1_000_000, &presigner_config(96, 88)),
            usize::MAX
        );
        // Short validity: deadline at half of it.
        assert_eq!(
            max_per_tick(1_000_000, &presigner_config(12, 6)),
            usize::MAX
        );
        assert_eq!(
            max_per_tick(1_000_000, &presigner_config(12, 2)),
            1_000_000 * 60 / 7200 + 1
        );
    }
}
