//! The one batching signing client every caller of the gateway uses: the OCSP pre-signer and
//! CRL updater (`ocsp`), the ACME frontend's issuance (`ca-frontend`) and `hsm-bench`'s
//! drills.
//!
//! ```text
//!  sign_all(key, payload, [m1 … mN]) ──chunks of `batch`──▶ SignBatch ┐  at most `in_flight`
//!  queue(key, payload).sign(m) ┐                                       ├─ calls at once, shared
//!  queue(key, payload).sign(m) ┼─ gathered while calls run ─▶ SignBatch ┘  by every clone
//!  sign_one(key, alg, payload, m) ───────────────────────────▶ Sign (a CRL shard: one per call)
//! ```
//!
//! What the gateway needs from a caller, said once here rather than by each of them:
//! - **the payload declaration** ([`Payload`], sent as [`crate::PAYLOAD_HEADER`]): it selects the
//!   grant (`sign-certificate`, `sign-ocsp`, `sign-crl`, else `sign-raw`) and, for keys that
//!   check payloads, the parser every item must pass;
//! - **batching**: a pair of HSMs reaches its rated rate only with several batches in flight
//!   (README, "Speed"), so calls are `SignBatch` of up to `batch` items with up to `in_flight`
//!   of them running at once — one bound for all the clones of a client, so that a pre-signer
//!   and a CRL updater sharing one cannot together overrun the gateway's per-client limit;
//! - **a deadline per call** (`grpc-timeout`), within which the gateway retries on another HSM;
//! - **another gateway when one dies**: a call that fails in transport (the gateway gone or
//!   unreachable, see [`crate::client::is_transport_failure`]) is repeated, within its deadline,
//!   once the channel's health probe has taken the dead gateway out of a list
//!   (`https://gw1,https://gw2`). Signing is idempotent: a repeated call may have been signed
//!   by the gateway that died, but that answer never reached the caller;
//! - **answers checked**: as many signatures as items, each with the algorithm that made it.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt, stream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::client::{self, ClientTls, PROBE_INTERVAL};
use crate::v1::signer_client::SignerClient;
use crate::v1::{
    GetPublicKeyRequest, SignBatchRequest, SignRequest, SignResponse, SignatureAlgorithm,
    sign_request,
};

/// How long one gateway call may take by default: the gateway retries on another HSM within
/// it, so it covers a failover; a batch of 256 takes ~70 ms.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// `SignBatch` calls in flight at once by default: the gateway reaches its full rate with ~8
/// batches of 256 in flight.
pub const DEFAULT_IN_FLIGHT: usize = 8;
/// Items per `SignBatch` call by default.
pub const DEFAULT_BATCH: usize = 256;
/// Largest gRPC message either way: a batch of 256 certificates, or a CRL shard of tens of MB.
const MAX_MESSAGE: usize = 64 << 20;

/// What the items of a call are, declared to the gateway ([`crate::PAYLOAD_HEADER`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Undeclared bytes (operation `sign-raw`).
    Raw,
    /// X.509 `TBSCertificate`s (`sign-certificate`).
    TbsCertificate,
    /// OCSP `ResponseData` (`sign-ocsp`).
    OcspResponseData,
    /// A CRL's `TBSCertList` (`sign-crl`); large, so one per [`BatchSigner::sign_one`] call.
    TbsCertList,
}

impl Payload {
    /// The header value, or `None` for [`Payload::Raw`] (no header).
    fn header(self) -> Option<&'static str> {
        match self {
            Payload::Raw => None,
            Payload::TbsCertificate => Some(crate::PAYLOAD_TBS_CERTIFICATE),
            Payload::OcspResponseData => Some(crate::PAYLOAD_OCSP_RESPONSE_DATA),
            Payload::TbsCertList => Some(crate::PAYLOAD_TBS_CERT_LIST),
        }
    }
}

/// One signature and the DER `AlgorithmIdentifier` of the algorithm that made it, as the
/// gateway answered (ECDSA signatures are DER `Ecdsa-Sig-Value`s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub signature: Vec<u8>,
    pub algorithm_identifier: Vec<u8>,
}

/// A key as the gateway holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    /// DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
    /// `hsmgate.signer.v1.KeyType` as its number.
    pub key_type: i32,
}

/// What a signing call can fail with. The gateway's status is kept whole: its code says whether
/// retrying can help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    #[error("{call}: the gateway answered {code:?}: {message}")]
    Gateway {
        call: &'static str,
        code: tonic::Code,
        message: String,
    },
    #[error("{call}: the gateway's answer is unusable: {detail}")]
    Answer { call: &'static str, detail: String },
    #[error("gateway endpoint: {0}")]
    Endpoint(#[from] client::Error),
    #[error("the signing queue has stopped")]
    Stopped,
}

impl SignError {
    /// The same failure again, for each item of a failed batch.
    fn for_each_item(&self) -> SignError {
        match self {
            SignError::Gateway {
                call,
                code,
                message,
            } => SignError::Gateway {
                call,
                code: *code,
                message: message.clone(),
            },
            SignError::Answer { call, detail } => SignError::Answer {
                call,
                detail: detail.clone(),
            },
            SignError::Stopped => SignError::Stopped,
            other => SignError::Answer {
                call: "SignBatch",
                detail: other.to_string(),
            },
        }
    }

    /// The gRPC code, when the gateway (or the transport to it) answered with one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            SignError::Gateway { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The batching signing client; cheap to clone (clones share the channel and the bound on
/// calls in flight).
#[derive(Clone, Debug)]
pub struct BatchSigner {
    client: SignerClient<Channel>,
    batch: usize,
    in_flight: usize,
    slots: Arc<Semaphore>,
    timeout: Duration,
}

impl BatchSigner {
    /// A client over `channel` with the defaults ([`DEFAULT_BATCH`], [`DEFAULT_IN_FLIGHT`],
    /// [`DEFAULT_TIMEOUT`]).
    pub fn new(channel: Channel) -> Self {
        Self {
            client: SignerClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            batch: DEFAULT_BATCH,
            in_flight: DEFAULT_IN_FLIGHT,
            slots: Arc::new(Semaphore::new(DEFAULT_IN_FLIGHT)),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A client for the gateway(s) at `urls` (one URL or a comma-separated list, see
    /// [`client::connect_lazy`]). Does not connect: the channel connects on first use and
    /// reconnects by itself, so a caller starts while the gateway is down.
    pub fn connect_lazy(urls: &str, tls: Option<&ClientTls>) -> Result<Self, SignError> {
        Ok(Self::new(client::connect_lazy(urls, tls)?))
    }

    /// Items per `SignBatch` call (at least 1).
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// `SignBatch` calls in flight at once, over all clones made from now on (at least 1).
    pub fn with_in_flight(mut self, in_flight: usize) -> Self {
        self.in_flight = in_flight.max(1);
        self.slots = Arc::new(Semaphore::new(self.in_flight));
        self
    }

    /// Deadline of each gateway call, retries on another gateway included.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Items per `SignBatch` call.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The gRPC client, for the calls this type does not wrap (`ListKeys`).
    pub fn client(&self) -> SignerClient<Channel> {
        self.client.clone()
    }

    /// `key` as the gateway holds it.
    pub async fn public_key(&self, key: &str) -> Result<PublicKey, SignError> {
        let answer = self
            .retried("GetPublicKey", self.timeout, |mut client, left| {
                let mut request = tonic::Request::new(GetPublicKeyRequest {
                    key: key.to_owned(),
                });
                request.set_timeout(left);
                async move { client.get_public_key(request).await }
            })
            .await?
            .into_inner();
        if answer.spki_der.is_empty() {
            return Err(SignError::Answer {
                call: "GetPublicKey",
                detail: format!("no public key for `{key}`"),
            });
        }
        Ok(PublicKey {
            spki_der: answer.spki_der,
            key_type: answer.key_type,
        })
    }

    /// Signs each of `messages` (the data itself; the gateway hashes with the key's default
    /// algorithm) with `key`; the signatures come back in order. Calls of [`Self::batch`] items
    /// run up to `in_flight` at once; the first failure fails the whole call.
    pub async fn sign_all(
        &self,
        key: &str,
        payload: Payload,
        messages: Vec<Vec<u8>>,
    ) -> Result<Vec<Signature>, SignError> {
        let mut chunks = Vec::with_capacity(messages.len().div_ceil(self.batch));
        let mut rest = messages.into_iter().peekable();
        while rest.peek().is_some() {
            chunks.push(rest.by_ref().take(self.batch).collect::<Vec<_>>());
        }
        // `buffered` keeps the answers in request order; the semaphore in `sign_batch` bounds
        // the calls over all clones.
        let signed: Vec<Vec<Signature>> = stream::iter(chunks)
            .map(|chunk| self.sign_batch(key, payload, chunk))
            .buffered(self.in_flight)
            .try_collect()
            .await?;
        Ok(signed.into_iter().flatten().collect())
    }

    /// Signs one message with `Sign`, naming the `algorithm` it was built for (a CRL or a
    /// certificate names its signature algorithm inside what is signed; `Unspecified` for the
    /// key's default). The deadline grows by a second per 4 MB: a CRL shard can be tens of MB.
    pub async fn sign_one(
        &self,
        key: &str,
        algorithm: SignatureAlgorithm,
        payload: Payload,
        message: Vec<u8>,
    ) -> Result<Signature, SignError> {
        let timeout = self.timeout + Duration::from_secs((message.len() >> 22) as u64);
        let item = SignRequest {
            key: key.to_owned(),
            algorithm: algorithm as i32,
            input: Some(sign_request::Input::Message(message)),
        };
        let answer = self
            .retried("Sign", timeout, |mut client, left| {
                let request = declared(item.clone(), payload, left);
                async move { client.sign(request).await }
            })
            .await?
            .into_inner();
        checked("Sign", 0, answer)
    }

    /// A queue that gathers single signatures with `key` from concurrent tasks into
    /// `SignBatch` calls: finalizations that arrive together share a round trip and the HSM's
    /// batch. Its task ends when every clone of the queue is dropped.
    pub fn queue(&self, key: &str, payload: Payload) -> SignQueue {
        let (jobs, rx) = mpsc::channel(self.batch * 16);
        tokio::spawn(gather(self.clone(), key.to_owned(), payload, rx));
        SignQueue { jobs }
    }

    /// One `SignBatch` call of `chunk`, holding one of the in-flight slots.
    async fn sign_batch(
        &self,
        key: &str,
        payload: Payload,
        chunk: Vec<Vec<u8>>,
    ) -> Result<Vec<Signature>, SignError> {
        let _slot = self.slots.acquire().await.map_err(|_| SignError::Stopped)?;
        let asked = chunk.len();
        let batch = SignBatchRequest {
            requests: chunk
                .into_iter()
                .map(|message| SignRequest {
                    key: key.to_owned(),
                    // The key's default algorithm; the answer names the one used.
                    algorithm: SignatureAlgorithm::Unspecified as i32,
                    input: Some(sign_request::Input::Message(message)),
                })
                .collect(),
        };
        let responses = self
            .retried("SignBatch", self.timeout, |mut client, left| {
                let request = declared(batch.clone(), payload, left);
                async move { client.sign_batch(request).await }
            })
            .await?
            .into_inner()
            .responses;
        if responses.len() != asked {
            return Err(SignError::Answer {
                call: "SignBatch",
                detail: format!("{} signatures for {asked} requests", responses.len()),
            });
        }
        responses
            .into_iter()
            .enumerate()
            .map(|(i, r)| checked("SignBatch", i, r))
            .collect()
    }

    /// `call`, repeated while it fails in transport and `timeout` has not passed; each attempt
    /// gets what is left of the deadline. The pause lets the channel's probe take a dead gateway
    /// out of the list before the next attempt.
    async fn retried<T, F, Fut>(
        &self,
        name: &'static str,
        timeout: Duration,
        mut call: F,
    ) -> Result<T, SignError>
    where
        F: FnMut(SignerClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match call(self.client.clone(), left).await {
                Ok(answer) => return Ok(answer),
                Err(status)
                    if client::is_transport_failure(&status) && left > 2 * PROBE_INTERVAL =>
                {
                    tracing::warn!(call = name, error = %status.message(), "gateway unreachable; retrying on another");
                    tokio::time::sleep(2 * PROBE_INTERVAL).await;
                }
                Err(status) => {
                    return Err(SignError::Gateway {
                        call: name,
                        code: status.code(),
                        message: status.message().to_owned(),
                    });
                }
            }
        }
    }
}

/// The handle of a [`BatchSigner::queue`]; cheap to clone.
#[derive(Clone, Debug)]
pub struct SignQueue {
    jobs: mpsc::Sender<Job>,
}

#[derive(Debug)]
struct Job {
    message: Vec<u8>,
    reply: oneshot::Sender<Result<Signature, SignError>>,
}

impl SignQueue {
    /// The signature over `message`, made in whichever batch it joins.
    pub async fn sign(&self, message: Vec<u8>) -> Result<Signature, SignError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { message, reply })
            .await
            .map_err(|_| SignError::Stopped)?;
        answer.await.map_err(|_| SignError::Stopped)?
    }
}

/// The queue's task: takes what has queued (up to a batch) and sends it as one call, each call in
/// its own task so that calls overlap up to the signer's in-flight bound.
async fn gather(signer: BatchSigner, key: String, payload: Payload, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        // Wait for a slot before gathering: whatever queues meanwhile joins this call.
        let Ok(slot) = signer.slots.clone().acquire_owned().await else {
            return;
        };
        let mut jobs = vec![first];
        while jobs.len() < signer.batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        drop(slot); // `sign_batch` takes its own; this one only paced the gathering.
        let signer = signer.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let (messages, replies): (Vec<_>, Vec<_>) =
                jobs.into_iter().map(|j| (j.message, j.reply)).unzip();
            match signer.sign_batch(&key, payload, messages).await {
                Ok(signatures) => {
                    for (reply, signature) in replies.into_iter().zip(signatures) {
                        let _ = reply.send(Ok(signature));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.for_each_item()));
                    }
                }
            }
        });
    }
}

/// `message` as a request with its payload declared and `timeout` as its `grpc-timeout`.
fn declared<M>(message: M, payload: Payload, timeout: Duration) -> tonic::Request<M> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    if let Some(value) = payload.header() {
        request
            .metadata_mut()
            .insert(crate::PAYLOAD_HEADER, MetadataValue::from_static(value));
    }
    request
}

/// A gateway answer must carry a signature and the algorithm that made it.
fn checked(call: &'static str, index: usize, r: SignResponse) -> Result<Signature, SignError> {
    if r.signature.is_empty() || r.algorithm_identifier.is_empty() {
        return Err(SignError::Answer {
            call,
            detail: format!("answer {index} has no signature or no algorithm identifier"),
        });
    }
    Ok(Signature {
        signature: r.signature,
        algorithm_identifier: r.algorithm_identifier,
    })
}
