//! The hsmgate signing gateway.
//!
//! It puts a CA's HSMs — pairs of them in each datacenter — behind one gRPC API
//! (`hsmgate.signer.v1.Signer`, see `signer/proto`), so that callers name a key and never an HSM,
//! sign at the HSMs' full speed through batches, and never notice an HSM dying.
//!
//! ```text
//!  gRPC Sign / SignBatch over mTLS
//!        │  authz: who is calling (client certificate), their grants, their limits
//!        │  payload: what the key may sign (TBSCertificate / OCSP ResponseData parse)
//!        │  service: check every item (key, algorithm, digest size) before anything is signed
//!        ▼
//!  gateway ─▶ dispatch: group by key, cut into chunks, pick the least-loaded local HSM,
//!        │              spill to the other datacenter, retry elsewhere on failure
//!        ▼
//!  hsm: per HSM a queue, N worker threads each owning one logged-in PKCS#11 session,
//!       a supervisor thread (watchdog for hung calls; reconnection)
//!        ▼
//!  cryptoki ─▶ the vendor's PKCS#11 module (Luna in production, SoftHSM2 here)
//!        ▼
//!  audit: one hash-chained record per request, on disk before the signature is returned
//! ```
//!
//! # Layout
//! - [`server`]: listeners, services, signals (SIGHUP reload, SIGTERM drain).
//! - [`service`]: the gRPC service; request checks; errors to statuses.
//! - [`authz`]: client identity, grants, per-client limits.
//! - [`payload`]: declared payloads and their parse checks.
//! - [`audit`]: the hash-chained audit log and its verification.
//! - [`gateway`]: the current router; building it from config; reload.
//! - [`fair_share`]: HSM capacity shared fairly between clients; whole-call admission.
//! - [`dispatch`]: HSM choice, failover, retries.
//! - [`hsm`]: sessions, workers, fault classification, reconnection.
//! - [`algorithm`]: signature algorithms, hashing, DER encodings.
//! - [`metrics`]: Prometheus metrics.
//! - [`error`]: the crate's error type and its gRPC mapping.

pub mod algorithm;
pub mod audit;
pub mod authz;
pub mod dispatch;
pub mod error;
pub mod fair_share;
pub mod gateway;
pub mod hsm;
pub mod metrics;
pub mod payload;
pub mod server;
pub mod service;

pub use error::Error;
pub use gateway::Gateway;
