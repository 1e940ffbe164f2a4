//! One HSM as the gateway runs it: a pool of logged-in sessions, each owned by a worker thread,
//! fed by one queue, watched by a supervisor thread.
//!
//! ```text
//!  dispatcher ──submit(Job)──▶ queue ──▶ worker 1 (Session 1) ──C_Sign──▶ HSM
//!                                    └─▶ worker N (Session N) ──C_Sign──┘
//!  supervisor: watchdog on every worker's current call; reconnects the HSM when it is out
//! ```
//!
//! An HSM is either *in rotation* (`live` holds its queue, key handles and sessions) or *out*
//! (`live` is `None`). Every transition out bumps the generation: the queue is closed, queued
//! and in-progress jobs are answered "retry elsewhere", and workers of the old generation exit
//! as soon as their current call returns (a hung `C_Sign` may never return; its thread is
//! abandoned, its caller has long been answered). The supervisor then reconnects from scratch —
//! new context if the module is this HSM's alone, fresh sessions, login, key handles looked up
//! again — so an HSM that reboots rejoins without a gateway restart (unlike boulder#3468).

mod connect;
mod fault;
mod supervisor;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use cryptoki::context::Pkcs11;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use tokio::sync::oneshot;

use crate::algorithm::Operation;
use crate::error::Error;
use crate::metrics::HsmMetrics;

pub use fault::{Fault, classify};

/// A chunk of signatures with one key and one operation, and where to send the answer.
#[derive(Debug)]
pub struct Job {
    pub key: Arc<str>,
    pub operation: Operation,
    pub items: Arc<Vec<Vec<u8>>>,
    pub deadline: Instant,
    pub reply: oneshot::Sender<JobResult>,
}

pub type JobResult = Result<Vec<Vec<u8>>, JobFailure>;

/// Why a job was not done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobFailure {
    /// This HSM could not do it (device fault, hang, left rotation): try another.
    Retry(String),
    /// This HSM failed without saying why (`CKR_GENERAL_ERROR`, ...): try another, but if
    /// every HSM fails this way the request itself is suspect.
    Transient(String),
    /// The HSM refused item `index` (e.g. `CKR_MECHANISM_INVALID`, `CKR_KEY_FUNCTION_NOT_PERMITTED`).
    /// The gateway checked the request before, so this says more about the HSM or its key than
    /// about the caller: another HSM is tried, and the caller hears of it only if all refuse.
    Refused { index: usize, code: String },
    /// The deadline passed while the job waited.
    Expired,
}

/// Why `submit` did not take a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    OutOfRotation,
    KeyNotHere,
}

/// Settings an HSM reads on every job; replaced as a whole on reload.
#[derive(Clone, Debug)]
pub struct HsmSettings {
    pub call_timeout: Duration,
    pub probe_interval: Duration,
}

/// The public keys of every configured key, as first read from an HSM, so that every other
/// HSM's clone can be checked against it: signing with a key that is not a clone would produce
/// signatures nobody can verify.
#[derive(Debug, Default)]
pub struct KeyReference {
    spki: Mutex<HashMap<String, Arc<OnceLock<Vec<u8>>>>>,
}

impl KeyReference {
    pub fn slot(&self, key: &str) -> Arc<OnceLock<Vec<u8>>> {
        let mut map = self.spki.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key.to_owned()).or_default().clone()
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let map = self.spki.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).and_then(|s| s.get().cloned())
    }

    /// Forgets keys that are no longer configured (after a reload).
    pub fn retain(&self, ids: &std::collections::HashSet<String>) {
        let mut map = self.spki.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|id, _| ids.contains(id));
    }
}

/// A key this HSM is configured to hold.
#[derive(Clone, Debug)]
pub struct WantedKey {
    pub name: Arc<str>,
    pub label: String,
    pub algorithm: hsm_config::KeyAlgorithm,
}

impl WantedKey {
    /// Under which id its public key is remembered: a key's name, label and algorithm
    /// together, so two names for one label, or a key redefined on reload, never mix.
    pub fn reference_id(&self) -> String {
        reference_id(&self.name, &self.label, self.algorithm)
    }
}

pub fn reference_id(name: &str, label: &str, algorithm: hsm_config::KeyAlgorithm) -> String {
    format!("{name}|{label}|{}", algorithm.as_str())
}

/// What a worker shares with the watchdog: when its current call started, and the reply of
/// the job it is working on, which the watchdog answers if the call hangs.
#[derive(Debug, Default)]
pub(crate) struct WorkerSlot {
    /// Milliseconds since the HSM's epoch at which the current PKCS#11 call started; 0 = idle.
    busy_since_ms: AtomicU64,
    reply: Mutex<Option<oneshot::Sender<JobResult>>>,
}

/// An HSM in rotation.
struct Live {
    generation: u64,
    tx: Sender<Job>,
    /// Kept so that queued jobs can be answered when the HSM leaves rotation.
    rx: Receiver<Job>,
    keys: Arc<HashMap<Arc<str>, ObjectHandle>>,
    workers: Vec<Arc<WorkerSlot>>,
    /// Signatures queued or being made in this generation.
    in_flight: Arc<AtomicUsize>,
    /// Keeps the token logged in: closing an application's last session logs it out.
    _anchor: Mutex<Session>,
}

/// One HSM. Shared by the dispatcher (submits), its workers and its supervisor.
#[derive(Debug)]
pub struct Hsm {
    pub name: Arc<str>,
    pub datacenter: Arc<str>,
    /// Its definition, to tell on reload whether it changed.
    pub definition: hsm_config::Hsm,
    base_dir: PathBuf,
    wanted: Vec<WantedKey>,
    /// True when no other configured HSM uses the same module and environment: then a broken
    /// context can be replaced by a new one without disturbing anybody.
    exclusive_context: bool,
    settings: RwLock<HsmSettings>,
    reference: Arc<KeyReference>,
    context: Mutex<Option<Pkcs11>>,
    live: RwLock<Option<LiveHandle>>,
    generation: AtomicU64,
    transient_in_a_row: AtomicU32,
    epoch: Instant,
    stopped: AtomicBool,
    /// Why it last left rotation or failed to rejoin, for logs and `ListKeys`.
    last_problem: Mutex<Option<String>>,
    pub(crate) metrics: HsmMetrics,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    last_slot: Mutex<Option<cryptoki::slot::Slot>>,
    /// Threads closing the sessions of departed generations.
    closing: Mutex<Vec<JoinHandle<()>>>,
}

/// `Live` behind a type that is `Sync` (a `Session` is `Send` only; the anchor sits in a mutex).
struct LiveHandle(Live);

impl std::fmt::Debug for LiveHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("generation", &self.0.generation)
            .finish()
    }
}

impl Hsm {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        datacenter: &str,
        definition: hsm_config::Hsm,
        base_dir: PathBuf,
        wanted: Vec<WantedKey>,
        exclusive_context: bool,
        settings: HsmSettings,
        reference: Arc<KeyReference>,
        metrics: HsmMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            name: definition.name.as_str().into(),
            datacenter: datacenter.into(),
            definition,
            base_dir,
            wanted,
            exclusive_context,
            settings: RwLock::new(settings),
            reference,
            context: Mutex::new(None),
            live: RwLock::new(None),
            generation: AtomicU64::new(0),
            transient_in_a_row: AtomicU32::new(0),
            epoch: Instant::now(),
            stopped: AtomicBool::new(false),
            last_problem: Mutex::new(Some(NOT_CONNECTED_YET.into())),
            metrics,
            supervisor: Mutex::new(None),
            last_slot: Mutex::new(None),
            closing: Mutex::new(Vec::new()),
        })
    }

    /// Starts the supervisor thread, which connects the HSM and keeps it connected.
    pub fn start(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let name = format!("sup-{}", self.name);
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || supervisor::supervise(weak));
        match handle {
            Ok(h) => *lock(&self.supervisor) = Some(h),
            Err(e) => tracing::error!(hsm = %self.name, "cannot start supervisor thread: {e}"),
        }
    }

    /// Takes the HSM out of service for good (reload removed it, or shutdown).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.leave_rotation(None, "stopped");
    }

    /// Waits, at most until `deadline`, for this HSM's sessions to be closed after `stop`
    /// (so that the process does not exit under a thread still inside the module).
    pub fn wait_closed(&self, deadline: Instant) {
        while Instant::now() < deadline {
            let pending = lock(&self.closing).iter().any(|h| !h.is_finished());
            if !pending {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn update_settings(&self, settings: HsmSettings) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = settings;
    }

    fn settings(&self) -> HsmSettings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn in_rotation(&self) -> bool {
        self.live.read().map(|l| l.is_some()).unwrap_or(false)
    }

    /// Signatures queued or in progress, or `None` when out of rotation.
    pub fn load(&self) -> Option<usize> {
        let live = self.live.read().ok()?;
        live.as_ref().map(|l| l.0.in_flight.load(Ordering::Relaxed))
    }

    /// The HSM's load if it is in rotation and holds this key (one lock, for the dispatcher).
    pub fn load_if_holding(&self, key: &str) -> Option<usize> {
        let live = self.live.read().ok()?;
        let live = &live.as_ref()?.0;
        live.keys
            .contains_key(key)
            .then(|| live.in_flight.load(Ordering::Relaxed))
    }

    /// Whether the HSM is in rotation and holds this key.
    pub fn can_sign(&self, key: &str) -> bool {
        match self.live.read() {
            Ok(live) => live.as_ref().is_some_and(|l| l.0.keys.contains_key(key)),
            Err(_) => false,
        }
    }

    /// Whether it is in rotation or has at least tried to connect once.
    pub fn has_tried(&self) -> bool {
        self.in_rotation() || lock(&self.last_problem).as_deref() != Some(NOT_CONNECTED_YET)
    }

    /// Queues a job. Never blocks: the queue is unbounded, admission is the dispatcher's job
    /// (it reads `load()` against `max_in_flight`).
    pub fn submit(&self, job: Job) -> Result<(), (Job, Refusal)> {
        let live = match self.live.read() {
            Ok(l) => l,
            Err(_) => return Err((job, Refusal::OutOfRotation)),
        };
        let Some(LiveHandle(live)) = live.as_ref() else {
            return Err((job, Refusal::OutOfRotation));
        };
        if !live.keys.contains_key(&job.key) {
            return Err((job, Refusal::KeyNotHere));
        }
        live.in_flight.fetch_add(job.items.len(), Ordering::Relaxed);
        // The receiver lives in `live`, so the channel cannot be disconnected here; the read
        // lock keeps `leave_rotation` from closing it between the check and the send.
        if let Err(e) = live.tx.send(job) {
            let job = e.into_inner();
            live.in_flight.fetch_sub(job.items.len(), Ordering::Relaxed);
            return Err((job, Refusal::OutOfRotation));
        }
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        // +1 so that 0 always means "idle".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Takes the HSM out of rotation if it is still in generation `generation` (`None`: any).
    /// Queued jobs and jobs being worked on are answered "retry elsewhere" at once.
    pub(crate) fn leave_rotation(&self, generation: Option<u64>, reason: &str) {
        let taken = {
            let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
            match live.as_ref() {
                Some(l) if generation.is_none_or(|g| g == l.0.generation) => {
                    self.generation.fetch_add(1, Ordering::SeqCst);
                    live.take()
                }
                _ => None,
            }
        };
        let Some(LiveHandle(live)) = taken else {
            return;
        };
        *lock(&self.last_problem) = Some(reason.to_owned());
        // A stopped HSM (removed or replaced by a reload) shares its metric series with its
        // replacement: leave them to it.
        if !self.stopped.load(Ordering::SeqCst) {
            self.metrics.set_up(false);
            self.metrics.rotation_exits.inc();
        }
        tracing::warn!(hsm = %self.name, generation = live.generation, "out of rotation: {reason}");
        let why = format!("HSM {} left rotation: {reason}", self.name);
        for slot in &live.workers {
            if let Some(reply) = lock(&slot.reply).take() {
                let _ = reply.send(Err(JobFailure::Retry(why.clone())));
            }
        }
        while let Ok(job) = live.rx.try_recv() {
            live.in_flight.fetch_sub(job.items.len(), Ordering::Relaxed);
            let _ = job.reply.send(Err(JobFailure::Retry(why.clone())));
        }
        // Dropping `live` closes the queue's sending side (idle workers wake up and exit) and
        // closes the anchor session — a PKCS#11 call that blocks forever on a hung HSM. So the
        // drop happens on a thread of its own, never on the supervisor that must keep probing.
        let dropper = std::thread::Builder::new()
            .name(format!("{}-close", self.name))
            .spawn(move || drop(live));
        match dropper {
            Ok(handle) => {
                let mut closing = lock(&self.closing);
                closing.retain(|h| !h.is_finished());
                closing.push(handle);
            }
            Err(e) => {
                tracing::error!(hsm = %self.name, "cannot start a thread to close sessions: {e}")
            }
        }
    }

    fn note_success(&self) {
        if self.transient_in_a_row.load(Ordering::Relaxed) != 0 {
            self.transient_in_a_row.store(0, Ordering::Relaxed);
        }
    }

    /// Counts an unexplained failure; several in a row take the HSM out.
    fn note_transient(&self, generation: u64, code: &str) {
        let n = self.transient_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= fault::TRANSIENT_LIMIT {
            self.leave_rotation(
                Some(generation),
                &format!("{n} unexplained failures in a row ({code})"),
            );
        }
    }

    /// Whether this HSM was built for exactly these keys.
    pub fn same_keys(&self, wanted: &[WantedKey]) -> bool {
        self.wanted.len() == wanted.len()
            && self
                .wanted
                .iter()
                .zip(wanted)
                .all(|(a, b)| a.name == b.name && a.label == b.label && a.algorithm == b.algorithm)
    }

    pub fn same_context_policy(&self, exclusive: bool) -> bool {
        self.exclusive_context == exclusive
    }

    /// Connects: module, token, login, keys, sessions, workers. Runs on a connect thread.
    fn connect(self: &Arc<Self>, fresh_context: bool) -> Result<(), Error> {
        let name = &*self.name;
        let pkcs11 = {
            let mut ctx = lock(&self.context);
            if fresh_context && self.exclusive_context {
                // The old context may be wedged (a restarted p11-kit server is not reconnected
                // by its client): drop our handle and load a new one. Old sessions still hold
                // the old context until their threads exit.
                *ctx = None;
            }
            match ctx.as_ref() {
                Some(p) => {
                    if fresh_context {
                        // A shared context cannot be finalised under the other HSMs' feet, but
                        // a module that was reset (CKR_CRYPTOKI_NOT_INITIALIZED) needs
                        // C_Initialize again; on a live module this is a no-op.
                        let module = self.definition.module_path(&self.base_dir);
                        connect::reinitialize(name, p, &module, &self.definition.module_env)?;
                    }
                    p.clone()
                }
                None => {
                    let module = self.definition.module_path(&self.base_dir);
                    let p = connect::load_module(name, &module, &self.definition.module_env)?;
                    *ctx = Some(p.clone());
                    p
                }
            }
        };
        // Try the slot this token had before: enumerating every slot calls C_GetTokenInfo on
        // each, which blocks behind another token of the same module that is hung.
        let label = &self.definition.token_label;
        let known = *lock(&self.last_slot);
        let slot = match known {
            Some(slot)
                if pkcs11
                    .get_token_info(slot)
                    .is_ok_and(|t| t.label().trim_end() == label) =>
            {
                slot
            }
            _ => connect::find_slot(name, &pkcs11, label)?,
        };
        *lock(&self.last_slot) = Some(slot);
        let pin = self.definition.pin.read(name, &self.base_dir)?;
        let anchor = pkcs11
            .open_ro_session(slot)
            .map_err(|e| connect::pkcs11_error(name, "C_OpenSession", &e))?;
        connect::login(name, &anchor, &pin)?;
        drop(pin);

        let mut keys = HashMap::new();
        for wanted in &self.wanted {
            match connect::find_key(name, &anchor, &wanted.label, wanted.algorithm) {
                Ok(found) => {
                    let reference = self.reference.slot(&wanted.reference_id());
                    let expected = reference.get_or_init(|| found.spki.clone());
                    if *expected == found.spki {
                        keys.insert(wanted.name.clone(), found.handle);
                    } else {
                        tracing::error!(
                            hsm = name, key = %wanted.name,
                            "the public key in this HSM differs from the other HSMs': not a clone; this HSM will not sign with it"
                        );
                    }
                }
                Err(e) => tracing::error!(hsm = name, key = %wanted.name, "{e}"),
            }
        }

        let sessions = self.definition.sessions as usize;
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let keys = Arc::new(keys);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let mut opened = Vec::with_capacity(sessions);
        for _ in 0..sessions {
            let session = pkcs11
                .open_ro_session(slot)
                .map_err(|e| connect::pkcs11_error(name, "C_OpenSession", &e))?;
            opened.push(session);
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let mut workers = Vec::with_capacity(sessions);
        for (i, session) in opened.into_iter().enumerate() {
            let slot_state = Arc::new(WorkerSlot::default());
            workers.push(slot_state.clone());
            let ctx = worker::WorkerContext {
                hsm: self.clone(),
                generation,
                pkcs11: pkcs11.clone(),
                slot,
                rx: rx.clone(),
                keys: keys.clone(),
                in_flight: in_flight.clone(),
                me: slot_state,
            };
            std::thread::Builder::new()
                .name(format!("{}-w{i}", self.name))
                .spawn(move || worker::run(ctx, session))?;
        }
        {
            let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
            if self.stopped.load(Ordering::SeqCst) {
                return Ok(());
            }
            *live = Some(LiveHandle(Live {
                generation,
                tx,
                rx,
                keys,
                workers,
                in_flight,
                _anchor: Mutex::new(anchor),
            }));
        }
        *lock(&self.last_problem) = None;
        self.transient_in_a_row.store(0, Ordering::Relaxed);
        self.metrics.set_up(true);
        tracing::info!(hsm = name, generation, sessions, "in rotation");
        Ok(())
    }

    /// The watchdog: a call running longer than the timeout means the HSM is hung.
    fn check_hung(&self) {
        let timeout_ms = self.settings().call_timeout.as_millis() as u64;
        let now = self.now_ms();
        let (generation, stuck) = {
            let Ok(live) = self.live.read() else { return };
            let Some(LiveHandle(live)) = live.as_ref() else {
                self.metrics.sample(0, 0);
                return;
            };
            let mut busy = 0;
            let mut stuck = false;
            for w in &live.workers {
                let since = w.busy_since_ms.load(Ordering::Relaxed);
                if since != 0 {
                    busy += 1;
                    stuck |= now.saturating_sub(since) > timeout_ms;
                }
            }
            self.metrics
                .sample(live.in_flight.load(Ordering::Relaxed), busy);
            (live.generation, stuck)
        };
        if stuck {
            self.metrics.error("CALL_TIMEOUT");
            self.leave_rotation(
                Some(generation),
                &format!("a PKCS#11 call exceeded {timeout_ms} ms (hung HSM)"),
            );
        }
    }
}

const NOT_CONNECTED_YET: &str = "not connected yet";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
