//! The gRPC service: turns `hsmgate.signer.v1` messages into checked items for the gateway,
//! and the gateway's errors into gRPC statuses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hsmgate_signer_api::v1::signer_server::Signer;
use hsmgate_signer_api::v1::{
    GetPublicKeyRequest, GetPublicKeyResponse, KeyInfo, ListKeysRequest, ListKeysResponse,
    SignBatchRequest, SignBatchResponse, SignRequest, SignResponse, SignatureAlgorithm as Alg,
    sign_request,
};
use tonic::{Request, Response, Status};

use crate::algorithm::{self, Input};
use crate::dispatch::{Prepared, Router, Signed};
use crate::error::Error;
use crate::gateway::Gateway;

#[derive(Debug, Clone)]
pub struct SignerService {
    gateway: Arc<Gateway>,
}

impl SignerService {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
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
        requests: &[SignRequest],
        deadline: Instant,
        batch: bool,
    ) -> Result<Vec<Signed>, Error> {
        let router = self.gateway.router();
        let prepared = requests
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let field = if batch {
                    format!("requests[{i}].")
                } else {
                    String::new()
                };
                Self::prepare(&router, &field, r)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.gateway.sign(&router, prepared, deadline).await
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
                        tracing::warn!(method, "{e}")
                    }
                    _ => tracing::debug!(method, "{e}"),
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
        let deadline = self.deadline(&request);
        let req = request.into_inner();
        let result = self
            .sign_all(std::slice::from_ref(&req), deadline, false)
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
        let deadline = self.deadline(&request);
        let requests = request.into_inner().requests;
        let max = self.gateway.router().limits.max_request_items;
        let result = if requests.is_empty() {
            Err(Error::InvalidArgument(
                "requests: the batch is empty".into(),
            ))
        } else if requests.len() > max {
            Err(Error::InvalidArgument(format!(
                "requests: {} items, at most {max} per call",
                requests.len()
            )))
        } else {
            self.sign_all(&requests, deadline, true)
                .await
                .map(|signed| {
                    let n = signed.len() as u64;
                    (
                        SignBatchResponse {
                            responses: signed.into_iter().map(response).collect(),
                        },
                        n,
                    )
                })
        };
        self.finish("SignBatch", started, result)
    }

    async fn get_public_key(
        &self,
        request: Request<GetPublicKeyRequest>,
    ) -> Result<Response<GetPublicKeyResponse>, Status> {
        let started = Instant::now();
        let name = request.into_inner().key;
        let router = self.gateway.router();
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
        _request: Request<ListKeysRequest>,
    ) -> Result<Response<ListKeysResponse>, Status> {
        let started = Instant::now();
        let router = self.gateway.router();
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
