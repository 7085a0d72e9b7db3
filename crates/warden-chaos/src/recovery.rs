//! The recovery benchmark: how long a singleton is down when the agent running it is killed
//! (SIGKILL) or paused (SIGSTOP), measured from the outside on a real local cluster.
//!
//! Each repetition finds the agent running the singleton, injects the fault at `t0`, and
//! samples `/proc` every few milliseconds: **RTO** is the time from `t0` until a task process
//! with a *newer* fencing token exists. The same samples check safety: the old copy must be
//! gone before the new one appears (never two live copies). Then the faulty agent is brought
//! back (restarted, or resumed — it then rejoins with a new generation) and the next
//! repetition starts once the cluster is healthy again.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use serde::Serialize;
use serde_json::Value;
use warden_core::qos::percentile;

use crate::cluster::{Cluster, is_alive, wait_until};

/// The fault injected into the agent running the singleton.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// SIGKILL the agent process.
    Kill,
    /// SIGSTOP the agent process (resumed with SIGCONT after the replacement runs).
    Pause,
}

/// One repetition.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Fault injected.
    pub fault: Fault,
    /// Agent faulted.
    pub agent: String,
    /// Fault → replacement process exists, ms.
    pub rto_ms: f64,
    /// Fault → old task process gone, ms.
    pub old_gone_ms: f64,
    /// Whether the old and the new copy were ever seen alive at the same time.
    pub overlap: bool,
}

/// Summary of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Fault injected.
    pub fault: Fault,
    /// Repetitions.
    pub reps: usize,
    /// RTO percentiles, ms.
    pub rto_p50_ms: f64,
    /// 99th percentile (with 20 samples: the largest but none).
    pub rto_p99_ms: f64,
    /// Largest RTO, ms.
    pub rto_max_ms: f64,
    /// Repetitions where two copies were alive at once (must be 0).
    pub overlaps: usize,
    /// Every sample.
    pub samples: Vec<Sample>,
}

const SINGLETON: &str = "name = \"bench-singleton\"\nkind = \"singleton\"\ncommand = \"{exe}\"\nargs = [\"workload\", \"sleep\", \"--every\", \"60\"]\n[resources]\ncpu_millis = 10\nmemory_mb = 16\n";
const TASK: &str = "bench-singleton/0";

/// Run `reps` repetitions of `fault` on a fresh cluster of `agents` agents using the `warden`
/// executable `exe`. `progress` is told about each repetition.
pub fn run(
    exe: &Path,
    fault: Fault,
    reps: usize,
    agents: usize,
    mut progress: impl FnMut(&Sample),
) -> Result<Summary> {
    if agents < 2 {
        bail!("the recovery benchmark needs at least 2 agents");
    }
    let mut cluster = Cluster::start(exe)?;
    cluster.add_agents(agents)?;
    cluster.submit(SINGLETON)?;
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        let sample = one(&mut cluster, fault)
            .with_context(|| format!("server log:\n{}", cluster.log("server")))?;
        progress(&sample);
        samples.push(sample);
    }
    let mut rtos: Vec<f64> = samples.iter().map(|s| s.rto_ms).collect();
    rtos.sort_by(f64::total_cmp);
    Ok(Summary {
        fault,
        reps,
        rto_p50_ms: percentile(&rtos, 0.5).unwrap_or(0.0),
        rto_p99_ms: percentile(&rtos, 0.99).unwrap_or(0.0),
        rto_max_ms: rtos.last().copied().unwrap_or(0.0),
        overlaps: samples.iter().filter(|s| s.overlap).count(),
        samples,
    })
}

fn one(cluster: &mut Cluster, fault: Fault) -> Result<Sample> {
    // The singleton runs, healthy, on some agent, and only one copy exists.
    let mut current = None;
    if !wait_until(Duration::from_secs(30), || {
        let procs: Vec<_> = cluster
            .task_procs()
            .into_iter()
            .filter(|t| t.task == TASK)
            .collect();
        let task = cluster.task(TASK);
        let running = task
            .as_ref()
            .and_then(|t| t.get("state"))
            .and_then(Value::as_str)
            == Some("running");
        if procs.len() == 1 && running {
            current = Some((procs[0].clone(), task));
            true
        } else {
            false
        }
    }) {
        bail!(
            "the singleton is not running exactly once: {:?}",
            cluster.task(TASK)
        );
    }
    let Some((old, Some(task))) = current else {
        bail!("no singleton")
    };
    let agent = task
        .get("agent")
        .and_then(Value::as_str)
        .context("singleton has no agent")?
        .to_string();

    let t0 = Instant::now();
    match fault {
        Fault::Kill => cluster.kill_agent(&agent)?,
        Fault::Pause => cluster.signal_agent(&agent, Signal::SIGSTOP)?,
    }
    let mut old_gone = None;
    let mut replaced = None;
    let mut overlap = false;
    let deadline = t0 + Duration::from_secs(30);
    while Instant::now() < deadline && replaced.is_none() {
        let procs: Vec<_> = cluster
            .task_procs()
            .into_iter()
            .filter(|t| t.task == TASK)
            .collect();
        let now = t0.elapsed();
        let old_alive = is_alive(old.pid);
        if !old_alive && old_gone.is_none() {
            old_gone = Some(now);
        }
        if let Some(new) = procs.iter().find(|p| p.token > old.token) {
            replaced = Some(now);
            // Check the old copy once more at the very moment the new one is seen.
            if is_alive(old.pid) && old.pid != new.pid {
                overlap = true;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let rto = replaced
        .with_context(|| format!("no replacement within 30 s after {fault:?} of {agent}"))?;
    let old_gone = old_gone.unwrap_or(rto);

    // Bring the agent back and wait for the cluster to settle.
    match fault {
        Fault::Kill => cluster.restart_agent(&agent)?,
        Fault::Pause => cluster.signal_agent(&agent, Signal::SIGCONT)?,
    }
    if !wait_until(Duration::from_secs(30), || {
        cluster.agent_state(&agent).as_deref() == Some("healthy")
    }) {
        bail!(
            "{agent} did not come back healthy: {:?}",
            cluster.agent(&agent)
        );
    }
    Ok(Sample {
        fault,
        agent,
        rto_ms: rto.as_secs_f64() * 1e3,
        old_gone_ms: old_gone.as_secs_f64() * 1e3,
        overlap,
    })
}
