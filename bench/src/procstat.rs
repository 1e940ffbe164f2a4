//! Where the CPU went during a phase, from Linux's `/proc`: per process (hsm-bench itself, the
//! gateway it spawned) and per thread name, plus how busy the whole machine was.
//!
//! Thread names tell the parts apart: in the gateway `<hsm>-w<i>` are the HSM workers (they
//! make the PKCS#11 calls, so SoftHSM2's signing runs in them), `sup-<hsm>` the supervisors,
//! `tokio-rt-worker` the async runtime (gRPC, HTTP/2, protobuf); in hsm-bench `raw-<i>` are
//! the raw PKCS#11 threads and `tokio-rt-worker` the gRPC load generator. Threads that exit
//! inside the window take their CPU time with them: load generators keep theirs alive until
//! the closing snapshot. Figures are in
//! cores (CPU seconds per second of wall time), from the kernel's per-thread user+system
//! ticks (usually 100 per second, so ±0.02 core over a 5 s window).

use std::collections::BTreeMap;
use std::fs;
use std::time::Instant;

use serde::Serialize;

use crate::window::Window;

/// Kernel clock ticks per second (`getconf CLK_TCK`); 100 on every Linux we run on.
const TICKS_PER_SECOND: f64 = 100.0;

/// The processes to watch, by role.
#[derive(Clone, Debug, Default)]
pub struct CpuProbe {
    processes: Vec<(String, u32)>,
}

impl CpuProbe {
    /// Watches hsm-bench itself.
    pub fn new() -> Self {
        Self {
            processes: vec![("hsm-bench".to_owned(), std::process::id())],
        }
    }

    pub fn watch(&mut self, role: &str, pid: u32) {
        self.processes.push((role.to_owned(), pid));
    }

    /// Sleeps until the window starts, takes a snapshot, sleeps until it ends, takes another,
    /// and returns the difference. Blocks the calling thread: call it outside async code.
    pub fn measure(&self, window: &Window) -> Option<CpuReport> {
        if !std::path::Path::new("/proc/self/task").is_dir() {
            sleep_until(window.end);
            return None;
        }
        sleep_until(window.start);
        let before = self.snapshot();
        sleep_until(window.end);
        let after = self.snapshot();
        let seconds = window.seconds();
        let processes = self
            .processes
            .iter()
            .zip(before.processes.iter().zip(after.processes.iter()))
            .map(|((role, pid), (b, a))| ProcessCpu::diff(role, *pid, b, a, seconds))
            .collect();
        let machine_busy = match (before.machine, after.machine) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some((b1 - b0) as f64 / (t1 - t0) as f64)
            }
            _ => None,
        };
        Some(CpuReport {
            seconds,
            machine_busy,
            processes,
        })
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            machine: machine_ticks(),
            processes: self
                .processes
                .iter()
                .map(|(_, pid)| thread_ticks(*pid))
                .collect(),
        }
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

struct Snapshot {
    machine: Option<(u64, u64)>,
    /// Per process: thread id → (name, ticks); `None` if the process is gone.
    processes: Vec<Option<BTreeMap<u32, (String, u64)>>>,
}

/// CPU used in a window.
#[derive(Clone, Debug, Serialize)]
pub struct CpuReport {
    pub seconds: f64,
    /// Fraction of all CPUs' time that was not idle (0..1), from `/proc/stat`.
    pub machine_busy: Option<f64>,
    pub processes: Vec<ProcessCpu>,
}

impl CpuReport {
    pub fn process(&self, role: &str) -> Option<&ProcessCpu> {
        self.processes.iter().find(|p| p.role == role)
    }
}

/// One process's CPU in a window, in cores.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessCpu {
    pub role: String,
    pub pid: u32,
    /// False if the process could not be read at both ends of the window.
    pub seen: bool,
    pub cores: f64,
    /// Cores by thread name (threads of the same name added up).
    pub threads: BTreeMap<String, f64>,
    /// Cores of the busiest single thread, by thread name.
    pub busiest: BTreeMap<String, f64>,
}

impl ProcessCpu {
    fn diff(
        role: &str,
        pid: u32,
        before: &Option<BTreeMap<u32, (String, u64)>>,
        after: &Option<BTreeMap<u32, (String, u64)>>,
        seconds: f64,
    ) -> Self {
        let mut threads = BTreeMap::new();
        let mut busiest: BTreeMap<String, f64> = BTreeMap::new();
        let seen = before.is_some() && after.is_some();
        if let (Some(before), Some(after)) = (before, after) {
            for (tid, (name, ticks)) in after {
                // A thread born in the window counts from zero; one that died is lost (its
                // ticks went to the process's dead-children account, not to a thread).
                let start = before.get(tid).map_or(0, |(_, t)| *t);
                let cores = ticks.saturating_sub(start) as f64 / TICKS_PER_SECOND / seconds;
                *threads.entry(name.clone()).or_insert(0.0) += cores;
                let top = busiest.entry(name.clone()).or_insert(0.0);
                *top = top.max(cores);
            }
        }
        Self {
            role: role.to_owned(),
            pid,
            seen,
            cores: threads.values().sum(),
            threads,
            busiest,
        }
    }

    /// Cores of the busiest single thread among those whose name satisfies `pred`.
    pub fn busiest_thread_where(&self, pred: impl Fn(&str) -> bool) -> f64 {
        self.busiest
            .iter()
            .filter(|(name, _)| pred(name))
            .map(|(_, c)| *c)
            .fold(0.0, f64::max)
    }

    /// Cores of the threads whose name satisfies `pred`.
    pub fn cores_where(&self, pred: impl Fn(&str) -> bool) -> f64 {
        self.threads
            .iter()
            .filter(|(name, _)| pred(name))
            .map(|(_, c)| c)
            .sum()
    }
}

/// Is this a gateway HSM worker thread (`<hsm>-w<digits>`)?
pub fn is_worker(name: &str) -> bool {
    name.rsplit_once("-w").is_some_and(|(hsm, n)| {
        !hsm.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    })
}

/// (busy, total) ticks of all CPUs from the first line of `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// utime + stime of a whole process (all its threads), in clock ticks.
pub fn process_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, ticks)| ticks)
}

/// Every thread of `pid`: id → (name, user + system ticks).
fn thread_ticks(pid: u32) -> Option<BTreeMap<u32, (String, u64)>> {
    let dir = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut threads = BTreeMap::new();
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue; // exited meanwhile
        };
        if let Some(parsed) = parse_stat(&stat) {
            threads.insert(tid, parsed);
        }
    }
    Some(threads)
}

/// (comm, utime + stime) from a `/proc/<pid>/task/<tid>/stat` line. The name is between the
/// first `(` and the last `)` (it may itself contain parentheses or spaces).
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // Fields after the name start at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_with_odd_names() {
        let line = "4242 (dev-a (w)) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat(line), Some(("dev-a (w)".to_owned(), 175)));
    }

    #[test]
    fn workers_are_recognised_by_name() {
        assert!(is_worker("dev-a-w0"));
        assert!(is_worker("hsm-a1-w12"));
        assert!(!is_worker("sup-dev-a"));
        assert!(!is_worker("tokio-rt-worker"));
        assert!(!is_worker("-w1"));
    }

    #[test]
    fn own_threads_are_readable() {
        let me = thread_ticks(std::process::id()).expect("/proc is mounted");
        assert!(!me.is_empty());
        assert!(machine_ticks().is_some());
    }
}
