//! The records the store keeps and the shapes of its writes. These types are the store's
//! contract with the control plane; their JSON form is what sits on disk, guarded by
//! [`SCHEMA_VERSION`](crate::SCHEMA_VERSION).

use serde::{Deserialize, Serialize};
use warden_core::planner::{SlotState, TaskView};
use warden_core::recovery::RecoveryRecord;
use warden_core::release::JobReleases;
use warden_core::{AgentId, FencingToken, JobName, JobSpec, TaskId};

use crate::error::{Result, StoreError};

/// Default bound of the event log: the oldest events are dropped beyond it.
pub const DEFAULT_MAX_EVENTS: u64 = 100_000;

/// Settings shared by every back end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Most events kept in the log (default [`DEFAULT_MAX_EVENTS`]); each append beyond it
    /// drops the oldest in the same transaction. At least 1.
    pub max_events: u64,
    /// Embedded back end: verify every page checksum when opening the file (default true).
    /// Turns a file damaged outside the store into a clear [`StoreError::Corrupt`] at start-up
    /// instead of a failure later (redb may even panic on such a file when it trusts it);
    /// costs one read of the file, a few milliseconds for a typical store.
    pub verify_on_open: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_events: DEFAULT_MAX_EVENTS,
            verify_on_open: true,
        }
    }
}

impl StoreOptions {
    /// Reject settings that cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.max_events == 0 {
            return Err(StoreError::invalid(
                "store option max_events",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// The controller's record of one task slot: its newest assignment.
///
/// Written only through epoch-checked writes ([`crate::Store::cas_task`],
/// [`crate::Store::put_task_state`]), so a writer working from an old view can never overwrite
/// a newer assignment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task slot.
    pub task: TaskId,
    /// Fencing token of the newest assignment.
    pub epoch: FencingToken,
    /// Agent of the newest assignment (`None` while pending).
    pub agent: Option<AgentId>,
    /// State of the newest assignment.
    pub state: SlotState,
    /// Failures in a row.
    pub failures: u32,
    /// Wall-clock time of the last change, milliseconds since the Unix epoch.
    pub updated_unix_ms: u64,
    /// The slot's part in its job's replicated state, when the job keeps standbys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<warden_core::state::Replica>,
    /// The job version its copy was started from (0: not known).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl TaskRecord {
    /// The planner's view of this slot. `last_failure_at` is a reading of the server's
    /// monotonic clock, which does not survive a restart, so it starts empty.
    pub fn to_view(&self) -> TaskView {
        TaskView {
            home: None,
            epoch: self.epoch,
            agent: self.agent.clone(),
            state: self.state,
            failures: self.failures,
            last_failure_at: None,
            replica: self.replica,
            version: self.version,
        }
    }
}

/// How an epoch-checked write ended when it did not fail outright.
#[must_use = "an epoch-checked write may have lost; check the outcome"]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The write is committed.
    Applied,
    /// The slot's epoch was not the expected one; nothing was written.
    Conflict {
        /// The slot's live record, if any.
        current: Option<TaskRecord>,
        /// The slot's epoch: the live record's, or the epoch it had when its job's tasks were
        /// deleted, or [`FencingToken::NONE`] for a slot never assigned.
        stored_epoch: FencingToken,
    },
}

impl CasOutcome {
    /// Whether the write was committed.
    pub fn is_applied(&self) -> bool {
        matches!(self, CasOutcome::Applied)
    }

    /// The outcome as a `Result`, for callers that treat a lost race as an error:
    /// [`StoreError::NotFound`] when the slot was never assigned (or has no live record and no
    /// history), [`StoreError::Conflict`] otherwise.
    pub fn into_result(self, task: &TaskId, expected: FencingToken) -> Result<()> {
        match self {
            CasOutcome::Applied => Ok(()),
            CasOutcome::Conflict {
                current: None,
                stored_epoch: FencingToken::NONE,
            } => Err(StoreError::NotFound {
                what: format!("task {task}"),
            }),
            CasOutcome::Conflict { stored_epoch, .. } => Err(StoreError::Conflict {
                task: task.clone(),
                expected,
                actual: stored_epoch,
            }),
        }
    }
}

/// One write of an atomic batch ([`crate::Store::apply`]).
///
/// A batch has the semantics of an etcd transaction, so every back end can offer it: all
/// conditions are evaluated against the state *before* the batch, then either every write is
/// committed or none. A batch may therefore touch each key at most once (a task slot, a job,
/// a job's releases, a recovery); [`StoreError::Invalid`] otherwise.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // batches are short-lived and few; a job spec is the payload
pub enum WriteOp {
    /// Create or replace a job.
    PutJob(JobSpec),
    /// Delete a job's spec (a no-op when absent). Its task records stay (see
    /// [`WriteOp::DeleteJobTasks`]), and so do its releases: they are a key of their own,
    /// deleted only by [`WriteOp::DeleteReleases`] (in the same batch, to remove a job whole).
    DeleteJob(JobName),
    /// Delete every task record of a job. Each slot remembers its last epoch, so a job created
    /// again under the same name continues from there: tokens never go back.
    DeleteJobTasks(JobName),
    /// Create or replace a job's releases (`releases/<job>`): its numbered versions and its
    /// rollout, as one value. Unconditional, like [`WriteOp::PutJob`].
    PutReleases(JobReleases),
    /// Delete a job's releases (a no-op when absent). Independent of [`WriteOp::DeleteJob`],
    /// which leaves them in place.
    DeleteReleases(JobName),
    /// Epoch-checked write of a task record: applies only if the slot's epoch equals `expected`.
    CasTask {
        /// The epoch the writer read ([`FencingToken::NONE`] for a slot never assigned).
        expected: FencingToken,
        /// The new record; its epoch must be at least `expected`.
        record: TaskRecord,
    },
    /// A state report: applies only if the slot has a live record at exactly `epoch`, so a
    /// report about an old assignment never overwrites a newer one.
    PutTaskState {
        /// The task slot.
        task: TaskId,
        /// The assignment the report is about.
        epoch: FencingToken,
        /// Its new state.
        state: SlotState,
        /// Failures in a row.
        failures: u32,
        /// Wall-clock time of the report, milliseconds since the Unix epoch.
        updated_unix_ms: u64,
    },
    /// Insert or update a recovery record by its operation id.
    UpsertRecovery {
        /// The record.
        record: Box<RecoveryRecord>,
        /// Wall-clock time of this write, milliseconds since the Unix epoch.
        unix_ms: u64,
    },
}

/// How an atomic batch ended when it did not fail outright.
#[must_use = "a batch may have lost an epoch-checked write; check the outcome"]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Every write is committed.
    Applied,
    /// The condition of the write at `index` did not hold; nothing was written.
    Conflict {
        /// Index of the first write whose condition failed.
        index: usize,
        /// That slot's live record, if any.
        current: Option<TaskRecord>,
        /// That slot's epoch (see [`CasOutcome::Conflict`]).
        stored_epoch: FencingToken,
    },
}

impl BatchOutcome {
    /// Whether every write was committed.
    pub fn is_applied(&self) -> bool {
        matches!(self, BatchOutcome::Applied)
    }
}

/// A recovery record as stored, with the store's bookkeeping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredRecovery {
    /// Insertion order: assigned at the first write of this operation id, strictly increasing,
    /// kept by later updates.
    pub seq: u64,
    /// Wall-clock time of the first write, milliseconds since the Unix epoch. The record's own
    /// times are readings of the server's monotonic clock, meaningless after a restart; this is
    /// what listings filter on.
    pub recorded_unix_ms: u64,
    /// Wall-clock time of the latest write.
    pub updated_unix_ms: u64,
    /// The record, as written.
    pub record: RecoveryRecord,
}

/// Which recovery records to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryQuery {
    /// Only records first written at or after this wall-clock time (ms since the Unix epoch).
    pub since_unix_ms: Option<u64>,
    /// At most this many records.
    pub limit: Option<usize>,
    /// Newest first (by insertion order) instead of oldest first.
    pub newest_first: bool,
}

impl RecoveryQuery {
    /// Every record, oldest first.
    pub fn all() -> Self {
        RecoveryQuery::default()
    }

    /// The `n` most recent records, newest first.
    pub fn latest(n: usize) -> Self {
        RecoveryQuery {
            since_unix_ms: None,
            limit: Some(n),
            newest_first: true,
        }
    }

    /// Whether `r` passes the wall-clock filter.
    pub(crate) fn admits(&self, r: &StoredRecovery) -> bool {
        self.since_unix_ms.is_none_or(|s| r.recorded_unix_ms >= s)
    }
}

/// An event to append to the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// Kind, e.g. `agent.transition` or `task.rescheduled`.
    pub kind: String,
    /// Agent concerned, if any (`name#generation`).
    pub agent: Option<String>,
    /// Task concerned, if any (`job/index`).
    pub task: Option<String>,
    /// Human-readable line.
    pub message: String,
    /// Structured details.
    pub data: serde_json::Value,
}

impl NewEvent {
    /// An event with no agent, no task and no data.
    pub fn new(unix_ms: u64, kind: impl Into<String>, message: impl Into<String>) -> Self {
        NewEvent {
            unix_ms,
            kind: kind.into(),
            agent: None,
            task: None,
            message: message.into(),
            data: serde_json::Value::Null,
        }
    }

    /// The same event about `agent`.
    #[must_use]
    pub fn agent(mut self, agent: impl ToString) -> Self {
        self.agent = Some(agent.to_string());
        self
    }

    /// The same event about `task`.
    #[must_use]
    pub fn task(mut self, task: impl ToString) -> Self {
        self.task = Some(task.to_string());
        self
    }

    /// The same event with structured details.
    #[must_use]
    pub fn data(mut self, data: serde_json::Value) -> Self {
        self.data = data;
        self
    }

    pub(crate) fn stored(&self, seq: u64) -> StoredEvent {
        StoredEvent {
            seq,
            unix_ms: self.unix_ms,
            kind: self.kind.clone(),
            agent: self.agent.clone(),
            task: self.task.clone(),
            message: self.message.clone(),
            data: self.data.clone(),
        }
    }
}

/// An event as stored in the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Position in the log: assigned by the store, strictly increasing, never reused, also
    /// across restarts and after the oldest events are dropped.
    pub seq: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// Kind.
    pub kind: String,
    /// Agent concerned, if any.
    pub agent: Option<String>,
    /// Task concerned, if any.
    pub task: Option<String>,
    /// Human-readable line.
    pub message: String,
    /// Structured details.
    pub data: serde_json::Value,
}
