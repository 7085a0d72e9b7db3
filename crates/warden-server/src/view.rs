//! What the control plane shows to the outside: the JSON shapes of the REST API and the
//! [`ControlApi`] trait the HTTP layer calls. Wire shapes are kept apart from the core's types
//! on purpose: the core may change its internals without breaking scripts.
//!
//! Times in these shapes are wall-clock milliseconds since the Unix epoch (`*_unix_ms`) or
//! durations in milliseconds (`*_ms`, `*_ms_ago`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use warden_core::{JobSpec, Signals};

/// An agent (its newest generation), as `GET /v1/agents` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Agent name.
    pub name: String,
    /// Generation (grows on every agent start).
    pub generation: u64,
    /// Lifecycle state, lower case: joining, healthy, degraded, suspect, failed, quarantined, left.
    pub state: String,
    /// Health score 0–100.
    pub health_score: f64,
    /// Milliseconds since its last heartbeat arrived (`null` before the first).
    pub last_heartbeat_ms_ago: Option<u64>,
    /// The liveness detector's suspicion now (φ for phi accrual).
    pub phi: f64,
    /// Milliseconds in the current state.
    pub state_ms: u64,
    /// host:port of its probe listener.
    pub probe_addr: String,
    /// Latest signals.
    pub signals: Signals,
    /// Signals currently anomalous.
    pub anomalies: Vec<String>,
    /// The agent judges its own signals with the server's anomaly settings (`anomalies` are
    /// its verdicts); false: the server's detectors judge them.
    #[serde(default)]
    pub signals_judged_by_agent: bool,
    /// Tasks assigned to it ("job/index").
    pub tasks: Vec<String>,
    /// Cordoned: receives no new work.
    pub cordoned: bool,
}

/// A task slot, as `GET /v1/tasks` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// "job/index".
    pub id: String,
    /// Job name.
    pub job: String,
    /// Agent name, or `null` when unassigned.
    pub agent: Option<String>,
    /// That agent's generation.
    pub generation: Option<u64>,
    /// pending, starting, running, stopping, stopped, failed.
    pub state: String,
    /// Fencing token of the current assignment.
    pub epoch: u64,
    /// Failures in a row.
    pub failures: u32,
    /// The job version its copy was started from (0: not known).
    #[serde(default)]
    pub version: u64,
    /// Its part in the job's replicated state (jobs with `[state] standbys` > 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<ReplicaInfo>,
}

/// A replica slot's role, as `GET /v1/tasks` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    /// `primary` or `standby`.
    pub role: String,
    /// The job's state epoch (grows at every promotion).
    pub state_epoch: u64,
    /// A standby in the in-sync set (it holds every write acknowledged at `standby`).
    pub in_sync: bool,
}

/// A job, as `GET /v1/jobs` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    /// The spec as submitted.
    pub spec: JobSpec,
    /// Copies wanted.
    pub desired: u32,
    /// Copies reported running.
    pub running: u32,
}

/// What `POST /v1/jobs` did.
pub use warden_core::controller::SubmitOutcome;

/// The answer to `POST /v1/jobs` and `DELETE /v1/jobs/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobChange {
    /// The job.
    pub job: String,
    /// created, updated, unchanged, reverted or deleted.
    pub outcome: String,
    /// The job's version now in force (absent for a deletion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// What submitting a spec would change (`POST /v1/jobs/plan`): nothing is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPlan {
    /// The job.
    pub job: String,
    /// created, updated or unchanged.
    pub outcome: String,
    /// The number the new version would get (absent when unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Field by field, from the version in force to the spec.
    pub changes: Vec<warden_core::release::FieldChange>,
    /// Running copies the change would replace (a rollout); 0 when only the copy count or
    /// the `[update]` settings change.
    pub replaces: u32,
    /// Of those, copies it would change in place: a change of `[[config]]` files alone with
    /// `[update] reload_signal` (new files and a signal, no new copy).
    #[serde(default)]
    pub reloads: u32,
    /// Why it would be refused now (another rollout under way), if it would.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// A job spec flattened into dotted paths and JSON values, for field-by-field differences.
pub fn flatten(spec: &JobSpec) -> warden_core::release::Flat {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, v, out);
                }
            }
            serde_json::Value::Null => {}
            leaf => {
                out.insert(prefix.to_string(), leaf.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(v) = serde_json::to_value(spec) {
        walk("", &v, &mut out);
    }
    warden_core::release::Flat(out)
}

/// The answer to `POST /v1/brake/release`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrakeRelease {
    /// Whether the brake was engaged (and is released now).
    pub was_engaged: bool,
}

/// The answer to `POST /v1/jobs/{name}/promote`: a planned switchover started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverInfo {
    /// The job.
    pub job: String,
    /// The standby to be promoted (`job/index`) once it holds every write.
    pub to: String,
}

/// A recovery, as `GET /v1/recoveries` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecoveryInfo {
    /// Operation id.
    pub op: String,
    /// Task moved.
    pub task: String,
    /// New fencing token.
    pub epoch: u64,
    /// Agent it was lost on ("name#generation").
    pub from: String,
    /// Agent it moved to.
    pub to: Option<String>,
    /// When the lost agent turned Suspect.
    pub detected_at_unix_ms: u64,
    /// When it was declared Failed.
    pub declared_failed_at_unix_ms: u64,
    /// When the replacement was ordered.
    pub replacement_ordered_at_unix_ms: u64,
    /// When the replacement ran.
    pub replacement_started_at_unix_ms: Option<u64>,
    /// When the replacement was healthy.
    pub replacement_healthy_at_unix_ms: Option<u64>,
    /// Detection → healthy replacement, ms.
    pub rto_ms: Option<u64>,
    /// Last heartbeat → Suspect, ms.
    pub detection_ms: Option<u64>,
    /// Suspect → Failed, ms.
    pub confirmation_ms: u64,
    /// Failed → ordered (the fencing rule's wait), ms.
    pub fencing_wait_ms: u64,
    /// Ordered → healthy, ms.
    pub start_up_ms: Option<u64>,
    /// in_progress, succeeded, failed, superseded.
    pub outcome: String,
    /// Why the agent was declared Failed.
    pub cause: String,
}

/// A service of the endpoints registry (`GET /v1/services/{name}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Service name.
    pub name: String,
    /// Modification index: the registry's index at this service's last change.
    pub index: u64,
    /// Instances, by task.
    pub instances: Vec<InstanceInfo>,
}

/// An instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// "job/index".
    pub task: String,
    /// Fencing token of the copy.
    pub epoch: u64,
    /// Agent incarnation ("name#generation").
    pub agent: String,
    /// `host:port` it serves on.
    pub addr: String,
    /// serving, draining or removed.
    pub state: String,
    /// Why it is in that state.
    pub reason: String,
    /// When it entered that state.
    pub since_unix_ms: u64,
}

/// Every service (`GET /v1/services`), with the registry's index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicesInfo {
    /// The registry's modification index.
    pub index: u64,
    /// Services by name.
    pub services: Vec<ServiceInfo>,
}

/// One entry of the event log (`GET /v1/events`).
pub use warden_store::StoredEvent as EventInfo;

/// `GET /healthz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthInfo {
    /// Always "ok" when the server answers.
    pub status: String,
    /// Agents with an open session.
    pub sessions: usize,
    /// Whether the mass-failure brake is engaged.
    pub brake_engaged: bool,
}

/// Who leads the control plane, as one replica sees it (`GET /v1/leader`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeaderView {
    /// The leader's advertised REST address (its `--http-addr`, as given), if one is known.
    pub leader: Option<String>,
    /// The leader's term (its fencing token in the election), if one is known.
    pub term: Option<u64>,
    /// When the leader's term began, ms since the Unix epoch.
    pub since: Option<u64>,
    /// When this replica, as leader, ran its first reconcile round of the term (absent on a
    /// standby, and until then).
    pub acting_since: Option<u64>,
    /// `leader` or `standby`: this replica's role.
    pub role: String,
    /// This replica's advertised address.
    pub this: String,
    /// Whether this replica's reads may be stale: it is a standby that could not refresh from
    /// the store lately, or no leader is known (for example the store lost its quorum).
    pub stale: bool,
}

/// Why an API call failed. The HTTP layer maps the kind to a status code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// What kind of failure.
    pub kind: ApiErrorKind,
    /// What went wrong, naming the offending field or object.
    pub message: String,
}

/// Kinds of API failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiErrorKind {
    /// The request is malformed or impossible (400 / 422).
    Invalid,
    /// The object does not exist (404).
    NotFound,
    /// The request conflicts with the current state (409).
    Conflict,
    /// The server cannot serve it now, try again (503).
    Unavailable,
    /// This replica is a standby: writes go to the leader (307 to it, or 503 if none is known).
    NotLeader,
    /// A bug or a storage failure (500).
    Internal,
}

impl ApiError {
    /// An error of `kind`.
    pub fn new(kind: ApiErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }
}

fn unsupported() -> ApiError {
    ApiError::new(
        ApiErrorKind::NotFound,
        "this server keeps no job versions".to_string(),
    )
}

/// The control plane as the REST API sees it. Calls are synchronous and quick (they read
/// in-memory state or the embedded store).
pub trait ControlApi: Send + Sync + 'static {
    /// Every agent, newest generation of each name, by name.
    fn agents(&self) -> Vec<AgentInfo>;
    /// Like [`ControlApi::agents`] without the task lists (empty): what the dashboard's
    /// history samples every few seconds, at a cost that does not grow with the task slots.
    fn agent_health(&self) -> Vec<AgentInfo> {
        self.agents()
    }
    /// Every task slot, by job then index.
    fn tasks(&self) -> Vec<TaskInfo>;
    /// Every job, by name.
    fn jobs(&self) -> Result<Vec<JobInfo>, ApiError>;
    /// Create or update a job. The spec has been parsed but not validated yet. Returns what
    /// changed and the version now in force (none when nothing changed and the job has no
    /// versions).
    fn submit_job(&self, spec: JobSpec) -> Result<(SubmitOutcome, Option<u64>), ApiError>;
    /// What submitting `spec` would change, without storing it.
    fn plan_job(&self, spec: JobSpec) -> Result<JobPlan, ApiError> {
        let _ = spec;
        Err(unsupported())
    }
    /// A job's kept versions and its rollout.
    fn job_versions(&self, name: &str) -> Result<warden_core::release::JobReleases, ApiError> {
        let _ = name;
        Err(unsupported())
    }
    /// Go back to an earlier version of a job (default: the newest that runs something else),
    /// stored as a new version and rolled out at once. Returns the new version's number.
    fn revert_job(&self, name: &str, version: Option<u64>) -> Result<u64, ApiError> {
        let _ = (name, version);
        Err(unsupported())
    }
    /// A job's rollout: under way, or the last one.
    fn rollout(&self, name: &str) -> Result<warden_core::controller::RolloutView, ApiError> {
        let _ = name;
        Err(unsupported())
    }
    /// Promote a job's rollout past its canaries.
    fn promote_rollout(&self, name: &str) -> Result<(), ApiError> {
        let _ = name;
        Err(unsupported())
    }
    /// What copies served, from a traffic adapter's request log (for rollouts' statistical
    /// judge). Ignored where there is no controller.
    fn traffic(&self, samples: Vec<warden_core::judge::TrafficSample>) {
        let _ = samples;
    }
    /// Stop and remove a job.
    fn delete_job(&self, name: &str) -> Result<(), ApiError>;
    /// Release the mass-failure brake (an operator's decision after checking the fleet).
    /// Returns whether it was engaged.
    fn release_brake(&self) -> Result<bool, ApiError>;
    /// Start a planned switchover of a job's replicated state (`warden job promote`): its
    /// primary is sealed, and an in-sync standby promoted once it holds every write.
    fn promote(&self, job: &str) -> Result<SwitchoverInfo, ApiError>;
    /// Events with `seq > since`, oldest first, at most `limit`.
    fn events(&self, since: u64, limit: usize) -> Result<Vec<EventInfo>, ApiError>;
    /// The newest `limit` events, oldest first. The default pages through [`ControlApi::events`];
    /// implementations that know the last sequence number read only the tail.
    fn recent_events(&self, limit: usize) -> Result<Vec<EventInfo>, ApiError> {
        let mut tail: std::collections::VecDeque<EventInfo> = std::collections::VecDeque::new();
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut since = 0;
        loop {
            let page = self.events(since, 1000)?;
            let Some(last) = page.last() else {
                break;
            };
            since = last.seq;
            for e in page {
                if tail.len() == limit {
                    tail.pop_front();
                }
                tail.push_back(e);
            }
        }
        Ok(tail.into())
    }

    /// Recovery records, oldest first.
    fn recoveries(&self) -> Result<Vec<RecoveryInfo>, ApiError>;
    /// Liveness of the server itself.
    fn health(&self) -> HealthInfo;
    /// The server's metrics in the Prometheus text exposition format (`GET /metrics`).
    fn metrics(&self) -> String;
    /// The endpoints registry. The default has no services.
    fn services(&self) -> ServicesInfo {
        ServicesInfo::default()
    }
    /// Who leads the control plane, as this replica sees it (`GET /v1/leader`). The default is
    /// a single server that always leads.
    fn leader(&self) -> LeaderView {
        LeaderView {
            leader: None,
            term: Some(1),
            since: None,
            acting_since: None,
            role: "leader".into(),
            this: String::new(),
            stale: false,
        }
    }
    /// Follow the registry's index (changes on every registry change); `None` when the
    /// implementation cannot be watched (long polls then answer at once).
    fn watch_services(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}
