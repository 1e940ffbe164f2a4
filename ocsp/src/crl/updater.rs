//! The CRL updater (`hsmgate-ocsp crl-update`): keeps every shard of every CRL-publishing
//! issuer signed, fresh and complete. Boulder's `crl-updater` is the model; the differences are
//! that shards are built from the worklist's records directly and that a revocation triggers
//! its shard's re-signing.
//!
//! # When a shard is signed
//! - **Missing**: never stored — at once.
//! - **Pending**: a revocation in it is recorded (the worklist marks its shard pending in the
//!   transaction that records it, so a crash loses nothing) — at the next tick; ticks come every
//!   `revocation_delay / 4` (at most 5 s), so a revocation is in a stored CRL well within
//!   `revocation_delay`. Revocations that arrive together share one re-signing.
//! - **Routine**: at its own slot of every `update_period`: shard `s` of `n` at offset
//!   `s × update_period / n`, so the work is spread evenly over the period and a shard's
//!   thisUpdate is never older than `update_period` plus a tick. After a mass start (every
//!   shard missing at once) the shards fall back into their slots within one period.
//!
//! # Numbers and concurrency
//! cRLNumber = `max(last known + 1, now in microseconds)`: a restart, or another updater, with
//! no knowledge of the last number still produces a greater one (clocks permitting), and the
//! store's compare-and-set ([`crate::store::CrlStore::put_crl`]) refuses anything not greater
//! than what it holds — so the served number strictly increases whatever runs. A shard that
//! lost the race is not an error: the winner's CRL is at least as fresh, and a pending mark
//! stays until a stored CRL that was built after it (its `seq` read in the snapshot the CRL
//! was built from) clears it.
//!
//! # Resumption
//! Nothing lives only in memory: pending marks and stored shards are in the stores, so a
//! restarted updater finds every shard that is missing, pending or past its slot.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::build::{CrlSigner, IssuerCrl};
use super::crl_shard_counts;
use super::metrics::{CrlMetrics, IssuerLabels, ShardLabels};
use super::{ShardMap, StoredCrl};
use crate::clock::unix_now;
use crate::config::{self, Config, CrlConfig};
use crate::error::{Error, error_kind};
use crate::issuers::Issuers;
use crate::record::IssuerName;
use crate::store::CrlStore;
use crate::store::RedisStore;
use crate::store::SqliteStore;
use hsmgate_signer_api::BatchSigner;

/// The worklist, the CRL store, and the replica the CRL store has (Redis only).
type Stores = (
    Arc<SqliteStore>,
    Arc<dyn CrlStore>,
    Option<Arc<dyn CrlStore>>,
);

/// Shards built, signed and stored at once in a pass.
const SHARDS_IN_FLIGHT: usize = 4;

/// Revoked records assigned a shard per backfill transaction.
const BACKFILL_CHUNK: usize = 10_000;

/// One issuer's CRL state.
#[derive(Debug)]
struct IssuerState {
    crl: IssuerCrl,
    map: ShardMap,
    config: CrlConfig,
    directory: Option<PathBuf>,
}

/// What [`Updater::update_shard`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardOutcome {
    /// Signed and stored with this number and this many entries.
    Stored {
        number: i64,
        entries: u64,
        bytes: usize,
    },
    /// Signed, but the store holds a greater number (another updater was faster).
    Superseded { ours: i64, stored: i64 },
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub stored: usize,
    pub superseded: usize,
    pub failed: usize,
}

/// Why a shard is signed in this pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Pending,
    Missing,
    Routine,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Updater {
    issuers: Vec<IssuerState>,
    worklist: Arc<SqliteStore>,
    primary: Arc<dyn CrlStore>,
    /// With Redis as the store: the worklist file keeps a copy, for the responder when Redis
    /// is down.
    replica: Option<Arc<dyn CrlStore>>,
    signer: Arc<dyn CrlSigner>,
    metrics: CrlMetrics,
    /// Last known (number, thisUpdate) per (issuer index, shard); loaded from the store.
    known: Mutex<HashMap<(usize, u32), (i64, i64)>>,
}

/// The last slot instant of `shard` at or before `now`: `k × period + offset`, offset =
/// `shard × period / shards`.
pub fn slot(shard: u32, shards: u32, period: i64, now: i64) -> i64 {
    let period = period.max(1);
    let offset = (i128::from(shard) * i128::from(period) / i128::from(shards.max(1))) as i64;
    now - (now - offset).rem_euclid(period)
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced, then
/// renamed over `path`, then the directory synced — a reader sees the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

impl Updater {
    pub fn new(
        issuers: Vec<(IssuerCrl, CrlConfig, Option<PathBuf>)>,
        worklist: Arc<SqliteStore>,
        primary: Arc<dyn CrlStore>,
        replica: Option<Arc<dyn CrlStore>>,
        signer: Arc<dyn CrlSigner>,
        metrics: CrlMetrics,
    ) -> Self {
        let issuers = issuers
            .into_iter()
            .map(|(crl, config, directory)| {
                metrics.configured(&crl.name, &config);
                IssuerState {
                    map: ShardMap::new(&crl.name, &config),
                    crl,
                    config,
                    directory,
                }
            })
            .collect();
        Self {
            issuers,
            worklist,
            primary,
            replica,
            signer,
            metrics,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The stores, issuers and gateway of `config`. Does not contact the gateway or Redis.
    pub async fn from_config(config: &Config, metrics: CrlMetrics) -> Result<Self, Error> {
        let issuers = Issuers::load(config)?;
        let mut list = Vec::new();
        for i in &config.issuers {
            let Some(crl) = &i.crl else { continue };
            let name = IssuerName(i.name.clone());
            let issuer = issuers
                .get(&name)
                .ok_or_else(|| Error::UnknownIssuer(i.name.clone()))?;
            list.push((
                IssuerCrl::new(&name, &i.signing_key, &issuer.certificate_der)?,
                crl.clone(),
                crl.directory.as_ref().map(|d| config.resolve(d)),
            ));
        }
        if list.is_empty() {
            return Err(Error::Config {
                path: "issuers.crl".into(),
                detail: "no issuer publishes CRLs: add [issuers.crl] to one".into(),
            });
        }
        let signer =
            BatchSigner::connect_lazy(&config.presigner.gateway, config.gateway_tls().as_ref())?
                .with_timeout(Duration::from_secs(30));
        let open = |path: PathBuf| async move {
            tokio::task::spawn_blocking(move || SqliteStore::open(path))
                .await
                .map_err(|e| Error::Store {
                    store: "sqlite",
                    detail: format!("opening the store: {e}"),
                })?
        };
        let (worklist, primary, replica): Stores = match &config.store {
            config::Store::Sqlite { path } => {
                let store = Arc::new(open(config.resolve(path)).await?);
                (store.clone(), store, None)
            }
            config::Store::Redis {
                urls,
                cluster,
                replica,
            } => {
                let store = Arc::new(open(config.resolve(replica)).await?);
                let redis: Arc<dyn CrlStore> = Arc::new(RedisStore::open(urls, *cluster).await?);
                (store.clone(), redis, Some(store))
            }
        };
        worklist.set_crl_shards(crl_shard_counts(config));
        Ok(Self::new(
            list,
            worklist,
            primary,
            replica,
            Arc::new(signer),
            metrics,
        ))
    }

    pub fn metrics(&self) -> &CrlMetrics {
        &self.metrics
    }

    /// The shard maps of the issuers this updater signs for.
    pub fn shard_maps(&self) -> Vec<ShardMap> {
        self.issuers.iter().map(|i| i.map.clone()).collect()
    }

    /// Before the first pass: records (or checks) each issuer's shard count, assigns shards to
    /// revoked records that have none, and writes each issuer's URL list to its directory.
    pub async fn prepare(&self) -> Result<(), Error> {
        for state in &self.issuers {
            self.worklist
                .crl_register(&state.crl.name, state.config.shards)
                .await?;
            loop {
                let n = self
                    .worklist
                    .crl_backfill(&state.crl.name, state.config.shards, BACKFILL_CHUNK)
                    .await?;
                if n < BACKFILL_CHUNK {
                    break;
                }
            }
            if let Some(dir) = &state.directory {
                let json =
                    serde_json::to_vec_pretty(&state.map.urls()).map_err(|e| Error::Encoding {
                        what: "CRL URL list".into(),
                        detail: e.to_string(),
                    })?;
                write_atomic(&dir.join(format!("{}.json", state.crl.name.0)), &json)?;
            }
        }
        Ok(())
    }

    /// The stored shard: from the primary store, else the replica.
    async fn stored(&self, issuer: &IssuerName, shard: u32) -> Result<Option<StoredCrl>, Error> {
        match self.primary.get_crl(issuer, shard).await {
            Ok(found) => Ok(found),
            Err(e) => match &self.replica {
                Some(replica) => replica.get_crl(issuer, shard).await.map_err(|_| e),
                None => Err(e),
            },
        }
    }

    fn remember(&self, index: usize, shard: u32, number: i64, this_update: i64) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = known.entry((index, shard)).or_insert((number, this_update));
        if number >= entry.0 {
            *entry = (number, this_update);
        }
    }

    fn known(&self, index: usize, shard: u32) -> Option<(i64, i64)> {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(index, shard))
            .copied()
    }

    /// Builds, signs and stores one shard as of `now` (Unix seconds).
    pub async fn update_shard(
        &self,
        index: usize,
        shard: u32,
        now: i64,
    ) -> Result<ShardOutcome, Error> {
        let state = self.issuers.get(index).ok_or_else(|| Error::Config {
            path: "issuers".into(),
            detail: format!("no CRL issuer number {index}"),
        })?;
        let issuer = &state.crl.name;
        let result = self.update_shard_inner(index, state, shard, now).await;
        match &result {
            Ok(ShardOutcome::Stored { .. }) => {
                self.metrics
                    .signed
                    .get_or_create(&IssuerLabels {
                        issuer: issuer.0.clone(),
                    })
                    .inc();
            }
            Ok(ShardOutcome::Superseded { .. }) => {
                self.metrics
                    .superseded
                    .get_or_create(&IssuerLabels {
                        issuer: issuer.0.clone(),
                    })
                    .inc();
            }
            Err(e) => {
                tracing::warn!(issuer = %issuer.0, shard, error = %e, "CRL shard not updated");
                self.metrics.failure(issuer, error_kind(e));
            }
        }
        result
    }

    async fn update_shard_inner(
        &self,
        index: usize,
        state: &IssuerState,
        shard: u32,
        now: i64,
    ) -> Result<ShardOutcome, Error> {
        let issuer = &state.crl.name;
        let (entries, pending) = self.worklist.crl_snapshot(issuer, shard, now).await?;
        let last = match self.known(index, shard) {
            Some((number, _)) => number,
            None => self.stored(issuer, shard).await?.map_or(0, |c| c.number),
        };
        let number = last.saturating_add(1).max(now_micros());
        let this_update = now;
        let next_update = now.saturating_add(state.config.next_update_secs as i64);
        let url = state.map.shard_url(shard);
        let crl = state.crl.clone();
        let count = entries.len() as u64;
        // Building a large shard is CPU work (~1 s per million entries in a debug build): off
        // the runtime's workers.
        let tbs = tokio::task::spawn_blocking(move || {
            crl.tbs(&url, number, this_update, next_update, &entries)
        })
        .await
        .map_err(|e| Error::Encoding {
            what: "TBSCertList".into(),
            detail: format!("build task failed: {e}"),
        })??;
        let (signature, algorithm) = self
            .signer
            .sign_crl(&state.crl.signing_key, state.crl.algorithm(), tbs.clone())
            .await?;
        let crl = state.crl.clone();
        let der = tokio::task::spawn_blocking(move || crl.assemble(&tbs, &algorithm, &signature))
            .await
            .map_err(|e| Error::Encoding {
                what: "CertificateList".into(),
                detail: format!("assemble task failed: {e}"),
            })??;
        let stored = StoredCrl {
            number,
            this_update,
            next_update,
            entries: count,
            der,
        };
        if !self.primary.put_crl(issuer, shard, &stored).await? {
            let current = self.stored(issuer, shard).await?;
            let theirs = current.as_ref().map_or(0, |c| c.number);
            if let Some(c) = &current {
                self.remember(index, shard, c.number, c.this_update);
            }
            tracing::info!(issuer = %issuer.0, shard, ours = number, theirs, "another updater stored a newer CRL");
            return Ok(ShardOutcome::Superseded {
                ours: number,
                stored: theirs,
            });
        }
        self.remember(index, shard, number, this_update);
        self.metrics.shard(issuer, shard, &stored);
        if let Some(replica) = &self.replica
            && let Err(e) = replica.put_crl(issuer, shard, &stored).await
        {
            // Redis holds it; the local copy catches up at the next signing.
            tracing::warn!(issuer = %issuer.0, shard, error = %e, "CRL replica not updated");
            self.metrics.failure(issuer, "replica");
        }
        if let Some(dir) = &state.directory {
            let path = dir.join(&issuer.0).join(format!("{shard}.crl"));
            let der = stored.der.clone();
            let written = tokio::task::spawn_blocking(move || write_atomic(&path, &der))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
            if let Err(e) = written {
                tracing::warn!(issuer = %issuer.0, shard, error = %e, "CRL directory not updated");
                self.metrics.failure(issuer, "directory");
            }
        }
        if let Some((seq, since)) = pending {
            self.worklist.crl_clear_pending(issuer, shard, seq).await?;
            self.metrics
                .lag
                .get_or_create(&IssuerLabels {
                    issuer: issuer.0.clone(),
                })
                .set(unix_now().saturating_sub(since));
        }
        tracing::debug!(issuer = %issuer.0, shard, number, entries = count, bytes = stored.der.len(), "CRL shard stored");
        Ok(ShardOutcome::Stored {
            number,
            entries: count,
            bytes: stored.der.len(),
        })
    }

    /// The shards due at `now`, most urgent first. `force`: every shard.
    async fn due(&self, now: i64, force: bool) -> Result<Vec<(Due, i64, usize, u32)>, Error> {
        let mut due = Vec::new();
        for (index, state) in self.issuers.iter().enumerate() {
            let issuer = &state.crl.name;
            let pending: HashMap<u32, i64> = self
                .worklist
                .crl_pending(issuer)
                .await?
                .into_iter()
                .collect();
            let oldest = pending
                .values()
                .min()
                .map_or(0, |since| now.saturating_sub(*since));
            let labels = IssuerLabels {
                issuer: issuer.0.clone(),
            };
            self.metrics
                .pending
                .get_or_create(&labels)
                .set(pending.len() as i64);
            self.metrics
                .oldest_pending
                .get_or_create(&labels)
                .set(oldest);
            let period = state.config.update_period_secs as i64;
            for shard in 0..state.config.shards {
                if self.known(index, shard).is_none()
                    && let Some(c) = self.stored(issuer, shard).await?
                {
                    self.remember(index, shard, c.number, c.this_update);
                    self.metrics.shard(issuer, shard, &c);
                }
                let known = self.known(index, shard);
                if let Some((_, this_update)) = known {
                    self.metrics
                        .age
                        .get_or_create(&ShardLabels {
                            issuer: issuer.0.clone(),
                            shard: shard.to_string(),
                        })
                        .set(now.saturating_sub(this_update));
                }
                let why = if let Some(since) = pending.get(&shard) {
                    Some((Due::Pending, *since))
                } else {
                    match known {
                        None => Some((Due::Missing, 0)),
                        Some((_, t))
                            if force || t < slot(shard, state.config.shards, period, now) =>
                        {
                            Some((Due::Routine, t))
                        }
                        Some(_) => None,
                    }
                };
                if let Some((why, at)) = why {
                    due.push((why, at, index, shard));
                }
            }
        }
        due.sort();
        Ok(due)
    }

    /// One pass at `now`: every due shard (with `force`, every shard) signed and stored.
    /// Failures are counted and logged; the pass goes on with the other shards.
    pub async fn pass(&self, now: i64, force: bool) -> Result<PassReport, Error> {
        use futures_util::StreamExt;
        let mut report = PassReport::default();
        // Revocations recorded by a process that did not know the CRL configuration have no
        // shard yet: one chunk per issuer per pass assigns theirs (and marks them pending).
        for state in &self.issuers {
            self.worklist
                .crl_backfill(&state.crl.name, state.config.shards, BACKFILL_CHUNK)
                .await?;
        }
        let due = self.due(now, force).await?;
        // A few shards at once, most urgent first: one builds while another is signed and a
        // third waits for its fsync (128 shards of 1,000,000 entries: 10.3 s one at a time).
        let mut outcomes = futures_util::stream::iter(due)
            .map(|(_, _, index, shard)| self.update_shard(index, shard, now))
            .buffer_unordered(SHARDS_IN_FLIGHT);
        while let Some(outcome) = outcomes.next().await {
            match outcome {
                Ok(ShardOutcome::Stored { .. }) => report.stored += 1,
                Ok(ShardOutcome::Superseded { .. }) => report.superseded += 1,
                Err(_) => report.failed += 1,
            }
        }
        Ok(report)
    }

    /// How often the loop looks for due shards: a quarter of the shortest revocation delay,
    /// between 1 and 5 seconds.
    pub fn tick_interval(&self) -> Duration {
        let shortest = self
            .issuers
            .iter()
            .map(|i| i.config.revocation_delay_secs)
            .min()
            .unwrap_or(60);
        Duration::from_millis((shortest * 250).clamp(1_000, 5_000))
    }

    /// Passes every [`Self::tick_interval`] until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let interval = self.tick_interval();
        loop {
            match self.pass(unix_now(), false).await {
                Ok(r) if r.stored + r.superseded + r.failed > 0 => {
                    tracing::info!(
                        stored = r.stored,
                        superseded = r.superseded,
                        failed = r.failed,
                        "CRL pass"
                    )
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "CRL pass failed");
                    for state in &self.issuers {
                        self.metrics.failure(&state.crl.name, error_kind(&e));
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_spread_shards_over_the_period() {
        let period = 600;
        // Shard 0 at multiples of the period, shard 5 of 10 half a period later.
        assert_eq!(slot(0, 10, period, 1_000), 600);
        assert_eq!(slot(5, 10, period, 1_000), 900);
        assert_eq!(slot(5, 10, period, 899), 300);
        // Always within the last period.
        for shard in 0..10 {
            for now in [0, 1, 599, 600, 12_345] {
                let s = slot(shard, 10, period, now);
                assert!(s <= now && now - s < period, "{shard} {now} {s}");
            }
        }
    }
}
