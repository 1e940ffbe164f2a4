//! SoftHSM2 provisioning for development and tests: one token per HSM of a configuration, and
//! **the same key** (a clone) in every HSM the configuration says holds it, as Luna cloning
//! does between a CA's HSMs.
//!
//! Everything is done by Debian's tools run as subprocesses (`softhsm2-util`, `pkcs11-tool`
//! from OpenSC, `openssl`), never by loading a PKCS#11 module in this process: the gateway's
//! integration tests call [`provision`] from a process that loads SoftHSM2 itself, and a
//! second, differently configured SoftHSM2 instance in it would clash. `SOFTHSM2_CONF` is
//! passed to each tool through its own environment, never set on this process.
//!
//! # What it does
//!
//! 1. Uses [`ProvisionOptions::softhsm_conf`], creating it (and its token directory) if absent.
//! 2. For every HSM: reads its PIN. A PIN *file* that does not exist yet is created with a
//!    random 16-hex-digit PIN, mode 0600, unless the token already exists (then the PIN is
//!    lost and provisioning stops). An unset PIN variable is an error.
//! 3. Creates the token (`softhsm2-util --init-token --free`) unless one with that label
//!    exists. The SO PIN is random and thrown away: these are throw-away dev tokens; to start
//!    over, delete the token directory.
//! 4. For every key: if every HSM that should hold it does, checks that they hold the same
//!    public key of the configured algorithm. If none does, generates the key once with
//!    `openssl genpkey` into a private temporary directory (0700, deleted afterwards) and
//!    imports it into each of them with `softhsm2-util --import`, which creates the private
//!    *and* the public key object (same `CKA_LABEL`, same `CKA_ID`). If only some do, stops:
//!    a non-extractable key cannot be cloned after the fact.
//! 5. Writes each key's public key to [`ProvisionOptions::public_key_dir`] as
//!    `<key name>.spki.der` and `<key name>.pub.pem`, taken from what the tokens hold (so it
//!    also works when the keys existed before, without any earlier file).
//!
//! No token is created and no key generated until every check passed: PINs, tokens and the
//! state of every key are examined first (only the SoftHSM2 config, its token directory and
//! missing PIN files may have been created by then). Runs on one SoftHSM2 config are serialised
//! by an exclusive lock on `<conf>.lock`, so concurrent callers (parallel tests) are safe.
//!
//! Several HSM entries naming the same token label (e.g. one through SoftHSM2, one through a
//! fault-injecting forwarder) are the same SoftHSM2 token and are provisioned once.
//!
//! # Objects created
//!
//! `softhsm2-util --import` creates a private key (`CKA_SENSITIVE`, not extractable, `CKA_SIGN`)
//! and a public key (`CKA_VERIFY`), both with `CKA_LABEL` = the key's `label` and
//! `CKA_ID` = the first 8 bytes of SHA-256 of the key's **name** (see [`key_id`]). EC keys get
//! `CKA_EC_PARAMS` = the curve OID and `CKA_EC_POINT` = the DER OCTET STRING of the point; RSA
//! keys `CKA_MODULUS` and `CKA_PUBLIC_EXPONENT`; Ed25519 keys (`CKK_EC_EDWARDS`)
//! `CKA_EC_PARAMS` = OID 1.3.101.112 (`06 03 2b 65 70`) and `CKA_EC_POINT` = the **raw** 32-byte
//! point, not DER-wrapped (`pkcs11-tool --keypairgen` instead writes the printable string
//! "edwards25519" and a wrapped point; both forms are accepted when reading keys back).
//!
//! # PINs
//!
//! This is development provisioning of SoftHSM2 tokens: the user PIN and the SO PIN are passed
//! on the tools' command lines (visible in `/proc` to the same user while they run), because
//! these tools take no other non-interactive form. PINs are never printed, logged, or put in
//! an error: errors name the failed step and quote the tool's output with any PIN redacted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::schema::{Config, Hsm, Key, KeyAlgorithm, PinSource};
use crate::secret::Pin;

/// Debian's SoftHSM2 module, used by `pkcs11-tool` unless an HSM's configured module is itself
/// a `libsofthsm2.so`.
pub const SOFTHSM2_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Where provisioning puts things.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionOptions {
    /// SoftHSM2 config file to use (`SOFTHSM2_CONF` for the tools). If it does not exist it is
    /// created with `directories.tokendir = <dir of the conf>/tokens` and
    /// `objectstore.backend = file`, and that directory is created.
    pub softhsm_conf: PathBuf,
    /// Directory where the public key of every key is written as `<key name>.spki.der` and
    /// `<key name>.pub.pem` (so tests can verify signatures independently of the gateway).
    pub public_key_dir: PathBuf,
}

impl ProvisionOptions {
    /// `softhsm_conf`, with public keys in `<dir of the conf>/public-keys`.
    pub fn new(softhsm_conf: impl Into<PathBuf>) -> Self {
        let softhsm_conf = softhsm_conf.into();
        let public_key_dir = softhsm_conf
            .parent()
            .unwrap_or(Path::new("."))
            .join("public-keys");
        Self {
            softhsm_conf,
            public_key_dir,
        }
    }
}

/// What [`provision`] did. Names are token labels and key names, in configuration order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProvisionReport {
    /// Labels of the tokens initialised by this run.
    pub tokens_created: Vec<String>,
    /// Keys generated and imported into all their HSMs by this run.
    pub keys_created: Vec<String>,
    /// Keys that every HSM listed for them already held.
    pub keys_present: Vec<String>,
    /// PIN files that did not exist and were filled with a random PIN (mode 0600).
    pub pin_files_created: Vec<PathBuf>,
}

/// The `CKA_ID` given to a key's objects when provisioning creates them: the first 8 bytes of
/// SHA-256 of the key's name. Keys are found by `CKA_LABEL`; the id is stable across runs and
/// tokens so that clones carry the same id everywhere.
pub fn key_id(key_name: &str) -> [u8; 8] {
    let digest = Sha256::digest(key_name.as_bytes());
    let mut id = [0; 8];
    id.copy_from_slice(&digest[..8]);
    id
}

/// Creates the SoftHSM2 tokens of every HSM of `config` and clones every key into the HSMs that
/// hold it. Idempotent: a second run changes nothing and reports every key as present.
/// See the [module documentation](self).
pub fn provision(config: &Config, options: &ProvisionOptions) -> Result<ProvisionReport, Error> {
    // One provisioning at a time per SoftHSM2 config, across threads and processes (tests may
    // share one): the second waits, then finds everything present.
    let _lock = lock(&options.softhsm_conf)?;
    let conf = prepare_softhsm_conf(&options.softhsm_conf)?;
    let tools = Tools { conf };
    let mut report = ProvisionReport::default();

    // Tokens as SoftHSM2 sees them now.
    let existing = tools.token_labels()?;

    // One entry per distinct token label, holding the HSMs that name it.
    let mut tokens: Vec<Token> = Vec::new();
    for (_, hsm) in config.hsms() {
        match tokens.iter_mut().find(|t| t.label == hsm.token_label) {
            Some(t) => t.hsms.push(hsm),
            None => tokens.push(Token {
                label: hsm.token_label.clone(),
                module: module_for(hsm, config),
                hsms: vec![hsm],
                pin: None,
                exists: existing.contains(&hsm.token_label),
                objects: Vec::new(),
            }),
        }
    }

    // PINs (creating missing PIN files only for tokens that do not exist yet).
    for token in &mut tokens {
        let mut pins: Vec<(&Hsm, Pin)> = Vec::new();
        for hsm in &token.hsms {
            let pin = read_or_create_pin(hsm, &token.label, token.exists, config, &mut report)?;
            pins.push((hsm, pin));
        }
        if let Some(((first, pin), rest)) = pins.split_first() {
            if let Some((other, _)) = rest.iter().find(|(_, p)| p.expose() != pin.expose()) {
                return Err(fail(format!(
                    "HSMs `{}` and `{}` share token {} but their PINs differ",
                    first.name, other.name, token.label
                )));
            }
            token.pin = Some(pin.clone());
        }
    }

    // What every existing token holds.
    for token in tokens.iter_mut().filter(|t| t.exists) {
        token.objects = tools.list_objects(token)?;
    }

    // The state of every key, with every problem reported at once before anything changes.
    let mut plans: Vec<(&Key, Vec<usize>, KeyState)> = Vec::new();
    let mut problems = Vec::new();
    check_label_clashes(config, &tokens, &mut problems);
    for key in &config.keys {
        let holders = token_indices(key, config, &tokens);
        match classify(key, &holders, &tokens) {
            Ok(state) => plans.push((key, holders, state)),
            Err(e) => problems.push(e),
        }
    }
    if !problems.is_empty() {
        return Err(fail(problems.join("; ")));
    }

    // Existing keys: the same public key everywhere.
    let mut public_keys: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    for (key, holders, state) in &plans {
        if let KeyState::Present(found) = state {
            let spki = same_public_key(&tools, key, holders, found, &tokens)?;
            public_keys.insert(&key.name, spki);
        }
    }

    // From here on, things change: tokens first.
    for token in tokens.iter_mut().filter(|t| !t.exists) {
        tools.init_token(token)?;
        token.exists = true;
        report.tokens_created.push(token.label.clone());
    }

    // Missing keys: generate once, import everywhere.
    let creating: Vec<_> = plans
        .iter()
        .filter(|(_, _, s)| matches!(s, KeyState::Absent))
        .collect();
    if !creating.is_empty() {
        let scratch = tempfile::Builder::new()
            .prefix("hsm-config-provision-")
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir()
            .map_err(|e| fail(format!("cannot create a private temporary directory: {e}")))?;
        let mut touched = vec![false; tokens.len()];
        for (key, holders, _) in &creating {
            let pem = scratch.path().join(format!("{}.p8.pem", key.name));
            tools.generate(key, &pem)?;
            let spki = tools.public_key_of(&pem)?;
            for &t in holders {
                tools.import(&tokens[t], key, &pem)?;
                touched[t] = true;
            }
            // Remove the private key as soon as it is in every HSM (the directory goes too).
            let _ = fs::remove_file(&pem);
            public_keys.insert(&key.name, spki);
        }
        drop(scratch);

        // Check what the tokens now hold: both objects, the right algorithm, the same key.
        for (t, token) in tokens.iter_mut().enumerate() {
            if touched[t] {
                token.objects = tools.list_objects(token)?;
            }
        }
        for (key, holders, _) in &creating {
            let found = holders
                .iter()
                .map(|&t| match find_key(key, &tokens[t]) {
                    Ok(Some(f)) => Ok(f),
                    Ok(None) => Err(fail(format!(
                        "key `{}`: imported into token {} but not found there afterwards",
                        key.name, tokens[t].label
                    ))),
                    Err(e) => Err(fail(format!("key `{}` after import: {e}", key.name))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let spki = same_public_key(&tools, key, holders, &found, &tokens)?;
            if public_keys.get(key.name.as_str()) != Some(&spki) {
                return Err(fail(format!(
                    "key `{}`: the public key read back from the tokens differs from the one generated",
                    key.name
                )));
            }
            report.keys_created.push(key.name.clone());
        }
    }
    for (key, _, state) in &plans {
        if matches!(state, KeyState::Present(_)) {
            report.keys_present.push(key.name.clone());
        }
    }

    // Public key files.
    create_dir(&options.public_key_dir)?;
    for key in &config.keys {
        if let Some(spki) = public_keys.get(key.name.as_str()) {
            let dir = &options.public_key_dir;
            write_if_changed(&dir.join(format!("{}.spki.der", key.name)), spki)?;
            let pem = pem_public_key(spki);
            write_if_changed(&dir.join(format!("{}.pub.pem", key.name)), pem.as_bytes())?;
        }
    }
    Ok(report)
}

fn fail(message: String) -> Error {
    Error::Provision(message)
}

// ------------------------------------------------------------------------------------------
// SoftHSM2 configuration, PINs, files

/// An exclusive lock on `<conf>.lock`, released when the file is dropped.
fn lock(conf: &Path) -> Result<fs::File, Error> {
    if let Some(dir) = conf.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_dir(dir)?;
    }
    let mut path = conf.as_os_str().to_owned();
    path.push(".lock");
    let path = PathBuf::from(path);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| fail(format!("cannot open lock file {}: {e}", path.display())))?;
    file.lock()
        .map_err(|e| fail(format!("cannot lock {}: {e}", path.display())))?;
    Ok(file)
}

/// Makes `path` absolute and creates the conf (and its token dir) if absent; if the conf exists
/// and names a token directory that does not, creates that directory.
fn prepare_softhsm_conf(path: &Path) -> Result<PathBuf, Error> {
    let conf = std::path::absolute(path)
        .map_err(|e| fail(format!("SoftHSM2 config {}: {e}", path.display())))?;
    match fs::read_to_string(&conf) {
        Ok(text) => {
            let tokendir = text.lines().find_map(|l| {
                let (name, value) = l.split_once('=')?;
                (name.trim() == "directories.tokendir").then(|| PathBuf::from(value.trim()))
            });
            if let Some(dir) = tokendir.filter(|d| !d.as_os_str().is_empty()) {
                create_dir(&dir)?;
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let dir = conf.parent().unwrap_or(Path::new("/"));
            let tokens = dir.join("tokens");
            create_dir(&tokens)?;
            let tokens_str = tokens.to_str().ok_or_else(|| {
                fail(format!(
                    "token directory {} is not valid UTF-8",
                    tokens.display()
                ))
            })?;
            let text = format!(
                "# Written by `hsm-config provision`: SoftHSM2 tokens for development.\n\
                 directories.tokendir = {tokens_str}\n\
                 objectstore.backend = file\n\
                 log.level = ERROR\n"
            );
            match OpenOptions::new().write(true).create_new(true).open(&conf) {
                Ok(mut f) => f
                    .write_all(text.as_bytes())
                    .map_err(|e| fail(format!("cannot write {}: {e}", conf.display())))?,
                // Someone else just wrote it: use theirs.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(fail(format!("cannot create {}: {e}", conf.display()))),
            }
        }
        Err(e) => return Err(fail(format!("cannot read {}: {e}", conf.display()))),
    }
    Ok(conf)
}

fn create_dir(dir: &Path) -> Result<(), Error> {
    fs::create_dir_all(dir)
        .map_err(|e| fail(format!("cannot create directory {}: {e}", dir.display())))
}

/// Reads the PIN of `hsm`; a PIN file that does not exist is created with a random PIN, but
/// only for a token that does not exist yet (for an existing token that PIN would be wrong).
fn read_or_create_pin(
    hsm: &Hsm,
    token_label: &str,
    token_exists: bool,
    config: &Config,
    report: &mut ProvisionReport,
) -> Result<Pin, Error> {
    if let PinSource::File(file) = &hsm.pin {
        let path = config.base_dir.join(file);
        if !path.exists() {
            if token_exists {
                return Err(fail(format!(
                    "HSM `{}`: token {token_label} exists but its PIN file {} does not; restore \
                     the file, or delete the token directory and provision again",
                    hsm.name,
                    path.display()
                )));
            }
            create_pin_file(&path)?;
            report.pin_files_created.push(path);
        }
    }
    hsm.pin.read(&hsm.name, &config.base_dir)
}

/// Writes 16 random hex digits to a new file of mode 0600 (parents 0700 when created).
fn create_pin_file(path: &Path) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| fail(format!("cannot create directory {}: {e}", parent.display())))?;
    }
    let pin = random_hex(8)?;
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        // Created meanwhile (another HSM sharing the file, or another process): use it.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => {
            return Err(fail(format!(
                "cannot create PIN file {}: {e}",
                path.display()
            )));
        }
    };
    file.write_all(format!("{}\n", pin.as_str()).as_bytes())
        .map_err(|e| fail(format!("cannot write PIN file {}: {e}", path.display())))
}

fn random_hex(bytes: usize) -> Result<Zeroizing<String>, Error> {
    let mut buf = Zeroizing::new(vec![0u8; bytes]);
    getrandom::fill(&mut buf).map_err(|e| fail(format!("no randomness for a PIN: {e}")))?;
    Ok(Zeroizing::new(hex::encode(&*buf)))
}

/// Writes `data` through a temporary file and a rename, unless the file already holds it.
fn write_if_changed(path: &Path, data: &[u8]) -> Result<(), Error> {
    if fs::read(path).is_ok_and(|old| old == data) {
        return Ok(());
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        fail(format!("cannot write {}: {e}", path.display()))
    })
}

/// PEM `PUBLIC KEY` of a DER SubjectPublicKeyInfo, as `openssl pkey -pubout` writes it.
fn pem_public_key(spki: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(spki.len().div_ceil(3) * 4);
    for chunk in spki.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

// ------------------------------------------------------------------------------------------
// Tokens, objects and keys

#[derive(Debug)]
struct Token<'a> {
    label: String,
    /// The SoftHSM2 module `pkcs11-tool` loads for this token.
    module: PathBuf,
    /// HSM entries of the config on this token (usually one).
    hsms: Vec<&'a Hsm>,
    pin: Option<Pin>,
    exists: bool,
    objects: Vec<Object>,
}

impl Token<'_> {
    /// `token EAST-1 (HSM east-1)`, for messages.
    fn describe(&self) -> String {
        let names: Vec<_> = self.hsms.iter().map(|h| format!("`{}`", h.name)).collect();
        format!("token {} (HSM {})", self.label, names.join(", "))
    }

    fn pin(&self) -> &str {
        self.pin.as_ref().map(Pin::expose).unwrap_or_default()
    }
}

/// The config's module if it is a SoftHSM2 build, else Debian's: the config may point at
/// another module (a fault-injecting forwarder, p11-kit's client) in front of the same tokens.
fn module_for(hsm: &Hsm, config: &Config) -> PathBuf {
    let module = hsm.module_path(&config.base_dir);
    if module.file_name().is_some_and(|n| n == "libsofthsm2.so") && module.exists() {
        module
    } else {
        PathBuf::from(SOFTHSM2_MODULE)
    }
}

/// Indices in `tokens` of the distinct tokens holding `key`, in the key's HSM order.
fn token_indices(key: &Key, config: &Config, tokens: &[Token]) -> Vec<usize> {
    let mut out = Vec::new();
    for name in &key.hsms {
        let Some((_, hsm)) = config.hsm(name) else {
            continue;
        };
        if let Some(i) = tokens.iter().position(|t| t.label == hsm.token_label)
            && !out.contains(&i)
        {
            out.push(i);
        }
    }
    out
}

/// Two keys of the config with one label on one token would be one object.
fn check_label_clashes(config: &Config, tokens: &[Token], problems: &mut Vec<String>) {
    for (i, a) in config.keys.iter().enumerate() {
        for b in &config.keys[i + 1..] {
            if a.label != b.label {
                continue;
            }
            let ta = token_indices(a, config, tokens);
            let shared: Vec<_> = token_indices(b, config, tokens)
                .into_iter()
                .filter(|t| ta.contains(t))
                .map(|t| tokens[t].label.as_str())
                .collect();
            if !shared.is_empty() {
                problems.push(format!(
                    "keys `{}` and `{}` both have label `{}` on token(s) {}",
                    a.name,
                    b.name,
                    a.label,
                    shared.join(", ")
                ));
            }
        }
    }
}

/// One object as `pkcs11-tool --list-objects` prints it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Object {
    class: Class,
    /// `EC`, `RSA`, `EC_EDWARDS`, ... (pkcs11-tool's names).
    key_type: String,
    /// The `N bits` of a public key's header line.
    bits: Option<u32>,
    label: Option<String>,
    /// `CKA_ID`, hex.
    id: Option<String>,
    /// `CKA_EC_PARAMS`, hex.
    ec_params: Option<String>,
    /// `CKA_EC_POINT`, as stored.
    ec_point: Option<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Class {
    Private,
    Public,
    #[default]
    Other,
}

/// Parses `pkcs11-tool --list-objects` (OpenSC 0.23): a header line per object, such as
/// `Public Key Object; EC  EC_POINT 256 bits`, then indented `name: value` lines.
fn parse_objects(text: &str) -> Vec<Object> {
    let mut objects: Vec<Object> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            let mut obj = Object::default();
            if let Some((kind, rest)) = line.split_once(';') {
                obj.class = match kind.trim() {
                    "Private Key Object" => Class::Private,
                    "Public Key Object" => Class::Public,
                    _ => Class::Other,
                };
                let words: Vec<&str> = rest.split_whitespace().collect();
                obj.key_type = words.first().copied().unwrap_or_default().to_owned();
                obj.bits = words
                    .windows(2)
                    .find(|w| w[1] == "bits")
                    .and_then(|w| w[0].parse().ok());
            }
            objects.push(obj);
            continue;
        }
        let Some(obj) = objects.last_mut() else {
            continue;
        };
        let Some((name, value)) = line.trim_start().split_once(':') else {
            continue;
        };
        let value = value.trim_start();
        match name {
            "label" => obj.label = Some(value.to_owned()),
            "ID" => obj.id = Some(value.trim().to_owned()),
            "EC_PARAMS" => {
                obj.ec_params = value.split_whitespace().next().map(str::to_owned);
            }
            "EC_POINT" => obj.ec_point = hex::decode(value.trim()).ok(),
            _ => {}
        }
    }
    objects
}

/// A key's two objects on one token.
#[derive(Clone, Debug)]
struct Found {
    public: Object,
}

#[derive(Debug)]
enum KeyState {
    /// In every token that should hold it; one entry per token, in `holders` order.
    Present(Vec<Found>),
    /// In none.
    Absent,
}

const OID_P256: &str = "06082a8648ce3d030107";
const OID_P384: &str = "06052b81040022";
const OID_ED25519: &str = "06032b6570";
/// PrintableString "edwards25519", as pkcs11-tool stores it.
const PRINTABLE_ED25519: &str = "130c656477617264733235353139";

/// The key's objects on `token`: none, both (checked against the configured algorithm), or an
/// error describing what is wrong.
fn find_key(key: &Key, token: &Token) -> Result<Option<Found>, String> {
    let labelled = |class| {
        token
            .objects
            .iter()
            .filter(move |o| o.class == class && o.label.as_deref() == Some(key.label.as_str()))
            .collect::<Vec<_>>()
    };
    let (privs, pubs) = (labelled(Class::Private), labelled(Class::Public));
    let where_ = token.describe();
    let (private, public) = match (privs.as_slice(), pubs.as_slice()) {
        ([], []) => return Ok(None),
        ([p], [q]) => (*p, *q),
        ([_], []) => {
            return Err(format!(
                "{where_} has a private key labelled `{}` but no public key object (the gateway \
                 needs it for GetPublicKey)",
                key.label
            ));
        }
        ([], [_]) => {
            return Err(format!(
                "{where_} has a public key labelled `{}` but no private key",
                key.label
            ));
        }
        (p, q) => {
            return Err(format!(
                "{where_} has {} private and {} public key objects labelled `{}`; expected one of each",
                p.len(),
                q.len(),
                key.label
            ));
        }
    };
    let (want_type, ok) = match key.algorithm {
        KeyAlgorithm::EcdsaP256 => ("EC", public.ec_params.as_deref() == Some(OID_P256)),
        KeyAlgorithm::EcdsaP384 => ("EC", public.ec_params.as_deref() == Some(OID_P384)),
        KeyAlgorithm::Ed25519 => (
            "EC_EDWARDS",
            matches!(
                public.ec_params.as_deref(),
                Some(OID_ED25519 | PRINTABLE_ED25519)
            ),
        ),
        alg => ("RSA", public.bits == alg.rsa_bits()),
    };
    if private.key_type != want_type || public.key_type != want_type || !ok {
        let held = match (&public.ec_params, public.bits) {
            (Some(params), _) => format!("{} with EC_PARAMS {params}", public.key_type),
            (None, Some(bits)) => format!("{} {bits} bits", public.key_type),
            (None, None) => public.key_type.clone(),
        };
        return Err(format!(
            "{where_} holds `{}` as {held}, but the config says {}",
            key.label,
            key.algorithm.as_str()
        ));
    }
    Ok(Some(Found {
        public: public.clone(),
    }))
}

fn classify(key: &Key, holders: &[usize], tokens: &[Token]) -> Result<KeyState, String> {
    let mut found = Vec::new();
    let mut lacking = Vec::new();
    let mut errors = Vec::new();
    for &t in holders {
        match find_key(key, &tokens[t]) {
            Ok(Some(f)) => found.push(f),
            Ok(None) => lacking.push(t),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(format!("key `{}`: {}", key.name, errors.join("; ")));
    }
    if lacking.is_empty() {
        return Ok(KeyState::Present(found));
    }
    if found.is_empty() {
        // About to import: the id must be free on every token.
        let id = hex::encode(key_id(&key.name));
        for &t in holders {
            if tokens[t]
                .objects
                .iter()
                .any(|o| o.id.as_deref() == Some(id.as_str()))
            {
                return Err(format!(
                    "key `{}`: {} already has an object with CKA_ID {id} (derived from the key \
                     name) under another label",
                    key.name,
                    tokens[t].describe()
                ));
            }
        }
        return Ok(KeyState::Absent);
    }
    // Name the HSMs as the key lists them.
    let lacking: Vec<_> = key
        .hsms
        .iter()
        .filter(|name| {
            lacking
                .iter()
                .any(|&t| tokens[t].hsms.iter().any(|h| h.name == **name))
        })
        .map(|name| format!("`{name}`"))
        .collect();
    Err(format!(
        "key `{}` (label `{}`) is missing from HSM(s) {}: cannot clone a non-extractable key; \
         delete the tokens (the token dir) and provision again",
        key.name,
        key.label,
        lacking.join(", ")
    ))
}

/// The public key (DER SPKI) of `key` on each of its tokens; an error unless all are equal.
fn same_public_key(
    tools: &Tools,
    key: &Key,
    holders: &[usize],
    found: &[Found],
    tokens: &[Token],
) -> Result<Vec<u8>, Error> {
    let mut first: Option<(usize, Vec<u8>)> = None;
    for (&t, f) in holders.iter().zip(found) {
        let spki = tools.read_public_key(&tokens[t], key, &f.public)?;
        match &first {
            None => first = Some((t, spki)),
            Some((t0, spki0)) if *spki0 != spki => {
                return Err(fail(format!(
                    "key `{}`: {} and {} hold different keys under label `{}`; delete the tokens \
                     (the token dir) and provision again",
                    key.name,
                    tokens[*t0].describe(),
                    tokens[t].describe(),
                    key.label
                )));
            }
            Some(_) => {}
        }
    }
    first
        .map(|(_, spki)| spki)
        .ok_or_else(|| fail(format!("key `{}` is held by no HSM", key.name)))
}

/// DER SPKI of an EC or Ed25519 public key from its `CKA_EC_POINT`, stored either as a DER
/// OCTET STRING (SoftHSM2 for EC keys, pkcs11-tool for Ed25519) or raw (softhsm2-util for
/// Ed25519). `None` if the point does not have the curve's length.
fn ec_spki(algorithm: KeyAlgorithm, point: &[u8]) -> Option<Vec<u8>> {
    // The SPKI up to the BIT STRING's contents, and the length of the point.
    let (prefix, len) = match algorithm {
        // SEQ { SEQ { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) }
        KeyAlgorithm::EcdsaP256 => ("3059301306072a8648ce3d020106082a8648ce3d030107034200", 65),
        // SEQ { SEQ { id-ecPublicKey, secp384r1 }, BIT STRING (0 unused bits) }
        KeyAlgorithm::EcdsaP384 => ("3076301006072a8648ce3d020106052b81040022036200", 97),
        // SEQ { SEQ { id-Ed25519 }, BIT STRING (0 unused bits) }
        KeyAlgorithm::Ed25519 => ("302a300506032b6570032100", 32),
        _ => return None,
    };
    let raw = match point {
        [0x04, n, rest @ ..] if usize::from(*n) == len && rest.len() == len => rest,
        raw if raw.len() == len => raw,
        _ => return None,
    };
    // An EC point must be uncompressed (04 || x || y): the gateway and verifiers expect it.
    if algorithm != KeyAlgorithm::Ed25519 && raw[0] != 0x04 {
        return None;
    }
    let mut spki = hex::decode(prefix).unwrap_or_default();
    spki.extend_from_slice(raw);
    Some(spki)
}

// ------------------------------------------------------------------------------------------
// The tools

#[derive(Debug)]
struct Tools {
    /// Absolute path of the SoftHSM2 config, given to every tool as `SOFTHSM2_CONF`.
    conf: PathBuf,
}

impl Tools {
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SOFTHSM2_CONF", &self.conf)
            .env("LC_ALL", "C")
            // Nothing may wait for a PIN on a terminal.
            .stdin(Stdio::null());
        cmd
    }

    /// `pkcs11-tool` logged in to `token`. The PIN goes on the command line: dev-only SoftHSM2
    /// provisioning, see the module documentation.
    fn pkcs11_tool(&self, token: &Token) -> Command {
        let mut cmd = self.command("pkcs11-tool");
        cmd.arg("--module").arg(&token.module).args([
            "--token-label",
            &token.label,
            "--login",
            "--pin",
            token.pin(),
        ]);
        cmd
    }

    /// Labels of the initialised tokens, from `softhsm2-util --show-slots`.
    fn token_labels(&self) -> Result<Vec<String>, Error> {
        let mut cmd = self.command("softhsm2-util");
        cmd.arg("--show-slots");
        let out = run(
            cmd,
            "listing SoftHSM2 tokens (`softhsm2-util --show-slots`)",
            &[],
        )?;
        let labels = parse_token_labels(&String::from_utf8_lossy(&out));
        for (i, l) in labels.iter().enumerate() {
            if labels[..i].contains(l) {
                return Err(fail(format!(
                    "two SoftHSM2 tokens are labelled {l} in {}; delete one",
                    self.conf.display()
                )));
            }
        }
        Ok(labels)
    }

    /// Initialises a free slot as `token`, with a random SO PIN that is thrown away.
    fn init_token(&self, token: &Token) -> Result<(), Error> {
        let so_pin = random_hex(16)?;
        let mut cmd = self.command("softhsm2-util");
        cmd.args(["--init-token", "--free", "--label", &token.label])
            .args(["--so-pin", so_pin.as_str(), "--pin", token.pin()]);
        run(
            cmd,
            &format!(
                "creating {} (`softhsm2-util --init-token`)",
                token.describe()
            ),
            &[so_pin.as_str(), token.pin()],
        )?;
        Ok(())
    }

    fn list_objects(&self, token: &Token) -> Result<Vec<Object>, Error> {
        let mut cmd = self.pkcs11_tool(token);
        cmd.arg("--list-objects");
        let out = run(
            cmd,
            &format!(
                "logging in to {} and listing its objects (`pkcs11-tool --list-objects`)",
                token.describe()
            ),
            &[token.pin()],
        )?;
        Ok(parse_objects(&String::from_utf8_lossy(&out)))
    }

    /// `openssl genpkey` into a new PKCS#8 PEM file of mode 0600.
    fn generate(&self, key: &Key, pem: &Path) -> Result<(), Error> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(pem)
            .map_err(|e| fail(format!("cannot create {}: {e}", pem.display())))?;
        let mut cmd = self.command("openssl");
        cmd.arg("genpkey");
        match key.algorithm {
            KeyAlgorithm::EcdsaP256 => {
                cmd.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])
            }
            KeyAlgorithm::EcdsaP384 => {
                cmd.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"])
            }
            KeyAlgorithm::Ed25519 => cmd.args(["-algorithm", "ED25519"]),
            alg => cmd.args(["-algorithm", "RSA", "-pkeyopt"]).arg(format!(
                "rsa_keygen_bits:{}",
                alg.rsa_bits().unwrap_or(2048)
            )),
        };
        cmd.arg("-out").arg(pem);
        run(
            cmd,
            &format!(
                "generating key `{}` ({}) with `openssl genpkey`",
                key.name,
                key.algorithm.as_str()
            ),
            &[],
        )?;
        Ok(())
    }

    /// DER SPKI of a private key file.
    fn public_key_of(&self, pem: &Path) -> Result<Vec<u8>, Error> {
        let mut cmd = self.command("openssl");
        cmd.args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(pem);
        run(cmd, "extracting a public key (`openssl pkey -pubout`)", &[])
    }

    /// Imports the key pair in `pem` into `token` (private and public key objects).
    fn import(&self, token: &Token, key: &Key, pem: &Path) -> Result<(), Error> {
        let id = hex::encode(key_id(&key.name));
        let mut cmd = self.command("softhsm2-util");
        cmd.arg("--import")
            .arg(pem)
            .args(["--token", &token.label, "--label", &key.label, "--id", &id])
            .args(["--pin", token.pin()]);
        run(
            cmd,
            &format!(
                "importing key `{}` into {} (`softhsm2-util --import`)",
                key.name,
                token.describe()
            ),
            &[token.pin()],
        )?;
        Ok(())
    }

    /// DER SPKI of the public key object `public` of `key` on `token`.
    fn read_public_key(&self, token: &Token, key: &Key, public: &Object) -> Result<Vec<u8>, Error> {
        if key.algorithm.rsa_bits().is_none() {
            // pkcs11-tool 0.23's --read-object fails on P-384 ("cannot create EVP_PKEY"), on
            // softhsm2-util's raw Ed25519 point, and writes PEM for a wrapped one: build the
            // SPKI from CKA_EC_POINT (the curve was checked against CKA_EC_PARAMS).
            let point = public.ec_point.as_deref().unwrap_or_default();
            return ec_spki(key.algorithm, point).ok_or_else(|| {
                fail(format!(
                    "key `{}` on {}: unexpected CKA_EC_POINT {} for {}",
                    key.name,
                    token.describe(),
                    hex::encode(point),
                    key.algorithm.as_str()
                ))
            });
        }
        let mut cmd = self.pkcs11_tool(token);
        cmd.args(["--read-object", "--type", "pubkey", "--label", &key.label]);
        if let Some(id) = &public.id {
            cmd.args(["--id", id]);
        }
        let der = run(
            cmd,
            &format!(
                "reading the public key of `{}` from {} (`pkcs11-tool --read-object`)",
                key.name,
                token.describe()
            ),
            &[token.pin()],
        )?;
        if der.first() != Some(&0x30) {
            return Err(fail(format!(
                "key `{}` on {}: `pkcs11-tool --read-object` did not return a DER public key",
                key.name,
                token.describe()
            )));
        }
        Ok(der)
    }
}

/// Labels of initialised tokens in `softhsm2-util --show-slots` output.
fn parse_token_labels(text: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let mut initialized = false;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            initialized = false; // `Slot N`
            continue;
        }
        let Some((name, value)) = line.trim_start().split_once(':') else {
            continue;
        };
        match name {
            "Initialized" => initialized = value.trim() == "yes",
            "Label" if initialized => labels.push(value.trim().to_owned()),
            _ => {}
        }
    }
    labels
}

/// Runs `cmd` and returns its stdout. On failure the error names `what`, the exit status and
/// the tool's output with every `secret` redacted; never the command line (it may hold a PIN).
fn run(mut cmd: Command, what: &str, secrets: &[&str]) -> Result<Vec<u8>, Error> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| {
        let hint = match program.as_str() {
            "softhsm2-util" => " (apt-get install softhsm2)",
            "pkcs11-tool" => " (apt-get install opensc)",
            "openssl" => " (apt-get install openssl)",
            _ => "",
        };
        fail(format!("{what}: cannot run {program}: {e}{hint}"))
    })?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let mut text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.trim().is_empty() && out.stdout.len() < 4096 {
        if !text.is_empty() {
            text.push_str(" | ");
        }
        text.push_str(stdout.trim());
    }
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret, "<redacted>");
    }
    let text = text.replace('\n', " / ");
    let mut message = format!("{what} failed ({})", out.status);
    if !text.is_empty() {
        let _ = write!(message, ": {text}");
    }
    Err(fail(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_objects() {
        let text = "\
Private Key Object; EC_EDWARDS
  label:      ca-ed
  ID:         0103
  Usage:      sign
  Access:     sensitive
Public Key Object; RSA 2048 bits
  label:      ca-rsa
  ID:         0104
  Usage:      encrypt, verify, wrap
  Access:     none
Public Key Object; EC  EC_POINT 256 bits
  EC_POINT:   0441046653
  EC_PARAMS:  06082a8648ce3d030107
  label:      ca p256
  ID:         0102
Public Key Object; EC_EDWARDS  EC_POINT 255 bits
  EC_POINT:   29e8
  EC_PARAMS:  06032b6570 (OID 1.3.101.112)
  label:      ca-ed
";
        let objs = parse_objects(text);
        assert_eq!(objs.len(), 4);
        assert_eq!(objs[0].class, Class::Private);
        assert_eq!(objs[0].key_type, "EC_EDWARDS");
        assert_eq!(objs[1].key_type, "RSA");
        assert_eq!(objs[1].bits, Some(2048));
        assert_eq!(objs[2].label.as_deref(), Some("ca p256"));
        assert_eq!(objs[2].ec_params.as_deref(), Some(OID_P256));
        assert_eq!(objs[2].bits, Some(256));
        assert_eq!(objs[3].ec_params.as_deref(), Some(OID_ED25519));
        assert_eq!(objs[3].ec_point.as_deref(), Some(&[0x29, 0xe8][..]));
    }

    #[test]
    fn parses_show_slots() {
        let text = "\
Available slots:
Slot 772146940
    Slot info:
        Token present:    yes
    Token info:
        Initialized:      yes
        User PIN init.:   yes
        Label:            EAST-1                          
Slot 2
    Token info:
        Initialized:      no
        Label:                                            
";
        assert_eq!(parse_token_labels(text), vec!["EAST-1".to_owned()]);
    }

    #[test]
    fn pem_matches_openssl_layout() {
        let pem = pem_public_key(b"any carnal pleas");
        assert_eq!(
            pem,
            "-----BEGIN PUBLIC KEY-----\nYW55IGNhcm5hbCBwbGVhcw==\n-----END PUBLIC KEY-----\n"
        );
        let long = pem_public_key(&[0u8; 91]);
        let lines: Vec<_> = long.lines().collect();
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines[2], format!("{}==", "A".repeat(58)));
    }

    #[test]
    fn key_ids_are_stable() {
        assert_eq!(key_id("ca-p256"), key_id("ca-p256"));
        assert_ne!(key_id("ca-p256"), key_id("ca-p384"));
    }

    #[test]
    fn ec_points_in_both_forms() {
        let ed = KeyAlgorithm::Ed25519;
        let raw = [7u8; 32];
        let mut wrapped = vec![0x04, 0x20];
        wrapped.extend_from_slice(&raw);
        assert_eq!(ec_spki(ed, &raw), ec_spki(ed, &wrapped));
        assert_eq!(ec_spki(ed, &raw).map(|s| s.len()), Some(44));
        assert_eq!(ec_spki(ed, &[1, 2, 3]), None);

        let mut p256 = vec![0x04, 65, 0x04];
        p256.extend_from_slice(&[9; 64]);
        let spki = ec_spki(KeyAlgorithm::EcdsaP256, &p256).expect("P-256 point");
        assert_eq!(spki.len(), 91);
        assert_eq!(ec_spki(KeyAlgorithm::EcdsaP384, &p256), None);
        assert_eq!(ec_spki(KeyAlgorithm::Rsa2048, &p256), None);
    }
}
