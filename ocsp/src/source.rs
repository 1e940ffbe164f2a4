//! Where the responder's answers come from: a [`Source`] chain, after Boulder's responder
//! (a `Source` interface behind the HTTP handler, with in-memory and Redis sources stacked on
//! it). The HTTP layer asks one `Source` and knows nothing of caches or stores.
//!
//! ```text
//!  CachedSource (moka, bounded by bytes)
//!     └─▶ StoreSource (SQLite)                      -- the embedded default
//!     └─▶ ReplicatedSource (Redis ──fails──▶ SQLite replica; hits copied into the replica)
//! ```
//!
//! Sources only ever hand out responses that were signed and stored; a certificate with no
//! stored response is [`Lookup::NotFound`], which the responder answers `unauthorized` — so an
//! unissued serial is never `good`. Whether a response has reached nextUpdate is checked again
//! by the responder at the moment it sends it, because time passes between here and there.
//!
//! A failing store marks the shared [`Health`] degraded (exported as `ocsp_degraded`) until a
//! read succeeds again.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::clock::unix_now;
use crate::error::Error;
use crate::hash_alg::HashAlg;
use crate::metrics::Metrics;
use crate::record::{IssuerName, Serial, StoredResponse};
use crate::store::ResponseStore;

mod cache;

pub use cache::CachedSource;

/// Where a found response came from, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The in-memory cache.
    Cache,
    /// The durable store (SQLite, or the Redis primary).
    Store,
    /// The local SQLite replica, because the Redis primary failed.
    Replica,
}

impl Origin {
    pub fn label(self) -> &'static str {
        match self {
            Origin::Cache => "cache",
            Origin::Store => "store",
            Origin::Replica => "replica",
        }
    }
}

/// The answer to "what is the stored response for this certificate?".
#[derive(Debug)]
pub enum Lookup {
    /// A signed response (possibly past its nextUpdate: the caller checks at sending time).
    Found(Arc<StoredResponse>, Origin),
    /// No response is stored for this certificate.
    NotFound,
    /// Nothing could be read: the store failed and nothing usable was cached. Shared because
    /// concurrent cache misses for one key wait on a single store read.
    Unavailable(Arc<Error>),
}

/// Something that answers for certificates by issuer and serial, with the response for the
/// CertID hash the request used ([`ResponseStore::get_for`]).
#[async_trait]
pub trait Source: Send + Sync + fmt::Debug {
    async fn response(&self, issuer: &IssuerName, serial: &Serial, hash: HashAlg) -> Lookup;

    /// [`Source::response`], with the instant until which a copy of the answer may be served
    /// without asking again: for a cache, the moment its entry stops being fresh (read from the
    /// store + `cache_fresh_secs`), so a copy kept in front of it (the responder's per-thread
    /// memo) is never staler than the cache itself would be. `None`: do not keep a copy (the
    /// default, for sources that are no cache; also the answer that found the store failing,
    /// whose entry the cache re-stamps: later hits on it may be kept, as long as the cache
    /// itself serves it without asking).
    async fn response_until(
        &self,
        issuer: &IssuerName,
        serial: &Serial,
        hash: HashAlg,
    ) -> (Lookup, Option<Instant>) {
        (self.response(issuer, serial, hash).await, None)
    }

    /// Bytes that all the copies kept in front of this source may hold together (0: keep
    /// none). A cache gives a share of its own budget.
    fn front_bytes(&self) -> usize {
        0
    }
}

/// Whether the durable store behind the responder is failing. Shared by every source in a
/// chain; the hot path only reads one atomic when all is well.
pub struct Health {
    /// Unix seconds the current degraded period began; 0 when healthy.
    since: AtomicI64,
    /// The most recent store error, for operators (never sent to clients).
    last_error: Mutex<Option<String>>,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("degraded_since", &self.degraded_since())
            .field("last_error", &self.last_error())
            .finish()
    }
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            since: AtomicI64::new(0),
            last_error: Mutex::new(None),
            metrics,
        })
    }

    /// A store read failed: degraded from now on, unless already.
    pub fn store_failed(&self, error: &Error) {
        let now = unix_now().max(1);
        if self
            .since
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.metrics.degraded.set(1);
            self.metrics.degraded_since.set(now);
            tracing::warn!("store failing, serving from cache and replica: {error}");
        }
        // A poisoned lock only means another thread panicked while writing a string: the
        // string is still usable.
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        *last = Some(error.to_string());
    }

    /// A store read succeeded: healthy again.
    pub fn store_ok(&self) {
        if self.since.load(Ordering::Acquire) != 0 {
            let since = self.since.swap(0, Ordering::AcqRel);
            if since != 0 {
                self.metrics.degraded.set(0);
                self.metrics.degraded_since.set(0);
                tracing::info!(degraded_secs = unix_now() - since, "store answering again");
            }
        }
    }

    /// Unix seconds since which the store has been failing, if it is.
    pub fn degraded_since(&self) -> Option<i64> {
        match self.since.load(Ordering::Acquire) {
            0 => None,
            t => Some(t),
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// How long one store read may take on the serving path before it counts as a failure. A
/// hung store must not hang clients: past this the cached copy or the replica answers.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads `store` with a timeout, recording latency and errors.
async fn timed_get(
    store: &dyn ResponseStore,
    issuer: &IssuerName,
    serial: &Serial,
    hash: HashAlg,
    timeout: Duration,
    metrics: &Metrics,
) -> Result<Option<StoredResponse>, Error> {
    let start = Instant::now();
    let result = match tokio::time::timeout(timeout, store.get_for(issuer, serial, hash)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Store {
            store: store.kind(),
            detail: format!("read timed out after {timeout:?}"),
        }),
    };
    metrics.store_read(store.kind(), result.is_ok(), start.elapsed());
    result
}

/// A durable store as a [`Source`].
#[derive(Debug)]
pub struct StoreSource {
    store: Arc<dyn ResponseStore>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    timeout: Duration,
}

impl StoreSource {
    pub fn new(store: Arc<dyn ResponseStore>, health: Arc<Health>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            health,
            metrics,
            timeout: DEFAULT_STORE_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

#[async_trait]
impl Source for StoreSource {
    async fn response(&self, issuer: &IssuerName, serial: &Serial, hash: HashAlg) -> Lookup {
        match timed_get(
            &*self.store,
            issuer,
            serial,
            hash,
            self.timeout,
            &self.metrics,
        )
        .await
        {
            Ok(found) => {
                self.health.store_ok();
                match found {
                    Some(r) => Lookup::Found(Arc::new(r), Origin::Store),
                    None => Lookup::NotFound,
                }
            }
            Err(e) => {
                self.health.store_failed(&e);
                Lookup::Unavailable(Arc::new(e))
            }
        }
    }
}

/// Copies waiting to be written into the replica. Bounded so that a slow replica costs
/// copies (counted as `dropped`), never memory or latency on the serving path; a dropped copy
/// is written again the next time the response is read from the primary.
const REPLICA_QUEUE: usize = 4096;

type ReplicaCopy = (IssuerName, Serial, Arc<StoredResponse>);

/// Redis primary with a local SQLite replica. Every response read from the primary is copied
/// into the replica in the background (a monotonic `put`, so a copy can never replace a
/// revocation there with an older `good`); when the primary fails, the replica answers and
/// the service reports itself degraded.
///
/// A primary that answers "not found" is believed: the replica is only a copy of what was
/// served, so it is consulted only when the primary cannot answer at all.
#[derive(Debug)]
pub struct ReplicatedSource {
    primary: Arc<dyn ResponseStore>,
    replica: Arc<dyn ResponseStore>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    copies: mpsc::Sender<ReplicaCopy>,
}

impl ReplicatedSource {
    /// Starts the replica writer task: call from within a Tokio runtime. The task ends when
    /// this source is dropped.
    pub fn new(
        primary: Arc<dyn ResponseStore>,
        replica: Arc<dyn ResponseStore>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (copies, mut rx) = mpsc::channel::<ReplicaCopy>(REPLICA_QUEUE);
        {
            let replica = replica.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                while let Some((issuer, serial, response)) = rx.recv().await {
                    let outcome = match replica.put(&issuer, &serial, &response).await {
                        Ok(true) => "stored",
                        Ok(false) => "kept",
                        Err(e) => {
                            tracing::warn!(%serial, "replica write failed: {e}");
                            "error"
                        }
                    };
                    metrics.replica_write(outcome);
                }
            });
        }
        Self {
            primary,
            replica,
            health,
            metrics,
            timeout: DEFAULT_STORE_TIMEOUT,
            copies,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

#[async_trait]
impl Source for ReplicatedSource {
    async fn response(&self, issuer: &IssuerName, serial: &Serial, hash: HashAlg) -> Lookup {
        let primary_error = match timed_get(
            &*self.primary,
            issuer,
            serial,
            hash,
            self.timeout,
            &self.metrics,
        )
        .await
        {
            Ok(Some(r)) => {
                self.health.store_ok();
                let r = Arc::new(r);
                if self
                    .copies
                    .try_send((issuer.clone(), serial.clone(), r.clone()))
                    .is_err()
                {
                    self.metrics.replica_write("dropped");
                }
                return Lookup::Found(r, Origin::Store);
            }
            Ok(None) => {
                self.health.store_ok();
                return Lookup::NotFound;
            }
            Err(e) => e,
        };
        self.health.store_failed(&primary_error);
        match timed_get(
            &*self.replica,
            issuer,
            serial,
            hash,
            self.timeout,
            &self.metrics,
        )
        .await
        {
            Ok(Some(r)) => Lookup::Found(Arc::new(r), Origin::Replica),
            Ok(None) => Lookup::NotFound,
            Err(replica_error) => {
                tracing::warn!(%serial, "replica read failed too: {replica_error}");
                Lookup::Unavailable(Arc::new(primary_error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use super::*;
    use crate::record::CertStatus;

    #[derive(Debug, Default)]
    struct Mem {
        map: Mutex<HashMap<(IssuerName, Serial), StoredResponse>>,
        fail: AtomicBool,
        reads: AtomicUsize,
    }

    #[async_trait]
    impl ResponseStore for Mem {
        fn kind(&self) -> &'static str {
            "mem"
        }
        async fn get(&self, i: &IssuerName, s: &Serial) -> Result<Option<StoredResponse>, Error> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(Error::Store {
                    store: "mem",
                    detail: "down".into(),
                });
            }
            Ok(self
                .map
                .lock()
                .unwrap()
                .get(&(i.clone(), s.clone()))
                .cloned())
        }
        async fn put(&self, i: &IssuerName, s: &Serial, r: &StoredResponse) -> Result<bool, Error> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(Error::Store {
                    store: "mem",
                    detail: "down".into(),
                });
            }
            let mut map = self.map.lock().unwrap();
            let key = (i.clone(), s.clone());
            if map
                .get(&key)
                .is_some_and(|old| !crate::publishing::may_replace(old, r))
            {
                return Ok(false);
            }
            map.insert(key, r.clone());
            Ok(true)
        }
    }

    fn resp(status: CertStatus, next_update: i64) -> StoredResponse {
        StoredResponse {
            status,
            this_update: unix_now() - 10,
            next_update,
            der: vec![0x30, 0x00],
            http: Default::default(),
        }
    }

    fn key() -> (IssuerName, Serial) {
        (IssuerName("ca".into()), Serial::from_be_bytes(&[1]))
    }

    /// A store holding `key()`'s response valid until `next_update`, behind a cache whose
    /// entries are fresh for `fresh`.
    async fn cached_store(
        next_update: i64,
        fresh: Duration,
    ) -> (Arc<Mem>, Arc<Health>, CachedSource<StoreSource>) {
        let metrics = Metrics::unregistered();
        let health = Health::new(metrics.clone());
        let mem = Arc::new(Mem::default());
        let (i, s) = key();
        mem.put(&i, &s, &resp(CertStatus::Good, next_update))
            .await
            .unwrap();
        let store = StoreSource::new(mem.clone(), health.clone(), metrics.clone());
        (
            mem,
            health,
            CachedSource::new(store, 1 << 20, fresh, metrics),
        )
    }

    #[tokio::test]
    async fn cache_serves_fresh_entries_and_revalidates_old_ones() {
        let (i, s) = key();
        let (mem, health, cached) =
            cached_store(unix_now() + 3600, Duration::from_millis(500)).await;

        assert!(matches!(
            cached.response(&i, &s, HashAlg::Sha1).await,
            Lookup::Found(_, Origin::Store)
        ));
        assert!(matches!(
            cached.response(&i, &s, HashAlg::Sha1).await,
            Lookup::Found(_, Origin::Cache)
        ));
        assert_eq!(mem.reads.load(Ordering::SeqCst), 1);

        // A revocation lands in the store; it is served once the entry is older than `fresh`.
        let revoked = resp(
            CertStatus::Revoked {
                at: 5,
                reason: Some(1),
            },
            unix_now() + 3600,
        );
        assert!(mem.put(&i, &s, &revoked).await.unwrap());
        tokio::time::sleep(Duration::from_millis(600)).await;
        match cached.response(&i, &s, HashAlg::Sha1).await {
            Lookup::Found(r, Origin::Store) => assert!(r.status.is_revoked()),
            other => panic!("{other:?}"),
        }

        // The store fails: the cached copy is served, health says degraded, and the store is
        // not asked again until the entry is old again.
        mem.fail.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(600)).await;
        match cached.response(&i, &s, HashAlg::Sha1).await {
            Lookup::Found(r, Origin::Cache) => assert!(r.status.is_revoked()),
            other => panic!("{other:?}"),
        }
        assert!(health.degraded_since().is_some());
        let reads = mem.reads.load(Ordering::SeqCst);
        assert!(matches!(
            cached.response(&i, &s, HashAlg::Sha1).await,
            Lookup::Found(_, Origin::Cache)
        ));
        assert_eq!(mem.reads.load(Ordering::SeqCst), reads);

        // Nothing cached for another serial: unavailable.
        let other = Serial::from_be_bytes(&[2]);
        assert!(matches!(
            cached.response(&i, &other, HashAlg::Sha1).await,
            Lookup::Unavailable(_)
        ));

        mem.fail.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(matches!(
            cached.response(&i, &s, HashAlg::Sha1).await,
            Lookup::Found(_, Origin::Store)
        ));
        assert!(health.degraded_since().is_none());
    }

    /// The copies in front of the cache (`responder::front`) keep an answer only until the
    /// instant `response_until` gives: the cache entry's own freshness, so that a copy never
    /// outlives the entry a revocation would replace. Never an instant for an answer that is
    /// stale (served while the store fails) or expired.
    #[tokio::test]
    async fn response_until_is_the_cache_entrys_freshness_and_only_for_fresh_answers() {
        let (i, s) = key();
        let fresh = Duration::from_millis(400);
        let (mem, _, cached) = cached_store(unix_now() + 3600, fresh).await;

        // A miss: fresh for `fresh` from the read.
        let before = Instant::now();
        let (lookup, until) = cached.response_until(&i, &s, HashAlg::Sha1).await;
        assert!(matches!(lookup, Lookup::Found(_, Origin::Store)));
        let until = until.expect("a fresh answer has an instant");
        assert!(until >= before + fresh && until <= Instant::now() + fresh);

        // A hit: the same entry, the same instant (not renewed by being read).
        let (lookup, hit_until) = cached.response_until(&i, &s, HashAlg::Sha1).await;
        assert!(matches!(lookup, Lookup::Found(_, Origin::Cache)));
        assert_eq!(hit_until, Some(until));

        // The entry grows old while the store fails: served stale, with no instant.
        mem.fail.store(true, Ordering::SeqCst);
        tokio::time::sleep(fresh + Duration::from_millis(100)).await;
        let (lookup, stale_until) = cached.response_until(&i, &s, HashAlg::Sha1).await;
        assert!(matches!(lookup, Lookup::Found(_, Origin::Cache)));
        assert_eq!(stale_until, None);

        // Unknown, or expired in the store: no instant either.
        mem.fail.store(false, Ordering::SeqCst);
        let unknown = Serial::from_be_bytes(&[9]);
        let (lookup, none) = cached.response_until(&i, &unknown, HashAlg::Sha1).await;
        assert!(matches!(lookup, Lookup::NotFound));
        assert_eq!(none, None);
        let expiring = Serial::from_be_bytes(&[3]);
        mem.put(&i, &expiring, &resp(CertStatus::Good, unix_now()))
            .await
            .unwrap();
        let (lookup, none) = cached.response_until(&i, &expiring, HashAlg::Sha1).await;
        assert!(matches!(lookup, Lookup::Found(_, Origin::Store)));
        assert_eq!(none, None);
    }

    #[tokio::test]
    async fn expired_entries_are_never_cached_or_served_from_cache() {
        let (i, s) = key();
        // Valid for one more second.
        let (_, _, cached) = cached_store(unix_now() + 1, Duration::from_secs(3600)).await;
        assert!(matches!(
            cached.response(&i, &s, HashAlg::Sha1).await,
            Lookup::Found(_, Origin::Store)
        ));
        tokio::time::sleep(Duration::from_millis(2100)).await;
        // The cached copy has expired: it is evicted and the store's (also expired) copy is
        // handed up for the responder to refuse — not cached.
        match cached.response(&i, &s, HashAlg::Sha1).await {
            Lookup::Found(r, Origin::Store) => assert!(r.next_update <= unix_now()),
            other => panic!("{other:?}"),
        }
        cached.run_pending_tasks().await;
        assert_eq!(cached.usage().0, 0);
    }

    #[tokio::test]
    async fn replica_answers_when_the_primary_fails() {
        let metrics = Metrics::unregistered();
        let health = Health::new(metrics.clone());
        let primary = Arc::new(Mem::default());
        let replica = Arc::new(Mem::default());
        let (i, s) = key();
        primary
            .put(&i, &s, &resp(CertStatus::Good, unix_now() + 3600))
            .await
            .unwrap();
        let source =
            ReplicatedSource::new(primary.clone(), replica.clone(), health.clone(), metrics);

        assert!(matches!(
            source.response(&i, &s, HashAlg::Sha1).await,
            Lookup::Found(_, Origin::Store)
        ));
        // The copy is written in the background.
        for _ in 0..100 {
            if replica
                .map
                .lock()
                .unwrap()
                .contains_key(&(i.clone(), s.clone()))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        primary.fail.store(true, Ordering::SeqCst);
        assert!(matches!(
            source.response(&i, &s, HashAlg::Sha1).await,
            Lookup::Found(_, Origin::Replica)
        ));
        assert!(health.degraded_since().is_some());
        assert!(health.last_error().is_some_and(|e| e.contains("down")));
        replica.fail.store(true, Ordering::SeqCst);
        assert!(matches!(
            source.response(&i, &s, HashAlg::Sha1).await,
            Lookup::Unavailable(_)
        ));
    }
}
