//! What a PKCS#11 return code means for the gateway.
//!
//! Every failure is classified by what fixes it, never by a global "HSM down" flag (Boulder
//! learned that one the hard way: boulder#1003, #1512):
//!
//! - [`Fault::Session`]: this session is broken; open a new one on the same HSM and try again.
//! - [`Fault::Device`]: this HSM is unusable (gone, reset, hung, stale handles); take it out of
//!   rotation, retry the request on another HSM, and reconnect it in the background.
//! - [`Fault::Request`]: the HSM refused the operation (`CKR_DATA_LEN_RANGE`,
//!   `CKR_MECHANISM_INVALID`, ...). Requests are checked before they reach an HSM, so this is
//!   more likely the HSM's or its key's doing (a module that cannot carry a mechanism, a clone
//!   with `CKA_SIGN` false): another HSM is tried, and the caller gets the error if all refuse.
//! - [`Fault::Transient`]: the HSM failed without saying why (`CKR_GENERAL_ERROR`,
//!   `CKR_FUNCTION_FAILED`, ...). The request is retried elsewhere, but one such error does not
//!   take an HSM out: a poisoned request must not knock out every HSM in turn. Several in a row
//!   do (see `TRANSIENT_LIMIT`).

use cryptoki::error::{Error as CkError, RvError};

use crate::error::ckr_name;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Session,
    Device,
    Request,
    Transient,
}

/// Consecutive transient failures after which an HSM leaves rotation.
pub const TRANSIENT_LIMIT: u32 = 5;

pub fn classify_rv(rv: RvError) -> Fault {
    use RvError::*;
    match rv {
        SessionHandleInvalid | SessionClosed | OperationActive | OperationNotInitialized => {
            Fault::Session
        }
        // Not logged in any more (token reset, or logged out when its last session closed):
        // the reconnect logs in again. Keys that want a login per signature
        // (CKA_ALWAYS_AUTHENTICATE) are refused when found, so they cannot cause this.
        UserNotLoggedIn
        | DeviceError
        | DeviceRemoved
        | DeviceMemory
        | TokenNotPresent
        | TokenNotRecognized
        | SlotIdInvalid
        | CryptokiNotInitialized
        | KeyHandleInvalid
        | ObjectHandleInvalid
        | SessionCount
        | PinIncorrect
        | PinExpired
        | PinLocked
        | UserPinNotInitialized => Fault::Device,
        DataLenRange
        | DataInvalid
        | MechanismInvalid
        | MechanismParamInvalid
        | KeyTypeInconsistent
        | KeyFunctionNotPermitted
        | KeySizeRange
        | ArgumentsBad => Fault::Request,
        _ => Fault::Transient,
    }
}

/// Classifies any cryptoki error and names it the way operators search for it.
pub fn classify(e: &CkError) -> (Fault, String) {
    match e {
        CkError::Pkcs11(rv, _) => (classify_rv(*rv), ckr_name(*rv)),
        // Library loading, null function pointers and the like: this HSM's module is unusable.
        other => (Fault::Device, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unavailable_family_is_device_level() {
        for rv in [
            RvError::DeviceError,
            RvError::SlotIdInvalid,
            RvError::DeviceRemoved,
            RvError::TokenNotPresent,
            RvError::CryptokiNotInitialized,
            RvError::KeyHandleInvalid,
        ] {
            assert_eq!(classify_rv(rv), Fault::Device, "{rv:?}");
        }
        assert_eq!(classify_rv(RvError::SessionHandleInvalid), Fault::Session);
        assert_eq!(classify_rv(RvError::DataLenRange), Fault::Request);
        assert_eq!(classify_rv(RvError::GeneralError), Fault::Transient);
    }
}
