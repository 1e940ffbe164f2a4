//! The gateway's one error type, and what a caller sees of it.
//!
//! Inside the gateway an error carries everything an operator needs (HSM, PKCS#11 function,
//! return code); [`Error::to_status`] decides, at the edge, which gRPC status and message the
//! caller gets. Operators read the full error in the logs.

use cryptoki::error::RvError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration file is unusable; the message lists every field at fault.
    #[error("configuration: {0}")]
    Config(#[from] hsm_config::Error),

    /// No key of that name is configured; the message names the field.
    #[error("{0}")]
    UnknownKey(String),

    /// The request is malformed: the message names the field (`requests[3].digest`).
    #[error("{0}")]
    InvalidArgument(String),

    /// The caller may not do this: not a configured client, outside its grants, or a payload
    /// that is not what it was declared to be. The message names the item and the grant.
    #[error("{0}")]
    PermissionDenied(String),

    /// The caller is over one of its limits (rate, concurrency).
    #[error("{0}")]
    ClientLimited(String),

    /// The audit log cannot be written (or read back at start-up).
    #[error("audit log: {0}")]
    Audit(String),

    /// TLS set-up of the signing API (a file missing or unusable).
    #[error("{field}: {detail}")]
    Tls { field: &'static str, detail: String },

    /// An HSM refused the request itself (e.g. `CKR_DATA_LEN_RANGE`): trying another HSM would
    /// not help.
    #[error("HSM {hsm} refused requests[{index}]: {code}")]
    Refused {
        hsm: String,
        index: usize,
        code: String,
    },

    /// No HSM holding the key is in rotation.
    #[error("no HSM can sign with key `{key}` now: {detail}")]
    Unavailable { key: String, detail: String },

    /// Every HSM tried failed without saying why (`CKR_GENERAL_ERROR`, ...): the request itself
    /// is suspect, so it is not reported as an outage that clients would retry.
    #[error("every HSM failed to sign with key `{key}`: {detail}")]
    SignFailed { key: String, detail: String },

    /// The HSMs holding the key are at capacity and the client may queue no more behind them
    /// (`fair_share`); the call spent no signature.
    #[error("saturated: {0}")]
    Saturated(String),

    /// The caller's deadline passed first.
    #[error("deadline exceeded after {attempts} attempt(s)")]
    DeadlineExceeded { attempts: u32 },

    /// A PKCS#11 call failed while connecting to an HSM.
    #[error("HSM {hsm}: {function} failed: {code}")]
    Pkcs11 {
        hsm: String,
        function: String,
        code: String,
    },

    /// Anything else about an HSM (module missing, token absent, key clone mismatch).
    #[error("HSM {hsm}: {detail}")]
    Hsm { hsm: String, detail: String },

    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The status a gRPC caller receives. Precise for their mistakes, generic for ours: HSM
    /// internals (module paths, slot numbers) stay in the operator's log.
    pub fn to_status(&self) -> Status {
        match self {
            Error::UnknownKey(message) => Status::not_found(message.clone()),
            Error::InvalidArgument(m) => Status::invalid_argument(m.clone()),
            Error::PermissionDenied(m) => Status::permission_denied(m.clone()),
            Error::ClientLimited(m) => Status::resource_exhausted(m.clone()),
            Error::Audit(_) => Status::unavailable(
                "the audit log cannot be written: this gateway signs nothing until it can",
            ),
            Error::Refused { index, code, .. } => Status::invalid_argument(format!(
                "requests[{index}]: every HSM holding the key refused it: {code}"
            )),
            Error::SignFailed { key, .. } => Status::internal(format!(
                "every HSM holding key `{key}` failed to sign this request"
            )),
            Error::Unavailable { key, .. } => {
                Status::unavailable(format!("no HSM can sign with key `{key}` now"))
            }
            Error::Saturated(m) => Status::resource_exhausted(m.clone()),
            Error::DeadlineExceeded { .. } => {
                Status::deadline_exceeded("the deadline passed before every signature was made")
            }
            Error::Config(_)
            | Error::Tls { .. }
            | Error::Pkcs11 { .. }
            | Error::Hsm { .. }
            | Error::Io(_) => Status::new(Code::Internal, "internal error"),
        }
    }
}

/// `CKR_DEVICE_ERROR` from cryptoki's `DeviceError`: the names operators know from the spec.
pub fn ckr_name(rv: RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ckr_names_follow_the_spec() {
        assert_eq!(ckr_name(RvError::DeviceError), "CKR_DEVICE_ERROR");
        assert_eq!(
            ckr_name(RvError::SessionHandleInvalid),
            "CKR_SESSION_HANDLE_INVALID"
        );
        assert_eq!(ckr_name(RvError::DataLenRange), "CKR_DATA_LEN_RANGE");
    }

    #[test]
    fn internal_detail_does_not_reach_callers() {
        let e = Error::Hsm {
            hsm: "east-1".into(),
            detail: "/usr/lib/secret/path.so missing".into(),
        };
        let status = e.to_status();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("path.so"));
        let e = Error::Unavailable {
            key: "k".into(),
            detail: "east-1: CKR_DEVICE_ERROR".into(),
        };
        assert!(!e.to_status().message().contains("east-1"));
    }
}
