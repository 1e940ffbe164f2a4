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
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::schema::{Config, Hsm, Key};
use crate::secret::Pin;

mod files;
mod tokens;
mod tools;

use files::{
    create_dir, lock, pem_public_key, prepare_softhsm_conf, read_or_create_pin, write_if_changed,
};
use tokens::{
    KeyState, Token, check_label_clashes, classify, find_key, module_for, same_public_key,
    token_indices,
};
use tools::Tools;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_stable() {
        assert_eq!(key_id("ca-p256"), key_id("ca-p256"));
        assert_ne!(key_id("ca-p256"), key_id("ca-p384"));
    }
}
