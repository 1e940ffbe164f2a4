//! Signing certificates through the gateway, over the workspace's one batching client
//! ([`hsmgate_signer_api::BatchSigner`]).
//!
//! The client does what every caller of the gateway needs: the `tbs-certificate` payload
//! declaration, gathering concurrent finalizations into one `SignBatch` call, a bound on the
//! calls in flight, and a retry on another gateway when one dies mid-call (`gateway.url` a list).
//! What is the CA's own stays here: the issuing key's signature algorithm, read from the
//! gateway once and named in every TBS, and the check that each signature was made with it.

use std::time::Duration;

use der::{Decode, Encode};
use hsmgate_signer_api::{BatchSigner, Payload, SignError, SignQueue};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use crate::Error;
use crate::issuance::signature_algorithm;

/// `SignBatch` calls in flight at once for issuance: finalizations arrive far more slowly than
/// a batch is signed, so a few calls keep up and leave the gateway's capacity to OCSP signing.
const IN_FLIGHT: usize = 4;

/// A client for the gateway(s) at `urls` (see [`BatchSigner::connect_lazy`]), `batch` TBSs
/// per call, each call (its retries on another gateway included) within `timeout`.
pub fn connect(
    urls: &str,
    tls: Option<&hsmgate_signer_api::client::ClientTls>,
    batch: usize,
    timeout: Duration,
) -> Result<BatchSigner, Error> {
    Ok(BatchSigner::connect_lazy(urls, tls)
        .map_err(|e| match e {
            // The endpoint's own words: the URL or TLS file that is wrong.
            SignError::Endpoint(e) => Error::Gateway(e.to_string()),
            other => sign_error(other),
        })?
        .with_batch(batch)
        .with_in_flight(IN_FLIGHT)
        .with_timeout(timeout))
}

/// The issuing key as the gateway holds it: signs TBS certificates through a queue of the
/// batching client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct IssuingKey {
    queue: SignQueue,
    /// The issuing key's signature algorithm, as put in each TBS.
    pub algorithm: AlgorithmIdentifierOwned,
    /// `algorithm` in DER, as the gateway names the algorithm of each signature.
    pub algorithm_der: Vec<u8>,
}

impl IssuingKey {
    /// Asks the gateway for the issuing key `key` and starts its signing queue; returns the key
    /// too, for the caller to check against the intermediate certificate.
    pub async fn start(
        gateway: &BatchSigner,
        key: &str,
    ) -> Result<(Self, SubjectPublicKeyInfoOwned), Error> {
        let public = gateway.public_key(key).await.map_err(sign_error)?;
        let spki = SubjectPublicKeyInfoOwned::from_der(&public.spki_der)?;
        let algorithm = signature_algorithm(public.key_type)?;
        let algorithm_der = algorithm.to_der()?;
        let queue = gateway.queue(key, Payload::TbsCertificate);
        Ok((
            Self {
                queue,
                algorithm,
                algorithm_der,
            },
            spki,
        ))
    }

    /// The signature over `tbs` (DER for ECDSA), made in whichever batch it joins.
    pub async fn sign(&self, tbs: Vec<u8>) -> Result<Vec<u8>, Error> {
        let signed = self.queue.sign(tbs).await.map_err(sign_error)?;
        // The TBS names the algorithm; a signature by another would not verify as the
        // certificate says (and `assemble` would refuse it later, less clearly).
        if signed.algorithm_identifier != self.algorithm_der {
            return Err(Error::Gateway(
                "the gateway signed with another algorithm than the TBS names".into(),
            ));
        }
        Ok(signed.signature)
    }
}

/// The gateway client's failure as the frontend's: a stopped queue is ours (internal), anything
/// else the gateway's (its status code kept in the text for the operator).
pub(crate) fn sign_error(e: SignError) -> Error {
    match e {
        SignError::Stopped => Error::Internal("the signing queue stopped".into()),
        other => Error::Gateway(other.to_string()),
    }
}
