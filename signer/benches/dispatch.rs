//! The gateway's in-process cost per signature: from a request's items to the PKCS#11 call and
//! back, without gRPC, TLS or the audit log (`hsm-bench compare` measures those end to end).
//!
//! What one iteration does is what `SignerService` does after its checks:
//! `Gateway::router()` → `Router::prepare` per item (key lookup, algorithm, digest length) →
//! `Gateway::sign` (group by key, cut into `worker_chunk` chunks, pick the least-loaded HSM,
//! queue the job, a worker thread's `C_SignInit` + `C_Sign`, the oneshot reply, reassembly in
//! request order), for batches of 1, 16 and 256 digests.
//!
//! The HSMs are two tokens behind **hsm-sim** (`bench/hsm-sim`) with the timing model
//! `units=64 mean=0.001us dist=fixed signature=stand-in`: every signature is a stand-in of the
//! right length that SoftHSM2 never computes and that returns at once, so what is measured is
//! the gateway, not ECDSA. The bench provisions its own SoftHSM2 tokens in a temporary
//! directory (`hsm_config::provision`); it needs SoftHSM2, `openssl` and the hsm-sim module
//! built in the same target directory (`cargo build --release -p hsm-sim`), and prints why it
//! skips when one is missing.
//!
//! ```sh
//! cargo build --release -p hsm-sim
//! cargo bench -p signer --bench dispatch -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hsm_config::Config;
use hsm_config::{ProvisionOptions, provision};
use hsmgate_signer_api::v1::SignatureAlgorithm as Alg;
use signer::Gateway;
use signer::Input;
use signer::Metrics;
use signer::Reserved;

const KEY: &str = "bench-p256";
const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Sessions (worker threads) per HSM and signatures per job, as in `hsm-config/examples/dev.toml`
/// except for the sessions (4 rather than 2, so that a 256-batch's 8 chunks run at once).
const SESSIONS: u32 = 4;
const WORKER_CHUNK: u32 = 32;
/// Every signature is an instant stand-in: the gateway is what takes time.
const MODEL: &str = "* model units=64 mean=0.001us dist=fixed signature=stand-in\n";

fn config_text(module: &Path, dir: &Path) -> String {
    let env = format!(
        "module_env = {{ SOFTHSM2_CONF = {:?}, HSMSIM_CONTROL = {:?} }}",
        dir.join("softhsm2.conf").display().to_string(),
        dir.join("control").display().to_string()
    );
    let hsm = |n: u32| {
        format!(
            "[[datacenters.hsms]]\nname = \"sim-{n}\"\nmodule = {module:?}\n\
             token_label = \"SIM-{n}\"\npin = {{ file = {pin:?} }}\n\
             sessions = {SESSIONS}\nmax_in_flight = 4096\n{env}\n",
            module = module.display().to_string(),
            pin = dir.join("user.pin").display().to_string(),
        )
    };
    format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\nlocal_datacenter = \"bench\"\n\n\
         [gateway.insecure_plaintext]\nclient = \"bench\"\n\n\
         [audit]\ndir = \"audit\"\n\n\
         [timeouts]\nhsm_call_ms = 2000\ndefault_deadline_ms = 10000\nprobe_interval_ms = 200\n\n\
         [batching]\nmax_request_items = 8192\nworker_chunk = {WORKER_CHUNK}\n\n\
         [[datacenters]]\nname = \"bench\"\n\n{}\n{}\n\
         [[keys]]\nname = \"{KEY}\"\nlabel = \"{KEY}\"\nalgorithm = \"ecdsa-p256\"\n\
         hsms = [\"sim-1\", \"sim-2\"]\n\n\
         [[clients]]\nname = \"bench\"\n\
         grants = [{{ keys = [\"{KEY}\"], operations = [\"sign-raw\"] }}]\n",
        hsm(1),
        hsm(2)
    )
}

/// A gateway in this process on two modelled HSMs, with everything it needs on disk.
struct Bench {
    gateway: Arc<Gateway>,
    _dir: tempfile::TempDir,
}

/// Provisions the tokens and starts the gateway; `Err` says why the bench cannot run here.
/// Called before any other thread of the process exists (see the `set_var` below).
fn setup() -> Result<(Bench, tokio::runtime::Runtime), String> {
    // The hsm-sim module of this target directory (`target/release/` when benchmarking),
    // built by the stack kit if it is missing.
    let module = hsmgate_stack::sim_module().map_err(|e| format!("the hsm-sim module: {e}"))?;
    if !Path::new(SOFTHSM).exists() {
        return Err(format!(
            "SoftHSM2 ({SOFTHSM}) is not installed: hsm-config/dev/setup.sh"
        ));
    }
    let dir = tempfile::Builder::new()
        .prefix("hsmgate-bench-dispatch-")
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))?;
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config_text(&module, dir.path()))
        .and_then(|()| std::fs::write(dir.path().join("control"), MODEL))
        .map_err(|e| format!("writing the configuration: {e}"))?;
    let config = Config::load(&path).map_err(|e| format!("configuration: {e}"))?;
    provision(
        &config,
        &ProvisionOptions::new(dir.path().join("softhsm2.conf")),
    )
    .map_err(|e| format!("provisioning SoftHSM2 tokens: {e}"))?;
    // SoftHSM2 reads SOFTHSM2_CONF at C_Initialize, after the gateway has put back the
    // environment it sets (`module_env`) only while loading the module: the process needs it.
    for (name, value) in [
        ("SOFTHSM2_CONF", dir.path().join("softhsm2.conf")),
        ("HSMSIM_CONTROL", dir.path().join("control")),
    ] {
        // SAFETY: set_var is unsound only while another thread reads the environment; this
        // runs on the bench's only thread, before the runtime and the gateway start theirs.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var(name, value)
        };
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    // Gateway::start spawns the HSMs' supervisors and expects a runtime around it.
    let gateway = rt.block_on(async { Gateway::start(&config, Metrics::new()) });
    let waited = Instant::now();
    while !gateway.router().hsms.iter().all(|h| h.can_sign(KEY)) {
        if waited.elapsed() > Duration::from_secs(30) {
            return Err("the modelled HSMs did not come into rotation within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((Bench { gateway, _dir: dir }, rt))
}

fn dispatch(c: &mut Criterion) {
    // `RUST_LOG=info` shows the gateway's log (HSMs connecting, faults) on stderr.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let (bench, rt) = match setup() {
        Ok(b) => b,
        Err(why) => {
            eprintln!("SKIPPED signer/dispatch: {why}");
            return;
        }
    };
    let gateway = &bench.gateway;
    // Distinct digests, as a caller's would be; 256 covers the largest batch.
    let digests: Vec<[u8; 32]> = (0u32..256)
        .map(|i| {
            let mut d = [0u8; 32];
            for (j, b) in d.iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(31) ^ (j as u8).wrapping_mul(7) ^ 0xa5;
            }
            d
        })
        .collect();

    let mut group = c.benchmark_group("gateway_sign_stand_in");
    for batch in [1usize, 16, 256] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &n| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let router = gateway.router();
                        let items = digests[..n]
                            .iter()
                            .map(|d| {
                                router.prepare(
                                    "",
                                    black_box(KEY),
                                    Alg::Unspecified,
                                    Input::Digest(black_box(d)),
                                )
                            })
                            .collect::<Result<Vec<_>, _>>();
                        let items = match items {
                            Ok(items) => items,
                            Err(e) => panic!("prepare: {e}"),
                        };
                        let deadline = Instant::now() + Duration::from_secs(10);
                        match gateway
                            .sign(&router, &Reserved::none(), items, deadline)
                            .await
                        {
                            Ok(signed) if signed.len() == n => {
                                black_box(signed);
                            }
                            Ok(signed) => panic!("{} signatures for {n} digests", signed.len()),
                            Err(e) => panic!("sign: {e}"),
                        }
                    }
                    start.elapsed()
                })
            });
        });
    }
    group.finish();
    gateway.shutdown();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
