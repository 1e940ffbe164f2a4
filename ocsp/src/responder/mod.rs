//! The HTTP layer (axum) of the OCSP responder, and the process that runs it.
//!
//! - `handler`: OCSP over HTTP (RFC 6960 Appendix A, the RFC 5019 / RFC 9919 profile) and the
//!   CRL paths: requests in, [`crate::Source`] lookups, HTTP responses out. [`router`] is
//!   what tests and benchmarks drive in process.
//! - `front`: each HTTP thread's memo of answered GET paths, in front of the shared cache.
//! - `serve`: start-up ([`run`]): stores and sources from the configuration, listeners, HTTP
//!   threads, metrics, and the shutdown on SIGTERM/SIGINT.

mod front;
mod handler;
mod serve;

pub use handler::{AppState, router};
pub use serve::run;
