//! PINs: read from a file or the environment when needed, zeroized when dropped, and never
//! shown by `Debug` or `Display`. A PIN file must not be accessible to others nor writable by
//! its group (0600 or 0640): a PIN anyone on the machine can read is no secret.

use std::fmt;
use std::path::Path;

use zeroize::Zeroizing;

use crate::error::Error;
use crate::schema::PinSource;

/// A user PIN. Its `Debug` prints `Pin(<redacted>)`; the bytes are wiped on drop.
#[derive(Clone)]
pub struct Pin(Zeroizing<String>);

impl Pin {
    /// The PIN itself, for the one call that logs in.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

impl PinSource {
    /// Reads the PIN for HSM `hsm`. A relative file path resolves against `base_dir`.
    /// Errors name the source (file path or variable name), never the value.
    pub fn read(&self, hsm: &str, base_dir: &Path) -> Result<Pin, Error> {
        let fail = |reason: String| Error::Pin {
            hsm: hsm.to_owned(),
            reason,
        };
        let raw = match self {
            PinSource::File(path) => {
                use std::os::unix::fs::PermissionsExt;
                let path = base_dir.join(path);
                let mode = std::fs::metadata(&path)
                    .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?
                    .permissions()
                    .mode();
                if mode & 0o027 != 0 {
                    return Err(fail(format!(
                        "{} is accessible to others or writable by its group (mode {:o}): chmod 600 it",
                        path.display(),
                        mode & 0o777
                    )));
                }
                Zeroizing::new(
                    std::fs::read_to_string(&path)
                        .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?,
                )
            }
            PinSource::Env(var) => Zeroizing::new(
                std::env::var(var)
                    .map_err(|_| fail(format!("environment variable {var} is not set")))?,
            ),
            PinSource::Invalid(reason) => return Err(fail((*reason).to_owned())),
        };
        let pin = raw.trim_end_matches(['\n', '\r']);
        if pin.is_empty() {
            return Err(fail("the PIN is empty".to_owned()));
        }
        Ok(Pin(Zeroizing::new(pin.to_owned())))
    }
}
