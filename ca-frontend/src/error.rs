//! The crate's error enum, and the RFC 8555 problem documents clients see.
//!
//! Internal errors ([`Error`]) carry the detail an operator needs and are logged; a client sees a
//! [`Problem`] with an RFC 8555 §6.7 type and a `detail` that says what was wrong with *its*
//! request, never the internals (a `serverInternal` problem says only that).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Everything that can go wrong inside the frontend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("config {path}: {detail}")]
    Config { path: String, detail: String },
    #[error("database ({db}): {detail}")]
    Db { db: &'static str, detail: String },
    #[error("signing gateway: {0}")]
    Gateway(String),
    #[error("OCSP publication: {0}")]
    Ocsp(#[from] ocsp::Error),
    #[error("certificate building: {0}")]
    Build(String),
    #[error("the pre-signing lint refused the certificate: {0}")]
    Lint(String),
    #[error("internal: {0}")]
    Internal(String),
    #[error(transparent)]
    Problem(#[from] Problem),
}

impl From<der::Error> for Error {
    fn from(e: der::Error) -> Self {
        Error::Build(e.to_string())
    }
}

/// RFC 8555 §6.7 error types (and RFC 9773's, none of which are new).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemType {
    AccountDoesNotExist,
    AlreadyReplaced,
    AlreadyRevoked,
    BadCsr,
    BadNonce,
    BadPublicKey,
    BadRevocationReason,
    BadSignatureAlgorithm,
    Caa,
    Connection,
    Dns,
    IncorrectResponse,
    InvalidContact,
    Malformed,
    OrderNotReady,
    RateLimited,
    RejectedIdentifier,
    ServerInternal,
    Tls,
    Unauthorized,
    UnsupportedIdentifier,
    UserActionRequired,
    Conflict,
}

impl ProblemType {
    /// The type's name after `urn:ietf:params:acme:error:`.
    pub fn name(self) -> &'static str {
        use ProblemType::*;
        match self {
            AccountDoesNotExist => "accountDoesNotExist",
            AlreadyReplaced => "alreadyReplaced",
            AlreadyRevoked => "alreadyRevoked",
            BadCsr => "badCSR",
            BadNonce => "badNonce",
            BadPublicKey => "badPublicKey",
            BadRevocationReason => "badRevocationReason",
            BadSignatureAlgorithm => "badSignatureAlgorithm",
            Caa => "caa",
            Connection => "connection",
            Dns => "dns",
            IncorrectResponse => "incorrectResponse",
            InvalidContact => "invalidContact",
            Malformed => "malformed",
            OrderNotReady => "orderNotReady",
            RateLimited => "rateLimited",
            RejectedIdentifier => "rejectedIdentifier",
            ServerInternal => "serverInternal",
            Tls => "tls",
            Unauthorized => "unauthorized",
            UnsupportedIdentifier => "unsupportedIdentifier",
            UserActionRequired => "userActionRequired",
            Conflict => "conflict",
        }
    }

    /// The HTTP status this type is sent with.
    pub fn status(self) -> StatusCode {
        use ProblemType::*;
        match self {
            AccountDoesNotExist | Unauthorized => StatusCode::FORBIDDEN,
            OrderNotReady | Conflict => StatusCode::FORBIDDEN,
            // As Boulder answers it: the request conflicts with a finalized order.
            AlreadyReplaced => StatusCode::CONFLICT,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ServerInternal => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// A problem document (RFC 7807) as an ACME client receives it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", kind.name())]
pub struct Problem {
    pub kind: ProblemType,
    pub detail: String,
    /// HTTP status, when not the type's usual one (e.g. 404, 405, 413).
    pub status: Option<StatusCode>,
    /// Seconds, for `rateLimited` (sent as `Retry-After`).
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            status: None,
            retry_after: None,
        }
    }

    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(ProblemType::Malformed, detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(ProblemType::Unauthorized, detail)
    }

    pub fn not_found(what: &str) -> Self {
        Self {
            status: Some(StatusCode::NOT_FOUND),
            ..Self::malformed(format!("no such {what}"))
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// The JSON body, also used for an order's or challenge's `error` field.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "type": format!("urn:ietf:params:acme:error:{}", self.kind.name()),
            "detail": self.detail,
            "status": self.status.unwrap_or(self.kind.status()).as_u16(),
        })
    }
}

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        match e {
            Error::Problem(p) => p,
            other => {
                // The operator gets the detail; the client only learns it was not its fault.
                tracing::error!(error = %other, "internal error answering an ACME request");
                Problem::new(
                    ProblemType::ServerInternal,
                    "the server could not complete the request; it was not recorded, try again",
                )
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status.unwrap_or(self.kind.status());
        let mut response = (status, self.to_json().to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            headers.insert(header::RETRY_AFTER, v);
        }
        response
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        Problem::from(self).into_response()
    }
}
