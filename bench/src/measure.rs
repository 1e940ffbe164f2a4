//! What one phase measures, and how: a time window after a warm-up, and what every worker
//! of the phase saw in it.
//!
//! A call counts when it *completes* inside the window: calls finishing during the warm-up or
//! after the end are neither counted nor timed. Throughput is signatures counted divided by
//! the window's length. Latency is per call (one `C_Sign`, one `Sign` RPC, one `SignBatch`
//! RPC), recorded in nanoseconds in an HDR histogram (3 significant digits).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::procstat::CpuReport;

/// The part of a phase that is measured.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// End of the warm-up.
    pub start: Instant,
    /// End of the phase: workers start no call after it.
    pub end: Instant,
}

impl Window {
    /// A phase starting now: `warmup`, then `duration` measured.
    pub fn starting_now(warmup: Duration, duration: Duration) -> Self {
        let start = Instant::now() + warmup;
        Self {
            start,
            end: start + duration,
        }
    }

    /// Whether a call that completed at `t` counts.
    pub fn counts(&self, t: Instant) -> bool {
        t >= self.start && t <= self.end
    }

    pub fn seconds(&self) -> f64 {
        (self.end - self.start).as_secs_f64()
    }
}

/// A new latency histogram (nanoseconds, 3 significant digits, growing as needed).
pub fn histogram() -> Histogram<u64> {
    // 3 significant digits is in hdrhistogram's accepted range (0..=5): this cannot fail.
    Histogram::new(3).expect("3 significant digits is a valid precision")
}

/// What one worker (thread or task) counted in the window.
#[derive(Debug)]
pub struct Tally {
    /// Signatures made.
    pub signatures: u64,
    /// Successful calls; their latencies are in `latency`.
    pub calls: u64,
    pub latency: Histogram<u64>,
    /// Failed calls by error code (a gRPC code, a `CKR_` name).
    pub errors: BTreeMap<String, u64>,
    /// The first message seen for each error code.
    pub error_samples: BTreeMap<String, String>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            signatures: 0,
            calls: 0,
            latency: histogram(),
            errors: BTreeMap::new(),
            error_samples: BTreeMap::new(),
        }
    }
}

impl Tally {
    pub fn success(&mut self, signatures: u64, started: Instant, done: Instant) {
        self.signatures += signatures;
        self.calls += 1;
        let ns = u64::try_from((done - started).as_nanos()).unwrap_or(u64::MAX);
        // Grows the histogram as needed; fails only beyond 2^62 ns.
        let _ = self.latency.record(ns.max(1));
    }

    pub fn error(&mut self, code: String, message: impl FnOnce() -> String) {
        if !self.error_samples.contains_key(&code) {
            self.error_samples.insert(code.clone(), message());
        }
        *self.errors.entry(code).or_default() += 1;
    }

    pub fn merge(&mut self, other: Tally) {
        self.signatures += other.signatures;
        self.calls += other.calls;
        // Both grow as needed: adding cannot run out of range.
        let _ = self.latency.add(&other.latency);
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        for (code, message) in other.error_samples {
            self.error_samples.entry(code).or_insert(message);
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// One phase of one round.
#[derive(Debug)]
pub struct PhaseResult {
    pub tally: Tally,
    /// Length of the measured window.
    pub seconds: f64,
    /// CPU used during the window, by process and thread; none if /proc was unreadable.
    pub cpu: Option<CpuReport>,
}

impl PhaseResult {
    pub fn signatures_per_s(&self) -> f64 {
        self.tally.signatures as f64 / self.seconds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_counts_completions_inside_only() {
        let w = Window::starting_now(Duration::from_millis(100), Duration::from_millis(100));
        assert!(!w.counts(w.start - Duration::from_millis(1)));
        assert!(w.counts(w.start));
        assert!(w.counts(w.end));
        assert!(!w.counts(w.end + Duration::from_millis(1)));
    }

    #[test]
    fn tallies_merge() {
        let t0 = Instant::now();
        let mut a = Tally::default();
        a.success(256, t0, t0 + Duration::from_micros(500));
        a.error("Unavailable".into(), || "first".into());
        let mut b = Tally::default();
        b.success(1, t0, t0 + Duration::from_micros(50));
        b.error("Unavailable".into(), || "second".into());
        b.error("Internal".into(), || "x".into());
        a.merge(b);
        assert_eq!((a.signatures, a.calls, a.error_count()), (257, 2, 3));
        assert_eq!(a.errors["Unavailable"], 2);
        assert_eq!(a.error_samples["Unavailable"], "first");
        assert_eq!(a.latency.len(), 2);
    }
}
