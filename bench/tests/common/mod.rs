//! What the bench crate's integration tests share.

use std::path::PathBuf;
use std::process::Output;

/// A workspace binary (`signer`, `hsmgate-ocsp`, `hsm-config`, `libhsm_sim.so`, …) built beside
/// `hsm-bench`: the newest of `target/<profile>/deps/<name>` and `target/<profile>/<name>`.
pub fn built(name: &str) -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_hsm-bench"));
    let dir = exe.parent().expect("hsm-bench lives in target/<profile>");
    [dir.join("deps").join(name), dir.join(name)]
        .into_iter()
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| {
            panic!(
                "{name} not built in {}: run `cargo build --workspace` (or cargo test \
                 --workspace)",
                dir.display()
            )
        })
}

/// A finished command's stdout then stderr, for assertion messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
