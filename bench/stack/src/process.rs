//! One child process of a stack: spawned, waited for until its `READY` line, signalled, and
//! killed when dropped.
//!
//! Every long-running hsmgate binary (`signer`, `hsmgate-ocsp serve`, `ca-frontend serve`)
//! prints one line `READY key=ADDR key=ADDR…` on stdout once it listens, with the addresses it
//! actually bound: configs say port 0 and tests run in parallel. [`Process::spawn_ready`] waits
//! for that line; stdout is drained afterwards so the child never blocks on a full pipe.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::Error;

/// How long a process may take to print READY unless the caller says otherwise.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a process's stderr (its log) goes.
#[derive(Clone, Debug)]
pub enum Log {
    /// Kept in memory, for [`Process::logs`] and assertions on log lines.
    Capture,
    /// Written to this file.
    File(PathBuf),
    /// Discarded.
    Null,
    /// This process's own stderr.
    Inherit,
}

/// The `READY` line a process printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    /// The whole line, `READY` included.
    pub line: String,
}

impl Ready {
    /// The value of `name=VALUE` in the line.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.line
            .split_whitespace()
            .skip(1)
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    }

    /// The address of `name=ADDR` in the line, if it is one (`metrics=none` is not).
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.field(name)?.parse().ok()
    }
}

/// A running child process; killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Option<Child>,
    pid: u32,
    log: LogSink,
    ready: Option<Ready>,
}

#[derive(Debug)]
enum LogSink {
    Captured {
        text: Arc<Mutex<String>>,
        /// Closed by the reader thread at end of file, so a failure report has the whole log.
        done: mpsc::Receiver<()>,
    },
    File(PathBuf),
    None,
}

impl Process {
    /// Spawns `command` (stdin closed, stdout discarded, stderr to `log`) without waiting.
    pub fn spawn(name: &str, mut command: Command, log: Log) -> Result<Self, Error> {
        command.stdin(Stdio::null()).stdout(Stdio::null());
        Self::start(name, command, log)
    }

    /// Spawns `command` and waits up to `timeout` for its `READY` line. An error if it exits or
    /// stays silent first (it is killed then); the error carries its exit code and log.
    pub fn spawn_ready(
        name: &str,
        command: Command,
        log: Log,
        timeout: Duration,
    ) -> Result<Self, Error> {
        Self::spawn_ready_tee(name, command, log, None, timeout)
    }

    /// [`Self::spawn_ready`], every stdout line also written to `stdout_copy` (the dev stack's
    /// `target/dev/<service>.out`, where scripts look for the READY line).
    pub fn spawn_ready_tee(
        name: &str,
        mut command: Command,
        log: Log,
        stdout_copy: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        command.stdin(Stdio::null());
        Self::wait_ready(name, command, log, stdout_copy, timeout)
    }

    /// [`Self::spawn_ready`] with stdin as `command` has it: a pipe the caller holds can tie
    /// the child's life to the caller's (a test's static infrastructure, never dropped).
    pub fn spawn_ready_keeping_stdin(
        name: &str,
        command: Command,
        log: Log,
        timeout: Duration,
    ) -> Result<Self, Error> {
        Self::wait_ready(name, command, log, None, timeout)
    }

    fn wait_ready(
        name: &str,
        mut command: Command,
        log: Log,
        stdout_copy: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let mut copy = match stdout_copy {
            Some(path) => Some(File::create(path).map_err(|e| Error::io("creating", path, e))?),
            None => None,
        };
        command.stdout(Stdio::piped());
        let mut process = Self::start(name, command, log)?;
        let stdout = process.child.as_mut().and_then(|c| c.stdout.take());
        let (tx, rx) = mpsc::channel();
        if let Some(stdout) = stdout {
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(file) = copy.as_mut() {
                        let _ = writeln!(file, "{line}");
                    }
                    if line.starts_with("READY")
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(line);
                    }
                }
            });
        }
        match rx.recv_timeout(timeout) {
            Ok(line) => {
                process.ready = Some(Ready { line });
                Ok(process)
            }
            Err(waited) => {
                let reason = match waited {
                    mpsc::RecvTimeoutError::Timeout => {
                        format!("no READY line within {} s", timeout.as_secs())
                    }
                    mpsc::RecvTimeoutError::Disconnected => "exited before READY".to_owned(),
                };
                // Exited by itself (then its code) or never became ready (killed: no code).
                let exit = process.kill().and_then(|s| s.code());
                Err(Error::NotReady {
                    name: name.to_owned(),
                    exit,
                    reason,
                    log: process.logs(),
                })
            }
        }
    }

    /// Spawns `command` with the stdout and stderr it was given (stdin closed), without
    /// waiting; no log is kept here.
    pub fn spawn_as_configured(name: &str, mut command: Command) -> Result<Self, Error> {
        command.stdin(Stdio::null());
        let program = PathBuf::from(command.get_program());
        let child = command
            .spawn()
            .map_err(|source| Error::Spawn { program, source })?;
        Ok(Self {
            name: name.to_owned(),
            pid: child.id(),
            child: Some(child),
            log: LogSink::None,
            ready: None,
        })
    }

    fn start(name: &str, mut command: Command, log: Log) -> Result<Self, Error> {
        let program = PathBuf::from(command.get_program());
        let sink_file = match &log {
            Log::Capture => {
                command.stderr(Stdio::piped());
                None
            }
            Log::File(path) => {
                let file = File::create(path).map_err(|e| Error::io("creating", path, e))?;
                command.stderr(file);
                Some(path.clone())
            }
            Log::Null => {
                command.stderr(Stdio::null());
                None
            }
            Log::Inherit => {
                command.stderr(Stdio::inherit());
                None
            }
        };
        let mut child = command
            .spawn()
            .map_err(|source| Error::Spawn { program, source })?;
        let log = match (log, sink_file) {
            (Log::Capture, _) => {
                let text = Arc::new(Mutex::new(String::new()));
                let (done_tx, done) = mpsc::channel();
                if let Some(pipe) = child.stderr.take() {
                    let sink = text.clone();
                    std::thread::spawn(move || {
                        let mut reader = BufReader::new(pipe);
                        let mut line = Vec::new();
                        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                            let mut text = sink.lock().unwrap_or_else(|p| p.into_inner());
                            text.push_str(&String::from_utf8_lossy(&line));
                            if !line.ends_with(b"\n") {
                                text.push('\n');
                            }
                            line.clear();
                        }
                        drop(done_tx);
                    });
                }
                LogSink::Captured { text, done }
            }
            (_, Some(path)) => LogSink::File(path),
            _ => LogSink::None,
        };
        Ok(Self {
            name: name.to_owned(),
            pid: child.id(),
            child: Some(child),
            log,
            ready: None,
        })
    }

    /// What the process was started as, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its READY line ([`Self::spawn_ready`] only).
    pub fn ready(&self) -> Option<&Ready> {
        self.ready.as_ref()
    }

    /// The address `field=ADDR` of its READY line.
    pub fn ready_addr(&self, field: &str) -> Result<SocketAddr, Error> {
        self.ready
            .as_ref()
            .and_then(|r| r.addr(field))
            .ok_or_else(|| Error::ReadyField {
                name: self.name.clone(),
                line: self
                    .ready
                    .as_ref()
                    .map(|r| r.line.clone())
                    .unwrap_or_default(),
                field: field.to_owned(),
            })
    }

    /// Its log so far: the captured stderr, or the log file's contents.
    pub fn logs(&self) -> String {
        match &self.log {
            LogSink::Captured { text, .. } => {
                text.lock().unwrap_or_else(|p| p.into_inner()).clone()
            }
            LogSink::File(path) => std::fs::read_to_string(path).unwrap_or_default(),
            LogSink::None => String::new(),
        }
    }

    /// The log file, for [`Log::File`].
    pub fn log_path(&self) -> Option<&Path> {
        match &self.log {
            LogSink::File(path) => Some(path),
            _ => None,
        }
    }

    /// Sends `signal` (`TERM`, `KILL`, `STOP`, `CONT`, `HUP`, …). Through the `kill` utility:
    /// std has no signal API, and the kit stays free of unsafe code.
    pub fn signal(&self, signal: &str) -> Result<(), Error> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|source| Error::Spawn {
                program: "kill".into(),
                source,
            })?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Step {
                step: format!("kill -{signal} {}", self.pid),
                detail: status.to_string(),
            })
        }
    }

    /// Its exit status if it has exited (reaped then).
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// Waits up to `timeout` for it to exit; its status, `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return None,
            }
        }
    }

    /// Whether it is still running (not exited, not stopped by [`Self::kill`] or
    /// [`Self::stop`]).
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_exited().is_none()
    }

    /// SIGKILL and reap; its exit status (`None` if it had already been reaped). Waits for the
    /// captured log to reach its end, so that it is complete.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let status = self.child.take().and_then(|mut child| {
            let _ = child.kill();
            child.wait().ok()
        });
        if let LogSink::Captured { done, .. } = &self.log {
            let _ = done.recv_timeout(Duration::from_secs(1));
        }
        status
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`; says how it ended.
    pub fn stop(&mut self, grace: Duration) -> String {
        if self.child.is_none() {
            return "not running".to_owned();
        }
        let _ = self.signal("TERM");
        match self.wait_exit(grace) {
            Some(status) => status.to_string(),
            None => {
                self.kill();
                format!("did not exit {} s after SIGTERM: killed", grace.as_secs())
            }
        }
    }

    /// Gives up ownership of the child: it is no longer killed on drop.
    pub fn into_child(mut self) -> Option<Child> {
        self.child.take()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
