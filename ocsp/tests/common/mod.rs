//! Shared harness for the OCSP crate's integration tests: SoftHSM2 tokens provisioned once per
//! test binary (one datacenter, two HSMs, an ECDSA P-256 and an RSA-2048 key), a real `signer`
//! gateway process per test, issuer certificates made through the gateway by
//! `hsmgate-ocsp issuer-cert`, an OCSP configuration file for them, and the outside checkers
//! (`openssl ocsp`, Python `cryptography`) that the responses must satisfy.
//!
//! The gateway binary is the one `cargo build -p signer` put beside the test executable
//! (`target/debug/signer`): this crate must not depend on the signer's crate, so Cargo cannot
//! build it for us; the stack kit (`hsmgate-stack`) builds it when it is missing, provisions
//! and copies the tokens, and runs the process.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use hsmgate_signer_api::v1::ListKeysRequest;
use hsmgate_signer_api::v1::signer_client::SignerClient;
use hsmgate_stack::{Log, Process, Provisioned};

/// The gateway keys the tests sign with.
pub const KEY_P256: &str = "ocsp-p256";
pub const KEY_RSA: &str = "ocsp-rsa";

/// Issuer names in the generated OCSP configuration.
pub const ISSUER_P256: &str = "test-p256";
pub const ISSUER_RSA: &str = "test-rsa";

/// A small gateway: one datacenter, a pair of HSMs, both keys cloned into both, PINs from
/// `pin_file`; plain text on loopback, callers act as client `tests`. Written from the typed
/// schema by the stack kit.
fn gateway_config(pin_file: &Path) -> hsm_config::Config {
    use hsm_config::{KeyAlgorithm, Operation};
    use hsmgate_stack::configs;
    let mut config = configs::plaintext_gateway("dc-test", "tests");
    configs::ephemeral_ports(&mut config, true);
    configs::grant(
        &mut config,
        "tests",
        &["*"],
        &[
            Operation::SignRaw,
            Operation::SignCertificate,
            Operation::SignOcsp,
            Operation::SignCrl,
        ],
    );
    config.timeouts = hsm_config::Timeouts {
        hsm_call_ms: 2000,
        default_deadline_ms: 10000,
        probe_interval_ms: 200,
        drain_ms: 2000,
    };
    config.batching.max_request_items = 8192;
    config.batching.worker_chunk = 32;
    config.datacenters[0].hsms = vec![
        configs::softhsm("ocsp-a", "OCSP-A", pin_file, 2),
        configs::softhsm("ocsp-b", "OCSP-B", pin_file, 2),
    ];
    for (name, algorithm) in [
        (KEY_P256, KeyAlgorithm::EcdsaP256),
        (KEY_RSA, KeyAlgorithm::Rsa2048),
    ] {
        let mut key = configs::key(name, algorithm, &["ocsp-a", "ocsp-b"]);
        // `hsmgate-ocsp issuer-cert` signs the tests' issuer certificates undeclared (sign-raw).
        key.allow_unchecked_payloads =
            Some("tests: issuer certificates made by hsmgate-ocsp issuer-cert".into());
        config.keys.push(key);
    }
    config
}

/// Tokens provisioned once for this test binary.
pub struct Tokens {
    pub dir: PathBuf,
    /// The gateway configuration, PINs from a file in `dir`.
    pub config_text: String,
    /// `<key>.spki.der` and `<key>.pub.pem` of every key, as provisioning wrote them.
    pub public_keys: PathBuf,
}

pub fn tokens() -> &'static Tokens {
    static TOKENS: OnceLock<Tokens> = OnceLock::new();
    TOKENS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("hsmgate-ocsp-tokens-")
            .tempdir()
            .expect("tempdir")
            .keep();
        let pin_file = dir.join("user.pin");
        let mut config = gateway_config(&pin_file);
        config.base_dir = dir.clone();
        let config_text = hsmgate_stack::configs::to_toml(&config).expect("gateway config");
        let origin = dir.join("signer.toml");
        // Parsed back, so that the file the gateway reads is the one validated here.
        let config =
            hsm_config::Config::parse(&config_text, &origin, dir.clone()).expect("gateway config");
        let provisioned = Provisioned::new(&config, &dir).expect("provisioning SoftHSM2 tokens");
        Tokens {
            dir,
            config_text,
            public_keys: provisioned.public_keys,
        }
    })
}

/// `target/debug/signer`, beside this test executable (`target/debug/deps/<test>`); built by
/// the stack kit if it is not there (`cargo test -p ocsp` on a fresh clone).
pub fn signer_binary() -> PathBuf {
    hsmgate_stack::signer().unwrap_or_else(|e| panic!("the signer binary: {e}"))
}

/// A running `signer` gateway on a private copy of the tokens; killed on drop.
pub struct Gateway {
    process: Process,
    pub grpc: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Kills the gateway process (its HSMs with it), as an outage would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub fn start() -> Self {
        let tokens = tokens();
        let dir = tempfile::Builder::new()
            .prefix("hsmgate-ocsp-gw-")
            .tempdir()
            .expect("tempdir");
        // Each gateway gets its own copy: SoftHSM2 rewrites a token's file on every C_Login,
        // and another process starting at that moment can miss the token.
        let softhsm_conf =
            hsmgate_stack::private_copy(&tokens.dir, dir.path()).expect("copying the tokens");
        let config_path = dir.path().join("signer.toml");
        std::fs::write(&config_path, &tokens.config_text).expect("write gateway config");
        let mut command = Command::new(signer_binary());
        command
            .arg("--config")
            .arg(&config_path)
            .env("SOFTHSM2_CONF", &softhsm_conf)
            .env("RUST_LOG", "info");
        let process = Process::spawn_ready(
            "signer",
            command,
            Log::Capture,
            hsmgate_stack::READY_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("gateway did not become ready: {e}"));
        let grpc = process
            .ready_addr("grpc")
            .expect("READY line names grpc=ADDR");
        let gateway = Self { process, grpc, dir };
        gateway.wait_keys(Duration::from_secs(30));
        gateway
    }

    /// Waits until both keys can be signed with on both HSMs: READY means listening, and the
    /// HSMs join the rotation right after.
    fn wait_keys(&self, timeout: Duration) {
        let url = self.url();
        // Its own runtime on its own thread: callers may be inside a Tokio runtime already.
        let result = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let deadline = tokio::time::Instant::now() + timeout;
                let mut last = String::new();
                while tokio::time::Instant::now() < deadline {
                    if let Ok(mut client) = SignerClient::connect(url.clone()).await {
                        match client.list_keys(ListKeysRequest {}).await {
                            Ok(keys) => {
                                let keys = keys.into_inner().keys;
                                if [KEY_P256, KEY_RSA].iter().all(|k| {
                                    keys.iter().any(|i| i.name == *k && i.hsms_available >= 2)
                                }) {
                                    return Ok(());
                                }
                                last = format!("{keys:?}");
                            }
                            Err(e) => last = e.to_string(),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(last)
            })
        })
        .join()
        .expect("waiting thread");
        if let Err(last) = result {
            panic!(
                "gateway keys not available after {timeout:?}: {last}\n{}",
                self.logs()
            );
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn logs(&self) -> String {
        self.process.logs()
    }
}

/// Runs `hsmgate-ocsp` with `args`; its output.
pub fn hsmgate_ocsp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hsmgate-ocsp"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run hsmgate-ocsp")
}

/// A self-signed CA certificate for `key`, made through the gateway by `hsmgate-ocsp
/// issuer-cert` (the code operators use); returns the PEM file's path.
pub fn issuer_cert(gateway: &Gateway, key: &str, subject: &str, out: &Path) -> PathBuf {
    let url = gateway.url();
    let out_s = out.display().to_string();
    let output = hsmgate_ocsp(&[
        "issuer-cert",
        "--gateway",
        &url,
        "--key",
        key,
        "--subject",
        subject,
        "--days",
        "30",
        "--out",
        &out_s,
    ]);
    assert!(
        output.status.success(),
        "issuer-cert failed: {}\n{}\ngateway logs:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        gateway.logs()
    );
    out.to_owned()
}

/// A gateway, an issuer certificate per key, and an OCSP configuration using them with the
/// embedded store, all in one temporary directory.
pub struct Env {
    pub gateway: Gateway,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub issuer_p256: PathBuf,
    pub issuer_rsa: PathBuf,
}

impl Env {
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// Same, with the OCSP configuration ([`ocsp_config`]) edited first.
    pub fn start_with(edit: impl FnOnce(&mut ocsp::config::Config)) -> Self {
        let gateway = Gateway::start();
        let dir = tempfile::Builder::new()
            .prefix("hsmgate-ocsp-env-")
            .tempdir()
            .expect("tempdir");
        let issuer_p256 = issuer_cert(
            &gateway,
            KEY_P256,
            "CN=hsmgate OCSP test CA P-256,O=hsmgate",
            &dir.path().join("issuer-p256.pem"),
        );
        let issuer_rsa = issuer_cert(
            &gateway,
            KEY_RSA,
            "CN=hsmgate OCSP test CA RSA,O=hsmgate",
            &dir.path().join("issuer-rsa.pem"),
        );
        let mut config = ocsp_config(&gateway.url());
        edit(&mut config);
        let config_path = dir.path().join("ocsp.toml");
        write_config(&config, &config_path);
        Self {
            gateway,
            dir,
            config_path,
            issuer_p256,
            issuer_rsa,
        }
    }

    pub fn config(&self) -> ocsp::config::Config {
        ocsp::config::Config::load(&self.config_path).expect("ocsp config")
    }

    pub fn issuer_pem(&self, issuer: &str) -> &Path {
        match issuer {
            ISSUER_P256 => &self.issuer_p256,
            ISSUER_RSA => &self.issuer_rsa,
            other => panic!("no issuer {other}"),
        }
    }

    /// Writes `der` to a file in the environment's directory; its path.
    pub fn write(&self, name: &str, der: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, der).expect("write file");
        path
    }
}

/// The OCSP configuration of an [`Env`]: both issuers (certificates beside the file), the
/// embedded store, 96 h validity re-signed after 48 h; written by [`write_config`].
pub fn ocsp_config(gateway_url: &str) -> ocsp::config::Config {
    use ocsp::config::{Config, Issuer, Presigner, Responder, Store};
    let issuer = |name: &str, certificate: &str, key: &str| Issuer {
        name: name.into(),
        certificate: certificate.into(),
        signing_key: key.into(),
        crl: None,
    };
    Config {
        responder: Responder::new(SocketAddr::from(([127, 0, 0, 1], 0))),
        issuers: vec![
            issuer(ISSUER_P256, "issuer-p256.pem", KEY_P256),
            issuer(ISSUER_RSA, "issuer-rsa.pem", KEY_RSA),
        ],
        store: Store::Sqlite {
            path: "ocsp.sqlite".into(),
        },
        presigner: Presigner {
            gateway: gateway_url.into(),
            validity_hours: 96,
            refresh_after_hours: 48,
            batch: 64,
            interval_secs: 1,
            ..Presigner::default()
        },
        base_dir: PathBuf::new(),
    }
}

/// Writes `config` to `path` as TOML, from the typed schema (the stack kit's writer).
pub fn write_config(config: &ocsp::config::Config, path: &Path) {
    hsmgate_stack::configs::write(config, path).expect("write ocsp config");
}

/// What `openssl ocsp` said about a response.
#[derive(Debug)]
pub struct OpensslOcsp {
    pub success: bool,
    /// stdout and stderr together (OpenSSL splits its verdict between them).
    pub text: String,
}

/// `openssl ocsp -respin RESP -issuer ISSUER -CAfile ISSUER [-sha256] -serial 0xSERIAL
/// -resp_text [extra]`: parses the response, verifies its signature against the issuer, and
/// finds the SingleResponse for a CertID it builds itself (SHA-1 unless `sha256`).
pub fn openssl_ocsp(
    resp: &Path,
    issuer: &Path,
    serial_hex: &str,
    sha256: bool,
    extra: &[&str],
) -> OpensslOcsp {
    let mut cmd = Command::new("openssl");
    cmd.arg("ocsp")
        .arg("-respin")
        .arg(resp)
        .arg("-issuer")
        .arg(issuer)
        .arg("-CAfile")
        .arg(issuer);
    if sha256 {
        // Applies to the CertIDs of the -serial options after it.
        cmd.arg("-sha256");
    }
    cmd.arg("-serial")
        .arg(format!("0x{serial_hex}"))
        .arg("-resp_text")
        .args(extra);
    let out = cmd.output().expect("run openssl");
    OpensslOcsp {
        success: out.status.success(),
        text: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Whether Python's `cryptography` package can be imported.
pub fn python_cryptography() -> bool {
    Command::new("python3")
        .args(["-c", "import cryptography"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Checks a response with Python's `cryptography`, independently of this crate: parses it,
/// walks `.responses`, requires exactly one SingleResponse per CertID hash in `hashes`
/// (`sha1`, `sha256`) and no other, each naming `serial_hex` with the issuer's name and key
/// hashes, and the expected status (`good`, or `revoked:<unix time>:<reason name or none>`),
/// and verifies the signature over `tbs_response_bytes` with the issuer's public key. With
/// one hash it also reads the single-response accessors certbot uses
/// (`response.certificate_status`, `.serial_number`, ...); with two, it checks they raise
/// `ValueError` (they need exactly one SingleResponse). Prints one summary line on success.
pub fn python_check(
    resp: &Path,
    issuer: &Path,
    serial_hex: &str,
    expected: &str,
    hashes: &[&str],
) -> Result<String, String> {
    const SCRIPT: &str = r#"
import sys, hashlib
from cryptography import x509
from cryptography.x509 import ocsp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

resp_path, issuer_path, serial_hex, expected, hashes = sys.argv[1:6]
hashes = hashes.split(",")
resp = ocsp.load_der_ocsp_response(open(resp_path, "rb").read())
issuer = x509.load_pem_x509_certificate(open(issuer_path, "rb").read())
assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL, resp.response_status
spki = issuer.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
# The BIT STRING's value: parse the SPKI's second element by hand (a DER SEQUENCE of SEQUENCE, BIT STRING).
def tlv(b, i):
    tag, l = b[i], b[i + 1]
    i += 2
    if l & 0x80:
        n = l & 0x7f
        l = int.from_bytes(b[i:i + n], "big")
        i += n
    return tag, i, i + l
_, body, _ = tlv(spki, 0)
_, alg_start, alg_end = tlv(spki, body)
tag, bits_start, bits_end = tlv(spki, alg_end)
assert tag == 0x03
key_bits = spki[bits_start + 1:bits_end]
name_der = issuer.subject.public_bytes()
assert resp.responder_key_hash == hashlib.sha1(key_bits).digest(), "responderID byKey"
assert resp.responder_name is None
assert resp.certificates == [], "no certs"
seen = {}
for single in resp.responses:
    h = single.hash_algorithm.name
    digest = hashlib.new(h)
    digest.update(name_der)
    assert single.issuer_name_hash == digest.digest(), h + " issuerNameHash"
    digest = hashlib.new(h)
    digest.update(key_bits)
    assert single.issuer_key_hash == digest.digest(), h + " issuerKeyHash"
    assert single.serial_number == int(serial_hex, 16), (single.serial_number, serial_hex)
    assert single.next_update_utc is not None, "nextUpdate present"
    if expected == "good":
        assert single.certificate_status == ocsp.OCSPCertStatus.GOOD, single.certificate_status
    else:
        _, at, reason = expected.split(":")
        assert single.certificate_status == ocsp.OCSPCertStatus.REVOKED, single.certificate_status
        assert int(single.revocation_time_utc.timestamp()) == int(at), single.revocation_time_utc
        # RFC 6960 §2.4: thisUpdate is when the status was known to be correct (issue 12 item 7).
        assert single.this_update_utc >= single.revocation_time_utc, ("thisUpdate before revocationTime", single.this_update_utc, single.revocation_time_utc)
        got = single.revocation_reason.name if single.revocation_reason else "none"
        assert got == reason, got
    seen[h] = single
assert sorted(seen) == sorted(hashes), (sorted(seen), hashes)
if len(hashes) == 1:
    (only,) = seen.values()
    assert resp.hash_algorithm.name == hashes[0], resp.hash_algorithm
    assert resp.serial_number == int(serial_hex, 16), resp.serial_number
    assert resp.issuer_key_hash == only.issuer_key_hash
    assert resp.certificate_status == only.certificate_status, resp.certificate_status
    assert resp.next_update_utc == only.next_update_utc
    if expected != "good":
        assert resp.revocation_time_utc == only.revocation_time_utc
        assert resp.revocation_reason == only.revocation_reason
    accessors = "single-response accessors OK"
else:
    try:
        resp.certificate_status
    except ValueError:
        accessors = "single-response accessors refuse %d SingleResponses" % len(hashes)
    else:
        raise AssertionError("certificate_status read from %d SingleResponses" % len(hashes))
key = issuer.public_key()
if isinstance(key, ec.EllipticCurvePublicKey):
    key.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(resp.signature_hash_algorithm))
elif isinstance(key, rsa.RSAPublicKey):
    key.verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(), resp.signature_hash_algorithm)
else:
    raise SystemExit("unexpected key type")
s = seen[hashes[-1]]
print("python cryptography: signature OK (%s), SingleResponses %s, %s, status %s, thisUpdate %s, nextUpdate %s%s" % (
    resp.signature_algorithm_oid._name, sorted(seen), accessors, s.certificate_status.name, s.this_update_utc, s.next_update_utc,
    "" if expected == "good" else ", revoked %s reason %s" % (s.revocation_time_utc, s.revocation_reason)))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(resp)
        .arg(issuer)
        .arg(serial_hex)
        .arg(expected)
        .arg(hashes.join(","))
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}
