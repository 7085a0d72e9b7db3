//! Failed requests through a real HAProxy while a bad version rolls out
//! (`warden bench rollout-traffic`).
//!
//! A real local cluster (a server and 4 agents), a 10-copy service of `warden workload http`
//! behind a real HAProxy driven by the server's HAProxy adapter, and an open-loop request rate
//! through HAProxy. A bad version — the same program, exiting 3 s after it starts, as a
//! version that crashes under traffic does — is submitted two ways, each on a fresh cluster and
//! HAProxy per repetition:
//!
//! - `checked`: Warden's rollout (`canary = 1`, `max_parallel = 3`, `min_healthy_time = "5s"`,
//!   `auto_revert`): the canary crashes, the rollout is aborted and reverted.
//! - `plain`: every copy replaced at once and nothing put back (`max_parallel = 10`,
//!   `auto_revert = false`): what a redeploy without a staged rollout does.
//!
//! Counted: requests sent in the window from the submission that fail (non-200 answer, reset,
//! or no answer within 2 s).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;
use serde_json::Value;

use crate::cluster::{Cluster, free_port, wait_until};
use crate::traffic::{Haproxy, Load, request};

/// How the bad version is rolled out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Warden's rollout: a canary, the checks, automatic revert.
    Checked,
    /// Every copy at once, nothing put back.
    Plain,
}

/// One repetition.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// How the version was rolled out.
    pub strategy: Strategy,
    /// Requests sent in the window.
    pub sent: usize,
    /// Of those, failed.
    pub failed: usize,
    /// Copies that ran the bad version.
    pub bad_copies: usize,
}

const COPIES: u32 = 10;

fn job(args: &str, update: &str) -> String {
    format!(
        "name = \"web\"\nkind = \"service\"\nreplicas = {COPIES}\ncommand = \"{{exe}}\"\n\
         args = {args}\n[resources]\ncpu_millis = 10\nmemory_mb = 16\n\
         [service]\nport = \"dynamic\"\n[update]\n{update}"
    )
}

const GOOD: &str = "[\"workload\", \"http\"]";
const BAD: &str = "[\"workload\", \"http\", \"--exit-after-ms\", \"3000\"]";

fn update(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::Checked => {
            "max_parallel = 3\ncanary = 1\nauto_promote = true\nmin_healthy_time = \"5s\"\n"
        }
        Strategy::Plain => "max_parallel = 10\nauto_revert = false\nmin_healthy_time = \"1s\"\n",
    }
}

/// Run `reps` repetitions of each strategy at `rate` requests/s, counting over `window`.
pub fn run(
    exe: &Path,
    reps: usize,
    rate: u32,
    window: Duration,
    mut progress: impl FnMut(&Sample),
) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for _ in 0..reps {
        for strategy in [Strategy::Checked, Strategy::Plain] {
            let s = one(exe, strategy, rate, window)?;
            progress(&s);
            out.push(s);
        }
    }
    Ok(out)
}

fn one(exe: &Path, strategy: Strategy, rate: u32, window: Duration) -> Result<Sample> {
    let dir = tempfile::Builder::new()
        .prefix("warden-rollout-traffic-")
        .tempdir()?;
    let port = free_port()?;
    let socket = dir.path().join("haproxy.sock");
    let server_cfg = format!(
        "[control.lifecycle.health.cpu]\ngood = 0.85\nbad = 0.98\nweight = 0.0\n\n\
         [control.lifecycle.health.pressure]\ngood = 10.0\nbad = 60.0\nweight = 0.0\n\n\
         [[haproxy]]\nservice = \"web\"\nsocket = \"{}\"\nbackend = \"web\"\npoll = \"200ms\"\n",
        socket.display()
    );
    let cfg_path = dir.path().join("server.toml");
    std::fs::write(&cfg_path, server_cfg)?;
    let cfg_str = cfg_path.display().to_string();
    let mut cluster = Cluster::start_with_env(exe, &[("WARDEN_CONFIG", cfg_str.as_str())])?;
    cluster.add_agents(4)?;
    cluster.submit(&job(GOOD, update(strategy)))?;
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
    if !wait_until(Duration::from_secs(60), || {
        serving(&cluster) == COPIES as usize
    }) {
        bail!("{COPIES} instances not serving:\n{}", cluster.log("server"));
    }
    let haproxy = Haproxy::start(
        dir.path(),
        port,
        &socket,
        &format!(
            "  server-template srv 1-{} 127.0.0.1:1 disabled\n",
            COPIES + 2
        ),
    )?;
    if !wait_until(Duration::from_secs(30), || {
        haproxy.taking().len() == COPIES as usize && request(port).is_ok()
    }) {
        bail!("the instances do not answer through HAProxy");
    }
    let load = Load::start(port, rate);
    std::thread::sleep(Duration::from_secs(1));
    let submitted = Instant::now();
    cluster.submit(&job(BAD, update(strategy)))?;
    let bad_version = cluster
        .client
        .get("/v1/jobs/web/versions")?
        .get("releases")
        .and_then(Value::as_array)
        .and_then(|r| r.last())
        .and_then(|r| r["version"].as_u64())
        .unwrap_or(0);
    let end = submitted + window;
    let mut bad: std::collections::BTreeSet<(String, u64)> = std::collections::BTreeSet::new();
    while Instant::now() < end {
        for t in cluster
            .client
            .get("/v1/tasks")
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
        {
            if t["version"].as_u64() == Some(bad_version)
                && let (Some(id), Some(e)) = (t["id"].as_str(), t["epoch"].as_u64())
            {
                bad.insert((id.to_string(), e));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = load.finish();
    let in_window: Vec<&Result<String, String>> = log
        .iter()
        .filter(|(at, _)| *at >= submitted && *at < end)
        .map(|(_, r)| r)
        .collect();
    let failed = in_window.iter().filter(|r| r.is_err()).count();
    drop(haproxy);
    cluster.shutdown();
    Ok(Sample {
        strategy,
        sent: in_window.len(),
        failed,
        bad_copies: bad.len(),
    })
}
