//! The control plane's runtime: the thin executor around `warden-core`'s pure
//! [`Controller`].
//!
//! Every decision is the controller's. This module only does I/O: it converts what sessions
//! receive into [`Input`]s (with `warden_proto::convert`), steps the controller under one
//! mutex, and carries out the [`Command`]s it returns, in order and without blocking —
//! orders go to the sessions' outbound queues, writes and events to one ordered store writer
//! ([`writer`]), probe rounds and store reads to tasks of the [`ControlPlane::run`] loop, whose
//! outcomes come back as inputs. The store, which fsyncs, is never called under the mutex.
//!
//! Safety-relevant order: a new assignment's fencing token is written to the store (an
//! epoch-checked compare-and-set) and only sent to the agent once the write's outcome came back
//! as [`Input::Persisted`]; the controller holds the order until then.

mod api;
mod probes;
mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use warden_core::controller::{
    Command, Controller, ControllerConfig, Election, Heartbeat, Hello, Input, Load, Notice,
    ProbeRound, Refusal, SessionId, Snapshot, WriteId, WriteOutcome,
};
use warden_core::lifecycle::ProbeOutcome;
use warden_core::recovery::Outcome;
use warden_core::{AgentId, ConfigError, Time};
use warden_proto::convert;
use warden_proto::v1;
use warden_store::Store;

pub use crate::clock::Clock;
use crate::clock::ms;
use crate::leader::{Leadership, Standing};
use crate::metrics::{Metrics, TimedStore};

pub use crate::outbox::Outbox;

/// A message queued for a session. An ack, most of them, travels inline (24 bytes a slot);
/// anything else boxed, so a session's queue stays small however large the rarer messages
/// are.
#[derive(Debug)]
pub enum Outgoing {
    /// Heartbeat `seq` acknowledged; the lease runs `lease_ttl_ms` from its send time.
    Ack {
        /// The heartbeat.
        seq: u64,
        /// The lease's length.
        lease_ttl_ms: u64,
    },
    /// Any other message.
    Other(Box<v1::ServerMessage>),
}

impl Outgoing {
    /// The message on the wire.
    pub fn into_message(self) -> v1::ServerMessage {
        match self {
            Outgoing::Ack { seq, lease_ttl_ms } => v1::ServerMessage {
                msg: Some(v1::server_message::Msg::Ack(v1::Ack { seq, lease_ttl_ms })),
            },
            Outgoing::Other(m) => *m,
        }
    }
}

/// One open session, where the controller's orders for its generation go.
#[derive(Debug)]
struct Route {
    id: AgentId,
    serial: u64,
    tx: Outbox,
}

/// Work for the [`ControlPlane::run`] loop: inputs that arrive off the sessions (store
/// outcomes, probe reports, store reads) and the I/O that must not run under the mutex.
#[derive(Debug)]
enum Job {
    Input(Input),
    Probe(probes::Round),
    Load(Load),
}

/// Everything behind the mutex.
#[derive(Debug)]
struct State {
    ctrl: Controller,
    routes: HashMap<Arc<str>, Route>,
    /// The election, followed at every step.
    role: watch::Receiver<Standing>,
    next_serial: u64,
    /// Indirect probes asked of agents: request id → (the agent asked, its answer).
    waiters: HashMap<u64, (Arc<str>, oneshot::Sender<ProbeOutcome>)>,
    next_probe: u64,
    /// Operators' release writes (submissions, reverts) waiting for their outcome.
    release_waiters: HashMap<WriteId, std::sync::mpsc::Sender<WriteOutcome>>,
}

/// The control plane. Cheap to share: wrap it in an `Arc`.
pub struct ControlPlane {
    state: Mutex<State>,
    store: Arc<dyn Store>,
    clock: Clock,
    cfg: ControllerConfig,
    metrics: Metrics,
    /// The registry's index, for watchers (long polls, load-balancer adapters).
    services_index: watch::Sender<u64>,
    leadership: Leadership,
    /// Planning is due: tick now rather than at the next interval.
    wake: Notify,
    writes: mpsc::UnboundedSender<writer::Queued>,
    jobs: mpsc::UnboundedSender<Job>,
    /// Taken by [`ControlPlane::run`].
    receivers: Mutex<Option<Receivers>>,
}

type Receivers = (
    mpsc::UnboundedReceiver<writer::Queued>,
    mpsc::UnboundedReceiver<Job>,
);

/// Longest wait for a job's new version to be stored.
const SUBMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a new version of a job was not stored.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The controller refused it.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
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
    /// The store failed, or no leader acts; try again later.
    #[error("{0}")]
    Internal(String),
    /// A standby cannot hand out generations; the agent gets one from the leader.
    #[error("{0}")]
    NotLeader(String),
}

impl From<Refusal> for AdmitError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Invalid(m) | Refusal::NotFound(m) => AdmitError::Invalid(m),
            Refusal::Stale(m) => AdmitError::Stale(m),
            Refusal::Busy(m) => AdmitError::Busy(m),
            Refusal::NotLeader(m) => AdmitError::NotLeader(m),
            Refusal::Unavailable(m) => AdmitError::Internal(m),
        }
    }
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent-enough state for reads; keep serving.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn send(tx: &Outbox, msg: v1::server_message::Msg) {
    let out = match msg {
        v1::server_message::Msg::Ack(a) => Outgoing::Ack {
            seq: a.seq,
            lease_ttl_ms: a.lease_ttl_ms,
        },
        msg => Outgoing::Other(Box::new(v1::ServerMessage { msg: Some(msg) })),
    };
    // A full or closed channel means the session is going away; the lifecycle handles that.
    let _ = tx.try_send(out);
}

/// The election as the controller takes it: a deadline on the controller's clock.
fn election_of(role: &Standing, now: Time) -> Election {
    match role {
        Standing::Leader {
            term,
            since_unix_ms,
            valid_until,
        } => Election::Leader {
            term: *term,
            since_unix_ms: *since_unix_ms,
            valid_until: valid_until.map(|t| now + t.saturating_duration_since(Instant::now())),
        },
        Standing::Follower { leader } => Election::Follower {
            leader: leader.clone(),
        },
    }
}

/// The store's jobs and task slots.
fn read_snapshot(store: &dyn Store) -> Result<Snapshot, warden_store::StoreError> {
    Ok(Snapshot {
        jobs: store.list_jobs()?,
        releases: store.list_releases()?,
        slots: store
            .list_tasks()?
            .into_iter()
            .map(|r| (r.task.clone(), r.to_view()))
            .collect(),
    })
}

impl ControlPlane {
    /// Open the control plane on `store`, loading jobs and task records. A single server:
    /// it always leads.
    pub fn new(store: Arc<dyn Store>, cfg: ControllerConfig) -> Result<Arc<Self>, StartError> {
        Self::with_leadership(store, cfg, Leadership::single("local"))
    }

    /// Open the control plane on `store` as one replica of several, taking its role from
    /// `leadership` (see [`crate::leader`]).
    pub fn with_leadership(
        store: Arc<dyn Store>,
        cfg: ControllerConfig,
        leadership: Leadership,
    ) -> Result<Arc<Self>, StartError> {
        let cfg = cfg.normalized();
        cfg.validate()?;
        let metrics = Metrics::new();
        let store: Arc<dyn Store> = Arc::new(TimedStore::new(store, metrics.clone()));
        let clock = Clock::new();
        let snapshot = read_snapshot(store.as_ref())?;
        let mut role = leadership.watch();
        let now = clock.now();
        let election = election_of(&role.borrow_and_update(), now);
        let (ctrl, start) =
            Controller::new(cfg.clone(), leadership.name(), election, snapshot, now)?;
        let (writes, writes_rx) = mpsc::unbounded_channel();
        let (jobs, jobs_rx) = mpsc::unbounded_channel();
        let cp = Arc::new(ControlPlane {
            state: Mutex::new(State {
                ctrl,
                routes: HashMap::new(),
                role,
                next_serial: 0,
                waiters: HashMap::new(),
                next_probe: 0,
                release_waiters: HashMap::new(),
            }),
            store,
            clock,
            cfg,
            metrics,
            services_index: watch::Sender::new(0),
            leadership,
            wake: Notify::new(),
            writes,
            jobs,
            receivers: Mutex::new(Some((writes_rx, jobs_rx))),
        });
        let mut st = lock(&cp.state);
        cp.execute(&mut st, start);
        drop(st);
        Ok(cp)
    }

    /// This replica's view of the election.
    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    /// The configuration in force.
    pub fn config(&self) -> &ControllerConfig {
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

    /// Step the controller with `input` and carry out what it says.
    fn input(&self, input: Input) {
        let mut st = lock(&self.state);
        self.step(&mut st, input);
    }

    fn step(&self, st: &mut State, input: Input) {
        // Read under the lock: steps see non-decreasing times.
        let now = self.clock.now();
        self.follow_election(st, now);
        let answer = match &input {
            Input::Persisted { write, outcome } => st
                .release_waiters
                .remove(write)
                .map(|tx| (tx, outcome.clone())),
            _ => None,
        };
        let cmds = st.ctrl.step(input, now);
        self.execute(st, cmds);
        if let Some((tx, outcome)) = answer {
            let _ = tx.send(outcome);
        }
    }

    /// Store a new version of a job (a submission, or a revert to an earlier version's spec)
    /// through the ordered writer and wait until it is stored and in force. Returns the
    /// version's number.
    pub fn submit_release(
        &self,
        spec: warden_core::JobSpec,
        cause: String,
        revert: bool,
    ) -> Result<u64, SubmitError> {
        let job = spec.name.clone();
        let rx = {
            let mut st = lock(&self.state);
            let now = self.clock.now();
            self.follow_election(&mut st, now);
            let input = Input::Submit {
                spec: Box::new(spec),
                unix_ms: crate::clock::unix_now_ms(),
                cause,
                revert,
            };
            let cmds = st.ctrl.step(input, now);
            let asked = cmds.iter().find_map(|c| match c {
                Command::Persist(warden_core::controller::Write::Release {
                    id, releases, ..
                }) if releases.job == job => {
                    Some((*id, releases.current().map_or(0, |r| r.version)))
                }
                _ => None,
            });
            let Some((id, version)) = asked else {
                self.execute(&mut st, cmds);
                return Err(SubmitError::Refused(if st.ctrl.term_now(now).is_some() {
                    Refusal::Busy(format!(
                        "another change of job {job} is being stored; retry in a moment"
                    ))
                } else {
                    Refusal::Unavailable("leadership is changing; retry".into())
                }));
            };
            let (tx, rx) = std::sync::mpsc::channel();
            st.release_waiters.insert(id, tx);
            self.execute(&mut st, cmds);
            (rx, id, version)
        };
        let (rx, id, version) = rx;
        match rx.recv_timeout(SUBMIT_TIMEOUT) {
            Ok(WriteOutcome::Applied) => Ok(version),
            Ok(WriteOutcome::Failed(e)) => Err(SubmitError::Store(e)),
            Ok(WriteOutcome::Conflict { .. }) => Err(SubmitError::Store("conflict".into())),
            Err(_) => {
                lock(&self.state).release_waiters.remove(&id);
                Err(SubmitError::Refused(Refusal::Unavailable(format!(
                    "the store did not answer within {} s; the job may be stored later",
                    SUBMIT_TIMEOUT.as_secs()
                ))))
            }
        }
    }

    /// Promote a job's rollout past its canaries.
    pub fn promote_rollout(&self, job: &str) -> Result<(), Refusal> {
        let mut st = lock(&self.state);
        let now = self.clock.now();
        self.follow_election(&mut st, now);
        st.ctrl.check_promote_rollout(job, now)?;
        self.step(
            &mut st,
            Input::PromoteRollout {
                job: warden_core::JobName::new(job),
            },
        );
        Ok(())
    }

    /// Tell the controller when the election published a new role.
    fn follow_election(&self, st: &mut State, now: Time) {
        if st.role.has_changed().unwrap_or(false) {
            let election = election_of(&st.role.borrow_and_update(), now);
            let cmds = st.ctrl.step(Input::Election(election), now);
            self.execute(st, cmds);
        }
    }

    /// Carry out commands, in order. Nothing here blocks.
    fn execute(&self, st: &mut State, cmds: Vec<Command>) {
        for cmd in cmds {
            match cmd {
                Command::Welcome {
                    agent,
                    welcome,
                    session,
                } => {
                    if let Some(r) = st.routes.get(&agent.name)
                        && r.serial == session.0
                    {
                        send(&r.tx, v1::server_message::Msg::Welcome((&welcome).into()));
                    }
                }
                // Answered by `admit`, which is waiting for it.
                Command::Refuse { .. } => {}
                Command::Send { to, order } => {
                    if let Some(r) = st.routes.get(&to.name)
                        && r.id == to
                    {
                        send(&r.tx, convert::order_to_wire(&order));
                    }
                }
                Command::Persist(w) => {
                    let _ = self.writes.send(writer::Queued::Write(w));
                }
                Command::AppendEvent(e) => {
                    let _ = self
                        .writes
                        .send(writer::Queued::Event(writer::new_event(&e)));
                }
                Command::Probe(round) => {
                    let round = self.probe_round(st, round);
                    let _ = self.jobs.send(Job::Probe(round));
                }
                Command::Load(load) => {
                    let _ = self.jobs.send(Job::Load(load));
                }
                Command::ServicesChanged { index } => {
                    self.services_index.send_replace(index);
                }
                Command::Notice(n) => self.notice(n),
            }
        }
        if st.ctrl.plan_due() {
            self.wake.notify_one();
        }
    }

    /// The helpers' sessions and request ids of a probe round, taken under the lock.
    fn probe_round(&self, st: &mut State, round: ProbeRound) -> probes::Round {
        let mut helpers = Vec::new();
        for h in &round.helpers {
            if let Some(r) = st.routes.get(&h.name)
                && r.id == *h
            {
                st.next_probe += 1;
                helpers.push((r.tx.clone(), st.next_probe, h.name.clone()));
            }
        }
        probes::Round { round, helpers }
    }

    /// Log and count what the controller noticed.
    fn notice(&self, n: Notice) {
        match n {
            Notice::Admitted { agent } => info!(agent = %agent, "agent admitted"),
            Notice::Transition {
                transition: t,
                detection,
            } => {
                info!(agent = %t.agent, from = %t.from, to = %t.to, cause = %t.cause, "agent transition");
                self.metrics.transition(t.from, t.to);
                if let Some(d) = detection {
                    self.metrics.detection(d);
                }
            }
            Notice::Recovery(r) => {
                self.metrics.recovery(&r);
                if r.outcome == Outcome::Succeeded {
                    let rto = r.rto().map(ms).unwrap_or_default();
                    info!(task = %r.task, rto_ms = rto, "recovery succeeded");
                }
            }
            Notice::Alarm(msg) => warn!("{msg}"),
            Notice::Rescheduled {
                task,
                from,
                to,
                epoch,
            } => info!(task = %task, from = %from, to = %to, epoch = epoch.0, "rescheduled"),
            Notice::WriteLost { task, stored } => {
                warn!(task = %task, stored = stored.0, "epoch-checked write lost; refreshing the slot");
            }
            Notice::WriteFailed { task, error } => {
                warn!(task = %task, error = %error, "persist assignment");
            }
            Notice::DrainOver { job } => info!(job = %job, "drain over; stopping the job's tasks"),
            Notice::Reconciled { took, actions } => {
                self.metrics.reconcile(took);
                if actions > 0 {
                    debug!(actions, took_ms = ms(took), "reconciled");
                }
            }
            Notice::TookOver { term } => info!(term, "took over as leader"),
            Notice::Acting { term } => info!(term, "leader acting: first reconcile round done"),
            Notice::SteppedDown { term } => warn!(
                term,
                "leadership lost: standing down (no orders, no lease renewals)"
            ),
            Notice::LoadFailed { load, error } => match load {
                Load::TakeOver { .. } => {
                    warn!(error = %error, "elected, but the store cannot be read; not acting yet");
                }
                Load::Refresh => debug!(error = %error, "standby refresh"),
            },
            Notice::Stalled { gap } => warn!(
                stalled_ms = ms(gap),
                "control loop was stalled; holding verdicts for 1s"
            ),
            Notice::Forgot { generations } => debug!(generations, "ended generations forgotten"),
        }
    }

    /// An agent said Hello. Assigns a generation when it asks for one (`generation == 0`).
    /// Returns `Err` with a reason when the agent must rejoin with a new generation.
    pub fn admit(&self, hello: &v1::Hello, tx: Outbox) -> Result<Admitted, AdmitError> {
        let hello = Hello::from(hello);
        {
            let mut st = lock(&self.state);
            let now = self.clock.now();
            self.follow_election(&mut st, now);
            st.ctrl.admission(&hello, now)?;
        }
        let name = hello.trimmed_name().to_string();
        let generation = if hello.generation == 0 {
            self.store
                .next_generation(&name)
                .map_err(|e| AdmitError::Internal(format!("assign a generation: {e}")))?
        } else {
            hello.generation
        };
        let id = AgentId::new(name.as_str(), generation);
        let mut st = lock(&self.state);
        st.next_serial += 1;
        let serial = st.next_serial;
        let route = Route {
            id: id.clone(),
            serial,
            tx,
        };
        let before = st.routes.insert(id.name.clone(), route);
        let now = self.clock.now();
        self.follow_election(&mut st, now);
        let input = Input::SessionOpened {
            session: SessionId(serial),
            agent: id.clone(),
            hello,
        };
        let cmds = st.ctrl.step(input, now);
        let refused = cmds.iter().find_map(|c| match c {
            Command::Refuse { session, refusal } if session.0 == serial => Some(refusal.clone()),
            _ => None,
        });
        if let Some(refusal) = refused {
            match before {
                Some(r) => st.routes.insert(id.name.clone(), r),
                None => st.routes.remove(&id.name),
            };
            self.execute(&mut st, cmds);
            return Err(refusal.into());
        }
        self.execute(&mut st, cmds);
        Ok(Admitted { id, serial })
    }

    /// A heartbeat arrived on a session.
    pub fn heartbeat(&self, who: &Admitted, hb: &v1::Heartbeat) {
        self.metrics.heartbeat_received();
        self.input(Input::Heartbeat {
            agent: who.id.clone(),
            beat: Heartbeat::from(hb),
        });
    }

    /// A task report arrived on a session.
    pub fn task_report(&self, who: &Admitted, r: &v1::TaskReport) {
        if let Some((copy, message)) = convert::report_from_wire(r) {
            self.input(Input::TaskReport {
                agent: who.id.clone(),
                copy,
                message,
            });
        }
    }

    /// A probe result arrived on `who`'s session; only the agent asked may answer.
    pub fn probe_result(&self, who: &Admitted, r: &v1::ProbeResult) {
        let mut st = lock(&self.state);
        if st.waiters.get(&r.request_id).map(|w| &w.0) == Some(&who.id.name)
            && let Some((_, w)) = st.waiters.remove(&r.request_id)
        {
            let _ = w.send(convert::outcome_from_wire(r.outcome));
        }
    }

    /// The agent left gracefully.
    pub fn leave(&self, who: &Admitted) {
        self.input(Input::Leave {
            agent: who.id.clone(),
        });
    }

    /// The agent is about to restart on purpose.
    pub fn restarting(&self, who: &Admitted, r: &v1::Restarting) {
        self.input(Input::Restarting {
            agent: who.id.clone(),
            window: std::time::Duration::from_millis(r.window_ms),
        });
    }

    /// The session ended (stream closed, reset or failed).
    pub fn session_closed(&self, who: &Admitted) {
        let mut st = lock(&self.state);
        if st
            .routes
            .get(&who.id.name)
            .is_some_and(|r| r.serial == who.serial)
        {
            st.routes.remove(&who.id.name);
        }
        let input = Input::SessionClosed {
            agent: who.id.clone(),
            session: SessionId(who.serial),
        };
        self.step(&mut st, input);
    }

    /// An operator released the mass-failure brake. Refused on a standby.
    pub fn release_brake(&self) -> Result<bool, Refusal> {
        let mut st = lock(&self.state);
        let now = self.clock.now();
        self.follow_election(&mut st, now);
        st.ctrl.writable(now)?;
        let engaged = st.ctrl.brake_engaged();
        self.step(&mut st, Input::ReleaseBrake);
        Ok(engaged)
    }

    /// An operator asked for a planned switchover of `job`. Returns the standby to be
    /// promoted. Refused on a standby replica of the control plane.
    pub fn promote(&self, job: &str) -> Result<warden_core::TaskId, Refusal> {
        let mut st = lock(&self.state);
        let now = self.clock.now();
        self.follow_election(&mut st, now);
        let job = warden_core::JobName::new(job);
        let target = st.ctrl.check_promote(&job, now)?;
        self.step(&mut st, Input::Promote { job });
        Ok(target)
    }

    /// A snapshot of the endpoints registry.
    pub fn registry(&self) -> warden_core::endpoints::Registry {
        lock(&self.state).ctrl.registry().clone()
    }

    /// [`ControlPlane::run`] spawned on `rt`: returns the token that stops it and its task.
    pub fn run_on(
        self: &Arc<Self>,
        rt: &tokio::runtime::Handle,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let cancel = CancellationToken::new();
        let task = rt.spawn(self.clone().run(cancel.clone()));
        (cancel, task)
    }

    /// Run the control loop until `cancel` fires: ticks, the store writer, probe rounds and
    /// store reads. Call once.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let Some((writes, mut jobs)) = lock(&self.receivers).take() else {
            warn!("the control loop is already running");
            return;
        };
        let writer = tokio::spawn(writer::run(
            self.store.clone(),
            writes,
            self.jobs.clone(),
            cancel.clone(),
        ));
        let mut tick = tokio::time::interval(self.cfg.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => self.input(Input::Tick),
                () = self.wake.notified() => self.input(Input::Tick),
                Some(job) = jobs.recv() => match job {
                    Job::Input(input) => self.input(input),
                    Job::Probe(round) => {
                        tokio::spawn(self.clone().probe(round));
                    }
                    Job::Load(load) => {
                        tokio::spawn(self.clone().load(load));
                    }
                },
            }
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
        debug!("control loop stopped");
    }

    /// Read the store off the loop (with the store unreachable a read takes its whole
    /// timeout) and feed the result back.
    async fn load(self: Arc<Self>, load: Load) {
        let store = self.store.clone();
        let read = tokio::task::spawn_blocking(move || read_snapshot(store.as_ref())).await;
        let input = match read {
            Ok(Ok(snapshot)) => Input::Loaded { load, snapshot },
            Ok(Err(e)) => Input::LoadFailed {
                load,
                error: e.to_string(),
            },
            Err(e) => Input::LoadFailed {
                load,
                error: e.to_string(),
            },
        };
        self.input(input);
    }
}

#[cfg(test)]
mod tests;
