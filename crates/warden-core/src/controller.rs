//! The controller: every decision of the control plane, as one synchronous state machine.
//!
//! In the shape of openraft's engine: the runtime feeds [`Input`]s — heartbeats, task reports,
//! probe results, sessions opening and closing, store outcomes, the election, ticks and
//! operator requests — to [`Controller::step`] with the time they happened, and carries out the
//! [`Command`]s it returns, in order: send an order to an agent, persist a write, append an
//! event, run a probe round, read the store, log a notice. The controller never performs I/O,
//! never reads a clock and never blocks; the same inputs at the same times give the same
//! commands, which is what its tests and the seeded simulation ([`crate::sim`]) rely on.
//!
//! What it owns:
//! - the [`Fleet`] (lifecycle of every agent generation), the desired jobs and the observed
//!   task slots, and one [`AgentBook`] per generation (probe address, suspicion and failure
//!   times and cause, orders in flight, the slots on it) — created together when a generation
//!   is first seen, forgotten together once it has ended and nothing refers to it for
//!   [`ControllerConfig::forget_after`];
//! - the reconcile rounds: [`plan`](crate::planner::plan) when something changed (or a timed
//!   wait ends), each assignment *persisted first* ([`Write::Slot`]) and applied and sent only
//!   once [`Input::Persisted`] says it was committed;
//! - order resends, the vanished-copy rule, fenced copies, recovery records, alarm
//!   de-duplication, service drains, the endpoints registry;
//! - the replica's role: it acts (writes, orders, lease renewals) only while the election says
//!   it leads *and* its deadline has not passed on the controller's clock, and only after it
//!   has loaded the store in that term.
//!
//! ```
//! use warden_core::controller::{Command, Controller, ControllerConfig, Election, Input, Snapshot};
//! use warden_core::Time;
//!
//! let single = Election::Leader { term: 1, since_unix_ms: 0, valid_until: None };
//! let (mut c, _) =
//!     Controller::new(ControllerConfig::default(), "local", single, Snapshot::default(), Time::ZERO)?;
//! let cmds = c.step(Input::Tick, Time::from_millis(50));
//! assert!(cmds.iter().all(|c| !matches!(c, Command::Send { .. })), "nobody to talk to yet");
//! # Ok::<(), warden_core::ConfigError>(())
//! ```

/// How an agent's task report starts when the task was OOM-killed (it went past its memory
/// limit); the controller records a `task.oom_killed` event for it.
pub const OOM_KILLED: &str = "oom_killed";

/// How an agent's task report starts when a copy was reloaded to a new version's
/// configuration (`… to version N (SIGHUP)`).
pub const RELOADED: &str = "config reloaded";
/// How an agent's task report starts when it could not reload a copy (`…: why`): a rollout
/// counts the copy as bad.
pub const RELOAD_FAILED: &str = "config reload failed";

/// Task report prefixes that are signals from the task's cgroup, and the event each becomes:
/// OOM-killed, throttled by its CPU quota most of the time, near its memory limit, starved
/// (pressure stall information).
pub const TASK_SIGNALS: [(&str, &str); 4] = [
    (OOM_KILLED, "task.oom_killed"),
    ("throttled", "task.throttled"),
    ("memory_high", "task.memory_high"),
    ("pressure", "task.pressure"),
];

mod agents;
mod book;
mod config;
mod daemons;
mod election;
mod io;
mod reconcile;
mod replicas;
mod rollouts;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

pub use book::AgentBook;
pub use config::{ControllerConfig, MAX_PLAN_INTERVAL, RESEND_AFTER, STALL_HOLD, STANDBY_REFRESH};
pub use io::{
    Assignment, Command, Copies, CopyPhase, CopyReport, Election, Event, Heartbeat, Hello, Input,
    LeaderInfo, Load, Notice, Order, ProbeRound, Refusal, SessionId, Snapshot, SubmitOutcome,
    Welcome, Write, WriteId, WriteOutcome,
};
pub use replicas::{REPLICA_REFRESH, SWITCHOVER_TIMEOUT};
pub use rollouts::{Cohort, RolloutView};

use crate::endpoints::Registry;
use crate::error::ConfigError;
use crate::fencing::DeathEvidence;
use crate::hash::FxHashMap;
use crate::lifecycle::{AgentState, Fleet};
use crate::planner::{Action, AgentView, Desired, Observed, SlotState, TaskView, TokenBucket};
use crate::recovery::RecoveryRecord;
use crate::time::Time;
use crate::types::{AgentId, FencingToken, JobName, JobSpec, Resources, TaskId};

/// A recovery under way, with what is needed to finish its record.
#[derive(Clone, Debug, PartialEq)]
struct PendingRecovery {
    record: RecoveryRecord,
    has_health_check: bool,
}

/// Where this replica is in taking over the leadership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Acting {
    /// Not leading (or not yet loaded).
    No,
    /// Elected in `term`; the store is being read.
    Loading {
        /// The term.
        term: u64,
    },
    /// Leading in `term` with the store's state loaded.
    Yes {
        /// The term.
        term: u64,
        /// When its first reconcile round ended (`None` until then).
        since: Option<Time>,
    },
}

/// A reconcile round whose writes are not all back yet. No new plan starts before it ends.
#[derive(Clone, Debug, PartialEq)]
struct Round {
    started: Time,
    actions: usize,
    pending: FxHashMap<WriteId, Action>,
}

/// The controller. See the module documentation.
#[derive(Debug)]
pub struct Controller {
    cfg: ControllerConfig,
    /// This replica's advertised name (a single server's REST address).
    name: String,
    fleet: Fleet,
    desired: Desired,
    observed: Observed,
    /// Boxed, like the fleet's records: see [`Fleet`]'s map.
    books: FxHashMap<AgentId, Box<AgentBook>>,
    /// Open sessions by agent name.
    sessions: FxHashMap<Arc<str>, (AgentId, SessionId)>,
    recoveries: FxHashMap<TaskId, PendingRecovery>,
    /// Agents known only from task records after a (re)start as leader must be back by then.
    restart_deadline: Option<Time>,
    /// Plan alarms raised by the previous round (each is noticed once while it stands).
    standing_alarms: BTreeSet<String>,
    /// What agents report of each service copy: task → (epoch, `host:port`, healthy).
    endpoints_seen: FxHashMap<TaskId, (FencingToken, String, bool)>,
    registry: Registry,
    /// Deleted service jobs still draining: job → when their tasks are stopped.
    draining: FxHashMap<JobName, Time>,
    election: Election,
    acting: Acting,
    /// When a standby last refreshed its view from the store, and last asked to.
    last_refresh: Option<Time>,
    refresh_asked: Option<Time>,
    bucket: TokenBucket,
    last_tick: Option<Time>,
    /// Verdicts are held until then after a stall of the runtime.
    hold_until: Time,
    round: Option<Round>,
    next_write: u64,
    /// The planner's inputs changed since the last plan.
    dirty: bool,
    /// The registry's inputs changed since the last sync.
    endpoints_dirty: bool,
    last_endpoints_sync: Option<Time>,
    /// The last plan asked to be run again at this time (a fencing wait or a backoff ending).
    replan_at: Option<Time>,
    last_plan: Option<Time>,
    /// Ended generations in the order they ended, for the retention window.
    ended: VecDeque<(Time, AgentId)>,
    /// Standbys their primary reports caught up, to be added to the in-sync set: standby
    /// slot → (its copy's epoch, the state epoch).
    in_sync_wanted: FxHashMap<TaskId, (FencingToken, u64)>,
    /// In-sync standbys their primary reports lagging, to be taken out of the set: standby
    /// slot → (its copy's epoch, the state epoch).
    in_sync_dropped: FxHashMap<TaskId, (FencingToken, u64)>,
    /// When every replica was last told its role.
    last_replica_refresh: Option<Time>,
    /// Planned switchovers under way, by job.
    switchovers: FxHashMap<JobName, replicas::Switchover>,
    /// Jobs writing at `quorum` whose replicas are being fenced before a promotion: the
    /// fence epoch they are told (the planner asks for it at every plan while it applies).
    fencing: FxHashMap<JobName, u64>,
    /// Every job's versions and rollout, as stored.
    releases: FxHashMap<JobName, crate::release::JobReleases>,
    /// Rollouts under way, by job.
    rollouts: FxHashMap<JobName, rollouts::RolloutRun>,
    /// Release writes asked for and not yet applied, by job (the job's rollout waits).
    pending_releases: FxHashMap<JobName, rollouts::PendingRelease>,
    /// The version each assignment being persisted starts its copy from.
    start_versions: FxHashMap<TaskId, u64>,
}

impl Controller {
    /// A controller loaded from `snapshot` (the store's state), in the role `election` gives.
    /// Returns the commands of its start (the `server.started` event).
    pub fn new(
        cfg: ControllerConfig,
        name: impl Into<String>,
        election: Election,
        snapshot: Snapshot,
        now: Time,
    ) -> Result<(Self, Vec<Command>), ConfigError> {
        let cfg = cfg.normalized();
        cfg.validate()?;
        let fleet = Fleet::new(cfg.lifecycle.clone())?;
        let bucket = TokenBucket::new(cfg.reschedule_rate, cfg.reschedule_burst, now);
        let mut c = Controller {
            cfg,
            name: name.into(),
            fleet,
            desired: Desired::default(),
            observed: Observed::default(),
            books: FxHashMap::default(),
            sessions: FxHashMap::default(),
            recoveries: FxHashMap::default(),
            restart_deadline: None,
            standing_alarms: BTreeSet::new(),
            endpoints_seen: FxHashMap::default(),
            registry: Registry::new(),
            draining: FxHashMap::default(),
            election,
            acting: Acting::No,
            last_refresh: None,
            refresh_asked: None,
            bucket,
            last_tick: None,
            hold_until: Time::ZERO,
            round: None,
            next_write: 0,
            dirty: true,
            endpoints_dirty: true,
            last_endpoints_sync: None,
            replan_at: None,
            last_plan: None,
            ended: VecDeque::new(),
            in_sync_wanted: FxHashMap::default(),
            last_replica_refresh: None,
            switchovers: FxHashMap::default(),
            fencing: FxHashMap::default(),
            in_sync_dropped: FxHashMap::default(),
            releases: FxHashMap::default(),
            rollouts: FxHashMap::default(),
            pending_releases: FxHashMap::default(),
            start_versions: FxHashMap::default(),
        };
        c.take_over(snapshot, now);
        if let Some(term) = c.term_now(now) {
            c.acting = Acting::Yes { term, since: None };
        }
        let mut out = Vec::new();
        c.event(
            &mut out,
            now,
            "server.started",
            None,
            None,
            "server started".into(),
        );
        Ok((c, out))
    }

    /// Apply one input at `now` and return what the runtime must do, in order.
    pub fn step(&mut self, input: Input, now: Time) -> Vec<Command> {
        let mut out = Vec::new();
        match input {
            Input::SessionOpened {
                session,
                agent,
                hello,
            } => self.session_opened(session, agent, hello, now, &mut out),
            Input::Heartbeat { agent, beat } => self.heartbeat(&agent, beat, now, &mut out),
            Input::TaskReport {
                agent,
                copy,
                message,
            } => self.task_report(&agent, copy, &message, now, &mut out),
            Input::Probes { agent, report } => {
                let outs =
                    self.fleet
                        .step(&agent, crate::lifecycle::AgentEvent::Probes(report), now);
                self.handle(outs, now, &mut out);
            }
            Input::Leave { agent } => {
                let outs = self
                    .fleet
                    .step(&agent, crate::lifecycle::AgentEvent::Leave, now);
                self.handle(outs, now, &mut out);
            }
            Input::Restarting { agent, window } => {
                let outs = self.fleet.step(
                    &agent,
                    crate::lifecycle::AgentEvent::Restarting { window },
                    now,
                );
                let msg = format!(
                    "agent {agent} is restarting; its tasks keep running, verdict held for {} ms",
                    window.as_millis()
                );
                self.event(&mut out, now, "agent.restarting", Some(&agent), None, msg);
                self.handle(outs, now, &mut out);
            }
            Input::SessionClosed { agent, session } => {
                self.session_closed(&agent, session, now, &mut out);
            }
            Input::Tick => self.tick(now, &mut out),
            Input::Persisted { write, outcome } => self.persisted(write, outcome, now, &mut out),
            Input::Election(e) => {
                self.election = e;
                self.follow_election(now, &mut out);
            }
            Input::Loaded { load, snapshot } => self.loaded(load, snapshot, now, &mut out),
            Input::LoadFailed { load, error } => {
                match load {
                    Load::TakeOver { .. } => self.acting = Acting::No,
                    Load::Refresh => {}
                }
                out.push(Command::Notice(Notice::LoadFailed { load, error }));
            }
            Input::Submit {
                spec,
                unix_ms,
                cause,
                revert,
            } => self.submit(*spec, unix_ms, cause, revert, now, &mut out),
            Input::PromoteRollout { job } => self.promote_rollout(&job, now, &mut out),
            Input::Traffic { samples } => self.traffic_seen(samples, now),
            Input::JobDeleted { job } => self.job_deleted(job, now, &mut out),
            Input::Promote { job } => self.start_switchover(&job, now, &mut out),
            Input::ReleaseBrake => {
                let outs = self.fleet.release_brake(now);
                self.dirty |= !outs.is_empty();
                self.handle(outs, now, &mut out);
            }
        }
        out
    }

    // ----- queries (the read model and the runtime's checks) -----

    /// The settings in force.
    pub fn config(&self) -> &ControllerConfig {
        &self.cfg
    }

    /// The lifecycle of every generation.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// The desired jobs.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// The observed task slots and agent views (the planner's input).
    pub fn observed(&self) -> &Observed {
        &self.observed
    }

    /// One generation's book.
    pub fn book(&self, id: &AgentId) -> Option<&AgentBook> {
        self.books.get(id).map(|b| &**b)
    }

    /// Generations held in memory (live, and ended within the retention window).
    pub fn generations(&self) -> usize {
        self.books.len()
    }

    /// The endpoints registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Open sessions.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// The generation whose session is open under `name`.
    pub fn session_of(&self, name: &str) -> Option<(&AgentId, SessionId)> {
        self.sessions.get(name).map(|(id, s)| (id, *s))
    }

    /// Whether a reconcile round is due as soon as the runtime can tick: something the plan
    /// depends on changed, this replica acts, and no round is out.
    pub fn plan_due(&self) -> bool {
        self.dirty && self.round.is_none() && matches!(self.acting, Acting::Yes { .. })
    }

    /// Whether the mass-failure brake is engaged.
    pub fn brake_engaged(&self) -> bool {
        self.fleet.brake_engaged()
    }

    /// Whether `job` is a deleted service still draining.
    pub fn is_draining(&self, job: &JobName) -> bool {
        self.draining.contains_key(job)
    }

    /// The election as last told.
    pub fn election(&self) -> &Election {
        &self.election
    }

    /// The term this replica leads in at `now` (its deadline not passed), whether or not it
    /// has loaded the store yet.
    pub fn term_now(&self, now: Time) -> Option<u64> {
        match &self.election {
            Election::Leader {
                term, valid_until, ..
            } if valid_until.is_none_or(|t| now < t) => Some(*term),
            Election::Leader { .. } | Election::Follower { .. } => None,
        }
    }

    /// The term this replica *acts* in at `now`: it leads and has taken over in that term.
    pub fn acting_term(&self, now: Time) -> Option<u64> {
        match (self.acting, self.term_now(now)) {
            (Acting::Yes { term, .. }, Some(t)) if term == t => Some(t),
            _ => None,
        }
    }

    /// When this replica's first reconcile round as leader of the current term ended.
    pub fn acting_since(&self) -> Option<Time> {
        match self.acting {
            Acting::Yes { since, .. } => since,
            Acting::No | Acting::Loading { .. } => None,
        }
    }

    /// When a standby last refreshed its view from the store.
    pub fn last_refresh(&self) -> Option<Time> {
        self.last_refresh
    }

    /// The leader as this replica knows it at `now`: itself while it leads, else the one the
    /// election named.
    pub fn leader(&self, now: Time) -> Option<LeaderInfo> {
        match &self.election {
            Election::Leader {
                term,
                since_unix_ms,
                ..
            } if self.term_now(now).is_some() => Some(LeaderInfo {
                name: self.name.clone(),
                term: *term,
                since_unix_ms: *since_unix_ms,
            }),
            Election::Leader { .. } => None,
            Election::Follower { leader } => leader.clone(),
        }
    }

    /// Whether changes may be made through this replica at `now`; the refusal names the leader.
    pub fn writable(&self, now: Time) -> Result<(), Refusal> {
        if self.acting_term(now).is_some() {
            return Ok(());
        }
        Err(match self.leader(now) {
            Some(l) if l.name != self.name => Refusal::NotLeader(format!(
                "this server is a standby; send changes to the leader at {}",
                l.name
            )),
            _ => Refusal::Unavailable(
                "no leader is acting (is the store reachable, with a quorum?); changes are \
                 refused until one is"
                    .into(),
            ),
        })
    }

    /// Check a Hello before the runtime assigns a generation (`hello.generation == 0`) and
    /// opens the session: a valid name, no other generation of the name connected, and a
    /// leader to hand out new generations.
    pub fn admission(&self, hello: &Hello, now: Time) -> Result<(), Refusal> {
        let name = hello.trimmed_name();
        if name.is_empty() || name.len() > 253 || name.contains(['#', '/', '\0']) {
            return Err(Refusal::Invalid(format!("invalid agent name {name:?}")));
        }
        // A *different* generation while a session of this name is open is either an agent
        // that restarted before its old session was noticed gone, or a second agent with the
        // same name. Admitting it would declare the first one's process dead and let its
        // singletons start elsewhere while they may still run: refuse until the old session
        // ends (on a restart that takes milliseconds; the agent retries).
        if let Some((id, _)) = self.sessions.get(name)
            && id.generation != hello.generation
        {
            return Err(Refusal::Busy(format!(
                "agent {name} is already connected as generation {}; agent names must be unique",
                id.generation
            )));
        }
        if hello.generation == 0 && self.term_now(now).is_none() {
            return Err(Refusal::NotLeader(match self.leader(now) {
                Some(l) => format!(
                    "this server is a standby; a new generation comes from the leader ({})",
                    l.name
                ),
                None => "this server is a standby and no leader is known; retry".to_string(),
            }));
        }
        Ok(())
    }

    /// Check a job submission: a valid spec, a writable replica, and what it would change.
    /// The runtime then feeds [`Input::Submit`] (not for `Unchanged`), which stores the job as
    /// a new version.
    pub fn check_submit(&self, spec: &JobSpec, now: Time) -> Result<SubmitOutcome, Refusal> {
        spec.validate()
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
        self.writable(now)?;
        let draining = self.draining.contains_key(&spec.name);
        let outcome = match self.desired.get(&spec.name) {
            // Submitting a draining job again cancels its stop (and stores it again).
            Some(old) if old == spec && !draining => SubmitOutcome::Unchanged,
            Some(_) => SubmitOutcome::Updated,
            None => SubmitOutcome::Created,
        };
        if outcome != SubmitOutcome::Unchanged {
            self.check_release_free(&spec.name, false)?;
            if let Some(why) = self.data_epoch_refusal(&spec.name, spec, None) {
                return Err(Refusal::Invalid(why));
            }
        }
        Ok(outcome)
    }

    /// Check a job deletion: a writable replica and a job of that name. The runtime deletes it
    /// from the store, then feeds [`Input::JobDeleted`].
    pub fn check_delete(&self, name: &str, now: Time) -> Result<JobName, Refusal> {
        self.writable(now)?;
        let job = JobName::new(name);
        if !self.desired.contains_key(&job) {
            return Err(Refusal::NotFound(format!("no job named {name:?}")));
        }
        if self.new_version_pending(&job) {
            return Err(Refusal::Busy(format!(
                "a change of job {name} is being stored; retry in a moment"
            )));
        }
        Ok(job)
    }

    // ----- shared helpers -----

    /// Push an event, if this replica acts (a standby's events are its own opinions; the
    /// leader's are the record).
    fn event(
        &self,
        out: &mut Vec<Command>,
        now: Time,
        kind: &'static str,
        agent: Option<&AgentId>,
        task: Option<&TaskId>,
        message: String,
    ) {
        if self.acting_term(now).is_none() {
            return;
        }
        out.push(Command::AppendEvent(Event {
            at: now,
            kind,
            agent: agent.cloned(),
            task: task.cloned(),
            message,
            transition: None,
        }));
    }

    /// Persist a write, if this replica acts.
    fn persist(&self, out: &mut Vec<Command>, now: Time, write: Write) {
        if self.acting_term(now).is_some() {
            out.push(Command::Persist(write));
        }
    }

    /// The book, view and (already created) fleet record of a generation seen for the first
    /// time; a no-op for a known one.
    fn ensure_generation(&mut self, id: &AgentId, capacity: Resources, renewed: Option<Time>) {
        if !self.books.contains_key(id) {
            self.books.insert(id.clone(), Box::default());
            self.dirty = true;
        }
        self.observed
            .agents
            .entry(id.clone())
            .or_insert_with(|| AgentView {
                restore_points: false,
                reload: false,
                config_files: true,
                state: AgentState::Joining,
                capacity,
                allocated: Resources::default(),
                cordoned: false,
                last_renewal: renewed,
                death: DeathEvidence::None,
                running: vec![],
            });
    }

    /// Drop everything about an ended generation.
    fn forget_generation(&mut self, id: &AgentId) {
        self.fleet.forget(id);
        self.observed.agents.remove(id);
        self.books.remove(id);
        if self.sessions.get(&id.name).is_some_and(|(s, _)| s == id) {
            self.sessions.remove(&id.name);
        }
    }

    /// The observed slot of `task`, if its job has that many.
    fn slot_mut(&mut self, task: &TaskId) -> Option<&mut TaskView> {
        self.observed
            .tasks
            .get_mut(&task.job)
            .and_then(|s| s.get_mut(task.index as usize))
    }

    fn slot(&self, task: &TaskId) -> Option<&TaskView> {
        self.observed
            .tasks
            .get(&task.job)
            .and_then(|s| s.get(task.index as usize))
    }

    /// Keep the per-generation slot index in step after `task`'s agent changed.
    fn reindex(&mut self, task: &TaskId, before: Option<&AgentId>, after: Option<&AgentId>) {
        if before == after {
            return;
        }
        if let Some(b) = before
            && let Some(book) = self.books.get_mut(b)
        {
            book.slots.remove(task);
            book.versions.remove(task);
            if book.slots.is_empty() {
                self.drop_view_if_idle(b);
            }
        }
        if let Some(a) = after
            && let Some(book) = self.books.get_mut(a)
        {
            book.slots.insert(task.clone());
        }
    }

    /// An ended generation that no slot names any more is nothing to the planner: its view
    /// goes (the lifecycle record and the book stay for the retention window), so that
    /// planning costs nothing for the generations churn leaves behind.
    fn drop_view_if_idle(&mut self, id: &AgentId) {
        let ended = self.fleet.agent(id).is_none_or(|r| r.state().is_terminal());
        let idle = self.books.get(id).is_none_or(|b| b.slots.is_empty());
        if ended && idle && self.observed.agents.remove(id).is_some() {
            self.dirty = true;
        }
    }

    /// Rebuild the slot index from the slots (after a load from the store at `now`).
    fn rebuild_index(&mut self, now: Time) {
        for book in self.books.values_mut() {
            book.slots.clear();
        }
        for (job, slots) in &self.observed.tasks {
            for (i, t) in slots.iter().enumerate() {
                if let (Some(a), Ok(index)) = (&t.agent, u32::try_from(i))
                    && let Some(book) = self.books.get_mut(a)
                {
                    book.slots.insert(TaskId::new(job.clone(), index));
                }
            }
        }
        // Views follow the index: an ended generation has one only while a slot names it.
        let ids: Vec<AgentId> = self.books.keys().cloned().collect();
        for id in ids {
            let named = self.books.get(&id).is_some_and(|b| !b.slots.is_empty());
            if named && !self.observed.agents.contains_key(&id) {
                let r = self.fleet.agent(&id);
                self.observed.agents.insert(
                    id.clone(),
                    AgentView {
                        restore_points: false,
                        reload: false,
                        config_files: true,
                        state: r.map_or(AgentState::Failed, |r| r.state()),
                        capacity: Resources::default(),
                        allocated: Resources::default(),
                        cordoned: false,
                        // As at every load: the lease is taken as renewed now (the safe side;
                        // whoever led before may have renewed it until then).
                        last_renewal: Some(now),
                        death: r.map_or(DeathEvidence::None, |r| r.death_evidence()),
                        running: vec![],
                    },
                );
            } else {
                self.drop_view_if_idle(&id);
            }
        }
    }

    fn next_write_id(&mut self) -> WriteId {
        self.next_write += 1;
        WriteId(self.next_write)
    }

    /// Whether any copy of `job` is a singleton's (judged as one when its spec is gone).
    fn is_singleton(&self, job: &JobName) -> bool {
        self.desired
            .get(job)
            .is_some_and(|j| j.kind == crate::types::JobKind::Singleton)
    }

    /// Consistency of the per-generation structures, for tests and the simulation: every
    /// generation has its record, view and book, and the slot index matches the slots.
    pub fn check_invariants(&self) -> Result<(), String> {
        for id in self.books.keys() {
            if self.fleet.agent(id).is_none() {
                return Err(format!("{id} has a book but no lifecycle record"));
            }
            let ended = self
                .fleet
                .agent(id)
                .is_some_and(|r| r.state().is_terminal());
            let named = self.books.get(id).is_some_and(|b| !b.slots.is_empty());
            if !self.observed.agents.contains_key(id) && (!ended || named) {
                return Err(format!("{id} has a book but no planner view"));
            }
            if self.observed.agents.contains_key(id) && ended && !named {
                return Err(format!(
                    "{id} ended, no slot names it, but it has a planner view"
                ));
            }
        }
        for r in self.fleet.agents() {
            if !self.books.contains_key(r.id()) {
                return Err(format!("{} has a lifecycle record but no book", r.id()));
            }
        }
        for id in self.observed.agents.keys() {
            if !self.books.contains_key(id) {
                return Err(format!("{id} has a planner view but no book"));
            }
        }
        let mut indexed = 0usize;
        for (id, book) in &self.books {
            for t in &book.slots {
                indexed += 1;
                if self.slot(t).and_then(|s| s.agent.as_ref()) != Some(id) {
                    return Err(format!("{id} indexes {t}, which is not on it"));
                }
            }
        }
        let assigned = self
            .observed
            .tasks
            .values()
            .flatten()
            .filter(|t| t.agent.as_ref().is_some_and(|a| self.books.contains_key(a)))
            .count();
        if assigned != indexed {
            return Err(format!(
                "{assigned} slots are on known generations but {indexed} are indexed"
            ));
        }
        Ok(())
    }
}

/// Resources held by the live copies of each agent, from the slots.
fn allocations(
    desired: &Desired,
    tasks: &FxHashMap<JobName, Vec<TaskView>>,
) -> FxHashMap<AgentId, Resources> {
    let mut agents: FxHashMap<AgentId, Resources> = FxHashMap::default();
    for (job, slots) in tasks {
        let res = desired.get(job).map(|j| j.resources).unwrap_or_default();
        for t in slots {
            if let Some(a) = &t.agent
                && matches!(
                    t.state,
                    SlotState::Starting | SlotState::Running | SlotState::Stopping
                )
            {
                let e = agents.entry(a.clone()).or_default();
                *e = e.plus(&res);
            }
        }
    }
    agents
}

fn ms(d: std::time::Duration) -> u128 {
    d.as_millis()
}
