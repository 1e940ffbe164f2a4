//! hsmgate's stack kit: one way to provision tokens, write configs, find or build the
//! binaries, and start and stop the processes of a stack, shared by the dev stack
//! (`hsm-config/dev/run.sh` runs `hsmgate-stack up`), the integration tests of `signer`, `ocsp`
//! and `ca-frontend`, and `hsm-bench`.
//!
//! Not published, and nothing that ships depends on it: only tests, `hsm-bench` and the dev
//! script do.
//!
//! ```text
//! configs (typed Config -> TOML) ─┐
//! tokens (provision once, private copy per process) ─┼─> process (spawn, READY, signals, Drop)
//! binaries (locate in target/, cargo build if missing) ┘            │
//!                                                         stack (DevStack: the table of services)
//! ```
//!
//! # Layout
//! - `binaries`: the workspace's binaries and the hsm-sim module, built on demand, so that
//!   `cargo test -p <crate>` works on a fresh clone.
//! - `tokens`: SoftHSM2 tokens provisioned from a config, and private copies of them.
//! - `configs`: gateway configs edited as [`hsm_config::Config`] and serialized.
//! - `process`: a child process, its READY line and log, killed on drop.
//! - `challtestsrv`: the fake DNS of the ACME validations, and children tied to a test binary.
//! - `stack`: a whole stack as one table of services ([`DevStack`]): the dev stack, or one in a
//!   directory of its own on ephemeral ports, its four configs written from the examples'
//!   typed schemas (`--set` overrides), its addresses as `STACK_*` shell variables.

mod binaries;
mod challtestsrv;
pub mod configs;
mod error;
mod process;
mod stack;
mod tokens;

pub use binaries::{binary, profile_dir, signer, sim_module, workspace_root};
pub use challtestsrv::{ChallTestSrv, free_port, tied};
pub use error::Error;
pub use process::{Log, Process, READY_TIMEOUT, Ready};
pub use stack::{
    ConfigFile, DevStack, Layout, MultiStack, Override, Ports, Program, Service, ServiceLog,
    StackInfo, StartedStack, apply_overrides, rewrite_config,
};
pub use tokens::{Provisioned, private_copy};
