//! The embedded store: one SQLite file (bundled SQLite, WAL mode) holding the signed responses
//! the responder serves and the certificate worklist the pre-signer keeps fresh.
//!
//! # Why SQLite, with numbers
//! The responder, the pre-signer and the `import` command are separate processes that share the
//! file; redb and fjall lock their file to one process, SQLite's WAL mode lets any number of
//! readers run beside one writer across processes. Measured on this machine (2 cores, release
//! build, 1,000,000 responses of 500 bytes, `ocsp/tests/store_sqlite.rs`, test
//! `bench_one_million`, run with `cargo test --release -p ocsp --test store_sqlite -- --ignored
//! --nocapture`):
//! - `get` through this async API: **~120,000 lookups/s** (64 concurrent callers, random
//!   serials; two runs: 122,619 and 120,878/s). A plain synchronous loop on one connection does
//!   ~240,000–265,000/s: the rest was the `spawn_blocking` hand-off, which `get` no longer makes
//!   (below). So a cache miss costs the
//!   responder ~16 µs of CPU (2 cores / 120,000/s) on top of its HTTP work.
//! - bulk writes, 10,000 rows per transaction: `put_many` (responses) **160,000–210,000 rows/s**,
//!   `upsert_certificates` **~450,000 rows/s** — importing 1,000,000 certificates takes ~2 s;
//! - a single `put` (one fsync'd transaction): ~0.8–1.7 ms; `mark_published_many` of 256: ~4 ms;
//! - `due(limit 256)` with 1,000,000 certificates: < 1 ms (~50 ms for the very first call on a
//!   fresh connection after a bulk import); `backlog()` (counts over the index): ~85 ms;
//! - the file: 647 MB for 1,000,000 responses and 1,000,000 certificates.
//!
//! Those are a file of 4 KiB pages. New files get 16 KiB pages (`schema.rs`); the same test on
//! 2026-12-05, alternating the two: `get` 276,000 lookups/s through the async API against
//! 225,000–246,000, `put_many` ~205,000 rows/s against ~162,000, `mark_published_many` of 256
//! 1.2–1.8 ms against 4.6–5.8 ms, the file 671 MB.
//!
//! # Tables
//! - `responses`: one signed response per (issuer, serial, `cert_id_hash`), the hash being
//!   the [`Slot`] code (0: the old layout, a SingleResponse per hash under one signature; 1:
//!   SHA-1; 2: SHA-256; see [`super`]). Every `put` reads the certificate's rows, applies
//!   [`may_store`] and writes in one `BEGIN IMMEDIATE` transaction, so writers in several
//!   processes cannot interleave between the check and the write. Schema version 1 keyed
//!   responses by (issuer, serial) alone: opening such a file moves its rows to slot 0, in the
//!   transaction that creates the new table, and they are served from there until re-signed.
//! - `certificates`: the pre-signer's worklist — what the CA says (`status`, `revoked_at`,
//!   `reason`) and what was last published (`responded_*`). `due_key` is maintained on every
//!   write so that [`SqliteStore::due`] is one range scan of an index:
//!   [`DUE_REVOCATION`] for a status change (a revocation) not yet published, [`DUE_UNPUBLISHED`]
//!   for a certificate never published, otherwise the published thisUpdate.
//!
//! # Durability and concurrency
//! - `synchronous=FULL` on the write connection: in WAL mode that is one fsync of the WAL per
//!   commit, so nothing is acknowledged before it is durable (NORMAL could lose the last commits
//!   on power loss — a revocation acknowledged to the CA would vanish).
//! - A busy timeout on every connection: other processes' writers are waited for, not failed.
//! - One write connection behind a mutex (SQLite has one writer at a time anyway) and a small pool
//!   of read-only connections; every call but `get` runs in `tokio::task::spawn_blocking`. A
//!   call's work runs to completion even when the calling future is dropped (a `put` that was
//!   started commits).
//! - `get`, the responder's cache-miss read, runs inline on the caller's thread: a point lookup
//!   on pages already in memory (the read connections mmap the file) takes a few microseconds,
//!   less than the hand-off to the blocking pool, and reading inline served a third more cache
//!   misses per second (bench/ocsp, 1,000,000 responses). The price: a page that must come from
//!   disk stalls that caller's thread for one read, as nginx's workers stall on their blocking
//!   file reads. Readers do not wait for the writer in WAL mode.
//! - Batch calls (`put_many`, `upsert_certificates`, `mark_published_many`) are one transaction
//!   each; callers should keep batches to ~10,000 rows so other writers are not held off longer
//!   than the busy timeout.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::FromSql;
use rusqlite::{
    CachedStatement, Connection, ErrorCode, Row, Transaction, TransactionBehavior, params,
};
use tokio::sync::Semaphore;

use self::crl::mark_crl_pending;
use self::schema::{create_schema, open_connection};
use super::{ResponseStore, Slot, may_store};
use crate::error::Error;
use crate::hash_alg::HashAlg;
use crate::record::{CertStatus, IssuerName, ReasonCode, Serial, StoredResponse};

mod crl;
mod schema;

pub use schema::enable_wal;

/// `due_key` of a certificate whose current status (a revocation) differs from the published
/// one: sorts before everything else, so revocations are published first.
pub const DUE_REVOCATION: i64 = i64::MIN;
/// `due_key` of a certificate that has never been published: next after revocations.
pub const DUE_UNPUBLISHED: i64 = i64::MIN + 1;
/// Published thisUpdates are clamped above the two sentinels.
const DUE_PUBLISHED_MIN: i64 = i64::MIN + 2;

/// Tuning of a [`SqliteStore`].
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// Read connections (and so concurrent reads). Reads beyond this wait for a connection.
    pub read_connections: usize,
    /// How long a call waits for another process's write lock before failing.
    pub busy_timeout: Duration,
    /// Bytes of the file each connection memory-maps (0: off). Saves a copy per page read.
    pub mmap_bytes: u64,
    /// Page cache of the write connection. Re-signing rewrites rows at random keys across the
    /// whole file; with SQLite's default of 2 MiB nearly every row update re-read its B-tree
    /// pages from the OS (the mass-revocation drill ran at 0.42 of `SignBatch`).
    pub writer_cache_bytes: u64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            read_connections: 8,
            busy_timeout: Duration::from_secs(5),
            mmap_bytes: 1 << 30,
            writer_cache_bytes: 256 << 20,
        }
    }
}

/// What the pre-signer has left to do, for metrics ([`SqliteStore::backlog`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Certificates in the worklist.
    pub certificates: u64,
    /// Certificates [`SqliteStore::due`] would return with no limit (includes the next two).
    pub due: u64,
    /// Revocations (status changes) not yet published.
    pub revocations_pending: u64,
    /// Certificates never published.
    pub unpublished: u64,
    /// The oldest published thisUpdate, if any certificate was published: the age of the
    /// stalest response, to alert on well before it expires.
    pub oldest_this_update: Option<i64>,
}

/// The embedded store. Cheap to clone (the connections are shared).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    options: SqliteOptions,
    writer: Mutex<Connection>,
    /// One permit: writers queue here (asynchronously) rather than as blocked threads.
    write_permits: Arc<Semaphore>,
    /// Idle read connections; more are opened on demand up to `options.read_connections`.
    readers: Mutex<Vec<Connection>>,
    read_permits: Arc<Semaphore>,
    /// Shard count per issuer publishing CRLs ([`SqliteStore::set_crl_shards`]): a recorded
    /// revocation gets its shard, and marks it pending, in the transaction that records it.
    crl_shards: std::sync::RwLock<std::collections::HashMap<IssuerName, u32>>,
}

fn db(e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => Error::Corrupt {
            key: "sqlite database".into(),
            detail: e.to_string(),
        },
        _ => Error::Store {
            store: "sqlite",
            detail: e.to_string(),
        },
    }
}

fn key_of(issuer: &IssuerName, serial: &Serial) -> String {
    format!("{}/{}", issuer.0, serial)
}

fn corrupt(key: &str, detail: impl Into<String>) -> Error {
    Error::Corrupt {
        key: key.to_owned(),
        detail: detail.into(),
    }
}

/// Reads a column, turning a wrong type into `Error::Corrupt` for `key`.
fn column<T: FromSql>(row: &Row<'_>, idx: usize, name: &str, key: &str) -> Result<T, Error> {
    row.get::<_, T>(idx)
        .map_err(|e| corrupt(key, format!("column {name}: {e}")))
}

/// The (status, revoked_at, reason) columns of a status.
fn encode_status(status: CertStatus) -> (i64, Option<i64>, Option<i64>) {
    match status {
        CertStatus::Good => (0, None, None),
        CertStatus::Revoked { at, reason } => (1, Some(at), reason.map(i64::from)),
    }
}

fn decode_status(
    key: &str,
    status: i64,
    revoked_at: Option<i64>,
    reason: Option<i64>,
) -> Result<CertStatus, Error> {
    match (status, revoked_at) {
        (0, None) if reason.is_none() => Ok(CertStatus::Good),
        (1, Some(at)) => {
            let reason = reason
                .map(|r| {
                    ReasonCode::try_from(r)
                        .map_err(|_| corrupt(key, format!("reason {r} out of range")))
                })
                .transpose()?;
            Ok(CertStatus::Revoked { at, reason })
        }
        _ => Err(corrupt(
            key,
            format!("status {status} with revoked_at {revoked_at:?} and reason {reason:?}"),
        )),
    }
}

/// Decodes `status, revoked_at, reason` at columns `first..first + 3`.
fn status_columns(row: &Row<'_>, first: usize, key: &str) -> Result<CertStatus, Error> {
    decode_status(
        key,
        column(row, first, "status", key)?,
        column(row, first + 1, "revoked_at", key)?,
        column(row, first + 2, "reason", key)?,
    )
}

/// Every response row of a certificate (at most one per [`Slot`]), by one range scan of the
/// primary key, the choice between them made in Rust ([`select_response`]): an `IN (?3, 0)`
/// list or an `ORDER BY` on an expression made SQLite build and free an ephemeral B-tree or a
/// sorter on every lookup, ~6 % of the responder's CPU per cache miss (perf, bench/ocsp). An
/// `ORDER BY` on the key's last column is the scan's own order, forwards or backwards.
///
/// A request's hash, descending: its own row (2 or 1) comes before the old layout's (0), which
/// is then never read when there is an own row.
const SELECT_SLOTS_DESC: &str =
    "SELECT cert_id_hash, status, revoked_at, reason, this_update, next_update, der
     FROM responses WHERE issuer = ?1 AND serial = ?2 ORDER BY cert_id_hash DESC";
/// Any response, ascending: [`Slot::PREFERRED`]'s SHA-1 before SHA-256.
const SELECT_SLOTS_ASC: &str =
    "SELECT cert_id_hash, status, revoked_at, reason, this_update, next_update, der
     FROM responses WHERE issuer = ?1 AND serial = ?2 ORDER BY cert_id_hash";

/// The response at columns `first..first + 6` of `row` (status, revoked_at, reason,
/// this_update, next_update, der).
fn response_columns(row: &Row<'_>, first: usize, key: &str) -> Result<StoredResponse, Error> {
    Ok(StoredResponse {
        status: status_columns(row, first, key)?,
        this_update: column(row, first + 3, "this_update", key)?,
        next_update: column(row, first + 4, "next_update", key)?,
        der: column(row, first + 5, "der", key)?,
        http: Default::default(),
    })
}

/// The response a request for `hash` gets ([`ResponseStore::get_for`]: the hash's own row,
/// else the old layout's), or with `None` any response of the certificate in the order of
/// [`Slot::PREFERRED`] ([`ResponseStore::get`]). A request's lookup copies out the chosen
/// row's DER only; `get` on a file migrated from schema 1 also copies the old layout's row,
/// which comes first, before a per-hash row replaces it.
fn select_response(
    conn: &Connection,
    issuer: &IssuerName,
    serial: &Serial,
    hash: Option<HashAlg>,
) -> Result<Option<StoredResponse>, Error> {
    // Lower ranks win; `None` is a slot this lookup does not take.
    let rank = |slot: Slot| match hash {
        Some(h) if slot == Slot::Hash(h) => Some(0),
        Some(_) if slot == Slot::Legacy => Some(1),
        Some(_) => None,
        None => Slot::PREFERRED.iter().position(|s| *s == slot),
    };
    let mut stmt = match hash {
        Some(_) => conn.prepare_cached(SELECT_SLOTS_DESC),
        None => conn.prepare_cached(SELECT_SLOTS_ASC),
    }
    .map_err(db)?;
    let mut rows = stmt
        .query(params![issuer.0, serial.as_bytes()])
        .map_err(db)?;
    let mut best: Option<(usize, StoredResponse)> = None;
    while let Some(row) = rows.next().map_err(db)? {
        // The key is formatted only for an error or a row taken: a miss costs no allocation.
        let code: i64 = row
            .get(0)
            .map_err(|e| corrupt(&key_of(issuer, serial), format!("column cert_id_hash: {e}")))?;
        let Some(slot) = Slot::from_code(code) else {
            return Err(corrupt(
                &key_of(issuer, serial),
                format!("cert_id_hash {code}"),
            ));
        };
        let Some(r) = rank(slot) else { continue };
        if best.as_ref().is_some_and(|(b, _)| *b <= r) {
            continue;
        }
        let response = response_columns(row, 1, &key_of(issuer, serial))?;
        if r == 0 {
            return Ok(Some(response));
        }
        best = Some((r, response));
    }
    Ok(best.map(|(_, response)| response))
}

/// Every slot's response of a certificate, for [`may_store`], which reads statuses and times:
/// the DER is left out (an empty `der`), as copying ~400 bytes per slot out of SQLite on every
/// put bought nothing.
fn select_all(
    stmt: &mut CachedStatement<'_>,
    issuer: &IssuerName,
    serial: &Serial,
) -> Result<Vec<(Slot, StoredResponse)>, Error> {
    let mut rows = stmt
        .query(params![issuer.0, serial.as_bytes()])
        .map_err(db)?;
    // Formatted only when there is a row (it names the row in `Error::Corrupt`): a first
    // signing finds none.
    let mut key = None;
    let mut all = Vec::with_capacity(2);
    while let Some(row) = rows.next().map_err(db)? {
        let key: &str = key.get_or_insert_with(|| key_of(issuer, serial));
        let code: i64 = column(row, 6, "cert_id_hash", key)?;
        let slot =
            Slot::from_code(code).ok_or_else(|| corrupt(key, format!("cert_id_hash {code}")))?;
        all.push((slot, response_columns(row, 0, key)?));
    }
    Ok(all)
}

/// A slot's new row; parameters as [`UPDATE_RESPONSE`]'s.
const INSERT_RESPONSE: &str = "INSERT INTO responses
         (issuer, serial, cert_id_hash, status, revoked_at, reason, this_update, next_update, der)
     VALUES (?1, ?2, ?9, ?3, ?4, ?5, ?6, ?7, ?8)";
/// A slot's row replaced: issuer, serial, status, revoked_at, reason, this_update,
/// next_update, der, cert_id_hash.
const UPDATE_RESPONSE: &str = "UPDATE responses SET
         status = ?3, revoked_at = ?4, reason = ?5, this_update = ?6, next_update = ?7, der = ?8
     WHERE issuer = ?1 AND serial = ?2 AND cert_id_hash = ?9";

/// The statements of a put and its publication mark, prepared once for a whole transaction:
/// `prepare_cached` per call trimmed and hashed each statement's text and reset its slot in
/// the cache (~3 % of the pre-signer's CPU).
///
/// A slot's row is written by a plain INSERT or UPDATE, chosen by the rows read first (the
/// caller's IMMEDIATE transaction keeps them current), not by an upsert: its conflict handling
/// cost a second key search per row.
struct PutStatements<'c> {
    select: CachedStatement<'c>,
    delete_good: CachedStatement<'c>,
    insert: CachedStatement<'c>,
    update: CachedStatement<'c>,
    mark: CachedStatement<'c>,
}

impl<'c> PutStatements<'c> {
    fn new(tx: &'c Transaction<'_>) -> Result<Self, Error> {
        Ok(Self {
            select: tx
                .prepare_cached(
                    "SELECT status, revoked_at, reason, this_update, next_update, X'', cert_id_hash
                     FROM responses WHERE issuer = ?1 AND serial = ?2",
                )
                .map_err(db)?,
            delete_good: tx
                .prepare_cached(
                    "DELETE FROM responses
                     WHERE issuer = ?1 AND serial = ?2 AND cert_id_hash != ?3 AND status = 0",
                )
                .map_err(db)?,
            insert: tx.prepare_cached(INSERT_RESPONSE).map_err(db)?,
            update: tx.prepare_cached(UPDATE_RESPONSE).map_err(db)?,
            mark: tx.prepare_cached(MARK_PUBLISHED).map_err(db)?,
        })
    }

    /// Reads the certificate's rows, applies [`may_store`], writes if allowed (and, for a
    /// revocation, deletes the other slots' `good` rows); the caller holds an IMMEDIATE
    /// transaction.
    fn put(
        &mut self,
        issuer: &IssuerName,
        serial: &Serial,
        new: &StoredResponse,
    ) -> Result<bool, Error> {
        // A corrupt old row fails the put: it might have been a revocation, and overwriting it
        // with `good` is the one thing this store must never do.
        let mut stored = select_all(&mut self.select, issuer, serial)?;
        self.put_over(&mut stored, issuer, serial, new)
    }

    /// [`Self::put`] given the certificate's rows as they are in this transaction (`stored`,
    /// from [`select_all`] or kept up to date by the previous calls for the same certificate),
    /// and updates them to what this put leaves: a certificate's responses (one per CertID
    /// hash) come together, and reading its rows again for each of them was a third of the
    /// cost of a put.
    fn put_over(
        &mut self,
        stored: &mut Vec<(Slot, StoredResponse)>,
        issuer: &IssuerName,
        serial: &Serial,
        new: &StoredResponse,
    ) -> Result<bool, Error> {
        let slot = Slot::of(&new.der);
        if !may_store(stored, slot, new) {
            return Ok(false);
        }
        if new.status.is_revoked() {
            self.delete_good
                .execute(params![issuer.0, serial.as_bytes(), slot.code()])
                .map_err(db)?;
        }
        let (status, revoked_at, reason) = encode_status(new.status);
        let exists = stored.iter().any(|(s, _)| *s == slot);
        let write = if exists {
            &mut self.update
        } else {
            &mut self.insert
        };
        let written = write
            .execute(params![
                issuer.0,
                serial.as_bytes(),
                status,
                revoked_at,
                reason,
                new.this_update,
                new.next_update,
                new.der,
                slot.code()
            ])
            .map_err(db)?;
        if written != 1 {
            // The rows in hand were not the table's: fail the transaction rather than guess.
            return Err(corrupt(
                &key_of(issuer, serial),
                format!("{written} rows written for slot {}", slot.code()),
            ));
        }
        // What the statements above did, to the rows in hand.
        if new.status.is_revoked() {
            stored.retain(|(s, r)| *s == slot || r.status.is_revoked());
        }
        let row = StoredResponse {
            der: Vec::new(),
            http: Default::default(),
            ..*new
        };
        match stored.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, old)) => *old = row,
            None => stored.push((slot, row)),
        }
        Ok(true)
    }

    /// [`mark_in`] with the prepared statement.
    fn mark(
        &mut self,
        issuer: &IssuerName,
        serial: &Serial,
        status: CertStatus,
        this_update: i64,
    ) -> Result<(), Error> {
        mark_with(&mut self.mark, issuer, serial, status, this_update)
    }
}

/// [`PutStatements::put`] on its own.
fn put_in(
    tx: &Transaction<'_>,
    issuer: &IssuerName,
    serial: &Serial,
    new: &StoredResponse,
) -> Result<bool, Error> {
    PutStatements::new(tx)?.put(issuer, serial, new)
}

/// Inserts a certificate, or moves it from good to revoked; anything else is refused (a revoked
/// certificate never goes back to good, a recorded revocation keeps its time and reason).
/// Returns whether a row changed.
fn upsert_in(
    tx: &Transaction<'_>,
    issuer: &IssuerName,
    serial: &Serial,
    status: CertStatus,
    shard: Option<u32>,
) -> Result<bool, Error> {
    let (code, revoked_at, reason) = encode_status(status);
    let insert_key = if status.is_revoked() {
        DUE_REVOCATION
    } else {
        DUE_UNPUBLISHED
    };
    // The monotonic rule in the statement itself (the DO UPDATE's WHERE), so a bulk import is one
    // statement per row. An update is always good -> revoked, and what was published (if
    // anything) was good, so the certificate becomes a pending revocation.
    let changed = tx
        .prepare_cached(
            "INSERT INTO certificates (issuer, serial, status, revoked_at, reason, due_key, crl_shard)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?8)
             ON CONFLICT (issuer, serial) DO UPDATE SET
                 status = excluded.status, revoked_at = excluded.revoked_at,
                 reason = excluded.reason, due_key = ?7,
                 crl_shard = coalesce(certificates.crl_shard, excluded.crl_shard)
             WHERE certificates.status = 0 AND excluded.status = 1",
        )
        .map_err(db)?
        .execute(params![
            issuer.0,
            serial.as_bytes(),
            code,
            revoked_at,
            reason,
            insert_key,
            DUE_REVOCATION,
            shard
        ])
        .map_err(db)?;
    // A new revocation: its shard is pending until a CRL that lists it is stored.
    if changed > 0
        && status.is_revoked()
        && let Some(shard) = shard
    {
        mark_crl_pending(tx, issuer, shard, crate::clock::unix_now())?;
    }
    Ok(changed > 0)
}

/// Records a publication if `status` is the certificate's current status and it is not older
/// than the one recorded for the same status.
fn mark_in(
    tx: &Transaction<'_>,
    issuer: &IssuerName,
    serial: &Serial,
    status: CertStatus,
    this_update: i64,
) -> Result<(), Error> {
    let mut stmt = tx.prepare_cached(MARK_PUBLISHED).map_err(db)?;
    mark_with(&mut stmt, issuer, serial, status, this_update)
}

// `IS` compares NULLs as equal. The status comparison is what stops a refresh that signed
// `good` before a revocation arrived from marking the revocation as published.
const MARK_PUBLISHED: &str = "UPDATE certificates SET
         responded_status = ?3, responded_revoked_at = ?4,
         responded_this_update = ?6, due_key = ?7
     WHERE issuer = ?1 AND serial = ?2
       AND status = ?3 AND revoked_at IS ?4 AND reason IS ?5
       AND (responded_this_update IS NULL OR responded_status IS NOT ?3
            OR responded_this_update <= ?6)";

fn mark_with(
    stmt: &mut CachedStatement<'_>,
    issuer: &IssuerName,
    serial: &Serial,
    status: CertStatus,
    this_update: i64,
) -> Result<(), Error> {
    let (code, revoked_at, reason) = encode_status(status);
    stmt.execute(params![
        issuer.0,
        serial.as_bytes(),
        code,
        revoked_at,
        reason,
        this_update,
        this_update.max(DUE_PUBLISHED_MIN)
    ])
    .map_err(db)?;
    Ok(())
}

impl Inner {
    fn open_connection(&self, writer: bool) -> Result<Connection, Error> {
        open_connection(&self.path, &self.options, writer)
    }

    /// An idle read connection, or a new one (the read permits bound how many exist).
    fn checkout(&self) -> Result<Connection, Error> {
        let idle = self
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            None => self.open_connection(false),
        }
    }

    fn checkin(&self, conn: Connection) {
        let mut idle = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.options.read_connections {
            idle.push(conn);
        }
    }
}

fn join_error(e: tokio::task::JoinError) -> Error {
    Error::Store {
        store: "sqlite",
        detail: format!("blocking task failed: {e}"),
    }
}

fn closed() -> Error {
    Error::Store {
        store: "sqlite",
        detail: "store is shutting down".into(),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens (creating if needed) the store at `path`. Blocking; call it at start-up (or inside
    /// `spawn_blocking`). The async methods need a Tokio runtime.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, Error> {
        let path = path.as_ref().to_owned();
        let options = SqliteOptions {
            read_connections: options.read_connections.max(1),
            ..options
        };
        let mut writer = open_connection(&path, &options, true)?;
        create_schema(&mut writer, &path)?;
        // One reader now, so a file that cannot be read fails here, not on the first request.
        let first_reader = open_connection(&path, &options, false)?;
        Ok(Self {
            inner: Arc::new(Inner {
                read_permits: Arc::new(Semaphore::new(options.read_connections)),
                write_permits: Arc::new(Semaphore::new(1)),
                readers: Mutex::new(vec![first_reader]),
                writer: Mutex::new(writer),
                options,
                path,
                crl_shards: Default::default(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on a read connection in the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        // The permit moves into the blocking task so that a caller giving up early does not let
        // more connections exist than configured.
        let permit = self
            .inner
            .read_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| closed())?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = inner.checkout()?;
            let result = f(&conn);
            inner.checkin(conn);
            result
        })
        .await
        .map_err(join_error)?
    }

    /// Runs `f` in one IMMEDIATE transaction on the write connection, committing if it succeeds.
    async fn write<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, Error> + Send + 'static,
    {
        let permit = self
            .inner
            .write_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| closed())?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // A panic while holding the lock dropped its transaction (rolled back), so the
            // connection is usable: poisoning is not a reason to stop writing.
            let mut conn = inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
            // IMMEDIATE takes the write lock before the first read, so the read-check-write of a
            // put cannot interleave with another process's.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
            let value = f(&tx)?;
            tx.commit().map_err(db)?;
            Ok(value)
        })
        .await
        .map_err(join_error)?
    }

    /// Stores each response unless the stored one must win, in one transaction; returns, per
    /// item, whether it was stored. A corrupt existing row fails the whole batch.
    pub async fn put_many(
        &self,
        items: Vec<(IssuerName, Serial, StoredResponse)>,
    ) -> Result<Vec<bool>, Error> {
        self.write(move |tx| {
            items
                .iter()
                .map(|(issuer, serial, response)| put_in(tx, issuer, serial, response))
                .collect()
        })
        .await
    }

    /// [`Self::put_many`], and for every response stored, [`Self::mark_published_many`] of it,
    /// in one transaction: a publication is recorded exactly when its response is durable, with
    /// one fsync instead of two. Returns the items, each with whether it was stored.
    pub async fn put_and_mark_many(
        &self,
        items: Vec<(IssuerName, Serial, StoredResponse)>,
    ) -> Result<Vec<(IssuerName, Serial, StoredResponse, bool)>, Error> {
        self.write(move |tx| {
            let mut out: Vec<(IssuerName, Serial, StoredResponse, bool)> =
                Vec::with_capacity(items.len());
            let mut statements = PutStatements::new(tx)?;
            // The rows of the certificate of the previous item, as this transaction left them.
            let mut rows: Vec<(Slot, StoredResponse)> = Vec::new();
            for (issuer, serial, response) in items {
                let same_certificate = out
                    .last()
                    .is_some_and(|(i, s, _, _)| *i == issuer && *s == serial);
                if !same_certificate {
                    rows = select_all(&mut statements.select, &issuer, &serial)?;
                }
                let stored = statements.put_over(&mut rows, &issuer, &serial, &response)?;
                // A certificate's responses (one per CertID hash) come next to each other with
                // the same status and thisUpdate: one mark records them all, and a second
                // UPDATE of the same row (and of its `due_key` index entry) would change nothing.
                let marked = out.last().is_some_and(|(i, s, r, st)| {
                    *st && *i == issuer
                        && *s == serial
                        && r.status == response.status
                        && r.this_update == response.this_update
                });
                if stored && !marked {
                    statements.mark(&issuer, &serial, response.status, response.this_update)?;
                }
                out.push((issuer, serial, response, stored));
            }
            Ok(out)
        })
        .await
    }

    /// Adds a certificate to the worklist or records its revocation. Monotonic: a revoked
    /// certificate never goes back to good, and a recorded revocation keeps its time and reason.
    /// Returns whether anything changed.
    pub async fn upsert_certificate(
        &self,
        issuer: &IssuerName,
        serial: &Serial,
        status: CertStatus,
    ) -> Result<bool, Error> {
        let (issuer, serial) = (issuer.clone(), serial.clone());
        let shard = self.crl_shard_of(&issuer, &serial);
        self.write(move |tx| upsert_in(tx, &issuer, &serial, status, shard))
            .await
    }

    /// [`Self::upsert_certificate`] for many, in one transaction; returns how many changed.
    pub async fn upsert_certificates(
        &self,
        items: Vec<(IssuerName, Serial, CertStatus)>,
    ) -> Result<u64, Error> {
        let shards: Vec<Option<u32>> = items
            .iter()
            .map(|(issuer, serial, _)| self.crl_shard_of(issuer, serial))
            .collect();
        self.write(move |tx| {
            let mut changed = 0;
            for ((issuer, serial, status), shard) in items.iter().zip(shards) {
                changed += u64::from(upsert_in(tx, issuer, serial, *status, shard)?);
            }
            Ok(changed)
        })
        .await
    }

    /// The certificate's current status in the worklist.
    pub async fn certificate(
        &self,
        issuer: &IssuerName,
        serial: &Serial,
    ) -> Result<Option<CertStatus>, Error> {
        let (issuer, serial) = (issuer.clone(), serial.clone());
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT status, revoked_at, reason FROM certificates
                     WHERE issuer = ?1 AND serial = ?2",
                )
                .map_err(db)?;
            let mut rows = stmt
                .query(params![issuer.0, serial.as_bytes()])
                .map_err(db)?;
            match rows.next().map_err(db)? {
                Some(row) => status_columns(row, 0, &key_of(&issuer, &serial)).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    /// Up to `limit` certificates needing a (re-)signed response, most urgent first: revocations
    /// not yet published, then certificates never published, then those whose published
    /// response has thisUpdate <= `now - refresh_after_secs`, oldest first. Corrupt rows are
    /// logged and left out (they still count towards `limit`).
    pub async fn due(
        &self,
        now: i64,
        refresh_after_secs: i64,
        limit: usize,
    ) -> Result<Vec<(IssuerName, Serial, CertStatus)>, Error> {
        let threshold = now.saturating_sub(refresh_after_secs);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT issuer, serial, status, revoked_at, reason FROM certificates
                     WHERE due_key <= ?1 ORDER BY due_key LIMIT ?2",
                )
                .map_err(db)?;
            let mut rows = stmt.query(params![threshold, limit]).map_err(db)?;
            let mut due = Vec::new();
            while let Some(row) = rows.next().map_err(db)? {
                // A corrupt row is logged and skipped: failing the whole call would stop every
                // refresh and let all responses expire because of one bad row.
                let decoded = (|| {
                    let issuer = IssuerName(column(row, 0, "issuer", "certificates")?);
                    let serial = Serial::from_be_bytes(&column::<Vec<u8>>(
                        row,
                        1,
                        "serial",
                        "certificates",
                    )?);
                    // The row's name is formatted for the error only (this runs per
                    // certificate of every refresh).
                    let status = match status_columns(row, 2, "certificates") {
                        Ok(status) => status,
                        Err(_) => status_columns(row, 2, &key_of(&issuer, &serial))?,
                    };
                    Ok::<_, Error>((issuer, serial, status))
                })();
                match decoded {
                    Ok(item) => due.push(item),
                    Err(e) => tracing::error!(error = %e, "skipping a corrupt certificate row"),
                }
            }
            Ok(due)
        })
        .await
    }

    /// Records that a response with `status` and `this_update` was published — only if `status`
    /// is still the certificate's current status (a refresh that signed `good` while a
    /// revocation arrived must not mark the revocation as published), and never moving the
    /// recorded thisUpdate backwards. Unknown certificates are ignored.
    pub async fn mark_published(
        &self,
        issuer: &IssuerName,
        serial: &Serial,
        status: CertStatus,
        this_update: i64,
    ) -> Result<(), Error> {
        let (issuer, serial) = (issuer.clone(), serial.clone());
        self.write(move |tx| mark_in(tx, &issuer, &serial, status, this_update))
            .await
    }

    /// [`Self::mark_published`] for many, in one transaction (one fsync for a signed batch).
    pub async fn mark_published_many(
        &self,
        items: Vec<(IssuerName, Serial, CertStatus, i64)>,
    ) -> Result<(), Error> {
        self.write(move |tx| {
            for (issuer, serial, status, this_update) in &items {
                mark_in(tx, issuer, serial, *status, *this_update)?;
            }
            Ok(())
        })
        .await
    }

    /// Counts for the pre-signer's metrics. Cost: counting walks the `due_key` index (tens of
    /// milliseconds with 1,000,000 certificates), so call it at scrape intervals, not per request.
    pub async fn backlog(&self, now: i64, refresh_after_secs: i64) -> Result<Backlog, Error> {
        let threshold = now.saturating_sub(refresh_after_secs);
        self.read(move |conn| {
            let count = |sql: &str, param: i64| -> Result<u64, Error> {
                let n: i64 = conn
                    .prepare_cached(sql)
                    .map_err(db)?
                    .query_row([param], |r| r.get(0))
                    .map_err(db)?;
                Ok(u64::try_from(n).unwrap_or(0))
            };
            let oldest: Option<i64> = conn
                .prepare_cached("SELECT min(due_key) FROM certificates WHERE due_key >= ?1")
                .map_err(db)?
                .query_row([DUE_PUBLISHED_MIN], |r| r.get(0))
                .map_err(db)?;
            Ok(Backlog {
                certificates: count(
                    "SELECT count(*) FROM certificates WHERE due_key >= ?1",
                    i64::MIN,
                )?,
                due: count(
                    "SELECT count(*) FROM certificates WHERE due_key <= ?1",
                    threshold,
                )?,
                revocations_pending: count(
                    "SELECT count(*) FROM certificates WHERE due_key = ?1",
                    DUE_REVOCATION,
                )?,
                unpublished: count(
                    "SELECT count(*) FROM certificates WHERE due_key = ?1",
                    DUE_UNPUBLISHED,
                )?,
                oldest_this_update: oldest,
            })
        })
        .await
    }
}

#[async_trait]
impl ResponseStore for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn get(
        &self,
        issuer: &IssuerName,
        serial: &Serial,
    ) -> Result<Option<StoredResponse>, Error> {
        // Inline on the caller's thread, not in `spawn_blocking`: see the module's
        // "Durability and concurrency".
        let conn = self.inner.checkout()?;
        let result = select_response(&conn, issuer, serial, None);
        self.inner.checkin(conn);
        result
    }

    async fn get_for(
        &self,
        issuer: &IssuerName,
        serial: &Serial,
        hash: HashAlg,
    ) -> Result<Option<StoredResponse>, Error> {
        let conn = self.inner.checkout()?;
        let result = select_response(&conn, issuer, serial, Some(hash));
        self.inner.checkin(conn);
        result
    }

    async fn put(
        &self,
        issuer: &IssuerName,
        serial: &Serial,
        response: &StoredResponse,
    ) -> Result<bool, Error> {
        let (issuer, serial, response) = (issuer.clone(), serial.clone(), response.clone());
        self.write(move |tx| put_in(tx, &issuer, &serial, &response))
            .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The lookups of the responder's cache misses are plain range scans of the primary key:
    /// no ephemeral table (an `IN` list) and no sorter (an `ORDER BY`), which SQLite would
    /// build and free on every call.
    #[test]
    fn the_lookups_build_no_temporary_b_tree() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("s.sqlite")).unwrap();
        let conn = store.inner.checkout().unwrap();
        for (sql, seek) in [(SELECT_SLOTS_DESC, "SeekLE"), (SELECT_SLOTS_ASC, "SeekGE")] {
            let mut explain = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
            let opcodes: Vec<String> = explain
                .query_map(params!["issuer", b"serial".as_slice()], |row| row.get(1))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(opcodes.iter().any(|op| op == seek), "{sql}: {opcodes:?}");
            for temporary in ["OpenEphemeral", "SorterOpen", "OpenAutoindex"] {
                assert!(
                    !opcodes.iter().any(|op| op == temporary),
                    "{sql}: {opcodes:?}"
                );
            }
        }
    }

    /// The pre-signer's writes (per response an INSERT or UPDATE, per certificate the mark) build
    /// no temporary B-tree either: a CHECK with an `IN` list of three values made every INSERT
    /// open, fill and free one (schema 3), and an upsert searched the key twice.
    #[test]
    fn the_writes_build_no_temporary_b_tree() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("s.sqlite")).unwrap();
        let conn = store.inner.checkout().unwrap();
        for sql in [INSERT_RESPONSE, UPDATE_RESPONSE, MARK_PUBLISHED] {
            let mut explain = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
            // Unbound parameters are NULL: enough for the plan.
            let mut rows = explain.raw_query();
            let mut opcodes: Vec<String> = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                opcodes.push(row.get(1).unwrap());
            }
            assert!(
                opcodes.iter().any(|op| op == "Insert" || op == "IdxInsert"),
                "{sql}: {opcodes:?}"
            );
            for temporary in ["OpenEphemeral", "SorterOpen", "OpenAutoindex"] {
                assert!(
                    !opcodes.iter().any(|op| op == temporary),
                    "{sql}: {opcodes:?}"
                );
            }
        }
    }

    /// Which row each lookup takes, for every set of stored slots, against the rule written
    /// out: a request's own hash, else the old layout; `get` in [`Slot::PREFERRED`]'s order.
    /// Rows are written directly (no `may_store`), each with its slot's code as its thisUpdate
    /// so that the answer names the row.
    #[test]
    fn every_set_of_stored_slots_answers_as_the_rule_says() {
        const SLOTS: [Slot; 3] = [
            Slot::Legacy,
            Slot::Hash(HashAlg::Sha1),
            Slot::Hash(HashAlg::Sha256),
        ];
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("s.sqlite")).unwrap();
        let conn = store.inner.writer.lock().unwrap();
        let issuer = IssuerName("ca".into());
        for set in 0u8..8 {
            let serial = Serial::from_be_bytes(&[set + 1]);
            let stored: Vec<Slot> = (0..3)
                .filter(|i| set & (1 << i) != 0)
                .map(|i| SLOTS[i])
                .collect();
            for slot in &stored {
                conn.execute(
                    "INSERT INTO responses VALUES (?1, ?2, ?3, 0, NULL, NULL, ?3, 99, X'3000')",
                    params![issuer.0, serial.as_bytes(), slot.code()],
                )
                .unwrap();
            }
            let answered = |hash| {
                select_response(&conn, &issuer, &serial, hash)
                    .unwrap()
                    .map(|r| r.this_update)
            };
            for hash in [HashAlg::Sha1, HashAlg::Sha256] {
                let expected = [Slot::Hash(hash), Slot::Legacy]
                    .into_iter()
                    .find(|s| stored.contains(s))
                    .map(Slot::code);
                assert_eq!(answered(Some(hash)), expected, "{stored:?}, {hash:?}");
            }
            let expected = Slot::PREFERRED
                .into_iter()
                .find(|s| stored.contains(s))
                .map(Slot::code);
            assert_eq!(answered(None), expected, "{stored:?}, any");
        }
    }
}
