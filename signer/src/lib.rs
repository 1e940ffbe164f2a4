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
//!        │  grpc: check every item (key, algorithm, digest size) before anything is signed
//!        ▼
//!  routing ─▶ dispatch: group by key, cut into chunks, pick the least-loaded local HSM,
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
//! - `process`: process start-up: listeners, services, signals (SIGHUP reload, SIGTERM drain).
//! - `grpc`: the tonic gRPC service; request checks; errors to statuses.
//! - `authz`: client identity, grants, per-client limits.
//! - `payload`: declared payloads and their parse checks.
//! - `audit`: the hash-chained audit log (`audit/writer.rs`: the writer thread) and its
//!   verification (`audit/verify.rs`).
//! - `routing`: the live router over the HSM pairs ([`Gateway`]); building it from config;
//!   reload.
//! - `fair_share`: HSM capacity shared fairly between clients; whole-call admission.
//! - `dispatch`: HSM choice, failover, retries.
//! - `hsm`: sessions, workers, fault classification, reconnection (`hsm/supervisor.rs`).
//! - `algorithm`: signature algorithms, hashing, DER encodings.
//! - `metrics`: Prometheus metrics.
//! - `error`: the crate's error type and its gRPC mapping.
//!
//! Every module is private. What the crate offers is the list below: what `main.rs` runs
//! ([`run`], [`verify_audit_log`]), what `benches/dispatch.rs` drives ([`Gateway`] directly,
//! without gRPC), and the payload checks `fuzz/` exercises. The integration tests in `tests/`
//! run the `signer` binary and need none of it.

mod algorithm;
mod audit;
mod authz;
mod dispatch;
mod error;
mod fair_share;
mod grpc;
mod hsm;
mod metrics;
mod payload;
mod process;
mod routing;

pub use algorithm::Input;
pub use audit::{
    AuditVerification, ChainBreak, records_end as audit_records_end, verify_audit_log,
};
pub use error::Error;
pub use metrics::Metrics;
pub use payload::{check as check_payload, declared as declared_payload};
pub use process::run;
pub use routing::{Gateway, Reserved};
