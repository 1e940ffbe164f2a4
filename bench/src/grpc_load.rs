//! The gateway load: `Sign` or `SignBatch` RPCs kept in flight for a phase.
//!
//! C tasks on a multi-thread tokio runtime each call the RPC in a loop, so C calls are in
//! flight at all times; the tasks are spread over one or more HTTP/2 connections (tonic
//! channels; HTTP/2 multiplexes the calls of a connection). `Sign` sends one random digest
//! (message, for Ed25519) of the key per call; `SignBatch` sends B of them. Inputs come from
//! the workload's pre-generated pool and batches are built before the phase and cloned per
//! call, so the load generator spends its CPU on gRPC, not on preparing requests. Every call
//! carries a 10 s deadline (`grpc-timeout`). Failed calls are counted by gRPC code; after one
//! the task pauses 1 ms so that a failing gateway is not spun against.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use hsmgate_signer_api::v1::signer_client::SignerClient;
use hsmgate_signer_api::v1::{SignBatchRequest, SignRequest};
use tokio::runtime::Runtime;
use tonic::transport::Channel;

use crate::measure::{PhaseResult, Tally, Window};
use crate::procstat::CpuProbe;
use crate::workload::Workload;

/// Deadline sent with every call.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed call.
const ERROR_PAUSE: Duration = Duration::from_millis(1);
/// Distinct batch requests built per phase (each task starts at a different one).
const BATCH_POOL: usize = 16;

/// Which RPC, how many in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcMode {
    Sign { concurrency: usize },
    SignBatch { concurrency: usize, batch: usize },
}

/// Connections to the gateway and the workload to send.
#[derive(Debug)]
pub struct GrpcLoad {
    clients: Vec<SignerClient<Channel>>,
    workload: Arc<Workload>,
}

/// A client on a new HTTP/2 connection to `url`; mTLS with the files named by
/// `HSMGATE_TLS_CA` / `_CERT` / `_KEY` when they are set (the dev gateway requires it).
pub async fn connect(url: &str) -> Result<SignerClient<Channel>> {
    let tls = hsmgate_signer_api::client::ClientTls::from_env();
    let channel = hsmgate_signer_api::client::connect(url, tls.as_ref())
        .await
        .with_context(|| format!("cannot connect to the gateway at {url}"))?;
    Ok(SignerClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

impl GrpcLoad {
    /// Opens `channels` connections to the gateway at `url`.
    pub async fn connect(url: &str, channels: usize, workload: Arc<Workload>) -> Result<Self> {
        let mut clients = Vec::with_capacity(channels);
        for _ in 0..channels.max(1) {
            clients.push(connect(url).await?);
        }
        Ok(Self { clients, workload })
    }

    /// Runs one phase on `runtime`. Blocks the calling thread, which must not be one of the
    /// runtime's: it samples CPU use while the tasks run.
    pub fn run_phase(
        &self,
        runtime: &Runtime,
        mode: GrpcMode,
        window: Window,
        probe: &CpuProbe,
    ) -> Result<PhaseResult> {
        let mut handles = Vec::new();
        match mode {
            GrpcMode::Sign { concurrency } => {
                let stride = 4096 / concurrency.max(1);
                for t in 0..concurrency {
                    let client = self.clients[t % self.clients.len()].clone();
                    let workload = self.workload.clone();
                    handles.push(runtime.spawn(sign_loop(client, workload, t * stride, window)));
                }
            }
            GrpcMode::SignBatch { concurrency, batch } => {
                let pool = Arc::new(self.batches(batch));
                for t in 0..concurrency {
                    let client = self.clients[t % self.clients.len()].clone();
                    handles.push(runtime.spawn(batch_loop(client, pool.clone(), t, window)));
                }
            }
        }
        let cpu = probe.measure(&window);
        let tally = runtime.block_on(async {
            let mut tally = Tally::default();
            for h in handles {
                tally.merge(h.await.map_err(|e| anyhow!("a load task failed: {e}"))?);
            }
            Ok::<_, anyhow::Error>(tally)
        })?;
        Ok(PhaseResult {
            tally,
            seconds: window.seconds(),
            cpu,
        })
    }

    fn batches(&self, batch: usize) -> Vec<SignBatchRequest> {
        (0..BATCH_POOL)
            .map(|b| SignBatchRequest {
                requests: (0..batch).map(|i| self.request(b * batch + i)).collect(),
            })
            .collect()
    }

    fn request(&self, i: usize) -> SignRequest {
        request(&self.workload, i)
    }
}

fn request(workload: &Workload, i: usize) -> SignRequest {
    SignRequest {
        key: workload.key.clone(),
        algorithm: 0, // the key's default
        input: Some(workload.grpc_input(i)),
    }
}

async fn sign_loop(
    mut client: SignerClient<Channel>,
    workload: Arc<Workload>,
    first: usize,
    window: Window,
) -> Tally {
    let mut tally = Tally::default();
    let mut i = first;
    loop {
        let started = Instant::now();
        if started >= window.end {
            break;
        }
        let mut call = tonic::Request::new(request(&workload, i));
        call.set_timeout(REQUEST_TIMEOUT);
        i = i.wrapping_add(1);
        let result = client.sign(call).await;
        let done = Instant::now();
        match result {
            Ok(_) if window.counts(done) => tally.success(1, started, done),
            Ok(_) => {}
            Err(status) => {
                if window.counts(done) {
                    tally.error(format!("{:?}", status.code()), || {
                        status.message().to_owned()
                    });
                }
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    tally
}

async fn batch_loop(
    mut client: SignerClient<Channel>,
    pool: Arc<Vec<SignBatchRequest>>,
    first: usize,
    window: Window,
) -> Tally {
    let mut tally = Tally::default();
    let mut i = first;
    loop {
        let started = Instant::now();
        if started >= window.end {
            break;
        }
        let batch = &pool[i % pool.len()];
        let wanted = batch.requests.len();
        let mut call = tonic::Request::new(batch.clone());
        call.set_timeout(REQUEST_TIMEOUT);
        i = i.wrapping_add(1);
        let result = client.sign_batch(call).await;
        let done = Instant::now();
        let counts = window.counts(done);
        match result {
            Ok(response) => {
                let got = response.get_ref().responses.len();
                if got == wanted {
                    if counts {
                        tally.success(got as u64, started, done);
                    }
                } else if counts {
                    tally.error("ShortBatch".to_owned(), || {
                        format!("{got} signatures for {wanted} requests")
                    });
                }
            }
            Err(status) => {
                if counts {
                    tally.error(format!("{:?}", status.code()), || {
                        status.message().to_owned()
                    });
                }
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    tally
}
