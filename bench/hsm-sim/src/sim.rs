//! The module's global state: the real module, our function list, and the maps that tie a
//! session or slot to its token label.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use cryptoki_sys::{
    CK_ATTRIBUTE, CK_ATTRIBUTE_TYPE, CK_FUNCTION_LIST, CK_KEY_TYPE, CK_OBJECT_HANDLE, CK_RV,
    CK_SESSION_HANDLE, CK_SLOT_ID, CK_TOKEN_INFO, CK_UNAVAILABLE_INFORMATION, CKA_EC_PARAMS,
    CKA_KEY_TYPE, CKA_MODULUS, CKF_TOKEN_INITIALIZED, CKK_EC, CKK_EC_EDWARDS, CKK_RSA,
    CKR_FUNCTION_NOT_SUPPORTED, CKR_GENERAL_ERROR, CKR_KEY_HANDLE_INVALID, CKR_OK,
};
use parking_lot::RwLock;

use crate::control::{Action, Control, Fault, HANG_POLL, Op};
use crate::model::{Model, Units, uniform};

/// The real module when `HSMSIM_MODULE` is unset.
pub const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

static SIM: OnceLock<Result<Sim, String>> = OnceLock::new();

/// Everything the wrappers need. Created once per process, on the first C_GetFunctionList, and
/// never dropped (a static): the real module must stay loaded as long as anyone may call it.
pub struct Sim {
    _lib: libloading::Library,
    /// The real module's function list, copied.
    pub real: CK_FUNCTION_LIST,
    /// `None` when `HSMSIM_CONTROL` is unset: then no faults ever, and the wrappers skip all
    /// bookkeeping and just forward.
    pub control: Option<Control>,
    pub sessions: SessionMap,
    /// Token label per slot id, filled from the real C_GetTokenInfo. Slot ids are stable while
    /// the module is initialised (SoftHSM derives them from the token serial); C_InitToken,
    /// C_Initialize and C_Finalize clear it.
    slot_labels: RwLock<HashMap<CK_SLOT_ID, Arc<str>>>,
    /// The signing units of each modelled token, by label. They outlive control-file
    /// changes (a knocked-out token keeps its units) and C_Initialize (the "HSM" is the same).
    units: RwLock<HashMap<Arc<str>, Arc<Units>>>,
    /// Signature length of each key, by (token label, key handle), for stand-in signatures.
    signature_lengths: RwLock<HashMap<(Arc<str>, CK_OBJECT_HANDLE), usize>>,
}

/// Gets (loading it on first use) the global state.
pub fn get_or_load() -> Result<&'static Sim, CK_RV> {
    match SIM.get_or_init(load) {
        Ok(sim) => Ok(sim),
        Err(_) => Err(CKR_GENERAL_ERROR),
    }
}

/// The global state for the wrappers: they are only reachable through our function list, so
/// it is always loaded by then.
#[inline]
pub fn get() -> Result<&'static Sim, CK_RV> {
    match SIM.get() {
        Some(Ok(sim)) => Ok(sim),
        _ => Err(CKR_GENERAL_ERROR),
    }
}

fn load() -> Result<Sim, String> {
    let result = load_inner();
    if let Err(e) = &result {
        // The caller only sees CKR_GENERAL_ERROR; say why where a person will look.
        eprintln!("hsm-sim: {e}");
    }
    result
}

fn load_inner() -> Result<Sim, String> {
    let module = std::env::var_os("HSMSIM_MODULE")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_MODULE), PathBuf::from);
    // SAFETY: loading a PKCS#11 module runs its initialisers; that is what the caller asked
    // for by loading us. The Library lives in a static and is never unloaded.
    let lib = unsafe { libloading::Library::new(&module) }
        .map_err(|e| format!("cannot load the real module {}: {e}", module.display()))?;
    let real = {
        // SAFETY: C_GetFunctionList has this signature in every PKCS#11 module.
        let get_list: libloading::Symbol<
            unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV,
        > = unsafe { lib.get(b"C_GetFunctionList\0") }
            .map_err(|e| format!("{} has no C_GetFunctionList: {e}", module.display()))?;
        let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: a valid out-pointer; the module fills it with a pointer to its static list.
        let rv = unsafe { get_list(&mut list) };
        if rv != CKR_OK || list.is_null() {
            return Err(format!(
                "C_GetFunctionList of {} returned {rv:#x}",
                module.display()
            ));
        }
        // SAFETY: non-null and points to the module's CK_FUNCTION_LIST, which outlives us.
        unsafe { *list }
    };
    let control = std::env::var_os("HSMSIM_CONTROL")
        .filter(|v| !v.is_empty())
        .map(|path| {
            let verbose = std::env::var_os("HSMSIM_VERBOSE").is_some_and(|v| v != "0");
            Control::new(PathBuf::from(path), verbose)
        });
    Ok(Sim {
        _lib: lib,
        real,
        control,
        sessions: SessionMap::default(),
        slot_labels: RwLock::new(HashMap::new()),
        units: RwLock::new(HashMap::new()),
        signature_lengths: RwLock::new(HashMap::new()),
    })
}

impl Sim {
    /// Forgets every session and slot label (C_Initialize / C_Finalize).
    pub fn reset(&self) {
        self.sessions.clear();
        self.slot_labels.write().clear();
        // Key handles are per initialisation.
        self.signature_lengths.write().clear();
    }

    pub fn forget_slot(&self, slot: CK_SLOT_ID) {
        self.slot_labels.write().remove(&slot);
    }

    /// The token label in a slot: cached, else asked of the real module. `None` when the slot
    /// has no (initialised) token or the real module fails; such calls get no faults.
    pub fn slot_label(&self, slot: CK_SLOT_ID) -> Option<Arc<str>> {
        if let Some(label) = self.slot_labels.read().get(&slot) {
            return Some(label.clone());
        }
        let get_token_info = self.real.C_GetTokenInfo?;
        let mut info = CK_TOKEN_INFO::default();
        // SAFETY: a valid out-pointer to a CK_TOKEN_INFO we own.
        let rv = unsafe { get_token_info(slot, &mut info) };
        if rv != CKR_OK || info.flags & CKF_TOKEN_INITIALIZED == 0 {
            return None;
        }
        let label: Arc<str> = token_label(&info.label).into();
        self.slot_labels.write().insert(slot, label.clone());
        Some(label)
    }

    /// Applies the fault configured for `label` to a call of kind `op`: returns when the call
    /// may go on (after any delay), `Err(code)` when it must fail, and blocks while it hangs.
    pub fn gate(&self, control: &Control, label: &str, op: Op) -> Result<(), CK_RV> {
        loop {
            match control.fault_for(label).action(op) {
                Action::Proceed => return Ok(()),
                Action::Fail(rv) => return Err(rv),
                Action::SleepThenProceed(d) => {
                    thread::sleep(d);
                    return Ok(());
                }
                // Hold no lock while blocked: other tokens' calls must go on.
                Action::Hang => thread::sleep(HANG_POLL),
            }
        }
    }

    /// [`Sim::gate`] for a session-based call. Unknown sessions (opened before a C_Initialize,
    /// or bogus handles) get no fault: the real module answers for them.
    #[inline]
    pub fn gate_session(&self, session: CK_SESSION_HANDLE, op: Op) -> Result<(), CK_RV> {
        let Some(control) = &self.control else {
            return Ok(());
        };
        match self.sessions.label(session) {
            Some(label) => self.gate(control, &label, op),
            None => Ok(()),
        }
    }

    /// For the signing calls: applies the session's token's fault like [`Sim::gate_session`],
    /// and returns what the timing model needs — the token's label, its model (if it has one)
    /// and the stand-in operation active on the session (its signature length), if any.
    pub fn gate_signing(&self, session: CK_SESSION_HANDLE, op: Op) -> Result<Signing, CK_RV> {
        let Some(control) = &self.control else {
            return Ok(Signing::default());
        };
        let Some(entry) = self.sessions.entry(session) else {
            return Ok(Signing::default());
        };
        let (fault, model) = control.fault_and_model(&entry.label);
        if fault != Fault::Healthy {
            self.gate(control, &entry.label, op)?;
        }
        Ok(Signing {
            label: Some(entry.label),
            model,
            standin: entry.standin,
        })
    }

    /// The units of a modelled token, created on first use.
    pub fn units(&self, label: &Arc<str>, model: &Model) -> Arc<Units> {
        if let Some(u) = self.units.read().get(label) {
            return u.clone();
        }
        self.units
            .write()
            .entry(label.clone())
            .or_insert_with(|| Arc::new(Units::new(model.units)))
            .clone()
    }

    /// Holds one of the token's units for a sampled latency, counted from `requested`: books
    /// the unit that frees first and sleeps until the booked end.
    pub fn serve(&self, label: &Arc<str>, model: &Model, requested: Instant) {
        let service = model.sample(uniform(), uniform());
        let slot = self
            .units(label, model)
            .reserve(model.units, requested, service);
        sleep_until(slot.finish);
    }

    /// The length of a signature by `key` (stand-in signatures must have the real length),
    /// from the key's attributes in the real module; cached per token and handle.
    pub fn signature_length(
        &self,
        label: &Arc<str>,
        session: CK_SESSION_HANDLE,
        key: CK_OBJECT_HANDLE,
    ) -> Result<usize, CK_RV> {
        let id = (label.clone(), key);
        if let Some(len) = self.signature_lengths.read().get(&id) {
            return Ok(*len);
        }
        let key_type = self.attribute(session, key, CKA_KEY_TYPE)?;
        let key_type = key_type
            .get(..std::mem::size_of::<CK_KEY_TYPE>())
            .and_then(|b| b.try_into().ok())
            .map(CK_KEY_TYPE::from_ne_bytes)
            .ok_or(CKR_KEY_HANDLE_INVALID)?;
        let len = match key_type {
            CKK_RSA => {
                let modulus = self.attribute(session, key, CKA_MODULUS)?;
                modulus.iter().skip_while(|b| **b == 0).count()
            }
            CKK_EC => {
                let params = self.attribute(session, key, CKA_EC_PARAMS)?;
                ec_signature_length(&params)
            }
            // Ed25519 (Ed448 would be 114; SoftHSM2 2.6 has none).
            CKK_EC_EDWARDS => 64,
            _ => return Err(CKR_KEY_HANDLE_INVALID),
        };
        self.signature_lengths.write().insert(id, len);
        Ok(len)
    }

    /// One attribute's value, through the real module (two calls: length, then value).
    fn attribute(
        &self,
        session: CK_SESSION_HANDLE,
        key: CK_OBJECT_HANDLE,
        kind: CK_ATTRIBUTE_TYPE,
    ) -> Result<Vec<u8>, CK_RV> {
        let get = real(self.real.C_GetAttributeValue)?;
        let mut template = CK_ATTRIBUTE {
            type_: kind,
            pValue: std::ptr::null_mut(),
            ulValueLen: 0,
        };
        // SAFETY: one template entry we own, NULL value: the module writes the length.
        let rv = unsafe { get(session, key, &mut template, 1) };
        if rv != CKR_OK {
            return Err(rv);
        }
        if template.ulValueLen == CK_UNAVAILABLE_INFORMATION || template.ulValueLen > 1 << 16 {
            return Err(CKR_KEY_HANDLE_INVALID);
        }
        let mut value = vec![0u8; template.ulValueLen as usize];
        template.pValue = value.as_mut_ptr().cast();
        // SAFETY: pValue points to ulValueLen writable bytes that outlive the call.
        let rv = unsafe { get(session, key, &mut template, 1) };
        if rv != CKR_OK {
            return Err(rv);
        }
        value.truncate(template.ulValueLen as usize);
        Ok(value)
    }

    /// [`Sim::gate`] for a slot-based call; returns the slot's label for the caller's bookkeeping.
    pub fn gate_slot(&self, slot: CK_SLOT_ID) -> Result<Option<Arc<str>>, CK_RV> {
        let Some(control) = &self.control else {
            return Ok(None);
        };
        let label = self.slot_label(slot);
        if let Some(label) = &label {
            self.gate(control, label, Op::Other)?;
        }
        Ok(label)
    }
}

/// What the signing wrappers need to know about a session's token.
#[derive(Debug, Default)]
pub struct Signing {
    /// `None` for sessions the module does not track: no model, no fault.
    pub label: Option<Arc<str>>,
    pub model: Option<Model>,
    /// A stand-in sign operation is active on the session; its signature length.
    pub standin: Option<usize>,
}

/// Sleeps until `t` (returns at once if it has passed).
pub fn sleep_until(t: Instant) {
    let left = t.saturating_duration_since(Instant::now());
    if left > Duration::ZERO {
        thread::sleep(left);
    }
}

/// r‖s length of an ECDSA signature for the curve in `CKA_EC_PARAMS` (a DER OID).
fn ec_signature_length(params: &[u8]) -> usize {
    const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    const P521: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];
    match params {
        p if p == P384 => 96,
        p if p == P521 => 132,
        p if p == P256 => 64,
        // Other curves: the common size; stand-in signatures are not checked by anyone.
        _ => 64,
    }
}

/// Fills `out` with a stand-in signature: a fixed, recognisable pattern (never a valid
/// signature, no leading zero byte so DER integers keep their length).
pub fn fill_standin(out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = 0x5a ^ (i as u8).wrapping_mul(0x1f);
    }
    if let Some(first) = out.first_mut() {
        *first = 0x5a;
    }
}

/// A blank-padded (and, from some modules, NUL-padded) CK_UTF8CHAR[32] label as text.
pub fn token_label(raw: &[u8]) -> String {
    let end = raw
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |i| i + 1);
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Which token each open session belongs to. C_Sign at ~30k/s from many threads looks a handle
/// up on every call, so the map is split in shards (handles are sequential, so `handle % N`
/// spreads them): readers of different shards never touch the same lock word.
pub struct SessionMap {
    shards: [RwLock<HashMap<CK_SESSION_HANDLE, SessionEntry>>; SHARDS],
}

const SHARDS: usize = 16;

#[derive(Debug, Clone)]
pub struct SessionEntry {
    slot: CK_SLOT_ID,
    pub label: Arc<str>,
    /// A stand-in sign operation is active: the signature length it will produce.
    pub standin: Option<usize>,
}

impl Default for SessionMap {
    fn default() -> Self {
        SessionMap {
            shards: std::array::from_fn(|_| RwLock::new(HashMap::new())),
        }
    }
}

impl SessionMap {
    #[inline]
    fn shard(
        &self,
        session: CK_SESSION_HANDLE,
    ) -> &RwLock<HashMap<CK_SESSION_HANDLE, SessionEntry>> {
        &self.shards[(session as usize) % SHARDS]
    }

    pub fn insert(&self, session: CK_SESSION_HANDLE, slot: CK_SLOT_ID, label: Arc<str>) {
        self.shard(session).write().insert(
            session,
            SessionEntry {
                slot,
                label,
                standin: None,
            },
        );
    }

    #[inline]
    pub fn label(&self, session: CK_SESSION_HANDLE) -> Option<Arc<str>> {
        self.shard(session)
            .read()
            .get(&session)
            .map(|e| e.label.clone())
    }

    /// The session's entry (label and stand-in state), if the module tracks it.
    #[inline]
    pub fn entry(&self, session: CK_SESSION_HANDLE) -> Option<SessionEntry> {
        self.shard(session).read().get(&session).cloned()
    }

    /// Starts (`Some(length)`) or ends (`None`) a stand-in sign operation on a session.
    pub fn set_standin(&self, session: CK_SESSION_HANDLE, standin: Option<usize>) {
        if let Some(e) = self.shard(session).write().get_mut(&session) {
            e.standin = standin;
        }
    }

    pub fn remove(&self, session: CK_SESSION_HANDLE) {
        self.shard(session).write().remove(&session);
    }

    pub fn remove_slot(&self, slot: CK_SLOT_ID) {
        for shard in &self.shards {
            shard.write().retain(|_, e| e.slot != slot);
        }
    }

    pub fn clear(&self) {
        for shard in &self.shards {
            shard.write().clear();
        }
    }
}

/// The real function, or CKR_FUNCTION_NOT_SUPPORTED when the real module has none.
#[inline]
pub fn real<F>(f: Option<F>) -> Result<F, CK_RV> {
    f.ok_or(CKR_FUNCTION_NOT_SUPPORTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_labels_are_trimmed() {
        let mut raw = [b' '; 32];
        raw[..5].copy_from_slice(b"SIM-A");
        assert_eq!(token_label(&raw), "SIM-A");
        let mut nul = [0u8; 32];
        nul[..3].copy_from_slice(b"a b");
        assert_eq!(token_label(&nul), "a b");
        assert_eq!(token_label(&[b' '; 32]), "");
    }

    #[test]
    fn session_map_tracks_slots() {
        let map = SessionMap::default();
        map.insert(1, 10, "A".into());
        map.insert(17, 10, "A".into());
        map.insert(2, 20, "B".into());
        assert_eq!(map.label(17).as_deref(), Some("A"));
        map.remove_slot(10);
        assert!(map.label(1).is_none() && map.label(17).is_none());
        assert_eq!(map.label(2).as_deref(), Some("B"));
        map.remove(2);
        assert!(map.label(2).is_none());
    }
}
