//! Temporary stand-in while the real detector is written.
use super::LivenessDetector;
use crate::error::ConfigError;
use crate::time::Time;
use serde::{Deserialize, Serialize};
/// Settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TwoWindowConfig {}
impl TwoWindowConfig {
    /// Validate.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}
/// Detector.
#[derive(Clone, Debug)]
pub struct TwoWindow {
    last: Option<Time>,
}
impl TwoWindow {
    /// New.
    pub fn new(_c: TwoWindowConfig) -> Self {
        Self { last: None }
    }
}
impl LivenessDetector for TwoWindow {
    fn heartbeat(&mut self, _seq: u64, at: Time) {
        self.last = Some(at);
    }
    fn suspicion(&self, _now: Time) -> f64 {
        0.0
    }
    fn suspect_at(&self) -> Option<Time> {
        self.last
            .map(|t| t + std::time::Duration::from_millis(1500))
    }
    fn name(&self) -> &'static str {
        "stub"
    }
}
