//! `Replay-Nonce` values (RFC 8555 §6.5): issued on every response, each accepted once.
//!
//! Nonces are kept in memory: of the last `capacity` issued (a million by default: ~60 MiB,
//! hours of a busy frontend's traffic), each unused one is accepted once; older ones are
//! forgotten, oldest first. (A used nonce still occupies its slot until it ages out, so the
//! bound is on nonces issued recently, not on those still unused.) A nonce is refused only
//! if it was never issued by this process, was already used, or was evicted — never because of
//! its age alone — because some clients retry `badNonce` once and some never. A restart forgets
//! the outstanding nonces; clients see one `badNonce` and retry with the fresh nonce it carries.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use crate::{Error, random_id};

#[derive(Debug)]
pub struct NonceService {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    outstanding: HashSet<String>,
    order: VecDeque<String>,
}

impl NonceService {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// A fresh nonce, now outstanding.
    pub fn issue(&self) -> Result<String, Error> {
        let nonce = random_id()?;
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| Error::Internal("nonce lock poisoned".into()))?;
        while inner.order.len() >= self.capacity {
            if let Some(old) = inner.order.pop_front() {
                inner.outstanding.remove(&old);
            }
        }
        inner.outstanding.insert(nonce.clone());
        inner.order.push_back(nonce.clone());
        Ok(nonce)
    }

    /// Whether `nonce` was outstanding; it no longer is.
    pub fn consume(&self, nonce: &str) -> bool {
        // A used nonce stays in `order` until it reaches the front; `outstanding` is what counts.
        self.inner
            .lock()
            .map(|mut inner| inner.outstanding.remove(nonce))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_good_once() {
        let nonces = NonceService::new(10);
        let n = nonces.issue().expect("nonce");
        assert!(nonces.consume(&n));
        assert!(!nonces.consume(&n), "replayed");
        assert!(!nonces.consume("never-issued"));
    }

    #[test]
    fn the_oldest_are_evicted_at_capacity() {
        let nonces = NonceService::new(2);
        let a = nonces.issue().expect("nonce");
        let b = nonces.issue().expect("nonce");
        let c = nonces.issue().expect("nonce");
        assert!(!nonces.consume(&a));
        assert!(nonces.consume(&b));
        assert!(nonces.consume(&c));
    }
}
