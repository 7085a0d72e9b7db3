//! End-to-end tests of the replicated control plane: a real 3-member etcd cluster, three
//! `warden server` replicas of this build on it (each reaching etcd through proxies of its own,
//! so one can be cut off), and agents as processes with a session to every replica
//! (`warden_chaos::cluster::Cluster::start_replicated`).
//!
//! The faults are real: kill -9 of the leading server, a silent cut between the leader and
//! etcd, kill -9 of one and then two etcd members. Safety is judged on ground truth — the task
//! processes read from `/proc` every 20 ms by a sampler thread ([`Truth`]) — with the chaos
//! harness's at-most-one checker: a singleton never has two live copies, and no copy runs with
//! a fencing token older than one already seen.
//!
//! Every wait polls a condition with a generous deadline; every process (etcd, servers,
//! agents, tasks) is stopped when the cluster is dropped, also when an assertion fails.
#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use warden_chaos::check::at_most_one;
use warden_chaos::cluster::{Cluster, TaskProc, parent_pid, scan_task_procs, wait_until};
use warden_chaos::record::{ProcSample, Record, Sample};
use warden_chaos::run::SERVER_CONFIG;

/// Deadline for anything the cluster must do by itself. Far above what a healthy run needs
/// (a few seconds); it only matters when a test fails.
const LONG: Duration = Duration::from_secs(60);

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_warden"))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap())
        .unwrap()
}

/// Three etcd members, three servers, `agents` agents, healthy.
fn start(agents: usize) -> Cluster {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join("warden-ha-server.toml");
    let tmp = dir.join(format!("warden-ha-server.toml.{}", std::process::id()));
    std::fs::write(&tmp, SERVER_CONFIG).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let path = path.display().to_string();
    let mut c =
        Cluster::start_replicated(exe(), &[("WARDEN_CONFIG", path.as_str())], 3, 3).unwrap();
    c.add_agents(agents).unwrap();
    c
}

fn job(name: &str, kind: &str, replicas: u32) -> String {
    let replicas = if kind == "service" {
        format!("replicas = {replicas}\n")
    } else {
        String::new()
    };
    format!(
        "name = \"{name}\"\nkind = \"{kind}\"\n{replicas}command = \"{{exe}}\"\n\
         args = [\"workload\", \"sleep\", \"--every\", \"60\"]\n\
         [resources]\ncpu_millis = 10\nmemory_mb = 16\n"
    )
}

/// Whether every slot in `slots` has exactly one live process.
fn each_once(procs: &[TaskProc], slots: &[&str]) -> bool {
    slots
        .iter()
        .all(|s| procs.iter().filter(|p| p.task == *s).count() == 1)
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn u64_of(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// The ground truth: every live task process of the cluster, sampled from `/proc` every
/// 20 ms by a thread, with the agent that runs it. Stopped when dropped.
struct Truth {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<JoinHandle<()>>,
    singletons: Vec<String>,
}

impl Truth {
    fn start(c: &Cluster, singletons: &[&str]) -> Truth {
        let marker = c.marker().to_string();
        let agents: BTreeMap<i32, String> =
            c.agent_pids().into_iter().map(|(n, p)| (p, n)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out) = (stop.clone(), samples.clone());
        let t0 = Instant::now();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let t_ms = u64::try_from(t0.elapsed().as_millis()).unwrap();
                let procs = scan_task_procs(&marker)
                    .into_iter()
                    .map(|p| ProcSample {
                        agent: parent_pid(p.pid)
                            .and_then(parent_pid)
                            .and_then(|a| agents.get(&a).cloned()),
                        task: p.task,
                        token: p.token,
                        pid: p.pid,
                    })
                    .collect();
                out.lock().unwrap().push(Sample {
                    t_ms,
                    procs,
                    agent_pids: Vec::new(),
                });
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Truth {
            stop,
            samples,
            thread: Some(thread),
            singletons: singletons.iter().map(|s| (*s).to_string()).collect(),
        }
    }

    /// The at-most-one checker's findings over every sample so far.
    fn violations(&self) -> Vec<String> {
        let record = Record {
            singletons: self.singletons.clone(),
            samples: self.samples.lock().unwrap().clone(),
            ..Record::default()
        };
        at_most_one::check(&record)
            .into_iter()
            .map(|v| format!("{} ms: {}", v.t_ms, v.message))
            .collect()
    }

    /// Samples taken so far.
    fn count(&self) -> usize {
        self.samples.lock().unwrap().len()
    }

    /// The timeline of changes, for failure messages.
    fn timeline(&self) -> String {
        let mut s = String::from("task processes (changes only):\n");
        let mut last: Option<Vec<(String, u64, i32)>> = None;
        for sample in self.samples.lock().unwrap().iter() {
            let now: Vec<(String, u64, i32)> = sample
                .procs
                .iter()
                .map(|p| (p.task.clone(), p.token, p.pid))
                .collect();
            if last.as_ref() != Some(&now) {
                let list: Vec<String> = sample
                    .procs
                    .iter()
                    .map(|p| {
                        format!(
                            "{}@{} pid {} on {}",
                            p.task,
                            p.token,
                            p.pid,
                            p.agent.as_deref().unwrap_or("?")
                        )
                    })
                    .collect();
                let _ = writeln!(s, "  +{:>6} ms: {}", sample.t_ms, list.join(", "));
                last = Some(now);
            }
        }
        s
    }
}

impl Drop for Truth {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Everything useful to understand a failure: every server's view of the leader, the API's
/// view, the logs.
fn diag(c: &Cluster) -> String {
    let mut s = String::new();
    for (i, v) in c.leader_views() {
        let _ = writeln!(s, "--- server-{i} GET /v1/leader: {v}");
    }
    for path in ["/v1/agents", "/v1/tasks"] {
        let _ = writeln!(s, "--- GET {path} ---\n{:?}", c.client.get(path).ok());
    }
    let mut names: Vec<String> = std::fs::read_dir(c.dir().join("logs"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".log"))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    for name in names {
        let _ = writeln!(s, "--- {name} (tail) ---\n{}", c.log(&name));
    }
    s
}

/// The agent running `task` now (ground truth), and the copy's fencing token.
fn holder(c: &Cluster, task: &str) -> Option<(String, u64)> {
    let agents = c.agent_pids();
    let p = c.task_procs().into_iter().find(|p| p.task == task)?;
    let host = parent_pid(p.pid).and_then(parent_pid)?;
    let name = agents.iter().find(|(_, pid)| **pid == host)?.0.clone();
    Some((name, p.token))
}

/// Submit a singleton `db` and a service `web` of two replicas, and wait until each slot
/// runs once.
fn submit_workload(c: &Cluster) {
    c.submit(&job("db", "singleton", 1)).unwrap();
    c.submit(&job("web", "service", 2)).unwrap();
    assert!(
        wait_until(LONG, || each_once(
            &c.task_procs(),
            &["db/0", "web/0", "web/1"]
        )),
        "the workload did not start\n{}",
        diag(c)
    );
}

/// Kill -9 the leading server: another replica takes over with a higher term; an agent killed
/// one second after the new leader started acting is detected at once by the new leader's warm
/// detectors, and its singleton runs again elsewhere with a higher fencing token — never two
/// copies at once.
#[test]
fn a_killed_leader_is_replaced_and_the_new_leader_recovers_a_killed_agent() {
    let mut c = start(3);
    submit_workload(&c);
    let truth = Truth::start(&c, &["db/0"]);
    let (old, view) = c.leader().expect("a leader");
    let old_term = u64_of(&view, "term").unwrap();
    let killed_at = unix_ms();
    c.kill_server_at(old).unwrap();

    let mut new = None;
    assert!(
        wait_until(LONG, || {
            new = c.leader().filter(|(i, v)| {
                *i != old
                    && u64_of(v, "term").is_some_and(|t| t > old_term)
                    && u64_of(v, "acting_since").is_some()
            });
            new.is_some()
        }),
        "no other replica took over from server-{old}\n{}",
        diag(&c)
    );
    let (new, view) = new.unwrap();
    let acting = u64_of(&view, "acting_since").unwrap();
    eprintln!(
        "server-{old} (term {old_term}) killed; server-{new} leads (term {}) and acts {} ms \
         after the kill",
        u64_of(&view, "term").unwrap(),
        acting.saturating_sub(killed_at)
    );
    // Every surviving replica agrees on the new leader.
    assert!(
        wait_until(LONG, || {
            let views = c.leader_views();
            views.len() == 2
                && views
                    .iter()
                    .all(|(_, v)| str_of(v, "leader") == str_of(&view, "this"))
        }),
        "the replicas disagree on the leader\n{}",
        diag(&c)
    );

    // One second into the new term (a condition on the clock the server stamped, not a sleep
    // standing in for one), kill the singleton's agent.
    assert!(wait_until(LONG, || unix_ms() >= acting + 1000));
    let mut held = None;
    assert!(
        wait_until(LONG, || {
            held = holder(&c, "db/0");
            held.is_some()
        }),
        "db/0 does not run under the new leader\n{}\n{}",
        truth.timeline(),
        diag(&c)
    );
    let (agent, token) = held.unwrap();
    let agent_killed = Instant::now();
    c.kill_agent(&agent).unwrap();

    // The new leader declares it failed, and the singleton runs again elsewhere, newer token.
    let leader = c.server_client(new).unwrap();
    let state = |name: &str| {
        leader.get("/v1/agents").ok().and_then(|v| {
            v.as_array()?
                .iter()
                .find(|a| str_of(a, "name") == name)
                .map(|a| str_of(a, "state").to_string())
        })
    };
    assert!(
        wait_until(LONG, || state(&agent).as_deref() == Some("failed")),
        "the new leader did not declare {agent} failed\n{}",
        diag(&c)
    );
    let detected = agent_killed.elapsed();
    let mut moved = None;
    assert!(
        wait_until(LONG, || {
            moved = holder(&c, "db/0").filter(|(a, t)| *a != agent && *t > token);
            moved.is_some()
        }),
        "db/0 was not rescheduled after {agent} died\n{}\n{}",
        truth.timeline(),
        diag(&c)
    );
    let recovered = agent_killed.elapsed();
    eprintln!(
        "{agent} killed: failed after {} ms, db/0 runs again (token {token} -> {}) after {} ms",
        detected.as_millis(),
        moved.as_ref().unwrap().1,
        recovered.as_millis()
    );
    assert!(
        wait_until(LONG, || each_once(
            &c.task_procs(),
            &["db/0", "web/0", "web/1"]
        )),
        "not every slot runs again\n{}\n{}",
        truth.timeline(),
        diag(&c)
    );

    // The killed server comes back as a standby of the new leader.
    c.start_server_at(old).unwrap();
    let back = c.server_client(old).unwrap();
    assert!(
        wait_until(LONG, || back.get("/v1/leader").is_ok_and(|v| {
            str_of(&v, "role") == "standby" && str_of(&v, "leader") == str_of(&view, "this")
        })),
        "server-{old} did not rejoin as a standby\n{}",
        diag(&c)
    );
    assert!(truth.count() > 50, "too few samples: {}", truth.count());
    eprintln!("{}", truth.timeline());
    let v = truth.violations();
    assert!(v.is_empty(), "{v:#?}\n{}", truth.timeline());
}

/// Cut the leading server off from etcd (its proxies stop forwarding, silently): it stops
/// acting as leader before any other replica is elected — the time it was first seen as a
/// standby is earlier than the new term's start — and no task ever runs twice.
#[test]
fn a_leader_cut_off_from_etcd_steps_down_before_another_is_elected() {
    let c = start(3);
    submit_workload(&c);
    let truth = Truth::start(&c, &["db/0"]);
    let (old, view) = c.leader().expect("a leader");
    let old_term = u64_of(&view, "term").unwrap();
    let old_client = c.server_client(old).unwrap();
    let cut_at = unix_ms();
    c.cut_store(old).unwrap();

    // Watch the old leader closely and the others for a new term.
    let mut stepped_down = None;
    let mut elected = None;
    assert!(
        wait_until(LONG, || {
            if stepped_down.is_none()
                && let Ok(v) = old_client.get("/v1/leader")
                && str_of(&v, "role") == "standby"
            {
                stepped_down = Some(unix_ms());
            }
            if elected.is_none() {
                elected = c
                    .leader()
                    .filter(|(i, v)| *i != old && u64_of(v, "term").is_some_and(|t| t > old_term));
            }
            stepped_down.is_some() && elected.is_some()
        }),
        "stepped down at {stepped_down:?}, elected {elected:?}\n{}",
        diag(&c)
    );
    let stepped_down = stepped_down.unwrap();
    let (new, view) = elected.unwrap();
    let since = u64_of(&view, "since").unwrap();
    eprintln!(
        "server-{old} cut off from etcd at {cut_at}: seen as standby {} ms later; server-{new} \
         elected {} ms after the cut",
        stepped_down - cut_at,
        since.saturating_sub(cut_at)
    );
    assert!(
        stepped_down < since,
        "server-{old} was still leading ({stepped_down}) when server-{new} won its term ({since})\n{}",
        diag(&c)
    );

    // The workload runs under the new leader (the singleton may have been fenced meanwhile
    // and started again).
    assert!(
        wait_until(LONG, || each_once(
            &c.task_procs(),
            &["db/0", "web/0", "web/1"]
        )),
        "not every slot runs under the new leader\n{}\n{}",
        truth.timeline(),
        diag(&c)
    );
    // Healed, the old leader follows the new one.
    c.heal_store(old).unwrap();
    assert!(
        wait_until(LONG, || old_client.get("/v1/leader").is_ok_and(|v| {
            str_of(&v, "role") == "standby"
                && str_of(&v, "leader") == str_of(&view, "this")
                && !v.get("stale").and_then(Value::as_bool).unwrap_or(true)
        })),
        "server-{old} does not follow server-{new} after the heal\n{}",
        diag(&c)
    );
    assert!(truth.count() > 50, "too few samples: {}", truth.count());
    let v = truth.violations();
    assert!(v.is_empty(), "{v:#?}\n{}", truth.timeline());
}

/// `(task, token) → pid` of every live task process.
fn copies(c: &Cluster) -> BTreeMap<(String, u64), i32> {
    c.task_procs()
        .into_iter()
        .map(|p| ((p.task, p.token), p.pid))
        .collect()
}

/// Losing one etcd member of three changes nothing; losing two makes the control plane
/// read-only — writes refused, reads answered but marked stale, no reschedules, every service
/// copy still running — and when the members come back a leader acts again and every job
/// runs at its desired count.
#[test]
fn etcd_member_loss_one_is_harmless_two_make_the_control_plane_read_only() {
    let c = start(3);
    submit_workload(&c);
    let truth = Truth::start(&c, &["db/0"]);
    let etcd = c.etcd().expect("etcd");
    let (leader, view) = c.leader().expect("a leader");
    let term = u64_of(&view, "term").unwrap();
    let before = copies(&c);

    // One member down: same leader, same processes, and a submit still works.
    etcd.kill(0);
    // If the member killed was etcd's own raft leader, etcd elects another within about a
    // second; a write in that window is refused (503, retry) rather than lost or doubled.
    let mut last_err = None;
    assert!(
        wait_until(LONG, || match c.submit(&job("extra", "service", 1)) {
            Ok(_) => true,
            Err(e) => {
                last_err = Some(e.to_string());
                false
            }
        }),
        "a submit never succeeded with one etcd member down: {last_err:?}"
    );
    let mut changed = None;
    assert!(
        wait_until(LONG, || {
            if let Some((i, v)) = c.leader()
                && (i != leader || u64_of(&v, "term") != Some(term))
            {
                changed = Some((i, v));
            }
            each_once(&c.task_procs(), &["extra/0"]) || changed.is_some()
        }),
        "the job submitted with one etcd member down did not start\n{}",
        diag(&c)
    );
    assert!(
        changed.is_none(),
        "the leader changed after one etcd member died: {changed:?}\n{}",
        diag(&c)
    );
    let now = copies(&c);
    for (copy, pid) in &before {
        assert_eq!(
            now.get(copy),
            Some(pid),
            "{copy:?} changed after one etcd member died\n{}",
            truth.timeline()
        );
    }
    assert_eq!(c.leader().map(|(i, _)| i), Some(leader), "{}", diag(&c));

    // Two members down: no quorum. Every replica stops leading and says its reads are stale.
    let services: BTreeMap<(String, u64), i32> = copies(&c)
        .into_iter()
        .filter(|((t, _), _)| !t.starts_with("db/"))
        .collect();
    let lost_at = Instant::now();
    etcd.kill(1);
    assert!(
        wait_until(LONG, || {
            let views = c.leader_views();
            views.len() == 3
                && views.iter().all(|(_, v)| {
                    str_of(v, "role") == "standby"
                        && v.get("stale").and_then(Value::as_bool) == Some(true)
                })
        }),
        "the replicas did not all turn stale standbys without quorum\n{}",
        diag(&c)
    );
    eprintln!(
        "quorum lost: every replica a stale standby after {} ms",
        lost_at.elapsed().as_millis()
    );
    // Writes are refused (503, or 307 to a leader that cannot act either); reads answered,
    // marked stale.
    let body = job("refused", "service", 1)
        .replace("{exe}", &exe().display().to_string())
        .into_bytes();
    for i in 0..3 {
        let client = c.server_client(i).unwrap();
        let w = client
            .request("POST", "/v1/jobs", Some("application/toml"), &body)
            .unwrap();
        assert!(
            matches!(w.status, 503 | 307),
            "server-{i} answered a write without quorum with {}: {}",
            w.status,
            w.body
        );
        for path in ["/v1/agents", "/v1/tasks", "/v1/jobs"] {
            let r = client.request("GET", path, None, b"").unwrap();
            assert_eq!(r.status, 200, "server-{i} GET {path}: {}", r.body);
            assert!(r.stale, "server-{i} GET {path} is not marked stale");
        }
    }
    // Watched for the agents' lease and more (what a reschedule would need): services keep
    // their processes, and no copy with a new token starts.
    let watch_until = Instant::now() + Duration::from_secs(6);
    let mut fresh = Vec::new();
    wait_until(Duration::from_secs(7), || {
        let now = copies(&c);
        fresh.extend(
            now.keys()
                .filter(|k| !before.contains_key(*k) && k.0 != "extra/0")
                .cloned(),
        );
        let lost: Vec<_> = services
            .iter()
            .filter(|(k, pid)| now.get(*k) != Some(*pid))
            .collect();
        assert!(
            lost.is_empty(),
            "service copies lost without quorum: {lost:?}\n{}",
            truth.timeline()
        );
        Instant::now() >= watch_until
    });
    assert!(
        fresh.is_empty(),
        "copies started without quorum: {fresh:?}\n{}",
        truth.timeline()
    );

    // Quorum back: a leader acts again, every job back to its desired count.
    etcd.restart(0).unwrap();
    etcd.restart(1).unwrap();
    etcd.wait_healthy(LONG).unwrap();
    assert!(
        wait_until(LONG, || c.leader().is_some_and(|(_, v)| u64_of(
            &v,
            "acting_since"
        )
        .is_some())),
        "no leader after quorum returned\n{}",
        diag(&c)
    );
    assert!(
        wait_until(LONG, || each_once(
            &c.task_procs(),
            &["db/0", "web/0", "web/1", "extra/0"]
        )),
        "not every job is back to its desired count\n{}\n{}",
        truth.timeline(),
        diag(&c)
    );
    let v = truth.violations();
    assert!(v.is_empty(), "{v:#?}\n{}", truth.timeline());
}
