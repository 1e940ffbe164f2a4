//! The HTTP side of a stored response, computed once: the body and the header values that do not
//! change while the response is served (`ETag`, `Last-Modified`, `Expires`), and the CertID hash
//! algorithms it answers for. The responder fills it on first use ([`crate::responder`]); a
//! cache hit then formats and hashes nothing.

use crate::hash_alg::HashAlg;

/// See [`StoredResponse::http`]. Boxed: most responses the pre-signer handles are never served
/// by this process, and should not carry the space.
#[derive(Clone, Debug, Default)]
pub struct HttpMemo(pub std::sync::OnceLock<Box<HttpParts>>);

impl PartialEq for HttpMemo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for HttpMemo {}

/// The body and the headers of a response that do not change while it is served.
#[derive(Clone, Debug)]
pub struct HttpParts {
    pub body: axum::body::Bytes,
    /// The quoted hex SHA-256 of the DER.
    pub etag: axum::http::HeaderValue,
    /// thisUpdate as an HTTP date.
    pub last_modified: axum::http::HeaderValue,
    /// nextUpdate as an HTTP date.
    pub expires: axum::http::HeaderValue,
    /// The CertID hash algorithms the response has a SingleResponse for, read from the DER
    /// (`response::cert_id_hashes_in`; empty if it does not parse): the responder answers a
    /// request with this response only if its CertID hash is among them.
    pub cert_id_hashes: Vec<HashAlg>,
}
