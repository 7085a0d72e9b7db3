//! What goes into the controller ([`Input`]) and what comes out ([`Command`]), in domain terms.
//!
//! Nothing here knows the wire protocol: the runtime converts protobuf messages into these
//! types (and orders back into protobuf) in one place, `warden_proto::convert`. Identities
//! carry their epochs: an [`AgentId`] names a generation, an assignment its [`FencingToken`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::anomaly::{AnomalyConfig, SignalSet};
use crate::lifecycle::{AgentState, Cause, ProbeReport, Transition};
use crate::planner::{SlotState, TaskView};
use crate::recovery::RecoveryRecord;
use crate::release::JobReleases;
use crate::time::Time;
use crate::types::{
    AgentId, FencingToken, HealthCheck, JobName, JobSpec, Resources, ServicePort, Signals, TaskId,
};

/// One session of the runtime with an agent. The runtime numbers its sessions; two sessions of
/// one agent generation (a reconnect) have different ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub u64);

/// The first message of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Agent name as sent (the controller trims it and checks it).
    pub name: String,
    /// 0 on a fresh start (the runtime asks the store for a new generation); the generation
    /// of the agent's process on a reconnect.
    pub generation: u64,
    /// `host:port` of the agent's probe listener, as sent.
    pub probe_addr: String,
    /// `host:port` of the agent's replication listener (replicated task state); empty when it
    /// has none.
    pub state_addr: String,
    /// What the agent offers.
    pub capacity: Resources,
    /// Copies the agent runs right now (non-empty on a reconnect).
    pub running: Vec<(TaskId, FencingToken)>,
    /// How long the agent's shims keep its service copies when its process vanishes (zero:
    /// they die with it).
    pub reattach_window: std::time::Duration,
    /// The agent writes a job's `[[config]]` files (session protocol 2 and later): jobs with
    /// configuration files are placed only on such agents.
    pub config_files: bool,
    /// The agent applies a config change in place with a signal ([`Order::Reload`], session
    /// protocol 3 and later); others get a new copy instead.
    pub reload: bool,
    /// The agent keeps data restore points of single-replica task state and puts them back
    /// (session protocol 4 and later): a revert past a data epoch is allowed only then.
    pub restore_points: bool,
}

impl Hello {
    /// The name the agent is known by: the one it sent, without surrounding space.
    pub fn trimmed_name(&self) -> &str {
        self.name.trim()
    }
}

/// The phase of one task copy, as its agent reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyPhase {
    /// Being started (or restarted in place after a crash, with backoff).
    Starting,
    /// Its process runs.
    Running,
    /// A stop order is being carried out.
    Stopping,
    /// Ended on purpose, or exited with success.
    Stopped,
    /// Exited and the agent gave up restarting it.
    Failed,
    /// Killed by its agent because the agent's lease ran out (a singleton fencing itself):
    /// no failure of the task.
    Fenced,
}

impl CopyPhase {
    /// The slot state this phase moves a slot towards; `None` for [`CopyPhase::Fenced`], which
    /// is handled on its own (the slot is stopped without a failure).
    pub fn slot_state(self) -> Option<SlotState> {
        match self {
            CopyPhase::Starting => Some(SlotState::Starting),
            CopyPhase::Running => Some(SlotState::Running),
            CopyPhase::Stopping => Some(SlotState::Stopping),
            CopyPhase::Stopped => Some(SlotState::Stopped),
            CopyPhase::Failed => Some(SlotState::Failed),
            CopyPhase::Fenced => None,
        }
    }
}

/// What an agent says about one of its copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyReport {
    /// The task slot.
    pub task: TaskId,
    /// The copy's fencing token.
    pub epoch: FencingToken,
    /// Its phase (`None`: the agent sent a phase this server does not know).
    pub phase: Option<CopyPhase>,
    /// Its health check passes (true when it has none).
    pub healthy: bool,
    /// `host:port` it serves on, when its job declares a service; empty otherwise.
    pub endpoint: String,
    /// For the primary of a replicated state: the agent names of the standbys it waits for
    /// (the in-sync set it was sent, and those it found caught up since).
    pub in_sync: Vec<String>,
    /// For a replica of a replicated state: the last sequence number it holds (a primary:
    /// has written; a standby: has applied); 0 when none.
    pub state_seq: u64,
    /// For a primary: it takes no more writes (sealed for a planned switchover).
    pub sealed: bool,
    /// For a replica: the highest state epoch it has seen (it refuses frames of older ones).
    pub state_fence: u64,
    /// For a replica: the epoch of the newest entry it holds.
    pub state_last_epoch: u64,
    /// For the primary of a replicated state: in-sync standbys that held up writes for
    /// [`crate::state::STANDBY_LAG_LIMIT`] (agent names), to be taken out of the set.
    pub lagging: Vec<String>,
    /// The job version whose configuration the copy runs (0: not said).
    pub version: u64,
}

impl CopyReport {
    /// A copy with nothing to say of a replicated state (the fields a primary or replica
    /// fills in are empty).
    pub fn new(
        task: TaskId,
        epoch: FencingToken,
        phase: CopyPhase,
        healthy: bool,
        endpoint: String,
    ) -> CopyReport {
        CopyReport {
            task,
            epoch,
            phase: Some(phase),
            healthy,
            endpoint,
            in_sync: Vec::new(),
            state_seq: 0,
            sealed: false,
            state_fence: 0,
            state_last_epoch: 0,
            version: 0,
            lagging: Vec::new(),
        }
    }
}

/// A heartbeat.
#[derive(Clone, Debug, PartialEq)]
pub struct Heartbeat {
    /// Grows by one per heartbeat sent by the generation.
    pub seq: u64,
    /// Health signals, when measured.
    pub signals: Option<Signals>,
    /// The signals the agent's own detectors hold anomalous, when it judged them itself
    /// (with the settings of [`Welcome::anomaly`]).
    pub judged: Option<SignalSet>,
    /// Every copy the agent runs.
    pub copies: Copies,
}

/// The copies a heartbeat reports.
#[derive(Clone, Debug, PartialEq)]
pub enum Copies {
    /// Every copy the agent runs.
    Listed(Vec<CopyReport>),
    /// The same as heartbeat `since` of this session listed: the agent saves sending an
    /// unchanged list (and the server decoding it). The controller uses the list it kept from
    /// that heartbeat; when it holds no list from that one (it never read it: the heartbeat was
    /// dropped by a rate limit, say) this heartbeat says nothing about copies.
    Unchanged {
        /// The heartbeat that listed them.
        since: u64,
    },
}

/// The controller's persisted state as the store holds it: desired jobs and task slots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every job.
    pub jobs: Vec<JobSpec>,
    /// Every live slot record.
    pub slots: Vec<(TaskId, TaskView)>,
    /// Every job's versions and rollout.
    pub releases: Vec<JobReleases>,
}

/// A leader as the election publishes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// The leader's advertised REST address.
    pub name: String,
    /// Its term: the election's fencing token, growing with every new leader.
    pub term: u64,
    /// When its term began, ms since the Unix epoch.
    pub since_unix_ms: u64,
}

/// This replica's role as the election last told it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Election {
    /// This replica leads in `term`, until `valid_until` on the controller's clock (`None`: for
    /// ever, a single server). Past that instant its leadership counts as lost, whether or not
    /// a new message said so.
    Leader {
        /// The term.
        term: u64,
        /// When the term began, ms since the Unix epoch.
        since_unix_ms: u64,
        /// When the leadership must be taken as lost unless renewed.
        valid_until: Option<Time>,
    },
    /// Another replica leads, or none is known.
    Follower {
        /// The leader, if known.
        leader: Option<LeaderInfo>,
    },
}

/// Why the controller asked for the store's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// To take over as leader in this term.
    TakeOver {
        /// The term.
        term: u64,
    },
    /// A standby's periodic refresh.
    Refresh,
}

/// Identifies a write whose outcome the controller waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WriteId(pub u64);

/// How an epoch-checked write ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed.
    Applied,
    /// The slot's epoch was not the one expected: the controller's view was stale. The store's
    /// record (or, without one, its epoch) replaces the controller's.
    Conflict {
        /// The slot's live record.
        current: Option<TaskView>,
        /// The slot's epoch in the store.
        stored_epoch: FencingToken,
    },
    /// The store failed; nothing was written. The slot is planned again.
    Failed(String),
}

/// What happened, fed to [`Controller::step`](super::Controller::step).
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A session was admitted for generation `agent` (its Hello passed
    /// [`Controller::admission`](super::Controller::admission) and the runtime assigned the
    /// generation when the agent asked for one).
    SessionOpened {
        /// The runtime's session.
        session: SessionId,
        /// The generation this session speaks for.
        agent: AgentId,
        /// The Hello.
        hello: Hello,
    },
    /// A heartbeat arrived on `agent`'s session.
    Heartbeat {
        /// Who sent it (the session's admitted identity).
        agent: AgentId,
        /// The heartbeat.
        beat: Heartbeat,
    },
    /// A copy changed phase.
    TaskReport {
        /// Who sent it.
        agent: AgentId,
        /// The copy.
        copy: CopyReport,
        /// What the agent says about it (an exit code, a reason).
        message: String,
    },
    /// A probe round for `agent` finished.
    Probes {
        /// The agent probed.
        agent: AgentId,
        /// What the probes found.
        report: ProbeReport,
    },
    /// The agent left gracefully (its tasks are stopped).
    Leave {
        /// Who.
        agent: AgentId,
    },
    /// The agent is about to restart on purpose (an upgrade): its shims keep its tasks for
    /// `window`; hold any verdict on it until then.
    Restarting {
        /// Who.
        agent: AgentId,
        /// How long it may be away.
        window: std::time::Duration,
    },
    /// A session ended: closed, reset or failed.
    SessionClosed {
        /// Who it spoke for.
        agent: AgentId,
        /// Which session.
        session: SessionId,
    },
    /// Time passed: detector deadlines, probes, drains, and a reconcile round when one is due.
    Tick,
    /// An epoch-checked write the controller asked for ended.
    Persisted {
        /// Which write.
        write: WriteId,
        /// How.
        outcome: WriteOutcome,
    },
    /// The election changed (or the runtime read it again).
    Election(Election),
    /// The store's state, read as asked by [`Command::Load`].
    Loaded {
        /// Why it was read.
        load: Load,
        /// What it holds.
        snapshot: Snapshot,
    },
    /// The store could not be read.
    LoadFailed {
        /// Why it was to be read.
        load: Load,
        /// The store's error.
        error: String,
    },
    /// An operator submitted a job spec (after
    /// [`Controller::check_submit`](super::Controller::check_submit)), or asked to go back to
    /// an earlier version (after [`Controller::check_revert`](super::Controller::check_revert)).
    /// The controller numbers it and asks to store it with its releases
    /// ([`Write::Release`]); it takes effect once that write is applied.
    Submit {
        /// The spec.
        spec: Box<JobSpec>,
        /// Wall-clock time of the request, ms since the Unix epoch (for the record).
        unix_ms: u64,
        /// Why: `submit`, `revert to 3`.
        cause: String,
        /// A revert: rolled out at once, without canaries or checks.
        revert: bool,
    },
    /// A job was deleted from the store (after
    /// [`Controller::check_delete`](super::Controller::check_delete)).
    JobDeleted {
        /// The job.
        job: JobName,
    },
    /// An operator released the mass-failure brake.
    ReleaseBrake,
    /// An operator promoted `job`'s rollout past its canaries (after
    /// [`Controller::check_promote_rollout`](super::Controller::check_promote_rollout)).
    PromoteRollout {
        /// The job.
        job: JobName,
    },
    /// Requests served by copies, from a traffic adapter (for the rollouts' statistical judge).
    Traffic {
        /// One sample per copy that served.
        samples: Vec<crate::judge::TrafficSample>,
    },
    /// An operator asked for a planned switchover of `job`'s replicated state (after
    /// [`Controller::check_promote`](super::Controller::check_promote)).
    Promote {
        /// The job.
        job: JobName,
    },
}

/// What a job submission changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubmitOutcome {
    /// A new job.
    Created,
    /// An existing job's spec changed.
    Updated,
    /// The same spec was already stored.
    Unchanged,
}

/// Why the controller refused a request (a Hello, or an operator's).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The agent's generation is over: it must stop its old work and join as a new one.
    #[error("{0}")]
    Stale(String),
    /// Another generation of this agent name has a session open; try again later.
    #[error("{0}")]
    Busy(String),
    /// This replica does not lead: changes and new generations come from the leader.
    #[error("{0}")]
    NotLeader(String),
    /// No leader acts now (the store may have lost its quorum); try again later.
    #[error("{0}")]
    Unavailable(String),
}

/// The Welcome of a session: the agent's generation and its timing.
#[derive(Clone, Debug, PartialEq)]
pub struct Welcome {
    /// The generation the session speaks for.
    pub generation: u64,
    /// The lease each ack grants.
    pub lease_ttl: Duration,
    /// How often to send heartbeats.
    pub heartbeat_interval: Duration,
    /// Acks later than this after a heartbeat's send time count as a lost session.
    pub session_deadline: Duration,
    /// Heartbeats may say their copies are unchanged ([`Copies::Unchanged`]).
    pub accepts_unchanged: bool,
    /// The anomaly settings the agent judges its own signals with (`None`: the server
    /// judges them).
    pub anomaly: Option<AnomalyConfig>,
}

/// An assignment of a task copy to an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The slot.
    pub task: TaskId,
    /// Its fencing token (`WARDEN_FENCING_TOKEN`).
    pub epoch: FencingToken,
    /// Whether the copy must never run twice (fenced with the agent's lease).
    pub singleton: bool,
    /// Program.
    pub command: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Reservation.
    pub resources: Resources,
    /// Health check run by the agent.
    pub health: Option<HealthCheck>,
    /// The service port, when the job declares a service.
    pub service: Option<ServicePort>,
    /// The job's replicated state, when it declares `[state]`.
    pub state: Option<crate::state::StateSpec>,
    /// The copy's role in that state, when the job keeps standbys.
    pub replica: Option<crate::state::ReplicaOrder>,
    /// Configuration files to write before the copy starts.
    pub config: Vec<crate::types::ConfigFile>,
    /// The job version it is started from (0: not known).
    pub version: u64,
    /// That version's `data_epoch`: the agent keeping the copy's single-replica state takes
    /// a restore point before it rises and puts one back when it falls.
    pub data_epoch: u32,
}

/// Apply a job version's configuration files to a running copy in place, and signal it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reload {
    /// The slot.
    pub task: TaskId,
    /// The copy's fencing token.
    pub epoch: FencingToken,
    /// The version whose files these are.
    pub version: u64,
    /// The signal that makes the task read them again.
    pub signal: crate::release::ReloadSignal,
    /// The files: the copy's config directory holds exactly these afterwards.
    pub config: Vec<crate::types::ConfigFile>,
}

/// A message for one agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Order {
    /// Heartbeat `seq` arrived; the lease runs `lease_ttl` from its send time (zero: no lease,
    /// only a sign that the session is alive — a standby's answer).
    Ack {
        /// The heartbeat.
        seq: u64,
        /// The lease granted.
        lease_ttl: Duration,
    },
    /// Run this copy.
    Assign(Box<Assignment>),
    /// Stop the copy of `task` at `epoch`.
    Stop {
        /// The slot.
        task: TaskId,
        /// The copy's fencing token.
        epoch: FencingToken,
        /// SIGTERM to SIGKILL.
        grace: Duration,
    },
    /// The role of the copy of `task` at `epoch` in its job's replicated state.
    Replica {
        /// The slot.
        task: TaskId,
        /// The copy's fencing token.
        epoch: FencingToken,
        /// Its role.
        replica: crate::state::ReplicaOrder,
    },
    /// Rewrite a running copy's configuration files and signal it (agents of session
    /// protocol 3 and newer).
    Reload(Box<Reload>),
    /// The generation is over: stop its work and join again as a new generation.
    Rejoin {
        /// Why.
        reason: String,
    },
}

/// A write for the runtime's ordered store writer. Writes are carried out in the order the
/// controller emits them.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// An assignment or eviction of a slot, checked against the slot's epoch. Its outcome comes
    /// back as [`Input::Persisted`]; nothing is sent to an agent before it is applied.
    Slot {
        /// Identifies the outcome.
        id: WriteId,
        /// The slot's epoch this write replaces.
        expected: FencingToken,
        /// The slot.
        task: TaskId,
        /// The new record.
        record: TaskView,
    },
    /// A state change of the slot's current copy; ignored by the store unless the slot is at
    /// `epoch`. No outcome is reported.
    SlotState {
        /// The slot.
        task: TaskId,
        /// The copy's epoch.
        epoch: FencingToken,
        /// Its new state.
        state: SlotState,
        /// Failures in a row.
        failures: u32,
    },
    /// Insert or update a recovery record.
    Recovery(Box<RecoveryRecord>),
    /// A job's versions and rollout, with its spec when that changes too (one atomic write).
    /// Its outcome comes back as [`Input::Persisted`].
    Release {
        /// Identifies the outcome.
        id: WriteId,
        /// The new desired spec, when it changes.
        spec: Option<Box<JobSpec>>,
        /// The job's releases.
        releases: Box<JobReleases>,
    },
}

/// An entry for the event log.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// When it happened.
    pub at: Time,
    /// Dotted kind (`agent.transition`, `task.state`, `alarm.brake_engaged`, ...).
    pub kind: &'static str,
    /// The agent it is about.
    pub agent: Option<AgentId>,
    /// The task it is about.
    pub task: Option<TaskId>,
    /// For people.
    pub message: String,
    /// For a transition, its states and cause (the event's structured data).
    pub transition: Option<(AgentState, AgentState, Cause)>,
}

/// One round of probes for a Suspect agent: probe `target` directly and through `helpers`
/// (other agents with a session, Healthy), then report back with [`Input::Probes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeRound {
    /// The suspect.
    pub agent: AgentId,
    /// The round to echo in the report.
    pub round: u64,
    /// Its probe listener, if it ever said where.
    pub target: Option<SocketAddr>,
    /// Agents to ask for an indirect probe.
    pub helpers: Vec<AgentId>,
}

/// Something worth a log line or a metric; the runtime decides how to show it.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// A session was admitted.
    Admitted {
        /// Who.
        agent: AgentId,
    },
    /// An agent changed state; `detection` is the time since its last heartbeat when it was
    /// declared Failed.
    Transition {
        /// The transition.
        transition: Transition,
        /// Last heartbeat → Failed.
        detection: Option<Duration>,
    },
    /// A recovery record changed (a start, or an end).
    Recovery(Box<RecoveryRecord>),
    /// An alarm appeared (standing alarms are noticed once).
    Alarm(String),
    /// A task of a lost agent was moved.
    Rescheduled {
        /// The task.
        task: TaskId,
        /// From.
        from: AgentId,
        /// To.
        to: AgentId,
        /// Its new epoch.
        epoch: FencingToken,
    },
    /// An epoch-checked write lost: the controller's view of the slot was stale.
    WriteLost {
        /// The slot.
        task: TaskId,
        /// The store's epoch.
        stored: FencingToken,
    },
    /// A write failed in the store.
    WriteFailed {
        /// The slot.
        task: TaskId,
        /// The store's error.
        error: String,
    },
    /// A deleted job's drain ended; its tasks are stopped.
    DrainOver {
        /// The job.
        job: JobName,
    },
    /// A reconcile round ended: planned, and every write it needed is done.
    Reconciled {
        /// Plan to last outcome, on the controller's clock.
        took: Duration,
        /// Actions planned.
        actions: usize,
    },
    /// This replica took over as leader.
    TookOver {
        /// The term.
        term: u64,
    },
    /// This replica's first reconcile round as leader is done.
    Acting {
        /// The term.
        term: u64,
    },
    /// This replica lost its leadership and stands down.
    SteppedDown {
        /// The term it led.
        term: u64,
    },
    /// The store could not be read.
    LoadFailed {
        /// Why it was read.
        load: Load,
        /// The error.
        error: String,
    },
    /// The controller noticed a gap in its ticks (the runtime was stalled) and holds verdicts.
    Stalled {
        /// The gap.
        gap: Duration,
    },
    /// Ended agent generations were forgotten (retention).
    Forgot {
        /// How many.
        generations: usize,
    },
}

/// What the runtime must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Answer the session's Hello: admitted. Goes before any order to the agent.
    Welcome {
        /// The session.
        session: SessionId,
        /// Who it speaks for.
        agent: AgentId,
        /// Generation and timing.
        welcome: Welcome,
    },
    /// Answer the session's Hello: refused. Nothing else is emitted for it.
    Refuse {
        /// The session.
        session: SessionId,
        /// Why.
        refusal: Refusal,
    },
    /// Send `order` on `to`'s open session (dropped when it has none, or the session belongs
    /// to another generation).
    Send {
        /// The generation it is for.
        to: AgentId,
        /// The message.
        order: Order,
    },
    /// Hand a write to the ordered store writer.
    Persist(Write),
    /// Append to the event log (through the same ordered writer).
    AppendEvent(Event),
    /// Run a probe round.
    Probe(ProbeRound),
    /// Read the store's state and feed it back with [`Input::Loaded`].
    Load(Load),
    /// The endpoints registry changed; wake its watchers.
    ServicesChanged {
        /// Its index.
        index: u64,
    },
    /// Log or count this.
    Notice(Notice),
}
