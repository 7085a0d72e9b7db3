//! The calibrated anomaly detector on one signal: "how unusual is this value, as a
//! probability against this signal's own history?"
//!
//! The EWMA z-score detector ([`crate::anomaly`]) compares a raw z with a fixed threshold.
//! Real metrics break that: their residuals are far heavier-tailed than a Gaussian (a z that
//! is rare on one series is daily on another), many follow a daily or weekly cycle, a single
//! spike is what matters on some and noise on others, and a level shift is absorbed into the
//! baseline before it alarms. This detector keeps, per signal, in [`TailDetector::BYTES`]
//! bytes and O(1) per sample, five *surprise statistics*:
//!
//! - **value novelty**: how rarely values like this one were seen (a grid of 16 bins over
//!   the range seen, counts decayed with a half-life of [`TailConfig::memory`] samples; the
//!   range widens by at most four spans per sample and narrows again once the values at its
//!   edges are all but forgotten, so one absurd value does not blind it for good);
//!   a value outside everything seen is as novel as can be — the fast path for a spike, a
//!   level shift, a flat line at a new level;
//! - **phase novelty**: how rarely values like this one were seen *at this time of day* (the
//!   same grid per two-hour phase): a value normal at noon is news at midnight;
//! - **divergence**: how far the distribution of the last few dozen values is from the long
//!   one (Kullback–Leibler, over the same grid): spikes grown denser, a signal gone flat or
//!   noisier, each value of which would be unremarkable alone;
//! - **a forecast residual**: a slow level plus a seasonal profile for each candidate period
//!   (a day in 48 bins, a week in 168), the period *found from the data* — each candidate's
//!   one-step forecast error is tracked and the smallest wins (none until a profile has seen
//!   two whole periods). The residual, scaled by its mean absolute deviation, feeds a
//!   two-sided **CUSUM** (a level shift or slow drift accumulates until it stands out) and a
//!   short average (a burst of moderate surprises).
//!
//! **Calibration**: each statistic is judged against its own distribution over the recent
//! past (a decayed histogram on a log scale), so a value's score is its *tail probability*
//! against this signal's history, not a raw z: `p` is the smallest of the five tails times
//! five (Bonferroni), the score `1 − p`.
//!
//! **Episodes**: a sample is surprising when `p` is below [`TailConfig::alarm`] and it lies at
//! least [`TailConfig::min_z`] estimated standard deviations (1.25 × the residual's mean
//! absolute deviation) from the forecast in the harmful direction;
//! [`TailConfig::confirm`] surprising samples in a row raise the verdict. It clears when `p` is
//! back above ten times the alarm level and the recent residual within three estimated
//! standard deviations of the forecast (a lasting shift holds the verdict until the forecast, moving by clipped steps,
//! has made it the new normal). After a verdict rises, a quiet period of
//! [`TailConfig::quiet`] samples raises no new one and scores 0: one alarm per episode.
//!
//! Measured on the Numenta Anomaly Benchmark with `warden bench anomaly` (see
//! `docs/detectors.md` for the figures, and how they were reached).

use serde::{Deserialize, Serialize};

use crate::anomaly::Direction;
use crate::error::{ConfigError, check_range};

/// Settings of a [`TailDetector`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TailConfig {
    /// Smoothing of the forecast's level and of the residual's scale (default 0.01: about
    /// 100 samples).
    pub alpha: f64,
    /// Smoothing of a seasonal bin at each visit (default 0.1).
    pub season_alpha: f64,
    /// CUSUM allowance, in scaled residuals (default 1.0).
    pub cusum_k: f64,
    /// Half-life of the value counts and of the calibration, in samples (default 2000).
    pub memory: u32,
    /// Samples before any verdict (default 100).
    pub warmup: u32,
    /// Tail probability below which the verdict turns anomalous (default 0.0001: below the
    /// calibration's floor, so only a surprise beyond the signal's recent history raises
    /// it; 0.005 scores best on NAB's 5-minute series, but on signals sampled twice a second
    /// it would raise a verdict about every few minutes per signal).
    pub alarm: f64,
    /// Samples after an alarm during which no new one is raised (default 150).
    pub quiet: u32,
    /// Smallest deviation from the forecast, in estimated standard deviations (1.25 × the
    /// residual's mean absolute deviation, floored per signal), that may raise the verdict
    /// (default 3): a surprise
    /// must also be material. The first error an agent ever reports is news to the
    /// calibration, but one error in a hundred requests is not a reason to stop sending it
    /// work. 0 lets the tail probability alone decide.
    pub min_z: f64,
    /// Consecutive surprising samples that raise the verdict (default 2: a signal sampled
    /// twice a second confirms within a second; 1 raises on a single extreme sample).
    pub confirm: u32,
}

impl Default for TailConfig {
    fn default() -> Self {
        TailConfig {
            alpha: 0.01,
            season_alpha: 0.1,
            cusum_k: 1.0,
            memory: 2_000,
            warmup: 100,
            alarm: 0.000_1,
            quiet: 150,
            min_z: 3.0,
            confirm: 2,
        }
    }
}

impl TailConfig {
    /// Reject impossible settings, naming the field under `prefix` (e.g. `anomaly.tail`).
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let named = |e: ConfigError| ConfigError::new(format!("{prefix}.{}", e.field), e.reason);
        check_range("alpha", self.alpha, 1e-5, 1.0).map_err(named)?;
        check_range("season_alpha", self.season_alpha, 1e-4, 1.0).map_err(named)?;
        check_range("cusum_k", self.cusum_k, 0.01, 100.0).map_err(named)?;
        check_range("alarm", self.alarm, 1e-9, 0.05).map_err(named)?;
        check_range("min_z", self.min_z, 0.0, 1_000.0).map_err(named)?;
        let count = |field: &str, v: u32, lo: u32, hi: u32| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(ConfigError::new(
                    format!("{prefix}.{field}"),
                    format!("must be between {lo} and {hi} samples, got {v}"),
                ))
            }
        };
        count("confirm", self.confirm, 1, 100)?;
        // A half-life beyond a million samples would not forget within f32's precision.
        count("memory", self.memory, 10, 1_000_000)?;
        // Fewer than 10 samples of warm-up judge the first values against an empty history.
        count("warmup", self.warmup, 10, 100_000)?;
        count("quiet", self.quiet, 0, 1_000_000)?;
        Ok(())
    }
}

const DAY: f64 = 86_400.0;
const WEEK: f64 = 7.0 * DAY;
const DAY_BINS: usize = 48;
const WEEK_BINS: usize = 168;
/// Histogram bins: statistic `s` falls in bin `⌊8·log2(1 + s)⌋`, the last one open-ended.
const HIST_BINS: usize = 64;
/// Bins of the histories of the bounded statistics — the novelties, the divergence and the
/// short average — which never reach bin 32: a novelty or the divergence is at most
/// `ln(2·total + 16)`, and the values' total weight at most `memory / ln 2 + 1` (1.44 million
/// samples at the largest memory allowed: 14.9, bin 31); the short average at most
/// [`STEP_Z`] (bin 27). Only the CUSUM (up to [`CUSUM_CAP`]) needs all of [`HIST_BINS`].
/// The bins they would leave empty are not kept: 496 bytes a detector.
const BOUNDED_BINS: usize = 33;
/// Surprise statistics: value novelty, phase novelty, CUSUM, short average of the residual,
/// divergence of the recent distribution.
const STATS: usize = 5;
/// Decay per sample of the recent distribution (a half-life of about 23 samples).
const RECENT_DECAY: f64 = 0.97;
/// A raised verdict holds while the short average of z (the residual in estimated standard
/// deviations, 1.25 × its mean absolute deviation) stays above this: the value is still far
/// from what the forecast expected before the episode.
const HOLD_Z: f64 = 3.0;
/// Samples between two looks at whether the value grid can be narrowed.
const NARROW_EVERY: u32 = 64;
/// Weight below which a bin of the value grid counts as unused when narrowing: one sample's,
/// forgotten for almost seven half-lives. (A share of the total would drop any rare value's
/// range within a few dozen samples, and its return would be news again.)
const NARROW_FLOOR: f32 = 0.01;
/// Largest step one sample's z adds to the CUSUM and the short average.
const STEP_Z: f64 = 10.0;
/// Largest |z| taken from one sample.
const Z_CAP: f64 = 1e6;
/// Largest CUSUM value kept.
const CUSUM_CAP: f64 = 1_000.0;
/// Bins of the value grid.
const GRID: usize = 16;
/// Phases of a day in the phase × value grid.
const PHASES: usize = 12;

/// Weight above which a [`Weight`]'s histograms are scaled back to 1: far inside `f32`'s range
/// however much a histogram holds (at most `memory / ln 2` samples' worth: 2.9 million), and
/// rare enough to cost nothing (every 64 half-lives).
const RESCALE_ABOVE: f64 = 1.8e19; // 2^64

/// Decay without touching every bin at every sample: counts are kept in units that grow by
/// `1 / decay` per sample, so that a new sample adds the current unit to one bin and what
/// is already there keeps its place — the same as multiplying every bin by `decay` and
/// adding 1, at one addition instead of a pass over the histogram. A count in true units is
/// the stored one divided by [`Weight::unit`]; once the unit passes [`RESCALE_ABOVE`] every
/// histogram it weighs is divided by it and it starts again from 1.
#[derive(Clone, Copy, Debug)]
struct Weight {
    /// What the newest sample weighs in the stored counts: 1 in true units.
    unit: f64,
}

impl Weight {
    const fn new() -> Weight {
        Weight { unit: 1.0 }
    }

    /// Move on to the next sample's unit, `growth` (`1 / decay`) times the last one;
    /// `Some(factor)` when the histograms must first be scaled by `factor` (and the unit
    /// starts again from 1).
    fn advance(&mut self, growth: f64) -> Option<f32> {
        let next = self.unit * growth;
        if next > RESCALE_ABOVE {
            let factor = (1.0 / self.unit) as f32;
            self.unit = growth;
            Some(factor)
        } else {
            self.unit = next;
            None
        }
    }

    fn get(self) -> f32 {
        self.unit as f32
    }
}

fn scale(bins: &mut [f32], factor: f32) {
    for b in bins {
        *b *= factor;
    }
}

/// A decayed histogram of a non-negative statistic on a log scale: its tail probability.
/// Counts are in the units of the detector's `tail_weight` (see [`Weight`]).
#[derive(Clone, Debug)]
struct Tail<const N: usize> {
    bins: [f32; N],
    total: f32,
}

impl<const N: usize> Tail<N> {
    fn new() -> Self {
        Tail {
            bins: [0.0; N],
            total: 0.0,
        }
    }

    fn bin(s: f64) -> (usize, f64) {
        let b = 8.0 * (1.0 + s.max(0.0)).log2();
        let i = b.floor();
        if i >= (N - 1) as f64 {
            (N - 1, 0.0)
        } else {
            (i as usize, b - i)
        }
    }

    /// P(S ≥ s) over what was added, with the bin of `s` counted by the part at or above
    /// `s` (linear within the bin), and one pseudo-observation at `s` itself. Beyond the
    /// highest value seen the pseudo-observation's weight falls by e for every quarter of a
    /// doubling (a power-law tail), so the rarest values still rank by size. `unit`: what
    /// the newest sample weighs in the stored counts (1 in true units).
    fn p(&self, s: f64, unit: f32) -> f64 {
        let (i, frac) = Self::bin(s);
        // Eight running sums: a float sum in one chain cannot be vectorised (its order is
        // part of its result), and this one is the detector's hottest loop.
        let mut lanes = [0f32; 8];
        for chunk in self.bins[i + 1..].chunks(8) {
            for (lane, b) in lanes.iter_mut().zip(chunk) {
                *lane += b;
            }
        }
        let above: f32 = lanes.iter().sum();
        let within = f64::from(self.bins[i]) * (1.0 - frac);
        let floor = 0.01 * unit;
        let top = self.bins.iter().rposition(|b| *b > floor).unwrap_or(0);
        let unit = f64::from(unit);
        let pseudo = if i > top || (i == top && within + f64::from(above) < f64::from(floor)) {
            let beyond = (i as f64 + frac) - (top + 1) as f64;
            (-beyond.max(0.0) / 2.0).exp()
        } else {
            1.0
        };
        (f64::from(above) + within + pseudo * unit) / (f64::from(self.total) + unit)
    }

    fn add(&mut self, s: f64, unit: f32, rescale: Option<f32>) {
        if let Some(factor) = rescale {
            scale(&mut self.bins, factor);
            self.total *= factor;
        }
        self.bins[Self::bin(s).0] += unit;
        self.total += unit;
    }
}

/// The histories of the five statistics, in the order of [`STATS`]: value novelty, phase
/// novelty, CUSUM, short average, divergence.
#[derive(Clone, Debug)]
struct Tails {
    /// All but the CUSUM's.
    bounded: [Tail<BOUNDED_BINS>; STATS - 1],
    cusum: Tail<HIST_BINS>,
}

/// Where the CUSUM is among the statistics.
const CUSUM_STAT: usize = 2;

impl Tails {
    fn bounded(stats: &[f64; STATS]) -> impl Iterator<Item = f64> + '_ {
        stats
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != CUSUM_STAT)
            .map(|(_, s)| *s)
    }

    /// The smallest tail probability of the five.
    fn least_p(&self, stats: &[f64; STATS], unit: f32) -> f64 {
        self.bounded
            .iter()
            .zip(Self::bounded(stats))
            .map(|(t, s)| t.p(s, unit))
            .fold(self.cusum.p(stats[CUSUM_STAT], unit), f64::min)
    }

    fn add(&mut self, stats: &[f64; STATS], unit: f32, rescale: Option<f32>) {
        for (t, s) in self.bounded.iter_mut().zip(Self::bounded(stats)) {
            t.add(s, unit, rescale);
        }
        self.cusum.add(stats[CUSUM_STAT], unit, rescale);
    }
}

/// One seasonal candidate: a profile of offsets from the level by phase, and its error.
#[derive(Clone, Debug)]
struct Season<const N: usize> {
    /// Offset by phase bin; NaN for a bin never visited.
    offsets: [f32; N],
    /// Mean absolute one-step forecast error with this profile.
    error: f64,
    /// When the profile started (seconds): usable after two periods.
    since: Option<f64>,
}

impl<const N: usize> Season<N> {
    fn new() -> Self {
        Season {
            offsets: [f32::NAN; N],
            error: 0.0,
            since: None,
        }
    }

    fn bin(at: f64, period: f64) -> usize {
        ((at.rem_euclid(period) / period * N as f64) as usize).min(N - 1)
    }

    fn offset(&self, at: f64, period: f64) -> f64 {
        let o = self.offsets[Self::bin(at, period)];
        if o.is_nan() { 0.0 } else { f64::from(o) }
    }

    fn ready(&self, at: f64, period: f64) -> bool {
        self.since.is_some_and(|s| at - s >= 2.0 * period)
    }

    fn learn(&mut self, at: f64, period: f64, offset: f64, alpha: f64) {
        self.since.get_or_insert(at);
        let o = &mut self.offsets[Self::bin(at, period)];
        *o = if o.is_nan() {
            offset as f32
        } else {
            (f64::from(*o) + alpha * (offset - f64::from(*o))) as f32
        };
    }
}

fn phase(at: f64) -> usize {
    ((at.rem_euclid(DAY) / DAY * PHASES as f64) as usize).min(PHASES - 1)
}

/// How often values were seen, overall and by phase of the day, on a grid over the range
/// seen. Counts are kept in the units of `weight` (`recent`'s in those of `recent_weight`;
/// see [`Weight`]).
#[derive(Clone, Debug)]
struct Grid {
    lo: f64,
    hi: f64,
    values: [f32; GRID],
    phased: [[f32; GRID]; PHASES],
    total: f32,
    weight: Weight,
    /// The recent distribution (half-life of a few dozen samples).
    recent: [f32; GRID],
    recent_total: f32,
    recent_weight: Weight,
}

impl Grid {
    fn new() -> Grid {
        Grid {
            lo: 0.0,
            hi: 0.0,
            values: [0.0; GRID],
            phased: [[0.0; GRID]; PHASES],
            total: 0.0,
            weight: Weight::new(),
            recent: [0.0; GRID],
            recent_total: 0.0,
            recent_weight: Weight::new(),
        }
    }

    fn bin(&self, x: f64) -> usize {
        if self.hi <= self.lo {
            return 0;
        }
        (((x - self.lo) / (self.hi - self.lo) * GRID as f64) as usize).min(GRID - 1)
    }

    /// Widen the range to hold `x` (with a margin), moving the counts to the new bins.
    fn widen(&mut self, x: f64) {
        if self.total == 0.0 {
            (self.lo, self.hi) = (x, x);
            return;
        }
        if x >= self.lo && x <= self.hi && self.hi > self.lo {
            return;
        }
        let (old_lo, old_hi) = (self.lo, self.hi);
        let (lo, hi) = if old_hi <= old_lo {
            // A flat history: open it up around the value seen, and take in `x`.
            let span = (x - old_lo).abs().max(x.abs() * 1e-6).max(1e-12);
            (old_lo.min(x) - 0.5 * span, old_hi.max(x) + 0.5 * span)
        } else if x < old_lo {
            // A margin of a tenth of the span, and at most four spans at a time: one
            // absurd value must not squeeze every normal one into a single bin (a value
            // beyond the range is as novel as can be anyway; a lasting shift widens the
            // range sample by sample).
            let span = old_hi - old_lo;
            ((x - 0.1 * span).max(old_lo - 4.0 * span), old_hi)
        } else {
            let span = old_hi - old_lo;
            (old_lo, (x + 0.1 * span).min(old_hi + 4.0 * span))
        };
        // The margin must not overflow to infinity near f64's limits.
        let (lo, hi) = (
            if lo.is_finite() { lo } else { x.min(old_lo) },
            if hi.is_finite() { hi } else { x.max(old_hi) },
        );
        if hi <= lo {
            return;
        }
        self.remap(lo, hi);
    }

    /// Narrow the range to the bins whose counts are not all but forgotten, when that gains a
    /// quarter of it at least: one value seen long ago (a glitch) must not squeeze every normal value
    /// into one bin for good.
    fn narrow(&mut self) {
        let floor = NARROW_FLOOR * self.weight.get();
        let (Some(first), Some(last)) = (
            self.values.iter().position(|v| *v > floor),
            self.values.iter().rposition(|v| *v > floor),
        ) else {
            return;
        };
        if first == 0 && last == GRID - 1 {
            return;
        }
        // Keep one bin each side of those in use, and at least half the range per step (the
        // counts move by their bins' centres, which is only fair for modest steps).
        let width = (self.hi - self.lo) / GRID as f64;
        let keep_lo = first.saturating_sub(1);
        let keep_hi = (last + 2).min(GRID);
        let mut bins = keep_hi - keep_lo;
        let mut start = keep_lo;
        if bins * 2 < GRID {
            let grow = GRID / 2 - bins;
            start = start.saturating_sub(grow / 2).min(GRID - GRID / 2);
            bins = GRID / 2;
        }
        if bins * 4 > GRID * 3 {
            return; // less than a quarter to gain
        }
        let lo = self.lo + start as f64 * width;
        // Not below a millionth of the values' size: a constant signal would otherwise halve
        // its range every look, down to rounding (where the value itself falls outside).
        if (bins as f64 * width) < 1e-6 * (1.0 + lo.abs()) {
            return;
        }
        self.remap(lo, lo + bins as f64 * width);
    }

    /// Move the counts onto a grid over `[lo, hi]`, each old bin's to the new bin holding its
    /// centre (counts outside go to the edge bins).
    fn remap(&mut self, lo: f64, hi: f64) {
        let (old_lo, old_hi) = (self.lo, self.hi);
        let centre = |i: usize| old_lo + (i as f64 + 0.5) / GRID as f64 * (old_hi - old_lo);
        // Float-to-int casts saturate: a centre below `lo` lands in bin 0.
        let map: [usize; GRID] = std::array::from_fn(|i| {
            (((centre(i) - lo) / (hi - lo) * GRID as f64) as usize).min(GRID - 1)
        });
        let mut values = [0.0; GRID];
        let mut recent = [0.0; GRID];
        let mut phased = [[0.0; GRID]; PHASES];
        for (i, &to) in map.iter().enumerate() {
            values[to] += self.values[i];
            recent[to] += self.recent[i];
            for (new, old) in phased.iter_mut().zip(&self.phased) {
                new[to] += old[i];
            }
        }
        self.values = values;
        self.recent = recent;
        self.phased = phased;
        (self.lo, self.hi) = (lo, hi);
    }

    /// (value novelty, phase novelty) of `x` at `at`: −ln of the smoothed frequency of its
    /// bin, overall and at its phase; a value outside the range seen counts as never seen.
    fn novelty(&self, x: f64, at: f64) -> (f64, f64) {
        if self.total == 0.0 {
            return (0.0, 0.0);
        }
        let outside = x < self.lo || x > self.hi;
        let b = self.bin(x);
        let count = |c: f32| if outside { 0.0 } else { f64::from(c) };
        let unit = self.weight.unit;
        let novelty =
            |c: f64, total: f64| -((c + 0.5 * unit) / (total + 0.5 * GRID as f64 * unit)).ln();
        let row = &self.phased[phase(at)];
        (
            novelty(count(self.values[b]), f64::from(self.total)),
            novelty(count(row[b]), f64::from(row.iter().sum::<f32>())),
        )
    }

    /// How far the recent distribution is from the long one: KL(recent ‖ long), smoothed.
    fn divergence(&self) -> f64 {
        if self.recent_total <= 0.0 {
            return 0.0;
        }
        let rt = f64::from(self.recent_total);
        let unit = self.weight.unit;
        let lt = f64::from(self.total) + 0.5 * GRID as f64 * unit;
        self.recent
            .iter()
            .zip(&self.values)
            .filter(|(r, _)| **r > 0.0)
            .map(|(r, l)| {
                let p = f64::from(*r) / rt;
                let q = (f64::from(*l) + 0.5 * unit) / lt;
                p * (p / q).ln()
            })
            .sum::<f64>()
            .max(0.0)
    }

    /// Count `x` seen at `at`; `growth` is `1 / decay` of the long counts.
    fn learn(&mut self, x: f64, at: f64, growth: f64) {
        self.widen(x);
        if let Some(factor) = self.recent_weight.advance(1.0 / RECENT_DECAY) {
            scale(&mut self.recent, factor);
            self.recent_total *= factor;
        }
        if let Some(factor) = self.weight.advance(growth) {
            scale(&mut self.values, factor);
            scale(self.phased.as_flattened_mut(), factor);
            self.total *= factor;
        }
        let (unit, recent) = (self.weight.get(), self.recent_weight.get());
        let b = self.bin(x);
        self.values[b] += unit;
        self.recent[b] += recent;
        self.recent_total += recent;
        self.phased[phase(at)][b] += unit;
        self.total += unit;
    }
}

/// The outcome of one observation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TailObservation {
    /// `1 − p`, in [0, 1]; 0 during warm-up and during a quiet period after an alarm.
    pub score: f64,
    /// The tail probability of this sample's surprise (1 during warm-up).
    pub p: f64,
    /// The residual against the forecast, in units of its scale.
    pub z: f64,
    /// The verdict after this sample.
    pub anomalous: bool,
    /// Whether the verdict changed with this sample.
    pub changed: bool,
}

/// The calibrated anomaly detector (see the module documentation).
#[derive(Clone, Debug)]
pub struct TailDetector {
    cfg: TailConfig,
    direction: Direction,
    /// Floor of the residual's scale, in the signal's unit.
    min_scale: f64,
    /// `1 / decay` per sample of the value counts and the calibration (a half-life of
    /// [`TailConfig::memory`] samples).
    growth: f64,
    count: u32,
    level: f64,
    /// Mean absolute residual of the forecast used.
    scale: f64,
    /// Mean absolute residual without a season.
    flat_error: f64,
    day: Season<DAY_BINS>,
    week: Season<WEEK_BINS>,
    up: f64,
    down: f64,
    /// Short average of the (directional) scaled residual.
    short: f64,
    grid: Grid,
    tails: Tails,
    /// The unit of the histograms in `tails`.
    tail_weight: Weight,
    quiet_left: u32,
    /// Surprising samples in a row.
    streak: u32,
    /// A surprising sample's statistics, not yet in the histories.
    held: Option<[f64; STATS]>,
    anomalous: bool,
}

impl TailDetector {
    /// Bytes a detector takes (all inline: no heap).
    pub const BYTES: usize = std::mem::size_of::<TailDetector>();

    /// A detector whose harmful deviations go `direction`.
    pub fn new(cfg: TailConfig, direction: Direction) -> TailDetector {
        Self::with_floor(cfg, direction, 0.0)
    }

    /// Like [`TailDetector::new`], with the residual's scale floored at `min_scale` (in the
    /// signal's unit): on a signal that is almost always the same value (an error rate of
    /// 0), a raw scale near 0 would make every small wobble look extreme.
    pub fn with_floor(cfg: TailConfig, direction: Direction, min_scale: f64) -> TailDetector {
        let growth = 2f64.powf(1.0 / f64::from(cfg.memory.max(1)));
        TailDetector {
            cfg,
            direction,
            min_scale: min_scale.max(0.0),
            growth,
            count: 0,
            level: 0.0,
            scale: 0.0,
            flat_error: 0.0,
            day: Season::new(),
            week: Season::new(),
            up: 0.0,
            down: 0.0,
            short: 0.0,
            grid: Grid::new(),
            tails: Tails {
                bounded: std::array::from_fn(|_| Tail::new()),
                cusum: Tail::new(),
            },
            tail_weight: Weight::new(),
            quiet_left: 0,
            streak: 0,
            held: None,
            anomalous: false,
        }
    }

    /// The current verdict.
    pub fn is_anomalous(&self) -> bool {
        self.anomalous
    }

    /// The forecast's seasonal offset at `at`: the candidate period with the smallest error
    /// (none while no profile has seen two periods).
    fn seasonal(&self, at: f64) -> f64 {
        let mut best = (self.flat_error, 0.0);
        if self.day.ready(at, DAY) && self.day.error < best.0 {
            best = (self.day.error, self.day.offset(at, DAY));
        }
        if self.week.ready(at, WEEK) && self.week.error < best.0 {
            best = (self.week.error, self.week.offset(at, WEEK));
        }
        best.1
    }

    /// Feed the sample `x` taken at `at` seconds (any epoch: only differences and the phase
    /// within a day and a week matter). Non-finite samples are ignored.
    pub fn observe(&mut self, at: f64, x: f64) -> TailObservation {
        self.step(at, x, true)
    }

    /// Like [`TailDetector::observe`], for a caller that wants the verdict alone: the same
    /// verdicts, but a sample that cannot raise one (closer than [`TailConfig::min_z`] to the
    /// forecast, or in the harmless direction) while none is raised skips its tail
    /// probabilities — the detector's largest cost, a pass over its five histories.
    pub fn judge(&mut self, at: f64, x: f64) -> bool {
        self.step(at, x, false).anomalous
    }

    /// One sample; `want_score`: whether the observation must carry `p` and the score even
    /// when they cannot change the verdict.
    fn step(&mut self, at: f64, x: f64, want_score: bool) -> TailObservation {
        let nothing = |anomalous| TailObservation {
            score: 0.0,
            p: 1.0,
            z: 0.0,
            anomalous,
            changed: false,
        };
        if !x.is_finite() || !at.is_finite() {
            return nothing(self.anomalous);
        }
        if self.count == 0 {
            self.level = x;
            self.count = 1;
            self.grid.learn(x, at, self.growth);
            return nothing(false);
        }
        let offset = self.seasonal(at);
        let predicted = self.level + offset;
        let residual = x - predicted;
        let scale = self
            .scale
            .max(self.min_scale)
            .max(1e-9 * (1.0 + self.level.abs()));
        // Bounded: one absurd value must not turn the statistics into inf and NaN for good.
        let z = (residual / (1.253_314 * scale)).clamp(-Z_CAP, Z_CAP);
        // The CUSUM starts once the scale means something (before, z is meaningless), and is
        // capped so that it can come down again.
        let warm = self.count >= self.cfg.warmup;
        if warm {
            let k = self.cfg.cusum_k;
            // One sample moves the CUSUM by a bounded step: it is there for what persists (a
            // single extreme value is the novelty statistics' business), and one absurd
            // value must not keep it high for a thousand samples.
            let step = z.clamp(-STEP_Z, STEP_Z);
            self.up = (self.up + step - k).clamp(0.0, CUSUM_CAP);
            self.down = (self.down - step - k).clamp(0.0, CUSUM_CAP);
        }
        let (harmful, dir, cusum) = match self.direction {
            Direction::Above => (residual > 0.0, z.max(0.0), self.up),
            Direction::Below => (residual < 0.0, (-z).max(0.0), self.down),
            Direction::Both => (true, z.abs(), self.up.max(self.down)),
        };
        self.short += 0.25 * (dir.min(STEP_Z) - self.short);
        let (value, phased) = self.grid.novelty(x, at);
        // Novelty in the harmless direction is no news.
        let novel = |n: f64| if harmful { n } else { 0.0 };
        let stats = [
            novel(value),
            novel(phased),
            cusum,
            self.short,
            self.grid.divergence(),
        ];
        // Scored once the statistics' histories hold half a warm-up's worth.
        let scored = self.count >= self.cfg.warmup.saturating_add(self.cfg.warmup / 2);
        let matters = want_score || self.anomalous || dir >= self.cfg.min_z;
        let p = if scored && matters {
            let least = self.tails.least_p(&stats, self.tail_weight.get());
            (least * STATS as f64).min(1.0)
        } else {
            1.0
        };
        let surprising = p < self.cfg.alarm && dir >= self.cfg.min_z;
        // The statistics' histories start once the scale means something. A surprise that
        // may start a verdict is held back until the next sample: that one is judged against
        // the same history, so a lasting surprise can confirm itself (`confirm = 2`), and
        // a lone one joins the history after all.
        if warm {
            let hold = surprising && self.cfg.confirm > 1 && self.held.is_none();
            if let Some(h) = self.held.take() {
                self.remember(h);
            }
            if hold {
                self.held = Some(stats);
            } else {
                self.remember(stats);
            }
        }
        self.learn(at, x, residual, scale, warm);

        // Episodes: one alarm, then a quiet period; the verdict lasts while the surprise does.
        let before = self.anomalous;
        let mut score = 1.0 - p;
        if self.quiet_left > 0 {
            self.quiet_left -= 1;
            score = 0.0;
        }
        self.streak = if surprising {
            self.streak.saturating_add(1)
        } else {
            0
        };
        if !self.anomalous && self.streak >= self.cfg.confirm && self.quiet_left == 0 {
            self.anomalous = true;
            self.quiet_left = self.cfg.quiet;
            score = 1.0 - p;
        } else if self.anomalous && p >= (10.0 * self.cfg.alarm).min(0.5) && self.short < HOLD_Z {
            self.anomalous = false;
        }
        TailObservation {
            score,
            p,
            z,
            anomalous: self.anomalous,
            changed: before != self.anomalous,
        }
    }

    fn remember(&mut self, stats: [f64; STATS]) {
        let rescale = self.tail_weight.advance(self.growth);
        self.tails.add(&stats, self.tail_weight.get(), rescale);
    }

    /// Learn from a sample: the level follows the deseasonalised value (a clipped step once
    /// warm), the seasons their offsets, each candidate its forecast error, the grid the value.
    fn learn(&mut self, at: f64, x: f64, residual: f64, scale: f64, warmed: bool) {
        let a = self.cfg.alpha.max(1.0 / (f64::from(self.count) + 1.0));
        let flat = x - self.level;
        let day = flat - self.day.offset(at, DAY);
        let week = flat - self.week.offset(at, WEEK);
        self.flat_error += a * (flat.abs() - self.flat_error);
        self.day.error += a * (day.abs() - self.day.error);
        self.week.error += a * (week.abs() - self.week.error);
        let bound = 4.0 * 1.253_314 * scale;
        let (step, spread) = if warmed {
            (residual.clamp(-bound, bound), residual.abs().min(bound))
        } else {
            (residual, residual.abs())
        };
        self.scale += a * (spread - self.scale);
        self.level += a * step;
        let sa = self.cfg.season_alpha;
        self.day.learn(at, DAY, x - self.level, sa);
        self.week.learn(at, WEEK, x - self.level, sa);
        self.grid.learn(x, at, self.growth);
        if self.count.is_multiple_of(NARROW_EVERY) {
            self.grid.narrow();
        }
        self.count = self.count.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The default alarm level: only values beyond the history raise it, so that clean
    /// noise raises none.
    fn det(direction: Direction) -> TailDetector {
        TailDetector::new(TailConfig::default(), direction)
    }

    /// One extreme sample is enough (`confirm = 1`).
    fn fast(direction: Direction) -> TailDetector {
        let cfg = TailConfig {
            confirm: 1,
            ..TailConfig::default()
        };
        TailDetector::new(cfg, direction)
    }

    fn noise(i: u32) -> f64 {
        // A deterministic, irregular wobble in [-1, 1].
        let x = (f64::from(i) * 12.9898).sin() * 43_758.545;
        2.0 * (x - x.floor()) - 1.0
    }

    fn at(i: u32) -> f64 {
        f64::from(i) * 300.0
    }

    #[test]
    fn a_spike_scores_near_one_and_raises_the_verdict_once() {
        // By default one sample is not enough; two in a row are.
        let mut d = det(Direction::Both);
        for i in 0..1_000 {
            d.observe(at(i), 100.0 + noise(i));
        }
        let mut e = d.clone();
        assert!(!d.observe(at(1_000), 130.0).anomalous);
        assert!(d.observe(at(1_001), 130.0).anomalous);
        // A lone spike joins the history: the same value again later is less of a surprise.
        assert!(!e.observe(at(1_000), 130.0).anomalous);
        assert!(!e.observe(at(1_001), 100.0).anomalous);
        let again = e.observe(at(1_002), 130.0);
        assert!(again.p > 1e-4, "{again:?}");
        // With confirm = 1, the spike alone.
        let mut d = fast(Direction::Both);
        for i in 0..1_000 {
            let o = d.observe(at(i), 100.0 + noise(i));
            assert!(!o.anomalous, "false alarm at {i}: {o:?}");
        }
        let o = d.observe(at(1_000), 130.0);
        assert!(o.score > 0.999, "{o:?}");
        assert!(o.anomalous && o.changed);
        // Back to normal: the verdict clears; the quiet period scores nothing new.
        let mut cleared = false;
        for i in 1_001..1_100 {
            let o = d.observe(at(i), 100.0 + noise(i));
            assert_eq!(o.score, 0.0, "{o:?}");
            cleared |= !o.anomalous;
        }
        assert!(cleared);
    }

    #[test]
    fn weighted_counts_match_counts_decayed_every_sample() {
        // A half-life of 10 samples: the unit passes 2^64 every 640 samples, so 20,000
        // samples rescale the histogram 31 times.
        let growth = 2f64.powf(0.1);
        let decay = 1.0 / growth;
        let (mut tail, mut weight) = (Tail::<HIST_BINS>::new(), Weight::new());
        let mut eager = [0f64; HIST_BINS];
        let mut rescaled = 0;
        for i in 0..20_000u32 {
            let s = 40.0 * (noise(i) + 1.0);
            let rescale = weight.advance(growth);
            rescaled += usize::from(rescale.is_some());
            tail.add(s, weight.get(), rescale);
            for b in &mut eager {
                *b *= decay;
            }
            eager[Tail::<HIST_BINS>::bin(s).0] += 1.0;
            if i % 997 == 0 {
                let total: f64 = eager.iter().sum();
                for probe in [0.0, 3.0, 20.0, 79.0, 500.0] {
                    let (j, frac) = Tail::<HIST_BINS>::bin(probe);
                    let above: f64 = eager[j + 1..].iter().sum::<f64>() + eager[j] * (1.0 - frac);
                    let top = eager.iter().rposition(|b| *b > 0.01).unwrap_or(0);
                    let pseudo = if j > top || (j == top && above < 0.01) {
                        (-((j as f64 + frac) - (top + 1) as f64).max(0.0) / 2.0).exp()
                    } else {
                        1.0
                    };
                    let want = (above + pseudo) / (total + 1.0);
                    let got = tail.p(probe, weight.get());
                    assert!(
                        (got - want).abs() <= 1e-5 * want + 1e-9,
                        "sample {i}, s = {probe}: {got} against {want}"
                    );
                }
            }
        }
        assert_eq!(rescaled, 31);
    }

    #[test]
    fn judging_alone_gives_the_verdicts_of_a_full_observation() {
        // Noise, then spikes, dips, a level shift and a drift, on every direction and on the
        // health model's settings as on NAB's.
        let series = |i: u32| {
            let base = 100.0 + 3.0 * noise(i);
            match i {
                3_000..3_010 | 3_400 | 3_800..3_802 => base + 40.0,
                3_900..3_905 => base - 40.0,
                4_000..6_000 => base + 15.0,
                6_000.. => base + f64::from(i - 6_000) * 0.05,
                _ => base,
            }
        };
        let nab = TailConfig {
            alarm: 0.005,
            min_z: 0.0,
            confirm: 1,
            ..TailConfig::default()
        };
        for cfg in [TailConfig::default(), nab] {
            for direction in [Direction::Above, Direction::Below, Direction::Both] {
                let mut full = TailDetector::new(cfg.clone(), direction);
                let mut verdict = full.clone();
                let mut raised = 0;
                for i in 0..8_000 {
                    let o = full.observe(at(i), series(i));
                    assert_eq!(
                        verdict.judge(at(i), series(i)),
                        o.anomalous,
                        "{direction:?}, sample {i}, {cfg:?}"
                    );
                    raised += usize::from(o.changed && o.anomalous);
                }
                assert!(
                    raised > 0,
                    "{direction:?} raised nothing: the test proves little"
                );
            }
        }
    }

    #[test]
    fn the_bounded_statistics_never_reach_the_last_bin_of_their_histories() {
        // The largest memory allowed gives the largest total weight, and with it the
        // largest novelty and divergence: ln(2·total + 16).
        let growth = 2f64.powf(1.0 / 1_000_000.0);
        let total = 1.0 / (1.0 - 1.0 / growth) + 1.0;
        let worst = (2.0 * total + 16.0).ln();
        assert!(worst > 14.0, "{worst}");
        for s in [worst, STEP_Z] {
            let (i, _) = Tail::<HIST_BINS>::bin(s);
            assert!(i < BOUNDED_BINS - 1, "{s} falls in bin {i}");
        }
        // A novelty (phase or value) at its largest, on a detector of the largest memory.
        let cfg = TailConfig {
            memory: 1_000_000,
            ..TailConfig::default()
        };
        let mut d = TailDetector::new(cfg, Direction::Both);
        for i in 0..1_000 {
            d.observe(at(i), 100.0 + noise(i));
        }
        let (value, phased) = d.grid.novelty(1e9, at(1_000));
        assert!(value <= worst && phased <= worst, "{value} {phased}");
        assert!(d.grid.divergence() <= worst);
    }

    #[test]
    fn a_short_memory_rescales_and_still_raises_on_a_spike() {
        let cfg = TailConfig {
            memory: 10,
            confirm: 1,
            ..TailConfig::default()
        };
        let mut d = TailDetector::new(cfg, Direction::Both);
        for i in 0..20_000 {
            d.observe(at(i), 100.0 + noise(i));
        }
        assert!(d.tail_weight.unit < RESCALE_ABOVE && d.grid.weight.unit < RESCALE_ABOVE);
        let o = d.observe(at(20_000), 130.0);
        assert!(o.anomalous && o.p.is_finite(), "{o:?}");
    }

    #[test]
    fn an_absurd_value_does_not_break_the_detector() {
        let mut d = fast(Direction::Both);
        for i in 0..1_000 {
            d.observe(at(i), 100.0 + noise(i));
        }
        assert!(d.observe(at(1_000), 1e308).anomalous);

        let mut cleared = false;
        for i in 1_001..3_000 {
            let o = d.observe(at(i), 100.0 + noise(i));
            assert!(o.score.is_finite() && o.p.is_finite(), "{o:?}");
            cleared |= !o.anomalous;
        }
        assert!(cleared, "the verdict never cleared after one absurd value");
        // The glitch widened the grid by a few spans at most, and it narrows back: a jump
        // within the old range is news again.
        assert!(
            d.grid.hi < 1_000.0,
            "the grid spans {} to {}",
            d.grid.lo,
            d.grid.hi
        );
        // (The calibration remembers the glitch as long as its weight there is not
        // negligible: 7.5 half-lives.)
        for i in 3_000..17_000 {
            d.observe(at(i), 100.0 + noise(i));
        }
        assert!(
            d.grid.hi < 110.0,
            "the grid spans {} to {}",
            d.grid.lo,
            d.grid.hi
        );
        assert!(d.observe(at(17_000), 130.0).anomalous);
    }

    #[test]
    fn a_constant_signal_keeps_a_grid_that_a_step_can_be_placed_on() {
        let mut d = fast(Direction::Both);
        for i in 0..100_000 {
            d.observe(at(i), 0.0);
        }
        let span = d.grid.hi - d.grid.lo;
        // The width a flat history opens the grid to (1e-12), and no narrower.
        assert!(
            span > 0.5e-12 && span.is_finite(),
            "the grid narrowed to {span}"
        );
        assert!(
            d.grid.lo <= 0.0 && 0.0 <= d.grid.hi,
            "{} .. {}",
            d.grid.lo,
            d.grid.hi
        );
        assert!(d.observe(at(100_000), 5.0).anomalous);
    }

    #[test]
    fn the_harmless_direction_raises_nothing() {
        let mut d = fast(Direction::Above);
        for i in 0..1_000 {
            d.observe(at(i), 100.0 + noise(i));
        }
        let o = d.observe(at(1_000), 40.0);
        assert!(!o.anomalous, "{o:?}");
        let o = d.observe(at(1_001), 160.0);
        assert!(o.anomalous, "{o:?}");
    }

    #[test]
    fn a_level_shift_alarms_then_becomes_normal() {
        let mut d = det(Direction::Both);
        for i in 0..1_000 {
            d.observe(at(i), 100.0 + noise(i));
        }
        let mut raised = 0;
        let mut late = 0;
        for i in 1_000..6_000 {
            let o = d.observe(at(i), 110.0 + noise(i));
            if o.changed && o.anomalous {
                raised += 1;
                if i > 3_000 {
                    late += 1;
                }
            }
        }
        assert!(raised >= 1, "the shift was never reported");
        assert_eq!(late, 0, "still alarming long after the shift");
        assert!(!d.is_anomalous());
    }

    #[test]
    fn a_daily_cycle_is_learnt_and_a_missing_peak_is_news() {
        // NAB's alarm level: calibrated, it flags about one sample in 200 of what is merely
        // unusual, so the clean cycle is judged by the share of samples flagged.
        let cfg = TailConfig {
            alarm: 0.005,
            ..TailConfig::default()
        };
        let mut d = TailDetector::new(cfg, Direction::Both);
        let day = |i: u32, x: f64| {
            let phase = (at(i) % DAY) / DAY;
            x + 40.0 * (phase * std::f64::consts::TAU).sin() + noise(i)
        };
        let mut flagged = 0;
        for i in 0..(14 * 288) {
            let o = d.observe(at(i), day(i, 100.0));
            if i >= 7 * 288 && o.anomalous {
                flagged += 1;
            }
        }
        assert!(
            flagged <= 7 * 288 / 100,
            "{flagged} samples flagged on a clean daily cycle"
        );
        // The morning's peak stays flat: a value seen every day, but not at this hour.
        let mut raised = false;
        for i in (14 * 288)..(14 * 288 + 144) {
            raised |= d.observe(at(i), 100.0 - 30.0 + noise(i)).anomalous;
        }
        assert!(raised, "a missing daily peak went unnoticed");
    }

    #[test]
    fn memory_stays_within_four_kib_and_config_errors_name_the_field() {
        const { assert!(TailDetector::BYTES <= 4_096) };
        let c = TailConfig {
            alarm: 0.0,
            ..TailConfig::default()
        };
        assert_eq!(
            c.validate("anomaly.tail").unwrap_err().field,
            "anomaly.tail.alarm"
        );
        let c = TailConfig {
            memory: 3,
            ..TailConfig::default()
        };
        assert_eq!(
            c.validate("anomaly.tail").unwrap_err().field,
            "anomaly.tail.memory"
        );
        for bad in [
            TailConfig {
                warmup: 0,
                ..TailConfig::default()
            },
            TailConfig {
                memory: u32::MAX,
                ..TailConfig::default()
            },
            TailConfig {
                cusum_k: 0.0,
                ..TailConfig::default()
            },
            TailConfig {
                quiet: u32::MAX,
                ..TailConfig::default()
            },
        ] {
            assert!(bad.validate("t").is_err(), "{bad:?}");
        }
        assert!(TailConfig::default().validate("anomaly.tail").is_ok());
    }
}
