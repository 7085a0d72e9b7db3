//! The control plane: the runtime around `warden-core`'s [`Fleet`] and [`plan`].
//!
//! One [`ControlPlane`] holds the fleet's lifecycle state, the desired jobs, the observed task
//! slots and the open sessions behind one mutex. Everything that touches the mutex is quick
//! (microseconds): session handlers feed heartbeats and reports in and send acks out while
//! holding it; the store, which fsyncs, is only called *outside* it. The [`ControlPlane::run`]
//! loop ticks the fleet, runs probes, flushes events to the store and reconciles.
//!
//! Safety-relevant order: a new assignment's fencing token is written to the store (a fenced,
//! compare-and-set write) *before* the assignment is sent to the agent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use warden_core::duration_serde;
use warden_core::endpoints::{CopyFacts, Observation, Registry, judge};
use warden_core::fencing::DeathEvidence;
use warden_core::lifecycle::{
    AgentEvent, AgentState, Alarm, Cause, Fleet, LifecycleConfig, Output, ProbeKind, ProbeOutcome,
    ProbeReport, Transition,
};
use warden_core::planner::{
    Action, AgentView, Desired, Observed, PlanAlarm, PlannerConfig, TaskState, TaskView,
    TokenBucket, apply, plan,
};
use warden_core::recovery::{Outcome, RecoveryRecord};
use warden_core::{
    AgentId, ConfigError, FencingToken, JobKind, JobName, JobSpec, Resources, ServicePort, Signals,
    TaskId, Time,
};
use warden_proto::v1;
use warden_store::{NewEvent, Store, TaskRecord, WriteOp};

use crate::leader::Leadership;
use crate::metrics::{Metrics, TimedStore};
use crate::view::{
    AgentInfo, ApiError, ApiErrorKind, ControlApi, EventInfo, HealthInfo, InstanceInfo, JobInfo,
    LeaderView, RecoveryInfo, ServiceInfo, ServicesInfo, SubmitOutcome, TaskInfo,
};
use warden_probe::probe;

/// Settings of the control plane. Defaults: 500 ms heartbeats, 2 s lease.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Lifecycle: detector, health score, lease, brake, flap damping.
    pub lifecycle: LifecycleConfig,
    /// Planner: backoff.
    pub planner: PlannerConfig,
    /// How often the fleet is ticked and the desired state reconciled (default 50 ms).
    #[serde(with = "duration_serde")]
    pub tick: Duration,
    /// Timeout of one probe (default 500 ms).
    #[serde(with = "duration_serde")]
    pub probe_timeout: Duration,
    /// Healthy agents asked to probe a suspect on the server's behalf (default 2).
    pub indirect_probes: usize,
    /// Reschedules per second allowed on average (default 50).
    pub reschedule_rate: f64,
    /// Reschedules allowed in a burst (default 200).
    pub reschedule_burst: u32,
    /// Grace between SIGTERM and SIGKILL when a task is stopped (default 5 s).
    #[serde(with = "duration_serde")]
    pub stop_grace: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            lifecycle: LifecycleConfig::default(),
            planner: PlannerConfig::default(),
            tick: Duration::from_millis(50),
            probe_timeout: Duration::from_millis(500),
            indirect_probes: 2,
            reschedule_rate: 50.0,
            reschedule_burst: 200,
            stop_grace: Duration::from_secs(5),
        }
    }
}

impl ControlConfig {
    /// Reject impossible settings, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.lifecycle.validate()?;
        self.planner.validate().map_err(|e| e.within("planner"))?;
        if self.planner.fencing != self.lifecycle.fencing {
            return Err(ConfigError::new(
                "planner.fencing",
                "must equal lifecycle.fencing (set the lease once, under [lifecycle.fencing])",
            ));
        }
        if self.tick.is_zero() || self.tick > Duration::from_secs(1) {
            return Err(ConfigError::new("tick", "must be between 1ms and 1s"));
        }
        if self.probe_timeout.is_zero() {
            return Err(ConfigError::new(
                "probe_timeout",
                "must be greater than zero",
            ));
        }
        if !(self.reschedule_rate.is_finite() && self.reschedule_rate > 0.0) {
            return Err(ConfigError::new(
                "reschedule_rate",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

/// The server's clock: monotonic, expressed as nanoseconds since the Unix epoch at the moment
/// the server started plus the monotonic time elapsed since. Readings are monotonic within
/// one server process and close to wall-clock time, so persisted records stay readable.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: tokio::time::Instant,
    origin_unix_ns: u64,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            origin: tokio::time::Instant::now(),
            origin_unix_ns: u64::try_from(unix.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Now.
    pub fn now(&self) -> Time {
        let elapsed = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Time::from_nanos(self.origin_unix_ns.saturating_add(elapsed))
    }

    /// A reading as (approximate) Unix milliseconds.
    pub fn unix_ms(t: Time) -> u64 {
        t.as_nanos() / 1_000_000
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// One open agent session.
#[derive(Debug)]
struct Session {
    id: AgentId,
    /// Distinguishes two sessions of the same generation (reconnects).
    serial: u64,
    tx: mpsc::Sender<Result<v1::ServerMessage, tonic::Status>>,
}

/// A recovery under way, with what is needed to finish its record.
#[derive(Debug)]
struct Pending {
    record: RecoveryRecord,
    has_health_check: bool,
}

/// An agent asked to probe: its session channel, the request id, and its name (only its
/// session may answer).
type ProbeHelper = (
    mpsc::Sender<Result<v1::ServerMessage, tonic::Status>>,
    u64,
    Arc<str>,
);

/// A probe round to run outside the lock.
#[derive(Debug)]
struct ProbeJob {
    agent: AgentId,
    round: u64,
    target: Option<SocketAddr>,
    helpers: Vec<ProbeHelper>,
}

#[derive(Debug)]
struct Inner {
    fleet: Fleet,
    desired: Desired,
    observed: Observed,
    sessions: HashMap<Arc<str>, Session>,
    next_serial: u64,
    suspect_since: HashMap<AgentId, Time>,
    failed_at: HashMap<AgentId, Time>,
    failed_cause: HashMap<AgentId, Cause>,
    probe_addrs: HashMap<AgentId, SocketAddr>,
    recoveries: HashMap<TaskId, Pending>,
    events: Vec<NewEvent>,
    probes: Vec<ProbeJob>,
    probe_waiters: HashMap<u64, (Arc<str>, oneshot::Sender<ProbeOutcome>)>,
    next_probe: u64,
    /// Agents known only from task records after a restart, and when they must have come back.
    restart_deadline: Option<Time>,
    /// Plan alarms raised by the previous reconcile round (each is logged once while it stands).
    last_alarms: BTreeSet<String>,
    /// Assignments sent and not yet seen running, per agent: task → (epoch, when sent). An
    /// order lost in flight (a dropped session, a server crash after persisting it) is sent
    /// again from here.
    assign_sent: HashMap<AgentId, HashMap<TaskId, (FencingToken, Time)>>,
    /// Stop orders sent and not yet confirmed, per agent: (task, epoch) → when sent.
    stop_sent: HashMap<AgentId, HashMap<(TaskId, FencingToken), Time>>,
    /// What agents report of each service copy: task → (epoch, `host:port`, healthy).
    endpoints_seen: HashMap<TaskId, (FencingToken, String, bool)>,
    /// The endpoints registry, synced every control round.
    registry: Registry,
    /// Deleted service jobs still draining: job → when their tasks are stopped. The job stays
    /// in `desired` (its copies keep running) and its instances are `draining` until then.
    draining: HashMap<JobName, Time>,
    /// The term this replica acts in: set once it has taken over as leader (state loaded
    /// from the store), cleared when it steps down.
    led_term: Option<u64>,
    /// When the current term's first reconcile round ran, ms since the Unix epoch.
    acting_since_unix_ms: Option<u64>,
    /// When a standby last refreshed its view from the store.
    last_refresh: Option<Time>,
    /// When a standby last tried to.
    refresh_tried: Option<Time>,
}

impl Inner {
    fn new(fleet: Fleet, desired: Desired, observed: Observed) -> Self {
        Inner {
            fleet,
            desired,
            observed,
            sessions: HashMap::new(),
            next_serial: 0,
            suspect_since: HashMap::new(),
            failed_at: HashMap::new(),
            failed_cause: HashMap::new(),
            probe_addrs: HashMap::new(),
            recoveries: HashMap::new(),
            events: Vec::new(),
            probes: Vec::new(),
            probe_waiters: HashMap::new(),
            next_probe: 0,
            restart_deadline: None,
            last_alarms: BTreeSet::new(),
            assign_sent: HashMap::new(),
            stop_sent: HashMap::new(),
            endpoints_seen: HashMap::new(),
            registry: Registry::new(),
            draining: HashMap::new(),
            led_term: None,
            acting_since_unix_ms: None,
            last_refresh: None,
            refresh_tried: None,
        }
    }
}

/// The control plane's state as the store holds it: desired jobs, task slots, and what the
/// slots say about agents.
struct Loaded {
    desired: Desired,
    tasks: BTreeMap<JobName, Vec<TaskView>>,
    /// Resources held by the live copies of each agent.
    agents: BTreeMap<AgentId, Resources>,
    /// Assignments persisted and perhaps never delivered.
    pending_assign: HashMap<AgentId, HashMap<TaskId, (FencingToken, Time)>>,
}

impl Loaded {
    fn read(store: &dyn Store) -> Result<Loaded, warden_store::StoreError> {
        let desired: Desired = store
            .list_jobs()?
            .into_iter()
            .map(|j| (j.name.clone(), j))
            .collect();
        let mut tasks: BTreeMap<JobName, Vec<TaskView>> = BTreeMap::new();
        let mut agents: BTreeMap<AgentId, Resources> = BTreeMap::new();
        let mut pending_assign: HashMap<AgentId, HashMap<TaskId, (FencingToken, Time)>> =
            HashMap::new();
        for rec in store.list_tasks()? {
            let slots = tasks.entry(rec.task.job.clone()).or_default();
            let i = rec.task.index as usize;
            if slots.len() <= i {
                slots.resize_with(i + 1, TaskView::pending);
            }
            slots[i] = rec.to_view();
            if let (Some(a), TaskState::Starting) = (&rec.agent, rec.state) {
                // Persisted, perhaps never delivered: send again when the agent is back.
                pending_assign
                    .entry(a.clone())
                    .or_default()
                    .insert(rec.task.clone(), (rec.epoch, Time::ZERO));
            }
            if let Some(a) = &rec.agent
                && matches!(
                    rec.state,
                    TaskState::Starting | TaskState::Running | TaskState::Stopping
                )
            {
                let res = desired
                    .get(&rec.task.job)
                    .map(|j| j.resources)
                    .unwrap_or_default();
                let e = agents.entry(a.clone()).or_default();
                *e = e.plus(&res);
            }
        }
        Ok(Loaded {
            desired,
            tasks,
            agents,
            pending_assign,
        })
    }

    /// A standby's refresh: the desired and observed state as the leader wrote it.
    fn refresh(self, g: &mut Inner, now: Time) {
        g.desired = self.desired;
        g.observed.tasks = self.tasks.into_iter().collect();
        for (id, v) in &mut g.observed.agents {
            v.allocated = self.agents.get(id).copied().unwrap_or_default();
        }
        g.last_refresh = Some(now);
    }

    /// Take over as leader (or start as a single server) from the store's state.
    ///
    /// Every agent's lease is taken as renewed *now*: the previous leader may have renewed it
    /// until its own leadership ended, which was before this term began, so no copy it kept
    /// alive outlives `now + lease`. Agents known only from task records must reconnect
    /// before their lease could have run out, counted from now; until then their work is
    /// respected.
    fn take_over(self, g: &mut Inner, cfg: &ControlConfig, now: Time) {
        let agents = self.agents.clone();
        let pending = self.pending_assign;
        let mut unknown = false;
        g.desired = self.desired;
        g.observed.tasks = self.tasks.into_iter().collect();
        for id in agents.keys() {
            // An agent this replica has not heard from (as a standby, or before a restart)
            // must reconnect before its lease could have run out, counted from now.
            if g.fleet
                .agent(id)
                .is_none_or(|r| r.state() == AgentState::Joining)
            {
                unknown = true;
            }
            if g.fleet.agent(id).is_none() {
                g.fleet.join(id.clone(), now);
                g.observed.agents.insert(
                    id.clone(),
                    AgentView {
                        state: AgentState::Joining,
                        capacity: Resources::default(),
                        allocated: Resources::default(),
                        cordoned: false,
                        last_renewal: Some(now),
                        death: DeathEvidence::None,
                        running: vec![],
                    },
                );
            }
        }
        for (id, v) in &mut g.observed.agents {
            v.allocated = agents.get(id).copied().unwrap_or_default();
            v.last_renewal = Some(now);
        }
        g.restart_deadline = unknown.then(|| cfg.lifecycle.fencing.lease_surely_expired_at(now));
        g.assign_sent = pending;
        g.stop_sent.clear();
        g.recoveries.clear();
        g.draining.clear();
        g.last_refresh = Some(now);
    }
}

/// The control plane. Cheap to share: wrap it in an `Arc`.
pub struct ControlPlane {
    inner: Mutex<Inner>,
    store: Arc<dyn Store>,
    clock: Clock,
    cfg: ControlConfig,
    wake: Notify,
    metrics: Metrics,
    /// The registry's index, for watchers (long polls, load-balancer adapters).
    services_index: watch::Sender<u64>,
    /// Whether this replica leads.
    leadership: Leadership,
}

/// Errors starting the control plane.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is impossible.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be read.
    #[error("read the store: {0}")]
    Store(#[from] warden_store::StoreError),
}

/// Wall-clock now, ms since the Unix epoch.
pub(crate) fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn event(kind: &str, agent: Option<&AgentId>, task: Option<&TaskId>, message: String) -> NewEvent {
    NewEvent {
        unix_ms: unix_now_ms(),
        kind: kind.to_string(),
        agent: agent.map(|a| a.to_string()),
        task: task.map(|t| t.to_string()),
        message,
        data: serde_json::Value::Null,
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock leaves consistent-enough state for reads; keep serving.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn task_phase(p: i32) -> Option<TaskState> {
    match v1::TaskPhase::try_from(p).ok()? {
        v1::TaskPhase::Starting => Some(TaskState::Starting),
        v1::TaskPhase::Running => Some(TaskState::Running),
        v1::TaskPhase::Stopping => Some(TaskState::Stopping),
        v1::TaskPhase::Stopped => Some(TaskState::Stopped),
        v1::TaskPhase::Failed => Some(TaskState::Failed),
        // Not a state of the slot: see `ControlPlane::copy_fenced`.
        v1::TaskPhase::Fenced | v1::TaskPhase::Unspecified => None,
    }
}

/// Convert wire signals.
pub fn signals_from_wire(s: &v1::Signals) -> Signals {
    Signals {
        cpu: s.cpu,
        memory: s.memory,
        error_rate: s.error_rate,
        latency_ms: s.latency_ms,
        task_success: s.task_success,
        restarts: s.restarts,
        pressure: s.pressure,
    }
}

fn outcome_from_wire(o: i32) -> ProbeOutcome {
    match v1::ProbeOutcome::try_from(o) {
        Ok(v1::ProbeOutcome::Answered) => ProbeOutcome::Answered,
        Ok(v1::ProbeOutcome::Connected) => ProbeOutcome::Connected,
        Ok(v1::ProbeOutcome::Refused) => ProbeOutcome::Refused,
        Ok(v1::ProbeOutcome::TimedOut) => ProbeOutcome::TimedOut,
        Ok(v1::ProbeOutcome::Unreachable) => ProbeOutcome::Unreachable,
        Ok(v1::ProbeOutcome::Skipped | v1::ProbeOutcome::Unspecified) | Err(_) => {
            ProbeOutcome::Skipped
        }
    }
}

fn send(tx: &mpsc::Sender<Result<v1::ServerMessage, tonic::Status>>, msg: v1::server_message::Msg) {
    // A full or closed channel means the session is going away; the lifecycle handles that.
    let _ = tx.try_send(Ok(v1::ServerMessage { msg: Some(msg) }));
}

/// Why an agent's Hello was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// The Hello is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The generation is over: the agent must stop its old work and rejoin.
    #[error("{0}")]
    Stale(String),
    /// Another generation of this name has a session open; try again later.
    #[error("{0}")]
    Busy(String),
    /// The store failed; try again later.
    #[error("{0}")]
    Internal(String),
    /// A standby cannot hand out generations; the agent gets one from the leader.
    #[error("{0}")]
    NotLeader(String),
}

impl From<AdmitError> for tonic::Status {
    fn from(e: AdmitError) -> Self {
        match e {
            AdmitError::Invalid(m) => tonic::Status::invalid_argument(m),
            AdmitError::Stale(m) => tonic::Status::failed_precondition(m),
            AdmitError::Busy(m) => tonic::Status::already_exists(m),
            AdmitError::Internal(m) | AdmitError::NotLeader(m) => tonic::Status::unavailable(m),
        }
    }
}

/// What a session handler gets when an agent says Hello.
#[derive(Debug)]
pub struct Admitted {
    /// The agent's identity for this session.
    pub id: AgentId,
    /// Session serial, to pass back on every later call.
    pub serial: u64,
}

impl ControlPlane {
    /// Open the control plane on `store`, loading jobs and task records. A single server:
    /// it always leads.
    pub fn new(store: Arc<dyn Store>, cfg: ControlConfig) -> Result<Arc<Self>, StartError> {
        Self::with_leadership(store, cfg, Leadership::single("local"))
    }

    /// Open the control plane on `store` as one replica of several, taking its role from
    /// `leadership` (see [`crate::leader`]).
    pub fn with_leadership(
        store: Arc<dyn Store>,
        mut cfg: ControlConfig,
        leadership: Leadership,
    ) -> Result<Arc<Self>, StartError> {
        // The lease is configured once, for the lifecycle; the planner's fencing rule uses it.
        cfg.planner.fencing = cfg.lifecycle.fencing.clone();
        cfg.validate()?;
        let metrics = Metrics::new();
        let store: Arc<dyn Store> = Arc::new(TimedStore::new(store, metrics.clone()));
        let clock = Clock::new();
        let now = clock.now();
        let fleet = Fleet::new(cfg.lifecycle.clone())?;
        let loaded = Loaded::read(store.as_ref())?;
        let mut inner = Inner::new(fleet, Desired::default(), Observed::default());
        let term = leadership.term_now();
        loaded.take_over(&mut inner, &cfg, now);
        inner.led_term = term;
        let cp = Arc::new(ControlPlane {
            inner: Mutex::new(inner),
            store,
            clock,
            cfg,
            wake: Notify::new(),
            metrics,
            services_index: watch::Sender::new(0),
            leadership,
        });
        lock(&cp.inner)
            .events
            .push(event("server.started", None, None, "server started".into()));
        Ok(cp)
    }

    /// This replica's view of the election.
    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    /// The configuration in force.
    pub fn config(&self) -> &ControlConfig {
        &self.cfg
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The metrics recorder (for the session service's own counters).
    pub fn recorder(&self) -> &Metrics {
        &self.metrics
    }

    /// The store (wrapped so that its operations are timed).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// An agent said Hello. Assigns a generation when it asks for one (`generation == 0`).
    /// Returns `Err` with a reason when the agent must rejoin with a new generation.
    pub fn admit(
        &self,
        hello: &v1::Hello,
        tx: mpsc::Sender<Result<v1::ServerMessage, tonic::Status>>,
    ) -> Result<Admitted, AdmitError> {
        let name = hello.name.trim();
        if name.is_empty() || name.len() > 253 || name.contains(['#', '/', '\0']) {
            return Err(AdmitError::Invalid(format!("invalid agent name {name:?}")));
        }
        // A *different* generation while a session of this name is open is either an agent
        // that restarted before its old session was noticed gone, or a second agent with the
        // same name. Admitting it would declare the first one's process dead and let its
        // singletons start elsewhere while they may still run: refuse until the old session
        // ends (on a restart that takes milliseconds; the agent retries).
        if let Some(s) = lock(&self.inner).sessions.get(name)
            && s.id.generation != hello.generation
        {
            return Err(AdmitError::Busy(format!(
                "agent {name} is already connected as generation {}; agent names must be unique",
                s.id.generation
            )));
        }
        if hello.generation == 0 && !self.leadership.is_leader() {
            return Err(AdmitError::NotLeader(match self.leadership.leader() {
                Some(l) => format!(
                    "this server is a standby; a new generation comes from the leader ({})",
                    l.name
                ),
                None => "this server is a standby and no leader is known; retry".to_string(),
            }));
        }
        let generation = if hello.generation == 0 {
            self.store
                .next_generation(name)
                .map_err(|e| AdmitError::Internal(format!("assign a generation: {e}")))?
        } else {
            hello.generation
        };
        let id = AgentId::new(name, generation);
        let probe_addr = hello.probe_addr.parse::<SocketAddr>().ok();
        let capacity = hello
            .capacity
            .as_ref()
            .map(|c| Resources::new(c.cpu_millis, c.memory_mb))
            .unwrap_or_default();
        let now = self.clock.now();
        let mut g = lock(&self.inner);
        let stale = |outs: &[Output]| {
            outs.iter()
                .any(|o| matches!(o, Output::StaleGeneration { agent } if *agent == id))
        };
        let mut outs = g.fleet.join(id.clone(), now);
        if stale(&outs) {
            if self.leadership.is_leader() {
                return Err(AdmitError::Stale(format!(
                    "generation {generation} of {name} is over; rejoin"
                )));
            }
            // Only the leader ends a generation: a standby that took this one as ended (a
            // session it saw drop, its own detector) was wrong, and takes it back.
            outs = g.fleet.reinstate(id.clone(), now);
            if stale(&outs) {
                return Err(AdmitError::NotLeader(format!(
                    "this server is a standby and knows a newer generation of {name} than \
                     {generation}; the leader decides"
                )));
            }
        }
        g.next_serial += 1;
        let serial = g.next_serial;
        g.sessions.insert(
            id.name.clone(),
            Session {
                id: id.clone(),
                serial,
                tx: tx.clone(),
            },
        );
        if let Some(addr) = probe_addr {
            g.probe_addrs.insert(id.clone(), addr);
        }
        let running: Vec<(TaskId, FencingToken)> = hello
            .running
            .iter()
            .filter_map(|r| Some((TaskId::parse(&r.task)?, FencingToken(r.epoch))))
            .collect();
        let view = g
            .observed
            .agents
            .entry(id.clone())
            .or_insert_with(|| AgentView {
                state: AgentState::Joining,
                capacity,
                allocated: Resources::default(),
                cordoned: false,
                last_renewal: None,
                death: DeathEvidence::None,
                running: vec![],
            });
        view.capacity = capacity;
        view.running = running.clone();
        // The Welcome goes first: the agent expects it before any order.
        let l = &self.cfg.lifecycle;
        send(
            &tx,
            v1::server_message::Msg::Welcome(v1::Welcome {
                generation,
                lease_ttl_ms: ms(l.fencing.lease_ttl),
                heartbeat_interval_ms: ms(l.heartbeat_interval),
                session_deadline_ms: ms(l.fencing.lease_ttl),
            }),
        );
        // A new session: whatever was sent on the previous one may be lost.
        self.resend_pending(&mut g, &id, &running, now, true);
        g.events.push(event(
            "agent.session",
            Some(&id),
            None,
            format!("session opened from {}", hello.probe_addr),
        ));
        self.handle(&mut g, outs, now);
        drop(g);
        info!(agent = %id, "agent admitted");
        Ok(Admitted { id, serial })
    }

    /// A heartbeat arrived on a session.
    pub fn heartbeat(&self, who: &Admitted, hb: &v1::Heartbeat) {
        let now = self.clock.now();
        self.metrics.heartbeat_received();
        let mut g = lock(&self.inner);
        let mut outs = g
            .fleet
            .step(&who.id, AgentEvent::Heartbeat { seq: hb.seq }, now);
        if let Some(s) = &hb.signals {
            outs.extend(
                g.fleet
                    .step(&who.id, AgentEvent::Signals(signals_from_wire(s)), now),
            );
        }
        let running: Vec<(TaskId, FencingToken, Option<TaskState>, bool)> = hb
            .running
            .iter()
            .filter_map(|r| {
                Some((
                    TaskId::parse(&r.task)?,
                    FencingToken(r.epoch),
                    task_phase(r.phase),
                    r.healthy,
                ))
            })
            .collect();
        let copies: Vec<(TaskId, FencingToken)> =
            running.iter().map(|(t, e, _, _)| (t.clone(), *e)).collect();
        for r in &hb.running {
            if let Some(task) = TaskId::parse(&r.task) {
                note_endpoint(&mut g, task, FencingToken(r.epoch), &r.endpoint, r.healthy);
            }
        }
        self.resend_pending(&mut g, &who.id, &copies, now, false);
        // A copy the server saw running here that the agent no longer reports has ended
        // without a report reaching the server — typically fenced by the agent while its
        // session was down (its lease ran out) and the agent came back as the same generation.
        // Without this the slot would look Running forever and never be started again.
        let gone: Vec<(TaskId, FencingToken)> = g
            .observed
            .tasks
            .iter()
            .flat_map(|(job, slots)| {
                slots.iter().enumerate().filter_map(|(i, t)| {
                    let id = TaskId::new(job.clone(), u32::try_from(i).ok()?);
                    (t.state == TaskState::Running
                        && t.agent.as_ref() == Some(&who.id)
                        && !copies.iter().any(|(c, e)| *c == id && *e == t.epoch))
                    .then_some((id, t.epoch))
                })
            })
            .collect();
        for (task, epoch) in gone {
            let singleton = g
                .desired
                .get(&task.job)
                .is_some_and(|j| j.kind == JobKind::Singleton);
            if singleton {
                // Only singletons are fenced: most likely this one was, and the report
                // of it was lost (it reached a standby that has taken over since).
                self.copy_fenced(&mut g, &who.id, &task, epoch);
            } else {
                self.task_seen(
                    &mut g,
                    &who.id,
                    &task,
                    epoch,
                    TaskState::Stopped,
                    false,
                    Some("no longer running on its agent (ended while the session was down)"),
                    now,
                );
            }
        }
        if let Some(v) = g.observed.agents.get_mut(&who.id) {
            v.running = copies;
        }
        for (task, epoch, phase, healthy) in running {
            if let Some(phase) = phase {
                self.task_seen(&mut g, &who.id, &task, epoch, phase, healthy, None, now);
            }
        }
        self.handle(&mut g, outs, now);
    }

    /// A singleton copy its agent fenced: its lease ran out while no leader renewed it (its
    /// session was down, or the control plane was failing over to a new leader). That is no
    /// failure of the task: the slot is marked stopped — no crash count, no backoff — and the
    /// planner starts it again at once. Also for a singleton copy the agent no longer reports
    /// without any report of its end having reached this server (the fenced report went to a
    /// standby whose take-over replaced its view with the store's).
    fn copy_fenced(&self, g: &mut Inner, agent: &AgentId, task: &TaskId, epoch: FencingToken) {
        let Some(slot) = slot_mut(&mut g.observed, task) else {
            return;
        };
        if slot.epoch != epoch
            || slot.agent.as_ref() != Some(agent)
            || !matches!(
                slot.state,
                TaskState::Starting | TaskState::Running | TaskState::Stopping
            )
        {
            return;
        }
        let before = slot.state;
        slot.state = TaskState::Stopped;
        slot.agent = None;
        let failures = slot.failures;
        g.events.push(event(
            "task.state",
            Some(agent),
            Some(task),
            format!(
                "{task}@{epoch} {} → stopped: fenced by its agent (its lease ran out)",
                before.as_str()
            ),
        ));

        if g.led_term.is_some() {
            let store = self.store.clone();
            let t = task.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) =
                    store.put_task_state(&t, epoch, TaskState::Stopped, failures, unix_now_ms())
                {
                    warn!(task = %t, error = %e, "persist task state");
                }
            });
        }
        self.wake.notify_one();
    }

    /// A task report arrived on a session.
    pub fn task_report(&self, who: &Admitted, r: &v1::TaskReport) {
        let now = self.clock.now();
        let Some(task) = TaskId::parse(&r.task) else {
            return;
        };
        if r.phase == v1::TaskPhase::Fenced as i32 {
            let mut g = lock(&self.inner);
            self.copy_fenced(&mut g, &who.id, &task, FencingToken(r.epoch));
            return;
        }
        let Some(phase) = task_phase(r.phase) else {
            return;
        };
        let mut g = lock(&self.inner);
        note_endpoint(
            &mut g,
            task.clone(),
            FencingToken(r.epoch),
            &r.endpoint,
            r.healthy,
        );
        self.task_seen(
            &mut g,
            &who.id,
            &task,
            FencingToken(r.epoch),
            phase,
            r.healthy,
            Some(&r.message),
            now,
        );
    }

    /// A probe result arrived on `who`'s session; only the agent asked may answer.
    pub fn probe_result(&self, who: &Admitted, r: &v1::ProbeResult) {
        let mut g = lock(&self.inner);
        if g.probe_waiters.get(&r.request_id).map(|w| &w.0) == Some(&who.id.name)
            && let Some((_, w)) = g.probe_waiters.remove(&r.request_id)
        {
            let _ = w.send(outcome_from_wire(r.outcome));
        }
    }

    /// The agent left gracefully.
    pub fn leave(&self, who: &Admitted) {
        let now = self.clock.now();
        let mut g = lock(&self.inner);
        let outs = g.fleet.step(&who.id, AgentEvent::Leave, now);
        self.handle(&mut g, outs, now);
    }

    /// The session ended (stream closed, reset or failed).
    pub fn session_closed(&self, who: &Admitted) {
        let now = self.clock.now();
        let mut g = lock(&self.inner);
        let current = g
            .sessions
            .get(&who.id.name)
            .is_some_and(|s| s.serial == who.serial);
        if !current {
            return; // a newer session of this agent took over
        }
        g.sessions.remove(&who.id.name);
        let outs = g.fleet.step(&who.id, AgentEvent::SessionLost, now);
        self.handle(&mut g, outs, now);
    }

    /// Record what an agent says about a task copy.
    #[allow(clippy::too_many_arguments)]
    fn task_seen(
        &self,
        g: &mut Inner,
        agent: &AgentId,
        task: &TaskId,
        epoch: FencingToken,
        phase: TaskState,
        healthy: bool,
        message: Option<&str>,
        now: Time,
    ) {
        let Some(slot) = slot_mut(&mut g.observed, task) else {
            return;
        };
        if slot.epoch != epoch || slot.agent.as_ref() != Some(agent) {
            return; // a stale copy; the planner stops it
        }
        let before = slot.state;
        let next = match (before, phase) {
            (TaskState::Starting, TaskState::Running) => TaskState::Running,
            (TaskState::Stopping, TaskState::Stopped) => TaskState::Stopped,
            (TaskState::Starting | TaskState::Running, TaskState::Failed) => TaskState::Failed,
            (TaskState::Starting | TaskState::Running, TaskState::Stopped) => TaskState::Failed,
            (s, _) => s,
        };
        if next == TaskState::Failed && before != TaskState::Failed {
            slot.failures = slot.failures.saturating_add(1);
            slot.last_failure_at = Some(now);
        }
        if next == TaskState::Running && healthy {
            slot.failures = 0;
        }
        let changed = next != before;
        slot.state = next;
        if next == TaskState::Stopped {
            slot.agent = None;
        }
        let failures = slot.failures;
        if changed {
            g.events.push(event(
                "task.state",
                Some(agent),
                Some(task),
                format!(
                    "{task}@{epoch} {} → {}{}",
                    before.as_str(),
                    next.as_str(),
                    message.map(|m| format!(": {m}")).unwrap_or_default()
                ),
            ));
            let store = self.store.clone();
            let (t, s) = (task.clone(), next);
            // State reports are fenced by epoch in the store; written off the lock, and only
            // by the leader (a standby's view is refreshed from what the leader wrote).
            let leads = g.led_term.is_some();
            tokio::task::spawn_blocking(move || {
                if !leads {
                    return;
                }
                if let Err(e) = store.put_task_state(&t, epoch, s, failures, unix_now_ms()) {
                    warn!(task = %t, error = %e, "persist task state");
                }
            });
        }
        if next == TaskState::Running
            && let Some(p) = g.recoveries.get_mut(task)
            && p.record.epoch == epoch
        {
            p.record.started(now, p.has_health_check);
            if healthy {
                p.record.healthy(now);
            }
            if p.record.outcome == Outcome::Succeeded {
                let record = p.record.clone();
                g.recoveries.remove(task);
                self.persist_recovery(g, record);
            }
        }
        if changed {
            self.wake.notify_one();
        }
    }

    fn persist_recovery(&self, g: &mut Inner, record: RecoveryRecord) {
        if g.led_term.is_none() {
            return;
        }
        self.metrics.recovery(&record);
        if record.outcome == Outcome::Succeeded {
            let rto = record.rto().map(|d| d.as_millis()).unwrap_or_default();
            g.events.push(event(
                "recovery.succeeded",
                Some(&record.from),
                Some(&record.task),
                format!(
                    "{} recovered on {} (RTO {rto} ms)",
                    record.task,
                    record
                        .to
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                ),
            ));
            info!(task = %record.task, rto_ms = rto, "recovery succeeded");
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.upsert_recovery(&record, unix_now_ms()) {
                warn!(op = %record.op, error = %e, "persist recovery record");
            }
        });
    }

    /// Carry out the fleet's outputs. Called with the lock held; only cheap work here.
    fn handle(&self, g: &mut Inner, outs: Vec<Output>, now: Time) {
        for out in outs {
            match out {
                Output::RenewLease { agent, seq } => {
                    // Only a leader renews leases; a standby's ack (TTL 0) only tells the
                    // agent that the session is alive. See `crate::leader`.
                    let lease_ttl_ms = if self.leadership.is_leader() {
                        ms(self.cfg.lifecycle.fencing.lease_ttl)
                    } else {
                        0
                    };
                    if let Some(s) = g.sessions.get(&agent.name)
                        && s.id == agent
                    {
                        send(
                            &s.tx,
                            v1::server_message::Msg::Ack(v1::Ack { seq, lease_ttl_ms }),
                        );
                    }
                    if let Some(v) = g.observed.agents.get_mut(&agent) {
                        v.last_renewal = Some(now);
                    }
                }
                Output::Transition(t) => self.transition(g, t),
                Output::Probe { agent, round } => {
                    // The session may be gone; where it listened is remembered.
                    let target = g.probe_addrs.get(&agent).copied();
                    let k = self.cfg.indirect_probes;
                    let helpers: Vec<ProbeHelper> = {
                        let mut hs: Vec<&Session> = g
                            .sessions
                            .values()
                            .filter(|s| s.id.name != agent.name)
                            .filter(|s| {
                                g.fleet
                                    .agent(&s.id)
                                    .is_some_and(|r| r.state() == AgentState::Healthy)
                            })
                            .collect();
                        hs.sort_by(|a, b| a.id.cmp(&b.id));
                        hs.truncate(k);
                        let txs: Vec<_> = hs
                            .iter()
                            .map(|s| (s.tx.clone(), s.id.name.clone()))
                            .collect();
                        let mut out = Vec::new();
                        for (tx, name) in txs {
                            g.next_probe += 1;
                            out.push((tx, g.next_probe, name));
                        }
                        out
                    };
                    g.probes.push(ProbeJob {
                        agent,
                        round,
                        target,
                        helpers,
                    });
                    self.wake.notify_one();
                }
                Output::Alarm(a) => {
                    let (kind, msg) = match &a {
                        Alarm::BrakeEngaged {
                            suspects, fleet, ..
                        } => (
                            "alarm.brake_engaged",
                            format!(
                                "mass-failure brake engaged: {suspects} of {fleet} agents suspect; no agent will be declared failed"
                            ),
                        ),
                        Alarm::BrakeReleased { .. } => (
                            "alarm.brake_released",
                            "mass-failure brake released".to_string(),
                        ),
                    };
                    warn!("{msg}");
                    g.events.push(event(kind, None, None, msg));
                }
                Output::StaleGeneration { agent } => {
                    // A standby's verdicts are its own opinion until it leads.
                    if !self.leadership.is_leader() {
                        continue;
                    }
                    if let Some(s) = g.sessions.get(&agent.name)
                        && s.id == agent
                    {
                        send(
                            &s.tx,
                            v1::server_message::Msg::Rejoin(v1::Rejoin {
                                reason: format!("generation {} is over", agent.generation),
                            }),
                        );
                    }
                }
            }
        }
    }

    fn transition(&self, g: &mut Inner, t: Transition) {
        info!(agent = %t.agent, from = %t.from, to = %t.to, cause = %t.cause, "agent transition");
        self.metrics.transition(t.from, t.to);
        let death = g
            .fleet
            .agent(&t.agent)
            .map(|r| r.death_evidence())
            .unwrap_or(DeathEvidence::None);
        if let Some(v) = g.observed.agents.get_mut(&t.agent) {
            v.state = t.to;
            v.death = death;
        }
        match t.to {
            AgentState::Suspect => {
                g.suspect_since.insert(t.agent.clone(), t.at);
            }
            AgentState::Failed => {
                if let Some(last) = g.fleet.agent(&t.agent).and_then(|r| r.last_heartbeat()) {
                    self.metrics.detection(t.at.saturating_since(last));
                }
                // Its orders die with it: a new generation starts from a clean slate.
                g.assign_sent.remove(&t.agent);
                g.stop_sent.remove(&t.agent);
                g.failed_at.insert(t.agent.clone(), t.at);
                g.failed_cause.insert(t.agent.clone(), t.cause.clone());
                g.suspect_since.entry(t.agent.clone()).or_insert(t.at);
            }
            AgentState::Healthy | AgentState::Degraded | AgentState::Quarantined => {
                g.suspect_since.remove(&t.agent);
                if t.to == AgentState::Healthy
                    && let Some(v) = g.observed.agents.get_mut(&t.agent)
                {
                    // A quarantine that ended releases its cordon.
                    v.cordoned = false;
                }
            }
            AgentState::Joining | AgentState::Left => {}
        }
        g.events.push(NewEvent {
            data: serde_json::json!({ "from": t.from.as_str(), "to": t.to.as_str(), "cause": t.cause }),
            ..event("agent.transition", Some(&t.agent), None, format!("{} → {}: {}", t.from, t.to, t.cause))
        });
        self.wake.notify_one();
    }

    /// Run the control loops until `cancel` fires: tick, probes, events, reconcile.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut bucket = TokenBucket::new(
            self.cfg.reschedule_rate,
            self.cfg.reschedule_burst,
            self.clock.now(),
        );
        let mut tick = tokio::time::interval(self.cfg.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // If this loop itself was stalled (the server starved of CPU, paused, swapping), the
        // heartbeats of that time may still sit unread in socket buffers: judging agents
        // before reading them would blame them for the server's own pause. Verdicts are held
        // briefly after a stall; holding a verdict only ever delays recovery, never safety.
        let stall = (self.cfg.tick * 8).max(Duration::from_millis(400));
        let mut last_loop = self.clock.now();
        let mut hold_until = Time::ZERO;
        // One writer appends events in order, batching whatever queued while it wrote.
        let (event_log, queued) = mpsc::unbounded_channel::<Vec<NewEvent>>();
        let writer = tokio::spawn(write_events(self.store.clone(), queued));
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {}
                () = self.wake.notified() => {}
            }
            let now = self.clock.now();
            let leads = self.follow_election(now).await;
            let gap = now.saturating_since(last_loop);
            last_loop = now;
            if gap > stall {
                warn!(
                    stalled_ms = ms(gap),
                    "control loop was stalled; holding verdicts for 1s"
                );
                hold_until = now + Duration::from_secs(1);
            }
            let (probes, events) = {
                let mut g = lock(&self.inner);
                let mut outs = if now < hold_until {
                    Vec::new()
                } else {
                    g.fleet.tick(now)
                };
                // Agents that did not come back after a (re)start as leader are the leader's
                // to declare lost; a standby's fleet is only an opinion.
                if leads
                    && let Some(deadline) = g.restart_deadline
                    && now >= deadline
                {
                    g.restart_deadline = None;
                    let stale: Vec<AgentId> = g
                        .fleet
                        .agents()
                        .filter(|r| r.state() == AgentState::Joining)
                        .map(|r| r.id().clone())
                        .collect();
                    for id in stale {
                        outs.extend(g.fleet.step(&id, AgentEvent::LeaseExpired, now));
                    }
                }
                self.handle(&mut g, outs, now);
                if leads {
                    self.end_drains(&mut g, now);
                }
                self.sync_endpoints(&mut g, now);
                let events = std::mem::take(&mut g.events);
                // A standby's events are its own opinions; the leader's are the record.
                let events = if leads { events } else { Vec::new() };
                (std::mem::take(&mut g.probes), events)
            };
            for job in probes {
                tokio::spawn(self.clone().probe(job));
            }
            if !events.is_empty() {
                let _ = event_log.send(events);
            }
            if !leads {
                continue;
            }
            // Real elapsed time on purpose: the work took this long whatever tokio's clock says.
            let started = std::time::Instant::now();
            self.reconcile(&mut bucket).await;
            self.metrics.reconcile(started.elapsed());
            let mut g = lock(&self.inner);
            if g.acting_since_unix_ms.is_none() {
                let at = unix_now_ms();
                g.acting_since_unix_ms = Some(at);
                if let Some(term) = g.led_term {
                    info!(term, "leader acting: first reconcile round done");
                    g.events.push(event(
                        "leader.acting",
                        None,
                        None,
                        format!("leader {} (term {term}) reconciled", self.leadership.name()),
                    ));
                }
            }
        }
        drop(event_log);
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
        debug!("control loop stopped");
    }

    /// Follow this replica's role: take over when it became leader (load the store's state
    /// first), stand down when it lost leadership, refresh a standby's view every second.
    /// Returns whether this replica acts as leader this round.
    async fn follow_election(self: &Arc<Self>, now: Time) -> bool {
        let term = self.leadership.term_now();
        let acting = lock(&self.inner).led_term;
        match (acting, term) {
            (Some(a), Some(t)) if a == t => true,
            (_, Some(t)) => {
                let store = self.store.clone();
                match tokio::task::spawn_blocking(move || Loaded::read(store.as_ref())).await {
                    Ok(Ok(loaded)) => {
                        let mut g = lock(&self.inner);
                        loaded.take_over(&mut g, &self.cfg, now);
                        g.led_term = Some(t);
                        g.acting_since_unix_ms = None;
                        g.events.push(event(
                            "leader.elected",
                            None,
                            None,
                            format!("{} leads (term {t})", self.leadership.name()),
                        ));
                        info!(term = t, "took over as leader");
                        true
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, "elected, but the store cannot be read; not acting yet");
                        false
                    }
                    Err(e) => {
                        warn!(error = %e, "load the store");
                        false
                    }
                }
            }
            (Some(a), None) => {
                let mut g = lock(&self.inner);
                g.led_term = None;
                g.acting_since_unix_ms = None;
                // Orders in flight are the next leader's to resend.
                g.assign_sent.clear();
                g.stop_sent.clear();
                g.recoveries.clear();
                warn!(
                    term = a,
                    "leadership lost: standing down (no orders, no lease renewals)"
                );
                false
            }
            (None, None) => {
                // Off the loop: with the store unreachable a read takes its whole timeout.
                let due = {
                    let mut g = lock(&self.inner);
                    let due = g
                        .refresh_tried
                        .is_none_or(|t| now.saturating_since(t) >= STANDBY_REFRESH);
                    if due {
                        g.refresh_tried = Some(now);
                    }
                    due
                };
                if due {
                    let cp = self.clone();
                    tokio::spawn(async move {
                        let store = cp.store.clone();
                        match tokio::task::spawn_blocking(move || Loaded::read(store.as_ref()))
                            .await
                        {
                            Ok(Ok(loaded)) => {
                                let now = cp.clock.now();
                                let mut g = lock(&cp.inner);
                                if g.led_term.is_none() {
                                    loaded.refresh(&mut g, now);
                                }
                            }
                            Ok(Err(e)) => debug!(error = %e, "standby refresh"),
                            Err(e) => debug!(error = %e, "standby refresh"),
                        }
                    });
                }
                false
            }
        }
    }

    async fn probe(self: Arc<Self>, job: ProbeJob) {
        let limit = self.cfg.probe_timeout;
        let direct = match job.target {
            Some(addr) => probe::direct(addr, limit).await,
            None => vec![
                (ProbeKind::Tcp, ProbeOutcome::Skipped),
                (ProbeKind::Http, ProbeOutcome::Skipped),
            ],
        };
        let mut indirect = Vec::new();
        if let Some(addr) = job.target {
            let mut waits = Vec::new();
            {
                let mut g = lock(&self.inner);
                for (tx, id, helper) in &job.helpers {
                    let (wtx, wrx) = oneshot::channel();
                    g.probe_waiters.insert(*id, (helper.clone(), wtx));
                    send(
                        tx,
                        v1::server_message::Msg::Probe(v1::ProbeRequest {
                            request_id: *id,
                            target_addr: addr.to_string(),
                            timeout_ms: ms(limit),
                        }),
                    );
                    waits.push((*id, wrx));
                }
            }
            for (id, w) in waits {
                let outcome = tokio::time::timeout(limit * 2, w)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(ProbeOutcome::TimedOut);
                lock(&self.inner).probe_waiters.remove(&id);
                indirect.push(outcome);
            }
        }
        for (kind, outcome) in &direct {
            let kind = match kind {
                ProbeKind::Tcp => "tcp",
                ProbeKind::Http => "http",
                ProbeKind::Icmp => "icmp",
            };
            self.metrics.probe(kind, *outcome);
        }
        for outcome in &indirect {
            self.metrics.probe("indirect", *outcome);
        }
        let now = self.clock.now();
        let report = ProbeReport {
            round: job.round,
            direct,
            indirect,
        };
        debug!(agent = %job.agent, ?report, "probe round done");
        let mut g = lock(&self.inner);
        let outs = g.fleet.step(&job.agent, AgentEvent::Probes(report), now);
        self.handle(&mut g, outs, now);
    }

    /// Plan and execute once.
    async fn reconcile(&self, bucket: &mut TokenBucket) {
        let now = self.clock.now();
        let (actions, resources) = {
            let mut g = lock(&self.inner);
            let brake = g.fleet.brake_engaged();
            g.observed.brake_engaged = brake;
            g.observed.reschedule_budget = bucket.available(now);
            let actions = plan(&self.cfg.planner, &g.desired, &g.observed, now);
            let resources: HashMap<JobName, Resources> = g
                .desired
                .iter()
                .map(|(n, j)| (n.clone(), j.resources))
                .collect();
            (actions, resources)
        };
        if actions.is_empty() {
            lock(&self.inner).last_alarms.clear();
            return;
        }
        // Standing alarms are logged when they appear, not on every round.
        let alarms: BTreeSet<String> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Alarm(a) => Some(alarm_text(a)),
                _ => None,
            })
            .collect();
        {
            let mut g = lock(&self.inner);
            for msg in alarms
                .difference(&g.last_alarms)
                .cloned()
                .collect::<Vec<_>>()
            {
                warn!("{msg}");
                g.events.push(event("alarm.plan", None, None, msg));
            }
            g.last_alarms = alarms;
        }
        let mut moved = 0u32;
        for action in actions {
            if matches!(action, Action::Reschedule { .. } | Action::Evict { .. }) {
                moved += 1;
            }
            self.execute(action, &resources, now).await;
        }
        bucket.take(moved, now);
    }

    async fn execute(&self, action: Action, resources: &HashMap<JobName, Resources>, now: Time) {
        let res_of = |j: &JobName| resources.get(j).copied().unwrap_or_default();
        // 1. Persist (fenced) before anything is sent.
        let write = {
            let g = lock(&self.inner);
            let slot_epoch = |task: &TaskId| {
                g.observed
                    .tasks
                    .get(&task.job)
                    .and_then(|s| s.get(task.index as usize))
                    .map_or(FencingToken::NONE, |t| t.epoch)
            };
            match &action {
                Action::Start {
                    task, epoch, agent, ..
                }
                | Action::Reschedule {
                    task,
                    epoch,
                    to: agent,
                    ..
                } => Some(WriteOp::CasTask {
                    expected: slot_epoch(task),
                    record: TaskRecord {
                        task: task.clone(),
                        epoch: *epoch,
                        agent: Some(agent.clone()),
                        state: TaskState::Starting,
                        failures: failures_of(&g.observed, task),
                        updated_unix_ms: unix_now_ms(),
                    },
                }),
                Action::Evict { task, epoch, .. } => Some(WriteOp::CasTask {
                    expected: slot_epoch(task),
                    record: TaskRecord {
                        task: task.clone(),
                        epoch: *epoch,
                        agent: None,
                        state: TaskState::Pending,
                        failures: 0,
                        updated_unix_ms: unix_now_ms(),
                    },
                }),
                Action::Stop { .. } | Action::Quarantine { .. } | Action::Alarm(_) => None,
            }
        };
        if let Some(op) = write {
            let store = self.store.clone();
            let result = tokio::task::spawn_blocking(move || store.apply(&[op])).await;
            match result {
                Ok(Ok(outcome)) if outcome.is_applied() => {}
                Ok(Ok(warden_store::BatchOutcome::Conflict {
                    current,
                    stored_epoch,
                    ..
                })) => {
                    // Our view was stale (e.g. a job re-created under an old name keeps its
                    // slots' epochs): adopt the store's and plan again.
                    warn!(
                        ?action,
                        stored = stored_epoch.0,
                        "fenced write lost; refreshing the slot"
                    );
                    if let Some(task) = action_task(&action) {
                        let mut g = lock(&self.inner);
                        let slots = g.observed.tasks.entry(task.job.clone()).or_default();
                        let i = task.index as usize;
                        if slots.len() <= i {
                            slots.resize_with(i + 1, TaskView::pending);
                        }
                        slots[i] = current.map_or_else(
                            || TaskView {
                                epoch: stored_epoch,
                                ..TaskView::pending()
                            },
                            |r| r.to_view(),
                        );
                    }
                    return;
                }
                Ok(Ok(_)) => return,
                Ok(Err(e)) => {
                    warn!(?action, error = %e, "persist assignment");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "persist assignment task panicked");
                    return;
                }
            }
        }
        // 2. Apply to the in-memory view and send.
        let mut g = lock(&self.inner);
        apply(&mut g.observed, std::slice::from_ref(&action), res_of);
        match &action {
            Action::Start {
                task, epoch, agent, ..
            } => {
                g.events.push(event(
                    "task.start",
                    Some(agent),
                    Some(task),
                    format!("start {task}@{epoch} on {agent}"),
                ));
                self.send_assign(&mut g, task, *epoch, agent, now);
            }
            Action::Reschedule {
                op,
                task,
                epoch,
                from,
                to,
                ..
            } => {
                let detected = g.suspect_since.get(from).copied().unwrap_or(now);
                let failed = g.failed_at.get(from).copied().unwrap_or(now);
                let last_hb = g.fleet.agent(from).and_then(|r| r.last_heartbeat());
                let cause = g.failed_cause.get(from).cloned().unwrap_or(Cause::Leave);
                let has_health_check = g.desired.get(&task.job).is_some_and(|j| j.health.is_some());
                let record = RecoveryRecord {
                    op: op.clone(),
                    task: task.clone(),
                    epoch: *epoch,
                    from: from.clone(),
                    to: Some(to.clone()),
                    last_heartbeat_at: last_hb,
                    detected_at: detected,
                    declared_failed_at: failed,
                    replacement_ordered_at: now,
                    replacement_started_at: None,
                    replacement_healthy_at: None,
                    outcome: Outcome::InProgress,
                    cause,
                };
                if let Some(old) = g.recoveries.insert(
                    task.clone(),
                    Pending {
                        record: record.clone(),
                        has_health_check,
                    },
                ) {
                    let mut old = old.record;
                    old.outcome = Outcome::Superseded;
                    self.persist_recovery(&mut g, old);
                }
                self.persist_recovery(&mut g, record);
                g.events.push(event(
                    "task.reschedule",
                    Some(from),
                    Some(task),
                    format!("reschedule {task}@{epoch} from {from} to {to}"),
                ));
                info!(task = %task, %from, %to, epoch = epoch.0, "reschedule");
                self.send_assign(&mut g, task, *epoch, to, now);
            }
            Action::Evict {
                task, epoch, from, ..
            } => {
                g.events.push(event(
                    "task.evict",
                    Some(from),
                    Some(task),
                    format!("{task}@{epoch} evicted from {from}: no agent has room"),
                ));
            }
            Action::Stop {
                task,
                epoch,
                agent,
                reason,
                ..
            } => {
                // A stop already out for this copy is re-sent by `resend_pending` if the agent
                // keeps reporting the copy; the planner asking again changes nothing.
                let first = agent.as_ref().is_none_or(|a| {
                    !g.stop_sent
                        .get(a)
                        .is_some_and(|p| p.contains_key(&(task.clone(), *epoch)))
                });
                if !first {
                    return;
                }
                if let Some(a) = agent {
                    g.stop_sent
                        .entry(a.clone())
                        .or_default()
                        .insert((task.clone(), *epoch), now);
                    if let Some(s) = g.sessions.get(&a.name)
                        && &s.id == a
                    {
                        send(
                            &s.tx,
                            v1::server_message::Msg::Stop(v1::StopTask {
                                task: task.to_string(),
                                epoch: epoch.0,
                                grace_ms: ms(self.cfg.stop_grace),
                            }),
                        );
                    }
                }
                g.events.push(event(
                    "task.stop",
                    agent.as_ref(),
                    Some(task),
                    format!("stop {task}@{epoch}: {reason:?}"),
                ));
                let state = g
                    .observed
                    .tasks
                    .get(&task.job)
                    .and_then(|s| s.get(task.index as usize))
                    .map(|t| (t.state, t.failures, t.epoch));
                if let Some((state, failures, cur)) = state
                    && cur == *epoch
                {
                    let store = self.store.clone();
                    let (t, e) = (task.clone(), *epoch);
                    tokio::task::spawn_blocking(move || {
                        if let Err(err) =
                            store.put_task_state(&t, e, state, failures, unix_now_ms())
                        {
                            warn!(task = %t, error = %err, "persist stop");
                        }
                    });
                }
            }
            Action::Quarantine { agent, .. } => {
                g.events.push(event(
                    "agent.cordon",
                    Some(agent),
                    None,
                    format!("{agent} cordoned: flapping"),
                ));
            }
            Action::Alarm(_) => {
                // Recorded once per round by `reconcile`.
            }
        }
    }

    /// Send again the orders `agent` has not acted on: assignments it does not report running
    /// (after a second, or at once on a new session) and stops of copies it still reports
    /// (after the stop grace plus a second, or at once on a new session). Orders are
    /// idempotent on the agent (same epoch), so a duplicate is harmless.
    fn resend_pending(
        &self,
        g: &mut Inner,
        agent: &AgentId,
        running: &[(TaskId, FencingToken)],
        now: Time,
        new_session: bool,
    ) {
        if g.led_term.is_none() {
            return; // only the leader gives orders
        }
        let reports =
            |t: &TaskId, e: FencingToken| running.iter().any(|(rt, re)| rt == t && *re == e);
        if let Some(pending) = g.assign_sent.get(agent) {
            let mut resend = Vec::new();
            let mut done = Vec::new();
            for (task, (epoch, at)) in pending {
                let slot = g
                    .observed
                    .tasks
                    .get(&task.job)
                    .and_then(|s| s.get(task.index as usize));
                let still_ours = slot.is_some_and(|t| {
                    t.epoch == *epoch
                        && t.agent.as_ref() == Some(agent)
                        && t.state == TaskState::Starting
                });
                if !still_ours || reports(task, *epoch) {
                    done.push(task.clone());
                } else if new_session || now.saturating_since(*at) >= RESEND_AFTER {
                    resend.push((task.clone(), *epoch));
                }
            }
            if let Some(p) = g.assign_sent.get_mut(agent) {
                for t in done {
                    p.remove(&t);
                }
            }
            for (task, epoch) in resend {
                debug!(%agent, %task, epoch = epoch.0, "assignment not acted on; sending again");
                self.send_assign(g, &task, epoch, agent, now);
            }
        }
        let grace = self.cfg.stop_grace + RESEND_AFTER;
        let Some(session) = g.sessions.get(&agent.name).filter(|s| &s.id == agent) else {
            return;
        };
        let tx = session.tx.clone();
        if let Some(pending) = g.stop_sent.get_mut(agent) {
            pending.retain(|(task, epoch), _| reports(task, *epoch));
            for ((task, epoch), at) in pending.iter_mut() {
                if new_session || now.saturating_since(*at) >= grace {
                    debug!(%agent, %task, epoch = epoch.0, "copy still running after its stop; sending again");
                    *at = now;
                    send(
                        &tx,
                        v1::server_message::Msg::Stop(v1::StopTask {
                            task: task.to_string(),
                            epoch: epoch.0,
                            grace_ms: ms(self.cfg.stop_grace),
                        }),
                    );
                }
            }
        }
    }

    fn send_assign(
        &self,
        g: &mut Inner,
        task: &TaskId,
        epoch: FencingToken,
        agent: &AgentId,
        now: Time,
    ) {
        g.assign_sent
            .entry(agent.clone())
            .or_default()
            .insert(task.clone(), (epoch, now));
        let Some(spec) = g.desired.get(&task.job) else {
            return;
        };
        let Some(s) = g.sessions.get(&agent.name) else {
            return;
        };
        if &s.id != agent {
            return;
        }
        let health_json = spec
            .health
            .as_ref()
            .and_then(|h| serde_json::to_string(h).ok())
            .unwrap_or_default();
        send(
            &s.tx,
            v1::server_message::Msg::Assign(v1::Assign {
                task: task.to_string(),
                epoch: epoch.0,
                singleton: spec.kind == JobKind::Singleton,
                command: spec.command.clone(),
                args: spec.args.clone(),
                env: spec.env.clone().into_iter().collect(),
                resources: Some(v1::Resources {
                    cpu_millis: spec.resources.cpu_millis,
                    memory_mb: spec.resources.memory_mb,
                }),
                health_json,
                service: spec.service.as_ref().map(|s| v1::ServicePort {
                    port: match s.port {
                        ServicePort::Dynamic => 0,
                        ServicePort::Fixed(p) => u32::from(p),
                    },
                }),
            }),
        );
    }

    /// Feed the endpoints registry with this round's service copies; wake its watchers when
    /// it changed. Called with the lock held; a pass over the slots of service jobs.
    fn sync_endpoints(&self, g: &mut Inner, now: Time) {
        let mut declared = Vec::new();
        let mut observed = Vec::new();
        for (job, spec) in &g.desired {
            let Some(service) = spec.service_name() else {
                continue;
            };
            declared.push(service.to_string());
            let Some(slots) = g.observed.tasks.get(job) else {
                continue;
            };
            for (i, slot) in slots.iter().enumerate() {
                let Some(agent) = &slot.agent else { continue };
                let Ok(index) = u32::try_from(i) else {
                    continue;
                };
                let task = TaskId::new(job.clone(), index);
                let Some((epoch, addr, healthy)) = g.endpoints_seen.get(&task) else {
                    continue;
                };
                if *epoch != slot.epoch {
                    continue;
                }
                let agent_state = g
                    .fleet
                    .agent(agent)
                    .map_or(AgentState::Failed, |r| r.state());
                let (state, reason) = judge(CopyFacts {
                    agent: agent_state,
                    task: slot.state,
                    healthy: *healthy,
                    stopping: g.draining.contains_key(job),
                });
                observed.push(Observation {
                    service: service.to_string(),
                    task,
                    epoch: *epoch,
                    agent: agent.clone(),
                    addr: addr.clone(),
                    state,
                    reason,
                });
            }
        }
        declared.sort();
        declared.dedup();
        let desired = &g.desired;
        g.endpoints_seen.retain(|t, _| desired.contains_key(&t.job));
        if g.registry.sync(&declared, observed, now) {
            let index = g.registry.index();
            debug!(index, "endpoints changed");
            self.services_index.send_replace(index);
        }
    }

    /// Stop the deleted jobs whose drain is over: they leave `desired`, so this round's plan
    /// stops their tasks.
    fn end_drains(&self, g: &mut Inner, now: Time) {
        let over: Vec<JobName> = g
            .draining
            .iter()
            .filter(|(_, until)| now >= **until)
            .map(|(job, _)| job.clone())
            .collect();
        for job in over {
            g.draining.remove(&job);
            g.desired.remove(&job);
            info!(job = %job, "drain over; stopping the job's tasks");
            g.events.push(event(
                "job.drained",
                None,
                None,
                format!("job {job} drained; stopping its tasks"),
            ));
        }
    }

    /// A snapshot of the endpoints registry.
    pub fn registry(&self) -> Registry {
        lock(&self.inner).registry.clone()
    }
}

/// Remember the endpoint an agent reports for a copy (only copies that serve one).
fn note_endpoint(g: &mut Inner, task: TaskId, epoch: FencingToken, endpoint: &str, healthy: bool) {
    if endpoint.is_empty() {
        return;
    }
    let newer = g
        .endpoints_seen
        .get(&task)
        .is_none_or(|(e, _, _)| *e <= epoch);
    if newer {
        g.endpoints_seen
            .insert(task, (epoch, endpoint.to_string(), healthy));
    }
}

/// Most events held for the store while it is slow or unreachable; beyond, the oldest are
/// dropped (and counted in a warning), so an etcd outage cannot run the server out of memory.
const MAX_QUEUED_EVENTS: usize = 100_000;

/// Append the control loop's events to the store in order, one batch for whatever queued
/// while the previous batch was written.
async fn write_events(store: Arc<dyn Store>, mut queued: mpsc::UnboundedReceiver<Vec<NewEvent>>) {
    while let Some(mut batch) = queued.recv().await {
        while let Ok(more) = queued.try_recv() {
            batch.extend(more);
        }
        if batch.len() > MAX_QUEUED_EVENTS {
            let dropped = batch.len() - MAX_QUEUED_EVENTS;
            batch.drain(..dropped);
            warn!(dropped, "the store is behind: oldest events dropped");
        }
        let store = store.clone();
        let written = tokio::task::spawn_blocking(move || {
            store.append_events(&batch).map_err(|e| (e, batch.len()))
        })
        .await;
        match written {
            Ok(Ok(_)) => {}
            Ok(Err((e, count))) => warn!(error = %e, count, "persist events"),
            Err(e) => warn!(error = %e, "persist events"),
        }
    }
}

/// The observed slot of `task`, if the job has that many.
fn slot_mut<'a>(observed: &'a mut Observed, task: &TaskId) -> Option<&'a mut TaskView> {
    observed
        .tasks
        .get_mut(&task.job)
        .and_then(|s| s.get_mut(task.index as usize))
}

fn action_task(a: &Action) -> Option<&TaskId> {
    match a {
        Action::Start { task, .. }
        | Action::Reschedule { task, .. }
        | Action::Evict { task, .. }
        | Action::Stop { task, .. } => Some(task),
        Action::Quarantine { .. } | Action::Alarm(_) => None,
    }
}

fn failures_of(obs: &Observed, task: &TaskId) -> u32 {
    obs.tasks
        .get(&task.job)
        .and_then(|s| s.get(task.index as usize))
        .map_or(0, |t| t.failures)
}

fn alarm_text(a: &PlanAlarm) -> String {
    match a {
        PlanAlarm::RescheduleFrozen { tasks } => {
            format!("{tasks} reschedules held by the mass-failure brake")
        }
        PlanAlarm::RateLimited { tasks } => {
            format!("{tasks} reschedules deferred by the rate limit")
        }
        PlanAlarm::NoCapacity { job, tasks } => {
            format!("no agent has room for {tasks} task(s) of {job}")
        }
    }
}

/// How long an order may go unanswered before it is sent again.
const RESEND_AFTER: Duration = Duration::from_secs(1);

/// How often a standby reloads its view of jobs and task slots from the store.
const STANDBY_REFRESH: Duration = Duration::from_secs(1);

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ControlPlane {
    /// Changes are the leader's: a standby refuses them, naming the leader.
    fn writable(&self) -> Result<(), ApiError> {
        if self.leadership.is_leader() && lock(&self.inner).led_term.is_some() {
            return Ok(());
        }
        Err(match self.leadership.leader() {
            Some(l) if l.name != self.leadership.name() => ApiError::new(
                ApiErrorKind::NotLeader,
                format!(
                    "this server is a standby; send changes to the leader at {}",
                    l.name
                ),
            ),
            _ => ApiError::new(
                ApiErrorKind::Unavailable,
                "no leader is acting (is the store reachable, with a quorum?); changes are refused until one is",
            ),
        })
    }
}

fn not_found(what: &str) -> ApiError {
    ApiError::new(ApiErrorKind::NotFound, what.to_string())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ApiErrorKind::Internal, format!("store: {e}"))
}

fn recovery_info(r: &RecoveryRecord) -> RecoveryInfo {
    let split = r.split();
    let ms_of = |d: Duration| ms(d);
    RecoveryInfo {
        op: r.op.to_string(),
        task: r.task.to_string(),
        epoch: r.epoch.0,
        from: r.from.to_string(),
        to: r.to.as_ref().map(ToString::to_string),
        detected_at_unix_ms: Clock::unix_ms(r.detected_at),
        declared_failed_at_unix_ms: Clock::unix_ms(r.declared_failed_at),
        replacement_ordered_at_unix_ms: Clock::unix_ms(r.replacement_ordered_at),
        replacement_started_at_unix_ms: r.replacement_started_at.map(Clock::unix_ms),
        replacement_healthy_at_unix_ms: r.replacement_healthy_at.map(Clock::unix_ms),
        rto_ms: r.rto().map(ms_of),
        detection_ms: split.detection.map(ms_of),
        confirmation_ms: ms_of(split.confirmation),
        fencing_wait_ms: ms_of(split.fencing_wait),
        start_up_ms: split.start_up.map(ms_of),
        outcome: match r.outcome {
            Outcome::InProgress => "in_progress",
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Superseded => "superseded",
        }
        .to_string(),
        cause: r.cause.to_string(),
    }
}

impl ControlApi for ControlPlane {
    fn agents(&self) -> Vec<AgentInfo> {
        let now = self.clock.now();
        let g = lock(&self.inner);
        let fleet = &g.fleet;
        let mut tasks_of: HashMap<&AgentId, Vec<String>> = HashMap::new();
        let mut jobs: Vec<(&JobName, &Vec<TaskView>)> = g.observed.tasks.iter().collect();
        jobs.sort_by(|a, b| a.0.cmp(b.0));
        for (job, slots) in jobs {
            for (i, t) in slots.iter().enumerate() {
                if let Some(a) = &t.agent
                    && matches!(
                        t.state,
                        TaskState::Starting | TaskState::Running | TaskState::Stopping
                    )
                {
                    tasks_of.entry(a).or_default().push(format!("{job}/{i}"));
                }
            }
        }
        let mut newest: BTreeMap<&str, &warden_core::lifecycle::AgentRecord> = BTreeMap::new();
        for r in fleet.agents() {
            let e = newest.entry(&r.id().name).or_insert(r);
            if r.id().generation > e.id().generation {
                *e = r;
            }
        }
        newest
            .into_values()
            .map(|r| {
                let id = r.id();
                let view = g.observed.agents.get(id);
                AgentInfo {
                    name: id.name.to_string(),
                    generation: id.generation,
                    state: r.state().as_str().to_string(),
                    health_score: (r.score().0 * 10.0).round() / 10.0,
                    last_heartbeat_ms_ago: r.last_heartbeat().map(|t| ms(now.saturating_since(t))),
                    phi: {
                        let p = r.suspicion(now);
                        if p.is_finite() {
                            (p * 100.0).round() / 100.0
                        } else {
                            1e9
                        }
                    },
                    state_ms: ms(now.saturating_since(r.phase().since())),
                    probe_addr: g
                        .probe_addrs
                        .get(id)
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    signals: *r.signals(),
                    anomalies: r
                        .anomalous_signals()
                        .iter()
                        .map(|k| k.as_str().to_string())
                        .collect(),
                    tasks: tasks_of.remove(id).unwrap_or_default(),
                    cordoned: view.is_some_and(|v| v.cordoned),
                }
            })
            .collect()
    }

    fn tasks(&self) -> Vec<TaskInfo> {
        let g = lock(&self.inner);
        let mut jobs: Vec<(&JobName, &Vec<TaskView>)> = g.observed.tasks.iter().collect();
        jobs.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = Vec::new();
        for (job, slots) in jobs {
            for (i, t) in slots.iter().enumerate() {
                out.push(TaskInfo {
                    id: format!("{job}/{i}"),
                    job: job.to_string(),
                    agent: t.agent.as_ref().map(|a| a.name.to_string()),
                    generation: t.agent.as_ref().map(|a| a.generation),
                    state: t.state.as_str().to_string(),
                    epoch: t.epoch.0,
                    failures: t.failures,
                });
            }
        }
        out
    }

    fn jobs(&self) -> Result<Vec<JobInfo>, ApiError> {
        let g = lock(&self.inner);
        Ok(g.desired
            .values()
            .map(|spec| {
                let running = g.observed.tasks.get(&spec.name).map_or(0, |s| {
                    s.iter().filter(|t| t.state == TaskState::Running).count()
                });
                JobInfo {
                    spec: spec.clone(),
                    desired: spec.desired_count(),
                    running: u32::try_from(running).unwrap_or(u32::MAX),
                }
            })
            .collect())
    }

    fn submit_job(&self, spec: JobSpec) -> Result<SubmitOutcome, ApiError> {
        spec.validate()
            .map_err(|e| ApiError::new(ApiErrorKind::Invalid, e.to_string()))?;
        self.writable()?;
        let (existing, draining) = {
            let g = lock(&self.inner);
            (
                g.desired.get(&spec.name).cloned(),
                g.draining.contains_key(&spec.name),
            )
        };
        let outcome = match existing {
            // Submitting a draining job again cancels its stop (and stores it again).
            Some(old) if old == spec && !draining => return Ok(SubmitOutcome::Unchanged),
            Some(_) => SubmitOutcome::Updated,
            None => SubmitOutcome::Created,
        };
        // Persist first: a job the API acknowledged survives a crash.
        self.store.put_job(&spec).map_err(internal)?;
        let mut g = lock(&self.inner);
        g.events.push(event(
            "job.submit",
            None,
            None,
            format!("job {} {outcome:?}", spec.name),
        ));
        g.draining.remove(&spec.name);
        g.desired.insert(spec.name.clone(), spec);
        drop(g);
        self.wake.notify_one();
        Ok(outcome)
    }

    fn delete_job(&self, name: &str) -> Result<(), ApiError> {
        self.writable()?;
        let job = JobName::new(name);
        if !lock(&self.inner).desired.contains_key(&job) {
            return Err(not_found(&format!("no job named {name:?}")));
        }
        self.store.delete_job(&job).map_err(internal)?;
        let now = self.clock.now();
        let mut g = lock(&self.inner);
        let drain = g
            .desired
            .get(&job)
            .and_then(|s| s.service.as_ref())
            .map_or(Duration::ZERO, |s| s.drain);
        // A service with `drain` keeps running, out of new traffic, for that long; deleting
        // it again while it drains stops it at once.
        if drain > Duration::ZERO && !g.draining.contains_key(&job) {
            g.draining.insert(job, now + drain);
            g.events.push(event(
                "job.delete",
                None,
                None,
                format!(
                    "job {name} deleted; draining for {} ms before stopping its tasks",
                    ms(drain)
                ),
            ));
        } else {
            g.draining.remove(&job);
            g.desired.remove(&job);
            g.events.push(event(
                "job.delete",
                None,
                None,
                format!("job {name} deleted; stopping its tasks"),
            ));
        }
        drop(g);
        self.wake.notify_one();
        Ok(())
    }

    fn events(&self, since: u64, limit: usize) -> Result<Vec<EventInfo>, ApiError> {
        self.store.events_since(since, limit).map_err(internal)
    }

    fn recent_events(&self, limit: usize) -> Result<Vec<EventInfo>, ApiError> {
        let last = self.store.last_event_seq().map_err(internal)?;
        let since = last.saturating_sub(u64::try_from(limit).unwrap_or(u64::MAX));
        self.store.events_since(since, limit).map_err(internal)
    }

    fn recoveries(&self) -> Result<Vec<RecoveryInfo>, ApiError> {
        let stored = self
            .store
            .list_recoveries(&warden_store::RecoveryQuery::all())
            .map_err(internal)?;
        Ok(stored.iter().map(|s| recovery_info(&s.record)).collect())
    }

    fn metrics(&self) -> String {
        self.metrics.render(self)
    }

    fn services(&self) -> ServicesInfo {
        let g = lock(&self.inner);
        let origin = self.clock.now();
        let wall = unix_now_ms();
        let unix_ms = |t: Time| wall.saturating_sub(ms(origin.saturating_since(t)));
        ServicesInfo {
            index: g.registry.index(),
            services: g
                .registry
                .services()
                .iter()
                .map(|(name, svc)| ServiceInfo {
                    name: name.clone(),
                    index: svc.index,
                    instances: svc
                        .instances
                        .values()
                        .map(|i| InstanceInfo {
                            task: i.task.to_string(),
                            epoch: i.epoch.0,
                            agent: i.agent.to_string(),
                            addr: i.addr.clone(),
                            state: i.state.as_str().to_string(),
                            reason: i.reason.clone(),
                            since_unix_ms: unix_ms(i.since),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn watch_services(&self) -> Option<watch::Receiver<u64>> {
        Some(self.services_index.subscribe())
    }

    fn leader(&self) -> LeaderView {
        let known = self.leadership.leader();
        let (acting, led, last_refresh) = {
            let g = lock(&self.inner);
            (g.acting_since_unix_ms, g.led_term, g.last_refresh)
        };
        let leads = led.is_some() && self.leadership.is_leader();
        let fresh = last_refresh
            .is_some_and(|t| self.clock.now().saturating_since(t) <= STANDBY_REFRESH * 3);
        LeaderView {
            leader: known.as_ref().map(|l| l.name.clone()),
            term: known.as_ref().map(|l| l.term),
            since: known.as_ref().map(|l| l.since_unix_ms),
            acting_since: if leads { acting } else { None },
            role: if leads { "leader" } else { "standby" }.into(),
            this: self.leadership.name().to_string(),
            stale: !leads && (known.is_none() || !fresh),
        }
    }

    fn health(&self) -> HealthInfo {
        let g = lock(&self.inner);
        HealthInfo {
            status: "ok".to_string(),
            sessions: g.sessions.len(),
            brake_engaged: g.fleet.brake_engaged(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hello(name: &str, generation: u64) -> v1::Hello {
        v1::Hello {
            name: name.into(),
            generation,
            probe_addr: "127.0.0.1:9".into(),
            capacity: Some(v1::Resources {
                cpu_millis: 1000,
                memory_mb: 1024,
            }),
            running: vec![],
            version: "test".into(),
        }
    }

    #[test]
    fn a_second_generation_is_refused_while_the_first_session_is_open() {
        let cp = ControlPlane::new(
            Arc::new(warden_store::MemStore::new()),
            ControlConfig::default(),
        )
        .unwrap();
        let (tx, _rx) = mpsc::channel(16);
        let first = cp.admit(&hello("a", 0), tx.clone()).unwrap();
        assert_eq!(first.id.generation, 1);
        // Same name, new process (or a duplicate name): refused, and no generation is burnt.
        let busy = cp.admit(&hello("a", 0), tx.clone()).unwrap_err();
        assert!(matches!(busy, AdmitError::Busy(_)), "{busy:?}");
        assert_eq!(tonic::Status::from(busy).code(), tonic::Code::AlreadyExists);
        // The same generation reconnecting is fine (a dropped session).
        let again = cp.admit(&hello("a", 1), tx.clone()).unwrap();
        assert_eq!(again.id, first.id);
        // Once the session is gone, a restarted agent gets the next generation.
        cp.session_closed(&again);
        let restarted = cp.admit(&hello("a", 0), tx).unwrap();
        assert_eq!(restarted.id.generation, 2);
        // Garbage names are refused as invalid, not as a stale generation.
        let (tx, _rx) = mpsc::channel(16);
        let bad = cp.admit(&hello("a/b", 0), tx).unwrap_err();
        assert_eq!(
            tonic::Status::from(bad).code(),
            tonic::Code::InvalidArgument
        );
    }

    fn acks(rx: &mut mpsc::Receiver<Result<v1::ServerMessage, tonic::Status>>) -> Vec<u64> {
        let mut ttls = Vec::new();
        while let Ok(Ok(m)) = rx.try_recv() {
            if let Some(v1::server_message::Msg::Ack(a)) = m.msg {
                ttls.push(a.lease_ttl_ms);
            }
        }
        ttls
    }

    /// Two replicas on one store: the standby keeps warm state but renews no lease, hands out
    /// no generation and refuses changes; once it is elected it takes over from the store.
    #[tokio::test]
    async fn a_standby_renews_nothing_and_gives_no_orders_until_it_leads() {
        use crate::leader::{LeaderInfo, Leadership, Role};
        let store: Arc<dyn Store> = Arc::new(warden_store::MemStore::new());
        let far = std::time::Instant::now() + Duration::from_secs(3600);
        let (a_role, a_rx) = watch::channel(Role::Leader {
            term: 5,
            since_unix_ms: 1,
            valid_until: Some(far),
        });
        let leader_b = LeaderInfo {
            name: "a:7401".into(),
            term: 5,
            since_unix_ms: 1,
        };
        let (b_role, b_rx) = watch::channel(Role::Follower {
            leader: Some(leader_b),
        });
        let a = ControlPlane::with_leadership(
            store.clone(),
            ControlConfig::default(),
            Leadership::from_watch("a:7401", a_rx),
        )
        .unwrap();
        let b = ControlPlane::with_leadership(
            store.clone(),
            ControlConfig::default(),
            Leadership::from_watch("b:7401", b_rx),
        )
        .unwrap();

        // A new generation only from the leader.
        let (btx, mut brx) = mpsc::channel(64);
        let refused = b.admit(&hello("x", 0), btx.clone()).unwrap_err();
        assert!(
            matches!(refused, AdmitError::NotLeader(ref m) if m.contains("a:7401")),
            "{refused:?}"
        );
        let (atx, mut arx) = mpsc::channel(64);
        let on_a = a.admit(&hello("x", 0), atx).unwrap();
        let on_b = b.admit(&hello("x", on_a.id.generation), btx).unwrap();
        assert_eq!(on_a.id, on_b.id);

        // Both judge the agent; only the leader's acks carry a lease.
        for seq in 1..=3 {
            a.heartbeat(&on_a, &heartbeat(seq));
            b.heartbeat(&on_b, &heartbeat(seq));
        }
        let (from_a, from_b) = (acks(&mut arx), acks(&mut brx));
        assert!(
            !from_a.is_empty() && from_a.iter().all(|t| *t > 0),
            "{from_a:?}"
        );
        assert!(
            !from_b.is_empty() && from_b.iter().all(|t| *t == 0),
            "{from_b:?}"
        );
        assert_eq!(
            b.agents()[0].state,
            "healthy",
            "the standby's detector is warm"
        );

        // Changes go to the leader.
        let spec: JobSpec =
            toml::from_str("name = \"cron\"\nkind = \"singleton\"\ncommand = \"/bin/true\"")
                .unwrap();
        let err = b.submit_job(spec.clone()).unwrap_err();
        assert_eq!(err.kind, ApiErrorKind::NotLeader);
        assert!(err.message.contains("a:7401"), "{err}");
        assert_eq!(a.submit_job(spec).unwrap(), SubmitOutcome::Created);
        assert_eq!(b.leader().role, "standby");
        assert_eq!(b.leader().leader.as_deref(), Some("a:7401"));

        // The leader's deadline passes: it stops renewing at once, with no new message.
        a_role
            .send(Role::Leader {
                term: 5,
                since_unix_ms: 1,
                valid_until: Some(std::time::Instant::now()),
            })
            .unwrap();
        a.heartbeat(&on_a, &heartbeat(4));
        assert_eq!(
            acks(&mut arx),
            vec![0],
            "a leader past its deadline renews nothing"
        );
        assert!(
            a.submit_job(
                toml::from_str("name = \"x\"\nkind = \"singleton\"\ncommand = \"/bin/true\"")
                    .unwrap()
            )
            .is_err()
        );

        // B is elected: it takes over from the store (the job A accepted) and renews leases.
        b_role
            .send(Role::Leader {
                term: 6,
                since_unix_ms: 2,
                valid_until: Some(far),
            })
            .unwrap();
        let now = b.clock.now();
        assert!(b.follow_election(now).await);
        assert!(lock(&b.inner).desired.contains_key(&JobName::new("cron")));
        let renewed = lock(&b.inner).observed.agents[&on_b.id].last_renewal;
        assert!(
            renewed.is_some_and(|t| t >= now),
            "the old leader's renewals are respected"
        );
        b.heartbeat(&on_b, &heartbeat(5));
        let from_b = acks(&mut brx);
        assert!(
            !from_b.is_empty() && from_b.iter().all(|t| *t > 0),
            "{from_b:?}"
        );
        assert_eq!(b.leader().role, "leader");
    }

    fn heartbeat(seq: u64) -> v1::Heartbeat {
        v1::Heartbeat {
            seq,
            signals: None,
            running: vec![],
        }
    }

    /// The lines of `text` that start with `prefix`.
    fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn the_exposition_has_every_family_and_no_series_of_ended_generations() {
        let cp = ControlPlane::new(
            Arc::new(warden_store::MemStore::new()),
            ControlConfig::default(),
        )
        .unwrap();
        let (tx, _rx) = mpsc::channel(64);
        let a = cp.admit(&hello("a", 0), tx.clone()).unwrap();
        // A name that needs escaping in a label value.
        let odd = cp.admit(&hello("q\"x\\y", 0), tx.clone()).unwrap();
        for seq in 1..=3 {
            cp.heartbeat(&a, &heartbeat(seq));
        }
        cp.heartbeat(&odd, &heartbeat(1));
        let text = cp.metrics();

        for family in [
            "warden_heartbeats_received_total",
            "warden_lifecycle_transitions_total",
            "warden_recoveries_started_total",
            "warden_recoveries_total",
            "warden_recovery_rto_seconds",
            "warden_detection_seconds",
            "warden_reconcile_duration_seconds",
            "warden_store_operation_seconds",
            "warden_agents",
            "warden_agent_health_score",
            "warden_agent_phi",
            "warden_sessions",
            "warden_brake_engaged",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "no {family} in\n{text}"
            );
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "no help for {family} in\n{text}"
            );
        }
        assert_eq!(
            lines(&text, "warden_heartbeats_received_total "),
            ["warden_heartbeats_received_total 4"]
        );
        assert_eq!(
            lines(
                &text,
                "warden_lifecycle_transitions_total{from=\"joining\",to=\"healthy\"}"
            ),
            ["warden_lifecycle_transitions_total{from=\"joining\",to=\"healthy\"} 2"]
        );
        assert_eq!(
            lines(&text, "warden_agents{state=\"healthy\"}"),
            ["warden_agents{state=\"healthy\"} 2"]
        );
        assert_eq!(
            lines(&text, "warden_agents{state=\"left\"}"),
            ["warden_agents{state=\"left\"} 0"]
        );
        assert_eq!(lines(&text, "warden_sessions "), ["warden_sessions 2"]);
        assert_eq!(
            lines(&text, "warden_brake_engaged "),
            ["warden_brake_engaged 0"]
        );
        assert_eq!(
            lines(&text, "warden_recoveries_total{outcome=\"succeeded\"}"),
            ["warden_recoveries_total{outcome=\"succeeded\"} 0"]
        );
        assert_eq!(
            lines(&text, "warden_agent_phi{agent=\"a\"}").len(),
            1,
            "{text}"
        );
        assert_eq!(
            lines(&text, "warden_agent_health_score{agent=\"a\"}"),
            ["warden_agent_health_score{agent=\"a\"} 100"]
        );
        assert_eq!(
            lines(&text, r#"warden_agent_phi{agent="q\"x\\y"}"#).len(),
            1,
            "{text}"
        );
        // Generations were handed out by the store, timed.
        assert_eq!(
            lines(
                &text,
                "warden_store_operation_seconds_count{op=\"next_generation\"}"
            ),
            ["warden_store_operation_seconds_count{op=\"next_generation\"} 2"]
        );
        // Histograms are histograms (buckets), not summaries.
        assert!(
            text.contains("warden_recovery_rto_seconds_bucket{le=\"+Inf\"} 0"),
            "{text}"
        );

        // The generation ends: its per-agent series go at the next scrape, the counts stay.
        cp.leave(&a);
        cp.session_closed(&a);
        let text = cp.metrics();
        assert!(
            lines(&text, "warden_agent_phi{agent=\"a\"}").is_empty(),
            "{text}"
        );
        assert!(
            lines(&text, "warden_agent_health_score{agent=\"a\"}").is_empty(),
            "{text}"
        );
        assert_eq!(
            lines(&text, "warden_agents{state=\"left\"}"),
            ["warden_agents{state=\"left\"} 1"]
        );
        assert_eq!(lines(&text, "warden_sessions "), ["warden_sessions 1"]);
        assert_eq!(
            lines(
                &text,
                "warden_lifecycle_transitions_total{from=\"healthy\",to=\"left\"}"
            ),
            ["warden_lifecycle_transitions_total{from=\"healthy\",to=\"left\"} 1"]
        );
        assert_eq!(
            lines(&text, r#"warden_agent_phi{agent="q\"x\\y"}"#).len(),
            1,
            "{text}"
        );
    }
}
