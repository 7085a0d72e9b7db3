//! Resource isolation with real cgroups: a real server and `warden agent` (started by the chaos
//! harness with `--cgroups required` under a cgroup prefix of the cluster's own), real tasks
//! that leak memory, spin on every core or fork without end. Every cgroup a test creates is
//! removed when its cluster shuts down, and the tests check that it was.
//!
//! Writing cgroups needs root; as another user the tests check that `--cgroups required`
//! refuses to start instead.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{start_cluster, wait_until, warden_bin};
use serde_json::Value;
use warden_agent::cgroup::{self, Layout};
use warden_chaos::cluster::Cluster;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A cluster of one server and one agent whose tasks are confined, with extra agent flags.
fn confined(name: &str, agent_flags: &[&str]) -> (Cluster, Layout) {
    let layout = cgroup::detect().expect("a cgroup hierarchy with memory, cpu or pids");
    let mut cluster = start_cluster(name);
    cluster.confine_tasks();
    cluster.set_agent_args(agent_flags);
    cluster
        .add_agents(1)
        .expect("the confined agent turns healthy");
    (cluster, layout)
}

/// Check that the agent never turned Suspect or Failed, shut the cluster down, and check
/// that no cgroup of its agents is left in any hierarchy.
fn finish(mut cluster: Cluster, layout: &Layout) {
    let verdicts = no_suspect(&cluster);
    assert!(verdicts.is_empty(), "{verdicts:#?}");
    let parent = cluster.agent_cgroup("agent-1").expect("confined");
    let prefix = parent.split('/').next().expect("prefix").to_string();
    cluster.shutdown();
    for h in &layout.hierarchies {
        let dir = h.mount.join(&prefix);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

/// The task's cgroup directory in the hierarchy carrying `controller`.
fn task_cgroup(cluster: &Cluster, layout: &Layout, controller: &str, task: &str) -> PathBuf {
    let h = layout
        .hierarchies
        .iter()
        .find(|h| h.controllers.iter().any(|c| c == controller))
        .expect("controller mounted");
    let epoch = cluster
        .task(task)
        .and_then(|t| t["epoch"].as_u64())
        .expect("epoch");
    let name = task.replace('/', ".");
    h.mount
        .join(cluster.agent_cgroup("agent-1").expect("confined"))
        .join(cgroup::TASKS_DIR)
        .join(format!("{name}.{epoch}"))
}

/// Events of `kind` since the start.
fn events(cluster: &Cluster, kind: &str) -> Vec<Value> {
    cluster
        .client
        .get("/v1/events?since=0&limit=10000")
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

/// Submit a job and wait until its task `task` runs; its pid.
fn run_job(cluster: &Cluster, toml: &str, task: &str) -> i32 {
    cluster.submit(toml).expect("submit");
    // The pid seen running: a second scan of /proc may miss it while the task's processes
    // come and go (the fork bomb).
    let mut pid = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            pid = task_pid(cluster, task);
            pid.is_some()
        }),
        "{task} did not start"
    );
    pid.expect("running")
}

fn task_pid(cluster: &Cluster, task: &str) -> Option<i32> {
    cluster
        .task_procs()
        .into_iter()
        .find(|t| t.task == task)
        .map(|t| t.pid)
}

/// CPU time (user + system, all threads) of `pid` in seconds.
fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    Some(ticks as f64 / hz as f64)
}

fn no_suspect(cluster: &Cluster) -> Vec<Value> {
    events(cluster, "agent.transition")
        .into_iter()
        .filter(|e| matches!(e["data"]["to"].as_str(), Some("suspect" | "failed")))
        .collect()
}

const CALM: &str = "name = \"calm\"\nkind = \"service\"\nreplicas = 1\ncommand = \"{exe}\"\n\
args = [\"workload\", \"sleep\", \"--every\", \"5\"]\n[resources]\ncpu_millis = 100\nmemory_mb = 64\n";

#[test]
fn without_root_required_limits_refuse_to_start() {
    if is_root() {
        return; // the tests below run confined
    }
    let out = std::process::Command::new(warden_bin())
        .args(["agent", "--cgroups", "required", "--server", "127.0.0.1:1"])
        .output()
        .expect("run the agent");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--cgroups required"), "{stderr}");
}

#[test]
fn a_task_past_its_memory_limit_is_oom_killed_and_restarted_and_its_neighbour_runs_on() {
    if !is_root() {
        return; // see without_root_required_limits_refuse_to_start
    }
    let (cluster, layout) = confined("cgroups-oom", &[]);
    let calm = run_job(&cluster, CALM, "calm/0");
    cluster
        .submit(
            "name = \"hog\"\nkind = \"service\"\nreplicas = 1\ncommand = \"{exe}\"\n\
             args = [\"workload\", \"alloc\", \"--mb\", \"512\"]\n\
             [resources]\ncpu_millis = 500\nmemory_mb = 48\n",
        )
        .expect("submit hog");
    // Killed at its limit, restarted after a backoff, killed again.
    assert!(
        wait_until(Duration::from_secs(40), || events(
            &cluster,
            "task.oom_killed"
        )
        .len()
            >= 2),
        "two OOM kills of hog/0: {:#?}",
        events(&cluster, "task.oom_killed")
    );
    let oom = events(&cluster, "task.oom_killed");
    assert!(oom.iter().all(|e| e["task"] == "hog/0"), "{oom:#?}");
    assert!(
        oom[0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("oom_killed: went past its memory limit"),
        "{oom:#?}"
    );
    // The agent counted them, and restarted the task in place.
    let metrics = http_get(&probe_of(&cluster), "/metrics");
    let count = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        count("warden_agent_task_oom_kills_total") >= 2.0,
        "{metrics}"
    );
    assert!(
        count("warden_agent_task_restarts_total") >= 1.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("warden_agent_task_limits_enforced{cgroup=\"v"),
        "{metrics}"
    );
    // Its neighbour never noticed.
    assert_eq!(
        task_pid(&cluster, "calm/0"),
        Some(calm),
        "calm/0 was restarted"
    );
    finish(cluster, &layout);
}

#[test]
fn a_spinning_task_gets_its_cpu_quota_and_the_agent_stays_healthy() {
    if !is_root() {
        return;
    }
    let (cluster, layout) = confined("cgroups-cpu", &[]);
    let pid = run_job(
        &cluster,
        "name = \"spin\"\nkind = \"service\"\nreplicas = 1\ncommand = \"{exe}\"\n\
         args = [\"workload\", \"burn\", \"--threads\", \"4\"]\n\
         [resources]\ncpu_millis = 200\nmemory_mb = 64\nmemory_high_mb = 48\n",
        "spin/0",
    );
    // Let it settle, then measure over a few seconds.
    std::thread::sleep(Duration::from_secs(1));
    let (t0, c0) = (Instant::now(), cpu_seconds(pid).expect("cpu time"));
    std::thread::sleep(Duration::from_secs(5));
    let (t1, c1) = (Instant::now(), cpu_seconds(pid).expect("cpu time"));
    let cores = (c1 - c0) / (t1 - t0).as_secs_f64();
    assert!(
        cores <= 0.25,
        "4 spinning threads at cpu_millis = 200 used {cores:.2} cores"
    );
    assert!(cores > 0.05, "the task hardly ran ({cores:.2} cores)");
    let dir = task_cgroup(&cluster, &layout, "cpu", "spin/0");
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).expect("cpu.stat of the task");
    let throttled = stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(throttled > 0, "the quota never throttled it: {stat}");
    // The soft memory mark is in its memory cgroup.
    let mem = task_cgroup(&cluster, &layout, "memory", "spin/0");
    let high = std::fs::read_to_string(mem.join("memory.soft_limit_in_bytes"))
        .or_else(|_| std::fs::read_to_string(mem.join("memory.high")))
        .expect("soft mark");
    assert_eq!(high.trim(), (48u64 << 20).to_string());
    // The agent shows it: throttled in most periods, and its memory.
    let metrics = http_get(&probe_of(&cluster), "/metrics");
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
            .unwrap_or(-1.0)
    };
    let ratio = value("warden_agent_task_cpu_throttled_ratio{task=\"spin/0\"}");
    assert!(ratio > 0.5, "throttled ratio {ratio}:\n{metrics}");
    assert!(
        value("warden_agent_task_memory_bytes{task=\"spin/0\"}") > 0.0,
        "{metrics}"
    );
    // Pressure stall information per task, where the kernel keeps it (v2, or the unified
    // hierarchy of a hybrid host): four threads in a fifth of a core wait most of the time.
    if layout.hierarchies.iter().any(|h| h.controllers.is_empty())
        || layout.version == cgroup::Version::V2
    {
        let psi = value("warden_agent_task_pressure_ratio{task=\"spin/0\",resource=\"cpu\"}");
        assert!(psi > 0.2, "cpu pressure {psi}:\n{metrics}");
        // Starved most of the time: the agent says so.
        assert!(
            wait_until(Duration::from_secs(30), || {
                events(&cluster, "task.pressure")
                    .iter()
                    .any(|e| e["task"] == "spin/0")
            }),
            "no task.pressure event"
        );
    }
    // And reports it: throttled most of the time is a signal, not a mystery.
    assert!(
        wait_until(Duration::from_secs(20), || {
            events(&cluster, "task.throttled")
                .iter()
                .any(|e| e["task"] == "spin/0")
        }),
        "no task.throttled event"
    );
    assert_eq!(cluster.agent_state("agent-1").as_deref(), Some("healthy"));
    finish(cluster, &layout);
}

#[test]
fn a_fork_bomb_stops_at_the_pids_limit_and_goes_with_its_task() {
    if !is_root() {
        return;
    }
    let (cluster, layout) = confined("cgroups-pids", &["--task-pids-max", "64"]);
    let calm = run_job(&cluster, CALM, "calm/0");
    run_job(
        &cluster,
        "name = \"bomb\"\nkind = \"service\"\nreplicas = 1\ncommand = \"sh\"\n\
         args = [\"-c\", \"while :; do sleep 600 & done\"]\n\
         [resources]\ncpu_millis = 200\nmemory_mb = 64\n",
        "bomb/0",
    );
    let dir = task_cgroup(&cluster, &layout, "pids", "bomb/0");
    let current = || -> u64 {
        std::fs::read_to_string(dir.join("pids.current"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(20), || current() >= 60),
        "the bomb did not grow: {}",
        current()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(current() <= 64, "{} processes, limit 64", current());
    assert_eq!(cluster.agent_state("agent-1").as_deref(), Some("healthy"));
    assert_eq!(task_pid(&cluster, "calm/0"), Some(calm));
    // Stopping the job takes every process of the bomb with it, and its cgroup.
    cluster
        .client
        .request("DELETE", "/v1/jobs/bomb", None, b"")
        .expect("delete bomb");
    assert!(
        wait_until(Duration::from_secs(20), || {
            !dir.exists() && !cluster.task_procs().iter().any(|t| t.task == "bomb/0")
        }),
        "bomb processes or cgroup left: {:?}",
        cluster
            .task_procs()
            .iter()
            .filter(|t| t.task == "bomb/0")
            .count()
    );
    finish(cluster, &layout);
}

fn probe_of(cluster: &Cluster) -> String {
    cluster.agent("agent-1").expect("agent")["probe_addr"]
        .as_str()
        .expect("probe address")
        .to_string()
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the agent");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn a_harness_host_cgroup_holds_its_agent_with_the_host_limits() {
    if !is_root() {
        return;
    }
    let layout = cgroup::detect().expect("a cgroup hierarchy");
    let mut cluster = start_cluster("cgroups-hosts");
    cluster.host_cgroups(500, 512);
    cluster
        .add_agents(1)
        .expect("the agent turns healthy in its host");
    let parent = cluster.agent_cgroup("agent-1").expect("host cgroup");
    let pid = cluster.agent_pid("agent-1").expect("agent pid");
    // The agent process itself sits in its host cgroup, in every hierarchy.
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("its cgroups");
    for h in &layout.hierarchies {
        // v1 lines name their controllers; the unified hierarchy's line names none.
        let line = own
            .lines()
            .find(|l| {
                let cs = l.split(':').nth(1).unwrap_or("");
                match h.controllers.first() {
                    Some(c) => cs.split(',').any(|x| x == c),
                    None => cs.is_empty(),
                }
            })
            .unwrap_or_else(|| panic!("no line for {} in {own}", h.mount.display()));
        assert!(
            line.ends_with(&format!("/{parent}")),
            "{line} (want …/{parent})"
        );
    }
    // With the host's limits.
    let cpu = layout
        .hierarchies
        .iter()
        .find(|h| h.controllers.iter().any(|c| c == "cpu"))
        .expect("cpu");
    let quota = std::fs::read_to_string(cpu.mount.join(&parent).join("cpu.cfs_quota_us"))
        .or_else(|_| std::fs::read_to_string(cpu.mount.join(&parent).join("cpu.max")))
        .expect("quota");
    assert!(quota.trim().starts_with("50000"), "{quota}");
    let procs = cluster
        .host_stress_cgroup("agent-1")
        .expect("stress cgroup");
    assert_eq!(procs.len(), layout.hierarchies.len());
    assert!(
        procs
            .iter()
            .all(|p| p.ends_with("stress/cgroup.procs") && p.exists())
    );
    let prefix = parent.split('/').next().expect("prefix").to_string();
    cluster.shutdown();
    for h in &layout.hierarchies {
        assert!(
            !h.mount.join(&prefix).exists(),
            "{prefix} left in {}",
            h.mount.display()
        );
    }
}
