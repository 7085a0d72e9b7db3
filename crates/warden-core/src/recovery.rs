//! Recovery records: what happened each time work was moved, and how long it took.
//!
//! A record follows one recovery operation from the moment Warden first doubted the agent to
//! the moment the replacement was healthy. The time split tells operators which knob to turn:
//!
//! ```text
//! last_heartbeat_at ─ detection ─► detected_at ─ confirmation ─► declared_failed_at
//!   ─ fencing wait ─► replacement_ordered_at ─ start-up ─► replacement_started_at
//!   ─► replacement_healthy_at
//! ```
//!
//! **RTO** is measured from `detected_at` to `replacement_healthy_at`: the server cannot know
//! the instant of the fault, only when it first noticed. `outage_upper_bound` adds the time
//! back to the last heartbeat, which bounds the true outage from above. (The chaos harness knows
//! the real fault time and reports RTO from it.)

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::lifecycle::Cause;
use crate::planner::OperationId;
use crate::qos::percentile;
use crate::time::Time;
use crate::types::{AgentId, FencingToken, TaskId};

/// How a recovery ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Still under way.
    InProgress,
    /// The replacement runs (and passes its health check, if it has one).
    Succeeded,
    /// The replacement failed or could not be placed.
    Failed,
    /// A newer operation replaced this one before it finished.
    Superseded,
}

/// One recovery operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecoveryRecord {
    /// Operation id of the reschedule.
    pub op: OperationId,
    /// The task moved.
    pub task: TaskId,
    /// Its new fencing token.
    pub epoch: FencingToken,
    /// Agent it was lost on.
    pub from: AgentId,
    /// Agent it moved to (`None` while no agent had room).
    pub to: Option<AgentId>,
    /// Last heartbeat from `from`.
    pub last_heartbeat_at: Option<Time>,
    /// When `from` turned Suspect.
    pub detected_at: Time,
    /// When `from` was declared Failed.
    pub declared_failed_at: Time,
    /// When the replacement was ordered (after the fencing rule allowed it).
    pub replacement_ordered_at: Time,
    /// When the new agent reported the replacement running.
    pub replacement_started_at: Option<Time>,
    /// When the replacement passed its health check (or ran, without one).
    pub replacement_healthy_at: Option<Time>,
    /// How it ended.
    pub outcome: Outcome,
    /// Why `from` was declared Failed.
    pub cause: Cause,
}

/// The phases of a recovery, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TimeSplit {
    /// Last heartbeat → Suspect.
    pub detection: Option<Duration>,
    /// Suspect → Failed.
    pub confirmation: Duration,
    /// Failed → replacement ordered (the fencing rule's wait).
    pub fencing_wait: Duration,
    /// Ordered → healthy.
    pub start_up: Option<Duration>,
}

impl RecoveryRecord {
    /// Recovery time: detection to a healthy replacement, once known.
    pub fn rto(&self) -> Option<Duration> {
        self.replacement_healthy_at
            .map(|h| h.saturating_since(self.detected_at))
    }

    /// An upper bound on the outage: last heartbeat to a healthy replacement.
    pub fn outage_upper_bound(&self) -> Option<Duration> {
        let start = self.last_heartbeat_at.unwrap_or(self.detected_at);
        self.replacement_healthy_at
            .map(|h| h.saturating_since(start))
    }

    /// Where the time went.
    pub fn split(&self) -> TimeSplit {
        TimeSplit {
            detection: self
                .last_heartbeat_at
                .map(|l| self.detected_at.saturating_since(l)),
            confirmation: self.declared_failed_at.saturating_since(self.detected_at),
            fencing_wait: self
                .replacement_ordered_at
                .saturating_since(self.declared_failed_at),
            start_up: self
                .replacement_healthy_at
                .map(|h| h.saturating_since(self.replacement_ordered_at)),
        }
    }

    /// Record that the replacement runs; without a health check it is then healthy too.
    pub fn started(&mut self, at: Time, has_health_check: bool) {
        self.replacement_started_at.get_or_insert(at);
        if !has_health_check {
            self.healthy(at);
        }
    }

    /// Record that the replacement passed its health check.
    pub fn healthy(&mut self, at: Time) {
        if self.outcome == Outcome::InProgress {
            self.replacement_healthy_at.get_or_insert(at);
            self.outcome = Outcome::Succeeded;
        }
    }
}

/// Summary of many recoveries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecoveryStats {
    /// Records counted.
    pub total: usize,
    /// Succeeded.
    pub succeeded: usize,
    /// Failed.
    pub failed: usize,
    /// Succeeded / (succeeded + failed); 1 when none has ended.
    pub success_rate: f64,
    /// RTO percentiles over succeeded records, milliseconds.
    pub rto_p50_ms: Option<f64>,
    /// 99th percentile.
    pub rto_p99_ms: Option<f64>,
    /// Largest.
    pub rto_max_ms: Option<f64>,
}

impl RecoveryStats {
    /// Summarise records.
    pub fn of<'a>(records: impl IntoIterator<Item = &'a RecoveryRecord>) -> Self {
        let mut s = RecoveryStats::default();
        let mut rtos = Vec::new();
        for r in records {
            s.total += 1;
            match r.outcome {
                Outcome::Succeeded => s.succeeded += 1,
                Outcome::Failed => s.failed += 1,
                Outcome::InProgress | Outcome::Superseded => {}
            }
            if let Some(rto) = r.rto() {
                rtos.push(rto.as_secs_f64() * 1e3);
            }
        }
        let ended = s.succeeded + s.failed;
        s.success_rate = if ended == 0 {
            1.0
        } else {
            s.succeeded as f64 / ended as f64
        };
        rtos.sort_by(f64::total_cmp);
        s.rto_p50_ms = percentile(&rtos, 0.50);
        s.rto_p99_ms = percentile(&rtos, 0.99);
        s.rto_max_ms = rtos.last().copied();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::JobName;

    fn record() -> RecoveryRecord {
        RecoveryRecord {
            op: OperationId("cron/0@2:reschedule".into()),
            task: TaskId::new(JobName::new("cron"), 0),
            epoch: FencingToken(2),
            from: AgentId::new("a", 1),
            to: Some(AgentId::new("b", 1)),
            last_heartbeat_at: Some(Time::from_millis(1_000)),
            detected_at: Time::from_millis(1_100),
            declared_failed_at: Time::from_millis(1_150),
            replacement_ordered_at: Time::from_millis(1_400),
            replacement_started_at: None,
            replacement_healthy_at: None,
            outcome: Outcome::InProgress,
            cause: Cause::ProcessGone,
        }
    }

    #[test]
    fn rto_and_split() {
        let mut r = record();
        assert_eq!(r.rto(), None);
        r.started(Time::from_millis(1_500), true);
        assert_eq!(r.outcome, Outcome::InProgress);
        r.healthy(Time::from_millis(1_700));
        r.healthy(Time::from_millis(9_000)); // later reports change nothing
        assert_eq!(r.outcome, Outcome::Succeeded);
        assert_eq!(r.rto(), Some(Duration::from_millis(600)));
        assert_eq!(r.outage_upper_bound(), Some(Duration::from_millis(700)));
        let s = r.split();
        assert_eq!(s.detection, Some(Duration::from_millis(100)));
        assert_eq!(s.confirmation, Duration::from_millis(50));
        assert_eq!(s.fencing_wait, Duration::from_millis(250));
        assert_eq!(s.start_up, Some(Duration::from_millis(300)));
    }

    #[test]
    fn stats_and_percentiles() {
        let mut a = record();
        a.started(Time::from_millis(2_100), false);
        let mut b = record();
        b.outcome = Outcome::Failed;
        let c = record();
        let s = RecoveryStats::of([&a, &b, &c]);
        assert_eq!((s.total, s.succeeded, s.failed), (3, 1, 1));
        assert_eq!(s.success_rate, 0.5);
        assert_eq!(s.rto_p99_ms, Some(1_000.0));
    }
}
