//! A progress bar per phase on a terminal (indicatif; hidden when stderr is not a terminal):
//! the phase's label, warm-up then measured time, and the live signing (or request) rate of
//! the last 250 ms. A thread draws it; dropping the guard (or the window's end) stops it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::measure::LIVE_SIGNATURES;
use crate::report::thousands;
use crate::window::Window;

/// How often the bar is redrawn.
const TICK: Duration = Duration::from_millis(250);

/// The bar of one phase; dropping it clears it.
#[derive(Debug)]
pub struct PhaseBar {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Shows a bar for `window` (warm-up included) until the guard is dropped.
pub fn phase(label: &str, window: &Window) -> PhaseBar {
    phase_counting(label, window, &LIVE_SIGNATURES, "sig/s")
}

/// [`phase`] with the live rate of another counter (`ocsp`: requests), shown in `unit`.
pub fn phase_counting(
    label: &str,
    window: &Window,
    counter: &'static AtomicU64,
    unit: &'static str,
) -> PhaseBar {
    let stop = Arc::new(AtomicBool::new(false));
    let begin = Instant::now();
    let total = window.end.saturating_duration_since(begin);
    let bar =
        ProgressBar::with_draw_target(Some(total.as_millis() as u64), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos:>6}/{len} ms  {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_owned());
    let (flag, start) = (stop.clone(), window.start);
    let thread = std::thread::Builder::new()
        .name("progress".into())
        .spawn(move || {
            let mut last = (Instant::now(), counter.load(Ordering::Relaxed));
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                let now = Instant::now();
                let count = counter.load(Ordering::Relaxed);
                let rate = (count - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
                last = (now, count);
                bar.set_position(now.saturating_duration_since(begin).as_millis() as u64);
                bar.set_message(if now < start {
                    "warm-up".to_owned()
                } else {
                    format!("{} {unit}", thousands(rate))
                });
            }
            bar.finish_and_clear();
        })
        .ok();
    PhaseBar { stop, thread }
}

impl Drop for PhaseBar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A bar counting `total` items (hidden when stderr is not a terminal), for phases measured by
/// work done rather than by time (`drill`).
pub fn count_bar(total: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label.to_owned());
    bar
}
