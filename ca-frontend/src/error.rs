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

/// Declares [`ProblemType`], its [`ProblemType::ALL`] list and [`ProblemType::name`] from one
/// table, so that a type cannot be added to one and forgotten in another.
macro_rules! problem_types {
    ($($variant:ident => $name:literal,)+) => {
        /// RFC 8555 §6.7 error types, RFC 9773's `alreadyReplaced` and the profiles draft's
        /// `invalidProfile` (draft-ietf-acme-profiles, as Boulder and Pebble send it).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum ProblemType {
            $($variant,)+
        }

        impl ProblemType {
            /// Every type, for the status table's test.
            pub const ALL: &[ProblemType] = &[$(ProblemType::$variant,)+];

            /// The type's name after `urn:ietf:params:acme:error:`.
            pub fn name(self) -> &'static str {
                match self {
                    $(ProblemType::$variant => $name,)+
                }
            }

            /// The type named `name` (after `urn:ietf:params:acme:error:`), if it is one.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(ProblemType::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

problem_types! {
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
    InvalidProfile => "invalidProfile",
    Malformed => "malformed",
    OrderNotReady => "orderNotReady",
    RateLimited => "rateLimited",
    RejectedIdentifier => "rejectedIdentifier",
    ServerInternal => "serverInternal",
    Tls => "tls",
    Unauthorized => "unauthorized",
    UnsupportedContact => "unsupportedContact",
    UnsupportedIdentifier => "unsupportedIdentifier",
    UserActionRequired => "userActionRequired",
    Conflict => "conflict",
}

impl ProblemType {
    /// The HTTP status this type is sent with: Boulder's (`probs/probs.go`) and Pebble's
    /// (`acme/problems.go`) choices, which agree wherever both send a type. RFC 8555 fixes few
    /// statuses; where it does (403 for `userActionRequired` in §7.3.3, 409 for a key change to
    /// a key in use in §7.3.5) these match it. `incorrectResponse`, which neither sends, is a
    /// client error like the other validation failures. A problem may carry another status
    /// (404 for an unknown resource, 405, 413, 415: all `malformed`, as both send them).
    pub fn status(self) -> StatusCode {
        use ProblemType::*;
        match self {
            // The request is understood and authenticated, and refused.
            Unauthorized | OrderNotReady | UserActionRequired | Caa => StatusCode::FORBIDDEN,
            // It conflicts with the state of another resource.
            AlreadyReplaced | Conflict => StatusCode::CONFLICT,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ServerInternal => StatusCode::INTERNAL_SERVER_ERROR,
            // Everything else is the client's to fix, `accountDoesNotExist` included (an
            // `onlyReturnExisting` look-up for an unknown key; some clients treat a 403 there
            // as fatal and never create their account).
            AccountDoesNotExist
            | AlreadyRevoked
            | BadCsr
            | BadNonce
            | BadPublicKey
            | BadRevocationReason
            | BadSignatureAlgorithm
            | Connection
            | Dns
            | IncorrectResponse
            | InvalidContact
            | InvalidProfile
            | Malformed
            | RejectedIdentifier
            | Tls
            | UnsupportedContact
            | UnsupportedIdentifier => StatusCode::BAD_REQUEST,
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
        let mut body = serde_json::json!({
            "type": format!("urn:ietf:params:acme:error:{}", self.kind.name()),
            "detail": self.detail,
            "status": self.status.unwrap_or(self.kind.status()).as_u16(),
        });
        // RFC 8555 §6.2: a badSignatureAlgorithm problem "MUST include an `algorithms` field".
        if self.kind == ProblemType::BadSignatureAlgorithm {
            body["algorithms"] = serde_json::json!(crate::jws::ALGORITHMS);
        }
        body
    }
}

/// What a client is told to wait when the CA's database or gateway fails (`Retry-After`).
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        match e {
            Error::Problem(p) => p,
            // The database or the signing gateway failing is the CA's outage, not the client's
            // mistake: 503 with Retry-After (RFC 8555 §6.6 leaves the wait to the server), so
            // clients back off and come back rather than giving up; nothing half-done was kept.
            Error::Db { .. } | Error::Gateway(_) => {
                tracing::error!(error = %e, "the CA is unavailable for an ACME request");
                let what = if matches!(e, Error::Db { .. }) {
                    "database"
                } else {
                    "signing service"
                };
                Problem {
                    status: Some(StatusCode::SERVICE_UNAVAILABLE),
                    retry_after: Some(UNAVAILABLE_RETRY_AFTER_SECS),
                    ..Problem::new(
                        ProblemType::ServerInternal,
                        format!(
                            "the CA's {what} is unavailable; the request was not recorded, \
                             retry after {UNAVAILABLE_RETRY_AFTER_SECS} s"
                        ),
                    )
                }
            }
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
        // For `hsmgate_acme_problems_total{type}` (crate::metrics::count_requests).
        response.extensions_mut().insert(self.kind);
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

/// The longest plain-text rejection read back into a problem's detail.
const MAX_REJECTION_TEXT: usize = 1024;

/// Middleware: an error response that is not a problem document becomes one. axum's own
/// extractor rejections (a path segment that is not UTF-8, as `/acme/renewal-info/%FF`) are
/// `text/plain`; RFC 8555 §6.7 wants `application/problem+json` for every error. Their text
/// becomes the `malformed` (or, for a 5xx, `serverInternal`) detail; the status is kept.
pub async fn problem_for_rejections(response: Response) -> Response {
    use http_body_util::BodyExt;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let body = http_body_util::Limited::new(response.into_body(), MAX_REJECTION_TEXT)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let kind = if status.is_server_error() {
        ProblemType::ServerInternal
    } else {
        ProblemType::Malformed
    };
    let detail = if text.trim().is_empty() || kind == ProblemType::ServerInternal {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text.trim().to_owned()
    };
    Problem::new(kind, detail)
        .with_status(status)
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every problem type's status, as Boulder (`probs/probs.go`) and Pebble
    /// (`acme/problems.go`) send it; `incorrectResponse` is neither's (400, as its kin).
    #[test]
    fn each_problem_type_has_boulders_and_pebbles_status() {
        use ProblemType::*;
        let table = [
            (AccountDoesNotExist, "accountDoesNotExist", 400),
            (AlreadyReplaced, "alreadyReplaced", 409),
            (AlreadyRevoked, "alreadyRevoked", 400),
            (BadCsr, "badCSR", 400),
            (BadNonce, "badNonce", 400),
            (BadPublicKey, "badPublicKey", 400),
            (BadRevocationReason, "badRevocationReason", 400),
            (BadSignatureAlgorithm, "badSignatureAlgorithm", 400),
            (Caa, "caa", 403),
            (Connection, "connection", 400),
            (Dns, "dns", 400),
            (IncorrectResponse, "incorrectResponse", 400),
            (InvalidContact, "invalidContact", 400),
            (InvalidProfile, "invalidProfile", 400),
            (Malformed, "malformed", 400),
            (OrderNotReady, "orderNotReady", 403),
            (RateLimited, "rateLimited", 429),
            (RejectedIdentifier, "rejectedIdentifier", 400),
            (ServerInternal, "serverInternal", 500),
            (Tls, "tls", 400),
            (Unauthorized, "unauthorized", 403),
            (UnsupportedContact, "unsupportedContact", 400),
            (UnsupportedIdentifier, "unsupportedIdentifier", 400),
            (UserActionRequired, "userActionRequired", 403),
            (Conflict, "conflict", 409),
        ];
        assert_eq!(
            table.len(),
            ProblemType::ALL.len(),
            "every type is in the table"
        );
        assert_eq!(
            ProblemType::from_name("Unauthorized"),
            None,
            "names are exact"
        );
        for (kind, name, status) in table {
            assert!(ProblemType::ALL.contains(&kind));
            assert_eq!(kind.name(), name);
            assert_eq!(ProblemType::from_name(name), Some(kind));
            assert_eq!(kind.status().as_u16(), status, "{name}");
            let problem = Problem::new(kind, "x");
            let response = problem.clone().into_response();
            assert_eq!(response.status().as_u16(), status, "{name}");
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "application/problem+json"
            );
            let json = problem.to_json();
            assert_eq!(json["status"], status, "{name}");
            assert_eq!(
                json["type"],
                format!("urn:ietf:params:acme:error:{name}"),
                "{name}"
            );
        }
    }

    #[test]
    fn bad_signature_algorithm_lists_the_algorithms() {
        let json = Problem::new(ProblemType::BadSignatureAlgorithm, "x").to_json();
        assert_eq!(
            json["algorithms"],
            serde_json::json!(crate::jws::ALGORITHMS)
        );
        assert!(
            Problem::malformed("x")
                .to_json()
                .get("algorithms")
                .is_none()
        );
    }

    #[tokio::test]
    async fn plain_text_rejections_become_problem_documents() {
        let plain = (StatusCode::BAD_REQUEST, "Invalid URL: not UTF-8").into_response();
        let response = problem_for_rejections(plain).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let ok = problem_for_rejections((StatusCode::OK, "fine").into_response()).await;
        assert_eq!(
            ok.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }

    /// A database or gateway outage is a 503 with Retry-After that says what failed (never the
    /// internals), not a bare 500; other internal errors stay a plain serverInternal.
    #[test]
    fn outages_answer_503_with_retry_after() {
        let outages = [
            (
                Error::Db {
                    db: "postgres",
                    detail: "connection refused (secret internals)".into(),
                },
                "database",
            ),
            (
                Error::Gateway("no gateway answered (secret internals)".into()),
                "signing service",
            ),
        ];
        for (error, what) in outages {
            let problem = Problem::from(error);
            assert!(problem.detail.contains(what), "{}", problem.detail);
            assert!(!problem.detail.contains("secret"), "{}", problem.detail);
            let response = problem.into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                response.headers().get(header::RETRY_AFTER),
                Some(&HeaderValue::from_static("5"))
            );
        }
        let internal = Problem::from(Error::Internal("x".into())).into_response();
        assert_eq!(internal.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(internal.headers().get(header::RETRY_AFTER).is_none());
    }
}
