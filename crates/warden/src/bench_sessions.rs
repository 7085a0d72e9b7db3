//! `warden bench sessions`: a real server process under N simulated agent sessions, each
//! sending one heartbeat per interval. Reports heartbeat-to-ack latency (measured by the
//! simulator, send → ack received) and the server's CPU and resident memory (from `/proc`).
//!
//! The simulated agents multiplex their streams over a few HTTP/2 connections, as many agents
//! behind one NAT would; each is a full session (Hello, Welcome, heartbeats with signals, acks)
//! going through the same code as a real agent's.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::sync::{Mutex, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use warden_chaos::cluster::{Cluster, cpu_and_rss};
use warden_core::anomaly::{AnomalyConfig, SignalJudge, SignalSet};
use warden_core::qos::percentile;
use warden_proto::v1::{self, agent_message, server_message};

/// Settings.
pub struct SessionsBench {
    /// Simulated agents.
    pub sessions: usize,
    /// Heartbeat interval of each.
    pub interval: Duration,
    /// Warm-up before measuring.
    pub warmup: Duration,
    /// Measurement window.
    pub measure: Duration,
    /// HTTP/2 connections the sessions share.
    pub connections: usize,
    /// Run the server on a real one-member etcd and count etcd's writes in the window.
    pub etcd: bool,
    /// Task slots placed on the sessions before measuring (service jobs of up to 1,000
    /// replicas each); every heartbeat then reports the copies its agent runs.
    pub slots: usize,
    /// Signals that wander as a real host's do instead of constant ones (see
    /// [`signals`]).
    pub varied_signals: bool,
    /// The simulated agents leave their signals to the server to judge, as agents older
    /// than the judging did (by default they judge them, as agents do when the server sends
    /// its anomaly settings).
    pub server_judges: bool,
}

/// The signals of simulated agent `i`'s heartbeat `seq`: constant CPU and memory shares, or,
/// `varied`, a CPU share around 0.2 with a different ±0.05 each heartbeat and a memory share
/// drifting slowly around 0.3 — what the server's anomaly detectors see from a real host,
/// and pay more for than for a value that never changes.
pub fn signals(i: usize, seq: u64, varied: bool) -> v1::Signals {
    let (cpu, memory) = if varied {
        // A cheap deterministic hash of (agent, heartbeat) into [-1, 1).
        let h = (i as u64 ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .wrapping_mul(0xbf58_476d_1ce4_e5b9)
            .rotate_left(29)
            .wrapping_mul(0x94d0_49bb_1331_11eb);
        let u = (h >> 11) as f64 / (1u64 << 52) as f64 - 1.0;
        let phase = seq as f64 / 600.0 + i as f64;
        (0.2 + 0.05 * u, 0.3 + 0.02 * phase.sin())
    } else {
        (0.2, 0.3)
    };
    v1::Signals {
        cpu: Some(cpu),
        memory: Some(memory),
        ..Default::default()
    }
}

/// A one-member etcd for the benchmark, and where its metrics are.
#[cfg(feature = "etcd")]
struct Etcd {
    cluster: warden_store::etcd::testing::EtcdCluster,
}

#[cfg(feature = "etcd")]
impl Etcd {
    fn start() -> Result<Etcd> {
        let cluster = warden_store::etcd::testing::EtcdCluster::start(1)
            .context("start etcd (Debian's etcd-server)")?;
        Ok(Etcd { cluster })
    }

    fn url(&self) -> String {
        self.cluster.url("/warden-bench")
    }

    fn metrics_url(&self) -> String {
        self.cluster
            .endpoints()
            .first()
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(not(feature = "etcd"))]
struct Etcd;

#[cfg(not(feature = "etcd"))]
impl Etcd {
    fn start() -> Result<Etcd> {
        bail!("--etcd needs a warden built with `--features etcd`")
    }
    fn url(&self) -> String {
        String::new()
    }
    fn metrics_url(&self) -> String {
        String::new()
    }
}

/// The server's store calls so far, by operation (`warden_store_operation_seconds_count`).
fn store_calls(client: &warden_client::Client) -> Result<std::collections::BTreeMap<String, f64>> {
    let text = client.request("GET", "/metrics", None, b"")?.body;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("warden_store_operation_seconds_count{"))
        .filter_map(|rest| {
            let (labels, value) = rest.split_once("} ")?;
            let op = labels
                .split(',')
                .find_map(|kv| kv.strip_prefix("op=\""))?
                .trim_end_matches('"');
            Some((op.to_string(), value.trim().parse::<f64>().ok()?))
        })
        .collect())
}

/// etcd's write counters: (puts, deletes, transactions), from its Prometheus metrics.
fn etcd_writes(base: &str) -> Result<(f64, f64, f64)> {
    let client = warden_client::Client::new(base)?;
    let text = client.request("GET", "/metrics", None, b"")?.body;
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Ok((
        sum("etcd_mvcc_put_total"),
        sum("etcd_mvcc_delete_total"),
        sum("etcd_mvcc_txn_total"),
    ))
}

/// Run the benchmark against a fresh server started from `exe`.
pub async fn run(exe: &Path, b: &SessionsBench) -> Result<()> {
    let etcd = if b.etcd { Some(Etcd::start()?) } else { None };
    let mut env = Vec::new();
    if let Some(url) = etcd.as_ref().map(Etcd::url) {
        env.push(("WARDEN_STORE", url));
    }
    // More sessions than the server's default limit: the server is told to accept them (a
    // replica's share at 100,000 agents is about 40,000 sessions).
    let cfg_dir = tempfile::tempdir()?;
    let default_limit = warden_server::limits::SessionLimits::default().max_sessions;
    if b.sessions > default_limit {
        let cfg = cfg_dir.path().join("server.toml");
        std::fs::write(
            &cfg,
            format!("[limits.sessions]\nmax_sessions = {}\n", b.sessions + 100),
        )?;
        env.push(("WARDEN_CONFIG", cfg.to_string_lossy().into_owned()));
    }
    let cluster = tokio::task::spawn_blocking({
        let exe = exe.to_path_buf();
        move || {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            Cluster::start_with_env(&exe, &env)
        }
    })
    .await??;
    let server_pid = cluster.server_pid().context("no server process")?;
    // The server's memory before any session: what the sessions add is counted against it.
    let (_, rss_empty) = cpu_and_rss(server_pid).context("read server /proc")?;
    let endpoint = format!("http://{}", cluster.grpc_addr);
    let mut channels = Vec::new();
    for _ in 0..b.connections.max(1) {
        let ch = tonic::transport::Endpoint::from_shared(endpoint.clone())?
            .tcp_nodelay(true)
            .http2_adaptive_window(true)
            .connect()
            .await
            .context("connect to the server")?;
        channels.push(ch);
    }
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::with_capacity(1 << 20)));
    let acks = Arc::new(AtomicU64::new(0));
    let started = Arc::new(AtomicU64::new(0));
    let rejoins = Arc::new(AtomicU64::new(0));
    // Sessions that broke (the stream or its connection) and were opened again, and the
    // last reason given.
    let lost = Arc::new(AtomicU64::new(0));
    let lost_why: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    eprintln!(
        "opening {} sessions over {} connections…",
        b.sessions,
        channels.len()
    );
    let t_open = Instant::now();
    for i in 0..b.sessions {
        let ch = channels[i % channels.len()].clone();
        let (interval, measuring, latencies, acks, started, rejoins) = (
            b.interval,
            measuring.clone(),
            latencies.clone(),
            acks.clone(),
            started.clone(),
            rejoins.clone(),
        );
        let (lost, lost_why) = (lost.clone(), lost_why.clone());
        let (varied, judge_own) = (b.varied_signals, !b.server_judges);
        // Stagger the first heartbeats over one interval, as real agents would be.
        let offset = interval.mul_f64(i as f64 / b.sessions as f64);
        tokio::spawn(async move {
            // Like a real agent, one told its generation is over joins again as a new one.
            let mut counted = false;
            loop {
                let run = agent(
                    ch.clone(),
                    i,
                    varied,
                    judge_own,
                    interval,
                    if counted { Duration::ZERO } else { offset },
                    measuring.clone(),
                    latencies.clone(),
                    acks.clone(),
                    (!counted).then(|| started.clone()),
                );
                match run.await {
                    Ok(Ended::Rejoin) => {
                        counted = true;
                        rejoins.fetch_add(1, Ordering::Relaxed)
                    }
                    Ok(Ended::Refused) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        0
                    }
                    Err(e) => {
                        if std::env::var_os("WARDEN_BENCH_VERBOSE").is_some() {
                            eprintln!("session {i}: {e:#}");
                        }
                        // Like a real agent, one whose session broke opens it again (the
                        // channel reconnects); the run's summary counts them.
                        counted = true;
                        lost.fetch_add(1, Ordering::Relaxed);
                        *lost_why
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) =
                            Some(format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        0
                    }
                };
            }
        });
        if i % 500 == 499 {
            tokio::task::yield_now().await;
        }
    }
    while (started.load(Ordering::Relaxed) as usize) < b.sessions {
        if t_open.elapsed() > Duration::from_secs(120) {
            bail!(
                "only {} of {} sessions opened in 120 s",
                started.load(Ordering::Relaxed),
                b.sessions
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{} sessions open after {:.1} s; warming up for {:?}",
        b.sessions,
        t_open.elapsed().as_secs_f64(),
        b.warmup
    );
    if b.slots > 0 {
        place_slots(&cluster.client, b.slots).await?;
        settle(&cluster.client, b.sessions, b.slots).await?;
    }
    tokio::time::sleep(b.warmup).await;
    let (cpu0, _) = cpu_and_rss(server_pid).context("read server /proc")?;
    let me = i32::try_from(std::process::id()).context("own pid")?;
    let (own0, _) = cpu_and_rss(me).context("read own /proc")?;
    let acks0 = acks.load(Ordering::Relaxed);
    let writes0 = etcd
        .as_ref()
        .map(|e| etcd_writes(&e.metrics_url()))
        .transpose()?;
    let calls0 = store_calls(&cluster.client)?;
    measuring.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    tokio::time::sleep(b.measure).await;
    measuring.store(false, Ordering::SeqCst);
    let elapsed = t0.elapsed();
    let writes1 = etcd
        .as_ref()
        .map(|e| etcd_writes(&e.metrics_url()))
        .transpose()?;
    let calls1 = store_calls(&cluster.client)?;
    let (cpu1, rss) = cpu_and_rss(server_pid).context("read server /proc")?;
    let (own1, _) = cpu_and_rss(me).context("read own /proc")?;
    let acked = acks.load(Ordering::Relaxed) - acks0;
    let mut lat = latencies.lock().await.clone();
    lat.sort_by(f64::total_cmp);
    let agents = cluster.client.get("/v1/agents")?;
    // Agents by state at the end; the ones not healthy are named by state.
    let mut states: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for a in agents.as_array().map(Vec::as_slice).unwrap_or_default() {
        let state = a.get("state").and_then(|s| s.as_str()).unwrap_or("unknown");
        *states.entry(state.to_string()).or_default() += 1;
    }
    let healthy = states.remove("healthy").unwrap_or(0);
    let others = if states.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = states.iter().map(|(s, n)| format!("{s} {n}")).collect();
        format!(" ({})", list.join(", "))
    };
    let rejoined = rejoins.load(Ordering::Relaxed);
    let broken = lost.load(Ordering::Relaxed);
    println!(
        "sessions: {}  task slots: {}  (generations ended and rejoined during the run: {rejoined})  heartbeats acked: {:.0}/s  ack latency p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        b.sessions,
        b.slots,
        acked as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.5).unwrap_or(0.0),
        percentile(&lat, 0.99).unwrap_or(0.0),
        lat.last().copied().unwrap_or(0.0),
    );
    // The server's cost per heartbeat, from its own /proc accounting (the simulator shares
    // the machine).
    let server_cpu = (cpu1 - cpu0).as_secs_f64();
    let per_core_second = if server_cpu > 0.0 {
        acked as f64 / server_cpu
    } else {
        0.0
    };
    let per_session_kib = rss.saturating_sub(rss_empty) as f64 / 1024.0 / b.sessions.max(1) as f64;
    println!(
        "server: CPU {:.2} cores ({per_core_second:.0} heartbeats acked per core-second)  RSS {:.0} MiB ({per_session_kib:.1} KiB a session over the {:.0} MiB before any)  agents healthy: {healthy}/{}{others}  (simulated agents, same machine: CPU {:.2} cores)",
        server_cpu / elapsed.as_secs_f64(),
        rss as f64 / (1024.0 * 1024.0),
        rss_empty as f64 / (1024.0 * 1024.0),
        b.sessions,
        (own1 - own0).as_secs_f64() / elapsed.as_secs_f64(),
    );
    if broken > 0 {
        let why = lost_why
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .unwrap_or_default();
        println!("sessions broken and opened again during the run: {broken} (the last: {why})");
    }
    let calls: Vec<String> = calls1
        .iter()
        .filter_map(|(op, n)| {
            let d = n - calls0.get(op).copied().unwrap_or(0.0);
            (d > 0.0).then(|| format!("{op} {d:.0}"))
        })
        .collect();
    println!(
        "store calls by the server in the window: {}",
        if calls.is_empty() {
            "none".to_string()
        } else {
            calls.join(", ")
        }
    );
    if let (Some((p0, d0, t0)), Some((p1, d1, t1))) = (writes0, writes1) {
        let secs = elapsed.as_secs_f64();
        println!(
            "etcd in steady state ({:.0} s): puts {:.2}/s  deletes {:.2}/s  transactions {:.2}/s  ({} puts, {} deletes, {} txns in all)",
            secs,
            (p1 - p0) / secs,
            (d1 - d0) / secs,
            (t1 - t0) / secs,
            p1 - p0,
            d1 - d0,
            t1 - t0,
        );
    }
    // The server goes before its store.
    drop(cluster);
    let _stop_etcd_last = etcd;
    Ok(())
}

/// Submit service jobs with `slots` replicas in all, one at a time, each once the copies of
/// the ones before run (a steady build-up, as a deployment pipeline would do it), and wait
/// until every copy runs.
async fn place_slots(client: &warden_client::Client, slots: usize) -> Result<()> {
    // The server's default limit on replicas per job (`limits.jobs.max_replicas`).
    let per_job = 1_000;
    let jobs = slots.div_ceil(per_job);
    let t0 = Instant::now();
    let running = |client: &warden_client::Client| {
        let c = client.clone();
        async move {
            let listed: Vec<warden_server::view::JobInfo> =
                tokio::task::spawn_blocking(move || c.get_as("/v1/jobs")).await??;
            anyhow::Ok(listed.iter().map(|j| j.running as usize).sum::<usize>())
        }
    };
    let mut submitted = 0;
    for j in 0..jobs {
        let replicas = (slots - j * per_job).min(per_job);
        let spec = serde_json::json!({
            "name": format!("bench-{j}"),
            "kind": "service",
            "replicas": replicas,
            "command": "/bin/true",
            "resources": { "cpu_millis": 10, "memory_mb": 10 },
        });
        let body = serde_json::to_vec(&spec)?;
        let c = client.clone();
        tokio::task::spawn_blocking(move || {
            c.request("POST", "/v1/jobs", Some("application/json"), &body)?
                .json()
        })
        .await??;
        submitted += replicas;
        while running(client).await? < submitted {
            if t0.elapsed() > Duration::from_secs(900) {
                bail!(
                    "only {} of {slots} copies running after 900 s",
                    running(client).await?
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!(
        "{jobs} jobs with {slots} task slots placed, every copy running, in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// How a simulated agent's session ended without an error.
enum Ended {
    /// The server said the generation is over.
    Rejoin,
    /// The Hello was refused.
    Refused,
}

/// Wait until every session's agent is Healthy and every copy runs (agents declared failed
/// while the work was placed have rejoined and their copies moved), so that the measurement
/// sees the steady state.
async fn settle(client: &warden_client::Client, sessions: usize, slots: usize) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let c = client.clone();
        let (agents, jobs) = tokio::task::spawn_blocking(move || {
            let agents: Vec<warden_server::view::AgentInfo> = c.get_as("/v1/agents")?;
            let jobs: Vec<warden_server::view::JobInfo> = c.get_as("/v1/jobs")?;
            anyhow::Ok((agents, jobs))
        })
        .await??;
        let healthy = agents.iter().filter(|a| a.state == "healthy").count();
        let running: usize = jobs.iter().map(|j| j.running as usize).sum();
        if healthy >= sessions && running >= slots {
            eprintln!("settled after {:.1} s", t0.elapsed().as_secs_f64());
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(300) {
            let mut others = std::collections::BTreeMap::<&str, usize>::new();
            for a in agents.iter().filter(|a| a.state != "healthy") {
                *others.entry(a.state.as_str()).or_default() += 1;
            }
            bail!(
                "not settled after 300 s: {healthy} of {sessions} agents healthy (others: {others:?}), {running} of {slots} copies running"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn agent(
    ch: tonic::transport::Channel,
    i: usize,
    varied: bool,
    judge_own: bool,
    interval: Duration,
    offset: Duration,
    measuring: Arc<std::sync::atomic::AtomicBool>,
    latencies: Arc<Mutex<Vec<f64>>>,
    acks: Arc<AtomicU64>,
    started: Option<Arc<AtomicU64>>,
) -> Result<Ended> {
    let mut client = v1::agent_session_client::AgentSessionClient::new(ch);
    let (tx, rx) = mpsc::channel(16);
    let msg = |m| v1::AgentMessage { msg: Some(m) };
    tx.send(msg(agent_message::Msg::Hello(v1::Hello {
        name: format!("sim-{i:05}"),
        generation: 0,
        probe_addr: "127.0.0.1:9".into(),
        capacity: Some(v1::Resources {
            cpu_millis: 1000,
            memory_mb: 1024,
            memory_high_mb: 0,
        }),
        running: vec![],
        version: "sim".into(),
        state_addr: String::new(),
        reattach_window_ms: 0,
        protocol_max: 0,
        protocol_min: 0,
    })))
    .await?;
    let Ok(opened) = client.session(ReceiverStream::new(rx)).await else {
        return Ok(Ended::Refused);
    };
    let mut inbound = opened.into_inner();
    let (accepts_unchanged, settings) = match inbound.next().await {
        Some(Ok(v1::ServerMessage {
            msg: Some(server_message::Msg::Welcome(w)),
        })) => (w.accepts_running_as_of, w.anomaly_settings),
        // Refused (the old generation's session is not closed yet, say): try again.
        _ => return Ok(Ended::Refused),
    };
    if let Some(started) = started {
        started.fetch_add(1, Ordering::Relaxed);
    }
    let sent: Arc<Mutex<std::collections::VecDeque<(u64, Instant)>>> = Arc::default();
    // The copies this agent "runs": every assignment runs at once and reports so.
    let copies: Arc<std::sync::Mutex<Vec<v1::RunningTask>>> = Arc::default();
    let reader = {
        let sent = sent.clone();
        let copies = copies.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                let m = match inbound.next().await {
                    Some(Ok(m)) => m,
                    Some(Err(status)) => return Err(format!("the stream broke: {status}")),
                    None => return Err("the server ended the stream".to_string()),
                };
                if let Some(server_message::Msg::Rejoin(_)) = &m.msg {
                    return Ok(());
                }
                let report = |task: &str, epoch: u64, phase: v1::TaskPhase| {
                    msg(agent_message::Msg::TaskReport(v1::TaskReport {
                        version: 0,
                        task: task.to_string(),
                        epoch,
                        phase: phase as i32,
                        exit_code: None,
                        message: String::new(),
                        healthy: true,
                        endpoint: String::new(),
                    }))
                };
                if let Some(server_message::Msg::Assign(a)) = &m.msg {
                    {
                        let mut c = copies
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        c.retain(|r| r.task != a.task);
                        c.push(v1::RunningTask {
                            version: 0,
                            task: a.task.clone(),
                            epoch: a.epoch,
                            phase: v1::TaskPhase::Running as i32,
                            restarts: 0,
                            healthy: true,
                            endpoint: String::new(),
                            in_sync: Vec::new(),
                            state_seq: 0,
                            state_fence: 0,
                            state_last_epoch: 0,
                            lagging: Vec::new(),
                            sealed: false,
                        });
                    }
                    let _ = tx
                        .send(report(&a.task, a.epoch, v1::TaskPhase::Running))
                        .await;
                    continue;
                }
                if let Some(server_message::Msg::Stop(st)) = &m.msg {
                    copies
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .retain(|r| !(r.task == st.task && r.epoch == st.epoch));
                    let _ = tx
                        .send(report(&st.task, st.epoch, v1::TaskPhase::Stopped))
                        .await;
                    continue;
                }
                if let Some(server_message::Msg::Ack(a)) = m.msg {
                    let at = {
                        let mut s = sent.lock().await;
                        let mut at = None;
                        while let Some(&(seq, t)) = s.front() {
                            if seq > a.seq {
                                break;
                            }
                            s.pop_front();
                            if seq == a.seq {
                                at = Some(t);
                            }
                        }
                        at
                    };
                    acks.fetch_add(1, Ordering::Relaxed);
                    if let Some(t) = at
                        && measuring.load(Ordering::Relaxed)
                    {
                        latencies.lock().await.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                }
            }
        })
    };
    tokio::time::sleep(offset).await;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0;
    // Like a real agent: the copies are listed when they changed since the last list, and at
    // least every ten heartbeats.
    let mut listed: Option<(u64, Vec<v1::RunningTask>)> = None;
    // Like a real agent, it judges its own signals when the server sent its settings.
    let mut judge = serde_json::from_str::<AnomalyConfig>(&settings)
        .ok()
        .filter(|_| judge_own)
        .map(SignalJudge::new);
    let clock = Instant::now();
    loop {
        tick.tick().await;
        seq += 1;
        sent.lock().await.push_back((seq, Instant::now()));
        let running = copies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let as_of = match &listed {
            Some((at, list)) if accepts_unchanged && *list == running && seq - at < 10 => *at,
            _ => 0,
        };
        let sampled = signals(i, seq, varied);
        let verdicts = judge.as_mut().map(|j| {
            j.judge(
                clock.elapsed().as_secs_f64(),
                &warden_core::Signals::from(&sampled),
            )
        });
        let hb = v1::Heartbeat {
            seq,
            signals: Some(sampled),
            judged: verdicts.is_some(),
            anomalous: verdicts.map_or(0, SignalSet::bits),
            running: if as_of == 0 {
                running.clone()
            } else {
                Vec::new()
            },
            running_as_of: as_of,
        };
        if as_of == 0 {
            listed = Some((seq, running));
        }
        if reader.is_finished() {
            return match reader.await {
                Ok(Ok(())) => Ok(Ended::Rejoin),
                Ok(Err(why)) => bail!("session {i} ended: {why}"),
                Err(e) => bail!("session {i} ended: its reader failed: {e}"),
            };
        }
        if tx
            .send(msg(agent_message::Msg::Heartbeat(hb)))
            .await
            .is_err()
        {
            bail!("session {i} ended");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::signals;

    #[test]
    fn varied_signals_wander_within_a_hosts_range_and_constant_ones_do_not() {
        let flat = signals(7, 1, false);
        assert_eq!((flat.cpu, flat.memory), (Some(0.2), Some(0.3)));
        assert_eq!(signals(7, 2, false), flat);
        let cpu: Vec<f64> = (0..1_000)
            .map(|seq| signals(7, seq, true).cpu.unwrap_or(f64::NAN))
            .collect();
        assert!(cpu.iter().all(|c| (0.15..0.25).contains(c)), "{cpu:?}");
        let mean = cpu.iter().sum::<f64>() / cpu.len() as f64;
        assert!((mean - 0.2).abs() < 0.01, "mean {mean}");
        let distinct = cpu
            .windows(2)
            .filter(|w| (w[0] - w[1]).abs() > 1e-6)
            .count();
        assert!(distinct > 990, "{distinct} changes in 999");
        // Agents differ from one another.
        assert_ne!(signals(7, 5, true), signals(8, 5, true));
        let memory = signals(7, 5, true).memory.unwrap_or(f64::NAN);
        assert!((0.28..=0.32).contains(&memory), "{memory}");
    }
}
