//! The configuration schema.
//!
//! Field names are what operators write in TOML; every table refuses unknown fields so that a
//! typo (`sesions = 4`) is an error instead of a silently ignored setting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

/// A whole gateway configuration.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub gateway: Gateway,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub batching: Batching,
    #[serde(default)]
    pub dispatch: Dispatch,
    pub datacenters: Vec<Datacenter>,
    #[serde(default)]
    pub keys: Vec<Key>,
    /// Who may call the signing API, and what each caller may sign.
    #[serde(default)]
    pub clients: Vec<Client>,
    /// The tamper-evident record of every signing request. Required: every signature has an
    /// audit record (ARCHITECTURE.md, invariant 5).
    pub audit: Audit,
    /// Directory of the file, against which relative paths (PIN files, modules) resolve.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Where the gateway listens and which datacenter it is in.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    /// gRPC listen address of the signing API.
    pub listen: SocketAddr,
    /// HTTP listen address of `/metrics`; none disables the endpoint.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Name of the datacenter this gateway runs in: its HSMs are preferred.
    pub local_datacenter: String,
    /// mTLS on the signing API: the gateway's certificate and the CA its clients' certificates
    /// must chain to. Required unless `insecure_plaintext` is set.
    #[serde(default)]
    pub tls: Option<ServerTls>,
    /// Plain-text gRPC with no client authentication, for tests on one machine. Refused unless
    /// `listen` is a loopback address; every caller acts as the one client named here.
    #[serde(default)]
    pub insecure_plaintext: Option<InsecurePlaintext>,
}

/// `[gateway.tls]`: PEM files, relative to the config file's directory.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// The gateway's certificate chain (leaf first).
    pub cert: PathBuf,
    /// The gateway's private key (PKCS#8 or SEC1 PEM); should be readable by its owner only.
    pub key: PathBuf,
    /// CA certificate(s) that client certificates must chain to. A certificate from any other
    /// CA is refused during the TLS handshake.
    pub client_ca: PathBuf,
}

/// `[gateway.insecure_plaintext]`: the explicit opt-out of TLS.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InsecurePlaintext {
    /// The `[[clients]]` entry whose grants plain-text callers get (they present no identity).
    pub client: String,
}

/// A caller of the signing API, known by its client certificate.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    /// Used in logs, metrics and the audit log.
    pub name: String,
    /// The certificate's subject as RFC 4514 prints it (most specific RDN first), e.g.
    /// `CN=ocsp-presigner,O=hsmgate` — what `openssl x509 -noout -subject -nameopt RFC2253`
    /// shows.
    #[serde(default)]
    pub subject: Option<String>,
    /// Or: the SHA-256 of the certificate's DER SubjectPublicKeyInfo, in hex. Survives
    /// re-issuance with the same key; does not depend on how subjects are spelled.
    #[serde(default)]
    pub spki_sha256: Option<String>,
    /// What this client may do. A request outside every grant is refused (PERMISSION_DENIED).
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// Rate and concurrency limits, so that one client cannot starve the others.
    #[serde(default)]
    pub limits: ClientLimits,
}

/// Keys and the operations a client may perform with them.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Key names; `"*"` is every key (meant for test configs, never for a root key).
    pub keys: Vec<String>,
    pub operations: Vec<Operation>,
}

/// What a signing request is for, as the request declares it (`hsmgate-payload` metadata).
///
/// Every operation but `sign-raw` names a payload the gateway can parse; a key granted any of
/// them is an *issuing* key ([`Config::is_issuing_key`]) and signs only what parses as declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    /// A digest or message of no declared type: nothing can be checked. Refused on keys that
    /// check payloads (every issuing key, unless it sets `allow_unchecked_payloads`).
    SignRaw,
    /// An X.509 `TBSCertificate` (RFC 5280 §4.1).
    SignCertificate,
    /// An OCSP `tbsResponseData` (RFC 6960 §4.2.1).
    SignOcsp,
    /// A CRL's `TBSCertList` (RFC 5280 §5.1). Its messages may be up to
    /// `batching.max_crl_bytes` (a shard of a million entries is ~40 MB), where every other
    /// payload is limited to 16 KiB.
    SignCrl,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SignRaw => "sign-raw",
            Self::SignCertificate => "sign-certificate",
            Self::SignOcsp => "sign-ocsp",
            Self::SignCrl => "sign-crl",
        }
    }

    /// Does this operation sign something relying parties trust (a certificate, an OCSP
    /// response, a CRL)? Such operations have a payload the gateway parses before signing.
    pub fn is_issuing(self) -> bool {
        self != Self::SignRaw
    }
}

/// What a key signs, as the gateway enforces it: derived from the key's settings and from
/// the grants that name it ([`Config::payload_policy`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadPolicy {
    /// Declared payloads must be messages that parse (and re-encode) as declared; digests are
    /// refused, since they cannot be checked.
    pub check_declared: bool,
    /// Undeclared (`sign-raw`) calls may use the key.
    pub allow_raw: bool,
}

/// Per-client limits. Every client has them: absent fields take the defaults below, so that
/// no client — a benchmark, a misbehaving service — can take the HSMs from the others.
///
/// Two kinds of limit apply. The caller's own (`signatures_per_sec`, `max_concurrent`,
/// `max_queued_signatures`) refuse a call at once with RESOURCE_EXHAUSTED. The shared one is the
/// HSMs' capacity (the sum of `max_in_flight` of the HSMs holding a key): when it is taken,
/// calls wait for it, and capacity freed goes first to the waiting client holding the least of
/// it per unit of `share` — so a client that floods the gateway slows itself, not the others.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientLimits {
    /// Signatures per second, sustained (a token bucket); beyond it RESOURCE_EXHAUSTED.
    /// Default: none (the fair share of HSM capacity bounds the client instead).
    pub signatures_per_sec: Option<u32>,
    /// Bucket size: signatures allowed at once after a quiet period. Default: one second's worth.
    pub burst: Option<u32>,
    /// Signing RPCs of this client in progress at once; beyond it RESOURCE_EXHAUSTED.
    pub max_concurrent: u32,
    /// Signatures of this client's calls waiting for HSM capacity at once; a call that would
    /// exceed it is refused at once (RESOURCE_EXHAUSTED) instead of queueing, having spent no
    /// signature. Default: `batching.max_request_items` (one full batch may wait).
    pub max_queued_signatures: Option<u32>,
    /// The client's weight when HSM capacity is contended: a client with `share = 2` holds up
    /// to twice the signatures in flight of one with `share = 1` before it waits its turn.
    pub share: u32,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            signatures_per_sec: None,
            burst: None,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            max_queued_signatures: None,
            share: 1,
        }
    }
}

/// Signing RPCs a client may have in progress when its limits do not say.
pub const DEFAULT_MAX_CONCURRENT: u32 = 1_024;

/// `[audit]`: the append-only, hash-chained log of signing requests.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    /// Directory of the log files (`audit-<first seq>.jsonl`), relative to the config file.
    pub dir: PathBuf,
    /// A file is closed and a new one started once it reaches this size; the chain continues.
    #[serde(default = "default_audit_file_bytes")]
    pub max_file_bytes: u64,
    /// What happens when a record cannot be written.
    #[serde(default)]
    pub on_failure: AuditFailure,
    /// Group commit's wait, in microseconds (0: none). When other signing calls are in flight
    /// as a record arrives, the writer waits this long before it writes and syncs, so that one
    /// `fdatasync` covers their records too: on a busy gateway a sync then serves tens of
    /// records instead of a few, and the disk's and the writer's CPU per record fall with it.
    /// A call alone on the gateway never waits, and the wait ends as soon as every call that
    /// was under way has handed its record over. It is what a call may wait at most in
    /// addition to the sync; like PostgreSQL's `commit_delay`.
    #[serde(default = "default_audit_commit_delay_us")]
    pub commit_delay_us: u64,
    /// The file being written is extended this many bytes at a time, with zeros that records
    /// then overwrite (0: plain appends). A sync of records then writes no inode and does not
    /// wait for the file system's journal. The zeros are written after a group's calls have
    /// their answer, half this size before the records reach them. The file's records end at
    /// its first NUL; it is cut to its records when the next file starts and when the gateway
    /// stops.
    #[serde(default = "default_audit_preallocate_bytes")]
    pub preallocate_bytes: u64,
    /// **Benchmarks only**: run with no audit log at all, to measure what the log costs
    /// (`bench/security/run.sh`). Only a `signer` built with its `bench-unaudited` feature —
    /// which no crate and no default build enables — honours it; every other build refuses the
    /// file at start-up, naming this field. Refused here unless `gateway.listen` is a loopback
    /// address, so that even a benchmark build cannot serve unaudited signatures to a network.
    #[serde(default)]
    pub bench_unaudited: bool,
}

fn default_audit_file_bytes() -> u64 {
    64 << 20
}

fn default_audit_commit_delay_us() -> u64 {
    DEFAULT_AUDIT_COMMIT_DELAY_US
}

fn default_audit_preallocate_bytes() -> u64 {
    DEFAULT_AUDIT_PREALLOCATE_BYTES
}

/// [`Audit::preallocate_bytes`] when the file does not set it.
pub const DEFAULT_AUDIT_PREALLOCATE_BYTES: u64 = 4 << 20;

/// [`Audit::commit_delay_us`] when the file does not set it.
pub const DEFAULT_AUDIT_COMMIT_DELAY_US: u64 = 500;

/// The gateway's choice when the audit sink is lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditFailure {
    /// Fail closed (the default): no signature leaves the gateway without its record; callers
    /// get UNAVAILABLE until records can be written again.
    #[default]
    StopSigning,
    /// Fail open: signatures are returned, the failure is logged and counted
    /// (`hsmgate_audit_failures_total`). Only for deployments that audit elsewhere.
    LogAndContinue,
}

/// Time limits. All in milliseconds in the file.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// A single PKCS#11 call that takes longer than this marks its HSM as hung: the request is
    /// retried on another HSM and the HSM leaves rotation until a probe succeeds.
    pub hsm_call_ms: u64,
    /// Deadline applied to a request whose caller sent none (`grpc-timeout`).
    pub default_deadline_ms: u64,
    /// How often an HSM out of rotation is probed (reconnect, log in, find keys).
    pub probe_interval_ms: u64,
    /// On SIGTERM, how long in-flight requests get to finish.
    pub drain_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            hsm_call_ms: 2_000,
            default_deadline_ms: 10_000,
            probe_interval_ms: 1_000,
            drain_ms: 10_000,
        }
    }
}

impl Timeouts {
    pub fn hsm_call(&self) -> Duration {
        Duration::from_millis(self.hsm_call_ms)
    }
    pub fn default_deadline(&self) -> Duration {
        Duration::from_millis(self.default_deadline_ms)
    }
    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms)
    }
    pub fn drain(&self) -> Duration {
        Duration::from_millis(self.drain_ms)
    }
}

/// Batching limits.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Batching {
    /// Most signatures one `SignBatch` call may ask for. At most what every key's HSMs can hold
    /// in flight together (the sum of their `max_in_flight`), checked at load. It also bounds the
    /// size of a request message (1 KiB an item).
    pub max_request_items: usize,
    /// Largest `TBSCertList` one `sign-crl` item may carry (every other item: 16 KiB). A CRL
    /// shard of 1,000,000 entries is ~30-40 MB. Only when some client is granted `sign-crl`
    /// does the gateway's request-message limit grow to this ([`Config::max_crl_message_bytes`]);
    /// the check that the bytes parse as a TBSCertList streams over the entries, so what it
    /// holds beyond the message itself is one entry.
    pub max_crl_bytes: usize,
    /// Most signatures a worker takes off its HSM's queue in one go: large enough to keep
    /// per-signature overhead small, small enough to spread a batch over every session.
    pub worker_chunk: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            // One HSM's default max_in_flight: valid for a one-HSM configuration.
            max_request_items: 4_096,
            worker_chunk: 32,
            max_crl_bytes: 64 << 20,
        }
    }
}

/// How requests are spread over HSMs.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dispatch {
    /// When every healthy local HSM has more than this many signatures queued or in flight,
    /// new work spills to the other datacenters' HSMs.
    pub spill_queue_depth: usize,
}

impl Default for Dispatch {
    fn default() -> Self {
        Self {
            spill_queue_depth: 4_096,
        }
    }
}

/// A datacenter and its HSMs (a pair in production).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Datacenter {
    pub name: String,
    pub hsms: Vec<Hsm>,
}

/// One HSM: a token reached through a PKCS#11 module.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Hsm {
    /// Name used in logs, metrics and `keys[].hsms`.
    pub name: String,
    /// Path of the PKCS#11 module (`.so`).
    pub module: PathBuf,
    /// Token label. Tokens are found by label, never by slot id: slot ids change.
    pub token_label: String,
    /// Where the user PIN comes from. Inline PINs are not accepted.
    pub pin: PinSource,
    /// Logged-in sessions kept open, one worker thread each.
    #[serde(default = "default_sessions")]
    pub sessions: u32,
    /// Most signatures queued or in flight on this HSM; beyond it the HSM counts as saturated.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Environment for the module, set while it is loaded (e.g. `P11_KIT_SERVER_ADDRESS` for
    /// p11-kit's client, one connection per HSM). HSMs with the same module and environment
    /// share one PKCS#11 context.
    #[serde(default)]
    pub module_env: BTreeMap<String, String>,
}

fn default_sessions() -> u32 {
    4
}
fn default_max_in_flight() -> u32 {
    4_096
}

impl Hsm {
    /// The module path, resolved against the config file's directory.
    pub fn module_path(&self, base_dir: &Path) -> PathBuf {
        base_dir.join(&self.module)
    }
}

/// Where a PIN comes from: `pin = { file = "pins/a1.pin" }` or `pin = { env = "HSM_A1_PIN" }`.
///
/// Deserialization never fails on this field, on purpose: toml's parse errors quote the
/// offending line, and for `pin = "1234"` that line is the secret. Anything that is not one of
/// the two accepted forms becomes [`PinSource::Invalid`], which validation reports by field path
/// without the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinSource {
    /// A file holding the PIN (trailing newline ignored); it should be readable by its owner only.
    File(PathBuf),
    /// An environment variable holding the PIN.
    Env(String),
    /// Not an accepted form; the reason never contains the value.
    Invalid(&'static str),
}

impl<'de> Deserialize<'de> for PinSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PinVisitor;
        const INLINE: &str =
            "inline PINs are refused: write pin = { file = \"...\" } or pin = { env = \"...\" }";
        const FORM: &str = "must be a table with exactly one of `file` or `env`";

        impl<'de> Visitor<'de> for PinVisitor {
            type Value = PinSource;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("{ file = \"...\" } or { env = \"...\" }")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<PinSource, E> {
                Ok(PinSource::Invalid(INLINE))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<PinSource, E> {
                Ok(PinSource::Invalid(INLINE))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<PinSource, E> {
                Ok(PinSource::Invalid(INLINE))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<PinSource, E> {
                Ok(PinSource::Invalid(INLINE))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<PinSource, E> {
                Ok(PinSource::Invalid(FORM))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<PinSource, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(PinSource::Invalid(FORM))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PinSource, A::Error> {
                let (mut file, mut env, mut other) = (None, None, false);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "file" => file = map.next_value::<MaybeStr>()?.into_string(),
                        "env" => env = map.next_value::<MaybeStr>()?.into_string(),
                        _ => {
                            other = true;
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(match (file, env, other) {
                    (Some(f), None, false) => PinSource::File(PathBuf::from(f)),
                    (None, Some(e), false) => PinSource::Env(e),
                    _ => PinSource::Invalid(FORM),
                })
            }
        }
        deserializer.deserialize_any(PinVisitor)
    }
}

/// Written back as it is read (`{ file = "..." }` or `{ env = "..." }`), so that the stack kit
/// can write configs from this schema; an invalid source has nothing to write and is an error.
impl Serialize for PinSource {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            Self::File(path) => map.serialize_entry("file", path)?,
            Self::Env(name) => map.serialize_entry("env", name)?,
            Self::Invalid(reason) => return Err(serde::ser::Error::custom(reason)),
        }
        map.end()
    }
}

/// A value that should be a string, accepted whatever it is so that the error can be ours.
#[derive(Deserialize)]
#[serde(untagged)]
enum MaybeStr {
    Str(String),
    Other(IgnoredAny),
}

impl MaybeStr {
    fn into_string(self) -> Option<String> {
        match self {
            Self::Str(s) => Some(s),
            Self::Other(_) => None,
        }
    }
}

/// A signing key, cloned into one or more HSMs.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    /// The name callers use in the signing API.
    pub name: String,
    /// `CKA_LABEL` of the private and public key objects in the HSMs.
    pub label: String,
    pub algorithm: KeyAlgorithm,
    /// Names of the HSMs that hold a clone of this key.
    pub hsms: Vec<String>,
    /// Check what is signed: every request must declare its payload (a certificate or an OCSP
    /// response) and send the message itself, which must parse as that type. Raw digests are
    /// refused, so a client granted OCSP signing cannot get a certificate signed. Default: on
    /// for issuing keys (any client is granted `sign-certificate` or `sign-ocsp` on it, `"*"`
    /// included), off for others. `false` on an issuing key is refused unless the key sets
    /// `allow_unchecked_payloads`.
    #[serde(default)]
    pub check_payload: Option<bool>,
    /// The explicit opt-in, with its reason, to sign unchecked payloads with an issuing key:
    /// `sign-raw` grants on it and `check_payload = false` are accepted. Logged as a warning at
    /// every start and reload and exported as `hsmgate_unchecked_payload_keys{key, reason}`. For
    /// test and benchmark keys that nothing trusts, never for a CA's keys.
    #[serde(default)]
    pub allow_unchecked_payloads: Option<String>,
}

/// Key types the gateway signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
    Ed25519,
}

impl KeyAlgorithm {
    /// The name used in files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa3072 => "rsa-3072",
            Self::Rsa4096 => "rsa-4096",
            Self::Ed25519 => "ed25519",
        }
    }

    /// RSA modulus size in bits, for RSA keys.
    pub fn rsa_bits(self) -> Option<u32> {
        match self {
            Self::Rsa2048 => Some(2048),
            Self::Rsa3072 => Some(3072),
            Self::Rsa4096 => Some(4096),
            _ => None,
        }
    }
}

impl Config {
    /// Every HSM with the name of its datacenter, in file order.
    pub fn hsms(&self) -> impl Iterator<Item = (&Datacenter, &Hsm)> {
        self.datacenters
            .iter()
            .flat_map(|dc| dc.hsms.iter().map(move |h| (dc, h)))
    }

    /// The HSM of that name.
    pub fn hsm(&self, name: &str) -> Option<(&Datacenter, &Hsm)> {
        self.hsms().find(|(_, h)| h.name == name)
    }

    /// The key of that name.
    pub fn key(&self, name: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.name == name)
    }

    /// Is `key` an issuing key: is some client granted an issuing operation (`sign-certificate`,
    /// `sign-ocsp`, `sign-crl`) on it, by name or by `"*"`?
    pub fn is_issuing_key(&self, key: &str) -> bool {
        self.clients.iter().flat_map(|c| &c.grants).any(|g| {
            g.operations.iter().any(|op| op.is_issuing())
                && g.keys.iter().any(|k| k == key || k == "*")
        })
    }

    /// The largest `sign-crl` message the gateway accepts: `batching.max_crl_bytes` when some
    /// client is granted `sign-crl` (on any key), else 0 (no CRL item may exceed the 16 KiB
    /// every other item is held to, and the request-message limit stays what
    /// `max_request_items` makes it).
    pub fn max_crl_message_bytes(&self) -> usize {
        let granted = self
            .clients
            .iter()
            .flat_map(|c| &c.grants)
            .any(|g| g.operations.contains(&Operation::SignCrl));
        if granted {
            self.batching.max_crl_bytes
        } else {
            0
        }
    }

    /// How the gateway treats what `key` signs. Issuing keys check declared payloads unless
    /// `check_payload = false`, and take `sign-raw` only with `allow_unchecked_payloads`;
    /// validation refuses a file where the grants or settings would need more.
    pub fn payload_policy(&self, key: &Key) -> PayloadPolicy {
        let check_declared = key
            .check_payload
            .unwrap_or_else(|| self.is_issuing_key(&key.name));
        PayloadPolicy {
            check_declared,
            allow_raw: !check_declared || key.allow_unchecked_payloads.is_some(),
        }
    }

    /// The client of that name.
    pub fn client(&self, name: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.name == name)
    }

    /// A path from the file (TLS files, audit directory), resolved against its directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }
}
