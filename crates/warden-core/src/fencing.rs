//! The fencing rule: when may a replacement for a singleton start?
//!
//! A singleton that ran on agent A may be started elsewhere only when the old copy is surely
//! gone. Two facts establish that, and nothing else does (in particular, probes that find A
//! *alive* never delay it — an alive agent past its lease has fenced itself):
//!
//! 1. **A's lease has surely run out on A's own clock.** The server measures from when it sent
//!    A's last acknowledgement, on its own monotonic clock. A measures its lease from when it
//!    *sent* the heartbeat that ack answered, which is earlier — so A's lease ends no later than
//!    `last_ack_sent + L` by A's clock. Clock *rates* may differ by at most `ρ` (drift bound),
//!    so on the server's clock A's lease has ended by `last_ack_sent + L·(1 + ρ)`. A then needs
//!    up to `kill_grace` to kill the task (the shim's deadline fires, the process group is
//!    killed). Hence: `now ≥ last_ack_sent + L·(1 + ρ) + kill_grace`.
//! 2. **A's process is confirmed dead on a live host**: its session was reset and its probe port
//!    refuses connections (the kernel answered for a process that no longer exists). The shim
//!    sees its pipe close at the same moment and kills the task; after `kill_grace` it is gone.
//!
//! Replicas of a service need neither: a brief duplicate is harmless, so they are replaced as
//! soon as A is declared Failed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration_serde;
use crate::error::ConfigError;
use crate::time::{Time, mul_duration};

/// Settings of the fencing rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FencingConfig {
    /// Lease time to live `L` granted with every ack (default 2 s).
    #[serde(with = "duration_serde")]
    pub lease_ttl: Duration,
    /// Bound `ρ` on the relative clock-rate drift between server and agent (default 0.05: 5 %,
    /// far above real crystal drift of ~0.01 %, to cover VMs whose clocks are steered).
    pub drift_bound: f64,
    /// Time the agent side needs to kill a fenced task (default 250 ms).
    #[serde(with = "duration_serde")]
    pub kill_grace: Duration,
}

impl Default for FencingConfig {
    fn default() -> Self {
        FencingConfig {
            lease_ttl: Duration::from_secs(2),
            drift_bound: 0.05,
            kill_grace: Duration::from_millis(250),
        }
    }
}

impl FencingConfig {
    /// Reject impossible settings, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.lease_ttl.is_zero() {
            return Err(ConfigError::new("lease_ttl", "must be greater than zero"));
        }
        if !(self.drift_bound.is_finite() && (0.0..1.0).contains(&self.drift_bound)) {
            return Err(ConfigError::new("drift_bound", "must be in [0, 1)"));
        }
        if self.kill_grace > Duration::from_secs(60) {
            return Err(ConfigError::new("kill_grace", "must be at most 60s"));
        }
        Ok(())
    }

    /// When a lease last renewed (ack sent) at `last_ack_sent` has surely ended on the agent's
    /// clock and the agent has had `kill_grace` to act on it.
    pub fn lease_surely_expired_at(&self, last_ack_sent: Time) -> Time {
        last_ack_sent + mul_duration(self.lease_ttl, 1.0 + self.drift_bound) + self.kill_grace
    }
}

/// What the server knows about the old agent's death.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeathEvidence {
    /// Nothing beyond silence.
    None,
    /// Session reset and probe port refused at `at`: the process is gone, the host is up.
    ProcessGone {
        /// When the evidence was complete.
        at: Time,
    },
}

/// The verdict of the fencing rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplacementVerdict {
    /// The replacement may start now.
    Allowed(AllowedBecause),
    /// Not yet; ask again at `until` (the rule will allow it then unless new evidence comes).
    Wait {
        /// Earliest instant at which the replacement is allowed.
        until: Time,
    },
}

/// Which of the two facts allowed the replacement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllowedBecause {
    /// The old lease has surely run out.
    LeaseExpired,
    /// The old process is confirmed dead on a live host.
    ProcessGone,
}

/// Decide whether a singleton replacement may start at `now`, for an old copy on an agent whose
/// last ack the server sent at `last_ack_sent` (`None`: the agent never got one, so it never
/// held a lease and cannot be running anything).
pub fn singleton_replacement(
    cfg: &FencingConfig,
    last_ack_sent: Option<Time>,
    evidence: DeathEvidence,
    now: Time,
) -> ReplacementVerdict {
    let Some(last_ack_sent) = last_ack_sent else {
        return ReplacementVerdict::Allowed(AllowedBecause::LeaseExpired);
    };
    let lease_done = cfg.lease_surely_expired_at(last_ack_sent);
    if now >= lease_done {
        return ReplacementVerdict::Allowed(AllowedBecause::LeaseExpired);
    }
    match evidence {
        DeathEvidence::ProcessGone { at } => {
            let done = at + cfg.kill_grace;
            if now >= done {
                ReplacementVerdict::Allowed(AllowedBecause::ProcessGone)
            } else {
                ReplacementVerdict::Wait {
                    until: done.min(lease_done),
                }
            }
        }
        DeathEvidence::None => ReplacementVerdict::Wait { until: lease_done },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Time {
        Time::from_millis(v)
    }

    #[test]
    fn rule_table() {
        let cfg = FencingConfig::default(); // L = 2 s, ρ = 0.05, grace 250 ms → 2350 ms
        let cases = [
            (
                Some(ms(1000)),
                DeathEvidence::None,
                ms(3349),
                ReplacementVerdict::Wait { until: ms(3350) },
            ),
            (
                Some(ms(1000)),
                DeathEvidence::None,
                ms(3350),
                ReplacementVerdict::Allowed(AllowedBecause::LeaseExpired),
            ),
            (
                Some(ms(1000)),
                DeathEvidence::ProcessGone { at: ms(1100) },
                ms(1349),
                ReplacementVerdict::Wait { until: ms(1350) },
            ),
            (
                Some(ms(1000)),
                DeathEvidence::ProcessGone { at: ms(1100) },
                ms(1350),
                ReplacementVerdict::Allowed(AllowedBecause::ProcessGone),
            ),
            // Evidence that arrives after the lease ran out changes nothing.
            (
                Some(ms(1000)),
                DeathEvidence::ProcessGone { at: ms(3300) },
                ms(3400),
                ReplacementVerdict::Allowed(AllowedBecause::LeaseExpired),
            ),
            (
                None,
                DeathEvidence::None,
                ms(0),
                ReplacementVerdict::Allowed(AllowedBecause::LeaseExpired),
            ),
        ];
        for (ack, ev, now, want) in cases {
            assert_eq!(
                singleton_replacement(&cfg, ack, ev, now),
                want,
                "{ack:?} {ev:?} {now:?}"
            );
        }
    }

    #[test]
    fn validation_names_the_field() {
        let c = FencingConfig {
            lease_ttl: Duration::ZERO,
            ..FencingConfig::default()
        };
        assert_eq!(c.validate().expect_err("ttl").field, "lease_ttl");
        let c = FencingConfig {
            drift_bound: 1.5,
            ..FencingConfig::default()
        };
        assert_eq!(c.validate().expect_err("rho").field, "drift_bound");
    }
}
