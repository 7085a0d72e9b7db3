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
//!
//! A scenario with a replicated control plane (`[cluster] store = "etcd"`) runs an etcd
//! cluster and several servers (see [`Cluster::start_replicated`], cargo feature `etcd`); each
//! agent then has one proxy per server. After every `leader-kill` a watcher thread polls the
//! surviving replicas' `GET /v1/leader` every [`FAILOVER_POLL`] until one leads with a higher
//! term and has run its first reconcile round (`acting_since`): the record's
//! [`Failover`]s.

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

use crate::cluster::{Cluster, is_alive, parent_pid, scan_task_procs, wait_until};
use crate::netns::Netns;
use crate::proxy::Proxy;
use crate::record::{
    AgentEvent, Failover, FaultRecord, ProcSample, Record, SERVER, Sample, Spawn, TruthInterval,
    TruthState,
};
use crate::scenario::{ClusterSpec, Direction, FaultKind, FaultSpec, Scenario, Target};
use warden_client::Client;

/// How often the process sampler reads `/proc`.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// How often the event poller asks the server (event times come from the server's stamps,
/// so this only bounds how stale the poller's view is).
pub const POLL_EVERY: Duration = Duration::from_millis(100);
/// How often a failover watcher asks the surviving replicas who leads (the times it records
/// are the servers' own stamps; this only bounds when they are learnt).
pub const FAILOVER_POLL: Duration = Duration::from_millis(20);
/// How long a failover watcher waits for a new leader before giving up.
pub const FAILOVER_WAIT: Duration = Duration::from_secs(60);

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

/// Where the cluster's network lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// Network namespaces when they can be used (root, `ip`, `nft`), else loopback.
    #[default]
    Auto,
    /// Each agent in its own network namespace (see [`crate::netns`]); an error if that
    /// cannot be done.
    Netns,
    /// Everything on loopback; faults that need namespaces (packet loss) are skipped.
    Loopback,
}

impl NetworkMode {
    /// Parse `auto`, `netns` or `loopback`.
    pub fn parse(s: &str) -> Result<NetworkMode> {
        Ok(match s {
            "auto" => NetworkMode::Auto,
            "netns" => NetworkMode::Netns,
            "loopback" => NetworkMode::Loopback,
            other => bail!("network {other:?}: expected auto, netns or loopback"),
        })
    }
}

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
    /// Network namespaces or loopback.
    pub network: NetworkMode,
    /// Set by the run while its fault schedule runs, for a progress bar.
    pub clock: Arc<ScheduleClock>,
}

/// Where a run's fault schedule stands, for a progress bar drawn by another thread.
#[derive(Debug, Default)]
pub struct ScheduleClock {
    inner: Mutex<Option<(Instant, Duration)>>,
    done: AtomicBool,
}

impl ScheduleClock {
    fn start(&self, total: Duration) {
        if let Ok(mut g) = self.inner.lock() {
            *g = Some((Instant::now(), total));
        }
    }

    fn finish(&self) {
        self.done.store(true, Ordering::SeqCst);
    }

    /// `(elapsed, total)` while the schedule runs; `None` before it starts and after it ends.
    pub fn position(&self) -> Option<(Duration, Duration)> {
        if self.done.load(Ordering::SeqCst) {
            return None;
        }
        let g = self.inner.lock().ok()?;
        g.map(|(start, total)| (start.elapsed().min(total), total))
    }
}

/// A pressure process (stress-ng or the built-in burner); killed when dropped.
struct Stressor(std::process::Child);

impl Drop for Stressor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `stress-ng` can be run.
fn have_stress_ng() -> bool {
    std::process::Command::new("stress-ng")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
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

/// Watches the replicas after a `leader-kill` until a new leader acts; stopped when dropped.
struct FailoverWatch {
    found: Arc<Mutex<Failover>>,
    done: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FailoverWatch {
    /// Poll `replicas` (index, client; the killed server excluded) until one leads with a term
    /// above `start.old_term` and acts. `t0_unix` places the servers' stamps on the run's clock.
    fn start(replicas: Vec<(usize, Client)>, start: Failover, t0_unix: u64) -> FailoverWatch {
        let found = Arc::new(Mutex::new(start));
        let done = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, d, s) = (found.clone(), done.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + FAILOVER_WAIT;
            let old_term = f.lock().map(|g| g.old_term).unwrap_or(0);
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                for (i, client) in &replicas {
                    let Ok(v) = client.get("/v1/leader") else {
                        continue;
                    };
                    let term = v.get("term").and_then(Value::as_u64).unwrap_or(0);
                    if v.get("role").and_then(Value::as_str) != Some("leader") || term <= old_term {
                        continue;
                    }
                    let at = |key: &str| {
                        v.get(key)
                            .and_then(Value::as_u64)
                            .map(|t| t.saturating_sub(t0_unix))
                    };
                    let acting = at("acting_since");
                    if let Ok(mut g) = f.lock() {
                        g.new_leader = Some(format!("server-{i}"));
                        g.new_term = Some(term);
                        g.elected_ms = at("since");
                        g.acting_ms = acting;
                    }
                    if acting.is_some() {
                        d.store(true, Ordering::SeqCst);
                        return;
                    }
                }
                std::thread::sleep(FAILOVER_POLL);
            }
        });
        FailoverWatch {
            found,
            done,
            stop,
            thread: Some(thread),
        }
    }

    /// When the new leader started acting (ms since the run started), once known.
    fn acting_ms(&self) -> Option<u64> {
        if !self.done.load(Ordering::SeqCst) {
            return None;
        }
        self.found.lock().ok().and_then(|g| g.acting_ms)
    }

    /// Stop watching; what was found.
    fn finish(mut self) -> Failover {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.found.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

impl Drop for FailoverWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Start the scenario's control plane: one server, or etcd and replicas.
fn start_cluster(exe: &Path, env: &[(&str, &str)], spec: &ClusterSpec) -> Result<Cluster> {
    if !spec.replicated() {
        return Cluster::start_with_env(exe, env);
    }
    #[cfg(feature = "etcd")]
    {
        Cluster::start_replicated(exe, env, spec.servers, spec.etcd_members)
    }
    #[cfg(not(feature = "etcd"))]
    {
        bail!(
            "this scenario runs a replicated control plane on etcd; this warden was built \
             without etcd support: build it with `cargo build --release -p warden --features \
             etcd` (needs Debian's protobuf-compiler and etcd-server)"
        )
    }
}

/// A fault being carried out.
struct Active {
    /// Its record's position.
    record: usize,
    /// The agents it hits.
    agents: Vec<String>,
    /// Its open truth intervals' positions.
    truth: Vec<usize>,
    /// Its pressure processes.
    stressors: Vec<Stressor>,
}

/// The fault schedule's state while it runs.
struct Run<'a> {
    scenario: &'a Scenario,
    seed: u64,
    cancel: Arc<AtomicBool>,
    /// Pressure processes and other per-fault state; dropped first.
    active: BTreeMap<usize, Active>,
    /// Failover watchers of the leader kills, in order.
    failovers: Vec<FailoverWatch>,
    /// How much later than scheduled each fault was injected (`after_failover`): its end is
    /// put off as much.
    delays: BTreeMap<usize, Duration>,
    /// The run's start on the wall clock (servers' stamps are placed on the run's clock with it).
    t0_unix: u64,
    /// Declared before the proxies, so dropped before them: agents shut down while their
    /// proxies still forward.
    cluster: Cluster,
    /// Each agent's proxies, one per server.
    proxies: BTreeMap<String, Vec<Proxy>>,
    /// Dropped last: the namespaces outlive every process in them.
    netns: Option<Netns>,
    /// Why network namespaces are not used (loopback mode), if they are not.
    no_netns: Option<String>,
    pids: PidMap,
    t0: Instant,
    record: Record,
    /// Agents under a fault now (no second fault is put on them).
    busy: BTreeSet<String>,
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
    let (netns, no_netns) = match (opts.network, crate::netns::unavailable()) {
        (NetworkMode::Loopback, _) => (None, Some("loopback chosen".to_string())),
        (NetworkMode::Netns, Some(why)) => bail!("network namespaces unavailable: {why}"),
        (NetworkMode::Auto, Some(why)) => (None, Some(why)),
        (NetworkMode::Auto | NetworkMode::Netns, None) => {
            // The calling thread joins the server's namespace until `netns` is dropped.
            (Some(Netns::create(&scenario.agent_names())?), None)
        }
    };
    let control = if scenario.cluster.replicated() {
        format!(
            "{} servers on {} etcd members",
            scenario.cluster.servers, scenario.cluster.etcd_members
        )
    } else {
        "a server".to_string()
    };
    match &no_netns {
        None => progress(&format!(
            "starting {control} and {} agents, each agent in its own network namespace",
            scenario.agents
        )),
        Some(why) => progress(&format!(
            "starting {control} and {} agents on loopback ({why}: faults that need network \
             namespaces are skipped)",
            scenario.agents
        )),
    }
    let mut proxies = BTreeMap::new();
    let mut cluster = start_cluster(
        &opts.exe,
        &[("WARDEN_CONFIG", cfg.as_str())],
        &scenario.cluster,
    )?;
    if scenario.cluster.host_cpu_millis.is_some() || scenario.cluster.host_memory_mb.is_some() {
        if !nix::unistd::geteuid().is_root() {
            bail!("[cluster] host_cpu_millis / host_memory_mb need root (cgroups)");
        }
        cluster.host_cgroups(
            scenario.cluster.host_cpu_millis.unwrap_or(0),
            scenario.cluster.host_memory_mb.unwrap_or(0),
        );
        progress(&format!(
            "every agent in a host cgroup of its own ({} millicores, {} MiB; 0: unlimited)",
            scenario.cluster.host_cpu_millis.unwrap_or(0),
            scenario.cluster.host_memory_mb.unwrap_or(0)
        ));
    }
    if scenario.cluster.reattach_window_ms > 0 {
        cluster.set_reattach_window(Duration::from_millis(scenario.cluster.reattach_window_ms));
        progress(&format!(
            "agents keep their service copies for {} ms when their process dies",
            scenario.cluster.reattach_window_ms
        ));
    }
    for name in scenario.agent_names() {
        // Every session goes through a proxy (delay, jitter; cuts on loopback), one per
        // server. In namespaces they listen on the server's side of the agent's link.
        let bind = match netns.as_ref().and_then(|n| n.agent_net(&name)) {
            Some(a) => std::net::SocketAddr::from((a.server_ip, 0)),
            None => std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let mine = cluster
            .grpc_addrs()
            .into_iter()
            .map(|server| Proxy::start_on(bind, server))
            .collect::<Result<Vec<_>>>()?;
        proxies.insert(name, mine);
    }
    let mut run = Run {
        scenario,
        seed: opts.seed,
        cancel: opts.cancel.clone(),
        active: BTreeMap::new(),
        failovers: Vec::new(),
        delays: BTreeMap::new(),
        t0_unix,
        cluster,
        proxies,
        netns,
        no_netns: no_netns.clone(),
        pids: Arc::new(Mutex::new(BTreeMap::new())),
        t0,
        record: Record {
            scenario: Some(scenario.clone()),
            seed: opts.seed,
            agents: scenario.agent_names(),
            singletons: scenario.singleton_slots(),
            slots: scenario.all_slots(),
            warm_groups: scenario.warm_groups(),
            start_unix_ms: t0_unix,
            rto_bound_ms: millis(scenario.rto_bound),
            verdict_tolerance_ms: millis(scenario.verdict_tolerance),
            network: if no_netns.is_none() {
                "netns".into()
            } else {
                "loopback".into()
            },
            ..Record::default()
        },
        busy: BTreeSet::new(),
    };
    let recorder = Recorder::start(
        run.cluster.marker().to_string(),
        run.cluster.client.clone(),
        run.pids.clone(),
        t0,
        t0_unix,
    );
    let result = run.execute(progress, &opts.clock);
    opts.clock.finish();
    let (samples, events) = recorder.finish();
    run.record.failovers = std::mem::take(&mut run.failovers)
        .into_iter()
        .map(FailoverWatch::finish)
        .collect();
    run.record.end_ms = run.now_ms();
    if let Some(w) = run.scenario.stateful() {
        run.record.acks = crate::record::read_acks(
            run.cluster.dir(),
            &run.record.agents,
            &w.name,
            run.record.start_unix_ms,
        );
    }
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
        let server = run.cluster.server_name(0);
        bail!("{e:#}\n{server} log (tail):\n{}", run.cluster.log(&server));
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
    /// A flap's link comes back.
    FlapHeal,
    /// A flap's link is cut again.
    FlapCut,
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

    fn execute(&mut self, progress: &mut dyn FnMut(&str), clock: &ScheduleClock) -> Result<()> {
        let names = self.scenario.agent_names();
        for name in &names {
            let addrs: Vec<std::net::SocketAddr> = self
                .proxies
                .get(name)
                .context("no proxy")?
                .iter()
                .map(Proxy::addr)
                .collect();
            let (wrapper, probe) = match &self.netns {
                Some(n) => (n.wrapper(name)?, Some(n.probe_addr(name)?)),
                None => (Vec::new(), None),
            };
            self.cluster.add_agent_with(name, &addrs, &wrapper, probe)?;
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
        if !wait_until(Duration::from_secs(60), || {
            let procs = self.cluster.task_procs();
            let tasks: Vec<&str> = procs.iter().map(|p| p.task.as_str()).collect();
            self.scenario.runs_every_slot(&tasks)
        }) {
            bail!(
                "the workload did not start (every slot once): {:?}",
                self.cluster.client.get("/v1/tasks").ok()
            );
        }
        let start = Instant::now();
        clock.start(self.scenario.duration);
        self.record.schedule_start_ms = self.now_ms();
        progress(&format!(
            "workload running ({} slots); fault schedule of {:?} starts",
            self.scenario.all_slots().len(),
            self.scenario.duration
        ));

        let mut steps: Vec<(Duration, Phase, usize)> = Vec::new();
        for (i, f) in self.scenario.faults.iter().enumerate() {
            steps.push((f.at, Phase::Start, i));
            if let Some(d) = f.duration {
                steps.push((f.at + d, Phase::End, i));
            }
            if f.kind == FaultKind::Flap {
                let cuts = f.flap_cuts();
                for (k, (cut, heal)) in cuts.iter().enumerate() {
                    if k > 0 {
                        steps.push((*cut, Phase::FlapCut, i));
                    }
                    if *heal < f.end() {
                        steps.push((*heal, Phase::FlapHeal, i));
                    }
                }
            }
        }
        steps.sort();
        for (offset, phase, i) in steps {
            let late = self.delays.get(&i).copied().unwrap_or_default();
            self.wait(start + offset + late)?;
            let line = match phase {
                Phase::Start => {
                    if let Some(after) = self.scenario.faults[i].after_failover {
                        self.wait_for_failover(i, after, start + offset)?;
                    }
                    self.inject(i)?
                }
                Phase::End => self.undo(i)?,
                Phase::FlapCut => self.flap(i, true)?,
                Phase::FlapHeal => self.flap(i, false)?,
            };
            if let Some(line) = line {
                let at = offset + self.delays.get(&i).copied().unwrap_or_default();
                progress(&format!("[{:>6.1}s] {line}", at.as_secs_f64()));
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

    /// The agent of the stateful workload's `role` (`primary`, or `standby`: an in-sync one
    /// first) as the server's task list shows it, while that copy runs.
    fn replica_holder(&self, role: &str) -> Option<String> {
        let w = self.scenario.stateful()?;
        let tasks = self.cluster.client.get("/v1/tasks").ok()?;
        let mut found: Vec<(bool, String)> = tasks
            .as_array()?
            .iter()
            .filter(|t| t.get("job").and_then(serde_json::Value::as_str) == Some(w.name.as_str()))
            .filter(|t| t.get("state").and_then(serde_json::Value::as_str) == Some("running"))
            .filter_map(|t| {
                let r = t.get("replica")?;
                if r.get("role")?.as_str()? != role {
                    return None;
                }
                let in_sync = r.get("in_sync")?.as_bool()?;
                Some((!in_sync, t.get("agent")?.as_str()?.to_string()))
            })
            .collect();
        found.sort();
        found.into_iter().next().map(|(_, a)| a)
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

    /// The agents a fault hits now, or why it is skipped.
    fn targets(&self, i: usize, spec: &FaultSpec) -> std::result::Result<Vec<String>, String> {
        let exclusive = spec.kind.exclusive();
        let free: Vec<String> = self
            .scenario
            .agent_names()
            .into_iter()
            .filter(|a| !exclusive || !self.busy.contains(a))
            .collect();
        let picked = match spec.target() {
            Target::Agent(name) => Some(name),
            Target::SingletonHolder => {
                // Right after a failover the singleton may be between copies (fenced during
                // the failover, started again by the new leader): give it a moment.
                let mut holder = self.singleton_holder();
                if holder.is_none() && spec.after_failover.is_some() {
                    wait_until(Duration::from_secs(5), || {
                        holder = self.singleton_holder();
                        holder.is_some()
                    });
                }
                match holder {
                    Some(name) => Some(name),
                    None => return Err("no singleton process runs now".into()),
                }
            }
            Target::Random => {
                let n = u64::try_from(free.len()).unwrap_or(0);
                let pick = Rng::stream(self.seed, u64::try_from(i).unwrap_or(0)).below(n);
                usize::try_from(pick)
                    .ok()
                    .and_then(|k| free.get(k).cloned())
            }
            Target::Primary | Target::Standby => {
                // Between a promotion and the next standby the roles may be in flux: give
                // them a moment.
                let want = if spec.target() == Target::Primary {
                    "primary"
                } else {
                    "standby"
                };
                let mut holder = self.replica_holder(want);
                if holder.is_none() {
                    wait_until(Duration::from_secs(5), || {
                        holder = self.replica_holder(want);
                        holder.is_some()
                    });
                }
                match holder {
                    Some(name) => Some(name),
                    None => return Err(format!("no {want} of the stateful workload runs now")),
                }
            }
            Target::All => None,
        };
        if spec.kind == FaultKind::Isolate || spec.target() == Target::All {
            if free.len() < self.scenario.agents {
                return Err("some agent is already under a fault".into());
            }
            return Ok(free);
        }
        match picked {
            None => Err("every agent is already under a fault".into()),
            Some(name) if exclusive && self.busy.contains(&name) => {
                Err(format!("{name} is already under a fault"))
            }
            Some(name) => Ok(vec![name]),
        }
    }

    /// The agent's session proxies, one per server.
    fn proxies_of(&self, name: &str) -> Result<&[Proxy]> {
        self.proxies
            .get(name)
            .map(Vec::as_slice)
            .with_context(|| format!("no proxy for {name}"))
    }

    /// Cut an agent off from the server(s) (both ways, or one): nftables in its namespace, or
    /// its sessions' proxies on loopback.
    fn cut(&self, name: &str, direction: Option<Direction>) -> Result<()> {
        match &self.netns {
            Some(n) => n.partition(name, direction),
            None => {
                for p in self.proxies_of(name)? {
                    match direction {
                        None => p.cut(),
                        Some(d) => p.cut_one_way(d == Direction::ToServer),
                    }
                }
                Ok(())
            }
        }
    }

    fn heal(&self, name: &str) -> Result<()> {
        if let Some(n) = &self.netns {
            n.heal(name)?;
        }
        for p in self.proxies_of(name)? {
            p.heal();
            p.set_delay(Duration::ZERO, Duration::ZERO, 0);
        }
        Ok(())
    }

    /// The run's clock read on the wall clock (as the servers' stamps are).
    fn unix_now_ms(&self) -> u64 {
        unix_ms().saturating_sub(self.t0_unix)
    }

    /// Hold fault `i` (scheduled at `scheduled`) until `after` past the moment the new leader
    /// of the latest leader-kill started acting; note how much later than scheduled it goes.
    fn wait_for_failover(&mut self, i: usize, after: Duration, scheduled: Instant) -> Result<()> {
        let deadline = Instant::now() + FAILOVER_WAIT;
        let acting = loop {
            if self.cancel.load(Ordering::SeqCst) {
                bail!("interrupted");
            }
            let Some(watch) = self.failovers.last() else {
                return Ok(());
            };
            if let Some(t) = watch.acting_ms() {
                break t;
            }
            if Instant::now() >= deadline {
                // No new leader: inject anyway; the report shows the failover as incomplete.
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let already = Duration::from_millis(self.unix_now_ms().saturating_sub(acting));
        if let Some(rest) = after.checked_sub(already) {
            self.wait(Instant::now() + rest)?;
        }
        self.delays
            .insert(i, Instant::now().saturating_duration_since(scheduled));
        Ok(())
    }

    /// Clients of every running server but `except`.
    fn replica_clients(&self, except: usize) -> Vec<(usize, Client)> {
        (0..self.cluster.server_count())
            .filter(|i| *i != except && self.cluster.server_running(*i))
            .filter_map(|i| Some((i, self.cluster.server_client(i).ok()?)))
            .collect()
    }

    /// Kill the leading server and start watching for its successor.
    fn kill_leader(&mut self, i: usize, rec: &mut FaultRecord) -> Result<Option<usize>> {
        let Some((leader, view)) = self.cluster.leader() else {
            rec.skipped = Some("no server leads now".into());
            return Ok(None);
        };
        let name = self.cluster.server_name(leader);
        rec.target.clone_from(&name);
        let kill_ms = self.unix_now_ms();
        self.cluster.kill_server_at(leader)?;
        let start = Failover {
            fault: i,
            killed: name,
            old_term: view.get("term").and_then(Value::as_u64).unwrap_or(0),
            kill_ms,
            ..Failover::default()
        };
        let watch = FailoverWatch::start(self.replica_clients(leader), start, self.t0_unix);
        self.failovers.push(watch);
        Ok(Some(leader))
    }

    /// Kill `count` running etcd members, chosen with the seed; their indices.
    fn kill_etcd(&mut self, i: usize, count: usize) -> Result<Vec<usize>> {
        let mut running = self.cluster.etcd_running();
        let mut rng = Rng::stream(self.seed, u64::try_from(i).unwrap_or(0));
        let mut killed = Vec::new();
        while killed.len() < count && !running.is_empty() {
            let k = usize::try_from(rng.below(running.len() as u64)).unwrap_or(0);
            let m = running.remove(k.min(running.len() - 1));
            self.cluster.kill_etcd(m)?;
            killed.push(m);
        }
        killed.sort_unstable();
        Ok(killed)
    }

    /// Start a CPU or memory pressure process (in the agent's namespace, when there is one).
    fn stressor(&self, name: &str, spec: &FaultSpec) -> Result<Stressor> {
        let secs = spec.duration.unwrap_or_default().as_secs() + 5;
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        // With host cgroups the stressor joins its agent's host, so it loads that agent only
        // (first: `ip netns exec` mounts a sysfs without the cgroup file systems).
        let mut cmd: Vec<String> = Vec::new();
        if let Some(procs) = self.cluster.host_stress_cgroup(name) {
            cmd.extend([self.cluster_exe(), "shim-exec".into()]);
            for p in procs {
                cmd.extend(["--join".into(), p.display().to_string()]);
            }
            cmd.push("--".into());
        }
        if let Some(n) = &self.netns {
            cmd.extend(n.wrapper(name)?);
        }
        match spec.kind {
            FaultKind::Cpu if !have_stress_ng() => {
                cmd.push(self.cluster_exe());
                cmd.extend(["workload".into(), "burn".into(), "--threads".into()]);
                cmd.push(spec.workers.map_or(cores, |w| w as usize).to_string());
                cmd.extend(["--seconds".into(), secs.to_string()]);
            }
            FaultKind::Cpu => {
                cmd.extend(["stress-ng".into(), "--quiet".into(), "--cpu".into()]);
                cmd.push(spec.workers.map_or(cores, |w| w as usize).to_string());
                cmd.extend(["--timeout".into(), format!("{secs}s")]);
            }
            FaultKind::Memory if !have_stress_ng() => {
                bail!("memory pressure needs stress-ng (Debian package stress-ng)");
            }
            _ => {
                cmd.extend([
                    "stress-ng".into(),
                    "--quiet".into(),
                    "--vm".into(),
                    "1".into(),
                ]);
                cmd.extend([
                    "--vm-bytes".into(),
                    format!("{}m", spec.megabytes.unwrap_or(256)),
                    "--vm-keep".into(),
                    "--timeout".into(),
                    format!("{secs}s"),
                ]);
            }
        }
        let (program, args) = cmd.split_first().context("empty command")?;
        let child = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("start {program}"))?;
        Ok(Stressor(child))
    }

    fn cluster_exe(&self) -> String {
        self.cluster.exe().display().to_string()
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
            since_failover_ms: None,
        };
        if spec.after_failover.is_some() {
            rec.since_failover_ms = self
                .failovers
                .last()
                .and_then(FailoverWatch::acting_ms)
                .map(|t| self.unix_now_ms().saturating_sub(t));
        }
        let kind = spec.kind.as_str();
        if matches!(spec.kind, FaultKind::LeaderKill | FaultKind::EtcdKill) {
            let hit: Vec<String> = if spec.kind == FaultKind::LeaderKill {
                self.kill_leader(i, &mut rec)?
                    .map(|s| self.cluster.server_name(s))
                    .into_iter()
                    .collect()
            } else {
                let members = self.kill_etcd(i, spec.count.unwrap_or(1))?;
                rec.target = members
                    .iter()
                    .map(|m| format!("etcd-{m}"))
                    .collect::<Vec<_>>()
                    .join(",");
                members.iter().map(|m| format!("etcd-{m}")).collect()
            };
            let line = match &rec.skipped {
                Some(why) => format!("{kind}: skipped ({why})"),
                None => format!("{kind} {}", rec.target),
            };
            let injected = rec.skipped.is_none();
            self.record.faults.push(rec);
            if injected {
                let record = self.record.faults.len() - 1;
                self.active.insert(
                    i,
                    Active {
                        record,
                        agents: hit,
                        truth: Vec::new(),
                        stressors: Vec::new(),
                    },
                );
            }
            return Ok(Some(line));
        }
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
                let record = self.record.faults.len() - 1;
                self.active.insert(
                    i,
                    Active {
                        record,
                        agents: Vec::new(),
                        truth: vec![truth],
                        stressors: Vec::new(),
                    },
                );
            }
            return Ok(Some(kind.to_string()));
        }
        if spec.kind.needs_netns()
            && let Some(why) = &self.no_netns
        {
            rec.skipped = Some(format!("needs network namespaces ({why})"));
            let msg = format!("{kind}: skipped ({})", rec.skipped.as_deref().unwrap_or(""));
            self.record.faults.push(rec);
            return Ok(Some(msg));
        }
        let agents = match self.targets(i, &spec) {
            Ok(a) => a,
            Err(why) => {
                let msg = format!("{kind}: skipped ({why})");
                rec.skipped = Some(why);
                self.record.faults.push(rec);
                return Ok(Some(msg));
            }
        };
        // Finding the target may have taken a moment (a singleton holder right after a
        // failover): the fault starts now.
        rec.start_ms = self.now_ms();
        if spec.after_failover.is_some() {
            rec.since_failover_ms = self
                .failovers
                .last()
                .and_then(FailoverWatch::acting_ms)
                .map(|t| self.unix_now_ms().saturating_sub(t));
        }
        rec.target = match (spec.kind, spec.target()) {
            (FaultKind::Isolate, _) => SERVER.to_string(),
            (_, Target::All) => "all".to_string(),
            _ => agents.join(","),
        };
        let how = match spec.target() {
            Target::Random => " (random)",
            Target::SingletonHolder => " (singleton holder)",
            Target::Primary => " (primary)",
            Target::Standby => " (standby)",
            _ => "",
        };
        let mut truth = Vec::new();
        let mut stressors = Vec::new();
        let mut done = false;
        match spec.kind {
            FaultKind::Kill => {
                truth.push(self.open_truth(&agents[0], TruthState::Down));
                self.cluster.kill_agent(&agents[0])?;
            }
            FaultKind::Pause => {
                truth.push(self.open_truth(&agents[0], TruthState::Paused));
                self.cluster.signal_agent(&agents[0], Signal::SIGSTOP)?;
            }
            FaultKind::Upgrade => {
                // Its process image is replaced: away until the new one reconnects (the
                // report's tail covers that), its tasks untouched.
                let t = self.open_truth(&agents[0], TruthState::Down);
                self.cluster.signal_agent(&agents[0], Signal::SIGHUP)?;
                self.record.truth[t].end_ms = Some(self.now_ms());
                rec.end_ms = Some(self.now_ms());
                done = true;
            }
            FaultKind::Restart => {
                let t = self.open_truth(&agents[0], TruthState::Down);
                self.cluster.restart_agent(&agents[0])?;
                self.spawned(&agents[0]);
                self.record.truth[t].end_ms = Some(self.now_ms());
                rec.end_ms = Some(self.now_ms());
                done = true;
            }
            FaultKind::Partition | FaultKind::Flap => {
                truth.push(self.open_truth(&agents[0], TruthState::Cut));
                self.cut(&agents[0], None)?;
            }
            FaultKind::OfflineRestart => {
                truth.push(self.open_truth(&agents[0], TruthState::Cut));
                self.cut(&agents[0], None)?;
                self.cluster.reboot_agent(&agents[0])?;
                self.spawned(&agents[0]);
            }
            FaultKind::Oneway => {
                truth.push(self.open_truth(&agents[0], TruthState::Cut));
                self.cut(&agents[0], spec.direction)?;
            }
            FaultKind::Isolate => {
                truth.push(self.open_truth(SERVER, TruthState::Cut));
                for a in &agents {
                    truth.push(self.open_truth(a, TruthState::Cut));
                    self.cut(a, None)?;
                }
            }
            FaultKind::Loss | FaultKind::Delay => {
                for (k, a) in agents.iter().enumerate() {
                    if let (Some(p), Some(n)) = (spec.probability, &self.netns) {
                        n.loss(a, p)?;
                    }
                    let seed = self.seed ^ ((i as u64) << 32) ^ k as u64;
                    for p in self.proxies_of(a)? {
                        p.set_delay(
                            spec.delay.unwrap_or_default(),
                            spec.jitter.unwrap_or_default(),
                            seed,
                        );
                    }
                }
            }
            FaultKind::Cpu | FaultKind::Memory => {
                for a in &agents {
                    stressors.push(self.stressor(a, &spec)?);
                }
            }
            FaultKind::ServerKill | FaultKind::LeaderKill | FaultKind::EtcdKill => {}
        }
        self.record.faults.push(rec);
        if !done {
            if spec.kind.exclusive() {
                self.busy.extend(agents.iter().cloned());
            }
            let record = self.record.faults.len() - 1;
            self.active.insert(
                i,
                Active {
                    record,
                    agents: agents.clone(),
                    truth,
                    stressors,
                },
            );
        }
        let whom = match (spec.kind, spec.target()) {
            (FaultKind::Isolate, _) => "the server from every agent".to_string(),
            (_, Target::All) => "every agent".to_string(),
            _ => agents.join(","),
        };
        Ok(Some(format!("{kind} {whom}{how}")))
    }

    /// A flap's link goes down (`cut`) or comes back.
    fn flap(&mut self, i: usize, cut: bool) -> Result<Option<String>> {
        let Some(name) = self.active.get(&i).and_then(|a| a.agents.first().cloned()) else {
            return Ok(None);
        };
        if cut {
            let t = self.open_truth(&name, TruthState::Cut);
            self.cut(&name, None)?;
            if let Some(a) = self.active.get_mut(&i) {
                a.truth.push(t);
            }
        } else {
            self.heal(&name)?;
            let now = self.now_ms();
            let open: Vec<usize> = self
                .active
                .get_mut(&i)
                .map(|a| std::mem::take(&mut a.truth))
                .unwrap_or_default();
            for t in open {
                if let Some(t) = self.record.truth.get_mut(t) {
                    t.end_ms = Some(now);
                }
            }
        }
        Ok(Some(format!(
            "flap {name}: {}",
            if cut { "cut" } else { "healed" }
        )))
    }

    fn undo(&mut self, i: usize) -> Result<Option<String>> {
        let Some(active) = self.active.remove(&i) else {
            return Ok(None);
        };
        let Some(kind) = self.record.faults.get(active.record).map(|f| f.kind) else {
            return Ok(None);
        };
        let what = match kind {
            FaultKind::Kill => {
                for name in &active.agents {
                    self.cluster.restart_agent(name)?;
                    self.spawned(name);
                }
                "restarted"
            }
            FaultKind::Pause => {
                for name in &active.agents {
                    self.cluster.signal_agent(name, Signal::SIGCONT)?;
                }
                "resumed"
            }
            FaultKind::Partition
            | FaultKind::OfflineRestart
            | FaultKind::Oneway
            | FaultKind::Flap
            | FaultKind::Isolate
            | FaultKind::Loss
            | FaultKind::Delay => {
                for name in &active.agents {
                    self.heal(name)?;
                }
                "healed"
            }
            FaultKind::Cpu | FaultKind::Memory => "relieved",
            FaultKind::ServerKill => {
                self.cluster.start_server()?;
                "restarted"
            }
            FaultKind::LeaderKill => {
                for name in &active.agents {
                    let i = name
                        .strip_prefix("server-")
                        .and_then(|i| i.parse::<usize>().ok())
                        .with_context(|| format!("not a server: {name}"))?;
                    self.cluster.start_server_at(i)?;
                }
                "restarted (a standby)"
            }
            FaultKind::EtcdKill => {
                for name in &active.agents {
                    let m = name
                        .strip_prefix("etcd-")
                        .and_then(|m| m.parse::<usize>().ok())
                        .with_context(|| format!("not an etcd member: {name}"))?;
                    self.cluster.restart_etcd(m)?;
                }
                "restarted"
            }
            FaultKind::Restart | FaultKind::Upgrade => return Ok(None),
        };
        // Pressure processes end here (their Drop kills and reaps them).
        drop(active.stressors);
        let now = self.now_ms();
        for t in active.truth {
            if let Some(t) = self.record.truth.get_mut(t) {
                t.end_ms = Some(now);
            }
        }
        if let Some(f) = self.record.faults.get_mut(active.record) {
            f.end_ms = Some(now);
        }
        if kind.exclusive() {
            for name in &active.agents {
                self.busy.remove(name);
            }
        }
        let whom = match kind {
            FaultKind::ServerKill => SERVER.to_string(),
            FaultKind::LeaderKill | FaultKind::EtcdKill => active.agents.join(","),
            _ if active.agents.len() > 1 => "every agent".to_string(),
            _ => active.agents.join(","),
        };
        Ok(Some(format!("{} {whom} {what}", kind.as_str())))
    }
}
