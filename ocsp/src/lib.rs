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
//! The HTTP layer knows nothing of where answers come from: it asks a [`Source`]. The
//! responder keeps answering from its cache and embedded copy while the gateway, the HSMs, the CA
//! database and Redis are down, until the responses it holds expire.
//!
//! # Layout
//! Modules are private; what the crate offers is the `pub use` list below, plus the namespaces
//! whose names belong together ([`config`], [`store`], [`crl`], [`presigner`], [`responder`],
//! [`metrics`]).
//!
//! - `record`: what the service knows about a certificate — [`IssuerName`], [`Serial`],
//!   [`CertStatus`], [`StoredResponse`].
//! - `publishing`: the monotonic rule ([`may_replace`]) every store and cache applies.
//! - `http_memo`: the HTTP header values a stored response keeps once computed.
//! - `hash_alg`: the CertID hash algorithms ([`HashAlg`]).
//! - `issuers`: issuer certificates, the hashes CertIDs name them by.
//! - `clock`: [`unix_now`], the one clock of the records.
//! - `crl_shard`: a signed CRL shard as stored, its entries, a serial's shard (exported
//!   through [`crl`]; apart from it so the stores do not depend on the CRL updater).
//! - `request`: parsing `OCSPRequest`s from untrusted clients ([`parse_request`]).
//! - `response`: the ASN.1 — encoding `OCSPResponse`s.
//! - `signing`: [`TbsSigner`] and [`sign_responses`]: turning statuses into signed responses
//!   through the gateway's batching client.
//! - `source`: where the responder's answers come from (cache over store).
//! - [`store`]: durable stores — embedded SQLite, and Redis (single node or cluster).
//! - [`config`]: the service's TOML configuration.
//! - [`presigner`]: keeping every certificate's response fresh; publishing statuses.
//! - [`responder`]: the HTTP layer and the process that runs it.
//! - [`metrics`]: Prometheus metrics.
//! - [`crl`]: sharded CRLs — shard assignment and URLs ([`crl::ShardMap`], for the ACME
//!   frontend), building, the updater (`hsmgate-ocsp crl-update`) and serving.
//!
//! Module dependencies run one way, without cycles: `hash_alg`, `clock` and `error` depend on
//! nothing here; `http_memo` on `hash_alg`, `record` on `http_memo`; `config` on `hash_alg`;
//! `issuers` on `config` and `record`; `response` (ASN.1) on those, `signing` on `response`;
//! `store` on the records, `response` and `crl_shard`; `crl`, `source` and `presigner` on
//! `store`; the `responder` on everything.

// The der 0.7 derive macros name their crate `der`; this crate has it as `der07`.
extern crate der07 as der;

mod clock;
mod crl_shard;
mod error;
mod hash_alg;
mod http_memo;
mod issuers;
mod publishing;
mod record;
mod request;
mod response;
mod signing;
mod source;

pub mod config;
pub mod crl;
pub mod metrics;
pub mod presigner;
pub mod responder;
pub mod store;

pub use clock::unix_now;
pub use error::{Error, error_kind};
pub use hash_alg::HashAlg;
pub use http_memo::{HttpMemo, HttpParts};
pub use issuers::{HashPair, Issuer, Issuers};
pub use publishing::may_replace;
pub use record::{CertStatus, IssuerName, ReasonCode, Serial, StoredResponse};
pub use request::{CertRequest, Refusal, RequestError, parse as parse_request};
pub use response::{cert_id_hashes_in, is_valid_reason, serial_number, status_only};
pub use signing::{TbsSigner, sign_responses, sign_responses_with};
pub use source::{
    CachedSource, DEFAULT_STORE_TIMEOUT, Health, Lookup, Origin, ReplicatedSource, Source,
    StoreSource,
};
