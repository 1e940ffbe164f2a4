//! The OCSP responder and pre-signer (RFC 6960 / RFC 5019): serves pregenerated responses from
//! an in-memory cache over a durable store, and keeps them fresh by signing through the gateway.
//! Built by a later issue; the crate exists so the workspace shows the architecture.
