//! The per-thread front of the cache: signed answers memoised by their raw GET path, so that a
//! repeated `GET /<base64>` costs one hash of the path and one map probe instead of
//! percent-decoding, base64, the request walk, the issuer search, a cache key built and
//! allocated, and the shared cache's lookup (moka: ~10 % of a hit's CPU in `perf`, mostly the
//! bookkeeping it does on every read).
//!
//! ```text
//!  GET path ──▶ Front (this thread's) ──hit──▶ 200 from the slot's own header values and body
//!                   │ miss
//!                   ▼
//!  decode, parse, Issuers::find ──▶ Source::response_until (CachedSource) ──▶ 200; slot filled
//! ```
//!
//! Why this is as correct as the cache behind it:
//! - A path is turned into a request by pure functions (the same bytes give the same CertID),
//!   and the issuers do not change while the process runs: the path names the certificate.
//! - A slot is filled only from an answer the cache marked fresh ([`Source::response_until`]),
//!   and served only until the cache's own entry stops being fresh (read from the store +
//!   `cache_fresh_secs`): a revocation is served within `cache_fresh_secs`, as without the
//!   front. A slot past its response's nextUpdate is dropped, never served.
//! - Only 200 answers with a SingleResponse for the request's hash are kept; every refusal,
//!   POST, CRL path and stale answer takes the full path every time.
//!
//! One `Front` per router, and the responder builds one router per HTTP thread
//! (`serve::http_thread`): the lock is never contended there, and the slot's header values and
//! body are this thread's own copies, so serving them moves no reference count between cores
//! (the shared cache's `Bytes` bounced between the two cores' caches on every hit).
//! Bounded by bytes ([`Source::front_bytes`], a share of `cache_bytes`); the oldest slots go first.
//! Front hits do not reach the shared cache's recency bookkeeping: a hot entry the cache evicts is
//! read again once per `cache_fresh_secs` per thread.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Instant;

use axum::http::header::InvalidHeaderValue;

use axum::body::Bytes;
use axum::http::HeaderValue;

use crate::hash_alg::HashAlg;
use crate::http_memo::HttpParts;
use crate::record::{CertStatus, StoredResponse};

/// Bytes a slot costs beyond its path and body: header values, the map and queue entries.
const SLOT_OVERHEAD: usize = 256;

/// A signed answer as the front keeps it: what [`super::handler`] needs to send it and count it.
#[derive(Clone, Debug)]
pub(super) struct Hit {
    /// The request's CertID hash (for `ocsp_requests_by_cert_id_hash_total`).
    pub hash: HashAlg,
    pub status: CertStatus,
    pub this_update: i64,
    pub next_update: i64,
    /// This thread's copies of the body and header values.
    pub parts: HttpParts,
}

#[derive(Debug)]
struct Slot {
    /// The path, then the header values and the body (which `hit.parts` are slices of): one
    /// allocation and one reference count. The slots of 10,000 hot certificates outgrow the
    /// CPU caches, so a hit reads them from memory; adjacent bytes cost one miss, not five.
    bytes: Bytes,
    path_len: usize,
    hit: Hit,
    /// When the cache's entry stops being fresh, on the cache's own (monotonic) clock: served
    /// while it has not come, so never longer than the cache entry, whatever the wall clock does.
    until: Instant,
}

#[derive(Debug, Default)]
struct Slots {
    /// By the path's hash; the path itself is compared on a probe.
    map: HashMap<u64, Slot, foldhash::fast::RandomState>,
    /// Insertion order, for eviction: the keys of `map`, each once (a stale slot stays in the
    /// map until it is refilled, which replaces it in place, or evicted).
    order: VecDeque<u64>,
    bytes: usize,
}

/// See the module doc.
#[derive(Debug)]
pub(super) struct Front {
    slots: Mutex<Slots>,
    /// Seeded per process: paths come from clients (a collision only costs a miss).
    hasher: foldhash::fast::RandomState,
    budget: usize,
}

impl Front {
    /// A front holding at most `budget` bytes (0: keeps nothing).
    pub fn new(budget: usize) -> Self {
        Self {
            slots: Mutex::default(),
            hasher: foldhash::fast::RandomState::default(),
            budget,
        }
    }

    /// The answer kept for `path`, if it is still fresh: before the cache entry's freshness
    /// ends (`at`, the monotonic clock) and before the response's nextUpdate (`now`, Unix
    /// seconds).
    pub fn get(&self, path: &str, now: i64, at: Instant) -> Option<Hit> {
        if self.budget == 0 {
            return None;
        }
        let key = self.hasher.hash_one(path.as_bytes());
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = slots.map.get(&key)?;
        let fresh = slot.bytes.get(..slot.path_len) == Some(path.as_bytes())
            && slot.hit.next_update > now
            && at < slot.until;
        fresh.then(|| slot.hit.clone())
    }

    /// Keeps `response` (just answered for `path` with a request of `hash`) until `until`.
    pub fn put(
        &self,
        path: &str,
        hash: HashAlg,
        response: &StoredResponse,
        parts: &HttpParts,
        until: Instant,
    ) {
        // Nothing to keep, or nothing that could be served (`cache_fresh_secs = 0`).
        if self.budget == 0 || until <= Instant::now() {
            return;
        }
        let Ok((bytes, parts)) = own_copy(path, parts) else {
            return;
        };
        let slot = Slot {
            bytes,
            path_len: path.len(),
            hit: Hit {
                hash,
                status: response.status,
                this_update: response.this_update,
                next_update: response.next_update,
                parts,
            },
            until,
        };
        let size = cost(&slot);
        if size > self.budget {
            return;
        }
        let key = self.hasher.hash_one(path.as_bytes());
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slots = &mut *slots;
        match slots.map.insert(key, slot) {
            Some(old) => slots.bytes -= cost(&old),
            None => slots.order.push_back(key),
        }
        slots.bytes += size;
        while slots.bytes > self.budget {
            let Some(oldest) = slots.order.pop_front() else {
                break;
            };
            if let Some(gone) = slots.map.remove(&oldest) {
                slots.bytes -= cost(&gone);
            }
        }
    }
}

fn cost(slot: &Slot) -> usize {
    slot.bytes.len() + SLOT_OVERHEAD
}

/// This thread's copy of `path` and `parts`, in one buffer: a clone of a `Bytes` shares its
/// reference count with every other clone, which the other HTTP thread would increment too.
fn own_copy(path: &str, parts: &HttpParts) -> Result<(Bytes, HttpParts), InvalidHeaderValue> {
    let pieces = [
        path.as_bytes(),
        parts.etag.as_bytes(),
        parts.last_modified.as_bytes(),
        parts.expires.as_bytes(),
        &parts.body,
    ];
    let mut buffer = Vec::with_capacity(pieces.iter().map(|p| p.len()).sum());
    let mut ranges = [0..0, 0..0, 0..0, 0..0, 0..0];
    for (piece, range) in pieces.iter().zip(&mut ranges) {
        *range = buffer.len()..buffer.len() + piece.len();
        buffer.extend_from_slice(piece);
    }
    let bytes = Bytes::from(buffer);
    let value = |i: usize| HeaderValue::from_maybe_shared(bytes.slice(ranges[i].clone()));
    let parts = HttpParts {
        etag: value(1)?,
        last_modified: value(2)?,
        expires: value(3)?,
        body: bytes.slice(ranges[4].clone()),
        // Checked before a slot is filled; empty, a clone of the parts allocates nothing.
        cert_id_hashes: Vec::new(),
    };
    Ok((bytes, parts))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;
    use crate::http_memo::HttpMemo;

    fn response(next_update: i64) -> (StoredResponse, HttpParts) {
        let response = StoredResponse {
            status: CertStatus::Good,
            this_update: 0,
            next_update,
            der: vec![0x30; 100],
            http: HttpMemo::default(),
        };
        let parts = HttpParts {
            body: Bytes::from(response.der.clone()),
            etag: HeaderValue::from_static("\"e\""),
            last_modified: HeaderValue::from_static("x"),
            expires: HeaderValue::from_static("y"),
            cert_id_hashes: vec![HashAlg::Sha1],
        };
        (response, parts)
    }

    #[test]
    fn slots_are_served_only_while_fresh_and_before_next_update() {
        let front = Front::new(1 << 20);
        let (r, parts) = response(1_000);
        let start = Instant::now();
        let until = start + Duration::from_secs(60);
        front.put("/MAo=", HashAlg::Sha1, &r, &parts, until);
        let hit = front.get("/MAo=", 900, start).unwrap();
        assert_eq!((hit.hash, hit.next_update), (HashAlg::Sha1, 1_000));
        assert_eq!(hit.parts.body, parts.body);
        assert_eq!(
            [
                &hit.parts.etag,
                &hit.parts.last_modified,
                &hit.parts.expires
            ],
            [&parts.etag, &parts.last_modified, &parts.expires]
        );
        assert!(front.get("/MAo", 900, start).is_none(), "another path");
        // Served until the cache entry's freshness ends, on the monotonic clock.
        let just_before = until - Duration::from_millis(1);
        assert!(front.get("/MAo=", 900, just_before).is_some());
        assert!(front.get("/MAo=", 900, until).is_none());
        // Fresh, but at nextUpdate: not served.
        assert!(front.get("/MAo=", 1_000, start).is_none());
        // The cache entry's freshness already over: not kept, never served.
        front.put("/MAo", HashAlg::Sha1, &r, &parts, Instant::now());
        assert!(front.get("/MAo", 900, start).is_none());
    }

    #[test]
    fn a_slot_refilled_after_going_stale_is_queued_once() {
        let front = Front::new(1 << 20);
        let (r, parts) = response(1_000);
        for _ in 0..100 {
            let until = Instant::now() + Duration::from_secs(60);
            front.put("/MAo=", HashAlg::Sha1, &r, &parts, until);
            assert!(front.get("/MAo=", 900, until).is_none(), "stale");
        }
        let slots = front.slots.lock().unwrap();
        assert_eq!((slots.map.len(), slots.order.len()), (1, 1));
    }

    #[test]
    fn the_oldest_slots_go_first_past_the_budget() {
        let slot = 4 + 3 + 1 + 1 + 100 + SLOT_OVERHEAD;
        let front = Front::new(3 * slot);
        let (r, parts) = response(1_000);
        let later = Instant::now() + Duration::from_secs(60);
        let at = Instant::now();
        for p in ["/AAA", "/BBB", "/CCC", "/DDD"] {
            front.put(p, HashAlg::Sha1, &r, &parts, later);
        }
        assert!(front.get("/AAA", 0, at).is_none());
        for p in ["/BBB", "/CCC", "/DDD"] {
            assert!(front.get(p, 0, at).is_some(), "{p}");
        }
        // A replaced slot is counted once.
        front.put("/DDD", HashAlg::Sha1, &r, &parts, later);
        assert!(front.get("/BBB", 0, at).is_some());
        let off = Front::new(0);
        off.put("/AAA", HashAlg::Sha1, &r, &parts, later);
        assert!(off.get("/AAA", 0, at).is_none());
    }
}
