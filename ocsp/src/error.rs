//! The crate's one error type.

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A store could not be reached or answered with an error; the detail is for operators.
    #[error("store {store}: {detail}")]
    Store { store: &'static str, detail: String },
    /// A stored record could not be decoded.
    #[error("corrupt record for {key}: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("configuration {path}: {detail}")]
    Config { path: String, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The signing gateway failed a call. `code` is its gRPC status; `signer.proto` says what
    /// each means (NOT_FOUND: the key is not configured; UNAVAILABLE, RESOURCE_EXHAUSTED,
    /// DEADLINE_EXCEEDED: retrying later may succeed).
    #[error("signing gateway: {call} failed with {code:?}: {detail}")]
    Gateway {
        call: &'static str,
        code: tonic::Code,
        detail: String,
    },
    /// A response or certificate could not be built: a value DER cannot carry (a serial longer
    /// than 20 bytes, a time before 1970), or a gateway answer that is not what was asked.
    #[error("encoding {what}: {detail}")]
    Encoding { what: String, detail: String },
    /// A line of an import file is invalid; nothing from the file was imported.
    #[error("{path}:{line}: {detail}")]
    Import {
        path: String,
        line: usize,
        detail: String,
    },
    /// An issuer name that is not in the configuration.
    #[error("unknown issuer `{0}`")]
    UnknownIssuer(String),
}
