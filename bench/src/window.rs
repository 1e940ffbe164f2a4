//! The measured window of a phase: a warm-up, then the time in which completed calls count,
//! cut into timeline buckets. Its own module because both `measure` (the tallies) and
//! `procstat` (CPU over the window) need it, and `measure` holds `procstat`'s reports.

use std::time::{Duration, Instant};

/// Default width of a timeline bucket.
pub const DEFAULT_BUCKET: Duration = Duration::from_millis(100);

/// The part of a phase that is measured.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// End of the warm-up.
    pub start: Instant,
    /// End of the phase: workers start no call after it.
    pub end: Instant,
    /// Width of a timeline bucket.
    pub bucket: Duration,
}

impl Window {
    /// A phase starting now: `warmup`, then `duration` measured.
    pub fn starting_now(warmup: Duration, duration: Duration) -> Self {
        let start = Instant::now() + warmup;
        Self {
            start,
            end: start + duration,
            bucket: DEFAULT_BUCKET,
        }
    }

    /// The same window with timeline buckets of `bucket` (at least 1 ms).
    pub fn with_bucket(mut self, bucket: Duration) -> Self {
        self.bucket = bucket.max(Duration::from_millis(1));
        self
    }

    /// Number of timeline buckets.
    pub fn buckets(&self) -> usize {
        let n = (self.end - self.start).as_secs_f64() / self.bucket.as_secs_f64();
        (n.ceil() as usize).max(1)
    }

    /// The bucket of a completion at `t` (inside the window).
    pub fn bucket_of(&self, t: Instant) -> usize {
        let i = (t.saturating_duration_since(self.start).as_secs_f64() / self.bucket.as_secs_f64())
            as usize;
        i.min(self.buckets() - 1)
    }

    /// Whether a call that completed at `t` counts.
    pub fn counts(&self, t: Instant) -> bool {
        t >= self.start && t <= self.end
    }

    pub fn seconds(&self) -> f64 {
        (self.end - self.start).as_secs_f64()
    }
}
