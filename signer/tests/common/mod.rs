//! Test harness for the gateway: SoftHSM2 tokens provisioned once per test binary (two
//! datacenters × two HSMs, `hsm-config/examples/two-dc.toml`), a real `signer` process per
//! test, fault injection through `hsm-sim`'s control file, and signature verification that does
//! not involve the gateway (RustCrypto against the public keys provisioning wrote).
//!
//! Provisioning, the private token copies, the hsm-sim module (built if missing) and the
//! process itself (READY line, captured log, kill on drop) are the stack kit's
//! (`hsmgate-stack`), shared with the other crates' tests and the dev stack.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hsm_config::{Client, ClientLimits, Config, Grant, Operation, ServerTls};
use hsmgate_signer_api::v1::signer_client::SignerClient;
use hsmgate_signer_api::v1::{
    ListKeysRequest, SignBatchRequest, SignRequest, SignResponse, SignatureAlgorithm as Alg,
    sign_request,
};
use hsmgate_stack::{Log, Process, Provisioned, configs};
use serde::Serialize;
use tonic::transport::Channel;

pub const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Tokens provisioned for this test binary.
pub struct Tokens {
    pub dir: PathBuf,
    pub softhsm_conf: PathBuf,
    pub public_keys: PathBuf,
    /// two-dc.toml with PINs from a file in `dir`; tests edit a clone of it.
    pub config: Config,
}

pub fn tokens() -> &'static Tokens {
    static TOKENS: OnceLock<Tokens> = OnceLock::new();
    TOKENS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("hsmgate-tokens-")
            .tempdir()
            .expect("tempdir")
            .keep();
        let pin_file = dir.join("user.pin");
        // two-dc.toml as operators read it; only the PIN source moves.
        let mut config = configs::example("two-dc.toml", &dir).expect("example config");
        configs::pins_from_file(&mut config, &pin_file);
        let provisioned = Provisioned::new(&config, &dir).expect("provisioning");
        Tokens {
            softhsm_conf: provisioned.softhsm_conf,
            public_keys: provisioned.public_keys,
            config,
            dir,
        }
    })
}

/// Copies the provisioned tokens into `dir` and writes a `softhsm2.conf` for the copy; returns
/// its path. Each gateway gets its own copy (see `hsmgate_stack::private_copy`).
pub fn private_store(dir: &Path) -> PathBuf {
    private_store_of(&tokens().dir, dir)
}

/// [`private_store`] of the tokens provisioned in `provisioned` (its `tokens/` directory).
pub fn private_store_of(provisioned: &Path, dir: &Path) -> PathBuf {
    hsmgate_stack::private_copy(provisioned, dir).expect("private copy of the tokens")
}

/// Which PKCS#11 module the gateway loads for every HSM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Module {
    SoftHsm,
    /// `hsm-sim`, forwarding to SoftHSM2, faults from the control file.
    Sim,
}

impl Module {
    /// Makes every HSM of `config` load this module.
    pub fn apply(self, config: &mut Config) {
        if self == Module::Sim {
            configs::module_everywhere(config, &sim_module());
        }
    }
}

/// The hsm-sim module of this target directory (built by the kit if missing).
pub fn sim_module() -> PathBuf {
    hsmgate_stack::sim_module().unwrap_or_else(|e| panic!("hsm-sim module: {e}"))
}

/// A running `signer` process, killed on drop.
pub struct Gateway {
    process: Process,
    pub grpc: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub control: PathBuf,
}

impl Gateway {
    /// Starts a gateway on the two-datacenter config with `module` for every HSM.
    pub fn start(module: Module) -> Self {
        Self::start_with(module, |_| {})
    }

    /// Same, with the config edited first.
    pub fn start_with(module: Module, edit: impl FnOnce(&mut Config)) -> Self {
        let mut config = tokens().config.clone();
        module.apply(&mut config);
        edit(&mut config);
        Self::spawn(&config).unwrap_or_else(|e| panic!("gateway did not start: {e}"))
    }

    /// Spawns `signer` on `config` with a private copy of the tokens; `Err` carries its exit
    /// status and stderr. `config` is a [`Config`], or a `toml::Table` for a value the typed
    /// config cannot hold (an inline PIN).
    pub fn spawn(config: &impl Serialize) -> Result<Self, String> {
        Self::spawn_on(config, &tokens().dir)
    }

    /// [`Self::spawn`] on a copy of the tokens provisioned in `provisioned`.
    pub fn spawn_on(config: &impl Serialize, provisioned: &Path) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("hsmgate-gw-")
            .tempdir()
            .expect("tempdir");
        let softhsm_conf = private_store_of(provisioned, dir.path());
        let config_path = dir.path().join("signer.toml");
        configs::write(config, &config_path).expect("write config");
        let control = dir.path().join("faults");
        let mut command = Command::new(env!("CARGO_BIN_EXE_signer"));
        command
            .arg("--config")
            .arg(&config_path)
            .env("SOFTHSM2_CONF", softhsm_conf)
            .env("HSMSIM_CONTROL", &control)
            .env("RUST_LOG", "info,signer=debug");
        let process = Process::spawn_ready(
            "signer",
            command,
            Log::Capture,
            hsmgate_stack::READY_TIMEOUT,
        )
        .map_err(|e| match e {
            // Exited by itself (then its code) or never became ready (killed: no code).
            hsmgate_stack::Error::NotReady { exit, log, .. } => {
                format!("exit {exit:?}; stderr:\n{log}")
            }
            other => other.to_string(),
        })?;
        let grpc = process.ready_addr("grpc").expect("READY line names grpc");
        Ok(Self {
            grpc,
            metrics: process.ready().and_then(|r| r.addr("metrics")),
            process,
            dir,
            config_path,
            control,
        })
    }

    pub async fn client(&self) -> SignerClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.grpc))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        SignerClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// Replaces hsm-sim's control file atomically (it rereads it within ~20 ms).
    pub fn set_faults(&self, lines: &str) {
        let tmp = self.dir.path().join("faults.tmp");
        std::fs::write(&tmp, lines).expect("write faults");
        std::fs::rename(&tmp, &self.control).expect("rename faults");
    }

    /// Waits until the gateway's gRPC health check answers `SERVING` for `service` ("" for the
    /// server as a whole, which is what a balanced client's probe asks). The gateway updates
    /// its health every 250 ms, so it can still say `NOT_SERVING` just after
    /// [`Self::wait_available`] returned.
    pub async fn wait_serving(&self, service: &str, timeout: Duration) {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;
        let channel = Channel::from_shared(format!("http://{}", self.grpc))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let mut health = HealthClient::new(channel);
        self.poll_until(timeout, async || {
            let status = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .expect("health")
                .into_inner()
                .status;
            if status == tonic_health::ServingStatus::Serving as i32 {
                Ok(())
            } else {
                Err(format!(
                    "health of {service:?} never reported SERVING (last {status})"
                ))
            }
        })
        .await;
    }

    /// Waits until `key` is signable on at least `n` HSMs.
    pub async fn wait_available(&self, key: &str, n: u32, timeout: Duration) {
        let mut client = self.client().await;
        self.poll_until(timeout, async || {
            let keys = client
                .list_keys(ListKeysRequest {})
                .await
                .expect("ListKeys")
                .into_inner()
                .keys;
            let available = keys
                .iter()
                .find(|k| k.name == key)
                .map_or(0, |k| k.hsms_available);
            if available >= n {
                Ok(())
            } else {
                Err(format!("key {key}: {available} HSMs available, wanted {n}"))
            }
        })
        .await;
    }

    /// Waits (through `client`, whatever its transport) until every key is available on every
    /// HSM that holds it; panics with the gateway's log after 30 s.
    pub async fn wait_every_key(&self, client: &mut SignerClient<Channel>) {
        self.poll_until(Duration::from_secs(30), async || {
            let keys = client
                .list_keys(ListKeysRequest {})
                .await
                .expect("ListKeys")
                .into_inner()
                .keys;
            if keys
                .iter()
                .all(|k| k.hsms_available as usize == k.hsms.len())
            {
                Ok(())
            } else {
                Err(format!("HSMs not up: {keys:?}"))
            }
        })
        .await;
    }

    /// Runs `check` every 50 ms until it answers `Ok`; after `timeout`, panics with its last
    /// answer and the gateway's log.
    async fn poll_until(
        &self,
        timeout: Duration,
        mut check: impl AsyncFnMut() -> Result<(), String>,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let why = match check().await {
                Ok(()) => return,
                Err(why) => why,
            };
            assert!(Instant::now() < deadline, "{why}; logs:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        self.process
            .signal(sig)
            .unwrap_or_else(|e| panic!("signal {sig}: {e}"));
    }

    /// Waits for the process to exit; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        self.process.wait_exit(timeout).and_then(|s| s.code())
    }

    /// The gateway's `[audit] dir` (test configs say `audit`, next to the config file).
    pub fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("audit")
    }

    /// Every audit record so far, in order.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        self.audit_lines()
            .iter()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    /// [`Self::audit_records`], skipping a line that is not JSON: the torn last record a
    /// killed gateway may leave (never acknowledged; the next start-up cuts it off).
    pub fn audit_records_lenient(&self) -> Vec<serde_json::Value> {
        self.audit_lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The bytes of every audit file, oldest first (the file being written ends in the
    /// writer's preallocated zeros).
    pub fn audit_files(&self) -> Vec<Vec<u8>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.audit_dir())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
        files.sort();
        files
            .iter()
            .map(|f| std::fs::read(f).expect("audit file"))
            .collect()
    }

    /// Every line of the audit files, oldest file first.
    fn audit_lines(&self) -> Vec<String> {
        self.audit_files()
            .iter()
            .flat_map(|bytes| {
                String::from_utf8_lossy(&bytes[..signer::audit_records_end(bytes)])
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// A client over mTLS with `tls` (`Err` if the connection or handshake fails).
    pub async fn tls_client(
        &self,
        tls: &hsmgate_signer_api::client::ClientTls,
    ) -> Result<SignerClient<Channel>, hsmgate_signer_api::client::Error> {
        let channel =
            hsmgate_signer_api::client::connect(&format!("https://{}", self.grpc), Some(tls))
                .await?;
        Ok(SignerClient::new(channel))
    }

    /// The `signer` process id (for `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// Whether the log says `text` within `timeout`: the gateway's stderr is read by a thread,
    /// so a line written just before a reply can reach [`Self::logs`] just after it.
    pub async fn log_shows(&self, text: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.logs().contains(text) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    pub async fn metrics_text(&self) -> String {
        let addr = self.metrics.expect("metrics endpoint");
        let out = Command::new("curl")
            .args(["-sf", &format!("http://{addr}/metrics")])
            .output();
        match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            _ => http_get(addr, "/metrics").await,
        }
    }
}

/// A minimal HTTP/1.0 GET, so tests need no HTTP client crate.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect metrics");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("read");
    body
}

pub fn digest_request(key: &str, digest: Vec<u8>) -> SignRequest {
    SignRequest {
        key: key.into(),
        algorithm: Alg::Unspecified as i32,
        input: Some(sign_request::Input::Digest(digest)),
    }
}

pub fn message_request(key: &str, algorithm: Alg, message: Vec<u8>) -> SignRequest {
    SignRequest {
        key: key.into(),
        algorithm: algorithm as i32,
        input: Some(sign_request::Input::Message(message)),
    }
}

/// A digest that differs per call, so a stale or swapped signature cannot verify.
pub fn digest_for(n: u64, len: usize) -> Vec<u8> {
    use sha2::Digest;
    let full = sha2::Sha512::digest(n.to_be_bytes());
    full[..len].to_vec()
}

/// The SPKI provisioning wrote for `key`.
pub fn spki(key: &str) -> Vec<u8> {
    std::fs::read(tokens().public_keys.join(format!("{key}.spki.der"))).expect("public key file")
}

/// Verifies `sig` by `key` over `input` (a digest for ECDSA/RSA, the message for Ed25519)
/// with RustCrypto, from the public key provisioning wrote — never through the gateway.
pub fn verify(
    key: &str,
    algorithm: Alg,
    input: &[u8],
    sig: &[u8],
    prehashed: bool,
) -> Result<(), String> {
    use sha2::Digest;
    use spki::DecodePublicKey;
    let der = spki(key);
    let digest = |h: &str| -> Vec<u8> {
        if prehashed || algorithm == Alg::Ed25519 {
            input.to_vec()
        } else if h == "256" {
            sha2::Sha256::digest(input).to_vec()
        } else {
            sha2::Sha384::digest(input).to_vec()
        }
    };
    match algorithm {
        Alg::EcdsaSha256 => {
            use p256::ecdsa::signature::hazmat::PrehashVerifier;
            let vk =
                p256::ecdsa::VerifyingKey::from_public_key_der(&der).map_err(|e| e.to_string())?;
            let s = p256::ecdsa::Signature::from_der(sig).map_err(|e| e.to_string())?;
            vk.verify_prehash(&digest("256"), &s)
                .map_err(|e| e.to_string())
        }
        Alg::EcdsaSha384 => {
            use p384::ecdsa::signature::hazmat::PrehashVerifier;
            let vk =
                p384::ecdsa::VerifyingKey::from_public_key_der(&der).map_err(|e| e.to_string())?;
            let s = p384::ecdsa::Signature::from_der(sig).map_err(|e| e.to_string())?;
            vk.verify_prehash(&digest("384"), &s)
                .map_err(|e| e.to_string())
        }
        Alg::RsaPkcs1Sha256 | Alg::RsaPkcs1Sha384 | Alg::RsaPssSha256 | Alg::RsaPssSha384 => {
            let pk = rsa::PublicKey::from_public_key_der(&der).map_err(|e| e.to_string())?;
            let r = match algorithm {
                Alg::RsaPkcs1Sha256 => pk.verify(
                    rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
                    &digest("256"),
                    sig,
                ),
                Alg::RsaPkcs1Sha384 => pk.verify(
                    rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
                    &digest("384"),
                    sig,
                ),
                Alg::RsaPssSha256 => {
                    pk.verify(rsa::Pss::<sha2::Sha256>::new(), &digest("256"), sig)
                }
                _ => pk.verify(rsa::Pss::<sha2::Sha384>::new(), &digest("384"), sig),
            };
            r.map_err(|e| e.to_string())
        }
        Alg::Ed25519 => {
            use ed25519_dalek::Verifier;
            let vk = ed25519_dalek::VerifyingKey::from_public_key_der(&der)
                .map_err(|e| e.to_string())?;
            let s = ed25519_dalek::Signature::from_slice(sig).map_err(|e| e.to_string())?;
            vk.verify(input, &s).map_err(|e| e.to_string())
        }
        Alg::Unspecified => Err("unspecified algorithm".into()),
    }
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: Vec<String>,
    /// (time since start, HSM that signed) for every signature.
    pub served_by: Vec<(Duration, String)>,
    pub max_latency: Duration,
}

/// Drives `Sign` and `SignBatch` of P-256 digests from `tasks` tasks until `stop` says so,
/// verifying every signature. Batches have `batch` items.
pub async fn load(
    gateway: &Gateway,
    key: &'static str,
    tasks: usize,
    batch: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> LoadReport {
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let mut client = gateway.client().await;
        let stop = stop.clone();
        handles.push(tokio::spawn(async move {
            let mut report = LoadReport::default();
            let mut n: u64 = (t as u64) << 32;
            while !*stop.borrow() {
                let t0 = Instant::now();
                let requests: Vec<SignRequest> = (0..batch)
                    .map(|i| digest_request(key, digest_for(n + i as u64, 32)))
                    .collect();
                let digests: Vec<Vec<u8>> =
                    (0..batch).map(|i| digest_for(n + i as u64, 32)).collect();
                n += batch as u64;
                let mut req = tonic::Request::new(SignBatchRequest { requests });
                req.set_timeout(Duration::from_secs(10));
                let result: Result<Vec<SignResponse>, tonic::Status> = if batch == 1 {
                    let mut r = tonic::Request::new(req.into_inner().requests.remove(0));
                    r.set_timeout(Duration::from_secs(10));
                    client.sign(r).await.map(|r| vec![r.into_inner()])
                } else {
                    client
                        .sign_batch(req)
                        .await
                        .map(|r| r.into_inner().responses)
                };
                let elapsed = t0.elapsed();
                report.max_latency = report.max_latency.max(elapsed);
                match result {
                    Ok(responses) => {
                        for (resp, d) in responses.iter().zip(&digests) {
                            if let Err(e) = verify(key, Alg::EcdsaSha256, d, &resp.signature, true)
                            {
                                report
                                    .failed
                                    .push(format!("bad signature from {}: {e}", resp.hsm));
                            } else {
                                report.ok += 1;
                            }
                            report.served_by.push((started.elapsed(), resp.hsm.clone()));
                        }
                    }
                    Err(status) => {
                        report
                            .failed
                            .push(format!("{:?}: {}", status.code(), status.message()))
                    }
                }
            }
            report
        }));
    }
    let mut total = LoadReport::default();
    for h in handles {
        let r = h.await.expect("load task");
        total.ok += r.ok;
        total.failed.extend(r.failed);
        total.served_by.extend(r.served_by);
        total.max_latency = total.max_latency.max(r.max_latency);
    }
    total.served_by.sort();
    total
}

/// Signature counts per HSM among `served_by` entries within `[from, to)`.
pub fn served_between(
    report: &LoadReport,
    from: Duration,
    to: Duration,
) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    for (t, hsm) in &report.served_by {
        if *t >= from && *t < to {
            *m.entry(hsm.clone()).or_insert(0) += 1;
        }
    }
    m
}

/// A development PKI for mTLS tests (`hsm_config::devcerts`): a CA, the gateway's certificate
/// for 127.0.0.1, and a certificate per client name.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new(clients: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hsmgate-pki-")
            .tempdir()
            .expect("tempdir");
        hsm_config::devcerts::ensure(dir.path(), clients).expect("dev certificates");
        Self { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Client `name`'s files, trusting this PKI's CA for the server.
    pub fn client_tls(&self, name: &str) -> hsmgate_signer_api::client::ClientTls {
        let (cert, key) = hsm_config::devcerts::client_files(self.dir.path(), name);
        hsmgate_signer_api::client::ClientTls::new(self.path("ca.pem"), cert, key)
    }

    /// `[gateway.tls]` for a gateway with this PKI's server certificate and client CA.
    pub fn server_tls(&self) -> ServerTls {
        ServerTls {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: self.path("ca.pem"),
        }
    }
}

/// The development config, `hsm-config/examples/dev.toml`, exactly as `run.sh` runs it but for
/// its files: its two tokens (DEV-A, DEV-B) provisioned once per test binary, mTLS from `pki`,
/// port 0, the audit log in the gateway's directory. Returns the config and the provisioned
/// directory for [`Gateway::spawn_on`].
pub fn dev_config(pki: &Pki) -> (Config, &'static Path) {
    static DEV_TOKENS: OnceLock<(PathBuf, Config)> = OnceLock::new();
    let (dir, config) = DEV_TOKENS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("hsmgate-dev-tokens-")
            .tempdir()
            .expect("tempdir")
            .keep();
        let mut config = configs::example("dev.toml", &dir).expect("dev config");
        configs::pins_into(&mut config, &dir.join("pins"));
        Provisioned::new(&config, &dir).expect("provision");
        (dir, config)
    });
    let mut config = config.clone();
    assert_eq!(
        config.gateway.tls.as_ref().map(|t| t.cert.as_path()),
        Some(Path::new("../../target/dev/tls/server.pem")),
        "dev.toml's [gateway.tls] changed"
    );
    config.gateway.tls = Some(pki.server_tls());
    configs::ephemeral_ports(&mut config, true);
    config.audit.dir = PathBuf::from("audit");
    let text = configs::to_toml(&config).expect("dev config as TOML");
    assert!(!text.contains("../../target"), "{text}");
    (config, dir.as_path())
}

/// The two-datacenter test config with mTLS from `pki` instead of plain text, and `clients`
/// instead of the plain-text `tests` client.
pub fn mtls_config(pki: &Pki, clients: Vec<Client>) -> Config {
    let mut config = tokens().config.clone();
    assert!(
        config.gateway.insecure_plaintext.is_some() && config.clients.len() == 1,
        "two-dc.toml's plain-text `tests` client changed"
    );
    config.gateway.insecure_plaintext = None;
    config.gateway.tls = Some(pki.server_tls());
    config.clients = clients;
    config
}

/// Client `name` of a [`Pki`] (subject `CN=<name>,O=hsmgate dev`), granted each
/// `(keys, operations)` of `grants`, default limits.
pub fn client(name: &str, grants: &[(&[&str], &[Operation])]) -> Client {
    Client {
        name: name.to_owned(),
        subject: Some(format!("CN={name},O=hsmgate dev")),
        spki_sha256: None,
        grants: grants
            .iter()
            .map(|(keys, operations)| Grant {
                keys: keys.iter().map(|k| (*k).to_owned()).collect(),
                operations: operations.to_vec(),
            })
            .collect(),
        limits: ClientLimits::default(),
    }
}
