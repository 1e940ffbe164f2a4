//! The control file: which token misbehaves, and how.
//!
//! Parsing is pure ([`ControlState::parse`]) so it can be unit-tested and reused by the bench;
//! [`Control`] adds the cheap "has the file changed?" watcher used on the module's hot path.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use cryptoki_sys::{
    CK_RV, CKR_CRYPTOKI_NOT_INITIALIZED, CKR_DEVICE_ERROR, CKR_DEVICE_MEMORY, CKR_DEVICE_REMOVED,
    CKR_FUNCTION_FAILED, CKR_GENERAL_ERROR, CKR_SESSION_CLOSED, CKR_SESSION_HANDLE_INVALID,
    CKR_SLOT_ID_INVALID, CKR_TOKEN_NOT_PRESENT, CKR_USER_NOT_LOGGED_IN,
};
use parking_lot::{Mutex, RwLock};

use crate::model::Model;

/// How often, at most, the control file is stat()ed. Signing runs at ~30k/s: a stat per call
/// would cost more than the forwarding itself, and tests only need changes seen "soon".
pub const RECHECK_INTERVAL: Duration = Duration::from_millis(20);

/// How often a call blocked by `hang` looks at the control state again.
pub const HANG_POLL: Duration = Duration::from_millis(10);

/// The fault configured for one token (or for `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// No line, or an explicit `ok` line (which overrides a `*` line for that token).
    #[default]
    Healthy,
    /// Every intercepted call on the token fails with this code, including C_OpenSession and
    /// C_GetTokenInfo on its slot, so a reconnecting gateway still sees a dead HSM.
    Fail(CK_RV),
    /// Only C_SignInit/C_Sign/C_SignUpdate/C_SignFinal fail with this code.
    FailSign(CK_RV),
    /// Every intercepted call blocks until the line changes (like a SIGSTOPped HSM server).
    Hang,
    /// This many microseconds are added to each C_Sign/C_SignFinal that produces a signature.
    DelayMicros(u64),
}

/// What an intercepted call is, as far as faults care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Any intercepted call that is not part of signing.
    Other,
    /// C_SignInit, C_SignUpdate, or a C_Sign/C_SignFinal length query (NULL output buffer).
    Sign,
    /// C_Sign/C_SignFinal with an output buffer: the call that does the private-key operation.
    SignOutput,
}

/// What the module does with one call, given the fault and the kind of call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Proceed,
    Fail(CK_RV),
    Hang,
    SleepThenProceed(Duration),
}

impl Fault {
    pub fn action(self, op: Op) -> Action {
        match self {
            Fault::Healthy => Action::Proceed,
            Fault::Fail(rv) => Action::Fail(rv),
            Fault::Hang => Action::Hang,
            Fault::FailSign(rv) => match op {
                Op::Sign | Op::SignOutput => Action::Fail(rv),
                Op::Other => Action::Proceed,
            },
            // Only the call that really signs: a length query does no private-key work, and the
            // gateway issues one C_Sign per signature while cryptoki's `Session::sign` issues two.
            Fault::DelayMicros(us) => match op {
                Op::SignOutput => Action::SleepThenProceed(Duration::from_micros(us)),
                Op::Sign | Op::Other => Action::Proceed,
            },
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Healthy => write!(f, "ok"),
            Fault::Fail(rv) => write!(f, "fail {rv:#x}"),
            Fault::FailSign(rv) => write!(f, "fail-sign {rv:#x}"),
            Fault::Hang => write!(f, "hang"),
            Fault::DelayMicros(us) => write!(f, "delay {us}"),
        }
    }
}

/// The parsed control file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ControlState {
    by_label: HashMap<String, Fault>,
    /// The `*` line: applies to every token that has no line of its own.
    all: Option<Fault>,
    /// `LABEL model ...` lines: kept apart from faults, so that a modelled HSM can be knocked
    /// out (`LABEL fail`) and healed while its model stays.
    models: HashMap<String, Model>,
    /// The `* model ...` line.
    model_all: Option<Model>,
}

/// What one line of the control file says.
#[derive(Debug, Clone, PartialEq)]
enum Line {
    Fault(String, Fault),
    Model(String, Model),
}

impl ControlState {
    /// Parses the control file's text. Bad lines are skipped and described in the returned
    /// warnings (one per bad line, prefixed with its line number): a typo in a test's control
    /// file must never crash the process that loaded the module.
    pub fn parse(text: &str) -> (ControlState, Vec<String>) {
        let mut state = ControlState::default();
        let mut warnings = Vec::new();
        for (idx, raw) in text.lines().enumerate() {
            let lineno = idx + 1;
            match parse_line(raw) {
                Ok(None) => {}
                Ok(Some(line)) => {
                    let (label, replaced) = match line {
                        Line::Fault(label, fault) if label == "*" => {
                            (label, state.all.replace(fault).is_some())
                        }
                        Line::Fault(label, fault) => {
                            let r = state.by_label.insert(label.clone(), fault).is_some();
                            (label, r)
                        }
                        Line::Model(label, model) if label == "*" => {
                            (label, state.model_all.replace(model).is_some())
                        }
                        Line::Model(label, model) => {
                            let r = state.models.insert(label.clone(), model).is_some();
                            (label, r)
                        }
                    };
                    if replaced {
                        warnings.push(format!(
                            "line {lineno}: second line for {label:?}, the last one wins"
                        ));
                    }
                }
                Err(why) => warnings.push(format!("line {lineno}: {why}, line ignored: {raw:?}")),
            }
        }
        (state, warnings)
    }

    /// The fault for a token label: its own line, else the `*` line, else healthy.
    #[inline]
    pub fn fault_for(&self, label: &str) -> Fault {
        if self.by_label.is_empty() {
            // The common case in benchmarks (no file, or only `*`): no hashing at all.
            return self.all.unwrap_or_default();
        }
        match self.by_label.get(label) {
            Some(f) => *f,
            None => self.all.unwrap_or_default(),
        }
    }

    /// The timing model of a token: its own `model` line, else the `* model` line, else none
    /// (plain forwarding at the real module's speed).
    #[inline]
    pub fn model_for(&self, label: &str) -> Option<Model> {
        if self.models.is_empty() {
            return self.model_all;
        }
        self.models.get(label).copied().or(self.model_all)
    }

    /// Every model line, by label (`*` for the default), sorted: for reports.
    pub fn models(&self) -> Vec<(String, Model)> {
        let mut v: Vec<(String, Model)> =
            self.models.iter().map(|(l, m)| (l.clone(), *m)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(m) = self.model_all {
            v.push(("*".to_string(), m));
        }
        v
    }

    pub fn is_empty(&self) -> bool {
        self.by_label.is_empty()
            && self.all.is_none()
            && self.models.is_empty()
            && self.model_all.is_none()
    }
}

impl fmt::Display for ControlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(f, "all healthy");
        }
        let mut labels: Vec<_> = self.by_label.iter().collect();
        labels.sort_by(|a, b| a.0.cmp(b.0));
        let mut first = true;
        for (label, fault) in labels {
            if !first {
                write!(f, "; ")?;
            }
            first = false;
            write!(f, "{label}: {fault}")?;
        }
        if let Some(all) = self.all {
            if !first {
                write!(f, "; ")?;
            }
            write!(f, "*: {all}")?;
            first = false;
        }
        for (label, model) in self.models() {
            if !first {
                write!(f, "; ")?;
            }
            first = false;
            write!(f, "{label}: {model}")?;
        }
        Ok(())
    }
}

/// One line: `Ok(None)` for blank/comment lines, `Err` with a reason for bad ones.
fn parse_line(raw: &str) -> Result<Option<Line>, String> {
    // `#` starts a comment anywhere on the line (labels containing `#` are not supported).
    let line = raw.split('#').next().unwrap_or("").trim();
    if line.is_empty() {
        return Ok(None);
    }
    // Token labels may contain blanks ("My HSM"): allow `"My HSM" fail 0x30`.
    let (label, rest) = if let Some(quoted) = line.strip_prefix('"') {
        let end = quoted
            .find('"')
            .ok_or_else(|| "unterminated quoted label".to_string())?;
        (&quoted[..end], &quoted[end + 1..])
    } else {
        match line.split_once(char::is_whitespace) {
            Some((label, rest)) => (label, rest),
            None => (line, ""),
        }
    };
    if label.is_empty() {
        return Err("empty label".into());
    }
    if label.len() > 32 {
        return Err(format!(
            "label {label:?} is longer than a PKCS#11 token label (32 bytes)"
        ));
    }
    let mut words = rest.split_whitespace();
    let mode = words.next().ok_or_else(|| "missing mode".to_string())?;
    if mode.eq_ignore_ascii_case("model") {
        return Ok(Some(Line::Model(label.to_string(), Model::parse(words)?)));
    }
    let arg = words.next();
    if let Some(extra) = words.next() {
        return Err(format!("unexpected {extra:?} after the mode's argument"));
    }
    let no_arg = |fault: Fault| match arg {
        None => Ok(fault),
        Some(a) => Err(format!("mode {mode:?} takes no argument, got {a:?}")),
    };
    let fault = match mode.to_ascii_lowercase().as_str() {
        "ok" | "healthy" => no_arg(Fault::Healthy)?,
        "hang" => no_arg(Fault::Hang)?,
        // Without a code, `fail` means what a dead HSM (or a killed p11-kit server) returns.
        "fail" => Fault::Fail(arg.map_or(Ok(CKR_DEVICE_ERROR), parse_rv)?),
        "fail-sign" => Fault::FailSign(arg.map_or(Ok(CKR_DEVICE_ERROR), parse_rv)?),
        "delay" => {
            let a = arg.ok_or_else(|| "delay needs a number of microseconds".to_string())?;
            let us = a
                .parse::<u64>()
                .map_err(|_| format!("delay {a:?} is not a whole number of microseconds"))?;
            Fault::DelayMicros(us)
        }
        other => {
            return Err(format!(
                "unknown mode {other:?} (expected ok, fail, fail-sign, hang, delay or model)"
            ));
        }
    };
    Ok(Some(Line::Fault(label.to_string(), fault)))
}

/// A CKR code: hex (`0x30`), decimal (`48`), or one of the names a gateway cares about.
pub fn parse_rv(s: &str) -> Result<CK_RV, String> {
    const NAMES: &[(&str, CK_RV)] = &[
        ("CKR_GENERAL_ERROR", CKR_GENERAL_ERROR),
        ("CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED),
        ("CKR_SLOT_ID_INVALID", CKR_SLOT_ID_INVALID),
        ("CKR_DEVICE_ERROR", CKR_DEVICE_ERROR),
        ("CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY),
        ("CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED),
        ("CKR_SESSION_CLOSED", CKR_SESSION_CLOSED),
        ("CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID),
        ("CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT),
        ("CKR_USER_NOT_LOGGED_IN", CKR_USER_NOT_LOGGED_IN),
        ("CKR_CRYPTOKI_NOT_INITIALIZED", CKR_CRYPTOKI_NOT_INITIALIZED),
    ];
    let parsed = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        CK_RV::from_str_radix(hex, 16).ok()
    } else if s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<CK_RV>().ok()
    } else {
        NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|(_, rv)| *rv)
    };
    match parsed {
        // Injecting CKR_OK would return success without doing the work (no signature written).
        Some(0) => Err("CKR_OK (0) is not a fault".into()),
        Some(rv) => Ok(rv),
        None => Err(format!(
            "{s:?} is not a CKR code (hex, decimal or a CKR_ name)"
        )),
    }
}

/// What identifies one version of the control file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    // Writers should replace the file by rename (atomic), which changes the inode even when
    // the size and the (coarse) mtime happen to be equal.
    ino: u64,
}

/// The control file, watched cheaply: the parsed state sits behind a read-mostly lock and is
/// re-validated (one stat) at most every [`RECHECK_INTERVAL`], by one thread at a time.
#[derive(Debug)]
pub struct Control {
    path: PathBuf,
    verbose: bool,
    base: Instant,
    /// Milliseconds since `base` of the last stat; a compare-exchange on it elects the one
    /// caller that stats while the others keep using the cached state.
    last_check_ms: AtomicU64,
    stamp: Mutex<Option<Stamp>>,
    state: RwLock<ControlState>,
}

impl Control {
    /// Loads the file now (a missing file means "all healthy" until it appears).
    pub fn new(path: PathBuf, verbose: bool) -> Control {
        let control = Control {
            path,
            verbose,
            base: Instant::now(),
            last_check_ms: AtomicU64::new(0),
            stamp: Mutex::new(None),
            state: RwLock::new(ControlState::default()),
        };
        control.reload_if_changed();
        control
    }

    /// The fault for a token, from the cached state (refreshed if it is older than the interval).
    #[inline]
    pub fn fault_for(&self, label: &str) -> Fault {
        self.maybe_refresh();
        self.state.read().fault_for(label)
    }

    /// The fault and the timing model of a token, under one read of the cached state.
    #[inline]
    pub fn fault_and_model(&self, label: &str) -> (Fault, Option<Model>) {
        self.maybe_refresh();
        let state = self.state.read();
        (state.fault_for(label), state.model_for(label))
    }

    #[inline]
    fn maybe_refresh(&self) {
        let now = self.now_ms();
        let last = self.last_check_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < RECHECK_INTERVAL.as_millis() as u64 {
            return;
        }
        if self
            .last_check_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // another thread is checking right now
        }
        self.reload_if_changed();
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn reload_if_changed(&self) {
        let stamp = std::fs::metadata(&self.path).ok().map(|m| Stamp {
            modified: m.modified().ok(),
            len: m.len(),
            ino: m.ino(),
        });
        let mut current = self.stamp.lock();
        if *current == stamp && stamp.is_some() {
            return;
        }
        let (state, warnings) = match &stamp {
            None => (ControlState::default(), Vec::new()),
            Some(_) => match std::fs::read_to_string(&self.path) {
                Ok(text) => ControlState::parse(&text),
                Err(e) => (
                    ControlState::default(),
                    vec![format!(
                        "cannot read it ({e}), treating every token as healthy"
                    )],
                ),
            },
        };
        for w in &warnings {
            eprintln!("hsm-sim: control file {}: {w}", self.path.display());
        }
        let mut cached = self.state.write();
        if self.verbose && *cached != state {
            eprintln!("hsm-sim: control file {}: now {state}", self.path.display());
        }
        *cached = state;
        *current = stamp;
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let text = "\
# a comment
EAST-1 fail 0x30        # every call fails

EAST-2 hang
WEST-1 delay 5000
WEST-2 fail-sign 48
\"My HSM\" fail CKR_DEVICE_REMOVED
* fail 0xE0
EAST-3 ok
";
        let (state, warnings) = ControlState::parse(text);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(state.fault_for("EAST-1"), Fault::Fail(0x30));
        assert_eq!(state.fault_for("EAST-2"), Fault::Hang);
        assert_eq!(state.fault_for("WEST-1"), Fault::DelayMicros(5000));
        assert_eq!(state.fault_for("WEST-2"), Fault::FailSign(0x30));
        assert_eq!(state.fault_for("My HSM"), Fault::Fail(CKR_DEVICE_REMOVED));
        assert_eq!(state.fault_for("EAST-3"), Fault::Healthy);
        assert_eq!(state.fault_for("ANY-OTHER"), Fault::Fail(0xE0));
    }

    #[test]
    fn absent_line_is_healthy_and_fail_defaults_to_device_error() {
        let (state, warnings) = ControlState::parse("A fail\nB fail-sign\n");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(state.fault_for("A"), Fault::Fail(CKR_DEVICE_ERROR));
        assert_eq!(state.fault_for("B"), Fault::FailSign(CKR_DEVICE_ERROR));
        assert_eq!(state.fault_for("C"), Fault::Healthy);
        let (empty, w) = ControlState::parse("");
        assert!(w.is_empty() && empty.is_empty());
        assert_eq!(empty.fault_for("A"), Fault::Healthy);
    }

    #[test]
    fn bad_lines_are_skipped_with_a_warning_and_never_panic() {
        let text = "\
A fail 0xZZ
B delay
C delay -5
D explode
E hang now
F fail 0x30 extra
\"G fail
H fail 0
I
GOOD fail 0x30
toolong-toolong-toolong-toolong-x fail
\u{0}\u{ffff} hang
J delay 99999999999999999999999
";
        let (state, warnings) = ControlState::parse(text);
        // Every line but GOOD and the odd-but-valid label on line 12 is rejected.
        assert_eq!(warnings.len(), 11, "{warnings:#?}");
        assert!(warnings[0].starts_with("line 1:"), "{}", warnings[0]);
        assert_eq!(state.fault_for("GOOD"), Fault::Fail(0x30));
        for label in ["A", "B", "C", "D", "E", "F", "H", "I", "J"] {
            assert_eq!(state.fault_for(label), Fault::Healthy, "{label}");
        }
        // Arbitrary bytes must not panic either.
        for s in [
            "#",
            "\"",
            "\"\"",
            "* ",
            " * hang",
            "x\u{1}y fail 0x",
            "a fail 0x",
            "\t\t",
        ] {
            let _ = ControlState::parse(s);
        }
    }

    #[test]
    fn model_lines_live_beside_faults() {
        let text = "\
* model units=10 rate=10000 signature=stand-in
SIM-A model units=4 mean=2ms dist=fixed
SIM-A fail 0x30
SIM-B model colour=blue
";
        let (state, warnings) = ControlState::parse(text);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("line 4:"), "{}", warnings[0]);
        let a = state.model_for("SIM-A").expect("SIM-A has a model");
        assert_eq!((a.units, a.mean), (4, Duration::from_millis(2)));
        // The fault line did not replace the model line, nor the other way round.
        assert_eq!(state.fault_for("SIM-A"), Fault::Fail(0x30));
        let b = state.model_for("SIM-B").expect("the * model");
        assert_eq!(b.signature, crate::model::SignatureMode::StandIn);
        assert_eq!(state.fault_for("SIM-B"), Fault::Healthy);
        assert_eq!(state.models().len(), 2);
        assert!(ControlState::parse("A fail").0.model_for("A").is_none());
    }

    #[test]
    fn later_line_wins_and_is_reported() {
        let (state, warnings) = ControlState::parse("A hang\nA fail 0x30\n* hang\n* ok\n");
        assert_eq!(state.fault_for("A"), Fault::Fail(0x30));
        assert_eq!(state.fault_for("B"), Fault::Healthy);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
    }

    #[test]
    fn actions_depend_on_the_call() {
        assert_eq!(Fault::FailSign(5).action(Op::Other), Action::Proceed);
        assert_eq!(Fault::FailSign(5).action(Op::Sign), Action::Fail(5));
        assert_eq!(Fault::DelayMicros(7).action(Op::Sign), Action::Proceed);
        assert_eq!(
            Fault::DelayMicros(7).action(Op::SignOutput),
            Action::SleepThenProceed(Duration::from_micros(7))
        );
        assert_eq!(Fault::Fail(0x30).action(Op::Other), Action::Fail(0x30));
        assert_eq!(Fault::Hang.action(Op::Other), Action::Hang);
    }

    #[test]
    fn watcher_sees_changes_after_the_interval() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control");
        let control = Control::new(path.clone(), false);
        assert_eq!(control.fault_for("A"), Fault::Healthy);
        write_atomically(&path, "A fail 0x30\n");
        std::thread::sleep(RECHECK_INTERVAL * 2);
        assert_eq!(control.fault_for("A"), Fault::Fail(0x30));
        write_atomically(&path, "A hang\n");
        std::thread::sleep(RECHECK_INTERVAL * 2);
        assert_eq!(control.fault_for("A"), Fault::Hang);
        std::fs::remove_file(&path).expect("remove");
        std::thread::sleep(RECHECK_INTERVAL * 2);
        assert_eq!(control.fault_for("A"), Fault::Healthy);
    }

    fn write_atomically(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, path).expect("rename");
    }
}
