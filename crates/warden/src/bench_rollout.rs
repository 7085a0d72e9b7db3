//! `warden bench rollout`: a bad version rolled out over a real cluster, aborted and reverted.
//!
//! A server and `--agents` agents (real processes) run a `--copies`-copy service (version 1,
//! healthy). Each repetition submits a bad version — one that crashes a second after it
//! starts, or one whose health check fails — with canaries and waves, and measures, from the
//! server's own event log, task list and endpoints registry:
//!
//! - decision: the first bad signal (the bad copy's exit, or its first failed check, as the
//!   copy itself recorded it in a file) → the `rollout.failed` event;
//! - out of traffic: the decision → no copy of the bad version left `up` in the registry;
//! - back: the decision → every copy running the earlier spec again.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use warden_chaos::cluster::{Cluster, wait_until};

/// What went wrong with the bad version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BadKind {
    /// Exits with status 3 a second after it starts.
    Crash,
    /// Runs, but its health check fails.
    Health,
    /// Exits with status 3 eight seconds after it starts: the canaries have counted as good
    /// by then and waves of copies run it when the first one crashes.
    Late,
}

/// One repetition's figures, in ms.
#[derive(Debug, Clone, Copy)]
struct Rep {
    decision: u64,
    out_of_traffic: u64,
    back: u64,
    bad_copies: usize,
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(0)
}

/// What the bench rolls out over: a service of `copies` copies, or a daemon (one copy on
/// every agent; `copies` is then the number of agents).
#[derive(Clone, Copy, Debug)]
struct Shape {
    copies: u32,
    daemon: bool,
}

fn spec(shape: Shape, command: &str, args: &str, health: &str) -> String {
    let kind = if shape.daemon {
        "kind = \"daemon\"".to_string()
    } else {
        format!("kind = \"service\"\nreplicas = {}", shape.copies)
    };
    format!(
        "name = \"web\"\n{kind}\ncommand = \"{command}\"\n\
         args = {args}\n\
         [resources]\ncpu_millis = 10\nmemory_mb = 16\n\
         [service]\nport = \"dynamic\"\n\
         [health]\nkind = \"exec\"\ncommand = {health}\ninterval = \"500ms\"\ntimeout = \"400ms\"\nfailures = 2\n\
         [update]\nmax_parallel = 4\ncanary = 2\nauto_promote = true\nmin_healthy_time = \"3s\"\n\
         healthy_deadline = \"30s\"\n"
    )
}

const GOOD_ARGS: &str = "[\"workload\", \"sleep\", \"--every\", \"60\"]";
const GOOD_CHECK: &str = "[\"/bin/true\"]";

fn tasks(cluster: &Cluster) -> Vec<Value> {
    cluster
        .client
        .get("/v1/tasks")
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// Every copy of web runs, none from `bad` (0: any version).
fn all_running_but(cluster: &Cluster, copies: usize, bad: u64) -> bool {
    let t: Vec<Value> = tasks(cluster)
        .into_iter()
        .filter(|t| t["job"] == "web")
        .collect();
    t.len() >= copies
        && t.iter()
            .take(copies)
            .all(|t| t["state"] == "running" && t["version"].as_u64().is_some_and(|v| v != bad))
}

fn current_version(cluster: &Cluster) -> Result<u64> {
    let v = cluster.client.get("/v1/jobs/web/versions")?;
    v["releases"]
        .as_array()
        .and_then(|r| r.last())
        .and_then(|r| r["version"].as_u64())
        .context("no versions")
}

fn rep(cluster: &Cluster, shape: Shape, kind: BadKind, marks: &std::path::Path) -> Result<Rep> {
    let copies = shape.copies;
    let _ = std::fs::remove_file(marks);
    let marks_s = marks.display().to_string();
    let since = cluster.last_event_seq();
    let bad = match kind {
        BadKind::Crash => spec(
            shape,
            "sh",
            &format!("[\"-c\", \"sleep 1; date +%s%3N >> {marks_s}; exit 3\"]"),
            GOOD_CHECK,
        ),
        BadKind::Late => spec(
            shape,
            "sh",
            &format!("[\"-c\", \"sleep 8; date +%s%3N >> {marks_s}; exit 3\"]"),
            GOOD_CHECK,
        ),
        BadKind::Health => spec(
            shape,
            "{exe}",
            GOOD_ARGS,
            &format!("[\"sh\", \"-c\", \"date +%s%3N >> {marks_s}; exit 1\"]"),
        ),
    };
    cluster.submit(&bad)?;
    let bad_version = current_version(cluster)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut decided: Option<u64> = None;
    let mut out: Option<u64> = None;
    let mut back: Option<u64> = None;
    let mut bad_copies: BTreeSet<(String, u64)> = BTreeSet::new();
    while Instant::now() < deadline && back.is_none() {
        let t = now_ms();
        for task in tasks(cluster) {
            if task["job"] == "web"
                && task["version"].as_u64() == Some(bad_version)
                && let (Some(id), Some(e)) = (task["id"].as_str(), task["epoch"].as_u64())
            {
                bad_copies.insert((id.to_string(), e));
            }
        }
        if decided.is_none() {
            decided = cluster
                .events_since(since)
                .iter()
                .find(|e| e["kind"] == "rollout.failed")
                .and_then(|e| e["unix_ms"].as_u64());
        }
        if let Some(d) = decided {
            if out.is_none() {
                let services = cluster
                    .client
                    .get("/v1/services/web")
                    .unwrap_or(Value::Null);
                let bad_up = services["instances"].as_array().is_some_and(|i| {
                    i.iter().any(|inst| {
                        inst["state"] == "up"
                            && bad_copies.contains(&(
                                inst["task"].as_str().unwrap_or_default().to_string(),
                                inst["epoch"].as_u64().unwrap_or(0),
                            ))
                    })
                });
                if !bad_up {
                    out = Some(t.max(d));
                }
            }
            if current_version(cluster)? > bad_version
                && all_running_but(cluster, copies as usize, bad_version)
            {
                back = Some(t);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (Some(decided), Some(out), Some(back)) = (decided, out, back) else {
        bail!(
            "the bad version was not reverted within 120 s (decided {decided:?}, out {out:?}, back {back:?})"
        );
    };
    let first_bad = std::fs::read_to_string(marks)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .min()
        .context("the bad version left no mark of its first bad signal")?;
    Ok(Rep {
        decision: decided.saturating_sub(first_bad),
        out_of_traffic: out.saturating_sub(decided),
        back: back.saturating_sub(decided),
        bad_copies: bad_copies.len(),
    })
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    if v.is_empty() {
        return 0;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Run the benchmark; `daemon`: roll out over a daemon job (one copy per agent) instead of a
/// `copies`-copy service.
pub fn run(copies: u32, agents: usize, reps: usize, kinds: &[BadKind], daemon: bool) -> Result<()> {
    let shape = Shape {
        copies: if daemon {
            u32::try_from(agents).unwrap_or(u32::MAX)
        } else {
            copies
        },
        daemon,
    };
    let copies = shape.copies;
    let exe = std::env::current_exe()?;
    let mut cluster = Cluster::start(&exe)?;
    cluster.add_agents(agents)?;
    // Tasks may run as another user: their marks go to a directory anyone may write.
    let marks_dir = tempfile::Builder::new()
        .prefix("warden-rollout-marks-")
        .tempdir()?;
    std::fs::set_permissions(
        marks_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )?;
    let marks = marks_dir.path().join("bad-marks");
    cluster.submit(&spec(shape, "{exe}", GOOD_ARGS, GOOD_CHECK))?;
    if !wait_until(Duration::from_secs(90), || {
        all_running_but(&cluster, copies as usize, 0)
    }) {
        bail!("version 1's {copies} copies did not start");
    }
    eprintln!(
        "{copies} copies ({}) on {agents} agents; bad versions rolled out with canary 2, max_parallel 4, auto_revert",
        if daemon {
            "a daemon job, one per agent"
        } else {
            "a service"
        }
    );
    println!(
        "kind    reps  decision p50/p99/max ms  out of traffic p50/p99/max ms  all back p50/p99/max ms  bad copies started (mean)"
    );
    for &kind in kinds {
        let mut rows = Vec::new();
        for i in 0..reps {
            let r = rep(&cluster, shape, kind, &marks)
                .with_context(|| format!("{kind:?} repetition {}", i + 1))?;
            eprintln!(
                "  {kind:?} {}: decision {} ms, out of traffic {} ms, back {} ms, {} bad copies",
                i + 1,
                r.decision,
                r.out_of_traffic,
                r.back,
                r.bad_copies
            );
            rows.push(r);
            // Settle: the revert's copies count as good before the next bad version.
            std::thread::sleep(Duration::from_secs(4));
        }
        let mut d: Vec<u64> = rows.iter().map(|r| r.decision).collect();
        let mut o: Vec<u64> = rows.iter().map(|r| r.out_of_traffic).collect();
        let mut b: Vec<u64> = rows.iter().map(|r| r.back).collect();
        let mean_bad =
            rows.iter().map(|r| r.bad_copies).sum::<usize>() as f64 / rows.len().max(1) as f64;
        println!(
            "{:<7} {:>4}  {:>6}/{:>6}/{:>6}           {:>6}/{:>6}/{:>6}                 {:>6}/{:>6}/{:>6}           {:.1}",
            format!("{kind:?}").to_lowercase(),
            rows.len(),
            pct(&mut d, 0.5),
            pct(&mut d, 0.99),
            d.iter().max().copied().unwrap_or(0),
            pct(&mut o, 0.5),
            pct(&mut o, 0.99),
            o.iter().max().copied().unwrap_or(0),
            pct(&mut b, 0.5),
            pct(&mut b, 0.99),
            b.iter().max().copied().unwrap_or(0),
            mean_bad
        );
    }
    cluster.shutdown();
    Ok(())
}

/// `warden bench rollout --leader-kill`: three servers on a three-member etcd cluster, the
/// leader killed (SIGKILL) in the middle of each rollout of a good version. Measures the time
/// from the kill to the first copy the new leader replaces, and checks that every copy was
/// replaced exactly once (its fencing token one above what it had before the rollout: a
/// repeated wave would bump it twice, a skipped one not at all).
#[cfg(feature = "etcd")]
pub fn leader_kill(copies: u32, agents: usize, reps: usize) -> Result<()> {
    use std::collections::BTreeMap;
    let exe = std::env::current_exe()?;
    let mut cluster = Cluster::start_replicated(&exe, &[], 3, 3)?;
    cluster.add_agents(agents)?;
    let good = |every: u32| {
        format!(
            "name = \"web\"\nkind = \"service\"\nreplicas = {copies}\ncommand = \"{{exe}}\"\n\
             args = [\"workload\", \"sleep\", \"--every\", \"{every}\"]\n\
             [resources]\ncpu_millis = 10\nmemory_mb = 16\n\
             [update]\nmax_parallel = 2\ncanary = 2\nauto_promote = true\nmin_healthy_time = \"2s\"\n\
             healthy_deadline = \"30s\"\n"
        )
    };
    cluster.submit(&good(100))?;
    if !wait_until(Duration::from_secs(90), || {
        all_running_but(&cluster, copies as usize, 0)
    }) {
        bail!("version 1's {copies} copies did not start");
    }
    eprintln!(
        "{copies} copies on {agents} agents, 3 servers on etcd; a good version rolled out 2 at a \
         time (min_healthy_time 2 s), the leader killed once a third of the copies run it"
    );
    let mut resume = Vec::new();
    let mut total = Vec::new();
    for rep in 0..reps {
        let before: BTreeMap<String, u64> = tasks(&cluster)
            .iter()
            .filter(|t| t["job"] == "web")
            .filter_map(|t| Some((t["id"].as_str()?.to_string(), t["epoch"].as_u64()?)))
            .collect();
        let started = Instant::now();
        cluster.submit(&good(101 + u32::try_from(rep).unwrap_or(0)))?;
        let target = current_version(&cluster)?;
        let on_target = |c: &Cluster| {
            tasks(c)
                .iter()
                .filter(|t| t["job"] == "web" && t["version"].as_u64() == Some(target))
                .count()
        };
        if !wait_until(Duration::from_secs(120), || {
            on_target(&cluster) >= copies as usize / 3
        }) {
            bail!("the rollout did not reach a third of the copies");
        }
        let (leader, _) = cluster.leader().context("no leader")?;
        let at_kill = on_target(&cluster);
        let killed = Instant::now();
        cluster.kill_server_at(leader)?;
        // The new leader resumes: a copy beyond those on the new version at the kill.
        if !wait_until(Duration::from_secs(60), || on_target(&cluster) > at_kill) {
            bail!("the rollout did not resume within 60 s of the leader's death");
        }
        let resumed = killed.elapsed();
        if !wait_until(Duration::from_secs(180), || {
            all_running_but(&cluster, copies as usize, 0) && on_target(&cluster) == copies as usize
        }) {
            bail!("the resumed rollout did not finish");
        }
        let took = started.elapsed();
        let after: BTreeMap<String, u64> = tasks(&cluster)
            .iter()
            .filter(|t| t["job"] == "web")
            .filter_map(|t| Some((t["id"].as_str()?.to_string(), t["epoch"].as_u64()?)))
            .collect();
        let wrong: Vec<String> = before
            .iter()
            .filter(|(id, e)| after.get(*id) != Some(&(**e + 1)))
            .map(|(id, e)| format!("{id}: {e} → {:?}", after.get(id)))
            .collect();
        eprintln!(
            "  rep {}: leader {leader} killed with {at_kill}/{copies} copies on version {target}; \
             resumed after {} ms; rollout done in {} ms; replaced more or less than once: {}",
            rep + 1,
            resumed.as_millis(),
            took.as_millis(),
            if wrong.is_empty() {
                "none".to_string()
            } else {
                wrong.join(", ")
            }
        );
        if !wrong.is_empty() {
            bail!(
                "copies replaced more or less than once: {}",
                wrong.join(", ")
            );
        }
        resume.push(u64::try_from(resumed.as_millis()).unwrap_or(u64::MAX));
        total.push(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
        cluster.start_server_at(leader)?;
        std::thread::sleep(Duration::from_secs(3));
    }
    println!(
        "leader killed mid-rollout, {} reps: resumed after p50 {} ms / max {} ms (kill → next copy on the new version); every copy replaced exactly once; rollout p50 {} ms",
        resume.len(),
        pct(&mut resume.clone(), 0.5),
        resume.iter().max().copied().unwrap_or(0),
        pct(&mut total, 0.5)
    );
    cluster.shutdown();
    Ok(())
}

/// `warden bench rollout --aa N`: N rollouts of versions that differ in nothing that matters
/// (the same program, a different no-op argument) over a slow, jittery network — every agent
/// reaches the server through a proxy adding `delay` ± `jitter` to everything it carries — and
/// counts the aborts: each one is false.
pub fn aa(
    copies: u32,
    agents: usize,
    rollouts: usize,
    delay: Duration,
    jitter: Duration,
) -> Result<()> {
    use warden_chaos::proxy::Proxy;
    let exe = std::env::current_exe()?;
    let mut cluster = Cluster::start(&exe)?;
    let mut proxies = Vec::new();
    for i in 0..agents {
        let proxy = Proxy::start(cluster.grpc_addr)?;
        proxy.set_delay(delay, jitter, 17 + i as u64);
        cluster.add_agent_via(&format!("agent-{}", i + 1), proxy.addr())?;
        proxies.push(proxy);
    }
    let version = |n: usize| {
        format!(
            "name = \"web\"\nkind = \"service\"\nreplicas = {copies}\ncommand = \"{{exe}}\"\n\
             args = [\"workload\", \"sleep\", \"--every\", \"{}\"]\n\
             [resources]\ncpu_millis = 10\nmemory_mb = 16\n\
             [health]\nkind = \"exec\"\ncommand = [\"/bin/true\"]\ninterval = \"500ms\"\ntimeout = \"400ms\"\n\
             [update]\nmax_parallel = 3\ncanary = 1\nauto_promote = true\nmin_healthy_time = \"1s\"\n\
             healthy_deadline = \"30s\"\n",
            600 + n
        )
    };
    cluster.submit(&version(0))?;
    if !wait_until(Duration::from_secs(90), || {
        all_running_but(&cluster, copies as usize, 0)
    }) {
        bail!("the first version's {copies} copies did not start");
    }
    eprintln!(
        "{rollouts} A/A rollouts over {copies} copies on {agents} agents, every session through \
         a proxy adding {} ms ± {} ms",
        delay.as_millis(),
        jitter.as_millis()
    );
    let (mut ok, mut aborted, mut took) = (0usize, Vec::new(), Vec::new());
    for n in 1..=rollouts {
        let started = Instant::now();
        cluster.submit(&version(n))?;
        let target = current_version(&cluster)?;
        let mut phase = String::new();
        let ended = wait_until(Duration::from_secs(120), || {
            let r = cluster
                .client
                .get("/v1/jobs/web/rollout")
                .unwrap_or(Value::Null);
            phase = r["phase"].as_str().unwrap_or_default().to_string();
            r["to"].as_u64() >= Some(target)
                && !matches!(phase.as_str(), "canary" | "awaiting_promotion" | "rolling")
        });
        if !ended {
            bail!("A/A rollout {n} did not end within 120 s (phase {phase})");
        }
        let r = cluster.client.get("/v1/jobs/web/rollout")?;
        if r["to"].as_u64() == Some(target) && r["phase"] == "succeeded" && r["revert"] == false {
            ok += 1;
            took.push(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        } else {
            let why = cluster.client.get("/v1/jobs/web/versions")?["releases"]
                .as_array()
                .and_then(|r| r.last())
                .map(|r| r["cause"].to_string())
                .unwrap_or_default();
            eprintln!("  A/A rollout {n} aborted: {why}");
            aborted.push(n);
            // Let the revert finish before the next one.
            wait_until(Duration::from_secs(60), || {
                all_running_but(&cluster, copies as usize, 0)
            });
        }
        if n % 10 == 0 {
            eprintln!("  {n} rollouts, {} aborted", aborted.len());
        }
    }
    println!(
        "A/A: {rollouts} rollouts over {copies} copies, network {} ms ± {} ms: {} false aborts ({:.1} %); {ok} succeeded in p50 {} ms, max {} ms",
        delay.as_millis(),
        jitter.as_millis(),
        aborted.len(),
        100.0 * aborted.len() as f64 / rollouts.max(1) as f64,
        pct(&mut took.clone(), 0.5),
        took.iter().max().copied().unwrap_or(0)
    );
    cluster.shutdown();
    drop(proxies);
    Ok(())
}

/// `warden bench rollout --config-change`: a change of one config file alone, rolled out over
/// `copies` copies (5 at a time, `min_healthy_time` 1 s) `reps` times by reloading the copies
/// in place (`reload_signal = "SIGHUP"`: new files and a signal) and `reps` times by replacing
/// them (the same job without it). Reports the time from the submission to the rollout's
/// success and how many copies' processes changed.
pub fn config_change(copies: u32, agents: usize, reps: usize) -> Result<()> {
    let exe = std::env::current_exe()?;
    let mut cluster = Cluster::start(&exe)?;
    cluster.add_agents(agents)?;
    let version = |reload: bool, n: usize| {
        format!(
            "name = \"web\"\nkind = \"service\"\nreplicas = {copies}\ncommand = \"/bin/sh\"\n\
             args = ['-c', '''trap 'cat \"$WARDEN_CONFIG_DIR/app.conf\" > /dev/null' HUP; while :; do sleep 1 & wait $!; done''']\n\
             [resources]\ncpu_millis = 10\nmemory_mb = 16\n\
             [update]\nmax_parallel = 5\nmin_healthy_time = \"1s\"\nhealthy_deadline = \"30s\"\n{}\
             [[config]]\npath = \"app.conf\"\ncontent = \"generation = {n}\\n\"\n",
            if reload {
                "reload_signal = \"SIGHUP\"\n"
            } else {
                ""
            }
        )
    };
    let pids = |cluster: &Cluster| -> std::collections::BTreeMap<String, i32> {
        cluster
            .task_procs()
            .into_iter()
            .filter(|p| p.task.starts_with("web/"))
            .filter(|p| {
                // The task's main process (its group leader), not its `sleep`.
                std::fs::read_to_string(format!("/proc/{}/stat", p.pid))
                    .ok()
                    .and_then(|s| {
                        let rest = s.get(s.rfind(')')? + 2..)?;
                        rest.split(' ').nth(2)?.parse::<i32>().ok()
                    })
                    == Some(p.pid)
            })
            .map(|p| (p.task, p.pid))
            .collect()
    };
    let mut n = 0;
    println!(
        "config-only change over {copies} copies on {agents} agents (max_parallel 5, min_healthy_time 1 s)"
    );
    println!("mode     reps  rollout p50/max ms  processes changed (mean)");
    for reload in [true, false] {
        n += 1;
        cluster.submit(&version(reload, n))?;
        if !wait_until(Duration::from_secs(120), || {
            all_running_but(&cluster, copies as usize, 0)
                && pids(&cluster).len() == copies as usize
                && cluster
                    .client
                    .get("/v1/jobs/web/rollout")
                    .ok()
                    .is_none_or(|r| {
                        !matches!(
                            r["phase"].as_str(),
                            Some("canary" | "awaiting_promotion" | "rolling")
                        )
                    })
        }) {
            bail!("the job's {copies} copies did not settle");
        }
        let (mut took, mut changed) = (Vec::new(), Vec::new());
        for rep in 0..reps {
            n += 1;
            let before = pids(&cluster);
            let started = Instant::now();
            cluster.submit(&version(reload, n))?;
            let target = current_version(&cluster)?;
            let done = wait_until(Duration::from_secs(180), || {
                cluster
                    .client
                    .get("/v1/jobs/web/rollout")
                    .is_ok_and(|r| r["to"].as_u64() == Some(target) && r["phase"] == "succeeded")
            });
            if !done {
                bail!("config change {} did not roll out within 180 s", rep + 1);
            }
            took.push(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
            wait_until(Duration::from_secs(30), || {
                pids(&cluster).len() == copies as usize
            });
            let after = pids(&cluster);
            changed.push(
                before
                    .iter()
                    .filter(|(t, p)| after.get(*t) != Some(*p))
                    .count() as u64,
            );
            eprintln!(
                "  {} {}: {} ms, {} processes changed",
                if reload { "reload" } else { "replace" },
                rep + 1,
                took.last().copied().unwrap_or(0),
                changed.last().copied().unwrap_or(0)
            );
        }
        println!(
            "{:<8} {reps:>4}  {:>7}/{:<7}       {:.1}",
            if reload { "reload" } else { "replace" },
            pct(&mut took.clone(), 0.5),
            took.iter().max().copied().unwrap_or(0),
            changed.iter().sum::<u64>() as f64 / reps.max(1) as f64
        );
    }
    cluster.shutdown();
    Ok(())
}
