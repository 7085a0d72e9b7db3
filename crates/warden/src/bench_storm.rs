//! `warden bench storm`: a heartbeat storm against a real server process. Many sessions send
//! heartbeats at `factor` times the normal rate for a while, beside a few well-behaved agents
//! at the normal rate. Reports what the well-behaved agents saw — heartbeat-to-ack latency,
//! the longest gap between two acks (their lease renewals; the lease is 2 s), and whether any
//! of them left Healthy — what happened to the storm (sent, acked, dropped by the per-session
//! heartbeat limit), and the server's resident memory and CPU.
//!
//! `--no-limit` runs the same storm against a server whose heartbeat limit is raised out of
//! reach, for comparison.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::sync::{Mutex, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use warden_chaos::cluster::{Cluster, cpu_and_rss};
use warden_core::qos::percentile;
use warden_proto::v1::{self, agent_message, server_message};

/// The server's heartbeat interval (its default), which the normal agents use.
const NORMAL_INTERVAL: Duration = Duration::from_millis(500);
/// The server's lease (its default): an ack gap this long would expire a lease.
const LEASE_TTL: Duration = Duration::from_secs(2);

/// Settings.
#[derive(Clone, Debug)]
pub struct StormBench {
    /// Well-behaved agents (one heartbeat per 500 ms).
    pub normal: usize,
    /// Storming sessions.
    pub storm: usize,
    /// Storm rate as a multiple of the normal rate.
    pub factor: u32,
    /// How long the storm lasts.
    pub duration: Duration,
    /// Quiet time before the storm (sessions open, memory baseline).
    pub warmup: Duration,
    /// HTTP/2 connections the storm sessions share.
    pub connections: usize,
    /// Raise the server's heartbeat limit out of reach.
    pub no_limit: bool,
}

/// What the well-behaved agents saw.
#[derive(Debug, Default, Serialize)]
pub struct NormalFigures {
    /// Agents.
    pub agents: usize,
    /// Heartbeats acknowledged during the storm.
    pub acked: u64,
    /// Heartbeat-to-ack latency, ms.
    pub ack_p50_ms: f64,
    /// 99th percentile, ms.
    pub ack_p99_ms: f64,
    /// Largest, ms.
    pub ack_max_ms: f64,
    /// Longest time between two acks of one agent, ms (a lease expires at 2000).
    pub max_ack_gap_ms: f64,
    /// Agents seen in a state other than Healthy during the storm.
    pub not_healthy: usize,
}

/// What happened to the storm.
#[derive(Debug, Default, Serialize)]
pub struct StormFigures {
    /// Sessions.
    pub sessions: usize,
    /// Heartbeats per second each sent.
    pub rate_per_session: f64,
    /// Heartbeats sent.
    pub sent: u64,
    /// Acks received.
    pub acked: u64,
    /// `warden_heartbeats_dropped_total` during the storm.
    pub dropped: u64,
}

/// The server process.
#[derive(Debug, Default, Serialize)]
pub struct ServerFigures {
    /// Resident memory before the storm, MiB.
    pub rss_before_mib: f64,
    /// Largest resident memory during the storm, MiB.
    pub rss_peak_mib: f64,
    /// Resident memory after the storm, MiB.
    pub rss_after_mib: f64,
    /// Peak minus before, MiB.
    pub rss_growth_mib: f64,
    /// CPU used during the storm, cores.
    pub cpu_cores: f64,
    /// Whether the heartbeat limit was on.
    pub heartbeat_limit: bool,
}

/// The report.
#[derive(Debug, Default, Serialize)]
pub struct StormReport {
    /// Storm length, seconds.
    pub duration_s: f64,
    /// Well-behaved agents.
    pub normal: NormalFigures,
    /// The storm.
    pub storm: StormFigures,
    /// The server.
    pub server: ServerFigures,
}

impl StormReport {
    /// The report for people.
    pub fn text(&self) -> String {
        let (n, s, v) = (&self.normal, &self.storm, &self.server);
        format!(
            "heartbeat storm: {} sessions at {:.0}/s each for {:.0} s, beside {} agents at 2/s; \
             heartbeat limit {}\n\
             storm:   sent {}  acked {}  dropped by the limit {}\n\
             normal:  acked {}  ack latency p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  \
             longest ack gap {:.0} ms (lease 2000 ms)  left Healthy: {}\n\
             server:  RSS {:.1} MiB before, {:.1} MiB peak (+{:.1}), {:.1} MiB after; CPU {:.2} cores\n",
            s.sessions,
            s.rate_per_session,
            self.duration_s,
            n.agents,
            if v.heartbeat_limit { "on" } else { "off" },
            s.sent,
            s.acked,
            s.dropped,
            n.acked,
            n.ack_p50_ms,
            n.ack_p99_ms,
            n.ack_max_ms,
            n.max_ack_gap_ms,
            n.not_healthy,
            v.rss_before_mib,
            v.rss_peak_mib,
            v.rss_growth_mib,
            v.rss_after_mib,
            v.cpu_cores,
        )
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// Shared counters of one kind of session.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    acked: AtomicU64,
    open: AtomicU64,
}

/// Per normal agent: when each heartbeat was sent, and acks.
#[derive(Default)]
struct Normal {
    latencies: Vec<f64>,
    max_gap: Duration,
}

/// Run the benchmark against a fresh server started from `exe`.
pub async fn run(exe: &std::path::Path, b: &StormBench) -> Result<StormReport> {
    let cfg_dir = tempfile::tempdir()?;
    let mut env = vec![];
    let cfg_path = cfg_dir.path().join("server.toml");
    if b.no_limit {
        std::fs::write(
            &cfg_path,
            "[limits.sessions]\nheartbeat_rate = 1000000.0\nheartbeat_burst = 1000000\n",
        )?;
        env.push(("WARDEN_CONFIG", cfg_path.to_string_lossy().into_owned()));
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
    let endpoint = format!("http://{}", cluster.grpc_addr);
    let connect = || async {
        tonic::transport::Endpoint::from_shared(endpoint.clone())?
            .tcp_nodelay(true)
            .http2_adaptive_window(true)
            .connect()
            .await
            .context("connect to the server")
    };

    let storming = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let normal_tally = Arc::new(Tally::default());
    let storm_tally = Arc::new(Tally::default());
    let normals: Arc<Mutex<HashMap<usize, Normal>>> = Arc::default();

    // The well-behaved agents each get a connection of their own, as real agents do.
    for i in 0..b.normal {
        let ch = connect().await?;
        let (storming, stop, tally, normals) = (
            storming.clone(),
            stop.clone(),
            normal_tally.clone(),
            normals.clone(),
        );
        tokio::spawn(async move {
            let _ = normal_agent(ch, i, storming, stop, tally, normals).await;
        });
    }
    let mut channels = vec![];
    for _ in 0..b.connections.max(1) {
        channels.push(connect().await?);
    }
    let storm_interval = NORMAL_INTERVAL / b.factor.max(1);
    for i in 0..b.storm {
        let ch = channels[i % channels.len()].clone();
        let (storming, stop, tally) = (storming.clone(), stop.clone(), storm_tally.clone());
        // Stagger the storm's beats over one of its intervals.
        let offset = storm_interval.mul_f64(i as f64 / b.storm.max(1) as f64);
        tokio::spawn(async move {
            let _ = storm_session(ch, i, storm_interval, offset, storming, stop, tally).await;
        });
    }
    let want = (b.normal + b.storm) as u64;
    let t_open = Instant::now();
    while normal_tally.open.load(Ordering::Relaxed) + storm_tally.open.load(Ordering::Relaxed)
        < want
    {
        if t_open.elapsed() > Duration::from_secs(60) {
            bail!("only some sessions opened within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(b.warmup).await;

    let (cpu0, rss_before) = cpu_and_rss(server_pid).context("read the server's /proc")?;
    let dropped0 = scrape_dropped(&cluster).await?;
    let storm_sent0 = storm_tally.sent.load(Ordering::Relaxed);
    let storm_acked0 = storm_tally.acked.load(Ordering::Relaxed);
    let normal_acked0 = normal_tally.acked.load(Ordering::Relaxed);
    storming.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    let mut rss_peak = rss_before;
    let mut not_healthy: std::collections::BTreeSet<String> = Default::default();
    while t0.elapsed() < b.duration {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some((_, rss)) = cpu_and_rss(server_pid) {
            rss_peak = rss_peak.max(rss);
        }
        let client = cluster.client.clone();
        if let Ok(Ok(agents)) = tokio::task::spawn_blocking(move || client.get("/v1/agents")).await
        {
            for a in agents.as_array().into_iter().flatten() {
                let name = a.get("name").and_then(|n| n.as_str()).unwrap_or_default();
                let state = a.get("state").and_then(|s| s.as_str()).unwrap_or_default();
                if name.starts_with("normal-") && state != "healthy" {
                    not_healthy.insert(name.to_string());
                }
            }
        }
    }
    storming.store(false, Ordering::SeqCst);
    let elapsed = t0.elapsed();
    let (cpu1, rss_end) = cpu_and_rss(server_pid).context("read the server's /proc")?;
    let dropped1 = scrape_dropped(&cluster).await?;
    stop.store(true, Ordering::SeqCst);

    let normals = normals.lock().await;
    let mut lat: Vec<f64> = normals
        .values()
        .flat_map(|n| n.latencies.iter().copied())
        .collect();
    lat.sort_by(f64::total_cmp);
    let max_gap = normals
        .values()
        .map(|n| n.max_gap)
        .max()
        .unwrap_or_default();
    let report = StormReport {
        duration_s: elapsed.as_secs_f64(),
        normal: NormalFigures {
            agents: b.normal,
            acked: normal_tally.acked.load(Ordering::Relaxed) - normal_acked0,
            ack_p50_ms: percentile(&lat, 0.5).unwrap_or(0.0),
            ack_p99_ms: percentile(&lat, 0.99).unwrap_or(0.0),
            ack_max_ms: lat.last().copied().unwrap_or(0.0),
            max_ack_gap_ms: max_gap.as_secs_f64() * 1e3,
            not_healthy: not_healthy.len(),
        },
        storm: StormFigures {
            sessions: b.storm,
            rate_per_session: 1.0 / storm_interval.as_secs_f64(),
            sent: storm_tally.sent.load(Ordering::Relaxed) - storm_sent0,
            acked: storm_tally.acked.load(Ordering::Relaxed) - storm_acked0,
            dropped: dropped1.saturating_sub(dropped0),
        },
        server: ServerFigures {
            rss_before_mib: rss_before as f64 / MIB,
            rss_peak_mib: rss_peak as f64 / MIB,
            rss_after_mib: rss_end as f64 / MIB,
            rss_growth_mib: rss_peak.saturating_sub(rss_before) as f64 / MIB,
            cpu_cores: (cpu1 - cpu0).as_secs_f64() / elapsed.as_secs_f64(),
            heartbeat_limit: !b.no_limit,
        },
    };
    drop(normals);
    drop(cluster);
    Ok(report)
}

async fn scrape_dropped(cluster: &Cluster) -> Result<u64> {
    let client = cluster.client.clone();
    let text = tokio::task::spawn_blocking(move || client.request("GET", "/metrics", None, b""))
        .await??
        .body;
    Ok(text
        .lines()
        .find_map(|l| {
            l.strip_prefix("warden_heartbeats_dropped_total ")
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0) as u64)
}

fn hello(name: String) -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(agent_message::Msg::Hello(v1::Hello {
            name,
            generation: 0,
            probe_addr: "127.0.0.1:9".into(),
            capacity: Some(v1::Resources {
                cpu_millis: 1000,
                memory_mb: 1024,
                memory_high_mb: 0,
            }),
            running: vec![],
            version: "bench".into(),
            state_addr: String::new(),
            reattach_window_ms: 0,
            protocol_max: 0,
            protocol_min: 0,
        })),
    }
}

fn heartbeat(seq: u64) -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(agent_message::Msg::Heartbeat(v1::Heartbeat {
            seq,
            signals: Some(v1::Signals {
                cpu: Some(0.2),
                memory: Some(0.3),
                ..Default::default()
            }),
            running: vec![],
            running_as_of: 0,
            // A storm's agents leave their signals to the server to judge.
            ..Default::default()
        })),
    }
}

/// Open a session; returns the sender and the server's stream after the Welcome.
async fn open(
    ch: tonic::transport::Channel,
    name: String,
) -> Result<(
    mpsc::Sender<v1::AgentMessage>,
    tonic::Streaming<v1::ServerMessage>,
)> {
    let mut client = v1::agent_session_client::AgentSessionClient::new(ch);
    let (tx, rx) = mpsc::channel(64);
    tx.send(hello(name)).await?;
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    match inbound.next().await {
        Some(Ok(v1::ServerMessage {
            msg: Some(server_message::Msg::Welcome(_)),
        })) => Ok((tx, inbound)),
        other => bail!("no Welcome: {other:?}"),
    }
}

async fn normal_agent(
    ch: tonic::transport::Channel,
    i: usize,
    storming: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    normals: Arc<Mutex<HashMap<usize, Normal>>>,
) -> Result<()> {
    let (tx, mut inbound) = open(ch, format!("normal-{i:03}")).await?;
    tally.open.fetch_add(1, Ordering::Relaxed);
    let sent: Arc<std::sync::Mutex<HashMap<u64, Instant>>> = Arc::default();
    let reader = {
        let (sent, storming, tally, normals) = (
            sent.clone(),
            storming.clone(),
            tally.clone(),
            normals.clone(),
        );
        tokio::spawn(async move {
            let mut last_ack: Option<Instant> = None;
            while let Some(Ok(m)) = inbound.next().await {
                let Some(server_message::Msg::Ack(a)) = m.msg else {
                    continue;
                };
                let now = Instant::now();
                let at = sent
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&a.seq);
                if storming.load(Ordering::Relaxed) {
                    tally.acked.fetch_add(1, Ordering::Relaxed);
                    let mut all = normals.lock().await;
                    let n = all.entry(i).or_default();
                    if let Some(t) = at {
                        n.latencies.push(now.duration_since(t).as_secs_f64() * 1e3);
                    }
                    if let Some(prev) = last_ack {
                        n.max_gap = n.max_gap.max(now.duration_since(prev));
                    }
                }
                last_ack = Some(now);
            }
        })
    };
    let mut tick = tokio::time::interval(NORMAL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        seq += 1;
        sent.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(seq, Instant::now());
        tally.sent.fetch_add(1, Ordering::Relaxed);
        if tx.send(heartbeat(seq)).await.is_err() || reader.is_finished() {
            bail!("session normal-{i} ended");
        }
    }
    Ok(())
}

async fn storm_session(
    ch: tonic::transport::Channel,
    i: usize,
    interval: Duration,
    offset: Duration,
    storming: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Result<()> {
    let (tx, mut inbound) = open(ch, format!("storm-{i:04}")).await?;
    tally.open.fetch_add(1, Ordering::Relaxed);
    let reader = {
        let (tally, storming) = (tally.clone(), storming.clone());
        tokio::spawn(async move {
            while let Some(Ok(m)) = inbound.next().await {
                if matches!(m.msg, Some(server_message::Msg::Ack(_)))
                    && storming.load(Ordering::Relaxed)
                {
                    tally.acked.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    tokio::time::sleep(offset).await;
    // Before and after the storm these sessions behave (one beat per normal interval), so
    // they stay Healthy and only the storm itself is measured.
    let mut seq = 0;
    let mut next = tokio::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let step = if storming.load(Ordering::Relaxed) {
            interval
        } else {
            NORMAL_INTERVAL
        };
        next += step;
        tokio::time::sleep_until(next).await;
        seq += 1;
        if storming.load(Ordering::Relaxed) {
            tally.sent.fetch_add(1, Ordering::Relaxed);
        }
        if tx.send(heartbeat(seq)).await.is_err() || reader.is_finished() {
            bail!("session storm-{i} ended");
        }
        // Fell far behind (the machine is saturated): do not try to catch up in a burst.
        let now = tokio::time::Instant::now();
        if now > next + LEASE_TTL {
            next = now;
        }
    }
    Ok(())
}
