//! Liveness detectors: given the arrival times of an agent's heartbeats, decide whether the agent
//! is suspected. All detectors share the [`LivenessDetector`] trait so the runtime, the chaos
//! harness and the QoS evaluation ([`crate::qos`]) can use any of them.
//!
//! A detector's state changes only when a heartbeat arrives. Between arrivals its verdict is a
//! function of `now` alone, and each detector can say exactly when it *will* start suspecting
//! ([`LivenessDetector::suspect_at`]). The runtime uses that to arm one timer instead of
//! polling, and the evaluation uses it to replay hours of trace in microseconds.

mod fixed;
mod phi;
mod two_window;

pub use fixed::{FixedTimeout, FixedTimeoutConfig};
pub use phi::{PhiAccrual, PhiConfig};
pub use two_window::{TwoWindow, TwoWindowConfig};

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::time::Time;

/// A heartbeat failure detector for one agent generation.
pub trait LivenessDetector {
    /// Record heartbeat number `seq` (the agent numbers them 1, 2, 3, … in send order) arriving
    /// at `at`. Arrivals must be fed in time order; a `seq` not larger than the last one seen is
    /// a duplicate or reordered beat and is ignored.
    fn heartbeat(&mut self, seq: u64, at: Time);

    /// Suspicion level at `now` on the detector's own scale (φ for phi accrual, multiples of the
    /// timeout for the others). Zero before the first heartbeat. Non-decreasing in `now`
    /// between two heartbeats.
    fn suspicion(&self, now: Time) -> f64;

    /// The earliest instant at which the detector suspects the agent unless another heartbeat
    /// arrives first; `None` before the first heartbeat.
    fn suspect_at(&self) -> Option<Time>;

    /// Whether the agent is suspected at `now`.
    fn is_suspect(&self, now: Time) -> bool {
        self.suspect_at().is_some_and(|t| now >= t)
    }

    /// Short name for reports.
    fn name(&self) -> &'static str;
}

/// Which detector to run, with its settings. This is what configuration files select.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DetectorConfig {
    /// Suspect after `k` missed intervals.
    FixedTimeout(FixedTimeoutConfig),
    /// Phi accrual (the default).
    PhiAccrual(PhiConfig),
    /// Two-window Chen estimator with a safety margin.
    TwoWindow(TwoWindowConfig),
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig::PhiAccrual(PhiConfig::default())
    }
}

impl DetectorConfig {
    /// Check the settings, naming the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            DetectorConfig::FixedTimeout(c) => c.validate(),
            DetectorConfig::PhiAccrual(c) => c.validate(),
            DetectorConfig::TwoWindow(c) => c.validate(),
        }
    }

    /// A fresh detector with these settings.
    pub fn build(&self) -> Detector {
        match self {
            DetectorConfig::FixedTimeout(c) => Detector::FixedTimeout(FixedTimeout::new(c.clone())),
            DetectorConfig::PhiAccrual(c) => Detector::PhiAccrual(PhiAccrual::new(c.clone())),
            DetectorConfig::TwoWindow(c) => Detector::TwoWindow(TwoWindow::new(c.clone())),
        }
    }
}

/// Any detector, by value (enum dispatch: no allocation, no virtual call on the heartbeat path).
#[derive(Clone, Debug)]
pub enum Detector {
    /// See [`FixedTimeout`].
    FixedTimeout(FixedTimeout),
    /// See [`PhiAccrual`].
    PhiAccrual(PhiAccrual),
    /// See [`TwoWindow`].
    TwoWindow(TwoWindow),
}

impl LivenessDetector for Detector {
    fn heartbeat(&mut self, seq: u64, at: Time) {
        match self {
            Detector::FixedTimeout(d) => d.heartbeat(seq, at),
            Detector::PhiAccrual(d) => d.heartbeat(seq, at),
            Detector::TwoWindow(d) => d.heartbeat(seq, at),
        }
    }
    fn suspicion(&self, now: Time) -> f64 {
        match self {
            Detector::FixedTimeout(d) => d.suspicion(now),
            Detector::PhiAccrual(d) => d.suspicion(now),
            Detector::TwoWindow(d) => d.suspicion(now),
        }
    }
    fn suspect_at(&self) -> Option<Time> {
        match self {
            Detector::FixedTimeout(d) => d.suspect_at(),
            Detector::PhiAccrual(d) => d.suspect_at(),
            Detector::TwoWindow(d) => d.suspect_at(),
        }
    }
    fn name(&self) -> &'static str {
        match self {
            Detector::FixedTimeout(d) => d.name(),
            Detector::PhiAccrual(d) => d.name(),
            Detector::TwoWindow(d) => d.name(),
        }
    }
}
