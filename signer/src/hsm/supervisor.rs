//! The supervisor thread of one HSM: the watchdog on every worker's current call, and the
//! reconnection of an HSM that is out of rotation (a fresh context, sessions, login and key
//! handles), with a longer wait when its PIN was refused.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Hsm, lock};
use crate::error::Error;

const HUNG_RECONNECT: &str = "reconnect attempt hung";

/// How long an HSM whose PIN was refused waits before logging in again.
const PIN_RETRY: Duration = Duration::from_secs(300);

fn pin_refused(e: &Error) -> bool {
    matches!(e, Error::Pkcs11 { function, code, .. } if function == "C_Login" && code.starts_with("CKR_PIN_"))
}

/// The supervisor thread: watchdog every few milliseconds, reconnection when out of rotation.
pub(super) fn supervise(weak: Weak<Hsm>) {
    let mut connecting: Option<(JoinHandle<Result<(), Error>>, Instant)> = None;
    let mut next_attempt = Instant::now();
    let mut attempts: u32 = 0;
    loop {
        let Some(hsm) = weak.upgrade() else { return };
        if hsm.stopped.load(Ordering::SeqCst) {
            return;
        }
        let settings = hsm.settings();
        hsm.check_hung();

        // A connect attempt in progress: collect it when done; give up waiting if it hangs.
        if let Some((handle, started)) = connecting.take() {
            if handle.is_finished() {
                let mut wait = settings.probe_interval;
                match handle.join() {
                    Ok(Ok(())) => attempts = 0,
                    Ok(Err(e)) => {
                        if pin_refused(&e) {
                            // Every further login with a wrong PIN brings a Luna partition
                            // closer to lockout: a locked partition is worse than a down HSM.
                            wait = PIN_RETRY;
                            tracing::error!(hsm = %hsm.name, "{e}: not trying again for {} s; fix the PIN source and reload", PIN_RETRY.as_secs());
                        } else {
                            tracing::warn!(hsm = %hsm.name, "reconnect failed: {e}");
                        }
                        *lock(&hsm.last_problem) = Some(e.to_string());
                    }
                    Err(_) => tracing::error!(hsm = %hsm.name, "connect thread panicked"),
                }
                next_attempt = Instant::now() + wait;
            } else if started.elapsed() > settings.call_timeout * 10 {
                // Leave it: a PKCS#11 call cannot be cancelled. No new attempt until it returns,
                // so a hung module does not collect a thread per probe. (Known case: cryptoki's
                // C_GetSlotList loop spins when p11-kit's client reports zero slots with
                // CKR_BUFFER_TOO_SMALL; see the closing note of the gateway issue.)
                let mut problem = lock(&hsm.last_problem);
                if problem.as_deref() != Some(HUNG_RECONNECT) {
                    tracing::error!(hsm = %hsm.name, "reconnect attempt has not returned for {:?}: the HSM stays out of rotation until it does", started.elapsed());
                    hsm.metrics.error("RECONNECT_HUNG");
                    *problem = Some(HUNG_RECONNECT.into());
                }
                drop(problem);
                connecting = Some((handle, started));
            } else {
                connecting = Some((handle, started));
            }
        } else if !hsm.in_rotation() && Instant::now() >= next_attempt {
            attempts += 1;
            let fresh = attempts > 1 || hsm.generation.load(Ordering::SeqCst) > 0;
            let h = hsm.clone();
            match std::thread::Builder::new()
                .name(format!("{}-connect", hsm.name))
                .spawn(move || h.connect(fresh))
            {
                Ok(handle) => connecting = Some((handle, Instant::now())),
                Err(e) => tracing::error!(hsm = %hsm.name, "cannot start connect thread: {e}"),
            }
        }
        let tick =
            (settings.call_timeout / 8).clamp(Duration::from_millis(5), Duration::from_millis(100));
        drop(hsm);
        std::thread::sleep(tick);
    }
}
