//! Dispatch: which HSM signs what, and what happens when one fails mid-request.
//!
//! A request names a key. Its candidates are the HSMs configured to hold that key; among those
//! in rotation and holding it now, the least-loaded one of the local datacenter takes the work.
//! When every local candidate is out, or loaded past `dispatch.spill_queue_depth`, the least
//! loaded of the other datacenters takes it. A job an HSM could not do ([`JobFailure::Retry`])
//! goes to the next candidate at once, until the caller's deadline: one HSM, or a whole
//! datacenter's pair, lost costs a retry, never a failed request.
//!
//! Large batches are cut into chunks of `batching.worker_chunk` signatures so that every
//! session of every HSM in use works on one batch at the same time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hsm_config::{Config, KeyAlgorithm};
use hsmgate_signer_api::v1::SignatureAlgorithm as Alg;

use crate::algorithm::{self, Input, Operation};
use crate::error::Error;
use crate::fair_share::CapacityPool;
use crate::hsm::{Hsm, Job, JobFailure, KeyReference, Refusal};

/// A configured key and the HSMs that may hold it, local datacenter first.
#[derive(Debug)]
pub struct KeyEntry {
    pub name: Arc<str>,
    /// `CKA_LABEL`; also the id under which its public key is remembered.
    pub label: String,
    pub algorithm: KeyAlgorithm,
    pub local: Vec<Arc<Hsm>>,
    pub remote: Vec<Arc<Hsm>>,
    /// The capacity of these HSMs, shared by every key they hold and by every client.
    pub pool: Arc<CapacityPool>,
}

impl KeyEntry {
    pub fn reference_id(&self) -> String {
        crate::hsm::reference_id(&self.name, &self.label, self.algorithm)
    }

    pub fn hsms(&self) -> impl Iterator<Item = &Arc<Hsm>> {
        self.local.iter().chain(self.remote.iter())
    }
}

/// Limits the dispatcher applies; replaced as a whole on reload.
#[derive(Clone, Debug)]
pub struct Limits {
    pub default_deadline: Duration,
    pub max_request_items: usize,
    pub worker_chunk: usize,
    pub spill_queue_depth: usize,
}

impl Limits {
    pub fn from_config(c: &Config) -> Self {
        Self {
            default_deadline: c.timeouts.default_deadline(),
            max_request_items: c.batching.max_request_items,
            worker_chunk: c.batching.worker_chunk,
            spill_queue_depth: c.dispatch.spill_queue_depth,
        }
    }
}

/// One item of a request, checked and ready for an HSM.
#[derive(Debug)]
pub struct Prepared {
    pub key: Arc<KeyEntry>,
    pub algorithm: Alg,
    pub operation: Operation,
    pub data: Vec<u8>,
}

/// A signature and what the caller needs to use it.
#[derive(Debug)]
pub struct Signed {
    pub signature: Vec<u8>,
    pub algorithm: Alg,
    pub hsm: Arc<str>,
}

/// The routing state of one configuration: keys, HSMs, limits. Immutable; a reload builds a new
/// one (reusing unchanged HSMs) and swaps it in.
#[derive(Debug)]
pub struct Router {
    pub keys: HashMap<String, Arc<KeyEntry>>,
    /// Every HSM, local datacenter first.
    pub hsms: Vec<Arc<Hsm>>,
    pub limits: Limits,
    pub reference: Arc<KeyReference>,
    /// Who may call and what they may sign (rebuilt with the router on reload).
    pub clients: Arc<crate::authz::Clients>,
}

impl Router {
    /// Checks one request item. `field` names it in errors (`requests[3]`, or empty for `Sign`).
    pub fn prepare(
        &self,
        field: &str,
        key: &str,
        requested: Alg,
        input: Input<'_>,
    ) -> Result<Prepared, Error> {
        let at = if field.is_empty() {
            String::new()
        } else {
            format!("{field}.")
        };
        if key.is_empty() {
            return Err(Error::InvalidArgument(format!("{at}key: required")));
        }
        let entry = self
            .keys
            .get(key)
            .ok_or_else(|| Error::UnknownKey(format!("{at}key: unknown key `{key}`")))?;
        let algorithm = algorithm::resolve(entry.algorithm, requested)
            .map_err(|m| Error::InvalidArgument(format!("{at}algorithm: {m}")))?;
        let (operation, data) = algorithm::prepare(algorithm, input).map_err(|m| {
            let part = match input {
                Input::Digest(_) => "digest",
                Input::Message(_) => "message",
            };
            Error::InvalidArgument(format!("{at}{part}: {m}"))
        })?;
        Ok(Prepared {
            key: entry.clone(),
            algorithm,
            operation,
            data,
        })
    }

    /// Picks the HSM for the next job of `items` signatures: the least-loaded local one,
    /// spilling to the other datacenters when the local ones are out or past the spill depth.
    /// An HSM is preferred while `load + items <= max_in_flight`; when none has that room the
    /// least loaded takes the job anyway — the call was admitted against the capacity of all of
    /// them (`fair_share`), so the excess is bounded and brief. `None`: no untried HSM holds the
    /// key in rotation.
    fn pick(&self, entry: &KeyEntry, tried: &[usize], items: usize) -> Option<Arc<Hsm>> {
        // (has room, weighted load, load, hsm) of the best candidate of a group.
        let best = |hsms: &[Arc<Hsm>]| {
            hsms.iter()
                .filter(|h| !tried.contains(&(Arc::as_ptr(h) as usize)))
                .filter_map(|h| {
                    let load = h.load_if_holding(&entry.name)?;
                    let fits = load == 0 || load + items <= h.definition.max_in_flight as usize;
                    let weighted = load * 1024 / h.definition.sessions.max(1) as usize;
                    Some((!fits, weighted, load, h))
                })
                .min_by_key(|(full, weighted, _, _)| (*full, *weighted))
                .map(|(full, _, load, h)| (full, load, h.clone()))
        };
        let local = best(&entry.local);
        match local {
            Some((false, load, h)) if load < self.limits.spill_queue_depth => Some(h),
            local => match (best(&entry.remote), local) {
                (Some((false, _, r)), _) => Some(r),
                (_, Some((false, _, l))) => Some(l),
                (Some((true, rload, r)), Some((true, lload, l))) => {
                    Some(if rload < lload { r } else { l })
                }
                (remote, local) => local.or(remote).map(|(_, _, h)| h),
            },
        }
    }

    /// Signs a group of prepared items that share key and operation, retrying on other HSMs
    /// until one succeeds, the candidates run out, or the deadline passes.
    pub async fn sign_chunk(
        &self,
        entry: &Arc<KeyEntry>,
        operation: Operation,
        items: Arc<Vec<Vec<u8>>>,
        first_index: usize,
        deadline: Instant,
    ) -> Result<(Vec<Vec<u8>>, Arc<str>), Error> {
        let mut tried: Vec<usize> = Vec::new();
        let mut attempts = 0u32;
        let mut last_problem = String::from("no HSM holding the key is in rotation");
        // What the HSMs tried so far said, to tell "every HSM refused it" and "every HSM
        // failed without a reason" (the request itself is suspect) from an outage.
        let mut refused: Option<(usize, String)> = None;
        let mut only_transient = true;
        loop {
            if Instant::now() >= deadline {
                return Err(Error::DeadlineExceeded { attempts });
            }
            let hsm = match self.pick(entry, &tried, items.len()) {
                Some(h) => h,
                None => {
                    return Err(if let Some((index, code)) = refused {
                        Error::Refused {
                            hsm: "every HSM holding the key".into(),
                            index: first_index + index,
                            code,
                        }
                    } else if attempts > 0 && only_transient {
                        Error::SignFailed {
                            key: entry.name.to_string(),
                            detail: last_problem,
                        }
                    } else {
                        Error::Unavailable {
                            key: entry.name.to_string(),
                            detail: last_problem,
                        }
                    });
                }
            };
            tried.push(Arc::as_ptr(&hsm) as usize);
            attempts += 1;
            let (tx, rx) = tokio::sync::oneshot::channel();
            let job = Job {
                key: entry.name.clone(),
                operation,
                items: items.clone(),
                deadline,
                reply: tx,
            };
            if let Err((_, refusal)) = hsm.submit(job) {
                only_transient = false;
                last_problem = match refusal {
                    Refusal::OutOfRotation => format!("{} is out of rotation", hsm.name),
                    Refusal::KeyNotHere => format!("{} does not hold the key", hsm.name),
                };
                continue;
            }
            let answer = match tokio::time::timeout_at(deadline.into(), rx).await {
                Ok(Ok(answer)) => answer,
                // Dropped unanswered (its worker thread died): as good as a retry.
                Ok(Err(_)) => Err(JobFailure::Retry(format!("{} dropped the job", hsm.name))),
                Err(_) => return Err(Error::DeadlineExceeded { attempts }),
            };
            match answer {
                Ok(signatures) => return Ok((signatures, hsm.name.clone())),
                Err(JobFailure::Retry(why)) => {
                    hsm.metrics.retries.inc();
                    tracing::debug!(hsm = %hsm.name, key = %entry.name, "retrying elsewhere: {why}");
                    only_transient = false;
                    last_problem = why;
                }
                Err(JobFailure::Transient(why)) => {
                    hsm.metrics.retries.inc();
                    tracing::debug!(hsm = %hsm.name, key = %entry.name, "retrying elsewhere: {why}");
                    last_problem = why;
                }
                Err(JobFailure::Refused { index, code }) => {
                    hsm.metrics.retries.inc();
                    tracing::warn!(hsm = %hsm.name, key = %entry.name, "refused requests[{}]: {code}; trying another HSM", first_index + index);
                    only_transient = false;
                    last_problem = format!("{} refused it: {code}", hsm.name);
                    refused = Some((index, code));
                }
                Err(JobFailure::Expired) => return Err(Error::DeadlineExceeded { attempts }),
            }
        }
    }
}
