//! What one phase measures, and how: a time window after a warm-up, and what every worker
//! of the phase saw in it.
//!
//! A call counts when it *completes* inside the window: calls finishing during the warm-up or
//! after the end are neither counted nor timed. Throughput is signatures counted divided by
//! the window's length. Latency is per call (one `C_Sign`, one `Sign` RPC, one `SignBatch`
//! RPC), recorded in nanoseconds in an HDR histogram (3 significant digits).
//!
//! Each tally also keeps a **timeline**: signatures and errors per bucket of the window
//! (`--interval`, 100 ms by default), by completion time, so that throughput over time can be
//! plotted and a knocked-out HSM's effect read off it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::procstat::CpuReport;
use crate::window::Window;

/// Signatures completed by every load generator of the process, counted or not: what the
/// progress bar shows as the live rate.
pub static LIVE_SIGNATURES: AtomicU64 = AtomicU64::new(0);

/// A new latency histogram (nanoseconds, 3 significant digits, growing as needed).
pub fn histogram() -> Histogram<u64> {
    // 3 significant digits is in hdrhistogram's accepted range (0..=5): this cannot fail.
    Histogram::new(3).expect("3 significant digits is a valid precision")
}

/// Signatures and failed calls per bucket of the window, by completion time.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Timeline {
    pub bucket_ms: f64,
    pub signatures: Vec<u64>,
    pub errors: Vec<u64>,
}

impl Timeline {
    fn for_window(w: &Window) -> Self {
        Self {
            bucket_ms: w.bucket.as_secs_f64() * 1e3,
            signatures: vec![0; w.buckets()],
            errors: vec![0; w.buckets()],
        }
    }

    fn merge(&mut self, other: &Timeline) {
        if self.signatures.is_empty() {
            *self = other.clone();
            return;
        }
        for (a, b) in self.signatures.iter_mut().zip(&other.signatures) {
            *a += b;
        }
        for (a, b) in self.errors.iter_mut().zip(&other.errors) {
            *a += b;
        }
    }

    /// Signatures per second in each bucket.
    pub fn rates(&self) -> Vec<f64> {
        let secs = self.bucket_ms / 1e3;
        self.signatures.iter().map(|n| *n as f64 / secs).collect()
    }
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
    pub timeline: Timeline,
    window: Option<Window>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            signatures: 0,
            calls: 0,
            latency: histogram(),
            errors: BTreeMap::new(),
            error_samples: BTreeMap::new(),
            timeline: Timeline::default(),
            window: None,
        }
    }
}

impl Tally {
    /// A tally that also keeps the window's timeline.
    pub fn for_window(window: &Window) -> Self {
        Self {
            timeline: Timeline::for_window(window),
            window: Some(*window),
            ..Self::default()
        }
    }

    /// A call that completed at `done` with `signatures`; its latency counts from `started`.
    pub fn success(&mut self, signatures: u64, started: Instant, done: Instant) {
        self.signatures += signatures;
        self.calls += 1;
        LIVE_SIGNATURES.fetch_add(signatures, Ordering::Relaxed);
        let ns =
            u64::try_from(done.saturating_duration_since(started).as_nanos()).unwrap_or(u64::MAX);
        // Grows the histogram as needed; fails only beyond 2^62 ns.
        let _ = self.latency.record(ns.max(1));
        if let Some(w) = &self.window {
            let b = w.bucket_of(done);
            if let Some(n) = self.timeline.signatures.get_mut(b) {
                *n += signatures;
            }
        }
    }

    /// A failed call that completed at `done` (or was refused then).
    pub fn error_at(&mut self, done: Instant, code: String, message: impl FnOnce() -> String) {
        if let Some(w) = &self.window {
            let b = w.bucket_of(done);
            if let Some(n) = self.timeline.errors.get_mut(b) {
                *n += 1;
            }
        }
        self.error(code, message);
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
        self.timeline.merge(&other.timeline);
        if self.window.is_none() {
            self.window = other.window;
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
    use std::time::Duration;

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

    #[test]
    fn timelines_bucket_by_completion_time() {
        let w = Window::starting_now(Duration::ZERO, Duration::from_millis(1000))
            .with_bucket(Duration::from_millis(250));
        assert_eq!(w.buckets(), 4);
        let mut a = Tally::for_window(&w);
        a.success(10, w.start, w.start + Duration::from_millis(10));
        a.success(5, w.start, w.start + Duration::from_millis(600));
        a.error_at(
            w.start + Duration::from_millis(999),
            "Unavailable".into(),
            || "x".into(),
        );
        let mut b = Tally::for_window(&w);
        b.success(1, w.start, w.end);
        a.merge(b);
        assert_eq!(a.timeline.signatures, vec![10, 0, 5, 1]);
        assert_eq!(a.timeline.errors, vec![0, 0, 0, 1]);
        assert_eq!(a.timeline.rates()[0], 40.0);
    }
}
