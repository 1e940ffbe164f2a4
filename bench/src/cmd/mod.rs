//! The subcommands of `hsm-bench`, one file each; each has a `run` that `main.rs` calls with
//! its parsed arguments. What they share lives beside this folder: the load generators
//! (`raw`, `grpc_load`), the measurement (`window`, `measure`, `procstat`), and the report
//! (`report`, `plot`, `progress`).
//!
//! - `signing_run`: `compare`, `raw` and `sign`: raw PKCS#11 and gateway phases, alone or
//!   alternated in one run (the `Plan` each of them describes).
//! - `capacity`: the gateway in front of modelled HSMs (hsm-sim); it reuses `signing_run`'s
//!   plan and report skeleton for its single phase.
//! - `ceiling`: the gateway's own ceiling with unthrottled modelled HSMs.
//! - `drill`: the mass-revocation drill.
//! - `ocsp_load`: load on an OCSP responder.
//! - `acme`: end-to-end ACME issuance.

pub mod acme;
pub mod capacity;
pub mod ceiling;
pub mod drill;
pub mod ocsp_load;
pub mod signing_run;
