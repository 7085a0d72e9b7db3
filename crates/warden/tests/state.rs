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

/// The counter values slot 0 acknowledged on `agent`, in the order it printed them.
fn acked(c: &Cluster, agent: &str, job: &str) -> Vec<u64> {
    acked_on(c, agent, job, 0)
        .into_iter()
        .map(|(v, _)| v)
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
    ] {
        let err = c.submit(spec).expect_err(spec).to_string();
        assert!(err.contains(field), "{spec}: {err}");
    }
    let jobs = c.server_client(0).unwrap().get("/v1/jobs").unwrap();
    assert_eq!(jobs.as_array().map(Vec::len), Some(0), "{jobs}");
}

/// The counter values a slot's copies acknowledged on `agent`, with the epoch of each.
fn acked_on(c: &Cluster, agent: &str, job: &str, index: u32) -> Vec<(u64, u64)> {
    let log = c
        .dir()
        .join(agent)
        .join("logs")
        .join(format!("{job}.{index}.stdout.log"));
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("acked ")?;
            let field = |k: &str| {
                rest.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(k)?.parse::<u64>().ok())
            };
            Some((field("value=")?, field("epoch=")?))
        })
        .collect()
}

fn replica(c: &Cluster, id: &str) -> Option<(String, String, bool)> {
    let t = c.task(id)?;
    let r = t.get("replica")?;
    Some((
        t.get("agent")?.as_str()?.to_string(),
        r.get("role")?.as_str()?.to_string(),
        r.get("in_sync")?.as_bool()?,
    ))
}

/// Submit `warden workload counter` as `job` with one standby at `ack`, and wait until slot 0
/// is the primary and slot 1 an in-sync standby on another agent. Returns their agents.
fn replicated_counter(c: &Cluster, job: &str, every_ms: u64, ack: &str) -> (String, String) {
    replicated_counter_with(c, job, every_ms, ack, 1)
}

/// [`replicated_counter`] with `standbys` standbys, every one in sync.
fn replicated_counter_with(
    c: &Cluster,
    job: &str,
    every_ms: u64,
    ack: &str,
    standbys: u32,
) -> (String, String) {
    replicated_counter_spec(
        c,
        job,
        every_ms,
        &format!("standbys = {standbys}\nack = \"{ack}\"\n"),
        standbys,
    )
}

/// [`replicated_counter`] with the `[state]` table's body given.
fn replicated_counter_spec(
    c: &Cluster,
    job: &str,
    every_ms: u64,
    state: &str,
    standbys: u32,
) -> (String, String) {
    c.submit(&format!(
        "name = \"{job}\"\nkind = \"singleton\"\ncommand = \"{{exe}}\"\n\
         args = [\"workload\", \"counter\", \"--every-ms\", \"{every_ms}\"]\n\
         [resources]\ncpu_millis = 10\nmemory_mb = 16\n\
         [state]\n{state}"
    ))
    .unwrap();
    // The standby joins the in-sync set once it caught up, and only then are writes at
    // `standby` acknowledged.
    let placed = wait_until(LONG, || {
        let Some(p) = replica(c, &format!("{job}/0")) else {
            return false;
        };
        p.1 == "primary"
            && (1..=standbys).all(|i| {
                replica(c, &format!("{job}/{i}"))
                    .is_some_and(|s| s.1 == "standby" && s.2 && s.0 != p.0)
            })
    });
    assert!(
        placed,
        "no primary with an in-sync standby on another agent: {:?} {:?}\n{}",
        c.task(&format!("{job}/0")),
        c.task(&format!("{job}/1")),
        c.log(&c.server_name(0))
    );
    let (primary, _, _) = replica(c, &format!("{job}/0")).unwrap();
    let (standby, _, _) = replica(c, &format!("{job}/1")).unwrap();
    (primary, standby)
}

#[test]
fn a_primary_whose_agent_is_killed_fails_over_to_its_standby_with_every_acked_write() {
    let mut c = start_cluster();
    c.add_agents(3).unwrap();
    let job = "ledger2";
    let (primary, standby) = replicated_counter(&c, job, 10, "standby");
    assert!(
        wait_until(LONG, || acked_on(&c, &primary, job, 0).len() >= 20),
        "the primary never acknowledged 20 writes\n{}",
        c.log(&primary)
    );
    c.kill_agent(&primary).unwrap();
    let old = acked_on(&c, &primary, job, 0);
    let (last_old, old_epoch) = *old.last().unwrap();
    // The standby is promoted at the next state epoch and counts on from every write the
    // old primary acknowledged.
    assert!(
        wait_until(LONG, || acked_on(&c, &standby, job, 1).len() >= 10),
        "the standby was not promoted and writing\n{:?}\n{}\n{}",
        c.task(&format!("{job}/1")),
        c.log(&standby),
        c.log(&c.server_name(0))
    );
    let new = acked_on(&c, &standby, job, 1);
    let (first_new, new_epoch) = new[0];
    assert!(new_epoch > old_epoch, "epochs {old_epoch} then {new_epoch}");
    assert!(
        first_new > last_old && first_new <= last_old + 2,
        "the old primary acknowledged up to {last_old}; the new one started at {first_new}"
    );
    for w in new.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "values {new:?}");
    }
    let (_, role, _) = replica(&c, &format!("{job}/1")).unwrap();
    assert_eq!(role, "primary");
}

#[test]
fn a_quorum_primary_whose_agent_is_killed_fails_over_to_the_standby_holding_the_most() {
    let mut c = start_cluster();
    c.add_agents(4).unwrap();
    let job = "ledger4";
    let (primary, _) = replicated_counter_with(&c, job, 10, "quorum", 2);
    assert!(
        wait_until(LONG, || acked_on(&c, &primary, job, 0).len() >= 20),
        "the primary never acknowledged 20 writes at quorum\n{}",
        c.log(&primary)
    );
    c.kill_agent(&primary).unwrap();
    let old = acked_on(&c, &primary, job, 0);
    let (last_old, old_epoch) = *old.last().unwrap();
    // The standbys are fenced, report what they hold, and one of them is promoted; it counts
    // on from every write the old primary acknowledged at quorum.
    let promoted = || {
        (1..=2u32).find_map(|i| {
            let (agent, role, _) = replica(&c, &format!("{job}/{i}"))?;
            (role == "primary" && acked_on(&c, &agent, job, i).len() >= 10).then_some((agent, i))
        })
    };
    assert!(
        wait_until(LONG, || promoted().is_some()),
        "no standby was promoted and writing\n{:?}\n{:?}\n{}",
        c.task(&format!("{job}/1")),
        c.task(&format!("{job}/2")),
        c.log(&c.server_name(0))
    );
    let (agent, index) = promoted().unwrap();
    let new = acked_on(&c, &agent, job, index);
    let (first_new, new_epoch) = new[0];
    // Fenced at the next epoch, promoted at the one after.
    assert!(
        new_epoch >= old_epoch + 2,
        "epochs {old_epoch} then {new_epoch}"
    );
    assert!(
        first_new > last_old && first_new <= last_old + 2,
        "the old primary acknowledged up to {last_old}; the new one started at {first_new}"
    );
    for w in new.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "values {new:?}");
    }
    let events = c
        .server_client(0)
        .unwrap()
        .get("/v1/events?since=0&limit=10000")
        .unwrap();
    let kinds: Vec<&str> = events
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("kind")?.as_str())
        .collect();
    assert!(kinds.contains(&"state.fence"), "{events}");
    assert!(!kinds.contains(&"state.promote_unclean"), "{events}");
}

#[test]
fn a_standby_that_stops_answering_leaves_the_in_sync_set_and_writes_go_on_with_the_other() {
    let mut c = start_cluster();
    c.add_agents(4).unwrap();
    let job = "ledger5";
    let (primary, _) = replicated_counter_with(&c, job, 10, "standby", 2);
    let (stalled, _, _) = replica(&c, &format!("{job}/2")).unwrap();
    assert!(wait_until(LONG, || acked_on(&c, &primary, job, 0).len() >= 20));
    c.signal_agent(&stalled, Signal::SIGSTOP).unwrap();
    let events = || {
        c.server_client(0)
            .and_then(|cl| cl.get("/v1/events?since=0&limit=10000"))
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    };
    let lagging = wait_until(LONG, || {
        events().iter().any(|e| {
            e.get("kind").and_then(|k| k.as_str()) == Some("state.standby_lagging")
                && e.get("task").and_then(|t| t.as_str()) == Some(&format!("{job}/2"))
        })
    });
    let before = acked_on(&c, &primary, job, 0).len();
    let went_on = wait_until(LONG, || acked_on(&c, &primary, job, 0).len() >= before + 20);
    c.signal_agent(&stalled, Signal::SIGCONT).unwrap();
    assert!(
        lagging,
        "the primary never had the stalled standby taken out of the in-sync set\n{:?}\n{}",
        events(),
        c.log(&primary)
    );
    assert!(went_on, "writes did not go on without the stalled standby");
    // The primary kept its role and epoch throughout: no failover was needed.
    let values = acked_on(&c, &primary, job, 0);
    assert!(
        values
            .windows(2)
            .all(|w| w[1].0 == w[0].0 + 1 && w[1].1 == w[0].1),
        "{values:?}"
    );
}

#[test]
fn a_warm_standby_runs_no_task_until_promoted_then_counts_on_from_its_state() {
    let mut c = start_cluster();
    c.add_agents(3).unwrap();
    let job = "ledger6";
    let (primary, standby) =
        replicated_counter_spec(&c, job, 10, "standbys = 1\nmode = \"warm\"\n", 1);
    assert!(wait_until(LONG, || acked_on(&c, &primary, job, 0).len() >= 20));
    // In sync, and no process of slot 1 anywhere.
    let procs = |c: &Cluster, slot: &str| {
        c.task_procs()
            .into_iter()
            .filter(|p| p.task == slot)
            .count()
    };
    assert_eq!(
        procs(&c, &format!("{job}/1")),
        0,
        "a warm standby runs no task"
    );
    assert_eq!(procs(&c, &format!("{job}/0")), 1);
    c.kill_agent(&primary).unwrap();
    let old = acked_on(&c, &primary, job, 0);
    let (last_old, old_epoch) = *old.last().unwrap();
    // Promoted, its task starts on the state the standby's agent holds and counts on.
    assert!(
        wait_until(LONG, || acked_on(&c, &standby, job, 1).len() >= 10),
        "the warm standby was not promoted and writing\n{:?}\n{}\n{}",
        c.task(&format!("{job}/1")),
        c.log(&standby),
        c.log(&c.server_name(0))
    );
    let new = acked_on(&c, &standby, job, 1);
    let (first_new, new_epoch) = new[0];
    assert!(new_epoch > old_epoch, "epochs {old_epoch} then {new_epoch}");
    assert!(
        first_new > last_old && first_new <= last_old + 2,
        "the old primary acknowledged up to {last_old}; the new one started at {first_new}"
    );
    assert_eq!(procs(&c, &format!("{job}/1")), 1);
}

#[test]
fn a_planned_switchover_to_a_warm_standby_starts_its_task_and_loses_nothing() {
    let mut c = start_cluster();
    c.add_agents(2).unwrap();
    let job = "ledger7";
    let (primary, standby) =
        replicated_counter_spec(&c, job, 5, "standbys = 1\nmode = \"warm\"\n", 1);
    assert!(wait_until(LONG, || acked_on(&c, &primary, job, 0).len() >= 50));
    let answer = c
        .server_client(0)
        .unwrap()
        .request("POST", &format!("/v1/jobs/{job}/promote"), None, b"")
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(answer["to"], format!("{job}/1"), "{answer}");
    assert!(
        wait_until(LONG, || acked_on(&c, &standby, job, 1).len() >= 20),
        "the warm standby was not promoted and writing\n{}\n{}",
        c.log(&standby),
        c.log(&c.server_name(0))
    );
    let old = acked_on(&c, &primary, job, 0);
    let new = acked_on(&c, &standby, job, 1);
    let (last_old, old_epoch) = *old.last().unwrap();
    let (first_new, new_epoch) = new[0];
    assert!(new_epoch > old_epoch);
    assert!(
        first_new == last_old + 1 || first_new == last_old + 2,
        "the old primary acknowledged up to {last_old}; the new one started at {first_new}"
    );
}

#[test]
fn a_planned_switchover_hands_over_every_write_even_at_local() {
    let mut c = start_cluster();
    c.add_agents(2).unwrap();
    let job = "ledger3";
    let (primary, standby) = replicated_counter(&c, job, 5, "local");
    assert!(wait_until(LONG, || acked_on(&c, &primary, job, 0).len() >= 50));
    let client = c.server_client(0).unwrap();
    let answer = client
        .request("POST", &format!("/v1/jobs/{job}/promote"), None, b"")
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(answer["to"], format!("{job}/1"), "{answer}");
    assert!(
        wait_until(LONG, || acked_on(&c, &standby, job, 1).len() >= 20),
        "the standby was not promoted and writing\n{}\n{}",
        c.log(&standby),
        c.log(&c.server_name(0))
    );
    let old = acked_on(&c, &primary, job, 0);
    let new = acked_on(&c, &standby, job, 1);
    let (last_old, old_epoch) = *old.last().unwrap();
    let (first_new, new_epoch) = new[0];
    assert!(new_epoch > old_epoch);
    // Sealed, then handed over: the new primary goes on from the last write, at `local` too.
    assert!(
        first_new == last_old + 1 || first_new == last_old + 2,
        "the old primary acknowledged up to {last_old}; the new one started at {first_new}"
    );
    // The old primary's copy was not restarted: it follows the new primary as its standby.
    let (agent, role, _) = replica(&c, &format!("{job}/0")).unwrap();
    assert_eq!(
        (agent.as_str(), role.as_str()),
        (primary.as_str(), "standby")
    );
    // A second switchover at once is refused while none of the standbys is in sync yet, or
    // goes the other way once it is: either way the answer names the problem or the target.
    let again = client
        .request("POST", &format!("/v1/jobs/{job}/promote"), None, b"")
        .and_then(|r| r.json());
    match again {
        Ok(v) => assert_eq!(v["to"], format!("{job}/0"), "{v}"),
        Err(e) => assert!(e.to_string().contains("in-sync"), "{e}"),
    }
    let missing = client
        .request("POST", "/v1/jobs/nope/promote", None, b"")
        .and_then(|r| r.json());
    match missing {
        Ok(v) => panic!("a switchover of a job that does not exist was accepted: {v}"),
        Err(e) => assert!(e.to_string().contains("no job nope"), "{e}"),
    }
}

/// The agent slot 0 of `job` is assigned to, and its version.
fn placed(c: &Cluster, job: &str) -> Option<(String, u64, String)> {
    let t = c.task(&format!("{job}/0"))?;
    Some((
        t.get("agent")?.as_str()?.to_string(),
        t.get("version")?.as_u64()?,
        t.get("state")?.as_str()?.to_string(),
    ))
}

#[test]
fn a_revert_past_a_raised_data_epoch_puts_the_restore_point_back_on_the_same_agent() {
    let mut c = start_cluster();
    c.add_agent("a1").unwrap();
    let job = "ledger";
    let spec = |every_ms: u32, data_epoch: u32| {
        format!(
            "name = \"{job}\"\nkind = \"singleton\"\ndata_epoch = {data_epoch}\n\
             command = \"{{exe}}\"\n\
             args = [\"workload\", \"counter\", \"--every-ms\", \"{every_ms}\"]\n\
             [resources]\ncpu_millis = 10\nmemory_mb = 16\n\
             [state]\nstandbys = 0\n\
             [update]\nmin_healthy_time = \"1s\"\nhealthy_deadline = \"30s\"\n"
        )
    };
    c.submit(&spec(20, 0)).unwrap();
    let running = |c: &Cluster, version: u64| {
        placed(c, job).filter(|(_, v, s)| *v == version && s == "running")
    };
    assert!(wait_until(LONG, || running(&c, 1).is_some()));
    let home = placed(&c, job).unwrap().0;
    let of_epoch = |c: &Cluster, after: usize| -> Vec<(u64, u64)> {
        acked_on(c, &home, job, 0).split_off(after)
    };
    assert!(
        wait_until(LONG, || of_epoch(&c, 0).len() >= 5),
        "version 1 never counted\n{}",
        c.log(&home)
    );
    // An empty agent joins: placement alone would put the next copy there, without its data.
    c.add_agent("a2").unwrap();
    assert!(wait_until(LONG, || c.agent_state("a2").as_deref() == Some("healthy")));
    // Version 2 declares a new data format: the agent takes a restore point before it runs.
    c.submit(&spec(21, 1)).unwrap();
    assert!(
        wait_until(LONG, || running(&c, 2).is_some()),
        "version 2 never ran: {:?}\n{}",
        placed(&c, job),
        c.log(&home)
    );
    let v2_epoch = c.task(&format!("{job}/0")).unwrap()["epoch"]
        .as_u64()
        .unwrap();
    assert!(
        wait_until(LONG, || of_epoch(&c, 0)
            .iter()
            .filter(|(_, e)| *e == v2_epoch)
            .count()
            >= 5),
        "version 2 never counted\n{}",
        c.log(&home)
    );
    let state = c.dir().join(&home).join("state").join(job);
    assert!(state.join("restore").join("epoch-0").is_dir());
    let all = of_epoch(&c, 0);
    let v1_last = all
        .iter()
        .filter(|(_, e)| *e < v2_epoch)
        .map(|(v, _)| *v)
        .max()
        .unwrap();
    let seen = all.len();
    // Back to version 1 (its data epoch, 0, is older): allowed, since version 2 took a
    // restore point; the agent puts it back and version 1 counts on from where it was.
    let r = c
        .client
        .request(
            "POST",
            &format!("/v1/jobs/{job}/revert"),
            Some("application/json"),
            b"{\"version\": 1}",
        )
        .unwrap();
    assert!(r.status < 300, "revert refused: {} {:?}", r.status, r.body);
    assert!(
        wait_until(LONG, || running(&c, 3).is_some()
            && of_epoch(&c, seen).len() >= 3),
        "the revert never ran: {:?}\n{}",
        placed(&c, job),
        c.log(&home)
    );
    assert_eq!(placed(&c, job).unwrap().0, home, "the copy left its state");
    let after: Vec<u64> = of_epoch(&c, seen).iter().map(|(v, _)| *v).collect();
    // The killed-by-stop copy of version 1 may have had one write applied it never printed.
    assert!(
        after[0] == v1_last + 1 || after[0] == v1_last + 2,
        "version 1 counted on from {} (it stopped at {v1_last}): {all:?} then {after:?}",
        after[0]
    );
    // The data written under data epoch 1 is set aside, not deleted.
    let aside: Vec<String> = std::fs::read_dir(state.join("restore"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("set-aside-epoch-1-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let events = c.client.get("/v1/events?limit=500").unwrap().to_string();
    assert!(events.contains("release.restore"), "{events}");
    // The version that raised the data epoch names its restore point.
    let versions = c.client.get(&format!("/v1/jobs/{job}/versions")).unwrap();
    assert!(
        versions.to_string().contains("\"restore_point\":0"),
        "{versions}"
    );
}
