//! Durable stores of signed responses, and of the certificates the pre-signer keeps fresh.
//!
//! - [`sqlite`]: the embedded default. SQLite (bundled, WAL mode) rather than redb or fjall
//!   because several processes share it on one machine — the responder, the pre-signer and the
//!   `import` command — and redb/fjall lock their file to one process. See the module for the
//!   lookup cost measured here.
//! - [`redis`]: for deployments that outgrow one machine (the way Let's Encrypt keeps OCSP
//!   responses in Redis); a single node or a Redis Cluster.
//!
//! Every `put` applies [`crate::model::may_replace`] atomically inside the store (a SQLite
//! transaction; a Lua script in Redis), so two writers racing — a refresh and a revocation —
//! can never leave a `good` response over a revoked one.

use async_trait::async_trait;

use crate::error::Error;
use crate::model::{IssuerName, Serial, StoredResponse};

pub mod redis;
pub mod sqlite;

/// Where signed responses live.
#[async_trait]
pub trait ResponseStore: Send + Sync + std::fmt::Debug {
    /// Short name for metrics and logs (`sqlite`, `redis`).
    fn kind(&self) -> &'static str;

    /// The stored response for this certificate, if any (expired ones included: the caller
    /// decides what to serve).
    async fn get(
        &self,
        issuer: &IssuerName,
        serial: &Serial,
    ) -> Result<Option<StoredResponse>, Error>;

    /// Stores `response` unless the stored one must win ([`crate::model::may_replace`]);
    /// returns whether it was stored. Atomic against concurrent writers.
    async fn put(
        &self,
        issuer: &IssuerName,
        serial: &Serial,
        response: &StoredResponse,
    ) -> Result<bool, Error>;
}
