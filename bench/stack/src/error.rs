//! The kit's one error type: each variant names what it was doing and with which file or
//! program, so that a test that cannot start its stack says why in its panic message.

use std::path::PathBuf;

/// What went wrong while provisioning, building, configuring or starting part of a stack.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `cargo build` of a workspace binary or of hsm-sim failed (or could not run).
    #[error("`cargo build -p {package}` failed: {detail}")]
    Build { package: String, detail: String },
    /// The configuration could not be parsed, validated or provisioned.
    #[error("configuration: {0}")]
    Config(#[from] hsm_config::Error),
    /// A typed configuration could not be written as TOML.
    #[error("writing TOML: {0}")]
    Toml(#[from] toml::ser::Error),
    /// A process could not be started.
    #[error("cannot start {}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A process exited, or said nothing, before its READY line.
    #[error("{name} did not become ready ({reason}, exit code {exit:?}); its log:\n{log}")]
    NotReady {
        name: String,
        /// Its exit code, if it exited by itself (`None`: killed by the kit after the timeout).
        exit: Option<i32>,
        reason: String,
        /// Its log (or the end of it), to say why.
        log: String,
    },
    /// The READY line lacks an address the caller needs.
    #[error("{name}'s READY line `{line}` has no {field}=ADDR")]
    ReadyField {
        name: String,
        line: String,
        field: String,
    },
    /// A step of bringing the dev stack up failed.
    #[error("{step}: {detail}")]
    Step { step: String, detail: String },
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
