//! The shared backend: PostgreSQL, for several frontends over one database. Uniqueness of
//! account keys and the compare-and-set on an order's status are the database's, so two
//! frontends cannot create two accounts for one key or finalize one order twice. A lost
//! connection is re-opened on the next call.

use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls, error::SqlState};

use super::{Begun, Db, Issuance, MIGRATIONS, all_valid, from_json, sql, to_json};
use crate::Error;
use crate::model::{Account, Authorization, CertificateRecord, Order, OrderStatus, Revocation};

const DB: &str = "postgres";

fn db_err(e: impl std::fmt::Display) -> Error {
    Error::Db {
        db: DB,
        detail: e.to_string(),
    }
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

const CERTIFICATE_FOR_UPDATE: &str = "SELECT body FROM certificates WHERE serial = $1 FOR UPDATE";
/// An authorization read where a finalization starts: a deactivation waits for it to end.
const AUTHZ_FOR_SHARE: &str = "SELECT body FROM authzs WHERE id = $1 FOR SHARE";
/// Serializes the count and reservation of one registered domain's certificates across
/// connections and frontends, until the transaction ends (a row lock cannot: the rows that
/// would be counted do not exist yet).
const LOCK_DOMAIN: &str = "SELECT pg_advisory_xact_lock(hashtext('hsmgate issued_domains ' || $1))";

#[derive(Debug)]
pub struct PostgresDb {
    url: String,
    client: Mutex<Client>,
}

async fn connect(url: &str) -> Result<Client, Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(db_err)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

impl PostgresDb {
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let mut client = connect(url).await?;
        migrate(&mut client).await?;
        Ok(Self {
            url: url.to_owned(),
            client: Mutex::new(client),
        })
    }

    /// The connection, re-opened if it was lost.
    async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Client>, Error> {
        let mut guard = self.client.lock().await;
        if guard.is_closed() {
            *guard = connect(&self.url).await?;
        }
        Ok(guard)
    }

    async fn body<T: serde::de::DeserializeOwned>(
        &self,
        query: &str,
        key: &str,
    ) -> Result<Option<T>, Error> {
        let client = self.client().await?;
        let row = client.query_opt(query, &[&key]).await.map_err(db_err)?;
        row.map(|r| from_json(DB, &r.get::<_, String>(0)))
            .transpose()
    }

    async fn count(
        &self,
        query: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, Error> {
        let client = self.client().await?;
        let row = client.query_one(query, params).await.map_err(db_err)?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }
}

/// The certificate `serial`, locked until `tx` ends.
async fn certificate_for_update(
    tx: &tokio_postgres::Transaction<'_>,
    serial: &str,
) -> Result<Option<CertificateRecord>, Error> {
    let row = tx
        .query_opt(CERTIFICATE_FOR_UPDATE, &[&serial])
        .await
        .map_err(db_err)?;
    row.map(|r| from_json(DB, &r.get::<_, String>(0)))
        .transpose()
}

/// Saves a certificate record read with [`certificate_for_update`].
async fn save_certificate(
    tx: &tokio_postgres::Transaction<'_>,
    record: &CertificateRecord,
) -> Result<(), Error> {
    tx.execute(
        sql::UPDATE_CERTIFICATE,
        &[&to_json(record)?, &record.serial],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

/// A count's cap as SQL's BIGINT.
fn cap(at_most: u64) -> i64 {
    i64::try_from(at_most).unwrap_or(i64::MAX)
}

async fn migrate(client: &mut Client) -> Result<(), Error> {
    // One frontend migrates at a time: an advisory lock held by the migrating transaction.
    let tx = client.transaction().await.map_err(db_err)?;
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(7461636);
         CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)",
    )
    .await
    .map_err(db_err)?;
    let done: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
        .await
        .map_err(db_err)?
        .get(0);
    for (i, migration) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(done).unwrap_or(0))
    {
        tx.batch_execute(migration).await.map_err(db_err)?;
        let version = i64::try_from(i + 1).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)
}

#[async_trait]
impl Db for PostgresDb {
    fn kind(&self) -> &'static str {
        DB
    }

    async fn insert_account(&self, a: &Account) -> Result<Result<(), Account>, Error> {
        let body = to_json(a)?;
        let client = self.client().await?;
        match client
            .execute(
                sql::INSERT_ACCOUNT,
                &[&a.id, &a.thumbprint, &a.created, &body],
            )
            .await
        {
            Ok(_) => Ok(Ok(())),
            Err(e) if is_unique_violation(&e) => {
                let row = client
                    .query_one(sql::ACCOUNT_BY_THUMBPRINT, &[&a.thumbprint])
                    .await
                    .map_err(db_err)?;
                Ok(Err(from_json(DB, &row.get::<_, String>(0))?))
            }
            Err(e) => Err(db_err(e)),
        }
    }

    async fn account(&self, id: &str) -> Result<Option<Account>, Error> {
        self.body(sql::ACCOUNT, id).await
    }

    async fn account_by_thumbprint(&self, thumbprint: &str) -> Result<Option<Account>, Error> {
        self.body(sql::ACCOUNT_BY_THUMBPRINT, thumbprint).await
    }

    async fn update_account(&self, a: &Account) -> Result<bool, Error> {
        let body = to_json(a)?;
        let client = self.client().await?;
        match client
            .execute(sql::UPDATE_ACCOUNT, &[&a.thumbprint, &body, &a.id])
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(db_err(e)),
        }
    }

    async fn accounts_since(&self, since: i64, at_most: u64) -> Result<u64, Error> {
        self.count(sql::COUNT_ACCOUNTS, &[&since, &cap(at_most)])
            .await
    }

    async fn insert_order(&self, o: &Order, authzs: &[Authorization]) -> Result<(), Error> {
        let body = to_json(o)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        tx.execute(
            sql::INSERT_ORDER,
            &[&o.id, &o.account_id, &o.status.as_str(), &o.created, &body],
        )
        .await
        .map_err(db_err)?;
        for a in authzs {
            tx.execute(sql::INSERT_AUTHZ, &[&a.id, &o.id, &to_json(a)?])
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn order(&self, id: &str) -> Result<Option<Order>, Error> {
        self.body(sql::ORDER, id).await
    }

    async fn orders_of_account(&self, account_id: &str) -> Result<Vec<String>, Error> {
        let client = self.client().await?;
        let rows = client
            .query(sql::ORDERS_OF_ACCOUNT, &[&account_id])
            .await
            .map_err(db_err)?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }

    async fn orders_since(&self, account_id: &str, since: i64, at_most: u64) -> Result<u64, Error> {
        self.count(sql::COUNT_ORDERS, &[&account_id, &since, &cap(at_most)])
            .await
    }

    async fn update_order(&self, o: &Order, expected: Option<OrderStatus>) -> Result<bool, Error> {
        let body = to_json(o)?;
        let client = self.client().await?;
        let n = match expected {
            Some(old) => {
                client
                    .execute(
                        sql::UPDATE_ORDER_IF,
                        &[&o.status.as_str(), &body, &o.id, &old.as_str()],
                    )
                    .await
            }
            None => {
                client
                    .execute(sql::UPDATE_ORDER, &[&o.status.as_str(), &body, &o.id])
                    .await
            }
        }
        .map_err(db_err)?;
        Ok(n == 1)
    }

    async fn authz(&self, id: &str) -> Result<Option<Authorization>, Error> {
        self.body(sql::AUTHZ, id).await
    }

    async fn update_authz(&self, a: &Authorization) -> Result<(), Error> {
        let body = to_json(a)?;
        let client = self.client().await?;
        client
            .execute(sql::UPDATE_AUTHZ, &[&body, &a.id])
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn update_authz_if(
        &self,
        a: &Authorization,
        read: &Authorization,
    ) -> Result<bool, Error> {
        let (body, old) = (to_json(a)?, to_json(read)?);
        let client = self.client().await?;
        let n = client
            .execute(sql::UPDATE_AUTHZ_IF, &[&body, &a.id, &old])
            .await
            .map_err(db_err)?;
        Ok(n == 1)
    }

    async fn begin_issuance(&self, i: &Issuance) -> Result<Begun, Error> {
        let body = to_json(&i.order)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        // Locks are taken in one order (order row, its authorizations, domains sorted, the
        // replaced certificate), so two finalizations cannot deadlock.
        let moved = tx
            .execute(
                sql::UPDATE_ORDER_IF,
                &[
                    &i.order.status.as_str(),
                    &body,
                    &i.order.id,
                    &i.expected.as_str(),
                ],
            )
            .await
            .map_err(db_err)?;
        if moved != 1 {
            return Ok(Begun::NotReady);
        }
        let mut bodies = Vec::with_capacity(i.order.authz_ids.len());
        for id in &i.order.authz_ids {
            let Some(row) = tx.query_opt(AUTHZ_FOR_SHARE, &[id]).await.map_err(db_err)? else {
                return Ok(Begun::NotReady);
            };
            bodies.push(row.get::<_, String>(0));
        }
        if !all_valid(DB, &bodies, i.issued)? {
            return Ok(Begun::NotReady);
        }
        let mut locked = i.domains.clone();
        locked.extend(i.counted.iter().cloned());
        locked.sort();
        locked.dedup();
        for domain in &locked {
            tx.execute(LOCK_DOMAIN, &[domain]).await.map_err(db_err)?;
        }
        // READ COMMITTED: each count below sees every reservation committed before its lock
        // was granted.
        for domain in &i.counted {
            let n: i64 = tx
                .query_one(sql::COUNT_DOMAIN, &[domain, &i.since, &cap(i.limit)])
                .await
                .map_err(db_err)?
                .get(0);
            if n >= cap(i.limit) {
                return Ok(Begun::Limited(domain.clone()));
            }
        }
        if let Some(serial) = &i.replaces
            && let Some(mut record) = certificate_for_update(&tx, serial).await?
        {
            match &record.replaced_by {
                Some(by) if *by != i.order.id => return Ok(Begun::AlreadyReplaced(by.clone())),
                Some(_) => {}
                None => {
                    record.replaced_by = Some(i.order.id.clone());
                    save_certificate(&tx, &record).await?;
                }
            }
        }
        for domain in &i.domains {
            tx.execute(sql::INSERT_ISSUED_DOMAIN, &[domain, &i.issued, &i.serial])
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(Begun::Started)
    }

    async fn abandon_issuance(
        &self,
        o: &Order,
        serial: &str,
        replaces: Option<&str>,
    ) -> Result<bool, Error> {
        let body = to_json(o)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        if tx
            .query_opt(sql::CERTIFICATE_EXISTS, &[&serial])
            .await
            .map_err(db_err)?
            .is_some()
        {
            return Ok(false);
        }
        tx.execute(sql::DELETE_ISSUED_DOMAINS, &[&serial])
            .await
            .map_err(db_err)?;
        if let Some(replaced) = replaces
            && let Some(mut record) = certificate_for_update(&tx, replaced).await?
            && record.replaced_by.as_deref() == Some(o.id.as_str())
        {
            record.replaced_by = None;
            save_certificate(&tx, &record).await?;
        }
        tx.execute(
            sql::UPDATE_ORDER_IF,
            &[
                &o.status.as_str(),
                &body,
                &o.id,
                &OrderStatus::Processing.as_str(),
            ],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    async fn processing_orders(&self, limit: u32) -> Result<Vec<Order>, Error> {
        let client = self.client().await?;
        let rows = client
            .query(sql::PROCESSING_ORDERS, &[&i64::from(limit)])
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| from_json(DB, &r.get::<_, String>(0)))
            .collect()
    }

    async fn reserved_at(&self, serial: &str) -> Result<Option<i64>, Error> {
        let client = self.client().await?;
        let row = client
            .query_one(sql::RESERVED_AT, &[&serial])
            .await
            .map_err(db_err)?;
        Ok(row.get::<_, Option<i64>>(0))
    }

    async fn insert_certificate(
        &self,
        cert: &CertificateRecord,
        domains: &[String],
        ocsp_pending: i64,
    ) -> Result<(), Error> {
        let body = to_json(cert)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        tx.execute(
            sql::INSERT_CERTIFICATE,
            &[
                &cert.serial,
                &cert.account_id,
                &cert.issued,
                &cert.spki_sha256,
                &body,
                &ocsp_pending,
            ],
        )
        .await
        .map_err(db_err)?;
        for d in domains {
            tx.execute(sql::INSERT_ISSUED_DOMAIN, &[d, &cert.issued, &cert.serial])
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, Error> {
        self.body(sql::CERTIFICATE, serial).await
    }

    async fn revoke(
        &self,
        serial: &str,
        revocation: Revocation,
        ocsp_pending: i64,
    ) -> Result<Option<(Revocation, bool)>, Error> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let Some(mut record) = certificate_for_update(&tx, serial).await? else {
            return Ok(None);
        };
        if let Some(existing) = record.revoked {
            return Ok(Some((existing, false)));
        }
        record.revoked = Some(revocation);
        tx.execute(
            sql::REVOKE_CERTIFICATE,
            &[&to_json(&record)?, &ocsp_pending, &serial],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some((revocation, true)))
    }

    async fn mark_replaced(&self, serial: &str, by_order: &str) -> Result<bool, Error> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let Some(mut record) = certificate_for_update(&tx, serial).await? else {
            return Ok(false);
        };
        if record.replaced_by.is_some() {
            return Ok(false);
        }
        record.replaced_by = Some(by_order.to_owned());
        save_certificate(&tx, &record).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    async fn mark_renew_now(&self, serials: &[String]) -> Result<usize, Error> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let mut marked = 0;
        for serial in serials {
            let Some(mut record) = certificate_for_update(&tx, serial).await? else {
                continue;
            };
            record.renew_now = true;
            save_certificate(&tx, &record).await?;
            marked += 1;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(marked)
    }

    async fn ocsp_published(
        &self,
        serial: &str,
        ocsp_pending: Option<i64>,
        order: Option<&Order>,
    ) -> Result<(), Error> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        if let Some(o) = order {
            tx.execute(
                sql::UPDATE_ORDER_IF,
                &[
                    &o.status.as_str(),
                    &to_json(o)?,
                    &o.id,
                    &OrderStatus::Processing.as_str(),
                ],
            )
            .await
            .map_err(db_err)?;
        }
        match ocsp_pending {
            Some(mark) => tx.execute(sql::OCSP_PUBLISHED, &[&serial, &mark]).await,
            None => tx.execute(sql::OCSP_PUBLISHED_ANY, &[&serial]).await,
        }
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn ocsp_pending(
        &self,
        before: i64,
        limit: u32,
    ) -> Result<Vec<(CertificateRecord, i64)>, Error> {
        let client = self.client().await?;
        let rows = client
            .query(sql::OCSP_PENDING, &[&before, &i64::from(limit)])
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| Ok((from_json(DB, &r.get::<_, String>(0))?, r.get::<_, i64>(1))))
            .collect()
    }

    async fn certificates_since(
        &self,
        domain: &str,
        since: i64,
        at_most: u64,
    ) -> Result<u64, Error> {
        self.count(sql::COUNT_DOMAIN, &[&domain, &since, &cap(at_most)])
            .await
    }
}
