//! hsmgate's certificate-status service: a responder (RFC 6960 with the RFC 5019 / RFC 9919
//! profile) that serves **pregenerated** responses, the pre-signer that keeps them fresh through
//! the signing gateway, and sharded CRLs ([`crl`]) built from the same status records.
//!
//! ```text
//!  CA records / import file ──▶ pre-signer ──SignBatch──▶ signer gateway
//!                                   │ (monotonic put: revoked is never replaced by good)
//!                                   ▼
//!  relying party ──GET/POST──▶ responder ──▶ Source: moka cache ──▶ Store (SQLite | Redis)
//! ```
//!
//! The HTTP layer knows nothing of where answers come from: it asks a [`source::Source`]. The
//! responder keeps answering from its cache and embedded copy while the gateway, the HSMs, the CA
//! database and Redis are down, until the responses it holds expire.
//!
//! # Layout
//! - [`model`]: serials, statuses, stored records, and the monotonic publishing rule.
//! - [`store`]: durable stores — embedded SQLite, and Redis (single node or cluster).
//! - [`config`]: the service's TOML configuration.
//! - [`issuers`]: issuer certificates, the hashes CertIDs name them by.
//! - [`response`]: building and signing `OCSPResponse`s.
//! - [`presigner`]: keeping every certificate's response fresh; publishing statuses.
//! - [`request`]: parsing `OCSPRequest`s from untrusted clients.
//! - [`source`]: where the responder's answers come from (cache over store).
//! - [`responder`]: the HTTP layer.
//! - [`metrics`]: Prometheus metrics.
//! - [`crl`]: sharded CRLs — shard assignment and URLs ([`crl::ShardMap`], for the ACME
//!   frontend), building, the updater (`hsmgate-ocsp crl-update`) and serving.

// The der 0.7 derive macros name their crate `der`; this crate has it as `der07`.
extern crate der07 as der;
pub mod config;
pub mod crl;
mod error;
pub mod issuers;
pub mod metrics;
pub mod model;
pub mod presigner;
pub mod request;
pub mod responder;
pub mod response;
pub mod source;
pub mod store;

pub use error::Error;
