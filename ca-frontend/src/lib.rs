//! The ACME frontend (RFC 8555 with ARI, RFC 9773): drives issuance and revocation through the
//! signing gateway. Built by a later issue; the crate exists so the workspace shows the architecture.
