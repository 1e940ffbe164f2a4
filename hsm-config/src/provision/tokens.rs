//! Tokens, the objects on them (as `pkcs11-tool --list-objects` prints them) and the state of
//! each configured key across the tokens that should hold it.

use std::path::PathBuf;

use super::tools::Tools;
use super::{SOFTHSM2_MODULE, fail, key_id};
use crate::error::Error;
use crate::schema::{Config, Hsm, Key, KeyAlgorithm};
use crate::secret::Pin;

#[derive(Debug)]
pub(super) struct Token<'a> {
    pub(super) label: String,
    /// The SoftHSM2 module `pkcs11-tool` loads for this token.
    pub(super) module: PathBuf,
    /// HSM entries of the config on this token (usually one).
    pub(super) hsms: Vec<&'a Hsm>,
    pub(super) pin: Option<Pin>,
    pub(super) exists: bool,
    pub(super) objects: Vec<Object>,
}

impl Token<'_> {
    /// `token EAST-1 (HSM east-1)`, for messages.
    pub(super) fn describe(&self) -> String {
        let names: Vec<_> = self.hsms.iter().map(|h| format!("`{}`", h.name)).collect();
        format!("token {} (HSM {})", self.label, names.join(", "))
    }

    pub(super) fn pin(&self) -> &str {
        self.pin.as_ref().map(Pin::expose).unwrap_or_default()
    }
}

/// The config's module if it is a SoftHSM2 build, else Debian's: the config may point at
/// another module (a fault-injecting forwarder, p11-kit's client) in front of the same tokens.
pub(super) fn module_for(hsm: &Hsm, config: &Config) -> PathBuf {
    let module = hsm.module_path(&config.base_dir);
    if module.file_name().is_some_and(|n| n == "libsofthsm2.so") && module.exists() {
        module
    } else {
        PathBuf::from(SOFTHSM2_MODULE)
    }
}

/// Indices in `tokens` of the distinct tokens holding `key`, in the key's HSM order.
pub(super) fn token_indices(key: &Key, config: &Config, tokens: &[Token]) -> Vec<usize> {
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
pub(super) fn check_label_clashes(config: &Config, tokens: &[Token], problems: &mut Vec<String>) {
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
pub(super) struct Object {
    pub(super) class: Class,
    /// `EC`, `RSA`, `EC_EDWARDS`, ... (pkcs11-tool's names).
    pub(super) key_type: String,
    /// The `N bits` of a public key's header line.
    pub(super) bits: Option<u32>,
    pub(super) label: Option<String>,
    /// `CKA_ID`, hex.
    pub(super) id: Option<String>,
    /// `CKA_EC_PARAMS`, hex.
    pub(super) ec_params: Option<String>,
    /// `CKA_EC_POINT`, as stored.
    pub(super) ec_point: Option<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Class {
    Private,
    Public,
    #[default]
    Other,
}

/// Parses `pkcs11-tool --list-objects` (OpenSC 0.23): a header line per object, such as
/// `Public Key Object; EC  EC_POINT 256 bits`, then indented `name: value` lines.
pub(super) fn parse_objects(text: &str) -> Vec<Object> {
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
pub(super) struct Found {
    pub(super) public: Object,
}

#[derive(Debug)]
pub(super) enum KeyState {
    /// In every token that should hold it; one entry per token, in `holders` order.
    Present(Vec<Found>),
    /// In none.
    Absent,
}

pub(super) const OID_P256: &str = "06082a8648ce3d030107";
pub(super) const OID_P384: &str = "06052b81040022";
pub(super) const OID_ED25519: &str = "06032b6570";
/// PrintableString "edwards25519", as pkcs11-tool stores it.
pub(super) const PRINTABLE_ED25519: &str = "130c656477617264733235353139";

/// The key's objects on `token`: none, both (checked against the configured algorithm), or an
/// error describing what is wrong.
pub(super) fn find_key(key: &Key, token: &Token) -> Result<Option<Found>, String> {
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

pub(super) fn classify(key: &Key, holders: &[usize], tokens: &[Token]) -> Result<KeyState, String> {
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
pub(super) fn same_public_key(
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
pub(super) fn ec_spki(algorithm: KeyAlgorithm, point: &[u8]) -> Option<Vec<u8>> {
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
