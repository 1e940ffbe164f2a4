//! The CRL side of the SQLite store ([`crate::crl`]): each issuer's shard count, the shard a
//! certificate's row carries, the pending marks a revocation leaves in its shard's name, the
//! consistent snapshot the updater builds a shard from, and the signed shards themselves.

use std::sync::PoisonError;

use async_trait::async_trait;
use rusqlite::{Transaction, params};

use super::{SqliteStore, column, corrupt, db};
use crate::crl_shard::{CrlEntry, StoredCrl, shard_of};
use crate::error::Error;
use crate::record::{IssuerName, ReasonCode, Serial};
use crate::store::CrlStore;

/// Marks a shard pending (a revocation in it is not in a stored CRL yet).
pub(super) fn mark_crl_pending(
    tx: &Transaction<'_>,
    issuer: &IssuerName,
    shard: u32,
    now: i64,
) -> Result<(), Error> {
    tx.prepare_cached(
        "INSERT INTO crl_pending (issuer, shard, since, seq) VALUES (?1, ?2, ?3, 1)
         ON CONFLICT (issuer, shard) DO UPDATE SET seq = crl_pending.seq + 1",
    )
    .map_err(db)?
    .execute(params![issuer.0, shard, now])
    .map_err(db)?;
    Ok(())
}

impl SqliteStore {
    /// Tells the store each CRL-publishing issuer's shard count, so that recording a
    /// certificate records its shard, and a revocation marks its shard pending, in the same
    /// transaction (see [`crate::crl`]). Issuers not listed get no shard (the updater's
    /// backfill assigns one later).
    pub fn set_crl_shards(&self, shards: std::collections::HashMap<IssuerName, u32>) {
        *self
            .inner
            .crl_shards
            .write()
            .unwrap_or_else(PoisonError::into_inner) = shards;
    }

    pub(super) fn crl_shard_of(&self, issuer: &IssuerName, serial: &Serial) -> Option<u32> {
        self.inner
            .crl_shards
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(issuer)
            .map(|n| shard_of(serial, *n))
    }

    /// Records `shards` as the issuer's shard count, or checks it against the recorded one:
    /// a certificate's shard must never change, and it is named in the certificate.
    pub async fn crl_register(&self, issuer: &IssuerName, shards: u32) -> Result<(), Error> {
        let issuer = issuer.clone();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO crl_issuers (issuer, shards) VALUES (?1, ?2)
                 ON CONFLICT (issuer) DO NOTHING",
                params![issuer.0, shards],
            )
            .map_err(db)?;
            let recorded: i64 = tx
                .query_row(
                    "SELECT shards FROM crl_issuers WHERE issuer = ?1",
                    params![issuer.0],
                    |row| row.get(0),
                )
                .map_err(db)?;
            if recorded != i64::from(shards) {
                return Err(Error::Config {
                    path: format!("issuers.crl.shards of `{}`", issuer.0),
                    detail: format!(
                        "{shards}, but this issuer's certificates were assigned to {recorded} shards: \
                         their CRL distribution points name those shards, so the count cannot change \
                         (publish a new issuer for a new count)"
                    ),
                });
            }
            Ok(())
        })
        .await
    }

    /// Assigns a shard to revoked records without one (recorded by a process that did not know
    /// the issuer's CRL configuration, or before schema 3) and marks those shards pending.
    /// Returns how many records it assigned. At most `limit` per call (one transaction).
    pub async fn crl_backfill(
        &self,
        issuer: &IssuerName,
        shards: u32,
        limit: usize,
    ) -> Result<usize, Error> {
        let issuer = issuer.clone();
        self.write(move |tx| {
            let serials: Vec<Vec<u8>> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT serial FROM certificates
                         WHERE issuer = ?1 AND status = 1 AND crl_shard IS NULL LIMIT ?2",
                    )
                    .map_err(db)?;
                let rows = stmt
                    .query_map(params![issuer.0, limit as i64], |row| row.get(0))
                    .map_err(db)?;
                rows.collect::<Result<_, _>>().map_err(db)?
            };
            let now = crate::clock::unix_now();
            let mut touched = std::collections::BTreeSet::new();
            for serial in &serials {
                let shard = shard_of(&Serial::from_be_bytes(serial), shards);
                tx.prepare_cached(
                    "UPDATE certificates SET crl_shard = ?3 WHERE issuer = ?1 AND serial = ?2",
                )
                .map_err(db)?
                .execute(params![issuer.0, serial, shard])
                .map_err(db)?;
                touched.insert(shard);
            }
            for shard in touched {
                mark_crl_pending(tx, &issuer, shard, now)?;
            }
            Ok(serials.len())
        })
        .await
    }

    /// Records certificates' notAfter (Unix seconds): a revoked certificate leaves its CRL
    /// shard once expired. Unknown certificates are ignored. Returns the rows updated.
    pub async fn record_not_after(
        &self,
        items: Vec<(IssuerName, Serial, i64)>,
    ) -> Result<u64, Error> {
        self.write(move |tx| {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE certificates SET not_after = ?3 WHERE issuer = ?1 AND serial = ?2",
                )
                .map_err(db)?;
            let mut changed = 0;
            for (issuer, serial, not_after) in &items {
                changed += stmt
                    .execute(params![issuer.0, serial.as_bytes(), not_after])
                    .map_err(db)? as u64;
            }
            Ok(changed)
        })
        .await
    }

    /// A consistent snapshot of one shard: its revoked certificates not expired at `now`, in
    /// serial order, and its pending mark `(seq, since)` if any — read in one transaction, so
    /// a CRL built from the entries includes every revocation the mark counts.
    pub async fn crl_snapshot(
        &self,
        issuer: &IssuerName,
        shard: u32,
        now: i64,
    ) -> Result<(Vec<CrlEntry>, Option<(i64, i64)>), Error> {
        let issuer = issuer.clone();
        self.read(move |conn| {
            let tx = conn.unchecked_transaction().map_err(db)?;
            let pending = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT seq, since FROM crl_pending WHERE issuer = ?1 AND shard = ?2",
                    )
                    .map_err(db)?;
                let mut rows = stmt.query(params![issuer.0, shard]).map_err(db)?;
                match rows.next().map_err(db)? {
                    Some(row) => Some((row.get(0).map_err(db)?, row.get(1).map_err(db)?)),
                    None => None,
                }
            };
            let mut entries = Vec::new();
            {
                let mut stmt = tx
                    .prepare_cached(
                        // INDEXED BY: with `ORDER BY serial` the planner preferred the
                        // primary key, scanning every certificate of the issuer per shard
                        // (128 shards of 1,000,000 revoked: 23.8 s instead of a few).
                        "SELECT serial, revoked_at, reason FROM certificates INDEXED BY certificates_crl
                         WHERE issuer = ?1 AND crl_shard = ?2 AND status = 1
                           AND (not_after IS NULL OR not_after >= ?3)
                         ORDER BY serial",
                    )
                    .map_err(db)?;
                let mut rows = stmt.query(params![issuer.0, shard, now]).map_err(db)?;
                while let Some(row) = rows.next().map_err(db)? {
                    let serial: Vec<u8> = row.get(0).map_err(db)?;
                    let key = format!("{}/{}", issuer.0, hex::encode(&serial));
                    let revoked_at: i64 = column(row, 1, "revoked_at", &key)?;
                    let reason: Option<i64> = column(row, 2, "reason", &key)?;
                    let reason = reason
                        .map(|r| {
                            ReasonCode::try_from(r)
                                .map_err(|_| corrupt(&key, format!("reason {r} out of range")))
                        })
                        .transpose()?;
                    entries.push(CrlEntry {
                        serial: Serial::from_be_bytes(&serial),
                        revoked_at,
                        reason,
                    });
                }
            }
            tx.finish().map_err(db)?;
            Ok((entries, pending))
        })
        .await
    }

    /// Every pending shard of `issuer`: `(shard, since)`.
    pub async fn crl_pending(&self, issuer: &IssuerName) -> Result<Vec<(u32, i64)>, Error> {
        let issuer = issuer.clone();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT shard, since FROM crl_pending WHERE issuer = ?1")
                .map_err(db)?;
            let rows = stmt
                .query_map(params![issuer.0], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)
        })
        .await
    }

    /// Clears a shard's pending mark if no revocation came after the snapshot that read `seq`.
    pub async fn crl_clear_pending(
        &self,
        issuer: &IssuerName,
        shard: u32,
        seq: i64,
    ) -> Result<bool, Error> {
        let issuer = issuer.clone();
        self.write(move |tx| {
            let n = tx
                .execute(
                    "DELETE FROM crl_pending WHERE issuer = ?1 AND shard = ?2 AND seq = ?3",
                    params![issuer.0, shard, seq],
                )
                .map_err(db)?;
            Ok(n > 0)
        })
        .await
    }
}

#[async_trait]
impl CrlStore for SqliteStore {
    fn crl_store_kind(&self) -> &'static str {
        "sqlite"
    }

    async fn get_crl(&self, issuer: &IssuerName, shard: u32) -> Result<Option<StoredCrl>, Error> {
        let issuer = issuer.clone();
        self.read(move |conn| {
            let key = format!("crl {}/{shard}", issuer.0);
            let mut stmt = conn
                .prepare_cached(
                    "SELECT number, this_update, next_update, entries, der FROM crl_shards
                     WHERE issuer = ?1 AND shard = ?2",
                )
                .map_err(db)?;
            let mut rows = stmt.query(params![issuer.0, shard]).map_err(db)?;
            let Some(row) = rows.next().map_err(db)? else {
                return Ok(None);
            };
            Ok(Some(StoredCrl {
                number: column(row, 0, "number", &key)?,
                this_update: column(row, 1, "this_update", &key)?,
                next_update: column(row, 2, "next_update", &key)?,
                entries: column::<i64>(row, 3, "entries", &key)?.max(0) as u64,
                der: column(row, 4, "der", &key)?,
            }))
        })
        .await
    }

    async fn put_crl(
        &self,
        issuer: &IssuerName,
        shard: u32,
        crl: &StoredCrl,
    ) -> Result<bool, Error> {
        let issuer = issuer.clone();
        let crl = crl.clone();
        self.write(move |tx| {
            // The compare-and-set is the statement's WHERE: one statement, inside the
            // IMMEDIATE transaction, so no other writer's number can slip in between.
            let n = tx
                .prepare_cached(
                    "INSERT INTO crl_shards (issuer, shard, number, this_update, next_update, entries, der)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (issuer, shard) DO UPDATE SET
                         number = excluded.number, this_update = excluded.this_update,
                         next_update = excluded.next_update, entries = excluded.entries,
                         der = excluded.der
                     WHERE excluded.number > crl_shards.number",
                )
                .map_err(db)?
                .execute(params![
                    issuer.0,
                    shard,
                    crl.number,
                    crl.this_update,
                    crl.next_update,
                    crl.entries as i64,
                    crl.der
                ])
                .map_err(db)?;
            Ok(n > 0)
        })
        .await
    }
}
