//! Who is calling, and what they may do: client identification by certificate, grants, and
//! per-client limits.
//!
//! A caller is identified from the client certificate the TLS handshake verified (it chains to
//! `gateway.tls.client_ca`): by the SHA-256 of its SubjectPublicKeyInfo when a client is
//! configured that way, else by its subject (RFC 4514, most specific RDN first). On a gateway
//! with `gateway.insecure_plaintext`, every caller is the client named there. A caller that
//! matches no `[[clients]]` entry may do nothing (PERMISSION_DENIED, audited).
//!
//! Grants pair keys with operations (`sign-raw`, `sign-certificate`, `sign-ocsp`); the
//! operation of a call is the payload it declares (`hsmgate-payload` metadata). The whole set
//! is built from the configuration and rebuilt on reload with the rest of the router, so a
//! refused reload keeps the last good grants. Limits are per client, and every client has them
//! (`hsm_config::ClientLimits` gives the defaults): a cap on signing RPCs in progress, an
//! optional token bucket on signatures per second, and a weight and queue bound in the HSMs'
//! capacity pools ([`crate::fair_share`]); a reload starts them afresh.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use der::{Decode, Encode};
use hsm_config::{Config, Operation, PayloadPolicy};
use prometheus_client::metrics::gauge::Gauge;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;
use crate::fair_share::Claimant;
use crate::metrics::Metrics;

/// A configured client, as the gateway enforces it.
#[derive(Debug)]
pub struct ClientEntry {
    pub name: Arc<str>,
    /// Key name (or `*`) to the operations granted on it.
    grants: HashMap<String, HashSet<Operation>>,
    bucket: Option<Mutex<Bucket>>,
    rate: Option<u32>,
    concurrency: Arc<Semaphore>,
    max_concurrent: u32,
    /// Weight and queue bound in the HSMs' capacity pools (`fair_share`).
    share: u32,
    max_queued: usize,
    in_flight: Gauge,
}

impl ClientEntry {
    /// May this client perform `op` with `key`?
    pub fn allows(&self, key: &str, op: Operation) -> bool {
        [key, "*"]
            .iter()
            .any(|k| self.grants.get(*k).is_some_and(|ops| ops.contains(&op)))
    }

    /// How this client asks the HSMs' capacity pools for signatures.
    pub fn claimant(&self) -> Claimant<'_> {
        Claimant {
            client: &self.name,
            share: self.share,
            max_queued: self.max_queued,
        }
    }

    /// Takes this client's limits for a call of `signatures` items: a concurrency slot and
    /// `signatures` tokens. Refused at once (RESOURCE_EXHAUSTED), never queued: a client over
    /// its share backs off instead of holding gateway memory.
    pub fn admit(&self, signatures: u64, metrics: &Metrics) -> Result<Admission, Error> {
        let Ok(permit) = self.concurrency.clone().try_acquire_owned() else {
            metrics.client_limited(&self.name, "max_concurrent");
            return Err(Error::ClientLimited(format!(
                "client `{}` has its maximum of {} concurrent signing calls in progress; retry with backoff",
                self.name, self.max_concurrent
            )));
        };
        if let Some(bucket) = &self.bucket {
            let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
            if !b.take(signatures as f64) {
                metrics.client_limited(&self.name, "signatures_per_sec");
                return Err(Error::ClientLimited(format!(
                    "client `{}` is over its rate of {} signatures/s; retry with backoff",
                    self.name,
                    self.rate.unwrap_or(0)
                )));
            }
        }
        self.in_flight.inc();
        Ok(Admission {
            _permit: permit,
            in_flight: self.in_flight.clone(),
        })
    }
}

/// A call's hold on its client's limits; released on drop.
#[derive(Debug)]
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    in_flight: Gauge,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up. A call larger than the
/// burst passes when the bucket is full and leaves it in debt, so big batches are slowed, not
/// refused forever.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, n: f64) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= n.min(self.burst) {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// The caller of one RPC.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The configured client, if the caller is one.
    pub client: Option<Arc<ClientEntry>>,
    /// How the caller presented itself, for logs and the audit log.
    pub identity: String,
}

impl Caller {
    /// The client's name, or `-`.
    pub fn name(&self) -> &str {
        self.client.as_ref().map_or("-", |c| &c.name)
    }
}

/// Every configured client, indexed by how it is recognised.
#[derive(Debug, Default)]
pub struct Clients {
    by_spki: HashMap<String, Arc<ClientEntry>>,
    by_subject: HashMap<String, Arc<ClientEntry>>,
    plaintext: Option<Arc<ClientEntry>>,
    /// What each key signs (`Config::payload_policy`): issuing keys check declared payloads.
    pub payload_policies: HashMap<String, PayloadPolicy>,
    /// Certificates already identified (DER → caller), so that a connection's requests do
    /// not each parse the certificate, re-encode its key and hash it (several µs per call on
    /// the unary path). At most [`SEEN_MAX`] entries; rebuilt empty with the rest on reload.
    seen: Mutex<Vec<(Vec<u8>, Caller)>>,
}

/// Distinct client certificates remembered by [`Clients::identify`]: a CA has a handful of
/// clients, and only certificates that passed the TLS handshake get here.
const SEEN_MAX: usize = 64;

impl Clients {
    pub fn from_config(config: &Config, metrics: &Metrics) -> Self {
        let mut clients = Self {
            payload_policies: config
                .keys
                .iter()
                .map(|k| (k.name.clone(), config.payload_policy(k)))
                .collect(),
            ..Self::default()
        };
        // Every start and reload says which issuing keys may sign what the gateway cannot
        // check, so the opt-in is never forgotten in a config copied from a test.
        metrics.clear_unchecked_payload_keys();
        for key in &config.keys {
            if let Some(reason) = &key.allow_unchecked_payloads
                && config.is_issuing_key(&key.name)
            {
                tracing::warn!(
                    key = %key.name,
                    reason = %reason,
                    "UNCHECKED PAYLOADS: issuing key `{}` may sign payloads the gateway cannot check \
                     (allow_unchecked_payloads); a client holding sign-raw on it can get anything \
                     signed, certificates included. Never on a key that relying parties trust.",
                    key.name
                );
                metrics.set_unchecked_payload_key(&key.name, reason);
            }
        }
        let plaintext = config
            .gateway
            .insecure_plaintext
            .as_ref()
            .map(|p| p.client.as_str());
        for c in &config.clients {
            let mut grants: HashMap<String, HashSet<Operation>> = HashMap::new();
            for g in &c.grants {
                for k in &g.keys {
                    grants
                        .entry(k.clone())
                        .or_default()
                        .extend(g.operations.iter().copied());
                }
            }
            let l = &c.limits;
            metrics.set_client_limit(
                &c.name,
                "signatures_per_sec",
                l.signatures_per_sec.unwrap_or(0),
            );
            let burst = l.burst.or(l.signatures_per_sec);
            metrics.set_client_limit(&c.name, "burst", burst.unwrap_or(0));
            metrics.set_client_limit(&c.name, "max_concurrent", l.max_concurrent);
            let max_queued = l
                .max_queued_signatures
                .unwrap_or(config.batching.max_request_items as u32);
            metrics.set_client_limit(&c.name, "max_queued_signatures", max_queued);
            metrics.set_client_limit(&c.name, "share", l.share);
            let entry = Arc::new(ClientEntry {
                name: c.name.as_str().into(),
                grants,
                bucket: l.signatures_per_sec.map(|rate| {
                    let burst = f64::from(burst.unwrap_or(rate));
                    Mutex::new(Bucket {
                        rate: f64::from(rate),
                        burst,
                        tokens: burst,
                        last: Instant::now(),
                    })
                }),
                rate: l.signatures_per_sec,
                concurrency: Arc::new(Semaphore::new(l.max_concurrent as usize)),
                max_concurrent: l.max_concurrent,
                share: l.share,
                max_queued: max_queued as usize,
                in_flight: metrics.client_in_flight(&c.name),
            });
            if let Some(spki) = &c.spki_sha256 {
                clients
                    .by_spki
                    .insert(spki.to_ascii_lowercase(), entry.clone());
            }
            if let Some(subject) = &c.subject {
                clients
                    .by_subject
                    .insert(subject.trim().to_owned(), entry.clone());
            }
            if plaintext == Some(c.name.as_str()) {
                clients.plaintext = Some(entry);
            }
        }
        clients
    }

    /// The caller of a request: from its verified client certificate (leaf first), or the
    /// plain-text client when the gateway has no TLS.
    pub fn identify(&self, certs: Option<&[impl AsRef<[u8]>]>) -> Caller {
        let Some(leaf) = certs.and_then(|c| c.first()) else {
            return match &self.plaintext {
                Some(client) => Caller {
                    client: Some(client.clone()),
                    identity: "plaintext".into(),
                },
                None => Caller {
                    client: None,
                    identity: "no client certificate".into(),
                },
            };
        };
        let der = leaf.as_ref();
        {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, caller)) = seen.iter().find(|(d, _)| d.as_slice() == der) {
                return caller.clone();
            }
        }
        let caller = self.identify_der(der);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= SEEN_MAX {
            seen.remove(0);
        }
        seen.push((der.to_vec(), caller.clone()));
        caller
    }

    fn identify_der(&self, der: &[u8]) -> Caller {
        match CertIdentity::parse(der) {
            Ok(id) => {
                let client = self
                    .by_spki
                    .get(&id.spki_sha256)
                    .or_else(|| self.by_subject.get(&id.subject))
                    .cloned();
                Caller {
                    client,
                    identity: format!("{}; spki-sha256={}", id.subject, id.spki_sha256),
                }
            }
            Err(e) => Caller {
                client: None,
                identity: format!("unparsable client certificate: {e}"),
            },
        }
    }
}

/// What identifies a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// RFC 4514.
    pub subject: String,
    /// Hex SHA-256 of the DER SubjectPublicKeyInfo.
    pub spki_sha256: String,
}

impl CertIdentity {
    pub fn parse(der: &[u8]) -> Result<Self, der::Error> {
        let cert = x509_cert::Certificate::from_der(der)?;
        let tbs = cert.tbs_certificate();
        let spki = tbs.subject_public_key_info().to_der()?;
        Ok(Self {
            subject: tbs.subject().to_string(),
            spki_sha256: hex::encode(Sha256::digest(&spki)),
        })
    }
}
