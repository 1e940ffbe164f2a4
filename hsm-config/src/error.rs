//! The crate's one error type.

use std::fmt;
use std::path::PathBuf;

/// One validation failure, naming the field by its path in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// e.g. `datacenters[1].hsms[0].sessions`
    pub path: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Everything that can go wrong while reading configuration, reading a PIN or provisioning.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema (unknown field, wrong type).
    /// toml's message carries the line, column and offending key.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// The file parsed but breaks one or more rules; every broken rule is listed.
    #[error("{} invalid: {}", path.display(), errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        path: PathBuf,
        errors: Vec<FieldError>,
    },
    /// A PIN could not be obtained. Never carries the PIN itself.
    #[error("PIN for HSM {hsm}: {reason}")]
    Pin { hsm: String, reason: String },
    #[error("provisioning: {0}")]
    Provision(String),
    /// Making development certificates failed.
    #[error("development certificates: {0}")]
    Certificates(String),
}
