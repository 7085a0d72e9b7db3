//! The simulated world: an event queue on one simulated clock, the server (the real
//! controller and a thin executor like the runtime's), the store, the agents and the network.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::controller::{
    Command, Controller, Copies, CopyPhase, CopyReport, Election, Heartbeat, Hello, Input, Load,
    Notice, Order, ProbeRound, Refusal, SessionId, Snapshot, Welcome, Write, WriteId, WriteOutcome,
};
use crate::hash::FxHashMap;
use crate::lifecycle::{AgentState, ProbeKind, ProbeOutcome, ProbeReport};
use crate::planner::{SlotState, TaskView};
use crate::rng::Rng;
use crate::time::Time;
use crate::types::{AgentId, FencingToken, JobKind, JobName, JobSpec, Resources, TaskId};

use super::net::{Dir, Fate, Network};
use super::{FaultKind, Report, Schedule, SimConfig, Violation};

/// A message on a link, for one connection.
#[derive(Clone, Debug)]
enum Msg {
    Hello(Hello),
    Beat(Heartbeat),
    Report(CopyReport),
    /// The connection's end (FIN or RST) as the other side sees it.
    Close,
    Welcome(Welcome),
    Refused(Refusal),
    Order(Order),
}

#[derive(Clone, Debug)]
enum Ev {
    Tick {
        server: u64,
    },
    Beat {
        host: usize,
        inc: u64,
        chain: u64,
    },
    Connect {
        host: usize,
        inc: u64,
    },
    Arrive {
        host: usize,
        dir: Dir,
        seq: u64,
    },
    StoreDone {
        server: u64,
    },
    Loaded {
        server: u64,
        load: Load,
    },
    Probed {
        server: u64,
        agent: AgentId,
        report: ProbeReport,
    },
    Fence {
        host: usize,
        inc: u64,
        until: Time,
    },
    FaultStart(usize),
    FaultEnd(usize),
    Settle,
    End,
}

/// A task copy on a host.
#[derive(Clone, Debug)]
struct Copy {
    epoch: FencingToken,
    singleton: bool,
}

/// One connection of an agent process.
#[derive(Clone, Debug)]
struct Conn {
    id: u64,
    established: bool,
    opened: Time,
    last_ack: Time,
    /// The server accepts heartbeats that say their copies are unchanged.
    accepts_unchanged: bool,
    /// The copies the last heartbeat on this connection that listed them listed, and its
    /// number.
    listed: Option<(u64, Vec<CopyReport>)>,
}

/// A running agent process.
#[derive(Clone, Debug)]
struct Proc {
    inc: u64,
    generation: u64,
    conn: Option<Conn>,
    last_seq: u64,
    /// Heartbeat send times on the agent's clock.
    sent: BTreeMap<u64, Time>,
    /// Lease end on the agent's clock.
    lease_until: Option<Time>,
    paused: bool,
    chain: u64,
    /// What arrived while paused: (connection, message).
    inbox: Vec<(u64, Msg)>,
    /// Reports held while paused.
    outbox: Vec<CopyReport>,
    /// The supervisor's memory: newest epoch per task, and whether that epoch ended.
    epochs: BTreeMap<TaskId, (FencingToken, bool)>,
    copies: BTreeMap<TaskId, Copy>,
    interval: Duration,
    deadline: Duration,
}

struct Host {
    name: Arc<str>,
    /// The agent's clock rate against true time.
    rate: f64,
    proc: Option<Proc>,
    next_inc: u64,
}

/// The server's runtime state: the controller and the routes of its sessions.
struct Server {
    inc: u64,
    ctrl: Controller,
    /// Agent name → (generation, connection) of its current session.
    routes: FxHashMap<Arc<str>, (AgentId, u64)>,
    /// Open connections → (host, generation).
    open: FxHashMap<u64, (usize, AgentId)>,
}

#[derive(Default)]
struct Store {
    jobs: Vec<JobSpec>,
    slots: BTreeMap<TaskId, TaskView>,
    releases: BTreeMap<JobName, crate::release::JobReleases>,
    generations: FxHashMap<Arc<str>, u64>,
    /// The ordered writer: writes not yet applied, with their server incarnation.
    queue: VecDeque<(u64, Write)>,
    last_done: Time,
}

impl Store {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            jobs: self.jobs.clone(),
            slots: self
                .slots
                .iter()
                .map(|(t, v)| (t.clone(), v.clone()))
                .collect(),
            releases: self.releases.values().cloned().collect(),
        }
    }

    /// Apply a write; the outcome of an epoch-checked slot write.
    fn apply(&mut self, w: Write) -> Option<(WriteId, WriteOutcome)> {
        match w {
            Write::Slot {
                id,
                expected,
                task,
                record,
            } => {
                let current = self.slots.get(&task).cloned();
                let stored = current.as_ref().map_or(FencingToken::NONE, |v| v.epoch);
                if stored != expected {
                    return Some((
                        id,
                        WriteOutcome::Conflict {
                            current,
                            stored_epoch: stored,
                        },
                    ));
                }
                let mut record = record;
                record.last_failure_at = None;
                self.slots.insert(task, record);
                Some((id, WriteOutcome::Applied))
            }
            Write::SlotState {
                task,
                epoch,
                state,
                failures,
            } => {
                if let Some(v) = self.slots.get_mut(&task)
                    && v.epoch == epoch
                {
                    v.state = state;
                    v.failures = failures;
                }
                None
            }
            Write::Recovery(_) => None,
            Write::Release { id, spec, releases } => {
                if let Some(spec) = spec {
                    self.jobs.retain(|j| j.name != spec.name);
                    self.jobs.push(*spec);
                }
                self.releases.insert(releases.job.clone(), *releases);
                Some((id, WriteOutcome::Applied))
            }
        }
    }
}

pub(super) struct World<'a> {
    cfg: &'a SimConfig,
    schedule: &'a Schedule,
    rng: Rng,
    now: Time,
    queue: BTreeMap<(Time, u64), Ev>,
    next_ev: u64,
    net: Network,
    msgs: FxHashMap<u64, (u64, Msg)>,
    next_msg: u64,
    next_conn: u64,
    hosts: Vec<Host>,
    server: Option<Server>,
    next_server: u64,
    store: Store,
    singletons: FxHashMap<JobName, bool>,
    /// Live copies per task, over every process: (host, incarnation, epoch).
    live: FxHashMap<TaskId, Vec<(usize, u64, FencingToken)>>,
    report: Report,
    /// The newest epoch each slot has run at.
    started: FxHashMap<TaskId, FencingToken>,
    /// What happened, line by line, when asked for ([`super::run_traced`]).
    trace: Option<Vec<String>>,
}

const TCP_PORT: u16 = 7402;

fn probe_addr(host: usize) -> SocketAddr {
    let last = u8::try_from(host % 250).unwrap_or(0) + 1;
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), TCP_PORT)
}

fn jobs(cfg: &SimConfig) -> Vec<JobSpec> {
    let spec = |name: String, kind, replicas| JobSpec {
        data_epoch: 0,
        name: JobName::new(name),
        kind,
        replicas,
        command: "/bin/sleep".into(),
        args: vec!["1000".into()],
        env: BTreeMap::new(),
        resources: Resources::new(100, 64),
        health: None,
        service: None,
        state: None,
        update: None,
        config: vec![],
    };
    let mut jobs: Vec<JobSpec> = (0..cfg.singletons)
        .map(|i| spec(format!("single-{i}"), JobKind::Singleton, 1))
        .collect();
    if cfg.service_replicas > 0 {
        jobs.push(spec("web".into(), JobKind::Service, cfg.service_replicas));
    }
    jobs
}

impl<'a> World<'a> {
    pub(super) fn new(schedule: &'a Schedule, cfg: &'a SimConfig) -> Self {
        let mut rng = Rng::stream(schedule.seed, 1);
        let rho = cfg.controller.lifecycle.fencing.drift_bound;
        let hosts = (0..cfg.agents)
            .map(|i| Host {
                name: Arc::from(format!("agent-{i}")),
                // Any rate the fencing rule is written for: 1/(1+ρ) ..= 1+ρ.
                rate: rng.range_f64(1.0 / (1.0 + rho), 1.0 + rho),
                proc: None,
                next_inc: 1,
            })
            .collect();
        let store = Store {
            jobs: jobs(cfg),
            ..Store::default()
        };
        let singletons = store
            .jobs
            .iter()
            .map(|j| (j.name.clone(), j.kind == JobKind::Singleton))
            .collect();
        World {
            cfg,
            schedule,
            rng,
            now: Time::ZERO,
            queue: BTreeMap::new(),
            next_ev: 0,
            net: Network::new(
                cfg.agents,
                Duration::from_micros(300),
                Duration::from_millis(2),
            ),
            msgs: FxHashMap::default(),
            next_msg: 0,
            next_conn: 0,
            hosts,
            server: None,
            next_server: 0,
            store,
            singletons,
            live: FxHashMap::default(),
            report: Report {
                seed: schedule.seed,
                ..Report::default()
            },
            started: FxHashMap::default(),
            trace: None,
        }
    }

    pub(super) fn traced(mut self) -> Self {
        self.trace = Some(Vec::new());
        self
    }

    pub(super) fn take_trace(&mut self) -> Vec<String> {
        self.trace.take().unwrap_or_default()
    }

    fn note(&mut self, what: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            t.push(format!("{:>9.3}s {}", self.now.as_secs_f64(), what()));
        }
    }

    fn at(&mut self, t: Time, ev: Ev) {
        self.next_ev += 1;
        self.queue.insert((t.max(self.now), self.next_ev), ev);
    }

    fn after(&mut self, d: Duration, ev: Ev) {
        self.at(self.now + d, ev);
    }

    pub(super) fn run(mut self) -> Report {
        self.run_to_end();
        self.report
    }

    pub(super) fn run_to_end(&mut self) {
        self.start_server();
        for host in 0..self.hosts.len() {
            self.start_agent(host, Duration::from_millis(10 * host as u64 + 5));
        }
        for (i, f) in self.schedule.faults.iter().enumerate() {
            self.at(Time::ZERO + f.at, Ev::FaultStart(i));
            self.at(Time::ZERO + f.at + f.length, Ev::FaultEnd(i));
        }
        self.at(Time::ZERO + self.cfg.chaos, Ev::Settle);
        self.at(Time::ZERO + self.cfg.chaos + self.cfg.settle, Ev::End);
        while let Some(((t, _), ev)) = self.queue.pop_first() {
            self.now = t;
            self.report.events += 1;
            if matches!(ev, Ev::End) {
                break;
            }
            self.handle(ev);
        }
        if let Some(s) = self.server.as_ref() {
            let unfinished = s
                .ctrl
                .desired()
                .keys()
                .filter(|j| s.ctrl.rollout_view(j).is_some_and(|v| v.phase.is_active()))
                .count();
            self.report.rollouts_unfinished = u32::try_from(unfinished).unwrap_or(u32::MAX);
        }
        self.judge();
    }

    pub(super) fn report(&self) -> &Report {
        &self.report
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Tick { server } => {
                if self.server.as_ref().is_some_and(|s| s.inc == server) {
                    self.step(Input::Tick);
                    let tick = self.cfg.controller.tick;
                    self.after(tick, Ev::Tick { server });
                }
            }
            Ev::Beat { host, inc, chain } => self.beat(host, inc, chain),
            Ev::Connect { host, inc } => self.connect(host, inc),
            Ev::Arrive { host, dir, seq } => {
                if let Some((conn, msg)) = self.msgs.remove(&seq) {
                    if !matches!(msg, Msg::Beat(_) | Msg::Order(Order::Ack { .. })) {
                        self.note(|| format!("agent-{host} {dir:?} conn {conn}: {msg:?}"));
                    }
                    match dir {
                        Dir::Up => self.server_receive(host, conn, msg),
                        Dir::Down => self.agent_receive(host, conn, msg),
                    }
                }
            }
            Ev::StoreDone { server } => self.store_done(server),
            Ev::Loaded { server, load } => {
                if self.server.as_ref().is_some_and(|s| s.inc == server) {
                    let snapshot = self.store.snapshot();
                    self.step(Input::Loaded { load, snapshot });
                }
            }
            Ev::Probed {
                server,
                agent,
                report,
            } => {
                if self.server.as_ref().is_some_and(|s| s.inc == server) {
                    self.step(Input::Probes { agent, report });
                }
            }
            Ev::Fence { host, inc, until } => self.fence(host, inc, until),
            Ev::FaultStart(i) => {
                self.note(|| format!("fault starts: {:?}", self.schedule.faults[i]));
                self.fault(i, true);
            }
            Ev::FaultEnd(i) => {
                self.note(|| format!("fault ends: {:?}", self.schedule.faults[i]));
                self.fault(i, false);
            }
            Ev::Settle => {
                // Every fault has healed by now (the schedule ends them all before); make
                // sure of it for the links.
                for host in 0..self.hosts.len() {
                    self.heal(host);
                }
            }
            Ev::End => {}
        }
    }

    // ----- the server -----

    fn start_server(&mut self) {
        self.next_server += 1;
        let inc = self.next_server;
        let election = Election::Leader {
            term: 1,
            since_unix_ms: 0,
            valid_until: None,
        };
        let snapshot = self.store.snapshot();
        let (ctrl, cmds) = match Controller::new(
            self.cfg.controller.clone(),
            "sim",
            election,
            snapshot,
            self.now,
        ) {
            Ok(c) => c,
            Err(e) => {
                self.invariant(format!("controller refused its config: {e}"));
                return;
            }
        };
        self.server = Some(Server {
            inc,
            ctrl,
            routes: FxHashMap::default(),
            open: FxHashMap::default(),
        });
        self.execute(cmds);
        let tick = self.cfg.controller.tick;
        self.after(tick, Ev::Tick { server: inc });
    }

    fn stop_server(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        // Writes handed to the store before the crash may or may not have reached it: a
        // random prefix did.
        while let Some((inc, w)) = self.store.queue.pop_front() {
            if inc != server.inc || self.rng.bernoulli(0.5) {
                self.store.queue.clear();
                break;
            }
            self.store.apply(w);
        }
        // Its connections are reset by the kernel.
        for (conn, (host, _)) in server.open {
            self.send(host, Dir::Down, conn, Msg::Close);
        }
    }

    fn step(&mut self, input: Input) {
        let Some(s) = self.server.as_mut() else {
            return;
        };
        let cmds = s.ctrl.step(input, self.now);
        self.report.steps += 1;
        if let Err(e) = s.ctrl.check_invariants() {
            self.invariant(e);
        }
        self.execute(cmds);
    }

    fn invariant(&mut self, what: String) {
        if self.report.violations.len() < 16 {
            self.report.violations.push(Violation::Invariant {
                at_ms: self.now.as_nanos() / 1_000_000,
                what,
            });
        }
    }

    fn execute(&mut self, cmds: Vec<Command>) {
        for cmd in cmds {
            match &cmd {
                Command::Send {
                    order: Order::Ack { .. },
                    ..
                }
                | Command::AppendEvent(_)
                | Command::Notice(Notice::Reconciled { .. }) => {}
                _ => self.note(|| format!("server: {cmd:?}")),
            }
            let Some(s) = self.server.as_ref() else {
                return;
            };
            let inc = s.inc;
            match cmd {
                Command::Welcome {
                    session,
                    agent,
                    welcome,
                } => {
                    if let Some(&(host, _)) = s.open.get(&session.0)
                        && s.routes.get(&agent.name).is_some_and(|r| r.1 == session.0)
                    {
                        self.send(host, Dir::Down, session.0, Msg::Welcome(welcome));
                    }
                }
                Command::Refuse { .. } => {} // answered where the Hello is handled
                Command::Send { to, order } => {
                    if let Some((id, conn)) = s.routes.get(&to.name)
                        && *id == to
                        && let Some(&(host, _)) = s.open.get(conn)
                    {
                        let conn = *conn;
                        self.send(host, Dir::Down, conn, Msg::Order(order));
                    }
                }
                Command::Persist(w) => {
                    self.store.queue.push_back((inc, w));
                    let done = self.store.last_done.max(self.now)
                        + Duration::from_micros(self.rng.range_u64(500, 3_000));
                    self.store.last_done = done;
                    self.at(done, Ev::StoreDone { server: inc });
                }
                Command::AppendEvent(_) | Command::ServicesChanged { .. } => {}
                Command::Probe(round) => self.probe(inc, round),
                Command::Load(load) => {
                    self.after(Duration::from_millis(2), Ev::Loaded { server: inc, load });
                }
                Command::Notice(n) => match n {
                    Notice::Transition { transition, .. }
                        if transition.to == AgentState::Failed =>
                    {
                        self.report.declared_failed += 1;
                    }
                    Notice::Alarm(msg) if msg.contains("engaged") => self.report.brakes += 1,
                    _ => {}
                },
            }
        }
    }

    fn store_done(&mut self, server: u64) {
        let Some((inc, w)) = self.store.queue.pop_front() else {
            return;
        };
        if inc != server {
            // Left by a server that crashed; dropped with it.
            self.store.queue.push_front((inc, w));
            return;
        }
        if let Some((write, outcome)) = self.store.apply(w)
            && self.server.as_ref().is_some_and(|s| s.inc == inc)
        {
            self.step(Input::Persisted { write, outcome });
        }
    }

    /// Run a probe round the way the runtime does: direct TCP and HTTP from the server,
    /// HTTP through each helper.
    fn probe(&mut self, server: u64, round: ProbeRound) {
        let timeout = self.cfg.controller.probe_timeout;
        let host = self.hosts.iter().position(|h| h.name == round.agent.name);
        let (direct, indirect_one) = match (round.target, host) {
            (Some(_), Some(host)) => {
                let reach = self.net.reachable(host, timeout, &mut self.rng);
                let proc = self.hosts[host].proc.as_ref();
                let (tcp, http) = match (reach, proc) {
                    (false, _) => (ProbeOutcome::TimedOut, ProbeOutcome::TimedOut),
                    (true, None) => (ProbeOutcome::Refused, ProbeOutcome::Refused),
                    // The kernel completes the handshake for a stopped process.
                    (true, Some(p)) if p.paused => {
                        (ProbeOutcome::Connected, ProbeOutcome::TimedOut)
                    }
                    (true, Some(_)) => (ProbeOutcome::Connected, ProbeOutcome::Answered),
                };
                // Helpers reach the host over other paths; only a full cut isolates it.
                let indirect = match proc {
                    _ if self.net.is_cut(host) => ProbeOutcome::TimedOut,
                    None => ProbeOutcome::Refused,
                    Some(p) if p.paused => ProbeOutcome::TimedOut,
                    Some(_) => ProbeOutcome::Answered,
                };
                (
                    vec![(ProbeKind::Tcp, tcp), (ProbeKind::Http, http)],
                    indirect,
                )
            }
            _ => (vec![], ProbeOutcome::Skipped),
        };
        let indirect = round.helpers.iter().map(|_| indirect_one).collect();
        let slow = direct.iter().any(|(_, o)| *o == ProbeOutcome::TimedOut)
            || indirect_one == ProbeOutcome::TimedOut;
        let took = if slow {
            timeout
        } else {
            Duration::from_millis(3)
        };
        let report = ProbeReport {
            round: round.round,
            direct,
            indirect,
        };
        self.after(
            took,
            Ev::Probed {
                server,
                agent: round.agent,
                report,
            },
        );
    }

    fn server_receive(&mut self, host: usize, conn: u64, msg: Msg) {
        if self.server.is_none() {
            // Connection refused: nobody listens.
            if matches!(msg, Msg::Hello(_)) {
                self.send(host, Dir::Down, conn, Msg::Close);
            }
            return;
        }
        match msg {
            Msg::Hello(hello) => self.hello(host, conn, hello),
            Msg::Beat(beat) => {
                if let Some(agent) = self.agent_of(conn) {
                    self.step(Input::Heartbeat { agent, beat });
                }
            }
            Msg::Report(copy) => {
                if let Some(agent) = self.agent_of(conn) {
                    self.step(Input::TaskReport {
                        agent,
                        copy,
                        message: String::new(),
                    });
                }
            }
            Msg::Close => {
                let Some(s) = self.server.as_mut() else {
                    return;
                };
                if let Some((_, agent)) = s.open.remove(&conn) {
                    if s.routes.get(&agent.name).is_some_and(|r| r.1 == conn) {
                        s.routes.remove(&agent.name);
                    }
                    self.step(Input::SessionClosed {
                        agent,
                        session: SessionId(conn),
                    });
                }
            }
            Msg::Welcome(_) | Msg::Refused(_) | Msg::Order(_) => {}
        }
    }

    fn agent_of(&self, conn: u64) -> Option<AgentId> {
        self.server
            .as_ref()
            .and_then(|s| s.open.get(&conn))
            .map(|(_, a)| a.clone())
    }

    fn hello(&mut self, host: usize, conn: u64, hello: Hello) {
        let now = self.now;
        let Some(s) = self.server.as_mut() else {
            return;
        };
        if let Err(refusal) = s.ctrl.admission(&hello, now) {
            self.send(host, Dir::Down, conn, Msg::Refused(refusal));
            return;
        }
        let name: Arc<str> = Arc::from(hello.trimmed_name());
        let generation = if hello.generation == 0 {
            let g = self.store.generations.entry(name.clone()).or_insert(0);
            *g += 1;
            *g
        } else {
            hello.generation
        };
        let id = AgentId::new(name.clone(), generation);
        let before = s.routes.insert(name.clone(), (id.clone(), conn));
        s.open.insert(conn, (host, id.clone()));
        let cmds = s.ctrl.step(
            Input::SessionOpened {
                session: SessionId(conn),
                agent: id,
                hello,
            },
            now,
        );
        self.report.steps += 1;
        let refused = cmds.iter().find_map(|c| match c {
            Command::Refuse { session, refusal } if session.0 == conn => Some(refusal.clone()),
            _ => None,
        });
        if let Some(refusal) = refused {
            match before {
                Some(r) => s.routes.insert(name, r),
                None => s.routes.remove(&name),
            };
            s.open.remove(&conn);
            self.execute(cmds);
            self.send(host, Dir::Down, conn, Msg::Refused(refusal));
            return;
        }
        self.execute(cmds);
    }

    // ----- the network -----

    fn send(&mut self, host: usize, dir: Dir, conn: u64, msg: Msg) {
        self.next_msg += 1;
        let seq = self.next_msg;
        match self.net.send(host, dir, seq, self.now, &mut self.rng) {
            Fate::Lost => {}
            Fate::Held => {
                self.msgs.insert(seq, (conn, msg));
            }
            Fate::Arrives(at) => {
                self.msgs.insert(seq, (conn, msg));
                self.at(at, Ev::Arrive { host, dir, seq });
            }
        }
    }

    fn heal(&mut self, host: usize) {
        for (dir, seq, at) in self.net.heal(host, self.now, &mut self.rng) {
            self.at(at, Ev::Arrive { host, dir, seq });
        }
    }

    // ----- the agents -----

    /// The agent's clock reading at true time `t`.
    fn local(&self, host: usize, t: Time) -> Time {
        Time::from_nanos((t.as_nanos() as f64 * self.hosts[host].rate) as u64)
    }

    /// The true time at which the agent's clock reads `local` (rounded up: later is the
    /// harsher reading for the fencing rule).
    fn true_time(&self, host: usize, local: Time) -> Time {
        Time::from_nanos((local.as_nanos() as f64 / self.hosts[host].rate).ceil() as u64)
    }

    fn start_agent(&mut self, host: usize, after: Duration) {
        let h = &mut self.hosts[host];
        let inc = h.next_inc;
        h.next_inc += 1;
        h.proc = Some(Proc {
            inc,
            generation: 0,
            conn: None,
            last_seq: 0,
            sent: BTreeMap::new(),
            lease_until: None,
            paused: false,
            chain: 0,
            inbox: Vec::new(),
            outbox: Vec::new(),
            epochs: BTreeMap::new(),
            copies: BTreeMap::new(),
            interval: Duration::from_millis(500),
            deadline: Duration::from_secs(2),
        });
        self.after(after, Ev::Connect { host, inc });
        self.after(
            after,
            Ev::Beat {
                host,
                inc,
                chain: 0,
            },
        );
    }

    fn proc(&mut self, host: usize, inc: u64) -> Option<&mut Proc> {
        self.hosts[host].proc.as_mut().filter(|p| p.inc == inc)
    }

    fn connect(&mut self, host: usize, inc: u64) {
        let now = self.now;
        self.next_conn += 1;
        let id = self.next_conn;
        let name = self.hosts[host].name.to_string();
        let Some(p) = self.proc(host, inc) else {
            return;
        };
        if p.paused || p.conn.as_ref().is_some_and(|c| c.established) {
            return;
        }
        let old = p.conn.replace(Conn {
            id,
            established: false,
            opened: now,
            last_ack: now,
            accepts_unchanged: false,
            listed: None,
        });
        let running = p.copies.iter().map(|(t, c)| (t.clone(), c.epoch)).collect();
        let hello = Hello {
            restore_points: true,
            reload: false,
            config_files: true,
            name,
            generation: p.generation,
            probe_addr: probe_addr(host).to_string(),
            state_addr: String::new(),
            capacity: Resources::new(4000, 4096),
            running,
            reattach_window: Duration::ZERO,
        };
        if let Some(old) = old {
            self.send(host, Dir::Up, old.id, Msg::Close);
        }
        self.send(host, Dir::Up, id, Msg::Hello(hello));
    }

    /// Give up the current connection and try again after `after`.
    fn reconnect(&mut self, host: usize, inc: u64, after: Duration) {
        let Some(p) = self.proc(host, inc) else {
            return;
        };
        if let Some(old) = p.conn.take() {
            self.send(host, Dir::Up, old.id, Msg::Close);
        }
        self.after(after, Ev::Connect { host, inc });
    }

    fn beat(&mut self, host: usize, inc: u64, chain: u64) {
        let now = self.now;
        let local_now = self.local(host, now);
        let rate = self.hosts[host].rate;
        let Some(p) = self.proc(host, inc) else {
            return;
        };
        if p.paused || p.chain != chain {
            return;
        }
        let every = Duration::from_secs_f64(p.interval.as_secs_f64() / rate);
        let silent = p.conn.as_ref().map(|c| {
            let since = if c.established { c.last_ack } else { c.opened };
            now.saturating_since(since) > p.deadline
        });
        p.last_seq += 1;
        let seq = p.last_seq;
        p.sent.insert(seq, local_now);
        while p.sent.len() > 64 {
            p.sent.pop_first();
        }
        let copies: Vec<CopyReport> = p
            .copies
            .iter()
            .map(|(t, c)| CopyReport {
                version: 0,
                task: t.clone(),
                epoch: c.epoch,
                phase: Some(CopyPhase::Running),
                healthy: true,
                endpoint: String::new(),
                in_sync: Vec::new(),
                state_seq: 0,
                state_fence: 0,
                state_last_epoch: 0,
                lagging: Vec::new(),
                sealed: false,
            })
            .collect();
        // Like the real agent: the copies are listed when they changed since the last list on
        // this connection, at least every ten heartbeats, and always to a server that takes
        // nothing else; else "as of" that list.
        let copies = match p.conn.as_mut().filter(|c| c.established) {
            Some(c) => match &c.listed {
                Some((at, list)) if c.accepts_unchanged && *list == copies && seq - at < 10 => {
                    Copies::Unchanged { since: *at }
                }
                _ => {
                    c.listed = Some((seq, copies.clone()));
                    Copies::Listed(copies)
                }
            },
            None => Copies::Listed(copies),
        };
        let conn = p.conn.as_ref().filter(|c| c.established).map(|c| c.id);
        let idle = p.conn.is_none();
        self.after(every, Ev::Beat { host, inc, chain });
        if silent == Some(true) {
            // No ack within the session deadline (a silent partition gives no error).
            self.reconnect(host, inc, Duration::from_millis(50));
            return;
        }
        if let Some(conn) = conn {
            self.send(
                host,
                Dir::Up,
                conn,
                Msg::Beat(Heartbeat {
                    seq,
                    signals: None,
                    judged: None,
                    copies,
                }),
            );
        } else if idle {
            self.after(Duration::ZERO, Ev::Connect { host, inc });
        }
    }

    fn agent_receive(&mut self, host: usize, conn: u64, msg: Msg) {
        let Some(p) = self.hosts[host].proc.as_mut() else {
            return;
        };
        if p.paused {
            p.inbox.push((conn, msg));
            return;
        }
        let inc = p.inc;
        if p.conn.as_ref().is_none_or(|c| c.id != conn) {
            return; // a connection given up
        }
        let now = self.now;
        match msg {
            Msg::Welcome(w) => {
                if p.generation == 0 {
                    p.generation = w.generation;
                }
                p.interval = w.heartbeat_interval;
                p.deadline = w.session_deadline.max(w.heartbeat_interval * 2);
                if let Some(c) = p.conn.as_mut() {
                    c.established = true;
                    c.last_ack = now;
                    c.accepts_unchanged = w.accepts_unchanged;
                }
            }
            Msg::Refused(Refusal::Stale(_)) => self.rejoin(host, inc),
            Msg::Refused(_) => {
                let wait = Duration::from_millis(self.rng.range_u64(100, 400));
                self.reconnect(host, inc, wait);
            }
            Msg::Close => {
                let wait = Duration::from_millis(self.rng.range_u64(50, 200));
                if let Some(p) = self.proc(host, inc) {
                    p.conn = None;
                }
                self.after(wait, Ev::Connect { host, inc });
            }
            Msg::Order(order) => self.obey(host, inc, order),
            Msg::Hello(_) | Msg::Beat(_) | Msg::Report(_) => {}
        }
    }

    fn obey(&mut self, host: usize, inc: u64, order: Order) {
        let now = self.now;
        let local_now = self.local(host, now);
        let ignore_lease = self.cfg.agents_ignore_lease;
        let Some(p) = self.proc(host, inc) else {
            return;
        };
        match order {
            Order::Ack { seq, lease_ttl } => {
                if let Some(c) = p.conn.as_mut() {
                    c.last_ack = now;
                }
                if lease_ttl.is_zero() {
                    return;
                }
                let Some(&sent) = p.sent.get(&seq) else {
                    return;
                };
                p.sent.retain(|s, _| *s > seq);
                let until = sent + lease_ttl;
                if let Some(old) = p.lease_until
                    && old <= local_now
                {
                    // The lease ran out before this renewal came: the shims' deadlines passed
                    // and their singletons are dead (or dying) whatever the renewal says.
                    self.fence(host, inc, old);
                }
                let Some(p) = self.proc(host, inc) else {
                    return;
                };
                if p.lease_until.is_none_or(|u| until > u) {
                    p.lease_until = Some(until);
                    let deadline = self.true_time(host, until);
                    let grace = self.cfg.controller.lifecycle.fencing.kill_grace;
                    let kill = Duration::from_nanos(self.rng.below(grace.as_nanos() as u64 + 1));
                    self.at(deadline + kill, Ev::Fence { host, inc, until });
                }
            }
            Order::Assign(a) => {
                // The real supervisor's order of checks: a resend of what runs is fine; a
                // singleton without a live lease is refused, and that epoch is over here; an
                // older epoch, or one that already ended, is refused.
                if p.copies.get(&a.task).is_some_and(|c| c.epoch == a.epoch) {
                    return;
                }
                let live_lease = p.lease_until.is_some_and(|u| u > local_now) || ignore_lease;
                if a.singleton && !live_lease {
                    let newer = p.epochs.get(&a.task).is_none_or(|(e, _)| *e < a.epoch);
                    if newer && !p.copies.contains_key(&a.task) {
                        p.epochs.insert(a.task.clone(), (a.epoch, true));
                    }
                    self.report_copy(host, inc, &a.task, a.epoch, CopyPhase::Fenced);
                    return;
                }
                if p.epochs.get(&a.task).is_some_and(|(e, _)| a.epoch <= *e) {
                    self.report_copy(host, inc, &a.task, a.epoch, CopyPhase::Failed);
                    return;
                }
                if p.copies.get(&a.task).is_some_and(|c| c.epoch == a.epoch) {
                    return;
                }
                // A newer epoch replaces the running copy.
                if let Some(old) = p.copies.get(&a.task).map(|c| c.epoch) {
                    self.end_copy(host, inc, &a.task, old);
                }
                self.start_copy(host, inc, &a.task, a.epoch, a.singleton);
                self.report_copy(host, inc, &a.task, a.epoch, CopyPhase::Running);
            }
            Order::Stop { task, epoch, .. } => {
                if p.copies.get(&task).is_some_and(|c| c.epoch == epoch) {
                    self.end_copy(host, inc, &task, epoch);
                    self.report_copy(host, inc, &task, epoch, CopyPhase::Stopped);
                }
            }
            // The simulation runs no replicated state.
            // The simulated agents run no configuration files: they never get a reload.
            Order::Replica { .. } | Order::Reload(_) => {}
            Order::Rejoin { .. } => self.rejoin(host, inc),
        }
    }

    /// The generation is over: stop its work, forget it, join as a new one.
    fn rejoin(&mut self, host: usize, inc: u64) {
        let Some(p) = self.proc(host, inc) else {
            return;
        };
        let copies: Vec<(TaskId, FencingToken)> =
            p.copies.iter().map(|(t, c)| (t.clone(), c.epoch)).collect();
        p.generation = 0;
        p.sent.clear();
        p.lease_until = None;
        for (task, epoch) in copies {
            self.end_copy(host, inc, &task, epoch);
        }
        self.reconnect(host, inc, Duration::from_millis(10));
    }

    fn report_copy(
        &mut self,
        host: usize,
        inc: u64,
        task: &TaskId,
        epoch: FencingToken,
        phase: CopyPhase,
    ) {
        let Some(p) = self.proc(host, inc) else {
            return;
        };
        let copy = CopyReport {
            version: 0,
            task: task.clone(),
            epoch,
            phase: Some(phase),
            healthy: phase == CopyPhase::Running,
            endpoint: String::new(),
            in_sync: Vec::new(),
            state_seq: 0,
            state_fence: 0,
            state_last_epoch: 0,
            lagging: Vec::new(),
            sealed: false,
        };
        if p.paused {
            p.outbox.push(copy);
            return;
        }
        if let Some(conn) = p.conn.as_ref().filter(|c| c.established).map(|c| c.id) {
            self.send(host, Dir::Up, conn, Msg::Report(copy));
        }
    }

    /// A shim's deadline passed: if the lease was not renewed before it, every singleton
    /// copy dies (whether the agent runs or is paused).
    fn fence(&mut self, host: usize, inc: u64, until: Time) {
        if self.cfg.agents_ignore_lease {
            return;
        }
        let Some(p) = self.proc(host, inc) else {
            return;
        };
        // Renewed in time: this deadline was moved on.
        if p.lease_until != Some(until) {
            return;
        }
        let fenced: Vec<(TaskId, FencingToken)> = p
            .copies
            .iter()
            .filter(|(_, c)| c.singleton)
            .map(|(t, c)| (t.clone(), c.epoch))
            .collect();
        for (task, epoch) in fenced {
            self.report.fenced += 1;
            self.end_copy(host, inc, &task, epoch);
            self.report_copy(host, inc, &task, epoch, CopyPhase::Fenced);
        }
    }

    fn start_copy(
        &mut self,
        host: usize,
        inc: u64,
        task: &TaskId,
        epoch: FencingToken,
        singleton: bool,
    ) {
        self.note(|| format!("agent-{host} (process {inc}) starts {task}@{}", epoch.0));
        let Some(p) = self.proc(host, inc) else {
            return;
        };
        p.copies.insert(task.clone(), Copy { epoch, singleton });
        p.epochs.insert(task.clone(), (epoch, false));
        let prev = self.started.insert(task.clone(), epoch);
        if prev.is_some_and(|e| e < epoch) {
            self.report.replacements += 1;
        }
        let live = self.live.entry(task.clone()).or_default();
        live.push((host, inc, epoch));
        let singleton = self.singletons.get(&task.job).copied().unwrap_or(true);
        if singleton && live.len() > 1 {
            let copies = live
                .iter()
                .map(|(h, i, e)| format!("agent-{h} (process {i})@{}", e.0))
                .collect();
            self.report.violations.push(Violation::TwoLive {
                task: task.clone(),
                at_ms: self.now.as_nanos() / 1_000_000,
                copies,
            });
        }
    }

    fn end_copy(&mut self, host: usize, inc: u64, task: &TaskId, epoch: FencingToken) {
        self.note(|| format!("agent-{host} (process {inc}) ends {task}@{}", epoch.0));
        let Some(p) = self.proc(host, inc) else {
            return;
        };
        if p.copies.get(task).is_some_and(|c| c.epoch == epoch) {
            p.copies.remove(task);
            if let Some(e) = p.epochs.get_mut(task)
                && e.0 == epoch
            {
                e.1 = true;
            }
        }
        if let Some(live) = self.live.get_mut(task) {
            live.retain(|(h, i, e)| !(*h == host && *i == inc && *e == epoch));
        }
    }

    // ----- faults -----

    fn fault(&mut self, i: usize, start: bool) {
        let f = self.schedule.faults[i].clone();
        let host = f.host.min(self.hosts.len().saturating_sub(1));
        match (f.kind, start) {
            (FaultKind::Kill, true) => self.kill(host),
            (FaultKind::Kill, false) => self.start_agent(host, Duration::ZERO),
            (FaultKind::Pause, true) => {
                if let Some(p) = self.hosts[host].proc.as_mut() {
                    p.paused = true;
                }
            }
            (FaultKind::Pause, false) => self.resume(host),
            (FaultKind::Cut, true) => self.net.cut(host, true, true),
            (FaultKind::CutDown, true) => self.net.cut(host, true, false),
            (FaultKind::CutUp, true) => self.net.cut(host, false, true),
            (FaultKind::Delay(d), true) => self.net.delay(host, d),
            (FaultKind::Drop(p), true) => self.net.drop_share(host, p),
            (
                FaultKind::Cut
                | FaultKind::CutDown
                | FaultKind::CutUp
                | FaultKind::Delay(_)
                | FaultKind::Drop(_),
                false,
            ) => self.heal(host),
            (FaultKind::ServerRestart, true) => self.stop_server(),
            (FaultKind::ServerRestart, false) => self.start_server(),
            (FaultKind::Update, true) => self.update_jobs(),
            (FaultKind::Update, false) => {}
        }
    }

    /// An operator submits a new version of every job, rolled out two copies at a time.
    fn update_jobs(&mut self) {
        let Some(s) = self.server.as_ref() else {
            return; // the server is down: the operator's request fails
        };
        let specs: Vec<JobSpec> = s.ctrl.desired().values().cloned().collect();
        for mut spec in specs {
            spec.args.push(format!("v{}", self.now.as_nanos()));
            spec.update = Some(crate::release::UpdateSpec {
                max_parallel: 2,
                min_healthy_time: Duration::from_millis(500),
                ..crate::release::UpdateSpec::default()
            });
            let accepted = self
                .server
                .as_ref()
                .is_some_and(|s| s.ctrl.check_submit(&spec, self.now).is_ok());
            if accepted {
                self.report.updates += 1;
                self.step(Input::Submit {
                    spec: Box::new(spec),
                    unix_ms: 0,
                    cause: "sim".into(),
                    revert: false,
                });
            }
        }
    }

    fn kill(&mut self, host: usize) {
        let Some(p) = self.hosts[host].proc.as_ref() else {
            return;
        };
        let inc = p.inc;
        let conn = p.conn.as_ref().map(|c| c.id);
        let copies: Vec<(TaskId, FencingToken)> =
            p.copies.iter().map(|(t, c)| (t.clone(), c.epoch)).collect();
        // The shims see their pipes close and kill their tasks.
        for (task, epoch) in copies {
            self.end_copy(host, inc, &task, epoch);
        }
        self.hosts[host].proc = None;
        // The kernel resets the connection.
        if let Some(conn) = conn {
            self.send(host, Dir::Up, conn, Msg::Close);
        }
    }

    fn resume(&mut self, host: usize) {
        let Some(p) = self.hosts[host].proc.as_mut() else {
            return;
        };
        p.paused = false;
        p.chain += 1;
        let (inc, chain) = (p.inc, p.chain);
        let inbox = std::mem::take(&mut p.inbox);
        let outbox = std::mem::take(&mut p.outbox);
        for (conn, msg) in inbox {
            self.agent_receive(host, conn, msg);
        }
        if let Some(p) = self.proc(host, inc)
            && let Some(conn) = p.conn.as_ref().filter(|c| c.established).map(|c| c.id)
        {
            for copy in outbox {
                self.send(host, Dir::Up, conn, Msg::Report(copy));
            }
        }
        self.after(Duration::ZERO, Ev::Beat { host, inc, chain });
    }

    // ----- the verdict -----

    fn judge(&mut self) {
        let jobs = self.store.jobs.clone();
        for job in &jobs {
            for task in job.task_ids() {
                let record = self.store.slots.get(&task);
                let live = self.live.get(&task).cloned().unwrap_or_default();
                let ok = match (record, live.as_slice()) {
                    (Some(r), [(host, _, epoch)]) => {
                        let gen_ok = self.hosts[*host].proc.as_ref().is_some_and(|p| {
                            r.agent.as_ref().is_some_and(|a| {
                                a.name == self.hosts[*host].name && a.generation == p.generation
                            })
                        });
                        *epoch == r.epoch && gen_ok && r.state == SlotState::Running
                    }
                    _ => false,
                };
                if !ok {
                    let found = format!(
                        "store {:?}, live copies {:?}",
                        record.map(|r| (
                            r.epoch.0,
                            r.agent.as_ref().map(ToString::to_string),
                            r.state
                        )),
                        live.iter()
                            .map(|(h, i, e)| format!("agent-{h} (process {i})@{}", e.0))
                            .collect::<Vec<_>>()
                    );
                    self.report.violations.push(Violation::LostWork {
                        task: task.clone(),
                        found,
                    });
                }
            }
        }
        let mut orphans = Vec::new();
        for (task, live) in &self.live {
            let current = self.store.slots.get(task).map(|r| r.epoch);
            for (h, i, e) in live {
                if current != Some(*e) {
                    orphans.push(Violation::Orphan {
                        task: task.clone(),
                        copy: format!("agent-{h} (process {i})@{}", e.0),
                    });
                }
            }
        }
        orphans.sort_by_key(|v| format!("{v}"));
        self.report.violations.extend(orphans);
    }
}
