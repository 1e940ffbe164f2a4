//! The Luna-class timing model: a token that signs with a fixed number of parallel signing
//! units, each signature holding one unit for a latency drawn from a distribution, so that the
//! token has a rated speed (`units / mean latency`, default 10,000 signatures/s as Let's
//! Encrypt quotes for its Luna HSMs) and a latency profile, whatever the machine running it.
//!
//! # How a signature is timed
//!
//! Each unit has a timeline: the instant it becomes free. A signature reserves the unit that
//! frees first: it starts at `max(now, free_at)`, finishes a sampled latency later, and the
//! unit is booked until then. The calling thread then sleeps until the finish instant (after
//! asking SoftHSM2 for the real signature, in `signature=real` mode). So:
//!
//! - at most `units` signatures are ever in service at once on a token (by construction: every
//!   reservation is a non-overlapping interval on one unit's timeline);
//! - a call never returns before its sampled latency, and queues inside the "HSM" when every
//!   unit is booked — like a Luna with ~N parallel units and many more sessions;
//! - a thread that oversleeps (timer slack, a busy machine) delays its own reply, not the
//!   unit: the next reservation starts at the unit's booked end, not when the sleeper woke. With
//!   more sessions than units (a backlog), the token therefore keeps its rated speed even on a
//!   machine whose sleeps are imprecise; with fewer sessions than units it cannot reach it, as
//!   a real HSM cannot when the client keeps too few requests in flight.
//!
//! Only the call that produces a signature is timed (`C_Sign`/`C_SignFinal` with an output
//! buffer); length queries and `C_SignInit` cost nothing, as in the `delay` fault.
//!
//! # Control-file syntax
//!
//! `LABEL model KEY=VALUE ...`, e.g. `* model units=10 rate=10000 min=800us dist=exp
//! signature=stand-in`. Keys (all optional):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `units` | 10 | parallel signing units |
//! | `rate` | 10000 | rated signatures/s of the token; sets the mean latency to `units / rate` |
//! | `mean` | — | mean latency instead of `rate` (`1ms`, `800us`); not both |
//! | `min` | 80 % of the mean | the latency floor (`fixed` ignores it) |
//! | `dist` | `exp` | `fixed` (always the mean), `exp` (min + exponential), `lognormal` (min + log-normal) |
//! | `sigma` | 0.5 | shape of `lognormal` |
//! | `signature` | `real` | `real`: SoftHSM2 signs; `stand-in`: a cheap fake of the right length, not a valid signature |

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The latency distribution of one signature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dist {
    /// Every signature takes the mean.
    Fixed,
    /// `min` plus an exponential with mean `mean - min`.
    Exp,
    /// `min` plus a log-normal with mean `mean - min` and shape `sigma`.
    LogNormal { sigma: f64 },
}

/// Where the signature comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureMode {
    /// The real module signs (its CPU cost is inside the modelled latency when it is shorter).
    Real,
    /// No real signing: bytes of the right length that are not a valid signature. For
    /// measuring the gateway at rates this machine cannot sign at. Reports must say so.
    StandIn,
}

/// One token's timing model (a `model` line of the control file).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Model {
    pub units: u32,
    pub mean: Duration,
    pub min: Duration,
    pub dist: Dist,
    pub signature: SignatureMode,
}

/// Default parallel signing units.
pub const DEFAULT_UNITS: u32 = 10;
/// Default rated speed of one token, signatures/s.
pub const DEFAULT_RATE: f64 = 10_000.0;

impl Default for Model {
    fn default() -> Self {
        // 10 units at 1 ms mean: 10,000/s.
        let mean = Duration::from_secs_f64(f64::from(DEFAULT_UNITS) / DEFAULT_RATE);
        Model {
            units: DEFAULT_UNITS,
            mean,
            min: mean.mul_f64(0.8),
            dist: Dist::Exp,
            signature: SignatureMode::Real,
        }
    }
}

impl Model {
    /// Parses the words after `model` (`units=10 rate=10000 ...`).
    pub fn parse<'a>(words: impl Iterator<Item = &'a str>) -> Result<Model, String> {
        let mut units = DEFAULT_UNITS;
        let mut rate: Option<f64> = None;
        let mut mean: Option<Duration> = None;
        let mut min: Option<Duration> = None;
        let mut dist = "exp".to_string();
        let mut sigma = 0.5;
        let mut signature = SignatureMode::Real;
        for word in words {
            let (k, v) = word
                .split_once('=')
                .ok_or_else(|| format!("model setting {word:?} is not KEY=VALUE"))?;
            match k {
                "units" => {
                    units = v
                        .parse::<u32>()
                        .ok()
                        .filter(|u| (1..=100_000).contains(u))
                        .ok_or_else(|| format!("units={v}: expected 1..=100000"))?;
                }
                "rate" => {
                    rate = Some(
                        v.parse::<f64>()
                            .ok()
                            .filter(|r| r.is_finite() && *r >= 0.001 && *r <= 1e9)
                            .ok_or_else(|| format!("rate={v}: expected signatures/s > 0"))?,
                    );
                }
                "mean" => mean = Some(parse_duration(v)?),
                "min" => min = Some(parse_duration(v)?),
                "dist" => dist = v.to_ascii_lowercase(),
                "sigma" => {
                    sigma = v
                        .parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 5.0)
                        .ok_or_else(|| format!("sigma={v}: expected 0 < sigma <= 5"))?;
                }
                "signature" => {
                    signature = match v.to_ascii_lowercase().as_str() {
                        "real" | "delegate" => SignatureMode::Real,
                        "stand-in" | "standin" | "fake" => SignatureMode::StandIn,
                        other => {
                            return Err(format!("signature={other}: expected real or stand-in"));
                        }
                    }
                }
                other => {
                    return Err(format!(
                        "unknown model setting {other:?} (expected units, rate, mean, min, dist, \
                         sigma or signature)"
                    ));
                }
            }
        }
        let mean = match (rate, mean) {
            (Some(_), Some(_)) => return Err("give rate or mean, not both".into()),
            (Some(r), None) => Duration::from_secs_f64(f64::from(units) / r),
            (None, Some(m)) => m,
            (None, None) => Duration::from_secs_f64(f64::from(units) / DEFAULT_RATE),
        };
        if mean.is_zero() {
            return Err("the mean latency must be above zero".into());
        }
        let dist = match dist.as_str() {
            "fixed" => Dist::Fixed,
            "exp" | "exponential" => Dist::Exp,
            "lognormal" | "log-normal" => Dist::LogNormal { sigma },
            other => return Err(format!("dist={other}: expected fixed, exp or lognormal")),
        };
        let min = match (dist, min) {
            (Dist::Fixed, _) => mean,
            (_, Some(m)) if m >= mean => {
                return Err(format!(
                    "min={m:?} must be below the mean latency {mean:?} (or use dist=fixed)"
                ));
            }
            (_, Some(m)) => m,
            (_, None) => mean.mul_f64(0.8),
        };
        Ok(Model {
            units,
            mean,
            min,
            dist,
            signature,
        })
    }

    /// Rated signatures per second: units / mean latency.
    pub fn rated_per_s(&self) -> f64 {
        f64::from(self.units) / self.mean.as_secs_f64()
    }

    /// The latency of one signature, drawn from the distribution with `u1`, `u2` uniform in
    /// (0, 1].
    pub fn sample(&self, u1: f64, u2: f64) -> Duration {
        let extra = (self.mean - self.min).as_secs_f64();
        let x = match self.dist {
            Dist::Fixed => return self.mean,
            Dist::Exp => -u1.ln() * extra,
            Dist::LogNormal { sigma } => {
                // Box-Muller; mu chosen so that the mean of exp(N(mu, sigma)) is `extra`.
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                let mu = extra.ln() - sigma * sigma / 2.0;
                (mu + sigma * z).exp()
            }
        };
        // Cap the tail at 1000 means: a pathological draw must not look like a hung HSM.
        self.min + Duration::from_secs_f64(x.clamp(0.0, extra * 1000.0))
    }

    /// The latency quantile `q` (0 < q < 1) of the distribution: what a caller should expect
    /// with no queueing, e.g. the "modelled latency" a p99 target is measured against.
    pub fn quantile(&self, q: f64) -> Duration {
        let extra = (self.mean - self.min).as_secs_f64();
        let x = match self.dist {
            Dist::Fixed => return self.mean,
            Dist::Exp => -(1.0 - q).ln() * extra,
            Dist::LogNormal { sigma } => {
                let mu = extra.ln() - sigma * sigma / 2.0;
                (mu + sigma * normal_quantile(q)).exp()
            }
        };
        self.min + Duration::from_secs_f64(x.max(0.0))
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dist = match self.dist {
            Dist::Fixed => "fixed".to_string(),
            Dist::Exp => "exp".to_string(),
            Dist::LogNormal { sigma } => format!("lognormal sigma={sigma}"),
        };
        write!(
            f,
            "model units={} mean={}us min={}us dist={dist} signature={} ({:.0}/s rated)",
            self.units,
            self.mean.as_micros(),
            self.min.as_micros(),
            match self.signature {
                SignatureMode::Real => "real",
                SignatureMode::StandIn => "stand-in",
            },
            self.rated_per_s()
        )
    }
}

/// Acklam's rational approximation of the standard normal quantile (relative error < 1.2e-9).
fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// `800us`, `1ms`, `1.5ms`, `2s`; a bare number is microseconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 800us, 1ms)"))?;
    let secs = match unit {
        "" | "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        other => return Err(format!("{text:?}: unknown unit {other:?} (us, ms or s)")),
    };
    if !secs.is_finite() || secs > 60.0 {
        return Err(format!("{text:?}: out of range (at most 60 s)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// One modelled token's signing units: when each becomes free, and what it has done.
///
/// A `std` mutex, not parking_lot's: this lock is contended (every signature takes it), and a
/// thread that parks on a parking_lot lock gets a thread-local destructor inside this module,
/// which must not outlive a dlclose() of the module (see `uniform`'s seed).
#[derive(Debug)]
pub struct Units {
    free_at: Mutex<Vec<Instant>>,
    /// Signatures served.
    pub ops: AtomicU64,
    /// Sum of the sampled service times, in nanoseconds.
    pub busy_ns: AtomicU64,
}

/// A reservation on one unit: the signature is in service from `start` to `finish`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub start: Instant,
    pub finish: Instant,
}

impl Units {
    pub fn new(units: u32) -> Units {
        let now = Instant::now();
        Units {
            free_at: Mutex::new(vec![now; units as usize]),
            ops: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
        }
    }

    /// Books the unit that frees first for one signature of `service` time, requested at
    /// `now`. The number of units follows `units` (the control file may change it while
    /// signatures are in service: a removed unit finishes what it has booked).
    pub fn reserve(&self, units: u32, now: Instant, service: Duration) -> Slot {
        // Poisoned only if a panic happened while booking: the times are still valid.
        let mut free_at = self.free_at.lock().unwrap_or_else(PoisonError::into_inner);
        let units = units.max(1) as usize;
        if free_at.len() != units {
            free_at.sort_unstable();
            free_at.resize(units, now);
        }
        // Linear scan: a Luna has tens of units, and the lock is held for nanoseconds.
        let (index, earliest) = free_at
            .iter()
            .enumerate()
            .min_by_key(|(_, t)| **t)
            .map_or((0, now), |(i, t)| (i, *t));
        let start = earliest.max(now);
        let finish = start + service;
        if let Some(unit) = free_at.get_mut(index) {
            *unit = finish;
        }
        drop(free_at);
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.busy_ns.fetch_add(
            u64::try_from(service.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        Slot { start, finish }
    }
}

/// A small, fast random source per thread (SplitMix64): the model draws two numbers per
/// signature and must not contend on a shared generator.
pub fn uniform() -> f64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|s| {
        let mut z = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // (0, 1]: never 0, so that ln() is finite.
        ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    })
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // No `std::thread::current()` here: it registers a thread-exit destructor inside this
    // module, which crashes the thread at exit once the caller has dlclose()d the module
    // (cryptoki does, when its context is dropped). A per-process counter and a stack
    // address separate threads; RandomState (seeded by the OS) and the clock separate runs.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let local = 0u8;
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    h.write_usize(std::ptr::addr_of!(local) as usize);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Model, String> {
        Model::parse(s.split_whitespace())
    }

    #[test]
    fn defaults_are_a_10k_luna() {
        let m = parse("").expect("defaults");
        assert_eq!(m.units, 10);
        assert_eq!(m.mean, Duration::from_millis(1));
        assert_eq!(m.min, Duration::from_micros(800));
        assert!((m.rated_per_s() - 10_000.0).abs() < 1e-6);
        assert_eq!(m.signature, SignatureMode::Real);
        assert_eq!(m, Model::default());
    }

    #[test]
    fn settings_parse_and_bad_ones_are_refused() {
        let m = parse("units=20 rate=5000 dist=fixed signature=stand-in").expect("valid");
        assert_eq!(m.mean, Duration::from_millis(4));
        assert_eq!(m.min, m.mean);
        assert_eq!(m.signature, SignatureMode::StandIn);
        let m = parse("units=4 mean=2ms min=1500us dist=lognormal sigma=0.3").expect("valid");
        assert_eq!(m.dist, Dist::LogNormal { sigma: 0.3 });
        assert!((m.rated_per_s() - 2_000.0).abs() < 1e-6);
        for bad in [
            "units=0",
            "rate=0",
            "rate=1 mean=1ms",
            "min=2ms mean=1ms",
            "dist=uniform",
            "colour=blue",
            "units",
            "mean=5parsecs",
            "signature=maybe",
            "sigma=-1",
        ] {
            assert!(parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn samples_respect_the_floor_and_the_mean() {
        for spec in ["dist=exp", "dist=lognormal", "dist=fixed"] {
            let m = parse(spec).expect("valid");
            let n = 200_000;
            let mut sum = 0.0;
            for _ in 0..n {
                let d = m.sample(uniform(), uniform());
                assert!(d >= m.min, "{spec}: {d:?} below {:?}", m.min);
                sum += d.as_secs_f64();
            }
            let mean = sum / f64::from(n);
            let want = m.mean.as_secs_f64();
            assert!((mean - want).abs() < want * 0.02, "{spec}: mean {mean}");
            // The analytical p99 is where 1 % of the draws lie above.
            let p99 = m.quantile(0.99);
            let above = (0..n)
                .filter(|_| m.sample(uniform(), uniform()) > p99)
                .count();
            if m.dist != Dist::Fixed {
                assert!((1500..2500).contains(&above), "{spec}: {above} above p99");
            }
        }
    }

    #[test]
    fn reservations_never_overlap_more_than_the_units() {
        let units = Units::new(3);
        let t0 = Instant::now();
        let service = Duration::from_millis(10);
        // Ten requests at the same instant: three start now, three at +10 ms, ...
        let slots: Vec<Slot> = (0..10).map(|_| units.reserve(3, t0, service)).collect();
        for (i, s) in slots.iter().enumerate() {
            assert_eq!(s.start, t0 + service * (i as u32 / 3), "slot {i}");
            assert_eq!(s.finish - s.start, service);
            let overlapping = slots
                .iter()
                .filter(|o| o.start <= s.start && s.start < o.finish)
                .count();
            assert!(overlapping <= 3, "slot {i}: {overlapping} in service");
        }
        assert_eq!(units.ops.load(Ordering::Relaxed), 10);
        // Growing to 5 units: the two new ones are free now.
        assert_eq!(units.reserve(5, t0, service).start, t0);
    }

    #[test]
    fn normal_quantiles() {
        assert!((normal_quantile(0.5)).abs() < 1e-9);
        assert!((normal_quantile(0.99) - 2.326_347_874).abs() < 1e-6);
        assert!((normal_quantile(0.01) + 2.326_347_874).abs() < 1e-6);
    }
}
