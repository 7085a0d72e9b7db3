//! Task state end to end: a real server and agent (`warden_chaos::cluster::Cluster`), a
//! stateful job running `warden workload counter`, its task killed with SIGKILL: the agent
//! restarts it in place and it continues from the count it had, read back from its state.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use warden_chaos::cluster::{Cluster, wait_until};

const LONG: Duration = Duration::from_secs(45);

fn start_cluster() -> Cluster {
    common::start_cluster("state")
}

/// The counter values the task acknowledged, in the order it printed them.
fn acked(c: &Cluster, agent: &str, job: &str) -> Vec<u64> {
    let log = c
        .dir()
        .join(agent)
        .join("logs")
        .join(format!("{job}.0.stdout.log"));
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.strip_prefix("acked ")?
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("value=")?.parse().ok())
        })
        .collect()
}

#[test]
fn a_stateful_task_killed_with_sigkill_continues_from_its_state() {
    let mut c = start_cluster();
    c.add_agent("a1").unwrap();
    let job = "ledger";
    c.submit(&format!(
        "name = \"{job}\"\nkind = \"singleton\"\ncommand = \"{{exe}}\"\n\
         args = [\"workload\", \"counter\", \"--every-ms\", \"20\"]\n\
         [resources]\ncpu_millis = 10\nmemory_mb = 16\n\
         [state]\nstandbys = 0\n"
    ))
    .unwrap();
    assert!(
        wait_until(LONG, || acked(&c, "a1", job).len() >= 5),
        "the counter never acknowledged 5 writes\n{}\n{}",
        c.log("a1"),
        c.log(&c.server_name(0))
    );
    let procs = c.task_procs();
    let task = procs
        .iter()
        .find(|p| p.task == format!("{job}/0"))
        .expect("the task process")
        .clone();
    kill(Pid::from_raw(task.pid), Signal::SIGKILL).unwrap();
    let before = acked(&c, "a1", job).len();
    let last_before = *acked(&c, "a1", job).last().unwrap();
    // Restarted in place (same epoch, a new process), and counting on from its state.
    assert!(
        wait_until(LONG, || {
            let v = acked(&c, "a1", job);
            v.len() >= before + 5
                && c.task_procs()
                    .iter()
                    .any(|p| p.task == format!("{job}/0") && p.pid != task.pid)
        }),
        "the task did not come back and count on\n{}",
        c.log("a1")
    );
    let values = acked(&c, "a1", job);
    // Every value is the one before plus one (plus two once: the killed process may have
    // had a write applied that it never got to print): nothing restarted from zero, and a
    // write it had acknowledged was read back by its successor.
    for w in values.windows(2) {
        assert!(w[1] == w[0] + 1 || w[1] == w[0] + 2, "values {values:?}");
    }
    assert!(
        values.windows(2).filter(|w| w[1] == w[0] + 2).count() <= 1,
        "values {values:?}"
    );
    assert!(values[before..].iter().all(|&v| v > last_before));
    assert_eq!(values[0], 1);
}

#[test]
fn state_on_a_service_or_an_impossible_state_table_is_refused_clearly() {
    let c = start_cluster();
    for (spec, field) in [
        (
            "name = \"s\"\nkind = \"service\"\nreplicas = 2\ncommand = \"/bin/true\"\n[state]\n",
            "state",
        ),
        (
            "name = \"s\"\nkind = \"singleton\"\ncommand = \"/bin/true\"\n[state]\nstandbys = 0\nack = \"quorum\"\n",
            "state.ack",
        ),
        (
            "name = \"s\"\nkind = \"singleton\"\ncommand = \"/bin/true\"\n[state]\nstandbys = 3\n",
            "state.standbys",
        ),
        (
            "name = \"s\"\nkind = \"singleton\"\ncommand = \"/bin/true\"\n[state]\nmode = \"cold\"\n",
            "expected `hot` or `warm`",
        ),
        (
            "name = \"s\"\nkind = \"singleton\"\ncommand = \"/bin/true\"\n[state]\nstandbys = 1\n",
            "does not place standbys yet",
        ),
    ] {
        let err = c.submit(spec).expect_err(spec).to_string();
        assert!(err.contains(field), "{spec}: {err}");
    }
    let jobs = c.server_client(0).unwrap().get("/v1/jobs").unwrap();
    assert_eq!(jobs.as_array().map(Vec::len), Some(0), "{jobs}");
}
