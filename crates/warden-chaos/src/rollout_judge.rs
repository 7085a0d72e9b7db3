//! The statistical judge on real traffic (`warden bench rollout-judge`).
//!
//! A real local cluster (a server and 3 agents), a 6-copy service of `warden workload http`
//! behind a real HAProxy that the server's HAProxy adapter drives and whose request log
//! (`option httplog`, syslog over UDP) the adapter reads, and an open-loop request rate through
//! HAProxy. Each repetition submits a new version with `canary = 2` and the judge
//! (`[update.analysis]`: judged every 5 s over the last 20 s, otherwise the defaults: 50
//! requests least on each side, `alpha` 0.01, +1 point of errors or +100 ms of p99, two
//! failing judgements in a row abort, three passing ones end the canary phase) and waits for
//! the rollout to end:
//!
//! - `errors`: the new version answers 500 to `error_rate` (default 2 %) of requests more;
//! - `latency`: the new version answers every request `delay_ms` (default 200 ms) later;
//! - `same` (A/A): the new version differs in a no-op argument only; every abort is false.
//!
//! With `loss`, every agent runs in a network namespace of its own whose link drops that
//! share of packets each way (nftables), so both sessions and requests cross a lossy network.
//!
//! Reported per repetition: how the rollout ended and, for a bad version, the time from the
//! first request a canary answered to the abort decision (the `rollout.failed` event).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;

use crate::cluster::{Cluster, free_port, wait_until};
use crate::traffic::{Haproxy, Load, request};

/// What the new version does differently.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Fails this share of requests (500).
    Errors(f64),
    /// Answers this many ms later.
    Latency(u64),
    /// Nothing (A/A).
    Same,
}

/// The bench's settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// What the new version does.
    pub change: Change,
    /// Rollouts.
    pub reps: usize,
    /// Requests per second through HAProxy (a third reaches the 2 canaries of 6 copies).
    pub rate: u32,
    /// Packet loss on every agent's link (network namespaces), 0 for none.
    pub loss: f64,
    /// Traffic steps (`[update] traffic_steps`, percent) and how long each lasts; empty: the
    /// canaries get their plain share.
    pub steps: Vec<u8>,
    /// `[update] step_time`.
    pub step_time: Duration,
}

/// One rollout.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// The rollout was aborted.
    pub aborted: bool,
    /// First request answered by a canary → abort decided, ms (aborted rollouts).
    pub detect_ms: Option<u64>,
    /// Requests the canaries answered before the decision.
    pub canary_requests: usize,
    /// The decision's reason (aborted rollouts).
    pub reason: String,
    /// With traffic steps: (step's share, share of the answers the canaries gave during it),
    /// percent.
    pub shares: Vec<(u8, f64)>,
}

const COPIES: usize = 6;

fn job(n: usize, change: Change, opts: &Options) -> String {
    let extra = match change {
        Change::Errors(r) if n > 0 => format!(", \"--error-rate\", \"{r}\""),
        Change::Latency(ms) if n > 0 => format!(", \"--delay-ms\", \"{ms}\""),
        _ => String::new(),
    };
    let steps = if opts.steps.is_empty() {
        String::new()
    } else {
        format!(
            "traffic_steps = {:?}\nstep_time = \"{}ms\"\n",
            opts.steps,
            opts.step_time.as_millis()
        )
    };
    // The exit time is a no-op (a day) that makes every version a new template.
    format!(
        "name = \"web\"\nkind = \"service\"\nreplicas = {COPIES}\ncommand = \"{{exe}}\"\n\
         args = [\"workload\", \"http\", \"--exit-after-ms\", \"{}\"{extra}]\n\
         [resources]\ncpu_millis = 10\nmemory_mb = 16\n\
         [service]\nport = \"dynamic\"\n\
         [update]\ncanary = 2\nmax_parallel = 2\nauto_promote = true\nmin_healthy_time = \"2s\"\n{steps}\
         [update.analysis]\ninterval = \"5s\"\nwindow = \"20s\"\n",
        86_400_000 + n
    )
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Run the bench; `progress` sees every rollout as it ends.
pub fn run(
    exe: &Path,
    opts: &Options,
    mut progress: impl FnMut(usize, &Sample),
) -> Result<Vec<Sample>> {
    let netns = if opts.loss > 0.0 {
        if let Some(why) = crate::netns::unavailable() {
            bail!("--loss needs network namespaces: {why}");
        }
        let names: Vec<String> = (1..=3).map(|i| format!("agent-{i}")).collect();
        Some(crate::netns::Netns::create(&names)?)
    } else {
        None
    };
    let dir = tempfile::Builder::new()
        .prefix("warden-rollout-judge-")
        .tempdir()?;
    let port = free_port()?;
    let log_port = free_port()?;
    let socket = dir.path().join("haproxy.sock");
    let server_cfg = format!(
        "[control.lifecycle.health.cpu]\ngood = 0.85\nbad = 0.98\nweight = 0.0\n\n\
         [control.lifecycle.health.pressure]\ngood = 10.0\nbad = 60.0\nweight = 0.0\n\n\
         [[haproxy]]\nservice = \"web\"\nsocket = \"{}\"\nbackend = \"web\"\npoll = \"200ms\"\n\
         log = \"127.0.0.1:{log_port}\"\n",
        socket.display()
    );
    let cfg_path = dir.path().join("server.toml");
    std::fs::write(&cfg_path, server_cfg)?;
    let cfg_str = cfg_path.display().to_string();
    let mut cluster = Cluster::start_with_env(exe, &[("WARDEN_CONFIG", cfg_str.as_str())])?;
    let mut proxies = Vec::new();
    match &netns {
        None => cluster.add_agents(3)?,
        Some(n) => {
            for i in 1..=3 {
                let name = format!("agent-{i}");
                let a = n.agent_net(&name).context("no agent namespace")?;
                let proxy = crate::proxy::Proxy::start_on(
                    std::net::SocketAddr::from((a.server_ip, 0)),
                    cluster.grpc_addr,
                )?;
                cluster.add_agent_with(
                    &name,
                    &[proxy.addr()],
                    &n.wrapper(&name)?,
                    Some(n.probe_addr(&name)?),
                )?;
                proxies.push(proxy);
            }
            if !wait_until(Duration::from_secs(30), || {
                (1..=3).all(|i| {
                    cluster.agent_state(&format!("agent-{i}")).as_deref() == Some("healthy")
                })
            }) {
                bail!("agents did not turn healthy:\n{}", cluster.log("server"));
            }
        }
    }
    cluster.submit(&job(0, opts.change, opts))?;
    let serving = |c: &Cluster| -> usize {
        c.client
            .get("/v1/services/web")
            .ok()
            .and_then(|v| v.get("instances").and_then(Value::as_array).cloned())
            .unwrap_or_default()
            .iter()
            .filter(|i| i["state"] == "serving")
            .count()
    };
    if !wait_until(Duration::from_secs(60), || serving(&cluster) == COPIES) {
        bail!("{COPIES} instances not serving:\n{}", cluster.log("server"));
    }
    let haproxy = Haproxy::start_logged(
        dir.path(),
        port,
        &socket,
        &format!(
            "  server-template srv 1-{} 127.0.0.1:1 disabled\n",
            COPIES + 2
        ),
        Some(log_port),
    )?;
    if !wait_until(Duration::from_secs(30), || {
        haproxy.taking().len() == COPIES && request(port).is_ok()
    }) {
        bail!("the instances do not answer through HAProxy");
    }
    if let Some(n) = &netns {
        for i in 1..=3 {
            n.loss(&format!("agent-{i}"), opts.loss)?;
        }
    }
    let load = Load::start(port, opts.rate);
    let mut out = Vec::new();
    let result = (|| -> Result<()> {
        for n in 1..=opts.reps {
            let s = one(&cluster, &load, n, opts)?;
            progress(n, &s);
            out.push(s);
        }
        Ok(())
    })();
    drop(load.finish());
    drop(haproxy);
    cluster.shutdown();
    drop(proxies);
    drop(netns);
    result.map(|()| out)
}

fn one(cluster: &Cluster, load: &Load, n: usize, opts: &Options) -> Result<Sample> {
    let since = cluster.last_event_seq();
    let (t0, t0_unix) = (Instant::now(), unix_ms());
    cluster.submit(&job(n, opts.change, opts))?;
    let target = cluster
        .client
        .get("/v1/jobs/web/versions")?
        .get("releases")
        .and_then(Value::as_array)
        .and_then(|r| r.last())
        .and_then(|r| r["version"].as_u64())
        .context("no versions")?;
    let mut canaries: BTreeSet<String> = BTreeSet::new();
    let mut phase = String::new();
    let ended = wait_until(Duration::from_secs(240), || {
        for t in cluster
            .client
            .get("/v1/tasks")
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
        {
            if t["version"].as_u64() == Some(target)
                && let (Some(id), Some(e)) = (t["id"].as_str(), t["epoch"].as_u64())
            {
                canaries.insert(format!("{id}@{e}"));
            }
        }
        let r = cluster
            .client
            .get("/v1/jobs/web/rollout")
            .unwrap_or(Value::Null);
        phase = r["phase"].as_str().unwrap_or_default().to_string();
        r["to"].as_u64() > Some(target)
            || (r["to"].as_u64() == Some(target)
                && !matches!(phase.as_str(), "canary" | "awaiting_promotion" | "rolling"))
    });
    if !ended {
        bail!("rollout {n} did not end within 240 s (phase {phase})");
    }
    let events = cluster.events_since(since);
    let failed = events
        .iter()
        .find(|e| e["kind"] == "rollout.failed")
        .cloned();
    // After an abort, wait for the revert to put every copy back before the next one.
    if failed.is_some()
        && !wait_until(Duration::from_secs(120), || {
            let r = cluster
                .client
                .get("/v1/jobs/web/rollout")
                .unwrap_or(Value::Null);
            r["revert"] == true && r["phase"] == "succeeded"
        })
    {
        bail!("the revert after rollout {n} did not finish");
    }
    let decided_unix = failed.as_ref().and_then(|e| e["unix_ms"].as_u64());
    let log = load.snapshot();
    let canary_answers: Vec<Instant> = log
        .iter()
        .filter(|(at, r)| *at >= t0 && r.as_ref().is_ok_and(|copy| canaries.contains(copy)))
        .map(|(at, _)| *at)
        .collect();
    let first = canary_answers.iter().min().copied();
    let at_unix =
        |i: Instant| t0_unix + u64::try_from(i.duration_since(t0).as_millis()).unwrap_or(0);
    let detect_ms = match (first, decided_unix) {
        (Some(f), Some(d)) => Some(d.saturating_sub(at_unix(f))),
        _ => None,
    };
    // The canaries' share of the answers during each traffic step: from a second after it
    // began (HAProxy's weights follow within the adapter's poll) to a second before the next.
    let marks: Vec<u64> = events
        .iter()
        .filter(|e| {
            matches!(
                e["kind"].as_str(),
                Some("rollout.step" | "rollout.rolling" | "rollout.failed")
            )
        })
        .filter_map(|e| e["unix_ms"].as_u64())
        .collect();
    let mut shares = Vec::new();
    if let Some(first) = first.filter(|_| !opts.steps.is_empty()) {
        let mut from = at_unix(first);
        for (k, share) in opts.steps.iter().enumerate() {
            let Some(&to) = marks.get(k) else { break };
            let (lo, hi) = (from + 1000, to.saturating_sub(1000));
            let (mut all, mut mine) = (0usize, 0usize);
            for (at, r) in &log {
                let u = at_unix(*at);
                if *at >= t0
                    && u >= lo
                    && u < hi
                    && let Ok(copy) = r
                {
                    all += 1;
                    if canaries.contains(copy) {
                        mine += 1;
                    }
                }
            }
            if all > 0 {
                shares.push((*share, 100.0 * mine as f64 / all as f64));
            }
            from = to;
        }
    }
    let canary_requests = canary_answers
        .iter()
        .filter(|i| decided_unix.is_none_or(|d| at_unix(**i) <= d))
        .count();
    Ok(Sample {
        aborted: failed.is_some(),
        detect_ms,
        canary_requests,
        reason: failed
            .and_then(|e| e["message"].as_str().map(str::to_string))
            .unwrap_or_default(),
        shares,
    })
}
