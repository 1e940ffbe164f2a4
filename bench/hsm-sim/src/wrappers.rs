//! The intercepted PKCS#11 entry points. Each one finds the token of its session or slot,
//! applies that token's fault, then calls the real module's function with the caller's
//! arguments untouched. Every body runs under [`guard`]: a panic must not unwind into C.

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::time::Instant;

use cryptoki_sys::{
    CK_ATTRIBUTE, CK_BYTE, CK_FLAGS, CK_FUNCTION_LIST, CK_MECHANISM, CK_NOTIFY, CK_OBJECT_HANDLE,
    CK_RV, CK_SESSION_HANDLE, CK_SESSION_INFO, CK_SLOT_ID, CK_TOKEN_INFO, CK_ULONG, CK_USER_TYPE,
    CK_UTF8CHAR, CKR_ARGUMENTS_BAD, CKR_BUFFER_TOO_SMALL, CKR_GENERAL_ERROR, CKR_OK,
    CKR_OPERATION_ACTIVE,
};

use crate::control::Op;
use crate::model::SignatureMode;
use crate::sim::{self, Sim, real};

/// Runs a wrapper body; `Err(code)` and panics become return codes.
#[inline]
pub(crate) fn guard(body: impl FnOnce() -> Result<CK_RV, CK_RV>) -> CK_RV {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(rv)) | Ok(Err(rv)) => rv,
        // The panic message is already on stderr (default hook).
        Err(_) => CKR_GENERAL_ERROR,
    }
}

/// The list we hand out: the real module's, with the intercepted entries replaced. Built here,
/// not in `sim`, so that `sim` (the state) does not depend on the wrappers that use it; it
/// lives in a static for the life of the process, like the `Sim` it is built from.
static OURS: OnceLock<CK_FUNCTION_LIST> = OnceLock::new();

/// Our function list for `sim` (built on first use).
pub(crate) fn our_function_list(sim: &Sim) -> &'static CK_FUNCTION_LIST {
    OURS.get_or_init(|| function_list(&sim.real))
}

/// Our function list: the real one, with the intercepted entries pointing here.
fn function_list(real: &CK_FUNCTION_LIST) -> CK_FUNCTION_LIST {
    CK_FUNCTION_LIST {
        C_GetFunctionList: Some(crate::C_GetFunctionList),
        C_Initialize: Some(initialize),
        C_Finalize: Some(finalize),
        C_GetTokenInfo: Some(get_token_info),
        C_InitToken: Some(init_token),
        C_OpenSession: Some(open_session),
        C_CloseSession: Some(close_session),
        C_CloseAllSessions: Some(close_all_sessions),
        C_GetSessionInfo: Some(get_session_info),
        C_Login: Some(login),
        C_Logout: Some(logout),
        C_GetAttributeValue: Some(get_attribute_value),
        C_FindObjectsInit: Some(find_objects_init),
        C_FindObjects: Some(find_objects),
        C_FindObjectsFinal: Some(find_objects_final),
        C_SignInit: Some(sign_init),
        C_Sign: Some(sign),
        C_SignUpdate: Some(sign_update),
        C_SignFinal: Some(sign_final),
        // Everything else (version, C_GetSlotList, C_GenerateKeyPair, C_Verify, ...) is the
        // real module's own pointer: no wrapper, no cost.
        ..*real
    }
}

unsafe extern "C" fn initialize(args: *mut c_void) -> CK_RV {
    guard(|| {
        let sim = sim::get()?;
        // SAFETY: the caller's arguments, passed through unchanged (OS_LOCKING_OK matters: it
        // is what makes SoftHSM2 lock).
        let rv = unsafe { real(sim.real.C_Initialize)?(args) };
        if rv == CKR_OK {
            sim.reset();
        }
        Ok(rv)
    })
}

unsafe extern "C" fn finalize(reserved: *mut c_void) -> CK_RV {
    guard(|| {
        let sim = sim::get()?;
        // SAFETY: passed through unchanged.
        let rv = unsafe { real(sim.real.C_Finalize)?(reserved) };
        if rv == CKR_OK {
            sim.reset();
        }
        Ok(rv)
    })
}

unsafe extern "C" fn get_token_info(slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) -> CK_RV {
    guard(|| {
        let sim = sim::get()?;
        // A dead HSM must look dead here too: the gateway finds tokens by label with this call.
        sim.gate_slot(slot)?;
        // SAFETY: passed through unchanged.
        Ok(unsafe { real(sim.real.C_GetTokenInfo)?(slot, info) })
    })
}

unsafe extern "C" fn init_token(
    slot: CK_SLOT_ID,
    pin: *mut CK_UTF8CHAR,
    pin_len: CK_ULONG,
    label: *mut CK_UTF8CHAR,
) -> CK_RV {
    guard(|| {
        let sim = sim::get()?;
        // SAFETY: passed through unchanged.
        let rv = unsafe { real(sim.real.C_InitToken)?(slot, pin, pin_len, label) };
        // The slot now holds a token with a new label (and its old sessions are gone).
        sim.forget_slot(slot);
        sim.sessions.remove_slot(slot);
        Ok(rv)
    })
}

unsafe extern "C" fn open_session(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    app: *mut c_void,
    notify: CK_NOTIFY,
    session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    guard(|| {
        let sim = sim::get()?;
        // Fails (or hangs) before the real call, like a gateway reconnecting to a dead HSM.
        let label = sim.gate_slot(slot)?;
        // SAFETY: passed through unchanged.
        let rv = unsafe { real(sim.real.C_OpenSession)?(slot, flags, app, notify, session) };
        if let (CKR_OK, Some(label), false) = (rv, label, session.is_null()) {
            // SAFETY: the real module just wrote the handle there.
            let handle = unsafe { *session };
            sim.sessions.insert(handle, slot, label);
        }
        Ok(rv)
    })
}

unsafe extern "C" fn close_session(session: CK_SESSION_HANDLE) -> CK_RV {
    guard(|| {
        let sim = sim::get()?;
        // A hung token hangs here too. A failed one still closes the real session (no leak;
        // a dead HSM's session is gone anyway) but reports the injected code.
        let injected = sim.gate_session(session, Op::Other).err();
        // SAFETY: passed through unchanged.
        let rv = unsafe { real(sim.real.C_CloseSession)?(session) };
        sim.sessions.remove(session);
        Ok(injected.unwrap_or(rv))
    })
}

unsafe extern "C" fn close_all_sessions(slot: CK_SLOT_ID) -> CK_RV {
    guard(|| {
        let sim = sim::get()?;
        let injected = sim.gate_slot(slot).err();
        // SAFETY: passed through unchanged.
        let rv = unsafe { real(sim.real.C_CloseAllSessions)?(slot) };
        sim.sessions.remove_slot(slot);
        Ok(injected.unwrap_or(rv))
    })
}

/// The common shape: gate on the session's token, then forward.
macro_rules! session_wrapper {
    ($name:ident, $field:ident, $op:expr, ($session:ident $(, $arg:ident : $ty:ty)*)) => {
        unsafe extern "C" fn $name($session: CK_SESSION_HANDLE $(, $arg: $ty)*) -> CK_RV {
            guard(|| {
                let sim: &Sim = sim::get()?;
                let op: Op = $op;
                sim.gate_session($session, op)?;
                // SAFETY: the caller's arguments, passed through unchanged.
                Ok(unsafe { real(sim.real.$field)?($session $(, $arg)*) })
            })
        }
    };
}

session_wrapper!(get_session_info, C_GetSessionInfo, Op::Other,
    (session, info: *mut CK_SESSION_INFO));
session_wrapper!(login, C_Login, Op::Other,
    (session, user: CK_USER_TYPE, pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG));
session_wrapper!(logout, C_Logout, Op::Other, (session));
session_wrapper!(get_attribute_value, C_GetAttributeValue, Op::Other,
    (session, object: CK_OBJECT_HANDLE, template: *mut CK_ATTRIBUTE, count: CK_ULONG));
session_wrapper!(find_objects_init, C_FindObjectsInit, Op::Other,
    (session, template: *mut CK_ATTRIBUTE, count: CK_ULONG));
session_wrapper!(find_objects, C_FindObjects, Op::Other,
    (session, objects: *mut CK_OBJECT_HANDLE, max: CK_ULONG, found: *mut CK_ULONG));
session_wrapper!(find_objects_final, C_FindObjectsFinal, Op::Other, (session));
session_wrapper!(sign_update_real, C_SignUpdate, Op::Sign,
    (session, part: *mut CK_BYTE, part_len: CK_ULONG));

// The signing calls: faults first, then the token's timing model (see `model.rs`). A model
// with `signature=stand-in` never reaches the real module: C_SignInit records the operation
// (and the key's signature length) on the session, C_Sign answers length queries and writes
// the stand-in bytes; the operation ends as PKCS#11 says (after a signature, or an error
// other than CKR_BUFFER_TOO_SMALL).

unsafe extern "C" fn sign_init(
    session: CK_SESSION_HANDLE,
    mechanism: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        let sim = sim::get()?;
        let signing = sim.gate_signing(session, Op::Sign)?;
        if let (Some(label), Some(model)) = (&signing.label, signing.model)
            && model.signature == SignatureMode::StandIn
        {
            if signing.standin.is_some() {
                return Err(CKR_OPERATION_ACTIVE);
            }
            if mechanism.is_null() {
                return Err(CKR_ARGUMENTS_BAD);
            }
            let len = sim.signature_length(label, session, key)?;
            sim.sessions.set_standin(session, Some(len));
            return Ok(CKR_OK);
        }
        // SAFETY: the caller's arguments, passed through unchanged.
        Ok(unsafe { real(sim.real.C_SignInit)?(session, mechanism, key) })
    })
}

unsafe extern "C" fn sign(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    data_len: CK_ULONG,
    signature: *mut CK_BYTE,
    signature_len: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let sim = sim::get()?;
        let requested = Instant::now();
        // A NULL signature buffer is a length query: no private-key work, so no `delay` and no
        // model time.
        let op = if signature.is_null() {
            Op::Sign
        } else {
            Op::SignOutput
        };
        let signing = sim.gate_signing(session, op).inspect_err(|_| {
            // An error ends a sign operation (PKCS#11 §5.11); the real module's own
            // operation, if any, is not ours to end.
            sim.sessions.set_standin(session, None);
        })?;
        if let Some(len) = signing.standin {
            // SAFETY: the caller's out-pointers, checked for NULL inside.
            return unsafe {
                standin_output(sim, session, &signing, len, signature, signature_len)
            };
        }
        // SAFETY: the caller's arguments, passed through unchanged.
        let rv =
            unsafe { real(sim.real.C_Sign)?(session, data, data_len, signature, signature_len) };
        if let (CKR_OK, Op::SignOutput, Some(label), Some(model)) =
            (rv, op, &signing.label, signing.model)
        {
            sim.serve(label, &model, requested);
        }
        Ok(rv)
    })
}

unsafe extern "C" fn sign_update(
    session: CK_SESSION_HANDLE,
    part: *mut CK_BYTE,
    part_len: CK_ULONG,
) -> CK_RV {
    guard(|| {
        let sim = sim::get()?;
        if sim
            .sessions
            .entry(session)
            .is_some_and(|e| e.standin.is_some())
        {
            // The stand-in ignores its input.
            sim.gate_signing(session, Op::Sign)?;
            return Ok(CKR_OK);
        }
        // SAFETY: passed through unchanged.
        Ok(unsafe { sign_update_real(session, part, part_len) })
    })
}

unsafe extern "C" fn sign_final(
    session: CK_SESSION_HANDLE,
    signature: *mut CK_BYTE,
    signature_len: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let sim = sim::get()?;
        let requested = Instant::now();
        let op = if signature.is_null() {
            Op::Sign
        } else {
            Op::SignOutput
        };
        let signing = sim.gate_signing(session, op).inspect_err(|_| {
            // An error ends a sign operation (PKCS#11 §5.11); the real module's own
            // operation, if any, is not ours to end.
            sim.sessions.set_standin(session, None);
        })?;
        if let Some(len) = signing.standin {
            // SAFETY: the caller's out-pointers, checked for NULL inside.
            return unsafe {
                standin_output(sim, session, &signing, len, signature, signature_len)
            };
        }
        // SAFETY: passed through unchanged.
        let rv = unsafe { real(sim.real.C_SignFinal)?(session, signature, signature_len) };
        if let (CKR_OK, Op::SignOutput, Some(label), Some(model)) =
            (rv, op, &signing.label, signing.model)
        {
            sim.serve(label, &model, requested);
        }
        Ok(rv)
    })
}

/// The output of a stand-in C_Sign/C_SignFinal: the length for a length query, the stand-in
/// bytes (after the model's time) otherwise.
///
/// # Safety
///
/// `signature_len` must be NULL or valid for reads and writes; `signature` NULL or valid for
/// `*signature_len` bytes of writes.
unsafe fn standin_output(
    sim: &Sim,
    session: CK_SESSION_HANDLE,
    signing: &sim::Signing,
    len: usize,
    signature: *mut CK_BYTE,
    signature_len: *mut CK_ULONG,
) -> Result<CK_RV, CK_RV> {
    if signature_len.is_null() {
        sim.sessions.set_standin(session, None);
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-null, and the caller guarantees it is valid.
    let room = unsafe { *signature_len } as usize;
    // SAFETY: as above.
    unsafe { *signature_len = len as CK_ULONG };
    if signature.is_null() {
        return Ok(CKR_OK);
    }
    if room < len {
        // The operation stays active: the caller may retry with a larger buffer.
        return Ok(CKR_BUFFER_TOO_SMALL);
    }
    if let (Some(label), Some(model)) = (&signing.label, signing.model) {
        sim.serve(label, &model, Instant::now());
    }
    // SAFETY: the caller's buffer has room for `len` bytes (checked above).
    let out = unsafe { std::slice::from_raw_parts_mut(signature, len) };
    sim::fill_standin(out);
    sim.sessions.set_standin(session, None);
    Ok(CKR_OK)
}
