//! hsmgate's ACME frontend: the thin CA a subscriber's ACME client talks to (RFC 8555, with
//! ACME Renewal Information, RFC 9773).
//!
//! ```text
//!  certbot / lego ──JWS over HTTP(S)──▶ server ──▶ validate (http-01, dns-01, tls-alpn-01, CAA)
//!                                          │
//!                         finalize ──▶ issue: CSR checks, TBS build, lint ──SignBatch──▶ gateway
//!                                          │            (the lint runs before the HSM sees anything)
//!                                          ├──▶ db: certificate recorded (SQLite | PostgreSQL)
//!                                          └──▶ ocsp pre-signer: `good` response stored
//!                                               ── only then does the order read `valid`
//! ```
//!
//! The frontend holds no keys: certificates are signed by the issuing key in the HSMs behind the
//! gateway, and every OCSP response by the pre-signer (in process, [`ocsp::presigner`]). Nothing is
//! acknowledged before it is durable: an order turns `valid` only once its certificate is recorded
//! and its `good` response stored; `revokeCert` answers only once the revocation is recorded and
//! the `revoked` response stored.
//!
//! # Layout
//! - [`config`]: the TOML configuration, validated at start-up.
//! - [`contact`]: account contacts — `mailto:` only, bounded, one valid public address each.
//! - [`model`]: accounts, orders, authorizations, challenges, certificate records.
//! - [`db`]: durable storage — embedded SQLite, or PostgreSQL for several frontends.
//! - [`names`]: the identifier policy — which DNS names are issued for (BR §4.2.2, RFC 6761).
//! - [`jws`]: parsing and verifying the JWS every POST carries; JWK thumbprints.
//! - [`nonce`]: `Replay-Nonce` issuance and single use.
//! - [`validate`]: challenge validation (http-01 redirects included) and CAA checking.
//! - [`addresses`]: the special-purpose addresses validation never connects to.
//! - [`perspective`]: remote perspectives and their quorum (BR §3.2.2.9), both sides.
//! - [`issue`]: CSR checks, certificate building, the pre-signing lint, signing through the gateway.
//! - [`ari`]: renewal information (RFC 9773).
//! - [`ratelimit`]: per-account and per-registered-domain limits.
//! - [`metrics`]: `hsmgate_acme_*` — requests, problems, orders, issuance latency, validations,
//!   rate limits, database and gateway calls.
//! - [`republish`]: publishing the OCSP statuses a crash left recorded but unpublished.
//! - [`server`]: the HTTP layer and the ACME resources.
//! - [`ceremony`]: creating the root and intermediate certificates through the gateway.

pub mod addresses;
#[path = "ca/ari.rs"]
pub mod ari;
pub mod ceremony;
pub mod config;
pub mod contact;
pub mod db;
mod error;
#[path = "issuance/mod.rs"]
pub mod issue;
pub mod jws;
pub mod metrics;
pub mod model;
pub mod names;
pub mod nonce;
#[path = "challenge/perspective.rs"]
pub mod perspective;
#[path = "ca/ratelimit.rs"]
pub mod ratelimit;
#[path = "ca/republish.rs"]
pub mod republish;
#[path = "wfe/mod.rs"]
pub mod server;
#[path = "challenge/mod.rs"]
pub mod validate;

pub use error::{Error, Problem, ProblemType};

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
