//! The raw PKCS#11 load: what the HSMs can do with no gateway in between.
//!
//! In this process, through `cryptoki`, on the configuration's HSMs that hold the key: each
//! module is loaded once per (module, environment) — as the gateway does — and initialised
//! with `OS_LOCKING_OK`; each token is found by its label (never by slot id) and logged in
//! through one *anchor* session kept open for the whole run (closing a token's last session
//! logs the application out). Then N threads (`raw-<i>`) each open their own session on one of
//! the HSMs, spread round-robin, and call `Session::sign` — `C_SignInit` + `C_Sign`, the very
//! call the gateway's workers make — in a loop for the phase's duration. Each signature is
//! timed. Sessions stay open between phases, so rounds alternate without reconnecting.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use hsm_config::{Config, KeyAlgorithm};

use crate::measure::{PhaseResult, Tally};
use crate::procstat::CpuProbe;
use crate::window::Window;
use crate::workload::{InputPool, Workload, mechanism};

/// After a failed `C_Sign`, a thread waits this long so that a dead HSM is not hammered.
const ERROR_PAUSE: Duration = Duration::from_millis(1);

/// Open sessions on the key's HSMs, ready to run phases.
#[derive(Debug)]
pub struct RawBench {
    // Declared before `anchors` so that they close first: the anchors keep the tokens logged
    // in until the end.
    workers: Vec<Worker>,
    _anchors: Vec<Session>,
    algorithm: KeyAlgorithm,
    inputs: InputPool,
    /// "name (token label, module)" of each HSM used.
    pub hsms: Vec<String>,
    /// Each module loaded: path, and what `C_GetInfo` says (manufacturer, library, version).
    pub modules: Vec<String>,
}

#[derive(Debug)]
struct Worker {
    session: Session,
    key: ObjectHandle,
}

/// A PKCS#11 module and the environment it is loaded with.
type ModuleId = (PathBuf, BTreeMap<String, String>);

/// One HSM's token, logged in, with the key's handle.
struct Token {
    pkcs11: Pkcs11,
    slot: Slot,
    key: ObjectHandle,
}

impl RawBench {
    /// Logs in to every HSM of the configuration that holds the key and opens `threads`
    /// sessions spread over them.
    ///
    /// Call it before the process starts other threads (see `load_module`).
    pub fn open(config: &Config, workload: &Workload, threads: usize) -> Result<Self> {
        // One context per (module, environment), as in the gateway.
        let mut contexts: Vec<(ModuleId, Pkcs11)> = Vec::new();
        let mut tokens = Vec::new();
        let mut anchors = Vec::new();
        let mut hsms = Vec::new();
        let mut modules = Vec::new();
        for name in &workload.hsms {
            let (_, hsm) = config
                .hsm(name)
                .ok_or_else(|| anyhow!("key `{}` names unknown HSM `{name}`", workload.key))?;
            let module = hsm.module_path(&config.base_dir);
            let id = (module.clone(), hsm.module_env.clone());
            let pkcs11 = match contexts.iter().find(|(k, _)| *k == id) {
                Some((_, p)) => p.clone(),
                None => {
                    let p = load_module(&module, &hsm.module_env)
                        .with_context(|| format!("HSM {name}"))?;
                    modules.push(match p.get_library_info() {
                        Ok(info) => format!(
                            "{}: {} {} {} (Cryptoki {})",
                            module.display(),
                            info.manufacturer_id().trim_end(),
                            info.library_description().trim_end(),
                            info.library_version(),
                            info.cryptoki_version()
                        ),
                        Err(e) => format!("{}: C_GetInfo failed: {e}", module.display()),
                    });
                    contexts.push((id, p.clone()));
                    p
                }
            };
            let slot =
                find_slot(&pkcs11, &hsm.token_label).with_context(|| format!("HSM {name}"))?;
            let anchor = pkcs11
                .open_ro_session(slot)
                .map_err(|e| anyhow!("HSM {name}: C_OpenSession: {e}"))?;
            let pin = hsm
                .pin
                .read(&hsm.name, &config.base_dir)
                .with_context(|| format!("HSM {name}"))?;
            let auth = AuthPin::from(pin.expose().to_owned());
            match anchor.login(UserType::User, Some(&auth)) {
                Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                Err(e) => bail!("HSM {name}: C_Login: {e}"),
            }
            let found = anchor
                .find_objects(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::Label(workload.label.as_bytes().to_vec()),
                ])
                .map_err(|e| anyhow!("HSM {name}: C_FindObjects: {e}"))?;
            let key = match found.as_slice() {
                [one] => *one,
                [] => bail!(
                    "HSM {name}: no private key labelled `{}` in token `{}`",
                    workload.label,
                    hsm.token_label
                ),
                more => bail!(
                    "HSM {name}: {} private keys labelled `{}`",
                    more.len(),
                    workload.label
                ),
            };
            hsms.push(format!(
                "{name} (token {}, {})",
                hsm.token_label,
                module.display()
            ));
            tokens.push(Token { pkcs11, slot, key });
            anchors.push(anchor);
        }
        if tokens.is_empty() {
            bail!("key `{}` is in no HSM", workload.key);
        }
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let token = &tokens[i % tokens.len()];
            let session = token
                .pkcs11
                .open_ro_session(token.slot)
                .map_err(|e| anyhow!("{}: C_OpenSession: {e}", hsms[i % tokens.len()]))?;
            workers.push(Worker {
                session,
                key: token.key,
            });
        }
        Ok(Self {
            workers,
            _anchors: anchors,
            algorithm: workload.algorithm,
            inputs: workload.raw_inputs.clone(),
            hsms,
            modules,
        })
    }

    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Every thread signs in a loop until the window ends.
    pub fn run_phase(&mut self, window: Window, probe: &CpuProbe) -> Result<PhaseResult> {
        let n = self.workers.len();
        self.run_phase_with(n, window, probe)
    }

    /// The first `threads` threads (sessions) sign in a loop until the window ends; the others
    /// idle (`--sweep` steps the concurrency over sessions opened once).
    pub fn run_phase_with(
        &mut self,
        threads: usize,
        window: Window,
        probe: &CpuProbe,
    ) -> Result<PhaseResult> {
        let algorithm = self.algorithm;
        let inputs = &self.inputs;
        let threads = threads.clamp(1, self.workers.len().max(1));
        let stride = 4096 / threads;
        // Threads wait at this gate after their last call until the CPU probe has taken its
        // closing snapshot (a thread that has exited no longer shows its CPU time). The gate
        // opens when `closed` is dropped, also on an early return.
        let gate = std::sync::RwLock::new(());
        let gate = &gate;
        let (tally, cpu) = std::thread::scope(|scope| -> Result<_> {
            let closed = gate.write();
            let mut handles = Vec::with_capacity(self.workers.len());
            for (i, worker) in self.workers.iter_mut().take(threads).enumerate() {
                let handle = std::thread::Builder::new()
                    .name(format!("raw-{i}"))
                    .spawn_scoped(scope, move || {
                        // Mechanism is neither Send nor Sync (raw pointers): one per thread.
                        let tally = worker.run(&mechanism(algorithm), inputs, i * stride, window);
                        drop(gate.read());
                        tally
                    })
                    .context("cannot start a raw PKCS#11 thread")?;
                handles.push(handle);
            }
            let cpu = probe.measure(&window);
            drop(closed);
            let mut tally = Tally::default();
            for h in handles {
                let t = h
                    .join()
                    .map_err(|_| anyhow!("a raw PKCS#11 thread panicked"))?;
                tally.merge(t);
            }
            Ok((tally, cpu))
        })?;
        Ok(PhaseResult {
            tally,
            seconds: window.seconds(),
            cpu,
        })
    }
}

impl Worker {
    fn run(&mut self, mechanism: &Mechanism, inputs: &InputPool, first: usize, w: Window) -> Tally {
        let mut tally = Tally::for_window(&w);
        let mut i = first;
        loop {
            let started = Instant::now();
            if started >= w.end {
                break;
            }
            let result = self.session.sign(mechanism, self.key, inputs.get(i));
            i = i.wrapping_add(1);
            let done = Instant::now();
            match result {
                Ok(_) if w.counts(done) => tally.success(1, started, done),
                Ok(_) => {}
                Err(e) => {
                    if w.counts(done) {
                        tally.error_at(done, error_code(&e), || e.to_string());
                    }
                    std::thread::sleep(ERROR_PAUSE);
                }
            }
        }
        tally
    }
}

fn error_code(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, _) => format!("{rv:?}"),
        other => format!("{other}"),
    }
}

/// Loads and initialises a module with `OS_LOCKING_OK` (without it SoftHSM2 does no locking
/// and concurrent sessions corrupt its heap), setting the HSM's `module_env` while it loads.
/// A module already initialised in this process is used as is.
fn load_module(path: &std::path::Path, env: &BTreeMap<String, String>) -> Result<Pkcs11> {
    let saved: Vec<(String, Option<std::ffi::OsString>)> = env
        .keys()
        .map(|k| (k.clone(), std::env::var_os(k)))
        .collect();
    for (name, value) in env {
        // SAFETY: set_var races only with another thread reading the environment. hsm-bench
        // loads modules before it starts any other thread (no async runtime, no gateway
        // reader yet), and the module reads these variables while it is being loaded here.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var(name, value)
        };
    }
    let loaded = Pkcs11::new(path)
        .map_err(|e| anyhow!("cannot load PKCS#11 module {}: {e}", path.display()))
        .and_then(
            |p| match p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
                Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(p),
                Err(e) => {
                    let hint = if path.to_string_lossy().contains("softhsm") {
                        " (SoftHSM2 fails here when SOFTHSM2_CONF names a missing or bad file)"
                    } else {
                        ""
                    };
                    Err(anyhow!("C_Initialize of {}: {e}{hint}", path.display()))
                }
            },
        );
    // Put the environment back: the gateway spawned later must not inherit one HSM's settings.
    for (name, value) in saved {
        // SAFETY: as above, still single-threaded.
        #[allow(unsafe_code)]
        unsafe {
            match value {
                Some(v) => std::env::set_var(&name, v),
                None => std::env::remove_var(&name),
            }
        };
    }
    loaded
}

/// The slot whose token carries `label` (slot ids change when tokens are created or
/// reconnected: tokens are known by label).
fn find_slot(pkcs11: &Pkcs11, label: &str) -> Result<Slot> {
    let slots = pkcs11
        .get_slots_with_token()
        .map_err(|e| anyhow!("C_GetSlotList: {e}"))?;
    let mut seen = Vec::new();
    for slot in slots {
        if let Ok(info) = pkcs11.get_token_info(slot) {
            let found = info.label().trim_end();
            if found == label {
                return Ok(slot);
            }
            seen.push(format!("`{found}`"));
        }
    }
    bail!(
        "no token labelled `{label}` (tokens: {}); is SOFTHSM2_CONF set as for the gateway?",
        if seen.is_empty() {
            "none".to_owned()
        } else {
            seen.join(", ")
        }
    )
}
