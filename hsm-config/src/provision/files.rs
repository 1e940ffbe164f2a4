//! Provisioning's files: the SoftHSM2 configuration and its lock, PIN files, public keys
//! written to disk.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{ProvisionReport, fail};
use crate::error::Error;
use crate::schema::{Config, Hsm, PinSource};
use crate::secret::Pin;

/// An exclusive lock on `<conf>.lock`, released when the file is dropped.
pub(super) fn lock(conf: &Path) -> Result<fs::File, Error> {
    if let Some(dir) = conf.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_dir(dir)?;
    }
    let mut path = conf.as_os_str().to_owned();
    path.push(".lock");
    let path = PathBuf::from(path);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| fail(format!("cannot open lock file {}: {e}", path.display())))?;
    file.lock()
        .map_err(|e| fail(format!("cannot lock {}: {e}", path.display())))?;
    Ok(file)
}

/// Makes `path` absolute and creates the conf (and its token dir) if absent; if the conf exists
/// and names a token directory that does not, creates that directory.
pub(super) fn prepare_softhsm_conf(path: &Path) -> Result<PathBuf, Error> {
    let conf = std::path::absolute(path)
        .map_err(|e| fail(format!("SoftHSM2 config {}: {e}", path.display())))?;
    match fs::read_to_string(&conf) {
        Ok(text) => {
            let tokendir = text.lines().find_map(|l| {
                let (name, value) = l.split_once('=')?;
                (name.trim() == "directories.tokendir").then(|| PathBuf::from(value.trim()))
            });
            if let Some(dir) = tokendir.filter(|d| !d.as_os_str().is_empty()) {
                create_dir(&dir)?;
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let dir = conf.parent().unwrap_or(Path::new("/"));
            let tokens = dir.join("tokens");
            create_dir(&tokens)?;
            let tokens_str = tokens.to_str().ok_or_else(|| {
                fail(format!(
                    "token directory {} is not valid UTF-8",
                    tokens.display()
                ))
            })?;
            let text = format!(
                "# Written by `hsm-config provision`: SoftHSM2 tokens for development.\n\
                 directories.tokendir = {tokens_str}\n\
                 objectstore.backend = file\n\
                 log.level = ERROR\n"
            );
            match OpenOptions::new().write(true).create_new(true).open(&conf) {
                Ok(mut f) => f
                    .write_all(text.as_bytes())
                    .map_err(|e| fail(format!("cannot write {}: {e}", conf.display())))?,
                // Someone else just wrote it: use theirs.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(fail(format!("cannot create {}: {e}", conf.display()))),
            }
        }
        Err(e) => return Err(fail(format!("cannot read {}: {e}", conf.display()))),
    }
    Ok(conf)
}

pub(super) fn create_dir(dir: &Path) -> Result<(), Error> {
    fs::create_dir_all(dir)
        .map_err(|e| fail(format!("cannot create directory {}: {e}", dir.display())))
}

/// Reads the PIN of `hsm`; a PIN file that does not exist is created with a random PIN, but
/// only for a token that does not exist yet (for an existing token that PIN would be wrong).
pub(super) fn read_or_create_pin(
    hsm: &Hsm,
    token_label: &str,
    token_exists: bool,
    config: &Config,
    report: &mut ProvisionReport,
) -> Result<Pin, Error> {
    if let PinSource::File(file) = &hsm.pin {
        let path = config.base_dir.join(file);
        if !path.exists() {
            if token_exists {
                return Err(fail(format!(
                    "HSM `{}`: token {token_label} exists but its PIN file {} does not; restore \
                     the file, or delete the token directory and provision again",
                    hsm.name,
                    path.display()
                )));
            }
            create_pin_file(&path)?;
            report.pin_files_created.push(path);
        }
    }
    hsm.pin.read(&hsm.name, &config.base_dir)
}

/// Writes 16 random hex digits to a new file of mode 0600 (parents 0700 when created).
pub(super) fn create_pin_file(path: &Path) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| fail(format!("cannot create directory {}: {e}", parent.display())))?;
    }
    let pin = random_hex(8)?;
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        // Created meanwhile (another HSM sharing the file, or another process): use it.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => {
            return Err(fail(format!(
                "cannot create PIN file {}: {e}",
                path.display()
            )));
        }
    };
    file.write_all(format!("{}\n", pin.as_str()).as_bytes())
        .map_err(|e| fail(format!("cannot write PIN file {}: {e}", path.display())))
}

pub(super) fn random_hex(bytes: usize) -> Result<Zeroizing<String>, Error> {
    let mut buf = Zeroizing::new(vec![0u8; bytes]);
    getrandom::fill(&mut buf).map_err(|e| fail(format!("no randomness for a PIN: {e}")))?;
    Ok(Zeroizing::new(hex::encode(&*buf)))
}

/// Writes `data` through a temporary file and a rename, unless the file already holds it.
pub(super) fn write_if_changed(path: &Path, data: &[u8]) -> Result<(), Error> {
    if fs::read(path).is_ok_and(|old| old == data) {
        return Ok(());
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        fail(format!("cannot write {}: {e}", path.display()))
    })
}

/// PEM `PUBLIC KEY` of a DER SubjectPublicKeyInfo, as `openssl pkey -pubout` writes it.
pub(super) fn pem_public_key(spki: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(spki.len().div_ceil(3) * 4);
    for chunk in spki.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_matches_openssl_layout() {
        let pem = pem_public_key(b"any carnal pleas");
        assert_eq!(
            pem,
            "-----BEGIN PUBLIC KEY-----\nYW55IGNhcm5hbCBwbGVhcw==\n-----END PUBLIC KEY-----\n"
        );
        let long = pem_public_key(&[0u8; 91]);
        let lines: Vec<_> = long.lines().collect();
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines[2], format!("{}==", "A".repeat(58)));
    }
}
