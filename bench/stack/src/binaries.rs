//! Where the workspace's binaries are, building them when they are not there.
//!
//! A test of the `ocsp` crate needs the `signer` binary, which Cargo does not build for it (a
//! crate's tests only get its own binaries). So the kit looks in the target directory the
//! running executable lives in (`target/<profile>/` or `target/<profile>/deps/`) and, when the
//! binary is missing (a fresh clone, `cargo test -p ocsp` first), runs `cargo build -p PKG
//! --bin BIN` there once. `cargo test -p <crate>` then works on a fresh clone.
//!
//! A binary that is present is used as it is, as the tests always did: rebuilding it here with
//! another feature set than `cargo build --workspace` chose would rebuild half the tree.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::error::Error;

/// The workspace root (this crate is `bench/stack`).
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // `/work/x` rather than `/work/x/bench/stack/../..` in every path the stack prints.
    root.canonicalize().unwrap_or(root)
}

/// `target/<profile>` of the running executable: its directory, or the parent of `deps/`.
pub fn profile_dir() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe().map_err(|e| Error::io("finding", "the executable", e))?;
    let dir = exe
        .parent()
        .ok_or_else(|| Error::io("finding", &exe, std::io::ErrorKind::NotFound.into()))?;
    Ok(if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

/// The workspace binary `bin` of package `package`, built if it is missing.
pub fn binary(package: &str, bin: &str) -> Result<PathBuf, Error> {
    let dir = profile_dir()?;
    let path = dir.join(bin);
    if !path.is_file() {
        build(&dir, package, Some(bin))?;
    }
    Ok(path)
}

/// The `signer` gateway binary.
pub fn signer() -> Result<PathBuf, Error> {
    binary("signer", "signer")
}

/// The hsm-sim PKCS#11 module (`libhsm_sim.so`): the newest of `target/<profile>/` and
/// `deps/` (Cargo writes both, and a test build may refresh only one), built if neither exists.
pub fn sim_module() -> Result<PathBuf, Error> {
    let dir = profile_dir()?;
    let newest = || {
        [dir.join("libhsm_sim.so"), dir.join("deps/libhsm_sim.so")]
            .into_iter()
            .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
            .max_by_key(|(t, _)| *t)
            .map(|(_, p)| p)
    };
    if let Some(path) = newest() {
        return Ok(path);
    }
    build(&dir, "hsm-sim", None)?;
    newest().ok_or_else(|| Error::Build {
        package: "hsm-sim".into(),
        detail: format!("no libhsm_sim.so in {} after building", dir.display()),
    })
}

/// Runs `cargo build -p package [--bin bin]` for the profile of `profile_dir`, once per
/// process and target: threads of one test binary wait for each other here, and test binaries
/// running at the same time wait on Cargo's own lock of the target directory.
fn build(profile_dir: &Path, package: &str, bin: Option<&str>) -> Result<(), Error> {
    static BUILT: OnceLock<Mutex<HashMap<String, Result<(), String>>>> = OnceLock::new();
    let key = format!("{package}/{}", bin.unwrap_or("lib"));
    let mut built = BUILT
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(result) = built.get(&key) {
        return result.clone().map_err(|detail| Error::Build {
            package: package.into(),
            detail,
        });
    }
    let result = run_cargo_build(profile_dir, package, bin);
    built.insert(key, result.clone());
    result.map_err(|detail| Error::Build {
        package: package.into(),
        detail,
    })
}

fn run_cargo_build(profile_dir: &Path, package: &str, bin: Option<&str>) -> Result<(), String> {
    let profile = profile_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "debug".into());
    let target_dir = profile_dir.parent().unwrap_or(profile_dir);
    // Cargo sets CARGO for the processes it runs (tests); otherwise the one on PATH.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_root())
        .args(["build", "--quiet", "-p", package])
        .env("CARGO_TARGET_DIR", target_dir);
    if let Some(bin) = bin {
        command.args(["--bin", bin]);
    }
    match profile.as_str() {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    let output = command
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
