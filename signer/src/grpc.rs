//! The gRPC service: turns `hsmgate.signer.v1` messages into checked items for the gateway,
//! and the gateway's errors into gRPC statuses.
//!
//! A signing call goes: identify the caller ([`crate::authz`]) → its declared payload →
//! batch limits → every item inside the caller's grants and, for keys that check payloads,
//! parsing as declared ([`crate::payload`]) → the caller's rate and concurrency limits → item
//! checks → HSMs → one audit record ([`crate::audit`]), on disk before the answer leaves.
//! Every refusal is audited too. (A `bench-unaudited` build can skip the record: see
//! [`audit::Sink`].)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hsm_config::{AuditFailure, Operation};
use hsmgate_signer_api::PAYLOAD_HEADER;

use hsmgate_signer_api::v1::signer_server::Signer;
use hsmgate_signer_api::v1::{
    GetPublicKeyRequest, GetPublicKeyResponse, KeyInfo, ListKeysRequest, ListKeysResponse,
    SignBatchRequest, SignBatchResponse, SignRequest, SignResponse, SignatureAlgorithm as Alg,
    sign_request,
};
use tonic::{Request, Response, Status};

use crate::algorithm::{self, Input};
use crate::audit;
use crate::authz::{Caller, ClientEntry};
use crate::dispatch::{Prepared, Router, Signed};
use crate::error::Error;
use crate::payload;
use crate::routing::Gateway;

/// The target of this module's log events: the module was `service` until issue 14, and log
/// filters name that target.
const LOG_TARGET: &str = "signer::service";

#[derive(Debug, Clone)]
pub struct SignerService {
    gateway: Arc<Gateway>,
    audit: audit::Sink,
    /// Largest `sign-crl` item ([`hsm_config::Config::max_crl_message_bytes`] at start-up, as
    /// the gRPC message limit it goes with); 0: CRL items are held to [`MAX_INPUT_BYTES`].
    max_crl_bytes: usize,
}

/// What a signing call's envelope says, read before its message is taken out.
struct CallInfo {
    certs: Option<Arc<Vec<tonic::transport::CertificateDer<'static>>>>,
    peer: Option<SocketAddr>,
    payload: Result<Operation, Error>,
    deadline: Instant,
}

/// The largest digest or message one item may carry: a TBSCertificate or OCSP ResponseData of
/// a real CA is a few KiB at most. It bounds, with `batching.max_request_items`, the size of a
/// request message the gateway decodes ([`max_message_bytes`]).
pub const MAX_INPUT_BYTES: usize = 16 << 10;
/// What an average item of a full batch may take on the wire: a digest item is about 100
/// bytes, an OCSP ResponseData item a few hundred.
const BATCH_ITEM_BYTES: usize = 1 << 10;

/// The largest request message the gateway decodes: `max_request_items` items of
/// [`BATCH_ITEM_BYTES`], and never less than one item of [`MAX_INPUT_BYTES`]. A larger message
/// is refused by the gRPC layer (OUT_OF_RANGE) before it is decoded, so what a caller can make
/// the gateway hold is bounded by its configuration, not by a fixed 64 MiB.
pub fn max_message_bytes(max_request_items: usize) -> usize {
    max_request_items
        .saturating_mul(BATCH_ITEM_BYTES)
        .max(MAX_INPUT_BYTES + 1024)
}

/// [`max_message_bytes`], grown to hold one `sign-crl` item of `max_crl_bytes` (plus its
/// key name and framing) when CRL signing is configured (`max_crl_bytes` > 0).
///
/// Why a larger limit and not a digest: the gateway's promise for issuing keys is that it
/// signs only what parses as declared, and a digest of a CRL could be a digest of anything. A
/// shard of 1,000,000 entries is ~30-40 MB; the check streams over it
/// ([`payload::check_tbs_cert_list`]), so the cost of the larger limit is the message itself.
/// Configurations without a `sign-crl` grant keep the limit `max_request_items` makes.
pub fn max_message_bytes_with_crl(max_request_items: usize, max_crl_bytes: usize) -> usize {
    let crl = if max_crl_bytes == 0 {
        0
    } else {
        max_crl_bytes.saturating_add(1024)
    };
    max_message_bytes(max_request_items).max(crl)
}

/// SHA-256 of the `SignBatchRequest` as prost encodes it (each item field 1, length-delimited):
/// the caller's bytes when it encoded canonically, as prost-based clients do. Item by item,
/// through one reused buffer.
fn request_sha256(requests: &[SignRequest]) -> String {
    use prost::Message;
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    let mut buf = Vec::new();
    for r in requests {
        buf.clear();
        buf.push(0x0a); // field 1, wire type 2
        prost::encoding::encode_varint(r.encoded_len() as u64, &mut buf);
        r.encode_raw(&mut buf);
        hash.update(&buf);
    }
    hex::encode(hash.finalize())
}

/// The audit log's view of one request item.
fn audit_item(r: &SignRequest) -> audit::Item {
    match &r.input {
        Some(sign_request::Input::Digest(d)) => audit::Item::new(&r.key, "digest", d),
        Some(sign_request::Input::Message(m)) => audit::Item::new(&r.key, "message", m),
        None => audit::Item::new(&r.key, "none", &[]),
    }
}

impl SignerService {
    pub fn new(gateway: Arc<Gateway>, audit: audit::Sink) -> Self {
        Self {
            gateway,
            audit,
            max_crl_bytes: 0,
        }
    }

    /// Accept `sign-crl` items of up to `bytes` (see [`max_message_bytes_with_crl`]).
    pub fn with_max_crl_bytes(mut self, bytes: usize) -> Self {
        self.max_crl_bytes = bytes;
        self
    }

    fn call_info<T>(&self, request: &Request<T>) -> CallInfo {
        let payload = payload::declared(
            request
                .metadata()
                .get(PAYLOAD_HEADER)
                .map(|v| v.to_str().unwrap_or("(not visible ASCII)")),
        );
        CallInfo {
            certs: request.peer_certs(),
            peer: request.remote_addr(),
            payload,
            deadline: self.deadline(request),
        }
    }

    fn caller(&self, router: &Router, info: &CallInfo) -> Caller {
        router
            .clients
            .identify(info.certs.as_deref().map(Vec::as_slice))
    }

    /// For calls that sign nothing (`GetPublicKey`, `ListKeys`): any configured client.
    fn require_client<T>(&self, router: &Router, request: &Request<T>) -> Result<(), Error> {
        let caller = router
            .clients
            .identify(request.peer_certs().as_deref().map(Vec::as_slice));
        match caller.client {
            Some(_) => Ok(()),
            None => Err(Error::PermissionDenied(format!(
                "the caller ({}) is not a client of this gateway",
                caller.identity
            ))),
        }
    }

    /// A `Sign` or `SignBatch` call from start to audit record.
    async fn signing_rpc(
        &self,
        method: &'static str,
        info: CallInfo,
        requests: &[SignRequest],
        batch: bool,
    ) -> Result<Vec<Signed>, Error> {
        // Counted from here until the record is handed over: the audit writer waits for it.
        let pending = self.audit.pending();
        let router = self.gateway.router();
        let caller = self.caller(&router, &info);
        let operation = match &info.payload {
            Ok(op) => op.as_str(),
            Err(_) => "invalid",
        };
        let peer = info.peer;
        let mut dispatched = false;
        let result = self
            .checked_sign(
                &router,
                &caller,
                info.payload,
                requests,
                info.deadline,
                batch,
                &mut dispatched,
            )
            .await;
        let (code, signatures) = match &result {
            Ok(signed) => (tonic::Code::Ok, signed.len() as u64),
            Err(e) => {
                let code = e.to_status().code();
                if code == tonic::Code::PermissionDenied {
                    tracing::warn!(target: LOG_TARGET, client = caller.name(), identity = %caller.identity, method, "{e}");
                }
                (code, 0)
            }
        };
        // A `match` rather than `let Sink::Log(log) = …`: without the `bench-unaudited` feature
        // the unaudited arm does not exist, and no code path skips the record.
        #[allow(
            clippy::infallible_destructuring_match,
            reason = "a second arm exists in bench-unaudited builds"
        )]
        let log = match &self.audit {
            audit::Sink::Log(log) => log,
            #[cfg(feature = "bench-unaudited")]
            audit::Sink::Unaudited => return self.count(&caller, code, signatures, result),
        };
        let mut record = audit::Record {
            method,
            client: caller.name().to_owned(),
            identity: caller.identity.clone(),
            peer: peer.map(|p| p.to_string()),
            operation,
            ..audit::Record::default()
        };
        // A batch refused before any HSM was asked: one bounded summary, not a line per item.
        // A unary call keeps its one item (key and SHA-256 of what was sent, at most
        // MAX_INPUT_BYTES), so a refused forgery attempt names the key it aimed at.
        if batch && result.is_err() && !dispatched {
            record.refused = Some(audit::Refused {
                items: requests.len() as u64,
                request_sha256: request_sha256(requests),
            });
        } else {
            record.items = requests.iter().map(audit_item).collect();
        }
        match &result {
            Ok(signed) => {
                record.outcome = "OK";
                let mut hsms: Vec<String> = signed.iter().map(|s| s.hsm.to_string()).collect();
                hsms.sort();
                hsms.dedup();
                record.hsms = hsms;
            }
            Err(e) => {
                let status = e.to_status();
                record.outcome = crate::metrics::code_label(status.code());
                record.detail = Some(status.message().to_owned());
            }
        }
        let result = match (log.append(record, pending).await, result) {
            (Ok(_), result) => result,
            (Err(e), Ok(_)) if log.on_failure() == AuditFailure::StopSigning => {
                tracing::error!(target: LOG_TARGET, client = caller.name(), method, "signatures withheld: {e}");
                Err(e)
            }
            (Err(e), result) => {
                tracing::error!(target: LOG_TARGET,
                    client = caller.name(),
                    method,
                    "no audit record for this call: {e}"
                );
                result
            }
        };
        self.count(&caller, code, signatures, result)
    }

    /// Per-client metrics of a signing call's final outcome (after its audit record).
    fn count(
        &self,
        caller: &Caller,
        code: tonic::Code,
        signatures: u64,
        result: Result<Vec<Signed>, Error>,
    ) -> Result<Vec<Signed>, Error> {
        let code = match &result {
            Ok(_) => code,
            Err(e) => e.to_status().code(),
        };
        self.gateway.metrics().client_rpc(
            caller.name(),
            code,
            if result.is_ok() { signatures } else { 0 },
        );
        result
    }

    /// Everything a signing call must pass, then the signing itself. `dispatched` is set once
    /// the items go to the HSMs: a call refused before that is audited as a summary.
    #[allow(
        clippy::too_many_arguments,
        reason = "the call's parts, each used once; a struct would only rename them"
    )]
    async fn checked_sign(
        &self,
        router: &Router,
        caller: &Caller,
        payload: Result<Operation, Error>,
        requests: &[SignRequest],
        deadline: Instant,
        batch: bool,
        dispatched: &mut bool,
    ) -> Result<Vec<Signed>, Error> {
        let op = payload?;
        let client = caller.client.as_ref().ok_or_else(|| {
            Error::PermissionDenied(format!(
                "the caller ({}) is not a client of this gateway",
                caller.identity
            ))
        })?;
        if batch {
            let max = router.limits.max_request_items;
            if requests.is_empty() {
                return Err(Error::InvalidArgument(
                    "requests: the batch is empty".into(),
                ));
            } else if requests.len() > max {
                return Err(Error::InvalidArgument(format!(
                    "requests: {} items, at most {max} per call",
                    requests.len()
                )));
            }
        }
        for (i, r) in requests.iter().enumerate() {
            let field = if batch {
                format!("requests[{i}].")
            } else {
                String::new()
            };
            let key: String = r.key.chars().take(128).collect();
            let input_len = match &r.input {
                Some(sign_request::Input::Digest(d)) => d.len(),
                Some(sign_request::Input::Message(m)) => m.len(),
                None => 0,
            };
            // A CRL shard may be large; only a declared `tbs-cert-list` gets the larger limit,
            // and the grant check right below refuses it unless the client may `sign-crl` with
            // this key (whose payloads are then checked: it is an issuing key).
            let limit = if op == Operation::SignCrl {
                self.max_crl_bytes.max(MAX_INPUT_BYTES)
            } else {
                MAX_INPUT_BYTES
            };
            if input_len > limit {
                return Err(Error::InvalidArgument(format!(
                    "{field}input: {input_len} bytes, at most {limit}"
                )));
            }
            // An empty key is a malformed request (INVALID_ARGUMENT from `prepare`), not a
            // question of grants. A key outside the caller's grants is PERMISSION_DENIED even
            // when it does not exist, so that grants do not reveal which keys do.
            if !r.key.is_empty() && !client.allows(&r.key, op) {
                return Err(Error::PermissionDenied(format!(
                    "{field}key: client `{}` may not {} with key `{key}`",
                    client.name,
                    op.as_str()
                )));
            }
            let policy = router.clients.payload_policies.get(&r.key);
            if let Some(policy) = policy.filter(|p| p.check_declared) {
                if op == Operation::SignRaw {
                    if !policy.allow_raw {
                        return Err(Error::PermissionDenied(format!(
                            "{field}key: key `{key}` signs only declared payloads ({PAYLOAD_HEADER}: {}, {} or {})",
                            hsmgate_signer_api::PAYLOAD_TBS_CERTIFICATE,
                            hsmgate_signer_api::PAYLOAD_OCSP_RESPONSE_DATA,
                            hsmgate_signer_api::PAYLOAD_TBS_CERT_LIST
                        )));
                    }
                    continue;
                }
                match &r.input {
                    Some(sign_request::Input::Message(m)) => {
                        payload::check(op, m).map_err(|reason| {
                            Error::PermissionDenied(format!(
                                "{field}message: declared for {} with key `{key}` but {reason}",
                                op.as_str()
                            ))
                        })?
                    }
                    // No input at all is malformed: `prepare` answers INVALID_ARGUMENT.
                    None => {}
                    // A digest could be of anything: refused like a payload that does not
                    // parse, so that no declaration makes an unchecked signature possible.
                    Some(sign_request::Input::Digest(_)) => {
                        return Err(Error::PermissionDenied(format!(
                            "{field}message: key `{key}` checks what it signs: send the message, not a digest"
                        )));
                    }
                }
            }
        }
        let _admission = client.admit(requests.len() as u64, self.gateway.metrics())?;
        self.sign_all(router, client, requests, deadline, batch, dispatched)
            .await
    }

    fn prepare(router: &Router, field: &str, req: &SignRequest) -> Result<Prepared, Error> {
        let requested = Alg::try_from(req.algorithm).map_err(|_| {
            Error::InvalidArgument(format!("{field}algorithm: unknown value {}", req.algorithm))
        })?;
        let input = match &req.input {
            Some(sign_request::Input::Digest(d)) => Input::Digest(d),
            Some(sign_request::Input::Message(m)) => Input::Message(m),
            None => {
                return Err(Error::InvalidArgument(format!(
                    "{field}input: set `digest` or `message`"
                )));
            }
        };
        router.prepare(field.trim_end_matches('.'), &req.key, requested, input)
    }

    async fn sign_all(
        &self,
        router: &Router,
        client: &ClientEntry,
        requests: &[SignRequest],
        deadline: Instant,
        batch: bool,
        dispatched: &mut bool,
    ) -> Result<Vec<Signed>, Error> {
        let prepared = requests
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let field = if batch {
                    format!("requests[{i}].")
                } else {
                    String::new()
                };
                Self::prepare(router, &field, r)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let reserved = self
            .gateway
            .reserve(client.claimant(), &prepared, deadline)
            .await?;
        *dispatched = true;
        self.gateway
            .sign(router, &reserved, prepared, deadline)
            .await
    }

    /// The instant by which the answer must be sent. With a caller's `grpc-timeout`, a small
    /// margin comes off: tonic's own timer started earlier and would otherwise cancel the call
    /// (CANCELLED) before the gateway can answer DEADLINE_EXCEEDED.
    fn deadline<T>(&self, request: &Request<T>) -> Instant {
        let timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let limit = match timeout {
            Some(t) => t.saturating_sub((t / 20).max(Duration::from_millis(2))),
            None => self.gateway.router().limits.default_deadline,
        };
        Instant::now() + limit
    }

    /// Logs what the operator needs and records metrics; returns what the caller sees.
    fn finish<T>(
        &self,
        method: &'static str,
        started: Instant,
        result: Result<(T, u64), Error>,
    ) -> Result<Response<T>, Status> {
        let elapsed = started.elapsed();
        match result {
            Ok((body, n)) => {
                self.gateway
                    .metrics()
                    .rpc(method, tonic::Code::Ok, elapsed, n);
                Ok(Response::new(body))
            }
            Err(e) => {
                let status = e.to_status();
                match status.code() {
                    tonic::Code::Internal
                    | tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded => {
                        tracing::warn!(target: LOG_TARGET, method, "{e}")
                    }
                    _ => tracing::debug!(target: LOG_TARGET, method, "{e}"),
                }
                self.gateway
                    .metrics()
                    .rpc(method, status.code(), elapsed, 0);
                Err(status)
            }
        }
    }
}

fn response(s: Signed) -> SignResponse {
    SignResponse {
        signature: s.signature,
        algorithm: s.algorithm as i32,
        algorithm_identifier: algorithm::algorithm_identifier(s.algorithm).to_vec(),
        hsm: s.hsm.to_string(),
    }
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n), per the gRPC HTTP/2 spec.
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[tonic::async_trait]
impl Signer for SignerService {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let started = Instant::now();
        let info = self.call_info(&request);
        let req = request.into_inner();
        let result = self
            .signing_rpc("Sign", info, std::slice::from_ref(&req), false)
            .await
            .and_then(|mut v| {
                v.pop()
                    .map(|s| (response(s), 1))
                    .ok_or_else(|| Error::InvalidArgument("empty".into()))
            });
        self.finish("Sign", started, result)
    }

    async fn sign_batch(
        &self,
        request: Request<SignBatchRequest>,
    ) -> Result<Response<SignBatchResponse>, Status> {
        let started = Instant::now();
        let info = self.call_info(&request);
        let requests = request.into_inner().requests;
        let result = self
            .signing_rpc("SignBatch", info, &requests, true)
            .await
            .map(|signed| {
                let n = signed.len() as u64;
                (
                    SignBatchResponse {
                        responses: signed.into_iter().map(response).collect(),
                    },
                    n,
                )
            });
        self.finish("SignBatch", started, result)
    }

    async fn get_public_key(
        &self,
        request: Request<GetPublicKeyRequest>,
    ) -> Result<Response<GetPublicKeyResponse>, Status> {
        let started = Instant::now();
        let router = self.gateway.router();
        if let Err(e) = self.require_client(&router, &request) {
            return self.finish("GetPublicKey", started, Err(e));
        }
        let name = request.into_inner().key;
        let result = match router.keys.get(&name) {
            None => Err(Error::UnknownKey(format!("key: unknown key `{name}`"))),
            Some(entry) => match router.reference.get(&entry.reference_id()) {
                Some(spki) => Ok((
                    GetPublicKeyResponse {
                        key: name,
                        key_type: algorithm::key_type(entry.algorithm) as i32,
                        spki_der: spki,
                    },
                    0,
                )),
                None => Err(Error::Unavailable {
                    key: name,
                    detail: "no HSM holding it has been reached yet".into(),
                }),
            },
        };
        self.finish("GetPublicKey", started, result)
    }

    async fn list_keys(
        &self,
        request: Request<ListKeysRequest>,
    ) -> Result<Response<ListKeysResponse>, Status> {
        let started = Instant::now();
        let router = self.gateway.router();
        if let Err(e) = self.require_client(&router, &request) {
            return self.finish("ListKeys", started, Err(e));
        }
        let mut keys: Vec<KeyInfo> = router
            .keys
            .values()
            .map(|entry| KeyInfo {
                name: entry.name.to_string(),
                key_type: algorithm::key_type(entry.algorithm) as i32,
                algorithms: algorithm::allowed(entry.algorithm)
                    .iter()
                    .map(|a| *a as i32)
                    .collect(),
                hsms: entry.hsms().map(|h| h.name.to_string()).collect(),
                hsms_available: entry.hsms().filter(|h| h.can_sign(&entry.name)).count() as u32,
            })
            .collect();
        keys.sort_by(|a, b| a.name.cmp(&b.name));
        self.finish("ListKeys", started, Ok((ListKeysResponse { keys }, 0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
    }
}
