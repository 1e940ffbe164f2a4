//! Where the responder's CRL answers come from: `GET|HEAD /<issuer>/<shard>.crl` and
//! `/<issuer>.json`, from a memory cache over the CRL store (and, with Redis, the local
//! replica) — so shards stay served, as last stored, while the gateway, the HSMs, the CA
//! database or Redis are down.
//!
//! | request | answer |
//! |---|---|
//! | a stored shard | 200 `application/pkix-crl`, `Last-Modified` = thisUpdate, `ETag` = the cRLNumber, `Cache-Control: public, max-age` = the time to the next update (at most `update_period_secs`, never past nextUpdate); 304 on a matching `If-None-Match` (or, without one, `If-Modified-Since` ≥ thisUpdate) |
//! | a shard past its nextUpdate | 200 with the stored bytes and `max-age=0`: the freshest there is, and the metric says it is stale |
//! | a shard of a configured issuer never stored | 404 |
//! | a shard number ≥ the issuer's shard count, an unknown issuer | 404 |
//! | store and replica down, nothing cached | 503 with `Retry-After` |
//! | `/<issuer>.json` | 200 `application/json`: every shard URL (CCADB's list), from the configuration alone |
//!
//! `.crl` and `.json` paths never collide with OCSP GET requests: `.` is not a base64
//! character.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;

use super::{ShardMap, StoredCrl};
use crate::config::{Config, CrlConfig};
use crate::error::Error;
use crate::record::IssuerName;
use crate::store::CrlStore;

/// A path the CRL side answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrlPath<'a> {
    /// `/<issuer>/<shard>.crl`
    Shard(&'a str, u32),
    /// `/<issuer>.json`
    List(&'a str),
    /// Ends in `.crl` or `.json` but is neither form: 404.
    Other,
}

/// Whether `path` is for the CRL side, and which; `None`: an OCSP request.
pub fn parse_path(path: &str) -> Option<CrlPath<'_>> {
    let rest = path.strip_prefix('/')?;
    if let Some(stem) = rest.strip_suffix(".crl") {
        let parsed = stem.split_once('/').and_then(|(issuer, shard)| {
            // Digits only: no sign, no leading zeros but "0", so one shard has one URL.
            let canonical = !shard.is_empty()
                && shard.bytes().all(|b| b.is_ascii_digit())
                && (shard == "0" || !shard.starts_with('0'));
            let n = shard.parse().ok().filter(|_| canonical)?;
            (!issuer.is_empty() && !issuer.contains('/')).then_some(CrlPath::Shard(issuer, n))
        });
        return Some(parsed.unwrap_or(CrlPath::Other));
    }
    if let Some(issuer) = rest.strip_suffix(".json") {
        return Some(if issuer.is_empty() || issuer.contains('/') {
            CrlPath::Other
        } else {
            CrlPath::List(issuer)
        });
    }
    None
}

/// A shard ready to serve.
#[derive(Clone, Debug)]
pub struct Served {
    pub der: Bytes,
    pub number: i64,
    pub this_update: i64,
    pub next_update: i64,
}

/// What a lookup found.
#[derive(Clone, Debug)]
pub enum Found {
    Shard(Arc<Served>),
    /// Configured, never stored.
    NotStored,
    /// Not a shard of a configured issuer.
    Unknown,
    /// The stores failed and nothing is cached.
    Unavailable(String),
}

#[derive(Debug)]
struct Cached {
    served: Arc<Served>,
    fetched: Instant,
}

/// See the module documentation.
#[derive(Debug)]
pub struct CrlServer {
    issuers: HashMap<String, (ShardMap, CrlConfig)>,
    primary: Arc<dyn CrlStore>,
    replica: Option<Arc<dyn CrlStore>>,
    cache: RwLock<HashMap<(String, u32), Cached>>,
    /// A cached shard younger than this is served without asking the store.
    fresh: Duration,
    /// Bytes the cache may hold; shards beyond it are read from the store each time.
    cache_bytes: u64,
}

impl CrlServer {
    pub fn new(
        issuers: Vec<(ShardMap, CrlConfig)>,
        primary: Arc<dyn CrlStore>,
        replica: Option<Arc<dyn CrlStore>>,
        fresh: Duration,
        cache_bytes: u64,
    ) -> Self {
        Self {
            issuers: issuers
                .into_iter()
                .map(|(map, config)| (map.issuer().0.clone(), (map, config)))
                .collect(),
            primary,
            replica,
            cache: RwLock::new(HashMap::new()),
            fresh,
            cache_bytes,
        }
    }

    /// The CRL issuers of `config`, or `None` if none publishes CRLs.
    pub fn from_config(
        config: &Config,
        primary: Arc<dyn CrlStore>,
        replica: Option<Arc<dyn CrlStore>>,
    ) -> Option<Self> {
        let issuers: Vec<_> = config
            .issuers
            .iter()
            .filter_map(|i| {
                i.crl
                    .as_ref()
                    .map(|c| (ShardMap::new(&IssuerName(i.name.clone()), c), c.clone()))
            })
            .collect();
        (!issuers.is_empty()).then(|| {
            Self::new(
                issuers,
                primary,
                replica,
                Duration::from_secs(config.responder.cache_fresh_secs),
                config.responder.cache_bytes,
            )
        })
    }

    /// The JSON list of `issuer`'s shard URLs, if it publishes CRLs.
    pub fn list(&self, issuer: &str) -> Option<Vec<u8>> {
        self.issuers
            .get(issuer)
            .and_then(|(map, _)| serde_json::to_vec(&map.urls()).ok())
    }

    /// `max-age` for a shard at `now`: until its issuer's next update is due at the latest,
    /// never past nextUpdate.
    pub fn max_age(&self, issuer: &str, served: &Served, now: i64) -> i64 {
        let period = self
            .issuers
            .get(issuer)
            .map_or(0, |(_, c)| c.update_period_secs as i64);
        let to_next_update = served.next_update.saturating_sub(now);
        let to_next_signing = served
            .this_update
            .saturating_add(period)
            .saturating_sub(now);
        to_next_signing.min(to_next_update).clamp(0, period)
    }

    /// The shard to serve: cached if fresh, else from the store (then the replica), else the
    /// cached copy however old.
    pub async fn shard(&self, issuer: &str, shard: u32) -> Found {
        let Some((map, _)) = self.issuers.get(issuer) else {
            return Found::Unknown;
        };
        if shard >= map.shards() {
            return Found::Unknown;
        }
        let key = (issuer.to_owned(), shard);
        let cached = {
            let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
            cache
                .get(&key)
                .map(|c| (c.served.clone(), c.fetched.elapsed() < self.fresh))
        };
        if let Some((served, true)) = &cached {
            return Found::Shard(served.clone());
        }
        let name = IssuerName(issuer.to_owned());
        match self.fetch(&name, shard).await {
            Ok(Some(crl)) => {
                let served = Arc::new(Served {
                    der: Bytes::from(crl.der),
                    number: crl.number,
                    this_update: crl.this_update,
                    next_update: crl.next_update,
                });
                self.keep(key, served.clone());
                Found::Shard(served)
            }
            Ok(None) => match cached {
                // Gone from the store (a new, empty store?): what we served stays served.
                Some((served, _)) => Found::Shard(served),
                None => Found::NotStored,
            },
            Err(e) => match cached {
                Some((served, _)) => {
                    tracing::debug!(issuer, shard, error = %e, "CRL store down: serving the cached shard");
                    Found::Shard(served)
                }
                None => Found::Unavailable(e.to_string()),
            },
        }
    }

    async fn fetch(&self, issuer: &IssuerName, shard: u32) -> Result<Option<StoredCrl>, Error> {
        match self.primary.get_crl(issuer, shard).await {
            Ok(found) => Ok(found),
            Err(e) => match &self.replica {
                Some(replica) => replica.get_crl(issuer, shard).await.map_err(|_| e),
                None => Err(e),
            },
        }
    }

    fn keep(&self, key: (String, u32), served: Arc<Served>) {
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        let held: u64 = cache
            .iter()
            .filter(|(k, _)| **k != key)
            .map(|(_, c)| c.served.der.len() as u64)
            .sum();
        if held + served.der.len() as u64 <= self.cache_bytes {
            cache.insert(
                key,
                Cached {
                    served,
                    fetched: Instant::now(),
                },
            );
        } else {
            // Over budget: read from the store each time rather than grow.
            cache.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_canonical() {
        assert_eq!(parse_path("/r1/0.crl"), Some(CrlPath::Shard("r1", 0)));
        assert_eq!(parse_path("/r1/127.crl"), Some(CrlPath::Shard("r1", 127)));
        assert_eq!(parse_path("/r1.json"), Some(CrlPath::List("r1")));
        for other in [
            "/r1/007.crl",
            "/r1/-1.crl",
            "/r1/x.crl",
            "/.crl",
            "/a/b/1.crl",
            "/r1/.crl",
            "/a/b.json",
            "/.json",
        ] {
            assert_eq!(parse_path(other), Some(CrlPath::Other), "{other}");
        }
        assert_eq!(parse_path("/MEIwQDA-"), None);
        assert_eq!(parse_path("/"), None);
    }
}
