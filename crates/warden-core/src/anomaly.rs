//! Adaptive anomaly detection on one signal: "is this value unusual *for this agent*?"
//!
//! The classic adaptive threshold keeps an exponentially weighted moving average (EWMA) of the
//! mean and variance and flags a sample whose z-score `(x − μ) / σ` exceeds a threshold. On its
//! own it has three well-known faults, each fixed here:
//!
//! - **Cold start**: with few samples μ and σ mean nothing. The detector says nothing until it
//!   has seen `warmup` samples.
//! - **Outliers poison the baseline**: one huge value inflates σ for a long time, hiding the
//!   next real anomaly. Samples are *winsorized* before they update the baseline: clipped to
//!   `μ ± clip·σ`. A lasting level shift still moves the baseline (step by step), so it becomes
//!   the new normal instead of alarming forever.
//! - **Single spikes flap the verdict**: the verdict uses hysteresis. It turns anomalous when at
//!   least `k` of the last `n` samples exceeded the threshold, and clears only when none of the
//!   last `n` did.
//!
//! A floor on σ (`min_std`, in the signal's own unit) stops a perfectly flat signal from
//! turning a tiny wobble into an infinite z-score. Only the harmful direction counts (CPU going
//! up, task success going down), chosen by [`Direction`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, check_range};
use crate::tail::{TailConfig, TailDetector};
use crate::types::{SignalKind, Signals};

/// Which deviations count as anomalous.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Only values above the baseline.
    Above,
    /// Only values below the baseline.
    Below,
    /// Both.
    Both,
}

impl Direction {
    /// The harmful direction for a signal kind.
    pub fn harmful(kind: SignalKind) -> Direction {
        match kind {
            SignalKind::TaskSuccess => Direction::Below,
            SignalKind::Cpu
            | SignalKind::Memory
            | SignalKind::ErrorRate
            | SignalKind::Latency
            | SignalKind::Restarts
            | SignalKind::Pressure => Direction::Above,
        }
    }
}

/// Which anomaly detector watches the signals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectorKind {
    /// The calibrated detector ([`crate::tail`]): tail probabilities against each signal's
    /// own history, seasons found from the data, one alarm per episode.
    #[default]
    Tail,
    /// The EWMA z-score detector of this module (kept for comparison).
    Ewma,
}

/// Settings of the signals' anomaly detection: which detector, and the settings of each.
/// The EWMA detector's settings sit at the top level (as before the calibrated detector
/// existed), the calibrated one's under `tail`, with per-signal overrides under
/// `signals.<name>` (`cpu`, `memory`, `error_rate`, `latency`, `task_success`, `restarts`,
/// `pressure`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyConfig {
    /// `tail` (default) or `ewma`.
    pub detector: DetectorKind,
    /// EWMA smoothing factor in (0, 1]; larger follows changes faster (default 0.05, about a
    /// 20-sample memory).
    pub alpha: f64,
    /// |z| above which a sample counts as exceeding (default 4).
    pub z_threshold: f64,
    /// Samples before any verdict (default 30).
    pub warmup: u32,
    /// Exceeding samples among the last `n` that turn the verdict anomalous (default 3).
    pub k: u32,
    /// Length of the hysteresis window (default 5, at most 32).
    pub n: u32,
    /// Winsorizing bound, in standard deviations, for baseline updates (default 3).
    pub clip: f64,
    /// Settings of the calibrated detector, for every signal without its own.
    pub tail: TailConfig,
    /// Settings of the calibrated detector for one signal, by signal name.
    pub signals: BTreeMap<String, TailConfig>,
    /// Agents judge their own signals with these settings (sent in each session's Welcome)
    /// and send their verdicts with every heartbeat; the server then keeps no detector for
    /// them (default true: about 3 KiB and a detector's work per signal and heartbeat moved
    /// off the server). false: the server judges every agent's signals itself. An agent that
    /// does not judge (an older one) is judged by the server either way.
    pub on_agents: bool,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            alpha: 0.05,
            z_threshold: 4.0,
            warmup: 30,
            k: 3,
            n: 5,
            clip: 3.0,
            detector: DetectorKind::Tail,
            tail: TailConfig::default(),
            signals: BTreeMap::new(),
            on_agents: true,
        }
    }
}

impl AnomalyConfig {
    /// Reject impossible settings, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.alpha.is_finite() && self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err(ConfigError::new("anomaly.alpha", "must be in (0, 1]"));
        }
        check_range("anomaly.z_threshold", self.z_threshold, 0.5, 100.0)?;
        check_range("anomaly.clip", self.clip, 0.5, 100.0)?;
        if self.n == 0 || self.n > 32 {
            return Err(ConfigError::new("anomaly.n", "must be between 1 and 32"));
        }
        if self.k == 0 || self.k > self.n {
            return Err(ConfigError::new(
                "anomaly.k",
                "must be between 1 and anomaly.n",
            ));
        }
        self.tail.validate("anomaly.tail")?;
        for (name, cfg) in &self.signals {
            if !SignalKind::ALL.iter().any(|k| k.as_str() == name) {
                let known: Vec<&str> = SignalKind::ALL.iter().map(|k| k.as_str()).collect();
                return Err(ConfigError::new(
                    format!("anomaly.signals.{name}"),
                    format!("is not a signal; the signals are {}", known.join(", ")),
                ));
            }
            cfg.validate(&format!("anomaly.signals.{name}"))?;
        }
        Ok(())
    }

    /// The calibrated detector's settings for `kind`.
    pub fn tail_for(&self, kind: SignalKind) -> &TailConfig {
        self.signals.get(kind.as_str()).unwrap_or(&self.tail)
    }

    /// The default σ floor for a signal kind, in its own unit.
    pub fn min_std(kind: SignalKind) -> f64 {
        match kind {
            SignalKind::Cpu => 0.05,
            SignalKind::Memory => 0.02,
            SignalKind::ErrorRate => 0.01,
            SignalKind::Latency => 20.0,
            SignalKind::TaskSuccess => 0.02,
            SignalKind::Restarts => 0.5,
            SignalKind::Pressure => 5.0,
        }
    }
}

/// The outcome of one observation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation {
    /// z-score of the sample against the baseline before it (computed during warm-up too,
    /// when the baseline means little; 0 for the first sample and a non-finite one).
    pub z: f64,
    /// Whether this sample exceeded the threshold in the harmful direction.
    pub exceeded: bool,
    /// The verdict after this sample.
    pub anomalous: bool,
    /// Whether the verdict changed with this sample.
    pub changed: bool,
}

/// EWMA z-score detector with warm-up, winsorized updates and k-of-n hysteresis.
#[derive(Clone, Debug)]
pub struct AnomalyDetector {
    cfg: AnomalyConfig,
    direction: Direction,
    min_std: f64,
    mean: f64,
    var: f64,
    count: u32,
    /// Bit i set: the sample i observations ago exceeded.
    recent: u32,
    anomalous: bool,
}

impl AnomalyDetector {
    /// A detector for values whose harmful deviations go `direction`, with σ floored at
    /// `min_std`.
    pub fn new(cfg: AnomalyConfig, direction: Direction, min_std: f64) -> Self {
        AnomalyDetector {
            cfg,
            direction,
            min_std: min_std.max(f64::MIN_POSITIVE),
            mean: 0.0,
            var: 0.0,
            count: 0,
            recent: 0,
            anomalous: false,
        }
    }

    /// A detector for one signal kind with its default direction and σ floor.
    pub fn for_signal(cfg: AnomalyConfig, kind: SignalKind) -> Self {
        Self::new(cfg, Direction::harmful(kind), AnomalyConfig::min_std(kind))
    }

    /// The current verdict.
    pub fn is_anomalous(&self) -> bool {
        self.anomalous
    }

    /// Baseline mean.
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Baseline standard deviation (with the floor applied).
    pub fn std_dev(&self) -> f64 {
        self.var.sqrt().max(self.min_std)
    }

    /// Feed one sample. Non-finite samples are ignored.
    pub fn observe(&mut self, x: f64) -> Observation {
        if !x.is_finite() {
            return Observation {
                z: 0.0,
                exceeded: false,
                anomalous: self.anomalous,
                changed: false,
            };
        }
        if self.count == 0 {
            self.mean = x;
            self.count = 1;
            return Observation {
                z: 0.0,
                exceeded: false,
                anomalous: false,
                changed: false,
            };
        }
        let std = self.std_dev();
        let z = (x - self.mean) / std;
        let warmed_up = self.count >= self.cfg.warmup;
        let exceeded = warmed_up
            && match self.direction {
                Direction::Above => z > self.cfg.z_threshold,
                Direction::Below => z < -self.cfg.z_threshold,
                Direction::Both => z.abs() > self.cfg.z_threshold,
            };

        // Winsorized EWMA update of mean and variance (West's incremental form).
        let bound = self.cfg.clip * std;
        let clipped = if warmed_up {
            x.clamp(self.mean - bound, self.mean + bound)
        } else {
            x
        };
        let a = self.cfg.alpha.max(1.0 / f64::from(self.count + 1));
        let diff = clipped - self.mean;
        self.mean += a * diff;
        self.var = (1.0 - a) * (self.var + a * diff * diff);
        self.count = self.count.saturating_add(1);

        let mask = if self.cfg.n >= 32 {
            u32::MAX
        } else {
            (1u32 << self.cfg.n) - 1
        };
        self.recent = ((self.recent << 1) | u32::from(exceeded)) & mask;
        let hits = self.recent.count_ones();
        let before = self.anomalous;
        if !self.anomalous && hits >= self.cfg.k {
            self.anomalous = true;
        } else if self.anomalous && hits == 0 {
            self.anomalous = false;
        }
        Observation {
            z,
            exceeded,
            anomalous: self.anomalous,
            changed: before != self.anomalous,
        }
    }
}

/// A set of signal kinds (an agent's anomalous signals), one bit per kind in the order of
/// [`SignalKind::ALL`] — as the session protocol carries it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SignalSet(u8);

impl SignalSet {
    /// No signal.
    pub const EMPTY: SignalSet = SignalSet(0);

    fn bit(kind: SignalKind) -> u8 {
        let i = SignalKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        1 << i
    }

    /// The set with `kind` in it.
    #[must_use]
    pub fn with(self, kind: SignalKind) -> SignalSet {
        SignalSet(self.0 | Self::bit(kind))
    }

    /// Whether `kind` is in it.
    pub fn contains(self, kind: SignalKind) -> bool {
        self.0 & Self::bit(kind) != 0
    }

    /// The kinds in it, in the order of [`SignalKind::ALL`].
    pub fn iter(self) -> impl Iterator<Item = SignalKind> {
        SignalKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }

    /// The wire form: one bit per kind.
    pub fn bits(self) -> u32 {
        u32::from(self.0)
    }

    /// From the wire form; bits beyond the known kinds are ignored.
    pub fn from_bits(bits: u32) -> SignalSet {
        let known = (1u32 << SignalKind::ALL.len()) - 1;
        SignalSet(u8::try_from(bits & known).unwrap_or(0))
    }
}

/// An agent's own anomaly detectors over its signals, with the settings its server sent: what
/// an agent that judges its signals keeps (the server then keeps none for it).
#[derive(Clone, Debug)]
pub struct SignalJudge {
    cfg: AnomalyConfig,
    detectors: [Option<SignalDetector>; SignalKind::ALL.len()],
}

impl SignalJudge {
    /// Detectors with these settings, each made at its signal's first sample.
    pub fn new(cfg: AnomalyConfig) -> SignalJudge {
        SignalJudge {
            cfg,
            detectors: [const { None }; SignalKind::ALL.len()],
        }
    }

    /// The settings.
    pub fn config(&self) -> &AnomalyConfig {
        &self.cfg
    }

    /// Judge the signals sampled at `at_secs` (seconds on a clock that does not jump):
    /// the signals held anomalous after them.
    pub fn judge(&mut self, at_secs: f64, signals: &Signals) -> SignalSet {
        let mut set = SignalSet::EMPTY;
        for (kind, det) in SignalKind::ALL.into_iter().zip(&mut self.detectors) {
            if let Some(v) = signals.get(kind) {
                det.get_or_insert_with(|| SignalDetector::for_signal(&self.cfg, kind))
                    .judge(at_secs, v);
            }
            if det.as_ref().is_some_and(SignalDetector::is_anomalous) {
                set = set.with(kind);
            }
        }
        set
    }
}

/// The anomaly detector of one signal, as [`AnomalyConfig::detector`] chose it.
#[derive(Clone, Debug)]
pub enum SignalDetector {
    /// The calibrated detector (boxed: about 3 KiB).
    Tail(Box<TailDetector>),
    /// The EWMA z-score detector (boxed too: it carries its settings, and an agent keeps one
    /// slot per signal kind, most of them empty).
    Ewma(Box<AnomalyDetector>),
}

impl SignalDetector {
    /// The detector for signal `kind`, in its harmful direction.
    pub fn for_signal(cfg: &AnomalyConfig, kind: SignalKind) -> SignalDetector {
        match cfg.detector {
            DetectorKind::Tail => SignalDetector::Tail(Box::new(TailDetector::with_floor(
                cfg.tail_for(kind).clone(),
                Direction::harmful(kind),
                AnomalyConfig::min_std(kind),
            ))),
            DetectorKind::Ewma => {
                SignalDetector::Ewma(Box::new(AnomalyDetector::for_signal(cfg.clone(), kind)))
            }
        }
    }

    /// Feed the value `x` seen at `at_secs` (seconds on any clock); returns the verdict.
    pub fn judge(&mut self, at_secs: f64, x: f64) -> bool {
        match self {
            SignalDetector::Tail(d) => d.judge(at_secs, x),
            SignalDetector::Ewma(d) => d.observe(x).anomalous,
        }
    }

    /// The current verdict.
    pub fn is_anomalous(&self) -> bool {
        match self {
            SignalDetector::Tail(d) => d.is_anomalous(),
            SignalDetector::Ewma(d) => d.is_anomalous(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_set_keeps_one_bit_per_kind_in_the_order_of_the_signals() {
        let set = SignalSet::EMPTY
            .with(SignalKind::Pressure)
            .with(SignalKind::Cpu);
        assert_eq!(set.bits(), 1 | 1 << 6);
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            vec![SignalKind::Cpu, SignalKind::Pressure]
        );
        assert!(!set.contains(SignalKind::Memory));
        assert_eq!(SignalSet::from_bits(set.bits() | 1 << 31), set);
        for (i, kind) in SignalKind::ALL.into_iter().enumerate() {
            assert_eq!(
                SignalSet::from_bits(1 << i).iter().collect::<Vec<_>>(),
                vec![kind]
            );
        }
    }

    fn warmed(values: impl IntoIterator<Item = f64>) -> AnomalyDetector {
        let mut d = AnomalyDetector::for_signal(AnomalyConfig::default(), SignalKind::Latency);
        for v in values {
            d.observe(v);
        }
        d
    }

    fn baseline() -> impl Iterator<Item = f64> {
        (0..200).map(|i| 100.0 + f64::from(i % 7) * 3.0)
    }

    #[test]
    fn silent_during_warmup() {
        let mut d = AnomalyDetector::for_signal(AnomalyConfig::default(), SignalKind::Latency);
        for _ in 0..10 {
            d.observe(100.0);
        }
        for _ in 0..10 {
            assert!(!d.observe(10_000.0).exceeded);
        }
        assert!(!d.is_anomalous());
    }

    #[test]
    fn single_spike_does_not_flip_the_verdict() {
        let mut d = warmed(baseline());
        let o = d.observe(5_000.0);
        assert!(o.exceeded);
        assert!(!o.anomalous);
        // The spike barely moved the baseline thanks to winsorizing.
        assert!(d.mean() < 115.0, "mean {}", d.mean());
        assert!(!d.observe(105.0).anomalous);
    }

    #[test]
    fn k_of_n_raises_and_quiet_window_clears() {
        let mut d = warmed(baseline());
        let verdicts: Vec<bool> = [900.0, 100.0, 900.0, 900.0]
            .iter()
            .map(|&v| d.observe(v).anomalous)
            .collect();
        assert_eq!(verdicts, vec![false, false, false, true]);
        // Stays anomalous until n quiet samples in a row.
        for i in 0..4 {
            assert!(d.observe(100.0).anomalous, "cleared too early at {i}");
        }
        let o = d.observe(100.0);
        assert!(!o.anomalous && o.changed);
    }

    #[test]
    fn harmless_direction_is_ignored() {
        let mut d = warmed(baseline());
        for _ in 0..10 {
            assert!(!d.observe(0.0).anomalous);
        }
        let mut s = AnomalyDetector::for_signal(AnomalyConfig::default(), SignalKind::TaskSuccess);
        for _ in 0..100 {
            s.observe(1.0);
        }
        let hits: Vec<bool> = (0..3).map(|_| s.observe(0.5).anomalous).collect();
        assert_eq!(hits, vec![false, false, true]);
    }

    #[test]
    fn a_lasting_level_shift_becomes_the_new_normal() {
        let mut d = warmed(baseline());
        let mut cleared_at = None;
        for i in 0..2_000 {
            let o = d.observe(400.0);
            if i > 5 && !o.anomalous {
                cleared_at = Some(i);
                break;
            }
        }
        assert!(
            cleared_at.is_some(),
            "baseline never adapted; mean {}",
            d.mean()
        );
    }

    #[test]
    fn config_validation() {
        let bad = |f: fn(&mut AnomalyConfig), field: &str| {
            let mut c = AnomalyConfig::default();
            f(&mut c);
            assert_eq!(c.validate().expect_err(field).field, field);
        };
        bad(|c| c.alpha = 0.0, "anomaly.alpha");
        bad(|c| c.k = 9, "anomaly.k");
        bad(|c| c.n = 40, "anomaly.n");
        bad(|c| c.z_threshold = f64::NAN, "anomaly.z_threshold");
        assert!(AnomalyConfig::default().validate().is_ok());
    }
}
