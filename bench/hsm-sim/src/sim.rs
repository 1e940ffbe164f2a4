//! The module's global state: the real module, our function list, and the maps that tie a
//! session or slot to its token label.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::thread;

use cryptoki_sys::{
    CK_FUNCTION_LIST, CK_RV, CK_SESSION_HANDLE, CK_SLOT_ID, CK_TOKEN_INFO, CKF_TOKEN_INITIALIZED,
    CKR_FUNCTION_NOT_SUPPORTED, CKR_GENERAL_ERROR, CKR_OK,
};
use parking_lot::RwLock;

use crate::control::{Action, Control, HANG_POLL, Op};

/// The real module when `HSMSIM_MODULE` is unset.
pub const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

static SIM: OnceLock<Result<Sim, String>> = OnceLock::new();

/// Everything the wrappers need. Created once per process, on the first C_GetFunctionList, and
/// never dropped (a static): the real module must stay loaded as long as anyone may call it.
pub struct Sim {
    _lib: libloading::Library,
    /// The real module's function list, copied.
    pub real: CK_FUNCTION_LIST,
    /// The list we hand out: `real` with the intercepted entries replaced.
    pub ours: CK_FUNCTION_LIST,
    /// `None` when `HSMSIM_CONTROL` is unset: then no faults ever, and the wrappers skip all
    /// bookkeeping and just forward.
    pub control: Option<Control>,
    pub sessions: SessionMap,
    /// Token label per slot id, filled from the real C_GetTokenInfo. Slot ids are stable while
    /// the module is initialised (SoftHSM derives them from the token serial); C_InitToken,
    /// C_Initialize and C_Finalize clear it.
    slot_labels: RwLock<HashMap<CK_SLOT_ID, Arc<str>>>,
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
        ours: crate::wrappers::function_list(&real),
        control,
        sessions: SessionMap::default(),
        slot_labels: RwLock::new(HashMap::new()),
    })
}

impl Sim {
    /// Forgets every session and slot label (C_Initialize / C_Finalize).
    pub fn reset(&self) {
        self.sessions.clear();
        self.slot_labels.write().clear();
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
struct SessionEntry {
    slot: CK_SLOT_ID,
    label: Arc<str>,
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
        self.shard(session)
            .write()
            .insert(session, SessionEntry { slot, label });
    }

    #[inline]
    pub fn label(&self, session: CK_SESSION_HANDLE) -> Option<Arc<str>> {
        self.shard(session)
            .read()
            .get(&session)
            .map(|e| e.label.clone())
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
