//! The embedded backend: one SQLite file in WAL mode, `synchronous=FULL` (a record is on disk
//! before the client hears of it). Calls run on tokio's blocking pool.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Begun, Db, Issuance, MIGRATIONS, all_valid, from_json, sql, to_json};
use crate::Error;
use crate::model::{Account, Authorization, CertificateRecord, Order, OrderStatus, Revocation};

const DB: &str = "sqlite";

fn db_err(e: impl std::fmt::Display) -> Error {
    Error::Db {
        db: DB,
        detail: e.to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct SqliteDb {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteDb {
    pub async fn open(path: &Path) -> Result<Self, Error> {
        let path = path.to_owned();
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, Error> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(db_err)?;
            }
            let conn = Connection::open(&path).map_err(db_err)?;
            let busy_timeout = std::time::Duration::from_secs(5);
            conn.busy_timeout(busy_timeout).map_err(db_err)?;
            ocsp::store::enable_wal(&conn, &path, busy_timeout)?;
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(db_err)?;
            migrate(&conn)?;
            Ok(conn)
        })
        .await
        .map_err(db_err)??;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn run<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| db_err("connection lock poisoned"))?;
            f(&mut conn)
        })
        .await
        .map_err(db_err)?
    }

    async fn body<T>(&self, query: &'static str, key: String) -> Result<Option<T>, Error>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        self.run(move |c| {
            let text: Option<String> = c
                .prepare_cached(query)
                .map_err(db_err)?
                .query_row(params![key], |r| r.get(0))
                .optional()
                .map_err(db_err)?;
            text.map(|t| from_json(DB, &t)).transpose()
        })
        .await
    }

    async fn count(
        &self,
        query: &'static str,
        key: Option<String>,
        since: i64,
        at_most: u64,
    ) -> Result<u64, Error> {
        let at_most = i64::try_from(at_most).unwrap_or(i64::MAX);
        self.run(move |c| {
            let mut stmt = c.prepare_cached(query).map_err(db_err)?;
            let n: i64 = match key {
                Some(k) => stmt.query_row(params![k, since, at_most], |r| r.get(0)),
                None => stmt.query_row(params![since, at_most], |r| r.get(0)),
            }
            .map_err(db_err)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }
}

fn migrate(conn: &Connection) -> Result<(), Error> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        .map_err(db_err)?;
    let done: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    for (i, migration) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(done).unwrap_or(0))
    {
        conn.execute_batch(&format!(
            "BEGIN; {migration}; INSERT INTO schema_version (version) VALUES ({}); COMMIT;",
            i + 1
        ))
        .map_err(db_err)?;
    }
    Ok(())
}

/// The certificate `serial`, read inside a transaction that may then save it.
fn certificate_in(c: &Connection, serial: &str) -> Result<Option<CertificateRecord>, Error> {
    let text: Option<String> = c
        .prepare_cached(sql::CERTIFICATE)
        .map_err(db_err)?
        .query_row(params![serial], |r| r.get(0))
        .optional()
        .map_err(db_err)?;
    text.map(|t| from_json(DB, &t)).transpose()
}

/// Saves a certificate record read with [`certificate_in`].
fn save_certificate(c: &Connection, record: &CertificateRecord) -> Result<(), Error> {
    c.prepare_cached(sql::UPDATE_CERTIFICATE)
        .map_err(db_err)?
        .execute(params![to_json(record)?, record.serial])
        .map_err(db_err)?;
    Ok(())
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

#[async_trait]
impl Db for SqliteDb {
    fn kind(&self) -> &'static str {
        DB
    }

    async fn insert_account(&self, account: &Account) -> Result<Result<(), Account>, Error> {
        let body = to_json(account)?;
        let a = account.clone();
        self.run(move |c| {
            match c
                .prepare_cached(sql::INSERT_ACCOUNT)
                .map_err(db_err)?
                .execute(params![a.id, a.thumbprint, a.created, body])
            {
                Ok(_) => Ok(Ok(())),
                Err(e) if is_unique_violation(&e) => {
                    let text: String = c
                        .prepare_cached(sql::ACCOUNT_BY_THUMBPRINT)
                        .map_err(db_err)?
                        .query_row(params![a.thumbprint], |r| r.get(0))
                        .map_err(db_err)?;
                    Ok(Err(from_json(DB, &text)?))
                }
                Err(e) => Err(db_err(e)),
            }
        })
        .await
    }

    async fn account(&self, id: &str) -> Result<Option<Account>, Error> {
        self.body(sql::ACCOUNT, id.to_owned()).await
    }

    async fn account_by_thumbprint(&self, thumbprint: &str) -> Result<Option<Account>, Error> {
        self.body(sql::ACCOUNT_BY_THUMBPRINT, thumbprint.to_owned())
            .await
    }

    async fn update_account(&self, account: &Account) -> Result<bool, Error> {
        let body = to_json(account)?;
        let a = account.clone();
        self.run(move |c| {
            match c
                .prepare_cached(sql::UPDATE_ACCOUNT)
                .map_err(db_err)?
                .execute(params![a.thumbprint, body, a.id])
            {
                Ok(_) => Ok(true),
                Err(e) if is_unique_violation(&e) => Ok(false),
                Err(e) => Err(db_err(e)),
            }
        })
        .await
    }

    async fn accounts_since(&self, since: i64, at_most: u64) -> Result<u64, Error> {
        self.count(sql::COUNT_ACCOUNTS, None, since, at_most).await
    }

    async fn insert_order(&self, order: &Order, authzs: &[Authorization]) -> Result<(), Error> {
        let body = to_json(order)?;
        let authzs = authzs
            .iter()
            .map(|a| Ok((a.id.clone(), to_json(a)?)))
            .collect::<Result<Vec<_>, Error>>()?;
        let o = order.clone();
        self.run(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            tx.prepare_cached(sql::INSERT_ORDER)
                .map_err(db_err)?
                .execute(params![
                    o.id,
                    o.account_id,
                    o.status.as_str(),
                    o.created,
                    body
                ])
                .map_err(db_err)?;
            for (id, body) in authzs {
                tx.prepare_cached(sql::INSERT_AUTHZ)
                    .map_err(db_err)?
                    .execute(params![id, o.id, body])
                    .map_err(db_err)?;
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn order(&self, id: &str) -> Result<Option<Order>, Error> {
        self.body(sql::ORDER, id.to_owned()).await
    }

    async fn orders_of_account(&self, account_id: &str) -> Result<Vec<String>, Error> {
        let account_id = account_id.to_owned();
        self.run(move |c| {
            let mut stmt = c.prepare_cached(sql::ORDERS_OF_ACCOUNT).map_err(db_err)?;
            let rows = stmt
                .query_map(params![account_id], |r| r.get::<_, String>(0))
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    async fn orders_since(&self, account_id: &str, since: i64, at_most: u64) -> Result<u64, Error> {
        self.count(
            sql::COUNT_ORDERS,
            Some(account_id.to_owned()),
            since,
            at_most,
        )
        .await
    }

    async fn update_order(
        &self,
        order: &Order,
        expected: Option<OrderStatus>,
    ) -> Result<bool, Error> {
        let body = to_json(order)?;
        let o = order.clone();
        self.run(move |c| {
            let n = match expected {
                Some(old) => c
                    .prepare_cached(sql::UPDATE_ORDER_IF)
                    .map_err(db_err)?
                    .execute(params![o.status.as_str(), body, o.id, old.as_str()]),
                None => c
                    .prepare_cached(sql::UPDATE_ORDER)
                    .map_err(db_err)?
                    .execute(params![o.status.as_str(), body, o.id]),
            }
            .map_err(db_err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn authz(&self, id: &str) -> Result<Option<Authorization>, Error> {
        self.body(sql::AUTHZ, id.to_owned()).await
    }

    async fn update_authz(&self, authz: &Authorization) -> Result<(), Error> {
        let body = to_json(authz)?;
        let id = authz.id.clone();
        self.run(move |c| {
            c.prepare_cached(sql::UPDATE_AUTHZ)
                .map_err(db_err)?
                .execute(params![body, id])
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn update_authz_if(
        &self,
        authz: &Authorization,
        read: &Authorization,
    ) -> Result<bool, Error> {
        let (body, old) = (to_json(authz)?, to_json(read)?);
        let id = authz.id.clone();
        self.run(move |c| {
            let n = c
                .prepare_cached(sql::UPDATE_AUTHZ_IF)
                .map_err(db_err)?
                .execute(params![body, id, old])
                .map_err(db_err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn begin_issuance(&self, issuance: &Issuance) -> Result<Begun, Error> {
        let i = issuance.clone();
        let body = to_json(&i.order)?;
        let cap = i64::try_from(i.limit).unwrap_or(i64::MAX);
        self.run(move |c| {
            // IMMEDIATE: the write lock is taken first, so the counts below cannot be
            // overtaken by another connection's reservation (another process on the file).
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let moved = tx
                .prepare_cached(sql::UPDATE_ORDER_IF)
                .map_err(db_err)?
                .execute(params![
                    i.order.status.as_str(),
                    body,
                    i.order.id,
                    i.expected.as_str()
                ])
                .map_err(db_err)?;
            if moved != 1 {
                return Ok(Begun::NotReady);
            }
            let mut bodies = Vec::with_capacity(i.order.authz_ids.len());
            for id in &i.order.authz_ids {
                let text: Option<String> = tx
                    .prepare_cached(sql::AUTHZ)
                    .map_err(db_err)?
                    .query_row(params![id], |r| r.get(0))
                    .optional()
                    .map_err(db_err)?;
                let Some(text) = text else {
                    return Ok(Begun::NotReady);
                };
                bodies.push(text);
            }
            if !all_valid(DB, &bodies, i.issued)? {
                return Ok(Begun::NotReady);
            }
            for domain in &i.counted {
                let n: i64 = tx
                    .prepare_cached(sql::COUNT_DOMAIN)
                    .map_err(db_err)?
                    .query_row(params![domain, i.since, cap], |r| r.get(0))
                    .map_err(db_err)?;
                if n >= cap {
                    return Ok(Begun::Limited(domain.clone()));
                }
            }
            if let Some(serial) = &i.replaces
                && let Some(mut record) = certificate_in(&tx, serial)?
            {
                match &record.replaced_by {
                    Some(by) if *by != i.order.id => return Ok(Begun::AlreadyReplaced(by.clone())),
                    Some(_) => {}
                    None => {
                        record.replaced_by = Some(i.order.id.clone());
                        save_certificate(&tx, &record)?;
                    }
                }
            }
            for domain in &i.domains {
                tx.prepare_cached(sql::INSERT_ISSUED_DOMAIN)
                    .map_err(db_err)?
                    .execute(params![domain, i.issued, i.serial])
                    .map_err(db_err)?;
            }
            tx.commit().map_err(db_err)?;
            Ok(Begun::Started)
        })
        .await
    }

    async fn abandon_issuance(
        &self,
        order: &Order,
        serial: &str,
        replaces: Option<&str>,
    ) -> Result<bool, Error> {
        let body = to_json(order)?;
        let o = order.clone();
        let serial = serial.to_owned();
        let replaces = replaces.map(str::to_owned);
        self.run(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let recorded = tx
                .prepare_cached(sql::CERTIFICATE_EXISTS)
                .map_err(db_err)?
                .exists(params![serial])
                .map_err(db_err)?;
            if recorded {
                return Ok(false);
            }
            tx.prepare_cached(sql::DELETE_ISSUED_DOMAINS)
                .map_err(db_err)?
                .execute(params![serial])
                .map_err(db_err)?;
            if let Some(replaced) = replaces
                && let Some(mut record) = certificate_in(&tx, &replaced)?
                && record.replaced_by.as_deref() == Some(o.id.as_str())
            {
                record.replaced_by = None;
                save_certificate(&tx, &record)?;
            }
            tx.prepare_cached(sql::UPDATE_ORDER_IF)
                .map_err(db_err)?
                .execute(params![
                    o.status.as_str(),
                    body,
                    o.id,
                    OrderStatus::Processing.as_str()
                ])
                .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    async fn processing_orders(&self, limit: u32) -> Result<Vec<Order>, Error> {
        self.run(move |c| {
            let mut stmt = c.prepare_cached(sql::PROCESSING_ORDERS).map_err(db_err)?;
            let rows = stmt
                .query_map(params![limit], |r| r.get::<_, String>(0))
                .map_err(db_err)?;
            rows.map(|row| from_json(DB, &row.map_err(db_err)?))
                .collect()
        })
        .await
    }

    async fn reserved_at(&self, serial: &str) -> Result<Option<i64>, Error> {
        let serial = serial.to_owned();
        self.run(move |c| {
            c.prepare_cached(sql::RESERVED_AT)
                .map_err(db_err)?
                .query_row(params![serial], |r| r.get::<_, Option<i64>>(0))
                .map_err(db_err)
        })
        .await
    }

    async fn insert_certificate(
        &self,
        cert: &CertificateRecord,
        domains: &[String],
        ocsp_pending: i64,
    ) -> Result<(), Error> {
        let body = to_json(cert)?;
        let cert = cert.clone();
        let domains = domains.to_vec();
        self.run(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            tx.prepare_cached(sql::INSERT_CERTIFICATE)
                .map_err(db_err)?
                .execute(params![
                    cert.serial,
                    cert.account_id,
                    cert.issued,
                    cert.spki_sha256,
                    body,
                    ocsp_pending
                ])
                .map_err(db_err)?;
            for d in domains {
                tx.prepare_cached(sql::INSERT_ISSUED_DOMAIN)
                    .map_err(db_err)?
                    .execute(params![d, cert.issued, cert.serial])
                    .map_err(db_err)?;
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, Error> {
        self.body(sql::CERTIFICATE, serial.to_owned()).await
    }

    async fn revoke(
        &self,
        serial: &str,
        revocation: Revocation,
        ocsp_pending: i64,
    ) -> Result<Option<(Revocation, bool)>, Error> {
        let serial = serial.to_owned();
        self.run(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            let Some(mut record) = certificate_in(&tx, &serial)? else {
                return Ok(None);
            };
            if let Some(existing) = record.revoked {
                return Ok(Some((existing, false)));
            }
            record.revoked = Some(revocation);
            tx.prepare_cached(sql::REVOKE_CERTIFICATE)
                .map_err(db_err)?
                .execute(params![to_json(&record)?, ocsp_pending, serial])
                .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(Some((revocation, true)))
        })
        .await
    }

    async fn mark_replaced(&self, serial: &str, by_order: &str) -> Result<bool, Error> {
        let (serial, by_order) = (serial.to_owned(), by_order.to_owned());
        self.run(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            let Some(mut record) = certificate_in(&tx, &serial)? else {
                return Ok(false);
            };
            if record.replaced_by.is_some() {
                return Ok(false);
            }
            record.replaced_by = Some(by_order);
            save_certificate(&tx, &record)?;
            tx.commit().map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    async fn mark_renew_now(&self, serials: &[String]) -> Result<usize, Error> {
        let serials = serials.to_vec();
        self.run(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            let mut marked = 0;
            for serial in serials {
                let Some(mut record) = certificate_in(&tx, &serial)? else {
                    continue;
                };
                record.renew_now = true;
                save_certificate(&tx, &record)?;
                marked += 1;
            }
            tx.commit().map_err(db_err)?;
            Ok(marked)
        })
        .await
    }

    async fn ocsp_published(
        &self,
        serial: &str,
        ocsp_pending: Option<i64>,
        order: Option<&Order>,
    ) -> Result<(), Error> {
        let serial = serial.to_owned();
        let order = order
            .map(|o| Ok::<_, Error>((o.clone(), to_json(o)?)))
            .transpose()?;
        self.run(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            if let Some((o, body)) = order {
                tx.prepare_cached(sql::UPDATE_ORDER_IF)
                    .map_err(db_err)?
                    .execute(params![
                        o.status.as_str(),
                        body,
                        o.id,
                        OrderStatus::Processing.as_str()
                    ])
                    .map_err(db_err)?;
            }
            match ocsp_pending {
                Some(mark) => tx
                    .prepare_cached(sql::OCSP_PUBLISHED)
                    .map_err(db_err)?
                    .execute(params![serial, mark]),
                None => tx
                    .prepare_cached(sql::OCSP_PUBLISHED_ANY)
                    .map_err(db_err)?
                    .execute(params![serial]),
            }
            .map_err(db_err)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn ocsp_pending(
        &self,
        before: i64,
        limit: u32,
    ) -> Result<Vec<(CertificateRecord, i64)>, Error> {
        self.run(move |c| {
            let mut stmt = c.prepare_cached(sql::OCSP_PENDING).map_err(db_err)?;
            let rows = stmt
                .query_map(params![before, limit], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })
                .map_err(db_err)?;
            rows.map(|row| {
                let (body, mark) = row.map_err(db_err)?;
                Ok((from_json(DB, &body)?, mark))
            })
            .collect()
        })
        .await
    }

    async fn certificates_since(
        &self,
        domain: &str,
        since: i64,
        at_most: u64,
    ) -> Result<u64, Error> {
        self.count(sql::COUNT_DOMAIN, Some(domain.to_owned()), since, at_most)
            .await
    }
}
