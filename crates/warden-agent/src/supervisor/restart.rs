//! Local restart decisions: exponential backoff, and a cap on restarts within a sliding
//! window after which the task is reported Failed rather than restarted forever. Pure: time
//! is an argument.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::RestartPolicy;

/// What to do after a task crashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Restart after `after`; this is restart number `attempt` within the window.
    Restart { attempt: u32, after: Duration },
    /// Too many restarts within the window: give up.
    GiveUp { restarts: u32 },
}

/// Restarts of one task within the policy's window.
#[derive(Debug)]
pub(crate) struct RestartTracker {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
}

impl RestartTracker {
    pub(crate) fn new(policy: RestartPolicy) -> Self {
        RestartTracker {
            policy,
            recent: VecDeque::new(),
        }
    }

    /// The task crashed at `now`.
    pub(crate) fn on_crash(&mut self, now: Instant) -> Decision {
        while self
            .recent
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= self.policy.window)
        {
            self.recent.pop_front();
        }
        let restarts = u32::try_from(self.recent.len()).unwrap_or(u32::MAX);
        if restarts >= self.policy.max_restarts {
            return Decision::GiveUp { restarts };
        }
        self.recent.push_back(now);
        let attempt = restarts + 1;
        let factor = 2u32.saturating_pow(attempt - 1);
        let after = self
            .policy
            .initial_backoff
            .saturating_mul(factor)
            .min(self.policy.max_backoff);
        Decision::Restart { attempt, after }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            max_restarts: 4,
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_then_gives_up() {
        let t0 = Instant::now();
        let mut tracker = RestartTracker::new(policy());
        let got: Vec<Decision> = (0..6)
            .map(|i| tracker.on_crash(t0 + Duration::from_secs(i)))
            .collect();
        let ms = Duration::from_millis;
        assert_eq!(
            got,
            vec![
                Decision::Restart {
                    attempt: 1,
                    after: ms(100)
                },
                Decision::Restart {
                    attempt: 2,
                    after: ms(200)
                },
                Decision::Restart {
                    attempt: 3,
                    after: ms(350)
                },
                Decision::Restart {
                    attempt: 4,
                    after: ms(350)
                },
                Decision::GiveUp { restarts: 4 },
                Decision::GiveUp { restarts: 4 },
            ]
        );
    }

    #[test]
    fn crashes_outside_the_window_are_forgotten() {
        let t0 = Instant::now();
        let mut tracker = RestartTracker::new(policy());
        for i in 0..4 {
            tracker.on_crash(t0 + Duration::from_secs(i));
        }
        // 60 s after the first two crashes they no longer count: two slots are free again
        // and the backoff is back to the third step.
        assert_eq!(
            tracker.on_crash(t0 + Duration::from_secs(61)),
            Decision::Restart {
                attempt: 3,
                after: Duration::from_millis(350)
            }
        );
    }

    #[test]
    fn zero_restarts_means_fail_at_once() {
        let mut tracker = RestartTracker::new(RestartPolicy {
            max_restarts: 0,
            ..policy()
        });
        assert_eq!(
            tracker.on_crash(Instant::now()),
            Decision::GiveUp { restarts: 0 }
        );
    }
}
