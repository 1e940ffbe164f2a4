//! hsmgate's configuration: the typed schema, its validation, and the provisioning of
//! SoftHSM2 tokens for development and tests.
//!
//! Configuration is a plain TOML file kept under source control (see `examples/`). It is
//! parsed into [`Config`] and then validated as a whole: every problem is reported at once,
//! each naming the field it concerns (`datacenters[1].hsms[0].sessions: must be between 1
//! and 1024`), so an operator fixes a file in one pass. A file that fails validation is never
//! used: the gateway refuses to start on it, and a reload keeps the running configuration.
//!
//! This crate knows no runtime: it does not load PKCS#11 modules nor open sockets. The one
//! exception is [`provision`], which drives Debian's `softhsm2-util`, `pkcs11-tool` and `openssl`
//! as subprocesses to create development tokens holding cloned keys.
//!
//! ```text
//!  TOML file ─▶ load: parse (toml + serde, PINs masked in parse errors) ─▶ schema types
//!                  └─▶ checks: every whole-file rule ─▶ Config, or Error::Invalid listing
//!                                                       every FieldError
//!  Config ─▶ provision: SoftHSM2 tokens and cloned keys (dev and tests)
//! ```
//!
//! # Layout
//! - `schema`: the types, with their defaults and the lookups on [`Config`].
//! - `load`: [`Config::load`] and [`Config::parse`]: text to a validated [`Config`].
//! - `checks`: the whole-file checks that produce [`FieldError`]s.
//! - `secret`: PINs ([`Pin`]), read from a file or the environment, never printed.
//! - `provision`: [`provision`] makes SoftHSM2 tokens and cloned keys for a development
//!   config (its `files`, `tokens` and `tools` submodules do the steps).
//! - [`devcerts`]: a development client CA, a server certificate for 127.0.0.1 and client
//!   certificates, for mTLS between the gateway and its callers. A public module, because its
//!   functions read best with the namespace (`devcerts::ensure`).
//!
//! Every other module is private; what the crate offers is the list below.

mod checks;
pub mod devcerts;
mod error;
mod load;
mod provision;
mod schema;
mod secret;

pub use error::{Error, FieldError};
pub use provision::{ProvisionOptions, ProvisionReport, key_id, provision};
pub use schema::{
    Audit, AuditFailure, Batching, Client, ClientLimits, Config, DEFAULT_AUDIT_COMMIT_DELAY_US,
    DEFAULT_AUDIT_PREALLOCATE_BYTES, Datacenter, Dispatch, Gateway, Grant, Hsm, InsecurePlaintext,
    Key, KeyAlgorithm, Operation, PayloadPolicy, PinSource, ServerTls, Timeouts,
};
pub use secret::Pin;
