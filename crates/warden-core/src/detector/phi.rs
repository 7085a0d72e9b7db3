//! The φ accrual failure detector (Hayashibara, Défago, Yared & Katayama, 2004), in the variant
//! used by Akka and Cassandra.
//!
//! Instead of a yes/no timeout it keeps a sliding window of heartbeat inter-arrival times,
//! models the next interval as normal with the window's mean and standard deviation, and
//! reports φ = −log10 P(the next heartbeat arrives later than now). φ = 1 means a 10% chance
//! that the agent is fine and merely late, φ = 8 one in a hundred million. The threshold on φ
//! therefore adapts the effective timeout to the jitter the network actually shows.
//!
//! Why the implementation looks the way it does:
//! - the intervals are kept in 2 bytes each (exact to the microsecond below 4 ms, to 12
//!   significant bits above: within 64 µs at 500 ms; the window grown as they arrive) and
//!   their statistics as *exact integer* running sums of what is kept (nanoseconds, `u128`),
//!   so an update is O(1), allocates only while the window fills, and the variance can never drift or go negative
//!   through floating-point cancellation — no periodic recomputation needed;
//! - φ depends on the time since the last heartbeat only through the standardised value
//!   `y = (elapsed − mean − acceptable_pause) / std`, so the `y*` at which φ reaches the
//!   threshold is solved once at construction, and [`LivenessDetector::suspect_at`] is an exact
//!   O(1) expression instead of a search or a poll.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::LivenessDetector;
use crate::error::{ConfigError, check_range};
use crate::time::{Time, duration_nanos};

/// Settings of [`PhiAccrual`].
///
/// # Why these defaults
///
/// They are tuned for Warden's standard 500 ms heartbeat on a *bad* network — 5% independent
/// message loss and up to 100 ms of jitter ([`TraceConfig::lossy`](crate::trace::TraceConfig::lossy))
/// — with two goals, measured by `cargo bench --bench detector_qos`: detection time T_D p99
/// under 2 s, and query accuracy P_A ≥ 0.9999.
///
/// The agent becomes suspect `D = mean + acceptable_pause + y*·max(σ, min_std_deviation)` after
/// its last heartbeat, where `y* ≈ 5.22` for φ = 8. On that network:
///
/// - T_D is at most D plus the last heartbeat's delay (≤ 0.1 s), so D must stay below ~1.9 s;
/// - two consecutive losses leave a 1.5 s gap (+ up to 0.1 s of jitter), about 17 times an
///   hour: D must cover it. Three in a row (a 2 s gap, about once an hour) cannot be covered
///   without breaking the T_D goal, and need not be: P_A ≥ 0.9999 allows 360 ms of mistakes per
///   hour, and each such gap costs about 0.2 s;
/// - σ there is dominated by the losses (≈ 120 ms: the intervals are 500 ms or 1 s — bimodal,
///   nothing like the normal distribution φ assumes), and it wanders with the number of losses
///   the window currently holds; multiplied by `y*` it would move D by ±40–100 ms.
///
/// Hence `threshold = 8` (the Akka/Cassandra value, kept familiar); `min_std_deviation =
/// 150 ms`, above that loss-driven σ, so D does not wander with it (on worse networks σ rises
/// above the floor and φ adapts); `acceptable_pause = 500 ms`, one heartbeat interval, so a
/// single loss costs nothing; `window = 1000` (Akka's: with 100, the noisier mean and σ pushed
/// T_D p99 to 1.99 s). Together: D ≈ 0.53 + 0.5 + 5.22 × 0.15 ≈ 1.81 s. Over 40 seeds × 200
/// traces × 10 minutes this measured T_D p99 ≤ 1.90 s and P_A ≥ 0.99993 (median 0.99995).
///
/// The price of a long window: after a multi-second sender pause σ stays inflated until the
/// pause leaves the window (~8 minutes), and D with it — the `gc_pauses` preset of the bench,
/// where the two-window detector does better. For another heartbeat interval, scale
/// `acceptable_pause`, `min_std_deviation` and `first_heartbeat_estimate` with it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhiConfig {
    /// φ at and above which the agent is suspected. φ = 8 claims a one-in-10⁸ chance of a
    /// false alarm *under the normal model*; real networks are not normal, which is what
    /// `min_std_deviation` and `acceptable_pause` correct for.
    pub threshold: f64,
    /// How many inter-arrival intervals the statistics cover (at least 2).
    pub window: usize,
    /// Floor on the standard deviation. A window of very regular arrivals yields a tiny σ,
    /// which would make φ climb to the threshold a few milliseconds after the mean interval.
    #[serde(with = "crate::duration_serde")]
    pub min_std_deviation: Duration,
    /// Silence tolerated on top of the mean interval before φ starts to rise: covers losses
    /// and pauses that the window has not (yet) seen.
    #[serde(with = "crate::duration_serde")]
    pub acceptable_pause: Duration,
    /// Expected interval used to seed the window before real intervals are known (σ is seeded
    /// as a quarter of it, like Akka). Set it to the agents' heartbeat interval.
    #[serde(with = "crate::duration_serde")]
    pub first_heartbeat_estimate: Duration,
}

impl Default for PhiConfig {
    fn default() -> Self {
        PhiConfig {
            threshold: 8.0,
            window: 1000,
            min_std_deviation: Duration::from_millis(150),
            acceptable_pause: Duration::from_millis(500),
            first_heartbeat_estimate: Duration::from_millis(500),
        }
    }
}

/// Largest accepted window: keeps the exact `u128` sums far from overflow (see
/// [`MAX_INTERVAL_NANOS`]) and memory per agent bounded (256 KiB).
const MAX_WINDOW: usize = 65_536;
/// Intervals longer than this are recorded as this. An hour of silence is already a dead agent
/// as far as statistics go, and the cap bounds `window × interval²` below `u128::MAX`.
const MAX_INTERVAL_NANOS: u64 = 3_600_000_000_000;
/// Upper bound on the threshold: φ = 100 already means P = 10⁻¹⁰⁰.
const MAX_THRESHOLD: f64 = 100.0;
/// Lower bound the constructor clamps to (validation rejects ≤ 0).
const MIN_THRESHOLD: f64 = 1e-6;
const MAX_DURATION: Duration = Duration::from_secs(3600);

impl PhiConfig {
    /// Check the settings, naming the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            return Err(ConfigError::new(
                "phi.threshold",
                format!("must be a positive number, got {}", self.threshold),
            ));
        }
        check_range(
            "phi.threshold",
            self.threshold,
            MIN_THRESHOLD,
            MAX_THRESHOLD,
        )?;
        if !(2..=MAX_WINDOW).contains(&self.window) {
            return Err(ConfigError::new(
                "phi.window",
                format!(
                    "must be between 2 and {MAX_WINDOW} intervals, got {}",
                    self.window
                ),
            ));
        }
        check_duration("phi.min_std_deviation", self.min_std_deviation, false)?;
        check_duration("phi.acceptable_pause", self.acceptable_pause, true)?;
        check_duration(
            "phi.first_heartbeat_estimate",
            self.first_heartbeat_estimate,
            false,
        )?;
        Ok(())
    }
}

fn check_duration(field: &'static str, d: Duration, zero_ok: bool) -> Result<(), ConfigError> {
    if !zero_ok && d.is_zero() {
        return Err(ConfigError::new(field, "must be greater than zero"));
    }
    if d > MAX_DURATION {
        return Err(ConfigError::new(
            field,
            format!("must be at most 1h, got {d:?}"),
        ));
    }
    Ok(())
}

/// φ as a function of the standardised delay `y`, using Akka's logistic approximation of the
/// normal tail: with `e = exp(−y·(1.5976 + 0.070566·y²))`, `φ = −log10(e / (1 + e))`.
///
/// Written as the algebraically identical `log10(1 + exp(z))`, `z = y·(1.5976 + 0.070566·y²)`:
/// one expression instead of Akka's two branches, so it is monotone in `y` (a composition of
/// monotone, correctly rounded steps and libm's exp/ln_1p), and for huge `z` it overflows to
/// `+∞` — a clean "certainly dead" — instead of underflowing `e` into `log10(0)`.
fn phi_of_y(y: f64) -> f64 {
    let z = y * (1.5976 + 0.070566 * y * y);
    z.exp().ln_1p() / std::f64::consts::LN_10
}

/// The smallest `f64` `y` with `phi_of_y(y) >= threshold`, by bisection down to adjacent floats
/// (about a hundred evaluations, once per detector). Being the *smallest* such float is what
/// makes `phi(now) >= threshold` and `now >= suspect_at()` agree to the nanosecond.
fn solve_y_star(threshold: f64) -> f64 {
    let mut lo = -1.0_f64;
    while phi_of_y(lo) >= threshold {
        lo *= 2.0;
    }
    let mut hi = 1.0_f64;
    while phi_of_y(hi) < threshold {
        hi *= 2.0;
    }
    loop {
        let mid = lo + (hi - lo) / 2.0;
        if mid <= lo || mid >= hi {
            return hi;
        }
        if phi_of_y(mid) >= threshold {
            hi = mid;
        } else {
            lo = mid;
        }
    }
}

/// The φ accrual detector. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct PhiAccrual {
    cfg: PhiConfig,
    /// Sanitised threshold and the largest float below it (for exact clamping of φ).
    threshold: f64,
    below_threshold: f64,
    /// Standardised delay at which φ reaches the threshold.
    y_star: f64,
    pause_ms: f64,
    min_std_ms: f64,
    /// Inter-arrival intervals, each in 2 bytes ([`encode_us`]). Grows as intervals arrive,
    /// up to the window, then a ring whose `head` is the oldest sample: a detector holds only
    /// what it has seen.
    intervals: Vec<u16>,
    head: usize,
    window: usize,
    len: usize,
    /// Exact running sums over the window: Σx fits in u64 (window × max interval < 2⁶⁴),
    /// Σx² needs u128.
    sum: u64,
    sum_sq: u128,
    /// Derived from the sums at each update.
    mean_ms: f64,
    std_ms: f64,
    std_eff_ms: f64,
    /// `mean + acceptable_pause`, the point where y = 0.
    center_ms: f64,
    last_seq: Option<u64>,
    last_arrival: Option<Time>,
    /// Nanoseconds after the last arrival at which the agent becomes suspect.
    deadline_nanos: u64,
}

impl PhiAccrual {
    /// A detector with these settings. Expects a validated config ([`PhiConfig::validate`]);
    /// out-of-range values are clamped into range rather than panicking.
    pub fn new(cfg: PhiConfig) -> Self {
        let threshold = if cfg.threshold.is_finite() {
            cfg.threshold.clamp(MIN_THRESHOLD, MAX_THRESHOLD)
        } else {
            MAX_THRESHOLD
        };
        let window = cfg.window.clamp(2, MAX_WINDOW);
        let min_std_ms = (cfg.min_std_deviation.min(MAX_DURATION).as_secs_f64() * 1e3).max(1e-6);
        let pause_ms = cfg.acceptable_pause.min(MAX_DURATION).as_secs_f64() * 1e3;
        let mut d = PhiAccrual {
            threshold,
            below_threshold: threshold.next_down(),
            y_star: solve_y_star(threshold),
            pause_ms,
            min_std_ms,
            intervals: Vec::new(),
            head: 0,
            window,
            len: 0,
            sum: 0,
            sum_sq: 0,
            mean_ms: 0.0,
            std_ms: 0.0,
            std_eff_ms: min_std_ms,
            center_ms: pause_ms,
            last_seq: None,
            last_arrival: None,
            deadline_nanos: 0,
            cfg,
        };
        // Bootstrap like Akka: two samples at estimate ± estimate/4, so the first real
        // intervals are judged against a plausible mean and σ rather than an empty window.
        let estimate = duration_nanos(d.cfg.first_heartbeat_estimate).clamp(4, MAX_INTERVAL_NANOS);
        let sd = estimate / 4;
        d.push(estimate - sd);
        d.push(estimate + sd);
        d.refresh();
        d
    }

    /// The settings this detector was built with.
    pub fn config(&self) -> &PhiConfig {
        &self.cfg
    }

    /// φ at `now`: −log10 of the modelled probability that a live agent would still be silent.
    /// Zero before the first heartbeat; `+∞` once the model considers survival impossible.
    /// `phi(now) >= threshold` exactly when `now >= suspect_at()`.
    pub fn phi(&self, now: Time) -> f64 {
        let Some(last) = self.last_arrival else {
            return 0.0;
        };
        let y = self.y_at(now.as_nanos().saturating_sub(last.as_nanos()));
        let phi = phi_of_y(y);
        // `phi_of_y` is monotone up to libm's last-ulp behaviour; pin the comparison with the
        // threshold to `y*` so φ and `suspect_at` can never disagree.
        if y >= self.y_star {
            phi.max(self.threshold)
        } else {
            phi.min(self.below_threshold)
        }
    }

    /// Mean inter-arrival interval over the window (including the bootstrap samples until
    /// they are pushed out).
    pub fn mean(&self) -> Duration {
        ms_to_duration(self.mean_ms)
    }

    /// Standard deviation of the inter-arrival intervals over the window, before the
    /// `min_std_deviation` floor is applied.
    pub fn std_dev(&self) -> Duration {
        ms_to_duration(self.std_ms)
    }

    /// Silence after the last heartbeat at which the agent becomes suspect under the current
    /// statistics: `mean + acceptable_pause + y*·max(σ, min_std_deviation)`.
    pub fn deadline(&self) -> Duration {
        Duration::from_nanos(self.deadline_nanos)
    }

    /// The standardised delay `y*` at which φ reaches the threshold.
    pub fn y_star(&self) -> f64 {
        self.y_star
    }

    /// Add an interval of `x` nanoseconds (kept as [`encode_us`] keeps it: the sums hold
    /// exactly what the window holds).
    fn push(&mut self, x: u64) {
        let code = encode_us(x / 1_000);
        let x = decode_us(code) * 1_000;
        if self.intervals.len() < self.window {
            self.intervals.push(code);
            self.len = self.intervals.len();
        } else {
            let old = decode_us(self.intervals[self.head]) * 1_000;
            self.sum -= old;
            self.sum_sq -= u128::from(old) * u128::from(old);
            self.intervals[self.head] = code;
            self.head += 1;
            if self.head == self.window {
                self.head = 0;
            }
        }
        self.sum += x;
        self.sum_sq += u128::from(x) * u128::from(x);
    }

    /// Recompute mean, σ and the deadline from the exact sums.
    fn refresh(&mut self) {
        let n = self.len.max(1) as u64;
        let nf = n as f64;
        self.mean_ms = self.sum as f64 / nf / 1e6;
        // n·Σx² − (Σx)² is exact and ≥ 0 (Cauchy–Schwarz), so σ never goes NaN.
        let s = u128::from(self.sum);
        let var_num = u128::from(n) * self.sum_sq - s * s;
        let var_ns2 = var_num as f64 / (nf * nf);
        self.std_ms = var_ns2.sqrt() / 1e6;
        self.std_eff_ms = self.std_ms.max(self.min_std_ms);
        self.center_ms = self.mean_ms + self.pause_ms;
        self.deadline_nanos = self.solve_deadline();
    }

    /// Standardised delay after `elapsed_ns` of silence. Every step is monotone, so this is
    /// non-decreasing in `elapsed_ns`.
    fn y_at(&self, elapsed_ns: u64) -> f64 {
        (elapsed_ns as f64 / 1e6 - self.center_ms) / self.std_eff_ms
    }

    /// Smallest elapsed nanosecond count with `y_at(elapsed) >= y*`: the closed form, then a
    /// nudge of a nanosecond or two to absorb rounding in the closed form.
    fn solve_deadline(&self) -> u64 {
        let target_ms = self.center_ms + self.y_star * self.std_eff_ms;
        let mut off = if target_ms > 0.0 {
            (target_ms * 1e6).ceil() as u64
        } else {
            0
        };
        for _ in 0..16 {
            if self.y_at(off) >= self.y_star {
                break;
            }
            off = off.saturating_add(1);
        }
        for _ in 0..16 {
            if off == 0 || self.y_at(off - 1) < self.y_star {
                break;
            }
            off -= 1;
        }
        off
    }
}

/// Exactly kept below this many microseconds (12 bits).
const EXACT_US: u64 = 4096;

/// An interval in microseconds (at most [`MAX_INTERVAL_NANOS`] / 1000) in 2 bytes: exact below
/// 4,096 µs, above rounded to 12 significant bits (a relative error of at most 1/4096; 64 µs
/// at 500 ms, far below any σ the detector works with). The code is a small float: its top 5
/// bits `k` and low 11 bits `m` stand for `(2048 + m) << (k − 1)` when `k ≥ 1`, and codes
/// below 4,096 are the value itself, so the two ranges meet without a gap.
fn encode_us(us: u64) -> u16 {
    if us < EXACT_US {
        return us as u16;
    }
    let mut shift = 64 - us.leading_zeros() - 12;
    let mut m = (us + (1 << (shift - 1))) >> shift;
    if m == EXACT_US {
        m = EXACT_US / 2;
        shift += 1;
    }
    // An hour in microseconds has 32 bits: `shift + 1` ≤ 22 fits the 5 bits of `k`.
    let k = u64::from(shift + 1).min(31);
    ((k << 11) | (m - EXACT_US / 2)) as u16
}

/// The microseconds a code of [`encode_us`] stands for.
fn decode_us(code: u16) -> u64 {
    let code = u64::from(code);
    let k = code >> 11;
    if k == 0 {
        code
    } else {
        (EXACT_US / 2 + (code & 0x7FF)) << (k - 1)
    }
}

fn ms_to_duration(ms: f64) -> Duration {
    // `as` saturates and maps NaN to 0, so this cannot panic.
    Duration::from_nanos((ms * 1e6).round() as u64)
}

impl LivenessDetector for PhiAccrual {
    fn heartbeat(&mut self, seq: u64, at: Time) {
        if self.last_seq.is_some_and(|last| seq <= last) {
            return;
        }
        if let Some(last) = self.last_arrival {
            let interval = at
                .as_nanos()
                .saturating_sub(last.as_nanos())
                .min(MAX_INTERVAL_NANOS);
            self.push(interval);
            self.refresh();
        }
        self.last_seq = Some(seq);
        self.last_arrival = Some(at);
    }

    /// φ (see [`PhiAccrual::phi`]).
    fn suspicion(&self, now: Time) -> f64 {
        self.phi(now)
    }

    fn suspect_at(&self) -> Option<Time> {
        self.last_arrival
            .map(|last| Time::from_nanos(last.as_nanos().saturating_add(self.deadline_nanos)))
    }

    fn name(&self) -> &'static str {
        "phi_accrual"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(v: u64) -> Time {
        Time::from_millis(v)
    }

    #[test]
    fn intervals_are_kept_in_two_bytes_exact_when_short_and_close_when_long() {
        for us in 0..EXACT_US {
            assert_eq!(decode_us(encode_us(us)), us);
        }
        let mut last = 0;
        let mut us = EXACT_US;
        while us <= MAX_INTERVAL_NANOS / 1_000 {
            let back = decode_us(encode_us(us));
            // Within half a step of 12 significant bits, and never out of order.
            assert!(back.abs_diff(us) * 4096 <= us, "{us} µs kept as {back}");
            assert!(back >= last, "{us} µs kept as {back}, below {last}");
            last = back;
            us += 1 + us / 3001;
        }
        // Half a millisecond, the default heartbeat, within 64 µs.
        assert!(decode_us(encode_us(500_000)).abs_diff(500_000) <= 64);
    }

    /// A detector fed `n` heartbeats `interval_ms` apart starting at 0 (with a deterministic
    /// ±jitter pattern when `jitter_ms > 0`); returns it and the last arrival.
    fn fed(cfg: PhiConfig, n: u64, interval_ms: u64, jitter_ms: u64) -> (PhiAccrual, Time) {
        let mut d = PhiAccrual::new(cfg);
        let mut at = ms(0);
        for seq in 1..=n {
            let j = if jitter_ms == 0 {
                0
            } else {
                (seq * 7919) % (2 * jitter_ms + 1)
            };
            at = ms(seq * interval_ms + j);
            d.heartbeat(seq, at);
        }
        (d, at)
    }

    #[test]
    fn y_star_is_the_smallest_float_reaching_the_threshold() {
        for thr in [0.5, 1.0, 3.0, 8.0, 12.0, 16.0, 50.0] {
            let y = solve_y_star(thr);
            assert!(phi_of_y(y) >= thr);
            assert!(phi_of_y(y.next_down()) < thr, "threshold {thr}");
        }
        // Akka's approximation: φ = 8 lies a little above 5.2 σ.
        let y8 = solve_y_star(8.0);
        assert!((5.1..5.3).contains(&y8), "{y8}");
    }

    #[test]
    fn phi_handles_extremes_without_nan() {
        assert_eq!(phi_of_y(-1e300), 0.0);
        assert_eq!(phi_of_y(1e300), f64::INFINITY);
        assert_eq!(phi_of_y(f64::INFINITY), f64::INFINITY);
        assert!(
            (phi_of_y(0.0) - 2f64.log10()).abs() < 1e-12,
            "y = 0 is a coin flip"
        );
        let (d, last) = fed(PhiConfig::default(), 20, 500, 0);
        assert_eq!(d.phi(last + Duration::from_secs(100_000)), f64::INFINITY);
        assert_eq!(
            d.phi(Time::ZERO),
            d.phi(last),
            "before the last arrival counts as 0 elapsed"
        );
    }

    #[test]
    fn suspects_after_deadline_not_before() {
        struct Case {
            name: &'static str,
            cfg: PhiConfig,
            beats: u64,
            interval_ms: u64,
            jitter_ms: u64,
            quiet_ms: u64,
            suspect: bool,
        }
        let akka_like = PhiConfig {
            threshold: 8.0,
            window: 100,
            min_std_deviation: Duration::from_millis(100),
            acceptable_pause: Duration::ZERO,
            first_heartbeat_estimate: Duration::from_millis(500),
        };
        let cases = [
            // Defaults on a regular 500 ms stream: the lib.rs example's promises.
            Case {
                name: "default 600ms",
                cfg: PhiConfig::default(),
                beats: 20,
                interval_ms: 500,
                jitter_ms: 0,
                quiet_ms: 600,
                suspect: false,
            },
            Case {
                name: "default 1.5s",
                cfg: PhiConfig::default(),
                beats: 50,
                interval_ms: 500,
                jitter_ms: 0,
                quiet_ms: 1_500,
                suspect: false,
            },
            Case {
                name: "default 2s",
                cfg: PhiConfig::default(),
                beats: 50,
                interval_ms: 500,
                jitter_ms: 0,
                quiet_ms: 2_000,
                suspect: true,
            },
            Case {
                name: "default 5s",
                cfg: PhiConfig::default(),
                beats: 20,
                interval_ms: 500,
                jitter_ms: 0,
                quiet_ms: 5_000,
                suspect: true,
            },
            // No pause, σ floored at 100 ms: deadline ≈ 500 + 5.2·100 ms.
            Case {
                name: "akka 1.0s",
                cfg: akka_like.clone(),
                beats: 200,
                interval_ms: 500,
                jitter_ms: 0,
                quiet_ms: 1_000,
                suspect: false,
            },
            Case {
                name: "akka 1.05s",
                cfg: akka_like.clone(),
                beats: 200,
                interval_ms: 500,
                jitter_ms: 0,
                quiet_ms: 1_050,
                suspect: true,
            },
            // Jitter widens σ past the floor, and with it the deadline.
            Case {
                name: "jittery 1.05s",
                cfg: akka_like.clone(),
                beats: 200,
                interval_ms: 500,
                jitter_ms: 250,
                quiet_ms: 1_050,
                suspect: false,
            },
            // Slower heartbeats: the mean follows them.
            Case {
                name: "2s beats 2.4s",
                cfg: akka_like.clone(),
                beats: 200,
                interval_ms: 2_000,
                jitter_ms: 0,
                quiet_ms: 2_400,
                suspect: false,
            },
            Case {
                name: "2s beats 2.6s",
                cfg: akka_like,
                beats: 200,
                interval_ms: 2_000,
                jitter_ms: 0,
                quiet_ms: 2_600,
                suspect: true,
            },
        ];
        for c in cases {
            let (d, last) = fed(c.cfg, c.beats, c.interval_ms, c.jitter_ms);
            let now = last + Duration::from_millis(c.quiet_ms);
            assert_eq!(
                d.is_suspect(now),
                c.suspect,
                "{}: deadline {:?}",
                c.name,
                d.deadline()
            );
            assert_eq!(d.phi(now) >= d.config().threshold, c.suspect, "{}", c.name);
        }
    }

    #[test]
    fn statistics_follow_the_window() {
        let cfg = PhiConfig {
            window: 10,
            ..PhiConfig::default()
        };
        let mut d = PhiAccrual::new(cfg);
        // Bootstrap: 375 and 625 ms → mean 500, σ 125 (as kept: to 12 significant bits).
        let near = |got: Duration, want_ms: u64| {
            let want = Duration::from_millis(want_ms);
            assert!(
                got.abs_diff(want) <= Duration::from_micros(200),
                "{got:?} vs {want:?}"
            );
        };
        near(d.mean(), 500);
        near(d.std_dev(), 125);
        assert_eq!(d.suspect_at(), None);
        for seq in 0..=20u64 {
            d.heartbeat(seq + 1, ms(seq * 200));
        }
        // 20 intervals of 200 ms (kept exactly: 3,125 × 64 µs) have flushed the bootstrap
        // out of a 10-slot window.
        assert_eq!(d.mean(), Duration::from_millis(200));
        assert_eq!(d.std_dev(), Duration::ZERO);
    }

    #[test]
    fn duplicates_and_reordered_beats_are_ignored() {
        let (mut d, last) = fed(PhiConfig::default(), 30, 500, 0);
        let before = (d.mean(), d.suspect_at());
        d.heartbeat(30, last + Duration::from_millis(400));
        d.heartbeat(12, last + Duration::from_millis(450));
        assert_eq!((d.mean(), d.suspect_at()), before);
        d.heartbeat(31, last + Duration::from_millis(500));
        assert_eq!(
            d.suspect_at(),
            Some(last + Duration::from_millis(500) + d.deadline())
        );
    }

    #[test]
    fn lost_heartbeats_inflate_the_statistics() {
        // Phi has no notion of sequence gaps: a lost beat shows up as a double interval.
        let cfg = PhiConfig {
            window: 100,
            ..PhiConfig::default()
        };
        let mut d = PhiAccrual::new(cfg);
        let mut t = 0;
        for seq in 1..=400u64 {
            t += 500;
            if seq % 10 == 0 {
                continue; // lost
            }
            d.heartbeat(seq, ms(t));
        }
        assert!(d.mean() > Duration::from_millis(540), "{:?}", d.mean());
        assert!(
            d.std_dev() > Duration::from_millis(100),
            "{:?}",
            d.std_dev()
        );
    }

    #[test]
    fn validation_names_the_field() {
        let field = |c: PhiConfig| c.validate().map_err(|e| e.field.into_owned());
        let d = PhiConfig::default;
        assert_eq!(field(d()), Ok(()));
        assert_eq!(
            field(PhiConfig {
                threshold: 0.0,
                ..d()
            }),
            Err("phi.threshold".into())
        );
        assert_eq!(
            field(PhiConfig {
                threshold: -1.0,
                ..d()
            }),
            Err("phi.threshold".into())
        );
        assert_eq!(
            field(PhiConfig {
                threshold: f64::NAN,
                ..d()
            }),
            Err("phi.threshold".into())
        );
        assert_eq!(
            field(PhiConfig {
                threshold: 1e9,
                ..d()
            }),
            Err("phi.threshold".into())
        );
        assert_eq!(
            field(PhiConfig { window: 1, ..d() }),
            Err("phi.window".into())
        );
        assert_eq!(
            field(PhiConfig {
                window: 1 << 20,
                ..d()
            }),
            Err("phi.window".into())
        );
        assert_eq!(
            field(PhiConfig {
                min_std_deviation: Duration::ZERO,
                ..d()
            }),
            Err("phi.min_std_deviation".into())
        );
        assert_eq!(
            field(PhiConfig {
                acceptable_pause: Duration::from_secs(7200),
                ..d()
            }),
            Err("phi.acceptable_pause".into())
        );
        assert_eq!(
            field(PhiConfig {
                first_heartbeat_estimate: Duration::ZERO,
                ..d()
            }),
            Err("phi.first_heartbeat_estimate".into())
        );
        // Invalid settings still build a working detector instead of panicking.
        let mut wild = PhiAccrual::new(PhiConfig {
            threshold: f64::NAN,
            window: 0,
            ..d()
        });
        wild.heartbeat(1, ms(0));
        wild.heartbeat(2, ms(500));
        assert!(wild.suspect_at().is_some());
    }

    fn arb_config() -> impl Strategy<Value = PhiConfig> {
        (
            0.1f64..20.0,
            2usize..50,
            1u64..300,
            0u64..2_000,
            50u64..2_000,
        )
            .prop_map(|(threshold, window, min_std, pause, first)| PhiConfig {
                threshold,
                window,
                min_std_deviation: Duration::from_millis(min_std),
                acceptable_pause: Duration::from_millis(pause),
                first_heartbeat_estimate: Duration::from_millis(first),
            })
    }

    /// Random arrival gaps (ms) with occasional long outliers.
    fn arb_gaps() -> impl Strategy<Value = Vec<u64>> {
        proptest::collection::vec(prop_oneof![8 => 300u64..700, 1 => 0u64..5_000], 1..60)
    }

    fn replay(cfg: PhiConfig, gaps: &[u64]) -> (PhiAccrual, Time) {
        let mut d = PhiAccrual::new(cfg);
        let mut t = 1_000_000_000u64; // an arbitrary, non-zero clock origin
        for (i, g) in gaps.iter().enumerate() {
            t += g * 1_000_000 + (i as u64 * 7_919) % 1_000_000;
            d.heartbeat(i as u64 + 1, Time::from_nanos(t));
        }
        (d, Time::from_nanos(t))
    }

    proptest! {
        #[test]
        fn phi_is_monotone_in_time_since_last_heartbeat(
            cfg in arb_config(),
            gaps in arb_gaps(),
            a in 0u64..20_000_000_000,
            b in 0u64..20_000_000_000,
        ) {
            let (d, last) = replay(cfg, &gaps);
            let (early, late) = (a.min(b), a.max(b));
            let (p1, p2) = (d.phi(last + Duration::from_nanos(early)), d.phi(last + Duration::from_nanos(late)));
            prop_assert!(p1 <= p2, "phi({early}) = {p1} > phi({late}) = {p2}");
            prop_assert!(p1 >= 0.0 && !p1.is_nan());
        }

        #[test]
        fn suspect_at_agrees_with_phi_to_the_nanosecond(cfg in arb_config(), gaps in arb_gaps(), probe in 0u64..10_000_000_000) {
            let threshold = cfg.threshold;
            let (d, last) = replay(cfg, &gaps);
            let at = d.suspect_at().expect("a heartbeat was seen");
            prop_assert!(at >= last);
            prop_assert!(d.phi(at) >= threshold, "phi at suspect_at = {}", d.phi(at));
            prop_assert!(d.is_suspect(at));
            if at > last {
                let just_before = Time::from_nanos(at.as_nanos() - 1);
                prop_assert!(d.phi(just_before) < threshold, "phi 1ns before = {}", d.phi(just_before));
                prop_assert!(!d.is_suspect(just_before));
            }
            // Anywhere else: the two views agree.
            let now = last + Duration::from_nanos(probe);
            prop_assert_eq!(d.phi(now) >= threshold, d.is_suspect(now));
        }
    }
}
