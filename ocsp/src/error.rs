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

/// The batching client's failures as this crate reports them: the gateway's status kept whole
/// (its code says whether retrying can help), an unusable answer as an encoding error.
impl From<hsmgate_signer_api::SignError> for Error {
    fn from(e: hsmgate_signer_api::SignError) -> Self {
        use hsmgate_signer_api::SignError;
        match e {
            SignError::Gateway {
                call,
                code,
                message,
            } => Error::Gateway {
                call,
                code,
                detail: message,
            },
            SignError::Answer { call, detail } => Error::Encoding {
                what: format!("{call} answer from the gateway"),
                detail,
            },
            SignError::Endpoint(e) => Error::Config {
                path: "presigner.gateway".into(),
                detail: e.to_string(),
            },
            other => Error::Gateway {
                call: "signing queue",
                code: tonic::Code::Unavailable,
                detail: other.to_string(),
            },
        }
    }
}

/// A short, stable label for an error (the metric's `kind`).
pub fn error_kind(error: &Error) -> &'static str {
    #[allow(unreachable_patterns)] // `Error` is non_exhaustive: new variants count as "other"
    match error {
        Error::Gateway { code, .. } => match code {
            tonic::Code::Unavailable => "gateway_unavailable",
            tonic::Code::DeadlineExceeded => "gateway_deadline_exceeded",
            tonic::Code::ResourceExhausted => "gateway_resource_exhausted",
            tonic::Code::NotFound => "gateway_unknown_key",
            tonic::Code::InvalidArgument => "gateway_invalid_argument",
            _ => "gateway_other",
        },
        Error::Store { .. } => "store",
        Error::Corrupt { .. } => "corrupt",
        Error::Encoding { .. } => "encoding",
        Error::Config { .. } => "config",
        Error::Import { .. } => "import",
        Error::UnknownIssuer(_) => "unknown_issuer",
        Error::Io(_) => "io",
        _ => "other",
    }
}
