//! The directory (RFC 8555 §7.1.1), with the profiles and CAA identities in its `meta`, and
//! `newNonce` (§7.2).

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::Response;

use super::{Shared, json_response};

pub(super) async fn directory(State(ca): Shared) -> Response {
    let profiles: serde_json::Map<String, serde_json::Value> = ca
        .config
        .ca
        .profiles
        .iter()
        .map(|p| {
            let text = p
                .description
                .clone()
                .unwrap_or_else(|| format!("{} hours", p.validity_hours));
            (p.name.clone(), serde_json::Value::String(text))
        })
        .collect();
    let mut meta = serde_json::json!({
        "caaIdentities": ca.config.ca.caa_identities,
        "profiles": profiles,
    });
    if let Some(tos) = &ca.config.server.terms_of_service {
        meta["termsOfService"] = serde_json::Value::String(tos.clone());
    }
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "newNonce": ca.url("/acme/new-nonce"),
            "newAccount": ca.url("/acme/new-account"),
            "newOrder": ca.url("/acme/new-order"),
            "revokeCert": ca.url("/acme/revoke-cert"),
            "keyChange": ca.url("/acme/key-change"),
            "renewalInfo": ca.url("/acme/renewal-info"),
            "meta": meta,
        }),
    )
}

pub(super) async fn new_nonce(method: Method) -> StatusCode {
    // RFC 8555 §7.2: 200 to HEAD, 204 to GET.
    if method == Method::HEAD {
        StatusCode::OK
    } else {
        StatusCode::NO_CONTENT
    }
}
