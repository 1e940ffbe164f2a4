//! What the bench crate's integration tests share.

use std::path::PathBuf;
use std::process::Output;

/// A workspace binary (`signer`, `hsmgate-ocsp`, `hsm-config`, `libhsm_sim.so`, …) of this
/// build, from the stack kit: found in `target/<profile>/` or built there if missing (so
/// `cargo test -p hsm-bench` works on a fresh clone).
pub fn built(name: &str) -> PathBuf {
    let found = match name {
        "libhsm_sim.so" => hsmgate_stack::sim_module(),
        "hsmgate-ocsp" => hsmgate_stack::binary("ocsp", name),
        // Every other binary is named after its package (signer, hsm-config, ca-frontend).
        _ => hsmgate_stack::binary(name, name),
    };
    found.unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A finished command's stdout then stderr, for assertion messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
