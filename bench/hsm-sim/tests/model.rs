//! The Luna-class timing model, through cryptoki like any HSM: a private SoftHSM2 store with one
//! token behind `libhsm_sim.so`, driven from a child process (the module reads
//! `HSMSIM_CONTROL` and `SOFTHSM2_CONF` once per process).
//!
//! What is asserted is the model's accounting, which holds on a busy machine too: no signature
//! returns before its modelled latency; no more signatures complete than `units` can serve in
//! the time (an upper bound that a slow machine cannot break); with a backlog of sessions the
//! token keeps most of its rated speed even when sleeps are imprecise (a loose lower bound:
//! 20 ms latencies leave ample slack); real signatures verify, stand-ins have the right length
//! and do not; a modelled token can be knocked out and healed.
//!
//! Needs `softhsm2` and `opensc` (pkcs11-tool) installed.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "1234";
/// Longer than the module's 20 ms re-check interval, so a rewritten control file is in force.
const SETTLE: Duration = Duration::from_millis(80);

/// `libhsm_sim.so` of this build (see `faults.rs` for why `deps/` comes first).
fn sim_module() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    for dir in exe.ancestors().skip(1) {
        let so = dir.join("libhsm_sim.so");
        if so.is_file() {
            return so;
        }
    }
    panic!("libhsm_sim.so not found above {}", exe.display());
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (softhsm2 and opensc installed?): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_model_holds_through_cryptoki() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("tokens")).unwrap();
    let conf = root.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            root.join("tokens").display()
        ),
    )
    .unwrap();
    run(Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "SIM-A"])
        .args(["--so-pin", "5678", "--pin", PIN])
        .env("SOFTHSM2_CONF", &conf));
    run(Command::new("pkcs11-tool")
        .args(["--module", SOFTHSM, "--token-label", "SIM-A", "--login"])
        .args(["--pin", PIN, "--keypairgen", "--key-type", "EC:prime256v1"])
        .args(["--label", "k", "--id", "01"])
        .env("SOFTHSM2_CONF", &conf));
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "model_child", "--ignored", "--nocapture"])
        .env("SOFTHSM2_CONF", &conf)
        .env("HSMSIM_CONTROL", root.join("control"))
        .env("HSMSIM_TEST_CHILD", sim_module())
        .env_remove("HSMSIM_MODULE")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{}: {text}",
        out.status
    );
}

#[test]
#[ignore = "runs inside the_model_holds_through_cryptoki, in a child process"]
fn model_child() {
    let Some(module) = std::env::var_os("HSMSIM_TEST_CHILD") else {
        return;
    };
    let control = PathBuf::from(std::env::var_os("HSMSIM_CONTROL").unwrap());
    let set_control = |text: &str| {
        let tmp = control.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &control).unwrap();
        thread::sleep(SETTLE);
    };
    let pkcs11 = Pkcs11::new(Path::new(&module)).unwrap();
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = pkcs11
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| pkcs11.get_token_info(*s).unwrap().label() == "SIM-A")
        .unwrap();
    let anchor = pkcs11.open_rw_session(slot).unwrap();
    anchor
        .login(UserType::User, Some(&AuthPin::from(PIN.to_string())))
        .unwrap();
    let find = |class| {
        anchor
            .find_objects(&[Attribute::Class(class), Attribute::Label(b"k".to_vec())])
            .unwrap()[0]
    };
    let (key, public) = (
        find(ObjectClass::PRIVATE_KEY),
        find(ObjectClass::PUBLIC_KEY),
    );
    let digest = [7u8; 32];

    // Real signatures, 4 units × 20 ms fixed: 200/s rated. 12 sessions keep a backlog.
    set_control("SIM-A model units=4 mean=20ms dist=fixed\n");
    let (calls, span) = hammer(&pkcs11, slot, key, 12, Duration::from_millis(1500));
    let latency = Duration::from_millis(20);
    for (took, sig) in &calls {
        assert!(*took >= latency, "a signature returned after {took:?}");
        assert_eq!(sig.len(), 64);
    }
    // Every unit serves at most one signature per 20 ms: an upper bound no machine breaks.
    let most = 4.0 * (span.as_secs_f64() / latency.as_secs_f64() + 1.0);
    let n = calls.len() as f64;
    assert!(
        n <= most,
        "{n} signatures in {span:?}: more than 4 units allow ({most})"
    );
    // With a backlog of 8 sessions the units stay booked although sleeps overshoot.
    assert!(n >= 0.7 * most, "{n} signatures in {span:?}, rated {most}");
    // The signatures are SoftHSM2's own: they verify.
    let (_, sig) = &calls[0];
    anchor
        .verify(&Mechanism::Ecdsa, public, &digest, sig)
        .unwrap();

    // Fewer sessions than units: each call still takes the latency, no queueing.
    let (calls, _) = hammer(&pkcs11, slot, key, 2, Duration::from_millis(300));
    assert!(calls.iter().all(|(took, _)| *took >= latency));

    // Stand-in signatures: the right length, not valid, still timed.
    set_control("SIM-A model units=2 mean=5ms dist=fixed signature=stand-in\n");
    let session = pkcs11.open_ro_session(slot).unwrap();
    let started = Instant::now();
    let fake = session.sign(&Mechanism::Ecdsa, key, &digest).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(5));
    assert_eq!(fake.len(), 64);
    assert!(matches!(
        anchor.verify(&Mechanism::Ecdsa, public, &digest, &fake),
        Err(Error::Pkcs11(RvError::SignatureInvalid, _))
    ));

    // Knocked out and healed: the fault line wins while it is there; the model stays.
    set_control("SIM-A model units=2 mean=5ms dist=fixed signature=stand-in\nSIM-A fail 0x30\n");
    assert!(matches!(
        session.sign(&Mechanism::Ecdsa, key, &digest),
        Err(Error::Pkcs11(RvError::DeviceError, _))
    ));
    set_control("SIM-A model units=2 mean=5ms dist=fixed signature=stand-in\n");
    assert_eq!(session.sign(&Mechanism::Ecdsa, key, &digest).unwrap(), fake);

    // Back to real signatures on the same session.
    set_control("");
    let real = session.sign(&Mechanism::Ecdsa, key, &digest).unwrap();
    anchor
        .verify(&Mechanism::Ecdsa, public, &digest, &real)
        .unwrap();

    drop((session, anchor));
    pkcs11.finalize().unwrap();
}

/// Each call's duration and signature.
type Calls = Vec<(Duration, Vec<u8>)>;

/// `threads` sessions signing in a loop for `run`; every call's duration and signature, and
/// the time from the first call's start to the last call's end.
fn hammer(
    pkcs11: &Pkcs11,
    slot: Slot,
    key: ObjectHandle,
    threads: usize,
    run: Duration,
) -> (Calls, Duration) {
    let sessions: Vec<Session> = (0..threads)
        .map(|_| pkcs11.open_ro_session(slot).unwrap())
        .collect();
    let t0 = Instant::now();
    let end = t0 + run;
    let per_thread: Vec<(Calls, Instant)> = thread::scope(|scope| {
        let handles: Vec<_> = sessions
            .into_iter()
            .map(|session| {
                scope.spawn(move || {
                    let mut calls = Vec::new();
                    let mut last = Instant::now();
                    while Instant::now() < end {
                        let started = Instant::now();
                        let sig = session.sign(&Mechanism::Ecdsa, key, &[7u8; 32]).unwrap();
                        last = Instant::now();
                        calls.push((last - started, sig));
                    }
                    (calls, last)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let last = per_thread.iter().map(|(_, l)| *l).max().unwrap_or(t0);
    let calls = per_thread.into_iter().flat_map(|(c, _)| c).collect();
    (calls, last - t0)
}
