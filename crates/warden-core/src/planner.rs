//! The recovery planner: `plan(desired, observed, now) -> Vec<Action>`.
//!
//! The controller stores *desired* state (jobs) and *observed* state (agents and task
//! assignments); [`plan`] compares them and returns what to do. It is a pure function: the same
//! input gives the same actions in the same order. An executor carries the actions out, and
//! [`apply`] is the bookkeeping part of that executor — the change each action makes to the
//! observed state — shared by the runtime and the tests.
//!
//! Every action carries an [`OperationId`] derived from (task, epoch, kind). An action applies
//! only to the epoch it names (a start or reschedule creates `epoch + 1`; a stop acts on
//! `epoch`), so executing a plan twice changes nothing the second time, and a duplicated or
//! retried action is harmless.
//!
//! Recovery levels:
//! 1. a task that crashed is restarted by its agent in place; when the agent gives up it reports
//!    the task Failed and the planner starts it again after an exponential backoff, preferring
//!    another agent (but the same one for a single-replica `[state]`, which is held there);
//! 2. the work of a Failed agent is rescheduled onto healthy agents — a singleton only once the
//!    [fencing rule](crate::fencing) allows it, a service replica at once;
//! 3. a Quarantined (flapping) agent is cordoned: it gets no new work.
//!
//! Rescheduling is rate-limited by a budget the runtime draws from a [`TokenBucket`], and frozen
//! altogether while the mass-failure brake is engaged.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration_serde;
use crate::error::ConfigError;
use crate::fencing::{DeathEvidence, FencingConfig, ReplacementVerdict, singleton_replacement};
use crate::hash::FxHashMap;
use crate::lifecycle::AgentState;
use crate::placement::{Node, Placer};
use crate::state::Replica;
use crate::time::{Time, mul_duration};
use crate::types::{AgentId, FencingToken, JobKind, JobName, JobSpec, Resources, TaskId};

/// Settings of the planner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlannerConfig {
    /// The fencing rule's settings. Not read from configuration files: the runtime copies the
    /// lifecycle's, so the lease is set in one place.
    #[serde(skip)]
    pub fencing: FencingConfig,
    /// Backoff after a task's first failure (default 1 s); doubles with each further failure.
    #[serde(with = "duration_serde")]
    pub backoff_base: Duration,
    /// Longest backoff (default 1 min).
    #[serde(with = "duration_serde")]
    pub backoff_max: Duration,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            fencing: FencingConfig::default(),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

impl PlannerConfig {
    /// Reject impossible settings, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.fencing.validate().map_err(|e| e.within("fencing"))?;
        if self.backoff_base.is_zero() {
            return Err(ConfigError::new(
                "backoff_base",
                "must be greater than zero",
            ));
        }
        if self.backoff_max < self.backoff_base {
            return Err(ConfigError::new(
                "backoff_max",
                "must be at least backoff_base",
            ));
        }
        Ok(())
    }

    /// Backoff before restarting a task that has failed `failures` times in a row.
    pub fn backoff(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        mul_duration(self.backoff_base, f64::from(1u32 << exp)).min(self.backoff_max)
    }
}

/// The lifecycle of one task assignment, as recorded by the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// Not assigned to any agent.
    Pending,
    /// Assigned; the agent has not yet reported it running.
    Starting,
    /// Reported running by its agent.
    Running,
    /// A stop order is out; the agent has not confirmed.
    Stopping,
    /// Stopped on purpose (job removed or scaled down).
    Stopped,
    /// The process exited and the agent gave up restarting it.
    Failed,
}

impl SlotState {
    /// Lower-case name used by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Pending => "pending",
            SlotState::Starting => "starting",
            SlotState::Running => "running",
            SlotState::Stopping => "stopping",
            SlotState::Stopped => "stopped",
            SlotState::Failed => "failed",
        }
    }
}

/// An agent as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentView {
    /// Lifecycle state.
    pub state: AgentState,
    /// Capacity it offers.
    pub capacity: Resources,
    /// Reserved by tasks assigned to it.
    pub allocated: Resources,
    /// Cordoned: gets no new work (set by a Quarantine action or an operator).
    pub cordoned: bool,
    /// Last lease renewal on the server's clock (fencing rule).
    pub last_renewal: Option<Time>,
    /// Evidence of its process's death (fencing rule).
    pub death: DeathEvidence,
    /// Task copies the agent reports running, with their epochs.
    pub running: Vec<(TaskId, FencingToken)>,
    /// It writes a job's `[[config]]` files (an agent of an older release does not: it gets no
    /// job that has some).
    #[serde(default)]
    pub config_files: bool,
    /// It applies a config-only change in place with a signal (session protocol 3).
    #[serde(default)]
    pub reload: bool,
    /// It keeps data restore points of single-replica task state (session protocol 4).
    #[serde(default)]
    pub restore_points: bool,
}

/// One task slot as recorded by the controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// Current epoch (fencing token of the newest assignment).
    pub epoch: FencingToken,
    /// Agent of the newest assignment.
    pub agent: Option<AgentId>,
    /// State of the newest assignment.
    pub state: SlotState,
    /// Failures in a row (reset by the runtime when the task runs healthily).
    pub failures: u32,
    /// When it last failed.
    pub last_failure_at: Option<Time>,
    /// The slot's part in its job's replicated state (`[state]` with standbys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<crate::state::Replica>,
    /// The job version its copy was started from (0: not known, a record older than
    /// versions).
    #[serde(default)]
    pub version: u64,
    /// The agent (by name) whose copy was last stopped on purpose (a rollout, a scale-down):
    /// a single-replica `[state]` job starts there again, where its state is. Kept by the
    /// leader in memory only (a new leader places such a copy afresh).
    #[serde(skip)]
    pub home: Option<Arc<str>>,
}

impl TaskView {
    /// A slot never assigned.
    pub fn pending() -> Self {
        TaskView {
            epoch: FencingToken::NONE,
            agent: None,
            state: SlotState::Pending,
            failures: 0,
            last_failure_at: None,
            replica: None,
            version: 0,
            home: None,
        }
    }
}

/// The desired state: every job by name.
pub type Desired = BTreeMap<JobName, JobSpec>;

/// The observed state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// Agents by id, including recent terminal generations whose tasks may still need moving.
    pub agents: FxHashMap<AgentId, AgentView>,
    /// Task slots per job, indexed by slot.
    pub tasks: FxHashMap<JobName, Vec<TaskView>>,
    /// Whether the mass-failure brake is engaged (freezes rescheduling).
    pub brake_engaged: bool,
    /// How many reschedules this plan may order (from the runtime's [`TokenBucket`]).
    pub reschedule_budget: u32,
    /// What each replica copy of a job with standbys last reported of its state, by slot:
    /// what a promotion at `quorum` compares. Reports, not stored.
    #[serde(skip)]
    pub replica_reports: FxHashMap<TaskId, crate::state::ReplicaReport>,
    /// Daemon jobs: the agent (name) each slot belongs to; `None` is a slot whose agent is
    /// gone for good (its copy is stopped, the slot reused by the next agent to join). The
    /// controller keeps it in step with the fleet before every plan.
    #[serde(default)]
    pub daemon_pins: FxHashMap<JobName, Vec<Option<Arc<str>>>>,
}

/// Identifies an operation for idempotence and for recovery records: `job/index@epoch:kind`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OperationId(pub String);

impl OperationId {
    pub(crate) fn task(task: &TaskId, epoch: FencingToken, kind: &str) -> Self {
        OperationId(format!("{task}@{epoch}:{kind}"))
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a task is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Its job was removed.
    JobRemoved,
    /// Its job has fewer replicas now.
    ScaledDown,
    /// An older copy still running where a newer epoch exists elsewhere (e.g. an agent that
    /// came back after its work was moved): the replacement wins.
    Superseded,
    /// Replaced by a copy of its job's new version (a rollout).
    Update,
}

/// Something the executor must do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Start a task that is not running anywhere, with a new epoch.
    Start {
        /// Operation id.
        op: OperationId,
        /// The task.
        task: TaskId,
        /// The new fencing token (previous epoch + 1).
        epoch: FencingToken,
        /// Where.
        agent: AgentId,
        /// What it reserves there.
        resources: Resources,
    },
    /// Move a task off a Failed or Left agent, with a new epoch.
    Reschedule {
        /// Operation id.
        op: OperationId,
        /// The task.
        task: TaskId,
        /// The new fencing token.
        epoch: FencingToken,
        /// The agent it ran on.
        from: AgentId,
        /// The agent it moves to.
        to: AgentId,
        /// What it reserves there.
        resources: Resources,
    },
    /// Take a task off a Failed or Left agent when no agent has room: it becomes Pending with
    /// a new epoch (so the old copy can never be taken for current).
    Evict {
        /// Operation id.
        op: OperationId,
        /// The task.
        task: TaskId,
        /// The new fencing token.
        epoch: FencingToken,
        /// The agent it ran on.
        from: AgentId,
    },
    /// Stop the copy of `task` with epoch `epoch` on `agent`.
    Stop {
        /// Operation id.
        op: OperationId,
        /// The task.
        task: TaskId,
        /// Epoch of the copy to stop.
        epoch: FencingToken,
        /// Agent holding it.
        agent: Option<AgentId>,
        /// Why.
        reason: StopReason,
    },
    /// Change a replica slot's part in its job's replicated state (a promotion, or a standby
    /// joining the in-sync set), for the slot's current copy at `epoch`.
    SetReplica {
        /// Operation id.
        op: OperationId,
        /// The slot.
        task: TaskId,
        /// Its current copy's fencing token (the write is checked against it).
        epoch: FencingToken,
        /// The new role.
        replica: Replica,
        /// A promotion of a standby outside the in-sync set (every in-sync replica was lost):
        /// writes acknowledged at `standby` that only the lost replicas held are lost.
        unclean: bool,
    },
    /// Move the running copy of `task` at `epoch` to job version `version` in place: a change
    /// of its configuration files alone, which its agent writes and signals the task to read
    /// (a rollout with `[update] reload_signal`). The slot keeps its epoch.
    Reload {
        /// Operation id.
        op: OperationId,
        /// The slot.
        task: TaskId,
        /// Its running copy's fencing token (the write is checked against it).
        epoch: FencingToken,
        /// The agent running it.
        agent: AgentId,
        /// The version it moves to.
        version: u64,
    },
    /// Cordon a flapping agent: no new work until it is released.
    Quarantine {
        /// Operation id.
        op: OperationId,
        /// The agent.
        agent: AgentId,
    },
    /// Something needs a human: work could not be moved.
    Alarm(PlanAlarm),
}

impl Action {
    /// The operation id (alarms have none).
    pub fn op(&self) -> Option<&OperationId> {
        match self {
            Action::Start { op, .. }
            | Action::Reschedule { op, .. }
            | Action::Evict { op, .. }
            | Action::Stop { op, .. }
            | Action::SetReplica { op, .. }
            | Action::Reload { op, .. }
            | Action::Quarantine { op, .. } => Some(op),
            Action::Alarm(_) => None,
        }
    }
}

/// Why the planner could not do everything it should.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "alarm", rename_all = "snake_case")]
pub enum PlanAlarm {
    /// The mass-failure brake holds `tasks` reschedules back.
    RescheduleFrozen {
        /// Tasks waiting.
        tasks: u32,
    },
    /// The rate limit deferred `tasks` reschedules to a later plan.
    RateLimited {
        /// Tasks waiting.
        tasks: u32,
    },
    /// No agent has room for `tasks` tasks of `job`.
    NoCapacity {
        /// The job.
        job: JobName,
        /// Tasks that could not be placed.
        tasks: u32,
    },
}

/// Whether the current copy of a slot may still be running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Copy {
    /// No copy can be running.
    Dead,
    /// A copy may be running and must be respected.
    Alive,
    /// A copy may be running on a lost agent; wait for the fencing rule.
    Fencing,
}

/// The status of a slot's copy, looking its agent up with `agent_of`. A copy that must be
/// waited for until a known instant (the fencing rule's) lowers `wake` to that instant.
fn copy_status<'a>(
    cfg: &PlannerConfig,
    kind: JobKind,
    t: &TaskView,
    agent_of: impl Fn(&AgentId) -> Option<&'a AgentView>,
    now: Time,
    wake: &mut Option<Time>,
) -> Copy {
    match t.state {
        SlotState::Pending | SlotState::Stopped | SlotState::Failed => return Copy::Dead,
        SlotState::Starting | SlotState::Running | SlotState::Stopping => {}
    }
    let Some(agent) = &t.agent else {
        return Copy::Dead;
    };
    let Some(view) = agent_of(agent) else {
        // Nothing known about the agent (e.g. right after a server restart): respect the copy.
        return Copy::Fencing;
    };
    match view.state {
        AgentState::Left => Copy::Dead,
        AgentState::Failed => match kind {
            JobKind::Service | JobKind::Daemon => Copy::Dead,
            JobKind::Singleton => {
                match singleton_replacement(&cfg.fencing, view.last_renewal, view.death, now) {
                    ReplacementVerdict::Allowed(_) => Copy::Dead,
                    ReplacementVerdict::Wait { until } => {
                        lower(wake, until);
                        Copy::Fencing
                    }
                }
            }
        },
        AgentState::Joining
        | AgentState::Healthy
        | AgentState::Degraded
        | AgentState::Suspect
        | AgentState::Quarantined => Copy::Alive,
    }
}

/// Whether a slot that should not run needs a Stop: a live copy not already being stopped, or
/// a dead one not yet recorded as stopped. A copy on a lost agent waits for the fencing rule:
/// only then is it surely gone.
fn needs_stop(t: &TaskView, status: Copy) -> bool {
    match status {
        Copy::Fencing => false,
        Copy::Alive => !matches!(t.state, SlotState::Stopping | SlotState::Stopped),
        Copy::Dead => t.state != SlotState::Stopped,
    }
}

/// A job with standbys, as the promotion rule reads it.
struct ReplicatedJob<'a> {
    name: &'a JobName,
    state: crate::state::StateSpec,
    slots: &'a [TaskView],
    want: usize,
    reports: &'a FxHashMap<TaskId, crate::state::ReplicaReport>,
}

/// The promotion rule of a job with standbys. When its primary is gone (its copy surely dead,
/// by the same fencing rule as any singleton's) or there is none, a standby takes its place at
/// a newer state epoch.
///
/// At `standby` (and `local`): an in-sync standby that runs on a live agent, at the next
/// epoch; while an in-sync standby may yet come back (its agent is only suspected), nothing is
/// promoted, since any other could lack writes acknowledged at `standby`; once every in-sync
/// standby is surely gone too, the live standby with the lowest slot — an *unclean* promotion
/// (`unclean` in the action): writes acknowledged at `standby` that only the lost replicas
/// held are lost with them, the documented limit of that level (it survives the loss of the
/// primary and of all standbys but one in-sync one).
///
/// At `quorum` (see [`promote_quorum`]): the live standbys are first fenced at the next epoch
/// ([`Plan::fence`]); once enough of them reported what they hold under it, the one holding
/// the most is promoted at the epoch after.
///
/// Returns the slot to leave alone this round.
#[allow(clippy::too_many_arguments)]
fn promote<'a>(
    cfg: &PlannerConfig,
    job: &ReplicatedJob<'_>,
    on_terminal: impl Fn(&AgentId) -> Option<&'a AgentView>,
    on_any: impl Fn(&AgentId) -> Option<&'a AgentView>,
    now: Time,
    wake: &mut Option<Time>,
    actions: &mut Vec<Action>,
    fence: &mut Vec<(JobName, u64)>,
) -> Option<usize> {
    let slots = &job.slots[..job.want.min(job.slots.len())];
    let replicas = || slots.iter().map(|t| t.replica.as_ref());
    let epoch = crate::state::state_epoch(replicas());
    if epoch == 0 {
        return None; // nothing placed yet: the first start names the primary
    }
    let primary = crate::state::primary_index(replicas());
    if let Some(p) = primary
        && copy_status(cfg, JobKind::Singleton, &slots[p], on_terminal, now, wake) != Copy::Dead
    {
        return None;
    }
    let live = |t: &TaskView| {
        t.state == SlotState::Running
            && t.agent
                .as_ref()
                .and_then(&on_any)
                .is_some_and(|v| !v.state.is_terminal() && v.state != AgentState::Suspect)
    };
    // In-sync standbys stay in the set across a promotion: each held every write acknowledged
    // under the old epoch, and the new primary waits for them from its first write.
    let in_sync = |t: &TaskView| t.replica.is_some_and(|r| r.in_sync && !r.primary);
    let others = || {
        slots
            .iter()
            .enumerate()
            .filter(move |(i, _)| Some(*i) != primary)
    };
    let pick = if job.state.ack() == crate::state::AckLevel::Quorum {
        match promote_quorum(job, slots, primary, epoch, &live, |t| {
            copy_status(cfg, JobKind::Singleton, t, &on_any, now, wake) == Copy::Dead
        }) {
            Quorum::Promote { slot, unclean } => Some((slot, unclean, epoch + 2)),
            Quorum::Fence { hold } => {
                fence.push((job.name.clone(), epoch + 1));
                return if hold { primary } else { None };
            }
        }
    } else {
        let waiting = others().any(|(_, t)| {
            in_sync(t)
                && !live(t)
                && copy_status(cfg, JobKind::Singleton, t, &on_any, now, wake) != Copy::Dead
        });
        let pick = others().find(|(_, t)| in_sync(t) && live(t)).or_else(|| {
            if waiting {
                None
            } else {
                others().find(|(_, t)| live(t))
            }
        });
        let Some((i, t)) = pick else {
            // Nothing to promote now. While an in-sync standby may come back, the old
            // primary's slot waits: started afresh it would be an empty primary that the
            // standbys follow. With no standby left at all, the slot starts again (on what its
            // agent still holds).
            return if waiting { primary } else { None };
        };
        Some((i, !in_sync(t), epoch + 1))
    };
    let Some((i, unclean, new_epoch)) = pick else {
        return primary;
    };
    let t = &slots[i];
    let task = TaskId::new(job.name.clone(), u32::try_from(i).unwrap_or(u32::MAX));
    actions.push(Action::SetReplica {
        op: OperationId(format!("{task}@{}:promote-{new_epoch}", t.epoch)),
        unclean,
        task,
        epoch: t.epoch,
        replica: Replica {
            epoch: new_epoch,
            primary: true,
            in_sync: false,
        },
    });
    // The old primary's slot comes back as a standby once the promotion is applied.
    primary
}

/// What the quorum rule decides.
enum Quorum {
    /// Promote this slot (at the epoch after the fence).
    Promote { slot: usize, unclean: bool },
    /// Fence the replicas and wait for their reports; `hold`: leave the old primary's slot
    /// alone (a standby may still be promoted).
    Fence { hold: bool },
}

/// The promotion rule at `quorum`. A write was acknowledged once a majority of `standbys + 1`
/// replicas held it, so with the primary lost, `standbys + 1 - majority + 1` standbys together
/// hold every acknowledged write, and the one of them that holds the most
/// ([`crate::state::Candidate::holds`]) holds each. What they report counts only once it is
/// final: reported under the fence epoch (`epoch + 1`), which they refuse the lost primary's
/// frames from. The promotion is clean when enough in-sync standbys reported; while a standby
/// that has not may yet report (it runs, or its agent is only suspected), the rule waits; once
/// every other standby is surely gone, the best of those that reported is promoted anyway, an
/// *unclean* promotion (a majority was lost: writes only the lost replicas held are lost).
fn promote_quorum(
    job: &ReplicatedJob<'_>,
    slots: &[TaskView],
    primary: Option<usize>,
    epoch: u64,
    live: &dyn Fn(&TaskView) -> bool,
    mut dead: impl FnMut(&TaskView) -> bool,
) -> Quorum {
    let fence_at = epoch + 1;
    let mut ready = Vec::new();
    let mut members = 0usize;
    let mut waiting = false;
    for (i, t) in slots
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != primary)
    {
        let report = u32::try_from(i)
            .ok()
            .and_then(|index| job.reports.get(&TaskId::new(job.name.clone(), index)))
            .filter(|r| r.copy == t.epoch && r.fence >= fence_at);
        let in_sync = t.replica.is_some_and(|r| r.in_sync && !r.primary);
        match report {
            Some(r) if live(t) => {
                members += usize::from(in_sync);
                ready.push(crate::state::Candidate {
                    id: i,
                    in_sync,
                    last_epoch: r.last_epoch,
                    synced: r.seq,
                });
            }
            _ => waiting |= live(t) || !dead(t),
        }
    }
    let need = usize::from(job.state.standbys) + 1 - crate::state::majority(job.state.standbys) + 1;
    let best = crate::state::holding_most(&ready);
    match best {
        Some(c) if members >= need => Quorum::Promote {
            slot: c.id,
            unclean: false,
        },
        Some(c) if !waiting => Quorum::Promote {
            slot: c.id,
            unclean: true,
        },
        _ => Quorum::Fence {
            hold: waiting || !ready.is_empty(),
        },
    }
}

/// Copies of a job per agent among its first `want` slots.
fn job_copies(slots: &[TaskView], want: usize) -> FxHashMap<AgentId, u32> {
    let mut m = FxHashMap::default();
    for t in slots.iter().take(want) {
        if let (Some(a), SlotState::Starting | SlotState::Running) = (&t.agent, t.state) {
            *m.entry(a.clone()).or_insert(0) += 1;
        }
    }
    m
}

fn eligible_nodes(obs: &Observed) -> Vec<Node> {
    obs.agents
        .iter()
        .filter(|(_, v)| v.state.accepts_work() && !v.cordoned)
        .map(|(id, v)| Node {
            id: id.clone(),
            capacity: v.capacity,
            allocated: v.allocated,
            config_files: v.config_files,
        })
        .collect()
}

fn lower(wake: &mut Option<Time>, at: Time) {
    *wake = Some(wake.map_or(at, |w| w.min(at)));
}

/// A plan, and when it must be made again even if nothing in its input changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// What to do now.
    pub actions: Vec<Action>,
    /// The earliest instant at which the same input plans differently: a singleton's fencing
    /// wait or a failed task's backoff ends. `None`: only a change of the input can.
    pub wake_at: Option<Time>,
    /// Jobs writing at `quorum` whose primary is lost, with the state epoch their other
    /// replicas must be told (as standbys with no primary) before one is promoted: once a
    /// replica has seen it, it refuses the lost primary's frames, and what it reports holding
    /// is final. Not an operation: nothing is stored, it is asked again at every plan.
    pub fence: Vec<(JobName, u64)>,
}

/// Compute the actions that move `observed` towards `desired` at `now`.
pub fn plan(cfg: &PlannerConfig, desired: &Desired, observed: &Observed, now: Time) -> Vec<Action> {
    plan_next(cfg, desired, observed, now).actions
}

/// Like [`plan`], also saying when to plan again if nothing changes ([`Plan::wake_at`]), so a
/// caller can plan only on change and at that instant.
pub fn plan_next(cfg: &PlannerConfig, desired: &Desired, observed: &Observed, now: Time) -> Plan {
    let mut wake: Option<Time> = None;
    let mut actions = Vec::new();
    let mut fence = Vec::new();
    let mut placer = Placer::new(eligible_nodes(observed));
    let mut budget = observed.reschedule_budget;
    let (mut frozen, mut deferred) = (0u32, 0u32);
    let empty: Vec<TaskView> = Vec::new();
    let mut known_jobs = 0usize;
    // Only copies on terminal agents (Failed, Left) can be dead while their slot says they
    // run; everyone else's copies are respected. Looking tasks up in this small map instead of
    // the whole fleet keeps a 100,000-task plan in cache.
    let terminal: FxHashMap<&AgentId, &AgentView> = observed
        .agents
        .iter()
        .filter(|(_, v)| v.state.is_terminal())
        .collect();
    let on_terminal = |a: &AgentId| terminal.get(a).copied();
    let on_any = |a: &AgentId| observed.agents.get(a);

    // Singletons first: under a tight budget the work that cannot run twice, and so cannot run
    // at all until moved, goes first.
    for kind in [JobKind::Singleton, JobKind::Service, JobKind::Daemon] {
        for (name, spec) in desired.iter().filter(|(_, s)| s.kind == kind) {
            let slots = match observed.tasks.get(name) {
                Some(slots) => {
                    known_jobs += 1;
                    slots
                }
                None => &empty,
            };
            // A daemon's slot `i` belongs to agent `pins[i]`.
            let pins: Option<&[Option<Arc<str>>]> = (kind == JobKind::Daemon).then(|| {
                observed
                    .daemon_pins
                    .get(name)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
            });
            let want = pins.map_or(spec.desired_count() as usize, <[_]>::len);
            // Agents of an older release do not write configuration files.
            placer.only_config_files(!spec.config.is_empty());
            // Copies per agent, for spreading; built only if this job needs a placement.
            let mut copies: Option<FxHashMap<AgentId, u32>> = None;
            let mut unplaced = 0u32;
            // A replicated state's lost primary is replaced by promoting a standby; its own
            // slot waits for the promotion (and then comes back as a standby).
            let held = if let Some(state) = spec.state.filter(|s| s.standbys > 0) {
                let job = ReplicatedJob {
                    name,
                    state,
                    slots,
                    want,
                    reports: &observed.replica_reports,
                };
                promote(
                    cfg,
                    &job,
                    on_terminal,
                    on_any,
                    now,
                    &mut wake,
                    &mut actions,
                    &mut fence,
                )
            } else {
                None
            };
            for index in 0..want.max(slots.len()) {
                if held == Some(index) {
                    continue;
                }
                let view = slots.get(index);
                let pin = pins.and_then(|p| p.get(index)).and_then(Option::as_deref);
                let wanted = index < want && (pins.is_none() || pin.is_some());
                let status = match view {
                    None => Copy::Dead,
                    Some(t) if wanted => copy_status(cfg, kind, t, on_terminal, now, &mut wake),
                    Some(t) => copy_status(cfg, kind, t, on_any, now, &mut wake),
                };
                if wanted && status != Copy::Dead {
                    // The common case, kept cheap: a copy runs (or must be waited for).
                    continue;
                }
                let task = TaskId::new(name.clone(), u32::try_from(index).unwrap_or(u32::MAX));
                let epoch = view.map_or(FencingToken::NONE, |t| t.epoch);
                if !wanted {
                    // Surplus slot (scaled down).
                    if let Some(t) = view
                        && needs_stop(t, status)
                    {
                        actions.push(Action::Stop {
                            op: OperationId::task(&task, epoch, "stop"),
                            task,
                            epoch,
                            agent: t.agent.clone(),
                            reason: StopReason::ScaledDown,
                        });
                    }
                    continue;
                }
                match status {
                    Copy::Alive | Copy::Fencing => continue,
                    Copy::Dead => {}
                }
                let next = epoch.next();
                let lost_from = view.and_then(|t| match t.state {
                    SlotState::Starting | SlotState::Running | SlotState::Stopping => {
                        t.agent.clone()
                    }
                    SlotState::Pending | SlotState::Stopped | SlotState::Failed => None,
                });
                if let Some(from) = lost_from {
                    // Level 2: the agent is gone; move the work.
                    if observed.brake_engaged {
                        frozen += 1;
                        continue;
                    }
                    if budget == 0 {
                        deferred += 1;
                        continue;
                    }
                    budget -= 1;
                    let copies = copies.get_or_insert_with(|| job_copies(slots, want));
                    let apart = spec.standbys() > 0;
                    let to = match pin {
                        // A daemon's copy never moves: only its own agent's next generation
                        // takes it back.
                        Some(pin) => placer.place_on(&spec.resources, copies, pin),
                        None => placer.place(&spec.resources, copies, Some(&from), apart),
                    };
                    if pin.is_some() && to.is_none() {
                        unplaced += 1;
                        continue;
                    }
                    match to {
                        Some(to) => {
                            actions.push(Action::Reschedule {
                                op: OperationId::task(&task, next, "reschedule"),
                                task,
                                epoch: next,
                                from,
                                to,
                                resources: spec.resources,
                            });
                        }
                        None => {
                            unplaced += 1;
                            actions.push(Action::Evict {
                                op: OperationId::task(&task, next, "evict"),
                                task,
                                epoch: next,
                                from,
                            });
                        }
                    }
                    continue;
                }
                // Level 1 (after the agent gave up) or a fresh start.
                let avoid = match view {
                    Some(t) if t.state == SlotState::Failed => {
                        let due = t.last_failure_at.map(|at| at + cfg.backoff(t.failures));
                        if let Some(due) = due
                            && now < due
                        {
                            lower(&mut wake, due);
                            continue;
                        }
                        t.agent.as_ref()
                    }
                    Some(_) | None => None,
                };
                let copies = copies.get_or_insert_with(|| job_copies(slots, want));
                // A single-replica state is on the agent its copy last ran on: start there
                // again when it can take the copy (a rollout, a restart after a stop or a
                // failure: another agent would start it without its data).
                let home = view
                    .filter(|_| spec.state.is_some() && spec.standbys() == 0 && pin.is_none())
                    .and_then(|t| match t.state {
                        SlotState::Stopped => t.home.as_deref(),
                        SlotState::Failed => t.agent.as_ref().map(|a| &*a.name),
                        _ => None,
                    });
                let placed = match (pin, home) {
                    (Some(pin), _) => placer.place_on(&spec.resources, copies, pin),
                    (None, Some(home)) => placer
                        .place_on(&spec.resources, copies, home)
                        .or_else(|| placer.place(&spec.resources, copies, avoid, false)),
                    (None, None) => {
                        placer.place(&spec.resources, copies, avoid, spec.standbys() > 0)
                    }
                };
                match placed {
                    Some(agent) => {
                        actions.push(Action::Start {
                            op: OperationId::task(&task, next, "start"),
                            task,
                            epoch: next,
                            agent,
                            resources: spec.resources,
                        });
                    }
                    None => unplaced += 1,
                }
            }
            if unplaced > 0 {
                actions.push(Action::Alarm(PlanAlarm::NoCapacity {
                    job: name.clone(),
                    tasks: unplaced,
                }));
            }
        }
    }

    // Jobs that are no longer desired (skipped cheaply when every observed job is desired).
    let mut removed: Vec<&JobName> = if known_jobs == observed.tasks.len() {
        Vec::new()
    } else {
        observed
            .tasks
            .keys()
            .filter(|name| !desired.contains_key(*name))
            .collect()
    };
    removed.sort();
    for name in removed {
        for (index, t) in observed.tasks[name].iter().enumerate() {
            let task = TaskId::new(name.clone(), u32::try_from(index).unwrap_or(u32::MAX));
            // The spec is gone, so its kind is unknown: judge the copy as strictly as a
            // singleton's. Otherwise a job removed and re-added while its old copy sits on a
            // lost agent could start a second copy before the first is fenced.
            let status = copy_status(cfg, JobKind::Singleton, t, on_any, now, &mut wake);
            if needs_stop(t, status) {
                actions.push(Action::Stop {
                    op: OperationId::task(&task, t.epoch, "stop"),
                    task,
                    epoch: t.epoch,
                    agent: t.agent.clone(),
                    reason: StopReason::JobRemoved,
                });
            }
        }
    }

    // Copies an agent still runs that are not the current assignment (e.g. an agent that came
    // back after its work moved): the replacement wins.
    let mut reporters: Vec<(&AgentId, &AgentView)> = observed
        .agents
        .iter()
        .filter(|(_, v)| !v.running.is_empty() && !v.state.is_terminal())
        .collect();
    reporters.sort_by(|a, b| a.0.cmp(b.0));
    for (agent, view) in reporters {
        let mut running = view.running.clone();
        running.sort();
        for (task, epoch) in running {
            let current = observed
                .tasks
                .get(&task.job)
                .and_then(|s| s.get(task.index as usize));
            let is_current = current.is_some_and(|t| {
                t.epoch == epoch
                    && t.agent.as_ref() == Some(agent)
                    && !matches!(t.state, SlotState::Stopped | SlotState::Stopping)
            });
            let stopping_here = current.is_some_and(|t| {
                t.epoch == epoch
                    && t.agent.as_ref() == Some(agent)
                    && t.state == SlotState::Stopping
            });
            if !is_current && !stopping_here {
                actions.push(Action::Stop {
                    op: OperationId(format!("{task}@{epoch}:stop-stale@{agent}")),
                    task,
                    epoch,
                    agent: Some(agent.clone()),
                    reason: StopReason::Superseded,
                });
            }
        }
    }

    // Level 3: cordon quarantined agents.
    let mut quarantined: Vec<&AgentId> = observed
        .agents
        .iter()
        .filter(|(_, v)| v.state == AgentState::Quarantined && !v.cordoned)
        .map(|(id, _)| id)
        .collect();
    quarantined.sort();
    for agent in quarantined {
        actions.push(Action::Quarantine {
            op: OperationId(format!("{agent}:quarantine")),
            agent: agent.clone(),
        });
    }

    if frozen > 0 {
        actions.push(Action::Alarm(PlanAlarm::RescheduleFrozen { tasks: frozen }));
    }
    if deferred > 0 {
        actions.push(Action::Alarm(PlanAlarm::RateLimited { tasks: deferred }));
    }
    Plan {
        actions,
        fence,
        wake_at: wake,
    }
}

fn slot<'a>(obs: &'a mut Observed, task: &TaskId) -> &'a mut TaskView {
    let slots = obs.tasks.entry(task.job.clone()).or_default();
    let i = task.index as usize;
    if slots.len() <= i {
        slots.resize_with(i + 1, TaskView::pending);
    }
    &mut slots[i]
}

fn release(obs: &mut Observed, agent: &Option<AgentId>, resources: Resources) {
    if let Some(a) = agent
        && let Some(v) = obs.agents.get_mut(a)
    {
        v.allocated = v.allocated.minus(&resources);
    }
}

/// Record a new assignment of `task` at `epoch` on `to` (moved off `from`, if given); a no-op
/// unless `epoch` is newer than the slot's.
fn assign(
    observed: &mut Observed,
    task: &TaskId,
    epoch: FencingToken,
    to: &AgentId,
    resources: Resources,
    from: Option<&AgentId>,
) {
    let t = slot(observed, task);
    if epoch <= t.epoch {
        return;
    }
    t.epoch = epoch;
    t.agent = Some(to.clone());
    t.state = SlotState::Starting;
    if let Some(from) = from {
        release(observed, &Some(from.clone()), resources);
    }
    if let Some(v) = observed.agents.get_mut(to) {
        v.allocated = v.allocated.plus(&resources);
    }
}

/// Apply the bookkeeping of `actions` to `observed`, as an executor does once it has persisted
/// them. Each action takes effect only on the epoch it names, so applying the same actions
/// twice changes nothing the second time. `resources_of` gives a job's per-task reservation
/// (for jobs being stopped, whose spec may be gone, return what was reserved or zero).
pub fn apply(
    observed: &mut Observed,
    actions: &[Action],
    resources_of: impl Fn(&JobName) -> Resources,
) {
    for action in actions {
        match action {
            Action::Start {
                task,
                epoch,
                agent,
                resources,
                ..
            } => assign(observed, task, *epoch, agent, *resources, None),
            Action::Reschedule {
                task,
                epoch,
                from,
                to,
                resources,
                ..
            } => assign(observed, task, *epoch, to, *resources, Some(from)),
            Action::Evict {
                task, epoch, from, ..
            } => {
                let t = slot(observed, task);
                if *epoch <= t.epoch {
                    continue;
                }
                t.epoch = *epoch;
                t.agent = None;
                t.state = SlotState::Pending;
                release(observed, &Some(from.clone()), resources_of(&task.job));
            }
            Action::Stop {
                task,
                epoch,
                agent,
                reason: StopReason::Superseded,
                ..
            } => {
                if let Some(a) = agent
                    && let Some(v) = observed.agents.get_mut(a)
                {
                    v.running.retain(|(t, e)| !(t == task && e == epoch));
                }
            }
            Action::Stop {
                task,
                epoch,
                agent,
                reason: StopReason::JobRemoved | StopReason::ScaledDown | StopReason::Update,
                ..
            } => {
                let agent_live = agent
                    .as_ref()
                    .and_then(|a| observed.agents.get(a))
                    .is_some_and(|v| !v.state.is_terminal());
                let t = slot(observed, task);
                if t.epoch != *epoch || t.state == SlotState::Stopped {
                    continue;
                }
                let was_running = matches!(t.state, SlotState::Starting | SlotState::Running);
                if agent_live && was_running {
                    // The agent must confirm; until then the copy counts as possibly running.
                    t.state = SlotState::Stopping;
                } else if agent_live && t.state == SlotState::Stopping {
                    // Already waiting for that confirmation.
                } else {
                    t.state = SlotState::Stopped;
                    let agent = t.agent.take();
                    if let Some(a) = &agent {
                        t.home = Some(a.name.clone());
                    }
                    if was_running || agent.is_some() {
                        release(observed, &agent, resources_of(&task.job));
                    }
                }
            }
            Action::Quarantine { agent, .. } => {
                if let Some(v) = observed.agents.get_mut(agent) {
                    v.cordoned = true;
                }
            }
            Action::SetReplica {
                task,
                epoch,
                replica,
                ..
            } => {
                let t = slot(observed, task);
                if t.epoch == *epoch {
                    t.replica = Some(*replica);
                }
            }
            Action::Reload {
                task,
                epoch,
                version,
                ..
            } => {
                let t = slot(observed, task);
                if t.epoch == *epoch {
                    t.version = *version;
                }
            }
            Action::Alarm(_) => {}
        }
    }
}

/// A token bucket for the reschedule rate limit: `rate` tokens per second, at most `burst`.
/// Pure: the caller passes the time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Time,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_sec: f64, burst: u32, now: Time) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: rate_per_sec.max(0.0),
            burst,
            tokens: burst,
            updated: now,
        }
    }

    fn refill(&mut self, now: Time) {
        let dt = now.saturating_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.updated = self.updated.max(now);
    }

    /// Whole tokens available at `now`.
    pub fn available(&mut self, now: Time) -> u32 {
        self.refill(now);
        self.tokens.floor() as u32
    }

    /// Spend `n` tokens (as many as there are).
    pub fn take(&mut self, n: u32, now: Time) {
        self.refill(now);
        self.tokens = (self.tokens - f64::from(n)).max(0.0);
    }
}

#[cfg(test)]
mod tests;
