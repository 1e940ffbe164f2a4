//! End-to-end: a private SoftHSM2 store with two tokens behind `libhsm_sim.so`, driven by
//! `pkcs11-tool` and by cryptoki, each in a child process so that `HSMSIM_CONTROL` and
//! `SOFTHSM2_CONF` are per process (the module reads them once, at load).
//!
//! Needs `softhsm2` and `opensc` (pkcs11-tool) installed.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
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
const TOKENS: [&str; 2] = ["SIM-A", "SIM-B"];
/// Longer than the module's 20 ms re-check interval, so a rewritten control file is in force.
const SETTLE: Duration = Duration::from_millis(80);
/// Generous bound for one pkcs11-tool run, so a bug hangs no test forever.
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);

/// `libhsm_sim.so` of this build. Integration tests run from `<target>/<profile>/deps/`, and
/// `cargo test` rebuilds the crate's cdylib in that same `deps/` before running them, but does
/// NOT copy it up to `<target>/<profile>/` (only `cargo build` does): the copy up there may be
/// stale or absent. So look in `deps/` first, then walk up.
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

/// A throw-away SoftHSM2 store with SIM-A and SIM-B, each holding an EC P-256 key `k`.
struct Store {
    _dir: tempfile::TempDir,
    root: PathBuf,
    conf: PathBuf,
    control: PathBuf,
    input: PathBuf,
}

impl Store {
    fn new() -> Store {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
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
        let input = root.join("digest.bin");
        std::fs::write(&input, [0x5a; 32]).unwrap();
        let store = Store {
            _dir: dir,
            control: root.join("control"),
            root,
            conf,
            input,
        };
        for label in TOKENS {
            store.setup_step(Command::new("softhsm2-util").args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                "5678",
                "--pin",
                PIN,
            ]));
            store.setup_step(Command::new("pkcs11-tool").args([
                "--module",
                SOFTHSM,
                "--token-label",
                label,
                "--login",
                "--pin",
                PIN,
                "--keypairgen",
                "--key-type",
                "EC:prime256v1",
                "--label",
                "k",
                "--id",
                "01",
            ]));
        }
        store
    }

    fn setup_step(&self, cmd: &mut Command) {
        let out = cmd
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?} (softhsm2 and opensc installed?): {e}"));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Replaces the control file atomically, as the module's docs ask.
    fn set_control(&self, text: &str) {
        let tmp = self.root.join("control.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.control).unwrap();
    }

    /// A command with this store's environment and the module's control file.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SOFTHSM2_CONF", &self.conf)
            .env("HSMSIM_CONTROL", &self.control)
            .env_remove("HSMSIM_MODULE")
            .env_remove("HSMSIM_VERBOSE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// `pkcs11-tool` through the simulator: one ECDSA signature with key `k` on a token
    /// chosen by `select` (`--token-label X` or `--slot 0x..`).
    fn sign(&self, select: &[&str]) -> Child {
        let mut cmd = self.command("pkcs11-tool");
        cmd.arg("--module").arg(sim_module()).args(select);
        cmd.args([
            "--login",
            "--pin",
            PIN,
            "--sign",
            "--mechanism",
            "ECDSA",
            "--label",
            "k",
        ]);
        cmd.arg("-i").arg(&self.input);
        cmd.spawn().unwrap()
    }

    /// The slot id (as pkcs11-tool prints it, `0x…`) of a token, read through SoftHSM2 itself.
    fn slot_of(&self, label: &str) -> String {
        let out = Command::new("pkcs11-tool")
            .args(["--module", SOFTHSM, "--list-slots"])
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut slot = None;
        for line in text.lines() {
            // "Slot 0 (0x2ce9785b): SoftHSM slot ID 0x2ce9785b"
            if let Some(rest) = line.strip_prefix("Slot ") {
                slot = rest.split(['(', ')']).nth(1).map(str::to_string);
            } else if line
                .trim()
                .strip_prefix("token label")
                .map(|l| l.trim_start_matches([' ', ':']))
                == Some(label)
            {
                return slot.unwrap();
            }
        }
        panic!("no slot with token {label} in:\n{text}");
    }
}

struct Finished {
    status: ExitStatus,
    /// stdout and stderr together: pkcs11-tool prints errors on stderr.
    text: String,
    stdout_len: usize,
}

fn finish(mut child: Child, timeout: Duration) -> Finished {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > timeout {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("child did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Finished {
        status,
        stdout_len: stdout.len(),
        text: format!("{}{stderr}", String::from_utf8_lossy(&stdout)),
    }
}

fn assert_signs(child: Child) {
    let f = finish(child, CHILD_TIMEOUT);
    assert!(f.status.success(), "signing failed: {}", f.text);
    // Raw r||s on stdout.
    assert_eq!(f.stdout_len, 64, "{}", f.text);
}

fn assert_fails_with(child: Child, code: &str) {
    let f = finish(child, CHILD_TIMEOUT);
    assert!(!f.status.success(), "expected a failure, got: {}", f.text);
    assert!(f.text.contains(code), "expected {code} in: {}", f.text);
}

#[test]
fn fail_then_heal_one_token_while_the_other_signs() {
    let store = Store::new();
    let a_slot = store.slot_of("SIM-A");
    let a_by_slot = ["--slot", a_slot.as_str()];

    // Healthy: no control file at all, then an empty one.
    assert_signs(store.sign(&["--token-label", "SIM-A"]));
    store.set_control("# nothing wrong\n\n");
    assert_signs(store.sign(&["--token-label", "SIM-A"]));
    assert_signs(store.sign(&a_by_slot));

    store.set_control("SIM-A fail 0x30   # EAST is down\n");
    // By slot, the first call on the token (C_GetTokenInfo) reports the injected code...
    assert_fails_with(store.sign(&a_by_slot), "CKR_DEVICE_ERROR");
    // ...and by label the dead token cannot even be found.
    assert_fails_with(store.sign(&["--token-label", "SIM-A"]), "SIM-A");
    // The other token of the same store, behind the same module, is unaffected.
    assert_signs(store.sign(&["--token-label", "SIM-B"]));

    // Any code, in decimal too; `*` hits every token that has no line of its own.
    store.set_control("* fail 50\nSIM-B ok\n");
    assert_fails_with(store.sign(&a_by_slot), "CKR_DEVICE_REMOVED");
    assert_signs(store.sign(&["--token-label", "SIM-B"]));

    store.set_control("");
    assert_signs(store.sign(&a_by_slot));
    assert_signs(store.sign(&["--token-label", "SIM-A"]));
}

#[test]
fn hang_blocks_until_the_line_is_removed() {
    let store = Store::new();
    store.set_control("SIM-A hang\n");
    let hung = store.sign(&["--token-label", "SIM-A"]);
    let mut hung = Some(hung);
    thread::sleep(Duration::from_secs(1));
    assert!(
        hung.as_mut().unwrap().try_wait().unwrap().is_none(),
        "pkcs11-tool finished although SIM-A hangs"
    );
    // Meanwhile the other token answers. Selected by slot: finding a token by label calls
    // C_GetTokenInfo on every slot, and that call hangs on SIM-A's slot too.
    assert_signs(store.sign(&["--slot", &store.slot_of("SIM-B")]));

    let healed = Instant::now();
    store.set_control("SIM-B ok\n");
    let f = finish(hung.take().unwrap(), Duration::from_secs(10));
    assert!(f.status.success(), "{}", f.text);
    assert_eq!(f.stdout_len, 64, "{}", f.text);
    assert!(
        healed.elapsed() < Duration::from_secs(2),
        "{:?}",
        healed.elapsed()
    );
}

#[test]
fn fail_sign_and_delay() {
    let store = Store::new();
    // Login, key lookup and session calls work; signing does not.
    store.set_control("SIM-A fail-sign 0x30\n");
    let f = finish(store.sign(&["--token-label", "SIM-A"]), CHILD_TIMEOUT);
    assert!(!f.status.success(), "{}", f.text);
    assert!(
        f.text.contains("C_SignInit") && f.text.contains("CKR_DEVICE_ERROR"),
        "{}",
        f.text
    );

    store.set_control("SIM-A delay 400000\n");
    let start = Instant::now();
    assert_signs(store.sign(&["--token-label", "SIM-A"]));
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "{:?}",
        start.elapsed()
    );
}

/// The gateway's situation: one process, one PKCS#11 context, several tokens, faults switched
/// while sessions stay open. Runs `one_context_child` in a child process with the env set.
#[test]
fn one_context_two_tokens() {
    let store = Store::new();
    let f = finish(
        store
            .command(std::env::current_exe().unwrap())
            .args(["--exact", "one_context_child", "--ignored", "--nocapture"])
            .env("HSMSIM_TEST_CHILD", sim_module())
            .spawn()
            .unwrap(),
        Duration::from_secs(60),
    );
    assert!(
        f.status.success() && f.text.contains("1 passed"),
        "{}",
        f.text
    );
}

#[test]
#[ignore = "runs inside one_context_two_tokens, in a child process"]
fn one_context_child() {
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
    let (a_slot, a, a_key) = login(&pkcs11, "SIM-A");
    let (_, b, b_key) = login(&pkcs11, "SIM-B");
    let digest = [7u8; 32];
    let sign = |s: &Session, key| s.sign(&Mechanism::Ecdsa, key, &digest);
    let is = |r: Result<Vec<u8>, Error>, want: RvError| {
        assert!(
            matches!(r, Err(Error::Pkcs11(rv, _)) if rv == want),
            "{r:?}, want {want:?}"
        );
    };
    assert_eq!(sign(&a, a_key).unwrap().len(), 64);
    assert_eq!(sign(&b, b_key).unwrap().len(), 64);

    // A dies: its open session, new sessions and token info all report the code; B signs.
    set_control("SIM-A fail 0x30\n");
    is(sign(&a, a_key), RvError::DeviceError);
    assert!(matches!(
        pkcs11.open_ro_session(a_slot),
        Err(Error::Pkcs11(RvError::DeviceError, _))
    ));
    assert!(matches!(
        pkcs11.get_token_info(a_slot),
        Err(Error::Pkcs11(RvError::DeviceError, _))
    ));
    assert_eq!(sign(&b, b_key).unwrap().len(), 64);

    // A comes back: the same session works again (SoftHSM2 never really lost it).
    set_control("");
    assert_eq!(sign(&a, a_key).unwrap().len(), 64);

    // A hangs: a signer thread blocks, B keeps signing, healing A releases the thread.
    set_control("SIM-A hang\n");
    let (tx, rx) = mpsc::channel();
    let hung = thread::spawn(move || {
        let r = a.sign(&Mechanism::Ecdsa, a_key, &[7u8; 32]);
        tx.send(r.map(|s| s.len())).unwrap();
        a
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "SIM-A did not hang"
    );
    assert_eq!(sign(&b, b_key).unwrap().len(), 64);
    set_control("");
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(2)).unwrap().unwrap(),
        64
    );
    let a = hung.join().unwrap();

    // Delay applies once per signature (cryptoki's extra length query is not delayed).
    set_control("SIM-B delay 300000\n");
    let start = Instant::now();
    assert_eq!(sign(&b, b_key).unwrap().len(), 64);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(550),
        "{took:?}"
    );
    let start = Instant::now();
    assert_eq!(sign(&a, a_key).unwrap().len(), 64);
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );

    // fail-sign: session calls work, signing reports the code.
    set_control("* fail-sign CKR_DEVICE_REMOVED\nSIM-B ok\n");
    assert!(a.get_session_info().is_ok());
    is(sign(&a, a_key), RvError::DeviceRemoved);
    assert_eq!(sign(&b, b_key).unwrap().len(), 64);

    set_control("");
    drop((a, b));
    pkcs11.finalize().unwrap();
}

fn login(pkcs11: &Pkcs11, label: &str) -> (Slot, Session, ObjectHandle) {
    let slot = pkcs11
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| pkcs11.get_token_info(*s).unwrap().label() == label)
        .unwrap();
    let session = pkcs11.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::from(PIN.to_string())))
        .unwrap();
    let key = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(b"k".to_vec()),
        ])
        .unwrap()[0];
    (slot, session, key)
}

/// Rough cost of the module on the hot path: ECDSA P-256 signatures per second on one thread,
/// directly on SoftHSM2 and through hsm-sim (no control file / healthy control file).
/// `cargo test -p hsm-sim --release --test faults -- --ignored --nocapture measure_overhead`
#[test]
#[ignore = "a measurement, not a check"]
fn measure_overhead() {
    let store = Store::new();
    store.set_control("SOME-OTHER-TOKEN fail 0x30\n");
    for (name, module, control) in [
        ("softhsm2 direct", PathBuf::from(SOFTHSM), true),
        ("hsm-sim, no HSMSIM_CONTROL", sim_module(), false),
        ("hsm-sim, control file", sim_module(), true),
        ("softhsm2 direct", PathBuf::from(SOFTHSM), true),
        ("hsm-sim, control file", sim_module(), true),
    ] {
        let mut cmd = store.command(std::env::current_exe().unwrap());
        cmd.args(["--exact", "sign_rate_child", "--ignored", "--nocapture"])
            .env("HSMSIM_TEST_RATE", &module);
        if !control {
            cmd.env_remove("HSMSIM_CONTROL");
        }
        let f = finish(cmd.spawn().unwrap(), Duration::from_secs(60));
        assert!(f.status.success(), "{}", f.text);
        let rate = f
            .text
            .lines()
            .find_map(|l| l.strip_prefix("RATE "))
            .unwrap();
        println!("{name:28} {rate} signatures/s");
    }
}

#[test]
#[ignore = "runs inside measure_overhead, in a child process"]
fn sign_rate_child() {
    let Some(module) = std::env::var_os("HSMSIM_TEST_RATE") else {
        return;
    };
    let pkcs11 = Pkcs11::new(Path::new(&module)).unwrap();
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let (_, session, key) = login(&pkcs11, "SIM-A");
    let digest = [7u8; 32];
    let run = |d: Duration| {
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < d {
            session.sign(&Mechanism::Ecdsa, key, &digest).unwrap();
            n += 1;
        }
        f64::from(n) / start.elapsed().as_secs_f64()
    };
    run(Duration::from_millis(300)); // warm up
    println!("RATE {:.0}", run(Duration::from_secs(3)));
}
