//! The agent-restart benchmark (`warden bench agent-restart`): what an agent restart costs the
//! work it runs, on a real local cluster with agents that keep their tasks across restarts
//! (`--reattach-window-ms`).
//!
//! - **Planned restarts**: a service of one `warden workload http` copy per agent behind a
//!   real HAProxy driven by the server's adapter, a singleton, and a steady request rate
//!   through HAProxy. Every agent in turn gets SIGHUP (it re-executes itself in place and
//!   takes its tasks over); the next one only once the previous is healthy again and every
//!   copy serves. Counted: requests that failed, task processes restarted (a pid or epoch that
//!   changed), singleton replacements, recoveries, and the time each agent was away (from the
//!   SIGHUP until the server opened the new process's session, by the server's event).
//! - **Unplanned agent death**: the agent running the singleton is SIGKILLed; the singleton's
//!   RTO (its recovery record) is measured, and whether the service copy on that agent kept
//!   running; then the agent is started again and takes its service copy back. Done with a
//!   reattach window and without one (every task dies with its agent), on the same machine.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use serde::Serialize;
use serde_json::Value;
use warden_core::qos::percentile;

use crate::cluster::{Cluster, TaskProc, free_port, is_alive, wait_until};
use crate::traffic::{HAPROXY, Haproxy, Load, request};

/// What to run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Agents (one service copy each).
    pub agents: usize,
    /// Rounds of planned restarts of every agent.
    pub rounds: usize,
    /// Requests per second through HAProxy.
    pub rate: u32,
    /// Kill -9 repetitions per mode for the singleton RTO.
    pub kills: usize,
}

/// What was measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Planned restarts done.
    pub restarts: usize,
    /// Requests sent through HAProxy during the restarts.
    pub sent: usize,
    /// Of which failed (non-200, reset, or no answer within 2 s).
    pub failed: usize,
    /// Task processes restarted (pid or epoch changed) across the restarts.
    pub task_restarts: usize,
    /// Times the singleton was started anew.
    pub singleton_replacements: usize,
    /// Recoveries recorded during the restarts.
    pub recoveries: usize,
    /// Time each agent was away, ms (SIGHUP → the server has a heartbeat of the new process).
    pub away_ms: Vec<f64>,
    /// Singleton RTO after kill -9 of its agent, with a reattach window, ms.
    pub rto_reattach_ms: Vec<f64>,
    /// The same without a reattach window (tasks die with their agent), ms.
    pub rto_plain_ms: Vec<f64>,
    /// With a reattach window: kills after which the service copy on the killed agent kept
    /// running (same pid) and was taken back by the restarted agent.
    pub services_kept: usize,
    /// Agent restarted with no server reachable and nothing left running (a host reboot):
    /// from the start of the agent process until its cached service copy runs again, ms.
    pub offline_start_ms: Vec<f64>,
    /// Of those, times a singleton was started without a server (must be 0).
    pub offline_singletons: usize,
}

/// Time between two planned restarts, with the load running.
const GAP: Duration = Duration::from_secs(2);

fn job(agents: usize) -> String {
    format!(
        "name = \"web\"\nkind = \"service\"\nreplicas = {agents}\ncommand = \"{{exe}}\"\n\
         args = [\"workload\", \"http\"]\n[resources]\ncpu_millis = 10\nmemory_mb = 16\n\
         [service]\nport = \"dynamic\"\n"
    )
}

const SINGLETON: &str = "name = \"solo\"\nkind = \"singleton\"\ncommand = \"{exe}\"\n\
    args = [\"workload\", \"sleep\", \"--every\", \"60\"]\n\
    [resources]\ncpu_millis = 10\nmemory_mb = 16\n";

const SERVER: &str = "[control.lifecycle.health.cpu]\ngood = 0.85\nbad = 0.98\nweight = 0.0\n\n\
    [control.lifecycle.health.pressure]\ngood = 10.0\nbad = 60.0\nweight = 0.0\n";

/// Run both parts.
pub fn run(exe: &Path, s: &Settings, mut progress: impl FnMut(&str)) -> Result<Report> {
    if !Path::new(HAPROXY).exists() {
        bail!("{HAPROXY} is missing: apt-get install haproxy");
    }
    let mut report = planned(exe, s, &mut progress)?;
    for i in 0..s.kills {
        let (ms, singleton) = offline(exe)?;
        progress(&format!(
            "offline restart {}: service running again {ms:.0} ms after the agent started{}",
            i + 1,
            if singleton {
                " — A SINGLETON RAN"
            } else {
                ""
            }
        ));
        report.offline_start_ms.push(ms);
        report.offline_singletons += usize::from(singleton);
    }
    for reattach in [true, false] {
        for i in 0..s.kills {
            let (rto, kept) = killed(exe, reattach)?;
            progress(&format!(
                "kill -9 {} (reattach {}): singleton RTO {rto:.0} ms{}",
                i + 1,
                if reattach { "on" } else { "off" },
                if kept { ", service copy kept" } else { "" }
            ));
            if reattach {
                report.rto_reattach_ms.push(rto);
                report.services_kept += usize::from(kept);
            } else {
                report.rto_plain_ms.push(rto);
            }
        }
    }
    Ok(report)
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn base(agent: &str) -> &str {
    agent.split('#').next().unwrap_or(agent)
}

fn snapshot(c: &Cluster) -> Vec<TaskProc> {
    let mut p = c.task_procs();
    p.sort_by(|a, b| a.task.cmp(&b.task));
    p
}

fn planned(exe: &Path, s: &Settings, progress: &mut impl FnMut(&str)) -> Result<Report> {
    let dir = tempfile::Builder::new()
        .prefix("warden-restart-")
        .tempdir()?;
    let port = free_port()?;
    let socket = dir.path().join("haproxy.sock");
    let cfg = format!(
        "{SERVER}\n[[haproxy]]\nservice = \"web\"\nsocket = \"{}\"\nbackend = \"web\"\npoll = \"200ms\"\n",
        socket.display()
    );
    let cfg_path = dir.path().join("server.toml");
    std::fs::write(&cfg_path, cfg)?;
    let cfg_str = cfg_path.display().to_string();
    let mut c = Cluster::start_with_env(exe, &[("WARDEN_CONFIG", cfg_str.as_str())])?;
    c.set_reattach_window(Duration::from_secs(30));
    c.add_agents(s.agents)?;
    c.submit(&job(s.agents))?;
    c.submit(SINGLETON)?;
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
    if !wait_until(Duration::from_secs(60), || serving(&c) == s.agents) {
        bail!("{} instances not serving:\n{}", s.agents, c.log("server"));
    }
    let backend = format!(
        "  server-template srv 1-{} 127.0.0.1:1 disabled\n",
        s.agents + 2
    );
    let haproxy = Haproxy::start(dir.path(), port, &socket, &backend)?;
    if !wait_until(Duration::from_secs(30), || {
        haproxy.taking().len() == s.agents && request(port).is_ok()
    }) {
        bail!("not every instance answers through HAProxy");
    }
    if !wait_until(Duration::from_secs(30), || {
        c.task("solo/0")
            .is_some_and(|t| str_of(&t, "state") == "running")
    }) {
        bail!("the singleton never ran");
    }
    let before = snapshot(&c);
    let recoveries_before = recoveries(&c);
    let names: Vec<String> = c.agent_pids().keys().cloned().collect();
    let load = Load::start(port, s.rate);
    std::thread::sleep(Duration::from_millis(500));
    let t_start = Instant::now();
    let mut away = Vec::new();
    for _ in 0..s.rounds {
        for name in &names {
            let t0 = unix_ms();
            c.signal_agent(name, Signal::SIGHUP)?;
            // Away from the SIGHUP until the server opened the new process's session (its
            // event, stamped by the server; the first heartbeat follows at once), and it is
            // healthy again.
            let mut opened = None;
            let back = wait_until(Duration::from_secs(30), || {
                opened = session_opened_after(&c, name, t0);
                opened.is_some() && c.agent_state(name).as_deref() == Some("healthy")
            });
            let Some(opened) = opened.filter(|_| back) else {
                bail!("{name} did not come back:\n{}", c.log(name));
            };
            let ms = opened.saturating_sub(t0) as f64;
            progress(&format!("planned restart of {name}: away {ms:.0} ms"));
            away.push(ms);
            if !wait_until(Duration::from_secs(30), || {
                haproxy.taking().len() == s.agents
            }) {
                bail!("not every instance serves after restarting {name}");
            }
            // Load flows through every copy between two restarts (part of the measure).
            std::thread::sleep(GAP);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let log = load.finish();
    let in_window: Vec<_> = log.iter().filter(|(at, _)| *at >= t_start).collect();
    let after = snapshot(&c);
    let task_restarts = before
        .iter()
        .filter(|b| {
            !after
                .iter()
                .any(|a| a.task == b.task && a.pid == b.pid && a.token == b.token)
        })
        .count();
    let solo_before = before.iter().find(|p| p.task == "solo/0").map(|p| p.token);
    let solo_after = after.iter().find(|p| p.task == "solo/0").map(|p| p.token);
    drop(haproxy);
    Ok(Report {
        restarts: away.len(),
        sent: in_window.len(),
        failed: in_window.iter().filter(|(_, r)| r.is_err()).count(),
        task_restarts,
        singleton_replacements: usize::from(solo_before != solo_after),
        recoveries: recoveries(&c).saturating_sub(recoveries_before),
        away_ms: away,
        ..Report::default()
    })
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// When (unix ms, the server's clock: same machine) the server opened a session of `name` at
/// or after `since`.
fn session_opened_after(c: &Cluster, name: &str, since: u64) -> Option<u64> {
    // Oldest first, at most 10,000: a bench run stays far below that.
    let events = c.client.get("/v1/events?limit=10000").ok()?;
    events
        .as_array()?
        .iter()
        .filter(|e| str_of(e, "kind") == "agent.session" && base(str_of(e, "agent")) == name)
        .filter_map(|e| e.get("unix_ms").and_then(Value::as_u64))
        .find(|t| *t >= since)
}

fn recoveries(c: &Cluster) -> usize {
    c.client
        .get("/v1/recoveries")
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0)
}

/// One kill -9 of the singleton's agent; returns the singleton's RTO (ms) and whether the
/// service copy on that agent kept running and was taken back.
fn killed(exe: &Path, reattach: bool) -> Result<(f64, bool)> {
    let dir = tempfile::Builder::new().prefix("warden-kill-").tempdir()?;
    let cfg_path = dir.path().join("server.toml");
    std::fs::write(&cfg_path, SERVER)?;
    let cfg_str = cfg_path.display().to_string();
    let mut c = Cluster::start_with_env(exe, &[("WARDEN_CONFIG", cfg_str.as_str())])?;
    if reattach {
        c.set_reattach_window(Duration::from_secs(30));
    }
    c.add_agent("a1")?;
    c.submit(SINGLETON)?;
    c.submit(&job(1).replace("\"http\"]", "\"sleep\", \"--every\", \"60\"]"))?;
    let on_a1 = |c: &Cluster, task: &str| {
        c.task(task)
            .is_some_and(|t| str_of(&t, "state") == "running" && base(str_of(&t, "agent")) == "a1")
    };
    if !wait_until(Duration::from_secs(30), || {
        on_a1(&c, "solo/0") && on_a1(&c, "web/0") && c.task_procs().len() == 2
    }) {
        bail!("tasks never ran on a1");
    }
    c.add_agent("a2")?;
    if !wait_until(Duration::from_secs(30), || {
        c.agent_state("a2").as_deref() == Some("healthy")
    }) {
        bail!("a2 never healthy");
    }
    let web = c
        .task_procs()
        .into_iter()
        .find(|p| p.task == "web/0")
        .context("no web/0 process")?;
    c.kill_agent("a1")?;
    let mut rto = None;
    if !wait_until(Duration::from_secs(30), || {
        let recs = c.client.get("/v1/recoveries").ok();
        rto = recs.as_ref().and_then(Value::as_array).and_then(|recs| {
            recs.iter()
                .find(|r| str_of(r, "task") == "solo/0" && str_of(r, "outcome") == "succeeded")
                .and_then(|r| r.get("rto_ms").and_then(Value::as_f64))
        });
        rto.is_some()
    }) {
        bail!("no succeeded recovery of solo/0:\n{}", c.log("server"));
    }
    let mut kept = false;
    if reattach {
        let alive = is_alive(web.pid);
        c.restart_agent("a1")?;
        kept = alive
            && wait_until(Duration::from_secs(30), || {
                c.agent_state("a1").as_deref() == Some("healthy")
                    && c.task_procs()
                        .iter()
                        .any(|p| p.task == "web/0" && p.pid == web.pid && p.token == web.token)
            });
    }
    Ok((rto.unwrap_or_default(), kept))
}

/// An agent restarted while its server is unreachable, with nothing of its left running:
/// how long until its cached service copy runs, and whether a singleton ran.
fn offline(exe: &Path) -> Result<(f64, bool)> {
    let dir = tempfile::Builder::new()
        .prefix("warden-offline-")
        .tempdir()?;
    let cfg_path = dir.path().join("server.toml");
    std::fs::write(&cfg_path, SERVER)?;
    let cfg_str = cfg_path.display().to_string();
    let mut c = Cluster::start_with_env(exe, &[("WARDEN_CONFIG", cfg_str.as_str())])?;
    c.set_reattach_window(Duration::from_secs(30));
    let proxy = crate::proxy::Proxy::start(c.grpc_addr)?;
    c.add_agent_with("a1", &[proxy.addr()], &[], None)?;
    c.submit(SINGLETON)?;
    c.submit(&job(1).replace("\"http\"]", "\"sleep\", \"--every\", \"60\"]"))?;
    if !wait_until(Duration::from_secs(30), || c.task_procs().len() == 2) {
        bail!("tasks never ran on a1");
    }
    // Cut off from the server; the host "reboots": agent, shims and tasks die.
    proxy.cut();
    c.kill_agent("a1")?;
    for pid in crate::cluster::scan_shim_pids(c.marker()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    for p in c.task_procs() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), Signal::SIGKILL);
    }
    if !wait_until(Duration::from_secs(10), || c.task_procs().is_empty()) {
        bail!("tasks survived the reboot");
    }
    let t0 = Instant::now();
    c.restart_agent("a1")?;
    if !wait_until(Duration::from_secs(30), || {
        c.task_procs().iter().any(|p| p.task == "web/0")
    }) {
        bail!("the cached service never ran offline:\n{}", c.log("a1"));
    }
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    // Watched for a second more: no singleton may start without a server.
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut singleton = false;
    while Instant::now() < deadline {
        singleton |= c.task_procs().iter().any(|p| p.task == "solo/0");
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.heal();
    Ok((ms, singleton))
}

/// The report as a table.
pub fn format_table(s: &Settings, r: &Report) -> String {
    let mut away = r.away_ms.clone();
    away.sort_by(f64::total_cmp);
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0} ms"));
    let pct = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        format!(
            "p50 {} p99 {} (n={})",
            ms(percentile(&v, 0.5)),
            ms(percentile(&v, 0.99)),
            v.len()
        )
    };
    format!(
        "planned restarts of {} agents x {} round(s) under {} req/s through HAProxy:\n\
         restarts {}  requests {}  failed {}  task restarts {}  singleton replacements {}  recoveries {}\n\
         agent away: {}\n\
         singleton RTO after kill -9 of its agent, reattach window 30 s: {}  (service copy kept and taken back: {}/{})\n\
         singleton RTO after kill -9 of its agent, no reattach window:   {}\n\
         agent restarted offline (server unreachable, host rebooted): cached service running again {}; singletons started: {}\n",
        s.agents,
        s.rounds,
        s.rate,
        r.restarts,
        r.sent,
        r.failed,
        r.task_restarts,
        r.singleton_replacements,
        r.recoveries,
        pct(&away),
        pct(&r.rto_reattach_ms),
        r.services_kept,
        r.rto_reattach_ms.len(),
        pct(&r.rto_plain_ms),
        pct(&r.offline_start_ms),
        r.offline_singletons,
    )
}
