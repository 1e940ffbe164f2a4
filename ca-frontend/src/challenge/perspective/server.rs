//! The perspective's side (`ca-frontend perspective`): `POST /check` behind an HTTPS listener
//! that asks for a client certificate from the configured CA, answered by its own
//! [`Validator`] with its own DNS server and address policy.

use std::path::Path;
use std::sync::Arc;

use axum::extract::State;

use crate::Error;
use crate::challenge::{CaaRequester, Validator};

use super::*;

struct Checker {
    name: String,
    validator: Validator,
}

/// The perspective's router: `POST /check`.
pub fn router(name: &str, validator: Validator) -> axum::Router {
    let checker = Arc::new(Checker {
        name: name.to_owned(),
        validator,
    });
    axum::Router::new()
        .route("/check", axum::routing::post(check))
        .with_state(checker)
}

/// `POST /check`: a [`CheckRequest`] in, a [`CheckReply`] out (JSON); a body that does not
/// parse is a 400 saying why.
async fn check(
    State(checker): State<Arc<Checker>>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::http::{StatusCode, header::CONTENT_TYPE};
    use axum::response::IntoResponse;
    let request: CheckRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("not a check request: {e}")).into_response();
        }
    };
    let result = match &request {
        CheckRequest::Challenge {
            kind,
            domain,
            key_authorization,
        } => {
            checker
                .validator
                .validate(*kind, domain, key_authorization)
                .await
        }
        CheckRequest::Caa {
            domain,
            wildcard,
            account_uri,
            method,
        } => {
            let requester = CaaRequester {
                account_uri,
                method: *method,
            };
            checker
                .validator
                .check_caa(domain, *wildcard, requester)
                .await
        }
    };
    if let Err(p) = &result {
        tracing::info!(check = request.label(), problem = %p, "check failed");
    }
    let reply = CheckReply {
        perspective: checker.name.clone(),
        ok: result.is_ok(),
        problem: result.err().map(|p| (p.kind.name().to_owned(), p.detail)),
    };
    match serde_json::to_vec(&reply) {
        Ok(json) => ([(CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The TLS acceptor of a perspective: its certificate, and client certificates from
/// `client_ca` required.
pub fn server_tls(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(client_ca)
        .map_err(|e| format!("{}: {e}", client_ca.display()))?
    {
        let c = c.map_err(|e| format!("{}: {e}", client_ca.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", client_ca.display()))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("client verifier: {e}"))?;
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves the perspective of `config` on `listener` until `shutdown`.
pub async fn serve(
    config: &PerspectiveConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let p = &config.perspective;
    let validator = Validator::new(
        &config.validation,
        &p.caa_identities,
        &p.allowed_special_tlds,
    )?;
    let acceptor = server_tls(
        &config.resolve(&p.cert),
        &config.resolve(&p.key),
        &config.resolve(&p.client_ca),
    )
    .map_err(|detail| Error::Config {
        path: "perspective.cert".into(),
        detail,
    })?;
    let app = router(&p.name, validator);
    let gate = hsmgate_signer_api::http_listener::Gate::new(Default::default());
    hsmgate_signer_api::http_listener::serve_with(listener, app, gate, shutdown, move |tcp| {
        let acceptor = acceptor.clone();
        async move { acceptor.accept(tcp).await }
    })
    .await
    .map_err(|e| Error::Internal(format!("perspective listener: {e}")))
}
