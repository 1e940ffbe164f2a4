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
}
