//! The agent runtime: sessions with the servers, heartbeats with signals, the lease, and the
//! task supervisor carrying out the server's orders.
//!
//! ## The lease, on the agent's side
//!
//! Each heartbeat is stamped with its *send* time on the agent's monotonic clock. When the
//! server acknowledges heartbeat `seq`, the lease runs until `sent(seq) + ttl` — measured from
//! the send, not the ack's arrival, so the agent's lease always ends no later than the server
//! believes. The supervisor passes that deadline on to every singleton's shim; when it passes
//! with no newer ack the agent fences itself (stops every singleton at once) while services
//! keep running from the local state (offline mode) until a session returns.
//!
//! ## Sessions
//!
//! The agent holds a session with every server it is given (`--server`, repeated): with a
//! replicated control plane every replica receives the heartbeats and keeps warm detector
//! state, so a new leader judges failures at once. Only the leader renews the lease (its acks
//! carry the lease TTL) and gives orders; a standby acks with a TTL of 0, which only keeps its
//! session alive. A session is dropped and re-opened when the stream fails, or when no ack
//! arrived within the session deadline (a silent partition gives no stream error). A new
//! generation comes from the leader (a standby refuses a Hello without one); the other
//! sessions then join with it. On reconnect the agent keeps its generation and tells the
//! server what it runs. If the server says the generation is over (`Rejoin`), the agent stops
//! every task of that generation and joins again as a new generation: its old work was moved
//! elsewhere.
//!
//! ## Restarts and offline operation
//!
//! The agent keeps a local cache ([`crate::cache`]): its generation and every copy it holds,
//! written before an order is carried out. A new agent process (after an upgrade, or a crash
//! of the agent alone) resumes the same generation, finds the shims its predecessor left
//! running and takes their tasks over with the same epochs, then tells the servers what runs.
//! When no server answers within `offline_after` of the start, it goes *offline*: it starts
//! the service copies of its cache again (never a singleton: that needs a lease) and reports
//! `offline` (probe listener `/status`, metric `warden_agent_offline`) until a session opens;
//! then the server's view wins. A planned restart (SIGHUP: [`AgentConfig::restart`]) tells
//! the servers first (they hold their verdict for the reattach window) and tells every shim to
//! keep its task for the next process ([`Supervisor::detach_all`]); the caller then executes
//! the new binary in place ([`Exit::Restart`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use warden_core::anomaly::{SignalJudge, SignalSet};
use warden_core::controller::{CopyPhase, CopyReport};
use warden_core::lifecycle::ProbeOutcome;
use warden_core::{FencingToken, HealthCheck, JobName, Resources, TaskId};
use warden_proto::convert;
use warden_proto::v1::{self, agent_message, server_message};

use crate::metrics::AgentMetrics;
use crate::signals::{HostSampler, JudgeClock, adopt_settings};
use crate::supervisor::{
    ProcessState, ShimLauncher, Supervisor, SupervisorConfig, SupervisorError, TaskEvent,
    TaskEventKind, TaskSpec,
};

/// Settings of an agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Server gRPC addresses (`host:port` or a URI, see [`crate::tls::endpoint`]): one session
    /// with each (every replica of a replicated control plane).
    pub servers: Vec<String>,
    /// Mutual TLS with the servers (`None`: plaintext).
    pub tls: Option<crate::tls::ClientTls>,
    /// The join token sent with every session request, when the servers require one.
    pub join_token: Option<crate::tls::JoinToken>,
    /// Agent name, unique in the fleet.
    pub name: String,
    /// Where task logs go.
    pub data_dir: std::path::PathBuf,
    /// Address the probe listener is bound to (as reported to the server).
    pub probe_addr: SocketAddr,
    /// Port of the replication listener (replicated task state), on the probe address's IP;
    /// 0 picks a free one.
    pub state_port: u16,
    /// Capacity offered.
    pub capacity: Resources,
    /// How the supervisor launches shims.
    pub launcher: ShimLauncher,
    /// Grace for stopping tasks on shutdown.
    pub shutdown_grace: Duration,
    /// Where the runtime records its metrics (served by the probe listener's `/metrics`).
    pub metrics: AgentMetrics,
    /// A user per job (`--task-uids`); `None`: every task runs as the launcher's user.
    pub task_uids: Option<std::sync::Arc<std::sync::Mutex<crate::isolation::TaskUids>>>,
    /// The cluster the agent belongs to; a local cache that names another is refused.
    pub cluster: String,
    /// How long service copies keep running after the agent process vanished unannounced,
    /// for a new process to take them over (also the window of a planned restart). Zero: no
    /// reattach at all — every task dies with its agent, and no cache is used at start.
    pub reattach_window: Duration,
    /// Offline mode starts when no session opened this long after the start.
    pub offline_after: Duration,
    /// Fired for a planned restart (SIGHUP): [`run`] detaches every task and returns
    /// [`Exit::Restart`].
    pub restart: CancellationToken,
}

/// Default of [`AgentConfig::offline_after`].
pub const DEFAULT_OFFLINE_AFTER: Duration = Duration::from_millis(500);

/// How [`run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Stopped: every task stopped, the agent left.
    Stopped,
    /// A planned restart: every task runs on, detached, for the next agent process, which
    /// the caller now executes.
    Restart,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The supervisor could not start.
    #[error("start the supervisor: {0}")]
    Supervisor(#[from] crate::supervisor::SupervisorError),
    /// The local cache could not be written (the data directory is not writable?).
    #[error("write the local cache {path}: {source}")]
    Cache {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The agent's TLS identity cannot serve replication.
    #[error("TLS for replication: {0}")]
    ReplicationTls(String),
    /// A listener could not be bound.
    #[error("bind the {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

type Tx = mpsc::Sender<v1::AgentMessage>;

fn msg(m: agent_message::Msg) -> v1::AgentMessage {
    v1::AgentMessage { msg: Some(m) }
}

fn phase_of(state: &ProcessState) -> CopyPhase {
    match state {
        ProcessState::Starting | ProcessState::BackingOff { .. } => CopyPhase::Starting,
        ProcessState::Running { .. } => CopyPhase::Running,
        ProcessState::Stopping => CopyPhase::Stopping,
        ProcessState::Stopped | ProcessState::Completed => CopyPhase::Stopped,
        ProcessState::Fenced => CopyPhase::Fenced,
        ProcessState::Failed { .. } => CopyPhase::Failed,
    }
}

/// A report of one copy, on the wire.
#[allow(clippy::too_many_arguments)]
fn task_report(
    task: &TaskId,
    epoch: FencingToken,
    phase: CopyPhase,
    healthy: bool,
    endpoint: String,
    message: String,
    exit_code: Option<i32>,
    version: u64,
) -> v1::AgentMessage {
    let copy = CopyReport {
        task: task.clone(),
        epoch,
        phase: Some(phase),
        healthy,
        endpoint,
        in_sync: Vec::new(),
        state_seq: 0,
        state_fence: 0,
        state_last_epoch: 0,
        lagging: Vec::new(),
        sealed: false,
        version,
    };
    msg(agent_message::Msg::TaskReport(convert::report_to_wire(
        &copy, message, exit_code,
    )))
}

/// Run an agent until `cancel` fires; then stop every task and leave gracefully.
///
/// The agent holds one session ("link") with every server at once: each replica of the
/// control plane receives the heartbeats and keeps warm detector state. Orders and lease
/// renewals come only from the leader; a standby's acks carry a TTL of 0 and only keep its
/// link alive. Reports and heartbeats go to every link.
#[allow(clippy::too_many_lines)]
pub async fn run(cfg: AgentConfig, cancel: CancellationToken) -> Result<Exit, AgentError> {
    if fencing_broken_for_tests() {
        warn!("{BREAK_FENCING_ENV}=1: singletons run WITHOUT self-fencing (test-only switch)");
    }
    let reattach = !cfg.reattach_window.is_zero();
    let shim_dir = cfg.data_dir.join("shims");
    let mut sup_cfg = SupervisorConfig::new(cfg.launcher.clone());
    if reattach {
        make_private_dir(&shim_dir).map_err(|source| AgentError::Cache {
            path: shim_dir.clone(),
            source,
        })?;
        sup_cfg.shim_dir = Some(shim_dir.clone());
        sup_cfg.reattach_window = cfg.reattach_window;
    }
    let (supervisor, mut events) = Supervisor::new(sup_cfg)?;
    cfg.metrics.attach(supervisor.clone());
    let (mut cache, loaded) =
        crate::cache::AgentCache::load(&cfg.data_dir, &cfg.name, &cfg.cluster);
    match &loaded {
        crate::cache::Loaded::Discarded { reason } => {
            warn!(%reason, "local cache not used");
            cfg.metrics.cache_discarded();
        }
        crate::cache::Loaded::Loaded { copies } if reattach => {
            info!(
                copies,
                generation = cache.generation(),
                "local cache loaded"
            );
        }
        crate::cache::Loaded::Loaded { .. } | crate::cache::Loaded::Fresh => {}
    }
    if !reattach && cache.generation() != 0 {
        // Without reattach every task died with the previous process: start afresh.
        let _ = cache.clear();
    }
    let boot = cache
        .begin_boot(&cfg.servers)
        .map_err(|source| AgentError::Cache {
            path: cache.path().to_path_buf(),
            source,
        })?;
    let mut ids = Ids {
        generation: cache.generation(),
        // Above every number a previous process of this agent sent.
        last_seq: boot << 32,
    };
    let mut health: BTreeMap<TaskId, bool> = BTreeMap::new();
    let mut endpoints = Endpoints::new();
    let mut versions = Versions::new();
    for copy in cache.copies() {
        if let Some(addr) = copy.endpoint {
            endpoints.insert(copy.task.clone(), (copy.epoch(), addr));
        }
        versions.insert(copy.task.clone(), (copy.epoch(), copy.assign.version));
    }
    let owner = cfg.launcher.run_as.as_ref().map(|u| (u.uid, u.gid));
    let mut states = crate::state::TaskStates::new(&cfg.data_dir, owner);
    // The replication listener: standbys of the primaries this agent runs connect here; over
    // mutual TLS with the agent's own identity when it has one.
    let repl_tls = match &cfg.tls {
        None => None,
        Some(t) => Some(std::sync::Arc::new(
            t.repl_tls().map_err(AgentError::ReplicationTls)?,
        )),
    };
    let repl_cancel = CancellationToken::new();
    let state_addr = {
        let bind = SocketAddr::new(cfg.probe_addr.ip(), cfg.state_port);
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|e| AgentError::Bind {
                what: "replication listener",
                addr: bind,
                source: e,
            })?;
        let addr = listener.local_addr().map_err(|e| AgentError::Bind {
            what: "replication listener",
            addr: bind,
            source: e,
        })?;
        tokio::spawn(
            states
                .replicate_as(&cfg.name, repl_tls)
                .serve(listener, repl_cancel.clone()),
        );
        addr
    };
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel::<StateOpened>();
    // The tasks a previous agent process left running: taken over before any session opens,
    // so the first Hello reports them.
    if reattach {
        adopt_shims(&cfg, &supervisor, &cache, &shim_dir, &mut endpoints).await;
    }
    // Task cgroups of an earlier process that nobody runs in any more are removed (with what
    // is left in them); the adopted tasks' are kept.
    if let Some(confine) = &cfg.launcher.confine {
        let keep: std::collections::HashSet<String> = supervisor
            .tasks()
            .iter()
            .map(|t| crate::cgroup::task_cgroup_name(&t.task, t.epoch))
            .collect();
        confine.cgroups.remove_stale_tasks(&keep);
    }
    let (hello_tx, hello_rx) = watch::channel(HelloState {
        generation: ids.generation,
        running: running_tasks(&supervisor, &states, &health, &endpoints, &versions),
    });
    let (link_tx, mut link_rx) = mpsc::channel::<LinkEvent>(1024);
    let links_cancel = CancellationToken::new();
    let mut links: Vec<Link> = Vec::new();
    let mut handles = Vec::new();
    for (i, server) in cfg.servers.iter().enumerate() {
        let (reset, reset_rx) = watch::channel(0u64);
        handles.push(tokio::spawn(link_loop(
            LinkParams {
                index: i,
                server: server.clone(),
                name: cfg.name.clone(),
                probe_addr: cfg.probe_addr,
                state_addr,
                capacity: cfg.capacity,
                tls: cfg.tls.clone(),
                join_token: cfg.join_token.clone(),
                reattach_window: cfg.reattach_window,
            },
            link_tx.clone(),
            hello_rx.clone(),
            reset_rx,
            links_cancel.clone(),
        )));
        links.push(Link {
            server: server.clone(),
            out: None,
            last_ack: Instant::now(),
            reset,
            accepts_unchanged: false,
            judged: false,
            listed: None,
        });
    }
    drop(link_tx);
    // The agent's own anomaly detectors, with the settings a server sent (and those settings
    // as sent, to notice a change).
    let mut judge: Option<(String, SignalJudge)> = None;
    let clock = JudgeClock::new();

    let mut sampler = HostSampler::new();
    let mut interval = Duration::from_millis(500);
    let mut deadline = Duration::from_secs(2);
    let mut sent: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut lease_until: Option<Instant> = None;
    let mut fenced = false;
    let mut beat = tokio::time::interval(interval);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (stop_done_tx, mut stop_done_rx) = mpsc::unbounded_channel::<(TaskId, FencingToken)>();
    let (reload_done_tx, mut reload_done_rx) = mpsc::unbounded_channel::<ReloadDone>();
    let mut reloading = std::collections::BTreeSet::new();
    // Confined tasks: their cgroups are read every few seconds, and a task throttled most of
    // the time or near its memory limit is reported (events `task.throttled`,
    // `task.memory_high`).
    let mut usage_watch = crate::cgroup::UsageWatch::new();
    let mut usage_tick = tokio::time::interval(USAGE_EVERY);
    usage_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Offline mode: armed once, at the start, when there is cached work to start.
    let mut offline = false;
    let offline_check = tokio::time::sleep(cfg.offline_after);
    tokio::pin!(offline_check);
    let mut offline_armed = reattach;
    let mut exit = Exit::Stopped;

    loop {
        let lease_timer = async {
            match lease_until {
                Some(t) if !fenced => tokio::time::sleep_until(t).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => {
                broadcast(&links, &msg(agent_message::Msg::Leave(v1::Leave {})));
                break;
            }
            () = cfg.restart.cancelled() => {
                let window = cfg.reattach_window;
                info!(window_ms = window.as_millis() as u64, "planned restart: every task is kept for the next agent process");
                let restarting = v1::Restarting { window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX) };
                broadcast(&links, &msg(agent_message::Msg::Restarting(restarting)));
                supervisor.detach_all(window, Duration::from_secs(2)).await;
                exit = Exit::Restart;
                break;
            }
            () = &mut offline_check, if offline_armed => {
                offline_armed = false;
                if links.iter().all(|l| l.out.is_none()) {
                    offline = true;
                    cfg.metrics.set_offline(true);
                    let started = start_offline(&cfg, &supervisor, &mut cache, &links, &mut endpoints, &mut states, &opened_tx);
                    warn!(started, after_ms = cfg.offline_after.as_millis() as u64, "no server answered: offline, running the service copies of the local cache");
                    note_running(&hello_tx, &supervisor, &states, &health, &endpoints, &versions);
                }
            }
            _ = usage_tick.tick(), if cfg.launcher.confine.is_some() => {
                if let Some(confine) = &cfg.launcher.confine {
                    watch_usage(confine, &supervisor, &mut usage_watch, &links, &health, &endpoints, &versions);
                }
            }
            _ = beat.tick() => {
                // A link whose server stopped acknowledging (a silent partition gives no
                // stream error) is dropped and re-opened.
                for l in &mut links {
                    if l.out.is_some() && l.last_ack.elapsed() > deadline {
                        info!(server = %l.server, silent_ms = l.last_ack.elapsed().as_millis() as u64, "no ack within the session deadline; reconnecting");
                        l.out = None;
                        l.reset.send_modify(|n| *n += 1);
                    }
                }
                ids.last_seq += 1;
                let seq = ids.last_seq;
                sent.insert(seq, Instant::now());
                // Heartbeats that were never acked within the lease are useless for renewal.
                while sent.len() > 64 {
                    sent.pop_first();
                }
                let mut signals = sampler.sample();
                let checks: Vec<bool> = health.values().copied().collect();
                if !checks.is_empty() {
                    signals.task_success = Some(checks.iter().filter(|h| **h).count() as f64 / checks.len() as f64);
                }
                let mut running = running_tasks(&supervisor, &states, &health, &endpoints, &versions);
                // A primary of a replicated state names the standbys it waits for.
                for r in &mut running {
                    if let Some(task) = TaskId::parse(&r.task) {
                        r.in_sync = states.in_sync(&task);
                        r.lagging = states.lagging(&task);
                        let p = states.progress(&task);
                        (r.state_seq, r.sealed) = (p.seq, p.sealed);
                        (r.state_fence, r.state_last_epoch) = (p.fence, p.last_epoch);
                    }
                }
                // Quietly: a link waiting to reconnect wakes only for a new generation.
                hello_tx.send_if_modified(|h| {
                    h.running.clone_from(&running);
                    false
                });
                let verdicts = judge.as_mut().map(|(_, j)| j.judge(clock.now(), &signals));
                let signals = Some(v1::Signals::from(&signals));
                let mut any = false;
                for l in &mut links {
                    if let Some(out) = &l.out {
                        // The copies are listed when they changed since the last list on this
                        // session, at least every LIST_EVERY heartbeats, and always to a
                        // server that takes nothing else; else "as of" that list.
                        let as_of = match &l.listed {
                            Some((at, list))
                                if l.accepts_unchanged
                                    && *list == running
                                    && seq - at < LIST_EVERY =>
                            {
                                *at
                            }
                            _ => 0,
                        };
                        let hb = v1::Heartbeat {
                            seq,
                            signals,
                            running: if as_of == 0 { running.clone() } else { Vec::new() },
                            running_as_of: as_of,
                            judged: l.judged && verdicts.is_some(),
                            anomalous: verdicts.map_or(0, SignalSet::bits),
                        };
                        if as_of == 0 {
                            l.listed = Some((seq, running.clone()));
                        }
                        if out.try_send(msg(agent_message::Msg::Heartbeat(hb))).is_err() {
                            info!(server = %l.server, "outbound queue full or closed; reconnecting");
                            l.out = None;
                            l.reset.send_modify(|n| *n += 1);
                        } else {
                            any = true;
                        }
                    }
                }
                if any {
                    cfg.metrics.heartbeat_sent();
                }
            }
            () = lease_timer => {
                warn!("lease ran out: fencing singletons");
                supervisor.fence_now();
                cfg.metrics.fenced();
                fenced = true;
            }
            ev = link_rx.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    LinkEvent::Up { index, out, welcome } => {
                        if offline {
                            offline = false;
                            cfg.metrics.set_offline(false);
                            info!("a server answered: leaving offline mode (the server's view wins)");
                        }
                        offline_armed = false;
                        if ids.generation == 0 {
                            ids.generation = welcome.generation;
                            hello_tx.send_modify(|h| h.generation = welcome.generation);
                            if let Err(e) = cache.set_generation(welcome.generation) {
                                warn!(error = %e, "cannot write the local cache");
                            }
                        } else if welcome.generation != ids.generation {
                            // Two servers handed out generations at once (a leadership
                            // change): keep the first; this link joins again with it.
                            links[index].reset.send_modify(|n| *n += 1);
                            continue;
                        }
                        let every = Duration::from_millis(welcome.heartbeat_interval_ms.max(10));
                        if every != interval {
                            interval = every;
                            beat = tokio::time::interval(interval);
                            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        }
                        deadline = Duration::from_millis(
                            welcome.session_deadline_ms.max(welcome.heartbeat_interval_ms * 2),
                        );
                        let l = &mut links[index];
                        info!(server = %l.server, generation = ids.generation, "session established");
                        l.out = Some(out);
                        // A new session: its first heartbeat lists the copies.
                        l.accepts_unchanged = welcome.accepts_running_as_of;
                        l.judged = adopt_settings(&mut judge, &welcome.anomaly_settings, &l.server);
                        l.listed = None;
                        l.last_ack = Instant::now();
                        cfg.metrics.session_established(ids.generation);
                        // Heartbeat now rather than at the next tick: a new session (a
                        // restarted process, a reconnect) renews the lease and clears the
                        // server's suspicion half an interval sooner on average.
                        beat.reset_immediately();
                    }
                    LinkEvent::Down { index, reason } => {
                        let l = &mut links[index];
                        if l.out.take().is_some() {
                            info!(server = %l.server, %reason, "session lost; reconnecting");
                        } else {
                            debug!(server = %l.server, %reason, "no session");
                        }
                        if links.iter().all(|l| l.out.is_none()) {
                            cfg.metrics.session_ended();
                        }
                    }
                    LinkEvent::Rejoin { reason } => {
                        warn!(%reason, generation = ids.generation, "generation over: stopping its tasks and rejoining");
                        for (task, epoch) in supervisor.running() {
                            let _ = supervisor.stop(&task, epoch, Duration::ZERO).await;
                        }
                        states.close_all();
                        if let Err(e) = cache.clear() {
                            warn!(error = %e, "cannot write the local cache");
                        }
                        ids.generation = 0;
                        hello_tx.send_modify(|h| h.generation = 0);
                        sent.clear();
                        lease_until = None;
                        fenced = false;
                        for l in &mut links {
                            l.out = None;
                            l.reset.send_modify(|n| *n += 1);
                        }
                        cfg.metrics.session_ended();
                    }
                    LinkEvent::Message { index, msg: m } => match m {
                        server_message::Msg::Ack(ack) => {
                            links[index].last_ack = Instant::now();
                            cfg.metrics.ack_received();
                            // TTL 0: a standby's ack, which keeps the link but renews nothing.
                            if ack.lease_ttl_ms > 0 {
                                if let Some(&at) = sent.get(&ack.seq) {
                                    let until = at + Duration::from_millis(ack.lease_ttl_ms);
                                    if lease_until.is_none_or(|u| until > u) {
                                        lease_until = Some(until);
                                        states.set_lease(Some(until.into_std()));
                                        if until > Instant::now() {
                                            supervisor.extend_leases(until - Instant::now());
                                            fenced = false;
                                        }
                                    }
                                }
                                sent.retain(|s, _| *s > ack.seq);
                            }
                        }
                        server_message::Msg::Assign(a) => {
                            if let Some(task) = TaskId::parse(&a.task)
                                && versions.get(&task).is_none_or(|(e, _)| e.0 <= a.epoch)
                            {
                                versions.insert(task, (FencingToken(a.epoch), a.version));
                            }
                            assign(&cfg, &supervisor, &a, &links, &mut endpoints, &mut states, &opened_tx, &mut cache);
                            note_running(&hello_tx, &supervisor, &states, &health, &endpoints, &versions);
                        }
                        server_message::Msg::Stop(s) => {
                            let Some(task) = TaskId::parse(&s.task) else { continue };
                            // A state still opening for it is closed once opened.
                            states.forget_opening(&task, FencingToken(s.epoch));
                            if states.is_warm(&task, FencingToken(s.epoch)) {
                                // Nothing runs: stopping it is releasing its state.
                                let _ = stop_done_tx.send((task, FencingToken(s.epoch)));
                                continue;
                            }
                            let sup = supervisor.clone();
                            let done = stop_done_tx.clone();
                            let epoch = FencingToken(s.epoch);
                            tokio::spawn(async move {
                                if sup.stop(&task, epoch, Duration::from_millis(s.grace_ms)).await.is_ok() {
                                    let _ = done.send((task, epoch));
                                }
                            });
                        }
                        server_message::Msg::Probe(p) => {
                            let Some(tx) = links[index].out.clone() else { continue };
                            tokio::spawn(async move {
                                let limit = Duration::from_millis(p.timeout_ms.clamp(10, 10_000));
                                let outcome = match p.target_addr.parse::<SocketAddr>() {
                                    Ok(addr) => warden_probe::probe::http(addr, limit).await,
                                    Err(_) => ProbeOutcome::Skipped,
                                };
                                let _ = tx.try_send(msg(agent_message::Msg::ProbeResult(v1::ProbeResult {
                                    request_id: p.request_id,
                                    outcome: convert::outcome_to_wire(outcome) as i32,
                                })));
                            });
                        }
                        server_message::Msg::Replica(r) => match convert::replica_from_wire(&r) {
                            Ok((task, epoch, order)) => {
                                let before = states.progress(&task).fence;
                                states.set_replica(&task, epoch, order);
                                if states.progress(&task).fence != before {
                                    // A new state epoch (a fence before a promotion at
                                    // quorum, a promotion): the server waits for what this
                                    // replica now holds; tell it now, not at the next tick.
                                    beat.reset_immediately();
                                }
                                if let Some(spec) = states.promoted_warm(&task) {
                                    info!(task = %task, epoch = epoch.0, "warm standby promoted: starting its task");
                                    if let Err(e) = supervisor.start(spec) {
                                        let phase = match e {
                                            SupervisorError::NoLease { .. } => CopyPhase::Fenced,
                                            _ => CopyPhase::Failed,
                                        };
                                        refuse(&links, &task, epoch, phase, e.to_string());
                                    }
                                    note_running(&hello_tx, &supervisor, &states, &health, &endpoints, &versions);
                                }
                            }
                            Err(e) => warn!(error = %e, "role order ignored"),
                        },
                        server_message::Msg::Reload(r) => {
                            let copies = Copies { health: &health, endpoints: &endpoints };
                            reload(&cfg, &supervisor, &r, &links, copies, &versions, &mut reloading, &reload_done_tx);
                        }
                        server_message::Msg::Rejoin(_) | server_message::Msg::Welcome(_) => {}
                    },
                }
            }
            Some(d) = reload_done_rx.recv() => {
                let copies = Copies { health: &health, endpoints: &endpoints };
                reload_done(d, &links, copies, &mut versions, &mut reloading, &mut cache);
                note_running(&hello_tx, &supervisor, &states, &health, &endpoints, &versions);
            }
            Some((task, epoch)) = stop_done_rx.recv() => {
                let stopped = "stopped on request".to_string();
                broadcast(&links, &task_report(&task, epoch, CopyPhase::Stopped, false, String::new(), stopped, None, 0));
                forget_endpoint(&mut endpoints, &task, epoch);
                states.release(&task, epoch);
                if let Err(e) = cache.remove(&task, epoch) {
                    warn!(error = %e, "cannot write the local cache");
                }
                note_running(&hello_tx, &supervisor, &states, &health, &endpoints, &versions);
            }
            Some(o) = opened_rx.recv() => {
                let Some(task) = TaskId::parse(&o.assign.task) else { continue };
                let epoch = FencingToken(o.assign.epoch);
                let installed = match o.result {
                    Ok(store) => states.install(&task, epoch, &o.spec, store),
                    Err(why) => {
                        states.forget_opening(&task, epoch);
                        Err(why)
                    }
                };
                match installed {
                    // The state is open: the assignment goes ahead.
                    Ok(Some(_)) => {
                        assign(&cfg, &supervisor, &o.assign, &links, &mut endpoints, &mut states, &opened_tx, &mut cache);
                        note_running(&hello_tx, &supervisor, &states, &health, &endpoints, &versions);
                    }
                    Ok(None) => {}
                    Err(why) => refuse(&links, &task, epoch, CopyPhase::Failed, why),
                }
            }
            Some(ev) = events.recv() => {
                if matches!(ev.kind, TaskEventKind::Restarting { .. }) {
                    cfg.metrics.task_restarted();
                }
                if matches!(ev.kind, TaskEventKind::Exited { oom_killed: true, .. }) {
                    cfg.metrics.task_oom_killed();
                }
                report_event(&ev, &links, &mut health, &mut endpoints, &versions);
                if matches!(ev.kind, TaskEventKind::Failed { .. } | TaskEventKind::Fenced | TaskEventKind::Stopped) {
                    // The copy is over: its state is closed (kept on disk), its replication
                    // stopped; a primary's store of a fenced copy refused writes already.
                    states.release(&ev.task, ev.epoch);
                }
                let ended = match &ev.kind {
                    TaskEventKind::Failed { .. } | TaskEventKind::Fenced | TaskEventKind::Stopped => true,
                    TaskEventKind::Exited { exit, .. } => exit.success(),
                    _ => false,
                };
                if ended && let Err(e) = cache.remove(&ev.task, ev.epoch) {
                    warn!(error = %e, "cannot write the local cache");
                }
                note_running(&hello_tx, &supervisor, &states, &health, &endpoints, &versions);
            }
        }
    }
    if exit == Exit::Stopped {
        info!("agent stopping: stopping tasks");
        supervisor.shutdown(cfg.shutdown_grace).await;
        // Every copy has ended: nothing to resume.
        if let Err(e) = cache.clear() {
            warn!(error = %e, "cannot write the local cache");
        }
    }
    states.close_all();
    repl_cancel.cancel();
    // The Leave (or Restarting) and the last reports are queued on the links: closing the
    // queues ends each stream after them; the server then closes its side.
    let open = links.iter().filter(|l| l.out.is_some()).count();
    for l in &mut links {
        l.out = None;
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let mut closed = 0;
        while closed < open {
            match link_rx.recv().await {
                Some(LinkEvent::Down { .. } | LinkEvent::Rejoin { .. }) => closed += 1,
                Some(_) => {}
                None => break,
            }
        }
    })
    .await;
    links_cancel.cancel();
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(1), h).await;
    }
    Ok(exit)
}

/// Create `dir` (and its parents) readable by this user only: the shims' sockets control
/// tasks.
fn make_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Take over the tasks a previous agent process left running: every shim that answers on its
/// socket and runs a copy the cache holds is adopted; one the cache does not hold (or a
/// stateful copy, whose state API died with the old process) is stopped.
async fn adopt_shims(
    cfg: &AgentConfig,
    supervisor: &Supervisor,
    cache: &crate::cache::AgentCache,
    dir: &std::path::Path,
    endpoints: &mut Endpoints,
) {
    let found = crate::supervisor::find_shims(dir).await;
    if found.stale_removed > 0 {
        info!(
            removed = found.stale_removed,
            "removed the sockets of dead shims"
        );
    }
    for e in &found.errors {
        warn!(error = %e, "shim socket not usable");
    }
    let cached: BTreeMap<TaskId, crate::cache::CachedCopy> = cache
        .copies()
        .into_iter()
        .map(|c| (c.task.clone(), c))
        .collect();
    let mut adopted = 0;
    for shim in found.shims {
        let copy = TaskId::parse(&shim.task)
            .and_then(|t| cached.get(&t))
            .filter(|c| c.epoch() == shim.epoch && c.assign.state_json.is_empty());
        let Some(copy) = copy else {
            warn!(task = %shim.task, epoch = shim.epoch.0, "a shim runs a copy this agent does not hold (or a stateful one); stopping it");
            tokio::spawn(shim.stop(Duration::from_secs(5), Duration::from_secs(10)));
            continue;
        };
        let spec = match spec_for(cfg, &copy.assign, endpoints) {
            Ok((spec, _)) => spec,
            Err(why) => {
                warn!(task = %shim.task, %why, "cannot take over a shim's task; stopping it");
                tokio::spawn(shim.stop(Duration::from_secs(5), Duration::from_secs(10)));
                continue;
            }
        };
        match supervisor.adopt(spec, shim) {
            Ok(()) => adopted += 1,
            Err(e) => warn!(error = %e, "cannot take over a shim's task"),
        }
    }
    if adopted > 0 {
        info!(adopted, "took over the tasks of the previous agent process");
        cfg.metrics.tasks_adopted(adopted);
    }
}

/// Offline: start the service copies of the cache that do not run (never a singleton, which
/// needs a lease; never a stateful copy). Returns how many were started.
#[allow(clippy::too_many_arguments)]
fn start_offline(
    cfg: &AgentConfig,
    supervisor: &Supervisor,
    cache: &mut crate::cache::AgentCache,
    links: &[Link],
    endpoints: &mut Endpoints,
    states: &mut crate::state::TaskStates,
    opened: &mpsc::UnboundedSender<StateOpened>,
) -> usize {
    let running: std::collections::HashSet<TaskId> =
        supervisor.tasks().into_iter().map(|t| t.task).collect();
    let mut started = 0;
    for copy in cache.copies() {
        if copy.assign.singleton
            || !copy.assign.state_json.is_empty()
            || running.contains(&copy.task)
        {
            continue;
        }
        assign(
            cfg,
            supervisor,
            &copy.assign,
            links,
            endpoints,
            states,
            opened,
            cache,
        );
        cfg.metrics.offline_start();
        started += 1;
    }
    started
}

/// What outlives one session: the agent's generation, and the last heartbeat number. Numbers
/// keep growing across the sessions of one generation: the server ignores a heartbeat whose
/// number it has seen, so a reconnect that started again from 1 would renew nothing until it
/// passed the old session's count (the agent would lose its lease over and over).
#[derive(Default)]
struct Ids {
    generation: u64,
    last_seq: u64,
}

/// The endpoint (`host:port`) of each service copy, by task: chosen once per assignment (task
/// and epoch), so a repeated order or an in-place restart keeps its port.
type Endpoints = BTreeMap<TaskId, (FencingToken, SocketAddr)>;

/// The job version whose configuration each copy runs: its assignment's, or its last reload's.
type Versions = BTreeMap<TaskId, (FencingToken, u64)>;

/// The version a copy reports (0: not known).
fn version_of(versions: &Versions, task: &TaskId, epoch: FencingToken) -> u64 {
    versions
        .get(task)
        .filter(|(e, _)| *e == epoch)
        .map_or(0, |(_, v)| *v)
}

/// What a link says in its Hello: the generation (0 asks the leader for a new one) and the
/// copies running.
#[derive(Clone, Debug, Default)]
struct HelloState {
    generation: u64,
    running: Vec<v1::RunningTask>,
}

/// The runtime's side of one server's link.
/// A heartbeat lists the agent's copies at least this often (in heartbeats), even when they
/// did not change: a server that missed a list (a rate limit dropped that heartbeat) learns
/// them again within ten heartbeats.
const LIST_EVERY: u64 = 10;

struct Link {
    server: String,
    /// The open session's outbound queue.
    out: Option<Tx>,
    last_ack: Instant,
    /// Tells the link to drop its session and open a new one (a counter: a request made
    /// before a session opened is not taken as one for it).
    reset: watch::Sender<u64>,
    /// The server of the open session accepts heartbeats whose copies are "unchanged".
    accepts_unchanged: bool,
    /// The server of the open session sent anomaly settings: the agent tells it its own
    /// verdicts.
    judged: bool,
    /// The copies the last heartbeat on the open session that listed them listed, and its
    /// number.
    listed: Option<(u64, Vec<v1::RunningTask>)>,
}

/// Keep the copies a new session's Hello reports current (the server prunes orders the Hello
/// does not confirm), without waking links that wait to reconnect.
fn note_running(
    hello: &watch::Sender<HelloState>,
    supervisor: &Supervisor,
    states: &crate::state::TaskStates,
    health: &BTreeMap<TaskId, bool>,
    endpoints: &Endpoints,
    versions: &Versions,
) {
    let running = running_tasks(supervisor, states, health, endpoints, versions);
    hello.send_if_modified(|h| {
        h.running = running;
        false
    });
}

/// Send `m` on every open link (a full queue drops it for that link; heartbeats and reports
/// are repeated or superseded by the next heartbeat).
fn broadcast(links: &[Link], m: &v1::AgentMessage) {
    for l in links {
        if let Some(out) = &l.out {
            let _ = out.try_send(m.clone());
        }
    }
}

/// What a link tells the runtime. Most events are server messages, the large variant: boxing
/// it would cost an allocation per message for no saving.
#[allow(clippy::large_enum_variant)]
enum LinkEvent {
    /// A session is open; `out` is its outbound queue.
    Up {
        index: usize,
        out: Tx,
        welcome: v1::Welcome,
    },
    /// A message from the link's server.
    Message {
        index: usize,
        msg: server_message::Msg,
    },
    /// The session ended (or could not be opened); the link retries by itself.
    Down { index: usize, reason: String },
    /// The server says this generation is over.
    Rejoin { reason: String },
}

struct LinkParams {
    index: usize,
    server: String,
    name: String,
    probe_addr: SocketAddr,
    state_addr: SocketAddr,
    capacity: Resources,
    tls: Option<crate::tls::ClientTls>,
    join_token: Option<crate::tls::JoinToken>,
    reattach_window: Duration,
}

/// One server's link: open a session, forward what the server says, re-open it when it ends
/// (with backoff, at once when the generation changes).
async fn link_loop(
    p: LinkParams,
    events: mpsc::Sender<LinkEvent>,
    mut hello: watch::Receiver<HelloState>,
    mut reset: watch::Receiver<u64>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !cancel.is_cancelled() {
        let opened = Instant::now();
        reset.mark_unchanged();
        let reason = link_session(&p, &events, &hello, &mut reset, &cancel).await;
        if cancel.is_cancelled() {
            break;
        }
        if opened.elapsed() > Duration::from_secs(5) {
            backoff = Duration::from_millis(100);
        }
        let rejoin = matches!(reason, LinkEnd::Rejoin(_));
        let ev = match reason {
            LinkEnd::Rejoin(reason) => LinkEvent::Rejoin { reason },
            LinkEnd::Lost(reason) => LinkEvent::Down {
                index: p.index,
                reason,
            },
        };
        if events.send(ev).await.is_err() {
            break;
        }
        if rejoin {
            backoff = Duration::from_millis(100);
        }
        hello.mark_unchanged();
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(backoff) => {}
            // A new generation (or a rejoin): try at once.
            _ = hello.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

enum LinkEnd {
    Rejoin(String),
    Lost(String),
}

async fn link_session(
    p: &LinkParams,
    events: &mpsc::Sender<LinkEvent>,
    hello: &watch::Receiver<HelloState>,
    reset: &mut watch::Receiver<u64>,
    cancel: &CancellationToken,
) -> LinkEnd {
    let server = p.server.as_str();
    // Certificates rotated on disk are picked up here, at each connection (file reads: off
    // the async workers).
    let tls = match &p.tls {
        Some(t) => {
            let t = t.clone();
            let fallback = t.clone();
            Some(
                tokio::task::spawn_blocking(move || t.reloaded())
                    .await
                    .unwrap_or(fallback),
            )
        }
        None => None,
    };
    let endpoint = match crate::tls::endpoint(server, tls.as_ref()) {
        Ok(e) => e,
        Err(e) => return LinkEnd::Lost(e.to_string()),
    };
    let channel = tokio::select! {
        () = cancel.cancelled() => return LinkEnd::Lost("cancelled".into()),
        c = endpoint.connect() => match c {
            Ok(c) => c,
            Err(e) => return LinkEnd::Lost(crate::tls::connect_failed(server, &e)),
        },
    };
    let mut client = v1::agent_session_client::AgentSessionClient::with_interceptor(
        channel,
        crate::tls::join_token(p.join_token.as_ref()),
    )
    .max_decoding_message_size(warden_proto::AGENT_MAX_MESSAGE_BYTES)
    .max_encoding_message_size(warden_proto::AGENT_MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel::<v1::AgentMessage>(256);
    let (generation, running) = {
        let h = hello.borrow();
        (h.generation, h.running.clone())
    };
    let hello = v1::Hello {
        name: p.name.clone(),
        generation,
        probe_addr: p.probe_addr.to_string(),
        capacity: Some(v1::Resources {
            cpu_millis: p.capacity.cpu_millis,
            memory_mb: p.capacity.memory_mb,
            memory_high_mb: 0,
        }),
        running,
        version: env!("CARGO_PKG_VERSION").to_string(),
        state_addr: p.state_addr.to_string(),
        reattach_window_ms: u64::try_from(p.reattach_window.as_millis()).unwrap_or(u64::MAX),
        protocol_min: warden_proto::PROTOCOL_OLDEST,
        protocol_max: warden_proto::PROTOCOL_NEWEST,
    };
    if tx
        .send(msg(agent_message::Msg::Hello(hello)))
        .await
        .is_err()
    {
        return LinkEnd::Lost("session channel closed".into());
    }
    let response = tokio::select! {
        () = cancel.cancelled() => return LinkEnd::Lost("cancelled".into()),
        // A silently cut link would leave the call hanging: bound it.
        r = tokio::time::timeout(Duration::from_secs(5), client.session(ReceiverStream::new(rx))) => match r {
            Ok(r) => r,
            Err(_) => return LinkEnd::Lost("no answer to the session request within 5s".into()),
        },
    };
    let mut inbound = match response {
        Ok(r) => r.into_inner(),
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
            return LinkEnd::Rejoin(status.message().to_string());
        }
        Err(status) => return LinkEnd::Lost(crate::tls::session_refused(server, &status)),
    };
    // The Welcome tells us our generation and the timing.
    let welcome = match tokio::time::timeout(Duration::from_secs(5), inbound.next()).await {
        Ok(Some(Ok(v1::ServerMessage {
            msg: Some(server_message::Msg::Welcome(w)),
        }))) => w,
        Ok(Some(Ok(v1::ServerMessage {
            msg: Some(server_message::Msg::Rejoin(r)),
        }))) => return LinkEnd::Rejoin(r.reason),
        other => return LinkEnd::Lost(format!("no welcome: {other:?}")),
    };
    if let Err(e) = warden_proto::negotiate(
        warden_proto::declared(welcome.protocol_min, welcome.protocol_max),
        &format!("server {server}"),
    ) {
        error!(server, reason = %e, "no session protocol in common with this server");
        return LinkEnd::Lost(e);
    }
    let up = LinkEvent::Up {
        index: p.index,
        out: tx,
        welcome,
    };
    if events.send(up).await.is_err() {
        return LinkEnd::Lost("agent stopping".into());
    }
    loop {
        tokio::select! {
            () = cancel.cancelled() => return LinkEnd::Lost("cancelled".into()),
            _ = reset.changed() => return LinkEnd::Lost("reset by the agent".into()),
            m = inbound.next() => {
                let m = match m {
                    Some(Ok(v1::ServerMessage { msg: Some(m) })) => m,
                    Some(Ok(_)) => continue,
                    Some(Err(status)) => return LinkEnd::Lost(format!("stream: {status}")),
                    None => return LinkEnd::Lost("server closed the session".into()),
                };
                if let server_message::Msg::Rejoin(r) = m {
                    return LinkEnd::Rejoin(r.reason);
                }
                let ev = LinkEvent::Message { index: p.index, msg: m };
                if events.send(ev).await.is_err() {
                    return LinkEnd::Lost("agent stopping".into());
                }
            }
        }
    }
}

fn running_tasks(
    supervisor: &Supervisor,
    states: &crate::state::TaskStates,
    health: &BTreeMap<TaskId, bool>,
    endpoints: &Endpoints,
    versions: &Versions,
) -> Vec<v1::RunningTask> {
    // A warm standby's copy runs no process: it is reported running, its state following.
    let warm = states.warm_copies().into_iter().map(|(task, epoch)| {
        convert::copy_to_wire(&CopyReport::new(
            task,
            epoch,
            CopyPhase::Running,
            true,
            String::new(),
        ))
    });
    supervisor
        .tasks()
        .into_iter()
        .filter(|r| r.state.is_active())
        .map(|r| {
            let healthy = health.get(&r.task).copied().unwrap_or(true);
            let endpoint = endpoint_of(endpoints, &r.task, r.epoch);
            let version = version_of(versions, &r.task, r.epoch);
            convert::copy_to_wire(&CopyReport {
                version,
                ..CopyReport::new(r.task, r.epoch, phase_of(&r.state), healthy, endpoint)
            })
        })
        .chain(warm)
        .collect()
}

/// Forget the endpoint of a copy that ended (not that of a newer copy of the same slot).
fn forget_endpoint(endpoints: &mut Endpoints, task: &TaskId, epoch: FencingToken) {
    if endpoints.get(task).is_some_and(|(e, _)| *e == epoch) {
        endpoints.remove(task);
    }
}

/// The reported endpoint of a copy: `host:port`, or empty when it serves none.
fn endpoint_of(endpoints: &Endpoints, task: &TaskId, epoch: FencingToken) -> String {
    endpoints
        .get(task)
        .filter(|(e, _)| *e == epoch)
        .map(|(_, addr)| addr.to_string())
        .unwrap_or_default()
}

/// The port of a new service copy on `ip`: the fixed one, or (`requested == 0`) a free one,
/// found by binding port 0 and releasing it. The task binds it moments later; another process
/// taking it in between makes the task fail to bind, and its restart (same port) or a
/// reassignment (a new one) recovers.
pub fn pick_port(ip: std::net::IpAddr, requested: u16) -> std::io::Result<u16> {
    if requested != 0 {
        return Ok(requested);
    }
    let listener = std::net::TcpListener::bind((ip, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Name of the test-only switch that breaks self-fencing (see [`fencing_broken_for_tests`]).
pub const BREAK_FENCING_ENV: &str = "WARDEN_TEST_BREAK_FENCING";

/// A deliberately broken fencing rule, for tests only: with `WARDEN_TEST_BREAK_FENCING=1` a
/// *debug build* of the agent runs singletons like services — no shim deadline, no fencing
/// when the lease runs out — so that a partitioned agent keeps its singleton while the server
/// replaces it. The chaos harness's test uses it to prove that its at-most-one checker catches
/// a violation. Release builds ignore the variable.
pub fn fencing_broken_for_tests() -> bool {
    cfg!(debug_assertions) && std::env::var(BREAK_FENCING_ENV).is_ok_and(|v| v == "1")
}

/// What the agent knows of its copies' health and endpoints.
#[derive(Clone, Copy)]
struct Copies<'a> {
    health: &'a BTreeMap<TaskId, bool>,
    endpoints: &'a Endpoints,
}

/// A reload under way: its files are written, its signal is out, the shim's answer awaited.
#[derive(Debug)]
struct ReloadDone {
    order: v1::ReloadTask,
    /// The shim's answer: signalled, or why not.
    result: Result<(), String>,
}

/// A reload order: rewrite the running copy's configuration files to exactly the order's and
/// have its shim signal its main process (its health checks start afresh); the outcome comes
/// back as a [`ReloadDone`] once the shim answered. A repeated order of a version the copy runs
/// already is only confirmed again; one of an older version than it runs, one already under
/// way, and one for a copy not running here are ignored (the server learns of the copy from
/// the heartbeats).
#[allow(clippy::too_many_arguments)]
fn reload(
    cfg: &AgentConfig,
    supervisor: &Supervisor,
    r: &v1::ReloadTask,
    links: &[Link],
    copies: Copies<'_>,
    versions: &Versions,
    reloading: &mut std::collections::BTreeSet<(TaskId, u64)>,
    done: &mpsc::UnboundedSender<ReloadDone>,
) {
    let Some(task) = TaskId::parse(&r.task) else {
        warn!(task = %r.task, "reload with an invalid task id ignored");
        return;
    };
    let epoch = FencingToken(r.epoch);
    if !supervisor.running().contains(&(task.clone(), epoch)) {
        debug!(task = %task, epoch = epoch.0, "reload of a copy not running here ignored");
        return;
    }
    let current = version_of(versions, &task, epoch);
    if r.version < current || reloading.contains(&(task.clone(), r.version)) {
        return; // a late order, or one being carried out
    }
    if current == r.version {
        let healthy = copies.health.get(&task).copied().unwrap_or(true);
        let message = format!("config at version {}", r.version);
        report_reload(links, copies, &task, epoch, healthy, message, r.version);
        return;
    }
    let answer = reload_signal(&r.signal).and_then(|signal| {
        rewrite_config(&cfg.data_dir, &task, epoch, &r.config)?;
        supervisor
            .signal(&task, epoch, signal)
            .map_err(|e| e.to_string())
    });
    let answer = match answer {
        Ok(a) => a,
        Err(why) => {
            let _ = done.send(ReloadDone {
                order: r.clone(),
                result: Err(why),
            });
            return;
        }
    };
    reloading.insert((task, r.version));
    let (order, done) = (r.clone(), done.clone());
    tokio::spawn(async move {
        let result = match tokio::time::timeout(Duration::from_secs(5), answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the copy ended before it was signalled".to_string()),
            Err(_) => Err("its shim did not answer the signal within 5 s".to_string()),
        };
        let _ = done.send(ReloadDone { order, result });
    });
}

/// A reload's outcome: the copy runs the order's version from now on (its cache entry too),
/// or its failure is reported (`config reload failed: …`, which fails a rollout).
fn reload_done(
    d: ReloadDone,
    links: &[Link],
    copies: Copies<'_>,
    versions: &mut Versions,
    reloading: &mut std::collections::BTreeSet<(TaskId, u64)>,
    cache: &mut crate::cache::AgentCache,
) {
    use warden_core::controller::{RELOAD_FAILED, RELOADED};
    let r = &d.order;
    let Some(task) = TaskId::parse(&r.task) else {
        return;
    };
    let epoch = FencingToken(r.epoch);
    reloading.remove(&(task.clone(), r.version));
    let healthy = copies.health.get(&task).copied().unwrap_or(true);
    let (healthy, message) = match d.result {
        Ok(()) => {
            info!(task = %task, epoch = epoch.0, version = r.version, signal = %r.signal, "configuration reloaded");
            versions.insert(task.clone(), (epoch, r.version));
            // A new agent process resumes the copy with these files and this version.
            if let Some(mut c) = cache
                .copies()
                .into_iter()
                .find(|c| c.task == task && c.epoch() == epoch)
            {
                c.assign.config.clone_from(&r.config);
                c.assign.version = r.version;
                if let Err(e) = cache.put(&task, &c.assign, c.endpoint) {
                    warn!(error = %e, "cannot write the local cache");
                }
            }
            (
                healthy,
                format!("{RELOADED} to version {} ({})", r.version, r.signal),
            )
        }
        Err(why) => {
            warn!(task = %task, epoch = epoch.0, version = r.version, error = %why, "configuration not reloaded");
            (false, format!("{RELOAD_FAILED}: {why}"))
        }
    };
    report_reload(links, copies, &task, epoch, healthy, message, r.version);
}

/// Report a running copy's reload (done, failed, or already done) as of `version`.
fn report_reload(
    links: &[Link],
    copies: Copies<'_>,
    task: &TaskId,
    epoch: FencingToken,
    healthy: bool,
    message: String,
    version: u64,
) {
    let endpoint = endpoint_of(copies.endpoints, task, epoch);
    let m = task_report(
        task,
        epoch,
        CopyPhase::Running,
        healthy,
        endpoint,
        message,
        None,
        version,
    );
    broadcast(links, &m);
}

/// The number of a reload signal named by the server.
fn reload_signal(name: &str) -> Result<i32, String> {
    use nix::sys::signal::Signal;
    use warden_core::release::ReloadSignal;
    let signal = match ReloadSignal::parse(name) {
        Some(ReloadSignal::Hup) => Signal::SIGHUP,
        Some(ReloadSignal::Usr1) => Signal::SIGUSR1,
        Some(ReloadSignal::Usr2) => Signal::SIGUSR2,
        Some(ReloadSignal::Winch) => Signal::SIGWINCH,
        None => return Err(format!("unknown reload signal {name:?}")),
    };
    Ok(signal as i32)
}

/// Rewrite a running copy's configuration directory to hold exactly `files`: the new tree is
/// written beside it and exchanged with it in one `renameat2(RENAME_EXCHANGE)`, so the task
/// (and a restart of it) sees the old files or the new ones, never a mix.
fn rewrite_config(
    data_dir: &std::path::Path,
    task: &TaskId,
    epoch: FencingToken,
    files: &[v1::ConfigFile],
) -> Result<(), String> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    let dir = config_dir(data_dir, task, epoch);
    if !dir.is_dir() {
        return Err(format!(
            "the copy has no configuration directory ({})",
            dir.display()
        ));
    }
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".next");
    let next = dir.with_file_name(name);
    let _ = std::fs::remove_dir_all(&next);
    std::fs::create_dir(&next).map_err(|e| format!("create {}: {e}", next.display()))?;
    let written = write_files(&next, files).and_then(|()| {
        renameat2(
            AT_FDCWD,
            &next,
            AT_FDCWD,
            &dir,
            RenameFlags::RENAME_EXCHANGE,
        )
        .map_err(|e| format!("exchange {} with {}: {e}", next.display(), dir.display()))
    });
    // After the exchange `next` holds the old files; on failure, the half-written new ones.
    let _ = std::fs::remove_dir_all(&next);
    written
}

/// Write `files` below `dir` (created when missing, readable by the task's user), each
/// atomically. Paths are checked again here: nothing is written outside `dir`.
fn write_files(dir: &std::path::Path, files: &[v1::ConfigFile]) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let io =
        |what: &str, p: &std::path::Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    for f in files {
        if !warden_core::types::valid_config_path(&f.path) {
            return Err(format!(
                "config file path {:?} is not a relative path",
                f.path
            ));
        }
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
        }
        let tmp = path.with_extension("warden-tmp");
        std::fs::write(&tmp, f.content.as_bytes()).map_err(|e| io("write", &tmp, e))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| io("chmod", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io("rename", &path, e))?;
    }
    if !files.is_empty() {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    }
    Ok(())
}

/// The configuration directory of a copy: `<data>/config/<job>.<index>@<epoch>/`.
fn config_dir(
    data_dir: &std::path::Path,
    task: &TaskId,
    epoch: FencingToken,
) -> std::path::PathBuf {
    data_dir
        .join("config")
        .join(format!("{}.{}@{}", task.job, task.index, epoch.0))
}

/// Write a copy's configuration files into `<data>/config/<job>.<index>@<epoch>/` (readable by
/// the task's user, written atomically file by file) and remove the directories of the slot's
/// older copies; `None` (and nothing written) for a copy without files. Paths are checked again
/// here: the agent writes only below the directory.
fn write_config(
    data_dir: &std::path::Path,
    task: &TaskId,
    epoch: FencingToken,
    files: &[v1::ConfigFile],
) -> Result<Option<std::path::PathBuf>, String> {
    use std::os::unix::fs::PermissionsExt;
    let root = data_dir.join("config");
    let prefix = format!("{}.{}@", task.job, task.index);
    let dir = config_dir(data_dir, task, epoch);
    write_files(&dir, files)?;
    if !files.is_empty() {
        let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755));
    }
    // Older copies of this slot are replaced: their files go.
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(old) = name
                .strip_prefix(&prefix)
                .and_then(|n| n.parse::<u64>().ok())
                && old < epoch.0
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok((!files.is_empty()).then_some(dir))
}

/// The task spec of an order, as this agent runs it: its environment (the job's, `PATH`, and
/// for a service `WARDEN_HOST`/`WARDEN_PORT` — the port chosen once per copy), its health
/// check and its user. Also returns the endpoint of a service copy. No state is opened.
fn spec_for(
    cfg: &AgentConfig,
    a: &v1::Assign,
    endpoints: &mut Endpoints,
) -> Result<(TaskSpec, Option<SocketAddr>), String> {
    let task = TaskId::parse(&a.task).ok_or_else(|| format!("invalid task id {:?}", a.task))?;
    let health: Option<HealthCheck> = if a.health_json.is_empty() {
        None
    } else {
        serde_json::from_str(&a.health_json).ok()
    };
    let mut env: BTreeMap<String, String> = a.env.clone().into_iter().collect();
    env.entry("PATH".into())
        .or_insert_with(|| crate::isolation::SAFE_PATH.into());
    let epoch = FencingToken(a.epoch);
    let mut endpoint = None;
    if let Some(service) = &a.service {
        let ip = cfg.probe_addr.ip();
        let known = endpoints
            .get(&task)
            .filter(|(e, _)| *e == epoch)
            .map(|(_, addr)| *addr);
        let addr = match known {
            Some(addr) => addr,
            None => {
                let requested = u16::try_from(service.port).unwrap_or(0);
                let port =
                    pick_port(ip, requested).map_err(|e| format!("pick a port on {ip}: {e}"))?;
                SocketAddr::new(ip, port)
            }
        };
        endpoints.insert(task.clone(), (epoch, addr));
        env.insert("WARDEN_HOST".into(), addr.ip().to_string());
        env.insert("WARDEN_PORT".into(), addr.port().to_string());
        endpoint = Some(addr);
    }
    if let Some(dir) = write_config(&cfg.data_dir, &task, epoch, &a.config)? {
        env.insert("WARDEN_CONFIG_DIR".into(), dir.display().to_string());
    }
    // A user of the job's own (`--task-uids`).
    let run_as = match &cfg.task_uids {
        None => None,
        Some(uids) => Some(
            uids.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .user_for(task.job.as_str())?,
        ),
    };
    let spec = TaskSpec {
        task: TaskId::new(JobName::new(task.job.as_str()), task.index),
        epoch,
        command: a.command.clone(),
        args: a.args.clone(),
        env,
        leased: a.singleton && !fencing_broken_for_tests(),
        log_dir: cfg.data_dir.join("logs"),
        health,
        resources: a
            .resources
            .as_ref()
            .map_or_else(Resources::default, Resources::from),
        run_as,
    };
    Ok((spec, endpoint))
}

#[allow(clippy::too_many_arguments)]
fn assign(
    cfg: &AgentConfig,
    supervisor: &Supervisor,
    a: &v1::Assign,
    links: &[Link],
    endpoints: &mut Endpoints,
    states: &mut crate::state::TaskStates,
    opened: &mpsc::UnboundedSender<StateOpened>,
    cache: &mut crate::cache::AgentCache,
) {
    let Some(task) = TaskId::parse(&a.task) else {
        warn!(task = %a.task, "assignment with an invalid task id ignored");
        return;
    };
    let epoch = FencingToken(a.epoch);
    let (mut spec, endpoint) = match spec_for(cfg, a, endpoints) {
        Ok(s) => s,
        Err(why) => {
            refuse(links, &task, epoch, CopyPhase::Failed, why);
            return;
        }
    };
    // The job's user is known before its state socket is bound.
    if let Some(u) = &spec.run_as {
        states.set_job_owner(task.job.as_str(), (u.uid, u.gid));
    }
    if !a.state_json.is_empty() {
        let state_spec = match serde_json::from_str::<warden_core::state::StateSpec>(&a.state_json)
        {
            Ok(spec) => spec,
            Err(e) => {
                refuse(
                    links,
                    &task,
                    epoch,
                    CopyPhase::Failed,
                    format!("invalid [state] table: {e}"),
                );
                return;
            }
        };
        if !a.replica_json.is_empty() {
            match serde_json::from_str::<warden_core::state::ReplicaOrder>(&a.replica_json) {
                Ok(order) => states.set_replica(&task, epoch, order),
                Err(e) => {
                    let why = format!("invalid replica role: {e}");
                    refuse(links, &task, epoch, CopyPhase::Failed, why);
                    return;
                }
            }
        }
        let role = states.role_for(&task, epoch);
        match states.prepare(&task, epoch) {
            Ok(crate::state::Prepared::Ready(vars)) => {
                spec.env.extend(vars);
                if state_spec.mode == warden_core::state::StateMode::Warm
                    && role.is_some_and(|(r, _)| r == warden_state::store::Role::Standby)
                {
                    // A warm standby: the state follows the primary; the task starts when
                    // this copy is promoted.
                    info!(task = %task, epoch = epoch.0, "warm standby: following the primary, the task starts when promoted");
                    states.hold_warm(spec);
                    let report = task_report(
                        &task,
                        epoch,
                        CopyPhase::Running,
                        true,
                        String::new(),
                        "warm standby: its state follows the primary; the task starts when promoted".into(),
                        None,
                        a.version,
                    );
                    broadcast(links, &report);
                    return;
                }
            }
            // A repeated order: the open under way starts the task.
            Ok(crate::state::Prepared::Opening) => return,
            Ok(crate::state::Prepared::Open(dir)) => {
                // Off the loop (it sends the heartbeats): a large log takes a while to read.
                // The loop takes the assignment again once the state is open.
                let (a, tx, task) = (Box::new(a.clone()), opened.clone(), task.clone());
                let data_epoch = a.data_epoch;
                tokio::spawn(async move {
                    let result = tokio::task::spawn_blocking(move || {
                        crate::state::TaskStates::open_store(
                            &dir,
                            &task,
                            epoch,
                            &state_spec,
                            role,
                            data_epoch,
                        )
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("open the state: {e}")));
                    let _ = tx.send(StateOpened {
                        assign: a,
                        spec: state_spec,
                        result,
                    });
                });
                return;
            }
            Err(why) => {
                refuse(links, &task, epoch, CopyPhase::Failed, why);
                return;
            }
        }
    }
    // Written before the order is carried out: a new agent process resumes what this one
    // started, and an agent that restarts offline runs it again.
    if !cfg.reattach_window.is_zero()
        && let Err(e) = cache.put(&task, a, endpoint)
    {
        let why = format!(
            "cannot write the local cache {}: {e}",
            cache.path().display()
        );
        refuse(links, &task, epoch, CopyPhase::Failed, why);
        return;
    }
    if let Err(e) = supervisor.start(spec) {
        // Not started for lack of a lease is no failure of the task: the server restarts it
        // at once (with a new epoch), without a crash backoff.
        let phase = match e {
            SupervisorError::NoLease { .. } => CopyPhase::Fenced,
            _ => CopyPhase::Failed,
        };
        let _ = cache.remove(&task, epoch);
        refuse(links, &task, epoch, phase, e.to_string());
    }
}

/// How often the cgroups of running tasks are read for [`watch_usage`].
const USAGE_EVERY: Duration = Duration::from_secs(5);

/// Read every running task's cgroup and report the signals it raises (a few small files per
/// task: microseconds).
fn watch_usage(
    confine: &crate::supervisor::Confinement,
    supervisor: &Supervisor,
    watch: &mut crate::cgroup::UsageWatch,
    links: &[Link],
    health: &BTreeMap<TaskId, bool>,
    endpoints: &Endpoints,
    versions: &Versions,
) {
    let mut seen = std::collections::HashSet::new();
    for t in supervisor.tasks() {
        if !matches!(t.state, ProcessState::Running { .. }) {
            continue;
        }
        let name = crate::cgroup::task_cgroup_name(&t.task, t.epoch);
        let usage = crate::cgroup::usage(&confine.cgroups.task_dirs(&name));
        for signal in watch.observe(&name, usage) {
            let message = signal.message();
            info!(task = %t.task, epoch = t.epoch.0, %message, "task usage signal");
            let healthy = health.get(&t.task).copied().unwrap_or(true);
            let endpoint = endpoint_of(endpoints, &t.task, t.epoch);
            let report = task_report(
                &t.task,
                t.epoch,
                CopyPhase::Running,
                healthy,
                endpoint,
                message,
                None,
                version_of(versions, &t.task, t.epoch),
            );
            broadcast(links, &report);
        }
        seen.insert(name);
    }
    watch.retain(&seen);
}

/// A stateful assignment whose state was opened off the loop.
struct StateOpened {
    assign: Box<v1::Assign>,
    spec: warden_core::state::StateSpec,
    result: Result<warden_state::StateStore, String>,
}

fn refuse(links: &[Link], task: &TaskId, epoch: FencingToken, phase: CopyPhase, message: String) {
    warn!(task = %task, epoch = epoch.0, error = %message, "assignment refused");
    let report = task_report(task, epoch, phase, false, String::new(), message, None, 0);
    broadcast(links, &report);
}

fn report_event(
    ev: &TaskEvent,
    links: &[Link],
    health: &mut BTreeMap<TaskId, bool>,
    endpoints: &mut Endpoints,
    versions: &Versions,
) {
    let endpoint = endpoint_of(endpoints, &ev.task, ev.epoch);
    let (phase, exit_code, message, healthy) = match &ev.kind {
        TaskEventKind::Started { pid } => {
            health.entry(ev.task.clone()).or_insert(true);
            (
                CopyPhase::Running,
                None,
                format!("running as pid {pid}"),
                true,
            )
        }
        TaskEventKind::Health { healthy } => {
            health.insert(ev.task.clone(), *healthy);
            (
                CopyPhase::Running,
                None,
                format!(
                    "health check {}",
                    if *healthy { "passing" } else { "failing" }
                ),
                *healthy,
            )
        }
        TaskEventKind::Exited { exit, oom_killed } => (
            CopyPhase::Starting,
            None,
            if *oom_killed {
                format!(
                    "{}: went past its memory limit ({exit})",
                    warden_core::controller::OOM_KILLED
                )
            } else {
                format!("exited: {exit:?}")
            },
            false,
        ),
        TaskEventKind::Restarting { attempt, after } => (
            CopyPhase::Starting,
            None,
            format!("restart {attempt} in {after:?}"),
            false,
        ),
        TaskEventKind::Failed { reason } => {
            health.remove(&ev.task);
            forget_endpoint(endpoints, &ev.task, ev.epoch);
            (CopyPhase::Failed, None, reason.clone(), false)
        }
        TaskEventKind::Stopped => {
            health.remove(&ev.task);
            forget_endpoint(endpoints, &ev.task, ev.epoch);
            (CopyPhase::Stopped, None, "stopped".into(), false)
        }
        TaskEventKind::Fenced => {
            health.remove(&ev.task);
            forget_endpoint(endpoints, &ev.task, ev.epoch);
            (
                CopyPhase::Fenced,
                None,
                "fenced: lease ran out".into(),
                false,
            )
        }
    };
    let version = version_of(versions, &ev.task, ev.epoch);
    let report = task_report(
        &ev.task, ev.epoch, phase, healthy, endpoint, message, exit_code, version,
    );
    broadcast(links, &report);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn file(path: &str, content: &str) -> v1::ConfigFile {
        v1::ConfigFile {
            path: path.into(),
            content: content.into(),
        }
    }

    #[test]
    fn a_reload_rewrites_the_copys_directory_to_exactly_the_new_files() {
        let data = tempfile::tempdir().unwrap();
        let task = TaskId::new(JobName::new("web"), 0);
        let e = FencingToken(5);
        // No directory yet: nothing to reload.
        let err = rewrite_config(data.path(), &task, e, &[file("a.conf", "1")]).unwrap_err();
        assert!(err.contains("no configuration directory"), "{err}");
        let dir = write_config(
            data.path(),
            &task,
            e,
            &[file("a.conf", "1"), file("old/b.conf", "2")],
        )
        .unwrap()
        .unwrap();
        rewrite_config(
            data.path(),
            &task,
            e,
            &[file("a.conf", "3"), file("new/c.conf", "4")],
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a.conf")).unwrap(), "3");
        assert_eq!(
            std::fs::read_to_string(dir.join("new/c.conf")).unwrap(),
            "4"
        );
        assert!(!dir.join("old").exists(), "files of the version before go");
        assert_eq!(reload_signal("SIGHUP"), Ok(1));
        assert!(reload_signal("SIGKILL").is_err());
    }

    #[test]
    fn config_files_go_to_a_directory_per_copy_and_older_copies_lose_theirs() {
        let data = tempfile::tempdir().unwrap();
        let task = TaskId::new(JobName::new("web"), 3);
        let one = write_config(
            data.path(),
            &task,
            FencingToken(1),
            &[file("app.toml", "level = 1\n"), file("conf.d/x.conf", "x")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(one.join("app.toml")).unwrap(),
            "level = 1\n"
        );
        assert_eq!(
            std::fs::read_to_string(one.join("conf.d/x.conf")).unwrap(),
            "x"
        );
        // Another slot's directory is left alone.
        let other = TaskId::new(JobName::new("web"), 30);
        let kept = write_config(data.path(), &other, FencingToken(1), &[file("a", "b")])
            .unwrap()
            .unwrap();
        let two = write_config(
            data.path(),
            &task,
            FencingToken(2),
            &[file("app.toml", "level = 2\n")],
        )
        .unwrap()
        .unwrap();
        assert_ne!(one, two);
        assert_eq!(
            std::fs::read_to_string(two.join("app.toml")).unwrap(),
            "level = 2\n"
        );
        assert!(!one.exists(), "the older copy's files are removed");
        assert!(kept.exists());
        // Nothing is written outside the directory.
        for bad in ["../escape", "/etc/passwd", "a/../../b", ""] {
            let err = write_config(data.path(), &task, FencingToken(3), &[file(bad, "x")]);
            assert!(err.is_err(), "{bad:?} accepted");
        }
        assert!(!data.path().join("escape").exists());
        // A newer copy without files: none written, the older ones' removed.
        assert_eq!(
            write_config(data.path(), &task, FencingToken(4), &[]).unwrap(),
            None
        );
        assert!(!two.exists());
    }
}
