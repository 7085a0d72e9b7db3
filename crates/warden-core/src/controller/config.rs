//! The controller's settings (`warden server --print-config` shows them under `[control]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration_serde;
use crate::error::ConfigError;
use crate::lifecycle::LifecycleConfig;
use crate::planner::PlannerConfig;

/// Settings of the controller. Defaults: 500 ms heartbeats, 2 s lease.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// Lifecycle: detector, health score, lease, brake, flap damping.
    pub lifecycle: LifecycleConfig,
    /// Planner: backoff.
    pub planner: PlannerConfig,
    /// How often the fleet is ticked and the desired state reconciled (default 50 ms).
    #[serde(with = "duration_serde")]
    pub tick: Duration,
    /// Timeout of one probe (default 500 ms).
    #[serde(with = "duration_serde")]
    pub probe_timeout: Duration,
    /// Healthy agents asked to probe a suspect on the server's behalf (default 2).
    pub indirect_probes: usize,
    /// Reschedules per second allowed on average (default 50).
    pub reschedule_rate: f64,
    /// Reschedules allowed in a burst (default 200).
    pub reschedule_burst: u32,
    /// Grace between SIGTERM and SIGKILL when a task is stopped (default 5 s).
    #[serde(with = "duration_serde")]
    pub stop_grace: Duration,
    /// How long an ended agent generation (Failed or Left) stays in memory, for the API, the
    /// dashboard and recovery records, once no task slot refers to it any more (default 1 h).
    /// Beyond it the generation is forgotten, so memory does not grow with churn.
    #[serde(with = "duration_serde", default = "default_forget_after")]
    pub forget_after: Duration,
}

fn default_forget_after() -> Duration {
    Duration::from_secs(3600)
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            lifecycle: LifecycleConfig::default(),
            planner: PlannerConfig::default(),
            tick: Duration::from_millis(50),
            probe_timeout: Duration::from_millis(500),
            indirect_probes: 2,
            reschedule_rate: 50.0,
            reschedule_burst: 200,
            stop_grace: Duration::from_secs(5),
            forget_after: default_forget_after(),
        }
    }
}

impl ControllerConfig {
    /// Reject impossible settings, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.lifecycle.validate()?;
        self.planner.validate().map_err(|e| e.within("planner"))?;
        if self.planner.fencing != self.lifecycle.fencing {
            return Err(ConfigError::new(
                "planner.fencing",
                "must equal lifecycle.fencing (set the lease once, under [lifecycle.fencing])",
            ));
        }
        if self.tick.is_zero() || self.tick > Duration::from_secs(1) {
            return Err(ConfigError::new("tick", "must be between 1ms and 1s"));
        }
        if self.probe_timeout.is_zero() {
            return Err(ConfigError::new(
                "probe_timeout",
                "must be greater than zero",
            ));
        }
        if !(self.reschedule_rate.is_finite() && self.reschedule_rate > 0.0) {
            return Err(ConfigError::new(
                "reschedule_rate",
                "must be greater than zero",
            ));
        }
        if self.forget_after < Duration::from_secs(1) {
            return Err(ConfigError::new("forget_after", "must be at least 1s"));
        }
        Ok(())
    }

    /// The settings with the planner's lease taken from the lifecycle's, where it is set.
    #[must_use]
    pub fn normalized(mut self) -> Self {
        self.planner.fencing = self.lifecycle.fencing.clone();
        self
    }

    /// A gap between ticks longer than this means the runtime itself was stalled.
    pub fn stall_after(&self) -> Duration {
        (self.tick * 8).max(Duration::from_millis(400))
    }
}

/// How long an order may go unanswered before it is sent again.
pub const RESEND_AFTER: Duration = Duration::from_secs(1);

/// How often a standby reloads its view of jobs and task slots from the store.
pub const STANDBY_REFRESH: Duration = Duration::from_secs(1);

/// How long verdicts are held after a stall of the runtime.
pub const STALL_HOLD: Duration = Duration::from_secs(1);

/// Longest time between two plans, whatever changed: a safety net under the change tracking
/// (every input the plan depends on marks it due, and a plan says when time alone will change
/// it), kept long because a plan costs every slot of every job.
pub const MAX_PLAN_INTERVAL: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let bad = ControllerConfig {
            tick: Duration::ZERO,
            ..ControllerConfig::default()
        };
        assert_eq!(bad.validate().expect_err("tick").field, "tick");
        let bad = ControllerConfig {
            forget_after: Duration::from_millis(10),
            ..ControllerConfig::default()
        };
        assert_eq!(bad.validate().expect_err("forget").field, "forget_after");
        let mut bad = ControllerConfig::default();
        bad.planner.fencing.lease_ttl = Duration::from_secs(9);
        assert_eq!(bad.validate().expect_err("lease").field, "planner.fencing");
        assert!(bad.normalized().validate().is_ok());
    }
}
