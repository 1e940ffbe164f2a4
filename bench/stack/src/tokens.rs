//! SoftHSM2 tokens: provisioned once from a gateway config, then copied for every process.
//!
//! Every gateway gets its own copy of the token directory: SoftHSM2 rewrites a token's file on
//! every `C_Login`, and another process starting at that moment can miss the token.

use std::path::{Path, PathBuf};
use std::process::Command;

use hsm_config::Config;
use hsm_config::{ProvisionOptions, provision};

use crate::error::Error;

/// Tokens provisioned in a directory: `tokens/`, `softhsm2.conf` and the public keys.
#[derive(Clone, Debug)]
pub struct Provisioned {
    /// The directory holding `tokens/` (and, by the tests' convention, the PIN files).
    pub dir: PathBuf,
    /// The `softhsm2.conf` pointing at `dir/tokens`.
    pub softhsm_conf: PathBuf,
    /// `<key>.spki.der` and `<key>.pub.pem` of every key, as provisioning wrote them.
    pub public_keys: PathBuf,
}

impl Provisioned {
    /// Provisions `config`'s tokens and keys into `dir` (PIN files where the config says).
    pub fn new(config: &Config, dir: &Path) -> Result<Self, Error> {
        let options = ProvisionOptions::new(dir.join("softhsm2.conf"));
        let public_keys = options.public_key_dir.clone();
        provision(config, &options)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            softhsm_conf: options.softhsm_conf,
            public_keys,
        })
    }

    /// Tokens already provisioned in `dir` (by `hsm-config provision` or [`Self::new`]).
    pub fn existing(dir: &Path) -> Self {
        let options = ProvisionOptions::new(dir.join("softhsm2.conf"));
        Self {
            dir: dir.to_path_buf(),
            public_keys: options.public_key_dir,
            softhsm_conf: options.softhsm_conf,
        }
    }

    /// A private copy of the tokens in `into`; the path of its `softhsm2.conf`.
    pub fn private_copy(&self, into: &Path) -> Result<PathBuf, Error> {
        private_copy(&self.dir, into)
    }
}

/// Copies `provisioned/tokens` into `into` and writes a `softhsm2.conf` for the copy; returns
/// its path.
pub fn private_copy(provisioned: &Path, into: &Path) -> Result<PathBuf, Error> {
    let source = provisioned.join("tokens");
    // `cp -a` keeps the files' modes (SoftHSM2 refuses tokens readable by others).
    let status = Command::new("cp")
        .arg("-a")
        .arg(&source)
        .arg(into)
        .status()
        .map_err(|e| Error::io("copying tokens from", &source, e))?;
    if !status.success() {
        return Err(Error::io(
            "copying tokens from",
            &source,
            std::io::Error::other(format!("cp -a: {status}")),
        ));
    }
    let conf = into.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            into.join("tokens").display()
        ),
    )
    .map_err(|e| Error::io("writing", &conf, e))?;
    Ok(conf)
}
