//! Agent autonomy with real processes: shims outlive their agent, a new agent process takes
//! their tasks over, a planned restart (SIGHUP) disturbs nothing, and an agent restarted with
//! no server reachable runs the service copies of its local cache. Every process is stopped
//! by PID when the cluster is dropped, pass or fail (shims of killed agents included).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use warden_chaos::cluster::{Cluster, TaskProc, free_port, is_alive, scan_shim_pids, wait_until};
use warden_chaos::proxy::Proxy;

/// Deadline for anything the cluster must do by itself; far above what a healthy run needs.
const LONG: Duration = Duration::from_secs(45);

fn cluster() -> Cluster {
    let mut c = common::start_cluster("autonomy");
    c.set_reattach_window(Duration::from_secs(30));
    c
}

fn job(name: &str, kind: &str) -> String {
    format!(
        "name = \"{name}\"\nkind = \"{kind}\"\ncommand = \"{{exe}}\"\n\
         args = [\"workload\", \"sleep\", \"--every\", \"60\"]\n\
         [resources]\ncpu_millis = 10\nmemory_mb = 16\n"
    )
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or_default()
}

fn diag(c: &Cluster) -> String {
    let mut s = String::new();
    for path in ["/v1/agents", "/v1/tasks", "/v1/recoveries"] {
        let _ = writeln!(s, "--- GET {path} ---\n{:?}", c.client.get(path).ok());
    }
    if let Ok(Value::Array(events)) = c.client.get("/v1/events?limit=10000") {
        for e in &events[events.len().saturating_sub(40)..] {
            let _ = writeln!(
                s,
                "{} {} {}",
                str_of(e, "kind"),
                str_of(e, "agent"),
                str_of(e, "message")
            );
        }
    }
    for name in ["a1", "a2"] {
        let _ = writeln!(s, "--- {name} log ---\n{}", c.log(name));
    }
    s
}

/// The one live process of `task` at the epoch the server reports, once it runs (on `agent`
/// when given).
fn running(c: &Cluster, task: &str, agent: Option<&str>) -> TaskProc {
    let mut found = None;
    let ok = wait_until(LONG, || {
        let Some(t) = c.task(task) else { return false };
        if str_of(&t, "state") != "running" || agent.is_some_and(|a| str_of(&t, "agent") != a) {
            return false;
        }
        let epoch = u64_of(&t, "epoch");
        let procs = c.task_procs();
        let live: Vec<&TaskProc> = procs.iter().filter(|p| p.task == task).collect();
        found = live
            .iter()
            .find(|p| p.token == epoch && live.len() == 1)
            .map(|p| (*p).clone());
        found.is_some()
    });
    assert!(ok, "{task} never ran alone on {agent:?}\n{}", diag(c));
    found.unwrap()
}

fn agent_gen(c: &Cluster, name: &str) -> u64 {
    c.agent(name)
        .map(|a| u64_of(&a, "generation"))
        .unwrap_or_default()
}

fn wait_state(c: &Cluster, name: &str, state: &str) {
    assert!(
        wait_until(LONG, || c.agent_state(name).as_deref() == Some(state)),
        "{name} never {state}\n{}",
        diag(c)
    );
}

/// A cluster whose agent a1 runs a singleton `solo` and a service `web`, and a second agent
/// a2 where a moved singleton goes; the two task processes.
fn singleton_and_service_on_a1() -> (Cluster, TaskProc, TaskProc) {
    let mut c = cluster();
    c.add_agent("a1").unwrap();
    c.submit(&job("solo", "singleton")).unwrap();
    c.submit(&job("web", "service")).unwrap();
    let solo = running(&c, "solo/0", Some("a1"));
    let web = running(&c, "web/0", Some("a1"));
    c.add_agent("a2").unwrap();
    wait_state(&c, "a2", "healthy");
    (c, solo, web)
}

#[test]
fn kill_9_of_an_agent_moves_its_singleton_at_once_and_its_service_keeps_running() {
    let (mut c, solo, web) = singleton_and_service_on_a1();
    let generation = agent_gen(&c, "a1");

    c.kill_agent("a1").unwrap();
    // The singleton: killed by its shim with the agent, replaced on a2 with a newer epoch.
    let moved = running(&c, "solo/0", Some("a2"));
    assert!(moved.token > solo.token);
    assert!(!is_alive(solo.pid), "the old singleton outlived its agent");
    // The service: still the same process, still placed on a1 (held, not failed).
    assert!(
        is_alive(web.pid),
        "the service died with its agent\n{}",
        diag(&c)
    );
    let t = c.task("web/0").unwrap();
    assert_eq!(
        (str_of(&t, "agent"), u64_of(&t, "epoch")),
        ("a1", web.token),
        "{t}"
    );
    assert_eq!(
        c.agent_state("a1").as_deref(),
        Some("suspect"),
        "{}",
        diag(&c)
    );

    c.restart_agent("a1").unwrap();
    wait_state(&c, "a1", "healthy");
    assert_eq!(
        agent_gen(&c, "a1"),
        generation,
        "the new process resumed the generation"
    );
    let again = running(&c, "web/0", Some("a1"));
    assert_eq!(
        (again.pid, again.token),
        (web.pid, web.token),
        "the service was restarted"
    );
    assert!(
        c.log("a1")
            .contains("took over the tasks of the previous agent process")
    );
    // The singleton's move is a recovery like any other.
    let mut record = None;
    assert!(
        wait_until(LONG, || {
            let Ok(Value::Array(recs)) = c.client.get("/v1/recoveries") else {
                return false;
            };
            record = recs
                .into_iter()
                .find(|r| str_of(r, "task") == "solo/0" && str_of(r, "outcome") == "succeeded");
            record.is_some()
        }),
        "no recovery of solo/0\n{}",
        diag(&c)
    );
    let r = record.unwrap();
    assert!(str_of(&r, "from").starts_with("a1#"), "{r}");
    assert!(str_of(&r, "to").starts_with("a2#"), "{r}");
    assert_eq!(u64_of(&r, "epoch"), moved.token, "{r}");
    assert!(r.get("rto_ms").and_then(Value::as_u64).is_some(), "{r}");
}

#[test]
fn a_planned_restart_keeps_every_task_its_epoch_and_the_agents_generation() {
    // a2 is where a wrongly released singleton would go.
    let (c, solo, web) = singleton_and_service_on_a1();
    let generation = agent_gen(&c, "a1");
    let pid = c.agent_pid("a1").unwrap();

    for round in 1..=2 {
        let before = c.log("a1").matches("took over the tasks").count();
        c.signal_agent("a1", Signal::SIGHUP).unwrap();
        assert!(
            wait_until(LONG, || c.log("a1").matches("took over the tasks").count()
                > before),
            "round {round}: no new agent process took the tasks over\n{}",
            diag(&c)
        );
        wait_state(&c, "a1", "healthy");
        assert_eq!(
            c.agent_pid("a1"),
            Some(pid),
            "the agent re-executed in place"
        );
        assert_eq!(agent_gen(&c, "a1"), generation);
        for (task, before) in [("solo/0", &solo), ("web/0", &web)] {
            let now = running(&c, task, Some("a1"));
            assert_eq!(
                (now.pid, now.token),
                (before.pid, before.token),
                "round {round}: {task}"
            );
        }
    }
    let Ok(Value::Array(recs)) = c.client.get("/v1/recoveries") else {
        panic!("recoveries")
    };
    assert!(recs.is_empty(), "a planned restart moved work: {recs:?}");
    let Ok(Value::Array(events)) = c.client.get("/v1/events?limit=10000") else {
        panic!("events")
    };
    assert!(
        events
            .iter()
            .any(|e| str_of(e, "kind") == "agent.restarting")
    );
}

#[test]
fn an_agent_restarted_offline_runs_its_cached_services_never_its_singletons() {
    let mut c = cluster();
    let proxy = Proxy::start(c.grpc_addr).unwrap();
    let probe: std::net::SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
        .parse()
        .unwrap();
    c.add_agent_with("a1", &[proxy.addr()], &[], Some(probe))
        .unwrap();
    c.submit(&job("solo", "singleton")).unwrap();
    c.submit(&job("web", "service")).unwrap();
    let solo = running(&c, "solo/0", Some("a1"));
    let web = running(&c, "web/0", Some("a1"));

    // The server becomes unreachable; the host "reboots": agent, shims and tasks all die.
    proxy.cut();
    c.kill_agent("a1").unwrap();
    for shim in scan_shim_pids(c.marker()) {
        let _ = kill(Pid::from_raw(shim), Signal::SIGKILL);
    }
    for p in [solo.pid, web.pid] {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    assert!(
        wait_until(LONG, || c.task_procs().is_empty()),
        "tasks survived"
    );

    let t0 = Instant::now();
    c.restart_agent("a1").unwrap();
    let mut seen = None;
    assert!(
        wait_until(LONG, || {
            seen = c.task_procs().into_iter().find(|p| p.task == "web/0");
            seen.is_some()
        }),
        "the cached service never started offline\n{}",
        diag(&c)
    );
    let started_after = t0.elapsed();
    let seen = seen.unwrap();
    assert_eq!(seen.token, web.token, "started at its cached epoch");
    eprintln!("service running again {started_after:?} after the agent process was started");
    let status = warden_chaos::cluster::wait_until(LONG, || {
        http_get(probe, "/status").is_some_and(|s| s.trim() == "offline")
    });
    assert!(status, "the probe listener does not say offline");
    assert!(
        !c.task_procs().iter().any(|p| p.task == "solo/0"),
        "a singleton started without a lease"
    );

    // The server answers again: its view wins, nothing runs twice.
    proxy.heal();
    assert!(
        wait_until(LONG, || http_get(probe, "/status")
            .is_some_and(|s| s.trim() == "online")),
        "still offline after the server answered"
    );
    let solo2 = running(&c, "solo/0", Some("a1"));
    assert!(
        solo2.token > solo.token,
        "the singleton restarted under a new epoch"
    );
    let web2 = running(&c, "web/0", Some("a1"));
    assert_eq!(web2.pid, seen.pid, "the offline copy was kept");
    let procs = c.task_procs();
    assert_eq!(procs.len(), 2, "duplicates: {procs:?}");
}

/// A plain HTTP/1.0 GET on loopback; the body.
fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// Every agent of a 5-agent cluster restarted on purpose, one at a time, under HTTP load
/// through a real HAProxy driven by the server: nothing fails, nothing restarts, nothing moves.
#[test]
fn planned_restarts_of_every_agent_under_load_through_haproxy_disturb_nothing() {
    let settings = warden_chaos::restart::Settings {
        agents: 5,
        rounds: 1,
        rate: 50,
        kills: 0,
    };
    let report = warden_chaos::restart::run(&common::warden_bin(), &settings, |line| {
        eprintln!("{line}");
    })
    .expect("the restart benchmark runs");
    eprintln!(
        "{}",
        warden_chaos::restart::format_table(&settings, &report)
    );
    assert_eq!(report.restarts, 5);
    assert!(report.sent > 0, "no load was sent");
    assert_eq!(report.failed, 0, "failed requests");
    assert_eq!(report.task_restarts, 0, "task processes restarted");
    assert_eq!(
        report.singleton_replacements, 0,
        "the singleton was replaced"
    );
    assert_eq!(report.recoveries, 0, "work was moved");
}
