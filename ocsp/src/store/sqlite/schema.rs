//! Opening the file: the connection settings (WAL, `synchronous=FULL`, busy timeout, caches, a
//! new file's page size), the schema this code writes and the migrations from older files. Run
//! once per connection (settings) and once per open (schema), never on the serving path.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior};

use super::{SqliteOptions, db};
use crate::error::Error;

/// The schema version this code writes (`PRAGMA user_version`). 2: responses per CertID hash.
/// 3: CRLs — the worklist row carries its CRL shard and notAfter; shards, pending shards and
/// shard counts have their tables. 4: the `cert_id_hash` CHECK as a range
/// ([`migrate_3_to_4`]).
const SCHEMA_VERSION: i64 = 4;

/// The `responses` CHECK on `cert_id_hash` up to schema 3, and from 4. SQLite compiles an `IN`
/// list of three or more values into a temporary B-tree that every INSERT into the table opened,
/// filled and closed (~6 % of the pre-signer's CPU, perf, bench/RESULTS.md, issue 16); a range
/// is two comparisons. The same values pass: the column is a STRICT INTEGER.
const HASH_CHECK_V3: &str = "CHECK (cert_id_hash IN (0, 1, 2))";
const HASH_CHECK: &str = "CHECK (cert_id_hash BETWEEN 0 AND 2)";

/// The page size of a new file. SQLite's default of 4 KiB holds about eight responses per leaf;
/// with 16 KiB pages the pre-signer's writes split fewer pages, its commits write fewer (larger)
/// WAL frames, one `write` each, and its key searches descend fewer levels. Measured with
/// larger transactions: 0.82 x the CPU per response on a first publication and 0.79 x on a
/// refresh (`ocsp/benches/presign.rs`; bench/RESULTS.md, issue 16). 32 and 64 KiB saved a
/// little more but make each randomly placed row (a revocation) rewrite that much WAL. The
/// pragma has no effect on a file that already has tables: such a file keeps its page size
/// until an operator converts it with `VACUUM` (README, "Stores").
const NEW_FILE_PAGE_SIZE: i64 = 16 * 1024;

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
    cert_id_hash INTEGER NOT NULL CHECK (cert_id_hash BETWEEN 0 AND 2),
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
        // Before WAL mode writes the first header; a no-op on a file that has tables.
        conn.pragma_update(None, "page_size", NEW_FILE_PAGE_SIZE)
            .map_err(db)?;
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
    if (1..=2).contains(&version) && has_table(&tx, "certificates")? {
        tx.execute_batch(MIGRATE_2_TO_3).map_err(db)?;
    }
    // Nor responses (a worklist written before any was signed).
    if (1..=3).contains(&version) && has_table(&tx, "responses")? {
        migrate_3_to_4(&tx)?;
    }
    tx.execute_batch(SCHEMA).map_err(db)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(db)?;
    tx.commit().map_err(db)
}

fn has_table(tx: &Transaction<'_>, name: &str) -> Result<bool, Error> {
    tx.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |row| row.get(0),
    )
    .map_err(db)
}

/// Version 3 to 4: the `cert_id_hash` CHECK becomes [`HASH_CHECK`], in place. Rebuilding the
/// table would copy every response (hundreds of millions in a CA's file) while the store is
/// closed to writers; this is SQLite's own procedure for a schema change that leaves the stored
/// data valid ("Making Other Kinds Of Table Schema Changes", ALTER TABLE documentation): edit the
/// table's text in `sqlite_schema`, bump `schema_version` so that every connection re-reads it,
/// all in the caller's transaction. A table whose text does not hold [`HASH_CHECK_V3`] exactly
/// (edited by hand) is left as it is. The new text is parsed before the commit: a statement on
/// the table is prepared, and an error rolls the whole change back.
fn migrate_3_to_4(tx: &Transaction<'_>) -> Result<(), Error> {
    let schema_version: i64 = tx
        .pragma_query_value(None, "schema_version", |row| row.get(0))
        .map_err(db)?;
    tx.pragma_update(None, "writable_schema", true)
        .map_err(db)?;
    let edited = tx
        .execute(
            "UPDATE sqlite_schema SET sql = replace(sql, ?1, ?2)
             WHERE type = 'table' AND name = 'responses' AND instr(sql, ?1) > 0",
            [HASH_CHECK_V3, HASH_CHECK],
        )
        .map_err(db)?;
    if edited > 0 {
        tx.pragma_update(None, "schema_version", schema_version + 1)
            .map_err(db)?;
    }
    tx.pragma_update(None, "writable_schema", false)
        .map_err(db)?;
    tx.prepare("SELECT cert_id_hash FROM responses LIMIT 0")
        .map_err(db)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// New files get the CHECK the migration writes into old ones, and the text the migration
    /// looks for is the one older releases wrote.
    #[test]
    fn new_and_migrated_files_have_the_same_hash_check() {
        assert!(SCHEMA.contains(HASH_CHECK));
        assert!(!SCHEMA.contains(HASH_CHECK_V3));
        assert!(MIGRATE_1_TO_2.contains(HASH_CHECK_V3));
    }
}
