//! Reaching an HSM: loading its PKCS#11 module, finding its token by label, logging in, and
//! finding the keys it is configured to hold (handles and public keys).
//!
//! Everything here blocks and may hang on a dead network HSM, so it only ever runs on an HSM's
//! supervisor thread or a connect thread, never on the async runtime.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use der::asn1::{BitString, UintRef};
use der::{Decode, Encode};
use hsm_config::{KeyAlgorithm, Pin};
use spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SubjectPublicKeyInfoOwned};

use crate::error::{Error, ckr_name};

/// Serialises module loading: a module's environment (e.g. `P11_KIT_SERVER_ADDRESS`) is read
/// while it is loaded and initialised, so two loads must not interleave their variables.
static LOAD_LOCK: Mutex<()> = Mutex::new(());

/// Loads and initialises a module with `OS_LOCKING_OK` (without it SoftHSM2 disables its own
/// locking and concurrent sessions corrupt its heap), with the HSM's environment set while the
/// module reads it.
pub fn load_module(
    hsm: &str,
    path: &Path,
    env: &BTreeMap<String, String>,
) -> Result<Pkcs11, Error> {
    let pkcs11 = {
        let _guard = LOAD_LOCK
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let saved: Vec<(&String, Option<std::ffi::OsString>)> =
            env.keys().map(|k| (k, std::env::var_os(k))).collect();
        for (name, value) in env {
            // SAFETY: set_var is unsound only when another thread reads the environment at the
            // same time. These variables are read by PKCS#11 modules while they are loaded
            // (p11-kit's client at C_GetFunctionList), which LOAD_LOCK serialises; nothing
            // else in the gateway reads them. Names and values were validated (no `=`, no NUL).
            #[allow(unsafe_code)]
            unsafe {
                std::env::set_var(name, value)
            };
        }
        let loaded = Pkcs11::new(path);
        // Put the environment back, so one HSM's variables never leak into the next load.
        for (name, old) in saved {
            #[allow(unsafe_code)]
            // SAFETY: as above.
            unsafe {
                match old {
                    Some(v) => std::env::set_var(name, v),
                    None => std::env::remove_var(name),
                }
            };
        }
        loaded.map_err(|e| Error::Hsm {
            hsm: hsm.to_owned(),
            detail: format!("cannot load PKCS#11 module {}: {e}", path.display()),
        })?
    };
    // Outside LOAD_LOCK — C_Initialize of a network module can block on its server and must
    // not hold up other modules — but serialised per module and environment: HSMs sharing a
    // library initialise the same state, and two concurrent C_Initialize calls on it are not
    // safe (SoftHSM2 crashed here when they raced).
    reinitialize(hsm, &pkcs11, path, env)?;
    Ok(pkcs11)
}

/// `C_Initialize` on a loaded module, under its (module, environment) lock.
pub fn reinitialize(
    hsm: &str,
    pkcs11: &Pkcs11,
    path: &Path,
    env: &BTreeMap<String, String>,
) -> Result<(), Error> {
    let init_lock = {
        let mut locks = INIT_LOCKS.lock().unwrap_or_else(|p| p.into_inner());
        locks
            .entry((path.to_owned(), env.clone()))
            .or_insert_with(|| Arc::new(Mutex::new(())))
            .clone()
    };
    let _init = init_lock.lock().unwrap_or_else(|p| p.into_inner());
    initialize(hsm, pkcs11)
}

/// One lock per (module, environment): see `load_module`.
type InitLocks = HashMap<(PathBuf, BTreeMap<String, String>), Arc<Mutex<()>>>;
static INIT_LOCKS: LazyLock<Mutex<InitLocks>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// `C_Initialize` with `OS_LOCKING_OK`; "already initialised" (by another part of this
/// process, or a shared context) is success.
pub fn initialize(hsm: &str, pkcs11: &Pkcs11) -> Result<(), Error> {
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(pkcs11_error(hsm, "C_Initialize", &e)),
    }
}

pub fn pkcs11_error(hsm: &str, function: &str, e: &CkError) -> Error {
    let code = match e {
        CkError::Pkcs11(rv, _) => ckr_name(*rv),
        other => other.to_string(),
    };
    Error::Pkcs11 {
        hsm: hsm.to_owned(),
        function: function.to_owned(),
        code,
    }
}

/// Finds the slot whose token has this label. Slot ids are not stable (SoftHSM2 picks them at
/// token initialisation, p11-kit renumbers on reconnect): a token is known by its label.
pub fn find_slot(hsm: &str, pkcs11: &Pkcs11, label: &str) -> Result<Slot, Error> {
    let slots = pkcs11
        .get_slots_with_token()
        .map_err(|e| pkcs11_error(hsm, "C_GetSlotList", &e))?;
    for slot in slots {
        match pkcs11.get_token_info(slot) {
            Ok(info) if info.label().trim_end() == label => return Ok(slot),
            Ok(_) => {}
            // One broken slot must not hide the others.
            Err(_) => continue,
        }
    }
    Err(Error::Hsm {
        hsm: hsm.to_owned(),
        detail: format!("no token labelled `{label}`"),
    })
}

/// Logs the application in on this token. One login covers every session of the application
/// on the token; "already logged in" is success.
pub fn login(hsm: &str, session: &Session, pin: &Pin) -> Result<(), Error> {
    let auth = AuthPin::from(pin.expose().to_owned());
    match session.login(UserType::User, Some(&auth)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(pkcs11_error(hsm, "C_Login", &e)),
    }
}

/// A key found in a token: the private key handle and the public key as SPKI DER.
#[derive(Debug)]
pub struct FoundKey {
    pub handle: ObjectHandle,
    pub spki: Vec<u8>,
}

/// Finds the private key labelled `label` and reads its public half.
pub fn find_key(
    hsm: &str,
    session: &Session,
    label: &str,
    algorithm: KeyAlgorithm,
) -> Result<FoundKey, Error> {
    let fail = |detail: String| Error::Hsm {
        hsm: hsm.to_owned(),
        detail: format!("key `{label}`: {detail}"),
    };
    let find = |class: ObjectClass| {
        session
            .find_objects(&[
                Attribute::Class(class),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(|e| pkcs11_error(hsm, "C_FindObjects", &e))
    };
    let private = find(ObjectClass::PRIVATE_KEY)?;
    let handle = match private.as_slice() {
        [one] => *one,
        [] => return Err(fail("no private key with this label".into())),
        _ => {
            return Err(fail(format!(
                "{} private keys share this label",
                private.len()
            )));
        }
    };
    // A key that wants a login before every signature (CKA_ALWAYS_AUTHENTICATE) would fail
    // each C_Sign with CKR_USER_NOT_LOGGED_IN; refuse it here rather than at signing time.
    let private_attrs = session
        .get_attributes(
            handle,
            &[AttributeType::AlwaysAuthenticate, AttributeType::Id],
        )
        .map_err(|e| pkcs11_error(hsm, "C_GetAttributeValue", &e))?;
    let mut id = None;
    for a in private_attrs {
        match a {
            Attribute::AlwaysAuthenticate(true) => {
                return Err(fail(
                    "CKA_ALWAYS_AUTHENTICATE is set (a login per signature): not supported".into(),
                ));
            }
            Attribute::Id(v) => id = Some(v),
            _ => {}
        }
    }
    // The public half is the object with the private key's CKA_ID (and label): a stray public
    // object with the same label must not vouch for a different private key.
    let mut template = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    if let Some(id) = id.filter(|v| !v.is_empty()) {
        template.push(Attribute::Id(id));
    }
    let public = session
        .find_objects(&template)
        .map_err(|e| pkcs11_error(hsm, "C_FindObjects", &e))?;
    let public = match public.as_slice() {
        [one] => *one,
        [] => {
            return Err(fail(
                "no public key object with this label and CKA_ID".into(),
            ));
        }
        _ => {
            return Err(fail(format!(
                "{} public keys match this label and CKA_ID",
                public.len()
            )));
        }
    };
    let spki = match algorithm {
        KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => {
            let attrs = session
                .get_attributes(public, &[AttributeType::EcParams, AttributeType::EcPoint])
                .map_err(|e| pkcs11_error(hsm, "C_GetAttributeValue", &e))?;
            let (mut params, mut point) = (None, None);
            for a in attrs {
                match a {
                    Attribute::EcParams(p) => params = Some(p),
                    Attribute::EcPoint(p) => point = Some(p),
                    _ => {}
                }
            }
            let (params, point) = params
                .zip(point)
                .ok_or_else(|| fail("no EC_PARAMS/EC_POINT".into()))?;
            ec_spki(algorithm, &params, &point).map_err(fail)?
        }
        KeyAlgorithm::Ed25519 => {
            let attrs = session
                .get_attributes(public, &[AttributeType::EcPoint])
                .map_err(|e| pkcs11_error(hsm, "C_GetAttributeValue", &e))?;
            let point = attrs
                .into_iter()
                .find_map(|a| match a {
                    Attribute::EcPoint(p) => Some(p),
                    _ => None,
                })
                .ok_or_else(|| fail("no EC_POINT".into()))?;
            ed25519_spki(&point).map_err(fail)?
        }
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
            let attrs = session
                .get_attributes(
                    public,
                    &[AttributeType::Modulus, AttributeType::PublicExponent],
                )
                .map_err(|e| pkcs11_error(hsm, "C_GetAttributeValue", &e))?;
            let (mut n, mut e) = (None, None);
            for a in attrs {
                match a {
                    Attribute::Modulus(m) => n = Some(m),
                    Attribute::PublicExponent(x) => e = Some(x),
                    _ => {}
                }
            }
            let (n, e) = n
                .zip(e)
                .ok_or_else(|| fail("no MODULUS/PUBLIC_EXPONENT".into()))?;
            let bits = algorithm.rsa_bits().unwrap_or(0) as usize;
            let actual = n.iter().skip_while(|b| **b == 0).count() * 8;
            if actual != bits {
                return Err(fail(format!(
                    "configured as {} but the modulus has {actual} bits",
                    algorithm.as_str()
                )));
            }
            rsa_spki(&n, &e).map_err(fail)?
        }
    };
    Ok(FoundKey { handle, spki })
}

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const ID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// `CKA_EC_POINT` is a DER OCTET STRING around the point (PKCS#11 2.40); some modules store
/// the bare point. Accept both.
fn unwrap_point(point: &[u8], expected_len: usize) -> Result<Vec<u8>, String> {
    if point.len() == expected_len {
        return Ok(point.to_vec());
    }
    let inner = der::asn1::OctetString::from_der(point).map_err(|e| format!("EC_POINT: {e}"))?;
    if inner.as_bytes().len() == expected_len {
        Ok(inner.as_bytes().to_vec())
    } else {
        Err(format!(
            "EC_POINT of {} bytes, expected {expected_len}",
            inner.as_bytes().len()
        ))
    }
}

fn spki_der(
    oid: ObjectIdentifier,
    params: Option<der::Any>,
    key: &[u8],
) -> Result<Vec<u8>, String> {
    SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid,
            parameters: params,
        },
        subject_public_key: BitString::from_bytes(key).map_err(|e| e.to_string())?,
    }
    .to_der()
    .map_err(|e| e.to_string())
}

fn ec_spki(algorithm: KeyAlgorithm, params: &[u8], point: &[u8]) -> Result<Vec<u8>, String> {
    let (curve, point_len) = match algorithm {
        KeyAlgorithm::EcdsaP256 => (SECP256R1, 65),
        _ => (SECP384R1, 97),
    };
    let oid = ObjectIdentifier::from_der(params).map_err(|e| format!("EC_PARAMS: {e}"))?;
    if oid != curve {
        return Err(format!(
            "configured as {} but the token's curve is {oid}",
            algorithm.as_str()
        ));
    }
    let point = unwrap_point(point, point_len)?;
    spki_der(ID_EC_PUBLIC_KEY, Some(der::Any::from(curve)), &point)
}

fn ed25519_spki(point: &[u8]) -> Result<Vec<u8>, String> {
    spki_der(ID_ED25519, None, &unwrap_point(point, 32)?)
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }` (RFC 8017 A.1.1).
#[derive(der::Sequence)]
struct RsaPublicKey<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

fn rsa_spki(n: &[u8], e: &[u8]) -> Result<Vec<u8>, String> {
    let key = RsaPublicKey {
        modulus: UintRef::new(n).map_err(|x| x.to_string())?,
        public_exponent: UintRef::new(e).map_err(|x| x.to_string())?,
    }
    .to_der()
    .map_err(|x| x.to_string())?;
    spki_der(RSA_ENCRYPTION, Some(der::Any::from(der::asn1::Null)), &key)
}
