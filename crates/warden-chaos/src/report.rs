//! The report of a chaos run, built from its [`Record`]: per-fault detection times (or, for
//! faults that leave the agent up, the false verdicts they provoked) and recoveries, their
//! percentiles, the recovery success rate, a confusion matrix of the server's verdicts against
//! ground truth, the detector's mistakes, and the checkers' verdicts. Serialised as JSON; [`Report::summary`] renders the
//! short table the CLI prints. `docs/chaos.md` explains every field.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use warden_core::qos::{Confusion, percentile};

use crate::check::{self, CheckResult};
use crate::record::{Failover, FaultRecord, Record, SERVER};
use crate::scenario::FaultKind;

/// Width of a confusion-matrix window: one verdict sample per agent per window.
pub const WINDOW_MS: u64 = 1000;
/// The target of a fault that hits every agent (loss, delay, cpu, memory).
pub const ALL: &str = "all";

/// The report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Scenario description.
    pub description: String,
    /// Seed.
    pub seed: u64,
    /// Where the cluster's network lived: `netns` or `loopback` (empty in records from
    /// before the field existed).
    #[serde(default)]
    pub network: String,
    /// Agents.
    pub agents: Vec<String>,
    /// When the fault schedule started (ms since the run started; all times below too).
    pub schedule_start_ms: u64,
    /// When the last fault ended.
    pub faults_end_ms: u64,
    /// When recording stopped.
    pub end_ms: u64,
    /// `/proc` samples taken.
    pub samples: usize,
    /// Largest gap between two samples (how sharp the ground truth is).
    pub max_sample_gap_ms: u64,
    /// Server events about agents seen.
    pub events: usize,
    /// Every fault.
    pub faults: Vec<FaultReport>,
    /// Detection time (fault → first Suspect or Failed) per fault kind.
    pub detection: Vec<KindStats>,
    /// RTO of singleton slots (fault → a process with a newer token), over every fault.
    pub singleton_rto: Stats,
    /// RTO of service slots.
    pub service_rto: Stats,
    /// The RTO bound of the run (no-lost-work; recovery success counts replacements within it).
    #[serde(default)]
    pub rto_bound_ms: u64,
    /// How many of the slots that lost their process got it back, and in time.
    pub recovery: RecoverySuccess,
    /// Verdicts against ground truth.
    pub confusion: ConfusionReport,
    /// Mistakes: λ_M, T_M, P_A.
    pub accuracy: Accuracy,
    /// Checkers' verdicts.
    pub checkers: Vec<CheckResult>,
    /// Total violations (the run fails when this is not 0).
    pub violations: usize,
    /// Things that happened outside the harness's control (see `Record::anomalies`).
    pub anomalies: Vec<String>,
    /// Replicated control planes: every leader kill and its failover.
    #[serde(default)]
    pub failovers: Vec<Failover>,
    /// Failover times: each leader kill → the new leader's first reconcile round
    /// (`acting_since`).
    #[serde(default)]
    pub failover: Stats,
    /// Election times: each leader kill → the new leader's term began (`since`).
    #[serde(default)]
    pub election: Stats,
    /// Leader kills after which no new leader was seen acting.
    #[serde(default)]
    pub failovers_incomplete: usize,
    /// Agent faults injected right after a failover (`after_failover`): how the new leader
    /// detected and recovered them.
    #[serde(default)]
    pub after_failover: AfterFailover,
    /// The stateful workload, when the scenario has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateReport>,
}

/// What the stateful workload saw: its writes, and each fault that hit its primary.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StateReport {
    /// Writes acknowledged.
    pub acked: usize,
    /// State epochs that acknowledged writes (1 + the failovers that took).
    pub epochs: usize,
    /// Writes acknowledged at `local` a later primary did not have (allowed at that level).
    pub lost_local: u64,
    /// Per fault kind (on the primary, or on another agent): how writing came back.
    pub kinds: Vec<StateKind>,
}

/// Faults of one kind, on the stateful workload's primary or elsewhere.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateKind {
    /// Fault kind (`oneway` with its direction), with ` + another at once` when another
    /// fault started with it and ` (not the primary)` for faults that hit another agent.
    pub kind: String,
    /// Faults.
    pub faults: usize,
    /// Of those, followed by a promotion (a newer epoch acknowledged a write).
    pub switched: usize,
    /// Switchover: the fault → the first write a newer epoch acknowledged.
    pub switchover: Stats,
    /// The fault → the first write acknowledged after it, by any epoch (the old primary's
    /// when it kept its role).
    pub write_gap: Stats,
}

impl StateReport {
    fn of(record: &Record) -> StateReport {
        let acks = &record.acks;
        let mut epochs: Vec<u64> = acks.iter().map(|a| a.epoch).collect();
        epochs.sort_unstable();
        epochs.dedup();
        let mut per: BTreeMap<String, (usize, usize, Vec<u64>, Vec<u64>)> = BTreeMap::new();
        for f in record.faults.iter().filter(|f| f.skipped.is_none()) {
            // The primary at the fault: who acknowledged the last write before it.
            let Some(last) = acks.iter().rev().find(|a| a.t_ms <= f.start_ms) else {
                continue;
            };
            let on_primary = last.agent == f.target;
            // The kind, with a one-way cut's direction, and whether another fault started
            // with it (the primary and a standby lost at once).
            let mut kind = f.kind.as_str().to_string();
            if let Some(d) = record
                .scenario
                .as_ref()
                .and_then(|s| s.faults.get(f.index))
                .and_then(|spec| spec.direction)
            {
                kind.push_str(match d {
                    crate::scenario::Direction::ToServer => " to-server",
                    crate::scenario::Direction::FromServer => " from-server",
                });
            }
            let together = record.faults.iter().any(|g| {
                g.index != f.index && g.skipped.is_none() && g.start_ms.abs_diff(f.start_ms) < 500
            });
            if together {
                kind.push_str(" + another at once");
            }
            if !on_primary {
                kind.push_str(" (not the primary)");
            }
            let e = per.entry(kind).or_default();
            e.0 += 1;
            if let Some(next) = acks.iter().find(|a| a.t_ms >= f.start_ms) {
                e.3.push(next.t_ms - f.start_ms);
            }
            if let Some(new) = acks
                .iter()
                .find(|a| a.t_ms >= f.start_ms && a.epoch > last.epoch)
                .filter(|_| on_primary)
            {
                e.1 += 1;
                e.2.push(new.t_ms - f.start_ms);
            }
        }
        StateReport {
            acked: acks.len(),
            epochs: epochs.len(),
            lost_local: crate::check::no_lost_ack::lost_local(record),
            kinds: per
                .into_iter()
                .map(|(kind, (faults, switched, sw, gap))| StateKind {
                    kind,
                    faults,
                    switched,
                    switchover: Stats::of(sw),
                    write_gap: Stats::of(gap),
                })
                .collect(),
        }
    }
}

/// Detection and recovery of agent faults injected right after a failover.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AfterFailover {
    /// Such faults injected.
    pub faults: usize,
    /// How long after the new leader started acting they were injected.
    pub since_failover: Stats,
    /// Their detection times (T_D).
    pub detection: Stats,
    /// RTO of their singleton slots.
    pub singleton_rto: Stats,
    /// RTO of their service slots.
    pub service_rto: Stats,
}

/// One fault and what followed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultReport {
    /// Position in the schedule.
    pub index: usize,
    /// Kind.
    pub kind: FaultKind,
    /// Agent hit (or `server`).
    pub target: String,
    /// Start.
    pub start_ms: u64,
    /// End (`None`: never undone).
    pub end_ms: Option<u64>,
    /// Why it was not injected.
    pub skipped: Option<String>,
    /// T_D to Suspect: start → the server's first `suspect` of the agent's generation that was
    /// current at the start.
    pub suspect_ms: Option<u64>,
    /// Start → first `failed` of that generation.
    pub failed_ms: Option<u64>,
    /// Start → the first of the two (the detection time).
    pub detected_ms: Option<u64>,
    /// For faults that leave the agent up (loss, delay, cpu, memory; see
    /// [`FaultKind::takes_agent_out`]): `failed` transitions of the agent hit (any agent, for
    /// target `all`) during the fault and the verdict tolerance after it. Each one is wrong.
    /// Always 0 for the other kinds, whose detection times are reported instead.
    pub false_verdicts: usize,
    /// The slots that ran on the agent when the fault started.
    pub recoveries: Vec<Recovery>,
}

/// What became of one slot that ran on a faulted agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Recovery {
    /// Task id.
    pub task: String,
    /// Whether it is a singleton.
    pub singleton: bool,
    /// Its token at the fault.
    pub old_token: u64,
    /// Whether its process (`task`, `old_token`) was gone in some sample after the fault
    /// started (and before the next fault on the same agent): the slot needed recovering.
    pub lost: bool,
    /// The token of its replacement, if one ran.
    pub new_token: Option<u64>,
    /// Fault start → the replacement process seen.
    pub rto_ms: Option<u64>,
}

/// Recovery success: of the slots whose process a fault took away, how many ran again, and
/// how many within the RTO bound.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RecoverySuccess {
    /// Recoveries whose old process was lost ([`Recovery::lost`]).
    pub needed: usize,
    /// Of those, the ones whose replacement (a newer token) ran.
    pub recovered: usize,
    /// Of those, the ones replaced within the RTO bound (`rto_ms ≤ rto_bound_ms`).
    pub within_bound: usize,
    /// `within_bound / needed` (`None` when nothing needed recovering).
    pub success_rate: Option<f64>,
}

impl RecoverySuccess {
    fn of<'a>(recoveries: impl IntoIterator<Item = &'a Recovery>, bound_ms: u64) -> Self {
        let mut s = RecoverySuccess::default();
        for r in recoveries.into_iter().filter(|r| r.lost) {
            s.needed += 1;
            if r.new_token.is_some() {
                s.recovered += 1;
                if r.rto_ms.is_some_and(|rto| rto <= bound_ms) {
                    s.within_bound += 1;
                }
            }
        }
        if s.needed > 0 {
            s.success_rate = Some(s.within_bound as f64 / s.needed as f64);
        }
        s
    }
}

/// Percentiles of a set of durations (ms); `None` when empty.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Values.
    pub count: usize,
    /// Median.
    pub p50_ms: Option<f64>,
    /// 95th percentile.
    pub p95_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Largest.
    pub max_ms: Option<f64>,
}

impl Stats {
    fn of(values: impl IntoIterator<Item = u64>) -> Stats {
        let mut v: Vec<f64> = values.into_iter().map(|x| x as f64).collect();
        v.sort_by(f64::total_cmp);
        Stats {
            count: v.len(),
            p50_ms: percentile(&v, 0.5),
            p95_ms: percentile(&v, 0.95),
            p99_ms: percentile(&v, 0.99),
            max_ms: v.last().copied(),
        }
    }
}

/// Detection-time statistics of one fault kind.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KindStats {
    /// Fault kind.
    pub kind: FaultKind,
    /// Faults of the kind injected.
    pub faults: usize,
    /// Of those, detected (always 0 for kinds that leave the agent up).
    pub detected: usize,
    /// Detection times.
    pub detection: Stats,
    /// False Failed verdicts under faults of the kind, summed (kinds that leave the agent up).
    pub false_verdicts: usize,
}

/// A confusion matrix with its derived figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Matrix {
    /// Truly out, suspected or failed.
    pub true_pos: u64,
    /// Up, but suspected or failed.
    pub false_pos: u64,
    /// Up and trusted.
    pub true_neg: u64,
    /// Truly out, still trusted.
    pub false_neg: u64,
    /// TP / (TP + FP).
    pub precision: Option<f64>,
    /// TP / (TP + FN).
    pub recall: Option<f64>,
    /// Harmonic mean of the two.
    pub f1: Option<f64>,
}

impl From<&Confusion> for Matrix {
    fn from(c: &Confusion) -> Matrix {
        Matrix {
            true_pos: c.true_pos,
            false_pos: c.false_pos,
            true_neg: c.true_neg,
            false_neg: c.false_neg,
            precision: c.precision(),
            recall: c.recall(),
            f1: c.f1(),
        }
    }
}

/// Verdicts against ground truth, one sample per agent in the middle of every window after
/// the schedule start.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConfusionReport {
    /// Window width.
    pub window_ms: u64,
    /// Per agent.
    pub agents: Vec<(String, Matrix)>,
    /// Over every agent.
    pub total: Matrix,
}

/// Mistakes of the failure detector (Chen, Toueg & Aguilera 2002), from the server's verdicts
/// against ground truth. An agent counts as *up* outside its truth intervals and the verdict
/// tolerance after each; a *mistake* is a suspicion (Suspect, possibly followed by Failed)
/// that begins while the agent is up, and lasts as long as it overlaps up time.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Accuracy {
    /// Time the agents were up, summed over agents, from the schedule start.
    pub up_ms: u64,
    /// Mistakes.
    pub mistakes: usize,
    /// Their total duration.
    pub mistake_ms: u64,
    /// λ_M: mistakes per second of up time.
    pub mistake_rate_per_s: f64,
    /// T_M: mean mistake duration (`None` without mistakes).
    pub mean_mistake_ms: Option<f64>,
    /// T_MR: mean mistake recurrence time, the up time per mistake (1/λ_M; `None` without
    /// mistakes).
    pub mean_recurrence_ms: Option<f64>,
    /// P_A: the probability that the verdict about an up agent, at a random moment, is
    /// "trusted" (`None` without up time).
    pub query_accuracy: Option<f64>,
}

/// Merge overlapping or touching intervals.
fn merge(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Length of the overlap of `(a, b)` with the merged intervals `set`.
fn overlap(a: u64, b: u64, set: &[(u64, u64)]) -> u64 {
    set.iter()
        .map(|&(x, y)| b.min(y).saturating_sub(a.max(x)))
        .sum()
}

fn accuracy(record: &Record) -> Accuracy {
    let (s0, end) = (
        record.schedule_start_ms,
        record.end_ms.max(record.schedule_start_ms),
    );
    let mut acc = Accuracy::default();
    for agent in &record.agents {
        let out = merge(
            record
                .truth_of(agent)
                .map(|i| {
                    let e = i.end_ms.unwrap_or(end) + record.verdict_tolerance_ms;
                    (i.start_ms.clamp(s0, end), e.clamp(s0, end))
                })
                .collect(),
        );
        acc.up_ms += (end - s0) - overlap(s0, end, &out);
        let suspicions = merge(
            record
                .verdict_intervals(agent)
                .into_iter()
                .map(|(a, b, _)| (a.clamp(s0, end), b.clamp(s0, end)))
                .filter(|(a, b)| a < b)
                .collect(),
        );
        for (a, b) in suspicions {
            if out.iter().any(|&(x, y)| x <= a && a <= y) {
                continue;
            }
            acc.mistakes += 1;
            acc.mistake_ms += (b - a) - overlap(a, b, &out);
        }
    }
    if acc.up_ms > 0 {
        acc.mistake_rate_per_s = acc.mistakes as f64 / (acc.up_ms as f64 / 1e3);
        acc.query_accuracy = Some(1.0 - acc.mistake_ms as f64 / acc.up_ms as f64);
    }
    if acc.mistakes > 0 {
        acc.mean_mistake_ms = Some(acc.mistake_ms as f64 / acc.mistakes as f64);
        acc.mean_recurrence_ms = Some(acc.up_ms as f64 / acc.mistakes as f64);
    }
    acc
}

/// The generation of `agent` current at `t`: the newest the server had mentioned by then.
fn generation_at(record: &Record, agent: &str, t: u64) -> Option<u64> {
    record
        .events
        .iter()
        .filter(|e| e.agent == agent && e.t_ms <= t)
        .map(|e| e.generation)
        .max()
}

/// Whether fault `f` (injected) hits `agent`: it names it, or targets every agent.
fn hits(f: &FaultRecord, agent: &str) -> bool {
    f.skipped.is_none()
        && (f.kind == FaultKind::Isolate
            || f.target == ALL
            || f.target.split(',').any(|t| t == agent))
}

/// The end of a fault's window: its end (or the run's) plus the verdict tolerance.
fn window_end(record: &Record, f: &FaultRecord) -> u64 {
    f.end_ms
        .unwrap_or(record.end_ms)
        .saturating_add(record.verdict_tolerance_ms)
}

fn fault_report(record: &Record, f: &FaultRecord) -> FaultReport {
    let mut r = FaultReport {
        index: f.index,
        kind: f.kind,
        target: f.target.clone(),
        start_ms: f.start_ms,
        end_ms: f.end_ms,
        skipped: f.skipped.clone(),
        suspect_ms: None,
        failed_ms: None,
        detected_ms: None,
        false_verdicts: 0,
        recoveries: Vec::new(),
    };
    if f.skipped.is_some() || f.target == SERVER || f.kind.hits_control_plane() {
        return r;
    }
    let until = window_end(record, f);
    if !f.kind.takes_agent_out() {
        r.false_verdicts = record
            .events
            .iter()
            .filter(|e| {
                e.kind == "agent.transition"
                    && e.to.as_deref() == Some("failed")
                    && (f.start_ms..=until).contains(&e.t_ms)
                    && hits(f, &e.agent)
            })
            .count();
    } else if let Some(generation) = generation_at(record, &f.target, f.start_ms) {
        let first = |to: &str| {
            record
                .events
                .iter()
                .filter(|e| {
                    e.agent == f.target
                        && e.generation == generation
                        && e.to.as_deref() == Some(to)
                        && e.t_ms >= f.start_ms
                        && e.t_ms <= until
                })
                .map(|e| e.t_ms - f.start_ms)
                .min()
        };
        r.suspect_ms = first("suspect");
        r.failed_ms = first("failed");
        r.detected_ms = match (r.suspect_ms, r.failed_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    // A process gone after the next fault on its agent began is that fault's loss.
    let next_fault = record
        .faults
        .iter()
        .filter(|g| g.start_ms > f.start_ms && hits(g, &f.target))
        .map(|g| g.start_ms)
        .min()
        .unwrap_or(u64::MAX);
    if let Some(before) = record.sample_before(f.start_ms) {
        for p in before
            .procs
            .iter()
            .filter(|p| p.agent.as_deref() == Some(f.target.as_str()))
        {
            let lost = record
                .samples
                .iter()
                .filter(|s| s.t_ms >= f.start_ms && s.t_ms < next_fault)
                .any(|s| {
                    !s.procs
                        .iter()
                        .any(|q| q.task == p.task && q.token == p.token)
                });
            // A process the fault did not take away was not replaced because of it (a later
            // fault may replace it: that is the later fault's recovery). The process of a
            // group of warm replicas is replaced by the one a promoted replica starts.
            let group = record.warm_groups.iter().find(|g| g.contains(&p.task));
            let replaces = |q: &crate::record::ProcSample| match group {
                Some(g) => g.contains(&q.task) && (q.task != p.task || q.token > p.token),
                None => q.task == p.task && q.token > p.token,
            };
            let replacement = record
                .samples
                .iter()
                .filter(|s| lost && s.t_ms >= f.start_ms)
                .find_map(|s| {
                    s.procs
                        .iter()
                        .find(|q| replaces(q))
                        .map(|q| (s.t_ms, q.token))
                });
            r.recoveries.push(Recovery {
                task: p.task.clone(),
                singleton: record.singletons.contains(&p.task),
                old_token: p.token,
                lost,
                new_token: replacement.map(|(_, tok)| tok),
                rto_ms: replacement.map(|(t, _)| t - f.start_ms),
            });
        }
    }
    r
}

fn confusion(record: &Record) -> ConfusionReport {
    let mut total = Confusion::default();
    let mut agents = Vec::new();
    for agent in &record.agents {
        let mut c = Confusion::default();
        // Sampled in the middle of each window: faults scheduled on whole seconds never
        // coincide with a sample (which would count the instant of the fault as a miss).
        let mut t = record.schedule_start_ms + WINDOW_MS / 2;
        while t <= record.end_ms {
            let out = record.truly_out(agent, t, 0);
            let suspected = matches!(record.verdict_at(agent, t), Some("suspect" | "failed"));
            match (out, suspected) {
                (true, true) => c.true_pos += 1,
                (false, true) => c.false_pos += 1,
                (false, false) => c.true_neg += 1,
                (true, false) => c.false_neg += 1,
            }
            t += WINDOW_MS;
        }
        total.add(&c);
        agents.push((agent.clone(), Matrix::from(&c)));
    }
    ConfusionReport {
        window_ms: WINDOW_MS,
        agents,
        total: Matrix::from(&total),
    }
}

impl Report {
    /// Build the report of a record (runs the checkers).
    pub fn build(record: &Record) -> Report {
        let faults: Vec<FaultReport> = record
            .faults
            .iter()
            .map(|f| fault_report(record, f))
            .collect();
        // Faults on the control plane's processes have no agent to detect.
        let mut kinds: Vec<FaultKind> = faults
            .iter()
            .map(|f| f.kind)
            .filter(|k| !k.hits_control_plane())
            .collect();
        kinds.sort();
        kinds.dedup();
        let detection = kinds
            .into_iter()
            .map(|kind| {
                let of_kind: Vec<&FaultReport> = faults
                    .iter()
                    .filter(|f| f.kind == kind && f.skipped.is_none())
                    .collect();
                let times: Vec<u64> = of_kind.iter().filter_map(|f| f.detected_ms).collect();
                KindStats {
                    kind,
                    faults: of_kind.len(),
                    detected: times.len(),
                    detection: Stats::of(times),
                    false_verdicts: of_kind.iter().map(|f| f.false_verdicts).sum(),
                }
            })
            .collect();
        let rtos = |singleton: bool| {
            Stats::of(
                faults
                    .iter()
                    .flat_map(|f| &f.recoveries)
                    .filter(|r| r.singleton == singleton)
                    .filter_map(|r| r.rto_ms),
            )
        };
        let checkers = check::all(record);
        let max_gap = record
            .samples
            .windows(2)
            .map(|w| w[1].t_ms.saturating_sub(w[0].t_ms))
            .max()
            .unwrap_or(0);
        let (name, description) = record
            .scenario
            .as_ref()
            .map(|s| (s.name.clone(), s.description.clone()))
            .unwrap_or_default();
        let after: Vec<&FaultReport> = faults
            .iter()
            .filter(|f| {
                f.skipped.is_none()
                    && record
                        .faults
                        .iter()
                        .any(|r| r.index == f.index && r.since_failover_ms.is_some())
            })
            .collect();
        let after_failover = AfterFailover {
            faults: after.len(),
            since_failover: Stats::of(
                record
                    .faults
                    .iter()
                    .filter(|r| r.skipped.is_none())
                    .filter_map(|r| r.since_failover_ms),
            ),
            detection: Stats::of(after.iter().filter_map(|f| f.detected_ms)),
            singleton_rto: Stats::of(
                after
                    .iter()
                    .flat_map(|f| &f.recoveries)
                    .filter(|r| r.singleton)
                    .filter_map(|r| r.rto_ms),
            ),
            service_rto: Stats::of(
                after
                    .iter()
                    .flat_map(|f| &f.recoveries)
                    .filter(|r| !r.singleton)
                    .filter_map(|r| r.rto_ms),
            ),
        };
        Report {
            scenario: name,
            description,
            seed: record.seed,
            network: record.network.clone(),
            agents: record.agents.clone(),
            schedule_start_ms: record.schedule_start_ms,
            faults_end_ms: record.faults_end_ms,
            end_ms: record.end_ms,
            samples: record.samples.len(),
            max_sample_gap_ms: max_gap,
            events: record.events.len(),
            singleton_rto: rtos(true),
            service_rto: rtos(false),
            recovery: RecoverySuccess::of(
                faults.iter().flat_map(|f| &f.recoveries),
                record.rto_bound_ms,
            ),
            rto_bound_ms: record.rto_bound_ms,
            confusion: confusion(record),
            accuracy: accuracy(record),
            violations: checkers.iter().map(|c| c.violations.len()).sum(),
            checkers,
            detection,
            faults,
            anomalies: record.anomalies.clone(),
            failover: Stats::of(record.failovers.iter().filter_map(Failover::failover_ms)),
            election: Stats::of(record.failovers.iter().filter_map(Failover::election_ms)),
            failovers_incomplete: record
                .failovers
                .iter()
                .filter(|f| f.acting_ms.is_none())
                .count(),
            failovers: record.failovers.clone(),
            after_failover,
            state: record
                .scenario
                .as_ref()
                .and_then(|s| s.stateful())
                .map(|_| StateReport::of(record)),
        }
    }

    /// A short human summary: faults, figures, checkers.
    pub fn summary(&self) -> String {
        let ms_opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| format!("{v} ms"));
        let ms = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| format!("{v} ms"));
        let f = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0} ms"));
        let r = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scenario {} (seed {}, network {}): {} agents, {} samples (largest gap {} ms), {} \
             agent events",
            self.scenario,
            self.seed,
            if self.network.is_empty() {
                "unknown"
            } else {
                &self.network
            },
            self.agents.len(),
            self.samples,
            self.max_sample_gap_ms,
            self.events
        );
        let _ = writeln!(
            s,
            "\n{:<3} {:<12} {:<9} {:>9} {:>10} {:>10}  recoveries (RTO)",
            "#", "fault", "target", "at", "T_D susp", "T_D fail"
        );
        for fr in &self.faults {
            let failover = self.failovers.iter().find(|f| f.fault == fr.index);
            let rec = if let Some(why) = &fr.skipped {
                format!("skipped: {why}")
            } else if let Some(fo) = failover {
                match (fo.failover_ms(), &fo.new_leader) {
                    (Some(ms), Some(who)) => format!(
                        "failover {ms} ms: {who} leads (term {}), elected after {}",
                        fo.new_term.unwrap_or(0),
                        ms_opt(fo.election_ms())
                    ),
                    _ => "no new leader seen acting".to_string(),
                }
            } else {
                let mut parts: Vec<String> = Vec::new();
                if !fr.kind.takes_agent_out() {
                    parts.push(format!("{} false Failed", fr.false_verdicts));
                }
                parts.extend(fr.recoveries.iter().map(|r| {
                    format!(
                        "{} {}{}",
                        r.task,
                        ms(r.rto_ms),
                        if r.lost { "" } else { " (kept)" }
                    )
                }));
                parts.join(", ")
            };
            let (susp, fail) = if fr.kind.hits_control_plane() {
                ("-".to_string(), "-".to_string())
            } else if fr.kind.takes_agent_out() {
                (ms(fr.suspect_ms), ms(fr.failed_ms))
            } else {
                ("n/a".to_string(), "n/a".to_string())
            };
            let _ = writeln!(
                s,
                "{:<3} {:<12} {:<9} {:>7.1} s {:>10} {:>10}  {rec}",
                fr.index,
                fr.kind.as_str(),
                if fr.target.is_empty() {
                    "-"
                } else {
                    &fr.target
                },
                fr.start_ms.saturating_sub(self.schedule_start_ms) as f64 / 1e3,
                susp,
                fail,
            );
        }
        let _ = writeln!(s);
        for k in &self.detection {
            if !k.kind.takes_agent_out() {
                let _ = writeln!(
                    s,
                    "T_D {:<12} n/a (the agent stays up): {} false Failed in {} faults",
                    k.kind.as_str(),
                    k.false_verdicts,
                    k.faults
                );
                continue;
            }
            let _ = writeln!(
                s,
                "T_D {:<12} {}/{} detected, p50 {}, p99 {}, max {}",
                k.kind.as_str(),
                k.detected,
                k.faults,
                f(k.detection.p50_ms),
                f(k.detection.p99_ms),
                f(k.detection.max_ms)
            );
        }
        for (name, st) in [
            ("singleton", &self.singleton_rto),
            ("service", &self.service_rto),
        ] {
            let _ = writeln!(
                s,
                "RTO {name:<10} {} recoveries, p50 {}, p99 {}, max {}",
                st.count,
                f(st.p50_ms),
                f(st.p99_ms),
                f(st.max_ms)
            );
        }
        let rc = &self.recovery;
        let _ = writeln!(
            s,
            "recovery: {} slots lost their process, {} replaced, {} within {} ms: success {}",
            rc.needed,
            rc.recovered,
            rc.within_bound,
            self.rto_bound_ms,
            r(rc.success_rate)
        );
        let t = &self.confusion.total;
        let _ = writeln!(
            s,
            "verdicts vs truth ({} ms windows): TP {} FP {} TN {} FN {}; precision {}, recall {}, F1 {}",
            self.confusion.window_ms,
            t.true_pos,
            t.false_pos,
            t.true_neg,
            t.false_neg,
            r(t.precision),
            r(t.recall),
            r(t.f1)
        );
        let a = &self.accuracy;
        let _ = writeln!(
            s,
            "mistakes (suspicions of up agents): {} in {:.1} s of up time; λ_M {:.4}/s, T_M {}, \
             T_MR {}, P_A {}",
            a.mistakes,
            a.up_ms as f64 / 1e3,
            a.mistake_rate_per_s,
            f(a.mean_mistake_ms),
            f(a.mean_recurrence_ms),
            a.query_accuracy
                .map_or_else(|| "-".to_string(), |v| format!("{v:.5}"))
        );
        if !self.failovers.is_empty() {
            let _ = writeln!(
                s,
                "failover (leader kill -> new leader acting) {} of {}: p50 {}, p99 {}, max {}; \
                 elected: p50 {}, p99 {}",
                self.failover.count,
                self.failovers.len(),
                f(self.failover.p50_ms),
                f(self.failover.p99_ms),
                f(self.failover.max_ms),
                f(self.election.p50_ms),
                f(self.election.p99_ms)
            );
            let a = &self.after_failover;
            if a.faults > 0 {
                let _ = writeln!(
                    s,
                    "after failover ({} agent faults, injected p50 {} after the new leader acted): \
                     T_D p50 {}, p99 {}; RTO singleton p50 {}, p99 {}; service p50 {}, p99 {}",
                    a.faults,
                    f(a.since_failover.p50_ms),
                    f(a.detection.p50_ms),
                    f(a.detection.p99_ms),
                    f(a.singleton_rto.p50_ms),
                    f(a.singleton_rto.p99_ms),
                    f(a.service_rto.p50_ms),
                    f(a.service_rto.p99_ms)
                );
            }
        }
        if let Some(st) = &self.state {
            let _ = writeln!(
                s,
                "stateful workload: {} writes acknowledged under {} epochs; {} acknowledged at \
                 local lost (allowed)",
                st.acked, st.epochs, st.lost_local
            );
            for k in &st.kinds {
                let _ = writeln!(
                    s,
                    "  {:<40} {} faults, {} switched: switchover p50 {}, p99 {}, max {}; first \
                     write after the fault p50 {}, p99 {}",
                    k.kind,
                    k.faults,
                    k.switched,
                    f(k.switchover.p50_ms),
                    f(k.switchover.p99_ms),
                    f(k.switchover.max_ms),
                    f(k.write_gap.p50_ms),
                    f(k.write_gap.p99_ms)
                );
            }
        }
        for note in &self.anomalies {
            let _ = writeln!(s, "WARNING: {note}");
        }
        let _ = writeln!(s);
        for c in &self.checkers {
            let _ = writeln!(
                s,
                "{:<18} {}",
                c.checker,
                if c.passed {
                    "pass".to_string()
                } else {
                    format!("FAIL ({} violations)", c.violations.len())
                }
            );
            for v in c.violations.iter().take(5) {
                let _ = writeln!(s, "    at {} ms: {}", v.t_ms, v.message);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::check::testing::{p, record, sample, transition};
    use crate::record::{FaultRecord, TruthInterval, TruthState};

    #[test]
    fn detection_rto_and_confusion_from_a_record() {
        let mut r = record();
        r.schedule_start_ms = 0;
        r.end_ms = 10_000;
        r.faults = vec![FaultRecord {
            index: 0,
            kind: FaultKind::Kill,
            target: "agent-1".into(),
            start_ms: 2_000,
            end_ms: Some(6_000),
            skipped: None,
            since_failover_ms: None,
        }];
        r.truth = vec![TruthInterval {
            agent: "agent-1".into(),
            state: TruthState::Down,
            start_ms: 2_000,
            end_ms: Some(6_000),
        }];
        r.events = vec![
            transition(100, "agent-1", 1, "healthy"),
            transition(100, "agent-2", 1, "healthy"),
            transition(2_300, "agent-1", 1, "suspect"),
            transition(2_900, "agent-1", 1, "failed"),
            transition(6_500, "agent-1", 2, "healthy"),
        ];
        r.samples = vec![
            sample(1_940, vec![p("db/0", 1, 10, "agent-1")]),
            sample(3_400, vec![p("db/0", 2, 11, "agent-2")]),
        ];
        let rep = Report::build(&r);
        let f = &rep.faults[0];
        assert_eq!(
            (f.suspect_ms, f.failed_ms, f.detected_ms),
            (Some(300), Some(900), Some(300))
        );
        assert_eq!(f.recoveries[0].rto_ms, Some(1_400));
        assert_eq!(rep.singleton_rto.count, 1);
        // Samples at 0.5 s, 1.5 s, …: agent-1 is down and suspected at 2.5–5.5 s (TP), up and
        // trusted at 0.5, 1.5 and 6.5–9.5 s; agent-2 always up and trusted.
        let c = &rep.confusion.total;
        assert_eq!((c.true_pos, c.false_pos, c.false_neg), (4, 0, 0));
        assert_eq!(c.true_neg, 6 + 10);
        assert!(rep.summary().contains("kill"));
        // No mistakes: agent-1's suspicion began while it was down.
        assert_eq!(rep.accuracy.mistakes, 0);
        assert_eq!(rep.accuracy.query_accuracy, Some(1.0));
    }

    #[test]
    fn a_suspicion_of_an_up_agent_is_a_mistake() {
        let mut r = record();
        r.schedule_start_ms = 0;
        r.end_ms = 10_000;
        r.events = vec![
            transition(0, "agent-1", 1, "healthy"),
            transition(0, "agent-2", 1, "healthy"),
            transition(4_000, "agent-2", 1, "suspect"),
            transition(4_500, "agent-2", 1, "healthy"),
        ];
        let a = Report::build(&r).accuracy;
        assert_eq!((a.up_ms, a.mistakes, a.mistake_ms), (20_000, 1, 500));
        assert_eq!(a.mean_mistake_ms, Some(500.0));
        // T_MR = 1/λ_M: one mistake in 20 s of up time.
        assert_eq!(a.mean_recurrence_ms, Some(20_000.0));
        assert_eq!(a.query_accuracy, Some(1.0 - 500.0 / 20_000.0));
    }

    fn fault(
        index: usize,
        kind: FaultKind,
        target: &str,
        start_ms: u64,
        end_ms: u64,
    ) -> FaultRecord {
        FaultRecord {
            index,
            kind,
            target: target.into(),
            start_ms,
            end_ms: Some(end_ms),
            skipped: None,
            since_failover_ms: None,
        }
    }

    #[test]
    fn recovery_success_counts_lost_processes_replaced_within_the_bound() {
        let mut r = record();
        r.agents.push("agent-3".into());
        r.network = "loopback".into();
        r.schedule_start_ms = 0;
        r.end_ms = 40_000;
        r.rto_bound_ms = 5_000;
        // agent-1 killed at 2 s: db/0 and web/0 lost; db/0 back in 3 s, web/0 only after 8 s.
        // agent-2 paused briefly at 20 s: web/1 kept its process. At 30 s agent-2 is killed:
        // web/1 lost then is the second fault's, not the pause's.
        r.faults = vec![
            fault(0, FaultKind::Kill, "agent-1", 2_000, 4_000),
            fault(1, FaultKind::Pause, "agent-2", 20_000, 21_000),
            fault(2, FaultKind::Kill, "agent-2", 30_000, 31_000),
        ];
        r.samples = vec![
            sample(
                1_900,
                vec![p("db/0", 1, 10, "agent-1"), p("web/0", 1, 11, "agent-1")],
            ),
            sample(2_100, vec![]),
            sample(5_000, vec![p("db/0", 2, 12, "agent-3")]),
            sample(
                10_000,
                vec![p("db/0", 2, 12, "agent-3"), p("web/0", 2, 13, "agent-3")],
            ),
            sample(19_900, vec![p("web/1", 1, 14, "agent-2")]),
            sample(25_000, vec![p("web/1", 1, 14, "agent-2")]),
            sample(29_900, vec![p("web/1", 1, 14, "agent-2")]),
            sample(31_000, vec![]),
        ];
        let rep = Report::build(&r);
        let lost: Vec<(&str, bool, Option<u64>)> = rep
            .faults
            .iter()
            .flat_map(|f| &f.recoveries)
            .map(|x| (x.task.as_str(), x.lost, x.rto_ms))
            .collect();
        assert_eq!(
            lost,
            [
                ("db/0", true, Some(3_000)),
                ("web/0", true, Some(8_000)),
                ("web/1", false, None),
                ("web/1", true, None),
            ]
        );
        let rc = &rep.recovery;
        assert_eq!((rc.needed, rc.recovered, rc.within_bound), (3, 2, 1));
        assert_eq!(rc.success_rate, Some(1.0 / 3.0));
        assert_eq!(rep.network, "loopback");
        let text = rep.summary();
        assert!(text.contains("network loopback"), "{text}");
        assert!(text.contains("3 slots lost their process, 2 replaced, 1 within 5000 ms"));
    }

    #[test]
    fn faults_that_leave_agents_up_count_false_verdicts_not_detection() {
        let mut r = record();
        r.schedule_start_ms = 0;
        r.end_ms = 40_000;
        r.faults = vec![
            fault(0, FaultKind::Cpu, "agent-1", 2_000, 6_000),
            fault(1, FaultKind::Loss, ALL, 10_000, 14_000),
            fault(2, FaultKind::Partition, "agent-2", 20_000, 26_000),
        ];
        r.truth = vec![TruthInterval {
            agent: "agent-2".into(),
            state: TruthState::Cut,
            start_ms: 20_000,
            end_ms: Some(26_000),
        }];
        r.events = vec![
            transition(100, "agent-1", 1, "healthy"),
            transition(100, "agent-2", 1, "healthy"),
            // Under CPU pressure: suspected (no detection to report), then falsely failed,
            // once within the tolerance after the end; agent-2 failing then is not this
            // fault's.
            transition(3_000, "agent-1", 1, "suspect"),
            transition(7_000, "agent-1", 1, "failed"),
            transition(7_500, "agent-2", 1, "failed"),
            transition(9_000, "agent-1", 2, "healthy"),
            transition(9_000, "agent-2", 2, "healthy"),
            // Loss on every agent: any agent's Failed counts.
            transition(12_000, "agent-2", 2, "failed"),
            transition(13_000, "agent-1", 2, "failed"),
            transition(15_000, "agent-1", 3, "healthy"),
            transition(15_000, "agent-2", 3, "healthy"),
            transition(21_000, "agent-2", 3, "suspect"),
        ];
        let rep = Report::build(&r);
        let f: Vec<(Option<u64>, usize)> = rep
            .faults
            .iter()
            .map(|f| (f.detected_ms, f.false_verdicts))
            .collect();
        assert_eq!(f, [(None, 1), (None, 2), (Some(1_000), 0)]);
        let cpu = rep
            .detection
            .iter()
            .find(|k| k.kind == FaultKind::Cpu)
            .unwrap();
        assert_eq!((cpu.faults, cpu.detected, cpu.false_verdicts), (1, 0, 1));
        let text = rep.summary();
        assert!(
            text.contains("T_D cpu          n/a (the agent stays up): 1 false Failed"),
            "{text}"
        );
    }
}
