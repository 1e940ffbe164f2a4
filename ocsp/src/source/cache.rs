//! [`CachedSource`]: the responder's in-memory cache (moka, bounded by the bytes of the DER it
//! holds) in front of a store's source, with revalidation after `cache_fresh_secs`, stale
//! serving while the store is down, and never an expired response.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::future::Cache;

use super::{Lookup, Origin, Source};
use crate::clock::unix_now;
use crate::error::Error;
use crate::hash_alg::HashAlg;
use crate::metrics::Metrics;
use crate::record::{IssuerName, Serial, StoredResponse};

/// A cache entry: the response, where it came from and when it was last read from (or
/// confirmed by) the inner source.
#[derive(Clone, Debug)]
struct Entry {
    response: Arc<StoredResponse>,
    origin: Origin,
    fetched: Instant,
}

/// A cached answer is for one CertID hash: a certificate has a response per hash.
type CacheKey = (IssuerName, Serial, HashAlg);

/// Bytes an entry costs beyond its DER: the key, the `Arc`s, moka's bookkeeping (roughly).
const ENTRY_OVERHEAD: usize = 160;

/// Why a cache miss inserted nothing.
enum Miss {
    NotFound,
    /// Found, but past nextUpdate: returned to the caller (who refuses it) and not cached.
    Expired(Arc<StoredResponse>, Origin),
    Unavailable(Arc<Error>),
}

/// An in-memory cache (moka, bounded by the bytes of the DER it holds) in front of another
/// source.
///
/// - An entry younger than `fresh` is served without asking the inner source.
/// - An older entry is re-read from the inner source, so a revocation published in the store
///   is served within `fresh` (`cache_fresh_secs`). If the inner source cannot answer, the
///   cached entry is served (the store's failure has already marked [`Health`](super::Health) degraded) and
///   its clock restarts, so a dead store is asked about each hot certificate at most once per
///   `fresh` instead of on every request.
/// - An entry past its nextUpdate is evicted and never served; the lookup goes to the inner
///   source, whose answer, if also expired, reaches the responder, which answers
///   `unauthorized` as Boulder did: we have no authoritative current status to give
///   (RFC 5019 §2.2.3), and serving a stale one would tell clients something we no longer sign.
/// - Concurrent misses for one certificate share one inner read (moka's `try_get_with`).
///   "Not found" is not cached: a certificate's first response must be served as soon as the
///   pre-signer stores it.
pub struct CachedSource<S> {
    inner: S,
    cache: Cache<CacheKey, Entry, foldhash::fast::RandomState>,
    fresh: Duration,
    metrics: Arc<Metrics>,
}

impl<S> fmt::Debug for CachedSource<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedSource")
            .field("entries", &self.cache.entry_count())
            .field("bytes", &self.cache.weighted_size())
            .field("fresh", &self.fresh)
            .finish()
    }
}

impl<S> CachedSource<S> {
    /// Runs moka's deferred maintenance now (evictions, counts), for the unit tests in
    /// `source`.
    #[cfg(test)]
    pub(super) async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
    }
}

impl<S: Source> CachedSource<S> {
    pub fn new(inner: S, cache_bytes: u64, fresh: Duration, metrics: Arc<Metrics>) -> Self {
        let cache = Cache::builder()
            .max_capacity(cache_bytes)
            .weigher(|key: &CacheKey, entry: &Entry| {
                let bytes = entry.response.der.len()
                    + key.0.0.len()
                    + key.1.as_bytes().len()
                    + ENTRY_OVERHEAD;
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            // foldhash's seed is random per process, as SipHash's is: keys come from requests,
            // and a fixed seed would let clients aim collisions.
            .build_with_hasher(foldhash::fast::RandomState::default());
        Self {
            inner,
            cache,
            fresh,
            metrics,
        }
    }

    /// Entries and bytes held (approximate: moka applies writes lazily).
    pub fn usage(&self) -> (u64, u64) {
        (self.cache.entry_count(), self.cache.weighted_size())
    }

    async fn revalidate(&self, key: CacheKey, cached: Entry) -> (Lookup, Option<Instant>) {
        // Stamped with the moment the read began, not its end: an answer read just before a
        // revocation landed must not count as fresh from after it (a slow read would stretch
        // the time the revocation takes to be served past `cache_fresh_secs`).
        let asked = Instant::now();
        match self.inner.response(&key.0, &key.1, key.2).await {
            Lookup::Found(response, origin) => {
                self.metrics.cache("revalidated");
                let mut fetched = None;
                if response.next_update > unix_now() {
                    let entry = Entry {
                        response: response.clone(),
                        origin,
                        fetched: asked,
                    };
                    fetched = Some(entry.fetched);
                    self.cache.insert(key, entry).await;
                } else {
                    self.cache.invalidate(&key).await;
                }
                (Lookup::Found(response, origin), fetched)
            }
            Lookup::NotFound => {
                // The store no longer has it (deleted by an operator): neither do we.
                self.metrics.cache("revalidated");
                self.cache.invalidate(&key).await;
                (Lookup::NotFound, None)
            }
            Lookup::Unavailable(e) => {
                tracing::debug!(serial = %key.1, "store unavailable, serving cached copy: {e}");
                self.metrics.cache("stale");
                let response = cached.response.clone();
                let entry = Entry {
                    fetched: Instant::now(),
                    ..cached
                };
                self.cache.insert(key, entry).await;
                // Re-stamped so that the store is not asked again for `fresh`: the next hits
                // serve it (and a copy in front may, for no longer); this answer is not kept.
                (Lookup::Found(response, Origin::Cache), None)
            }
        }
    }
}

#[async_trait]
impl<S: Source> Source for CachedSource<S> {
    async fn response(&self, issuer: &IssuerName, serial: &Serial, hash: HashAlg) -> Lookup {
        self.lookup(issuer, serial, hash).await.0
    }

    async fn response_until(
        &self,
        issuer: &IssuerName,
        serial: &Serial,
        hash: HashAlg,
    ) -> (Lookup, Option<Instant>) {
        let (lookup, fetched) = self.lookup(issuer, serial, hash).await;
        (lookup, fetched.map(|at| at + self.fresh))
    }

    /// An eighth of `cache_bytes`, for all the copies together (the responder shares it among
    /// its HTTP threads; each copy holds its own body and header bytes, see `responder::front`).
    fn front_bytes(&self) -> usize {
        let cache_bytes = self.cache.policy().max_capacity().unwrap_or(0);
        usize::try_from(cache_bytes / FRONT_SHARE).unwrap_or(usize::MAX)
    }
}

/// The share of `cache_bytes` the copies in front of the cache may hold together (1/8).
const FRONT_SHARE: u64 = 8;

impl<S: Source> CachedSource<S> {
    /// The answer, and when the cache entry it came from was read from the inner source (for
    /// answers a copy may be kept of: fresh entries, never a stale one served while the inner
    /// source fails, nor an expired one).
    async fn lookup(
        &self,
        issuer: &IssuerName,
        serial: &Serial,
        hash: HashAlg,
    ) -> (Lookup, Option<Instant>) {
        let key = (issuer.clone(), serial.clone(), hash);
        if let Some(entry) = self.cache.get(&key).await {
            if entry.response.next_update <= unix_now() {
                self.cache.invalidate(&key).await;
            } else if entry.fetched.elapsed() < self.fresh {
                self.metrics.cache("hit");
                return (
                    Lookup::Found(entry.response, Origin::Cache),
                    Some(entry.fetched),
                );
            } else {
                return self.revalidate(key, entry).await;
            }
        }

        self.metrics.cache("miss");
        let fetch = async {
            let asked = Instant::now(); // as in `revalidate`
            match self.inner.response(issuer, serial, hash).await {
                Lookup::Found(response, origin) if response.next_update > unix_now() => Ok(Entry {
                    response,
                    origin,
                    fetched: asked,
                }),
                Lookup::Found(response, origin) => Err(Miss::Expired(response, origin)),
                Lookup::NotFound => Err(Miss::NotFound),
                Lookup::Unavailable(e) => Err(Miss::Unavailable(e)),
            }
        };
        match self.cache.try_get_with(key, fetch).await {
            Ok(entry) => (
                Lookup::Found(entry.response, entry.origin),
                Some(entry.fetched),
            ),
            Err(miss) => (
                match &*miss {
                    Miss::NotFound => Lookup::NotFound,
                    Miss::Expired(response, origin) => Lookup::Found(response.clone(), *origin),
                    Miss::Unavailable(e) => Lookup::Unavailable(e.clone()),
                },
                None,
            ),
        }
    }
}
