//! Runs a [`Scenario`] on a real local cluster and records what happened (a [`Record`]).
//!
//! The runner owns the run's phases: start a server and the scenario's agents — each agent's
//! session goes through its own [`Proxy`], so it can be partitioned — submit the workload and
//! wait until every slot runs, then carry out the fault schedule while two recorder threads
//! watch: one samples the task processes in `/proc` every [`SAMPLE_EVERY`] (task, token, PID,
//! and the agent whose shim runs it), the other polls the server's `/v1/events` for what it
//! says about agents. The runner itself logs the ground truth: when each agent was killed,
//! paused or cut off, and when that ended.
//!
//! Everything is stopped on every path out, errors and panics included: the recorder threads
//! by their guard's `Drop`, the processes by the [`Cluster`]'s, the proxies by theirs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use serde_json::Value;
use warden_core::rng::Rng;

use crate::client::Client;
use crate::cluster::{Cluster, is_alive, parent_pid, scan_task_procs, wait_until};
use crate::proxy::Proxy;
use crate::record::{
    AgentEvent, FaultRecord, ProcSample, Record, SERVER, Sample, Spawn, TruthInterval, TruthState,
};
use crate::scenario::{FaultKind, Scenario, Target};

/// How often the process sampler reads `/proc`.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// How often the event poller asks the server (event times come from the server's stamps,
/// so this only bounds how stale the poller's view is).
pub const POLL_EVERY: Duration = Duration::from_millis(100);

/// The server configuration of a chaos run. Every agent runs on this one machine, so the
/// host-wide signals (CPU utilisation and CPU pressure) are the same for all of them and say
/// nothing about any one; on a busy machine they would turn every agent Degraded at once and
/// block rescheduling. They are switched off (weight 0); everything else is the default.
pub const SERVER_CONFIG: &str = "\
[control.lifecycle.health.cpu]
good = 0.85
bad = 0.98
weight = 0.0

[control.lifecycle.health.pressure]
good = 10.0
bad = 60.0
weight = 0.0
";

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The `warden` executable for the server, agents and workload.
    pub exe: PathBuf,
    /// Seed of random choices (random targets).
    pub seed: u64,
    /// Copy the processes' logs here at the end, if set.
    pub logs_to: Option<PathBuf>,
    /// Set (e.g. by a signal handler) to stop the run early; everything is still cleaned up.
    pub cancel: Arc<AtomicBool>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

/// Agent PIDs → names, shared with the sampler.
type PidMap = Arc<Mutex<BTreeMap<i32, String>>>;

/// The recorder threads; stopped and joined when dropped.
struct Recorder {
    stop: Arc<AtomicBool>,
    procs: Option<JoinHandle<Vec<Sample>>>,
    events: Option<JoinHandle<Vec<AgentEvent>>>,
}

impl Recorder {
    fn start(marker: String, client: Client, pids: PidMap, t0: Instant, t0_unix: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let procs = std::thread::spawn(move || sample_procs(&marker, &pids, t0, &s));
        let s = stop.clone();
        let events = std::thread::spawn(move || poll_events(&client, t0_unix, &s));
        Recorder {
            stop,
            procs: Some(procs),
            events: Some(events),
        }
    }

    fn finish(mut self) -> (Vec<Sample>, Vec<AgentEvent>) {
        self.stop.store(true, Ordering::SeqCst);
        let samples = self
            .procs
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let events = self
            .events
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (samples, events)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.procs.take() {
            let _ = h.join();
        }
        if let Some(h) = self.events.take() {
            let _ = h.join();
        }
    }
}

fn sample_procs(marker: &str, pids: &PidMap, t0: Instant, stop: &AtomicBool) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        let procs = scan_task_procs(marker);
        let map = pids.lock().map(|m| m.clone()).unwrap_or_default();
        let procs = procs
            .into_iter()
            .map(|p| {
                // task → its shim → the agent that started the shim.
                let agent = parent_pid(p.pid)
                    .and_then(parent_pid)
                    .and_then(|a| map.get(&a).cloned());
                ProcSample {
                    task: p.task,
                    token: p.token,
                    pid: p.pid,
                    agent,
                }
            })
            .collect();
        // Agent processes alive (a zombie — killed, not reaped yet — is not).
        let agent_pids = map.keys().copied().filter(|p| is_alive(*p)).collect();
        out.push(Sample {
            t_ms: millis(now.duration_since(t0)),
            procs,
            agent_pids,
        });
        next += SAMPLE_EVERY;
        if next < Instant::now() {
            next = Instant::now();
        }
        sleep_until(next);
    }
    out
}

fn poll_events(client: &Client, t0_unix: u64, stop: &AtomicBool) -> Vec<AgentEvent> {
    let mut out = Vec::new();
    let mut seq = 0u64;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        // Page through everything new (the server answers at most 10,000 at a time).
        loop {
            let Ok(Value::Array(events)) =
                client.get(&format!("/v1/events?since={seq}&limit=10000"))
            else {
                break;
            };
            let n = events.len();
            for e in events {
                let Some(s) = e.get("seq").and_then(Value::as_u64) else {
                    continue;
                };
                seq = seq.max(s);
                if let Some(ev) = agent_event(&e, s, t0_unix) {
                    out.push(ev);
                }
            }
            if n < 10_000 {
                break;
            }
        }
        if stopping {
            return out;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// An event of the server's API about an agent (`agent` is `name#generation`).
fn agent_event(e: &Value, seq: u64, t0_unix: u64) -> Option<AgentEvent> {
    let agent = e.get("agent")?.as_str()?;
    let (name, generation) = agent.rsplit_once('#')?;
    let str_at = |p: &str| e.pointer(p).and_then(Value::as_str).map(str::to_string);
    Some(AgentEvent {
        seq,
        t_ms: e
            .get("unix_ms")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .saturating_sub(t0_unix),
        kind: str_at("/kind").unwrap_or_default(),
        agent: name.to_string(),
        generation: generation.parse().ok()?,
        from: str_at("/data/from"),
        to: str_at("/data/to"),
        message: str_at("/message").unwrap_or_default(),
    })
}

/// The fault schedule's state while it runs.
struct Run<'a> {
    scenario: &'a Scenario,
    seed: u64,
    cancel: Arc<AtomicBool>,
    /// Declared before the proxies, so dropped before them: agents shut down while their
    /// proxies still forward.
    cluster: Cluster,
    proxies: BTreeMap<String, Proxy>,
    pids: PidMap,
    t0: Instant,
    record: Record,
    /// Agents under a fault now (no second fault is put on them).
    busy: BTreeSet<String>,
    /// Fault index → (its record's position, its truth interval's position).
    active: BTreeMap<usize, (usize, Option<usize>)>,
}

/// Run `scenario`. `progress` is told about every phase and fault as it happens.
pub fn run(
    scenario: &Scenario,
    opts: &RunOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Record> {
    scenario.validate()?;
    let t0 = Instant::now();
    let t0_unix = unix_ms();
    let cfg_dir = tempfile::Builder::new().prefix("warden-chaos-").tempdir()?;
    let cfg = cfg_dir.path().join("server.toml");
    std::fs::write(&cfg, SERVER_CONFIG)?;
    let cfg = cfg.display().to_string();
    progress(&format!(
        "starting a server and {} agents (each session through its own proxy)",
        scenario.agents
    ));
    let mut proxies = BTreeMap::new();
    let cluster = Cluster::start_with_env(&opts.exe, &[("WARDEN_CONFIG", cfg.as_str())])?;
    for name in scenario.agent_names() {
        proxies.insert(name, Proxy::start(cluster.grpc_addr)?);
    }
    let mut run = Run {
        scenario,
        seed: opts.seed,
        cancel: opts.cancel.clone(),
        cluster,
        proxies,
        pids: Arc::new(Mutex::new(BTreeMap::new())),
        t0,
        record: Record {
            scenario: Some(scenario.clone()),
            seed: opts.seed,
            agents: scenario.agent_names(),
            singletons: scenario.singleton_slots(),
            slots: scenario.all_slots(),
            rto_bound_ms: millis(scenario.rto_bound),
            verdict_tolerance_ms: millis(scenario.verdict_tolerance),
            ..Record::default()
        },
        busy: BTreeSet::new(),
        active: BTreeMap::new(),
    };
    let recorder = Recorder::start(
        run.cluster.marker().to_string(),
        run.cluster.client.clone(),
        run.pids.clone(),
        t0,
        t0_unix,
    );
    let result = run.execute(progress);
    let (samples, events) = recorder.finish();
    run.record.end_ms = run.now_ms();
    run.record.samples = samples;
    run.record.events = events;
    run.record.reconcile_deaths();
    for note in &run.record.anomalies {
        progress(&format!("WARNING: {note}"));
    }
    if let Some(dir) = &opts.logs_to {
        copy_logs(&run.cluster.dir().join("logs"), dir);
    }
    if let Err(e) = result {
        if run.cancel.load(Ordering::SeqCst) {
            return Err(e);
        }
        bail!("{e:#}\nserver log (tail):\n{}", run.cluster.log("server"));
    }
    Ok(run.record)
}

fn copy_logs(from: &Path, to: &Path) {
    if std::fs::create_dir_all(to).is_err() {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(from) {
        for e in entries.flatten() {
            let _ = std::fs::copy(e.path(), to.join(e.file_name()));
        }
    }
}

/// One step of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Undo a fault (ordered first when a fault ends as another starts).
    End,
    /// Inject a fault.
    Start,
}

impl Run<'_> {
    fn now_ms(&self) -> u64 {
        millis(self.t0.elapsed())
    }

    /// Sleep until `deadline`, unless the run is cancelled first.
    fn wait(&self, deadline: Instant) -> Result<()> {
        loop {
            if self.cancel.load(Ordering::SeqCst) {
                bail!("interrupted");
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
        }
    }

    fn spawned(&mut self, name: &str) {
        if let Some(pid) = self.cluster.agent_pid(name) {
            if let Ok(mut m) = self.pids.lock() {
                m.insert(pid, name.to_string());
            }
            self.record.spawns.push(Spawn {
                agent: name.to_string(),
                pid,
                t_ms: self.now_ms(),
            });
        }
    }

    fn execute(&mut self, progress: &mut dyn FnMut(&str)) -> Result<()> {
        let names = self.scenario.agent_names();
        for name in &names {
            let addr = self
                .proxies
                .get(name)
                .map(Proxy::addr)
                .context("no proxy")?;
            self.cluster.add_agent_via(name, addr)?;
            self.spawned(name);
        }
        if !wait_until(Duration::from_secs(30), || {
            names
                .iter()
                .all(|n| self.cluster.agent_state(n).as_deref() == Some("healthy"))
        }) {
            bail!(
                "agents did not all turn healthy: {:?}",
                self.cluster.client.get("/v1/agents").ok()
            );
        }
        progress("submitting the workload");
        for w in &self.scenario.workloads {
            self.cluster
                .submit(&w.job_toml())
                .with_context(|| format!("submit workload {}", w.name))?;
        }
        let slots = self.scenario.all_slots();
        if !wait_until(Duration::from_secs(60), || {
            let procs = self.cluster.task_procs();
            slots
                .iter()
                .all(|s| procs.iter().filter(|p| &p.task == s).count() == 1)
        }) {
            bail!(
                "the workload did not start (every slot once): {:?}",
                self.cluster.client.get("/v1/tasks").ok()
            );
        }
        let start = Instant::now();
        self.record.schedule_start_ms = self.now_ms();
        progress(&format!(
            "workload running ({} slots); fault schedule of {:?} starts",
            slots.len(),
            self.scenario.duration
        ));

        let mut steps: Vec<(Duration, Phase, usize)> = Vec::new();
        for (i, f) in self.scenario.faults.iter().enumerate() {
            steps.push((f.at, Phase::Start, i));
            if let Some(d) = f.duration {
                steps.push((f.at + d, Phase::End, i));
            }
        }
        steps.sort();
        for (offset, phase, i) in steps {
            self.wait(start + offset)?;
            let line = match phase {
                Phase::Start => self.inject(i)?,
                Phase::End => self.undo(i)?,
            };
            if let Some(line) = line {
                progress(&format!("[{:>6.1}s] {line}", offset.as_secs_f64()));
            }
        }
        self.record.faults_end_ms = self.now_ms();
        progress(&format!(
            "faults done; settling until {:?}",
            self.scenario.duration
        ));
        self.wait(start + self.scenario.duration)
    }

    /// The agent running a singleton now (ground truth from `/proc`).
    fn singleton_holder(&self) -> Option<String> {
        let singletons = self.scenario.singleton_slots();
        let agents = self.cluster.agent_pids();
        let procs = self.cluster.task_procs();
        singletons.iter().find_map(|s| {
            let p = procs.iter().find(|p| &p.task == s)?;
            let host = parent_pid(p.pid).and_then(parent_pid)?;
            agents
                .iter()
                .find(|(_, pid)| **pid == host)
                .map(|(n, _)| n.clone())
        })
    }

    fn open_truth(&mut self, agent: &str, state: TruthState) -> usize {
        self.record.truth.push(TruthInterval {
            agent: agent.to_string(),
            state,
            start_ms: self.now_ms(),
            end_ms: None,
        });
        self.record.truth.len() - 1
    }

    fn inject(&mut self, i: usize) -> Result<Option<String>> {
        let spec = self.scenario.faults[i].clone();
        let mut rec = FaultRecord {
            index: i,
            kind: spec.kind,
            target: String::new(),
            start_ms: self.now_ms(),
            end_ms: None,
            skipped: None,
        };
        let kind = spec.kind.as_str();
        if spec.kind == FaultKind::ServerKill {
            rec.target = SERVER.to_string();
            let truth = self.open_truth(SERVER, TruthState::Down);
            self.cluster.kill_server()?;
            if spec.duration.is_none() {
                self.cluster.start_server()?;
                self.record.truth[truth].end_ms = Some(self.now_ms());
                rec.end_ms = Some(self.now_ms());
                self.record.faults.push(rec);
            } else {
                self.record.faults.push(rec);
                self.active
                    .insert(i, (self.record.faults.len() - 1, Some(truth)));
            }
            return Ok(Some(kind.to_string()));
        }
        let target = match spec.target() {
            Target::Agent(name) => Some(name),
            Target::SingletonHolder => self.singleton_holder(),
            Target::Random => {
                let free: Vec<String> = self
                    .scenario
                    .agent_names()
                    .into_iter()
                    .filter(|a| !self.busy.contains(a))
                    .collect();
                let n = u64::try_from(free.len()).unwrap_or(0);
                let pick = Rng::stream(self.seed, u64::try_from(i).unwrap_or(0)).below(n);
                usize::try_from(pick)
                    .ok()
                    .and_then(|k| free.get(k).cloned())
            }
        };
        let Some(name) = target else {
            rec.skipped = Some(match spec.target() {
                Target::SingletonHolder => "no singleton process runs now".to_string(),
                _ => "every agent is already under a fault".to_string(),
            });
            let msg = format!("{kind}: skipped ({})", rec.skipped.as_deref().unwrap_or(""));
            self.record.faults.push(rec);
            return Ok(Some(msg));
        };
        rec.target = name.clone();
        if self.busy.contains(&name) {
            rec.skipped = Some(format!("{name} is already under a fault"));
            let msg = format!("{kind} {name}: skipped (already under a fault)");
            self.record.faults.push(rec);
            return Ok(Some(msg));
        }
        let how = match spec.target() {
            Target::Agent(_) => String::new(),
            Target::Random => " (random)".to_string(),
            Target::SingletonHolder => " (singleton holder)".to_string(),
        };
        let truth = match spec.kind {
            FaultKind::Kill => {
                let t = self.open_truth(&name, TruthState::Down);
                self.cluster.kill_agent(&name)?;
                Some(t)
            }
            FaultKind::Pause => {
                let t = self.open_truth(&name, TruthState::Paused);
                self.cluster.signal_agent(&name, Signal::SIGSTOP)?;
                Some(t)
            }
            FaultKind::Partition => {
                let t = self.open_truth(&name, TruthState::Cut);
                self.proxies
                    .get(&name)
                    .with_context(|| format!("no proxy for {name}"))?
                    .cut();
                Some(t)
            }
            FaultKind::Restart => {
                let t = self.open_truth(&name, TruthState::Down);
                self.cluster.restart_agent(&name)?;
                self.spawned(&name);
                self.record.truth[t].end_ms = Some(self.now_ms());
                rec.end_ms = Some(self.now_ms());
                None
            }
            FaultKind::ServerKill => None,
        };
        self.record.faults.push(rec);
        if truth.is_some() {
            self.busy.insert(name.clone());
            self.active.insert(i, (self.record.faults.len() - 1, truth));
        }
        Ok(Some(format!("{kind} {name}{how}")))
    }

    fn undo(&mut self, i: usize) -> Result<Option<String>> {
        let Some((rec, truth)) = self.active.remove(&i) else {
            return Ok(None);
        };
        let (kind, name) = match self.record.faults.get(rec) {
            Some(f) => (f.kind, f.target.clone()),
            None => return Ok(None),
        };
        let what = match kind {
            FaultKind::Kill => {
                self.cluster.restart_agent(&name)?;
                self.spawned(&name);
                "restarted"
            }
            FaultKind::Pause => {
                self.cluster.signal_agent(&name, Signal::SIGCONT)?;
                "resumed"
            }
            FaultKind::Partition => {
                if let Some(p) = self.proxies.get(&name) {
                    p.heal();
                }
                "healed"
            }
            FaultKind::ServerKill => {
                self.cluster.start_server()?;
                "restarted"
            }
            FaultKind::Restart => return Ok(None),
        };
        let now = self.now_ms();
        if let Some(t) = truth.and_then(|t| self.record.truth.get_mut(t)) {
            t.end_ms = Some(now);
        }
        if let Some(f) = self.record.faults.get_mut(rec) {
            f.end_ms = Some(now);
        }
        self.busy.remove(&name);
        Ok(Some(format!("{name} {what}")))
    }
}
