//! Service-level figures computed from recovery records: the recovery success rate, the RTO
//! distribution against an objective, per-job availability over a window, and the slowest
//! recoveries with where their time went. One pure function, [`compute`], serves
//! `GET /v1/sla`, the dashboard's SLA page and `warden report sla` alike; it never reads the
//! clock (`now` is part of the [`SlaQuery`]).
//!
//! Definitions (also in `docs/dashboard.md`):
//!
//! - A recovery is *in the window* when it was detected (its agent turned Suspect) at or after
//!   `now − window`.
//! - **Success rate** = succeeded / (succeeded + failed) of the recoveries in the window; those
//!   still in progress or superseded by a newer recovery of the same task are counted apart.
//! - **RTO** = detection → healthy replacement of each *succeeded* recovery in the window;
//!   percentiles are nearest-rank ([`warden_core::qos::percentile`]), so each is an observed
//!   value. The objective is met when p99 ≤ objective.
//! - **Availability** of a job = 1 − downtime / (slots × window), where a slot's downtime is
//!   the union, clipped to the window, of its recoveries' outages: from the lost agent's last
//!   heartbeat (the detection time before Suspect is known) — or from the detection when that
//!   is not known — to the replacement being healthy. An outage without a healthy end lasts
//!   until the next recovery of the same slot begins, or until `now`. Only outages caused by
//!   lost agents are seen (task crashes restarted in place are not recovery records), so this
//!   is the availability as far as the failure detector and recovery can affect it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::view::RecoveryInfo;

/// How many of the slowest recoveries a report lists.
pub const SLOWEST: usize = 5;

/// The SLA settings of a server (`[sla]` in its config file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlaConfig {
    /// Recovery time objective: the RTO p99 must stay at or below it (default 5 s).
    #[serde(with = "warden_core::duration_serde")]
    pub objective_rto: Duration,
    /// Window of the figures when a request names none (default 24 h).
    #[serde(with = "warden_core::duration_serde")]
    pub window: Duration,
}

impl Default for SlaConfig {
    fn default() -> Self {
        SlaConfig {
            objective_rto: Duration::from_secs(5),
            window: Duration::from_secs(24 * 3600),
        }
    }
}

impl SlaConfig {
    /// Reject settings that make no report: a zero objective or window.
    pub fn validate(&self) -> Result<(), String> {
        if self.objective_rto.is_zero() {
            return Err("sla.objective_rto must be greater than zero".into());
        }
        if self.window.is_zero() {
            return Err("sla.window must be greater than zero".into());
        }
        Ok(())
    }
}

/// What to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlaQuery {
    /// The end of the window, Unix ms.
    pub now_unix_ms: u64,
    /// Length of the window.
    pub window: Duration,
    /// The recovery time objective.
    pub objective_rto: Duration,
}

/// A job as availability needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSlots {
    /// Job name.
    pub job: String,
    /// Task slots it has (desired copies).
    pub slots: u32,
}

/// The RTO distribution of the succeeded recoveries in the window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RtoStats {
    /// Recoveries measured.
    pub count: u32,
    /// Median, ms.
    pub p50_ms: Option<u64>,
    /// 95th percentile, ms.
    pub p95_ms: Option<u64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<u64>,
    /// Slowest, ms.
    pub max_ms: Option<u64>,
    /// Recoveries whose RTO was at or below the objective.
    pub within_objective: u32,
    /// `within_objective / count` (`null` when nothing was measured).
    pub within_objective_rate: Option<f64>,
    /// Whether p99 ≤ objective (`null` when nothing was measured).
    pub meets_objective: Option<bool>,
}

/// One job's availability over the window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobAvailability {
    /// Job name.
    pub job: String,
    /// Task slots counted.
    pub slots: u32,
    /// Slot-milliseconds without a running copy inside the window.
    pub downtime_ms: u64,
    /// 1 − downtime / (slots × window), 0.0–1.0.
    pub availability: f64,
    /// Recoveries of its tasks that touch the window.
    pub recoveries: u32,
}

/// `GET /v1/sla`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlaReport {
    /// End of the window, Unix ms.
    pub now_unix_ms: u64,
    /// Start of the window, Unix ms.
    pub since_unix_ms: u64,
    /// Length of the window, ms.
    pub window_ms: u64,
    /// The recovery time objective, ms.
    pub objective_rto_ms: u64,
    /// Recoveries detected in the window.
    pub recoveries: u32,
    /// …of which succeeded.
    pub succeeded: u32,
    /// …of which failed.
    pub failed: u32,
    /// …of which are still in progress.
    pub in_progress: u32,
    /// …of which were superseded by a newer recovery of the same task.
    pub superseded: u32,
    /// succeeded / (succeeded + failed), 0.0–1.0 (`null` when none ended).
    pub success_rate: Option<f64>,
    /// RTO distribution of the succeeded ones.
    pub rto: RtoStats,
    /// Availability per job, by name.
    pub jobs: Vec<JobAvailability>,
    /// The slowest recoveries in the window (by RTO, at most [`SLOWEST`]), with the split of
    /// their time.
    pub slowest: Vec<RecoveryInfo>,
}

fn job_of(task: &str) -> &str {
    task.rsplit_once('/').map_or(task, |(job, _)| job)
}

/// When the slot's outage began: the last heartbeat if known, else the detection.
fn outage_start(r: &RecoveryInfo) -> u64 {
    r.detected_at_unix_ms
        .saturating_sub(r.detection_ms.unwrap_or(0))
}

/// Compute the report from every recovery record (any order) and the current jobs. Jobs that
/// are gone but had recoveries in the window are reported too, with one slot per task seen.
pub fn compute(q: &SlaQuery, records: &[RecoveryInfo], jobs: &[JobSlots]) -> SlaReport {
    let window_ms = u64::try_from(q.window.as_millis()).unwrap_or(u64::MAX);
    let objective_ms = u64::try_from(q.objective_rto.as_millis()).unwrap_or(u64::MAX);
    let since = q.now_unix_ms.saturating_sub(window_ms);
    let span = q.now_unix_ms - since;

    let in_window: Vec<&RecoveryInfo> = records
        .iter()
        .filter(|r| r.detected_at_unix_ms >= since && r.detected_at_unix_ms <= q.now_unix_ms)
        .collect();
    let count = |o: &str| {
        u32::try_from(in_window.iter().filter(|r| r.outcome == o).count()).unwrap_or(u32::MAX)
    };
    let (succeeded, failed) = (count("succeeded"), count("failed"));
    let success_rate =
        (succeeded + failed > 0).then(|| f64::from(succeeded) / f64::from(succeeded + failed));

    let mut rtos: Vec<u64> = in_window
        .iter()
        .filter(|r| r.outcome == "succeeded")
        .filter_map(|r| r.rto_ms)
        .collect();
    rtos.sort_unstable();
    let pct = |p: f64| warden_core::qos::percentile(&rtos, p);
    let within =
        u32::try_from(rtos.iter().filter(|&&v| v <= objective_ms).count()).unwrap_or(u32::MAX);
    let measured = u32::try_from(rtos.len()).unwrap_or(u32::MAX);
    let rto = RtoStats {
        count: measured,
        p50_ms: pct(0.50),
        p95_ms: pct(0.95),
        p99_ms: pct(0.99),
        max_ms: rtos.last().copied(),
        within_objective: within,
        within_objective_rate: (measured > 0).then(|| f64::from(within) / f64::from(measured)),
        meets_objective: pct(0.99).map(|p99| p99 <= objective_ms),
    };

    let mut slowest: Vec<&RecoveryInfo> = in_window
        .iter()
        .copied()
        .filter(|r| r.rto_ms.is_some())
        .collect();
    slowest.sort_by(|a, b| b.rto_ms.cmp(&a.rto_ms).then(a.task.cmp(&b.task)));
    let slowest = slowest.into_iter().take(SLOWEST).cloned().collect();

    SlaReport {
        now_unix_ms: q.now_unix_ms,
        since_unix_ms: since,
        window_ms: span,
        objective_rto_ms: objective_ms,
        recoveries: u32::try_from(in_window.len()).unwrap_or(u32::MAX),
        succeeded,
        failed,
        in_progress: count("in_progress"),
        superseded: count("superseded"),
        success_rate,
        rto,
        jobs: availability(records, jobs, since, q.now_unix_ms),
        slowest,
    }
}

/// Per-job availability over `[since, now]`.
fn availability(
    records: &[RecoveryInfo],
    jobs: &[JobSlots],
    since: u64,
    now: u64,
) -> Vec<JobAvailability> {
    // Each task's records in time order, to end an outage without a healthy end at the start
    // of the next one.
    let mut by_task: BTreeMap<&str, Vec<&RecoveryInfo>> = BTreeMap::new();
    for r in records {
        by_task.entry(r.task.as_str()).or_default().push(r);
    }
    let mut down: BTreeMap<&str, u64> = BTreeMap::new();
    let mut touching: BTreeMap<&str, u32> = BTreeMap::new();
    let mut tasks_seen: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (task, mut rs) in by_task {
        rs.sort_by_key(|r| outage_start(r));
        let mut outages: Vec<(u64, u64)> = Vec::new();
        for (i, r) in rs.iter().enumerate() {
            let start = outage_start(r);
            let end = r.replacement_healthy_at_unix_ms.unwrap_or_else(|| {
                rs.get(i + 1)
                    .map_or(now, |next| outage_start(next).max(start))
            });
            let (s, e) = (start.max(since), end.min(now));
            if s < e || (start >= since && start <= now) {
                *touching.entry(job_of(task)).or_default() += 1;
            }
            if s < e {
                outages.push((s, e));
            }
        }
        tasks_seen.entry(job_of(task)).or_default().insert(task);
        // Union of the intervals (sorted by start after clipping).
        outages.sort_unstable();
        let mut total = 0u64;
        let mut current: Option<(u64, u64)> = None;
        for (s, e) in outages {
            current = match current {
                Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
                Some((cs, ce)) => {
                    total += ce - cs;
                    Some((s, e))
                }
                None => Some((s, e)),
            };
        }
        if let Some((cs, ce)) = current {
            total += ce - cs;
        }
        *down.entry(job_of(task)).or_default() += total;
    }

    let mut slots: BTreeMap<&str, u32> = jobs.iter().map(|j| (j.job.as_str(), j.slots)).collect();
    for (job, tasks) in &tasks_seen {
        if !slots.contains_key(job) && touching.get(job).copied().unwrap_or(0) > 0 {
            slots.insert(job, u32::try_from(tasks.len()).unwrap_or(u32::MAX));
        }
    }
    let span = now.saturating_sub(since);
    slots
        .into_iter()
        .map(|(job, n)| {
            let downtime = down.get(job).copied().unwrap_or(0);
            let total = span.saturating_mul(u64::from(n));
            let availability = if total == 0 {
                1.0
            } else {
                (1.0 - downtime as f64 / total as f64).clamp(0.0, 1.0)
            };
            JobAvailability {
                job: job.to_string(),
                slots: n,
                downtime_ms: downtime,
                availability,
                recoveries: touching.get(job).copied().unwrap_or(0),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MIN: u64 = 60_000;

    /// A recovery of `task` whose agent's last heartbeat was at `lost` and whose replacement was
    /// healthy `rto` ms after detection (`None`: never). Detection takes 1 s, confirmation 2 s.
    fn rec(task: &str, lost: u64, rto: Option<u64>, outcome: &str) -> RecoveryInfo {
        let detected = lost + 1_000;
        RecoveryInfo {
            op: format!("op-{task}-{lost}"),
            task: task.into(),
            epoch: 2,
            from: "a#1".into(),
            to: Some("b".into()),
            detected_at_unix_ms: detected,
            declared_failed_at_unix_ms: detected + 2_000,
            replacement_ordered_at_unix_ms: detected + 2_000,
            replacement_started_at_unix_ms: rto.map(|r| detected + r.saturating_sub(100)),
            replacement_healthy_at_unix_ms: rto.map(|r| detected + r),
            rto_ms: rto,
            detection_ms: Some(1_000),
            confirmation_ms: 2_000,
            fencing_wait_ms: 0,
            start_up_ms: rto.map(|r| r.saturating_sub(2_000)),
            outcome: outcome.into(),
            cause: "process gone".into(),
        }
    }

    fn query(now: u64, window_ms: u64, objective_ms: u64) -> SlaQuery {
        SlaQuery {
            now_unix_ms: now,
            window: Duration::from_millis(window_ms),
            objective_rto: Duration::from_millis(objective_ms),
        }
    }

    fn slots(job: &str, n: u32) -> JobSlots {
        JobSlots {
            job: job.into(),
            slots: n,
        }
    }

    #[test]
    fn empty_history_is_fully_available_with_no_rates() {
        let r = compute(&query(100 * MIN, 60 * MIN, 5_000), &[], &[slots("web", 3)]);
        assert_eq!(r.recoveries, 0);
        assert_eq!(r.success_rate, None);
        assert_eq!(r.rto.p99_ms, None);
        assert_eq!(r.rto.meets_objective, None);
        assert_eq!(r.jobs.len(), 1);
        assert_eq!(r.jobs[0].availability, 1.0);
        assert_eq!(r.since_unix_ms, 40 * MIN);
    }

    #[test]
    fn success_rate_counts_only_ended_recoveries() {
        let now = 100 * MIN;
        let records = [
            rec("a/0", now - 10 * MIN, Some(3_000), "succeeded"),
            rec("a/1", now - 10 * MIN, Some(4_000), "succeeded"),
            rec("a/2", now - 10 * MIN, Some(5_000), "succeeded"),
            rec("b/0", now - 9 * MIN, None, "failed"),
            rec("c/0", now - 8 * MIN, None, "in_progress"),
            rec("d/0", now - 7 * MIN, None, "superseded"),
            // Before the window: not counted.
            rec("a/0", now - 90 * MIN, None, "failed"),
        ];
        let r = compute(&query(now, 60 * MIN, 5_000), &records, &[]);
        assert_eq!(r.recoveries, 6);
        assert_eq!(
            (r.succeeded, r.failed, r.in_progress, r.superseded),
            (3, 1, 1, 1)
        );
        assert_eq!(r.success_rate, Some(0.75));
    }

    #[test]
    fn percentiles_are_nearest_rank_and_judged_against_the_objective() {
        let now = 1_000 * MIN;
        // RTOs 1..=100 s: p50 = 50 s, p95 = 95 s, p99 = 99 s, max 100 s.
        let records: Vec<RecoveryInfo> = (1..=100)
            .map(|i| {
                rec(
                    &format!("j/{i}"),
                    now - 100 * MIN,
                    Some(i * 1_000),
                    "succeeded",
                )
            })
            .collect();
        let r = compute(&query(now, 200 * MIN, 95_000), &records, &[]);
        assert_eq!(r.rto.count, 100);
        assert_eq!(r.rto.p50_ms, Some(50_000));
        assert_eq!(r.rto.p95_ms, Some(95_000));
        assert_eq!(r.rto.p99_ms, Some(99_000));
        assert_eq!(r.rto.max_ms, Some(100_000));
        assert_eq!(r.rto.within_objective, 95);
        assert_eq!(r.rto.within_objective_rate, Some(0.95));
        assert_eq!(r.rto.meets_objective, Some(false));
        let r = compute(&query(now, 200 * MIN, 99_000), &records, &[]);
        assert_eq!(
            r.rto.meets_objective,
            Some(true),
            "p99 equal to the objective meets it"
        );
        // The slowest, slowest first, with their split.
        let slow: Vec<u64> = r.slowest.iter().filter_map(|s| s.rto_ms).collect();
        assert_eq!(slow, [100_000, 99_000, 98_000, 97_000, 96_000]);
        assert_eq!(r.slowest[0].confirmation_ms, 2_000);
    }

    #[test]
    fn availability_is_the_union_of_outages_over_slot_time() {
        let now = 60 * MIN;
        // web has 2 slots over a 60-min window = 120 slot-minutes.
        // web/0: lost at 10 min, healthy 1 s after the 1 s detection → 2 s down... make it
        // longer: RTO 59 s → outage = 1 s detection + 59 s = 60 s.
        let records = [
            rec("web/0", 10 * MIN, Some(59_000), "succeeded"),
            // Overlaps the first (same slot, 30 s later): the union counts it once, extending
            // the outage to 30 s + 60 s = 90 s in all.
            rec("web/0", 10 * MIN + 30_000, Some(59_000), "succeeded"),
            // web/1 never recovered: down from 50 min to now = 10 min.
            rec("web/1", 50 * MIN, None, "in_progress"),
        ];
        let r = compute(
            &query(now, 60 * MIN, 5_000),
            &records,
            &[slots("web", 2), slots("db", 1)],
        );
        let web = r.jobs.iter().find(|j| j.job == "web").unwrap();
        assert_eq!(web.downtime_ms, 90_000 + 10 * MIN);
        let expected = 1.0 - (90_000.0 + 600_000.0) / (2.0 * 3_600_000.0);
        assert!(
            (web.availability - expected).abs() < 1e-12,
            "{}",
            web.availability
        );
        assert_eq!(web.recoveries, 3);
        let db = r.jobs.iter().find(|j| j.job == "db").unwrap();
        assert_eq!((db.availability, db.downtime_ms), (1.0, 0));
    }

    #[test]
    fn outages_are_clipped_to_the_window_and_end_at_the_next_attempt() {
        let now = 120 * MIN;
        let records = [
            // Began 1 min before the window (at 59 min) and healthy at 61 min + 1 s: only the
            // part inside counts (61 min + 1 s − 60 min = 61 s).
            rec("svc/0", 59 * MIN, Some(2 * MIN), "succeeded"),
            // Superseded without a healthy end: lasts until the next attempt starts (5 min).
            rec("svc/1", 70 * MIN, None, "superseded"),
            rec("svc/1", 75 * MIN, Some(9_000), "succeeded"),
        ];
        let r = compute(&query(now, 60 * MIN, 5_000), &records, &[slots("svc", 2)]);
        let svc = &r.jobs[0];
        assert_eq!(svc.downtime_ms, 61_000 + 5 * MIN + 10_000);
        // The first recovery was detected before the window: not among its recoveries.
        assert_eq!(r.recoveries, 2);
    }

    #[test]
    fn a_removed_job_is_reported_with_the_slots_seen() {
        let now = 60 * MIN;
        let records = [rec("gone/3", 30 * MIN, Some(4_000), "succeeded")];
        let r = compute(&query(now, 60 * MIN, 5_000), &records, &[]);
        assert_eq!(r.jobs.len(), 1);
        assert_eq!((r.jobs[0].job.as_str(), r.jobs[0].slots), ("gone", 1));
        assert_eq!(r.jobs[0].downtime_ms, 5_000);
    }

    #[test]
    fn config_defaults_and_validation() {
        let c = SlaConfig::default();
        assert_eq!(c.objective_rto, Duration::from_secs(5));
        assert!(c.validate().is_ok());
        let parsed: SlaConfig = toml::from_str("objective_rto = \"2s\"").unwrap();
        assert_eq!(parsed.objective_rto, Duration::from_secs(2));
        assert_eq!(parsed.window, Duration::from_secs(86_400));
        let zero = SlaConfig {
            objective_rto: Duration::ZERO,
            ..SlaConfig::default()
        };
        assert!(zero.validate().is_err());
        assert!(toml::from_str::<SlaConfig>("objectve_rto = \"2s\"").is_err());
    }
}
