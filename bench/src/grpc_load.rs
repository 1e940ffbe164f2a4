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
//!
//! That is the **closed loop** (as fast as the gateway answers, C in flight). With a target
//! rate (`--rate`, signatures/s) the load is an **open loop** instead: one scheduler task issues
//! calls at evenly spaced intended start times whatever the gateway does (up to
//! `--max-in-flight` outstanding; a call that would exceed it is not sent and counts as a
//! `ClientBacklog` error), and each call's latency counts from its *intended* start, so a
//! stalled gateway shows as latency instead of hiding in a slower request rate (coordinated
//! omission, as in wrk2).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use hsmgate_signer_api::v1::signer_client::SignerClient;
use hsmgate_signer_api::v1::{SignBatchRequest, SignRequest};
use tokio::runtime::Runtime;
use tonic::transport::Channel;

use crate::measure::{PhaseResult, Tally};
use crate::procstat::CpuProbe;
use crate::window::Window;
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

/// An open loop: calls issued at a fixed rate whatever the gateway does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpenLoop {
    /// Target signatures per second (a `SignBatch` call carries `batch` of them).
    pub rate: f64,
    /// Most calls outstanding at once; beyond it a call is not sent (`ClientBacklog`).
    pub max_in_flight: usize,
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
        open: Option<OpenLoop>,
        window: Window,
        probe: &CpuProbe,
    ) -> Result<PhaseResult> {
        let mut handles = Vec::new();
        match (mode, open) {
            (GrpcMode::Sign { .. }, Some(open)) => {
                let workload = self.workload.clone();
                let make = move |i: usize| Call::Sign(request(&workload, i));
                handles.push(runtime.spawn(open_loop(
                    self.clients.clone(),
                    make,
                    open.rate,
                    open.max_in_flight,
                    window,
                )));
            }
            (GrpcMode::SignBatch { batch, .. }, Some(open)) => {
                let pool = Arc::new(self.batches(batch));
                let make = move |i: usize| Call::Batch(pool[i % pool.len()].clone());
                handles.push(runtime.spawn(open_loop(
                    self.clients.clone(),
                    make,
                    open.rate / batch.max(1) as f64,
                    open.max_in_flight,
                    window,
                )));
            }
            (_, None) => {}
        }
        match mode {
            _ if open.is_some() => {}
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
            let mut tally = Tally::for_window(&window);
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
    let mut tally = Tally::for_window(&window);
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
                    tally.error_at(done, format!("{:?}", status.code()), || {
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
    let mut tally = Tally::for_window(&window);
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
                    tally.error_at(done, "ShortBatch".to_owned(), || {
                        format!("{got} signatures for {wanted} requests")
                    });
                }
            }
            Err(status) => {
                if counts {
                    tally.error_at(done, format!("{:?}", status.code()), || {
                        status.message().to_owned()
                    });
                }
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    tally
}

/// One call of the open loop.
enum Call {
    Sign(SignRequest),
    Batch(SignBatchRequest),
}

/// What a call gave: signatures, or an error code and message.
async fn issue(client: &mut SignerClient<Channel>, call: Call) -> Result<u64, (String, String)> {
    let code =
        |status: tonic::Status| (format!("{:?}", status.code()), status.message().to_owned());
    match call {
        Call::Sign(req) => {
            let mut call = tonic::Request::new(req);
            call.set_timeout(REQUEST_TIMEOUT);
            client.sign(call).await.map(|_| 1).map_err(code)
        }
        Call::Batch(req) => {
            let wanted = req.requests.len();
            let mut call = tonic::Request::new(req);
            call.set_timeout(REQUEST_TIMEOUT);
            let got = client.sign_batch(call).await.map_err(code)?;
            let got = got.get_ref().responses.len();
            if got == wanted {
                Ok(got as u64)
            } else {
                Err((
                    "ShortBatch".to_owned(),
                    format!("{got} signatures for {wanted} requests"),
                ))
            }
        }
    }
}

/// Issues `make(k)` at `start + k / calls_per_s` for every k until the window ends (the
/// warm-up included), each call in its own task, at most `max_in_flight` outstanding; then
/// waits for the outstanding ones. Latency counts from the intended start.
async fn open_loop(
    clients: Vec<SignerClient<Channel>>,
    make: impl Fn(usize) -> Call,
    calls_per_s: f64,
    max_in_flight: usize,
    window: Window,
) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::for_window(&window)));
    let permits = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
    let period = Duration::from_secs_f64(1.0 / calls_per_s.max(1e-3));
    let t0 = Instant::now();
    let mut k: u32 = 0;
    loop {
        // Duration * u32 cannot overflow here: k stops at the window's end.
        let intended = t0 + period.saturating_mul(k);
        if intended >= window.end {
            break;
        }
        if intended > Instant::now() {
            tokio::time::sleep_until(intended.into()).await;
        } else {
            // Behind schedule: let the calls' own tasks run (and finish) before issuing more.
            // Without this the scheduler monopolised a one-thread runtime once it fell behind,
            // no call completed, and the backlog fed itself until the connection failed.
            tokio::task::yield_now().await;
        }
        let call = make(k as usize);
        let mut client = clients[k as usize % clients.len()].clone();
        k = k.saturating_add(1);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let now = Instant::now();
            if window.counts(now)
                && let Ok(mut t) = tally.lock()
            {
                t.error_at(now, "ClientBacklog".to_owned(), || {
                    format!("{max_in_flight} calls already outstanding (--max-in-flight)")
                });
            }
            continue;
        };
        let tally = tally.clone();
        tokio::spawn(async move {
            let result = issue(&mut client, call).await;
            let done = Instant::now();
            drop(permit);
            if !window.counts(done) {
                return;
            }
            // A poisoned lock means another task panicked: that result is lost, not ours.
            if let Ok(mut t) = tally.lock() {
                match result {
                    Ok(n) => t.success(n, intended, done),
                    Err((code, message)) => t.error_at(done, code, || message),
                }
            }
        });
    }
    // Every permit back: every call answered (each has a deadline).
    let all = u32::try_from(max_in_flight.max(1)).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(REQUEST_TIMEOUT * 2, permits.acquire_many(all)).await;
    let mut out = Tally::for_window(&window);
    if let Ok(mut t) = tally.lock() {
        out.merge(std::mem::take(&mut *t));
    }
    out
}
