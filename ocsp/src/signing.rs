//! Signing OCSP responses: the [`TbsSigner`] seam between the ASN.1 ([`crate::response`]) and
//! the signing gateway, and the orchestration that turns `(serial, status)` items into stored
//! responses — validity clamped to a revocation, one `ResponseData` per item from the issuer's
//! template, one batched signing call, and each signature checked and attached.
//!
//! ```text
//!  (serial, status) ──▶ ResponseData (DER, response::template) ──TbsSigner::sign──▶ BatchSigner
//!                                                                    │ signature, AlgorithmIdentifier
//!  StoredResponse { der: OCSPResponse } ◀── BasicOCSPResponse ◀──────┘
//! ```
//!
//! The pre-signer ([`crate::presigner`]) is the production caller, through
//! [`hsmgate_signer_api::BatchSigner`]; tests and benchmarks sign with stand-ins.

use std::fmt;

use async_trait::async_trait;
use hsmgate_signer_api::{BatchSigner, Payload};

use crate::config::CertIdHashes;
use crate::error::Error;
use crate::issuers::Issuer;
use crate::record::{CertStatus, Serial, StoredResponse};
use crate::response::{encoding, template};

/// Signs DER blobs with a named key and says which algorithm it used.
#[async_trait]
pub trait TbsSigner: Send + Sync + fmt::Debug {
    /// Signs each of `tbs` (the data itself, not a digest) with `key`; returns, in order,
    /// `(signature, DER AlgorithmIdentifier)` — the signature as it goes into a BIT STRING
    /// (a DER `Ecdsa-Sig-Value` for ECDSA, the raw signature for RSA).
    async fn sign(&self, key: &str, tbs: Vec<Vec<u8>>) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Error>;
}

/// [`TbsSigner`] through the gateway's `SignBatch`, declared as OCSP `ResponseData` (so the
/// gateway grants it as `sign-ocsp` and, for keys that check payloads, parses each item), with
/// the key's default algorithm (ECDSA with SHA-256 for P-256, RSA PKCS#1 v1.5 with SHA-256).
#[async_trait]
impl TbsSigner for BatchSigner {
    async fn sign(&self, key: &str, tbs: Vec<Vec<u8>>) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Error> {
        let signed = self.sign_all(key, Payload::OcspResponseData, tbs).await?;
        Ok(signed
            .into_iter()
            .map(|s| (s.signature, s.algorithm_identifier))
            .collect())
    }
}

/// Builds, signs (one gateway signature per item, batched) and encodes a complete
/// `OCSPResponse` for each of `items`, in order. Times are Unix seconds (UTC); the caller
/// chooses them (see the pre-signer for the validity rules).
///
/// RFC 6960 §4.2.1:
///
/// ```text
/// OCSPResponse ::= SEQUENCE {
///     responseStatus         OCSPResponseStatus,
///     responseBytes          [0] EXPLICIT ResponseBytes OPTIONAL }
///
/// ResponseBytes ::= SEQUENCE {
///     responseType   OBJECT IDENTIFIER,    -- id-pkix-ocsp-basic
///     response       OCTET STRING }
///
/// BasicOCSPResponse ::= SEQUENCE {
///     tbsResponseData      ResponseData,
///     signatureAlgorithm   AlgorithmIdentifier,
///     signature            BIT STRING,
///     certs            [0] EXPLICIT SEQUENCE OF Certificate OPTIONAL }
/// ```
///
/// "The value for signature SHALL be computed on the hash of the DER encoding of
/// ResponseData" (§4.2.1): the gateway receives that DER and hashes it itself.
/// `signatureAlgorithm` is the AlgorithmIdentifier the gateway returned for the signature it
/// made; `certs` is absent because the issuer signs directly (no delegated responder). Each
/// `ResponseData` carries two SingleResponses (SHA-1 and SHA-256 CertIDs) under one signature:
/// the layout responses were stored in before one response per hash (see `response::response_data`, the
/// encoder the template is checked against);
/// the pre-signer uses [`sign_responses_with`] with one hash at a time.
pub async fn sign_responses(
    signer: &dyn TbsSigner,
    issuer: &Issuer,
    items: &[(Serial, CertStatus)],
    this_update: i64,
    next_update: i64,
    produced_at: i64,
) -> Result<Vec<StoredResponse>, Error> {
    let hashes = CertIdHashes::default();
    sign_responses_with(
        signer,
        issuer,
        &hashes,
        items,
        this_update,
        next_update,
        produced_at,
    )
    .await
}

/// [`sign_responses`] with one SingleResponse per CertID hash in `hashes` (the pre-signer
/// passes one hash per call). One signature per item whatever `hashes` holds.
pub async fn sign_responses_with(
    signer: &dyn TbsSigner,
    issuer: &Issuer,
    hashes: &CertIdHashes,
    items: &[(Serial, CertStatus)],
    this_update: i64,
    next_update: i64,
    produced_at: i64,
) -> Result<Vec<StoredResponse>, Error> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    if next_update <= this_update {
        return Err(encoding(
            "nextUpdate",
            format!("{next_update} is not after thisUpdate {this_update}"),
        ));
    }
    // The batch's constant bytes once (see `template`): per response, only the serial, the
    // status and the times are written.
    let template = template::Template::new(issuer, hashes);
    let produced = template::time_bytes(produced_at, "producedAt")?;
    let times = (
        template::time_bytes(this_update, "thisUpdate")?,
        template::time_bytes(next_update, "nextUpdate")?,
    );
    let mut tbs = Vec::with_capacity(items.len());
    let mut validity = Vec::with_capacity(items.len());
    for (serial, status) in items {
        let (this, next) = not_before_revocation(*status, this_update, next_update, produced_at);
        // Only a revocation clamped to its revocation time has times of its own.
        let own;
        let (this_bytes, next_bytes) = if (this, next) == (this_update, next_update) {
            (&times.0, &times.1)
        } else {
            own = (
                template::time_bytes(this, "thisUpdate")?,
                template::time_bytes(next, "nextUpdate")?,
            );
            (&own.0, &own.1)
        };
        let serial = template::SerialDer::new(serial)?;
        tbs.push(template.response_data(&serial, *status, this_bytes, next_bytes, &produced)?);
        validity.push((this, next));
    }
    let signatures = signer.sign(&issuer.signing_key, tbs.clone()).await?;
    if signatures.len() != items.len() {
        return Err(Error::Encoding {
            what: "signer answer".into(),
            detail: format!(
                "{} signatures for {} responses",
                signatures.len(),
                items.len()
            ),
        });
    }
    let mut out = Vec::with_capacity(items.len());
    let mut algorithms = template::AlgorithmCheck::default();
    for (((tbs, (signature, algorithm)), (_, status)), (this_update, next_update)) in
        tbs.iter().zip(signatures).zip(items).zip(validity)
    {
        algorithms.check(&algorithm)?;
        out.push(StoredResponse {
            status: *status,
            this_update,
            next_update,
            der: template::ocsp_response(tbs, &algorithm, &signature),
            http: Default::default(),
        });
    }
    Ok(out)
}

/// The (thisUpdate, nextUpdate) of a response with `status`, given the backdated validity the
/// caller chose: a revocation's thisUpdate never precedes its revocationTime.
///
/// RFC 6960 §2.4: thisUpdate is "the most recent time at which the status being indicated is
/// known by the responder to have been correct". A revoked response backdated to before the
/// revocation would claim the certificate was known revoked at a time it was not yet (issue 12:
/// thisUpdate an hour before revocationTime). Let's Encrypt's responses never show that either:
/// Boulder signs a revocation's first response after recording it, with thisUpdate no earlier
/// than the revocation. So the backdate is clamped to the revocation time, and never past
/// `produced_at` (a revocation time in the future cannot move thisUpdate after the signing);
/// nextUpdate moves with it, so the validity period stays what the caller chose.
fn not_before_revocation(
    status: CertStatus,
    this_update: i64,
    next_update: i64,
    produced_at: i64,
) -> (i64, i64) {
    match status {
        CertStatus::Revoked { at, .. } if at > this_update => {
            let clamped = at.min(produced_at).max(this_update);
            (clamped, next_update + (clamped - this_update))
        }
        _ => (this_update, next_update),
    }
}
