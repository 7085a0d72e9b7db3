//! `warden bench state`: the replicated state of a stateful task, end to end on this
//! machine: clients write through the state API's Unix socket to a primary store, which
//! replicates over loopback TCP to its standbys; every write waits for its acknowledgement
//! level. Reports throughput, acknowledgement latency, CPU per 10,000 writes, the bytes
//! shipped against the payload, the standbys' lag, and how long a new standby takes to be
//! seeded from a checkpoint of a large state.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use warden_core::state::AckLevel;
use warden_state::api::{ApiConfig, serve_unix};
use warden_state::client::StateClient;
use warden_state::codec::{BatchOp, Op};
use warden_state::repl::{FollowReport, Primaries, follow_forever};
use warden_state::store::{Limits, Role, StateStore};

/// What to run.
#[derive(Debug, Clone)]
pub struct StateBench {
    /// Writes in the measurement.
    pub writes: usize,
    /// Concurrent clients (connections to the socket).
    pub clients: usize,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Writes per request (1: one `PUT` each; more: one atomic batch of that many puts).
    pub batch: usize,
    /// Single writes in flight per client on a write pipe (1: one `PUT` request at a time).
    pub pipeline: usize,
    /// Acknowledgement level of every write.
    pub ack: AckLevel,
    /// Standbys following the primary.
    pub standbys: u8,
    /// State to seed a new standby with, MiB (0: skip).
    pub seed_mib: usize,
}

/// Process CPU time so far (user + system).
fn process_cpu() -> Duration {
    warden_chaos::cluster::cpu_and_rss(std::process::id() as i32)
        .map(|(cpu, _)| cpu)
        .unwrap_or_default()
}

/// The calling thread's CPU time so far.
fn thread_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return Duration::ZERO;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

struct Replica {
    _dir: tempfile::TempDir,
    store: StateStore,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.store.close();
    }
}

fn replica(role: Role, epoch: u64, standbys: u8) -> Result<Replica> {
    let dir = tempfile::Builder::new()
        .prefix("warden-bench-state-")
        .tempdir()?;
    let (store, _) = StateStore::open(dir.path(), role, epoch, standbys, Limits::default())?;
    Ok(Replica { _dir: dir, store })
}

/// Run the benchmark and print its report.
pub fn run(b: &StateBench) -> Result<()> {
    if b.batch > 1 && b.pipeline > 1 {
        bail!("--batch and --pipeline: a write pipe carries single writes; use one or the other");
    }
    if b.ack != AckLevel::Local && b.standbys == 0 {
        bail!("--ack {} needs --standbys 1 or more", b.ack);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cancel = CancellationToken::new();
    let epoch = 1;
    let primary = replica(Role::Primary, epoch, b.standbys)?;
    let names: Vec<String> = (0..b.standbys).map(|i| format!("standby-{i}")).collect();
    let primaries = Primaries::default();
    primaries.insert("bench", primary.store.clone(), names.clone());
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    rt.spawn(primaries.clone().serve(listener, cancel.clone()));
    let mut standbys = Vec::new();
    for name in &names {
        let r = replica(Role::Standby, epoch, 0)?;
        let report = Arc::new(Mutex::new(FollowReport::default()));
        rt.spawn(follow_forever(
            warden_state::repl::Dial::plain(addr),
            "bench".into(),
            name.clone(),
            r.store.clone(),
            report,
            cancel.clone(),
        ));
        standbys.push(r);
    }
    let sock_dir = tempfile::Builder::new()
        .prefix("warden-bench-sock-")
        .tempdir()?;
    let sock = sock_dir.path().join("state.sock");
    {
        let (s, c, p) = (primary.store.clone(), cancel.clone(), sock.clone());
        let cfg = ApiConfig {
            ack: b.ack,
            token: None,
        };
        rt.spawn(async move { serve_unix(&p, s, cfg, c).await });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        if Instant::now() > deadline {
            bail!("the state socket never came up");
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    // Lag sampler: how far the slowest standby is behind the primary's applied sequence.
    let lags = Arc::new(Mutex::new(Vec::<u32>::new()));
    {
        let (p, s, lags, cancel) = (
            primary.store.clone(),
            standbys.iter().map(|r| r.store.clone()).collect::<Vec<_>>(),
            lags.clone(),
            cancel.clone(),
        );
        rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let head = p.applied();
                if let Some(min) = s.iter().map(|s| s.committed().local).min() {
                    lags.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(u32::try_from(head.saturating_sub(min)).unwrap_or(u32::MAX));
                }
            }
        });
    }

    println!(
        "state: {} writes of {} B values by {} clients ({}) at ack={}, {} standby(s), over a Unix socket and loopback TCP",
        b.writes,
        b.value_bytes,
        b.clients,
        if b.batch > 1 {
            format!("batches of {} writes per request", b.batch)
        } else if b.pipeline > 1 {
            format!(
                "single writes on a write pipe, up to {} in flight per client",
                b.pipeline
            )
        } else {
            "one write per request".to_string()
        },
        b.ack,
        b.standbys
    );
    // Warm-up: connections, allocations, the first segment.
    run_clients(
        &sock,
        b,
        b.writes.min(5_000) / b.clients.max(1) / b.batch,
        "w",
    )?;
    let shipped0 = primaries
        .stats()
        .wire_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    let (mut lat, client_cpu, payload) =
        run_clients(&sock, b, b.writes / b.clients.max(1) / b.batch, "k")?;
    let wall = t0.elapsed();
    let cpu = process_cpu().saturating_sub(cpu0);
    let shipped = primaries
        .stats()
        .wire_bytes
        .load(std::sync::atomic::Ordering::Relaxed)
        - shipped0;
    lat.sort_unstable();
    let n = lat.len();
    let state_cpu = cpu.saturating_sub(client_cpu);
    let n = n * b.batch;
    println!(
        "writes: {n} in {:.2} s = {:.0} writes/s; ack latency (per request; on a pipe per write, sent to answered) p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    println!(
        "CPU per 10,000 writes: {:.1} ms for the state service (primary and standbys; {:.1} ms all in, clients {:.1} ms)",
        state_cpu.as_secs_f64() * 1000.0 * 10_000.0 / n.max(1) as f64,
        cpu.as_secs_f64() * 1000.0 * 10_000.0 / n.max(1) as f64,
        client_cpu.as_secs_f64() * 1000.0 * 10_000.0 / n.max(1) as f64,
    );
    if b.standbys > 0 {
        let per_standby = shipped as f64 / f64::from(b.standbys);
        println!(
            "shipped per standby: {:.1} MiB for {:.1} MiB of keys and values = {:.3} x payload",
            per_standby / 1048576.0,
            payload as f64 / 1048576.0,
            per_standby / payload.max(1) as f64
        );
        let mut lags = lags
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        lags.sort_unstable();
        let at = |p: f64| {
            if lags.is_empty() {
                0
            } else {
                lags[((lags.len() - 1) as f64 * p).round() as usize]
            }
        };
        println!(
            "replication lag of the slowest standby (writes applied on the primary, not yet synced there; sampled every 10 ms): p50 {}  p99 {}  max {}",
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
    cancel.cancel();
    if b.seed_mib > 0 {
        seed(&rt, b.seed_mib)?;
    }
    Ok(())
}

/// `writes_each` writes from each of `b.clients` threads; returns every latency (µs), the
/// clients' CPU time and the payload bytes (keys and values) written.
fn run_clients(
    sock: &std::path::Path,
    b: &StateBench,
    writes_each: usize,
    prefix: &str,
) -> Result<(Vec<u32>, Duration, u64)> {
    let value = vec![b'x'; b.value_bytes];
    let threads: Vec<_> = (0..b.clients)
        .map(|c| {
            let sock = sock.to_path_buf();
            let value = value.clone();
            let prefix = prefix.to_string();
            let batch = b.batch.max(1);
            let pipeline = b.pipeline;
            std::thread::spawn(move || -> Result<(Vec<u32>, Duration, u64)> {
                let cpu0 = thread_cpu();
                let mut client = StateClient::new(&sock, 1, None);
                if pipeline > 1 && batch == 1 {
                    return pipe_client(&client, c, &prefix, &value, writes_each, pipeline)
                        .map(|(lat, payload)| (lat, thread_cpu().saturating_sub(cpu0), payload));
                }
                let mut lat = Vec::with_capacity(writes_each);
                let mut payload = 0u64;
                for i in 0..writes_each {
                    let keys: Vec<String> = (0..batch)
                        .map(|j| format!("{prefix}{c}-{}", (i * batch + j) % 10_000))
                        .collect();
                    let t = Instant::now();
                    if batch == 1 {
                        client.put(&keys[0], &value, None)
                    } else {
                        let ops: Vec<(&str, Option<&[u8]>)> = keys
                            .iter()
                            .map(|k| (k.as_str(), Some(value.as_slice())))
                            .collect();
                        client.batch(&ops, None)
                    }
                    .with_context(|| format!("request {i} of client {c}"))?;
                    lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                    payload += keys
                        .iter()
                        .map(|k| (k.len() + value.len()) as u64)
                        .sum::<u64>();
                }
                Ok((lat, thread_cpu().saturating_sub(cpu0), payload))
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut cpu = Duration::ZERO;
    let mut payload = 0;
    for t in threads {
        let (lat, c, p) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        all.extend(lat);
        cpu += c;
        payload += p;
    }
    Ok((all, cpu, payload))
}

/// One client's writes on a write pipe, up to `window` in flight: sent in bursts (refilled
/// once half the window is answered), each write's latency from its send to its answer.
fn pipe_client(
    client: &StateClient,
    c: usize,
    prefix: &str,
    value: &[u8],
    writes: usize,
    window: usize,
) -> Result<(Vec<u32>, u64)> {
    let mut pipe = client.pipe(None).context("open a write pipe")?;
    let mut sent_at = std::collections::VecDeque::with_capacity(window);
    let mut lat = Vec::with_capacity(writes);
    let (mut sent, mut payload) = (0usize, 0u64);
    while lat.len() < writes {
        while sent < writes && sent_at.len() < window {
            let key = format!("{prefix}{c}-{}", sent % 10_000);
            pipe.put(&key, value)?;
            payload += (key.len() + value.len()) as u64;
            sent_at.push_back(Instant::now());
            sent += 1;
        }
        pipe.flush()?;
        let keep = if sent < writes { window / 2 } else { 0 };
        while sent_at.len() > keep {
            pipe.recv()
                .with_context(|| format!("write {} of client {c}", lat.len()))?;
            let t: Instant = sent_at.pop_front().unwrap_or_else(Instant::now);
            lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
        }
    }
    Ok((lat, payload))
}

/// Fill a primary with `mib` MiB of state, checkpoint it, and time a new standby's seeding
/// (checkpoint over loopback, written and synced on the standby).
fn seed(rt: &tokio::runtime::Runtime, mib: usize) -> Result<()> {
    let cancel = CancellationToken::new();
    let primary = replica(Role::Primary, 1, 1)?;
    let value = Bytes::from(vec![b's'; 4096]);
    let per_batch = 256;
    let batches = (mib * 1024 * 1024).div_ceil(4096 * per_batch);
    let mut last = 0;
    for b in 0..batches {
        let ops = (0..per_batch)
            .map(|i| BatchOp::Put(format!("seed/{b:06}/{i:03}"), value.clone()))
            .collect();
        last = primary.store.write(1, Op::Batch(ops))?;
    }
    rt.block_on(
        primary
            .store
            .wait(last, AckLevel::Local, Duration::from_secs(300)),
    )?;
    primary.store.checkpoint(1, Bytes::new())?;
    let primaries = Primaries::default();
    primaries.insert("seed", primary.store.clone(), vec!["s".into()]);
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    rt.spawn(primaries.clone().serve(listener, cancel.clone()));
    let standby = replica(Role::Standby, 1, 0)?;
    let report = Arc::new(Mutex::new(FollowReport::default()));
    let t0 = Instant::now();
    rt.spawn(follow_forever(
        warden_state::repl::Dial::plain(addr),
        "seed".into(),
        "s".into(),
        standby.store.clone(),
        report.clone(),
        cancel.clone(),
    ));
    let target = primary.store.applied();
    let deadline = t0 + Duration::from_secs(600);
    let seeded = || {
        report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .seeds
            > 0
    };
    while standby.store.committed().local < target || !seeded() {
        if Instant::now() > deadline {
            bail!("the standby was not seeded within 600 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = t0.elapsed();
    let seeds = report
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .seeds;
    println!(
        "seeding a new standby with {mib} MiB of state ({} keys, checkpoint plus tail, {seeds} checkpoint(s) sent): {:.2} s to synced",
        batches * per_batch,
        took.as_secs_f64()
    );
    cancel.cancel();
    Ok(())
}

/// `warden bench failover`.
pub fn failovers(failovers: usize, standbys: u8, ack: AckLevel, seed: u64) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "failover: {failovers} failovers, {standbys} standby(s), writers at ack={ack}, seed {seed} (in one process: real disks, loopback TCP, detection excluded)"
    );
    let r = rt.block_on(warden_state::failover::run(
        &warden_state::failover::FailoverRun {
            failovers,
            standbys,
            ack,
            seed,
            break_acks: false,
        },
    ))?;
    let mut times: Vec<u32> = r
        .switchover
        .iter()
        .map(|d| u32::try_from(d.as_micros()).unwrap_or(u32::MAX))
        .collect();
    times.sort_unstable();
    println!(
        "failovers: {}  writes acknowledged: {}  lost: {}  acknowledged under a deposed epoch: {}  entries discarded by rejoining primaries: {}",
        r.failovers, r.acked, r.lost, r.stale_acks, r.discarded
    );
    println!(
        "promotion to first write acknowledged by the new primary: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        pct(&times, 0.5),
        pct(&times, 0.99),
        pct(&times, 1.0)
    );
    for p in &r.problems {
        println!("problem: {p}");
    }
    if r.lost > 0 && ack != AckLevel::Local {
        bail!("{} acknowledged writes lost", r.lost);
    }
    Ok(())
}
