//! Releases and rollouts on a real cluster (the `warden` binary as a server and agents, real
//! task processes): a bad version is caught by its canary and reverted everywhere; a good one
//! rolls out in waves; versions, plans, diffs and reverts through the CLI and the API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use warden_chaos::cluster::{Cluster, wait_until};

/// Far above what a healthy run needs (a few seconds); matters only when a test fails.
const LONG: Duration = Duration::from_secs(60);

fn web(command: &str, args: &str, canary: u32) -> String {
    format!(
        "name = \"web\"\nkind = \"service\"\nreplicas = 4\ncommand = \"{command}\"\nargs = {args}\n\
         [resources]\ncpu_millis = 10\nmemory_mb = 16\n\
         [update]\nmax_parallel = 2\ncanary = {canary}\nauto_promote = true\n\
         min_healthy_time = \"1s\"\nhealthy_deadline = \"30s\"\n"
    )
}

const SLEEP: &str = "[\"workload\", \"sleep\", \"--every\", \"60\"]";

fn web_tasks(c: &Cluster) -> Vec<Value> {
    c.client
        .get("/v1/tasks")
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t["job"] == "web")
        .collect()
}

/// Every copy running, and each one's version.
fn running_versions(c: &Cluster) -> Option<Vec<u64>> {
    let t = web_tasks(c);
    (t.len() == 4 && t.iter().all(|t| t["state"] == "running")).then(|| {
        t.iter()
            .map(|t| t["version"].as_u64().unwrap_or(0))
            .collect()
    })
}

fn rollout(c: &Cluster) -> Value {
    c.client.get("/v1/jobs/web/rollout").unwrap_or(Value::Null)
}

fn cli(c: &Cluster, args: &[&str]) -> (bool, String) {
    let out = Command::new(common::warden_bin())
        .args(args)
        .env("WARDEN_ADDR", format!("http://{}", c.http_addr))
        .output()
        .expect("run the CLI");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn diag(c: &Cluster) -> String {
    format!(
        "tasks: {:?}\nrollout: {}\nevents: {}\nserver log:\n{}",
        web_tasks(c),
        rollout(c),
        c.client.get("/v1/events?limit=200").unwrap_or(Value::Null),
        c.log("server")
    )
}

#[test]
fn a_crashing_version_is_reverted_and_a_good_one_rolls_out_in_waves() {
    let mut c = common::start_cluster("rollout");
    c.add_agents(2).expect("agents");
    c.submit(&web("{exe}", SLEEP, 1)).expect("submit version 1");
    assert!(
        wait_until(LONG, || running_versions(&c) == Some(vec![1; 4])),
        "version 1 did not start\n{}",
        diag(&c)
    );

    // A plan changes nothing and says what a submission would do.
    let dir = tempfile::tempdir().unwrap();
    let bad = web("sh", "[\"-c\", \"sleep 1; exit 3\"]", 1);
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, bad.replace("{exe}", "")).unwrap();
    let (ok, out) = cli(&c, &["job", "plan", file.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("version 2") && out.contains("4 running copies replaced"),
        "{out}"
    );
    assert!(out.contains("command"), "{out}");
    assert_eq!(
        running_versions(&c),
        Some(vec![1; 4]),
        "a plan stores nothing"
    );

    // The crashing version: its canary fails, the version before comes back everywhere.
    c.submit(&bad).expect("submit version 2");
    assert!(
        wait_until(LONG, || rollout(&c)["revert"] == true
            && rollout(&c)["phase"] == "succeeded"),
        "no revert\n{}",
        diag(&c)
    );
    let versions = c.client.get("/v1/jobs/web/versions").unwrap();
    let releases = versions["releases"].as_array().unwrap();
    assert_eq!(releases.len(), 3, "{versions}");
    let cause = releases[2]["cause"].as_str().unwrap();
    assert!(cause.starts_with("auto-revert of version 2"), "{cause}");
    assert!(cause.contains("exited"), "the evidence is named: {cause}");
    assert_eq!(
        releases[2]["spec"]["command"],
        releases[0]["spec"]["command"]
    );
    assert!(
        wait_until(LONG, || running_versions(&c)
            .is_some_and(|v| v.iter().all(|&v| v == 1 || v == 3))),
        "copies are back on version 1's spec\n{}",
        diag(&c)
    );
    // The canary alone ran the bad version: three copies were never touched.
    let untouched = web_tasks(&c)
        .iter()
        .filter(|t| t["version"] == 1 && t["epoch"] == 1)
        .count();
    assert_eq!(untouched, 3, "{}", diag(&c));

    // A good version, with a config file, rolls out in waves to every copy.
    let good = format!(
        "{}[[config]]\npath = \"conf.d/app.conf\"\ncontent = \"level = debug\\n\"\n",
        web("{exe}", "[\"workload\", \"sleep\", \"--every\", \"30\"]", 1)
    );
    c.submit(&good).expect("submit version 4");
    assert!(
        wait_until(LONG, || rollout(&c)["to"] == 4
            && rollout(&c)["phase"] == "succeeded"),
        "the good version did not roll out\n{}",
        diag(&c)
    );
    assert_eq!(running_versions(&c), Some(vec![4; 4]), "{}", diag(&c));
    // Each copy finds its file where WARDEN_CONFIG_DIR says (read from the task's own
    // environment in /proc).
    let procs = c.task_procs();
    let web_procs: Vec<_> = procs
        .iter()
        .filter(|p| p.task.starts_with("web/"))
        .collect();
    assert_eq!(web_procs.len(), 4, "{procs:?}");
    for p in web_procs {
        let environ = std::fs::read(format!("/proc/{}/environ", p.pid)).unwrap();
        let dir = environ
            .split(|&b| b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok())
            .find_map(|kv| kv.strip_prefix("WARDEN_CONFIG_DIR="))
            .unwrap_or_else(|| panic!("{} has no WARDEN_CONFIG_DIR", p.task))
            .to_string();
        let text = std::fs::read_to_string(format!("{dir}/conf.d/app.conf")).unwrap();
        assert_eq!(text, "level = debug\n", "{}", p.task);
    }

    // History, diff and a revert by hand through the CLI.
    let (ok, out) = cli(&c, &["job", "history", "web"]);
    assert!(
        ok && out.contains("auto-revert of version 2") && out.contains("4 *"),
        "{out}"
    );
    let (ok, out) = cli(&c, &["job", "diff", "web", "1", "4"]);
    assert!(
        ok && out.contains("args") && out.contains("\"30\""),
        "{out}"
    );
    let (ok, out) = cli(&c, &["job", "diff", "web", "9"]);
    assert!(!ok && out.contains("no version 9"), "{out}");
    let (ok, out) = cli(&c, &["job", "revert", "web", "1"]);
    assert!(ok && out.contains("version 5"), "{out}");
    assert!(
        wait_until(LONG, || running_versions(&c) == Some(vec![5; 4])),
        "the revert did not reach every copy\n{}",
        diag(&c)
    );
    let (ok, out) = cli(&c, &["rollout", "status", "web"]);
    assert!(
        ok && out.contains("revert of web") && out.contains("succeeded"),
        "{out}"
    );
    // The dashboard's jobs page shows the rollout, and its events in the job history.
    let page = c
        .client
        .request("GET", "/ui/jobs", None, b"")
        .expect("jobs page");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<h2>Rollouts</h2>"), "{}", page.body);
    assert!(page.body.contains("succeeded (revert)"), "{}", page.body);
    assert!(page.body.contains("rollout.failed"), "{}", page.body);
}

/// The statistical judge on real traffic: a version failing a fifth of its requests (its
/// health check and process fine) behind a real HAProxy whose request log the server reads is
/// judged worse than the baseline copies and reverted; the evidence names the error rates.
#[test]
fn a_version_failing_more_requests_is_judged_on_haproxys_log_and_reverted() {
    assert!(
        std::path::Path::new("/usr/sbin/haproxy").exists(),
        "/usr/sbin/haproxy is missing: apt-get install haproxy (scripts/test.sh does)"
    );
    use warden_chaos::rollout_judge::{Change, Options, run};
    let opts = Options {
        change: Change::Errors(0.2),
        reps: 1,
        rate: 40,
        loss: 0.0,
        steps: vec![],
        step_time: Duration::from_secs(1),
    };
    let samples = run(&common::warden_bin(), &opts, |_, _| {}).unwrap();
    assert_eq!(samples.len(), 1);
    let s = &samples[0];
    assert!(s.aborted, "{s:?}");
    assert!(s.reason.contains("statistical judge"), "{}", s.reason);
    assert!(s.reason.contains("error rate"), "{}", s.reason);
    assert!(s.canary_requests > 0, "{s:?}");
}

/// Where each running copy of `job` is: agent names, one entry per running copy.
fn running_on(c: &Cluster, job: &str) -> Vec<String> {
    let mut on: Vec<String> = c
        .client
        .get("/v1/tasks")
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t["job"] == job && t["state"] == "running")
        .filter_map(|t| {
            t["agent"]
                .as_str()
                .map(|a| a.split('#').next().unwrap_or(a).to_string())
        })
        .collect();
    on.sort();
    on
}

/// A daemon job on real agents: one copy on every agent, a new agent gets one, a killed
/// agent's copy is not moved to the others.
#[test]
fn a_daemon_runs_on_every_agent_and_a_killed_agents_copy_does_not_move() {
    let mut c = common::start_cluster("daemon");
    c.add_agents(3).expect("agents");
    c.submit(
        "name = \"collector\"\nkind = \"daemon\"\ncommand = \"{exe}\"\n\
         args = [\"workload\", \"sleep\", \"--every\", \"60\"]\n\
         [resources]\ncpu_millis = 10\nmemory_mb = 16\n",
    )
    .expect("submit");
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(
        wait_until(LONG, || running_on(&c, "collector")
            == names(&["agent-1", "agent-2", "agent-3"])),
        "{:?}\n{}",
        running_on(&c, "collector"),
        diag(&c)
    );
    c.add_agent("agent-4").expect("agent-4");
    assert!(
        wait_until(LONG, || running_on(&c, "collector")
            == names(&["agent-1", "agent-2", "agent-3", "agent-4"])),
        "{:?}\n{}",
        running_on(&c, "collector"),
        diag(&c)
    );
    c.kill_agent("agent-2").expect("kill agent-2");
    assert!(
        wait_until(LONG, || c.agent_state("agent-2").as_deref()
            == Some("failed")),
        "agent-2 not declared failed\n{}",
        diag(&c)
    );
    // Well past the declaration: the others still run exactly one copy each.
    let settled = std::time::Instant::now();
    while settled.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            running_on(&c, "collector"),
            names(&["agent-1", "agent-3", "agent-4"]),
            "{}",
            diag(&c)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.shutdown();
}

/// Traffic steps through a real HAProxy: the adapter sets the servers' weights so that the two
/// canaries of six copies answer about 10 %, then about 50 % of the requests (a third without
/// weights), and the rollout goes on after the last step.
#[test]
fn traffic_steps_set_haproxy_weights_so_canaries_get_their_share() {
    assert!(
        std::path::Path::new("/usr/sbin/haproxy").exists(),
        "/usr/sbin/haproxy is missing: apt-get install haproxy (scripts/test.sh does)"
    );
    use warden_chaos::rollout_judge::{Change, Options, run};
    let opts = Options {
        change: Change::Same,
        reps: 1,
        rate: 40,
        loss: 0.0,
        steps: vec![10, 50],
        step_time: Duration::from_secs(12),
    };
    let samples = run(&common::warden_bin(), &opts, |_, _| {}).unwrap();
    let s = &samples[0];
    assert!(!s.aborted, "{s:?}");
    assert_eq!(s.shares.len(), 2, "{s:?}");
    let (at10, at50) = (s.shares[0].1, s.shares[1].1);
    assert!((2.0..=22.0).contains(&at10), "{s:?}");
    assert!((33.0..=67.0).contains(&at50), "{s:?}");
}

/// A change of `[[config]]` files alone, with `[update] reload_signal`: every running copy
/// gets the new files in its own directory and a real SIGHUP, and keeps its process (same pid,
/// same fencing token); the task's own trap reads the file again and records what it read.
#[test]
fn a_config_change_with_a_reload_signal_rewrites_files_and_signals_the_same_processes() {
    use std::os::unix::fs::PermissionsExt;
    let mut c = common::start_cluster("reload");
    c.add_agents(2).expect("agents");
    let out = tempfile::tempdir().unwrap();
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // On SIGHUP the task copies its file to `<out>/<pid>`.
    let spec = |level: &str| {
        format!(
            "{}reload_signal = \"SIGHUP\"\n[[config]]\npath = \"app.conf\"\ncontent = \"level = {level}\\n\"\n",
            web(
                "/bin/sh",
                &format!(
                    "['-c', '''trap 'cp \"$WARDEN_CONFIG_DIR/app.conf\" \"{}/$$\"' HUP; while :; do sleep 1 & wait $!; done''']",
                    out.path().display()
                ),
                0
            )
        )
    };
    c.submit(&spec("info")).expect("submit version 1");
    assert!(
        wait_until(LONG, || running_versions(&c) == Some(vec![1; 4])),
        "version 1 did not start\n{}",
        diag(&c)
    );
    // The copies' main processes: (pid, fencing token).
    let mains = || {
        let mut p: Vec<(i32, u64)> = c
            .task_procs()
            .into_iter()
            .filter(|p| p.task.starts_with("web/") && is_group_leader(p.pid))
            .map(|p| (p.pid, p.token))
            .collect();
        p.sort();
        p
    };
    let before = mains();
    assert_eq!(before.len(), 4, "{before:?}");
    let file = out.path().join("v2.toml");
    std::fs::write(&file, c.render(&spec("debug"))).unwrap();
    let (ok, plan) = cli(&c, &["job", "plan", file.to_str().unwrap()]);
    assert!(
        ok && plan.contains("4 running copies changed: 4 reloaded in place"),
        "{plan}"
    );
    std::fs::remove_file(&file).unwrap();
    c.submit(&spec("debug")).expect("submit version 2");
    assert!(
        wait_until(LONG, || rollout(&c)["to"] == 2
            && rollout(&c)["phase"] == "succeeded"),
        "the config change did not roll out\n{}",
        diag(&c)
    );
    assert_eq!(running_versions(&c), Some(vec![2; 4]), "{}", diag(&c));
    // The same processes, each of which read the new file when signalled.
    assert_eq!(mains(), before, "copies were replaced\n{}", diag(&c));
    for (pid, _) in &before {
        let read = out.path().join(pid.to_string());
        assert!(
            wait_until(LONG, || read.exists()),
            "pid {pid} was not signalled\n{}",
            diag(&c)
        );
        assert_eq!(std::fs::read_to_string(&read).unwrap(), "level = debug\n");
    }
    let events = c.client.get("/v1/events?limit=200").unwrap().to_string();
    assert_eq!(events.matches("reloads version 2").count(), 4, "{events}");
    c.shutdown();
}

/// Whether `pid` leads its process group (a task's main process; its children do not).
fn is_group_leader(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // After the command name in parentheses: state, ppid, pgrp.
            let rest = &s[s.rfind(')')? + 2..];
            rest.split(' ').nth(2)?.parse::<i32>().ok()
        })
        == Some(pid)
}
