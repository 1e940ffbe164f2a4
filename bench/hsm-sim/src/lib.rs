//! hsm-sim: a PKCS#11 module (`libhsm_sim.so`) that forwards every call to a real module
//! (SoftHSM2 by default) and injects faults per token, on demand, while the caller runs.
//!
//! It exists to test the gateway's failover: several "HSMs" are several tokens of one SoftHSM2
//! store, all behind this one module and one PKCS#11 context, and a test makes one of them fail
//! with an exact CKR code, hang (like a SIGSTOPped HSM: no timeout), or slow down, then heals it,
//! by editing a control file. p11-kit remoting covers "the HSM process died" but not hangs on
//! demand, exact codes, or Ed25519.
//!
//! It is also the bench's **Luna-class HSM model** (`model.rs`): a `model` line gives a token
//! parallel signing units and a latency distribution, hence a rated speed (default 10,000
//! signatures/s), with real signatures from SoftHSM2 or cheap stand-ins for measuring the
//! gateway at rates this machine cannot sign at. One module serves the failover tests and the
//! capacity model; a modelled token can be knocked out and healed like any other.
//!
//! # Environment
//!
//! Both are read once, on the first `C_GetFunctionList` of the process:
//!
//! - `HSMSIM_MODULE`: the real module, default `/usr/lib/softhsm/libsofthsm2.so` (which itself
//!   reads `SOFTHSM2_CONF`).
//! - `HSMSIM_CONTROL`: the control file. Unset: no faults ever, pure forwarding. Set but missing
//!   (or removed later): every token healthy.
//! - `HSMSIM_VERBOSE=1`: print the new state to stderr whenever the control file changes.
//!
//! # Control file
//!
//! One line per token label: `LABEL MODE [ARG]`; `#` starts a comment; blank lines are ignored;
//! labels with blanks are written in double quotes; `*` applies to every token without a line of
//! its own. No line means healthy.
//!
//! ```text
//! EAST-1 fail 0x30        # every intercepted call on that token returns this code (hex,
//!                         # decimal or a CKR_ name; default CKR_DEVICE_ERROR), including
//!                         # C_OpenSession and C_GetTokenInfo on its slot
//! EAST-2 hang             # intercepted calls block until the line changes, then go on
//! WEST-1 delay 5000       # +5000 µs on each C_Sign/C_SignFinal that returns a signature
//! WEST-2 fail-sign 0x30   # only C_SignInit/C_Sign/C_SignUpdate/C_SignFinal fail
//! SIM-A model units=10 rate=10000 dist=exp signature=stand-in
//!                         # the timing model (see `model`): kept apart from the fault
//!                         # lines, so `SIM-A fail` knocks the modelled HSM out and
//!                         # removing that line brings it back with its model
//! "My HSM" ok             # explicit healthy: overrides a `*` line
//! * fail 0xE0             # every other token
//! ```
//!
//! Bad lines are reported on stderr and ignored. The file is stat()ed at most every 20 ms (the
//! parsed state is cached, so C_Sign at 30k/s pays one clock read and two uncontended read
//! locks) and re-read when its mtime, size or inode change: replace it atomically (write a
//! temporary file, then rename) so a half-written file is never read.
//!
//! # Intercepted calls
//!
//! C_Initialize/C_Finalize (forwarded; they reset the maps), C_GetTokenInfo, C_InitToken,
//! C_OpenSession, C_CloseSession, C_CloseAllSessions, C_GetSessionInfo, C_Login, C_Logout,
//! C_GetAttributeValue, C_FindObjectsInit/C_FindObjects/C_FindObjectsFinal, C_SignInit, C_Sign,
//! C_SignUpdate, C_SignFinal. Every other entry of the function list is the real module's own
//! pointer. A session is tied to its token label at C_OpenSession (slot → label via the real
//! C_GetTokenInfo, cached per slot). Closing a session of a failed token closes the real session
//! too (no leak) but returns the injected code. Only `C_GetFunctionList` is exported (no
//! `C_GetInterface`: SoftHSM2 2.6 has none either, so callers use the 2.40 list).
//!
//! Under a `model` line the signing calls are timed (only the C_Sign/C_SignFinal that returns
//! a signature), after any fault. With `signature=stand-in` the token's C_SignInit, C_Sign,
//! C_SignUpdate and C_SignFinal never reach the real module: the operation lives in the
//! session map, and the signature's length comes from the key's attributes (C_GetAttributeValue
//! on the real module, cached per token and key handle). Mechanism and key are not otherwise
//! checked in that mode.
//!
//! The module may be dlclose()d by its caller (cryptoki does when a context is dropped): code
//! in it must not register thread-exit destructors that outlive that (`std::thread::current()`
//! does; see `model::uniform`).

// A PKCS#11 module is an FFI boundary by nature: raw pointers from C, a dlopen()ed library and
// `extern "C"` entry points. Each unsafe block says why it is sound.
#![allow(unsafe_code)]

// Private modules; the crate's Rust API (used by hsm-bench and the tests) is the list below.
// `sim` is the process-wide state (the real module, the control file, the sessions);
// `wrappers` are the entry points over it and build the function list we hand out, so the
// dependencies run one way: wrappers → sim → control, model.
mod control;
mod model;
mod sim;
mod wrappers;

pub use control::{ControlState, Fault};
pub use model::{Dist, Model, SignatureMode};

use cryptoki_sys::{CK_FUNCTION_LIST, CK_RV, CKR_ARGUMENTS_BAD, CKR_OK};

/// The module's only exported symbol: loads the real module on first use and returns our list.
///
/// # Safety
///
/// `list` must be NULL or valid for a pointer write (the PKCS#11 contract).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    wrappers::guard(|| {
        if list.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let sim = sim::get_or_load()?;
        // The list lives in a static for the life of the process. PKCS#11 hands it out as a
        // mutable pointer, but callers only read it.
        let ours =
            wrappers::our_function_list(sim) as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST;
        // SAFETY: non-null, and the caller guarantees it is valid for writes.
        unsafe { *list = ours };
        Ok(CKR_OK)
    })
}
