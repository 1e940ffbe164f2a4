//! The CA's records: accounts, orders, authorizations, issued certificates, revocations.
//!
//! Two backends behind [`Db`]: embedded SQLite (the default, one frontend) and PostgreSQL
//! (several frontends sharing one database). Objects are stored as JSON next to the columns that
//! are queried or constrained (a key's thumbprint is unique; an order's status changes by
//! compare-and-set, so two finalizations of one order cannot both sign). Both backends run the
//! same SQL (positional `$n` parameters, which SQLite binds as named parameters in order of
//! appearance) and create their schema on open ([`MIGRATIONS`]).

mod postgres;
mod sqlite;

use async_trait::async_trait;

pub use postgres::PostgresDb;
pub use sqlite::SqliteDb;

use crate::Error;
use crate::model::{
    Account, Authorization, AuthzStatus, CertificateRecord, Order, OrderStatus, Revocation,
};

/// Schema migrations, applied in order; `schema_version` records how many ran.
pub const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS accounts (
        id TEXT PRIMARY KEY,
        thumbprint TEXT NOT NULL UNIQUE,
        created BIGINT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS orders (
        id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        status TEXT NOT NULL,
        created BIGINT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS orders_by_account ON orders (account_id, created);
    CREATE TABLE IF NOT EXISTS authzs (
        id TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS certificates (
        serial TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        issued BIGINT NOT NULL,
        spki_sha256 TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS issued_domains (
        domain TEXT NOT NULL,
        issued BIGINT NOT NULL,
        serial TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS issued_domains_by_domain ON issued_domains (domain, issued);",
    // The new-account limit counts accounts by creation time; without this it read them all.
    "CREATE INDEX IF NOT EXISTS accounts_by_created ON accounts (created);",
    // A certificate whose issuance or revocation is recorded but whose OCSP response is not
    // yet published carries a mark (see `Db::ocsp_pending`); only marked rows are indexed.
    "ALTER TABLE certificates ADD COLUMN ocsp_pending BIGINT;
    CREATE INDEX IF NOT EXISTS certificates_ocsp_pending ON certificates (ocsp_pending)
        WHERE ocsp_pending IS NOT NULL;",
    // A finalization reserves its domains' rows under the serial it will sign, and gives them
    // back by serial if it fails; the repair finds orders a crash left processing.
    "CREATE INDEX IF NOT EXISTS issued_domains_by_serial ON issued_domains (serial);
    CREATE INDEX IF NOT EXISTS orders_processing ON orders (id) WHERE status = 'processing';",
];

pub(crate) mod sql {
    pub const INSERT_ACCOUNT: &str =
        "INSERT INTO accounts (id, thumbprint, created, body) VALUES ($1, $2, $3, $4)";
    pub const ACCOUNT: &str = "SELECT body FROM accounts WHERE id = $1";
    pub const ACCOUNT_BY_THUMBPRINT: &str = "SELECT body FROM accounts WHERE thumbprint = $1";
    pub const UPDATE_ACCOUNT: &str = "UPDATE accounts SET thumbprint = $1, body = $2 WHERE id = $3";
    // The counts behind rate limits stop at the limit (the last parameter): the question is
    // only whether it is reached, and a busy domain or account must not make every request
    // read its whole window (the per-domain count was a sixth of the frontend's CPU at 190
    // orders/s, all for one registered domain).
    pub const COUNT_ACCOUNTS: &str =
        "SELECT COUNT(*) FROM (SELECT 1 FROM accounts WHERE created >= $1 LIMIT $2) AS capped";
    pub const INSERT_ORDER: &str =
        "INSERT INTO orders (id, account_id, status, created, body) VALUES ($1, $2, $3, $4, $5)";
    pub const INSERT_AUTHZ: &str = "INSERT INTO authzs (id, order_id, body) VALUES ($1, $2, $3)";
    pub const ORDER: &str = "SELECT body FROM orders WHERE id = $1";
    pub const ORDERS_OF_ACCOUNT: &str =
        "SELECT id FROM orders WHERE account_id = $1 ORDER BY created DESC LIMIT 1000";
    pub const COUNT_ORDERS: &str = "SELECT COUNT(*) FROM (SELECT 1 FROM orders WHERE account_id = $1 AND created >= $2 LIMIT $3) AS capped";
    pub const UPDATE_ORDER: &str = "UPDATE orders SET status = $1, body = $2 WHERE id = $3";
    pub const UPDATE_ORDER_IF: &str =
        "UPDATE orders SET status = $1, body = $2 WHERE id = $3 AND status = $4";
    pub const AUTHZ: &str = "SELECT body FROM authzs WHERE id = $1";
    pub const UPDATE_AUTHZ: &str = "UPDATE authzs SET body = $1 WHERE id = $2";
    // Compare-and-set on the whole record: saved only if nobody wrote it since it was read.
    pub const UPDATE_AUTHZ_IF: &str = "UPDATE authzs SET body = $1 WHERE id = $2 AND body = $3";
    pub const DELETE_ISSUED_DOMAINS: &str = "DELETE FROM issued_domains WHERE serial = $1";
    pub const CERTIFICATE_EXISTS: &str = "SELECT 1 FROM certificates WHERE serial = $1";
    pub const PROCESSING_ORDERS: &str =
        "SELECT body FROM orders WHERE status = 'processing' ORDER BY id LIMIT $1";
    pub const RESERVED_AT: &str = "SELECT MIN(issued) FROM issued_domains WHERE serial = $1";
    pub const INSERT_CERTIFICATE: &str = "INSERT INTO certificates (serial, account_id, issued, spki_sha256, body, ocsp_pending) VALUES ($1, $2, $3, $4, $5, $6)";
    pub const INSERT_ISSUED_DOMAIN: &str =
        "INSERT INTO issued_domains (domain, issued, serial) VALUES ($1, $2, $3)";
    pub const CERTIFICATE: &str = "SELECT body FROM certificates WHERE serial = $1";
    pub const UPDATE_CERTIFICATE: &str = "UPDATE certificates SET body = $1 WHERE serial = $2";
    pub const REVOKE_CERTIFICATE: &str =
        "UPDATE certificates SET body = $1, ocsp_pending = $2 WHERE serial = $3";
    pub const OCSP_PUBLISHED: &str =
        "UPDATE certificates SET ocsp_pending = NULL WHERE serial = $1 AND ocsp_pending = $2";
    pub const OCSP_PUBLISHED_ANY: &str =
        "UPDATE certificates SET ocsp_pending = NULL WHERE serial = $1";
    pub const OCSP_PENDING: &str = "SELECT body, ocsp_pending FROM certificates WHERE ocsp_pending IS NOT NULL AND ocsp_pending < $1 ORDER BY ocsp_pending LIMIT $2";
    // One row per certificate and registered domain (insert_certificate is given them
    // deduplicated), so rows are certificates and the index alone answers.
    pub const COUNT_DOMAIN: &str = "SELECT COUNT(*) FROM (SELECT 1 FROM issued_domains WHERE domain = $1 AND issued >= $2 LIMIT $3) AS capped";
}

/// What a finalization asks for before it signs: see [`Db::begin_issuance`].
#[derive(Debug, Clone)]
pub struct Issuance {
    /// The order as it is to be saved (processing), if its stored status is still `expected`.
    pub order: Order,
    pub expected: OrderStatus,
    /// The serial the certificate will carry: the domains' reservation rows are its.
    pub serial: String,
    /// The time the certificate counts from (its record's `issued`).
    pub issued: i64,
    /// Every registered domain the certificate names: a row each is reserved.
    pub domains: Vec<String>,
    /// Those of `domains` held to the weekly limit (a renewal's are not, see
    /// [`crate::ratelimit::counted_domains`]).
    pub counted: Vec<String>,
    /// Certificates for a counted domain since `since`, at most `limit` of them (this one
    /// included) are allowed.
    pub since: i64,
    pub limit: u64,
    /// The serial of the certificate the order replaces (ARI `replaces`, RFC 9773 §5).
    pub replaces: Option<String>,
}

/// How [`Db::begin_issuance`] ended; nothing was written unless it is `Started`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begun {
    Started,
    /// The order is not the one that was read (another finalization moved it), or one of its
    /// authorizations is no longer valid (deactivated, expired).
    NotReady,
    /// This registered domain has had its allowance of certificates this week.
    Limited(String),
    /// The replaced certificate was already replaced by this order.
    AlreadyReplaced(String),
}

/// The CA's record store. Every method is one transaction: it happened or it did not.
#[async_trait]
pub trait Db: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> &'static str;
    /// Records a new account; `Ok(Err(existing))` if its key already has one.
    async fn insert_account(&self, account: &Account) -> Result<Result<(), Account>, Error>;
    async fn account(&self, id: &str) -> Result<Option<Account>, Error>;
    async fn account_by_thumbprint(&self, thumbprint: &str) -> Result<Option<Account>, Error>;
    /// Saves an account (status, contact, or a rolled-over key); `Ok(false)` if the new key
    /// already belongs to another account.
    async fn update_account(&self, account: &Account) -> Result<bool, Error>;
    /// Accounts created since `since`, counted up to `at_most` (so at most that is returned).
    async fn accounts_since(&self, since: i64, at_most: u64) -> Result<u64, Error>;

    /// Records an order and its authorizations together.
    async fn insert_order(&self, order: &Order, authzs: &[Authorization]) -> Result<(), Error>;
    async fn order(&self, id: &str) -> Result<Option<Order>, Error>;
    async fn orders_of_account(&self, account_id: &str) -> Result<Vec<String>, Error>;
    /// The account's orders created since `since`, counted up to `at_most`.
    async fn orders_since(&self, account_id: &str, since: i64, at_most: u64) -> Result<u64, Error>;
    /// Saves `order`; with `expected`, only if the stored status is still that one (returns
    /// whether it was saved).
    async fn update_order(
        &self,
        order: &Order,
        expected: Option<OrderStatus>,
    ) -> Result<bool, Error>;
    async fn authz(&self, id: &str) -> Result<Option<Authorization>, Error>;
    async fn update_authz(&self, authz: &Authorization) -> Result<(), Error>;
    /// Saves `authz` only if the stored record is still exactly `read` (compare-and-set:
    /// a validation finishing must not undo a deactivation made while it ran); returns whether
    /// it was saved.
    async fn update_authz_if(
        &self,
        authz: &Authorization,
        read: &Authorization,
    ) -> Result<bool, Error>;

    /// Starts a finalization, one transaction: the order moves from `expected` to processing
    /// if all its authorizations are still valid at `issuance.issued`; each counted domain's
    /// certificates this week are counted and a row per domain reserved under the planned
    /// serial, the count and the reservation serialized per domain (so concurrent
    /// finalizations cannot together overshoot the limit); and the replaced certificate, if
    /// any, is marked replaced by this order unless another order already did.
    async fn begin_issuance(&self, issuance: &Issuance) -> Result<Begun, Error>;
    /// Undoes [`Db::begin_issuance`] after signing or recording failed, one transaction:
    /// unless a certificate `serial` was recorded after all (then nothing changes and this
    /// returns false), drops its reservation rows, clears the replaced certificate's mark if
    /// it is this order's, and saves `order` (invalid) if it is still processing.
    async fn abandon_issuance(
        &self,
        order: &Order,
        serial: &str,
        replaces: Option<&str>,
    ) -> Result<bool, Error>;

    /// Orders in processing (at most `limit`): finalizations in flight, or stopped by a crash.
    async fn processing_orders(&self, limit: u32) -> Result<Vec<Order>, Error>;
    /// When the domains were reserved under `serial` ([`Db::begin_issuance`]), if they are.
    async fn reserved_at(&self, serial: &str) -> Result<Option<i64>, Error>;

    /// Records an issued certificate and the registered domains it counts against (none when
    /// [`Db::begin_issuance`] reserved them), with the mark `ocsp_pending` until [`Db::ocsp_published`] clears it.
    async fn insert_certificate(
        &self,
        cert: &CertificateRecord,
        domains: &[String],
        ocsp_pending: i64,
    ) -> Result<(), Error>;
    async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, Error>;
    /// Marks a certificate revoked, and a new revocation with the mark `ocsp_pending`; returns
    /// the revocation now in force (the first one recorded: a revocation never changes) and
    /// whether it is new, or `None` if there is no such certificate.
    async fn revoke(
        &self,
        serial: &str,
        revocation: Revocation,
        ocsp_pending: i64,
    ) -> Result<Option<(Revocation, bool)>, Error>;
    /// The OCSP response for the certificate's recorded status is stored: clears the mark if
    /// it is still `ocsp_pending` (a revocation recorded since keeps its own; `None` clears any
    /// mark, right after a revocation, the final status, was published), and saves `order`
    /// (the issuing order, now valid) if it is still processing; one transaction.
    async fn ocsp_published(
        &self,
        serial: &str,
        ocsp_pending: Option<i64>,
        order: Option<&Order>,
    ) -> Result<(), Error>;
    /// Certificates marked before `before` and not yet published, oldest mark first, at most
    /// `limit`, each with its mark: what a crash between recording and publishing left.
    async fn ocsp_pending(
        &self,
        before: i64,
        limit: u32,
    ) -> Result<Vec<(CertificateRecord, i64)>, Error>;
    /// Sets `renew_now` on the certificates that exist; returns how many did.
    async fn mark_renew_now(&self, serials: &[String]) -> Result<usize, Error>;
    /// Records that order `by_order` replaced the certificate, unless another order already
    /// did; returns whether this one is recorded (false also for an unknown serial).
    async fn mark_replaced(&self, serial: &str, by_order: &str) -> Result<bool, Error>;
    /// Certificates issued since `since` that name `domain` (a registered domain), counted up
    /// to `at_most`.
    async fn certificates_since(
        &self,
        domain: &str,
        since: i64,
        at_most: u64,
    ) -> Result<u64, Error>;
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::Internal(format!("encoding a record: {e}")))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    db: &'static str,
    text: &str,
) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| Error::Db {
        db,
        detail: format!("a stored record does not decode: {e}"),
    })
}

/// Opens the configured database and brings its schema up to date.
pub async fn open(config: &crate::config::Config) -> Result<std::sync::Arc<dyn Db>, Error> {
    Ok(match &config.db {
        crate::config::Db::Sqlite { path } => {
            std::sync::Arc::new(SqliteDb::open(&config.resolve(path)).await?)
        }
        crate::config::Db::Postgres { url } => std::sync::Arc::new(PostgresDb::connect(url).await?),
    })
}

/// Whether every authorization (stored JSON bodies) is valid at `now`: an order is only
/// authorized by valid authorizations, checked again where its finalization starts.
pub(crate) fn all_valid(db: &'static str, bodies: &[String], now: i64) -> Result<bool, Error> {
    for body in bodies {
        let authz: Authorization = from_json(db, body)?;
        if authz.status_at(now) != AuthzStatus::Valid {
            return Ok(false);
        }
    }
    Ok(true)
}
