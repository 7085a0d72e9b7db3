//! The fixed-timeout detector: suspect an agent once `k` heartbeat intervals have passed
//! without hearing from it.
//!
//! It is the classic baseline (and what many systems still ship): trivial to explain and to
//! predict, but blind to the network it runs on. A timeout short enough for fast detection on a
//! calm network raises false alarms on a lossy one, and a timeout safe for the worst network
//! detects slowly everywhere. Warden keeps it for comparison ([`crate::qos`]) and for
//! operators who want a hard, explainable bound.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::LivenessDetector;
use crate::error::ConfigError;
use crate::time::{Time, duration_nanos};

/// Settings of [`FixedTimeout`]: suspect after `missed × interval` of silence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FixedTimeoutConfig {
    /// The agents' heartbeat interval.
    #[serde(with = "crate::duration_serde")]
    pub interval: Duration,
    /// How many intervals may pass without a heartbeat (`k`) before the agent is suspected.
    /// 3 tolerates two consecutive lost heartbeats plus up to one interval of delay.
    pub missed: u32,
}

impl Default for FixedTimeoutConfig {
    fn default() -> Self {
        FixedTimeoutConfig {
            interval: Duration::from_millis(500),
            missed: 3,
        }
    }
}

/// The longest timeout accepted. Anything beyond a day is a typo (e.g. a bare number read as
/// milliseconds where seconds were meant ten thousand times over), not a policy.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

impl FixedTimeoutConfig {
    /// The silence after which the agent is suspected: `missed × interval`.
    pub fn timeout(&self) -> Duration {
        self.interval.saturating_mul(self.missed)
    }

    /// Check the settings, naming the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval.is_zero() {
            return Err(ConfigError::new(
                "fixed_timeout.interval",
                "must be greater than zero",
            ));
        }
        if self.missed == 0 {
            return Err(ConfigError::new(
                "fixed_timeout.missed",
                "must be at least 1 (0 would suspect every agent at every instant)",
            ));
        }
        if self.timeout() > MAX_TIMEOUT {
            return Err(ConfigError::new(
                "fixed_timeout.missed",
                format!(
                    "interval × missed is {:?}, more than the maximum of {:?}",
                    self.timeout(),
                    MAX_TIMEOUT
                ),
            ));
        }
        Ok(())
    }
}

/// Suspects the agent when `now − last_arrival >= missed × interval`.
#[derive(Clone, Debug)]
pub struct FixedTimeout {
    timeout: Duration,
    /// The timeout in nanoseconds, at least 1 so the suspicion ratio is always defined.
    timeout_nanos: u64,
    last_seq: Option<u64>,
    last_arrival: Option<Time>,
}

impl FixedTimeout {
    /// A detector with these settings. Expects a validated config; a zero timeout is treated
    /// as one nanosecond rather than panicking.
    pub fn new(cfg: FixedTimeoutConfig) -> Self {
        let timeout = cfg.timeout().max(Duration::from_nanos(1));
        FixedTimeout {
            timeout,
            timeout_nanos: duration_nanos(timeout),
            last_seq: None,
            last_arrival: None,
        }
    }

    /// The fixed timeout this detector applies.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// When the last accepted heartbeat arrived.
    pub fn last_arrival(&self) -> Option<Time> {
        self.last_arrival
    }
}

impl LivenessDetector for FixedTimeout {
    fn heartbeat(&mut self, seq: u64, at: Time) {
        if self.last_seq.is_some_and(|last| seq <= last) {
            return;
        }
        self.last_seq = Some(seq);
        self.last_arrival = Some(at);
    }

    /// Elapsed silence as a multiple of the timeout: `1.0` is the suspicion point.
    fn suspicion(&self, now: Time) -> f64 {
        match self.last_arrival {
            None => 0.0,
            Some(last) => {
                now.as_nanos().saturating_sub(last.as_nanos()) as f64 / self.timeout_nanos as f64
            }
        }
    }

    fn suspect_at(&self) -> Option<Time> {
        self.last_arrival.map(|last| last + self.timeout)
    }

    fn name(&self) -> &'static str {
        "fixed_timeout"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Time {
        Time::from_millis(v)
    }

    #[test]
    fn suspects_after_k_intervals_not_before() {
        struct Case {
            interval_ms: u64,
            missed: u32,
            arrivals: &'static [(u64, u64)],
            now_ms: u64,
            suspect: bool,
        }
        let cases = [
            // Default 3 × 500 ms after a single beat.
            Case {
                interval_ms: 500,
                missed: 3,
                arrivals: &[(1, 0)],
                now_ms: 1_499,
                suspect: false,
            },
            Case {
                interval_ms: 500,
                missed: 3,
                arrivals: &[(1, 0)],
                now_ms: 1_500,
                suspect: true,
            },
            // The clock restarts at every accepted beat.
            Case {
                interval_ms: 500,
                missed: 3,
                arrivals: &[(1, 0), (2, 500), (3, 1_000)],
                now_ms: 2_400,
                suspect: false,
            },
            Case {
                interval_ms: 500,
                missed: 3,
                arrivals: &[(1, 0), (2, 500), (3, 1_000)],
                now_ms: 2_500,
                suspect: true,
            },
            // A duplicate (seq not increasing) does not reset the clock.
            Case {
                interval_ms: 500,
                missed: 3,
                arrivals: &[(5, 0), (5, 1_000), (4, 1_200)],
                now_ms: 1_500,
                suspect: true,
            },
            // k = 1, 5 s baseline.
            Case {
                interval_ms: 5_000,
                missed: 1,
                arrivals: &[(1, 0)],
                now_ms: 4_999,
                suspect: false,
            },
            Case {
                interval_ms: 5_000,
                missed: 3,
                arrivals: &[(1, 0)],
                now_ms: 15_000,
                suspect: true,
            },
            // Nothing heard yet: never suspected (the lifecycle handles agents that never
            // report; a detector has nothing to measure).
            Case {
                interval_ms: 500,
                missed: 3,
                arrivals: &[],
                now_ms: 1_000_000,
                suspect: false,
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            let mut d = FixedTimeout::new(FixedTimeoutConfig {
                interval: Duration::from_millis(c.interval_ms),
                missed: c.missed,
            });
            for &(seq, at) in c.arrivals {
                d.heartbeat(seq, ms(at));
            }
            assert_eq!(d.is_suspect(ms(c.now_ms)), c.suspect, "case {i}");
            assert_eq!(
                d.suspicion(ms(c.now_ms)) >= 1.0,
                c.suspect,
                "case {i} suspicion"
            );
        }
    }

    #[test]
    fn suspicion_is_elapsed_over_timeout() {
        let mut d = FixedTimeout::new(FixedTimeoutConfig::default());
        assert_eq!(d.suspicion(ms(10)), 0.0);
        assert_eq!(d.suspect_at(), None);
        d.heartbeat(1, ms(1_000));
        assert_eq!(d.suspicion(ms(1_000)), 0.0);
        assert!((d.suspicion(ms(1_750)) - 0.5).abs() < 1e-12);
        assert_eq!(d.suspect_at(), Some(ms(2_500)));
        // Before the last arrival (caller's clock skew within one process is impossible, but
        // the function must stay total).
        assert_eq!(d.suspicion(ms(500)), 0.0);
    }

    #[test]
    fn validation_names_the_field() {
        let bad_interval = FixedTimeoutConfig {
            interval: Duration::ZERO,
            missed: 3,
        };
        assert_eq!(
            bad_interval.validate().map_err(|e| e.field),
            Err("fixed_timeout.interval".into())
        );
        let bad_missed = FixedTimeoutConfig {
            missed: 0,
            ..FixedTimeoutConfig::default()
        };
        assert_eq!(
            bad_missed.validate().map_err(|e| e.field),
            Err("fixed_timeout.missed".into())
        );
        let too_long = FixedTimeoutConfig {
            interval: Duration::from_secs(3600),
            missed: 25,
        };
        assert_eq!(
            too_long.validate().map_err(|e| e.field),
            Err("fixed_timeout.missed".into())
        );
        assert_eq!(FixedTimeoutConfig::default().validate(), Ok(()));
    }
}
