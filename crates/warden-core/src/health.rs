//! The health score: one number, 0–100, summarising an agent's signals.
//!
//! ## The default formula, and why
//!
//! Each reported signal `s` is mapped to a *penalty* `p_s ∈ [0, 1]` by a linear ramp between a
//! `good` value (no penalty at or beyond it) and a `bad` value (full penalty at or beyond it);
//! the ramp may run either way, so "higher is worse" (CPU, error rate) and "lower is worse"
//! (task success) use the same rule. Each signal has a weight `w_s ∈ [0, 1]`: the largest share
//! of the score that this signal *alone* can take away. The shares compound:
//!
//! ```text
//! score = 100 · Π_s (1 − w_s · p_s)        over the signals the agent reported
//! ```
//!
//! Why multiplicative rather than a weighted mean: a weighted mean dilutes a single disaster (an
//! agent whose tasks fail every health check would still score 80 if six other signals looked
//! fine), while a product lets one severe signal push the agent under the threshold and lets
//! several moderate problems add up. Why weights as "largest share": they read directly as
//! policy — with the defaults, a saturated CPU alone (w = 0.30) leaves the agent Healthy at 70
//! (busy is not broken), but a saturated CPU *and* memory above 97 % (w = 0.45) give
//! 100 · 0.70 · 0.55 = 38.5, Degraded. Error rate and task success (w = 0.60) can each make an
//! agent Degraded on their own, because they measure the work itself rather than a resource.
//! Signals an agent does not report are left out, not assumed perfect or terrible. CPU
//! utilisation and pressure stall information measure the same contention, so they count once,
//! as the larger of their two shares: a busy host is not penalised twice for one cause.
//!
//! | signal | good | bad | weight |
//! |---|---|---|---|
//! | cpu (0–1) | 0.85 | 0.98 | 0.30 |
//! | memory (0–1) | 0.85 | 0.97 | 0.45 |
//! | error_rate (0–1) | 0.01 | 0.20 | 0.60 |
//! | latency_ms (p99) | 250 | 2000 | 0.45 |
//! | task_success (0–1) | 0.99 | 0.50 | 0.60 |
//! | restarts (per window) | 0 | 5 | 0.45 |
//! | pressure (PSI some avg10, 0–100) | 10 | 60 | 0.45 |
//!
//! An agent is Healthy when its score is at least `healthy_threshold` (default 60) and Degraded
//! below it. To leave Degraded the score must climb `recover_margin` (default 5) points above the
//! threshold, so a score hovering at 59–61 does not flap.

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, check_range};
use crate::types::{SignalKind, Signals};

/// How one signal contributes to the score.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalWeight {
    /// Value at or beyond which the signal costs nothing.
    pub good: f64,
    /// Value at or beyond which the signal costs its full weight.
    pub bad: f64,
    /// Largest share of the score (0–1) this signal alone can take away. 0 disables it.
    pub weight: f64,
}

impl SignalWeight {
    const fn new(good: f64, bad: f64, weight: f64) -> Self {
        SignalWeight { good, bad, weight }
    }

    /// Penalty in `[0, 1]` for `value`.
    pub fn penalty(&self, value: f64) -> f64 {
        ((value - self.good) / (self.bad - self.good)).clamp(0.0, 1.0)
    }
}

/// Weights and thresholds of the health score. See the module docs for the formula.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Host CPU utilisation, 0–1.
    pub cpu: SignalWeight,
    /// Host memory utilisation, 0–1.
    pub memory: SignalWeight,
    /// Task error rate, 0–1.
    pub error_rate: SignalWeight,
    /// Task p99 latency, milliseconds.
    pub latency: SignalWeight,
    /// Task health-check success rate, 0–1 (lower is worse).
    pub task_success: SignalWeight,
    /// Local task restarts per reporting window.
    pub restarts: SignalWeight,
    /// Linux PSI `some avg10`, 0–100.
    pub pressure: SignalWeight,
    /// Score at or above which an agent is Healthy (default 60).
    pub healthy_threshold: f64,
    /// Points above the threshold needed to leave Degraded (default 5).
    pub recover_margin: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            cpu: SignalWeight::new(0.85, 0.98, 0.30),
            memory: SignalWeight::new(0.85, 0.97, 0.45),
            error_rate: SignalWeight::new(0.01, 0.20, 0.60),
            latency: SignalWeight::new(250.0, 2000.0, 0.45),
            task_success: SignalWeight::new(0.99, 0.50, 0.60),
            restarts: SignalWeight::new(0.0, 5.0, 0.45),
            pressure: SignalWeight::new(10.0, 60.0, 0.45),
            healthy_threshold: 60.0,
            recover_margin: 5.0,
        }
    }
}

impl HealthConfig {
    /// The weight of one signal kind.
    pub fn weight(&self, kind: SignalKind) -> &SignalWeight {
        match kind {
            SignalKind::Cpu => &self.cpu,
            SignalKind::Memory => &self.memory,
            SignalKind::ErrorRate => &self.error_rate,
            SignalKind::Latency => &self.latency,
            SignalKind::TaskSuccess => &self.task_success,
            SignalKind::Restarts => &self.restarts,
            SignalKind::Pressure => &self.pressure,
        }
    }

    /// Reject impossible settings, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for kind in SignalKind::ALL {
            let w = self.weight(kind);
            let field = kind.as_str();
            if !(w.weight.is_finite() && (0.0..=1.0).contains(&w.weight)) {
                return Err(ConfigError::new(
                    format!("health.{field}.weight"),
                    format!(
                        "must be between 0 and 1 (the largest share of the score this signal can take), got {}",
                        w.weight
                    ),
                ));
            }
            if !(w.good.is_finite() && w.bad.is_finite()) || w.good == w.bad {
                return Err(ConfigError::new(
                    format!("health.{field}.bad"),
                    "`good` and `bad` must be finite and different",
                ));
            }
        }
        check_range(
            "health.healthy_threshold",
            self.healthy_threshold,
            1.0,
            100.0,
        )?;
        check_range("health.recover_margin", self.recover_margin, 0.0, 50.0)?;
        if self.healthy_threshold + self.recover_margin > 100.0 {
            return Err(ConfigError::new(
                "health.recover_margin",
                "healthy_threshold + recover_margin exceeds 100: a Degraded agent could never recover",
            ));
        }
        Ok(())
    }

    /// The score of a set of signals.
    pub fn score(&self, signals: &Signals) -> HealthScore {
        let mut score = 100.0;
        // CPU utilisation and pressure stall both measure contention for the same resource:
        // they count once, as the larger of their two shares, instead of compounding.
        let mut contention: f64 = 0.0;
        for (kind, value) in signals.iter() {
            let w = self.weight(kind);
            let share = w.weight * w.penalty(value);
            match kind {
                SignalKind::Cpu | SignalKind::Pressure => contention = contention.max(share),
                SignalKind::Memory
                | SignalKind::ErrorRate
                | SignalKind::Latency
                | SignalKind::TaskSuccess
                | SignalKind::Restarts => score *= 1.0 - share,
            }
        }
        HealthScore(score * (1.0 - contention))
    }

    /// Whether an agent with `score` counts as healthy, given whether it is Degraded now
    /// (leaving Degraded needs the recovery margin).
    pub fn is_healthy(&self, score: HealthScore, currently_degraded: bool) -> bool {
        let bar = if currently_degraded {
            self.healthy_threshold + self.recover_margin
        } else {
            self.healthy_threshold
        };
        score.0 >= bar
    }
}

/// A health score, 0 (broken) to 100 (perfect).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HealthScore(pub f64);

impl HealthScore {
    /// The score of an agent that reported nothing yet.
    pub const PERFECT: HealthScore = HealthScore(100.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(f: impl FnOnce(&mut Signals)) -> Signals {
        let mut s = Signals::default();
        f(&mut s);
        s
    }

    #[test]
    fn default_thresholds_table() {
        let cfg = HealthConfig::default();
        // (signals, expected score, healthy?)
        let cases: Vec<(Signals, f64, bool)> = vec![
            (Signals::default(), 100.0, true),
            (sig(|s| s.cpu = Some(0.5)), 100.0, true),
            (sig(|s| s.cpu = Some(1.0)), 70.0, true),
            (sig(|s| s.error_rate = Some(0.5)), 40.0, false),
            (sig(|s| s.task_success = Some(0.2)), 40.0, false),
            (
                sig(|s| {
                    s.cpu = Some(1.0);
                    s.memory = Some(0.99);
                }),
                38.5,
                false,
            ),
            (sig(|s| s.latency_ms = Some(1125.0)), 77.5, true),
            // CPU and pressure are one contention signal: the larger share, not both.
            (
                sig(|s| {
                    s.cpu = Some(1.0);
                    s.pressure = Some(35.0);
                }),
                70.0,
                true,
            ),
            (
                sig(|s| {
                    s.cpu = Some(1.0);
                    s.pressure = Some(100.0);
                }),
                55.0,
                false,
            ),
            (sig(|s| s.cpu = Some(f64::NAN)), 100.0, true),
        ];
        for (signals, expected, healthy) in cases {
            let score = cfg.score(&signals);
            assert!(
                (score.0 - expected).abs() < 1e-9,
                "{signals:?}: {score:?} != {expected}"
            );
            assert_eq!(cfg.is_healthy(score, false), healthy, "{signals:?}");
        }
    }

    #[test]
    fn leaving_degraded_needs_the_margin() {
        let cfg = HealthConfig::default();
        assert!(cfg.is_healthy(HealthScore(62.0), false));
        assert!(!cfg.is_healthy(HealthScore(62.0), true));
        assert!(cfg.is_healthy(HealthScore(65.0), true));
    }

    #[test]
    fn validation_names_the_field() {
        let mut cfg = HealthConfig::default();
        cfg.cpu.weight = 1.5;
        assert_eq!(
            cfg.validate().expect_err("weight").field,
            "health.cpu.weight"
        );
        let mut cfg = HealthConfig::default();
        cfg.latency.bad = cfg.latency.good;
        assert_eq!(
            cfg.validate().expect_err("ramp").field,
            "health.latency.bad"
        );
        let cfg = HealthConfig {
            healthy_threshold: 0.0,
            ..HealthConfig::default()
        };
        assert_eq!(
            cfg.validate().expect_err("thr").field,
            "health.healthy_threshold"
        );
        let cfg = HealthConfig {
            healthy_threshold: 98.0,
            ..HealthConfig::default()
        };
        assert_eq!(
            cfg.validate().expect_err("margin").field,
            "health.recover_margin"
        );
        assert!(HealthConfig::default().validate().is_ok());
    }
}
