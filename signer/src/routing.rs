//! The gateway as a whole: the current [`Router`], building it from a configuration, swapping
//! it on reload, and signing a request's items through it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use hsm_config::Config;

use crate::dispatch::{KeyEntry, Limits, Prepared, Router, Signed};
use crate::error::Error;
use crate::fair_share::{CapacityPool, Claimant, Reservation};
use crate::hsm::{Hsm, HsmSettings, KeyReference, WantedKey};
use crate::metrics::Metrics;

/// The target of this module's log events: the module was `gateway` until issue 14, and log
/// filters name that target.
const LOG_TARGET: &str = "signer::gateway";

/// Longest a reload waits for new or changed HSMs to connect before it swaps anyway.
const RELOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug)]
pub struct Gateway {
    router: RwLock<Arc<Router>>,
    metrics: Arc<Metrics>,
}

impl Gateway {
    /// Builds the router for `config` and starts connecting every HSM in the background. The
    /// gateway answers at once; requests find HSMs as they come into rotation.
    pub fn start(config: &Config, metrics: Arc<Metrics>) -> Arc<Self> {
        let router = build_router(config, None, &metrics, Arc::new(KeyReference::default()));
        Arc::new(Self {
            router: RwLock::new(Arc::new(router)),
            metrics,
        })
    }

    /// The routing state now. Cheap: one `Arc` clone.
    pub fn router(&self) -> Arc<Router> {
        self.router
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Applies a validated configuration without dropping requests. HSMs whose definition
    /// and keys did not change keep their sessions. New or changed ones are connected first,
    /// while the running configuration keeps serving; the swap happens once each of them is in
    /// rotation or has failed a first attempt (at most `RELOAD_WAIT`). HSMs no longer in the
    /// configuration then leave rotation, their queued jobs retried on the ones that remain.
    pub async fn reload(&self, config: &Config) {
        let old = self.router();
        let new = Arc::new(build_router(
            config,
            Some(&old),
            &self.metrics,
            old.reference.clone(),
        ));
        let reused: Vec<*const Hsm> = old.hsms.iter().map(Arc::as_ptr).collect();
        let fresh: Vec<&Arc<Hsm>> = new
            .hsms
            .iter()
            .filter(|h| !reused.contains(&Arc::as_ptr(h)))
            .collect();
        let waited = Instant::now();
        while fresh.iter().any(|h| !h.has_tried()) && waited.elapsed() < RELOAD_WAIT {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let kept: Vec<*const Hsm> = new.hsms.iter().map(Arc::as_ptr).collect();
        let ids: std::collections::HashSet<String> =
            new.keys.values().map(|k| k.reference_id()).collect();
        *self.router.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        new.reference.retain(&ids);
        for hsm in &old.hsms {
            if !kept.contains(&Arc::as_ptr(hsm)) {
                tracing::info!(target: LOG_TARGET, hsm = %hsm.name, "removed or changed by the new configuration");
                hsm.stop();
            }
        }
    }

    /// Stops every HSM (after the gRPC server drained).
    /// Stops every HSM (after the gRPC server drained) and waits up to 3 s for their sessions
    /// to close: exiting while a thread is inside a PKCS#11 module can deadlock in the module's
    /// own exit handlers (seen with SoftHSM2).
    pub fn shutdown(&self) {
        let router = self.router();
        for hsm in &router.hsms {
            hsm.stop();
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(3);
        for hsm in &router.hsms {
            hsm.wait_closed(deadline);
        }
    }

    /// Reserves HSM capacity for all of a call's items in the pools of their keys' HSMs,
    /// waiting the client's fair turn ([`crate::fair_share`]). A call refused here (queue bound,
    /// deadline) has signed nothing.
    pub async fn reserve(
        &self,
        who: Claimant<'_>,
        items: &[Prepared],
        deadline: Instant,
    ) -> Result<Reserved, Error> {
        // One pool after the other in a fixed order (by address), so that two calls spanning
        // the same pools cannot each hold one and wait for the other.
        let mut per_pool: Vec<(Arc<CapacityPool>, usize)> = Vec::new();
        for item in items {
            match per_pool
                .iter_mut()
                .find(|(p, _)| Arc::ptr_eq(p, &item.key.pool))
            {
                Some((_, n)) => *n += 1,
                None => per_pool.push((item.key.pool.clone(), 1)),
            }
        }
        per_pool.sort_by_key(|(p, _)| Arc::as_ptr(p) as usize);
        let mut held = Vec::with_capacity(per_pool.len());
        for (pool, n) in per_pool {
            match pool.reserve(who, n, deadline).await {
                Ok(reservation) => held.push((pool, reservation)),
                Err(e) => {
                    if let Error::Saturated(_) = e {
                        self.metrics
                            .client_limited(who.client, "max_queued_signatures");
                    }
                    return Err(e);
                }
            }
        }
        Ok(Reserved(held))
    }

    /// Signs prepared items, in order, within `reserved` (from [`Gateway::reserve`] for the
    /// same items). Items are grouped by key and operation, cut into chunks of `worker_chunk`,
    /// and the chunks run on every available session at once, each returning its capacity as
    /// it finishes.
    pub async fn sign(
        &self,
        router: &Router,
        reserved: &Reserved,
        items: Vec<Prepared>,
        deadline: Instant,
    ) -> Result<Vec<Signed>, Error> {
        let finished = |key: &KeyEntry, n: usize| {
            if let Some((_, r)) = reserved
                .0
                .iter()
                .find(|(pool, _)| Arc::ptr_eq(pool, &key.pool))
            {
                r.finished(n);
            }
        };
        if let [only] = items.as_slice() {
            let (mut sigs, hsm) = router
                .sign_chunk(
                    &only.key,
                    only.operation,
                    Arc::new(vec![only.data.clone()]),
                    0,
                    deadline,
                )
                .await?;
            let signature = sigs.pop().ok_or_else(|| Error::Hsm {
                hsm: hsm.to_string(),
                detail: "no signature in the answer".into(),
            })?;
            return Ok(vec![Signed {
                signature,
                algorithm: only.algorithm,
                hsm,
            }]);
        }
        // Group by (key, operation), keeping each item's position.
        let mut groups: HashMap<(usize, crate::algorithm::Operation), Vec<usize>> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            groups
                .entry((Arc::as_ptr(&item.key) as usize, item.operation))
                .or_default()
                .push(i);
        }
        let chunk = router.limits.worker_chunk.max(1);
        let mut tasks = Vec::new();
        for positions in groups.into_values() {
            for part in positions.chunks(chunk) {
                let first = &items[part[0]];
                let data: Vec<Vec<u8>> = part.iter().map(|&i| items[i].data.clone()).collect();
                let key = first.key.clone();
                let op = first.operation;
                let part = part.to_vec();
                let finished = &finished;
                tasks.push(async move {
                    // Items of a group are not contiguous in the request: map a refused item's
                    // position in the chunk back to its position in the request.
                    let signed = router
                        .sign_chunk(&key, op, Arc::new(data), 0, deadline)
                        .await;
                    finished(&key, part.len());
                    let (sigs, hsm) = signed.map_err(|e| match e {
                        Error::Refused { hsm, index, code } => Error::Refused {
                            hsm,
                            index: part.get(index).copied().unwrap_or(index),
                            code,
                        },
                        other => other,
                    })?;
                    Ok::<_, Error>((part, sigs, hsm))
                });
            }
        }
        let done = futures_util::future::try_join_all(tasks).await?;
        let mut out: Vec<Option<Signed>> = (0..items.len()).map(|_| None).collect();
        for (positions, sigs, hsm) in done {
            for (pos, signature) in positions.into_iter().zip(sigs) {
                out[pos] = Some(Signed {
                    signature,
                    algorithm: items[pos].algorithm,
                    hsm: hsm.clone(),
                });
            }
        }
        out.into_iter()
            .enumerate()
            .map(|(i, s)| {
                s.ok_or_else(|| Error::Hsm {
                    hsm: String::new(),
                    detail: format!("requests[{i}] came back without a signature"),
                })
            })
            .collect()
    }
}

/// A call's reservations of HSM capacity, one per pool its items use; returned on drop.
#[derive(Debug, Default)]
pub struct Reserved(Vec<(Arc<CapacityPool>, Reservation)>);

impl Reserved {
    /// No reservation: for measuring the dispatcher alone (`benches/dispatch.rs`), which has
    /// no clients. Every RPC reserves.
    pub fn none() -> Self {
        Self::default()
    }
}

/// Builds a router for `config`. HSMs of `previous` whose definition and keys are unchanged are
/// reused (their sessions stay open); others are created and started.
fn build_router(
    config: &Config,
    previous: Option<&Router>,
    metrics: &Arc<Metrics>,
    reference: Arc<KeyReference>,
) -> Router {
    let settings = HsmSettings {
        call_timeout: config.timeouts.hsm_call(),
        probe_interval: config.timeouts.probe_interval(),
    };
    // HSMs sharing a module and its environment share one PKCS#11 context.
    let mut context_users: HashMap<(String, String), usize> = HashMap::new();
    for (_, h) in config.hsms() {
        let id = (
            h.module_path(&config.base_dir).display().to_string(),
            format!("{:?}", h.module_env),
        );
        *context_users.entry(id).or_default() += 1;
    }
    let local = config.gateway.local_datacenter.as_str();
    let mut hsms: Vec<Arc<Hsm>> = Vec::new();
    let mut ordered: Vec<_> = config.hsms().collect();
    ordered.sort_by_key(|(dc, _)| dc.name != local);
    for (dc, def) in ordered {
        let wanted: Vec<WantedKey> = config
            .keys
            .iter()
            .filter(|k| k.hsms.contains(&def.name))
            .map(|k| WantedKey {
                name: k.name.as_str().into(),
                label: k.label.clone(),
                algorithm: k.algorithm,
            })
            .collect();
        let id = (
            def.module_path(&config.base_dir).display().to_string(),
            format!("{:?}", def.module_env),
        );
        let exclusive = context_users.get(&id).copied().unwrap_or(0) == 1;
        let reusable = previous.and_then(|p| {
            p.hsms
                .iter()
                .find(|h| {
                    h.definition == *def
                        && &*h.datacenter == dc.name.as_str()
                        && h.same_keys(&wanted)
                        && h.same_context_policy(exclusive)
                })
                .cloned()
        });
        let hsm = match reusable {
            Some(h) => {
                h.update_settings(settings.clone());
                h
            }
            None => {
                let h = Hsm::new(
                    &dc.name,
                    def.clone(),
                    config.base_dir.clone(),
                    wanted,
                    exclusive,
                    settings.clone(),
                    reference.clone(),
                    metrics.for_hsm(&def.name, &dc.name, def.sessions),
                );
                h.start();
                h
            }
        };
        hsms.push(hsm);
    }
    // Keys on the same HSMs share one capacity pool; a pool whose HSMs all survived the reload
    // is kept, so calls admitted before it still count against what is admitted after.
    let mut pools: Vec<Arc<CapacityPool>> = previous
        .map(|p| p.keys.values().map(|k| k.pool.clone()).collect())
        .unwrap_or_default();
    let keys = config
        .keys
        .iter()
        .map(|k| {
            let holders = |want_local: bool| {
                hsms.iter()
                    .filter(|h| {
                        k.hsms.iter().any(|n| *n == *h.name)
                            && (&*h.datacenter == local) == want_local
                    })
                    .cloned()
                    .collect::<Vec<_>>()
            };
            let (local, remote) = (holders(true), holders(false));
            let all: Vec<Arc<Hsm>> = local.iter().chain(&remote).cloned().collect();
            let pool = match pools.iter().find(|p| p.covers(&all)) {
                Some(p) => p.clone(),
                None => {
                    let p = CapacityPool::new(all);
                    pools.push(p.clone());
                    p
                }
            };
            let entry = KeyEntry {
                name: k.name.as_str().into(),
                label: k.label.clone(),
                algorithm: k.algorithm,
                local,
                remote,
                pool,
            };
            (k.name.clone(), Arc::new(entry))
        })
        .collect();
    Router {
        keys,
        hsms,
        limits: Limits::from_config(config),
        reference,
        clients: Arc::new(crate::authz::Clients::from_config(config, metrics)),
    }
}
