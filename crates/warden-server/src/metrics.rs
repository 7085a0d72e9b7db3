//! The control plane's Prometheus metrics: what `GET /metrics` serves. `docs/metrics.md` lists
//! every family for users.
//!
//! Two kinds of series, kept apart on purpose:
//!
//! - **Events** (counters and histograms: heartbeats, transitions, probes, recoveries, timings)
//!   are recorded where the control plane carries out the core's outputs, into a
//!   [`PrometheusRecorder`] owned by one [`Metrics`] (no global recorder: two control planes in
//!   one process, as in tests, keep separate counts). Their label values come from closed sets
//!   (states, probe kinds, outcomes, store operations), so they cannot grow without bound.
//! - **State** (gauges: agents by state, per-agent health score and φ, sessions, brake) is not
//!   kept between scrapes at all: [`Metrics::render`] computes it from the current
//!   [`ControlApi`] view on every scrape, into a fresh recorder. A per-agent series therefore
//!   exists exactly while the agent's newest generation is live (not Failed or Left), and
//!   vanishes at the first scrape after that generation ends — there is nothing to delete and
//!   nothing can go stale.
//!
//! [`TimedStore`] wraps the store so that every store operation's latency is measured in one
//! place.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::{Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};
use warden_core::lifecycle::{AgentState, ProbeOutcome};
use warden_core::planner::OperationId;
use warden_core::recovery::{Outcome, RecoveryRecord};
use warden_core::{FencingToken, JobName, JobSpec, TaskId};
use warden_store::{
    BatchOutcome, CasOutcome, NewEvent, RecoveryQuery, Store, StoredEvent, StoredRecovery,
    TaskRecord, WriteOp,
};

use crate::view::ControlApi;

/// `Content-Type` of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Heartbeats that arrived on a session.
pub const HEARTBEATS_RECEIVED: &str = "warden_heartbeats_received_total";
/// Heartbeats dropped unread because their session exceeded its heartbeat rate limit
/// (`[limits.sessions]`).
pub const HEARTBEATS_DROPPED: &str = "warden_heartbeats_dropped_total";
/// Times a session paused before handling a message (not a heartbeat) beyond its rate
/// (`[limits.sessions] message_rate`).
pub const MESSAGES_PACED: &str = "warden_session_messages_paced_total";
/// Lifecycle transitions, by `from` and `to` state.
pub const TRANSITIONS: &str = "warden_lifecycle_transitions_total";
/// Probes run for suspects, by `kind` and `result`.
pub const PROBES: &str = "warden_probes_total";
/// Recoveries started (a task ordered onto a new agent after its old one failed).
pub const RECOVERIES_STARTED: &str = "warden_recoveries_started_total";
/// Recoveries finished, by `outcome`.
pub const RECOVERIES: &str = "warden_recoveries_total";
/// Recovery time objective achieved: detection to healthy replacement.
pub const RECOVERY_RTO: &str = "warden_recovery_rto_seconds";
/// Last heartbeat to Failed.
pub const DETECTION: &str = "warden_detection_seconds";
/// Time between two heartbeats of one session, as the server received them.
pub const HEARTBEAT_GAP: &str = "warden_heartbeat_gap_seconds";
/// One reconcile round.
pub const RECONCILE: &str = "warden_reconcile_duration_seconds";
/// One store operation, by `op`.
pub const STORE_OPERATION: &str = "warden_store_operation_seconds";
/// Agents (newest generation of each name) by `state`.
pub const AGENTS: &str = "warden_agents";
/// Health score of each live agent, by `agent`.
pub const AGENT_HEALTH_SCORE: &str = "warden_agent_health_score";
/// φ of each live agent, by `agent`.
pub const AGENT_PHI: &str = "warden_agent_phi";
/// Open agent sessions.
pub const SESSIONS: &str = "warden_sessions";
/// 1 while the mass-failure brake is engaged.
pub const BRAKE_ENGAGED: &str = "warden_brake_engaged";

/// The largest φ exported. φ grows without bound (to infinity) while an agent stays silent;
/// the text format's `+Inf` is awkward to graph, so it is capped like the REST API does.
pub const PHI_CAP: f64 = 1e9;

/// Every lifecycle state, in the order `warden_agents` lists them.
const STATES: [AgentState; 7] = [
    AgentState::Joining,
    AgentState::Healthy,
    AgentState::Degraded,
    AgentState::Suspect,
    AgentState::Failed,
    AgentState::Quarantined,
    AgentState::Left,
];

/// Buckets for detection and recovery times, seconds: sub-second detection up to minutes of
/// waiting for a lease or capacity.
const RECOVERY_BUCKETS: [f64; 14] = [
    0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0,
];
/// Buckets for the gaps between heartbeats, seconds: fine around the default interval (0.5 s),
/// coarse towards the lease (2 s) and beyond.
const GAP_BUCKETS: [f64; 14] = [
    0.45, 0.5, 0.51, 0.52, 0.55, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0,
];
/// Buckets for reconcile rounds and store operations, seconds: microseconds (in memory) to
/// fsyncs on a slow disk.
const LATENCY_BUCKETS: [f64; 13] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

fn key(name: &'static str, labels: Vec<Label>) -> Key {
    Key::from_parts(name, labels)
}

fn describe(
    recorder: &PrometheusRecorder,
    kind: Kind,
    name: &'static str,
    unit: Option<Unit>,
    help: &'static str,
) {
    let (name, help) = (KeyName::from_const_str(name), SharedString::const_str(help));
    match kind {
        Kind::Counter => recorder.describe_counter(name, unit, help),
        Kind::Gauge => recorder.describe_gauge(name, unit, help),
        Kind::Histogram => recorder.describe_histogram(name, unit, help),
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The lower-case name of a probe result, as the `result` label shows it.
pub fn probe_result(o: ProbeOutcome) -> &'static str {
    match o {
        ProbeOutcome::Answered => "answered",
        ProbeOutcome::Connected => "connected",
        ProbeOutcome::Refused => "refused",
        ProbeOutcome::TimedOut => "timed_out",
        ProbeOutcome::Unreachable => "unreachable",
        ProbeOutcome::Skipped => "skipped",
    }
}

/// The control plane's metrics. Cheap to clone (the recorder is shared).
#[derive(Clone, Debug)]
pub struct Metrics {
    recorder: Arc<OwnedRecorder>,
    /// Histogram samples recorded, for [`UPKEEP_EVERY`].
    samples: Arc<AtomicU64>,
    /// What every heartbeat records, registered once: no key built and looked up per
    /// heartbeat.
    per_heartbeat: PerHeartbeat,
}

#[derive(Clone)]
struct PerHeartbeat {
    received: metrics::Counter,
    dropped: metrics::Counter,
    paced: metrics::Counter,
    gap: metrics::Histogram,
}

impl std::fmt::Debug for PerHeartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PerHeartbeat")
    }
}

/// The recorder, drained when the last [`Metrics`] handle goes: a histogram's pending samples
/// are only freed by a drain, not when the histogram is dropped.
#[derive(Debug)]
struct OwnedRecorder(PrometheusRecorder);

impl std::ops::Deref for OwnedRecorder {
    type Target = PrometheusRecorder;
    fn deref(&self) -> &PrometheusRecorder {
        &self.0
    }
}

impl Drop for OwnedRecorder {
    fn drop(&mut self) {
        self.0.handle().run_upkeep();
    }
}

/// Histogram samples after which the recorder's upkeep runs. The exporter keeps every sample
/// of a histogram until something drains them into its buckets — a scrape, or an upkeep — so
/// without this, a server nobody scrapes would grow by every reconcile round (20 a second) and
/// every store operation, forever. Found by the fuzz targets' leak checker.
pub const UPKEEP_EVERY: u64 = 1024;

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, every family described and the unlabelled ones at zero, so a
    /// scrape shows them before anything happened.
    pub fn new() -> Self {
        let recorder = histogram_buckets(PrometheusBuilder::new()).build_recorder();
        let r = &recorder;
        describe(
            r,
            Kind::Counter,
            HEARTBEATS_RECEIVED,
            Some(Unit::Count),
            "Heartbeats received from agents.",
        );
        describe(
            r,
            Kind::Counter,
            HEARTBEATS_DROPPED,
            Some(Unit::Count),
            "Heartbeats dropped because their session sent more than its rate limit allows.",
        );
        describe(
            r,
            Kind::Counter,
            MESSAGES_PACED,
            Some(Unit::Count),
            "Messages other than heartbeats a session paused for because it sent more than its rate allows (never dropped).",
        );
        describe(
            r,
            Kind::Counter,
            TRANSITIONS,
            Some(Unit::Count),
            "Lifecycle transitions of agent generations, by from and to state.",
        );
        describe(
            r,
            Kind::Counter,
            PROBES,
            Some(Unit::Count),
            "Probes of suspect agents, by kind (tcp, http, icmp, indirect) and result.",
        );
        describe(
            r,
            Kind::Counter,
            RECOVERIES_STARTED,
            Some(Unit::Count),
            "Recoveries started: tasks of a failed agent ordered onto another agent.",
        );
        describe(
            r,
            Kind::Counter,
            RECOVERIES,
            Some(Unit::Count),
            "Recoveries finished, by outcome (succeeded, failed, superseded).",
        );
        describe(
            r,
            Kind::Histogram,
            RECOVERY_RTO,
            Some(Unit::Seconds),
            "Recovery time: the lost agent turning suspect to a healthy replacement.",
        );
        describe(
            r,
            Kind::Histogram,
            DETECTION,
            Some(Unit::Seconds),
            "Detection time: an agent's last heartbeat to its generation being declared failed.",
        );
        describe(
            r,
            Kind::Histogram,
            HEARTBEAT_GAP,
            Some(Unit::Seconds),
            "Time between two heartbeats of one session, as received: the agent's interval plus \
             whatever delayed it (a starved agent, the network, a busy server).",
        );
        describe(
            r,
            Kind::Histogram,
            RECONCILE,
            Some(Unit::Seconds),
            "Duration of one reconcile round (plan and execute, store writes included).",
        );
        describe(
            r,
            Kind::Histogram,
            STORE_OPERATION,
            Some(Unit::Seconds),
            "Latency of store operations, by op.",
        );
        let per_heartbeat = PerHeartbeat {
            received: r.register_counter(&key(HEARTBEATS_RECEIVED, vec![]), &METADATA),
            dropped: r.register_counter(&key(HEARTBEATS_DROPPED, vec![]), &METADATA),
            paced: r.register_counter(&key(MESSAGES_PACED, vec![]), &METADATA),
            gap: r.register_histogram(&key(HEARTBEAT_GAP, vec![]), &METADATA),
        };
        per_heartbeat.received.absolute(0);
        per_heartbeat.dropped.absolute(0);
        per_heartbeat.paced.absolute(0);
        r.register_counter(&key(RECOVERIES_STARTED, vec![]), &METADATA)
            .absolute(0);
        for outcome in ["succeeded", "failed", "superseded"] {
            r.register_counter(
                &key(
                    RECOVERIES,
                    vec![Label::from_static_parts("outcome", outcome)],
                ),
                &METADATA,
            )
            .absolute(0);
        }
        for name in [RECOVERY_RTO, DETECTION, RECONCILE] {
            let _ = r.register_histogram(&key(name, vec![]), &METADATA);
        }
        Metrics {
            recorder: Arc::new(OwnedRecorder(recorder)),
            samples: Arc::new(AtomicU64::new(0)),
            per_heartbeat,
        }
    }

    /// Record `value` in a histogram; every [`UPKEEP_EVERY`] samples, drain the pending
    /// samples into the buckets so they cannot pile up.
    fn observe(&self, name: &'static str, labels: Vec<Label>, value: f64) {
        self.observe_on(
            &self
                .recorder
                .register_histogram(&key(name, labels), &METADATA),
            value,
        );
    }

    fn observe_on(&self, histogram: &metrics::Histogram, value: f64) {
        histogram.record(value);
        if self.samples.fetch_add(1, Ordering::Relaxed) % UPKEEP_EVERY == UPKEEP_EVERY - 1 {
            self.recorder.handle().run_upkeep();
        }
    }

    /// Histogram samples not yet drained into buckets, at most (for tests).
    pub fn pending_samples(&self) -> u64 {
        self.samples.load(Ordering::Relaxed) % UPKEEP_EVERY
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> metrics::Counter {
        self.recorder
            .register_counter(&key(name, labels), &METADATA)
    }

    /// A heartbeat arrived.
    pub fn heartbeat_received(&self) {
        self.per_heartbeat.received.increment(1);
    }

    /// A heartbeat was dropped by its session's rate limit.
    pub fn heartbeat_dropped(&self) {
        self.per_heartbeat.dropped.increment(1);
    }

    /// A session paused before handling a message beyond its rate.
    pub fn message_paced(&self) {
        self.per_heartbeat.paced.increment(1);
    }

    /// An agent generation changed state.
    pub fn transition(&self, from: AgentState, to: AgentState) {
        self.counter(
            TRANSITIONS,
            vec![
                Label::from_static_parts("from", from.as_str()),
                Label::from_static_parts("to", to.as_str()),
            ],
        )
        .increment(1);
    }

    /// One probe ran. `kind` is `tcp`, `http`, `icmp` or `indirect`.
    pub fn probe(&self, kind: &'static str, outcome: ProbeOutcome) {
        self.counter(
            PROBES,
            vec![
                Label::from_static_parts("kind", kind),
                Label::from_static_parts("result", probe_result(outcome)),
            ],
        )
        .increment(1);
    }

    /// A recovery record was written: counts starts and finishes, and the RTO of successes.
    pub fn recovery(&self, record: &RecoveryRecord) {
        let outcome = match record.outcome {
            Outcome::InProgress => {
                self.counter(RECOVERIES_STARTED, vec![]).increment(1);
                return;
            }
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Superseded => "superseded",
        };
        self.counter(
            RECOVERIES,
            vec![Label::from_static_parts("outcome", outcome)],
        )
        .increment(1);
        if record.outcome == Outcome::Succeeded
            && let Some(rto) = record.rto()
        {
            self.observe(RECOVERY_RTO, vec![], rto.as_secs_f64());
        }
    }

    /// An agent generation was declared Failed `since_last_heartbeat` after its last heartbeat.
    pub fn detection(&self, since_last_heartbeat: Duration) {
        self.observe(DETECTION, vec![], since_last_heartbeat.as_secs_f64());
    }

    /// Two heartbeats of one session arrived `gap` apart.
    pub fn heartbeat_gap(&self, gap: Duration) {
        self.observe_on(&self.per_heartbeat.gap, gap.as_secs_f64());
    }

    /// A reconcile round took `took`.
    pub fn reconcile(&self, took: Duration) {
        self.observe(RECONCILE, vec![], took.as_secs_f64());
    }

    /// A store operation took `took`.
    pub fn store_operation(&self, op: &'static str, took: Duration) {
        self.observe(
            STORE_OPERATION,
            vec![Label::from_static_parts("op", op)],
            took.as_secs_f64(),
        );
    }

    /// The whole exposition: the recorded events, then the state gauges computed from `api`
    /// now (see the module docs for why they are not kept).
    pub fn render(&self, api: &dyn ControlApi) -> String {
        let mut out = self.recorder.handle().render();
        out.push_str(&render_state(api));
        out
    }
}

fn histogram_buckets(builder: PrometheusBuilder) -> PrometheusBuilder {
    let mut builder = builder;
    for (name, buckets) in [
        (RECOVERY_RTO, &RECOVERY_BUCKETS[..]),
        (DETECTION, &RECOVERY_BUCKETS[..]),
        (HEARTBEAT_GAP, &GAP_BUCKETS[..]),
        (RECONCILE, &LATENCY_BUCKETS[..]),
        (STORE_OPERATION, &LATENCY_BUCKETS[..]),
    ] {
        // Only an empty bucket list is refused, and these are constants.
        builder = match builder.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets) {
            Ok(b) => b,
            Err(_) => unreachable!("bucket lists are non-empty constants"),
        };
    }
    builder
}

/// The state gauges, computed from the current view into a recorder used for this scrape only.
fn render_state(api: &dyn ControlApi) -> String {
    let r = PrometheusBuilder::new().build_recorder();
    describe(
        &r,
        Kind::Gauge,
        AGENTS,
        None,
        "Agents (the newest generation of each name) by lifecycle state.",
    );
    describe(
        &r,
        Kind::Gauge,
        AGENT_HEALTH_SCORE,
        None,
        "Health score (0-100) of each agent whose newest generation is not failed or left.",
    );
    describe(
        &r,
        Kind::Gauge,
        AGENT_PHI,
        None,
        "Liveness suspicion (phi, capped at 1e9) of each agent whose newest generation is not failed or left.",
    );
    describe(&r, Kind::Gauge, SESSIONS, None, "Open agent sessions.");
    describe(
        &r,
        Kind::Gauge,
        BRAKE_ENGAGED,
        None,
        "1 while the mass-failure brake holds failure verdicts and rescheduling back, else 0.",
    );
    let agents = api.agent_health();
    for state in STATES {
        let n = agents.iter().filter(|a| a.state == state.as_str()).count();
        r.register_gauge(
            &key(
                AGENTS,
                vec![Label::from_static_parts("state", state.as_str())],
            ),
            &METADATA,
        )
        .set(n as f64);
    }
    let terminal = [AgentState::Failed.as_str(), AgentState::Left.as_str()];
    for a in agents
        .iter()
        .filter(|a| !terminal.contains(&a.state.as_str()))
    {
        let label = || vec![Label::new("agent", a.name.clone())];
        r.register_gauge(&key(AGENT_HEALTH_SCORE, label()), &METADATA)
            .set(a.health_score);
        let phi = if a.phi.is_finite() {
            a.phi.min(PHI_CAP)
        } else {
            PHI_CAP
        };
        r.register_gauge(&key(AGENT_PHI, label()), &METADATA)
            .set(phi);
    }
    let health = api.health();
    r.register_gauge(&key(SESSIONS, vec![]), &METADATA)
        .set(health.sessions as f64);
    r.register_gauge(&key(BRAKE_ENGAGED, vec![]), &METADATA)
        .set(if health.brake_engaged { 1.0 } else { 0.0 });
    r.handle().render()
}

/// A [`Store`] that measures the latency of every operation of the store it wraps into
/// `warden_store_operation_seconds{op}` (`op` is the method name).
pub struct TimedStore {
    inner: Arc<dyn Store>,
    metrics: Metrics,
}

impl TimedStore {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn Store>, metrics: Metrics) -> Self {
        TimedStore { inner, metrics }
    }

    fn timed<T>(&self, op: &'static str, f: impl FnOnce(&dyn Store) -> T) -> T {
        // Real elapsed time on purpose: this is the store's latency, which tokio's paused
        // test clock would hide.
        let start = Instant::now();
        let result = f(self.inner.as_ref());
        self.metrics.store_operation(op, start.elapsed());
        result
    }
}

type StoreResult<T> = warden_store::Result<T>;

impl Store for TimedStore {
    fn apply(&self, ops: &[WriteOp]) -> StoreResult<BatchOutcome> {
        self.timed("apply", |s| s.apply(ops))
    }
    fn put_job(&self, spec: &JobSpec) -> StoreResult<()> {
        self.timed("put_job", |s| s.put_job(spec))
    }
    fn get_job(&self, name: &JobName) -> StoreResult<Option<JobSpec>> {
        self.timed("get_job", |s| s.get_job(name))
    }
    fn list_jobs(&self) -> StoreResult<Vec<JobSpec>> {
        self.timed("list_jobs", |s| s.list_jobs())
    }
    fn get_releases(
        &self,
        job: &JobName,
    ) -> StoreResult<Option<warden_core::release::JobReleases>> {
        self.timed("get_releases", |s| s.get_releases(job))
    }
    fn list_releases(&self) -> StoreResult<Vec<warden_core::release::JobReleases>> {
        self.timed("list_releases", |s| s.list_releases())
    }
    fn delete_job(&self, name: &JobName) -> StoreResult<()> {
        self.timed("delete_job", |s| s.delete_job(name))
    }
    fn get_task(&self, task: &TaskId) -> StoreResult<Option<TaskRecord>> {
        self.timed("get_task", |s| s.get_task(task))
    }
    fn task_epoch(&self, task: &TaskId) -> StoreResult<FencingToken> {
        self.timed("task_epoch", |s| s.task_epoch(task))
    }
    fn list_tasks(&self) -> StoreResult<Vec<TaskRecord>> {
        self.timed("list_tasks", |s| s.list_tasks())
    }
    fn list_job_tasks(&self, job: &JobName) -> StoreResult<Vec<TaskRecord>> {
        self.timed("list_job_tasks", |s| s.list_job_tasks(job))
    }
    fn cas_task(&self, expected: FencingToken, record: &TaskRecord) -> StoreResult<CasOutcome> {
        self.timed("cas_task", |s| s.cas_task(expected, record))
    }
    fn put_task_state(
        &self,
        task: &TaskId,
        epoch: FencingToken,
        state: warden_core::planner::SlotState,
        failures: u32,
        unix_ms: u64,
    ) -> StoreResult<CasOutcome> {
        self.timed("put_task_state", |s| {
            s.put_task_state(task, epoch, state, failures, unix_ms)
        })
    }
    fn delete_job_tasks(&self, job: &JobName) -> StoreResult<()> {
        self.timed("delete_job_tasks", |s| s.delete_job_tasks(job))
    }
    fn next_generation(&self, agent: &str) -> StoreResult<u64> {
        self.timed("next_generation", |s| s.next_generation(agent))
    }
    fn generation(&self, agent: &str) -> StoreResult<Option<u64>> {
        self.timed("generation", |s| s.generation(agent))
    }
    fn upsert_recovery(&self, record: &RecoveryRecord, unix_ms: u64) -> StoreResult<()> {
        self.timed("upsert_recovery", |s| s.upsert_recovery(record, unix_ms))
    }
    fn get_recovery(&self, op: &OperationId) -> StoreResult<Option<StoredRecovery>> {
        self.timed("get_recovery", |s| s.get_recovery(op))
    }
    fn list_recoveries(&self, query: &RecoveryQuery) -> StoreResult<Vec<StoredRecovery>> {
        self.timed("list_recoveries", |s| s.list_recoveries(query))
    }
    fn append_events(&self, events: &[NewEvent]) -> StoreResult<u64> {
        self.timed("append_events", |s| s.append_events(events))
    }

    fn append_event(&self, event: &NewEvent) -> StoreResult<u64> {
        self.timed("append_event", |s| s.append_event(event))
    }
    fn events_since(&self, after: u64, limit: usize) -> StoreResult<Vec<StoredEvent>> {
        self.timed("events_since", |s| s.events_since(after, limit))
    }
    fn last_event_seq(&self) -> StoreResult<u64> {
        self.timed("last_event_seq", |s| s.last_event_seq())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_drained_without_scrapes_and_lose_no_sample() {
        let m = Metrics::new();
        let n = 3 * UPKEEP_EVERY + 5;
        for _ in 0..n {
            m.reconcile(Duration::from_micros(100));
        }
        // Only the samples since the last upkeep are still held one by one.
        assert_eq!(m.pending_samples(), 5);
        let text = m.recorder.handle().render();
        let count = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{RECONCILE}_count ")))
            .and_then(|v| v.trim().parse::<u64>().ok());
        assert_eq!(count, Some(n), "{text}");
    }
}
