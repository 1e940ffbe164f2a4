//! Opening the file: the connection settings (WAL, `synchronous=FULL`, busy timeout, caches),
//! the schema this code writes and the migrations from older files. Run once per connection
//! (settings) and once per open (schema), never on the serving path.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use super::{SqliteOptions, db};
use crate::error::Error;

/// The schema version this code writes (`PRAGMA user_version`). 2: responses per CertID hash.
/// 3: CRLs — the worklist row carries its CRL shard and notAfter; shards, pending shards and
/// shard counts have their tables.
const SCHEMA_VERSION: i64 = 3;

/// Version 2 to 3: the worklist gains `crl_shard` (filled in for revoked rows by the CRL
/// updater's backfill, [`SqliteStore::crl_backfill`]) and `not_after` (unknown: NULL, and the
/// entry stays in its CRL). The CRL tables themselves are in [`SCHEMA`].
const MIGRATE_2_TO_3: &str = "
ALTER TABLE certificates ADD COLUMN crl_shard INTEGER CHECK (crl_shard >= 0);
ALTER TABLE certificates ADD COLUMN not_after INTEGER;
";

/// Version 1 to 2: the responses table gains `cert_id_hash` in its key; the old rows, each a
/// response with a SingleResponse per hash, go to slot 0 ([`Slot::Legacy`]).
const MIGRATE_1_TO_2: &str = "
ALTER TABLE responses RENAME TO responses_v1;
CREATE TABLE responses (
    issuer       TEXT    NOT NULL,
    serial       BLOB    NOT NULL,
    cert_id_hash INTEGER NOT NULL CHECK (cert_id_hash IN (0, 1, 2)),
    status       INTEGER NOT NULL CHECK (status IN (0, 1)),
    revoked_at   INTEGER,
    reason       INTEGER CHECK (reason BETWEEN 0 AND 255),
    this_update  INTEGER NOT NULL,
    next_update  INTEGER NOT NULL,
    der          BLOB    NOT NULL,
    CHECK ((status = 1) = (revoked_at IS NOT NULL)),
    PRIMARY KEY (issuer, serial, cert_id_hash)
) STRICT, WITHOUT ROWID;
INSERT INTO responses
    SELECT issuer, serial, 0, status, revoked_at, reason, this_update, next_update, der
    FROM responses_v1;
DROP TABLE responses_v1;
";

// STRICT tables reject values of the wrong type; the CHECKs reject impossible statuses. Reads
// still validate every row (a file can be damaged, or written by other tools), returning
// `Error::Corrupt` rather than trusting it.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS responses (
    issuer       TEXT    NOT NULL,
    serial       BLOB    NOT NULL,
    cert_id_hash INTEGER NOT NULL CHECK (cert_id_hash IN (0, 1, 2)),
    status       INTEGER NOT NULL CHECK (status IN (0, 1)),
    revoked_at   INTEGER,
    reason       INTEGER CHECK (reason BETWEEN 0 AND 255),
    this_update  INTEGER NOT NULL,
    next_update  INTEGER NOT NULL,
    der          BLOB    NOT NULL,
    CHECK ((status = 1) = (revoked_at IS NOT NULL)),
    PRIMARY KEY (issuer, serial, cert_id_hash)
) STRICT, WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS certificates (
    issuer                TEXT    NOT NULL,
    serial                BLOB    NOT NULL,
    status                INTEGER NOT NULL CHECK (status IN (0, 1)),
    revoked_at            INTEGER,
    reason                INTEGER CHECK (reason BETWEEN 0 AND 255),
    responded_status      INTEGER CHECK (responded_status IN (0, 1)),
    responded_revoked_at  INTEGER,
    responded_this_update INTEGER,
    due_key               INTEGER NOT NULL,
    crl_shard             INTEGER CHECK (crl_shard >= 0),
    not_after             INTEGER,
    CHECK ((status = 1) = (revoked_at IS NOT NULL)),
    PRIMARY KEY (issuer, serial)
) STRICT, WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS certificates_due ON certificates (due_key);

-- A shard's entries: one range scan. NULL shards (rows recorded without a CRL configuration)
-- sort first, where the backfill finds them.
CREATE INDEX IF NOT EXISTS certificates_crl ON certificates (issuer, crl_shard, serial)
    WHERE status = 1;

-- Shards with a revocation not yet in a stored CRL: `since` the first such revocation was
-- recorded, `seq` bumped by each, so the updater clears only what its CRL included.
CREATE TABLE IF NOT EXISTS crl_pending (
    issuer TEXT    NOT NULL,
    shard  INTEGER NOT NULL CHECK (shard >= 0),
    since  INTEGER NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (issuer, shard)
) STRICT, WITHOUT ROWID;

-- Signed shards (when this file is the CRL store).
CREATE TABLE IF NOT EXISTS crl_shards (
    issuer      TEXT    NOT NULL,
    shard       INTEGER NOT NULL CHECK (shard >= 0),
    number      INTEGER NOT NULL CHECK (number >= 0),
    this_update INTEGER NOT NULL,
    next_update INTEGER NOT NULL,
    entries     INTEGER NOT NULL,
    der         BLOB    NOT NULL,
    PRIMARY KEY (issuer, shard)
) STRICT;

-- The shard count each issuer's certificates were assigned with: fixed once recorded.
CREATE TABLE IF NOT EXISTS crl_issuers (
    issuer TEXT    NOT NULL PRIMARY KEY,
    shards INTEGER NOT NULL CHECK (shards >= 1)
) STRICT;
";

pub(super) fn open_connection(
    path: &Path,
    options: &SqliteOptions,
    writer: bool,
) -> Result<Connection, Error> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if writer {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags).map_err(db)?;
    conn.busy_timeout(options.busy_timeout).map_err(db)?;
    if writer {
        enable_wal(&conn, path, options.busy_timeout)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        // A bulk import grows the WAL; without a limit the file keeps that size forever.
        conn.pragma_update(None, "journal_size_limit", 64i64 << 20)
            .map_err(db)?;
        // A negative cache_size is in KiB.
        conn.pragma_update(
            None,
            "cache_size",
            -((options.writer_cache_bytes / 1024) as i64),
        )
        .map_err(db)?;
        conn.pragma_update(None, "mmap_size", options.mmap_bytes as i64)
            .map_err(db)?;
    } else {
        // Read connections are opened read-write (a read-only one cannot create the WAL index
        // if it is the first to open the file after a crash) but refuse to write.
        conn.pragma_update(None, "query_only", true).map_err(db)?;
        conn.pragma_update(None, "mmap_size", options.mmap_bytes as i64)
            .map_err(db)?;
    }
    Ok(conn)
}

/// Puts the file of `conn` in WAL mode (it stays so), waiting up to `timeout` for other
/// openers. The ACME frontend's database uses it too.
pub fn enable_wal(conn: &Connection, path: &Path, timeout: Duration) -> Result<(), Error> {
    let mode: String = while_busy(timeout, || {
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
    })
    .map_err(db)?;
    if mode.eq_ignore_ascii_case("wal") {
        Ok(())
    } else {
        Err(Error::Store {
            store: "sqlite",
            detail: format!(
                "{}: could not enable WAL (journal_mode is {mode})",
                path.display()
            ),
        })
    }
}

/// Runs `step` again while SQLite answers busy, for up to `timeout`. Switching a file to WAL
/// needs an exclusive lock that SQLite takes without calling the busy handler, so when several
/// processes open a new file at once all but one fail at once, however long the busy timeout
/// (CI saw it: the responder, the pre-signer and the ACME frontend opening one store).
fn while_busy<T>(
    timeout: Duration,
    mut step: impl FnMut() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match step() {
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            result => return result,
        }
    }
}

pub(super) fn create_schema(conn: &mut Connection, path: &Path) -> Result<(), Error> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(db)?;
    if version > SCHEMA_VERSION {
        return Err(Error::Store {
            store: "sqlite",
            detail: format!(
                "{}: schema version {version} is newer than this program's ({SCHEMA_VERSION})",
                path.display()
            ),
        });
    }
    if version == 1 {
        tx.execute_batch(MIGRATE_1_TO_2).map_err(db)?;
    }
    // A file may have no worklist yet (a responder's replica): the CREATE below makes it.
    let has_worklist: bool = tx
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'certificates'",
            [],
            |row| row.get(0),
        )
        .map_err(db)?;
    if (1..=2).contains(&version) && has_worklist {
        tx.execute_batch(MIGRATE_2_TO_3).map_err(db)?;
    }
    tx.execute_batch(SCHEMA).map_err(db)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(db)?;
    tx.commit().map_err(db)
}
