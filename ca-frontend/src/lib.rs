//! hsmgate's ACME frontend: the thin CA a subscriber's ACME client talks to (RFC 8555, with
//! ACME Renewal Information, RFC 9773).
//!
//! ```text
//!  certbot / lego ──JWS over HTTP(S)──▶ wfe (one module per resource)
//!                                         │
//!                                         ▼
//!                                        ca ──▶ challenge: http-01, dns-01, tls-alpn-01, CAA,
//!                                         │       corroborated by remote perspectives
//!                 finalize ──▶ issuance: CSR checks, TBS build, lint ──ca::signer──SignBatch──▶ gateway
//!                                         │            (the lint runs before the HSM sees anything)
//!                                         ├──▶ db: certificate recorded (SQLite | PostgreSQL)
//!                                         └──▶ ocsp pre-signer: `good` response stored
//!                                              ── only then does the order read `valid`
//! ```
//!
//! The frontend holds no keys: certificates are signed by the issuing key in the HSMs behind the
//! gateway, and every OCSP response by the pre-signer (in process, [`ocsp::presigner`]). Nothing is
//! acknowledged before it is durable: an order turns `valid` only once its certificate is recorded
//! and its `good` response stored; `revokeCert` answers only once the revocation is recorded and
//! the `revoked` response stored.
//!
//! # Layout
//! As Boulder splits its web front end from its registration and certificate authorities:
//! - `wfe`: the HTTP layer, one module per ACME resource (directory, account, order, authz,
//!   certificate, revoke, renewal-info) and the JWS-verifying request extractor. Its
//!   [`router`] is the public entry.
//! - `ca`: the CA's state ([`Ca`]) and what requests do to it — orders and authorizations,
//!   finalization, revocation, [`republish`] (the repair pass), rate limits, [`ari`], and the
//!   certificate signing client over the gateway's one batching client. No HTTP types.
//! - [`issuance`]: CSR checks, TBS building and the pre-signing lint; assembly of what the
//!   gateway signed.
//! - [`challenge`]: proving control of a name (http-01, dns-01, tls-alpn-01) and the CAA check;
//!   [`perspective`]: remote perspectives and their quorum (BR §3.2.2.9), both sides.
//! - [`config`]: the TOML configuration, validated at start-up.
//! - [`model`]: accounts, orders, authorizations, challenges, certificate records.
//! - [`db`]: durable storage — embedded SQLite, or PostgreSQL for several frontends.
//! - [`jws`]: parsing and verifying the JWS every POST carries; JWK thumbprints.
//! - [`ceremony`]: creating the root and intermediate certificates through the gateway.
//! - Inside: `names` (the identifier policy, BR §4.2.2, RFC 6761; [`check_dns_name`]),
//!   `contact` (account contacts), `nonce` (`Replay-Nonce`), `addresses` (the special-purpose
//!   addresses validation never connects to), `metrics` (`hsmgate_acme_*`), `error`.
//!
//! Modules are private; what the binary, the tests, the benches and the fuzz targets use is
//! the list below, and a few namespaces whose names belong together.

mod addresses;
mod ca;
pub mod ceremony;
pub mod challenge;
pub mod config;
mod contact;
pub mod db;
mod error;
pub mod issuance;
pub mod jws;
mod metrics;
pub mod model;
mod names;
mod nonce;
mod wfe;

pub use ca::Ca;
pub use error::{Error, Problem, ProblemType};
pub use names::{DnsName, check_dns_name};
pub use wfe::router;

/// Remote perspectives (BR §3.2.2.9): the configuration, the frontend's [`perspective::Corroborator`] and
/// the `ca-frontend perspective` server.
pub mod perspective {
    pub use crate::challenge::perspective::{
        CheckReply, CheckRequest, Corroboration, Corroborator, PerspectiveConfig,
        PerspectiveOutcome, PerspectiveServer, Perspectives, RemoteConfig, allowed_disagreements,
        router, serve, server_tls,
    };
}

/// The repair pass: publishing the OCSP statuses a crash left recorded but unpublished, and
/// giving back what stalled finalizations reserved.
pub mod republish {
    pub use crate::ca::republish::{
        GRACE, INTERVAL, abandon_stalled, mark, ocsp_status, republish_pending, revoked_status, run,
    };
}

/// ACME Renewal Information (RFC 9773): CertIDs and suggested renewal windows.
pub mod ari {
    pub use crate::ca::ari::{cert_id, parse_cert_id, renewal_info, suggested_window};
}

/// Rate limits counted from the CA's records: the registered domains a certificate counts
/// against, and the window.
pub mod ratelimit {
    pub use crate::ca::ratelimit::{WEEK, counted_domains, registered_domains};
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 (`2026-11-27T17:00:00Z`) for a Unix time, as ACME's JSON wants it.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// A random identifier: 16 bytes, base64url (unguessable object URLs, nonces, tokens).
pub fn random_id() -> Result<String, Error> {
    Ok(b64(&random_bytes::<16>()?))
}

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut out = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut out)
        .map_err(|_| Error::Internal("the system random generator failed".into()))?;
    Ok(out)
}

/// base64url without padding (JOSE, RFC 7515 §2).
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding, strictly (no padding, no other alphabet).
pub fn unb64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}
